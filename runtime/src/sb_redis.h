/*
 * sb_redis.h -- internals shared by the files of `sibyl.redis.core`:
 *
 *   redis_conn.c   the engine: requests, connections, reconnects (no Lua)
 *   redis.c        the client's Lua binding, replies to Lua, luaopen
 *   redis_sub.c    subscriptions: engine and Lua binding
 *
 * Engine. A client owns `pool` connections (sb_rconn). Each holds one
 * hiredis async context while it is up, attached to the runtime's
 * event_base with hiredis's adapters/libevent.h. A command goes to the
 * connection with the fewest replies outstanding; hiredis appends it to that
 * connection's output buffer and writes the buffer when the socket is
 * writable, so commands issued by many tasks in one loop turn leave in one
 * write (pipelining with no extra code). Replies come back in order and
 * complete requests (sb_rreq) through their callback. A connection that
 * drops fails its requests with kind "connect" and goes DOWN; the next
 * command that picks it reconnects (HELLO/AUTH/SELECT again), with
 * exponential backoff between failed attempts.
 *
 * Lifetimes (sb.h's op contract). A request has two owners: the waiting
 * task's op (q->op) and hiredis, which keeps q as a callback's privdata
 * until the reply arrives or the connection goes (q->live). When the task
 * goes first (cancelled, deadline) the cancel hook clears q->op and q stays
 * behind as a tombstone: the late reply finds it, is dropped, and frees it.
 * When the reply goes first, the push hook (or the cancel hook) frees it.
 * Module structures point at ops only between park and push/cancel; op data
 * point at module structures only while those live (close clears them).
 * hiredis callbacks never call Lua: they store results and sb_op_done().
 *
 * Subscriptions are clients in "sub" mode (cl->sub != NULL): one connection
 * on which hiredis dispatches pushed messages to the subscription's
 * callback. See redis_sub.c.
 */
#ifndef SB_REDIS_H
#define SB_REDIS_H

#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "sb.h"

enum { CONN_DOWN, CONN_CONNECTING, CONN_READY };
enum { CTL_SUBSCRIBE, CTL_PSUBSCRIBE, CTL_UNSUBSCRIBE, CTL_PUNSUBSCRIBE };
enum { REQ_CALL, REQ_LIST, REQ_CTL };   /* one reply; a list of replies; (un)subscribe */

#define SB_REDIS_RETRY_FIRST 0.1        /* seconds before the second attempt */

typedef struct sb_rclient sb_rclient;
typedef struct sb_rconn sb_rconn;
typedef struct sb_rreq sb_rreq;

struct sb_rconn {
    sb_rclient *cl;
    redisAsyncContext *ac;      /* NULL while DOWN */
    int state;
    int tcp_up;                 /* ac's TCP connection is established */
    int ever_ready;             /* was READY once: later READYs are reconnects */
    int setup_left;             /* setup replies (and resubscribe confirmations) due */
    size_t pending;             /* replies outstanding on ac */
    struct event *timer;        /* connect timeout; a subscription's reconnect timer */
    double next_attempt;        /* sb_now() before which we do not reconnect */
    double backoff;             /* delay after the next failed attempt; 0 = none yet */
    const char *fail_kind;      /* why ac is going away, for its pending requests */
    char fail_msg[512];
};

typedef struct {
    char **v;
    size_t n, cap;
} sb_strset;

typedef struct {
    sb_strset channels, patterns;   /* what we asked for: resubscribed after a reconnect */
    redisReply **q;             /* ring buffer of messages */
    size_t qhead, qlen, qcap, max_queue, dropped;
    sb_op *next_op;             /* the task in sub:next() */
    struct event *next_timer;
    int next_timed_out;
    sb_rreq *ctl_head, *ctl_tail;   /* (un)subscribe requests; only the head is on the wire */
    const char *notice_kind;    /* one-shot error for sub:next() */
    char notice[512];
    int dead;                   /* lost for good (reconnect = false) */
} sb_rsub;

struct sb_rclient {
    sibyl_rt *rt;
    char *host, *password, *username;
    int port, db, protocol, reconnect;
    double timeout, reconnect_max;
    size_t max_pending;
    const struct timeval *cmd_tv;   /* per-command timeout (a libevent common timeout) */
    struct timeval cmd_tv_plain;
    sb_rconn *conns;
    int nconns, rr;
    size_t pending, peak;
    double sent, replies, errors, reconnects;
    int closed;
    sb_op *connect_op;          /* the task in core.connect / _open_sub */
    int connect_left;           /* connections still to come up */
    const char *ekind;          /* why the connect failed */
    char emsg[512];
    sb_rsub *sub;               /* subscriptions only */
};

