/*
 * keys.c -- `sibyl.keys.core`: API key rotation (key rings), the module
 * table, and the option helpers both halves share (sb_keys.h). The token
 * buckets (client-side pacing) live in bucket.c, which adds keys.bucket to
 * the table through sb_bucket_register. stdlib/sibyl/keys.lua re-exports
 * the module as `sibyl.keys` and adds bucket:wait().
 *
 *   local ring = core.ring{ keys = {...} | "k1,k2", strategy =, cooldown =,
 *                           auth_cooldown =, name = }
 *   local key, id = ring:acquire()          -- or nil, err (rate_limited, auth, closed)
 *   ring:report(id, "ok" | "rate_limited" | "quota" | "auth" [, retry_after])
 *   ring:stats(), ring:redact(text), #ring, tostring(ring), ring:close()
 *
 *   core.bucket{ rpm =, tpm =, burst_seconds = } -- see bucket.c
 *
 *   core.parse(text) -> { key, ... }, core.redact(key) -> "sk-…abcd"
 *
 * Caveats:
 *  - Keys live in malloc'ed copies that close() and __gc zero before
 *    freeing. A key handed out by acquire() is a Lua string like any other:
 *    the runtime cannot wipe it.
 *  - All times are sb_now() (monotonic seconds). State is per process; a
 *    ring shared between instances through Redis is a separate layer.
 *  - Misuse (bad option types, unknown options, an id out of range) raises
 *    with the caller's position; expected failures return nil, err.
 */
#include <assert.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb.h"
#include "sb_keys.h"

#define RING_NAME "sibyl.keys.ring"

#define DEFAULT_COOLDOWN 30.0           /* s a key rests after a 429 without retry-after */
#define DEFAULT_AUTH_COOLDOWN 300.0     /* s a key is disabled after 401/403 (and rests after quota) */
#define DEFAULT_RING_NAME "default"

/* A redacted key: up to 4 bytes of prefix, "…" (3 bytes), 4 bytes of tail, NUL. */
#define REDACT_MAX 12

/* ================================================================ helpers */

/* Contract in sb_keys.h: raise at the caller's position. Never returns. */
int sb_keys_raise(lua_State *L, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    luaL_where(L, 1);
    lua_pushstring(L, buf);
    lua_concat(L, 2);
    return lua_error(L);
}

/* Overwrite n bytes in a way the compiler may not drop as a dead store. */
static void wipe(void *p, size_t n)
{
    volatile unsigned char *q = p;
    while (n--)
        *q++ = 0;
}

/* Separators for parse(): commas and ASCII whitespace. */
static int is_sep(unsigned char c)
{
    return c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/*
 * Write the redacted form of key k[0..n) to out (REDACT_MAX bytes) and
 * return its length. Keys of 8 bytes or fewer become "…". Longer ones keep
 * the last 4 bytes and, when the key starts with a short prefix ending in
 * '-' ("sk-", "gsk-", at most 3 bytes before the '-'), that prefix too --
 * but never so much that more than half of the key shows.
 */
static size_t redact_key(const char *k, size_t n, char *out)
{
    static const char ellipsis[] = "\xE2\x80\xA6";      /* U+2026 */
    size_t o = 0;
    if (n > 8) {
        size_t pre = 0;
        for (size_t i = 0; i < 4; i++) {
            if (k[i] == '-') {
                pre = i > 0 ? i + 1 : 0;
                break;
            }
        }
        if (2 * (pre + 4) > n)
            pre = 0;
        memcpy(out, k, pre);
        o = pre;
    }
    memcpy(out + o, ellipsis, 3);
    o += 3;
    if (n > 8) {
        memcpy(out + o, k + n - 4, 4);
        o += 4;
    }
    assert(o < REDACT_MAX);
    out[o] = '\0';
    return o;
}

/* Push a new array of the keys in s[0..len), split on commas and whitespace. */
static void push_parsed(lua_State *L, const char *s, size_t len)
{
    lua_newtable(L);
    int n = 0;
    size_t i = 0;
    while (i < len) {
        while (i < len && is_sep((unsigned char)s[i]))
            i++;
        size_t j = i;
        while (j < len && !is_sep((unsigned char)s[j]))
            j++;
        if (j > i) {
            lua_pushlstring(L, s + i, j - i);
            lua_rawseti(L, -2, ++n);
        }
        i = j;
    }
}

/*
 * Raise unless every key of the options table at idx is a string from
 * `known` (a NULL-terminated list): a misspelt option is a bug, not a
 * default. Shared with bucket.c (sb_keys.h).
 */
void sb_keys_check_options(lua_State *L, int idx, const char *what, const char *const *known,
                           const char *list)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            sb_keys_raise(L, "%s: option names must be strings, got a %s key (valid options: %s)",
                          what, luaL_typename(L, -1), list);
        const char *k = lua_tostring(L, -1);
        const char *const *p = known;
        while (*p && strcmp(*p, k) != 0)
            p++;
        if (*p == NULL)
            sb_keys_raise(L, "%s: unknown option '%s' (valid options: %s)", what, k, list);
    }
}

