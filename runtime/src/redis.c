/*
 * redis.c -- the C half of `sibyl.redis` (stdlib/sibyl/redis.lua is the
 * policy half: options, URLs, command sugar, pipelines, iterators): the
 * client's Lua binding and the reply mapping. The engine is redis_conn.c,
 * subscriptions redis_sub.c; sb_redis.h describes how they fit.
 *
 *   core.connect(o)            -> client | nil, err   parks until every pool connection is up
 *   client:call(cmd, ...)      -> reply | nil, err    one park per command
 *   client:_pipeline(cmds)     -> {reply...} | nil, err   cmds = {{n=, cmd, arg...}, ...}
 *   client:_open_sub(max_queue) -> sub | nil, err     (redis_sub.c)
 *   client:stats(), client:close(), tostring(client)
 *   core.null, core.hiredis_version, core.client_mt, core.sub_mt
 *
 * `o` is the options table redis.lua has already checked and completed.
 *
 * Replies: status and bulk -> string, integer -> number, nil -> nil (inside
 * arrays: core.null, a NULL lightuserdata == cjson.null), array -> table,
 * error -> nil, err (kind "redis", err.code = the first word; inside arrays
 * an error object in place). RESP3 maps, sets, doubles, booleans, big
 * numbers and verbatim strings map to table, array, number, boolean,
 * string, string (only with hiredis >= 1.0).
 *
 * Caveats:
 *  - Integer replies become Lua numbers (doubles): exact up to 2^53.
 *  - Commands that would break a connection other tasks share (SUBSCRIBE,
 *    SELECT, AUTH, WATCH, MULTI outside a pipeline, ...) raise.
 *  - Blocking commands (BLPOP, XREAD BLOCK, WAIT, ...) get no per-command
 *    timeout: their own argument bounds them, and they hold their connection
 *    meanwhile, so give them a client of their own.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_redis.h"

static char client_mt_key;

#define SMALL_ARGS 16

/* ------------------------------------------------------- replies to Lua */

/* Push a Redis error reply as an error object (kind "redis", code = its
 * first word, command = the command's name). */
static void push_redis_error(lua_State *L, const char *msg, size_t len, const char *cmd)
{
    sb_pusherror(L, "redis", "%.*s", (int)(len > 1000 ? 1000 : len), msg);
    size_t w = 0;
    while (w < len && msg[w] != ' ')
        w++;
    lua_pushlstring(L, msg, w);
    lua_setfield(L, -2, "code");
    if (cmd && *cmd) {
        lua_pushstring(L, cmd);
        lua_setfield(L, -2, "command");
    }
}

/* Push one reply. Inside arrays a nil is redis.null (so the array keeps its
 * length) and an error is an error object. Never raises but on OOM. */
static void push_value(lua_State *L, redisReply *r, int nested, const char *cmd)
{
    if (!lua_checkstack(L, 4)) {
        lua_pushlightuserdata(L, NULL);
        return;
    }
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str ? r->str : "", r->len);
        break;
    case REDIS_REPLY_INTEGER:
        lua_pushnumber(L, (lua_Number)r->integer);
        break;
    case REDIS_REPLY_ERROR:
        push_redis_error(L, r->str ? r->str : "", r->len, cmd);
        break;
    case REDIS_REPLY_ARRAY:
#ifdef REDIS_REPLY_SET
    case REDIS_REPLY_SET:
#endif
#ifdef REDIS_REPLY_PUSH
    case REDIS_REPLY_PUSH:
