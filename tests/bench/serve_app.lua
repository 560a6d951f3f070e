-- serve_app.lua -- the route `tests/bench/serve.bench.sh` loads with wrk:
-- POST /v1/chat/completions answering the same bytes as the nginx mock.
local fs = require "sibyl.fs"
local body = assert(fs.read(os.getenv("CHAT_JSON") or "../shared/bench/chat.json"))

return {
    ["POST /v1/chat/completions"] = function(req)
        return { status = 200, headers = { ["Content-Type"] = "application/json" }, body = body }
    end,
}
