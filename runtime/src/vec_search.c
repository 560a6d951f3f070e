/*
 * vec_search.c -- top-k search for `sibyl.vec` (see vec.c and doc/vec.md).
 *
 * A job copies the queries, holds a reference to the matrix's store and
 * scans rows in blocks of VEC_BLOCK: the SIMD kernel (one query) or
 * cblas_sgemm (a batch) scores a block into a small buffer, and a k-sized
 * heap per query keeps the best (a compare against the heap's worst rejects
 * most rows). Large jobs are split into parts, one per worker thread; the
 * last part to finish merges the heaps on the loop thread, re-ranks int8
 * candidates against the float rows and wakes the task.
 *
 * Keys: higher is better. cosine = dot / |x| (just dot when rows are unit),
 * dot, and for l2 2 q.x - |x|^2 (= |q|^2 - |q - x|^2); l2 results report
 * the distance computed directly. Equal keys: the lower id first.
 *
 * Cancellation: a cancelled task's job is abandoned; its parts stop at the
 * next block and the last part_done frees it.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "sb_blas.h"

#include "sb_vecmat.h"

#define VEC_BLOCK 1024              /* rows per kernel call: 4 KB of scores */
#define VEC_QCHUNK 64               /* queries per sgemm call */
#define VEC_MIN_PART_ROWS 8192      /* a part is at least this many rows */

/* How a search turns a dot product into a key (higher is better). */
enum { KEY_DOT, KEY_COS, KEY_L2 };

/* ----------------------------------------------------------- searching */

typedef struct vjob vjob;

typedef struct {
    vjob *j;
    size_t lo, hi;              /* rows [lo, hi) */
    sb_vheap *heaps;            /* one per query */
    float *buf;                 /* scores of one block (x VEC_QCHUNK for batches) */
    int32_t *ibuf;              /* int8 dot products of one block */
} vpart;

struct vjob {
    sb_op *op;                  /* NULL: inline, or abandoned by its task */
    int finished;               /* results ready, waiting for push */
    int pending;                /* parts not done yet (loop thread) */
    atomic_int stop;            /* abandoned: parts stop at the next block */
    sb_vstore *st;              /* reference held */
    const float *X, *norm2, *scales;
    const int8_t *codes;
    size_t nrows, dims, nq, k, kk;  /* kk: candidates kept per part (k, or k * rerank) */
    int metric, mode, use_quant, blas, many, want_shortlist;
    float *q;                   /* nq x dims, normalised for cosine */
    int16_t *q16;               /* int8 query (one query) */
    float qscale;
    int nparts;
    vpart parts[VEC_MAX_PARTS];
    sb_vhit *heapmem;
    sb_vhit *merge;             /* nparts x kk */
    sb_vhit *res;               /* nq x k */
    double *scores;             /* nq x k */
    size_t *nres;               /* nq */
    uint32_t *shortlist;        /* kk (one query) */
    size_t nshort;
};

static void job_free(vjob *j)
{
    for (int p = 0; p < j->nparts; p++) {
        free(j->parts[p].buf);
        free(j->parts[p].ibuf);
        free(j->parts[p].heaps);
    }
    sb_vstore_release(j->st);
    free(j->q);
    free(j->q16);
    free(j->heapmem);
    free(j->merge);
    free(j->res);
    free(j->scores);
    free(j->nres);
    free(j->shortlist);
    free(j);
}

static inline float key_cos(float dot, float n2)
{
    return n2 > 0 ? dot / sqrtf(n2) : 0.0f;
}

static inline float key_l2(float dot, float n2)
{
    return 2.0f * dot - n2;     /* |q|^2 - |q - x|^2: the constant |q|^2 dropped */
}

