-- The `sibyl` command: scripts, -e, stdin, arg, exit statuses, messages.

local helpers = require "helpers"
local run = helpers.run_cli

describe("sibyl CLI", function()

    it("runs -e code with top-level I/O", function()
        local r = run({ "-e", "local s = require 'sibyl'; s.sleep(0.01); print('slept')" })
        assert.are.equal(0, r.code)
        assert.are.equal("slept\n", r.out)
    end)

    it("runs several -e chunks in order in one state", function()
        local r = run({ "-e", "x = 1", "-e", "print(x + 1)" })
        assert.are.equal("2\n", r.out)
    end)

    it("passes script arguments as arg and ...", function()
        local path = helpers.tmpfile("print(arg[0] == ..., #arg, arg[1], arg[2], select('#', ...), (...))\n")
        local r = run({ path, "one", "two" })
        assert.are.equal(0, r.code)
        assert.are.equal("false\t2\tone\ttwo\t2\tone\n", r.out)
        assert.matches("sibyl$", helpers.run_cli({ "-e", "print(arg[-1] or arg[0])" }).out:gsub("%s+$", ""))
        os.remove(path)
    end)

    it("sets arg[0] to the script path", function()
        local path = helpers.tmpfile("print(arg[0])")
        assert.are.equal(path .. "\n", run({ path }).out)
        os.remove(path)
    end)

    it("reads the script from stdin with -", function()
        local r = run({ "-", "a" }, "print('from stdin', ...)")
        assert.are.equal("from stdin\ta\n", r.out)
    end)

    it("runs stdin when it is not a terminal and nothing else is given", function()
        local r = run({}, "print(6 * 7)")
        assert.are.equal("42\n", r.out)
    end)

    it("exits 1 with a traceback when the script fails", function()
        local path = helpers.tmpfile("local function f() error('bad thing') end\nf()\n")
        local r = run({ path })
        assert.are.equal(1, r.code)
        assert.matches("bad thing", r.err)
        assert.matches("stack traceback", r.err)
        assert.matches(":1: in function 'f'", r.err)
        os.remove(path)
    end)

    it("reports syntax errors with file and line", function()
        local path = helpers.tmpfile("x = = 1\n")
        local r = run({ path })
        assert.are.equal(1, r.code)
        assert.matches(":1: unexpected symbol near '='", r.err)
        os.remove(path)
    end)

    it("reports a missing script clearly", function()
        local r = run({ "/no/such/script.lua" })
        assert.are.equal(1, r.code)
        assert.matches("cannot open /no/such/script.lua", r.err)
    end)

    it("prints help and version", function()
        local h = run({ "--help" })
        assert.are.equal(0, h.code)
        assert.matches("usage: sibyl", h.out)
        local v = run({ "-v" })
        assert.matches("^Sibyl %d+%.%d+%.%d+ %(LuaJIT", v.out)
    end)

    it("rejects unknown options with usage", function()
        local r = run({ "--frobnicate" })
        assert.are.equal(2, r.code)
        assert.matches("unknown option '%-%-frobnicate'", r.err)
    end)

    it("loads modules with -l", function()
        local r = run({ "-l", "sibyl.json", "-e", "print(sibyl_json.encode{1})" })
        assert.are.equal("[1]\n", r.out)
    end)

    it("waits for spawned tasks before exiting", function()
        local r = run({ "-e", [[
            local s = require "sibyl"
            s.spawn(function() s.sleep(0.02); print("background done") end)
            print("main done")
        ]] })
        assert.are.equal("main done\nbackground done\n", r.out)
    end)

    it("-i with piped stdin evaluates line by line like the REPL", function()
        local r = run({ "-i" }, "x = 41\nx + 1\nerror('boom')\nfunction f() local t; return t.y end\nf()\n")
        assert.are.equal(0, r.code)
        assert.matches("\n?42\n", r.out)
        assert.matches("stdin:1: boom", r.out)
        assert.matches("in function 'f'", r.out)
        assert.is_nil(r.out:find("xpcall", 1, true))       -- no REPL internals
        assert.is_nil(r.out:find("repl.lua", 1, true))
    end)

    it("sibyl test ends when the specs end, tearing down servers they left open", function()
        local spec = helpers.tmpfile([[
            describe("leftovers", function()
                it("leaves a server listening", function()
                    assert(require("sibyl.server").listen{ port = 0, routes = { ["GET /"] = function() return "x" end } })
                end)
            end)
        ]], "_spec.lua")
        local t0 = os.time()
        local r = run({ "test", "-o", "plainTerminal", spec })
        os.remove(spec)
        assert.are.equal(0, r.code)
        assert.matches("1 success / 0 failures", r.out)
        assert.is_true(os.time() - t0 < 10)
    end)

    it("honours os.exit codes", function()
        assert.are.equal(3, run({ "-e", "os.exit(3)" }).code)
        assert.are.equal(1, run({ "-e", "os.exit(false)" }).code)
    end)

    it("loads stdlib modules lazily; the scheduler is always there", function()
        local r = run({ "-e", "print(package.loaded['sibyl.json'] == nil, package.loaded.sibyl == require 'sibyl')" })
        assert.are.equal("true\ttrue\n", r.out)
    end)

    it("parks I/O correctly in coroutines even before require 'sibyl'", function()
        local r = run({ "-e", [[
            local fs = require "sibyl.fs"
            local co = coroutine.create(function() return #fs.read("/proc/self/stat") > 0 end)
            print(coroutine.resume(co))
        ]] })
        assert.are.equal("true\ttrue\n", r.out)
        assert.are.equal(0, r.code)
    end)
end)
