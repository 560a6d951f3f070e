/*
 * sb.h -- Sibyl's internal C API, shared by the runtime's modules.
 *
 * Not installed, not for hosts (they include sibyl.h). Everything here is
 * loop-thread only unless a comment says otherwise.
 *
 * The async shape every I/O primitive follows (see sched.c):
 *
 *     static int l_sleep(lua_State *L) {
 *         double s = luaL_checknumber(L, 1);          -- raise on misuse
 *         sb_op *op = sb_op_new(L, sizeof(struct ev_sleep), push_fn, cancel_fn);
 *         ...start the operation; its callback calls sb_op_done(op)...
 *         return sb_op_park(L, op);                   -- yields the task
 *     }
 *
 * The callback never touches Lua: it stores results in the op's data and
 * calls sb_op_done(). The scheduler later calls push_fn(co, data) on the
 * task's coroutine and resumes it with what push_fn pushed. If the task is
 * cancelled or its deadline expires first, cancel_fn(data) is called instead
 * (exactly once, and push_fn never), and the task gets nil, err.
 *
 * cancel_fn must handle both states an op can be in when its task dies:
 * still pending (stop the work; make sure no callback fires afterwards) and
 * completed but not yet delivered (free the results push_fn would have
 * consumed). push_fn must not raise: it runs outside any protected call.
 * Allocate the op after checking arguments, since sb_op_new can raise and an
 * op that was never parked must be freed with sb_op_abort.
 */
#ifndef SB_H
#define SB_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <lauxlib.h>
#include <event2/event.h>

#include "sibyl.h"

#define SB_UNUSED(x) ((void)(x))

typedef struct sb_task sb_task;
typedef struct sb_op sb_op;
typedef struct sb_pool sb_pool;

/* ---------------------------------------------------------------- errors */

/*
 * Push an error object: a table {kind=, message=} with the shared error
 * metatable (its __tostring gives "kind: message"). Returns 1.
 */
