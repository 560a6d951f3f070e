/*
 * http_client.c -- the C half of `sibyl.http` (stdlib/sibyl/http.lua is the
 * policy half: options, JSON bodies, redirects, SSE): transfers, the tasks
 * waiting on them, and the choice of engine (see sb_http.h).
 *
 *   core.request(o)  -> status, headers, body | nil, err   one park per request
 *                      (headers: one string of "name\0value\0" pairs)
 *   core.open(o)     -> transfer                           streaming
 *       t:headers()  -> status, headers | nil, err
 *       t:read()     -> chunk | nil (end) | nil, err
 *       t:close()
 *   core.configure{max_connections=, max_host_connections=, engine=}
 *   core.escape(s), core.engine(url [, compressed]) -> "h1" | "curl"
 *
 * `o` is the already-normalised request: {url=, method=, headers={"K: v"...},
 * body=, timeout=, connect_timeout=, max_body=, tls_verify=, compressed=,
 * engine=}. Redirects are followed by http.lua, the same way for both
 * engines.
 *
 * Engine choice ("auto"): plain http:// URLs without credentials in them go
 * to the h1 engine unless a proxy is configured in the environment or the
 * caller asks for a compressed body; everything else goes to libcurl, which
 * is dlopen()ed on first use (sb_curl.h).
 *
 * A transfer whose waiting task is cancelled or times out is stopped by its
 * engine at once: aborted on the wire, its connection closed.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sb_http.h"

#define SB_HTTP_DEFAULT_MAX_BODY ((size_t)64 << 20)

static char transfer_mt_key;

typedef struct {
    sb_xfer *x;                 /* NULL when the transfer went first (at close) */
    int what;                   /* SB_W_DONE (core.request), SB_W_HEADERS, SB_W_DATA */
    int tref;                   /* pins the transfer userdata (t:read) */
} xfer_wait;

/* ------------------------------------------------------ engine helpers */

int sb_http_grow(char **buf, size_t *cap, size_t need)
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

/* Complete the parked op if it waits for `what` (the end wakes everyone). */
static void xfer_wake(sb_xfer *x, int what)
{
    if (x->op && (what == SB_W_DONE || x->wait == what)) {
        sb_op *op = x->op;
        x->op = NULL;
        sb_op_done(op);
    }
}

void sb_xfer_fail(sb_xfer *x, const char *kind, const char *fmt, ...)
{
    if (x->done)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->emsg, sizeof x->emsg, fmt, ap);
    va_end(ap);
    x->ekind = kind;
    x->done = 1;
    xfer_wake(x, SB_W_DONE);
}

void sb_xfer_finish(sb_xfer *x)
{
    if (x->done)
        return;
    x->done = 1;
    xfer_wake(x, SB_W_DONE);
}

int sb_xfer_body(sb_xfer *x, const char *data, size_t len)
{
    if (x->total + len > x->max_body) {
        sb_xfer_fail(x, "too_large", "response body from %s exceeds max_body (%zu bytes); "
                     "raise opts.max_body or stream it", x->url, x->max_body);
        return -1;
    }
    if (sb_http_grow(&x->buf, &x->cap, x->len + len) != 0) {
        sb_xfer_fail(x, "http", "out of memory for a %zu-byte response body", x->len + len);
        return -1;
    }
    memcpy(x->buf + x->len, data, len);
    x->len += len;
    x->total += len;
    if (x->streaming)
        xfer_wake(x, SB_W_DATA);
    return 0;
}

static int hdr_put(sb_xfer *x, const char *s, size_t len, int lower)
{
    if (sb_http_grow(&x->hdr, &x->hcap, x->hlen + len + 2) != 0)
        return -1;
    char *d = x->hdr + x->hlen;
    if (lower) {
        for (size_t i = 0; i < len; i++)
            d[i] = (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i]);
    } else {
        memcpy(d, s, len);
    }
    x->hlen += len;
    return 0;
}

