/*
 * http_h1.c -- the plain-http engine of sibyl.http (sb_http.h): HTTP/1.1
 * over keep-alive connections on libevent events, responses parsed by
 * http-parser (nodejs/http-parser, Debian's libhttp-parser). This is the
 * fast path for local inference servers (Ollama, vLLM, llama.cpp), fixture
 * servers and LAN services. On a warm connection a request costs two
 * system calls: one sendmsg straight from attach() (EV_WRITE is armed only
 * when the socket does not take everything) and one recv into a shared
 * buffer fed to the parser; the read event stays registered for the
 * connection's life, so the epoll set does not change per request.
 *
 * Connections are pooled per host:port. A transfer takes an idle connection
 * of its pool, or opens one while the per-host and global limits allow
 * (closing an idle connection of another host to make room), or waits in
 * its pool's FIFO. A connection that completes a keep-alive response goes
 * back to the pool (or straight to the next waiter); idle ones are dropped
 * after 118 s (curl's default) or when the server closes them.
 *
 * Names are resolved with getaddrinfo on the worker pool (so /etc/hosts and
 * nsswitch apply) and cached per host for 60 s; numeric hosts skip it. Each
 * address is tried in turn (localhost -> ::1, then 127.0.0.1).
 *
 * Failure handling follows libcurl's: a request sent on a reused connection
 * that the server closed without answering is retried once on a fresh one;
 * `timeout` bounds the whole transfer, `connect_timeout` each connect.
 *
 * Caveats: no pipelining, no Expect/100-continue, no compression, no TLS,
 * no proxies: the core routes those to libcurl (http_client.c).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/event.h>
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

static void dispatch(h1_req *rq);
static void conn_close(h1_conn *c);
static void conn_free(h1_conn *c);
static int conn_input(h1_conn *c, const char *data, size_t len);

/* ------------------------------------------------------------ helpers */

