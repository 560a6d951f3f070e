-- fanout_run.lua -- the measuring half of fanout.lua and llm_fanout.lua:
-- run call() N times from C workers and print one line
-- "<name> N=.. C=.. ok=.. <secs>s <rate> req/s cpu=<s> rss=<MB>".
-- call() returns true for a good reply, or nil, err.
local sibyl = require "sibyl"

return function(name, N, C, call)
    local next_i, ok = 0, 0
    local function worker()
        while next_i < N do
            next_i = next_i + 1
            local good, err = call()
            if good then
                ok = ok + 1
            elseif err then
                io.stderr:write(tostring(err), "\n")
            end
        end
    end
    local t0, c0 = sibyl.now(), os.clock()
    local workers = {}
    for i = 1, C do workers[i] = worker end
    sibyl.gather(workers)
    local dt = sibyl.now() - t0
    local rss = 0
    for line in io.lines("/proc/self/status") do
        local kb = line:match("^VmHWM:%s+(%d+)")
        if kb then rss = tonumber(kb) / 1024 end
    end
    print(("%s N=%d C=%d ok=%d %.2fs %d req/s cpu=%.2f rss=%.1f"):format(
        name, N, C, ok, dt, N / dt, os.clock() - c0, rss))
end
