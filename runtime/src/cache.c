/*
 * cache.c -- the L1 memory cache behind `sibyl.cache` (stdlib/sibyl/cache/):
 * a hash map with an LRU list and per-entry TTL, bounded by entry count and
 * by bytes, with hit/miss/eviction stats.
 *
 * Two doors into one structure:
 *   - FFI (the hot path): plain C functions taking the cache pointer, a key
 *     and a value, called from LuaJIT traces with no Lua-C boundary. Their
 *     addresses are handed to Lua as lightuserdata (core.ffi), so they work
 *     whether or not this library's symbols are visible to ffi.C.
 *   - The Lua C API (core.*): creating caches (userdata with __gc and
 *     close), and turning tables into bytes and back (values are copies).
 *
 * Values: numbers are stored as doubles; strings, booleans, json.null and
 * serialised tables as bytes with a type tag. A table is copied on set and
 * rebuilt on every get: the cache never hands out shared mutable state.
 *
 * LRU order is exact for the back three quarters of the list, where
 * evictions happen: a hit on an entry already in the front quarter does not
 * move it (see sb_cache_get).
 *
 * Time is CLOCK_MONOTONIC_COARSE (a few ms of resolution; TTLs are seconds).
 * Expired entries are dropped when looked up, and a few are reclaimed from
 * the LRU tail on every set, so a cache that is only written stays bounded
 * by max_entries / max_bytes either way.
 *
 * Caveat: one runtime (one thread) per cache; no locking.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb.h"
#include "sb_hash.h"

/* Value types, shared with stdlib/sibyl/cache/init.lua. */
enum { SB_CV_NONE = 0, SB_CV_NUMBER, SB_CV_STRING, SB_CV_TRUE, SB_CV_FALSE, SB_CV_NULL, SB_CV_TABLE };

#define ENTRY_OVERHEAD 64          /* bytes counted per entry besides key and value */
#define SERIAL_MAX_DEPTH 100

/* 48 bytes before the key, so a lookup usually reads one cache line: the
 * fields a hit needs, then the key (the hash lives in the slot). */
typedef struct sb_centry {
    double expires;                 /* 0 = never */
    double num;
    uint32_t klen, vlen;
    uint32_t stamp;                 /* c->moves (low 32 bits) when last moved to the front */
    int type;
    struct sb_centry *prev, *next;  /* LRU: head = most recent */
    char data[];                    /* key bytes, then value bytes */
} sb_centry;

/* Open addressing, linear probing: the hash sits in the slot, so a probe
 * touches the entry only when the hashes match. */
typedef struct {
    uint64_t hash;
    sb_centry *e;                   /* NULL: empty */
} sb_cslot;

typedef struct sb_cache {
    sb_cslot *slots;
    size_t cap, count, bytes;       /* cap: a power of two, at most half full */
    size_t max_entries, max_bytes;  /* 0 = unlimited */
    double ttl;                     /* default TTL, 0 = none */
    sb_centry *head, *tail;
    uint32_t moves;                 /* moves to the front so far (wraps; compared modulo 2^32) */
    double probes;                  /* slots looked at beyond the first */
    double hits, misses, sets, evictions, expirations;
    int closed;
} sb_cache;

/* What a get hands back through FFI. */
typedef struct {
    double num;
    const char *ptr;
    size_t len;
} sb_cache_val;

static char cache_mt_key;

static double now_coarse(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t hash_key(const char *k, size_t n)
{
    return sb_hash64(k, n, SB_HASH_SEED);
}

/* Key equality without a libc call for the usual short keys. */
static int same_key(const char *a, const char *b, size_t n)
{
    while (n >= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y)
            return 0;
        a += 8;
        b += 8;
        n -= 8;
    }
    while (n--)
        if (*a++ != *b++)
            return 0;
    return 1;
}

/* ----------------------------------------------------------- LRU list */

