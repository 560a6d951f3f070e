-- sibyl.server -- an HTTP server on libevent's evhttp; every request runs in
-- its own task, so handlers may call I/O (an LLM, Redis...) freely.
--
--   local server = require "sibyl.server"
--   local srv = assert(server.listen{ port = 8080, routes = {
--       ["GET /healthz"] = function(req) return { ok = true } end,          -- table -> JSON
--       ["POST /v1/echo"] = function(req) return { status = 201, body = req.body } end,
--       ["GET /users/:id"] = function(req) return "user " .. req.params.id end,
--       ["GET /events"] = function(req, res)                                -- SSE
--           for i = 1, 3 do res:sse{ data = "tick " .. i }; sibyl.sleep(1) end
--       end,
--   } })
--   print("listening on", srv.port)
--
-- A handler returns a table (JSON, 200), a string (text/plain, 200), a
-- response {status=, headers=, body=} (body may be a table: JSON), or nil
-- (204). Errors raised by a handler become 500 with a short JSON message
-- (the traceback goes to the log). Limits: max_body (1 MiB, 413 beyond),
-- max_header (16 KiB), timeout (60 s idle), stream_timeout (600 s between
-- writes of a streamed reply), max_inflight (10,000; 503 beyond).

local core = require "sibyl.server.core"
local json = require "sibyl.json"
local sibyl = require "sibyl"

local type, pairs, ipairs, tostring, setmetatable, rawget, error, xpcall, select =
    type, pairs, ipairs, tostring, setmetatable, rawget, error, xpcall, select
local concat, sort = table.concat, table.sort
local lower, format, find, gsub, sub, match, gmatch =
    string.lower, string.format, string.find, string.gsub, string.sub, string.match, string.gmatch
local traceback = debug.traceback

local _M = { _VERSION = "0.1.0" }

local STATUS_TEXT = { [404] = "not found", [405] = "method not allowed", [500] = "internal error" }


-- ------------------------------------------------------------- requests

local headers_mt = {
    __index = function(t, k)
        if type(k) == "string" then return rawget(t, lower(k)) end
    end,
}

local request_mt = {}
request_mt.__index = request_mt


--- Decode the request body as JSON: value, or nil, err (kind "parse").
function request_mt:json()
    return json.decode(self.body)
end


-- Percent-decoding; in query strings "+" also means a space (not in paths).
local unescape = require("sibyl.http").unescape


