/*
 * process.c -- `sibyl.process`: child processes with pipes driven by the
 * event loop (the MCP stdio transport), and the runtime's own stdin/stdout
 * as the same kind of stream.
 *
 *   local p, err = process.spawn{ "cmd", "arg", env =, env_clear =, cwd =,
 *                                 stderr = "pipe"|"inherit"|"null",
 *                                 stderr_limit = 64 KiB, max_line = 16 MiB }
 *   p:write(s)  p:read_line()  p:read(n)  p:stderr()  p:close_stdin()
 *   p:wait()  p:running()  p:kill([sig])  p:close{grace = 2}   p.pid
 *   local io = process.stdio([{max_line =}])   io:read_line() io:read(n) io:write(s) io:close()
 *
 * A child runs in its own process group (pgid = pid), so signals reach the
 * shells and npx wrappers in between and their children. It is reaped
 * through a pidfd watched by the loop (a 50 ms waitpid(WNOHANG) timer where
 * pidfd_open is missing, or with SIBYL_PROCESS_POLL=1); there is no SIGCHLD
 * handler, so other children of the host are left alone. The stream engine
 * is process_io.c (also the signal names and exit tables).
 *
 * Caveats:
 *  - Loading the module sets SIGPIPE to SIG_IGN when it is SIG_DFL, so a
 *    write to a dead child fails with EPIPE instead of killing the runtime.
 *    A host that installed its own SIGPIPE handler keeps it. Children get
 *    every signal reset to its default.
 *  - argv[1] is looked up in the runtime's PATH, not in opts.env.PATH.
 *  - An idle process does not keep sibyl_run() going; its __gc (at the
 *    latest when the runtime closes) SIGKILLs the group and reaps the child.
 *  - close() kills stragglers of the group only while the leader is not
 *    yet reaped (its pid pins the pgid); after wait() returned, background
 *    jobs it left behind are the child's business.
 *  - process.stdio() sets O_NONBLOCK on fd 0 / fd 1, which are often shared
 *    with a terminal or a parent; close() and __gc restore the flags. Do
 *    not mix print() / io.write() with it while it is open.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sb_process.h"

extern char **environ;

#define PROC_NAME "sibyl.process"
#define STDIO_NAME "sibyl.process.stdio"
#define DEFAULT_MAX_LINE ((size_t)16 << 20)
#define DEFAULT_STDERR_LIMIT ((size_t)64 << 10)
#define POLL_TV_USEC 50000

static char proc_key, stdio_key, stdio_slot;

enum { ESC_GRACE, ESC_TERM, ESC_KILL };

typedef struct wait_req wait_req;

typedef struct sb_proc {
    sibyl_rt *rt;
    int stdio;                  /* process.stdio(): no child */
    pid_t pid;                  /* also the process group id; -1 for stdio */
    int pidfd;                  /* -1 when polling */
    struct event *exit_ev;      /* pidfd readable, or the polling timer */
    int reaped;                 /* the child's status is known */
    int status;                 /* its wait status */
    int lost;                   /* somebody else reaped it: status unknown */
    sb_rstream out;             /* child's stdout / our fd 0 */
    sb_wstream in;              /* child's stdin / our fd 1 */
    int err_fd;                 /* child's stderr pipe, or -1 */
    struct event *err_ev;
    char *ering;                /* the last elimit bytes of stderr, a ring */
    size_t elimit, estart, elen;
    wait_req *waiters;          /* wait() and close() calls, doubly linked */
    int closing;                /* close() started the escalation */
    int phase;                  /* ESC_* */
    double grace;
    struct event *esc_ev;
    int closed;                 /* close() finished: every fd released */
    int fl0, fl1;               /* stdio: fd flags to restore, or -1 */
} sb_proc;

/* A wait() or close() call (the op's data). */
struct wait_req {
    sb_proc *p;                 /* while waiting */
    wait_req *next, *prev;
    int is_close;
    int status, lost;
};

typedef struct {
    sb_proc *p;                 /* NULL once collected */
} l_proc;

/* Signal the child's whole group; never anything when there is no child. */
static int group_kill(const sb_proc *p, int sig)
{
    if (p->pid <= 0) {
        errno = ESRCH;
        return -1;
    }
    return kill(-p->pid, sig);
}

