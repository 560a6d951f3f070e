/*
 * yaml.c -- the `sibyl.yaml` module: YAML decoding and encoding on libyaml.
 *
 *   local yaml = require "sibyl.yaml"
 *   yaml.decode(str [, opts])      -> value | nil, err    (first document)
 *   yaml.decode_all(str [, opts])  -> { doc1, ... } | nil, err
 *   yaml.encode(value [, opts])    -> string              (raises on misuse)
 *   yaml.scalar(str [, opts])      -> value               (one plain scalar)
 *   yaml.null                      -> lightuserdata NULL, the same value as cjson.null
 *
 * Decoding walks libyaml's event stream and builds Lua values directly on the
 * Lua stack, one table per open collection; there is no intermediate tree.
 * Syntax errors and limit violations return nil, err with err.kind "parse",
 * err.line / err.column (1-based), err.problem (the message without the
 * position) and err.message "yaml: line L, column C: problem".
 *
 * Typing: plain (unquoted, untagged) scalars are resolved by the YAML 1.2
 * core schema (see classify_plain); quoted and block scalars are strings; the
 * tags !!str !!int !!float !!bool !!null are honoured, other tags ignored.
 *
 * Memory discipline: a Lua error longjmps, and libyaml owns heap memory (the
 * parser or emitter and the current event). So every entry point keeps all
 * libyaml state in a C struct on its own frame, does the work inside
 * lua_pcall, frees that state after the pcall returns, and only then raises
 * the caught error or returns nil, err. Expected failures (bad input, limits)
 * never raise: the protected function records them in the struct and returns.
 *
 * Caveats
 *  - libyaml implements YAML 1.1 syntax; only typing follows 1.2 (so yes/no/
 *    on/off are strings, 0o17 is octal and 017 is decimal 17).
 *  - Numbers are Lua numbers (doubles): integers beyond 2^53 lose precision.
 *  - Mapping keys must be scalars: strings, numbers or booleans. Null, NaN and
 *    collection keys are parse errors. With duplicate keys the last one wins.
 *  - An alias yields the anchored value itself (the same table). An alias
 *    inside the node its anchor names (a recursive structure) is a parse
 *    error, so decoded data is always acyclic. Limits count the nodes an
 *    alias stands for, which defeats "billion laughs" documents.
 *  - decode() stops after the first document; later ones are not parsed.
 *  - encode() uses raw access (metatables ignored), writes shared tables out
 *    in full at each place (no anchors), and raises on cycles. An empty table
 *    encodes as {} unless it carries the sibyl.json array metatable (then []).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE                     /* strdup; the build may pass -D_GNU_SOURCE too */
#endif
#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "sb.h"

#define DEFAULT_MAX_DEPTH   256
#define DEFAULT_MAX_NODES   1000000
#define CAP_MAX_DEPTH       1000000
#define CAP_MAX_NODES       ((double)((size_t)1 << 50))  /* counts stay exact in doubles */

#define CORE_TAG            "tag:yaml.org,2002:"
#define CORE_TAG_LEN        (sizeof CORE_TAG - 1)

/* What a decoded node is; kept per anchor so aliases and merges know it. */
enum { K_SCALAR = 0, K_SEQ = 1, K_MAP = 2, K_NULL = 3 };

/* ================================================================ scalars */

/* Result of resolving one plain scalar by the core schema. */
typedef enum { R_STRING, R_NULL, R_BOOL, R_INT, R_FLOAT } res_type;

static int is_digit(int c) { return c >= '0' && c <= '9'; }

static int is_xdigit(int c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int xdigit_value(int c)
{
    if (is_digit(c))
        return c - '0';
    return (c | 0x20) - 'a' + 10;
}

/* True when s[0..len) equals one of the NULL-terminated words. */
static int is_one_of(const char *s, size_t len, const char *const *words)
{
    for (; *words; words++)
        if (strlen(*words) == len && memcmp(s, *words, len) == 0)
            return 1;
    return 0;
}

static const char *const null_words[] = {"~", "null", "Null", "NULL", NULL};
static const char *const true_words[] = {"true", "True", "TRUE", NULL};
static const char *const false_words[] = {"false", "False", "FALSE", NULL};
static const char *const inf_words[] = {".inf", ".Inf", ".INF", NULL};
static const char *const nan_words[] = {".nan", ".NaN", ".NAN", NULL};

/* [-+]?[0-9]+ */
static int match_dec_int(const char *s, size_t len)
{
    size_t i = 0;
    if (i < len && (s[i] == '-' || s[i] == '+'))
        i++;
    if (i == len)
        return 0;
    for (; i < len; i++)
        if (!is_digit((unsigned char)s[i]))
            return 0;
    return 1;
}

/* 0o[0-7]+ (base 8) or 0x[0-9a-fA-F]+ (base 16); returns the base or 0. */
static int match_radix_int(const char *s, size_t len)
{
    if (len < 3 || s[0] != '0')
        return 0;
    int base = s[1] == 'o' ? 8 : s[1] == 'x' ? 16 : 0;
    if (base == 0)
        return 0;
    for (size_t i = 2; i < len; i++) {
        int c = (unsigned char)s[i];
        if (base == 8 ? !(c >= '0' && c <= '7') : !is_xdigit(c))
            return 0;
    }
    return base;
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?  (also matches ints) */
static int match_float(const char *s, size_t len)
{
    size_t i = 0, d;
    if (i < len && (s[i] == '-' || s[i] == '+'))
        i++;
    if (i < len && s[i] == '.') {
        d = ++i;
        while (i < len && is_digit((unsigned char)s[i]))
            i++;
        if (i == d)
            return 0;
    } else {
        d = i;
        while (i < len && is_digit((unsigned char)s[i]))
            i++;
        if (i == d)
            return 0;
        if (i < len && s[i] == '.') {
            i++;
            while (i < len && is_digit((unsigned char)s[i]))
                i++;
        }
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '-' || s[i] == '+'))
            i++;
        d = i;
        while (i < len && is_digit((unsigned char)s[i]))
            i++;
        if (i == d)
            return 0;
    }
    return i == len;
}

