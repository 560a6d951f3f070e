-- sibyl.json -- JSON on lua-cjson, with Sibyl's error conventions.
--
--   local json = require "sibyl.json"
--   local s = json.encode{ model = "m", tools = json.array{} }   --> {"model":"m","tools":[]}
--   local v, err = json.decode(body)          -- nil, err (kind "parse") on bad input
--   if v.field == json.null then ... end      -- JSON null
--
-- Caveats (lua-cjson 2.1.0 as shipped by Debian):
--  * A Lua table with no elements encodes as an object `{}`. Mark arrays with
--    json.array(t) (or use json.empty_array) to get `[]` when empty.
--  * Decoded arrays are plain tables; an empty JSON array decodes to an
--    empty table and re-encodes as `{}` unless marked.
--  * Numbers keep 14 significant digits when encoded (integers beyond 1e14
--    lose precision: send them as strings).
--  * Arrays with holes encode with nulls in the holes when the largest index
--    is at most 10 or at most twice the element count; sparser tables encode
--    as objects with string keys (never an error).

local cjson = require "cjson"
local sibyl = require "sibyl"

local type, pairs, next, getmetatable, setmetatable, pcall, error, tostring =
    type, pairs, next, getmetatable, setmetatable, pcall, error, tostring
local gsub, find = string.gsub, string.find

local _M = { _VERSION = "0.1.0" }

local codec = cjson.new()
codec.encode_sparse_array(true)            -- holes -> object, never an error
codec.encode_invalid_numbers("null")       -- NaN/inf -> null, never an error
codec.decode_invalid_numbers(false)        -- strict JSON on input
codec.encode_number_precision(14)
codec.encode_max_depth(1000)
codec.decode_max_depth(1000)

local c_encode, c_decode = codec.encode, codec.decode

--- The JSON null sentinel (the same value as cjson.null and yaml.null).
_M.null = cjson.null

local array_mt = { __name = "sibyl.json.array" }
_M.array_mt = array_mt

-- Empty arrays are swapped for this string before cjson sees them, and the
-- encoded string for `[]` afterwards. \0 cannot occur unescaped in JSON text.
local PLACEHOLDER = "\0sibyl.empty_array\0"
local ENCODED_PLACEHOLDER = '"\\u0000sibyl.empty_array\\u0000"'


--- Mark a table as a JSON array (so it encodes as [] when empty). Returns t.
function _M.array(t)
    if t == nil then
        t = {}
    elseif type(t) ~= "table" then
        error("bad argument #1 to 'array' (table expected, got " .. type(t) .. ")", 2)
    end
    return setmetatable(t, array_mt)
end


_M.empty_array = setmetatable({}, {
    __name = "sibyl.json.array",
    __newindex = function() error("json.empty_array is read-only; use json.array{} for a new array", 2) end,
})
local empty_array_mt = getmetatable(_M.empty_array)


local function is_empty_array(v)
    local mt = getmetatable(v)
    return (mt == array_mt or mt == empty_array_mt) and next(v) == nil
end


-- Return a copy of t with empty marked arrays replaced by the placeholder,
-- or nil when t holds none. Copies only the path down to a replacement.
local function substitute(t, depth)
    if depth > 1000 then
        return nil  -- let cjson report the excessive depth
    end
    local out
    for k, v in pairs(t) do
        if type(v) == "table" then
            local r
            if is_empty_array(v) then
                r = PLACEHOLDER
            else
                r = substitute(v, depth + 1)
            end
            if r ~= nil then
                if out == nil then
                    out = {}
                    for k2, v2 in pairs(t) do out[k2] = v2 end
                end
                out[k] = r
            end
        end
    end
    return out
end


--- Encode a Lua value as JSON text. Raises for values JSON cannot hold
-- (functions, userdata, cycles): those are programmer mistakes.
function _M.encode(value)
    if type(value) == "table" then
        if is_empty_array(value) then
            return "[]"
        end
        local replaced = substitute(value, 1)
        if replaced ~= nil then
            local ok, s = pcall(c_encode, replaced)
            if not ok then
                error("json.encode: " .. tostring(s), 2)
            end
            return (gsub(s, ENCODED_PLACEHOLDER, "[]"))
        end
    end
    local ok, s = pcall(c_encode, value)
    if not ok then
        error("json.encode: " .. tostring(s), 2)
    end
    return s
end


--- Decode JSON text. Returns the value, or nil, err (kind "parse") with a
-- message that says where the text went wrong.
function _M.decode(text)
    if type(text) ~= "string" then
        error("bad argument #1 to 'decode' (string expected, got " .. type(text) .. ")", 2)
    end
    local ok, v = pcall(c_decode, text)
    if ok then
        return v
    end
    local msg = tostring(v)
    if find(msg, "^Expected") or find(msg, "^Found") or find(msg, "^Unexpected") then
        msg = "invalid JSON: " .. msg
    end
    return nil, sibyl.error("parse", "json.decode: " .. msg)
end


return _M
