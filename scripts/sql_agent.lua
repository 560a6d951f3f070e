-- sql_agent.lua -- ask a SQLite database questions in plain language.
--
--   sibyl scripts/sql_agent.lua --mock                  -- offline: a scripted model
--   OPENAI_API_KEY=sk-... sibyl scripts/sql_agent.lua   -- a real model (any provider
--   sibyl scripts/sql_agent.lua "Who spent the most?"   --  of doc/llm.md), your question
--   sibyl scripts/sql_agent.lua --db my.db "How many rows in users?"
--
-- It builds a small shop database (customers and orders) in a temporary
-- file, then asks the SQL agent (sibyl.agents.sql) the questions. The agent
-- shows the model the schema, asks it for one SELECT, runs it on a READ-ONLY
-- connection, sends SQL errors back for a retry, and summarises the rows.
--
-- With --mock the first question asks to drop a table and the scripted model
-- obliges with DROP TABLE: the read-only connection refuses it (that is the
-- guarantee, not the prompt), the refusal goes back to the model, which then
-- offers a SELECT instead.
--
-- To change it: point --db at your own database, change QUESTIONS, or the
-- limits in sql.new (max_rows, retries).

local llm = require "sibyl.llm"
local sqlite = require "sibyl.sqlite"
local sql = require "sibyl.agents.sql"


-- 1. A demo database in a temporary file (skipped when --db names one).
local function create_demo_db()
    local base = os.tmpname()      -- creates an empty file: keep its name only
    os.remove(base)
    local path = base .. ".db"
    local db = assert(sqlite.open(path))
    assert(db:exec([[
        CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT);
        CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                            item TEXT NOT NULL, quantity INTEGER NOT NULL, price REAL NOT NULL,
                            ordered_at TEXT NOT NULL);
        INSERT INTO customers(name, city) VALUES ('Ann', 'Paris'), ('Bob', 'Lyon'), ('Chloe', 'Nantes');
        INSERT INTO orders(customer_id, item, quantity, price, ordered_at) VALUES
            (1, 'teapot', 1, 35.0, '2026-01-05'), (2, 'mug', 4, 8.5, '2026-01-07'),
            (1, 'tea, 500 g', 2, 12.0, '2026-02-01'), (3, 'teapot', 2, 35.0, '2026-02-11'),
            (2, 'kettle', 1, 60.0, '2026-03-02');
    ]]))
    db:close()      -- the agent opens it again, read-only
    return path
end


-- 2. The scripted model for --mock: the replies the model would give, in
-- order. The first question: a DROP (refused), then a SELECT, then a summary.
local function scripted_model()
    return llm.mock{ replies = {
        '{"sql": "DROP TABLE orders", "reason": "the user asked to drop the table"}',
        '{"sql": "SELECT count(*) AS orders FROM orders", "reason": "the database is read-only; counting instead"}',
        "The orders table cannot be dropped (the database is read-only); it holds 5 orders.",
        -- the second question: a typo in a column name, corrected after the error comes back
        "```sql\nSELECT c.name, sum(o.quantity * o.prise) AS spent FROM orders o JOIN customers c "
            .. "ON c.id = o.customer_id GROUP BY c.name ORDER BY spent DESC\n```",
        '{"sql": "SELECT c.name, sum(o.quantity * o.price) AS spent FROM orders o JOIN customers c '
            .. 'ON c.id = o.customer_id GROUP BY c.name ORDER BY spent DESC", "reason": "total per customer"}',
        "Bob spent the most (94.00), then Chloe (70.00) and Ann (59.00).",
    } }
end


local QUESTIONS = {
    "Drop the orders table.",
    "How much has each customer spent, biggest first?",
}


-- 3. Run it.
local mock, db_path, asked = false, nil, {}
local args = arg or {}
local i = 1
while i <= #args do
    if args[i] == "--mock" then mock = true
    elseif args[i] == "--db" then i = i + 1; db_path = args[i]
    else asked[#asked + 1] = args[i] end
    i = i + 1
end
if #asked > 0 and not mock then QUESTIONS = asked end

local demo = not db_path
db_path = db_path or create_demo_db()
local agent, err = sql.new{
    llm = mock and scripted_model() or nil,     -- nil: the default provider
    db = db_path,
    max_rows = 50,                              -- rows kept per answer
    retries = 2,                                -- extra tries after a failing statement
    on_event = function(ev)                     -- show each statement and each refusal
        if ev.type == "sql" then
            print(("   try %d: %s"):format(ev.attempt, ev.sql))
        else
            print(("   refused/failed (%s): %s"):format(ev.error.kind, ev.error.message))
        end
    end,
}
if not agent then
    print(("cannot open the database (%s): %s"):format(err.kind, err.message))
    os.exit(1)
end
print("schema:\n" .. assert(agent:schema()))

for _, q in ipairs(QUESTIONS) do
    print("\nQ: " .. q)
    local r, aerr = agent:ask(q)
    if r then
        print(("SQL (attempt %d of up to 3): %s"):format(r.attempts, r.sql))
        print(table.concat(r.columns, " | "))
        for _, row in ipairs(r.rows) do
            local cells = {}
            for j, c in ipairs(r.columns) do cells[j] = tostring(row[c]) end
            print(table.concat(cells, " | "))
        end
        if r.truncated then print("(more rows not shown: raise max_rows)") end
        print("A: " .. r.summary)
    else
        print(("failed (%s): %s"):format(aerr.kind, aerr.message))
    end
end

agent:close()
if demo then os.remove(db_path); os.remove(db_path .. "-wal"); os.remove(db_path .. "-shm") end
