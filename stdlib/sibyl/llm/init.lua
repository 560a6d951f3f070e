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
-- Wire formats live in sibyl/llm/openai.lua and anthropic.lua; the scripted
-- test provider in sibyl/llm/mock.lua. See doc/llm.md.

local sibyl = require "sibyl"
local http = require "sibyl.http"
local json = require "sibyl.json"
local keys = require "sibyl.keys"
local ffi = require "ffi"
local bit = require "bit"

local type, pairs, ipairs, tostring, tonumber, setmetatable, error, select =
    type, pairs, ipairs, tostring, tonumber, setmetatable, error, select
local format, find, sub, match, lower, byte, gsub =
    string.format, string.find, string.sub, string.match, string.lower, string.byte, string.gsub
local floor, min, max, random, huge = math.floor, math.min, math.max, math.random, math.huge
local concat = table.concat
local getenv = os.getenv
local sleep, now, time_left, context, mkerror = sibyl.sleep, sibyl.now, sibyl.time_left, sibyl.context, sibyl.error
local json_decode = json.decode

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

-- Kinds a retry may cure. "http" only for 5xx, 408, 409 and no status.
local TRANSIENT = { rate_limited = true, timeout = true, connect = true, http = true }

local function transient(err)
    if not TRANSIENT[err.kind] then return false end
    if err.kind == "rate_limited" then return not err.quota end
    if err.kind == "http" then
        local s = err.status
        return s == nil or s >= 500 or s == 408 or s == 409
    end
    return true
end


-- ------------------------------------------------------------- helpers

local function merge(base, over)
    local t = {}
    for k, v in pairs(base) do t[k] = v end
    if over then
        for k, v in pairs(over) do t[k] = v end
    end
    return t
end


-- Seconds to wait from rate-limit headers, or nil.
local function parse_duration(s)
    -- "1s", "6m0s", "20ms", "1h2m3.5s"
    local total, seen = 0, false
    for num, unit in string.gmatch(s, "([%d.]+)(%a+)") do
        local n = tonumber(num)
        if not n then return nil end
        local mult = (unit == "ms" and 0.001) or (unit == "s" and 1) or (unit == "m" and 60) or (unit == "h" and 3600)
        if not mult then return nil end
        total, seen = total + n * mult, true
    end
    return seen and total or nil
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

local function retry_after(h)
    local ms = tonumber(h["retry-after-ms"])
    if ms then return ms / 1000 end
    local ra = h["retry-after"]
    if ra then
        local n = tonumber(ra)
        if n then return n end
        local d, mon, y, hh, mm, ss = match(ra, "%a+, (%d+) (%a+) (%d+) (%d+):(%d+):(%d+) GMT")
        if d and MONTHS[mon] then
            local t = os.time{ year = tonumber(y), month = MONTHS[mon], day = tonumber(d),
                               hour = tonumber(hh), min = tonumber(mm), sec = tonumber(ss), isdst = false }
            local utc_offset = os.time(os.date("!*t", 0)) - os.time(os.date("*t", 0))
            return max(0, t - utc_offset - os.time())
        end
    end
    local reset = h["x-ratelimit-reset-requests"] or h["x-ratelimit-reset-tokens"]
    return reset and parse_duration(reset) or nil
end
_M._retry_after = retry_after


local CONTEXT_WORDS = { "context length", "context_length", "maximum context", "context window",
                        "too many tokens", "prompt is too long", "input is too long", "reduce the length" }

local function is_context(msg, code)
    if code == "context_length_exceeded" or code == "string_above_max_length" then return true end
    local m = lower(msg or "")
    for _, w in ipairs(CONTEXT_WORDS) do
        if find(m, w, 1, true) then return true end
    end
    return false
end

local HINTS = {
    rate_limited = "wait, add API keys (api_keys), or lower the request rate (rpm/tpm)",
    auth = "check the provider's API key",
    context_length = "shorten the messages or choose a model with a larger context",
    content_filter = "the provider refused the content; rephrase the request",
}


