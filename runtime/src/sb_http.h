/*
 * sb_http.h -- what the HTTP client's Lua core (http_client.c) shares with
 * its two engines:
 *
 *   http_h1.c    plain http:// over HTTP/1.1 keep-alive connections on
 *                libevent bufferevents, responses parsed by http-parser.
 *                The fast path: local inference servers, fixtures, LANs.
 *   http_curl.c  everything else through libcurl's multi interface: https,
 *                HTTP/2, proxies, compressed bodies.
 *
 * A transfer (sb_xfer) is engine-neutral: the engine fills status, headers
 * and body through the sb_xfer_* helpers and ends it with sb_xfer_finish or
 * sb_xfer_fail; the core hands the results to the waiting task. Engines
 * never touch Lua.
 */
#ifndef SB_HTTP_H
#define SB_HTTP_H

#include <stddef.h>

#include "sb.h"

/* A streamed transfer stops reading past this much unread data. */
#define SB_HTTP_STREAM_HIGH_WATER ((size_t)1 << 20)

typedef struct sb_http sb_http;
typedef struct sb_xfer sb_xfer;

/* A normalised request, valid only during engine->start (engines copy what
 * they keep; the body stays pinned by the core for the transfer's life). */
typedef struct {
    const char *url, *method;
    const char **headers;           /* "Name: value" lines from the caller */
    int nheaders;
    const char *body;               /* NULL: no body */
    size_t body_len;
    double timeout;                 /* seconds for the whole transfer, 0 = none */
    double connect_timeout;
    int tls_verify, compressed;
} sb_http_req;

enum { SB_W_NONE, SB_W_DONE, SB_W_HEADERS, SB_W_DATA };

struct sb_xfer {
    sb_http *h;
    char *url;                      /* as requested, for messages */
    const struct sb_http_engine *eng;
    void *ed;                       /* the engine's own state for this transfer */
    sb_op *op;                      /* the parked op waiting on us, or NULL */
    int wait;                       /* what op waits for (SB_W_*) */
    int body_ref;                   /* pins the request body string */
    int done, streaming, paused, headers_done;
    const char *ekind;              /* set when the transfer failed */
    char emsg[512];
    long code;                      /* engine's own error code (CURLcode), 0 = none */
    long status;
    char *buf;                      /* response body (or unread stream data) */
    size_t len, cap, max_body, total;
    char *hdr;                      /* "name\0value\0" pairs of the final response */
    size_t hlen, hcap;
    int hpart;                      /* header being built: -1 none, 0 name, 1 value */
    size_t hvstart;                 /* where its value starts in hdr */
};

typedef struct sb_http_engine {
    const char *name;
    /* Start the transfer. On failure fill x->ekind/emsg and return -1. */
    int (*start)(sb_xfer *x, const sb_http_req *r);
    /* Abort it on the wire if still running and release the engine state.
     * Idempotent. Never called from inside the engine's own callbacks. */
    void (*stop)(sb_xfer *x);
    /* The reader consumed a paused stream's buffer: read on. */
    void (*resume)(sb_xfer *x);
} sb_http_engine;

struct sb_http {
    sibyl_rt *rt;
    long max_connections, max_host_connections;   /* 0 = unlimited */
    int prefer_curl;                /* configure{engine="curl"} */
    void *curl;                     /* http_curl.c state, made on first use */
    void *h1;                       /* http_h1.c state, made on first use */
};

extern const sb_http_engine sb_http_curl, sb_http_h1;

/* Engines' housekeeping, called by the core. */
void sb_http_curl_configure(sb_http *h, int lowered);
void sb_http_curl_free(sb_http *h);
void sb_http_h1_configure(sb_http *h);
void sb_http_h1_free(sb_http *h);
const char *sb_http_curl_version(void);   /* NULL when libcurl is not loaded */

/* ------------------------------------------ helpers for engines (http_client.c) */

int sb_http_grow(char **buf, size_t *cap, size_t need);
/* Append response body bytes. Returns 0, or -1 when the transfer failed
 * (over max_body, out of memory): the engine must abort it. */
int sb_xfer_body(sb_xfer *x, const char *data, size_t len);
/* Build one header: name pieces (part 0, lower-cased), then value pieces
 * (part 1), then sb_xfer_header_end. Each returns 0 or -1 (out of memory). */
int sb_xfer_header_part(sb_xfer *x, int part, const char *s, size_t len);
int sb_xfer_header_end(sb_xfer *x);
/* Headers of a new response begin (an interim 1xx or a retry discards the old). */
void sb_xfer_headers_reset(sb_xfer *x);
void sb_xfer_headers_done(sb_xfer *x, long status);
/* The transfer ended well / failed; wakes the waiting task. */
void sb_xfer_finish(sb_xfer *x);
void sb_xfer_fail(sb_xfer *x, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
