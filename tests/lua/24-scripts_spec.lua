-- 24-scripts_spec.lua -- every ready script in scripts/ runs offline with
-- --mock (the scripted mock model), exits 0 and prints something: the
-- promise doc/agents.md and README make to users who copy them.

local helpers = require "helpers"
local fs = require "sibyl.fs"


describe("scripts/", function()
    local names = {}
    for _, name in ipairs(assert(fs.list("scripts"))) do
        if name:match("%.lua$") then names[#names + 1] = name end
    end

    it("holds the ready scripts", function()
        for _, want in ipairs{ "demo.lua", "agent.lua", "self_healing.lua", "orchestrator.lua",
                               "rag_agent.lua", "sql_agent.lua", "web_agent.lua" } do
            assert.is_truthy(fs.read("scripts/" .. want), want)
        end
    end)

    for _, name in ipairs(names) do
        it(name .. " --mock runs offline", function()
            local r = helpers.run_cli({ "scripts/" .. name, "--mock" })
            assert.are.equal(0, r.code, name .. ": " .. r.err)
            assert.is_true(#r.out > 40, name .. " printed: " .. r.out)
            assert.is_nil(r.err:find("traceback", 1, true), r.err)
            -- scripts start with a comment block that says what they are for
            assert.matches("^%-%- ", assert(fs.read("scripts/" .. name)))
        end)
    end
end)
