/*
 * redis_sub.c -- subscriptions of `sibyl.redis` (see sb_redis.h): a client in
 * "sub" mode with one connection of its own, on which hiredis dispatches
 * pushed messages and (p)(un)subscribe confirmations to on_sub_msg.
 *
 *   client:_open_sub(max_queue) -> sub | nil, err
 *   sub:next([timeout])         -> msg | nil, err (timeout, closed, connect, overflow)
 *   sub:_ctl(what, name...)     -> true | nil, err   waits for the confirmations
 *   sub:_names()                -> {channel...}, {pattern...}
 *   sub:close(), tostring(sub)
 *
 * Messages queue in C (up to max_queue; beyond that they are counted and
 * reported once by sub:next()) until a task takes them. Only one task may
 * wait in sub:next() at a time.
 *
 * (P)(UN)SUBSCRIBE requests are serialised: one is on the wire at a time and
 * waits for its confirmations, and names that would change nothing are
 * dropped before sending. That keeps hiredis 0.14's subscription
 * bookkeeping in the states it knows (it asserts on an UNSUBSCRIBE for a
 * channel it has no callback for, and on pipelined unsubscribe/subscribe).
 *
 * The channel and pattern sets are what we asked for; after a dropped
 * connection a timer reconnects (with the client's backoff), re-AUTHs and
 * resubscribes to all of them, and sub:next() reports the gap once (kind
 * "connect"). With reconnect = false the subscription dies instead (kind
 * "closed").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_redis.h"

static char sub_mt_key;

/* ------------------------------------------------------------ name sets */

static int set_find(sb_strset *s, const char *v, size_t len)
{
    for (size_t i = 0; i < s->n; i++)
        if (strlen(s->v[i]) == len && memcmp(s->v[i], v, len) == 0)
            return (int)i;
    return -1;
}

static int set_add(sb_strset *s, const char *v, size_t len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        char **nv = realloc(s->v, cap * sizeof *nv);
        if (nv == NULL)
            return -1;
        s->v = nv;
        s->cap = cap;
    }
    char *d = malloc(len + 1);
    if (d == NULL)
        return -1;
    memcpy(d, v, len);
    d[len] = '\0';
    s->v[s->n++] = d;
    return 0;
}

static void set_del(sb_strset *s, int i)
{
    free(s->v[i]);
    s->v[i] = s->v[--s->n];
}

