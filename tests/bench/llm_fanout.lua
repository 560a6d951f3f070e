-- llm_fanout.lua N C [base_url] -- N llm.chat calls at concurrency C against
-- an OpenAI-compatible endpoint, each reply fully decoded into the
-- normalised result table (content, tool_calls, usage...). The same work as
-- ../shared/bench/node/openai_client.mjs. Prints one line (see fanout_run.lua).
package.path = arg[0]:gsub("[^/]*$", "") .. "?.lua;" .. package.path
local http = require "sibyl.http"
local llm = require "sibyl.llm"
local run = require "fanout_run"

local N, C = tonumber(arg[1] or 20000), tonumber(arg[2] or 256)
local BASE = arg[3] or "http://127.0.0.1:18080/v1"

http.configure{ max_host_connections = C }
local client = llm.client{ type = "openai", base_url = BASE, api_key = "sk-bench", model = "mock-1" }
local MESSAGES = { { role = "user", content = "What is the capital of France?" } }

run("sibyl-llm", N, C, function()
    local r, err = client:chat{ messages = MESSAGES }
    if not r then return nil, err end
    return r.content ~= "" and r.usage.output > 0
end)