-- A 4xx/5xx reply -> error object of the right kind. Keys the server echoed
-- are redacted in the body (kept as err.body) before anything is taken from
-- it, so a 200-byte excerpt cannot cut a key in half and escape redaction.
local function http_error(p, status, body, headers, url)
    if p.ring and type(body) == "string" then body = p.ring:redact(body) end
    local data = type(body) == "string" and json_decode(body) or nil
    local msg, code, etype = p.dialect.error_info(data)
    if not msg or msg == "" then
        msg = body and sub(body, 1, 200) or ""
    end
    msg = gsub(tostring(msg), "[%.%s]+$", "")
    local kind = "http"
    local fields = { status = status, body = body, code = code, type = etype, provider = p.name }
    if status == 429 then
        kind = "rate_limited"
        fields.retry_after = headers and retry_after(headers)
        if code == "insufficient_quota" or etype == "insufficient_quota" then fields.quota = true end
    elseif status == 401 or status == 403 then
        kind = "auth"
    elseif (status == 400 or status == 413) and is_context(msg, code) then
        kind = "context_length"
    elseif status == 400 and (code == "content_filter" or code == "content_policy_violation") then
        kind = "content_filter"
    end
    local hint = HINTS[kind]
    if p.ring and kind == "auth" then hint = hint .. " (" .. p.name .. ")" end
    return mkerror(kind, format("%s: HTTP %d from %s: %s%s", p.name, status, url, msg,
                                hint and ("; " .. hint) or ""), fields)
end


-- An error event inside a stream -> error object.
local function stream_error(p, eobj, msg, url)
    local etype = type(eobj) == "table" and eobj.type or nil
    local code = type(eobj) == "table" and eobj.code or nil
    local kind, status = "http", nil
    if etype == "overloaded_error" then status = 529
    elseif etype == "rate_limit_error" or code == "rate_limit_exceeded" then kind = "rate_limited"
    elseif etype == "authentication_error" then kind = "auth"
    elseif etype == "server_error" or etype == "api_error" then status = 500 end
    if p.ring then msg = p.ring:redact(msg) end
    return mkerror(kind, format("%s: error event in the stream from %s: %s", p.name, url, msg),
                   { status = status, type = etype, code = code, provider = p.name })
end


-- A transport error from sibyl.http: keep its kind, name the provider.
local function transport_error(p, err)
    err.message = p.name .. ": " .. tostring(err.message)
    err.provider = p.name
    return err
end


-- ------------------------------------------------------ usage and cost

local totals = { calls = 0, input = 0, output = 0, cost = 0, by_model = {} }
local prices = {}               -- model -> { input = $/1M tokens, output = $/1M tokens }

local function add_usage(m, model, u)
    m.calls = m.calls + 1
    m.input = m.input + u.input
    m.output = m.output + u.output
    if u.cost then m.cost = m.cost + u.cost end
    if model then
        local bm = m.by_model[model]
        if not bm then
            bm = { calls = 0, input = 0, output = 0, cost = 0 }
            m.by_model[model] = bm
        end
        bm.calls = bm.calls + 1
        bm.input = bm.input + u.input
        bm.output = bm.output + u.output
        if u.cost then bm.cost = bm.cost + u.cost end
    end
end

local function account(p, r, model)
    local u = r.usage
    if not u then
        u = { input = 0, output = 0, total = 0 }
        r.usage = u
    end
    local price = (p.prices and p.prices[model]) or prices[model]
    if price then
        u.cost = ((u.input or 0) * (price.input or 0) + (u.output or 0) * (price.output or 0)) / 1e6
    end
    add_usage(totals, model, u)
    local ctx = context()
    local meters = ctx and ctx.llm_meters
    if meters then
        for i = 1, #meters do add_usage(meters[i], model, u) end
    end
end
_M._account = account


--- Usage totals of this runtime: {calls, input, output, cost, by_model}.
function _M.usage()
    return totals
end


local meter_methods = {}
local meter_mt = { __index = meter_methods }

function meter_mt.__tostring(m)
    return format("sibyl.llm.meter (%d calls, %d in, %d out, $%.6f)", m.calls, m.input, m.output, m.cost)
end

--- A usage meter: m:run(fn, ...) counts every call made in fn and in the
-- tasks it spawns (also into enclosing meters).
function _M.meter()
    return setmetatable({ calls = 0, input = 0, output = 0, cost = 0, by_model = {} }, meter_mt)
end

