/*
 * sqlite_queue.c -- the per-connection job queue of `sibyl.sqlite`: running
 * jobs on the worker pool one at a time, the transaction lock, cancellation
 * and the lifetimes of connections and cursors. No Lua values here: the
 * binding (sqlite.c) converts arguments into jobs and pushes their results;
 * the worker half is sqlite_engine.c.
 *
 * Scheduling. Each connection runs one job at a time: a query submitted
 * while another is on a worker waits in the connection's FIFO queue. A job
 * is converted from Lua on the loop thread (SQL and parameters copied),
 * runs on a worker, and its results are pushed to Lua on the loop thread.
 * Transactions lock the connection to their task: while one is open, jobs
 * from other tasks wait in a `blocked` list until it ends. A lock whose
 * task died (cancelled mid-transaction) is found by a timer that polls the
 * owner while others wait, and by the next job from another task; the
 * transaction is then rolled back.
 *
 * Cancellation. A queued job is dropped. A running job is abandoned (its
 * results are freed when it finishes) and stopped early: a lock wait gives
 * up, and the statement is interrupted with sqlite3_interrupt() -- unless a
 * db:each() cursor on the same connection is open, because an interrupt
 * would also end that cursor's statement. Commit/rollback jobs are never
 * dropped: they run even when their task goes, so a lock is always released.
 *
 * Lifetimes. A connection (sq_conn) is reference-counted: by its db
 * userdata (until close or __gc), by each job and by each cursor. Closing
 * fails the jobs still waiting with kind "closed", lets the running one
 * finish, then closes the SQLite handle on a worker (a J_CLOSE job).
 * Cursors are reference-counted by their userdata and by their jobs. Once
 * the runtime closes (no workers left), jobs run on the loop thread.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb.h"
#include "sb_sqlite.h"

#define TX_POLL_SECS 0.05               /* how often waiters check a lock's owner */

static void arm_timer(sq_conn *c, double secs);

/* ================================================================ lists */

static void list_push(sq_list *l, sq_job *j, int front)
{
    assert(j->in == NULL);
    j->in = l;
    if (front) {
        j->prev = NULL;
        j->next = l->head;
        if (l->head)
            l->head->prev = j;
        else
            l->tail = j;
        l->head = j;
    } else {
        j->next = NULL;
        j->prev = l->tail;
        if (l->tail)
            l->tail->next = j;
        else
            l->head = j;
        l->tail = j;
    }
}

static void list_remove(sq_job *j)
{
    sq_list *l = j->in;
    assert(l != NULL);
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->prev = j->next = NULL;
    j->in = NULL;
}

/* ====================================================== connections, jobs */

void sb_sq_conn_ref(sq_conn *c) { c->refs++; }

void sb_sq_conn_unref(sq_conn *c)
{
    assert(c->refs > 0);
    if (--c->refs > 0)
        return;
    assert(c->eng.db == NULL && c->running == NULL && c->queue.head == NULL);
    if (c->tx_timer)
        event_free(c->tx_timer);
    free(c->path);
    free(c);
}

void sb_sq_cursor_unref(sq_cursor *cur)
{
    assert(cur->refs > 0);
    if (--cur->refs > 0)
        return;
    sq_conn *c = cur->c;
    if (cur->prev)
        cur->prev->next = cur->next;
    else
        c->cursors = cur->next;
    if (cur->next)
        cur->next->prev = cur->prev;
    free(cur->sql);
    sb_sq_params_free(&cur->params);
    free(cur);
    sb_sq_conn_unref(c);
}

sq_job *sb_sq_job_new(sq_conn *c, int kind, sb_op *op, void *task)
{
    sq_job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->kind = kind;
    j->c = c;
    j->op = op;
    j->task = task;
    j->tx_ref = LUA_NOREF;
    sb_sq_conn_ref(c);
    return j;
}

