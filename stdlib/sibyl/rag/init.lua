-- sibyl.rag -- retrieval-augmented generation over a folder of documents.
--
--   local rag = require "sibyl.rag"
--   local stats = assert(rag.index{ path = "doc", store = "doc.db" })     -- incremental
--   local idx = assert(rag.open("doc.db"))
--   local hits = idx:search("how do I stream a reply?", { k = 5 })       -- hybrid: BM25 + vectors
--   local a = idx:answer("how do I stream a reply?")                     -- LLM, or extractive offline
--   print(a.text); for _, s in ipairs(a.sources) do print(s.n, s.path, s.line) end
--
-- Embeddings: the offline `hashing` embedder (C, sibyl.vec.hash_embed) by
-- default; `embed = "llm"` uses sibyl.llm's embeddings; or any
-- function(texts) returning a list of float arrays.

local sibyl = require "sibyl"
local fs = require "sibyl.fs"
local sqlite = require "sibyl.sqlite"
local store = require "sibyl.rag.store"
local chunker = require "sibyl.rag.chunk"
local digest = require("sibyl.cache.core").digest
local ffi = require "ffi"

local type, pairs, ipairs, tostring, setmetatable, error, pcall =
    type, pairs, ipairs, tostring, setmetatable, error, pcall
local format, match, lower, gsub, gmatch, sub = string.format, string.match, string.lower,
    string.gsub, string.gmatch, string.sub
local concat, sort = table.concat, table.sort
local min, max = math.min, math.max

local _M = { _VERSION = "0.1.0" }

_M.defaults = {
    store = ".sibyl-index.db",
    dims = 384,                 -- hashing embedder
    batch_size = 64,            -- texts per embedding call
    concurrency = 4,            -- embedding calls in flight (LLM embedders)
    k = 5,                      -- results of search
    candidates = 50,            -- per retriever, before fusion
    rrf_k = 60,                 -- reciprocal rank fusion constant
    extensions = {
        "txt", "md", "markdown", "rst", "lua", "c", "h", "cc", "cpp", "hpp", "py", "js", "ts",
        "go", "rs", "java", "rb", "sh", "yaml", "yml", "toml", "json", "sql", "html", "css",
    },
    skip = { ".git", "node_modules", "build", "build-asan", "__pycache__", ".venv" },
}


-- ------------------------------------------------------------ embedders

--- The embedder for opts.embed: {name, dims, embed(texts) -> list of float[d]}.
function _M.embedder(spec, dims)
    dims = dims or _M.defaults.dims
    if spec == nil or spec == "hashing" then
        local vec = require "sibyl.vec"
        return {
            name = "hashing-" .. dims, dims = dims,
            embed = function(texts)
                local out = {}
                for i, t in ipairs(texts) do out[i] = vec.hash_embed(t, { dims = dims }) end
                return out
            end,
        }
    elseif spec == "llm" or (type(spec) == "table" and spec.provider) then
        local llm = require "sibyl.llm"
        local o = type(spec) == "table" and spec or {}
        return {
            name = "llm-" .. tostring(o.model or "default"), dims = nil,
            embed = function(texts)
                local vectors, info = llm.embed{ input = texts, model = o.model, provider = o.provider,
                                                 batch_size = o.batch_size or _M.defaults.batch_size,
                                                 concurrency = o.concurrency or _M.defaults.concurrency }
                if not vectors then return nil, info end
                return vectors
            end,
        }
    elseif type(spec) == "function" then
        return { name = "custom", dims = dims, embed = spec }
    elseif type(spec) == "table" and spec.embed then
        return spec
    end
    error("rag: embed must be nil (hashing), \"hashing\", \"llm\", a function(texts) or {name=, embed=}", 3)
end


-- ---------------------------------------------------------------- index

local function ext_set(list)
    local s = {}
    for _, e in ipairs(list) do s[e] = true end
    return s
end


