/*
 * sqlite.c -- `sibyl.sqlite.core`: SQLite connections whose queries run on
 * the worker pool. stdlib/sibyl/sqlite.lua re-exports it as `sibyl.sqlite`
 * and adds db:each(), db:transaction() and sqlite.blob(). This file is the
 * Lua binding: it checks arguments, converts SQL and parameters into jobs,
 * parks the task and pushes results. The job queue, the transaction lock
 * and cancellation are in sqlite_queue.c; the worker half (open, cache,
 * bind, step, read-only enforcement) in sqlite_engine.c. doc/sqlite.md is
 * the reference.
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
#include <assert.h>
#include <math.h>
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
#define MAX_PARAMS 32766                /* highest positional parameter index */
#define SQ_TCDATA 10                    /* lua_type() of LuaJIT FFI cdata */

static char db_key, cursor_key, blob_key, conv_key;

typedef struct {
    sq_conn *c;                 /* NULL once closed */
} db_ud;

typedef struct {
    sq_cursor *cur;             /* NULL once closed */
} cursor_ud;

/* ============================================================ Lua: results */

static void push_value(lua_State *co, const sq_val *v, const char *arena, int int64_str)
{
    switch (v->type) {
    case SQV_INT:
        if (int64_str && (v->u.i > (INT64_C(1) << 53) || v->u.i < -(INT64_C(1) << 53))) {
            char buf[32];
            snprintf(buf, sizeof buf, "%lld", (long long)v->u.i);
            lua_pushstring(co, buf);
        } else {
            lua_pushnumber(co, (lua_Number)v->u.i);
        }
        break;
    case SQV_FLOAT:
        lua_pushnumber(co, v->u.d);
        break;
    case SQV_TEXT:
    case SQV_BLOB:
        lua_pushlstring(co, arena + v->u.off, v->len);
        break;
    default:
        lua_pushnil(co);
        break;
    }
}

/* Push rows [first, first+count) as an array of tables keyed by column
 * name, with .columns. Returns 0, or -1 when the stack cannot grow. */