static void lru_unlink(sb_cache *c, sb_centry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(sb_cache *c, sb_centry *e)
{
    e->stamp = ++c->moves;
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (c->tail == NULL)
        c->tail = e;
}

/* ----------------------------------------------------------- hash map */

/* The slot holding key, or the empty slot where it would go (*found = 0). */
static size_t find(sb_cache *c, uint64_t h, const char *k, size_t kl, int *found)
{
    size_t mask = c->cap - 1, i = (size_t)h & mask;
    for (;; c->probes++) {
        const sb_cslot *s = &c->slots[i];
        if (s->e == NULL) {
            *found = 0;
            return i;
        }
        if (s->hash == h && s->e->klen == kl && same_key(s->e->data, k, kl)) {
            *found = 1;
            return i;
        }
        i = (i + 1) & mask;
    }
}

/* Empty slot i, shifting back the entries that probed past it. */
static void slot_clear(sb_cache *c, size_t i)
{
    size_t mask = c->cap - 1, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (c->slots[j].e == NULL)
            break;
        size_t home = (size_t)c->slots[j].hash & mask;
        /* Can the entry at j move to i? Only if its home is not in (i, j]. */
        int between = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            c->slots[i] = c->slots[j];
            i = j;
        }
    }
    c->slots[i].e = NULL;
}

static void grow(sb_cache *c)
{
    size_t n = c->cap * 2;
    sb_cslot *ns = calloc(n, sizeof *ns);
    if (ns == NULL)
        return;                     /* stay fuller: slower, still correct */
    for (size_t i = 0; i < c->cap; i++) {
        if (c->slots[i].e == NULL)
            continue;
        size_t j = (size_t)c->slots[i].hash & (n - 1);
        while (ns[j].e)
            j = (j + 1) & (n - 1);
        ns[j] = c->slots[i];
    }
    free(c->slots);
    c->slots = ns;
    c->cap = n;
}

static size_t entry_bytes(const sb_centry *e)
{
    return ENTRY_OVERHEAD + e->klen + e->vlen;
}

/* Remove the entry in slot i and free it. */
static void drop(sb_cache *c, size_t i)
{
    sb_centry *e = c->slots[i].e;
    slot_clear(c, i);
    lru_unlink(c, e);
    c->count--;
    c->bytes -= entry_bytes(e);
    free(e);
}

static void drop_entry(sb_cache *c, sb_centry *e)
{
    int found;
    size_t i = find(c, hash_key(e->data, e->klen), e->data, e->klen, &found);
    drop(c, i);
}

/* Evict from the LRU tail until the limits hold, expired entries first
 * among the few looked at. */
static void enforce(sb_cache *c, double now)
{
    for (int i = 0; i < 2 && c->tail; i++) {        /* reclaim a little */
        sb_centry *e = c->tail;
        if (e->expires == 0 || e->expires > now)
            break;
        drop_entry(c, e);
        c->expirations++;
    }
    while (c->tail && ((c->max_entries && c->count > c->max_entries) ||
                       (c->max_bytes && c->bytes > c->max_bytes))) {
        drop_entry(c, c->tail);
        c->evictions++;
    }
}

/* ------------------------------------------------------- the FFI door */

/* Not static: cache/init.lua calls these through ffi.cast'ed pointers. */
int sb_cache_get(sb_cache *c, const char *k, size_t kl, sb_cache_val *out);
int sb_cache_set(sb_cache *c, const char *k, size_t kl, int type, double num, const char *v,
                 size_t vl, double ttl);
int sb_cache_delete(sb_cache *c, const char *k, size_t kl);

/* Look key up. Returns its type (SB_CV_NONE on a miss or expiry); numbers
 * in out->num, bytes in out->ptr/len (valid until the next call that
 * changes the cache). */
