/*
 * http_h1_conn.c -- connections of the plain-http engine (sb_h1.h): the
 * non-blocking connect (each of the host's addresses in turn), writing a
 * request (one sendmsg straight from attach, EV_WRITE only for what the
 * socket did not take), reading into the engine's shared buffer and
 * feeding http-parser, and what happens when a response completes (the
 * connection goes back to its pool or to the next waiter) or the
 * connection breaks (one retry for a reused connection the server closed).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "sb_h1.h"

static void conn_write_failed(h1_conn *c, int err);
static int conn_connect(h1_conn *c);

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
            sb_h1_conn_free(p->idle);         /* not sb_h1_conn_close: the room is the caller's */
            return 1;
        }
    }
    return 0;
}

int sb_h1_can_open(h1_pool *p)
{
    h1_state *st = p->st;
    if (!sb_h1_limit_ok(p->nconns, st->h->max_host_connections))
        return 0;
    return sb_h1_limit_ok(st->nconns, st->h->max_connections) || evict_idle(st);
}

/* Release c's socket, its events and buffered bytes. */
void sb_h1_conn_shut(h1_conn *c)
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

/* Hand the request to connection c and send it: straight to the socket when
 * it is connected and idle (one sendmsg, no EV_WRITE round), else queued. */
void sb_h1_attach(h1_conn *c, h1_req *rq)
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
        sb_h1_fail(rq, "http", "out of memory queueing the request");
        sb_h1_conn_close(c);
        return;
    }
    if (!c->connecting)
        event_add(&c->wev, NULL);
}

void sb_h1_detach(h1_conn *c)
{
    if (c->rq) {
        c->rq->conn = NULL;
        c->rq = NULL;
    }
}

/* Give waiting transfers the room a closed connection left. */
void sb_h1_serve_waiting(h1_state *st, h1_pool *first)
{
    if (first && first->qhead && sb_h1_can_open(first))
        sb_h1_dispatch(sb_h1_dequeue(first));
    for (h1_pool *p = st->pools; p; p = p->next)
        while (p->qhead && sb_h1_can_open(p)) {
            h1_req *rq = sb_h1_dequeue(p);
            sb_h1_dispatch(rq);
            if (rq->queued)
                break;                      /* still waiting (a lookup) */
        }
}

/* Close c and forget it. */
void sb_h1_conn_free(h1_conn *c)
{
    h1_pool *p = c->pool;
    if (c->rq == NULL)
        pool_drop_idle(p, c);
    sb_h1_detach(c);
    sb_h1_conn_shut(c);
    p->nconns--;
    p->st->nconns--;
    free(c);
}

/* Close c and let a waiting transfer have its room. */
void sb_h1_conn_close(h1_conn *c)
{
    h1_pool *p = c->pool;
    sb_h1_conn_free(c);
    sb_h1_serve_waiting(p->st, p);
}

/* The response is complete: end the transfer, reuse the connection. */
static void conn_done(h1_conn *c)
{
    h1_req *rq = c->rq;
    h1_state *st = c->pool->st;
    int keep = c->keep_alive && !c->eof && (c->out == NULL || evbuffer_get_length(c->out) == 0) &&
               sb_h1_limit_ok(c->pool->nconns - 1, st->h->max_host_connections) &&
               sb_h1_limit_ok(st->nconns - 1, st->h->max_connections);     /* limits lowered meanwhile */
    sb_h1_timer_stop(rq);
    sb_h1_detach(c);
    c->served++;
    sb_xfer_finish(rq->x);
    if (!keep) {
        sb_h1_conn_close(c);
        return;
    }
    h1_pool *p = c->pool;
    h1_req *next = sb_h1_dequeue(p);
    if (next) {
        sb_h1_attach(c, next);
    } else {
        c->idle_since = sb_now();
        c->next_idle = p->idle;
        p->idle = c;
    }
}

/* Parse bytes that arrived. Returns 1 when c no longer serves its transfer
 * (the response completed, or c failed and is gone), else 0. */
int sb_h1_conn_input(h1_conn *c, const char *data, size_t len)
{
    h1_req *rq = c->rq;
    if (rq == NULL) {                       /* bytes on an idle connection */
        sb_h1_conn_close(c);
        return 1;
    }
    sb_xfer *x = rq->x;
    c->got_bytes = 1;
    size_t n = http_parser_execute(&c->parser, &parser_settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e != HPE_OK && e != HPE_PAUSED) {
        if (!x->done)
            sb_h1_fail(rq, "http", "malformed response from %s:%d: %s", c->pool->host,
                    c->pool->port, http_errno_description(e));
        else sb_h1_timer_stop(rq);
        sb_h1_conn_close(c);
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
                sb_h1_fail(rq, "http", "out of memory holding a paused stream");
                sb_h1_conn_close(c);
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
        sb_h1_conn_close(c);
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
        sb_h1_detach(c);
        sb_h1_conn_close(c);
        sb_h1_dispatch(rq);
        return;
    }
    if (err == 0)
        sb_h1_fail(rq, "connect", "%s:%d closed the connection before the response ended (%s)",
                p->host, p->port, rq->x->headers_done ? "mid-body" : "no complete response");
    else
        sb_h1_fail(rq, "connect", "connection to %s:%d failed: %s", p->host, p->port, strerror(err));
    sb_h1_conn_close(c);
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    h1_conn *c = arg;
    SB_UNUSED(what);
    char *buf = c->pool->st->rbuf;
    ssize_t n = recv(fd, buf, sizeof c->pool->st->rbuf, 0);
    if (n > 0)
        sb_h1_conn_input(c, buf, (size_t)n);
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
            sb_h1_attach(c, rq);
            return;
        }
        err = errno;
    }
    if (err == ETIMEDOUT && (what & EV_TIMEOUT))
        sb_h1_fail(rq, "timeout", "connecting to %s:%d timed out after %g s (opts.connect_timeout)",
                p->host, p->port, rq->connect_timeout);
    else
        sb_h1_fail(rq, "connect", "cannot connect to %s:%d: %s", p->host, p->port, strerror(err));
    sb_h1_conn_close(c);
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
    sb_h1_conn_shut(c);
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

void sb_h1_conn_open(h1_pool *p, h1_req *rq)
{
    h1_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        sb_h1_fail(rq, "http", "out of memory opening a connection");
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
            sb_h1_attach(c, rq);
            return;
        }
        err = errno;
    }
    sb_h1_fail(rq, "connect", "cannot connect to %s:%d: %s", p->host, p->port, strerror(err));
    sb_h1_conn_free(c);                   /* not sb_h1_conn_close: no recursion through waiters */
}
