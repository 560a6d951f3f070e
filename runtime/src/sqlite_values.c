/*
 * sqlite_values.c -- value conversion for `sibyl.sqlite.core` (sqlite.c):
 * Lua values into bind specs (numbers as INT or FLOAT, strings, booleans,
 * sqlite.null, sqlite.blob() wrappers and LuaJIT int64/byte cdata through
 * the converter sqlite.lua installs), result rows back into Lua tables
 * (int64 = "string" for integers beyond 2^53), and the checks of the
 * options tables of open, query, row and each. Runs on the loop thread
 * only; the engine (sqlite_engine.c) reads the specs built here.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb.h"
#include "sb_sqlite.h"

#define MAX_PARAMS 32766                /* highest positional parameter index */
#define SQ_TCDATA 10                    /* lua_type() of LuaJIT FFI cdata */

static char blob_key, conv_key;

/* ============================================================ Lua: results */

static void push_value(lua_State *co, const sq_val *v, const char *arena, int int64_str)
{
    switch (v->type) {
    case SQV_INT:
        if (int64_str && (v->u.i > (INT64_C(1) << 53) || v->u.i < -(INT64_C(1) << 53))) {
            char buf[32];
            snprintf(buf, sizeof buf, "%lld", (long long)v->u.i);
            lua_pushstring(co, buf);
        } else {
            lua_pushnumber(co, (lua_Number)v->u.i);
        }
        break;
    case SQV_FLOAT:
        lua_pushnumber(co, v->u.d);
        break;
    case SQV_TEXT:
    case SQV_BLOB:
        lua_pushlstring(co, arena + v->u.off, v->len);
        break;
    default:
        lua_pushnil(co);
        break;
    }
}

int sb_sq_push_rows(lua_State *co, const sq_rows *r, size_t first, size_t count, int int64_str)
{
    if (!lua_checkstack(co, r->ncols + 8))
        return -1;
    lua_createtable(co, count > INT32_MAX ? INT32_MAX : (int)count, 1);
    int tidx = lua_gettop(co);
    lua_createtable(co, r->ncols, 0);
    for (int c = 0; c < r->ncols; c++) {
        lua_pushstring(co, r->arena.p + r->col_off[c]);
        lua_rawseti(co, -2, c + 1);
    }
    lua_setfield(co, tidx, "columns");
    int names = lua_gettop(co) + 1;
    for (int c = 0; c < r->ncols; c++)
        lua_pushstring(co, r->arena.p + r->col_off[c]);
    for (size_t i = 0; i < count; i++) {
        const sq_val *row = r->vals + (first + i) * (size_t)r->ncols;
        lua_createtable(co, 0, r->ncols);
        for (int c = 0; c < r->ncols; c++) {
            if (row[c].type == SQV_NULL)
                continue;
            lua_pushvalue(co, names + c);
            push_value(co, &row[c], r->arena.p, int64_str);
            lua_rawset(co, -3);
        }
        lua_rawseti(co, tidx, (int)(i + 1));
    }
    lua_settop(co, tidx);
    return 0;
}

/* ============================================================ Lua: params */

/* Convert one Lua value at idx into v (strings into arena). Returns 0, or
 * -1 with a message in err. Never raises (except on out of memory). */
