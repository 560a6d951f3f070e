-- 13-llm_features_spec.lua -- sibyl.llm beyond one call: fallback chains,
-- usage meters and cost, embeddings, configuration (YAML and the environment),
-- the mock provider and pacing. Against the fake provider of
-- tests/fixtures/llm_server.lua like 13-llm_spec.lua (the chat, streaming, tool
-- and retry specs per wire dialect), with which it shares llm_spec_common.lua.

local sibyl = require "sibyl"
local json = require "sibyl.json"
local llm = require "sibyl.llm"
local mock = require "sibyl.llm.mock"
local keys = require "sibyl.keys"
local helpers = require "helpers"
local fixture = require "llm_server"
local server = require "sibyl.server"
local eventually, timed = helpers.eventually, helpers.timed

local C = require "llm_spec_common"
local KEY, K1, K2, K3, QUESTION, USER, FAST, WEATHER_TOOL, TIME_TOOL, DIALECTS, copy, has, words, cosine =
    C.KEY, C.K1, C.K2, C.K3, C.QUESTION, C.USER, C.FAST, C.WEATHER_TOOL, C.TIME_TOOL, C.DIALECTS, C.copy, C.has, C.words, C.cosine


-- The fixture is shared by the whole file; each test starts from a clean one.
local fx

setup(function()
    fx = assert(fixture.start{ port = 0 })
end)

teardown(function()
    fx:close()
    llm.reset()
end)

before_each(function()
    fx:reset()
end)

after_each(function()
    assert.are.same({}, fx.errors)               -- no fixture handler raised
end)


