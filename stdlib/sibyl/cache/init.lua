-- sibyl.cache -- caches: the L1 memory cache (C, runtime/src/cache.c),
-- named caches shared by all tasks of a runtime, the tiered cache
-- (memory -> Redis -> semantic, sibyl/cache/tiered.lua) and cache.wrap,
-- which memoizes any function.
--
--   local cache = require "sibyl.cache"
--   local c = cache.memory("replies", { max_entries = 1000, ttl = 300 })
--   c:set("k", { answer = 42 })          -- tables are copied in ...
--   local v = c:get("k")                 -- ... and out: v is a fresh table
--
-- Keys are strings. Values: strings, numbers, booleans, json.null and
-- tables of those (copied: metatables, functions and userdata are refused).
-- get/set go through the FFI straight into C, so a hot loop stays compiled.

local core = require "sibyl.cache.core"
local json = require "sibyl.json"
local ffi = require "ffi"

local type, setmetatable, error = type, setmetatable, error
local format = string.format
local encode, decode = core.encode, core.decode
local null = json.null

local _M = { _VERSION = "0.1.0" }

ffi.cdef [[
typedef struct { double num; const char *ptr; size_t len; } sb_cache_val;
struct sb_cache { sb_cache_val out; };  /* the head of cache.c's struct: a get's value */
typedef struct sb_cache sb_cache;
]]

local c_get = ffi.cast("int (*)(sb_cache *, const char *, size_t)", core.ffi.get)
local c_set = ffi.cast("int (*)(sb_cache *, const char *, size_t, int, double, const char *, size_t, double)",
                       core.ffi.set)
local c_delete = ffi.cast("int (*)(sb_cache *, const char *, size_t)", core.ffi.delete)
local ffi_string, ffi_cast = ffi.string, ffi.cast

local NUMBER, STRING, TRUE, FALSE, NULL, TABLE =
    core.NUMBER, core.STRING, core.TRUE, core.FALSE, core.NULL, core.TABLE

--- Defaults for new memory caches.
_M.defaults = {
    max_entries = 10000,        -- 0 = unlimited
    max_bytes = 64 * 1024 * 1024,
    ttl = 0,                    -- seconds; 0 = entries never expire
}

local memory = {}
memory.__index = memory


local function check_key(key, what)
    if type(key) ~= "string" then
        error(format("cache:%s: key must be a string, got %s", what, type(key)), 3)
    end
end


local function ptr(self)
    local p = self._p
    if p == nil then error("cache: the cache is closed", 3) end
    return p
end


