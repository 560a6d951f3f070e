/*
 * sqlite_engine.c -- the worker-thread half of `sibyl.sqlite`: opening and
 * configuring a connection, the prepared-statement cache, binding, stepping
 * rows into buffers, scripts, and read-only enforcement. No Lua here; the
 * binding is in sqlite.c and sqlite_values.c, the per-connection job queue
 * in sqlite_queue.c.
 *
 * Threading: a connection is opened with SQLITE_OPEN_NOMUTEX (SQLite's
 * multi-thread mode). That is safe because sqlite.c runs at most one job per
 * connection at a time, each on some worker thread, with the pool's mutex
 * ordering one job's memory effects before the next. The only call made
 * from the loop thread while a job runs is sqlite3_interrupt(), which SQLite
 * allows from any thread.
 *
 * Read-only mode is three layers deep:
 *   1. the file is opened with SQLITE_OPEN_READONLY and PRAGMA query_only=1;
 *   2. an authorizer denies every write, schema change, ATTACH/DETACH,
 *      PRAGMA outside a read-only allowlist, load_extension() and
 *      fts3_tokenizer();
 *   3. any prepared statement for which sqlite3_stmt_readonly() is false
 *      (VACUUM, PRAGMA journal_mode, BEGIN IMMEDIATE...) is refused before
 *      it runs.
 * A refusal records what was refused in e->deny, and the job reports kind
 * "readonly". Extension loading is switched off on every connection.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "sb_hash.h"
#include "sb_sqlite.h"

/* ---------------------------------------------------------------- buffers */

size_t sb_sq_buf_add(sq_buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (p == NULL)
            return (size_t)-1;
        b->p = p;
        b->cap = cap;
    }
    size_t off = b->len;
    if (n)
        memcpy(b->p + off, data, n);
    b->p[off + n] = '\0';           /* names and text stay NUL-terminated */
    b->len += n + 1;
    return off;
}

void sb_sq_buf_free(sq_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void sb_sq_params_free(sq_params *p)
{
    free(p->pos);
    free(p->named);
    free(p->name_off);
    sb_sq_buf_free(&p->arena);
    memset(p, 0, sizeof *p);
}

void sb_sq_rows_free(sq_rows *r)
{
    free(r->col_off);
    free(r->vals);
    sb_sq_buf_free(&r->arena);
    memset(r, 0, sizeof *r);
}

/* ----------------------------------------------------------------- errors */

void sb_sq_err_set(sq_err *e, int rc, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    free(e->msg);
    e->rc = rc;
    e->msg = strdup(buf);
}

void sb_sq_err_clear(sq_err *e)
{
    free(e->msg);
    memset(e, 0, sizeof *e);
}

const char *sb_sq_code_name(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK: return "SQLITE_OK";
    case SQLITE_ERROR: return "SQLITE_ERROR";
    case SQLITE_INTERNAL: return "SQLITE_INTERNAL";
    case SQLITE_PERM: return "SQLITE_PERM";
    case SQLITE_ABORT: return "SQLITE_ABORT";
    case SQLITE_BUSY: return "SQLITE_BUSY";
    case SQLITE_LOCKED: return "SQLITE_LOCKED";
    case SQLITE_NOMEM: return "SQLITE_NOMEM";
    case SQLITE_READONLY: return "SQLITE_READONLY";
    case SQLITE_INTERRUPT: return "SQLITE_INTERRUPT";
    case SQLITE_IOERR: return "SQLITE_IOERR";
    case SQLITE_CORRUPT: return "SQLITE_CORRUPT";
    case SQLITE_NOTFOUND: return "SQLITE_NOTFOUND";
    case SQLITE_FULL: return "SQLITE_FULL";
    case SQLITE_CANTOPEN: return "SQLITE_CANTOPEN";
    case SQLITE_PROTOCOL: return "SQLITE_PROTOCOL";
    case SQLITE_EMPTY: return "SQLITE_EMPTY";
    case SQLITE_SCHEMA: return "SQLITE_SCHEMA";
    case SQLITE_TOOBIG: return "SQLITE_TOOBIG";
    case SQLITE_CONSTRAINT: return "SQLITE_CONSTRAINT";
    case SQLITE_MISMATCH: return "SQLITE_MISMATCH";
    case SQLITE_MISUSE: return "SQLITE_MISUSE";
    case SQLITE_NOLFS: return "SQLITE_NOLFS";
    case SQLITE_AUTH: return "SQLITE_AUTH";
    case SQLITE_FORMAT: return "SQLITE_FORMAT";
    case SQLITE_RANGE: return "SQLITE_RANGE";
    case SQLITE_NOTADB: return "SQLITE_NOTADB";
    default: return "SQLITE_ERROR";
    }
}

