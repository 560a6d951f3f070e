/*
 * http_client.c -- libcurl's multi_socket API on the runtime's libevent loop;
 * the C half of `sibyl.http` (stdlib/sibyl/http.lua is the policy half).
 *
 *   core.request(o)  -> status, headers, body, url | nil, err  one park per request
 *                      (url: the final URL, only when redirects were followed)
 *                      (headers: one string of "name\0value\0" pairs)
 *   core.open(o)     -> transfer                             streaming
 *       t:headers()  -> status, headers, url | nil, err
 *       t:read()     -> chunk | nil (end) | nil, err
 *       t:close()
 *   core.configure{max_connections=, max_host_connections=}
 *
 * `o` is the already-normalised request: {url=, method=, headers={"K: v"...},
 * body=, timeout=, connect_timeout=, max_body=, follow=, max_redirects=,
 * tls_verify=}.
 *
 * Engine: one CURLM per runtime (connection cache, DNS cache, HTTP/2
 * multiplexing), sockets and the timer mapped to libevent events as in
 * curl's docs/examples/multi-event.c. curl callbacks never touch Lua: they
 * fill the transfer's buffers and complete the parked op; the scheduler
 * resumes the task. A transfer whose waiting task is cancelled or times out
 * is removed from the multi handle and freed at once: aborted on the wire.
 *
 * Caveats: streaming applies back-pressure with CURL_WRITEFUNC_PAUSE when
 * more than 1 MiB is buffered and unread. Easy handles are recycled through
 * a small free list (curl_easy_reset keeps nothing but the memory).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event_struct.h>

#include "sb.h"
#include "sb_curl.h"

#define SB_HTTP_DEFAULT_MAX_BODY   ((size_t)64 << 20)
#define SB_HTTP_STREAM_HIGH_WATER  ((size_t)1 << 20)
#define SB_HTTP_FREE_HANDLES       64

static char transfer_mt_key;

typedef struct sb_http {
    sibyl_rt *rt;
    CURLM *multi;
    struct event timer;
    CURL *free_easy[SB_HTTP_FREE_HANDLES];
    int nfree;
    long running;               /* transfers inside the multi handle */
    long max_connections, max_host_connections;
} sb_http;

typedef struct {
    struct event ev;
    curl_socket_t fd;
} sock_ctx;

enum { W_NONE, W_DONE, W_HEADERS, W_DATA };

typedef struct xfer {
    sb_http *h;
    CURL *easy;
    struct curl_slist *req_headers;
    int body_ref;               /* pins the request body string */
    sb_op *op;                  /* the parked op waiting on us, or NULL */
    int wait;                   /* what op waits for */
    int done, in_multi, streaming, paused, too_large, headers_done;
    CURLcode result;
    long status;
    char *buf;                  /* response body (or unread stream data) */
    size_t len, cap, max_body, total;
    char *hdr;                  /* "name\0value\0" pairs of the final response */
    size_t hlen, hcap;
    char errbuf[CURL_ERROR_SIZE];
} xfer;

typedef struct {
    xfer *x;                    /* NULL when the transfer went first (at close) */
    int what;                   /* W_DONE (core.request), W_HEADERS, W_DATA */
    int tref;                   /* pins the transfer userdata (t:read) */
} xfer_wait;

/* ------------------------------------------------------------- buffers */

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    char *nb = realloc(*buf, n);
    if (nb == NULL)
        return -1;
    *buf = nb;
    *cap = n;
    return 0;
}

/* ------------------------------------------------------- transfer life */

/* Complete the parked op if it waits for `what` (the end wakes everyone). */
static void xfer_wake(xfer *x, int what)
{
    if (x->op && (what == W_DONE || x->wait == what)) {
        sb_op *op = x->op;
        x->op = NULL;
        sb_op_done(op);
    }
}

/* Take the transfer out of the multi handle and release curl's resources.
 * Safe to call twice. Never from inside a curl callback. */
