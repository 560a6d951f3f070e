-- sibyl.llm -- call language models: one normalised interface over
-- OpenAI-compatible endpoints and Anthropic's Messages API, with streaming,
-- tool calls, structured output, embeddings, retries, key rotation, pacing,
-- provider fallback and usage accounting.
--
--   local llm = require "sibyl.llm"
--   local r, err = llm.chat{ messages = { { role = "user", content = "Hi" } } }
--   print(r.content, r.usage.input, r.usage.output)
--
-- Providers come from llm.configure{...} (a table or a YAML file), else
-- from the environment (OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY,
-- ANTHROPIC_BASE_URL, SIBYL_PROVIDER, SIBYL_MODEL, SIBYL_LLM_CONFIG).
-- This file holds clients, the retry/rotation loop, chat and structured
-- output. Beside it: config.lua (configure, environment, provider),
-- errors.lua (error kinds, Retry-After), usage.lua (prices, totals,
-- meters), embed.lua (embeddings); the wire formats in openai.lua and
-- anthropic.lua; the scripted test provider in mock.lua. See doc/llm.md.

local sibyl = require "sibyl"
local http = require "sibyl.http"
local json = require "sibyl.json"
local keys = require "sibyl.keys"
local errors = require "sibyl.llm.errors"
local usage = require "sibyl.llm.usage"
local config = require "sibyl.llm.config"
local embed = require "sibyl.llm.embed"

local type, pairs, ipairs, tostring, setmetatable, error =
    type, pairs, ipairs, tostring, setmetatable, error
local format, find, sub, match, byte, gsub =
    string.format, string.find, string.sub, string.match, string.byte, string.gsub
local floor, min, random = math.floor, math.min, math.random
local getenv = os.getenv
local sleep, time_left, mkerror = sibyl.sleep, sibyl.time_left, sibyl.error
local json_decode = json.decode
local transient, http_error, stream_error, transport_error, HINTS =
    errors.transient, errors.http_error, errors.stream_error, errors.transport_error, errors.HINTS
local account = usage.account

local _M = { _VERSION = "0.1.0" }

_M.dialects = {
    openai = require "sibyl.llm.openai",
    anthropic = require "sibyl.llm.anthropic",
}

--- Defaults for every provider and call; change them here or per call.
_M.defaults = {
    timeout = 120,              -- seconds per attempt (a task deadline also bounds it)
    connect_timeout = 10,
    retry = {
        attempts = 4,           -- tries in all, the first included
        base = 0.5,             -- first backoff, seconds; doubles per attempt
        max = 8,                -- longest backoff
        max_retry_after = 60,   -- a server asking for a longer wait fails at once
    },
    repair = 1,                 -- structured output: repair round trips before kind "parse"
    fallback_on = { "rate_limited", "timeout", "connect", "http" },   -- http: 5xx only
    batch_size = 64,            -- embeddings per request
    concurrency = 4,            -- embedding requests in flight
}


-- ------------------------------------------------------------- helpers

local merge, nonempty = config.merge, config.nonempty


-- -------------------------------------------------------------- clients

local client = {}
local client_mt = { __index = client }

