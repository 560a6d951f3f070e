-- 18-rag_spec.lua -- sibyl.rag: the chunker (stdlib/sibyl/rag/chunk.lua).

local chunk = require "sibyl.rag.chunk"


describe("sibyl.rag.chunk", function()

    local function check_offsets(text, cs)
        for _, c in ipairs(cs) do
            assert.are.equal(text:sub(c.start, c.stop), c.text)
        end
    end

    it("packs sentences up to size and repeats whole trailing sentences as overlap", function()
        local text = "One. Two two. Three three three. Four four four four. Five."
        local cs = chunk.split(text, { size = 30, overlap = 15, min_size = 1 })
        assert.are.same({ "One. Two two.", "Two two. Three three three.", "Four four four four. Five." },
                        { cs[1].text, cs[2].text, cs[3].text })
        check_offsets(text, cs)
        for _, c in ipairs(cs) do assert.is_true(#c.text <= 30) end
        -- no overlap asked: chunks tile the text
        cs = chunk.split(text, { size = 30, overlap = 0, min_size = 1 })
        for i = 2, #cs do assert.is_true(cs[i].start > cs[i - 1].stop) end
    end)

    it("never exceeds size, splitting a long sentence at spaces", function()
        local words = {}
        for i = 1, 300 do words[i] = "word" .. i end
        local text = table.concat(words, " ")
        local cs = chunk.split(text, { size = 100, overlap = 0 })
        assert.is_true(#cs >= 20)
        for _, c in ipairs(cs) do
            assert.is_true(#c.text <= 100, #c.text)
            assert.is_nil(c.text:find("^%s"))
            assert.is_truthy(c.text:find("^word%d+"))            -- cut between words
        end
        check_offsets(text, cs)
    end)

    it("follows Markdown headings: boundaries, heading paths, lines; code fences stay whole", function()
        local text = table.concat({
            "# Guide", "", "Intro text here.", "",
            "## Install", "", "Run make. Then run tests.", "",
            "```sh", "make run", "", "make test", "```", "",
            "### Notes", "", "A note.", "",
            "## Use", "", "Call it.",
        }, "\n")
        local cs = chunk.split(text, { source = "guide.md", size = 200, overlap = 0 })
        local got = {}
        for _, c in ipairs(cs) do got[#got + 1] = { c.heading, c.text, c.line } end
        assert.are.same({
            { "Guide", "Intro text here.", 3 },
            { "Guide > Install", "Run make. Then run tests.\n\n```sh\nmake run\n\nmake test\n```", 7 },
            { "Guide > Install > Notes", "A note.", 17 },
            { "Guide > Use", "Call it.", 21 },
        }, got)
        check_offsets(text, cs)
        -- the same text as plain text: no headings, '#' lines are prose
        local plain = chunk.split(text, { source = "guide.txt", size = 2000 })
        assert.are.equal(1, #plain)
        assert.is_nil(plain[1].heading)
    end)

    it("keeps source and index, merges a tiny tail, handles empty input, refuses bad options", function()
        local text = string.rep("Sentence number one is here. ", 10) .. "Ok."
        local cs = chunk.split(text, { source = "a.txt", size = 120, overlap = 0, min_size = 10 })
        assert.are.equal("a.txt", cs[1].source)
        for i, c in ipairs(cs) do assert.are.equal(i, c.index) end
        assert.matches("Ok%.$", cs[#cs].text)
        assert.is_true(#cs[#cs].text > 3)                        -- "Ok." did not stand alone
        assert.are.same({}, chunk.split(""))
        assert.are.same({}, chunk.split("   \n\n  "))
        assert.has_error(function() chunk.split(text, { size = 10 }) end)
        assert.has_error(function() chunk.split(text, { size = 100, overlap = 100 }) end)
        assert.has_error(function() chunk.split(42) end)
    end)
end)