/* ---------------------------------------------------------------- stderr */

static void ering_add(sb_proc *p, const char *s, size_t n)
{
    if (p->elimit == 0 || p->ering == NULL)
        return;
    if (n >= p->elimit) {
        memcpy(p->ering, s + n - p->elimit, p->elimit);
        p->estart = 0;
        p->elen = p->elimit;
        return;
    }
    size_t end = (p->estart + p->elen) % p->elimit;
    size_t first = p->elimit - end < n ? p->elimit - end : n;
    memcpy(p->ering + end, s, first);
    memcpy(p->ering, s + first, n - first);
    if (p->elen + n > p->elimit) {
        p->estart = (p->estart + p->elen + n - p->elimit) % p->elimit;
        p->elen = p->elimit;
    } else {
        p->elen += n;
    }
}

/* Read what the stderr pipe holds now (at most a few chunks); close it at EOF. */
static void err_drain(sb_proc *p)
{
    char buf[16384];
    for (int i = 0; i < 8 && p->err_fd >= 0; i++) {
        ssize_t r = read(p->err_fd, buf, sizeof buf);
        if (r > 0) {
            ering_add(p, buf, (size_t)r);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (p->err_ev)
            event_del(p->err_ev);
        close(p->err_fd);
        p->err_fd = -1;
    }
}

static void err_cb(evutil_socket_t fd, short what, void *arg)
{
    SB_UNUSED(fd);
    SB_UNUSED(what);
    err_drain(arg);
}

/* ------------------------------------------------------------- lifecycle */

static void wake_waiters(sb_proc *p)
{
    while (p->waiters) {
        wait_req *w = p->waiters;
        p->waiters = w->next;
        w->next = w->prev = NULL;
        w->p = NULL;
        w->status = p->status;
        w->lost = p->lost;
        sb_op_done(sb_op_from_data(w));
    }
}

/* Release every fd and event but the exit watch (close() finishing, __gc). */
static void release_io(sb_proc *p)
{
    sb_ws_close(&p->in, !p->stdio);
    sb_rs_close(&p->out, !p->stdio);
    if (p->err_fd >= 0) {
        err_drain(p);
        if (p->err_fd >= 0)
            close(p->err_fd);
        p->err_fd = -1;
    }
    if (p->err_ev) {
        event_free(p->err_ev);
        p->err_ev = NULL;
    }
    if (p->esc_ev)
        event_del(p->esc_ev);
    p->closed = 1;
}

/*
 * Collect the child's status if it has exited (block: wait for it). While
 * closing, the rest of its group is SIGKILLed first, when the leader is a
 * zombie whose pid still pins the pgid. Wakes wait() and close() calls.
 */
static void proc_reap(sb_proc *p, int block)
{
    if (p->stdio || p->reaped || p->pid <= 0)
        return;
    if (p->closing) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == p->pid)
            group_kill(p, SIGKILL);
    }
    int st = 0;
    pid_t r;
    do
        r = waitpid(p->pid, &st, block ? 0 : WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == 0)
        return;
    p->reaped = 1;
    p->status = r > 0 ? st : 0;
    p->lost = r < 0;
    if (p->exit_ev)
        event_del(p->exit_ev);
    if (p->pidfd >= 0) {
        close(p->pidfd);
        p->pidfd = -1;
    }
    if (p->closing)
        release_io(p);
    wake_waiters(p);
}

static void exit_cb(evutil_socket_t fd, short what, void *arg)
{
    SB_UNUSED(fd);
    SB_UNUSED(what);
    proc_reap(arg, 0);
}

/* close()'s escalation: grace, SIGTERM, grace, SIGKILL. */
static void esc_arm(sb_proc *p)
{
    struct timeval tv;
    event_base_update_cache_time(p->rt->base);  /* count from now, not from the loop's last poll */
    tv.tv_sec = (time_t)p->grace;
    tv.tv_usec = (suseconds_t)((p->grace - (double)tv.tv_sec) * 1e6);
    event_add(p->esc_ev, &tv);
}

