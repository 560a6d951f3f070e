/*
 * sb_vec.h -- the engine behind `sibyl.vec`, free of Lua: SIMD scoring
 * kernels (vec_kernel.c), top-k selection, int8 quantization and the
 * hashing embedder (vec_hash.c). vec.c binds them to Lua.
 *
 * Everything here may run on a worker thread: no Lua, no globals written
 * after sb_vec_init().
 */
#ifndef SB_VEC_H
#define SB_VEC_H

#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------- kernels */

/*
 * out[i] = dot(X[i*d .. i*d+d), q) for i < n. Every row is reduced in the
 * same order whatever its position, so equal rows get bit-equal scores
 * (ties are then broken by id, never by rounding).
 */
typedef void (*sb_vec_dots_fn)(const float *X, size_t n, size_t d, const float *q, float *out);

/* out[i] = sum_j codes[i*d+j] * q[j] (exact integer arithmetic). */
typedef void (*sb_vec_idots_fn)(const int8_t *codes, size_t n, size_t d, const int16_t *q, int32_t *out);

/* Chosen once by sb_vec_init() from the CPU: AVX-512, AVX2+FMA or plain C. */
extern sb_vec_dots_fn sb_vec_dots;
extern sb_vec_idots_fn sb_vec_idots;

/* Pick the kernels (idempotent; loop thread, before any worker uses them). */
void sb_vec_init(void);
/* "avx512", "avx2" or "generic". */
const char *sb_vec_isa(void);

/* One dot product with the row kernel: bit-equal to a search's score. */
float sb_vec_dot1(const float *a, const float *b, size_t d);
/* Squared L2 norm, same kernel. */
float sb_vec_norm2(const float *a, size_t d);

/*
 * int8 codes of x with one scale per row: codes[j] = round(x[j] / scale),
 * scale = max|x| / 127 (0 for a zero row). Returns the scale.
 */
float sb_vec_quantize(const float *x, size_t d, int8_t *codes);
/* The same for a query, widened to int16 for the madd kernels. */
float sb_vec_quantize16(const float *x, size_t d, int16_t *codes);

/* ----------------------------------------------------------- selection */

/* A candidate: higher key is better; on equal keys the lower id wins. */
typedef struct {
    float key;
    uint32_t id;                /* 0-based row */
} sb_vhit;

static inline int sb_vhit_better(sb_vhit a, sb_vhit b)
{
    return a.key > b.key || (a.key == b.key && a.id < b.id);
}

/*
 * A bounded heap keeping the `cap` best hits seen: the root is the worst
 * kept one, so most candidates are rejected by one compare against
 * sb_vheap_floor().
 */
typedef struct {
    sb_vhit *h;
    size_t n, cap;
} sb_vheap;

void sb_vheap_push(sb_vheap *hp, float key, uint32_t id);

/* The key a new candidate must beat (strictly, when its id is higher than
 * every id kept), or -inf while the heap is not full. */
float sb_vheap_floor(const sb_vheap *hp);

/* Sort hits best first (qsort; for the few hundred of a top-k). */
void sb_vhits_sort(sb_vhit *h, size_t n);

/* ------------------------------------------------------ hashing embedder */

typedef struct {
    uint32_t dims;              /* output size, >= 1 */
    uint32_t word_orders;       /* bit n set: word n-grams of order n (1..8) */
    uint32_t char_orders;       /* bit n set: character n-grams of order n (1..16) */
    float word_weight;          /* weight of each word n-gram occurrence */
    float char_weight;          /* weight of each character n-gram occurrence */
    uint32_t max_word;          /* character n-grams look at a word's first max_word bytes */
    uint64_t seed;
} sb_hash_opts;

/*
 * Embed text into out[0 .. dims): signed feature hashing of lower-cased
 * word n-grams and of character n-grams inside words (with '<' '>' boundary
 * markers), then L2 normalisation. Deterministic across runs and machines.
 * Returns the number of features hashed (0: out is all zeros).
 */
size_t sb_vec_hash_embed(const char *text, size_t len, const sb_hash_opts *o, float *out);

#endif /* SB_VEC_H */
