/*
 * vec.c -- `sibyl.vec.core`: float32 matrices and brute-force top-k search
 * behind `sibyl.vec` (stdlib/sibyl/vec.lua). Reference: doc/vec.md.
 * This file: storage, the FFI entry points and the Lua door; searches are
 * in vec_search.c, save/load in vec_io.c, kernels in vec_kernel.c.
 *
 *   - A matrix is a userdata (sibyl.vec.matrix) holding rows x dims floats
 *     in one 64-byte aligned block, the squared norm of every row, and with
 *     int8 mode one int8 code per value plus one scale per row. Rows of a
 *     cosine matrix are normalised on insert.
 *   - One query: a SIMD kernel (vec_kernel.c) scores blocks of rows into an
 *     L1-sized buffer and a k-sized heap keeps the best (no full sort).
 *     Several queries: cblas_sgemm over blocks of rows, one heap per query.
 *   - int8: the codes are scanned for k * rerank candidates, which are then
 *     scored exactly against the float rows (kept in memory).
 *   - A search whose rows x dims x queries reaches async_threshold runs on
 *     the worker pool, split into one part per thread, while the task is
 *     parked; smaller ones, and any outside a task, run inline.
 *
 * Storage is reference counted: a background search holds the store it
 * started on, so the matrix may be grown, written or closed meanwhile.
 * Appends that fit the capacity write past the rows being searched; a write
 * to existing rows while a search runs copies the store first (copy on
 * write). Counts change on the loop thread only.
 *
 * The FFI door: add/set/row/ptr and the free functions are plain C
 * functions whose addresses Lua casts (core.ffi), as in cache.c.
 *
 * OpenBLAS: set to one thread when this module loads. Large searches are
 * split over the worker pool instead; measured on the 2-core EPYC (1M x 384,
 * 64 queries), two workers each running single-threaded sgemm on half the
 * rows beat one call with OpenBLAS's own two threads (387 vs 521 ms; see
 * doc/vec.md, Performance), and OpenBLAS's spinning threads no longer
 * compete with the event loop. core.blas_threads(n) changes it (process-wide).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sb_blas.h"

#include "sb_vecmat.h"


const char *const sb_vec_metric_names[] = {"cosine", "dot", "l2", NULL};

static char mat_mt_key;

/* ------------------------------------------------------------- storage */

void sb_vstore_release(sb_vstore *s)
{
    if (s == NULL || --s->refs > 0)
        return;
    free(s->data);
    free(s->norm2);
    free(s->codes);
    free(s->scales);
    free(s);
}

/*
 * Row storage: 64-byte aligned; blocks of 4 MiB and more are rounded to 2 MiB
 * and asked to be backed by transparent huge pages (fewer TLB misses while
 * streaming: a 1M x 384 scan measured ~8% faster on the 2-core EPYC).
 */
static void *alloc_rows(size_t bytes)
{
    return sb_alloc_big(bytes, (size_t)4 << 20);
}

/* A store of cap rows (one reference), or NULL. */
sb_vstore *sb_vstore_new(size_t dims, size_t cap, int quant)
{
    sb_vstore *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->refs = 1;
    s->dims = dims;
    s->cap = cap;
    s->data = alloc_rows(cap * dims * sizeof(float));
    s->norm2 = malloc((cap ? cap : 1) * sizeof(float));
    if (quant) {
        s->codes = alloc_rows(cap * dims);
        s->scales = malloc((cap ? cap : 1) * sizeof(float));
    }
    if (s->data == NULL || s->norm2 == NULL || (quant && (s->codes == NULL || s->scales == NULL))) {
        s->refs = 1;
        sb_vstore_release(s);
        return NULL;
    }
    return s;
}

/* Move the matrix to a new store of cap rows holding the same rows (growth,
 * or copy on write). Returns 0 or -1 (out of memory; nothing changed). */
static int mat_rebuild(sb_vmat *m, size_t cap)
{
    sb_vstore *o = m->st, *s = sb_vstore_new(m->dims, cap, o->codes != NULL);
    if (s == NULL)
        return -1;
    size_t n = m->rows, d = m->dims;
    memcpy(s->data, o->data, n * d * sizeof(float));
    memcpy(s->norm2, o->norm2, n * sizeof(float));
    if (o->codes) {
        memcpy(s->codes, o->codes, n * d);
        memcpy(s->scales, o->scales, n * sizeof(float));
    }
    sb_vstore_release(o);
    m->st = s;
    return 0;
}

