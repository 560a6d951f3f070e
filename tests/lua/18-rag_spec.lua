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


describe("sibyl.rag index and retrieval", function()
    local rag = require "sibyl.rag"
    local fs = require "sibyl.fs"
    local llm = require "sibyl.llm"
    local helpers = require "helpers"
    local FIXTURE = "tests/fixtures/rag/docs"

    local function tmpdir()
        local d = os.tmpname()
        os.remove(d)
        assert(os.execute("mkdir -p " .. d) == 0)
        return d
    end

    -- The labelled documents plus 300 distractors made of half-sentences of
    -- them (deterministic): they share the vocabulary, not the meaning.
    local function corpus()
        local dir = tmpdir()
        os.execute("mkdir -p " .. dir .. "/docs && cp " .. FIXTURE .. "/*.md " .. dir .. "/docs/")
        local sentences = {}
        for _, name in ipairs(assert(fs.list(FIXTURE))) do
            local text = assert(fs.read(FIXTURE .. "/" .. name))
            for s in text:gsub("^#[^\n]*\n", ""):gmatch("[^%.]+%.") do
                local words = {}
                for w in s:gmatch("%S+") do words[#words + 1] = w end
                if #words > 4 then sentences[#sentences + 1] = words end
            end
        end
        math.randomseed(7)
        for i = 1, 300 do
            local parts = {}
            for _ = 1, 3 do
                local w = sentences[math.random(#sentences)]
                local half = {}
                for k = 1, #w do if math.random() < 0.5 then half[#half + 1] = w[k] end end
                parts[#parts + 1] = table.concat(half, " ") .. "."
            end
            assert(fs.write(dir .. "/docs/noise" .. i .. ".md",
                            "# Note " .. i .. "\n\n" .. table.concat(parts, " ") .. "\n"))
        end
        return dir
    end

    it("hybrid retrieval beats BM25 and vectors alone on the labelled set (recall@5)", function()
        local dir = corpus()
        finally(function() os.execute("rm -rf " .. dir) end)
        local store = dir .. "/index.db"
        local stats = assert(rag.index{ path = dir .. "/docs", store = store, progress = false })
        assert.are.equal(315, stats.files)
        local idx = assert(rag.open(store))
        local qs = dofile("tests/fixtures/rag/questions.lua")
        local recall = {}
        for _, mode in ipairs{ "fts", "vector", "hybrid" } do
            local found = 0
            for _, item in ipairs(qs) do
                for _, h in ipairs(idx:search(item.q, { k = 5, mode = mode })) do
                    if h.path:sub(-#item.doc - 1) == "/" .. item.doc then
                        found = found + 1
                        break
                    end
                end
            end
            recall[mode] = found / #qs
        end
        idx:close()
        print(("\n    recall@5 on %d questions: BM25 %.2f, vectors %.2f, hybrid %.2f"):format(
            #qs, recall.fts, recall.vector, recall.hybrid))
        assert.is_true(recall.hybrid > recall.fts, "hybrid vs BM25")
        assert.is_true(recall.hybrid > recall.vector, "hybrid vs vectors")
        assert.is_true(recall.hybrid >= 0.8)
    end)

    it("re-indexes incrementally: unchanged files are skipped, changed and removed ones handled", function()
        local dir = tmpdir()
        finally(function() os.execute("rm -rf " .. dir) end)
        os.execute("mkdir -p " .. dir .. "/docs && cp " .. FIXTURE .. "/*.md " .. dir .. "/docs/")
        local store = dir .. "/index.db"
        local s1 = assert(rag.index{ path = dir .. "/docs", store = store, progress = false })
        assert.are.same({ 15, 15, 0, 0 }, { s1.files, s1.indexed, s1.skipped, s1.removed })
        local s2 = assert(rag.index{ path = dir .. "/docs", store = store, progress = false })
        assert.are.same({ 15, 0, 15, 0 }, { s2.files, s2.indexed, s2.skipped, s2.removed })
        assert.are.equal(s1.total_chunks, s2.total_chunks)
        assert(fs.write(dir .. "/docs/ports.md", "# Ports\n\nThe port is busy: choose another one with port = 0.\n"))
        os.remove(dir .. "/docs/repl.md")
        local s3 = assert(rag.index{ path = dir .. "/docs", store = store, progress = false })
        assert.are.same({ 14, 1, 13, 1 }, { s3.files, s3.indexed, s3.skipped, s3.removed })
        local idx = assert(rag.open(store))
        local hits = idx:search("interactive prompt Ctrl-C", { k = 3, mode = "fts" })
        for _, h in ipairs(hits) do assert.is_nil(h.path:match("repl%.md$")) end
        hits = idx:search("port busy choose another", { k = 1 })
        assert.matches("ports%.md$", hits[1].path)
        assert.matches("choose another one", hits[1].text)
        -- a filter keeps only matching paths
        hits = idx:search("keys", { k = 5, filter = { path_match = "redis%.md$" } })
        for _, h in ipairs(hits) do assert.matches("redis%.md$", h.path) end
        idx:close()
    end)

    it("answers extractively without a model, and through a model with numbered sources", function()
        local dir = tmpdir()
        finally(function() os.execute("rm -rf " .. dir) end)
        local store = dir .. "/index.db"
        assert(rag.index{ path = FIXTURE, store = store, progress = false })
        local idx = assert(rag.open(store))
        local a = assert(idx:answer("How are API keys rotated after a 429?", { llm = false }))
        assert.are.equal("extractive", a.mode)
        assert.matches("^Extractive answer", a.text)
        assert.matches("%[%d%]", a.text)
        assert.matches("keys%.md$", a.sources[1].path)
        assert.is_number(a.sources[1].line)
        local m = llm.mock{ replies = { "Keys rest after a 429 and the next request takes another key [1]." } }
        a = assert(idx:answer("How are API keys rotated after a 429?", { llm = m }))
        assert.are.equal("llm", a.mode)
        assert.matches("%[1%]", a.text)
        local prompt = m.requests[1].messages[1].content
        assert.matches("^Sources:", prompt)
        assert.matches("%[1%] [^\n]*keys%.md:%d+", prompt)
        assert.matches("Question: How are API keys rotated", prompt)
        assert.matches("Cite every claim", m.requests[1].system)
        idx:close()
        -- an index built with another embedder is refused, with what to do
        local _, err = rag.open(store, { embed = function(texts) return {} end })
        assert.are.equal("config", err.kind)
        assert.matches("rebuild it", err.message)
        _, err = rag.open(dir .. "/missing.db")
        assert.are.equal("io", err.kind)
        assert.matches("sibyl index", err.message)
    end)

    it("uses an LLM provider's embeddings in concurrent batches when asked", function()
        local dir = tmpdir()
        finally(function() os.execute("rm -rf " .. dir) end)
        local m = llm.mock{ dims = 32 }
        local store = dir .. "/llm.db"
        local stats = assert(rag.index{ path = FIXTURE, store = store, progress = false,
                                        embed = { provider = m, batch_size = 1, concurrency = 3 } })
        assert.are.equal(15, stats.indexed)
        assert.are.equal(stats.total_chunks, #m.requests)        -- one chunk per request here
        local idx = assert(rag.open(store, { embed = { provider = m } }))
        local hits = idx:search("Redis server counters and queues", { k = 1, mode = "vector" })
        assert.matches("redis%.md$", hits[1].path)
        idx:close()
        local _, err = rag.open(store)                            -- the hashing embedder: refused
        assert.are.equal("config", err.kind)
    end)

    it("sibyl index and sibyl ask work from the command line", function()
        local dir = tmpdir()
        finally(function() os.execute("rm -rf " .. dir) end)
        local store = dir .. "/cli.db"
        local r = helpers.run_cli({ "index", FIXTURE, "--store", store })
        assert.are.equal(0, r.code, r.err)
        assert.matches("15 files %(15 new or changed, 0 unchanged, 0 removed%)", r.out)
        r = helpers.run_cli({ "ask", "--store", store, "--offline", "--json", "what does EADDRINUSE mean" })
        assert.are.equal(0, r.code, r.err)
        local out = require("sibyl.json").decode(r.out)
        assert.are.equal("extractive", out.mode)
        assert.matches("ports%.md$", out.sources[1].path)
        r = helpers.run_cli({ "ask", "--store", dir .. "/none.db", "anything" })
        assert.are_not.equal(0, r.code)
        assert.matches("no index at", r.err)
    end)
end)
