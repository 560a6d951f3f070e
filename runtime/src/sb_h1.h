/*
 * sb_h1.h -- what the two halves of the plain-http engine share:
 * http_h1.c (requests, pools, name lookups, dispatch, the engine entry
 * points) and http_h1_conn.c (connections: connect, write, read, the
 * response parser). See http_h1.c for how the engine works.
 */
#ifndef SB_H1_H
#define SB_H1_H

#include <stddef.h>
#include <sys/socket.h>

#include <event2/event_struct.h>
#include <http_parser.h>

#include "sb_http.h"

#define H1_IDLE_MAX_AGE 118.0       /* seconds an idle connection is kept */
#define H1_DNS_TTL 60.0             /* seconds a resolved name is cached */
#define H1_MAX_ADDRS 8
#define RETRIABLE(e) ((e) == EAGAIN || (e) == EWOULDBLOCK || (e) == EINTR)

typedef struct h1_state h1_state;
typedef struct h1_pool h1_pool;
typedef struct h1_conn h1_conn;
typedef struct h1_req h1_req;
typedef struct h1_resolve h1_resolve;

struct h1_state {
    sb_http *h;
    h1_pool *pools;
    long nconns;                    /* open connections, all pools */
    char rbuf[65536];               /* every read lands here, then the parser */
};

struct h1_pool {
    h1_pool *next;
    h1_state *st;
    char *host;                     /* without IPv6 brackets */
    int port;
    struct sockaddr_storage addrs[H1_MAX_ADDRS];
    socklen_t addrlens[H1_MAX_ADDRS];
    int naddrs;
    double expires;                 /* when addrs go stale; 0 = numeric, never */
    h1_resolve *job;                /* a lookup in flight */
    h1_conn *idle;                  /* idle connections, most recent first */
    long nconns;
    h1_req *qhead, *qtail;          /* transfers waiting for a connection */
};

struct h1_conn {
    h1_pool *pool;
    evutil_socket_t fd;             /* -1 when closed */
    struct event rev, wev;          /* reads (persistent); connect and blocked writes */
    struct evbuffer *out;           /* bytes the socket has not taken yet */
    char *held;                     /* received but not parsed: a paused stream */
    size_t held_len;
    http_parser parser;
    h1_req *rq;                     /* the transfer it serves; NULL when idle */
    h1_conn *next_idle;
    double idle_since;
    int addr;                       /* index of the address it connects to */
    int connecting, served, got_bytes, last_value, complete, keep_alive, eof;
};

struct h1_req {
    sb_xfer *x;
    h1_pool *pool;
    h1_conn *conn;
    h1_req *qnext;
    int queued, retried, head_only;
    char *head;                     /* request line and headers */
    size_t head_len;
    const char *body;               /* pinned by the core */
    size_t body_len;
    double timeout, connect_timeout;
    struct event timer;
    int timer_on;
};

struct h1_resolve {
    h1_pool *pool;                  /* NULL once the engine has gone */
    char port[8];
    struct addrinfo *res;
    int rc;
    char host[];
};

/* http_h1.c */
void sb_h1_fail(h1_req *rq, const char *kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
h1_req *sb_h1_dequeue(h1_pool *p);
void sb_h1_dispatch(h1_req *rq);

/* http_h1_conn.c */
int sb_h1_can_open(h1_pool *p);
void sb_h1_conn_open(h1_pool *p, h1_req *rq);
void sb_h1_attach(h1_conn *c, h1_req *rq);
void sb_h1_detach(h1_conn *c);
void sb_h1_serve_waiting(h1_state *st, h1_pool *first);
int sb_h1_conn_input(h1_conn *c, const char *data, size_t len);
void sb_h1_conn_shut(h1_conn *c);
void sb_h1_conn_free(h1_conn *c);
void sb_h1_conn_close(h1_conn *c);

static inline int sb_h1_limit_ok(long n, long limit)
{
    return limit <= 0 || n < limit;
}

static inline void sb_h1_timer_stop(h1_req *rq)
{
    if (rq->timer_on) {
        event_del(&rq->timer);
        rq->timer_on = 0;
    }
}

#endif
