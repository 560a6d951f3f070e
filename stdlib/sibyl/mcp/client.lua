-- sibyl.mcp.client -- an MCP client over stdio (a spawned server process)
-- or Streamable HTTP, speaking both protocol generations: it tries
-- 2026-07-28 first (server/discover) and falls back to the initialize
-- handshake of 2025-11-25 / 2025-06-18 / 2025-03-26.
--
--   local mcp = require "sibyl.mcp"
--   local c = assert(mcp.connect{ command = { "node", "server.mjs" } })   -- or url = "http://.../mcp"
--   for _, t in ipairs(assert(c:list_tools())) do print(t.name) end
--   local r = assert(c:call_tool("add", { a = 2, b = 3 }))               -- { content = {...}, isError = ... }
--   c:close()
--
-- Every call takes opts.timeout (seconds; default the client's `timeout`,
-- 60; false for none). A call that times out is cancelled on the server
-- (notifications/cancelled on stdio, the response stream closed on HTTP).
-- Errors (nil, err): kind "mcp" (a JSON-RPC error: err.code, err.data),
-- "timeout", "closed" (the server went away; err.stderr holds its last
-- words), "version" (no protocol version in common), "http", "parse".
-- Docs: doc/mcp.md. Spec: tests/lua/28-mcp_spec.lua.

local sibyl = require "sibyl"
local json = require "sibyl.json"
local proto = require "sibyl.mcp.protocol"
local schema = require "sibyl.schema"

local type, pairs, ipairs, next, tostring, setmetatable, error, pcall, unpack =
    type, pairs, ipairs, next, tostring, setmetatable, error, pcall, unpack
local function stderr_write(...) io.stderr:write(...) end
local format, concat = string.format, table.concat
local mkerror = sibyl.error
local code = proto.code

local _M = {}

_M.defaults = {
    timeout = 60,               -- seconds per call (false: none)
    probe_timeout = 5,          -- seconds for the server/discover probe on stdio
    protocol = "auto",          -- "auto", or one version ("2026-07-28", "2025-11-25", ...)
    max_pages = 100,            -- list calls follow nextCursor at most this often
    client_info = { name = "sibyl", version = "0.1.0" },
    max_restarts = 5,           -- stdio with restart = true: new server processes at most
}

local client = {}
local client_mt = {
    __index = client,
    __tostring = function(c)
        return format("sibyl.mcp.client (%s, %s%s)", c.transport.kind, c.protocol_version or "not connected",
                      c.closed and ", closed" or "")
    end,
}


-- ------------------------------------------------------------ requests

-- Build the params of a request: a copy with _meta filled for the modern
-- generation (version, client info and capabilities on every request).
function client:_params(params, version, progress_token)
    local p = {}
    for k, v in pairs(params or {}) do p[k] = v end
    local meta = {}
    for k, v in pairs(p._meta or {}) do meta[k] = v end
    if proto.is_modern[version] then
        meta[proto.META_VERSION] = version
        meta[proto.META_CLIENT_INFO] = self.client_info
        meta[proto.META_CLIENT_CAPS] = self.capabilities_sent
    end
    if progress_token ~= nil then meta.progressToken = progress_token end
    if next(meta) then p._meta = meta end
    if next(p) == nil then return nil end
    return p
end


-- Server-to-client traffic: notifications, and (legacy) requests.
function client:_incoming(msg)
    local method = msg.method
    if msg.id ~= nil then               -- a legacy server's request (ping, roots, sampling...)
        if method == "ping" then
            self.transport:send({ jsonrpc = "2.0", id = msg.id, result = {} })
        else
            self.transport:send(proto.rpc_error(msg.id, code.METHOD_NOT_FOUND,
                "sibyl's MCP client does not support " .. tostring(method)))
        end
        return
    end
    local params = type(msg.params) == "table" and msg.params or {}
    if method == "notifications/progress" then
        local fn = self._progress[params.progressToken]
        if fn then
            local ok, err = pcall(fn, params)
            if not ok then stderr_write("mcp: on_progress raised: ", tostring(err), "\n") end
        end
        return
    end
    local meta = type(params._meta) == "table" and params._meta or {}
    local sub = self._subs[meta[proto.META_SUBSCRIPTION] or false]
    if sub then
        sub:_deliver(method, params)
        return
    end
    if method == "notifications/tools/list_changed" then self._tool_defs = nil end
    if self.on_notification then
        local ok, err = pcall(self.on_notification, method, params)
        if not ok then stderr_write("mcp: on_notification raised: ", tostring(err), "\n") end
    end
