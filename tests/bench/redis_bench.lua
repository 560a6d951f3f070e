-- redis_bench.lua PORT N C -- N SETs, then N GETs, from C tasks sharing one
-- sibyl.redis connection (pipelined automatically). Prints "SET/s GET/s".
local sibyl = require "sibyl"
local redis = require "sibyl.redis"

local port, N, C = tonumber(arg[1]), tonumber(arg[2] or 200000), tonumber(arg[3] or 256)
local r = assert(redis.connect{ port = port, max_pending = N })

local function phase(cmd)
    local next_i = 0
    local function worker()
        while next_i < N do
            next_i = next_i + 1
            local i = next_i
            if cmd == "SET" then
                assert(r:call("SET", "key:" .. i, "xxx"))
            else
                assert(r:call("GET", "key:" .. i))
            end
        end
    end
    local workers = {}
    for i = 1, C do workers[i] = worker end
    local t0 = sibyl.now()
    assert(sibyl.gather(workers))
    return N / (sibyl.now() - t0)
end

local set_rate = phase("SET")
local get_rate = phase("GET")
print(("%d %d"):format(set_rate, get_rate))
r:close()