static int to_val(lua_State *L, int idx, sq_val *v, sq_buf *arena, char *err, size_t errlen,
                  const char *where)
{
    size_t len;
    const char *s;
    memset(v, 0, sizeof *v);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return 0;
    case LUA_TBOOLEAN:
        v->type = SQV_INT;
        v->u.i = lua_toboolean(L, idx);
        return 0;
    case LUA_TNUMBER: {
        lua_Number d = lua_tonumber(L, idx);
        if (d == floor(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0) {
            v->type = SQV_INT;
            v->u.i = (int64_t)d;
        } else {
            v->type = SQV_FLOAT;
            v->u.d = d;
        }
        return 0;
    }
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        v->type = SQV_TEXT;
        goto bytes;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)
            return 0;           /* json.null / sqlite.null */
        break;
    case LUA_TTABLE:
        if (lua_getmetatable(L, idx)) {
            sb_getmeta(L, &blob_key);
            int isblob = lua_rawequal(L, -1, -2);
            lua_pop(L, 2);
            if (isblob) {
                lua_rawgeti(L, idx, 1);
                s = lua_tolstring(L, -1, &len);
                lua_pop(L, 1);  /* the wrapper still holds the string */
                if (s == NULL)
                    break;
                v->type = SQV_BLOB;
                goto bytes;
            }
        }
        break;
    case SQ_TCDATA:
        sb_getmeta(L, &conv_key);
        lua_pushvalue(L, idx);
        if (lua_pcall(L, 1, 2, 0) != 0) {
            snprintf(err, errlen, "%s: %s", where, lua_tostring(L, -1));
            lua_pop(L, 1);
            return -1;
        }
        s = lua_tolstring(L, -2, &len);
        if (s && lua_toboolean(L, -1)) {            /* an int64 cdata, as decimal text */
            v->type = SQV_INT;
            v->u.i = strtoll(s, NULL, 10);
            lua_pop(L, 2);
            return 0;
        }
        v->type = SQV_BLOB;
        v->u.off = s ? sb_sq_buf_add(arena, s, len) : (size_t)-1;
        v->len = len;
        lua_pop(L, 2);
        if (v->u.off == (size_t)-1) {
            snprintf(err, errlen, "%s: out of memory", where);
            return -1;
        }
        return 0;
    default:
        break;
    }
    snprintf(err, errlen, "%s: cannot bind a %s value; pass nil, a boolean, a number, a string, "
             "sqlite.null or sqlite.blob(data)", where, luaL_typename(L, idx));
    return -1;

bytes:
    v->len = len;
    v->u.off = sb_sq_buf_add(arena, s, len);
    if (v->u.off == (size_t)-1) {
        snprintf(err, errlen, "%s: out of memory", where);
        return -1;
    }
    return 0;
}

int sb_sq_read_params(lua_State *L, int idx, sq_params *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    if (lua_isnoneornil(L, idx))
        return 0;
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "params must be a table (an array for ?, keys for :name), got %s",
                 luaL_typename(L, idx));
        return -1;
    }
    int maxpos = 0, nnamed = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER) {
            lua_Number k = lua_tonumber(L, -1);
            if (k != floor(k) || k < 1 || k > MAX_PARAMS) {
                lua_pop(L, 1);
                snprintf(err, errlen, "params: key %.14g is not a parameter index (1..%d)", k,
                         MAX_PARAMS);
                return -1;
            }
            if ((int)k > maxpos)
                maxpos = (int)k;
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            nnamed++;
        } else {
            snprintf(err, errlen, "params: keys must be integers or names, got a %s key",
                     luaL_typename(L, -1));
            lua_pop(L, 1);
            return -1;
        }
    }
    if ((maxpos && (p->pos = calloc((size_t)maxpos, sizeof *p->pos)) == NULL)
        || (nnamed && ((p->named = calloc((size_t)nnamed, sizeof *p->named)) == NULL
                       || (p->name_off = calloc((size_t)nnamed, sizeof *p->name_off)) == NULL))) {
        snprintf(err, errlen, "params: out of memory");
        return -1;
    }
    p->npos = maxpos;
    char where[96];
    for (int i = 1; i <= maxpos; i++) {
        lua_rawgeti(L, idx, i);
        snprintf(where, sizeof where, "params[%d]", i);
        int rc = to_val(L, lua_gettop(L), &p->pos[i - 1], &p->arena, err, errlen, where);
        lua_pop(L, 1);
        if (rc != 0)
            return -1;
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t len;
            const char *name = lua_tolstring(L, -2, &len);
            snprintf(where, sizeof where, "params.%.80s", name);
            sq_val *v = &p->named[p->nnamed];
            if (to_val(L, lua_gettop(L), v, &p->arena, err, errlen, where) != 0) {
                lua_pop(L, 2);
                return -1;
            }
            size_t off = sb_sq_buf_add(&p->arena, name, len);
            if (off == (size_t)-1) {
                lua_pop(L, 2);
                snprintf(err, errlen, "params: out of memory");
                return -1;
            }
            p->name_off[p->nnamed++] = off;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* =========================================================== Lua: options */

void sb_sq_check_known(lua_State *L, int idx, const char *const known[], const char *fn)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int ok = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (const char *const *k = known; *k && !ok; k++)
                ok = strcmp(*k, lua_tostring(L, -1)) == 0;
        if (!ok) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (const char *const *k = known; *k; k++) {
                luaL_addstring(&b, *k);
                if (k[1])
                    luaL_addstring(&b, ", ");
            }
            luaL_pushresult(&b);
            luaL_error(L, "%s: unknown option '%s' (known: %s)", fn,
                       lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : luaL_typename(L, -2),
                       lua_tostring(L, -1));
        }
    }
}

