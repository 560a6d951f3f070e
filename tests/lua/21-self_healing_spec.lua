-- 21-self_healing_spec.lua -- sibyl.agent.self_healing
-- (stdlib/sibyl/agent/self_healing.lua): retrying an agent or a function
-- after a failure with a strategy per error kind -- waiting out a rate limit,
-- summarizing an overflowing history, cooling down a bad JSON reply,
-- switching model after a timeout, forbidding a failing tool, diagnosing an
-- unknown error -- and giving up with every attempt attached.
--
-- The model is llm.mock (scripted replies, offline) with retries off, so a
-- scripted error reaches the healer on the first try.

local sibyl = require "sibyl"
local llm = require "sibyl.llm"
local agent = require "sibyl.agent"
local healing = require "sibyl.agent.self_healing"


local function mock(replies)
    return llm.mock{ retry = { attempts = 1 }, replies = replies }
end


-- Collects events; `of(type)` lists those of one type.
local function recorder()
    local evs = {}
    local function of(t)
        local out = {}
        for _, ev in ipairs(evs) do if ev.type == t then out[#out + 1] = ev end end
        return out
    end
    return evs, function(ev) evs[#evs + 1] = ev end, of
end


local function user_text(req)
    local msgs = req.messages
    return msgs[#msgs].content
end


describe("sibyl.agent.self_healing", function()

    it("waits out a rate limit (retry_after) and succeeds; logs the recovery in events and trace", function()
        local m = mock{ { error = { kind = "rate_limited", retry_after = 0.1 } }, "after the wait" }
        local a = agent.new{ llm = m, system = "You are a test." }
        local _, on_event, of = recorder()
        local t0 = sibyl.now()
        local r, err = healing.execute_with_recovery(a, "hello", { on_event = on_event })
        assert.is_nil(err)
        assert.are.equal("after the wait", r.content)
        assert.is_true(sibyl.now() - t0 >= 0.09, "waited")
        assert.are.equal(1, #r.attempts)
        assert.are.equal("rate_limited", r.attempts[1].kind)
        assert.matches("waited 0.1 s", r.attempts[1].action, 1, true)
        local recs = of("recovery")
        assert.are.equal(1, #recs)
        assert.are.same({ 1, "rate_limited" }, { recs[1].attempt, recs[1].kind })
        assert.are.equal(2, #of("attempt"))
        local found
        for _, span in ipairs(r.trace) do if span.name == "recovery" then found = span end end
        assert.is_truthy(found)
        assert.are.equal(r.attempts[1].action, found.action)
        -- the failed attempt did not leave a second copy of the question in memory
        assert.are.equal(2, #a.messages)
        assert.are.same({ "user", "hello" }, { a.messages[1].role, a.messages[1].content })
        -- max_wait bounds the wait
        m:script({ error = { kind = "rate_limited", retry_after = 50 } }, "capped")
        t0 = sibyl.now()
        r = assert(healing.execute_with_recovery(a, "again", { max_wait = 0.05 }))
        assert.is_true(sibyl.now() - t0 < 1)
        assert.matches("capped by max_wait", r.attempts[1].action, 1, true)
    end)

    it("summarizes the history after a context_length error; the next attempt's messages are shorter", function()
        local m = mock{ { error = { kind = "context_length", status = 400, message = "prompt is too long" } },
                        "SUMMARY: the user likes long talks.", "short answer" }
        local a = agent.new{ llm = m, system = "Be brief." }
        for i = 1, 6 do
            a.messages[#a.messages + 1] = { role = i % 2 == 1 and "user" or "assistant",
                                            content = ("earlier message %d "):format(i):rep(50) }
        end
        local r = assert(healing.execute_with_recovery(a, "the question"))
        assert.are.equal("short answer", r.content)
        assert.are.equal(3, #m.requests)
        local first, summary, second = m.requests[1], m.requests[2], m.requests[3]
        assert.are.equal(7, #first.messages)
        assert.matches("Summarize the conversation", user_text(summary), 1, true)
        assert.is_nil(summary.tools)
        assert.are.equal(2, #second.messages)
        assert.matches("SUMMARY: the user likes long talks.", second.messages[1].content, 1, true)
        assert.are.equal("the question", user_text(second))
        assert.are.equal("Be brief.", second.system)                 -- the system prompt stays
        assert.matches("summarized 6 earlier messages", r.attempts[1].action, 1, true)
        assert.are.equal(3, #a.messages)                             -- the memory is now the summary
        -- no history at all and a long input: the input is cut
        m:script({ error = { kind = "context_length" } }, "ok")
        a:reset()
        r = assert(healing.execute_with_recovery(a, ("x"):rep(1000), { max_input_chars = 100 }))
        assert.matches("cut the input from 1000", r.attempts[1].action, 1, true)
        assert.is_true(#user_text(m.requests[5]) < 200)
    end)

    it("lowers the temperature to 0 and puts the parse error in the prompt after a bad JSON reply", function()
        local SCHEMA = { type = "object", properties = { city = { type = "string" } }, required = { "city" } }
        local m = mock{ "this is not JSON at all", '{"city": "Paris"}' }
        local seen = {}
        local function ask(input, state)
            seen[#seen + 1] = state.temperature
            return m:chat{ messages = { { role = "user", content = input } }, schema = SCHEMA, repair = 0,
                           temperature = state.temperature }
        end
        local r = assert(healing.execute_with_recovery(ask, "Capital of France as JSON?", { temperature = 0.9 }))
        assert.are.equal("Paris", r.data.city)
        assert.are.same({ 0.9, 0 }, seen)
        assert.are.equal(0.9, m.requests[1].temperature)
        assert.are.equal(0, m.requests[2].temperature)
        local prompt = user_text(m.requests[2])
        assert.matches("Capital of France as JSON?", prompt, 1, true)
        assert.matches("could not be used", prompt, 1, true)
        assert.matches(r.attempts[1].message, prompt, 1, true)      -- the error text itself
        assert.are.equal("parse", r.attempts[1].kind)
    end)

    it("forbids a tool that keeps failing and tells the model; restores the agent's tools afterwards", function()
        local calls = 0
        local tools = {
            { name = "flaky", description = "Always breaks", fn = function() calls = calls + 1; error("disk on fire") end },
            { name = "steady", description = "Works", fn = function() return "fine" end },
        }
        local tc = { tool_calls = { { name = "flaky", arguments = {} } } }
        local m = mock{ tc, tc, tc, "done without flaky" }
        local a = agent.new{ llm = m, system = "Use tools.", tools = tools }
        local r = assert(healing.execute_with_recovery(a, "work", { max_steps = 3 }))
        assert.are.equal("done without flaky", r.content)
        assert.are.equal(2, calls)
        assert.are.equal("max_steps", r.attempts[1].kind)
        assert.matches("forbade the failing tool flaky", r.attempts[1].action, 1, true)
        local req = m.requests[4]
        assert.are.equal(1, #req.tools)
        assert.are.equal("steady", req.tools[1].name)
        assert.matches("flaky is failing", req.system, 1, true)
        -- restored
        assert.are.equal(2, #a.tools)
        assert.are.equal("Use tools.", a.system)
        assert.is_truthy(a.by_name.flaky)
    end)

    it("asks the model to diagnose an unknown error and adds its plan to the next input", function()
        local m = mock{ { error = { kind = "http", status = 400, message = "weird upstream refusal" } },
                        "Plan: ask for less.", "recovered" }
        local a = agent.new{ llm = m }
        local r = assert(healing.execute_with_recovery(a, "do the thing"))
        assert.are.equal("recovered", r.content)
        local diag = user_text(m.requests[2])
        assert.matches("weird upstream refusal", diag, 1, true)
        assert.matches("Task: do the thing", diag, 1, true)
        local next_input = user_text(m.requests[3])
        assert.matches("^do the thing", next_input)
        assert.matches("Plan for this attempt: Plan: ask for less.", next_input, 1, true)
        assert.matches("diagnose", r.attempts[1].action, 1, true)
    end)

    it("switches to opts.fallback_model after a timeout, else doubles budget.seconds", function()
        local m = mock{ { error = { kind = "timeout" } }, { error = { kind = "timeout" } }, "fast enough" }
        local a = agent.new{ llm = m, model = "big-model" }
        local r = assert(healing.execute_with_recovery(a, "hurry", { fallback_model = "small-model",
                                                                     budget = { seconds = 5 } }))
        assert.are.equal("fast enough", r.content)
        assert.are.same({ "big-model", "small-model", "small-model" },
                        { m.requests[1].model, m.requests[2].model, m.requests[3].model })
        assert.matches("switched to the faster model small%-model", r.attempts[1].action)
        assert.matches("extended budget.seconds to 10", r.attempts[2].action, 1, true)
        assert.are.equal("big-model", a.model)
    end)

    it("gives up after max_attempts with every attempt's error attached; raise = true raises it", function()
        local function always(kind)
            return { error = { kind = "rate_limited", retry_after = 0.01, message = kind } }
        end
        local m = mock{ always("one"), always("two"), always("three") }
        local h = healing.new{ agent = agent.new{ llm = m }, max_attempts = 3 }
        local r, err = h:run("never works")
        assert.is_nil(r)
        assert.are.equal("rate_limited", err.kind)
        assert.are.equal(3, #err.attempts)
        for i, word in ipairs{ "one", "two", "three" } do
            assert.are.equal("rate_limited", err.attempts[i].kind)
            assert.matches(word, err.attempts[i].message, 1, true)
        end
        assert.is_truthy(err.attempts[1].action)
        assert.is_nil(err.attempts[3].action)                         -- no recovery after the last
        assert.matches("gave up after 3 attempts", err.message, 1, true)
        assert.matches("1) rate_limited", err.message, 1, true)
        assert.matches("3) rate_limited", err.message, 1, true)
        assert.are.equal("rate_limited", err.cause.kind)
        assert.is_table(err.transcript)
        -- raise = true
        m:script(always("a"), always("b"))
        local ok, e = pcall(healing.execute_with_recovery, agent.new{ llm = m }, "x", { max_attempts = 2, raise = true })
        assert.is_false(ok)
        assert.are.equal("rate_limited", e.kind)
        assert.are.equal(2, #e.attempts)
    end)

    it("stops at once when a strategy gives up (auth), and takes user strategies", function()
        local m = mock{ { error = { kind = "auth", status = 401 } }, "unused" }
        local r, err = healing.execute_with_recovery(agent.new{ llm = m }, "x")
        assert.is_nil(r)
        assert.are.equal("auth", err.kind)
        assert.are.equal(1, #err.attempts)
        assert.matches("gave up: the API key was refused", err.attempts[1].action, 1, true)
        assert.are.equal(1, m:pending())
        -- a user strategy for one kind, in a copy of the table
        local mine = setmetatable({ http = function(state, e)
            state:note_input("(second try)")
            return "custom: noted " .. e.kind
        end }, { __index = healing.strategies })
        m = mock{ { error = { kind = "http", status = 400 } }, "ok" }
        r = assert(healing.execute_with_recovery(agent.new{ llm = m }, "y", { strategies = mine }))
        assert.are.equal("custom: noted http", r.attempts[1].action)
        assert.are.equal("y\n\n(second try)", user_text(m.requests[2]))
        -- misuse raises
        assert.has_error(function() healing.execute_with_recovery(42, "x") end)
        assert.has_error(function() healing.new{} end)
    end)
end)
