/*
 * yaml_emit.c -- the writing half of `sibyl.yaml`, plus the scalar rules
 * both halves share. yaml.c holds the binding (luaopen_sibyl_yaml, the l_*
 * functions and their option checks) and the decoder; see its header for the
 * module's API and memory discipline.
 *
 * Scalars: sb_yaml_classify_plain resolves a plain scalar by the YAML 1.2
 * core schema and sb_yaml_str_to_number gives a numeric scalar's value. The
 * decoder types what it reads with them; the encoder uses them to decide
 * which strings need quotes and to check that numbers read back exactly.
 *
 * Encoding (sb_yaml_encode) walks the Lua value and feeds libyaml's emitter
 * one event at a time; output collects in a malloc'd buffer. As in the
 * decoder, all libyaml state lives in a C struct on sb_yaml_encode's frame,
 * the walk runs inside lua_pcall, and the state is freed before any error is
 * re-raised.
 *
 * Caveats
 *  - encode() uses raw access (metatables ignored), writes shared tables out
 *    in full at each place (no anchors), and raises on cycles. An empty table
 *    encodes as {} unless it carries the sibyl.json array metatable (then []).
 *  - Mapping keys are written sorted: numbers, then false < true, then
 *    strings bytewise.
 *  - Strings that would read back as another type (or as a YAML 1.1 boolean
 *    such as yes/no/on/off) are quoted; multi-line strings use literal style.
 */
#include <assert.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "sb.h"
#include "sb_yaml.h"

/* ================================================================ scalars */

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
 * conversion. Decimal ints and floats need sb_yaml_str_to_number for their
 * value.
 */
sb_yaml_res sb_yaml_classify_plain(const char *s, size_t len)
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
double sb_yaml_str_to_number(lua_State *L, const char *s, size_t len)
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

/* ================================================================ encoder */

/* Encoder state: lives on sb_yaml_encode's C frame, freed after the pcall. */
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
    if (sb_yaml_classify_plain(s, len) != R_STRING || is_one_of(s, len, yaml11_words))
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
            if (sb_yaml_str_to_number(L, buf, strlen(buf)) == d)
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
 * Encode the value at idx (absolute) as one YAML document; push the text
 * and return 1. indent: 2..9; max_depth: >= 1 (both checked by the caller).
 * Raises for values YAML cannot hold, cycles and out-of-memory, after
 * freeing the emitter and the output buffer.
 */
int sb_yaml_encode(lua_State *L, int idx, int indent, size_t max_depth)
{
    ectx e;

    assert(idx > 0 && indent >= 2 && indent <= 9 && max_depth >= 1);
    memset(&e, 0, sizeof e);
    e.max_depth = max_depth;

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
    lua_pushvalue(L, idx);
    int status = lua_pcall(L, 2, 1, 0);
    yaml_emitter_delete(&e.emitter);
    free(e.buf);
    if (status != 0)
        return lua_error(L);
    return 1;
}
