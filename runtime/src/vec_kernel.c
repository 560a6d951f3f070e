/*
 * vec_kernel.c -- scoring kernels, quantization and top-k selection for
 * `sibyl.vec` (see sb_vec.h). No Lua here: these run on worker threads.
 *
 * A brute-force search is a stream over N x d floats, so the single-query
 * kernel is written for memory bandwidth: one row at a time (one sequential
 * stream, which the hardware prefetcher follows best; interleaving 4 rows
 * measured at half the bandwidth on the 2-core EPYC we benchmark on),
 * several independent accumulators, scalar tail. Versions for AVX-512 and
 * AVX2+FMA are compiled with target attributes and picked at start-up from
 * the CPU, so the binary stays portable (no -march=native).
 *
 * Every row is reduced in the same order wherever it sits in a block, so two
 * equal rows always get bit-equal scores and ties fall to the lower id.
 *
 * Caveat: x86-64 SIMD only; other targets use the plain C loops, which the
 * compiler vectorises as it can.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_vec.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SB_VEC_X86 1
#endif

/* ------------------------------------------------------------ plain C */

static void dots_generic(const float *X, size_t n, size_t d, const float *q, float *out)
{
    for (size_t i = 0; i < n; i++) {
        const float *x = X + i * d;
        float s[8] = {0};
        size_t j = 0;
        for (; j + 8 <= d; j += 8)
            for (int l = 0; l < 8; l++)
                s[l] += x[j + l] * q[j + l];
        float t = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
        for (; j < d; j++)
            t += x[j] * q[j];
        out[i] = t;
    }
}

static void idots_generic(const int8_t *codes, size_t n, size_t d, const int16_t *q, int32_t *out)
{
    for (size_t i = 0; i < n; i++) {
        const int8_t *x = codes + i * d;
        int32_t s = 0;
        for (size_t j = 0; j < d; j++)
            s += (int32_t)x[j] * q[j];
        out[i] = s;
    }
}

/* ------------------------------------------------------------ AVX-512 */

#ifdef SB_VEC_X86
__attribute__((target("avx512f")))
static void dots_avx512(const float *X, size_t n, size_t d, const float *q, float *out)
{
    size_t d64 = d & ~(size_t)63, d16 = d & ~(size_t)15;
    for (size_t i = 0; i < n; i++) {
        const float *x = X + i * d;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        size_t j = 0;
        for (; j < d64; j += 64) {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(q + j), s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + j + 16), _mm512_loadu_ps(q + j + 16), s1);
            s2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + j + 32), _mm512_loadu_ps(q + j + 32), s2);
            s3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + j + 48), _mm512_loadu_ps(q + j + 48), s3);
        }
        for (; j < d16; j += 16)
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(q + j), s0);
        float t = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
        for (; j < d; j++)
            t += x[j] * q[j];
        out[i] = t;
    }
}

__attribute__((target("avx512f,avx512bw")))
static void idots_avx512(const int8_t *codes, size_t n, size_t d, const int16_t *q, int32_t *out)
{
    size_t d32 = d & ~(size_t)31;
    for (size_t i = 0; i < n; i++) {
        const int8_t *x = codes + i * d;
        __m512i s0 = _mm512_setzero_si512(), s1 = s0;
        size_t j = 0;
        for (; j + 64 <= d32; j += 64) {
            __m512i a = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(x + j)));
            __m512i b = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(x + j + 32)));
            s0 = _mm512_add_epi32(s0, _mm512_madd_epi16(a, _mm512_loadu_si512(q + j)));
            s1 = _mm512_add_epi32(s1, _mm512_madd_epi16(b, _mm512_loadu_si512(q + j + 32)));
        }
        for (; j < d32; j += 32) {
            __m512i a = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(x + j)));
            s0 = _mm512_add_epi32(s0, _mm512_madd_epi16(a, _mm512_loadu_si512(q + j)));
        }
        int32_t t = _mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1));
        for (; j < d; j++)
            t += (int32_t)x[j] * q[j];
        out[i] = t;
    }
}

/* -------------------------------------------------------------- AVX2 */

__attribute__((target("avx2,fma")))
static void dots_avx2(const float *X, size_t n, size_t d, const float *q, float *out)
{
    size_t d32 = d & ~(size_t)31, d8 = d & ~(size_t)7;
    for (size_t i = 0; i < n; i++) {
        const float *x = X + i * d;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        size_t j = 0;
        for (; j < d32; j += 32) {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(q + j), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 8), _mm256_loadu_ps(q + j + 8), s1);
            s2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 16), _mm256_loadu_ps(q + j + 16), s2);
            s3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 24), _mm256_loadu_ps(q + j + 24), s3);
        }
        for (; j < d8; j += 8)
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(q + j), s0);
        __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        float t = _mm_cvtss_f32(h);
        for (; j < d; j++)
            t += x[j] * q[j];
        out[i] = t;
    }
}

