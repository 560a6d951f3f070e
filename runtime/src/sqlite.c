/*
 * sqlite.c -- `sibyl.sqlite.core`: SQLite connections whose queries run on
 * the worker pool. stdlib/sibyl/sqlite.lua re-exports it as `sibyl.sqlite`
 * and adds db:each(), db:transaction() and sqlite.blob(). This file is the
 * Lua binding: it checks arguments, turns SQL and parameters into jobs,
 * parks the task and pushes results or errors. Converting parameters,
 * result rows and options (and the blob wrapper) is sqlite_values.c; the
 * job queue, the transaction lock and cancellation are in sqlite_queue.c;
 * the worker half (open, cache, bind, step, read-only enforcement) in
 * sqlite_engine.c. doc/sqlite.md is the reference.
 *
 *   local db, err = core.open(path, {readonly=, wal=, busy_timeout=, cache_size=,
 *                                    create=, max_rows=, int64=, batch=})
 *   db:exec(sql)                      -> true
 *   db:query(sql [, params [, opts]]) -> rows (rows.columns = names)
 *   db:row(sql [, params [, opts]])   -> first row, or nil when there is none
 *   db:run(sql [, params])            -> {changes=, last_insert_id=}
 *   db:stats(), db:path(), db:close(), tostring(db)
 *   db:_cursor(sql, params, opts) -> cursor; cursor:_fetch() -> batch, eof
 *   db:_tx_begin(task, mode), db:_tx_end(commit)   (for sqlite.lua)
 *
 * Expected failures return nil, err (kinds sqlite, readonly, io, too_large,
 * closed); misuse (bad options, unbindable values) raises.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb.h"
#include "sb_sqlite.h"

#define DB_NAME "sibyl.sqlite.db"
#define CURSOR_NAME "sibyl.sqlite.cursor"

#define DEFAULT_BUSY_TIMEOUT 5000       /* ms a writer waits for a lock */
#define DEFAULT_CACHE_SIZE 64           /* prepared statements kept per connection */
#define DEFAULT_MAX_ROWS 100000         /* rows one query may return */
#define DEFAULT_BATCH 256               /* rows per worker hop in db:each */

static char db_key, cursor_key;

typedef struct {
    sq_conn *c;                 /* NULL once closed */
} db_ud;

typedef struct {
    sq_cursor *cur;             /* NULL once closed */
} cursor_ud;

/* ============================================================ Lua: results */

/* The SQL a message quotes, shortened. */
static void sql_excerpt(const sq_job *j, char *buf, size_t size)
{
    if (j->sql == NULL) {
        buf[0] = '\0';
        return;
    }
    size_t n = 0;
    for (const char *p = j->sql; *p && n + 4 < size; p++)
        buf[n++] = (*p == '\n' || *p == '\t' || *p == '\r') ? ' ' : *p;
    if (j->sql[n] != '\0' && n + 4 >= size)
        memcpy(buf + n, "...", 3), n += 3;
    buf[n] = '\0';
}

static const char *job_name(const sq_job *j)
{
    switch (j->kind) {
    case J_OPEN: return "sqlite.open";
    case J_EXEC: return "db:exec";
    case J_QUERY: return "db:query";
    case J_ROW: return "db:row";
    case J_RUN: return "db:run";
    case J_FETCH: return "db:each";
    default: return "db:transaction";
    }
}

