-- Scheduler: spawn, wait, gather, sleep, cancel, deadlines, errors, scale.
-- Runs under `sibyl test`: each `it` is inside a task and may do I/O.

local sibyl = require "sibyl"
local helpers = require "helpers"

describe("sibyl tasks", function()

    it("start in spawn order and wait returns every result", function()
        local order = {}
        local a = sibyl.spawn(function(x) order[#order + 1] = "a"; return x, x + 1 end, 1)
        local b = sibyl.spawn(function() order[#order + 1] = "b"; return "b" end)
        assert.are.same({}, order)           -- spawn does not run the task yet
        assert.are.same({ 1, 2 }, { a:wait() })
        assert.are.equal("b", b:wait())
        assert.are.same({ "a", "b" }, order)
        assert.are.equal("done", a:status())
        assert.is_true(a:done())
    end)

    it("interleave at each I/O and finish in time order", function()
        local order = {}
        local function after(s, name)
            return sibyl.spawn(function() sibyl.sleep(s); order[#order + 1] = name end)
        end
        local t3, t1, t2 = after(0.03, "c"), after(0.01, "a"), after(0.02, "b")
        sibyl.gather{ t3, t1, t2 }
        assert.are.same({ "a", "b", "c" }, order)
    end)

    it("yield lets other tasks run", function()
        local log = {}
        local function worker(name)
            for i = 1, 3 do
                log[#log + 1] = name .. i
                sibyl.yield()
            end
        end
        sibyl.gather{ sibyl.spawn(worker, "x"), sibyl.spawn(worker, "y") }
        assert.are.same({ "x1", "y1", "x2", "y2", "x3", "y3" }, log)
    end)

    it("gather returns values in input order, whatever finishes first", function()
        local vals = sibyl.gather{
            function() sibyl.sleep(0.02); return "slow" end,
            function() return "fast" end,
            sibyl.spawn(function() sibyl.sleep(0.01); return "mid" end),
        }
        assert.are.same({ "slow", "fast", "mid" }, vals)
    end)

    it("gather fails fast with the first error and its index", function()
        local slow = sibyl.spawn(function() sibyl.sleep(0.5); return 1 end)
        local t0 = sibyl.now()
        local vals, err, index = sibyl.gather{
            slow,
            function() sibyl.sleep(0.01); return nil, sibyl.error("http", "upstream 503") end,
        }
        assert.is_nil(vals)
        assert.are.equal("http", err.kind)
        assert.are.equal(2, index)
        assert.is_true(sibyl.now() - t0 < 0.3)
        assert.are.equal("waiting", slow:status())  -- siblings keep running
        slow:cancel()
    end)

    it("gather{all=true} collects every result and every error", function()
        local vals, errs = sibyl.gather({
            function() return "ok" end,
            function() error("broken") end,
            function() sibyl.sleep(0.01); return nil, sibyl.error("timeout", "slow") end,
            function() return 4 end,
        }, { all = true })
        assert.are.equal("ok", vals[1])
        assert.is_nil(vals[2])
        assert.are.equal(4, vals[4])
        assert.are.equal("error", errs[2].kind)
        assert.matches("broken", errs[2].message)
        assert.are.equal("timeout", errs[3].kind)
        assert.is_nil(errs[1])
    end)

    it("gather of nothing is an empty list", function()
        assert.are.same({}, sibyl.gather{})
    end)

    it("gather rejects entries that are not tasks or functions", function()
        assert.has_error(function() sibyl.gather{ 42 } end,
            "bad argument #1 to 'gather' (entry 1 is a number, expected a task or a function)")
    end)

    it("I/O works inside user coroutines (iterators) within a task", function()
        local gen = coroutine.wrap(function()
            for i = 1, 3 do
                sibyl.sleep(0.001)
                coroutine.yield(i * 10)
            end
        end)
        assert.are.same({ 10, 20, 30 }, { gen(), gen(), gen() })
        local co = coroutine.create(function(a)
            local b = coroutine.yield(a + 1)
            sibyl.sleep(0.001)
            return b * 2
        end)
        assert.are.same({ true, 2 }, { coroutine.resume(co, 1) })
        assert.are.same({ true, 10 }, { coroutine.resume(co, 5) })
        assert.are.equal("dead", coroutine.status(co))
    end)

    it("I/O where a task cannot yield fails with a clear error", function()
        local ok, err = pcall(table.sort, { 3, 1, 2 }, function(a, b)
            sibyl.sleep(0)
            return a < b
        end)
        assert.is_false(ok)
        assert.matches("cannot wait for I/O here", err)
        -- the task is still usable afterwards
        assert.is_true(sibyl.sleep(0.001))
    end)

    it("now() is monotonic and in seconds", function()
        local a = sibyl.now()
        sibyl.sleep(0.02)
        local d = sibyl.now() - a
        assert.is_true(d >= 0.019 and d < 0.5, "slept " .. d)
    end)

    it("sleep measures from now even after a stretch of CPU work", function()
        -- Busy waits on the wall clock (not os.clock: CPU time runs slower
        -- than wall time on a loaded machine, which shrank the window).
        local t0 = sibyl.now()
        while sibyl.now() - t0 < 0.05 do end      -- the loop's cached time goes stale
        local start = sibyl.now()
        sibyl.sleep(0.05)
        assert.is_true(sibyl.now() - start >= 0.049, "woke early")
        local _, err = sibyl.deadline(0.05, function()
            local c0 = sibyl.now()
            while sibyl.now() - c0 < 0.03 do end
            local s = sibyl.now()
            sibyl.sleep(1)
            return nil, sibyl.error("x", "x", { waited = sibyl.now() - s })
        end)
        assert.is_true(err.waited >= 0.015, "deadline fired early: " .. err.waited)
    end)

    it("current() is the running task", function()
        local t
        t = sibyl.spawn(function() return sibyl.current() end)
        assert.are.equal(t, t:wait())
    end)

    it("a task cannot wait for itself", function()
        local t = sibyl.spawn(function() return pcall(function() return sibyl.current():wait() end) end)
        local ok, err = t:wait()
        assert.is_false(ok)
        assert.matches("cannot wait for itself", err)
    end)
end)

describe("cancel", function()

    it("stops a sleeping task, tears down its timer and tells its waiters", function()
        local reached = false
        local t = sibyl.spawn(function() sibyl.sleep(10); reached = true end)
        sibyl.sleep(0.01)
        local io_before = sibyl.stats().io
        local waiter = sibyl.spawn(function() return t:wait() end)
        sibyl.yield()
        assert.is_true(t:cancel())
        assert.are.equal(io_before - 1, sibyl.stats().io)   -- the timer is gone
        local res, err = waiter:wait()
        assert.is_nil(res)
        assert.are.equal("cancelled", err.kind)
        assert.are.equal("cancelled", t:status())
        assert.is_false(t:cancel())                          -- idempotent
        sibyl.sleep(0.02)
        assert.is_false(reached)
    end)

    it("cancels a task before it starts", function()
        local ran = false
        local t = sibyl.spawn(function() ran = true end)
        assert.is_true(t:cancel())
        sibyl.sleep(0.005)
        assert.is_false(ran)
        local _, err = t:wait()
        assert.are.equal("cancelled", err.kind)
    end)

    it("self-cancel from a C boundary raises and leaves the task running", function()
        local after = false
        local t = sibyl.spawn(function()
            local ok, err = pcall(table.sort, { 2, 1 }, function(a, b)
                sibyl.current():cancel()
                return a < b
            end)
            sibyl.sleep(0)
            after = true
            return ok, err
        end)
        local ok, err = t:wait()
        assert.is_false(ok)
        assert.matches("cannot cancel itself from inside a C boundary", err)
        assert.is_true(after)
    end)

    it("a task can cancel itself", function()
        local after = false
        local t = sibyl.spawn(function()
            sibyl.current():cancel()
            after = true
        end)
        local _, err = t:wait()
        assert.are.equal("cancelled", err.kind)
        assert.is_false(after)
    end)

    it("cancelling a task that waits on another leaves the other running", function()
        local inner = sibyl.spawn(function() sibyl.sleep(0.03); return "inner" end)
        local outer = sibyl.spawn(function() return inner:wait() end)
        sibyl.sleep(0.005)
        outer:cancel()
        assert.are.equal("inner", inner:wait())
    end)
end)

describe("deadline", function()

    it("interrupts a sleep with kind timeout", function()
        local t0 = sibyl.now()
        local ok, err = sibyl.deadline(0.05, function() return sibyl.sleep(5) end)
        local took = sibyl.now() - t0
        assert.is_nil(ok)
        assert.are.equal("timeout", err.kind)
        assert.is_true(took >= 0.045 and took < 1, "took " .. took)
    end)

    it("lets the function go on after the timeout and returns its results", function()
        local a, b = sibyl.deadline(0.02, function()
            local ok, err = sibyl.sleep(1)
            return ok, err and err.kind
        end)
        assert.is_nil(a)
        assert.are.equal("timeout", b)
        assert.is_true(sibyl.sleep(0.001))   -- outside the scope: no deadline
        assert.is_nil(sibyl.time_left())
    end)

    it("does not fire when the work finishes in time", function()
        assert.are.equal(42, sibyl.deadline(1, function() sibyl.sleep(0.01); return 42 end))
    end)

    it("keeps the earliest of nested deadlines", function()
        local t0 = sibyl.now()
        local _, err = sibyl.deadline(0.03, function()
            return sibyl.deadline(10, function()
                assert.is_true(sibyl.time_left() <= 0.03)
                return sibyl.sleep(1)
            end)
        end)
        assert.are.equal("timeout", err.kind)
        assert.is_true(sibyl.now() - t0 < 0.5)
    end)

    it("applies to waiting on another task", function()
        local slow = sibyl.spawn(function() sibyl.sleep(0.5); return "late" end)
        local _, err = sibyl.deadline(0.02, function() return slow:wait() end)
        assert.are.equal("timeout", err.kind)
        assert.are.equal("late", slow:wait())
    end)

    it("is inherited by tasks spawned inside it", function()
        local _, err = sibyl.deadline(0.02, function()
            return sibyl.spawn(function() return sibyl.sleep(1) end):wait()
        end)
        assert.are.equal("timeout", err.kind)
    end)

    it("fails I/O at once once expired", function()
        sibyl.deadline(0.01, function()
            sibyl.sleep(0.05)                 -- times out
            local t0 = sibyl.now()
            local ok, err = sibyl.sleep(0.5)
            assert.is_nil(ok)
            assert.are.equal("timeout", err.kind)
            assert.is_true(sibyl.now() - t0 < 0.05)
        end)
    end)

    it("passes errors through and restores the outer deadline", function()
        local ok, err = pcall(sibyl.deadline, 1, function() error("inside") end)
        assert.is_false(ok)
        assert.matches("inside", err)
        assert.is_nil(sibyl.time_left())
    end)

    it("raises for misuse", function()
        assert.has_error(function() sibyl.deadline("soon", function() end) end)
        assert.has_error(function() sibyl.deadline(1) end)
    end)
end)

describe("errors", function()

    it("an error in a task surfaces to its waiter with a traceback", function()
        local function deep_failure() error("kaboom") end
        local t = sibyl.spawn(function() deep_failure() end)
        local res, err = t:wait()
        assert.is_nil(res)
        assert.are.equal("error", err.kind)
        assert.matches("kaboom", err.message)
        assert.matches("01%-sched_spec.lua:%d+", err.message)
        assert.matches("stack traceback", err.traceback)
        assert.matches("deep_failure", err.traceback)
        assert.matches("^error: .*kaboom", tostring(err))
    end)

    it("error objects raised in a task keep their kind", function()
        local t = sibyl.spawn(function() error(sibyl.error("rate_limited", "slow down", { retry_after = 2 })) end)
        local _, err = t:wait()
        assert.are.equal("rate_limited", err.kind)
        assert.are.equal(2, err.retry_after)
        assert.is_true(sibyl.is_error(err))
        assert.matches("stack traceback", err.traceback)
    end)

    it("sibyl.error builds error objects", function()
        local e = sibyl.error("http", "status 503", { status = 503 })
        assert.are.equal("http: status 503", tostring(e))
        assert.are.equal(503, e.status)
        assert.is_false(sibyl.is_error({ kind = "x" }))
    end)

    it("an uncaught error in a spawned task is reported and fails the process", function()
        local r = helpers.run_cli({ "-e", [[
            local sibyl = require "sibyl"
            local function worker() error("lost in the background") end
            sibyl.spawn(worker)
            sibyl.sleep(0.01)
            print("main finished")
        ]] })
        assert.are.equal(1, r.code)
        assert.matches("main finished", r.out)
        assert.matches("uncaught error in task #%d+", r.err)
        assert.matches("lost in the background", r.err)
        assert.matches("stack traceback:", r.err)
        assert.matches("%(command line%):2:", r.err)
    end)

    it("an error retrieved later is not reported", function()
        local r = helpers.run_cli({ "-e", [[
            local sibyl = require "sibyl"
            local t = sibyl.spawn(function() error("handled") end)
            sibyl.sleep(0.01)
            local _, err = t:wait()
            print("got " .. err.kind)
        ]] })
        assert.are.equal("", r.err)
        assert.are.equal(0, r.code)
        assert.matches("got error", r.out)
    end)

    it("tasks blocked forever are detected instead of hanging", function()
        local r = helpers.run_cli({ "-e", [[
            local sibyl = require "sibyl"
            local a
            local b = sibyl.spawn(function() sibyl.yield(); return a:wait() end)
            a = sibyl.spawn(function() return b:wait() end)
        ]] })
        assert.are.equal(1, r.code)
        assert.matches("blocked", r.err)
    end)
end)

describe("task context", function()

    it("is nil by default and scoped by with_context, errors included", function()
        assert.is_nil(sibyl.context())
        local ctx = { name = "outer", n = 5 }
        assert.are.equal(7, sibyl.with_context(ctx, function(a) return a + sibyl.context().n end, 2))
        local ok, err = pcall(sibyl.with_context, ctx, function() error("boom", 0) end)
        assert.is_false(ok)
        assert.are.equal("boom", err)
        assert.is_nil(sibyl.context())              -- restored after the error
        sibyl.with_context(ctx, function()
            sibyl.with_context({ name = "inner" }, function()
                assert.are.equal("inner", sibyl.context().name)
            end)
            assert.are.equal("outer", sibyl.context().name)
        end)
    end)

    it("is inherited by spawned tasks, also after the scope closes", function()
        local ctx = { hits = 0 }
        local child
        sibyl.with_context(ctx, function()
            child = sibyl.spawn(function()
                sibyl.sleep(0.02)                   -- the parent's scope has closed by now
                local grandchild = sibyl.spawn(function() sibyl.context().hits = sibyl.context().hits + 1 end)
                grandchild:wait()
                return sibyl.context()
            end)
        end)
        assert.is_nil(sibyl.context())
        assert.are.equal(ctx, child:wait())
        assert.are.equal(1, ctx.hits)
        assert.is_nil(sibyl.spawn(function() return sibyl.context() end):wait())
    end)
end)

describe("scale", function()

    it("runs 100,000 concurrent tasks each sleeping 0.1 s in well under 2 s", function()
        local N, finished = 100000, 0
        local t0 = sibyl.now()
        local tasks = {}
        for i = 1, N do
            tasks[i] = sibyl.spawn(function() sibyl.sleep(0.1); finished = finished + 1 end)
        end
        local vals, err = sibyl.gather(tasks)
        local took = sibyl.now() - t0
        assert.is_nil(err)
        assert.are.equal(N, finished)
        assert.is_true(took < 2, ("100k tasks took %.3f s"):format(took))
        assert.is_true(took >= 0.1)
        assert.are.same({}, vals)  -- the tasks returned nothing
    end)

    it("spawning and finishing a task costs microseconds", function()
        local N = 20000
        local t0 = sibyl.now()
        local last
        for _ = 1, N do last = sibyl.spawn(function() end) end
        last:wait()
        local per = (sibyl.now() - t0) / N
        assert.is_true(per < 50e-6, ("%.1f us per task"):format(per * 1e6))
    end)
end)

describe("sibyl.future", function()
    it("hands the values of set to every waiter, first set wins", function()
        local f = sibyl.future()
        assert.are.equal("sibyl.future (pending)", tostring(f))
        local a = sibyl.spawn(function() return f:wait() end)
        local b = sibyl.spawn(function() local x, y, z = f:wait(); return z end)
        sibyl.yield()
        assert.is_false(f:done())
        assert.is_true(f:set("ready", nil, 42))
        assert.is_false(f:set("again"))
        assert.are.equal("ready", a:wait())
        assert.are.equal(42, b:wait())
        local x, y, z = f:wait()                          -- already set: at once
        assert.are.same({ "ready", nil, 42 }, { x, y, z })
        assert.is_true(f:done())
        assert.are.equal("sibyl.future (set)", tostring(f))
    end)

    it("lets a waiter time out or be cancelled without disturbing the others", function()
        local f = sibyl.future()
        local timed = sibyl.spawn(function() return sibyl.deadline(0.02, f.wait, f) end)
        local killed = sibyl.spawn(function() return f:wait() end)
        local patient = sibyl.spawn(function() return f:wait() end)
        local _, err = timed:wait()
        assert.are.equal("timeout", err.kind)
        killed:cancel()
        f:set(nil, sibyl.error("io", "gone"))
        local v, e = patient:wait()
        assert.is_nil(v)
        assert.are.equal("io: gone", tostring(e))
    end)
end)


describe("sibyl.random_bytes", function()
    it("gives n fresh random bytes, and refuses silly sizes", function()
        local a, b = sibyl.random_bytes(32), sibyl.random_bytes(32)
        assert.are.equal(32, #a)
        assert.are_not.equal(a, b)
        assert.are.equal("", sibyl.random_bytes(0))
        assert.has_error(function() sibyl.random_bytes(-1) end)
        assert.has_error(function() sibyl.random_bytes(5000) end)
    end)
end)
