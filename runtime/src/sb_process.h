/*
 * sb_process.h -- the byte-stream engine of `sibyl.process` (process_io.c):
 * a read side that buffers and hands out lines or chunks, and a write side
 * with an ordered queue, both on non-blocking fds driven by the event loop.
 * process.c uses one of each for a child's stdout / stdin and for the
 * runtime's own fd 0 / fd 1 (process.stdio()).
 *
 * A stream is "pollable" when epoll can watch its fd (pipes, sockets,
 * ttys). Regular files and /dev/null cannot be watched but never block
 * either, so for them every read and write is done inline.
 *
 * Ops: a reading or writing task parks on an sb_op whose data points into
 * the stream; completing it copies the result into the op, so a stream may
 * be closed or freed while a finished op waits to be delivered. A stream
 * being closed fails its pending ops with kind "closed".
 */
#ifndef SB_PROCESS_H
#define SB_PROCESS_H

#include <stddef.h>

#include "sb.h"

typedef struct sb_rd_req sb_rd_req;
typedef struct sb_wnode sb_wnode;

typedef struct sb_rstream {
    int fd;                     /* -1 once closed (or never open) */
    int pollable;
    int eof;                    /* EOF (or a read error, err) seen */
    int err;                    /* errno of a read error, or 0 */
    int skipping;               /* dropping the rest of an oversized line */
    struct event *ev;           /* EV_READ | EV_PERSIST, added while a reader waits */
    char *buf;                  /* unread bytes are buf[off, len) */
    size_t off, len, cap;
    size_t scan;                /* bytes after off already searched for "\n" */
    size_t max_line;
    const char *what;           /* names the stream in messages: "process", "stdio" */
    sb_rd_req *reader;          /* the parked reader, or NULL */
} sb_rstream;

typedef struct sb_wstream {
    int fd;                     /* -1 once closed */
    int pollable;
    int err;                    /* errno that broke the stream, or 0 */
    struct event *ev;           /* EV_WRITE | EV_PERSIST, added while the queue is non-empty */
    sb_wnode *head, *tail;      /* queued writes, oldest first */
    const char *what;
} sb_wstream;

/* Can epoll watch fd? (Not for regular files, directories, /dev/null.) */
int sb_fd_pollable(int fd);

/* Set up a stream on fd (non-blocking already, when pollable). Returns 0, or
 * -1 when the event cannot be created (the stream is then closed). fd < 0
 * gives a closed stream. */
int sb_rs_init(sb_rstream *rs, struct event_base *base, int fd, size_t max_line, const char *what);
int sb_ws_init(sb_wstream *ws, struct event_base *base, int fd, const char *what);

/* Close: pending ops fail with kind "closed", the event is freed. The fd is
 * closed only when close_fd is set (not for the runtime's own fd 0 / 1).
 * Idempotent. sb_rs_close also frees the buffer. */
void sb_rs_close(sb_rstream *rs, int close_fd);
void sb_ws_close(sb_wstream *ws, int close_fd);

/* Lua side: the stream methods. Each returns its Lua results, or parks the
 * task (sb_op_park); raises on misuse (a second reader, not in a task). */
int sb_rs_read_line(lua_State *L, sb_rstream *rs);
int sb_rs_read(lua_State *L, sb_rstream *rs, size_t n);
int sb_ws_write(lua_State *L, sb_wstream *ws, const char *data, size_t len);

/* Signals and exit statuses (process.c's binding): the name of sig ("TERM")
 * or its number; the signal argument at idx ("TERM", "SIGTERM", a number;
 * def when absent; raises on misuse); a wait status as { exited = true,
 * code = n } or { exited = true, signal = "KILL" } (code -1 when lost). */
void sb_proc_push_signal(lua_State *L, int sig);
int sb_proc_check_signal(lua_State *L, int idx, int def);
void sb_proc_push_exit(lua_State *L, int status, int lost);

/* Raise unless L runs inside a task (every waiting method needs one). */
void sb_proc_need_task(lua_State *L, const char *fn);

#endif /* SB_PROCESS_H */