/*
 * opts[field] as a finite number > min (strict) or >= min, or def when
 * nil; raises otherwise. Leaves the stack as it found it. Shared with
 * bucket.c (sb_keys.h).
 */
double sb_keys_opt_number(lua_State *L, int idx, const char *what, const char *field, double def,
                          double min, int strict)
{
    lua_getfield(L, idx, field);
    double v = def;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            sb_keys_raise(L, "%s: opts.%s must be a number of %s, got %s", what, field,
                          strict ? "> 0" : ">= 0", luaL_typename(L, -1));
        v = lua_tonumber(L, -1);
        if (!isfinite(v) || (strict ? v <= min : v < min))
            sb_keys_raise(L, "%s: opts.%s must be a finite number %s %g, got %g", what, field,
                          strict ? ">" : ">=", min, v);
    }
    lua_pop(L, 1);
    return v;
}

/* ================================================================ engine: rings */

enum { STRAT_ROUND_ROBIN, STRAT_LRL };
enum { REST_NONE, REST_LIMITED, REST_QUOTA, REST_AUTH };
enum { OUT_OK, OUT_LIMITED, OUT_QUOTA, OUT_AUTH };

typedef struct {
    char *s;                /* malloc'ed copy, wiped before free */
    size_t len;
    double ready_at;        /* sb_now() when usable again; ready when <= now */
    double last_limited;    /* sb_now() of the last rate_limited/quota, -HUGE_VAL: never */
    int why;                /* REST_*: the reason for the rest that ends at ready_at */
    unsigned long uses, limited, failures;
} ring_key;

typedef struct {
    ring_key *keys;         /* n entries; s == NULL past the ones filled so far */
    int n;
    int *by_len;            /* key indices, longest first: ring:redact tries them in order */
    int next;               /* round-robin cursor: the key to try first */
    int strategy;           /* STRAT_* */
    double cooldown, auth_cooldown;
} ring;

/* Free a ring, also a partly built one; wipes the keys. NULL is fine. */
static void ring_free(ring *r)
{
    if (r == NULL)
        return;
    if (r->keys) {
        for (int i = 0; i < r->n; i++) {
            if (r->keys[i].s) {
                wipe(r->keys[i].s, r->keys[i].len);
                free(r->keys[i].s);
            }
        }
        wipe(r->keys, sizeof *r->keys * (size_t)r->n);
        free(r->keys);
    }
    free(r->by_len);
    free(r);
}

static int key_ready(const ring_key *k, double now)
{
    return k->ready_at <= now;
}

/*
 * Choose the key to hand out at `now`: its index, or -1 when every key
 * rests. round_robin takes the first ready key from the cursor on;
 * least_recently_limited the ready key limited longest ago (never limited
 * first), ties going to the first from the cursor. Moves the cursor past
 * the choice and counts the use.
 */