static void xfer_stop(xfer *x)
{
    if (x->easy == NULL)
        return;
    if (x->in_multi) {
        curl_multi_remove_handle(x->h->multi, x->easy);
        x->in_multi = 0;
        x->h->running--;
    }
    sb_http *h = x->h;
    if (h->nfree < SB_HTTP_FREE_HANDLES) {
        curl_easy_reset(x->easy);
        h->free_easy[h->nfree++] = x->easy;
    } else {
        curl_easy_cleanup(x->easy);
    }
    x->easy = NULL;
    curl_slist_free_all(x->req_headers);
    x->req_headers = NULL;
}

static void xfer_free(lua_State *L, xfer *x)
{
    if (x == NULL)
        return;
    xfer_stop(x);
    if (x->body_ref != LUA_NOREF && x->body_ref != LUA_REFNIL)
        luaL_unref(L, LUA_REGISTRYINDEX, x->body_ref);
    free(x->buf);
    free(x->hdr);
    free(x);
}

/* --------------------------------------------------------- curl glue */

static void check_multi_info(sb_http *h)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode res = msg->data.result;   /* read before remove_handle */
        xfer *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        curl_multi_remove_handle(h->multi, easy);
        if (x == NULL)
            continue;
        x->in_multi = 0;
        h->running--;
        x->done = 1;
        x->result = res;
        if (!x->status)
            curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &x->status);
        xfer_wake(x, W_DONE);
    }
}

static void event_cb(evutil_socket_t fd, short kind, void *arg)
{
    sb_http *h = arg;
    int running;
    int action = ((kind & EV_READ) ? CURL_CSELECT_IN : 0) | ((kind & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(h->multi, fd, action, &running);
    check_multi_info(h);
}

static void timer_cb(evutil_socket_t fd, short kind, void *arg)
{
    sb_http *h = arg;
    int running;
    SB_UNUSED(fd);
    SB_UNUSED(kind);
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(h);
}

static int multi_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    sb_http *h = userp;
    SB_UNUSED(multi);
    if (timeout_ms < 0) {
        evtimer_del(&h->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    event_base_update_cache_time(h->rt->base);
    evtimer_add(&h->timer, &tv);
    return 0;
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    sb_http *h = userp;
    sock_ctx *ctx = socketp;
    SB_UNUSED(easy);
    if (what == CURL_POLL_REMOVE) {
        if (ctx) {
            event_del(&ctx->ev);
            free(ctx);
            curl_multi_assign(h->multi, s, NULL);
        }
        return 0;
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    if (ctx == NULL) {
        ctx = calloc(1, sizeof *ctx);
        if (ctx == NULL)
            return -1;
        ctx->fd = s;
        curl_multi_assign(h->multi, s, ctx);
    } else {
        event_del(&ctx->ev);
    }
    event_assign(&ctx->ev, h->rt->base, s, kind, event_cb, h);
    event_add(&ctx->ev, NULL);
    return 0;
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp)
{
    xfer *x = userp;
    size_t len = size * n;
    if (x->streaming && x->len >= SB_HTTP_STREAM_HIGH_WATER) {
        x->paused = 1;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (x->total + len > x->max_body) {
        x->too_large = 1;
        return 0;                       /* CURLE_WRITE_ERROR: abort */
    }
    if (grow(&x->buf, &x->cap, x->len + len) != 0)
        return 0;
    memcpy(x->buf + x->len, data, len);
    x->len += len;
    x->total += len;
    if (x->streaming)
        xfer_wake(x, W_DATA);
    return len;
}

static size_t header_cb(char *data, size_t size, size_t n, void *userp)
{
    xfer *x = userp;
    size_t len = size * n;
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        x->hlen = 0;                    /* a new response (redirect, 100) */
        x->headers_done = 0;
        return len;
    }
    size_t end = len;
    while (end > 0 && (data[end - 1] == '\r' || data[end - 1] == '\n'))
        end--;
    if (end == 0) {                     /* blank line: headers complete */
        long code = 0;
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200 || code == 0) { /* not an interim 1xx */
            x->status = code;
            x->headers_done = 1;
            xfer_wake(x, W_HEADERS);
        }
        return len;
    }
    const char *colon = memchr(data, ':', end);
    if (colon == NULL)
        return len;
    size_t nlen = (size_t)(colon - data);
    const char *v = colon + 1;
    while (v < data + end && (*v == ' ' || *v == '\t'))
        v++;
    size_t vlen = (size_t)(data + end - v);
    if (grow(&x->hdr, &x->hcap, x->hlen + nlen + vlen + 2) != 0)
        return 0;
    for (size_t i = 0; i < nlen; i++)
        x->hdr[x->hlen + i] = (char)((data[i] >= 'A' && data[i] <= 'Z') ? data[i] + 32 : data[i]);
    x->hlen += nlen;
    x->hdr[x->hlen++] = '\0';
    memcpy(x->hdr + x->hlen, v, vlen);
    x->hlen += vlen;
    x->hdr[x->hlen++] = '\0';
    return len;
}

/* ------------------------------------------------------ module state */

static void multi_setup(sb_http *h)
{
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, multi_timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, h->max_connections);
    curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, h->max_host_connections);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, h->max_connections);
}

