-- sibyl.agents.sql -- ask a SQLite database questions in plain language.
-- The agent shows the model the schema (tables and columns), asks it for one
-- SELECT, runs it on a READ-ONLY connection, feeds SQL errors back for a
-- bounded number of retries, caps the rows, and asks the model for a short
-- summary of the result.
--
--   local sql = require "sibyl.agents.sql"
--   local s = sql.new{ llm = client, db = "shop.db", max_rows = 200, retries = 2 }
--   local r, err = s:ask("Which customer spent the most?")
--   -- r = { sql, rows, columns, summary, attempts, truncated, reason }
--
-- Caveats:
--  * The guarantee against writes is the connection, not the prompt and not
--    a regex: a path is opened with sqlite.open(path, {readonly = true}),
--    whose authorizer refuses every write (kind "readonly"). A db you pass in
--    must have been opened that way, or new() raises.
--  * A model that insists on writing gets its refusal back `retries` times,
--    then ask() returns nil, err with err.kind "readonly".
--  * Rows past max_rows are cut (r.truncated = true): the query is re-run as
--    SELECT * FROM (<sql>) LIMIT max_rows.
--  * The schema text sent to the model is capped at max_schema_bytes.
-- Docs: doc/agents.md ("Specialised agents"). Spec: tests/lua/23-sql_web_agents_spec.lua.

local sibyl = require "sibyl"
local llm = require "sibyl.llm"
local json = require "sibyl.json"
local sqlite = require "sibyl.sqlite"

local type, ipairs, tostring, setmetatable, error, pcall, unpack, math_min =
    type, ipairs, tostring, setmetatable, error, pcall, unpack, math.min
local format, concat = string.format, table.concat
local mkerror = sibyl.error

local _M = { _VERSION = "0.1" }

--- Defaults for every limit; change them here or per agent.
_M.defaults = {
    max_rows = 200,             -- rows kept from a query; more are cut (r.truncated)
    retries = 2,                -- extra model attempts after a failing SQL statement
    max_schema_bytes = 16000,   -- the schema text shown to the model is cut here
    summary_rows = 20,          -- rows shown to the model when it writes the summary
    summarize = true,           -- false: a plain description instead of a model call
    structured = true,          -- ask for JSON {sql, reason} (structured output)
}

-- What the model must return when `structured` is on.
_M.reply_schema = {
    type = "object",
    properties = { sql = { type = "string" }, reason = { type = "string" } },
    required = { "sql" },
}

local SYSTEM = [[You translate questions into SQLite SQL.
Write exactly ONE read-only SELECT statement (WITH ... SELECT is fine) for the database below.
The connection is read-only: INSERT, UPDATE, DELETE, DROP, CREATE, ALTER and writing PRAGMAs are refused.
Reply with JSON: {"sql": "<the statement>", "reason": "<one sentence on how it answers the question>"}.

Database schema:
%s]]

local sql_agent = {}
local sql_agent_mt = { __index = sql_agent }


function sql_agent_mt.__tostring(s)
    return format("sibyl.agents.sql (%s, max_rows %d)", tostring(s.db:path()), s.max_rows)
end


-- ------------------------------------------------------------- helpers

local errtext = require("sibyl.agent").errtext


local function quote_ident(name)
    return '"' .. name:gsub('"', '""') .. '"'
end


