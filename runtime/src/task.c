/*
 * task.c -- the scheduler's Lua API: sibyl.spawn/current/yield/sleep/now/
 * gather/error, the task handle's methods, and the deadline primitive that
 * sched.lua scopes. Every blocking call here follows the async shape of
 * sb.h: check arguments, sb_op_new, start, sb_op_park.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event_struct.h>

#include "sb.h"
#include "sb_sched.h"

static const char *state_name(sb_task *t)
{
    switch (t->state) {
    case T_READY: return "ready";
    case T_RUNNING: return "running";
    case T_PARKED: return "waiting";
    default: break;
    }
    switch (t->result) {
    case R_OK: return "done";
    case R_ERROR: return "failed";
    default: return "cancelled";
    }
}

static int l_task_tostring(lua_State *L)
{
    sb_task *t = sb_task_check(L, 1);
    lua_pushfstring(L, "sibyl.task #%d (%s)", (int)t->id, state_name(t));
    return 1;
}

static int l_task_status(lua_State *L)
{
    lua_pushstring(L, state_name(sb_task_check(L, 1)));
    return 1;
}

static int l_task_done(lua_State *L)
{
    lua_pushboolean(L, sb_task_check(L, 1)->state == T_DONE);
    return 1;
}

static int l_task_id(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)sb_task_check(L, 1)->id);
    return 1;
}

static int l_task_cancel(lua_State *L)
{
    sb_task *t = sb_task_check(L, 1);
    if (t->state == T_DONE) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (t->state == T_RUNNING) {
        /* Cancelling ourselves: stop right here. */
        if (!lua_isyieldable(L))
            return luaL_error(L, "a task cannot cancel itself from inside a C boundary "
                                 "(a callback such as table.sort's); return from it first");
        t->kill = 1;
        lua_pushlightuserdata(L, &sb_park_marker);
        return lua_yield(L, 1);
    }
    sb_task_kill(t);
    lua_pushboolean(L, 1);
    return 1;
}

static int push_wait(lua_State *co, void *data)
{
    wait_data *w = data;
    int n = sb_task_push_outcome(co, w->target);
    sb_link_release(co, &w->link);
    return n;
}

static void cancel_wait(void *data)
{
    wait_data *w = data;
    sb_op *op = sb_op_from_data(data);
    sb_link_release(op->rt->L, &w->link);
}

static int l_task_wait(lua_State *L)
{
    sb_task *t = sb_task_check(L, 1);
    sibyl_rt *rt = t->rt;
    if (t->state == T_DONE)
        return sb_task_push_outcome(L, t);
    if (rt->current == t)
        luaL_error(L, "a task cannot wait for itself");
    sb_op *op = sb_op_new_internal(L, sizeof(wait_data), push_wait, cancel_wait);
    wait_data *w = sb_op_data(op);
    w->target = t;
    sb_link_add(L, &w->link, t, op, LINK_WAIT, 0);
    t->observed = 1;
    return sb_op_park(L, op);
}

/* ------------------------------------------------------------ Lua: sibyl */

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    sb_spawn(L, lua_gettop(L) - 1);
    return 1;
}

static int l_current(lua_State *L)
{
    sibyl_rt *rt = sb_rt(L);
    if (rt->current == NULL)
        return 0;
    sb_task_push(L, rt->current);
    return 1;
}

static int l_yield(lua_State *L)
{
    sibyl_rt *rt = sb_rt(L);
    if (rt->current == NULL)
        return luaL_error(L, "sibyl.yield() must be called from inside a task");
    lua_pushlightuserdata(L, &sb_park_marker);
    return lua_yield(L, 1);
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, sb_now());
    return 1;
}

/* sleep */

typedef struct {
    struct event ev;
} sleep_data;

static void sleep_cb(evutil_socket_t fd, short what, void *arg)
{
    SB_UNUSED(fd);
    SB_UNUSED(what);
    sb_op_done(arg);
}

static int push_sleep(lua_State *co, void *data)
{
    SB_UNUSED(data);
    lua_pushboolean(co, 1);
    return 1;
}

static void cancel_sleep(void *data)
{
    sleep_data *s = data;
    event_del(&s->ev);
}

