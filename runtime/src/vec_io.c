/*
 * vec_io.c -- m:save(path) and vec.load(path) for `sibyl.vec`: a single
 * file, on the worker pool inside a task (inline outside one).
 *
 * Format (version 1, little-endian as written by x86-64 and ARM64 hosts):
 *   0  "SIBYLVEC"       8 bytes magic
 *   8  u32 version      1
 *   12 u32 header size  64
 *   16 u64 rows
 *   24 u32 dims
 *   28 u32 metric       0 cosine, 1 dot, 2 l2
 *   32 u32 flags        1 rows normalised, 2 int8 mode
 *   36 zeros to 64
 *   64 rows x dims float32, row after row
 * Norms and int8 codes are recomputed on load. A save writes PATH.tmp and
 * renames it over PATH, so readers never see half a file.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_vecmat.h"

#define VEC_HEADER 64
#define VEC_VERSION 1
#define VEC_FLAG_NORMALIZED 1u
#define VEC_FLAG_INT8 2u

static const char vec_magic[8] = {'S', 'I', 'B', 'Y', 'L', 'V', 'E', 'C'};

/* ---------------------------------------------------------- save / load */

enum { IO_SAVE, IO_LOAD };

typedef struct {
    sb_op *op;                  /* NULL: inline, or abandoned */
    int finished, kind;
    char *path;
    sb_vstore *st;              /* save: the rows to write (ref); load: the rows read */
    size_t rows, dims;
    uint32_t metric, flags;
    int err;                    /* errno of the failing call */
    const char *step;           /* which call failed */
    char bad[200];              /* load: why the file is not a matrix file */
} vio;

