-- llm_fanout.lua N C [base_url] -- N llm.chat calls at concurrency C against
-- an OpenAI-compatible endpoint, each reply fully decoded into the
-- normalised result table (content, tool_calls, usage...). The same work as
-- ../shared/bench/node/openai_client.mjs. Prints one line:
-- "sibyl-llm N=.. C=.. ok=.. <secs>s <calls/s> req/s cpu=<s> rss=<MB>".
local sibyl = require "sibyl"
local http = require "sibyl.http"
local llm = require "sibyl.llm"

local N, C = tonumber(arg[1] or 20000), tonumber(arg[2] or 256)
local BASE = arg[3] or "http://127.0.0.1:18080/v1"

http.configure{ max_host_connections = C }
local client = llm.client{ type = "openai", base_url = BASE, api_key = "sk-bench", model = "mock-1" }
local MESSAGES = { { role = "user", content = "What is the capital of France?" } }
local next_i, ok = 0, 0


local function worker()
    while next_i < N do
        next_i = next_i + 1
        local r, err = client:chat{ messages = MESSAGES }
        if r and r.content ~= "" and r.usage.output > 0 then
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
print(("sibyl-llm N=%d C=%d ok=%d %.2fs %d req/s cpu=%.2f rss=%.1f"):format(N, C, ok, dt, N / dt, os.clock() - c0, rss))
