-- 28-mcp_spec.lua -- sibyl.mcp: the client against Sibyl's own server over
-- both transports (stdio: `sibyl mcp serve`, Streamable HTTP) and both
-- protocol generations; the HTTP endpoint's checks on the wire; version
-- negotiation against hand-made servers; timeouts, a server that never
-- answers, one that crashes mid-call; list_changed; an agent whose tool
-- lives in an MCP server; and the official TypeScript SDK in both
-- directions (when Node is there).

local sibyl = require "sibyl"
local helpers = require "helpers"
local json = require "sibyl.json"
local http = require "sibyl.http"
local server = require "sibyl.server"
local process = require "sibyl.process"
local mcp = require "sibyl.mcp"
local llm = require "sibyl.llm"
local agent = require "sibyl.agent"
local node = require "node"

local FIXTURE = "tests/fixtures/mcp_tools.lua"
local SIBYL = helpers.sibyl_bin
local MODERN, LEGACY = "2026-07-28", "2025-11-25"


local function stdio_client(opts)
    local o = { command = { SIBYL, "mcp", "serve", FIXTURE }, env = { MCP_PAGE_SIZE = "3" } }
    for k, v in pairs(opts or {}) do o[k] = v end
    return mcp.connect(o)
end


local function http_fixture()
    return assert(dofile(FIXTURE):listen{ port = 0 })
end


