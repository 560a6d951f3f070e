/*
 * sb_hash.h -- one fast non-cryptographic hash for the runtime's tables
 * (the L1 cache, cache keys, SQLite's statement cache): 8 bytes a step,
 * then splitmix64's finaliser. Deterministic across runs and machines
 * (little-endian). Not for secrets.
 */
#ifndef SB_HASH_H
#define SB_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* splitmix64's finaliser: every input bit reaches every output bit. */
static inline uint64_t sb_hash_final(uint64_t h)
{
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBULL;
    return h ^ (h >> 31);
}

static inline uint64_t sb_hash64(const void *p, size_t n, uint64_t seed)
{
    const unsigned char *k = p;
    uint64_t h = seed ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, k, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
        k += 8;
        n -= 8;
    }
    uint64_t w = 0;                 /* the tail, by shifts: no store-forwarding stall */
    for (size_t i = 0; i < n; i++)
        w |= (uint64_t)k[i] << (8 * i);
    return sb_hash_final(h ^ w);
}

#define SB_HASH_SEED 0x9E3779B97F4A7C15ULL

#endif