static int ring_pick(ring *r, double now)
{
    int best = -1;
    for (int j = 0; j < r->n; j++) {
        int i = (r->next + j) % r->n;
        const ring_key *k = &r->keys[i];
        if (!key_ready(k, now))
            continue;
        if (r->strategy == STRAT_ROUND_ROBIN) {
            best = i;
            break;
        }
        if (best < 0 || k->last_limited < r->keys[best].last_limited)
            best = i;
    }
    if (best >= 0) {
        r->next = (best + 1) % r->n;
        r->keys[best].uses++;
    }
    return best;
}

/*
 * Record the outcome of a request made with key i. retry_after < 0 means
 * none was given. A rest never shortens one already running (a late report
 * from an older request must not wake a disabled key).
 */
static void ring_report(ring *r, int i, int outcome, double retry_after, double now)
{
    assert(i >= 0 && i < r->n);
    ring_key *k = &r->keys[i];
    double rest;
    int why;
    switch (outcome) {
    case OUT_OK:
        k->failures = 0;
        return;
    case OUT_LIMITED:
        rest = retry_after >= 0 ? retry_after : r->cooldown;
        why = REST_LIMITED;
        break;
    case OUT_QUOTA:
        rest = retry_after > r->auth_cooldown ? retry_after : r->auth_cooldown;
        why = REST_QUOTA;
        break;
    default:
        assert(outcome == OUT_AUTH);
        rest = retry_after > r->auth_cooldown ? retry_after : r->auth_cooldown;
        why = REST_AUTH;
        break;
    }
    k->failures++;
    if (why != REST_AUTH) {
        k->limited++;
        k->last_limited = now;
    }
    if (now + rest >= k->ready_at) {
        k->ready_at = now + rest;
        k->why = why;
    }
}

/* ================================================================ binding: rings */

static char ring_key_mt;

typedef struct {
    ring *r;                /* NULL once closed */
    char name[64];          /* opts.name (truncated), for messages and tostring */
} l_ring;

static void ring_release(l_ring *u)
{
    ring_free(u->r);
    u->r = NULL;
}

static l_ring *check_ring(lua_State *L)
{
    return sb_checkudata(L, 1, &ring_key_mt, RING_NAME);
}

static int fail_closed(lua_State *L, const l_ring *u)
{
    return sb_fail(L, "closed", "key ring \"%s\" is closed; create a new one with keys.ring{...}",
                   u->name);
}

static const char *const ring_options[] = {
    "keys", "strategy", "cooldown", "auth_cooldown", "name", NULL
};
#define RING_OPTIONS "keys, strategy, cooldown, auth_cooldown, name"

/*
 * Copy the key strings of the array at idx into r (r->keys has room for
 * r->n). Raises on a non-string, empty, blank-containing or repeated key;
 * the keys copied so far stay owned by r, which the userdata frees.
 */
