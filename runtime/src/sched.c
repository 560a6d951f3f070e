/*
 * sched.c -- coroutine tasks: spawn, park/resume, wait, gather, cancel,
 * sleep, deadlines. The C half of the `sibyl` module (sched.lua is the Lua
 * half: deadline scopes and the coroutine wrappers).
 *
 * Model. Every piece of Lua code runs inside a task: a coroutine owned by
 * the scheduler. An async primitive allocates an sb_op, starts its work,
 * and yields the task (sb_op_park). Whatever completes the work -- a
 * libevent callback, a worker thread's completion -- calls sb_op_done(),
 * which only queues the task. The ready queue is drained from a libevent
 * callback (ready_cb), which asks the op to push its results onto the
 * task's coroutine and resumes it. No module callback ever calls Lua.
 *
 * Task states:   READY -> RUNNING -> (PARKED -> READY -> RUNNING)* -> DONE
 *
 * Caveats:
 *  - A task is pinned (registry ref) from spawn until it is DONE; after that
 *    only Lua references keep its handle (and its results) alive.
 *  - cancel() kills: the coroutine is never resumed again, its pending op is
 *    torn down through the op's cancel hook, its waiters get kind
 *    "cancelled". Objects the task opened are freed by their __gc.
 *  - A deadline fails the pending op with kind "timeout" and resumes the
 *    task, which carries on (it gets nil, err).
 *  - A failed task whose error nobody retrieves is reported on stderr when
 *    its handle is collected or when sibyl_run() ends, never lost.
 */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event_struct.h>

#include "sb.h"

static char task_mt_key;
static char park_marker;   /* yielded by primitives; sched.lua passes it up */

enum { T_READY, T_RUNNING, T_PARKED, T_DONE };
enum { R_NONE, R_OK, R_ERROR, R_CANCELLED };
enum { WAKE_NORMAL, WAKE_TIMEOUT };
enum { LINK_WAIT, LINK_GATHER };

typedef struct sb_link sb_link;

struct sb_link {
    sb_link *next, *prev;       /* in target->waiters */
    sb_task *target;            /* NULL once unlinked */
    int target_ref;             /* pins the target's handle */
    sb_op *op;
    int kind;                   /* LINK_WAIT or LINK_GATHER */
    int index;                  /* position in a gather, 1-based */
};

struct sb_op {
    sibyl_rt *rt;
    sb_task *task;
    sb_push_fn push;
    sb_cancel_fn cancel;
    int external;
    int parked;
    int done;
    _Alignas(max_align_t) unsigned char data[];
};

struct sb_task {
    sibyl_rt *rt;
    lua_State *co;
    int co_ref;                 /* pins the coroutine while the handle lives */
    int self_ref;               /* pins the handle while the task is live */
    uint64_t id;
    int state, result, wake, nargs;
    int kill;                   /* cancel() requested while running */
    int observed;               /* error retrieved by someone */
    sb_task *next, *prev;       /* ready queue */
    sb_task *unobs_next, *unobs_prev;
    sb_op *op;                  /* parked on, or completed and not delivered */
    double deadline;            /* absolute sb_now(); 0 = none */
    struct event *deadline_ev;  /* created on first use */
    sb_link *waiters;
    sb_task_done_fn on_done;
    void *on_done_ud;
};

static void task_finish(sb_task *t, int result);
static void op_discard(sb_op *op);

/* ------------------------------------------------------------ ready queue */

static void ready_push(sibyl_rt *rt, sb_task *t)
{
    assert(t->state != T_DONE);
    t->state = T_READY;
    t->next = NULL;
    t->prev = rt->ready_tail;
    if (rt->ready_tail)
        rt->ready_tail->next = t;
    else
        rt->ready_head = t;
    rt->ready_tail = t;
    if (rt->nready++ == 0)
        event_active(rt->ready_ev, EV_TIMEOUT, 0);
}

static void ready_remove(sibyl_rt *rt, sb_task *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        rt->ready_head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        rt->ready_tail = t->prev;
    t->next = t->prev = NULL;
    rt->nready--;
}

/* ------------------------------------------------------------------- ops */