static void rq_fail(h1_req *rq, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void rq_fail(h1_req *rq, const char *kind, const char *fmt, ...)
{
    if (rq->timer_on) {
        event_del(&rq->timer);
        rq->timer_on = 0;
    }
    if (rq->x->done)
        return;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sb_xfer_fail(rq->x, kind, "%s: %s", rq->x->url, msg);
}

static int limit_ok(long n, long limit)
{
    return limit <= 0 || n < limit;
}

static void enqueue(h1_pool *p, h1_req *rq)
{
    rq->qnext = NULL;
    rq->queued = 1;
    if (p->qtail)
        p->qtail->qnext = rq;
    else
        p->qhead = rq;
    p->qtail = rq;
}

static h1_req *dequeue(h1_pool *p)
{
    h1_req *rq = p->qhead;
    if (rq) {
        p->qhead = rq->qnext;
        if (p->qhead == NULL)
            p->qtail = NULL;
        rq->queued = 0;
        rq->qnext = NULL;
    }
    return rq;
}

static void unqueue(h1_pool *p, h1_req *rq)
{
    h1_req **pp = &p->qhead, *prev = NULL;
    while (*pp && *pp != rq) {
        prev = *pp;
        pp = &(*pp)->qnext;
    }
    if (*pp == NULL)
        return;
    *pp = rq->qnext;
    if (p->qtail == rq)
        p->qtail = prev;
    rq->queued = 0;
    rq->qnext = NULL;
}

/* ------------------------------------------------------------- parser */

static int on_header_field(http_parser *p, const char *s, size_t len)
{
    h1_conn *c = p->data;
    if (c->last_value) {
        c->last_value = 0;
        if (sb_xfer_header_end(c->rq->x) != 0)
            return -1;
    }
    return sb_xfer_header_part(c->rq->x, 0, s, len);
}

static int on_header_value(http_parser *p, const char *s, size_t len)
{
    h1_conn *c = p->data;
    c->last_value = 1;
    return sb_xfer_header_part(c->rq->x, 1, s, len);
}

static int interim(const http_parser *p)
{
    return p->status_code >= 100 && p->status_code < 200 && p->status_code != 101;
}

static int on_headers_complete(http_parser *p)
{
    h1_conn *c = p->data;
    c->last_value = 0;
    if (interim(p))
        return 0;
    sb_xfer_headers_done(c->rq->x, (long)p->status_code);
    return c->rq->head_only ? 1 : 0;        /* 1: no body follows */
}

static int on_body(http_parser *p, const char *s, size_t len)
{
    h1_conn *c = p->data;
    sb_xfer *x = c->rq->x;
    if (sb_xfer_body(x, s, len) != 0)
        return -1;
    if (x->streaming && x->len >= SB_HTTP_STREAM_HIGH_WATER) {
        x->paused = 1;                      /* back-pressure: stop reading */
        http_parser_pause(p, 1);
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    h1_conn *c = p->data;
    sb_xfer *x = c->rq->x;
    if (interim(p)) {
        sb_xfer_headers_reset(x);           /* 100 Continue and friends */
        return 0;
    }
    sb_xfer_header_end(x);                  /* after trailers */
    c->keep_alive = http_should_keep_alive(p) && p->status_code != 101;
    c->complete = 1;
    http_parser_pause(p, 1);                /* nothing more belongs to it */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* -------------------------------------------------------- connections */

static void pool_drop_idle(h1_pool *p, h1_conn *c)
{
    for (h1_conn **pp = &p->idle; *pp; pp = &(*pp)->next_idle) {
        if (*pp == c) {
            *pp = c->next_idle;
            c->next_idle = NULL;
            return;
        }
    }
}

/* Close an idle connection of any pool to make room under max_connections. */
static int evict_idle(h1_state *st)
{
    for (h1_pool *p = st->pools; p; p = p->next) {
        if (p->idle) {
            conn_free(p->idle);         /* not conn_close: the room is the caller's */
            return 1;
        }
    }
    return 0;
}

static int can_open(h1_pool *p)
{
    h1_state *st = p->st;
    if (!limit_ok(p->nconns, st->h->max_host_connections))
        return 0;
    return limit_ok(st->nconns, st->h->max_connections) || evict_idle(st);
}

/* Release c's socket, its events and buffered bytes. */
static void conn_shut(h1_conn *c)
{
    if (c->fd >= 0) {
        event_del(&c->rev);
        event_del(&c->wev);
        evutil_closesocket(c->fd);
        c->fd = -1;
    }
    if (c->out) {
        evbuffer_free(c->out);
        c->out = NULL;
    }
    free(c->held);
    c->held = NULL;
    c->held_len = 0;
}

/* Send the queued bytes without SIGPIPE. 0 (all sent, or EV_WRITE armed
 * for the rest) or -1 with errno set. */
static int conn_flush(h1_conn *c)
{
    while (c->out && evbuffer_get_length(c->out) > 0) {
        struct evbuffer_iovec v[16];
        int nv = evbuffer_peek(c->out, -1, NULL, v, 16);
        if (nv > 16)
            nv = 16;
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = (struct iovec *)v;            /* same layout as struct iovec */
        msg.msg_iovlen = (size_t)nv;
        ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (RETRIABLE(errno)) {
                event_add(&c->wev, NULL);
                return 0;
            }
            return -1;
        }
        evbuffer_drain(c->out, (size_t)n);
    }
    return 0;
}

/* Queue bytes behind what the socket has not taken yet. */
static int conn_queue(h1_conn *c, const char *s, size_t len)
{
    if (len == 0)
        return 0;
    if (c->out == NULL && (c->out = evbuffer_new()) == NULL)
        return -1;
    return evbuffer_add(c->out, s, len);
}

static void conn_write_failed(h1_conn *c, int err);

/* Hand the request to connection c and send it: straight to the socket when
 * it is connected and idle (one sendmsg, no EV_WRITE round), else queued. */
static void attach(h1_conn *c, h1_req *rq)
{
    c->rq = rq;
    rq->conn = c;
    c->got_bytes = 0;
    c->complete = 0;
    c->last_value = 0;
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    size_t skip = 0;
    if (!c->connecting && (c->out == NULL || evbuffer_get_length(c->out) == 0)) {
        struct iovec iov[2] = {{rq->head, rq->head_len}, {(void *)rq->body, rq->body_len}};
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = rq->body_len ? 2 : 1;
        ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        if (n < 0 && !RETRIABLE(errno)) {
            conn_write_failed(c, errno);
            return;
        }
        skip = n < 0 ? 0 : (size_t)n;
        if (skip == rq->head_len + rq->body_len)
            return;
    }
    int rc;
    if (skip < rq->head_len)
        rc = conn_queue(c, rq->head + skip, rq->head_len - skip) ||
             conn_queue(c, rq->body, rq->body_len);
    else
        rc = conn_queue(c, rq->body + (skip - rq->head_len), rq->body_len - (skip - rq->head_len));
    if (rc != 0) {
        rq_fail(rq, "http", "out of memory queueing the request");
        conn_close(c);
        return;
    }
    if (!c->connecting)
        event_add(&c->wev, NULL);
}

static void detach(h1_conn *c)
{
    if (c->rq) {
        c->rq->conn = NULL;
        c->rq = NULL;
    }
}

/* Give waiting transfers the room a closed connection left. */
static void serve_waiting(h1_state *st, h1_pool *first)
{
    if (first && first->qhead && can_open(first))
        dispatch(dequeue(first));
    for (h1_pool *p = st->pools; p; p = p->next)
        while (p->qhead && can_open(p)) {
            h1_req *rq = dequeue(p);
            dispatch(rq);
            if (rq->queued)
                break;                      /* still waiting (a lookup) */
        }
}

/* Close c and forget it. */
static void conn_free(h1_conn *c)
{
    h1_pool *p = c->pool;
    if (c->rq == NULL)
        pool_drop_idle(p, c);
    detach(c);
    conn_shut(c);
    p->nconns--;
    p->st->nconns--;
    free(c);
}

/* Close c and let a waiting transfer have its room. */
static void conn_close(h1_conn *c)
{
    h1_pool *p = c->pool;
    conn_free(c);
    serve_waiting(p->st, p);
}

/* The response is complete: end the transfer, reuse the connection. */
static void conn_done(h1_conn *c)
{
    h1_req *rq = c->rq;
    h1_state *st = c->pool->st;
    int keep = c->keep_alive && !c->eof && (c->out == NULL || evbuffer_get_length(c->out) == 0) &&
               limit_ok(c->pool->nconns - 1, st->h->max_host_connections) &&
               limit_ok(st->nconns - 1, st->h->max_connections);     /* limits lowered meanwhile */
    if (rq->timer_on) {
        event_del(&rq->timer);
        rq->timer_on = 0;
    }
    detach(c);
    c->served++;
    sb_xfer_finish(rq->x);
    if (!keep) {
        conn_close(c);
        return;
    }
    h1_pool *p = c->pool;
    h1_req *next = dequeue(p);
    if (next) {
        attach(c, next);
    } else {
        c->idle_since = sb_now();
        c->next_idle = p->idle;
        p->idle = c;
    }
}

/* Parse bytes that arrived. Returns 1 when c no longer serves its transfer
 * (the response completed, or c failed and is gone), else 0. */
static int conn_input(h1_conn *c, const char *data, size_t len)
{
    h1_req *rq = c->rq;
    if (rq == NULL) {                       /* bytes on an idle connection */
        conn_close(c);
        return 1;
    }
    sb_xfer *x = rq->x;
    c->got_bytes = 1;
    size_t n = http_parser_execute(&c->parser, &parser_settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e != HPE_OK && e != HPE_PAUSED) {
        if (!x->done)
            rq_fail(rq, "http", "malformed response from %s:%d: %s", c->pool->host,
                    c->pool->port, http_errno_description(e));
        else if (rq->timer_on) {
            event_del(&rq->timer);
            rq->timer_on = 0;
        }
        conn_close(c);
        return 1;
    }
    if (c->complete) {
        if (n < len)
            c->eof = 1;                     /* bytes after the response: do not reuse */
        conn_done(c);
        return 1;
    }
    if (x->paused) {                        /* back-pressure: keep the rest, stop reading */
        if (n < len) {
            c->held = malloc(len - n);
            if (c->held == NULL) {
                rq_fail(rq, "http", "out of memory holding a paused stream");
                conn_close(c);
                return 1;
            }
            memcpy(c->held, data + n, len - n);
            c->held_len = len - n;
        }
        event_del(&c->rev);
    }
    return 0;
}

/* The server closed the connection (err 0) or it failed (errno). */
static void conn_broken(h1_conn *c, int err)
{
    h1_pool *p = c->pool;
    h1_req *rq = c->rq;
    if (rq == NULL) {                       /* the server closed an idle connection */
        conn_close(c);
        return;
    }
    c->eof = 1;
    if (err == 0 && !c->complete) {
        http_parser_execute(&c->parser, &parser_settings, NULL, 0);   /* EOF ends close-delimited bodies */
        if (c->complete) {
            conn_done(c);
            return;
        }
    }
    if (c->served > 0 && !c->got_bytes && !rq->retried) {
        /* A keep-alive connection the server had closed: send again once. */
        rq->retried = 1;
        detach(c);
        conn_close(c);
        dispatch(rq);
        return;
    }
    if (err == 0)
        rq_fail(rq, "connect", "%s:%d closed the connection before the response ended (%s)",
                p->host, p->port, rq->x->headers_done ? "mid-body" : "no complete response");
    else
        rq_fail(rq, "connect", "connection to %s:%d failed: %s", p->host, p->port, strerror(err));
    conn_close(c);
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    h1_conn *c = arg;
    SB_UNUSED(what);
    char *buf = c->pool->st->rbuf;
    ssize_t n = recv(fd, buf, sizeof c->pool->st->rbuf, 0);
    if (n > 0)
        conn_input(c, buf, (size_t)n);
    else if (n == 0 || !RETRIABLE(errno))
        conn_broken(c, n == 0 ? 0 : errno);
}

/* The server stopped reading (a 413 before the whole body, say): stop
 * writing and read its answer, as libcurl does. */
static void conn_write_failed(h1_conn *c, int err)
{
    SB_UNUSED(err);
    c->eof = 1;                             /* the connection is not reusable */
    event_del(&c->wev);
    if (c->out)
        evbuffer_drain(c->out, evbuffer_get_length(c->out));
}

static int conn_connect(h1_conn *c);

/* Connected (or not) to the address c->addr; try the next on failure. */
static void connect_done(h1_conn *c, short what)
{
    h1_pool *p = c->pool;
    h1_req *rq = c->rq;
    int err = 0;
    socklen_t elen = sizeof err;
    if (what & EV_TIMEOUT)
        err = ETIMEDOUT;
    else if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0)
        err = errno;
    if (err == 0) {
        c->connecting = 0;
        event_add(&c->rev, NULL);
        if (conn_flush(c) != 0)
            conn_write_failed(c, errno);
        return;
    }
    while (++c->addr < p->naddrs) {        /* the host's next address */
        if (conn_connect(c) == 0) {
            attach(c, rq);
            return;
        }
        err = errno;
    }
    if (err == ETIMEDOUT && (what & EV_TIMEOUT))
        rq_fail(rq, "timeout", "connecting to %s:%d timed out after %g s (opts.connect_timeout)",
                p->host, p->port, rq->connect_timeout);
    else
        rq_fail(rq, "connect", "cannot connect to %s:%d: %s", p->host, p->port, strerror(err));
    conn_close(c);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    h1_conn *c = arg;
    SB_UNUSED(fd);
    if (c->connecting) {
        connect_done(c, what);
        return;
    }
    if (conn_flush(c) != 0)
        conn_write_failed(c, errno);
}

/* (Re)connect c to its pool's address c->addr; the request must be
 * attached again afterwards. 0, or -1 with errno set. */
static int conn_connect(h1_conn *c)
{
    h1_pool *p = c->pool;
    h1_req *rq = c->rq;
    conn_shut(c);
    const struct sockaddr *sa = (const struct sockaddr *)&p->addrs[c->addr];
    evutil_socket_t fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, sa, p->addrlens[c->addr]) != 0 && errno != EINPROGRESS) {
        int e = errno;
        evutil_closesocket(fd);
        errno = e;
        return -1;
    }
    struct event_base *base = p->st->h->rt->base;
    c->fd = fd;
    event_assign(&c->rev, base, fd, EV_READ | EV_PERSIST, read_cb, c);
    event_assign(&c->wev, base, fd, EV_WRITE, write_cb, c);
    c->connecting = 1;
    double ct = rq ? rq->connect_timeout : 10;
    struct timeval tv = {(time_t)ct, (suseconds_t)((ct - (double)(time_t)ct) * 1e6)};
    event_add(&c->wev, ct > 0 ? &tv : NULL);   /* writable = connected */
    return 0;
}

