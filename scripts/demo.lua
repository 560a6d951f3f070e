-- demo.lua -- an offline "doc scout": answers a question from a folder of
-- Markdown files with no model and no network, the way `make run` shows it.
--
--   sibyl scripts/demo.lua                      -- uses scripts/demo.yaml
--   SIBYL_QUESTION="How do I embed Sibyl?" sibyl scripts/demo.lua
--
-- What it shows: configuration from YAML with ${ENV} defaults, every file
-- read concurrently on the worker pool (one task per file) under a
-- deadline, and plain Lua for the "thinking". To change it: edit
-- demo.yaml, or replace score() with your own ranking. (The RAG module
-- replaces this keyword scoring with hybrid vector + BM25 retrieval.)

local sibyl = require "sibyl"
local fs = require "sibyl.fs"
local config = require "sibyl.config"

local here = (arg and arg[0] or "scripts/demo.lua"):match("^(.*)/") or "."
local cfg = assert(config.load(here .. "/demo.yaml")).demo


-- Words that say nothing about the topic of a question.
local STOP = {}
for w in ("how what why when where which who does the and for with can you are this that "
          .. "work works use into from have has get"):gmatch("%a+") do STOP[w] = true end


-- The question's topic words, lower-case, with a plural "s" trimmed.
local function words(text)
    local out = {}
    for w in text:lower():gmatch("[%a_][%w_]+") do
        if #w >= 3 and not STOP[w] then out[#out + 1] = (w:gsub("(%w%w%w)s$", "%1")) end
    end
    return out
end


-- How well a passage matches: each question word it contains counts 1,
-- and every further mention a little more.
local function score(passage, qwords)
    local text, s = passage:lower(), 0
    for _, w in ipairs(qwords) do
        local _, n = text:gsub(w, "")
        if n > 0 then s = s + 1 + 0.1 * (n - 1) end
    end
    return s
end


-- Read every Markdown file of the folder concurrently: one task per file.
local function read_folder(folder)
    local names, err = fs.list(folder)
    if not names then return nil, err end
    local tasks, paths = {}, {}
    for _, name in ipairs(names) do
        if name:match("%.md$") then
            paths[#paths + 1] = folder .. "/" .. name
            tasks[#tasks + 1] = sibyl.spawn(fs.read, paths[#paths])
        end
    end
    local texts, errs = sibyl.gather(tasks, { all = true })
    local docs = {}
    for i, path in ipairs(paths) do
        if texts[i] then docs[#docs + 1] = { path = path, text = texts[i] }
        else print(("skipped %s: %s"):format(path, tostring(errs[i]))) end
    end
    return docs
end


local t0 = sibyl.now()
local docs, err = sibyl.deadline(cfg.read_deadline, read_folder, cfg.folder)
if not docs then
    print("cannot read " .. cfg.folder .. ": " .. tostring(err))
    os.exit(1)
end

-- Split into paragraphs and rank them against the question.
local qwords, hits = words(cfg.question), {}
for _, doc in ipairs(docs) do
    local prose = doc.text:gsub("\n```.-\n```", "\n")   -- code blocks are not answers
    for para in (prose .. "\n\n"):gmatch("(.-)\n%s*\n") do
        local s = score(para, qwords)
        local prose_line = not para:match("^%s*[|#]")          -- skip tables and headings
        if s > 0 and #para > 40 and prose_line then
            hits[#hits + 1] = { score = s, path = doc.path, text = para }
        end
    end
end
table.sort(hits, function(a, b) return a.score > b.score end)

print(("Q: %s"):format(cfg.question))
print(("(%d files read concurrently in %.1f ms; extractive answer, no model configured)\n")
    :format(#docs, (sibyl.now() - t0) * 1000))
for i = 1, math.min(cfg.top, #hits) do
    local h = hits[i]
    print(("[%d] %s\n%s\n"):format(i, h.path, h.text:gsub("%s+", " "):sub(1, 400)))
end
if #hits == 0 then print("No passage matches the question.") end
