/*
 * sb_sqlite.h -- the four parts of `sibyl.sqlite`, for each other only:
 *   sqlite_engine.c  the worker half (below: engine)
 *   sqlite_queue.c   per-connection job queue, transaction lock, cancellation
 *   sqlite.c         the Lua binding
 *   sqlite_values.c  the binding's conversions: params in, rows out, options
 *
 * The engine is plain C with no Lua: it opens and configures a connection,
 * keeps the prepared-statement cache, binds parameters, steps statements
 * into result buffers and enforces read-only mode. Every engine function
 * runs on a worker thread (or on the loop thread once the workers are
 * gone), and never on two threads at once for the same sq_engine: the
 * binding runs one job per connection at a time.
 */
#ifndef SB_SQLITE_H
#define SB_SQLITE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "sb.h"

/* ------------------------------------------------------------- values */

enum { SQV_NULL, SQV_INT, SQV_FLOAT, SQV_TEXT, SQV_BLOB };

/* One SQL value. TEXT and BLOB bytes live in an arena: u.off is their offset. */
typedef struct {
    int type;
    size_t len;
    union {
        int64_t i;
        double d;
        size_t off;
    } u;
} sq_val;

/* A growable byte buffer. */
typedef struct {
    char *p;
    size_t len, cap;
} sq_buf;

/* Append n bytes; returns the offset they start at, or (size_t)-1 on ENOMEM. */
size_t sb_sq_buf_add(sq_buf *b, const void *data, size_t n);
void sb_sq_buf_free(sq_buf *b);

/*
 * Parameters, converted from Lua on the loop thread. pos[i] binds "?" number
 * i+1; named[i] binds the parameter called names (offsets into arena, the
 * name without its ':', '@' or '$'). Missing values bind NULL; a named value
 * the statement does not use is an error.
 */
typedef struct {
    int npos, nnamed;
    sq_val *pos, *named;
    size_t *name_off;
    sq_buf arena;
} sq_params;

void sb_sq_params_free(sq_params *p);

/* Rows stepped out of a statement: nrows * ncols values, row-major. */
typedef struct {
    int ncols;
    size_t *col_off;            /* column names, in arena */
    size_t nrows, cap;
    sq_val *vals;
    sq_buf arena;
} sq_rows;

void sb_sq_rows_free(sq_rows *r);

/* ------------------------------------------------------------- errors */

/* What went wrong in a job: rc is the (extended) SQLite result code, or
 * SQLITE_OK. readonly is set when read-only mode refused the statement. */
typedef struct {
    int rc;
    int readonly;
    int too_large;
    char *msg;                  /* malloc'ed */
} sq_err;

