-- sibyl.schema.messages -- how sibyl.schema sees values and reports errors:
-- the JSON kind of a table, values as quoted in messages, error paths, and
-- the error recording every compiled check uses.
--
--   local msg = require "sibyl.schema.messages"
--   msg.show("ten")        --> "\"ten\"" (for "..., got " in a message)
--   msg.plural(3, "item")  --> "3 items"
--
-- The validation state `st` that fail, push, too_deep and collect work on
-- is described under "Validation state" below.
--
-- Caveats:
--  * Quoted values are cut to SHOW_MAX (40) bytes on a UTF-8 boundary; a
--    table is shown by its kind ("array"), never its contents.
--  * Paths index arrays from 0, as the JSON text does.

local json = require "sibyl.json"

local type, next, getmetatable, pcall = type, next, getmetatable, pcall
local byte, sub, find, format, gsub = string.byte, string.sub, string.find, string.format, string.gsub
local concat = table.concat
local huge = math.huge

local _M = { _VERSION = "0.1.0" }

local null = json.null
local array_mt = json.array_mt
local empty_array_mt = getmetatable(json.empty_array)

local SHOW_MAX = 40          -- longest piece of a value quoted in a message


-- Values --------------------------------------------------------------------

-- Whether table t is a JSON array and/or object (see the caveats). Does not
-- allocate.
local function classify(t)
    local mt = getmetatable(t)
    if mt == array_mt or mt == empty_array_mt then
        return true, false
    end
    if next(t) == nil then
        return true, true
    end
    local n = #t
    if n == 0 then
        return false, true
    end
    local count = 0
    for k in next, t do
        if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then
            return false, true
        end
        count = count + 1
    end
    return count == n, count ~= n
end


local function is_array(t)
    local arr = classify(t)
    return arr
end


-- Code points in a UTF-8 string (continuation bytes are not counted).
local function utf8_len(s)
    local n = 0
    for i = 1, #s do
        local c = byte(s, i)
        if c < 128 or c >= 192 then
            n = n + 1
        end
    end
    return n
end


local function fmt_num(x)
    if x ~= x then
        return "NaN"
    elseif x == huge or x == -huge then
        return x > 0 and "Infinity" or "-Infinity"
    elseif x % 1 == 0 and x > -1e15 and x < 1e15 then
        return format("%d", x)
    end
    return format("%.14g", x)
end


local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function escape_char(c)
    return ESCAPES[c] or format("\\u%04x", byte(c))
end


-- JSON-style quoted string, cut to `limit` bytes (default SHOW_MAX) on a
-- UTF-8 boundary, with "..." before the closing quote when cut.
local function quote(s, limit)
    limit = limit or SHOW_MAX
    local cut = #s > limit
    if cut then
        local i = limit
        while i > 0 do
            local c = byte(s, i + 1)
            if c < 128 or c >= 192 then break end
            i = i - 1
        end
        s = sub(s, 1, i)
    end
    return '"' .. gsub(s, '[%c"\\]', escape_char) .. (cut and '..."' or '"')
end


local function table_kind(v)
    local arr, obj = classify(v)
    if arr and obj then
        return "empty object or array"
    end
    return arr and "array" or "object"
end


-- A value as shown after "got": short, never the whole of a large table.
local function show(v)
    local t = type(v)
    if t == "string" then
        return quote(v)
    elseif t == "number" then
        return fmt_num(v)
    elseif t == "boolean" then
        return v and "true" or "false"
    elseif v == null then
        return "null"
    elseif t == "table" then
        return table_kind(v)
    end
    return v == nil and "nil" or t
end


-- show() with the JSON type in front: `string "ten"`, `number 5`.
local function typed_show(v)
    local t = type(v)
    if t == "string" or t == "number" or t == "boolean" then
        return t .. " " .. show(v)
    end
    return show(v)
end


-- A value from the schema (trusted, may be a table) for messages.
local function show_schema_value(v)
    if type(v) ~= "table" then
        return show(v)
    end
    local ok, s = pcall(json.encode, v)
    if not ok then
        return table_kind(v)
    end
    return #s > SHOW_MAX and sub(s, 1, SHOW_MAX) .. "..." or s
end


-- `n word`, with `many` (default word .. "s") unless n is 1.
local function plural(n, word, many)
    return fmt_num(n) .. " " .. (n == 1 and word or many or word .. "s")
end


-- Validation state ----------------------------------------------------------
--
-- A compiled schema node is a function check(v, st, d) -> boolean. `d` is the
-- depth of v, and st.path[1..d] holds the keys leading to it (numbers for
-- array indexes, strings for object keys), so no path is built unless an
-- error is recorded. While st.quiet > 0 (inside anyOf/oneOf/not/if/contains
-- probes) nothing is recorded and the first failure returns. st.stop is set
-- when max_errors is exceeded or the value is too deep; everything then
-- returns false at once.

local function path_string(st, d)
    local path = st.path
    local parts = { "$" }
    for i = 1, d do
        local k = path[i]
        if type(k) == "number" then
            parts[i + 1] = format("[%d]", k - 1)
        elseif #k <= SHOW_MAX and find(k, "^[%a_][%w_]*$") then
            parts[i + 1] = "." .. k
        else
            parts[i + 1] = "[" .. quote(k) .. "]"
        end
    end
    return concat(parts)
end


-- Record an error at depth d. Callers check st.quiet first (so messages are
-- only formatted when kept). Returns false.
local function fail(st, d, keyword, message, expected)
    if st.stop then
        return false
    end
    local n = st.n
    if n >= st.max then
        st.truncated = true
        st.stop = true
        return false
    end
    local errs = st.errs
    if errs == nil then
        errs = {}
        st.errs = errs
    end
    n = n + 1
    st.n = n
    errs[n] = { path = path_string(st, d), message = message, keyword = keyword, expected = expected }
    return false
end


-- Append an already built error (from a collected branch).
local function push(st, err)
    if st.stop then
        return
    end
    if st.n >= st.max then
        st.truncated = true
        st.stop = true
        return
    end
    st.n = st.n + 1
    st.errs = st.errs or {}
    st.errs[st.n] = err
end


local function too_deep(st, d)
    if not st.deep then
        st.deep = path_string(st, d)
    end
    st.stop = true
    return false
end


-- Run check in recording mode with its own error list and cap; return the
-- list. Used to explain why anyOf/oneOf alternatives failed.
local function collect(st, check, v, d)
    local errs, n, stop, truncated = st.errs, st.n, st.stop, st.truncated
    st.errs, st.n, st.stop = nil, 0, false
    check(v, st, d)
    local got = st.errs or {}
    st.errs, st.n, st.truncated = errs, n, truncated
    st.stop = stop or st.deep ~= nil
    return got
end


_M.classify, _M.is_array, _M.utf8_len = classify, is_array, utf8_len
_M.fmt_num, _M.quote, _M.show, _M.typed_show, _M.show_schema_value, _M.plural =
    fmt_num, quote, show, typed_show, show_schema_value, plural
_M.path_string, _M.fail, _M.push, _M.too_deep, _M.collect = path_string, fail, push, too_deep, collect

return _M