static void http_close(void *ud)
{
    sb_http *h = ud;
    for (int i = 0; i < h->nfree; i++)
        curl_easy_cleanup(h->free_easy[i]);
    evtimer_del(&h->timer);
    curl_multi_cleanup(h->multi);
    h->rt->http = NULL;
    free(h);
}

static sb_http *get_http(lua_State *L)
{
    sibyl_rt *rt = sb_rt(L);
    if (rt->http)
        return rt->http;
    sb_http *h = calloc(1, sizeof *h);
    if (h == NULL || (h->multi = curl_multi_init()) == NULL) {
        free(h);
        luaL_error(L, "sibyl.http: out of memory");
    }
    h->rt = rt;
    h->max_connections = 1024;
    h->max_host_connections = 256;
    evtimer_assign(&h->timer, rt->base, timer_cb, h);
    multi_setup(h);
    if (sb_rt_on_close(rt, http_close, h) != 0) {
        curl_multi_cleanup(h->multi);
        free(h);
        luaL_error(L, "sibyl.http: too many modules registered close hooks");
    }
    rt->http = h;
    return h;
}

/* --------------------------------------------------------- options */

static const char *opt_str(lua_State *L, int t, const char *k, const char *def)
{
    lua_getfield(L, t, k);
    const char *s = lua_isnil(L, -1) ? def : luaL_checkstring(L, -1);
    lua_pop(L, 1);
    return s;
}

