-- sibyl.llm.embed -- embeddings: client:embed (concurrent batches through
-- the client's retries and key rotation), one request over the wire, and
-- replies (float lists or base64 float32s) decoded into float[dims] cdata.
--
-- install(llm) adds embed and _embed_once to llm._client (the client
-- methods); sibyl.llm calls it once as it loads. Internal to sibyl.llm.

local sibyl = require "sibyl"
local http = require "sibyl.http"
local json = require "sibyl.json"
local errors = require "sibyl.llm.errors"
local usage_mod = require "sibyl.llm.usage"
local ffi = require "ffi"
local b64_decode_buf = require("sibyl.base64").decode_buf

local type, ipairs, tonumber, error = type, ipairs, tonumber, error
local format = string.format
local min = math.min
local mkerror = sibyl.error
local json_decode = json.decode
local http_error, transport_error = errors.http_error, errors.transport_error
local account = usage_mod.account

local _M = {}

local llm                       -- the sibyl.llm table (defaults read per call), set by install

-- Base64 (little-endian float32s) -> float[n], or nil.
local function float_buf(nbytes)
    if nbytes % 4 ~= 0 then return nil end
    return ffi.new("float[?]", nbytes / 4)
end

local function b64_floats(s)
    local vec, nbytes = b64_decode_buf(s, float_buf)
    if not vec then return nil end
    return vec, nbytes / 4
end

-- An embedding (a float list or base64 float32s) -> float[n], n; or nil.
local function to_vector(e)
    if type(e) == "string" then return b64_floats(e) end
    if type(e) ~= "table" then return nil end
    local n = #e
    local vec = ffi.new("float[?]", n)
    for i = 1, n do vec[i - 1] = e[i] end
    return vec, n
end
_M.to_vector = to_vector


-- One embeddings request over the wire (no retries): {items, usage, model}
-- or nil, err.
local function embed_once(self, req, key)
    local d = self.dialect
    local url, body = d.embed_request(self, req)
    if not url then return nil, mkerror("config", self.name .. ": " .. body) end
    local res, err = http.request{ method = "POST", url = url, body = body, headers = d.headers(self, key),
                                   timeout = req.timeout, connect_timeout = self.connect_timeout or llm.defaults.connect_timeout }
    if not res then return nil, transport_error(self, err) end
    if res.status >= 400 then return nil, http_error(self, res.status, res.body, res.headers, url) end
    local data = json_decode(res.body)
    local items, usage = d.parse_embed(data)
    if not items then
        return nil, mkerror("parse", format("%s: unexpected embeddings reply from %s: %s", self.name, url, usage))
    end
    return { items = items, usage = usage or { input = 0, output = 0 }, model = type(data) == "table" and data.model }
end


--- Embed texts: vectors (a list of float[dims] cdata, in input order), info
-- {dims, model, usage}; or nil, err. opts: input (string or list), model,
-- dimensions, batch_size, concurrency, progress(done, total), timeout.
local function embed(self, opts)
    if type(opts) ~= "table" then error("llm.embed: options table expected", 2) end
    local input = opts.input
    if type(input) == "string" then input = { input } end
    if type(input) ~= "table" then error("llm.embed: opts.input must be a string or a list of strings", 2) end
    local n = #input
    local batch = opts.batch_size or llm.defaults.batch_size
    local conc = opts.concurrency or llm.defaults.concurrency
    local nb = math.ceil(n / batch)
    local vectors, usage, dims, model = {}, { input = 0, output = 0, total = 0 }, nil, nil
    local next_batch, done, failed = 0, 0, false     -- after a failure, no worker starts a batch
    local req_model = opts.model or self.embed_model
    local progress = opts.progress
    local function worker()
        while next_batch < nb and not failed do
            next_batch = next_batch + 1
            local first = (next_batch - 1) * batch + 1
            local last = min(first + batch - 1, n)
            local slice = {}
            for i = first, last do slice[#slice + 1] = input[i] end
            local req = { model = req_model, input = slice, dimensions = opts.dimensions,
                          encoding_format = opts.encoding_format or "base64",
                          timeout = opts.timeout or self.timeout or llm.defaults.timeout, messages = {} }
            local r, err = self:_call(self._embed_once, req, opts)
            if not r then
                failed = true
                return nil, err
            end
            for i, item in ipairs(r.items) do
                local idx = tonumber(item.index) or (i - 1)
                local vec, len = to_vector(item.embedding)
                if not vec then
                    failed = true
                    return nil, mkerror("parse", format("%s: embedding %d is not a float list or base64 floats",
                                                        self.name, first + idx))
                end
                vectors[first + idx] = vec
                dims = dims or len
            end
            usage.input = usage.input + (r.usage.input or 0)
            model = model or r.model
            done = done + (last - first + 1)
            if progress and not failed then progress(done, n) end
        end
        return true
    end
    local fns = {}
    for i = 1, min(conc, nb) do fns[i] = worker end
    if #fns > 0 then
        local ok, err = sibyl.gather(fns)
        if not ok then return nil, err end
    end
    for i = 1, n do
        if vectors[i] == nil then
            return nil, mkerror("parse", format("%s: the reply has no embedding for input %d", self.name, i))
        end
    end
    usage.total = usage.input
    local info = { dims = dims or 0, model = model or req_model, usage = usage }
    account(self, { usage = usage }, info.model)
    return vectors, info
end


--- Add embed (client:embed) and _embed_once to the client methods of `l`.
function _M.install(l)
    llm = l
    l._client._embed_once = embed_once
    l._client.embed = embed
end


return _M
