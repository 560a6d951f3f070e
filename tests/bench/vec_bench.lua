-- vec_bench.lua -- brute-force top-10 cosine over N x 384 float32 rows with
-- sibyl.vec: 1 query and a batch of 64, the workload of
-- ../shared/bench/py_vec.py. Usage: sibyl tests/bench/vec_bench.lua N [reps]
-- Prints "N=<n> <name>: <ms> ms/batch" lines (best of reps), like py_vec.py.
local vec = require "sibyl.vec"
local sibyl = require "sibyl"
local ffi = require "ffi"

local N, D, K = tonumber(arg[1] or 100000), 384, 10
local REPS = tonumber(arg[2] or 5)

-- xorshift32 floats in [-0.5, 0.5): the same data every run.
local state = ffi.new("uint32_t[1]", 2463534242)
local function fill(buf, n)
    local s = state[0]
    for i = 0, n - 1 do
        s = bit.bxor(s, bit.lshift(s, 13)); s = bit.bxor(s, bit.rshift(s, 17)); s = bit.bxor(s, bit.lshift(s, 5))
        buf[i] = bit.band(s, 0xffffff) / 16777216 - 0.5
    end
    state[0] = s
end

local t0 = sibyl.now()
local m = vec.matrix(D, { capacity = N })
local row = ffi.new("float[?]", D)
for _ = 1, N do fill(row, D); m:add(row) end
local Q = {}
for i = 1, 64 do Q[i] = ffi.new("float[?]", D); fill(Q[i], D) end
io.stderr:write(("built %d x %d in %.1f s\n"):format(N, D, sibyl.now() - t0))

local function best(f)
    local b = math.huge
    for _ = 1, REPS do
        local t = sibyl.now(); f(); t = sibyl.now() - t
        if t < b then b = t end
    end
    return b
end

local gb = N * D * 4 / 1e9
-- The main rows, then variants that document choices: the OpenBLAS sgemv
-- kernel instead of ours, one worker instead of all, OpenBLAS's own two
-- threads instead of our split, int8 shortlists (last: it quantizes m).
local runs = {
    { "sibyl 1q", 1, function() return m:search(Q[1], K) end },
    { "sibyl 64q", 64, function() return m:search_many(Q, K) end },
    { "sibyl 1q sgemv", 1, function() return m:search(Q[1], K, { kernel = "blas" }) end },
    { "sibyl 1q 1-thread", 1, function() return m:search(Q[1], K, { threads = 1 }) end },
    { "sibyl 64q blas-threads", 64, function()
        vec.blas_threads(2)
        local r = m:search_many(Q, K, { threads = 1 })
        vec.blas_threads(1)
        return r
    end },
    { "sibyl 1q int8", 1, function() return m:search(Q[1], K) end, function() m:quantize() end },
}
for _, r in ipairs(runs) do
    if r[4] then r[4]() end
    r[3]()
    local t = best(r[3])
    print(("N=%d %s: %.2f ms/batch, %.3f ms/query, scan %.1f GB/s"):format(N, r[1], t * 1e3, t * 1e3 / r[2], gb / t))
end