const char *sb_sq_extended_name(int rc)
{
    switch (rc) {
    case SQLITE_CONSTRAINT_CHECK: return "SQLITE_CONSTRAINT_CHECK";
    case SQLITE_CONSTRAINT_FOREIGNKEY: return "SQLITE_CONSTRAINT_FOREIGNKEY";
    case SQLITE_CONSTRAINT_NOTNULL: return "SQLITE_CONSTRAINT_NOTNULL";
    case SQLITE_CONSTRAINT_PRIMARYKEY: return "SQLITE_CONSTRAINT_PRIMARYKEY";
    case SQLITE_CONSTRAINT_UNIQUE: return "SQLITE_CONSTRAINT_UNIQUE";
    case SQLITE_CONSTRAINT_TRIGGER: return "SQLITE_CONSTRAINT_TRIGGER";
    case SQLITE_CONSTRAINT_ROWID: return "SQLITE_CONSTRAINT_ROWID";
    case SQLITE_CONSTRAINT_DATATYPE: return "SQLITE_CONSTRAINT_DATATYPE";
    case SQLITE_BUSY_SNAPSHOT: return "SQLITE_BUSY_SNAPSHOT";
    case SQLITE_BUSY_RECOVERY: return "SQLITE_BUSY_RECOVERY";
    case SQLITE_READONLY_DBMOVED: return "SQLITE_READONLY_DBMOVED";
    case SQLITE_READONLY_RECOVERY: return "SQLITE_READONLY_RECOVERY";
    case SQLITE_READONLY_CANTLOCK: return "SQLITE_READONLY_CANTLOCK";
    case SQLITE_CANTOPEN_ISDIR: return "SQLITE_CANTOPEN_ISDIR";
    default: return NULL;
    }
}

void sb_sq_eng_error(sq_engine *e, int rc, sq_err *err)
{
    if (e->deny[0]) {
        sb_sq_err_set(err, rc ? rc : SQLITE_AUTH, "%s", e->deny);
        err->readonly = 1;
        return;
    }
    const char *msg = e->db ? sqlite3_errmsg(e->db) : sqlite3_errstr(rc);
    if (msg == NULL)
        msg = sqlite3_errstr(rc);
    if (e->readonly && strstr(msg, "may not be modified")) {
        /* SQLite refuses writes to sqlite_master before asking the authorizer */
        sb_sq_err_set(err, rc, "writing the schema table (%s)", msg);
        err->readonly = 1;
        return;
    }
    sb_sq_err_set(err, rc, "%s", msg);
    if ((rc & 0xff) == SQLITE_READONLY)
        err->readonly = 1;
}

/* ------------------------------------------------------------- read-only */

/* Pragmas that never write, whatever their argument (a table or index name,
 * a row count for integrity_check). */
static const char *const pragma_introspect[] = {
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "database_list", "collation_list", "function_list",
    "module_list", "pragma_list", "compile_options", "integrity_check", "quick_check", NULL
};

/* Settings that may be read (no argument) but never set. */
static const char *const pragma_readable[] = {
    "user_version", "schema_version", "application_id", "page_size", "page_count",
    "max_page_count", "freelist_count", "encoding", "foreign_keys", "data_version",
    "auto_vacuum", "cache_size", "query_only", "synchronous", "temp_store", "busy_timeout",
    "recursive_triggers", "secure_delete", "case_sensitive_like", NULL
};

static int in_list(const char *const *list, const char *name)
{
    for (; *list; list++)
        if (strcasecmp(*list, name) == 0)
            return 1;
    return 0;
}

