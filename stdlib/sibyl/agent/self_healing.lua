-- sibyl.agent.self_healing -- run an agent (or any function) again after a
-- failure, changing what made it fail: wait out a rate limit, summarize a
-- history that overflowed the context, cool down a model that wrote bad
-- JSON, switch to a faster model after a timeout, forbid a tool that keeps
-- failing, or ask the model to diagnose the error and re-plan.
--
--   local healing = require "sibyl.agent.self_healing"
--   local r, err = healing.execute_with_recovery(a, "question", { max_attempts = 3,
--       fallback_model = "gpt-4o-mini", on_event = function(ev) end })
--   -- or: local h = healing.new{ agent = a, max_attempts = 3 }; h:run("question", opts)
--
-- What to change: `_M.strategies` is a plain table keyed by error kind; each
-- entry is function(state, err) that edits `state` (the next attempt's
-- settings) and returns a short description of what it changed, or
-- false, why to give up at once. Replace or add entries freely.
--
-- Caveats:
--  * With an agent, each attempt starts from the agent's memory as it was
--    before the first attempt (or its summary): a failed attempt's messages
--    are not kept. The agent's system prompt, model, temperature and tools
--    are changed for the attempts and restored afterwards.
--  * With a function, fn(input, state) must honour the state itself:
--    state.system, state.temperature, state.model, state.messages,
--    state.forbidden (tool names), state.budget. Return result or nil, err.
--  * Summaries and diagnoses are one model call each, with the agent's llm
--    (or opts.llm); when that call fails the attempt runs unchanged.
-- Docs: doc/agents.md ("Self-healing agent"). Spec: tests/lua/21-self_healing_spec.lua.

local sibyl = require "sibyl"
local llm = require "sibyl.llm"
local json = require "sibyl.json"

local type, ipairs, pairs, tostring, tonumber, next, pcall, setmetatable, error =
    type, ipairs, pairs, tostring, tonumber, next, pcall, setmetatable, error
local math_min, floor = math.min, math.floor
local format, concat = string.format, table.concat
local now, sleep, mkerror = sibyl.now, sibyl.sleep, sibyl.error

local _M = { _VERSION = "0.1" }

--- Defaults for every limit; change them here or per call.
_M.defaults = {
    max_attempts = 3,           -- attempts in all (the first one included)
    max_wait = 30,              -- rate_limited: longest wait in seconds
    wait = 1,                   -- rate_limited: the wait when the error gives no retry_after
    tool_failures = 2,          -- a tool failing this often in one attempt is forbidden
    excerpt_chars = 2000,       -- transcript text sent to the model for a summary or diagnosis
    max_input_chars = 4000,     -- context_length with no history: the input is cut to this
    summary_prompt = "Summarize the conversation so far in a few sentences: the user's goals, "
        .. "the facts learned from tools, and what is still open. Reply with the summary only.",
    diagnose_prompt = "An attempt at the task below failed. Say in a few sentences why it "
        .. "probably failed and give a short plan for the next attempt that avoids the failure. "
        .. "Reply with the plan only.",
}


-- ------------------------------------------------------------- helpers

local agent_mod = require "sibyl.agent"
local errtext, list_copy, shallow_copy = agent_mod.errtext, agent_mod.list_copy, agent_mod.shallow_copy


local function content_text(c)
    if type(c) == "string" then return c end
    if c == nil then return "" end
    local ok, s = pcall(json.encode, c)
    return ok and s or tostring(c)
end


