-- 16-cache_spec.lua -- sibyl.cache: the L1 memory cache (runtime/src/cache.c
-- through the FFI), named caches, tiered caches (memory -> Redis -> semantic)
-- with promotion and single flight, cache.key and cache.wrap.

local sibyl = require "sibyl"
local cache = require "sibyl.cache"
local json = require "sibyl.json"
local mock = require "sibyl.llm.mock"
local helpers = require "helpers"


describe("sibyl.cache memory", function()

    it("evicts the least recently used entry first", function()
        local c = cache.new{ max_entries = 3 }
        c:set("a", 1); c:set("b", 2); c:set("c", 3)
        assert.are.equal(1, c:get("a"))            -- a is now the most recent; b the least
        c:set("d", 4)
        assert.is_nil(c:get("b"))
        assert.are.same({ "d", "a", "c" }, c:keys())
        c:set("e", 5)                               -- c goes next
        assert.is_nil(c:get("c"))
        assert.are.equal(2, c:stats().evictions)
        assert.are.equal(3, c:count())
    end)

    it("expires entries after their TTL (per entry and default)", function()
        local c = cache.new{ ttl = 0.1 }
        c:set("short", "x", 0.05)
        c:set("default", "y")
        c:set("forever", "z", 0)
        assert.is_true(c:ttl("short") <= 0.05)
        assert.are.equal(math.huge, c:ttl("forever"))
        sibyl.sleep(0.07)
        assert.is_nil(c:get("short"))
        assert.are.equal("y", c:get("default"))
        sibyl.sleep(0.06)
        assert.is_nil(c:get("default"))
        assert.are.equal("z", c:get("forever"))
        assert.are.equal(2, c:stats().expirations)
    end)

    it("bounds bytes: big entries push old ones out, an entry over the limit is refused", function()
        local c = cache.new{ max_entries = 0, max_bytes = 4096 }
        for i = 1, 10 do assert.is_true(c:set("k" .. i, string.rep("x", 1000))) end
        local s = c:stats()
        assert.is_true(s.bytes <= 4096, s.bytes)
        assert.are.equal(3, s.entries)              -- 3 x (1000 + key + 64 overhead) fit
        assert.is_nil(c:get("k1"))
        assert.are.equal(1000, #c:get("k10"))
        local ok, why = c:set("huge", string.rep("y", 5000))
        assert.is_false(ok)
        assert.matches("larger than the cache's max_bytes", why)
        assert.is_nil(c:get("huge"))
    end)

    it("stores strings, numbers, booleans, json.null and tables, and copies tables", function()
        local c = cache.new{}
        local t = { list = { 1, 2, 3 }, nested = { ok = true, none = json.null }, [7] = "seven", s = "\0bin" }
        c:set("t", t)
        c:set("n", 3.25); c:set("s", ""); c:set("f", false); c:set("null", json.null)
        local got = c:get("t")
        assert.are.same(t, got)
        assert.are_not.equal(t, got)                -- a copy ...
        got.list[1] = 99
        assert.are.equal(1, c:get("t").list[1])     -- ... every time
        assert.are.equal(3.25, c:get("n"))
        assert.are.equal("", c:get("s"))
        assert.is_false(c:get("f"))
        assert.are.equal(json.null, c:get("null"))
        c:set("n", nil)                             -- nil deletes
        assert.is_nil(c:get("n"))
    end)

    it("refuses what it cannot copy, and misuse", function()
        local c = cache.new{}
        assert.has_error(function() c:set("f", print) end)
        assert.has_error(function() c:set("t", { fn = print }) end)
        local cyc = {}; cyc.self = cyc
        assert.has_error(function() c:set("c", cyc) end)
        assert.has_error(function() c:get(1) end)
        assert.has_error(function() c:set("k", 1, -1) end)
        c:close(); c:close()
        assert.has_error(function() c:get("a") end)
    end)

    it("counts hits and misses; named caches are shared", function()
        local a = cache.memory("spec-shared", { max_entries = 5 })
        a:set("k", "v")
        local b = cache.memory("spec-shared")
        assert.are.equal(a, b)
        assert.are.equal("v", b:get("k"))
        assert.is_nil(b:get("nope"))
        local s = b:stats()
        assert.are.equal(1, s.hits)
        assert.are.equal(1, s.misses)
        assert.are.equal(5, s.max_entries)
        a:close()
        assert.are_not.equal(a, cache.memory("spec-shared"))   -- closed: a new one
    end)

    it("holds 100,000 entries and finds them all", function()
        local c = cache.new{ max_entries = 0, max_bytes = 0 }
        for i = 1, 100000 do c:set("key:" .. i, i) end
        for i = 1, 100000, 7 do assert(c:get("key:" .. i) == i) end
        for i = 1, 100000, 2 do c:delete("key:" .. i) end
        assert.are.equal(50000, c:count())
        for i = 2, 100000, 2 do assert(c:get("key:" .. i) == i) end
        assert.is_nil(c:get("key:1"))
    end)
end)


describe("cache.key and cache.wrap", function()

    it("key: equal data gives equal keys whatever the construction order", function()
        assert.are.equal(cache.key({ a = 1, b = { 2, 3 } }), cache.key({ b = { 2, 3 }, a = 1 }))
        assert.are_not.equal(cache.key("x", 1), cache.key("x", "1"))
        assert.are_not.equal(cache.key({ 1, 2 }), cache.key({ 2, 1 }))
        assert.are.equal(32, #cache.key("anything"))
        -- callbacks are not data: a stream function does not change the key
        assert.are.equal(cache.key({ prompt = "p", stream = print }), cache.key({ prompt = "p", stream = type }))
    end)

    it("wrap memoizes, and failures are not cached", function()
        local calls = 0
        local f = cache.wrap(function(x)
            calls = calls + 1
            if x < 0 then return nil, sibyl.error("bad", "negative") end
            return { double = x * 2 }
        end)
        assert.are.equal(10, f(5).double)
        assert.are.equal(10, f(5).double)
        assert.are.equal(1, calls)
        local v, err = f(-1)
        assert.is_nil(v)
        assert.are.equal("bad", err.kind)
        f(-1)
        assert.are.equal(3, calls)
    end)

    it("wrap of an llm.chat-like function: one upstream call for 100 concurrent identical calls", function()
        local llm = require "sibyl.llm"
        local m = llm.mock{ default = function(req) sibyl.sleep(0.05); return "answer" end }
        local chat = cache.wrap(function(opts) return m:chat(opts) end)
        local fns = {}
        for i = 1, 100 do fns[i] = function() return chat{ prompt = "same question" }.content end end
        local vals = assert(sibyl.gather(fns))
        assert.are.equal(100, #vals)
        assert.are.equal("answer", vals[100])
        assert.are.equal(1, #m.requests)
    end)
end)


describe("sibyl.cache tiered", function()
    local function embed(text) return mock.embed_text(text, 64) end

    it("single flight: 100 concurrent misses on one key make one upstream call", function()
        local t = cache.tiered{ memory = { max_size = 100 } }
        local calls = 0
        local fns = {}
        for i = 1, 100 do
            fns[i] = function()
                return t:fetch("k", function() calls = calls + 1; sibyl.sleep(0.05); return "v" end)
            end
        end
        local vals = assert(sibyl.gather(fns))
        assert.are.equal(1, calls)
        assert.are.equal("v", vals[37])
        assert.are.equal(1, t:stats().upstream)
        local v, tier = t:fetch("k", function() error("not called") end)
        assert.are.equal("v", v)
        assert.are.equal("memory", tier)
    end)

    it("a semantic hit for a near-duplicate prompt, promoted to memory", function()
        local t = cache.tiered{ memory = {}, semantic = { similarity_threshold = 0.9, embed = embed } }
        t:set(cache.key("What is the capital of France?"), "Paris", "What is the capital of France?")
        local q = "what is the capital of france"
        local v, tier = t:get(cache.key(q), q)
        assert.are.equal("Paris", v)
        assert.are.equal("semantic", tier)
        v, tier = t:get(cache.key(q), q)
        assert.are.equal("memory", tier)            -- promoted
        assert.is_nil(t:get(cache.key("x"), "How tall is the Eiffel tower?"))   -- not similar
        assert.are.equal(1, t:stats().semantic.hits)
    end)

    it("takes the YAML shape users write", function()
        local cfg = assert(require("sibyl.config").decode([[
shops:
  infrastructure:
    caching:
      memory_cache:   { technique: memory_cache,   config: { max_size: 1000, ttl: 300 } }
      semantic_cache: { technique: semantic_cache, config: { similarity_threshold: 0.95 } }
]]))
        local caching = cfg.shops.infrastructure.caching
        caching.semantic_cache.config.embed = embed
        local t = cache.tiered(caching)
        assert.are.equal(1000, t:stats().memory.max_entries)
        assert.are.equal(300, t:stats().memory.ttl)
        assert.are.equal(0.95, t:stats().semantic.threshold)
        assert.has_error(function() cache.tiered{ x = { technique = "disk_cache" } } end)
    end)

    it("with Redis: write-through, a second process's view, promotion into memory, TTL", function()
        local rs = require "redis_server"
        rs.require_installed()
        local srv = rs.new_server()
        finally(function() rs.stop_server(srv) end)
        local url = "redis://127.0.0.1:" .. srv.port .. "/0"
        local a = cache.tiered{ memory = {}, redis = { url = url, ttl = 60 } }
        assert.are.equal("computed", (a:fetch("k", function() return "computed" end)))
        -- another "process": its own tiers, the same Redis
        local b = cache.tiered{ memory = {}, redis = { url = url, ttl = 60 } }
        local v, tier = b:get("k")
        assert.are.equal("computed", v)
        assert.are.equal("redis", tier)
        v, tier = b:get("k")
        assert.are.equal("memory", tier)                       -- promoted
        b:set("t", { list = { 1, 2 }, ok = true, none = json.null })
        local got = a:get("t")
        assert.are.same({ list = { 1, 2 }, ok = true, none = json.null }, got)
        -- the Redis TTL is set (milliseconds precision)
        local redis = require "sibyl.redis"
        local r = assert(redis.connect(url))
        local pttl = r:call("PTTL", "sibyl:cache:k")
        r:close()
        assert.is_true(pttl > 50000 and pttl <= 60000, tostring(pttl))
        a:close(); b:close()
    end)

    it("degrades when Redis is down: says so once and keeps answering", function()
        local t = cache.tiered{ memory = {}, redis = { url = "redis://127.0.0.1:1/0", ttl = 10, retry_after = 60 } }
        local v, tier = t:fetch("z", function() return "computed" end)
        assert.are.equal("computed", v)
        assert.are.equal("upstream", tier)
        v, tier = t:fetch("z", function() return "again" end)
        assert.are.equal("computed", v)
        assert.are.equal("memory", tier)
        assert.is_true(t:stats().redis.down)
    end)
end)