static const char *action_name(int action)
{
    switch (action) {
    case SQLITE_CREATE_INDEX: return "CREATE INDEX";
    case SQLITE_CREATE_TABLE: return "CREATE TABLE";
    case SQLITE_CREATE_TEMP_INDEX: return "CREATE TEMP INDEX";
    case SQLITE_CREATE_TEMP_TABLE: return "CREATE TEMP TABLE";
    case SQLITE_CREATE_TEMP_TRIGGER: return "CREATE TEMP TRIGGER";
    case SQLITE_CREATE_TEMP_VIEW: return "CREATE TEMP VIEW";
    case SQLITE_CREATE_TRIGGER: return "CREATE TRIGGER";
    case SQLITE_CREATE_VIEW: return "CREATE VIEW";
    case SQLITE_CREATE_VTABLE: return "CREATE VIRTUAL TABLE";
    case SQLITE_DELETE: return "DELETE";
    case SQLITE_DROP_INDEX: return "DROP INDEX";
    case SQLITE_DROP_TABLE: return "DROP TABLE";
    case SQLITE_DROP_TEMP_INDEX: return "DROP TEMP INDEX";
    case SQLITE_DROP_TEMP_TABLE: return "DROP TEMP TABLE";
    case SQLITE_DROP_TEMP_TRIGGER: return "DROP TEMP TRIGGER";
    case SQLITE_DROP_TEMP_VIEW: return "DROP TEMP VIEW";
    case SQLITE_DROP_TRIGGER: return "DROP TRIGGER";
    case SQLITE_DROP_VIEW: return "DROP VIEW";
    case SQLITE_DROP_VTABLE: return "DROP VIRTUAL TABLE";
    case SQLITE_INSERT: return "INSERT";
    case SQLITE_UPDATE: return "UPDATE";
    case SQLITE_ATTACH: return "ATTACH";
    case SQLITE_DETACH: return "DETACH";
    case SQLITE_ALTER_TABLE: return "ALTER TABLE";
    case SQLITE_REINDEX: return "REINDEX";
    case SQLITE_ANALYZE: return "ANALYZE";
    default: return "this statement";
    }
}

/* Record why a statement is refused: the first refusal, except that the
 * schema-table INSERT/DELETE a CREATE or DROP checks first gives way to the
 * CREATE/DROP itself, which says more. */
static int deny_as(sq_engine *e, int weak, const char *fmt, ...)
{
    if (e->deny[0] == '\0' || (e->deny_weak && !weak)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->deny, sizeof e->deny, fmt, ap);
        va_end(ap);
        e->deny_weak = weak;
    }
    return SQLITE_DENY;
}

#define deny(e, ...) deny_as((e), 0, __VA_ARGS__)

static int is_schema_table(const char *name)
{
    return name && (strcasecmp(name, "sqlite_master") == 0 || strcasecmp(name, "sqlite_schema") == 0
                    || strcasecmp(name, "sqlite_temp_master") == 0
                    || strcasecmp(name, "sqlite_temp_schema") == 0);
}

/*
 * The authorizer of read-only connections: called while a statement is
 * compiled (a1..a2 as documented for sqlite3_set_authorizer). Reads,
 * transactions and functions pass; everything else is denied unless it is
 * a pragma on the allowlists.
 */
static int authorize(void *ud, int action, const char *a1, const char *a2, const char *dbname,
                     const char *trigger)
{
    sq_engine *e = ud;
    (void)dbname;
    (void)trigger;
    switch (action) {
    case SQLITE_SELECT:
    case SQLITE_READ:
    case SQLITE_RECURSIVE:
    case SQLITE_TRANSACTION:
    case SQLITE_SAVEPOINT:
        return SQLITE_OK;
    case SQLITE_FUNCTION:
        if (a2 && (strcasecmp(a2, "load_extension") == 0 || strcasecmp(a2, "fts3_tokenizer") == 0))
            return deny(e, "calling %s()", a2);
        return SQLITE_OK;
    case SQLITE_PRAGMA:
        if (a1 && in_list(pragma_introspect, a1))
            return SQLITE_OK;
        if (a1 && a2 == NULL && in_list(pragma_readable, a1))
            return SQLITE_OK;
        if (a2)
            return deny(e, "PRAGMA %s = %s", a1 ? a1 : "?", a2);
        return deny(e, "PRAGMA %s (not on the read-only allowlist)", a1 ? a1 : "?");
    case SQLITE_UPDATE:
        /* Setting up an eponymous virtual table (pragma_table_info(...))
         * checks an internal UPDATE of the schema table. A user's UPDATE of
         * it is refused by SQLite before it gets here (writable_schema is
         * off and DEFENSIVE keeps it off), and layers 1 and 3 stop any write. */
        if (a1 && (strcasecmp(a1, "sqlite_master") == 0 || strcasecmp(a1, "sqlite_schema") == 0))
            return SQLITE_OK;
        return deny(e, "UPDATE on table '%s'", a1 ? a1 : "?");
    case SQLITE_INSERT:
    case SQLITE_DELETE:
        if (is_schema_table(a1)) {
            /* CREATE and DROP check this first and stop at a denial, so let
             * it pass to reach the CREATE/DROP check (which names what is
             * refused); the statement is refused after compiling anyway,
             * because a refusal is on record. */
            deny_as(e, 1, "%s on table '%s'", action_name(action), a1);
            return SQLITE_OK;
        }
        return deny(e, "%s on table '%s'", action_name(action), a1 ? a1 : "?");
    default:
        return deny(e, "%s", action_name(action));
    }
}

