-- sibyl.mcp.server_http -- Streamable HTTP for sibyl.mcp.server, on
-- sibyl.server: one endpoint (POST /mcp by default).
--  * 2026-07-28 requests are stateless: MCP-Protocol-Version, Mcp-Method,
--    Mcp-Name and Mcp-Param-* headers are checked against the body (400
--    HeaderMismatch), unknown versions get 400 UnsupportedProtocolVersion,
--    unknown methods 404; subscriptions/listen keeps an SSE stream open.
--  * 2025-xx clients open a session with initialize (Mcp-Session-Id),
--    end it with DELETE; GET answers 405 (no server-initiated stream).
--  * A request with a progressToken (and an Accept that allows it) gets an
--    SSE answer: progress notifications, then the response.
--  * Origin is validated (DNS rebinding): by default only loopback origins
--    are allowed; others get 403.

local sibyl = require "sibyl"
local json = require "sibyl.json"
local proto = require "sibyl.mcp.protocol"
local server_mod = require "sibyl.mcp.server"

local type, pairs, ipairs, tostring, tonumber, next = type, pairs, ipairs, tostring, tonumber, next
local format, find, lower, byte = string.format, string.find, string.lower, string.byte
local code, rpc_error = proto.code, proto.rpc_error

local server = server_mod.server

local _M = {}

_M.defaults = {
    path = "/mcp",
    keepalive = 15,         -- seconds between SSE comments on a subscriptions/listen stream
}


local function reply(status, msg, headers)
    local h = headers or {}
    if msg == nil then return { status = status, headers = h, body = "" } end
    h["Content-Type"] = "application/json"
    return { status = status, headers = h, body = json.encode(msg) }
end


local function random_id()
    return (sibyl.random_bytes(16):gsub(".", function(c) return format("%02x", byte(c)) end))
end


local LOOPBACK = { localhost = true, ["127.0.0.1"] = true, ["[::1]"] = true }

-- Is this Origin allowed? Listed origins, else loopback hosts (any port).
local function origin_ok(origin, allowed)
    if origin == nil then return true end
    if allowed then
        for _, o in ipairs(allowed) do
            if o == "*" or o == origin then return true end
        end
        return false
    end
    local host = origin:match("^https?://([^/:]+)") or origin:match("^https?://(%[[^%]]+%])")
    return host ~= nil and LOOPBACK[lower(host)] == true
end


local function mismatch(id, what)
    return reply(400, rpc_error(id, code.HEADER_MISMATCH, "Header mismatch: " .. what))
end


-- Same value? Header strings against body values (numbers numerically).
local function same(hv, bv)
    if type(bv) == "boolean" then return hv == (bv and "true" or "false") end
    if type(bv) == "number" then return tonumber(hv) == bv end
    return hv == bv
end


-- Check the mirrored headers of a modern request: nil when fine, else the
-- 400 reply.
function server:_check_headers(req, msg, version)
    local h = req.headers
    local pv = h["mcp-protocol-version"]
    if pv == nil then return mismatch(msg.id, "the MCP-Protocol-Version header is missing") end
    if pv ~= version then
        return mismatch(msg.id, format("MCP-Protocol-Version header %q does not match _meta %q", pv, version))
    end
    local mm = h["mcp-method"]
    if mm == nil then return mismatch(msg.id, "the Mcp-Method header is missing") end
    if mm ~= msg.method then
        return mismatch(msg.id, format("Mcp-Method header %q does not match body method %q", mm, msg.method))
    end
    local params = type(msg.params) == "table" and msg.params or {}
    local np = proto.NAME_PARAM[msg.method]
    if np then
        local hn = h["mcp-name"]
        if hn == nil then return mismatch(msg.id, "the Mcp-Name header is missing") end
        local v, why = proto.decode_header_value(hn)
        if not v then return mismatch(msg.id, "Mcp-Name header: " .. why) end
        if v ~= params[np] then
            return mismatch(msg.id, format("Mcp-Name header value %q does not match body value %q", v, tostring(params[np])))
        end
    end
    if msg.method == "tools/call" then
        local t = self.tools[params.name]
        for _, p in ipairs(t and t.param_headers or {}) do
            local bv = proto.at_path(type(params.arguments) == "table" and params.arguments or {}, p.path)
            local hv = h["mcp-param-" .. lower(p.header)]
            if bv ~= nil then
                if hv == nil then return mismatch(msg.id, "the Mcp-Param-" .. p.header .. " header is missing") end
                local dv, why = proto.decode_header_value(hv)
                if not dv then return mismatch(msg.id, "Mcp-Param-" .. p.header .. ": " .. why) end
                if not same(dv, bv) then
                    return mismatch(msg.id, format("Mcp-Param-%s header %q does not match the argument", p.header, dv))
                end
            end
        end
    end