int sb_pusherror(lua_State *L, const char *kind, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Push nil, err and return 2: the one way C functions report expected failures. */
int sb_fail(lua_State *L, const char *kind, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Push the shared error metatable (created on first use). */
void sb_push_error_mt(lua_State *L);

/* True when the value at idx is a table carrying the error metatable. */
int sb_iserror(lua_State *L, int idx);

/* Set t[k] = v (string) on the table at the top of the stack. */
void sb_setfield_str(lua_State *L, const char *k, const char *v);

/* ------------------------------------------------------------- userdata */

/*
 * Metatables are keyed by the address of a static char (STYLE.md, point 8).
 * sb_newmeta creates (or fetches) the metatable for key, sets __name = name
 * and __index = itself, and leaves it on the stack.
 */
int sb_newmeta(lua_State *L, const void *key, const char *name);
void sb_getmeta(lua_State *L, const void *key);
void *sb_checkudata(lua_State *L, int idx, const void *key, const char *name);
void *sb_testudata(lua_State *L, int idx, const void *key);

/* Fields of an options table at index t: the default when absent (nil);
 * a value of the wrong type raises ("bad argument"). */
const char *sb_opt_str(lua_State *L, int t, const char *k, const char *def);
double sb_opt_num(lua_State *L, int t, const char *k, double def);
int sb_opt_bool(lua_State *L, int t, const char *k, int def);

/* A large 64-byte aligned array; from huge_from bytes on, on transparent
 * huge pages (util.c). Free with free(). */
void *sb_alloc_big(size_t bytes, size_t huge_from);

/* ---------------------------------------------------------------- runtime */

struct sibyl_rt {
    lua_State *L;               /* main state */
    struct event_base *base;
    int own_base;               /* we created base and free it */
    int own_state;              /* we created L (sibyl_new) */

    sb_task *ready_head, *ready_tail;
    size_t nready;
    struct event *ready_ev;     /* made active when the ready queue fills */

    sb_task *current;           /* task being resumed, or NULL */
    size_t ntasks;              /* live (not finished) tasks */
    size_t nexternal;           /* ops waiting on something outside Lua */
    size_t keepalive;           /* long-lived objects that keep sibyl_run going */
    size_t ndeadlines;          /* armed deadline timers (sched.c) */
    uint64_t next_task_id;

    sb_task *unobserved;        /* failed tasks whose error nobody retrieved yet */
    int uncaught;               /* count of errors reported as uncaught */

    sb_pool *pool;              /* created lazily */
    int nworkers;               /* pool size knob (SIBYL_WORKERS), 0 = default */

    struct sb_http *http;       /* http_client.c state, created on first use */

    struct { void (*fn)(void *); void *ud; } on_close[8];
    int non_close;

    char errbuf[4096];          /* last error for sibyl_error() */
    int closing;
};

/* Fetch the runtime attached to L (any thread of the state). Never NULL in
 * a state opened by sibyl_new or luaopen_sibyl. */
sibyl_rt *sb_rt(lua_State *L);

/* Monotonic clock, seconds. */
double sb_now(void);

/* Run fn(ud) when the runtime closes: after every task has been torn down,
 * before the worker pool and the event_base go (last registered, first
 * run). For module-wide state such as the HTTP client's multi handle.
 * Returns -1 when the (small, fixed) table is full. */
int sb_rt_on_close(sibyl_rt *rt, void (*fn)(void *), void *ud);

/* Keep sibyl_run() going while a long-lived object (a server) exists. */
void sb_rt_hold(sibyl_rt *rt);
void sb_rt_release(sibyl_rt *rt);

/* ------------------------------------------------------------------ tasks */

typedef int (*sb_push_fn)(lua_State *co, void *data);
typedef void (*sb_cancel_fn)(void *data);

/*
 * Allocate an op for the task running in L, with `size` bytes of zeroed
 * module data (sb_op_data). Raises if L is not inside a task ("I/O needs a
 * task: ..."). `cancel` may be NULL when there is nothing to tear down.
 * `external` ops (timers, sockets, worker jobs) count towards keeping
 * sibyl_run alive; internal ones (waiting on another task) do not.
 */
sb_op *sb_op_new(lua_State *L, size_t size, sb_push_fn push, sb_cancel_fn cancel);
sb_op *sb_op_new_internal(lua_State *L, size_t size, sb_push_fn push, sb_cancel_fn cancel);
void *sb_op_data(sb_op *op);
/* Free an op that was never parked (a primitive that failed to start). */
void sb_op_abort(sb_op *op);
sb_op *sb_op_from_data(void *data);
sibyl_rt *sb_op_rt(sb_op *op);

/* Park the running task on op and yield. Use as `return sb_op_park(L, op);`. */
int sb_op_park(lua_State *L, sb_op *op);

/* Complete the op (from a libevent/pool callback, never from Lua): the
 * task is queued and push() will run on the loop thread. Idempotent. */
void sb_op_done(sb_op *op);

/* The deadline (absolute sb_now() seconds) in force for the task running in
 * L, or 0 for none. Primitives with their own timeout take the minimum. */
double sb_deadline(lua_State *L);

/* Tasks, for the runtime's own C code (rt.c, the CLI's REPL). */
typedef void (*sb_task_done_fn)(sb_task *t, void *ud);
enum { SB_TASK_LIVE, SB_TASK_OK, SB_TASK_ERROR, SB_TASK_CANCELLED };

/* Spawn a task running the function below nargs arguments on top of L;
 * pops them and pushes the task handle. */
sb_task *sb_spawn(lua_State *L, int nargs);
void sb_task_on_done(sb_task *t, sb_task_done_fn fn, void *ud);
void sb_task_cancel(sb_task *t);
int sb_task_status(sb_task *t);
/* Push the error object of a failed or cancelled task. */
void sb_task_push_error(lua_State *L, sb_task *t);
/* Report failed tasks whose error nobody retrieved; returns how many. */
int sb_report_unobserved(sibyl_rt *rt);

/* Run the function below nargs arguments on top of rt->L as a task and
 * drive the loop until it ends (rt.c). Returns SIBYL_OK or SIBYL_ERROR with
 * the message in rt->errbuf. */
int sb_run_chunk(sibyl_rt *rt, int nargs);

int sb_sched_init(sibyl_rt *rt);
void sb_sched_free(sibyl_rt *rt);
void sb_sched_register(lua_State *L);
void sb_future_register(lua_State *L);   /* future.c: sibyl.future */

/* ------------------------------------------------------------ worker pool */

/*
 * Run work(arg) on a worker thread, then done(arg) on the loop thread.
 * work must not touch Lua. done is always called exactly once (also when
 * the runtime closes, after work finished). Returns 0 or -1 (ENOMEM).
 */
int sb_pool_submit(sibyl_rt *rt, void (*work)(void *arg), void (*done)(void *arg), void *arg);
void sb_pool_free(sibyl_rt *rt);

/* ---------------------------------------------------------------- modules */

int luaopen_sibyl_core(lua_State *L);   /* sched.c: the `sibyl` table */
int luaopen_sibyl_yaml(lua_State *L);   /* yaml.c */
int luaopen_sibyl_fs(lua_State *L);     /* fs.c */
int luaopen_sibyl_sse(lua_State *L);    /* sse.c */
int luaopen_sibyl_cache_core(lua_State *L);   /* cache.c */
int luaopen_sibyl_sanitize_core(lua_State *L); /* sanitize.c */
int luaopen_sibyl_keys_core(lua_State *L); /* keys.c */
int luaopen_sibyl_http_core(lua_State *L); /* http_client.c */
int luaopen_sibyl_server_core(lua_State *L); /* http_server.c */
int luaopen_sibyl_redis_core(lua_State *L); /* redis.c */
int luaopen_sibyl_sqlite_core(lua_State *L); /* sqlite.c */
int luaopen_sibyl_vec_core(lua_State *L); /* vec.c */
int luaopen_sibyl_process(lua_State *L); /* process.c */
int luaopen_cjson(lua_State *L);        /* lua-cjson */

/* Register the built-in C modules in package.preload and the embedded
 * stdlib searcher (rt.c). */
void sb_open_modules(lua_State *L);

#endif /* SB_H */
