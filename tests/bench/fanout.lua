-- fanout.lua N C [url] -- N chat-completion POSTs at concurrency C with full
-- JSON decode, the same work as ../shared/bench/py_aiohttp.py. Prints one
-- line: "sibyl N=.. C=.. ok=.. <secs>s <req/s> req/s cpu=<s> rss=<MB>".
local sibyl = require "sibyl"
local http = require "sibyl.http"

local N, C = tonumber(arg[1] or 20000), tonumber(arg[2] or 256)
local URL = arg[3] or "http://127.0.0.1:18080/v1/chat/completions"
local BODY = { model = "mock-1", messages = { { role = "user", content = "What is the capital of France?" } } }
local HEADERS = { Authorization = "Bearer sk-bench" }

http.configure{ max_host_connections = C }
local next_i, ok = 0, 0


local function worker()
    while next_i < N do
        next_i = next_i + 1
        local res, err = http.post(URL, BODY, { headers = HEADERS })
        if res then
            local d = res:json()
            if d and d.choices[1].message.content ~= "" then ok = ok + 1 end
        else
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
print(("sibyl N=%d C=%d ok=%d %.2fs %d req/s cpu=%.2f rss=%.1f"):format(N, C, ok, dt, N / dt, os.clock() - c0, rss))
