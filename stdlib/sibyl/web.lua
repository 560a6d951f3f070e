-- sibyl.web -- web search and page fetching for agents.
--
--   local web = require "sibyl.web"
--   local hits, err = web.search("luajit ffi", { max_results = 5 })   -- { {title, url, snippet}, ... }
--   local page, err = web.fetch("https://example.org/")                -- { url, title, text, findings, ... }
--
-- search() talks to a SearXNG-style JSON API (GET /search?q=...&format=json
-- answering { results = { {title, url, content}, ... } }); run your own
-- SearXNG (enable `json` under search.formats in its settings.yml) and set
-- SIBYL_SEARCH_URL, or pass opts.endpoint.
--
-- Caveats:
--  * fetch() reduces HTML to readable text with patterns, not a DOM parser:
--    script, style, nav, noscript, svg, template and head are dropped,
--    headings, paragraphs and list items become lines, tags are stripped,
--    common entities decoded. Malformed HTML gives rougher text, never an error.
--  * Fetched text is untrusted. It is scanned with sibyl.sanitize (category
--    "injection", policy "flag") and the findings returned in page.findings so
--    an agent can warn about indirect prompt injection. Nothing is removed.
--  * Only the first max_bytes of a body are read (the transfer is stopped
--    there); the text is then cut at max_text. Both cuts add a note to the text.
--  * Character sets are not converted: UTF-8 pages read best.
-- Docs: doc/agents.md ("Specialised agents"). Spec: tests/lua/23-sql_web_agents_spec.lua.

local sibyl = require "sibyl"
local http = require "sibyl.http"
local json = require "sibyl.json"
local sanitize = require "sibyl.sanitize"

local type, ipairs, tostring, tonumber, error, pcall = type, ipairs, tostring, tonumber, error, pcall
local format, concat, char, floor = string.format, table.concat, string.char, math.floor
local getenv = os.getenv
local mkerror = sibyl.error

local _M = { _VERSION = "0.1" }

--- Defaults for every limit; change them here or per call.
_M.defaults = {
    endpoint = "http://127.0.0.1:8888/search",   -- used when SIBYL_SEARCH_URL is not set
    format = "searxng",
    max_results = 5,
    search_timeout = 10,        -- seconds
    fetch_timeout = 15,         -- seconds
    max_bytes = 2 * 1024 * 1024,   -- bytes of a page read; the rest is not downloaded
    max_text = 100000,          -- bytes of text returned after HTML is reduced
    max_snippet = 500,          -- bytes of each search result's snippet
}

-- Content types fetch() accepts.
local HTML_TYPES = { ["text/html"] = true, ["application/xhtml+xml"] = true }
local TEXT_TYPES = { ["text/plain"] = true, ["text/markdown"] = true, ["text/csv"] = true }


-- ------------------------------------------------------------- HTML to text

-- A case-insensitive Lua pattern for a literal tag name: "nav" -> "[nN][aA][vV]".
local function ci(name)
    return (name:gsub("%a", function(c) return "[" .. c:lower() .. c:upper() .. "]" end))
end


local function utf8_char(cp)
    if cp < 0 or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return "\239\191\189" end
    if cp < 0x80 then return char(cp) end
    if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
    if cp < 0x10000 then
        return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
    end
    return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end


local ENTITIES = {
    amp = "&", lt = "<", gt = ">", quot = '"', apos = "'", nbsp = " ", ndash = "\226\128\147",
    mdash = "\226\128\148", hellip = "\226\128\166", copy = "\194\169", reg = "\194\174",
    lsquo = "\226\128\152", rsquo = "\226\128\153", ldquo = "\226\128\156", rdquo = "\226\128\157",
    laquo = "\194\171", raquo = "\194\187", middot = "\194\183", bull = "\226\128\162", euro = "\226\130\172",
}


--- Decode HTML entities: the common named ones, &#NN; and &#xHH;.
-- Unknown names stay as written.
function _M.decode_entities(s)
    return (s:gsub("&(#?[xX]?)(%w+);", function(pre, name)
        if pre == "" then return ENTITIES[name] or ENTITIES[name:lower()] end
        local cp = (pre == "#") and tonumber(name) or tonumber(name, 16)
        if not cp then return nil end
        if cp == 160 then return " " end
        return utf8_char(cp)
    end))
end


local DROP = { "script", "style", "noscript", "nav", "svg", "template", "head", "iframe", "object" }
local BLOCK = { "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
                "main", "aside", "blockquote", "pre", "dd", "dt", "dl", "form", "hr", "figure", "figcaption",
                "h1", "h2", "h3", "h4", "h5", "h6", "title", "body", "html" }


