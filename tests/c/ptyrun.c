/*
 * ptyrun.c - a small expect-style driver for interactive programs.
 *
 * Used by the test suite (ctest) to drive interactive programs (the sibyl
 * REPL, among others) through a pseudo-terminal.
 *
 * Usage:
 *   ptyrun [-t SECONDS] [-T SECONDS] [-v] [-k] SCRIPT -- COMMAND [ARGS...]
 *
 *   -t SECONDS  default timeout of expect/expect_re/expect_exit/send steps
 *               (default 10)
 *   -T SECONDS  global hard limit for the whole run (default 60)
 *   -v          verbose: log the steps, the temporary HOME, and echo all
 *               output received from the terminal to stderr as it arrives
 *   -k          keep the temporary HOME directory instead of deleting it
 *
 * COMMAND runs on a new pty (80x24) as a session leader, with stdin, stdout
 * and stderr on the pty, TERM=dumb, HOME set to a fresh temporary directory,
 * COLUMNS/LINES/INPUTRC unset, and all signal dispositions reset to default.
 * The child is started just before the first step that is not `env` or
 * `timeout`.
 *
 * Script: one step per line.  Blank lines and lines whose first non-blank
 * character is '#' are ignored; leading blanks are ignored.  A step is a
 * keyword, ONE separator (space or tab), and the argument: the rest of the
 * line, verbatim (trailing spaces are significant; a trailing '\r' from a
 * CRLF file is dropped).
 *
 *   send TEXT        write TEXT to the terminal
 *   expect TEXT      wait until TEXT appears in the output received since the
 *                    end of the previous match; the match end becomes the new
 *                    start position
 *   expect_re REGEX  the same with a POSIX extended regex (see below)
 *   reject TEXT      after a short drain of pending output, fail if TEXT
 *                    occurs in the output since the end of the previous match
 *                    (does not move the match position)
 *   reject_re REGEX  the same with a regex
 *   ctrl KEY         send a control character: a-z (any case), @ [ \ ] ^ _ ?
 *                    (e.g. `ctrl c` = 0x03, `ctrl d` = 0x04, `ctrl ?` = 0x7f)
 *   sleep MS         pause MS milliseconds (output is still read)
 *   timeout SECONDS  set the timeout for the following steps
 *   env NAME=VALUE   set a variable in the child's environment (VALUE taken
 *                    verbatim); only before the first step other than
 *                    env/timeout
 *   expect_exit CODE wait (within the timeout) for the child to exit and
 *                    check that it exited normally with status CODE
 *   alive            check that the child process is still running
 *
 * Escapes in TEXT (send/expect/reject): \n \r \t \\ \e (ESC) \a (BEL) \s
 * (space, handy for trailing spaces) \xHH.  Unknown escapes are an error.
 * In REGEX, \n \r \t \e \xHH are decoded to the raw byte and every other
 * backslash sequence is passed to regcomp unchanged (so \. \( \\ keep their
 * regex meaning).  Regexes are compiled with REG_EXTENDED|REG_NEWLINE and
 * executed with REG_NOTEOL (and REG_NOTBOL unless the search starts at the
 * beginning of a line): '.' and bracket expressions do not match a newline,
 * '^' matches at the start of a line, and '$' matches only at the end of a
 * COMPLETE line (just before a '\n'), never at the end of the output read so
 * far.
 *
 * Output matching works on a cleaned copy of the output: ANSI escape
 * sequences (CSI "ESC [ ... final", OSC/DCS/PM/APC/SOS strings ended by BEL
 * or ESC \, two-byte ESC sequences, ESC with intermediates such as "ESC ( B"),
 * '\r', BEL, NUL, SO and SI are removed.  The bracketed-paste toggles
 * readline emits (ESC [ ? 2004 h / l) are ordinary CSI sequences.  '\r' is
 * also removed from expect/reject TEXT so that "\r\n" in a script works.  Note
 * that the terminal (or readline) echoes what is sent, so the echo is part of
 * the output: after `send print("hi")\n`, `expect hi` matches the echo; use
 * e.g. `expect_re ^hi$` to match an output line.
 *
 * Tips: `expect` the prompt before sending (input typed before the program
 * has set up the terminal is echoed by the line discipline instead); keep
 * sent lines shorter than the 80 columns (readline on TERM=dumb scrolls long
 * lines horizontally, which garbles their echo but not the program's output);
 * before `ctrl c`, wait for evidence that the program is busy (on SIGINT the
 * line discipline discards input the program has not read yet).
 *
 * On failure, a message naming SCRIPT:LINE and the step is printed to stderr,
 * followed by the child's state and the last ~2000 bytes of cleaned output;
 * the child's process group (and, on Linux, every process left in its
 * session) is killed, and ptyrun exits 1.  Usage and script syntax errors
 * exit 2.  On success, any still-running child gets SIGHUP, then SIGKILL,
 * is reaped, and "ptyrun: N steps ok" is printed to stdout (exit 0).
 *
 * Build: cc -std=c11 -D_GNU_SOURCE -Wall -Wextra ptyrun.c -lutil
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pty.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

#define TICK_MS 50              /* max single poll wait (reaping, signals)  */
#define TAIL_BYTES 2000         /* output shown on failure                  */
#define REJECT_QUIET_MS 50      /* reject: drain until this long quiet ...  */
#define REJECT_MAX_MS 300       /* ... but at most this long                */
#define HUP_GRACE_MS 1000       /* cleanup: SIGHUP -> SIGKILL delay         */
#define MAX_UNMATCHED (16u << 20) /* cap on output kept while waiting       */

