-- sibyl.schema -- JSON Schema validation for structured LLM output.
--
--   local schema = require "sibyl.schema"
--   local v = schema.compile(s)               -- raises on a malformed schema
--   local ok, errs = v:validate(json.decode(reply))
--   if not ok then retry("Fix your reply: " .. schema.describe(errs)) end
--
-- The subset is what OpenAI/Anthropic structured outputs and tool parameter
-- schemas use; doc/schema.md has the table. A schema compiles once into
-- closures; validating a valid value allocates nothing after the first call.
-- The regex translator is in sibyl/schema/pattern.lua, the format checks in
-- sibyl/schema/formats.lua.
--
-- Caveats:
--  * Lua cannot tell `[]` from `{}` once decoded: an empty plain table is
--    both an array and an object. Tables marked with json.array are arrays
--    only. A non-empty table is an array when its keys are exactly 1..n.
--  * Error paths index arrays from 0, as the JSON text does: "$.items[0]" is
--    value.items[1].
--  * `pattern` is translated to Lua patterns (sibyl.schema.pattern). What
--    cannot be translated (alternation inside a repeated group, lookaround,
--    \b, backreferences, ...) is not checked, and is listed in
--    validator.skipped; unknown `format`s and unsupported keywords are
--    listed there too.
--  * Values are expected to be trees (as json.decode makes). Nesting deeper
--    than max_depth (64) gives one "too deep" error, so cycles end; a DAG
--    sharing sub-tables is walked once per path.

local json = require "sibyl.json"
local pattern = require "sibyl.schema.pattern"
local formats = require "sibyl.schema.formats"

local type, next, ipairs, pairs, rawget, getmetatable, setmetatable, pcall, error, tostring, tonumber =
    type, next, ipairs, pairs, rawget, getmetatable, setmetatable, pcall, error, tostring, tonumber
local unpack = unpack or table.unpack
local byte, sub, find, format, gsub, char = string.byte, string.sub, string.find, string.format,
    string.gsub, string.char
local concat, sort = table.concat, table.sort
local floor, abs, huge = math.floor, math.abs, math.huge

local _M = { _VERSION = "0.1.0" }

local null = json.null
local array_mt = json.array_mt
local empty_array_mt = getmetatable(json.empty_array)

local DEFAULT_MAX_ERRORS, DEFAULT_MAX_DEPTH = 20, 64
local SHOW_MAX = 40          -- longest piece of a value quoted in a message
local UNIQUE_LINEAR = 32     -- uniqueItems: pairwise below this, a set above
local EQUAL_BUDGET = 100000  -- deep_equal visits before giving up (cyclic values)


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


local equal_budget = 0

local function deep_equal_rec(a, b, depth)
    if a == b then
        return true
    end
    if type(a) ~= "table" or type(b) ~= "table" or depth > DEFAULT_MAX_DEPTH then
        return false
    end
    equal_budget = equal_budget - 1
    if equal_budget < 0 then
        return false
    end
    for k, va in next, a do
        local vb = rawget(b, k)
        if vb == nil or not deep_equal_rec(va, vb, depth + 1) then
            return false
        end
    end
    for k in next, b do
        if rawget(a, k) == nil then
            return false
        end
    end
    return true
end


-- Structural equality (1 == 1.0; [] equals {}). Gives up, answering false,
-- after EQUAL_BUDGET tables, so hostile cyclic values cannot hang it.
local function deep_equal(a, b)
    if a == b then
        return true
    end
    if type(a) ~= "table" or type(b) ~= "table" then
        return false
    end
    equal_budget = EQUAL_BUDGET
    return deep_equal_rec(a, b, 0)
end


local function plural(n, word)
    return fmt_num(n) .. " " .. word .. (n == 1 and "" or "s")
end

local function properties_word(n)
    return n == 1 and "1 property" or fmt_num(n) .. " properties"
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


local function accept()
    return true
end


local function reject(v, st, d)
    if st.quiet > 0 then
        return false
    end
    return fail(st, d, "false", "not allowed here (schema is false), got " .. show(v))
end


-- Patterns and formats ------------------------------------------------------
-- The translator lives in sibyl/schema/pattern.lua, the checks in
-- sibyl/schema/formats.lua.

--- Translate an ECMA-262 regex to Lua patterns; a string matches the regex
-- when string.find matches any of them. Returns the list, or nil, reason
-- when the regex uses something untranslatable. Raises for malformed regexes.
_M.translate_pattern = pattern.translate

local FORMATS, FORMAT_HINTS = formats.checks, formats.hints

--- Format checks by name: fn(string) -> boolean. Add your own before compiling.
_M.formats = FORMATS


-- Compiler ------------------------------------------------------------------
--
-- C (the compile context): root schema, memo (schema table -> check), open
-- (tables being compiled), where (table -> first schema path), edges (table
-- -> set of tables applied to the same value: allOf/anyOf/oneOf/not/if/
-- then/else/$ref/dependentSchemas), skipped. A cycle in `edges` would recurse
-- without consuming the value, so compile refuses it.

local function bad(sp, msg)
    error({ schema_error = sp .. ": " .. msg }, 0)
