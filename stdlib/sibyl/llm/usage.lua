-- sibyl.llm.usage -- token and cost accounting: prices per model, this
-- runtime's totals, and meters that count the calls of a task tree
-- (llm.usage, llm.meter). Internal to sibyl.llm, which re-exports them.
--
-- The totals and the configured prices live here, one set per runtime;
-- llm.configure replaces the prices (set_prices), llm.reset clears them.

local sibyl = require "sibyl"

local ipairs, setmetatable = ipairs, setmetatable
local format = string.format
local context = sibyl.context

local _M = {}

local totals = { calls = 0, input = 0, output = 0, cost = 0, by_model = {} }
local prices = {}               -- model -> { input = $/1M tokens, output = $/1M tokens }

--- Replace the configured prices (model -> { input =, output = }, $/1M tokens).
function _M.set_prices(p)
    prices = p
end


-- Add usage u (of `model`) to a totals or meter table.
local function add_usage(m, model, u)
    m.calls = m.calls + 1
    m.input = m.input + u.input
    m.output = m.output + u.output
    if u.cost then m.cost = m.cost + u.cost end
    if model then
        local bm = m.by_model[model]
        if not bm then
            bm = { calls = 0, input = 0, output = 0, cost = 0 }
            m.by_model[model] = bm
        end
        bm.calls = bm.calls + 1
        bm.input = bm.input + u.input
        bm.output = bm.output + u.output
        if u.cost then bm.cost = bm.cost + u.cost end
    end
end


-- Price a reply's usage (client prices, else configured ones) and count it
-- into the totals and every meter of the current task.
local function account(p, r, model)
    local u = r.usage
    if not u then
        u = { input = 0, output = 0, total = 0 }
        r.usage = u
    end
    local price = (p.prices and p.prices[model]) or prices[model]
    if price then
        u.cost = ((u.input or 0) * (price.input or 0) + (u.output or 0) * (price.output or 0)) / 1e6
    end
    add_usage(totals, model, u)
    local ctx = context()
    local meters = ctx and ctx.llm_meters
    if meters then
        for i = 1, #meters do add_usage(meters[i], model, u) end
    end
end
_M.account = account


--- Usage totals of this runtime: {calls, input, output, cost, by_model}.
function _M.usage()
    return totals
end


local meter_methods = {}
local meter_mt = { __index = meter_methods }

function meter_mt.__tostring(m)
    return format("sibyl.llm.meter (%d calls, %d in, %d out, $%.6f)", m.calls, m.input, m.output, m.cost)
end

--- A usage meter: m:run(fn, ...) counts every call made in fn and in the
-- tasks it spawns (also into enclosing meters).
function _M.meter()
    return setmetatable({ calls = 0, input = 0, output = 0, cost = 0, by_model = {} }, meter_mt)
end

function meter_methods:run(fn, ...)
    local ctx = context()
    local meters = { self }
    if ctx and ctx.llm_meters then
        for _, m in ipairs(ctx.llm_meters) do meters[#meters + 1] = m end
    end
    return sibyl.with_context(setmetatable({ llm_meters = meters }, { __index = ctx }), fn, ...)
end

function meter_methods:reset()
    self.calls, self.input, self.output, self.cost, self.by_model = 0, 0, 0, 0, {}
end


return _M