static void esc_cb(evutil_socket_t fd, short what, void *arg)
{
    sb_proc *p = arg;
    SB_UNUSED(fd);
    SB_UNUSED(what);
    if (p->reaped)
        return;
    if (p->phase == ESC_GRACE) {
        p->phase = ESC_TERM;
        group_kill(p, SIGTERM);
        esc_arm(p);
    } else if (p->phase == ESC_TERM) {
        p->phase = ESC_KILL;
        group_kill(p, SIGKILL);
    }
}

/* __gc and runtime close: SIGKILL the group, reap, release, free. */
static void proc_destroy(sb_proc *p)
{
    if (!p->stdio && !p->reaped) {
        p->closing = 1;
        group_kill(p, SIGKILL);
        proc_reap(p, 1);
    }
    release_io(p);
    wake_waiters(p);                    /* stdio: none; a child: none left */
    if (p->stdio) {
        if (p->fl0 >= 0)
            fcntl(0, F_SETFL, p->fl0);
        if (p->fl1 >= 0)
            fcntl(1, F_SETFL, p->fl1);
    }
    if (p->exit_ev)
        event_free(p->exit_ev);
    if (p->esc_ev)
        event_free(p->esc_ev);
    if (p->pidfd >= 0)
        close(p->pidfd);
    free(p->ering);
    free(p);
}

/* ---------------------------------------------------------------- waiting */

static int push_wait(lua_State *co, void *data)
{
    wait_req *w = data;
    sb_proc_push_exit(co, w->status, w->lost);
    return 1;
}

static void cancel_wait(void *data)
{
    wait_req *w = data;
    sb_proc *p = w->p;
    if (p == NULL)
        return;                         /* completed: nothing held */
    if (w->prev)
        w->prev->next = w->next;
    else
        p->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->p = NULL;
    if (!w->is_close || p->reaped)
        return;
    for (wait_req *o = p->waiters; o; o = o->next)
        if (o->is_close)
            return;
    /* The last close() was cancelled: stop now rather than after the grace. */
    p->phase = ESC_KILL;
    event_del(p->esc_ev);
    group_kill(p, SIGKILL);
}

static int park_wait(lua_State *L, sb_proc *p, int is_close)
{
    sb_op *op = sb_op_new(L, sizeof(wait_req), push_wait, cancel_wait);
    wait_req *w = sb_op_data(op);
    w->p = p;
    w->is_close = is_close;
    w->next = p->waiters;
    if (p->waiters)
        p->waiters->prev = w;
    p->waiters = w;
    return sb_op_park(L, op);
}

/* ----------------------------------------------------------------- spawn */

/* Fail a spawn, closing the fds opened so far. */
static int spawn_fail(lua_State *L, int *fds, int nfds, const char *fmt, const char *a, int err)
{
    for (int i = 0; i < nfds; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return sb_fail(L, "io", fmt, a, strerror(err));
}

/* Move fd above 2, so no dup2 onto 0/1/2 can clobber another pipe end. */
static int lift_fd(int fd)
{
    if (fd > 2)
        return fd;
    int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return nfd;
}

/* Lua strings for argv / envp go into the anchor table at index a. */
static const char *anchor(lua_State *L, int a)
{
    const char *s = lua_tostring(L, -1);
    lua_rawseti(L, a, (int)lua_objlen(L, a) + 1);
    return s;
}

/* Build envp (NULL-terminated, in a userdata left on the stack). */
static char **build_env(lua_State *L, int env, int clear, int a)
{
    int n = 0;
    if (!clear)
        for (char **e = environ; *e; e++)
            n++;
    lua_pushnil(L);
    while (lua_next(L, env)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "process.spawn: env keys must be strings");
        int t = lua_type(L, -1);
        if (t != LUA_TSTRING && t != LUA_TNUMBER && !(t == LUA_TBOOLEAN && !lua_toboolean(L, -1)))
            luaL_error(L, "process.spawn: env.%s must be a string, a number or false (unset)",
                       lua_tostring(L, -2));
        lua_pop(L, 1);
        n++;
    }
    char **envp = lua_newuserdata(L, sizeof(char *) * (size_t)(n + 1));
    int k = 0;
    if (!clear) {
        for (char **e = environ; *e; e++) {
            const char *eq = strchr(*e, '=');
            lua_pushlstring(L, *e, eq ? (size_t)(eq - *e) : strlen(*e));
            lua_rawget(L, env);
            int overridden = !lua_isnil(L, -1);
            lua_pop(L, 1);
            if (!overridden)
                envp[k++] = *e;
        }
    }
    lua_pushnil(L);
    while (lua_next(L, env)) {
        if (lua_type(L, -1) != LUA_TBOOLEAN) {
            lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
            envp[k++] = (char *)anchor(L, a);
        }
        lua_pop(L, 1);
    }
    envp[k] = NULL;
    return envp;
}

