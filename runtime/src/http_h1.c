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
 *
 * This file holds requests, pools, lookups and the engine's entry points;
 * http_h1_conn.c the connections (sb_h1.h is what they share).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "sb_h1.h"

/* ------------------------------------------------------------ helpers */

void sb_h1_fail(h1_req *rq, const char *kind, const char *fmt, ...)
{
    sb_h1_timer_stop(rq);
    if (rq->x->done)
        return;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sb_xfer_fail(rq->x, kind, "%s: %s", rq->x->url, msg);
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

h1_req *sb_h1_dequeue(h1_pool *p)
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
        /* Take the waiters out first: sb_h1_dispatch() may queue some again. */
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
                sb_h1_dispatch(rq);
            else
                sb_h1_fail(rq, "connect", "cannot resolve host \"%s\": %s", p->host,
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
        sb_h1_fail(rq, "http", "out of memory resolving %s", p->host);
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
        sb_h1_fail(rq, "http", "out of memory resolving %s", p->host);
    }
}

/* ----------------------------------------------------------- sb_h1_dispatch */

void sb_h1_dispatch(h1_req *rq)
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
            sb_h1_conn_free(c);               /* stale; already off the idle list */
            continue;
        }
        sb_h1_attach(c, rq);
        return;
    }
    if (sb_h1_can_open(p))
        sb_h1_conn_open(p, rq);
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
    sb_h1_fail(rq, "timeout", "timed out after %g s (%s)", rq->timeout,
            x->headers_done ? "mid-body" : "waiting for the response");
    if (c)
        sb_h1_conn_close(c);
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
    sb_h1_dispatch(rq);
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
    sb_h1_timer_stop(rq);
    if (rq->pool) {
        if (rq->queued)
            unqueue(rq->pool, rq);
        if (rq->conn) {
            h1_conn *c = rq->conn;
            sb_h1_detach(c);
            c->rq = NULL;
            sb_h1_conn_close(c);              /* mid-transfer: abort it on the wire */
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
    int gone = held ? sb_h1_conn_input(c, held, len) : 0;
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
        while (p->idle && (!sb_h1_limit_ok(p->nconns - 1, h->max_host_connections) ||
                           !sb_h1_limit_ok(st->nconns - 1, h->max_connections)))
            sb_h1_conn_close(p->idle);
    sb_h1_serve_waiting(st, NULL);
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
            h1_req *rq = sb_h1_dequeue(p);
            rq->pool = NULL;
        }
        if (p->job)
            p->job->pool = NULL;
        while (p->idle) {
            h1_conn *c = p->idle;
            p->idle = c->next_idle;
            sb_h1_conn_shut(c);
            free(c);
        }
        free(p->host);
        free(p);
    }
    free(st);
}

const sb_http_engine sb_http_h1 = {"h1", h1_start, h1_stop, h1_resume};
