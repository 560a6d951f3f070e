/*
 * repl.c -- the REPL: GNU readline's callback interface on the event loop.
 *
 * Reading a line never blocks the loop: stdin is an event, and readline is
 * fed one character at a time, so background tasks keep running at the
 * prompt. A complete chunk runs as a task (so `sibyl.sleep(1)` works at the
 * prompt); while it runs, input is paused. The Lua side (sibyl.repl) decides
 * whether a chunk is complete and prints results.
 *
 * Ctrl-C: at the prompt it clears the line; while a chunk runs it cancels
 * that chunk's task (its pending I/O is torn down) -- and if the chunk is
 * busy in Lua code, a one-shot hook interrupts it -- then the prompt
 * returns. Ctrl-D on an empty line exits.
 *
 * Caveat: LuaJIT's compiled loops never check hooks, so `while true do end`
 * cannot be interrupted; a second Ctrl-C while the first is still pending
 * exits the process (status 130) instead of leaving the user stuck.
 *
 * Caveat: readline keeps global state, so there is one REPL per process.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "repl.h"

#define PROMPT "> "
#define PROMPT_MORE ">> "

typedef struct {
    sibyl_rt *rt;
    struct event *stdin_ev, *sig_ev;
    sb_task *line_task;         /* the chunk running now, or NULL */
    int line_ref;
    int done;
    char *buf;                  /* pending multi-line chunk */
    size_t len;
    char history[1024];
} repl_state;

static repl_state R;
static int sig_pipe[2] = {-1, -1};
static volatile sig_atomic_t hook_armed;
static volatile sig_atomic_t sigint_for_line;   /* the Ctrl-C was meant for a running chunk */

/* ------------------------------------------------------------ interrupts */

static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
    SB_UNUSED(ar);
    lua_sethook(L, NULL, 0, 0);
    hook_armed = 0;
    if (R.line_task && R.rt->current == R.line_task)
        luaL_error(L, "interrupted");
}

static void on_sigint(int sig)
{
    SB_UNUSED(sig);
    int saved = errno;
    if (hook_armed) {
        /* The first Ctrl-C never got through: the chunk is spinning in
         * JIT-compiled code, which does not check hooks. Leave. */
        static const char msg[] = "\nsibyl: interrupted twice; exiting\n";
        if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
            /* nothing more to do */
        }
        _exit(130);
    }
    if (R.line_task) {
        sigint_for_line = 1;
        hook_armed = 1;   /* stop busy Lua code in the running chunk */
        lua_sethook(R.rt->L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
    }
    if (write(sig_pipe[1], "", 1) < 0) {
        /* nothing to do: the pipe is full, a wake-up is already pending */
    }
    errno = saved;
}

/* --------------------------------------------------------------- prompt */

static void on_line(char *line);

static void prompt_on(void)
{
    if (R.stdin_ev == NULL)
        return;                         /* not a terminal: see run_piped */
    rl_callback_handler_install(R.len ? PROMPT_MORE : PROMPT, on_line);
    event_add(R.stdin_ev, NULL);
}

static void prompt_off(void)
{
    if (R.stdin_ev == NULL)
        return;
    event_del(R.stdin_ev);
    rl_callback_handler_remove();
}

static void reset_buffer(void)
{
    free(R.buf);
    R.buf = NULL;
    R.len = 0;
}

static void line_done(sb_task *t, void *ud)
{
    SB_UNUSED(ud);
    if (sb_task_status(t) == SB_TASK_CANCELLED) {
        printf("cancelled\n");
    } else if (sb_task_status(t) == SB_TASK_ERROR) {
        /* The Lua side catches errors; this is an interrupt or a bug. */
        lua_State *L = R.rt->L;
        sb_task_push_error(L, t);
        lua_getfield(L, -1, "message");
        printf("%s\n", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
        lua_pop(L, 2);
    }
    fflush(stdout);
    R.line_task = NULL;
    if (hook_armed) {
        lua_sethook(R.rt->L, NULL, 0, 0);
        hook_armed = 0;
    }
    if (!R.done)
        prompt_on();
}

/* Call sibyl.repl.<fn>(args...) on the main state; returns number of results. */
static int call_repl(lua_State *L, const char *fn, int nargs, int nres)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sibyl.repl");
    if (lua_pcall(L, 1, 1, 0) != 0) {
        fprintf(stderr, "sibyl: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1 + nargs);
        return -1;
    }
    lua_getfield(L, -1, fn);
    lua_remove(L, -2);
    lua_insert(L, -1 - nargs);
    if (lua_pcall(L, nargs, nres, 0) != 0) {
        fprintf(stderr, "sibyl: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    return nres;
}

static void append_line(const char *line)
{
    size_t n = strlen(line);
    char *nb = realloc(R.buf, R.len + n + 2);
    if (nb == NULL)
        return;
    R.buf = nb;
    if (R.len)
        R.buf[R.len++] = '\n';
    memcpy(R.buf + R.len, line, n);
    R.len += n;
    R.buf[R.len] = '\0';
}

/* Called by readline with a complete line (NULL on Ctrl-D). */
static void on_line(char *line)
{
    lua_State *L = R.rt->L;
    if (line == NULL) {
        printf("\n");
        R.done = 1;
        prompt_off();
        return;
    }
    append_line(line);
    free(line);

    /* compile(src) -> fn | false ("incomplete") | nil, message */
    lua_pushlstring(L, R.buf, R.len);
    if (call_repl(L, "compile", 1, 2) < 0) {
        reset_buffer();
        return;
    }
    if (lua_isboolean(L, -2) && !lua_toboolean(L, -2)) {
        lua_pop(L, 2);
        if (R.stdin_ev)
            rl_set_prompt(PROMPT_MORE);
        return;
    }
    if (R.len) {
        add_history(R.buf);
        if (R.history[0])
            append_history(1, R.history);
    }
    reset_buffer();
    if (lua_isnil(L, -2)) {
        printf("%s\n", lua_tostring(L, -1));
        lua_pop(L, 2);
        if (R.stdin_ev)
            rl_set_prompt(PROMPT);
        return;
    }
    lua_pop(L, 1);                      /* the compiled function */
    prompt_off();
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sibyl.repl");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "eval");
    lua_remove(L, -2);
    lua_insert(L, -2);                  /* eval fn */
    R.line_task = sb_spawn(L, 1);
    sb_task_on_done(R.line_task, line_done, NULL);
    lua_pop(L, 1);
}

/* readline blocks when asked to read a character that is not there, and
 * that would stall the whole loop. So read only what FIONREAD says is
 * waiting (a wake-up can be stale: Ctrl-C may have flushed the input). */
static void stdin_cb(evutil_socket_t fd, short what, void *arg)
{
    int n = 0;
    SB_UNUSED(what);
    SB_UNUSED(arg);
    if (ioctl(fd, FIONREAD, &n) == 0 && n == 0) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)))
            rl_callback_read_char();    /* hang-up: let readline see EOF */
        return;
    }
    rl_callback_read_char();
}

