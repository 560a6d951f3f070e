-- 26-service_spec.lua -- sibyl.service (stdlib/sibyl/service.lua): agents
-- served as an OpenAI-compatible API. Replies are checked strictly against
-- OpenAI's chat.completion / chat.completion.chunk shapes (every field, its
-- type, nothing extra); errors against {"error": {message, type, param,
-- code}}. Also: `sibyl serve scripts/rag_service.lua` as a subprocess, and
-- the official Node `openai` client when Node is there (tests/fixtures/node.lua).
--
-- Models are llm.mock (offline, tokens are words); nothing leaves 127.0.0.1.

local sibyl = require "sibyl"
local http = require "sibyl.http"
local json = require "sibyl.json"
local llm = require "sibyl.llm"
local agent = require "sibyl.agent"
local server = require "sibyl.server"
local service = require "sibyl.service"
local helpers = require "helpers"

local null = json.null
local USER_HI = { { role = "user", content = "hi" } }


-- Start a service on a free port (no keys unless given, no access log
-- unless given); closed when the test ends. Returns base url, service, server.
local function start(opts)
    opts.port = 0
    if opts.keys == nil and opts.keys_env == nil then opts.keys = {} end
    if opts.access_log == nil then opts.access_log = false end
    local srv, svc = assert(service.listen(opts))
    finally(function() srv:close() end)
    return "http://127.0.0.1:" .. srv.port, svc, srv
end


local function chat(base, body, headers)
    return assert(http.post(base .. "/v1/chat/completions", type(body) == "string" and body or json.encode(body),
        { headers = headers or { ["Content-Type"] = "application/json" } }))
end