static int push_error(lua_State *co, sq_job *j)
{
    const char *fn = job_name(j);
    sq_conn *c = j->c;
    const sq_err *e = &j->err;
    const char *msg = e->msg ? e->msg : "unknown error";
    int prim = e->rc & 0xff;
    char sql[100];
    sql_excerpt(j, sql, sizeof sql);
    if (j->closed)
        return sb_fail(co, "closed", "%s: '%s' was closed before the query ran; "
                                     "open it again with sqlite.open", fn, c->path);
    if (e->too_large)
        return sb_fail(co, "too_large", "%s: the query returned more than max_rows (%zu) rows; "
                                        "iterate with db:each(sql, params) or raise max_rows",
                       fn, j->limit);
    int n;
    if (e->readonly && c->readonly)
        n = sb_fail(co, "readonly", "%s: '%s' is opened read-only: %s is not allowed; "
                                    "open it with readonly = false to write", fn, c->path, msg);
    else if (e->readonly)
        n = sb_fail(co, "readonly", "%s: cannot write '%s': %s; check the file's permissions "
                                    "(and those of its directory, for the journal)",
                    fn, c->path, msg);
    else if (j->kind == J_OPEN && (prim == SQLITE_CANTOPEN || prim == SQLITE_PERM))
        n = sb_fail(co, "io", "%s: cannot open '%s': %s; check that the path exists and is "
                              "accessible%s", fn, c->path, msg,
                    j->cfg.create || j->cfg.readonly ? "" : " (or pass create = true)");
    else if (prim == SQLITE_IOERR || prim == SQLITE_FULL || prim == SQLITE_CANTOPEN
             || prim == SQLITE_PERM)
        n = sb_fail(co, "io", "%s: I/O error on '%s': %s; check the disk and the file", fn,
                    c->path, msg);
    else if (prim == SQLITE_BUSY || prim == SQLITE_LOCKED)
        n = sb_fail(co, "sqlite", "%s: %s (in: %s); another connection holds the lock longer "
                                  "than busy_timeout: raise it or shorten that transaction",
                    fn, msg, sql);
    else if (j->kind == J_OPEN)
        n = sb_fail(co, "sqlite", "%s: cannot use '%s': %s", fn, c->path, msg);
    else if (sql[0])
        n = sb_fail(co, "sqlite", "%s: %s (in: %s)", fn, msg, sql);
    else
        n = sb_fail(co, "sqlite", "%s: %s", fn, msg);
    sb_setfield_str(co, "code", sb_sq_code_name(e->rc));
    const char *ext = sb_sq_extended_name(e->rc);
    if (ext)
        sb_setfield_str(co, "extended", ext);
    return n;
}

static void push_db(lua_State *co, sq_conn *c)
{
    db_ud *u = lua_newuserdata(co, sizeof *u);
    u->c = c;
    sb_sq_conn_ref(c);
    sb_getmeta(co, &db_key);
    lua_setmetatable(co, -2);
}

static int push_job(lua_State *co, void *data)
{
    sq_job *j = ((sq_op_data *)data)->job;
    int n = 1;
    j->op = NULL;
    if (j->closed || j->err.rc != SQLITE_OK || j->err.too_large) {
        n = push_error(co, j);
        if (j->kind == J_FETCH)
            j->cur->eof = 1;
    } else {
        switch (j->kind) {
        case J_OPEN:
            push_db(co, j->c);
            break;
        case J_QUERY:
            if (sb_sq_push_rows(co, &j->rows, 0, j->rows.nrows, j->int64_str) != 0)
                n = sb_fail(co, "too_large", "sqlite: the result has too many columns to return");
            break;
        case J_ROW:
            if (j->rows.nrows == 0) {
                lua_pushnil(co);
            } else if (sb_sq_push_rows(co, &j->rows, 0, 1, j->int64_str) != 0) {
                n = sb_fail(co, "too_large", "sqlite: the result has too many columns to return");
            } else {
                lua_rawgeti(co, -1, 1);
                lua_remove(co, -2);
            }
            break;
        case J_RUN:
            lua_createtable(co, 0, 2);
            lua_pushnumber(co, (lua_Number)j->changes);
            lua_setfield(co, -2, "changes");
            lua_pushnumber(co, (lua_Number)j->last_id);
            lua_setfield(co, -2, "last_insert_id");
            break;
        case J_FETCH:
            if (sb_sq_push_rows(co, &j->rows, 0, j->rows.nrows, j->int64_str) != 0) {
                n = sb_fail(co, "too_large", "sqlite: the result has too many columns to return");
            } else {
                lua_pushboolean(co, j->cur->eof);
                n = 2;
            }
            break;
        default:                /* J_EXEC, J_BEGIN, J_END */
            lua_pushboolean(co, 1);
            break;
        }
    }
    sb_sq_job_free(j);
    return n;
}