end


-- The HTTP status for a JSON-RPC answer.
local function status_of(resp)
    local e = resp and resp.error
    if not e then return 200 end
    if e.code == code.METHOD_NOT_FOUND then return 404 end
    if e.code == code.UNSUPPORTED_VERSION or e.code == code.HEADER_MISMATCH or e.code == code.INVALID_REQUEST
       or e.code == code.MISSING_CAPABILITY or e.code == code.PARSE then
        return 400
    end
    return 200
end


-- Run one request for sess and answer: JSON, or SSE when the client asked
-- for progress and accepts event streams.
function server:_answer(req, res, msg, sess, headers)
    local meta = type(msg.params) == "table" and type(msg.params._meta) == "table" and msg.params._meta or {}
    local accept = req.headers["accept"] or ""
    if meta.progressToken ~= nil and find(accept, "text/event-stream", 1, true) then
        sess.send = function(m) return res:sse{ data = m } end
        local resp = self:handle(msg, sess)
        res:sse{ data = resp }
        res:close()
        return
    end
    local resp = self:handle(msg, sess)
    return reply(status_of(resp), resp, headers)
end


-- subscriptions/listen over HTTP: an SSE stream that stays open.
function server:_listen_http(res, msg, keepalive)
    local alive = true
    local sub = self:_subscribe(msg, function(m)
        alive = alive and res:sse{ data = m }
        return alive
    end)
    while alive do
        sibyl.sleep(keepalive)
        alive = alive and res:write(": keep-alive\n\n")
    end
    self.subscriptions[sub] = nil
end


function server:_new_http_session(sess)
    if self.n_http_sessions >= self.max_sessions then   -- drop the least recently used
        local oldest, at
        for sid, s in pairs(self.http_sessions) do
            if not at or s.used < at then oldest, at = sid, s.used end
        end
        self.http_sessions[oldest] = nil
        self.n_http_sessions = self.n_http_sessions - 1
    end
    local sid = random_id()
    sess.used = sibyl.now()
    self.http_sessions[sid] = sess
    self.n_http_sessions = self.n_http_sessions + 1
    return sid
end


