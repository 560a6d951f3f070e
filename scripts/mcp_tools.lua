-- mcp_tools.lua -- a few useful tools served over MCP, for any MCP client
-- (Claude Desktop, IDEs, the official SDKs, or a Sibyl agent):
--
--   sibyl mcp serve scripts/mcp_tools.lua               -- stdio: what desktop clients spawn
--   sibyl mcp serve scripts/mcp_tools.lua --http 8000   -- Streamable HTTP on POST /mcp
--
--   sibyl scripts/mcp_tools.lua [--mock]   -- run directly: start the server over stdio, let an
--                                          -- agent use it (scripted model with --mock), print
--
-- The tools: calculate (arithmetic), now (date and time), list_files and
-- read_file (inside one folder, MCP_ROOT, the current directory by default;
-- never outside it), search_docs (ranked passages from the documents in
-- MCP_DOCS, doc/ by default). One resource (the README) and one prompt
-- (explain a file). Tools take the same shape as sibyl.agent tools:
-- {name, description, parameters (JSON Schema), fn = function(args, ctx)};
-- the server checks arguments against the schema before fn runs, and a
-- tool that returns nil, err answers the client with isError. To add a
-- tool, append one to TOOLS. doc/mcp.md has the rest.

local fs = require "sibyl.fs"

local ROOT = os.getenv("MCP_ROOT") or "."
local DOCS = os.getenv("MCP_DOCS") or "doc"
local MAX_READ = 64 * 1024                   -- bytes read_file returns at most


-- A path inside ROOT, or nil, err: no absolute paths, no "..".
local function inside(path)
    if type(path) ~= "string" or path:find("^/") or path:find("%.%.") then
        return nil, "give a relative path inside the served folder, without '..'"
    end
    return ROOT .. "/" .. path
end


-- Arithmetic only: digits, operators, parentheses and math functions.
local function calculate(args)
    local e = args.expression
    if e:find("[^%d%s%.%+%-%*/%%%^%(%)eE,a-z_]") then
        return nil, "only numbers, + - * / % ^ ( ) and math functions (sqrt, sin, log...) are allowed"
    end
    for name in e:gmatch("[a-z_]+") do
        if name ~= "e" and math[name] == nil then return nil, "unknown function " .. name end
    end
    local f = load("return " .. e, "expression", "t", math)
    local ok, v = pcall(f or error)
    if not (f and ok) or type(v) ~= "number" then return nil, "not a valid expression: " .. e end
    return { expression = e, value = v }
end


local index                                  -- the search index, opened on first use

local function search_docs(args)
    if not index then
        local rag = require "sibyl.rag"
        local store = (os.getenv("TMPDIR") or "/tmp") .. "/sibyl-mcp-tools.db"
        local ok, err = rag.index{ path = DOCS, store = store, progress = false }
        if not ok then return nil, "cannot index " .. DOCS .. ": " .. tostring(err.message) end
        index = assert(rag.open(store))
    end
    local hits, err = index:search(args.query, { k = args.k or 3 })
    if not hits then return nil, err end
    local out = {}
    for i, h in ipairs(hits) do
        out[i] = { path = h.path, line = h.line, heading = h.heading, text = h.text }
    end
    return out
end


local TOOLS = {
    { name = "calculate", description = "Evaluate an arithmetic expression, e.g. '17 * 23' or 'sqrt(2) / 3'",
      parameters = { type = "object", properties = { expression = { type = "string", maxLength = 500 } },
                     required = { "expression" } },
      fn = calculate },
    { name = "now", description = "The current date and time (UTC, ISO 8601) and the Unix time",
      fn = function() return { utc = os.date("!%Y-%m-%dT%H:%M:%SZ"), unix = os.time() } end },
    { name = "list_files", description = "List the files of a folder inside the served folder",
      parameters = { type = "object", properties = { path = { type = "string", default = "." } } },
      fn = function(args)
          local dir, err = inside(args.path or ".")
          if not dir then return nil, err end
          local names, lerr = fs.list(dir)
          if not names then return nil, lerr end
          table.sort(names)
          return names
      end },
    { name = "read_file", description = "Read a text file inside the served folder (first 64 KiB)",
      parameters = { type = "object", properties = { path = { type = "string" } }, required = { "path" } },
      fn = function(args)
          local p, err = inside(args.path)
          if not p then return nil, err end
          local text, rerr = fs.read(p)
          if not text then return nil, rerr end
          return text:sub(1, MAX_READ)
      end },
    { name = "search_docs", description = "Search the documentation: the best passages for a query, with their files",
      parameters = { type = "object", properties = { query = { type = "string" },
                                                     k = { type = "integer", minimum = 1, maximum = 10 } },
                     required = { "query" } },
      fn = search_docs },
}

local server = {
    name = "sibyl-tools", version = "0.1.0",
    instructions = "Arithmetic, the time, files of one folder, and documentation search.",
    tools = TOOLS,
    resources = {
        { uri = "file:///README.md", name = "README", mime_type = "text/markdown",
          read = function() return fs.read(ROOT .. "/README.md") end },
    },
    prompts = {
        { name = "explain_file", description = "Ask the model to explain a file of the served folder",
          arguments = { { name = "path", description = "a relative path", required = true } },
          get = function(args) return "Read " .. args.path .. " with read_file and explain what it does." end },
    },
}

if package.loaded["sibyl.mcp.cli"] then
    return server                            -- `sibyl mcp serve` serves it
end


-- Run directly: serve this file over stdio and let an agent use its tools.
local mcp = require "sibyl.mcp"
local agent = require "sibyl.agent"
local sibyl_bin = arg and arg[-1] or "sibyl"
local c = assert(mcp.connect{ command = { sibyl_bin, "mcp", "serve", arg and arg[0] or "scripts/mcp_tools.lua" } })
print(("connected: %s %s, protocol %s"):format(c.server_info.name, c.server_info.version, c.protocol_version))
local tools = assert(mcp.tools(c))
for _, t in ipairs(tools) do print("  tool: " .. t.name .. " - " .. t.description) end

local model
for _, a in ipairs(arg or {}) do
    if a == "--mock" then                    -- a scripted model: calls calculate, then answers
        model = require("sibyl.llm").mock{ replies = {
            { tool_calls = { { id = "1", name = "calculate", arguments = { expression = "17 * 23" } } } },
            function(req)                    -- the tool's result is the last message (a table)
                return "17 * 23 = " .. tostring(req.messages[#req.messages].content.value)
            end,
        } }
    end
end
local a = agent.new{ llm = model, tools = tools, system = "Use the tools to answer." }
local r, err = a:run("What is 17 * 23?")
print(r and ("agent: " .. r.content) or ("agent failed: " .. tostring(err)))
c:close()
