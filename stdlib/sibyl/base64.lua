-- sibyl.base64 -- standard base64 (RFC 4648, "+/" and "=" padding) on the
-- FFI: for embedding vectors sent as base64 float32s (sibyl.llm), MCP
-- header values and resource blobs (sibyl.mcp).
--
--   local b64 = require "sibyl.base64"
--   b64.encode("hi")            --> "aGk="
--   b64.decode("aGk=")          --> "hi"; nil for anything not base64
--   local buf, n = b64.decode_buf(s)   -- uint8_t[n] cdata, no Lua string made

local ffi = require "ffi"
local bit = require "bit"

local byte, floor = string.byte, math.floor
local band, bor, lshift, rshift = bit.band, bit.bor, bit.lshift, bit.rshift

local _M = {}

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local DEC = ffi.new("uint8_t[256]")
for i = 0, 255 do DEC[i] = 255 end
for i = 1, 64 do DEC[byte(ALPHABET, i)] = i - 1 end
local ENC = ffi.new("uint8_t[64]", { byte(ALPHABET, 1, 64) })


--- Decode s into a buffer from alloc(n) (default: a uint8_t[n]): buf, n;
-- or nil when s is not base64 (a character outside the alphabet, or a
-- length no encoder makes) or alloc returns nil. Trailing "=" is optional.
-- alloc lets callers decode straight into their own type (float[n / 4]).
function _M.decode_buf(s, alloc)
    local len = #s
    local p = ffi.cast("const uint8_t *", s)
    while len > 0 and p[len - 1] == 61 do len = len - 1 end   -- '='
    if len % 4 == 1 or #s - len > 2 then return nil end
    local n = floor(len * 3 / 4)
    local buf = alloc and alloc(n) or (not alloc and ffi.new("uint8_t[?]", n > 0 and n or 1))
    if not buf then return nil end
    local out = ffi.cast("uint8_t *", buf)
    local o, acc, bits = 0, 0, 0
    for i = 0, len - 1 do
        local v = DEC[p[i]]
        if v == 255 then return nil end
        acc = bor(lshift(band(acc, 0xffff), 6), v)
        bits = bits + 6
        if bits >= 8 then
            bits = bits - 8
            out[o] = band(rshift(acc, bits), 0xff)
            o = o + 1
        end
    end
    return buf, n
end


--- Decode s: the bytes as a string, or nil when s is not base64.
function _M.decode(s)
    local buf, n = _M.decode_buf(s)
    if not buf then return nil end
    return ffi.string(buf, n)
end


--- Encode the string s, with "=" padding.
function _M.encode(s)
    local n = #s
    local p = ffi.cast("const uint8_t *", s)
    local out = ffi.new("uint8_t[?]", floor((n + 2) / 3) * 4 + 1)
    local o = 0
    for i = 0, n - 1, 3 do
        local b1 = i + 1 < n and p[i + 1] or 0
        local b2 = i + 2 < n and p[i + 2] or 0
        local v = bor(lshift(p[i], 16), lshift(b1, 8), b2)
        out[o] = ENC[rshift(v, 18)]
        out[o + 1] = ENC[band(rshift(v, 12), 63)]
        out[o + 2] = i + 1 < n and ENC[band(rshift(v, 6), 63)] or 61
        out[o + 3] = i + 2 < n and ENC[band(v, 63)] or 61
        o = o + 4
    end
    return ffi.string(out, o)
end

return _M