/* [-+]?\.(inf|Inf|INF) -> +1 or -1; 0 when no match. */
static int match_inf(const char *s, size_t len)
{
    int sign = 1;
    if (len > 0 && (s[0] == '-' || s[0] == '+')) {
        sign = s[0] == '-' ? -1 : 1;
        s++;
        len--;
    }
    return is_one_of(s, len, inf_words) ? sign : 0;
}

/*
 * Classify a plain scalar by the YAML 1.2 core schema. Pure C: no Lua, no
 * conversion. Decimal ints and floats need str_to_number for their value.
 */
static res_type classify_plain(const char *s, size_t len)
{
    if (len == 0 || is_one_of(s, len, null_words))
        return R_NULL;
    if (is_one_of(s, len, true_words) || is_one_of(s, len, false_words))
        return R_BOOL;
    if (match_dec_int(s, len) || match_radix_int(s, len))
        return R_INT;
    if (match_float(s, len) || match_inf(s, len) || is_one_of(s, len, nan_words))
        return R_FLOAT;
    return R_STRING;
}

/*
 * The value of a numeric scalar already classified as R_INT or R_FLOAT.
 * Decimal text goes through LuaJIT's own (locale-independent, correctly
 * rounded) string-to-number conversion, so strtod and the C locale never
 * matter. May raise only on out-of-memory.
 */
static double str_to_number(lua_State *L, const char *s, size_t len)
{
    int sign, base = match_radix_int(s, len);
    if (base) {
        double v = 0;
        for (size_t i = 2; i < len; i++)
            v = v * base + xdigit_value((unsigned char)s[i]);
        return v;
    }
    if ((sign = match_inf(s, len)) != 0)
        return sign * HUGE_VAL;
    if (is_one_of(s, len, nan_words))
        return NAN;
    if (len <= 15 && match_dec_int(s, len)) {   /* exact fast path */
        double v = 0;
        size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
        for (; i < len; i++)
            v = v * 10 + (s[i] - '0');
        return s[0] == '-' ? -v : v;
    }
    lua_pushlstring(L, s, len);
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/*
 * Push the core-schema value of plain scalar s: null pushes a copy of the
 * value at null_idx. Returns the node kind (K_SCALAR or K_NULL).
 */
static int push_plain(lua_State *L, const char *s, size_t len, int null_idx)
{
    switch (classify_plain(s, len)) {
    case R_NULL:
        lua_pushvalue(L, null_idx);
        return K_NULL;
    case R_BOOL:
        lua_pushboolean(L, s[0] == 't' || s[0] == 'T');
        return K_SCALAR;
    case R_INT:
    case R_FLOAT:
        lua_pushnumber(L, str_to_number(L, s, len));
        return K_SCALAR;
    case R_STRING:
        break;
    }
    lua_pushlstring(L, s, len);
    return K_SCALAR;
}

/* ================================================================ decoder */

enum { F_DOC, F_SEQ, F_MAP };

/* One open node: the document, or a collection whose table is on the stack. */
typedef struct frame {
    unsigned char kind;         /* F_DOC, F_SEQ, F_MAP */
    unsigned char has_value;    /* F_DOC: the root value sits on the stack */
    unsigned char has_key;      /* F_MAP: a key sits above the table, value expected */
    unsigned char merge_key;    /* F_MAP: ...and that key is the merge key << */
    unsigned char merge_seq;    /* F_SEQ: value of a << key, items must be mappings */
    int n;                      /* F_SEQ: items stored so far */
    char *anchor;               /* owned copy of the collection's anchor, or NULL */
    size_t nodes0;              /* decoder's node count before this collection */
} frame;

/* Decoder state: lives on l_decode's C frame, freed by decode_cleanup. */
typedef struct dctx {
    const char *input;          /* borrowed: argument 1 of decode, kept on the stack */
    size_t len;
    int all;                    /* decode_all: collect every document */
    int drop_nulls;
    int has_resolve;            /* opts.resolve given */
    size_t max_depth, max_nodes;

    yaml_parser_t parser;
    int parser_ok;              /* parser initialised, needs yaml_parser_delete */
    yaml_event_t event;
    int have_event;             /* event owned, needs yaml_event_delete */

    frame *frames;              /* frames[0] is the document */
    size_t nframes, cap;
    size_t nodes;               /* nodes produced so far, aliases counted in full */
    int ndocs;

    int failed;                 /* an expected failure was recorded below */
    size_t line, column;        /* 1-based; 0 when unknown */
    char problem[320];
} dctx;

/* Stack slots of decode_protected. Frames' tables and keys sit above them. */
enum { SLOT_CTX = 1, SLOT_NULL, SLOT_RESOLVE, SLOT_ANCHORS, SLOT_AMETA, SLOT_DOCS };

/* Record an expected failure at a 0-based libyaml mark. Always returns -1. */
static int fail_at(dctx *c, yaml_mark_t mark, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static int fail_at(dctx *c, yaml_mark_t mark, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->problem, sizeof c->problem, fmt, ap);
    va_end(ap);
    c->failed = 1;
    c->line = mark.line + 1;
    c->column = mark.column + 1;
    return -1;
}

/* Translate a libyaml parser failure into c's error fields. */
static void parser_failed(dctx *c)
{
    yaml_parser_t *p = &c->parser;
    const char *problem = p->problem ? p->problem : "unknown error";
    yaml_mark_t mark = p->problem_mark;

    switch (p->error) {
    case YAML_MEMORY_ERROR:
        fail_at(c, mark, "out of memory");
        c->line = c->column = 0;
        return;
    case YAML_READER_ERROR: {
        /* Reader errors carry a byte offset, not a mark: count lines ourselves. */
        size_t off = p->problem_offset < c->len ? p->problem_offset : c->len;
        mark.line = mark.column = 0;
        for (size_t i = 0; i < off; i++) {
            if (c->input[i] == '\n') {
                mark.line++;
                mark.column = 0;
            } else {
                mark.column++;
            }
        }
        if (p->problem_value != -1)
            fail_at(c, mark, "%s (byte 0x%02X)", problem, (unsigned)p->problem_value & 0xFFu);
        else
            fail_at(c, mark, "%s", problem);
        return;
    }
    default:
        if (p->context)
            fail_at(c, mark, "%s (%s at line %zu, column %zu)", problem, p->context,
                    p->context_mark.line + 1, p->context_mark.column + 1);
        else
            fail_at(c, mark, "%s", problem);
        return;
    }
}

/* Count n more nodes against max_nodes; -1 (recorded) when over the limit. */
static int count_nodes(dctx *c, size_t n)
{
    if (n > c->max_nodes - c->nodes)
        return fail_at(c, c->event.start_mark,
                       "document too large: more than %zu nodes, aliases counted in full "
                       "(opts.max_nodes)", c->max_nodes);
    c->nodes += n;
    return 0;
}

static frame *top_frame(dctx *c)
{
    assert(c->nframes > 0);
    return &c->frames[c->nframes - 1];
}

/* Push a zeroed frame; -1 (recorded) on out-of-memory. */
static int push_frame(dctx *c, int kind)
{
    if (c->nframes == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        frame *f = realloc(c->frames, cap * sizeof *f);
        if (f == NULL)
            return fail_at(c, c->event.start_mark, "out of memory");
        c->frames = f;
        c->cap = cap;
    }
    memset(&c->frames[c->nframes], 0, sizeof(frame));
    c->frames[c->nframes++].kind = (unsigned char)kind;
    return 0;
}

/*
 * Record the value on top of the stack under anchor name: anchors[name] =
 * value, ameta[name] = nodes * 4 + kind. A meta of -1 marks an anchor whose
 * collection is still open (an alias to it would make a cycle).
 */
static void set_anchor(lua_State *L, const char *name, int kind, double nodes)
{
    lua_pushstring(L, name);
    lua_pushvalue(L, -2);
    lua_rawset(L, SLOT_ANCHORS);
    lua_pushstring(L, name);
    lua_pushnumber(L, kind < 0 ? -1 : nodes * 4 + kind);
    lua_rawset(L, SLOT_AMETA);
}

/* Copy every key of table s missing from table t into t (absolute indices). */
static void merge_into(lua_State *L, int t, int s)
{
    lua_pushnil(L);
    while (lua_next(L, s)) {            /* k v */
        lua_pushvalue(L, -2);           /* k v k */
        lua_rawget(L, t);               /* k v t[k] */
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);              /* k v */
            lua_pushvalue(L, -2);       /* k v k */
            lua_insert(L, -2);          /* k k v */
            lua_rawset(L, t);           /* k */
        } else {
            lua_pop(L, 2);              /* k */
        }
    }
}

