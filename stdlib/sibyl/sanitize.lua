-- sibyl.sanitize -- input sanitization: prompt-injection and SQL phrases
-- matched over normalized text, secrets and PII found by structure.
--
--   local sanitize = require "sibyl.sanitize"
--   local ok, findings = sanitize.check(text)                            -- policy "flag"
--   local clean, findings = sanitize.check(text, { policy = "redact" })  -- secrets/PII masked
--   local text, err = sanitize.check(text, { policy = "reject" })        -- err.kind "rejected"
--   local s = sanitize.new{ patterns = { internal = { "project bluebird" } } }
--   local s2, err = sanitize.load("patterns.yaml")                       -- { category: [phrases] }
--
-- The engine is runtime/src/sanitize.c: an Aho-Corasick automaton compiled
-- once per object (sanitize.new / load / compile) and reused by every check.
-- Findings carry 1-based inclusive byte offsets into the ORIGINAL text.
--
-- Redaction only ever replaces the span of a secret or a PII item. Phrases
-- (injection, sql, user categories) are flagged or rejected, never cut out:
-- deleting words changes the meaning of what is left, and a filter that
-- removes "ignore previous instructions" teaches an attacker to split it.
-- See doc/sanitize.md.

local sibyl = require "sibyl"
local core = require "sibyl.sanitize.core"
local config = require "sibyl.config"
local defaults = require "sibyl.sanitize.patterns"

local type, pairs, ipairs, tostring, error, setmetatable = type, pairs, ipairs, tostring, error, setmetatable
local sub, format = string.sub, string.format
local concat, sort = table.concat, table.sort
local mkerror = sibyl.error

local _M = { _VERSION = "0.1.0" }

-- Categories found by structure (runtime/src/sanitize.c detect()).
local STRUCTURAL = { secrets = true, pii = true }
-- Categories whose spans the redact policy masks.
local REDACTED = { secrets = true, pii = true }
local POLICIES = { flag = true, redact = true, reject = true }

-- How each detector's match is masked: a prefix kept to say what it was,
-- and the last 4 characters, or a fixed label.
local KEEP_PREFIX = {
    openai_key = 3, anthropic_key = 7, github_token = 4, slack_token = 5, aws_access_key = 4,
}

local DEFAULTS = {
    policy = "flag",
    max_length = 100000,
    max_matches = 1000,
    excerpt = 80,
    word_boundary = true,
}