int sb_cache_get(sb_cache *c, const char *k, size_t kl, sb_cache_val *out)
{
    if (c->closed)
        return SB_CV_NONE;
    int found;
    size_t i = find(c, hash_key(k, kl), k, kl, &found);
    if (!found) {
        c->misses++;
        return SB_CV_NONE;
    }
    sb_centry *e = c->slots[i].e;
    if (e->expires != 0 && e->expires <= now_coarse()) {
        drop(c, i);
        c->expirations++;
        c->misses++;
        return SB_CV_NONE;
    }
    /* An entry moved to the front within the last count/4 moves is still in
     * the front quarter of the list, far from eviction: leave it there and
     * save the relinking (three cache lines). Small caches stay exact. */
    if (c->head != e && (size_t)(uint32_t)(c->moves - e->stamp) > c->count / 4) {
        lru_unlink(c, e);
        lru_push_front(c, e);
    }
    c->hits++;
    out->num = e->num;
    out->ptr = e->data + e->klen;
    out->len = e->vlen;
    return e->type;
}

/* Store a value: type SB_CV_NUMBER uses num, the others bytes v/vl. ttl < 0
 * means the cache's default, 0 none. Returns 1, 0 when the entry alone is
 * over max_bytes (not stored), -1 out of memory. */
int sb_cache_set(sb_cache *c, const char *k, size_t kl, int type, double num, const char *v,
                 size_t vl, double ttl)
{
    if (c->closed)
        return 0;
    if (type != SB_CV_STRING && type != SB_CV_TABLE)
        vl = 0;
    if (kl > UINT32_MAX || vl > UINT32_MAX)
        return 0;                   /* over 4 GiB: never cached */
    size_t need = ENTRY_OVERHEAD + kl + vl;
    uint64_t h = hash_key(k, kl);
    int found;
    size_t i = find(c, h, k, kl, &found);
    if (c->max_bytes && need > c->max_bytes) {
        if (found)
            drop(c, i);             /* the old value must not outlive a refused set */
        return 0;
    }
    sb_centry *e = found ? c->slots[i].e : NULL;
    if (e) {                        /* replace: reuse the entry, resized if needed */
        lru_unlink(c, e);
        c->bytes -= entry_bytes(e);
        if (e->vlen != vl) {
            sb_centry *ne = realloc(e, sizeof *e + kl + vl);
            if (ne == NULL) {
                c->slots[i].e = e;  /* unchanged, back in front */
                lru_push_front(c, e);
                c->bytes += entry_bytes(e);
                return -1;
            }
            e = ne;
            c->slots[i].e = e;
        }
    } else {
        e = malloc(sizeof *e + kl + vl);
        if (e == NULL)
            return -1;
        e->klen = (uint32_t)kl;
        memcpy(e->data, k, kl);
        c->slots[i].hash = h;
        c->slots[i].e = e;
        c->count++;
    }
    e->vlen = (uint32_t)vl;
    e->type = type;
    e->num = num;
    if (vl)
        memcpy(e->data + kl, v, vl);
    if (ttl < 0)
        ttl = c->ttl;
    double now = now_coarse();
    e->expires = ttl > 0 ? now + ttl : 0;
    lru_push_front(c, e);
    c->bytes += need;
    c->sets++;
    enforce(c, now);
    if (c->count * 2 > c->cap)
        grow(c);
    return 1;
}

/* Remove key. Returns 1 if it was there (expired or not). */
int sb_cache_delete(sb_cache *c, const char *k, size_t kl)
{
    if (c->closed)
        return 0;
    int found;
    size_t i = find(c, hash_key(k, kl), k, kl, &found);
    if (!found)
        return 0;
    drop(c, i);
    return 1;
}

/* ------------------------------------------------------- serialisation */

/* Tags inside a serialised table. */
enum { T_END = 0, T_NUM, T_STR, T_TRUE, T_FALSE, T_NULL, T_TABLE };

/*
 * luaL_Buffer keeps pieces on the stack, so values are first copied into a
 * C buffer of our own; that keeps stack indexes stable while recursing.
 */
typedef struct {
    char *p;
    size_t len, cap;
} sbuf;

static int sbuf_put(sbuf *s, const void *p, size_t n)
{
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        while (cap < s->len + n)
            cap *= 2;
        char *np = realloc(s->p, cap);
        if (np == NULL)
            return -1;
        s->p = np;
        s->cap = cap;
    }
    memcpy(s->p + s->len, p, n);
    s->len += n;
    return 0;
}