static double opt_num(lua_State *L, int t, const char *k, double def)
{
    lua_getfield(L, t, k);
    double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static int opt_bool(lua_State *L, int t, const char *k, int def)
{
    lua_getfield(L, t, k);
    int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static CURL *take_easy(sb_http *h)
{
    return h->nfree > 0 ? h->free_easy[--h->nfree] : curl_easy_init();
}

/*
 * Build a transfer from the options table at index 1 and add it to the
 * multi handle. Raises for malformed options (programmer errors).
 */
static xfer *xfer_start(lua_State *L, int streaming)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sb_http *h = get_http(L);
    const char *url = opt_str(L, 1, "url", NULL);
    if (url == NULL)
        luaL_error(L, "http: opts.url is required");
    const char *method = opt_str(L, 1, "method", "GET");
    double timeout = opt_num(L, 1, "timeout", 0);
    double ctimeout = opt_num(L, 1, "connect_timeout", 10);
    double max_body = opt_num(L, 1, "max_body", (double)SB_HTTP_DEFAULT_MAX_BODY);
    int follow = opt_bool(L, 1, "follow", 1);
    long max_redirects = (long)opt_num(L, 1, "max_redirects", 5);
    int verify = opt_bool(L, 1, "tls_verify", 1);
    int compressed = opt_bool(L, 1, "compressed", 0);
    lua_getfield(L, 1, "body");
    if (!lua_isnil(L, -1) && !lua_isstring(L, -1))
        luaL_error(L, "http: opts.body must be a string (the Lua layer encodes tables)");
    lua_getfield(L, 1, "headers");
    if (!lua_isnil(L, -1)) {
        luaL_checktype(L, -1, LUA_TTABLE);
        for (int i = 1, n = (int)lua_objlen(L, -1); i <= n; i++) {
            lua_rawgeti(L, -1, i);
            if (!lua_isstring(L, -1))
                luaL_error(L, "http: opts.headers[%d] must be a \"Name: value\" string", i);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 2);
    if (streaming)
        max_body = 1e300;   /* streams are paced by back-pressure instead */

    /* A deadline in force caps curl's own timeout too. */
    double dl = sb_deadline(L);
    if (dl > 0) {
        double left = dl - sb_now();
        if (left < 0.001)
            left = 0.001;
        if (timeout <= 0 || left < timeout)
            timeout = left;
    }

    xfer *x = calloc(1, sizeof *x);
    if (x == NULL)
        luaL_error(L, "http: out of memory");
    x->h = h;
    x->body_ref = LUA_NOREF;
    x->streaming = streaming;
    x->max_body = max_body >= (double)SIZE_MAX ? SIZE_MAX : (size_t)max_body;
    x->easy = take_easy(h);
    if (x->easy == NULL) {
        free(x);
        luaL_error(L, "http: out of memory");
        return NULL;
    }
    CURL *e = x->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (compressed)
        curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");   /* every encoding curl has */
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, (long)follow);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, max_redirects);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, (long)verify);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(ctimeout * 1000));
    if (timeout > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000) + 1);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sibyl/" SIBYL_VERSION);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");

    if (strcmp(method, "GET") != 0) {
        if (strcmp(method, "HEAD") == 0)
            curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        else
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    lua_getfield(L, 1, "body");
    if (!lua_isnil(L, -1)) {
        size_t blen;
        const char *body = lua_tolstring(L, -1, &blen);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        x->body_ref = luaL_ref(L, LUA_REGISTRYINDEX);   /* pops */
        if (strcmp(method, "POST") == 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
    } else {
        lua_pop(L, 1);
    }
    lua_getfield(L, 1, "headers");
    if (lua_istable(L, -1)) {
        int n = (int)lua_objlen(L, -1);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            struct curl_slist *nl = curl_slist_append(x->req_headers, lua_tostring(L, -1));
            lua_pop(L, 1);
            if (nl == NULL) {
                lua_pop(L, 1);
                xfer_free(L, x);
                luaL_error(L, "http: out of memory");
                return NULL;
            }
            x->req_headers = nl;
        }
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->req_headers);
    }
    lua_pop(L, 1);

    CURLMcode mc = curl_multi_add_handle(h->multi, e);
    if (mc != CURLM_OK) {
        xfer_free(L, x);
        luaL_error(L, "http: cannot start the transfer: %s", curl_multi_strerror(mc));
        return NULL;
    }
    x->in_multi = 1;
    h->running++;
    return x;
}

/* ------------------------------------------------------------ results */

static const char *err_kind(xfer *x)
{
    if (x->too_large)
        return "too_large";
    switch (x->result) {
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

/* Push nil, err describing a failed transfer. */
static int push_xfer_error(lua_State *L, xfer *x)
{
    const char *url = NULL;
    if (x->easy)
        curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
    if (x->too_large)
        return sb_fail(L, "too_large", "response body from %s exceeds max_body (%zu bytes); "
                                       "raise opts.max_body or stream it", url ? url : "?", x->max_body);
    const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->result);
    sb_fail(L, err_kind(x), "%s: %s", url ? url : "request", detail);
    lua_pushinteger(L, (lua_Integer)x->result);
    lua_setfield(L, -2, "curl_code");
    return 2;
}

/* Push the response headers as one string of "name\0value\0" pairs (names
 * lower-cased): one allocation per response; http.lua splits it only if the
 * caller looks at res.headers. */
static void push_headers(lua_State *L, xfer *x)
{
    lua_pushlstring(L, x->hdr ? x->hdr : "", x->hlen);
}

/* Push the URL the response came from when redirects were followed, else
 * nil (the caller knows the URL it asked for: no string per request). */
static void push_effective_url(lua_State *L, xfer *x)
{
    const char *url = NULL;
    long redirects = 0;
    if (x->easy && curl_easy_getinfo(x->easy, CURLINFO_REDIRECT_COUNT, &redirects) == CURLE_OK &&
        redirects > 0)
        curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url);
    if (url)
        lua_pushstring(L, url);
    else
        lua_pushnil(L);
}

