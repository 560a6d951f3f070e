/*
 * http_server.c -- libevent's evhttp under `sibyl.server` (the C half;
 * stdlib/sibyl/server.lua routes requests and shapes replies).
 *
 *   core.listen{host=, port=, max_body=, max_header=, timeout=, max_inflight=,
 *               dispatch = function(req) end}     -> server | nil, err
 *   srv:port()  srv:inflight()  srv:close()  srv:shutdown()  (stop accepting)
 *   core.reply(req, status, {"Name", "value", ...}, body)
 *   core.start(req, status, headers)  core.chunk(req, data)  core.finish(req)
 *   core.abort(req)                   drop the connection (fault injection)
 *   core.wait_signal{"INT", "TERM"}   -> name of the signal that arrived
 *
 * Each request becomes a task running dispatch(req), where req is a table
 * {method=, uri=, path=, query=, headers={"name", "value", ...}, body=, _rq=}.
 * The evhttp callback only builds that table and spawns the task (inside
 * lua_cpcall, so an allocation failure cannot unwind through libevent).
 *
 * Limits enforced by evhttp itself: max_body (413), max_header (400 or
 * 431-ish close), timeout (idle connections; stream_timeout once a streamed
 * reply has started). max_inflight answers 503.
 * When a client goes away, evhttp frees the connection: the close callback
 * cancels the handler's task, and later replies to it are dropped.
 *
 * Caveat (libevent 2.1): the server notices a vanished client when it next
 * writes to it (SSE chunks, the reply), not while the handler computes.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#include "sb.h"

static char server_mt_key;
static char request_mt_key;

typedef struct sb_server {
    sibyl_rt *rt;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    int dispatch_ref;           /* the Lua dispatcher */
    int self_ref;               /* pins the server object while open */
    int port;
    long inflight, max_inflight;
    int stream_timeout;         /* idle limit once a streamed reply started */
    int held;                   /* holds the runtime alive */
} sb_server;

/* One request in flight: a userdata, pinned by its task's arguments. */
typedef struct {
    struct evhttp_request *r;   /* NULL once replied or once the client left */
    struct evhttp_connection *conn;
    sb_server *srv;
    sb_task *task;
    int streaming;
} sb_req;

/* ---------------------------------------------------------- lifecycle */

static void req_forget(sb_req *q)
{
    if (q->conn)
        evhttp_connection_set_closecb(q->conn, NULL, NULL);
    q->conn = NULL;
    q->r = NULL;
    if (q->srv) {
        q->srv->inflight--;
        q->srv = NULL;
    }
}

/* The client's connection is going away (evhttp frees it next). */
static void conn_closed(struct evhttp_connection *conn, void *arg)
{
    sb_req *q = arg;
    SB_UNUSED(conn);
    /* When the connection failed under a request we had not finished,
     * evhttp detached the request and left it to us: free it. A request
     * still attached is freed by evhttp with its connection. */
    if (q->r && evhttp_request_get_connection(q->r) == NULL)
        evhttp_request_free(q->r);
    q->conn = NULL;
    q->r = NULL;
    if (q->srv) {
        q->srv->inflight--;
        q->srv = NULL;
    }
    if (q->task && sb_task_status(q->task) == SB_TASK_LIVE)
        sb_task_cancel(q->task);
}

static int req_gc(lua_State *L)
{
    sb_req *q = lua_touserdata(L, 1);
    if (q->r) {
        /* The handler never replied (it failed or was cancelled). */
        if (!q->streaming)
            evhttp_send_error(q->r, HTTP_INTERNAL, "handler did not reply");
        else
            evhttp_send_reply_end(q->r);
    }
    req_forget(q);
    return 0;
}

static void server_stop(lua_State *L, sb_server *s)
{
    if (s->http) {
        evhttp_free(s->http);
        s->http = NULL;
        s->sock = NULL;
    }
    if (s->held) {
        sb_rt_release(s->rt);
        s->held = 0;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, s->dispatch_ref);
    s->dispatch_ref = LUA_NOREF;
    luaL_unref(L, LUA_REGISTRYINDEX, s->self_ref);
    s->self_ref = LUA_NOREF;
}

/* ------------------------------------------------------ request entry */

typedef struct {
    sb_server *srv;
    struct evhttp_request *r;
} spawn_ctx;

static const char *method_name(enum evhttp_cmd_type c)
{
    switch (c) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    default: return "UNKNOWN";
    }
}

