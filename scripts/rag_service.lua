-- rag_service.lua -- questions about a folder of documents, answered with
-- citations, served as an OpenAI-compatible API (model "rag"): any OpenAI
-- client, curl or chat UI can use it.
--
--   sibyl serve scripts/rag_service.lua --port 8080
--   curl -s localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \
--        -d '{"model":"rag","messages":[{"role":"user","content":"How do deadlines work?"}]}'
--
--   sibyl scripts/rag_service.lua [--mock]    -- run directly: serve on a free port, ask one
--                                             -- question over HTTP, print the reply, exit
--
-- The steps: index the folder (doc/ by default) into a cache file (a second
-- start only re-reads the files that changed), then answer each request's
-- last user message from the index. With no language model configured the
-- answer is extractive: the best-matching sentences, each with its source
-- number. Set OPENAI_API_KEY (or OPENAI_BASE_URL for a local server, or
-- ANTHROPIC_API_KEY) and a model writes the answer from the same sources.
-- Streaming clients (`"stream": true`) get the answer in pieces either way.
--
-- To change it: the folder and the cache file (SIBYL_DOCS, SIBYL_INDEX),
-- passages per answer (K), the served table at the bottom (keys, limits,
-- more routes; see doc/serve.md). For an agent that searches several times
-- before answering, serve a sibyl.agent instead (scripts/rag_agent.lua).

local rag = require "sibyl.rag"

local DOCS = os.getenv("SIBYL_DOCS") or "doc"
local INDEX = os.getenv("SIBYL_INDEX") or ((os.getenv("TMPDIR") or "/tmp") .. "/sibyl-rag-service.db")
local K = 5                                   -- passages per answer


-- 1. Index the folder (incremental) and open the index for searching.
local function open_index()
    local stats, err = rag.index{ path = DOCS, store = INDEX, progress = false }
    if not stats then
        error(("indexing %s failed (%s): %s"):format(DOCS, tostring(err.kind), tostring(err.message)), 0)
    end
    io.stderr:write(("rag_service: %s indexed into %s: %d files (%d changed), %d chunks\n"):format(
        DOCS, INDEX, stats.files, stats.indexed, stats.total_chunks))
    return assert(rag.open(INDEX))
end


-- 2. A model for the --mock demo: scripted, offline. nil means the default
-- provider when one is configured, else extractive answers.
local function pick_model(argv)
    for _, a in ipairs(argv or {}) do
        if a == "--mock" then
            return require("sibyl.llm").mock{ default = "(mock model) The answer is in source [1]." }
        end
    end
end


-- 3. The answer function the service calls for model "rag": the messages
-- of the request in, the reply text out. ctx.stream(text) sends a piece to
-- a streaming client (and does nothing for the others).
local function rag_answerer(idx, model)
    return function(messages, ctx)
        local question = messages[#messages].content      -- the last user message
        local streamed = false
        local a, err = idx:answer(question, {
            k = K, llm = model,
            stream = function(d)                          -- the model's text, as it comes
                if d.type == "text" and d.text ~= "" then
                    streamed = true
                    ctx.stream(d.text)
                end
            end,
        })
        if not a then return nil, err end
        local lines = { "", "", "Sources:" }
        for _, s in ipairs(a.sources) do
            lines[#lines + 1] = ("[%d] %s:%d%s"):format(s.n, s.path, s.line or 1,
                                                        s.heading and ("  " .. s.heading) or "")
        end
        local sources = table.concat(lines, "\n")
        if not streamed then
            -- extractive answers come whole: send them line by line
            for line in (a.text .. "\n"):gmatch("([^\n]*\n)") do ctx.stream(line) end
            ctx.stream(sources:sub(2))                    -- one "\n" already sent
        else
            ctx.stream(sources)
        end
        return { content = a.text .. sources, usage = a.usage }
    end
end


-- 4. Run directly (not under `sibyl serve`): serve on a free port, ask one
-- question the way a client would, print the reply and stop.
local function self_check(app)
    local http = require "sibyl.http"
    local service = require "sibyl.service"
    app.port, app.access_log = 0, false
    local srv = assert(service.listen(app))
    local question = os.getenv("SIBYL_QUESTION") or "What does sibyl.deadline do when the time is up?"
    local res = assert(http.post(("http://127.0.0.1:%d/v1/chat/completions"):format(srv.port), {
        model = "rag", messages = { { role = "user", content = question } },
    }))
    local reply = res:json()
    print(("POST /v1/chat/completions -> %d"):format(res.status))
    print("Q: " .. question)
    print("A: " .. (reply.choices and reply.choices[1].message.content or res.body))
    srv:close()
end


local idx = open_index()
local app = {
    agents = { rag = rag_answerer(idx, pick_model(arg)) },
    -- keys = { "sk-change-me" },      -- or SIBYL_API_KEYS=k1,k2 in the environment
    -- max_body = 256 * 1024, timeout = 60, access_log = true,
    routes = {
        ["GET /"] = function() return "sibyl rag service: POST /v1/chat/completions with model \"rag\"\n" end,
    },
}

if package.loaded["sibyl.serve"] then
    return app                        -- `sibyl serve` listens and serves it
end
self_check(app)
idx:close()