static int ser(lua_State *L, sbuf *s, int idx, int depth, const char **why)
{
    unsigned char tag;
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER: {
        double d = lua_tonumber(L, idx);
        tag = T_NUM;
        return sbuf_put(s, &tag, 1) || sbuf_put(s, &d, sizeof d);
    }
    case LUA_TSTRING: {
        size_t n;
        const char *str = lua_tolstring(L, idx, &n);
        uint64_t len = n;
        tag = T_STR;
        return sbuf_put(s, &tag, 1) || sbuf_put(s, &len, sizeof len) || sbuf_put(s, str, n);
    }
    case LUA_TBOOLEAN:
        tag = lua_toboolean(L, idx) ? T_TRUE : T_FALSE;
        return sbuf_put(s, &tag, 1);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {           /* json.null */
            tag = T_NULL;
            return sbuf_put(s, &tag, 1);
        }
        break;
    case LUA_TTABLE: {
        if (depth > SERIAL_MAX_DEPTH) {
            *why = "nested deeper than 100 levels (a cycle?)";
            return -1;
        }
        tag = T_TABLE;
        if (sbuf_put(s, &tag, 1))
            return -1;
        if (!lua_checkstack(L, 3)) {
            *why = "nested too deeply for the Lua stack";
            return -1;
        }
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            int top = lua_gettop(L);
            if (ser(L, s, top - 1, depth + 1, why) || ser(L, s, top, depth + 1, why)) {
                lua_pop(L, 2);
                return -1;
            }
            lua_pop(L, 1);
        }
        tag = T_END;
        return sbuf_put(s, &tag, 1);
    }
    default:
        break;
    }
    *why = lua_typename(L, lua_type(L, idx));
    return -1;
}

/* core.encode(table) -> bytes. Raises for values that cannot be copied. */
static int l_encode(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    sbuf s = {NULL, 0, 0};
    const char *why = "out of memory";
    lua_settop(L, 1);
    if (ser(L, &s, 1, 0, &why) != 0) {
        free(s.p);
        if (strcmp(why, "out of memory") == 0 || strncmp(why, "nested", 6) == 0)
            return luaL_error(L, "cache: cannot store the table: %s", why);
        return luaL_error(L, "cache: cannot store a %s inside a table (values may be strings, numbers, "
                             "booleans, json.null and tables of those)", why);
    }
    lua_pushlstring(L, s.p, s.len);
    free(s.p);
    return 1;
}

typedef struct {
    const char *p, *end;
} rbuf;

static int de(lua_State *L, rbuf *r, int depth)
{
    if (r->p >= r->end || depth > SERIAL_MAX_DEPTH + 1)
        return -1;
    unsigned char tag = (unsigned char)*r->p++;
    switch (tag) {
    case T_NUM: {
        double d;
        if ((size_t)(r->end - r->p) < sizeof d)
            return -1;
        memcpy(&d, r->p, sizeof d);
        r->p += sizeof d;
        lua_pushnumber(L, d);
        return 0;
    }
    case T_STR: {
        uint64_t n;
        if ((size_t)(r->end - r->p) < sizeof n)
            return -1;
        memcpy(&n, r->p, sizeof n);
        r->p += sizeof n;
        if ((uint64_t)(r->end - r->p) < n)
            return -1;
        lua_pushlstring(L, r->p, (size_t)n);
        r->p += n;
        return 0;
    }
    case T_TRUE:
    case T_FALSE:
        lua_pushboolean(L, tag == T_TRUE);
        return 0;
    case T_NULL:
        lua_pushlightuserdata(L, NULL);
        return 0;
    case T_TABLE:
        if (!lua_checkstack(L, 4))
            return -1;
        lua_newtable(L);
        while (r->p < r->end && (unsigned char)*r->p != T_END) {
            if (de(L, r, depth + 1) || de(L, r, depth + 1))
                return -1;
            lua_rawset(L, -3);
        }
        if (r->p >= r->end)
            return -1;
        r->p++;                                         /* T_END */
        return 0;
    default:
        return -1;
    }
}

