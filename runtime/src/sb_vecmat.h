/*
 * sb_vecmat.h -- the matrix of `sibyl.vec`, shared by vec.c (storage, FFI
 * entry points, the Lua door), vec_search.c (top-k search jobs) and
 * vec_io.c (save/load). Loop thread only unless a comment says otherwise.
 */
#ifndef SB_VECMAT_H
#define SB_VECMAT_H

#include "sb.h"
#include "sb_vec.h"

#define VEC_MAX_DIMS 65536
#define VEC_MAX_ROWS ((size_t)UINT32_MAX - 1)
#define VEC_MAX_PARTS 16            /* most parts a search is split into */
#define VEC_DEFAULT_ASYNC (20000.0 * 384)
#define VEC_DEFAULT_RERANK 4

enum { M_COSINE, M_DOT, M_L2 };
extern const char *const sb_vec_metric_names[];    /* "cosine", "dot", "l2", NULL */

/*
 * Rows live in a reference-counted store: the matrix holds one reference and
 * every background job (search, save) one more, so a matrix can grow, be
 * written (copy on write while shared) or close while a worker reads.
 */
typedef struct sb_vstore {
    int refs;                   /* the matrix + each job using it; loop thread only */
    size_t cap, dims;           /* rows allocated */
    float *data;                /* cap x dims, 64-byte aligned */
    float *norm2;               /* cap: squared norm of each row */
    int8_t *codes;              /* cap x dims when quantized, else NULL */
    float *scales;              /* cap */
} sb_vstore;

/* The userdata. Lua's FFI reads the leading fields (vec.lua declares the
 * same prefix): keep their order. */
typedef struct sb_vmat {
    sb_vstore *st;              /* NULL once closed */
    size_t rows, dims;
    int metric;                 /* default metric; cosine: rows normalised on insert */
    int normalized;             /* every row has norm 1 (or is zero) */
    int quant;                  /* int8 codes kept and scanned first */
    int rerank, threads;
    double async_threshold;     /* rows x dims x queries from which a search goes to the pool */
} sb_vmat;

/* A store of cap rows with one reference (codes too when quant), or NULL. */
sb_vstore *sb_vstore_new(size_t dims, size_t cap, int quant);
/* Drop one reference; the last frees. NULL is fine. */
void sb_vstore_release(sb_vstore *s);

/* out = x / |x| (zeros stay zeros); out may be x. Any thread. */
void sb_vec_normalize_into(float *out, const float *x, size_t d);
/* |a - b| in double precision. Any thread. */
double sb_vec_l2_exact(const float *a, const float *b, size_t d);

/* The matrix at idx (raises for anything else; may be closed). */
sb_vmat *sb_vec_checkmat(lua_State *L, int idx);
/* The matrix at idx or NULL. */
sb_vmat *sb_vec_testmat(lua_State *L, int idx);
/* Push a new matrix userdata with no store and the default knobs. */
sb_vmat *sb_vec_pushmat(lua_State *L);
/* nil, err{kind = "closed"}. */
int sb_vec_fail_closed(lua_State *L);
/* Can the running code park (inside a task, yieldable)? Else work runs inline. */
int sb_vec_can_park(lua_State *L);
/* Online CPUs, capped to VEC_MAX_PARTS. */
int sb_vec_ncpu(void);

/* vec_search.c: m:_search(q, k [, opts]), m:_search_many(Q, k [, opts]). */
int sb_vec_l_search(lua_State *L);
int sb_vec_l_search_many(lua_State *L);
/* vec_io.c: m:save(path), core.load(path). */
int sb_vec_l_save(lua_State *L);
int sb_vec_l_load(lua_State *L);

#endif /* SB_VECMAT_H */
