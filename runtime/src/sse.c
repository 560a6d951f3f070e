/*
 * sse.c -- `sibyl.sse`: a Server-Sent Events parser. The engine (sb_sse_*,
 * declared in sb_sse.h, no Lua) is what the HTTP client feeds response
 * bytes to; the binding at the bottom gives Lua scripts the same parser.
 *
 *   local sse = require "sibyl.sse"
 *   local p = sse.parser([{max_event = 8 MiB}])
 *   local events, err = p:feed(chunk)   -- { {event=, data=, id=, retry=}, ... }
 *   local ms = p:retry()                 -- last valid retry value, or nil
 *   p:close()                            -- idempotent; __gc does the same
 *
 * The parsing rules are WHATWG HTML's "Parsing an event stream" and
 * "Interpreting an event stream", step by step; the comments below quote
 * them where the code could look arbitrary.
 *
 * Caveats (see sb_sse.h for the C side):
 *  - No finish(): an event still open when the stream ends is discarded, as
 *    the spec says, so there is nothing to flush.
 *  - Bytes pass through undecoded (no U+FFFD replacement of invalid UTF-8).
 *  - `retry` in an event is the value of a valid retry field seen since the
 *    previous dispatched event; p:retry() / sb_sse_retry() give the latest
 *    one even when its block dispatched nothing.
 *  - Too large (and out of memory) are final for a parser.
 */
#include <assert.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sb.h"
#include "sb_sse.h"

/* ================================================================ engine */

/* A growable byte buffer. Invariant once allocated: len < cap, so there is
 * always room for a terminating NUL. */
typedef struct {
    char *p;
    size_t len, cap;
} sse_buf;

/* Where we are in the current line. */
enum {
    S_LINE,         /* at the start of a line */
    S_NAME,         /* inside a field name */
    S_VALUE_START,  /* right after the colon: one space may follow */
    S_VALUE,        /* inside a field value */
    S_SKIP          /* inside a comment: skip to the line end */
};

/* The field the current line sets. */
enum { F_OTHER, F_EVENT, F_DATA, F_ID, F_RETRY };

/* A field name longer than this is none of ours. */
#define NAME_MAX_KNOWN 5

/* Big buffers are freed after their event rather than kept for the next. */
#define KEEP_CAP ((size_t)64 << 10)

struct sb_sse {
    size_t max;             /* cap on data.len + event.len + idv.len */
    int err;                /* 0, or the final SB_SSE_TOO_LARGE / SB_SSE_NOMEM */
    int state;              /* S_* */
    int field;              /* F_* of the line being read (S_VALUE_START, S_VALUE) */
    int after_cr;           /* the last byte was a CR ending a line: an LF next belongs to it */
    int bom;                /* BOM bytes matched at stream start; 3 once past it */

    char name[NAME_MAX_KNOWN];
    size_t name_len;        /* saturates at NAME_MAX_KNOWN + 1 */

    sse_buf data;           /* data buffer: each data line + "\n" */
    sse_buf event;          /* event type buffer */
    sse_buf idv;            /* value of the id line being read */
    sse_buf last_id;        /* last event ID buffer */
    int id_nul;             /* the id line being read holds a NUL: ignore it */

    long retry_acc;         /* digits of the retry line being read, saturating */
    int retry_digits;       /* it has at least one digit */
    int retry_bad;          /* it has something else */
    long retry_pending;     /* valid retry since the last dispatch, or -1 */
    long retry_last;        /* last valid retry of the stream, or -1 */
};

