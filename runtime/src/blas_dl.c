/*
 * blas_dl.c -- dlopen OpenBLAS on first use (see sb_blas.h for why).
 *
 * OPENBLAS_NUM_THREADS is set to 1 before loading unless the user set it:
 * sibyl.vec splits large searches over its own worker pool, and OpenBLAS's
 * own threads would compete with it on small machines.
 */
#define SB_BLAS_IMPL 1
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "sb_blas.h"

sb_blas_api sb_blas;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[256];

static void no_threads(int n) { (void)n; }
static int one_thread(void) { return 1; }

static void load(void)
{
    static const char *names[] = {"libopenblas.so.0", "libopenblas.so", "libblas.so.3"};
    setenv("OPENBLAS_NUM_THREADS", "1", 0);
    void *lib = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && lib == NULL; i++)
        lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        snprintf(load_error, sizeof load_error, "cannot load OpenBLAS (%s); install it "
                 "(Debian: libopenblas0)", dlerror());
        return;
    }
    *(void **)&sb_blas.sgemv = dlsym(lib, "cblas_sgemv");
    *(void **)&sb_blas.sgemm = dlsym(lib, "cblas_sgemm");
    *(void **)&sb_blas.set_num_threads = dlsym(lib, "openblas_set_num_threads");
    *(void **)&sb_blas.get_num_threads = dlsym(lib, "openblas_get_num_threads");
    if (sb_blas.sgemv == NULL || sb_blas.sgemm == NULL)
        snprintf(load_error, sizeof load_error, "the BLAS library lacks cblas_sgemv/cblas_sgemm");
    if (sb_blas.set_num_threads == NULL)        /* a reference BLAS: single-threaded anyway */
        sb_blas.set_num_threads = no_threads;
    if (sb_blas.get_num_threads == NULL)
        sb_blas.get_num_threads = one_thread;
}

int sb_blas_load(char *err, size_t errlen)
{
    pthread_once(&once, load);
    if (load_error[0]) {
        snprintf(err, errlen, "%s", load_error);
        return -1;
    }
    return 0;
}