/*
 * Apply a merge key: stack is ... table key value, with value of the given
 * kind. Leaves the stack as it found it. -1 (recorded) when value is neither
 * a mapping nor a sequence of mappings.
 */
static int apply_merge(dctx *c, lua_State *L, int kind)
{
    int t = lua_gettop(L) - 2, s = lua_gettop(L);
    if (kind == K_MAP) {
        merge_into(L, t, s);
        return 0;
    }
    if (kind == K_SEQ) {
        /* Earlier mappings win: each merge only fills keys still missing. */
        int n = (int)lua_objlen(L, s);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, s, i);
            if (!lua_istable(L, -1)) {
                lua_pop(L, 1);
                return fail_at(c, c->event.start_mark,
                               "merge key << needs a mapping or a sequence of mappings");
            }
            merge_into(L, t, lua_gettop(L));
            lua_pop(L, 1);
        }
        return 0;
    }
    return fail_at(c, c->event.start_mark,
                   "merge key << needs a mapping or a sequence of mappings");
}

/*
 * Attach the complete node on top of the stack (of the given kind) to the
 * innermost open node. is_merge: the node is a plain, untagged "<<".
 * Returns 0, or -1 with the failure recorded.
 */
static int add_node(dctx *c, lua_State *L, int kind, int is_merge)
{
    frame *p = top_frame(c);

    switch (p->kind) {
    case F_DOC:
        assert(!p->has_value);
        p->has_value = 1;               /* the root stays on the stack */
        return 0;

    case F_SEQ:
        if (p->merge_seq && kind != K_MAP)
            return fail_at(c, c->event.start_mark,
                           "merge key << needs a mapping or a sequence of mappings");
        if (p->n == INT_MAX)
            return fail_at(c, c->event.start_mark, "sequence too long");
        lua_rawseti(L, -2, ++p->n);
        return 0;

    default:
        assert(p->kind == F_MAP);
        if (!p->has_key) {
            if (kind == K_NULL)
                return fail_at(c, c->event.start_mark, "null mapping keys are not supported");
            if (kind != K_SCALAR)
                return fail_at(c, c->event.start_mark, "complex mapping keys are not supported");
            if (lua_type(L, -1) == LUA_TNUMBER && isnan(lua_tonumber(L, -1)))
                return fail_at(c, c->event.start_mark, "NaN mapping keys are not supported");
            p->has_key = 1;
            p->merge_key = (unsigned char)is_merge;
            return 0;                   /* the key waits on the stack for its value */
        }
        if (p->merge_key) {
            if (apply_merge(c, L, kind) < 0)
                return -1;
            lua_pop(L, 2);
        } else if (kind == K_NULL && c->drop_nulls) {
            lua_pop(L, 2);
        } else {
            lua_rawset(L, -3);
        }
        p->has_key = p->merge_key = 0;
        return 0;
    }
}

