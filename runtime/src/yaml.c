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
 * This file holds the binding (luaopen_sibyl_yaml, every l_* function and
 * option check) and the decoder. yaml_emit.c holds the core-schema scalar
 * rules both directions use and the encoder; sb_yaml.h is what they share.
 *
 * Decoding walks libyaml's event stream and builds Lua values directly on the
 * Lua stack, one table per open collection; there is no intermediate tree.
 * Syntax errors and limit violations return nil, err with err.kind "parse",
 * err.line / err.column (1-based), err.problem (the message without the
 * position) and err.message "yaml: line L, column C: problem".
 *
 * Typing: plain (unquoted, untagged) scalars are resolved by the YAML 1.2
 * core schema (see sb_yaml_classify_plain); quoted and block scalars are
 * strings; the tags !!str !!int !!float !!bool !!null are honoured, other
 * tags ignored.
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
 *  - encode() caveats (no anchors, cycles raise, {} vs []): see yaml_emit.c.
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
#include "sb_yaml.h"

#define DEFAULT_MAX_DEPTH   256
#define DEFAULT_MAX_NODES   1000000
#define CAP_MAX_DEPTH       1000000
#define CAP_MAX_NODES       ((double)((size_t)1 << 50))  /* counts stay exact in doubles */

#define CORE_TAG            "tag:yaml.org,2002:"
#define CORE_TAG_LEN        (sizeof CORE_TAG - 1)

/* What a decoded node is; kept per anchor so aliases and merges know it. */
enum { K_SCALAR = 0, K_SEQ = 1, K_MAP = 2, K_NULL = 3 };

/* ================================================================ scalars */

/*
 * Push the core-schema value of plain scalar s: null pushes a copy of the
 * value at null_idx. Returns the node kind (K_SCALAR or K_NULL).
 */
static int push_plain(lua_State *L, const char *s, size_t len, int null_idx)
{
    switch (sb_yaml_classify_plain(s, len)) {
    case R_NULL:
        lua_pushvalue(L, null_idx);
        return K_NULL;
    case R_BOOL:
        lua_pushboolean(L, s[0] == 't' || s[0] == 'T');
        return K_SCALAR;
    case R_INT:
    case R_FLOAT:
        lua_pushnumber(L, sb_yaml_str_to_number(L, s, len));
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
        sb_yaml_res r = sb_yaml_classify_plain(s, len);
        if (strcmp(t, "str") == 0) {
            lua_pushlstring(L, s, len);
            return K_SCALAR;
        }
        if (strcmp(t, "int") == 0) {
            if (r != R_INT)
                return fail_at(c, ev->start_mark, "invalid !!int value '%.40s'", s);
            lua_pushnumber(L, sb_yaml_str_to_number(L, s, len));
            return K_SCALAR;
        }
        if (strcmp(t, "float") == 0) {
            if (r != R_INT && r != R_FLOAT)
                return fail_at(c, ev->start_mark, "invalid !!float value '%.40s'", s);
            lua_pushnumber(L, sb_yaml_str_to_number(L, s, len));
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

/*
 * yaml.encode(value [, opts]) -> string. Options: indent (2..9, default 2),
 * max_depth (default 256). Raises for functions, userdata other than
 * yaml.null, non-scalar or odd keys, invalid UTF-8 and cycles.
 */
static int l_encode(lua_State *L)
{
    int indent = 2;
    size_t max_depth = DEFAULT_MAX_DEPTH;

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
        max_depth = opt_count(L, 2, "max_depth", DEFAULT_MAX_DEPTH, CAP_MAX_DEPTH);
    }
    return sb_yaml_encode(L, 1, indent, max_depth);
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
