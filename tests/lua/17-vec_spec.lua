-- 17-vec_spec.lua -- sibyl.vec: matrices, top-k search against a brute-force
-- Lua reference (cosine, dot, l2; ties by id), batches, int8 shortlists with
-- exact re-ranking, the worker-pool path, save/load, blobs and SQLite, the
-- hashing embedder, misuse.

local sibyl = require "sibyl"
local vec = require "sibyl.vec"
local ffi = require "ffi"
local helpers = require "helpers"

local sqrt, abs, min, random = math.sqrt, math.abs, math.min, math.random


-- ------------------------------------------------------------ helpers

local function rand_vec(d, lo, hi)
    local v = {}
    for j = 1, d do v[j] = lo and random(lo, hi) or (random() * 2 - 1) end
    return v
end


local function fill(m, n, d, gen)
    local rows = {}
    for i = 1, n do
        rows[i] = gen and gen(i) or rand_vec(d)
        assert.are.equal(m:rows() + 1, m:add(rows[i]))
    end
    return rows
end


-- The stored row i as a Lua list (doubles).
local function stored(m, i)
    local r, out = m:row(i), {}
    for j = 0, m:dims() - 1 do out[j + 1] = r[j] end
    return out
end


local function dotd(a, b)
    local s = 0
    for j = 1, #a do s = s + a[j] * b[j] end
    return s
end


local function unit(v)
    local n = sqrt(dotd(v, v))
    local out = {}
    for j = 1, #v do out[j] = n > 0 and v[j] / n or 0 end
    return out
end


-- Brute force in double precision over the stored rows: list of {id, score}
-- best first (cosine/dot: higher; l2: lower), ties by lower id.
local function reference(m, q, metric)
    local out = {}
    local qq = metric == "cosine" and unit(q) or q
    for i = 1, m:rows() do
        local x = stored(m, i)
        local s
        if metric == "l2" then
            s = 0
            for j = 1, #x do s = s + (x[j] - q[j]) ^ 2 end
            s = sqrt(s)
        elseif metric == "cosine" then
            s = dotd(unit(x), qq)
        else
            s = dotd(x, qq)
        end
        out[i] = { id = i, score = s }
    end
    table.sort(out, function(a, b)
        if a.score ~= b.score then
            if metric == "l2" then return a.score < b.score end
            return a.score > b.score
        end
        return a.id < b.id
    end)
    return out
end