static void ring_fill_keys(lua_State *L, int idx, ring *r)
{
    for (int i = 0; i < r->n; i++) {
        lua_rawgeti(L, idx, i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            sb_keys_raise(L, "keys.ring: opts.keys[%d] must be a string, got %s", i + 1,
                          luaL_typename(L, -1));
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (len == 0)
            sb_keys_raise(L, "keys.ring: opts.keys[%d] is an empty string; remove it "
                          "(keys.parse drops empties)", i + 1);
        for (size_t j = 0; j < len; j++) {
            unsigned char c = (unsigned char)s[j];
            if (c <= ' ' || c == 0x7f)
                sb_keys_raise(L, "keys.ring: opts.keys[%d] contains whitespace or a control "
                              "character; pass bare keys (keys.parse splits a list)", i + 1);
        }
        for (int j = 0; j < i; j++) {
            if (r->keys[j].len == len && memcmp(r->keys[j].s, s, len) == 0)
                sb_keys_raise(L, "keys.ring: opts.keys[%d] repeats opts.keys[%d]; "
                              "list each key once", i + 1, j + 1);
        }
        r->keys[i].s = malloc(len);
        if (r->keys[i].s == NULL)
            sb_keys_raise(L, "keys.ring: out of memory");
        memcpy(r->keys[i].s, s, len);
        r->keys[i].len = len;
        r->keys[i].ready_at = -HUGE_VAL;
        r->keys[i].last_limited = -HUGE_VAL;
        lua_pop(L, 1);
    }
}

/*
 * keys.ring(opts) -> ring. opts.keys: array of key strings, or one string
 * that keys.parse splits. Raises on bad options (see RING_OPTIONS) or out
 * of memory. The userdata owns the ring from the start, so a raise half
 * way through leaves nothing for anyone but __gc to free.
 */
static int l_ring_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    sb_keys_check_options(L, 1, "keys.ring", ring_options, RING_OPTIONS);

    int strategy = STRAT_ROUND_ROBIN;
    lua_getfield(L, 1, "strategy");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            sb_keys_raise(L, "keys.ring: opts.strategy must be \"round_robin\" or "
                          "\"least_recently_limited\", got %s", luaL_typename(L, -1));
        const char *s = lua_tostring(L, -1);
        if (strcmp(s, "least_recently_limited") == 0)
            strategy = STRAT_LRL;
        else if (strcmp(s, "round_robin") != 0)
            sb_keys_raise(L, "keys.ring: unknown opts.strategy \"%s\" (use \"round_robin\" or "
                          "\"least_recently_limited\")", s);
    }
    lua_pop(L, 1);
    double cooldown = sb_keys_opt_number(L, 1, "keys.ring", "cooldown", DEFAULT_COOLDOWN, 0, 0);
    double auth_cooldown = sb_keys_opt_number(L, 1, "keys.ring", "auth_cooldown",
                                              DEFAULT_AUTH_COOLDOWN, 0, 0);
    const char *name = DEFAULT_RING_NAME;
    lua_getfield(L, 1, "name");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            sb_keys_raise(L, "keys.ring: opts.name must be a string, got %s", luaL_typename(L, -1));
        name = lua_tostring(L, -1);
    }
    /* name stays on the stack (index 2) while we use it */

    lua_getfield(L, 1, "keys");                                 /* index 3 */
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        push_parsed(L, s, len);
        lua_replace(L, 3);
    }
    if (lua_type(L, 3) != LUA_TTABLE)
        sb_keys_raise(L, "keys.ring: opts.keys must be an array of API keys or a string of keys "
                      "separated by commas or spaces, got %s", luaL_typename(L, 3));
    size_t nkeys = lua_objlen(L, 3);
    if (nkeys == 0)
        sb_keys_raise(L, "keys.ring: opts.keys is empty; give at least one API key (is the "
                      "environment variable you read them from set?)");
    if (nkeys > 1000000)
        sb_keys_raise(L, "keys.ring: opts.keys holds %zu keys; at most 1000000 are supported",
                      nkeys);

    l_ring *u = lua_newuserdata(L, sizeof *u);                  /* index 4 */
    u->r = NULL;
    snprintf(u->name, sizeof u->name, "%s", name);
    sb_getmeta(L, &ring_key_mt);
    lua_setmetatable(L, -2);

    ring *r = calloc(1, sizeof *r);
    if (r == NULL)
        return sb_keys_raise(L, "keys.ring: out of memory");
    u->r = r;
    r->strategy = strategy;
    r->cooldown = cooldown;
    r->auth_cooldown = auth_cooldown;
    r->keys = calloc(nkeys, sizeof *r->keys);
    r->by_len = malloc(nkeys * sizeof *r->by_len);
    if (r->keys == NULL || r->by_len == NULL)
        return sb_keys_raise(L, "keys.ring: out of memory");
    r->n = (int)nkeys;
    ring_fill_keys(L, 3, r);

    /* Longest first, so a key that contains another is redacted whole. */
    for (int i = 0; i < r->n; i++) {
        int j = i;
        while (j > 0 && r->keys[r->by_len[j - 1]].len < r->keys[i].len) {
            r->by_len[j] = r->by_len[j - 1];
            j--;
        }
        r->by_len[j] = i;
    }
    return 1;
}

