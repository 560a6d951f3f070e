-- sibyl.http -- the HTTP client on the event loop: plain http:// over a
-- keep-alive HTTP/1.1 engine (http_h1.c), everything else through libcurl
-- (http_curl.c). This file holds the policy both share: options, JSON
-- bodies, redirects, responses, SSE.
--
--   local http = require "sibyl.http"
--   local res, err = http.get("http://127.0.0.1:8080/v1/models")
--   local res, err = http.post(url, { model = "m" })          -- table body -> JSON
--   local res, err = http.request{ method = "PUT", url = url, headers = { ["x-api-key"] = k },
--                                  body = "raw", query = { q = "x" }, timeout = 30 }
--   res.status, res.headers["content-type"], res.body, res:json()
--
-- Streaming: opts.stream = function(chunk, res) ... end (return false to
-- stop early); http.sse(opts) for Server-Sent Events.
-- Errors (nil, err): kinds connect, timeout, tls, url, http, too_large,
-- parse, cancelled. 4xx/5xx are returned as responses unless
-- opts.raise_status is true (then kind "http" with err.status, err.body).

local core = require "sibyl.http.core"
local json = require "sibyl.json"
local sibyl = require "sibyl"

local type, pairs, ipairs, tostring, setmetatable, rawget, error, pcall =
    type, pairs, ipairs, tostring, setmetatable, rawget, error, pcall
local concat, sort = table.concat, table.sort
local lower, format, find, gmatch, match, sub, gsub, char = string.lower, string.format, string.find,
    string.gmatch, string.match, string.sub, string.gsub, string.char
local escape = core.escape

local _M = { _VERSION = "0.1.0" }

--- Defaults for every request; change them here or per call.
_M.defaults = {
    timeout = 60,            -- seconds for the whole request (0 = none)
    connect_timeout = 10,    -- seconds to connect
    max_body = 64 * 1024 * 1024,
    follow = true,           -- follow redirects
    max_redirects = 5,
    tls_verify = true,
    compressed = false,      -- ask for gzip/br/zstd and decode it (libcurl)
    engine = "auto",         -- "auto" | "h1" | "curl" (see doc/http.md)
}


-- Case-insensitive header lookup: names are stored lower-case.
local headers_mt = {
    __index = function(t, k)
        if type(k) == "string" then
            return rawget(t, lower(k))
        end
    end,
}


-- Turn the "name\0value\0..." block from C (names already lower-case) into
-- a header table; repeated names are joined with ", ".
local function make_headers(block)
    local h = {}
    for k, v in gmatch(block, "([^%z]*)%z([^%z]*)%z") do
        local prev = h[k]
        if prev then
            h[k] = prev .. ", " .. v
        else
            h[k] = v
        end
    end
    return setmetatable(h, headers_mt)
end


-- Responses build their header table on first use of res.headers: most
-- callers only want the body.
local response_methods = {}
local response_mt = {
    __index = function(res, k)
        if k == "headers" then
            local h = make_headers(rawget(res, "_flat"))
            rawset(res, "headers", h)
            return h
        end
        return response_methods[k]
    end,
}

--- Decode the body as JSON: value, or nil, err (kind "parse").
function response_methods:json()
    local v, err = json.decode(self.body or "")
    if v == nil and err then
        err.message = err.message .. " (HTTP " .. tostring(self.status) .. " from " .. self.url .. ")"
        err.status = self.status
    end
    return v, err
end