/*
 * Push the value of the current scalar event. in_key: the scalar is a
 * mapping key (opts.resolve is not applied to keys). Returns its kind, or
 * -1 with the failure recorded (nothing pushed).
 */
static int push_scalar(dctx *c, lua_State *L, int in_key)
{
    const yaml_event_t *ev = &c->event;
    const char *s = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;

    if (tag != NULL && strncmp(tag, CORE_TAG, CORE_TAG_LEN) == 0) {
        const char *t = tag + CORE_TAG_LEN;
        res_type r = classify_plain(s, len);
        if (strcmp(t, "str") == 0) {
            lua_pushlstring(L, s, len);
            return K_SCALAR;
        }
        if (strcmp(t, "int") == 0) {
            if (r != R_INT)
                return fail_at(c, ev->start_mark, "invalid !!int value '%.40s'", s);
            lua_pushnumber(L, str_to_number(L, s, len));
            return K_SCALAR;
        }
        if (strcmp(t, "float") == 0) {
            if (r != R_INT && r != R_FLOAT)
                return fail_at(c, ev->start_mark, "invalid !!float value '%.40s'", s);
            lua_pushnumber(L, str_to_number(L, s, len));
            return K_SCALAR;
        }
        if (strcmp(t, "bool") == 0) {
            if (r != R_BOOL)
                return fail_at(c, ev->start_mark, "invalid !!bool value '%.40s'", s);
            lua_pushboolean(L, s[0] == 't' || s[0] == 'T');
            return K_SCALAR;
        }
        if (strcmp(t, "null") == 0) {
            if (r != R_NULL)
                return fail_at(c, ev->start_mark, "invalid !!null value '%.40s'", s);
            lua_pushvalue(L, SLOT_NULL);
            return K_NULL;
        }
        /* Other core tags (!!binary, !!timestamp, ...) are ignored. */
    } else if (tag != NULL && strcmp(tag, "!") == 0) {
        lua_pushlstring(L, s, len);     /* the non-specific tag: a string */
        return K_SCALAR;
    }

    if (!plain) {
        lua_pushlstring(L, s, len);
        return K_SCALAR;
    }
    if (c->has_resolve && !in_key) {
        lua_pushvalue(L, SLOT_RESOLVE);
        lua_pushlstring(L, s, len);
        lua_call(L, 1, 1);              /* a raise propagates to l_decode's pcall */
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushvalue(L, SLOT_NULL);
            return K_NULL;
        }
        return K_SCALAR;
    }
    return push_plain(L, s, len, SLOT_NULL);
}

/* Start a sequence or mapping (kind F_SEQ / F_MAP) for the current event. */
static int start_collection(dctx *c, lua_State *L, int kind)
{
    const yaml_event_t *ev = &c->event;
    const char *anchor = (const char *)(kind == F_SEQ ? ev->data.sequence_start.anchor
                                                      : ev->data.mapping_start.anchor);
    frame *p = top_frame(c);

    if (p->kind == F_MAP && !p->has_key)
        return fail_at(c, ev->start_mark, "complex mapping keys are not supported");
    if (c->nframes > c->max_depth)     /* frames[0] is the document */
        return fail_at(c, ev->start_mark, "nesting deeper than %zu levels (opts.max_depth)",
                       c->max_depth);
    if (!lua_checkstack(L, 8))
        return fail_at(c, ev->start_mark, "nesting too deep for the Lua stack");
    size_t nodes0 = c->nodes;
    if (count_nodes(c, 1) < 0)
        return -1;
    int merge_seq = kind == F_SEQ && p->kind == F_MAP && p->merge_key;

    char *copy = NULL;
    if (anchor != NULL && (copy = strdup(anchor)) == NULL)
        return fail_at(c, ev->start_mark, "out of memory");
    if (push_frame(c, kind) < 0) {
        free(copy);
        return -1;
    }
    p = top_frame(c);
    p->anchor = copy;
    p->nodes0 = nodes0;
    p->merge_seq = (unsigned char)merge_seq;

    lua_newtable(L);
    if (copy != NULL)
        set_anchor(L, copy, -1, 0);    /* open: aliases to it are recursive */
    return 0;
}

/* Close the innermost collection and attach its table to its parent. */
static int end_collection(dctx *c, lua_State *L)
{
    frame *f = top_frame(c);
    int kind = f->kind == F_SEQ ? K_SEQ : K_MAP;
    assert(f->kind != F_DOC && !f->has_key);
    if (f->anchor != NULL) {
        set_anchor(L, f->anchor, kind, (double)(c->nodes - f->nodes0));
        free(f->anchor);
        f->anchor = NULL;
    }
    c->nframes--;
    return add_node(c, L, kind, 0);
}