static int l_sleep(lua_State *L)
{
    double secs = luaL_optnumber(L, 1, 0);
    luaL_argcheck(L, secs >= 0 && isfinite(secs), 1, "seconds must be a finite number >= 0");
    sb_op *op = sb_op_new(L, sizeof(sleep_data), push_sleep, cancel_sleep);
    sleep_data *s = sb_op_data(op);
    struct timeval tv;
    tv.tv_sec = (time_t)secs;
    tv.tv_usec = (suseconds_t)((secs - (double)tv.tv_sec) * 1e6);
    evtimer_assign(&s->ev, op->rt->base, sleep_cb, op);
    /* libevent measures from its cached loop time: refresh it, or a task
     * that computed for a while would wake early. */
    event_base_update_cache_time(op->rt->base);
    evtimer_add(&s->ev, &tv);
    return sb_op_park(L, op);
}

/* gather */

/* Push gather's results from the targets. */
static int push_gather_result(lua_State *L, sb_task **ts, int n, int all, int failed)
{
    if (failed) {
        lua_pushnil(L);
        sb_task_push_error(L, ts[failed - 1]);
        lua_pushinteger(L, failed);
        return 3;
    }
    int nerr = 0;
    lua_createtable(L, n, 0);
    int values = lua_gettop(L);
    lua_pushnil(L);                     /* errors table, created lazily */
    int errors = lua_gettop(L);
    for (int i = 0; i < n; i++) {
        sb_task *t = ts[i];
        if (sb_task_failed(t)) {
            if (!all)
                continue;
            if (nerr++ == 0) {
                lua_newtable(L);
                lua_replace(L, errors);
            }
            sb_task_push_error(L, t);
            lua_rawseti(L, errors, i + 1);
        } else if (lua_gettop(t->co) >= 1) {
            lua_pushvalue(t->co, 1);
            lua_xmove(t->co, L, 1);
            lua_rawseti(L, values, i + 1);
        }
        t->observed = 1;
    }
    if (nerr == 0)
        lua_pop(L, 1);
    return nerr ? 2 : 1;
}

static int push_gather(lua_State *co, void *data)
{
    gather_data *g = data;
    int n = push_gather_result(co, g->targets, g->n, g->all, g->failed);
    for (int i = 0; i < g->n; i++)
        sb_link_release(co, &g->links[i]);
    free(g->targets);
    return n;
}

static void cancel_gather(void *data)
{
    gather_data *g = data;
    lua_State *L = sb_op_from_data(data)->rt->L;
    for (int i = 0; i < g->n; i++)
        sb_link_release(L, &g->links[i]);
    free(g->targets);
}

static int l_gather(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int all = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "all");
        all = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    int n = (int)lua_objlen(L, 1);
    if (sb_rt(L)->current == NULL)
        return luaL_error(L, "sibyl.gather must be called from inside a task");
    /* Resolve entries: spawn functions, check tasks. Keep handles in a table
     * at index 3 so they stay alive while we work. */
    lua_settop(L, 2);
    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        if (lua_isfunction(L, -1)) {
            sb_spawn(L, 0);
        } else if (sb_testudata(L, -1, &sb_task_mt_key) == NULL) {
            return luaL_error(L, "bad argument #1 to 'gather' (entry %d is a %s, expected a task or a function)",
                              i, luaL_typename(L, -1));
        }
        lua_rawseti(L, 3, i);
    }
    sb_task **ts = malloc(sizeof *ts * (n > 0 ? (size_t)n : 1u));
    if (ts == NULL)
        return luaL_error(L, "out of memory");
    int remaining = 0, failed = 0;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 3, i);
        sb_task *t = lua_touserdata(L, -1);
        lua_pop(L, 1);
        if (t == sb_rt(L)->current) {
            free(ts);
            return luaL_error(L, "a task cannot gather itself");
        }
        ts[i - 1] = t;
        if (t->state != T_DONE)
            remaining++;
        else if (!all && !failed && sb_task_failed(t))
            failed = i;
    }
    if (remaining == 0 || failed) {
        int r = push_gather_result(L, ts, n, all, failed);
        free(ts);
        return r;
    }
    sb_op *op = sb_op_new_internal(L, sizeof(gather_data) + sizeof(sb_link) * (size_t)n,
                                   push_gather, cancel_gather);
    gather_data *g = sb_op_data(op);
    g->n = n;
    g->remaining = remaining;
    g->all = all;
    g->targets = ts;
    for (int i = 0; i < n; i++) {
        g->links[i].target_ref = LUA_NOREF;
        if (ts[i]->state != T_DONE)
            sb_link_add(L, &g->links[i], ts[i], op, LINK_GATHER, i + 1);
        ts[i]->observed = 1;
    }
    return sb_op_park(L, op);
}

/* deadlines: the Lua half (sched.lua) scopes them around a function */

