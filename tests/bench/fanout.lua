-- fanout.lua N C [url] -- N chat-completion POSTs at concurrency C with full
-- JSON decode, the same work as ../shared/bench/py_aiohttp.py. Prints one
-- line (see fanout_run.lua).
package.path = arg[0]:gsub("[^/]*$", "") .. "?.lua;" .. package.path
local http = require "sibyl.http"
local run = require "fanout_run"

local N, C = tonumber(arg[1] or 20000), tonumber(arg[2] or 256)
local URL = arg[3] or "http://127.0.0.1:18080/v1/chat/completions"
local BODY = { model = "mock-1", messages = { { role = "user", content = "What is the capital of France?" } } }
local HEADERS = { Authorization = "Bearer sk-bench" }

http.configure{ max_host_connections = C }
run("sibyl", N, C, function()
    local res, err = http.post(URL, BODY, { headers = HEADERS })
    if not res then return nil, err end
    local d = res:json()
    return d and d.choices[1].message.content ~= ""
end)
