/*
 * bucket.c -- the token buckets of `sibyl.keys.core`: client-side pacing
 * of requests and tokens per minute. keys.c owns the module table and
 * calls sb_bucket_register (sb_keys.h) to add keys.bucket to it;
 * stdlib/sibyl/keys.lua adds bucket:wait(), which sleeps on the event loop.
 *
 *   local b = core.bucket{ rpm =, tpm =, burst_seconds = 60 }
 *   local wait, limit = b:take(tokens)       -- seconds to wait before sending
 *   b:refund(tokens [, requests]), b:stats(), tostring(b), b:close()
 *
 * Caveats:
 *  - A bucket is a pair of token buckets (requests, tokens) whose level may
 *    go negative: take() always reserves, and the negative level is the
 *    queue of callers already promised a slot. The caller must honour the
 *    wait it is given, or refund what it did not send.
 *  - All times are sb_now() (monotonic seconds). State is per process.
 *  - Misuse (bad option types, unknown options, negative token counts)
 *    raises with the caller's position; a closed bucket returns nil, err.
 */
#include <math.h>
#include <string.h>

#include "sb.h"
#include "sb_keys.h"

#define BUCKET_NAME "sibyl.keys.bucket"

#define DEFAULT_BURST 60.0              /* s of budget a bucket may spend at once */

/* ================================================================ engine: buckets */

/* One token bucket. rate 0 means unlimited (level unused). */
typedef struct {
    double rate;            /* per second */
    double cap;             /* the most it holds: rate * burst seconds */
    double level;           /* available now; negative = promised to waiting callers */
} tbucket;

typedef struct {
    tbucket req, tok;
    double rpm, tpm, burst; /* as given (rpm/tpm 0 = unlimited) */
    double last;            /* sb_now() of the last refill */
    int closed;
} bucket;

/* Levels this close to zero are zero: float error must not become a wait. */
#define LEVEL_EPS 1e-9

static void tb_init(tbucket *t, double per_minute, double burst, double min_cap)
{
    t->rate = per_minute / 60.0;
    t->cap = t->rate * burst;
    if (per_minute > 0 && t->cap < min_cap)
        t->cap = min_cap;
    t->level = t->cap;
}

static void bucket_refill(bucket *b, double now)
{
    double dt = now - b->last;
    b->last = now;
    if (!(dt > 0))
        return;
    tbucket *ts[2] = {&b->req, &b->tok};
    for (int i = 0; i < 2; i++) {
        tbucket *t = ts[i];
        if (t->rate > 0) {
            t->level += t->rate * dt;
            if (t->level > t->cap)
                t->level = t->cap;
        }
    }
}

/* Debit n from t; return the seconds until its level is back to zero. */
static double tb_debit(tbucket *t, double n)
{
    if (t->rate <= 0)
        return 0;
    t->level -= n;
    return t->level >= -LEVEL_EPS ? 0 : -t->level / t->rate;
}

static void tb_credit(tbucket *t, double n)
{
    if (t->rate <= 0)
        return;
    t->level += n;
    if (t->level > t->cap)
        t->level = t->cap;
}

/*
 * Reserve one request and `tokens` tokens at `now`. Returns the seconds
 * the caller must wait before sending (0: now) and sets *limit to "rpm" or
 * "tpm", whichever imposes the wait (NULL when none).
 */
static double bucket_take(bucket *b, double tokens, double now, const char **limit)
{
    bucket_refill(b, now);
    double wr = tb_debit(&b->req, 1);
    double wt = tb_debit(&b->tok, tokens);
    *limit = wr <= 0 && wt <= 0 ? NULL : wr >= wt ? "rpm" : "tpm";
    return wr > wt ? wr : wt;
}

/* ================================================================ binding: buckets */

static char bucket_key_mt;

static const char *const bucket_options[] = {"rpm", "tpm", "burst_seconds", NULL};
#define BUCKET_OPTIONS "rpm, tpm, burst_seconds"

static bucket *check_bucket(lua_State *L)
{
    return sb_checkudata(L, 1, &bucket_key_mt, BUCKET_NAME);
}

/* A token count argument: nil (0) or a finite number >= 0; raises otherwise. */
static double check_tokens(lua_State *L, int idx, const char *fn, const char *what)
{
    if (lua_isnoneornil(L, idx))
        return 0;
    if (lua_type(L, idx) != LUA_TNUMBER)
        sb_keys_raise(L, "bucket:%s: %s must be a number >= 0 or nil, got %s", fn, what,
                      luaL_typename(L, idx));
    double n = lua_tonumber(L, idx);
    if (!isfinite(n) || n < 0)
        sb_keys_raise(L, "bucket:%s: %s must be a finite number >= 0, got %g", fn, what, n);
    return n;
}

