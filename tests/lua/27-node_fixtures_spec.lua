-- 27-node_fixtures_spec.lua -- the Node.js plumbing of the interop specs,
-- without any of Sibyl's MCP code: tests/node installs through
-- tests/fixtures/node.lua, and the official MCP SDK's client script talks to the
-- SDK's server script over stdio and over Streamable HTTP. Without Node/npm
-- (or when npm ci fails) the tests are pending with the reason.

local helpers = require "helpers"
local json = require "sibyl.json"
local node = require "node"


local root, why = node.setup()


-- The single JSON line a script printed (the last non-empty line).
local function last_json(out)
    local line
    for l in out:gmatch("[^\n]+") do line = l end
    local ok, v = pcall(json.decode, line or "")
    return ok and v or nil
end


-- Checks shared by both transports: the SDK client got the SDK server's
-- tools, the add result, the fail result, the resource and the prompt.
local function check_client_report(r)
    assert.is_true(r.ok)
    assert.are.equal("sibyl-node-fixture", r.serverInfo.name)
    assert.matches("^%d%d%d%d%-%d%d%-%d%d$", r.protocolVersion)
    local names = {}
    for _, t in ipairs(r.tools) do names[#names + 1] = t.name end
    table.sort(names)
    assert.are.same({ "add", "echo", "fail", "slow" }, names)
    assert.are.equal("5", r.add.content[1].text)
    assert.are.equal(5, r.add.structuredContent.sum)
    assert.is_true(r.fail.isError)
    assert.are.equal("boom", r.fail.content[1].text)
    assert.are.equal("mem://greeting", r.resources[1].uri)
    assert.are.equal("hello from node", r.resource.contents[1].text)
    assert.are.equal("greet", r.prompts[1].name)
    assert.are.equal("Say hello to x", r.prompt.messages[1].content.text)
end


describe("tests/node fixtures", function()
    it("installs the pinned packages once, in the cache folder", function()
        if not root then pending(why) return end
        assert.matches("^/", root)
        assert.is_nil(root:find(assert(node.src), 1, true), "the install is outside the repo")
        local f = io.open(root .. "/node_modules/@modelcontextprotocol/sdk/package.json")
        assert.is_truthy(f, "the SDK is installed")
        local pkg = json.decode(f:read("*a"))
        f:close()
        assert.are.equal("1.32.2", pkg.version)
        assert.is_truthy(io.open(node.script("mcp_server.mjs")), "the scripts are copied below the install")
        -- a second setup is remembered (and a fresh one only stats the folder)
        assert.are.equal(root, (node.setup()))
        local t = helpers.timed(function()
            package.loaded["node"] = nil
            local again = require "node"
            assert.are.equal(root, (again.setup()))
        end)
        package.loaded["node"] = node
        assert.is_true(t < 1, "setup with a warm cache took " .. t .. " s")
    end)

    it("runs the SDK client against the SDK server over stdio", function()
        if not root then pending(why) return end
        local out, code, err = node.run("mcp_client.mjs",
            { "stdio", node.node_bin, node.script("mcp_server.mjs") }, { timeout = 30 })
        assert.are.equal(0, code, "client failed: " .. out .. err)
        local r = assert(last_json(out), "no JSON line in: " .. out)
        assert.are.equal("stdio", r.mode)
        check_client_report(r)
    end)

    it("runs the SDK client against the SDK server over Streamable HTTP", function()
        if not root then pending(why) return end
        local srv = assert(node.start("mcp_server.mjs", { "--http", "0" }))
        finally(function() srv:kill() end)
        local port, err = srv:wait_line("^listening (%d+)$", 10)
        assert.is_truthy(port, err)
        local out, code, cerr = node.run("mcp_client.mjs",
            { "http", "http://127.0.0.1:" .. port .. "/mcp" }, { timeout = 30 })
        assert.are.equal(0, code, "client failed: " .. out .. cerr .. srv:stderr())
        local r = assert(last_json(out), "no JSON line in: " .. out)
        assert.are.equal("http", r.mode)
        assert.is_truthy(r.sessionId, "a stateful session id")
        check_client_report(r)
        srv:kill()
        assert.is_false(srv:alive())
    end)

    it("reports a client failure as one JSON error line and a non-zero exit", function()
        if not root then pending(why) return end
        -- nothing listens on port 9 of loopback (discard; closed in test sandboxes)
        local out, code = node.run("mcp_client.mjs", { "http", "http://127.0.0.1:9/mcp" },
            { timeout = 30, env = { MCP_CLIENT_TIMEOUT_MS = "5000" } })
        assert.are_not.equal(0, code)
        local r = assert(last_json(out), "no JSON line in: " .. out)
        assert.is_string(r.error.message)
    end)
end)