void sb_sq_job_free(sq_job *j)
{
    assert(j->in == NULL);
    sq_conn *c = j->c;
    if (j->tx_ref != LUA_NOREF && !c->rt->closing)
        luaL_unref(c->rt->L, LUA_REGISTRYINDEX, j->tx_ref);
    free(j->sql);
    sb_sq_params_free(&j->params);
    sb_sq_rows_free(&j->rows);
    sb_sq_err_clear(&j->err);
    if (j->cur)
        sb_sq_cursor_unref(j->cur);
    free(j);
    sb_sq_conn_unref(c);
}

/* An internal job (no task): commit/rollback bookkeeping, cursor release,
 * close. Returns NULL only when out of memory. */
sq_job *sb_sq_internal_job(sq_conn *c, int kind, const char *sql)
{
    sq_job *j = sb_sq_job_new(c, kind, NULL, NULL);
    if (j && sql && (j->sql = strdup(sql)) == NULL) {
        sb_sq_job_free(j);
        return NULL;
    }
    return j;
}

/* ===================================================== the transaction lock */

int sb_sq_active_cursors(sq_conn *c)
{
    int n = 0;
    for (sq_cursor *cur = c->cursors; cur; cur = cur->next)
        n += cur->live;
    return n;
}

/* Move the blocked jobs back through sb_sq_enqueue(), in order: the first
 * BEGIN among them takes the lock and the others block again. */
static void unblock(sq_conn *c)
{
    sq_list waiting = c->blocked;
    c->blocked.head = c->blocked.tail = NULL;
    for (sq_job *j = waiting.head; j; j = j->next)
        j->in = NULL;
    sq_job *j = waiting.head;
    while (j) {
        sq_job *next = j->next;
        j->prev = j->next = NULL;
        sb_sq_enqueue(c, j);
        j = next;
    }
}

static void release_lock(sq_conn *c)
{
    if (c->owner_ref != LUA_NOREF && !c->rt->closing)
        luaL_unref(c->rt->L, LUA_REGISTRYINDEX, c->owner_ref);
    c->owner_ref = LUA_NOREF;
    c->owner = NULL;
    c->depth = 0;
    c->gen++;
    unblock(c);
}

/* Step the lock back to `depth` levels (a BEGIN or SAVEPOINT that never
 * happened or was undone). */
static void lock_down_to(sq_conn *c, int depth)
{
    c->depth = depth > 0 ? depth : 0;
    if (c->depth == 0)
        release_lock(c);
}

/* The lock's task died without ending its transaction: roll it back
 * (before anything else runs) and let the others in. */
static void check_owner(sq_conn *c)
{
    if (c->depth == 0 || c->owner == NULL || c->rt->closing || c->closed)
        return;
    if (sb_task_status(c->owner) == SB_TASK_LIVE)
        return;
    sq_job *rb = sb_sq_internal_job(c, J_ROLLBACK_ALL, "ROLLBACK");
    if (rb) {
        list_push(&c->queue, rb, 1);
        rb->state = S_QUEUED;
    }
    release_lock(c);
}

static void tx_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    sq_conn *c = arg;
    SB_UNUSED(fd);
    SB_UNUSED(what);
    sb_sq_conn_ref(c);
    check_owner(c);
    if (c->blocked.head && c->depth > 0)
        arm_timer(c, TX_POLL_SECS);
    sb_sq_pump(c);
    sb_sq_conn_unref(c);
}

static void arm_timer(sq_conn *c, double secs)
{
    if (c->rt->closing || c->closed)
        return;
    if (c->tx_timer == NULL && (c->tx_timer = evtimer_new(c->rt->base, tx_timer_cb, c)) == NULL)
        return;
    struct timeval tv = {(time_t)secs, (suseconds_t)((secs - (double)(time_t)secs) * 1e6)};
    evtimer_add(c->tx_timer, &tv);
}

/* The lock is taken when a BEGIN is accepted into the queue, so jobs of
 * other tasks submitted after it wait, while jobs queued before it run
 * before the BEGIN does. */