/* Push the value an alias names. Returns its kind, or -1 (recorded). */
static int push_alias(dctx *c, lua_State *L)
{
    const char *name = (const char *)c->event.data.alias.anchor;

    lua_pushstring(L, name);
    lua_rawget(L, SLOT_AMETA);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return fail_at(c, c->event.start_mark, "found undefined alias *%.60s", name);
    }
    double meta = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (meta < 0)
        return fail_at(c, c->event.start_mark,
                       "alias *%.60s refers to a node that contains it "
                       "(recursive structures are not supported)", name);
    int kind = (int)fmod(meta, 4);
    if (count_nodes(c, (size_t)((meta - kind) / 4)) < 0)
        return -1;
    lua_pushstring(L, name);
    lua_rawget(L, SLOT_ANCHORS);
    return kind;
}

/* Handle c->event. Sets *done at the end of input (or of the first
 * document for decode). Returns 0, or -1 with the failure recorded. */
static int handle_event(dctx *c, lua_State *L, int *done)
{
    const yaml_event_t *ev = &c->event;
    int kind;

    switch (ev->type) {
    case YAML_STREAM_END_EVENT:
        *done = 1;
        return 0;

    case YAML_DOCUMENT_START_EVENT:
        /* Anchors are scoped to their document. */
        lua_newtable(L);
        lua_replace(L, SLOT_ANCHORS);
        lua_newtable(L);
        lua_replace(L, SLOT_AMETA);
        assert(c->nframes == 0);
        return push_frame(c, F_DOC);

    case YAML_DOCUMENT_END_EVENT:
        if (!top_frame(c)->has_value) {
            if (count_nodes(c, 1) < 0)
                return -1;
            lua_pushvalue(L, SLOT_NULL);
        }
        c->nframes--;
        assert(c->nframes == 0);
        if (c->ndocs == INT_MAX)
            return fail_at(c, ev->start_mark, "too many documents");
        c->ndocs++;
        if (c->all)
            lua_rawseti(L, SLOT_DOCS, c->ndocs);
        else
            *done = 1;                  /* the root stays on top of the stack */
        return 0;

    case YAML_ALIAS_EVENT:
        if ((kind = push_alias(c, L)) < 0)
            return -1;
        return add_node(c, L, kind, 0);

    case YAML_SCALAR_EVENT: {
        frame *p = top_frame(c);
        int in_key = p->kind == F_MAP && !p->has_key;
        const char *anchor = (const char *)ev->data.scalar.anchor;
        if (count_nodes(c, 1) < 0 || (kind = push_scalar(c, L, in_key)) < 0)
            return -1;
        if (anchor != NULL)
            set_anchor(L, anchor, kind, 1);
        int is_merge = in_key && ev->data.scalar.tag == NULL
                       && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE
                       && ev->data.scalar.length == 2
                       && memcmp(ev->data.scalar.value, "<<", 2) == 0;
        return add_node(c, L, kind, is_merge);
    }

    case YAML_SEQUENCE_START_EVENT:
        return start_collection(c, L, F_SEQ);
    case YAML_MAPPING_START_EVENT:
        return start_collection(c, L, F_MAP);
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        return end_collection(c, L);

    default:                            /* STREAM_START, NO_EVENT */
        return 0;
    }
}

/*
 * The protected half of decode: arguments (ctx, null value, resolve fn).
 * Returns the result (root value, or the array of documents), or nothing
 * with c->failed set. Never frees libyaml state: decode_cleanup does.
 */
static int decode_protected(lua_State *L)
{
    dctx *c = lua_touserdata(L, SLOT_CTX);
    int done = 0;

    lua_settop(L, SLOT_RESOLVE);
    lua_newtable(L);                    /* SLOT_ANCHORS */
    lua_newtable(L);                    /* SLOT_AMETA */
    lua_newtable(L);                    /* SLOT_DOCS */
    luaL_checkstack(L, 16, "yaml.decode");

    while (!done) {
        if (!yaml_parser_parse(&c->parser, &c->event)) {
            parser_failed(c);
            return 0;
        }
        c->have_event = 1;
        int rc = handle_event(c, L, &done);
        yaml_event_delete(&c->event);
        c->have_event = 0;
        if (rc < 0)
            return 0;
    }
    if (c->all)
        lua_pushvalue(L, SLOT_DOCS);
    else if (c->ndocs == 0)
        lua_pushvalue(L, SLOT_NULL);    /* empty stream: a null document */
    return 1;
}

/* Free everything libyaml and the frame stack own. Safe on any path. */
static void decode_cleanup(dctx *c)
{
    if (c->have_event)
        yaml_event_delete(&c->event);
    if (c->parser_ok)
        yaml_parser_delete(&c->parser);
    for (size_t i = 0; i < c->nframes; i++)
        free(c->frames[i].anchor);
    free(c->frames);
    c->have_event = c->parser_ok = 0;
    c->frames = NULL;
    c->nframes = c->cap = 0;
}

/* opts[name] as a count in [1, cap] (clamped to cap), or def when absent. */
static size_t opt_count(lua_State *L, int opts, const char *name, size_t def, double cap)
{
    size_t v = def;
    lua_getfield(L, opts, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) >= 1))
            luaL_error(L, "bad option opts.%s (number >= 1 expected, got %s)", name,
                       lua_type(L, -1) == LUA_TNUMBER ? "a smaller number" : luaL_typename(L, -1));
        double d = lua_tonumber(L, -1);
        v = d >= cap ? (size_t)cap : (size_t)d;
    }
    lua_pop(L, 1);
    return v;
}