/* Append "N what" to b, after ", " unless it is the first count. */
static void add_count(luaL_Buffer *b, int *first, int count, const char *what)
{
    if (count == 0)
        return;
    luaL_addstring(b, *first ? "" : ", ");
    *first = 0;
    char buf[96];
    snprintf(buf, sizeof buf, "%d %s", count, what);
    luaL_addstring(b, buf);
}

/*
 * Push nil, err for a ring whose keys all rest. Kind "auth" when every key
 * is disabled after 401/403, else "rate_limited". err.retry_after is the
 * time until the first key is usable again; err.ring the ring's name.
 */
static int fail_all_resting(lua_State *L, const ring *r, const char *name, double now)
{
    double soonest = HUGE_VAL;
    int nlimited = 0, nquota = 0, nauth = 0;
    for (int i = 0; i < r->n; i++) {
        const ring_key *k = &r->keys[i];
        assert(!key_ready(k, now));
        if (k->ready_at < soonest)
            soonest = k->ready_at;
        nlimited += k->why == REST_LIMITED;
        nquota += k->why == REST_QUOTA;
        nauth += k->why == REST_AUTH;
    }
    double wait = soonest - now;
    if (nauth == r->n) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (int i = 0; i < r->n && i < 4; i++) {
            char red[REDACT_MAX];
            redact_key(r->keys[i].s, r->keys[i].len, red);
            luaL_addstring(&b, i ? ", " : "");
            luaL_addstring(&b, red);
        }
        if (r->n > 4)
            luaL_addstring(&b, ", ...");
        luaL_pushresult(&b);
        sb_fail(L, "auth",
                "key ring \"%s\": all %d keys were rejected (401/403) and are disabled; the "
                "first comes back in %.2f s (auth_cooldown). Check or replace the keys (%s)",
                name, r->n, wait, lua_tostring(L, -1));
        lua_remove(L, -3);
    } else {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        int first = 1;
        add_count(&b, &first, nlimited, "rate-limited");
        add_count(&b, &first, nquota, "out of quota");
        add_count(&b, &first, nauth, "disabled after 401/403");
        luaL_pushresult(&b);
        sb_fail(L, "rate_limited",
                "key ring \"%s\": all %d keys are resting (%s); the first is usable again in "
                "%.2f s. Wait err.retry_after seconds and retry, or add more keys to the ring",
                name, r->n, lua_tostring(L, -1), wait);
        lua_remove(L, -3);
    }
    lua_pushnumber(L, wait);
    lua_setfield(L, -2, "retry_after");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "ring");
    return 2;
}

/* ring:acquire() -> key, id | nil, err (kinds rate_limited, auth, closed). */
static int l_acquire(lua_State *L)
{
    l_ring *u = check_ring(L);
    if (u->r == NULL)
        return fail_closed(L, u);
    double now = sb_now();
    int i = ring_pick(u->r, now);
    if (i < 0)
        return fail_all_resting(L, u->r, u->name, now);
    lua_pushlstring(L, u->r->keys[i].s, u->r->keys[i].len);
    lua_pushinteger(L, i + 1);
    return 2;
}

/*
 * ring:report(id, outcome [, retry_after]) -> true | nil, err (closed).
 * Raises on an id out of range, an unknown outcome or a bad retry_after.
 */
