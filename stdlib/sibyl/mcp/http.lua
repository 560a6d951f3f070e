-- sibyl.mcp.http -- the client side of MCP's Streamable HTTP transport: one
-- POST per message with `Accept: application/json, text/event-stream`; the
-- answer is a JSON object or an SSE stream of notifications ending with the
-- response. Modern requests carry MCP-Protocol-Version, Mcp-Method,
-- Mcp-Name and Mcp-Param-* headers; legacy sessions carry Mcp-Session-Id
-- and are ended with DELETE on close. Used by sibyl.mcp.client.

local sibyl = require "sibyl"
local http = require "sibyl.http"
local json = require "sibyl.json"
local sse = require "sibyl.sse"
local proto = require "sibyl.mcp.protocol"

local type, pairs, ipairs, tostring, setmetatable, unpack = type, pairs, ipairs, tostring, setmetatable, unpack
local format, find, concat = string.format, string.find, table.concat

local _M = {}

local transport = { kind = "http" }
local transport_mt = { __index = transport }


-- Headers for one message (a list of "Name: value" lines).
function transport:headers_for(msg, version, era, extra)
    local h = { "Content-Type: application/json", "Accept: application/json, text/event-stream",
                unpack(self.base_headers) }
    if version and msg.method ~= "initialize" then h[#h + 1] = "MCP-Protocol-Version: " .. version end
    if era == "modern" and msg.method then
        h[#h + 1] = "Mcp-Method: " .. msg.method
        local np = proto.NAME_PARAM[msg.method]
        local v = np and type(msg.params) == "table" and msg.params[np]
        if type(v) == "string" then h[#h + 1] = "Mcp-Name: " .. proto.header_value(v) end
    end
    if era == "legacy" and self.session then h[#h + 1] = "Mcp-Session-Id: " .. self.session end
    for _, line in ipairs(extra or {}) do h[#h + 1] = line end
    return h
end


-- A JSON-RPC message from a body, tagged with the HTTP status.
local function message_of(body, status)
    local m = json.decode(body)
    if type(m) == "table" and (m.result ~= nil or m.error ~= nil) then
        m._status = status
        return m
    end
end


--- POST one message. Returns the response message (or true for a
-- notification), or nil, err. on_message gets the notifications that
-- arrive on an SSE answer before the response.
function transport:exchange(msg, headers, on_message)
    local status, ctype, sid
    local parser, parts, response, bad
    local res, err = http.request{
        method = "POST", url = self.url, headers = headers, body = json.encode(msg),
        timeout = 0, max_body = self.max_body,
        stream = function(chunk, r)
            if status == nil then
                status, ctype = r.status, r.headers["content-type"] or ""
                sid = r.headers["mcp-session-id"]
                if find(ctype, "text/event-stream", 1, true) then parser = sse.parser() else parts = {} end
            end
            if parts then
                parts[#parts + 1] = chunk
                return true
            end
            local events, perr = parser:feed(chunk)
            if not events then bad = perr; return false end
            for _, ev in ipairs(events) do
                if ev.data ~= "" then
                    local m = json.decode(ev.data)
                    if type(m) ~= "table" then
                        bad = sibyl.error("parse", "mcp: an SSE event from the server is not JSON: " .. ev.data:sub(1, 200))
                        return false
                    end
                    if m.method == nil and m.id ~= nil and m.id == msg.id then
                        response = m
                        return false                 -- the response ends our interest in the stream
                    end
                    if m.method then on_message(m) end
                end
            end
            return true
        end,
    }
    if parser then parser:close() end
    if not res then return nil, err end
    if bad then return nil, bad end
    status = status or res.status
    if msg.method == "initialize" and sid then self.session = sid end
    if response then
        response._status = status
        return response
    end
    local body = parts and concat(parts) or ""
    if msg.id == nil and status >= 200 and status < 300 then return true end
    if status == 404 and self.session and msg.method ~= "initialize" then
        self.session = nil                      -- 2025-xx: the session is gone (expired, or ended)
        return nil, sibyl.error("closed", format("mcp: the server at %s ended the session (HTTP 404)", self.url),
                                { status = status, body = body, session_gone = true })
    end
    local m = message_of(body, status)
    if m then return m end
    if status >= 400 then
        return nil, sibyl.error("http", format("mcp: HTTP %d from %s: %s", status, self.url, body:sub(1, 300)),
                                { status = status, body = body })
    end
    if parser then
        return nil, sibyl.error("closed", "mcp: the server's SSE stream ended before the response to " .. tostring(msg.method))
    end
    return nil, sibyl.error("parse", format("mcp: the server's answer to %s is not a JSON-RPC response: %s",
                                            tostring(msg.method), body:sub(1, 300)), { status = status })
end


--- Legacy: end the session (DELETE).
function transport:close_session()
    if not self.session then return end
    local h = { "Mcp-Session-Id: " .. self.session, unpack(self.base_headers) }
    self.session = nil
    http.request{ method = "DELETE", url = self.url, headers = h, timeout = 2 }
end


function transport:close() end


function _M.open(opts)
    if type(opts.url) ~= "string" or not find(opts.url, "^https?://") then
        error("mcp.connect: opts.url must be an http:// or https:// URL", 3)
    end
    local base = {}                             -- opts.headers as "Name: value" lines
    for k, v in pairs(opts.headers or {}) do base[#base + 1] = k .. ": " .. tostring(v) end
    return setmetatable({ url = opts.url, base_headers = base, max_body = opts.max_message }, transport_mt)
end

return _M