void sb_sq_err_set(sq_err *e, int rc, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void sb_sq_err_clear(sq_err *e);
/* "SQLITE_CONSTRAINT" for a primary code; extended codes map to their primary. */
const char *sb_sq_code_name(int rc);
/* "SQLITE_CONSTRAINT_UNIQUE" and the like, or NULL when rc is a primary code. */
const char *sb_sq_extended_name(int rc);

/* ------------------------------------------------------------- engine */

typedef struct sq_stmt sq_stmt;

/* A cached prepared statement (the cache is an LRU list keyed by SQL text). */
struct sq_stmt {
    sq_stmt *prev, *next;       /* prev = more recently used */
    sqlite3_stmt *st;
    uint32_t hash;
    int in_use;                 /* taken by a job or a cursor */
    size_t len;
    char sql[];
};

typedef struct {
    int readonly, create, wal;
    int busy_timeout_ms;
    int cache_size;
} sq_open_cfg;

typedef struct {
    sqlite3 *db;
    int readonly;
    int busy_timeout_ms;
    int busy_waited_ms;         /* in the current lock wait */
    atomic_int stop;            /* set from the loop thread: give up lock waits */
    int cache_cap, cache_n;
    sq_stmt *mru, *lru;
    char deny[200];             /* the first read-only refusal, "" if none */
    int deny_weak;              /* deny names the schema-table write a DDL makes first */
} sq_engine;

/* Open path and configure the connection. On failure e->db is NULL and
 * err says why. */
int sb_sq_eng_open(sq_engine *e, const char *path, const sq_open_cfg *cfg, sq_err *err);

/* Loop thread, while a job of e runs on a worker: stop it early. Lock
 * waits give up at once; with interrupt, the running statement is also
 * interrupted (sqlite3_interrupt). The next job clears the request. */
void sb_sq_eng_stop(sq_engine *e, int interrupt);

/* Worker: a new job starts; forget an earlier stop request. */
void sb_sq_eng_job_start(sq_engine *e);

/* Finalize every statement (cached or held by cursors) and close. */
void sb_sq_eng_close(sq_engine *e);

/*
 * A prepared statement for exactly one SQL statement: from the cache (*hit
 * = 1) or freshly prepared. Refuses text holding several statements or none,
 * and in read-only mode any statement that would write. The statement is
 * marked in use until sb_sq_eng_release. NULL on error (err set).
 */
sq_stmt *sb_sq_eng_prepare(sq_engine *e, const char *sql, size_t len, int *hit, sq_err *err);

/* Reset the statement, clear its bindings and give it back to the cache
 * (which may finalize it to stay within its size). */
void sb_sq_eng_release(sq_engine *e, sq_stmt *s);

/* Bind p to s. Returns SQLITE_OK or an error (err set). */
int sb_sq_eng_bind(sq_engine *e, sq_stmt *s, const sq_params *p, sq_err *err);

/*
 * Step s, appending up to `limit` rows to r (ncols and names filled on the
 * first call). *eof is set when the statement has no more rows. Returns
 * SQLITE_OK or an error (err set). limit = 0 steps to the end and keeps
 * nothing (db:run).
 */
int sb_sq_eng_step(sq_engine *e, sq_stmt *s, sq_rows *r, size_t limit, int keep, int *eof,
                   sq_err *err);

/* Run a script of statements without results (db:exec). */
int sb_sq_eng_exec(sq_engine *e, const char *sql, sq_err *err);

/* Fill err from the connection's last error (message, code, read-only refusal). */
void sb_sq_eng_error(sq_engine *e, int rc, sq_err *err);

/* ================================================= queue (sqlite_queue.c) */

enum { J_OPEN, J_EXEC, J_QUERY, J_ROW, J_RUN, J_FETCH, J_UNCURSOR, J_BEGIN, J_END, J_ROLLBACK_ALL,
       J_CLOSE };
enum { S_NEW, S_QUEUED, S_BLOCKED, S_RUNNING, S_FINISHED };

typedef struct sq_conn sq_conn;
typedef struct sq_cursor sq_cursor;
typedef struct sq_job sq_job;

typedef struct {
    sq_job *head, *tail;
} sq_list;

struct sq_job {
    int kind, state;
    sq_conn *c;                 /* holds a reference */
    sq_cursor *cur;             /* J_FETCH / J_UNCURSOR: holds a reference */
    sb_op *op;                  /* NULL: internal, or abandoned by its task */
    void *task;                 /* submitting task (identity only); NULL: internal */
    sq_list *in;                /* the list the job waits in */
    sq_job *prev, *next;
    int must_run;               /* runs even when its task goes (J_END) */
    int closed;                 /* failed because the db was closed */
    int counted;                /* a user statement: counts in stats */

    char *sql;
    size_t sql_len;
    sq_params params;
    size_t limit;               /* J_QUERY: max_rows; J_FETCH: batch */
    int int64_str;
    sq_open_cfg cfg;            /* J_OPEN */

    int tx_ref;                 /* J_BEGIN: pins the task handle until the lock takes it */
    const char *mode;           /* J_BEGIN: "IMMEDIATE", "DEFERRED", "EXCLUSIVE" */
    unsigned gen;               /* J_BEGIN / J_END: lock generation */
    int depth;                  /* J_BEGIN / J_END: transaction level */
    int commit;                 /* J_END */

    /* results, written by the worker */
    sq_err err;
    sq_rows rows;
    int hit, eof, autocommit;
    int64_t changes, last_id;
};

struct sq_cursor {
    sq_conn *c;                 /* holds a reference */
    int refs;                   /* userdata + running fetch */
    sq_stmt *stmt;              /* the open statement: worker-owned while busy */
    int live;                   /* loop-side mirror: stmt != NULL */
    int busy, eof, closed, started;
    char *sql;
    size_t sql_len;
    sq_params params;           /* until the first fetch takes them */
    size_t batch;
    int int64_str;
    sq_cursor *prev, *next;     /* in c->cursors */
};

struct sq_conn {
    sq_engine eng;              /* worker side (sqlite_engine.c) */
    sibyl_rt *rt;
    char *path;
    int refs;
    int closed;                 /* close() called: no new jobs */
    int readonly;
    sq_job *running;
    sq_list queue, blocked;
    /* the transaction lock */
    void *owner;                /* task holding it (its handle is pinned by owner_ref) */
    int owner_ref;
    int depth;
    unsigned gen;
    struct event *tx_timer;
    sq_cursor *cursors;
    /* stats, loop side */
    double queries, hits;
    int cached;
    /* knobs */
    int max_rows, int64_str, cache_size;
    size_t batch;
};

/* The data of every sqlite op: the job it waits on. */
typedef struct {
    sq_job *job;
} sq_op_data;

void sb_sq_conn_ref(sq_conn *c);
/* Drop a reference; the last one frees the connection (closed by then). */
void sb_sq_conn_unref(sq_conn *c);
void sb_sq_cursor_unref(sq_cursor *cur);
/* A job for c (holds a reference on c). task: the submitting task, NULL
 * for internal jobs. NULL when out of memory. */
sq_job *sb_sq_job_new(sq_conn *c, int kind, sb_op *op, void *task);
/* An internal job (no task) running sql (may be NULL). */
sq_job *sb_sq_internal_job(sq_conn *c, int kind, const char *sql);
void sb_sq_job_free(sq_job *j);
/* Accept a job into c's queue (or its blocked list, while another task
 * holds the transaction lock); sb_sq_pump then starts it when c is idle. */
void sb_sq_enqueue(sq_conn *c, sq_job *j);
void sb_sq_pump(sq_conn *c);
/* Fail what waits with kind "closed", then close on a worker. Idempotent. */
void sb_sq_conn_close(sq_conn *c);
/* Cursors of c holding an open statement. */
int sb_sq_active_cursors(sq_conn *c);
/* The cancel hook of every sqlite op (sb.h: cancel_fn). */
void sb_sq_cancel_job(void *data);

/* ---------------------------------------- conversions (sqlite_values.c) */

/* Push rows [first, first+count) of r as an array of tables keyed by column
 * name, with .columns; int64_str: integers beyond 2^53 as decimal strings.
 * Returns 0, or -1 when the stack cannot grow. */
int sb_sq_push_rows(lua_State *co, const sq_rows *r, size_t first, size_t count, int int64_str);
/* Read params at idx (nil, or a table: integer keys for ? / ?N, string keys
 * for :name / @name / $name) into p. Returns 0, or -1 with a message in err
 * (the caller frees p and raises). Raises only when out of memory. */
int sb_sq_read_params(lua_State *L, int idx, sq_params *p, char *err, size_t errlen);
/* The options table at idx (0 when absent); raises when it is not a table. */
int sb_sq_opts_index(lua_State *L, int idx, const char *fn);
/* Raise when the options table at idx has a key outside `known` (NULL-ended). */
void sb_sq_check_known(lua_State *L, int idx, const char *const known[], const char *fn);
/* Options of the table at idx (0: none, giving def), raising with fn's name
 * on a value of the wrong type; numbers must be integers in lo..hi. */
int sb_sq_opt_bool(lua_State *L, int idx, const char *k, int def, const char *fn);
lua_Number sb_sq_opt_num(lua_State *L, int idx, const char *k, lua_Number def, lua_Number lo,
                         lua_Number hi, const char *fn);
/* The int64 option: 1 for "string", 0 for "number". */
int sb_sq_opt_int64(lua_State *L, int idx, int def, const char *fn);
/* core.blob(s) -> a wrapper that binds s as a BLOB. */
int sb_sq_l_blob(lua_State *L);
/* core._set_cdata_converter(fn): fn(cdata) -> bytes | decimal, is_int64. */
int sb_sq_l_set_conv(lua_State *L);
/* Create the blob wrappers' metatable and leave it on the stack. */
void sb_sq_new_blob_meta(lua_State *L);

#endif /* SB_SQLITE_H */
