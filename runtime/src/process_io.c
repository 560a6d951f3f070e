/*
 * process_io.c -- the stream engine of `sibyl.process` (see sb_process.h):
 * buffered line / chunk reads and queued writes on non-blocking fds, the
 * parked tasks they wake, and the push / cancel hooks of those ops.
 *
 * Reads: bytes are read in 64 KiB chunks, only while a task waits (or
 * inline, as the fast path of a call), so a peer nobody reads from is held
 * back by the pipe and memory stays bounded by max_line plus one chunk.
 * Writes: a call first writes what the fd takes at once; the rest is copied
 * into a node queued behind earlier writes and the task parks until its
 * node is out.
 *
 * Caveats:
 *  - A line longer than max_line fails with kind "limit" and is skipped up
 *    to its "\n"; the next read_line returns the line after it.
 *  - A cancelled write whose bytes are partly out is finished in the
 *    background (half a message would corrupt the stream); one that has not
 *    started is dropped.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif

#include "sb_process.h"

#define RS_CHUNK ((size_t)65536)
#define RS_KEEP_CAP ((size_t)1 << 20)   /* an emptied buffer larger than this is freed */

enum { R_NONE, R_DATA, R_EOF, R_LIMIT };
enum { MODE_LINE, MODE_BYTES };

/* A parked read (the op's data). */
struct sb_rd_req {
    sb_rstream *rs;             /* while parked; NULL once completed */
    int mode;
    size_t n;                   /* MODE_BYTES: most bytes to return */
    int result;                 /* R_DATA, R_EOF, R_LIMIT */
    int err;                    /* R_EOF: errno of a read error, or 0 */
    int closed;                 /* R_EOF: the stream was closed under it */
    size_t max_line;
    const char *what;
    char *data;                 /* R_DATA: a copy of the bytes */
    size_t len;
};

/* A queued write. Owned by the stream while queued, then by its op (or
 * freed at once when the op is gone). */
struct sb_wnode {
    sb_wnode *next;
    sb_wstream *ws;             /* while queued */
    sb_op *op;                  /* NULL once its task is gone */
    int done;
    int err;                    /* 0, an errno, or -1: the stream was closed */
    const char *what;
    size_t len, off;
    char data[];
};

typedef struct {
    sb_wnode *node;
} wr_data;

void sb_proc_need_task(lua_State *L, const char *fn)
{
    if (sb_rt(L)->current == NULL)
        luaL_error(L, "process: %s waits for I/O and must run inside a task "
                      "(use sibyl.spawn(fn) or sibyl.run(fn))", fn);
}

int sb_fd_pollable(int fd)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return 0;
    if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))
        return 0;
    if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))
        return 1;
#ifdef __linux__
    /* Character devices: ttys can be watched, /dev/null cannot. Ask epoll. */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return 0;
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = EPOLLIN;
    int ok = epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) == 0;
    close(ep);
    return ok;
#else
    return isatty(fd);
#endif
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* =============================================================== reading */

static void read_cb(evutil_socket_t fd, short what, void *arg);

int sb_rs_init(sb_rstream *rs, struct event_base *base, int fd, size_t max_line, const char *what)
{
    memset(rs, 0, sizeof *rs);
    rs->fd = -1;
    rs->eof = 1;
    rs->max_line = max_line;
    rs->what = what;
    if (fd < 0)
        return 0;
    rs->pollable = sb_fd_pollable(fd);
    if (rs->pollable) {
        set_nonblock(fd);
        if ((rs->ev = event_new(base, fd, EV_READ | EV_PERSIST, read_cb, rs)) == NULL)
            return -1;
    }
    rs->fd = fd;
    rs->eof = 0;
    return 0;
}

/*
 * Read one chunk into the buffer. Returns 1 (bytes came), 0 (would block)
 * or -1 (EOF, a read error or out of memory: rs->eof set, rs->err the errno).
 */
