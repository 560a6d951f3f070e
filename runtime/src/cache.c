/*
 * cache.c -- the L1 memory cache behind `sibyl.cache` (stdlib/sibyl/cache/):
 * a hash map with exact LRU order and per-entry TTL, bounded by entry count
 * and by bytes, with hit/miss/eviction stats.
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
 * serialised tables (cache_ser.c) as bytes with a type tag. A table is
 * copied on set and rebuilt on every get: the cache never hands out shared
 * mutable state.
 *
 * Layout, for a lookup that reads few cache lines: entries are 64-byte
 * nodes in one array, with short keys and small values inside the node; the
 * hash table is a separate array of 8-byte slots (hash bits + node index),
 * with one tag byte per slot beside it (a dense array that stays in cache);
 * LRU order is a log of node indexes, not a linked list (see sb_cache
 * below). A miss usually reads one tag. A hit reads a tag, its slot
 * (fetched together) and its node, and writes 4 bytes in pos[] and the log.
 * A set of a new key into a full cache evicts the LRU entry first and
 * reuses its node (whose line the previous set prefetched).
 *
 * The table's hash is seeded per cache from the secure generator, so keys
 * that all land in one probe run cannot be computed in advance.
 *
 * Time is CLOCK_MONOTONIC_COARSE (a few ms of resolution; TTLs are seconds),
 * read before the lookup so that it overlaps the lookup's cache misses.
 * Expired entries are dropped when looked up, and a set that evicts nothing
 * reclaims up to two expired ones from the LRU tail, so a cache that is only
 * written stays bounded by max_entries / max_bytes either way.
 *
 * Caveat: one runtime (one thread) per cache; no locking.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <event2/util.h>

#include "sb.h"
#include "sb_hash.h"

/* Value types, shared with stdlib/sibyl/cache/init.lua. */
enum { SB_CV_NONE = 0, SB_CV_NUMBER, SB_CV_STRING, SB_CV_TRUE, SB_CV_FALSE, SB_CV_NULL, SB_CV_TABLE };

#define ENTRY_OVERHEAD 64          /* bytes counted per entry besides key and value */
#define INLINE_MAX 32              /* key + value bytes kept inside the node */
#define NOPOS UINT32_MAX           /* pos[] of a free node */
#define LOG_SLACK 8                /* the use log has room for this many records per entry */
/* Slots per entry, at least: a table at most a quarter full. Linear probes
 * then mostly stop at the first slot. That costs 16 more bytes an entry than
 * half full, and measured 10-15% faster with 50k entries (fewer
 * mispredicted probe loops); an eighth full was slower again (the slots stop
 * fitting in cache). */
#define MAX_LOAD 4

/* One entry: one cache line (the node array is 64-byte aligned). Key and
 * value bytes live in inl when they fit (INLINE_MAX together: "key:123"
 * with a number, a boolean or a string of a few bytes), else in a malloc'd
 * block (key, then value) whose address is in heap. Free nodes have type
 * SB_CV_NONE and chain through next_free. */
typedef struct {
    double expires;                 /* 0 = never */
    double num;
    uint32_t klen, vlen;
    uint32_t hash;                  /* low 32 bits of the key's hash, as in its slot */
    uint8_t type;
    uint8_t ext;                    /* 1: the bytes are in heap */
    uint16_t pad;
    union {
        char inl[INLINE_MAX];
        char *heap;
        uint32_t next_free;
    } d;
} sb_cnode;

_Static_assert(sizeof(sb_cnode) == 64, "a node is one cache line");

/* Open addressing, linear probing: a slot holds the low 32 bits of the
 * hash (which also give its home) and the node index + 1 (0: empty), so
 * a probe reads the node only when those bits match. Eight per line. A
 * probe looks at the slot's tag first (tags[], 64 per line), and at the
 * slot only when the tag matches. */
typedef struct {
    uint32_t hash;
    uint32_t ref;
} sb_cslot;

/* A slot's tag: 7 bits of the hash that its home does not use, never 0. */
#define TAG(h) ((uint8_t)(0x80 | ((h) >> 57)))

