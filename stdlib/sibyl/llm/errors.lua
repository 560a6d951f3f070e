-- sibyl.llm.errors -- provider failures as sibyl error objects: HTTP
-- statuses, error events inside a stream and transport errors mapped to
-- kinds (rate_limited, auth, context_length, content_filter, http...),
-- Retry-After parsing, and which kinds a retry may cure.
--
-- `p` below is a client (sibyl.llm): its name, dialect (for error_info) and
-- key ring (to redact echoed keys). Internal to sibyl.llm.

local sibyl = require "sibyl"
local json = require "sibyl.json"

local type, ipairs, tostring, tonumber = type, ipairs, tostring, tonumber
local format, find, sub, match, lower, gsub =
    string.format, string.find, string.sub, string.match, string.lower, string.gsub
local max = math.max
local mkerror = sibyl.error
local json_decode = json.decode

local _M = {}

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
_M.transient = transient


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
_M.retry_after = retry_after


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

-- What to do about an error of each kind (appended to its message).
local HINTS = {
    rate_limited = "wait, add API keys (api_keys), or lower the request rate (rpm/tpm)",
    auth = "check the provider's API key",
    context_length = "shorten the messages or choose a model with a larger context",
    content_filter = "the provider refused the content; rephrase the request",
}
_M.HINTS = HINTS


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
_M.http_error = http_error


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
_M.stream_error = stream_error


-- A transport error from sibyl.http: keep its kind, name the provider.
local function transport_error(p, err)
    err.message = p.name .. ": " .. tostring(err.message)
    err.provider = p.name
    return err
end
_M.transport_error = transport_error


return _M