static int l_report(lua_State *L)
{
    l_ring *u = check_ring(L);
    if (lua_type(L, 2) != LUA_TNUMBER)
        return sb_keys_raise(L, "ring:report: the key id (argument #1) must be the number "
                             "acquire() returned, got %s", luaL_typename(L, 2));
    double id = lua_tonumber(L, 2);
    if (lua_type(L, 3) != LUA_TSTRING)
        return sb_keys_raise(L, "ring:report: the outcome (argument #2) must be \"ok\", "
                             "\"rate_limited\", \"quota\" or \"auth\", got %s",
                             luaL_typename(L, 3));
    const char *outcome = lua_tostring(L, 3);
    int out;
    if (strcmp(outcome, "ok") == 0)
        out = OUT_OK;
    else if (strcmp(outcome, "rate_limited") == 0)
        out = OUT_LIMITED;
    else if (strcmp(outcome, "quota") == 0)
        out = OUT_QUOTA;
    else if (strcmp(outcome, "auth") == 0)
        out = OUT_AUTH;
    else
        return sb_keys_raise(L, "ring:report: unknown outcome \"%s\" (use \"ok\", "
                             "\"rate_limited\", \"quota\" or \"auth\")", outcome);
    double retry_after = -1;
    if (!lua_isnoneornil(L, 4)) {
        if (lua_type(L, 4) != LUA_TNUMBER)
            return sb_keys_raise(L, "ring:report: retry_after (argument #3) must be seconds as a "
                                 "number or nil, got %s (parse the Retry-After header first)",
                                 luaL_typename(L, 4));
        retry_after = lua_tonumber(L, 4);
        if (!isfinite(retry_after) || retry_after < 0)
            return sb_keys_raise(L, "ring:report: retry_after must be a finite number >= 0, got %g",
                                 retry_after);
    }
    if (u->r == NULL)
        return fail_closed(L, u);
    if (!(id >= 1 && id <= u->r->n && id == floor(id)))
        return sb_keys_raise(L, "ring:report: no key with id %g in ring \"%s\" (ids run from 1 "
                             "to %d); pass the id acquire() returned", id, u->name, u->r->n);
    ring_report(u->r, (int)id - 1, out, retry_after, sb_now());
    lua_pushboolean(L, 1);
    return 1;
}