/*
 * decode / decode_all: (str [, opts]). Options: null (value for nulls,
 * default yaml.null), drop_nulls (omit mapping entries whose value is null),
 * max_depth, max_nodes, resolve (function(str) -> value for plain untagged
 * scalars outside keys). Raises on bad arguments; nil, err on bad input.
 */
static int decode_entry(lua_State *L, int all)
{
    dctx c;
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);

    memset(&c, 0, sizeof c);
    c.input = s;
    c.len = len;
    c.all = all;
    c.max_depth = DEFAULT_MAX_DEPTH;
    c.max_nodes = DEFAULT_MAX_NODES;

    lua_settop(L, 2);
    lua_pushlightuserdata(L, NULL);     /* 3: null value */
    lua_pushnil(L);                     /* 4: resolve */
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "null");
        if (!lua_isnil(L, -1))
            lua_replace(L, 3);
        else
            lua_pop(L, 1);
        lua_getfield(L, 2, "resolve");
        if (!lua_isnil(L, -1) && !lua_isfunction(L, -1))
            luaL_error(L, "bad option opts.resolve (function expected, got %s)",
                       luaL_typename(L, -1));
        lua_replace(L, 4);
        c.has_resolve = !lua_isnil(L, 4);
        lua_getfield(L, 2, "drop_nulls");
        c.drop_nulls = lua_toboolean(L, -1);
        lua_pop(L, 1);
        c.max_depth = opt_count(L, 2, "max_depth", DEFAULT_MAX_DEPTH, CAP_MAX_DEPTH);
        c.max_nodes = opt_count(L, 2, "max_nodes", DEFAULT_MAX_NODES, CAP_MAX_NODES);
    }

    /* From here on we own libyaml memory: no raising until decode_cleanup. */
    if (!yaml_parser_initialize(&c.parser))
        return luaL_error(L, "yaml.decode: out of memory");
    c.parser_ok = 1;
    yaml_parser_set_input_string(&c.parser, (const unsigned char *)s, len);

    lua_pushcfunction(L, decode_protected);
    lua_pushlightuserdata(L, &c);
    lua_pushvalue(L, 3);
    lua_pushvalue(L, 4);
    int status = lua_pcall(L, 3, 1, 0);
    decode_cleanup(&c);
    if (status != 0)
        return lua_error(L);            /* out of memory, or raised by opts.resolve */
    if (!c.failed)
        return 1;

    lua_pop(L, 1);
    if (c.line > 0)
        sb_fail(L, "parse", "yaml: line %zu, column %zu: %s", c.line, c.column, c.problem);
    else
        sb_fail(L, "parse", "yaml: %s", c.problem);
    lua_pushinteger(L, (lua_Integer)c.line);
    lua_setfield(L, -2, "line");
    lua_pushinteger(L, (lua_Integer)c.column);
    lua_setfield(L, -2, "column");
    lua_pushstring(L, c.problem);
    lua_setfield(L, -2, "problem");
    return 2;
}

static int l_decode(lua_State *L) { return decode_entry(L, 0); }
static int l_decode_all(lua_State *L) { return decode_entry(L, 1); }

/* yaml.scalar(str [, opts]) -> the core-schema value of one plain scalar.
 * opts.null: value for nulls (default yaml.null). */
static int l_scalar(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_settop(L, 2);
    lua_pushlightuserdata(L, NULL);
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "null");
        if (!lua_isnil(L, -1))
            lua_replace(L, 3);
        else
            lua_pop(L, 1);
    }
    push_plain(L, s, len, 3);
    return 1;
}

/* ================================================================ encoder */

/* Encoder state: lives on l_encode's C frame, freed after the pcall. */
typedef struct ectx {
    yaml_emitter_t emitter;
    int emitter_ok;             /* initialised, needs yaml_emitter_delete */
    char *buf;                  /* output, malloc'd */
    size_t len, cap;
    size_t max_depth;
} ectx;

/* Stack slots of encode_protected. */
enum { ESLOT_CTX = 1, ESLOT_VALUE, ESLOT_SEEN };

/* A mapping key, captured for sorting. Strings are borrowed from the table
 * being encoded, which is not modified while the key array lives. */
typedef struct ekey {
    int type;                   /* LUA_TNUMBER < LUA_TBOOLEAN < LUA_TSTRING in sort order */
    double num;
    const char *str;
    size_t len;
} ekey;

static int write_output(void *data, unsigned char *buffer, size_t size)
{
    ectx *e = data;
    if (size > e->cap - e->len) {
        size_t cap = e->cap ? e->cap : 256;
        while (cap - e->len < size)
            cap *= 2;
        char *b = realloc(e->buf, cap);
        if (b == NULL)
            return 0;
        e->buf = b;
        e->cap = cap;
    }
    memcpy(e->buf + e->len, buffer, size);
    e->len += size;
    return 1;
}

/* Hand ev to the emitter, which owns it from here on (on failure too). */
static void emit(lua_State *L, ectx *e, yaml_event_t *ev)
{
    if (!yaml_emitter_emit(&e->emitter, ev)) {
        const char *why = e->emitter.error == YAML_WRITER_ERROR || e->emitter.error == YAML_MEMORY_ERROR
                              ? "out of memory"
                              : e->emitter.problem ? e->emitter.problem : "emitter error";
        luaL_error(L, "yaml.encode: %s", why);
    }
}

/* Emit a scalar; plain_ok: the text may be written unquoted. */
static void emit_scalar(lua_State *L, ectx *e, const char *s, size_t len, int plain_ok,
                        yaml_scalar_style_t style)
{
    yaml_event_t ev;
    if (len > INT_MAX)
        luaL_error(L, "yaml.encode: string too long");
    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)len, plain_ok, 1,
                                      style))
        luaL_error(L, "yaml.encode: string is not valid UTF-8 (or out of memory)");
    emit(L, e, &ev);
}