static void take_lock(sq_conn *c, sq_job *j)
{
    if (c->depth == 0) {
        c->owner = j->task;
        c->owner_ref = j->tx_ref;
        j->tx_ref = LUA_NOREF;
        c->gen++;
    }
    c->depth++;
    j->depth = c->depth;
    j->gen = c->gen;
    char buf[64];
    if (j->depth == 1)
        snprintf(buf, sizeof buf, "BEGIN %s", j->mode);
    else
        snprintf(buf, sizeof buf, "SAVEPOINT sb_sp_%d", j->depth);
    j->sql = strdup(buf);   /* NULL (ENOMEM) is reported by the worker */
}

/* =============================================================== running */

void sb_sq_enqueue(sq_conn *c, sq_job *j)
{
    check_owner(c);
    if (c->depth > 0 && j->task != NULL && j->task != c->owner) {
        list_push(&c->blocked, j, 0);
        j->state = S_BLOCKED;
        arm_timer(c, TX_POLL_SECS);
        return;
    }
    if (j->kind == J_BEGIN)
        take_lock(c, j);
    list_push(&c->queue, j, 0);
    j->state = S_QUEUED;
}

static void run_statement(sq_job *j)
{
    sq_engine *e = &j->c->eng;
    int hit;
    sq_stmt *s = sb_sq_eng_prepare(e, j->sql, j->sql_len, &hit, &j->err);
    if (s == NULL)
        return;
    j->hit = hit;
    if (sb_sq_eng_bind(e, s, &j->params, &j->err) == SQLITE_OK) {
        int eof;
        if (j->kind == J_QUERY) {
            if (sb_sq_eng_step(e, s, &j->rows, j->limit + 1, 1, &eof, &j->err) == SQLITE_OK
                && j->rows.nrows > j->limit)
                j->err.too_large = 1;
        } else if (j->kind == J_ROW) {
            sb_sq_eng_step(e, s, &j->rows, 1, 1, &eof, &j->err);
        } else if (sb_sq_eng_step(e, s, &j->rows, 0, 0, &eof, &j->err) == SQLITE_OK) {
            j->changes = sqlite3_changes64(e->db);
            j->last_id = sqlite3_last_insert_rowid(e->db);
        }
    }
    sb_sq_eng_release(e, s);
}

static void run_fetch(sq_job *j)
{
    sq_engine *e = &j->c->eng;
    sq_cursor *cur = j->cur;
    if (cur->stmt == NULL) {
        if (j->sql == NULL) {
            sb_sq_err_set(&j->err, SQLITE_MISUSE, "the cursor has no statement left to step");
            j->eof = 1;
            return;
        }
        int hit;
        sq_stmt *s = sb_sq_eng_prepare(e, j->sql, j->sql_len, &hit, &j->err);
        if (s == NULL) {
            j->eof = 1;
            return;
        }
        j->hit = hit;
        if (sb_sq_eng_bind(e, s, &j->params, &j->err) != SQLITE_OK) {
            sb_sq_eng_release(e, s);
            j->eof = 1;
            return;
        }
        cur->stmt = s;
    }
    int eof = 0;
    int rc = sb_sq_eng_step(e, cur->stmt, &j->rows, j->limit, 1, &eof, &j->err);
    if (rc != SQLITE_OK || eof) {
        sb_sq_eng_release(e, cur->stmt);
        cur->stmt = NULL;
        j->eof = 1;
    }
}

