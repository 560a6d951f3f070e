-- 11-keys_spec.lua -- sibyl.keys (runtime/src/keys.c + stdlib/sibyl/keys.lua):
-- API key rings that rotate and rest keys after 429/401/403, and token
-- buckets that pace requests and tokens per minute.
--
-- Run with `sibyl test tests/lua/11-keys_spec.lua`. Times are real and short
-- (cooldowns of a few hundredths of a second, sibyl.sleep to let them pass),
-- with margins wide enough for an ASan build.

local keys = require "sibyl.keys"
local sibyl = require "sibyl"
local helpers = require "helpers"

local K1 = "sk-aaaaaaaaaaaa1111"
local K2 = "sk-bbbbbbbbbbbb2222"
local K3 = "sk-cccccccccccc3333"


local function near(want, got, tol, what)
    tol = tol or 0.05
    assert(type(got) == "number", (what or "value") .. ": number expected, got " .. tostring(got))
    assert(math.abs(got - want) <= tol,
           string.format("%s: %.4f is not within %.3f of %.4f", what or "value", got, tol, want))
end


local function ring3(opts)
    opts = opts or {}
    opts.keys = opts.keys or { K1, K2, K3 }
    opts.name = opts.name or "openai"
    return keys.ring(opts)
end


-- The ids of n acquires in a row (fails the test if one fails).
local function picks(ring, n)
    local ids = {}
    for i = 1, n do
        local key, id = ring:acquire()
        assert(key, "acquire #" .. i .. ": " .. tostring(id))
        ids[i] = id
    end
    return ids
end


-- Assert that fn raises an error whose message contains every fragment.
local function raises(fn, ...)
    local ok, err = pcall(fn)
    assert(not ok, "expected an error")
    for _, frag in ipairs({ ... }) do
        assert(tostring(err):find(frag, 1, true), "error '" .. tostring(err) .. "' lacks '" .. frag .. "'")
    end
end


describe("keys.parse", function()

    it("splits on commas and any whitespace and drops empties", function()
        assert.are.same({ "k1", "k2", "k3" }, keys.parse("k1, k2\nk3"))
        assert.are.same({ "a", "b", "c", "d" }, keys.parse(" ,a,,b\t\tc\r\n d,\n"))
        assert.are.same({}, keys.parse(""))
        assert.are.same({}, keys.parse(" , \n "))
    end)

    it("raises on a non-string", function()
        raises(function() keys.parse(nil) end, "keys.parse", "got nil")
        raises(function() keys.parse({ "k" }) end, "got table")
    end)
end)


