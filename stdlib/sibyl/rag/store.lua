-- sibyl.rag.store -- the SQLite side of a RAG index: files, chunks with
-- their vectors (BLOBs), and an FTS5 table kept in step by triggers.
--
-- One database file holds everything, so an index can be copied, shared or
-- opened read-only. Vectors are float32 BLOBs; `meta` records which
-- embedder made them, so a mismatch is caught instead of mixing spaces.

local sqlite = require "sibyl.sqlite"

local type, tostring, error = type, tostring, error
local format = string.format

local _M = {}

local SCHEMA = [[
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files(
    path TEXT PRIMARY KEY, hash TEXT NOT NULL, size INTEGER, chunks INTEGER, indexed_at REAL);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, idx INTEGER, start INTEGER, stop INTEGER,
    line INTEGER, heading TEXT, text TEXT NOT NULL, vec BLOB);
CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, heading, content = 'chunks', content_rowid = 'id', tokenize = 'porter unicode61');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, heading) VALUES ('delete', old.id, old.text, old.heading);
END;
]]


--- Open (and create) the store at path. opts.readonly opens it read-only.
function _M.open(path, opts)
    opts = opts or {}
    local db, err = sqlite.open(path, { readonly = opts.readonly, create = not opts.readonly })
    if not db then return nil, err end
    if not opts.readonly then
        local ok, serr = db:exec(SCHEMA)
        if not ok then
            db:close()
            return nil, serr
        end
    end
    return db
end


function _M.get_meta(db, key)
    local row = db:row("SELECT value FROM meta WHERE key = ?", { key })
    return row and row.value
end


function _M.set_meta(db, key, value)
    return db:run("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                  { key, tostring(value) })
end


--- Check or record the embedder that made the vectors. Returns true, or
-- nil, err (kind "config") when the index was built with another one.
function _M.check_embedder(db, name, dims, record)
    local have = _M.get_meta(db, "embedder")
    if have and have ~= name then
        return nil, require("sibyl").error("config", format(
            "the index was built with the embedder %q, not %q; rebuild it (delete the store) or "
            .. "use the same embedder", have, name))
    end
    if not have and record then
        _M.set_meta(db, "embedder", name)
        _M.set_meta(db, "dims", dims)
    end
    return true
end


return _M