/* Record a refusal for a statement sqlite3_stmt_readonly() says writes:
 * name it by its first word (two for PRAGMA), e.g. "VACUUM". */
static void deny_writer(sq_engine *e, const char *sql)
{
    char what[64];
    size_t n = 0;
    int words = 0;
    const char *p = sql;
    while (*p && n + 1 < sizeof what && words < 2) {
        while (*p && isspace((unsigned char)*p))
            p++;
        if (n)
            what[n++] = ' ';
        while (*p && !isspace((unsigned char)*p) && *p != ';' && *p != '(' && *p != '='
               && n + 1 < sizeof what)
            what[n++] = (char)toupper((unsigned char)*p++);
        words++;
        if (words == 1 && !(n == 6 && memcmp(what, "PRAGMA", 6) == 0))
            break;
    }
    while (n && what[n - 1] == ' ')
        n--;
    what[n] = '\0';
    deny(e, "%s (the statement would write)", n ? what : "the statement");
}

/* ------------------------------------------------------------ open/close */

static int exec_simple(sq_engine *e, const char *sql, sq_err *err)
{
    int rc = sqlite3_exec(e->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        sb_sq_eng_error(e, rc, err);
    return rc;
}

/*
 * The busy handler: wait for another connection's lock in short steps (1 ms
 * growing to 20 ms) up to busy_timeout, and give up at once when the job
 * was abandoned. sqlite3_busy_timeout's handler cannot be interrupted.
 */
static int busy_wait(void *ud, int count)
{
    sq_engine *e = ud;
    if (count == 0)
        e->busy_waited_ms = 0;
    if (atomic_load(&e->stop) || e->busy_waited_ms >= e->busy_timeout_ms)
        return 0;
    int step = count < 20 ? count + 1 : 20;
    if (step > e->busy_timeout_ms - e->busy_waited_ms)
        step = e->busy_timeout_ms - e->busy_waited_ms;
    struct timespec ts = {0, (long)step * 1000000L};
    nanosleep(&ts, NULL);
    e->busy_waited_ms += step;
    return 1;
}

void sb_sq_eng_stop(sq_engine *e, int interrupt)
{
    atomic_store(&e->stop, 1);
    if (interrupt && e->db)
        sqlite3_interrupt(e->db);
}

void sb_sq_eng_job_start(sq_engine *e)
{
    atomic_store(&e->stop, 0);
}

int sb_sq_eng_open(sq_engine *e, const char *path, const sq_open_cfg *cfg, sq_err *err)
{
    e->db = NULL;
    e->mru = e->lru = NULL;
    e->cache_n = 0;
    e->deny[0] = '\0';
    e->deny_weak = 0;
    e->readonly = cfg->readonly;
    e->cache_cap = cfg->cache_size;
    e->busy_timeout_ms = cfg->busy_timeout_ms;
    int flags = SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
    if (cfg->readonly)
        flags |= SQLITE_OPEN_READONLY;
    else
        flags |= SQLITE_OPEN_READWRITE | (cfg->create ? SQLITE_OPEN_CREATE : 0);
    int rc = sqlite3_open_v2(path, &e->db, flags, NULL);
    if (rc != SQLITE_OK) {
        sb_sq_eng_error(e, rc, err);
        sqlite3_close(e->db);
        e->db = NULL;
        return rc;
    }
    sqlite3_extended_result_codes(e->db, 1);
    sqlite3_busy_handler(e->db, busy_wait, e);
    sqlite3_db_config(e->db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, (int *)NULL);
    /* Read the header now, so a file that is not a database fails here. */
    rc = exec_simple(e, "SELECT count(*) FROM sqlite_master", err);
    if (rc == SQLITE_OK && cfg->wal && !cfg->readonly)
        rc = exec_simple(e, "PRAGMA journal_mode=WAL", err);
    if (rc == SQLITE_OK && cfg->readonly) {
        rc = exec_simple(e, "PRAGMA query_only=1", err);
        sqlite3_db_config(e->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
        sqlite3_db_config(e->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_set_authorizer(e->db, authorize, e);
    }
    if (rc != SQLITE_OK) {
        if (err->rc == SQLITE_OK)
            sb_sq_eng_error(e, rc, err);
        sqlite3_close(e->db);
        e->db = NULL;
    }
    return rc;
}

static void stmt_unlink(sq_engine *e, sq_stmt *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        e->mru = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        e->lru = s->prev;
    s->prev = s->next = NULL;
    e->cache_n--;
}

static void stmt_push_front(sq_engine *e, sq_stmt *s)
{
    s->prev = NULL;
    s->next = e->mru;
    if (e->mru)
        e->mru->prev = s;
    e->mru = s;
    if (e->lru == NULL)
        e->lru = s;
    e->cache_n++;
}

void sb_sq_eng_close(sq_engine *e)
{
    if (e->db == NULL)
        return;
    while (e->mru) {
        sq_stmt *s = e->mru;
        stmt_unlink(e, s);
        sqlite3_finalize(s->st);
        free(s);
    }
    /* Every statement we prepared is in the list (cursors' too). Statements
     * of virtual tables (FTS5) belong to them: close finalizes those. */
    sqlite3_close_v2(e->db);
    e->db = NULL;
}

/* ------------------------------------------------------------ statements */

/* Finalize least recently used statements nobody holds until the cache
 * fits its capacity. */
static void evict(sq_engine *e)
{
    sq_stmt *s = e->lru;
    while (e->cache_n > e->cache_cap && s) {
        sq_stmt *prev = s->prev;
        if (!s->in_use) {
            stmt_unlink(e, s);
            sqlite3_finalize(s->st);
            free(s);
        }
        s = prev;
    }
}

/* Is the text from p to end only blanks and comments (no further statement)? */
static int rest_is_empty(sq_engine *e, const char *p, const char *end)
{
    while (p < end) {
        while (p < end && (isspace((unsigned char)*p) || *p == ';'))
            p++;
        if (p == end)
            return 1;
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        int rc = sqlite3_prepare_v2(e->db, p, (int)(end - p), &st, &tail);
        if (rc != SQLITE_OK || st != NULL) {
            sqlite3_finalize(st);
            return 0;
        }
        if (tail == NULL || tail <= p)
            return 0;
        p = tail;
    }
    return 1;
}

sq_stmt *sb_sq_eng_prepare(sq_engine *e, const char *sql, size_t len, int *hit, sq_err *err)
{
    uint32_t h = (uint32_t)sb_hash64(sql, len, SB_HASH_SEED);
    *hit = 0;
    for (sq_stmt *s = e->mru; s; s = s->next) {
        if (!s->in_use && s->hash == h && s->len == len && memcmp(s->sql, sql, len) == 0) {
            stmt_unlink(e, s);
            stmt_push_front(e, s);
            s->in_use = 1;
            *hit = 1;
            return s;
        }
    }
    e->deny[0] = '\0';
    e->deny_weak = 0;
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    unsigned flags = e->cache_cap > 0 ? SQLITE_PREPARE_PERSISTENT : 0;
    int rc = sqlite3_prepare_v3(e->db, sql, (int)len, flags, &st, &tail);
    if (rc != SQLITE_OK) {
        sb_sq_eng_error(e, rc, err);
        return NULL;
    }
    if (st == NULL) {
        sb_sq_err_set(err, SQLITE_MISUSE, "the SQL text holds no statement");
        return NULL;
    }
    if (!rest_is_empty(e, tail, sql + len)) {
        sqlite3_finalize(st);
        e->deny[0] = '\0';
        e->deny_weak = 0;
        sb_sq_err_set(err, SQLITE_MISUSE, "the SQL text holds more than one statement; "
                                       "run scripts with db:exec, or send one statement at a time");
        return NULL;
    }
    if (e->readonly && (e->deny[0] || !sqlite3_stmt_readonly(st))) {
        deny_writer(e, sql);        /* keeps an earlier refusal */
        sqlite3_finalize(st);
        sb_sq_eng_error(e, SQLITE_AUTH, err);
        return NULL;
    }
    sq_stmt *s = malloc(sizeof *s + len + 1);
    if (s == NULL) {
        sqlite3_finalize(st);
        sb_sq_err_set(err, SQLITE_NOMEM, "out of memory");
        return NULL;
    }
    s->st = st;
    s->hash = h;
    s->in_use = 1;
    s->len = len;
    memcpy(s->sql, sql, len);
    s->sql[len] = '\0';
    stmt_push_front(e, s);
    evict(e);
    return s;
}

void sb_sq_eng_release(sq_engine *e, sq_stmt *s)
{
    sqlite3_reset(s->st);
    sqlite3_clear_bindings(s->st);
    s->in_use = 0;
    evict(e);
}

/* ---------------------------------------------------------------- binding */

static int bind_one(sqlite3_stmt *st, int i, const sq_val *v, const char *arena)
{
    switch (v->type) {
    case SQV_INT: return sqlite3_bind_int64(st, i, v->u.i);
    case SQV_FLOAT: return sqlite3_bind_double(st, i, v->u.d);
    case SQV_TEXT:
        return sqlite3_bind_text64(st, i, arena + v->u.off, v->len, SQLITE_TRANSIENT, SQLITE_UTF8);
    case SQV_BLOB: return sqlite3_bind_blob64(st, i, arena + v->u.off, v->len, SQLITE_TRANSIENT);
    default: return sqlite3_bind_null(st, i);
    }
}

int sb_sq_eng_bind(sq_engine *e, sq_stmt *s, const sq_params *p, sq_err *err)
{
    sqlite3_stmt *st = s->st;
    int n = sqlite3_bind_parameter_count(st);
    if (p->npos > n) {
        sb_sq_err_set(err, SQLITE_RANGE, "the statement takes %d parameter%s but params holds %d "
                   "positional value%s", n, n == 1 ? "" : "s", p->npos, p->npos == 1 ? "" : "s");
        return SQLITE_RANGE;
    }
    char used_small[64] = {0};
    char *used = p->nnamed <= (int)sizeof used_small ? used_small : calloc((size_t)p->nnamed, 1);
    if (used == NULL) {
        sb_sq_err_set(err, SQLITE_NOMEM, "out of memory");
        return SQLITE_NOMEM;
    }
    int rc = SQLITE_OK;
    for (int i = 1; i <= n && rc == SQLITE_OK; i++) {
        const char *name = sqlite3_bind_parameter_name(st, i);
        const sq_val *v = NULL;
        if (name && name[0] != '?') {
            for (int k = 0; k < p->nnamed; k++) {
                if (strcmp(p->arena.p + p->name_off[k], name + 1) == 0) {
                    v = &p->named[k];
                    used[k] = 1;
                }
            }
        }
        if (v == NULL && i <= p->npos)
            v = &p->pos[i - 1];
        if (v)
            rc = bind_one(st, i, v, p->arena.p);
    }
    if (rc != SQLITE_OK) {
        sb_sq_eng_error(e, rc, err);
    } else {
        for (int k = 0; k < p->nnamed; k++) {
            if (!used[k]) {
                sb_sq_err_set(err, SQLITE_RANGE, "params.%s matches no :%s, @%s or $%s parameter "
                           "in the statement; check the spelling",
                           p->arena.p + p->name_off[k], p->arena.p + p->name_off[k],
                           p->arena.p + p->name_off[k], p->arena.p + p->name_off[k]);
                rc = SQLITE_RANGE;
                break;
            }
        }
    }
    if (used != used_small)
        free(used);
    return rc;
}

/* --------------------------------------------------------------- stepping */

static int add_value(sq_rows *r, sqlite3_stmt *st, int col, sq_val *v)
{
    v->type = SQV_NULL;
    v->len = 0;
    switch (sqlite3_column_type(st, col)) {
    case SQLITE_INTEGER:
        v->type = SQV_INT;
        v->u.i = sqlite3_column_int64(st, col);
        return 0;
    case SQLITE_FLOAT:
        v->type = SQV_FLOAT;
        v->u.d = sqlite3_column_double(st, col);
        return 0;
    case SQLITE_TEXT: {
        const unsigned char *t = sqlite3_column_text(st, col);
        v->type = SQV_TEXT;
        v->len = (size_t)sqlite3_column_bytes(st, col);
        v->u.off = sb_sq_buf_add(&r->arena, t, v->len);
        return v->u.off == (size_t)-1 ? -1 : 0;
    }
    case SQLITE_BLOB: {
        const void *b = sqlite3_column_blob(st, col);
        v->type = SQV_BLOB;
        v->len = (size_t)sqlite3_column_bytes(st, col);
        v->u.off = sb_sq_buf_add(&r->arena, b, v->len);
        return v->u.off == (size_t)-1 ? -1 : 0;
    }
    default:
        return 0;
    }
}

static int add_row(sq_rows *r, sqlite3_stmt *st)
{
    size_t need = (r->nrows + 1) * (size_t)r->ncols;
    if (need > r->cap) {
        size_t cap = r->cap ? r->cap * 2 : (size_t)r->ncols * 16;
        while (cap < need)
            cap *= 2;
        sq_val *v = realloc(r->vals, cap * sizeof *v);
        if (v == NULL)
            return -1;
        r->vals = v;
        r->cap = cap;
    }
    sq_val *row = r->vals + r->nrows * (size_t)r->ncols;
    for (int c = 0; c < r->ncols; c++)
        if (add_value(r, st, c, &row[c]) != 0)
            return -1;
    r->nrows++;
    return 0;
}

static int take_columns(sq_rows *r, sqlite3_stmt *st)
{
    r->ncols = sqlite3_column_count(st);
    r->col_off = calloc(r->ncols > 0 ? (size_t)r->ncols : 1, sizeof *r->col_off);
    if (r->col_off == NULL)
        return -1;
    for (int c = 0; c < r->ncols; c++) {
        const char *name = sqlite3_column_name(st, c);
        if (name == NULL)
            return -1;
        r->col_off[c] = sb_sq_buf_add(&r->arena, name, strlen(name));
        if (r->col_off[c] == (size_t)-1)
            return -1;
    }
    return 0;
}

int sb_sq_eng_step(sq_engine *e, sq_stmt *s, sq_rows *r, size_t limit, int keep, int *eof,
                   sq_err *err)
{
    sqlite3_stmt *st = s->st;
    *eof = 0;
    if (keep && r->col_off == NULL && take_columns(r, st) != 0) {
        sb_sq_err_set(err, SQLITE_NOMEM, "out of memory collecting column names");
        return SQLITE_NOMEM;
    }
    size_t got = 0;
    e->deny[0] = '\0';
    e->deny_weak = 0;
    for (;;) {
        if (keep && got >= limit)
            return SQLITE_OK;
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
            *eof = 1;
            return SQLITE_OK;
        }
        if (rc != SQLITE_ROW) {
            sb_sq_eng_error(e, rc, err);
            return rc;
        }
        if (!keep)
            continue;
        if (add_row(r, st) != 0) {
            sb_sq_err_set(err, SQLITE_NOMEM, "out of memory collecting rows");
            return SQLITE_NOMEM;
        }
        got++;
    }
}

int sb_sq_eng_exec(sq_engine *e, const char *sql, sq_err *err)
{
    const char *p = sql;
    while (*p) {
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        e->deny[0] = '\0';
        e->deny_weak = 0;
        int rc = sqlite3_prepare_v2(e->db, p, -1, &st, &tail);
        if (rc != SQLITE_OK) {
            sb_sq_eng_error(e, rc, err);
            return rc;
        }
        if (st == NULL) {
            if (tail == NULL || tail <= p)
                break;
            p = tail;
            continue;
        }
        if (e->readonly && (e->deny[0] || !sqlite3_stmt_readonly(st))) {
            deny_writer(e, p);
            sqlite3_finalize(st);
            sb_sq_eng_error(e, SQLITE_AUTH, err);
            return SQLITE_AUTH;
        }
        while ((rc = sqlite3_step(st)) == SQLITE_ROW)
            ;
        if (rc != SQLITE_DONE) {
            sb_sq_eng_error(e, rc, err);
            sqlite3_finalize(st);
            return rc;
        }
        sqlite3_finalize(st);
        p = tail;
    }
    return SQLITE_OK;
}