describe("sibyl.llm fallback", function()

    local saved_retry

    before_each(function()
        saved_retry = llm.defaults.retry
    end)

    after_each(function()
        llm.reset()
        llm.defaults.retry = saved_retry
    end)

    local function configure(a_extra, more)
        local a = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, retry = { attempts = 1 } }
        for k, v in pairs(a_extra or {}) do a[k] = v end
        local conf = { providers = { a = a, b = { type = "anthropic", base_url = fx.base_url, api_key = KEY,
                                                  model = "claude-b", retry = FAST } },
                       default = "a", fallback = { "a", "b" } }
        for k, v in pairs(more or {}) do conf[k] = v end
        assert(llm.configure(conf))
    end

    it("falls back to the second provider when the first keeps failing", function()
        configure{ headers = { ["x-fixture-fault"] = "503" } }
        local r, err = llm.chat{ messages = USER }
        assert.is_nil(err)
        assert.are.equal("b", r.provider)
        assert.are.same({ "a" }, r.fallback_from)
        assert.are.equal("echo: " .. QUESTION, r.content)
        assert.are.equal(2, #fx.requests)
        assert.are.equal("/v1/chat/completions", fx.requests[1].path)
        assert.are.equal("/v1/messages", fx.requests[2].path)
        assert.are.equal("claude-b", fx.requests[2].json.model)       -- b's own model
    end)

    it("goes through a's retries first", function()
        configure({ headers = { ["x-fixture-fault"] = "500" }, retry = { attempts = 3, base = 0.01 } })
        local r = assert(llm.chat{ messages = USER })
        assert.are.equal("b", r.provider)
        assert.are.equal(4, #fx.requests)
    end)

    it("does not fall back on auth errors", function()
        configure{ headers = { ["x-fixture-fault"] = "401" } }
        local r, err = llm.chat{ messages = USER }
        assert.is_nil(r)
        assert.are.equal("auth", err.kind)
        assert.are.equal("a", err.provider)
        assert.are.equal(1, #fx.requests)
    end)

    it("does not fall back once deltas were streamed", function()
        configure{ headers = { ["x-fixture-fault"] = "reset", ["x-fixture-after"] = "3" } }
        local got = 0
        local r, err = llm.chat{ messages = USER, stream = function() got = got + 1 end }
        assert.is_nil(r)
        assert.are.equal("connect", err.kind)
        assert.is_true(err.streamed)
        assert.are.equal(2, got)
        assert.are.equal(1, #fx.requests)
    end)

    it("lists every provider tried when all fail", function()
        configure({ headers = { ["x-fixture-fault"] = "503" } })
        fx:script{ status = 529 }                                -- for b (a's fault header wins)
        local r, err = llm.chat{ messages = USER, retry = { attempts = 1 } }
        assert.is_nil(r)
        assert.are.equal("http", err.kind)
        assert.are.equal(529, err.status)
        assert.are.same({ "a", "b" }, err.tried)
        assert.are.equal(2, #fx.requests)
    end)

    it("honours fallback_on", function()
        configure({ headers = { ["x-fixture-fault"] = "503" } }, { fallback_on = { "rate_limited" } })
        local r, err = llm.chat{ messages = USER }
        assert.is_nil(r)
        assert.are.equal(503, err.status)
        assert.are.equal(1, #fx.requests)
        -- per call
        fx:reset()
        r = assert(llm.chat{ messages = USER, fallback_on = { "http" } })
        assert.are.equal("b", r.provider)
    end)

    it("takes a model per fallback entry, and per-call provider and fallback lists", function()
        configure({ headers = { ["x-fixture-fault"] = "503" } },
                  { fallback = { "a", { provider = "b", model = "claude-special" } } })
        local r = assert(llm.chat{ messages = USER })
        assert.are.equal("claude-special", fx.requests[2].json.model)
        assert.are.equal("claude-special", r.model)
        -- opts.provider as a client and opts.fallback as a list of clients
        fx:reset()
        local bad = llm.mock{ name = "flaky", replies = { { error = { kind = "http", status = 503 } } },
                              retry = { attempts = 1 } }
        local good = llm.mock{ name = "steady", replies = { "from steady" } }
        r = assert(llm.chat{ provider = bad, fallback = { good }, messages = USER })
        assert.are.equal("from steady", r.content)
        assert.are.equal("steady", r.provider)
        assert.are.same({ "flaky" }, r.fallback_from)
        assert.are.equal(0, #fx.requests)
    end)
end)


describe("sibyl.llm usage and cost", function()

    local function client(extra)
        local o = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, retry = FAST }
        for k, v in pairs(extra or {}) do o[k] = v end
        return llm.client(o)
    end

    after_each(function()
        llm.reset()
    end)

    it("a meter counts the calls made in fn and in the tasks it spawns", function()
        local c = client()
        local before = copy(llm.usage())
        local m = llm.meter()
        local results = {}
        local late
        local v = m:run(function(x)
            results[1] = assert(c:chat{ messages = USER })
            local t1 = sibyl.spawn(function() return assert(c:chat{ prompt = "one two" }) end)
            local t2 = sibyl.spawn(function()
                local inner = sibyl.spawn(function() return assert(c:chat{ prompt = "three" }) end)
                return inner:wait()
            end)
            results[2], results[3] = t1:wait(), t2:wait()
            late = sibyl.spawn(function() sibyl.sleep(0.02); return assert(c:chat{ prompt = "late" }) end)
            return x * 2
        end, 21)
        assert.are.equal(42, v)                                 -- run returns fn's results
        assert.are.equal(3, m.calls)
        results[4] = late:wait()                                -- spawned inside run: still counted
        local input, output = 0, 0
        for _, r in ipairs(results) do
            input, output = input + r.usage.input, output + r.usage.output
        end
        assert.are.equal(4, m.calls)
        assert.are.equal(6 + 2 + 1 + 1, m.input)
        assert.are.equal(input, m.input)
        assert.are.equal(output, m.output)
        assert.are.equal(4, m.by_model["gpt-4o-mini"].calls)
        -- A call outside the meter is not counted by it, but by the totals.
        assert(c:chat{ messages = USER })
        assert.are.equal(4, m.calls)
        local after = llm.usage()
        assert.are.equal(before.calls + 5, after.calls)
        assert.are.equal(before.input + input + 6, after.input)
        assert.matches("^sibyl.llm.meter %(4 calls, 10 in, %d+ out, %$0.000000%)$", tostring(m))
        m:reset()
        assert.are.equal(0, m.calls)
        assert.are.same({}, m.by_model)
    end)

    it("nested meters count into each enclosing meter", function()
        local c = client()
        local outer, inner = llm.meter(), llm.meter()
        outer:run(function()
            assert(c:chat{ prompt = "a" })
            inner:run(function()
                assert(c:chat{ prompt = "b c" })
                sibyl.spawn(function() assert(c:chat{ prompt = "d" }) end):wait()
            end)
            assert(c:chat{ prompt = "e" })
        end)
        assert.are.equal(4, outer.calls)
        assert.are.equal(2, inner.calls)
        assert.are.equal(5, outer.input)
        assert.are.equal(3, inner.input)
        -- an inner meter reused alone
        inner:run(function() assert(c:chat{ prompt = "f" }) end)
        assert.are.equal(3, inner.calls)
        assert.are.equal(4, outer.calls)
    end)

    it("computes the cost from the client's prices", function()
        local c = client{ model = "priced-model", prices = { ["priced-model"] = { input = 2, output = 10 } } }
        fx:script{ content = "one two three four" }
        local m = llm.meter()
        local r = m:run(function() return assert(c:chat{ messages = USER }) end)
        local want = (6 * 2 + 4 * 10) / 1e6
        assert.is_true(math.abs(r.usage.cost - want) < 1e-12)
        assert.is_true(math.abs(m.cost - want) < 1e-12)
        assert.is_true(math.abs(m.by_model["priced-model"].cost - want) < 1e-12)
        -- no price, no cost
        local r2 = assert(client{ model = "unpriced-model" }:chat{ messages = USER })
        assert.is_nil(r2.usage.cost)
    end)

    it("computes the cost from configured prices", function()
        assert(llm.configure{ providers = { main = { type = "openai", base_url = fx.base_url .. "/v1",
                                                     api_key = KEY, model = "conf-priced" } },
                              prices = { ["conf-priced"] = { input = 1, output = 3 } } })
        fx:script{ content = "two words" }
        local r = assert(llm.chat{ messages = USER })
        assert.is_true(math.abs(r.usage.cost - (6 + 2 * 3) / 1e6) < 1e-12)
        -- a client's own prices win
        local c = client{ model = "conf-priced", prices = { ["conf-priced"] = { input = 100, output = 0 } } }
        r = assert(c:chat{ messages = USER })
        assert.is_true(math.abs(r.usage.cost - 600 / 1e6) < 1e-12)
    end)

    it("forgets configured prices on llm.reset()", function()
        assert(llm.configure{ providers = { main = { type = "openai", base_url = fx.base_url .. "/v1",
                                                     api_key = KEY, model = "reset-priced" } },
                              prices = { ["reset-priced"] = { input = 1, output = 1 } } })
        assert.is_number(assert(llm.chat{ messages = USER }).usage.cost)
        llm.reset()
        local r = assert(client{ model = "reset-priced" }:chat{ messages = USER })
        assert.is_nil(r.usage.cost)
    end)

    it("counts embeddings as calls with input tokens", function()
        local c = client()
        local m = llm.meter()
        local vecs, info = m:run(function() return c:embed{ input = { "a b", "c" }, dimensions = 4 } end)
        assert.are.equal(2, #vecs)
        assert.are.equal(1, m.calls)
        assert.are.equal(3, m.input)
        assert.are.equal(3, info.usage.input)
        assert.are.equal(0, m.output)
    end)
end)


describe("sibyl.llm embeddings", function()

    local TEXTS = {
        "the cat sat on the mat", "a dog in the fog", "rain in spain", "hello world", "embeddings are vectors",
        "sibyl runs agents", "luajit is fast", "ten inputs in all", "batch of three", "the last one",
    }

    local function client(extra)
        local o = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, retry = FAST,
                    embed_model = "spec-embed" }
        for k, v in pairs(extra or {}) do o[k] = v end
        return llm.client(o)
    end

    it("embeds in batches with bounded concurrency, in input order, as base64 by default", function()
        for _ = 1, 4 do
            fx:script{ path = "/v1/embeddings", fault = "slow_first_byte", delay = 0.15 }
        end
        local progress = {}
        local vecs, info = client():embed{ input = TEXTS, batch_size = 3, concurrency = 2, dimensions = 8,
                                           progress = function(done, total)
                                               progress[#progress + 1] = done
                                               assert.are.equal(10, total)
                                           end }
        assert.is_table(vecs, tostring(info))
        assert.are.equal(10, #vecs)
        assert.are.equal(8, info.dims)
        assert.are.equal("spec-embed", info.model)
        assert.are.equal(4, #fx.requests)
        local sizes, seen = {}, {}
        for i, rec in ipairs(fx.requests) do
            assert.are.equal("/v1/embeddings", rec.path)
            assert.are.equal("base64", rec.json.encoding_format)
            assert.are.equal(8, rec.json.dimensions)
            assert.are.equal("spec-embed", rec.json.model)
            assert.are.equal("Bearer " .. KEY, rec.headers["authorization"])
            sizes[i] = #rec.json.input
            for _, t in ipairs(rec.json.input) do seen[#seen + 1] = t end
        end
        table.sort(sizes)
        assert.are.same({ 1, 3, 3, 3 }, sizes)
        table.sort(seen)
        local all = copy(TEXTS)
        table.sort(all)
        assert.are.same(all, seen)
        -- Two at a time: requests 1-2 together, 3-4 once a slot freed.
        local t = {}
        for i, rec in ipairs(fx.requests) do t[i] = rec.time end
        table.sort(t)
        assert.is_true(t[2] - t[1] < 0.1, "first two apart by " .. (t[2] - t[1]))
        assert.is_true(t[3] - t[1] >= 0.12, "third did not wait: " .. (t[3] - t[1]))
        for i, text in ipairs(TEXTS) do
            local want = fixture.embed(text, 8)
            for d = 1, 8 do
                assert.is_true(math.abs(vecs[i][d - 1] - want[d]) < 1e-6,
                               string.format("text %d dim %d: %g vs %g", i, d, vecs[i][d - 1], want[d]))
            end
        end
        assert.are.equal(4, #progress)
        for i = 2, #progress do assert.is_true(progress[i] > progress[i - 1]) end
        assert.are.equal(10, progress[4])
    end)

    it("decodes float lists too, and embeds a single string", function()
        local vecs, info = client():embed{ input = "hello world", encoding_format = "float", dimensions = 5 }
        assert.are.equal(1, #vecs)
        assert.are.equal(5, info.dims)
        assert.are.equal("float", fx.requests[1].json.encoding_format)
        local want = fixture.embed("hello world", 5)
        for d = 1, 5 do assert.is_true(math.abs(vecs[1][d - 1] - want[d]) < 1e-6) end
        local again = client():embed{ input = { "hello world", "goodbye moon" }, dimensions = 5 }
        assert.is_true(math.abs(cosine(vecs[1], again[1], 5) - 1) < 1e-6)
        assert.is_true(cosine(vecs[1], again[2], 5) < 0.999)
    end)

    it("retries a failed batch and fails with its error when it keeps failing", function()
        fx:script({ path = "/v1/embeddings", status = 500 })
        local vecs = client():embed{ input = TEXTS, batch_size = 5, dimensions = 4 }
        assert.are.equal(10, #vecs)
        assert.are.equal(3, #fx.requests)
        fx:reset()
        fx:script({ path = "/v1/embeddings", status = 400, error = { message = "input too odd" } })
        local v, err = client():embed{ input = TEXTS, batch_size = 10, dimensions = 4 }
        assert.is_nil(v)
        assert.are.equal("http", err.kind)
        assert.matches("input too odd", err.message)
        assert.are.equal(1, #fx.requests)
    end)

    it("starts no more batches once one failed", function()
        -- The first batch fails at once; the second, in flight beside it, ends later.
        fx:script({ path = "/v1/embeddings", status = 400 },
                  { path = "/v1/embeddings", fault = "slow_first_byte", delay = 0.1 })
        local calls = 0
        local v, err = client():embed{ input = TEXTS, batch_size = 1, concurrency = 2, dimensions = 4,
                                       progress = function() calls = calls + 1 end }
        assert.is_nil(v)
        assert.are.equal("http", err.kind)
        sibyl.sleep(0.25)                                  -- the other worker's batch ends
        assert.are.equal(2, #fx.requests)
        assert.are.equal(0, calls)                         -- no progress after the failure
    end)

    it("goes through llm.embed with the configured provider; Anthropic has no embeddings", function()
        assert(llm.configure{ providers = {
            main = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, embed_model = "conf-embed" },
            claude = { type = "anthropic", base_url = fx.base_url, api_key = KEY } } , default = "main" })
        local vecs, info = llm.embed{ input = { "one", "two" }, dimensions = 3 }
        llm.reset()
        assert.are.equal(2, #vecs)
        assert.are.equal("conf-embed", info.model)
        local c = llm.client{ type = "anthropic", base_url = fx.base_url, api_key = KEY }
        local v, err = c:embed{ input = { "x" } }
        assert.is_nil(v)
        assert.are.equal("config", err.kind)
        assert.matches("no embeddings", err.message)
        assert.are.equal(1, #fx.requests)
        assert.has_error(function() c:embed{ input = 42 } end)
    end)
end)


describe("sibyl.llm configuration", function()

    local saved_retry

    before_each(function()
        saved_retry = llm.defaults.retry
    end)

    after_each(function()
        llm.reset()
        llm.defaults.retry = saved_retry
    end)

    it("configures providers from a table", function()
        local ok, err = llm.configure{
            default = "b",
            providers = {
                a = { type = "openai", base_url = fx.base_url .. "/v1/", api_key = KEY, model = "model-a" },
                b = { type = "anthropic", base_url = fx.base_url, api_key = KEY, model = "model-b",
                      version = "2024-99-99", max_tokens = 77 },
            },
        }
        assert.is_nil(err)
        assert.is_true(ok)
        local a, b = assert(llm.provider("a")), assert(llm.provider("b"))
        assert.are.equal(b, assert(llm.provider()))
        assert.are.equal("a", a.name)
        assert.are.equal(fx.base_url .. "/v1", a.base_url)          -- trailing slash dropped
        assert.are.equal(fx.base_url .. "/v1", b.base_url)          -- /v1 added
        assert.is_false(has(tostring(a), KEY))
        assert.matches("1 keys", tostring(a))
        local r = assert(llm.chat{ messages = USER })
        assert.are.equal("b", r.provider)
        assert.are.equal("model-b", fx.requests[1].json.model)
        assert.are.equal(77, fx.requests[1].json.max_tokens)
        assert.are.equal("2024-99-99", fx.requests[1].headers["anthropic-version"])
        r = assert(llm.chat{ provider = "a", messages = USER })
        assert.are.equal("a", r.provider)
        assert.are.equal("model-a", fx.requests[2].json.model)
        r = assert(llm.chat{ provider = "a", model = "override", messages = USER })
        assert.are.equal("override", fx.requests[3].json.model)
    end)

    it("configures providers from a YAML file", function()
        local path = helpers.tmpfile(table.concat({
            "llm:",
            "  default: main",
            "  fallback: [main, backup]",
            "  providers:",
            "    main:",
            "      type: openai",
            "      base_url: " .. fx.base_url .. "/v1",
            "      api_key: ${SIBYL_SPEC_UNSET_VAR:-sk-yaml-0123456789}",
            "      model: yaml-model",
            "      headers: {x-fixture-fault: '503'}",
            "      retry: {attempts: 1}",
            "    backup:",
            "      type: anthropic",
            "      base_url: " .. fx.base_url,
            "      api_key: sk-ant-yaml-0123456789",
            "      model: yaml-claude",
            "  prices:",
            "    yaml-claude: {input: 1, output: 1}",
        }, "\n") .. "\n", ".yaml")
        finally(function() os.remove(path) end)
        local ok, err = llm.configure(path)
        assert.is_nil(err)
        assert.is_true(ok)
        local r = assert(llm.chat{ messages = USER })
        assert.are.equal("backup", r.provider)
        assert.are.same({ "main" }, r.fallback_from)
        assert.are.equal("Bearer sk-yaml-0123456789", fx.requests[1].headers["authorization"])
        assert.are.equal("yaml-model", fx.requests[1].json.model)
        assert.are.equal("sk-ant-yaml-0123456789", fx.requests[2].headers["x-api-key"])
        assert.are.equal("yaml-claude", r.model)
        assert.is_number(r.usage.cost)
        assert.are.equal(2, #fx.requests)
    end)

    it("returns kind config for a misconfiguration, with a clear message", function()
        local function fails(conf, pattern)
            local ok, err = llm.configure(conf)
            assert.is_nil(ok)
            assert.are.equal("config", err.kind)
            assert.matches(pattern, err.message)
        end
        fails({}, "`providers` must map names")
        fails({ providers = { x = { type = "gemini" } } }, 'provider "x": .*unknown provider type "gemini"')
        fails({ providers = { x = { type = "openai", api_key = KEY } }, default = "y" },
              'default provider "y" is not among the providers %(x%)')
        fails({ providers = { x = { type = "openai", api_key = KEY } }, fallback = { "x", "z" } },
              'fallback provider "z" is not configured')
        -- A failed configure keeps the previous configuration.
        assert(llm.configure{ providers = { only = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY } } })
        fails({ providers = 3 }, "providers")
        assert.are.equal("only", assert(llm.provider()).name)
        local c, err = llm.provider("nope")
        assert.is_nil(c)
        assert.are.equal("config", err.kind)
        assert.matches('no provider "nope" %(configured: only%)', err.message)
        local r
        r, err = llm.chat{ provider = "nope", messages = USER }
        assert.is_nil(r)
        assert.are.equal("config", err.kind)
        assert.has_error(function() llm.configure(42) end)
        assert.has_error(function() llm.client{ type = "nope" } end)
    end)

    it("reports io and parse errors of a YAML file", function()
        local ok, err = llm.configure("/nonexistent/sibyl-llm.yaml")
        assert.is_nil(ok)
        assert.are.equal("io", err.kind)
        local path = helpers.tmpfile("llm:\n  providers: [unclosed\n", ".yaml")
        finally(function() os.remove(path) end)
        ok, err = llm.configure(path)
        assert.is_nil(ok)
        assert.are.equal("parse", err.kind)
    end)

    it("llm.reset() forgets the configuration", function()
        assert(llm.configure{ providers = { only = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY } } })
        assert.is_table(llm.provider())
        llm.reset()
        local env_has_provider = false
        for _, v in ipairs{ "SIBYL_LLM_CONFIG", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY",
                            "ANTHROPIC_BASE_URL", "SIBYL_PROVIDER" } do
            if (os.getenv(v) or "") ~= "" then env_has_provider = true end
        end
        if env_has_provider then
            pending("the environment configures a provider")
            return
        end
        local c, err = llm.provider()
        assert.is_nil(c)
        assert.are.equal("config", err.kind)
        assert.matches("no provider configured", err.message)
        local r
        r, err = llm.chat{ messages = USER }
        assert.is_nil(r)
        assert.are.equal("config", err.kind)
        assert.are.equal(0, #fx.requests)
    end)

    it("a configured retry applies to the configured providers; a provider's own wins", function()
        local before = llm.defaults.retry
        local flaky = { ["x-fixture-fault"] = "500" }
        assert(llm.configure{ retry = { attempts = 2, base = 0.01 }, providers = {
            main = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, headers = flaky },
            own = { type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, headers = flaky,
                    retry = { attempts = 3 } } } })
        assert.are.equal(before, llm.defaults.retry)              -- the module defaults stay
        local r, err = llm.chat{ provider = "main", messages = USER }
        assert.is_nil(r)
        assert.are.equal(2, err.attempts)
        r, err = llm.chat{ provider = "own", messages = USER }
        assert.is_nil(r)
        assert.are.equal(3, err.attempts)
        assert.are.equal(5, #fx.requests)
        -- A client made apart from the configuration keeps the defaults.
        local c = llm.client{ type = "openai", base_url = fx.base_url .. "/v1", api_key = KEY, headers = flaky,
                              retry = { base = 0.01 } }
        r, err = c:chat{ messages = USER }
        assert.is_nil(r)
        assert.are.equal(before.attempts, err.attempts)
    end)
end)


describe("sibyl.llm mock provider", function()

    it("replays scripted replies in order, then answers 'mock reply to: ...'", function()
        local m = llm.mock{ replies = { "first", { content = "second", usage = { output = 7 } } } }
        assert.are.equal(2, m:pending())
        local r1 = assert(llm.chat{ provider = m, messages = USER })
        local r2 = assert(m:chat{ messages = USER, model = "other-model" })
        local r3 = assert(m:chat{ messages = { { role = "user", content = "earlier" }, { role = "assistant", content = "x" },
                                              { role = "user", content = "last question" } } })
        assert.are.equal("first", r1.content)
        assert.are.equal("mock", r1.provider)
        assert.are.equal("mock-model", r1.model)
        assert.are.equal("stop", r1.finish_reason)
        assert.are.equal(6, r1.usage.input)
        assert.are.equal(1, r1.usage.output)
        assert.are.equal("second", r2.content)
        assert.are.equal(7, r2.usage.output)
        assert.are.equal("other-model", r2.model)
        assert.are.equal("mock reply to: last question", r3.content)
        assert.are.equal(0, m:pending())
        assert.are.equal(3, #m.requests)
        assert.are.same(USER, m.requests[1].messages)
        assert.are.equal("other-model", m.requests[2].model)
        m:script("more")
        assert.are.equal("more", assert(m:chat{ messages = USER }).content)
        assert.are.equal(0, #fx.requests)
    end)

    it("takes functions and a default reply", function()
        local m = llm.mock{ default = function(req) return "you said " .. #req.messages .. " things" end,
                            replies = { function(req) return { content = req.messages[1].content:upper() } end } }
        assert.are.equal("WHAT IS THE WEATHER IN PARIS?", assert(m:chat{ messages = USER }).content)
        assert.are.equal("you said 1 things", assert(m:chat{ messages = USER }).content)
    end)

    it("sends scripted errors through retries", function()
        local m = llm.mock{ retry = FAST, replies = {
            { error = { kind = "http", status = 503, message = "busy" } },
            { error = { kind = "rate_limited", retry_after = 0.1 } },
            "at last",
            { error = { kind = "auth", status = 401 } },
            "unused",
        } }
        local dt, r = timed(function() return assert(m:chat{ messages = USER }) end)
        assert.are.equal("at last", r.content)
        assert.are.equal(3, r.attempts)
        assert.is_true(dt >= 0.09, "retry_after not honoured: " .. dt)
        local r2, err = m:chat{ messages = USER }
        assert.is_nil(r2)
        assert.are.equal("auth", err.kind)
        assert.are.equal(1, err.attempts)
        assert.are.equal(4, #m.requests)
        assert.are.equal(1, m:pending())
    end)

    it("streams words and stops early", function()
        local m = llm.mock{ replies = { "alpha beta gamma delta", "one two three four" } }
        local got = {}
        local r = assert(m:chat{ messages = USER, stream = function(d) got[#got + 1] = d.text end })
        assert.are.same({ "alpha ", "beta ", "gamma ", "delta" }, got)
        assert.are.equal(table.concat(got), r.content)
        local n = 0
        r = assert(m:chat{ messages = USER, stream = function() n = n + 1; return n < 2 end })
        assert.are.equal(2, n)
        assert.are.equal("stopped", r.finish_reason)
        assert.are.equal("one two ", r.content)                -- what was delivered
        assert.are.equal(2, r.usage.output)
    end)

    it("returns tool calls, streamed or not", function()
        local call = { name = "get_weather", arguments = { city = "Paris" } }
        local m = llm.mock{ replies = { { tool_calls = { call } }, { tool_calls = { call } } } }
        local r = assert(m:chat{ messages = USER, tools = { WEATHER_TOOL } })
        assert.are.equal("tool_calls", r.finish_reason)
        assert.are.equal("get_weather", r.tool_calls[1].name)
        assert.are.same({ city = "Paris" }, r.tool_calls[1].arguments)
        assert.are.equal("call_1", r.tool_calls[1].id)
        local seen
        r = assert(m:chat{ messages = USER, stream = function(d) seen = d end })
        assert.are.equal("tool_call", seen.type)
        assert.are.equal(r.tool_calls[1].raw_arguments, seen.partial)
    end)

    it("repairs structured output", function()
        local m = llm.mock{ replies = { '{"n": "one"}', '{"n": 1}' } }
        local r = assert(m:chat{ messages = USER, schema = { type = "object", properties = { n = { type = "number" } },
                                                           required = { "n" } } })
        assert.are.same({ n = 1 }, r.data)
        assert.are.equal(1, r.repairs)
        assert.are.equal(2, #m.requests)
        assert.matches("%$%.n", m.requests[2].messages[3].content)
    end)

    it("embeds deterministically", function()
        local m = llm.mock{ dims = 16 }
        local a, info = m:embed{ input = { "red apple", "green apple", "quantum physics", "red apple" } }
        assert.are.equal(16, info.dims)
        assert.are.equal("mock-embedding", info.model)
        assert.are.equal(4, #a)
        local want = mock.embed_text("red apple", 16)
        for d = 0, 15 do assert.are.equal(want[d], a[1][d]) end
        assert.is_true(math.abs(cosine(a[1], a[4], 16) - 1) < 1e-6)
        assert.is_true(math.abs(cosine(a[1], a[1], 16) - 1) < 1e-6)    -- unit vectors
        assert.is_true(cosine(a[1], a[2], 16) > cosine(a[1], a[3], 16))
        local b = m:embed{ input = { "red apple" }, dimensions = 4 }
        assert.are.equal(1, #b)
        assert.are.equal(2, #m.requests)
    end)

    it("is configured like any provider", function()
        finally(function() llm.reset() end)
        assert(llm.configure{ providers = { fake = { type = "mock", model = "fake-1", replies = { "configured" } } } })
        local r = assert(llm.chat{ messages = USER })
        assert.are.equal("configured", r.content)
        assert.are.equal("fake", r.provider)
        assert.are.equal("fake-1", r.model)
    end)
end)


-- Configuration from the environment: a child sibyl process, since the
-- environment is read by the process itself.
describe("sibyl.llm configuration from the environment", function()
    local function child(env, script)
        local path = helpers.tmpfile(script, ".lua")
        local parts = {}
        for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. helpers.shell_quote(v) end
        local cmd = "env -u OPENAI_API_KEY -u OPENAI_BASE_URL -u ANTHROPIC_API_KEY -u ANTHROPIC_BASE_URL "
            .. "-u SIBYL_PROVIDER -u SIBYL_MODEL -u SIBYL_LLM_CONFIG " .. table.concat(parts, " ") .. " "
            .. helpers.shell_quote(helpers.sibyl_bin) .. " " .. path .. " 2>&1"
        local p = assert(io.popen(cmd))
        local out = p:read("*a")
        p:close()
        os.remove(path)
        return out
    end

    -- The child starts the fixture on a port the parent picked, then calls
    -- llm.chat with nothing configured.
    local SCRIPT = [[
        package.path = "tests/fixtures/?.lua;" .. package.path
        local llm = require "sibyl.llm"
        local fx = assert(require("llm_server").start{ port = tonumber(os.getenv("FX_PORT")) })
        local r, err = llm.chat{ prompt = "hello there" }
        if r then
            local rq = fx.requests[1]
            print(r.provider, r.model, r.content, rq and (rq.headers.authorization or rq.headers["x-api-key"]) or "-")
        else
            print("ERR", err.kind, err.message)
        end
        fx:close()
    ]]

    local function free_port()
        local s = assert(server.listen{ port = 0, routes = {} })
        local port = s.port
        s:close()
        return tostring(port)
    end

    it("OPENAI_BASE_URL, OPENAI_API_KEY and SIBYL_MODEL make the default provider", function()
        local port = free_port()
        local out = child({ FX_PORT = port, OPENAI_BASE_URL = "http://127.0.0.1:" .. port .. "/v1",
                            OPENAI_API_KEY = "sk-env-1", SIBYL_MODEL = "env-model" }, SCRIPT)
        assert.are.equal("openai\tenv-model\techo: hello there\tBearer sk-env-1\n", out)
    end)

    it("ANTHROPIC_* with SIBYL_PROVIDER picks Anthropic", function()
        local port = free_port()
        local out = child({ FX_PORT = port, ANTHROPIC_BASE_URL = "http://127.0.0.1:" .. port,
                            ANTHROPIC_API_KEY = "sk-ant-env", OPENAI_API_KEY = "sk-unused",
                            SIBYL_PROVIDER = "anthropic" }, SCRIPT)
        assert.are.equal("anthropic\tclaude-haiku-4-5\techo: hello there\tsk-ant-env\n", out)
    end)

    it("SIBYL_PROVIDER=mock works offline", function()
        local out = child({ FX_PORT = free_port(), SIBYL_PROVIDER = "mock" }, SCRIPT)
        assert.matches("^mock\tmock%-model\tmock reply to: hello there", out)
    end)

    it("nothing configured is kind config, naming the variables to set", function()
        local out = child({ FX_PORT = free_port() }, SCRIPT)
        assert.matches("^ERR\tconfig\t", out)
        assert.matches("OPENAI_API_KEY", out)
        assert.matches("doc/llm.md", out)
    end)
end)


describe("sibyl.llm pacing", function()

    it("rpm spaces calls out once the burst is spent", function()
        local m = llm.client{ type = "mock", rpm = 600, pacing_burst = 0.1 }   -- 10 calls/s, 1 at once
        local t0 = sibyl.now()
        for _ = 1, 5 do assert(m:chat{ prompt = "hi" }) end
        local took = sibyl.now() - t0
        assert.is_true(took >= 0.35 and took < 2, "5 calls at 10/s took " .. took)
    end)

    it("key_rpm paces each key of the ring on its own", function()
        local fx = assert(fixture.start{ port = 0 })
        finally(function() fx:close() end)
        local c = llm.client{ type = "openai", base_url = fx.base_url .. "/v1", api_keys = { K1, K2 },
                              key_rpm = 600, pacing_burst = 0.1 }
        local t0 = sibyl.now()
        for _ = 1, 6 do assert(c:chat{ prompt = "hi" }) end
        local took = sibyl.now() - t0
        -- 3 calls per key at 10/s per key: about 0.2 s; one shared bucket would take 0.5 s
        assert.is_true(took >= 0.15 and took < 0.45, "6 calls over 2 keys took " .. took)
        local used = {}
        for _, rq in ipairs(fx.requests) do
            used[rq.headers.authorization] = (used[rq.headers.authorization] or 0) + 1
        end
        assert.are.equal(3, used["Bearer " .. K1])
        assert.are.equal(3, used["Bearer " .. K2])
    end)

    it("tpm waits for the tokens a call will use and refunds what it did not", function()
        local m = llm.mock{ replies = { "one", "two" } }
        m.bucket = keys.bucket{ tpm = 6000, burst_seconds = 0.1 }   -- 100 tokens/s, 10 at once
        local before = m.bucket:stats().tokens_available
        local t0 = sibyl.now()
        assert(m:chat{ prompt = "hi", max_tokens = 20 })           -- estimate 20: waits ~0.1 s
        local took = sibyl.now() - t0
        assert.is_true(took >= 0.05, "took " .. took)
        -- the mock used 2 tokens (1 in, 1 out): 18 of the 20 came back, filling
        -- the bucket again (without the refund it would hold about 0)
        assert.is_true(m.bucket:stats().tokens_available >= before - 1)
    end)
end)
