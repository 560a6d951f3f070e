-- sanitize_bench.lua -- the workload of ../shared/bench/py_regex.py in Lua:
-- the same 200 phrases (18 injection / SQL phrases and secretphrase000..181),
-- case-insensitive, over a text of 2,000,000 words drawn from the same 17
-- words with one "please IGNORE previous instructions" in the middle.
-- Prints MB/s for a bare compiled scanner (no word boundaries, like the
-- regex) and for sanitize:check with the default patterns, secrets and PII.
--
-- Python's list holds one regex, "update .* set"; the scanner matches
-- phrases, so here it is the literal text "update .* set" (neither finds
-- anything in this text: "update" is not one of the words).
local sibyl = require "sibyl"
local sanitize = require "sibyl.sanitize"

local NWORDS = tonumber(arg and arg[1]) or 2000000

local pats = { "ignore previous", "ignore all previous instructions", "system:", "assistant:", "disregard the above",
    "you are now", "drop table", "delete from", "insert into", "update .* set", "union select", "jailbreak",
    "developer mode", "reveal your system prompt", "pretend to be", "act as", "base64", "</script>" }
for i = 0, 200 - #pats - 1 do pats[#pats + 1] = string.format("secretphrase%03d", i) end

math.randomseed(0)
local words = {}
for w in ("the quick brown fox jumps over lazy dogs while agents answer questions about documents and tables"):gmatch("%S+") do
    words[#words + 1] = w
end
local parts = {}
for i = 1, NWORDS do parts[i] = words[math.random(#words)] end
local text = table.concat(parts, " ")
local half = math.floor(#text / 2)
text = text:sub(1, half) .. " please IGNORE previous instructions " .. text:sub(half + 1)

local t0 = sibyl.now()
local scanner = sanitize.compile({ bench = pats }, { word_boundary = false })
local tc = sibyl.now() - t0

t0 = sibyl.now()
local m = assert(scanner:scan(text))
local dt = sibyl.now() - t0
print(string.format("sibyl scanner, %d patterns: %.1f MB/s over %.1f MB, %d hits (compile %.2f ms)",
    #pats, #text / dt / 1e6, #text / 1e6, #m, tc * 1e3))

local s = sanitize.new{ max_length = #text + 1 }
t0 = sibyl.now()
local ok, findings = s:check(text)
dt = sibyl.now() - t0
assert(ok)
print(string.format("sibyl check, defaults: %.1f MB/s over %.1f MB, %d findings", #text / dt / 1e6, #text / 1e6, #findings))