static sb_op *op_alloc(lua_State *L, size_t size, sb_push_fn push, sb_cancel_fn cancel, int external)
{
    sibyl_rt *rt = sb_rt(L);
    if (rt->current == NULL)
        luaL_error(L, "this call does I/O and must run inside a task "
                      "(use sibyl.spawn(fn) or sibyl.run(fn))");
    sb_op *op = calloc(1, sizeof *op + size);
    if (op == NULL)
        luaL_error(L, "out of memory");
    op->rt = rt;
    op->task = rt->current;
    op->push = push;
    op->cancel = cancel;
    op->external = external;
    return op;
}

sb_op *sb_op_new(lua_State *L, size_t size, sb_push_fn push, sb_cancel_fn cancel)
{
    return op_alloc(L, size, push, cancel, 1);
}

sb_op *sb_op_new_internal(lua_State *L, size_t size, sb_push_fn push, sb_cancel_fn cancel)
{
    return op_alloc(L, size, push, cancel, 0);
}

void sb_op_abort(sb_op *op)
{
    assert(!op->parked);
    free(op);
}

void *sb_op_data(sb_op *op) { return op->data; }
sb_op *sb_op_from_data(void *data) { return (sb_op *)((char *)data - offsetof(sb_op, data)); }
sibyl_rt *sb_op_rt(sb_op *op) { return op->rt; }

int sb_op_park(lua_State *L, sb_op *op)
{
    sb_task *t = op->task;
    assert(t == op->rt->current && t->op == NULL);
    if (!lua_isyieldable(L)) {
        op_discard(op);
        return luaL_error(L, "cannot wait for I/O here: the call is inside a C boundary "
                             "(a metamethod, an iterator or a callback such as table.sort's); "
                             "move the I/O out of it");
    }
    t->op = op;
    op->parked = 1;
    if (op->external)
        op->rt->nexternal++;
    lua_pushlightuserdata(L, &park_marker);
    return lua_yield(L, 1);
}

void sb_op_done(sb_op *op)
{
    if (op->done)
        return;
    op->done = 1;
    /* A task still running (the op finished before it parked) is queued by
     * resume_task once it yields. */
    if (op->task->state == T_PARKED)
        ready_push(op->rt, op->task);
}

/* Tear down an op whose results will never be delivered. */
static void op_discard(sb_op *op)
{
    if (op->cancel)
        op->cancel(op->data);
    if (op->external && op->parked)
        op->rt->nexternal--;
    free(op);
}

double sb_deadline(lua_State *L)
{
    sibyl_rt *rt = sb_rt(L);
    return rt->current ? rt->current->deadline : 0;
}

/* ---------------------------------------------------------------- helpers */

static sb_task *check_task(lua_State *L, int idx)
{
    return sb_checkudata(L, idx, &task_mt_key, "sibyl.task");
}

static void push_task(lua_State *L, sb_task *t)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->self_ref);
}

/* Did the finished task fail? Raised, cancelled, or returned nil, err. */
static int task_failed(sb_task *t)
{
    if (t->result != R_OK)
        return 1;
    lua_State *co = t->co;
    return lua_gettop(co) >= 2 && lua_isnil(co, 1) && !lua_isnil(co, 2);
}

/* Push the task's outcome onto L: its results, or nil, err. Returns count. */
static int push_outcome(lua_State *L, sb_task *t)
{
    assert(t->state == T_DONE);
    lua_State *co = t->co;
    int n = lua_gettop(co);
    if (t->result != R_OK) {
        t->observed = 1;
        lua_pushnil(L);
        lua_pushvalue(co, 1);
        lua_xmove(co, L, 1);
        return 2;
    }
    luaL_checkstack(L, n + 2, "too many results");
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(co, i);
        lua_xmove(co, L, 1);
    }
    return n;
}

/* Push the error object of a failed task (its err for nil, err returns). */
static void push_failure(lua_State *L, sb_task *t)
{
    t->observed = 1;
    lua_pushvalue(t->co, t->result == R_OK ? 2 : 1);
    lua_xmove(t->co, L, 1);
}

/* ------------------------------------------------------------------ links */

static void link_add(lua_State *L, sb_link *l, sb_task *target, sb_op *op, int kind, int index)
{
    l->target = target;
    l->op = op;
    l->kind = kind;
    l->index = index;
    push_task(L, target);
    l->target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    l->prev = NULL;
    l->next = target->waiters;
    if (target->waiters)
        target->waiters->prev = l;
    target->waiters = l;
}

