-- self_healing.lua -- an agent that recovers from its own failures: after a
-- failed run, the healer looks at what went wrong (the error's kind, its
-- message, the transcript), changes the next attempt, and tries again.
--
--   sibyl scripts/self_healing.lua --mock                 -- offline: scripted failures
--   OPENAI_API_KEY=sk-... sibyl scripts/self_healing.lua  -- a real model (any provider
--   sibyl scripts/self_healing.lua "Your question"        --  of doc/llm.md)
--
-- With --mock the scripted model fails three ways before it answers:
--   1. a rate limit (429 with retry-after)  -> the healer waits it out
--   2. the "weather" tool keeps failing     -> the healer forbids that tool
--   3. an error it has no strategy for      -> the model diagnoses it and re-plans
-- and the script prints each recovery as it happens.
--
-- To change it: edit STRATEGIES (one function per error kind; each edits
-- the next attempt's `state` and returns what it did), the tools, or the
-- options passed to self_healing.new (max_attempts, fallback_model...).

local llm = require "sibyl.llm"
local agent = require "sibyl.agent"
local self_healing = require "sibyl.agent.self_healing"


-- 1. The tools: one that always breaks (a flaky API), one that works.
local TOOLS = {
    {
        name = "weather",
        description = "Today's weather for a city.",
        parameters = { type = "object", properties = { city = { type = "string" } }, required = { "city" } },
        fn = function() return nil, "weather service unavailable (503)" end,
    },
    {
        name = "almanac",
        description = "Typical weather for a city in the current month.",
        parameters = { type = "object", properties = { city = { type = "string" } }, required = { "city" } },
        fn = function(args) return { city = args.city, typical = "mild, 15 C, some rain" } end,
    },
}


-- 2. The strategies: start from the built-in ones and add or replace
-- entries. Here, an "http" error (not one with a built-in strategy) first
-- says so, then falls back to the built-in diagnose-and-re-plan.
local STRATEGIES = setmetatable({
    http = function(state, err)
        print("   (our own http strategy: handing over to the diagnosis)")
        return self_healing.strategies.default(state, err)
    end,
}, { __index = self_healing.strategies })


-- 3. The model: scripted with --mock, else the default provider.
local function scripted_model()
    local weather = { tool_calls = { { name = "weather", arguments = { city = "Lyon" } } } }
    return llm.mock{
        retry = { attempts = 1 },               -- let the healer see each failure
        replies = {
            -- attempt 1: a rate limit
            { error = { kind = "rate_limited", retry_after = 0.2, message = "429 Too Many Requests" } },
            -- attempt 2: the weather tool fails twice, then the step limit ends the run
            weather, weather, weather,
            -- attempt 3: the provider refuses the request
            { error = { kind = "http", status = 400, message = "request rejected by the gateway" } },
            -- the diagnosis the healer asks for
            "The gateway rejected the request; retry the same question and use the almanac tool.",
            -- attempt 4: works, without the forbidden tool
            { tool_calls = { { name = "almanac", arguments = { city = "Lyon" } } } },
            "Lyon today: probably mild, around 15 C with some rain (typical for the month).",
        },
    }
end


-- 4. What the healer did, as it happens.
local function print_event(ev)
    if ev.type == "attempt" then
        print(("-- attempt %d"):format(ev.attempt))
    elseif ev.type == "tool_end" then
        print(("   tool %s %s%s"):format(ev.name, ev.ok and "ok" or "error: ", ev.error or ""))
    elseif ev.type == "recovery" then
        print(("   failed (%s); healer: %s"):format(ev.kind, ev.action))
    end
end


-- 5. Run it.
local mock = false
local question = "What is the weather in Lyon today?"
for _, a in ipairs(arg or {}) do
    if a == "--mock" then mock = true else question = a end
end

local a = agent.new{
    llm = mock and scripted_model() or nil,     -- nil: the default provider
    system = "You are a helpful assistant. Use the tools; never guess.",
    tools = TOOLS,
}
local healer = self_healing.new{
    agent = a,
    strategies = STRATEGIES,
    max_attempts = 4,                           -- attempts in all
    max_steps = 3,                              -- model calls per attempt
    max_wait = 10,                              -- longest wait for a rate limit, in seconds
    on_event = print_event,
}

print("Q: " .. question)
local r, err = healer:run(question)
if not r then
    print(("gave up (%s): %s"):format(err.kind, err.message))
    os.exit(1)
end
print("A: " .. r.content)
print(("%d failed attempt(s) before this answer"):format(#r.attempts))
