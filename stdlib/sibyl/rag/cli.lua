-- sibyl.rag.cli -- `sibyl index DIR` and `sibyl ask "QUESTION"`.
--
--   sibyl index doc/ [--store F] [--size N] [--overlap N] [--embed hashing|llm]
--   sibyl ask "How do I stream a reply?" [--store F] [-k N] [--offline] [--json]
--
-- The store defaults to $SIBYL_INDEX, else .sibyl-index.db in the current
-- directory. `ask` uses a language model when one is configured (see
-- doc/llm.md) and answers extractively otherwise; --offline forces that.

local rag = require "sibyl.rag"

local tonumber, error, ipairs = tonumber, error, ipairs
local format = string.format

local _M = {}

local INDEX_USAGE = "usage: sibyl index DIR [--store FILE] [--size N] [--overlap N] [--embed hashing|llm]"
local ASK_USAGE = "usage: sibyl ask \"QUESTION\" [--store FILE] [-k N] [--offline] [--json]"


-- Options with a value (--name V or --name=V), flags, and positionals.
local function parse(args, with_value, flags, usage)
    local o, pos = {}, {}
    local i = 1
    while i <= #args do
        local a = args[i]
        local name, v = a:match("^%-%-?([%w_-]+)=(.*)$")
        if name and with_value[name] then
            o[name] = v
            i = i + 1
        elseif a:match("^%-") and with_value[a:gsub("^%-%-?", "")] then
            o[a:gsub("^%-%-?", "")] = args[i + 1] or error(usage, 0)
            i = i + 2
        elseif a:match("^%-") and flags[a:gsub("^%-%-?", "")] then
            o[a:gsub("^%-%-?", "")] = true
            i = i + 1
        elseif a == "-h" or a == "--help" then
            print(usage)
            os.exit(0)
        elseif a:match("^%-.") then
            error(format("unknown option %s\n%s", a, usage), 0)
        else
            pos[#pos + 1] = a
            i = i + 1
        end
    end
    return o, pos
end


local function store_of(o)
    return o.store or os.getenv("SIBYL_INDEX") or rag.defaults.store
end


--- sibyl index DIR ...
function _M.index()
    local o, pos = parse(arg, { store = true, size = true, overlap = true, embed = true }, {}, INDEX_USAGE)
    if #pos ~= 1 then error(INDEX_USAGE, 0) end
    local store = store_of(o)
    local stats, err = rag.index{
        path = pos[1], store = store, embed = o.embed,
        size = tonumber(o.size), overlap = tonumber(o.overlap),
    }
    if not stats then error("sibyl index: " .. tostring(err), 0) end
    print(format("indexed %s into %s: %d files (%d new or changed, %d unchanged, %d removed), %d chunks",
                 pos[1], store, stats.files, stats.indexed, stats.skipped, stats.removed, stats.total_chunks))
end


--- sibyl ask "QUESTION" ...
function _M.ask()
    local o, pos = parse(arg, { store = true, k = true, embed = true }, { offline = true, json = true }, ASK_USAGE)
    if #pos == 0 then error(ASK_USAGE, 0) end
    local question = table.concat(pos, " ")
    local idx, err = rag.open(store_of(o), { embed = o.embed })
    if not idx then error("sibyl ask: " .. tostring(err), 0) end
    local a, aerr = idx:answer(question, { k = tonumber(o.k), llm = o.offline and false or nil })
    idx:close()
    if not a then error("sibyl ask: " .. tostring(aerr), 0) end
    if o.json then
        local json = require "sibyl.json"
        local hits = {}
        for i, h in ipairs(a.hits) do hits[i] = { path = h.path, line = h.line, heading = h.heading, score = h.score } end
        print(json.encode({ question = question, answer = a.text, mode = a.mode, sources = hits }))
    else
        print(require("sibyl.rag.answer").format(a))
    end
end


return _M