static int rs_fill(sb_rstream *rs)
{
    if (rs->eof)
        return -1;
    if (rs->off == rs->len) {
        rs->off = rs->len = rs->scan = 0;
        if (rs->cap > RS_KEEP_CAP) {
            free(rs->buf);
            rs->buf = NULL;
            rs->cap = 0;
        }
    }
    if (rs->cap - rs->len < RS_CHUNK) {
        if (rs->off > 0) {
            memmove(rs->buf, rs->buf + rs->off, rs->len - rs->off);
            rs->len -= rs->off;
            rs->off = 0;
        }
        if (rs->cap - rs->len < RS_CHUNK) {
            size_t nc = rs->cap ? rs->cap * 2 : RS_CHUNK;
            while (nc - rs->len < RS_CHUNK)
                nc *= 2;
            char *nb = realloc(rs->buf, nc);
            if (nb == NULL) {
                rs->eof = 1;
                rs->err = ENOMEM;
                return -1;
            }
            rs->buf = nb;
            rs->cap = nc;
        }
    }
    ssize_t r;
    do
        r = read(rs->fd, rs->buf + rs->len, RS_CHUNK);
    while (r < 0 && errno == EINTR);
    if (r > 0) {
        rs->len += (size_t)r;
        return 1;
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && rs->pollable)
        return 0;
    rs->eof = 1;
    rs->err = r < 0 ? errno : 0;
    return -1;
}

/*
 * Take what a request wants from the buffer. R_DATA: *s / *len point into
 * the buffer (valid until the next rs_fill) and the bytes count as
 * consumed. R_NONE: more bytes are needed. R_EOF: nothing more will come.
 * R_LIMIT: a line over max_line (consumed, or skipped as it arrives).
 */
static int rs_take(sb_rstream *rs, int mode, size_t n, const char **s, size_t *len)
{
    for (;;) {
        size_t avail = rs->len - rs->off;
        char *p = avail ? rs->buf + rs->off : NULL;
        if (rs->skipping) {
            char *nl = avail ? memchr(p, '\n', avail) : NULL;
            if (nl == NULL) {
                rs->off = rs->len;
                rs->scan = 0;
                if (!rs->eof)
                    return R_NONE;
                rs->skipping = 0;
                continue;
            }
            rs->off += (size_t)(nl - p) + 1;
            rs->skipping = 0;
            rs->scan = 0;
            continue;
        }
        if (mode == MODE_BYTES) {
            if (avail == 0)
                return rs->eof ? R_EOF : R_NONE;
            size_t k = avail < n ? avail : n;
            *s = p;
            *len = k;
            rs->off += k;
            rs->scan = rs->scan > k ? rs->scan - k : 0;
            return R_DATA;
        }
        char *nl = avail > rs->scan ? memchr(p + rs->scan, '\n', avail - rs->scan) : NULL;
        if (nl != NULL) {
            size_t k = (size_t)(nl - p);
            rs->off += k + 1;
            rs->scan = 0;
            if (k > 0 && p[k - 1] == '\r')
                k--;
            if (k > rs->max_line)
                return R_LIMIT;
            *s = p;
            *len = k;
            return R_DATA;
        }
        rs->scan = avail;
        if (avail > rs->max_line + 1) {         /* + 1: room for a "\r" */
            rs->off = rs->len;
            rs->scan = 0;
            rs->skipping = !rs->eof;
            return R_LIMIT;
        }
        if (!rs->eof)
            return R_NONE;
        if (avail == 0)
            return R_EOF;
        *s = p;                                 /* a final line without "\n" */
        *len = avail;
        rs->off = rs->len;
        rs->scan = 0;
        return R_DATA;
    }
}

/* Push the outcome of a read. Never raises except on out of memory. */
static int push_outcome(lua_State *L, int result, const char *s, size_t len, int err, int closed,
                        const char *what, size_t max_line)
{
    switch (result) {
    case R_DATA:
        lua_pushlstring(L, s, len);
        return 1;
    case R_LIMIT:
        return sb_fail(L, "limit", "%s: a line is longer than max_line (%zu bytes) and was "
                       "skipped; pass a larger max_line to accept it", what, max_line);
    default:
        if (closed)
            return sb_fail(L, "closed", "%s: the stream is closed", what);
        if (err)
            return sb_fail(L, "io", "%s: read failed: %s", what, strerror(err));
        return sb_fail(L, "closed", "%s: end of stream (the other side closed it)", what);
    }
}