struct sb_rreq {
    int kind;                   /* REQ_* */
    sb_op *op;                  /* the waiting task's op; NULL once it is gone */
    sb_rconn *conn;             /* valid while live */
    int live;                   /* hiredis (or the control queue) still holds q */
    int settled;                /* the outcome is fixed and the op completed */
    int n, got;                 /* replies (confirmations) expected, received */
    int timed;                  /* the timer is pending */
    const char *ekind;          /* failure of the whole request, or NULL */
    char *emsg;
    redisReply *rep1;           /* REQ_CALL */
    redisReply **rep;           /* REQ_LIST: n slots */
    char name[32];              /* command name, for messages */
    /* REQ_CTL */
    sb_rreq *next;
    int what, sent;
    char **names;
    size_t *nlens, nnames;
    struct event *timer;        /* points into space[] when the request has a timeout */
    _Alignas(max_align_t) unsigned char space[];
};

/* The op data of a task waiting in core.connect or r:subscribe. */
typedef struct {
    sb_rclient *cl;             /* NULL once the client went first (closed) */
    int ref;                    /* pins the userdata until it is handed over */
} sb_rconnect_wait;

/* What a client or subscription userdata holds (NULL once closed). */
typedef struct {
    sb_rclient *cl;
} sb_rclient_ud;

/* ------------------------------------------------- redis_conn.c: engine */

/* A request of `kind` expecting n replies, with a timer when `timed`. */
sb_rreq *sb_redis_req_new(sb_rclient *cl, int kind, int n, int timed, const char *name,
                          size_t nlen);
void sb_redis_req_free(sb_rreq *q);
/* Free q once neither hiredis nor a task holds it. */
void sb_redis_req_release(sb_rreq *q);
void sb_redis_req_stop_timer(sb_rreq *q);
/* Fix q's outcome (kind NULL: success) and wake its task; cl counts errors. */
void sb_redis_req_settle(sb_rreq *q, sb_rclient *cl, const char *kind, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
/* Start q's command timeout (cl->timeout), if it has a timer. */
void sb_redis_req_arm(sb_rreq *q, sb_rclient *cl);

sb_rclient *sb_redis_client_new(sibyl_rt *rt);
/* Queue one command of q on c (hiredis writes it on the next loop turn):
 * 0, or -1 when c's context is gone or closing. */
int sb_redis_send(sb_rconn *c, sb_rreq *q, int argc, const char **argv, const size_t *lens);
/* Allocate cl->nconns connections with their timers: 0, or -1 (ENOMEM). */
int sb_redis_client_init(sb_rclient *cl);
/* Setup done: c takes commands (and completes a pending connect). */
void sb_redis_conn_ready(sb_rconn *c);
/* Start connecting c: 0, or -1 with c DOWN and c->fail_msg saying why. */
int sb_redis_conn_open(sb_rconn *c);
/* The connection for the next command, or NULL with *why filled in. */
sb_rconn *sb_redis_conn_pick(sb_rclient *cl, char *why, size_t whylen);
void sb_redis_conn_timer(sb_rconn *c, double secs);
/* "host:port" of c's client, in buf. */
const char *sb_redis_where(sb_rconn *c, char *buf, size_t len);
/* Close every connection (failing what is pending with kind "closed") and
 * free the client. Never from inside a hiredis callback. */
void sb_redis_client_free(sb_rclient *cl);

/* Take ownership of a reply hiredis is about to free. NULL on ENOMEM. */
redisReply *sb_redis_steal(redisReply *r);
int sb_redis_is_cmd(const char *s, size_t len, const char *name);

/* ------------------------------------------------ redis.c: Lua binding */

int sb_redis_push_req(lua_State *co, void *data);
void sb_redis_cancel_req(void *data);
sb_rclient *sb_redis_check_client(lua_State *L, int idx);
sb_rclient_ud *sb_redis_new_ud(lua_State *L, const void *key, sb_rclient *cl);
/* Connect cl's connections and park until they are up; the userdata at
 * index ud (which owns cl) is what the task gets back. */
int sb_redis_start(lua_State *L, sb_rclient *cl, int ud);
int sb_redis_closed_fail(lua_State *L);

/* ------------------------------------------- redis_sub.c: subscriptions */

/* client:_open_sub(max_queue) -> sub | nil, err */
int sb_redis_open_sub(lua_State *L);
/* The subscription's connection went DOWN (c->fail_* say why). */
void sb_redis_sub_down(sb_rconn *c, int was_ready, double now);
/* Queue SUBSCRIBE/PSUBSCRIBE for everything on a new context: the number
 * of confirmations to expect, or -1. */
int sb_redis_sub_resubscribe(sb_rclient *cl, redisAsyncContext *ac);
/* Fail the waiters and free the subscription state (cl->sub = NULL). */
void sb_redis_sub_free(sb_rclient *cl);
/* A cancelled (un)subscribe request leaves the queue if it was not sent. */
void sb_redis_ctl_unlink(sb_rreq *q);
/* Add the subscription methods to the table on top of the stack. */
void sb_redis_sub_register(lua_State *L);

#endif /* SB_REDIS_H */