/* core.decode(ptr_or_string [, len]) -> table. Takes a string, or the
 * lightuserdata/len that an FFI get returned (no copy in between). */
static int l_decode(lua_State *L)
{
    const char *p;
    size_t n;
    if (lua_type(L, 1) == LUA_TSTRING) {
        p = lua_tolstring(L, 1, &n);
    } else {
        p = lua_touserdata(L, 1);
        n = (size_t)luaL_checknumber(L, 2);
        if (p == NULL)
            return luaL_argerror(L, 1, "bytes expected");
    }
    rbuf r = {p, p + n};
    int top = lua_gettop(L);
    if (de(L, &r, 0) != 0 || r.p != r.end) {
        lua_settop(L, top);
        return luaL_error(L, "cache: a stored table is corrupt");
    }
    return 1;
}

/* core.digest(s) -> 32 hex digits: two 64-bit hashes of s with different
 * seeds. For cache keys (not cryptographic: do not key secrets on it). */
static int l_digest(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    uint64_t a = sb_hash64(s, n, SB_HASH_SEED), b = sb_hash64(s, n, 0xD6E8FEB86659FD93ULL);
    char out[33];
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out[i] = hex[(a >> (60 - 4 * i)) & 15];
        out[16 + i] = hex[(b >> (60 - 4 * i)) & 15];
    }
    lua_pushlstring(L, out, 32);
    return 1;
}

/* --------------------------------------------------------- the Lua door */

typedef struct {
    sb_cache *c;
} cache_ud;

static void cache_free(sb_cache *c)
{
    if (c == NULL)
        return;
    sb_centry *e = c->head;
    while (e) {
        sb_centry *next = e->next;
        free(e);
        e = next;
    }
    free(c->slots);
    free(c);
}

static double opt_field(lua_State *L, const char *k, double def)
{
    double v = sb_opt_num(L, 1, k, def);
    if (v < 0 || isnan(v))
        luaL_error(L, "cache: %s must be a number >= 0 (0 = unlimited)", k);
    return v;
}

/* core.new{max_entries=, max_bytes=, ttl=} -> cache userdata, pointer */
static int l_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    double max_entries = opt_field(L, "max_entries", 10000);
    double max_bytes = opt_field(L, "max_bytes", 64.0 * 1024 * 1024);
    double ttl = opt_field(L, "ttl", 0);
    cache_ud *u = lua_newuserdata(L, sizeof *u);
    u->c = NULL;
    sb_getmeta(L, &cache_mt_key);
    lua_setmetatable(L, -2);
    sb_cache *c = calloc(1, sizeof *c);
    if (c == NULL || (c->slots = calloc(64, sizeof *c->slots)) == NULL) {
        free(c);
        return luaL_error(L, "cache: out of memory");
    }
    c->cap = 64;
    c->max_entries = (size_t)max_entries;
    c->max_bytes = (size_t)max_bytes;
    c->ttl = ttl;
    u->c = c;
    lua_pushlightuserdata(L, c);
    return 2;
}

static sb_cache *check_cache(lua_State *L)
{
    cache_ud *u = sb_checkudata(L, 1, &cache_mt_key, "sibyl.cache");
    if (u->c == NULL)
        luaL_error(L, "cache: the cache is closed");
    return u->c;
}

static int l_close(lua_State *L)
{
    cache_ud *u = sb_checkudata(L, 1, &cache_mt_key, "sibyl.cache");
    cache_free(u->c);
    u->c = NULL;
    return 0;
}

static int l_gc(lua_State *L)
{
    cache_ud *u = lua_touserdata(L, 1);
    cache_free(u->c);
    u->c = NULL;
    return 0;
}