/* What a get hands back through FFI. */
typedef struct {
    double num;
    const char *ptr;
    size_t len;
} sb_cache_val;

/*
 * Exact LRU without a linked list: every use of a node appends its index
 * to the log order[lo..hi), and pos[node] says where its latest record is.
 * A record whose position is not pos[node] is stale. The first fresh
 * record from lo is therefore the least recently used node, the last one
 * the most recent. A use touches the node's own line, pos[] (4 bytes a
 * node: small, stays in cache) and the log's end, never other nodes (a
 * linked list relinks three). When the log reaches its end it is compacted
 * to its fresh records (count of them), with room for LOG_SLACK x count:
 * one sequential pass per ~7 x count uses (4 bytes a record). Evicting
 * skips the stale records at lo.
 */
typedef struct sb_cache {
    sb_cache_val out;               /* the last get's value: first, cache/init.lua reads it */
    sb_cslot *slots;
    uint8_t *tags;                  /* per slot: 0 empty, else TAG(hash) */
    size_t cap, count, bytes;       /* cap: a power of two, <= 1/MAX_LOAD full */
    size_t max_entries, max_bytes;  /* 0 = unlimited */
    double ttl;                     /* default TTL, 0 = none */
    uint64_t seed[2];               /* of the table's hash */
    int timed;                      /* an entry had a TTL since the last clear: read the clock */
    sb_cnode *nodes;                /* ncap of them, nused ever handed out */
    uint32_t *pos;                  /* per node: its record in order[], NOPOS when free */
    uint32_t ncap, nused, free_head;/* free_head: a free node + 1, 0 = none */
    uint32_t *order;                /* the use log, ocap records */
    uint32_t lo, hi, ocap;
    uint64_t probes;                /* slots looked at beyond the first */
    uint64_t hits, misses, sets, evictions, expirations;
} sb_cache;

static char cache_mt_key;

static double now_coarse(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t load64(const char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

static inline uint64_t load32(const char *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    return x;
}

static inline void store64(char *p, uint64_t x)
{
    memcpy(p, &x, 8);
}

/* memcpy of up to INLINE_MAX bytes without a call: (overlapping) words. */
static inline void copy_small(char *d, const char *s, size_t n)
{
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8)
            store64(d + i, load64(s + i));
        store64(d + n - 8, load64(s + n - 8));
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        memcpy(d, &a, 4);
        memcpy(d + n - 4, &b, 4);
    } else if (n > 0) {
        d[0] = s[0];
        d[n / 2] = s[n / 2];
        d[n - 1] = s[n - 1];
    }
}

/* 64 x 64 -> 128-bit multiply, folded: one multiply mixes two words. */
static inline uint64_t mum(uint64_t a, uint64_t b)
{
#ifdef __SIZEOF_INT128__
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t h = (a ^ (a >> 29)) * 0xBF58476D1CE4E5B9ULL ^ b;
    return sb_hash_final(h);
#endif
}

#define MUM1 0xA0761D6478BD642FULL

/*
 * The table's hash, after wyhash: keys up to 16 bytes are read as two
 * (overlapping) words and mixed with two multiplies that do not wait on
 * each other's loads; longer ones 16 bytes a step. Both factors of every
 * multiply are masked with secret words (seed[], per cache, from the secure
 * generator): a key cannot be made to zero one, and colliding keys cannot
 * be precomputed. Never stored: only this table's homes depend on it.
 */
static inline uint64_t hash_key(const uint64_t seed[2], const char *k, size_t n)
{
    uint64_t s0 = seed[0], s1 = seed[1];
    uint64_t a, b;
    if (n <= 16) {
        if (n >= 8) {
            a = load64(k);
            b = load64(k + n - 8);
        } else if (n >= 4) {
            a = load32(k);
            b = load32(k + n - 4);
        } else if (n > 0) {
            a = (uint64_t)(unsigned char)k[0] << 16 | (uint64_t)(unsigned char)k[n / 2] << 8 |
                (unsigned char)k[n - 1];
            b = 0;
        } else {
            a = b = 0;
        }
    } else {
        const char *p = k;
        size_t i = n;
        for (; i > 16; i -= 16, p += 16)
            s1 = mum(load64(p) ^ s0, load64(p + 8) ^ s1);
        a = load64(k + n - 16);
        b = load64(k + n - 8);
    }
    return mum(MUM1 ^ n, mum(a ^ s0, b ^ s1));
}

