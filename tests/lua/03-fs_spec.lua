-- sibyl.fs: file reads and writes on the worker pool.

local sibyl = require "sibyl"
local fs = require "sibyl.fs"
local helpers = require "helpers"

describe("sibyl.fs", function()

    it("writes and reads back a file", function()
        local path = os.tmpname()
        assert.is_true(fs.write(path, "hello\0world"))
        assert.are.equal("hello\0world", fs.read(path))
        assert.is_true(fs.write(path, "!", { append = true }))
        assert.are.equal("hello\0world!", fs.read(path))
        os.remove(path)
    end)

    it("reads a large file without blocking other tasks", function()
        local path = helpers.tmpfile(string.rep("0123456789abcdef", 4 * 65536))  -- 4 MiB
        local ticks = 0
        local ticker = sibyl.spawn(function()
            for _ = 1, 5 do sibyl.sleep(0); ticks = ticks + 1 end
        end)
        local data = fs.read(path)
        ticker:wait()
        assert.are.equal(4 * 1024 * 1024, #data)
        assert.are.equal(5, ticks)
        os.remove(path)
    end)

    it("reports a missing file as kind io with the path and errno", function()
        local data, err = fs.read("/nonexistent/sibyl-test")
        assert.is_nil(data)
        assert.are.equal("io", err.kind)
        assert.are.equal("ENOENT", err.code)
        assert.matches("/nonexistent/sibyl%-test", err.message)
        assert.matches("No such file", err.message)
    end)

    it("refuses files over max_bytes", function()
        local path = helpers.tmpfile(string.rep("x", 1000))
        local data, err = fs.read(path, { max_bytes = 100 })
        assert.is_nil(data)
        assert.are.equal("too_large", err.kind)
        assert.matches("max_bytes", err.message)
        assert.are.equal(1000, #fs.read(path, { max_bytes = 1000 }))
        os.remove(path)
    end)

    it("reads files whose size is not known in advance", function()
        local data = fs.read("/proc/self/status")
        assert.matches("Name:", data)
    end)

    it("lists a directory sorted, without . and ..", function()
        local dir = os.tmpname()
        os.remove(dir)
        assert(os.execute("mkdir " .. dir) == 0)
        for _, name in ipairs({ "b.md", "a.txt", "c" }) do
            assert.is_true(fs.write(dir .. "/" .. name, name))
        end
        assert.are.same({ "a.txt", "b.md", "c" }, fs.list(dir))
        local names, err = fs.list(dir .. "/a.txt")
        assert.is_nil(names)
        assert.are.equal("ENOTDIR", err.code)
        os.execute("rm -r " .. dir)
    end)

    it("many concurrent reads all complete", function()
        local path = helpers.tmpfile("abc")
        local fns = {}
        for i = 1, 200 do fns[i] = function() return fs.read(path) end end
        local vals = sibyl.gather(fns)
        assert.are.equal(200, #vals)
        assert.are.equal("abc", vals[200])
        os.remove(path)
    end)

    it("a cancelled read does not disturb anything", function()
        local path = helpers.tmpfile(string.rep("y", 1048576))
        local t = sibyl.spawn(function() return fs.read(path) end)
        sibyl.yield()
        t:cancel()
        local _, err = t:wait()
        assert.are.equal("cancelled", err.kind)
        assert.are.equal(1048576, #fs.read(path))
        os.remove(path)
    end)

    it("a task cancelled after its read finished, before it resumed, frees the result", function()
        local path = helpers.tmpfile(string.rep("z", 100000))
        local reader = sibyl.spawn(function() return fs.read(path) end)
        sibyl.yield()                   -- the reader starts its read and parks
        local t0 = os.clock()
        while os.clock() - t0 < 0.05 do end   -- block the loop: the job finishes meanwhile
        for _ = 1, 10 do                -- let the loop take the completion; we run before the reader
            sibyl.yield()
            if reader:status() ~= "waiting" then break end
        end
        assert.are.equal("ready", reader:status())
        assert.is_true(reader:cancel())  -- completed but not delivered: ASan checks nothing leaks
        local _, err = reader:wait()
        assert.are.equal("cancelled", err.kind)
        os.remove(path)
    end)

    it("works from a plain coroutine inside a task", function()
        local r = helpers.run_cli({ "-e", [[
            local fs = require "sibyl.fs"
            local co = coroutine.create(function() return fs.read("/etc/hostname") end)
            print(coroutine.resume(co))
        ]] })
        -- a coroutine inside the main task is still inside the task: works
        assert.matches("^true", r.out)
    end)
end)
