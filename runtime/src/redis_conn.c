/*
 * redis_conn.c -- the engine of `sibyl.redis` (see sb_redis.h): requests,
 * connections on hiredis's libevent adapter, setup (HELLO/AUTH/SELECT),
 * reconnects with backoff, timeouts. No Lua here: callbacks store results
 * and complete ops; redis.c and redis_sub.c push them.
 *
 * Connection states: DOWN -> CONNECTING (TCP, then the setup replies) ->
 * READY -> DOWN. A context that fails reaches conn_lost through whichever
 * hiredis callback sees it first (a NULL reply, the connect or disconnect
 * callback); conn_drop is our own way out (timeouts, refused credentials,
 * close). Both leave c->fail_kind/fail_msg for the requests still pending,
 * which hiredis completes with NULL replies.
 *
 * Caveats:
 *  - hiredis resolves host names with a blocking getaddrinfo(): prefer
 *    addresses, or names in /etc/hosts.
 *  - Never free a context from its connect or disconnect callback: hiredis
 *    uses it after they return. From reply callbacks redisAsyncFree defers.
 *  - A command that times out leaves its reply to arrive later (and be
 *    dropped); the connection stays open.
 */
#include <assert.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hiredis/adapters/libevent.h>

#include "sb_redis.h"

/* Tags for the setup commands sent on every (re)connect. */
static char tag_hello, tag_auth, tag_select, tag_ping;

static void conn_down(sb_rconn *c);

/* ------------------------------------------------------------- helpers */

const char *sb_redis_where(sb_rconn *c, char *buf, size_t len)
{
    snprintf(buf, len, "%s:%d", c->cl->host, c->cl->port);
    return buf;
}

static void clear_free(char *s)
{
    if (s) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

/* Take ownership of hiredis's reply: copy the head, leave hiredis an empty
 * husk to free. Works for every type (freeReplyObject skips NULL members). */
redisReply *sb_redis_steal(redisReply *r)
{
    redisReply *mine = malloc(sizeof *mine);
    if (mine == NULL)
        return NULL;
    *mine = *r;
    r->str = NULL;
    r->element = NULL;
    r->elements = 0;
    return mine;
}

int sb_redis_is_cmd(const char *s, size_t len, const char *name)
{
    /* The first letter settles most checks: every command is checked
     * against a few dozen names (check_command, is_blocking). */
    if (len == 0 || ((unsigned char)s[0] | 32) != ((unsigned char)name[0] | 32))
        return 0;
    return strlen(name) == len && strncasecmp(s, name, len) == 0;
}

/* ------------------------------------------------------------ requests */

static void req_timeout_cb(evutil_socket_t fd, short what, void *arg);

sb_rreq *sb_redis_req_new(sb_rclient *cl, int kind, int n, int timed, const char *name,
                          size_t nlen)
{
    size_t extra = timed ? event_get_struct_event_size() : 0;
    sb_rreq *q = calloc(1, sizeof *q + extra);
    if (q == NULL)
        return NULL;
    q->kind = kind;
    q->n = n;
    if (kind == REQ_LIST && (q->rep = calloc((size_t)n, sizeof *q->rep)) == NULL) {
        free(q);
        return NULL;
    }
    if (timed) {
        q->timer = (struct event *)q->space;
        event_assign(q->timer, cl->rt->base, -1, 0, req_timeout_cb, q);
    }
    if (nlen >= sizeof q->name)
        nlen = sizeof q->name - 1;
    for (size_t i = 0; i < nlen; i++)
        q->name[i] = (char)toupper((unsigned char)name[i]);
    return q;
}

void sb_redis_req_stop_timer(sb_rreq *q)
{
    if (q->timed) {
        event_del(q->timer);
        q->timed = 0;
    }
}

void sb_redis_req_free(sb_rreq *q)
{
    sb_redis_req_stop_timer(q);
    if (q->rep1)
        freeReplyObject(q->rep1);
    if (q->rep) {
        for (int i = 0; i < q->n; i++)
            if (q->rep[i])
                freeReplyObject(q->rep[i]);
        free(q->rep);
    }
    for (size_t i = 0; i < q->nnames; i++)
        free(q->names[i]);
    free(q->names);
    free(q->nlens);
    free(q->emsg);
    free(q);
}

/* Free q once neither hiredis nor a task holds it. */
void sb_redis_req_release(sb_rreq *q)
{
    if (!q->live && q->op == NULL)
        sb_redis_req_free(q);
}

/* Fix q's outcome (kind NULL: success) and wake its task. Later replies are
 * dropped. */
void sb_redis_req_settle(sb_rreq *q, sb_rclient *cl, const char *kind, const char *fmt, ...)
{
    if (q->settled)
        return;
    q->settled = 1;
    sb_redis_req_stop_timer(q);
    if (kind) {
        char buf[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        q->ekind = kind;
        q->emsg = strdup(buf);
        if (cl)
            cl->errors++;
    }
    if (q->op)
        sb_op_done(q->op);
}

static void req_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_rreq *q = arg;
    SB_UNUSED(fd);
    SB_UNUSED(what);
    q->timed = 0;
    sb_rclient *cl = q->live ? q->conn->cl : NULL;
    sb_redis_req_settle(q, cl, "timeout", "redis: %s got no reply within %g s (opts.timeout); "
                        "its reply will be dropped when it comes. Raise timeout for slow commands",
                        q->name, cl ? cl->timeout : 0.0);
}

/* Timers count from now: a task may have kept the loop busy since libevent
 * last read the clock (callbacks see a cached time). */
void sb_redis_req_arm(sb_rreq *q, sb_rclient *cl)
{
    if (q->timer && cl->cmd_tv) {
        event_base_update_cache_time(cl->rt->base);
        evtimer_add(q->timer, cl->cmd_tv);
        q->timed = 1;
    }
}

/* ------------------------------------------------------ connection engine */

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);

