-- 08-fixtures_spec.lua -- the LLM fixture server (tests/fixtures/llm_server.lua)
-- checked through sibyl.http: the OpenAI and Anthropic wire formats, JSON
-- and SSE, embeddings, models, scripted replies, recorded requests and every
-- fault mode as the client sees it. Later provider and agent specs rely on
-- these formats being right.

local sibyl = require "sibyl"
local http = require "sibyl.http"
local json = require "sibyl.json"
local sse = require "sibyl.sse"
local server = require "sibyl.server"
local ffi = require "ffi"
local helpers = require "helpers"
local fixture = require "llm_server"

local ANTHROPIC = { ["x-api-key"] = "sk-ant-test", ["anthropic-version"] = "2023-06-01" }
local MSGS = { { role = "system", content = "be brief" }, { role = "user", content = "What is the weather?" } }


-- Merge header tables (later ones win).
local function headers(...)
    local out = {}
    for i = 1, select("#", ...) do
        for k, v in pairs(select(i, ...) or {}) do out[k] = v end
    end
    return out
end


-- POST a JSON body and decode the JSON reply. Returns res, decoded.
local function post_json(url, body, hdrs, opts)
    local o = { url = url, method = "POST", body = body, headers = hdrs }
    for k, v in pairs(opts or {}) do o[k] = v end
    local res, err = http.request(o)
    assert(res, tostring(err))
    return res, assert(res:json())
end


