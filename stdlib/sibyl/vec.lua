-- sibyl.vec -- float32 matrices with brute-force top-k search (cosine, dot,
-- l2), int8 shortlists re-ranked exactly, save/load, SQLite BLOB helpers and
-- the offline hashing embedder. The work is in C (runtime/src/vec*.c,
-- `sibyl.vec.core`); this layer checks arguments and turns Lua tables, FFI
-- float arrays and packed strings into the floats C reads. Reference:
-- doc/vec.md.
--
--   local vec = require "sibyl.vec"
--   local m = vec.matrix(384)                        -- cosine: rows normalised on insert
--   m:add(vec.hash_embed("the cat sat on the mat"))  -- -> 1 (row ids are 1-based)
--   local ids, scores = m:search(vec.hash_embed("a cat on a mat"), 5)
--
-- A search over rows x dims x queries >= async_threshold runs on the worker
-- pool and parks the task (split over `threads` workers); smaller ones, and
-- any outside a task, run inline.

local core = require "sibyl.vec.core"
local sibyl = require "sibyl"
local ffi = require "ffi"
local bit = require "bit"

local type, error, tostring, tonumber, ipairs, pairs, pcall, setmetatable, getmetatable =
    type, error, tostring, tonumber, ipairs, pairs, pcall, setmetatable, getmetatable
local bor, lshift = bit.bor, bit.lshift
local format, concat = string.format, table.concat
local ffi_new, ffi_cast, ffi_sizeof, ffi_typeof, ffi_string, ffi_copy =
    ffi.new, ffi.cast, ffi.sizeof, ffi.typeof, ffi.string, ffi.copy

local _M = { _VERSION = "0.1.0" }

-- The leading fields of the C struct (runtime/src/vec.c, sb_vmat): keep in step.
if not pcall(ffi_typeof, "sb_vmat") then
    ffi.cdef [[
typedef struct sb_vmat { void *st; size_t rows, dims; int metric, normalized, quant; } sb_vmat;
typedef struct { uint32_t dims, word_orders, char_orders; float word_weight, char_weight;
                 uint32_t max_word; uint64_t seed; } sb_hash_opts;
]]
end

local F = core.ffi
local c_add = ffi_cast("double (*)(sb_vmat *, const float *, size_t)", F.add)
local c_set = ffi_cast("int (*)(sb_vmat *, size_t, const float *, size_t)", F.set)
local c_row = ffi_cast("int (*)(sb_vmat *, size_t, float *)", F.row)
local c_ptr = ffi_cast("float *(*)(sb_vmat *)", F.ptr)
local c_dot = ffi_cast("double (*)(const float *, const float *, size_t)", F.dot)
local c_cosine = ffi_cast("double (*)(const float *, const float *, size_t)", F.cosine)
local c_l2 = ffi_cast("double (*)(const float *, const float *, size_t)", F.l2)
local c_normalize = ffi_cast("double (*)(float *, const float *, size_t)", F.normalize)
local c_hash = ffi_cast("size_t (*)(const char *, size_t, const sb_hash_opts *, float *)", F.hash_embed)

local floats_t = ffi_typeof("float[?]")
local cfloat_p = ffi_typeof("const float *")
local vmat_p = ffi_typeof("sb_vmat *")
local mt = core.matrix_mt

-- Error codes of the C entry points (vec.c, VE_*).
local VE_CLOSED, VE_FINITE, VE_FULL, VE_RANGE = -1, -3, -5, -6   -- -4: out of memory

--- Defaults for new matrices and searches (change them before creating matrices).
_M.defaults = {
    capacity = 16,              -- rows allocated up front; the matrix grows by doubling
    metric = "cosine",          -- "cosine" (rows normalised on insert) | "dot" | "l2"
    async_threshold = core.DEFAULT_ASYNC,   -- rows x dims x queries; 20,000 x 384
    rerank = 4,                 -- int8: candidates re-ranked exactly = k * rerank
    threads = core.ncpu,        -- parts a background search is split into
}

