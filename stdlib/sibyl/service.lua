-- sibyl.service -- serve agents over an OpenAI-compatible HTTP API, so any
-- OpenAI client (the official SDKs, curl, LangChain...) can talk to them:
-- POST /v1/chat/completions (JSON or SSE streaming), GET /v1/models and
-- GET /healthz, with optional bearer keys, limits and an access log.
--
--   local service = require "sibyl.service"
--   local srv, svc = assert(service.listen{ port = 8080,
--       agents = { helper = agent.new{ system = "You are terse.", tools = {...} } },
--       keys = { "sk-local-1" },
--   })
--
-- `sibyl serve app.lua` does this when app.lua returns a table with
-- `agent` or `agents` (doc/serve.md). An agent is a sibyl.agent (each
-- request runs on a fresh agent:clone(), loaded with the request's
-- history) or a function(messages, ctx) returning a string,
-- {content=, usage={input=, output=}}, or nil, err; ctx.stream(text) sends
-- a delta when the client streams.
--
-- Caveats:
--  * Streaming starts at the first delta, so a failure before any output
--    is a plain JSON error with its status; after it, the stream ends with
--    `data: {"error": {...}}` (what the OpenAI SDKs raise on).
--  * A sibyl.agent streams the text of every model call, including text the
--    model writes before it calls a tool; the non-streaming reply holds the
--    final answer only.
--  * Bodies over max_body up to hard_max_body (4 x max_body) get a JSON
--    413; larger ones are refused by evhttp itself (413, HTML body,
--    connection closed) before a handler runs.
-- Wire format: sibyl/service/openai.lua. Spec: tests/lua/26-service_spec.lua.

local sibyl = require "sibyl"
local json = require "sibyl.json"
local server = require "sibyl.server"
local oai = require "sibyl.service.openai"
local bit = require "bit"

local type, pairs, ipairs, tostring, setmetatable, error, xpcall =
    type, pairs, ipairs, tostring, setmetatable, error, xpcall
local format, byte, gmatch, match = string.format, string.byte, string.gmatch, string.match
local concat, sort = table.concat, table.sort
local bor, bxor = bit.bor, bit.bxor
local max = math.max
local now, deadline = sibyl.now, sibyl.deadline
local traceback = debug.traceback

local _M = { _VERSION = "0.1.0" }