/* keys.bucket{rpm=, tpm=, burst_seconds=60} -> bucket. Raises on bad options. */
static int l_bucket_new(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    sb_keys_check_options(L, 1, "keys.bucket", bucket_options, BUCKET_OPTIONS);
    double rpm = sb_keys_opt_number(L, 1, "keys.bucket", "rpm", 0, 0, 1);
    double tpm = sb_keys_opt_number(L, 1, "keys.bucket", "tpm", 0, 0, 1);
    double burst = sb_keys_opt_number(L, 1, "keys.bucket", "burst_seconds", DEFAULT_BURST, 0, 1);
    bucket *b = lua_newuserdata(L, sizeof *b);
    memset(b, 0, sizeof *b);
    b->rpm = rpm;
    b->tpm = tpm;
    b->burst = burst;
    tb_init(&b->req, rpm, burst, 1);    /* an idle bucket always lets one request through */
    tb_init(&b->tok, tpm, burst, 0);
    b->last = sb_now();
    sb_getmeta(L, &bucket_key_mt);
    lua_setmetatable(L, -2);
    return 1;
}

static int bucket_closed(lua_State *L)
{
    return sb_fail(L, "closed", "keys.bucket is closed; create a new one with keys.bucket{...}");
}

/*
 * b:take([tokens]) -> wait [, limit] | nil, err (closed). Reserves one
 * request and `tokens` tokens now; wait is 0 or the seconds to wait before
 * sending, limit "rpm" or "tpm" names the budget that imposes it.
 */
static int l_take(lua_State *L)
{
    bucket *b = check_bucket(L);
    double tokens = check_tokens(L, 2, "take", "tokens");
    if (b->closed)
        return bucket_closed(L);
    const char *limit;
    double wait = bucket_take(b, tokens, sb_now(), &limit);
    lua_pushnumber(L, wait);
    if (limit == NULL)
        return 1;
    lua_pushstring(L, limit);
    return 2;
}

/* b:refund([tokens [, requests]]) -> true | nil, err (closed). Capped at the burst. */
static int l_refund(lua_State *L)
{
    bucket *b = check_bucket(L);
    double tokens = check_tokens(L, 2, "refund", "tokens");
    double requests = check_tokens(L, 3, "refund", "requests");
    if (b->closed)
        return bucket_closed(L);
    bucket_refill(b, sb_now());
    tb_credit(&b->req, requests);
    tb_credit(&b->tok, tokens);
    lua_pushboolean(L, 1);
    return 1;
}

static void push_limit(lua_State *L, const char *field, double per_minute)
{
    if (per_minute > 0) {
        lua_pushnumber(L, per_minute);
        lua_setfield(L, -2, field);
    }
}

/*
 * b:stats() -> { rpm=, tpm=, burst_seconds=, requests_available=,
 * tokens_available= }. Unlimited budgets have no rpm/tpm field and
 * math.huge available; a negative availability is reserved ahead.
 */
static int l_bucket_stats(lua_State *L)
{
    bucket *b = check_bucket(L);
    if (b->closed)
        return bucket_closed(L);
    bucket_refill(b, sb_now());
    lua_createtable(L, 0, 5);
    push_limit(L, "rpm", b->rpm);
    push_limit(L, "tpm", b->tpm);
    lua_pushnumber(L, b->burst);
    lua_setfield(L, -2, "burst_seconds");
    lua_pushnumber(L, b->rpm > 0 ? b->req.level : HUGE_VAL);
    lua_setfield(L, -2, "requests_available");
    lua_pushnumber(L, b->tpm > 0 ? b->tok.level : HUGE_VAL);
    lua_setfield(L, -2, "tokens_available");
    return 1;
}

static int l_bucket_tostring(lua_State *L)
{
    bucket *b = check_bucket(L);
    if (b->closed) {
        lua_pushliteral(L, BUCKET_NAME " (closed)");
    } else if (b->rpm > 0 && b->tpm > 0) {
        lua_pushfstring(L, BUCKET_NAME " (rpm %f, tpm %f)", b->rpm, b->tpm);
    } else if (b->rpm > 0) {
        lua_pushfstring(L, BUCKET_NAME " (rpm %f)", b->rpm);
    } else if (b->tpm > 0) {
        lua_pushfstring(L, BUCKET_NAME " (tpm %f)", b->tpm);
    } else {
        lua_pushliteral(L, BUCKET_NAME " (unlimited)");
    }
    return 1;
}

/* b:close() -> true, also when already closed. A bucket holds no memory of
 * its own beyond the userdata, so there is no __gc. */
static int l_bucket_close(lua_State *L)
{
    check_bucket(L)->closed = 1;
    lua_pushboolean(L, 1);
    return 1;
}

/* ================================================================ registration */

static const luaL_Reg bucket_methods[] = {
    {"take", l_take},
    {"refund", l_refund},
    {"stats", l_bucket_stats},
    {"close", l_bucket_close},
    {"__tostring", l_bucket_tostring},
    {NULL, NULL}
};

/*
 * Add the bucket half of `sibyl.keys.core` to the module table at the top
 * of the stack: `bucket` (the constructor), `_bucket_mt` (the bucket
 * metatable, also its method table, so keys.lua can add bucket:wait()) and
 * DEFAULT_BURST_SECONDS. Leaves the stack as it found it.
 */
void sb_bucket_register(lua_State *L)
{
    lua_pushcfunction(L, l_bucket_new);
    lua_setfield(L, -2, "bucket");
    sb_newmeta(L, &bucket_key_mt, BUCKET_NAME);
    luaL_setfuncs(L, bucket_methods, 0);
    lua_setfield(L, -2, "_bucket_mt");
    lua_pushnumber(L, DEFAULT_BURST);
    lua_setfield(L, -2, "DEFAULT_BURST_SECONDS");
}