/* ac is going away (or never came): record why for its pending requests,
 * then bookkeeping. Only when ac is the connection's current context. */
static void conn_lost(sb_rconn *c, const redisAsyncContext *ac)
{
    if (c->ac != ac)
        return;                 /* handled already, or we dropped it ourselves */
    char where[300];
    const char *why = ac->errstr && *ac->errstr ? ac->errstr : "connection closed";
    sb_redis_where(c, where, sizeof where);
    c->fail_kind = "connect";
    if (!c->tcp_up)
        snprintf(c->fail_msg, sizeof c->fail_msg, "redis: cannot connect to %s (%s); is "
                 "redis-server running there? (start it, or fix opts.host/opts.port)", where, why);
    else if (c->state != CONN_READY)
        snprintf(c->fail_msg, sizeof c->fail_msg, "redis: the connection to %s closed while "
                 "setting up (%s); check the server's log", where, why);
    else if (c->cl->reconnect && !c->cl->closed)
        snprintf(c->fail_msg, sizeof c->fail_msg, "redis: the connection to %s was lost (%s); "
                 "commands in flight may or may not have run; the next command reconnects",
                 where, why);
    else
        snprintf(c->fail_msg, sizeof c->fail_msg, "redis: the connection to %s was lost (%s); "
                 "commands in flight may or may not have run; reconnect = false, so open a "
                 "new client", where, why);
    conn_down(c);
}

/* Drop the connection ourselves: its pending requests fail with kind. */
static void conn_drop(sb_rconn *c, const char *kind, const char *fmt, ...)
{
    redisAsyncContext *ac = c->ac;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->fail_msg, sizeof c->fail_msg, fmt, ap);
    va_end(ap);
    c->fail_kind = kind;
    conn_down(c);
    if (ac)
        redisAsyncFree(ac);     /* deferred by hiredis when inside its callback */
}

void sb_redis_conn_timer(sb_rconn *c, double secs)
{
    struct timeval tv;
    if (secs < 0)
        secs = 0;
    tv.tv_sec = (time_t)secs;
    tv.tv_usec = (suseconds_t)((secs - (double)tv.tv_sec) * 1e6);
    event_base_update_cache_time(c->cl->rt->base);
    evtimer_add(c->timer, &tv);
}

/* Bookkeeping once a connection is gone: c->fail_kind/fail_msg say why. */
static void conn_down(sb_rconn *c)
{
    sb_rclient *cl = c->cl;
    int was_ready = c->state == CONN_READY;
    c->ac = NULL;
    c->state = CONN_DOWN;
    c->tcp_up = 0;
    c->setup_left = 0;
    evtimer_del(c->timer);
    double now = sb_now();
    if (was_ready) {
        c->backoff = 0;
        c->next_attempt = now;  /* the first reconnect is immediate */
    } else {
        c->backoff = c->backoff <= 0 ? SB_REDIS_RETRY_FIRST : c->backoff * 2;
        if (c->backoff > cl->reconnect_max)
            c->backoff = cl->reconnect_max;
        c->next_attempt = now + c->backoff;
    }
    if (cl->connect_op && cl->ekind == NULL) {
        cl->ekind = c->fail_kind ? c->fail_kind : "connect";
        snprintf(cl->emsg, sizeof cl->emsg, "%s", c->fail_msg);
        sb_op_done(cl->connect_op);
    }
    if (cl->sub && !cl->closed)
        sb_redis_sub_down(c, was_ready, now);
}