function meter_methods:run(fn, ...)
    local ctx = context()
    local meters = { self }
    if ctx and ctx.llm_meters then
        for _, m in ipairs(ctx.llm_meters) do meters[#meters + 1] = m end
    end
    return sibyl.with_context(setmetatable({ llm_meters = meters }, { __index = ctx }), fn, ...)
end

function meter_methods:reset()
    self.calls, self.input, self.output, self.cost, self.by_model = 0, 0, 0, 0, {}
end


-- -------------------------------------------------------------- clients

local client = {}
local client_mt = { __index = client }

function client_mt.__tostring(c)
    return format("sibyl.llm.client %s (%s, %s, %s)", c.name, c.type, c.base_url or "-",
                  c.ring and (#c.ring .. " keys") or "no key")
end


local function nonempty(s)
    if s == nil or s == "" then return nil end
    return s
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


-- ---------------------------------------------------------- embeddings

local B64 = ffi.new("uint8_t[256]")
do
    local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for i = 0, 255 do B64[i] = 255 end
    for i = 1, 64 do B64[byte(alphabet, i)] = i - 1 end
end

local band, bor, lshift, rshift = bit.band, bit.bor, bit.lshift, bit.rshift

-- Base64 (little-endian float32s) -> float[n], or nil.
local function b64_floats(s)
    local len = #s
    local p = ffi.cast("const uint8_t *", s)
    while len > 0 and p[len - 1] == 61 do len = len - 1 end   -- '='
    local nbytes = floor(len * 3 / 4)
    if nbytes % 4 ~= 0 then return nil end
    local vec = ffi.new("float[?]", nbytes / 4)
    local out = ffi.cast("uint8_t *", vec)
    local o, acc, bits = 0, 0, 0
    for i = 0, len - 1 do
        local v = B64[p[i]]
        if v == 255 then return nil end
        acc = bor(lshift(band(acc, 0xffff), 6), v)
        bits = bits + 6
        if bits >= 8 then
            bits = bits - 8
            out[o] = band(rshift(acc, bits), 0xff)
            o = o + 1
        end
    end
    return vec, nbytes / 4
end

local function to_vector(e)
    if type(e) == "string" then return b64_floats(e) end
    if type(e) ~= "table" then return nil end
    local n = #e
    local vec = ffi.new("float[?]", n)
    for i = 1, n do vec[i - 1] = e[i] end
    return vec, n
end
_M._to_vector = to_vector


local function embed_once(self, req, key)
    local d = self.dialect
    local url, body = d.embed_request(self, req)
    if not url then return nil, mkerror("config", self.name .. ": " .. body) end
    local res, err = http.request{ method = "POST", url = url, body = body, headers = d.headers(self, key),
                                   timeout = req.timeout, connect_timeout = self.connect_timeout or _M.defaults.connect_timeout }
    if not res then return nil, transport_error(self, err) end
    if res.status >= 400 then return nil, http_error(self, res.status, res.body, res.headers, url) end
    local data = json_decode(res.body)
    local items, usage = d.parse_embed(data)
    if not items then
        return nil, mkerror("parse", format("%s: unexpected embeddings reply from %s: %s", self.name, url, usage))
    end
    return { items = items, usage = usage or { input = 0, output = 0 }, model = type(data) == "table" and data.model }
end
client._embed_once = embed_once


--- Embed texts: vectors (a list of float[dims] cdata, in input order), info
-- {dims, model, usage}; or nil, err. opts: input (string or list), model,
-- dimensions, batch_size, concurrency, progress(done, total), timeout.
function client:embed(opts)
    if type(opts) ~= "table" then error("llm.embed: options table expected", 2) end
    local input = opts.input
    if type(input) == "string" then input = { input } end
    if type(input) ~= "table" then error("llm.embed: opts.input must be a string or a list of strings", 2) end
    local n = #input
    local batch = opts.batch_size or _M.defaults.batch_size
    local conc = opts.concurrency or _M.defaults.concurrency
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
                          timeout = opts.timeout or self.timeout or _M.defaults.timeout, messages = {} }
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


-- ------------------------------------------------------ configuration

local registry                  -- { providers = {name = client}, order = {...}, default, fallback, fallback_on }

--- Configure providers: a table or the path of a YAML file (sibyl.config,
-- so ${VAR} works). Returns true or nil, err (kind "config", "io", "parse").
-- { default = "main", fallback = {"main", "backup"}, fallback_on = {...},
--   providers = { main = { type = "openai", base_url = ..., model = ... } },
--   prices = { ["gpt-4o-mini"] = { input = 0.15, output = 0.6 } },
--   retry = { attempts = 4 } }
-- `retry` applies to every configured provider (its own `retry` wins); a new
-- configuration replaces the previous one, prices included.
function _M.configure(conf)
    if type(conf) == "string" then
        local err
        conf, err = require("sibyl.config").load(conf)
        if not conf then return nil, err end
        conf = conf.llm or conf
    end
    if type(conf) ~= "table" then error("llm.configure: a table or a YAML file path expected", 2) end
    local reg = { providers = {}, order = {} }
    if type(conf.providers) ~= "table" then
        return nil, mkerror("config", "llm.configure: `providers` must map names to provider settings "
            .. "(e.g. providers: {main: {type: openai, base_url: ..., model: ...}})")
    end
    local names = {}
    for name in pairs(conf.providers) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
        local pc = merge(conf.providers[name], { name = name })
        if conf.retry then pc.retry = merge(conf.retry, pc.retry) end    -- the provider's own wins
        local ok, c = pcall(_M.client, pc)
        if not ok then
            return nil, mkerror("config", format("llm.configure: provider %q: %s", name,
                                                 gsub(tostring(c), "^[^:]*:%d+: ", "")))
        end
        reg.providers[name] = c
        reg.order[#reg.order + 1] = name
    end
    reg.default = conf.default or reg.order[1]
    if not reg.providers[reg.default] then
        return nil, mkerror("config", format("llm.configure: default provider %q is not among the providers (%s)",
                                             tostring(reg.default), concat(reg.order, ", ")))
    end
    reg.fallback = conf.fallback
    reg.fallback_on = conf.fallback_on
    for _, f in ipairs(reg.fallback or {}) do
        local fname = type(f) == "table" and f.provider or f
        if not reg.providers[fname] then
            return nil, mkerror("config", format("llm.configure: fallback provider %q is not configured", tostring(fname)))
        end
    end
    prices = merge(conf.prices or {})
    registry = reg
    return true
end


-- Providers from the environment, when nothing was configured.
local function from_env()
    local path = nonempty(getenv("SIBYL_LLM_CONFIG"))
    if path then
        local ok, err = _M.configure(path)
        if not ok then return nil, err end
        return registry
    end
    local conf = { providers = {} }
    local model = nonempty(getenv("SIBYL_MODEL"))
    if nonempty(getenv("OPENAI_API_KEY")) or nonempty(getenv("OPENAI_BASE_URL")) then
        conf.providers.openai = { type = "openai", base_url = nonempty(getenv("OPENAI_BASE_URL")),
                                  model = nonempty(getenv("OPENAI_MODEL")) }
    end
    if nonempty(getenv("ANTHROPIC_API_KEY")) or nonempty(getenv("ANTHROPIC_BASE_URL")) then
        conf.providers.anthropic = { type = "anthropic", base_url = nonempty(getenv("ANTHROPIC_BASE_URL")),
                                     model = nonempty(getenv("ANTHROPIC_MODEL")) }
    end
    local want = nonempty(getenv("SIBYL_PROVIDER"))
    if want == "mock" then conf.providers.mock = { type = "mock" } end
    if want == "ollama" then
        conf.providers.ollama = { type = "openai", api_key = false,
            base_url = (nonempty(getenv("OLLAMA_HOST")) and ("http://" .. gsub(getenv("OLLAMA_HOST"), "^https?://", "")) or "http://127.0.0.1:11434") .. "/v1",
            model = "llama3.2" }
    end
    if next(conf.providers) == nil then
        return nil, mkerror("config", "sibyl.llm: no provider configured; set OPENAI_API_KEY (and "
            .. "OPENAI_BASE_URL for other OpenAI-compatible servers), ANTHROPIC_API_KEY, "
            .. "SIBYL_PROVIDER=ollama or =mock, or call llm.configure{...} (see doc/llm.md)")
    end
    conf.default = want or (conf.providers.openai and "openai") or "anthropic"
    if not conf.providers[conf.default] then
        return nil, mkerror("config", format("sibyl.llm: SIBYL_PROVIDER=%s, but that provider has no settings "
            .. "(set its API key or base URL)", want))
    end
    if model then conf.providers[conf.default].model = model end
    local ok, err = _M.configure(conf)
    if not ok then return nil, err end
    return registry
end


local function get_registry()
    if registry then return registry end
    return from_env()
end


--- The configured client called `name` (default: the default provider).
function _M.provider(name)
    local reg, err = get_registry()
    if not reg then return nil, err end
    name = name or reg.default
    local c = reg.providers[name]
    if not c then
        return nil, mkerror("config", format("sibyl.llm: no provider %q (configured: %s)", tostring(name),
                                             concat(reg.order, ", ")))
    end
    return c
end


-- The chain of {client, model} to try for a call.
local function chain_for(opts)
    local first = opts.provider
    local chain = {}
    if type(first) == "table" then
        chain[1] = { first, opts.model }
    else
        local c, err = _M.provider(first)
        if not c then return nil, err end
        chain[1] = { c, opts.model }
    end
    local fallback = opts.fallback
    if fallback == nil and opts.provider == nil and registry then fallback = registry.fallback end
    for _, f in ipairs(fallback or {}) do
        local fc, fmodel = f, nil
        if type(f) == "table" and getmetatable(f) ~= client_mt and not f.chat then
            fc, fmodel = f.provider, f.model
        end
        if type(fc) ~= "table" then
            local err
            fc, err = _M.provider(fc)
            if not fc then return nil, err end
        end
        if fc ~= chain[1][1] or fmodel then chain[#chain + 1] = { fc, fmodel } end
    end
    return chain
end


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
    local chain, cerr = chain_for(opts)
    if not chain then return nil, cerr end
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
    registry = nil
    prices = {}
end


_M._client_mt = client_mt
_M._client = client
return _M
