-- 25-process_spec.lua -- sibyl.process (runtime/src/process.c, process_io.c):
-- child processes on non-blocking pipes, reaping, kill / close escalation,
-- and the runtime's own stdin/stdout as a stream (process.stdio()).
--
-- Run with `sibyl test tests/lua/25-process_spec.lua` (SIBYL_BIN names the
-- binary the stdio tests run as a child). Every test ends its children.

local sibyl = require "sibyl"
local process = require "sibyl.process"
local helpers = require "helpers"

local SIBYL_BIN = helpers.sibyl_bin


-- Live (non-zombie) members of process group pgid, from /proc.
local function group_members(pgid)
    local n = 0
    local ls = io.popen("ls /proc")
    for name in ls:lines() do
        if name:match("^%d+$") then
            local f = io.open("/proc/" .. name .. "/stat", "rb")
            local stat = f and f:read("*a")
            if f then f:close() end
            local state, pgrp = (stat or ""):match(".*%) (%S) %d+ (%d+)")
            if pgrp and tonumber(pgrp) == pgid and state ~= "Z" then n = n + 1 end
        end
    end
    ls:close()
    return n
end


-- A Lua script in a temporary file, for the child sibyl.
local function script(text)
    return helpers.tmpfile(text, ".lua")
end


local UPPER = [[
local process = require "sibyl.process"
local io_ = process.stdio()
while true do
    local line, err = io_:read_line()
    if not line then
        assert(io_:write("EOF " .. err.kind .. "\n"))
        break
    end
    assert(io_:write(line:upper() .. "\n"))
end
io_:close()
]]