void sb_redis_conn_ready(sb_rconn *c)
{
    sb_rclient *cl = c->cl;
    c->state = CONN_READY;
    evtimer_del(c->timer);
    c->backoff = 0;
    if (c->ever_ready)
        cl->reconnects++;
    c->ever_ready = 1;
    if (cl->connect_op && cl->connect_left > 0 && --cl->connect_left == 0)
        sb_op_done(cl->connect_op);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    sb_rconn *c = ac->data;
    if (status != REDIS_OK) {
        conn_lost(c, ac);
        return;
    }
    c->tcp_up = 1;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    SB_UNUSED(status);
    conn_lost(ac->data, ac);
}

/* A reply to one of the setup commands (HELLO, AUTH, SELECT, PING). */
static void on_setup(redisAsyncContext *ac, void *r, void *tag)
{
    sb_rconn *c = ac->data;
    redisReply *reply = r;
    if (reply == NULL || c->ac != ac)
        return;                 /* the connection is going; conn_lost says why */
    if (reply->type == REDIS_REPLY_ERROR) {
        char where[300];
        int auth = tag == &tag_auth || strncmp(reply->str, "NOAUTH", 6) == 0 ||
                   strncmp(reply->str, "WRONGPASS", 9) == 0 ||
                   (tag == &tag_hello && strncmp(reply->str, "NOPROTO", 7) != 0);
        sb_redis_where(c, where, sizeof where);
        if (auth)
            conn_drop(c, "auth", "redis: %s refused the credentials: %s (check opts.password "
                      "and opts.username)", where, reply->str);
        else if (tag == &tag_select)
            conn_drop(c, "redis", "redis: SELECT %d failed on %s: %s (check opts.db; the "
                      "server's `databases` setting bounds it)", c->cl->db, where, reply->str);
        else
            conn_drop(c, "redis", "redis: setting up the connection to %s failed: %s",
                      where, reply->str);
        return;
    }
    if (--c->setup_left == 0)
        sb_redis_conn_ready(c);
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    sb_rreq *q = privdata;
    sb_rconn *c = ac->data;
    sb_rclient *cl = c->cl;
    redisReply *reply = r;
    assert(q->live && q->got < q->n);
    c->pending--;
    cl->pending--;
    int slot = q->got++;
    if (reply == NULL) {
        conn_lost(c, ac);
        sb_redis_req_settle(q, cl, c->fail_kind ? c->fail_kind : "connect", "%s", c->fail_msg);
    } else {
        cl->replies++;
        if (reply->type == REDIS_REPLY_ERROR)
            cl->errors++;
        if (!q->settled) {
            redisReply *mine = sb_redis_steal(reply);
            if (mine == NULL)
                sb_redis_req_settle(q, cl, "redis", "redis: out of memory for the reply to %s",
                                    q->name);
            else if (q->kind == REQ_CALL)
                q->rep1 = mine;
            else
                q->rep[slot] = mine;
        }
    }
    if (q->got == q->n) {
        q->live = 0;
        q->conn = NULL;
        sb_redis_req_settle(q, cl, NULL, NULL);
        sb_redis_req_release(q);
    }
}