--- The routes of the MCP endpoint, for sibyl.server.listen{routes=}.
-- opts: path ("/mcp"), allowed_origins (list; default loopback only),
-- keepalive (seconds).
function server:routes(opts)
    opts = opts or {}
    local path = opts.path or _M.defaults.path
    local allowed = opts.allowed_origins
    local keepalive = opts.keepalive or _M.defaults.keepalive
    local function forbidden(req)
        if not origin_ok(req.headers["origin"], allowed) then
            return reply(403, rpc_error(nil, code.INVALID_REQUEST,
                "Forbidden: origin " .. tostring(req.headers["origin"]) .. " is not allowed (set allowed_origins)"))
        end
    end
    local routes = {}
    routes["POST " .. path] = function(req, res)
        local no = forbidden(req)
        if no then return no end
        local msg, perr = json.decode(req.body)
        if msg == nil then
            return reply(400, rpc_error(nil, code.PARSE, "Parse error: " .. tostring(perr and perr.message)))
        end
        if type(msg) ~= "table" or msg[1] ~= nil or next(msg) == nil then
            return reply(400, rpc_error(nil, code.INVALID_REQUEST, "Invalid request: one JSON-RPC message per POST "
                .. "(batches are not supported)"))
        end
        if msg.method == nil then
            return reply(400, rpc_error(msg.id, code.INVALID_REQUEST, "Invalid request: clients do not send responses"))
        end
        local params = type(msg.params) == "table" and msg.params or {}
        local version = type(params._meta) == "table" and params._meta[proto.META_VERSION] or nil
        if version ~= nil then                                  -- 2026-07-28: stateless
            local bad = self:_check_headers(req, msg, version)
            if bad then return bad end
            local sess = { era = "modern" }
            local era, err = self:era_of(msg, sess)
            if not era then return reply(status_of(err), err) end
            if msg.id == nil then
                self:handle(msg, sess)
                return reply(202)
            end
            if msg.method == "subscriptions/listen" then return self:_listen_http(res, msg, keepalive) end
            return self:_answer(req, res, msg, sess)
        end
        -- 2025-xx: sessions.
        if msg.method == "initialize" then
            local sess = {}
            local resp = self:handle(msg, sess)
            if not resp.result then return reply(status_of(resp), resp) end
            local sid = self:_new_http_session(sess)
            return reply(200, resp, { ["Mcp-Session-Id"] = sid })
        end
        local sid = req.headers["mcp-session-id"]
        if sid == nil then
            return reply(400, rpc_error(msg.id, code.INVALID_REQUEST, format("Bad Request: no Mcp-Session-Id header. "
                .. "Send initialize first (%s), or put %s in params._meta (2026-07-28)",
                table.concat(proto.LEGACY, ", "), proto.META_VERSION)))
        end
        local sess = self.http_sessions[sid]
        if not sess then
            return reply(404, rpc_error(msg.id, -32001, "Session not found: send initialize again"))
        end
        sess.used = sibyl.now()
        local pv = req.headers["mcp-protocol-version"]
        if pv ~= nil and pv ~= sess.version then
            return reply(400, rpc_error(msg.id, code.INVALID_REQUEST, format("Bad Request: MCP-Protocol-Version %q "
                .. "is not the session's %q", pv, tostring(sess.version))))
        end
        if msg.id == nil then
            self:handle(msg, sess)
            return reply(202)
        end
        return self:_answer(req, res, msg, sess)
    end
    routes["GET " .. path] = function(req)
        local no = forbidden(req)
        if no then return no end
        return { status = 405, headers = { Allow = "POST, DELETE" },
                 body = "this MCP endpoint has no server-initiated stream: use POST (subscriptions/listen for changes)" }
    end
    routes["DELETE " .. path] = function(req)
        local no = forbidden(req)
        if no then return no end
        local sid = req.headers["mcp-session-id"]
        if sid and self.http_sessions[sid] then
            self.http_sessions[sid] = nil
            self.n_http_sessions = self.n_http_sessions - 1
            return { status = 200, body = "" }
        end
        if sid then return { status = 404, body = "session not found" } end
        return { status = 405, headers = { Allow = "POST" }, body = "no session to end" }
    end
    return routes
end


--- Listen on HTTP: a sibyl.server (srv.port, srv:close()) or nil, err.
-- opts: host ("127.0.0.1"), port (0: a free one), path, allowed_origins,
-- routes (more routes of your own), and sibyl.server's limits.
function server:listen(opts)
    opts = opts or {}
    local routes = self:routes(opts)
    for k, v in pairs(opts.routes or {}) do routes[k] = v end
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.routes, o.port, o.host = routes, opts.port or 0, opts.host or "127.0.0.1"
    return require("sibyl.server").listen(o)
end

return _M
