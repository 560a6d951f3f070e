-- sibyl.schema.keywords -- the per-type keywords of sibyl.schema: string
-- (minLength, maxLength, pattern, format), number (minimum, maximum,
-- exclusive*, multipleOf), array (prefixItems/items, min/maxItems,
-- uniqueItems, contains) and object (properties, required,
-- patternProperties, additionalProperties, min/maxProperties,
-- propertyNames, dependent*) compiled into checks, plus the schema-reading
-- helpers the compiler in sibyl/schema/init.lua shares.
--
--   keywords.compile(C, s, sp, o)  -- fills o.S, o.N, o.A, o.O with checks
--
-- C is the compile context (see init.lua); keywords reach subschemas only
-- through C.sub_schema(C, s, sp, parent, inplace) and regexes through
-- C.translate (schema.translate_pattern). A check is fn(v, st, d) ->
-- boolean, called only on a value of its type.
--
-- Caveats:
--  * Malformed keywords raise { schema_error = "path: message" } (see bad);
--    init.lua turns that into the compile error.
--  * deep_equal gives up, answering false, after EQUAL_BUDGET tables.

local msg = require "sibyl.schema.messages"
local formats = require "sibyl.schema.formats"

local type, next, ipairs, pairs, rawget, pcall, error, tostring =
    type, next, ipairs, pairs, rawget, pcall, error, tostring
local sub, find, format, gsub = string.sub, string.find, string.format, string.gsub
local concat, sort = table.concat, table.sort
local floor, abs = math.floor, math.abs

local is_array, utf8_len, fmt_num, quote, show, plural =
    msg.is_array, msg.utf8_len, msg.fmt_num, msg.quote, msg.show, msg.plural
local fail, collect = msg.fail, msg.collect
local FORMATS, FORMAT_HINTS = formats.checks, formats.hints

local _M = { _VERSION = "0.1.0" }