static const char *const yaml11_words[] = {
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
    "on", "On", "ON", "off", "Off", "OFF", "<<", "=", NULL
};

/*
 * True when string s must be quoted to read back as a string: it would
 * resolve to another type, or looks like a number or a YAML 1.1 boolean to
 * older parsers, or is the merge key. (libyaml itself quotes text that is
 * not valid as a plain scalar: indicators, leading/trailing spaces, ...)
 */
static int needs_quotes(const char *s, size_t len)
{
    if (classify_plain(s, len) != R_STRING || is_one_of(s, len, yaml11_words))
        return 1;
    unsigned char c0 = (unsigned char)s[0], c1 = len > 1 ? (unsigned char)s[1] : 0;
    return is_digit(c0) || ((c0 == '-' || c0 == '+' || c0 == '.') && is_digit(c1));
}

static void emit_string(lua_State *L, ectx *e, const char *s, size_t len)
{
    if (memchr(s, '\n', len) != NULL)
        emit_scalar(L, e, s, len, 0, YAML_LITERAL_SCALAR_STYLE);   /* libyaml falls back to "..." */
    else
        emit_scalar(L, e, s, len, !needs_quotes(s, len), YAML_ANY_SCALAR_STYLE);
}

/* Write d in the shortest form that reads back as the same double. */
static void emit_number(lua_State *L, ectx *e, double d)
{
    char buf[64];
    if (isnan(d)) {
        strcpy(buf, ".nan");
    } else if (isinf(d)) {
        strcpy(buf, d > 0 ? ".inf" : "-.inf");
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(buf, sizeof buf, "%.*g", prec, d);
            for (char *p = buf; *p; p++)        /* a locale's decimal comma */
                if (!is_digit((unsigned char)*p) && !strchr("eE+-", *p))
                    *p = '.';
            if (str_to_number(L, buf, strlen(buf)) == d)
                break;
        }
    }
    emit_scalar(L, e, buf, strlen(buf), 1, YAML_PLAIN_SCALAR_STYLE);
}

/* Sort order of mapping keys: numbers, then false < true, then strings bytewise. */
static int cmp_keys(const void *pa, const void *pb)
{
    const ekey *a = pa, *b = pb;
    if (a->type != b->type)
        return a->type == LUA_TNUMBER ? -1 : b->type == LUA_TNUMBER ? 1
             : a->type == LUA_TBOOLEAN ? -1 : 1;
    if (a->type != LUA_TSTRING)
        return (a->num > b->num) - (a->num < b->num);
    int r = memcmp(a->str, b->str, a->len < b->len ? a->len : b->len);
    return r != 0 ? r : (a->len > b->len) - (a->len < b->len);
}

/* True when the table at idx carries sibyl.json's array metatable. */
static int is_marked_array(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return 0;
    lua_pushliteral(L, "__name");
    lua_rawget(L, -2);
    const char *name = lua_tostring(L, -1);
    int yes = name != NULL && strcmp(name, "sibyl.json.array") == 0;
    lua_pop(L, 2);
    return yes;
}

static void encode_value(lua_State *L, ectx *e, int idx, size_t depth);

static void encode_table(lua_State *L, ectx *e, int t, size_t depth)
{
    yaml_event_t ev;
    size_t n = 0;
    double max = 0;
    int seq = 1;

    if (depth > e->max_depth)
        luaL_error(L, "yaml.encode: nesting deeper than %d levels (opts.max_depth)",
                   (int)e->max_depth);
    luaL_checkstack(L, 8, "yaml.encode: nesting too deep");
    lua_pushvalue(L, t);
    lua_rawget(L, ESLOT_SEEN);
    if (!lua_isnil(L, -1))
        luaL_error(L, "yaml.encode: cannot encode a table that contains itself (cycle)");
    lua_pop(L, 1);
    lua_pushvalue(L, t);
    lua_pushboolean(L, 1);
    lua_rawset(L, ESLOT_SEEN);

    /* A sequence has exactly the keys 1..n. */
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        n++;
        if (seq) {
            double k = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : 0;
            if (k >= 1 && k == floor(k))
                max = k > max ? k : max;
            else
                seq = 0;
        }
    }

    if ((n > 0 && seq && max == (double)n) || (n == 0 && is_marked_array(L, t))) {
        if (!yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_ANY_SEQUENCE_STYLE))
            luaL_error(L, "yaml.encode: out of memory");
        emit(L, e, &ev);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, t, (int)i);
            encode_value(L, e, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        yaml_sequence_end_event_initialize(&ev);
        emit(L, e, &ev);
    } else {
        /* The key array is a userdata, so the GC reclaims it if we raise. */
        ekey *keys = n ? lua_newuserdata(L, n * sizeof *keys) : NULL;
        size_t i = 0;
        lua_pushnil(L);
        while (n > 0 && lua_next(L, t)) {
            lua_pop(L, 1);
            assert(i < n);
            ekey *k = &keys[i++];
            k->type = lua_type(L, -1);
            switch (k->type) {
            case LUA_TNUMBER: k->num = lua_tonumber(L, -1); break;
            case LUA_TBOOLEAN: k->num = lua_toboolean(L, -1); break;
            case LUA_TSTRING: k->str = lua_tolstring(L, -1, &k->len); break;
            default:
                luaL_error(L, "yaml.encode: cannot encode a %s as a mapping key",
                           luaL_typename(L, -1));
            }
        }
        assert(i == n);
        if (n > 1)
            qsort(keys, n, sizeof *keys, cmp_keys);

        if (!yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_ANY_MAPPING_STYLE))
            luaL_error(L, "yaml.encode: out of memory");
        emit(L, e, &ev);
        for (i = 0; i < n; i++) {
            const ekey *k = &keys[i];
            switch (k->type) {
            case LUA_TNUMBER:
                emit_number(L, e, k->num);
                lua_pushnumber(L, k->num);
                break;
            case LUA_TBOOLEAN:
                emit_scalar(L, e, k->num ? "true" : "false", k->num ? 4 : 5, 1,
                            YAML_PLAIN_SCALAR_STYLE);
                lua_pushboolean(L, (int)k->num);
                break;
            default:
                emit_string(L, e, k->str, k->len);
                lua_pushlstring(L, k->str, k->len);
                break;
            }
            lua_rawget(L, t);
            encode_value(L, e, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
        }
        yaml_mapping_end_event_initialize(&ev);
        emit(L, e, &ev);
        if (n)
            lua_pop(L, 1);              /* the key array */
    }

    lua_pushvalue(L, t);
    lua_pushnil(L);
    lua_rawset(L, ESLOT_SEEN);
}

