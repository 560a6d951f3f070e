-- 14-redis_spec.lua -- sibyl.redis (runtime/src/redis*.c + stdlib/sibyl/redis.lua)
-- against redis-server processes this spec starts on free loopback ports and
-- kills in teardown. Runs under `sibyl test`: each `it` is inside a task.
--
-- Needs redis-server (Debian package redis-server, installed by `make deps`).

local sibyl = require "sibyl"
local redis = require "sibyl.redis"
local server = require "sibyl.server"
local helpers = require "helpers"

local q = helpers.shell_quote


local rs = require "redis_server"
local sh, free_port, read_file, alive = rs.sh, rs.free_port, rs.read_file, rs.alive
local new_server, stop_server = rs.new_server, rs.stop_server


-- Assert that fn raises an error whose message contains every fragment.
local function raises(fn, ...)
    local ok, err = pcall(fn)
    assert(not ok, "expected an error")
    for _, frag in ipairs({ ... }) do
        assert(tostring(err):find(frag, 1, true), "error '" .. tostring(err) .. "' lacks '" .. frag .. "'")
    end
end


local function fails(kind, v, err)
    assert(v == nil, "expected nil, err; got " .. tostring(v))
    assert(err, "expected an error object")
    assert.are.equal(kind, err.kind, tostring(err))
    return err
end