local UNIQUE_LINEAR = 32     -- uniqueItems: pairwise below this, a set above
local EQUAL_BUDGET = 100000  -- deep_equal visits before giving up (cyclic values)
local EQUAL_MAX_DEPTH = 64   -- deep_equal nesting limit (schema's default max_depth)


-- Values --------------------------------------------------------------------

local equal_budget = 0

local function deep_equal_rec(a, b, depth)
    if a == b then
        return true
    end
    if type(a) ~= "table" or type(b) ~= "table" or depth > EQUAL_MAX_DEPTH then
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


-- Reading the schema ----------------------------------------------------------

-- Raise a schema error at schema path sp.
local function bad(sp, message)
    error({ schema_error = sp .. ": " .. message }, 0)
end


-- Note a keyword that will not be checked (listed in validator.skipped).
local function skip(C, sp, keyword, reason)
    C.skipped[#C.skipped + 1] = { path = sp, keyword = keyword, reason = reason }
end


-- Escape a key for a JSON pointer segment.
local function ptr_key(k)
    return (gsub(gsub(k, "~", "~0"), "/", "~1"))
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
        out[i] = C.sub_schema(C, sub_s, sp .. "/" .. key .. "/" .. (i - 1), s, true)
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


-- Translate regex re (at schema path sp) with C.translate: the Lua patterns,
-- or nil, reason when untranslatable. A malformed regex is a schema error.
local function translate(C, re, sp)
    local ok, pats, reason = pcall(C.translate, re)
    if not ok then
        bad(sp, (gsub(tostring(pats), "^[^:]*:%d+: ", "")))
    end
    return pats, reason
end


-- minLength/maxLength, minItems/maxItems, minProperties/maxProperties:
-- size(v, min, max) is the count to compare (or any count within bounds
-- when v surely passes); word, words name what is counted.
local function count_check(size, min, max, min_kw, max_kw, word, words)
    return function(v, st, d)
        local n = size(v, min, max)
        if min and n < min then
            if st.quiet > 0 then return false end
            return fail(st, d, min_kw, format("expected at least %s, got %s", plural(min, word, words), fmt_num(n)))
        elseif max and n > max then
            if st.quiet > 0 then return false end
            return fail(st, d, max_kw, format("expected at most %s, got %s", plural(max, word, words), fmt_num(n)))
        end
        return true
    end
end


-- String keywords --------------------------------------------------------

-- Characters in v; the byte length when that alone shows v within bounds
-- (a character is 1 to 4 bytes), so most strings are not walked.
local function string_size(v, min, max)
    local n = #v
    if (min == nil or n >= 4 * min) and (max == nil or n <= max) then
        return n
    end
    return utf8_len(v)
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
        S[#S + 1] = count_check(string_size, min, max, "minLength", "maxLength", "character")
    end
    local pat = s.pattern
    if pat ~= nil then
        if type(pat) ~= "string" then bad(sp .. "/pattern", "must be a string") end
        local pats, reason = translate(C, pat, sp .. "/pattern")
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

-- Check val, at key below the value at depth d1 - 1, with f. Returns ok, or
-- false when f failed, or nil when it failed while quiet or stopped.
local function descend(f, val, key, st, d1, ok)
    st.path[d1] = key
    if f(val, st, d1) then return ok end
    if st.quiet > 0 or st.stop then return nil end
    return false
end


local function items_check(prefix, rest)
    local np = #prefix
    return function(v, st, d)
        local n, ok, d1 = #v, true, d + 1
        for i = 1, n do
            local f = prefix[i] or rest
            if f == false then
                if st.quiet > 0 then return false end
                return fail(st, d, "items", format("expected at most %s (no items beyond the %d listed), got %d",
                    plural(np, "item"), np, n))
            end
            if f then
                ok = descend(f, rawget(v, i), i, st, d1, ok)
                if ok == nil then return false end
            end
        end
        return ok
    end
end


local function array_size(v)
    return #v
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
        rest = C.sub_schema(C, items, sp .. key, s, false)
    end
    if #prefix > 0 or rest ~= nil then
        A[#A + 1] = items_check(prefix, rest)
    end
    local min, max = count_kw(s, "minItems", sp), count_kw(s, "maxItems", sp)
    if min or max then
        A[#A + 1] = count_check(array_size, min, max, "minItems", "maxItems", "item")
    end
    if s.uniqueItems == true then
        A[#A + 1] = unique_check
    end
    if s.contains ~= nil then
        local f = C.sub_schema(C, s.contains, sp .. "/contains", s, false)
        A[#A + 1] = contains_check(f, count_kw(s, "minContains", sp) or 1, count_kw(s, "maxContains", sp))
    end
end


-- Object keywords --------------------------------------------------------

local function properties_check(names, fns)
    local n = #names
    return function(v, st, d)
        local ok, d1 = true, d + 1
        for i = 1, n do
            local name = names[i]
            local val = rawget(v, name)
            if val ~= nil then
                ok = descend(fns[i], val, name, st, d1, ok)
                if ok == nil then return false end
            end
        end
        return ok
    end
end


-- required (when is nil) or dependentRequired (names are required when
-- property `when` is present).
local function required_check(names, when)
    local n = #names
    local keyword = when and "dependentRequired" or "required"
    local lead = when and "missing property " or "missing required property "
    local tail = when and format(" (required when %s is present)", quote(when)) or ""
    return function(v, st, d)
        if when and rawget(v, when) == nil then return true end
        local ok = true
        for i = 1, n do
            if rawget(v, names[i]) == nil then
                if st.quiet > 0 then return false end
                fail(st, d, keyword, lead .. quote(names[i]) .. tail)
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
        local ok, d1, extra = true, d + 1, nil
        for k, val in next, v do
            local matched = known[k] ~= nil
            if np > 0 and type(k) == "string" then
                for i = 1, np do
                    local p = pats[i]
                    for j = 1, #p.lua do
                        if find(k, p.lua[j]) then
                            matched = true
                            ok = descend(p.check, val, k, st, d1, ok)
                            if ok == nil then return false end
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
                    ok = descend(addl, val, type(k) == "string" and k or tostring(k), st, d1, ok)
                    if ok == nil then return false end
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


local function object_size(v)
    local n = 0
    for _ in next, v do n = n + 1 end
    return n
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
            fns[i] = C.sub_schema(C, props[name], sp .. "/properties/" .. ptr_key(name), s, false)
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
            local lua, reason = translate(C, re, psp)
            local check = C.sub_schema(C, pp[re], psp, s, false)
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
            addl = C.sub_schema(C, addl, sp .. "/additionalProperties", s, false)
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
        O[#O + 1] = count_check(object_size, min, max, "minProperties", "maxProperties", "property", "properties")
    end
    if s.propertyNames ~= nil then
        O[#O + 1] = names_check(C.sub_schema(C, s.propertyNames, sp .. "/propertyNames", s, false))
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
                    O[#O + 1] = required_check(string_list(deps, k, sp .. "/" .. key), k)
                elseif key ~= "dependentRequired" then
                    O[#O + 1] = dependent_schema_check(k, C.sub_schema(C, dep, dsp, s, true))
                else
                    bad(dsp, "must be an array of strings")
                end
            end
        end
    end
end


-- Compile the per-type keywords of schema s (at schema path sp) into the
-- lists o.S (strings), o.N (numbers), o.A (arrays) and o.O (objects).
local function compile(C, s, sp, o)
    compile_string(C, s, sp, o.S)
    compile_number(s, sp, o.N)
    compile_array(C, s, sp, o.A)
    compile_object(C, s, sp, o.O)
end


_M.compile, _M.deep_equal = compile, deep_equal
_M.bad, _M.skip, _M.ptr_key, _M.schema_list = bad, skip, ptr_key, schema_list

return _M