/* Keys of a block of scores s[0..n) for rows lo.. into the heap. */
static void select_block(const vjob *j, sb_vheap *hp, const float *s, size_t lo, size_t n)
{
    float floor = sb_vheap_floor(hp);
    const float *n2 = j->norm2 + lo;
    uint32_t id = (uint32_t)lo;
    switch (j->mode) {
    case KEY_DOT:
        for (size_t r = 0; r < n; r++)
            if (s[r] > floor) {
                sb_vheap_push(hp, s[r], id + (uint32_t)r);
                floor = sb_vheap_floor(hp);
            }
        break;
    case KEY_COS:
        for (size_t r = 0; r < n; r++) {
            float key = key_cos(s[r], n2[r]);
            if (key > floor) {
                sb_vheap_push(hp, key, id + (uint32_t)r);
                floor = sb_vheap_floor(hp);
            }
        }
        break;
    default:
        for (size_t r = 0; r < n; r++) {
            float key = key_l2(s[r], n2[r]);
            if (key > floor) {
                sb_vheap_push(hp, key, id + (uint32_t)r);
                floor = sb_vheap_floor(hp);
            }
        }
    }
}

/* The exact key of row id for query qi: bit-equal to what a float scan with
 * the SIMD kernel computes for it. */
static float exact_key(const vjob *j, uint32_t id, size_t qi)
{
    float dot = sb_vec_dot1(j->X + (size_t)id * j->dims, j->q + qi * j->dims, j->dims);
    return j->mode == KEY_DOT ? dot : j->mode == KEY_COS ? key_cos(dot, j->norm2[id]) : key_l2(dot, j->norm2[id]);
}

static int stopped(vjob *j)
{
    return atomic_load_explicit(&j->stop, memory_order_relaxed);
}

static void scan_one(vjob *j, vpart *p)
{
    size_t d = j->dims;
    for (size_t lo = p->lo; lo < p->hi && !stopped(j); lo += VEC_BLOCK) {
        size_t n = p->hi - lo < VEC_BLOCK ? p->hi - lo : VEC_BLOCK;
        if (j->use_quant) {
            sb_vec_idots(j->codes + lo * d, n, d, j->q16, p->ibuf);
            for (size_t r = 0; r < n; r++)
                p->buf[r] = j->qscale * j->scales[lo + r] * (float)p->ibuf[r];
        } else if (j->blas) {
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)d, 1.0f, j->X + lo * d, (int)d,
                        j->q, 1, 0.0f, p->buf, 1);
        } else {
            sb_vec_dots(j->X + lo * d, n, d, j->q, p->buf);
        }
        select_block(j, &p->heaps[0], p->buf, lo, n);
    }
}

static void scan_many(vjob *j, vpart *p)
{
    size_t d = j->dims;
    for (size_t lo = p->lo; lo < p->hi && !stopped(j); lo += VEC_BLOCK) {
        size_t n = p->hi - lo < VEC_BLOCK ? p->hi - lo : VEC_BLOCK;
        for (size_t q0 = 0; q0 < j->nq; q0 += VEC_QCHUNK) {
            size_t qc = j->nq - q0 < VEC_QCHUNK ? j->nq - q0 : VEC_QCHUNK;
            /* C (qc x n) = Q[q0 .. q0+qc) . X[lo .. lo+n)^T: one row of scores per query */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)qc, (int)n, (int)d, 1.0f,
                        j->q + q0 * d, (int)d, j->X + lo * d, (int)d, 0.0f, p->buf, (int)n);
            for (size_t qi = 0; qi < qc; qi++)
                select_block(j, &p->heaps[q0 + qi], p->buf + qi * n, lo, n);
        }
    }
}

/* Worker thread: no Lua. */
static void part_work(void *arg)
{
    vpart *p = arg;
    if (p->j->many)
        scan_many(p->j, p);
    else
        scan_one(p->j, p);
}

/* Merge the parts' heaps, re-rank int8 candidates, compute final scores.
 * Loop thread; allocates nothing. */
