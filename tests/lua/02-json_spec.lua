-- sibyl.json: lua-cjson with nil, err on bad input, null and empty arrays.

local json = require "sibyl.json"

describe("sibyl.json", function()

    it("round-trips nested data", function()
        local v = { model = "m", n = 3, ok = true, list = { 1, 2.5, "x" }, obj = { a = { b = "c" } } }
        assert.are.same(v, json.decode(json.encode(v)))
    end)

    it("keeps JSON null as a sentinel", function()
        local v = json.decode('{"a":null,"b":[1,null,3]}')
        assert.are.equal(json.null, v.a)
        assert.are.equal(3, #v.b)
        assert.are.equal(json.null, v.b[2])
        assert.are.equal('{"a":null}', json.encode({ a = json.null }))
    end)

    it("encodes marked empty arrays as [] and plain empty tables as {}", function()
        assert.are.equal("[]", json.encode(json.empty_array))
        assert.are.equal("[]", json.encode(json.array{}))
        assert.are.equal("{}", json.encode({}))
        local s = json.encode({ tools = json.array{}, meta = {}, nested = { { list = json.empty_array } } })
        local back = json.decode(s)
        assert.matches('"tools":%[%]', s)
        assert.matches('"meta":{}', s)
        assert.matches('"list":%[%]', s)
        assert.are.same({}, back.tools)
    end)

    it("does not modify the caller's tables when substituting", function()
        local inner = json.array{}
        local v = { a = inner, b = { c = inner } }
        json.encode(v)
        assert.are.equal(inner, v.a)
        assert.are.equal(inner, v.b.c)
    end)

    it("marks non-empty arrays without changing them", function()
        assert.are.equal("[1,2]", json.encode(json.array{ 1, 2 }))
    end)

    it("json.empty_array is read-only", function()
        assert.has_error(function() json.empty_array[1] = 1 end)
    end)

    it("returns nil, err of kind parse for malformed input", function()
        for _, bad in ipairs({ "{bad", "[1,2", "", "{\"a\":}", "nul", "[1,]", "NaN" }) do
            local v, err = json.decode(bad)
            assert.is_nil(v, bad)
            assert.are.equal("parse", err.kind, bad)
            assert.matches("^json.decode: ", err.message)
        end
    end)

    it("raises for programmer errors", function()
        assert.has_error(function() json.decode(nil) end,
            "bad argument #1 to 'decode' (string expected, got nil)")
        assert.has_error(function() json.encode({ f = print }) end)
    end)

    it("survives hostile nesting without crashing", function()
        local deep = string.rep("[", 100000) .. string.rep("]", 100000)
        local v, err = json.decode(deep)
        assert.is_nil(v)
        assert.are.equal("parse", err.kind)
    end)

    it("encodes NaN and infinities as null instead of failing", function()
        assert.are.equal("[null,null]", json.encode({ 0 / 0, math.huge }))
    end)

    it("handles unicode and escapes", function()
        local s = 'é "quoted" \n tab\t ✓'
        assert.are.equal(s, json.decode(json.encode(s)))
        assert.are.equal("✓", json.decode('"\\u2713"'))
    end)
end)

describe("sibyl.base64", function()
    local b64 = require "sibyl.base64"

    it("round-trips every length and any bytes", function()
        for _, s in ipairs{ "", "f", "fo", "foo", "foob", "fooba", "foobar", "Hello, 世界", "\0\255\1" } do
            assert.are.equal(s, b64.decode(b64.encode(s)))
        end
        assert.are.equal("Zm9vYg==", b64.encode("foob"))
        assert.are.equal("foob", b64.decode("Zm9vYg"))            -- padding is optional
    end)

    it("refuses what is not base64", function()
        for _, bad in ipairs{ "Zm9v!", "Zm9vY", "Zg===", "Z===", "€€€€" } do
            assert.is_nil(b64.decode(bad), bad)
        end
    end)

    it("decodes into a caller's buffer", function()
        local ffi = require "ffi"
        local floats = ffi.new("float[2]", { 1.5, -2 })
        local s = b64.encode(ffi.string(floats, 8))
        local v, n = b64.decode_buf(s, function(nbytes) return ffi.new("float[?]", nbytes / 4) end)
        assert.are.equal(8, n)
        assert.are.equal(1.5, v[0])
        assert.are.equal(-2, v[1])
    end)
end)
