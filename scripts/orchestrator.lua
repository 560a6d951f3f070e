-- orchestrator.lua -- one question, several specialist agents: route the
-- question to the agents that fit, run them at the same time, and merge
-- their answers into one, each claim tagged with the agent it came from.
--
--   sibyl scripts/orchestrator.lua --mock                     -- offline: a scripted model
--   OPENAI_API_KEY=sk-... sibyl scripts/orchestrator.lua "What time is it, and what is 3 * 7?"
--
-- Three agents:
--   docs   a RAG index over doc/ (orchestrator.rag_agent): answers with [n] citations
--   calc   a sibyl.agent with a calculate tool (orchestrator.agent_from)
--   clock  a plain function: the current time in UTC
-- Routing: RULES first (a Lua pattern or a function; the first match wins),
-- else the model picks agents from their descriptions (structured output;
-- names it makes up are dropped; if it fails, every agent runs).
--
-- To change it: add an agent to the list in build_agents (a name, a
-- description the router reads, run = function(task, ctx) returning text or
-- nil, err), add a rule to RULES, change TIMEOUT.

local sibyl = require "sibyl"
local llm = require "sibyl.llm"
local json = require "sibyl.json"
local agent = require "sibyl.agent"
local rag = require "sibyl.rag"
local orchestrator = require "sibyl.orchestrator"

local STORE = "/tmp/sibyl-orchestrator-doc.db"   -- the docs index (rebuilt incrementally)
local TIMEOUT = 30                               -- seconds per agent
local RULES = {
    -- "12.5 * 8", "3 + 4": arithmetic goes to the calculator alone
    { match = "%d+%.?%d*%s*[%+%-%*/x]%s*%d", agents = { "calc" } },
}


-- 1. The scripted models used by --mock. A reply can be a function of the
-- request, so one mock serves the router, the synthesis and the calculator.
local mock_orchestrator_model = llm.mock{ default = function(req)
    local prompt = req.messages[#req.messages].content
    if req.schema then                            -- the router: pick agents by keywords
        local task, picks = prompt:match("Task: (.-)\n") or prompt, {}
        if task:find("time") then picks[#picks + 1] = "clock" end
        if task:find("sibyl") or task:find("[Hh]ow") then picks[#picks + 1] = "docs" end
        if task:find("%d") then picks[#picks + 1] = "calc" end
        return json.encode{ agents = picks, reason = "picked by keywords (mock)" }
    end
    -- the synthesis: the first real line of each agent's part, tagged with
    -- its name (a part starts with "[name]" on a line of its own)
    local out = {}
    for name, body in prompt:gmatch("%[(%a[%w_]*)%]\n(.-)\n\n") do
        local line = body:match("\n%-%s+([^\n]+)") or body:match("^[^\n]+")   -- skip a header line
        out[#out + 1] = ("%s [%s]"):format(line, name)
    end
    if prompt:find("These agents failed") then out[#out + 1] = "(Some agents failed; that part is missing.)" end
    return table.concat(out, " ")
end }

local mock_calc_model = llm.mock{ default = function(req)
    local last = req.messages[#req.messages]
    if last.role == "tool" then return ("The result is %s."):format(last.content.result) end
    local a, op, b = last.content:match("(%d+%.?%d*)%s*([%+%-%*/x])%s*(%d+%.?%d*)")
    local ops = { ["+"] = "add", ["-"] = "sub", ["*"] = "mul", x = "mul", ["/"] = "div" }
    return { tool_calls = { { id = "c1", name = "calculate",
                              arguments = { a = tonumber(a), op = ops[op], b = tonumber(b) } } } }
end }


-- 2. The agents.
local function calculator(model)
    local OPS = { add = function(a, b) return a + b end, sub = function(a, b) return a - b end,
                  mul = function(a, b) return a * b end, div = function(a, b) return a / b end }
    local a = agent.new{
        llm = model,
        system = "Use the calculate tool for arithmetic; answer with the result in one sentence.",
        tools = { {
            name = "calculate", description = "Apply an arithmetic operation to two numbers.",
            parameters = { type = "object", required = { "a", "op", "b" }, properties = {
                a = { type = "number" }, b = { type = "number" },
                op = { type = "string", enum = { "add", "sub", "mul", "div" } } } },
            fn = function(args) return { result = OPS[args.op](args.a, args.b) } end,
        } },
    }
    return orchestrator.agent_from(a, { name = "calc", description = "Arithmetic on numbers in the question.",
                                        run_opts = { max_steps = 4 } })
end


local function build_agents(mock)
    assert(rag.index{ path = "doc", store = STORE, progress = false })
    return {
        orchestrator.rag_agent{ store = STORE, name = "docs", k = 3,
                                llm = mock and false or nil,       -- --mock: the extractive answer
                                description = "Sibyl's documentation: the runtime, LLM clients, RAG, agents." },
        calculator(mock and mock_calc_model or nil),
        { name = "clock", description = "The current date and time in UTC.",
          run = function() return "It is " .. os.date("!%Y-%m-%d %H:%M") .. " UTC." end },
    }
end


-- 3. Run one question and print how it went.
local function ask(o, question)
    print("Q: " .. question)
    local t0 = sibyl.now()
    local r, err = o:run(question)
    if not r then
        print(("failed (%s): %s"):format(err.kind, err.message))
        return
    end
    print(("   routed by %s to %s (%s)"):format(r.route.by, table.concat(r.routed, ", "), r.route.reason or ""))
    for _, p in ipairs(r.parts) do
        print(("   %-6s %s in %.2f s%s"):format(p.agent, p.ok and "ok" or "FAILED", p.seconds,
                                              p.error and (": " .. p.error) or ""))
    end
    print("A: " .. r.answer)
    for _, s in ipairs(r.sources) do
        print(("   [%s %d] %s:%d"):format(s.agent, s.n, s.path, s.line or 1))
    end
    print(("   %.2f s\n"):format(sibyl.now() - t0))
end


local mock, questions = false, {}
for _, a in ipairs(arg or {}) do
    if a == "--mock" then mock = true else questions[#questions + 1] = a end
end
if #questions == 0 then
    questions = { "What is 12.5 * 8?",                                   -- a rule: calc only
                  "What time is it, and how does sibyl.deadline work?" } -- the router: clock and docs
end

local o = orchestrator.new{
    llm = mock and mock_orchestrator_model or true,      -- true: the default provider
    agents = build_agents(mock),
    rules = RULES,
    timeout = TIMEOUT,
}
for _, q in ipairs(questions) do ask(o, q) end
