/*
 * sched.c -- the scheduler engine: coroutine tasks, the ready queue, ops
 * (the async-primitive helper), cancellation, deadlines, error reporting.
 * task.c binds it to Lua (sibyl.spawn, task:wait, sibyl.sleep, gather...);
 * sched.lua adds deadline scopes and the coroutine wrappers.
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
#include "sb_sched.h"

char sb_task_mt_key;
char sb_park_marker;   /* yielded by primitives; sched.lua passes it up */

static void task_finish(sb_task *t, int result);
static void deadline_del(sb_task *t);
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
                             "(a C function calling back into Lua, such as table.sort's "
                             "comparator, string.gsub's replacement or a __gc); "
                             "move the I/O out of it");
    }
    t->op = op;
    op->parked = 1;
    if (op->external)
        op->rt->nexternal++;
    lua_pushlightuserdata(L, &sb_park_marker);
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

sb_task *sb_task_check(lua_State *L, int idx)
{
    return sb_checkudata(L, idx, &sb_task_mt_key, "sibyl.task");
}

void sb_task_push(lua_State *L, sb_task *t)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->self_ref);
}

/* Did the finished task fail? Raised, cancelled, or returned nil, err. */
int sb_task_failed(sb_task *t)
{
    if (t->result != R_OK)
        return 1;
    lua_State *co = t->co;
    return lua_gettop(co) >= 2 && lua_isnil(co, 1) && !lua_isnil(co, 2);
}

/* Push the task's outcome onto L: its results, or nil, err. Returns count. */
int sb_task_push_outcome(lua_State *L, sb_task *t)
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
    /* Never raise here: push functions run outside any protected call. */
    if (!lua_checkstack(L, n + 2))
        return sb_fail(L, "error", "task #%llu returned too many values (%d) to pass on",
                       (unsigned long long)t->id, n);
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(co, i);
        lua_xmove(co, L, 1);
    }
    return n;
}

/* Push the error object of a failed task (its err for nil, err returns). */
void sb_task_push_error(lua_State *L, sb_task *t)
{
    t->observed = 1;
    lua_pushvalue(t->co, t->result == R_OK ? 2 : 1);
    lua_xmove(t->co, L, 1);
}

/* ------------------------------------------------------------------ links */

void sb_link_add(lua_State *L, sb_link *l, sb_task *target, sb_op *op, int kind, int index)
{
    l->target = target;
    l->op = op;
    l->kind = kind;
    l->index = index;
    sb_task_push(L, target);
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

void sb_link_release(lua_State *L, sb_link *l)
{
    link_unlink(l);
    luaL_unref(L, LUA_REGISTRYINDEX, l->target_ref);
    l->target_ref = LUA_NOREF;
}

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
        if (!g->all && !g->failed && sb_task_failed(t))
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
    sb_getmeta(L, &sb_task_mt_key);
    lua_setmetatable(L, -2);
    t->rt = rt;
    t->id = ++rt->next_task_id;
    t->co_ref = t->self_ref = t->ctx_ref = LUA_NOREF;
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
    if (rt->current) {
        t->deadline = rt->current->deadline;
        if (rt->current->ctx_ref != LUA_NOREF) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, rt->current->ctx_ref);
            t->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        }
    }
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

/* Print the error of a failed task nobody waited for. Returns 1 when it
 * was reported, 0 when it turned out to be retrieved after all. */
static int report_uncaught(sibyl_rt *rt, sb_task *t)
{
    lua_State *L = rt->L;
    unobserved_remove(rt, t);
    if (t->observed)
        return 0;
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
    return 1;
}

int sb_report_unobserved(sibyl_rt *rt)
{
    int n = 0;
    while (rt->unobserved)
        n += report_uncaught(rt, rt->unobserved);
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
    deadline_del(t);
    luaL_unref(L, LUA_REGISTRYINDEX, t->ctx_ref);
    t->ctx_ref = LUA_NOREF;
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

/* Take a task that is not running off the ready queue and tear down the
 * op it waits on (or the completed one it was about to receive). */
static void detach(sb_task *t)
{
    assert(t->state != T_DONE);   /* RUNNING only when the state closes under a task */
    if (t->state == T_READY)
        ready_remove(t->rt, t);
    if (t->op) {
        sb_op *op = t->op;
        t->op = NULL;
        op_discard(op);
    }
}

/* Kill a task that is not running. */
void sb_task_kill(sb_task *t)
{
    if (t->state == T_DONE)
        return;
    detach(t);
    task_finish(t, R_CANCELLED);
}

void sb_task_cancel(sb_task *t)
{
    if (t->state == T_RUNNING)
        t->kill = 1;
    else
        sb_task_kill(t);
}

/* Deadline timers count as pending I/O (rt->ndeadlines): a task waiting
 * on an internal op (another task, a future) under a deadline will wake. */
static void deadline_del(sb_task *t)
{
    if (t->deadline_ev == NULL)
        return;
    if (evtimer_pending(t->deadline_ev, NULL))
        t->rt->ndeadlines--;
    event_del(t->deadline_ev);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_task *t = arg;
    SB_UNUSED(fd);
    if (what & EV_TIMEOUT)
        t->rt->ndeadlines--;        /* fired: no longer pending */
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
    event_base_update_cache_time(t->rt->base);
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
    if (!evtimer_pending(t->deadline_ev, NULL))
        t->rt->ndeadlines++;
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
    deadline_del(t);

    t->state = T_RUNNING;
    rt->current = t;
    int status = lua_resume(co, nargs);
    rt->current = NULL;

    if (status != LUA_YIELD && t->op) {
        /* The I/O's caller is gone: a coroutine resumed with a raw
         * resume (saved before the wrappers) swallowed the park. */
        sb_op *op = t->op;
        t->op = NULL;
        op_discard(op);
    }
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
    /* Leftovers run on the next loop iteration, after I/O has been polled:
     * a zero timer, not event_active (which would run again in this pass
     * and let a task that yields in a loop starve everything else). */
    if (rt->nready > 0) {
        static const struct timeval zero = {0, 0};
        evtimer_add(rt->ready_ev, &zero);
    }
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

/* __gc of task handles (task.c registers it). */
int sb_task_gc(lua_State *L)
{
    sb_task *t = lua_touserdata(L, 1);
    sibyl_rt *rt = t->rt;
    if (t->state != T_DONE) {
        /* Only reachable when the whole state closes: tear down quietly. */
        detach(t);
        t->state = T_DONE;
        rt->ntasks--;
    } else if (t->unobs_next || t->unobs_prev || rt->unobserved == t) {
        report_uncaught(rt, t);
    }
    /* Waiters still linked to us (only at close) must not see a dangling target. */
    while (t->waiters)
        link_unlink(t->waiters);
    if (t->deadline_ev) {
        deadline_del(t);
        event_free(t->deadline_ev);
        t->deadline_ev = NULL;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, t->co_ref);
    t->co_ref = LUA_NOREF;
    luaL_unref(L, LUA_REGISTRYINDEX, t->ctx_ref);
    t->ctx_ref = LUA_NOREF;
    return 0;
}