-- ids/scores agree with the reference: same scores rank by rank (within
-- eps), and a different id only where its true score ties the reference's.
local function check_against(ids, scores, ref, k, eps)
    local byid = {}
    for _, r in ipairs(ref) do byid[r.id] = r.score end
    assert.are.equal(min(k, #ref), #ids)
    assert.are.equal(#ids, #scores)
    local seen = {}
    for r = 1, #ids do
        assert.is_nil(seen[ids[r]], "duplicate id")
        seen[ids[r]] = true
        assert(abs(scores[r] - ref[r].score) <= eps,
               ("rank %d: score %.9g, reference %.9g"):format(r, scores[r], ref[r].score))
        if ids[r] ~= ref[r].id then
            assert(abs(byid[ids[r]] - ref[r].score) <= eps,
                   ("rank %d: id %d (%.9g) instead of %d (%.9g)"):format(r, ids[r], byid[ids[r]], ref[r].id,
                                                                         ref[r].score))
        end
    end
end


-- Two result lists agree up to near-ties (eps on scores).
local function same_results(ids1, sc1, ids2, sc2, eps)
    assert.are.equal(#ids1, #ids2)
    for r = 1, #ids1 do
        assert(abs(sc1[r] - sc2[r]) <= eps, ("rank %d: %.9g vs %.9g"):format(r, sc1[r], sc2[r]))
        if ids1[r] ~= ids2[r] then
            assert(r < #ids1 and abs(sc1[r] - sc1[r + 1]) <= eps or r > 1 and abs(sc1[r] - sc1[r - 1]) <= eps,
                   ("rank %d: ids %d vs %d with no near-tie"):format(r, ids1[r], ids2[r]))
        end
    end
end


local function file_bytes(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end


-- A matrix of n random rows, built fast through an FFI buffer.
local function big_matrix(n, d, opts)
    local m = vec.matrix(d, opts or { capacity = n })
    local buf = ffi.new("float[?]", d)
    for _ = 1, n do
        for j = 0, d - 1 do buf[j] = random() * 2 - 1 end
        m:add(buf)
    end
    return m
end


-- ---------------------------------------------------------------- specs

describe("sibyl.vec matrices", function()

    it("top-k equals a brute-force reference for cosine, dot and l2 (several N, d, k)", function()
        math.randomseed(7)
        local cases = 0
        for _, c in ipairs{ { 1, 3, 1 }, { 7, 16, 3 }, { 200, 8, 10 }, { 1000, 33, 5 }, { 3000, 64, 20 },
                            { 500, 100, 500 }, { 50, 17, 80 } } do
            local n, d, k = c[1], c[2], c[3]
            for _, metric in ipairs{ "cosine", "dot", "l2" } do
                local m = vec.matrix(d, { metric = metric })
                fill(m, n, d)
                for _ = 1, 3 do
                    local q = rand_vec(d)
                    local ids, scores = m:search(q, k)
                    check_against(ids, scores, reference(m, q, metric), k, 1e-4)
                    cases = cases + 1
                end
                m:close()
            end
        end
        assert.are.equal(63, cases)
    end)

    it("breaks ties by the lower id (exact ties from integer data and duplicate rows)", function()
        math.randomseed(11)
        for _, metric in ipairs{ "dot", "l2", "cosine" } do
            local m = vec.matrix(6, { metric = metric })
            local base = {}
            for i = 1, 12 do base[i] = rand_vec(6, -2, 2) end
            fill(m, 300, 6, function(i) return base[(i * 7) % 12 + 1] end)   -- each row 25 times
            for _ = 1, 5 do
                local q = rand_vec(6, -3, 3)
                local ids, scores = m:search(q, 60)
                local ref = reference(m, q, metric)
                for r = 1, #ids do
                    if metric ~= "cosine" then
                        assert.are.equal(ref[r].id, ids[r])       -- integers: exact
                    end
                    if r > 1 and scores[r] == scores[r - 1] then
                        assert(ids[r] > ids[r - 1], "equal scores must come in id order")
                    end
                end
                -- every group of equal rows is listed in id order
                local many = m:search_many({ q, q }, 60)
                assert.are.same(ids, many[1].ids)
                assert.are.same(many[1].ids, many[2].ids)
            end
        end
    end)

    it("handles k = 0, k > rows, an empty matrix, and returns copies of rows", function()
        local m = vec.matrix(3)
        local ids, scores = m:search({ 1, 2, 3 }, 5)
        assert.are.same({}, ids)
        assert.are.same({}, scores)
        m:add{ 1, 0, 0 }; m:add{ 0, 2, 0 }
        ids = m:search({ 0, 1, 0 }, 0)
        assert.are.same({}, ids)
        ids, scores = m:search({ 0, 1, 0 }, 10)
        assert.are.same({ 2, 1 }, ids)
        assert.are.equal(1, scores[1])
        local r = m:row(2)
        r[1] = 99                              -- a copy: the matrix is unchanged
        assert.are.equal(1, m:row(2)[1])       -- cosine: normalised on insert
    end)

    it("search_many agrees with single searches (matrix or list of queries)", function()
        math.randomseed(3)
        for _, metric in ipairs{ "cosine", "dot", "l2" } do
            local m = vec.matrix(48, { metric = metric })
            fill(m, 2500, 48)
            local qs = {}
            local Q = vec.matrix(48, { metric = "dot" })
            for i = 1, 70 do qs[i] = rand_vec(48); Q:add(qs[i]) end
            local list = m:search_many(qs, 10)
            local fromm = m:search_many(Q, 10)
            assert.are.equal(70, #list)
            for i = 1, 70 do
                local ids, scores = m:search(qs[i], 10)
                same_results(ids, scores, list[i].ids, list[i].scores, 1e-4)
                assert.are.same(list[i].ids, fromm[i].ids)
                assert.are.equal(list[i].ids, list[i][1])
                assert.are.equal(list[i].scores, list[i][2])
            end
        end
    end)

    it("grows past its capacity keeping every row; ptr() is a live view", function()
        math.randomseed(5)
        local m = vec.matrix(8, { capacity = 2, metric = "dot" })
        local rows = fill(m, 1000, 8)
        assert.are.equal(1000, #m)
        assert.is_true(m:info().capacity >= 1000)
        local p = m:ptr()
        for i = 1, 1000, 37 do
            for j = 1, 8 do
                assert(abs(m:row(i)[j - 1] - rows[i][j]) < 1e-6)
                assert.are.equal(m:row(i)[j - 1], p[(i - 1) * 8 + j - 1])
            end
        end
        m:set(5, { 1, 1, 1, 1, 1, 1, 1, 1 })
        assert.are.equal(1, m:row(5)[7])
        local ids = m:search({ 1, 1, 1, 1, 1, 1, 1, 1 }, 1000)
        assert.are.equal(1000, #ids)
    end)

    it("accepts tables, FFI float and double arrays, float pointers and packed strings", function()
        local m = vec.matrix(4, { metric = "dot" })
        local fa = ffi.new("float[4]", { 1, 2, 3, 4 })
        local da = ffi.new("double[?]", 4, { 1, 2, 3, 4 })
        assert.are.equal(1, m:add{ 1, 2, 3, 4 })
        assert.are.equal(2, m:add(fa))
        assert.are.equal(3, m:add(da))
        assert.are.equal(4, m:add(ffi.cast("float *", fa)))
        assert.are.equal(5, m:add(vec.to_blob(fa)))
        for i = 1, 5 do assert.are.equal(vec.to_blob(fa), vec.to_blob(m:row(i))) end
        local blobs = m:to_blobs()
        assert.are.equal(5, #blobs)
        assert.are.equal(16, #blobs[1])
        local back = vec.from_blob(blobs[2])
        assert.are.equal(4, back[3])
        assert.are.equal(16, ffi.sizeof(back))
    end)

    it("m:normalize, info, configure and tostring", function()
        local m = vec.matrix(2, { metric = "dot" })
        m:add{ 3, 4 }; m:add{ 0, 0 }
        assert.is_false(m:info().normalized)
        assert.are.equal(m, m:normalize())
        local r = m:row(1)
        assert(abs(r[0] - 0.6) < 1e-6 and abs(r[1] - 0.8) < 1e-6)
        assert.are.equal(0, m:row(2)[0])
        local info = m:info()
        assert.is_true(info.normalized)
        assert.are.equal("dot", info.metric)
        assert.are.equal(2, info.rows)
        m:configure{ rerank = 8, threads = 1, async_threshold = 10 }
        assert.are.equal(8, m:info().rerank)
        assert.matches("sibyl.vec.matrix %(2 x 2, dot%)", tostring(m))
    end)

    it("closes idempotently; a closed matrix answers nil, err", function()
        local m = vec.matrix(3)
        m:add{ 1, 2, 3 }
        m:close(); m:close()
        assert.are.equal("sibyl.vec.matrix (closed)", tostring(m))
        assert.are.equal(0, m:rows())
        local ids, err = m:search({ 1, 2, 3 }, 1)
        assert.is_nil(ids)
        assert.are.equal("closed", err.kind)
        local id, err2 = m:add{ 1, 2, 3 }
        assert.is_nil(id)
        assert.are.equal("closed", err2.kind)
        assert.are.equal("closed", select(2, m:save(os.tmpname())).kind)
    end)
end)


describe("sibyl.vec kernels", function()

    it("generic C, AVX2 and AVX-512 kernels give the same top-k (dims with tails)", function()
        local code = [[
            local vec = require "sibyl.vec"
            math.randomseed(77)
            local out = { vec.isa }
            for _, metric in ipairs{ "cosine", "dot", "l2" } do
                local m = vec.matrix(37, { metric = metric })
                for _ = 1, 3000 do
                    local v = {}
                    for j = 1, 37 do v[j] = math.random() * 2 - 1 end
                    m:add(v)
                end
                local q = {}
                for j = 1, 37 do q[j] = math.random() * 2 - 1 end
                local ids, scores = m:search(q, 20)
                out[#out + 1] = table.concat(ids, ",") .. string.format(" %.4f", scores[1])
                m:quantize()
                out[#out + 1] = table.concat((m:search(q, 10)), ",")
                -- equal rows score bit-equal in every kernel: ties by id
                local d = vec.matrix(37, { metric = metric })
                for _ = 1, 50 do d:add(m:row(7)) ; d:add(m:row(8)) end
                out[#out + 1] = table.concat((d:search(q, 6)), ",")
            end
            print(table.concat(out, "\n"))
        ]]
        local results = {}
        for _, isa in ipairs{ "generic", "avx2", "avx512" } do
            local p = assert(io.popen("SIBYL_VEC_ISA=" .. isa .. " " .. helpers.shell_quote(helpers.sibyl_bin)
                                      .. " -e " .. helpers.shell_quote(code) .. " 2>&1"))
            local out = p:read("*a")
            p:close()
            local name, rest = out:match("^(%w+)\n(.*)$")
            assert.is_not_nil(name, out)
            results[#results + 1] = { want = isa, got = name, out = rest }
        end
        assert.are.equal("generic", results[1].got)
        for i = 2, #results do
            assert.are.equal(results[1].out, results[i].out, results[i].got .. " differs from generic")
        end
    end)
end)


describe("sibyl.vec free functions", function()

    it("dot, cosine, l2 and normalize over tables, arrays and pointers", function()
        assert.are.equal(32, vec.dot({ 1, 2, 3 }, { 4, 5, 6 }))
        assert(abs(vec.cosine({ 1, 0 }, { 1, 1 }) - sqrt(0.5)) < 1e-12)
        assert.are.equal(0, vec.cosine({ 0, 0 }, { 1, 1 }))
        assert.are.equal(5, vec.l2({ 0, 0 }, { 3, 4 }))
        local a = ffi.new("float[3]", { 1, 2, 2 })
        assert.are.equal(9, vec.dot(a, a))
        assert.are.equal(9, vec.dot(ffi.cast("float *", a), a))
        assert.are.equal(9, vec.dot(ffi.cast("float *", a), ffi.cast("float *", a), 3))
        assert.are.equal(3, vec.l2(a, { 1, 2, 5 }))
        local u, n = vec.normalize(a)
        assert.are.equal(3, n)
        assert(abs(vec.dot(u, u) - 1) < 1e-6)
        assert(abs(u[2] - 2 / 3) < 1e-7)
        -- vec.dot is the search kernel: bit-equal to a dot search's score
        local m = vec.matrix(37, { metric = "dot" })
        math.randomseed(9)
        fill(m, 50, 37)
        local q = rand_vec(37)
        local ids, scores = m:search(q, 3)
        assert.are.equal(scores[1], vec.dot(m:row(ids[1]), q))
    end)
end)


describe("sibyl.vec int8", function()

    it("re-ranks the shortlist exactly and keeps recall@10 >= 0.9", function()
        math.randomseed(21)
        local d = 64
        local m = vec.matrix(d, { quantize = "int8", capacity = 6000 })
        fill(m, 6000, d)
        assert.are.equal("int8", m:info().quantize)
        local hits, total = 0, 0
        for _ = 1, 25 do
            local q = rand_vec(d)
            local ids, scores, short = m:search(q, 10, { shortlist = true })
            assert.are.equal(40, #short)           -- k * rerank (4)
            -- exact top-10 restricted to the shortlist: vec.dot of the stored
            -- rows with the normalised query is the search's own kernel
            local qn = vec.normalize(q)
            local cand = {}
            for i, id in ipairs(short) do cand[i] = { id = id, score = vec.dot(m:row(id), qn) } end
            table.sort(cand, function(a, b)
                if a.score ~= b.score then return a.score > b.score end
                return a.id < b.id
            end)
            for r = 1, 10 do
                assert.are.equal(cand[r].id, ids[r])
                assert.are.equal(cand[r].score, scores[r])
            end
            local exact = m:search(q, 10, { exact = true })
            local set = {}
            for _, id in ipairs(exact) do set[id] = true end
            for _, id in ipairs(ids) do if set[id] then hits = hits + 1 end end
            total = total + 10
        end
        local recall = hits / total
        print(("\n    int8 recall@10 vs exact: %.3f"):format(recall))
        assert.is_true(recall >= 0.9, recall)
    end)

    it("m:quantize() on a filled matrix, l2 and dot metrics, rows added later", function()
        math.randomseed(23)
        for _, metric in ipairs{ "dot", "l2" } do
            local m = vec.matrix(32, { metric = metric })
            fill(m, 1500, 32)
            m:quantize("int8")
            fill(m, 500, 32)                      -- quantized on insert
            local agree = 0
            for _ = 1, 10 do
                local q = rand_vec(32)
                local ids, scores = m:search(q, 10, { rerank = 8 })
                local eids = m:search(q, 10, { exact = true })
                assert.are.equal(10, #ids)
                assert.are.equal(10, #scores)
                local set = {}
                for _, id in ipairs(eids) do set[id] = true end
                for _, id in ipairs(ids) do if set[id] then agree = agree + 1 end end
            end
            assert.is_true(agree >= 90, agree)
        end
    end)
end)


describe("sibyl.vec on the worker pool", function()

    it("gives the same answers as the inline path, split over workers or not", function()
        math.randomseed(31)
        local m = big_matrix(30000, 64)
        m:add(rand_vec(64))
        for _ = 1, 4 do
            local q = rand_vec(64)
            local a_ids, a_sc = m:search(q, 15, { async_threshold = math.huge })
            local b_ids, b_sc = m:search(q, 15, { async_threshold = 0 })
            local c_ids, c_sc = m:search(q, 15, { async_threshold = 0, threads = 1 })
            assert.are.same(a_ids, b_ids)
            assert.are.same(a_sc, b_sc)
            assert.are.same(a_ids, c_ids)
            assert.are.same(a_sc, c_sc)
            local qs = { q, rand_vec(64), rand_vec(64) }
            local x = m:search_many(qs, 7, { async_threshold = math.huge })
            local y = m:search_many(qs, 7, { async_threshold = 0 })
            for i = 1, 3 do assert.are.same(x[i].ids, y[i].ids) end
        end
    end)

    it("does not block the loop: a timer fires during a large search", function()
        math.randomseed(33)
        local m = big_matrix(20000, 256)
        local qs = {}
        for i = 1, 400 do qs[i] = rand_vec(256) end
        local ticks = 0
        local ticker = sibyl.spawn(function()
            while true do sibyl.sleep(0.001); ticks = ticks + 1 end
        end)
        sibyl.sleep(0.01)
        local before = ticks
        local t0 = sibyl.now()
        local res = m:search_many(qs, 10)
        local dt = sibyl.now() - t0
        local during = ticks - before
        ticker:cancel()
        assert.are.equal(400, #res)
        assert.is_true(during >= 1, ("no tick during a %.0f ms search"):format(dt * 1e3))
        -- inline (async_threshold = huge) the ticker cannot run meanwhile
        before = ticks
        m:search(qs[1], 10, { async_threshold = math.huge })
        assert.are.equal(before, ticks)
    end)

    it("survives its task being cancelled, the matrix closed or written meanwhile", function()
        math.randomseed(35)
        local m = big_matrix(40000, 64)
        local q = rand_vec(64)
        local want_ids = m:search(q, 5, { async_threshold = math.huge })
        -- cancelled while the workers scan
        for _ = 1, 5 do
            local t = sibyl.spawn(function() return m:search(q, 5, { async_threshold = 0 }) end)
            sibyl.sleep(0)
            t:cancel()
        end
        -- written while a search holds the rows: the search sees the old rows
        local t = sibyl.spawn(function() return m:search(q, 5, { async_threshold = 0 }) end)
        sibyl.sleep(0)
        m:set(want_ids[1], rand_vec(64))
        local ids = assert(t:wait())
        assert.are.same(want_ids, ids)
        -- closed while a search holds the rows
        t = sibyl.spawn(function() return m:search(q, 5, { async_threshold = 0 }) end)
        sibyl.sleep(0)
        m:close()
        ids = assert(t:wait())
        assert.are.equal(5, #ids)
    end)

    it("works outside a task and where the task cannot park (inline)", function()
        local m = vec.matrix(4, { metric = "dot", async_threshold = 0 })
        m:add{ 1, 0, 0, 0 }; m:add{ 0, 1, 0, 0 }
        local got
        string.gsub("x", "x", function() got = m:search({ 0, 1, 0, 0 }, 1) end)   -- a C boundary
        assert.are.same({ 2 }, got)
        local module_dir = (os.getenv("SIBYL_BIN") or "build/sibyl"):gsub("sibyl$", "lua")
        local path = helpers.tmpfile("package.cpath = " .. string.format("%q", module_dir .. "/?.so;")
            .. [[ .. package.cpath
            require "sibyl"
            local vec = require "sibyl.vec"
            local m = vec.matrix(3, { async_threshold = 0 })
            m:add{ 1, 0, 0 }; m:add{ 0, 0, 1 }
            local ids = m:search({ 0, 0.1, 1 }, 1)
            local f = os.tmpname()
            assert(m:save(f))
            local m2 = assert(vec.load(f))
            os.remove(f)
            print(ids[1], m2:rows(), m2:search_many({ { 1, 0, 0 } }, 1)[1].ids[1])
        ]])
        local preload = os.getenv("SIBYL_LD_PRELOAD") or ""
        local env = preload ~= "" and ("LD_PRELOAD=" .. helpers.shell_quote(preload) .. " ") or ""
        local p = assert(io.popen(env .. "luajit " .. path .. " 2>&1"))
        local out = p:read("*a")
        p:close()
        os.remove(path)
        assert.are.equal("2\t2\t1\n", out)
    end)
end)


describe("sibyl.vec save and load", function()

    it("round-trips a matrix byte for byte", function()
        math.randomseed(41)
        local m = vec.matrix(24, { metric = "l2", quantize = "int8" })
        fill(m, 777, 24)
        local p1, p2 = os.tmpname(), os.tmpname()
        assert.is_true(m:save(p1))
        local m2 = assert(vec.load(p1))
        assert.are.equal(777, m2:rows())
        assert.are.equal(24, m2:dims())
        local i1, i2 = m:info(), m2:info()
        assert.are.equal("l2", i2.metric)
        assert.are.equal("int8", i2.quantize)
        assert.are.equal(i1.normalized, i2.normalized)
        for i = 1, 777, 13 do assert.are.equal(vec.to_blob(m:row(i)), vec.to_blob(m2:row(i))) end
        assert.is_true(m2:save(p2))
        local b1, b2 = file_bytes(p1), file_bytes(p2)
        assert.are.equal(64 + 777 * 24 * 4, #b1)
        assert.are.equal("SIBYLVEC", b1:sub(1, 8))
        assert.is_true(b1 == b2)
        local q = rand_vec(24)
        local a_ids, a_sc = m:search(q, 10)
        local b_ids, b_sc = m2:search(q, 10)
        assert.are.same(a_ids, b_ids)
        assert.are.same(a_sc, b_sc)
        os.remove(p1); os.remove(p2)
    end)

    it("saves and loads large matrices on the worker pool", function()
        local m = big_matrix(20000, 32, { capacity = 10, metric = "cosine" })
        local path = os.tmpname()
        local ticks = 0
        local ticker = sibyl.spawn(function() while true do ticks = ticks + 1; sibyl.sleep(0) end end)
        assert(m:save(path))
        local m2 = assert(vec.load(path, { rerank = 6 }))
        ticker:cancel()
        assert.is_true(ticks > 0)
        assert.are.equal(20000, m2:rows())
        assert.is_true(m2:info().normalized)
        assert.are.equal(6, m2:info().rerank)
        assert.are.equal(vec.to_blob(m:row(20000)), vec.to_blob(m2:row(20000)))
        os.remove(path)
    end)

    it("reports missing, foreign and truncated files", function()
        local m, err = vec.load("/nonexistent/dir/x.vec")
        assert.is_nil(m)
        assert.are.equal("io", err.kind)
        assert.matches("/nonexistent/dir/x.vec", err.message)
        local junk = helpers.tmpfile(string.rep("not a matrix ", 20))
        m, err = vec.load(junk)
        assert.are.equal("format", err.kind)
        assert.matches("SIBYLVEC", err.message)
        local good = os.tmpname()
        local src = vec.matrix(4)
        src:add{ 1, 2, 3, 4 }; src:add{ 4, 3, 2, 1 }
        assert(src:save(good))
        local bytes = file_bytes(good)
        local cut = helpers.tmpfile(bytes:sub(1, #bytes - 4))
        m, err = vec.load(cut)
        assert.are.equal("format", err.kind)
        assert.matches("truncated", err.message)
        local _, serr = src:save("/nonexistent/dir/y.vec")
        assert.are.equal("io", serr.kind)
        os.remove(junk); os.remove(good); os.remove(cut)
    end)

    it("stores rows in SQLite and loads them back", function()
        local ok, sqlite = pcall(require, "sibyl.sqlite")
        if not ok then
            pending("sibyl.sqlite is not available")
            return
        end
        local db = assert(sqlite.open(":memory:"))
        math.randomseed(43)
        local m = vec.matrix(16, { metric = "dot" })
        fill(m, 600, 16)
        assert(vec.save_sqlite(m, db, "embeddings"))
        local n = db:row("SELECT count(*) AS n FROM embeddings").n
        assert.are.equal(600, n)
        local m2 = assert(vec.load_sqlite(db, "embeddings", { metric = "dot" }))
        assert.are.equal(600, m2:rows())
        for i = 1, 600, 7 do assert.are.equal(vec.to_blob(m:row(i)), vec.to_blob(m2:row(i))) end
        assert(vec.save_sqlite(m2, db, "embeddings"))          -- replaces
        assert.are.equal(600, db:row("SELECT count(*) AS n FROM embeddings").n)
        assert.has_error(function() vec.save_sqlite(m, db, "bad name; DROP") end)
        local _, err = vec.load_sqlite(db, "missing_table")
        assert.is_not_nil(err)
        db:close()
    end)
end)


describe("sibyl.vec.hash_embed", function()

    it("is deterministic, normalised, case-insensitive and sized by dims", function()
        local a = vec.hash_embed("The quick brown fox")
        local b = vec.hash_embed("The quick brown fox")
        assert.are.equal(384 * 4, ffi.sizeof(a))
        assert.are.equal(vec.to_blob(a), vec.to_blob(b))
        assert(abs(vec.dot(a, a) - 1) < 1e-5)
        assert.are.equal(vec.to_blob(a), vec.to_blob(vec.hash_embed("the QUICK brown fox!!")))
        local z = vec.hash_embed("  ...  ")
        assert.are.equal(0, vec.dot(z, z))
        local small = vec.hash_embed("hello", { dims = 16, ngrams = { 1 }, char_ngrams = false })
        assert.are.equal(16 * 4, ffi.sizeof(small))
        local nonzero = 0
        for j = 0, 15 do if small[j] ~= 0 then nonzero = nonzero + 1 end end
        assert.are.equal(1, nonzero)                 -- one word, one feature
        assert(abs(vec.dot(small, small) - 1) < 1e-6)
        local other = vec.hash_embed("The quick brown fox", { seed = 1 })
        assert.are_not.equal(vec.to_blob(a), vec.to_blob(other))
    end)

    it("scores similar texts higher than unrelated ones", function()
        local function sim(x, y) return vec.dot(vec.hash_embed(x), vec.hash_embed(y)) end
        local base = "How do I reset my password for the admin console?"
        local close = sim(base, "Resetting the admin console password")
        local far = sim(base, "Quarterly revenue grew eleven percent in Europe")
        assert.is_true(close > far + 0.2, ("%.3f vs %.3f"):format(close, far))
        local typo = sim("configuration", "configuraton")
        local unrelated = sim("configuration", "banana")
        assert.is_true(typo > 0.5 and unrelated < 0.2, ("%.3f vs %.3f"):format(typo, unrelated))
        -- UTF-8 letters stay inside words
        assert.is_true(sim("crème brûlée recipe", "crème brûlée") > sim("crème brûlée recipe", "cr me br l e"))
    end)

    it("hash_embed_many builds a searchable cosine matrix", function()
        local docs = { "the cat sat on the mat", "dogs chase cats in the park", "stock markets fell today",
                       "a recipe for lemon cake", "felines resting on rugs: a cat on a mat" }
        local m = vec.hash_embed_many(docs, { dims = 256 })
        assert.are.equal(5, m:rows())
        assert.are.equal(256, m:dims())
        assert.are.equal(vec.to_blob(vec.hash_embed(docs[3], { dims = 256 })), vec.to_blob(m:row(3)))
        local ids = m:search(vec.hash_embed("cat on the mat", { dims = 256 }), 2)
        assert.are.same({ 1, 5 }, ids)
    end)
end)


describe("sibyl.vec misuse", function()

    it("raises for programmer mistakes", function()
        local m = vec.matrix(4)
        assert.has_error(function() vec.matrix(0) end)
        assert.has_error(function() vec.matrix(2.5) end)
        assert.has_error(function() vec.matrix(4, "big") end)
        assert.has_error(function() vec.matrix(4, { metric = "manhattan" }) end)
        assert.has_error(function() vec.matrix(4, { quantize = "int4" }) end)
        assert.has_error(function() vec.matrix(4, { rerank = 0 }) end)
        assert.has_error(function() m:add{ 1, 2, 3 } end, "m:add: the vector has 3 numbers, expected 4")
        assert.has_error(function() m:add{ 1, 2, "x", 4 } end)
        assert.has_error(function() m:add{ 1, 0 / 0, 3, 4 } end)
        assert.has_error(function() m:add{ 1, math.huge, 3, 4 } end)
        assert.has_error(function() m:add(ffi.new("float[5]")) end)
        assert.has_error(function() m:add(ffi.new("int[4]")) end)
        assert.has_error(function() m:add("abc") end)
        assert.has_error(function() m:add(42) end)
        m:add{ 1, 2, 3, 4 }
        assert.has_error(function() m:search({ 1, 2, 3 }, 1) end)
        assert.has_error(function() m:search({ 1, 2, 3, 4 }, -1) end)
        assert.has_error(function() m:search({ 1, 2, 3, 4 }, 1.5) end)
        assert.has_error(function() m:search({ 1, 2, 3, 4 }, 1, { metric = "hamming" }) end)
        assert.has_error(function() m:search({ 1, 2, 3, 4 }, 1, { kernel = "gpu" }) end)
        assert.has_error(function() m:search({ 1, 2, 3, 4 }, 1, "fast") end)
        assert.has_error(function() m:search_many({ { 1, 2, 3, 4 }, { 1 } }, 1) end)
        assert.has_error(function() m:search_many(vec.matrix(3), 1) end)
        assert.has_error(function() m:search_many("x", 1) end)
        assert.has_error(function() m:row(0) end)
        assert.has_error(function() m:row(2) end)
        assert.has_error(function() m:set(2, { 1, 2, 3, 4 }) end)
        assert.has_error(function() m.search(nil, { 1, 2, 3, 4 }, 1) end)
        assert.has_error(function() m.search({}, { 1, 2, 3, 4 }, 1) end)
        assert.has_error(function() vec.dot({ 1, 2 }, { 1, 2, 3 }) end)
        assert.has_error(function() vec.dot(ffi.new("float *"), ffi.new("float *")) end)
        assert.has_error(function() vec.hash_embed(42) end)
        assert.has_error(function() vec.hash_embed("x", { dims = 0 }) end)
        assert.has_error(function() vec.hash_embed("x", { ngrams = { 9 } }) end)
        assert.has_error(function() vec.from_blob("abc") end)
        assert.has_error(function() vec.load(42) end)
        local ok, msg = pcall(function() m:add{ 1, 2 } end)
        assert.is_false(ok)
        assert.matches("17%-vec_spec.lua:%d+: m:add: the vector has 2 numbers, expected 4", msg)
    end)
end)
