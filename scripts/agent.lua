-- agent.lua -- a tiny tool-calling agent with two tools, a calculator and a
-- clock, that prints each step of the loop as it happens.
--
--   sibyl scripts/agent.lua --mock                 -- offline: a scripted model
--   OPENAI_API_KEY=sk-... sibyl scripts/agent.lua  -- a real model (any provider
--   sibyl scripts/agent.lua "What is 12.5 * 8?"    --  of doc/llm.md), your question
--
-- The loop: the model asks for tools, the agent checks the arguments
-- against each tool's JSON schema, runs the calls (at the same time when
-- there are several), sends the results back, and asks the model again
-- until it answers in text. A call with bad arguments is not run: the
-- model gets the validation errors and can fix its call.
--
-- To change it: add a tool to TOOLS (a name, a description, a JSON schema
-- for the arguments, and fn), change SYSTEM, or the limits in run_opts.

local sibyl = require "sibyl"
local llm = require "sibyl.llm"
local agent = require "sibyl.agent"


-- 1. The tools. fn(args, ctx) gets arguments that already match `parameters`;
-- it returns a string or a table (sent as JSON), or nil, err for a failure
-- the model should hear about.
local OPS = {
    add = function(a, b) return a + b end,
    sub = function(a, b) return a - b end,
    mul = function(a, b) return a * b end,
    div = function(a, b)
        if b == 0 then return nil, "division by zero" end
        return a / b
    end,
}

local TOOLS = {
    {
        name = "calculate",
        description = "Apply an arithmetic operation to two numbers.",
        parameters = {
            type = "object",
            properties = {
                a = { type = "number" },
                op = { type = "string", enum = { "add", "sub", "mul", "div" } },
                b = { type = "number" },
            },
            required = { "a", "op", "b" },
            additionalProperties = false,
        },
        fn = function(args)
            local value, err = OPS[args.op](args.a, args.b)
            if value == nil then return nil, err end
            return { result = value }
        end,
    },
    {
        name = "clock",
        description = "The current date and time in UTC.",
        parameters = { type = "object", properties = {} },
        fn = function()
            return { utc = os.date("!%Y-%m-%d %H:%M:%S") }
        end,
    },
}

local SYSTEM = "You are a careful assistant. Use the calculate tool for arithmetic "
    .. "and the clock tool for the time; never guess them."


-- 2. The model: a scripted one with --mock (what a model would do, offline),
-- else the default provider (OPENAI_API_KEY, ANTHROPIC_API_KEY, SIBYL_PROVIDER...).
local function scripted_model()
    -- The last tool result with a given call id, from the messages the agent sent.
    local function result_of(req, id)
        for _, m in ipairs(req.messages) do
            if m.role == "tool" and m.tool_call_id == id then return m.content end
        end
    end
    return llm.mock{ replies = {
        -- step 1: two calls at once; the first has a bad operation name
        { tool_calls = {
            { id = "call_1", name = "calculate", arguments = { a = 17, op = "times", b = 23 } },
            { id = "call_2", name = "clock", arguments = {} },
        } },
        -- step 2: the model read the validation error and fixes its call
        { tool_calls = { { id = "call_3", name = "calculate", arguments = { a = 17, op = "mul", b = 23 } } } },
        -- step 3: the answer, written from the tool results
        function(req)
            return ("17 x 23 = %s, and it is %s UTC."):format(
                result_of(req, "call_3").result, result_of(req, "call_2").utc)
        end,
    } }
end


local function print_event(ev)
    if ev.type == "step" then
        print(("-- step %d: asking the model"):format(ev.n))
    elseif ev.type == "tool_start" then
        print(("   tool %s(%s) [%s]"):format(ev.name, require("sibyl.json").encode(ev.arguments or {}), ev.id))
    elseif ev.type == "tool_end" then
        print(("   tool %s %s%s"):format(ev.name, ev.ok and "ok" or "error: ", ev.error or ""))
    end
end


-- 3. Run it.
local mock = false
local question = "What is 17 times 23, and what time is it?"
for _, a in ipairs(arg or {}) do
    if a == "--mock" then mock = true else question = a end
end

local a = agent.new{
    llm = mock and scripted_model() or nil,     -- nil: the default provider
    system = SYSTEM,
    tools = TOOLS,
}
local run_opts = {
    max_steps = 6,                                      -- model calls at most
    budget = { seconds = 60, tokens = 20000 },          -- stop a runaway loop
    on_event = print_event,
}

print("Q: " .. question)
local t0 = sibyl.now()
local r, err = a:run(question, run_opts)
if not r then
    print(("failed (%s): %s"):format(err.kind, err.message))
    os.exit(1)
end
print("A: " .. r.content)
print(("%d steps, %d tokens, %.2f s"):format(r.steps, r.usage.total, sibyl.now() - t0))