static void link_unlink(sb_link *l)
{
    if (l->target == NULL)
        return;
    if (l->prev)
        l->prev->next = l->next;
    else
        l->target->waiters = l->next;
    if (l->next)
        l->next->prev = l->prev;
    l->next = l->prev = NULL;
    l->target = NULL;
}

static void link_release(lua_State *L, sb_link *l)
{
    link_unlink(l);
    luaL_unref(L, LUA_REGISTRYINDEX, l->target_ref);
    l->target_ref = LUA_NOREF;
}

typedef struct {
    sb_link link;
    sb_task *target;
} wait_data;

typedef struct {
    int n, remaining, all, failed;  /* failed: index of the first failure */
    sb_task **targets;
    sb_link links[];
} gather_data;

static void fire_waiters(sb_task *t)
{
    sb_link *l;
    while ((l = t->waiters) != NULL) {
        link_unlink(l);
        if (l->kind == LINK_WAIT) {
            sb_op_done(l->op);
            continue;
        }
        gather_data *g = sb_op_data(l->op);
        g->remaining--;
        if (!g->all && !g->failed && task_failed(t))
            g->failed = l->index;
        if (g->remaining == 0 || g->failed)
            sb_op_done(l->op);
    }
}

/* -------------------------------------------------------------- lifecycle */

static sb_task *task_new(lua_State *L, sibyl_rt *rt)
{
    sb_task *t = lua_newuserdata(L, sizeof *t);
    memset(t, 0, sizeof *t);
    sb_getmeta(L, &task_mt_key);
    lua_setmetatable(L, -2);
    t->rt = rt;
    t->id = ++rt->next_task_id;
    t->co_ref = t->self_ref = LUA_NOREF;
    return t;
}

sb_task *sb_spawn(lua_State *L, int nargs)
{
    sibyl_rt *rt = sb_rt(L);
    int fidx = lua_gettop(L) - nargs;
    luaL_checktype(L, fidx, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    sb_task *t = task_new(L, rt);
    t->co = co;
    lua_pushvalue(L, -2);
    t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    /* stack: fn args... thread task -> move fn+args to the coroutine */
    lua_insert(L, fidx);          /* task fn args... thread */
    lua_pop(L, 1);                /* task fn args... */
    lua_xmove(L, co, nargs + 1);  /* task */
    t->nargs = nargs;
    if (rt->current)
        t->deadline = rt->current->deadline;
    rt->ntasks++;
    ready_push(rt, t);
    return t;
}

void sb_task_on_done(sb_task *t, sb_task_done_fn fn, void *ud)
{
    t->on_done = fn;
    t->on_done_ud = ud;
}

int sb_task_status(sb_task *t)
{
    if (t->state != T_DONE)
        return SB_TASK_LIVE;
    return t->result == R_OK ? SB_TASK_OK : t->result == R_ERROR ? SB_TASK_ERROR : SB_TASK_CANCELLED;
}

void sb_task_push_error(lua_State *L, sb_task *t)
{
    push_failure(L, t);
}

static void unobserved_add(sibyl_rt *rt, sb_task *t)
{
    t->unobs_prev = NULL;
    t->unobs_next = rt->unobserved;
    if (rt->unobserved)
        rt->unobserved->unobs_prev = t;
    rt->unobserved = t;
}

static void unobserved_remove(sibyl_rt *rt, sb_task *t)
{
    if (t->unobs_prev)
        t->unobs_prev->unobs_next = t->unobs_next;
    else if (rt->unobserved == t)
        rt->unobserved = t->unobs_next;
    if (t->unobs_next)
        t->unobs_next->unobs_prev = t->unobs_prev;
    t->unobs_next = t->unobs_prev = NULL;
}

static void report_uncaught(sibyl_rt *rt, sb_task *t)
{
    lua_State *L = rt->L;
    unobserved_remove(rt, t);
    if (t->observed)
        return;
    t->observed = 1;
    rt->uncaught++;
    lua_pushvalue(t->co, 1);
    lua_xmove(t->co, L, 1);
    lua_getfield(L, -1, "traceback");
    const char *tb = lua_tostring(L, -1);
    if (tb == NULL) {
        lua_pop(L, 1);
        lua_getglobal(L, "tostring");
        lua_pushvalue(L, -2);
        lua_pcall(L, 1, 1, 0);
        tb = lua_tostring(L, -1);
    }
    fprintf(stderr, "sibyl: uncaught error in task #%llu (nobody waited for it):\n%s\n",
            (unsigned long long)t->id, tb ? tb : "(error object without message)");
    fflush(stderr);
    lua_pop(L, 2);
}

int sb_report_unobserved(sibyl_rt *rt)
{
    int n = 0;
    while (rt->unobserved) {
        report_uncaught(rt, rt->unobserved);
        n++;
    }
    return n;
}

/* Turn the error value on top of co into an error object at co[1]. */
static void make_task_error(sibyl_rt *rt, sb_task *t)
{
    lua_State *L = rt->L, *co = t->co;
    lua_xmove(co, L, 1);                        /* the error value */
    int errv = lua_gettop(L);
    const char *msg = lua_tostring(L, errv);
    if (!sb_iserror(L, errv)) {
        if (msg == NULL && luaL_callmeta(L, errv, "__tostring")) {
            lua_replace(L, errv);
            msg = lua_tostring(L, errv);
        }
        if (msg == NULL)
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, errv));
        luaL_traceback(L, co, msg, 0);
        sb_pusherror(L, "error", "%s", msg);
        lua_insert(L, -2);
        lua_setfield(L, -2, "traceback");
    } else {
        lua_pushvalue(L, errv);
        lua_getfield(L, -1, "traceback");
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_getglobal(L, "tostring");
            lua_pushvalue(L, errv);
            lua_pcall(L, 1, 1, 0);
            luaL_traceback(L, co, lua_tostring(L, -1), 0);
            lua_remove(L, -2);
            lua_setfield(L, -2, "traceback");
        } else {
            lua_pop(L, 1);
        }
    }
    lua_settop(co, 0);
    lua_xmove(L, co, 1);
    lua_settop(L, errv - 1);
}