/* Worker thread: never touches Lua or loop-side fields. */
static void job_work(void *arg)
{
    sq_job *j = arg;
    sq_engine *e = &j->c->eng;
    sb_sq_eng_job_start(e);
    switch (j->kind) {
    case J_OPEN:
        sb_sq_eng_open(e, j->c->path, &j->cfg, &j->err);
        break;
    case J_CLOSE:
        sb_sq_eng_close(e);
        break;
    case J_QUERY:
    case J_ROW:
    case J_RUN:
        run_statement(j);
        break;
    case J_FETCH:
        run_fetch(j);
        break;
    case J_UNCURSOR:
        if (j->cur->stmt) {
            sb_sq_eng_release(e, j->cur->stmt);
            j->cur->stmt = NULL;
        }
        break;
    default:                    /* J_EXEC, J_BEGIN, J_END, J_ROLLBACK_ALL */
        if (j->sql == NULL)
            sb_sq_err_set(&j->err, SQLITE_NOMEM, "out of memory");
        else if ((j->kind == J_ROLLBACK_ALL || (j->kind == J_END && !j->commit))
                 && sqlite3_get_autocommit(e->db))
            ;                   /* already rolled back (an interrupt, an error) */
        else
            sb_sq_eng_exec(e, j->sql, &j->err);
        j->autocommit = sqlite3_get_autocommit(e->db);
        break;
    }
}

static void begin_done(sq_conn *c, sq_job *j)
{
    if (j->gen != c->gen)
        return;                 /* the lock was released meanwhile (owner died) */
    if (j->err.rc != SQLITE_OK) {
        lock_down_to(c, j->autocommit ? 0 : j->depth - 1);
        return;
    }
    if (j->op == NULL && !c->rt->closing && sb_task_status(c->owner) == SB_TASK_LIVE) {
        /* A deadline abandoned it after it ran: undo this level. */
        sq_job *rb = sb_sq_job_new(c, J_END, NULL, c->owner);
        if (rb == NULL)
            return;
        char buf[96];
        if (j->depth == 1)
            snprintf(buf, sizeof buf, "ROLLBACK");
        else
            snprintf(buf, sizeof buf, "ROLLBACK TO sb_sp_%d; RELEASE sb_sp_%d", j->depth, j->depth);
        rb->sql = strdup(buf);
        rb->must_run = 1;
        rb->depth = j->depth;
        rb->gen = c->gen;
        list_push(&c->queue, rb, 1);
        rb->state = S_QUEUED;
    }
}

static void end_done(sq_conn *c, sq_job *j)
{
    if (j->gen != c->gen)
        return;
    if (j->autocommit)
        lock_down_to(c, 0);
    else if (j->err.rc == SQLITE_OK || !j->commit)
        lock_down_to(c, j->depth - 1);
    /* a failed COMMIT leaves the transaction open: sqlite.lua rolls back */
}

/* Loop thread: bookkeeping after a job ran, then deliver or free it. */
static void job_finish(sq_job *j)
{
    sq_conn *c = j->c;
    assert(c->running == j);
    c->running = NULL;
    c->cached = c->eng.cache_n;
    if (j->counted) {
        c->queries++;
        c->hits += j->hit;
    }
    switch (j->kind) {
    case J_OPEN:
        if (j->err.rc == SQLITE_OK && j->op == NULL)
            sb_sq_conn_close(c);      /* opened for a task that is gone */
        break;
    case J_BEGIN:
        begin_done(c, j);
        break;
    case J_END:
        end_done(c, j);
        break;
    case J_FETCH:
    case J_UNCURSOR: {
        sq_cursor *cur = j->cur;
        cur->busy = 0;
        cur->live = cur->stmt != NULL;
        cur->eof = cur->eof || j->eof;
        if (cur->closed && cur->live && !c->closed) {
            sq_job *u = sb_sq_internal_job(c, J_UNCURSOR, NULL);
            if (u) {
                u->cur = cur;
                cur->refs++;
                cur->busy = 1;
                sb_sq_enqueue(c, u);
            }
        }
        break;
    }
    case J_CLOSE:
        for (sq_cursor *cur = c->cursors; cur; cur = cur->next) {
            cur->stmt = NULL;   /* finalized with the connection */
            cur->live = 0;
        }
        break;
    default:
        break;
    }
    if (j->op) {
        j->state = S_FINISHED;
        sb_op_done(j->op);
    } else {
        sb_sq_job_free(j);
    }
}