--- Defaults of hash_embed.
_M.hash_defaults = {
    dims = 384,
    ngrams = { 1, 2 },          -- word n-gram orders
    char_ngrams = { 3, 4, 5 },  -- character n-gram orders (inside words, with < > markers)
    word_weight = 1.0,
    char_weight = 0.5,
    max_word = 64,              -- character n-grams look at a word's first 64 bytes
    seed = 0,
}

--- The SIMD kernel in use: "avx512", "avx2" or "generic".
_M.isa = core.isa
_M.MAX_DIMS = core.MAX_DIMS

local METRICS = { cosine = true, dot = true, l2 = true }


-- ------------------------------------------------------ vectors in

local scratch = { n = { 0, 0 }, buf = {} }

local function scratch_for(slot, d)
    if scratch.n[slot] < d then
        scratch.buf[slot] = ffi_new(floats_t, d)
        scratch.n[slot] = d
    end
    return scratch.buf[slot]
end


-- ctype id -> "f" (float array), "fp" (float pointer), "d", "dp" (double), false.
local KIND = {}

local function ckind(v)
    local ct = ffi_typeof(v)
    local id = tonumber(ct)
    local k = KIND[id]
    if k == nil then
        local s = tostring(ct):match("^ctype<(.*)>$") or ""
        s = s:gsub("^const ", "")
        if s == "float *" then k = "fp"
        elseif s:match("^float %[[^%]]*%]$") then k = "f"
        elseif s == "double *" then k = "dp"
        elseif s:match("^double %[[^%]]*%]$") then k = "d"
        else k = false end
        KIND[id] = k
    end
    return k
end


local function not_a_vector(v, who, level)
    local what = type(v) == "cdata" and tostring(ffi_typeof(v)) or type(v)
    error(format("%s: expected a vector (a Lua table of numbers, an FFI float array or a string of "
                 .. "packed float32), got %s", who, what), level + 1)
end