static void task_finish(sb_task *t, int result)
{
    sibyl_rt *rt = t->rt;
    lua_State *L = rt->L;
    assert(t->state != T_DONE && t->op == NULL);
    t->state = T_DONE;
    t->result = result;
    if (t->deadline_ev)
        event_del(t->deadline_ev);
    if (result == R_CANCELLED) {
        t->observed = 1;  /* the canceller knows */
        lua_settop(t->co, 0);
        sb_pusherror(t->co, "cancelled", "task #%llu was cancelled", (unsigned long long)t->id);
    }
    rt->ntasks--;
    if (t->on_done) {
        t->on_done(t, t->on_done_ud);
        t->observed = 1;
    }
    if (result == R_ERROR && !t->observed && t->waiters == NULL)
        unobserved_add(rt, t);
    fire_waiters(t);
    luaL_unref(L, LUA_REGISTRYINDEX, t->self_ref);
    t->self_ref = LUA_NOREF;
}

/* Kill a task that is not running. */
static void task_kill(sb_task *t)
{
    sibyl_rt *rt = t->rt;
    if (t->state == T_DONE)
        return;
    assert(t->state != T_RUNNING);
    if (t->state == T_READY)
        ready_remove(rt, t);
    if (t->op) {
        sb_op *op = t->op;
        t->op = NULL;
        op_discard(op);
    }
    task_finish(t, R_CANCELLED);
}

void sb_task_cancel(sb_task *t)
{
    if (t->state == T_RUNNING)
        t->kill = 1;
    else
        task_kill(t);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_task *t = arg;
    SB_UNUSED(fd);
    SB_UNUSED(what);
    if (t->state != T_PARKED || t->op == NULL || t->op->done)
        return;
    sb_op *op = t->op;
    t->op = NULL;
    op_discard(op);
    t->wake = WAKE_TIMEOUT;
    ready_push(t->rt, t);
}