enum kind {
    K_SEND, K_EXPECT, K_EXPECT_RE, K_REJECT, K_REJECT_RE, K_CTRL, K_SLEEP,
    K_TIMEOUT, K_ENV, K_EXPECT_EXIT, K_ALIVE
};

static const struct {
    const char *name;
    enum kind kind;
    bool has_arg;
} keywords[] = {
    { "send", K_SEND, true },
    { "expect", K_EXPECT, true },
    { "expect_re", K_EXPECT_RE, true },
    { "reject", K_REJECT, true },
    { "reject_re", K_REJECT_RE, true },
    { "ctrl", K_CTRL, true },
    { "sleep", K_SLEEP, true },
    { "timeout", K_TIMEOUT, true },
    { "env", K_ENV, true },
    { "expect_exit", K_EXPECT_EXIT, true },
    { "alive", K_ALIVE, false },
};

struct step {
    enum kind kind;
    int line;           /* 1-based line number in the script */
    char *src;          /* the step as written (leading blanks removed) */
    char *data;         /* decoded text / regex source / env assignment */
    size_t len;         /* length of data */
    regex_t re;
    bool has_re;
    double num;         /* sleep ms, timeout seconds */
    int code;           /* expect_exit status, ctrl byte */
};

/* ---- global state ------------------------------------------------------ */

static const char *script_path;
static bool verbose, keep_home;
static struct step *steps;
static size_t nsteps;
static double default_timeout = 10.0;
static double global_limit = 60.0;
static int64_t timeout_ms;
static int64_t global_deadline;

static int master_fd = -1;
static volatile pid_t child_pid = -1;
static bool child_reaped;
static int child_status;
static bool master_eof;
static bool exec_ok;            /* the child's exec succeeded */
static char home_dir[PATH_MAX];
static bool home_made;

static char *out;               /* cleaned output, always NUL-terminated */
static size_t out_len, out_cap;
static size_t match_pos;        /* end of the previous match in out */
static size_t dropped_total;    /* bytes discarded from the front of out */
static size_t skipped_total;    /* unmatched bytes discarded (MAX_UNMATCHED) */
static int strip_state;
static bool echo_at_bol = true;  /* -v: last echoed byte was a newline */

static const struct step *cur;  /* step being executed (for messages) */
static volatile sig_atomic_t got_signal;
static bool cleaning_up;

static void cleanup(void);

/* ---- small helpers ----------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fputs("ptyrun: out of memory\n", stderr);
        cleanup();
        exit(1);
    }
    return q;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

/* Print bytes to stderr, making control characters other than \n and \t
 * visible.  Bytes >= 0x80 are printed as is (UTF-8 text). */
static void put_visible(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n' || c == '\t' || (c >= 0x20 && c != 0x7f))
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
}