#endif
        lua_createtable(L, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            push_value(L, r->element[i], 1, cmd);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
#ifdef REDIS_REPLY_MAP
    case REDIS_REPLY_MAP:
        lua_createtable(L, 0, (int)(r->elements / 2));
        for (size_t i = 0; i + 1 < r->elements; i += 2) {
            push_value(L, r->element[i], 1, cmd);
            push_value(L, r->element[i + 1], 1, cmd);
            lua_rawset(L, -3);
        }
        break;
#endif
#ifdef REDIS_REPLY_DOUBLE
    case REDIS_REPLY_DOUBLE:
        lua_pushnumber(L, (lua_Number)r->dval);
        break;
#endif
#ifdef REDIS_REPLY_BOOL
    case REDIS_REPLY_BOOL:
        lua_pushboolean(L, r->integer != 0);
        break;
#endif
#ifdef REDIS_REPLY_BIGNUM
    case REDIS_REPLY_BIGNUM:
#endif
#ifdef REDIS_REPLY_VERB
    case REDIS_REPLY_VERB:
#endif
#if defined(REDIS_REPLY_BIGNUM) || defined(REDIS_REPLY_VERB)
        lua_pushlstring(L, r->str ? r->str : "", r->len);
        break;
#endif
    case REDIS_REPLY_NIL:
    default:
        if (nested)
            lua_pushlightuserdata(L, NULL);
        else
            lua_pushnil(L);
        break;
    }
}

/* The results of a command: reply, nil (a nil reply), or nil, err. */
static int push_top(lua_State *L, redisReply *r, const char *cmd)
{
    if (r->type == REDIS_REPLY_ERROR) {
        lua_pushnil(L);
        push_redis_error(L, r->str ? r->str : "", r->len, cmd);
        return 2;
    }
    push_value(L, r, 0, cmd);
    return 1;
}

/* ----------------------------------------------------- Lua: the client */

sb_rclient *sb_redis_check_client(lua_State *L, int idx)
{
    sb_rclient_ud *u = sb_checkudata(L, idx, &client_mt_key, "sibyl.redis.client");
    return u->cl;
}

static char *dup_or_raise(lua_State *L, const char *s)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        luaL_error(L, "redis: out of memory");
    return d;
}

static int push_connect(lua_State *co, void *data)
{
    sb_rconnect_wait *w = data;
    sb_rclient *cl = w->cl;
    int n;
    if (cl == NULL) {
        n = sb_fail(co, "closed", "redis: the client was closed while it connected");
    } else {
        cl->connect_op = NULL;
        if (cl->ekind) {
            n = sb_fail(co, cl->ekind, "%s", cl->emsg);
            lua_rawgeti(co, LUA_REGISTRYINDEX, w->ref);
            sb_rclient_ud *u = lua_touserdata(co, -1);
            lua_pop(co, 1);
            u->cl = NULL;
            sb_redis_client_free(cl);
        } else {
            lua_rawgeti(co, LUA_REGISTRYINDEX, w->ref);
            n = 1;
        }
    }
    luaL_unref(co, LUA_REGISTRYINDEX, w->ref);
    return n;
}

static void cancel_connect(void *data)
{
    sb_rconnect_wait *w = data;
    lua_State *L = sb_op_rt(sb_op_from_data(data))->L;
    if (w->cl) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, w->ref);
        sb_rclient_ud *u = lua_touserdata(L, -1);
        lua_pop(L, 1);
        w->cl->connect_op = NULL;
        u->cl = NULL;
        sb_redis_client_free(w->cl);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, w->ref);
}

/* Read the options at index t into cl (redis.lua checked their types). */
static void read_options(lua_State *L, int t, sb_rclient *cl)
{
    cl->host = dup_or_raise(L, sb_opt_str(L, t, "host", NULL));
    cl->password = dup_or_raise(L, sb_opt_str(L, t, "password", NULL));
    cl->username = dup_or_raise(L, sb_opt_str(L, t, "username", NULL));
    cl->port = (int)sb_opt_num(L, t, "port", 6379);
    cl->db = (int)sb_opt_num(L, t, "db", 0);
    cl->timeout = sb_opt_num(L, t, "timeout", 5);
    cl->nconns = (int)sb_opt_num(L, t, "pool", 1);
    cl->max_pending = (size_t)sb_opt_num(L, t, "max_pending", 100000);
    cl->reconnect_max = sb_opt_num(L, t, "reconnect_max", 5);
    cl->protocol = (int)sb_opt_num(L, t, "protocol", 2);
    lua_getfield(L, t, "reconnect");
    cl->reconnect = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
    lua_pop(L, 1);
}