/* Key equality without a libc call, by (overlapping) word loads. */
static inline int same_key(const char *a, const char *b, size_t n)
{
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8)
            if (load64(a + i) != load64(b + i))
                return 0;
        return load64(a + n - 8) == load64(b + n - 8);
    }
    if (n >= 4)
        return load32(a) == load32(b) && load32(a + n - 4) == load32(b + n - 4);
    while (n--)
        if (*a++ != *b++)
            return 0;
    return 1;
}

static inline char *node_data(sb_cnode *n)
{
    return n->ext ? n->d.heap : n->d.inl;
}

/* ------------------------------------------------------------- nodes */

/*
 * The node and slot arrays: 64-byte aligned; from 1 MiB on, rounded to
 * 2 MiB and asked to be backed by transparent huge pages (a lookup is two
 * random reads; with 4 KiB pages each is also a TLB miss). Zeroed if zero.
 */
static void *alloc_big(size_t bytes, int zero)
{
    size_t huge = (size_t)2 << 20;
    if (bytes >= huge / 2)                  /* what sb_alloc_big will really take */
        bytes = (bytes + huge - 1) & ~(huge - 1);
    void *p = sb_alloc_big(bytes, huge / 2);
    if (p && zero)
        memset(p, 0, bytes);
    return p;
}

/* A free node's index, or -1 out of memory. Growing moves the array:
 * pointers into nodes do not survive a call to this. */
static int64_t node_alloc(sb_cache *c)
{
    if (c->free_head) {
        uint32_t i = c->free_head - 1;
        c->free_head = c->nodes[i].d.next_free;
        return i;
    }
    if (c->nused == c->ncap) {
        if (c->ncap >= UINT32_MAX / 2)
            return -1;
        uint32_t n = c->ncap ? c->ncap * 2 : 64;
        sb_cnode *nn = alloc_big((size_t)n * sizeof *nn, 0);
        uint32_t *np = realloc(c->pos, (size_t)n * sizeof *np);
        if (np)
            c->pos = np;
        if (nn == NULL || np == NULL) {
            free(nn);
            return -1;
        }
        if (c->nused)
            memcpy(nn, c->nodes, (size_t)c->nused * sizeof *nn);
        free(c->nodes);
        c->nodes = nn;
        c->ncap = n;
    }
    return c->nused++;
}

static void node_free(sb_cache *c, uint32_t i)
{
    sb_cnode *n = &c->nodes[i];
    if (n->ext)
        free(n->d.heap);
    n->ext = 0;
    n->type = SB_CV_NONE;
    n->d.next_free = c->free_head;
    c->free_head = i + 1;
    c->pos[i] = NOPOS;
}

/* Put key and value bytes into node n (its key already there when
 * has_key), inline or in a block of their own. -1: out of memory, n
 * unchanged. */
static int node_store_slow(sb_cnode *n, int has_key, const char *k, size_t kl, const char *v,
                           size_t vl);

static inline int node_store(sb_cnode *n, int has_key, const char *k, size_t kl, const char *v, size_t vl)
{
    if (kl + vl <= INLINE_MAX && !n->ext) {     /* the common case, inline */
        if (!has_key)
            copy_small(n->d.inl, k, kl);
        if (vl)
            copy_small(n->d.inl + kl, v, vl);
        n->klen = (uint32_t)kl;
        n->vlen = (uint32_t)vl;
        return 0;
    }
    return node_store_slow(n, has_key, k, kl, v, vl);
}

