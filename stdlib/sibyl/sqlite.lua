-- sibyl.sqlite -- SQLite databases whose queries run on the worker pool.
-- The work is done in C (runtime/src/sqlite.c and sqlite_engine.c,
-- `sibyl.sqlite.core`); this layer re-exports it and adds db:each(),
-- db:transaction() and sqlite.blob(). Reference: doc/sqlite.md.
--
--   local sqlite = require "sibyl.sqlite"
--   local db = assert(sqlite.open("app.db"))              -- or ":memory:"
--   db:exec("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
--   local r = db:run("INSERT INTO notes(body) VALUES (?)", { "hello" })
--   local rows = db:query("SELECT * FROM notes WHERE id = :id", { id = r.last_insert_id })
--   for row in db:each("SELECT * FROM notes") do ... end
--   db:transaction(function(db) ... return true end)
--
-- Caveats:
--  * One connection per db object and one statement at a time on it: a
--    query issued while another runs waits its turn. Open a second db for
--    parallel reads.
--  * While a transaction is open, queries of other tasks on the same db
--    wait until it ends (they would otherwise run inside it).
--  * A db:each() loop left with `break` keeps its statement open until the
--    cursor (second value of db:each) is closed or collected.

local core = require "sibyl.sqlite.core"
local sibyl = require "sibyl"
local ffi = require "ffi"

local type, error, select, tostring, pcall, pairs, getmetatable =
    type, error, select, tostring, pcall, pairs, getmetatable
local current = sibyl.current
local ffi_sizeof, ffi_string, ffi_typeof, ffi_istype =
    ffi.sizeof, ffi.string, ffi.typeof, ffi.istype

local _M = { _VERSION = "0.1.0" }

--- sqlite.open(path [, opts]) -> db | nil, err  (see doc/sqlite.md for opts).
_M.open = core.open

--- sqlite.null: binds NULL by name (a Lua table cannot hold nil). Same value as json.null.
_M.null = core.null

--- The SQLite library version, e.g. "3.40.1".
_M.sqlite_version = core.sqlite_version

_M.DEFAULT_BUSY_TIMEOUT = core.DEFAULT_BUSY_TIMEOUT
_M.DEFAULT_CACHE_SIZE = core.DEFAULT_CACHE_SIZE
_M.DEFAULT_MAX_ROWS = core.DEFAULT_MAX_ROWS
_M.DEFAULT_BATCH = core.DEFAULT_BATCH

local db_mt = core._db_mt
local cursor_mt = core._cursor_mt
local tx_begin, tx_end, new_cursor = db_mt._tx_begin, db_mt._tx_end, db_mt._cursor
local fetch, cursor_close = cursor_mt._fetch, cursor_mt.close

local int64_t, uint64_t = ffi_typeof("int64_t"), ffi_typeof("uint64_t")


-- The bytes of an FFI array or struct; pointers have no size and raise.
local function cdata_bytes(v, nbytes, who)
    if nbytes == nil then
        local desc = tostring(ffi_typeof(v))
        if desc:find("[%*&]>$") then
            error(who .. ": " .. desc .. " is a pointer and has no size; "
                  .. "pass sqlite.blob(ptr, nbytes)", 3)
        end
        nbytes = ffi_sizeof(v)
        if nbytes == nil then
            error(who .. ": cannot tell the size of " .. desc
                  .. "; pass sqlite.blob(ptr, nbytes)", 3)
        end
    end
    return ffi_string(v, nbytes)
end


-- Called by the C binder for cdata parameters: an int64 binds as INTEGER
-- (returned as decimal text plus true), anything else as a BLOB of its bytes.
core._set_cdata_converter(function(v)
    if ffi_istype(int64_t, v) or ffi_istype(uint64_t, v) then
        return (tostring(v):gsub("U?LL$", "")), true
    end
    return cdata_bytes(v, nil, "sqlite")
end)


--- sqlite.blob(data [, nbytes]) -> a value that binds as a BLOB.
-- data is a Lua string (its first nbytes bytes when given) or FFI cdata: an
-- array (its whole size unless nbytes says otherwise) or a pointer with nbytes.
function _M.blob(data, nbytes)
    if nbytes ~= nil and (type(nbytes) ~= "number" or nbytes < 0 or nbytes % 1 ~= 0) then
        error("sqlite.blob: nbytes must be a whole number >= 0, got " .. tostring(nbytes), 2)
    end
    local t = type(data)
    if t == "string" then
        return core.blob(nbytes and data:sub(1, nbytes) or data)
    elseif t == "cdata" then
        return core.blob(cdata_bytes(data, nbytes, "sqlite.blob"))
    end
    error("sqlite.blob: expected a string or FFI cdata, got " .. t, 2)
end


--- sqlite.is_blob(v) -> whether v was made by sqlite.blob.
function _M.is_blob(v)
    return type(v) == "table" and getmetatable(v) == core._blob_mt
end


--- db:each(sql [, params [, opts]]) -> iterator, cursor | nil, err
-- Streams rows, fetching `batch` rows (default 256) per trip to a worker.
-- Errors of the first batch (syntax, binding) come back as nil, err; a
-- failure after the loop started is raised as the error object. Close the
-- cursor after leaving the loop early.
function db_mt.each(db, sql, params, opts)
    local cur, err = new_cursor(db, sql, params, opts)
    if not cur then
        return nil, err
    end
    local batch, eof = fetch(cur)
    if not batch then
        cursor_close(cur)
        return nil, eof
    end
    local i, n = 0, #batch
    local function iter()
        i = i + 1
        if i > n then
            if eof then
                cursor_close(cur)
                return nil
            end
            local ferr
            batch, ferr = fetch(cur)
            if not batch then
                cursor_close(cur)
                error(ferr, 2)
            end
            eof = ferr
            i, n = 1, #batch
            if n == 0 then
                cursor_close(cur)
                return nil
            end
        end
        return batch[i]
    end
    return iter, cur
end


local function finish(db, ok, ...)
    if not ok then
        tx_end(db, false)
        error((...), 0)
    end
    if (...) == nil and select("#", ...) >= 2 and select(2, ...) ~= nil then
        tx_end(db, false)
        return ...
    end
    local cok, cerr = tx_end(db, true)
    if not cok then
        tx_end(db, false)
        return nil, cerr
    end
    if (...) == nil then
        return true
    end
    return ...
end


--- db:transaction(fn [, {mode = "immediate"}]) -> fn's results | nil, err
-- BEGIN (a SAVEPOINT when nested), fn(db), COMMIT. Rolls back when fn raises
-- (the error is raised again) or returns nil, err (passed on). mode is
-- "immediate" (default; "deferred" on read-only dbs), "deferred" or "exclusive".
function db_mt.transaction(db, fn, opts)
    if type(fn) ~= "function" then
        error("db:transaction: fn must be a function, got " .. type(fn), 2)
    end
    local mode
    if opts ~= nil then
        if type(opts) ~= "table" then
            error("db:transaction: options must be a table, got " .. type(opts), 2)
        end
        for k in pairs(opts) do
            if k ~= "mode" then
                error("db:transaction: unknown option '" .. tostring(k) .. "' (known: mode)", 2)
            end
        end
        mode = opts.mode
    end
    local ok, err = tx_begin(db, current(), mode)
    if not ok then
        return nil, err
    end
    return finish(db, pcall(fn, db))
end


return _M