describe("sibyl.process", function()

    it("round-trips lines through cat", function()
        local p = assert(process.spawn{ "cat" })
        assert.is_number(p.pid)
        assert.are.equal("sibyl.process (pid " .. p.pid .. ")", tostring(p))
        assert.is_true(p:running())
        assert.is_true(p:write("hello\n"))
        assert.are.equal("hello", p:read_line())
        assert.is_true(p:write("crlf\r\nsecond\n"))
        assert.are.equal("crlf", p:read_line())
        assert.are.equal("second", p:read_line())
        assert.is_true(p:write("abc"))
        assert.are.equal("abc", p:read(10))
        local st = p:close()
        assert.are.same({ exited = true, code = 0 }, st)
        assert.are.same(st, p:close())                          -- idempotent
        assert.are.equal("sibyl.process (exited 0)", tostring(p))
        assert.is_false(p:running())
        local line, err = p:read_line()
        assert.is_nil(line)
        assert.are.equal("closed", err.kind)
    end)

    it("carries many lines and a 1 MiB line, writer and reader in separate tasks", function()
        local p = assert(process.spawn{ "cat" })
        local big = string.rep("0123456789abcdef", 65536)     -- 1 MiB
        local writer = sibyl.spawn(function()
            for i = 1, 5000 do assert(p:write("line " .. i .. "\n")) end
            assert(p:write(big .. "\n"))
            return p:write("after\n")
        end)
        for i = 1, 5000 do assert.are.equal("line " .. i, p:read_line()) end
        assert.are.equal(big, p:read_line())
        assert.are.equal("after", p:read_line())
        assert.is_true(writer:wait())
        p:close()
    end)

    it("keeps the order of concurrent writers and refuses a second reader", function()
        local p = assert(process.spawn{ "cat" })
        local chunk = string.rep("x", 200000)
        local tasks = {}
        for i = 1, 4 do
            tasks[i] = sibyl.spawn(function() return p:write(i .. chunk .. "\n") end)
        end
        local reader = sibyl.spawn(function() return p:read_line() end)
        sibyl.sleep(0)
        local ok, err = pcall(p.read_line, p)
        assert.is_false(ok)
        assert.matches("another task is already reading", err)
        assert.are.equal(1 .. chunk, reader:wait())
        for i = 2, 4 do assert.are.equal(i .. chunk, p:read_line()) end
        for i = 1, 4 do assert.is_true(tasks[i]:wait()) end
        p:close()
    end)

    it("captures stderr and the exit code", function()
        local p = assert(process.spawn{ "sh", "-c", "echo err >&2; echo out; exit 3" })
        assert.are.equal("out", p:read_line())
        local st = p:wait()
        assert.are.same({ exited = true, code = 3 }, st)
        assert.are.equal("err\n", p:stderr())
        assert.are.same(st, p:close())
        assert.are.equal("sibyl.process (exited 3)", tostring(p))
    end)

    it("keeps only the tail of stderr, or none", function()
        local p = assert(process.spawn{ "sh", "-c", "i=0; while [ $i -lt 100 ]; do echo line$i >&2; i=$((i+1)); done",
                                        stderr_limit = 16 })
        p:wait()
        assert.are.equal("ne98\nline99\n", p:stderr():sub(-12))
        assert.are.equal(16, #p:stderr())
        p:close()
        local q = assert(process.spawn{ "sh", "-c", "echo hidden >&2", stderr = "null" })
        assert.are.equal(0, q:wait().code)
        assert.are.equal("", q:stderr())
        q:close()
    end)

    it("passes env, env_clear and cwd", function()
        local p = assert(process.spawn{ "sh", "-c", "echo $SB_T1-$HOME; pwd", env = { SB_T1 = "one", HOME = false },
                                        cwd = "/tmp" })
        assert.are.equal("one-", p:read_line())
        assert.are.equal("/tmp", p:read_line())
        p:close()
        local q = assert(process.spawn{ "/usr/bin/env", env_clear = true, env = { ONLY = 1 } })
        assert.are.equal("ONLY=1", q:read_line())
        assert.are.equal("closed", select(2, q:read_line()).kind)
        q:close()
        local r, err = process.spawn{ "true", cwd = "/nonexistent/dir" }
        assert.is_nil(r)
        assert.are.equal("io", err.kind)
        assert.matches("cwd '/nonexistent/dir'", err.message)
    end)

    it("reports a missing command as kind io naming it", function()
        local p, err = process.spawn{ "nosuchcmd-sibyl", "x" }
        assert.is_nil(p)
        assert.are.equal("io", err.kind)
        assert.matches("cannot run 'nosuchcmd%-sibyl'", err.message)
        assert.matches("No such file", err.message)
    end)

    it("raises on misuse", function()
        assert.has_error(function() process.spawn{} end)
        assert.has_error(function() process.spawn{ "cat", stderr = "file" } end)
        assert.has_error(function() process.spawn{ "cat", env = { X = {} } } end)
        local p = assert(process.spawn{ "cat" })
        assert.has_error(function() p:kill("NOPE") end)
        assert.has_error(function() p:read(0) end)
        p:close()
    end)

    it("kills sleep 100 with a signal, then wait and close report it", function()
        local p = assert(process.spawn{ "sleep", "100" })
        assert.is_true(p:kill())
        assert.are.same({ exited = true, signal = "TERM" }, p:wait())
        assert.are.equal("sibyl.process (signal TERM)", tostring(p))
        local ok, err = p:kill("KILL")
        assert.is_nil(ok)
        assert.are.equal("closed", err.kind)
        assert.are.equal("TERM", p:close().signal)
    end)

    it("close() ends a whole process tree", function()
        local p = assert(process.spawn{ "sh", "-c", "sleep 100 & sleep 100" })
        assert.is_truthy(helpers.eventually(function() return group_members(p.pid) >= 3 end))
        local t, st = helpers.timed(p.close, p, { grace = 0.05 })
        assert.are.equal("TERM", st.signal)
        assert.is_true(t < 1)
        assert.is_truthy(helpers.eventually(function() return group_members(p.pid) == 0 end))
    end)

    it("close() escalates to SIGKILL when TERM is ignored", function()
        local p = assert(process.spawn{ "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.01; done" })
        assert.are.equal("ready", p:read_line())
        local t, st = helpers.timed(p.close, p, { grace = 0.05 })
        assert.are.equal("KILL", st.signal)
        assert.is_true(t >= 0.09 and t < 1, "took " .. t)   -- two grace periods
        assert.is_truthy(helpers.eventually(function() return group_members(p.pid) == 0 end))
    end)

    it("returns a final unterminated line, then kind closed at EOF", function()
        local p = assert(process.spawn{ "printf", "a\\nb" })
        assert.are.equal("a", p:read_line())
        assert.are.equal("b", p:read_line())
        local line, err = p:read_line()
        assert.is_nil(line)
        assert.are.equal("closed", err.kind)
        assert.is_nil(p:read(1))
        assert.are.equal(0, p:close().code)
    end)

    it("fails an oversized line with kind limit and skips it", function()
        local p = assert(process.spawn{ "cat", max_line = 10 })
        assert(p:write("short\n" .. string.rep("y", 100000) .. "\nnext\n"))
        assert.are.equal("short", p:read_line())
        local line, err = p:read_line()
        assert.is_nil(line)
        assert.are.equal("limit", err.kind)
        assert.matches("max_line", err.message)
        assert.are.equal("next", p:read_line())
        p:close()
    end)

    it("a read cancelled by a deadline or task:cancel leaves the process usable", function()
        local p = assert(process.spawn{ "cat" })
        local line, err = sibyl.deadline(0.05, function() return p:read_line() end)
        assert.is_nil(line)
        assert.are.equal("timeout", err.kind)
        assert(p:write("x\n"))
        assert.are.equal("x", p:read_line())
        local t = sibyl.spawn(function() return p:read_line() end)
        sibyl.sleep(0.01)
        assert.is_true(t:cancel())
        assert(p:write("y\n"))
        assert.are.equal("y", p:read_line())
        -- a write blocked on a child that never reads, cancelled by a deadline
        local q = assert(process.spawn{ "sleep", "100" })
        local ok, werr = sibyl.deadline(0.05, function() return q:write(string.rep("z", 1048576)) end)
        assert.is_nil(ok)
        assert.are.equal("timeout", werr.kind)
        assert.are.equal("TERM", q:close{ grace = 0.01 }.signal)
        assert.are.equal(0, p:close().code)
    end)

    it("a close() cancelled by its task still kills and reaps the child", function()
        local p = assert(process.spawn{ "sh", "-c", "trap '' TERM; sleep 100" })
        local pid = p.pid
        local t = sibyl.spawn(function() return p:close{ grace = 10 } end)
        sibyl.sleep(0.02)
        t:cancel()
        assert.are.equal("KILL", p:wait().signal)
        assert.is_truthy(helpers.eventually(function() return group_members(pid) == 0 end))
        assert.are.equal("KILL", p:close().signal)
    end)

    it("a write to a process that exited fails with kind closed", function()
        local p = assert(process.spawn{ "true" })
        p:wait()
        local ok, err = p:write("hello\n")
        assert.is_nil(ok)
        assert.are.equal("closed", err.kind)
        p:close_stdin()
        p:close_stdin()
        ok, err = p:write("again\n")
        assert.is_nil(ok)
        assert.are.equal("closed", err.kind)
        p:close()
    end)

    it("stdio: a sibyl child echoes stdin to stdout, uppercased", function()
        local path = script(UPPER)
        local p = assert(process.spawn{ SIBYL_BIN, path })
        for _, w in ipairs({ "hello", "mcp stdio", "" }) do
            assert(p:write(w .. "\n"))
            assert.are.equal(w:upper(), p:read_line())
        end
        p:close_stdin()
        assert.are.equal("EOF closed", p:read_line())
        assert.are.same({ exited = true, code = 0 }, p:wait())
        assert.are.equal("", p:stderr())
        p:close()
        os.remove(path)
    end)

    it("stdio: /dev/null and regular files, which epoll cannot watch", function()
        local path = script(UPPER)
        local p = assert(process.spawn{ "sh", "-c", 'exec "$0" "$1" </dev/null', SIBYL_BIN, path })
        assert.are.equal("EOF closed", p:read_line())
        assert.are.equal(0, p:wait().code)
        p:close()
        local input = helpers.tmpfile("one\ntwo")
        local output = os.tmpname()
        local q = assert(process.spawn{ "sh", "-c", 'exec "$0" "$1" <"$2" >"$3"', SIBYL_BIN, path, input, output })
        assert.are.equal(0, q:wait().code)
        q:close()
        local f = assert(io.open(output, "rb"))
        assert.are.equal("ONE\nTWO\nEOF closed\n", f:read("*a"))
        f:close()
        os.remove(path); os.remove(input); os.remove(output)
    end)

    it("reaps with the polling fallback and kills leftovers when the runtime closes", function()
        local path = script([[
local process = require "sibyl.process"
local p = assert(process.spawn{ "sh", "-c", "exit 7" })
print(p:wait().code)
local s = assert(process.spawn{ "sleep", "100" })
print(s.pid)            -- never closed: the runtime's close must kill it
]])
        local p = assert(process.spawn{ SIBYL_BIN, path, env = { SIBYL_PROCESS_POLL = "1" } })
        assert.are.equal("7", p:read_line())
        local pid = tonumber(p:read_line())
        assert.are.equal(0, p:wait().code)
        p:close()
        assert.is_nil(io.open("/proc/" .. pid .. "/stat"))
        os.remove(path)
    end)
end)
