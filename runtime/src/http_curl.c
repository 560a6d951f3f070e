/*
 * http_curl.c -- the libcurl engine of sibyl.http (sb_http.h): https,
 * HTTP/2, proxies and compressed bodies. libcurl's multi_socket API runs
 * on the runtime's libevent loop: one CURLM per runtime (connection cache,
 * DNS cache, HTTP/2 multiplexing), sockets and the timer mapped to libevent
 * events as in curl's docs/examples/multi-event.c.
 *
 * libcurl is dlopen()ed on the first transfer that needs it (sb_curl.h), so
 * scripts that only speak plain http never load it.
 *
 * Caveats: streaming applies back-pressure with CURL_WRITEFUNC_PAUSE when
 * more than SB_HTTP_STREAM_HIGH_WATER is buffered and unread. Easy handles
 * are recycled through a small free list (curl_easy_reset keeps nothing but
 * the memory). Redirects are left to http.lua.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/event_struct.h>

#include "sb_http.h"
#include "sb_curl.h"

#define FREE_HANDLES 64

typedef struct {
    sb_http *h;
    CURLM *multi;
    struct event timer;
    CURL *free_easy[FREE_HANDLES];
    int nfree;
    long running;               /* transfers inside the multi handle */
} curl_state;

typedef struct {
    struct event ev;
    curl_socket_t fd;
} sock_ctx;

typedef struct {
    curl_state *cs;
    CURL *easy;
    struct curl_slist *req_headers;
    int in_multi;
    char errbuf[CURL_ERROR_SIZE];
} curl_xfer;

/* --------------------------------------------------------- curl glue */

static const char *err_kind(CURLcode rc)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return "connect";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
        return "tls";
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return "url";
    default:
        return "http";
    }
}

static void check_multi_info(curl_state *cs)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(cs->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode res = msg->data.result;   /* read before remove_handle */
        sb_xfer *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        curl_multi_remove_handle(cs->multi, easy);
        if (x == NULL)
            continue;
        curl_xfer *cx = x->ed;
        cx->in_multi = 0;
        cs->running--;
        if (!x->status)
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &x->status);
        if (res == CURLE_OK) {
            sb_xfer_finish(x);
        } else if (!x->done) {          /* x->done: we failed it (too large) */
            const char *url = NULL;
            curl_easy_getinfo(easy, CURLINFO_EFFECTIVE_URL, &url);
            x->code = (long)res;
            sb_xfer_fail(x, err_kind(res), "%s: %s", url ? url : "request",
                         cx->errbuf[0] ? cx->errbuf : curl_easy_strerror(res));
        }
    }
}

