-- demo.lua -- ask questions about a folder of documents, offline: what
-- `make run` shows.
--
--   sibyl scripts/demo.lua                      -- settings from scripts/demo.yaml
--   SIBYL_QUESTION="How do I embed Sibyl in a C program?" sibyl scripts/demo.lua
--   sibyl scripts/demo.lua --mock               -- the answer from the scripted mock model
--
-- It indexes the folder (incrementally: unchanged files are skipped), then
-- answers with hybrid retrieval (BM25 + vectors). With no language model
-- configured the answer is extractive: the best-matching sentences with
-- their sources. Set OPENAI_API_KEY (or OPENAI_BASE_URL for a local
-- server, or ANTHROPIC_API_KEY) and the same script asks a model to write
-- the answer from those sources, with citations.
--
-- To change it: edit demo.yaml, pass `embed = "llm"` to rag.index/rag.open
-- for model embeddings, or call idx:search yourself and build your prompt.

local rag = require "sibyl.rag"
local config = require "sibyl.config"
local answer = require "sibyl.rag.answer"

local here = (arg and arg[0] or "scripts/demo.lua"):match("^(.*)/") or "."
local cfg = assert(config.load(here .. "/demo.yaml")).demo

-- 1. Index the folder into one SQLite file (chunks, FTS5, vectors).
local stats = assert(rag.index{ path = cfg.folder, store = cfg.store })
print(("indexed %s: %d files (%d changed), %d chunks in %s"):format(
    cfg.folder, stats.files, stats.indexed, stats.total_chunks, cfg.store))

-- 2. Ask. With --mock a scripted model "writes" the answer (offline), to
-- show the model path; without it, a configured provider does, or the
-- answer is extractive when none is configured.
local model
for _, a in ipairs(arg or {}) do
    if a == "--mock" then
        model = require("sibyl.llm").mock{
            default = "(mock model) The rotation rules are in source [1]; see also [2].",
        }
    end
end
local idx = assert(rag.open(cfg.store))
local a = assert(idx:answer(cfg.question, { k = cfg.k, llm = model }))
idx:close()
print()
print("Q: " .. cfg.question)
print()
print(answer.format(a))