/* Queue j on c and start it if c is idle (c is kept alive meanwhile). */
static void queue_job(sq_conn *c, sq_job *j)
{
    sb_sq_conn_ref(c);
    sb_sq_enqueue(c, j);
    sb_sq_pump(c);
    sb_sq_conn_unref(c);
}

/* Queue a job and park the running task on it. */
static int submit(lua_State *L, sq_job *j)
{
    queue_job(j->c, j);
    return sb_op_park(L, j->op);
}

/* Raise msg prefixed with the caller's position (luaL_error without
 * formatting: msg may hold any text). */
static int raise_at(lua_State *L, const char *msg)
{
    luaL_where(L, 1);
    lua_pushstring(L, msg);
    lua_concat(L, 2);
    return lua_error(L);
}


/* ============================================================== Lua: db */

static sq_conn *check_db(lua_State *L)
{
    db_ud *u = sb_checkudata(L, 1, &db_key, DB_NAME);
    return u->c;
}

static int fail_closed(lua_State *L)
{
    return sb_fail(L, "closed", "sqlite: the database is closed; open it again with sqlite.open");
}

static int l_open(lua_State *L)
{
    static const char *const known[] = {"readonly", "wal", "busy_timeout", "cache_size", "create",
                                        "max_rows", "int64", "batch", NULL};
    const char *path = luaL_checkstring(L, 1);
    int o = sb_sq_opts_index(L, 2, "sqlite.open");
    if (o)
        sb_sq_check_known(L, o, known, "sqlite.open");
    sq_open_cfg cfg;
    cfg.readonly = sb_sq_opt_bool(L, o, "readonly", 0, "sqlite.open");
    cfg.wal = sb_sq_opt_bool(L, o, "wal", 1, "sqlite.open");
    cfg.create = sb_sq_opt_bool(L, o, "create", 1, "sqlite.open");
    cfg.busy_timeout_ms = (int)sb_sq_opt_num(L, o, "busy_timeout", DEFAULT_BUSY_TIMEOUT, 0,
                                             86400000, "sqlite.open");
    cfg.cache_size = (int)sb_sq_opt_num(L, o, "cache_size", DEFAULT_CACHE_SIZE, 0, 10000,
                                        "sqlite.open");
    int max_rows = (int)sb_sq_opt_num(L, o, "max_rows", DEFAULT_MAX_ROWS, 1, 1e9, "sqlite.open");
    int batch = (int)sb_sq_opt_num(L, o, "batch", DEFAULT_BATCH, 1, 1e6, "sqlite.open");
    int int64_str = sb_sq_opt_int64(L, o, 0, "sqlite.open");

    sibyl_rt *rt = sb_rt(L);
    sb_op *op = sb_op_new(L, sizeof(sq_op_data), push_job, sb_sq_cancel_job);
    sq_conn *c = calloc(1, sizeof *c);
    if (c == NULL || (c->path = strdup(path)) == NULL) {
        free(c);
        sb_op_abort(op);
        return luaL_error(L, "sqlite.open: out of memory");
    }
    c->rt = rt;
    c->owner_ref = LUA_NOREF;
    c->readonly = cfg.readonly;
    c->max_rows = max_rows;
    c->batch = (size_t)batch;
    c->int64_str = int64_str;
    c->cache_size = cfg.cache_size;
    sq_job *j = sb_sq_job_new(c, J_OPEN, op, rt->current);
    if (j == NULL) {
        free(c->path);
        free(c);
        sb_op_abort(op);
        return luaL_error(L, "sqlite.open: out of memory");
    }
    j->cfg = cfg;
    ((sq_op_data *)sb_op_data(op))->job = j;
    return submit(L, j);
}

/*
 * Start a statement job of `kind` for db at 1, SQL at 2, params at pidx
 * (0: none), per-call options already read. Raises on misuse.
 */