--- Pull the SQL out of a reply: JSON {sql=} (bare, fenced or inside prose),
-- else a ```sql fenced block, else the whole text when it looks like SQL.
-- Returns sql, reason or nil.
function _M.extract_sql(text)
    if type(text) ~= "string" then return nil end
    local body = text:match("```[%w]*%s*\n(.-)```") or text
    local obj = body:match("^%s*(%b{})") or text:match("(%b{})")
    if obj then
        local ok, v = pcall(json.decode, obj)
        if ok and type(v) == "table" and type(v.sql) == "string" and v.sql:match("%S") then
            return v.sql, v.reason
        end
    end
    local fenced = text:match("```[sS][qQ][lL]%s*\n(.-)```") or text:match("```%s*\n(.-)```")
    if fenced and fenced:match("%S") then return (fenced:gsub("^%s+", ""):gsub("%s+$", "")) end
    local bare = text:gsub("^%s+", ""):gsub("%s+$", "")
    local first = (bare:match("^(%a+)") or ""):upper()
    if first == "SELECT" or first == "WITH" then return bare end
    return nil
end


-- ------------------------------------------------------------ the agent

--- A new SQL agent. opts: llm (a client, a provider name, or nil for the
-- default provider), db (a path, opened read-only, or a db already opened
-- with readonly = true), max_rows (200), retries (2), max_schema_bytes,
-- summary_rows, summarize (true), structured (true), model, temperature,
-- on_event = function(ev): {type = "sql", attempt, sql, reason} before a
-- statement runs, {type = "sql_error", attempt, sql, error} when it fails.
function _M.new(opts)
    if type(opts) ~= "table" then error("sql.new: options table expected", 2) end
    local d = _M.defaults
    local s = setmetatable({
        llm = opts.llm, model = opts.model, temperature = opts.temperature,
        max_rows = opts.max_rows or d.max_rows,
        retries = opts.retries or d.retries,
        max_schema_bytes = opts.max_schema_bytes or d.max_schema_bytes,
        summary_rows = opts.summary_rows or d.summary_rows,
        summarize = opts.summarize == nil and d.summarize or opts.summarize,
        structured = opts.structured == nil and d.structured or opts.structured,
        on_event = opts.on_event,
    }, sql_agent_mt)
    if s.on_event ~= nil and type(s.on_event) ~= "function" then
        error("sql.new: opts.on_event must be a function(ev)", 2)
    end
    if s.llm ~= nil and type(s.llm) ~= "table" and type(s.llm) ~= "string" then
        error("sql.new: opts.llm must be a client (llm.client, llm.mock) or a provider name", 2)
    end
    if type(s.max_rows) ~= "number" or s.max_rows < 1 then error("sql.new: opts.max_rows must be a number >= 1", 2) end
    if type(s.retries) ~= "number" or s.retries < 0 then error("sql.new: opts.retries must be a number >= 0", 2) end
    local db = opts.db
    if type(db) == "string" then
        local err
        s.db, err = sqlite.open(db, { readonly = true, create = false })
        if not s.db then
            return nil, mkerror(err.kind or "io", "sql agent: opening " .. db .. " read-only: " .. errtext(err))
        end
        s.owns_db = true
    elseif type(db) == "userdata" or type(db) == "table" then
        if not tostring(db):match("readonly%)$") then
            error("sql.new: opts.db must be a path or a db opened with sqlite.open(path, {readonly = true})", 2)
        end
        s.db = db
    else
        error("sql.new: opts.db is required (a path, or a db opened with readonly = true)", 2)
    end
    return s
end


--- The schema as text for the model: one line per table or view with its
-- columns (name, type, primary key, not null). Cached; `refresh` re-reads.
-- Returns text or nil, err.
function sql_agent:schema(refresh)
    if self._schema and not refresh then return self._schema end
    local objs, err = self.db:query(
        "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') "
        .. "AND name NOT LIKE 'sqlite_%' ORDER BY name")
    if not objs then return nil, err end
    local lines, size = {}, 0
    for _, o in ipairs(objs) do
        local cols, cerr = self.db:query("PRAGMA table_info(" .. quote_ident(o.name) .. ")")
        if not cols then return nil, cerr end
        local parts = {}
        for i, c in ipairs(cols) do
            local p = c.name .. (c.type and c.type ~= "" and (" " .. c.type) or "")
            if c.pk and c.pk > 0 then p = p .. " PRIMARY KEY" end
            if c.notnull == 1 then p = p .. " NOT NULL" end
            parts[i] = p
        end
        local line = format("%s %s (%s)", o.type == "view" and "VIEW" or "TABLE", o.name, concat(parts, ", "))
        if size + #line > self.max_schema_bytes then
            lines[#lines + 1] = format("... (%d more tables not shown; raise max_schema_bytes)", #objs - #lines)
            break
        end
        lines[#lines + 1] = line
        size = size + #line + 1
    end
    if #lines == 0 then lines[1] = "(the database has no tables)" end
    self._schema = concat(lines, "\n")
    return self._schema
end


-- One model call (a client, a provider name, or the default provider).
function sql_agent:_chat(o)
    o.model, o.temperature = o.model or self.model, o.temperature or self.temperature
    if type(self.llm) == "table" then return self.llm:chat(o) end
    o.provider = self.llm
    return llm.chat(o)
end


--- Run one statement on the read-only connection, keeping at most max_rows
-- rows. Returns rows (with .columns, .truncated) or nil, err (kind
-- "readonly" for a write, "sqlite" for syntax and unknown names...).
function sql_agent:query(sql, params)
    local rows, err = self.db:query(sql, params, { max_rows = self.max_rows })
    if rows then rows.truncated = false; return rows end
    if err.kind ~= "too_large" then return nil, err end
    local inner = sql:gsub("[%s;]+$", "")
    rows, err = self.db:query("SELECT * FROM (" .. inner .. ") LIMIT " .. self.max_rows, params,
                              { max_rows = self.max_rows })
    if not rows then
        return nil, mkerror("too_large", format("the query returns more than max_rows (%d) rows; "
            .. "add a LIMIT or aggregate, or raise max_rows", self.max_rows))
    end
    rows.truncated = true
    return rows
end


-- A plain description of a result, used without a model.
local function describe(rows)
    local n = #rows
    local s = format("%d row%s%s", n, n == 1 and "" or "s", rows.truncated and " (cut at max_rows)" or "")
    if rows.columns and #rows.columns > 0 then s = s .. " with columns " .. concat(rows.columns, ", ") end
    if n == 1 and #rows.columns <= 4 then
        local vals = {}
        for i, c in ipairs(rows.columns) do vals[i] = c .. " = " .. tostring(rows[1][c]) end
        s = s .. ": " .. concat(vals, ", ")
    end
    return s .. "."
end
_M.describe = describe


function sql_agent:_summary(question, sql, rows)
    if not self.summarize then return describe(rows) end
    local shown = {}
    for i = 1, math_min(#rows, self.summary_rows) do shown[i] = rows[i] end
    local prompt = format("Question: %s\nSQL: %s\nColumns: %s\nRows (%d%s, first %d shown as JSON):\n%s\n\n"
        .. "Answer the question in one or two sentences from these rows only.",
        question, sql, concat(rows.columns or {}, ", "), #rows, rows.truncated and ", cut at max_rows" or "",
        #shown, json.encode(shown))
    local r = self:_chat{ messages = { { role = "user", content = prompt } } }
    if r and r.content and r.content:match("%S") then return r.content end
    return describe(rows)         -- the summary is a nicety: fall back rather than fail
end


--- Answer `question`. Returns { sql, rows, columns, summary, attempts,
-- truncated, reason } or nil, err: kind "readonly" (the model kept writing),
-- "sqlite" (its SQL kept failing), "parse" (no SQL in its replies), or the
-- model's kinds. err.attempts, err.sql (the last statement tried).
function sql_agent:ask(question)
    if type(question) ~= "string" then error("sql_agent:ask: question must be a string", 2) end
    local schema_text, serr = self:schema()
    if not schema_text then
        return nil, mkerror(serr.kind, "sql agent: reading the schema: " .. errtext(serr), { cause = serr })
    end
    local messages = { { role = "user", content = question } }
    local system = format(SYSTEM, schema_text)
    local last_err, last_sql
    local tries = self.retries + 1
    for attempt = 1, tries do
        local o = { system = system, messages = { unpack(messages) } }   -- a copy: the list grows
        if self.structured then o.schema, o.repair = _M.reply_schema, 0 end
        local r, err = self:_chat(o)
        local text
        if r then
            text = r.content
        elseif err.kind == "parse" and err.content then
            text = err.content                  -- not JSON: look for a fenced block below
        else
            return nil, mkerror(err.kind, "sql agent: model call failed: " .. errtext(err),
                                { cause = err, attempts = attempt })
        end
        local sql, reason
        if r and type(r.data) == "table" and type(r.data.sql) == "string" then
            sql, reason = r.data.sql, r.data.reason
        else
            sql, reason = _M.extract_sql(text)
        end
        messages[#messages + 1] = { role = "assistant", content = text or "" }
        if not sql then
            last_err = mkerror("parse", "the model's reply holds no SQL statement")
            messages[#messages + 1] = { role = "user", content =
                'Your reply held no SQL. Reply with JSON {"sql": "<one SELECT statement>", "reason": "..."}.' }
        else
            last_sql = sql
            if self.on_event then self.on_event{ type = "sql", attempt = attempt, sql = sql, reason = reason } end
            local rows, qerr = self:query(sql)
            if rows then
                return {
                    sql = sql, reason = reason, rows = rows, columns = rows.columns,
                    truncated = rows.truncated, attempts = attempt,
                    summary = self:_summary(question, sql, rows),
                }
            end
            if qerr.kind ~= "readonly" and qerr.kind ~= "sqlite" and qerr.kind ~= "too_large" then
                return nil, mkerror(qerr.kind, "sql agent: running the query: " .. errtext(qerr),
                                    { cause = qerr, attempts = attempt, sql = sql })
            end
            last_err = qerr
            if self.on_event then self.on_event{ type = "sql_error", attempt = attempt, sql = sql, error = qerr } end
            local hint = qerr.kind == "readonly"
                and "This database is read-only and that will not change: write a SELECT that answers the question."
                or "Fix the statement using only the tables and columns of the schema."
            messages[#messages + 1] = { role = "user", content =
                format("The SQL failed: %s\n%s Reply with the corrected statement as JSON {\"sql\": ..., \"reason\": ...}.",
                       errtext(qerr), hint) }
        end
    end
    local what = last_err.kind == "readonly" and "the model kept asking for a write, which the read-only connection refused"
        or "the model's SQL kept failing"
    return nil, mkerror(last_err.kind, format("sql agent: %s after %d attempts (last: %s); rephrase the question or raise retries",
                                              what, tries, errtext(last_err)),
                        { cause = last_err, attempts = tries, sql = last_sql })
end


--- Close the connection when the agent opened it (idempotent).
function sql_agent:close()
    if self.owns_db and self.db then self.db:close() end
    return true
end


return _M