static int push_read(lua_State *co, void *data)
{
    sb_rd_req *q = data;
    int n = push_outcome(co, q->result, q->data, q->len, q->err, q->closed, q->what, q->max_line);
    free(q->data);
    q->data = NULL;
    return n;
}

/* Pending: detach from the stream. Completed: drop the copied bytes. */
static void cancel_read(void *data)
{
    sb_rd_req *q = data;
    if (q->rs != NULL) {
        assert(q->rs->reader == q);
        q->rs->reader = NULL;
        if (q->rs->ev)
            event_del(q->rs->ev);
        q->rs = NULL;
    }
    free(q->data);
    q->data = NULL;
}

/* Hand a result to the parked reader and wake it. */
static void rs_complete(sb_rstream *rs, int result, const char *s, size_t len)
{
    sb_rd_req *q = rs->reader;
    assert(q != NULL && q->rs == rs);
    rs->reader = NULL;
    q->rs = NULL;
    if (rs->ev)
        event_del(rs->ev);
    q->result = result;
    q->err = rs->err;
    q->closed = rs->fd < 0;
    if (result == R_DATA) {
        q->data = malloc(len ? len : 1);
        if (q->data == NULL) {
            q->result = R_EOF;
            q->err = ENOMEM;
        } else {
            memcpy(q->data, s, len);
            q->len = len;
        }
    }
    sb_op_done(sb_op_from_data(q));
}

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_rstream *rs = arg;
    SB_UNUSED(fd);
    SB_UNUSED(what);
    sb_rd_req *q = rs->reader;
    if (q == NULL) {
        event_del(rs->ev);
        return;
    }
    if (rs_fill(rs) == 0)
        return;
    const char *s = NULL;
    size_t len = 0;
    int r = rs_take(rs, q->mode, q->n, &s, &len);
    if (r != R_NONE)
        rs_complete(rs, r, s, len);
}

/* The fast path, then park. */
static int rs_request(lua_State *L, sb_rstream *rs, int mode, size_t n)
{
    sb_proc_need_task(L, mode == MODE_LINE ? "read_line" : "read");
    if (rs->reader != NULL)
        return luaL_error(L, "%s: another task is already reading", rs->what);
    for (;;) {
        const char *s = NULL;
        size_t len = 0;
        int r = rs_take(rs, mode, n, &s, &len);
        if (r != R_NONE)
            return push_outcome(L, r, s, len, rs->err, rs->fd < 0, rs->what, rs->max_line);
        if (rs_fill(rs) == 0)
            break;
    }
    assert(rs->ev != NULL);
    sb_op *op = sb_op_new(L, sizeof(sb_rd_req), push_read, cancel_read);
    sb_rd_req *q = sb_op_data(op);
    q->rs = rs;
    q->mode = mode;
    q->n = n;
    q->max_line = rs->max_line;
    q->what = rs->what;
    if (event_add(rs->ev, NULL) != 0) {
        sb_op_abort(op);
        return sb_fail(L, "io", "%s: cannot watch the stream on the event loop", rs->what);
    }
    rs->reader = q;
    return sb_op_park(L, op);
}

int sb_rs_read_line(lua_State *L, sb_rstream *rs) { return rs_request(L, rs, MODE_LINE, 0); }
int sb_rs_read(lua_State *L, sb_rstream *rs, size_t n) { return rs_request(L, rs, MODE_BYTES, n); }

void sb_rs_close(sb_rstream *rs, int close_fd)
{
    int fd = rs->fd;
    rs->fd = -1;
    rs->eof = 1;
    rs->err = 0;
    rs->skipping = 0;
    rs->off = rs->len = rs->scan = 0;
    if (rs->reader)
        rs_complete(rs, R_EOF, NULL, 0);
    if (rs->ev) {
        event_free(rs->ev);
        rs->ev = NULL;
    }
    if (close_fd && fd >= 0)
        close(fd);
    free(rs->buf);
    rs->buf = NULL;
    rs->cap = 0;
}

