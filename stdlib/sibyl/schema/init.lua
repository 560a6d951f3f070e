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
-- The per-type keywords are in sibyl/schema/keywords.lua, how values and
-- errors are shown in sibyl/schema/messages.lua, the regex translator in
-- sibyl/schema/pattern.lua, the format checks in sibyl/schema/formats.lua.
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
local msg = require "sibyl.schema.messages"
local keywords = require "sibyl.schema.keywords"

local type, next, ipairs, pairs, rawget, getmetatable, setmetatable, pcall, error, tostring, tonumber =
    type, next, ipairs, pairs, rawget, getmetatable, setmetatable, pcall, error, tostring, tonumber
local unpack = unpack or table.unpack
local sub, find, format, gsub, char = string.sub, string.find, string.format, string.gsub, string.char
local concat, sort = table.concat, table.sort
local huge = math.huge

local _M = { _VERSION = "0.1.0" }

local null = json.null
local array_mt = json.array_mt
local empty_array_mt = getmetatable(json.empty_array)

local classify, is_array, quote, show, typed_show, show_schema_value =
    msg.classify, msg.is_array, msg.quote, msg.show, msg.typed_show, msg.show_schema_value
local path_string, fail, push, too_deep, collect = msg.path_string, msg.fail, msg.push, msg.too_deep, msg.collect
local deep_equal, bad, skip, ptr_key, schema_list =
    keywords.deep_equal, keywords.bad, keywords.skip, keywords.ptr_key, keywords.schema_list

local DEFAULT_MAX_ERRORS, DEFAULT_MAX_DEPTH = 20, 64


-- Validation state ----------------------------------------------------------
-- A compiled schema node is a function check(v, st, d) -> boolean; the state
-- st, and the error recording on it, are described in sibyl/schema/messages.lua.

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
-- then/else/$ref/dependentSchemas), skipped, and for sibyl.schema.keywords
-- sub_schema (below) and translate (schema.translate_pattern). A cycle in
-- `edges` would recurse without consuming the value, so compile refuses it.

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


-- Run fns[1..n] on v. Returns true when all pass, false when some failed
-- (each recorded), nil as soon as one fails while quiet or stopped.
local function run_all(fns, n, v, st, d)
    local ok = true
    for i = 1, n do
        if not fns[i](v, st, d) then
            if st.quiet > 0 or st.stop then return nil end
            ok = false
        end
    end
    return ok
end


local function all_of(fns)
    local n = #fns
    return function(v, st, d)
        return run_all(fns, n, v, st, d) or false
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
            ok = run_all(S, ns, v, st, d)
        elseif t == "number" then
            ok = run_all(N, nn, v, st, d)
        elseif t == "table" then
            if arr then ok = run_all(A, na, v, st, d) end
            if obj and ok ~= nil then ok = run_all(O, no, v, st, d) and ok end
        end
        if ok == nil then return false end
        return run_all(G, ng, v, st, d) and ok or false
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

    keywords.compile(C, s, sp, o)

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
    local C = { root = s, memo = {}, open = {}, where = {}, edges = {}, skipped = {},
        sub_schema = sub_schema, translate = _M.translate_pattern }
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