static int node_store_slow(sb_cnode *n, int has_key, const char *k, size_t kl, const char *v,
                           size_t vl)
{
    size_t total = kl + vl;
    if (total <= INLINE_MAX) {
        if (n->ext) {               /* out of line -> inline: the key comes back */
            char *h = n->d.heap;
            copy_small(n->d.inl, h, kl);
            free(h);
            n->ext = 0;
        } else if (!has_key) {
            copy_small(n->d.inl, k, kl);
        }
        copy_small(n->d.inl + kl, v, vl);
    } else {
        char *h;
        if (n->ext) {
            if (n->klen + n->vlen == total) {
                h = n->d.heap;
            } else if ((h = realloc(n->d.heap, total)) == NULL) {
                return -1;
            }
        } else {
            if ((h = malloc(total)) == NULL)
                return -1;
            memcpy(h, has_key ? n->d.inl : k, kl);
        }
        if (vl)
            memcpy(h + kl, v, vl);
        n->d.heap = h;
        n->ext = 1;
    }
    n->klen = (uint32_t)kl;
    n->vlen = (uint32_t)vl;
    return 0;
}

/* ----------------------------------------------------------- LRU log */

/* Keep the fresh records only, at the start of the log; make room. */
static int log_compact(sb_cache *c)
{
    uint32_t n = 0;
    for (uint32_t p = c->lo; p < c->hi; p++) {
        uint32_t i = c->order[p];
        if (c->pos[i] == p) {
            c->order[n] = i;
            c->pos[i] = n++;
        }
    }
    c->lo = 0;
    c->hi = n;
    if ((size_t)n * LOG_SLACK > c->ocap || c->ocap == 0) {     /* keep compactions rare */
        if (c->ocap >= UINT32_MAX / 4)
            return c->hi < c->ocap ? 0 : -1;
        uint32_t cap = c->ocap ? c->ocap * 2 : 64;
        while ((size_t)n * LOG_SLACK > cap)
            cap *= 2;
        uint32_t *no = realloc(c->order, (size_t)cap * sizeof *no);
        if (no == NULL)
            return c->hi < c->ocap ? 0 : -1;
        c->order = no;
        c->ocap = cap;
    }
    return 0;
}

/* Make node i the most recently used. -1: out of memory (only when the
 * log is full of fresh records and cannot grow). */
static inline int lru_touch(sb_cache *c, uint32_t i)
{
    if (c->hi == c->ocap && log_compact(c) != 0)
        return -1;
    c->pos[i] = c->hi;
    c->order[c->hi++] = i;
    return 0;
}

/* The least recently used node (count > 0): stale records are dropped. */
static uint32_t lru_tail(sb_cache *c)
{
    for (;;) {
        uint32_t i = c->order[c->lo];
        if (c->pos[i] == c->lo)
            return i;
        c->lo++;
    }
}

/* ----------------------------------------------------------- hash map */

/* The node holding key (its slot in *slot), or -1 with *slot the empty
 * slot where it would go. */
static inline __attribute__((always_inline)) int64_t find(sb_cache *c, uint64_t h, const char *k,
                                                          size_t kl, size_t *slot)
{
    uint32_t t = (uint32_t)h;
    uint8_t g = TAG(h);
    size_t mask = c->cap - 1, i = t & mask;
    __builtin_prefetch(&c->slots[i]);   /* a hit needs it: fetch it with the tag */
    for (;;) {
        uint8_t tg = c->tags[i];
        if (tg == g) {
            sb_cslot s = c->slots[i];
            if (s.hash == t) {
                sb_cnode *n = &c->nodes[s.ref - 1];
                if (n->klen == kl && same_key(node_data(n), k, kl)) {
                    *slot = i;
                    return s.ref - 1;
                }
            }
        } else if (tg == 0) {
            *slot = i;
            return -1;
        }
        i = (i + 1) & mask;
        c->probes++;
    }
}

/* The slot that points at node i. */
static size_t slot_of(sb_cache *c, uint32_t i)
{
    size_t mask = c->cap - 1, j = c->nodes[i].hash & mask;
    while (c->slots[j].ref != i + 1)
        j = (j + 1) & mask;
    return j;
}

/* The empty slot where a key with hash h (not in the table) goes. */
static size_t free_slot(sb_cache *c, uint64_t h)
{
    size_t mask = c->cap - 1, j = (uint32_t)h & mask;
    while (c->tags[j] != 0)
        j = (j + 1) & mask;
    return j;
}

