-- 05-yaml_spec.lua -- sibyl.yaml (runtime/src/yaml.c) and sibyl.config.
--
-- Run with `sibyl test tests/lua/05-yaml_spec.lua`. Fixtures live in
-- tests/fixtures/yaml/.

local yaml = require "sibyl.yaml"
local config = require "sibyl.config"

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "tests/lua/"
local FIXTURES = here .. "../fixtures/yaml/"

local null = yaml.null


local function fixture(name)
    return FIXTURES .. name
end


-- Deep equality that treats NaN as equal to NaN.
local function same(a, b)
    if a ~= a and b ~= b then
        return true
    end
    if type(a) ~= type(b) then
        return false
    end
    if type(a) ~= "table" then
        return a == b
    end
    for k, v in pairs(a) do
        if not same(v, b[k]) then
            return false
        end
    end
    for k in pairs(b) do
        if a[k] == nil then
            return false
        end
    end
    return true
end


local function roundtrip(v)
    local text = yaml.encode(v)
    local back, err = yaml.decode(text)
    assert.is_nil(err)
    assert.is_true(same(v, back), "round trip changed the value; encoded as:\n" .. text)
    return text
end


describe("yaml.decode scalar typing (YAML 1.2 core schema)", function()
    local cases = {
        -- plain text           expected value
        { "~",                  null },
        { "null",               null },
        { "Null",               null },
        { "NULL",               null },
        { "",                   null },
        { "true",               true },
        { "True",               true },
        { "TRUE",               true },
        { "false",              false },
        { "False",              false },
        { "FALSE",              false },
        { "yes",                "yes" },      -- YAML 1.1 booleans are strings in 1.2
        { "no",                 "no" },
        { "on",                 "on" },
        { "0",                  0 },
        { "42",                 42 },
        { "-17",                -17 },
        { "+5",                 5 },
        { "017",                17 },         -- decimal, not octal, in 1.2
        { "0o17",               15 },
        { "0x1F",               31 },
        { "0xff",               255 },
        { "1.5",                1.5 },
        { "-0.25",              -0.25 },
        { ".5",                 0.5 },
        { "1.",                 1 },
        { "1e3",                1000 },
        { "6.02E+23",           6.02e23 },
        { ".inf",               math.huge },
        { "-.Inf",              -math.huge },
        { "+.INF",              math.huge },
        { "1_000",              "1_000" },
        { "0b101",              "0b101" },
        { "12:30",              "12:30" },
        { "1.2.3",              "1.2.3" },
        { "0x",                 "0x" },
        { "nulls",              "nulls" },
        { "hello world",        "hello world" },
        { "123456789012",       123456789012 },
    }

    for _, case in ipairs(cases) do
        local text, want = case[1], case[2]
        it("types plain '" .. text .. "' as " .. type(want) .. " " .. tostring(want), function()
            local doc, err = yaml.decode("v: " .. text .. "\n")
            assert.is_nil(err)
            assert.are.equal(want, doc.v)
            assert.are.equal(want, yaml.scalar(text))
        end)
    end

    it("types .nan as NaN", function()
        local v = yaml.decode("[.nan, .NaN, .NAN]")
        for i = 1, 3 do
            assert.is_true(v[i] ~= v[i])
        end
    end)

    it("keeps quoted and block scalars as strings", function()
        local v = yaml.decode([[
a: "1"
b: 'true'
c: "~"
d: ''
e: |
  42
f: >-
  null
]])
        assert.are.same({ a = "1", b = "true", c = "~", d = "", e = "42\n", f = "null" }, v)
    end)

    it("honours explicit tags", function()
        local v = yaml.decode([[
s: !!str 42
t: !!str true
i: !!int "42"
f: !!float 3
f2: !!float "2.5"
b: !!bool "false"
n: !!null ""
x: ! 12
u: !custom 7
]])
        assert.are.same({ s = "42", t = "true", i = 42, f = 3, f2 = 2.5, b = false, n = null,
                          x = "12", u = 7 }, v)
    end)

    it("rejects a tag whose value does not fit", function()
        local v, err = yaml.decode("a: 1\nb: !!int twelve\n")
        assert.is_nil(v)
        assert.are.equal("parse", err.kind)
        assert.are.equal(2, err.line)
        assert.matches("invalid !!int value 'twelve'", err.message, 1, true)
    end)

    it("yaml.scalar resolves one plain scalar and honours opts.null", function()
        assert.are.equal(8080, yaml.scalar("8080"))
        assert.are.equal(true, yaml.scalar("true"))
        assert.are.equal("8080x", yaml.scalar("8080x"))
        assert.are.equal(null, yaml.scalar(""))
        assert.are.equal("NIL", yaml.scalar("~", { null = "NIL" }))
    end)
end)