static const char *describe_status(int st, char *buf, size_t bufsz)
{
    if (WIFEXITED(st))
        snprintf(buf, bufsz, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(buf, bufsz, "was killed by signal %d (%s)%s", WTERMSIG(st),
                 strsignal(WTERMSIG(st)),
                 WCOREDUMP(st) ? ", core dumped" : "");
    else
        snprintf(buf, bufsz, "has wait status 0x%x", (unsigned)st);
    return buf;
}

static void reap_nohang(void)
{
    if (child_pid <= 0 || child_reaped)
        return;
    int st;
    pid_t r = waitpid(child_pid, &st, WNOHANG);
    if (r == child_pid) {
        child_reaped = true;
        child_status = st;
    } else if (r < 0 && errno == ECHILD) {
        /* should not happen (SIGCHLD is reset to SIG_DFL in main) */
        child_reaped = true;
        child_status = 0;
    }
}

static const char *child_state(char *buf, size_t bufsz)
{
    if (child_pid <= 0) {
        snprintf(buf, bufsz, "was not started");
        return buf;
    }
    reap_nohang();
    if (!child_reaped) {
        snprintf(buf, bufsz, "is running (pid %ld)", (long)child_pid);
        return buf;
    }
    return describe_status(child_status, buf, bufsz);
}

/* ---- output cleaning --------------------------------------------------- */

enum { S_NORMAL, S_ESC, S_ESC_INTER, S_CSI, S_STR, S_STR_ESC };

static void emit(unsigned char c)
{
    if (out_len + 2 > out_cap) {
        out_cap = out_cap ? out_cap * 2 : 8192;
        out = xrealloc(out, out_cap);
    }
    out[out_len++] = (char)c;
    out[out_len] = '\0';
}

/* Streaming ANSI/ECMA-48 stripper: sequences may be split across reads. */
static void clean_byte(unsigned char c)
{
    for (;;) {
        switch (strip_state) {
        case S_NORMAL:
            if (c == 0x1b)
                strip_state = S_ESC;
            else if (c == '\r' || c == 0x07 || c == 0x00 || c == 0x0e ||
                     c == 0x0f)
                ;                               /* dropped */
            else
                emit(c);
            return;
        case S_ESC:
            if (c == '[')
                strip_state = S_CSI;
            else if (c == ']' || c == 'P' || c == 'X' || c == '^' ||
                     c == '_')
                strip_state = S_STR;            /* OSC DCS SOS PM APC */
            else if (c >= 0x20 && c <= 0x2f)
                strip_state = S_ESC_INTER;      /* e.g. ESC ( B */
            else if (c >= 0x30 && c <= 0x7e)
                strip_state = S_NORMAL;         /* e.g. ESC = , ESC 7 */
            else if (c == 0x1b)
                ;                               /* ESC ESC: restart */
            else {
                strip_state = S_NORMAL;         /* abort; reprocess c */
                continue;
            }
            return;
        case S_ESC_INTER:
            if (c >= 0x20 && c <= 0x2f)
                ;
            else if (c >= 0x30 && c <= 0x7e)
                strip_state = S_NORMAL;
            else {
                strip_state = S_NORMAL;
                continue;
            }
            return;
        case S_CSI:
            if (c >= 0x20 && c <= 0x3f)
                ;                               /* parameters, intermediates */
            else if (c >= 0x40 && c <= 0x7e)
                strip_state = S_NORMAL;         /* final byte */
            else {
                strip_state = S_NORMAL;
                continue;
            }
            return;
        case S_STR:
            if (c == 0x07 || c == 0x18 || c == 0x1a)
                strip_state = S_NORMAL;         /* BEL terminates; CAN/SUB abort */
            else if (c == 0x1b)
                strip_state = S_STR_ESC;
            else if (c == '\n') {
                /* Not standard, but keeps a stray "ESC ]" from swallowing
                 * the rest of the output. */
                strip_state = S_NORMAL;
                continue;
            }
            return;
        case S_STR_ESC:
            if (c == '\\') {
                strip_state = S_NORMAL;         /* ST */
                return;
            }
            strip_state = S_ESC;
            continue;
        default:
            strip_state = S_NORMAL;
            continue;
        }
    }
}

/* Discard old output once it is well behind the match position. */
static void compact(void)
{
    if (match_pos <= 256 * 1024)
        return;
    size_t drop = match_pos - 16 * 1024;
    memmove(out, out + drop, out_len - drop + 1);
    out_len -= drop;
    match_pos -= drop;
    dropped_total += drop;
}

static void feed(const char *buf, size_t n)
{
    if (verbose && n > 0) {
        fwrite(buf, 1, n, stderr);
        fflush(stderr);
        echo_at_bol = buf[n - 1] == '\n';
    }
    for (size_t i = 0; i < n; i++)
        clean_byte((unsigned char)buf[i]);
    if (out_len - match_pos > MAX_UNMATCHED) {
        /* A runaway program: forget the older half of the unmatched output
         * rather than growing without bound until the step times out. */
        size_t skip = out_len - match_pos - MAX_UNMATCHED / 2;
        match_pos += skip;
        skipped_total += skip;
        compact();
    }
}

static void dump_output(void)
{
    size_t since = out_len - match_pos;
    size_t before = 0;
    if (since < TAIL_BYTES)
        before = TAIL_BYTES - since < match_pos ? TAIL_BYTES - since
                                                : match_pos;
    fprintf(stderr, "ptyrun: output received so far: %zu bytes after "
            "cleaning; %zu since the end of the previous match\n",
            out_len + dropped_total, since);
    if (skipped_total)
        fprintf(stderr, "ptyrun: (%zu bytes of output that arrived while "
                "waiting were discarded unmatched: over %u MiB pending)\n",
                skipped_total, MAX_UNMATCHED >> 20);
    if (before > 0) {
        fprintf(stderr, "ptyrun: ---- last %zu bytes before the end of the "
                "previous match ----\n", before);
        put_visible(out + match_pos - before, before);
        if (out[match_pos - 1] != '\n')
            fputc('\n', stderr);
    }
    if (since > TAIL_BYTES)
        fprintf(stderr, "ptyrun: ---- output since the previous match "
                "(last %d of %zu bytes) ----\n", TAIL_BYTES, since);
    else
        fprintf(stderr, "ptyrun: ---- output since the previous match "
                "(%zu bytes) ----\n", since);
    size_t show = since > TAIL_BYTES ? TAIL_BYTES : since;
    put_visible(out + out_len - show, show);
    if (show > 0 && out[out_len - 1] != '\n')
        fputs("\n", stderr);
    fputs("ptyrun: ---- end of output ----\n", stderr);
}

/* ---- failure and cleanup ----------------------------------------------- */

static void vfail(int status, bool show_output, const char *fmt, va_list ap)
{
    char state[128];
    if (!echo_at_bol)
        fputc('\n', stderr);
    if (cur)
        fprintf(stderr, "ptyrun: FAIL at %s:%d: ", script_path, cur->line);
    else
        fputs("ptyrun: FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    if (cur) {
        size_t n = strlen(cur->src);
        fputs("ptyrun:   step: ", stderr);
        put_visible(cur->src, n > 200 ? 200 : n);
        fputs(n > 200 ? "...\n" : "\n", stderr);
    }
    if (child_pid > 0)
        fprintf(stderr, "ptyrun:   the child %s\n",
                child_state(state, sizeof state));
    if (show_output && exec_ok)
        dump_output();
    cleanup();
    exit(status);
}

__attribute__((format(printf, 1, 2), noreturn))
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(1, true, fmt, ap);
    va_end(ap);
    abort();
}

