-- sibyl.mcp -- the Model Context Protocol: a client (stdio and Streamable
-- HTTP), a server that exposes Lua functions as tools, and the bridge that
-- turns a server's tools into agent tools.
--
--   local mcp = require "sibyl.mcp"
--   local agent = require "sibyl.agent"
--   local c = assert(mcp.connect{ command = { "sibyl", "mcp", "serve", "scripts/mcp_tools.lua" } })
--   local a = agent.new{ tools = assert(mcp.tools(c)) }
--   print(a:run("What is 17 * 23?").content)
--   c:close()
--
-- Both protocol generations are spoken: 2026-07-28 (stateless, _meta on
-- every request, server/discover) and 2025-11-25 / 2025-06-18 / 2025-03-26
-- (the initialize handshake). Docs: doc/mcp.md. Spec: tests/lua/28-mcp_spec.lua.

local sibyl = require "sibyl"
local schema = require "sibyl.schema"
local proto = require "sibyl.mcp.protocol"
local client = require "sibyl.mcp.client"
local server = require "sibyl.mcp.server"
require "sibyl.mcp.server_http"             -- adds server:routes() and server:listen()

local type, ipairs, pairs, tostring, error, pcall = type, ipairs, pairs, tostring, error, pcall
local concat, format = table.concat, string.format

local _M = { _VERSION = "0.1.0" }

_M.VERSIONS = proto.SUPPORTED
_M.LATEST = proto.LATEST
_M.connect = client.connect
_M.server = server.new
_M.client_defaults = client.defaults
_M.server_defaults = server.defaults


--- The text of a CallToolResult's content: text items joined with
-- newlines; other items described in brackets.
function _M.content_text(content)
    local parts = {}
    for _, c in ipairs(type(content) == "table" and content or {}) do
        if c.type == "text" then
            parts[#parts + 1] = tostring(c.text)
        elseif c.type == "resource" and type(c.resource) == "table" and c.resource.text then
            parts[#parts + 1] = tostring(c.resource.text)
        else
            parts[#parts + 1] = format("[%s %s]", tostring(c.type), tostring(c.mimeType or c.uri or ""))
        end
    end
    return concat(parts, "\n")
end


--- The server's tools as sibyl.agent tools: {name, description,
-- parameters, fn}. fn calls the tool; an isError result becomes nil, err
-- (kind "tool"), so the model sees the failure. opts: prefix (added to the
-- names), only = {names...}, timeout (per call). Returns the list or nil, err.
function _M.tools(c, opts)
    if type(c) ~= "table" or type(c.call_tool) ~= "function" then
        error("mcp.tools(client, opts): a client from mcp.connect is needed", 2)
    end
    opts = opts or {}
    local only
    if opts.only then
        only = {}
        for _, n in ipairs(opts.only) do only[n] = true end
    end
    local list, err = c:list_tools()
    if not list then return nil, err end
    local out = {}
    for _, t in ipairs(list) do
        if not only or only[t.name] then
            local params = type(t.inputSchema) == "table" and t.inputSchema or { type = "object", properties = {} }
            if not pcall(schema.compile, params) then
                io.stderr:write(format("mcp.tools: the schema of %q is beyond sibyl.schema; arguments go unchecked\n",
                                       tostring(t.name)))
                params = { type = "object" }
            end
            local name = t.name
            out[#out + 1] = {
                name = (opts.prefix or "") .. name,
                description = t.description or t.title or "",
                parameters = params,
                fn = function(args)
                    local r, cerr = c:call_tool(name, args, { timeout = opts.timeout })
                    if not r then return nil, cerr end
                    local text = _M.content_text(r.content)
                    if r.isError then
                        return nil, sibyl.error("tool", text ~= "" and text or ("the MCP tool " .. name .. " failed"))
                    end
                    if r.structuredContent ~= nil then return r.structuredContent end
                    return text
                end,
            }
        end
    end
    return out
end


--- Build a server from a tools file's value: a server (returned as is) or
-- a table {name, version, instructions, tools, resources, prompts}.
function _M.server_from(v, where)
    if type(v) == "table" and getmetatable(v) and v.handle == server.server.handle then return v end
    if type(v) ~= "table" then
        error(format("%s must return a table {tools = {...}} or an mcp.server, got %s", where or "the tools file",
                     type(v)), 2)
    end
    if v.tools == nil and v[1] ~= nil then v = { tools = v } end
    local o = {}
    for k, x in pairs(v) do o[k] = x end
    return server.new(o)
end

return _M
