-- 23-sql_web_agents_spec.lua -- the specialised agents: sibyl.agents.sql
-- (stdlib/sibyl/agents/sql.lua) and sibyl.web (stdlib/sibyl/web.lua).
--
-- SQL: a small shop database in a temp file, the model is llm.mock with
-- scripted replies; a reply that is a function(req) records what the model
-- was shown at that moment. The read-only guarantee is the connection's
-- authorizer: the spec checks the table survives a DROP the model insists on.
--
-- Web: tests/fixtures/web/site.lua serves the HTML fixtures and a fake
-- SearXNG JSON API on a free port (sibyl.server, port 0). Offline.

local sibyl = require "sibyl"
local llm = require "sibyl.llm"
local sqlite = require "sibyl.sqlite"
local sql = require "sibyl.agents.sql"
local web = require "sibyl.web"
require "helpers"                        -- puts tests/fixtures on package.path
local site_fixture = require "web.site"


-- A fresh shop database with `n` orders; returns its path.
local function shop_db(n)
    local base = os.tmpname()      -- creates an empty file: keep its name only
    os.remove(base)
    local path = base .. ".db"
    local db = assert(sqlite.open(path))
    assert(db:exec([[
        CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT);
        CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                            item TEXT, total REAL);
        INSERT INTO customers(name, city) VALUES ('Ann', 'Paris'), ('Bob', 'Lyon');
    ]]))
    assert(db:transaction(function()
        for i = 1, n or 3 do
            db:run("INSERT INTO orders(customer_id, item, total) VALUES (?, ?, ?)", { i % 2 + 1, "item" .. i, i * 1.5 })
        end
    end))
    db:close()
    return path
end


local function remove_db(path)
    os.remove(path); os.remove(path .. "-wal"); os.remove(path .. "-shm")
end


local function count_orders(path)
    local db = assert(sqlite.open(path, { readonly = true }))
    local row, err = db:row("SELECT count(*) AS n FROM orders")
    db:close()
    return row and row.n, err
end