/* Runs under lua_cpcall: build the request table and spawn dispatch(req). */
static int spawn_request(lua_State *L)
{
    spawn_ctx *c = lua_touserdata(L, 1);
    struct evhttp_request *r = c->r;
    sb_server *s = c->srv;
    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->dispatch_ref);

    lua_createtable(L, 0, 8);
    lua_pushstring(L, method_name(evhttp_request_get_command(r)));
    lua_setfield(L, -2, "method");
    const char *uri = evhttp_request_get_uri(r);
    lua_pushstring(L, uri);
    lua_setfield(L, -2, "uri");
    const char *qm = strchr(uri, '?');
    if (qm) {
        lua_pushlstring(L, uri, (size_t)(qm - uri));
        lua_setfield(L, -2, "path");
        lua_pushstring(L, qm + 1);
        lua_setfield(L, -2, "query_string");
    } else {
        lua_pushstring(L, uri);
        lua_setfield(L, -2, "path");
    }
    lua_newtable(L);
    int i = 0;
    struct evkeyvalq *hs = evhttp_request_get_input_headers(r);
    for (struct evkeyval *kv = hs->tqh_first; kv; kv = kv->next.tqe_next) {
        lua_pushstring(L, kv->key);
        lua_rawseti(L, -2, ++i);
        lua_pushstring(L, kv->value);
        lua_rawseti(L, -2, ++i);
    }
    lua_setfield(L, -2, "headers");
    struct evbuffer *in = evhttp_request_get_input_buffer(r);
    size_t len = evbuffer_get_length(in);
    const char *body = (const char *)evbuffer_pullup(in, -1);
    lua_pushlstring(L, body ? body : "", len);
    lua_setfield(L, -2, "body");
    struct evhttp_connection *peer_conn = evhttp_request_get_connection(r);
    if (peer_conn) {           /* the client's address, for logs */
        char *peer = NULL;
        ev_uint16_t peer_port = 0;
        evhttp_connection_get_peer(peer_conn, &peer, &peer_port);
        if (peer) {
            lua_pushstring(L, peer);
            lua_setfield(L, -2, "remote_addr");
        }
    }

    sb_req *q = lua_newuserdata(L, sizeof *q);
    memset(q, 0, sizeof *q);
    sb_getmeta(L, &request_mt_key);
    lua_setmetatable(L, -2);
    q->r = r;
    q->srv = s;
    q->conn = evhttp_request_get_connection(r);
    lua_setfield(L, -2, "_rq");

    s->inflight++;
    q->task = sb_spawn(L, 1);
    if (q->conn)
        evhttp_connection_set_closecb(q->conn, conn_closed, q);
    return 0;
}

static void request_cb(struct evhttp_request *r, void *arg)
{
    sb_server *s = arg;
    if (s->max_inflight > 0 && s->inflight >= s->max_inflight) {
        static const char busy[] = "{\"error\":{\"message\":\"server busy: too many requests in "
                                   "flight (max_inflight); retry shortly\",\"status\":503}}";
        struct evkeyvalq *out = evhttp_request_get_output_headers(r);
        evhttp_add_header(out, "Retry-After", "1");
        evhttp_add_header(out, "Content-Type", "application/json");
        struct evbuffer *buf = evbuffer_new();
        if (buf)
            evbuffer_add(buf, busy, sizeof busy - 1);
        evhttp_send_reply(r, 503, "Service Unavailable", buf);
        if (buf)
            evbuffer_free(buf);
        return;
    }
    spawn_ctx c = {s, r};
    lua_State *L = s->rt->L;
    if (lua_cpcall(L, spawn_request, &c) != 0) {
        lua_pop(L, 1);
        evhttp_send_error(r, HTTP_INTERNAL, "out of memory");
    }
}

/* ------------------------------------------------------------- replies */

static sb_req *check_req(lua_State *L, int idx)
{
    return sb_checkudata(L, idx, &request_mt_key, "sibyl.server.request");
}

static void add_headers(lua_State *L, int idx, struct evhttp_request *r)
{
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    struct evkeyvalq *out = evhttp_request_get_output_headers(r);
    int n = (int)lua_objlen(L, idx);
    for (int i = 1; i + 1 <= n; i += 2) {
        lua_rawgeti(L, idx, i);
        lua_rawgeti(L, idx, i + 1);
        const char *k = lua_tostring(L, -2), *v = lua_tostring(L, -1);
        if (k && v) {
            evhttp_remove_header(out, k);
            evhttp_add_header(out, k, v);
        }
        lua_pop(L, 2);
    }
}

