-- sibyl.config -- YAML configuration files with ${VAR} environment substitution.
--
--   local config = require "sibyl.config"
--   local cfg, err = config.load("config.yaml")
--   if not cfg then error(tostring(err)) end     -- err.kind: "io", "parse", "config"
--
-- After parsing, every string value (never a key) is scanned for references:
--   ${VAR}            the value of environment variable VAR; unset is an error
--   ${VAR:-default}   VAR when set and non-empty, else default (shell rules)
--   $${               a literal "${"
-- A plain (unquoted) scalar that is exactly one reference is re-typed after
-- substitution with yaml.scalar, so `port: ${PORT}` gives a number and
-- `debug: ${DEBUG:-false}` a boolean. Quote it to keep a string:
-- `password: "${DB_PASSWORD}"` stays a string even when it is all digits.
--
-- Caveats: a default cannot contain "}"; references are not nested; inside
-- flow collections ([...], {...}) a plain ${VAR} must be quoted, because
-- braces are YAML syntax there (and quoting turns re-typing off).

local yaml = require "sibyl.yaml"
local sibyl = require "sibyl"

local type, pairs, tostring, setmetatable, getmetatable, error =
    type, pairs, tostring, setmetatable, getmetatable, error
local find, sub, match, byte = string.find, string.sub, string.match, string.byte
local concat, sort = table.concat, table.sort
local io_open, os_getenv = io.open, os.getenv

local yaml_decode, yaml_scalar, yaml_null = yaml.decode, yaml.scalar, yaml.null

local _M = { _VERSION = "0.1.0" }

-- A plain scalar that is exactly one reference decodes to a table with this
-- metatable ({ text }), so the walk below knows to re-type its substitution.
local ref_mt = { __name = "sibyl.config.ref" }

local NAME = "[%a_][%w_]*"
local WHOLE_REF = "^%${" .. NAME .. "}$"
local WHOLE_REF_DEFAULT = "^%${" .. NAME .. ":%-[^}]*}$"


local function fail(kind, message, extra)
    return nil, sibyl.error(kind, message, extra)
end


-- The `resolve` hook given to yaml.decode for plain scalars in value position.
local function resolve_plain(s, scalar_opts)
    if byte(s, 1) == 36 and (find(s, WHOLE_REF) or find(s, WHOLE_REF_DEFAULT)) then  -- "$"
        return setmetatable({ s }, ref_mt)
    end
    return yaml_scalar(s, scalar_opts)
end


-- Render a key path for messages: llm.api_key, servers[2].url.
local function key_path(path, k)
    if type(k) == "number" then
        return path .. "[" .. tostring(k) .. "]"
    end
    k = tostring(k)
    if path == "" then
        return k
    end
    return path .. "." .. k
end


-- Expand the references in s. Returns the new string, or nil, err.
-- st: { getenv = fn, source = name for messages }; path: key path of s.
local function expand(s, st, path)
    if not find(s, "$", 1, true) then
        return s
    end
    local out, n, i = {}, 0, 1
    while true do
        local j = find(s, "$", i, true)
        if not j then
            n = n + 1
            out[n] = sub(s, i)
            break
        end
        n = n + 1
        out[n] = sub(s, i, j - 1)
        if sub(s, j + 1, j + 2) == "${" then        -- $${ -> literal ${
            n = n + 1
            out[n] = "${"
            i = j + 3
        elseif sub(s, j + 1, j + 1) == "{" then
            local close = find(s, "}", j + 2, true)
            local body = close and sub(s, j + 2, close - 1)
            local name, sep, default
            if body then
                name, sep, default = match(body, "^(" .. NAME .. ")(:%-)(.*)$")
                if not name then
                    name = match(body, "^" .. NAME .. "$")
                end
            end
            if not name then
                return fail("config", st.source .. ": " .. path .. ": bad reference '"
                    .. sub(s, j, close or -1) .. "' (write ${NAME} or ${NAME:-default}; $${ for a literal ${)",
                    { path = st.source, key = path })
            end
            local value = st.getenv(name)
            if value ~= nil then
                value = tostring(value)
            end
            if sep and (value == nil or value == "") then
                value = default
            end
            if value == nil then
                return fail("config", st.source .. ": " .. path .. ": environment variable " .. name
                    .. " is not set (set it, or write ${" .. name .. ":-default})",
                    { path = st.source, key = path, var = name })
            end
            n = n + 1
            out[n] = value
            i = close + 1
        else
            n = n + 1
            out[n] = "$"
            i = j + 1
        end
    end
    return concat(out, "", 1, n)
end


local function key_before(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then
        return ta < tb          -- boolean < number < string
    end
    if ta == "boolean" then
        return not a and b
    end
    return a < b
end


-- Substitute references in every string value of t, in place, visiting
-- shared (aliased) tables once and keys in sorted order, so the first error
-- reported is deterministic. Returns true or nil, err.
local function walk(t, st, path, seen)
    if seen[t] then
        return true
    end
    seen[t] = true
    local keys, n = {}, 0
    for k in pairs(t) do
        n = n + 1
        keys[n] = k
    end
    sort(keys, key_before)
    for i = 1, n do
        local k = keys[i]
        local v = t[k]
        local kp = key_path(path, k)
        if type(v) == "string" then
            local s, err = expand(v, st, kp)
            if not s then
                return nil, err
            end
            t[k] = s
        elseif type(v) == "table" and getmetatable(v) == ref_mt then
            local s, err = expand(v[1], st, kp)
            if not s then
                return nil, err
            end
            local typed = yaml_scalar(s, st.scalar_opts)
            if typed == st.null and st.drop_nulls and type(k) ~= "number" then
                t[k] = nil
            else
                t[k] = typed
            end
        elseif type(v) == "table" then
            local ok, err = walk(v, st, kp, seen)
            if not ok then
                return nil, err
            end
        end
    end
    return true
end


local function check_opts(opts)
    if opts == nil then
        return {}
    end
    if type(opts) ~= "table" then
        error("bad argument #2 (options table expected, got " .. type(opts) .. ")", 3)
    end
    if opts.env ~= nil and type(opts.env) ~= "table" then
        error("opts.env must be a table", 3)
    end
    return opts
end


local function decode(text, opts, source)
    local null = opts.null
    if null == nil then
        null = yaml_null
    end
    local scalar_opts = { null = null }
    local env = opts.env
    local st = {
        source = source,
        null = null,
        drop_nulls = opts.drop_nulls,
        scalar_opts = scalar_opts,
        getenv = env and function(name) return env[name] end or os_getenv,
    }

    local root, err = yaml_decode(text, {
        null = null,
        drop_nulls = opts.drop_nulls,
        max_depth = opts.max_depth,
        max_nodes = opts.max_nodes,
        resolve = function(s) return resolve_plain(s, scalar_opts) end,
    })
    if root == nil then
        local line, column = err.line or 0, err.column or 0
        return fail("parse", source .. ":" .. line .. ":" .. column .. ": " .. (err.problem or err.message),
            { path = source, line = line, column = column })
    end

    if root == null then
        return {}
    end
    if type(root) ~= "table" or getmetatable(root) == ref_mt then
        return fail("config", source .. ": the top level must be a mapping, got "
            .. (type(root) == "table" and "a string" or type(root)), { path = source })
    end
    local ok, werr = walk(root, st, "", {})
    if not ok then
        return nil, werr
    end
    return root
end


--- Decode configuration text. opts: env (table replacing os.getenv),
-- source (name used in messages, default "<string>"), null, drop_nulls,
-- max_depth, max_nodes (passed to yaml.decode). Returns the table (an empty
-- document gives {}) or nil, err with err.kind "parse" or "config".
function _M.decode(text, opts)
    if type(text) ~= "string" then
        error("bad argument #1 to 'decode' (string expected, got " .. type(text) .. ")", 2)
    end
    opts = check_opts(opts)
    return decode(text, opts, opts.source or "<string>")
end


--- Read and decode a YAML configuration file. Options as for decode.
-- Returns the table or nil, err with err.kind "io", "parse" or "config";
-- err.path names the file.
function _M.load(path, opts)
    if type(path) ~= "string" then
        error("bad argument #1 to 'load' (string expected, got " .. type(path) .. ")", 2)
    end
    opts = check_opts(opts)
    local f, oerr = io_open(path, "rb")
    if not f then
        return fail("io", "cannot open config file " .. tostring(oerr), { path = path })
    end
    local text, rerr = f:read("*a")
    f:close()
    if not text then
        return fail("io", "cannot read config file " .. path .. ": " .. tostring(rerr), { path = path })
    end
    return decode(text, opts, path)
end


return _M