describe("yaml.decode structures", function()
    it("decodes nested mappings and sequences", function()
        local v = yaml.decode([[
agent:
  name: helper
  tools:
    - name: search
      args: [query, limit]
    - name: calc
      args: []
  limits: {tokens: 1000, depth: 3}
empty_map: {}
]])
        assert.are.same({
            agent = {
                name = "helper",
                tools = {
                    { name = "search", args = { "query", "limit" } },
                    { name = "calc", args = {} },
                },
                limits = { tokens = 1000, depth = 3 },
            },
            empty_map = {},
        }, v)
    end)

    it("types mapping keys like values", function()
        local v = yaml.decode("1: one\ntrue: yes\n'2': two\n")
        assert.are.equal("one", v[1])
        assert.are.equal("yes", v[true])
        assert.are.equal("two", v["2"])
    end)

    it("returns a top-level scalar", function()
        assert.are.equal(42, yaml.decode("42"))
        assert.are.equal("hi", yaml.decode("--- hi\n"))
    end)

    it("decodes an empty stream or document to yaml.null", function()
        assert.are.equal(null, yaml.decode(""))
        assert.are.equal(null, yaml.decode("# just a comment\n"))
        assert.are.equal(null, yaml.decode("---\n...\n"))
    end)

    it("reads only the first document", function()
        assert.are.same({ a = 1 }, yaml.decode("a: 1\n---\nb: 2\n---\n[unclosed\n"))
    end)

    it("decode_all returns every document", function()
        local f = assert(io.open(fixture("multi.yaml"), "rb"))
        local text = f:read("*a")
        f:close()
        local docs, err = yaml.decode_all(text)
        assert.is_nil(err)
        assert.are.same({ { name = "first" }, { name = "second", items = { 1, 2 } }, { "third" } }, docs)
        assert.are.same({}, yaml.decode_all(""))
        assert.are.same({ null, null }, yaml.decode_all("---\n---\n"))
    end)

    it("decode_all reports an error in a later document", function()
        local docs, err = yaml.decode_all("a: 1\n---\nb: [1\n")
        assert.is_nil(docs)
        assert.are.equal("parse", err.kind)
    end)

    it("rejects non-scalar and null keys", function()
        local v, err = yaml.decode("? [a, b]\n: c\n")
        assert.is_nil(v)
        assert.matches("complex mapping keys", err.message, 1, true)
        v, err = yaml.decode("a: 1\n~: 2\n")
        assert.is_nil(v)
        assert.matches("null mapping keys", err.message, 1, true)
        assert.are.equal(2, err.line)
    end)
end)


