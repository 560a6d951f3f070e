/*
 * host.c -- embedding Sibyl in a program that owns its frame loop (a game,
 * an app engine). Each "frame" does the host's own work, then gives the
 * runtime a time budget with sibyl_poll(); agents run in Lua tasks meanwhile.
 *
 * Build: linked against libsibyl (see CMakeLists.txt here); run from this
 * folder: ./sibyl_host. The test suite runs it and looks for "host: done".
 */
#define _POSIX_C_SOURCE 200809L     /* nanosleep */
#include <stdio.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>

#include "sibyl.h"

/* A script a game might load: two "agents" that think (sleep) concurrently
 * and post results into a table the host reads each frame. */
static const char *script =
    "local sibyl = require 'sibyl'\n"
    "inbox = {}\n"
    "local function agent(name, think)\n"
    "  for step = 1, 3 do\n"
    "    sibyl.sleep(think)\n"
    "    inbox[#inbox + 1] = name .. ' step ' .. step\n"
    "  end\n"
    "  return name\n"
    "end\n"
    "scout = sibyl.spawn(agent, 'scout', 0.01)\n"
    "guard = sibyl.spawn(agent, 'guard', 0.02)\n";

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(void)
{
    sibyl_rt *rt = sibyl_new();
    if (rt == NULL)
        return 1;
    if (sibyl_dostring(rt, script, "=game") != SIBYL_OK) {
        fprintf(stderr, "host: %s\n", sibyl_error(rt));
        sibyl_close(rt);
        return 1;
    }
    lua_State *L = sibyl_state(rt);
    int frames = 0, seen = 0, live;
    /* The frame loop: a few ms per frame, 2 ms of it for the agents. */
    do {
        live = sibyl_poll(rt, 2000);
        lua_getglobal(L, "inbox");
        int n = (int)lua_objlen(L, -1);
        for (; seen < n; seen++) {
            lua_rawgeti(L, -1, seen + 1);
            printf("host: frame %d: %s\n", frames, lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
        frames++;
        sleep_ms(4);    /* render, physics... */
    } while (live > 0 && frames < 1000);
    int ok = seen == 6;
    printf("host: %d messages in %d frames\n", seen, frames);
    if (ok)
        printf("host: done\n");
    sibyl_close(rt);
    return ok ? 0 : 1;
}