--- Defaults for every knob; change them here or in the options table.
_M.defaults = {
    model = "sibyl",             -- model name of a single `agent`
    max_body = 1024 * 1024,      -- bytes per request body (413 beyond)
    hard_max_body = nil,         -- evhttp's own limit; nil: 4 x max_body
    max_messages = 256,          -- messages per request (400 beyond)
    max_content = 256 * 1024,    -- bytes per message content (400 beyond)
    timeout = 120,               -- seconds per request (the agent's budget.seconds)
    max_inflight = 10000,        -- requests handled at once (the server's; 503 beyond)
    access_log = true,           -- false, true (a line on stderr) or function(entry)
    keys_env = "SIBYL_API_KEYS", -- comma-separated keys when opts.keys is not given
}

local service = {}
local service_mt = { __index = service }


-- ------------------------------------------------------------------ auth

-- Equal strings, compared in time that depends only on the lengths: no
-- exit at the first differing byte.
local function same(a, b)
    local diff = bxor(#a, #b)
    for i = 1, #a do
        diff = bor(diff, bxor(byte(a, i), byte(b, (i - 1) % (#b > 0 and #b or 1) + 1) or 0))
    end
    return diff == 0
end


-- True when the Authorization header carries one of the keys; every key is
-- compared, whichever matches.
local function authorized(keys, req)
    local h = req.headers["authorization"]
    local given = h and match(h, "^[Bb]earer%s+(%S+)%s*$")
    if not given then return false, "missing" end
    local ok = false
    for _, k in ipairs(keys) do
        if same(given, k) then ok = true end
    end
    return ok, "wrong"
end


local function keys_from(opts)
    local list = {}
    if opts.keys ~= nil then
        if type(opts.keys) ~= "table" then error("service: opts.keys must be a list of strings", 4) end
        for i, k in ipairs(opts.keys) do
            if type(k) ~= "string" or k == "" then error(format("service: opts.keys[%d] must be a non-empty string", i), 4) end
            list[#list + 1] = k
        end
    else
        local env = os.getenv(opts.keys_env or _M.defaults.keys_env)
        for k in gmatch(env or "", "[^,]+") do
            k = match(k, "^%s*(.-)%s*$")
            if k ~= "" then list[#list + 1] = k end
        end
    end
    return #list > 0 and list or nil
end


-- ----------------------------------------------------------- access log

local function write_log(entry)
    local extra = ""
    if entry.model then extra = extra .. " model=" .. entry.model end
    if entry.stream ~= nil then extra = extra .. " stream=" .. tostring(entry.stream) end
    io.stderr:write(format('%s "%s %s" %d %dB %.1fms%s\n', entry.remote or "-", entry.method, entry.path,
                           entry.status, entry.bytes, entry.ms, extra))
end


-- Status and body size of a handler's return value, as sibyl.server will send it.
local function measure(ret)
    if ret == nil then return 204, 0 end
    if type(ret) == "string" then return 200, #ret end
    if type(ret) ~= "table" then return 500, 0 end
    if ret.status or ret.body ~= nil or ret.headers then
        local b = ret.body
        return ret.status or 200, type(b) == "string" and #b or type(b) == "table" and #json.encode(b) or 0
    end
    return 200, #json.encode(ret)
end


-- --------------------------------------------------------------- agents

local function is_agent(a)
    return type(a) == "table" and type(a.run) == "function" and type(a.clone) == "function"
end


-- Run a sibyl.agent on the request: a fresh clone, the history loaded, the
-- system messages appended to its system prompt, the last message run.
local function run_agent(svc, proto, msgs, ctx)
    local a = proto:clone()
    local sys, hist = {}, {}
    for i = 1, #msgs - 1 do
        local m = msgs[i]
        if m.role == "system" then
            sys[#sys + 1] = m.content
        else
            hist[#hist + 1] = { role = m.role, content = m.content, tool_calls = m.tool_calls,
                                tool_call_id = m.tool_call_id, name = m.name }
        end
    end
    if #sys > 0 then
        a.system = (a.system and a.system ~= "" and (a.system .. "\n\n") or "") .. concat(sys, "\n\n")
    end
    if ctx.temperature then a.temperature = ctx.temperature end
    a.messages = hist
    local r, err = a:run({ role = "user", content = msgs[#msgs].content }, {
        stream = ctx.streaming,
        budget = { seconds = svc.timeout },
        on_event = function(ev)
            if ev.type == "text" and ctx.streaming then ctx.stream(ev.text) end
        end,
    })
    if r then
        return { content = r.content or "", usage = r.usage, finish_reason = "stop" }
    end
    -- out of steps or tokens with some text: that text, cut short
    local p = type(err) == "table" and err.partial
    if p and type(p.content) == "string" and p.content ~= ""
       and (err.kind == "max_steps" or (err.kind == "budget" and err.budget ~= "seconds")) then
        return { content = p.content, usage = p.usage, finish_reason = "length" }
    end
    return nil, err
end


-- Run a function agent under the request's deadline. A raise becomes an
-- error of kind "raised" (logged, answered with a generic 500).
local function run_function(svc, fn, msgs, ctx)
    local ok, v, e = deadline(svc.timeout, xpcall, fn, traceback, msgs, ctx)
    if not ok then
        return nil, sibyl.error("raised", tostring(v))
    end
    if type(v) == "string" then
        return { content = v, finish_reason = "stop" }
    end
    if type(v) == "table" and (v.content == nil or type(v.content) == "string") and v.kind == nil then
        return { content = v.content or "", usage = v.usage, finish_reason = v.finish_reason or "stop" }
    end
    if v == nil and e ~= nil then return nil, e end
    return nil, sibyl.error("raised", "the agent function returned " .. type(v)
                            .. "; return a string, {content=, usage=} or nil, err")
end


-- ------------------------------------------------------ chat completions

-- Writes the SSE stream: starts it at the first chunk, counts nothing
-- itself (the access log wraps res:write).
local function streamer(res, st)
    local s = { started = false, alive = true, sent = false }

    local function send(obj)
        if not s.alive then return false end
        s.alive = res:write("data: " .. json.encode(obj) .. "\n\n")
        return s.alive
    end

    function s.start()
        if s.started then return s.alive end
        s.started = true
        res:start(200, { ["Content-Type"] = "text/event-stream", ["Cache-Control"] = "no-cache",
                         ["X-Accel-Buffering"] = "no" })
        return send(oai.chunk(st, { role = "assistant", content = "" }))
    end

    function s.delta(text)
        if type(text) ~= "string" then error("ctx.stream: text expected", 2) end
        if text == "" then return s.alive end
        s.start()
        s.sent = true
        return send(oai.chunk(st, { content = text }))
    end

    function s.finish(result)
        s.start()
        if not s.sent and result.content ~= "" then send(oai.chunk(st, { content = result.content })) end
        send(oai.chunk(st, {}, result.finish_reason))
        if st.include_usage then send(oai.usage_chunk(st, result.usage)) end
        if s.alive then s.alive = res:write("data: [DONE]\n\n") end
    end

    function s.fail(status, message, code)
        local body = json.decode(oai.error_body(status, message, code))
        send(body)
    end

    return s
end


function service:_chat(req, res)
    local body, perr = json.decode(req.body)
    if body == nil then
        return oai.error(400, "We could not parse the JSON body of your request: " .. tostring(perr and perr.message or perr))
    end
    local rq, msg, param = oai.parse_request(body, self)
    if not rq then return oai.error(400, msg, nil, param) end
    local name = rq.model
    if name == nil or name == "" then
        if #self.names ~= 1 then
            return oai.error(400, "'model' is required; the models are: " .. concat(self.names, ", "), nil, "model")
        end
        name = self.names[1]
    end
    req.log.model, req.log.stream = name, rq.stream
    local entry = self.agents[name]
    if entry == nil then
        return oai.error(404, format("The model `%s` does not exist or you do not have access to it.", name),
                         "model_not_found", "model")
    end
    local st = { id = oai.completion_id(), created = os.time(), model = name, include_usage = rq.include_usage }
    local out = rq.stream and streamer(res, st)
    local ctx = {
        model = name, request = req, streaming = rq.stream, temperature = rq.temperature,
        max_tokens = rq.max_tokens, user = rq.user,
        stream = function(text)
            if out then return out.delta(text) end
            return true
        end,
    }
    local result, err
    if is_agent(entry) then
        result, err = run_agent(self, entry, rq.messages, ctx)
    else
        result, err = run_function(self, entry, rq.messages, ctx)
    end
    if not result then
        local status, emsg, code, headers = oai.failure(err)
        if type(err) == "table" and err.kind == "raised" then
            self.on_error(req, emsg)
            status, emsg, code = 500, "internal error: the agent failed (see the server log)", "agent_error"
        end
        if out and out.started then
            out.fail(status, emsg, code)
            return
        end
        return oai.error(status, emsg, code, nil, headers)
    end
    if out then
        out.finish(result)
        return
    end
    return { status = 200, headers = { ["Content-Type"] = "application/json" },
             body = json.encode(oai.completion(st, result)) }
end


-- ------------------------------------------------------------ the routes

-- Wrap a handler: auth (unless public), body limit, access log, byte count.
function service:_wrap(handler, public)
    local svc = self
    return function(req, res)
        local t0 = now()
        local entry = { remote = req.remote_addr, method = req.method, path = req.path }
        req.log = entry
        local bytes = 0
        local write = res.write
        res.write = function(r, data)
            bytes = bytes + #data
            return write(r, data)
        end
        local ret
        local ok, why = true, nil
        if svc.keys and not public then ok, why = authorized(svc.keys, req) end
        if not ok then
            ret = oai.error(401, why == "missing"
                and "You didn't provide an API key. Send it as `Authorization: Bearer <key>`."
                or "Incorrect API key provided.", "invalid_api_key", nil, { ["WWW-Authenticate"] = "Bearer" })
        elseif #req.body > svc.max_body then
            ret = oai.error(413, format("The request body is %d bytes; the limit is %d.", #req.body, svc.max_body),
                            "request_too_large")
        else
            local hok, v = xpcall(handler, traceback, req, res)
            if not hok then
                entry.status, entry.bytes, entry.ms = 500, 0, (now() - t0) * 1000
                if svc.access_log then svc.access_log(entry) end
                error(v, 0)
            end
            ret = v
        end
        if res.started then
            entry.status, entry.bytes = 200, bytes
        else
            entry.status, entry.bytes = measure(ret)
        end
        entry.ms = (now() - t0) * 1000
        if svc.access_log then svc.access_log(entry) end
        return ret
    end
end


--- The routes: the API, /healthz, a catch-all giving OpenAI-shaped 404 and
-- 405, and opts.routes, all but /healthz behind the keys.
function service:routes()
    local svc = self
    local api = {
        ["POST /v1/chat/completions"] = function(req, res) return svc:_chat(req, res) end,
        ["GET /v1/models"] = function()
            return { status = 200, headers = { ["Content-Type"] = "application/json" },
                     body = json.encode(oai.models(svc.names, svc.created)) }
        end,
    }
    for key, fn in pairs(self.extra_routes) do
        if api[key] then error("service: opts.routes[" .. key .. "] clashes with the service's own route", 3) end
        api[key] = fn
    end
    local known = server.router(api)
    local routes = {}
    for key, fn in pairs(api) do routes[key] = self:_wrap(fn) end
    routes["GET /healthz"] = routes["GET /healthz"] or self:_wrap(function()
        local n = svc.server and svc.server:inflight() - 1 or 0
        return { status = 200, headers = { ["Content-Type"] = "application/json" },
                 body = json.encode{ status = "ok", agents = #svc.names, inflight = n < 0 and 0 or n } }
    end, true)
    if not routes["/*"] then
        routes["/*"] = self:_wrap(function(req)
            local _, status = known(req.method, req.path)
            if req.path == "/healthz" then status = 405 end
            if status == 405 then
                return oai.error(405, format("Method %s is not allowed on %s.", req.method, req.path),
                                 "method_not_allowed")
            end
            return oai.error(404, format("Unknown path: %s %s.", req.method, req.path), "not_found")
        end)
    end
    return routes
end


--- Options for server.listen: these routes, the hard body limit, the
-- server knobs passed through.
function service:listen_options()
    local o = {}
    for _, k in ipairs{ "host", "port", "max_header", "stream_timeout", "backlog", "on_error" } do
        o[k] = self.opts[k]
    end
    o.max_inflight = self.max_inflight
    o.max_body = self.hard_max_body
    o.timeout = self.opts.idle_timeout
    o.routes = self:routes()
    return o
end


--- Listen: the server (svc.server), or nil, err.
function service:listen()
    local srv, err = server.listen(self:listen_options())
    if not srv then return nil, err end
    self.server = srv
    return srv
end


-- ---------------------------------------------------------- constructor

local function check_num(opts, k)
    local v = opts[k]
    if v == nil then return _M.defaults[k] end
    if type(v) ~= "number" or v <= 0 then error(format("service: opts.%s must be a positive number", k), 4) end
    return v
end


--- A service from opts: agents = {name = agent or function} and/or agent
-- (named opts.model, default "sibyl"), routes (more routes), keys, keys_env,
-- max_body, hard_max_body, max_messages, max_content, timeout, max_inflight,
-- access_log, on_error, and server.listen's host, port, max_header,
-- stream_timeout, backlog, idle_timeout (its `timeout`).
function _M.new(opts)
    if type(opts) ~= "table" then error("service: options table expected", 3) end
    local agents, names = {}, {}
    local function add(name, a)
        if type(name) ~= "string" or name == "" then error("service: agent names must be non-empty strings", 4) end
        if not is_agent(a) and type(a) ~= "function" then
            error(format("service: agent %q must be a sibyl.agent or a function(messages, ctx)", name), 4)
        end
        if agents[name] then error(format("service: two agents are named %q", name), 4) end
        agents[name] = a
        names[#names + 1] = name
    end
    if opts.agent ~= nil then add(opts.model or _M.defaults.model, opts.agent) end
    if opts.agents ~= nil and type(opts.agents) ~= "table" then
        error("service: opts.agents must be a table {name = agent}", 3)
    end
    for name, a in pairs(opts.agents or {}) do add(name, a) end
    if #names == 0 then error("service: opts.agent or opts.agents is required", 3) end
    sort(names)
    local log = opts.access_log
    if log == nil then log = _M.defaults.access_log end
    if log == true then log = write_log
    elseif log ~= false and type(log) ~= "function" then
        error("service: opts.access_log must be true, false or function(entry)", 3)
    end
    local svc = setmetatable({
        opts = opts, agents = agents, names = names, created = os.time(),
        keys = keys_from(opts),
        max_body = check_num(opts, "max_body"),
        max_messages = check_num(opts, "max_messages"),
        max_content = check_num(opts, "max_content"),
        timeout = check_num(opts, "timeout"),
        max_inflight = check_num(opts, "max_inflight"),
        access_log = log or nil,
        on_error = opts.on_error or function(req, msg)
            io.stderr:write(format("sibyl.service: %s %s: %s\n", req.method, req.path, msg))
        end,
        extra_routes = opts.routes or {},
    }, service_mt)
    svc.hard_max_body = opts.hard_max_body or max(4 * svc.max_body, svc.max_body + 65536)
    return svc
end


--- The routes for server.listen (see service:routes), and the service.
function _M.routes(opts)
    local svc = _M.new(opts)
    return svc:routes(), svc
end


--- Build and listen: the server and the service, or nil, err.
function _M.listen(opts)
    local svc = _M.new(opts)
    local srv, err = svc:listen()
    if not srv then return nil, err end
    return srv, svc
end


--- True when a served script's table asks for a service (sibyl serve).
function _M.wants(app)
    return type(app) == "table" and (app.agent ~= nil or app.agents ~= nil)
end


return _M