-- Files under path (a file or a directory), sorted, filtered.
local function walk(path, exts, skip, out)
    local names = fs.list(path)
    if not names then                       -- a file
        local ext = match(path, "%.([%w]+)$")
        if ext and exts[lower(ext)] then out[#out + 1] = path end
        return out
    end
    for _, name in ipairs(names) do
        if sub(name, 1, 1) ~= "." and not skip[name] then
            walk(path == "." and name or (gsub(path, "/+$", "") .. "/" .. name), exts, skip, out)
        end
    end
    return out
end


pcall(ffi.cdef, "int isatty(int fd);")      -- fails harmlessly if declared elsewhere

local function isatty(fd)
    local ok, r = pcall(function() return ffi.C.isatty(fd) end)
    return ok and r == 1
end


local function progress_bar(done, total, name)
    local width = 30
    local filled = total > 0 and math.floor(width * done / total) or width
    io.stderr:write(format("\r  indexing [%s%s] %d/%d %-40s", string.rep("#", filled),
                           string.rep(".", width - filled), done, total, sub(name or "", -40)))
    if done == total then io.stderr:write("\n") end
end


--- Index the files under opts.path into opts.store. Unchanged files (same
-- content hash) are skipped; files gone from the folder are removed.
-- Returns {files, indexed, skipped, removed, chunks} or nil, err.
function _M.index(opts)
    if type(opts) ~= "table" or type(opts.path) ~= "string" then
        error("rag.index: opts.path (a file or folder) is required", 2)
    end
    local d = _M.defaults
    local emb = _M.embedder(opts.embed, opts.dims)
    local db, err = store.open(opts.store or d.store)
    if not db then return nil, err end
    local ok, merr = store.check_embedder(db, emb.name, emb.dims or 0, true)
    if not ok then
        db:close()
        return nil, merr
    end
    local files = walk(opts.path, ext_set(opts.extensions or d.extensions), ext_set(opts.skip or d.skip), {})
    local progress = opts.progress
    if progress == nil then progress = isatty(2) and progress_bar or nil end
    if progress == false then progress = nil end
    local stats = { files = #files, indexed = 0, skipped = 0, removed = 0, chunks = 0 }
    local seen = {}

    for i, path in ipairs(files) do
        seen[path] = true
        local text, rerr = fs.read(path)
        if not text then
            db:close()
            return nil, rerr
        end
        local hash = digest(text)
        local have = db:row("SELECT hash FROM files WHERE path = ?", { path })
        if have and have.hash == hash then
            stats.skipped = stats.skipped + 1
        else
            local chunks = chunker.split(text, { source = path, size = opts.size, overlap = opts.overlap })
            -- One call per file: an LLM embedder batches and runs the batches
            -- concurrently itself (batch_size, concurrency).
            local texts = {}
            for j, c in ipairs(chunks) do
                texts[j] = c.heading and (c.heading .. "\n" .. c.text) or c.text
            end
            local vectors, eerr = {}, nil
            if #texts > 0 then vectors, eerr = emb.embed(texts) end
            if not vectors then
                db:close()
                return nil, eerr
            end
            local tok, terr = db:transaction(function()
                db:run("DELETE FROM chunks WHERE path = ?", { path })
                for j, c in ipairs(chunks) do
                    db:run("INSERT INTO chunks(path, idx, start, stop, line, heading, text, vec) "
                           .. "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           { path, c.index, c.start, c.stop, c.line, c.heading or sqlite.null, c.text,
                             vectors[j] })                  -- an FFI float array binds as a BLOB
                end
                db:run("INSERT INTO files(path, hash, size, chunks, indexed_at) VALUES (?, ?, ?, ?, ?) "
                       .. "ON CONFLICT(path) DO UPDATE SET hash = excluded.hash, size = excluded.size, "
                       .. "chunks = excluded.chunks, indexed_at = excluded.indexed_at",
                       { path, hash, #text, #chunks, os.time() })
                return true
            end)
            if not tok then
                db:close()
                return nil, terr
            end
            stats.indexed = stats.indexed + 1
            stats.chunks = stats.chunks + #chunks
        end
        if progress then progress(i, #files, path) end
    end

    -- Files indexed before under this path and gone now.
    local prefix = gsub(opts.path, "/+$", "")
    local rows = db:query("SELECT path FROM files")
    for _, row in ipairs(rows or {}) do
        local p = row.path
        if not seen[p] and (p == prefix or sub(p, 1, #prefix + 1) == prefix .. "/") then
            db:transaction(function()
                db:run("DELETE FROM chunks WHERE path = ?", { p })
                db:run("DELETE FROM files WHERE path = ?", { p })
                return true
            end)
            stats.removed = stats.removed + 1
        end
    end
    stats.total_chunks = db:row("SELECT count(*) AS n FROM chunks").n
    db:close()
    return stats
end


-- ------------------------------------------------------------- retrieval

local index = {}
index.__index = index


--- Open an index for searching: an object with :search, :answer, :close.
-- opts: embed (must match the one it was built with), readonly (true).
function _M.open(path, opts)
    opts = opts or {}
    path = path or _M.defaults.store
    local f = io.open(path, "rb")
    if not f then
        return nil, sibyl.error("io", format("rag: no index at %s; build one with `sibyl index <folder>` "
                                             .. "or rag.index{path=, store=}", path))
    end
    f:close()
    local db, err = store.open(path, { readonly = opts.readonly ~= false })
    if not db then return nil, err end
    local emb = _M.embedder(opts.embed, opts.dims)
    local ok, merr = store.check_embedder(db, emb.name, emb.dims or 0, false)
    if not ok then
        db:close()
        return nil, merr
    end
    return setmetatable({ db = db, emb = emb, path = path }, index)
end


-- Load every chunk vector into a matrix (once; `reload` after re-indexing).
function index:vectors()
    if self.matrix then return self.matrix, self.ids end
    local vec = require "sibyl.vec"
    local rows, err = self.db:query("SELECT id, vec FROM chunks ORDER BY id", nil, { max_rows = 10000000 })
    if not rows then return nil, err end
    local m, ids
    for _, row in ipairs(rows) do
        if row.vec then
            if not m then
                m = vec.matrix(#row.vec / 4, #rows)
                ids = {}
            end
            m:add(row.vec)
            ids[#ids + 1] = row.id
        end
    end
    self.matrix, self.ids = m, ids or {}
    return m, self.ids
end


function index:reload()
    if self.matrix then self.matrix:close() end
    self.matrix, self.ids = nil, nil
end


local STOP = {}
for w in gmatch([[a an and are as at be but by can do does for from has have how i if in is it
    its of on or so that the their then there these this to was what when where which who why
    will with you your]], "%a+") do STOP[w] = true end

--- The words of a question worth searching for (lower case, no stop words).
function _M.terms(q)
    local out, seen = {}, {}
    for w in gmatch(lower(q), "[%w_]+") do
        if #w > 1 and not STOP[w] and not seen[w] then
            seen[w] = true
            out[#out + 1] = w
        end
    end
    return out
end


-- FTS5 query: every term quoted (no syntax from user input), OR-ed.
local function fts_query(q)
    local parts = {}
    for _, w in ipairs(_M.terms(q)) do parts[#parts + 1] = '"' .. gsub(w, '"', '""') .. '"' end
    return concat(parts, " OR ")
end


local function passes(filter, row)
    if not filter then return true end
    if filter.path and sub(row.path, 1, #filter.path) ~= filter.path then return false end
    if filter.path_match and not match(row.path, filter.path_match) then return false end
    if filter.heading and not (row.heading and match(lower(row.heading), lower(filter.heading))) then
        return false
    end
    return true
end


--- Search: hits {id, path, line, heading, text, score, fts_rank, vec_rank},
-- best first. opts: k (5), mode ("hybrid" | "vector" | "fts"),
-- candidates (50 per retriever), filter {path = prefix, path_match = Lua
-- pattern, heading = pattern}.
function index:search(question, opts)
    if type(question) ~= "string" then error("index:search: question must be a string", 2) end
    opts = opts or {}
    local d = _M.defaults
    local k, n = opts.k or d.k, opts.candidates or d.candidates
    local mode = opts.mode or "hybrid"
    local scores, fts_rank, vec_rank = {}, {}, {}
    local rrf = opts.rrf_k or d.rrf_k
    local want = opts.filter and n * 4 or n

    if mode ~= "vector" then
        local q = fts_query(question)
        if q ~= "" then
            local rows = self.db:query("SELECT rowid AS id FROM chunks_fts WHERE chunks_fts MATCH ? "
                                       .. "ORDER BY bm25(chunks_fts, 1.0, 2.0) LIMIT ?", { q, want })
            for r, row in ipairs(rows or {}) do
                fts_rank[row.id] = r
                scores[row.id] = (scores[row.id] or 0) + 1 / (rrf + r)
            end
        end
    end
    if mode ~= "fts" then
        local m, ids = self:vectors()
        if m then
            local qv = self.emb.embed({ question })
            for r, row in ipairs((m:search(qv[1], min(want, #ids)))) do
                local id = ids[row]
                vec_rank[id] = r
                scores[id] = (scores[id] or 0) + 1 / (rrf + r)
            end
        end
    end

    local order = {}
    for id in pairs(scores) do order[#order + 1] = id end
    sort(order, function(a, b)
        if scores[a] ~= scores[b] then return scores[a] > scores[b] end
        return a < b
    end)
    -- One query for the rows: the first k, or every candidate with a filter.
    local fetch = {}
    for i = 1, opts.filter and #order or min(k, #order) do fetch[i] = order[i] end
    local by_id = {}
    if #fetch > 0 then
        local rows, err = self.db:query("SELECT id, path, line, heading, text, start, stop FROM chunks "
                                        .. "WHERE id IN (SELECT value FROM json_each(?))",
                                        { require("sibyl.json").encode(fetch) })
        if not rows then return nil, err end
        for _, row in ipairs(rows) do by_id[row.id] = row end
    end
    local hits = {}
    for _, id in ipairs(fetch) do
        if #hits >= k then break end
        local row = by_id[id]
        if row and passes(opts.filter, row) then
            row.score, row.fts_rank, row.vec_rank = scores[id], fts_rank[id], vec_rank[id]
            hits[#hits + 1] = row
        end
    end
    return hits
end


--- Answer a question from the index: {text, sources, mode ("llm" or
-- "extractive"), hits}. See sibyl/rag/answer.lua.
function index:answer(question, opts)
    return require("sibyl.rag.answer").answer(self, question, opts or {})
end


function index:close()
    if self.db then
        self.db:close()
        self.db = nil
        self:reload()
    end
end


return _M
