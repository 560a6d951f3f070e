-- 13-llm_spec.lua -- sibyl.llm (stdlib/sibyl/llm/*.lua): chat, streaming,
-- tool calls, structured output, retries and key rotation, per wire dialect.
-- Fallback, usage meters, embeddings, configuration, the mock provider and
-- pacing are in 13-llm_features_spec.lua; both share
-- tests/fixtures/llm_spec_common.lua.
--
-- Everything runs against the fake provider in tests/fixtures/llm_server.lua
-- (doc/fixtures.md), once per wire dialect (OpenAI and Anthropic), and checks
-- both what the caller gets and what went over the wire (the fixture records
-- every request). Retry bases are a hundredth of a second, so the whole file
-- takes a few seconds; time bounds leave room for an ASan build.

local sibyl = require "sibyl"
local json = require "sibyl.json"
local llm = require "sibyl.llm"
local mock = require "sibyl.llm.mock"
local keys = require "sibyl.keys"
local helpers = require "helpers"
local fixture = require "llm_server"
local server = require "sibyl.server"

local eventually, timed = helpers.eventually, helpers.timed

local C = require "llm_spec_common"
local KEY, K1, K2, K3, QUESTION, USER, FAST, WEATHER_TOOL, TIME_TOOL, DIALECTS, copy, has, words, cosine =
    C.KEY, C.K1, C.K2, C.K3, C.QUESTION, C.USER, C.FAST, C.WEATHER_TOOL, C.TIME_TOOL, C.DIALECTS, C.copy, C.has, C.words, C.cosine


-- The fixture is shared by the whole file; each test starts from a clean one.
local fx

setup(function()
    fx = assert(fixture.start{ port = 0 })
end)

teardown(function()
    fx:close()
    llm.reset()
end)

before_each(function()
    fx:reset()
end)

after_each(function()
    assert.are.same({}, fx.errors)               -- no fixture handler raised
end)


for _, P in ipairs(DIALECTS) do

describe("sibyl.llm over the " .. P.type .. " dialect", function()

    local function client(extra)
        local o = { type = P.type, base_url = P.base(fx), api_key = KEY, retry = FAST }
        for k, v in pairs(extra or {}) do o[k] = v end
        return llm.client(o)
    end

    -- The recorded chat requests (to the dialect's path).
    local function chats()
        local out = {}
        for _, r in ipairs(fx.requests) do
            if r.path == P.path then out[#out + 1] = r end
        end
        return out
    end


    describe("plain chat", function()

        it("returns content, finish_reason, usage, model and provider name", function()
            fx:script{ content = "Paris is sunny today." }
            local c = client()
            local r, err = c:chat{ messages = USER, system = "Be brief.", model = "spec-model" }
            assert.is_nil(err)
            assert.are.equal("Paris is sunny today.", r.content)
            assert.are.equal("stop", r.finish_reason)
            assert.are.equal(8, r.usage.input)                 -- 6 words + "Be brief."
            assert.are.equal(4, r.usage.output)
            assert.are.equal(12, r.usage.total)
            assert.are.equal("spec-model", r.model)
            assert.are.equal(P.type, r.provider)
            assert.are.equal(1, r.attempts)
            assert.are.same({}, r.tool_calls)
            assert.is_string(r.id)
            assert.is_table(r.raw)
        end)

        it("sends the model, the messages, the system prompt in the dialect's place and the auth headers", function()
            local c = client()
            local r = assert(c:chat{ messages = USER, system = "Be brief.", model = "spec-model",
                                     temperature = 0.25, max_tokens = 50 })
            assert.are.equal("echo: " .. QUESTION, r.content)
            local reqs = chats()
            assert.are.equal(1, #fx.requests)
            assert.are.equal(1, #reqs)
            local rec = reqs[1]
            assert.are.equal("POST", rec.method)
            local body = rec.json
            assert.are.equal("spec-model", body.model)
            assert.are.equal(0.25, body.temperature)
            assert.are.equal(50, body.max_tokens)
            assert.is_nil(body.stream)
            local system, msgs = P.system_of(body)
            assert.are.equal("Be brief.", system)
            assert.are.same(USER, msgs)
            assert.are.equal(KEY, P.key_of(rec))
            if P.type == "openai" then
                assert.are.same({ role = "system", content = "Be brief." }, body.messages[1])
                assert.is_nil(body.system)
                assert.are.equal("Bearer " .. KEY, rec.headers["authorization"])
                assert.is_nil(rec.headers["x-api-key"])
                assert.is_nil(rec.headers["anthropic-version"])
            else
                assert.are.equal(1, #body.messages)              -- no system message in the list
                assert.are.equal("2023-06-01", rec.headers["anthropic-version"])
                assert.are.equal(KEY, rec.headers["x-api-key"])
                assert.is_nil(rec.headers["authorization"])
            end
        end)

        it("uses the client's model, its extra headers and opts.prompt", function()
            local c = client{ model = "client-model", headers = { ["X-Spec"] = "yes" } }
            local r = assert(c:chat{ prompt = "Hello fixture" })
            assert.are.equal("echo: Hello fixture", r.content)
            assert.are.equal("client-model", r.model)
            local rec = fx.requests[1]
            assert.are.equal("client-model", rec.json.model)
            assert.are.equal("yes", rec.headers["x-spec"])
            assert.are.same({ { role = "user", content = "Hello fixture" } }, rec.json.messages)
        end)

        it("moves system messages of the list to where the dialect wants them", function()
            local c = client()
            assert(c:chat{ system = "Rule one.", messages = {
                { role = "system", content = "Rule two." }, { role = "user", content = "hi" } } })
            local body = fx.requests[1].json
            if P.type == "openai" then
                assert.are.same({ { role = "system", content = "Rule one." }, { role = "system", content = "Rule two." },
                                  { role = "user", content = "hi" } }, body.messages)
            else
                assert.are.equal("Rule one.\n\nRule two.", body.system)
                assert.are.same({ { role = "user", content = "hi" } }, body.messages)
            end
        end)

        it("reports a reply cut at max_tokens as finish_reason length", function()
            fx:script{ content = "one two three four five six" }
            local r = assert(client():chat{ messages = USER, max_tokens = 3 })
            assert.are.equal("one two three", r.content)
            assert.are.equal("length", r.finish_reason)
            assert.are.equal(3, r.usage.output)
        end)

        it("translates tools, tool_choice and parallel_tool_calls", function()
            local c = client()
            assert(c:chat{ messages = USER, tools = { WEATHER_TOOL, TIME_TOOL }, tool_choice = "get_weather",
                           parallel_tool_calls = false })
            -- OpenAI's own tool shape is accepted too.
            assert(c:chat{ messages = USER, tool_choice = "required", tools = {
                { type = "function", ["function"] = WEATHER_TOOL } } })
            assert(c:chat{ messages = USER, tools = { WEATHER_TOOL } })
            assert(c:chat{ messages = USER, tools = {} })           -- an empty list sends no tools
            local b1, b2, b3, b4 = fx.requests[1].json, fx.requests[2].json, fx.requests[3].json, fx.requests[4].json
            if P.type == "openai" then
                assert.are.same({ type = "function", ["function"] = WEATHER_TOOL }, b1.tools[1])
                assert.are.same({ type = "function", ["function"] = TIME_TOOL }, b1.tools[2])
                assert.are.same({ type = "function", ["function"] = { name = "get_weather" } }, b1.tool_choice)
                assert.is_false(b1.parallel_tool_calls)
                assert.are.equal("required", b2.tool_choice)
                assert.are.same({ type = "function", ["function"] = WEATHER_TOOL }, b2.tools[1])
                assert.is_nil(b2.parallel_tool_calls)
                assert.is_nil(b3.tool_choice)
            else
                assert.are.same({ name = "get_weather", description = WEATHER_TOOL.description,
                                  input_schema = WEATHER_TOOL.parameters }, b1.tools[1])
                assert.are.same({ name = "get_time", description = TIME_TOOL.description,
                                  input_schema = TIME_TOOL.parameters }, b1.tools[2])
                assert.are.same({ type = "tool", name = "get_weather", disable_parallel_tool_use = true },
                                b1.tool_choice)
                assert.are.same({ type = "any" }, b2.tool_choice)
                assert.are.equal("get_weather", b2.tools[1].name)
                assert.are.same({ type = "auto" }, b3.tool_choice)
            end
            assert.are.equal(1, #b3.tools)
            assert.is_nil(b4.tools)
            assert.is_nil(b4.tool_choice)
        end)

        it("translates stop, seed and extra body fields", function()
            assert(client():chat{ messages = USER, stop = "END", seed = 7, top_p = 0.5,
                                  extra = { metadata = { run = "spec" } } })
            local body = fx.requests[1].json
            assert.are.equal(0.5, body.top_p)
            assert.are.same({ run = "spec" }, body.metadata)
            if P.type == "openai" then
                assert.are.equal("END", body.stop)
                assert.are.equal(7, body.seed)
            else
                assert.are.same({ "END" }, body.stop_sequences)
                assert.is_nil(body.stop)
                assert.is_nil(body.seed)                         -- no such field on this wire
                assert.are.equal(4096, body.max_tokens)          -- required there: the default
            end
        end)

        if P.type == "openai" then
            it("reads the legacy function_call form as a tool call", function()
                fx:script{ legacy_function_call = { name = "get_weather", arguments = { city = "Rome" } } }
                local r = assert(client():chat{ messages = USER })
                assert.are.equal("tool_calls", r.finish_reason)
                assert.are.equal(1, #r.tool_calls)
                assert.are.equal("get_weather", r.tool_calls[1].name)
                assert.are.same({ city = "Rome" }, r.tool_calls[1].arguments)
            end)
        end

        it("raises on misuse", function()
            local c = client()
            assert.has_error(function() c:chat("hi") end)
            assert.has_error(function() c:chat{} end)                                   -- no messages
            assert.has_error(function() c:chat{ messages = USER, stream = true } end)   -- not a function
            assert.has_error(function() c:chat{ messages = USER, tools = { { description = "x" } } } end)
            assert.are.equal(0, #fx.requests)
        end)
    end)


    describe("streaming", function()

        it("delivers deltas that concatenate to the full text, equal to r.content", function()
            local text = "The weather in Paris is sunny, 21 degrees and a light breeze."
            fx:script{ content = text }
            local deltas, types = {}, {}
            local r = assert(client():chat{ messages = USER, stream = function(d)
                types[d.type] = true
                deltas[#deltas + 1] = d.text
            end })
            assert.are.same({ text = true }, types)
            assert.are.equal(12, #deltas)                      -- one per word
            assert.are.equal(text, table.concat(deltas))
            assert.are.equal(text, r.content)
            assert.are.equal("stop", r.finish_reason)
            assert.are.equal(6, r.usage.input)
            assert.are.equal(12, r.usage.output)
            assert.is_string(r.model)
            assert.are.equal(P.type, r.provider)
            assert.is_true(fx.requests[1].json.stream)
            if P.type == "openai" then
                assert.are.same({ include_usage = true }, fx.requests[1].json.stream_options)
            end
        end)

        it("stops early when the callback returns false (finish_reason stopped)", function()
            fx:script{ content = words(40), chunk_delay = 0.02 }
            local n = 0
            local dt, r = timed(function()
                return assert(client():chat{ messages = USER, stream = function(d)
                    n = n + 1
                    if n == 3 then return false end
                end })
            end)
            assert.are.equal(3, n)
            assert.are.equal("stopped", r.finish_reason)
            assert.are.equal("w1 w2 w3", r.content)
            assert.is_true(dt < 0.6, "took " .. dt)            -- the full stream takes 0.8 s
            assert.is_truthy(eventually(function() return fx.server:inflight() == 0 end))
            assert.are.equal(1, #fx.requests)
        end)
    end)


    describe("tool calls", function()

        local CALLS = {
            { name = "get_weather", arguments = { city = "Paris", unit = "celsius" } },
            { name = "get_time", arguments = { tz = "Europe/Paris" } },
            { name = "get_weather", arguments = { city = "Oslo" } },
        }

        local function check_calls(r)
            assert.are.equal("tool_calls", r.finish_reason)
            assert.are.equal(3, #r.tool_calls)
            local ids = {}
            for i, want in ipairs(CALLS) do
                local tc = r.tool_calls[i]
                assert.are.equal(want.name, tc.name)
                assert.are.same(want.arguments, tc.arguments)
                assert.are.same(want.arguments, json.decode(tc.raw_arguments))
                assert.is_string(tc.id)
                assert.is_nil(ids[tc.id])
                ids[tc.id] = true
            end
        end

        it("decodes several parallel calls (not streamed)", function()
            fx:script{ tool_calls = CALLS }
            local r = assert(client():chat{ messages = USER, tools = { WEATHER_TOOL, TIME_TOOL } })
            check_calls(r)
            assert.are.equal("", r.content)
        end)

        it("streams several parallel calls; partial JSON grows to raw_arguments", function()
            fx:script{ tool_calls = CALLS, piece_size = 5 }
            local partials = {}                         -- index -> list of partials
            local names = {}
            local r = assert(client():chat{ messages = USER, tools = { WEATHER_TOOL, TIME_TOOL },
                                            stream = function(d)
                assert.are.equal("tool_call", d.type)
                local list = partials[d.index] or {}
                partials[d.index] = list
                list[#list + 1] = d.partial
                names[d.index] = d.name
                assert.is_string(d.delta)
                assert.are.equal(d.partial, (list[#list - 1] or "") .. d.delta)
            end })
            check_calls(r)
            assert.are.equal(3, #partials)
            for i, list in ipairs(partials) do
                assert.are.equal(CALLS[i].name, names[i])
                assert.is_true(#list >= 3, "call " .. i .. " came in " .. #list .. " pieces")
                for j = 2, #list do
                    assert.are.equal(list[j - 1], list[j]:sub(1, #list[j - 1]))   -- only grows
                    assert.is_true(#list[j] >= #list[j - 1])
                end
                assert.are.equal(r.tool_calls[i].raw_arguments, list[#list])
            end
        end)

        it("streams text followed by a call", function()
            fx:script{ content = "Let me check.", tool_calls = { CALLS[1] } }
            local text = {}
            local r = assert(client():chat{ messages = USER, stream = function(d)
                if d.type == "text" then text[#text + 1] = d.text end
            end })
            assert.are.equal("Let me check.", table.concat(text))
            assert.are.equal("Let me check.", r.content)
            assert.are.same(CALLS[1].arguments, r.tool_calls[1].arguments)
        end)

        it("sends the assistant's calls and the tool results back in the dialect's shape", function()
            fx:script({ tool_calls = { CALLS[1], CALLS[2] } }, { content = "It is 21C and 14:00 in Paris." })
            local c = client()
            local msgs = { { role = "user", content = "Weather and time in Paris?" } }
            local r1 = assert(c:chat{ messages = msgs, tools = { WEATHER_TOOL, TIME_TOOL } })
            assert.are.equal(2, #r1.tool_calls)
            msgs[#msgs + 1] = { role = "assistant", content = r1.content, tool_calls = r1.tool_calls }
            msgs[#msgs + 1] = { role = "tool", tool_call_id = r1.tool_calls[1].id, content = "21C, sunny" }
            msgs[#msgs + 1] = { role = "tool", tool_call_id = r1.tool_calls[2].id, content = { time = "14:00" } }
            local r2 = assert(c:chat{ messages = msgs, tools = { WEATHER_TOOL, TIME_TOOL } })
            assert.are.equal("It is 21C and 14:00 in Paris.", r2.content)
            assert.are.equal(2, #fx.requests)
            local _, wire = P.system_of(fx.requests[2].json)
            local id1, id2 = r1.tool_calls[1].id, r1.tool_calls[2].id
            if P.type == "openai" then
                assert.are.equal(4, #wire)
                local a = wire[2]
                assert.are.equal("assistant", a.role)
                assert.are.equal(2, #a.tool_calls)
                assert.are.equal(id1, a.tool_calls[1].id)
                assert.are.equal("function", a.tool_calls[1].type)
                assert.are.equal("get_weather", a.tool_calls[1]["function"].name)
                assert.is_string(a.tool_calls[1]["function"].arguments)   -- a JSON string on this wire
                assert.are.same(CALLS[1].arguments, json.decode(a.tool_calls[1]["function"].arguments))
                assert.are.same(CALLS[2].arguments, json.decode(a.tool_calls[2]["function"].arguments))
                assert.are.same({ role = "tool", tool_call_id = id1, content = "21C, sunny" }, wire[3])
                assert.are.equal("tool", wire[4].role)
                assert.are.equal(id2, wire[4].tool_call_id)
                assert.are.same({ time = "14:00" }, json.decode(wire[4].content))
            else
                assert.are.equal(3, #wire)                       -- both results in one user message
                local a = wire[2]
                assert.are.equal("assistant", a.role)
                assert.are.same({ { type = "tool_use", id = id1, name = "get_weather", input = CALLS[1].arguments },
                                  { type = "tool_use", id = id2, name = "get_time", input = CALLS[2].arguments } },
                                a.content)
                local u = wire[3]
                assert.are.equal("user", u.role)
                assert.are.equal(2, #u.content)
                assert.are.same({ type = "tool_result", tool_use_id = id1, content = "21C, sunny" }, u.content[1])
                assert.are.equal("tool_result", u.content[2].type)
                assert.are.equal(id2, u.content[2].tool_use_id)
                assert.are.same({ time = "14:00" }, json.decode(u.content[2].content))
            end
        end)
    end)


    describe("structured output", function()

        local SCHEMA = {
            type = "object",
            properties = { city = { type = "string" }, temp = { type = "integer" } },
            required = { "city", "temp" },
            additionalProperties = false,
        }

        it("repairs one invalid reply: data decoded, repairs == 1, the second request asks for the fix", function()
            local bad = '{"city": "Paris", "temp": "warm"}'
            fx:script({ content = bad }, { content = '{"city":"Paris","temp":21}' })
            local c = client()
            local m = llm.meter()
            local r, err = m:run(function()
                return c:chat{ messages = USER, schema = SCHEMA, schema_name = "weather" }
            end)
            assert.is_nil(err)
            assert.are.same({ city = "Paris", temp = 21 }, r.data)
            assert.are.equal(1, r.repairs)
            assert.are.equal(P.type, r.provider)
            assert.are.equal(5, r.usage.output)                -- 4 words, then 1
            assert.are.equal(2, m.calls)
            assert.are.equal(r.usage.input, m.input)
            assert.are.equal(2, #fx.requests)
            local _, first = P.system_of(fx.requests[1].json)
            local _, second = P.system_of(fx.requests[2].json)
            assert.are.same(USER, first)
            assert.are.equal(3, #second)
            assert.are.same(USER[1], second[1])
            assert.are.same({ role = "assistant", content = bad }, second[2])
            assert.are.equal("user", second[3].role)
            assert.matches("does not match the schema", second[3].content)
            assert.matches("$.temp", second[3].content, 1, true)
            if P.type == "openai" then
                for i = 1, 2 do
                    local rf = fx.requests[i].json.response_format
                    assert.are.equal("json_schema", rf.type)
                    assert.are.equal("weather", rf.json_schema.name)
                    assert.are.same(SCHEMA, rf.json_schema.schema)
                end
            else
                local sys = fx.requests[1].json.system
                assert.matches("JSON Schema", sys)
                assert.are.same(SCHEMA, json.decode(sys:match("\n(%b{})$")))
                assert.is_nil(fx.requests[1].json.response_format)
            end
        end)

        it("accepts JSON inside a code fence without a repair", function()
            fx:script{ content = 'Here it is:\n```json\n{"city": "Oslo", "temp": -3}\n```' }
            local r = assert(client():chat{ messages = USER, schema = SCHEMA })
            assert.are.same({ city = "Oslo", temp = -3 }, r.data)
            assert.are.equal(0, r.repairs)
            assert.are.equal(1, #fx.requests)
        end)

        it("gives kind parse when the reply stays invalid", function()
            fx:script({ content = "not json at all" }, { content = '{"city": 3}' })
            local r, err = client():chat{ messages = USER, schema = SCHEMA }
            assert.is_nil(r)
            assert.are.equal("parse", err.kind)
            assert.matches("after 1 repair", err.message)
            assert.are.equal('{"city": 3}', err.content)
            assert.are.equal(2, #fx.requests)
            assert.matches("not valid JSON", fx.requests[2].json.messages[#fx.requests[2].json.messages].content)
            -- repair = 0: no second round trip
            fx:reset()
            fx:script{ content = "nope" }
            r, err = client():chat{ messages = USER, schema = SCHEMA, repair = 0 }
            assert.is_nil(r)
            assert.are.equal("parse", err.kind)
            assert.are.equal(1, #fx.requests)
        end)
    end)


    describe("retries and keys", function()

        it("waits for retry-after on a 429, then succeeds", function()
            fx:script({ status = 429, retry_after = "0.3" }, { content = "finally" })
            local dt, r, err = timed(function() return client():chat{ messages = USER } end)
            assert.is_nil(err)
            assert.are.equal("finally", r.content)
            assert.are.equal(2, r.attempts)
            assert.are.equal(2, #fx.requests)
            assert.is_true(dt >= 0.28, "did not wait: " .. dt)
            assert.is_true(dt < 1.5, "took " .. dt)
            assert.is_true(fx.requests[2].time - fx.requests[1].time >= 0.28)
        end)

        it("rotates across three keys on 429s without sleeping", function()
            fx:script({ status = 429, retry_after = "5" }, { status = 429, retry_after = "5" }, { content = "third key" })
            local c = client{ api_key = false, api_keys = { K1, K2, K3 } }
            local dt, r, err = timed(function() return c:chat{ messages = USER } end)
            assert.is_nil(err)
            assert.are.equal("third key", r.content)
            assert.are.equal(3, r.attempts)
            assert.is_true(dt < 0.5, "slept between rotations: " .. dt)
            assert.are.equal(3, #fx.requests)
            local used = {}
            for i, rec in ipairs(fx.requests) do used[i] = P.key_of(rec) end
            local set = {}
            for _, k in ipairs(used) do set[k] = true end
            assert.are.same({ [K1] = true, [K2] = true, [K3] = true }, set)
            -- Two keys now rest for 5 s: the next call goes to the third.
            assert(c:chat{ messages = USER })
            assert.are.equal(used[3], P.key_of(fx.requests[4]))
        end)

        it("fails with kind auth after one request on a 401 (single key)", function()
            fx:script{ status = 401 }
            local c = client()
            local r, err = c:chat{ messages = USER }
            assert.is_nil(r)
            assert.are.equal("auth", err.kind)
            assert.are.equal(401, err.status)
            assert.are.equal(1, err.attempts)
            assert.are.equal(P.type, err.provider)
            assert.matches("API key", err.message)
            assert.are.equal(1, #fx.requests)
            -- A lone key is not disabled: the next call asks the server again.
            assert(c:chat{ messages = USER })
            assert.are.equal(2, #fx.requests)
        end)

        it("moves to the next key after a 401 when it has several", function()
            fx:script{ status = 401 }
            local c = client{ api_key = false, api_keys = { K1, K2 } }
            local r = assert(c:chat{ messages = USER })
            assert.are.equal(2, r.attempts)
            assert.are.equal(K1, P.key_of(fx.requests[1]))
            assert.are.equal(K2, P.key_of(fx.requests[2]))
            assert(c:chat{ messages = USER })
            assert.are.equal(K2, P.key_of(fx.requests[3]))     -- K1 stays disabled
        end)

        it("retries a 500 and succeeds", function()
            fx:script({ status = 500 }, { content = "recovered" })
            local r = assert(client():chat{ messages = USER })
            assert.are.equal("recovered", r.content)
            assert.are.equal(2, r.attempts)
            assert.are.equal(2, #fx.requests)
        end)

        it("gives up on 503s after retry.attempts tries", function()
            fx:script({ status = 503 }, { status = 503 }, { status = 503 }, { content = "too late" })
            local r, err = client():chat{ messages = USER, retry = { attempts = 3 } }
            assert.is_nil(r)
            assert.are.equal("http", err.kind)
            assert.are.equal(503, err.status)
            assert.are.equal(3, err.attempts)
            assert.are.equal(3, #fx.requests)
        end)

        it("does not retry other 4xx replies", function()
            fx:script({ status = 400, error = { message = "bad field" } }, { content = "x" })
            local r, err = client():chat{ messages = USER }
            assert.is_nil(r)
            assert.are.equal("http", err.kind)
            assert.are.equal(400, err.status)
            assert.matches("bad field", err.message)
            assert.are.equal(1, #fx.requests)
        end)

        it("fails at once when retry-after exceeds max_retry_after", function()
            fx:script({ status = 429, retry_after = "30" }, { content = "x" })
            local dt, r, err = timed(function()
                return client():chat{ messages = USER, retry = { max_retry_after = 2 } }
            end)
            assert.is_nil(r)
            assert.are.equal("rate_limited", err.kind)
            assert.are.equal(30, err.retry_after)
            assert.is_true(dt < 0.5, "took " .. dt)
            assert.are.equal(1, #fx.requests)
            assert.matches("rate", err.message)
        end)

        it("waits for the first key to come back when every key rests", function()
            fx:script({ status = 429, retry_after = "0.2" }, { status = 429, retry_after = "0.2" }, { content = "back" })
            local c = client{ api_key = false, api_keys = { K1, K2 } }
            local dt, r, err = timed(function() return c:chat{ messages = USER } end)
            assert.is_nil(err)
            assert.are.equal("back", r.content)
            assert.are.equal(3, #fx.requests)
            assert.is_true(dt >= 0.18, "did not wait for a key: " .. dt)
            assert.is_true(dt < 1, "took " .. dt)
        end)

        it("retries a 429 on a stream and reports a 401 on a stream as auth", function()
            fx:script({ status = 429, retry_after = "0.05" }, { content = "streamed at last" }, { status = 401 })
            local got = {}
            local c = client()
            local r = assert(c:chat{ messages = USER, stream = function(d) got[#got + 1] = d.text end })
            assert.are.equal("streamed at last", r.content)
            assert.are.equal(r.content, table.concat(got))
            assert.are.equal(2, r.attempts)
            local r2, err = c:chat{ messages = USER, stream = function() end }
            assert.is_nil(r2)
            assert.are.equal("auth", err.kind)
            assert.are.equal(401, err.status)
            assert.is_falsy(err.streamed)
            assert.are.equal(3, #fx.requests)
        end)

        if P.type == "openai" then
            it("does not retry a 429 for an exhausted quota", function()
                fx:script({ status = 429, error = { message = "You exceeded your current quota", code = "insufficient_quota",
                                                    type = "insufficient_quota" } }, { content = "x" })
                local r, err = client():chat{ messages = USER }
                assert.is_nil(r)
                assert.are.equal("rate_limited", err.kind)
                assert.is_true(err.quota)
                assert.are.equal(1, #fx.requests)
            end)
        end

        it("never puts a key in an error message", function()
            local c = client()
            fx:script{ status = 401, error = { message = "Incorrect API key provided: " .. KEY .. "." } }
            local _, err = c:chat{ messages = USER }
            assert.are.equal("auth", err.kind)
            assert.matches("Incorrect API key", err.message)
            assert.is_false(has(err.message, KEY))
            assert.is_false(has(tostring(err), KEY))
            assert.is_false(has(err.body, KEY))
            assert.is_true(has(err.message, keys.redact(KEY)))
            -- A body that is not the provider's JSON shows in the message, redacted too.
            fx:script{ status = 400, body = "upstream said: bad key " .. KEY }
            _, err = c:chat{ messages = USER }
            assert.are.equal("http", err.kind)
            assert.matches("upstream said", err.message)
            assert.is_false(has(err.message, KEY))
            assert.is_false(has(err.body, KEY))
            -- An error event in a stream.
            fx:script{ content = words(6), fault = "stream_error", after = P.lead + 1,
                       error = { message = "key " .. KEY .. " is overloaded" } }
            _, err = c:chat{ messages = USER, stream = function() end, retry = { attempts = 1 } }
            assert.are.equal("http", err.kind)
            assert.matches("overloaded", err.message)
            assert.is_false(has(err.message, KEY))
            assert.are.equal(3, #fx.requests)
        end)
    end)


    describe("error kinds", function()

        it("context_length for a prompt that is too long, without retries", function()
            fx:script(P.context_error)
            local r, err = client():chat{ messages = USER }
            assert.is_nil(r)
            assert.are.equal("context_length", err.kind)
            assert.are.equal(400, err.status)
            assert.matches("shorten", err.message)
            assert.are.equal(1, #fx.requests)
        end)

        it("content_filter when the output was filtered away", function()
            fx:script{ content = "", finish_reason = "content_filter" }
            local r, err = client():chat{ messages = USER }
            assert.is_nil(r)
            assert.are.equal("content_filter", err.kind)
            assert.are.equal("content_filter", err.result.finish_reason)
            assert.are.equal(1, #fx.requests)
            -- With some text left, it is a result, not an error.
            fx:script{ content = "Partial answer", finish_reason = "content_filter" }
            r = assert(client():chat{ messages = USER })
            assert.are.equal("content_filter", r.finish_reason)
            assert.are.equal("Partial answer", r.content)
        end)

        it("parse for a body that is not JSON, without retries", function()
            fx:script({ content = "hello", fault = "bad_json" }, { content = "x" })
            local r, err = client():chat{ messages = USER }
            assert.is_nil(r)
            assert.are.equal("parse", err.kind)
            assert.is_string(err.body)
            assert.are.equal(1, #fx.requests)
        end)

        it("timeout from opts.timeout with a stalled server, retried", function()
            local c = client{ headers = { ["x-fixture-fault"] = "stall", ["x-fixture-delay"] = "1" } }
            local dt, r, err = timed(function()
                return c:chat{ messages = USER, timeout = 0.15, retry = { attempts = 2 } }
            end)
            assert.is_nil(r)
            assert.are.equal("timeout", err.kind)
            assert.are.equal(2, err.attempts)
            assert.are.equal(2, #fx.requests)
            assert.is_true(dt >= 0.28 and dt < 0.9, "took " .. dt)
        end)

        it("timeout from a task deadline, without sleeping past it", function()
            local c = client{ headers = { ["x-fixture-fault"] = "stall", ["x-fixture-delay"] = "1" } }
            local dt, r, err = timed(sibyl.deadline, 0.25, function() return c:chat{ messages = USER } end)
            assert.is_nil(r)
            assert.are.equal("timeout", err.kind)
            assert.is_true(dt < 0.6, "took " .. dt)
        end)

        it("connect with err.streamed when the connection drops after deltas; no retry", function()
            fx:script({ content = words(8), fault = "reset", after = P.lead + 2 }, { content = "retried" })
            local got = {}
            local r, err = client():chat{ messages = USER, stream = function(d) got[#got + 1] = d.text end }
            assert.is_nil(r)
            assert.are.equal("connect", err.kind)
            assert.is_true(err.streamed)
            assert.are.same({ "w1", " w2" }, got)
            assert.are.equal("w1 w2", err.partial.content)
            assert.are.equal(1, err.attempts)
            assert.are.equal(1, #fx.requests)
            assert.are.equal(1, fx:pending())
        end)

        it("retries a stream that dropped before any delta", function()
            fx:script({ content = words(8), fault = "reset", after = P.lead }, { content = "second try" })
            local got = {}
            local r = assert(client():chat{ messages = USER, stream = function(d) got[#got + 1] = d.text end })
            assert.are.equal("second try", r.content)
            assert.are.equal("second try", table.concat(got))
            assert.are.equal(2, r.attempts)
            assert.are.equal(2, #fx.requests)
        end)

        it("retries an error event that came before any delta", function()
            fx:script({ content = words(4), fault = "stream_error", after = P.lead }, { content = "after the error" })
            local r = assert(client():chat{ messages = USER, stream = function() end })
            assert.are.equal("after the error", r.content)
            assert.are.equal(2, r.attempts)
        end)

        it("parse when a stream ends without its final event", function()
            fx:script{ content = words(6), fault = "truncate", after = P.lead + 2 }
            local got = 0
            local r, err = client():chat{ messages = USER, stream = function() got = got + 1 end }
            assert.is_nil(r)
            assert.are.equal("parse", err.kind)
            assert.is_true(err.streamed)
            assert.are.equal(2, got)
            assert.are.equal(1, #fx.requests)
        end)

        it("timeout in the middle of a stream is not retried once deltas arrived", function()
            fx:script({ content = words(6), fault = "stall", delay = 0.6, after = P.lead + 1 }, { content = "x" })
            local got = 0
            local r, err = client():chat{ messages = USER, timeout = 0.2, stream = function() got = got + 1 end }
            assert.is_nil(r)
            assert.are.equal("timeout", err.kind)
            assert.is_true(err.streamed)
            assert.are.equal(1, got)
            assert.are.equal(1, #fx.requests)
        end)

        it("connect when nothing listens, after retries", function()
            local probe = assert(fixture.start{ port = 0 })
            local url = P.type == "openai" and probe.base_url .. "/v1" or probe.base_url
            probe:close()
            local c = llm.client{ type = P.type, base_url = url, api_key = KEY, retry = FAST }
            local r, err = c:chat{ messages = USER, retry = { attempts = 2 } }
            assert.is_nil(r)
            assert.are.equal("connect", err.kind)
            assert.are.equal(2, err.attempts)
            assert.matches("^" .. P.type .. ": ", err.message)
        end)
    end)


    describe("cancellation", function()

        it("a stream callback that raises ends the call and drops the transfer", function()
            assert.is_truthy(eventually(function() return fx.server:inflight() == 0 end, 3))
            fx:script{ content = words(200), chunk_delay = 0.02 }      -- 4 s in all
            local n = 0
            local ok, e = pcall(function()
                return client():chat{ messages = USER, stream = function()
                    n = n + 1
                    if n == 3 then error("callback failed") end
                end }
            end)
            assert.is_false(ok)
            assert.matches("callback failed", tostring(e))
            assert.are.equal(3, n)
            assert.is_truthy(eventually(function() return fx.server:inflight() == 0 end, 0.5))
            assert.are.equal(1, #fx.requests)
        end)

        it("cancelling the task of a stalled stream ends it at once and leaves no operation behind", function()
            -- Stalled handlers of earlier tests end first, so the count of operations is steady.
            assert.is_truthy(eventually(function() return fx.server:inflight() == 0 end, 3))
            fx:script{ content = words(10), fault = "stall", delay = 0.3, after = P.lead + 2 }
            local c = client()
            assert(c:chat{ messages = USER })                    -- warm: a pooled connection is no op
            fx:reset()
            fx:script{ content = words(10), fault = "stall", delay = 0.3, after = P.lead + 2 }
            local io0 = sibyl.stats().io
            local got = 0
            local t = sibyl.spawn(function()
                return c:chat{ messages = USER, stream = function() got = got + 1 end }
            end)
            assert.is_truthy(eventually(function() return got == 2 end))
            sibyl.sleep(0.02)
            assert.are.equal("waiting", t:status())
            assert.is_true(sibyl.stats().io > io0)               -- the transfer is an operation
            assert.is_true(t:cancel())
            local dt, v, err = timed(t.wait, t)
            assert.is_nil(v)
            assert.are.equal("cancelled", err.kind)
            assert.is_true(dt < 0.05, "took " .. dt)
            assert.are.equal(2, got)
            assert.is_truthy(eventually(function() return fx.server:inflight() == 0 end))
            assert.is_truthy(eventually(function() return sibyl.stats().io <= io0 end))
            assert.are.equal(1, #fx.requests)
        end)

        it("cancelling mid-stream drops the connection: the server stops streaming", function()
            fx:script{ content = words(200), chunk_delay = 0.02 }      -- 4 s in all
            local got = 0
            local t = sibyl.spawn(function()
                return client():chat{ messages = USER, stream = function() got = got + 1 end }
            end)
            assert.is_truthy(eventually(function() return got >= 3 end))
            assert.are.equal(1, fx.server:inflight())
            assert.is_true(t:cancel())
            -- The handler notices at its next write, long before the stream's end.
            assert.is_truthy(eventually(function() return fx.server:inflight() == 0 end, 0.5))
            local n = got
            sibyl.sleep(0.05)
            assert.are.equal(n, got)
            assert.are.equal(1, #fx.requests)
        end)
    end)
end)

end
