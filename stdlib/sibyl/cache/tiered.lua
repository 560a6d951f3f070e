-- sibyl.cache.tiered -- L1 memory -> L2 Redis -> L3 semantic, read-through
-- with promotion and write-through, a single-flight guard, and cache.wrap.
--
--   local t = cache.tiered{ memory = { max_size = 1000, ttl = 300 },
--                           redis = { url = "redis://127.0.0.1:6379/0", ttl = 3600 },
--                           semantic = { similarity_threshold = 0.95, embed = fn } }
--   local v, tier = t:fetch(key, function() return expensive() end, prompt_text)
--
-- Redis failures never fail a call: the tier is skipped (said once on
-- stderr) and tried again after `retry_after` seconds. The semantic tier
-- keeps its vectors in this process; it needs the text a value answers
-- (the prompt) and an embedding function (default: sibyl.llm's embed).

local sibyl = require "sibyl"
local json = require "sibyl.json"
local core = require "sibyl.cache.core"
local ffi = require "ffi"

local type, pairs, ipairs, tostring, setmetatable, error, select, next =
    type, pairs, ipairs, tostring, setmetatable, error, select, next
local format, sort, concat = string.format, table.sort, table.concat
local sqrt = math.sqrt
local digest = core.digest

local _M = {}

local tiered = {}
tiered.__index = tiered


-- --------------------------------------------------------------- keys

-- Canonical text of a value: tables with sorted keys, types tagged, so
-- equal data gives equal text whatever the table's construction order.
local function canon(v, out, depth)
    local tv = type(v)
    if tv == "string" then
        out[#out + 1] = "s" .. #v .. ":" .. v
    elseif tv == "number" then
        out[#out + 1] = format("n%.17g;", v)
    elseif tv == "boolean" then
        out[#out + 1] = v and "T" or "F"
    elseif v == nil then
        out[#out + 1] = "_"
    elseif v == json.null then
        out[#out + 1] = "0"
    elseif tv == "table" then
        if depth > 50 then error("cache.key: table nested deeper than 50 levels (a cycle?)", 0) end
        local keys = {}
        for k in pairs(v) do
            if type(v[k]) ~= "function" then keys[#keys + 1] = k end   -- callbacks are not data
        end
        sort(keys, function(a, b)
            local ta, tb = type(a), type(b)
            if ta ~= tb then return ta < tb end
            return a < b
        end)
        out[#out + 1] = "{"
        for _, k in ipairs(keys) do
            canon(k, out, depth + 1)
            canon(v[k], out, depth + 1)
        end
        out[#out + 1] = "}"
    elseif tv == "function" then
        out[#out + 1] = "f"                 -- a callback argument: not part of the key
    else
        error("cache.key: cannot make a key from a " .. tv, 0)
    end
end


--- A stable key for any arguments: 32 hex digits of their canonical form.
function _M.key(...)
    local out = {}
    for i = 1, select("#", ...) do canon((select(i, ...)), out, 0) end
    return digest(concat(out))
end


-- ------------------------------------------------------------ L2: Redis

-- Values go to Redis as JSON inside an envelope, so strings, numbers,
-- booleans, json.null and tables (string keys or arrays) survive.
local function pack(v) return json.encode({ v = v }) end
local function unpack_value(s)
    local t = json.decode(s)
    if type(t) ~= "table" then return nil end
    return t.v
end

local redis_tier = {}
redis_tier.__index = redis_tier

local function new_redis(conf)
    return setmetatable({
        conf = conf, ttl = conf.ttl or 3600, prefix = conf.prefix or "sibyl:cache:",
        client = conf.client, down_until = 0, said = false,
        retry_after = conf.retry_after or 5, hits = 0, misses = 0, errors = 0,
    }, redis_tier)
end

-- The connected client, or nil while Redis is down.
function redis_tier:conn()
    if sibyl.now() < self.down_until then return nil end
    if self.client then return self.client end
    local redis = require "sibyl.redis"
    local c, err = redis.connect(self.conf.url or {
        host = self.conf.host, port = self.conf.port, password = self.conf.password, db = self.conf.db,
        timeout = self.conf.timeout or 1 })
    if not c then
        self:down(err)
        return nil
    end
    self.client = c
    return c
end

function redis_tier:down(err)
    self.errors = self.errors + 1
    self.down_until = sibyl.now() + self.retry_after
    if not self.said then
        self.said = true
        io.stderr:write(format("sibyl.cache: the Redis tier is unavailable (%s); carrying on with the "
            .. "other tiers and trying again every %g s\n", tostring(err and err.message or err), self.retry_after))
    end
end

function redis_tier:get(key)
    local c = self:conn()
    if not c then return nil end
    local v, err = c:call("GET", self.prefix .. key)
    if err then
        self:down(err)
        return nil
    end
    if self.said then
        self.said = false                   -- back: say so next time it goes
        io.stderr:write("sibyl.cache: the Redis tier is back\n")
    end
    if v == nil then
        self.misses = self.misses + 1
        return nil
    end
    self.hits = self.hits + 1
    return unpack_value(v)
end

function redis_tier:set(key, v, ttl)
    local c = self:conn()
    if not c then return false end
    ttl = ttl or self.ttl
    local ok, err
    if ttl and ttl > 0 then
        ok, err = c:call("SET", self.prefix .. key, pack(v), "PX", math.floor(ttl * 1000 + 0.5))
    else
        ok, err = c:call("SET", self.prefix .. key, pack(v))
    end
    if err then self:down(err) end
    return ok ~= nil
end

function redis_tier:delete(key)
    local c = self:conn()
    if c then
        local _, err = c:call("DEL", self.prefix .. key)
        if err then self:down(err) end
    end
end


-- --------------------------------------------------------- L3: semantic

local semantic_tier = {}
semantic_tier.__index = semantic_tier

local function default_embed(text)
    local vectors, err = require("sibyl.llm").embed{ input = { text } }
    if not vectors then return nil, err end
    return vectors[1]
end

local function new_semantic(conf)
    return setmetatable({
        threshold = conf.similarity_threshold or conf.threshold or 0.95,
        embed = conf.embed or default_embed,
        max_entries = conf.max_entries or conf.max_size or 1000,
        ttl = conf.ttl or 0,
        entries = {}, hits = 0, misses = 0, errors = 0,
    }, semantic_tier)
end

-- Embed text as a unit float array: vec, dims; or nil.
function semantic_tier:vector(text)
    local v, err = self.embed(text)
    if v == nil then
        self.errors = self.errors + 1
        return nil, err
    end
    local n
    if type(v) == "table" then
        n = #v
        local a = ffi.new("float[?]", n)
        for i = 1, n do a[i - 1] = v[i] end
        v = a
    else
        n = ffi.sizeof(v) / 4
    end
    local norm = 0
    for i = 0, n - 1 do norm = norm + v[i] * v[i] end
    norm = sqrt(norm)
    local u = ffi.new("float[?]", n)
    if norm > 0 then
        for i = 0, n - 1 do u[i] = v[i] / norm end
    end
    return u, n
end

-- The best entry for text: value, similarity; or nil.
function semantic_tier:get(text)
    if text == nil or #self.entries == 0 then
        self.misses = self.misses + 1
        return nil
    end
    local q, n = self:vector(text)
    if not q then return nil end
    local best, best_sim = nil, -2
    local now = sibyl.now()
    local live = {}
    for _, e in ipairs(self.entries) do
        if e.expires == 0 or e.expires > now then
            live[#live + 1] = e
            if e.dims == n then
                local dot, v = 0, e.vec
                for i = 0, n - 1 do dot = dot + q[i] * v[i] end
                if dot > best_sim then best, best_sim = e, dot end
            end
        end
    end
    self.entries = live
    if best and best_sim >= self.threshold then
        self.hits = self.hits + 1
        return best.value, best_sim
    end
    self.misses = self.misses + 1
    return nil
end

function semantic_tier:set(text, value)
    if text == nil then return false end
    local v, n = self:vector(text)
    if not v then return false end
    local entries = self.entries
    entries[#entries + 1] = { vec = v, dims = n, text = text, value = value,
                              expires = self.ttl > 0 and sibyl.now() + self.ttl or 0 }
    while #entries > self.max_entries do table.remove(entries, 1) end
    return true
end


-- ----------------------------------------------------------- the tiers

-- Accept both shapes: {memory=, redis=, semantic=} and the YAML one,
-- {memory_cache = {technique = "memory_cache", config = {...}}, ...}.
local TECHNIQUES = { memory_cache = "memory", redis_cache = "redis", semantic_cache = "semantic" }

local function normalise(config)
    local out = { name = config.name }
    for k, v in pairs(config) do
        if type(v) == "table" and v.technique then
            local tier = TECHNIQUES[v.technique]
            if not tier then
                error(format("cache.tiered: %s has unknown technique %q (memory_cache, redis_cache or "
                             .. "semantic_cache)", tostring(k), tostring(v.technique)), 3)
            end
            out[tier] = v.config or {}
        elseif k == "memory" or k == "redis" or k == "semantic" then
            out[k] = v
        elseif k ~= "name" then
            error(format("cache.tiered: unknown entry %q (memory, redis, semantic, or the "
                         .. "technique form)", tostring(k)), 3)
        end
    end
    return out
end


--- A tiered cache. See doc/cache.md.
function _M.new(config)
    if type(config) ~= "table" then error("cache.tiered: a configuration table expected", 2) end
    local conf = normalise(config)
    local cache = require "sibyl.cache"
    local t = setmetatable({ inflight = {}, upstream = 0, name = conf.name }, tiered)
    if conf.memory then
        t.memory = cache.new(conf.memory)
        t.memory_ttl = conf.memory.ttl
    end
    if conf.redis then t.redis = new_redis(conf.redis) end
    if conf.semantic then t.semantic = new_semantic(conf.semantic) end
    if not (t.memory or t.redis or t.semantic) then
        error("cache.tiered: configure at least one tier (memory, redis, semantic)", 2)
    end
    return t
end


--- The value for key (or, in the semantic tier, for a text close to
-- `text`): value, tier name; or nil. Hits in slower tiers are copied into
-- the faster ones.
function tiered:get(key, text)
    if type(key) ~= "string" then error("tiered:get: key must be a string", 2) end
    local v
    if self.memory then
        v = self.memory:get(key)
        if v ~= nil then return v, "memory" end
    end
    if self.redis then
        v = self.redis:get(key)
        if v ~= nil then
            if self.memory then self.memory:set(key, v) end
            return v, "redis"
        end
    end
    if self.semantic and text ~= nil then
        v = self.semantic:get(text)
        if v ~= nil then
            if self.memory then self.memory:set(key, v) end
            if self.redis then self.redis:set(key, v) end
            return v, "semantic"
        end
    end
    return nil
end


--- Store value in every tier (each with its own TTL; `ttl` overrides).
function tiered:set(key, value, text, ttl)
    if type(key) ~= "string" then error("tiered:set: key must be a string", 2) end
    if self.memory then self.memory:set(key, value, ttl) end
    if self.redis then self.redis:set(key, value, ttl) end
    if self.semantic and text ~= nil then self.semantic:set(text, value) end
    return true
end


function tiered:delete(key)
    if self.memory then self.memory:delete(key) end
    if self.redis then self.redis:delete(key) end
end


--- Read-through: the cached value, or fn()'s result stored in every tier.
-- Concurrent misses on one key share one call of fn (single flight).
-- Returns value, tier ("memory", "redis", "semantic" or "upstream"); or
-- nil, err when fn failed (failures are not cached).
function tiered:fetch(key, fn, text)
    local v, tier = self:get(key, text)
    if v ~= nil then return v, tier end
    return _M.single_flight(self, key, fn, text)
end


-- Run fn once for every concurrent caller missing `key` on store.
function _M.single_flight(store, key, fn, text)
    local inflight = store.inflight
    local task = inflight[key]
    if not task then
        task = sibyl.spawn(function()
            local value, err = fn()
            if value ~= nil then
                store:set(key, value, text)
            end
            return value, err
        end)
        inflight[key] = task
        store.upstream = (store.upstream or 0) + 1
    end
    local value, err = task:wait()
    if inflight[key] == task then inflight[key] = nil end
    if value == nil then return nil, err end
    return value, "upstream"
end


--- Per-tier counters and the upstream call count.
function tiered:stats()
    local s = { upstream = self.upstream }
    if self.memory then s.memory = self.memory:stats() end
    if self.redis then
        s.redis = { hits = self.redis.hits, misses = self.redis.misses, errors = self.redis.errors,
                    down = sibyl.now() < self.redis.down_until }
    end
    if self.semantic then
        s.semantic = { hits = self.semantic.hits, misses = self.semantic.misses, errors = self.semantic.errors,
                       entries = #self.semantic.entries, threshold = self.semantic.threshold }
    end
    return s
end


function tiered:close()
    if self.memory then self.memory:close() end
    if self.redis and self.redis.client and not self.redis.conf.client then self.redis.client:close() end
end


-- --------------------------------------------------------------- wrap

--- Memoize fn. opts: cache (a tiered or memory cache; default a new memory
-- cache of 1000 entries), key (function(...) -> string; default cache.key
-- of the arguments), text (function(...) -> the text for the semantic
-- tier), ttl. The wrapped function returns what fn returns (its first two
-- values), from the cache when it can.
function _M.wrap(fn, opts)
    if type(fn) ~= "function" then error("cache.wrap: a function expected", 2) end
    opts = opts or {}
    local store = opts.cache
    if store == nil then
        store = require("sibyl.cache").new{ max_entries = 1000, ttl = opts.ttl }
    end
    if store.inflight == nil then store.inflight = {} end
    local keyf, textf = opts.key or _M.key, opts.text
    local is_tiered = getmetatable(store) == tiered
    return function(...)
        local key = keyf(...)
        local text = textf and textf(...)
        local v = store:get(key, text)
        if v ~= nil then return v end
        local args, n = { ... }, select("#", ...)
        local value, err = _M.single_flight(store, key, function() return fn(unpack(args, 1, n)) end,
                                            is_tiered and text or nil)
        if value == nil then return nil, err end
        return value
    end
end


return _M