/* Append the decimal form of n to p; returns the new end. */
static char *put_uint(char *p, size_t n)
{
    char tmp[24];
    int i = 0;
    do {
        tmp[i++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    while (i)
        *p++ = tmp[--i];
    return p;
}

/* RESP-encode a command ourselves and hand hiredis the bytes: hiredis's
 * own formatting (sds appends, printf-style) was a fifth of the client's
 * CPU time per command. Small commands are built on the stack. */
static int send_formatted(redisAsyncContext *ac, void *priv, int argc, const char **argv,
                          const size_t *lens)
{
    size_t need = 16;
    for (int i = 0; i < argc; i++)
        need += lens[i] + 32;
    char small[2048];
    char *buf = need <= sizeof small ? small : malloc(need);
    if (buf == NULL)
        return REDIS_ERR;
    char *p = buf;
    *p++ = '*';
    p = put_uint(p, (size_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p = put_uint(p, lens[i]);
        *p++ = '\r';
        *p++ = '\n';
        memcpy(p, argv[i], lens[i]);
        p += lens[i];
        *p++ = '\r';
        *p++ = '\n';
    }
    int rc = redisAsyncFormattedCommand(ac, on_reply, priv, buf, (size_t)(p - buf));
    if (buf != small)
        free(buf);
    return rc;
}

int sb_redis_send(sb_rconn *c, sb_rreq *q, int argc, const char **argv, const size_t *lens)
{
    sb_rclient *cl = c->cl;
    if (c->ac == NULL || send_formatted(c->ac, q, argc, argv, lens) != REDIS_OK)
        return -1;
    c->pending++;
    cl->pending++;
    cl->sent++;
    if (cl->pending > cl->peak)
        cl->peak = cl->pending;
    return 0;
}

/* -------------------------------------------------------- connections */

static int send_setup(sb_rconn *c, int tag_argc, const char **argv, size_t *lens, void *tag)
{
    if (redisAsyncCommandArgv(c->ac, on_setup, tag, tag_argc, argv, lens) != REDIS_OK)
        return -1;
    c->setup_left++;
    return 0;
}

/*
 * Start connecting c: a new hiredis context with HELLO/AUTH/SELECT queued
 * (PING when there is nothing else, so that READY means a Redis answered),
 * plus the resubscriptions of a subscription. Returns 0, or -1 with the
 * connection DOWN and c->fail_kind/fail_msg saying why.
 */
int sb_redis_conn_open(sb_rconn *c)
{
    sb_rclient *cl = c->cl;
    char where[300], dbs[32], proto[8];
    sb_redis_where(c, where, sizeof where);
    redisAsyncContext *ac = redisAsyncConnect(cl->host, cl->port);
    if (ac == NULL || ac->err) {
        c->fail_kind = "connect";
        snprintf(c->fail_msg, sizeof c->fail_msg, "redis: cannot connect to %s (%s); check "
                 "opts.host and opts.port", where, ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        c->state = CONN_CONNECTING;     /* a failed attempt: conn_down backs off */
        conn_down(c);
        return -1;
    }
    ac->data = c;
    c->ac = ac;
    c->state = CONN_CONNECTING;
    c->tcp_up = 0;
    c->setup_left = 0;
    c->fail_kind = NULL;
    int bad = redisLibeventAttach(ac, cl->rt->base) != REDIS_OK ||
              redisAsyncSetConnectCallback(ac, on_connect) != REDIS_OK ||
              redisAsyncSetDisconnectCallback(ac, on_disconnect) != REDIS_OK;
    const char *argv[6];
    size_t lens[6];
    int n = 0;
    if (!bad && cl->protocol == 3) {
        snprintf(proto, sizeof proto, "%d", cl->protocol);
        argv[n++] = "HELLO";
        argv[n++] = proto;
        if (cl->password) {
            argv[n++] = "AUTH";
            argv[n++] = cl->username ? cl->username : "default";
            argv[n++] = cl->password;
        }
        for (int i = 0; i < n; i++)
            lens[i] = strlen(argv[i]);
        bad = send_setup(c, n, argv, lens, &tag_hello) != 0;
    } else if (!bad && cl->password) {
        argv[n++] = "AUTH";
        if (cl->username)
            argv[n++] = cl->username;
        argv[n++] = cl->password;
        for (int i = 0; i < n; i++)
            lens[i] = strlen(argv[i]);
        bad = send_setup(c, n, argv, lens, &tag_auth) != 0;
    }
    if (!bad && cl->db != 0) {
        snprintf(dbs, sizeof dbs, "%d", cl->db);
        argv[0] = "SELECT";
        argv[1] = dbs;
        lens[0] = 6;
        lens[1] = strlen(dbs);
        bad = send_setup(c, 2, argv, lens, &tag_select) != 0;
    }
    if (!bad && c->setup_left == 0) {
        argv[0] = "PING";
        lens[0] = 4;
        bad = send_setup(c, 1, argv, lens, &tag_ping) != 0;
    }
    if (!bad && cl->sub) {
        int k = sb_redis_sub_resubscribe(cl, ac);
        bad = k < 0;
        if (!bad)
            c->setup_left += k;
    }
    if (bad) {
        conn_drop(c, "connect", "redis: cannot set up a connection to %s (out of memory)", where);
        return -1;
    }
    if (cl->timeout > 0)
        sb_redis_conn_timer(c, cl->timeout);
    return 0;
}

/* The connect timeout, and a subscription's reconnect timer. */
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_rconn *c = arg;
    char where[300];
    SB_UNUSED(fd);
    SB_UNUSED(what);
    if (c->state == CONN_CONNECTING)
        conn_drop(c, "timeout", "redis: connecting to %s took more than %g s (opts.timeout); "
                  "check that the address is right and the server is up",
                  sb_redis_where(c, where, sizeof where), c->cl->timeout);
    else if (c->state == CONN_DOWN && c->cl->sub && !c->cl->closed)
        sb_redis_conn_open(c);           /* a failure re-arms the timer through conn_down */
}

/*
 * The connection for the next command: a DOWN one due for a reconnect
 * first (so a pool fills up again after a restart), else the live one with
 * the fewest replies outstanding. NULL with *why set when none can take it.
 */
sb_rconn *sb_redis_conn_pick(sb_rclient *cl, char *why, size_t whylen)
{
    double now = sb_now();
    sb_rconn *best = NULL, *soonest = NULL;
    for (int k = 0; k < cl->nconns; k++) {
        sb_rconn *c = &cl->conns[(cl->rr + k) % cl->nconns];
        if (c->state == CONN_DOWN) {
            if (cl->reconnect && now >= c->next_attempt) {
                if (sb_redis_conn_open(c) == 0) {
                    best = c;
                    break;
                }
            }
            if (cl->reconnect && (soonest == NULL || c->next_attempt < soonest->next_attempt))
                soonest = c;
            continue;
        }
        if (best == NULL || c->pending < best->pending)
            best = c;
    }
    cl->rr = (cl->rr + 1) % cl->nconns;
    if (best)
        return best;
    sb_rconn *c = soonest ? soonest : &cl->conns[0];
    if (soonest)
        snprintf(why, whylen, "%s; the next reconnect attempt is in %.2f s", c->fail_msg,
                 c->next_attempt - now > 0 ? c->next_attempt - now : 0.0);
    else
        snprintf(why, whylen, "%s", c->fail_msg);
    return NULL;
}

sb_rclient *sb_redis_client_new(sibyl_rt *rt)
{
    sb_rclient *cl = calloc(1, sizeof *cl);
    if (cl)
        cl->rt = rt;
    return cl;
}


int sb_redis_client_init(sb_rclient *cl)
{
    if (cl->timeout > 0) {
        cl->cmd_tv_plain.tv_sec = (time_t)cl->timeout;
        cl->cmd_tv_plain.tv_usec =
            (suseconds_t)((cl->timeout - (double)cl->cmd_tv_plain.tv_sec) * 1e6);
        /* Every command of a client has the same timeout: a common-timeout
         * queue makes adding and deleting their timers O(1). */
        cl->cmd_tv = event_base_init_common_timeout(cl->rt->base, &cl->cmd_tv_plain);
        if (cl->cmd_tv == NULL)
            cl->cmd_tv = &cl->cmd_tv_plain;
    }
    cl->conns = calloc((size_t)cl->nconns, sizeof *cl->conns);
    if (cl->conns == NULL)
        return -1;
    for (int i = 0; i < cl->nconns; i++) {
        cl->conns[i].cl = cl;
        cl->conns[i].timer = evtimer_new(cl->rt->base, conn_timer_cb, &cl->conns[i]);
        if (cl->conns[i].timer == NULL)
            return -1;
    }
    return 0;
}

/* Close every connection (failing what is pending with kind "closed") and
 * free the client. Safe at any time outside hiredis callbacks. */
void sb_redis_client_free(sb_rclient *cl)
{
    cl->closed = 1;
    if (cl->connect_op) {
        sb_rconnect_wait *w = sb_op_data(cl->connect_op);
        w->cl = NULL;
        sb_op_done(cl->connect_op);
        cl->connect_op = NULL;
    }
    if (cl->sub)
        sb_redis_sub_free(cl);
    for (int i = 0; cl->conns && i < cl->nconns; i++) {
        sb_rconn *c = &cl->conns[i];
        if (c->ac)
            conn_drop(c, "closed", "redis: the client was closed while the command waited "
                      "for its reply");
        if (c->timer)
            event_free(c->timer);
    }
    free(cl->conns);
    free(cl->host);
    clear_free(cl->password);
    clear_free(cl->username);
    free(cl);
}
