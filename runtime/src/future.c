/*
 * future.c -- sibyl.future(): a result one task sets and any number of
 * tasks wait for. The rendezvous for request/response protocols where a
 * reader task receives the replies other tasks are waiting on (the MCP
 * stdio client, for one).
 *
 *     local f = sibyl.future()
 *     sibyl.spawn(function() sibyl.sleep(0.1); f:set("ready", 42) end)
 *     print(f:wait())            --> ready  42
 *
 * Waiting is an internal op (like task:wait): a future nobody can set any
 * more ends in the scheduler's deadlock report, not in a hang. A waiter that
 * is cancelled or hits its deadline is unlinked; the others are unaffected.
 */
#include <string.h>

#include "sb.h"

static const char future_mt_key = 0;

typedef struct fut_wait fut_wait;

typedef struct {
    int set;                    /* the values are in */
    int ref;                    /* registry: {n = count, ...values}, once set */
    fut_wait *head;             /* tasks parked in wait() */
} sb_future;

struct fut_wait {
    fut_wait *next, *prev;
    sb_future *f;               /* NULL once unlinked */
    int ref;                    /* this waiter's reference to the values */
};

static void unlink_wait(fut_wait *w)
{
    sb_future *f = w->f;
    if (f == NULL)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        f->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
    w->f = NULL;
}

/* Push the values of the table referenced by ref; returns how many. */
static int push_values(lua_State *L, int ref)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_getfield(L, -1, "n");
    int n = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    luaL_checkstack(L, n + 1, "future values");
    for (int i = 1; i <= n; i++)
        lua_rawgeti(L, -i, i);
    lua_remove(L, -(n + 1));
    return n;
}

static int push_wait(lua_State *co, void *data)
{
    fut_wait *w = data;
    int n = push_values(co, w->ref);
    luaL_unref(co, LUA_REGISTRYINDEX, w->ref);
    w->ref = LUA_NOREF;
    return n;
}

static void cancel_wait(void *data)
{
    fut_wait *w = data;
    unlink_wait(w);
    if (w->ref != LUA_NOREF) {
        luaL_unref(sb_op_rt(sb_op_from_data(data))->L, LUA_REGISTRYINDEX, w->ref);
        w->ref = LUA_NOREF;
    }
}

static sb_future *check_future(lua_State *L)
{
    return sb_checkudata(L, 1, &future_mt_key, "sibyl.future");
}

/* f:set(...): resolve with the given values; true, or false when the
 * future was already set (the first set wins). Wakes every waiter. */
static int l_set(lua_State *L)
{
    sb_future *f = check_future(L);
    if (f->set) {
        lua_pushboolean(L, 0);
        return 1;
    }
    int n = lua_gettop(L) - 1;
    lua_createtable(L, n, 1);
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(L, i + 1);
        lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    f->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    f->set = 1;
    while (f->head) {
        fut_wait *w = f->head;
        unlink_wait(w);
        lua_rawgeti(L, LUA_REGISTRYINDEX, f->ref);
        w->ref = luaL_ref(L, LUA_REGISTRYINDEX);
        sb_op_done(sb_op_from_data(w));
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* f:wait(): the values given to set, parking until then. Under a deadline
 * or when cancelled: nil, err like any other wait. */
static int l_wait(lua_State *L)
{
    sb_future *f = check_future(L);
    if (f->set)
        return push_values(L, f->ref);
    sb_op *op = sb_op_new_internal(L, sizeof(fut_wait), push_wait, cancel_wait);
    fut_wait *w = sb_op_data(op);
    w->ref = LUA_NOREF;
    w->f = f;
    w->next = f->head;
    if (f->head)
        f->head->prev = w;
    f->head = w;
    return sb_op_park(L, op);
}

static int l_done(lua_State *L)
{
    lua_pushboolean(L, check_future(L)->set);
    return 1;
}

static int l_gc(lua_State *L)
{
    sb_future *f = check_future(L);
    while (f->head)                 /* only unreachable waiters are left */
        unlink_wait(f->head);
    if (f->set) {
        luaL_unref(L, LUA_REGISTRYINDEX, f->ref);
        f->set = 0;
        f->ref = LUA_NOREF;
    }
    return 0;
}

static int l_tostring(lua_State *L)
{
    sb_future *f = check_future(L);
    lua_pushstring(L, f->set ? "sibyl.future (set)" : "sibyl.future (pending)");
    return 1;
}

static int l_future(lua_State *L)
{
    sb_future *f = lua_newuserdata(L, sizeof *f);
    memset(f, 0, sizeof *f);
    f->ref = LUA_NOREF;
    sb_getmeta(L, &future_mt_key);
    lua_setmetatable(L, -2);
    return 1;
}

/* Add sibyl.future to the table on top of the stack. */
void sb_future_register(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"set", l_set},
        {"wait", l_wait},
        {"done", l_done},
        {"__gc", l_gc},
        {"__tostring", l_tostring},
        {NULL, NULL}
    };
    sb_newmeta(L, &future_mt_key, "sibyl.future");
    luaL_setfuncs(L, methods, 0);
    lua_pop(L, 1);
    lua_pushcfunction(L, l_future);
    lua_setfield(L, -2, "future");
}