static int push_rows(lua_State *co, const sq_rows *r, size_t first, size_t count, int int64_str)
{
    if (!lua_checkstack(co, r->ncols + 8))
        return -1;
    lua_createtable(co, count > INT32_MAX ? INT32_MAX : (int)count, 1);
    int tidx = lua_gettop(co);
    lua_createtable(co, r->ncols, 0);
    for (int c = 0; c < r->ncols; c++) {
        lua_pushstring(co, r->arena.p + r->col_off[c]);
        lua_rawseti(co, -2, c + 1);
    }
    lua_setfield(co, tidx, "columns");
    int names = lua_gettop(co) + 1;
    for (int c = 0; c < r->ncols; c++)
        lua_pushstring(co, r->arena.p + r->col_off[c]);
    for (size_t i = 0; i < count; i++) {
        const sq_val *row = r->vals + (first + i) * (size_t)r->ncols;
        lua_createtable(co, 0, r->ncols);
        for (int c = 0; c < r->ncols; c++) {
            if (row[c].type == SQV_NULL)
                continue;
            lua_pushvalue(co, names + c);
            push_value(co, &row[c], r->arena.p, int64_str);
            lua_rawset(co, -3);
        }
        lua_rawseti(co, tidx, (int)(i + 1));
    }
    lua_settop(co, tidx);
    return 0;
}

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
            if (push_rows(co, &j->rows, 0, j->rows.nrows, j->int64_str) != 0)
                n = sb_fail(co, "too_large", "sqlite: the result has too many columns to return");
            break;
        case J_ROW:
            if (j->rows.nrows == 0) {
                lua_pushnil(co);
            } else if (push_rows(co, &j->rows, 0, 1, j->int64_str) != 0) {
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
            if (push_rows(co, &j->rows, 0, j->rows.nrows, j->int64_str) != 0) {
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

/* Queue a job and park the running task on it. */
static int submit(lua_State *L, sq_job *j)
{
    sq_conn *c = j->c;
    sb_sq_conn_ref(c);
    sb_sq_enqueue(c, j);
    sb_sq_pump(c);
    sb_sq_conn_unref(c);
    return sb_op_park(L, j->op);
}

/* ============================================================ Lua: params */

/* Convert one Lua value at idx into v (strings into arena). Returns 0, or
 * -1 with a message in err. Never raises (except on out of memory). */
static int to_val(lua_State *L, int idx, sq_val *v, sq_buf *arena, char *err, size_t errlen,
                  const char *where)
{
    size_t len;
    const char *s;
    memset(v, 0, sizeof *v);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return 0;
    case LUA_TBOOLEAN:
        v->type = SQV_INT;
        v->u.i = lua_toboolean(L, idx);
        return 0;
    case LUA_TNUMBER: {
        lua_Number d = lua_tonumber(L, idx);
        if (d == floor(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0) {
            v->type = SQV_INT;
            v->u.i = (int64_t)d;
        } else {
            v->type = SQV_FLOAT;
            v->u.d = d;
        }
        return 0;
    }
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        v->type = SQV_TEXT;
        goto bytes;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL)
            return 0;           /* json.null / sqlite.null */
        break;
    case LUA_TTABLE:
        if (lua_getmetatable(L, idx)) {
            sb_getmeta(L, &blob_key);
            int isblob = lua_rawequal(L, -1, -2);
            lua_pop(L, 2);
            if (isblob) {
                lua_rawgeti(L, idx, 1);
                s = lua_tolstring(L, -1, &len);
                lua_pop(L, 1);  /* the wrapper still holds the string */
                if (s == NULL)
                    break;
                v->type = SQV_BLOB;
                goto bytes;
            }
        }
        break;
    case SQ_TCDATA:
        sb_getmeta(L, &conv_key);
        lua_pushvalue(L, idx);
        if (lua_pcall(L, 1, 2, 0) != 0) {
            snprintf(err, errlen, "%s: %s", where, lua_tostring(L, -1));
            lua_pop(L, 1);
            return -1;
        }
        s = lua_tolstring(L, -2, &len);
        if (s && lua_toboolean(L, -1)) {            /* an int64 cdata, as decimal text */
            v->type = SQV_INT;
            v->u.i = strtoll(s, NULL, 10);
            lua_pop(L, 2);
            return 0;
        }
        v->type = SQV_BLOB;
        v->u.off = s ? sb_sq_buf_add(arena, s, len) : (size_t)-1;
        v->len = len;
        lua_pop(L, 2);
        if (v->u.off == (size_t)-1) {
            snprintf(err, errlen, "%s: out of memory", where);
            return -1;
        }
        return 0;
    default:
        break;
    }
    snprintf(err, errlen, "%s: cannot bind a %s value; pass nil, a boolean, a number, a string, "
             "sqlite.null or sqlite.blob(data)", where, luaL_typename(L, idx));
    return -1;

bytes:
    v->len = len;
    v->u.off = sb_sq_buf_add(arena, s, len);
    if (v->u.off == (size_t)-1) {
        snprintf(err, errlen, "%s: out of memory", where);
        return -1;
    }
    return 0;
}

/*
 * Read params (nil, or a table: integer keys for ? / ?N, string keys for
 * :name / @name / $name) into p. Returns 0, or -1 with a message in err
 * (the caller frees p and raises).
 */
static int read_params(lua_State *L, int idx, sq_params *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    if (lua_isnoneornil(L, idx))
        return 0;
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "params must be a table (an array for ?, keys for :name), got %s",
                 luaL_typename(L, idx));
        return -1;
    }
    int maxpos = 0, nnamed = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER) {
            lua_Number k = lua_tonumber(L, -1);
            if (k != floor(k) || k < 1 || k > MAX_PARAMS) {
                lua_pop(L, 1);
                snprintf(err, errlen, "params: key %.14g is not a parameter index (1..%d)", k,
                         MAX_PARAMS);
                return -1;
            }
            if ((int)k > maxpos)
                maxpos = (int)k;
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            nnamed++;
        } else {
            snprintf(err, errlen, "params: keys must be integers or names, got a %s key",
                     luaL_typename(L, -1));
            lua_pop(L, 1);
            return -1;
        }
    }
    if ((maxpos && (p->pos = calloc((size_t)maxpos, sizeof *p->pos)) == NULL)
        || (nnamed && ((p->named = calloc((size_t)nnamed, sizeof *p->named)) == NULL
                       || (p->name_off = calloc((size_t)nnamed, sizeof *p->name_off)) == NULL))) {
        snprintf(err, errlen, "params: out of memory");
        return -1;
    }
    p->npos = maxpos;
    char where[96];
    for (int i = 1; i <= maxpos; i++) {
        lua_rawgeti(L, idx, i);
        snprintf(where, sizeof where, "params[%d]", i);
        int rc = to_val(L, lua_gettop(L), &p->pos[i - 1], &p->arena, err, errlen, where);
        lua_pop(L, 1);
        if (rc != 0)
            return -1;
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            size_t len;
            const char *name = lua_tolstring(L, -2, &len);
            snprintf(where, sizeof where, "params.%.80s", name);
            sq_val *v = &p->named[p->nnamed];
            if (to_val(L, lua_gettop(L), v, &p->arena, err, errlen, where) != 0) {
                lua_pop(L, 2);
                return -1;
            }
            size_t off = sb_sq_buf_add(&p->arena, name, len);
            if (off == (size_t)-1) {
                lua_pop(L, 2);
                snprintf(err, errlen, "params: out of memory");
                return -1;
            }
            p->name_off[p->nnamed++] = off;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* =========================================================== Lua: options */

/* Raise when the options table at idx has a key outside `known`. */
static void check_known(lua_State *L, int idx, const char *const known[], const char *fn)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        int ok = 0;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (const char *const *k = known; *k && !ok; k++)
                ok = strcmp(*k, lua_tostring(L, -1)) == 0;
        if (!ok) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (const char *const *k = known; *k; k++) {
                luaL_addstring(&b, *k);
                if (k[1])
                    luaL_addstring(&b, ", ");
            }
            luaL_pushresult(&b);
            luaL_error(L, "%s: unknown option '%s' (known: %s)", fn,
                       lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : luaL_typename(L, -2),
                       lua_tostring(L, -1));
        }
    }
}

