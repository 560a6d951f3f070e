-- A stock LuaJIT using `require "sibyl"` (build/lua/sibyl.so): sibyl.run,
-- sibyl.poll frame loops, misuse outside tasks.

local helpers = require "helpers"

local module_dir = (os.getenv("SIBYL_BIN") or "build/sibyl"):gsub("sibyl$", "lua")


-- Run a Lua snippet under stock luajit with the module on package.cpath.
local function luajit(code)
    local path = helpers.tmpfile("package.cpath = " .. string.format("%q", module_dir .. "/?.so;")
        .. " .. package.cpath\n" .. code)
    local preload = os.getenv("SIBYL_LD_PRELOAD") or ""
    local env = preload ~= "" and ("LD_PRELOAD=" .. helpers.shell_quote(preload) .. " ") or ""
    local p = assert(io.popen(env .. "luajit " .. path .. " 2>&1; echo \"__rc=$?\""))
    local out = p:read("*a")
    p:close()
    os.remove(path)
    local rc = tonumber(out:match("__rc=(%d+)%s*$"))
    return out:gsub("__rc=%d+%s*$", ""), rc
end

describe("stock LuaJIT with require 'sibyl'", function()

    it("sibyl.run runs a function as a task and returns its results", function()
        local out, rc = luajit([[
            local sibyl = require "sibyl"
            print(sibyl.run(function(a) sibyl.sleep(0.01); return a + 1, "ok" end, 41))
        ]])
        assert.are.equal(0, rc)
        assert.are.equal("42\tok\n", out)
    end)

    it("sibyl.run raises the task's error", function()
        local out = luajit([[
            local sibyl = require "sibyl"
            print(pcall(sibyl.run, function() sibyl.sleep(0) error("inner") end))
        ]])
        assert.matches("^false\terror: .*inner", out)
    end)

    it("a host frame loop drives tasks with sibyl.poll", function()
        local out, rc = luajit([[
            local sibyl = require "sibyl"
            local log = {}
            sibyl.spawn(function() for i = 1, 3 do sibyl.sleep(0.01); log[#log + 1] = i end end)
            local frames = 0
            while sibyl.poll(0.002) > 0 do frames = frames + 1 end
            print(table.concat(log, ","), frames > 1)
        ]])
        assert.are.equal(0, rc)
        assert.are.equal("1,2,3\ttrue\n", out)
    end)

    it("I/O outside a task raises a clear error and starts nothing", function()
        local out = luajit([[
            local sibyl = require "sibyl"
            print(pcall(sibyl.sleep, 1))
            local ran = false
            print(pcall(sibyl.gather, { function() ran = true end }))
            sibyl.poll(0)
            print("ran", ran)
        ]])
        assert.matches("must run inside a task", out)
        assert.matches("gather must be called from inside a task", out)
        assert.matches("ran\tfalse", out)
    end)

    it("works when first required from a coroutine", function()
        local out, rc = luajit([[
            local sibyl = coroutine.wrap(function() return require "sibyl" end)()
            collectgarbage(); collectgarbage()
            print(sibyl.run(function() sibyl.sleep(0.001); return "fine" end))
        ]])
        assert.are.equal(0, rc)
        assert.are.equal("fine\n", out)
    end)

    it("the embedded stdlib is available after require 'sibyl'", function()
        local out = luajit([[
            require "sibyl"
            print(require("sibyl.json").encode({ 1, 2 }))
        ]])
        assert.are.equal("[1,2]\n", out)
    end)
end)

describe("sibyl.pretty and the REPL compiler", function()
    local pretty = require "sibyl.pretty"
    local repl = require "sibyl.repl"

    it("renders values readably", function()
        assert.are.equal('{ 1, 2, a = "x", b = { c = true } }', pretty.format({ 1, 2, a = "x", b = { c = true } }))
        assert.are.equal("{ a = null }", pretty.format({ a = require("sibyl.json").null }))
        local t = {}
        t.self = t
        assert.are.equal("{ self = <cycle> }", pretty.format(t))
        assert.are.equal("12", pretty.format(12))
        assert.are.equal("0.5", pretty.format(0.5))
    end)

    it("compiles expressions, statements, and knows incomplete chunks", function()
        assert.are.same({ 3 }, { repl.compile("1 + 2")() })
        assert.are.same({ 1, 2 }, { repl.compile("1, 2")() })
        assert.is_function(repl.compile("y = 5"))
        assert.is_false(repl.compile("for i = 1, 2 do"))
        assert.is_false(repl.compile("f(1,"))
        local fn, err = repl.compile("x = = 1")
        assert.is_nil(fn)
        assert.matches("unexpected symbol", err)
    end)
end)