static void event_cb(evutil_socket_t fd, short kind, void *arg)
{
    curl_state *cs = arg;
    int running;
    int action = ((kind & EV_READ) ? CURL_CSELECT_IN : 0) | ((kind & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(cs->multi, fd, action, &running);
    check_multi_info(cs);
}

static void timer_cb(evutil_socket_t fd, short kind, void *arg)
{
    curl_state *cs = arg;
    int running;
    SB_UNUSED(fd);
    SB_UNUSED(kind);
    curl_multi_socket_action(cs->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(cs);
}

static int multi_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    curl_state *cs = userp;
    SB_UNUSED(multi);
    if (timeout_ms < 0) {
        evtimer_del(&cs->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    event_base_update_cache_time(cs->h->rt->base);
    evtimer_add(&cs->timer, &tv);
    return 0;
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    curl_state *cs = userp;
    sock_ctx *ctx = socketp;
    SB_UNUSED(easy);
    if (what == CURL_POLL_REMOVE) {
        if (ctx) {
            event_del(&ctx->ev);
            free(ctx);
            curl_multi_assign(cs->multi, s, NULL);
        }
        return 0;
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    if (ctx == NULL) {
        ctx = calloc(1, sizeof *ctx);
        if (ctx == NULL)
            return -1;
        ctx->fd = s;
        curl_multi_assign(cs->multi, s, ctx);
    } else {
        event_del(&ctx->ev);
    }
    event_assign(&ctx->ev, cs->h->rt->base, s, kind, event_cb, cs);
    event_add(&ctx->ev, NULL);
    return 0;
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp)
{
    sb_xfer *x = userp;
    size_t len = size * n;
    if (x->streaming && x->len >= SB_HTTP_STREAM_HIGH_WATER) {
        x->paused = 1;
        return CURL_WRITEFUNC_PAUSE;
    }
    return sb_xfer_body(x, data, len) == 0 ? len : 0;   /* 0: CURLE_WRITE_ERROR, abort */
}

static size_t header_cb(char *data, size_t size, size_t n, void *userp)
{
    sb_xfer *x = userp;
    curl_xfer *cx = x->ed;
    size_t len = size * n;
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        sb_xfer_headers_reset(x);       /* a new response (100 Continue...) */
        return len;
    }
    size_t end = len;
    while (end > 0 && (data[end - 1] == '\r' || data[end - 1] == '\n'))
        end--;
    if (end == 0) {                     /* blank line: headers complete */
        long code = 0;
        curl_easy_getinfo(cx->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200 || code == 0)   /* not an interim 1xx */
            sb_xfer_headers_done(x, code);
        return len;
    }
    const char *colon = memchr(data, ':', end);
    if (colon == NULL)
        return len;
    const char *v = colon + 1;
    while (v < data + end && (*v == ' ' || *v == '\t'))
        v++;
    if (sb_xfer_header_part(x, 0, data, (size_t)(colon - data)) != 0 ||
        sb_xfer_header_part(x, 1, v, (size_t)(data + end - v)) != 0 ||
        sb_xfer_header_end(x) != 0)
        return 0;
    return len;
}

/* ------------------------------------------------------ module state */

static void multi_setup(curl_state *cs)
{
    sb_http *h = cs->h;
    curl_multi_setopt(cs->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(cs->multi, CURLMOPT_SOCKETDATA, cs);
    curl_multi_setopt(cs->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
    curl_multi_setopt(cs->multi, CURLMOPT_TIMERDATA, cs);
    curl_multi_setopt(cs->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, h->max_connections);
    curl_multi_setopt(cs->multi, CURLMOPT_MAX_HOST_CONNECTIONS, h->max_host_connections);
    curl_multi_setopt(cs->multi, CURLMOPT_MAXCONNECTS, h->max_connections);
}

void sb_http_curl_free(sb_http *h)
{
    curl_state *cs = h->curl;
    if (cs == NULL)
        return;
    for (int i = 0; i < cs->nfree; i++)
        curl_easy_cleanup(cs->free_easy[i]);
    evtimer_del(&cs->timer);
    curl_multi_cleanup(cs->multi);
    free(cs);
    h->curl = NULL;
}

void sb_http_curl_configure(sb_http *h, int lowered)
{
    curl_state *cs = h->curl;
    if (cs == NULL)
        return;
    if (lowered && cs->running == 0) {
        /* libcurl checks the limits only when it opens a connection: start a
         * fresh pool so idle connections above the new limits go now. */
        CURLM *fresh = curl_multi_init();
        if (fresh) {
            curl_multi_cleanup(cs->multi);
            cs->multi = fresh;
            evtimer_del(&cs->timer);
        }
    }
    multi_setup(cs);
}

const char *sb_http_curl_version(void)
{
    char err[256];
    return sb_curl_load(err, sizeof err) == 0 ? curl_version() : NULL;
}

static curl_state *get_state(sb_xfer *x)
{
    sb_http *h = x->h;
    if (h->curl)
        return h->curl;
    char err[256];
    if (sb_curl_load(err, sizeof err) != 0) {
        sb_xfer_fail(x, "url", "%s: %s; plain http:// URLs work without it", "sibyl.http", err);
        return NULL;
    }
    curl_state *cs = calloc(1, sizeof *cs);
    if (cs == NULL || (cs->multi = curl_multi_init()) == NULL) {
        free(cs);
        sb_xfer_fail(x, "http", "sibyl.http: out of memory");
        return NULL;
    }
    cs->h = h;
    evtimer_assign(&cs->timer, h->rt->base, timer_cb, cs);
    multi_setup(cs);
    h->curl = cs;
    return cs;
}

/* ------------------------------------------------------------ engine */

static void curl_stop(sb_xfer *x)
{
    curl_xfer *cx = x->ed;
    if (cx == NULL)
        return;
    curl_state *cs = cx->cs;
    if (cx->easy) {
        if (cx->in_multi) {
            curl_multi_remove_handle(cs->multi, cx->easy);
            cs->running--;
        }
        if (cs->nfree < FREE_HANDLES) {
            curl_easy_reset(cx->easy);
            cs->free_easy[cs->nfree++] = cx->easy;
        } else {
            curl_easy_cleanup(cx->easy);
        }
    }
    curl_slist_free_all(cx->req_headers);
    free(cx);
    x->ed = NULL;
}

static int curl_start(sb_xfer *x, const sb_http_req *r)
{
    curl_state *cs = get_state(x);
    if (cs == NULL)
        return -1;
    curl_xfer *cx = calloc(1, sizeof *cx);
    if (cx == NULL) {
        sb_xfer_fail(x, "http", "sibyl.http: out of memory");
        return -1;
    }
    cx->cs = cs;
    x->ed = cx;
    cx->easy = cs->nfree > 0 ? cs->free_easy[--cs->nfree] : curl_easy_init();
    if (cx->easy == NULL) {
        curl_stop(x);
        sb_xfer_fail(x, "http", "sibyl.http: out of memory");
        return -1;
    }
    CURL *e = cx->easy;
    curl_easy_setopt(e, CURLOPT_URL, r->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, cx->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (r->compressed)
        curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");   /* every encoding curl has */
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, (long)r->tls_verify);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, r->tls_verify ? 2L : 0L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(r->connect_timeout * 1000));
    if (r->timeout > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(r->timeout * 1000) + 1);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sibyl/" SIBYL_VERSION);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");

    if (strcmp(r->method, "GET") != 0) {
        if (strcmp(r->method, "HEAD") == 0)
            curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        else
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
    }
    if (r->body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);   /* pinned by the core */
        if (strcmp(r->method, "POST") == 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
    }
    for (int i = 0; i < r->nheaders; i++) {
        struct curl_slist *nl = curl_slist_append(cx->req_headers, r->headers[i]);
        if (nl == NULL) {
            curl_stop(x);
            sb_xfer_fail(x, "http", "sibyl.http: out of memory");
            return -1;
        }
        cx->req_headers = nl;
    }
    if (cx->req_headers)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, cx->req_headers);

    CURLMcode mc = curl_multi_add_handle(cs->multi, e);
    if (mc != CURLM_OK) {
        curl_stop(x);
        sb_xfer_fail(x, "http", "http: cannot start the transfer: %s", curl_multi_strerror(mc));
        return -1;
    }
    cx->in_multi = 1;
    cs->running++;
    return 0;
}

static void curl_resume(sb_xfer *x)
{
    curl_xfer *cx = x->ed;
    if (cx && cx->easy)
        curl_easy_pause(cx->easy, CURLPAUSE_CONT);
}

const sb_http_engine sb_http_curl = {"curl", curl_start, curl_stop, curl_resume};