static void finish(vjob *j)
{
    for (size_t qi = 0; qi < j->nq; qi++) {
        size_t m = 0;
        for (int p = 0; p < j->nparts; p++) {
            sb_vheap *hp = &j->parts[p].heaps[qi];
            memcpy(j->merge + m, hp->h, hp->n * sizeof *hp->h);
            m += hp->n;
        }
        sb_vhits_sort(j->merge, m);
        if (m > j->kk)
            m = j->kk;
        if (j->use_quant) {
            if (j->want_shortlist) {
                for (size_t c = 0; c < m; c++)
                    j->shortlist[c] = j->merge[c].id;
                j->nshort = m;
            }
            for (size_t c = 0; c < m; c++)
                j->merge[c].key = exact_key(j, j->merge[c].id, qi);
            sb_vhits_sort(j->merge, m);
        }
        size_t nk = m < j->k ? m : j->k;
        sb_vhit *res = j->res + qi * j->k;
        double *sc = j->scores + qi * j->k;
        if (j->metric == M_L2) {
            /* Distances computed directly (2 q.x - |x|^2 loses digits when
             * q is close to x), and the k winners ordered by them. */
            for (size_t c = 0; c < nk; c++) {
                res[c] = j->merge[c];
                sc[c] = sb_vec_l2_exact(j->X + (size_t)res[c].id * j->dims, j->q + qi * j->dims, j->dims);
            }
            for (size_t a = 1; a < nk; a++) {     /* insertion sort: k is small, order mostly right */
                sb_vhit h = res[a];
                double s = sc[a];
                size_t b = a;
                while (b > 0 && (sc[b - 1] > s || (sc[b - 1] == s && res[b - 1].id > h.id))) {
                    res[b] = res[b - 1];
                    sc[b] = sc[b - 1];
                    b--;
                }
                res[b] = h;
                sc[b] = s;
            }
        } else {
            for (size_t c = 0; c < nk; c++) {
                res[c] = j->merge[c];
                sc[c] = j->merge[c].key;
            }
        }
        j->nres[qi] = nk;
    }
}

static void push_hits(lua_State *L, const vjob *j, size_t qi)
{
    size_t n = j->nres[qi];
    const sb_vhit *res = j->res + qi * j->k;
    lua_createtable(L, (int)n, 0);
    for (size_t c = 0; c < n; c++) {
        lua_pushnumber(L, (lua_Number)res[c].id + 1);
        lua_rawseti(L, -2, (int)c + 1);
    }
    lua_createtable(L, (int)n, 0);
    for (size_t c = 0; c < n; c++) {
        lua_pushnumber(L, j->scores[qi * j->k + c]);
        lua_rawseti(L, -2, (int)c + 1);
    }
}

/* ids, scores [, shortlist] -- or, for a batch, a list of {ids=, scores=}. */
static int push_results(lua_State *L, const vjob *j)
{
    if (j->many) {
        lua_createtable(L, (int)j->nq, 0);
        for (size_t qi = 0; qi < j->nq; qi++) {
            lua_createtable(L, 2, 2);
            push_hits(L, j, qi);
            lua_pushvalue(L, -1);
            lua_setfield(L, -4, "scores");
            lua_rawseti(L, -3, 2);
            lua_pushvalue(L, -1);
            lua_setfield(L, -3, "ids");
            lua_rawseti(L, -2, 1);
            lua_rawseti(L, -2, (int)qi + 1);
        }
        return 1;
    }
    push_hits(L, j, 0);
    if (!j->want_shortlist)
        return 2;
    lua_createtable(L, (int)j->nshort, 0);
    for (size_t c = 0; c < j->nshort; c++) {
        lua_pushnumber(L, (lua_Number)j->shortlist[c] + 1);
        lua_rawseti(L, -2, (int)c + 1);
    }
    return 3;
}

static int push_search(lua_State *co, void *data)
{
    vjob *j = *(vjob **)data;
    int n = push_results(co, j);
    job_free(j);
    return n;
}

