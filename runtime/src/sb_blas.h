/*
 * sb_blas.h -- OpenBLAS, loaded on first use.
 *
 * Linking OpenBLAS into every process costs ~10 ms at start-up and starts
 * its thread pool, whose idle threads spin on sched_yield. Sibyl therefore
 * dlopen()s libopenblas.so.0 the first time sibyl.vec needs BLAS and calls
 * the few functions it uses through this table. Include this header instead
 * of <cblas.h>.
 */
#ifndef SB_BLAS_H
#define SB_BLAS_H

#include <stddef.h>

#include <cblas.h>

typedef struct {
    void (*sgemv)(const enum CBLAS_ORDER, const enum CBLAS_TRANSPOSE, const blasint, const blasint,
                  const float, const float *, const blasint, const float *, const blasint,
                  const float, float *, const blasint);
    void (*sgemm)(const enum CBLAS_ORDER, const enum CBLAS_TRANSPOSE, const enum CBLAS_TRANSPOSE,
                  const blasint, const blasint, const blasint, const float, const float *,
                  const blasint, const float *, const blasint, const float, float *, const blasint);
    void (*set_num_threads)(int);
    int (*get_num_threads)(void);
} sb_blas_api;

extern sb_blas_api sb_blas;

/* Load OpenBLAS once per process (thread-safe). Returns 0, or -1 with a
 * message in err. */
int sb_blas_load(char *err, size_t errlen);

#ifndef SB_BLAS_IMPL
#define cblas_sgemv sb_blas.sgemv
#define cblas_sgemm sb_blas.sgemm
#define openblas_set_num_threads sb_blas.set_num_threads
#define openblas_get_num_threads sb_blas.get_num_threads
#endif

#endif
