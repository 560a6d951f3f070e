-- cache_l1.lua -- the same workload as ../shared/bench/py_lru.py: 1M mixed
-- get/set (25% set) over 100k keys, capacity 50k, TTL 300 s, on sibyl.cache's
-- L1 memory cache. Prints "sibyl L1: <M ops/s> M ops/s (hits <n>)".
local cache = require "sibyl.cache"
local sibyl = require "sibyl"

local N = tonumber(arg[1] or 1000000)
-- The same pseudo-random key stream for every run (not Python's, same shape).
math.randomseed(1)
local keys = {}
for i = 1, N do keys[i] = "key:" .. math.random(0, 99999) end

local c = cache.new{ max_entries = 50000, ttl = 300, max_bytes = 0 }
local t0 = sibyl.now()
local hits = 0
for i = 1, N do
    local k = keys[i]
    if (i - 1) % 4 == 0 then
        c:set(k, i)
    elseif c:get(k) ~= nil then
        hits = hits + 1
    end
end
local dt = sibyl.now() - t0
print(("sibyl L1: %.2f M ops/s (hits %d)"):format(N / dt / 1e6, hits))