static void io_free(vio *io)
{
    sb_vstore_release(io->st);
    free(io->path);
    free(io);
}

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t r = write(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Reads exactly n bytes; returns 0, -1 (errno) or 1 (end of file first). */
static int read_all(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            return 1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Header, then rows x dims floats; written to PATH.tmp and renamed, so a
 * reader never sees half a file. */
static void do_save(vio *io)
{
    unsigned char h[VEC_HEADER] = {0};
    memcpy(h, vec_magic, 8);
    put32(h + 8, VEC_VERSION);
    put32(h + 12, VEC_HEADER);
    put64(h + 16, io->rows);
    put32(h + 24, (uint32_t)io->dims);
    put32(h + 28, io->metric);
    put32(h + 32, io->flags);
    size_t pl = strlen(io->path);
    char *tmp = malloc(pl + 5);
    if (tmp == NULL) {
        io->err = ENOMEM;
        io->step = "allocate";
        return;
    }
    memcpy(tmp, io->path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) {
        io->err = errno;
        io->step = "create";
        free(tmp);
        return;
    }
    if (write_all(fd, h, sizeof h) != 0 ||
        write_all(fd, io->st->data, io->rows * io->dims * sizeof(float)) != 0) {
        io->err = errno;
        io->step = "write";
    }
    if (close(fd) != 0 && io->err == 0) {
        io->err = errno;
        io->step = "write";
    }
    if (io->err == 0 && rename(tmp, io->path) != 0) {
        io->err = errno;
        io->step = "rename";
    }
    if (io->err != 0)
        unlink(tmp);
    free(tmp);
}

static void do_load(vio *io)
{
    int fd = open(io->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        io->err = errno;
        io->step = "open";
        return;
    }
    unsigned char h[VEC_HEADER];
    struct stat sb;
    int r = fstat(fd, &sb);
    if (r != 0) {
        io->err = errno;
        io->step = "stat";
        goto out;
    }
    r = read_all(fd, h, sizeof h);
    if (r < 0) {
        io->err = errno;
        io->step = "read";
        goto out;
    }
    if (r > 0 || memcmp(h, vec_magic, 8) != 0) {
        snprintf(io->bad, sizeof io->bad, "not a sibyl.vec matrix file (no SIBYLVEC header)");
        goto out;
    }
    uint32_t version = get32(h + 8), hsize = get32(h + 12), dims = get32(h + 24);
    uint64_t rows = get64(h + 16);
    io->metric = get32(h + 28);
    io->flags = get32(h + 32);
    if (version != VEC_VERSION || hsize != VEC_HEADER) {
        snprintf(io->bad, sizeof io->bad, "format version %u is not supported (this build reads %d)",
                 version, VEC_VERSION);
        goto out;
    }
    if (dims < 1 || dims > VEC_MAX_DIMS || rows > VEC_MAX_ROWS || io->metric > M_L2) {
        snprintf(io->bad, sizeof io->bad, "corrupt header (dims %u, rows %llu, metric %u)", dims,
                 (unsigned long long)rows, io->metric);
        goto out;
    }
    uint64_t want = VEC_HEADER + rows * dims * sizeof(float);
    if ((uint64_t)sb.st_size != want) {
        snprintf(io->bad, sizeof io->bad, "the file has %llu bytes, its header promises %llu (truncated?)",
                 (unsigned long long)sb.st_size, (unsigned long long)want);
        goto out;
    }
    io->rows = rows;
    io->dims = dims;
    io->st = sb_vstore_new(dims, rows < 16 ? 16 : rows, (io->flags & VEC_FLAG_INT8) != 0);
    if (io->st == NULL) {
        io->err = ENOMEM;
        io->step = "allocate";
        goto out;
    }
    r = read_all(fd, io->st->data, rows * dims * sizeof(float));
    if (r != 0) {
        io->err = r < 0 ? errno : EIO;
        io->step = "read";
        goto out;
    }
    for (size_t i = 0; i < rows; i++) {
        const float *x = io->st->data + i * dims;
        io->st->norm2[i] = sb_vec_norm2(x, dims);
        if (io->st->codes)
            io->st->scales[i] = sb_vec_quantize(x, dims, io->st->codes + i * dims);
    }
out:
    close(fd);
}

static void io_work(void *arg)
{
    vio *io = arg;
    if (io->kind == IO_SAVE)
        do_save(io);
    else
        do_load(io);
}

static int push_io(lua_State *L, vio *io)
{
    int n;
    if (io->err) {
        n = sb_fail(L, "io", "vec.%s: cannot %s '%s': %s", io->kind == IO_SAVE ? "save" : "load",
                    io->step, io->path, strerror(io->err));
    } else if (io->bad[0]) {
        n = sb_fail(L, "format", "vec.load: '%s': %s; write it with m:save()", io->path, io->bad);
    } else if (io->kind == IO_SAVE) {
        lua_pushboolean(L, 1);
        n = 1;
    } else {
        sb_vmat *m = sb_vec_pushmat(L);
        m->st = io->st;
        io->st = NULL;
        m->rows = io->rows;
        m->dims = io->dims;
        m->metric = (int)io->metric;
        m->normalized = (io->flags & VEC_FLAG_NORMALIZED) != 0;
        m->quant = (io->flags & VEC_FLAG_INT8) != 0;
        n = 1;
    }
    io_free(io);
    return n;
}

static int push_io_op(lua_State *co, void *data)
{
    return push_io(co, *(vio **)data);
}

static void cancel_io(void *data)
{
    vio *io = *(vio **)data;
    if (io->finished)
        io_free(io);
    else
        io->op = NULL;
}

static void io_done(void *arg)
{
    vio *io = arg;
    io->finished = 1;
    if (io->op == NULL)
        io_free(io);
    else
        sb_op_done(io->op);
}

static int run_io(lua_State *L, vio *io)
{
    if (!sb_vec_can_park(L)) {
        io_work(io);
        return push_io(L, io);
    }
    sb_op *op = sb_op_new(L, sizeof(vio *), push_io_op, cancel_io);
    *(vio **)sb_op_data(op) = io;
    io->op = op;
    if (sb_pool_submit(sb_op_rt(op), io_work, io_done, io) != 0) {
        sb_op_abort(op);
        io->op = NULL;
        io_work(io);
        return push_io(L, io);
    }
    return sb_op_park(L, op);
}

static vio *io_new(lua_State *L, int kind, const char *path)
{
    vio *io = calloc(1, sizeof *io);
    if (io == NULL || (io->path = strdup(path)) == NULL) {
        free(io);
        luaL_error(L, "vec: out of memory");
    }
    io->kind = kind;
    return io;
}

/* m:save(path) -> true | nil, err */
int sb_vec_l_save(lua_State *L)
{
    sb_vmat *m = sb_vec_checkmat(L, 1);
    const char *path = luaL_checkstring(L, 2);
    if (m->st == NULL)
        return sb_vec_fail_closed(L);
    vio *io = io_new(L, IO_SAVE, path);
    io->st = m->st;
    io->st->refs++;
    io->rows = m->rows;
    io->dims = m->dims;
    io->metric = (uint32_t)m->metric;
    io->flags = (m->normalized ? VEC_FLAG_NORMALIZED : 0) | (m->quant ? VEC_FLAG_INT8 : 0);
    return run_io(L, io);
}

/* core.load(path) -> matrix | nil, err */
int sb_vec_l_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    return run_io(L, io_new(L, IO_LOAD, path));
}