/* Readline's terminal set-up, plus NOFLSH: Ctrl-C must not discard input
 * the loop was already told about (readline would then block reading it). */
static void prep_terminal(int meta)
{
    rl_prep_terminal(meta);
    struct termios t;
    if (tcgetattr(STDIN_FILENO, &t) == 0) {
        t.c_lflag |= NOFLSH;
        tcsetattr(STDIN_FILENO, TCSANOW, &t);
    }
}

static void sig_cb(evutil_socket_t fd, short what, void *arg)
{
    char b[64];
    SB_UNUSED(what);
    SB_UNUSED(arg);
    while (read(fd, b, sizeof b) > 0)
        ;
    int for_line = sigint_for_line;
    sigint_for_line = 0;
    if (R.line_task) {
        printf("\n");
        sb_task_cancel(R.line_task);   /* line_done brings the prompt back */
        return;
    }
    if (for_line)
        return;                         /* the hook already stopped that chunk */
    /* At the prompt: drop the line (and any pending chunk). */
    reset_buffer();
    printf("^C\n");
    rl_replace_line("", 0);
    rl_set_prompt(PROMPT);
    rl_on_new_line();
    rl_redisplay();
}

/* Standard input is a pipe or a file (`sibyl -i < cmds.lua`): epoll cannot
 * watch regular files, so read lines in blocking mode and run each chunk
 * to completion, with the same evaluation and printing as at the prompt. */
static void run_piped(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while (!R.done && (n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        on_line(strdup(line));
        while (R.line_task && !R.done)
            event_base_loop(R.rt->base, EVLOOP_ONCE);
        fflush(stdout);
    }
    free(line);
    if (!R.done)
        on_line(NULL);
}

/* ---------------------------------------------------------------- entry */

static void open_history(void)
{
    const char *h = getenv("SIBYL_HISTORY");
    const char *home = getenv("HOME");
    if (h)
        snprintf(R.history, sizeof R.history, "%s", h);
    else if (home)
        snprintf(R.history, sizeof R.history, "%s/.sibyl_history", home);
    if (R.history[0]) {
        int fd = open(R.history, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0)
            close(fd);
        read_history(R.history);
        stifle_history(1000);
    }
}

int sb_repl(sibyl_rt *rt)
{
    memset(&R, 0, sizeof R);
    R.rt = rt;
    if (pipe(sig_pipe) != 0)
        return SIBYL_ERROR;
    for (int i = 0; i < 2; i++) {
        fcntl(sig_pipe[i], F_SETFL, O_NONBLOCK);
        fcntl(sig_pipe[i], F_SETFD, FD_CLOEXEC);
    }
    rl_catch_signals = 0;
    rl_catch_sigwinch = 0;
    rl_readline_name = "sibyl";
    rl_prep_term_function = prep_terminal;
    if (isatty(STDIN_FILENO))
        open_history();

    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);

    int tty = isatty(STDIN_FILENO);
    if (tty)
        R.stdin_ev = event_new(rt->base, STDIN_FILENO, EV_READ | EV_PERSIST, stdin_cb, NULL);
    R.sig_ev = event_new(rt->base, sig_pipe[0], EV_READ | EV_PERSIST, sig_cb, NULL);
    event_add(R.sig_ev, NULL);
    sb_rt_hold(rt);             /* the prompt keeps the loop alive */
    if (tty) {
        printf("Sibyl %s -- Lua on an event loop. Ctrl-C cancels, Ctrl-D exits.\n", SIBYL_VERSION);
        fflush(stdout);
        prompt_on();
        while (!R.done)
            event_base_loop(rt->base, EVLOOP_ONCE);
    } else {
        run_piped();
    }
    sb_rt_release(rt);

    if (R.line_task)
        sb_task_cancel(R.line_task);
    if (R.stdin_ev)
        event_free(R.stdin_ev);
    event_free(R.sig_ev);
    sigaction(SIGINT, &old, NULL);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    reset_buffer();
    if (isatty(STDIN_FILENO))
        rl_callback_handler_remove();
    return SIBYL_OK;
}