--- The value stored under key, or nil (absent or expired). Tables come
-- back as fresh copies.
function memory:get(key)
    local p = ptr(self)
    check_key(key, "get")
    local t = c_get(p, key, #key)
    if t == NUMBER then return p.out.num end
    if t == STRING then return ffi_string(p.out.ptr, p.out.len) end
    if t == 0 then return nil end
    if t == TRUE then return true end
    if t == FALSE then return false end
    if t == NULL then return null end
    return decode(ffi_string(p.out.ptr, p.out.len))
end


--- Store value under key for ttl seconds (default: the cache's ttl; 0 =
-- never expires). value nil deletes. Returns true, or false, reason when the
-- entry alone is larger than max_bytes. Raises for values it cannot copy.
function memory:set(key, value, ttl)
    local p = ptr(self)
    check_key(key, "set")
    if ttl ~= nil and (type(ttl) ~= "number" or ttl < 0) then
        error("cache:set: ttl must be a number of seconds >= 0", 2)
    end
    ttl = ttl or -1
    local tv, r = type(value), nil
    if tv == "number" then
        r = c_set(p, key, #key, NUMBER, value, nil, 0, ttl)
    elseif tv == "string" then
        r = c_set(p, key, #key, STRING, 0, value, #value, ttl)
    elseif tv == "boolean" then
        r = c_set(p, key, #key, value and TRUE or FALSE, 0, nil, 0, ttl)
    elseif value == null then
        r = c_set(p, key, #key, NULL, 0, nil, 0, ttl)
    elseif tv == "table" then
        local s = encode(value)
        r = c_set(p, key, #key, TABLE, 0, s, #s, ttl)
    elseif value == nil then
        c_delete(p, key, #key)
        return true
    else
        error("cache:set: cannot store a " .. tv .. " (values may be strings, numbers, booleans, "
              .. "json.null and tables of those)", 2)
    end
    if r == 1 then return true end
    if r == 0 then
        return false, "the entry is larger than the cache's max_bytes"
    end
    error("cache:set: out of memory", 2)
end


--- Remove key; true if it was there.
function memory:delete(key)
    local p = ptr(self)
    check_key(key, "delete")
    return c_delete(p, key, #key) == 1
end


--- Is key present and fresh? (Counts as a use: it moves to the front.)
function memory:has(key)
    return self:get(key) ~= nil
end


--- {hits, misses, sets, evictions, expirations, entries, bytes, max_entries, max_bytes, ttl}
function memory:stats() return self._ud:stats() end
--- Seconds until key expires (math.huge: never), or nil when absent.
function memory:ttl(key) return self._ud:ttl(key) end
--- Keys from most to least recently used.
function memory:keys() return self._ud:keys() end
--- Remove everything.
function memory:clear() return self._ud:clear() end
--- Drop expired entries now (they also go when looked up); returns how many.
function memory:purge() return self._ud:purge() end


--- Free the cache; later calls raise. Idempotent.
function memory:close()
    if self._p ~= nil then
        self._p = nil
        self._ud:close()
        if self.name and _M._named[self.name] == self then _M._named[self.name] = nil end
    end
end


--- How many entries it holds (expired ones not yet dropped included).
function memory:count()
    return self._ud:stats().entries
end


function memory:__tostring()
    if self._p == nil then return "sibyl.cache.memory (closed)" end
    local s = self._ud:stats()
    return format("sibyl.cache.memory %s(%d entries, %d bytes)", self.name and (self.name .. " ") or "",
                  s.entries, s.bytes)
end


local function new_memory(opts, name)
    opts = opts or {}
    if type(opts) ~= "table" then error("cache.new: options table expected", 3) end
    local d = _M.defaults
    local ud, p = core.new{
        max_entries = opts.max_entries or opts.max_size or d.max_entries,
        max_bytes = opts.max_bytes or d.max_bytes,
        ttl = opts.ttl or d.ttl,
    }
    -- get and set sit on the object itself: a hot loop then skips the
    -- metatable lookup on every call (about 10% of an L1 hit).
    return setmetatable({ _ud = ud, _p = ffi_cast("sb_cache *", p), name = name,
                          get = memory.get, set = memory.set }, memory)
end


--- A new memory cache: {max_entries=10000 (max_size also accepted),
-- max_bytes=64 MiB, ttl=0}.
function _M.new(opts)
    return new_memory(opts, nil)
end


_M._named = {}

--- The memory cache called name, shared by every task of this runtime;
-- opts apply when it is created by this call.
function _M.memory(name, opts)
    if type(name) ~= "string" then error("cache.memory: name must be a string", 2) end
    local c = _M._named[name]
    if not c then
        c = new_memory(opts, name)
        _M._named[name] = c
    end
    return c
end


--- Turn any arguments into a stable cache key: tables are canonicalised
-- (keys sorted), so {a=1, b=2} and {b=2, a=1} give the same key.
function _M.key(...)
    return require("sibyl.cache.tiered").key(...)
end


--- A tiered cache (see sibyl/cache/tiered.lua and doc/cache.md).
function _M.tiered(config)
    return require("sibyl.cache.tiered").new(config)
end


--- Memoize fn: cache.wrap(fn, {cache=, key=function(...) end, ttl=}).
function _M.wrap(fn, opts)
    return require("sibyl.cache.tiered").wrap(fn, opts)
end


return _M