/* =============================================================== writing */

static void write_cb(evutil_socket_t fd, short what, void *arg);

int sb_ws_init(sb_wstream *ws, struct event_base *base, int fd, const char *what)
{
    memset(ws, 0, sizeof *ws);
    ws->fd = -1;
    ws->what = what;
    if (fd < 0)
        return 0;
    ws->pollable = sb_fd_pollable(fd);
    if (ws->pollable) {
        set_nonblock(fd);
        if ((ws->ev = event_new(base, fd, EV_WRITE | EV_PERSIST, write_cb, ws)) == NULL)
            return -1;
    }
    ws->fd = fd;
    return 0;
}

/* Write s[*off, len) until done or the fd is full. Returns 0 or an errno. */
static int ws_put(sb_wstream *ws, const char *s, size_t len, size_t *off)
{
    while (*off < len) {
        ssize_t r = write(ws->fd, s + *off, len - *off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && ws->pollable)
            return 0;
        if (r < 0)
            return errno;
        if (r == 0)
            return EIO;
        *off += (size_t)r;
    }
    return 0;
}

/* The node left the queue: record err and wake its task (or free an orphan). */
static void node_complete(sb_wnode *n, int err)
{
    n->ws = NULL;
    n->done = 1;
    n->err = err;
    if (n->op)
        sb_op_done(n->op);
    else
        free(n);
}

/* Fail every queued write with err; the stream takes no more. */
static void ws_break(sb_wstream *ws, int err)
{
    ws->err = err;
    while (ws->head) {
        sb_wnode *n = ws->head;
        ws->head = n->next;
        node_complete(n, err);
    }
    ws->tail = NULL;
    if (ws->ev)
        event_del(ws->ev);
}

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_wstream *ws = arg;
    SB_UNUSED(fd);
    SB_UNUSED(what);
    while (ws->head) {
        sb_wnode *n = ws->head;
        int e = ws_put(ws, n->data, n->len, &n->off);
        if (e) {
            ws_break(ws, e);
            return;
        }
        if (n->off < n->len)
            return;                     /* full: wait for the next EV_WRITE */
        ws->head = n->next;
        if (ws->head == NULL)
            ws->tail = NULL;
        node_complete(n, 0);
    }
    event_del(ws->ev);
}

static int push_wfail(lua_State *L, const char *what, int err)
{
    if (err == -1 || err == 0)
        return sb_fail(L, "closed", "%s: the stream is closed", what);
    if (err == EPIPE)
        return sb_fail(L, "closed", "%s: cannot write: the reading side has gone (the process "
                       "closed its input or exited)", what);
    return sb_fail(L, "io", "%s: write failed: %s", what, strerror(err));
}

static int push_write(lua_State *co, void *data)
{
    sb_wnode *n = ((wr_data *)data)->node;
    int r;
    if (n->err == 0) {
        lua_pushboolean(co, 1);
        r = 1;
    } else {
        r = push_wfail(co, n->what, n->err);
    }
    free(n);
    return r;
}

/* Done: free the node. Not started: drop it. Started: finish it alone. */
static void cancel_write(void *data)
{
    sb_wnode *n = ((wr_data *)data)->node;
    if (n->done) {
        free(n);
        return;
    }
    if (n->off > 0) {
        n->op = NULL;
        return;
    }
    sb_wstream *ws = n->ws;
    sb_wnode **pp = &ws->head, *prev = NULL;
    while (*pp != n) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    *pp = n->next;
    if (ws->tail == n)
        ws->tail = prev;
    if (ws->head == NULL && ws->ev)
        event_del(ws->ev);
    free(n);
}