static void job_done(void *arg)
{
    sq_job *j = arg;
    sq_conn *c = j->c;
    sb_sq_conn_ref(c);
    job_finish(j);
    sb_sq_pump(c);
    sb_sq_conn_unref(c);
}

/* Start the next queued job when none runs. Once the runtime closes (the
 * workers are gone) or a worker cannot be started, jobs run right here. */
void sb_sq_pump(sq_conn *c)
{
    sb_sq_conn_ref(c);
    while (c->running == NULL && c->queue.head) {
        sq_job *j = c->queue.head;
        list_remove(j);
        c->running = j;
        j->state = S_RUNNING;
        if (!c->rt->closing && sb_pool_submit(c->rt, job_work, job_done, j) == 0)
            break;
        job_work(j);
        job_finish(j);
    }
    sb_sq_conn_unref(c);
}

/* db:close() and __gc: fail what waits, let the running job finish, then
 * close the handle on a worker. Idempotent. */
void sb_sq_conn_close(sq_conn *c)
{
    if (c->closed)
        return;
    c->closed = 1;
    sb_sq_conn_ref(c);
    if (c->owner_ref != LUA_NOREF && !c->rt->closing)
        luaL_unref(c->rt->L, LUA_REGISTRYINDEX, c->owner_ref);
    c->owner_ref = LUA_NOREF;
    c->owner = NULL;
    c->depth = 0;
    c->gen++;
    if (c->tx_timer)
        evtimer_del(c->tx_timer);
    sq_list *lists[2] = {&c->blocked, &c->queue};
    for (int i = 0; i < 2; i++) {
        sq_job *j;
        while ((j = lists[i]->head) != NULL) {
            list_remove(j);
            if (j->cur)
                j->cur->busy = 0;
            if (j->op) {
                j->closed = 1;
                j->state = S_FINISHED;
                sb_op_done(j->op);
            } else {
                sb_sq_job_free(j);
            }
        }
    }
    if (c->running != NULL || c->eng.db != NULL) {    /* no read while a job runs */
        sq_job *cl = sb_sq_internal_job(c, J_CLOSE, NULL);
        if (cl) {
            list_push(&c->queue, cl, 0);
            cl->state = S_QUEUED;
        }
        sb_sq_pump(c);
    }
    sb_sq_conn_unref(c);
}

/* The job's task is gone (cancelled) or timed out. */
void sb_sq_cancel_job(void *data)
{
    sq_job *j = ((sq_op_data *)data)->job;
    sq_conn *c = j->c;
    int owner = c->depth > 0 && j->task == c->owner;
    j->op = NULL;
    sb_sq_conn_ref(c);
    switch (j->state) {
    case S_QUEUED:
    case S_BLOCKED:
        if (j->must_run)
            break;              /* a commit/rollback runs anyway, as an internal job */
        list_remove(j);
        if (j->kind == J_BEGIN && j->state == S_QUEUED && j->gen == c->gen)
            lock_down_to(c, j->depth - 1);
        if (j->cur) {
            j->cur->busy = 0;
            if (!j->cur->live)
                j->cur->eof = 1;    /* its first fetch (with the SQL) never ran */
        }
        sb_sq_job_free(j);
        break;
    case S_RUNNING:
        /* job_finish frees it. Stop it early (lock waits always; the
         * statement too unless an open cursor would be interrupted with
         * it); commits and rollbacks always complete. */
        if (!j->must_run && j->kind != J_OPEN && j->kind != J_CLOSE)
            sb_sq_eng_stop(&c->eng, sb_sq_active_cursors(c) == 0);
        break;
    default:                    /* S_FINISHED: results nobody will read */
        if (j->kind == J_OPEN && j->err.rc == SQLITE_OK)
            sb_sq_conn_close(c);
        sb_sq_job_free(j);
        break;
    }
    if (owner)
        arm_timer(c, 0);        /* if the owner died, release its lock soon */
    sb_sq_pump(c);
    sb_sq_conn_unref(c);
}