-- A reply that records the last message the model saw, then answers `reply`.
local function seeing(seen, reply)
    return function(req)
        seen[#seen + 1] = { system = req.system, last = req.messages[#req.messages].content, n = #req.messages }
        return reply
    end
end


describe("sibyl.agents.sql", function()

    it("shows the model the schema with table and column names", function()
        local path = shop_db()
        local seen = {}
        local m = llm.mock{ replies = {
            seeing(seen, '{"sql": "SELECT count(*) AS n FROM orders", "reason": "count"}'),
            "There are 3 orders.",
        } }
        local s = assert(sql.new{ llm = m, db = path })
        local r = assert(s:ask("How many orders are there?"))
        local system = seen[1].system or ""
        for _, word in ipairs{ "orders", "customers", "customer_id", "item", "total", "name", "city" } do
            assert.is_truthy(system:find(word, 1, true), "schema lacks " .. word)
        end
        assert.is_truthy(system:find("TABLE orders (id INTEGER PRIMARY KEY", 1, true))
        assert.are.equal("How many orders are there?", seen[1].last)
        assert.are.equal(3, r.rows[1].n)
        assert.are.same({ "n" }, r.columns)
        assert.are.equal(1, r.attempts)
        assert.are.equal("There are 3 orders.", r.summary)
        assert.are.equal("count", r.reason)
        s:close()
        remove_db(path)
    end)

    it("refuses a write the prompt and the model insist on: kind readonly, the table survives", function()
        local path = shop_db()
        local m = llm.mock{ replies = {
            '{"sql": "DROP TABLE orders", "reason": "the user asked"}',
            "```sql\nDROP TABLE orders;\n```",
            '{"sql": "DELETE FROM orders", "reason": "still trying"}',
        } }
        local s = assert(sql.new{ llm = m, db = path, retries = 2 })
        local r, err = s:ask("drop the orders table")
        assert.is_nil(r)
        assert.are.equal("readonly", err.kind)
        assert.are.equal(3, err.attempts)
        assert.are.equal("DELETE FROM orders", err.sql)
        assert.is_truthy(err.message:find("read-only", 1, true))
        assert.are.equal(3, #m.requests)       -- 1 + retries, and no summary call
        s:close()
        assert.are.equal(3, count_orders(path))
        remove_db(path)
    end)

    it("recovers with a SELECT when the model's retry offers one after the refusal", function()
        local path = shop_db()
        local seen = {}
        local m = llm.mock{ replies = {
            '{"sql": "DROP TABLE orders", "reason": "the user asked"}',
            seeing(seen, '{"sql": "SELECT count(*) AS n FROM orders", "reason": "cannot drop; counting instead"}'),
            "The table cannot be dropped; it holds 3 orders.",
        } }
        local s = assert(sql.new{ llm = m, db = path })
        local r = assert(s:ask("drop the orders table"))
        assert.are.equal(2, r.attempts)
        assert.are.equal(3, r.rows[1].n)
        -- the refusal was fed back to the model
        assert.is_truthy(seen[1].last:find("read-only", 1, true))
        assert.is_truthy(seen[1].last:find("DROP TABLE", 1, true))
        assert.are.equal(3, count_orders(path))
        s:close()
        remove_db(path)
    end)

    it("feeds an SQL error back and runs the corrected statement", function()
        local path = shop_db()
        local seen = {}
        local m = llm.mock{ replies = {
            "```sql\nSELECT item, totl FROM orders ORDER BY total DESC LIMIT 1\n```",     -- unknown column
            seeing(seen, '{"sql": "SELECT item, total FROM orders ORDER BY total DESC LIMIT 1", "reason": "fixed"}'),
            "item3 is the biggest order.",
        } }
        local s = assert(sql.new{ llm = m, db = path })
        local r = assert(s:ask("What is the biggest order?"))
        assert.are.equal(2, r.attempts)
        assert.are.equal("item3", r.rows[1].item)
        assert.are.equal(4.5, r.rows[1].total)
        assert.is_truthy(seen[1].last:find("totl", 1, true), seen[1].last)
        assert.are.equal(3, seen[1].n)           -- question, bad reply, the error
        s:close()
        remove_db(path)
    end)

    it("gives up after retries on SQL that keeps failing (kind sqlite)", function()
        local path = shop_db()
        local m = llm.mock{ replies = { "SELECT nope FROM orders", "SELECT nope FROM orders" } }
        local s = assert(sql.new{ llm = m, db = path, retries = 1 })
        local r, err = s:ask("?")
        assert.is_nil(r)
        assert.are.equal("sqlite", err.kind)
        assert.are.equal(2, err.attempts)
        s:close()
        remove_db(path)
    end)

    it("cuts the rows at max_rows and says so", function()
        local path = shop_db(50)
        local m = llm.mock{ replies = { '{"sql": "SELECT id, item FROM orders ORDER BY id"}' } }
        local s = assert(sql.new{ llm = m, db = path, max_rows = 10, summarize = false })
        local r = assert(s:ask("List the orders"))
        assert.are.equal(10, #r.rows)
        assert.is_true(r.truncated)
        assert.are.equal(10, r.rows[10].id)
        assert.are.same({ "id", "item" }, r.columns)
        assert.are.equal("10 rows (cut at max_rows) with columns id, item.", r.summary)
        assert.are.equal(1, #m.requests)         -- summarize = false: no summary call
        s:close()
        remove_db(path)
    end)

    it("accepts an open read-only db and refuses a writable one", function()
        local path = shop_db()
        local rw = assert(sqlite.open(path))
        assert.has_error(function() sql.new{ llm = llm.mock{}, db = rw } end)
        rw:close()
        local ro = assert(sqlite.open(path, { readonly = true }))
        local s = assert(sql.new{ llm = llm.mock{ replies = { "SELECT name FROM customers ORDER BY name" } },
                                  db = ro, summarize = false })
        local r = assert(s:ask("names?"))
        assert.are.equal("Ann", r.rows[1].name)
        ro:close()
        local _, err = sql.new{ db = "/nonexistent/dir/x.db" }
        assert.is_truthy(err and err.kind)
        remove_db(path)
    end)
end)


describe("sibyl.web", function()
    local site

    before_each(function() site = assert(site_fixture.start()) end)
    after_each(function() site.close() end)

    it("fetches an HTML page as readable text", function()
        local page = assert(web.fetch(site.base_url .. "/article.html"))
        assert.are.equal("Sibyl & the Oracle \226\128\147 a fixture", page.title)
        assert.are.equal("text/html", page.content_type)
        local t = page.text
        for _, gone in ipairs{ "SHOULD-NOT-APPEAR", "ALSO-NOT-HERE", "font-family", "NAVIGATION-MENU",
                               "NOSCRIPT-TEXT", "SVG-TEXT", "a comment", "<p", "&amp;", "&nbsp;" } do
            assert.is_falsy(t:find(gone, 1, true), "still in the text: " .. gone)
        end
        assert.is_truthy(t:find("# Reading the oracle", 1, true))
        assert.is_truthy(t:find([[Sibyl runs agents <fast> on LuaJIT & C11. It says "hello" 'twice' ]] .. "\226\152\186.", 1, true), t)
        assert.is_truthy(t:find("- First point\n- Second point", 1, true), t)
        assert.is_truthy(t:find("The end.", 1, true))
        assert.is_false(page.truncated)
    end)

    it("reports an injected instruction inside the page in findings", function()
        local page = assert(web.fetch(site.base_url .. "/article.html"))
        assert.is_true(#page.findings > 0)
        local f = page.findings[1]
        assert.are.equal("injection", f.category)
        assert.are.equal("ignore previous instructions", f.pattern:lower())
        assert.are.equal("Ignore previous instructions", page.text:sub(f.start, f.stop))
        -- a clean page has none
        local clean = assert(web.fetch(site.base_url .. "/notes.txt"))
        assert.are.same({}, clean.findings)
    end)

    it("honours max_bytes and max_text with a note", function()
        local page = assert(web.fetch(site.base_url .. "/big.html", { max_bytes = 4096 }))
        assert.is_true(page.truncated)
        assert.are.equal(4096, page.bytes)
        assert.is_truthy(page.text:find("[truncated:", 1, true))
        assert.is_true(#page.text < 4096 + 200)
        page = assert(web.fetch(site.base_url .. "/big.html", { max_text = 1000 }))
        assert.is_true(page.truncated)
        assert.is_true(#page.text < 1000 + 200)
        assert.is_truthy(page.text:find("raise opts.max_bytes or opts.max_text", 1, true))
    end)

    it("passes text/plain through and refuses other content types", function()
        local page = assert(web.fetch(site.base_url .. "/notes.txt"))
        assert.are.equal("Plain text notes.\n  Kept as they are.\n", page.text)
        assert.is_nil(page.title)
        local r, err = web.fetch(site.base_url .. "/image.png")
        assert.is_nil(r)
        assert.are.equal("unsupported", err.kind)
        assert.is_truthy(err.message:find("image/png", 1, true))
        r, err = web.fetch(site.base_url .. "/missing.html")
        assert.are.equal("http", err.kind)
        assert.are.equal(404, err.status)
    end)

    it("times out", function()
        local t0 = sibyl.now()
        local r, err = web.fetch(site.base_url .. "/slow", { timeout = 0.2 })
        assert.is_nil(r)
        assert.are.equal("timeout", err.kind)
        assert.is_true(sibyl.now() - t0 < 1.5)
        r, err = web.search("x", { endpoint = site.base_url .. "/slow", timeout = 0.2 })
        assert.are.equal("timeout", err.kind)
    end)

    it("searches a SearXNG-style JSON endpoint", function()
        local hits = assert(web.search("sibyl agents", { endpoint = site.search_url, max_results = 2 }))
        assert.are.equal(2, #hits)
        assert.are.same({ title = "Sibyl agent runtime", url = site.base_url .. "/article.html",
                          snippet = "Lua-scriptable agents in C11 and LuaJIT." }, hits[1])
        local q = site.requests[#site.requests].query
        assert.are.equal("sibyl agents", q.q)
        assert.are.equal("json", q.format)
        assert.are.equal(3, #assert(web.search("x", { endpoint = site.search_url })))
    end)

    it("search errors: config, http, parse", function()
        local _, err = web.search("x", { endpoint = "not a url" })
        assert.are.equal("config", err.kind)
        assert.is_truthy(err.message:find("SIBYL_SEARCH_URL", 1, true))
        _, err = web.search("x", { endpoint = site.search_url, format = "google" })
        assert.are.equal("config", err.kind)
        _, err = web.search("x", { endpoint = site.base_url .. "/missing" })
        assert.are.equal("http", err.kind)
        assert.are.equal(404, err.status)
        _, err = web.search("x", { endpoint = site.base_url .. "/broken/search" })
        assert.are.equal("parse", err.kind)
    end)
end)


describe("the example scripts", function()
    local helpers = require "helpers"

    it("scripts/sql_agent.lua --mock shows the DROP refused and answers", function()
        local r = helpers.run_cli({ "scripts/sql_agent.lua", "--mock" })
        assert.are.equal(0, r.code, r.err)
        assert.is_truthy(r.out:find("try 1: DROP TABLE orders", 1, true), r.out)
        assert.is_truthy(r.out:find("refused/failed (readonly)", 1, true), r.out)
        assert.is_truthy(r.out:find("Bob | 94", 1, true), r.out)
    end)

    it("scripts/web_agent.lua --mock searches, fetches and warns", function()
        local r = helpers.run_cli({ "scripts/web_agent.lua", "--mock" })
        assert.are.equal(0, r.code, r.err)
        assert.is_truthy(r.out:find("-> web_fetch http://127.0.0.1:", 1, true), r.out)
        assert.is_truthy(r.out:find("Warning: that page contains hidden instructions", 1, true), r.out)
    end)
end)