describe("keys.redact", function()

    it("keeps a short prefix up to the first '-' and the last 4 characters", function()
        assert.are.equal("sk-…3456", keys.redact("sk-abcdef123456"))
        assert.are.equal("sk-…mnop", keys.redact("sk-proj-abcdefghijklmnop"))
        assert.are.equal("gsk-…wxyz", keys.redact("gsk-abcdefghijklmnopqrstuvwxyz"))
    end)

    it("keeps no prefix when the '-' comes after 3 characters or there is none", function()
        assert.are.equal("…mnop", keys.redact("abcd-efghijklmnop"))
        assert.are.equal("…7890", keys.redact("AIzaSyA1234567890"))
        assert.are.equal("…mnop", keys.redact("-bcdefghijklmnop"))
    end)

    it("hides keys of 8 characters or fewer entirely", function()
        assert.are.equal("…", keys.redact("abcdefgh"))
        assert.are.equal("…", keys.redact("sk-abcde"))
        assert.are.equal("…", keys.redact("x"))
        assert.are.equal("…", keys.redact(""))
    end)

    it("never shows more than half of a key", function()
        assert.are.equal("…def1", keys.redact("sk-abcdef1"))   -- "sk-" + 4 would show 7 of 10
        local alphabet = "sk-abcdefghijklmnopqrstuvwxyz0123456789_"
        for len = 0, 40 do
            local key = alphabet:sub(1, len)
            local shown = keys.redact(key):gsub("…", "")
            assert(#shown * 2 <= len, "redact(" .. key .. ") shows " .. shown)
            if len > 8 then
                assert.are.equal(key:sub(-4), shown:sub(-4))
            end
        end
    end)
end)


describe("keys.ring: rotation", function()

    it("round_robin hands the keys out in order and skips a resting key", function()
        local ring = ring3{ cooldown = 10 }
        local key, id = ring:acquire()
        assert.are.equal(K1, key)
        assert.are.equal(1, id)
        assert.are.same({ 2, 3, 1, 2, 3 }, picks(ring, 5))
        assert.is_true(ring:report(2, "rate_limited", 0.15))
        assert.are.same({ 1, 3, 1, 3 }, picks(ring, 4))
        sibyl.sleep(0.2)
        assert.are.same({ 1, 2, 3 }, picks(ring, 3))
        ring:close()
    end)

    it("under repeated rate_limited reports, each strategy rotates its own way", function()
        -- Three requests in flight come back limited in the order 3, 1, 2;
        -- then every key handed out is limited at once.
        local function run(strategy)
            local ring = ring3{ strategy = strategy, cooldown = 0.05 }
            assert.are.same({ 1, 2, 3 }, picks(ring, 3))
            for _, id in ipairs({ 3, 1, 2 }) do
                ring:report(id, "rate_limited")
                sibyl.sleep(0.002)
            end
            local key, err = ring:acquire()
            assert.is_nil(key)
            assert.are.equal("rate_limited", err.kind)
            sibyl.sleep(0.1)
            local healthy = picks(ring, 6)
            local limited = {}
            for i = 1, 3 do
                local _, id = ring:acquire()
                limited[i] = id
                ring:report(id, "rate_limited", 10)
            end
            assert.is_nil((ring:acquire()))
            ring:close()
            return healthy, limited
        end
        -- round_robin carries on from its cursor and spreads the load ...
        local healthy, limited = run("round_robin")
        assert.are.same({ 1, 2, 3, 1, 2, 3 }, healthy)
        assert.are.same({ 1, 2, 3 }, limited)
        -- ... least_recently_limited stays on the key limited longest ago
        -- until it is limited, then moves to the next oldest.
        healthy, limited = run("least_recently_limited")
        assert.are.same({ 3, 3, 3, 3, 3, 3 }, healthy)
        assert.are.same({ 3, 1, 2 }, limited)
    end)

    it("least_recently_limited shares the load among keys never limited", function()
        local lrl = ring3{ strategy = "least_recently_limited" }
        local rr = ring3{ strategy = "round_robin" }
        for _, ring in ipairs({ lrl, rr }) do
            assert.are.same({ 1 }, picks(ring, 1))
            ring:report(1, "rate_limited", 0)        -- limited, but ready again at once
        end
        assert.are.same({ 2, 3, 2, 3, 2, 3 }, picks(lrl, 6))
        assert.are.same({ 2, 3, 1, 2, 3, 1 }, picks(rr, 6))
        -- Now 2 and 3 get limited after 1: key 1 is the oldest limit.
        lrl:report(2, "rate_limited", 0)
        sibyl.sleep(0.002)
        lrl:report(3, "rate_limited", 0)
        assert.are.same({ 1, 1, 1 }, picks(lrl, 3))
        lrl:close()
        rr:close()
    end)

    it("honours retry_after over cooldown, and cooldown when retry_after is nil", function()
        local ring = keys.ring{ keys = { K1 }, cooldown = 0.05, name = "one" }
        assert.are.same({ 1 }, picks(ring, 1))
        ring:report(1, "rate_limited", 0.3)
        sibyl.sleep(0.1)                              -- past cooldown, not past retry_after
        local key, err = ring:acquire()
        assert.is_nil(key)
        assert.are.equal("rate_limited", err.kind)
        near(0.2, err.retry_after, 0.06, "retry_after")
        sibyl.sleep(err.retry_after + 0.02)
        assert.are.equal(K1, (ring:acquire()))

        ring:report(1, "rate_limited")                -- no retry_after: cooldown
        assert.is_nil((ring:acquire()))
        sibyl.sleep(0.08)
        assert.are.equal(K1, (ring:acquire()))
        ring:close()
    end)

    it("fails with rate_limited and the time to the first usable key when all rest", function()
        local ring = ring3{ cooldown = 10 }
        assert.are.same({ 1, 2, 3 }, picks(ring, 3))
        ring:report(1, "rate_limited", 0.4)
        ring:report(2, "rate_limited", 0.15)
        ring:report(3, "rate_limited")
        local key, err = ring:acquire()
        assert.is_nil(key)
        assert.is_true(sibyl.is_error(err))
        assert.are.equal("rate_limited", err.kind)
        near(0.15, err.retry_after, 0.05, "retry_after")
        assert.are.equal("openai", err.ring)
        for _, frag in ipairs({ '"openai"', "all 3 keys are resting", "3 rate-limited",
                                "err.retry_after", "add more keys" }) do
            assert(err.message:find(frag, 1, true), err.message .. " lacks " .. frag)
        end
        sibyl.sleep(err.retry_after + 0.02)
        local key2, id = ring:acquire()
        assert.are.equal(K2, key2)
        assert.are.equal(2, id)
        ring:close()
    end)

    it("counts uses, limits and failure streaks; ok clears the streak", function()
        local ring = ring3{ cooldown = 0 }
        picks(ring, 4)                                -- 1, 2, 3, 1
        ring:report(1, "rate_limited")
        ring:report(1, "rate_limited")
        ring:report(2, "auth")
        local s = ring:stats()
        assert.are.equal(3, #s)
        assert.are.same({ 2, 2, 0 }, { s[1].limited, s[1].failures, s[3].failures })
        assert.are.same({ 2, 1, 1 }, { s[1].uses, s[2].uses, s[3].uses })
        assert.are.same({ 0, 1 }, { s[2].limited, s[2].failures })
        ring:report(1, "ok")
        s = ring:stats()
        assert.are.same({ 2, 0 }, { s[1].limited, s[1].failures })
        ring:close()
    end)
end)


describe("keys.ring: auth and quota", function()

    it("disables a key after auth for auth_cooldown, and the ring skips it", function()
        local ring = ring3{ auth_cooldown = 0.2 }
        picks(ring, 2)
        ring:report(2, "auth")
        local s = ring:stats()
        assert.are.equal("disabled", s[2].state)
        near(0.2, s[2].ready_in, 0.05, "ready_in")
        assert.are.equal("ready", s[1].state)
        assert.are.equal(0, s[1].ready_in)
        assert.are.same({ 3, 1, 3, 1 }, picks(ring, 4))
        sibyl.sleep(0.25)
        assert.are.equal("ready", ring:stats()[2].state)
        assert.are.same({ 2 }, picks(ring, 1))
        ring:close()
    end)

    it("fails with kind auth when every key is disabled, naming keys only redacted", function()
        local ring = ring3{ auth_cooldown = 0.15 }
        for id = 1, 3 do
            ring:report(id, "auth")
        end
        local key, err = ring:acquire()
        assert.is_nil(key)
        assert.are.equal("auth", err.kind)
        near(0.15, err.retry_after, 0.05, "retry_after")
        assert(err.message:find("all 3 keys were rejected (401/403)", 1, true), err.message)
        assert(err.message:find("sk-…1111, sk-…2222, sk-…3333", 1, true), err.message)
        for _, k in ipairs({ K1, K2, K3 }) do
            assert.is_nil(err.message:find(k, 1, true))
        end
        sibyl.sleep(0.2)
        assert.is_truthy(ring:acquire())
        ring:close()
    end)

    it("rests a key out of quota for auth_cooldown, and a mixed ring stays rate_limited", function()
        local ring = ring3{ cooldown = 10, auth_cooldown = 60 }
        ring:report(1, "quota")
        ring:report(2, "auth")
        ring:report(3, "rate_limited", 5)
        local s = ring:stats()
        assert.are.same({ "resting", "disabled", "resting" }, { s[1].state, s[2].state, s[3].state })
        near(60, s[1].ready_in, 0.1, "quota ready_in")
        local _, err = ring:acquire()
        assert.are.equal("rate_limited", err.kind)
        near(5, err.retry_after, 0.1, "retry_after")
        assert(err.message:find("1 rate-limited, 1 out of quota, 1 disabled after 401/403", 1, true),
               err.message)
        ring:close()
    end)

    it("never shortens a rest: a late rate_limited does not wake a disabled key", function()
        local ring = ring3{ auth_cooldown = 60 }
        ring:report(1, "auth")
        ring:report(1, "rate_limited", 0)
        local s = ring:stats()[1]
        assert.are.equal("disabled", s.state)
        near(60, s.ready_in, 0.1)
        ring:close()
    end)
end)


describe("keys.ring: redaction and lifetime", function()

    it("shows keys only redacted in stats and tostring", function()
        local ring = ring3{ cooldown = 10 }
        local s = ring:stats()
        assert.are.same({ "sk-…1111", "sk-…2222", "sk-…3333" }, { s[1].key, s[2].key, s[3].key })
        assert.are.same({ id = 1, key = "sk-…1111", state = "ready", ready_in = 0,
                          uses = 0, limited = 0, failures = 0 }, s[1])
        assert.are.equal("sibyl.keys.ring openai (3 keys, 3 ready)", tostring(ring))
        ring:report(3, "rate_limited")
        assert.are.equal("sibyl.keys.ring openai (3 keys, 2 ready)", tostring(ring))
        assert.are.equal(3, #ring)
        ring:close()
    end)

    it("redacts every occurrence of every key in a text, longest key first", function()
        local long = K1 .. "XYZW"                     -- a key that contains another
        local ring = keys.ring{ keys = { K1, K2, long } }
        local body = '{"error":"invalid key ' .. K2 .. '"} ' .. K1 .. K1 .. " " .. long .. " sk-other"
        assert.are.equal('{"error":"invalid key sk-…2222"} sk-…1111sk-…1111 sk-…XYZW sk-other',
                         ring:redact(body))
        assert.are.equal("", ring:redact(""))
        assert.are.equal("no keys here", ring:redact("no keys here"))
        ring:close()
    end)

    it("accepts the keys as one string, as keys.parse splits it", function()
        local ring = keys.ring{ keys = K1 .. ", " .. K2 .. "\n" .. K3 }
        assert.are.equal(3, #ring)
        assert.are.same({ 1, 2, 3 }, picks(ring, 3))
        assert.are.equal("sibyl.keys.ring default (3 keys, 3 ready)", tostring(ring))
        ring:close()
    end)

    it("closes idempotently; a closed ring answers nil, err closed", function()
        local ring = ring3()
        assert.is_true(ring:close())
        assert.is_true(ring:close())
        assert.are.equal("sibyl.keys.ring openai (closed)", tostring(ring))
        assert.are.equal(0, #ring)
        for _, call in ipairs({
            function() return ring:acquire() end,
            function() return ring:report(1, "ok") end,
            function() return ring:stats() end,
            function() return ring:redact("x") end,
        }) do
            local v, err = call()
            assert.is_nil(v)
            assert.are.equal("closed", err.kind)
            assert(err.message:find("keys.ring{", 1, true), err.message)
        end
    end)

    it("frees rings left to the garbage collector", function()
        for _ = 1, 200 do
            local ring = ring3()
            ring:acquire()
        end
        collectgarbage()
        collectgarbage()
        local ring = ring3()
        ring:close()
        ring = nil   -- luacheck: ignore
        collectgarbage()                              -- __gc after close: no double free
    end)
end)


describe("keys.ring: misuse raises", function()

    it("on bad options", function()
        raises(function() keys.ring() end, "table expected")
        raises(function() keys.ring{} end, "opts.keys must be an array", "got nil")
        raises(function() keys.ring{ keys = {} } end, "opts.keys is empty")
        raises(function() keys.ring{ keys = " , " } end, "opts.keys is empty")
        raises(function() keys.ring{ keys = { K1, 42 } } end, "opts.keys[2] must be a string")
        raises(function() keys.ring{ keys = { K1, "" } } end, "opts.keys[2] is an empty string")
        raises(function() keys.ring{ keys = { "Bearer " .. K1 } } end, "whitespace")
        raises(function() keys.ring{ keys = { K1, K2, K1 } } end, "opts.keys[3] repeats opts.keys[1]")
        raises(function() keys.ring{ keys = { K1 }, strategy = "random" } end,
               'unknown opts.strategy "random"', "least_recently_limited")
        raises(function() keys.ring{ keys = { K1 }, strategy = 1 } end, "opts.strategy must be")
        raises(function() keys.ring{ keys = { K1 }, cooldown = -1 } end, "opts.cooldown", ">= 0")
        raises(function() keys.ring{ keys = { K1 }, auth_cooldown = "5m" } end, "opts.auth_cooldown")
        raises(function() keys.ring{ keys = { K1 }, name = 7 } end, "opts.name must be a string")
        raises(function() keys.ring{ keys = { K1 }, cooldwn = 1 } end,
               "unknown option 'cooldwn'", "valid options")
    end)

    it("on a bad id, outcome or retry_after, at the caller's line", function()
        local ring = ring3()
        raises(function() ring:report(4, "ok") end, "no key with id 4", "ids run from 1 to 3")
        raises(function() ring:report(1.5, "ok") end, "no key with id 1.5")
        raises(function() ring:report(nil, "ok") end, "key id")
        raises(function() ring:report(1, "slow") end, 'unknown outcome "slow"')
        raises(function() ring:report(1) end, "outcome")
        raises(function() ring:report(1, "rate_limited", "30") end, "retry_after", "Retry-After")
        raises(function() ring:report(1, "rate_limited", -1) end, "retry_after must be")
        raises(function() ring:report(1, "ok") ; ring.acquire({}) end, "sibyl.keys.ring expected")
        local ok, err = pcall(function() ring:report(9, "ok") end)
        assert.is_false(ok)
        assert(err:find("11%-keys_spec%.lua:%d+: ring:report"), err)
        ring:close()
    end)
end)


describe("keys.bucket", function()

    it("lets a minute's requests through at once, then spaces them by the rpm", function()
        local b = keys.bucket{ rpm = 60 }
        for i = 1, 60 do
            assert.are.equal(0, b:take(), "take #" .. i)
        end
        local wait, limit = b:take()
        near(1, wait, 0.02, "61st")
        assert.are.equal("rpm", limit)
        near(2, (b:take()), 0.02, "62nd")
        local s = b:stats()
        assert.are.equal(60, s.rpm)
        assert.is_nil(s.tpm)
        assert.are.equal(60, s.burst_seconds)
        near(-2, s.requests_available, 0.02)
        assert.are.equal(math.huge, s.tokens_available)
    end)

    it("paces tokens per minute, whatever the request count", function()
        local b = keys.bucket{ tpm = 6000 }        -- 100 tokens/s, burst 6000
        assert.are.equal(0, b:take(6000))
        local wait, limit = b:take(50)
        near(0.5, wait, 0.02)
        assert.are.equal("tpm", limit)
        near(0.5, (b:take(0)), 0.02, "the debt stays")
        near(-50, b:stats().tokens_available, 2)
        assert.are.equal(math.huge, b:stats().requests_available)
    end)

    it("sizes the burst by burst_seconds and takes the longer of both waits", function()
        local b = keys.bucket{ rpm = 600, tpm = 600, burst_seconds = 1 }   -- 10 req, 10 tokens
        assert.are.equal(0, b:take(10))
        local wait, limit = b:take(5)              -- requests fine, tokens 0.5 s short
        near(0.5, wait, 0.02)
        assert.are.equal("tpm", limit)
        local b2 = keys.bucket{ rpm = 60, tpm = 1e6, burst_seconds = 1 }
        assert.are.equal(0, b2:take(1))
        wait, limit = b2:take(1)
        near(1, wait, 0.02)
        assert.are.equal("rpm", limit)
        -- A budget under one request still lets an idle bucket send one.
        local b3 = keys.bucket{ rpm = 1, burst_seconds = 1 }
        assert.are.equal(0, b3:take())
        near(60, (b3:take()), 0.1)
    end)

    it("refunds unused tokens and requests, up to the burst", function()
        local b = keys.bucket{ rpm = 60, tpm = 6000, burst_seconds = 1 }   -- 1 request, 100 tokens
        assert.are.equal(0, b:take(100))
        near(1, (b:take(100)), 0.02)               -- both budgets 1 s short
        assert.is_true(b:refund(100))              -- tokens back: still one request short
        local wait, limit = b:take(0)
        near(2, wait, 0.02)
        assert.are.equal("rpm", limit)
        assert.is_true(b:refund(0, 3))             -- three back: the debt of 2, then full
        assert.are.equal(0, b:take(0))
        b:refund(1e9, 1e9)
        local s = b:stats()
        near(100, s.tokens_available, 1e-6)
        near(1, s.requests_available, 1e-6)
    end)

    it("b:wait sleeps until the budget allows, and callers queue in order", function()
        local b = keys.bucket{ rpm = 600, burst_seconds = 0.1 }   -- 1 request, then one per 0.1 s
        local t, ok, waited = helpers.timed(b.wait, b)
        assert.is_true(ok)
        assert.are.equal(0, waited)
        assert.is_true(t < 0.05, "first wait took " .. t)
        t, ok = helpers.timed(b.wait, b)
        assert.is_true(ok)
        assert.is_true(t >= 0.09 and t < 0.3, "second wait took " .. t)

        local t0, done = sibyl.now(), {}
        local tasks = {}
        for i = 1, 4 do
            tasks[i] = sibyl.spawn(function()
                assert(b:wait())
                done[i] = sibyl.now() - t0
            end)
        end
        assert(sibyl.gather(tasks))
        for i = 1, 4 do
            near(0.1 * i, done[i], 0.06, "task " .. i)
            if i > 1 then
                assert.is_true(done[i] - done[i - 1] >= 0.07, "tasks " .. i - 1 .. " and " .. i)
            end
        end
    end)

    it("b:wait fails with timeout, reserving nothing, when the wait passes a deadline", function()
        local b = keys.bucket{ rpm = 60, burst_seconds = 1 }
        assert.are.equal(0, b:take())
        local t, ok, err = helpers.timed(sibyl.deadline, 0.05, function() return b:wait(10) end)
        assert.is_nil(ok)
        assert.are.equal("timeout", err.kind)
        assert.are.equal("rpm", err.limit)
        near(1, err.retry_after, 0.02)
        assert(err.message:find("deadline is 0.05 s away; nothing was reserved", 1, true), err.message)
        assert.is_true(t < 0.03, "gave up after " .. t)
        near(0, b:stats().requests_available, 0.02, "nothing reserved")
        -- Within the deadline, it just waits.
        local b2 = keys.bucket{ rpm = 1200, burst_seconds = 0.05 }
        b2:take()
        ok = sibyl.deadline(1, function() return b2:wait() end)
        assert.is_true(ok)
    end)

    it("is a no-op without limits", function()
        local b = keys.bucket{}
        for _ = 1, 1000 do
            assert.are.equal(0, b:take(1e9))
        end
        assert.are.equal("sibyl.keys.bucket (unlimited)", tostring(keys.bucket()))
        assert.are.equal("sibyl.keys.bucket (rpm 600, tpm 100000)",
                         tostring(keys.bucket{ rpm = 600, tpm = 100000 }))
        assert.is_true(b:wait(5))
    end)

    it("closes idempotently; a closed bucket answers nil, err closed", function()
        local b = keys.bucket{ rpm = 10 }
        assert.is_true(b:close())
        assert.is_true(b:close())
        assert.are.equal("sibyl.keys.bucket (closed)", tostring(b))
        for _, call in ipairs({
            function() return b:take(1) end,
            function() return b:wait(1) end,
            function() return b:refund(1) end,
            function() return b:stats() end,
        }) do
            local v, err = call()
            assert.is_nil(v)
            assert.are.equal("closed", err.kind)
        end
    end)

    it("raises on misuse", function()
        raises(function() keys.bucket{ rpm = 0 } end, "opts.rpm", "> 0")
        raises(function() keys.bucket{ tpm = "100k" } end, "opts.tpm must be a number")
        raises(function() keys.bucket{ rpm = 1 / 0 } end, "opts.rpm must be a finite number")
        raises(function() keys.bucket{ burst_seconds = 0 } end, "opts.burst_seconds")
        raises(function() keys.bucket{ rmp = 60 } end, "unknown option 'rmp'", "rpm, tpm, burst_seconds")
        raises(function() keys.bucket(60) end, "table expected")
        local b = keys.bucket{ rpm = 60 }
        raises(function() b:take(-1) end, "bucket:take: tokens")
        raises(function() b:take("10") end, "bucket:take: tokens")
        raises(function() b:refund(0 / 0) end, "bucket:refund: tokens")
        raises(function() b:refund(1, -1) end, "bucket:refund: requests")
        raises(function() b:wait(-1) end, "bucket:wait: tokens")
        raises(function() b:wait({}) end, "bucket:wait: tokens", "got table")
        raises(function() b.take({}) end, "sibyl.keys.bucket expected")
    end)
end)
