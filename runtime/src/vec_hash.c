/*
 * vec_hash.c -- the hashing embedder behind vec.hash_embed: the offline
 * default embedding of Sibyl (no model, no network, deterministic).
 *
 * Text -> words: runs of ASCII letters and digits and of bytes >= 0x80 (so
 * UTF-8 letters of any script stay inside words; punctuation, spaces and
 * ASCII symbols split). ASCII is lower-cased; other scripts are kept as
 * they are (no Unicode case folding).
 *
 * Features, each hashed (64-bit FNV-1a, then a splitmix finaliser) to one
 * of `dims` buckets with a sign taken from another bit of the same hash
 * (signed feature hashing: collisions cancel out on average instead of
 * piling up):
 *   - word n-grams of the orders asked for (default 1 and 2), words joined
 *     by one space;
 *   - character n-grams (default 3, 4, 5) of each word wrapped in '<' '>',
 *     counted in UTF-8 characters, over the word's first max_word bytes.
 * The vector is then L2-normalised, so a dot product is a cosine.
 */
#include <math.h>
#include <string.h>

#include "sb_vec.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define MAX_WORD_CAP 1024
#define MAX_ORDER 8

static inline int is_word(unsigned char c)
{
    return c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static inline uint64_t fnv_byte(uint64_t h, unsigned char c)
{
    return (h ^ c) * FNV_PRIME;
}

static inline uint64_t finish(uint64_t h)
{
    h ^= h >> 30;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 27;
    h *= 0x94D049BB133111EBULL;
    return h ^ (h >> 31);
}

static inline uint64_t family_seed(uint64_t seed, unsigned family)
{
    return finish(seed ^ (FNV_OFFSET + 0x9E3779B97F4A7C15ULL * family));
}

static inline void add_feature(float *out, uint32_t dims, uint64_t h, float w)
{
    h = finish(h);
    uint32_t idx = (uint32_t)(((h & 0xffffffffULL) * dims) >> 32);
    out[idx] += (h >> 63) ? -w : w;
}

typedef struct {
    const char *p;
    size_t n;
} span;

size_t sb_vec_hash_embed(const char *text, size_t len, const sb_hash_opts *o, float *out)
{
    uint32_t dims = o->dims;
    size_t max_word = o->max_word < MAX_WORD_CAP ? o->max_word : MAX_WORD_CAP;
    unsigned char buf[MAX_WORD_CAP + 2];
    uint16_t starts[MAX_WORD_CAP + 3];
    span recent[MAX_ORDER];             /* ring of the last words, for word n-grams */
    size_t nwords = 0, nfeat = 0;
    uint64_t word_seed[MAX_ORDER + 1], char_seed[17];

    memset(out, 0, dims * sizeof *out);
    for (unsigned n = 1; n <= MAX_ORDER; n++)
        word_seed[n] = family_seed(o->seed, n);
    for (unsigned n = 1; n <= 16; n++)
        char_seed[n] = family_seed(o->seed, 100 + n);

    size_t i = 0;
    while (i < len) {
        while (i < len && !is_word((unsigned char)text[i]))
            i++;
        if (i >= len)
            break;
        size_t s = i;
        while (i < len && is_word((unsigned char)text[i]))
            i++;
        span w = {text + s, i - s};
        recent[nwords % MAX_ORDER] = w;
        nwords++;

        /* Word n-grams ending at this word. */
        for (unsigned n = 1; n <= MAX_ORDER; n++) {
            if (!(o->word_orders & (1u << n)) || nwords < n)
                continue;
            uint64_t h = word_seed[n];
            for (unsigned k = n; k >= 1; k--) {
                span x = recent[(nwords - k) % MAX_ORDER];
                for (size_t b = 0; b < x.n; b++)
                    h = fnv_byte(h, lower((unsigned char)x.p[b]));
                if (k > 1)
                    h = fnv_byte(h, ' ');
            }
            add_feature(out, dims, h, o->word_weight);
            nfeat++;
        }

        /* Character n-grams of "<word>", in UTF-8 characters. */
        if (o->char_orders == 0)
            continue;
        size_t wl = w.n;
        if (wl > max_word) {
            wl = max_word;
            while (wl > 0 && ((unsigned char)w.p[wl] & 0xC0) == 0x80)
                wl--;               /* do not cut a character in two */
        }
        size_t m = 0, bl = 0;
        buf[bl] = '<';
        starts[m++] = (uint16_t)bl++;
        for (size_t b = 0; b < wl; b++) {
            unsigned char c = lower((unsigned char)w.p[b]);
            if ((c & 0xC0) != 0x80)
                starts[m++] = (uint16_t)bl;
            buf[bl++] = c;
        }
        starts[m++] = (uint16_t)bl;
        buf[bl++] = '>';
        starts[m] = (uint16_t)bl;       /* end sentinel: m characters */
        for (unsigned n = 1; n <= 16; n++) {
            if (!(o->char_orders & (1u << n)) || m < n)
                continue;
            for (size_t c = 0; c + n <= m; c++) {
                uint64_t h = char_seed[n];
                for (size_t b = starts[c]; b < starts[c + n]; b++)
                    h = fnv_byte(h, buf[b]);
                add_feature(out, dims, h, o->char_weight);
                nfeat++;
            }
        }
    }

    double ss = 0;
    for (uint32_t d = 0; d < dims; d++)
        ss += (double)out[d] * out[d];
    if (ss > 0) {
        float inv = (float)(1.0 / sqrt(ss));
        for (uint32_t d = 0; d < dims; d++)
            out[d] *= inv;
    }
    return nfeat;
}