-- The patterns, built once.
local DROP_PATS, BLOCK_PATS = {}, {}
for i, tag in ipairs(DROP) do
    local p = ci(tag)
    DROP_PATS[i] = { "<" .. p .. "[%s/>].-</" .. p .. "%s*>", "<" .. p .. "[%s>][^<]*$" }
end
for i, tag in ipairs(BLOCK) do BLOCK_PATS[i] = "</?" .. ci(tag) .. "[%s/>]" end
local LI_ATTR, LI_BARE = "<" .. ci("li") .. "%s[^>]*>", "<" .. ci("li") .. ">"


--- The <title> of an HTML document (entities decoded, spaces collapsed) or nil.
function _M.html_title(html)
    local t = html:match("<" .. ci("title") .. "[^>]*>(.-)</" .. ci("title") .. "%s*>")
    if not t then return nil end
    t = _M.decode_entities(t:gsub("<[^>]*>", "")):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
    return t ~= "" and t or nil
end


--- Reduce HTML to readable text: drop script/style/nav/noscript/svg/head
-- (and template, iframe, object), one line per heading, paragraph and list
-- item ("- " before items, "#" before headings), strip the other tags,
-- decode entities, collapse whitespace.
function _M.html_to_text(html)
    local s = html:gsub("<!%-%-.-%-%->", " ")
    s = s:gsub("<!%[CDATA%[.-%]%]>", " ")
    for _, p in ipairs(DROP_PATS) do
        s = s:gsub(p[1], " ")
        s = s:gsub(p[2], " ")            -- an unclosed one at the end
    end
    for level = 1, 6 do
        s = s:gsub("<[hH]" .. level .. "[^>]*>", "\n\n" .. ("#"):rep(level) .. " ")
    end
    s = s:gsub(LI_ATTR, "\n- ")
    s = s:gsub(LI_BARE, "\n- ")
    for _, p in ipairs(BLOCK_PATS) do
        s = s:gsub(p, "\n%0")
    end
    s = s:gsub("<[^>]*>", "")
    s = _M.decode_entities(s)
    -- whitespace: spaces inside lines, at most one blank line between blocks
    s = s:gsub("[ \t\r\f\v]+", " ")
    s = s:gsub(" *\n *", "\n")
    s = s:gsub("\n\n\n+", "\n\n")
    s = s:gsub("\n#+\n", "\n")          -- empty headings and items
    s = s:gsub("\n%-\n", "\n")
    s = s:gsub("\n\n%- ", "\n- ")       -- list items on consecutive lines
    s = s:gsub("^%s+", "")
    s = s:gsub("%s+$", "")
    return s
end


-- ------------------------------------------------------------- search

local function errtext_of(e)
    return type(e) == "table" and tostring(e.message or e.kind) or tostring(e)
end


local function check_opts(opts, fname)
    if opts ~= nil and type(opts) ~= "table" then error(fname .. ": opts must be a table", 3) end
    return opts or {}
end