/* The task is gone: free finished results, or let running parts stop
 * early and the last part_done free the job. */
static void cancel_search(void *data)
{
    vjob *j = *(vjob **)data;
    if (j->finished) {
        job_free(j);
        return;
    }
    j->op = NULL;
    atomic_store(&j->stop, 1);
}

/* Loop thread, once per part. */
static void part_done(void *arg)
{
    vjob *j = ((vpart *)arg)->j;
    if (--j->pending > 0)
        return;
    if (j->op == NULL) {
        job_free(j);
        return;
    }
    finish(j);
    j->finished = 1;
    sb_op_done(j->op);
}

typedef struct {
    int metric, exact, rerank, threads, shortlist, blas;
    double async;
} sopts;

static int opt_field(lua_State *L, int idx, const char *k)
{
    lua_getfield(L, idx, k);
    return !lua_isnil(L, -1);
}

/* Search options (validated by vec.lua; checked again here for safety). */
static void read_sopts(lua_State *L, int idx, const sb_vmat *m, sopts *o)
{
    o->metric = m->metric;
    o->exact = 0;
    o->rerank = m->rerank;
    o->threads = m->threads;
    o->shortlist = 0;
    o->blas = 0;
    o->async = m->async_threshold;
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    if (opt_field(L, idx, "metric"))
        o->metric = luaL_checkoption(L, -1, NULL, sb_vec_metric_names);
    lua_pop(L, 1);
    if (opt_field(L, idx, "exact"))
        o->exact = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (opt_field(L, idx, "shortlist"))
        o->shortlist = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (opt_field(L, idx, "kernel"))
        o->blas = strcmp(luaL_checkstring(L, -1), "blas") == 0;
    lua_pop(L, 1);
    if (opt_field(L, idx, "rerank"))
        o->rerank = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (opt_field(L, idx, "threads"))
        o->threads = (int)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    if (opt_field(L, idx, "async_threshold"))
        o->async = luaL_checknumber(L, -1);
    lua_pop(L, 1);
    if (o->rerank < 1 || o->rerank > 1000)
        luaL_error(L, "vec: rerank must be an integer from 1 to 1000 (default %d)", VEC_DEFAULT_RERANK);
    if (o->threads < 1)
        o->threads = 1;
}

/* A job over m's current rows for nq queries (floats copied from qsrc, which
 * holds nq x dims), or NULL when out of memory. */
static vjob *job_new(sb_vmat *m, const float *qsrc, size_t nq, size_t k, const sopts *o, int many)
{
    vjob *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    atomic_init(&j->stop, 0);
    j->st = m->st;
    j->st->refs++;
    j->X = j->st->data;
    j->norm2 = j->st->norm2;
    j->codes = j->st->codes;
    j->scales = j->st->scales;
    j->nrows = m->rows;
    j->dims = m->dims;
    j->nq = nq;
    j->many = many;
    j->metric = o->metric;
    j->mode = o->metric == M_L2 ? KEY_L2 : (o->metric == M_DOT || m->normalized) ? KEY_DOT : KEY_COS;
    j->use_quant = m->quant && !o->exact && !many;
    j->blas = o->blas;
    j->want_shortlist = o->shortlist && j->use_quant;
    j->k = k < j->nrows ? k : j->nrows;
    size_t kk = j->use_quant ? k * (size_t)o->rerank : k;
    if (j->use_quant && kk / (size_t)o->rerank != k)
        kk = j->nrows;                  /* overflow */
    j->kk = kk < j->nrows ? kk : j->nrows;
    size_t d = m->dims;
    j->q = malloc(nq * d * sizeof(float) + 1);
    j->res = malloc(nq * (j->k ? j->k : 1) * sizeof *j->res);
    j->scores = malloc(nq * (j->k ? j->k : 1) * sizeof *j->scores);
    j->nres = calloc(nq ? nq : 1, sizeof *j->nres);
    if (j->q == NULL || j->res == NULL || j->scores == NULL || j->nres == NULL)
        goto err;
    for (size_t qi = 0; qi < nq; qi++) {
        if (o->metric == M_COSINE)
            sb_vec_normalize_into(j->q + qi * d, qsrc + qi * d, d);
        else
            memcpy(j->q + qi * d, qsrc + qi * d, d * sizeof(float));
    }
    if (j->use_quant) {
        if ((j->q16 = malloc(d * sizeof *j->q16)) == NULL)
            goto err;
        j->qscale = sb_vec_quantize16(j->q, d, j->q16);
        if (j->want_shortlist && (j->shortlist = malloc((j->kk ? j->kk : 1) * sizeof *j->shortlist)) == NULL)
            goto err;
    }
    return j;
err:
    job_free(j);
    return NULL;
}