/* Empty slot i, shifting back the entries that probed past it. */
static void slot_clear(sb_cache *c, size_t i)
{
    size_t mask = c->cap - 1, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (c->tags[j] == 0)
            break;
        size_t home = c->slots[j].hash & mask;
        /* Can the entry at j move to i? Only if its home is not in (i, j]. */
        int between = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            c->slots[i] = c->slots[j];
            c->tags[i] = c->tags[j];
            i = j;
        }
    }
    c->slots[i].ref = 0;
    c->tags[i] = 0;
}

static void grow(sb_cache *c)
{
    if (c->cap >= ((size_t)1 << 31))
        return;                     /* homes come from 32 bits of hash */
    size_t n = c->cap * 2;
    sb_cslot *ns = alloc_big(n * sizeof *ns, 1);
    uint8_t *nt = alloc_big(n, 1);
    if (ns == NULL || nt == NULL) {
        free(ns);
        free(nt);
        return;                     /* stay fuller: slower, still correct */
    }
    for (size_t i = 0; i < c->cap; i++) {
        if (c->tags[i] == 0)
            continue;
        size_t j = c->slots[i].hash & (n - 1);
        while (nt[j])
            j = (j + 1) & (n - 1);
        ns[j] = c->slots[i];
        nt[j] = c->tags[i];
    }
    free(c->slots);
    free(c->tags);
    c->slots = ns;
    c->tags = nt;
    c->cap = n;
}

static size_t entry_bytes(const sb_cnode *n)
{
    return ENTRY_OVERHEAD + (size_t)n->klen + n->vlen;
}

/* Remove node i, whose slot is s, and free it. */
static void drop_at(sb_cache *c, uint32_t i, size_t s)
{
    slot_clear(c, s);
    c->count--;
    c->bytes -= entry_bytes(&c->nodes[i]);
    node_free(c, i);
}

static void drop(sb_cache *c, uint32_t i)
{
    drop_at(c, i, slot_of(c, i));
}

static int expired(const sb_cnode *n, double now)
{
    return n->expires != 0 && n->expires <= now;
}

/* Evict from the LRU tail until the limits hold. Unless the caller has just
 * evicted an entry (evicted != 0), first drop up to two expired entries from
 * the tail, so that a cache with no max_entries that is only written stays
 * bounded. */
static void enforce(sb_cache *c, double now, int evicted)
{
    for (int k = 0; k < 2 && !evicted && c->count; k++) {
        uint32_t i = lru_tail(c);
        if (!expired(&c->nodes[i], now))
            break;
        drop(c, i);
        c->expirations++;
    }
    while (c->count && ((c->max_entries && c->count > c->max_entries) ||
                        (c->max_bytes && c->bytes > c->max_bytes))) {
        drop(c, lru_tail(c));
        c->evictions++;
    }
    if (c->count)                   /* the next set looks at it */
        __builtin_prefetch(&c->nodes[lru_tail(c)]);
}

/* ------------------------------------------------------- the FFI door */

/* Not static: cache/init.lua calls these through ffi.cast'ed pointers. */
int sb_cache_get(sb_cache *c, const char *k, size_t kl);
int sb_cache_set(sb_cache *c, const char *k, size_t kl, int type, double num, const char *v,
                 size_t vl, double ttl);
int sb_cache_delete(sb_cache *c, const char *k, size_t kl);

/* Look key up. Returns its type (SB_CV_NONE on a miss or expiry); numbers
 * in c->out.num, bytes in c->out.ptr/len (valid until the next call that
 * changes the cache). */
int sb_cache_get(sb_cache *c, const char *k, size_t kl)
{
    sb_cache_val *out = &c->out;
    /* Read the clock first: it does not depend on the lookup, so it runs
     * while the slot and the node are fetched, off the critical path. A
     * cache whose entries never expire does not need it. */
    double now = c->timed ? now_coarse() : 0;
    size_t s;
    int64_t f = find(c, hash_key(c->seed, k, kl), k, kl, &s);
    if (f < 0) {
        c->misses++;
        return SB_CV_NONE;
    }
    uint32_t i = (uint32_t)f;
    sb_cnode *n = &c->nodes[i];
    if (expired(n, now)) {
        drop_at(c, i, s);
        c->expirations++;
        c->misses++;
        return SB_CV_NONE;
    }
    /* Record the use without reading pos[i] first: a store does not wait
     * for its line, and a repeated hit only adds a stale record. */
    (void)lru_touch(c, i);          /* out of memory for the log: the use goes unrecorded */
    c->hits++;
    out->num = n->num;
    out->ptr = node_data(n) + n->klen;
    out->len = n->vlen;
    return n->type;
}