/* Allocate the connections and start them; parks the task until all are
 * up (or one failed). The userdata at `ud` is what the task gets back. */
int sb_redis_start(lua_State *L, sb_rclient *cl, int ud)
{
    if (cl->host == NULL)
        return luaL_error(L, "redis: opts.host is required");
    luaL_argcheck(L, cl->nconns >= 1 && cl->nconns <= 1024, 1, "opts.pool must be 1..1024");
    luaL_argcheck(L, cl->port > 0 && cl->port < 65536, 1, "opts.port must be 1..65535");
    luaL_argcheck(L, cl->max_pending >= 1, 1, "opts.max_pending must be >= 1");
#if HIREDIS_MAJOR < 1
    if (cl->protocol == 3)
        return luaL_error(L, "redis: protocol = 3 (RESP3) needs hiredis >= 1.0, and this build "
                             "has hiredis %d.%d.%d; use protocol = 2", HIREDIS_MAJOR,
                          HIREDIS_MINOR, HIREDIS_PATCH);
#endif
    if (sb_redis_client_init(cl) != 0)
        return luaL_error(L, "redis: out of memory");
    sb_op *op = sb_op_new(L, sizeof(sb_rconnect_wait), push_connect, cancel_connect);
    sb_rconnect_wait *w = sb_op_data(op);
    w->cl = cl;
    lua_pushvalue(L, ud);
    w->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    cl->connect_op = op;
    cl->connect_left = cl->nconns;
    for (int i = 0; i < cl->nconns && cl->ekind == NULL; i++)
        sb_redis_conn_open(&cl->conns[i]);
    return sb_op_park(L, op);
}

sb_rclient_ud *sb_redis_new_ud(lua_State *L, const void *key, sb_rclient *cl)
{
    sb_rclient_ud *u = lua_newuserdata(L, sizeof *u);
    u->cl = cl;
    sb_getmeta(L, key);
    lua_setmetatable(L, -2);
    return u;
}

/* core.connect(o): o is the checked options table. */
static int l_connect(lua_State *L)
{
    sibyl_rt *rt = sb_rt(L);
    if (rt->current == NULL)
        return luaL_error(L, "redis.connect does I/O and must run inside a task "
                             "(use sibyl.spawn(fn) or sibyl.run(fn))");
    luaL_checktype(L, 1, LUA_TTABLE);
    sb_rclient *cl = sb_redis_client_new(rt);
    if (cl == NULL)
        return luaL_error(L, "redis: out of memory");
    sb_redis_new_ud(L, &client_mt_key, cl);     /* owns cl from here: __gc frees it */
    int ud = lua_gettop(L);
    read_options(L, 1, cl);
    return sb_redis_start(L, cl, ud);
}

/* Commands that break a shared, pooled connection. */
static void check_command(lua_State *L, const char **argv, const size_t *lens, int argc,
                          int in_pipeline)
{
    const char *s = argv[0];
    size_t len = lens[0];
    static const char *subs[] = {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE",
                                 "PUNSUBSCRIBE", "SUNSUBSCRIBE", NULL};
    for (int i = 0; subs[i]; i++)
        if (sb_redis_is_cmd(s, len, subs[i]))
            luaL_error(L, "redis: %s needs a connection of its own: use r:subscribe(...) or "
                          "r:psubscribe(...), which return a subscription", subs[i]);
    if (sb_redis_is_cmd(s, len, "SELECT"))
        luaL_error(L, "redis: SELECT would change the database of one pooled connection only; "
                      "pass opts.db to redis.connect (one client per database)");
    if (sb_redis_is_cmd(s, len, "AUTH") || sb_redis_is_cmd(s, len, "HELLO"))
        luaL_error(L, "redis: pass password/username (and protocol) to redis.connect instead of "
                      "sending %.*s: they are replayed on every reconnect", (int)len, s);
    if (sb_redis_is_cmd(s, len, "MONITOR") || sb_redis_is_cmd(s, len, "QUIT") ||
        sb_redis_is_cmd(s, len, "RESET") || sb_redis_is_cmd(s, len, "SYNC") ||
        sb_redis_is_cmd(s, len, "PSYNC"))
        luaL_error(L, "redis: %.*s is not supported on a pooled client (use r:close() to "
                      "disconnect)", (int)len, s);
    if (sb_redis_is_cmd(s, len, "CLIENT") && argc > 1 && sb_redis_is_cmd(argv[1], lens[1], "REPLY"))
        luaL_error(L, "redis: CLIENT REPLY would make replies stop matching commands on a "
                      "connection other tasks share");
    if (sb_redis_is_cmd(s, len, "WATCH") || sb_redis_is_cmd(s, len, "UNWATCH"))
        luaL_error(L, "redis: WATCH cannot work on a connection other tasks share; use a Lua "
                      "script (EVAL) for check-and-set");
    if (!in_pipeline && (sb_redis_is_cmd(s, len, "MULTI") || sb_redis_is_cmd(s, len, "EXEC") ||
                         sb_redis_is_cmd(s, len, "DISCARD")))
        luaL_error(L, "redis: send MULTI ... EXEC inside one r:pipeline(fn), so that other "
                      "tasks' commands cannot land inside the transaction");
}