--- Search the web through a SearXNG-style JSON endpoint. opts: endpoint
-- (default $SIBYL_SEARCH_URL or http://127.0.0.1:8888/search), format
-- ("searxng"), max_results (5), timeout (10), max_snippet (500).
-- Returns a list of { title, url, snippet } or nil, err: kind "config"
-- (no endpoint, unknown format), "http" (a 4xx/5xx reply), "parse" (not the
-- expected JSON), or the HTTP client's "connect" / "timeout".
function _M.search(query, opts)
    if type(query) ~= "string" then error("web.search: query must be a string", 2) end
    opts = check_opts(opts, "web.search")
    local d = _M.defaults
    local endpoint = opts.endpoint or getenv("SIBYL_SEARCH_URL") or d.endpoint
    local fmt = opts.format or d.format
    local max_results = opts.max_results or d.max_results
    local max_snippet = opts.max_snippet or d.max_snippet
    if type(endpoint) ~= "string" or not endpoint:match("^https?://") then
        return nil, mkerror("config", format("web.search: the search endpoint %q is not an http(s) URL; "
            .. "set SIBYL_SEARCH_URL (e.g. http://127.0.0.1:8888/search for a local SearXNG) or opts.endpoint",
            tostring(endpoint)))
    end
    if fmt ~= "searxng" then
        return nil, mkerror("config", format('web.search: unknown format %q; the supported format is "searxng"', tostring(fmt)))
    end
    local res, err = http.get(endpoint, { query = { q = query, format = "json" },
                                          timeout = opts.timeout or d.search_timeout })
    if not res then
        return nil, mkerror(err.kind, format("web.search: %s (is the search service at %s running? set SIBYL_SEARCH_URL)",
                                             errtext_of(err), endpoint), { cause = err })
    end
    if res.status >= 400 then
        local hint = res.status == 403 and "; SearXNG answers 403 when json is not enabled under search.formats in settings.yml"
            or ""
        return nil, mkerror("http", format("web.search: HTTP %d from %s%s", res.status, endpoint, hint),
                            { status = res.status, body = res.body })
    end
    local ok, data = pcall(json.decode, res.body)
    if not ok or type(data) ~= "table" or type(data.results) ~= "table" then
        return nil, mkerror("parse", format("web.search: the reply from %s is not SearXNG JSON with a results list; "
            .. "check that the endpoint is a SearXNG /search URL", endpoint), { body = res.body:sub(1, 200) })
    end
    local out = {}
    for _, r in ipairs(data.results) do
        if #out >= max_results then break end
        if type(r) == "table" and type(r.url) == "string" then
            local snippet = type(r.content) == "string" and r.content or ""
            if #snippet > max_snippet then snippet = snippet:sub(1, max_snippet) .. "..." end
            out[#out + 1] = { title = type(r.title) == "string" and r.title or r.url, url = r.url, snippet = snippet }
        end
    end
    return out
end


-- ------------------------------------------------------------- fetch

--- Fetch a page and reduce it to text. opts: max_bytes (2 MiB read at
-- most), max_text (100000 bytes of text), timeout (15), headers, scan
-- (true: sanitize findings). Returns { url, status, content_type, title,
-- text, truncated, bytes, findings } or nil, err: kind "unsupported" (not
-- HTML or text), "http" (4xx/5xx), or the HTTP client's ("timeout",
-- "connect", "url"...).
function _M.fetch(url, opts)
    if type(url) ~= "string" then error("web.fetch: url must be a string", 2) end
    opts = check_opts(opts, "web.fetch")
    local d = _M.defaults
    local max_bytes = opts.max_bytes or d.max_bytes
    local max_text = opts.max_text or d.max_text
    local parts, size, cut = {}, 0, false
    local ctype
    local res, err = http.get(url, {
        timeout = opts.timeout or d.fetch_timeout,
        headers = opts.headers,
        stream = function(chunk, r)
            if not ctype then
                ctype = ((r.headers["content-type"] or ""):match("^%s*([^;%s]+)") or ""):lower()
                if ctype ~= "" and not HTML_TYPES[ctype] and not TEXT_TYPES[ctype] then return false end
            end
            if size + #chunk >= max_bytes then
                parts[#parts + 1] = chunk:sub(1, max_bytes - size)
                size, cut = max_bytes, true
                return false
            end
            parts[#parts + 1] = chunk
            size = size + #chunk
        end,
    })
    if not res then
        return nil, mkerror(err.kind, "web.fetch: " .. errtext_of(err), { cause = err, url = url })
    end
    ctype = ctype or ((res.headers["content-type"] or ""):match("^%s*([^;%s]+)") or ""):lower()
    if res.status >= 400 then
        return nil, mkerror("http", format("web.fetch: HTTP %d from %s", res.status, url), { status = res.status })
    end
    local body = concat(parts)
    local is_html
    if HTML_TYPES[ctype] then
        is_html = true
    elseif TEXT_TYPES[ctype] then
        is_html = false
    elseif ctype == "" then
        is_html = body:sub(1, 512):lower():match("<!doctype html") or body:sub(1, 512):lower():match("<html") and true
    else
        return nil, mkerror("unsupported", format("web.fetch: %s is %s, not HTML or text; "
            .. "fetch it with sibyl.http and handle the format yourself", url, ctype), { content_type = ctype, url = url })
    end
    local title, text
    if is_html then
        title = _M.html_title(body)
        text = _M.html_to_text(body)
    else
        text = body
    end
    local truncated = cut
    if #text > max_text then
        text = text:sub(1, max_text)
        truncated = true
    end
    if truncated then
        text = text .. format("\n\n[truncated: the page is longer than this (max_bytes %d, max_text %d); "
            .. "raise opts.max_bytes or opts.max_text to read more]", max_bytes, max_text)
    end
    local findings = {}
    if opts.scan ~= false and #text > 0 then
        local ok, f = sanitize.check(text, { categories = { "injection" }, max_length = #text + 1 })
        if ok then findings = f end
    end
    return {
        url = res.url or url, status = res.status, content_type = ctype, title = title, text = text,
        truncated = truncated, bytes = size, findings = findings,
    }
end


return _M
