-- mcp_bench.lua -- Sibyl's side of mcp.bench.sh: an MCP client over stdio
-- calls the tool `add` of the server it spawns, N times from C concurrent
-- tasks (one connection: the calls are in flight together), and prints
-- "sibyl: <calls/s> calls/s (protocol <version>)".
--
--   sibyl tests/bench/mcp_bench.lua N C <command> [args...]
local sibyl = require "sibyl"
local mcp = require "sibyl.mcp"

local N, C = tonumber(arg[1]), tonumber(arg[2])
local cmd = {}
for i = 3, #arg do cmd[#cmd + 1] = arg[i] end
local c = assert(mcp.connect{ command = cmd })
local done = 0
local function worker()
    while done < N do
        done = done + 1
        local r = assert(c:call_tool("add", { a = 2, b = 3 }))
        assert(not r.isError, "add failed")
    end
end
local t0 = sibyl.now()
local tasks = {}
for i = 1, C do tasks[i] = worker end
assert(sibyl.gather(tasks))
local secs = sibyl.now() - t0
print(("sibyl: %.0f calls/s (protocol %s)"):format(N / secs, c.protocol_version))
c:close()