static void conn_open(h1_pool *p, h1_req *rq)
{
    h1_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        rq_fail(rq, "http", "out of memory opening a connection");
        return;
    }
    c->pool = p;
    c->fd = -1;
    p->nconns++;
    p->st->nconns++;
    c->rq = rq;
    rq->conn = c;
    int err = 0;
    for (; c->addr < p->naddrs; c->addr++) {
        if (conn_connect(c) == 0) {
            attach(c, rq);
            return;
        }
        err = errno;
    }
    rq_fail(rq, "connect", "cannot connect to %s:%d: %s", p->host, p->port, strerror(err));
    conn_free(c);                   /* not conn_close: no recursion through waiters */
}

/* ------------------------------------------------------------ lookups */

static void resolve_work(void *arg)
{
    h1_resolve *j = arg;
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    j->rc = getaddrinfo(j->host, j->port, &hints, &j->res);
}

static void resolve_done(void *arg)
{
    h1_resolve *j = arg;
    h1_pool *p = j->pool;
    if (p) {
        p->job = NULL;
        p->naddrs = 0;
        for (struct addrinfo *ai = j->rc == 0 ? j->res : NULL; ai && p->naddrs < H1_MAX_ADDRS;
             ai = ai->ai_next) {
            if (ai->ai_addrlen > sizeof p->addrs[0])
                continue;
            memcpy(&p->addrs[p->naddrs], ai->ai_addr, ai->ai_addrlen);
            p->addrlens[p->naddrs++] = (socklen_t)ai->ai_addrlen;
        }
        /* Take the waiters out first: dispatch() may queue some again. */
        h1_req *list = p->qhead;
        p->qhead = p->qtail = NULL;
        if (p->naddrs > 0) {
            p->expires = sb_now() + H1_DNS_TTL;
        } else {
            p->expires = -1;            /* look up again on the next request */
        }
        while (list) {
            h1_req *rq = list;
            list = rq->qnext;
            rq->queued = 0;
            rq->qnext = NULL;
            if (p->naddrs > 0)
                dispatch(rq);
            else
                rq_fail(rq, "connect", "cannot resolve host \"%s\": %s", p->host,
                        j->rc ? gai_strerror(j->rc) : "no usable address");
        }
    }
    if (j->res)
        freeaddrinfo(j->res);
    free(j);
}