__attribute__((format(printf, 2, 3), noreturn))
static void script_error(int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ptyrun: %s:%d: script error: ", script_path, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

/* Read whatever output is available without blocking (bounded amount).
 * Never fails: used by cleanup too. */
enum { P_DATA = 1, P_WRITABLE = 2, P_EOF = 4 };

static int read_available(void)
{
    char buf[4096];
    size_t total = 0;
    int res = 0;
    if (master_fd < 0 || master_eof)
        return P_EOF;
    while (total < 256 * 1024) {
        ssize_t n = read(master_fd, buf, sizeof buf);
        if (n > 0) {
            feed(buf, (size_t)n);
            total += (size_t)n;
            res |= P_DATA;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* n == 0, or EIO: Linux reports EIO once the slave side has been
         * closed by every process (normally: the child exited). */
        if (n < 0 && errno != EIO)
            fprintf(stderr, "ptyrun: read from terminal: %s\n",
                    strerror(errno));
        master_eof = true;
        res |= P_EOF;
        break;
    }
    return res;
}

/* Kill every process left in the child's session (Linux /proc; best
 * effort).  Processes that called setsid() themselves escape this. */
static void kill_session(pid_t sid)
{
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid())
            continue;
        char path[64], buf[1024];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        /* pid (comm) state ppid pgrp session ...; comm may hold spaces */
        char *p = strrchr(buf, ')');
        char state;
        long ppid, pgrp, session;
        if (!p || sscanf(p + 1, " %c %ld %ld %ld", &state, &ppid, &pgrp,
                         &session) != 4)
            continue;
        if (session == (long)sid)
            kill((pid_t)pid, SIGKILL);
    }
    closedir(d);
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    if (remove(path) != 0)
        fprintf(stderr, "ptyrun: cannot remove %s: %s\n", path,
                strerror(errno));
    return 0;
}

static void cleanup(void)
{
    if (cleaning_up)
        return;
    cleaning_up = true;
    pid_t pid = child_pid;
    if (pid > 0) {
        reap_nohang();
        if (!child_reaped) {
            kill(-pid, SIGHUP);
            kill(-pid, SIGCONT);
            int64_t end = now_ms() + HUP_GRACE_MS;
            while (!child_reaped && now_ms() < end) {
                if (!master_eof) {
                    struct pollfd p = { .fd = master_fd, .events = POLLIN };
                    if (poll(&p, 1, 10) > 0)
                        read_available();
                } else {
                    poll(NULL, 0, 10);
                }
                reap_nohang();
            }
        }
        if (!child_reaped) {
            if (verbose)
                fputs("ptyrun: child survived SIGHUP; sending SIGKILL\n",
                      stderr);
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            int st = 0;
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
            child_reaped = true;
            child_status = st;
        }
        /* leftovers of the child's process group and session */
        kill(-pid, SIGKILL);
        kill_session(pid);
    }
    if (master_fd >= 0) {
        close(master_fd);
        master_fd = -1;
    }
    if (home_made && !keep_home) {
        nftw(home_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        home_made = false;
    }
}

/* ---- terminal I/O ------------------------------------------------------ */

static void check_interrupts(void)
{
    if (got_signal)
        fail("interrupted by signal %d (%s)", (int)got_signal,
             strsignal((int)got_signal));
    if (now_ms() >= global_deadline)
        fail("global time limit of %g s exceeded", global_limit);
}

/* Wait at most one tick (never past `deadline`) for output (and, if
 * want_write, for the terminal to accept input); read all available output.
 * Returns a mask of P_DATA, P_WRITABLE, P_EOF. */
static int pump(int64_t deadline, bool want_write)
{
    check_interrupts();
    reap_nohang();
    int64_t now = now_ms();
    int64_t until = deadline < global_deadline ? deadline : global_deadline;
    int64_t wait = until - now;
    if (wait < 0)
        wait = 0;
    if (wait > TICK_MS)
        wait = TICK_MS;
    if (master_eof) {
        if (wait > 0)
            poll(NULL, 0, (int)wait);
        return P_EOF;
    }
    struct pollfd p = {
        .fd = master_fd,
        .events = (short)(POLLIN | (want_write ? POLLOUT : 0)),
    };
    int r = poll(&p, 1, (int)wait);
    if (r < 0) {
        if (errno == EINTR)
            return 0;
        fail("poll: %s", strerror(errno));
    }
    int res = 0;
    if (r > 0) {
        if (p.revents & POLLNVAL)
            fail("poll: invalid terminal descriptor");
        if (p.revents & (POLLIN | POLLHUP | POLLERR))
            res |= read_available();
        if (p.revents & POLLOUT)
            res |= P_WRITABLE;
        if ((p.revents & (POLLHUP | POLLERR)) && !(res & (P_DATA | P_EOF)))
            poll(NULL, 0, 5);           /* avoid spinning on a stuck HUP */
    }
    return res;
}

/* Read output until it has been quiet for quiet_ms (at most max_ms). */
static void drain(int quiet_ms, int max_ms)
{
    int64_t start = now_ms(), last = start;
    for (;;) {
        int64_t now = now_ms();
        if (master_eof || now - last >= quiet_ms || now - start >= max_ms)
            return;
        int64_t dl = last + quiet_ms;
        if (dl > start + max_ms)
            dl = start + max_ms;
        if (pump(dl, false) & P_DATA)
            last = now_ms();
    }
}

static void send_bytes(const char *data, size_t len)
{
    char state[128];
    int64_t deadline = now_ms() + timeout_ms;
    size_t off = 0;
    reap_nohang();
    if (child_reaped)
        fail("cannot send: the child %s",
             child_state(state, sizeof state));
    while (off < len) {
        if (master_eof)
            fail("cannot send: the terminal was closed");
        ssize_t n = write(master_fd, data + off, len - off);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (now_ms() >= deadline)
                fail("timed out after %g s writing to the terminal (the "
                     "program is not reading its input)",
                     (double)timeout_ms / 1000.0);
            pump(deadline, true);
            continue;
        }
        if (n < 0 && errno == EIO)
            fail("cannot send: the terminal was closed (EIO)");
        fail("write to terminal: %s", n < 0 ? strerror(errno) : "0 bytes");
    }
    /* pick up the echo / immediate response without waiting */
    read_available();
}