/* Split the rows into nparts and allocate their heaps and buffers. */
static int job_parts(vjob *j, int nparts)
{
    j->nparts = nparts;
    size_t kk = j->kk, heap_n = j->nq * kk * (size_t)nparts, merge_n = (size_t)nparts * kk;
    j->heapmem = malloc((heap_n > 0 ? heap_n : 1) * sizeof *j->heapmem);
    j->merge = malloc((merge_n > 0 ? merge_n : 1) * sizeof *j->merge);
    if (j->heapmem == NULL || j->merge == NULL)
        return -1;
    size_t qc = j->many ? (j->nq < VEC_QCHUNK ? j->nq : VEC_QCHUNK) : 1;
    for (int p = 0; p < nparts; p++) {
        vpart *pt = &j->parts[p];
        pt->j = j;
        pt->lo = j->nrows * (size_t)p / (size_t)nparts;
        pt->hi = j->nrows * (size_t)(p + 1) / (size_t)nparts;
        pt->heaps = malloc((j->nq ? j->nq : 1) * sizeof *pt->heaps);
        pt->buf = malloc(qc * VEC_BLOCK * sizeof(float));
        if (j->use_quant)
            pt->ibuf = malloc(VEC_BLOCK * sizeof(int32_t));
        if (pt->heaps == NULL || pt->buf == NULL || (j->use_quant && pt->ibuf == NULL))
            return -1;
        for (size_t qi = 0; qi < j->nq; qi++) {
            pt->heaps[qi].h = j->heapmem + ((size_t)p * j->nq + qi) * kk;
            pt->heaps[qi].n = 0;
            pt->heaps[qi].cap = kk;
        }
    }
    return 0;
}

/* Run a prepared job inline or on the pool; pushes its results. Takes
 * ownership of j. */
static int run_job(lua_State *L, vjob *j, const sopts *o)
{
    double work = (double)j->nrows * (double)j->dims * (double)j->nq;
    if (j->nrows == 0 || j->kk == 0 || work < o->async || !sb_vec_can_park(L)) {
        if (job_parts(j, 1) != 0) {
            job_free(j);
            return sb_fail(L, "nomem", "vec: out of memory for the search's buffers; lower k or the batch size");
        }
        part_work(&j->parts[0]);
        finish(j);
        int n = push_results(L, j);
        job_free(j);
        return n;
    }
    int nparts = o->threads;
    size_t most = (j->nrows + VEC_MIN_PART_ROWS - 1) / VEC_MIN_PART_ROWS;
    if ((size_t)nparts > most)
        nparts = (int)most;
    if (nparts > VEC_MAX_PARTS)
        nparts = VEC_MAX_PARTS;
    if (nparts < 1)
        nparts = 1;
    sb_op *op = sb_op_new(L, sizeof(vjob *), push_search, cancel_search);
    if (job_parts(j, nparts) != 0) {
        sb_op_abort(op);
        job_free(j);
        return sb_fail(L, "nomem", "vec: out of memory for the search's buffers; lower k or the batch size");
    }
    *(vjob **)sb_op_data(op) = j;
    j->op = op;
    j->pending = nparts;
    sibyl_rt *rt = sb_op_rt(op);
    for (int p = 0; p < nparts; p++) {
        if (sb_pool_submit(rt, part_work, part_done, &j->parts[p]) != 0) {
            part_work(&j->parts[p]);        /* no worker: do it here */
            j->pending--;
        }
    }
    if (j->pending == 0) {
        sb_op_abort(op);
        j->op = NULL;
        finish(j);
        int n = push_results(L, j);
        job_free(j);
        return n;
    }
    return sb_op_park(L, op);
}