/* ----------------------------------------------------- core.request */

static int push_request(lua_State *co, void *data)
{
    xfer_wait *w = data;
    xfer *x = w->x;
    int n;
    if (x->result != CURLE_OK || x->too_large) {
        n = push_xfer_error(co, x);
    } else {
        lua_pushinteger(co, x->status);
        push_headers(co, x);
        lua_pushlstring(co, x->buf ? x->buf : "", x->len);
        push_effective_url(co, x);
        n = 4;
    }
    xfer_free(co, x);
    return n;
}

static void cancel_request(void *data)
{
    xfer_wait *w = data;
    xfer_free(sb_op_rt(sb_op_from_data(data))->L, w->x);   /* aborts it on the wire */
}

static int l_request(lua_State *L)
{
    if (sb_rt(L)->current == NULL)
        return luaL_error(L, "http.request does I/O and must run inside a task "
                             "(use sibyl.spawn(fn) or sibyl.run(fn))");
    xfer *x = xfer_start(L, 0);         /* raises only before allocating */
    sb_op *op = sb_op_new(L, sizeof(xfer_wait), push_request, cancel_request);
    xfer_wait *w = sb_op_data(op);
    w->x = x;
    w->what = W_DONE;
    w->tref = LUA_NOREF;
    x->op = op;
    x->wait = W_DONE;
    return sb_op_park(L, op);
}

/* ------------------------------------------------- streaming transfers */

typedef struct {
    xfer *x;
    int closed;
} transfer_ud;

static transfer_ud *check_transfer(lua_State *L)
{
    return sb_checkudata(L, 1, &transfer_mt_key, "sibyl.http.transfer");
}

static int transfer_close(lua_State *L)
{
    transfer_ud *t = check_transfer(L);
    if (t->x) {
        if (t->x->op)
            return luaL_error(L, "http: cannot close a transfer while a task waits on it");
        xfer_free(L, t->x);
        t->x = NULL;
    }
    t->closed = 1;
    return 0;
}

static int transfer_gc(lua_State *L)
{
    transfer_ud *t = lua_touserdata(L, 1);
    if (t->x) {
        if (t->x->op)      /* only at close: the waiting task is torn down later */
            ((xfer_wait *)sb_op_data(t->x->op))->x = NULL;
        xfer_free(L, t->x);
        t->x = NULL;
    }
    return 0;
}

static int transfer_tostring(lua_State *L)
{
    transfer_ud *t = check_transfer(L);
    lua_pushstring(L, t->x ? "sibyl.http.transfer" : "sibyl.http.transfer (closed)");
    return 1;
}

static int l_open(lua_State *L)
{
    xfer *x = xfer_start(L, 1);
    transfer_ud *t = lua_newuserdata(L, sizeof *t);
    t->x = x;
    t->closed = 0;
    sb_getmeta(L, &transfer_mt_key);
    lua_setmetatable(L, -2);
    return 1;
}

static int push_headers_result(lua_State *co, xfer *x)
{
    if (!x->headers_done) {
        if (x->done && (x->result != CURLE_OK || x->too_large))
            return push_xfer_error(co, x);
        lua_pushnil(co);
        sb_pusherror(co, "http", "http: the response ended without headers");
        return 2;
    }
    lua_pushinteger(co, x->status);
    push_headers(co, x);
    push_effective_url(co, x);
    return 3;
}

/* Push the next chunk, nil at the end, or nil, err. Resumes a paused
 * transfer once its buffer has been handed over. */
static int push_read_result(lua_State *co, xfer *x)
{
    if (x->len > 0) {
        lua_pushlstring(co, x->buf, x->len);
        x->len = 0;
        if (x->paused && x->easy) {
            x->paused = 0;
            curl_easy_pause(x->easy, CURLPAUSE_CONT);
        }
        return 1;
    }
    if (x->done && (x->result != CURLE_OK || x->too_large))
        return push_xfer_error(co, x);
    lua_pushnil(co);
    return 1;
}