/* Commands that may wait on the server indefinitely: no command timeout. */
static int is_blocking(const char **argv, const size_t *lens, int argc)
{
    static const char *names[] = {"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP",
                                  "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT", "WAITAOF", NULL};
    for (int i = 0; names[i]; i++)
        if (sb_redis_is_cmd(argv[0], lens[0], names[i]))
            return 1;
    if (sb_redis_is_cmd(argv[0], lens[0], "XREAD") ||
        sb_redis_is_cmd(argv[0], lens[0], "XREADGROUP"))
        for (int i = 1; i < argc; i++)
            if (sb_redis_is_cmd(argv[i], lens[i], "BLOCK"))
                return 1;
    return 0;
}

/* Format a number losslessly: integers without ".0", others with the
 * fewest digits that read back the same. */
static size_t fmt_number(lua_State *L, lua_Number d, char *buf, size_t cap, int argi)
{
    if (d != d)
        luaL_error(L, "redis: argument #%d is NaN, which Redis cannot take", argi);
    if (isinf(d))
        return (size_t)snprintf(buf, cap, "%s", d > 0 ? "+inf" : "-inf");
    if (d == floor(d) && fabs(d) < 9.2e18)
        return (size_t)snprintf(buf, cap, "%lld", (long long)d);
    for (int prec = 15; prec <= 17; prec++) {
        int n = snprintf(buf, cap, "%.*g", prec, d);
        if (strtod(buf, NULL) == d || prec == 17)
            return (size_t)n;
    }
    return 0;
}

typedef char numbuf[40];

/*
 * Fill argv/lens from the values at stack indices first..first+argc-1, or
 * (tbl != 0) from tbl[1..argc]. Raises on values Redis cannot take. Strings
 * stay alive on the stack or in the table; numbers go to nums.
 */
static void gather_args(lua_State *L, int first, int tbl, int argc, const char **argv,
                        size_t *lens, numbuf *nums)
{
    for (int i = 0; i < argc; i++) {
        int idx = first + i;
        if (tbl) {
            lua_rawgeti(L, tbl, i + 1);
            idx = lua_gettop(L);
        }
        int t = lua_type(L, idx);
        if (t == LUA_TSTRING) {
            argv[i] = lua_tolstring(L, idx, &lens[i]);
        } else if (t == LUA_TNUMBER) {
            lens[i] = fmt_number(L, lua_tonumber(L, idx), nums[i], sizeof nums[i], i + 1);
            argv[i] = nums[i];
        } else if (i == 0) {
            luaL_error(L, "redis: the command name must be a string, got %s", lua_typename(L, t));
        } else if (t == LUA_TBOOLEAN) {
            luaL_error(L, "redis: argument #%d to %s is a boolean; Redis has no booleans: pass "
                          "1/0 or \"true\"/\"false\"", i + 1, argv[0]);
        } else {
            luaL_error(L, "redis: argument #%d to %s is %s; pass strings or numbers", i + 1,
                       argv[0], t == LUA_TNIL ? "nil" : lua_typename(L, t));
        }
        if (tbl)
            lua_pop(L, 1);      /* the string lives on in the table */
    }
}

