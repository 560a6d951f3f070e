/*
 * sb_sched.h -- scheduler internals shared by sched.c (the engine) and task.c
 * (its Lua bindings). Not for other modules: they use the op API in sb.h.
 */
#ifndef SB_SCHED_H
#define SB_SCHED_H

#include "sb.h"

extern char sb_task_mt_key;     /* metatable of task handles */
extern char sb_park_marker;     /* what a parking primitive yields */

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
    int ctx_ref;                /* sibyl.context() value, inherited by spawned tasks */
    struct event *deadline_ev;  /* created on first use */
    sb_link *waiters;
    sb_task_done_fn on_done;
    void *on_done_ud;
};

typedef struct {
    sb_link link;
    sb_task *target;
} wait_data;

typedef struct {
    int n, remaining, all, failed;  /* failed: index of the first failure */
    sb_task **targets;
    sb_link links[];
} gather_data;


/* The task handle at idx (raises otherwise); push a live task's handle. */
sb_task *sb_task_check(lua_State *L, int idx);
void sb_task_push(lua_State *L, sb_task *t);

/* Did the finished task fail (raised, cancelled, or returned nil, err)? */
int sb_task_failed(sb_task *t);
/* Push a finished task's results, or nil, err; returns the count. */
int sb_task_push_outcome(lua_State *L, sb_task *t);

/* Link a waiting op to target (pins target); release unlinks and unpins. */
void sb_link_add(lua_State *L, sb_link *l, sb_task *target, sb_op *op, int kind, int index);
void sb_link_release(lua_State *L, sb_link *l);

/* Kill a task that is not running; its waiters get kind "cancelled". */
void sb_task_kill(sb_task *t);
int sb_task_gc(lua_State *L);

#endif /* SB_SCHED_H */
