-- sibyl.rag.answer -- answers from retrieved chunks.
--
-- With a language model configured (sibyl.llm finds a provider, or
-- opts.llm is a client), the model gets the question and the numbered
-- sources and must cite them as [n]. With none, the answer is extractive:
-- the sentences of the retrieved chunks that best match the question, each
-- with its source number, labelled as such. Both return the same shape:
-- {text, sources = {{n, path, line, heading}}, mode, hits}.

local type, ipairs, pairs, tostring, error = type, ipairs, pairs, tostring, error
local format, gmatch, lower, sub, find, gsub, match =
    string.format, string.gmatch, string.lower, string.sub, string.find, string.gsub, string.match
local concat, sort = table.concat, table.sort
local log, min = math.log, math.min

local _M = {}

_M.defaults = {
    k = 5,                      -- chunks retrieved
    sentences = 3,              -- extractive: sentences in the answer
    max_sentence = 400,         -- extractive: longer "sentences" (code, tables) are skipped
    system = "You answer questions using only the numbered sources below. Cite every claim "
        .. "with its source number in brackets, like [2]. If the sources do not contain the "
        .. "answer, say so plainly.",
}

local EXTRACTIVE_LABEL = "Extractive answer (no language model configured; these are the passages "
    .. "that best match the question):"


local function sources_of(hits)
    local out = {}
    for i, h in ipairs(hits) do
        out[i] = { n = i, path = h.path, line = h.line, heading = h.heading, id = h.id }
    end
    return out
end


-- Sentences of a chunk with their line numbers (chunk.line + newlines before).
local function sentences(hit, out, n)
    -- code blocks are not prose to quote: blank them out, keeping offsets
    local text = gsub(hit.text, "```.-```", function(block) return (gsub(block, "[^\n]", " ")) end)
    text = gsub(text, "```.*$", function(block) return (gsub(block, "[^\n]", " ")) end)
    local p, len = 1, #text
    while p <= len do
        local a, b = find(text, "[%.!?][\"')%]]*%s", p)
        local stop = a and a or len
        if a then
            local q = a
            while q < b and not match(sub(text, q + 1, q + 1), "%s") do q = q + 1 end
            stop = q
        end
        local s = gsub(gsub(sub(text, p, stop), "^%s+", ""), "%s+", " ")
        s = gsub(gsub(s, "^[-*+]%s+", ""), "^%d+[.)]%s+", "")      -- a list item's marker
        if s ~= "" then
            local _, nl = gsub(sub(text, 1, p), "\n", "")
            out[#out + 1] = { text = s, n = n, line = (hit.line or 1) + nl, pos = #out + 1 }
        end
        if not b then break end
        p = b + 1
    end
end


local function extractive(question, hits, opts)
    local rag = require "sibyl.rag"
    local terms = rag.terms(question)
    local cands = {}
    for i, h in ipairs(hits) do sentences(h, cands, i) end
    -- document frequency of each term over the candidate sentences
    local df = {}
    for _, c in ipairs(cands) do
        local l = lower(c.text)
        for _, t in ipairs(terms) do
            if find(l, t, 1, true) then df[t] = (df[t] or 0) + 1 end
        end
    end
    local N = #cands
    for _, c in ipairs(cands) do
        local l, score = lower(c.text), 0
        for _, t in ipairs(terms) do
            if find(l, t, 1, true) then score = score + log(1 + N / df[t]) end
        end
        -- prefer sentences from better-ranked chunks, and not too long
        c.score = score / (1 + 0.15 * (c.n - 1)) / (1 + #c.text / 600)
        local _, bars = gsub(c.text, "|", "")
        if #c.text > (opts.max_sentence or _M.defaults.max_sentence) or #c.text < 12
           or bars >= 2 or find(c.text, "```", 1, true) then
            c.score = 0                     -- table rows and code are not sentences to quote
        end
    end
    sort(cands, function(a, b)
        if a.score ~= b.score then return a.score > b.score end
        return a.pos < b.pos
    end)
    local picked, seen = {}, {}
    local floor = cands[1] and cands[1].score * 0.4 or 0    -- much weaker matches add noise
    for _, c in ipairs(cands) do
        if #picked >= (opts.sentences or _M.defaults.sentences) or c.score <= 0 or c.score < floor then
            break
        end
        if not seen[c.text] then
            seen[c.text] = true
            picked[#picked + 1] = c
        end
    end
    if #picked == 0 then
        return "No passage in the index matches the question.", picked
    end
    local lines = { EXTRACTIVE_LABEL }
    for _, c in ipairs(picked) do
        lines[#lines + 1] = format("- %s [%d]", c.text, c.n)
    end
    return concat(lines, "\n"), picked
end


-- A model to ask, or nil when none is configured.
local function model(opts)
    if opts.llm == false then return nil end
    if type(opts.llm) == "table" then return opts.llm end
    local ok, llm = pcall(require, "sibyl.llm")
    if not ok then return nil end
    local c = llm.provider(opts.provider)
    return c
end


--- Answer question from index idx. opts: k, filter, llm (a client, or false
-- for extractive), provider, model, sentences, stream (passed to llm.chat).
function _M.answer(idx, question, opts)
    if type(question) ~= "string" or question == "" then
        error("rag answer: the question must be a non-empty string", 3)
    end
    local hits, err = idx:search(question, { k = opts.k or _M.defaults.k, filter = opts.filter })
    if not hits then return nil, err end
    local sources = sources_of(hits)
    local client = model(opts)
    if client and #hits > 0 then
        local parts = {}
        for i, h in ipairs(hits) do
            parts[#parts + 1] = format("[%d] %s:%d%s\n%s", i, h.path, h.line or 1,
                                       h.heading and (" (" .. h.heading .. ")") or "", h.text)
        end
        local r, cerr = client:chat{
            system = opts.system or _M.defaults.system,
            messages = { { role = "user", content = "Sources:\n\n" .. concat(parts, "\n\n")
                           .. "\n\nQuestion: " .. question } },
            model = opts.model, stream = opts.stream,
        }
        if not r then return nil, cerr end
        return { text = r.content, sources = sources, mode = "llm", hits = hits, usage = r.usage }
    end
    local text, picked = extractive(question, hits, opts)
    return { text = text, sources = sources, mode = "extractive", hits = hits, sentences = picked }
end


--- Format an answer for a terminal: the text, then the sources.
function _M.format(a)
    local lines = { a.text, "", "Sources:" }
    for _, s in ipairs(a.sources) do
        lines[#lines + 1] = format("  [%d] %s:%d%s", s.n, s.path, s.line or 1,
                                   s.heading and ("  " .. s.heading) or "")
    end
    return concat(lines, "\n")
end


return _M
