/*
 * fs.c -- `sibyl.fs`: file reads and writes on the worker pool, so a task
 * reading a large file never stalls the loop.
 *
 *   local data, err = fs.read(path [, {max_bytes = 256 MiB}])
 *   local ok, err   = fs.write(path, data [, {append = false}])
 *   local names, err = fs.list(dir)     -- sorted entry names, no "." / ".."
 *
 * Errors: kind "io" (message names the path and the OS reason, field
 * `code` holds the errno name), kind "too_large" when the file exceeds
 * max_bytes. A job cannot be interrupted: when its task is cancelled the job
 * finishes in the background and its buffer is freed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb.h"

#define SB_FS_DEFAULT_MAX ((size_t)256 << 20)

enum { FS_READ, FS_WRITE, FS_LIST };

typedef struct fs_job {
    sb_op *op;                  /* NULL once abandoned */
    int finished;               /* fs_done ran: the job waits for push or cancel */
    int kind, append, err;
    int too_large;
    char *path;
    char *buf;                  /* read: result; write: a copy of data */
    size_t len, max;
} fs_job;

typedef struct {
    fs_job *job;
} fs_data;

static void job_free(fs_job *j)
{
    free(j->path);
    free(j->buf);
    free(j);
}

static void do_read(fs_job *j)
{
    int fd = open(j->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        j->err = errno;
        return;
    }
    struct stat st;
    size_t cap = 65536;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        if ((size_t)st.st_size > j->max) {
            j->too_large = 1;
            close(fd);
            return;
        }
        cap = (size_t)st.st_size + 1;
    }
    j->buf = malloc(cap);
    for (;;) {
        if (j->buf == NULL) {
            j->err = ENOMEM;
            break;
        }
        if (j->len == cap) {
            if (cap > j->max) {
                j->too_large = 1;
                break;
            }
            char *nb = realloc(j->buf, cap * 2);
            if (nb == NULL) {
                j->err = ENOMEM;
                break;
            }
            j->buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, j->buf + j->len, cap - j->len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            j->err = errno;
            break;
        }
        if (r == 0)
            break;
        j->len += (size_t)r;
        if (j->len > j->max) {
            j->too_large = 1;
            break;
        }
    }
    close(fd);
}

static void do_write(fs_job *j)
{
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (j->append ? O_APPEND : O_TRUNC);
    int fd = open(j->path, flags, 0666);
    if (fd < 0) {
        j->err = errno;
        return;
    }
    size_t off = 0;
    while (off < j->len) {
        ssize_t r = write(fd, j->buf + off, j->len - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            j->err = errno;
            break;
        }
        off += (size_t)r;
    }
    if (close(fd) != 0 && j->err == 0)
        j->err = errno;
}

/* Collect entry names into buf, each followed by '\0'. */
static void do_list(fs_job *j)
{
    DIR *d = opendir(j->path);
    if (d == NULL) {
        j->err = errno;
        return;
    }
    size_t cap = 4096;
    j->buf = malloc(cap);
    struct dirent *e;
    while (j->buf && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        size_t n = strlen(e->d_name) + 1;
        if (j->len + n > cap) {
            while (j->len + n > cap)
                cap *= 2;
            char *nb = realloc(j->buf, cap);
            if (nb == NULL) {
                free(j->buf);
                j->buf = NULL;
                break;
            }
            j->buf = nb;
        }
        memcpy(j->buf + j->len, e->d_name, n);
        j->len += n;
    }
    if (j->buf == NULL)
        j->err = ENOMEM;
    closedir(d);
}

static void fs_work(void *arg)
{
    fs_job *j = arg;
    if (j->kind == FS_READ)
        do_read(j);
    else if (j->kind == FS_WRITE)
        do_write(j);
    else
        do_list(j);
}

static const char *verb[] = {"read", "write", "list"};

/* Push the names of a listing as a sorted array. */
static void push_names(lua_State *co, fs_job *j)
{
    lua_newtable(co);
    int n = 0;
    for (size_t off = 0; off < j->len; off += strlen(j->buf + off) + 1) {
        lua_pushstring(co, j->buf + off);
        lua_rawseti(co, -2, ++n);
    }
    lua_getglobal(co, "table");
    lua_getfield(co, -1, "sort");
    lua_pushvalue(co, -3);
    lua_call(co, 1, 0);
    lua_pop(co, 1);
}