static size_t opt_size(lua_State *L, const char *k, double def, double min)
{
    double v = sb_opt_num(L, 1, k, def);
    if (!(v >= min))
        luaL_error(L, "process.spawn: opts.%s must be a number >= %g", k, min);
    return v >= 9e15 ? (size_t)9e15 : (size_t)v;
}

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int argc = (int)lua_objlen(L, 1);
    if (argc < 1)
        return luaL_error(L, "process.spawn: the command is missing (process.spawn{ \"cmd\", \"arg\", ... })");
    const char *cwd = sb_opt_str(L, 1, "cwd", NULL);
    const char *emode = sb_opt_str(L, 1, "stderr", "pipe");
    int epipe = strcmp(emode, "pipe") == 0, enull = strcmp(emode, "null") == 0;
    if (!epipe && !enull && strcmp(emode, "inherit") != 0)
        return luaL_error(L, "process.spawn: opts.stderr must be \"pipe\", \"inherit\" or \"null\"");
    size_t elimit = opt_size(L, "stderr_limit", (double)DEFAULT_STDERR_LIMIT, 0);
    size_t max_line = opt_size(L, "max_line", (double)DEFAULT_MAX_LINE, 1);
    int clear = sb_opt_bool(L, 1, "env_clear", 0);

    lua_settop(L, 1);
    lua_newtable(L);                                    /* 2: anchors strings */
    char **argv = lua_newuserdata(L, sizeof(char *) * (size_t)(argc + 1));   /* 3 */
    for (int i = 1; i <= argc; i++) {
        lua_rawgeti(L, 1, i);
        if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
            return luaL_error(L, "process.spawn: argv[%d] must be a string", i);
        lua_pushstring(L, lua_tostring(L, -1));
        argv[i - 1] = (char *)anchor(L, 2);
        lua_pop(L, 1);
    }
    argv[argc] = NULL;
    char **envp = environ;
    lua_getfield(L, 1, "env");                          /* 4 */
    if (!lua_isnil(L, 4)) {
        luaL_argcheck(L, lua_istable(L, 4), 1, "opts.env must be a table");
        envp = build_env(L, 4, clear, 2);
    } else if (clear) {
        envp = lua_newuserdata(L, sizeof(char *));
        envp[0] = NULL;
    }
    if (cwd && access(cwd, X_OK) != 0)
        return sb_fail(L, "io", "process.spawn: cannot use cwd '%s': %s", cwd, strerror(errno));

    sibyl_rt *rt = sb_rt(L);
    l_proc *u = lua_newuserdata(L, sizeof *u);
    u->p = NULL;
    sb_getmeta(L, &proc_key);
    lua_setmetatable(L, -2);
    sb_proc *p = calloc(1, sizeof *p);
    char *ring = elimit && epipe ? malloc(elimit) : NULL;
    if (p == NULL || (elimit && epipe && ring == NULL)) {
        free(p);
        free(ring);
        return luaL_error(L, "process.spawn: out of memory");
    }
    p->rt = rt;
    p->pid = -1;
    p->pidfd = p->err_fd = -1;
    p->fl0 = p->fl1 = -1;
    p->reaped = 1;                                      /* no child yet: nothing to kill */
    p->ering = ring;
    p->elimit = ring ? elimit : 0;
    sb_rs_init(&p->out, rt->base, -1, max_line, "process");
    sb_ws_init(&p->in, rt->base, -1, "process");
    u->p = p;                                           /* __gc frees it from here on */

    /* fds: in[0] out[1] er[1] are the child's ends. */
    int fds[6] = {-1, -1, -1, -1, -1, -1};
    int *in = fds, *out = fds + 2, *er = fds + 4;
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 || (epipe && pipe2(er, O_CLOEXEC) != 0))
        return spawn_fail(L, fds, 6, "process.spawn: cannot create pipes for '%s': %s", argv[0], errno);
    for (int i = 0; i < 6; i++)
        if (fds[i] >= 0 && (fds[i] = lift_fd(fds[i])) < 0)
            return spawn_fail(L, fds, 6, "process.spawn: cannot create pipes for '%s': %s", argv[0], errno);

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    if (epipe)
        posix_spawn_file_actions_adddup2(&fa, er[1], 2);
    else if (enull)
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    if (cwd)
        posix_spawn_file_actions_addchdir_np(&fa, cwd);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, &at, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0)
        return spawn_fail(L, fds, 6, "process.spawn: cannot run '%s': %s", argv[0], rc);
    close(in[0]);
    close(out[1]);
    if (er[1] >= 0)
        close(er[1]);
    p->pid = pid;
    p->reaped = 0;

    /* From here on the child exists: failures kill it (through __gc). */
    int bad = sb_ws_init(&p->in, rt->base, in[1], "process") != 0;
    bad |= sb_rs_init(&p->out, rt->base, out[0], max_line, "process") != 0;
    if (er[0] >= 0) {
        p->err_fd = er[0];
        fcntl(er[0], F_SETFL, fcntl(er[0], F_GETFL) | O_NONBLOCK);
        p->err_ev = event_new(rt->base, er[0], EV_READ | EV_PERSIST, err_cb, p);
        bad |= p->err_ev == NULL || event_add(p->err_ev, NULL) != 0;
    }
