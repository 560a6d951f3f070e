-- sibyl.mcp.protocol -- what Sibyl's MCP client and server share: the
-- protocol versions of both generations, error codes, `_meta` keys, and the
-- header value encoding of Streamable HTTP.
--
-- Generations ("eras", in the specification's words):
--  * modern: 2026-07-28. Stateless: no handshake; every request carries its
--    protocol version and client capabilities in params._meta;
--    `server/discover` advertises versions and capabilities; every result
--    carries `resultType`.
--  * legacy: 2025-11-25, 2025-06-18 and 2025-03-26. An `initialize`
--    handshake opens a session (on HTTP, an Mcp-Session-Id header).
-- Docs: doc/mcp.md.

local sibyl = require "sibyl"
local json = require "sibyl.json"

local type, pairs, ipairs, tostring, error = type, pairs, ipairs, tostring, error
local find, format, concat = string.find, string.format, table.concat

local _M = {}

_M.MODERN = { "2026-07-28" }
_M.LEGACY = { "2025-11-25", "2025-06-18", "2025-03-26" }
_M.SUPPORTED = { "2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26" }
_M.LATEST = "2026-07-28"
_M.LATEST_LEGACY = "2025-11-25"

local function set_of(list)
    local s = {}
    for _, v in ipairs(list) do s[v] = true end
    return s
end
_M.is_modern = set_of(_M.MODERN)
_M.is_legacy = set_of(_M.LEGACY)

--- JSON-RPC and MCP error codes.
_M.code = {
    PARSE = -32700,
    INVALID_REQUEST = -32600,
    METHOD_NOT_FOUND = -32601,
    INVALID_PARAMS = -32602,
    INTERNAL = -32603,
    HEADER_MISMATCH = -32020,               -- 2026-07-28
    MISSING_CAPABILITY = -32021,            -- 2026-07-28
    UNSUPPORTED_VERSION = -32022,           -- 2026-07-28
    RESOURCE_NOT_FOUND_LEGACY = -32002,     -- 2025-11-25 and earlier
}

--- Errors that only a modern server sends: seeing one means "modern".
_M.is_modern_error = {
    [-32020] = true, [-32021] = true, [-32022] = true,
}

_M.META_VERSION = "io.modelcontextprotocol/protocolVersion"
_M.META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
_M.META_CLIENT_CAPS = "io.modelcontextprotocol/clientCapabilities"
_M.META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
_M.META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"

--- The param mirrored into the Mcp-Name header, per method.
_M.NAME_PARAM = { ["tools/call"] = "name", ["prompts/get"] = "name", ["resources/read"] = "uri" }


--- The first version of `mine` (in preference order) that `theirs` lists.
function _M.pick(mine, theirs)
    local s = set_of(type(theirs) == "table" and theirs or {})
    for _, v in ipairs(mine) do
        if s[v] then return v end
    end
end


--- A JSON-RPC error response.
function _M.rpc_error(id, code, message, data)
    return { jsonrpc = "2.0", id = id, error = { code = code, message = message, data = data } }
end


local b64 = require "sibyl.base64"      -- also used by the server for blobs
_M.b64encode, _M.b64decode = b64.encode, b64.decode


-- ------------------------------------------------- HTTP header values

local SENTINEL_PAT = "^=%?base64%?(.*)%?=$"

--- A value as an HTTP header: plain when it is visible ASCII without
-- leading or trailing space, else (or when it looks like the sentinel)
-- "=?base64?...?=".
function _M.header_value(v)
    if type(v) == "boolean" then return v and "true" or "false" end
    if type(v) == "number" then return format("%d", v) end
    v = tostring(v)
    if find(v, "^[\33-\126][\32-\126\t]*$") and not find(v, "[ \t]$") and not find(v, SENTINEL_PAT) then
        return v
    end
    if v == "" then return v end
    return "=?base64?" .. _M.b64encode(v) .. "?="
end


--- Decode a header value written by header_value: the string, or nil,
-- reason when it is malformed.
function _M.decode_header_value(h)
    local inner = h:match(SENTINEL_PAT)
    if inner then
        local v = _M.b64decode(inner)
        if not v then return nil, "bad base64 in " .. h end
        return v
    end
    if find(h, "[%z\1-\8\10-\31\127-\255]") then return nil, "invalid characters" end
    return h
end


-- The x-mcp-header annotations of a tool's inputSchema: list of
-- { header = "Region", path = {"region"}, type = "string" }, or nil, reason
-- when an annotation breaks the rules (the tool is then unusable on HTTP).
function _M.param_headers(schema)
    local found, seen = {}, {}
    local function walk(s, path, depth)
        if type(s) ~= "table" or depth > 16 then return true end
        local props = s.properties
        if type(props) ~= "table" then return true end
        for name, ps in pairs(props) do
            if type(ps) == "table" then
                local p = {}
                for i, k in ipairs(path) do p[i] = k end
                p[#p + 1] = name
                local h = ps["x-mcp-header"]
                if h ~= nil then
                    if type(h) ~= "string" or not find(h, "^[!#$%%&'*+%-.^_`|~%w]+$") then
                        return nil, format("x-mcp-header %q of %q is not an HTTP token", tostring(h), name)
                    end
                    local lh = h:lower()
                    if seen[lh] then return nil, format("x-mcp-header %q is used twice", h) end
                    seen[lh] = true
                    local t = ps.type
                    if t ~= "string" and t ~= "integer" and t ~= "boolean" then
                        return nil, format("x-mcp-header %q is on %q of type %s (string, integer or boolean only)",
                                           h, name, tostring(t))
                    end
                    found[#found + 1] = { header = h, path = p, type = t }
                end
                local ok, err = walk(ps, p, depth + 1)
                if not ok then return nil, err end
            end
        end
        return true
    end
    local ok, err = walk(schema, {}, 0)
    if not ok then return nil, err end
    return found
end


--- The value at a property path in args, or nil.
function _M.at_path(args, path)
    local v = args
    for _, k in ipairs(path) do
        if type(v) ~= "table" then return nil end
        v = v[k]
    end
    if v == nil or v == json.null then return nil end
    return v
end


--- nil, an error of the MCP layer: its text reads "mcp: ..." whatever the kind.
function _M.fail(kind, msg, fields)
    return nil, sibyl.error(kind, kind == "mcp" and msg or "mcp: " .. msg, fields)
end


function _M.check_table(v, what, level)
    if type(v) ~= "table" then error(what .. " must be a table", (level or 1) + 1) end
end

return _M
