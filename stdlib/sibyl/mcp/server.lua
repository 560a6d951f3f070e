-- sibyl.mcp.server -- expose Lua functions as MCP tools (plus resources and
-- prompts) over stdio and Streamable HTTP, answering both protocol
-- generations: 2026-07-28 (stateless, _meta on every request,
-- server/discover) and the initialize handshake of 2025-11-25 / 2025-06-18
-- / 2025-03-26.
--
--   local mcp = require "sibyl.mcp"
--   local srv = mcp.server{ name = "calc", version = "1.0" }
--   srv:tool{ name = "add", description = "Add two numbers",
--             parameters = { type = "object", properties = { a = { type = "number" }, b = { type = "number" } },
--                            required = { "a", "b" } },
--             fn = function(args) return { sum = args.a + args.b } end }
--   srv:serve_stdio()                       -- or: srv:listen{ port = 8000 } (POST /mcp)
--
-- Tools take the same shape as sibyl.agent tools, so one list serves both.
-- Arguments are validated against the tool's schema; a tool that raises,
-- returns nil, err or gets bad arguments answers an isError result.
-- Docs: doc/mcp.md. Spec: tests/lua/28-mcp_spec.lua.

local sibyl = require "sibyl"
local json = require "sibyl.json"
local schema = require "sibyl.schema"
local proto = require "sibyl.mcp.protocol"

local type, pairs, ipairs, tostring, setmetatable, error, xpcall, pcall =
    type, pairs, ipairs, tostring, setmetatable, error, xpcall, pcall
local format, concat, remove, min = string.format, table.concat, table.remove, math.min
local traceback = debug.traceback
local code, rpc_error = proto.code, proto.rpc_error
local array = json.array

local _M = {}

_M.defaults = {
    page_size = 100,        -- items per tools/list, resources/list, prompts/list page
    ttl_ms = 0,             -- 2026-07-28 cache hint on list and read results
    max_sessions = 1000,    -- legacy HTTP sessions kept (least recently used go first)
    max_message = 16 * 1024 * 1024, -- stdio: longest message (line); longer ones get an error
}

