/*
 * main.c -- the `sibyl` command.
 *
 *   sibyl script.lua args...   run a script (global `arg` as in luajit)
 *   sibyl -e 'code'            run a string (may repeat)
 *   sibyl -                    run standard input
 *   sibyl                      REPL on a terminal, else run standard input
 *   sibyl test [busted args]   run busted specs inside the runtime
 *
 * Every chunk runs as a task, so top-level code may call I/O. The exit
 * status is 0 only when the chunks succeeded and no task failed unobserved.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <luajit.h>
#include <lualib.h>

#include "sb.h"
#include "repl.h"

static const char usage[] =
    "usage: sibyl [options] [script [args...]]\n"
    "       sibyl <command> [args...]\n"
    "\n"
    "Run Lua agent scripts on the Sibyl runtime (LuaJIT + an event loop).\n"
    "\n"
    "options:\n"
    "  -e CODE        run CODE (may be given several times)\n"
    "  -l NAME        require library NAME before the script\n"
    "  -i             enter the REPL after running the script or -e\n"
    "  -v, --version  print the version and exit\n"
    "  -h, --help     print this help and exit\n"
    "  --             stop handling options\n"
    "  -              run the script on standard input\n"
    "\n"
    "commands:\n"
    "  test [PATHS] [busted options]   run busted specs inside the runtime\n"
    "  serve app.lua [--port N] [--host H]\n"
    "                                  serve the routes app.lua returns\n"
    "  index DIR [--store F]           index documents for `ask` (sibyl.rag)\n"
    "  ask \"QUESTION\" [--store F] [-k N]\n"
    "                                  answer from the index, with sources\n"
    "  mcp serve tools.lua [--http PORT] [--host H]\n"
    "                                  serve Lua tools over MCP (stdio or HTTP)\n"
    "\n"
    "With no script and no -e, sibyl opens a REPL when standard input is a\n"
    "terminal and runs standard input otherwise. See doc/cli.md.\n";

static void print_version(void)
{
    printf("Sibyl %s (%s, libevent %s)\n", SIBYL_VERSION, LUAJIT_VERSION, event_get_version());
}

/* Set the global `arg`: arg[0] = script, arg[1..] = its arguments,
 * negative indices = the interpreter and options before it. */
static void set_arg(lua_State *L, char **argv, int argc, int script)
{
    lua_createtable(L, argc - script - 1, script + 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

static int report(sibyl_rt *rt, int status)
{
    if (status != SIBYL_OK) {
        fprintf(stderr, "sibyl: %s\n", sibyl_error(rt));
        fflush(stderr);
    }
    return status;
}

static int run_string(sibyl_rt *rt, const char *code, const char *name)
{
    return report(rt, sibyl_dostring(rt, code, name));
}

/* Load the script and run it with the script arguments as `...`. */
static int run_script(sibyl_rt *rt, char **argv, int argc, int script)
{
    lua_State *L = rt->L;
    const char *path = argv[script];
    int st = luaL_loadfile(L, strcmp(path, "-") == 0 ? NULL : path);
    if (st != 0) {
        fprintf(stderr, "sibyl: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return SIBYL_EFILE;
    }
    int nargs = argc - script - 1;
    luaL_checkstack(L, nargs + 1, "too many arguments");
    for (int i = script + 1; i < argc; i++)
        lua_pushstring(L, argv[i]);
    return report(rt, sb_run_chunk(rt, nargs));
}

static int run_require(sibyl_rt *rt, const char *name)
{
    char code[512];
    snprintf(code, sizeof code, "local n = ... ; _G[n:gsub('%%.', '_')] = require(n)");
    lua_State *L = rt->L;
    if (luaL_loadbuffer(L, code, strlen(code), "=(-l)") != 0)
        return SIBYL_ERROR;
    lua_pushstring(L, name);
    return report(rt, sb_run_chunk(rt, 1));
}

/* sibyl test|serve|index|ask ...: hand the arguments to the command's Lua
 * function (module.func: sibyl.testing.main, sibyl.rag.cli.ask...) inside a
 * task; `arg` holds them. */
static int run_command(sibyl_rt *rt, char **argv, int argc, int first, const char *module,
                       const char *func)
{
    lua_State *L = rt->L;
    set_arg(L, argv, argc, first - 1);
    char code[160];
    snprintf(code, sizeof code, "return require('%s').%s(...)", module, func);
    if (luaL_loadbuffer(L, code, strlen(code), "=(sibyl command)") != 0)
        return SIBYL_ERROR;
    int status = report(rt, sb_run_chunk(rt, 0));
    /* `sibyl test` is done when the specs are: servers or tasks a spec left
     * behind are torn down by sibyl_close, not waited for. */
    if (status == SIBYL_OK && strcmp(module, "sibyl.testing") != 0)
        status = sibyl_run(rt);
    return status;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);

    int interactive = 0, script = 0, ran_code = 0;
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
            print_version();
            return 0;
        }
        if (strcmp(a, "-i") == 0) {
            interactive = 1;
        } else if (strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0) {
            if (++i >= argc) {
                fprintf(stderr, "sibyl: '%s' needs an argument\n%s", a, usage);
                return 2;
            }
        } else if (strcmp(a, "--") == 0) {
            if (i + 1 < argc)
                script = i + 1;
            break;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "sibyl: unknown option '%s'\n%s", a, usage);
            return 2;
        } else {
            script = i;
            break;
        }
    }

    sibyl_rt *rt = sibyl_new();
    if (rt == NULL) {
        fprintf(stderr, "sibyl: cannot create the runtime (out of memory?)\n");
        return 1;
    }
    int status = SIBYL_OK;

    static const struct {
        const char *name, *module, *func;
    } commands[] = {
        {"test", "sibyl.testing", "main"},
        {"serve", "sibyl.serve", "main"},
        {"index", "sibyl.rag.cli", "index"},
        {"ask", "sibyl.rag.cli", "ask"},
        {"mcp", "sibyl.mcp.cli", "main"},
    };
    const char *command = NULL, *func = NULL;
    for (size_t c = 0; script && i == script && c < sizeof commands / sizeof commands[0]; c++) {
        if (strcmp(argv[script], commands[c].name) == 0) {
            command = commands[c].module;
            func = commands[c].func;
        }
    }
    if (command) {
        status = run_command(rt, argv, argc, script + 1, command, func);
        sibyl_close(rt);
        return status == SIBYL_OK ? 0 : 1;
    }

    set_arg(rt->L, argv, argc, script);
    int last = script ? script : argc;
    for (int j = 1; j < last && status == SIBYL_OK; j++) {
        if (strcmp(argv[j], "-e") == 0) {
            status = run_string(rt, argv[++j], "=(command line)");
            ran_code = 1;
        } else if (strcmp(argv[j], "-l") == 0) {
            status = run_require(rt, argv[++j]);
        }
    }
    if (status == SIBYL_OK && script)
        status = run_script(rt, argv, argc, script);
    else if (status == SIBYL_OK && !ran_code && !interactive) {
        if (isatty(STDIN_FILENO))
            interactive = 1;
        else
            status = report(rt, sibyl_dofile(rt, "-"));
    }
    if (status == SIBYL_OK && interactive)
        status = sb_repl(rt);       /* leaving the REPL cancels what still runs */
    else if (status == SIBYL_OK)
        status = sibyl_run(rt);
    fflush(stdout);
    sibyl_close(rt);
    return status == SIBYL_OK ? 0 : 1;
}
