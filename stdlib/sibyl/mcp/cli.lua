-- sibyl.mcp.cli -- `sibyl mcp serve tools.lua [--http PORT] [--host H] [--path P]`.
--
-- tools.lua returns a table { name =, version =, instructions =, tools = {...},
-- resources = {...}, prompts = {...} } (tools in sibyl.agent's shape), a
-- plain list of tools, or an mcp.server. Without --http the server speaks
-- stdio: stdout carries only protocol messages, so print() and io.write go
-- to stderr while it runs. With --http it listens on POST /mcp (loopback
-- by default) until SIGINT/SIGTERM.

local mcp = require "sibyl.mcp"

local _M = {}

local USAGE = "usage: sibyl mcp serve tools.lua [--http PORT] [--host HOST] [--path /mcp]"


local function parse_args(args)
    local o = {}
    local i = 1
    if args[1] ~= "serve" then
        error((args[1] and ("sibyl mcp: unknown subcommand '" .. args[1] .. "'\n") or "") .. USAGE, 0)
    end
    i = 2
    while i <= #args do
        local a = args[i]
        local k, v = a:match("^%-%-(%w+)=(.*)$")
        if k then
            o[k] = v
            i = i + 1
        elseif a == "--http" or a == "--host" or a == "--path" then
            o[a:sub(3)] = args[i + 1] or error(USAGE, 0)
            i = i + 2
        elseif a == "-h" or a == "--help" then
            print(USAGE)
            os.exit(0)
        elseif not o.script and a:sub(1, 1) ~= "-" then
            o.script = a
            i = i + 1
        else
            error("sibyl mcp serve: unexpected argument '" .. a .. "'\n" .. USAGE, 0)
        end
    end
    if not o.script then error(USAGE, 0) end
    return o
end


--- Entry point used by the CLI; `arg` holds the arguments after "mcp".
function _M.main()
    local o = parse_args(arg)
    local stdio = o.http == nil
    if stdio then
        -- stdout belongs to the protocol: route the script's output to stderr.
        io.output(io.stderr)
        _G.print = function(...)
            local n, parts = select("#", ...), {}
            for i = 1, n do parts[i] = tostring((select(i, ...))) end
            io.stderr:write(table.concat(parts, "\t"), "\n")
        end
    end
    local chunk, err = loadfile(o.script)
    if not chunk then error("sibyl mcp serve: " .. err, 0) end
    local srv = mcp.server_from(chunk(), o.script)
    if stdio then
        srv:serve_stdio()
        return
    end
    local port = tonumber(o.http)
    if not port then error("sibyl mcp serve: --http needs a port number (0 for a free one)", 0) end
    local s, lerr = srv:listen{ port = port, host = o.host or "127.0.0.1", path = o.path }
    if not s then error("sibyl mcp serve: " .. tostring(lerr), 0) end
    io.stderr:write(("sibyl: MCP server %s on http://%s:%d%s\n"):format(o.script, s.host, s.port, o.path or "/mcp"))
    io.stdout:write(("listening %d\n"):format(s.port))
    io.stdout:flush()
    require("sibyl.server").serve_until_signal(s)
end

return _M
