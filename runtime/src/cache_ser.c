/*
 * cache_ser.c -- the copies behind `sibyl.cache` (cache.c): a table is
 * serialised into bytes on set and rebuilt from them on every get, so the
 * cache never hands out shared mutable state; and core.digest, for keys.
 *
 * Bytes: a tag per value (T_*), numbers as doubles, strings with a 64-bit
 * length, tables as key/value pairs up to T_END. Only this process reads
 * them back (little-endian, no version).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sb.h"
#include "sb_hash.h"

#define SERIAL_MAX_DEPTH 100

/* Not static: cache.c puts them in sibyl.cache.core. */
int sb_cache_encode(lua_State *L);
int sb_cache_decode(lua_State *L);
int sb_cache_digest(lua_State *L);

/* Tags inside a serialised table. */
enum { T_END = 0, T_NUM, T_STR, T_TRUE, T_FALSE, T_NULL, T_TABLE };

/*
 * luaL_Buffer keeps pieces on the stack, so values are first copied into a
 * C buffer of our own; that keeps stack indexes stable while recursing.
 */
typedef struct {
    char *p;
    size_t len, cap;
} sbuf;

static int sbuf_put(sbuf *s, const void *p, size_t n)
{
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        while (cap < s->len + n)
            cap *= 2;
        char *np = realloc(s->p, cap);
        if (np == NULL)
            return -1;
        s->p = np;
        s->cap = cap;
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    return 0;
}

static int ser(lua_State *L, sbuf *s, int idx, int depth, const char **why)
{
    unsigned char tag;
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: {
        double d = lua_tonumber(L, idx);
        tag = T_NUM;
        return sbuf_put(s, &tag, 1) || sbuf_put(s, &d, sizeof d);
    }
    case LUA_TSTRING: {
        size_t n;
        const char *str = lua_tolstring(L, idx, &n);
        uint64_t len = n;
        tag = T_STR;
        return sbuf_put(s, &tag, 1) || sbuf_put(s, &len, sizeof len) || sbuf_put(s, str, n);
    }
    case LUA_TBOOLEAN:
        tag = lua_toboolean(L, idx) ? T_TRUE : T_FALSE;
        return sbuf_put(s, &tag, 1);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {           /* json.null */
            tag = T_NULL;
            return sbuf_put(s, &tag, 1);
        }
        break;
    case LUA_TTABLE: {
        if (depth > SERIAL_MAX_DEPTH) {
            *why = "nested deeper than 100 levels (a cycle?)";
            return -1;
        }
        tag = T_TABLE;
        if (sbuf_put(s, &tag, 1))
            return -1;
        if (!lua_checkstack(L, 3)) {
            *why = "nested too deeply for the Lua stack";
            return -1;
        }
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            int top = lua_gettop(L);
            if (ser(L, s, top - 1, depth + 1, why) || ser(L, s, top, depth + 1, why)) {
                lua_pop(L, 2);
                return -1;
            }
            lua_pop(L, 1);
        }
        tag = T_END;
        return sbuf_put(s, &tag, 1);
    }
    default:
        break;
    }
    *why = lua_typename(L, lua_type(L, idx));
    return -1;
}

/* core.encode(table) -> bytes. Raises for values that cannot be copied. */
int sb_cache_encode(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sbuf s = {NULL, 0, 0};
    const char *why = "out of memory";
    lua_settop(L, 1);
    if (ser(L, &s, 1, 0, &why) != 0) {
        free(s.p);
        if (strcmp(why, "out of memory") == 0 || strncmp(why, "nested", 6) == 0)
            return luaL_error(L, "cache: cannot store the table: %s", why);
        return luaL_error(L, "cache: cannot store a %s inside a table (values may be strings, numbers, "
                             "booleans, json.null and tables of those)", why);
    }
    lua_pushlstring(L, s.p, s.len);
    free(s.p);
    return 1;
}

typedef struct {
    const char *p, *end;
} rbuf;

static int de(lua_State *L, rbuf *r, int depth)
{
    if (r->p >= r->end || depth > SERIAL_MAX_DEPTH + 1)
        return -1;
    unsigned char tag = (unsigned char)*r->p++;
    switch (tag) {
    case T_NUM: {
        double d;
        if ((size_t)(r->end - r->p) < sizeof d)
            return -1;
        memcpy(&d, r->p, sizeof d);
        r->p += sizeof d;
        lua_pushnumber(L, d);
        return 0;
    }
    case T_STR: {
        uint64_t n;
        if ((size_t)(r->end - r->p) < sizeof n)
            return -1;
        memcpy(&n, r->p, sizeof n);
        r->p += sizeof n;
        if ((uint64_t)(r->end - r->p) < n)
            return -1;
        lua_pushlstring(L, r->p, (size_t)n);
        r->p += n;
        return 0;
    }
    case T_TRUE:
    case T_FALSE:
        lua_pushboolean(L, tag == T_TRUE);
        return 0;
    case T_NULL:
        lua_pushlightuserdata(L, NULL);
        return 0;
    case T_TABLE:
        if (!lua_checkstack(L, 4))
            return -1;
        lua_newtable(L);
        while (r->p < r->end && (unsigned char)*r->p != T_END) {
            if (de(L, r, depth + 1) || de(L, r, depth + 1))
                return -1;
            lua_rawset(L, -3);
        }
        if (r->p >= r->end)
            return -1;
        r->p++;                                         /* T_END */
        return 0;
    default:
        return -1;
    }
}

/* core.decode(ptr_or_string [, len]) -> table. Takes a string, or the
 * lightuserdata/len that an FFI get returned (no copy in between). */
int sb_cache_decode(lua_State *L)
{
    const char *p;
    size_t n;
    if (lua_type(L, 1) == LUA_TSTRING) {
        p = lua_tolstring(L, 1, &n);
    } else {
        p = lua_touserdata(L, 1);
        n = (size_t)luaL_checknumber(L, 2);
        if (p == NULL)
            return luaL_argerror(L, 1, "bytes expected");
    }
    rbuf r = {p, p + n};
    int top = lua_gettop(L);
    if (de(L, &r, 0) != 0 || r.p != r.end) {
        lua_settop(L, top);
        return luaL_error(L, "cache: a stored table is corrupt");
    }
    return 1;
}

/* core.digest(s) -> 32 hex digits: two 64-bit hashes of s with different
 * seeds. For cache keys (not cryptographic: do not key secrets on it). */
int sb_cache_digest(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    uint64_t a = sb_hash64(s, n, SB_HASH_SEED), b = sb_hash64(s, n, 0xD6E8FEB86659FD93ULL);
    char out[33];
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[i] = hex[(a >> (60 - 4 * i)) & 15];
        out[16 + i] = hex[(b >> (60 - 4 * i)) & 15];
    }
    lua_pushlstring(L, out, 32);
    return 1;
}