/* Emit the value at idx (absolute). Raises for values YAML cannot hold. */
static void encode_value(lua_State *L, ectx *e, int idx, size_t depth)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        emit_scalar(L, e, "null", 4, 1, YAML_PLAIN_SCALAR_STYLE);
        return;
    case LUA_TBOOLEAN: {
        int b = lua_toboolean(L, idx);
        emit_scalar(L, e, b ? "true" : "false", b ? 4 : 5, 1, YAML_PLAIN_SCALAR_STYLE);
        return;
    }
    case LUA_TNUMBER:
        emit_number(L, e, lua_tonumber(L, idx));
        return;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        emit_string(L, e, s, len);
        return;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            emit_scalar(L, e, "null", 4, 1, YAML_PLAIN_SCALAR_STYLE);
            return;
        }
        break;
    case LUA_TTABLE:
        encode_table(L, e, idx, depth);
        return;
    default:
        break;
    }
    luaL_error(L, "yaml.encode: cannot encode a %s value", luaL_typename(L, idx));
}

/* The protected half of encode: arguments (ctx, value). Returns the text. */
static int encode_protected(lua_State *L)
{
    ectx *e = lua_touserdata(L, ESLOT_CTX);
    yaml_event_t ev;

    lua_settop(L, ESLOT_VALUE);
    lua_newtable(L);                    /* ESLOT_SEEN: tables being encoded */

    if (!yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING))
        return luaL_error(L, "yaml.encode: out of memory");
    emit(L, e, &ev);
    if (!yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1))
        return luaL_error(L, "yaml.encode: out of memory");
    emit(L, e, &ev);
    encode_value(L, e, ESLOT_VALUE, 1);
    yaml_document_end_event_initialize(&ev, 1);
    emit(L, e, &ev);
    yaml_stream_end_event_initialize(&ev);
    emit(L, e, &ev);                    /* flushes into e->buf */
    lua_pushlstring(L, e->buf ? e->buf : "", e->len);
    return 1;
}

/*
 * yaml.encode(value [, opts]) -> string. Options: indent (2..9, default 2),
 * max_depth (default 256). Raises for functions, userdata other than
 * yaml.null, non-scalar or odd keys, invalid UTF-8 and cycles.
 */
static int l_encode(lua_State *L)
{
    ectx e;
    int indent = 2;

    memset(&e, 0, sizeof e);
    e.max_depth = DEFAULT_MAX_DEPTH;
    luaL_checkany(L, 1);
    lua_settop(L, 2);
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "indent");
        if (!lua_isnil(L, -1)) {
            indent = (int)lua_tointeger(L, -1);
            if (lua_type(L, -1) != LUA_TNUMBER || indent < 2 || indent > 9)
                luaL_error(L, "bad option opts.indent (2..9 expected)");
        }
        lua_pop(L, 1);
        e.max_depth = opt_count(L, 2, "max_depth", DEFAULT_MAX_DEPTH, CAP_MAX_DEPTH);
    }

    /* From here on we own libyaml memory: no raising until it is freed. */
    if (!yaml_emitter_initialize(&e.emitter))
        return luaL_error(L, "yaml.encode: out of memory");
    e.emitter_ok = 1;
    yaml_emitter_set_output(&e.emitter, write_output, &e);
    yaml_emitter_set_unicode(&e.emitter, 1);
    yaml_emitter_set_indent(&e.emitter, indent);
    yaml_emitter_set_width(&e.emitter, -1);     /* never fold long lines */
    yaml_emitter_set_break(&e.emitter, YAML_LN_BREAK);

    lua_pushcfunction(L, encode_protected);
    lua_pushlightuserdata(L, &e);
    lua_pushvalue(L, 1);
    int status = lua_pcall(L, 2, 1, 0);
    yaml_emitter_delete(&e.emitter);
    free(e.buf);
    if (status != 0)
        return lua_error(L);
    return 1;
}

/* ================================================================ module */

static const luaL_Reg yaml_funcs[] = {
    {"decode", l_decode},
    {"decode_all", l_decode_all},
    {"encode", l_encode},
    {"scalar", l_scalar},
    {NULL, NULL}
};

int luaopen_sibyl_yaml(lua_State *L)
{
    lua_createtable(L, 0, 8);
    luaL_register(L, NULL, yaml_funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "_VERSION");
    return 1;
}