/* Store a value: type SB_CV_NUMBER uses num, the others bytes v/vl. ttl < 0
 * means the cache's default, 0 none. Returns 1, 0 when the entry alone is
 * over max_bytes (not stored), -1 out of memory. */
int sb_cache_set(sb_cache *c, const char *k, size_t kl, int type, double num, const char *v,
                 size_t vl, double ttl)
{
    if (type != SB_CV_STRING && type != SB_CV_TABLE)
        vl = 0;
    if (kl > UINT32_MAX || vl > UINT32_MAX)
        return 0;                   /* over 4 GiB: never cached */
    size_t need = ENTRY_OVERHEAD + kl + vl;
    if (ttl < 0)
        ttl = c->ttl;
    if (ttl > 0)
        c->timed = 1;
    double now = c->timed ? now_coarse() : 0;   /* first: off the lookup's critical path */
    int full = c->max_entries && c->count >= c->max_entries;
    uint32_t tail = 0;
    if (full) {
        /* A new key will evict the tail (its node prefetched by the last
         * set): fetch its slot while this key is hashed and looked up. */
        tail = lru_tail(c);
        __builtin_prefetch(&c->slots[c->nodes[tail].hash & (c->cap - 1)]);
    }
    uint64_t h = hash_key(c->seed, k, kl);
    size_t s;
    int64_t f = find(c, h, k, kl, &s);
    if (c->max_bytes && need > c->max_bytes) {
        if (f >= 0)
            drop_at(c, (uint32_t)f, s);     /* the old value must not outlive a refused set */
        return 0;
    }
    uint32_t i;
    sb_cnode *n;
    if (f >= 0) {                   /* replace: the node keeps its key */
        i = (uint32_t)f;
        n = &c->nodes[i];
        size_t old = entry_bytes(n);
        if (node_store(n, 1, k, kl, v, vl) != 0)
            return -1;              /* unchanged */
        c->bytes -= old;
    } else {
        if (full) {
            /* Evict the tail first: its node (whose line the last set
             * prefetched) heads the free list, and node_alloc hands it
             * straight back for this key. */
            if (expired(&c->nodes[tail], now))
                c->expirations++;
            else
                c->evictions++;
            drop(c, tail);
            s = free_slot(c, h);    /* the drop may have moved slots */
        }
        int64_t a = node_alloc(c);
        if (a < 0)
            return -1;
        i = (uint32_t)a;
        n = &c->nodes[i];
        n->ext = 0;
        c->pos[i] = NOPOS;
        if (node_store(n, 0, k, kl, v, vl) != 0) {
            node_free(c, i);
            return -1;
        }
        n->hash = (uint32_t)h;
        c->slots[s].hash = (uint32_t)h;
        c->slots[s].ref = i + 1;
        c->tags[s] = TAG(h);
        c->count++;
    }
    n->type = (uint8_t)type;
    n->num = num;
    n->expires = ttl > 0 ? now + ttl : 0;
    c->bytes += need;
    c->sets++;
    if (lru_touch(c, i) != 0) {     /* no room to record the use: undo */
        drop_at(c, i, s);
        return -1;
    }
    enforce(c, now, f < 0 && full);
    if (c->count * MAX_LOAD > c->cap)
        grow(c);
    return 1;
}

/* Remove key. Returns 1 if it was there (expired or not). */
int sb_cache_delete(sb_cache *c, const char *k, size_t kl)
{
    size_t s;
    int64_t f = find(c, hash_key(c->seed, k, kl), k, kl, &s);
    if (f < 0)
        return 0;
    drop_at(c, (uint32_t)f, s);
    return 1;
}