local server = {}
local server_mt = {
    __index = server,
    __tostring = function(s) return format("sibyl.mcp.server (%s, %d tools)", s.info.name, #s.tool_list) end,
}


-- ---------------------------------------------------------- registration

--- Add a tool: {name, description, parameters (or inputSchema), fn =
-- function(args, ctx), output_schema, annotations, title}. Returns self.
function server:tool(t)
    if type(t) ~= "table" or type(t.name) ~= "string" or type(t.fn) ~= "function" then
        error("mcp server:tool{...}: needs a name and fn = function(args, ctx)", 2)
    end
    if self.tools[t.name] then error(format("mcp server:tool: two tools are named %q", t.name), 2) end
    local params = t.parameters or t.inputSchema or t.input_schema or { type = "object", properties = {} }
    local ok, v = pcall(schema.compile, params)
    if not ok then error(format("mcp server:tool: tool %q: bad parameters schema: %s", t.name, tostring(v)), 2) end
    local ph, why = proto.param_headers(params)
    if not ph then error(format("mcp server:tool: tool %q: %s", t.name, why), 2) end
    local out_schema, out_v = t.output_schema or t.outputSchema, nil
    if out_schema ~= nil then
        local ook
        ook, out_v = pcall(schema.compile, out_schema)
        if not ook then error(format("mcp server:tool: tool %q: bad output_schema: %s", t.name, tostring(out_v)), 2) end
    end
    local def = { name = t.name, title = t.title, description = t.description or "", inputSchema = params,
                  outputSchema = out_schema, annotations = t.annotations }
    self.tools[t.name] = { def = def, fn = t.fn, validator = v, out_validator = out_v, param_headers = ph }
    self.tool_list[#self.tool_list + 1] = t.name
    self:changed("tools")
    return self
end


--- Add a resource: {uri, name, description, mime_type, text = "static" or
-- read = function(uri, ctx) -> string | {text=|blob=, mimeType=} | nil, err}.
function server:resource(r)
    if type(r) ~= "table" or type(r.uri) ~= "string" or (r.text == nil and type(r.read) ~= "function") then
        error("mcp server:resource{...}: needs a uri and text = \"...\" or read = function(uri, ctx)", 2)
    end
    self.resources[r.uri] = r
    self.resource_list[#self.resource_list + 1] = r.uri
    self:changed("resources")
    return self
end


-- A URI template ("note://{name}", "file:///{+path}") as a Lua pattern and
-- the names of its variables: {var} matches one segment (no "/"), {+var}
-- anything. Simple (level 1 and 2) expressions only.
local function template_matcher(t)
    local names = {}
    local pat = t:gsub("([^{}]*)({?)([+]?)([%w_]*)(}?)", function(lit, open, plus, name, close)
        local out = lit:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
        if open == "{" and close == "}" and name ~= "" then
            names[#names + 1] = name
            out = out .. (plus == "+" and "(.+)" or "([^/]+)")
        elseif open ~= "" or close ~= "" then
            error(format("mcp server:resource_template: bad URI template %q", t), 4)
        end
        return out
    end)
    return "^" .. pat .. "$", names
end


--- Add a resource template: {uri_template = "note://{name}", name,
-- description, mime_type, read = function(uri, vars, ctx)} (vars holds the
-- template's variables, percent-decoded). resources/read tries templates,
-- in the order added, for a URI that is not a plain resource.
function server:resource_template(r)
    if type(r) ~= "table" or type(r.uri_template) ~= "string" or type(r.read) ~= "function" then
        error("mcp server:resource_template{...}: needs uri_template and read = function(uri, vars, ctx)", 2)
    end
    local pat, names = template_matcher(r.uri_template)
    self.templates[#self.templates + 1] = { def = r, pattern = pat, names = names }
    return self
end


-- The template resource for uri: a resource-like table, or nil.
function server:_from_template(uri)
    local unescape = require("sibyl.http").unescape
    for _, t in ipairs(self.templates) do
        local caps = { uri:match(t.pattern) }
        if caps[1] ~= nil then
            local vars = {}
            for i, n in ipairs(t.names) do vars[n] = unescape(caps[i]) end
            local read = t.def.read
            return { mime_type = t.def.mime_type or t.def.mimeType,
                     read = function(u, ctx) return read(u, vars, ctx) end }
        end
    end
end


--- Add a prompt: {name, description, arguments = {{name, description,
-- required}}, get = function(args, ctx) -> string | {messages=, description=}}.
function server:prompt(p)
    if type(p) ~= "table" or type(p.name) ~= "string" or type(p.get) ~= "function" then
        error("mcp server:prompt{...}: needs a name and get = function(args, ctx)", 2)
    end
    self.prompts[p.name] = p
    self.prompt_list[#self.prompt_list + 1] = p.name
    self:changed("prompts")
    return self
end


--- Remove a tool by name (list_changed is sent). Returns true if it existed.
function server:remove_tool(name)
    if not self.tools[name] then return false end
    self.tools[name] = nil
    for i, n in ipairs(self.tool_list) do
        if n == name then remove(self.tool_list, i) break end
    end
    self:changed("tools")
    return true
end


-- Tell listeners a list changed: legacy sessions (stdio) and modern
-- subscriptions/listen streams that opted in.
local FILTER_OF = { tools = "toolsListChanged", prompts = "promptsListChanged", resources = "resourcesListChanged" }
function server:changed(what)
    local method = "notifications/" .. what .. "/list_changed"
    for sess in pairs(self.sessions) do
        if sess.era == "legacy" and sess.send and sess.initialized then
            sess.send({ jsonrpc = "2.0", method = method })
        end
    end
    for sub in pairs(self.subscriptions) do
        if sub.filter[FILTER_OF[what]] then
            local ok = sub.send({ jsonrpc = "2.0", method = method,
                                  params = { _meta = { [proto.META_SUBSCRIPTION] = sub.id } } })
            if not ok then self.subscriptions[sub] = nil end
        end
    end
end


function server:capabilities()
    local caps = { tools = { listChanged = true } }
    if #self.resource_list > 0 or #self.templates > 0 then caps.resources = { listChanged = true } end
    if #self.prompt_list > 0 then caps.prompts = { listChanged = true } end
    return caps
end


-- ------------------------------------------------------------- handlers

-- A page of a list: items, nextCursor. The cursor is the index to start at.
function server:_page(names, params, build)
    local start = 1
    local cursor = type(params) == "table" and params.cursor or nil
    if cursor ~= nil then
        start = tonumber(type(cursor) == "string" and cursor:match("^p(%d+)$"))
        if not start or start < 1 then return nil, "invalid cursor " .. tostring(cursor) end
    end
    local out = array{}
    local last = min(#names, start + self.page_size - 1)
    for i = start, last do out[#out + 1] = build(names[i]) end
    return out, last < #names and ("p" .. (last + 1)) or nil
end


local function text_of(v)
    if type(v) == "string" then return v end
    return json.encode(v)
end


-- A tool's return value as a CallToolResult.
local function tool_result(r)
    if type(r) == "table" and type(r.content) == "table" then
        local out = {}
        for k, v in pairs(r) do out[k] = v end
        out.content = array(out.content)
        return out
    end
    if type(r) == "string" then
        return { content = array{ { type = "text", text = r } } }
    end
    local res = { content = array{ { type = "text", text = text_of(r) } } }
    if type(r) == "table" then res.structuredContent = r end
    return res
end


local function tool_text(err)
    return err == nil and "no result" or tostring(err)
end


local function tool_error(msg)
    return { content = array{ { type = "text", text = msg } }, isError = true }
end


local H = {}

function H.ping() return {} end

function H.discover(self)
    return { supportedVersions = array(proto.SUPPORTED), capabilities = self:capabilities(),
             instructions = self.instructions }
end

function H.list_tools(self, params)
    local tools, next_cursor = self:_page(self.tool_list, params, function(n) return self.tools[n].def end)
    if not tools then return nil, code.INVALID_PARAMS, next_cursor end
    return { tools = tools, nextCursor = next_cursor }
end

function H.call_tool(self, params, ctx)
    local name = params.name
    local t = type(name) == "string" and self.tools[name]
    if not t then return nil, code.INVALID_PARAMS, "unknown tool: " .. tostring(name) end
    local args = params.arguments
    if args == nil or args == json.null then args = {} end
    if type(args) ~= "table" then return tool_error("invalid arguments: an object is expected") end
    local ok, errs = t.validator:validate(args)
    if not ok then
        return tool_error("invalid arguments for " .. name .. ": " .. schema.describe(errs))
    end
    local ran, r, err = xpcall(t.fn, traceback, args, ctx)
    if not ran then
        local first = tostring(r):match("^[^\n]*")
        io.stderr:write(format("mcp: tool %s raised: %s\n", name, first))
        return tool_error("the tool " .. name .. " failed: " .. first)
    end
    if r == nil then
        local msg = type(err) == "table" and (err.message or json.encode(err)) or tool_text(err)
        return tool_error(msg)
    end
    local res = tool_result(r)
    if t.out_validator and not res.isError then
        -- A tool with an outputSchema must return structured content that matches it.
        local sc = res.structuredContent
        local good, oerrs = false, nil
        if sc ~= nil then good, oerrs = t.out_validator:validate(sc) end
        if not good then
            local why = sc == nil and "it returned no structured content (return a table)" or schema.describe(oerrs)
            io.stderr:write(format("mcp: tool %s broke its outputSchema: %s\n", name, why))
            return tool_error(format("the tool %s returned a result that does not match its outputSchema: %s", name, why))
        end
    end
    return res
end

function H.list_resources(self, params)
    local list, next_cursor = self:_page(self.resource_list, params, function(uri)
        local r = self.resources[uri]
        return { uri = uri, name = r.name or uri, title = r.title, description = r.description,
                 mimeType = r.mime_type or r.mimeType }
    end)
    if not list then return nil, code.INVALID_PARAMS, next_cursor end
    return { resources = list, nextCursor = next_cursor }
end

function H.list_templates(self)
    local out = array{}
    for i, t in ipairs(self.templates) do
        local d = t.def
        out[i] = { uriTemplate = d.uri_template, name = d.name or d.uri_template, title = d.title,
                   description = d.description, mimeType = d.mime_type or d.mimeType }
    end
    return { resourceTemplates = out }
end

function H.read_resource(self, params, ctx)
    local uri = params.uri
    local r = type(uri) == "string" and (self.resources[uri] or self:_from_template(uri))
    if not r then
        return nil, ctx.era == "modern" and code.INVALID_PARAMS or code.RESOURCE_NOT_FOUND_LEGACY,
               "resource not found: " .. tostring(uri), { uri = uri }
    end
    local v, err = r.text, nil
    if v == nil then
        local ok
        ok, v, err = xpcall(r.read, traceback, uri, ctx)
        if not ok then
            io.stderr:write(format("mcp: resource %s raised: %s\n", uri, tostring(v)))
            return nil, code.INTERNAL, "reading " .. uri .. " failed"
        end
        if v == nil then return nil, code.INTERNAL, "reading " .. uri .. " failed: " .. tostring(err and err.message or err) end
    end
    local c = { uri = uri, mimeType = r.mime_type or r.mimeType or "text/plain" }
    if type(v) == "table" then
        c.text, c.blob, c.mimeType = v.text, v.blob and proto.b64encode(v.blob) or nil, v.mimeType or c.mimeType
    else
        c.text = tostring(v)
    end
    return { contents = array{ c } }
end

function H.list_prompts(self, params)
    local list, next_cursor = self:_page(self.prompt_list, params, function(n)
        local p = self.prompts[n]
        local args = array{}
        for i, a in ipairs(p.arguments or {}) do
            args[i] = { name = a.name, description = a.description, required = a.required or false }
        end
        return { name = n, title = p.title, description = p.description, arguments = args }
    end)
    if not list then return nil, code.INVALID_PARAMS, next_cursor end
    return { prompts = list, nextCursor = next_cursor }
end

function H.get_prompt(self, params, ctx)
    local p = type(params.name) == "string" and self.prompts[params.name]
    if not p then return nil, code.INVALID_PARAMS, "unknown prompt: " .. tostring(params.name) end
    local args = type(params.arguments) == "table" and params.arguments or {}
    for _, a in ipairs(p.arguments or {}) do
        if a.required and args[a.name] == nil then
            return nil, code.INVALID_PARAMS, format("prompt %s needs the argument %q", p.name, a.name)
        end
    end
    local ok, r, err = xpcall(p.get, traceback, args, ctx)
    if not ok then
        io.stderr:write(format("mcp: prompt %s raised: %s\n", p.name, tostring(r)))
        return nil, code.INTERNAL, "prompt " .. p.name .. " failed"
    end
    if r == nil then return nil, code.INTERNAL, "prompt " .. p.name .. " failed: " .. tostring(err and err.message or err) end
    if type(r) == "string" then
        r = { messages = { { role = "user", content = { type = "text", text = r } } } }
    end
    return { description = r.description or p.description, messages = array(r.messages or {}) }
end

local METHODS = {
    ["ping"] = H.ping,
    ["server/discover"] = H.discover,
    ["tools/list"] = H.list_tools,
    ["tools/call"] = H.call_tool,
    ["resources/list"] = H.list_resources,
    ["resources/templates/list"] = H.list_templates,
    ["resources/read"] = H.read_resource,
    ["prompts/list"] = H.list_prompts,
    ["prompts/get"] = H.get_prompt,
}
local CACHEABLE = { ["tools/list"] = true, ["prompts/list"] = true, ["resources/list"] = true,
                    ["resources/read"] = true, ["resources/templates/list"] = true, ["server/discover"] = true }
local MODERN_ONLY = { ["server/discover"] = true, ["subscriptions/listen"] = true }


-- ------------------------------------------------------------- dispatch

--- Which generation a request speaks, given its session: "modern",
-- version; "legacy", version; or nil, error response.
function server:era_of(msg, sess)
    local params = type(msg.params) == "table" and msg.params or nil
    local meta = params and type(params._meta) == "table" and params._meta or nil
    local v = meta and meta[proto.META_VERSION]
    if v ~= nil then
        if not proto.is_modern[v] then
            return nil, rpc_error(msg.id, code.UNSUPPORTED_VERSION, "Unsupported protocol version",
                                  { supported = array(proto.SUPPORTED), requested = v })
        end
        return "modern", v
    end
    if msg.method == "initialize" then return "legacy" end
    if sess.era == "legacy" and sess.version then return "legacy", sess.version end
    return nil, rpc_error(msg.id, code.INVALID_REQUEST, format("no protocol version: put %s in params._meta "
        .. "(2026-07-28), or send initialize first (%s)", proto.META_VERSION, concat(proto.LEGACY, ", ")))
end


--- Handle one decoded request or notification for a session. Returns the
-- response message, or nil for notifications. sess = {era, version,
-- send = function(msg) for notifications, running = {}}.
function server:handle(msg, sess)
    if type(msg) ~= "table" or msg.jsonrpc ~= "2.0" or type(msg.method) ~= "string" then
        return rpc_error(type(msg) == "table" and msg.id or nil, code.INVALID_REQUEST,
                         "not a JSON-RPC 2.0 request (jsonrpc = \"2.0\" and a method are required)")
    end
    local method, id = msg.method, msg.id
    local params = type(msg.params) == "table" and msg.params or {}
    if id == nil then
        if method == "notifications/initialized" then
            sess.initialized = true
        elseif method == "notifications/cancelled" then
            local t = sess.running and sess.running[params.requestId]
            if t then t:cancel() end
        end
        return nil
    end
    local era, version = self:era_of(msg, sess)
    if not era then return version end
    if method == "initialize" then
        local want = params.protocolVersion
        local v = proto.is_legacy[want] and want or proto.LATEST_LEGACY
        sess.era, sess.version, sess.client_info = "legacy", v, params.clientInfo
        return { jsonrpc = "2.0", id = id, result = {
            protocolVersion = v, capabilities = self:capabilities(),
            serverInfo = self.info, instructions = self.instructions } }
    end
    local h = METHODS[method]
    if not h or (era == "legacy" and MODERN_ONLY[method]) then
        return rpc_error(id, code.METHOD_NOT_FOUND, "method not found: " .. method)
    end
    local meta = type(params._meta) == "table" and params._meta or {}
    local token = meta.progressToken
    local ctx = {
        era = era, version = version, request_id = id, meta = meta, session = sess,
        client_info = era == "modern" and meta[proto.META_CLIENT_INFO] or sess.client_info,
        progress = function(progress, total, message)
            if token == nil or not sess.send then return false end
            return sess.send({ jsonrpc = "2.0", method = "notifications/progress", params = {
                progressToken = token, progress = progress, total = total, message = message } })
        end,
    }
    local result, ecode, emsg, edata = h(self, params, ctx)
    if not result then return rpc_error(id, ecode, emsg, edata) end
    if era == "modern" then
        result.resultType = "complete"
        result._meta = { [proto.META_SERVER_INFO] = self.info }
        if CACHEABLE[method] then
            result.ttlMs, result.cacheScope = self.ttl_ms, "public"
        end
    end
    return { jsonrpc = "2.0", id = id, result = result }
end


--- subscriptions/listen (2026-07-28): register a subscription for the
-- request and send its acknowledgement. Returns the subscription, or nil,
-- error response. send(msg) delivers on the request's channel.
function server:_subscribe(msg, send)
    local params = type(msg.params) == "table" and msg.params or {}
    local want = type(params.notifications) == "table" and params.notifications or {}
    local caps, granted = self:capabilities(), {}
    if want.toolsListChanged and caps.tools then granted.toolsListChanged = true end
    if want.promptsListChanged and caps.prompts then granted.promptsListChanged = true end
    if want.resourcesListChanged and caps.resources then granted.resourcesListChanged = true end
    local sub = { id = msg.id, filter = granted, send = send }
    self.subscriptions[sub] = true
    send({ jsonrpc = "2.0", method = "notifications/subscriptions/acknowledged",
           params = { notifications = granted, _meta = { [proto.META_SUBSCRIPTION] = msg.id } } })
    return sub
end


--- Serve MCP over stdio: read requests from `stream` (default: this
-- process's stdin/stdout via sibyl.process.stdio()) until end of input.
-- Each request runs in its own task; notifications/cancelled cancels it.
function server:serve_stdio(stream)
    stream = stream or require("sibyl.process").stdio{ max_line = self.max_message }
    local sess = { running = {}, subs = {} }
    sess.send = function(m) return stream:write(json.encode(m) .. "\n") end
    self.sessions[sess] = true
    while true do
        local line, rerr = stream:read_line()
        if not line and rerr and rerr.kind == "limit" then
            -- an oversized message: refuse it and read on (the stream skips it)
            sess.send(rpc_error(json.null, code.INVALID_REQUEST, "message too large: " .. tostring(rerr.message)))
            line = ""
        elseif not line then
            break
        end
        if line ~= "" then
            local msg, perr = json.decode(line)
            if type(msg) ~= "table" then
                sess.send(rpc_error(json.null, code.PARSE, "parse error: " .. tostring(perr and perr.message or "not an object")))
            elseif msg.method == "subscriptions/listen" and msg.id ~= nil then
                local era, bad = self:era_of(msg, sess)
                if era ~= "modern" then
                    sess.send(bad or rpc_error(msg.id, code.METHOD_NOT_FOUND, "method not found: subscriptions/listen"))
                else
                    sess.subs[msg.id] = self:_subscribe(msg, sess.send)
                end
            elseif msg.method == "notifications/cancelled" and type(msg.params) == "table"
                   and sess.subs[msg.params.requestId] then
                self.subscriptions[sess.subs[msg.params.requestId]] = nil
                sess.subs[msg.params.requestId] = nil
            elseif msg.method ~= nil and msg.id ~= nil then
                local id = msg.id
                sess.running[id] = sibyl.spawn(function()
                    local resp = self:handle(msg, sess)
                    sess.running[id] = nil
                    sess.send(resp)
                end)
            elseif msg.method ~= nil then
                self:handle(msg, sess)
            end                                 -- responses: we never ask, so nothing to match
        end
    end
    for _, t in pairs(sess.running) do t:cancel() end
    for _, sub in pairs(sess.subs) do self.subscriptions[sub] = nil end
    self.sessions[sess] = nil
    return true
end


--- A new server. opts: name, version, instructions, tools, resources,
-- prompts (lists of what server:tool/resource/prompt take), page_size, ttl_ms.
function _M.new(opts)
    opts = opts or {}
    if type(opts) ~= "table" then error("mcp.server: options table expected", 2) end
    local s = setmetatable({
        info = { name = opts.name or "sibyl", version = opts.version or "0.1.0" },
        instructions = opts.instructions,
        page_size = opts.page_size or _M.defaults.page_size,
        ttl_ms = opts.ttl_ms or _M.defaults.ttl_ms,
        max_sessions = opts.max_sessions or _M.defaults.max_sessions,
        max_message = opts.max_message or _M.defaults.max_message,
        tools = {}, tool_list = {}, resources = {}, resource_list = {}, prompts = {}, prompt_list = {},
        templates = {},
        sessions = setmetatable({}, { __mode = "k" }), subscriptions = setmetatable({}, { __mode = "k" }),
        http_sessions = {}, n_http_sessions = 0,
    }, server_mt)
    for _, t in ipairs(opts.tools or {}) do s:tool(t) end
    for _, r in ipairs(opts.resources or {}) do
        if r.uri_template then s:resource_template(r) else s:resource(r) end
    end
    for _, p in ipairs(opts.prompts or {}) do s:prompt(p) end
    return s
end

_M.server = server
return _M