local function sorted_keys(t)
    local ks = {}
    for k in pairs(t) do ks[#ks + 1] = k end
    table.sort(ks)
    return ks
end


local function is_int(v) return type(v) == "number" and v % 1 == 0 and v >= 0 end


-- A usage object: three integers that add up.
local function check_usage(u)
    assert.are.same({ "completion_tokens", "prompt_tokens", "total_tokens" }, sorted_keys(u))
    assert.is_true(is_int(u.prompt_tokens) and is_int(u.completion_tokens))
    assert.are.equal(u.prompt_tokens + u.completion_tokens, u.total_tokens)
end


-- A chat.completion, strictly; returns its content.
local function check_completion(body, model, finish)
    assert.are.same({ "choices", "created", "id", "model", "object", "system_fingerprint", "usage" }, sorted_keys(body))
    assert.matches("^chatcmpl%-[%w]+$", body.id)
    assert.are.equal("chat.completion", body.object)
    assert.is_true(is_int(body.created) and math.abs(body.created - os.time()) < 60)
    assert.are.equal(model, body.model)
    assert.are.equal(null, body.system_fingerprint)
    assert.are.equal(1, #body.choices)
    local c = body.choices[1]
    assert.are.same({ "finish_reason", "index", "logprobs", "message" }, sorted_keys(c))
    assert.are.equal(0, c.index)
    assert.are.equal(null, c.logprobs)
    assert.are.equal(finish or "stop", c.finish_reason)
    assert.are.same({ "content", "refusal", "role" }, sorted_keys(c.message))
    assert.are.equal("assistant", c.message.role)
    assert.are.equal(null, c.message.refusal)
    assert.are.equal("string", type(c.message.content))
    check_usage(body.usage)
    return c.message.content
end


-- An OpenAI error body, strictly.
local function check_error(res, status, code)
    assert.are.equal(status, res.status, res.body)
    assert.matches("^application/json", res.headers["content-type"])
    local body = assert(json.decode(res.body))
    assert.are.same({ "error" }, sorted_keys(body))
    assert.are.same({ "code", "message", "param", "type" }, sorted_keys(body.error))
    assert.are.equal("string", type(body.error.message))
    assert.are.equal("string", type(body.error.type))
    if code == nil then
        assert.are.equal(null, body.error.code)
    else
        assert.are.equal(code, body.error.code)
    end
    return body.error
end


-- Parse an SSE body strictly: every event is exactly one `data:` line; the
-- chunks have the exact shape; one role delta first; then content deltas;
-- one finish chunk; a usage chunk when asked; `[DONE]` last. Returns the
-- concatenated text, the finish reason, the usage (or nil), the chunks.
local function check_stream(res, model, include_usage, finish)
    assert.are.equal(200, res.status, res.body)
    assert.are.equal("text/event-stream", res.headers["content-type"])
    local body = res.body
    assert.are.equal("\n\n", body:sub(-2))
    local events = {}
    for ev in body:gmatch("(.-)\n\n") do events[#events + 1] = ev end
    assert.are.equal("data: [DONE]", events[#events])
    local chunks = {}
    for i = 1, #events - 1 do
        local data = events[i]:match("^data: ([^\n]+)$")
        assert(data, "not a single data line: " .. events[i])
        chunks[i] = assert(json.decode(data))
    end
    local id, created = chunks[1].id, chunks[1].created
    local text, finish_reason, usage, finish_at = {}, nil, nil, nil
    for i, c in ipairs(chunks) do
        local want = { "choices", "created", "id", "model", "object", "system_fingerprint" }
        if include_usage then want[#want + 1] = "usage" ; table.sort(want) end
        assert.are.same(want, sorted_keys(c))
        assert.matches("^chatcmpl%-[%w]+$", c.id)
        assert.are.equal(id, c.id)
        assert.are.equal(created, c.created)
        assert.are.equal("chat.completion.chunk", c.object)
        assert.are.equal(model, c.model)
        assert.are.equal(null, c.system_fingerprint)
        if include_usage and i == #chunks then            -- the usage chunk
            assert.are.equal(0, #c.choices)
            assert.matches('"choices":%[%]', events[i])    -- an array, not {}
            check_usage(c.usage)
            usage = c.usage
        else
            if include_usage then assert.are.equal(null, c.usage) end
            assert.are.equal(1, #c.choices)
            local ch = c.choices[1]
            assert.are.same({ "delta", "finish_reason", "index", "logprobs" }, sorted_keys(ch))
            assert.are.equal(0, ch.index)
            assert.are.equal(null, ch.logprobs)
            if i == 1 then
                assert.are.same({ role = "assistant", content = "" }, ch.delta)
                assert.are.equal(null, ch.finish_reason)
            elseif ch.finish_reason ~= null then
                assert.is_nil(finish_at, "two finish chunks")
                finish_at, finish_reason = i, ch.finish_reason
                assert.are.same({}, ch.delta)
                assert.matches('"delta":{}', events[i])
            else
                assert.is_nil(finish_at, "content after the finish chunk")
                assert.are.same({ "content" }, sorted_keys(ch.delta))
                assert.are.equal("string", type(ch.delta.content))
                text[#text + 1] = ch.delta.content
            end
        end
    end
    assert.are.equal(include_usage and #chunks - 1 or #chunks, finish_at)
    assert.are.equal(finish or "stop", finish_reason)
    return table.concat(text), finish_reason, usage, chunks
end


-- A mock model that answers with the words of its reply (tokens are words).
local function answering(text, delay)
    return llm.mock{ default = function() return { content = text, delay = delay } end }
end


describe("sibyl.service chat completions", function()

    it("answers non-streaming and streaming requests in OpenAI's exact shapes, same text", function()
        local m = answering("Sibyl is a Lua-scriptable agent runtime.")
        local base = start{ agents = { helper = agent.new{ llm = m, system = "Be brief." } } }
        local res = chat(base, { model = "helper", messages = USER_HI })
        assert.matches("^application/json", res.headers["content-type"])
        local body = assert(json.decode(res.body))
        local content = check_completion(body, "helper")
        assert.are.equal("Sibyl is a Lua-scriptable agent runtime.", content)
        assert.are.same({ prompt_tokens = 1, completion_tokens = 6, total_tokens = 7 }, body.usage)

        local text, _, usage, chunks = check_stream(chat(base, { model = "helper", messages = USER_HI, stream = true,
            stream_options = { include_usage = true } }), "helper", true)
        assert.are.equal(content, text)
        assert.is_true(#chunks >= 5, "a few deltas, got " .. #chunks)     -- role, words, finish, usage
        assert.are.same(body.usage, usage)

        text = check_stream(chat(base, { model = "helper", messages = USER_HI, stream = true }), "helper", false)
        assert.are.equal(content, text)
        -- every request had its own memory: the model saw one message each time
        assert.are.equal(3, #m.requests)
        for _, r in ipairs(m.requests) do assert.are.equal(1, #r.messages) end
    end)

    it("serves a function agent, its ctx.stream deltas, and {content, usage} replies", function()
        local seen
        local base = start{ model = "echo", agent = function(messages, ctx)
            seen = { messages = messages, ctx = ctx }
            local words = {}
            for w in messages[#messages].content:gmatch("%S+") do words[#words + 1] = w end
            for i, w in ipairs(words) do ctx.stream(w .. (i < #words and " " or "")) end
            return { content = table.concat(words, " "), usage = { input = 7, output = #words } }
        end }
        local body = json.decode(chat(base, { messages = { { role = "user", content = "one two  three" } },
                                              temperature = 0.5, max_tokens = 9 }).body)
        assert.are.equal("one two three", check_completion(body, "echo"))  -- model omitted: the only one
        assert.are.same({ prompt_tokens = 7, completion_tokens = 3, total_tokens = 10 }, body.usage)
        assert.are.equal(0.5, seen.ctx.temperature)
        assert.are.equal(9, seen.ctx.max_tokens)
        assert.is_false(seen.ctx.streaming)
        local text = check_stream(chat(base, { model = "echo", stream = true,
            messages = { { role = "user", content = { { type = "text", text = "one two" }, { type = "text", text = "three" } } } } }),
            "echo")
        assert.are.equal("one two three", text)
        assert.is_true(seen.ctx.streaming)
    end)

    it("runs the agent's tools through the endpoint", function()
        local ran = {}
        local m = llm.mock{ default = function(req)
            local last = req.messages[#req.messages]
            if last.role == "tool" then
                return "The sum is " .. tostring(last.content.sum) .. "."
            end
            return { tool_calls = { { id = "c1", name = "add", arguments = { a = 2, b = 3 } } } }
        end }
        local a = agent.new{ llm = m, tools = { {
            name = "add", description = "Add two numbers",
            parameters = { type = "object", properties = { a = { type = "number" }, b = { type = "number" } },
                           required = { "a", "b" } },
            fn = function(args) ran[#ran + 1] = args; return { sum = args.a + args.b } end,
        } } }
        local base = start{ agents = { calc = a } }
        local body = json.decode(chat(base, { model = "calc", messages = { { role = "user", content = "2+3?" } } }).body)
        assert.are.equal("The sum is 5.", check_completion(body, "calc"))
        assert.are.same({ { a = 2, b = 3 } }, ran)
        local text = check_stream(chat(base, { model = "calc", stream = true,
            messages = { { role = "user", content = "2+3?" } } }), "calc")
        assert.are.equal("The sum is 5.", text)
        assert.are.equal(2, #ran)
        assert.are.equal(0, #a.messages)                 -- the served prototype never gets a memory
    end)

    it("passes the request's history and system messages to the model", function()
        local m = answering("Your name is Ann.")
        local base = start{ agents = { helper = agent.new{ llm = m, system = "You are Sibyl." } } }
        local res = chat(base, { model = "helper", messages = {
            { role = "system", content = "Answer in one sentence." },
            { role = "user", content = "My name is Ann." },
            { role = "assistant", content = "Hello Ann." },
            { role = "user", content = "What is my name?" },
        } })
        check_completion(json.decode(res.body), "helper")
        local req = m.requests[1]
        assert.are.equal("You are Sibyl.\n\nAnswer in one sentence.", req.system)
        assert.are.same({ "user", "assistant", "user" }, { req.messages[1].role, req.messages[2].role, req.messages[3].role })
        assert.are.same({ "My name is Ann.", "Hello Ann.", "What is my name?" },
                        { req.messages[1].content, req.messages[2].content, req.messages[3].content })
    end)

    it("runs concurrent requests concurrently", function()
        local base = start{ agents = { slow = agent.new{ llm = answering("done", 0.2) } } }
        local fns = {}
        for i = 1, 20 do
            fns[i] = function()
                return chat(base, { model = "slow", messages = { { role = "user", content = "n" .. i } } })
            end
        end
        local secs, replies = helpers.timed(sibyl.gather, fns)
        for _, res in ipairs(replies) do
            assert.are.equal("done", check_completion(json.decode(res.body), "slow"))
        end
        assert.is_true(secs < 1.5, "20 x 0.2 s took " .. secs .. " s")
    end)

    it("logs one line per request", function()
        local log = {}
        local base = start{ agent = function() return "ok" end, access_log = function(e) log[#log + 1] = e end,
                            routes = { ["GET /hello"] = function() return { hi = true } end } }
        chat(base, { messages = USER_HI })
        http.get(base .. "/hello")
        assert.are.equal(2, #log)
        assert.are.same({ "127.0.0.1", "POST", "/v1/chat/completions", 200, "sibyl", false },
                        { log[1].remote, log[1].method, log[1].path, log[1].status, log[1].model, log[1].stream })
        assert.is_true(log[1].bytes > 100 and log[1].ms >= 0)
        assert.are.same({ "GET", "/hello", 200, #'{"hi":true}' }, { log[2].method, log[2].path, log[2].status, log[2].bytes })
    end)
end)


describe("sibyl.service errors", function()

    it("requires a key when keys are set (constant-time compare), except on /healthz", function()
        local base = start{ agent = function() return "ok" end, keys = { "k-one", "k-two" },
                            routes = { ["GET /mine"] = function() return "mine" end } }
        local res = chat(base, { messages = USER_HI })
        local e = check_error(res, 401, "invalid_api_key")
        assert.are.equal("invalid_request_error", e.type)
        assert.are.equal("Bearer", res.headers["www-authenticate"])
        check_error(chat(base, { messages = USER_HI }, { Authorization = "Bearer k-one-x" }), 401, "invalid_api_key")
        check_error(chat(base, { messages = USER_HI }, { Authorization = "Bearer k-on" }), 401, "invalid_api_key")
        check_error(chat(base, { messages = USER_HI }, { Authorization = "Basic k-two" }), 401, "invalid_api_key")
        res = chat(base, { messages = USER_HI }, { Authorization = "Bearer k-two" })
        assert.are.equal("ok", check_completion(json.decode(res.body), "sibyl"))
        check_error(http.get(base .. "/v1/models"), 401, "invalid_api_key")
        check_error(http.get(base .. "/mine"), 401, "invalid_api_key")
        assert.are.equal("mine", http.get(base .. "/mine", { headers = { Authorization = "Bearer k-one" } }).body)
        res = http.get(base .. "/healthz")
        assert.are.equal(200, res.status)
        assert.are.same({ status = "ok", agents = 1, inflight = 0 }, res:json())
    end)

    it("reads the keys from SIBYL_API_KEYS-style variables", function()
        local base = start{ agent = function() return "ok" end, keys_env = "PATH" }
        -- $PATH is no key anyone sends: everything but /healthz is refused
        check_error(chat(base, { messages = USER_HI }, { Authorization = "Bearer nope" }), 401, "invalid_api_key")
    end)

    it("answers 400, 404, 405 and 413 in the OpenAI error shape", function()
        local base = start{ agents = { a = function() return "a" end, b = function() return "b" end },
                            max_body = 1024, max_messages = 3, max_content = 100 }
        check_error(chat(base, "{not json"), 400)
        check_error(chat(base, "[1, 2]"), 400)
        assert.are.equal("messages", check_error(chat(base, { model = "a" }), 400).param)
        check_error(chat(base, { model = "a", messages = {} }), 400)
        check_error(chat(base, { model = "a", messages = { { role = "wizard", content = "x" } } }), 400)
        check_error(chat(base, { model = "a", messages = { { role = "user", content = 5 } } }), 400)
        check_error(chat(base, { model = "a", messages = { { role = "assistant", content = "x" } } }), 400)
        check_error(chat(base, { model = "a", messages = { { role = "user", content = { { type = "image_url" } } } } }), 400)
        check_error(chat(base, { model = "a", messages = { { role = "user", content = ("x"):rep(101) } } }), 400)
        check_error(chat(base, { model = "a", messages = { USER_HI[1], USER_HI[1], USER_HI[1], USER_HI[1] } }), 400)
        check_error(chat(base, { model = "a", messages = USER_HI, stream = "yes" }), 400)
        check_error(chat(base, { messages = USER_HI }), 400)          -- two models: name one
        local e = check_error(chat(base, { model = "gpt-9", messages = USER_HI }), 404, "model_not_found")
        assert.are.equal("model", e.param)
        check_error(http.get(base .. "/v1/nope"), 404, "not_found")
        check_error(http.get(base .. "/v1/chat/completions"), 405, "method_not_allowed")
        -- over max_body: a JSON 413; far over (past hard_max_body) evhttp's own 413
        check_error(chat(base, { model = "a", messages = { { role = "user", content = ("x"):rep(2000) } } }), 413,
                    "request_too_large")
        local res = http.post(base .. "/v1/chat/completions", ("x"):rep(200000))
        assert.are.equal(413, res and res.status)
        -- and the service still answers
        assert.are.equal("a", check_completion(json.decode(chat(base, { model = "a", messages = USER_HI }).body), "a"))
    end)

    it("maps agent failures to statuses, and fails a started stream with an error event", function()
        local base = start{ timeout = 0.2, agents = {
            limited = function() return nil, sibyl.error("rate_limited", "upstream: slow down", { retry_after = 3 }) end,
            slow = function() local ok, err = sibyl.sleep(5); return ok and "late" or nil, err end,
            broken = function() error("boom") end,
            midway = function(_, ctx)
                ctx.stream("partial ")
                return nil, sibyl.error("http", "upstream: 502 bad gateway")
            end,
            steps = agent.new{ llm = llm.mock{ default = { content = "thinking", tool_calls = { { name = "t" } } } },
                               max_steps = 2, tools = { { name = "t", fn = function() return "x" end } } },
            nosteps = agent.new{ llm = llm.mock{ default = { tool_calls = { { name = "t" } } } },
                                 max_steps = 2, tools = { { name = "t", fn = function() return "x" end } } },
        }, on_error = function() end }
        local res = chat(base, { model = "limited", messages = USER_HI })
        check_error(res, 429, "rate_limit_exceeded")
        assert.are.equal("3", res.headers["retry-after"])
        local secs, r = helpers.timed(chat, base, { model = "slow", messages = USER_HI })
        check_error(r, 504, "timeout")
        assert.is_true(secs < 1, "timed out after " .. secs)
        local e = check_error(chat(base, { model = "broken", messages = USER_HI }), 500, "agent_error")
        assert.is_nil(e.message:find("boom", 1, true))                  -- the details stay in the log
        check_error(chat(base, { model = "midway", messages = USER_HI }), 502, "upstream_error")
        -- the stream had started: it ends with data: {"error": ...} and no [DONE]
        res = chat(base, { model = "midway", messages = USER_HI, stream = true })
        assert.are.equal(200, res.status)
        local events = {}
        for ev in res.body:gmatch("(.-)\n\n") do events[#events + 1] = ev end
        assert.are.equal(3, #events)
        assert.are.equal("partial ", json.decode(events[2]:sub(7)).choices[1].delta.content)
        local last = assert(json.decode(events[3]:match("^data: (.*)$")))
        assert.are.same({ "error" }, sorted_keys(last))
        assert.are.equal("upstream_error", last.error.code)
        -- out of steps: partial text comes back cut short; without text, a 500
        local body = json.decode(chat(base, { model = "steps", messages = USER_HI }).body)
        assert.are.equal("thinking", check_completion(body, "steps", "length"))
        check_error(chat(base, { model = "nosteps", messages = USER_HI }), 500, "max_steps")
    end)
end)


describe("sibyl.service models and health", function()

    it("lists the models and reports health", function()
        local base, svc, srv = start{ agents = { b = function() return "" end, a = function() return "" end } }
        local res = http.get(base .. "/v1/models")
        assert.are.equal(200, res.status)
        local body = res:json()
        assert.are.same({ "data", "object" }, sorted_keys(body))
        assert.are.equal("list", body.object)
        assert.are.equal(2, #body.data)
        for i, name in ipairs{ "a", "b" } do
            local m = body.data[i]
            assert.are.same({ "created", "id", "object", "owned_by" }, sorted_keys(m))
            assert.are.same({ name, "model", "sibyl" }, { m.id, m.object, m.owned_by })
            assert.is_true(is_int(m.created))
        end
        assert.are.same({ status = "ok", agents = 2, inflight = 0 }, http.get(base .. "/healthz"):json())
        assert.are.equal(srv, svc.server)
    end)

    it("refuses bad options at once", function()
        assert.has_error(function() service.new{} end)
        assert.has_error(function() service.new{ agents = { x = 42 } } end)
        assert.has_error(function() service.new{ agent = function() end, max_body = -1 } end)
        assert.has_error(function() service.new{ agent = function() end, access_log = "yes" } end)
        assert.has_error(function() service.new{ agent = function() end, keys = { "" } } end)
    end)
end)


describe("sibyl serve scripts/rag_service.lua", function()

    -- A free port: listen on 0, note it, close.
    local function free_port()
        local probe = assert(server.listen{ port = 0, routes = { ["/"] = function() return "" end } })
        local port = probe.port
        probe:close()
        return port
    end

    -- Start `sibyl serve` in the background; returns the base url, the pid
    -- and the log path. Killed (TERM, then KILL) when the test ends.
    local function serve(env)
        local port = free_port()
        local log = os.tmpname()
        local index = os.tmpname() .. ".db"
        local p = assert(io.popen("env SIBYL_DOCS=tests/fixtures/rag/docs SIBYL_INDEX=" .. index .. " " .. (env or "")
            .. " " .. helpers.shell_quote(helpers.sibyl_bin) .. " serve scripts/rag_service.lua --port " .. port
            .. " >" .. log .. " 2>&1 & echo $!"))
        local pid = assert(tonumber(p:read("*l")))
        p:close()
        finally(function()
            os.execute("kill -TERM " .. pid .. " 2>/dev/null")
            for _ = 1, 40 do
                local rc = os.execute("kill -0 " .. pid .. " 2>/dev/null")
                if rc ~= 0 and rc ~= true then break end
                sibyl.sleep(0.05)
            end
            os.execute("kill -KILL " .. pid .. " 2>/dev/null")
            os.remove(log)
            os.remove(index)
        end)
        local base = "http://127.0.0.1:" .. port
        local up = helpers.eventually(function() return http.get(base .. "/healthz", { timeout = 0.5 }) end, 5)
        assert(up, "sibyl serve did not come up")
        return base, pid, log
    end

    it("serves the RAG index offline: extractive answers with citations, streamed alike", function()
        local base, _, log = serve()
        assert.are.same({ status = "ok", agents = 1, inflight = 0 }, http.get(base .. "/healthz"):json())
        local q = { model = "rag", messages = { { role = "user", content = "How are API keys rotated after a 429?" } } }
        local content = check_completion(json.decode(chat(base, q).body), "rag")
        assert.matches("^Extractive answer", content)
        assert.matches("%[1%]", content)
        assert.matches("\nSources:\n%[1%] tests/fixtures/rag/docs/", content)
        q.stream, q.stream_options = true, { include_usage = true }
        local text, _, _, chunks = check_stream(chat(base, q), "rag", true)
        assert.are.equal(content, text)
        assert.is_true(#chunks >= 5, "streamed in a few deltas")
        local f = assert(io.open(log, "rb"))
        local out = f:read("*a")
        f:close()
        assert.matches('127%.0%.0%.1 "POST /v1/chat/completions" 200 %d+B [%d.]+ms model=rag stream=true', out)
    end)

    it("checks keys from the environment", function()
        local base = serve("SIBYL_API_KEYS=sk-a,sk-b")
        check_error(chat(base, { model = "rag", messages = USER_HI }), 401, "invalid_api_key")
        local res = chat(base, { model = "rag", messages = USER_HI }, { Authorization = "Bearer sk-b" })
        check_completion(json.decode(res.body), "rag")
    end)
end)


describe("the official Node openai client", function()

    it("talks to the service, streaming and not", function()
        local ok, node = pcall(require, "node")          -- tests/fixtures/node.lua
        if not ok then
            pending("tests/fixtures/node.lua is missing: " .. tostring(node))
            return
        end
        local root, why = node.setup()
        if not root then
            pending(why)
            return
        end
        local m = answering("Sibyl is an agent runtime.")
        local base = start{ agents = { helper = agent.new{ llm = m } }, keys = { "sk-node" } }
        -- node.run would block this process's loop, and with it the service:
        -- run the client in the background and poll until it exits.
        local function client(...)
            local p = assert(node.start("openai_chat.mjs", { base .. "/v1", ... }))
            finally(function() p:kill() end)
            assert(helpers.eventually(function() return not p:alive() end, 20), "the node client hangs")
            local out = p:stdout()
            return assert(json.decode(out:match("[^\n]+") or ""), out .. p:stderr())
        end
        local r = client("sk-node", "helper")
        assert.is_nil(r.error, json.encode(r))
        check_completion(r.nonstream, "helper")
        assert.are.equal("Sibyl is an agent runtime.", r.nonstream.choices[1].message.content)
        assert.are.equal("Sibyl is an agent runtime.", r.stream.text)
        assert.are.equal("stop", r.stream.finish_reason)
        assert.are.equal("helper", r.stream.model)
        check_usage(r.stream.usage)
        -- errors reach the client as APIError with status and code
        local e = client("sk-wrong", "helper", "--expect-error").error
        assert.are.same({ 401, "invalid_api_key" }, { e.status, e.code })
        e = client("sk-node", "nope", "--expect-error").error
        assert.are.same({ 404, "model_not_found" }, { e.status, e.code })
    end)
end)
