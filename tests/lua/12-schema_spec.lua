-- sibyl.schema: JSON Schema validation for structured LLM output.

local schema = require "sibyl.schema"
local json = require "sibyl.json"

local null = json.null


-- Validate and return the list of "path: message" strings ({} when valid).
local function errors(value, s, opts)
    local ok, errs = schema.validate(value, s, opts)
    if ok then
        assert.is_nil(errs)
        return {}
    end
    assert.is_false(ok)
    local out = {}
    for i, e in ipairs(errs) do
        out[i] = e.path .. ": " .. e.message
    end
    return out
end


local function passes(value, s)
    local ok, errs = schema.validate(value, s)
    assert(ok, "expected a pass, got: " .. schema.describe(errs))
end


local function fails(value, s, ...)
    assert.are.same({ ... }, errors(value, s))
end


describe("sibyl.schema", function()

    describe("type", function()

        it("checks each JSON type", function()
            passes("x", { type = "string" })
            passes(1.5, { type = "number" })
            passes(3, { type = "integer" })
            passes(3.0, { type = "integer" })
            passes(true, { type = "boolean" })
            passes(false, { type = "boolean" })
            passes(null, { type = "null" })
            passes({ 1, 2 }, { type = "array" })
            passes({ a = 1 }, { type = "object" })
            fails(3.5, { type = "integer" }, "$: expected integer, got number 3.5")
            fails(1, { type = "string" }, "$: expected string, got number 1")
            fails("ten", { type = "integer" }, '$: expected integer, got string "ten"')
            fails(false, { type = "null" }, "$: expected null, got boolean false")
            fails(null, { type = "object" }, "$: expected object, got null")
            fails({ 1, 2 }, { type = "object" }, "$: expected object, got array")
            fails({ a = 1 }, { type = "array" }, "$: expected array, got object")
            fails("1", { type = "number" }, '$: expected number, got string "1"')
            fails(nil, { type = "string" }, "$: expected string, got nil")
        end)

        it("refuses NaN and infinities as numbers", function()
            fails(0 / 0, { type = "number" }, "$: expected number, got number NaN")
            fails(math.huge, { type = "integer" }, "$: expected integer, got number Infinity")
        end)

        it("accepts a list of types", function()
            local s = { type = { "string", "null" } }
            passes("a", s)
            passes(null, s)
            fails(5, s, "$: expected string or null, got number 5")
            fails(true, { type = { "string", "number", "null" } },
                "$: expected string, number or null, got boolean true")
        end)

        it("tells arrays from objects the way json.decode leaves them", function()
            passes(json.decode("[]"), { type = "array" })
            passes(json.decode("{}"), { type = "array" })        -- indistinguishable once decoded
            passes(json.decode("{}"), { type = "object" })
            passes(json.array{}, { type = "array" })
            passes(json.empty_array, { type = "array" })
            fails(json.array{}, { type = "object" }, "$: expected object, got array")
            fails({ [1] = "a", [3] = "c" }, { type = "array" }, "$: expected array, got object")
            fails({ "a", x = 1 }, { type = "array" }, "$: expected array, got object")
            fails({}, { type = "string" }, "$: expected string, got empty object or array")
        end)

        it("reports only the type error when the type is wrong", function()
            fails(5, { type = "string", minLength = 3, enum = { "abc" } }, "$: expected string, got number 5")
        end)
    end)

    describe("objects", function()

        it("checks properties and required, with paths", function()
            local s = {
                type = "object",
                properties = { name = { type = "string" }, age = { type = "integer" } },
                required = { "name", "age" },
            }
            passes({ name = "Ann", age = 30 }, s)
            passes({ name = "Ann", age = 30, extra = true }, s)
            fails({ age = "ten" }, s,
                '$.age: expected integer, got string "ten"',
                '$: missing required property "name"')
            fails({ name = null, age = 1 }, s, "$.name: expected string, got null")   -- null is present
        end)

        it("additionalProperties false names the extra keys and what is allowed", function()
            local s = { type = "object", properties = { a = {}, b = {} }, additionalProperties = false }
            passes({ a = 1, b = 2 }, s)
            fails({ a = 1, zz = 1, c = 2 }, s,
                '$: unexpected property "c" (allowed: "a", "b")',
                '$: unexpected property "zz" (allowed: "a", "b")')
            fails({ x = 1 }, { type = "object", additionalProperties = false },
                '$: unexpected property "x" (no other properties are allowed)')
        end)

        it("additionalProperties as a schema applies to the other keys", function()
            local s = { type = "object", properties = { id = { type = "string" } },
                additionalProperties = { type = "number" } }
            passes({ id = "x", a = 1, b = 2 }, s)
            fails({ id = "x", a = "1" }, s, '$.a: expected number, got string "1"')
        end)

        it("patternProperties check matching keys and are not additional", function()
            local s = { type = "object", patternProperties = { ["^x_"] = { type = "integer" } },
                additionalProperties = false }
            passes({ x_a = 1, x_b = 2 }, s)
            fails({ x_a = "1" }, s, '$.x_a: expected integer, got string "1"')
            fails({ y = 1 }, s, '$: unexpected property "y" (no other properties are allowed)')
        end)

        it("minProperties, maxProperties, propertyNames, dependentRequired", function()
            fails({}, { type = "object", minProperties = 1 }, "$: expected at least 1 property, got 0")
            fails({ a = 1, b = 2 }, { maxProperties = 1 }, "$: expected at most 1 property, got 2")
            local names = { propertyNames = { pattern = "^[a-z]+$" } }
            passes({ abc = 1 }, names)
            fails({ Abc = 1 }, names,
                '$: invalid property name "Abc": expected a string matching /^[a-z]+$/, got "Abc"')
            local dep = { dependentRequired = { card = { "billing" } } }
            passes({ other = 1 }, dep)
            passes({ card = 1, billing = 2 }, dep)
            fails({ card = 1 }, dep, '$: missing property "billing" (required when "card" is present)')
        end)

        it("quotes keys that are not identifiers in paths", function()
            local s = { type = "object", properties = { ["a b"] = { type = "string" }, ["1x"] = { type = "string" } } }
            fails({ ["a b"] = 1, ["1x"] = 2 }, s,
                '$["1x"]: expected string, got number 2',
                '$["a b"]: expected string, got number 1')
        end)
    end)

    describe("arrays", function()

        it("items checks every element, indexing from 0 in paths", function()
            local s = { type = "object", properties = {
                items = { type = "array", items = { type = "object", properties = { name = { type = "string" } } } } } }
            passes({ items = { { name = "a" }, { name = "b" } } }, s)
            fails({ items = { { name = "a" }, { name = "b" }, { name = 3 } } }, s,
                "$.items[2].name: expected string, got number 3")
        end)

        it("prefixItems, with items false forbidding more", function()
            local s = { type = "array", prefixItems = { { type = "string" }, { type = "integer" } }, items = false }
            passes({ "a", 1 }, s)
            passes({ "a" }, s)
            fails({ 1, "a" }, s, '$[0]: expected string, got number 1', '$[1]: expected integer, got string "a"')
            fails({ "a", 1, 2 }, s, "$: expected at most 2 items (no items beyond the 2 listed), got 3")
            local rest = { prefixItems = { { type = "string" } }, items = { type = "boolean" } }
            passes({ "a", true, false }, rest)
            fails({ "a", true, 1 }, rest, "$[2]: expected boolean, got number 1")
        end)

        it("accepts draft-4 tuple items with additionalItems", function()
            local s = { items = { { type = "string" } }, additionalItems = false }
            passes({ "a" }, s)
            fails({ "a", "b" }, s, "$: expected at most 1 item (no items beyond the 1 listed), got 2")
        end)

        it("minItems and maxItems", function()
            local s = { type = "array", minItems = 2, maxItems = 3 }
            passes({ 1, 2 }, s)
            passes({ 1, 2, 3 }, s)
            fails({ 1 }, s, "$: expected at least 2 items, got 1")
            fails({ 1, 2, 3, 4 }, s, "$: expected at most 3 items, got 4")
            fails(json.array{}, { minItems = 1 }, "$: expected at least 1 item, got 0")
        end)

        it("uniqueItems compares scalars (and tables structurally)", function()
            local s = { type = "array", uniqueItems = true }
            passes({ 1, 2, "1", true, null }, s)
            fails({ "a", "b", "a" }, s, '$: expected unique items, got "a" at [0] and [2]')
            fails({ 1, 1.0 }, s, "$: expected unique items, got 1 at [0] and [1]")
            fails({ { a = 1 }, { a = 1 } }, s, "$: expected unique items, got object at [0] and [1]")
            local long = {}
            for i = 1, 100 do long[i] = i end
            passes(long, s)
            long[100] = 7
            fails(long, s, "$: expected unique items, got 7 at [6] and [99]")
        end)

        it("contains, minContains, maxContains", function()
            local s = { contains = { type = "integer" } }
            passes({ "a", 1 }, s)
            fails({ "a", "b" }, s, '$: expected at least 1 item matching the "contains" schema, got 0')
            fails({ 1, 2, 3 }, { contains = { type = "integer" }, maxContains = 2 },
                '$: expected at most 2 items matching the "contains" schema, got 3')
        end)
    end)

    describe("values", function()

        it("enum", function()
            local s = { enum = { "red", "green", 3, null } }
            passes("red", s)
            passes(3, s)
            passes(null, s)
            fails("blue", s, '$: expected one of "red", "green", 3, null, got "blue"')
            passes({ 1, 2 }, { enum = { { 1, 2 }, "x" } })
            fails({ 1, 3 }, { enum = { { 1, 2 }, "x" } }, '$: expected one of [1,2], "x", got array')
        end)

        it("const", function()
            passes("x", { const = "x" })
            passes(null, { const = null })
            passes({ a = { 1, 2 } }, { const = { a = { 1, 2 } } })
            fails("y", { const = "x" }, '$: expected "x", got "y"')
            fails(0, { const = null }, "$: expected null, got 0")
            fails({ a = { 1 } }, { const = { a = { 1, 2 } } }, '$: expected {"a":[1,2]}, got object')
        end)

        it("minimum, maximum and the exclusive forms", function()
            local s = { type = "number", minimum = 0, maximum = 10 }
            passes(0, s)
            passes(10, s)
            fails(-1, s, "$: expected >= 0, got -1")
            fails(10.5, s, "$: expected <= 10, got 10.5")
            local x = { exclusiveMinimum = 0, exclusiveMaximum = 1 }
            passes(0.5, x)
            fails(0, x, "$: expected > 0, got 0")
            fails(1, x, "$: expected < 1, got 1")
            fails(0, { minimum = 0, exclusiveMinimum = true }, "$: expected > 0, got 0")   -- draft 4
            passes("not a number", { minimum = 0 })                                      -- only numbers
        end)

        it("multipleOf, tolerant of binary fractions", function()
            passes(10, { multipleOf = 5 })
            passes(0.3, { multipleOf = 0.1 })
            passes(1.5, { multipleOf = 0.5 })
            fails(7, { multipleOf = 5 }, "$: expected a multiple of 5, got 7")
            fails(0.35, { multipleOf = 0.1 }, "$: expected a multiple of 0.1, got 0.35")
        end)

        it("minLength and maxLength count UTF-8 code points", function()
            local s = { type = "string", minLength = 2, maxLength = 3 }
            passes("ab", s)
            passes("héé", s)                 -- 5 bytes, 3 characters
            passes("✓✓", s)
            fails("é", s, "$: expected at least 2 characters, got 1")
            fails("abcd", s, "$: expected at most 3 characters, got 4")
            fails("ééé✓", s, "$: expected at most 3 characters, got 4")
        end)

        it("ignores annotations and default", function()
            passes(5, { type = "integer", description = "n", title = "N", default = "x", examples = { 1 },
                ["$schema"] = "https://json-schema.org/draft/2020-12/schema", ["$comment"] = "c" })
        end)

        it("nullable (OpenAPI) lets null through", function()
            local s = { type = "string", nullable = true, enum = { "a" } }
            passes(null, s)
            passes("a", s)
            fails(1, s, "$: expected string, got number 1")
            fails(null, { type = "string", nullable = false }, "$: expected string, got null")
        end)

        it("boolean schemas", function()
            passes(1, true)
            fails(1, false, "$: not allowed here (schema is false), got 1")
            fails({ a = 1 }, { properties = { a = false } }, "$.a: not allowed here (schema is false), got 1")
        end)
    end)

    describe("pattern", function()

        it("translates the common ECMA subset", function()
            local cases = {
                { "^[a-z]+$", { "abc" }, { "", "aBc", "abc1" } },
                { "^\\d{4}-\\d{2}-\\d{2}$", { "2024-01-31" }, { "2024-1-31", "x2024-01-31" } },
                { "^[A-Z]{2,3}$", { "AB", "ABC" }, { "A", "ABCD" } },
                { "^\\w+@\\w+\\.com$", { "a_b@x.com" }, { "a b@x.com", "a@x.org" } },
                { "colou?r", { "color", "the colour!" }, { "colr" } },
                { "^\\s*\\S+\\s*$", { " word " }, { "two words" } },
                { "^[^,]+$", { "a;b", "é" }, { "a,b" } },
                { "^(cat|dog)s?$", { "cat", "dogs" }, { "cow", "cats!" } },
                { "^.$", { "a", "é", "✓" }, { "ab", "", "\n" } },
                { "^.{2}$", { "éé", "ab" }, { "é", "abc" } },
                { "^a.c$", { "abc", "aéc" }, { "ac", "abbc" } },
                { "^\\$\\d+(\\.\\d\\d)?$", { "$5", "$5.25" }, { "$5.2", "5" } },
                { "^[\\s\\S]*$", { "any\nthing" }, {} },
                { "^(?:\\+1)?\\d{3}$", { "123", "+1123" }, { "+123" } },
            }
            for _, c in ipairs(cases) do
                local s = { type = "string", pattern = c[1] }
                for _, good in ipairs(c[2]) do
                    assert(schema.validate(good, s), c[1] .. " should match " .. good)
                end
                for _, bad in ipairs(c[3]) do
                    assert(not schema.validate(bad, s), c[1] .. " should not match " .. bad)
                end
            end
            fails("ABC", { pattern = "^[a-z]+$" }, '$: expected a string matching /^[a-z]+$/, got "ABC"')
            passes(5, { pattern = "^[a-z]+$" })                       -- only strings
        end)

        it("skips what it cannot translate and lists it in v.skipped", function()
            local v = schema.compile({ type = "object", properties = {
                code = { type = "string", pattern = "^(ab)+$" },
                word = { type = "string", pattern = "\\bcat\\b" },
                ok = { type = "string", pattern = "^x" },
            } })
            assert.is_true(v:validate({ code = "zzz", word = "dog", ok = "xy" }))   -- unchecked, so no failure
            assert.are.equal('$.ok: expected a string matching /^x/, got "y"',
                schema.describe(select(2, v:validate({ code = "zzz", ok = "y" }))))
            assert.are.same({
                { path = "#/properties/code/pattern", keyword = "pattern",
                  reason = "group repeated with * or + in /^(ab)+$/" },
                { path = "#/properties/word/pattern", keyword = "pattern",
                  reason = "word boundary \\b in /\\bcat\\b/" },
            }, v.skipped)
            for _, re in ipairs({ "a|b(?=c)", "(x)\\1", "\\p{L}", "é*", "(a|b|c){1,9}x{0,9}y{0,9}" }) do
                local lua, why = schema.translate_pattern(re)
                assert.is_nil(lua, re)
                assert.is_string(why)
            end
        end)

        it("exposes the translation", function()
            assert.are.same({ "^foo$", "^bar$" }, schema.translate_pattern("^(foo|bar)$"))
            assert.are.same({ "^%d%d%d%-%d%d%d%d$" }, schema.translate_pattern("^\\d{3}-\\d{4}$"))
            assert.are.same({ "^[a-z%_][a-z%_0-9]*$" }, schema.translate_pattern("^[a-z_][a-z_0-9]*$"))
        end)
    end)

    describe("format", function()

        it("checks the common formats lightly", function()
            local cases = {
                ["date-time"] = { { "2024-01-31T09:30:00Z", "2024-02-29t23:59:60.5+05:30" },
                    { "2024-01-31", "2024-01-31 09:30:00Z", "2023-02-29T00:00:00Z", "2024-01-31T25:00:00Z" } },
                date = { { "2024-12-31" }, { "2024-13-01", "24-01-01", "2024-04-31" } },
                time = { { "09:30:00", "09:30:00.25Z", "23:59:59+01:00" }, { "9:30", "24:00:00" } },
                email = { { "a.b@example.com", "x@localhost" }, { "a@", "@b.com", "a b@c.com", "a@b@c", "a@b..c" } },
                uri = { { "https://example.com/a?b=c", "urn:isbn:123" }, { "example.com", "http://a b" } },
                uuid = { { "123e4567-e89b-12d3-a456-426614174000" }, { "123e4567e89b12d3a456426614174000" } },
                ipv4 = { { "192.168.0.1" }, { "256.1.1.1", "1.2.3", "01.2.3.4" } },
                ipv6 = { { "::1", "2001:db8::ff00:42:8329", "::ffff:192.0.2.1" }, { "1:2", ":::", "12345::" } },
                hostname = { { "example.com", "a-b.c" }, { "-a.com", "a..b", "a_b.com" } },
                duration = { { "P3DT4H", "PT0.5S", "P1Y2M" }, { "P", "PT", "3D", "P1H" } },
            }
            for name, c in pairs(cases) do
                local s = { type = "string", format = name }
                for _, good in ipairs(c[1]) do
                    assert(schema.validate(good, s), name .. " should accept " .. good)
                end
                for _, bad in ipairs(c[2]) do
                    assert(not schema.validate(bad, s), name .. " should refuse " .. bad)
                end
            end
            fails("yesterday", { format = "date-time" },
                '$: expected a date-time (RFC 3339, e.g. 2024-01-31T09:30:00Z), got "yesterday"')
        end)

        it("lists unknown formats as skipped, and takes custom ones", function()
            local v = schema.compile({ format = "sibyl-test-color" })
            assert.is_true(v:validate("anything"))
            assert.are.same({ { path = "#/format", keyword = "format", reason = 'unknown format "sibyl-test-color"' } },
                v.skipped)
            schema.formats["sibyl-test-color"] = function(s) return s:find("^#%x%x%x%x%x%x$") ~= nil end
            local v2 = schema.compile({ format = "sibyl-test-color" })
            schema.formats["sibyl-test-color"] = nil
            assert.is_true(v2:validate("#00ff00"))
            assert.are.equal('$: expected a string in format "sibyl-test-color", got "red"',
                schema.describe(select(2, v2:validate("red"))))
        end)
    end)

    describe("combinators", function()

        it("allOf reports every failing part", function()
            local s = { allOf = { { type = "string" }, { minLength = 3 }, { pattern = "^a" } } }
            passes("abc", s)
            fails("b", s, "$: expected at least 3 characters, got 1", '$: expected a string matching /^a/, got "b"')
        end)

        it("anyOf merges pure type mismatches into one message", function()
            local s = { anyOf = { { type = "string" }, { type = "integer" } } }
            passes("a", s)
            passes(2, s)
            fails(true, s, "$: expected string or integer, got boolean true")
        end)

        it("anyOf names the nearest alternative and shows its errors", function()
            local cat = { type = "object", properties = { kind = { const = "cat" }, lives = { type = "integer" } },
                required = { "kind", "lives" } }
            local dog = { type = "object", properties = { kind = { const = "dog" }, bark = { type = "string" } },
                required = { "kind", "bark" } }
            local s = { type = "object", properties = { pet = { anyOf = { cat, dog, { type = "null" } } } } }
            passes({ pet = { kind = "dog", bark = "woof" } }, s)
            passes({ pet = null }, s)
            fails({ pet = { kind = "dog", bark = 5 } }, s,
                "$.pet: matches none of the anyOf alternatives (nearest: anyOf[1])",
                "$.pet.bark: expected string, got number 5")
        end)

        it("oneOf needs exactly one match", function()
            local s = { oneOf = { { type = "integer" }, { minimum = 10 } } }
            passes(3, s)        -- integer only
            passes(10.5, s)     -- minimum only
            fails(12, s, "$: matches more than one oneOf alternative (oneOf[0] and oneOf[1])")
            fails("x", { oneOf = { { type = "integer" }, { type = "null" } } },
                '$: expected integer or null, got string "x"')
        end)

        it("not", function()
            passes(1, { ["not"] = { type = "string" } })
            fails("a", { ["not"] = { type = "string" } },
                '$: expected a value that does not match the "not" schema, got "a"')
        end)

        it("if / then / else", function()
            local s = { ["if"] = { properties = { kind = { const = "a" } } },
                ["then"] = { required = { "x" } }, ["else"] = { required = { "y" } } }
            passes({ kind = "a", x = 1 }, s)
            passes({ kind = "b", y = 1 }, s)
            fails({ kind = "a", y = 1 }, s, '$: missing required property "x"')
            fails({ kind = "b" }, s, '$: missing required property "y"')
        end)
    end)

    describe("$ref", function()

        local tree = json.decode([[{
            "$ref": "#/$defs/node",
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "name": { "type": "string" },
                        "children": { "type": "array", "items": { "$ref": "#/$defs/node" } }
                    },
                    "required": ["name"],
                    "additionalProperties": false
                }
            }
        }]])

        it("follows recursive references (a tree)", function()
            local v = schema.compile(tree)
            assert.is_true(v:validate({ name = "root", children = {
                { name = "a", children = { { name = "a1" }, { name = "a2", children = {} } } },
                { name = "b" } } }))
            local ok, errs = v:validate({ name = "root", children = { { name = "a" },
                { children = { { name = 7, extra = 1 } } } } })
            assert.is_false(ok)
            assert.are.equal('$.children[1].children[0].name: expected string, got number 7; '
                .. '$.children[1].children[0]: unexpected property "extra" (allowed: "children", "name"); '
                .. '$.children[1]: missing required property "name"', schema.describe(errs))
        end)

        it("resolves #/definitions/... and # (the root)", function()
            local s = { definitions = { pos = { type = "integer", minimum = 1 } },
                type = "object", properties = { n = { ["$ref"] = "#/definitions/pos" }, next = { ["$ref"] = "#" } } }
            passes({ n = 1, next = { n = 2, next = { n = 3 } } }, s)
            fails({ n = 1, next = { n = 0 } }, s, "$.next.n: expected >= 1, got 0")
        end)

        it("refuses a reference loop that never descends into the value", function()
            local s = json.decode([[{ "$ref": "#/$defs/a",
                "$defs": { "a": { "$ref": "#/$defs/b" }, "b": { "anyOf": [ { "$ref": "#/$defs/a" } ] } } }]])
            local ok, err = pcall(schema.compile, s)
            assert.is_false(ok)
            assert.matches("schema.compile: #/%$defs/a: schema loop that never descends into the value: ", err)
            assert.has_error(function() schema.compile({ allOf = { { ["$ref"] = "#" } } }) end)
        end)

        it("handles Lua-level cycles in the schema table like $ref", function()
            local node = { type = "object", properties = {} }
            node.properties.child = node
            passes({ child = { child = {} } }, node)
            fails({ child = { child = 1 } }, node, "$.child.child: expected object, got number 1")
        end)
    end)

    it("validates an OpenAI strict schema (all required, no extras, null via type list)", function()
        local s = json.decode([[{
            "type": "object",
            "properties": {
                "city": { "type": "string", "description": "City name" },
                "unit": { "type": ["string", "null"], "enum": ["c", "f", null] },
                "days": { "type": "array", "items": { "type": "integer", "minimum": 1, "maximum": 7 } }
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": false
        }]])
        local v = schema.compile(s)
        assert.are.same({}, v.skipped)
        assert.is_true(v:validate(json.decode('{"city":"Oslo","unit":null,"days":[1,2]}')))
        assert.is_true(v:validate(json.decode('{"city":"Oslo","unit":"c","days":[]}')))
        local ok, errs = v:validate(json.decode('{"city":"Oslo","unit":"k","days":[0],"country":"NO"}'))
        assert.is_false(ok)
        assert.are.equal('$.days[0]: expected >= 1, got 0; $.unit: expected one of "c", "f", null, got "k"; '
            .. '$: unexpected property "country" (allowed: "city", "days", "unit")', schema.describe(errs))
        assert.are.same({ path = "$.unit", message = 'expected one of "c", "f", null, got "k"', keyword = "enum" },
            errs[2])
    end)

    describe("malformed schemas raise, naming the schema path", function()

        local cases = {
            { { type = "integr" }, '#/type: unknown type "integr"' },
            { { properties = { a = { type = { "string", 5 } } } }, "#/properties/a/type: unknown type 5" },
            { { properties = "name" }, "#/properties: must be an object mapping names to schemas" },
            { { properties = { a = 5 } }, "#/properties/a: expected a schema (object or boolean), got 5" },
            { { required = "a" }, "#/required: must be an array of strings" },
            { { items = { type = "string", minItems = -1 } }, "#/items/minItems: must be a non-negative integer" },
            { { minLength = 1.5 }, "#/minLength: must be a non-negative integer" },
            { { minimum = "0" }, "#/minimum: must be a number" },
            { { multipleOf = 0 }, "#/multipleOf: must be greater than 0" },
            { { pattern = "[a-" }, "#/pattern: bad pattern /[a-/: missing ]" },
            { { pattern = "(a" }, "#/pattern: bad pattern /(a/: missing )" },
            { { pattern = "a)" }, "#/pattern: bad pattern /a)/: unmatched )" },
            { { pattern = "+a" }, "#/pattern: bad pattern /+a/: nothing to repeat at 1" },
            { { pattern = "[z-a]" }, "#/pattern: bad pattern /[z-a]/: range out of order in character class" },
            { { anyOf = {} }, "#/anyOf: must be a non-empty array of schemas" },
            { { ["$ref"] = "#/$defs/missing" }, '#/$ref: $ref "#/$defs/missing" does not resolve' },
            { { ["$ref"] = "other.json#/a" },
                '#/$ref: unsupported $ref "other.json#/a" (only local JSON pointers such as "#/$defs/Name")' },
            { { nullable = "yes" }, "#/nullable: must be a boolean" },
            { { enum = "a" }, "#/enum: must be an array" },
            { { additionalProperties = "no" }, "#/additionalProperties: expected a schema (object or boolean), got \"no\"" },
            { { "string" }, "#: expected a schema (object or boolean), got array" },
        }
        for _, c in ipairs(cases) do
            it(c[2], function()
                local ok, err = pcall(schema.compile, c[1])
                assert.is_false(ok)
                assert.are.equal("schema.compile: " .. c[2], (err:gsub("^[^:]*:%d+: ", "")))
            end)
        end

        it("points the error at the caller", function()
            local ok, err = pcall(function() schema.compile({ type = 1 }) end)
            assert.is_false(ok)
            assert.matches("12%-schema_spec%.lua:%d+: schema%.compile: #/type: ", err)
            assert.has_error(function() schema.compile("string") end,
                "bad argument #1 to 'compile' (schema table expected, got string)")
            assert.has_error(function() schema.validate(1, {}, { max_errors = 0 }) end,
                "opts.max_errors must be a positive integer")
        end)
    end)

    describe("robustness", function()

        it("stops at max_depth on a cyclic value", function()
            local t = { name = "loop" }
            t.next = t
            t.also = t
            local s = { ["$ref"] = "#/$defs/n", ["$defs"] = { n = { type = "object",
                properties = { next = { ["$ref"] = "#/$defs/n" }, also = { ["$ref"] = "#/$defs/n" } } } } }
            local ok, errs = schema.validate(t, s)
            assert.is_false(ok)
            assert.are.equal(1, #errs)
            assert.are.equal("too deep (more than 64 levels)", errs[1].message)
            assert.are.equal("depth", errs[1].keyword)
            assert.matches("^%$%.also%.also", errs[1].path)
            local ok2, errs2 = schema.validate(t, s, { max_depth = 3 })
            assert.is_false(ok2)
            assert.are.equal("$.also.also.also.also: too deep (more than 3 levels)", schema.describe(errs2))
            -- inside anyOf and not, too: no hang, one error
            local u = { anyOf = { { ["not"] = { properties = { also = { ["$ref"] = "#" } } } },
                { properties = { next = { ["$ref"] = "#" } } } } }
            local ok3, errs3 = schema.validate(t, u)
            assert.is_false(ok3)
            assert.are.equal("depth", errs3[#errs3].keyword)
            passes(t, { type = "object" })                  -- nothing descends: fine
        end)

        it("shows at most 40 bytes of a hostile value, escaped", function()
            local huge = string.rep("é", 5000)
            local errs = errors(huge, { type = "integer" })
            assert.are.equal('$: expected integer, got string "' .. string.rep("é", 20) .. '..."', errs[1])
            local msg = errors('a"b\n\0', { const = "x" })[1]
            assert.are.equal('$: expected "x", got "a\\"b\\n\\u0000"', msg)
            local key = string.rep("k", 100)
            local p = errors({ [key] = 1 }, { additionalProperties = { type = "string" } })[1]
            assert.are.equal('$["' .. string.rep("k", 40) .. '..."]: expected string, got number 1', p)
        end)

        it("caps the error list at max_errors and says so", function()
            local list = {}
            for i = 1, 50 do list[i] = "x" end
            local s = { type = "array", items = { type = "integer" } }
            local ok, errs = schema.validate(list, s)
            assert.is_false(ok)
            assert.are.equal(20, #errs)
            assert.is_true(errs.truncated)
            assert.matches("; %(more errors not shown%)$", schema.describe(errs))
            local _, three = schema.validate(list, s, { max_errors = 3 })
            assert.are.equal(3, #three)
            local v = schema.compile(s, { max_errors = 2 })
            assert.are.equal(2, #select(2, v:validate(list)))
        end)

        it("does not allocate when validating a valid value", function()
            local v = schema.compile(json.decode([[{
                "type": "object", "additionalProperties": false, "required": ["name", "tags", "when", "pet"],
                "properties": {
                    "name": { "type": "string", "minLength": 1, "pattern": "^[A-Z]" },
                    "tags": { "type": "array", "items": { "enum": ["a", "b"] }, "uniqueItems": true },
                    "when": { "type": "string", "format": "date-time" },
                    "pet": { "anyOf": [ { "type": "null" }, { "type": "object", "properties": { "n": { "type": "integer" } } } ] },
                    "n": { "type": ["number", "null"], "minimum": 0, "multipleOf": 0.5 }
                } }]]))
            local value = json.decode('{"name":"Bo","tags":["a","b"],"when":"2024-01-31T09:30:00Z","pet":{"n":1},"n":1.5}')
            for _ = 1, 2000 do assert(v:validate(value)) end
            collectgarbage()
            collectgarbage()
            local before = collectgarbage("count")
            for _ = 1, 20000 do v:validate(value) end
            local grew = collectgarbage("count") - before
            assert(grew < 16, "grew by " .. grew .. " KB")    -- one table per call would be > 600 KB
        end)
    end)

    describe("describe", function()

        it("joins path: message pairs", function()
            local s = { type = "object", properties = { age = { type = "integer" } }, required = { "name" } }
            local ok, errs = schema.validate({ age = "ten" }, s)
            assert.is_false(ok)
            assert.are.equal('$.age: expected integer, got string "ten"; $: missing required property "name"',
                schema.describe(errs))
            assert.are.equal("", schema.describe(nil))
            assert.has_error(function() schema.describe("x") end,
                "bad argument #1 to 'describe' (table expected, got string)")
        end)

        it("accepts a compiled validator in schema.validate", function()
            local v = schema.compile({ type = "string" })
            assert.are.equal("sibyl.schema.validator", tostring(v))
            assert.is_true(schema.validate("a", v))
            assert.is_false(schema.validate(1, v))
        end)
    end)
end)
