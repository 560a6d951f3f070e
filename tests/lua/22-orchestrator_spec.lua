-- 22-orchestrator_spec.lua -- sibyl.orchestrator (stdlib/sibyl/orchestrator.lua):
-- routing by rules, by the LLM router (structured output) and by a function;
-- agents running in parallel under a deadline; a failed agent reported as
-- missing; all agents failing; synthesis with and without the model; the
-- agent_from and rag_agent wrappers.
--
-- The model is llm.mock (scripted replies, offline). Agents are plain
-- functions that sleep a few tenths of a second at most.

local sibyl = require "sibyl"
local llm = require "sibyl.llm"
local agent = require "sibyl.agent"
local rag = require "sibyl.rag"
local orchestrator = require "sibyl.orchestrator"
require "helpers"


-- An agent that records its calls, sleeps `secs` and answers `text`.
local function fake(name, text, secs, calls)
    return {
        name = name, description = "The " .. name .. " agent",
        run = function(task, ctx)
            if calls then calls[#calls + 1] = { name = name, task = task, ctx = ctx } end
            if secs then sibyl.sleep(secs) end
            return text
        end,
    }
end


local function failing(name, kind, message)
    return { name = name, description = "The " .. name .. " agent",
             run = function() return nil, sibyl.error(kind, message) end }
end


local function names_of(list)
    local out = {}
    for i, x in ipairs(list) do out[i] = x.agent or x end
    return out
end


describe("sibyl.orchestrator routing", function()

    it("routes by rules, first match wins, patterns and functions, without asking the model", function()
        local m = llm.mock{ replies = {} }
        local calls = {}
        local o = orchestrator.new{
            llm = m, synthesize = false,
            agents = { fake("calc", "42", nil, calls), fake("clock", "noon", nil, calls), fake("docs", "see doc", nil, calls) },
            rules = {
                { match = "%d+%s*[%*%+]%s*%d+", agents = { "calc" } },
                { match = function(task) return task:find("time") ~= nil end, agents = { "clock", "docs" } },
                { match = "%d", agents = { "docs" } },              -- shadowed by the first rule
            },
        }
        local r = assert(o:run("what is 6 * 7"))
        assert.are.same({ "calc" }, r.routed)
        assert.are.equal("rule", r.route.by)
        assert.are.equal(1, r.route.rule)
        assert.are.equal("[calc]\n42", r.answer)
        r = assert(o:run("what time is it"))
        assert.are.same({ "clock", "docs" }, r.routed)
        assert.are.same({ "clock", "docs" }, names_of(r.parts))
        assert.are.equal(0, #m.requests)                       -- no router, no synthesis call
        assert.are.equal(3, #calls)
        assert.are.equal("what time is it", calls[2].task)
        assert.are.equal("clock", calls[2].ctx.agent)
    end)

    it("routes with the LLM router (structured output over the registered names)", function()
        local m = llm.mock{ replies = {
            '{"agents": ["docs", "calc"], "reason": "a docs question with a sum"}',
            function(req) return "Deadlines cancel I/O [docs]; 2 + 2 = 4 [calc]." end,
        } }
        local o = orchestrator.new{ llm = m,
            agents = { fake("calc", "4"), fake("clock", "noon"), fake("docs", "deadlines cancel I/O [1]") } }
        local r = assert(o:run("How do deadlines work, and what is 2 + 2?"))
        assert.are.same({ "docs", "calc" }, r.routed)
        assert.are.equal("llm", r.route.by)
        assert.are.equal("a docs question with a sum", r.route.reason)
        assert.are.equal("Deadlines cancel I/O [docs]; 2 + 2 = 4 [calc].", r.answer)
        assert.are.same({}, r.missing)
        -- the router request: a schema whose names are the registered agents
        local req = m.requests[1]
        assert.are.same({ "calc", "clock", "docs" }, req.schema.properties.agents.items.enum)
        assert.matches("- clock: The clock agent", req.messages[1].content, 1, true)
        -- the synthesis request carries each part under its agent's tag
        local synth = m.requests[2].messages[1].content
        assert.matches("[docs]\ndeadlines cancel I/O [1]", synth, 1, true)
        assert.matches("[calc]\n4", synth, 1, true)
        assert.is_nil(synth:find("noon", 1, true))
        assert.is_true(r.usage.total > 0)
    end)

    it("ignores names the router made up, and falls back to every agent when none is left", function()
        -- the model insists on an unknown agent: the schema rejects it, the repair too
        local m = llm.mock{ replies = {
            '{"agents": ["weather"], "reason": "x"}',
            '{"agents": ["weather"], "reason": "x"}',
        } }
        local o = orchestrator.new{ llm = m, synthesize = false, agents = { fake("a", "A"), fake("b", "B") } }
        local r = assert(o:run("anything"))
        assert.are.equal("fallback", r.route.by)
        assert.matches("router failed", r.route.reason, 1, true)
        assert.are.same({ "a", "b" }, r.routed)
        -- a router function: unknown names are dropped, known ones kept
        o = orchestrator.new{ agents = { fake("a", "A"), fake("b", "B") },
                              router = function(task, agents) return { "ghost", "b", "b" } end }
        r = assert(o:run("anything"))
        assert.are.same({ "b" }, r.routed)
        assert.are.same({ "ghost" }, r.route.dropped)
        -- nothing known, a router failing or raising: every agent
        for _, router in ipairs{
            function() return { "ghost" } end,
            function() return nil, "no idea" end,
            function() error("router bug") end,
        } do
            o = orchestrator.new{ agents = { fake("a", "A"), fake("b", "B") }, router = router }
            r = assert(o:run("anything"))
            assert.are.equal("fallback", r.route.by)
            assert.are.same({ "a", "b" }, r.routed)
        end
        -- no rule, no model: every agent
        o = orchestrator.new{ agents = { fake("a", "A"), fake("b", "B") } }
        r = assert(o:run("anything"))
        assert.are.equal("all", r.route.by)
        assert.are.same({ "a", "b" }, r.routed)
    end)

    it("raises on misuse", function()
        assert.has_error(function() orchestrator.new{ agents = {} } end)
        assert.has_error(function() orchestrator.new{ agents = { { name = "a" } } } end)
        assert.has_error(function() orchestrator.new{ agents = { fake("a"), fake("a") } } end)
        assert.has_error(function()
            orchestrator.new{ agents = { fake("a") }, rules = { { match = "x", agents = { "zz" } } } }
        end, 'orchestrator.new: opts.rules[1]: no agent is named "zz"')
        assert.has_error(function() orchestrator.new{ agents = { fake("a") }, router = "magic" } end)
        local o = orchestrator.new{ agents = { fake("a", "A") } }
        assert.has_error(function() o:run("") end)
        assert.has_error(function() o:run("x", { agents = { "zz" } }) end)
    end)
end)


describe("sibyl.orchestrator running", function()

    it("runs the chosen agents in parallel", function()
        local o = orchestrator.new{ synthesize = false, agents = { fake("a", "A", 0.2), fake("b", "B", 0.2) } }
        local t0 = sibyl.now()
        local r = assert(o:run("both"))
        local wall = sibyl.now() - t0
        assert.is_true(wall >= 0.19 and wall < 0.35, "wall " .. wall)
        for _, p in ipairs(r.parts) do
            assert.is_true(p.ok)
            assert.is_true(p.seconds >= 0.19, p.agent .. " " .. p.seconds)
        end
        assert.are.equal("[a]\nA\n\n[b]\nB", r.answer)
    end)

    it("answers from the others when one agent fails, and says what is missing", function()
        local m = llm.mock{ replies = {
            function(req) return "Paris is sunny [weather]. The stock price is not available." end,
        } }
        local o = orchestrator.new{ llm = m, router = function() return { "weather", "stocks" } end,
                                    agents = { fake("weather", "sunny in Paris", 0.05),
                                               failing("stocks", "http", "upstream 503") } }
        local r = assert(o:run("Weather in Paris and the ACME price?"))
        assert.are.same({ "stocks" }, r.missing)
        assert.are.same({ "weather", "stocks" }, r.routed)
        assert.is_true(r.parts[1].ok)
        assert.is_false(r.parts[2].ok)
        assert.are.equal("http", r.parts[2].kind)
        assert.matches("upstream 503", r.parts[2].error, 1, true)
        assert.are.equal("Paris is sunny [weather]. The stock price is not available.", r.answer)
        -- the synthesis prompt names the failed agent and why
        local prompt = m.requests[1].messages[1].content
        assert.matches("These agents failed", prompt, 1, true)
        assert.matches("- stocks (The stocks agent): upstream 503", prompt, 1, true)
        assert.matches("[weather]\nsunny in Paris", prompt, 1, true)
        -- without synthesis the text says it too
        r = assert(o:run("Weather in Paris and the ACME price?", { synthesize = false }))
        assert.matches("^%[weather%]\nsunny in Paris", r.answer)
        assert.matches("Missing: no answer from stocks (upstream 503)", r.answer, 1, true)
    end)

    it("treats a raise and a timeout as failures too", function()
        local o = orchestrator.new{ synthesize = false, timeout = 0.1, agents = {
            fake("fast", "ok"),
            fake("slow", "late", 1),
            { name = "buggy", run = function() error("nil index") end },
        } }
        local t0 = sibyl.now()
        local r = assert(o:run("go"))
        assert.is_true(sibyl.now() - t0 < 0.5)
        assert.are.same({ "slow", "buggy" }, r.missing)
        assert.matches("nil index", r.parts[3].error, 1, true)
        assert.matches("timeout", r.parts[2].error)
    end)

    it("fails with agents_failed when every agent fails, listing each error", function()
        local m = llm.mock{ replies = {} }
        local o = orchestrator.new{ llm = m, router = function() return { "a", "b" } end,
                                    agents = { failing("a", "http", "a is down"), failing("b", "auth", "bad key for b") } }
        local r, err = o:run("go")
        assert.is_nil(r)
        assert.are.equal("agents_failed", err.kind)
        assert.matches("a: a is down", err.message, 1, true)
        assert.matches("b: bad key for b", err.message, 1, true)
        assert.are.same({ "a", "b" }, err.missing)
        assert.are.equal(2, #err.parts)
        assert.are.equal(0, #m.requests)            -- no synthesis attempted
    end)

    it("falls back to concatenation when the synthesis call fails", function()
        local m = llm.mock{ replies = { { error = { kind = "auth", message = "bad key" } } } }
        local o = orchestrator.new{ llm = m, router = function() return { "a" } end, agents = { fake("a", "A") } }
        local r = assert(o:run("go"))
        assert.are.equal("[a]\nA", r.answer)
        assert.matches("bad key", r.synthesis_error, 1, true)
    end)

    it("wraps a sibyl.agent with agent_from", function()
        local m = llm.mock{ replies = { "first", "second" } }
        local a = agent.new{ llm = m, system = "You add numbers." }
        local wrapped = orchestrator.agent_from(a, { name = "adder" })
        assert.are.equal("adder", wrapped.name)
        assert.are.equal("You add numbers.", wrapped.description)
        local o = orchestrator.new{ synthesize = false, agents = { wrapped } }
        assert.are.equal("[adder]\nfirst", assert(o:run("1 + 1")).answer)
        assert.are.equal("[adder]\nsecond", assert(o:run("2 + 2")).answer)
        assert.are.equal(1, #m.requests[2].messages)          -- memory reset between tasks
    end)
end)


describe("sibyl.orchestrator rag_agent", function()

    local function tmpdir()
        local d = os.tmpname()
        os.remove(d)
        assert(os.execute("mkdir -p " .. d) == 0)
        return d
    end

    it("answers from a RAG index with citations and sources", function()
        local store = tmpdir() .. "/docs.db"
        assert(rag.index{ path = "tests/fixtures/rag/docs", store = store, progress = false })
        local docs = orchestrator.rag_agent{ store = store, llm = false, k = 2 }
        assert.are.equal("docs", docs.name)
        local out = assert(docs.run("what does EADDRINUSE mean"))
        assert.are.equal("extractive", out.mode)
        assert.matches("EADDRINUSE", out.text, 1, true)
        assert.matches("[1] tests/fixtures/rag/docs/ports.md:3", out.text, 1, true)
        assert.are.equal("tests/fixtures/rag/docs/ports.md", out.sources[1].path)
        -- with a model, inside an orchestrator: the sources carry the agent's name
        local m = llm.mock{ replies = { "Another process holds the port [1]." } }
        local o = orchestrator.new{ synthesize = false, agents = {
            orchestrator.rag_agent{ store = store, llm = m, k = 2, name = "manual" } } }
        local r = assert(o:run("what does EADDRINUSE mean"))
        assert.matches("^%[manual%]\nAnother process holds the port %[1%]%.", r.answer)
        assert.matches("Sources:", r.answer, 1, true)
        assert.are.equal("manual", r.sources[1].agent)
        assert.are.equal("tests/fixtures/rag/docs/ports.md", r.sources[1].path)
        assert.matches("ports.md", m.requests[1].messages[1].content, 1, true)
        -- a missing index is a failure of that agent, not a raise
        local gone = orchestrator.rag_agent{ store = tmpdir() .. "/none.db", llm = false }
        local v, err = gone.run("x")
        assert.is_nil(v)
        assert.are.equal("io", err.kind)
    end)
end)
