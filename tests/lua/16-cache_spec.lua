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

    it("starts checking expiry with the first entry that has a TTL, also after a clear", function()
        local c = cache.new{}                       -- no default TTL: gets skip the clock
        for round = 1, 2 do
            c:set("kept", round)
            assert.are.equal(math.huge, c:ttl("kept"))
            c:set("brief", "x", 0.03)               -- the first entry that can expire
            sibyl.sleep(0.05)
            assert.is_nil(c:get("brief"))
            assert.are.equal(round, c:get("kept"))
            c:clear()
        end
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

    it("stores keys and values inline or out of line across the size threshold", function()
        -- a node keeps key + value inline up to 32 bytes; longer go to a block of their own
        local c = cache.new{ max_entries = 0, max_bytes = 0 }
        local want = {}
        for kl = 0, 40 do
            for _, vl in ipairs{ 0, 1, 7, 8, 16, 31 - kl, 32 - kl, 33 - kl, 40 } do
                if vl >= 0 then
                    local k = string.rep("k", kl) .. "/" .. vl
                    local v = string.rep(string.char(65 + vl % 26), vl)
                    c:set(k, v); want[k] = v
                end
            end
            local k = string.rep("n", kl)
            c:set(k, kl + 0.5); want[k] = kl + 0.5
            c:set(k .. "?", kl % 2 == 0); want[k .. "?"] = kl % 2 == 0
        end
        local bytes = 0
        for k, v in pairs(want) do
            assert.are.equal(v, c:get(k), k)
            bytes = bytes + 64 + #k + (type(v) == "string" and #v or 0)
        end
        assert.are.equal(bytes, c:stats().bytes)
        -- keys that differ in one byte anywhere (the compare reads overlapping words)
        local d = cache.new{ max_entries = 0 }
        for len = 1, 40 do
            local base = string.rep("a", len)
            d:set(base, len)
            for i = 1, len do d:set(base:sub(1, i - 1) .. "b" .. base:sub(i + 1), len * 100 + i) end
        end
        for len = 1, 40 do
            local base = string.rep("a", len)
            assert.are.equal(len, d:get(base))
            for i = 1, len do assert.are.equal(len * 100 + i, d:get(base:sub(1, i - 1) .. "b" .. base:sub(i + 1))) end
        end
        assert.is_nil(d:get(string.rep("a", 41)))
        c:set("", "empty key"); assert.are.equal("empty key", c:get(""))
    end)

    it("overwrites move a value between inline and out of line, keeping bytes exact", function()
        local c = cache.new{ max_entries = 0, max_bytes = 0 }
        local long = string.rep("L", 100)
        local function bytes() return c:stats().bytes end
        for _, k in ipairs{ "short", string.rep("K", 40) } do
            local base = bytes()
            c:set(k, 1); assert.are.equal(1, c:get(k)); assert.are.equal(base + 64 + #k, bytes())
            c:set(k, long); assert.are.equal(long, c:get(k)); assert.are.equal(base + 64 + #k + 100, bytes())
            c:set(k, "tiny"); assert.are.equal("tiny", c:get(k)); assert.are.equal(base + 64 + #k + 4, bytes())
            c:set(k, { a = { 1, 2 } }); assert.are.same({ a = { 1, 2 } }, c:get(k))
            c:set(k, long .. "!"); assert.are.equal(long .. "!", c:get(k))
            c:set(k, true); assert.is_true(c:get(k)); assert.are.equal(base + 64 + #k, bytes())
            c:set(k, json.null); assert.are.equal(json.null, c:get(k))
            c:set(k, 0 / 0); local nan = c:get(k); assert.is_true(nan ~= nan)
        end
        assert.are.equal(2, c:count())
        c:clear()
        assert.are.equal(0, bytes()); assert.are.same({}, c:keys())
        c:set("again", "x"); assert.are.equal("x", c:get("again"))
    end)

    it("evicts by bytes with inline and out-of-line entries in LRU order", function()
        -- "kN" + a number: 64 + 2 bytes each
        local c = cache.new{ max_entries = 0, max_bytes = 66 * 10 }
        for i = 0, 9 do c:set("k" .. i, i) end
        assert.are.equal(10, c:count()); assert.are.equal(660, c:stats().bytes)
        c:get("k0")                                 -- k1 is now the least recent
        c:set("big", string.rep("x", 150))          -- 217 bytes: k1, k2, k3, k4 go
        assert.are.same({ "big", "k0", "k9", "k8", "k7", "k6", "k5" }, c:keys())
        assert.are.equal(4, c:stats().evictions)
        assert.is_true(c:stats().bytes <= 660)
        c:set("big", 1)                             -- shrinks back inline: nothing more goes
        assert.are.equal(4, c:stats().evictions)
        assert.are.equal(6 * 66 + 67, c:stats().bytes)
    end)

    it("keeps exact LRU order through hits, overwrites, deletes and compactions", function()
        local cap = 40
        local c = cache.new{ max_entries = cap, max_bytes = 0 }
        local order, vals = {}, {}                  -- the model: most recent first
        local function index(k) for i, x in ipairs(order) do if x == k then return i end end end
        local function touch(k)
            local i = index(k)
            if i then table.remove(order, i) end
            table.insert(order, 1, k)
        end
        math.randomseed(7)
        local evictions, hits = 0, 0
        for step = 1, 30000 do
            local n = math.random(1, 100)
            local k = n <= 70 and ("k" .. n) or (string.rep("K", 30) .. n)    -- inline and out-of-line keys
            local r = math.random()
            if r < 0.3 then
                local v = r < 0.1 and string.rep("v", math.random(0, 60)) or step
                c:set(k, v)
                vals[k] = v
                touch(k)
                if #order > cap then vals[table.remove(order)] = nil; evictions = evictions + 1 end
            elseif r < 0.33 then
                c:delete(k)
                local i = index(k)
                if i then table.remove(order, i); vals[k] = nil end
            else
                local v = c:get(k)
                assert.are.equal(vals[k], v)
                if v ~= nil then touch(k); hits = hits + 1 end
            end
        end
        assert.are.same(order, c:keys())
        local s = c:stats()
        assert.are.equal(evictions, s.evictions)
        assert.are.equal(hits, s.hits)
        local bytes = 0
        for k, v in pairs(vals) do bytes = bytes + 64 + #k + (type(v) == "string" and #v or 0) end
        assert.are.equal(bytes, s.bytes)
    end)

    it("expires, purges and reuses inline entries", function()
        local c = cache.new{ max_entries = 0 }
        for i = 1, 100 do c:set("t" .. i, i, 0.05) end
        for i = 1, 100 do c:set("f" .. i, string.rep("s", i)) end
        sibyl.sleep(0.08)
        assert.are.equal(100, c:purge())
        assert.are.equal(100, c:count())
        assert.is_nil(c:get("t5"))
        for i = 1, 100 do assert.are.equal(i, #c:get("f" .. i)) end
        for i = 1, 100 do c:set("t" .. i, -i) end
        for i = 1, 100 do assert.are.equal(-i, c:get("t" .. i)) end
        assert.are.equal(200, c:count())
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
