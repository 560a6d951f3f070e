-- sibyl.orchestrator -- route a task to one or more registered agents, run
-- them in parallel, and merge their answers into one, with attributions.
--
--   local orchestrator = require "sibyl.orchestrator"
--   local o = orchestrator.new{
--       llm = client,                                  -- routes (when no rule matches) and synthesizes
--       agents = {
--           orchestrator.rag_agent{ store = "doc.db", name = "docs", description = "Sibyl's documentation" },
--           { name = "calc", description = "Arithmetic", run = function(task, ctx) return "42" end },
--       },
--       rules = { { match = "%d+%s*[%+%-%*/]%s*%d+", agents = { "calc" } } },
--   }
--   local r, err = o:run("What is 6 * 7, and how do deadlines work?")
--   print(r.answer)            -- "... [calc] ... [docs] ..."
--
-- Routing: the rules first (first match wins), else the router: "llm" asks
-- the model for a list of agent names with structured output (names not
-- registered are dropped), or a function(task, agents) returning names. A
-- router that fails or picks nothing falls back to every agent.
--
-- Caveats:
--  * Each agent runs in its own task under sibyl.deadline(timeout): I/O past
--    the deadline returns nil, err of kind "timeout". An agent busy in pure
--    Lua is not interrupted until it yields.
--  * A failed agent (nil, err, a raise, a timeout) does not fail the run: the
--    answer is built from the others and names what is missing (in the text
--    and in result.missing). Only when every routed agent fails does run
--    return nil, err of kind "agents_failed".
--  * A failed synthesis call falls back to the plain concatenation of the
--    parts (result.synthesis_error says why).
-- Docs: doc/agents.md ("Orchestrator"). Spec: tests/lua/22-orchestrator_spec.lua.

local sibyl = require "sibyl"
local llm = require "sibyl.llm"
local json = require "sibyl.json"

local type, ipairs, pairs, tostring, setmetatable, error, pcall =
    type, ipairs, pairs, tostring, setmetatable, error, pcall
local format, find, sub = string.format, string.find, string.sub
local concat = table.concat
local now, gather, deadline, mkerror = sibyl.now, sibyl.gather, sibyl.deadline, sibyl.error

local _M = { _VERSION = "0.1" }

--- Defaults for every limit; change them here or per orchestrator.
_M.defaults = {
    timeout = 60,               -- seconds per agent (sibyl.deadline around run)
    synthesize = true,          -- merge the parts with the model (when there is one)
    max_part_chars = 6000,      -- each part is cut to this many bytes in the synthesis prompt
    router_repair = 1,          -- schema repair round trips for the router's reply
    router_system = "You route a user's task to the agents that can handle it. Pick every agent "
        .. "whose description fits a part of the task, and only those. Reply with JSON only.",
    synth_system = "You merge the answers of several specialist agents into one answer to the user's "
        .. "task. Use only what the agents said. After each claim, name the agent it came from in "
        .. "square brackets, like [docs]. Keep the agents' own citations such as [1]. If some agents "
        .. "failed, say plainly which part of the task could not be answered.",
}

local orch = {}
local orch_mt = { __index = orch }