/* sb_opt_bool / sb_opt_num, raising on a value of the wrong type (and, for
 * numbers, outside lo..hi or not an integer) instead of coercing it. */
int sb_sq_opt_bool(lua_State *L, int idx, const char *k, int def, const char *fn)
{
    if (idx == 0)
        return def;
    lua_getfield(L, idx, k);
    int t = lua_type(L, -1);
    lua_pop(L, 1);
    if (t != LUA_TBOOLEAN && t != LUA_TNIL)
        luaL_error(L, "%s: option '%s' must be a boolean, got %s", fn, k, lua_typename(L, t));
    return sb_opt_bool(L, idx, k, def);
}

lua_Number sb_sq_opt_num(lua_State *L, int idx, const char *k, lua_Number def, lua_Number lo,
                         lua_Number hi, const char *fn)
{
    if (idx == 0)
        return def;
    lua_getfield(L, idx, k);
    int t = lua_type(L, -1);
    lua_pop(L, 1);
    if (t != LUA_TNUMBER && t != LUA_TNIL)
        luaL_error(L, "%s: option '%s' must be a number, got %s", fn, k, lua_typename(L, t));
    lua_Number v = sb_opt_num(L, idx, k, def);
    if (t == LUA_TNUMBER && (!(v >= lo && v <= hi) || v != floor(v)))
        luaL_error(L, "%s: option '%s' must be an integer from %.0f to %.0f, got %.14g", fn, k,
                   lo, hi, v);
    return v;
}

/* The int64 option: 1 for "string", 0 for "number", def when absent. */
int sb_sq_opt_int64(lua_State *L, int idx, int def, const char *fn)
{
    if (idx == 0)
        return def;
    lua_getfield(L, idx, "int64");
    int t = lua_type(L, -1);
    lua_pop(L, 1);
    if (t == LUA_TNIL)
        return def;
    const char *s = t == LUA_TSTRING ? sb_opt_str(L, idx, "int64", NULL) : NULL;
    if (s == NULL || (strcmp(s, "number") != 0 && strcmp(s, "string") != 0))
        luaL_error(L, "%s: option 'int64' must be \"number\" or \"string\"", fn);
    return strcmp(s, "string") == 0;
}

int sb_sq_opts_index(lua_State *L, int idx, const char *fn)
{
    if (lua_isnoneornil(L, idx))
        return 0;
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: options must be a table, got %s", fn, luaL_typename(L, idx));
    return idx;
}

/* ============================================================= Lua: blobs */

int sb_sq_l_blob(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_createtable(L, 1, 0);
    lua_pushlstring(L, s, len);
    lua_rawseti(L, -2, 1);
    sb_getmeta(L, &blob_key);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_blob_tostring(lua_State *L)
{
    lua_rawgeti(L, 1, 1);
    lua_pushfstring(L, "sibyl.sqlite.blob (%d bytes)", (int)lua_objlen(L, -1));
    return 1;
}

int sb_sq_l_set_conv(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_pushlightuserdata(L, &conv_key);
    lua_pushvalue(L, 1);
    lua_rawset(L, LUA_REGISTRYINDEX);
    return 0;
}

void sb_sq_new_blob_meta(lua_State *L)
{
    sb_newmeta(L, &blob_key, "sibyl.sqlite.blob");
    lua_pushcfunction(L, l_blob_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushnil(L);
    lua_setfield(L, -2, "__index");         /* a plain table: blob[1] is the data */
}