int sb_ws_write(lua_State *L, sb_wstream *ws, const char *data, size_t len)
{
    sb_proc_need_task(L, "write");
    if (ws->fd < 0 || ws->err)
        return push_wfail(L, ws->what, ws->fd < 0 ? -1 : ws->err);
    size_t off = 0;
    if (ws->head == NULL) {
        int e = ws_put(ws, data, len, &off);
        if (e) {
            ws_break(ws, e);
            return push_wfail(L, ws->what, e);
        }
        if (off == len) {
            lua_pushboolean(L, 1);
            return 1;
        }
    }
    assert(ws->ev != NULL);
    sb_op *op = sb_op_new(L, sizeof(wr_data), push_write, cancel_write);
    sb_wnode *n = malloc(sizeof *n + len);
    if (n == NULL) {
        sb_op_abort(op);
        return luaL_error(L, "%s: out of memory", ws->what);
    }
    memset(n, 0, sizeof *n);
    memcpy(n->data, data, len);         /* all of it: off > 0 marks it as started */
    n->len = len;
    n->off = off;
    n->ws = ws;
    n->op = op;
    n->what = ws->what;
    ((wr_data *)sb_op_data(op))->node = n;
    if (ws->tail)
        ws->tail->next = n;
    else
        ws->head = n;
    ws->tail = n;
    event_add(ws->ev, NULL);
    return sb_op_park(L, op);
}

void sb_ws_close(sb_wstream *ws, int close_fd)
{
    int fd = ws->fd;
    ws->fd = -1;
    ws_break(ws, -1);
    ws->err = 0;
    if (ws->ev) {
        event_free(ws->ev);
        ws->ev = NULL;
    }
    if (close_fd && fd >= 0)
        close(fd);
}

/* ====================================================== signals, statuses */

static const struct { const char *name; int sig; } signames[] = {
    {"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"ILL", SIGILL}, {"TRAP", SIGTRAP},
    {"ABRT", SIGABRT}, {"BUS", SIGBUS}, {"FPE", SIGFPE}, {"KILL", SIGKILL}, {"USR1", SIGUSR1},
    {"SEGV", SIGSEGV}, {"USR2", SIGUSR2}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM},
    {"TERM", SIGTERM}, {"CHLD", SIGCHLD}, {"CONT", SIGCONT}, {"STOP", SIGSTOP},
    {"TSTP", SIGTSTP}, {"XCPU", SIGXCPU}, {"XFSZ", SIGXFSZ}, {"WINCH", SIGWINCH},
};

void sb_proc_push_signal(lua_State *L, int sig)
{
    for (size_t i = 0; i < sizeof signames / sizeof signames[0]; i++)
        if (signames[i].sig == sig) {
            lua_pushstring(L, signames[i].name);
            return;
        }
    lua_pushinteger(L, sig);
}

/* The signal argument at idx: "TERM", "SIGTERM", a number. Raises on misuse. */
int sb_proc_check_signal(lua_State *L, int idx, int def)
{
    if (lua_isnoneornil(L, idx))
        return def;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        int sig = (int)lua_tointeger(L, idx);
        luaL_argcheck(L, sig >= 0 && sig < NSIG, idx, "not a signal number");
        return sig;
    }
    const char *s = luaL_checkstring(L, idx);
    if (strncmp(s, "SIG", 3) == 0)
        s += 3;
    for (size_t i = 0; i < sizeof signames / sizeof signames[0]; i++)
        if (strcmp(signames[i].name, s) == 0)
            return signames[i].sig;
    return luaL_argerror(L, idx, "unknown signal name (use \"TERM\", \"KILL\", \"INT\", ... or a number)");
}

/* { exited = true, code = n } or { exited = true, signal = "KILL" }. */
void sb_proc_push_exit(lua_State *L, int status, int lost)
{
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "exited");
    if (lost) {
        lua_pushinteger(L, -1);         /* reaped by someone else: unknown */
        lua_setfield(L, -2, "code");
    } else if (WIFSIGNALED(status)) {
        sb_proc_push_signal(L, WTERMSIG(status));
        lua_setfield(L, -2, "signal");
    } else {
        lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        lua_setfield(L, -2, "code");
    }
}
