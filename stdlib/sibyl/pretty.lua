-- sibyl.pretty -- readable renderings of Lua values (the REPL prints with it).
--
--   local pretty = require "sibyl.pretty"
--   print(pretty.format({ name = "x", tags = { "a", "b" } }))
--   --> { name = "x", tags = { "a", "b" } }
--
-- Options: { indent = "  ", max_depth = 8, max_items = 200, width = 80 }.
-- Keys are sorted; cycles print as <cycle>; strings are quoted with %q rules.

local type, tostring, pairs, ipairs, next, getmetatable, rawget =
    type, tostring, pairs, ipairs, next, getmetatable, rawget
local concat, sort = table.concat, table.sort
local format, rep, match = string.format, string.rep, string.match

local null = require("cjson").null

local _M = { _VERSION = "0.1.0" }

local KEY_ORDER = { number = 1, string = 2, boolean = 3 }


local function quote(s)
    return (format("%q", s):gsub("\\\n", "\\n"))
end


local function key_less(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then
        return (KEY_ORDER[ta] or 9) < (KEY_ORDER[tb] or 9)
    end
    if ta == "number" or ta == "string" then
        return a < b
    end
    return tostring(a) < tostring(b)
end


local function scalar(v)
    local t = type(v)
    if t == "string" then
        return quote(v)
    elseif t == "number" then
        if v == math.floor(v) and v > -1e15 and v < 1e15 then
            return format("%d", v)
        end
        return format("%.17g", v)
    elseif v == null then
        return "null"               -- json.null / yaml.null
    end
    return tostring(v)
end


local function render(v, opts, depth, seen)
    if type(v) ~= "table" then
        return scalar(v)
    end
    local mt = getmetatable(v)
    if mt and rawget(mt, "__tostring") then
        return tostring(v)
    end
    if seen[v] then
        return "<cycle>"
    end
    if depth >= opts.max_depth then
        return "{...}"
    end
    seen[v] = true
    local parts, n = {}, #v
    for i = 1, n do
        parts[#parts + 1] = render(v[i], opts, depth + 1, seen)
        if #parts >= opts.max_items then break end
    end
    local keys = {}
    for k in pairs(v) do
        if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then
            keys[#keys + 1] = k
        end
    end
    sort(keys, key_less)
    for _, k in ipairs(keys) do
        if #parts >= opts.max_items then
            parts[#parts + 1] = "..."
            break
        end
        local ks
        if type(k) == "string" and match(k, "^[%a_][%w_]*$") then
            ks = k
        else
            ks = "[" .. render(k, opts, depth + 1, seen) .. "]"
        end
        parts[#parts + 1] = ks .. " = " .. render(v[k], opts, depth + 1, seen)
    end
    seen[v] = nil
    if #parts == 0 then
        return "{}"
    end
    local flat = "{ " .. concat(parts, ", ") .. " }"
    if #flat + depth * #opts.indent <= opts.width and not flat:find("\n", 1, true) then
        return flat
    end
    local pad = rep(opts.indent, depth + 1)
    return "{\n" .. pad .. concat(parts, ",\n" .. pad) .. "\n" .. rep(opts.indent, depth) .. "}"
end


--- Render any Lua value as readable text.
function _M.format(v, opts)
    opts = opts or {}
    local o = {
        indent = opts.indent or "  ",
        max_depth = opts.max_depth or 8,
        max_items = opts.max_items or 200,
        width = opts.width or 80,
    }
    return render(v, o, 0, {})
end


return _M