static void buf_free(sse_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/*
 * Append s[0..n) to b, one of p's event buffers, keeping the bytes buffered
 * for the event within p->max. Returns 0, SB_SSE_TOO_LARGE or SB_SSE_NOMEM
 * (b unchanged then).
 */
static int buf_add(sb_sse *p, sse_buf *b, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    size_t used = p->data.len + p->event.len + p->idv.len;
    assert(used <= p->max);
    if (n > p->max - used)
        return SB_SSE_TOO_LARGE;
    if (b->cap - b->len <= n) {
        size_t need = b->len + n + 1;       /* cannot overflow: <= max + 1 */
        size_t cap = b->cap ? b->cap : 64;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *np = realloc(b->p, cap);
        if (np == NULL)
            return SB_SSE_NOMEM;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* Add n more bytes to the field name; only the first few are kept. */
static void name_add(sb_sse *p, const char *s, size_t n)
{
    if (p->name_len < NAME_MAX_KNOWN) {
        size_t k = NAME_MAX_KNOWN - p->name_len;
        memcpy(p->name + p->name_len, s, n < k ? n : k);
    }
    p->name_len = p->name_len + n > NAME_MAX_KNOWN ? NAME_MAX_KNOWN + 1 : p->name_len + n;
}

static int classify(const sb_sse *p)
{
    switch (p->name_len) {
    case 2:
        return memcmp(p->name, "id", 2) == 0 ? F_ID : F_OTHER;
    case 4:
        return memcmp(p->name, "data", 4) == 0 ? F_DATA : F_OTHER;
    case 5:
        if (memcmp(p->name, "event", 5) == 0)
            return F_EVENT;
        return memcmp(p->name, "retry", 5) == 0 ? F_RETRY : F_OTHER;
    default:
        return F_OTHER;
    }
}

/* The field name is complete: get ready for its value. */
static void field_begin(sb_sse *p)
{
    p->field = classify(p);
    switch (p->field) {
    case F_EVENT:
        p->event.len = 0;       /* "set the event type buffer to the field value" */
        break;
    case F_ID:
        p->idv.len = 0;
        p->id_nul = 0;
        break;
    case F_RETRY:
        p->retry_acc = 0;
        p->retry_digits = p->retry_bad = 0;
        break;
    default:
        break;
    }
}

/* More bytes of the current field's value. Returns 0 or an SB_SSE_* error. */
static int field_append(sb_sse *p, const char *s, size_t n)
{
    switch (p->field) {
    case F_DATA:
        return buf_add(p, &p->data, s, n);
    case F_EVENT:
        return buf_add(p, &p->event, s, n);
    case F_ID:
        if (p->id_nul)
            return 0;
        if (memchr(s, '\0', n) != NULL) {
            p->id_nul = 1;      /* the field will be ignored: stop buffering it */
            p->idv.len = 0;
            return 0;
        }
        return buf_add(p, &p->idv, s, n);
    case F_RETRY:
        for (size_t i = 0; i < n; i++) {
            unsigned d = (unsigned char)s[i] - '0';
            if (d > 9) {
                p->retry_bad = 1;
                break;
            }
            p->retry_digits = 1;
            p->retry_acc = p->retry_acc > (LONG_MAX - (long)d) / 10 ? LONG_MAX
                                                                     : p->retry_acc * 10 + (long)d;
        }
        return 0;
    default:
        return 0;               /* unknown fields are ignored */
    }
}

/* The line of the current field ended. Returns 0 or an SB_SSE_* error. */
static int field_end(sb_sse *p)
{
    switch (p->field) {
    case F_DATA:
        /* "append the field value to the data buffer, then append a single
         * U+000A LINE FEED (LF) character to the data buffer" */
        return buf_add(p, &p->data, "\n", 1);
    case F_ID:
        /* "If the field value does not contain U+0000 NULL, then set the
         * last event ID buffer to the field value." Swap, don't copy. */
        if (!p->id_nul) {
            sse_buf t = p->last_id;
            p->last_id = p->idv;
            p->idv = t;
        }
        p->idv.len = 0;
        return 0;
    case F_RETRY:
        /* "If the field value consists of only ASCII digits" -- an empty
         * value has none, so it is ignored too. */
        if (p->retry_digits && !p->retry_bad)
            p->retry_pending = p->retry_last = p->retry_acc;
        return 0;
    default:
        return 0;
    }
}

/*
 * A blank line: dispatch the event. "If the data buffer is an empty string,
 * set the data buffer and the event type buffer to the empty string and
 * return." Otherwise strip data's final "\n" and call cb. The buffers are
 * reset before cb runs (ev keeps their pointers, which stay valid until the
 * next append), so the parser is consistent even if cb never returns (a Lua
 * error unwinding through it). Returns cb's value.
 */
static int dispatch(sb_sse *p, sb_sse_cb cb, void *ud)
{
    if (p->data.len == 0) {
        p->event.len = 0;
        return 0;
    }
    assert(p->data.p[p->data.len - 1] == '\n');
    sb_sse_event ev;
    ev.data = p->data.p;
    ev.data_len = p->data.len - 1;
    p->data.p[ev.data_len] = '\0';
    if (p->event.len > 0) {
        p->event.p[p->event.len] = '\0';
        ev.event = p->event.p;
        ev.event_len = p->event.len;
    } else {
        ev.event = "message";
        ev.event_len = 7;
    }
    if (p->last_id.len > 0) {
        p->last_id.p[p->last_id.len] = '\0';
        ev.id = p->last_id.p;
        ev.id_len = p->last_id.len;
    } else {
        ev.id = NULL;
        ev.id_len = 0;
    }
    ev.retry = p->retry_pending;
    p->retry_pending = -1;
    p->data.len = 0;
    p->event.len = 0;

    int rc = cb ? cb(ud, &ev) : 0;
    if (p->data.cap > KEEP_CAP)
        buf_free(&p->data);
    if (p->event.cap > KEEP_CAP)
        buf_free(&p->event);
    return rc;
}

/* The end of the current line is at *s (a CR or LF): consume it. */
static const char *line_end(sb_sse *p, const char *s)
{
    assert(*s == '\r' || *s == '\n');
    p->after_cr = *s == '\r';
    p->state = S_LINE;
    return s + 1;
}

/* First CR or LF in [s, e), or e. */
static const char *find_eol(const char *s, const char *e)
{
    while (s < e && *s != '\n' && *s != '\r')
        s++;
    return s;
}

/*
 * The line machine: every byte of [s, e) is looked at once; runs of value
 * bytes are appended in one go. Returns 0, cb's non-zero value or an
 * SB_SSE_* error.
 */
static int parse(sb_sse *p, const char *s, const char *e, sb_sse_cb cb, void *ud)
{
    int rc;
    while (s < e) {
        if (p->after_cr) {
            /* CRLF is one line ending, even when a chunk ends between them. */
            p->after_cr = 0;
            if (*s == '\n') {
                s++;
                continue;
            }
        }
        switch (p->state) {
        case S_LINE:
            if (*s == '\r' || *s == '\n') {
                s = line_end(p, s);     /* a blank line */
                if ((rc = dispatch(p, cb, ud)) != 0)
                    return rc;
                continue;
            }
            if (*s == ':') {            /* a comment */
                p->state = S_SKIP;
                s++;
                continue;
            }
            p->state = S_NAME;
            p->name_len = 0;
            /* fall through */
        case S_NAME: {
            const char *q = s;
            while (q < e && *q != ':' && *q != '\r' && *q != '\n')
                q++;
            name_add(p, s, (size_t)(q - s));
            s = q;
            if (s == e)
                continue;
            field_begin(p);
            if (*s == ':') {
                p->state = S_VALUE_START;
                s++;
                continue;
            }
            /* "the whole line as the field name, and the empty string as
             * the field value" */
            rc = field_end(p);
            s = line_end(p, s);
            if (rc != 0)
                return rc;
            continue;
        }
        case S_VALUE_START:
            /* "If value starts with a U+0020 SPACE character, remove it" */
            if (*s == ' ')
                s++;
            p->state = S_VALUE;
            continue;
        case S_VALUE: {
            const char *q = find_eol(s, e);
            if ((rc = field_append(p, s, (size_t)(q - s))) != 0)
                return rc;
            s = q;
            if (s == e)
                continue;
            rc = field_end(p);
            s = line_end(p, s);
            if (rc != 0)
                return rc;
            continue;
        }
        case S_SKIP:
            s = find_eol(s, e);
            if (s < e)
                s = line_end(p, s);
            continue;
        default:
            assert(0 && "bad sse parser state");
            return 0;
        }
    }
    return 0;
}

sb_sse *sb_sse_new(size_t max_event_bytes)
{
    sb_sse *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->max = max_event_bytes ? max_event_bytes : SB_SSE_DEFAULT_MAX;
    p->state = S_LINE;
    p->retry_pending = p->retry_last = -1;
    return p;
}

int sb_sse_feed(sb_sse *p, const char *buf, size_t len, sb_sse_cb cb, void *ud)
{
    static const char bom[3] = {'\xEF', '\xBB', '\xBF'};
    assert(p != NULL);
    if (p->err)
        return p->err;
    if (len == 0)
        return 0;
    const char *s = buf, *e = buf + len;
    int rc = 0;

    /* "One leading U+FEFF BYTE ORDER MARK character must be ignored if any
     * are present." Match it byte by byte (it may be split too); on a
     * mismatch, the bytes held back were ordinary text. */
    while (p->bom < 3 && s < e) {
        if (*s == bom[p->bom]) {
            p->bom++;
            s++;
            continue;
        }
        int held = p->bom;
        p->bom = 3;
        if (held > 0 && (rc = parse(p, bom, bom + held, cb, ud)) != 0)
            break;
    }
    if (rc == 0)
        rc = parse(p, s, e, cb, ud);
    if (rc == SB_SSE_TOO_LARGE || rc == SB_SSE_NOMEM)
        p->err = rc;
    return rc;
}

long sb_sse_retry(const sb_sse *p)
{
    return p->retry_last;
}

void sb_sse_free(sb_sse *p)
{
    if (p == NULL)
        return;
    buf_free(&p->data);
    buf_free(&p->event);
    buf_free(&p->idv);
    buf_free(&p->last_id);
    free(p);
}

/* ================================================================ binding */

static char parser_key;

#define PARSER_NAME "sibyl.sse.parser"

typedef struct {
    sb_sse *p;              /* NULL once closed */
    size_t max;             /* for the too_large message */
} l_parser;

/* Shared by close() and __gc: safe to call twice. */
static void parser_release(l_parser *u)
{
    sb_sse_free(u->p);
    u->p = NULL;
}

/* Events of one feed go into the array on top of the stack. */
typedef struct {
    lua_State *L;
    int n;
} push_ctx;

/* sb_sse_cb: append {event=, data=, id=, retry=} to the array. May raise
 * only on out-of-memory, which dispatch() tolerates. */
static int push_event(void *ud, const sb_sse_event *ev)
{
    push_ctx *c = ud;
    lua_State *L = c->L;
    lua_createtable(L, 0, 4);
    lua_pushlstring(L, ev->event, ev->event_len);
    lua_setfield(L, -2, "event");
    lua_pushlstring(L, ev->data, ev->data_len);
    lua_setfield(L, -2, "data");
    if (ev->id != NULL) {
        lua_pushlstring(L, ev->id, ev->id_len);
        lua_setfield(L, -2, "id");
    }
    if (ev->retry >= 0) {
        lua_pushnumber(L, (lua_Number)ev->retry);
        lua_setfield(L, -2, "retry");
    }
    lua_rawseti(L, -2, ++c->n);
    return 0;
}

/*
 * sse.parser([opts]) -> parser. opts.max_event: bytes one event may buffer
 * (number >= 1, default 8 MiB). Raises on bad options or out of memory.
 */
static int l_parser_new(lua_State *L)
{
    size_t max = SB_SSE_DEFAULT_MAX;
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_getfield(L, 1, "max_event");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) >= 1))
                luaL_error(L, "bad option opts.max_event (number >= 1 expected, got %s)",
                           lua_type(L, -1) == LUA_TNUMBER ? "a smaller number"
                                                          : luaL_typename(L, -1));
            double d = lua_tonumber(L, -1);
            max = d >= (double)SIZE_MAX ? SIZE_MAX : (size_t)d;
        }
        lua_pop(L, 1);
    }
    l_parser *u = lua_newuserdata(L, sizeof *u);
    u->p = NULL;
    u->max = max;
    sb_getmeta(L, &parser_key);
    lua_setmetatable(L, -2);
    if ((u->p = sb_sse_new(max)) == NULL)
        return luaL_error(L, "sse.parser: out of memory");
    return 1;
}