local function parse_query(qs)
    local q = {}
    if not qs then return q end
    for pair in gmatch(qs, "[^&]+") do
        local k, v = match(pair, "^([^=]*)=?(.*)$")
        k, v = unescape(k, true), unescape(v, true)
        local prev = q[k]
        if prev == nil then
            q[k] = v
        elseif type(prev) == "table" then
            prev[#prev + 1] = v
        else
            q[k] = { prev, v }
        end
    end
    return q
end


local function make_request(raw)
    local h = {}
    local flat = raw.headers
    for i = 1, #flat, 2 do
        local k = lower(flat[i])
        h[k] = h[k] and (h[k] .. ", " .. flat[i + 1]) or flat[i + 1]
    end
    raw.headers = setmetatable(h, headers_mt)
    raw.query = parse_query(raw.query_string)
    raw.path = unescape(raw.path)
    return setmetatable(raw, request_mt)
end


-- ------------------------------------------------------------ responses

local response_mt = {}
response_mt.__index = response_mt


local function flat_headers(h, out)
    out = out or {}
    for k, v in pairs(h or {}) do
        out[#out + 1] = k
        out[#out + 1] = tostring(v)
    end
    return out
end


--- Start a streamed reply (status 200 and headers) if not started yet.
function response_mt:start(status, headers)
    if self.started then return self.alive end
    self.started = true
    self.alive = core.start(self._rq, status or 200, flat_headers(headers))
    return self.alive
end


--- Write a chunk of a streamed reply. Returns false once the client left.
function response_mt:write(data)
    if not self.started then self:start() end
    self.alive = self.alive and core.chunk(self._rq, data)
    return self.alive
end


--- Send one Server-Sent Event {event=, data= (string or table -> JSON), id=, retry=}.
-- Returns false once the client has gone (its handler is then cancelled).
function response_mt:sse(ev)
    if not self.started then
        self.is_sse = true
        self:start(200, { ["Content-Type"] = "text/event-stream", ["Cache-Control"] = "no-cache",
                          ["X-Accel-Buffering"] = "no" })
    end
    if type(ev) == "string" then ev = { data = ev } end
    local parts = {}
    if ev.event then parts[#parts + 1] = "event: " .. ev.event .. "\n" end
    if ev.id then parts[#parts + 1] = "id: " .. tostring(ev.id) .. "\n" end
    if ev.retry then parts[#parts + 1] = "retry: " .. tostring(ev.retry) .. "\n" end
    local data = ev.data
    if type(data) == "table" then data = json.encode(data) end
    for line in gmatch(tostring(data or "") .. "\n", "([^\n]*)\n") do
        parts[#parts + 1] = "data: " .. line .. "\n"
    end
    parts[#parts + 1] = "\n"
    return self:write(concat(parts))
end


--- Drop the client's connection at once, mid-reply if need be (to test
-- how clients handle resets and truncated streams). Like a real reset,
-- output not yet flushed to the socket is lost: yield (sibyl.sleep) after
-- writing if the client must see it first.
function response_mt:abort()
    self.started, self.closed, self.alive = true, true, false
    core.abort(self._rq)
end


--- Finish a streamed reply. Idempotent.
function response_mt:close()
    if self.started and not self.closed then
        self.closed = true
        core.finish(self._rq)
    end
end


-- Turn a handler's return value into status, headers, body.
local function shape(ret)
    if ret == nil then
        return 204, {}, ""
    end
    local t = type(ret)
    if t == "string" then
        return 200, { ["Content-Type"] = "text/plain; charset=utf-8" }, ret
    end
    if t ~= "table" then
        error("handler returned a " .. t .. "; return a table, a string or a response", 0)
    end
    if ret.status or ret.body ~= nil or ret.headers then
        local status = ret.status or 200
        if type(status) ~= "number" or status < 100 or status > 599 or status % 1 ~= 0 then
            error("handler returned status " .. tostring(status) .. "; want an HTTP status number", 0)
        end
        local headers, body = ret.headers or {}, ret.body
        local has_ct = false
        for k in pairs(headers) do if lower(k) == "content-type" then has_ct = true end end
        if type(body) == "table" then
            body = json.encode(body)
            if not has_ct then headers["Content-Type"] = "application/json" end
        elseif body ~= nil and not has_ct then
            headers["Content-Type"] = "text/plain; charset=utf-8"
        end
        return status, headers, body or ""
    end
    return 200, { ["Content-Type"] = "application/json" }, json.encode(ret)
end


local function error_body(status, message)
    return json.encode({ error = { message = message, status = status } })
end


-- ---------------------------------------------------------------- router

-- Compile "METHOD /path/:param/*" into a matcher. A route without a method
-- matches any method.
local function compile_route(key, handler)
    if type(handler) ~= "function" then
        error("server: route '" .. tostring(key) .. "' needs a function handler", 3)
    end
    local method, path = match(key, "^(%u+)%s+(/.*)$")
    if not method then
        path = key
        if sub(path, 1, 1) ~= "/" then
            error("server: bad route '" .. key .. "' (want \"METHOD /path\" or \"/path\")", 3)
        end
    end
    local names, static = {}, 0
    local pattern = gsub(path, "[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0")
    pattern = gsub(pattern, ":([%w_]+)", function(name)
        names[#names + 1] = name
        return "([^/]+)"
    end)
    if sub(pattern, -1) == "*" then
        names[#names + 1] = "splat"
        pattern = sub(pattern, 1, -2) .. "(.*)"
    end
    for _ in gmatch(path, "/[^/:*]+") do static = static + 1 end
    return { method = method, pattern = "^" .. pattern .. "$", names = names, handler = handler,
             static = static, key = key, exact = #names == 0, path = path }
end


--- Build a router from a routes table. Exact paths win over patterns, and
-- patterns with more fixed segments win over looser ones.
function _M.router(routes)
    local list = {}
    for key, handler in pairs(routes or {}) do
        list[#list + 1] = compile_route(key, handler)
    end
    sort(list, function(a, b)
        if a.exact ~= b.exact then return a.exact end
        if a.static ~= b.static then return a.static > b.static end
        return a.key < b.key
    end)
    return function(method, path)
        local path_matched = false
        for _, r in ipairs(list) do
            local caps
            if r.exact then
                if path == r.path then caps = {} end
            else
                local c = { match(path, r.pattern) }
                if c[1] ~= nil then caps = c end
            end
            if caps then
                path_matched = true
                if r.method == nil or r.method == method or (method == "HEAD" and r.method == "GET") then
                    local params = {}
                    for i, name in ipairs(r.names) do params[name] = caps[i] end
                    return r.handler, params
                end
            end
        end
        return nil, path_matched and 405 or 404
    end
end


-- -------------------------------------------------------------- serving

local function log_error(req, msg)
    io.stderr:write(format("sibyl.server: %s %s: %s\n", req.method, req.path, msg))
end


--- Listen for HTTP requests. opts: host ("127.0.0.1"), port (8080; 0 picks
-- a free one), routes (table) or handler (function(req, res)), max_body,
-- max_header, timeout, max_inflight, on_error(req, err). Returns the server
-- (server.port, server:close(), server:shutdown()) or nil, err.
function _M.listen(opts)
    if type(opts) ~= "table" then
        error("server.listen: options table expected", 2)
    end
    local route = opts.handler and function() return opts.handler, {} end or _M.router(opts.routes)
    if not opts.handler and opts.routes == nil then
        error("server.listen: opts.routes or opts.handler is required", 2)
    end
    local on_error = opts.on_error or log_error

    local function dispatch(raw)
        local req = make_request(raw)
        local rq = raw._rq
        local res = setmetatable({ _rq = rq, started = false, alive = true }, response_mt)
        local handler, params = route(req.method, req.path)
        if not handler then
            core.reply(rq, params, { "Content-Type", "application/json" },
                error_body(params, STATUS_TEXT[params] .. ": " .. req.method .. " " .. req.path))
            return
        end
        req.params = params
        local ok, status, headers, body = xpcall(function()
            return shape(handler(req, res))
        end, traceback)
        if res.started then           -- a streamed reply ends with the handler
            if ok then
                res:close()
                return
            end
            -- Failed mid-stream: let the client know rather than end cleanly. An
            -- SSE client gets a last "error" event; a plain stream is cut short.
            on_error(req, status)
            if res.is_sse then
                res:sse{ event = "error", data = { error = {
                    message = "internal error: the handler failed (see the server log)", status = 500 } } }
                res:close()
            else
                res:abort()
            end
            return
        end
        if not ok then
            on_error(req, status)
            core.reply(rq, 500, { "Content-Type", "application/json" },
                error_body(500, "internal error: the handler failed (see the server log)"))
            return
        end
        if req.method == "HEAD" then   -- headers of the GET reply, no body
            headers["Content-Length"] = #body
            body = ""
        end
        core.reply(rq, status, flat_headers(headers), body)
    end

    local srv, err = core.listen{
        host = opts.host, port = opts.port, max_body = opts.max_body, max_header = opts.max_header,
        timeout = opts.timeout, stream_timeout = opts.stream_timeout, max_inflight = opts.max_inflight,
        backlog = opts.backlog,
        dispatch = dispatch,
    }
    if not srv then
        return nil, err
    end
    return setmetatable({ port = srv:port(), host = opts.host or "127.0.0.1", _srv = srv }, {
        __index = {
            close = function(self) self._srv:close() end,
            shutdown = function(self) self._srv:shutdown() end,
            inflight = function(self) return self._srv:inflight() end,
        },
        __tostring = function(self) return tostring(self._srv) end,
    })
end


--- Wait for SIGINT or SIGTERM, then stop accepting, let requests in flight
-- finish (up to `grace` seconds, default 10) and close. For `sibyl serve`.
function _M.serve_until_signal(srv, grace)
    local sig = core.wait_signal({ "INT", "TERM" })
    io.stderr:write("sibyl: " .. sig .. " received, shutting down\n")
    srv:shutdown()
    local t0 = sibyl.now()
    while srv:inflight() > 0 and sibyl.now() - t0 < (grace or 10) do
        sibyl.sleep(0.05)
    end
    srv:close()
end


return _M