-- What every transport and generation must do alike.
local function exercise(c)
    local tools = assert(c:list_tools())
    local names = {}
    for _, t in ipairs(tools) do names[#names + 1] = t.name end
    assert.are.same({ "add", "echo", "fail", "raise", "slow", "stats", "liar", "crash", "add_tool" }, names)
    assert.are.equal("Add two numbers", tools[1].description)
    assert.are.equal("object", tools[1].inputSchema.type)

    local r = assert(c:call_tool("add", { a = 2, b = 3 }))
    assert.are.equal(5, r.structuredContent.sum)
    assert.are.same({ sum = 5 }, json.decode(r.content[1].text))
    assert.is_falsy(r.isError)

    r = assert(c:call_tool("echo", { text = " héllo, 世界 " }))        -- Mcp-Param-Text in base64 on HTTP
    assert.are.equal(" héllo, 世界 ", r.content[1].text)

    r = assert(c:call_tool("fail", {}))
    assert.is_true(r.isError)
    assert.are.equal("boom", r.content[1].text)
    r = assert(c:call_tool("raise", {}))
    assert.is_true(r.isError)
    assert.matches("kaboom", r.content[1].text)
    r = assert(c:call_tool("add", { a = "two" }))
    assert.is_true(r.isError)
    assert.matches("invalid arguments for add", r.content[1].text)

    r = assert(c:call_tool("liar", {}))                  -- the server checks its own outputSchema
    assert.is_true(r.isError)
    assert.matches("does not match its outputSchema", r.content[1].text)
    assert.are.equal("integer", tools[6].outputSchema.properties.finished.type)

    local none, err = c:call_tool("nope", {})
    assert.is_nil(none)
    assert.are.equal("mcp", err.kind)
    assert.are.equal(-32602, err.code)
    assert.matches("unknown tool: nope", err.message)

    local seen = {}
    r = assert(c:call_tool("slow", { seconds = 0.04 }, { on_progress = function(p) seen[#seen + 1] = p end }))
    assert.are.equal("slept", r.content[1].text)
    assert.are.equal(4, #seen)
    assert.are.equal(4, seen[4].progress)
    assert.are.equal(4, seen[4].total)
    assert.are.equal("step 4", seen[4].message)

    local res = assert(c:list_resources())
    assert.are.equal(2, #res)
    assert.are.equal("mem://greeting", res[1].uri)
    local rr = assert(c:read_resource("mem://greeting"))
    assert.are.equal("hello from sibyl", rr.contents[1].text)
    assert.are.equal("tick", assert(c:read_resource("mem://clock")).contents[1].text)
    local tpl = assert(c:list_resource_templates())
    assert.are.equal("note://{folder}/{+name}", tpl[1].uriTemplate)
    assert.are.equal("note a b/c in work", assert(c:read_resource("note://work/a%20b/c")).contents[1].text)
    local nr, rerr = c:read_resource("mem://nope")
    assert.is_nil(nr)
    assert.are.equal(c.era == "modern" and -32602 or -32002, rerr.code)

    local prompts = assert(c:list_prompts())
    assert.are.equal("greet", prompts[1].name)
    assert.is_true(prompts[1].arguments[1].required)
    local p = assert(c:get_prompt("greet", { name = "Ann" }))
    assert.are.equal("user", p.messages[1].role)
    assert.are.equal("Say hello to Ann", p.messages[1].content.text)
    local np, perr = c:get_prompt("greet", {})
    assert.is_nil(np)
    assert.matches('needs the argument "name"', perr.message)

    assert.are.equal("fixture", c.server_info.name)
    assert.are.equal("1.2.3", c.server_info.version)
    assert.are.equal("Test tools for Sibyl's MCP specs.", c.instructions)
    assert.is_table(c.server_capabilities.tools)
    assert.is_truthy(c:ping())
end


describe("sibyl.mcp over Streamable HTTP", function()
    for _, case in ipairs{ { "auto", MODERN, "modern" }, { "2025-11-25", "2025-11-25", "legacy" },
                           { "2025-06-18", "2025-06-18", "legacy" } } do
        it("speaks " .. case[2] .. " (protocol = " .. case[1] .. ")", function()
            local s = http_fixture()
            finally(function() s:close() end)
            local c = assert(mcp.connect{ url = "http://127.0.0.1:" .. s.port .. "/mcp", protocol = case[1] })
            assert.are.equal(case[2], c.protocol_version)
            assert.are.equal(case[3], c.era)
            exercise(c)
            c:close()
            c:close()                                       -- idempotent
            local _, err = c:call_tool("add", { a = 1, b = 1 })
            assert.are.equal("closed", err.kind)
        end)
    end

    it("opens a new 2025-xx session when the server dropped the old one", function()
        local srv = dofile(FIXTURE)
        local s = assert(srv:listen{ port = 0 })
        finally(function() s:close() end)
        local c = assert(mcp.connect{ url = "http://127.0.0.1:" .. s.port .. "/mcp", protocol = LEGACY })
        assert.are.equal(5, assert(c:call_tool("add", { a = 2, b = 3 })).structuredContent.sum)
        local old = c.transport.session
        srv.http_sessions[old] = nil                        -- as if it expired on the server
        assert.are.equal(7, assert(c:call_tool("add", { a = 3, b = 4 })).structuredContent.sum)
        assert.are_not.equal(old, c.transport.session)
        c:close()
    end)

    it("sends opts.headers with every request", function()
        local s = http_fixture()
        finally(function() s:close() end)
        local url = "http://127.0.0.1:" .. s.port .. "/mcp"
        local c, err = mcp.connect{ url = url, headers = { Origin = "http://evil.example" } }
        assert.is_nil(c)
        assert.matches("Forbidden: origin http://evil.example", err.message)
        c = assert(mcp.connect{ url = url, protocol = LEGACY, headers = { Origin = "http://localhost:1234" } })
        assert.are.equal(5, assert(c:call_tool("add", { a = 2, b = 3 })).structuredContent.sum)
        c:close()
    end)

    it("pages tools/list", function()
        local srv = dofile(FIXTURE)
        srv.page_size = 3
        local s = assert(srv:listen{ port = 0 })
        finally(function() s:close() end)
        local c = assert(mcp.connect{ url = "http://127.0.0.1:" .. s.port .. "/mcp" })
        local page = assert(c:request("tools/list"))
        assert.are.equal(3, #page.tools)
        assert.are.equal("p4", page.nextCursor)
        assert.are.equal(0, page.ttlMs)
        assert.are.equal("public", page.cacheScope)
        assert.are.equal("complete", page.resultType)
        assert.are.equal(9, #assert(c:list_tools()))
        local bad, err = c:request("tools/list", { cursor = "zzz" })
        assert.is_nil(bad)
        assert.are.equal(-32602, err.code)
        local short, serr = c:list_tools{ max_pages = 2 }
        assert.is_nil(short)
        assert.matches("more than 2 pages", serr.message)
        c:close()
    end)
end)


describe("sibyl.mcp over stdio (sibyl mcp serve)", function()
    for _, case in ipairs{ { "auto", MODERN, "modern" }, { LEGACY, LEGACY, "legacy" } } do
        it("speaks " .. case[2] .. " (protocol = " .. case[1] .. ")", function()
            local c = assert(stdio_client{ protocol = case[1] })
            finally(function() c:close() end)
            assert.are.equal(case[2], c.protocol_version)
            assert.are.equal(case[3], c.era)
            exercise(c)
            assert.is_truthy(tostring(c):find("sibyl.mcp.client (stdio, " .. case[2], 1, true), tostring(c))
        end)
    end

    it("times a call out, cancels it on the server, and goes on", function()
        local c = assert(stdio_client())
        finally(function() c:close() end)
        local t0 = sibyl.now()
        local r, err = c:call_tool("slow", { seconds = 0.6 }, { timeout = 0.15 })
        assert.is_nil(r)
        assert.are.equal("timeout", err.kind)
        assert.matches("tools/call got no answer within 0.15 s", err.message)
        assert.is_true(sibyl.now() - t0 < 0.5)
        sibyl.sleep(0.7)                                    -- the slow call would have finished by now
        assert.are.same({ finished = 0 }, assert(c:call_tool("stats")).structuredContent)
        assert.are.equal(5, assert(c:call_tool("add", { a = 2, b = 3 })).structuredContent.sum)
    end)

    it("reports a server that crashes mid-call as kind closed, with its stderr", function()
        local c = assert(stdio_client())
        finally(function() c:close() end)
        local r, err = c:call_tool("crash", {})
        assert.is_nil(r)
        assert.are.equal("closed", err.kind)
        assert.matches("exit code 3", err.message)
        assert.matches("fixture: about to crash", err.message)
        assert.matches("about to crash", c:stderr())
        local _, again = c:call_tool("add", { a = 1, b = 2 })
        assert.are.equal("closed", again.kind)
    end)

    it("starts a crashed server again with restart = true (at most max_restarts times)", function()
        local c = assert(stdio_client{ restart = true, max_restarts = 1 })
        finally(function() c:close() end)
        local pid = c.transport.proc.pid
        local _, err = c:call_tool("crash", {})
        assert.are.equal("closed", err.kind)                  -- the call in flight is lost
        assert.are.equal(5, assert(c:call_tool("add", { a = 2, b = 3 })).structuredContent.sum)
        assert.are_not.equal(pid, c.transport.proc.pid)
        assert.are.equal(1, c.restarts)
        local _, err2 = c:call_tool("crash", {})
        assert.are.equal("closed", err2.kind)
        local _, err3 = c:call_tool("add", { a = 1, b = 1 })  -- no restarts left
        assert.are.equal("closed", err3.kind)
    end)

    it("gives up on a server that never answers, and leaves no process behind", function()
        local marker = "sibyl-mcp-silent-" .. tostring(math.random(1e9))
        local t0 = sibyl.now()
        local c, err = mcp.connect{ command = { "/bin/sh", "-c", "cat >/dev/null", marker },
                                    probe_timeout = 0.2, timeout = 0.3 }
        assert.is_nil(c)
        assert.are.equal("timeout", err.kind)
        assert.matches("initialize got no answer within 0.3 s", err.message)
        assert.is_true(sibyl.now() - t0 < 2)
        local gone = helpers.eventually(function()
            local p = io.popen("pgrep -f '[s]" .. marker:sub(2) .. "' || true")   -- [s]: not this shell
            local out = p:read("*a")
            p:close()
            return out == ""
        end, 3)
        assert.is_true(gone, "the silent server is still running")
    end)

    it("fails clearly when the command does not exist", function()
        local c, err = mcp.connect{ command = { "/nonexistent/mcp-server" } }
        assert.is_nil(c)
        assert.are.equal("io", err.kind)
        assert.matches("/nonexistent/mcp%-server", err.message)
    end)

    for _, proto in ipairs{ "auto", LEGACY } do
        it("delivers list_changed (" .. proto .. ")", function()
            local c = assert(stdio_client{ protocol = proto })
            finally(function() c:close() end)
            local got = {}
            local sub = assert(c:listen({ tools = true }, function(method) got[#got + 1] = method end))
            if c.era == "modern" then assert.is_true(sub.acknowledged.toolsListChanged) end
            assert.are.equal("added", assert(c:call_tool("add_tool", { name = "fresh" })).content[1].text)
            assert.is_true(helpers.eventually(function() return #got > 0 end, 2))
            assert.are.equal("notifications/tools/list_changed", got[1])
            local names = {}
            for _, t in ipairs(assert(c:list_tools())) do names[t.name] = true end
            assert.is_true(names.fresh)
            assert.are.equal("new tool fresh", assert(c:call_tool("fresh")).content[1].text)
            sub:close()
        end)
    end

    it("keeps stdout for the protocol: print in a tools file goes to stderr", function()
        local file = helpers.tmpfile([[
print("loading tools")                       -- must not reach stdout
return { tools = { { name = "hi", fn = function() print("called"); return "hi" end } } }
]], ".lua")
        local c = assert(mcp.connect{ command = { SIBYL, "mcp", "serve", file } })
        finally(function() c:close(); os.remove(file) end)
        assert.are.equal("hi", assert(c:call_tool("hi")).content[1].text)
        assert.matches("loading tools", c:stderr())
    end)

    it("answers a garbage line with a parse error and carries on", function()
        local p = assert(process.spawn{ SIBYL, "mcp", "serve", FIXTURE })
        finally(function() p:close() end)
        assert(p:write("this is not json\n"))
        local e = json.decode(assert(p:read_line()))
        assert.are.equal(-32700, e.error.code)
        assert(p:write(json.encode{ jsonrpc = "2.0", id = 7, method = "tools/list" } .. "\n"))
        local r = json.decode(assert(p:read_line()))
        assert.are.equal(-32600, r.error.code)                 -- no version, no initialize
        assert.matches("initialize", r.error.message)
        assert(p:write(json.encode{ jsonrpc = "2.0", id = 8, method = "tools/list",
            params = { _meta = { ["io.modelcontextprotocol/protocolVersion"] = MODERN,
                                 ["io.modelcontextprotocol/clientCapabilities"] = {} } } } .. "\n"))
        r = json.decode(assert(p:read_line()))
        assert.are.equal(8, r.id)
        assert.are.equal("complete", r.result.resultType)
        assert.are.equal("fixture", r.result._meta["io.modelcontextprotocol/serverInfo"].name)
        p:close_stdin()
        assert.are.equal(0, p:wait().code)                     -- EOF on stdin ends the server
    end)

    it("fails the calls in flight on an oversized answer, and goes on", function()
        local c = assert(stdio_client{ max_message = 2000 })
        finally(function() c:close() end)
        local r, err = c:call_tool("echo", { text = ("y"):rep(5000) })
        assert.is_nil(r)
        assert.are.equal("limit", err.kind)
        assert.matches("over 2000 bytes", err.message)
        assert.are.equal(5, assert(c:call_tool("add", { a = 2, b = 3 })).structuredContent.sum)
    end)

    it("refuses an oversized message and reads on", function()
        local p = assert(process.spawn{ SIBYL, "mcp", "serve", FIXTURE, env = { MCP_MAX_MESSAGE = "1024" } })
        finally(function() p:close() end)
        assert(p:write(json.encode{ jsonrpc = "2.0", id = 1, method = "tools/call",
                                    params = { name = "echo", arguments = { text = ("x"):rep(4000) } } } .. "\n"))
        local e = json.decode(assert(p:read_line()))
        assert.are.equal(-32600, e.error.code)
        assert.matches("message too large", e.error.message)
        assert(p:write(json.encode{ jsonrpc = "2.0", id = 2, method = "initialize", params = {
            protocolVersion = LEGACY, capabilities = {}, clientInfo = { name = "t", version = "1" } } } .. "\n"))
        local r = json.decode(assert(p:read_line()))
        assert.are.equal(2, r.id)
        assert.are.equal(LEGACY, r.result.protocolVersion)
    end)
end)


describe("the MCP HTTP endpoint", function()
    local s, url
    before_each(function()
        s = http_fixture()
        url = "http://127.0.0.1:" .. s.port .. "/mcp"
    end)
    after_each(function() s:close() end)

    local function meta(v)
        return { ["io.modelcontextprotocol/protocolVersion"] = v or MODERN,
                 ["io.modelcontextprotocol/clientCapabilities"] = {} }
    end

    local function post(body, headers)
        local h = { ["Content-Type"] = "application/json", Accept = "application/json, text/event-stream" }
        for k, v in pairs(headers or {}) do h[k] = v end
        local res = assert(http.post(url, type(body) == "string" and body or json.encode(body), { headers = h }))
        return res, json.decode(res.body)
    end

    local call = { jsonrpc = "2.0", id = 1, method = "tools/call",
                   params = { name = "echo", arguments = { text = "hi" }, _meta = meta() } }
    local good = { ["MCP-Protocol-Version"] = MODERN, ["Mcp-Method"] = "tools/call", ["Mcp-Name"] = "echo",
                   ["Mcp-Param-Text"] = "hi" }

    local function with(changes)
        local h = {}
        for k, v in pairs(good) do h[k] = v end
        for k, v in pairs(changes) do h[k] = v or nil end
        return h
    end

    it("answers a well-formed 2026-07-28 request", function()
        local res, m = post(call, good)
        assert.are.equal(200, res.status)
        assert.are.equal("hi", m.result.content[1].text)
        local _, b64 = post(call, with{ ["Mcp-Name"] = "=?base64?ZWNobw==?=" })
        assert.are.equal("hi", b64.result.content[1].text)
    end)

    it("refuses headers that are missing or do not match the body (400, -32020)", function()
        for _, h in ipairs{ with{ ["Mcp-Method"] = false }, with{ ["Mcp-Method"] = "tools/list" },
                            with{ ["Mcp-Name"] = "add" }, with{ ["Mcp-Name"] = false },
                            with{ ["MCP-Protocol-Version"] = "2025-11-25" }, with{ ["Mcp-Param-Text"] = "ho" },
                            with{ ["Mcp-Param-Text"] = false } } do
            local res, m = post(call, h)
            assert.are.equal(400, res.status)
            assert.are.equal(-32020, m.error.code)
            assert.are.equal(1, m.id)
        end
    end)

    it("refuses an unknown protocol version with the supported list (400, -32022)", function()
        local body = { jsonrpc = "2.0", id = 2, method = "tools/list", params = { _meta = meta("1900-01-01") } }
        local res, m = post(body, { ["MCP-Protocol-Version"] = "1900-01-01", ["Mcp-Method"] = "tools/list" })
        assert.are.equal(400, res.status)
        assert.are.equal(-32022, m.error.code)
        assert.are.equal("1900-01-01", m.error.data.requested)
        assert.are.same({ MODERN, "2025-11-25", "2025-06-18", "2025-03-26" }, m.error.data.supported)
    end)

    it("answers 404 -32601 for an unknown method", function()
        local body = { jsonrpc = "2.0", id = 3, method = "tools/nope", params = { _meta = meta() } }
        local res, m = post(body, { ["MCP-Protocol-Version"] = MODERN, ["Mcp-Method"] = "tools/nope" })
        assert.are.equal(404, res.status)
        assert.are.equal(-32601, m.error.code)
    end)

    it("validates Origin (403), and refuses GET (405), batches and bad JSON (400)", function()
        local res = post(call, with{ Origin = "http://evil.example" })
        assert.are.equal(403, res.status)
        assert.are.equal(200, (post(call, with{ Origin = "http://localhost:3000" })).status)
        assert.are.equal(405, assert(http.get(url)).status)
        local r2, m2 = post("[" .. json.encode(call) .. "]", good)
        assert.are.equal(400, r2.status)
        assert.are.equal(-32600, m2.error.code)
        local r3, m3 = post("{oops", good)
        assert.are.equal(400, r3.status)
        assert.are.equal(-32700, m3.error.code)
    end)

    it("runs 2025-xx sessions: initialize, session id, 404 after DELETE", function()
        local init = { jsonrpc = "2.0", id = 1, method = "initialize", params = {
            protocolVersion = "2025-06-18", capabilities = {}, clientInfo = { name = "t", version = "1" } } }
        local res, m = post(init)
        assert.are.equal(200, res.status)
        assert.are.equal("2025-06-18", m.result.protocolVersion)
        local sid = res.headers["mcp-session-id"]
        assert.matches("^%x+$", sid)
        local list = { jsonrpc = "2.0", id = 2, method = "tools/list" }
        local r0, m0 = post(list)
        assert.are.equal(400, r0.status)
        assert.matches("Mcp%-Session%-Id", m0.error.message)
        local note = post({ jsonrpc = "2.0", method = "notifications/initialized" }, { ["Mcp-Session-Id"] = sid })
        assert.are.equal(202, note.status)
        local r1, m1 = post(list, { ["Mcp-Session-Id"] = sid, ["MCP-Protocol-Version"] = "2025-06-18" })
        assert.are.equal(200, r1.status)
        assert.are.equal(9, #m1.result.tools)
        assert.is_nil(m1.result.resultType)
        local del = assert(http.request{ method = "DELETE", url = url, headers = { ["Mcp-Session-Id"] = sid } })
        assert.are.equal(200, del.status)
        assert.are.equal(404, (post(list, { ["Mcp-Session-Id"] = sid })).status)
    end)

    it("streams progress as SSE when the request has a progress token", function()
        local body = { jsonrpc = "2.0", id = 9, method = "tools/call",
                       params = { name = "slow", arguments = {}, _meta = meta() } }
        body.params._meta.progressToken = "tok"
        local res = post(body, { ["MCP-Protocol-Version"] = MODERN, ["Mcp-Method"] = "tools/call", ["Mcp-Name"] = "slow" })
        assert.are.equal(200, res.status)
        assert.matches("text/event%-stream", res.headers["content-type"])
        local events = {}
        for data in res.body:gmatch("data: ([^\n]*)\n") do events[#events + 1] = json.decode(data) end
        assert.are.equal(5, #events)
        assert.are.equal("notifications/progress", events[1].method)
        assert.are.equal("tok", events[1].params.progressToken)
        assert.are.equal(9, events[5].id)
        assert.are.equal("slept", events[5].result.content[1].text)
    end)

    it("keeps a subscriptions/listen stream and delivers list_changed on it", function()
        local c = assert(mcp.connect{ url = url })
        finally(function() c:close() end)
        local got = {}
        local sub = assert(c:listen({ tools = true, prompts = true }, function(method, params)
            got[#got + 1] = { method = method, params = params }
        end))
        assert.is_true(sub.acknowledged.toolsListChanged)
        assert.is_true(sub.acknowledged.promptsListChanged)
        assert(c:call_tool("add_tool", { name = "late" }))
        assert.is_true(helpers.eventually(function() return #got > 0 end, 2))
        assert.are.equal("notifications/tools/list_changed", got[1].method)
        sub:close()
    end)
end)


describe("the MCP server on malformed requests", function()
    it("answers 3,000 random messages without raising, always with JSON-RPC", function()
        local srv = dofile(FIXTURE)
        math.randomseed(7)
        local methods = { "initialize", "ping", "server/discover", "tools/list", "tools/call", "resources/list",
            "resources/read", "resources/templates/list", "prompts/list", "prompts/get", "notifications/cancelled",
            "notifications/initialized", "subscriptions/listen", "bogus", 5, false }
        local keys = { "name", "arguments", "uri", "cursor", "_meta", "protocolVersion", "a", "b", "text", 1, 2 }
        local function rnd(depth)
            local r = math.random(depth > 3 and 6 or 10)
            if r == 1 then return math.random(-5, 5) end
            if r == 2 then return ("x"):rep(math.random(0, 5)) end
            if r == 3 then return json.null end
            if r == 4 then return math.random() < 0.5 end
            if r == 5 then return 1 / 0 end
            if r == 6 then return ({ "add", "echo", "fail", "greet", "mem://greeting", "note://a/b" })[math.random(6)] end
            local t = {}
            for _ = 1, math.random(0, 4) do t[keys[math.random(#keys)]] = rnd(depth + 1) end
            if math.random() < 0.3 then
                t._meta = { ["io.modelcontextprotocol/protocolVersion"] = math.random() < 0.7 and MODERN or rnd(depth + 1),
                            progressToken = rnd(depth + 1) }
            end
            return t
        end
        for i = 1, 3000 do
            local msg = { jsonrpc = math.random() < 0.9 and "2.0" or rnd(2), id = math.random() < 0.8 and i or nil,
                          method = methods[math.random(#methods)], params = rnd(0) }
            local sess = { send = function() return true end, running = {} }
            if math.random() < 0.5 then sess.era, sess.version = "legacy", LEGACY end
            local ok, r = pcall(srv.handle, srv, msg, sess)
            assert.is_true(ok, tostring(r))
            if r ~= nil then
                assert.are.equal("2.0", r.jsonrpc)
                assert.is_true(r.result ~= nil or type(r.error) == "table")
                assert.is_string(json.encode(r))
            end
        end
    end)
end)


describe("protocol negotiation", function()
    local function fake(handler)
        local s = assert(server.listen{ port = 0, routes = { ["POST /mcp"] = handler } })
        return s, "http://127.0.0.1:" .. s.port .. "/mcp"
    end

    it("reports no common version with a modern server", function()
        local s, url = fake(function(req)
            local m = req:json()
            return { status = 400, body = { jsonrpc = "2.0", id = m.id, error = { code = -32022,
                message = "Unsupported protocol version", data = { supported = { "2099-01-01" }, requested = MODERN } } } }
        end)
        finally(function() s:close() end)
        local c, err = mcp.connect{ url = url }
        assert.is_nil(c)
        assert.are.equal("version", err.kind)
        assert.matches('"2099%-01%-01"', err.message)
        assert.matches("2026%-07%-28", err.message)
    end)

    it("reports no common version with a legacy server", function()
        local s, url = fake(function(req)
            local m = req:json()
            if m.method ~= "initialize" then
                return { status = 400, body = { jsonrpc = "2.0", id = json.null, error = { code = -32000, message = "Bad Request: Server not initialized" } } }
            end
            return { jsonrpc = "2.0", id = m.id, result = { protocolVersion = "2024-11-05", capabilities = {},
                                                            serverInfo = { name = "old", version = "0" } } }
        end)
        finally(function() s:close() end)
        local c, err = mcp.connect{ url = url }
        assert.is_nil(c)
        assert.are.equal("version", err.kind)
        assert.matches("2024%-11%-05", err.message)
        local c2, err2 = mcp.connect{ url = url, protocol = MODERN }
        assert.is_nil(c2)
        assert.are.equal("version", err2.kind)
        assert.matches("does not speak 2026%-07%-28", err2.message)
    end)

    it("retries with a version the server offers", function()
        local seen = {}
        local s, url = fake(function(req)
            local m = req:json()
            local v = m.params._meta["io.modelcontextprotocol/protocolVersion"]
            seen[#seen + 1] = v
            if v ~= MODERN then
                return { status = 400, body = { jsonrpc = "2.0", id = m.id, error = { code = -32022,
                    message = "Unsupported protocol version", data = { supported = { MODERN }, requested = v } } } }
            end
            return { jsonrpc = "2.0", id = m.id, result = { resultType = "complete", supportedVersions = { MODERN },
                capabilities = { tools = {} }, ttlMs = 0, cacheScope = "public" } }
        end)
        finally(function() s:close() end)
        local c = assert(mcp.connect{ url = url, protocol = "auto" })
        assert.are.equal(MODERN, c.protocol_version)
        assert.are.same({ MODERN }, seen)
        c:close()
    end)
end)


describe("the client's checks on results", function()
    it("refuses structuredContent that breaks the tool's outputSchema", function()
        local s = assert(server.listen{ port = 0, routes = { ["POST /mcp"] = function(req)
            local m = req:json()
            local result
            if m.method == "server/discover" then
                result = { supportedVersions = { MODERN }, capabilities = { tools = {} }, ttlMs = 0, cacheScope = "public" }
            elseif m.method == "tools/list" then
                result = { tools = { { name = "count", inputSchema = { type = "object" },
                    outputSchema = { type = "object", properties = { n = { type = "integer" } }, required = { "n" } } } },
                    ttlMs = 0, cacheScope = "public" }
            else
                result = { content = { { type = "text", text = "{}" } }, structuredContent = { n = "many" } }
            end
            result.resultType = "complete"
            return { jsonrpc = "2.0", id = m.id, result = result }
        end } })
        finally(function() s:close() end)
        local c = assert(mcp.connect{ url = "http://127.0.0.1:" .. s.port .. "/mcp" })
        assert.are.equal(1, #assert(c:list_tools()))
        local r, err = c:call_tool("count", {})
        assert.is_nil(r)
        assert.are.equal("parse", err.kind)
        assert.matches("does not match the tool's outputSchema: %$%.n: expected integer", err.message)
        c:close()
    end)
end)


describe("mcp.tools", function()
    it("lets an agent answer with a tool that lives in an MCP server", function()
        local c = assert(stdio_client())
        finally(function() c:close() end)
        local tools = assert(mcp.tools(c, { only = { "add", "fail" } }))
        assert.are.equal(2, #tools)
        local m = llm.mock{ replies = {
            { tool_calls = { { id = "c1", name = "add", arguments = { a = 19, b = 23 } },
                             { id = "c2", name = "fail", arguments = {} } } },
            function(req)
                local out = {}
                for _, msg in ipairs(req.messages) do
                    if msg.role == "tool" then
                        out[#out + 1] = type(msg.content) == "string" and msg.content or json.encode(msg.content)
                    end
                end
                return "tools said: " .. table.concat(out, " | ")
            end,
        } }
        local a = agent.new{ llm = m, tools = tools }
        local r = assert(a:run("What is 19 + 23?"))
        assert.matches('"sum":42', r.content)
        assert.matches("boom", r.content)
    end)
end)


describe("interop with the official MCP TypeScript SDK", function()
    local root, why = node.setup()

    it("sibyl's client talks to the SDK's server over stdio (falls back to 2025-11-25)", function()
        if not root then pending(why) return end
        local argv = node.argv("mcp_server.mjs")
        local c = assert(mcp.connect{ command = argv, env = node.env(), probe_timeout = 5 })
        finally(function() c:close() end)
        assert.are.equal("legacy", c.era)
        assert.are.equal(LEGACY, c.protocol_version)
        local names = {}
        for _, t in ipairs(assert(c:list_tools())) do names[t.name] = true end
        assert.is_true(names.add and names.echo and names.fail)
        local r = assert(c:call_tool("add", { a = 2, b = 3 }))
        assert.are.equal("5", r.content[1].text)
        assert.is_true(assert(c:call_tool("fail", {})).isError)
        assert.are.equal("hello from node", assert(c:read_resource("mem://greeting")).contents[1].text)
        assert.matches("Ann", assert(c:get_prompt("greet", { name = "Ann" })).messages[1].content.text)
        local seen = {}
        assert(c:call_tool("slow", { ms = 60 }, { on_progress = function(p) seen[#seen + 1] = p end }))
        assert.is_true(#seen > 0)
    end)

    it("sibyl's client talks to the SDK's server over Streamable HTTP", function()
        if not root then pending(why) return end
        local srv = assert(node.start("mcp_server.mjs", { "--http", "0" }))
        finally(function() srv:kill() end)
        local port = assert(srv:wait_line("^listening (%d+)$", 10))
        local c = assert(mcp.connect{ url = "http://127.0.0.1:" .. port .. "/mcp" })
        assert.are.equal("legacy", c.era)
        assert.are.equal(LEGACY, c.protocol_version)
        assert.are.equal("5", assert(c:call_tool("add", { a = 2, b = 3 })).content[1].text)
        assert.are.equal("hello from node", assert(c:read_resource("mem://greeting")).contents[1].text)
        c:close()
    end)

    it("the SDK's client talks to `sibyl mcp serve` over stdio", function()
        if not root then pending(why) return end
        local out, code, err = node.run("mcp_client.mjs", { "stdio", SIBYL, "mcp", "serve", FIXTURE }, { timeout = 30 })
        assert.are.equal(0, code, tostring(err) .. out)
        local r = json.decode(out:match("[^\n]+"))
        assert.are.equal(LEGACY, r.protocolVersion)
        assert.are.equal("fixture", r.serverInfo.name)
        assert.are.equal(5, r.add.structuredContent.sum)
        assert.is_true(r.fail.isError)
        assert.are.equal("hello from sibyl", r.resource.contents[1].text)
    end)

    it("the SDK's client talks to `sibyl mcp serve --http`", function()
        if not root then pending(why) return end
        local p = assert(process.spawn{ SIBYL, "mcp", "serve", FIXTURE, "--http", "0" })
        finally(function() p:close() end)
        local port = assert(p:read_line()):match("^listening (%d+)$")
        local out, code, err = node.run("mcp_client.mjs", { "http", "http://127.0.0.1:" .. port .. "/mcp" }, { timeout = 30 })
        assert.are.equal(0, code, tostring(err) .. out)
        local r = json.decode(out:match("[^\n]+"))
        assert.are.equal(LEGACY, r.protocolVersion)
        assert.are.equal(5, r.add.structuredContent.sum)
        assert.are.equal("hello from sibyl", r.resource.contents[1].text)
    end)
end)