static int mat_reserve(sb_vmat *m, size_t need)
{
    if (need <= m->st->cap)
        return 0;
    size_t cap = m->st->cap < 16 ? 16 : m->st->cap;
    while (cap < need)
        cap *= 2;
    if (cap > VEC_MAX_ROWS)
        cap = VEC_MAX_ROWS;
    return mat_rebuild(m, cap);
}

/* Before writing rows a background search may be reading. */
static int mat_unshare(sb_vmat *m)
{
    return m->st->refs > 1 ? mat_rebuild(m, m->st->cap) : 0;
}

static double norm_d(const float *x, size_t d)
{
    double s = 0;
    for (size_t j = 0; j < d; j++)
        s += (double)x[j] * x[j];
    return sqrt(s);
}

void sb_vec_normalize_into(float *out, const float *x, size_t d)
{
    double n = norm_d(x, d);
    float inv = n > 0 ? (float)(1.0 / n) : 0.0f;
    for (size_t j = 0; j < d; j++)
        out[j] = x[j] * inv;
}

/* Recompute what is derived from row i: its norm and its int8 code. */
static void row_derive(sb_vmat *m, size_t i)
{
    sb_vstore *s = m->st;
    const float *x = s->data + i * m->dims;
    s->norm2[i] = sb_vec_norm2(x, m->dims);
    if (s->codes)
        s->scales[i] = sb_vec_quantize(x, m->dims, s->codes + i * m->dims);
}

static void row_write(sb_vmat *m, size_t i, const float *v)
{
    float *x = m->st->data + i * m->dims;
    if (m->metric == M_COSINE)
        sb_vec_normalize_into(x, v, m->dims);
    else {
        memcpy(x, v, m->dims * sizeof(float));
        m->normalized = 0;
    }
    row_derive(m, i);
}

static int all_finite(const float *v, size_t n)
{
    for (size_t j = 0; j < n; j++)
        if (!isfinite(v[j]))
            return 0;
    return 1;
}

/* ---------------------------------------------------------- FFI entries */

/* Error codes shared with vec.lua. */
enum { VE_CLOSED = -1, VE_DIMS = -2, VE_FINITE = -3, VE_NOMEM = -4, VE_FULL = -5, VE_RANGE = -6 };

/* Append v (n floats); returns the new row's 1-based id or a VE_ code (a
 * double: Lua gets a plain number through the FFI). */
static double ffi_add(sb_vmat *m, const float *v, size_t n)
{
    if (m->st == NULL)
        return VE_CLOSED;
    if (n != m->dims)
        return VE_DIMS;
    if (!all_finite(v, n))
        return VE_FINITE;
    if (m->rows >= VEC_MAX_ROWS)
        return VE_FULL;
    float *tmp = NULL;
    const float *base = m->st->data;
    if (v >= base && v < base + m->st->cap * m->dims) {    /* a row of this matrix */
        if ((tmp = malloc(n * sizeof *tmp)) == NULL)
            return VE_NOMEM;
        memcpy(tmp, v, n * sizeof *tmp);
        v = tmp;
    }
    int r = mat_reserve(m, m->rows + 1);
    if (r == 0)
        row_write(m, m->rows++, v);
    free(tmp);
    return r == 0 ? (double)m->rows : VE_NOMEM;
}

/* Replace row id (1-based). Returns 0 or a VE_ code. */
static int ffi_set(sb_vmat *m, size_t id, const float *v, size_t n)
{
    if (m->st == NULL)
        return VE_CLOSED;
    if (n != m->dims)
        return VE_DIMS;
    if (id < 1 || id > m->rows)
        return VE_RANGE;
    if (!all_finite(v, n))
        return VE_FINITE;
    float tmp[256], *heap = NULL;
    if (n > 256 && (heap = malloc(n * sizeof *heap)) == NULL)
        return VE_NOMEM;
    float *copy = heap ? heap : tmp;        /* v may point into the store */
    memcpy(copy, v, n * sizeof *copy);
    int r = mat_unshare(m);
    if (r == 0)
        row_write(m, id - 1, copy);
    free(heap);
    return r == 0 ? 0 : VE_NOMEM;
}

static int ffi_row(sb_vmat *m, size_t id, float *out)
{
    if (m->st == NULL)
        return VE_CLOSED;
    if (id < 1 || id > m->rows)
        return VE_RANGE;
    memcpy(out, m->st->data + (id - 1) * m->dims, m->dims * sizeof *out);
    return 0;
}

static float *ffi_ptr(sb_vmat *m)
{
    return m->st ? m->st->data : NULL;
}