local function copy_patterns(dst, src, where)
    if type(src) ~= "table" then
        return nil, where .. ": patterns must be a mapping of category to a list of phrases"
    end
    for cat, list in pairs(src) do
        if type(cat) ~= "string" then
            return nil, where .. ": category names must be strings, got " .. type(cat)
        end
        if type(list) == "string" then
            list = { list }
        end
        if type(list) ~= "table" then
            return nil, where .. ": category " .. cat .. " must be a list of phrases, got " .. type(list)
        end
        for k in pairs(list) do
            if type(k) ~= "number" or k < 1 or k > #list or k % 1 ~= 0 then
                return nil, where .. ": category " .. cat .. " must be a list of phrases, got a mapping"
            end
        end
        local out = dst[cat] or {}
        dst[cat] = out
        for i, p in ipairs(list) do
            if type(p) ~= "string" or p == "" then
                return nil, format("%s: %s[%d] must be a non-empty string, got %s", where, cat, i,
                    type(p) == "string" and "an empty string" or type(p))
            end
            out[#out + 1] = p
        end
    end
    return dst
end


local function flatten(patterns)
    local phrases, cats, names = {}, {}, {}
    for cat in pairs(patterns) do
        names[#names + 1] = cat
    end
    sort(names)
    for _, cat in ipairs(names) do
        for _, p in ipairs(patterns[cat]) do
            phrases[#phrases + 1] = p
            cats[#cats + 1] = cat
        end
    end
    return phrases, cats
end


--- Compile { category = { phrase, ... } } into a scanner (userdata):
-- scanner:scan(text [, max_matches]) -> { {category, pattern, start, stop}, ... }, truncated;
-- scanner:close(). opts: word_boundary (default true), max_pattern (default
-- 256 normalized bytes). Raises on malformed patterns.
function _M.compile(patterns, opts)
    local flat, err = copy_patterns({}, patterns, "sanitize.compile")
    if not flat then
        error(err, 2)
    end
    local phrases, cats = flatten(flat)
    return core.compile(phrases, cats, opts or {})
end


--- The text as the scanner sees it (zero-width and control characters
-- dropped, look-alikes and full-width letters folded, spaces collapsed,
-- ASCII lower-cased).
function _M.normalize(text)
    if type(text) ~= "string" then
        error("bad argument #1 to 'normalize' (string expected, got " .. type(text) .. ")", 2)
    end
    return core.normalize(text)
end


local function mask(text, f)
    local keep = KEEP_PREFIX[f.pattern]
    if keep and f.stop - f.start + 1 > keep + 8 then
        return sub(text, f.start, f.start + keep - 1) .. "…" .. sub(text, f.stop - 3, f.stop)
    end
    if STRUCTURAL[f.category] and f.pattern ~= f.category then
        return "[REDACTED:" .. f.pattern .. "]"
    end
    return "[REDACTED:" .. f.category .. "]"
end


local function by_span(a, b)
    if a.start ~= b.start then
        return a.start < b.start
    end
    return a.stop > b.stop
end


local Sanitizer = {}
Sanitizer.__index = Sanitizer
Sanitizer.__name = "sibyl.sanitize"


local function check_opts(self, opts, level)
    if opts == nil then
        return self.opts
    end
    if type(opts) ~= "table" then
        error("sanitize: options must be a table, got " .. type(opts), level + 1)
    end
    local o = setmetatable({}, { __index = self.opts })
    for k, v in pairs(opts) do
        o[k] = v
    end
    if not POLICIES[o.policy] then
        error("sanitize: opts.policy must be \"flag\", \"redact\" or \"reject\", got " .. tostring(o.policy),
            level + 1)
    end
    if opts.categories ~= nil then
        if type(opts.categories) ~= "table" then
            error("sanitize: opts.categories must be a list of category names", level + 1)
        end
        local set = {}
        for _, c in ipairs(opts.categories) do
            if not self.known[c] then
                error("sanitize: unknown category " .. tostring(c) .. "; known: " .. concat(self.names, ", "),
                    level + 1)
            end
            set[c] = true
        end
        o.catset = set
    end
    return o
end


--- Raw findings for text: every phrase and structural match in the chosen
-- categories, sorted by start. Returns findings or nil, err ("too_large").
function Sanitizer:scan(text, opts)
    if type(text) ~= "string" then
        error("bad argument #1 to 'scan' (string expected, got " .. type(text) .. ")", 2)
    end
    if self.scanner == nil then
        error("sanitize: this sanitizer is closed; create a new one with sanitize.new", 2)
    end
    local o = check_opts(self, opts, 2)
    if #text > o.max_length then
        return nil, mkerror("too_large", format("input is %d bytes, over max_length %d; split it or raise "
            .. "opts.max_length", #text, o.max_length), { size = #text, max_length = o.max_length })
    end
    local cats = o.catset or self.catset
    local found = {}
    local m, err = self.scanner:scan(text, o.max_matches)
    if not m then
        return nil, err
    end
    for _, f in ipairs(m) do
        if cats[f.category] then
            found[#found + 1] = f
        end
    end
    if cats.secrets or cats.pii then
        local d, derr = core.detect(text, cats.secrets, cats.pii, o.max_matches)
        if not d then
            return nil, derr
        end
        for _, f in ipairs(d) do
            found[#found + 1] = f
        end
    end
    sort(found, by_span)
    for _, f in ipairs(found) do
        f.span = { f.start, f.stop }
        if REDACTED[f.category] then
            f.excerpt = mask(text, f)
        else
            f.excerpt = sub(text, f.start, f.stop < f.start + o.excerpt - 1 and f.stop or f.start + o.excerpt - 1)
        end
    end
    return found
end


--- Check text under a policy (opts.policy, default "flag"):
--   flag:   true, findings
--   redact: text with secret and PII spans masked, findings
--   reject: text when nothing was found, else nil, err (kind "rejected",
--           err.reasons = { {category=, pattern=}, ... }, err.findings)
-- Over opts.max_length: nil, err (kind "too_large").
function Sanitizer:check(text, opts)
    if type(text) ~= "string" then
        error("bad argument #1 to 'check' (string expected, got " .. type(text) .. ")", 2)
    end
    local o = check_opts(self, opts, 2)
    local findings, err = self:scan(text, o)
    if not findings then
        return nil, err
    end
    if o.policy == "flag" then
        return true, findings
    elseif o.policy == "redact" then
        local parts, pos = {}, 1
        for _, f in ipairs(findings) do
            if REDACTED[f.category] and f.start >= pos then
                parts[#parts + 1] = sub(text, pos, f.start - 1)
                parts[#parts + 1] = f.excerpt
                pos = f.stop + 1
            end
        end
        parts[#parts + 1] = sub(text, pos)
        return concat(parts), findings
    end
    if #findings == 0 then
        return text
    end
    local reasons, seen, names = {}, {}, {}
    for _, f in ipairs(findings) do
        local key = f.category .. "\0" .. f.pattern
        if not seen[key] then
            seen[key] = true
            reasons[#reasons + 1] = { category = f.category, pattern = f.pattern }
            names[#names + 1] = f.category .. " (" .. f.pattern .. ")"
        end
    end
    return nil, mkerror("rejected", "input rejected: found " .. concat(names, ", ")
        .. "; remove it or check with a narrower opts.categories", { reasons = reasons, findings = findings })
end


--- A new sanitizer extending this one's patterns with a YAML file.
function Sanitizer:load(path, opts)
    return _M.load(path, opts, self)
end


--- The categories this sanitizer knows, sorted.
function Sanitizer:categories()
    local out = {}
    for i, c in ipairs(self.names) do
        out[i] = c
    end
    return out
end


--- Free the automaton now (idempotent; __gc does it otherwise).
function Sanitizer:close()
    if self.scanner then
        self.scanner:close()
        self.scanner = nil
    end
end


Sanitizer.__tostring = function(self)
    return self.scanner and format("sibyl.sanitize (%d categories)", #self.names) or "sibyl.sanitize (closed)"
end


local function build(patterns, opts)
    local o = {}
    for k, v in pairs(DEFAULTS) do
        o[k] = v
    end
    for k, v in pairs(opts) do
        if k ~= "patterns" and k ~= "defaults" and k ~= "categories" then
            o[k] = v
        end
    end
    if not POLICIES[o.policy] then
        error("sanitize: opts.policy must be \"flag\", \"redact\" or \"reject\", got " .. tostring(o.policy), 3)
    end
    for _, k in ipairs{ "max_length", "max_matches", "excerpt" } do
        if type(o[k]) ~= "number" or o[k] < 1 then
            error("sanitize: opts." .. k .. " must be a number >= 1, got " .. tostring(o[k]), 3)
        end
    end
    local known, names = {}, {}
    for c in pairs(patterns) do known[c] = true end
    for c in pairs(STRUCTURAL) do known[c] = true end
    for c in pairs(known) do names[#names + 1] = c end
    sort(names)
    local catset = {}
    if opts.categories then
        for _, c in ipairs(opts.categories) do
            if not known[c] then
                error("sanitize: unknown category " .. tostring(c) .. "; known: " .. concat(names, ", "), 3)
            end
            catset[c] = true
        end
    else
        catset = known
    end
    local phrases, cats = flatten(patterns)
    local self = setmetatable({
        patterns = patterns, known = known, names = names, catset = catset, opts = o,
        scanner = core.compile(phrases, cats, { word_boundary = o.word_boundary, max_pattern = opts.max_pattern }),
    }, Sanitizer)
    return self
end


--- A reusable sanitizer. opts: patterns ({ category = { phrases } }, added
-- to the defaults unless defaults = false), categories (list; default all),
-- policy ("flag"), max_length (100000 bytes), max_matches (1000),
-- excerpt (80 bytes), word_boundary (true), max_pattern (256).
function _M.new(opts)
    opts = opts or {}
    if type(opts) ~= "table" then
        error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
    end
    local patterns = {}
    if opts.defaults ~= false then
        copy_patterns(patterns, defaults, "defaults")
    end
    if opts.patterns ~= nil then
        local ok, err = copy_patterns(patterns, opts.patterns, "sanitize.new")
        if not ok then
            error(err, 2)
        end
    end
    return build(patterns, opts)
end


--- A sanitizer with the default patterns (or base's), opts.patterns and
-- those of a YAML file { category: [phrases] } (${ENV} references are
-- expanded, see sibyl.config). Returns it or nil, err (kind "io", "parse"
-- or "config").
function _M.load(path, opts, base)
    if type(path) ~= "string" then
        error("bad argument #1 to 'load' (string expected, got " .. type(path) .. ")", 2)
    end
    opts = opts or {}
    local doc, err = config.load(path)
    if not doc then
        return nil, err
    end
    local patterns = {}
    if base then
        copy_patterns(patterns, base.patterns, "base")
    elseif opts.defaults ~= false then
        copy_patterns(patterns, defaults, "defaults")
    end
    if opts.patterns ~= nil then
        local ok, perr = copy_patterns(patterns, opts.patterns, "sanitize.load")
        if not ok then
            error(perr, 2)
        end
    end
    local ok, perr = copy_patterns(patterns, doc, path)
    if not ok then
        return nil, mkerror("config", perr .. "; see doc/sanitize.md for the file format", { path = path })
    end
    local o = {}
    for k, v in pairs(base and base.opts or {}) do o[k] = v end
    for k, v in pairs(opts) do o[k] = v end
    local bok, s = pcall(build, patterns, o)
    if not bok then                 -- a phrase the scanner refuses (empty, too long)
        return nil, mkerror("config", path .. ": " .. tostring(s):gsub("^.-sanitize: ", ""), { path = path })
    end
    return s
end


local shared


--- sanitize.check(text, opts) on a shared sanitizer with the default patterns.
function _M.check(text, opts)
    if type(text) ~= "string" then
        error("bad argument #1 to 'check' (string expected, got " .. type(text) .. ")", 2)
    end
    shared = shared or _M.new()
    return shared:check(text, opts)
end


return _M
