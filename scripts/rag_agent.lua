-- rag_agent.lua -- answer a question about a folder of documents, with
-- citations, by an agent that searches the folder's index as often as it
-- needs to.
--
--   sibyl scripts/rag_agent.lua --mock                        -- offline: a scripted model
--   OPENAI_API_KEY=sk-... sibyl scripts/rag_agent.lua "How do deadlines work?"
--   sibyl scripts/rag_agent.lua --dir tests/fixtures/rag/docs --store /tmp/f.db "what is EADDRINUSE"
--
-- The steps: index the folder (doc/ by default; a second run only reads the
-- files that changed), give an agent one tool, search_docs, that runs a
-- hybrid search (BM25 + vectors) over the index, and let the model call it
-- (several times if the first search misses) before it answers. Every
-- passage the tool returns gets a number that stays the same for the whole
-- run, so the model can cite it as [n]; the script prints the answer and
-- the sources it cited.
--
-- To change it: the folder and store (--dir, --store), how many passages a
-- search returns (K), the system prompt (SYSTEM), the limits in RUN_OPTS.
-- For a one-shot answer without an agent, see `sibyl ask` (doc/rag.md).

local sibyl = require "sibyl"
local llm = require "sibyl.llm"
local agent = require "sibyl.agent"
local rag = require "sibyl.rag"

local K = 4                                -- passages per search
local SYSTEM = "You answer questions about the project's documentation. Use the search_docs tool "
    .. "to find passages (search again with other words if the first results miss), and answer "
    .. "only from them. Cite each claim with the passage's number, like [1]. If the passages do "
    .. "not hold the answer, say so."
local RUN_OPTS = { max_steps = 6, budget = { seconds = 120, tokens = 50000 } }


-- 1. Command line: [--mock] [--dir DIR] [--store FILE] [question]
local function parse_args(argv)
    local o = { dir = "doc", store = "/tmp/sibyl-rag-agent.db", mock = false,
                question = "What does sibyl.deadline do when the time is up?" }
    local i = 1
    while argv[i] do
        local a = argv[i]
        if a == "--mock" then o.mock = true
        elseif a == "--dir" then i = i + 1; o.dir = argv[i]
        elseif a == "--store" then i = i + 1; o.store = argv[i]
        else o.question = a end
        i = i + 1
    end
    return o
end


-- 2. The tool. `sources` numbers every passage once, in the order found, so
-- [n] means the same passage in every search of the run.
local function search_tool(idx, sources)
    local number_of = {}
    return {
        name = "search_docs",
        description = "Search the documentation. Returns numbered passages to cite as [n].",
        parameters = {
            type = "object",
            properties = {
                query = { type = "string", description = "what to look for, in a few words" },
                k = { type = "integer", minimum = 1, maximum = 10 },
            },
            required = { "query" },
        },
        fn = function(args)
            local hits, err = idx:search(args.query, { k = args.k or K })
            if not hits then return nil, err end
            local out = {}
            for _, h in ipairs(hits) do
                local n = number_of[h.id]
                if not n then
                    n = #sources + 1
                    number_of[h.id] = n
                    sources[n] = { n = n, path = h.path, line = h.line, heading = h.heading }
                end
                out[#out + 1] = { n = n, source = ("%s:%d"):format(h.path, h.line or 1), text = h.text }
            end
            if #out == 0 then return "no passage matches; try other words" end
            return { passages = out }
        end,
    }
end


-- 3. The model: scripted with --mock (a search, then an answer citing [1]),
-- else the default provider (OPENAI_API_KEY, ANTHROPIC_API_KEY, SIBYL_PROVIDER...).
local function scripted_model(question)
    return llm.mock{ replies = {
        { tool_calls = { { id = "s1", name = "search_docs", arguments = { query = question } } } },
        function(req)
            local result = req.messages[#req.messages].content       -- the tool's reply
            local first = result.passages and result.passages[1]
            if not first then return "The documentation does not say." end
            local text = first.text:gsub("^#[^\n]*\n+", ""):gsub("%s+", " ")
            local sentence = text:match("^(.-[%.!?])%s") or text:sub(1, 200)
            return ("From the documentation: %s [1]"):format(sentence)
        end,
    } }
end


-- 4. Run it.
local opts = parse_args(arg or {})
local stats, err = rag.index{ path = opts.dir, store = opts.store, progress = false }
if not stats then
    print(("indexing %s failed (%s): %s"):format(opts.dir, err.kind, err.message))
    os.exit(1)
end
print(("indexed %s: %d files (%d new or changed), %d chunks"):format(opts.dir, stats.files, stats.indexed,
                                                                      stats.total_chunks))
local idx = assert(rag.open(opts.store))
local sources = {}
local a = agent.new{
    llm = opts.mock and scripted_model(opts.question) or nil,   -- nil: the default provider
    system = SYSTEM,
    tools = { search_tool(idx, sources) },
}
RUN_OPTS.on_event = function(ev)
    if ev.type == "tool_start" then print(("   search_docs %q"):format(ev.arguments.query or "")) end
end

print("Q: " .. opts.question)
local r, rerr = a:run(opts.question, RUN_OPTS)
if not r then
    print(("failed (%s): %s"):format(rerr.kind, rerr.message))
    os.exit(1)
end
print("A: " .. r.content)
print("\nSources:")
for _, s in ipairs(sources) do
    local cited = r.content:find("[" .. s.n .. "]", 1, true) and "" or "  (not cited)"
    print(("  [%d] %s:%d  %s%s"):format(s.n, s.path, s.line or 1, s.heading or "", cited))
end
idx:close()