static int push_transfer_wait(lua_State *co, void *data)
{
    xfer_wait *w = data;
    luaL_unref(co, LUA_REGISTRYINDEX, w->tref);
    return w->what == W_HEADERS ? push_headers_result(co, w->x) : push_read_result(co, w->x);
}

/* The waiting task died or timed out: abort the transfer on the wire. */
static void cancel_transfer_wait(void *data)
{
    xfer_wait *w = data;
    lua_State *L = sb_op_rt(sb_op_from_data(data))->L;
    if (w->x) {
        w->x->op = NULL;
        xfer_stop(w->x);
        w->x->done = 1;
        w->x->result = CURLE_ABORTED_BY_CALLBACK;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, w->tref);
}

static int transfer_wait(lua_State *L, int what)
{
    transfer_ud *t = check_transfer(L);
    xfer *x = t->x;
    if (x == NULL)
        return sb_fail(L, "closed", "http: the transfer is closed");
    if (x->op)
        return luaL_error(L, "http: another task is already waiting on this transfer");
    int ready = what == W_HEADERS ? (x->headers_done || x->done) : (x->len > 0 || x->done);
    if (ready)
        return what == W_HEADERS ? push_headers_result(L, x) : push_read_result(L, x);
    sb_op *op = sb_op_new(L, sizeof(xfer_wait), push_transfer_wait, cancel_transfer_wait);
    xfer_wait *w = sb_op_data(op);
    w->x = x;
    w->what = what;
    lua_pushvalue(L, 1);
    w->tref = luaL_ref(L, LUA_REGISTRYINDEX);
    x->op = op;
    x->wait = what;
    return sb_op_park(L, op);
}

static int transfer_headers(lua_State *L) { return transfer_wait(L, W_HEADERS); }
static int transfer_read(lua_State *L) { return transfer_wait(L, W_DATA); }

/* ------------------------------------------------------------ configure */

static int l_configure(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sb_http *h = get_http(L);
    long total = (long)opt_num(L, 1, "max_connections", (double)h->max_connections);
    long host = (long)opt_num(L, 1, "max_host_connections", (double)h->max_host_connections);
    luaL_argcheck(L, total >= 0 && host >= 0, 1, "limits must be >= 0 (0 = unlimited)");
    int lowered = total < h->max_connections || host < h->max_host_connections;
    h->max_connections = total;
    h->max_host_connections = host;
    if (lowered && h->running == 0) {
        /* libcurl checks the limits only when it opens a connection: start a
         * fresh pool so idle connections above the new limits go now. */
        CURLM *fresh = curl_multi_init();
        if (fresh) {
            curl_multi_cleanup(h->multi);
            h->multi = fresh;
            evtimer_del(&h->timer);
        }
    }
    multi_setup(h);
    lua_createtable(L, 0, 2);
    lua_pushnumber(L, (lua_Number)h->max_connections);
    lua_setfield(L, -2, "max_connections");
    lua_pushnumber(L, (lua_Number)h->max_host_connections);
    lua_setfield(L, -2, "max_host_connections");
    return 1;
}

static int l_escape(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char *e = curl_easy_escape(NULL, s, (int)len);
    if (e == NULL)
        return luaL_error(L, "http: out of memory");
    lua_pushstring(L, e);
    curl_free(e);
    return 1;
}

static const luaL_Reg transfer_methods[] = {
    {"headers", transfer_headers},
    {"read", transfer_read},
    {"close", transfer_close},
    {"__gc", transfer_gc},
    {"__tostring", transfer_tostring},
    {NULL, NULL}
};

static const luaL_Reg core_funcs[] = {
    {"request", l_request},
    {"open", l_open},
    {"configure", l_configure},
    {"escape", l_escape},
    {NULL, NULL}
};

int luaopen_sibyl_http_core(lua_State *L)
{
    char err[256];
    if (sb_curl_load(err, sizeof err) != 0)
        return luaL_error(L, "sibyl.http: %s", err);
    sb_newmeta(L, &transfer_mt_key, "sibyl.http.transfer");
    luaL_setfuncs(L, transfer_methods, 0);
    lua_pop(L, 1);
    luaL_newlib(L, core_funcs);
    lua_pushstring(L, curl_version());
    lua_setfield(L, -2, "curl_version");
    return 1;
}