describe("sibyl.redis", function()
    local srv, r

    setup(function()
        if not sh("command -v redis-server >/dev/null 2>&1") then
            error("redis-server is not installed: run `make deps` (it installs the Debian "
                  .. "package redis-server), then rerun the tests", 0)
        end
        srv = new_server()
        r = assert(redis.connect{ port = srv.port })
    end)

    teardown(function()
        if r then r:close() end
        stop_server(srv)
    end)

    before_each(function()
        assert.are.equal("OK", r:flushall())
    end)


    describe("replies", function()

        it("maps status, integer, bulk, nil and array replies", function()
            assert.are.equal("OK", r:set("k", "v"))                     -- status
            assert.are.equal("PONG", r:ping())
            assert.are.equal(1, r:incr("n"))                            -- integer
            assert.are.equal(-5, r:decrby("n", 6))
            assert.are.equal("v", r:get("k"))                           -- bulk
            local bin = "a\0b\r\n\255"
            r:set("bin", bin)
            assert.are.equal(bin, r:get("bin"))
            local big = string.rep("x", 1024 * 1024)
            r:set("big", big)
            assert.are.equal(big, r:get("big"))
            assert.are.equal(3, r:rpush("l", "a", "b", "c"))
            assert.are.same({ "a", "b", "c" }, r:lrange("l", 0, -1))   -- array
            assert.are.same({}, r:lrange("nothing", 0, -1))             -- empty array
            -- nested arrays, integers inside arrays
            assert.are.same({ 1, { 2, "x" }, "y" },
                r:eval("return {1, {2, 'x'}, 'y'}", 0))
            -- a float reply is a bulk string (RESP2)
            assert.are.equal("3.5", r:incrbyfloat("f", 3.5))
            -- many arguments (beyond the C side's small-array fast path)
            local many = {}
            for i = 1, 100 do many[i] = i end
            assert.are.equal(100, r:rpush("many", unpack(many)))
            assert.are.equal("100", r:lindex("many", -1))
        end)

        it("returns a single nil, not an error, for a missing key", function()
            local n = select("#", r:get("missing"))
            local v, err = r:get("missing")
            assert.is_nil(v)
            assert.is_nil(err)
            assert.are.equal(1, n)
            assert.is_nil(r:hget("missing", "f"))
        end)

        it("keeps nil elements of arrays as redis.null so arrays keep their length", function()
            r:set("a", "1")
            r:set("c", "3")
            local got = r:mget("a", "b", "c")
            assert.are.equal(3, #got)
            assert.are.equal("1", got[1])
            assert.are.equal(redis.null, got[2])
            assert.are.equal("3", got[3])
            assert.are.equal(require("sibyl.json").null, redis.null)
        end)

        it("turns error replies into nil, err with kind \"redis\" and the server's code", function()
            r:set("s", "text")
            local err = fails("redis", r:lpush("s", "x"))
            assert.are.equal("WRONGTYPE", err.code)
            assert.matches("^WRONGTYPE Operation against a key", err.message)
            assert.are.equal("LPUSH", err.command)
            err = fails("redis", r:incr("s"))
            assert.are.equal("ERR", err.code)
            err = fails("redis", r:call("NOSUCHCOMMAND", "x"))
            assert.are.equal("ERR", err.code)
            assert.matches("unknown command", err.message)
            -- an error inside an array is an error object in place
            local res = r:eval("return {1, redis.error_reply('BOOM it broke'), 3}", 0)
            assert.are.equal(1, res[1])
            assert.is_true(sibyl.is_error(res[2]))
            assert.are.equal("BOOM", res[2].code)
            assert.are.equal(3, res[3])
        end)

        it("formats numbers losslessly and rejects what Redis cannot take", function()
            local cases = { { 42, "42" }, { -7, "-7" }, { 1.5, "1.5" }, { 0.1, "0.1" },
                            { 2 ^ 53, "9007199254740992" }, { 1e20, "1e+20" },
                            { 1 / 3, "0.3333333333333333" }, { 1e300, "1e+300" } }
            for _, c in ipairs(cases) do
                r:set("num", c[1])
                assert.are.equal(c[2], r:get("num"))
                assert.are.equal(c[1], tonumber(r:get("num")))
            end
            raises(function() r:set("k", true) end, "argument #3 to SET is a boolean", "1/0")
            raises(function() r:set("k", nil) end, "argument #3 to SET is nil")
            raises(function() r:set("k", {}) end, "argument #3 to SET is table")
            raises(function() r:set("k", 0 / 0) end, "NaN")
            raises(function() r:call() end, "command name")
        end)

        it("offers every command as a method, upper-cased", function()
            assert.are.equal(2, r:hset("h", "a", 1, "b", "two"))
            assert.are.equal("1", r:hget("h", "a"))
            local flat = r:hgetall("h")
            table.sort(flat)
            assert.are.same({ "1", "a", "b", "two" }, flat)
            assert.are.equal(1, r:Sadd("s", "m"))
            assert.are.equal(1, r:call("sismember", "s", "m"))
            assert.are.equal("hash", r:type("h"))
        end)

        it("refuses commands that would break a shared connection", function()
            raises(function() r:call("SUBSCRIBE", "c") end, "r:subscribe")
            raises(function() r:select(3) end, "opts.db")
            raises(function() r:multi() end, "r:pipeline")
            raises(function() r:auth("x") end, "password")
            raises(function() r:watch("k") end, "EVAL")
            raises(function() r:client("reply", "off") end, "CLIENT REPLY")
        end)

        it("refuses protocol = 3 when hiredis has no RESP3", function()
            if tonumber(redis.hiredis_version:match("^(%d+)")) >= 1 then
                local r3 = assert(redis.connect{ port = srv.port, protocol = 3 })
                r3:hset("h3", "f", "v")
                assert.are.same({ f = "v" }, r3:hgetall("h3"))
                r3:close()
            else
                raises(function() redis.connect{ port = srv.port, protocol = 3 } end,
                       "needs hiredis >= 1.0")
            end
        end)
    end)


    describe("concurrency", function()

        it("pipelines 1,000 concurrent tasks on one connection", function()
            local n = 1000
            -- the same work one command at a time, for comparison
            local t_seq = helpers.timed(function()
                for i = 1, n do
                    r:set("seq:" .. i, i)
                    r:incr("seq")
                    r:get("seq:" .. i)
                end
            end)
            local before = r:stats()
            local t_conc = helpers.timed(function()
                local tasks = {}
                for i = 1, n do
                    tasks[i] = sibyl.spawn(function()
                        assert.are.equal("OK", r:set("k:" .. i, i))
                        local c = r:incr("counter")
                        return tonumber(r:get("k:" .. i)), c
                    end)
                end
                local seen = {}
                for i = 1, n do
                    local v, c = tasks[i]:wait()
                    assert.are.equal(i, v)
                    assert.is_nil(seen[c])
                    seen[c] = true
                end
            end)
            assert.are.equal(tostring(n), r:get("counter"))
            local st = r:stats()
            assert.are.equal(3 * n + 1, st.sent - before.sent)      -- + the GET above
            assert.are.equal(3 * n + 1, st.replies - before.replies)
            assert.are.equal(0, st.pending)
            -- every task's command was in flight at once: nobody waited for anyone
            assert.is_true(st.peak_pending >= n, "peak_pending " .. st.peak_pending)
            assert.is_true(t_conc < t_seq, string.format("%d tasks x 3 commands took %.3f s; "
                           .. "the same one after the other %.3f s", n, t_conc, t_seq))
        end)

        it("sends r:pipeline commands together and returns the replies in order", function()
            r:set("s", "x")
            local res = assert(r:pipeline(function(p)
                p:set("p", 1)
                p:incr("p")
                p:call("GET", "p")
                p:get("nope")
                p:incr("s")                     -- an error in the middle
                p:rpush("pl", "a", "b")
            end))
            assert.are.equal(6, #res)
            assert.are.equal("OK", res[1])
            assert.are.equal(2, res[2])
            assert.are.equal("2", res[3])
            assert.are.equal(redis.null, res[4])
            assert.is_true(sibyl.is_error(res[5]))
            assert.are.equal("redis", res[5].kind)
            assert.are.equal(2, res[6])
            -- MULTI/EXEC in one pipeline is a transaction
            res = assert(r:pipeline(function(p)
                p:multi(); p:incr("t"); p:incr("t"); p:exec()
            end))
            assert.are.same({ "OK", "QUEUED", "QUEUED", { 1, 2 } }, res)
            assert.are.same({}, r:pipeline(function() end))
            raises(function() r:pipeline(function(p) p:set("k", true) end) end, "boolean")
            raises(function() r:pipeline(function(p) p:subscribe("c") end) end, "r:subscribe")
        end)

        it("spreads commands over a pool", function()
            local rp = assert(redis.connect{ port = srv.port, pool = 4 })
            finally(function() rp:close() end)
            assert.matches("%(pool 4%)", tostring(rp))
            local tasks = {}
            for i = 1, 200 do
                tasks[i] = sibyl.spawn(function() return rp:incr("pooled") end)
            end
            for i = 1, 200 do assert.is_number(tasks[i]:wait()) end
            local clients = r:client("list")
            local _, count = clients:gsub("cmd=incr", "")
            assert.are.equal(4, count)           -- four connections ran INCRs
            assert.are.equal("200", rp:get("pooled"))
            assert.are.equal(4, rp:stats().connected)
        end)

        it("fails beyond max_pending with kind \"redis\"", function()
            local rl = assert(redis.connect{ port = srv.port, max_pending = 5 })
            finally(function() rl:close() end)
            local tasks = {}
            for i = 1, 10 do tasks[i] = sibyl.spawn(function() return rl:get("x") end) end
            local ok, refused = 0, 0
            for i = 1, 10 do
                local v, err = tasks[i]:wait()
                if err then
                    assert.are.equal("redis", err.kind)
                    assert.matches("too many pending commands", err.message)
                    refused = refused + 1
                else
                    ok = ok + 1
                end
            end
            assert.are.equal(5, ok)
            assert.are.equal(5, refused)
        end)
    end)


    describe("cancellation and timeouts", function()

        it("survives the reply of a cancelled BLPOP arriving later", function()
            local r2 = assert(redis.connect{ port = srv.port })
            finally(function() r2:close() end)
            local t = sibyl.spawn(function() return r2:blpop("q", 0) end)
            sibyl.sleep(0.05)
            assert.are.equal("waiting", t:status())
            t:cancel()
            assert.are.equal("cancelled", t:status())
            assert.are.equal(1, r:rpush("q", "item"))       -- the dead BLPOP takes it
            assert.is_true(helpers.eventually(function() return r:llen("q") == 0 end))
            assert.are.equal("PONG", r2:ping())             -- the tombstone took the reply
            local st = r2:stats()
            assert.are.equal(st.sent, st.replies)
            assert.are.equal(0, st.pending)
            -- the same through a deadline
            local v, err = sibyl.deadline(0.05, function() return r2:blpop("q2", 0) end)
            fails("timeout", v, err)
            r:rpush("q2", "x")
            assert.is_true(helpers.eventually(function() return r2:stats().pending == 0 end))
            assert.are.equal("PONG", r2:ping())
        end)

        it("times a command out after opts.timeout and drops its late reply", function()
            local rt = assert(redis.connect{ port = srv.port, timeout = 0.2 })
            finally(function() rt:close() end)
            local t0 = sibyl.now()
            local err = fails("timeout", rt:call("DEBUG", "SLEEP", "0.6"))
            assert.matches("DEBUG got no reply within 0.2 s", err.message)
            assert.is_true(sibyl.now() - t0 < 0.5)
            -- the server is still asleep: queued commands time out too, then all is well
            assert.is_true(helpers.eventually(function() return rt:ping() == "PONG" end, 3))
            assert.are.equal(0, rt:stats().pending)
            -- blocking commands wait past the command timeout
            sibyl.spawn(function() sibyl.sleep(0.4); r:rpush("late", "v") end)
            assert.are.same({ "late", "v" }, rt:blpop("late", 0))
        end)

        it("times a connect out when the server does not answer", function()
            local pause = assert(redis.connect{ port = srv.port })
            finally(function() pause:close() end)
            local t = sibyl.spawn(function() return pause:call("DEBUG", "SLEEP", "0.8") end)
            sibyl.sleep(0.05)
            fails("timeout", redis.connect{ port = srv.port, timeout = 0.2 })
            -- a deadline cancels a connect in progress the same way
            local v, err = sibyl.deadline(0.1, redis.connect, { port = srv.port, timeout = 5 })
            fails("timeout", v, err)
            t:wait()
        end)
    end)


    describe("connections", function()

        it("reports a refused connection with kind \"connect\" and says where", function()
            local port = free_port()
            local err = fails("connect", redis.connect{ port = port })
            assert.matches("cannot connect to 127.0.0.1:" .. port, err.message, 1, true)
            assert.matches("redis-server running", err.message, 1, true)
            err = fails("connect", redis.connect("redis://127.0.0.1:" .. port))
        end)

        it("selects opts.db on every connection", function()
            local r3 = assert(redis.connect{ port = srv.port, db = 3, pool = 2 })
            local other
            finally(function() r3:close(); if other then other:close() end end)
            assert.are.equal("sibyl.redis.client 127.0.0.1:" .. srv.port .. "/3 (pool 2)", tostring(r3))
            r3:set("in3", "yes")
            assert.is_nil(r:get("in3"))                      -- not in db 0
            other = assert(redis.connect("redis://127.0.0.1:" .. srv.port .. "/3"))
            assert.are.equal("yes", other:get("in3"))
            local keyspace = r:info("keyspace")
            assert.matches("db3:keys=1", keyspace)
            fails("redis", redis.connect{ port = srv.port, db = 99 })   -- beyond `databases`
        end)

        it("closes idempotently; a closed client answers nil, err \"closed\"", function()
            local rc = assert(redis.connect{ port = srv.port })
            rc:close()
            rc:close()
            assert.are.equal("sibyl.redis.client (closed)", tostring(rc))
            fails("closed", rc:get("k"))
            fails("closed", rc:pipeline(function(p) p:get("k") end))
            fails("closed", rc:subscribe("c"))
            assert.is_true(rc:stats().closed)
            -- closing with commands in flight fails them with "closed"
            local rb = assert(redis.connect{ port = srv.port })
            local t = sibyl.spawn(function() return rb:blpop("never", 0) end)
            sibyl.sleep(0.02)
            rb:close()
            fails("closed", t:wait())
        end)

        it("tears down clients, subscriptions and parked tasks when the runtime closes", function()
            -- A spec run of its own: `sibyl test` closes the runtime right after
            -- its specs, with these tasks still parked (under ASan: no leaks).
            local spec = helpers.tmpfile(([[
                local redis, sibyl = require "sibyl.redis", require "sibyl"
                describe("left behind", function() it("parks", function()
                    local r = assert(redis.connect{ port = PORT })
                    local idle = assert(redis.connect{ port = PORT, pool = 2 })
                    local sub = assert(r:subscribe("c"))
                    assert(sub:psubscribe("p.*"))
                    sibyl.spawn(function() return r:blpop("never", 0) end)
                    sibyl.spawn(function() return sub:next() end)
                    sibyl.spawn(function() return redis.connect{ port = PORT } end)
                    sibyl.spawn(function()
                        return idle:pipeline(function(p) p:blpop("never2", 0) end)
                    end)
                    local dead = sibyl.spawn(function() return idle:blpop("never3", 0) end)
                    sibyl.sleep(0.05)
                    dead:cancel()                       -- leaves a tombstone in hiredis
                    local pub = assert(redis.connect{ port = PORT })    -- r is blocked
                    assert(pub:publish("c", "unread") == 1)             -- nobody reads it
                    sibyl.sleep(0.05)
                end) end)
            ]]):gsub("PORT", tostring(srv.port)), "_spec.lua")
            local res = helpers.run_cli({ "test", "-o", "plainTerminal", spec })
            os.remove(spec)
            assert.are.equal(0, res.code, res.out .. res.err)
            assert.matches("1 success", res.out)
            assert.not_matches("Sanitizer", res.err)
        end)

        it("reconnects after a server restart, with AUTH and SELECT again", function()
            local s = new_server("--requirepass hunter2")
            local check
            finally(function()                  -- busted keeps one finally per `it`
                if check then check:close() end
                stop_server(s)
            end)
            local rr = assert(redis.connect{ port = s.port, password = "hunter2", db = 2, pool = 2,
                                              reconnect_max = 0.5 })
            local sub = assert(rr:subscribe("news"))
            local once = assert(redis.connect{ port = s.port, password = "hunter2", reconnect = false })
            local once_sub = assert(once:subscribe("news"))
            rr:set("before", "1")
            s:kill()
            -- commands in flight or sent to the dead server fail with kind "connect"
            local v, err = rr:get("before")
            fails("connect", v, err)
            assert.matches("127.0.0.1:" .. s.port, err.message, 1, true)
            v, err = rr:get("before")                        -- nobody listens: refused, backoff
            fails("connect", v, err)
            s:start()
            local errors = 0
            local ok = helpers.eventually(function()
                local res, e = rr:set("after", "2")
                if e then
                    assert.are.equal("connect", e.kind, tostring(e))
                    errors = errors + 1
                end
                return res == "OK"
            end, 10)
            assert.is_true(ok)
            assert.is_true(rr:stats().reconnects >= 1)
            -- and it is db 2 again, authenticated
            check = assert(redis.connect{ port = s.port, password = "hunter2", db = 2 })
            assert.are.equal("2", check:get("after"))
            -- reconnect = false: the client and its subscription stay down
            local e1 = fails("connect", once:ping())
            assert.matches("reconnect = false", e1.message)
            fails("closed", once_sub:next(1))
            once_sub:close()
            once:close()
            -- the subscription came back by itself
            local notice = select(2, sub:next(5))
            assert.are.equal("connect", notice.kind)
            assert.is_true(helpers.eventually(function()
                return check:publish("news", "back") == 1
            end, 10))
            local msg = assert(sub:next(2))
            assert.are.equal("back", msg.data)
            sub:close()
            rr:close()
        end)
    end)


    describe("authentication", function()
        local s

        setup(function() s = new_server("--requirepass 's3cret pw'") end)
        teardown(function() stop_server(s) end)

        it("authenticates with opts.password and refuses wrong or missing ones as \"auth\"", function()
            local ra = assert(redis.connect{ port = s.port, password = "s3cret pw" })
            assert.are.equal("OK", ra:set("k", "v"))
            assert.not_matches("s3cret", tostring(ra))
            ra:close()
            local err = fails("auth", redis.connect{ port = s.port })
            assert.matches("NOAUTH", err.message)
            err = fails("auth", redis.connect{ port = s.port, password = "nope" })
            assert.matches("WRONGPASS", err.message)
            assert.not_matches("nope", err.message)
            -- the URL form, with a percent-encoded password
            local ru = assert(redis.connect("redis://:s3cret%20pw@127.0.0.1:" .. s.port .. "/1"))
            assert.are.equal("OK", ru:set("one", "1"))
            assert.matches("/1$", tostring(ru))
            ru:close()
        end)

        it("authenticates an ACL user with opts.username", function()
            local admin = assert(redis.connect{ port = s.port, password = "s3cret pw" })
            finally(function() admin:close() end)
            assert.are.equal("OK", admin:acl("setuser", "alice", "on", ">pw1", "~*", "+@all"))
            local ra = assert(redis.connect{ port = s.port, username = "alice", password = "pw1" })
            assert.are.equal("alice", ra:acl("whoami"))
            ra:close()
            fails("auth", redis.connect{ port = s.port, username = "alice", password = "bad" })
        end)
    end)


    describe("pub/sub", function()

        it("delivers messages of two channels and a pattern", function()
            local sub = assert(r:subscribe("ch1", "ch2"))
            finally(function() sub:close() end)
            assert.are.equal(true, sub:psubscribe("news.*"))
            assert.matches("2 channels, 1 pattern", tostring(sub))
            assert.are.equal(1, r:publish("ch1", "one"))
            assert.are.equal(1, r:publish("ch2", "two"))
            assert.are.equal(1, r:publish("news.tech", "three"))
            assert.are.equal(0, r:publish("other", "nobody"))
            local m = assert(sub:next(1))
            assert.are.same({ kind = "message", channel = "ch1", data = "one" }, m)
            m = assert(sub:next(1))
            assert.are.same({ kind = "message", channel = "ch2", data = "two" }, m)
            m = assert(sub:next(1))
            assert.are.same({ kind = "message", channel = "news.tech", data = "three",
                              pattern = "news.*" }, m)
            fails("timeout", sub:next(0.05))
            local chans, pats = sub:channels()
            table.sort(chans)
            assert.are.same({ "ch1", "ch2" }, chans)
            assert.are.same({ "news.*" }, pats)
        end)

        it("wakes a waiting task, iterates with messages() and unsubscribes", function()
            local sub = assert(r:subscribe("a"))
            finally(function() sub:close() end)
            local got = {}
            local reader = sibyl.spawn(function()
                for msg in sub:messages(0.3) do got[#got + 1] = msg.data end
                return #got
            end)
            sibyl.sleep(0.02)
            raises(function() sub:next() end, "another task is already waiting")
            for i = 1, 5 do r:publish("a", "m" .. i) end
            assert.are.equal(5, reader:wait())
            assert.are.same({ "m1", "m2", "m3", "m4", "m5" }, got)
            assert.is_true(sub:unsubscribe("a"))
            assert.are.equal(0, r:publish("a", "gone"))
            assert.is_true(sub:subscribe("b", "b", "c"))     -- duplicates are harmless
            assert.is_true(sub:unsubscribe())                -- all channels
            assert.matches("0 channels", tostring(sub))
            assert.are.equal(0, r:publish("b", "gone"))
        end)

        it("closes idempotently and wakes a reader with \"closed\"", function()
            local sub = assert(r:subscribe("z"))
            local reader = sibyl.spawn(function() return sub:next() end)
            sibyl.sleep(0.02)
            sub:close()
            sub:close()
            fails("closed", reader:wait())
            fails("closed", sub:next())
            fails("closed", sub:subscribe("y"))
            assert.are.equal("sibyl.redis.subscription (closed)", tostring(sub))
            local n = 0
            for _ in sub:messages() do n = n + 1 end
            assert.are.equal(0, n)
        end)

        it("reports an overflow once when the reader falls behind", function()
            local rq = assert(redis.connect{ port = srv.port, max_queue = 3 })
            finally(function() rq:close() end)
            local sub = assert(rq:subscribe("flood"))
            for i = 1, 5 do r:publish("flood", tostring(i)) end
            sibyl.sleep(0.1)                    -- let all five reach the subscription
            local err = fails("overflow", sub:next(1))
            assert.are.equal(2, err.dropped)
            for i = 1, 3 do assert.are.equal(tostring(i), sub:next(1).data) end
            fails("timeout", sub:next(0.05))
            sub:close()
        end)
    end)


    describe("options", function()

        it("parses redis:// URLs", function()
            assert.are.same({ host = "h", port = 7000, db = 2 }, redis.parse_url("redis://h:7000/2"))
            assert.are.same({ host = "10.0.0.1", password = "p@ss:w" },
                            redis.parse_url("redis://:p%40ss%3Aw@10.0.0.1"))
            assert.are.same({ username = "u", password = "p", host = "h" }, redis.parse_url("redis://u:p@h"))
            assert.are.same({ host = "::1", port = 6380 }, redis.parse_url("redis://[::1]:6380"))
            raises(function() redis.parse_url("rediss://h") end, "TLS")
            raises(function() redis.parse_url("http://h") end, "redis://")
            raises(function() redis.parse_url("redis://h/x") end, "database number")
        end)

        it("raises on unknown or mistyped options", function()
            raises(function() redis.connect{ prot = 1 } end, "unknown option 'prot'")
            raises(function() redis.connect{ port = "6379" } end, "opts.port must be a number")
            raises(function() redis.connect{ pool = 0 } end, "opts.pool")
            raises(function() redis.connect{ protocol = 4 } end, "protocol must be 2 or 3")
            raises(function() redis.connect(42) end, "options table or a redis:// URL")
        end)
    end)
end)
