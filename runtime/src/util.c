/*
 * util.c -- error objects, userdata metatables, option helpers and large
 * allocations shared by every module.
 *
 * Error objects are plain tables {kind=, message=, ...} carrying one shared
 * metatable whose __tostring renders "kind: message". Lua code builds them
 * with sibyl.error(kind, message, fields); C code with sb_pusherror/sb_fail.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "sb.h"

static char error_mt_key;

/* ------------------------------------------------------------ error objects */

static int error_tostring(lua_State *L)
{
    lua_getfield(L, 1, "kind");
    lua_getfield(L, 1, "message");
    const char *kind = lua_tostring(L, -2);
    const char *msg = lua_tostring(L, -1);
    if (kind && msg)
        lua_pushfstring(L, "%s: %s", kind, msg);
    else if (msg)
        lua_pushstring(L, msg);
    else
        lua_pushfstring(L, "%s error", kind ? kind : "unknown");
    return 1;
}

void sb_push_error_mt(lua_State *L)
{
    lua_pushlightuserdata(L, &error_mt_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (!lua_isnil(L, -1))
        return;
    lua_pop(L, 1);
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "sibyl.error");
    lua_setfield(L, -2, "__name");
    lua_pushlightuserdata(L, &error_mt_key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
}

int sb_iserror(lua_State *L, int idx)
{
    if (!lua_istable(L, idx) || !lua_getmetatable(L, idx))
        return 0;
    sb_push_error_mt(L);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

void sb_setfield_str(lua_State *L, const char *k, const char *v)
{
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

static void push_verror(lua_State *L, const char *kind, const char *fmt, va_list ap)
{
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    lua_createtable(L, 0, 4);
    sb_setfield_str(L, "kind", kind);
    sb_setfield_str(L, "message", buf);
    sb_push_error_mt(L);
    lua_setmetatable(L, -2);
}

int sb_pusherror(lua_State *L, const char *kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    push_verror(L, kind, fmt, ap);
    va_end(ap);
    return 1;
}

int sb_fail(lua_State *L, const char *kind, const char *fmt, ...)
{
    va_list ap;
    lua_pushnil(L);
    va_start(ap, fmt);
    push_verror(L, kind, fmt, ap);
    va_end(ap);
    return 2;
}

/* ------------------------------------------------------------- metatables */

void sb_getmeta(lua_State *L, const void *key)
{
    lua_pushlightuserdata(L, (void *)key);
    lua_rawget(L, LUA_REGISTRYINDEX);
}

int sb_newmeta(lua_State *L, const void *key, const char *name)
{
    sb_getmeta(L, key);
    if (!lua_isnil(L, -1))
        return 0;
    lua_pop(L, 1);
    lua_createtable(L, 0, 8);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pushlightuserdata(L, (void *)key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    return 1;
}

void *sb_testudata(lua_State *L, int idx, const void *key)
{
    void *p = lua_touserdata(L, idx);
    if (p == NULL || !lua_getmetatable(L, idx))
        return NULL;
    sb_getmeta(L, key);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same ? p : NULL;
}

void *sb_checkudata(lua_State *L, int idx, const void *key, const char *name)
{
    void *p = sb_testudata(L, idx, key);
    if (p == NULL) {
        const char *got = luaL_typename(L, idx);
        luaL_argerror(L, idx, lua_pushfstring(L, "%s expected, got %s", name, got));
    }
    return p;
}


/* ---------------------------------------------------------- option tables */

const char *sb_opt_str(lua_State *L, int t, const char *k, const char *def)
{
    lua_getfield(L, t, k);
    const char *s = lua_isnil(L, -1) ? def : luaL_checkstring(L, -1);
    lua_pop(L, 1);
    return s;               /* the string stays referenced by the options table */
}

double sb_opt_num(lua_State *L, int t, const char *k, double def)
{
    lua_getfield(L, t, k);
    double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

int sb_opt_bool(lua_State *L, int t, const char *k, int def)
{
    lua_getfield(L, t, k);
    int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/*
 * Large arrays (cache nodes, vector rows): 64-byte aligned; from `huge_from`
 * bytes on, rounded up to 2 MiB, 2 MiB aligned and asked to be backed by
 * transparent huge pages (fewer TLB misses on random or streaming access).
 * Free with free(). NULL when out of memory.
 */
void *sb_alloc_big(size_t bytes, size_t huge_from)
{
    void *p = NULL;
    size_t huge = (size_t)2 << 20;
    if (bytes >= huge_from) {
        bytes = (bytes + huge - 1) & ~(huge - 1);
        if (posix_memalign(&p, huge, bytes) != 0)
            return NULL;
#ifdef MADV_HUGEPAGE
        madvise(p, bytes, MADV_HUGEPAGE);   /* advice only: failure is fine */
#endif
        return p;
    }
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0)
        return NULL;
    return p;
}
