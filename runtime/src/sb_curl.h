/*
 * sb_curl.h -- libcurl, loaded on first use.
 *
 * Linking libcurl pulls some forty shared libraries (TLS, LDAP, SSH, IDN...)
 * into every process, which alone costs ~6 ms at start-up. Sibyl therefore
 * dlopen()s libcurl.so.4 on the first transfer that needs it (https, proxies,
 * compressed bodies: http_curl.c) and calls it
 * through this table. Include this header instead of <curl/curl.h>; the
 * usual curl_* names below resolve to the loaded functions.
 */
#ifndef SB_CURL_H
#define SB_CURL_H

#include <stddef.h>

#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

/* name, return type, parameters */
#define SB_CURL_FUNCS(X) \
    X(global_init, CURLcode, (long)) \
    X(version, char *, (void)) \
    X(multi_init, CURLM *, (void)) \
    X(multi_cleanup, CURLMcode, (CURLM *)) \
    X(multi_setopt, CURLMcode, (CURLM *, CURLMoption, ...)) \
    X(multi_add_handle, CURLMcode, (CURLM *, CURL *)) \
    X(multi_remove_handle, CURLMcode, (CURLM *, CURL *)) \
    X(multi_socket_action, CURLMcode, (CURLM *, curl_socket_t, int, int *)) \
    X(multi_info_read, CURLMsg *, (CURLM *, int *)) \
    X(multi_assign, CURLMcode, (CURLM *, curl_socket_t, void *)) \
    X(multi_strerror, const char *, (CURLMcode)) \
    X(easy_init, CURL *, (void)) \
    X(easy_cleanup, void, (CURL *)) \
    X(easy_reset, void, (CURL *)) \
    X(easy_setopt, CURLcode, (CURL *, CURLoption, ...)) \
    X(easy_getinfo, CURLcode, (CURL *, CURLINFO, ...)) \
    X(easy_pause, CURLcode, (CURL *, int)) \
    X(easy_strerror, const char *, (CURLcode)) \
    X(easy_escape, char *, (CURL *, const char *, int)) \
    X(free, void, (void *)) \
    X(slist_append, struct curl_slist *, (struct curl_slist *, const char *)) \
    X(slist_free_all, void, (struct curl_slist *))

#define SB_CURL_FIELD(name, ret, args) ret (*name) args;
typedef struct {
    SB_CURL_FUNCS(SB_CURL_FIELD)
} sb_curl_api;
#undef SB_CURL_FIELD

extern sb_curl_api sb_curl;

/* Load libcurl once per process (thread-safe). Returns 0, or -1 with a
 * message in err. */
int sb_curl_load(char *err, size_t errlen);

#ifndef SB_CURL_IMPL
/* curl.h wraps these in argument-count macros; ours replace them. */
#undef curl_easy_setopt
#undef curl_easy_getinfo
#undef curl_multi_setopt
#define curl_global_init sb_curl.global_init
#define curl_version sb_curl.version
#define curl_multi_init sb_curl.multi_init
#define curl_multi_cleanup sb_curl.multi_cleanup
#define curl_multi_setopt sb_curl.multi_setopt
#define curl_multi_add_handle sb_curl.multi_add_handle
#define curl_multi_remove_handle sb_curl.multi_remove_handle
#define curl_multi_socket_action sb_curl.multi_socket_action
#define curl_multi_info_read sb_curl.multi_info_read
#define curl_multi_assign sb_curl.multi_assign
#define curl_multi_strerror sb_curl.multi_strerror
#define curl_easy_init sb_curl.easy_init
#define curl_easy_cleanup sb_curl.easy_cleanup
#define curl_easy_reset sb_curl.easy_reset
#define curl_easy_setopt sb_curl.easy_setopt
#define curl_easy_getinfo sb_curl.easy_getinfo
#define curl_easy_pause sb_curl.easy_pause
#define curl_easy_strerror sb_curl.easy_strerror
#define curl_easy_escape sb_curl.easy_escape
#define curl_free sb_curl.free
#define curl_slist_append sb_curl.slist_append
#define curl_slist_free_all sb_curl.slist_free_all
#endif

#endif /* SB_CURL_H */