/* ---- matching ---------------------------------------------------------- */

/* Search the output since match_pos; on success set *end (absolute). */
static bool find(const struct step *s, size_t from, size_t *end)
{
    const char *region = out ? out + match_pos : "";
    size_t rlen = out_len - match_pos;
    if (s->has_re) {
        regmatch_t m;
        int flags = REG_NOTEOL;
        if (match_pos > 0 && out[match_pos - 1] != '\n')
            flags |= REG_NOTBOL;
        if (regexec(&s->re, region, 1, &m, flags) != 0)
            return false;
        *end = match_pos + (size_t)m.rm_eo;
        return true;
    }
    /* plain text: no need to rescan what an earlier call already saw */
    if (from > match_pos && from <= out_len) {
        region = out + from;
        rlen = out_len - from;
    }
    const char *hit = memmem(region, rlen, s->data, s->len);
    if (!hit)
        return false;
    *end = (size_t)(hit - out) + s->len;
    return true;
}

static void quote_arg(const struct step *s, char *buf, size_t bufsz)
{
    /* visible form of the pattern for messages */
    size_t o = 0;
    const char *p = s->data;
    for (size_t i = 0; i < s->len && o + 8 < bufsz; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else if (c == '\t') {
            buf[o++] = '\\';
            buf[o++] = 't';
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(buf + o, bufsz - o, "\\x%02x", c);
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o] = '\0';
}

static void run_expect(const struct step *s)
{
    char pat[512], state[128];
    int64_t deadline = now_ms() + timeout_ms;
    quote_arg(s, pat, sizeof pat);
    size_t scanned = dropped_total + match_pos; /* absolute offset */
    read_available();
    for (;;) {
        size_t end;
        size_t from = match_pos;
        if (scanned > dropped_total + match_pos)
            from = scanned - dropped_total;
        if (find(s, from, &end)) {
            match_pos = end;
            compact();
            return;
        }
        /* a later plain-text match starts at most len-1 bytes back */
        size_t back = s->len - 1, pending = out_len - match_pos;
        scanned = dropped_total + out_len - (pending < back ? pending : back);
        if (master_eof) {
            /* give the reaper a moment so the message says how it died */
            int64_t until = now_ms() + 200;
            while (!child_reaped && now_ms() < until)
                pump(until, false);
            fail("%s \"%s\" not found: the terminal was closed (the child %s)",
                 s->has_re ? "regex" : "text", pat,
                 child_state(state, sizeof state));
        }
        if (now_ms() >= deadline)
            fail("timed out after %g s waiting for %s \"%s\"",
                 (double)timeout_ms / 1000.0, s->has_re ? "regex" : "text",
                 pat);
        pump(deadline, false);
    }
}

static void run_reject(const struct step *s)
{
    char pat[512];
    size_t end;
    drain(REJECT_QUIET_MS, REJECT_MAX_MS);
    if (find(s, match_pos, &end))
        fail("rejected %s \"%s\" found in the output",
             s->has_re ? "regex" : "text", (quote_arg(s, pat, sizeof pat), pat));
}

static void run_sleep(double ms)
{
    int64_t deadline = now_ms() + (int64_t)ms;
    while (now_ms() < deadline)
        pump(deadline, false);
}

static void run_expect_exit(int code)
{
    char state[128];
    int64_t deadline = now_ms() + timeout_ms;
    while (!child_reaped) {
        if (now_ms() >= deadline)
            fail("timed out after %g s waiting for the child to exit",
                 (double)timeout_ms / 1000.0);
        pump(deadline, false);
    }
    /* collect the final output (the pty keeps it after the child exits) */
    drain(100, 500);
    if (!WIFEXITED(child_status) || WEXITSTATUS(child_status) != code)
        fail("expected exit status %d, but the child %s", code,
             describe_status(child_status, state, sizeof state));
}

static void run_alive(void)
{
    char state[128];
    read_available();
    reap_nohang();
    if (child_reaped)
        fail("the child is not running: it %s",
             child_state(state, sizeof state));
}

/* ---- child ------------------------------------------------------------- */

static void report_child_error(int fd, int stage)
{
    int info[2] = { stage, errno };
    ssize_t r = write(fd, info, sizeof info);
    (void)r;
    _exit(127);
}

static void child_exec(char **argv, int errfd)
{
    /* Dispositions of ignored signals survive exec: reset everything, so
     * that e.g. `ctrl c` works even if ctest started us with SIGINT
     * ignored. */
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);

    if (setenv("HOME", home_dir, 1) != 0 || setenv("TERM", "dumb", 1) != 0)
        report_child_error(errfd, 1);
    unsetenv("COLUMNS");
    unsetenv("LINES");
    unsetenv("INPUTRC");
    for (size_t i = 0; i < nsteps; i++) {
        if (steps[i].kind != K_ENV)
            continue;
        char *eq = strchr(steps[i].data, '=');
        *eq = '\0';
        if (setenv(steps[i].data, eq + 1, 1) != 0)
            report_child_error(errfd, 1);
        *eq = '=';
    }

    /* Do not leak our descriptors (other than 0-2) into the child. */
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) != 0)
#endif
    {
        for (int fd = 3; fd < 1024; fd++)
            if (fd != errfd)
                fcntl(fd, F_SETFD, FD_CLOEXEC);
    }

    execvp(argv[0], argv);
    report_child_error(errfd, 2);
}

