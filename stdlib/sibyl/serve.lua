-- sibyl.serve -- `sibyl serve app.lua [--port N] [--host H]`.
--
-- app.lua returns its routes, e.g.
--
--   return {
--       ["GET /hello/:name"] = function(req) return { hello = req.params.name } end,
--   }
--
-- or a table { routes = {...}, max_body = ..., ... } of server.listen
-- options. A table with `agent` or `agents` is served as an
-- OpenAI-compatible API by sibyl.service (doc/serve.md); --keys-env NAME
-- reads its bearer keys from $NAME instead of $SIBYL_API_KEYS. The port comes from --port, else $PORT, else 8080; the host from
-- --host, else $HOST, else 127.0.0.1. SIGINT/SIGTERM stop accepting, let
-- requests in flight finish (up to 10 s) and exit. A script that returns
-- nothing may start its own servers; serve then just runs it.

local server = require "sibyl.server"

local _M = { _VERSION = "0.1.0" }

local USAGE = "usage: sibyl serve app.lua [--port N] [--host HOST] [--keys-env NAME]"


local function parse_args(args)
    local o = {}
    local i = 1
    while i <= #args do
        local a = args[i]
        if a == "--port" or a == "--host" or a == "--keys-env" then
            o[a:sub(3):gsub("-", "_")] = args[i + 1] or error(USAGE, 0)
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
    local service = require "sibyl.service"
    local agents = service.wants(app)
    local opts = (app.routes or agents) and app or { routes = app }
    opts.port = tonumber(o.port or os.getenv("PORT") or opts.port or 8080)
    opts.host = o.host or os.getenv("HOST") or opts.host or "127.0.0.1"
    if not opts.port then
        error("sibyl serve: the port must be a number", 0)
    end
    if o.keys_env then opts.keys_env = o.keys_env end
    local srv, lerr, svc
    if agents then
        srv, lerr = service.listen(opts)
        if srv then svc, lerr = lerr, nil end
    else
        srv, lerr = server.listen(opts)
    end
    if not srv then
        error("sibyl serve: " .. tostring(lerr), 0)
    end
    io.stderr:write(("sibyl: serving %s on http://%s:%d\n"):format(o.script, opts.host, srv.port))
    if svc then
        io.stderr:write(("sibyl: OpenAI-compatible API at http://%s:%d/v1, models: %s%s\n"):format(opts.host,
            srv.port, table.concat(svc.names, ", "), svc.keys and " (bearer keys required)" or ""))
    end
    server.serve_until_signal(srv)
end


return _M