static int opt_bool(lua_State *L, int idx, const char *k, int def, const char *fn)
{
    if (idx == 0)
        return def;
    lua_getfield(L, idx, k);
    int v = def;
    if (lua_isboolean(L, -1))
        v = lua_toboolean(L, -1);
    else if (!lua_isnil(L, -1))
        luaL_error(L, "%s: option '%s' must be a boolean, got %s", fn, k, luaL_typename(L, -1));
    lua_pop(L, 1);
    return v;
}

static lua_Number opt_num(lua_State *L, int idx, const char *k, lua_Number def, lua_Number lo,
                          lua_Number hi, const char *fn)
{
    if (idx == 0)
        return def;
    lua_getfield(L, idx, k);
    lua_Number v = def;
    if (lua_type(L, -1) == LUA_TNUMBER) {
        v = lua_tonumber(L, -1);
        if (!(v >= lo && v <= hi) || v != floor(v))
            luaL_error(L, "%s: option '%s' must be an integer from %.0f to %.0f, got %.14g", fn, k,
                       lo, hi, v);
    } else if (!lua_isnil(L, -1)) {
        luaL_error(L, "%s: option '%s' must be a number, got %s", fn, k, luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return v;
}

static int opt_int64(lua_State *L, int idx, int def, const char *fn)
{
    if (idx == 0)
        return def;
    lua_getfield(L, idx, "int64");
    int v = def;
    if (!lua_isnil(L, -1)) {
        const char *s = lua_tostring(L, -1);
        if (lua_type(L, -1) != LUA_TSTRING
            || (strcmp(s, "number") != 0 && strcmp(s, "string") != 0))
            luaL_error(L, "%s: option 'int64' must be \"number\" or \"string\"", fn);
        v = strcmp(s, "string") == 0;
    }
    lua_pop(L, 1);
    return v;
}

/* The options table at idx (0 when absent); raises when it is not a table. */
static int opts_index(lua_State *L, int idx, const char *fn)
{
    if (lua_isnoneornil(L, idx))
        return 0;
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: options must be a table, got %s", fn, luaL_typename(L, idx));
    return idx;
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
    int o = opts_index(L, 2, "sqlite.open");
    if (o)
        check_known(L, o, known, "sqlite.open");
    sq_open_cfg cfg;
    cfg.readonly = opt_bool(L, o, "readonly", 0, "sqlite.open");
    cfg.wal = opt_bool(L, o, "wal", 1, "sqlite.open");
    cfg.create = opt_bool(L, o, "create", 1, "sqlite.open");
    cfg.busy_timeout_ms = (int)opt_num(L, o, "busy_timeout", DEFAULT_BUSY_TIMEOUT, 0, 86400000,
                                       "sqlite.open");
    cfg.cache_size = (int)opt_num(L, o, "cache_size", DEFAULT_CACHE_SIZE, 0, 10000, "sqlite.open");
    int max_rows = (int)opt_num(L, o, "max_rows", DEFAULT_MAX_ROWS, 1, 1e9, "sqlite.open");
    int batch = (int)opt_num(L, o, "batch", DEFAULT_BATCH, 1, 1e6, "sqlite.open");
    int int64_str = opt_int64(L, o, 0, "sqlite.open");

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
    if (pidx && read_params(L, pidx, &j->params, err, sizeof err) != 0)
        goto fail;
    j->limit = limit;
    j->int64_str = int64_str;
    j->counted = 1;
    ((sq_op_data *)sb_op_data(op))->job = j;
    return submit(L, j);

fail:
    sb_sq_job_free(j);
    sb_op_abort(op);
    luaL_where(L, 1);
    lua_pushstring(L, err);
    lua_concat(L, 2);
    return lua_error(L);
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
    int o = opts_index(L, 4, "db:query");
    if (o)
        check_known(L, o, query_opts, "db:query");
    size_t max_rows = (size_t)opt_num(L, o, "max_rows", c ? c->max_rows : 1, 1, 1e9, "db:query");
    int int64_str = opt_int64(L, o, c ? c->int64_str : 0, "db:query");
    if (c == NULL || c->closed)
        return fail_closed(L);
    return start_statement(L, c, J_QUERY, lua_isnoneornil(L, 3) ? 0 : 3, max_rows, int64_str);
}

static int l_row(lua_State *L)
{
    sq_conn *c = check_db(L);
    luaL_checkstring(L, 2);
    int o = opts_index(L, 4, "db:row");
    if (o)
        check_known(L, o, query_opts + 1, "db:row");
    int int64_str = opt_int64(L, o, c ? c->int64_str : 0, "db:row");
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
    int o = opts_index(L, 4, "db:each");
    if (o)
        check_known(L, o, known, "db:each");
    size_t batch = (size_t)opt_num(L, o, "batch", c ? (lua_Number)c->batch : 1, 1, 1e6, "db:each");
    int int64_str = opt_int64(L, o, c ? c->int64_str : 0, "db:each");
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
    if (read_params(L, 3, &cur->params, err, sizeof err) != 0) {
        sb_sq_params_free(&cur->params);
        free(cur->sql);
        free(cur);
        luaL_where(L, 1);
        lua_pushstring(L, err);
        lua_concat(L, 2);
        return lua_error(L);
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
                sb_sq_conn_ref(c);
                sb_sq_enqueue(c, j);
                sb_sq_pump(c);
                sb_sq_conn_unref(c);
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

/* core.blob(s) -> a wrapper that binds s as a BLOB. */
static int l_blob(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_createtable(L, 1, 0);
    lua_pushlstring(L, s, len);
    lua_rawseti(L, -2, 1);
    sb_getmeta(L, &blob_key);
    lua_setmetatable(L, -2);
    return 1;
}

static int l_blob_tostring(lua_State *L)
{
    lua_rawgeti(L, 1, 1);
    lua_pushfstring(L, "sibyl.sqlite.blob (%d bytes)", (int)lua_objlen(L, -1));
    return 1;
}

/* core._set_cdata_converter(fn): fn(cdata) -> bytes | decimal, is_int64. */
static int l_set_conv(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_pushlightuserdata(L, &conv_key);
    lua_pushvalue(L, 1);
    lua_rawset(L, LUA_REGISTRYINDEX);
    return 0;
}

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
    {"blob", l_blob},
    {"sqlite_version", l_version},
    {"_set_cdata_converter", l_set_conv},
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
    sb_newmeta(L, &blob_key, "sibyl.sqlite.blob");
    lua_pushcfunction(L, l_blob_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushnil(L);
    lua_setfield(L, -2, "__index");         /* a plain table: blob[1] is the data */
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