function client_mt.__tostring(c)
    return format("sibyl.llm.client %s (%s, %s, %s)", c.name, c.type, c.base_url or "-",
                  c.ring and (#c.ring .. " keys") or "no key")
end


-- Client-side pacing from the options (also used by the mock).
function _M._pacing(c, opts)
    if opts.rpm or opts.tpm then
        c.bucket = keys.bucket{ rpm = opts.rpm, tpm = opts.tpm, burst_seconds = opts.pacing_burst }
    end
    if opts.key_rpm or opts.key_tpm then
        c.key_pacing = { rpm = opts.key_rpm, tpm = opts.key_tpm, burst_seconds = opts.pacing_burst }
    end
end


--- A provider client. opts: type ("openai" | "anthropic" | "mock"),
-- name, base_url, api_key / api_keys, model, embed_model, headers, rpm, tpm,
-- key_rpm, key_tpm (pacing per key), pacing_burst,
-- timeout, connect_timeout, retry, prices, key_strategy, key_cooldown,
-- version (anthropic), max_tokens, stream_usage.
function _M.client(opts)
    opts = opts or {}
    if type(opts) ~= "table" then error("sibyl.llm.client: options table expected", 2) end
    local ptype = opts.type or "openai"
    if ptype == "mock" then
        return require("sibyl.llm.mock").new(opts, _M)
    end
    local d = _M.dialects[ptype]
    if not d then
        error(format("sibyl.llm.client: unknown provider type %q (openai, anthropic or mock)", tostring(ptype)), 2)
    end
    local name = opts.name or ptype
    local keylist = opts.api_keys or nonempty(opts.api_key)
    if keylist == nil and opts.api_key ~= false then
        keylist = nonempty(getenv(opts.key_env or d.defaults.key_env))
    end
    local base = opts.base_url or d.defaults.base_url
    base = gsub(base, "/+$", "")
    if ptype == "anthropic" and not find(base, "/v1$") then base = base .. "/v1" end
    local c = setmetatable({
        name = name, type = ptype, dialect = d, base_url = base,
        model = opts.model or d.defaults.model,
        embed_model = opts.embed_model or d.defaults.embed_model,
        headers = opts.headers, version = opts.version, max_tokens = opts.max_tokens,
        stream_usage = opts.stream_usage,
        timeout = opts.timeout, connect_timeout = opts.connect_timeout,
        retry = opts.retry, prices = opts.prices,
    }, client_mt)
    if keylist then
        c.ring = keys.ring{ keys = keylist, name = name, strategy = opts.key_strategy,
                            cooldown = opts.key_cooldown, auth_cooldown = opts.key_auth_cooldown }
    end
    _M._pacing(c, opts)
    return c
end


-- The token bucket of key `kid` (key_rpm / key_tpm), made on first use.
function client:_key_bucket(kid)
    local kb = self._key_buckets
    if not kb then
        kb = {}
        self._key_buckets = kb
    end
    local b = kb[kid]
    if not b then
        b = keys.bucket(self.key_pacing)
        kb[kid] = b
    end
    return b
end


-- Rough token estimate for pacing: 4 bytes per token.
local function estimate_tokens(req)
    local n = 0
    for _, m in ipairs(req.messages) do
        local c = m.content
        n = n + (type(c) == "string" and #c or 200)
    end
    return floor(n / 4) + (req.max_tokens or 256)
end


-- Is a key other than `kid` (the one just used) ready right now?
local function other_key_ready(ring, kid)
    for _, k in ipairs(ring:stats()) do
        if k.state == "ready" and k.id ~= kid then return true end
    end
    return false
end


--- Run once(self, req, key) with retries, key rotation and pacing.
-- once returns a result or nil, err.
function client:_call(once, req, opts)
    local retry = _M.defaults.retry          -- read per call: later changes apply
    if self.retry then retry = merge(retry, self.retry) end
    if opts.retry then retry = merge(retry, opts.retry) end
    local attempts = retry.attempts
    local ring, bucket = self.ring, self.bucket
    local attempt = 0
    while true do
        attempt = attempt + 1
        local key, kid
        if ring then
            key, kid = ring:acquire()
            if not key then                         -- every key rests
                local err = kid
                local wait = err.retry_after
                local left = time_left()
                if err.kind ~= "rate_limited" or attempt >= attempts or not wait
                   or wait > retry.max_retry_after or (left and wait >= left) then
                    err.message = self.name .. ": " .. err.message
                    return nil, err
                end
                sleep(wait)
                goto continue
            end
        end
        do
            local estimate
            local kbucket = kid and self.key_pacing and self:_key_bucket(kid)
            if bucket or kbucket then
                estimate = estimate_tokens(req)
                if bucket then
                    local ok, berr = bucket:wait(estimate)
                    if not ok then return nil, berr end
                end
                if kbucket then
                    local ok, berr = kbucket:wait(estimate)
                    if not ok then return nil, berr end
                end
            end
            local r, err = once(self, req, key)
            if ring then
                local outcome = "ok"
                if err then
                    if err.kind == "rate_limited" then outcome = err.quota and "quota" or "rate_limited"
                    elseif err.kind == "auth" then outcome = "auth" end
                    -- One key has nothing to rotate to: each call asks the
                    -- server again rather than failing on a disabled key.
                    if outcome ~= "rate_limited" and #ring < 2 then outcome = "ok" end
                end
                if outcome ~= "ok" or r then ring:report(kid, outcome, err and err.retry_after) end
            end
            if r then
                if estimate and r.usage then
                    local used = (r.usage.input or 0) + (r.usage.output or 0)
                    if used < estimate then
                        if bucket then bucket:refund(estimate - used) end
                        if kbucket then kbucket:refund(estimate - used) end
                    end
                end
                r.attempts = attempt
                return r
            end
            err.attempts = attempt
            local rotate = ring and (err.kind == "rate_limited" or err.kind == "auth") and other_key_ready(ring, kid)
            if err.streamed or attempt >= attempts or not (rotate or transient(err)) then
                return nil, err
            end
            local delay = 0
            if not rotate then
                delay = err.retry_after
                if delay then
                    if delay > retry.max_retry_after then return nil, err end
                else
                    delay = min(retry.max, retry.base * 2 ^ (attempt - 1))
                    delay = delay * (0.5 + random() * 0.5)          -- jitter
                end
            end
            local left = time_left()
            if left and delay >= left then return nil, err end
            if delay > 0 then sleep(delay) end
        end
        ::continue::
    end
end


-- One chat request over the wire (no retries).
local function chat_stream(self, req, key, url, body, headers)
    local d = self.dialect
    local s, err = http.sse{ method = "POST", url = url, body = body, headers = headers,
                             timeout = req.timeout, connect_timeout = self.connect_timeout or _M.defaults.connect_timeout }
    if not s then
        if err.kind == "http" and err.status then
            return nil, http_error(self, err.status, err.body, err.headers, url)
        end
        return nil, transport_error(self, err)
    end
    local st = d.stream_begin()
    local user, emitted, stopped = req.stream, false, false
    local function emit(delta)
        emitted = true
        return user(delta)
    end
    while true do
        local ev, e = s:next()
        if not ev then
            s:close()
            if e then
                e = transport_error(self, e)
            else
                e = mkerror("parse", format("%s: the stream from %s ended before its final event "
                    .. "(truncated); retry the call", self.name, url))
            end
            e.streamed = emitted
            e.partial = d.stream_result(st)
            return nil, e
        end
        local ok, state, ekind, emsg, eobj = pcall(d.stream_event, st, ev, emit)
        if not ok then                  -- the caller's callback raised: drop the transfer first
            s:close()
            error(state, 0)
        end
        if state == "done" then break end
        if state == "stop" then
            stopped = true
            break
        end
        if ekind then
            s:close()
            local e
            if ekind == "stream_error" then
                e = stream_error(self, eobj, emsg, url)
            else
                e = mkerror(ekind, format("%s: %s (from %s)", self.name, emsg, url))
            end
            e.streamed = emitted
            e.partial = d.stream_result(st)
            return nil, e
        end
    end
    s:close()
    local r = d.stream_result(st)
    if stopped then r.finish_reason = "stopped" end
    return r
end


local function chat_once(self, req, key)
    local d = self.dialect
    local url, body = d.chat_request(self, req)
    -- Header tables are built once per key and reused (http.lua only reads
    -- them); a client's `headers` are read on its first call.
    local cache = self._headers
    if not cache then
        cache = {}
        self._headers = cache
    end
    local headers = cache[key or cache]
    if not headers then
        headers = {}
        for k, v in pairs(d.headers(self, key)) do headers[#headers + 1] = k .. ": " .. tostring(v) end
        cache[key or cache] = headers
    end
    local r, err
    if req.stream then
        r, err = chat_stream(self, req, key, url, body, headers)
        if not r then return nil, err end
    else
        local res
        res, err = http.request{ method = "POST", url = url, body = body, headers = headers, timeout = req.timeout,
                                 connect_timeout = self.connect_timeout or _M.defaults.connect_timeout }
        if not res then return nil, transport_error(self, err) end
        if res.status >= 400 then
            return nil, http_error(self, res.status, res.body, res.headers, url)
        end
        local data, jerr = json_decode(res.body)
        if type(data) ~= "table" then
            return nil, mkerror("parse", format("%s: the reply from %s is not JSON (%s)", self.name, url,
                                               jerr and jerr.message or "not an object"), { body = res.body })
        end
        local perr
        r, perr = d.parse_chat(data)
        if not r then
            return nil, mkerror("parse", format("%s: unexpected reply from %s: %s", self.name, url, perr),
                                { body = res.body })
        end
    end
    if r.finish_reason == "content_filter" and r.content == "" and #r.tool_calls == 0 then
        return nil, mkerror("content_filter", format("%s: the model's output was filtered (%s); %s",
                            self.name, url, HINTS.content_filter), { result = r })
    end
    return r
end
client._once = chat_once


-- Normalise the user's options into a request for this client.
local function make_request(self, opts)
    local msgs = opts.messages
    if msgs == nil and opts.prompt then
        msgs = { { role = "user", content = opts.prompt } }
    end
    if type(msgs) ~= "table" then
        error("llm.chat: opts.messages must be a list of {role=, content=} (or pass opts.prompt)", 4)
    end
    local tools = opts.tools
    if tools ~= nil then
        if type(tools) ~= "table" then error("llm.chat: opts.tools must be a list", 4) end
        if #tools == 0 then
            tools = nil
        else
            local nt = {}
            for i, t in ipairs(tools) do
                if type(t) == "table" and t.type == "function" and type(t["function"]) == "table" then
                    t = t["function"]               -- OpenAI's shape is accepted too
                end
                if type(t) ~= "table" or type(t.name) ~= "string" then
                    error(format("llm.chat: opts.tools[%d] needs a name (and description, parameters)", i), 4)
                end
                nt[i] = t
            end
            tools = nt
        end
    end
    local tc = opts.tool_choice
    if type(tc) == "string" and tc ~= "auto" and tc ~= "none" and tc ~= "required" then
        tc = { name = tc }                          -- a tool's name
    end
    if opts.stream ~= nil and type(opts.stream) ~= "function" then
        error("llm.chat: opts.stream must be a function(delta)", 4)
    end
    return {
        model = opts.model or self.model,
        messages = msgs,
        system = opts.system,
        tools = tools,
        tool_choice = tc,
        parallel_tool_calls = opts.parallel_tool_calls,
        temperature = opts.temperature,
        top_p = opts.top_p,
        stop = opts.stop,
        seed = opts.seed,
        max_tokens = opts.max_tokens,
        schema = opts.schema,
        schema_name = opts.schema_name,
        strict = opts.strict,
        response_format = opts.response_format,
        stream = opts.stream,
        extra = opts.extra,
        timeout = opts.timeout or self.timeout or _M.defaults.timeout,
    }
end


-- ------------------------------------------------- structured output

local validators = setmetatable({}, { __mode = "k" })

local function validator(schema)
    local v = validators[schema]
    if not v then
        v = require("sibyl.schema").compile(schema)
        validators[schema] = v
    end
    return v
end


-- The JSON value in a reply: the whole text, or inside a ``` fence.
local function extract_json(text)
    local v = json_decode(text)
    if v ~= nil then return v end
    local inner = match(text, "```%w*%s*\n(.-)\n?```")
    if inner then
        v = json_decode(inner)
        if v ~= nil then return v end
    end
    local first = find(text, "[%[{]")
    if first then
        v = json_decode(sub(text, first, #text))
        if v ~= nil then return v end
        local last = #text
        while last > first do
            local c = byte(text, last)
            if c == 125 or c == 93 then             -- } or ]
                v = json_decode(sub(text, first, last))
                if v ~= nil then return v end
            end
            last = last - 1
        end
    end
    return nil
end
_M._extract_json = extract_json


local function structured(self, req, opts, r)
    local v = validator(req.schema)
    local repairs = opts.repair or _M.defaults.repair
    local msgs = req.messages
    local total = r.usage and { input = r.usage.input, output = r.usage.output, total = r.usage.total } or nil
    for round = 0, repairs do
        local problem
        local value = extract_json(r.content)
        if value == nil then
            problem = "The reply is not valid JSON."
        else
            local ok, errs = v:validate(value)
            if ok then
                r.data = value
                r.repairs = round
                if total then r.usage = total end
                return r
            end
            problem = "The JSON does not match the schema: " .. require("sibyl.schema").describe(errs) .. "."
        end
        if round == repairs then
            return nil, mkerror("parse", format("%s: the reply does not match the schema after %d repair%s: %s",
                self.name, repairs, repairs == 1 and "" or "s", problem),
                { content = r.content, result = r })
        end
        -- Ask the model to fix its own reply.
        local fixed = {}
        for i, m in ipairs(msgs) do fixed[i] = m end
        fixed[#fixed + 1] = { role = "assistant", content = r.content }
        fixed[#fixed + 1] = { role = "user", content = problem ..
            " Reply again with only the corrected JSON value, no prose and no code fences." }
        msgs = fixed
        local rreq = merge(req, { messages = msgs, stream = false })
        local nr, err = self:_call(self._once, rreq, opts)
        if not nr then return nil, err end
        account(self, nr, rreq.model)
        if total and nr.usage then
            total.input = total.input + (nr.usage.input or 0)
            total.output = total.output + (nr.usage.output or 0)
            total.total = total.input + total.output
            if nr.usage.cost then total.cost = (total.cost or 0) + nr.usage.cost end
        end
        nr.provider = self.name
        r = nr
    end
end


--- Chat with this client's provider (no fallback): result or nil, err.
function client:chat(opts)
    if type(opts) ~= "table" then error("llm.chat: options table expected", 2) end
    local req = make_request(self, opts)
    local r, err = self:_call(self._once, req, opts)
    if not r then return nil, err end
    r.provider = self.name
    account(self, r, r.model or req.model)
    if req.schema then
        return structured(self, req, opts, r)
    end
    return r
end



-- ------------------------------------------ parts from the other files

_M._client_mt = client_mt
_M._client = client
embed.install(_M)                               -- client:embed, client._embed_once
config.install(_M)

_M.configure = config.configure
_M.provider = config.provider
_M.usage = usage.usage
_M.meter = usage.meter
_M._account = account
_M._retry_after = errors.retry_after
_M._to_vector = embed.to_vector


-- ------------------------------------------------------ public functions

local function fallback_ok(err, kinds)
    for _, k in ipairs(kinds) do
        if err.kind == k then
            return k ~= "http" or transient(err)
        end
    end
    return false
end


--- Chat: result {content, tool_calls, finish_reason, usage, model,
-- provider, data (with schema), raw} or nil, err. See doc/llm.md.
function _M.chat(opts)
    if type(opts) ~= "table" then error("llm.chat: options table expected", 2) end
    local chain, cerr = config.chain_for(opts)
    if not chain then return nil, cerr end
    local registry = config.registry
    local kinds = opts.fallback_on or (registry and registry.fallback_on) or _M.defaults.fallback_on
    local tried = {}
    for i, link in ipairs(chain) do
        local c, model = link[1], link[2]
        local o = opts
        if i > 1 or model ~= opts.model then
            o = merge(opts, { model = model or false })
            if o.model == false then o.model = nil end
        end
        local r, err = c:chat(o)
        if r then
            if i > 1 then r.fallback_from = tried end
            return r
        end
        tried[#tried + 1] = c.name
        if i == #chain or err.streamed or not fallback_ok(err, kinds) then
            if i > 1 then err.tried = tried end
            return nil, err
        end
    end
end


--- Embed with the default (or opts.provider) provider. See client:embed.
function _M.embed(opts)
    if type(opts) ~= "table" then error("llm.embed: options table expected", 2) end
    local c = opts.provider
    if type(c) ~= "table" then
        local err
        c, err = _M.provider(c)
        if not c then return nil, err end
    end
    return c:embed(opts)
end


--- A scripted provider for tests (see sibyl/llm/mock.lua).
function _M.mock(opts)
    return require("sibyl.llm.mock").new(opts or {}, _M)
end


--- Forget the configuration and its prices (the next call reads the
-- environment again).
function _M.reset()
    config.registry = nil
    usage.set_prices({})
end


return _M