static int start_statement(lua_State *L, sq_conn *c, int kind, int pidx, size_t limit,
                           int int64_str)
{
    size_t len;
    const char *sql = luaL_checklstring(L, 2, &len);
    if (len > 100000000)
        return luaL_error(L, "sqlite: the SQL text is %zu bytes; the limit is 100 MB", len);
    sb_op *op = sb_op_new(L, sizeof(sq_op_data), push_job, sb_sq_cancel_job);
    sq_job *j = sb_sq_job_new(c, kind, op, sb_rt(L)->current);
    char err[256];
    if (j == NULL) {
        sb_op_abort(op);
        return luaL_error(L, "sqlite: out of memory");
    }
    if ((j->sql = malloc(len + 1)) == NULL) {
        snprintf(err, sizeof err, "sqlite: out of memory");
        goto fail;
    }
    memcpy(j->sql, sql, len + 1);
    j->sql_len = len;
    if (pidx && sb_sq_read_params(L, pidx, &j->params, err, sizeof err) != 0)
        goto fail;
    j->limit = limit;
    j->int64_str = int64_str;
    j->counted = 1;
    ((sq_op_data *)sb_op_data(op))->job = j;
    return submit(L, j);

fail:
    sb_sq_job_free(j);
    sb_op_abort(op);
    return raise_at(L, err);
}

static const char *const query_opts[] = {"max_rows", "int64", NULL};

static int l_exec(lua_State *L)
{
    sq_conn *c = check_db(L);
    luaL_checkstring(L, 2);
    if (!lua_isnoneornil(L, 3))
        return luaL_error(L, "db:exec takes no params (it runs a script); use db:run(sql, params)");
    if (c == NULL || c->closed)
        return fail_closed(L);
    return start_statement(L, c, J_EXEC, 0, 0, 0);
}

static int l_query(lua_State *L)
{
    sq_conn *c = check_db(L);
    luaL_checkstring(L, 2);
    int o = sb_sq_opts_index(L, 4, "db:query");
    if (o)
        sb_sq_check_known(L, o, query_opts, "db:query");
    size_t max_rows = (size_t)sb_sq_opt_num(L, o, "max_rows", c ? c->max_rows : 1, 1, 1e9,
                                            "db:query");
    int int64_str = sb_sq_opt_int64(L, o, c ? c->int64_str : 0, "db:query");
    if (c == NULL || c->closed)
        return fail_closed(L);
    return start_statement(L, c, J_QUERY, lua_isnoneornil(L, 3) ? 0 : 3, max_rows, int64_str);
}

static int l_row(lua_State *L)
{
    sq_conn *c = check_db(L);
    luaL_checkstring(L, 2);
    int o = sb_sq_opts_index(L, 4, "db:row");
    if (o)
        sb_sq_check_known(L, o, query_opts + 1, "db:row");
    int int64_str = sb_sq_opt_int64(L, o, c ? c->int64_str : 0, "db:row");
    if (c == NULL || c->closed)
        return fail_closed(L);
    return start_statement(L, c, J_ROW, lua_isnoneornil(L, 3) ? 0 : 3, 1, int64_str);
}

static int l_run(lua_State *L)
{
    sq_conn *c = check_db(L);
    luaL_checkstring(L, 2);
    if (c == NULL || c->closed)
        return fail_closed(L);
    return start_statement(L, c, J_RUN, lua_isnoneornil(L, 3) ? 0 : 3, 0, 0);
}

/* db:_tx_begin(task, mode): take the connection's lock for task (waiting
 * while another task holds it), then BEGIN <mode> or SAVEPOINT. */