static void spawn(char **argv)
{
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    if ((size_t)snprintf(home_dir, sizeof home_dir, "%s/ptyrun-home-XXXXXX",
                         tmp) >= sizeof home_dir)
        fail("TMPDIR is too long");
    if (!mkdtemp(home_dir))
        fail("cannot create a temporary HOME in %s: %s", tmp,
             strerror(errno));
    home_made = true;
    if (verbose)
        fprintf(stderr, "ptyrun: HOME=%s%s\n", home_dir,
                keep_home ? " (kept)" : " (removed at exit; -k keeps it)");

    int ep[2];
    if (pipe2(ep, O_CLOEXEC) != 0)
        fail("pipe: %s", strerror(errno));
    struct winsize ws = { .ws_row = 24, .ws_col = 80 };
    fflush(NULL);
    pid_t pid = forkpty(&master_fd, NULL, NULL, &ws);
    if (pid < 0)
        fail("forkpty: %s", strerror(errno));
    if (pid == 0)
        child_exec(argv, ep[1]);        /* ep[0] is close-on-exec */
    child_pid = pid;
    close(ep[1]);
    fcntl(master_fd, F_SETFD, FD_CLOEXEC);
    fcntl(master_fd, F_SETFL, fcntl(master_fd, F_GETFL) | O_NONBLOCK);

    /* The pipe closes on a successful exec; otherwise it carries errno. */
    int info[2];
    ssize_t n;
    while ((n = read(ep[0], info, sizeof info)) < 0 && errno == EINTR)
        ;
    close(ep[0]);
    if (n == (ssize_t)sizeof info) {
        int st = 0;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        child_reaped = true;
        child_status = st;
        if (info[0] == 2)
            fail("cannot execute '%s': %s", argv[0], strerror(info[1]));
        fail("cannot set up the child environment: %s", strerror(info[1]));
    }
    exec_ok = true;
}

/* ---- script parsing ---------------------------------------------------- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode escapes (see the header).  Returns a malloc'd buffer. */
static char *decode(int line, const char *in, bool regex, size_t *outlen)
{
    size_t n = strlen(in);
    char *o = xrealloc(NULL, n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] != '\\') {
            o[k++] = in[i];
            continue;
        }
        char c = in[i + 1];
        switch (c) {
        case 'n': o[k++] = '\n'; i++; break;
        case 'r': o[k++] = '\r'; i++; break;
        case 't': o[k++] = '\t'; i++; break;
        case 'e': o[k++] = 0x1b; i++; break;
        case 'x': {
            int h1 = hexval((unsigned char)in[i + 2]);
            int h2 = h1 >= 0 ? hexval((unsigned char)in[i + 3]) : -1;
            if (h1 < 0 || h2 < 0)
                script_error(line, "\\x must be followed by two hex digits");
            o[k++] = (char)(h1 * 16 + h2);
            i += 3;
            break;
        }
        default:
            if (regex) {                 /* pass through for regcomp */
                if (c == '\0')
                    script_error(line, "trailing backslash");
                o[k++] = '\\';
                o[k++] = c;
                i++;
            } else if (c == '\\') {
                o[k++] = '\\';
                i++;
            } else if (c == 'a') {
                o[k++] = 0x07;
                i++;
            } else if (c == 's') {
                o[k++] = ' ';
                i++;
            } else if (c == '\0') {
                script_error(line, "trailing backslash (write \\\\ for a "
                             "backslash)");
            } else {
                script_error(line, "unknown escape \\%c (known: \\n \\r \\t "
                             "\\\\ \\e \\a \\s \\xHH)", c);
            }
        }
    }
    o[k] = '\0';
    *outlen = k;
    return o;
}