end


-- The transport went away: fail every call in flight.
function client:_lost(err)
    self.lost = err
    local pending = self._pending
    self._pending = {}
    for _, f in pairs(pending) do f:set(nil, err) end
end


-- One exchange: the response message, or nil, err. Message transports
-- (stdio) match the response by id; request transports (HTTP) return it.
function client:_exchange(msg, timeout, headers)
    local t = self.transport
    if self.closed then return proto.fail("closed", "the client is closed") end
    local wait
    if t.exchange then
        wait = function() return t:exchange(msg, headers, function(m) self:_incoming(m) end) end
    else
        if self.lost then return nil, self.lost end
        local f = sibyl.future()
        self._pending[msg.id] = f
        local ok, err = t:send(msg)
        if not ok then
            self._pending[msg.id] = nil
            return nil, err
        end
        wait = function() return f:wait() end
    end
    local r, err
    if timeout then
        r, err = sibyl.deadline(timeout, wait)
    else
        r, err = wait()
    end
    self._pending[msg.id] = nil
    if not r and timeout and err and err.kind == "timeout" and not self.lost then
        if not t.exchange then      -- stdio: tell the server; on HTTP the closed stream does
            t:send({ jsonrpc = "2.0", method = "notifications/cancelled",
                     params = { requestId = msg.id, reason = "timeout" } })
        end
        return proto.fail("timeout", format("%s got no answer within %g s (raise opts.timeout)",
                                            msg.method, timeout), { method = msg.method })
    end
    return r, err
end


-- A request: the result table, or nil, err.
function client:_request(method, params, opts, version)
    opts = opts or {}
    version = version or self.protocol_version
    if self.lost and not self.closed and self.opts and self.opts.restart and self.opts.command
       and method ~= "initialize" and method ~= "server/discover" then
        local ok, rerr = self:_restart()
        if not ok then return nil, rerr end
    end
    local id = self._next_id
    self._next_id = id + 1
    local token
    if opts.on_progress then
        token = "sibyl-" .. id
        self._progress[token] = opts.on_progress
    end
    local msg = { jsonrpc = "2.0", id = id, method = method, params = self:_params(params, version, token) }
    local timeout = opts.timeout
    if timeout == nil then timeout = self.timeout end
    local headers = opts.headers
    if self.transport.exchange then
        headers = self.transport:headers_for(msg, version, self.era, opts.param_headers)
    end
    local r, err = self:_exchange(msg, timeout or nil, headers)
    if token then self._progress[token] = nil end
    if not r and err.session_gone and not opts._retried then
        -- 2025-xx over HTTP: the server dropped our session (404). The
        -- specification says to start a new one; then try the call once more.
        local ok, ierr = self:_initialize(self.protocol_version)
        if not ok then return nil, ierr end
        local o = {}
        for k, v in pairs(opts) do o[k] = v end
        o._retried = true
        return self:_request(method, params, o)
    end
    if not r then return nil, err end
    if r.error ~= nil then
        local e = type(r.error) == "table" and r.error or { message = tostring(r.error) }
        return proto.fail("mcp", format("%s failed: %s (code %s)", method, tostring(e.message), tostring(e.code)),
                          { code = e.code, data = e.data, method = method, status = r._status })
    end
    local result = r.result
    if type(result) ~= "table" then
        return proto.fail("parse", format("%s: the server's result is not an object", method))
    end
    local rt = result.resultType
    if rt ~= nil and rt ~= "complete" then
        return proto.fail("mcp", format("%s: the server answered resultType %q (it asks for input: elicitation, "
            .. "sampling or roots), which sibyl's MCP client does not provide", method, tostring(rt)),
            { result = result, method = method })
    end
    return result