function response_mt.__tostring(self)
    return format("sibyl.http.response %d (%d bytes)", self.status, #(self.body or ""))
end


local function encode_query(q)
    local keys = {}
    for k in pairs(q) do keys[#keys + 1] = k end
    sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local parts = {}
    for _, k in ipairs(keys) do
        local v = q[k]
        if type(v) == "table" then
            for _, item in ipairs(v) do
                parts[#parts + 1] = escape(tostring(k)) .. "=" .. escape(tostring(item))
            end
        else
            parts[#parts + 1] = escape(tostring(k)) .. "=" .. escape(tostring(v))
        end
    end
    return concat(parts, "&")
end


-- Normalise user options into what the C core takes.
local function prepare(opts, level)
    if type(opts) ~= "table" then
        error("http.request: options table expected, got " .. type(opts), level)
    end
    local url = opts.url
    if type(url) ~= "string" then
        error("http.request: opts.url must be a string", level)
    end
    if opts.query then
        if type(opts.query) ~= "table" then
            error("http.request: opts.query must be a table", level)
        end
        local qs = encode_query(opts.query)
        if qs ~= "" then
            url = url .. (find(url, "?", 1, true) and "&" or "?") .. qs
        end
    end
    local d = _M.defaults
    local method = opts.method and opts.method:upper() or (opts.body ~= nil and "POST" or "GET")
    local hdrs, has_ct = {}, false
    if opts.headers then
        if type(opts.headers) ~= "table" then
            error("http.request: opts.headers must be a table of name = value", level)
        end
        for k, v in pairs(opts.headers) do
            if type(k) == "number" then         -- a ready "Name: value" line
                if type(v) ~= "string" then
                    error("http.request: opts.headers[" .. k .. "] must be a \"Name: value\" string", level)
                end
                if find(v, "^[Cc][Oo][Nn][Tt][Ee][Nn][Tt]%-[Tt][Yy][Pp][Ee]:") then has_ct = true end
                hdrs[#hdrs + 1] = v
            else
                if lower(k) == "content-type" then has_ct = true end
                hdrs[#hdrs + 1] = k .. ": " .. tostring(v)
            end
        end
    end
    local body = opts.body
    if type(body) == "table" then
        body = json.encode(body)
        if not has_ct then hdrs[#hdrs + 1] = "Content-Type: application/json" end
    elseif body ~= nil and type(body) ~= "string" then
        error("http.request: opts.body must be a string or a table (sent as JSON)", level)
    end
    if body ~= nil then
        hdrs[#hdrs + 1] = "Expect:"          -- no 100-continue round trip
    end
    return {
        url = url, method = method, headers = hdrs, body = body,
        timeout = opts.timeout or d.timeout,
        connect_timeout = opts.connect_timeout or d.connect_timeout,
        max_body = opts.max_body or d.max_body,
        follow = (opts.follow == nil) and d.follow or opts.follow,
        max_redirects = opts.max_redirects or d.max_redirects,
        tls_verify = (opts.tls_verify == nil) and d.tls_verify or opts.tls_verify,
        compressed = (opts.compressed == nil) and d.compressed or opts.compressed,
        engine = opts.engine or d.engine,
    }
end


-- ------------------------------------------------------------ redirects

local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }

-- Headers that carry credentials: not sent on to another host.
local CREDENTIALS = { authorization = true, cookie = true, ["proxy-authorization"] = true,
                      ["x-api-key"] = true, ["api-key"] = true }

local function origin(url)
    return lower(match(url, "^(%a[%w+.-]*://[^/?#]*)") or "")
end

-- Resolve a Location header against the URL it answered (RFC 3986 5.2,
-- without dot-segment removal).
local function resolve(base, loc)
    if find(loc, "^%a[%w+.-]*:") then return loc end
    local scheme, auth, path = match(base, "^(%a[%w+.-]*:)//([^/?#]*)([^?#]*)")
    if not scheme then return loc end
    if sub(loc, 1, 2) == "//" then return scheme .. loc end
    if sub(loc, 1, 1) == "/" then return scheme .. "//" .. auth .. loc end
    if sub(loc, 1, 1) == "?" then return scheme .. "//" .. auth .. path .. loc end
    return scheme .. "//" .. auth .. (match(path, "^(.*/)") or "/") .. loc
end

-- The request to make after a redirect answer, false when the answer is
-- final, or nil, err. `n` counts redirects followed so far.
local function next_hop(c, status, flat, n)
    if not c.follow or not REDIRECT[status] then return false end
    local loc = match("\0" .. flat, "%zlocation%z([^%z]*)")
    if not loc or loc == "" then return false end
    if n >= c.max_redirects then
        return nil, sibyl.error("http", format("%s: too many redirects (more than %d); raise "
            .. "opts.max_redirects or set follow = false", c.url, c.max_redirects))
    end
    local url = resolve(c.url, loc)
    if not find(lower(url), "^https?://") then
        return nil, sibyl.error("url", format("%s: redirect to %s, which is not http or https", c.url, url))
    end
    local nc = {}
    for k, v in pairs(c) do nc[k] = v end
    nc.url = url
    local drop_body = status == 303 and c.method ~= "HEAD" or (status <= 302 and c.method == "POST")
    if drop_body then
        nc.method = c.method == "HEAD" and "HEAD" or "GET"
        nc.body = nil
    end
    local cross = origin(url) ~= origin(c.url)
    if cross or drop_body then
        local hdrs = {}
        for _, line in ipairs(c.headers) do
            local name = lower(match(line, "^([^:]*)"))
            if not (cross and CREDENTIALS[name]) and not (drop_body and name == "content-type") then
                hdrs[#hdrs + 1] = line
            end
        end
        nc.headers = hdrs
    end
    return nc
end


local function make_response(url, status, flat, body)
    return setmetatable({ status = status, _flat = flat, body = body, url = url }, response_mt)
end


local function check_status(res, opts)
    if opts.raise_status and res.status >= 400 then
        return nil, sibyl.error("http", format("HTTP %d from %s", res.status, res.url),
            { status = res.status, body = res.body, headers = res.headers })
    end
    return res
end


-- Start a streamed transfer and wait for its headers, following
-- redirects: t, res or nil, err.
local function open_stream(c)
    for n = 0, math.huge do
        local t = core.open(c)
        local status, flat = t:headers()
        if not status then
            t:close()
            return nil, flat
        end
        local nc, err = next_hop(c, status, flat, n)
        if not nc then
            if err then
                t:close()
                return nil, err
            end
            return t, make_response(c.url, status, flat, nil)
        end
        t:close()
        c = nc
    end
end


-- Streamed request: call opts.stream(chunk, res) as data arrives.
local function stream_request(c, opts)
    local t, res = open_stream(c)
    if not t then
        return nil, res
    end
    local fn = opts.stream
    while true do
        local chunk, err = t:read()
        if chunk == nil then
            t:close()
            if err then return nil, err end
            break
        end
        local ok, more = pcall(fn, chunk, res)
        if not ok then
            t:close()
            error(more, 0)
        end
        if more == false then
            t:close()
            break
        end
    end
    return check_status(res, opts)
end


--- Make a request. Returns a response or nil, err.
function _M.request(opts)
    local c = prepare(opts, 3)
    if opts.stream then
        return stream_request(c, opts)
    end
    for n = 0, math.huge do
        local status, flat, body = core.request(c)
        if not status then
            return nil, flat
        end
        local nc, err = next_hop(c, status, flat, n)
        if not nc then
            if err then return nil, err end
            return check_status(make_response(c.url, status, flat, body), opts)
        end
        c = nc
    end
end


--- GET url. opts may add headers, query, timeout...
function _M.get(url, opts)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.url, o.method = url, o.method or "GET"
    return _M.request(o)
end


--- POST body (a string, or a table sent as JSON) to url.
function _M.post(url, body, opts)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.url, o.method, o.body = url, o.method or "POST", body
    return _M.request(o)
end


-- ------------------------------------------------------------------ SSE

local sse_stream = {}
sse_stream.__index = sse_stream


--- The next event {event=, data=, id=, retry=}; nil at the end of the
-- stream; or nil, err (the stream is closed on error).
function sse_stream:next()
    while true do
        local i = self._qi
        if i <= self._qn then
            self._qi = i + 1
            return self._queue[i]
        end
        if self._t == nil then
            return nil, self.error
        end
        local chunk, err = self._t:read()
        if chunk == nil then
            self:close()
            self.error = err
            return nil, err
        end
        local events, perr = self._p:feed(chunk)
        if not events then
            self:close()
            self.error = perr
            return nil, perr
        end
        self._queue, self._qi, self._qn = events, 1, #events
    end
end


--- Iterate events: `for ev in stream:events() do ... end`. After the loop,
-- stream.error is set when the stream failed rather than ended.
function sse_stream:events()
    return function()
        return (self:next())
    end
end


--- Stop reading: the transfer is aborted. Idempotent.
function sse_stream:close()
    if self._t then
        self._t:close()
        self._t = nil
        self._p:close()
    end
end


--- Open a Server-Sent Events stream (GET by default, POST with a body).
-- Returns a stream (stream.response holds status and headers) or nil, err.
-- A 4xx/5xx answer is an error of kind "http" with err.status and err.body.
function _M.sse(opts)
    local c = prepare(opts, 3)
    c.headers[#c.headers + 1] = "Accept: text/event-stream"
    local t, res = open_stream(c)
    if not t then
        return nil, res
    end
    local status = res.status
    if status >= 400 then
        local parts = {}
        while #parts < 64 do
            local chunk = t:read()
            if not chunk then break end
            parts[#parts + 1] = chunk
        end
        t:close()
        res.body = concat(parts)
        return nil, sibyl.error("http", format("HTTP %d from %s", status, c.url),
            { status = status, body = res.body, headers = res.headers })
    end
    return setmetatable({
        response = res,
        _t = t,
        _p = require("sibyl.sse").parser({ max_event = opts.max_event }),
        _queue = {},
        _qi = 1,
        _qn = 0,
    }, sse_stream)
end


--- Percent-encode s (RFC 3986: unreserved characters stay).
_M.escape = escape


--- Decode %XX escapes in s; with plus, "+" becomes a space first (query
-- strings and forms).
function _M.unescape(s, plus)
    if plus then s = gsub(s, "+", " ") end
    return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end


--- The engine "auto" picks for url: "h1" or "curl".
function _M.engine(url, compressed)
    return core.engine(url, compressed)
end


--- Set client-wide limits: {max_connections=1024, max_host_connections=256,
-- engine="auto"|"curl"}. Requests beyond the limits wait inside the client.
-- Returns the settings in force.
function _M.configure(opts)
    return core.configure(opts)
end


return _M