/*
 * p:feed(chunk) -> events | nil, err. events is an array (possibly empty)
 * of the events completed by chunk. err kinds: "closed"; "too_large" (final
 * for this parser; err.events holds the events completed before it in this
 * chunk). Raises on a non-string chunk or out of memory.
 */
static int l_feed(lua_State *L)
{
    l_parser *u = sb_checkudata(L, 1, &parser_key, PARSER_NAME);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (u->p == NULL)
        return sb_fail(L, "closed", "sse: the parser is closed");
    lua_settop(L, 2);
    lua_newtable(L);
    push_ctx c = {L, 0};
    int rc = sb_sse_feed(u->p, s, len, push_event, &c);
    if (rc == 0)
        return 1;
    if (rc == SB_SSE_NOMEM)
        return luaL_error(L, "sse: out of memory");
    assert(rc == SB_SSE_TOO_LARGE);
    sb_fail(L, "too_large",
            "sse: an event is larger than max_event (%zu bytes); "
            "pass sse.parser{max_event = N} to allow more", u->max);
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "events");
    return 2;
}

/* p:retry() -> ms | nil: the last valid retry field of the stream. */
static int l_retry(lua_State *L)
{
    l_parser *u = sb_checkudata(L, 1, &parser_key, PARSER_NAME);
    if (u->p == NULL)
        return sb_fail(L, "closed", "sse: the parser is closed");
    long r = sb_sse_retry(u->p);
    if (r < 0)
        lua_pushnil(L);
    else
        lua_pushnumber(L, (lua_Number)r);
    return 1;
}