int sb_xfer_header_part(sb_xfer *x, int part, const char *s, size_t len)
{
    if (part == 1 && x->hpart == 0) {
        x->hdr[x->hlen++] = '\0';           /* the name ends (hdr_put kept room) */
        x->hvstart = x->hlen;
    }
    else if (part == 1 && x->hpart < 0)
        return 0;                           /* a value without a name: drop it */
    x->hpart = part;
    return hdr_put(x, s, len, part == 0);
}

int sb_xfer_header_end(sb_xfer *x)
{
    if (x->hpart < 0)
        return 0;
    if (sb_http_grow(&x->hdr, &x->hcap, x->hlen + 2) != 0)
        return -1;
    if (x->hpart == 0)
        x->hdr[x->hlen++] = '\0';           /* a name without a value */
    else
        while (x->hlen > x->hvstart && (x->hdr[x->hlen - 1] == ' ' || x->hdr[x->hlen - 1] == '\t'))
            x->hlen--;                      /* trailing blanks are not part of a value */
    x->hdr[x->hlen++] = '\0';
    x->hpart = -1;
    return 0;
}

void sb_xfer_headers_reset(sb_xfer *x)
{
    x->hlen = 0;
    x->hpart = -1;
    x->headers_done = 0;
}

void sb_xfer_headers_done(sb_xfer *x, long status)
{
    sb_xfer_header_end(x);
    x->status = status;
    x->headers_done = 1;
    xfer_wake(x, SB_W_HEADERS);
}

/* ------------------------------------------------------ transfer life */

static void xfer_free(lua_State *L, sb_xfer *x)
{
    if (x == NULL)
        return;
    if (x->eng)
        x->eng->stop(x);
    if (x->body_ref != LUA_NOREF && x->body_ref != LUA_REFNIL)
        luaL_unref(L, LUA_REGISTRYINDEX, x->body_ref);
    free(x->buf);
    free(x->hdr);
    free(x->url);
    free(x);
}

static void http_close(void *ud)
{
    sb_http *h = ud;
    sb_http_h1_free(h);
    sb_http_curl_free(h);
    h->rt->http = NULL;
    free(h);
}

static sb_http *get_http(lua_State *L)
{
    sibyl_rt *rt = sb_rt(L);
    if (rt->http)
        return rt->http;
    sb_http *h = calloc(1, sizeof *h);
    if (h == NULL)
        luaL_error(L, "sibyl.http: out of memory");
    h->rt = rt;
    h->max_connections = 1024;
    h->max_host_connections = 256;
    if (sb_rt_on_close(rt, http_close, h) != 0) {
        free(h);
        luaL_error(L, "sibyl.http: too many modules registered close hooks");
    }
    rt->http = h;
    return h;
}

/* --------------------------------------------------------- options */

/* A proxy in the environment sends plain http through libcurl, which knows
 * proxies and no_proxy. Read on every request (three getenv calls). */
static int env_proxy(void)
{
    static const char *vars[] = {"http_proxy", "all_proxy", "ALL_PROXY"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return 1;
    }
    return 0;
}

/* Can the h1 engine take this URL? http://host[:port][/path], no userinfo,
 * no spaces or control bytes (libcurl gives those their precise errors). */