end


--- A raw request: the result table, or nil, err. opts: timeout, on_progress.
function client:request(method, params, opts)
    if type(method) ~= "string" then error("mcp: client:request(method, params, opts): method must be a string", 2) end
    return self:_request(method, params, opts)
end


--- Send a notification (no answer). true or nil, err.
function client:notify(method, params)
    local msg = { jsonrpc = "2.0", method = method, params = self:_params(params, nil) }
    if self.transport.exchange then
        local r, err = self.transport:exchange(msg, self.transport:headers_for(msg, self.protocol_version, self.era))
        if not r then return nil, err end
        return true
    end
    return self.transport:send(msg)
end


-- ------------------------------------------------------------ handshake

-- 2025-xx: initialize, then notifications/initialized.
function client:_initialize(version)
    self.era = "legacy"
    local r, err = self:_request("initialize", {
        protocolVersion = version,
        capabilities = self.capabilities_sent,
        clientInfo = self.client_info,
    }, { timeout = self.timeout }, version)
    if not r then return nil, err end
    local v = r.protocolVersion
    if not proto.is_legacy[v] then
        return proto.fail("version", format("the server answered initialize with protocol version %s; sibyl speaks %s",
            tostring(v), concat(proto.SUPPORTED, ", ")), { supported = { unpack(proto.SUPPORTED) }, server = v })
    end
    self.protocol_version = v
    self.server_info = r.serverInfo
    self.server_capabilities = r.capabilities or {}
    self.instructions = r.instructions
    if self.transport.on_initialized then self.transport:on_initialized(v) end
    return self:notify("notifications/initialized")
end


-- 2026-07-28: server/discover (the probe). Returns "modern", "legacy" or
-- nil, err for a definite failure.
function client:_discover(version, timeout)
    self.era = "modern"
    local r, err = self:_request("server/discover", nil, { timeout = timeout }, version)
    if r then
        local sv = r.supportedVersions
        local modern = proto.pick(proto.MODERN, sv)
        if not modern then
            local legacy = proto.pick(proto.LEGACY, sv)
            if legacy then return "legacy", legacy end
            return proto.fail("version", format("the server supports protocol versions %s; sibyl speaks %s",
                json.encode(sv or {}), concat(proto.SUPPORTED, ", ")), { supported = sv })
        end
        self.protocol_version = modern
        self.server_capabilities = r.capabilities or {}
        self.instructions = r.instructions
        self.server_info = type(r._meta) == "table" and r._meta[proto.META_SERVER_INFO] or r.serverInfo
        if modern ~= version then return self:_discover(modern, timeout) end
        return "modern"
    end
    if err.kind == "mcp" and proto.is_modern_error[err.code] then
        if err.code == code.UNSUPPORTED_VERSION then
            local sv = type(err.data) == "table" and err.data.supported or nil
            local modern = proto.pick(proto.MODERN, sv)
            if modern and modern ~= version then return self:_discover(modern, timeout) end
            local legacy = proto.pick(proto.LEGACY, sv)
            if legacy then return "legacy", legacy end
            return proto.fail("version", format("the server supports protocol versions %s; sibyl speaks %s",
                json.encode(sv or {}), concat(proto.SUPPORTED, ", ")), { supported = sv })
        end
        return nil, err                  -- a modern server refused us: report, do not fall back
    end
    if err.kind == "closed" then return nil, err end
    return "legacy", nil, err            -- anything else: a legacy server
end