/* --------------------------------------------------------- the Lua door */

/* In cache_ser.c: core.encode, core.decode, core.digest. */
int sb_cache_encode(lua_State *L);
int sb_cache_decode(lua_State *L);
int sb_cache_digest(lua_State *L);

typedef struct {
    sb_cache *c;
} cache_ud;

static void cache_free(sb_cache *c)
{
    if (c == NULL)
        return;
    for (uint32_t i = 0; i < c->nused; i++)
        if (c->nodes[i].type != SB_CV_NONE && c->nodes[i].ext)
            free(c->nodes[i].d.heap);
    free(c->nodes);
    free(c->pos);
    free(c->order);
    free(c->slots);
    free(c->tags);
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
    if (c == NULL || (c->slots = calloc(64, sizeof *c->slots)) == NULL ||
        (c->tags = calloc(64, 1)) == NULL) {
        if (c)
            free(c->slots);
        free(c);
        return luaL_error(L, "cache: out of memory");
    }
    c->cap = 64;
    c->max_entries = (size_t)max_entries;
    c->max_bytes = (size_t)max_bytes;
    c->ttl = ttl;
    evutil_secure_rng_get_bytes(c->seed, sizeof c->seed);
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

static void set_num(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

static int l_stats(lua_State *L)
{
    sb_cache *c = check_cache(L);
    lua_createtable(L, 0, 10);
    set_num(L, "hits", (double)c->hits);
    set_num(L, "misses", (double)c->misses);
    set_num(L, "sets", (double)c->sets);
    set_num(L, "evictions", (double)c->evictions);
    set_num(L, "expirations", (double)c->expirations);
    set_num(L, "entries", (double)c->count);
    set_num(L, "bytes", (double)c->bytes);
    set_num(L, "max_entries", (double)c->max_entries);
    set_num(L, "max_bytes", (double)c->max_bytes);
    set_num(L, "ttl", c->ttl);
    set_num(L, "probes", (double)c->probes);
    set_num(L, "slots", (double)c->cap);
    return 1;
}

static int l_clear(lua_State *L)
{
    sb_cache *c = check_cache(L);
    for (uint32_t i = 0; i < c->nused; i++)
        if (c->nodes[i].type != SB_CV_NONE && c->nodes[i].ext)
            free(c->nodes[i].d.heap);
    memset(c->slots, 0, c->cap * sizeof *c->slots);
    memset(c->tags, 0, c->cap);
    c->count = c->bytes = 0;
    c->timed = 0;
    c->nused = c->free_head = 0;
    c->lo = c->hi = 0;
    return 0;
}

/* Drop every expired entry now; returns how many. */
static int l_purge(lua_State *L)
{
    sb_cache *c = check_cache(L);
    double now = now_coarse(), n = 0;
    for (uint32_t i = 0; i < c->nused; i++) {
        if (c->nodes[i].type != SB_CV_NONE && expired(&c->nodes[i], now)) {
            drop(c, i);
            c->expirations++;
            n++;
        }
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
    for (uint32_t p = c->hi; p-- > c->lo;) {
        sb_cnode *n = &c->nodes[c->order[p]];
        if (c->pos[c->order[p]] != p || expired(n, now))
            continue;
        lua_pushlstring(L, node_data(n), n->klen);
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
    size_t s;
    int64_t f = find(c, hash_key(c->seed, k, kl), k, kl, &s);
    double now = now_coarse();
    if (f < 0 || expired(&c->nodes[f], now))
        return 0;
    double exp = c->nodes[f].expires;
    lua_pushnumber(L, exp == 0 ? HUGE_VAL : exp - now);
    return 1;
}

static const luaL_Reg cache_methods[] = {
    {"close", l_close},
    {"stats", l_stats},
    {"clear", l_clear},
    {"purge", l_purge},
    {"keys", l_keys},
    {"ttl", l_ttl},
    {"__gc", l_close},
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
    lua_pushcfunction(L, sb_cache_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, sb_cache_decode);
    lua_setfield(L, -2, "decode");
    lua_pushcfunction(L, sb_cache_digest);
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