/* core.reply(req, status, headers, body) -> true | false (client gone) */
static int l_reply(lua_State *L)
{
    sb_req *q = check_req(L, 1);
    int status = (int)luaL_checkinteger(L, 2);
    size_t len = 0;
    const char *body = luaL_optlstring(L, 4, "", &len);
    if (q->r == NULL) {
        lua_pushboolean(L, 0);
        return 1;
    }
    add_headers(L, 3, q->r);
    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL)
        return luaL_error(L, "server: out of memory");
    evbuffer_add(buf, body, len);
    evhttp_send_reply(q->r, status, NULL, buf);
    evbuffer_free(buf);
    req_forget(q);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_start(lua_State *L)
{
    sb_req *q = check_req(L, 1);
    int status = (int)luaL_checkinteger(L, 2);
    if (q->r == NULL) {
        lua_pushboolean(L, 0);
        return 1;
    }
    add_headers(L, 3, q->r);
    evhttp_send_reply_start(q->r, status, NULL);
    q->streaming = 1;
    /* The idle timeout is for requests; a stream may pause far longer
     * between events (a model thinking). */
    if (q->conn && q->srv)
        evhttp_connection_set_timeout(q->conn, q->srv->stream_timeout);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_chunk(lua_State *L)
{
    sb_req *q = check_req(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    if (q->r == NULL || !q->streaming) {
        lua_pushboolean(L, 0);
        return 1;
    }
    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL)
        return luaL_error(L, "server: out of memory");
    evbuffer_add(buf, data, len);
    evhttp_send_reply_chunk(q->r, buf);
    evbuffer_free(buf);
    lua_pushboolean(L, q->r != NULL);
    return 1;
}

static int l_finish(lua_State *L)
{
    sb_req *q = check_req(L, 1);
    if (q->r && q->streaming) {
        evhttp_send_reply_end(q->r);
        req_forget(q);
    }
    return 0;
}

/* core.abort(req): drop the client's connection without a proper reply
 * (for tests of truncated streams and resets). */
static int l_abort(lua_State *L)
{
    sb_req *q = check_req(L, 1);
    struct evhttp_connection *conn = q->conn;
    req_forget(q);
    if (conn)
        evhttp_connection_free(conn);
    return 0;
}

static int l_req_alive(lua_State *L)
{
    lua_pushboolean(L, check_req(L, 1)->r != NULL);
    return 1;
}

/* -------------------------------------------------------------- listen */

static int l_listen(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sibyl_rt *rt = sb_rt(L);
    lua_getfield(L, 1, "host");
    const char *host = luaL_optstring(L, -1, "127.0.0.1");
    lua_pop(L, 1);
    int port = (int)sb_opt_num(L, 1, "port", 8080);
    double max_body = sb_opt_num(L, 1, "max_body", 1 << 20);
    double max_header = sb_opt_num(L, 1, "max_header", 16 << 10);
    int timeout = (int)sb_opt_num(L, 1, "timeout", 60);
    long max_inflight = (long)sb_opt_num(L, 1, "max_inflight", 10000);
    int stream_timeout = (int)sb_opt_num(L, 1, "stream_timeout", 600);
    int backlog = (int)sb_opt_num(L, 1, "backlog", 1024);
    luaL_argcheck(L, backlog > 0, 1, "backlog must be > 0");
    lua_getfield(L, 1, "dispatch");
    luaL_checktype(L, -1, LUA_TFUNCTION);

    sb_server *s = lua_newuserdata(L, sizeof *s);
    memset(s, 0, sizeof *s);
    s->dispatch_ref = s->self_ref = LUA_NOREF;
    sb_getmeta(L, &server_mt_key);
    lua_setmetatable(L, -2);
    s->rt = rt;
    s->max_inflight = max_inflight;
    s->stream_timeout = stream_timeout > 0 ? stream_timeout : 600;
    s->http = evhttp_new(rt->base);
    if (s->http == NULL)
        return sb_fail(L, "io", "server: cannot create the HTTP server");
    s->sock = evhttp_bind_socket_with_handle(s->http, host, (ev_uint16_t)port);
    if (s->sock == NULL) {
        int e = EVUTIL_SOCKET_ERROR();
        evhttp_free(s->http);
        s->http = NULL;
        return sb_fail(L, "io", "server: cannot listen on %s:%d: %s (is the port in use? set port = 0 "
                                "for a free one)", host, port, evutil_socket_error_to_string(e));
    }
    /* evhttp listens with a backlog of 128: a burst of new connections
     * beyond it is dropped by the kernel and retried by clients only after
     * a second. listen() again raises it (the kernel caps it at somaxconn). */
    listen(evhttp_bound_socket_get_fd(s->sock), backlog);
    struct sockaddr_storage ss;
    ev_socklen_t sl = sizeof ss;
    evutil_socket_t fd = evhttp_bound_socket_get_fd(s->sock);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                  : ((struct sockaddr_in *)&ss)->sin_port);
    evhttp_set_max_body_size(s->http, (ev_ssize_t)max_body);
    evhttp_set_max_headers_size(s->http, (ev_ssize_t)max_header);
    evhttp_set_timeout(s->http, timeout);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                        EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                        EVHTTP_REQ_PATCH);
    evhttp_set_gencb(s->http, request_cb, s);
    lua_pushvalue(L, -2);
    s->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    sb_rt_hold(rt);
    s->held = 1;
    return 1;
}