/* ring:stats() -> { {id=, key=, state=, ready_in=, uses=, limited=, failures=}, ... } */
static int l_ring_stats(lua_State *L)
{
    l_ring *u = check_ring(L);
    if (u->r == NULL)
        return fail_closed(L, u);
    const ring *r = u->r;
    double now = sb_now();
    lua_createtable(L, r->n, 0);
    for (int i = 0; i < r->n; i++) {
        const ring_key *k = &r->keys[i];
        char red[REDACT_MAX];
        size_t rn = redact_key(k->s, k->len, red);
        int ready = key_ready(k, now);
        lua_createtable(L, 0, 7);
        lua_pushinteger(L, i + 1);
        lua_setfield(L, -2, "id");
        lua_pushlstring(L, red, rn);
        lua_setfield(L, -2, "key");
        lua_pushstring(L, ready ? "ready" : k->why == REST_AUTH ? "disabled" : "resting");
        lua_setfield(L, -2, "state");
        lua_pushnumber(L, ready ? 0 : k->ready_at - now);
        lua_setfield(L, -2, "ready_in");
        lua_pushnumber(L, (lua_Number)k->uses);
        lua_setfield(L, -2, "uses");
        lua_pushnumber(L, (lua_Number)k->limited);
        lua_setfield(L, -2, "limited");
        lua_pushnumber(L, (lua_Number)k->failures);
        lua_setfield(L, -2, "failures");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* ring:redact(text) -> text with every key of the ring replaced by its redacted form. */
static int l_ring_redact(lua_State *L)
{
    l_ring *u = check_ring(L);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    if (u->r == NULL)
        return fail_closed(L, u);
    const ring *r = u->r;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t i = 0;
    while (i < len) {
        int hit = -1;
        for (int j = 0; j < r->n; j++) {
            const ring_key *k = &r->keys[r->by_len[j]];
            if (k->len <= len - i && k->s[0] == s[i] && memcmp(k->s, s + i, k->len) == 0) {
                hit = r->by_len[j];
                break;
            }
        }
        if (hit < 0) {
            luaL_addchar(&b, s[i]);
            i++;
            continue;
        }
        char red[REDACT_MAX];
        luaL_addlstring(&b, red, redact_key(r->keys[hit].s, r->keys[hit].len, red));
        i += r->keys[hit].len;
    }
    luaL_pushresult(&b);
    return 1;
}

static int l_ring_len(lua_State *L)
{
    l_ring *u = check_ring(L);
    lua_pushinteger(L, u->r ? u->r->n : 0);
    return 1;
}

/* "sibyl.keys.ring openai (3 keys, 2 ready)"; never shows a key. */
static int l_ring_tostring(lua_State *L)
{
    l_ring *u = check_ring(L);
    if (u->r == NULL) {
        lua_pushfstring(L, RING_NAME " %s (closed)", u->name);
        return 1;
    }
    double now = sb_now();
    int ready = 0;
    for (int i = 0; i < u->r->n; i++)
        ready += key_ready(&u->r->keys[i], now);
    lua_pushfstring(L, RING_NAME " %s (%d key%s, %d ready)", u->name, u->r->n,
                    u->r->n == 1 ? "" : "s", ready);
    return 1;
}

/* ring:close() -> true, also when already closed. Wipes the keys. */
static int l_ring_close(lua_State *L)
{
    ring_release(check_ring(L));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_ring_gc(lua_State *L)
{
    ring_release(check_ring(L));
    return 0;
}

/* ================================================================ module */

/* keys.parse(text) -> { key, ... }: split on commas and whitespace, drop empties. */
static int l_parse(lua_State *L)
{
    size_t len;
    const char *s;
    if (lua_type(L, 1) != LUA_TSTRING)
        return sb_keys_raise(L, "keys.parse: expected a string of keys separated by commas or "
                             "whitespace, got %s", luaL_typename(L, 1));
    s = lua_tolstring(L, 1, &len);
    push_parsed(L, s, len);
    return 1;
}

/* keys.redact(key) -> the redacted form ("sk-…3456"; "…" for 8 bytes or fewer). */
static int l_redact(lua_State *L)
{
    size_t len;
    if (lua_type(L, 1) != LUA_TSTRING)
        return sb_keys_raise(L, "keys.redact: expected a key string, got %s", luaL_typename(L, 1));
    const char *s = lua_tolstring(L, 1, &len);
    char red[REDACT_MAX];
    size_t n = redact_key(s, len, red);
    lua_pushlstring(L, red, n);
    return 1;
}

static const luaL_Reg ring_methods[] = {
    {"acquire", l_acquire},
    {"report", l_report},
    {"stats", l_ring_stats},
    {"redact", l_ring_redact},
    {"close", l_ring_close},
    {"__len", l_ring_len},
    {"__tostring", l_ring_tostring},
    {"__gc", l_ring_gc},
    {NULL, NULL}
};

static const luaL_Reg keys_funcs[] = {
    {"parse", l_parse},
    {"redact", l_redact},
    {"ring", l_ring_new},
    {NULL, NULL}
};

/*
 * The module table: parse, redact, ring and the DEFAULT_* knobs from here,
 * bucket, `_bucket_mt` (the bucket metatable, also its method table, so
 * keys.lua can add bucket:wait()) and DEFAULT_BURST_SECONDS from bucket.c.
 */
int luaopen_sibyl_keys_core(lua_State *L)
{
    sb_newmeta(L, &ring_key_mt, RING_NAME);
    luaL_setfuncs(L, ring_methods, 0);
    lua_pop(L, 1);
    lua_createtable(L, 0, 8);
    luaL_setfuncs(L, keys_funcs, 0);
    sb_bucket_register(L);
    lua_pushnumber(L, DEFAULT_COOLDOWN);
    lua_setfield(L, -2, "DEFAULT_COOLDOWN");
    lua_pushnumber(L, DEFAULT_AUTH_COOLDOWN);
    lua_setfield(L, -2, "DEFAULT_AUTH_COOLDOWN");
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "_VERSION");
    return 1;
}