static size_t check_k(lua_State *L, int idx)
{
    lua_Number k = luaL_checknumber(L, idx);
    if (!(k >= 0) || k != floor(k))
        luaL_error(L, "vec: k must be an integer >= 0, got %f", (double)k);
    return k > (lua_Number)VEC_MAX_ROWS ? VEC_MAX_ROWS : (size_t)k;
}

/* m:_search(q_packed, k [, opts]) -> ids, scores [, shortlist] */
int sb_vec_l_search(lua_State *L)
{
    sb_vmat *m = sb_vec_checkmat(L, 1);
    size_t ql;
    const char *q = luaL_checklstring(L, 2, &ql);
    size_t k = check_k(L, 3);
    if (m->st == NULL)
        return sb_vec_fail_closed(L);
    if (ql != m->dims * sizeof(float))
        return luaL_error(L, "vec: the query has %d floats, the matrix %d dims", (int)(ql / 4), (int)m->dims);
    sopts o;
    read_sopts(L, 4, m, &o);
    float *qf = malloc(ql + 1);         /* the string may not be float-aligned */
    if (qf == NULL)
        return sb_fail(L, "nomem", "vec: out of memory");
    memcpy(qf, q, ql);
    vjob *j = job_new(m, qf, 1, k, &o, 0);
    free(qf);
    if (j == NULL)
        return sb_fail(L, "nomem", "vec: out of memory for the search; lower k");
    return run_job(L, j, &o);
}

/* m:_search_many(Q, nq, k [, opts]): Q is packed floats (nq x dims) or a matrix. */
int sb_vec_l_search_many(lua_State *L)
{
    sb_vmat *m = sb_vec_checkmat(L, 1);
    size_t k = check_k(L, 3);
    if (m->st == NULL)
        return sb_vec_fail_closed(L);
    const float *src;
    float *copy = NULL;
    size_t nq;
    sb_vmat *qm = sb_vec_testmat(L, 2);
    if (qm) {
        if (qm->st == NULL)
            return luaL_error(L, "vec: m:search_many: the query matrix is closed");
        if (qm->dims != m->dims)
            return luaL_error(L, "vec: m:search_many: the query matrix has %d dims, the matrix %d",
                              (int)qm->dims, (int)m->dims);
        src = qm->st->data;
        nq = qm->rows;
    } else {
        size_t ql;
        const char *q = luaL_checklstring(L, 2, &ql);
        if (ql % (m->dims * sizeof(float)) != 0)
            return luaL_error(L, "vec: m:search_many: the queries are not a whole number of %d-float vectors",
                              (int)m->dims);
        nq = ql / (m->dims * sizeof(float));
        if ((copy = malloc(ql + 1)) == NULL)
            return sb_fail(L, "nomem", "vec: out of memory");
        memcpy(copy, q, ql);
        src = copy;
    }
    sopts o;
    read_sopts(L, 4, m, &o);
    if (nq == 0) {
        free(copy);
        lua_newtable(L);
        return 1;
    }
    vjob *j = job_new(m, src, nq, k, &o, 1);
    free(copy);
    if (j == NULL)
        return sb_fail(L, "nomem", "vec: out of memory for the search; lower k or the batch size");
    return run_job(L, j, &o);
}