static sb_server *check_server(lua_State *L)
{
    return sb_checkudata(L, 1, &server_mt_key, "sibyl.server");
}

static int l_srv_port(lua_State *L)
{
    lua_pushinteger(L, check_server(L)->port);
    return 1;
}

static int l_srv_inflight(lua_State *L)
{
    lua_pushinteger(L, check_server(L)->inflight);
    return 1;
}

/* Stop accepting new connections; requests in flight finish. */
static int l_srv_shutdown(lua_State *L)
{
    sb_server *s = check_server(L);
    if (s->http && s->sock) {
        evhttp_del_accept_socket(s->http, s->sock);
        s->sock = NULL;
    }
    return 0;
}

static int l_srv_close(lua_State *L)
{
    server_stop(L, check_server(L));
    return 0;
}

static int l_srv_gc(lua_State *L)
{
    server_stop(L, lua_touserdata(L, 1));
    return 0;
}

static int l_srv_tostring(lua_State *L)
{
    sb_server *s = check_server(L);
    if (s->http)
        lua_pushfstring(L, "sibyl.server (port %d)", s->port);
    else
        lua_pushliteral(L, "sibyl.server (closed)");
    return 1;
}

/* ------------------------------------------------------------- signals */

typedef struct {
    struct event evs[4];
    int n, got;
} sig_data;

static void sig_cb(evutil_socket_t sig, short what, void *arg)
{
    SB_UNUSED(what);
    sb_op *op = arg;
    ((sig_data *)sb_op_data(op))->got = (int)sig;
    sb_op_done(op);
}

static void cancel_sig(void *data)
{
    sig_data *d = data;
    for (int i = 0; i < d->n; i++)
        event_del(&d->evs[i]);
}

static int push_sig(lua_State *co, void *data)
{
    sig_data *d = data;
    cancel_sig(data);
    lua_pushstring(co, d->got == SIGINT ? "INT" : d->got == SIGTERM ? "TERM" : d->got == SIGHUP ? "HUP" : "USR1");
    return 1;
}

/* core.wait_signal{"INT", "TERM"} -> the name of the first to arrive. */
static int l_wait_signal(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int sigs[4], n = 0;
    for (int i = 1; i <= (int)lua_objlen(L, 1) && n < 4; i++) {
        lua_rawgeti(L, 1, i);
        const char *name = luaL_checkstring(L, -1);
        lua_pop(L, 1);
        int sig = strcmp(name, "INT") == 0 ? SIGINT : strcmp(name, "TERM") == 0 ? SIGTERM
                : strcmp(name, "HUP") == 0 ? SIGHUP : strcmp(name, "USR1") == 0 ? SIGUSR1 : -1;
        if (sig < 0)
            return luaL_error(L, "wait_signal: unknown signal '%s' (INT, TERM, HUP, USR1)", name);
        sigs[n++] = sig;
    }
    sb_op *op = sb_op_new(L, sizeof(sig_data), push_sig, cancel_sig);
    sig_data *d = sb_op_data(op);
    for (int i = 0; i < n; i++) {
        evsignal_assign(&d->evs[i], sb_op_rt(op)->base, sigs[i], sig_cb, op);
        evsignal_add(&d->evs[i], NULL);
    }
    d->n = n;
    return sb_op_park(L, op);
}

static const luaL_Reg server_methods[] = {
    {"port", l_srv_port},
    {"inflight", l_srv_inflight},
    {"shutdown", l_srv_shutdown},
    {"close", l_srv_close},
    {"__gc", l_srv_gc},
    {"__tostring", l_srv_tostring},
    {NULL, NULL}
};

static const luaL_Reg request_methods[] = {
    {"alive", l_req_alive},
    {"__gc", req_gc},
    {NULL, NULL}
};

static const luaL_Reg core_funcs[] = {
    {"listen", l_listen},
    {"reply", l_reply},
    {"start", l_start},
    {"chunk", l_chunk},
    {"finish", l_finish},
    {"abort", l_abort},
    {"wait_signal", l_wait_signal},
    {NULL, NULL}
};

int luaopen_sibyl_server_core(lua_State *L)
{
    sb_newmeta(L, &server_mt_key, "sibyl.server");
    luaL_setfuncs(L, server_methods, 0);
    lua_pop(L, 1);
    sb_newmeta(L, &request_mt_key, "sibyl.server.request");
    luaL_setfuncs(L, request_methods, 0);
    lua_pop(L, 1);
    luaL_newlib(L, core_funcs);
    return 1;
}