end


local function skip(C, sp, keyword, reason)
    C.skipped[#C.skipped + 1] = { path = sp, keyword = keyword, reason = reason }
end


local function ptr_key(k)
    return (gsub(gsub(k, "~", "~0"), "/", "~1"))
end


local TYPES = { string = true, number = true, integer = true, boolean = true, null = true, array = true,
    object = true }

local UNSUPPORTED = { "unevaluatedProperties", "unevaluatedItems", "$dynamicRef", "$recursiveRef" }


local compile_node


-- Compile subschema s found at schema path sp. When inplace, s applies to
-- the same value as `parent` (records an edge for the loop check).
local function sub_schema(C, s, sp, parent, inplace)
    if s == true then
        return accept
    elseif s == false then
        return reject
    elseif type(s) ~= "table" then
        bad(sp, "expected a schema (object or boolean), got " .. show(s))
    end
    if inplace and parent then
        C.edges[parent][s] = true
    end
    local done = C.memo[s]
    if done then
        return done
    end
    if C.open[s] then
        local memo = C.memo
        return function(v, st, d) return memo[s](v, st, d) end
    end
    C.open[s], C.where[s] = true, C.where[s] or sp
    C.edges[s] = C.edges[s] or {}
    local fn = compile_node(C, s, sp)
    C.open[s], C.memo[s] = nil, fn
    return fn
end


local function resolve(C, ref, sp)
    if type(ref) ~= "string" then
        bad(sp, "$ref must be a string")
    end
    if ref == "#" then
        return C.root
    end
    if sub(ref, 1, 2) ~= "#/" then
        bad(sp, "unsupported $ref " .. quote(ref, 200) .. " (only local JSON pointers such as \"#/$defs/Name\")")
    end
    local node, i = C.root, 3
    while true do
        local slash = find(ref, "/", i, true)
        local seg = sub(ref, i, (slash or 0) - 1)
        seg = gsub(gsub(gsub(seg, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end), "~1", "/"), "~0", "~")
        local nxt = type(node) == "table" and rawget(node, seg) or nil
        if nxt == nil and type(node) == "table" and find(seg, "^%d+$") then
            nxt = rawget(node, tonumber(seg) + 1)
        end
        if nxt == nil then
            bad(sp, "$ref " .. quote(ref, 200) .. " does not resolve")
        end
        node = nxt
        if not slash then break end
        i = slash + 1
    end
    return node
end


local function count_kw(s, key, sp)
    local n = s[key]
    if n ~= nil and (type(n) ~= "number" or n < 0 or n % 1 ~= 0) then
        bad(sp .. "/" .. key, "must be a non-negative integer")
    end
    return n
end


local function number_kw(s, key, sp)
    local n = s[key]
    if n ~= nil and (type(n) ~= "number" or n ~= n) then
        bad(sp .. "/" .. key, "must be a number")
    end
    return n
end


local function schema_list(C, s, key, sp)
    local list = s[key]
    if list == nil then return nil end
    if type(list) ~= "table" or #list == 0 or not is_array(list) then
        bad(sp .. "/" .. key, "must be a non-empty array of schemas")
    end
    local out = {}
    for i, sub_s in ipairs(list) do
        out[i] = sub_schema(C, sub_s, sp .. "/" .. key .. "/" .. (i - 1), s, true)
    end
    return out
end


local function string_list(s, key, sp)
    local list = s[key]
    if type(list) ~= "table" or not is_array(list) then
        bad(sp .. "/" .. key, "must be an array of strings")
    end
    for _, name in ipairs(list) do
        if type(name) ~= "string" then bad(sp .. "/" .. key, "must be an array of strings") end
    end
    return list
end


-- String keywords --------------------------------------------------------

local function length_check(min, max)
    return function(v, st, d)
        local n = #v
        if (min == nil or n >= 4 * min) and (max == nil or n <= max) then
            return true
        end
        n = utf8_len(v)
        if min and n < min then
            if st.quiet > 0 then return false end
            return fail(st, d, "minLength", format("expected at least %s, got %s", plural(min, "character"),
                fmt_num(n)))
        elseif max and n > max then
            if st.quiet > 0 then return false end
            return fail(st, d, "maxLength", format("expected at most %s, got %s", plural(max, "character"),
                fmt_num(n)))
        end
        return true
    end
end


local function pattern_check(pats, src)
    local np = #pats
    local shown = #src > 100 and sub(src, 1, 100) .. "..." or src
    return function(v, st, d)
        for i = 1, np do
            if find(v, pats[i]) then return true end
        end
        if st.quiet > 0 then return false end
        return fail(st, d, "pattern", format("expected a string matching /%s/, got %s", shown, quote(v)))
    end
end


local function format_check(name, fn)
    local hint = FORMAT_HINTS[name] or format("a string in format %q", name)
    return function(v, st, d)
        if fn(v) then return true end
        if st.quiet > 0 then return false end
        return fail(st, d, "format", format("expected %s, got %s", hint, quote(v)))
    end
end


local function compile_string(C, s, sp, S)
    local min, max = count_kw(s, "minLength", sp), count_kw(s, "maxLength", sp)
    if min or max then
        S[#S + 1] = length_check(min, max)
    end
    local pat = s.pattern
    if pat ~= nil then
        if type(pat) ~= "string" then bad(sp .. "/pattern", "must be a string") end
        local ok, pats, reason = pcall(_M.translate_pattern, pat)
        if not ok then
            bad(sp .. "/pattern", (gsub(tostring(pats), "^[^:]*:%d+: ", "")))
        end
        if pats then
            S[#S + 1] = pattern_check(pats, pat)
        else
            skip(C, sp .. "/pattern", "pattern", reason .. " in /" .. pat .. "/")
        end
    end
    local fmt = s.format
    if fmt ~= nil then
        if type(fmt) ~= "string" then bad(sp .. "/format", "must be a string") end
        local fn = FORMATS[fmt]
        if fn then
            S[#S + 1] = format_check(fmt, fn)
        else
            skip(C, sp .. "/format", "format", "unknown format " .. quote(fmt))
        end
    end
end


-- Number keywords --------------------------------------------------------

local function bound_check(keyword, limit, op)
    local words = format("expected %s %s", op, fmt_num(limit))
    local ok
    if op == ">=" then ok = function(v) return v >= limit end
    elseif op == ">" then ok = function(v) return v > limit end
    elseif op == "<=" then ok = function(v) return v <= limit end
    else ok = function(v) return v < limit end
    end
    return function(v, st, d)
        if ok(v) then return true end
        if st.quiet > 0 then return false end
        return fail(st, d, keyword, words .. ", got " .. fmt_num(v))
    end
end


local function multiple_check(m)
    local words = "expected a multiple of " .. fmt_num(m)
    return function(v, st, d)
        local q = v / m
        local r = q - floor(q + 0.5)
        if abs(r) <= 1e-9 * (abs(q) > 1 and abs(q) or 1) then return true end
        if st.quiet > 0 then return false end
        return fail(st, d, "multipleOf", words .. ", got " .. fmt_num(v))
    end
end


local function compile_number(s, sp, N)
    local min, max = number_kw(s, "minimum", sp), number_kw(s, "maximum", sp)
    local xmin, xmax = s.exclusiveMinimum, s.exclusiveMaximum
    -- Draft 4: exclusiveMinimum/Maximum are booleans modifying minimum/maximum.
    if type(xmin) == "boolean" then
        if xmin then xmin, min = min, nil else xmin = nil end
    else
        xmin = number_kw(s, "exclusiveMinimum", sp)
    end
    if type(xmax) == "boolean" then
        if xmax then xmax, max = max, nil else xmax = nil end
    else
        xmax = number_kw(s, "exclusiveMaximum", sp)
    end
    if min then N[#N + 1] = bound_check("minimum", min, ">=") end
    if xmin then N[#N + 1] = bound_check("exclusiveMinimum", xmin, ">") end
    if max then N[#N + 1] = bound_check("maximum", max, "<=") end
    if xmax then N[#N + 1] = bound_check("exclusiveMaximum", xmax, "<") end
    local m = number_kw(s, "multipleOf", sp)
    if m then
        if m <= 0 then bad(sp .. "/multipleOf", "must be greater than 0") end
        N[#N + 1] = multiple_check(m)
    end
end


-- Array keywords ---------------------------------------------------------

local function items_check(prefix, rest)
    local np = #prefix
    return function(v, st, d)
        local n, ok, path, d1 = #v, true, st.path, d + 1
        for i = 1, n do
            local f = prefix[i] or rest
            if f == false then
                if st.quiet > 0 then return false end
                return fail(st, d, "items", format("expected at most %s (no items beyond the %d listed), got %d",
                    plural(np, "item"), np, n))
            end
            if f then
                path[d1] = i
                if not f(rawget(v, i), st, d1) then
                    if st.quiet > 0 or st.stop then return false end
                    ok = false
                end
            end
        end
        return ok
    end
end


local function count_items_check(min, max)
    return function(v, st, d)
        local n = #v
        if min and n < min then
            if st.quiet > 0 then return false end
            return fail(st, d, "minItems", format("expected at least %s, got %d", plural(min, "item"), n))
        elseif max and n > max then
            if st.quiet > 0 then return false end
            return fail(st, d, "maxItems", format("expected at most %s, got %d", plural(max, "item"), n))
        end
        return true
    end
end


local function duplicate(st, d, v, i, j)
    if st.quiet > 0 then return false end
    return fail(st, d, "uniqueItems", format("expected unique items, got %s at [%d] and [%d]",
        show(rawget(v, j)), i - 1, j - 1))
end


local function unique_check(v, st, d)
    local n = #v
    if n <= UNIQUE_LINEAR then
        for j = 2, n do
            local b = rawget(v, j)
            for i = 1, j - 1 do
                if deep_equal(rawget(v, i), b) then return duplicate(st, d, v, i, j) end
            end
        end
        return true
    end
    local seen = {}
    for j = 1, n do
        local b = rawget(v, j)
        if type(b) == "table" then
            for i = 1, j - 1 do
                local a = rawget(v, i)
                if type(a) == "table" and deep_equal(a, b) then return duplicate(st, d, v, i, j) end
            end
        elseif b == b then
            local i = seen[b]
            if i then return duplicate(st, d, v, i, j) end
            seen[b] = j
        end
    end
    return true
end


local function contains_check(f, min, max)
    return function(v, st, d)
        local n, hits, path, d1 = #v, 0, st.path, d + 1
        st.quiet = st.quiet + 1
        for i = 1, n do
            path[d1] = i
            if f(rawget(v, i), st, d1) then hits = hits + 1 end
            if st.stop then break end
        end
        st.quiet = st.quiet - 1
        if st.stop then return false end
        if hits >= min and (max == nil or hits <= max) then return true end
        if st.quiet > 0 then return false end
        local want = hits < min and "at least " .. plural(min, "item") or "at most " .. plural(max, "item")
        return fail(st, d, hits < min and "contains" or "maxContains",
            format("expected %s matching the \"contains\" schema, got %d", want, hits))
    end
end


local function compile_array(C, s, sp, A)
    local prefix, rest = {}, nil
    local items = s.items
    if s.prefixItems ~= nil then
        prefix = schema_list(C, s, "prefixItems", sp)
    elseif type(items) == "table" and #items > 0 and is_array(items) then
        prefix = schema_list(C, s, "items", sp)                  -- draft 4 tuple
        items = s.additionalItems
    end
    if items == false then
        rest = false
    elseif items ~= nil then
        local key = items == s.items and "/items" or "/additionalItems"
        rest = sub_schema(C, items, sp .. key, s, false)
    end
    if #prefix > 0 or rest ~= nil then
        A[#A + 1] = items_check(prefix, rest)
    end
    local min, max = count_kw(s, "minItems", sp), count_kw(s, "maxItems", sp)
    if min or max then
        A[#A + 1] = count_items_check(min, max)
    end
    if s.uniqueItems == true then
        A[#A + 1] = unique_check
    end
    if s.contains ~= nil then
        local f = sub_schema(C, s.contains, sp .. "/contains", s, false)
        A[#A + 1] = contains_check(f, count_kw(s, "minContains", sp) or 1, count_kw(s, "maxContains", sp))
    end
end


-- Object keywords --------------------------------------------------------

local function properties_check(names, fns)
    local n = #names
    return function(v, st, d)
        local ok, path, d1 = true, st.path, d + 1
        for i = 1, n do
            local name = names[i]
            local val = rawget(v, name)
            if val ~= nil then
                path[d1] = name
                if not fns[i](val, st, d1) then
                    if st.quiet > 0 or st.stop then return false end
                    ok = false
                end
            end
        end
        return ok
    end
end


local function required_check(names)
    local n = #names
    return function(v, st, d)
        local ok = true
        for i = 1, n do
            if rawget(v, names[i]) == nil then
                if st.quiet > 0 then return false end
                fail(st, d, "required", "missing required property " .. quote(names[i]))
                ok = false
            end
        end
        return ok
    end
end


local function key_less(a, b)
    return tostring(a) < tostring(b)
end


-- additionalProperties (and patternProperties, which decide what is
-- "additional"). known: set of declared names; pats: list of
-- { lua patterns, check }; open_keys: an untranslatable patternProperties
-- key exists, so no key counts as additional.
local function additional_check(known, pats, addl, allowed, open_keys)
    local np = #pats
    return function(v, st, d)
        local ok, path, d1, extra = true, st.path, d + 1, nil
        for k, val in next, v do
            local matched = known[k] ~= nil
            if np > 0 and type(k) == "string" then
                for i = 1, np do
                    local p = pats[i]
                    for j = 1, #p.lua do
                        if find(k, p.lua[j]) then
                            matched = true
                            path[d1] = k
                            if not p.check(val, st, d1) then
                                if st.quiet > 0 or st.stop then return false end
                                ok = false
                            end
                            break
                        end
                    end
                end
            end
            if not matched and not open_keys then
                if addl == false then
                    if st.quiet > 0 then return false end
                    extra = extra or {}
                    extra[#extra + 1] = k
                    ok = false
                elseif addl then
                    path[d1] = type(k) == "string" and k or tostring(k)
                    if not addl(val, st, d1) then
                        if st.quiet > 0 or st.stop then return false end
                        ok = false
                    end
                end
            end
        end
        if extra then
            sort(extra, key_less)
            for _, k in ipairs(extra) do
                fail(st, d, "additionalProperties", format("unexpected property %s (%s)", quote(tostring(k)), allowed))
            end
        end
        return ok
    end
end


local function count_props_check(min, max)
    return function(v, st, d)
        local n = 0
        for _ in next, v do n = n + 1 end
        if min and n < min then
            if st.quiet > 0 then return false end
            return fail(st, d, "minProperties", format("expected at least %s, got %d", properties_word(min), n))
        elseif max and n > max then
            if st.quiet > 0 then return false end
            return fail(st, d, "maxProperties", format("expected at most %s, got %d", properties_word(max), n))
        end
        return true
    end
end


local function names_check(f)
    return function(v, st, d)
        local ok = true
        for k in next, v do
            st.quiet = st.quiet + 1
            local good = f(k, st, d)
            st.quiet = st.quiet - 1
            if st.stop then return false end
            if not good then
                if st.quiet > 0 then return false end
                ok = false
                for _, e in ipairs(collect(st, f, k, d)) do
                    fail(st, d, "propertyNames", format("invalid property name %s: %s", quote(tostring(k)), e.message))
                end
            end
        end
        return ok
    end
end


local function dependent_required_check(key, names)
    return function(v, st, d)
        if rawget(v, key) == nil then return true end
        local ok = true
        for _, name in ipairs(names) do
            if rawget(v, name) == nil then
                if st.quiet > 0 then return false end
                fail(st, d, "dependentRequired", format("missing property %s (required when %s is present)",
                    quote(name), quote(key)))
                ok = false
            end
        end
        return ok
    end
end


local function dependent_schema_check(key, f)
    return function(v, st, d)
        if rawget(v, key) == nil then return true end
        return f(v, st, d)
    end
end


local function compile_object(C, s, sp, O)
    local props = s.properties
    local known, names = {}, {}
    if props ~= nil then
        if type(props) ~= "table" or (next(props) ~= nil and is_array(props)) then
            bad(sp .. "/properties", "must be an object mapping names to schemas")
        end
        for name in pairs(props) do
            if type(name) ~= "string" then bad(sp .. "/properties", "property names must be strings") end
            names[#names + 1] = name
        end
        sort(names)
        local fns = {}
        for i, name in ipairs(names) do
            known[name] = true
            fns[i] = sub_schema(C, props[name], sp .. "/properties/" .. ptr_key(name), s, false)
        end
        if #names > 0 then
            O[#O + 1] = properties_check(names, fns)
        end
    end

    if s.required ~= nil then
        local req = string_list(s, "required", sp)
        if #req > 0 then
            O[#O + 1] = required_check(req)
        end
    end

    local pats, open_keys = {}, false
    local pp = s.patternProperties
    if pp ~= nil then
        if type(pp) ~= "table" then bad(sp .. "/patternProperties", "must be an object") end
        local keys = {}
        for re in pairs(pp) do keys[#keys + 1] = tostring(re) end
        sort(keys)
        for _, re in ipairs(keys) do
            local psp = sp .. "/patternProperties/" .. ptr_key(re)
            local ok, lua, reason = pcall(_M.translate_pattern, re)
            if not ok then bad(psp, (gsub(tostring(lua), "^[^:]*:%d+: ", ""))) end
            local check = sub_schema(C, pp[re], psp, s, false)
            if lua then
                pats[#pats + 1] = { lua = lua, check = check }
            else
                open_keys = true
                skip(C, psp, "patternProperties", reason .. " in /" .. re .. "/ (its properties are not checked,"
                    .. " and additionalProperties accepts every key)")
            end
        end
    end

    local addl = s.additionalProperties
    if addl ~= nil and addl ~= true then
        if addl ~= false then
            addl = sub_schema(C, addl, sp .. "/additionalProperties", s, false)
        end
    else
        addl = nil
    end
    if addl ~= nil or #pats > 0 then
        local shown = {}
        for i = 1, #names do
            if i > 10 then
                shown[#shown + 1] = "..."
                break
            end
            shown[i] = quote(names[i])
        end
        local allowed = #names == 0 and "no other properties are allowed"
            or "allowed: " .. concat(shown, ", ")
        O[#O + 1] = additional_check(known, pats, addl, allowed, open_keys)
    end

    local min, max = count_kw(s, "minProperties", sp), count_kw(s, "maxProperties", sp)
    if min or max then
        O[#O + 1] = count_props_check(min, max)
    end
    if s.propertyNames ~= nil then
        O[#O + 1] = names_check(sub_schema(C, s.propertyNames, sp .. "/propertyNames", s, false))
    end

    for _, key in ipairs({ "dependentRequired", "dependentSchemas", "dependencies" }) do
        local deps = s[key]
        if deps ~= nil then
            if type(deps) ~= "table" then bad(sp .. "/" .. key, "must be an object") end
            local dkeys = {}
            for k in pairs(deps) do dkeys[#dkeys + 1] = tostring(k) end
            sort(dkeys)
            for _, k in ipairs(dkeys) do
                local dep, dsp = deps[k], sp .. "/" .. key .. "/" .. ptr_key(k)
                if key ~= "dependentSchemas" and type(dep) == "table" and is_array(dep) then
                    O[#O + 1] = dependent_required_check(k, string_list(deps, k, sp .. "/" .. key))
                elseif key ~= "dependentRequired" then
                    O[#O + 1] = dependent_schema_check(k, sub_schema(C, dep, dsp, s, true))
                else
                    bad(dsp, "must be an array of strings")
                end
            end
        end
    end
end


-- Keywords for any type --------------------------------------------------

local function enum_check(list)
    local set, tables = {}, {}
    local shown, width = {}, 0
    for _, x in ipairs(list) do
        if type(x) == "table" then
            tables[#tables + 1] = x
        elseif x == x then
            set[x] = true
        end
        if width < 200 then
            shown[#shown + 1] = show_schema_value(x)
            width = width + #shown[#shown]
        end
    end
    if #shown < #list then
        shown[#shown + 1] = format("... (%d values)", #list)
    end
    local words = "expected one of " .. concat(shown, ", ")
    local nt = #tables
    return function(v, st, d)
        if v ~= nil and set[v] then return true end
        if nt > 0 and type(v) == "table" then
            for i = 1, nt do
                if deep_equal(v, tables[i]) then return true end
            end
        end
        if st.quiet > 0 then return false end
        return fail(st, d, "enum", words .. ", got " .. show(v))
    end
end


local function const_check(c)
    local words = "expected " .. show_schema_value(c)
    return function(v, st, d)
        if v == c or deep_equal(v, c) then return true end
        if st.quiet > 0 then return false end
        return fail(st, d, "const", words .. ", got " .. show(v))
    end
end


local function all_of(fns)
    local n = #fns
    return function(v, st, d)
        local ok = true
        for i = 1, n do
            if not fns[i](v, st, d) then
                if st.quiet > 0 or st.stop then return false end
                ok = false
            end
        end
        return ok
    end
end


-- Explain why no alternative matched: a merged type error when every
-- alternative failed only on its type, otherwise a summary naming the
-- nearest alternative followed by that alternative's errors.
local function report_union(v, st, d, fns, keyword)
    local results = {}
    for i = 1, #fns do
        results[i] = collect(st, fns[i], v, d)
        if st.deep then return false end
    end
    local here = path_string(st, d)
    local types, seen, type_only = {}, {}, true
    for _, errs in ipairs(results) do
        local e = errs[1]
        if #errs == 1 and e.keyword == "type" and e.path == here then
            for _, t in ipairs(e.expected) do
                if not seen[t] then
                    seen[t] = true
                    types[#types + 1] = t
                end
            end
        else
            type_only = false
        end
    end
    if type_only and #types > 0 then
        local words = #types == 1 and types[1]
            or concat(types, ", ", 1, #types - 1) .. " or " .. types[#types]
        return fail(st, d, "type", "expected " .. words .. ", got " .. typed_show(v), types)
    end
    local best, best_score = 1, huge
    for i, errs in ipairs(results) do
        local score = 0
        for _, e in ipairs(errs) do
            if e.keyword == "type" and e.path == here then
                score = score + 1000
            elseif e.keyword == "const" or e.keyword == "enum" then
                score = score + 10
            else
                score = score + 1
            end
        end
        if score < best_score then
            best, best_score = i, score
        end
    end
    fail(st, d, keyword, format("matches none of the %s alternatives (nearest: %s[%d])", keyword, keyword, best - 1))
    for _, e in ipairs(results[best]) do
        push(st, e)
    end
    return false
end


local function any_of(fns)
    local n = #fns
    return function(v, st, d)
        st.quiet = st.quiet + 1
        for i = 1, n do
            if fns[i](v, st, d) then
                st.quiet = st.quiet - 1
                return true
            end
            if st.stop then break end
        end
        st.quiet = st.quiet - 1
        if st.quiet > 0 or st.stop then return false end
        return report_union(v, st, d, fns, "anyOf")
    end
end


local function one_of(fns)
    local n = #fns
    return function(v, st, d)
        local first, second
        st.quiet = st.quiet + 1
        for i = 1, n do
            if fns[i](v, st, d) then
                if first then
                    second = i
                    break
                end
                first = i
            end
            if st.stop then break end
        end
        st.quiet = st.quiet - 1
        if st.stop then return false end
        if first and not second then return true end
        if st.quiet > 0 then return false end
        if not first then
            return report_union(v, st, d, fns, "oneOf")
        end
        return fail(st, d, "oneOf", format("matches more than one oneOf alternative (oneOf[%d] and oneOf[%d])",
            first - 1, second - 1))
    end
end


local function not_check(f)
    return function(v, st, d)
        st.quiet = st.quiet + 1
        local matched = f(v, st, d)
        st.quiet = st.quiet - 1
        if st.stop then return false end
        if not matched then return true end
        if st.quiet > 0 then return false end
        return fail(st, d, "not", "expected a value that does not match the \"not\" schema, got " .. show(v))
    end
end


local function if_check(cond, then_f, else_f)
    return function(v, st, d)
        st.quiet = st.quiet + 1
        local matched = cond(v, st, d)
        st.quiet = st.quiet - 1
        if st.stop then return false end
        local f = matched and then_f or else_f
        return f == nil or f(v, st, d)
    end
end


-- The node -------------------------------------------------------------------

local function make_node(o)
    local typed, ws, wn, wi, wb, wz, wa, wo = o.typed, o.string, o.number, o.integer, o.boolean, o.null,
        o.array, o.object
    local expected, expected_str, nullable = o.expected, o.expected_str, o.nullable
    local S, N, A, O, G = o.S, o.N, o.A, o.O, o.G
    local ns, nn, na, no, ng = #S, #N, #A, #O, #G
    local need_kind = (typed and (wa or wo)) or na > 0 or no > 0
    return function(v, st, d)
        if d > st.max_depth then
            return too_deep(st, d)
        end
        if nullable and v == null then
            return true
        end
        local t = type(v)
        local arr, obj = false, false
        if need_kind and t == "table" then
            arr, obj = classify(v)
        end
        if typed then
            local ok
            if t == "string" then
                ok = ws
            elseif t == "number" then
                ok = v - v == 0 and (wn or (wi and v % 1 == 0))
            elseif t == "boolean" then
                ok = wb
            elseif t == "table" then
                ok = (wa and arr) or (wo and obj)
            else
                ok = wz and v == null
            end
            if not ok then
                if st.quiet > 0 then return false end
                return fail(st, d, "type", "expected " .. expected_str .. ", got " .. typed_show(v), expected)
            end
        end
        local ok = true
        if t == "string" then
            for i = 1, ns do
                if not S[i](v, st, d) then
                    if st.quiet > 0 or st.stop then return false end
                    ok = false
                end
            end
        elseif t == "number" then
            for i = 1, nn do
                if not N[i](v, st, d) then
                    if st.quiet > 0 or st.stop then return false end
                    ok = false
                end
            end
        elseif t == "table" then
            if arr then
                for i = 1, na do
                    if not A[i](v, st, d) then
                        if st.quiet > 0 or st.stop then return false end
                        ok = false
                    end
                end
            end
            if obj then
                for i = 1, no do
                    if not O[i](v, st, d) then
                        if st.quiet > 0 or st.stop then return false end
                        ok = false
                    end
                end
            end
        end
        for i = 1, ng do
            if not G[i](v, st, d) then
                if st.quiet > 0 or st.stop then return false end
                ok = false
            end
        end
        return ok
    end
end


compile_node = function(C, s, sp)
    if getmetatable(s) == array_mt or getmetatable(s) == empty_array_mt
            or (next(s) ~= nil and is_array(s)) then
        bad(sp, "expected a schema (object or boolean), got array")
    end
    local o = { S = {}, N = {}, A = {}, O = {}, G = {} }

    local t = s.type
    if t ~= nil then
        local list = type(t) == "string" and { t } or t
        if type(list) ~= "table" or #list == 0 then
            bad(sp .. "/type", "must be a type name or a non-empty array of type names")
        end
        for _, name in ipairs(list) do
            if type(name) ~= "string" or not TYPES[name] then
                bad(sp .. "/type", "unknown type " .. show(name))
            end
            o[name] = true
        end
        o.typed, o.expected = true, { unpack(list) }
        o.expected_str = #list == 1 and list[1] or concat(list, ", ", 1, #list - 1) .. " or " .. list[#list]
    end
    if s.nullable ~= nil then
        if type(s.nullable) ~= "boolean" then bad(sp .. "/nullable", "must be a boolean") end
        o.nullable = s.nullable
    end

    compile_string(C, s, sp, o.S)
    compile_number(s, sp, o.N)
    compile_array(C, s, sp, o.A)
    compile_object(C, s, sp, o.O)

    local G = o.G
    if s.enum ~= nil then
        if type(s.enum) ~= "table" or not is_array(s.enum) then bad(sp .. "/enum", "must be an array") end
        G[#G + 1] = enum_check(s.enum)
    end
    if s.const ~= nil then
        G[#G + 1] = const_check(s.const)
    end
    if s["$ref"] ~= nil then
        G[#G + 1] = sub_schema(C, resolve(C, s["$ref"], sp .. "/$ref"), s["$ref"], s, true)
    end
    local list = schema_list(C, s, "allOf", sp)
    if list then G[#G + 1] = all_of(list) end
    list = schema_list(C, s, "anyOf", sp)
    if list then G[#G + 1] = any_of(list) end
    list = schema_list(C, s, "oneOf", sp)
    if list then G[#G + 1] = one_of(list) end
    if s["not"] ~= nil then
        G[#G + 1] = not_check(sub_schema(C, s["not"], sp .. "/not", s, true))
    end
    if s["if"] ~= nil then
        local cond = sub_schema(C, s["if"], sp .. "/if", s, true)
        local then_f = s["then"] ~= nil and sub_schema(C, s["then"], sp .. "/then", s, true) or nil
        local else_f = s["else"] ~= nil and sub_schema(C, s["else"], sp .. "/else", s, true) or nil
        if then_f or else_f then
            G[#G + 1] = if_check(cond, then_f, else_f)
        end
    end
    for _, key in ipairs(UNSUPPORTED) do
        if s[key] ~= nil then
            skip(C, sp .. "/" .. key, key, "keyword not supported")
        end
    end

    if not o.typed and not o.nullable and #o.S + #o.N + #o.A + #o.O + #G == 0 then
        return accept
    end
    return make_node(o)
end


-- Refuse schemas that apply themselves to the same value forever.
local function check_loops(C)
    local state, stack = {}, {}
    local function visit(t)
        state[t] = 1
        stack[#stack + 1] = t
        for u in pairs(C.edges[t]) do
            if state[u] == 1 then
                local names, start = {}, #stack
                while stack[start] ~= u do start = start - 1 end
                for i = start, #stack do names[#names + 1] = C.where[stack[i]] end
                names[#names + 1] = C.where[u]
                bad(C.where[u], "schema loop that never descends into the value: " .. concat(names, " -> "))
            elseif state[u] == nil then
                visit(u)
            end
        end
        stack[#stack] = nil
        state[t] = 2
    end
    local all = {}
    for t in pairs(C.edges) do all[#all + 1] = t end
    sort(all, function(a, b) return C.where[a] < C.where[b] end)
    for _, t in ipairs(all) do
        if state[t] == nil then visit(t) end
    end
end


-- Public API ----------------------------------------------------------------

local Validator = {}
local validator_mt = { __index = Validator, __name = "sibyl.schema.validator" }
validator_mt.__tostring = function() return "sibyl.schema.validator" end


-- Raise at `level` (relative to check_opts) unless opts is valid.
local function check_opts(opts, level)
    if opts == nil then return end
    if type(opts) ~= "table" then
        error("opts must be a table", level)
    end
    for _, key in ipairs({ "max_errors", "max_depth" }) do
        local n = opts[key]
        if n ~= nil and (type(n) ~= "number" or n < 1 or n % 1 ~= 0) then
            error("opts." .. key .. " must be a positive integer", level)
        end
    end
end


-- Compile s; misuse and malformed schemas raise at `level` (relative to build).
local function build(s, opts, level)
    local ts = type(s)
    if ts ~= "table" and ts ~= "boolean" then
        error("bad argument #1 to 'compile' (schema table expected, got " .. ts .. ")", level)
    end
    check_opts(opts, level + 1)
    local C = { root = s, memo = {}, open = {}, where = {}, edges = {}, skipped = {} }
    local ok, check = pcall(function()
        local fn = sub_schema(C, s, "#")
        if ts == "table" then
            for _, key in ipairs({ "$defs", "definitions" }) do
                local defs = s[key]
                if defs ~= nil then
                    if type(defs) ~= "table" then bad("#/" .. key, "must be an object") end
                    for name, def in pairs(defs) do
                        sub_schema(C, def, "#/" .. key .. "/" .. ptr_key(tostring(name)))
                    end
                end
            end
            check_loops(C)
        end
        return fn
    end)
    if not ok then
        if type(check) == "table" and check.schema_error then
            error("schema.compile: " .. check.schema_error, level)
        end
        error(check, 0)
    end
    return setmetatable({
        skipped = C.skipped,
        max_errors = opts and opts.max_errors or DEFAULT_MAX_ERRORS,
        max_depth = opts and opts.max_depth or DEFAULT_MAX_DEPTH,
        _check = check,
        _st = { path = {}, n = 0, quiet = 0, stop = false },
    }, validator_mt)
end


--- Compile a schema (a Lua table, as json.decode gives, or a boolean).
-- opts: { max_errors = 20, max_depth = 64 } (defaults for validate).
-- Raises on a malformed schema, naming its path ("#/properties/age/type").
function _M.compile(s, opts)
    local v = build(s, opts, 3)
    return v
end


--- Validate a value. Returns true, or false and a list of errors
-- { path = "$.a[0]", message = "...", keyword = "type" }, in schema order,
-- at most opts.max_errors of them (then errs.truncated is true).
function Validator:validate(value, opts)
    if getmetatable(self) ~= validator_mt then
        error("bad self to 'validate' (use v:validate(value))", 2)
    end
    check_opts(opts, 3)
    local st = self._st
    st.n, st.quiet, st.stop, st.truncated, st.deep, st.errs = 0, 0, false, false, nil, nil
    st.max = opts and opts.max_errors or self.max_errors
    st.max_depth = opts and opts.max_depth or self.max_depth
    if self._check(value, st, 0) then
        return true
    end
    local errs = st.errs or {}
    st.errs = nil
    if st.deep then
        errs[#errs + 1] = { path = st.deep, keyword = "depth",
            message = format("too deep (more than %d levels)", st.max_depth) }
    end
    if #errs == 0 then
        errs[1] = { path = "$", keyword = "schema", message = "does not match the schema" }
    end
    errs.truncated = st.truncated or nil
    return false, errs
end


--- One-shot validation: schema.validate(value, s [, opts]); s may also be a
-- compiled validator. Compile once with schema.compile for repeated use.
function _M.validate(value, s, opts)
    check_opts(opts, 3)
    local v = s
    if getmetatable(s) ~= validator_mt then
        v = build(s, opts, 3)
    end
    local ok, errs = v:validate(value, opts)
    return ok, errs
end


--- The errors as one line for a person or a model:
-- `$.age: expected integer, got string "ten"; $: missing required property "name"`.
function _M.describe(errs)
    if errs == nil then
        return ""
    end
    if type(errs) ~= "table" then
        error("bad argument #1 to 'describe' (table expected, got " .. type(errs) .. ")", 2)
    end
    local parts = {}
    for i, e in ipairs(errs) do
        parts[i] = tostring(e.path) .. ": " .. tostring(e.message)
    end
    if errs.truncated then
        parts[#parts + 1] = "(more errors not shown)"
    end
    return concat(parts, "; ")
end


return _M