static bool parse_number(const char *s, double *v)
{
    char *end;
    while (*s == ' ' || *s == '\t')
        s++;
    if (!*s)
        return false;
    errno = 0;
    *v = strtod(s, &end);
    while (*end == ' ' || *end == '\t')
        end++;
    return !*end && errno == 0 && isfinite(*v);
}

static void parse_script(void)
{
    FILE *f = fopen(script_path, "r");
    if (!f) {
        fprintf(stderr, "ptyrun: cannot open script %s: %s\n", script_path,
                strerror(errno));
        exit(2);
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0;
    bool interacted = false;
    size_t steps_cap = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (strlen(line) != (size_t)len)
            script_error(lineno, "NUL byte in script line");
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p || *p == '#')
            continue;

        size_t kwlen = strcspn(p, " \t");
        const char *arg = p[kwlen] ? p + kwlen + 1 : NULL;
        size_t ki;
        for (ki = 0; ki < sizeof keywords / sizeof keywords[0]; ki++)
            if (strlen(keywords[ki].name) == kwlen &&
                !strncmp(keywords[ki].name, p, kwlen))
                break;
        if (ki == sizeof keywords / sizeof keywords[0])
            script_error(lineno, "unknown step '%.*s' (known: send expect "
                         "expect_re reject reject_re ctrl sleep timeout env "
                         "expect_exit alive)", (int)kwlen, p);
        if (keywords[ki].has_arg && (!arg || !*arg))
            script_error(lineno, "'%s' needs an argument", keywords[ki].name);
        if (!keywords[ki].has_arg && arg && arg[strspn(arg, " \t")])
            script_error(lineno, "'%s' takes no argument", keywords[ki].name);

        if (nsteps == steps_cap) {
            steps_cap = steps_cap ? steps_cap * 2 : 32;
            steps = xrealloc(steps, steps_cap * sizeof *steps);
        }
        struct step *s = &steps[nsteps++];
        memset(s, 0, sizeof *s);
        s->kind = keywords[ki].kind;
        s->line = lineno;
        s->src = xstrdup(p);

        switch (s->kind) {
        case K_SEND:
            s->data = decode(lineno, arg, false, &s->len);
            break;
        case K_EXPECT:
        case K_REJECT: {
            s->data = decode(lineno, arg, false, &s->len);
            /* '\r' never survives output cleaning: drop it here too */
            size_t k = 0;
            for (size_t i = 0; i < s->len; i++)
                if (s->data[i] != '\r')
                    s->data[k++] = s->data[i];
            s->data[k] = '\0';
            s->len = k;
            if (k == 0)
                script_error(lineno, "empty pattern");
            if (memchr(s->data, '\0', k) || memchr(s->data, 0x1b, k))
                script_error(lineno, "pattern contains NUL or ESC, which "
                             "are removed from the output before matching");
            break;
        }
        case K_EXPECT_RE:
        case K_REJECT_RE: {
            s->data = decode(lineno, arg, true, &s->len);
            if (strlen(s->data) != s->len)
                script_error(lineno, "regex contains a NUL byte");
            int rc = regcomp(&s->re, s->data, REG_EXTENDED | REG_NEWLINE);
            if (rc != 0) {
                char msg[256];
                regerror(rc, &s->re, msg, sizeof msg);
                script_error(lineno, "bad regex: %s", msg);
            }
            s->has_re = true;
            break;
        }
        case K_CTRL: {
            const char *a = arg + strspn(arg, " \t");
            size_t alen = strcspn(a, " \t");
            if (alen != 1 || a[alen + strspn(a + alen, " \t")])
                script_error(lineno, "ctrl takes a single character, e.g. "
                             "'ctrl c'");
            int c = (unsigned char)a[0];
            if (c >= 'a' && c <= 'z')
                c -= 'a' - 'A';
            if (c == '?')
                s->code = 0x7f;
            else if (c >= '@' && c <= '_')
                s->code = c & 0x1f;
            else
                script_error(lineno, "ctrl: no control character for '%c'",
                             a[0]);
            break;
        }
        case K_SLEEP:
            if (!parse_number(arg, &s->num) || s->num < 0 ||
                s->num > 3600e3)
                script_error(lineno, "sleep takes milliseconds (0..3600000)");
            break;
        case K_TIMEOUT:
            if (!parse_number(arg, &s->num) || s->num <= 0 ||
                s->num > 86400)
                script_error(lineno, "timeout takes seconds (> 0)");
            break;
        case K_ENV: {
            const char *eq = strchr(arg, '=');
            size_t nlen = eq ? (size_t)(eq - arg) : 0;
            if (!eq || nlen == 0 || strspn(arg, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                    "abcdefghijklmnopqrstuvwxyz0123456789_") != nlen ||
                (arg[0] >= '0' && arg[0] <= '9'))
                script_error(lineno, "env takes NAME=VALUE");
            if (interacted)
                script_error(lineno, "env is only allowed before the first "
                             "step other than env/timeout (the child is "
                             "started there)");
            s->data = xstrdup(arg);
            s->len = strlen(arg);
            break;
        }
        case K_EXPECT_EXIT: {
            double v;
            if (!parse_number(arg, &v) || v < 0 || v > 255 || v != (double)(int)v)
                script_error(lineno, "expect_exit takes an exit status "
                             "0..255");
            s->code = (int)v;
            break;
        }
        case K_ALIVE:
            break;
        }
        if (s->kind != K_ENV && s->kind != K_TIMEOUT)
            interacted = true;
    }
    free(line);
    if (ferror(f)) {
        fprintf(stderr, "ptyrun: error reading %s\n", script_path);
        exit(2);
    }
    fclose(f);
}