static int needs_lookup(h1_pool *p)
{
    return p->expires != 0 && (p->naddrs == 0 || sb_now() > p->expires);
}

static void start_lookup(h1_pool *p, h1_req *rq)
{
    if (p->job)
        return;
    size_t hl = strlen(p->host);
    h1_resolve *j = calloc(1, sizeof *j + hl + 1);
    if (j == NULL) {
        unqueue(p, rq);
        rq_fail(rq, "http", "out of memory resolving %s", p->host);
        return;
    }
    memcpy(j->host, p->host, hl + 1);
    snprintf(j->port, sizeof j->port, "%d", p->port);
    j->pool = p;
    p->job = j;
    if (sb_pool_submit(p->st->h->rt, resolve_work, resolve_done, j) != 0) {
        p->job = NULL;
        free(j);
        unqueue(p, rq);
        rq_fail(rq, "http", "out of memory resolving %s", p->host);
    }
}

/* ----------------------------------------------------------- dispatch */

static void dispatch(h1_req *rq)
{
    h1_pool *p = rq->pool;
    if (needs_lookup(p)) {
        enqueue(p, rq);
        start_lookup(p, rq);
        return;
    }
    double now = 0;
    while (p->idle) {
        h1_conn *c = p->idle;
        p->idle = c->next_idle;
        c->next_idle = NULL;
        if (now == 0)
            now = sb_now();
        if (now - c->idle_since > H1_IDLE_MAX_AGE) {
            conn_free(c);               /* stale; already off the idle list */
            continue;
        }
        attach(c, rq);
        return;
    }
    if (can_open(p))
        conn_open(p, rq);
    else
        enqueue(p, rq);
}

