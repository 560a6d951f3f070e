-- sibyl.serve -- `sibyl serve app.lua [--port N] [--host H]`.
--
-- app.lua returns its routes, e.g.
--
--   return {
--       ["GET /hello/:name"] = function(req) return { hello = req.params.name } end,
--   }
--
-- or a table { routes = {...}, max_body = ..., ... } of server.listen
-- options. The port comes from --port, else $PORT, else 8080; the host from
-- --host, else $HOST, else 127.0.0.1. SIGINT/SIGTERM stop accepting, let
-- requests in flight finish (up to 10 s) and exit. A script that returns
-- nothing may start its own servers; serve then just runs it.

local server = require "sibyl.server"

local _M = { _VERSION = "0.1.0" }

local USAGE = "usage: sibyl serve app.lua [--port N] [--host HOST]"


local function parse_args(args)
    local o = {}
    local i = 1
    while i <= #args do
        local a = args[i]
        if a == "--port" or a == "--host" then
            o[a:sub(3)] = args[i + 1] or error(USAGE, 0)
            i = i + 2
        elseif a:match("^%-%-port=") then
            o.port = a:match("=(.*)")
            i = i + 1
        elseif a:match("^%-%-host=") then
            o.host = a:match("=(.*)")
            i = i + 1
        elseif a == "-h" or a == "--help" then
            print(USAGE)
            os.exit(0)
        elseif not o.script then
            o.script = a
            i = i + 1
        else
            error("sibyl serve: unexpected argument '" .. a .. "'\n" .. USAGE, 0)
        end
    end
    if not o.script then
        error(USAGE, 0)
    end
    return o
end


--- Entry point used by the CLI; `arg` holds the arguments after "serve".
function _M.main()
    local o = parse_args(arg)
    local chunk, err = loadfile(o.script)
    if not chunk then
        error("sibyl serve: " .. err, 0)
    end
    local app = chunk()
    if app == nil then
        return                      -- the script runs its own servers
    end
    if type(app) ~= "table" then
        error("sibyl serve: " .. o.script .. " must return a routes table, got " .. type(app), 0)
    end
    local opts = app.routes and app or { routes = app }
    opts.port = tonumber(o.port or os.getenv("PORT") or opts.port or 8080)
    opts.host = o.host or os.getenv("HOST") or opts.host or "127.0.0.1"
    if not opts.port then
        error("sibyl serve: the port must be a number", 0)
    end
    local srv, lerr = server.listen(opts)
    if not srv then
        error("sibyl serve: " .. tostring(lerr), 0)
    end
    io.stderr:write(("sibyl: serving %s on http://%s:%d\n"):format(o.script, opts.host, srv.port))
    server.serve_until_signal(srv)
end


return _M