static int l_tx_begin(lua_State *L)
{
    sq_conn *c = check_db(L);
    sibyl_rt *rt = sb_rt(L);
    if (lua_touserdata(L, 2) == NULL || lua_touserdata(L, 2) != (void *)rt->current)
        return luaL_error(L, "db:_tx_begin: pass sibyl.current() (use db:transaction)");
    const char *mode = luaL_optstring(L, 3, c && c->readonly ? "deferred" : "immediate");
    const char *m = strcmp(mode, "immediate") == 0 ? "IMMEDIATE"
                    : strcmp(mode, "deferred") == 0 ? "DEFERRED"
                    : strcmp(mode, "exclusive") == 0 ? "EXCLUSIVE" : NULL;
    if (m == NULL)
        return luaL_error(L, "db:transaction: mode must be \"immediate\", \"deferred\" or "
                             "\"exclusive\", got \"%s\"", mode);
    if (c == NULL || c->closed)
        return fail_closed(L);
    sb_op *op = sb_op_new(L, sizeof(sq_op_data), push_job, sb_sq_cancel_job);
    sq_job *j = sb_sq_job_new(c, J_BEGIN, op, rt->current);
    if (j == NULL) {
        sb_op_abort(op);
        return luaL_error(L, "sqlite: out of memory");
    }
    j->mode = m;
    lua_pushvalue(L, 2);
    j->tx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ((sq_op_data *)sb_op_data(op))->job = j;
    return submit(L, j);
}

/* db:_tx_end(commit): COMMIT / RELEASE, or ROLLBACK / ROLLBACK TO, of the
 * innermost level the running task holds. */
static int l_tx_end(lua_State *L)
{
    sq_conn *c = check_db(L);
    int commit = lua_toboolean(L, 2);
    sibyl_rt *rt = sb_rt(L);
    if (c == NULL || c->closed)
        return fail_closed(L);
    if (c->depth == 0 || c->owner != (void *)rt->current) {
        if (!commit) {
            lua_pushboolean(L, 1);
            return 1;
        }
        return sb_fail(L, "sqlite", "sqlite: cannot commit: no transaction is open (it was rolled "
                                    "back by an error or an interrupted statement); run it again");
    }
    sb_op *op = sb_op_new(L, sizeof(sq_op_data), push_job, sb_sq_cancel_job);
    sq_job *j = sb_sq_job_new(c, J_END, op, rt->current);
    char buf[96];
    if (commit && c->depth == 1)
        snprintf(buf, sizeof buf, "COMMIT");
    else if (commit)
        snprintf(buf, sizeof buf, "RELEASE sb_sp_%d", c->depth);
    else if (c->depth == 1)
        snprintf(buf, sizeof buf, "ROLLBACK");
    else
        snprintf(buf, sizeof buf, "ROLLBACK TO sb_sp_%d; RELEASE sb_sp_%d", c->depth, c->depth);
    if (j == NULL || (j->sql = strdup(buf)) == NULL) {
        if (j)
            sb_sq_job_free(j);
        sb_op_abort(op);
        return luaL_error(L, "sqlite: out of memory");
    }
    j->must_run = 1;
    j->commit = commit;
    j->depth = c->depth;
    j->gen = c->gen;
    ((sq_op_data *)sb_op_data(op))->job = j;
    return submit(L, j);
}

static int l_stats(lua_State *L)
{
    sq_conn *c = check_db(L);
    if (c == NULL)
        return fail_closed(L);
    int queued = 0;
    for (sq_job *j = c->queue.head; j; j = j->next)
        queued++;
    for (sq_job *j = c->blocked.head; j; j = j->next)
        queued++;
    lua_createtable(L, 0, 8);
    lua_pushnumber(L, c->queries);
    lua_setfield(L, -2, "queries");
    lua_pushnumber(L, c->hits);
    lua_setfield(L, -2, "cache_hits");
    lua_pushinteger(L, c->cache_size);
    lua_setfield(L, -2, "cache_size");
    lua_pushinteger(L, c->cached);
    lua_setfield(L, -2, "cached");
    lua_pushinteger(L, queued);
    lua_setfield(L, -2, "queued");
    lua_pushboolean(L, c->running != NULL);
    lua_setfield(L, -2, "running");
    lua_pushinteger(L, c->depth);
    lua_setfield(L, -2, "transaction_depth");
    lua_pushinteger(L, sb_sq_active_cursors(c));
    lua_setfield(L, -2, "open_cursors");
    return 1;
}