static void set_num(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

static int l_stats(lua_State *L)
{
    sb_cache *c = check_cache(L);
    lua_createtable(L, 0, 10);
    set_num(L, "hits", c->hits);
    set_num(L, "misses", c->misses);
    set_num(L, "sets", c->sets);
    set_num(L, "evictions", c->evictions);
    set_num(L, "expirations", c->expirations);
    set_num(L, "entries", (double)c->count);
    set_num(L, "bytes", (double)c->bytes);
    set_num(L, "max_entries", (double)c->max_entries);
    set_num(L, "max_bytes", (double)c->max_bytes);
    set_num(L, "ttl", c->ttl);
    set_num(L, "probes", c->probes);
    set_num(L, "slots", (double)c->cap);
    return 1;
}

static int l_clear(lua_State *L)
{
    sb_cache *c = check_cache(L);
    while (c->head)
        drop_entry(c, c->head);
    return 0;
}

/* Drop every expired entry now; returns how many. */
static int l_purge(lua_State *L)
{
    sb_cache *c = check_cache(L);
    double now = now_coarse(), n = 0;
    sb_centry *e = c->head;
    while (e) {
        sb_centry *next = e->next;
        if (e->expires != 0 && e->expires <= now) {
            drop_entry(c, e);
            c->expirations++;
            n++;
        }
        e = next;
    }
    lua_pushnumber(L, n);
    return 1;
}

/* Keys from most to least recently used (expired ones skipped). */
static int l_keys(lua_State *L)
{
    sb_cache *c = check_cache(L);
    double now = now_coarse();
    lua_createtable(L, (int)c->count, 0);
    int i = 0;
    for (sb_centry *e = c->head; e; e = e->next) {
        if (e->expires != 0 && e->expires <= now)
            continue;
        lua_pushlstring(L, e->data, e->klen);
        lua_rawseti(L, -2, ++i);
    }
    return 1;
}

/* Seconds until key expires: number, math.huge for never, nil if absent. */
static int l_ttl(lua_State *L)
{
    sb_cache *c = check_cache(L);
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);
    int found;
    size_t i = find(c, hash_key(k, kl), k, kl, &found);
    sb_centry *e = found ? c->slots[i].e : NULL;
    double now = now_coarse();
    if (e == NULL || (e->expires != 0 && e->expires <= now))
        return 0;
    lua_pushnumber(L, e->expires == 0 ? HUGE_VAL : e->expires - now);
    return 1;
}

static const luaL_Reg cache_methods[] = {
    {"close", l_close},
    {"stats", l_stats},
    {"clear", l_clear},
    {"purge", l_purge},
    {"keys", l_keys},
    {"ttl", l_ttl},
    {"__gc", l_gc},
    {NULL, NULL}
};

int luaopen_sibyl_cache_core(lua_State *L)
{
    sb_newmeta(L, &cache_mt_key, "sibyl.cache");
    luaL_setfuncs(L, cache_methods, 0);
    lua_pop(L, 1);
    lua_createtable(L, 0, 8);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "new");
    lua_pushcfunction(L, l_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, l_decode);
    lua_setfield(L, -2, "decode");
    lua_pushcfunction(L, l_digest);
    lua_setfield(L, -2, "digest");
    lua_createtable(L, 0, 4);               /* addresses for ffi.cast */
    lua_pushlightuserdata(L, (void *)(uintptr_t)sb_cache_get);
    lua_setfield(L, -2, "get");
    lua_pushlightuserdata(L, (void *)(uintptr_t)sb_cache_set);
    lua_setfield(L, -2, "set");
    lua_pushlightuserdata(L, (void *)(uintptr_t)sb_cache_delete);
    lua_setfield(L, -2, "delete");
    lua_setfield(L, -2, "ffi");
    for (int t = SB_CV_NONE; t <= SB_CV_TABLE; t++) {
        static const char *names[] = {"NONE", "NUMBER", "STRING", "TRUE", "FALSE", "NULL", "TABLE"};
        lua_pushinteger(L, t);
        lua_setfield(L, -2, names[t]);
    }
    return 1;
}