int sb_redis_push_req(lua_State *co, void *data)
{
    sb_rreq *q = *(sb_rreq **)data;
    int n;
    q->op = NULL;
    if (q->ekind) {
        n = sb_fail(co, q->ekind, "%s", q->emsg ? q->emsg : "redis: request failed");
    } else if (q->kind == REQ_CALL) {
        n = q->rep1 ? push_top(co, q->rep1, q->name) : (lua_pushnil(co), 1);
    } else if (q->kind == REQ_LIST) {
        lua_createtable(co, q->n, 0);
        for (int i = 0; i < q->n; i++) {
            if (q->rep[i])
                push_value(co, q->rep[i], 1, NULL);
            else
                lua_pushlightuserdata(co, NULL);
            lua_rawseti(co, -2, i + 1);
        }
        n = 1;
    } else {
        lua_pushboolean(co, 1);     /* subscription control */
        n = 1;
    }
    sb_redis_req_release(q);
    return n;
}

void sb_redis_cancel_req(void *data)
{
    sb_rreq *q = *(sb_rreq **)data;
    q->op = NULL;
    q->settled = 1;
    sb_redis_req_stop_timer(q);
    if (q->kind == REQ_CTL)
        sb_redis_ctl_unlink(q);
    sb_redis_req_release(q);
}

int sb_redis_closed_fail(lua_State *L)
{
    return sb_fail(L, "closed", "redis: the client is closed; open a new one with redis.connect");
}

/* Room for n more commands, or nil, err pushed (returns 2). */
static int check_room(lua_State *L, sb_rclient *cl, size_t n)
{
    if (cl->pending + n <= cl->max_pending)
        return 0;
    lua_pushnil(L);
    sb_pusherror(L, "redis", "redis: too many pending commands (%zu waiting for replies from "
                 "%s:%d, opts.max_pending = %zu); slow down or raise max_pending",
                 cl->pending, cl->host, cl->port, cl->max_pending);
    return 2;
}

/* client:call(cmd, ...) -> reply | nil, err */
static int l_call(lua_State *L)
{
    sb_rclient *cl = sb_redis_check_client(L, 1);
    int argc = lua_gettop(L) - 1;
    if (argc < 1)
        return luaL_error(L, "redis: call needs a command name, e.g. r:call(\"GET\", key)");
    if (sb_rt(L)->current == NULL)
        return luaL_error(L, "redis commands do I/O and must run inside a task "
                             "(use sibyl.spawn(fn) or sibyl.run(fn))");
    const char *small_argv[SMALL_ARGS];
    size_t small_lens[SMALL_ARGS];
    numbuf small_nums[SMALL_ARGS];
    const char **argv = small_argv;
    size_t *lens = small_lens;
    numbuf *nums = small_nums;
    if (argc > SMALL_ARGS) {
        size_t each = sizeof(char *) + sizeof(size_t) + sizeof(numbuf);
        char *block = lua_newuserdata(L, each * (size_t)argc);     /* freed by the GC */
        argv = (const char **)block;
        lens = (size_t *)(block + sizeof(char *) * (size_t)argc);
        nums = (numbuf *)(block + (sizeof(char *) + sizeof(size_t)) * (size_t)argc);
    }
    gather_args(L, 2, 0, argc, argv, lens, nums);
    check_command(L, argv, lens, argc, 0);
    if (cl == NULL)
        return sb_redis_closed_fail(L);
    if (check_room(L, cl, 1))
        return 2;
    char why[768];
    sb_rconn *c = sb_redis_conn_pick(cl, why, sizeof why);
    if (c == NULL) {
        cl->errors++;
        return sb_fail(L, "connect", "%s", why);
    }
    int timed = cl->timeout > 0 && !is_blocking(argv, lens, argc);
    sb_op *op = sb_op_new(L, sizeof(sb_rreq *), sb_redis_push_req, sb_redis_cancel_req);
    sb_rreq *q = sb_redis_req_new(cl, REQ_CALL, 1, timed, argv[0], lens[0]);
    if (q == NULL) {
        sb_op_abort(op);
        return luaL_error(L, "redis: out of memory");
    }
    if (sb_redis_send(c, q, argc, argv, lens) != 0) {
        sb_op_abort(op);
        sb_redis_req_free(q);
        return sb_fail(L, "connect", "redis: cannot send %s: the connection is closing",
                       lua_tostring(L, 2));
    }
    q->live = 1;
    q->conn = c;
    sb_redis_req_arm(q, cl);
    *(sb_rreq **)sb_op_data(op) = q;
    q->op = op;
    return sb_op_park(L, op);
}