/* ------------------------------------------------------------- engine */

static h1_state *get_state(sb_http *h)
{
    if (h->h1 == NULL) {
        h1_state *st = calloc(1, sizeof *st);
        if (st)
            st->h = h;
        h->h1 = st;
    }
    return h->h1;
}

static h1_pool *get_pool(h1_state *st, const char *host, size_t hlen, int port)
{
    for (h1_pool *p = st->pools; p; p = p->next)
        if (p->port == port && strlen(p->host) == hlen && strncasecmp(p->host, host, hlen) == 0)
            return p;
    h1_pool *p = calloc(1, sizeof *p);
    if (p == NULL || (p->host = strndup(host, hlen)) == NULL) {
        free(p);
        return NULL;
    }
    p->st = st;
    p->port = port;
    p->expires = 1;                     /* a name: look it up */
    struct sockaddr_in *a4 = (struct sockaddr_in *)&p->addrs[0];
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&p->addrs[0];
    if (inet_pton(AF_INET, p->host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        p->addrlens[0] = sizeof *a4;
        p->naddrs = 1;
        p->expires = 0;
    } else if (inet_pton(AF_INET6, p->host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        p->addrlens[0] = sizeof *a6;
        p->naddrs = 1;
        p->expires = 0;
    }
    p->next = st->pools;
    st->pools = p;
    return p;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    h1_req *rq = arg;
    SB_UNUSED(fd);
    SB_UNUSED(what);
    rq->timer_on = 0;
    sb_xfer *x = rq->x;
    h1_conn *c = rq->conn;
    if (rq->queued)
        unqueue(rq->pool, rq);
    rq_fail(rq, "timeout", "timed out after %g s (%s)", rq->timeout,
            x->headers_done ? "mid-body" : "waiting for the response");
    if (c)
        conn_close(c);
}

/* Does a caller's header line name `name`? */
static int header_is(const char *line, const char *name)
{
    size_t n = strlen(name);
    return strncasecmp(line, name, n) == 0 && line[n] == ':';
}

/* Format the request head into rq->head. */
static int build_head(h1_req *rq, const sb_http_req *r, const char *authority, size_t alen,
                      const char *target, size_t tlen)
{
    int has_host = 0, has_ua = 0, has_accept = 0, has_ct = 0;
    size_t cap = strlen(r->method) + tlen + alen + 256;
    for (int i = 0; i < r->nheaders; i++)
        cap += strlen(r->headers[i]) + 2;
    char *b = malloc(cap);
    if (b == NULL)
        return -1;
    size_t n = (size_t)snprintf(b, cap, "%s %s%.*s HTTP/1.1\r\n", r->method,
                                target[0] == '/' ? "" : "/", (int)tlen, target);
    for (int i = 0; i < r->nheaders; i++) {
        const char *line = r->headers[i];
        const char *colon = strchr(line, ':');
        if (colon == NULL || colon == line)
            continue;
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        int is_host = header_is(line, "host"), is_ua = header_is(line, "user-agent");
        int is_accept = header_is(line, "accept"), is_ct = header_is(line, "content-type");
        has_host |= is_host;
        has_ua |= is_ua;
        has_accept |= is_accept;
        has_ct |= is_ct;
        /* "Name:" with no value removes a header (libcurl's rule); the engine
         * owns the message framing. */
        if (*v == '\0' || header_is(line, "content-length") || header_is(line, "transfer-encoding") ||
            header_is(line, "expect"))
            continue;
        size_t ll = strlen(line);
        memcpy(b + n, line, ll);
        n += ll;
        b[n++] = '\r';
        b[n++] = '\n';
    }
    if (!has_host)
        n += (size_t)snprintf(b + n, cap - n, "Host: %.*s\r\n", (int)alen, authority);
    if (!has_ua)
        n += (size_t)snprintf(b + n, cap - n, "User-Agent: sibyl/%s\r\n", SIBYL_VERSION);
    if (!has_accept)
        n += (size_t)snprintf(b + n, cap - n, "Accept: */*\r\n");
    int wants_len = r->body != NULL || strcmp(r->method, "POST") == 0 ||
                    strcmp(r->method, "PUT") == 0 || strcmp(r->method, "PATCH") == 0;
    if (r->body && !has_ct)
        n += (size_t)snprintf(b + n, cap - n, "Content-Type: application/x-www-form-urlencoded\r\n");
    if (wants_len)
        n += (size_t)snprintf(b + n, cap - n, "Content-Length: %zu\r\n", r->body ? r->body_len : 0);
    b[n++] = '\r';
    b[n++] = '\n';
    rq->head = b;
    rq->head_len = n;
    return 0;
}

static int h1_start(sb_xfer *x, const sb_http_req *r)
{
    /* http://authority[/path][?query][#fragment] */
    if (strncasecmp(r->url, "http://", 7) != 0) {
        sb_xfer_fail(x, "url", "%s: the h1 engine speaks plain http:// only; use engine = \"curl\" "
                     "(or the default, \"auto\") for other schemes", r->url);
        return -1;
    }
    if (r->compressed) {
        sb_xfer_fail(x, "url", "%s: the h1 engine does not decode compressed bodies; use engine = "
                     "\"curl\" (or the default, \"auto\") with compressed = true", r->url);
        return -1;
    }
    const char *auth = r->url + 7;
    size_t alen = strcspn(auth, "/?#");
    const char *rest = auth + alen;
    size_t tlen = strcspn(rest, "#");
    const char *host = auth;
    size_t hlen = alen;
    int port = 80;
    const char *colon = NULL;
    if (alen > 0 && auth[0] == '[') {           /* [IPv6]:port */
        const char *close = memchr(auth, ']', alen);
        if (close == NULL)
            goto bad;
        host = auth + 1;
        hlen = (size_t)(close - host);
        if (close + 1 < auth + alen) {
            if (close[1] != ':')
                goto bad;
            colon = close + 1;
        }
    } else {
        colon = memchr(auth, ':', alen);
        if (colon)
            hlen = (size_t)(colon - auth);
    }
    if (colon) {
        char *end;
        long pv = strtol(colon + 1, &end, 10);
        if (end != auth + alen || pv <= 0 || pv > 65535)
            goto bad;
        port = (int)pv;
    }
    if (hlen == 0 || memchr(host, '@', hlen))
        goto bad;

    h1_state *st = get_state(x->h);
    h1_pool *p = st ? get_pool(st, host, hlen, port) : NULL;
    h1_req *rq = p ? calloc(1, sizeof *rq) : NULL;
    if (rq == NULL) {
        sb_xfer_fail(x, "http", "%s: out of memory", r->url);
        return -1;
    }
    rq->x = x;
    rq->pool = p;
    rq->body = r->body;
    rq->body_len = r->body ? r->body_len : 0;
    rq->timeout = r->timeout;
    rq->connect_timeout = r->connect_timeout;
    rq->head_only = strcmp(r->method, "HEAD") == 0;
    if (build_head(rq, r, auth, alen, tlen ? rest : "/", tlen ? tlen : 1) != 0) {
        free(rq);
        sb_xfer_fail(x, "http", "%s: out of memory", r->url);
        return -1;
    }
    x->ed = rq;
    evtimer_assign(&rq->timer, st->h->rt->base, timer_cb, rq);
    if (r->timeout > 0) {
        struct timeval tv = {(time_t)r->timeout,
                             (suseconds_t)((r->timeout - (double)(time_t)r->timeout) * 1e6)};
        evtimer_add(&rq->timer, &tv);
        rq->timer_on = 1;
    }
    dispatch(rq);
    return 0;
bad:
    sb_xfer_fail(x, "url", "%s: malformed URL (expected http://host[:port]/path)", r->url);
    return -1;
}

static void h1_stop(sb_xfer *x)
{
    h1_req *rq = x->ed;
    if (rq == NULL)
        return;
    x->ed = NULL;
    if (rq->timer_on)
        event_del(&rq->timer);
    if (rq->pool) {
        if (rq->queued)
            unqueue(rq->pool, rq);
        if (rq->conn) {
            h1_conn *c = rq->conn;
            detach(c);
            c->rq = NULL;
            conn_close(c);              /* mid-transfer: abort it on the wire */
        }
    }
    free(rq->head);
    free(rq);
}

static void h1_resume(sb_xfer *x)
{
    h1_req *rq = x->ed;
    if (rq == NULL || rq->conn == NULL)
        return;
    h1_conn *c = rq->conn;
    http_parser_pause(&c->parser, 0);
    char *held = c->held;
    size_t len = c->held_len;
    c->held = NULL;
    c->held_len = 0;
    int gone = held ? conn_input(c, held, len) : 0;
    free(held);
    if (!gone && !x->paused)
        event_add(&c->rev, NULL);
}

void sb_http_h1_configure(sb_http *h)
{
    h1_state *st = h->h1;
    if (st == NULL)
        return;
    /* Lowered limits: drop idle connections above them now. */
    for (h1_pool *p = st->pools; p; p = p->next)
        while (p->idle && (!limit_ok(p->nconns - 1, h->max_host_connections) ||
                           !limit_ok(st->nconns - 1, h->max_connections)))
            conn_close(p->idle);
    serve_waiting(st, NULL);
}

void sb_http_h1_free(sb_http *h)
{
    h1_state *st = h->h1;
    if (st == NULL)
        return;
    h->h1 = NULL;
    while (st->pools) {
        h1_pool *p = st->pools;
        st->pools = p->next;
        while (p->qhead) {
            h1_req *rq = dequeue(p);
            rq->pool = NULL;
        }
        if (p->job)
            p->job->pool = NULL;
        while (p->idle) {
            h1_conn *c = p->idle;
            p->idle = c->next_idle;
            conn_shut(c);
            free(c);
        }
        free(p->host);
        free(p);
    }
    free(st);
}

const sb_http_engine sb_http_h1 = {"h1", h1_start, h1_stop, h1_resume};