-- A `const float *` over v's d floats, valid while v lives. Tables and
-- doubles are copied into scratch slot `slot` (1 or 2). Raises on misuse.
local function as_floats(v, d, who, slot, level)
    local t = type(v)
    if t == "cdata" then
        local k = ckind(v)
        if k == "f" then
            local n = ffi_sizeof(v)
            if n ~= d * 4 then
                error(format("%s: the array has %d floats, expected %d", who, (n or 0) / 4, d), level + 1)
            end
            return v
        elseif k == "fp" then
            return v
        elseif k == "d" or k == "dp" then
            if k == "d" and ffi_sizeof(v) ~= d * 8 then
                error(format("%s: the array has %d doubles, expected %d", who, ffi_sizeof(v) / 8, d), level + 1)
            end
            local s = scratch_for(slot, d)
            for i = 0, d - 1 do s[i] = v[i] end
            return s
        end
        not_a_vector(v, who, level + 1)
    elseif t == "table" then
        local n = #v
        if n ~= d then
            error(format("%s: the vector has %d numbers, expected %d", who, n, d), level + 1)
        end
        local s = scratch_for(slot, d)
        for i = 1, d do
            local x = v[i]
            if type(x) ~= "number" then
                error(format("%s: element %d is a %s, expected a number", who, i, type(x)), level + 1)
            end
            s[i - 1] = x
        end
        return s
    elseif t == "string" then
        if #v ~= d * 4 then
            error(format("%s: the string has %d bytes, expected %d (%d packed float32)", who, #v, d * 4, d),
                  level + 1)
        end
        return ffi_cast(cfloat_p, v)
    end
    not_a_vector(v, who, level + 1)
end


-- The packed bytes of a vector (what the C search reads).
local function packed(v, d, who, level)
    if type(v) == "string" then
        if #v ~= d * 4 then
            error(format("%s: the string has %d bytes, expected %d (%d packed float32)", who, #v, d * 4, d),
                  level + 1)
        end
        return v
    end
    return ffi_string(as_floats(v, d, who, 1, level + 1), d * 4)
end


-- Number of elements of v when it can be told (not for bare pointers).
local function dims_of(v)
    local t = type(v)
    if t == "table" then return #v end
    if t == "string" then return #v % 4 == 0 and #v / 4 or nil end
    if t == "cdata" then
        local k = ckind(v)
        if k == "f" then return ffi_sizeof(v) / 4 end
        if k == "d" then return ffi_sizeof(v) / 8 end
    end
    return nil
end


local function pair_dims(a, b, d, who)
    if d ~= nil then
        if type(d) ~= "number" or d < 1 or d % 1 ~= 0 then error(who .. ": d must be an integer >= 1", 3) end
        return d
    end
    local da, db = dims_of(a), dims_of(b)
    if da and db and da ~= db then
        error(format("%s: the vectors have %d and %d elements", who, da, db), 3)
    end
    d = da or db
    if not d or d < 1 then
        error(who .. ": cannot tell the vectors' length (pointers, or empty); pass d", 3)
    end
    return d
end


-- ------------------------------------------------------------ matrices

-- FFI views of matrix structs, by userdata (weak: they go with the matrix).
local P = setmetatable({}, { __mode = "k" })

local function mp(m, who, level)
    local p = P[m]
    if p == nil then
        if getmetatable(m) ~= mt then
            error(format("%s: expected a sibyl.vec.matrix, got %s (call it as m:%s(...))", who, type(m),
                         who:match("[%w_]+$") or "method"), level + 1)
        end
        p = ffi_cast(vmat_p, core.ptr(m))
        P[m] = p
    end
    return p
end


local function closed_err(who)
    return nil, sibyl.error("closed", who .. ": the matrix is closed; create a new one or vec.load() it again")
end


local function check_metric(metric, who, level)
    if metric ~= nil and not METRICS[metric] then
        error(format('%s: metric must be "cosine", "dot" or "l2", got %s', who, tostring(metric)), level + 1)
    end
end


local function check_int(v, name, lo, hi, who, level)
    if v ~= nil and (type(v) ~= "number" or v % 1 ~= 0 or v < lo or v > hi) then
        error(format("%s: %s must be an integer from %d to %d, got %s", who, name, lo, hi, tostring(v)),
              level + 1)
    end
end


local function check_knobs(opts, who, level)
    check_int(opts.rerank, "rerank", 1, 1000, who, level + 1)
    check_int(opts.threads, "threads", 1, 16, who, level + 1)
    local a = opts.async_threshold
    if a ~= nil and (type(a) ~= "number" or a < 0) then
        error(format("%s: async_threshold must be a number >= 0 (rows x dims x queries), got %s", who,
                     tostring(a)), level + 1)
    end
end


local function check_search(k, opts, who)
    if type(k) ~= "number" or k < 0 or k % 1 ~= 0 then
        error(format("%s: k must be an integer >= 0, got %s", who, tostring(k)), 3)
    end
    if opts == nil then return end
    if type(opts) ~= "table" then error(who .. ": opts must be a table", 3) end
    check_metric(opts.metric, who, 3)
    if opts.kernel ~= nil and opts.kernel ~= "auto" and opts.kernel ~= "blas" then
        error(format('%s: kernel must be "auto" or "blas", got %s', who, tostring(opts.kernel)), 3)
    end
    check_knobs(opts, who, 3)
end


--- vec.matrix(dims [, capacity | opts]) -> matrix. opts: capacity (16),
-- metric ("cosine"), quantize ("int8" or nil), async_threshold, rerank,
-- threads (see vec.defaults).
function _M.matrix(dims, opts)
    if type(dims) ~= "number" or dims < 1 or dims % 1 ~= 0 or dims > core.MAX_DIMS then
        error(format("vec.matrix: dims must be an integer from 1 to %d, got %s", core.MAX_DIMS, tostring(dims)), 2)
    end
    local cap
    if type(opts) == "number" then
        cap, opts = opts, nil
    elseif opts ~= nil and type(opts) ~= "table" then
        error("vec.matrix: the second argument is a capacity (number of rows) or an options table", 2)
    end
    opts = opts or {}
    local D = _M.defaults
    cap = cap or opts.capacity or D.capacity
    if type(cap) ~= "number" or cap < 0 then
        error("vec.matrix: capacity must be a number of rows >= 0, got " .. tostring(cap), 2)
    end
    check_metric(opts.metric, "vec.matrix", 2)
    local q = opts.quantize
    if q ~= nil and q ~= false and q ~= "int8" and q ~= "none" then
        error('vec.matrix: quantize must be "int8" or nil, got ' .. tostring(q), 2)
    end
    check_knobs(opts, "vec.matrix", 2)
    return core.new{
        dims = dims, capacity = cap, metric = opts.metric or D.metric, quantize = q == "int8",
        async_threshold = opts.async_threshold or D.async_threshold,
        rerank = opts.rerank or D.rerank, threads = opts.threads or D.threads,
    }
end


--- m:add(v) -> id (1-based) | nil, err (closed, out of memory). v: a Lua
-- table of dims numbers, an FFI float array (or float*: dims floats are
-- read), or a string of dims packed float32. Raises for a wrong length and
-- for NaN or infinite values.
function mt.add(m, v)
    local p = mp(m, "m:add", 2)
    local d = tonumber(p.dims)
    local r = c_add(p, as_floats(v, d, "m:add", 1, 2), d)
    if r > 0 then return r end
    if r == VE_CLOSED then return closed_err("m:add") end
    if r == VE_FINITE then error("m:add: the vector holds NaN or infinity; vectors must be finite", 2) end
    if r == VE_FULL then return nil, sibyl.error("full", "m:add: the matrix holds the most rows it can (2^32 - 2)") end
    return nil, sibyl.error("nomem", format("m:add: out of memory growing to %d rows of %d dims", tonumber(p.rows) + 1, d))
end


--- m:set(id, v): replace row id (1-based). Raises for an id out of range.
function mt.set(m, id, v)
    local p = mp(m, "m:set", 2)
    local d = tonumber(p.dims)
    if type(id) ~= "number" or id % 1 ~= 0 then error("m:set: id must be an integer", 2) end
    local r = c_set(p, id, as_floats(v, d, "m:set", 1, 2), d)
    if r == 0 then return true end
    if r == VE_CLOSED then return closed_err("m:set") end
    if r == VE_RANGE then
        error(format("m:set: id %d is out of range (the matrix has %d rows)", id, tonumber(p.rows)), 2)
    end
    if r == VE_FINITE then error("m:set: the vector holds NaN or infinity; vectors must be finite", 2) end
    return nil, sibyl.error("nomem", "m:set: out of memory (copying rows a background search holds)")
end


--- m:row(id) -> a copy of row id as an FFI float[dims] array.
function mt.row(m, id)
    local p = mp(m, "m:row", 2)
    if type(id) ~= "number" or id % 1 ~= 0 then error("m:row: id must be an integer", 2) end
    local out = ffi_new(floats_t, tonumber(p.dims))
    local r = c_row(p, id, out)
    if r == 0 then return out end
    if r == VE_CLOSED then return closed_err("m:row") end
    error(format("m:row: id %d is out of range (the matrix has %d rows)", id, tonumber(p.rows)), 2)
end


--- m:ptr() -> float* over rows x dims floats (row i at (i-1) * dims), no
-- copy. Valid until the matrix grows past its capacity, is written while a
-- background search holds it (set, normalize, quantize copy it), or closes.
-- Treat it as read-only: writes bypass the norms and int8 codes.
function mt.ptr(m)
    local p = mp(m, "m:ptr", 2)
    local f = c_ptr(p)
    if f == nil then return closed_err("m:ptr") end
    return f
end


--- Number of rows (0 once closed); also #m.
function mt.rows(m)
    return tonumber(mp(m, "m:rows", 2).rows)
end
mt.__len = mt.rows


--- Dimensions of each row.
function mt.dims(m)
    return tonumber(mp(m, "m:dims", 2).dims)
end


--- m:search(q, k [, opts]) -> ids, scores (Lua arrays, best first) | nil, err.
-- Scores: cosine similarity, dot product, or l2 distance (ascending).
-- opts: metric (the matrix's), exact (false: skip the int8 shortlist),
-- rerank, async_threshold, threads, shortlist (true: a third result, the
-- int8 candidates), kernel ("auto" | "blas").
function mt.search(m, q, k, opts)
    local p = mp(m, "m:search", 2)
    check_search(k, opts, "m:search")
    return m:_search(packed(q, tonumber(p.dims), "m:search", 2), k, opts)
end


--- m:search_many(Q, k [, opts]) -> { {ids=, scores=}, ... } (also [1], [2]),
-- one per query, in order. Q: a matrix or a list of vectors. cblas_sgemm in
-- blocks; scans the float rows even in int8 mode.
function mt.search_many(m, Q, k, opts)
    local p = mp(m, "m:search_many", 2)
    check_search(k, opts, "m:search_many")
    if getmetatable(Q) == mt then return m:_search_many(Q, k, opts) end
    if type(Q) ~= "table" then
        error("m:search_many: Q must be a matrix or a list of vectors, got " .. type(Q), 2)
    end
    local d, parts = tonumber(p.dims), {}
    for i = 1, #Q do parts[i] = packed(Q[i], d, "m:search_many", 2) end
    return m:_search_many(concat(parts), k, opts)
end


--- m:configure{async_threshold=, rerank=, threads=} -> m: change the knobs.
function mt.configure(m, opts)
    mp(m, "m:configure", 2)
    if type(opts) ~= "table" then error("m:configure: opts must be a table", 2) end
    check_knobs(opts, "m:configure", 2)
    return m:_config(opts)
end


local saved_quantize = mt.quantize

--- m:quantize(["int8"]) -> m: keep int8 codes of every row and search them first.
function mt.quantize(m, mode)
    mp(m, "m:quantize", 2)
    if mode ~= nil and mode ~= "int8" then error('m:quantize: the only mode is "int8"', 2) end
    return saved_quantize(m)
end


-- ------------------------------------------------------ free functions

--- vec.dot(a, b [, d]): the same float kernel as a search (bit-equal scores).
function _M.dot(a, b, d)
    d = pair_dims(a, b, d, "vec.dot")
    return c_dot(as_floats(a, d, "vec.dot", 1, 2), as_floats(b, d, "vec.dot", 2, 2), d)
end


--- vec.cosine(a, b [, d]): in double precision; 0 when either is zero.
function _M.cosine(a, b, d)
    d = pair_dims(a, b, d, "vec.cosine")
    return c_cosine(as_floats(a, d, "vec.cosine", 1, 2), as_floats(b, d, "vec.cosine", 2, 2), d)
end


--- vec.l2(a, b [, d]): Euclidean distance, in double precision.
function _M.l2(a, b, d)
    d = pair_dims(a, b, d, "vec.l2")
    return c_l2(as_floats(a, d, "vec.l2", 1, 2), as_floats(b, d, "vec.l2", 2, 2), d)
end


--- vec.normalize(v [, d]) -> a unit-length copy (FFI float[d]), the original norm.
function _M.normalize(v, d)
    d = d or dims_of(v)
    if type(d) ~= "number" or d < 1 then error("vec.normalize: cannot tell the vector's length; pass d", 2) end
    local out = ffi_new(floats_t, d)
    local n = c_normalize(out, as_floats(v, d, "vec.normalize", 1, 2), d)
    return out, n
end


--- vec.to_blob(v [, d]) -> string of d packed float32 (for a SQLite BLOB).
function _M.to_blob(v, d)
    d = d or dims_of(v)
    if type(d) ~= "number" or d < 1 then error("vec.to_blob: cannot tell the vector's length; pass d", 2) end
    return packed(v, d, "vec.to_blob", 2)
end


--- vec.from_blob(s) -> FFI float[#s / 4] (a copy).
function _M.from_blob(s)
    if type(s) ~= "string" or #s == 0 or #s % 4 ~= 0 then
        error("vec.from_blob: expected a non-empty string of packed float32 (length a multiple of 4)", 2)
    end
    local out = ffi_new(floats_t, #s / 4)
    ffi_copy(out, s, #s)
    return out
end


local function apply_knobs(m, opts)
    local D = _M.defaults
    return m:_config{
        async_threshold = opts.async_threshold or D.async_threshold,
        rerank = opts.rerank or D.rerank, threads = opts.threads or D.threads,
    }
end


--- vec.load(path [, opts]) -> matrix | nil, err (kind "io" or "format").
-- On the worker pool inside a task. opts: async_threshold, rerank, threads.
function _M.load(path, opts)
    if type(path) ~= "string" then error("vec.load: path must be a string", 2) end
    if opts ~= nil then
        if type(opts) ~= "table" then error("vec.load: opts must be a table", 2) end
        check_knobs(opts, "vec.load", 2)
    end
    local m, err = core.load(path)
    if not m then return nil, err end
    return apply_knobs(m, opts or {})
end


-- ----------------------------------------------------- hashing embedder

local function orders_mask(list, max, name)
    if list == nil or list == false then return 0 end
    if type(list) ~= "table" then error(format("vec.hash_embed: %s must be a list of integers", name), 5) end
    local mask = 0
    for _, n in ipairs(list) do
        if type(n) ~= "number" or n % 1 ~= 0 or n < 1 or n > max then
            error(format("vec.hash_embed: %s: orders are integers from 1 to %d, got %s", name, max, tostring(n)), 5)
        end
        mask = bor(mask, lshift(1, n))
    end
    return mask
end


local function hash_opts(opts)
    local H = _M.hash_defaults
    local o = ffi_new("sb_hash_opts")
    local dims = opts.dims or H.dims
    if type(dims) ~= "number" or dims < 1 or dims % 1 ~= 0 or dims > core.MAX_DIMS then
        error(format("vec.hash_embed: dims must be an integer from 1 to %d", core.MAX_DIMS), 4)
    end
    o.dims = dims
    local ng = opts.ngrams
    if ng == nil then ng = H.ngrams end
    local cg = opts.char_ngrams
    if cg == nil then cg = H.char_ngrams end
    o.word_orders = orders_mask(ng, 8, "ngrams")
    o.char_orders = orders_mask(cg, 16, "char_ngrams")
    o.word_weight = opts.word_weight or H.word_weight
    o.char_weight = opts.char_weight or H.char_weight
    local mw = opts.max_word or H.max_word
    if type(mw) ~= "number" or mw < 1 or mw > 1024 then error("vec.hash_embed: max_word must be from 1 to 1024", 4) end
    o.max_word = mw
    o.seed = opts.seed or H.seed
    return o, dims
end


local default_hash = { opts = nil, dims = nil, of = nil }

local function get_hash_opts(opts, level)
    if opts == nil then
        -- Rebuilt when vec.hash_defaults is replaced.
        if default_hash.of ~= _M.hash_defaults then
            default_hash.opts, default_hash.dims = hash_opts({})
            default_hash.of = _M.hash_defaults
        end
        return default_hash.opts, default_hash.dims
    end
    if type(opts) ~= "table" then error("vec.hash_embed: opts must be a table", level + 1) end
    local o, dims = hash_opts(opts)     -- not a tail call: hash_opts raises at a fixed level
    return o, dims
end


--- vec.hash_embed(text [, opts]) -> FFI float[dims], L2-normalised (all
-- zeros for text without words). opts: see vec.hash_defaults.
function _M.hash_embed(text, opts)
    if type(text) ~= "string" then error("vec.hash_embed: text must be a string, got " .. type(text), 2) end
    local o, dims = get_hash_opts(opts, 2)
    local out = ffi_new(floats_t, dims)
    c_hash(text, #text, o, out)
    return out
end


--- vec.hash_embed_many(texts [, opts]) -> a cosine matrix, row i = text i.
function _M.hash_embed_many(texts, opts)
    if type(texts) ~= "table" then error("vec.hash_embed_many: texts must be a list of strings", 2) end
    local o, dims = get_hash_opts(opts, 2)
    local m = _M.matrix(dims, { capacity = #texts, metric = "cosine" })
    local p = mp(m, "vec.hash_embed_many", 2)
    local buf = ffi_new(floats_t, dims)
    for i = 1, #texts do
        local t = texts[i]
        if type(t) ~= "string" then
            error(format("vec.hash_embed_many: texts[%d] is a %s, expected a string", i, type(t)), 2)
        end
        c_hash(t, #t, o, buf)
        if c_add(p, buf, dims) < 0 then
            m:close()
            return nil, sibyl.error("nomem", "vec.hash_embed_many: out of memory")
        end
    end
    return m
end


-- ------------------------------------------------------------- OpenBLAS

--- vec.blas_threads([n]) -> OpenBLAS's thread count (process-wide). Sibyl
-- sets 1 at load and splits large searches over the worker pool instead.
_M.blas_threads = core.blas_threads


-- ---------------------------------------------------------------- SQLite

local function check_ident(name, who)
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
        error(who .. ": table must be a plain SQL identifier (letters, digits, _)", 3)
    end
end


--- vec.save_sqlite(m, db, table) -> true | nil, err: replaces the rows of
-- `table` (id INTEGER PRIMARY KEY, vec BLOB), created if missing, with m's
-- rows (row i -> id i), in one transaction. db: a sibyl.sqlite database.
function _M.save_sqlite(m, db, tbl)
    local p = mp(m, "vec.save_sqlite", 2)
    check_ident(tbl, "vec.save_sqlite")
    if p.st == nil then return closed_err("vec.save_sqlite") end
    local sqlite = require "sibyl.sqlite"
    local blobs = m:to_blobs()
    local BATCH = 256                   -- rows per INSERT: fewer trips to the worker
    local function insert_sql(n)
        local values = {}
        for i = 1, n do values[i] = "(?, ?)" end
        return format("INSERT INTO %s(id, vec) VALUES %s", tbl, concat(values, ", "))
    end
    local full = insert_sql(BATCH)
    return db:transaction(function(tx)
        local ok, err = tx:exec(format("CREATE TABLE IF NOT EXISTS %s(id INTEGER PRIMARY KEY, vec BLOB NOT NULL)", tbl))
        if not ok then return nil, err end
        ok, err = tx:exec(format("DELETE FROM %s", tbl))
        if not ok then return nil, err end
        for first = 1, #blobs, BATCH do
            local n = math.min(BATCH, #blobs - first + 1)
            local params = {}
            for i = 0, n - 1 do
                params[2 * i + 1] = first + i
                params[2 * i + 2] = sqlite.blob(blobs[first + i])
            end
            local r, rerr = tx:run(n == BATCH and full or insert_sql(n), params)
            if not r then return nil, rerr end
        end
        return true
    end)
end


--- vec.load_sqlite(db, table [, opts]) -> matrix | nil, err: the rows of
-- `table` in id order; opts as vec.matrix (metric, quantize, ...).
function _M.load_sqlite(db, tbl, opts)
    check_ident(tbl, "vec.load_sqlite")
    if opts ~= nil and type(opts) ~= "table" then error("vec.load_sqlite: opts must be a table", 2) end
    local count, err = db:row(format("SELECT count(*) AS n, max(length(vec)) AS len FROM %s", tbl))
    if not count then return nil, err end
    if count.n == 0 then
        return nil, sibyl.error("empty", format("vec.load_sqlite: table %s has no rows to tell the dims from", tbl))
    end
    local d = count.len / 4
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.capacity = count.n
    local m = _M.matrix(d, o)
    local rows, cur = db:each(format("SELECT id, vec FROM %s ORDER BY id", tbl))
    if not rows then
        m:close()
        return nil, cur
    end
    for row in rows do
        local b = row.vec
        if type(b) ~= "string" or #b ~= d * 4 then
            cur:close()
            m:close()
            return nil, sibyl.error("format", format("vec.load_sqlite: row id %s of %s is not %d packed float32",
                                                     tostring(row.id), tbl, d))
        end
        m:add(b)
    end
    return m
end


return _M