static double ffi_dot(const float *a, const float *b, size_t d)
{
    return sb_vec_dot1(a, b, d);
}

static double ffi_cosine(const float *a, const float *b, size_t d)
{
    double ab = 0, aa = 0, bb = 0;
    for (size_t j = 0; j < d; j++) {
        ab += (double)a[j] * b[j];
        aa += (double)a[j] * a[j];
        bb += (double)b[j] * b[j];
    }
    return aa > 0 && bb > 0 ? ab / (sqrt(aa) * sqrt(bb)) : 0.0;
}

double sb_vec_l2_exact(const float *a, const float *b, size_t d)
{
    double s = 0;
    for (size_t j = 0; j < d; j++) {
        double t = (double)a[j] - b[j];
        s += t * t;
    }
    return sqrt(s);
}

static double ffi_normalize(float *out, const float *v, size_t d)
{
    sb_vec_normalize_into(out, v, d);
    return norm_d(v, d);
}

/* ------------------------------------------------------- the Lua door */

sb_vmat *sb_vec_checkmat(lua_State *L, int idx)
{
    return sb_checkudata(L, idx, &mat_mt_key, "sibyl.vec.matrix");
}

sb_vmat *sb_vec_testmat(lua_State *L, int idx)
{
    return sb_testudata(L, idx, &mat_mt_key);
}

int sb_vec_fail_closed(lua_State *L)
{
    return sb_fail(L, "closed", "vec: the matrix is closed; create a new one or vec.load() it again");
}

/* Online CPUs, capped to VEC_MAX_PARTS: the default number of parts. */
int sb_vec_ncpu(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > VEC_MAX_PARTS ? VEC_MAX_PARTS : (int)n;
}

int sb_vec_can_park(lua_State *L)
{
    return sb_rt(L)->current != NULL && lua_isyieldable(L);
}

/* A new matrix userdata; fields from the caller. */
sb_vmat *sb_vec_pushmat(lua_State *L)
{
    sb_vmat *m = lua_newuserdata(L, sizeof *m);
    memset(m, 0, sizeof *m);
    m->rerank = VEC_DEFAULT_RERANK;
    m->threads = sb_vec_ncpu();
    m->async_threshold = VEC_DEFAULT_ASYNC;
    sb_getmeta(L, &mat_mt_key);
    lua_setmetatable(L, -2);
    return m;
}


/* core.new{dims=, capacity=, metric=, quantize=, async_threshold=, rerank=, threads=} */
static int l_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    double dims = sb_opt_num(L, 1, "dims", 0), cap = sb_opt_num(L, 1, "capacity", 16);
    if (!(dims >= 1 && dims <= VEC_MAX_DIMS) || dims != floor(dims))
        return luaL_error(L, "vec.matrix: dims must be an integer from 1 to %d", VEC_MAX_DIMS);
    if (!(cap >= 0 && cap <= (double)VEC_MAX_ROWS))
        return luaL_error(L, "vec.matrix: capacity must be a number of rows >= 0");
    lua_getfield(L, 1, "metric");
    int metric = lua_isnil(L, -1) ? M_COSINE : luaL_checkoption(L, -1, NULL, sb_vec_metric_names);
    lua_pop(L, 1);
    lua_getfield(L, 1, "quantize");
    int quant = lua_toboolean(L, -1);
    lua_pop(L, 1);
    double async = sb_opt_num(L, 1, "async_threshold", VEC_DEFAULT_ASYNC);
    double rerank = sb_opt_num(L, 1, "rerank", VEC_DEFAULT_RERANK);
    double threads = sb_opt_num(L, 1, "threads", sb_vec_ncpu());
    if (!(rerank >= 1 && rerank <= 1000))
        return luaL_error(L, "vec.matrix: rerank must be from 1 to 1000");
    sb_vmat *m = sb_vec_pushmat(L);
    m->st = sb_vstore_new((size_t)dims, cap < 1 ? 1 : (size_t)cap, quant);
    if (m->st == NULL)
        return luaL_error(L, "vec.matrix: out of memory for %f rows of %f dims; lower capacity", cap, dims);
    m->dims = (size_t)dims;
    m->metric = metric;
    m->normalized = metric == M_COSINE;
    m->quant = quant;
    m->async_threshold = async;
    m->rerank = (int)rerank;
    m->threads = threads < 1 ? 1 : threads > VEC_MAX_PARTS ? VEC_MAX_PARTS : (int)threads;
    return 1;
}

