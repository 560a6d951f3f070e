-- sibyl.sqlite: SQLite on the worker pool.

local sibyl = require "sibyl"
local sqlite = require "sibyl.sqlite"
local json = require "sibyl.json"
local ffi = require "ffi"
local helpers = require "helpers"

-- The rows 1..limit (limit is SQL: a number or "?"), or endless without limit.
local function count_to(limit, select)
    return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
           .. (limit and " WHERE x < " .. limit or "") .. ") " .. (select or "SELECT x FROM c")
end

-- 10^7 rows of a recursive CTE: about 1-2 s of work on a worker.
local SLOW = count_to(10000000, "SELECT count(*) AS n FROM c")


local function tmpdb()
    local path = os.tmpname()
    os.remove(path)
    return path .. ".db"
end


local function rm(path)
    for _, suffix in ipairs({ "", "-wal", "-shm", "-journal" }) do
        os.remove(path .. suffix)
    end
end


local function mem()
    return assert(sqlite.open(":memory:"))
end


describe("sibyl.sqlite", function()

    describe("open and close", function()
        it("opens :memory:, prints its path, closes idempotently", function()
            local db = mem()
            assert.are.equal("sibyl.sqlite.db (:memory:)", tostring(db))
            assert.are.equal(":memory:", db:path())
            assert.is_true(db:close())
            assert.is_true(db:close())
            assert.are.equal("sibyl.sqlite.db (closed)", tostring(db))
            local rows, err = db:query("SELECT 1")
            assert.is_nil(rows)
            assert.are.equal("closed", err.kind)
            assert.matches("sqlite.open", err.message)
        end)

        it("opens a file in WAL mode by default and reopens it", function()
            local path = tmpdb()
            local db = assert(sqlite.open(path))
            assert.matches(path, tostring(db), 1, true)
            assert.are.equal("wal", db:row("PRAGMA journal_mode").journal_mode)
            assert.is_true(db:exec("CREATE TABLE t(x); INSERT INTO t VALUES (42)"))
            db:close()
            local db2 = assert(sqlite.open(path, { wal = false }))
            assert.are.equal(42, db2:row("SELECT x FROM t").x)
            db2:close()
            rm(path)
        end)

        it("reports open failures as kind io or sqlite with the path", function()
            local db, err = sqlite.open("/nonexistent-dir/x.db")
            assert.is_nil(db)
            assert.are.equal("io", err.kind)
            assert.are.equal("SQLITE_CANTOPEN", err.code)
            assert.matches("/nonexistent%-dir/x.db", err.message)

            local path = tmpdb()
            db, err = sqlite.open(path, { create = false })
            assert.is_nil(db)
            assert.are.equal("io", err.kind)
            assert.matches("create = true", err.message)

            local junk = helpers.tmpfile(string.rep("not a database ", 100))
            db, err = sqlite.open(junk)
            assert.is_nil(db)
            assert.are.equal("sqlite", err.kind)
            assert.are.equal("SQLITE_NOTADB", err.code)
            os.remove(junk)
        end)

        it("raises on misuse: unknown options, bad types, outside a task", function()
            assert.has_error(function() sqlite.open(":memory:", { nope = 1 }) end,
                             "sqlite.open: unknown option 'nope' (known: readonly, wal, busy_timeout, "
                             .. "cache_size, create, max_rows, int64, batch)")
            assert.has_error(function() sqlite.open(":memory:", { readonly = "yes" }) end)
            assert.has_error(function() sqlite.open(":memory:", { cache_size = -1 }) end)
            local r = helpers.run_cli({ "-e", [[
                local sqlite = require "sibyl.sqlite"
                local co = coroutine.create(function() return sqlite.open(":memory:") end)
                print(coroutine.resume(co))
            ]] })
            assert.matches("^true", r.out)   -- a coroutine inside the main task is inside the task
        end)
    end)

    describe("parameters", function()
        it("binds positional ?, ?N and named :name @name $name values", function()
            local db = mem()
            assert.are.same({ a = 1, b = "two", c = 3 },
                            db:row("SELECT ? AS a, ? AS b, ? AS c", { 1, "two", 3 }))
            assert.are.same({ a = "y", b = "x" }, db:row("SELECT ?2 AS a, ?1 AS b", { "x", "y" }))
            assert.are.same({ a = 1, b = 2, c = 3 },
                            db:row("SELECT :a AS a, @b AS b, $c AS c", { a = 1, b = 2, c = 3 }))
            assert.are.same({ a = 5, b = 5 }, db:row("SELECT :v AS a, :v AS b", { v = 5 }))
            db:close()
        end)

        it("keeps an injection string as data", function()
            local db = mem()
            db:exec("CREATE TABLE users(name TEXT); INSERT INTO users VALUES ('alice')")
            local evil = "x'); DROP TABLE users; --"
            assert.are.equal(1, db:run("INSERT INTO users VALUES (?)", { evil }).changes)
            assert.are.equal(0, #db:query("SELECT * FROM users WHERE name = ?", { "' OR '1'='1" }))
            assert.are.equal(evil, db:row("SELECT name FROM users WHERE name = :n", { n = evil }).name)
            assert.are.equal(2, db:row("SELECT count(*) AS n FROM users").n)
            db:close()
        end)

        it("binds missing values as NULL and refuses extra or misspelt ones", function()
            local db = mem()
            assert.are.same({ b = 2 }, db:row("SELECT ? AS a, ? AS b, ? AS c", { nil, 2 }))
            assert.are.same({}, db:row("SELECT :a AS a", {}))
            local _, err = db:row("SELECT ? AS a", { 1, 2 })
            assert.are.equal("sqlite", err.kind)
            assert.are.equal("SQLITE_RANGE", err.code)
            assert.matches("takes 1 parameter but params holds 2", err.message)
            _, err = db:row("SELECT :name AS a", { nmae = 1 })
            assert.matches("params.nmae matches no :nmae", err.message)
            db:close()
        end)

        it("raises on values and keys it cannot bind", function()
            local db = mem()
            assert.has_error(function() db:query("SELECT ?", { {} }) end)
            assert.has_error(function() db:query("SELECT ?", { print }) end)
            assert.has_error(function() db:query("SELECT ?", "x") end)
            assert.has_error(function() db:query("SELECT ?", { [0.5] = 1 }) end)
            assert.has_error(function() db:exec("SELECT ?", { 1 }) end)
            assert.has_error(function() db:query("SELECT 1", nil, { bogus = true }) end)
            -- the db is still fine after a raise
            assert.are.equal(1, db:row("SELECT 1 AS x").x)
            db:close()
        end)
    end)

    describe("types", function()
        it("maps nil, json.null, booleans, integers, doubles, text and blobs", function()
            local db = mem()
            db:exec("CREATE TABLE v(k TEXT, x)")
            local cases = {
                { "nil", nil, "null", nil },
                { "sqlite.null", sqlite.null, "null", nil },
                { "json.null", json.null, "null", nil },
                { "true", true, "integer", 1 },
                { "false", false, "integer", 0 },
                { "int", 42, "integer", 42 },
                { "negative", -7, "integer", -7 },
                { "double", 1.25, "real", 1.25 },
                { "huge double", 1e300, "real", 1e300 },
                { "text", "héllo\0world", "text", "héllo\0world" },
                { "empty", "", "text", "" },
                { "blob", sqlite.blob("\0\1\2\255"), "blob", "\0\1\2\255" },
                { "empty blob", sqlite.blob(""), "blob", "" },
            }
            for _, c in ipairs(cases) do
                assert(db:run("INSERT INTO v VALUES (?, ?)", { c[1], c[2] }))
                local row = db:row("SELECT typeof(x) AS t, x FROM v WHERE k = ?", { c[1] })
                assert.are.equal(c[3], row.t, c[1])
                assert.are.equal(c[4], row.x, c[1])
            end
            db:close()
        end)

        it("keeps integers exact up to 2^53 and offers int64 = 'string' beyond", function()
            local db = mem()
            local p53 = 2 ^ 53
            local row = db:row("SELECT ? AS a, typeof(?) AS t, ? - 1 AS b", { p53, p53, p53 })
            assert.are.equal(p53, row.a)
            assert.are.equal("integer", row.t)
            assert.are.equal(p53 - 1, row.b)
            assert.are.equal(-p53, db:row("SELECT ? AS a", { -p53 }).a)
            -- 2^53 + 1 is not a double: as a number it rounds, as a string it is exact
            local sql = "SELECT 9007199254740993 AS big, 5 AS small, -9223372036854775808 AS min"
            assert.are.equal(p53, db:row(sql).big)
            local exact = db:row(sql, nil, { int64 = "string" })
            assert.are.equal("9007199254740993", exact.big)
            assert.are.equal(5, exact.small)
            assert.are.equal("-9223372036854775808", exact.min)
            -- int64 cdata bind exactly
            assert.are.equal("9007199254740993",
                             db:row("SELECT ? AS v", { 9007199254740993LL }, { int64 = "string" }).v)
            db:close()
            local db2 = assert(sqlite.open(":memory:", { int64 = "string" }))
            assert.are.equal("9007199254740993", db2:row(sql).big)
            db2:close()
        end)

        it("round-trips a 384-float vector as a BLOB through the FFI", function()
            local db = mem()
            db:exec("CREATE TABLE emb(id INTEGER PRIMARY KEY, v BLOB)")
            local n = 384
            local vec = ffi.new("float[?]", n)
            for i = 0, n - 1 do vec[i] = math.sin(i) * 0.5 end
            assert(db:run("INSERT INTO emb(id, v) VALUES (1, ?)", { vec }))             -- cdata array
            assert(db:run("INSERT INTO emb(id, v) VALUES (2, ?)",
                          { sqlite.blob(ffi.cast("float *", vec), n * 4) }))           -- pointer + size
            assert(db:run("INSERT INTO emb(id, v) VALUES (3, ?)", { sqlite.blob(vec) }))
            assert.has_error(function() db:run("SELECT ?", { ffi.cast("float *", vec) }) end)
            for id = 1, 3 do
                local row = db:row("SELECT v, typeof(v) AS t, length(v) AS len FROM emb WHERE id = ?",
                                   { id })
                assert.are.equal("blob", row.t)
                assert.are.equal(n * 4, row.len)
                assert.are.equal(n * 4, #row.v)
                local back = ffi.cast("const float *", row.v)
                for i = 0, n - 1 do
                    assert(back[i] == vec[i], "float " .. i .. " differs")
                end
            end
            db:close()
        end)
    end)

    describe("results", function()
        it("returns rows keyed by column name with a columns list; row and run", function()
            local db = mem()
            db:exec("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, note TEXT)")
            local r = db:run("INSERT INTO t(name) VALUES (?), (?)", { "a", "b" })
            assert.are.same({ changes = 2, last_insert_id = 2 }, r)
            local rows = db:query("SELECT id, name, note FROM t ORDER BY id")
            assert.are.same({ "id", "name", "note" }, rows.columns)
            assert.are.same({ { id = 1, name = "a" }, { id = 2, name = "b" } }, { rows[1], rows[2] })
            assert.are.equal(2, #rows)
            local empty = db:query("SELECT id FROM t WHERE id > 10")
            assert.are.equal(0, #empty)
            assert.are.same({ "id" }, empty.columns)
            assert.is_nil(db:row("SELECT id FROM t WHERE id > 10"))
            assert.are.same({ id = 2 }, db:row("INSERT INTO t(name) VALUES ('c') RETURNING id - 1 AS id"))
            assert.are.equal(3, db:run("DELETE FROM t").changes)
            db:close()
        end)

        it("refuses a query over max_rows and suggests db:each", function()
            local db = assert(sqlite.open(":memory:", { max_rows = 10 }))
            local sql = count_to("?")
            assert.are.equal(10, #db:query(sql, { 10 }))
            local rows, err = db:query(sql, { 11 })
            assert.is_nil(rows)
            assert.are.equal("too_large", err.kind)
            assert.matches("max_rows %(10%)", err.message)
            assert.matches("db:each", err.message)
            assert.are.equal(50, #db:query(sql, { 50 }, { max_rows = 50 }))
            db:close()
            assert.are.equal(100000, sqlite.DEFAULT_MAX_ROWS)
        end)

        it("refuses several statements in one query; exec runs scripts", function()
            local db = mem()
            local _, err = db:query("SELECT 1; SELECT 2")
            assert.matches("more than one statement", err.message)
            assert.are.equal(1, db:row("SELECT 1 AS x; -- trailing comment\n").x)
            assert.is_true(db:exec([[
                CREATE TABLE a(x);  -- a comment
                INSERT INTO a VALUES (1);
                INSERT INTO a VALUES (2);
            ]]))
            assert.are.equal(2, db:row("SELECT count(*) AS n FROM a").n)
            _, err = db:query("   ")
            assert.matches("no statement", err.message)
            db:close()
        end)
    end)

    describe("errors", function()
        it("reports a syntax error as kind sqlite with SQLite's message", function()
            local db = mem()
            local rows, err = db:query("SELEC 1")
            assert.is_nil(rows)
            assert.are.equal("sqlite", err.kind)
            assert.are.equal("SQLITE_ERROR", err.code)
            assert.matches('near "SELEC": syntax error', err.message)
            assert.matches("in: SELEC 1", err.message)
            assert.matches("^sqlite: db:query:", tostring(err))
            _, err = db:query("SELECT * FROM missing")
            assert.matches("no such table: missing", err.message)
            db:close()
        end)

        it("reports constraint violations with the code and the extended code", function()
            local db = mem()
            db:exec("CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL)")
            assert(db:run("INSERT INTO u(email) VALUES (?)", { "a@x" }))
            local r, err = db:run("INSERT INTO u(email) VALUES (?)", { "a@x" })
            assert.is_nil(r)
            assert.are.equal("sqlite", err.kind)
            assert.are.equal("SQLITE_CONSTRAINT", err.code)
            assert.are.equal("SQLITE_CONSTRAINT_UNIQUE", err.extended)
            assert.matches("UNIQUE constraint failed: u.email", err.message)
            _, err = db:run("INSERT INTO u(email) VALUES (NULL)")
            assert.are.equal("SQLITE_CONSTRAINT_NOTNULL", err.extended)
            db:close()
        end)
    end)

    describe("transactions", function()
        it("commits and returns fn's results", function()
            local db = mem()
            db:exec("CREATE TABLE t(x)")
            local a, b = db:transaction(function(tx)
                assert(tx:run("INSERT INTO t VALUES (1)"))
                assert(tx:run("INSERT INTO t VALUES (2)"))
                return "done", 2
            end)
            assert.are.equal("done", a)
            assert.are.equal(2, b)
            assert.is_true(db:transaction(function() end))
            assert.are.equal(2, db:row("SELECT count(*) AS n FROM t").n)
            assert.are.equal(0, db:stats().transaction_depth)
            db:close()
        end)

        it("rolls back when fn raises, and raises the error again", function()
            local db = mem()
            db:exec("CREATE TABLE t(x)")
            local ok, err = pcall(db.transaction, db, function(tx)
                tx:run("INSERT INTO t VALUES (1)")
                error("boom")
            end)
            assert.is_false(ok)
            assert.matches("boom", err)
            assert.are.equal(0, db:row("SELECT count(*) AS n FROM t").n)
            db:close()
        end)

        it("rolls back when fn returns nil, err and passes the error on", function()
            local db = mem()
            db:exec("CREATE TABLE t(x UNIQUE)")
            local res, err = db:transaction(function(tx)
                assert(tx:run("INSERT INTO t VALUES (1)"))
                return tx:run("INSERT INTO t VALUES (1)")    -- constraint violation
            end)
            assert.is_nil(res)
            assert.are.equal("SQLITE_CONSTRAINT", err.code)
            assert.are.equal(0, db:row("SELECT count(*) AS n FROM t").n)
            res, err = db:transaction(function() return nil, "custom" end)
            assert.is_nil(res)
            assert.are.equal("custom", err)
            db:close()
        end)

        it("nests with savepoints", function()
            local db = mem()
            db:exec("CREATE TABLE t(x)")
            assert(db:transaction(function(tx)
                tx:run("INSERT INTO t VALUES ('outer')")
                local r, err = tx:transaction(function(inner)
                    inner:run("INSERT INTO t VALUES ('inner, rolled back')")
                    assert.are.equal(2, inner:stats().transaction_depth)
                    return nil, "inner fails"
                end)
                assert.is_nil(r)
                assert.are.equal("inner fails", err)
                assert(tx:transaction(function(inner)
                    return inner:run("INSERT INTO t VALUES ('inner, kept')")
                end))
                return true
            end))
            local rows = db:query("SELECT x FROM t ORDER BY rowid")
            assert.are.same({ "outer", "inner, kept" }, { rows[1].x, rows[2].x })
            assert.are.equal(2, #rows)
            -- an inner commit is undone by an outer rollback
            db:transaction(function(tx)
                tx:transaction(function(inner) return inner:run("INSERT INTO t VALUES ('gone')") end)
                return nil, "outer fails"
            end)
            assert.are.equal(2, db:row("SELECT count(*) AS n FROM t").n)
            db:close()
        end)

        it("keeps other tasks' queries out until the transaction ends", function()
            local db = mem()
            db:exec("CREATE TABLE t(x)")
            local seen
            local writer = sibyl.spawn(function()
                return db:transaction(function(tx)
                    tx:run("INSERT INTO t VALUES (1)")
                    sibyl.sleep(0.05)            -- others try to read meanwhile
                    tx:run("INSERT INTO t VALUES (2)")
                    return nil, "changed my mind"
                end)
            end)
            sibyl.sleep(0.01)
            local reader = sibyl.spawn(function()
                seen = db:row("SELECT count(*) AS n FROM t").n
            end)
            reader:wait()
            assert.are.equal(0, seen)            -- never saw the uncommitted rows
            local _, err = writer:wait()
            assert.are.equal("changed my mind", err)
            db:close()
        end)

        it("rolls back and unlocks when the owning task is cancelled", function()
            local db = mem()
            db:exec("CREATE TABLE t(x)")
            local owner = sibyl.spawn(function()
                db:transaction(function(tx)
                    tx:run("INSERT INTO t VALUES (1)")
                    sibyl.sleep(10)
                end)
            end)
            sibyl.sleep(0.02)
            assert.are.equal(1, db:stats().transaction_depth)
            local other = sibyl.spawn(function() return db:row("SELECT count(*) AS n FROM t").n end)
            sibyl.sleep(0.02)
            assert.are.equal("waiting", other:status())
            owner:cancel()
            local t, n = helpers.timed(other.wait, other)
            assert.are.equal(0, n)
            assert.is_true(t < 1)
            assert.are.equal(0, db:stats().transaction_depth)
            assert.is_true(db:transaction(function(tx) return tx:run("INSERT INTO t VALUES (2)") ~= nil end))
            assert.are.equal(1, db:row("SELECT count(*) AS n FROM t").n)
            db:close()
        end)
    end)

    describe("full-text search", function()
        it("has FTS5: MATCH with bm25 ranking", function()
            local db = mem()
            assert.is_true(db:exec("CREATE VIRTUAL TABLE docs USING fts5(title, body)"))
            local docs = {
                { "Cats", "cats purr and cats sleep; a cat is a small feline" },
                { "Dogs", "dogs bark; some dogs chase cats" },
                { "Birds", "birds sing and fly" },
            }
            for _, d in ipairs(docs) do
                assert(db:run("INSERT INTO docs(title, body) VALUES (?, ?)", d))
            end
            local rows = db:query([[SELECT title, bm25(docs) AS score FROM docs
                                     WHERE docs MATCH ? ORDER BY bm25(docs)]], { "cats" })
            assert.are.equal(2, #rows)
            assert.are.equal("Cats", rows[1].title)       -- more occurrences rank first
            assert.are.equal("Dogs", rows[2].title)
            assert.is_true(rows[1].score < rows[2].score)  -- bm25: lower is better
            local hl = db:row("SELECT highlight(docs, 1, '[', ']') AS h FROM docs WHERE docs MATCH ?",
                              { "sing" })
            assert.are.equal("birds [sing] and fly", hl.h)
            db:close()
        end)
    end)

    describe("read-only mode", function()
        local path

        local function setup()
            path = tmpdb()
            local db = assert(sqlite.open(path))
            assert(db:exec([[
                CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT);
                CREATE INDEX t_name ON t(name);
                CREATE TABLE child(id INTEGER PRIMARY KEY, t_id INTEGER REFERENCES t(id));
                INSERT INTO t(name) VALUES ('a'), ('b');
            ]]))
            db:close()
            return assert(sqlite.open(path, { readonly = true }))
        end

        it("refuses every kind of write with kind readonly", function()
            local ro = setup()
            finally(function() ro:close(); rm(path) end)
            assert.matches("readonly", tostring(ro))
            local refused = {
                "INSERT INTO t(name) VALUES ('x')",
                "UPDATE t SET name = 'x'",
                "DELETE FROM t",
                "REPLACE INTO t(id, name) VALUES (1, 'x')",
                "DROP TABLE t",
                "DROP INDEX t_name",
                "CREATE TABLE u(x)",
                "CREATE TEMP TABLE u(x)",
                "CREATE INDEX t_id ON t(id)",
                "CREATE VIEW v AS SELECT 1",
                "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
                "CREATE VIRTUAL TABLE f USING fts5(x)",
                "ALTER TABLE t ADD COLUMN y",
                "ALTER TABLE t RENAME TO t2",
                "ATTACH DATABASE ':memory:' AS other",
                "DETACH DATABASE main",
                "PRAGMA user_version = 5",
                "PRAGMA journal_mode = delete",
                "PRAGMA journal_mode",
                "PRAGMA writable_schema = 1",
                "PRAGMA query_only = 0",
                "PRAGMA foreign_keys = ON",
                "PRAGMA wal_checkpoint",
                "PRAGMA optimize",
                "PRAGMA incremental_vacuum",
                "UPDATE sqlite_master SET sql = ''",
                "VACUUM",
                "VACUUM INTO '" .. path .. ".copy'",
                "REINDEX",
                "ANALYZE",
                "BEGIN IMMEDIATE",
                "SELECT load_extension('/lib/nothing.so')",
            }
            for _, sql in ipairs(refused) do
                local res, err = ro:query(sql)
                assert(res == nil, sql .. " was allowed")
                assert.are.equal("readonly", err.kind, sql .. ": " .. tostring(err))
                assert.matches("opened read%-only", err.message)
                assert.matches("readonly = false", err.message)
                -- the same through run() and exec()
                local _, err2 = ro:run(sql)
                assert.are.equal("readonly", err2.kind, sql)
                local _, err3 = ro:exec("SELECT 1; " .. sql)
                assert.are.equal("readonly", err3.kind, sql)
            end
            local _, err = ro:run("INSERT INTO t(name) VALUES ('x')")
            assert.matches("INSERT on table 't'", err.message)
            _, err = ro:run("PRAGMA user_version = 5")
            assert.matches("PRAGMA user_version = 5", err.message)
            _, err = ro:run("VACUUM")
            assert.matches("VACUUM", err.message)
            _, err = ro:run("DROP TABLE t")
            assert.matches("DROP TABLE is not allowed", err.message)
            _, err = ro:run("CREATE TEMP TABLE u(x)")
            assert.matches("CREATE TEMP TABLE is not allowed", err.message)
            assert.is_nil(io.open(path .. ".copy", "rb"))   -- VACUUM INTO wrote nothing
            assert.is_nil(ro:query("SELECT * FROM pragma_user_version(5)"))   -- takes no argument
            -- nothing changed
            assert.are.equal(2, ro:row("SELECT count(*) AS n FROM t").n)
            assert.are.equal(0, ro:row("PRAGMA user_version").user_version)
        end)

        it("allows reads, read-only pragmas and read transactions", function()
            local ro = setup()
            finally(function() ro:close(); rm(path) end)
            assert.are.equal(2, #ro:query("SELECT * FROM t"))
            assert.are.equal("name", ro:query("PRAGMA table_info(t)")[2].name)
            assert.are.equal(2, #ro:query("PRAGMA table_xinfo(t)"))
            assert.are.equal("t_name", ro:query("PRAGMA index_list(t)")[1].name)
            assert.are.equal("t", ro:query("PRAGMA foreign_key_list(child)")[1].table)
            assert.are.equal("name", ro:query("SELECT name FROM pragma_table_info('t')")[2].name)
            assert.are.equal(0, ro:row("PRAGMA user_version").user_version)
            assert.are.equal("ok", ro:row("PRAGMA integrity_check").integrity_check)
            assert.is_truthy(ro:row("SELECT sql FROM sqlite_master WHERE name = 't'").sql)
            assert.are.equal(3, ro:row(count_to(3, "SELECT max(x) AS m FROM c")).m)
            assert.are.equal(2, ro:transaction(function(tx)
                return tx:row("SELECT count(*) AS n FROM t").n
            end))
            local n = 0
            for _ in ro:each("SELECT * FROM t") do n = n + 1 end
            assert.are.equal(2, n)
        end)

        it("a read-write open of a read-only file reports kind readonly on write", function()
            local ro = setup()
            ro:close()
            os.execute("chmod 0444 " .. path)
            local db = assert(sqlite.open(path, { wal = false }))
            local _, err = db:run("INSERT INTO t(name) VALUES ('x')")
            db:close()
            os.execute("chmod 0644 " .. path)
            rm(path)
            if os.getenv("USER") ~= "root" and err then   -- root ignores file modes
                assert.are.equal("readonly", err.kind)
            end
        end)
    end)

    describe("concurrency", function()
        it("serves 100 concurrent tasks on one db", function()
            local db = mem()
            db:exec("CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)")
            local fns = {}
            for i = 1, 100 do
                fns[i] = function()
                    assert(db:run("INSERT INTO t(v) VALUES (?)", { i }))
                    return db:row("SELECT v FROM t WHERE v = ?", { i }).v
                end
            end
            local vals = sibyl.gather(fns)
            for i = 1, 100 do assert.are.equal(i, vals[i]) end
            assert.are.equal(100, db:row("SELECT count(*) AS n FROM t").n)
            assert.are.equal(5050, db:row("SELECT sum(v) AS s FROM t").s)
            db:close()
        end)

        it("does not block the loop or other dbs during a slow query", function()
            local slow_db, fast_db = mem(), mem()
            local slow = sibyl.spawn(function() return slow_db:row(SLOW) end)
            sibyl.yield()
            local t0 = sibyl.now()
            assert.is_true(sibyl.sleep(0.05))
            local slept = sibyl.now() - t0
            assert.is_true(slept < 0.25, "the timer fired after " .. slept .. " s")
            local answers = 0
            for i = 1, 20 do
                assert.are.equal(i, fast_db:row("SELECT ? AS x", { i }).x)
                answers = answers + 1
            end
            assert.are.equal(20, answers)
            assert.are.equal("waiting", slow:status())   -- still running on its worker
            assert.are.equal(10000000, slow:wait().n)
            slow_db:close()
            fast_db:close()
        end)

        it("a query queued behind a running one waits its turn", function()
            local db = mem()
            local order = {}
            local a = sibyl.spawn(function()
                db:row(count_to(300000, "SELECT count(*) FROM c"))
                order[#order + 1] = "a"
            end)
            local b = sibyl.spawn(function() db:row("SELECT 1"); order[#order + 1] = "b" end)
            sibyl.yield()
            assert.is_true(db:stats().queued >= 1)
            sibyl.gather({ a, b })
            assert.are.same({ "a", "b" }, order)
            db:close()
        end)
    end)

    describe("cancellation", function()
        it("interrupts a cancelled query promptly; the db stays usable", function()
            local db = mem()
            local t = sibyl.spawn(function() return db:row(SLOW) end)
            sibyl.sleep(0.1)
            assert.are.equal("waiting", t:status())
            local t0 = sibyl.now()
            assert.is_true(t:cancel())
            assert.are.equal(1, db:row("SELECT 1 AS x").x)  -- queued behind the interrupted query
            local took = sibyl.now() - t0
            assert.is_true(took < 0.5, "the next query waited " .. took .. " s")
            local _, err = t:wait()
            assert.are.equal("cancelled", err.kind)
            assert.are.equal(3, db:row("SELECT 1 + 2 AS x").x)
            db:close()
        end)

        it("a deadline stops a slow query with kind timeout", function()
            local db = mem()
            local t0 = sibyl.now()
            local row, err = sibyl.deadline(0.1, function() return db:row(SLOW) end)
            assert.is_nil(row)
            assert.are.equal("timeout", err.kind)
            assert.are.equal(7, db:row("SELECT 7 AS x").x)
            assert.is_true(sibyl.now() - t0 < 0.6)
            db:close()
        end)

        it("waits busy_timeout for another connection's lock; cancelling stops the wait", function()
            local path = tmpdb()
            local a = assert(sqlite.open(path))
            local b = assert(sqlite.open(path, { busy_timeout = 100 }))
            finally(function() a:close(); b:close(); rm(path) end)
            a:exec("CREATE TABLE t(x)")
            local holder = sibyl.spawn(function()
                return a:transaction(function(tx)
                    tx:run("INSERT INTO t VALUES (1)")
                    sibyl.sleep(0.6)
                    return true
                end)
            end)
            sibyl.sleep(0.05)
            local t, r, err = helpers.timed(b.run, b, "INSERT INTO t VALUES (2)")
            assert.is_nil(r)
            assert.are.equal("sqlite", err.kind)
            assert.are.equal("SQLITE_BUSY", err.code)
            assert.matches("busy_timeout", err.message)
            assert.is_true(t >= 0.09 and t < 0.4, "waited " .. t .. " s")
            -- a long wait, cancelled: the connection is free again at once
            local c = assert(sqlite.open(path, { busy_timeout = 5000 }))
            local waiter = sibyl.spawn(function() return c:run("INSERT INTO t VALUES (3)") end)
            sibyl.sleep(0.05)
            waiter:cancel()
            local t2, row = helpers.timed(c.row, c, "SELECT 1 AS x")
            assert.are.equal(1, row.x)
            assert.is_true(t2 < 0.2, "the next query waited " .. t2 .. " s")
            c:close()
            assert.is_true(holder:wait())
        end)

        it("drops a cancelled query that was still queued", function()
            local db = mem()
            db:exec("CREATE TABLE t(x)")
            local slow = sibyl.spawn(function() return db:row(SLOW) end)
            local queued = sibyl.spawn(function() return db:run("INSERT INTO t VALUES (1)") end)
            sibyl.yield()
            assert.is_true(queued:cancel())
            slow:cancel()
            assert.are.equal(0, db:row("SELECT count(*) AS n FROM t").n)
            db:close()
        end)

        it("close() during a query lets it finish and fails what was queued", function()
            local db = mem()
            local running = sibyl.spawn(function()
                return db:row(count_to(200000, "SELECT count(*) AS n FROM c"))
            end)
            local queued = sibyl.spawn(function() return db:row("SELECT 1 AS x") end)
            sibyl.yield()
            assert.is_true(db:close())
            assert.are.equal(200000, running:wait().n)
            local _, err = queued:wait()
            assert.are.equal("closed", err.kind)
            assert.matches("was closed before the query ran", err.message)
        end)

        it("a db dropped mid-query is closed by the collector", function()
            local t = sibyl.spawn(function()
                local db = mem()
                return db:row(SLOW)
            end)
            sibyl.sleep(0.05)
            t:cancel()
            collectgarbage()
            collectgarbage()
            sibyl.sleep(0.05)    -- the worker finishes; LeakSanitizer checks the rest
        end)
    end)

    describe("each", function()
        it("streams rows in batches and closes at the end", function()
            local db = assert(sqlite.open(":memory:", { batch = 100 }))
            local sql = count_to("?", "SELECT x, x * x AS sq FROM c")
            local n, sum = 0, 0
            for row in db:each(sql, { 1000 }) do
                n = n + 1
                sum = sum + row.x
                assert.are.equal(row.x * row.x, row.sq)
            end
            assert.are.equal(1000, n)
            assert.are.equal(500500, sum)
            assert.are.equal(0, db:stats().open_cursors)
            -- a query per row while iterating
            db:exec("CREATE TABLE t(x)")
            for row in db:each(sql, { 300 }, { batch = 7 }) do
                db:run("INSERT INTO t VALUES (?)", { row.x })
            end
            assert.are.equal(300, db:row("SELECT count(*) AS n FROM t").n)
            db:close()
        end)

        it("stops early with break; the cursor closes and the db works", function()
            local db = mem()
            local sql = count_to(nil)        -- endless
            local it, cur = db:each(sql)
            local last
            for row in it, cur do
                last = row.x
                if row.x == 600 then break end
            end
            assert.are.equal(600, last)
            assert.are.equal(1, db:stats().open_cursors)
            assert.are.equal("sibyl.sqlite.cursor (open)", tostring(cur))
            cur:close()
            assert.are.equal("sibyl.sqlite.cursor (closed)", tostring(cur))
            assert.are.equal(1, db:row("SELECT 1 AS x").x)
            assert.are.equal(0, db:stats().open_cursors)
            -- an abandoned cursor is released by the collector
            for row in db:each(sql) do
                if row.x == 3 then break end
            end
            collectgarbage()
            collectgarbage()
            assert.are.equal(1, db:row("SELECT 1 AS x").x)
            assert.are.equal(0, db:stats().open_cursors)
            db:close()
        end)

        it("returns nil, err for a bad statement", function()
            local db = mem()
            local it, err = db:each("SELEC x")
            assert.is_nil(it)
            assert.are.equal("sqlite", err.kind)
            assert.matches("db:each", err.message)
            db:close()
        end)
    end)

    describe("statement cache", function()
        it("reuses prepared statements and counts hits", function()
            local db = mem()
            local s0 = db:stats()
            assert.are.equal(64, s0.cache_size)
            for i = 1, 5 do
                assert.are.equal(i, db:row("SELECT ? AS x", { i }).x)
            end
            local s = db:stats()
            assert.are.equal(s0.queries + 5, s.queries)
            assert.are.equal(s0.cache_hits + 4, s.cache_hits)
            db:close()
        end)

        it("keeps at most cache_size statements; 0 disables the cache", function()
            local db = assert(sqlite.open(":memory:", { cache_size = 2 }))
            for i = 1, 5 do db:row("SELECT " .. i) end
            assert.are.equal(2, db:stats().cached)
            db:row("SELECT 5")
            assert.are.equal(1, db:stats().cache_hits)
            db:close()
            local nocache = assert(sqlite.open(":memory:", { cache_size = 0 }))
            for _ = 1, 3 do nocache:row("SELECT 1") end
            assert.are.equal(0, nocache:stats().cache_hits)
            assert.are.equal(0, nocache:stats().cached)
            nocache:close()
        end)
    end)
end)