-- The transcript as text, the newest part kept when it is too long.
local function excerpt(msgs, limit)
    local lines = {}
    for _, m in ipairs(msgs or {}) do
        local line = (m.role or "?") .. (m.name and ("(" .. m.name .. ")") or "") .. ": " .. content_text(m.content)
        for _, tc in ipairs(m.tool_calls or {}) do
            line = line .. format(" [calls %s %s]", tostring(tc.name), content_text(tc.arguments))
        end
        lines[#lines + 1] = line
    end
    local s = concat(lines, "\n")
    if #s > limit then s = "..." .. s:sub(-limit) end
    return s
end


-- The transcript of the failed attempt: err.transcript, else err.partial's.
local function transcript_of(err)
    if type(err) ~= "table" then return {} end
    return err.transcript or (type(err.partial) == "table" and err.partial.transcript) or {}
end


-- One model call without tools, for summaries and diagnoses.
local function ask(state, prompt)
    local o = { messages = { { role = "user", content = prompt } }, model = state.model, temperature = 0 }
    local c = state.llm
    if type(c) == "table" then return c:chat(o) end
    o.provider = c
    return llm.chat(o)
end


-- ---------------------------------------------------------- strategies

--- The strategies, keyed by error kind (plus "failing_tool", tried first
-- whenever the transcript shows a tool failing repeatedly, and "default"
-- for any kind without an entry). Each is function(state, err) returning a
-- description of the change, or false, why to stop retrying.
_M.strategies = {}
local S = _M.strategies


-- Wait out the rate limit (the LLM layer already rotates keys).
function S.rate_limited(state, err)
    local o = state.opts
    local wait = tonumber(err.retry_after) or o.wait
    local bounded = math_min(wait, o.max_wait)
    sleep(bounded)
    return format("waited %g s%s", bounded, bounded < wait and format(" (retry_after %g capped by max_wait)", wait) or "")
end


-- Replace the history with a model-made summary; keep the system prompt and
-- the user's message. With no history to summarize, cut the input.
function S.context_length(state, err)
    local o = state.opts
    local hist = state.messages
    if #hist > 0 then
        local text = excerpt(hist, o.excerpt_chars)
        local r, e = ask(state, o.summary_prompt .. "\n\n" .. text)
        if r then
            state.messages = { { role = "user", content = "Summary of the earlier conversation: " .. (r.content or "") } }
            return format("summarized %d earlier messages into one", #hist)
        end
        state.messages = { hist[#hist] }
        return format("the summary failed (%s); dropped %d earlier messages", errtext(e), #hist - 1)
    end
    if type(state.input) == "string" and #state.input > o.max_input_chars then
        local n = #state.input
        local half = floor(o.max_input_chars / 2)
        state.input = state.input:sub(1, half) .. "\n[...]\n" .. state.input:sub(-half)
        return format("cut the input from %d to %d characters", n, #state.input)
    end
    return false, "the input alone is too long for the model's context; shorten it or raise max_input_chars"
end


-- Cooler model, and the error in the prompt.
function S.parse(state, err)
    state.temperature = 0
    local what = errtext(err)
    if type(err) == "table" and type(err.cause) == "table" and err.cause.message then what = err.cause.message end
    state:note_input("Your previous reply could not be used: " .. what
        .. ". Reply again with only valid JSON matching the requested schema.")
    return "temperature set to 0; the parse error added to the prompt"
end


-- A faster model when one is configured, else twice the time.
function S.timeout(state, err)
    local fb = state.opts.fallback_model
    if fb and state.model ~= fb then
        state.model = fb
        return "switched to the faster model " .. tostring(fb)
    end
    if state.budget.seconds then
        state.budget.seconds = state.budget.seconds * 2
        return format("extended budget.seconds to %g", state.budget.seconds)
    end
    return "retried as is (set opts.fallback_model or budget.seconds to adjust)"
end


-- The agent's own time budget ran out: as a timeout. Token and cost
-- budgets are the caller's limits: not raised behind their back.
function S.budget(state, err)
    if err.budget == "seconds" or (err.budget == nil and errtext(err):find("time budget", 1, true)) then
        return S.timeout(state, err)
    end
    return false, "the token or cost budget is spent; raise it to retry"
end


-- Retrying will not fix a bad key or configuration.
function S.auth() return false, "the API key was refused; fix the key" end


function S.config() return false, "the LLM is not configured; see doc/llm.md" end


-- A tool failed repeatedly (state.failing = its name): forbid it.
function S.failing_tool(state, err)
    local name = state.failing
    state.forbidden[name] = true
    state:note_system(format("The tool %s is failing; it is not available now. Do the task without it.", name))
    return format("forbade the failing tool %s", name)
end


-- Anything else: the model diagnoses the error and plans the next attempt.
function S.default(state, err)
    local o = state.opts
    local prompt = format("%s\n\nTask: %s\n\nError (%s): %s\n\nTranscript excerpt:\n%s", o.diagnose_prompt,
                          content_text(state.original_input), tostring(type(err) == "table" and err.kind or "error"),
                          errtext(err), excerpt(transcript_of(err), o.excerpt_chars))
    local r, e = ask(state, prompt)
    if not r then return format("the diagnosis failed (%s); retried as is", errtext(e)) end
    state:note_input("A previous attempt failed (" .. errtext(err) .. "). Plan for this attempt: " .. (r.content or ""))
    return "asked the model to diagnose; the plan was added to the input"
end


-- ------------------------------------------------------------ the state

local state_mt = {}
state_mt.__index = state_mt


--- Add a line to the next attempts' user message.
function state_mt:note_input(text)
    if type(self.input) == "string" then
        self.input = self.input .. "\n\n" .. text
    elseif type(self.input) == "table" and type(self.input.content) == "string" then
        self.input = shallow_copy(self.input)
        self.input.content = self.input.content .. "\n\n" .. text
    end
end


--- Add a line to the next attempts' system prompt.
function state_mt:note_system(text)
    self.system = (self.system and self.system ~= "" and (self.system .. "\n\n") or "") .. text
end


-- The tool failing most in the attempt's part of the transcript, when it
-- failed at least `limit` times and is not yet forbidden.
local function failing_tool(state, err)
    local counts, worst, most = {}, nil, 0
    local msgs = transcript_of(err)
    for i = state.history_len + 1, #msgs do
        local m = msgs[i]
        local e = m.role == "tool" and type(m.content) == "table" and m.content.error
        if type(e) == "string" and m.name and not state.forbidden[m.name]
           and e:find("^tool .* failed") then
            counts[m.name] = (counts[m.name] or 0) + 1
            if counts[m.name] > most then worst, most = m.name, counts[m.name] end
        end
    end
    if most >= state.opts.tool_failures then return worst end
end


-- ---------------------------------------------------------- the attempts

-- Apply the state to the agent for one attempt; returns a function that
-- restores the agent's settings.
local function apply(a, state)
    local saved = { system = a.system, model = a.model, temperature = a.temperature,
                    tools = a.tools, by_name = a.by_name, defs = a.defs }
    a.system, a.model, a.temperature = state.system, state.model, state.temperature
    if next(state.forbidden) then
        local tools, by_name, defs = {}, {}, {}
        for i, t in ipairs(saved.tools) do
            if not state.forbidden[t.name] then
                tools[#tools + 1] = t
                by_name[t.name] = t
                defs[#defs + 1] = saved.defs[i]
            end
        end
        a.tools, a.by_name, a.defs = tools, by_name, defs
    end
    a.messages = list_copy(state.messages)
    return function()
        for k, v in pairs(saved) do a[k] = v end
    end
end


local function check_opts(opts, where)
    if opts == nil then return {} end
    if type(opts) ~= "table" then error(where .. ": options table expected", 3) end
    if opts.on_event ~= nil and type(opts.on_event) ~= "function" then
        error(where .. ": opts.on_event must be a function(ev)", 3)
    end
    if opts.max_attempts ~= nil and (type(opts.max_attempts) ~= "number" or opts.max_attempts < 1) then
        error(where .. ": opts.max_attempts must be a number >= 1", 3)
    end
    if opts.strategies ~= nil and type(opts.strategies) ~= "table" then
        error(where .. ": opts.strategies must be a table keyed by error kind", 3)
    end
    return opts
end


--- Run `target` (an agent from sibyl.agent, or function(input, state)) on
-- `input`, up to max_attempts times, adjusting after each failure. opts:
-- max_attempts (3), strategies (default _M.strategies), on_event, budget,
-- max_steps, fallback_model, messages/system/model/temperature/schema (the
-- function form's starting state), llm (for summaries and diagnoses when target
-- is a function), max_wait, wait, tool_failures, excerpt_chars,
-- max_input_chars, raise. Returns the result with r.attempts (the failed
-- attempts) and r.trace, or nil, err (the last error's kind, err.attempts,
-- err.cause, err.trace).
function _M.execute_with_recovery(target, input, opts)
    opts = check_opts(opts, "execute_with_recovery")
    local is_fn = type(target) == "function"
    if not is_fn and not (type(target) == "table" and type(target.run) == "function" and target.messages) then
        error("execute_with_recovery: target must be an agent (sibyl.agent.new) or function(input, state)", 2)
    end
    local o = {}
    for k, v in pairs(_M.defaults) do o[k] = v end
    for k, v in pairs(opts) do o[k] = v end
    local strategies = opts.strategies or _M.strategies
    local emit = opts.on_event or function() end
    local a = not is_fn and target or nil
    local state = setmetatable({
        attempt = 0, input = input, original_input = input, opts = o,
        messages = list_copy(a and a.messages or opts.messages), system = a and a.system or opts.system,
        model = a and a.model or opts.model, temperature = a and a.temperature or opts.temperature,
        schema = opts.schema, forbidden = {}, budget = shallow_copy(opts.budget),
        llm = opts.llm or (a and a.llm), attempts = {},
    }, state_mt)
    local trace, last_err, last_partial = {}, nil, nil
    local t_start = now()
    for n = 1, o.max_attempts do
        state.attempt = n
        state.history_len = #state.messages
        emit{ type = "attempt", attempt = n }
        local t0 = now()
        local r, err
        if is_fn then
            r, err = target(state.input, state)
        else
            local restore = apply(a, state)
            local on_ev = opts.on_event and function(ev) ev.attempt = n; emit(ev) end
            r, err = a:run(state.input, { max_steps = opts.max_steps, budget = state.budget, on_event = on_ev,
                                          stream = opts.stream })
            restore()
        end
        local partial = type(err) == "table" and err.partial or nil
        for _, span in ipairs((r and r.trace) or (partial and partial.trace) or {}) do
            span.attempt = n
            trace[#trace + 1] = span
        end
        if r ~= nil then
            if type(r) == "table" then
                r.attempts, r.trace = state.attempts, trace
            end
            return r
        end
        if type(err) ~= "table" then err = mkerror("error", tostring(err)) end
        last_err, last_partial = err, partial
        local kind = err.kind or "error"
        local rec = { attempt = n, kind = kind, message = errtext(err) }
        state.attempts[n] = rec
        if n == o.max_attempts then break end
        -- Analyse and adjust.
        local fname = failing_tool(state, err)
        local fn
        if fname then
            state.failing = fname
            fn = strategies.failing_tool
        else
            fn = strategies[kind] or strategies.default
        end
        local r0 = now()
        local action, why
        if fn then action, why = fn(state, err) else action = "retried as is (no strategy for " .. kind .. ")" end
        if action == false then
            rec.action = "gave up: " .. tostring(why)
            trace[#trace + 1] = { name = "recovery", attempt = n, kind = kind, action = rec.action,
                                  start = r0 - t_start, seconds = now() - r0 }
            emit{ type = "recovery", attempt = n, kind = kind, action = rec.action }
            break
        end
        rec.action = tostring(action)
        trace[#trace + 1] = { name = "recovery", attempt = n, kind = kind, action = rec.action,
                              start = r0 - t_start, seconds = now() - r0 }
        emit{ type = "recovery", attempt = n, kind = kind, action = rec.action }
    end
    -- Give up: the last error's kind, every attempt attached.
    local lines = {}
    for i, rec in ipairs(state.attempts) do
        lines[i] = format("%d) %s: %s%s", i, rec.kind, rec.message, rec.action and (" -> " .. rec.action) or "")
    end
    local e = mkerror(last_err.kind or "error",
        format("self-healing: gave up after %d attempt%s; %s; fix the cause above or raise max_attempts",
               #state.attempts, #state.attempts == 1 and "" or "s", concat(lines, "; ")),
        { attempts = state.attempts, cause = last_err, trace = trace, retry_after = last_err.retry_after,
          partial = last_partial, transcript = transcript_of(last_err) })
    if opts.raise then error(e, 2) end
    return nil, e
end


-- ------------------------------------------------------- the object form

local healer = {}
local healer_mt = { __index = healer }


function healer_mt.__tostring(h)
    return format("sibyl.agent.self_healing (max_attempts %d)", h.opts.max_attempts or _M.defaults.max_attempts)
end


--- A healer bound to an agent (or fn): new{ agent = a | fn = f, strategies,
-- max_attempts, on_event, and any option of execute_with_recovery }.
function _M.new(opts)
    opts = check_opts(opts, "self_healing.new")
    local target = opts.agent or opts.fn
    if target == nil then error("self_healing.new: opts.agent (or opts.fn) is required", 2) end
    local o = shallow_copy(opts)
    o.agent, o.fn = nil, nil
    return setmetatable({ target = target, opts = o }, healer_mt)
end


--- Run with recovery; opts override the healer's for this run.
function healer:run(input, opts)
    local o = shallow_copy(self.opts)
    for k, v in pairs(check_opts(opts, "healer:run")) do o[k] = v end
    return _M.execute_with_recovery(self.target, input, o)
end


return _M