#ifdef SYS_pidfd_open
    if (getenv("SIBYL_PROCESS_POLL") == NULL)
        p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
#endif
    if (p->pidfd >= 0) {
        p->exit_ev = event_new(rt->base, p->pidfd, EV_READ | EV_PERSIST, exit_cb, p);
        bad |= p->exit_ev == NULL || event_add(p->exit_ev, NULL) != 0;
    } else {
        static const struct timeval poll_tv = {0, POLL_TV_USEC};
        p->exit_ev = event_new(rt->base, -1, EV_PERSIST, exit_cb, p);
        bad |= p->exit_ev == NULL || event_add(p->exit_ev, &poll_tv) != 0;
    }
    p->esc_ev = evtimer_new(rt->base, esc_cb, p);
    if (bad || p->esc_ev == NULL) {
        proc_destroy(p);
        u->p = NULL;
        return sb_fail(L, "io", "process.spawn: cannot watch '%s' on the event loop", argv[0]);
    }
    return 1;
}

/* ---------------------------------------------------------------- methods */

static sb_proc *check_proc(lua_State *L)
{
    l_proc *u = sb_checkudata(L, 1, &proc_key, PROC_NAME);
    if (u->p == NULL)
        luaL_error(L, "process: the object was collected");
    return u->p;
}

/* Either kind of object (the stream methods). */
static sb_proc *check_any(lua_State *L)
{
    l_proc *u = sb_testudata(L, 1, &proc_key);
    if (u == NULL)
        u = sb_testudata(L, 1, &stdio_key);
    if (u == NULL || u->p == NULL)
        luaL_typerror(L, 1, PROC_NAME);
    return u->p;
}

static int l_write(lua_State *L)
{
    sb_proc *p = check_any(L);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    return sb_ws_write(L, &p->in, s, len);
}

static int l_read_line(lua_State *L)
{
    return sb_rs_read_line(L, &check_any(L)->out);
}

static int l_read(lua_State *L)
{
    sb_proc *p = check_any(L);
    lua_Number n = luaL_checknumber(L, 2);
    luaL_argcheck(L, n >= 1, 2, "must be >= 1");
    return sb_rs_read(L, &p->out, n >= 9e15 ? (size_t)9e15 : (size_t)n);
}

static int l_stderr(lua_State *L)
{
    sb_proc *p = check_proc(L);
    if (p->err_fd >= 0)
        err_drain(p);
    size_t first = p->elen;
    if (p->estart + first > p->elimit)
        first = p->elimit - p->estart;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (p->elen) {
        luaL_addlstring(&b, p->ering + p->estart, first);
        luaL_addlstring(&b, p->ering, p->elen - first);
    }
    luaL_pushresult(&b);
    return 1;
}

