/*
 * sb_sse.h -- an incremental Server-Sent Events parser (WHATWG HTML,
 * "server-sent events", section "Parsing an event stream"), for C modules
 * such as the HTTP client. No Lua here; Lua code uses require "sibyl.sse".
 *
 *     sb_sse *p = sb_sse_new(0);                 -- 0: default limit, 8 MiB
 *     while ((n = read_some(buf)) > 0)
 *         if ((rc = sb_sse_feed(p, buf, n, on_event, ud)) != 0)
 *             break;                             -- stopped, or too large
 *     sb_sse_free(p);
 *
 * Chunks may be cut anywhere (inside a field, between the CR and LF of one
 * line ending, inside the stream's leading BOM): the events are the same as
 * for the whole stream fed at once. Each byte is looked at once, so a feed
 * costs O(len) whatever was buffered before.
 *
 * Caveats:
 *  - There is no finish call: at the end of the stream an event without its
 *    closing blank line is discarded, as the spec says, and so is a line
 *    without its line ending. Just free the parser.
 *  - Bytes are passed through as they are. The spec decodes the stream as
 *    UTF-8 and replaces invalid sequences with U+FFFD; this parser does not
 *    (the line and field structure is the same either way, since CR, LF and
 *    ':' never occur inside a UTF-8 sequence), so data may hold invalid
 *    UTF-8 and NUL bytes. Trust the lengths.
 *  - A parser is not thread-safe and not re-entrant: the callback must not
 *    feed or free the parser it was called from.
 */
#ifndef SB_SSE_H
#define SB_SSE_H

#include <stddef.h>

/* sb_sse_feed's results besides 0 and the callback's value. */
#define SB_SSE_TOO_LARGE (-1)   /* one event's buffered bytes exceed the limit */
#define SB_SSE_NOMEM (-2)       /* out of memory while buffering an event */

/* Default max_event_bytes. */
#define SB_SSE_DEFAULT_MAX ((size_t)8 << 20)

typedef struct sb_sse sb_sse;

/*
 * One dispatched event. The pointers belong to the parser and are valid only
 * during the callback; each string is also NUL-terminated, but may contain
 * NUL bytes itself (data can), so use the lengths.
 *
 *  event  the event type: "message" when the event had no (or an empty)
 *         `event` field.
 *  data   the `data` lines joined with "\n" (never NULL; may be empty, e.g.
 *         for a bare "data" line).
 *  id     the last event ID: set by the most recent `id` field of the stream
 *         (it persists across events), or NULL with id_len 0 when no `id`
 *         field was ever seen or the last one was empty (the spec's "no
 *         last event ID").
 *  retry  the reconnection time in ms from a valid `retry` field seen since
 *         the previous dispatched event (also in blocks that dispatched
 *         nothing), or -1 when there was none. sb_sse_retry gives the current
 *         value at any time.
 */
typedef struct {
    const char *event;
    size_t event_len;
    const char *data;
    size_t data_len;
    const char *id;
    size_t id_len;
    long retry;
} sb_sse_event;

/*
 * Called once per dispatched event, in stream order. Return 0 to go on.
 * A non-zero value (use a positive one: the negative ones are the parser's)
 * stops the feed at once: sb_sse_feed returns that value and the rest of
 * its buffer is not parsed. The parser stays consistent (as if the stream
 * had been cut right after that event's blank line), so stopping is meant
 * for abandoning the stream.
 */
typedef int (*sb_sse_cb)(void *ud, const sb_sse_event *ev);

/*
 * A parser for one stream (one connection: a reconnect wants a new parser,
 * carrying over the last event ID itself). max_event_bytes caps the bytes
 * buffered for one event (its data lines, including the "\n" between them,
 * plus its event type and a pending id value); 0 means SB_SSE_DEFAULT_MAX.
 * Comments and unknown fields are skipped without buffering, so they have no
 * limit. Returns NULL when out of memory.
 */
sb_sse *sb_sse_new(size_t max_event_bytes);

/*
 * Parse buf[0..len) as the next bytes of the stream and call cb for every
 * event completed by them. Returns 0 when all of buf was parsed, cb's
 * non-zero value when it stopped, SB_SSE_TOO_LARGE when an event grew past
 * the limit, or SB_SSE_NOMEM. Both errors are final: the events dispatched
 * before the error in this buf were delivered, and every later feed returns
 * the same error again without parsing. cb may be NULL to parse and drop
 * events. len 0 is allowed (buf may then be NULL).
 */
int sb_sse_feed(sb_sse *p, const char *buf, size_t len, sb_sse_cb cb, void *ud);

/*
 * The reconnection time from the last valid `retry` field of the stream,
 * in ms, or -1 when there was none. Unlike sb_sse_event.retry it also shows a
 * `retry` whose block never dispatched an event, e.g. "retry: 5000\n\n" sent
 * just before the server closes.
 */
long sb_sse_retry(const sb_sse *p);

/* Free the parser and its buffers. NULL is a no-op. */
void sb_sse_free(sb_sse *p);

#endif /* SB_SSE_H */