static int l_set_deadline(lua_State *L)
{
    sibyl_rt *rt = sb_rt(L);
    sb_task *t = rt->current;
    if (t == NULL)
        return luaL_error(L, "sibyl.deadline must be called from inside a task");
    double prev = t->deadline;
    if (lua_isboolean(L, 2)) {          /* restore: (value, true) */
        t->deadline = luaL_checknumber(L, 1);
    } else {
        double secs = luaL_checknumber(L, 1);
        luaL_argcheck(L, secs >= 0 && !isnan(secs), 1, "seconds must be a number >= 0");
        double d = sb_now() + secs;
        if (t->deadline == 0 || d < t->deadline)
            t->deadline = d;
    }
    lua_pushnumber(L, prev);
    return 1;
}

/* task context: one value per task, inherited by the tasks it spawns
 * (sched.lua scopes it: sibyl.context / sibyl.with_context). */
static int l_context(lua_State *L)
{
    sb_task *t = sb_rt(L)->current;
    if (t == NULL || t->ctx_ref == LUA_NOREF)
        lua_pushnil(L);
    else
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->ctx_ref);
    return 1;
}

/* _set_context(v) -> previous value (nil clears). */
static int l_set_context(lua_State *L)
{
    sb_task *t = sb_rt(L)->current;
    if (t == NULL)
        return luaL_error(L, "sibyl.with_context must be called from inside a task");
    lua_settop(L, 1);
    if (t->ctx_ref != LUA_NOREF)
        lua_rawgeti(L, LUA_REGISTRYINDEX, t->ctx_ref);
    else
        lua_pushnil(L);
    luaL_unref(L, LUA_REGISTRYINDEX, t->ctx_ref);
    t->ctx_ref = LUA_NOREF;
    if (!lua_isnil(L, 1)) {
        lua_pushvalue(L, 1);
        t->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 1;
}

static int l_get_deadline(lua_State *L)
{
    double d = sb_deadline(L);
    if (d == 0)
        return 0;
    lua_pushnumber(L, d - sb_now());
    return 1;
}

static int l_error(lua_State *L)
{
    const char *kind = luaL_checkstring(L, 1);
    const char *msg = luaL_optstring(L, 2, kind);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    lua_createtable(L, 0, 4);
    if (lua_istable(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, -4);
        }
    }
    sb_setfield_str(L, "kind", kind);
    sb_setfield_str(L, "message", msg);
    sb_push_error_mt(L);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_is_error(lua_State *L)
{
    lua_pushboolean(L, sb_iserror(L, 1));
    return 1;
}

static int l_stats(lua_State *L)
{
    sibyl_rt *rt = sb_rt(L);
    lua_createtable(L, 0, 4);
    lua_pushnumber(L, (lua_Number)rt->ntasks);
    lua_setfield(L, -2, "tasks");
    lua_pushnumber(L, (lua_Number)rt->nready);
    lua_setfield(L, -2, "ready");
    lua_pushnumber(L, (lua_Number)rt->nexternal);
    lua_setfield(L, -2, "io");
    lua_pushnumber(L, (lua_Number)rt->next_task_id);
    lua_setfield(L, -2, "spawned");
    return 1;
}

static const luaL_Reg task_methods[] = {
    {"wait", l_task_wait},
    {"cancel", l_task_cancel},
    {"status", l_task_status},
    {"done", l_task_done},
    {"id", l_task_id},
    {"__gc", sb_task_gc},
    {"__tostring", l_task_tostring},
    {NULL, NULL}
};

static const luaL_Reg core_funcs[] = {
    {"spawn", l_spawn},
    {"current", l_current},
    {"yield", l_yield},
    {"sleep", l_sleep},
    {"now", l_now},
    {"gather", l_gather},
    {"error", l_error},
    {"is_error", l_is_error},
    {"stats", l_stats},
    {"_set_deadline", l_set_deadline},
    {"context", l_context},
    {"_set_context", l_set_context},
    {"time_left", l_get_deadline},
    {NULL, NULL}
};

/* Fill the table on top of the stack with the scheduler's functions. */
void sb_sched_register(lua_State *L)
{
    sb_newmeta(L, &sb_task_mt_key, "sibyl.task");
    luaL_setfuncs(L, task_methods, 0);
    lua_pop(L, 1);
    luaL_setfuncs(L, core_funcs, 0);
    sb_future_register(L);
    lua_pushlightuserdata(L, &sb_park_marker);
    lua_setfield(L, -2, "_marker");
}