static int l_close_stdin(lua_State *L)
{
    sb_ws_close(&check_proc(L)->in, 1);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_wait(lua_State *L)
{
    sb_proc *p = check_proc(L);
    proc_reap(p, 0);
    if (p->reaped) {
        sb_proc_push_exit(L, p->status, p->lost);
        return 1;
    }
    sb_proc_need_task(L, "wait");
    return park_wait(L, p, 0);
}

static int l_running(lua_State *L)
{
    sb_proc *p = check_proc(L);
    proc_reap(p, 0);
    lua_pushboolean(L, !p->reaped);
    return 1;
}

static int l_kill(lua_State *L)
{
    sb_proc *p = check_proc(L);
    int sig = sb_proc_check_signal(L, 2, SIGTERM);
    proc_reap(p, 0);
    if (p->reaped)
        return sb_fail(L, "closed", "process: pid %d has exited; nothing to signal", (int)p->pid);
    if (group_kill(p, sig) != 0)
        return sb_fail(L, errno == ESRCH ? "closed" : "io", "process: cannot signal group %d: %s",
                       (int)p->pid, strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

/* p:close{grace = 2}: stdin closed, grace, SIGTERM, grace, SIGKILL; reaped. */
static int l_close(lua_State *L)
{
    sb_proc *p = check_proc(L);
    double grace = 2;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "grace");
        if (!lua_isnil(L, -1))
            grace = luaL_checknumber(L, -1);
        lua_pop(L, 1);
        luaL_argcheck(L, grace >= 0 && grace < 1e9, 2, "grace must be a number of seconds >= 0");
    }
    if (!p->reaped && !p->closing) {
        sb_proc_need_task(L, "close");
        p->closing = 1;
        p->phase = ESC_GRACE;
        p->grace = grace;
        sb_ws_close(&p->in, 1);
        sb_rs_close(&p->out, 1);
        proc_reap(p, 0);
        if (!p->reaped)
            esc_arm(p);
    }
    if (p->reaped) {
        if (!p->closed)
            release_io(p);
        sb_proc_push_exit(L, p->status, p->lost);
        return 1;
    }
    sb_proc_need_task(L, "close");
    return park_wait(L, p, 1);
}

static int l_gc(lua_State *L)
{
    l_proc *u = lua_touserdata(L, 1);
    if (u->p) {
        proc_destroy(u->p);
        u->p = NULL;
    }
    return 0;
}

static int l_tostring(lua_State *L)
{
    l_proc *u = sb_checkudata(L, 1, &proc_key, PROC_NAME);
    sb_proc *p = u->p;
    if (p == NULL || p->pid < 0)
        lua_pushliteral(L, PROC_NAME " (closed)");
    else if (!p->reaped)
        lua_pushfstring(L, PROC_NAME " (pid %d)", (int)p->pid);
    else if (!p->lost && WIFSIGNALED(p->status)) {
        lua_pushliteral(L, PROC_NAME " (signal ");
        sb_proc_push_signal(L, WTERMSIG(p->status));
        lua_pushliteral(L, ")");
        lua_concat(L, 3);
    } else
        lua_pushfstring(L, PROC_NAME " (exited %d)",
                        p->lost || !WIFEXITED(p->status) ? -1 : WEXITSTATUS(p->status));
    return 1;
}

/* p.pid, then the methods (upvalue 1). */
static int l_index(lua_State *L)
{
    l_proc *u = sb_checkudata(L, 1, &proc_key, PROC_NAME);
    const char *k = lua_tostring(L, 2);
    if (k && strcmp(k, "pid") == 0) {
        if (u->p)
            lua_pushinteger(L, u->p->pid);
        else
            lua_pushnil(L);
        return 1;
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    return 1;
}

/* ------------------------------------------------------------------ stdio */

/* process.stdio([{max_line =}]): one object per runtime until closed. */
static int l_stdio(lua_State *L)
{
    size_t max_line = DEFAULT_MAX_LINE;
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        max_line = opt_size(L, "max_line", (double)DEFAULT_MAX_LINE, 1);
    }
    lua_pushlightuserdata(L, &stdio_slot);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (!lua_isnil(L, -1))
        return 1;
    sibyl_rt *rt = sb_rt(L);
    l_proc *u = lua_newuserdata(L, sizeof *u);
    u->p = NULL;
    sb_getmeta(L, &stdio_key);
    lua_setmetatable(L, -2);
    sb_proc *p = calloc(1, sizeof *p);
    if (p == NULL)
        return luaL_error(L, "process.stdio: out of memory");
    p->rt = rt;
    p->stdio = 1;
    p->pid = -1;
    p->pidfd = p->err_fd = -1;
    p->reaped = 1;
    p->fl0 = fcntl(0, F_GETFL);
    p->fl1 = fcntl(1, F_GETFL);
    u->p = p;
    int bad = sb_rs_init(&p->out, rt->base, p->fl0 >= 0 ? 0 : -1, max_line, "stdio") != 0;
    bad |= sb_ws_init(&p->in, rt->base, p->fl1 >= 0 ? 1 : -1, "stdio") != 0;
    if (bad) {
        proc_destroy(p);
        u->p = NULL;
        return sb_fail(L, "io", "process.stdio: cannot watch fd 0 / fd 1 on the event loop");
    }
    lua_pushlightuserdata(L, &stdio_slot);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    return 1;
}

/* io:close(): pending reads and writes fail with "closed", fd flags are
 * restored; fd 0 / fd 1 stay open. The next process.stdio() starts afresh. */
static int l_stdio_close(lua_State *L)
{
    l_proc *u = sb_checkudata(L, 1, &stdio_key, STDIO_NAME);
    if (u->p) {
        proc_destroy(u->p);
        u->p = NULL;
        lua_pushlightuserdata(L, &stdio_slot);
        lua_rawget(L, LUA_REGISTRYINDEX);
        int same = lua_rawequal(L, -1, 1);
        lua_pop(L, 1);
        if (same) {
            lua_pushlightuserdata(L, &stdio_slot);
            lua_pushnil(L);
            lua_rawset(L, LUA_REGISTRYINDEX);
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_stdio_tostring(lua_State *L)
{
    l_proc *u = sb_checkudata(L, 1, &stdio_key, STDIO_NAME);
    lua_pushstring(L, u->p ? STDIO_NAME : STDIO_NAME " (closed)");
    return 1;
}

/* Stream methods on a closed stdio object answer nil, "closed". */
static int stdio_closed(lua_State *L)
{
    l_proc *u = sb_testudata(L, 1, &stdio_key);
    if (u && u->p == NULL)
        return sb_fail(L, "closed", "stdio: the stream is closed");
    return 0;
}

static int l_s_write(lua_State *L) { int n = stdio_closed(L); return n ? n : l_write(L); }
static int l_s_read_line(lua_State *L) { int n = stdio_closed(L); return n ? n : l_read_line(L); }
static int l_s_read(lua_State *L) { int n = stdio_closed(L); return n ? n : l_read(L); }

/* ----------------------------------------------------------------- module */

static const luaL_Reg proc_methods[] = {
    {"write", l_write},
    {"read_line", l_read_line},
    {"read", l_read},
    {"stderr", l_stderr},
    {"close_stdin", l_close_stdin},
    {"wait", l_wait},
    {"running", l_running},
    {"kill", l_kill},
    {"close", l_close},
    {NULL, NULL}
};

static const luaL_Reg stdio_methods[] = {
    {"write", l_s_write},
    {"read_line", l_s_read_line},
    {"read", l_s_read},
    {"close", l_stdio_close},
    {"__gc", l_stdio_close},
    {"__tostring", l_stdio_tostring},
    {NULL, NULL}
};

static const luaL_Reg process_funcs[] = {
    {"spawn", l_spawn},
    {"stdio", l_stdio},
    {NULL, NULL}
};

int luaopen_sibyl_process(lua_State *L)
{
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);

    sb_newmeta(L, &proc_key, PROC_NAME);
    lua_newtable(L);
    luaL_setfuncs(L, proc_methods, 0);
    lua_pushcclosure(L, l_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);
    sb_newmeta(L, &stdio_key, STDIO_NAME);
    luaL_setfuncs(L, stdio_methods, 0);
    lua_pop(L, 1);

    lua_createtable(L, 0, 4);
    luaL_setfuncs(L, process_funcs, 0);
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "_VERSION");
    return 1;
}