describe("yaml.decode nulls", function()
    it("keeps nulls in sequences as yaml.null so lengths hold", function()
        local v = yaml.decode("[1, ~, 3, null, ]")
        assert.are.equal(4, #v)
        assert.are.equal(null, v[2])
        assert.are.equal(null, v[4])
    end)

    it("keeps mapping keys with null values as yaml.null", function()
        local v = yaml.decode("a:\nb: ~\nc: 1\n")
        assert.are.equal(null, v.a)
        assert.are.equal(null, v.b)
    end)

    it("yaml.null is the lightuserdata NULL that cjson.null also is", function()
        assert.are.equal("userdata", type(null))
        local ok, cjson = pcall(require, "cjson")
        if ok then
            assert.are.equal(cjson.null, null)
        end
    end)

    it("opts.null chooses the null value", function()
        local NULL = {}
        local v = yaml.decode("a: ~\nb: [~]\n", { null = NULL })
        assert.are.equal(NULL, v.a)
        assert.are.equal(NULL, v.b[1])
    end)

    it("opts.drop_nulls omits null mapping values but not sequence items", function()
        local v = yaml.decode("a: ~\nb: 1\nc: [1, ~, 3]\n", { drop_nulls = true })
        assert.is_nil(v.a)
        assert.are.equal(1, v.b)
        assert.are.same({ 1, null, 3 }, v.c)
    end)
end)


describe("yaml anchors, aliases and merge keys", function()
    local v

    before_each(function()
        local f = assert(io.open(fixture("anchors.yaml"), "rb"))
        v = assert(yaml.decode(f:read("*a")))
        f:close()
    end)

    it("an alias yields the same table", function()
        assert.are.same({ "a", "b" }, v.same)
        assert.are.equal(v.list, v.same)
    end)

    it("merges a mapping under explicit keys", function()
        assert.are.same({ color = "red", size = 10, name = "one" }, v.one)
    end)

    it("merges a sequence of mappings, earlier ones first", function()
        assert.are.same({ color = "red", size = 30, shape = "circle" }, v.two)
    end)

    it("explicit keys win even when written before <<", function()
        assert.are.same({ color = "red", size = 5 }, v.three)
    end)

    it("rejects an undefined alias with its position", function()
        local d, err = yaml.decode("a: 1\nb: *nope\n")
        assert.is_nil(d)
        assert.are.equal("parse", err.kind)
        assert.are.equal(2, err.line)
        assert.are.equal(4, err.column)
        assert.matches("undefined alias *nope", err.message, 1, true)
    end)

    it("rejects recursive aliases", function()
        local d, err = yaml.decode("a: &x\n  b: *x\n")
        assert.is_nil(d)
        assert.matches("recursive", err.message, 1, true)
    end)

    it("rejects a merge of a scalar", function()
        local d, err = yaml.decode("a: &x 1\nb:\n  <<: *x\n")
        assert.is_nil(d)
        assert.matches("merge key <<", err.message, 1, true)
    end)

    it("treats a quoted '<<' as an ordinary key", function()
        local d = yaml.decode("a: {x: 1}\nb:\n  '<<': 5\n")
        assert.are.equal(5, d.b["<<"])
    end)
end)


describe("yaml.decode errors and limits", function()
    it("reports the line and column of a syntax error", function()
        local v, err = yaml.decode("a: 1\nb: 2\nc: d: e\n")
        assert.is_nil(v)
        assert.are.equal("parse", err.kind)
        assert.are.equal(3, err.line)
        assert.are.equal(5, err.column)
        assert.are.equal("yaml: line 3, column 5: mapping values are not allowed in this context",
                         err.message)
        assert.are.equal("mapping values are not allowed in this context", err.problem)
        assert.matches("^parse: yaml: line 3", tostring(err))
    end)

    it("reports the line of an unterminated flow sequence", function()
        local v, err = yaml.decode("a: 1\nb: [1, 2\nc: 3\n")
        assert.is_nil(v)
        assert.are.equal("parse", err.kind)
        assert.is_true(err.line >= 3)
        assert.matches("line %d+, column %d+:", err.message)
    end)

    it("reports invalid UTF-8 with a position", function()
        local v, err = yaml.decode("a: 1\nb: \255\n")
        assert.is_nil(v)
        assert.are.equal("parse", err.kind)
        assert.are.equal(2, err.line)
    end)

    it("rejects a billion-laughs document quickly", function()
        local lines = { 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]' }
        local prev = "a"
        for c in ("bcdefghi"):gmatch(".") do
            lines[#lines + 1] = ("%s: &%s [*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s]")
                :format(c, c, prev, prev, prev, prev, prev, prev, prev, prev, prev)
            prev = c
        end
        local text = table.concat(lines, "\n") .. "\n"
        local t0 = os.clock()
        local v, err = yaml.decode(text)
        assert.is_true(os.clock() - t0 < 1)
        assert.is_nil(v)
        assert.are.equal("parse", err.kind)
        assert.matches("max_nodes", err.message, 1, true)
    end)

    it("opts.max_nodes is a knob", function()
        assert.is_truthy(yaml.decode("[1, 2, 3]", { max_nodes = 4 }))
        local v, err = yaml.decode("[1, 2, 3]", { max_nodes = 3 })
        assert.is_nil(v)
        assert.matches("max_nodes", err.message, 1, true)
    end)

    it("counts aliased nodes in full against max_nodes", function()
        local v, err = yaml.decode("a: &a [1, 2, 3, 4]\nb: [*a, *a, *a]\n", { max_nodes = 12 })
        assert.is_nil(v)
        assert.matches("max_nodes", err.message, 1, true)
    end)

    it("rejects deep nesting (default max_depth 256)", function()
        local ok_text = ("["):rep(256) .. ("]"):rep(256)
        assert.is_truthy(yaml.decode(ok_text))
        local v, err = yaml.decode(("["):rep(257) .. ("]"):rep(257))
        assert.is_nil(v)
        assert.are.equal("parse", err.kind)
        assert.matches("max_depth", err.message, 1, true)
        -- hostile depth never crashes
        v, err = yaml.decode(("["):rep(200000))
        assert.is_nil(v)
        assert.are.equal("parse", err.kind)
        v, err = yaml.decode(("- "):rep(5000) .. "x\n")
        assert.is_nil(v)
        assert.matches("max_depth", err.message, 1, true)
    end)

    it("opts.max_depth is a knob", function()
        assert.is_truthy(yaml.decode("a: {b: {c: 1}}", { max_depth = 3 }))
        local v, err = yaml.decode("a: {b: {c: 1}}", { max_depth = 2 })
        assert.is_nil(v)
        assert.matches("max_depth", err.message, 1, true)
    end)

    it("raises on misuse", function()
        assert.has_error(function() yaml.decode() end)
        assert.has_error(function() yaml.decode("a", 5) end)
        assert.has_error(function() yaml.decode("a", { max_depth = 0 }) end)
        assert.has_error(function() yaml.decode("a", { resolve = 1 }) end)
    end)

    it("passes an error raised by opts.resolve through", function()
        assert.has_error(function()
            yaml.decode("a: [x, y]", { resolve = function() error("boom") end })
        end)
    end)
end)


describe("yaml.encode", function()
    it("writes block style with sorted keys", function()
        local text = yaml.encode({ b = 1, a = { "x", "z" }, c = { d = true } })
        assert.are.equal("a:\n- x\n- z\nb: 1\nc:\n  d: true\n", text)
    end)

    it("sorts numbers before booleans before strings", function()
        assert.are.equal("1.5: num\ntrue: bool\nk: str\n",
                         yaml.encode({ k = "str", [1.5] = "num", [true] = "bool" }))
    end)

    it("quotes strings that would read back as another type", function()
        for _, s in ipairs({ "true", "False", "1.5", "42", "0x10", "null", "~", "", " lead",
                             "trail ", "yes", "no", "on", "y", "N", "<<", "1_000", ".inf", "-.5" }) do
            local text = yaml.encode({ s })
            assert.is_truthy(text:find("^%- ['\"]"), ("%q was not quoted: %s"):format(s, text))
            assert.are.same({ s }, yaml.decode(text))
        end
        assert.are.equal("- hello\n", yaml.encode({ "hello" }))
    end)

    it("writes multi-line strings as literal blocks", function()
        local text = yaml.encode({ prompt = "You are helpful.\nBe brief.\n" })
        assert.are.equal("prompt: |\n  You are helpful.\n  Be brief.\n", text)
    end)

    it("round-trips plain data", function()
        roundtrip({ a = 1, b = -2.5, c = "str", d = true, e = false, f = null })
        roundtrip({ 1, 2, 3, { 4, { 5 } }, { x = { y = { z = "deep" } } } })
        roundtrip({ [1] = "a", [3] = "c" })            -- sparse: a mapping with number keys
        roundtrip({ 0.1, 1 / 3, 1e300, -1e-300, 2 ^ 53, 123456789.125, math.huge, -math.huge })
        roundtrip({ nan = 0 / 0 })
        roundtrip({})
        roundtrip("top-level string")
        roundtrip(12)
    end)

    it("round-trips tricky strings", function()
        local strings = {
            "", " ", "  two", "trailing ", "true", "null", "~", "1", "1.0", "-1", "0o7", "0x1",
            ".nan", "yes", "No", "<<", "=", "- dash", "-", "---", "...", "# hash", "a #b", "a: b",
            "key:", ":x", "{x}", "[x]", "*a", "&a", "!t", "%p", "@x", "`x", "|", ">", "?", "'", '"',
            "it's", 'say "hi"', "a\tb", "a\rb", "\r\n", "x\0y", "é ü 日本 🙂", "\239\187\191bom",
            "\n", "\n\n", "a\n", "a\n\n", "\na", " a\nb", "a \nb", "a\n b", "a\n\tb",
            "line1\nline2", "multi\nline\nwith trailing\n", ("long words "):rep(40),
        }
        for _, s in ipairs(strings) do
            roundtrip(s)
            roundtrip({ s })
            roundtrip({ [s ~= "" and s or "empty"] = s })
        end
    end)

    it("encodes yaml.null and nil as null", function()
        assert.are.equal("a: null\n", yaml.encode({ a = null }))
        assert.are.equal(null, yaml.decode(yaml.encode(nil)))
    end)

    it("writes an empty sibyl.json array as []", function()
        local ok, json = pcall(require, "sibyl.json")
        if ok then
            assert.are.equal("a: []\nb: {}\n", yaml.encode({ a = json.array({}), b = {} }))
        end
    end)

    it("writes shared tables in full and rejects cycles", function()
        local shared = { 1, 2 }
        assert.are.same({ a = shared, b = shared }, yaml.decode(yaml.encode({ a = shared, b = shared })))
        local t = { name = "loop" }
        t.self = t
        assert.has_error(function() yaml.encode(t) end, "yaml.encode: cannot encode a table that contains itself (cycle)")
        local a, b = {}, {}
        a[1], b[1] = b, a
        assert.has_error(function() yaml.encode(a) end)
    end)

    it("raises for values YAML cannot hold", function()
        assert.has_error(function() yaml.encode({ f = print }) end, "yaml.encode: cannot encode a function value")
        assert.has_error(function() yaml.encode({ co = coroutine.create(print) }) end)
        assert.has_error(function() yaml.encode({ [{}] = 1 }) end)
        assert.has_error(function() yaml.encode({ bad = "\255" }) end)
        assert.has_error(function() yaml.encode({ a = { b = { c = 1 } } }, { max_depth = 2 }) end)
        assert.has_error(function() yaml.encode({}, { indent = 1 }) end)
        assert.has_error(function() yaml.encode() end)
    end)

    it("opts.indent sets the indentation", function()
        assert.are.equal("a:\n    b: 1\n", yaml.encode({ a = { b = 1 } }, { indent = 4 }))
    end)
end)


describe("sibyl.config", function()
    local env = {
        OPENAI_API_KEY = "sk-test",
        PORT = "8080",
        DB_PASSWORD = "123456",
        HOST = "",
    }

    it("loads a file and substitutes ${VAR} and ${VAR:-default}", function()
        local cfg, err = config.load(fixture("config.yaml"), { env = env })
        assert.is_nil(err)
        assert.are.equal("sk-test", cfg.llm.api_key)
        assert.are.equal("http://localhost:11434/v1", cfg.llm.base_url)
        assert.are.equal("gpt-4o-mini", cfg.llm.model)
        assert.are.equal("openai", cfg.llm.provider)
        -- merged from the anchored defaults, substituted and re-typed
        assert.are.equal(30, cfg.llm.timeout)
        assert.are.equal(3, cfg.llm.retries)
        assert.are.equal(3, cfg.defaults.retries)
        assert.are.equal("http://localhost:9200", cfg.tools[1].endpoint)
        assert.are.same({ name = "calculator" }, cfg.tools[2])
    end)

    it("re-types a plain scalar that is exactly one reference", function()
        local cfg = assert(config.load(fixture("config.yaml"), { env = env }))
        assert.are.equal(8080, cfg.server.port)
        assert.are.equal(false, cfg.server.debug)
        -- an empty value falls back to the default, as in the shell
        assert.are.equal("0.0.0.0", cfg.server.host)
    end)

    it("keeps quoted references and mixed text as strings", function()
        local cfg = assert(config.load(fixture("config.yaml"), { env = env }))
        assert.are.equal("123456", cfg.server.password)
        assert.are.equal("listening on 0.0.0.0:8080", cfg.server.banner)
    end)

    it("$${ is a literal ${ and a lone $ stays", function()
        local cfg = assert(config.load(fixture("config.yaml"), { env = env }))
        assert.are.equal("literal ${NOT_A_VAR} and a lone $ sign", cfg.server.template)
        assert.are.same({ a = "${X}", b = "$$", c = "cost: $5" },
                        config.decode("a: $${X}\nb: $$\nc: 'cost: $5'\n", { env = {} }))
    end)

    it("re-typing follows yaml.scalar", function()
        local cfg = assert(config.decode([[
n: ${N}
f: ${F}
b: ${B}
s: ${S}
e: ${E:-}
list: [a, "${N}"]
seq:
  - ${N}
  - ${E:-}
]], { env = { N = "42", F = "1.5", B = "true", S = "yes" } }))
        assert.are.same({ n = 42, f = 1.5, b = true, s = "yes", e = null, list = { "a", "42" },
                          seq = { 42, null } }, cfg)
    end)

    it("leaves keys untouched", function()
        local cfg = assert(config.decode("${K}: ${V}\n", { env = { K = "key", V = "v" } }))
        assert.are.equal("v", cfg["${K}"])
    end)

    it("names the variable and the key path when a variable is unset", function()
        local cfg, err = config.load(fixture("missing_var.yaml"), { env = {} })
        assert.is_nil(cfg)
        assert.are.equal("config", err.kind)
        assert.are.equal(fixture("missing_var.yaml") .. ": llm.api_key: environment variable "
            .. "OPENAI_API_KEY is not set (set it, or write ${OPENAI_API_KEY:-default})", err.message)
        assert.are.equal("OPENAI_API_KEY", err.var)
        assert.are.equal("llm.api_key", err.key)
        assert.are.equal(fixture("missing_var.yaml"), err.path)
    end)

    it("reports sequence indices in key paths", function()
        local cfg, err = config.decode("servers:\n  - url: x\n  - url: ${URL}\n", { env = {}, source = "c.yaml" })
        assert.is_nil(cfg)
        assert.are.equal("c.yaml: servers[2].url: environment variable URL is not set "
            .. "(set it, or write ${URL:-default})", err.message)
    end)

    it("rejects a malformed reference", function()
        local cfg, err = config.decode("a: ${not closed\n", { env = {} })
        assert.is_nil(cfg)
        assert.are.equal("config", err.kind)
        assert.matches("bad reference", err.message, 1, true)
        cfg, err = config.decode("a: ${1BAD}\n", { env = {} })
        assert.is_nil(cfg)
        assert.are.equal("config", err.kind)
    end)

    it("uses os.getenv without opts.env", function()
        local home = os.getenv("HOME")
        if home then
            local cfg = assert(config.decode("home: ${HOME}\n"))
            assert.are.equal(yaml.scalar(home), cfg.home)
        end
    end)

    it("reports a parse error as path:line:column", function()
        local cfg, err = config.load(fixture("bad_syntax.yaml"))
        assert.is_nil(cfg)
        assert.are.equal("parse", err.kind)
        assert.are.equal(3, err.line)
        assert.are.equal(fixture("bad_syntax.yaml") .. ":3:16: mapping values are not allowed in this context",
                         err.message)
        assert.are.equal(fixture("bad_syntax.yaml"), err.path)
    end)

    it("returns kind io for a missing file, naming the path", function()
        local cfg, err = config.load(fixture("no_such_file.yaml"))
        assert.is_nil(cfg)
        assert.are.equal("io", err.kind)
        assert.matches("no_such_file.yaml", err.message, 1, true)
        assert.are.equal(fixture("no_such_file.yaml"), err.path)
    end)

    it("gives {} for an empty file and rejects a scalar top level", function()
        assert.are.same({}, config.load(fixture("empty.yaml")))
        local cfg, err = config.decode("just text\n")
        assert.is_nil(cfg)
        assert.are.equal("config", err.kind)
    end)

    it("passes the yaml limits through", function()
        local cfg, err = config.decode("a: {b: {c: 1}}\n", { max_depth = 2 })
        assert.is_nil(cfg)
        assert.are.equal("parse", err.kind)
        assert.matches("max_depth", err.message, 1, true)
    end)

    it("raises on misuse", function()
        assert.has_error(function() config.load() end)
        assert.has_error(function() config.decode("a: 1", "opts") end)
        assert.has_error(function() config.decode("a: 1", { env = "x" }) end)
    end)
end)