function orch_mt.__tostring(o)
    return format("sibyl.orchestrator (%d agents)", #o.agents)
end


-- ------------------------------------------------------------- helpers

local errtext = require("sibyl.agent").errtext


local function clip(s, n)
    if #s <= n then return s end
    return sub(s, 1, n) .. format("\n[... %d more bytes cut]", #s - n)
end


-- One model call through a client table, a provider name or the default
-- provider (llm = true). Returns the result or nil, err.
local function chat(client, req)
    if type(client) == "table" then return client:chat(req) end
    if type(client) == "string" then req.provider = client end
    return llm.chat(req)
end


-- ------------------------------------------------------------- routing

local function check_names(names, by_name, where)
    if type(names) ~= "table" or #names == 0 then
        error(where .. ": agents must be a non-empty list of agent names", 3)
    end
    for _, n in ipairs(names) do
        if not by_name[n] then error(format("%s: no agent is named %q", where, tostring(n)), 3) end
    end
end


-- Keep the names that are registered, once each, in the order given.
-- Returns the kept list and the list of dropped names.
local function known(names, by_name)
    local kept, dropped, seen = {}, {}, {}
    if type(names) ~= "table" then return kept, dropped end
    for _, n in ipairs(names) do
        if type(n) == "string" and by_name[n] and not seen[n] then
            seen[n] = true
            kept[#kept + 1] = n
        elseif not seen[n] then
            dropped[#dropped + 1] = tostring(n)
        end
    end
    return kept, dropped
end


local function all_names(self)
    local names = {}
    for i, a in ipairs(self.agents) do names[i] = a.name end
    return names
end


-- Ask the model which agents fit the task (structured output).
-- Returns names, reason, usage or nil, err.
function orch:_llm_route(task)
    local names, lines = all_names(self), {}
    for i, a in ipairs(self.agents) do
        lines[i] = format("- %s: %s", a.name, a.description or "(no description)")
    end
    local r, err = chat(self.llm, {
        system = self.router_system,
        messages = { { role = "user", content = "Agents:\n" .. concat(lines, "\n")
                       .. "\n\nTask: " .. task
                       .. "\n\nReply with {\"agents\": [names of the agents to use], \"reason\": \"why\"}." } },
        schema = {
            type = "object",
            properties = {
                agents = { type = "array", items = { type = "string", enum = names } },
                reason = { type = "string" },
            },
            required = { "agents", "reason" },
        },
        schema_name = "route",
        repair = self.router_repair,
    })
    if not r then return nil, err end
    return r.data.agents, r.data.reason, r.usage
end


-- Pick the agents for a task. Returns { names, by = "rule" | "llm" |
-- "function" | "all" | "fallback", reason, error, dropped, usage }.
function orch:route(task)
    for i, rule in ipairs(self.rules) do
        local hit
        if type(rule.match) == "function" then
            hit = rule.match(task)
        else
            hit = find(task, rule.match) ~= nil
        end
        if hit then
            return { names = known(rule.agents, self.by_name), by = "rule", rule = i,
                     reason = format("rule %d matched", i) }
        end
    end
    local names, reason, usage, dropped, by
    local router = self.router
    if type(router) == "function" then
        by = "function"
        local ok, v, e = pcall(router, task, self.agents)
        if not ok then reason = "the router raised: " .. errtext(v)
        elseif v == nil then reason = "the router failed: " .. errtext(e)
        else names = v end
    elseif router == "llm" and self.llm then
        by = "llm"
        local v, e, u = self:_llm_route(task)
        if v == nil then reason = "the router failed: " .. errtext(e) else names, reason, usage = v, e, u end
    else
        return { names = all_names(self), by = "all", reason = "no rule matched and no router" }
    end
    if names then
        names, dropped = known(names, self.by_name)
        if #names > 0 then
            return { names = names, by = by, reason = reason, dropped = dropped, usage = usage }
        end
        reason = "the router picked no registered agent"
            .. (#dropped > 0 and (" (unknown: " .. concat(dropped, ", ") .. ")") or "")
    end
    return { names = all_names(self), by = "fallback", reason = reason, dropped = dropped, usage = usage }
end


-- ------------------------------------------------------------- running

-- Run one agent (inside its own task) under the deadline; returns its part.
function orch:_part(name, task, timeout, data)
    local a = self.by_name[name]
    local t0 = now()
    local ctx = { orchestrator = self, agent = name, task = task, data = data }
    local ok, v, e, late = deadline(timeout, function()
        local pok, pv, pe = pcall(a.run, task, ctx)
        local left = sibyl.time_left()
        return pok, pv, pe, left ~= nil and left <= 0
    end)
    local part = { agent = name, seconds = 0 }
    if late then        -- past the deadline: whatever came back is too late
        part.ok, part.kind = false, "timeout"
        part.error = format("no answer within %g s (%s); raise timeout or make the agent faster",
                            timeout, ok and v == nil and errtext(e) or "deadline exceeded")
    elseif not ok then
        part.ok, part.error = false, errtext(v)
    elseif v == nil then
        part.ok, part.error = false, e ~= nil and errtext(e) or "returned nothing"
        part.kind = type(e) == "table" and e.kind or nil
    elseif type(v) == "table" then
        part.ok, part.text, part.sources = true, tostring(v.text or v.content or ""), v.sources
    else
        part.ok, part.text = true, tostring(v)
    end
    part.seconds = now() - t0
    return part
end


local function concatenated(task, parts, missing)
    local out = {}
    for _, p in ipairs(parts) do
        if p.ok then out[#out + 1] = format("[%s]\n%s", p.agent, p.text) end
    end
    if #missing > 0 then
        local why = {}
        for _, p in ipairs(parts) do
            if not p.ok then why[#why + 1] = format("%s (%s)", p.agent, p.error) end
        end
        out[#out + 1] = "Missing: no answer from " .. concat(why, ", ")
            .. "; that part of the task is not answered."
    end
    return concat(out, "\n\n")
end


function orch:_synthesize(task, parts, missing)
    local blocks = {}
    for _, p in ipairs(parts) do
        if p.ok then blocks[#blocks + 1] = format("[%s]\n%s", p.agent, clip(p.text, self.max_part_chars)) end
    end
    local prompt = "Task: " .. task .. "\n\nAnswers from the agents:\n\n" .. concat(blocks, "\n\n")
    if #missing > 0 then
        local why = {}
        for _, p in ipairs(parts) do
            if not p.ok then why[#why + 1] = format("- %s (%s): %s", p.agent,
                self.by_name[p.agent].description or "no description", p.error) end
        end
        prompt = prompt .. "\n\nThese agents failed, so their part is missing; say so in the answer:\n"
            .. concat(why, "\n")
    end
    prompt = prompt .. "\n\nWrite one answer to the task, tagging each claim with its agent like [name]."
    return chat(self.llm, { system = self.synth_system, messages = { { role = "user", content = prompt } } })
end


--- Run a task: route it, run the chosen agents in parallel, merge the
-- answers. opts: timeout, synthesize, agents (names: skip routing), data
-- (passed to every agent as ctx.data). Returns { answer, parts, routed,
-- missing, route, sources, usage } or nil, err (kind "agents_failed").
function orch:run(task, opts)
    opts = opts or {}
    if type(task) ~= "string" or task == "" then error("orchestrator:run: the task must be a non-empty string", 2) end
    if type(opts) ~= "table" then error("orchestrator:run: options table expected", 2) end
    local timeout = opts.timeout or self.timeout
    if type(timeout) ~= "number" or timeout <= 0 then error("orchestrator:run: opts.timeout must be a number > 0", 2) end
    local synth = opts.synthesize
    if synth == nil then synth = self.synthesize end

    local route
    if opts.agents then
        check_names(opts.agents, self.by_name, "orchestrator:run: opts.agents")
        route = { names = known(opts.agents, self.by_name), by = "caller", reason = "opts.agents" }
    else
        route = self:route(task)
    end
    local usage = { input = 0, output = 0, total = 0, cost = 0 }
    local function add(u)
        if not u then return end
        usage.input = usage.input + (u.input or 0)
        usage.output = usage.output + (u.output or 0)
        usage.total = usage.input + usage.output
        usage.cost = usage.cost + (u.cost or 0)
    end
    add(route.usage)

    local fns = {}
    for i, name in ipairs(route.names) do
        fns[i] = function() return self:_part(name, task, timeout, opts.data) end
    end
    local vals, errs = gather(fns, { all = true })
    local parts, missing, sources, errors = {}, {}, {}, {}
    for i, name in ipairs(route.names) do
        local p = vals[i] or { agent = name, ok = false, seconds = 0,
                               error = "agent task failed: " .. errtext(errs and errs[i]) }
        parts[i] = p
        if p.ok then
            for _, s in ipairs(type(p.sources) == "table" and p.sources or {}) do
                local c = {}
                for k, v in pairs(s) do c[k] = v end
                c.agent = name
                sources[#sources + 1] = c
            end
        else
            missing[#missing + 1] = name
            errors[#errors + 1] = format("%s: %s", name, p.error)
        end
    end
    if #missing == #parts then
        return nil, mkerror("agents_failed", format("orchestrator: %s failed (%s); fix those agents (err.parts "
            .. "has each error) or raise timeout if they ran out of time",
            #parts == 1 and "the only routed agent" or ("all " .. #parts .. " routed agents"), concat(errors, "; ")),
            { parts = parts, routed = route.names, missing = missing, route = route })
    end

    local answer, synthesis_error
    if synth and self.llm then
        local r, err = self:_synthesize(task, parts, missing)
        if r then
            answer = r.content
            add(r.usage)
        else
            synthesis_error = errtext(err)
        end
    end
    answer = answer or concatenated(task, parts, missing)
    return { answer = answer, parts = parts, routed = route.names, missing = missing, route = route,
             sources = sources, usage = usage, synthesis_error = synthesis_error }
end


-- ---------------------------------------------------------- constructors

--- A new orchestrator. opts: agents (list of {name, description, run}),
-- llm (a client, a provider name, true for the default provider, or nil:
-- no model), router ("llm" (default) or function(task, agents) -> names),
-- rules ({ {match = pattern | function(task), agents = {names}} }),
-- synthesize (true), timeout (60 s per agent), max_part_chars,
-- router_system, synth_system, router_repair.
function _M.new(opts)
    if type(opts) ~= "table" then error("orchestrator.new: options table expected", 2) end
    local client = opts.llm
    if client ~= nil and client ~= true and type(client) ~= "table" and type(client) ~= "string" then
        error("orchestrator.new: opts.llm must be a client (llm.client, llm.mock), a provider name or true", 2)
    end
    local d = _M.defaults
    local o = setmetatable({
        llm = client,
        router = opts.router or "llm",
        timeout = opts.timeout or d.timeout,
        synthesize = opts.synthesize == nil and d.synthesize or opts.synthesize,
        max_part_chars = opts.max_part_chars or d.max_part_chars,
        router_repair = opts.router_repair or d.router_repair,
        router_system = opts.router_system or d.router_system,
        synth_system = opts.synth_system or d.synth_system,
        agents = {}, by_name = {}, rules = {},
    }, orch_mt)
    if o.router ~= "llm" and type(o.router) ~= "function" then
        error('orchestrator.new: opts.router must be "llm" or a function(task, agents) returning names', 2)
    end
    if type(o.timeout) ~= "number" or o.timeout <= 0 then error("orchestrator.new: opts.timeout must be a number > 0", 2) end
    if type(opts.agents) ~= "table" or #opts.agents == 0 then
        error("orchestrator.new: opts.agents must be a non-empty list of {name =, description =, run =}", 2)
    end
    for i, a in ipairs(opts.agents) do
        if type(a) ~= "table" or type(a.name) ~= "string" or type(a.run) ~= "function" then
            error(format("orchestrator.new: opts.agents[%d] needs a name and run = function(task, ctx)", i), 2)
        end
        if o.by_name[a.name] then error(format("orchestrator.new: two agents are named %q", a.name), 2) end
        o.agents[i] = a
        o.by_name[a.name] = a
    end
    for i, rule in ipairs(opts.rules or {}) do
        if type(rule) ~= "table" or (type(rule.match) ~= "string" and type(rule.match) ~= "function") then
            error(format("orchestrator.new: opts.rules[%d] needs match = a Lua pattern or function(task)", i), 2)
        end
        check_names(rule.agents, o.by_name, format("orchestrator.new: opts.rules[%d]", i))
        o.rules[i] = rule
    end
    return o
end


--- Wrap a sibyl.agent instance as a registered agent. opts: name
-- ("agent"), description, run_opts (passed to a:run: max_steps, budget...),
-- keep_memory (false: the conversation is reset before each task).
function _M.agent_from(a, opts)
    opts = opts or {}
    if type(a) ~= "table" or type(a.run) ~= "function" then
        error("orchestrator.agent_from: a sibyl.agent instance (agent.new{...}) expected", 2)
    end
    if type(opts) ~= "table" then error("orchestrator.agent_from: options table expected", 2) end
    return {
        name = opts.name or a.name or "agent",
        description = opts.description or a.description or a.system,
        agent = a,
        run = function(task, ctx)
            if not opts.keep_memory then a:reset() end
            local r, err = a:run(task, opts.run_opts)
            if not r then return nil, err end
            return { text = r.content or "", usage = r.usage }
        end,
    }
end


--- Wrap a RAG index as a registered agent answering with citations.
-- opts: store (a path to an index built by rag.index, or an open index),
-- name ("docs"), description, k (5), llm (a client, or false for the
-- extractive answer; nil: the default provider if one is configured),
-- filter. The index is opened on first use.
function _M.rag_agent(opts)
    if type(opts) ~= "table" then error("orchestrator.rag_agent: options table expected", 2) end
    if type(opts.store) ~= "string" and type(opts.store) ~= "table" then
        error("orchestrator.rag_agent: opts.store must be an index path (see rag.index) or an open index", 2)
    end
    local idx = type(opts.store) == "table" and opts.store or nil
    return {
        name = opts.name or "docs",
        description = opts.description or "Answers questions from the indexed documents, with citations.",
        run = function(task, ctx)
            if not idx then
                local i, err = require("sibyl.rag").open(opts.store)
                if not i then return nil, err end
                idx = i
            end
            local a, err = idx:answer(task, { k = opts.k, llm = opts.llm, filter = opts.filter })
            if not a then return nil, err end
            return { text = require("sibyl.rag.answer").format(a), sources = a.sources, mode = a.mode }
        end,
    }
end


return _M