function client:_connect(protocol)
    if protocol ~= "auto" and not proto.is_modern[protocol] and not proto.is_legacy[protocol] then
        error(format("mcp.connect: opts.protocol %q is not one of auto, %s", tostring(protocol),
                     concat(proto.SUPPORTED, ", ")), 3)
    end
    if proto.is_legacy[protocol] then
        return self:_initialize(protocol)
    end
    local probe_timeout = self.transport.exchange and self.timeout or self.probe_timeout
    local era, legacy_version, why = self:_discover(protocol == "auto" and proto.LATEST or protocol, probe_timeout)
    if not era then return nil, legacy_version end
    if era == "modern" then return true end
    if protocol ~= "auto" then
        return proto.fail("version", format("the server does not speak %s (%s)", protocol,
            why and tostring(why) or "it offers only " .. tostring(legacy_version)), { cause = why })
    end
    return self:_initialize(legacy_version or proto.LATEST_LEGACY)
end


-- --------------------------------------------------------- operations

-- Follow nextCursor: the concatenated `field` lists, or nil, err.
function client:_list(method, field, opts)
    opts = opts or {}
    local all, cursor = {}, opts.cursor
    for _ = 1, opts.max_pages or self.max_pages do
        local r, err = self:_request(method, cursor and { cursor = cursor } or nil, opts)
        if not r then return nil, err end
        for _, v in ipairs(type(r[field]) == "table" and r[field] or {}) do all[#all + 1] = v end
        cursor = r.nextCursor
        if cursor == nil or cursor == json.null then return all end
    end
    return proto.fail("mcp", format("%s: more than %d pages (raise opts.max_pages)", method,
                                    opts.max_pages or self.max_pages))
end


--- Every tool of the server (all pages): list of {name, description,
-- inputSchema, ...}, or nil, err. Tools whose x-mcp-header annotations are
-- invalid are left out on HTTP, with a warning (the specification's rule).
function client:list_tools(opts)
    local tools, err = self:_list("tools/list", "tools", opts)
    if not tools then return nil, err end
    local defs, kept = {}, {}
    for _, t in ipairs(tools) do
        local ph, why = proto.param_headers(t.inputSchema)
        if ph or not self.transport.exchange then
            defs[t.name] = { tool = t, param_headers = ph }
            kept[#kept + 1] = t
        else
            stderr_write(format("mcp: leaving out tool %q: %s\n", tostring(t.name), why))
        end
    end
    self._tool_defs = defs
    return kept
end


-- Mcp-Param-* headers of a tools/call (modern HTTP only).
function client:_param_headers(name, args)
    if not (self.transport.exchange and self.era == "modern") then return nil end
    if not self._tool_defs then self:list_tools() end
    local d = self._tool_defs and self._tool_defs[name]
    if not (d and d.param_headers and #d.param_headers > 0) then return nil end
    local h = {}
    for _, p in ipairs(d.param_headers) do
        local v = proto.at_path(args, p.path)
        if v ~= nil then h[#h + 1] = "Mcp-Param-" .. p.header .. ": " .. proto.header_value(v) end
    end
    return h
end


--- Call a tool: the CallToolResult {content, structuredContent, isError}
-- or nil, err. A tool's own failure is a result with isError = true, not
-- an error. opts: timeout, on_progress = function({progress, total, message}).
function client:call_tool(name, args, opts)
    if type(name) ~= "string" then error("mcp: client:call_tool(name, args, opts): name must be a string", 2) end
    if args ~= nil and type(args) ~= "table" then error("mcp: client:call_tool: args must be a table", 2) end
    opts = opts or {}
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.param_headers = self:_param_headers(name, args or {})
    local r, err = self:_request("tools/call", { name = name, arguments = args or {} }, o)
    if not r then return nil, err end
    -- A tool that declares an outputSchema must keep to it (checked when
    -- list_tools has seen the tool and sibyl.schema can compile the schema).
    local d = self._tool_defs and self._tool_defs[name]
    if d and d.tool.outputSchema ~= nil and not r.isError then
        if d.out_validator == nil then
            local ok, v = pcall(schema.compile, d.tool.outputSchema)
            d.out_validator = ok and v or false
        end
        if d.out_validator then
            local sc = r.structuredContent
            local good, errs = false, nil
            if sc ~= nil then good, errs = d.out_validator:validate(sc) end
            if not good then
                return proto.fail("parse", format("tools/call %s: the result does not match the tool's outputSchema: %s",
                    name, sc == nil and "no structuredContent" or schema.describe(errs)), { result = r })
            end
        end
    end
    return r
end

function client:list_resources(opts) return self:_list("resources/list", "resources", opts) end
function client:list_resource_templates(opts) return self:_list("resources/templates/list", "resourceTemplates", opts) end
function client:list_prompts(opts) return self:_list("prompts/list", "prompts", opts) end

--- Read a resource: {contents = {{uri, text | blob, mimeType}}} or nil, err.
function client:read_resource(uri, opts)
    if type(uri) ~= "string" then error("mcp: client:read_resource(uri): uri must be a string", 2) end
    return self:_request("resources/read", { uri = uri }, opts)
end

--- Get a prompt: {description, messages} or nil, err.
function client:get_prompt(name, args, opts)
    if type(name) ~= "string" then error("mcp: client:get_prompt(name, args): name must be a string", 2) end
    return self:_request("prompts/get", { name = name, arguments = args }, opts)
end

--- Legacy servers answer ping; modern ones answer server/discover.
function client:ping(opts)
    if self.era == "modern" then
        return self:_request("server/discover", nil, opts)
    end
    return self:_request("ping", nil, opts)
end


-- ----------------------------------------------------- subscriptions

local subscription = {}
local subscription_mt = { __index = subscription }

function subscription:_deliver(method, params)
    if method == "notifications/subscriptions/acknowledged" then
        self.acknowledged = params.notifications or {}
        if self._ack then self._ack:set(true) end
        return
    end
    if method == "notifications/tools/list_changed" then self.client._tool_defs = nil end
    local ok, err = pcall(self.fn, method, params)
    if not ok then stderr_write("mcp: listen callback raised: ", tostring(err), "\n") end
end

--- Stop listening. Idempotent.
function subscription:close()
    if self.closed then return end
    self.closed = true
    local c = self.client
    c._subs[self.id] = nil
    if self.task then self.task:cancel() end
    if not c.transport.exchange and not c.lost and not c.closed then
        c.transport:send({ jsonrpc = "2.0", method = "notifications/cancelled", params = { requestId = self.id } })
    end
end


--- Change notifications: filter = {tools = true, prompts = true,
-- resources = true, uris = {...}}; fn(method, params) is called for each.
-- Modern servers: a subscriptions/listen stream (returns once the server
-- acknowledged it). Legacy servers send list_changed notifications
-- unasked on stdio: fn gets them too. Returns a subscription (:close()).
function client:listen(filter, fn)
    if type(filter) ~= "table" or type(fn) ~= "function" then
        error("mcp: client:listen(filter, fn): a filter table and a function(method, params) are needed", 2)
    end
    local id = self._next_id
    local sub = setmetatable({ client = self, id = id, fn = fn }, subscription_mt)
    if self.era ~= "modern" then
        local prev = self.on_notification
        self.on_notification = function(m, p)
            if not sub.closed then sub:_deliver(m, p) end
            if prev then return prev(m, p) end
        end
        sub.acknowledged = {}
        return sub
    end
    self._subs[id] = sub
    sub._ack = sibyl.future()
    local params = { notifications = {
        toolsListChanged = filter.tools or nil,
        promptsListChanged = filter.prompts or nil,
        resourcesListChanged = filter.resources or nil,
        resourceSubscriptions = filter.uris and json.array(filter.uris) or nil,
    } }
    sub.task = sibyl.spawn(function()
        local r, err = self:_request("subscriptions/listen", params, { timeout = false })
        self._subs[id] = nil
        if sub._ack then sub._ack:set(nil, err or mkerror("closed", "mcp: the server closed the subscription")) end
        return r, err
    end)
    local ok, err = sibyl.deadline(self.timeout or 60, sub._ack.wait, sub._ack)
    sub._ack = nil
    if not ok then
        sub:close()
        return nil, err
    end
    return sub
end


-- ------------------------------------------------------------- lifetime

--- What the server wrote on stderr (stdio; "" otherwise).
function client:stderr()
    return self.transport.stderr and self.transport:stderr() or ""
end


--- Close the client: the server process is stopped (stdin closed, then
-- TERM, then KILL) and reaped; an HTTP session is ended. Idempotent.
function client:close()
    if self.closed then return end
    for _, sub in pairs(self._subs) do sub:close() end
    local t = self.transport
    if t.close_session and self.era == "legacy" then
        sibyl.deadline(2, t.close_session, t)
    end
    self.closed = true
    self:_lost(mkerror("closed", "mcp: the client was closed"))
    t:close()
end


-- Open the transport opts asks for: stdio (spawn) or HTTP.
function client:_open(opts)
    if opts.command then
        return require("sibyl.mcp.stdio").open(opts, function(m) self:_incoming(m) end,
            function(m)                 -- a response: wake its caller (gone if it was cancelled)
                local f = self._pending[m.id]
                self._pending[m.id] = nil
                if f then f:set(m) end
            end,
            function(e) self:_lost(e) end,
            function(e)                 -- an oversized message: fail the calls in flight
                local pending = self._pending
                self._pending = {}
                for _, f in pairs(pending) do f:set(nil, e) end
            end)
    elseif opts.url then
        return require("sibyl.mcp.http").open(opts)
    end
    error("mcp.connect: give opts.command (stdio: a list {cmd, args...}) or opts.url (Streamable HTTP)", 3)
end


-- stdio with opts.restart: the server went away, so start it again and
-- redo the handshake (at most opts.max_restarts times). true or nil, err.
function client:_restart()
    local opts = self.opts
    if self.restarts >= (opts.max_restarts or _M.defaults.max_restarts) then
        return nil, self.lost
    end
    self.restarts = self.restarts + 1
    local old = self.transport
    old:close()
    local t, err = self:_open(opts)
    if not t then return nil, err end
    self.transport, self.lost, self._tool_defs = t, nil, nil
    local ok, cerr = self:_connect(proto.is_legacy[self.protocol_version] and self.protocol_version
                                   or opts.protocol or _M.defaults.protocol)
    if not ok then
        self.lost = cerr
        return nil, cerr
    end
    return true
end


--- Connect: a client (handshake done) or nil, err. See doc/mcp.md.
function _M.connect(opts)
    if type(opts) ~= "table" then error("mcp.connect: options table expected", 2) end
    local d = _M.defaults
    local c = setmetatable({
        timeout = opts.timeout == nil and d.timeout or opts.timeout,
        probe_timeout = opts.probe_timeout or d.probe_timeout,
        max_pages = opts.max_pages or d.max_pages,
        client_info = opts.client_info or d.client_info,
        capabilities_sent = opts.capabilities or {},
        on_notification = opts.on_notification,
        _pending = {}, _progress = {}, _subs = {},
        _next_id = 1,
    }, client_mt)
    if c.timeout ~= false and (type(c.timeout) ~= "number" or c.timeout <= 0) then
        error("mcp.connect: opts.timeout must be a number of seconds > 0, or false", 2)
    end
    local t, err = c:_open(opts)
    if not t then return nil, err end
    c.transport, c.opts, c.restarts = t, opts, 0
    local ok, cerr = c:_connect(opts.protocol or d.protocol)
    if not ok then
        local stderr = c:stderr()
        c:close()
        if stderr ~= "" and type(cerr) == "table" then
            cerr.stderr = stderr
            cerr.message = cerr.message .. "\nserver stderr: " .. stderr:sub(-2000)
        end
        return nil, cerr
    end
    return c
end

return _M