static void fs_done(void *arg)
{
    fs_job *j = arg;
    j->finished = 1;
    if (j->op == NULL)
        job_free(j);            /* abandoned: its task was cancelled */
    else
        sb_op_done(j->op);
}

static const char *errno_name(int e)
{
    switch (e) {
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EISDIR: return "EISDIR";
    case ENOTDIR: return "ENOTDIR";
    case ENOSPC: return "ENOSPC";
    case ENOMEM: return "ENOMEM";
    case EEXIST: return "EEXIST";
    case EROFS: return "EROFS";
    default: return "EIO";
    }
}

static int push_fs(lua_State *co, void *data)
{
    fs_job *j = ((fs_data *)data)->job;
    int n;
    if (j->too_large) {
        n = sb_fail(co, "too_large", "fs.read: '%s' is larger than max_bytes (%zu); "
                                     "pass {max_bytes = N} to allow more", j->path, j->max);
    } else if (j->err) {
        n = sb_fail(co, "io", "fs.%s: cannot %s '%s': %s", verb[j->kind], verb[j->kind], j->path,
                    strerror(j->err));
        sb_setfield_str(co, "code", errno_name(j->err));
    } else if (j->kind == FS_READ) {
        lua_pushlstring(co, j->buf ? j->buf : "", j->len);
        n = 1;
    } else if (j->kind == FS_LIST) {
        push_names(co, j);
        n = 1;
    } else {
        lua_pushboolean(co, 1);
        n = 1;
    }
    job_free(j);
    return n;
}

/* The task is gone. A job still running is abandoned (fs_done frees it);
 * a finished one was waiting to be delivered and is freed now. */
static void cancel_fs(void *data)
{
    fs_job *j = ((fs_data *)data)->job;
    if (j->finished)
        job_free(j);
    else
        j->op = NULL;
}

/* Allocate the op first (it raises outside a task), then the job. */
static fs_job *new_job(lua_State *L, sb_op **opp, const char *path, size_t buflen)
{
    sb_op *op = sb_op_new(L, sizeof(fs_data), push_fs, cancel_fs);
    fs_job *j = calloc(1, sizeof *j);
    if (j == NULL || (j->path = strdup(path)) == NULL || (buflen && (j->buf = malloc(buflen)) == NULL)) {
        if (j)
            free(j->path);
        free(j);
        sb_op_abort(op);
        luaL_error(L, "out of memory");
    }
    ((fs_data *)sb_op_data(op))->job = j;
    j->op = op;
    *opp = op;
    return j;
}

static int submit(lua_State *L, sb_op *op, fs_job *j)
{
    if (sb_pool_submit(sb_op_rt(op), fs_work, fs_done, j) != 0) {
        sb_op_abort(op);
        job_free(j);
        return sb_fail(L, "io", "fs: cannot start a worker thread");
    }
    return sb_op_park(L, op);
}

static size_t opt_size(lua_State *L, int idx, const char *field, size_t def)
{
    if (lua_isnoneornil(L, idx))
        return def;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, field);
    lua_Number v = lua_isnil(L, -1) ? (lua_Number)def : luaL_checknumber(L, -1);
    lua_pop(L, 1);
    luaL_argcheck(L, v >= 0, idx, "size limits must be >= 0");
    return (size_t)v;
}

static int l_read(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t max = opt_size(L, 2, "max_bytes", SB_FS_DEFAULT_MAX);
    sb_op *op;
    fs_job *j = new_job(L, &op, path, 0);
    j->kind = FS_READ;
    j->max = max;
    return submit(L, op, j);
}

static int l_write(lua_State *L)
{
    size_t len;
    const char *path = luaL_checkstring(L, 1);
    const char *data = luaL_checklstring(L, 2, &len);
    int append = 0;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "append");
        append = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    sb_op *op;
    fs_job *j = new_job(L, &op, path, len ? len : 1);
    memcpy(j->buf, data, len);
    j->len = len;
    j->kind = FS_WRITE;
    j->append = append;
    return submit(L, op, j);
}

static int l_list(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    sb_op *op;
    fs_job *j = new_job(L, &op, path, 0);
    j->kind = FS_LIST;
    return submit(L, op, j);
}

static const luaL_Reg fs_funcs[] = {
    {"list", l_list},
    {"read", l_read},
    {"write", l_write},
    {NULL, NULL}
};

int luaopen_sibyl_fs(lua_State *L)
{
    luaL_newlib(L, fs_funcs);
    return 1;
}