/* p:close() -> true, also when already closed. */
static int l_close(lua_State *L)
{
    parser_release(sb_checkudata(L, 1, &parser_key, PARSER_NAME));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_gc(lua_State *L)
{
    parser_release(sb_checkudata(L, 1, &parser_key, PARSER_NAME));
    return 0;
}

static int l_tostring(lua_State *L)
{
    l_parser *u = sb_checkudata(L, 1, &parser_key, PARSER_NAME);
    lua_pushstring(L, u->p ? PARSER_NAME : PARSER_NAME " (closed)");
    return 1;
}

/* ================================================================ module */

static const luaL_Reg parser_methods[] = {
    {"feed", l_feed},
    {"retry", l_retry},
    {"close", l_close},
    {"__gc", l_gc},
    {"__tostring", l_tostring},
    {NULL, NULL}
};

static const luaL_Reg sse_funcs[] = {
    {"parser", l_parser_new},
    {NULL, NULL}
};

int luaopen_sibyl_sse(lua_State *L)
{
    sb_newmeta(L, &parser_key, PARSER_NAME);
    luaL_setfuncs(L, parser_methods, 0);
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    luaL_setfuncs(L, sse_funcs, 0);
    lua_pushnumber(L, (lua_Number)SB_SSE_DEFAULT_MAX);
    lua_setfield(L, -2, "DEFAULT_MAX_EVENT");
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "_VERSION");
    return 1;
}