static void arm_deadline(sb_task *t)
{
    double left = t->deadline - sb_now();
    if (left <= 0) {
        deadline_cb(-1, 0, t);
        return;
    }
    if (t->deadline_ev == NULL)
        t->deadline_ev = evtimer_new(t->rt->base, deadline_cb, t);
    struct timeval tv;
    tv.tv_sec = (time_t)left;
    tv.tv_usec = (suseconds_t)((left - (double)tv.tv_sec) * 1e6) + 1;
    evtimer_add(t->deadline_ev, &tv);
}

/* ------------------------------------------------------------- scheduler */

static void resume_task(sibyl_rt *rt, sb_task *t)
{
    lua_State *co = t->co;
    int nargs;
    if (t->op) {
        sb_op *op = t->op;
        t->op = NULL;
        lua_settop(co, 0);
        nargs = op->push ? op->push(co, op->data) : 0;
        if (op->external)
            rt->nexternal--;
        free(op);
    } else if (t->wake == WAKE_TIMEOUT) {
        t->wake = WAKE_NORMAL;
        lua_settop(co, 0);
        nargs = sb_fail(co, "timeout", "deadline exceeded");
    } else {
        nargs = t->nargs;
        t->nargs = 0;
    }
    if (t->deadline_ev)
        event_del(t->deadline_ev);

    t->state = T_RUNNING;
    rt->current = t;
    int status = lua_resume(co, nargs);
    rt->current = NULL;

    if (status == 0) {
        task_finish(t, R_OK);
    } else if (status == LUA_YIELD) {
        lua_settop(co, 0);
        if (t->kill) {
            if (t->op) {
                sb_op *op = t->op;
                t->op = NULL;
                op_discard(op);
            }
            task_finish(t, R_CANCELLED);
        } else if (t->op == NULL) {
            ready_push(rt, t);          /* sibyl.yield() or coroutine.yield() */
        } else {
            t->state = T_PARKED;
            if (t->op->done)
                ready_push(rt, t);
            else if (t->deadline > 0)
                arm_deadline(t);
        }
    } else {
        if (t->op) {                    /* raised after sb_op_new+park? never */
            sb_op *op = t->op;
            t->op = NULL;
            op_discard(op);
        }
        make_task_error(rt, t);
        task_finish(t, t->kill ? R_CANCELLED : R_ERROR);
    }
}

static void ready_cb(evutil_socket_t fd, short what, void *arg)
{
    sibyl_rt *rt = arg;
    SB_UNUSED(fd);
    SB_UNUSED(what);
    /* Run what was queued when we started; tasks queued meanwhile wait for
     * the next pass, so I/O callbacks interleave with busy tasks. */
    size_t n = rt->nready;
    while (n-- > 0 && rt->ready_head) {
        sb_task *t = rt->ready_head;
        ready_remove(rt, t);
        resume_task(rt, t);
    }
    if (rt->nready > 0)
        event_active(rt->ready_ev, EV_TIMEOUT, 0);
}

int sb_sched_init(sibyl_rt *rt)
{
    rt->ready_ev = event_new(rt->base, -1, 0, ready_cb, rt);
    return rt->ready_ev ? 0 : -1;
}

void sb_sched_free(sibyl_rt *rt)
{
    if (rt->ready_ev)
        event_free(rt->ready_ev);
    rt->ready_ev = NULL;
}

/* ------------------------------------------------------------- Lua: task */

static int l_task_gc(lua_State *L)
{
    sb_task *t = lua_touserdata(L, 1);
    sibyl_rt *rt = t->rt;
    if (t->state != T_DONE) {
        /* Only reachable when the whole state closes: tear down quietly. */
        if (t->state == T_READY)
            ready_remove(rt, t);
        if (t->op) {
            sb_op *op = t->op;
            t->op = NULL;
            op_discard(op);
        }
        t->state = T_DONE;
        rt->ntasks--;
    } else if (t->unobs_next || t->unobs_prev || rt->unobserved == t) {
        report_uncaught(rt, t);
    }
    /* Waiters still linked to us (only at close) must not see a dangling target. */
    while (t->waiters)
        link_unlink(t->waiters);
    if (t->deadline_ev) {
        event_free(t->deadline_ev);
        t->deadline_ev = NULL;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, t->co_ref);
    t->co_ref = LUA_NOREF;
    return 0;
}

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
    sb_task *t = check_task(L, 1);
    lua_pushfstring(L, "sibyl.task #%d (%s)", (int)t->id, state_name(t));
    return 1;
}

