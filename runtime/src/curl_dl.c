/*
 * curl_dl.c -- dlopen libcurl on first use (see sb_curl.h for why).
 *
 * Caveat: the library stays loaded for the life of the process, and
 * curl_global_init runs once, under a pthread_once, so runtimes on several
 * threads may require sibyl.http concurrently.
 */
#define SB_CURL_IMPL 1
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "sb_curl.h"

sb_curl_api sb_curl;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[256];

static void load(void)
{
    static const char *names[] = {"libcurl.so.4", "libcurl.so", "libcurl-gnutls.so.4"};
    void *lib = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && lib == NULL; i++)
        lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        snprintf(load_error, sizeof load_error, "cannot load libcurl (%s); install it "
                 "(Debian: libcurl4)", dlerror());
        return;
    }
#define SB_CURL_SYM(name, ret, args) \
    *(void **)&sb_curl.name = dlsym(lib, "curl_" #name); \
    if (sb_curl.name == NULL) { \
        snprintf(load_error, sizeof load_error, "libcurl lacks curl_%s: it is too old", #name); \
        return; \
    }
    SB_CURL_FUNCS(SB_CURL_SYM)
#undef SB_CURL_SYM
    if (sb_curl.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        snprintf(load_error, sizeof load_error, "curl_global_init failed");
}

int sb_curl_load(char *err, size_t errlen)
{
    pthread_once(&once, load);
    if (load_error[0]) {
        snprintf(err, errlen, "%s", load_error);
        return -1;
    }
    return 0;
}