static int l_db_close(lua_State *L)
{
    db_ud *u = sb_checkudata(L, 1, &db_key, DB_NAME);
    if (u->c) {
        sq_conn *c = u->c;
        u->c = NULL;
        sb_sq_conn_close(c);
        sb_sq_conn_unref(c);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_db_tostring(lua_State *L)
{
    db_ud *u = sb_checkudata(L, 1, &db_key, DB_NAME);
    if (u->c == NULL || u->c->closed)
        lua_pushliteral(L, DB_NAME " (closed)");
    else
        lua_pushfstring(L, DB_NAME " (%s%s)", u->c->path, u->c->readonly ? ", readonly" : "");
    return 1;
}

static int l_db_path(lua_State *L)
{
    sq_conn *c = check_db(L);
    if (c == NULL)
        return fail_closed(L);
    lua_pushstring(L, c->path);
    return 1;
}

/* ========================================================== Lua: cursors */

/* db:_cursor(sql, params, opts) -> cursor: nothing runs until _fetch. */
static int l_cursor(lua_State *L)
{
    static const char *const known[] = {"batch", "int64", NULL};
    sq_conn *c = check_db(L);
    size_t len;
    const char *sql = luaL_checklstring(L, 2, &len);
    int o = sb_sq_opts_index(L, 4, "db:each");
    if (o)
        sb_sq_check_known(L, o, known, "db:each");
    size_t batch = (size_t)sb_sq_opt_num(L, o, "batch", c ? (lua_Number)c->batch : 1, 1, 1e6,
                                         "db:each");
    int int64_str = sb_sq_opt_int64(L, o, c ? c->int64_str : 0, "db:each");
    if (c == NULL || c->closed)
        return fail_closed(L);
    cursor_ud *u = lua_newuserdata(L, sizeof *u);
    u->cur = NULL;
    sb_getmeta(L, &cursor_key);
    lua_setmetatable(L, -2);
    sq_cursor *cur = calloc(1, sizeof *cur);
    char err[256];
    if (cur == NULL || (cur->sql = malloc(len + 1)) == NULL) {
        free(cur);
        return luaL_error(L, "sqlite: out of memory");
    }
    memcpy(cur->sql, sql, len + 1);
    cur->sql_len = len;
    if (sb_sq_read_params(L, 3, &cur->params, err, sizeof err) != 0) {
        sb_sq_params_free(&cur->params);
        free(cur->sql);
        free(cur);
        return raise_at(L, err);
    }
    cur->batch = batch;
    cur->int64_str = int64_str;
    cur->c = c;
    cur->refs = 1;
    sb_sq_conn_ref(c);
    cur->next = c->cursors;
    if (c->cursors)
        c->cursors->prev = cur;
    c->cursors = cur;
    u->cur = cur;
    return 1;
}

/* cursor:_fetch() -> rows, eof: the next batch of up to `batch` rows. */
static int l_fetch(lua_State *L)
{
    cursor_ud *u = sb_checkudata(L, 1, &cursor_key, CURSOR_NAME);
    sq_cursor *cur = u->cur;
    if (cur == NULL || cur->c->closed)
        return sb_fail(L, "closed", "sqlite: the cursor (or its database) is closed");
    if (cur->busy)
        return luaL_error(L, "sqlite: this cursor is already fetching in another task; "
                             "iterate a db:each() loop from one task only");
    if (cur->eof) {
        lua_createtable(L, 0, 0);
        lua_pushboolean(L, 1);
        return 2;
    }
    sq_conn *c = cur->c;
    sb_op *op = sb_op_new(L, sizeof(sq_op_data), push_job, sb_sq_cancel_job);
    sq_job *j = sb_sq_job_new(c, J_FETCH, op, sb_rt(L)->current);
    if (j == NULL) {
        sb_op_abort(op);
        return luaL_error(L, "sqlite: out of memory");
    }
    j->cur = cur;
    cur->refs++;
    cur->busy = 1;
    j->limit = cur->batch;
    j->int64_str = cur->int64_str;
    if (!cur->started) {        /* the first fetch prepares: it takes the SQL and params */
        cur->started = 1;
        j->sql = cur->sql;
        j->sql_len = cur->sql_len;
        j->params = cur->params;
        j->counted = 1;
        cur->sql = NULL;
        memset(&cur->params, 0, sizeof cur->params);
    }
    ((sq_op_data *)sb_op_data(op))->job = j;
    return submit(L, j);
}

static int l_cursor_close(lua_State *L)
{
    cursor_ud *u = sb_checkudata(L, 1, &cursor_key, CURSOR_NAME);
    sq_cursor *cur = u->cur;
    if (cur) {
        u->cur = NULL;
        cur->closed = 1;
        sq_conn *c = cur->c;
        /* A running fetch re-queues the release when it finishes. */
        if (!cur->busy && cur->live && !c->closed) {
            sq_job *j = sb_sq_internal_job(c, J_UNCURSOR, NULL);
            if (j) {
                j->cur = cur;
                cur->refs++;
                cur->busy = 1;
                queue_job(c, j);
            }
        }
        sb_sq_cursor_unref(cur);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_cursor_tostring(lua_State *L)
{
    cursor_ud *u = sb_checkudata(L, 1, &cursor_key, CURSOR_NAME);
    lua_pushstring(L, u->cur == NULL ? CURSOR_NAME " (closed)"
                      : u->cur->eof ? CURSOR_NAME " (done)" : CURSOR_NAME " (open)");
    return 1;
}

/* ============================================================ Lua: module */


static int l_version(lua_State *L)
{
    lua_pushstring(L, sqlite3_libversion());
    return 1;
}

static const luaL_Reg db_methods[] = {
    {"exec", l_exec},
    {"query", l_query},
    {"row", l_row},
    {"run", l_run},
    {"stats", l_stats},
    {"path", l_db_path},
    {"close", l_db_close},
    {"_cursor", l_cursor},
    {"_tx_begin", l_tx_begin},
    {"_tx_end", l_tx_end},
    {"__gc", l_db_close},
    {"__tostring", l_db_tostring},
    {NULL, NULL}
};

static const luaL_Reg cursor_methods[] = {
    {"_fetch", l_fetch},
    {"close", l_cursor_close},
    {"__gc", l_cursor_close},
    {"__tostring", l_cursor_tostring},
    {NULL, NULL}
};

static const luaL_Reg funcs[] = {
    {"open", l_open},
    {"blob", sb_sq_l_blob},
    {"sqlite_version", l_version},
    {"_set_cdata_converter", sb_sq_l_set_conv},
    {NULL, NULL}
};

int luaopen_sibyl_sqlite_core(lua_State *L)
{
    if (!sqlite3_threadsafe())
        return luaL_error(L, "sibyl.sqlite: the system SQLite was built without thread support "
                             "(SQLITE_THREADSAFE=0); install a thread-safe libsqlite3");
    luaL_newlib(L, funcs);
    sb_newmeta(L, &db_key, DB_NAME);
    luaL_setfuncs(L, db_methods, 0);
    lua_setfield(L, -2, "_db_mt");
    sb_newmeta(L, &cursor_key, CURSOR_NAME);
    luaL_setfuncs(L, cursor_methods, 0);
    lua_setfield(L, -2, "_cursor_mt");
    sb_sq_new_blob_meta(L);
    lua_setfield(L, -2, "_blob_mt");
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    lua_pushinteger(L, DEFAULT_BUSY_TIMEOUT);
    lua_setfield(L, -2, "DEFAULT_BUSY_TIMEOUT");
    lua_pushinteger(L, DEFAULT_CACHE_SIZE);
    lua_setfield(L, -2, "DEFAULT_CACHE_SIZE");
    lua_pushinteger(L, DEFAULT_MAX_ROWS);
    lua_setfield(L, -2, "DEFAULT_MAX_ROWS");
    lua_pushinteger(L, DEFAULT_BATCH);
    lua_setfield(L, -2, "DEFAULT_BATCH");
    return 1;
}