/* ---- main -------------------------------------------------------------- */

static void on_signal(int sig)
{
    got_signal = sig;
}

static void on_alarm(int sig)
{
    /* Backstop in case something blocks despite the checks above. */
    static const char msg[] = "ptyrun: FAIL: hard time limit hit (blocked?); "
                              "killing the child\n";
    (void)sig;
    ssize_t r = write(2, msg, sizeof msg - 1);
    (void)r;
    if (child_pid > 0) {
        kill(-child_pid, SIGKILL);
        kill(child_pid, SIGKILL);
    }
    _exit(1);
}

static void usage(void)
{
    fputs("usage: ptyrun [-t SECONDS] [-T SECONDS] [-v] [-k] SCRIPT -- "
          "COMMAND [ARGS...]\n"
          "  -t  default step timeout (10)   -T  global time limit (60)\n"
          "  -v  verbose (echo output)       -k  keep the temporary HOME\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "+t:T:vkh")) != -1) {
        switch (opt) {
        case 't':
            if (!parse_number(optarg, &default_timeout) ||
                default_timeout <= 0)
                usage();
            break;
        case 'T':
            if (!parse_number(optarg, &global_limit) || global_limit <= 0 ||
                global_limit > 86400)
                usage();
            break;
        case 'v':
            verbose = true;
            break;
        case 'k':
            keep_home = true;
            break;
        default:
            usage();
        }
    }
    if (optind >= argc)
        usage();
    script_path = argv[optind++];
    if (optind < argc && !strcmp(argv[optind], "--"))
        optind++;
    if (optind >= argc)
        usage();
    char **cmd = argv + optind;

    /* Make sure fds 0-2 are open, so that no descriptor we create (pty,
     * pipe) lands on them: ctest or a shell may start us with one closed. */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
            return 2;

    parse_script();

    global_deadline = now_ms() + (int64_t)(global_limit * 1000.0);
    timeout_ms = (int64_t)(default_timeout * 1000.0);

    /* We must be able to wait for the child even if started with SIGCHLD
     * ignored; the terminal never raises SIGPIPE, stderr might. */
    signal(SIGCHLD, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_signal;          /* no SA_RESTART: interrupt poll */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    alarm((unsigned)global_limit + 16);

    size_t done = 0;
    for (size_t i = 0; i < nsteps; i++) {
        const struct step *s = &steps[i];
        if (child_pid <= 0 && s->kind != K_ENV && s->kind != K_TIMEOUT) {
            cur = NULL;
            spawn(cmd);
        }
        cur = s;
        if (verbose) {
            fprintf(stderr, "%sptyrun: [%d] ", echo_at_bol ? "" : "\n",
                    s->line);
            echo_at_bol = true;
            put_visible(s->src, strlen(s->src));
            fputc('\n', stderr);
        }
        check_interrupts();
        switch (s->kind) {
        case K_SEND:
            send_bytes(s->data, s->len);
            break;
        case K_CTRL: {
            char c = (char)s->code;
            send_bytes(&c, 1);
            break;
        }
        case K_EXPECT:
        case K_EXPECT_RE:
            run_expect(s);
            break;
        case K_REJECT:
        case K_REJECT_RE:
            run_reject(s);
            break;
        case K_SLEEP:
            run_sleep(s->num);
            break;
        case K_TIMEOUT:
            timeout_ms = (int64_t)(s->num * 1000.0);
            break;
        case K_ENV:
            break;
        case K_EXPECT_EXIT:
            run_expect_exit(s->code);
            break;
        case K_ALIVE:
            run_alive();
            break;
        }
        done++;
    }
    cur = NULL;
    if (child_pid <= 0)
        spawn(cmd);                     /* script had no interactive step */
    if (verbose) {
        char state[128];
        fprintf(stderr, "%sptyrun: end of script; the child %s\n",
                echo_at_bol ? "" : "\n", child_state(state, sizeof state));
        echo_at_bol = true;
    }
    cleanup();

    for (size_t i = 0; i < nsteps; i++) {
        free(steps[i].src);
        free(steps[i].data);
        if (steps[i].has_re)
            regfree(&steps[i].re);
    }
    free(steps);
    free(out);
    if (verbose && !echo_at_bol)
        fputc('\n', stderr);
    printf("ptyrun: %zu steps ok\n", done);
    return 0;
}
