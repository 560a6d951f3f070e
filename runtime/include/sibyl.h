/*
 * sibyl.h -- the public embedding API of the Sibyl agent runtime.
 *
 * This is the only header a host includes. A runtime is one lua_State (LuaJIT)
 * plus one libevent event_base plus a scheduler of coroutine tasks; it lives
 * on one thread. Several runtimes may live in one process, one per thread;
 * they share nothing.
 *
 * Two ways to drive a runtime:
 *   - sibyl_run(rt) blocks until every task has ended (a CLI);
 *   - sibyl_poll(rt, budget_us) runs ready work and returns within the budget
 *     (a game or app engine that owns the frame loop).
 *
 * Minimal host:
 *
 *     sibyl_rt *rt = sibyl_new();
 *     if (sibyl_dostring(rt, "print(require('sibyl').now())", "=host") != SIBYL_OK)
 *         fprintf(stderr, "%s\n", sibyl_error(rt));
 *     sibyl_close(rt);
 *
 * A stock LuaJIT (or LOVE) can instead `require "sibyl"` (luaopen_sibyl) and
 * call sibyl.poll(budget) or sibyl.run(fn) itself.
 */
#ifndef SIBYL_H
#define SIBYL_H

#ifdef __cplusplus
extern "C" {
#endif

#define SIBYL_VERSION_MAJOR 0
#define SIBYL_VERSION_MINOR 1
#define SIBYL_VERSION_PATCH 0
#define SIBYL_VERSION "0.1.0"

struct lua_State;
struct event_base;

/* An opaque runtime. */
typedef struct sibyl_rt sibyl_rt;

/* Status codes returned by the functions below. */
enum {
    SIBYL_OK = 0,       /* success */
    SIBYL_ERROR = 1,    /* a Lua error: the message is in sibyl_error() */
    SIBYL_ESYNTAX = 2,  /* the chunk did not compile */
    SIBYL_EFILE = 3,    /* the file could not be read */
    SIBYL_EMEM = 4      /* out of memory */
};

/* Create a runtime with its own lua_State and event_base. Returns NULL when
 * out of memory. The standard Lua libraries and `sibyl` are loaded. */
sibyl_rt *sibyl_new(void);

/* Create a runtime on the host's event_base (not freed by sibyl_close). */
sibyl_rt *sibyl_new_with_base(struct event_base *base);

/* Cancel every task, free the runtime and its lua_State. NULL is a no-op. */
void sibyl_close(sibyl_rt *rt);

/* The runtime's main lua_State. Touch it only on the runtime's thread and
 * never from inside a Sibyl callback. */
struct lua_State *sibyl_state(sibyl_rt *rt);

/* The runtime's event_base. */
struct event_base *sibyl_base(sibyl_rt *rt);

/* Compile a chunk, run it as a task and drive the loop until that task ends
 * (tasks it spawned keep running). `name` is the chunk name ("=host", "@f").
 * Returns SIBYL_OK or an error code; the message (with a traceback for
 * runtime errors) is then in sibyl_error(). */
int sibyl_dostring(sibyl_rt *rt, const char *code, const char *name);

/* Like sibyl_dostring for a file; "-" reads standard input. */
int sibyl_dofile(sibyl_rt *rt, const char *path);

/* Drive the loop until every task has ended. Returns SIBYL_OK, or
 * SIBYL_ERROR when a task failed and nobody retrieved its error (it was
 * reported on stderr) or when the remaining tasks can never make progress. */
int sibyl_run(sibyl_rt *rt);

/* Run ready tasks and I/O callbacks without blocking, for about budget_us
 * microseconds at most (at least one pass). Returns the number of live
 * tasks, so a host can tell whether work remains. */
int sibyl_poll(sibyl_rt *rt, long budget_us);

/* The last error message, or "" when there was none. Valid until the next
 * call into the runtime. */
const char *sibyl_error(sibyl_rt *rt);

/* Opens the `sibyl` Lua module in a state the host created (stock LuaJIT's
 * `require "sibyl"`). Creates and attaches a runtime on first use; it is
 * freed with the state. */
int luaopen_sibyl(struct lua_State *L);

#ifdef __cplusplus
}
#endif

#endif /* SIBYL_H */