/* m:_config{async_threshold=, rerank=, threads=}: knobs of an existing matrix. */
static int l_config(lua_State *L)
{
    sb_vmat *m = sb_vec_checkmat(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    m->async_threshold = sb_opt_num(L, 2, "async_threshold", m->async_threshold);
    double rerank = sb_opt_num(L, 2, "rerank", m->rerank), threads = sb_opt_num(L, 2, "threads", m->threads);
    if (!(rerank >= 1 && rerank <= 1000))
        return luaL_error(L, "vec: rerank must be from 1 to 1000");
    m->rerank = (int)rerank;
    m->threads = threads < 1 ? 1 : threads > VEC_MAX_PARTS ? VEC_MAX_PARTS : (int)threads;
    lua_settop(L, 1);
    return 1;
}

/* core.ptr(m) -> lightuserdata of the matrix struct, for ffi.cast. */
static int l_ptr(lua_State *L)
{
    lua_pushlightuserdata(L, sb_vec_checkmat(L, 1));
    return 1;
}

static int l_close(lua_State *L)
{
    sb_vmat *m = sb_vec_checkmat(L, 1);
    sb_vstore_release(m->st);
    m->st = NULL;
    m->rows = 0;
    return 0;
}

static int l_gc(lua_State *L)
{
    sb_vmat *m = lua_touserdata(L, 1);
    sb_vstore_release(m->st);
    m->st = NULL;
    return 0;
}

static int l_tostring(lua_State *L)
{
    sb_vmat *m = sb_vec_checkmat(L, 1);
    if (m->st == NULL)
        lua_pushliteral(L, "sibyl.vec.matrix (closed)");
    else
        lua_pushfstring(L, "sibyl.vec.matrix (%d x %d, %s%s)", (int)m->rows, (int)m->dims,
                        sb_vec_metric_names[m->metric], m->quant ? ", int8" : "");
    return 1;
}

static int l_info(lua_State *L)
{
    sb_vmat *m = sb_vec_checkmat(L, 1);
    if (m->st == NULL)
        return sb_vec_fail_closed(L);
    sb_vstore *s = m->st;
    lua_createtable(L, 0, 10);
    lua_pushnumber(L, (lua_Number)m->rows);
    lua_setfield(L, -2, "rows");
    lua_pushnumber(L, (lua_Number)m->dims);
    lua_setfield(L, -2, "dims");
    lua_pushnumber(L, (lua_Number)s->cap);
    lua_setfield(L, -2, "capacity");
    lua_pushstring(L, sb_vec_metric_names[m->metric]);
    lua_setfield(L, -2, "metric");
    lua_pushboolean(L, m->normalized);
    lua_setfield(L, -2, "normalized");
    lua_pushstring(L, m->quant ? "int8" : "none");
    lua_setfield(L, -2, "quantize");
    double bytes = (double)s->cap * (double)m->dims * (4.0 + (s->codes ? 1 : 0)) +
                   (double)s->cap * (4.0 + (s->codes ? 4 : 0));
    lua_pushnumber(L, bytes);
    lua_setfield(L, -2, "bytes");
    lua_pushnumber(L, m->async_threshold);
    lua_setfield(L, -2, "async_threshold");
    lua_pushinteger(L, m->rerank);
    lua_setfield(L, -2, "rerank");
    lua_pushinteger(L, m->threads);
    lua_setfield(L, -2, "threads");
    return 1;
}

/* m:normalize(): every row to unit length (zero rows stay zero). */
static int l_normalize(lua_State *L)
{
    sb_vmat *m = sb_vec_checkmat(L, 1);
    if (m->st == NULL)
        return sb_vec_fail_closed(L);
    if (mat_unshare(m) != 0)
        return sb_fail(L, "nomem", "vec: m:normalize: out of memory (a search holds the rows)");
    for (size_t i = 0; i < m->rows; i++) {
        float *x = m->st->data + i * m->dims;
        sb_vec_normalize_into(x, x, m->dims);
        row_derive(m, i);
    }
    m->normalized = 1;
    lua_settop(L, 1);
    return 1;
}

/* m:quantize(): keep int8 codes of every row (and of rows added later). */
static int l_quantize(lua_State *L)
{
    sb_vmat *m = sb_vec_checkmat(L, 1);
    if (m->st == NULL)
        return sb_vec_fail_closed(L);
    if (!m->quant) {
        if (mat_unshare(m) != 0)
            return sb_fail(L, "nomem", "vec: m:quantize: out of memory");
        sb_vstore *s = m->st;
        s->codes = alloc_rows(s->cap * m->dims);
        s->scales = malloc((s->cap ? s->cap : 1) * sizeof(float));
        if (s->codes == NULL || s->scales == NULL) {
            free(s->codes);
            free(s->scales);
            s->codes = NULL;
            s->scales = NULL;
            return sb_fail(L, "nomem", "vec: m:quantize: out of memory for %d x %d codes", (int)m->rows,
                           (int)m->dims);
        }
        for (size_t i = 0; i < m->rows; i++)
            s->scales[i] = sb_vec_quantize(s->data + i * m->dims, m->dims, s->codes + i * m->dims);
        m->quant = 1;
    }
    lua_settop(L, 1);
    return 1;
}

/* m:to_blobs() -> { row1_bytes, row2_bytes, ... } (packed float32). */
static int l_to_blobs(lua_State *L)
{
    sb_vmat *m = sb_vec_checkmat(L, 1);
    if (m->st == NULL)
        return sb_vec_fail_closed(L);
    lua_createtable(L, (int)m->rows, 0);
    for (size_t i = 0; i < m->rows; i++) {
        lua_pushlstring(L, (const char *)(m->st->data + i * m->dims), m->dims * sizeof(float));
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* core.blas_threads([n]) -> the OpenBLAS thread count (after setting it). */
static int l_blas_threads(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) {
        lua_Integer n = luaL_checkinteger(L, 1);
        luaL_argcheck(L, n >= 1 && n <= 256, 1, "thread count from 1 to 256");
        openblas_set_num_threads((int)n);
    }
    lua_pushinteger(L, openblas_get_num_threads());
    return 1;
}

static const luaL_Reg mat_methods[] = {
    {"close", l_close},
    {"info", l_info},
    {"normalize", l_normalize},
    {"quantize", l_quantize},
    {"save", sb_vec_l_save},
    {"to_blobs", l_to_blobs},
    {"_search", sb_vec_l_search},
    {"_search_many", sb_vec_l_search_many},
    {"_config", l_config},
    {"__gc", l_gc},
    {"__tostring", l_tostring},
    {NULL, NULL}
};

int luaopen_sibyl_vec_core(lua_State *L)
{
    char err[256];
    if (sb_blas_load(err, sizeof err) != 0)     /* loaded here, not at start-up: sb_blas.h */
        return luaL_error(L, "sibyl.vec: %s", err);
    sb_vec_init();
    sb_newmeta(L, &mat_mt_key, "sibyl.vec.matrix");
    luaL_setfuncs(L, mat_methods, 0);
    lua_createtable(L, 0, 12);
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "matrix_mt");
    lua_remove(L, -2);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "new");
    lua_pushcfunction(L, l_ptr);
    lua_setfield(L, -2, "ptr");
    lua_pushcfunction(L, sb_vec_l_load);
    lua_setfield(L, -2, "load");
    lua_pushcfunction(L, l_blas_threads);
    lua_setfield(L, -2, "blas_threads");
    lua_pushstring(L, sb_vec_isa());
    lua_setfield(L, -2, "isa");
    lua_pushinteger(L, VEC_MAX_DIMS);
    lua_setfield(L, -2, "MAX_DIMS");
    lua_pushinteger(L, sb_vec_ncpu());
    lua_setfield(L, -2, "ncpu");
    lua_pushnumber(L, VEC_DEFAULT_ASYNC);
    lua_setfield(L, -2, "DEFAULT_ASYNC");
    lua_createtable(L, 0, 10);              /* addresses for ffi.cast */
    static const struct { const char *name; void (*fn)(void); } ffi_fns[] = {
        {"add", (void (*)(void))ffi_add},
        {"set", (void (*)(void))ffi_set},
        {"row", (void (*)(void))ffi_row},
        {"ptr", (void (*)(void))ffi_ptr},
        {"dot", (void (*)(void))ffi_dot},
        {"cosine", (void (*)(void))ffi_cosine},
        {"l2", (void (*)(void))sb_vec_l2_exact},
        {"normalize", (void (*)(void))ffi_normalize},
        {"hash_embed", (void (*)(void))sb_vec_hash_embed},
    };
    for (size_t i = 0; i < sizeof ffi_fns / sizeof ffi_fns[0]; i++) {
        lua_pushlightuserdata(L, (void *)(uintptr_t)ffi_fns[i].fn);
        lua_setfield(L, -2, ffi_fns[i].name);
    }
    lua_setfield(L, -2, "ffi");
    return 1;
}