/* client:pipeline(cmds) -> {reply...} | nil, err. Every command goes out on
 * one connection, in order, in one write. */
static int l_pipeline(lua_State *L)
{
    sb_rclient *cl = sb_redis_check_client(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = (int)lua_objlen(L, 2);
    if (sb_rt(L)->current == NULL)
        return luaL_error(L, "redis commands do I/O and must run inside a task "
                             "(use sibyl.spawn(fn) or sibyl.run(fn))");
    int maxc = 0, timed = cl && cl->timeout > 0;
    for (int i = 1; i <= n; i++) {         /* check everything before sending anything */
        lua_rawgeti(L, 2, i);
        if (!lua_istable(L, -1))
            return luaL_error(L, "redis: pipeline command #%d must be a table", i);
        lua_getfield(L, -1, "n");
        int argc = lua_isnumber(L, -1) ? (int)lua_tonumber(L, -1) : (int)lua_objlen(L, -2);
        lua_pop(L, 1);
        if (argc < 1)
            return luaL_error(L, "redis: pipeline command #%d has no command name", i);
        if (argc > maxc)
            maxc = argc;
        lua_pop(L, 1);
    }
    if (n == 0) {
        lua_newtable(L);
        return 1;
    }
    size_t each = sizeof(char *) + sizeof(size_t) + sizeof(numbuf);
    char *block = lua_newuserdata(L, each * (size_t)maxc);
    const char **argv = (const char **)block;
    size_t *lens = (size_t *)(block + sizeof(char *) * (size_t)maxc);
    numbuf *nums = (numbuf *)(block + (sizeof(char *) + sizeof(size_t)) * (size_t)maxc);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        int t = lua_gettop(L);
        lua_getfield(L, t, "n");
        int argc = lua_isnumber(L, -1) ? (int)lua_tonumber(L, -1) : (int)lua_objlen(L, t);
        lua_pop(L, 1);
        gather_args(L, 0, t, argc, argv, lens, nums);
        check_command(L, argv, lens, argc, 1);
        if (is_blocking(argv, lens, argc))
            timed = 0;
        lua_pop(L, 1);
    }
    if (cl == NULL)
        return sb_redis_closed_fail(L);
    if (check_room(L, cl, (size_t)n))
        return 2;
    char why[768];
    sb_rconn *c = sb_redis_conn_pick(cl, why, sizeof why);
    if (c == NULL) {
        cl->errors++;
        return sb_fail(L, "connect", "%s", why);
    }
    sb_op *op = sb_op_new(L, sizeof(sb_rreq *), sb_redis_push_req, sb_redis_cancel_req);
    sb_rreq *q = sb_redis_req_new(cl, REQ_LIST, n, timed, "PIPELINE", 8);
    if (q == NULL) {
        sb_op_abort(op);
        return luaL_error(L, "redis: out of memory");
    }
    q->live = 1;
    q->conn = c;
    *(sb_rreq **)sb_op_data(op) = q;
    q->op = op;         /* before sending: a failure below completes the op */
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i);
        int t = lua_gettop(L);
        lua_getfield(L, t, "n");
        int argc = lua_isnumber(L, -1) ? (int)lua_tonumber(L, -1) : (int)lua_objlen(L, t);
        lua_pop(L, 1);
        gather_args(L, 0, t, argc, argv, lens, nums);     /* cannot raise: checked above */
        if (sb_redis_send(c, q, argc, argv, lens) != 0) {
            /* Only when hiredis is tearing the connection down: the ones sent
             * get their NULL replies; count the rest as arrived. */
            q->got += n - (i - 1);
            sb_redis_req_settle(q, cl, "connect", "redis: cannot send the pipeline: the "
                                "connection is closing");
            if (q->got == q->n) {
                q->live = 0;
                q->conn = NULL;
            }
            lua_pop(L, 1);
            break;
        }
        lua_pop(L, 1);
    }
    if (!q->settled)
        sb_redis_req_arm(q, cl);
    return sb_op_park(L, op);
}

