-- app.lua -- a tiny service for `sibyl serve examples/serve/app.lua --port 8080`.
-- Each request runs in its own task, so handlers can wait on I/O freely.
local sibyl = require "sibyl"

return {
    ["GET /healthz"] = function() return { ok = true } end,

    -- Path parameters arrive in req.params; query strings in req.query.
    ["GET /hello/:name"] = function(req)
        return { hello = req.params.name, polite = req.query.polite == "1" }
    end,

    -- A JSON body in, a JSON body out, with a status of our choosing.
    ["POST /v1/echo"] = function(req)
        local body, err = req:json()
        if not body then return { status = 400, body = { error = tostring(err) } } end
        return { status = 201, body = { echo = body } }
    end,

    -- Server-Sent Events: one event every 100 ms.
    ["GET /v1/ticks"] = function(req, res)
        for i = 1, 5 do
            if not res:sse{ event = "tick", data = { n = i } } then return end  -- client left
            sibyl.sleep(0.1)
        end
    end,
}