-- POST and read the reply as Server-Sent Events through the client's
-- streaming callback. Returns res (or nil), err, the events received.
local function post_sse(url, body, hdrs, opts)
    local p = sse.parser()
    local events = {}
    local o = {
        url = url, method = "POST", body = body,
        headers = headers({ Accept = "text/event-stream" }, hdrs),
        stream = function(chunk)
            for _, ev in ipairs(assert(p:feed(chunk))) do events[#events + 1] = ev end
        end,
    }
    for k, v in pairs(opts or {}) do o[k] = v end
    local res, err = http.request(o)
    p:close()
    return res, err, events
end


-- The decoded chat.completion.chunk objects of an OpenAI stream; asserts
-- that [DONE] comes last and only there.
local function openai_chunks(events)
    assert.is_true(#events >= 2, "too few events")
    assert.are.equal("[DONE]", events[#events].data)
    local chunks = {}
    for i = 1, #events - 1 do
        assert.are_not.equal("[DONE]", events[i].data)
        assert.are.equal("message", events[i].event)      -- OpenAI sends data-only events
        chunks[i] = assert(json.decode(events[i].data))
    end
    return chunks
end


-- Reassemble streamed tool calls by index: { [index] = {id=, name=, arguments=, pieces=} }.
local function reassemble_tool_calls(chunks)
    local calls = {}
    for _, c in ipairs(chunks) do
        local delta = c.choices[1] and c.choices[1].delta or {}
        for _, tc in ipairs(delta.tool_calls or {}) do
            local call = calls[tc.index + 1]
            if not call then
                call = { arguments = "", pieces = 0 }
                calls[tc.index + 1] = call
                assert.is_string(tc.id)                     -- id, type and name open each call
                assert.are.equal("function", tc.type)
                call.id, call.name = tc.id, tc["function"].name
            else
                assert.is_nil(tc.id)
            end
            if tc["function"].arguments ~= "" then call.pieces = call.pieces + 1 end
            call.arguments = call.arguments .. tc["function"].arguments
        end
    end
    return calls
end


local function norm(v)
    local s = 0
    for _, x in ipairs(v) do s = s + x * x end
    return math.sqrt(s)
end


local function dot(a, b)
    local s = 0
    for i = 1, #a do s = s + a[i] * b[i] end
    return s
end


local function unbase64(s)
    local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    local out, bits, nbits = {}, 0, 0
    for ch in s:gmatch("[^=]") do
        bits = bits * 64 + (alphabet:find(ch, 1, true) - 1)
        nbits = nbits + 6
        if nbits >= 8 then
            nbits = nbits - 8
            local b = math.floor(bits / 2 ^ nbits)
            out[#out + 1] = string.char(b)
            bits = bits - b * 2 ^ nbits
        end
    end
    return table.concat(out)
end


-- Seconds taken by fn(...), then all its results (nils included).
local function timed(fn, ...)
    local t0 = sibyl.now()
    local r = { n = 0 }
    local function pack(...) r = { n = select("#", ...), ... } end
    pack(fn(...))
    return sibyl.now() - t0, unpack(r, 1, r.n)
end


local function event_types(events)
    local out = {}
    for i, ev in ipairs(events) do out[i] = ev.event end
    return out
end


describe("llm fixture: OpenAI chat completions", function()
    local fx, url

    before_each(function()
        fx = assert(fixture.start{ port = 0 })
        url = fx.base_url .. "/v1/chat/completions"
    end)

    after_each(function()
        fx:close()
    end)

    it("starts on a free loopback port and reports its base_url", function()
        assert.is_true(fx.port > 0)
        assert.are.equal("http://127.0.0.1:" .. fx.port, fx.base_url)
        assert.are.equal(fx.base_url .. "/v1/models", fx:url("/v1/models"))
    end)

    it("answers a non-streaming request with a chat.completion echoing the last message", function()
        local res, c = post_json(url, { model = "gpt-test", messages = MSGS })
        assert.are.equal(200, res.status)
        assert.matches("^application/json", res.headers["content-type"])
        assert.matches("^chatcmpl%-", c.id)
        assert.are.equal("chat.completion", c.object)
        assert.is_number(c.created)
        assert.are.equal("gpt-test", c.model)
        assert.are.equal(1, #c.choices)
        local ch = c.choices[1]
        assert.are.equal(0, ch.index)
        assert.are.equal("assistant", ch.message.role)
        assert.are.equal("echo: What is the weather?", ch.message.content)
        assert.is_nil(ch.message.tool_calls)
        assert.are.equal("stop", ch.finish_reason)
        assert.are.equal(6, c.usage.prompt_tokens)                -- words over all messages
        assert.are.equal(5, c.usage.completion_tokens)
        assert.are.equal(c.usage.prompt_tokens + c.usage.completion_tokens, c.usage.total_tokens)
    end)

    it("records every request: method, path, headers and the decoded JSON body", function()
        fx:script{ content = "ok" }
        post_json(url, { model = "gpt-test", messages = MSGS, temperature = 0.5 },
                  { Authorization = "Bearer sk-test", ["X-Custom"] = "yes" })
        http.get(fx.base_url .. "/v1/models?limit=2")
        assert.are.equal(2, #fx.requests)
        local r = fx.requests[1]
        assert.are.equal("POST", r.method)
        assert.are.equal("/v1/chat/completions", r.path)
        assert.are.equal("Bearer sk-test", r.headers["authorization"])
        assert.are.equal("yes", r.headers["X-Custom"])             -- case-insensitive lookup
        assert.are.equal("gpt-test", r.json.model)
        assert.are.equal(0.5, r.json.temperature)
        assert.are.same(MSGS, r.json.messages)
        assert.is_string(r.body)
        assert.are.equal("GET", fx.requests[2].method)
        assert.are.equal("2", fx.requests[2].query.limit)
        assert.is_nil(fx.requests[2].json)
    end)

    it("consumes scripted replies in order, then falls back to the default", function()
        fx:script({ content = "first" }, { content = "second" })
        assert.are.equal(2, fx:pending())
        local _, a = post_json(url, { model = "m", messages = MSGS })
        local _, b = post_json(url, { model = "m", messages = MSGS })
        local _, c = post_json(url, { model = "m", messages = MSGS })
        assert.are.equal("first", a.choices[1].message.content)
        assert.are.equal("second", b.choices[1].message.content)
        assert.are.equal("echo: What is the weather?", c.choices[1].message.content)
        assert.are.equal(0, fx:pending())
        fx:script{ content = "x" }
        fx:reset()
        assert.are.equal(0, fx:pending())
        assert.are.equal(0, #fx.requests)
    end)

    it("lets a script override model, id, finish_reason and usage", function()
        fx:script{ content = "hi", model = "other", id = "chatcmpl-42", finish_reason = "content_filter",
                   usage = { prompt_tokens = 100 } }
        local _, c = post_json(url, { model = "m", messages = MSGS })
        assert.are.equal("other", c.model)
        assert.are.equal("chatcmpl-42", c.id)
        assert.are.equal("content_filter", c.choices[1].finish_reason)
        assert.are.equal(100, c.usage.prompt_tokens)
    end)

    it("streams chat.completion.chunk deltas: role first, content pieces, finish last, [DONE]", function()
        local text = "The weather in Paris is sunny, 21 degrees."
        fx:script{ content = text }
        local res, err, events = post_sse(url, { model = "m", messages = MSGS, stream = true })
        assert(res, tostring(err))
        assert.are.equal(200, res.status)
        assert.matches("^text/event%-stream", res.headers["content-type"])
        local chunks = openai_chunks(events)
        local content, id = {}, chunks[1].id
        for i, c in ipairs(chunks) do
            assert.are.equal("chat.completion.chunk", c.object)
            assert.are.equal(id, c.id)
            assert.are.equal("m", c.model)
            assert.is_nil(c.usage)                                  -- no include_usage
            local ch = c.choices[1]
            assert.are.equal(0, ch.index)
            if i == 1 then
                assert.are.equal("assistant", ch.delta.role)
            else
                assert.is_nil(ch.delta.role)
            end
            if i == #chunks then
                assert.are.equal("stop", ch.finish_reason)
                assert.are.same({}, ch.delta)
            else
                assert.are.equal(json.null, ch.finish_reason)
            end
            content[#content + 1] = ch.delta.content
        end
        assert.is_true(#chunks >= 9)                                -- one piece per word
        assert.are.equal(text, table.concat(content))
    end)

    it("honours explicit stream pieces", function()
        fx:script{ chunks = { "Hel", "lo", ", wor", "ld" } }
        local _, _, events = post_sse(url, { model = "m", messages = MSGS, stream = true })
        local chunks = openai_chunks(events)
        assert.are.equal(6, #chunks)
        assert.are.same({ "", "Hel", "lo", ", wor", "ld" }, {
            chunks[1].choices[1].delta.content, chunks[2].choices[1].delta.content,
            chunks[3].choices[1].delta.content, chunks[4].choices[1].delta.content,
            chunks[5].choices[1].delta.content })
    end)

    it("adds a usage chunk before [DONE] when stream_options.include_usage is set", function()
        fx:script{ content = "two words" }
        local _, _, events = post_sse(url, { model = "m", messages = MSGS, stream = true,
                                             stream_options = { include_usage = true } })
        local chunks = openai_chunks(events)
        local last = chunks[#chunks]
        assert.are.same({}, last.choices)
        assert.are.same({ prompt_tokens = 6, completion_tokens = 2, total_tokens = 8 }, last.usage)
        for i = 1, #chunks - 1 do
            assert.are.equal(json.null, chunks[i].usage)
        end
        assert.are.equal("stop", chunks[#chunks - 1].choices[1].finish_reason)
    end)

    it("returns parallel tool calls with JSON argument strings", function()
        fx:script{ tool_calls = {
            { name = "get_weather", arguments = { city = "Paris" } },
            { name = "get_time", arguments = '{"tz":"Europe/Paris"}', id = "call_custom" },
        } }
        local _, c = post_json(url, { model = "m", messages = MSGS, tools = {} })
        local msg = c.choices[1].message
        assert.are.equal("tool_calls", c.choices[1].finish_reason)
        assert.are.equal(json.null, msg.content)
        assert.are.equal(2, #msg.tool_calls)
        local a, b = msg.tool_calls[1], msg.tool_calls[2]
        assert.matches("^call_", a.id)
        assert.are.equal("function", a.type)
        assert.are.equal("get_weather", a["function"].name)
        assert.are.same({ city = "Paris" }, json.decode(a["function"].arguments))
        assert.are.equal("call_custom", b.id)
        assert.are.equal("get_time", b["function"].name)
        assert.are.equal('{"tz":"Europe/Paris"}', b["function"].arguments)
        assert.are_not.equal(a.id, b.id)
    end)

    it("streams tool-call arguments in pieces that reassemble to valid JSON", function()
        local args1 = { city = "Paris", unit = "celsius", days = 3 }
        local args2 = { query = "best croissant near the Louvre", limit = 5 }
        fx:script{ tool_calls = { { name = "get_weather", arguments = args1 },
                                  { name = "search", arguments = args2 } } }
        local _, _, events = post_sse(url, { model = "m", messages = MSGS, stream = true })
        local chunks = openai_chunks(events)
        assert.are.equal("assistant", chunks[1].choices[1].delta.role)
        assert.are.equal(json.null, chunks[1].choices[1].delta.content)
        assert.are.equal("tool_calls", chunks[#chunks].choices[1].finish_reason)
        local calls = reassemble_tool_calls(chunks)
        assert.are.equal(2, #calls)
        assert.are.equal("get_weather", calls[1].name)
        assert.are.equal("search", calls[2].name)
        assert.are_not.equal(calls[1].id, calls[2].id)
        assert.is_true(calls[1].pieces > 1 and calls[2].pieces > 1)  -- really split
        assert.are.same(args1, assert(json.decode(calls[1].arguments)))
        assert.are.same(args2, assert(json.decode(calls[2].arguments)))
    end)

    it("streams text and then tool calls in one reply", function()
        fx:script{ content = "Let me check.", tool_calls = { { name = "get_weather", arguments = { city = "Oslo" } } } }
        local _, _, events = post_sse(url, { model = "m", messages = MSGS, stream = true })
        local chunks = openai_chunks(events)
        local text = {}
        for _, c in ipairs(chunks) do text[#text + 1] = c.choices[1].delta.content end
        assert.are.equal("Let me check.", table.concat(text))
        assert.are.same({ city = "Oslo" }, json.decode(reassemble_tool_calls(chunks)[1].arguments))
    end)

    it("speaks the legacy function_call form, plain and streamed", function()
        local args = { city = "Paris", unit = "celsius" }
        fx:script({ legacy_function_call = { name = "get_weather", arguments = args } },
                  { legacy_function_call = { name = "get_weather", arguments = args } })
        local _, c = post_json(url, { model = "m", messages = MSGS, functions = {} })
        local msg = c.choices[1].message
        assert.are.equal("function_call", c.choices[1].finish_reason)
        assert.is_nil(msg.tool_calls)
        assert.are.equal("get_weather", msg.function_call.name)
        assert.are.same(args, json.decode(msg.function_call.arguments))

        local _, _, events = post_sse(url, { model = "m", messages = MSGS, functions = {}, stream = true })
        local chunks = openai_chunks(events)
        local name, pieces = nil, {}
        for _, ch in ipairs(chunks) do
            local fc = ch.choices[1].delta.function_call
            assert.is_nil(ch.choices[1].delta.tool_calls)
            if fc then
                name = name or fc.name
                pieces[#pieces + 1] = fc.arguments
            end
        end
        assert.are.equal("get_weather", name)
        assert.is_true(#pieces > 2)
        assert.are.same(args, json.decode(table.concat(pieces)))
        assert.are.equal("function_call", chunks[#chunks].choices[1].finish_reason)
    end)

    it("cuts text at max_tokens words with finish_reason length", function()
        fx:script{ content = "one two three four five six" }
        local _, c = post_json(url, { model = "m", messages = MSGS, max_tokens = 3 })
        assert.are.equal("one two three", c.choices[1].message.content)
        assert.are.equal("length", c.choices[1].finish_reason)
        assert.are.equal(3, c.usage.completion_tokens)
    end)

    it("rejects malformed requests with OpenAI's 400 error shape", function()
        local res, e = post_json(url, "{not json", { ["Content-Type"] = "application/json" })
        assert.are.equal(400, res.status)
        assert.are.equal("invalid_request_error", e.error.type)
        assert.is_string(e.error.message)
        assert.are.equal(json.null, e.error.param)
        res, e = post_json(url, { messages = MSGS })
        assert.are.equal(400, res.status)
        assert.are.equal("model", e.error.param)
        res, e = post_json(url, { model = "m" })
        assert.are.equal(400, res.status)
        assert.are.equal("missing_required_parameter", e.error.code)
        assert.are.equal(3, #fx.requests)                          -- recorded all the same
    end)

    it("checks the bearer key when started with api_key", function()
        local fk = assert(fixture.start{ port = 0, api_key = "sk-right" })
        local u = fk.base_url .. "/v1/chat/completions"
        local res, e = post_json(u, { model = "m", messages = MSGS })
        assert.are.equal(401, res.status)
        assert.are.equal("invalid_request_error", e.error.type)
        assert.matches("API key", e.error.message)
        res, e = post_json(u, { model = "m", messages = MSGS }, { Authorization = "Bearer sk-wrong" })
        assert.are.equal(401, res.status)
        assert.are.equal("invalid_api_key", e.error.code)
        res = post_json(u, { model = "m", messages = MSGS }, { Authorization = "Bearer sk-right" })
        assert.are.equal(200, res.status)
        fk:close()
    end)

    it("answers unknown paths with OpenAI's 404 and records them", function()
        local res, e = post_json(fx.base_url .. "/v1/completions", { model = "m", prompt = "x" })
        assert.are.equal(404, res.status)
        assert.matches("Invalid URL %(POST /v1/completions%)", e.error.message)
        res = assert(http.get(url))                                 -- wrong method
        assert.are.equal(404, res.status)
        assert.are.equal(2, #fx.requests)
        assert.are.equal("/v1/completions", fx.requests[1].path)
    end)

    it("closes idempotently; afterwards connections are refused", function()
        fx:close()
        fx:close()
        assert.is_true(fx.closed)
        local res, err = http.post(url, { model = "m", messages = MSGS })
        assert.is_nil(res)
        assert.are.equal("connect", err.kind)
    end)

    it("rejects bad scripts at the call site", function()
        assert.has_error(function() fx:script("text") end, "fx:script: reply must be a table, got string")
        assert.has_error(function() fx:script{ fault = "explode" } end, "fx:script: unknown fault 'explode'")
        assert.has_error(function() fx:script{ status = 200 } end, "fx:script: status must be a number 400-599")
    end)
end)


describe("llm fixture: embeddings", function()
    local fx, url

    before_each(function()
        fx = assert(fixture.start{ port = 0 })
        url = fx.base_url .. "/v1/embeddings"
    end)

    after_each(function()
        fx:close()
    end)

    it("embeds a string into one unit vector of the default 384 dimensions", function()
        local res, e = post_json(url, { model = "text-embedding-3-small", input = "hello world" })
        assert.are.equal(200, res.status)
        assert.are.equal("list", e.object)
        assert.are.equal("text-embedding-3-small", e.model)
        assert.are.equal(1, #e.data)
        assert.are.equal("embedding", e.data[1].object)
        assert.are.equal(0, e.data[1].index)
        assert.are.equal(384, #e.data[1].embedding)
        assert.is_true(math.abs(norm(e.data[1].embedding) - 1) < 1e-9)
        assert.are.same({ prompt_tokens = 2, total_tokens = 2 }, e.usage)
    end)

    it("embeds a list in order, honours dimensions, and is deterministic", function()
        local input = { "the cat sat on the mat", "the cat sat on a mat", "quantum chromodynamics lecture" }
        local _, a = post_json(url, { model = "m", input = input, dimensions = 64 })
        local _, b = post_json(url, { model = "m", input = input, dimensions = 64 })
        assert.are.equal(3, #a.data)
        for i, d in ipairs(a.data) do
            assert.are.equal(i - 1, d.index)
            assert.are.equal(64, #d.embedding)
            assert.is_true(math.abs(norm(d.embedding) - 1) < 1e-9)
            assert.are.same(d.embedding, b.data[i].embedding)       -- same text, same vector
        end
        local v = { a.data[1].embedding, a.data[2].embedding, a.data[3].embedding }
        assert.are_not.same(v[1], v[2])
        assert.is_true(dot(v[1], v[2]) > 0.5)                       -- shared words: close
        assert.is_true(dot(v[1], v[2]) > dot(v[1], v[3]) + 0.3)
        local direct = fixture.embed("the cat sat on the mat", 64)
        assert.is_true(math.abs(direct[1] - v[1][1]) < 1e-12)       -- the same function serves them
    end)

    it("returns float32 base64 vectors for encoding_format = base64", function()
        local _, plain = post_json(url, { model = "m", input = "base64 please", dimensions = 16 })
        local _, b64 = post_json(url, { model = "m", input = "base64 please", dimensions = 16,
                                        encoding_format = "base64" })
        local bytes = unbase64(b64.data[1].embedding)
        assert.are.equal(16 * 4, #bytes)
        local f = ffi.cast("const float *", bytes)
        for i = 1, 16 do
            assert.is_true(math.abs(f[i - 1] - plain.data[1].embedding[i]) < 1e-6)
        end
    end)

    it("accepts token-id input and rejects malformed input", function()
        local _, e = post_json(url, { model = "m", input = { 101, 2023, 102 }, dimensions = 8 })
        assert.are.equal(1, #e.data)
        local res, err = post_json(url, { model = "m", input = 42 })
        assert.are.equal(400, res.status)
        assert.are.equal("input", err.error.param)
        res = post_json(url, { model = "m", input = "x", dimensions = 0 })
        assert.are.equal(400, res.status)
        res = post_json(url, { input = "x" })
        assert.are.equal(400, res.status)
    end)

    it("uses scripted replies only when they name its path", function()
        fx:script({ path = "/v1/embeddings", status = 500 }, { content = "for chat" })
        local res = post_json(url, { model = "m", input = "x" })
        assert.are.equal(500, res.status)
        assert.are.equal(1, fx:pending())                           -- the chat reply is left
        local _, c = post_json(fx.base_url .. "/v1/chat/completions", { model = "m", messages = MSGS })
        assert.are.equal("for chat", c.choices[1].message.content)
    end)
end)


describe("llm fixture: models", function()
    local fx

    before_each(function()
        fx = assert(fixture.start{ port = 0, models = { "alpha", "beta" } })
    end)

    after_each(function()
        fx:close()
    end)

    it("lists models as an OpenAI list object", function()
        local _, l = post_json(fx.base_url .. "/v1/models", nil, nil, { method = "GET" })
        assert.are.equal("list", l.object)
        assert.are.equal(2, #l.data)
        assert.are.equal("alpha", l.data[1].id)
        assert.are.equal("model", l.data[1].object)
        assert.is_string(l.data[1].owned_by)
        assert.is_number(l.data[1].created)
        local _, one = post_json(fx.base_url .. "/v1/models/beta", nil, nil, { method = "GET" })
        assert.are.equal("beta", one.id)
        local res, e = post_json(fx.base_url .. "/v1/models/gamma", nil, nil, { method = "GET" })
        assert.are.equal(404, res.status)
        assert.are.equal("model_not_found", e.error.code)
    end)

    it("lists models in Anthropic's shape when anthropic-version is sent", function()
        local _, l = post_json(fx.base_url .. "/v1/models", nil, ANTHROPIC, { method = "GET" })
        assert.are.equal(2, #l.data)
        assert.are.equal("model", l.data[1].type)
        assert.are.equal("alpha", l.data[1].id)
        assert.is_false(l.has_more)
        assert.are.equal("alpha", l.first_id)
        assert.are.equal("beta", l.last_id)
    end)
end)


describe("llm fixture: Anthropic messages", function()
    local fx, url
    local REQ = { model = "claude-test", max_tokens = 256, system = "be brief",
                  messages = { { role = "user", content = "What is the weather?" } } }

    local function with(extra)
        local t = {}
        for k, v in pairs(REQ) do t[k] = v end
        for k, v in pairs(extra or {}) do t[k] = v end
        return t
    end

    before_each(function()
        fx = assert(fixture.start{ port = 0 })
        url = fx.base_url .. "/v1/messages"
    end)

    after_each(function()
        fx:close()
    end)

    it("answers with a message object holding a text block", function()
        local res, m = post_json(url, REQ, ANTHROPIC)
        assert.are.equal(200, res.status)
        assert.matches("^msg_", m.id)
        assert.are.equal("message", m.type)
        assert.are.equal("assistant", m.role)
        assert.are.equal("claude-test", m.model)
        assert.are.same({ { type = "text", text = "echo: What is the weather?" } }, m.content)
        assert.are.equal("end_turn", m.stop_reason)
        assert.are.equal(json.null, m.stop_sequence)
        assert.are.same({ input_tokens = 6, output_tokens = 5 }, m.usage)
        assert.are.equal("sk-ant-test", fx.requests[1].headers["x-api-key"])
        assert.are.equal(256, fx.requests[1].json.max_tokens)
    end)

    it("answers tool calls with tool_use blocks and stop_reason tool_use", function()
        fx:script{ content = "Checking.", tool_calls = {
            { name = "get_weather", arguments = { city = "Paris" } },
            { name = "get_time", arguments = { tz = "CET" }, id = "toolu_custom" } } }
        local _, m = post_json(url, with{ tools = {} }, ANTHROPIC)
        assert.are.equal("tool_use", m.stop_reason)
        assert.are.equal(3, #m.content)
        assert.are.same({ type = "text", text = "Checking." }, m.content[1])
        assert.are.equal("tool_use", m.content[2].type)
        assert.matches("^toolu_", m.content[2].id)
        assert.are.equal("get_weather", m.content[2].name)
        assert.are.same({ city = "Paris" }, m.content[2].input)
        assert.are.same({ type = "tool_use", id = "toolu_custom", name = "get_time", input = { tz = "CET" } },
                        m.content[3])
    end)

    it("stops at max_tokens with stop_reason max_tokens", function()
        fx:script{ content = "a b c d e f g" }
        local _, m = post_json(url, with{ max_tokens = 4 }, ANTHROPIC)
        assert.are.equal("a b c d", m.content[1].text)
        assert.are.equal("max_tokens", m.stop_reason)
    end)

    it("requires x-api-key (401 authentication_error) and anthropic-version (400)", function()
        local res, e = post_json(url, REQ, { ["anthropic-version"] = "2023-06-01" })
        assert.are.equal(401, res.status)
        assert.are.same({ type = "error", error = { type = "authentication_error",
                                                    message = "x-api-key header is required" } }, e)
        res, e = post_json(url, REQ, { ["x-api-key"] = "k" })
        assert.are.equal(400, res.status)
        assert.are.equal("error", e.type)
        assert.are.equal("invalid_request_error", e.error.type)
        assert.matches("anthropic%-version", e.error.message)
        local fk = assert(fixture.start{ port = 0, api_key = "sk-ant-right" })
        res, e = post_json(fk.base_url .. "/v1/messages", REQ, ANTHROPIC)
        assert.are.equal(401, res.status)
        assert.are.equal("authentication_error", e.error.type)
        fk:close()
    end)

    it("requires model, max_tokens and messages", function()
        local res, e = post_json(url, { model = "c", messages = REQ.messages }, ANTHROPIC)
        assert.are.equal(400, res.status)
        assert.are.equal("max_tokens: Field required", e.error.message)
        assert.are.equal(0, fx:pending())
    end)

    it("streams the exact event sequence, with text deltas that add up", function()
        local text = "Sunny and warm today."
        fx:script{ content = text }
        local res, err, events = post_sse(url, with{ stream = true }, ANTHROPIC)
        assert(res, tostring(err))
        assert.matches("^text/event%-stream", res.headers["content-type"])
        assert.are.same({ "message_start", "content_block_start", "ping",
                          "content_block_delta", "content_block_delta", "content_block_delta",
                          "content_block_delta", "content_block_stop", "message_delta", "message_stop" },
                        event_types(events))
        local pieces = {}
        for _, ev in ipairs(events) do
            local d = assert(json.decode(ev.data))
            assert.are.equal(ev.event, d.type)                      -- event: line names data.type
            if d.type == "message_start" then
                assert.are.equal("message", d.message.type)
                assert.are.equal("assistant", d.message.role)
                assert.are.same({}, d.message.content)
                assert.are.equal(json.null, d.message.stop_reason)
                assert.are.equal(6, d.message.usage.input_tokens)
            elseif d.type == "content_block_start" then
                assert.are.same({ type = "text", text = "" }, d.content_block)
            elseif d.type == "content_block_delta" then
                assert.are.equal(0, d.index)
                assert.are.equal("text_delta", d.delta.type)
                pieces[#pieces + 1] = d.delta.text
            elseif d.type == "message_delta" then
                assert.are.equal("end_turn", d.delta.stop_reason)
                assert.are.equal(4, d.usage.output_tokens)
            end
        end
        assert.are.equal(text, table.concat(pieces))
    end)

    it("streams tool_use blocks whose input_json_delta pieces reassemble", function()
        local input = { city = "Paris", unit = "celsius", when = "tomorrow morning" }
        fx:script{ content = "Let me look.", tool_calls = { { name = "get_weather", arguments = input } } }
        local _, _, events = post_sse(url, with{ stream = true, tools = {} }, ANTHROPIC)
        local types = event_types(events)
        assert.are.same({ "message_start", "content_block_start", "ping" }, { types[1], types[2], types[3] })
        assert.are.same({ "content_block_stop", "message_delta", "message_stop" },
                        { types[#types - 2], types[#types - 1], types[#types] })
        local blocks, json_pieces, stop = {}, {}, nil
        for _, ev in ipairs(events) do
            local d = json.decode(ev.data)
            if d.type == "content_block_start" then
                blocks[d.index + 1] = d.content_block
            elseif d.type == "content_block_delta" and d.delta.type == "input_json_delta" then
                assert.are.equal(1, d.index)
                json_pieces[#json_pieces + 1] = d.delta.partial_json
            elseif d.type == "message_delta" then
                stop = d.delta.stop_reason
            end
        end
        assert.are.equal(2, #blocks)
        assert.are.equal("text", blocks[1].type)
        assert.are.equal("tool_use", blocks[2].type)
        assert.are.equal("get_weather", blocks[2].name)
        assert.matches("^toolu_", blocks[2].id)
        assert.are.same({}, blocks[2].input)
        assert.is_true(#json_pieces > 2)
        assert.are.same(input, assert(json.decode(table.concat(json_pieces))))
        assert.are.equal("tool_use", stop)
    end)
end)


describe("llm fixture: faults", function()
    local fx, chat, messages

    before_each(function()
        fx = assert(fixture.start{ port = 0 })
        chat = fx.base_url .. "/v1/chat/completions"
        messages = fx.base_url .. "/v1/messages"
    end)

    after_each(function()
        fx:close()
    end)

    local function fault(name, extra)
        return headers({ ["x-fixture-fault"] = name }, extra)
    end

    it("429 carries retry-after and each provider's rate-limit error shape", function()
        local res, e = post_json(chat, { model = "m", messages = MSGS }, fault("429"))
        assert.are.equal(429, res.status)
        assert.are.equal("1", res.headers["retry-after"])
        assert.are.equal("0", res.headers["x-ratelimit-remaining-requests"])
        assert.are.equal("rate_limit_exceeded", e.error.code)
        assert.is_string(e.error.type)
        assert.is_string(e.error.message)

        fx:script{ status = 429, headers = { ["retry-after"] = "2" },
                   error = { message = "slow down", type = "rate_limit_error", code = "rate_limited" } }
        res, e = post_json(chat, { model = "m", messages = MSGS })
        assert.are.equal(429, res.status)
        assert.are.equal("2", res.headers["retry-after"])
        assert.are.same({ message = "slow down", type = "rate_limit_error", code = "rate_limited",
                          param = json.null }, e.error)

        res, e = post_json(messages, { model = "c", max_tokens = 5, messages = MSGS }, fault("429", ANTHROPIC))
        assert.are.equal(429, res.status)
        assert.are.equal("1", res.headers["retry-after"])
        assert.are.equal("error", e.type)
        assert.are.equal("rate_limit_error", e.error.type)
    end)

    it("401, 500 and 503 come back as statuses with the provider's error body", function()
        local want_openai = { ["401"] = "invalid_request_error", ["500"] = "server_error", ["503"] = "server_error" }
        local want_anthropic = { ["401"] = "authentication_error", ["500"] = "api_error",
                                 ["503"] = "overloaded_error" }
        for code, typ in pairs(want_openai) do
            local res, e = post_json(chat, { model = "m", messages = MSGS }, fault(code))
            assert.are.equal(tonumber(code), res.status)
            assert.are.equal(typ, e.error.type)
            res, e = post_json(messages, { model = "c", max_tokens = 5, messages = MSGS }, fault(code, ANTHROPIC))
            assert.are.equal(tonumber(code), res.status)
            assert.are.equal(want_anthropic[code], e.error.type)
        end
        local res = post_json(fx.base_url .. "/v1/embeddings", { model = "m", input = "x" }, fault("503"))
        assert.are.equal(503, res.status)
        res = post_json(fx.base_url .. "/v1/models", nil, fault("500"), { method = "GET" })
        assert.are.equal(500, res.status)
    end)

    it("a fault header does not consume scripted replies; an unknown one is a 400", function()
        fx:script{ content = "kept" }
        post_json(chat, { model = "m", messages = MSGS }, fault("500"))
        assert.are.equal(1, fx:pending())
        local res, e = post_json(chat, { model = "m", messages = MSGS }, fault("explode"))
        assert.are.equal(400, res.status)
        assert.matches("unknown fault 'explode'", e.error.message)
        local _, c = post_json(chat, { model = "m", messages = MSGS })
        assert.are.equal("kept", c.choices[1].message.content)
    end)

    it("reset: a stream is dropped after some events (kind connect)", function()
        local res, err, events = post_sse(chat, { model = "m", messages = MSGS, stream = true }, fault("reset"))
        assert.is_nil(res)
        assert.are.equal("connect", err.kind)
        assert.is_true(#events >= 1)
        for _, ev in ipairs(events) do assert.are_not.equal("[DONE]", ev.data) end

        fx:script{ content = "one two three four", fault = "reset" }
        res, err, events = post_sse(messages, { model = "c", max_tokens = 50, messages = MSGS, stream = true },
                                    ANTHROPIC)
        assert.is_nil(res)
        assert.are.equal("connect", err.kind)
        assert.are.equal("message_start", events[1].event)
        assert.are_not.equal("message_stop", events[#events].event)
    end)

    it("reset: a plain request gets no reply at all (kind connect)", function()
        local res, err = http.post(chat, { model = "m", messages = MSGS }, { headers = fault("reset") })
        assert.is_nil(res)
        assert.are.equal("connect", err.kind)
    end)

    it("stall: the stream stops after some events until the client's deadline (kind timeout)", function()
        local elapsed, res, err, events = timed(sibyl.deadline, 0.3, post_sse, chat,
            { model = "m", messages = MSGS, stream = true }, fault("stall"))
        assert.is_nil(res)
        assert.are.equal("timeout", err.kind)
        assert.is_true(#events >= 1)
        assert.is_true(elapsed >= 0.29 and elapsed < 2, "elapsed " .. elapsed)
    end)

    it("stall: a plain request times out with the client's timeout option", function()
        local res, err = http.post(chat, { model = "m", messages = MSGS },
                                   { headers = fault("stall"), timeout = 0.2 })
        assert.is_nil(res)
        assert.are.equal("timeout", err.kind)
    end)

    it("stall with a delay pauses mid-stream, then finishes", function()
        fx:script{ content = "alpha beta gamma delta", fault = "stall", delay = 0.15 }
        local elapsed, res, _, events = timed(post_sse, messages,
            { model = "c", max_tokens = 50, messages = MSGS, stream = true }, ANTHROPIC)
        assert.are.equal(200, res.status)
        assert.is_true(elapsed >= 0.15)
        assert.are.equal("message_stop", events[#events].event)
    end)

    it("truncate: a plain reply cut short of its Content-Length (kind connect)", function()
        local res, err = http.post(chat, { model = "m", messages = MSGS }, { headers = fault("truncate") })
        assert.is_nil(res)
        assert.are.equal("connect", err.kind)
    end)

    it("bad_json: a complete 200 whose body is half a JSON object (kind parse)", function()
        local res = assert(http.post(chat, { model = "m", messages = MSGS }, { headers = fault("bad_json") }))
        assert.are.equal(200, res.status)
        local v, err = res:json()
        assert.is_nil(v)
        assert.are.equal("parse", err.kind)
    end)

    it("truncate: a stream ends inside an event, without its terminator", function()
        local res, err, events = post_sse(chat, { model = "m", messages = MSGS, stream = true }, fault("truncate"))
        assert(res, tostring(err))
        assert.are_not.equal("[DONE]", events[#events].data)
        local v, perr = json.decode(events[#events].data)
        assert.is_nil(v)
        assert.are.equal("parse", perr.kind)

        res, err, events = post_sse(messages, { model = "c", max_tokens = 50, messages = MSGS, stream = true },
                                    fault("truncate", ANTHROPIC))
        assert(res, tostring(err))
        assert.are_not.equal("message_stop", events[#events].event)
        assert.is_nil(json.decode(events[#events].data))
    end)

    it("slow_first_byte: nothing arrives before the delay, then a normal reply", function()
        local elapsed, res = timed(http.post, chat, { model = "m", messages = MSGS },
                                           { headers = fault("slow_first_byte", { ["x-fixture-delay"] = "0.2" }) })
        assert.are.equal(200, res.status)
        assert.is_true(elapsed >= 0.2, "elapsed " .. elapsed)
        assert.are.equal("echo: What is the weather?", res:json().choices[1].message.content)

        fx:script{ content = "late", fault = "slow_first_byte", delay = 0.15 }
        local elapsed2, _, _, events = timed(post_sse, chat, { model = "m", messages = MSGS, stream = true })
        assert.is_true(elapsed2 >= 0.15, "elapsed " .. elapsed2)
        assert.are.equal("[DONE]", events[#events].data)
    end)

    it("stream_error: an error event mid-stream in each provider's shape", function()
        local _, _, events = post_sse(chat, { model = "m", messages = MSGS, stream = true }, fault("stream_error"))
        local last = json.decode(events[#events].data)
        assert.are.equal("server_error", last.error.type)
        _, _, events = post_sse(messages, { model = "c", max_tokens = 50, messages = MSGS, stream = true },
                                fault("stream_error", ANTHROPIC))
        assert.are.equal("error", events[#events].event)
        assert.are.same({ type = "error", error = { type = "overloaded_error", message = "Overloaded" } },
                        json.decode(events[#events].data))
    end)

    it("chunk_delay spaces out stream events", function()
        fx:script{ content = "a b c d", chunk_delay = 0.03 }
        local elapsed, _, _, events = timed(post_sse, chat, { model = "m", messages = MSGS, stream = true })
        assert.are.equal(7, #events)
        assert.is_true(elapsed >= 6 * 0.03 - 0.01, "elapsed " .. elapsed)
    end)
end)


describe("llm fixture: standalone mode", function()

    it("serves from the command line until SIGINT", function()
        local probe = assert(server.listen{ port = 0, routes = { ["/"] = function() return "" end } })
        local port = probe.port
        probe:close()
        local out = os.tmpname()
        local p = assert(io.popen(helpers.shell_quote(helpers.sibyl_bin) .. " tests/fixtures/llm_server.lua --port "
            .. port .. " >" .. out .. " 2>&1 & echo $!"))
        local pid = assert(tonumber(p:read("*l")))
        p:close()
        local res
        for _ = 1, 100 do
            res = http.get("http://127.0.0.1:" .. port .. "/v1/models")
            if res then break end
            sibyl.sleep(0.05)
        end
        assert(res, "the standalone fixture did not come up")
        assert.are.equal("list", res:json().object)
        os.execute("kill -INT " .. pid)
        local gone = false
        for _ = 1, 100 do
            local rc = os.execute("kill -0 " .. pid .. " 2>/dev/null")
            if rc ~= 0 and rc ~= true then
                gone = true
                break
            end
            sibyl.sleep(0.05)
        end
        local f = assert(io.open(out, "rb"))
        local text = f:read("*a")
        f:close()
        os.remove(out)
        assert.is_true(gone, "the standalone fixture did not stop on SIGINT")
        assert.matches("listening on http://127.0.0.1:" .. port, text)
        assert.matches("GET /v1/models", text)
    end)
end)


describe("sibyl.http against the fixture", function()

    it("http.sse delivers every event of a burst that arrives in one chunk", function()
        local srv = assert(server.listen{ port = 0, routes = {
            ["GET /burst"] = function(_, res)
                for i = 1, 10 do res:sse{ data = "e" .. i } end
            end,
        } })
        local s = assert(http.sse{ url = "http://127.0.0.1:" .. srv.port .. "/burst" })
        local got = {}
        for ev in s:events() do got[#got + 1] = ev.data end
        srv:close()
        assert.is_nil(s.error)
        assert.are.same({ "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9", "e10" }, got)
    end)

    it("http.sse streams a fixture chat completion", function()
        local fx = assert(fixture.start{ port = 0 })
        fx:script({ content = "Paris is the capital of France." })
        local s = assert(http.sse{ url = fx.base_url .. "/v1/chat/completions",
            body = { model = "m", stream = true, messages = { { role = "user", content = "?" } } } })
        local text, done = {}, false
        for ev in s:events() do
            if ev.data == "[DONE]" then
                done = true
            else
                local d = assert(json.decode(ev.data))
                text[#text + 1] = d.choices[1].delta.content or ""
            end
        end
        fx:close()
        assert.is_true(done)
        assert.are.equal("Paris is the capital of France.", table.concat(text))
    end)
end)