static int l_stats(lua_State *L)
{
    sb_rclient_ud *u = sb_checkudata(L, 1, &client_mt_key, "sibyl.redis.client");
    sb_rclient *cl = u->cl;
    lua_createtable(L, 0, 8);
    if (cl == NULL) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "closed");
        return 1;
    }
    int ready = 0;
    for (int i = 0; i < cl->nconns; i++)
        ready += cl->conns[i].state == CONN_READY;
    lua_pushnumber(L, cl->sent);
    lua_setfield(L, -2, "sent");
    lua_pushnumber(L, cl->replies);
    lua_setfield(L, -2, "replies");
    lua_pushnumber(L, cl->errors);
    lua_setfield(L, -2, "errors");
    lua_pushnumber(L, (lua_Number)cl->pending);
    lua_setfield(L, -2, "pending");
    lua_pushnumber(L, (lua_Number)cl->peak);
    lua_setfield(L, -2, "peak_pending");
    lua_pushnumber(L, cl->reconnects);
    lua_setfield(L, -2, "reconnects");
    lua_pushinteger(L, cl->nconns);
    lua_setfield(L, -2, "pool");
    lua_pushinteger(L, ready);
    lua_setfield(L, -2, "connected");
    return 1;
}

static int l_client_close(lua_State *L)
{
    sb_rclient_ud *u = sb_checkudata(L, 1, &client_mt_key, "sibyl.redis.client");
    if (u->cl) {
        sb_rclient *cl = u->cl;
        u->cl = NULL;
        sb_redis_client_free(cl);
    }
    return 0;
}

static int l_client_tostring(lua_State *L)
{
    sb_rclient *cl = sb_redis_check_client(L, 1);
    if (cl == NULL)
        lua_pushliteral(L, "sibyl.redis.client (closed)");
    else if (cl->nconns > 1)
        lua_pushfstring(L, "sibyl.redis.client %s:%d/%d (pool %d)", cl->host, cl->port, cl->db,
                        cl->nconns);
    else
        lua_pushfstring(L, "sibyl.redis.client %s:%d/%d", cl->host, cl->port, cl->db);
    return 1;
}

/* ----------------------------------------------------------- registration */

static const luaL_Reg client_methods[] = {
    {"call", l_call},
    {"_pipeline", l_pipeline},
    {"_open_sub", sb_redis_open_sub},
    {"stats", l_stats},
    {"close", l_client_close},
    {"__gc", l_client_close},
    {"__tostring", l_client_tostring},
    {NULL, NULL}
};

static const luaL_Reg core_funcs[] = {
    {"connect", l_connect},
    {NULL, NULL}
};

int luaopen_sibyl_redis_core(lua_State *L)
{
    luaL_newlib(L, core_funcs);
    sb_newmeta(L, &client_mt_key, "sibyl.redis.client");
    luaL_setfuncs(L, client_methods, 0);
    lua_setfield(L, -2, "client_mt");
    sb_redis_sub_register(L);
    lua_pushlightuserdata(L, NULL);     /* redis.null, the same value as cjson.null */
    lua_setfield(L, -2, "null");
    lua_pushfstring(L, "%d.%d.%d", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
    lua_setfield(L, -2, "hiredis_version");
    return 1;
}