static int h1_can(const char *url)
{
    if (strncasecmp(url, "http://", 7) != 0)
        return 0;
    const char *auth = url + 7;
    size_t alen = strcspn(auth, "/?#");
    if (memchr(auth, '@', alen) != NULL || alen == 0)
        return 0;
    for (const unsigned char *p = (const unsigned char *)url; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return 0;
    return 1;
}

static const sb_http_engine *pick_engine(sb_http *h, const char *url, const char *want,
                                         int compressed)
{
    if (want && strcmp(want, "curl") == 0)
        return &sb_http_curl;
    if (want && strcmp(want, "h1") == 0)
        return &sb_http_h1;     /* the engine itself rejects what it cannot do */
    if (h->prefer_curl || compressed || !h1_can(url) || env_proxy())
        return &sb_http_curl;
    return &sb_http_h1;
}

static const char *check_engine_name(lua_State *L, int t)
{
    const char *e = sb_opt_str(L, t, "engine", NULL);
    if (e && strcmp(e, "auto") != 0 && strcmp(e, "curl") != 0 && strcmp(e, "h1") != 0)
        luaL_error(L, "http: opts.engine must be \"auto\", \"h1\" or \"curl\", not \"%s\"", e);
    return e && strcmp(e, "auto") == 0 ? NULL : e;
}

/*
 * Build a transfer from the options table at index 1 and start it. Raises
 * for malformed options (programmer errors); a transfer that cannot start
 * comes back already failed.
 */
static sb_xfer *xfer_start(lua_State *L, int streaming)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sb_http *h = get_http(L);
    sb_http_req r;
    memset(&r, 0, sizeof r);
    r.url = sb_opt_str(L, 1, "url", NULL);
    if (r.url == NULL)
        luaL_error(L, "http: opts.url is required");
    r.method = sb_opt_str(L, 1, "method", "GET");
    r.timeout = sb_opt_num(L, 1, "timeout", 0);
    r.connect_timeout = sb_opt_num(L, 1, "connect_timeout", 10);
    double max_body = sb_opt_num(L, 1, "max_body", (double)SB_HTTP_DEFAULT_MAX_BODY);
    r.tls_verify = sb_opt_bool(L, 1, "tls_verify", 1);
    r.compressed = sb_opt_bool(L, 1, "compressed", 0);
    const char *want = check_engine_name(L, 1);
    if (strspn(r.method, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != strlen(r.method) || !*r.method)
        luaL_error(L, "http: opts.method must be upper-case letters, not \"%s\"", r.method);

    lua_getfield(L, 1, "body");
    if (!lua_isnil(L, -1) && !lua_isstring(L, -1))
        luaL_error(L, "http: opts.body must be a string (the Lua layer encodes tables)");
    lua_getfield(L, 1, "headers");
    const char *small[32];
    const char **lines = small;
    if (!lua_isnil(L, -1)) {
        luaL_checktype(L, -1, LUA_TTABLE);
        int n = (int)lua_objlen(L, -1);
        if (n > (int)(sizeof small / sizeof small[0]))
            lines = lua_newuserdata(L, sizeof(char *) * (size_t)n);   /* freed by the GC */
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, 3, i);     /* opts, body, headers */
            const char *s = lua_tostring(L, -1);
            if (s == NULL || lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "http: opts.headers[%d] must be a \"Name: value\" string", i);
            if (strpbrk(s, "\r\n") != NULL)
                luaL_error(L, "http: header %d contains a line break; remove CR/LF from header values", i);
            lines[i - 1] = s;           /* stays alive: the headers table is on the stack */
            lua_pop(L, 1);
        }
        r.headers = lines;
        r.nheaders = n;
    }
    if (streaming)
        max_body = 1e300;   /* streams are paced by back-pressure instead */

    /* A deadline in force caps the engine's own timeout too. */
    double dl = sb_deadline(L);
    if (dl > 0) {
        double left = dl - sb_now();
        if (left < 0.001)
            left = 0.001;
        if (r.timeout <= 0 || left < r.timeout)
            r.timeout = left;
    }

    sb_xfer *x = calloc(1, sizeof *x);
    if (x == NULL || (x->url = strdup(r.url)) == NULL) {
        free(x);
        luaL_error(L, "http: out of memory");
    }
    x->h = h;
    x->body_ref = LUA_NOREF;
    x->hpart = -1;
    x->streaming = streaming;
    x->max_body = max_body >= (double)SIZE_MAX ? SIZE_MAX : (size_t)max_body;

    lua_pushvalue(L, 2);                            /* the body */
    if (!lua_isnil(L, -1)) {
        r.body = lua_tolstring(L, -1, &r.body_len);
        x->body_ref = luaL_ref(L, LUA_REGISTRYINDEX);   /* pops */
    } else {
        lua_pop(L, 1);
    }

    const sb_http_engine *eng = pick_engine(h, r.url, want, r.compressed);
    if (eng->start(x, &r) == 0)
        x->eng = eng;
    else
        x->done = 1;                    /* failed at once; ekind/emsg say why */
    lua_settop(L, 1);
    return x;
}