static int l_task_status(lua_State *L)
{
    lua_pushstring(L, state_name(check_task(L, 1)));
    return 1;
}

static int l_task_done(lua_State *L)
{
    lua_pushboolean(L, check_task(L, 1)->state == T_DONE);
    return 1;
}

static int l_task_id(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)check_task(L, 1)->id);
    return 1;
}

static int l_task_cancel(lua_State *L)
{
    sb_task *t = check_task(L, 1);
    if (t->state == T_DONE) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (t->state == T_RUNNING) {
        /* Cancelling ourselves: stop right here. */
        t->kill = 1;
        lua_pushlightuserdata(L, &park_marker);
        return lua_yield(L, 1);
    }
    task_kill(t);
    lua_pushboolean(L, 1);
    return 1;
}

static int push_wait(lua_State *co, void *data)
{
    wait_data *w = data;
    int n = push_outcome(co, w->target);
    link_release(co, &w->link);
    return n;
}

static void cancel_wait(void *data)
{
    wait_data *w = data;
    sb_op *op = sb_op_from_data(data);
    link_release(op->rt->L, &w->link);
}

static int l_task_wait(lua_State *L)
{
    sb_task *t = check_task(L, 1);
    sibyl_rt *rt = t->rt;
    if (t->state == T_DONE)
        return push_outcome(L, t);
    if (rt->current == t)
        luaL_error(L, "a task cannot wait for itself");
    sb_op *op = sb_op_new_internal(L, sizeof(wait_data), push_wait, cancel_wait);
    wait_data *w = sb_op_data(op);
    w->target = t;
    link_add(L, &w->link, t, op, LINK_WAIT, 0);
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
    push_task(L, rt->current);
    return 1;
}

static int l_yield(lua_State *L)
{
    sibyl_rt *rt = sb_rt(L);
    if (rt->current == NULL)
        return luaL_error(L, "sibyl.yield() must be called from inside a task");
    lua_pushlightuserdata(L, &park_marker);
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
    evtimer_add(&s->ev, &tv);
    return sb_op_park(L, op);
}

/* gather */

/* Push gather's results from the targets. */
static int push_gather_result(lua_State *L, sb_task **ts, int n, int all, int failed)
{
    if (failed) {
        lua_pushnil(L);
        push_failure(L, ts[failed - 1]);
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
        if (task_failed(t)) {
            if (!all)
                continue;
            if (nerr++ == 0) {
                lua_newtable(L);
                lua_replace(L, errors);
            }
            push_failure(L, t);
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
        link_release(co, &g->links[i]);
    free(g->targets);
    return n;
}

static void cancel_gather(void *data)
{
    gather_data *g = data;
    lua_State *L = sb_op_from_data(data)->rt->L;
    for (int i = 0; i < g->n; i++)
        link_release(L, &g->links[i]);
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
    /* Resolve entries: spawn functions, check tasks. Keep handles in a table
     * at index 3 so they stay alive while we work. */
    lua_settop(L, 2);
    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        if (lua_isfunction(L, -1)) {
            sb_spawn(L, 0);
        } else if (sb_testudata(L, -1, &task_mt_key) == NULL) {
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
        else if (!all && !failed && task_failed(t))
            failed = i;
    }
    if (remaining == 0 || failed) {
        int r = push_gather_result(L, ts, n, all, failed);
        free(ts);
        return r;
    }
    if (sb_rt(L)->current == NULL) {
        free(ts);
        return luaL_error(L, "sibyl.gather must be called from inside a task");
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
            link_add(L, &g->links[i], ts[i], op, LINK_GATHER, i + 1);
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
    {"__gc", l_task_gc},
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
    {"time_left", l_get_deadline},
    {NULL, NULL}
};

/* Fill the table on top of the stack with the scheduler's functions. */
void sb_sched_register(lua_State *L)
{
    sb_newmeta(L, &task_mt_key, "sibyl.task");
    luaL_setfuncs(L, task_methods, 0);
    lua_pop(L, 1);
    luaL_setfuncs(L, core_funcs, 0);
    lua_pushlightuserdata(L, &park_marker);
    lua_setfield(L, -2, "_marker");
}
