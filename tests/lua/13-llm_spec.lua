-- 13-llm_spec.lua -- sibyl.llm (stdlib/sibyl/llm/*.lua): chat, streaming,
-- tool calls, structured output, retries, key rotation, fallback, usage
-- meters, embeddings, configuration and the mock provider.
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

local KEY = "sk-specKEY-7f3a9c2e5b1d4f60"        -- distinctive: must never show in a message
local K1, K2, K3 = "sk-ring-aaaaaaaa1111", "sk-ring-bbbbbbbb2222", "sk-ring-cccccccc3333"
local QUESTION = "What is the weather in Paris?"  -- 6 words: the fixture counts words as tokens
local USER = { { role = "user", content = QUESTION } }
local FAST = { base = 0.01, max = 0.05 }         -- retry backoff for the spec

local WEATHER_TOOL = {
    name = "get_weather",
    description = "Current weather for a city",
    parameters = { type = "object", properties = { city = { type = "string" }, unit = { type = "string" } },
                   required = { "city" } },
}
local TIME_TOOL = { name = "get_time", description = "Local time", parameters = {
    type = "object", properties = { tz = { type = "string" } } } }


-- One entry per wire dialect: how to reach it on the fixture and how to read
-- its wire format back.
local DIALECTS = {
    {
        type = "openai",
        path = "/v1/chat/completions",
        base = function(fx) return fx.base_url .. "/v1" end,
        -- The key a recorded request carried.
        key_of = function(rec)
            local a = rec.headers["authorization"]
            return a and a:match("^Bearer (.+)$")
        end,
        -- The system text and the other messages of a recorded body.
        system_of = function(body)
            local m = body.messages
            if m[1] and m[1].role == "system" then
                local rest = {}
                for i = 2, #m do rest[#rest + 1] = m[i] end
                return m[1].content, rest
            end
            return nil, m
        end,
        lead = 1,               -- stream events before the first text delta (the role chunk)
        context_error = { status = 400, error = { message = "This model's maximum context length is "
            .. "128000 tokens. However, your messages resulted in 200000 tokens.", code = "context_length_exceeded" } },
    },
    {
        type = "anthropic",
        path = "/v1/messages",
        base = function(fx) return fx.base_url end,   -- the client adds /v1
        key_of = function(rec) return rec.headers["x-api-key"] end,
        system_of = function(body) return body.system, body.messages end,
        lead = 3,               -- message_start, content_block_start, ping
        context_error = { status = 400, error = { type = "invalid_request_error",
            message = "prompt is too long: 210000 tokens > 200000 maximum" } },
    },
}


local function copy(t)
    local out = {}
    for k, v in pairs(t or {}) do out[k] = v end
    return out
end


-- Does s contain needle (plain find)?
local function has(s, needle)
    return type(s) == "string" and s:find(needle, 1, true) ~= nil
end


local function words(n, word)
    local out = {}
    for i = 1, n do out[i] = (word or "w") .. i end
    return table.concat(out, " ")
end


local function cosine(a, b, n)
    local d, na, nb = 0, 0, 0
    for i = 0, n - 1 do
        d, na, nb = d + a[i] * b[i], na + a[i] * a[i], nb + b[i] * b[i]
    end
    return d / math.sqrt(na * nb)
end


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


describe("sibyl.llm fallback", function()

    local saved_retry

    before_each(function()
        saved_retry = llm.defaults.retry
    end)

    after_each(function()
        llm.reset()
        llm.defaults.retry = saved_retry
    end)

    local function configure(a_extra, more)
        local a = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, retry = { attempts = 1 } }
        for k, v in pairs(a_extra or {}) do a[k] = v end
        local conf = { providers = { a = a, b = { type = "anthropic", base_url = fx.base_url, api_key = KEY,
                                                  model = "claude-b", retry = FAST } },
                       default = "a", fallback = { "a", "b" } }
        for k, v in pairs(more or {}) do conf[k] = v end
        assert(llm.configure(conf))
    end

    it("falls back to the second provider when the first keeps failing", function()
        configure{ headers = { ["x-fixture-fault"] = "503" } }
        local r, err = llm.chat{ messages = USER }
        assert.is_nil(err)
        assert.are.equal("b", r.provider)
        assert.are.same({ "a" }, r.fallback_from)
        assert.are.equal("echo: " .. QUESTION, r.content)
        assert.are.equal(2, #fx.requests)
        assert.are.equal("/v1/chat/completions", fx.requests[1].path)
        assert.are.equal("/v1/messages", fx.requests[2].path)
        assert.are.equal("claude-b", fx.requests[2].json.model)       -- b's own model
    end)

    it("goes through a's retries first", function()
        configure({ headers = { ["x-fixture-fault"] = "500" }, retry = { attempts = 3, base = 0.01 } })
        local r = assert(llm.chat{ messages = USER })
        assert.are.equal("b", r.provider)
        assert.are.equal(4, #fx.requests)
    end)

    it("does not fall back on auth errors", function()
        configure{ headers = { ["x-fixture-fault"] = "401" } }
        local r, err = llm.chat{ messages = USER }
        assert.is_nil(r)
        assert.are.equal("auth", err.kind)
        assert.are.equal("a", err.provider)
        assert.are.equal(1, #fx.requests)
    end)

    it("does not fall back once deltas were streamed", function()
        configure{ headers = { ["x-fixture-fault"] = "reset", ["x-fixture-after"] = "3" } }
        local got = 0
        local r, err = llm.chat{ messages = USER, stream = function() got = got + 1 end }
        assert.is_nil(r)
        assert.are.equal("connect", err.kind)
        assert.is_true(err.streamed)
        assert.are.equal(2, got)
        assert.are.equal(1, #fx.requests)
    end)

    it("lists every provider tried when all fail", function()
        configure({ headers = { ["x-fixture-fault"] = "503" } })
        fx:script{ status = 529 }                                -- for b (a's fault header wins)
        local r, err = llm.chat{ messages = USER, retry = { attempts = 1 } }
        assert.is_nil(r)
        assert.are.equal("http", err.kind)
        assert.are.equal(529, err.status)
        assert.are.same({ "a", "b" }, err.tried)
        assert.are.equal(2, #fx.requests)
    end)

    it("honours fallback_on", function()
        configure({ headers = { ["x-fixture-fault"] = "503" } }, { fallback_on = { "rate_limited" } })
        local r, err = llm.chat{ messages = USER }
        assert.is_nil(r)
        assert.are.equal(503, err.status)
        assert.are.equal(1, #fx.requests)
        -- per call
        fx:reset()
        r = assert(llm.chat{ messages = USER, fallback_on = { "http" } })
        assert.are.equal("b", r.provider)
    end)

    it("takes a model per fallback entry, and per-call provider and fallback lists", function()
        configure({ headers = { ["x-fixture-fault"] = "503" } },
                  { fallback = { "a", { provider = "b", model = "claude-special" } } })
        local r = assert(llm.chat{ messages = USER })
        assert.are.equal("claude-special", fx.requests[2].json.model)
        assert.are.equal("claude-special", r.model)
        -- opts.provider as a client and opts.fallback as a list of clients
        fx:reset()
        local bad = llm.mock{ name = "flaky", replies = { { error = { kind = "http", status = 503 } } },
                              retry = { attempts = 1 } }
        local good = llm.mock{ name = "steady", replies = { "from steady" } }
        r = assert(llm.chat{ provider = bad, fallback = { good }, messages = USER })
        assert.are.equal("from steady", r.content)
        assert.are.equal("steady", r.provider)
        assert.are.same({ "flaky" }, r.fallback_from)
        assert.are.equal(0, #fx.requests)
    end)
end)


describe("sibyl.llm usage and cost", function()

    local function client(extra)
        local o = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, retry = FAST }
        for k, v in pairs(extra or {}) do o[k] = v end
        return llm.client(o)
    end

    after_each(function()
        llm.reset()
    end)

    it("a meter counts the calls made in fn and in the tasks it spawns", function()
        local c = client()
        local before = copy(llm.usage())
        local m = llm.meter()
        local results = {}
        local late
        local v = m:run(function(x)
            results[1] = assert(c:chat{ messages = USER })
            local t1 = sibyl.spawn(function() return assert(c:chat{ prompt = "one two" }) end)
            local t2 = sibyl.spawn(function()
                local inner = sibyl.spawn(function() return assert(c:chat{ prompt = "three" }) end)
                return inner:wait()
            end)
            results[2], results[3] = t1:wait(), t2:wait()
            late = sibyl.spawn(function() sibyl.sleep(0.02); return assert(c:chat{ prompt = "late" }) end)
            return x * 2
        end, 21)
        assert.are.equal(42, v)                                 -- run returns fn's results
        assert.are.equal(3, m.calls)
        results[4] = late:wait()                                -- spawned inside run: still counted
        local input, output = 0, 0
        for _, r in ipairs(results) do
            input, output = input + r.usage.input, output + r.usage.output
        end
        assert.are.equal(4, m.calls)
        assert.are.equal(6 + 2 + 1 + 1, m.input)
        assert.are.equal(input, m.input)
        assert.are.equal(output, m.output)
        assert.are.equal(4, m.by_model["gpt-4o-mini"].calls)
        -- A call outside the meter is not counted by it, but by the totals.
        assert(c:chat{ messages = USER })
        assert.are.equal(4, m.calls)
        local after = llm.usage()
        assert.are.equal(before.calls + 5, after.calls)
        assert.are.equal(before.input + input + 6, after.input)
        assert.matches("^sibyl.llm.meter %(4 calls, 10 in, %d+ out, %$0.000000%)$", tostring(m))
        m:reset()
        assert.are.equal(0, m.calls)
        assert.are.same({}, m.by_model)
    end)

    it("nested meters count into each enclosing meter", function()
        local c = client()
        local outer, inner = llm.meter(), llm.meter()
        outer:run(function()
            assert(c:chat{ prompt = "a" })
            inner:run(function()
                assert(c:chat{ prompt = "b c" })
                sibyl.spawn(function() assert(c:chat{ prompt = "d" }) end):wait()
            end)
            assert(c:chat{ prompt = "e" })
        end)
        assert.are.equal(4, outer.calls)
        assert.are.equal(2, inner.calls)
        assert.are.equal(5, outer.input)
        assert.are.equal(3, inner.input)
        -- an inner meter reused alone
        inner:run(function() assert(c:chat{ prompt = "f" }) end)
        assert.are.equal(3, inner.calls)
        assert.are.equal(4, outer.calls)
    end)

    it("computes the cost from the client's prices", function()
        local c = client{ model = "priced-model", prices = { ["priced-model"] = { input = 2, output = 10 } } }
        fx:script{ content = "one two three four" }
        local m = llm.meter()
        local r = m:run(function() return assert(c:chat{ messages = USER }) end)
        local want = (6 * 2 + 4 * 10) / 1e6
        assert.is_true(math.abs(r.usage.cost - want) < 1e-12)
        assert.is_true(math.abs(m.cost - want) < 1e-12)
        assert.is_true(math.abs(m.by_model["priced-model"].cost - want) < 1e-12)
        -- no price, no cost
        local r2 = assert(client{ model = "unpriced-model" }:chat{ messages = USER })
        assert.is_nil(r2.usage.cost)
    end)

    it("computes the cost from configured prices", function()
        assert(llm.configure{ providers = { main = { type = "openai", base_url = fx.base_url .. "/v1",
                                                     api_key = KEY, model = "conf-priced" } },
                              prices = { ["conf-priced"] = { input = 1, output = 3 } } })
        fx:script{ content = "two words" }
        local r = assert(llm.chat{ messages = USER })
        assert.is_true(math.abs(r.usage.cost - (6 + 2 * 3) / 1e6) < 1e-12)
        -- a client's own prices win
        local c = client{ model = "conf-priced", prices = { ["conf-priced"] = { input = 100, output = 0 } } }
        r = assert(c:chat{ messages = USER })
        assert.is_true(math.abs(r.usage.cost - 600 / 1e6) < 1e-12)
    end)

    it("forgets configured prices on llm.reset()", function()
        assert(llm.configure{ providers = { main = { type = "openai", base_url = fx.base_url .. "/v1",
                                                     api_key = KEY, model = "reset-priced" } },
                              prices = { ["reset-priced"] = { input = 1, output = 1 } } })
        assert.is_number(assert(llm.chat{ messages = USER }).usage.cost)
        llm.reset()
        local r = assert(client{ model = "reset-priced" }:chat{ messages = USER })
        assert.is_nil(r.usage.cost)
    end)

    it("counts embeddings as calls with input tokens", function()
        local c = client()
        local m = llm.meter()
        local vecs, info = m:run(function() return c:embed{ input = { "a b", "c" }, dimensions = 4 } end)
        assert.are.equal(2, #vecs)
        assert.are.equal(1, m.calls)
        assert.are.equal(3, m.input)
        assert.are.equal(3, info.usage.input)
        assert.are.equal(0, m.output)
    end)
end)


describe("sibyl.llm embeddings", function()

    local TEXTS = {
        "the cat sat on the mat", "a dog in the fog", "rain in spain", "hello world", "embeddings are vectors",
        "sibyl runs agents", "luajit is fast", "ten inputs in all", "batch of three", "the last one",
    }

    local function client(extra)
        local o = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, retry = FAST,
                    embed_model = "spec-embed" }
        for k, v in pairs(extra or {}) do o[k] = v end
        return llm.client(o)
    end

    it("embeds in batches with bounded concurrency, in input order, as base64 by default", function()
        for _ = 1, 4 do
            fx:script{ path = "/v1/embeddings", fault = "slow_first_byte", delay = 0.15 }
        end
        local progress = {}
        local vecs, info = client():embed{ input = TEXTS, batch_size = 3, concurrency = 2, dimensions = 8,
                                           progress = function(done, total)
                                               progress[#progress + 1] = done
                                               assert.are.equal(10, total)
                                           end }
        assert.is_table(vecs, tostring(info))
        assert.are.equal(10, #vecs)
        assert.are.equal(8, info.dims)
        assert.are.equal("spec-embed", info.model)
        assert.are.equal(4, #fx.requests)
        local sizes, seen = {}, {}
        for i, rec in ipairs(fx.requests) do
            assert.are.equal("/v1/embeddings", rec.path)
            assert.are.equal("base64", rec.json.encoding_format)
            assert.are.equal(8, rec.json.dimensions)
            assert.are.equal("spec-embed", rec.json.model)
            assert.are.equal("Bearer " .. KEY, rec.headers["authorization"])
            sizes[i] = #rec.json.input
            for _, t in ipairs(rec.json.input) do seen[#seen + 1] = t end
        end
        table.sort(sizes)
        assert.are.same({ 1, 3, 3, 3 }, sizes)
        table.sort(seen)
        local all = copy(TEXTS)
        table.sort(all)
        assert.are.same(all, seen)
        -- Two at a time: requests 1-2 together, 3-4 once a slot freed.
        local t = {}
        for i, rec in ipairs(fx.requests) do t[i] = rec.time end
        table.sort(t)
        assert.is_true(t[2] - t[1] < 0.1, "first two apart by " .. (t[2] - t[1]))
        assert.is_true(t[3] - t[1] >= 0.12, "third did not wait: " .. (t[3] - t[1]))
        for i, text in ipairs(TEXTS) do
            local want = fixture.embed(text, 8)
            for d = 1, 8 do
                assert.is_true(math.abs(vecs[i][d - 1] - want[d]) < 1e-6,
                               string.format("text %d dim %d: %g vs %g", i, d, vecs[i][d - 1], want[d]))
            end
        end
        assert.are.equal(4, #progress)
        for i = 2, #progress do assert.is_true(progress[i] > progress[i - 1]) end
        assert.are.equal(10, progress[4])
    end)

    it("decodes float lists too, and embeds a single string", function()
        local vecs, info = client():embed{ input = "hello world", encoding_format = "float", dimensions = 5 }
        assert.are.equal(1, #vecs)
        assert.are.equal(5, info.dims)
        assert.are.equal("float", fx.requests[1].json.encoding_format)
        local want = fixture.embed("hello world", 5)
        for d = 1, 5 do assert.is_true(math.abs(vecs[1][d - 1] - want[d]) < 1e-6) end
        local again = client():embed{ input = { "hello world", "goodbye moon" }, dimensions = 5 }
        assert.is_true(math.abs(cosine(vecs[1], again[1], 5) - 1) < 1e-6)
        assert.is_true(cosine(vecs[1], again[2], 5) < 0.999)
    end)

    it("retries a failed batch and fails with its error when it keeps failing", function()
        fx:script({ path = "/v1/embeddings", status = 500 })
        local vecs = client():embed{ input = TEXTS, batch_size = 5, dimensions = 4 }
        assert.are.equal(10, #vecs)
        assert.are.equal(3, #fx.requests)
        fx:reset()
        fx:script({ path = "/v1/embeddings", status = 400, error = { message = "input too odd" } })
        local v, err = client():embed{ input = TEXTS, batch_size = 10, dimensions = 4 }
        assert.is_nil(v)
        assert.are.equal("http", err.kind)
        assert.matches("input too odd", err.message)
        assert.are.equal(1, #fx.requests)
    end)

    it("starts no more batches once one failed", function()
        -- The first batch fails at once; the second, in flight beside it, ends later.
        fx:script({ path = "/v1/embeddings", status = 400 },
                  { path = "/v1/embeddings", fault = "slow_first_byte", delay = 0.1 })
        local calls = 0
        local v, err = client():embed{ input = TEXTS, batch_size = 1, concurrency = 2, dimensions = 4,
                                       progress = function() calls = calls + 1 end }
        assert.is_nil(v)
        assert.are.equal("http", err.kind)
        sibyl.sleep(0.25)                                  -- the other worker's batch ends
        assert.are.equal(2, #fx.requests)
        assert.are.equal(0, calls)                         -- no progress after the failure
    end)

    it("goes through llm.embed with the configured provider; Anthropic has no embeddings", function()
        assert(llm.configure{ providers = {
            main = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, embed_model = "conf-embed" },
            claude = { type = "anthropic", base_url = fx.base_url, api_key = KEY } } , default = "main" })
        local vecs, info = llm.embed{ input = { "one", "two" }, dimensions = 3 }
        llm.reset()
        assert.are.equal(2, #vecs)
        assert.are.equal("conf-embed", info.model)
        local c = llm.client{ type = "anthropic", base_url = fx.base_url, api_key = KEY }
        local v, err = c:embed{ input = { "x" } }
        assert.is_nil(v)
        assert.are.equal("config", err.kind)
        assert.matches("no embeddings", err.message)
        assert.are.equal(1, #fx.requests)
        assert.has_error(function() c:embed{ input = 42 } end)
    end)
end)


describe("sibyl.llm configuration", function()

    local saved_retry

    before_each(function()
        saved_retry = llm.defaults.retry
    end)

    after_each(function()
        llm.reset()
        llm.defaults.retry = saved_retry
    end)

    it("configures providers from a table", function()
        local ok, err = llm.configure{
            default = "b",
            providers = {
                a = { type = "openai", base_url = fx.base_url .. "/v1/", api_key = KEY, model = "model-a" },
                b = { type = "anthropic", base_url = fx.base_url, api_key = KEY, model = "model-b",
                      version = "2024-99-99", max_tokens = 77 },
            },
        }
        assert.is_nil(err)
        assert.is_true(ok)
        local a, b = assert(llm.provider("a")), assert(llm.provider("b"))
        assert.are.equal(b, assert(llm.provider()))
        assert.are.equal("a", a.name)
        assert.are.equal(fx.base_url .. "/v1", a.base_url)          -- trailing slash dropped
        assert.are.equal(fx.base_url .. "/v1", b.base_url)          -- /v1 added
        assert.is_false(has(tostring(a), KEY))
        assert.matches("1 keys", tostring(a))
        local r = assert(llm.chat{ messages = USER })
        assert.are.equal("b", r.provider)
        assert.are.equal("model-b", fx.requests[1].json.model)
        assert.are.equal(77, fx.requests[1].json.max_tokens)
        assert.are.equal("2024-99-99", fx.requests[1].headers["anthropic-version"])
        r = assert(llm.chat{ provider = "a", messages = USER })
        assert.are.equal("a", r.provider)
        assert.are.equal("model-a", fx.requests[2].json.model)
        r = assert(llm.chat{ provider = "a", model = "override", messages = USER })
        assert.are.equal("override", fx.requests[3].json.model)
    end)

    it("configures providers from a YAML file", function()
        local path = helpers.tmpfile(table.concat({
            "llm:",
            "  default: main",
            "  fallback: [main, backup]",
            "  providers:",
            "    main:",
            "      type: openai",
            "      base_url: " .. fx.base_url .. "/v1",
            "      api_key: ${SIBYL_SPEC_UNSET_VAR:-sk-yaml-0123456789}",
            "      model: yaml-model",
            "      headers: {x-fixture-fault: '503'}",
            "      retry: {attempts: 1}",
            "    backup:",
            "      type: anthropic",
            "      base_url: " .. fx.base_url,
            "      api_key: sk-ant-yaml-0123456789",
            "      model: yaml-claude",
            "  prices:",
            "    yaml-claude: {input: 1, output: 1}",
        }, "\n") .. "\n", ".yaml")
        finally(function() os.remove(path) end)
        local ok, err = llm.configure(path)
        assert.is_nil(err)
        assert.is_true(ok)
        local r = assert(llm.chat{ messages = USER })
        assert.are.equal("backup", r.provider)
        assert.are.same({ "main" }, r.fallback_from)
        assert.are.equal("Bearer sk-yaml-0123456789", fx.requests[1].headers["authorization"])
        assert.are.equal("yaml-model", fx.requests[1].json.model)
        assert.are.equal("sk-ant-yaml-0123456789", fx.requests[2].headers["x-api-key"])
        assert.are.equal("yaml-claude", r.model)
        assert.is_number(r.usage.cost)
        assert.are.equal(2, #fx.requests)
    end)

    it("returns kind config for a misconfiguration, with a clear message", function()
        local function fails(conf, pattern)
            local ok, err = llm.configure(conf)
            assert.is_nil(ok)
            assert.are.equal("config", err.kind)
            assert.matches(pattern, err.message)
        end
        fails({}, "`providers` must map names")
        fails({ providers = { x = { type = "gemini" } } }, 'provider "x": .*unknown provider type "gemini"')
        fails({ providers = { x = { type = "openai", api_key = KEY } }, default = "y" },
              'default provider "y" is not among the providers %(x%)')
        fails({ providers = { x = { type = "openai", api_key = KEY } }, fallback = { "x", "z" } },
              'fallback provider "z" is not configured')
        -- A failed configure keeps the previous configuration.
        assert(llm.configure{ providers = { only = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY } } })
        fails({ providers = 3 }, "providers")
        assert.are.equal("only", assert(llm.provider()).name)
        local c, err = llm.provider("nope")
        assert.is_nil(c)
        assert.are.equal("config", err.kind)
        assert.matches('no provider "nope" %(configured: only%)', err.message)
        local r
        r, err = llm.chat{ provider = "nope", messages = USER }
        assert.is_nil(r)
        assert.are.equal("config", err.kind)
        assert.has_error(function() llm.configure(42) end)
        assert.has_error(function() llm.client{ type = "nope" } end)
    end)

    it("reports io and parse errors of a YAML file", function()
        local ok, err = llm.configure("/nonexistent/sibyl-llm.yaml")
        assert.is_nil(ok)
        assert.are.equal("io", err.kind)
        local path = helpers.tmpfile("llm:\n  providers: [unclosed\n", ".yaml")
        finally(function() os.remove(path) end)
        ok, err = llm.configure(path)
        assert.is_nil(ok)
        assert.are.equal("parse", err.kind)
    end)

    it("llm.reset() forgets the configuration", function()
        assert(llm.configure{ providers = { only = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY } } })
        assert.is_table(llm.provider())
        llm.reset()
        local env_has_provider = false
        for _, v in ipairs{ "SIBYL_LLM_CONFIG", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY",
                            "ANTHROPIC_BASE_URL", "SIBYL_PROVIDER" } do
            if (os.getenv(v) or "") ~= "" then env_has_provider = true end
        end
        if env_has_provider then
            pending("the environment configures a provider")
            return
        end
        local c, err = llm.provider()
        assert.is_nil(c)
        assert.are.equal("config", err.kind)
        assert.matches("no provider configured", err.message)
        local r
        r, err = llm.chat{ messages = USER }
        assert.is_nil(r)
        assert.are.equal("config", err.kind)
        assert.are.equal(0, #fx.requests)
    end)

    it("a configured retry applies to the configured providers; a provider's own wins", function()
        local before = llm.defaults.retry
        local flaky = { ["x-fixture-fault"] = "500" }
        assert(llm.configure{ retry = { attempts = 2, base = 0.01 }, providers = {
            main = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, headers = flaky },
            own = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, headers = flaky,
                    retry = { attempts = 3 } } } })
        assert.are.equal(before, llm.defaults.retry)              -- the module defaults stay
        local r, err = llm.chat{ provider = "main", messages = USER }
        assert.is_nil(r)
        assert.are.equal(2, err.attempts)
        r, err = llm.chat{ provider = "own", messages = USER }
        assert.is_nil(r)
        assert.are.equal(3, err.attempts)
        assert.are.equal(5, #fx.requests)
        -- A client made apart from the configuration keeps the defaults.
        local c = llm.client{ type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, headers = flaky,
                              retry = { base = 0.01 } }
        r, err = c:chat{ messages = USER }
        assert.is_nil(r)
        assert.are.equal(before.attempts, err.attempts)
    end)
end)


describe("sibyl.llm mock provider", function()

    it("replays scripted replies in order, then answers 'mock reply to: ...'", function()
        local m = llm.mock{ replies = { "first", { content = "second", usage = { output = 7 } } } }
        assert.are.equal(2, m:pending())
        local r1 = assert(llm.chat{ provider = m, messages = USER })
        local r2 = assert(m:chat{ messages = USER, model = "other-model" })
        local r3 = assert(m:chat{ messages = { { role = "user", content = "earlier" }, { role = "assistant", content = "x" },
                                              { role = "user", content = "last question" } } })
        assert.are.equal("first", r1.content)
        assert.are.equal("mock", r1.provider)
        assert.are.equal("mock-model", r1.model)
        assert.are.equal("stop", r1.finish_reason)
        assert.are.equal(6, r1.usage.input)
        assert.are.equal(1, r1.usage.output)
        assert.are.equal("second", r2.content)
        assert.are.equal(7, r2.usage.output)
        assert.are.equal("other-model", r2.model)
        assert.are.equal("mock reply to: last question", r3.content)
        assert.are.equal(0, m:pending())
        assert.are.equal(3, #m.requests)
        assert.are.same(USER, m.requests[1].messages)
        assert.are.equal("other-model", m.requests[2].model)
        m:script("more")
        assert.are.equal("more", assert(m:chat{ messages = USER }).content)
        assert.are.equal(0, #fx.requests)
    end)

    it("takes functions and a default reply", function()
        local m = llm.mock{ default = function(req) return "you said " .. #req.messages .. " things" end,
                            replies = { function(req) return { content = req.messages[1].content:upper() } end } }
        assert.are.equal("WHAT IS THE WEATHER IN PARIS?", assert(m:chat{ messages = USER }).content)
        assert.are.equal("you said 1 things", assert(m:chat{ messages = USER }).content)
    end)

    it("sends scripted errors through retries", function()
        local m = llm.mock{ retry = FAST, replies = {
            { error = { kind = "http", status = 503, message = "busy" } },
            { error = { kind = "rate_limited", retry_after = 0.1 } },
            "at last",
            { error = { kind = "auth", status = 401 } },
            "unused",
        } }
        local dt, r = timed(function() return assert(m:chat{ messages = USER }) end)
        assert.are.equal("at last", r.content)
        assert.are.equal(3, r.attempts)
        assert.is_true(dt >= 0.09, "retry_after not honoured: " .. dt)
        local r2, err = m:chat{ messages = USER }
        assert.is_nil(r2)
        assert.are.equal("auth", err.kind)
        assert.are.equal(1, err.attempts)
        assert.are.equal(4, #m.requests)
        assert.are.equal(1, m:pending())
    end)

    it("streams words and stops early", function()
        local m = llm.mock{ replies = { "alpha beta gamma delta", "one two three four" } }
        local got = {}
        local r = assert(m:chat{ messages = USER, stream = function(d) got[#got + 1] = d.text end })
        assert.are.same({ "alpha ", "beta ", "gamma ", "delta" }, got)
        assert.are.equal(table.concat(got), r.content)
        local n = 0
        r = assert(m:chat{ messages = USER, stream = function() n = n + 1; return n < 2 end })
        assert.are.equal(2, n)
        assert.are.equal("stopped", r.finish_reason)
        assert.are.equal("one two ", r.content)                -- what was delivered
        assert.are.equal(2, r.usage.output)
    end)

    it("returns tool calls, streamed or not", function()
        local call = { name = "get_weather", arguments = { city = "Paris" } }
        local m = llm.mock{ replies = { { tool_calls = { call } }, { tool_calls = { call } } } }
        local r = assert(m:chat{ messages = USER, tools = { WEATHER_TOOL } })
        assert.are.equal("tool_calls", r.finish_reason)
        assert.are.equal("get_weather", r.tool_calls[1].name)
        assert.are.same({ city = "Paris" }, r.tool_calls[1].arguments)
        assert.are.equal("call_1", r.tool_calls[1].id)
        local seen
        r = assert(m:chat{ messages = USER, stream = function(d) seen = d end })
        assert.are.equal("tool_call", seen.type)
        assert.are.equal(r.tool_calls[1].raw_arguments, seen.partial)
    end)

    it("repairs structured output", function()
        local m = llm.mock{ replies = { '{"n": "one"}', '{"n": 1}' } }
        local r = assert(m:chat{ messages = USER, schema = { type = "object", properties = { n = { type = "number" } },
                                                           required = { "n" } } })
        assert.are.same({ n = 1 }, r.data)
        assert.are.equal(1, r.repairs)
        assert.are.equal(2, #m.requests)
        assert.matches("%$%.n", m.requests[2].messages[3].content)
    end)

    it("embeds deterministically", function()
        local m = llm.mock{ dims = 16 }
        local a, info = m:embed{ input = { "red apple", "green apple", "quantum physics", "red apple" } }
        assert.are.equal(16, info.dims)
        assert.are.equal("mock-embedding", info.model)
        assert.are.equal(4, #a)
        local want = mock.embed_text("red apple", 16)
        for d = 0, 15 do assert.are.equal(want[d], a[1][d]) end
        assert.is_true(math.abs(cosine(a[1], a[4], 16) - 1) < 1e-6)
        assert.is_true(math.abs(cosine(a[1], a[1], 16) - 1) < 1e-6)    -- unit vectors
        assert.is_true(cosine(a[1], a[2], 16) > cosine(a[1], a[3], 16))
        local b = m:embed{ input = { "red apple" }, dimensions = 4 }
        assert.are.equal(1, #b)
        assert.are.equal(2, #m.requests)
    end)

    it("is configured like any provider", function()
        finally(function() llm.reset() end)
        assert(llm.configure{ providers = { fake = { type = "mock", model = "fake-1", replies = { "configured" } } } })
        local r = assert(llm.chat{ messages = USER })
        assert.are.equal("configured", r.content)
        assert.are.equal("fake", r.provider)
        assert.are.equal("fake-1", r.model)
    end)
end)


-- Configuration from the environment: a child sibyl process, since the
-- environment is read by the process itself.
describe("sibyl.llm configuration from the environment", function()
    local function child(env, script)
        local path = helpers.tmpfile(script, ".lua")
        local parts = {}
        for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. helpers.shell_quote(v) end
        local cmd = "env -u OPENAI_API_KEY -u OPENAI_BASE_URL -u ANTHROPIC_API_KEY -u ANTHROPIC_BASE_URL "
            .. "-u SIBYL_PROVIDER -u SIBYL_MODEL -u SIBYL_LLM_CONFIG " .. table.concat(parts, " ") .. " "
            .. helpers.shell_quote(helpers.sibyl_bin) .. " " .. path .. " 2>&1"
        local p = assert(io.popen(cmd))
        local out = p:read("*a")
        p:close()
        os.remove(path)
        return out
    end

    -- The child starts the fixture on a port the parent picked, then calls
    -- llm.chat with nothing configured.
    local SCRIPT = [[
        package.path = "tests/fixtures/?.lua;" .. package.path
        local llm = require "sibyl.llm"
        local fx = assert(require("llm_server").start{ port = tonumber(os.getenv("FX_PORT")) })
        local r, err = llm.chat{ prompt = "hello there" }
        if r then
            local rq = fx.requests[1]
            print(r.provider, r.model, r.content, rq and (rq.headers.authorization or rq.headers["x-api-key"]) or "-")
        else
            print("ERR", err.kind, err.message)
        end
        fx:close()
    ]]

    local function free_port()
        local s = assert(server.listen{ port = 0, routes = {} })
        local port = s.port
        s:close()
        return tostring(port)
    end

    it("OPENAI_BASE_URL, OPENAI_API_KEY and SIBYL_MODEL make the default provider", function()
        local port = free_port()
        local out = child({ FX_PORT = port, OPENAI_BASE_URL = "http://127.0.0.1:" .. port .. "/v1",
                            OPENAI_API_KEY = "sk-env-1", SIBYL_MODEL = "env-model" }, SCRIPT)
        assert.are.equal("openai\tenv-model\techo: hello there\tBearer sk-env-1\n", out)
    end)

    it("ANTHROPIC_* with SIBYL_PROVIDER picks Anthropic", function()
        local port = free_port()
        local out = child({ FX_PORT = port, ANTHROPIC_BASE_URL = "http://127.0.0.1:" .. port,
                            ANTHROPIC_API_KEY = "sk-ant-env", OPENAI_API_KEY = "sk-unused",
                            SIBYL_PROVIDER = "anthropic" }, SCRIPT)
        assert.are.equal("anthropic\tclaude-haiku-4-5\techo: hello there\tsk-ant-env\n", out)
    end)

    it("SIBYL_PROVIDER=mock works offline", function()
        local out = child({ FX_PORT = free_port(), SIBYL_PROVIDER = "mock" }, SCRIPT)
        assert.matches("^mock\tmock%-model\tmock reply to: hello there", out)
    end)

    it("nothing configured is kind config, naming the variables to set", function()
        local out = child({ FX_PORT = free_port() }, SCRIPT)
        assert.matches("^ERR\tconfig\t", out)
        assert.matches("OPENAI_API_KEY", out)
        assert.matches("doc/llm.md", out)
    end)
end)


describe("sibyl.llm pacing", function()

    it("rpm spaces calls out once the burst is spent", function()
        local m = llm.client{ type = "mock", rpm = 600, pacing_burst = 0.1 }   -- 10 calls/s, 1 at once
        local t0 = sibyl.now()
        for _ = 1, 5 do assert(m:chat{ prompt = "hi" }) end
        local took = sibyl.now() - t0
        assert.is_true(took >= 0.35 and took < 2, "5 calls at 10/s took " .. took)
    end)

    it("key_rpm paces each key of the ring on its own", function()
        local fx = assert(fixture.start{ port = 0 })
        finally(function() fx:close() end)
        local c = llm.client{ type = "openai", base_url = fx.base_url .. "/v1", api_keys = { K1, K2 },
                              key_rpm = 600, pacing_burst = 0.1 }
        local t0 = sibyl.now()
        for _ = 1, 6 do assert(c:chat{ prompt = "hi" }) end
        local took = sibyl.now() - t0
        -- 3 calls per key at 10/s per key: about 0.2 s; one shared bucket would take 0.5 s
        assert.is_true(took >= 0.15 and took < 0.45, "6 calls over 2 keys took " .. took)
        local used = {}
        for _, rq in ipairs(fx.requests) do
            used[rq.headers.authorization] = (used[rq.headers.authorization] or 0) + 1
        end
        assert.are.equal(3, used["Bearer " .. K1])
        assert.are.equal(3, used["Bearer " .. K2])
    end)

    it("tpm waits for the tokens a call will use and refunds what it did not", function()
        local m = llm.mock{ replies = { "one", "two" } }
        m.bucket = keys.bucket{ tpm = 6000, burst_seconds = 0.1 }   -- 100 tokens/s, 10 at once
        local before = m.bucket:stats().tokens_available
        local t0 = sibyl.now()
        assert(m:chat{ prompt = "hi", max_tokens = 20 })           -- estimate 20: waits ~0.1 s
        local took = sibyl.now() - t0
        assert.is_true(took >= 0.05, "took " .. took)
        -- the mock used 2 tokens (1 in, 1 out): 18 of the 20 came back, filling
        -- the bucket again (without the refund it would hold about 0)
        assert.is_true(m.bucket:stats().tokens_available >= before - 1)
    end)
end)