/* ------------------------------------------------------------ results */

/* Push nil, err describing a failed transfer. */
static int push_xfer_error(lua_State *L, sb_xfer *x)
{
    sb_fail(L, x->ekind ? x->ekind : "http", "%s", x->emsg);
    if (x->code) {
        lua_pushinteger(L, (lua_Integer)x->code);
        lua_setfield(L, -2, "curl_code");
    }
    return 2;
}

/* Push the response headers as one string of "name\0value\0" pairs (names
 * lower-cased): one allocation per response; http.lua splits it only if the
 * caller looks at res.headers. */
static void push_headers(lua_State *L, sb_xfer *x)
{
    lua_pushlstring(L, x->hdr ? x->hdr : "", x->hlen);
}

/* ----------------------------------------------------- core.request */

static int push_request(lua_State *co, void *data)
{
    xfer_wait *w = data;
    sb_xfer *x = w->x;
    int n;
    if (x->ekind) {
        n = push_xfer_error(co, x);
    } else {
        lua_pushinteger(co, x->status);
        push_headers(co, x);
        lua_pushlstring(co, x->buf ? x->buf : "", x->len);
        n = 3;
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
    sb_xfer *x = xfer_start(L, 0);      /* raises only before allocating */
    if (x->done) {
        int n = push_xfer_error(L, x);
        xfer_free(L, x);
        return n;
    }
    sb_op *op = sb_op_new(L, sizeof(xfer_wait), push_request, cancel_request);
    xfer_wait *w = sb_op_data(op);
    w->x = x;
    w->what = SB_W_DONE;
    w->tref = LUA_NOREF;
    x->op = op;
    x->wait = SB_W_DONE;
    return sb_op_park(L, op);
}

/* ------------------------------------------------- streaming transfers */

typedef struct {
    sb_xfer *x;
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
    sb_xfer *x = xfer_start(L, 1);
    transfer_ud *t = lua_newuserdata(L, sizeof *t);
    t->x = x;
    t->closed = 0;
    sb_getmeta(L, &transfer_mt_key);
    lua_setmetatable(L, -2);
    return 1;
}

static int push_headers_result(lua_State *co, sb_xfer *x)
{
    if (!x->headers_done) {
        if (x->done && x->ekind)
            return push_xfer_error(co, x);
        lua_pushnil(co);
        sb_pusherror(co, "http", "http: the response ended without headers");
        return 2;
    }
    lua_pushinteger(co, x->status);
    push_headers(co, x);
    return 2;
}

/* Push the next chunk, nil at the end, or nil, err. Resumes a paused
 * transfer once its buffer has been handed over. */
static int push_read_result(lua_State *co, sb_xfer *x)
{
    if (x->len > 0) {
        lua_pushlstring(co, x->buf, x->len);
        x->len = 0;
        if (x->paused && x->eng) {
            x->paused = 0;
            x->eng->resume(x);
        }
        return 1;
    }
    if (x->done && x->ekind)
        return push_xfer_error(co, x);
    lua_pushnil(co);
    return 1;
}

static int push_transfer_wait(lua_State *co, void *data)
{
    xfer_wait *w = data;
    luaL_unref(co, LUA_REGISTRYINDEX, w->tref);
    return w->what == SB_W_HEADERS ? push_headers_result(co, w->x) : push_read_result(co, w->x);
}

/* The waiting task died or timed out: abort the transfer on the wire. */
static void cancel_transfer_wait(void *data)
{
    xfer_wait *w = data;
    lua_State *L = sb_op_rt(sb_op_from_data(data))->L;
    if (w->x) {
        w->x->op = NULL;
        if (w->x->eng)
            w->x->eng->stop(w->x);
        w->x->eng = NULL;
        if (!w->x->done) {
            w->x->done = 1;
            w->x->ekind = "cancelled";
            snprintf(w->x->emsg, sizeof w->x->emsg, "http: the transfer was aborted");
        }
    }
    luaL_unref(L, LUA_REGISTRYINDEX, w->tref);
}

static int transfer_wait(lua_State *L, int what)
{
    transfer_ud *t = check_transfer(L);
    sb_xfer *x = t->x;
    if (x == NULL)
        return sb_fail(L, "closed", "http: the transfer is closed");
    if (x->op)
        return luaL_error(L, "http: another task is already waiting on this transfer");
    int ready = what == SB_W_HEADERS ? (x->headers_done || x->done) : (x->len > 0 || x->done);
    if (ready)
        return what == SB_W_HEADERS ? push_headers_result(L, x) : push_read_result(L, x);
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

static int transfer_headers(lua_State *L) { return transfer_wait(L, SB_W_HEADERS); }
static int transfer_read(lua_State *L) { return transfer_wait(L, SB_W_DATA); }

/* ------------------------------------------------------------ configure */

static int l_configure(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sb_http *h = get_http(L);
    long total = (long)sb_opt_num(L, 1, "max_connections", (double)h->max_connections);
    long host = (long)sb_opt_num(L, 1, "max_host_connections", (double)h->max_host_connections);
    luaL_argcheck(L, total >= 0 && host >= 0, 1, "limits must be >= 0 (0 = unlimited)");
    lua_getfield(L, 1, "engine");
    if (!lua_isnil(L, -1)) {
        const char *e = check_engine_name(L, 1);
        if (e && strcmp(e, "h1") == 0)
            luaL_error(L, "http.configure: engine must be \"auto\" or \"curl\" "
                          "(\"h1\" cannot serve https; pass it per request)");
        h->prefer_curl = e != NULL;
    }
    lua_pop(L, 1);
    int lowered = total < h->max_connections || host < h->max_host_connections;
    h->max_connections = total;
    h->max_host_connections = host;
    sb_http_curl_configure(h, lowered);
    sb_http_h1_configure(h);
    lua_createtable(L, 0, 3);
    lua_pushnumber(L, (lua_Number)h->max_connections);
    lua_setfield(L, -2, "max_connections");
    lua_pushnumber(L, (lua_Number)h->max_host_connections);
    lua_setfield(L, -2, "max_host_connections");
    lua_pushstring(L, h->prefer_curl ? "curl" : "auto");
    lua_setfield(L, -2, "engine");
    return 1;
}

/* The engine "auto" picks for a URL (documentation, tests). */
static int l_engine(lua_State *L)
{
    sb_http *h = get_http(L);
    const sb_http_engine *e = pick_engine(h, luaL_checkstring(L, 1), NULL, lua_toboolean(L, 2));
    lua_pushstring(L, e->name);
    return 1;
}

/* Percent-encode everything but RFC 3986 unreserved characters. */
static int l_escape(lua_State *L)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            luaL_addchar(&b, (char)c);
        } else {
            luaL_addchar(&b, '%');
            luaL_addchar(&b, hex[c >> 4]);
            luaL_addchar(&b, hex[c & 15]);
        }
    }
    luaL_pushresult(&b);
    return 1;
}

static int l_curl_version(lua_State *L)
{
    const char *v = sb_http_curl_version();
    if (v == NULL)
        return 0;
    lua_pushstring(L, v);
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
    {"engine", l_engine},
    {"escape", l_escape},
    {"curl_version", l_curl_version},
    {NULL, NULL}
};

int luaopen_sibyl_http_core(lua_State *L)
{
    sb_newmeta(L, &transfer_mt_key, "sibyl.http.transfer");
    luaL_setfuncs(L, transfer_methods, 0);
    lua_pop(L, 1);
    luaL_newlib(L, core_funcs);
    return 1;
}