static void set_free(sb_strset *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

/* ---------------------------------------------------------------- engine */

static void on_sub_msg(redisAsyncContext *ac, void *r, void *privdata);
static void ctl_pump(sb_rclient *cl);

/* Send SUBSCRIBE/PSUBSCRIBE for a whole set (resubscribing). Returns the
 * number of confirmations to expect, or -1. */
static int send_set(sb_rclient *cl, redisAsyncContext *ac, const char *cmd, sb_strset *s)
{
    if (s->n == 0)
        return 0;
    const char **argv = malloc((s->n + 1) * sizeof *argv);
    size_t *lens = malloc((s->n + 1) * sizeof *lens);
    int rc = -1;
    if (argv && lens) {
        argv[0] = cmd;
        lens[0] = strlen(cmd);
        for (size_t i = 0; i < s->n; i++) {
            argv[i + 1] = s->v[i];
            lens[i + 1] = strlen(s->v[i]);
        }
        if (redisAsyncCommandArgv(ac, on_sub_msg, cl, (int)s->n + 1, argv, lens) == REDIS_OK)
            rc = (int)s->n;
    }
    free(argv);
    free(lens);
    return rc;
}

static void sub_wake(sb_rsub *s)
{
    if (s->next_op)
        sb_op_done(s->next_op);
}

static void sub_enqueue(sb_rclient *cl, redisReply *reply)
{
    sb_rsub *s = cl->sub;
    if (s->qlen >= s->max_queue) {
        s->dropped++;
        return;
    }
    if (s->qlen == s->qcap) {
        size_t cap = s->qcap ? s->qcap * 2 : 16;
        redisReply **nq = malloc(cap * sizeof *nq);
        if (nq == NULL) {
            s->dropped++;
            return;
        }
        for (size_t i = 0; i < s->qlen; i++)
            nq[i] = s->q[(s->qhead + i) % s->qcap];
        free(s->q);
        s->q = nq;
        s->qcap = cap;
        s->qhead = 0;
    }
    redisReply *mine = sb_redis_steal(reply);
    if (mine == NULL) {
        s->dropped++;
        return;
    }
    s->q[(s->qhead + s->qlen) % s->qcap] = mine;
    s->qlen++;
    sub_wake(s);
}

static redisReply *sub_dequeue(sb_rsub *s)
{
    if (s->qlen == 0)
        return NULL;
    redisReply *r = s->q[s->qhead];
    s->qhead = (s->qhead + 1) % s->qcap;
    s->qlen--;
    return r;
}

/* Fail every queued (un)subscribe request. */
static void ctl_fail_all(sb_rclient *cl, const char *kind, const char *msg)
{
    sb_rsub *s = cl->sub;
    sb_rreq *q;
    while ((q = s->ctl_head) != NULL) {
        s->ctl_head = q->next;
        sb_redis_req_settle(q, cl, kind, "%s", msg);
        q->live = 0;
        q->conn = NULL;
        sb_redis_req_release(q);
    }
    s->ctl_tail = NULL;
}


int sb_redis_sub_resubscribe(sb_rclient *cl, redisAsyncContext *ac)
{
    int a = send_set(cl, ac, "SUBSCRIBE", &cl->sub->channels);
    int b = a < 0 ? -1 : send_set(cl, ac, "PSUBSCRIBE", &cl->sub->patterns);
    return a < 0 || b < 0 ? -1 : a + b;
}


void sb_redis_sub_down(sb_rconn *c, int was_ready, double now)
{
    sb_rclient *cl = c->cl;
    sb_rsub *s = cl->sub;
    ctl_fail_all(cl, c->fail_kind ? c->fail_kind : "connect", c->fail_msg);
    if (!c->ever_ready || s->dead)
        return;                 /* the first connect failed: core.connect says so */
    if (!cl->reconnect) {
        s->dead = 1;
        s->notice_kind = "closed";
        snprintf(s->notice, sizeof s->notice, "%s", c->fail_msg);
        sub_wake(s);
        return;
    }
    if (was_ready) {
        char where[300];
        s->notice_kind = "connect";
        snprintf(s->notice, sizeof s->notice, "redis: the subscription connection to %s was "
                 "lost; it reconnects and resubscribes by itself, but messages published "
                 "meanwhile are lost", sb_redis_where(c, where, sizeof where));
        sub_wake(s);
    }
    sb_redis_conn_timer(c, c->next_attempt - now);      /* conn_timer_cb reconnects */
}


void sb_redis_sub_free(sb_rclient *cl)
{
    sb_rsub *s = cl->sub;
    ctl_fail_all(cl, "closed", "redis: the subscription was closed");
    if (s->next_op) {
        *(sb_rclient **)sb_op_data(s->next_op) = NULL;
        sb_op_done(s->next_op);
        s->next_op = NULL;
    }
    redisReply *r;
    while ((r = sub_dequeue(s)) != NULL)
        freeReplyObject(r);
    free(s->q);
    set_free(&s->channels);
    set_free(&s->patterns);
    if (s->next_timer)
        event_free(s->next_timer);
    free(s);
    cl->sub = NULL;
}


void sb_redis_ctl_unlink(sb_rreq *q)
{
    if (!q->live || q->sent)
        return;                 /* on the wire: its confirmations will come */
    sb_rsub *s = q->conn->cl->sub;
    sb_rreq **pp = &s->ctl_head, *prev = NULL;
    while (*pp && *pp != q) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (*pp) {
        *pp = q->next;
        if (s->ctl_tail == q)
            s->ctl_tail = prev;
        q->live = 0;
        q->conn = NULL;
    }
}

/* Everything hiredis dispatches on a subscription's connection: messages
 * and (p)(un)subscribe confirmations. NULL when the connection goes. */
static void on_sub_msg(redisAsyncContext *ac, void *r, void *privdata)
{
    sb_rclient *cl = privdata;
    sb_rconn *c = ac->data;
    redisReply *reply = r;
    if (reply == NULL || c->ac != ac || cl->closed)
        return;
    int array = reply->type == REDIS_REPLY_ARRAY;
#ifdef REDIS_REPLY_PUSH
    array = array || reply->type == REDIS_REPLY_PUSH;
#endif
    if (!array || reply->elements < 3 || reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *k = reply->element[0]->str;
    size_t klen = reply->element[0]->len;
    if ((sb_redis_is_cmd(k, klen, "message") && reply->elements == 3) ||
        (sb_redis_is_cmd(k, klen, "pmessage") && reply->elements == 4)) {
        cl->replies++;
        sub_enqueue(cl, reply);
        return;
    }
    if (!sb_redis_is_cmd(k, klen, "subscribe") && !sb_redis_is_cmd(k, klen, "psubscribe") &&
        !sb_redis_is_cmd(k, klen, "unsubscribe") && !sb_redis_is_cmd(k, klen, "punsubscribe"))
        return;
    if (c->state == CONN_CONNECTING) {
        if (c->setup_left > 0 && --c->setup_left == 0)
            sb_redis_conn_ready(c);
        return;
    }
    sb_rreq *q = cl->sub->ctl_head;
    if (q == NULL || !q->sent)
        return;
    if (++q->got >= q->n) {
        cl->sub->ctl_head = q->next;
        if (cl->sub->ctl_head == NULL)
            cl->sub->ctl_tail = NULL;
        q->live = 0;
        q->conn = NULL;
        sb_redis_req_settle(q, cl, NULL, NULL);
        sb_redis_req_release(q);
        ctl_pump(cl);
    }
}

/* Put the head (un)subscribe request on the wire, after dropping the names
 * that would change nothing; requests left with no names complete at once. */
static void ctl_pump(sb_rclient *cl)
{
    sb_rsub *s = cl->sub;
    sb_rconn *c = &cl->conns[0];
    sb_rreq *q;
    while ((q = s->ctl_head) != NULL && !q->sent) {
        int sub = q->what == CTL_SUBSCRIBE || q->what == CTL_PSUBSCRIBE;
        sb_strset *set = (q->what == CTL_SUBSCRIBE || q->what == CTL_UNSUBSCRIBE)
                      ? &s->channels : &s->patterns;
        static const char *cmds[] = {"SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE"};
        size_t nn = 0;
        int failed = 0;
        if (q->nnames == 0 && !sub) {       /* unsubscribe from everything of that kind */
            q->names = calloc(set->n ? set->n : 1, sizeof *q->names);
            q->nlens = calloc(set->n ? set->n : 1, sizeof *q->nlens);
            failed = q->names == NULL || q->nlens == NULL;
            for (size_t i = 0; !failed && i < set->n; i++) {
                if ((q->names[i] = strdup(set->v[i])) == NULL)
                    failed = 1;
                else
                    q->nlens[i] = strlen(set->v[i]);
                q->nnames = i + 1;
            }
        }
        const char **argv = malloc((q->nnames + 1) * sizeof *argv);
        size_t *lens = malloc((q->nnames + 1) * sizeof *lens);
        failed = failed || argv == NULL || lens == NULL;
        for (size_t i = 0; !failed && i < q->nnames; i++) {
            int at = set_find(set, q->names[i], q->nlens[i]);
            if (sub ? at >= 0 : at < 0)
                continue;                       /* nothing to change */
            if (sub ? set_add(set, q->names[i], q->nlens[i]) != 0 : (set_del(set, at), 0))
                failed = 1;
            argv[nn + 1] = q->names[i];
            lens[nn + 1] = q->nlens[i];
            nn++;
        }
        if (!failed && nn > 0) {
            argv[0] = cmds[q->what];
            lens[0] = strlen(cmds[q->what]);
            if (c->ac == NULL ||
                redisAsyncCommandArgv(c->ac, on_sub_msg, cl, (int)nn + 1, argv, lens) != REDIS_OK)
                failed = 1;
        }
        free(argv);
        free(lens);
        if (!failed && nn > 0) {
            q->sent = 1;
            q->n = (int)nn;
            cl->sent++;
            sb_redis_req_arm(q, cl);
            return;
        }
        s->ctl_head = q->next;
        if (s->ctl_head == NULL)
            s->ctl_tail = NULL;
        if (failed)
            sb_redis_req_settle(q, cl, "redis", "redis: out of memory (or no connection) "
                                "sending %s", cmds[q->what]);
        else
            sb_redis_req_settle(q, cl, NULL, NULL);
        q->live = 0;
        q->conn = NULL;
        sb_redis_req_release(q);
    }
}

/* ----------------------------------------------------------- Lua binding */

static sb_rclient *check_sub(lua_State *L)
{
    sb_rclient_ud *u = sb_checkudata(L, 1, &sub_mt_key, "sibyl.redis.subscription");
    return u->cl;
}

static int sub_closed_fail(lua_State *L)
{
    return sb_fail(L, "closed", "redis: the subscription is closed");
}

/* client:_open_sub{max_queue=} -> sub | nil, err: a dedicated connection
 * with the client's address and credentials. */
int sb_redis_open_sub(lua_State *L)
{
    sb_rclient *parent = sb_redis_check_client(L, 1);
    if (sb_rt(L)->current == NULL)
        return luaL_error(L, "r:subscribe does I/O and must run inside a task "
                             "(use sibyl.spawn(fn) or sibyl.run(fn))");
    double maxq = luaL_optnumber(L, 2, 10000);
    luaL_argcheck(L, maxq >= 1, 2, "max_queue must be >= 1");
    if (parent == NULL)
        return sb_redis_closed_fail(L);
    sb_rclient *cl = sb_redis_client_new(parent->rt);
    if (cl == NULL)
        return luaL_error(L, "redis: out of memory");
    sb_rclient_ud *u = sb_redis_new_ud(L, &sub_mt_key, cl);
    int ud = lua_gettop(L);
    cl->sub = calloc(1, sizeof *cl->sub);
    cl->host = strdup(parent->host);
    cl->password = parent->password ? strdup(parent->password) : NULL;
    cl->username = parent->username ? strdup(parent->username) : NULL;
    if (cl->sub == NULL || cl->host == NULL || (parent->password && !cl->password) ||
        (parent->username && !cl->username)) {
        u->cl = NULL;
        sb_redis_client_free(cl);
        return luaL_error(L, "redis: out of memory");
    }
    cl->sub->max_queue = (size_t)maxq;
    cl->sub->next_timer = NULL;
    cl->port = parent->port;
    cl->db = parent->db;
    cl->protocol = parent->protocol;
    cl->reconnect = parent->reconnect;
    cl->timeout = parent->timeout;
    cl->reconnect_max = parent->reconnect_max;
    cl->max_pending = parent->max_pending;
    cl->nconns = 1;
    return sb_redis_start(L, cl, ud);
}

/* sub:_ctl(what, name...) with what in subscribe|psubscribe|unsubscribe|punsubscribe. */
static int l_sub_ctl(lua_State *L)
{
    sb_rclient *cl = check_sub(L);
    static const char *const whats[] = {"subscribe", "psubscribe", "unsubscribe",
                                        "punsubscribe", NULL};
    int what = luaL_checkoption(L, 2, NULL, whats);
    int nn = lua_gettop(L) - 2;
    for (int i = 3; i <= lua_gettop(L); i++)
        if (lua_type(L, i) != LUA_TSTRING)
            return luaL_error(L, "redis: %s: argument #%d must be a string (a %s name), got %s",
                              whats[what], i - 2,
                              what == CTL_PSUBSCRIBE || what == CTL_PUNSUBSCRIBE ? "pattern"
                                                                                 : "channel",
                              luaL_typename(L, i));
    if ((what == CTL_SUBSCRIBE || what == CTL_PSUBSCRIBE) && nn == 0)
        return luaL_error(L, "redis: %s needs at least one name", whats[what]);
    if (cl == NULL)
        return sub_closed_fail(L);
    if (cl->sub->dead)
        return sb_fail(L, "closed", "%s", cl->sub->notice);
    sb_rconn *c = &cl->conns[0];
    if (c->state != CONN_READY)
        return sb_fail(L, "connect", "redis: the subscription is reconnecting (%s); try again",
                       c->fail_msg);
    int timed = cl->timeout > 0;
    sb_op *op = sb_op_new(L, sizeof(sb_rreq *), sb_redis_push_req, sb_redis_cancel_req);
    sb_rreq *q = sb_redis_req_new(cl, REQ_CTL, 1, timed, whats[what], strlen(whats[what]));
    if (q == NULL || (nn > 0 && ((q->names = calloc((size_t)nn, sizeof *q->names)) == NULL ||
                                 (q->nlens = calloc((size_t)nn, sizeof *q->nlens)) == NULL))) {
        sb_op_abort(op);
        if (q)
            sb_redis_req_free(q);
        return luaL_error(L, "redis: out of memory");
    }
    q->what = what;
    for (int i = 0; i < nn; i++) {
        size_t len;
        const char *s = lua_tolstring(L, i + 3, &len);
        int dup = 0;
        for (size_t j = 0; j < q->nnames && !dup; j++)
            dup = q->nlens[j] == len && memcmp(q->names[j], s, len) == 0;
        if (dup)
            continue;
        char *d = malloc(len + 1);
        if (d == NULL) {
            sb_op_abort(op);
            sb_redis_req_free(q);
            return luaL_error(L, "redis: out of memory");
        }
        memcpy(d, s, len);
        d[len] = '\0';
        q->names[q->nnames] = d;
        q->nlens[q->nnames++] = len;
    }
    q->live = 1;
    q->conn = c;
    q->next = NULL;
    *(sb_rreq **)sb_op_data(op) = q;
    q->op = op;
    sb_rsub *s = cl->sub;
    if (s->ctl_tail)
        s->ctl_tail->next = q;
    else
        s->ctl_head = q;
    s->ctl_tail = q;
    ctl_pump(cl);
    return sb_op_park(L, op);
}

/* Push what sub:next() returns now: an overflow report, a message, a
 * notice, closed, or timeout. */
static int push_next_result(lua_State *L, sb_rclient *cl, int timed_out)
{
    sb_rsub *s = cl->sub;
    if (s->dropped > 0) {
        size_t d = s->dropped;
        s->dropped = 0;
        sb_fail(L, "overflow", "redis: %zu messages were dropped because %zu were already "
                "waiting (max_queue); read faster or raise max_queue", d, s->max_queue);
        lua_pushnumber(L, (lua_Number)d);
        lua_setfield(L, -2, "dropped");
        return 2;
    }
    redisReply *r = sub_dequeue(s);
    if (r) {
        int p = r->elements == 4;
        lua_createtable(L, 0, 4);
        lua_pushliteral(L, "message");
        lua_setfield(L, -2, "kind");
        redisReply *ch = r->element[p ? 2 : 1], *data = r->element[p ? 3 : 2];
        lua_pushlstring(L, ch->str ? ch->str : "", ch->len);
        lua_setfield(L, -2, "channel");
        lua_pushlstring(L, data->str ? data->str : "", data->len);
        lua_setfield(L, -2, "data");
        if (p) {
            lua_pushlstring(L, r->element[1]->str ? r->element[1]->str : "", r->element[1]->len);
            lua_setfield(L, -2, "pattern");
        }
        freeReplyObject(r);
        return 1;
    }
    if (s->notice_kind) {
        const char *k = s->notice_kind;
        if (!s->dead)
            s->notice_kind = NULL;
        return sb_fail(L, k, "%s", s->notice);
    }
    if (timed_out)
        return sb_fail(L, "timeout", "redis: no message arrived within the timeout");
    return sb_fail(L, "timeout", "redis: no message is waiting");
}

static int next_ready(sb_rsub *s)
{
    return s->dropped > 0 || s->qlen > 0 || s->notice_kind != NULL;
}

static int push_next(lua_State *co, void *data)
{
    sb_rclient *cl = *(sb_rclient **)data;
    if (cl == NULL)
        return sub_closed_fail(co);
    sb_rsub *s = cl->sub;
    s->next_op = NULL;
    if (s->next_timer)
        evtimer_del(s->next_timer);
    return push_next_result(co, cl, s->next_timed_out);
}

static void cancel_next(void *data)
{
    sb_rclient *cl = *(sb_rclient **)data;
    if (cl == NULL)
        return;
    cl->sub->next_op = NULL;
    if (cl->sub->next_timer)
        evtimer_del(cl->sub->next_timer);
}

static void next_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_rsub *s = arg;
    SB_UNUSED(fd);
    SB_UNUSED(what);
    s->next_timed_out = 1;
    sub_wake(s);
}

/* sub:next([timeout]) -> msg | nil, err (timeout, closed, connect, overflow) */
static int l_sub_next(lua_State *L)
{
    sb_rclient *cl = check_sub(L);
    double timeout = luaL_optnumber(L, 2, -1);
    if (cl == NULL)
        return sub_closed_fail(L);
    sb_rsub *s = cl->sub;
    if (s->next_op)
        return luaL_error(L, "redis: another task is already waiting on this subscription; "
                             "read it from one task");
    if (next_ready(s))
        return push_next_result(L, cl, 0);
    if (timeout == 0)
        return push_next_result(L, cl, 1);
    sb_op *op = sb_op_new(L, sizeof(sb_rclient *), push_next, cancel_next);
    if (timeout > 0) {
        if (s->next_timer == NULL &&
            (s->next_timer = evtimer_new(cl->rt->base, next_timeout_cb, s)) == NULL) {
            sb_op_abort(op);
            return luaL_error(L, "redis: out of memory");
        }
        struct timeval tv;
        tv.tv_sec = (time_t)timeout;
        tv.tv_usec = (suseconds_t)((timeout - (double)tv.tv_sec) * 1e6);
        event_base_update_cache_time(cl->rt->base);
        evtimer_add(s->next_timer, &tv);
    }
    s->next_timed_out = 0;
    *(sb_rclient **)sb_op_data(op) = cl;
    s->next_op = op;
    return sb_op_park(L, op);
}

static int l_sub_close(lua_State *L)
{
    sb_rclient_ud *u = sb_checkudata(L, 1, &sub_mt_key, "sibyl.redis.subscription");
    if (u->cl) {
        sb_rclient *cl = u->cl;
        u->cl = NULL;
        sb_redis_client_free(cl);
    }
    return 0;
}

static int l_sub_tostring(lua_State *L)
{
    sb_rclient *cl = check_sub(L);
    if (cl == NULL) {
        lua_pushliteral(L, "sibyl.redis.subscription (closed)");
        return 1;
    }
    lua_pushfstring(L, "sibyl.redis.subscription %s:%d (%d channel%s, %d pattern%s)", cl->host,
                    cl->port, (int)cl->sub->channels.n, cl->sub->channels.n == 1 ? "" : "s",
                    (int)cl->sub->patterns.n, cl->sub->patterns.n == 1 ? "" : "s");
    return 1;
}

/* sub:_names() -> {channel...}, {pattern...} */
static int l_sub_names(lua_State *L)
{
    sb_rclient *cl = check_sub(L);
    for (int k = 0; k < 2; k++) {
        sb_strset *set = cl == NULL ? NULL : k == 0 ? &cl->sub->channels : &cl->sub->patterns;
        lua_createtable(L, set ? (int)set->n : 0, 0);
        for (size_t i = 0; set && i < set->n; i++) {
            lua_pushstring(L, set->v[i]);
            lua_rawseti(L, -2, (int)i + 1);
        }
    }
    return 2;
}

static const luaL_Reg sub_methods[] = {
    {"next", l_sub_next},
    {"_ctl", l_sub_ctl},
    {"_names", l_sub_names},
    {"close", l_sub_close},
    {"__gc", l_sub_close},
    {"__tostring", l_sub_tostring},
    {NULL, NULL}
};


void sb_redis_sub_register(lua_State *L)
{
    sb_newmeta(L, &sub_mt_key, "sibyl.redis.subscription");
    luaL_setfuncs(L, sub_methods, 0);
    lua_setfield(L, -2, "sub_mt");
}