__attribute__((target("avx2")))
static void idots_avx2(const int8_t *codes, size_t n, size_t d, const int16_t *q, int32_t *out)
{
    size_t d16 = d & ~(size_t)15;
    for (size_t i = 0; i < n; i++) {
        const int8_t *x = codes + i * d;
        __m256i s = _mm256_setzero_si256();
        size_t j = 0;
        for (; j < d16; j += 16) {
            __m256i a = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + j)));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(a, _mm256_loadu_si256((const __m256i *)(q + j))));
        }
        __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
        h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
        int32_t t = _mm_cvtsi128_si32(h);
        for (; j < d; j++)
            t += (int32_t)x[j] * q[j];
        out[i] = t;
    }
}
#endif /* SB_VEC_X86 */

/* ------------------------------------------------------------ dispatch */

sb_vec_dots_fn sb_vec_dots = dots_generic;
sb_vec_idots_fn sb_vec_idots = idots_generic;
static const char *isa = "generic";

/*
 * SIBYL_VEC_ISA=generic|avx2|avx512 caps the kernels (tests compare them;
 * also a way out should a kernel misbehave on some CPU).
 */
void sb_vec_init(void)
{
#ifdef SB_VEC_X86
    static int done;
    if (done)
        return;
    done = 1;
    const char *cap = getenv("SIBYL_VEC_ISA");
    int max = 2;
    if (cap && strcmp(cap, "generic") == 0)
        max = 0;
    else if (cap && strcmp(cap, "avx2") == 0)
        max = 1;
    __builtin_cpu_init();
    if (max >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
        sb_vec_dots = dots_avx512;
        sb_vec_idots = idots_avx512;
        isa = "avx512";
    } else if (max >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        sb_vec_dots = dots_avx2;
        sb_vec_idots = idots_avx2;
        isa = "avx2";
    }
#endif
}

const char *sb_vec_isa(void) { return isa; }

float sb_vec_dot1(const float *a, const float *b, size_t d)
{
    float r;
    sb_vec_dots(a, 1, d, b, &r);
    return r;
}

float sb_vec_norm2(const float *a, size_t d)
{
    return sb_vec_dot1(a, a, d);
}

/* ------------------------------------------------------- quantization */

static float max_abs(const float *x, size_t d)
{
    float m = 0;
    for (size_t j = 0; j < d; j++) {
        float a = fabsf(x[j]);
        if (a > m)
            m = a;
    }
    return m;
}

static int clamp127(float v)
{
    long r = lrintf(v);
    return r > 127 ? 127 : r < -127 ? -127 : (int)r;
}

float sb_vec_quantize(const float *x, size_t d, int8_t *codes)
{
    float m = max_abs(x, d);
    if (m == 0) {
        memset(codes, 0, d);
        return 0;
    }
    float inv = 127.0f / m;
    for (size_t j = 0; j < d; j++)
        codes[j] = (int8_t)clamp127(x[j] * inv);
    return m / 127.0f;
}

float sb_vec_quantize16(const float *x, size_t d, int16_t *codes)
{
    float m = max_abs(x, d);
    if (m == 0) {
        memset(codes, 0, d * sizeof *codes);
        return 0;
    }
    float inv = 127.0f / m;
    for (size_t j = 0; j < d; j++)
        codes[j] = (int16_t)clamp127(x[j] * inv);
    return m / 127.0f;
}

/* ---------------------------------------------------------- selection */

/* Heap order: the root is the worst kept hit; a parent is never better
 * than its children. */

void sb_vheap_push(sb_vheap *hp, float key, uint32_t id)
{
    sb_vhit x = {key, id};
    sb_vhit *h = hp->h;
    if (hp->n < hp->cap) {
        size_t i = hp->n++;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!sb_vhit_better(h[p], x))
                break;
            h[i] = h[p];
            i = p;
        }
        h[i] = x;
        return;
    }
    if (hp->cap == 0 || !sb_vhit_better(x, h[0]))
        return;
    size_t i = 0, n = hp->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && sb_vhit_better(h[c], h[c + 1]))
            c++;                        /* the worse child */
        if (!sb_vhit_better(x, h[c]))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

float sb_vheap_floor(const sb_vheap *hp)
{
    return hp->n < hp->cap ? -INFINITY : hp->h[0].key;
}

static int cmp_hit(const void *a, const void *b)
{
    sb_vhit x = *(const sb_vhit *)a, y = *(const sb_vhit *)b;
    return sb_vhit_better(x, y) ? -1 : sb_vhit_better(y, x) ? 1 : 0;
}

void sb_vhits_sort(sb_vhit *h, size_t n)
{
    if (n > 1)
        qsort(h, n, sizeof *h, cmp_hit);
}
