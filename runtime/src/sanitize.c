/*
 * sanitize.c -- the scanning engine behind `sibyl.sanitize`
 * (stdlib/sibyl/sanitize.lua): a multi-pattern phrase scanner over
 * normalized text, and detectors for secrets and PII that need structure.
 *
 *   core.compile(phrases, categories [, opts]) -> scanner userdata
 *       phrases[i] belongs to categories[i]; opts.word_boundary (default
 *       true), opts.max_pattern (default 256 normalized bytes).
 *   scanner:scan(text [, max_matches]) -> { {category=, pattern=, start=, stop=}, ... }, truncated
 *   scanner:close(), scanner:count()
 *   core.detect(text, secrets, pii [, max_matches]) -> same list shape, truncated
 *   core.normalize(text) -> normalized text (what the scanner sees; for tests and docs)
 *
 * Offsets are 1-based, inclusive, and always in the ORIGINAL text, so
 * text:sub(start, stop) is the matched source.
 *
 * Normalization (applied identically to phrases and text, streaming, with no
 * copy of the text): zero-width characters (U+200B..U+200D, U+2060, U+FEFF)
 * and soft hyphens (U+00AD) are dropped; C0 controls other than whitespace,
 * DEL and C1 controls are dropped; every run of whitespace (ASCII and the
 * Unicode spaces listed in fold_cp) becomes one space; full-width ASCII
 * (U+FF01..U+FF5E) folds to ASCII; a small table of Cyrillic, Greek and
 * Latin look-alikes folds to the ASCII letter they imitate; ASCII is
 * lower-cased. Other non-ASCII characters pass through unchanged (no Unicode
 * case folding); invalid UTF-8 bytes pass through as single bytes.
 *
 * The automaton: Aho-Corasick over the normalized bytes, compiled into a
 * dense DFA over byte classes (the bytes that occur in some phrase, plus one
 * class for every other byte), so the hot loop is one table load per byte.
 * Original offsets are kept in a ring as long as the longest phrase.
 *
 * Word boundaries: when on, a phrase that starts (ends) with a word byte
 * (ASCII letter, digit, '_' or any byte >= 0x80) only matches when the
 * normalized byte before (after) it is not a word byte: "act as" does not
 * fire inside "exact assignment".
 *
 * Caveats: one thread per scanner; matches may overlap (every phrase that
 * ends at a position is reported).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sb.h"

#define SKIP (-1)
#define WS (-2)

static char scanner_mt_key;

typedef struct {
    int32_t *delta;         /* nstates * ncls */
    uint8_t *outflag;       /* state has an output (own or through dict links) */
    int32_t *first_pat;     /* state -> first phrase ending exactly here, -1 */
    int32_t *dict;          /* state -> nearest suffix state with own output, -1 */
    int32_t *pat_next;      /* phrase -> next phrase with the same normalized text */
    uint32_t *plen;         /* normalized length */
    uint8_t *pflags;        /* 1: starts with a word byte, 2: ends with one */
    char **pname, **pcat;   /* original phrase, category */
    size_t npat, nstates, ncls;
    uint8_t cls[256];
    size_t ringmask;
    int word_boundary;
} sb_scanner;

typedef struct {
    sb_scanner *s;
} scanner_ud;

typedef struct {
    int32_t pid;            /* phrase id, or detector id for core.detect */
    size_t start, stop;     /* 0-based, stop exclusive */
} match;

typedef struct {
    match *v;
    size_t n, cap, max;
    int truncated, oom;
} matchlist;

static int add_match(matchlist *m, int32_t pid, size_t start, size_t stop)
{
    if (m->n >= m->max) {
        m->truncated = 1;
        return 0;
    }
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 16;
        match *nv = realloc(m->v, nc * sizeof *nv);
        if (nv == NULL) {
            m->oom = 1;
            return 0;
        }
        m->v = nv;
        m->cap = nc;
    }
    m->v[m->n].pid = pid;
    m->v[m->n].start = start;
    m->v[m->n].stop = stop;
    m->n++;
    return 1;
}

/* ------------------------------------------------------- normalization */

static int16_t ascii_norm[256];
static uint8_t word_byte[256];

static void fill_tables(void)
{
    for (int b = 0; b < 256; b++) {
        int v = b;
        if (b >= 'A' && b <= 'Z')
            v = b + 32;
        else if (b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f')
            v = WS;
        else if (b < 0x20 || b == 0x7f)
            v = SKIP;
        ascii_norm[b] = (int16_t)v;
        word_byte[b] = (uint8_t)((b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') ||
                                 (b >= 'A' && b <= 'Z') || b == '_' || b >= 0x80);
    }
}

/* The tables are shared by every runtime in the process (any thread). */
static void init_tables(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, fill_tables);
}

/* Look-alikes: code point -> ASCII letter. Sorted by code point. */
static const struct { uint32_t cp; char to; } lookalikes[] = {
    {0x0131, 'i'}, {0x0261, 'g'},
    {0x0391, 'a'}, {0x0392, 'b'}, {0x0395, 'e'}, {0x0396, 'z'}, {0x0397, 'h'}, {0x0399, 'i'},
    {0x039a, 'k'}, {0x039c, 'm'}, {0x039d, 'n'}, {0x039f, 'o'}, {0x03a1, 'p'}, {0x03a4, 't'},
    {0x03a5, 'y'}, {0x03a7, 'x'}, {0x03b1, 'a'}, {0x03b9, 'i'}, {0x03ba, 'k'}, {0x03bd, 'v'},
    {0x03bf, 'o'}, {0x03c1, 'p'}, {0x03c5, 'u'},
    {0x0405, 's'}, {0x0406, 'i'}, {0x0408, 'j'}, {0x0410, 'a'}, {0x0412, 'b'}, {0x0415, 'e'},
    {0x041a, 'k'}, {0x041c, 'm'}, {0x041d, 'h'}, {0x041e, 'o'}, {0x0420, 'p'}, {0x0421, 'c'},
    {0x0422, 't'}, {0x0425, 'x'}, {0x0430, 'a'}, {0x0435, 'e'}, {0x043e, 'o'}, {0x0440, 'p'},
    {0x0441, 'c'}, {0x0443, 'y'}, {0x0445, 'x'}, {0x0455, 's'}, {0x0456, 'i'}, {0x0458, 'j'},
    {0x0501, 'd'},
};

/* Fold one code point: an ASCII byte, SKIP, WS, or 0 (keep the bytes). */
static int fold_cp(uint32_t cp)
{
    if ((cp >= 0x200b && cp <= 0x200d) || cp == 0x2060 || cp == 0xfeff || cp == 0x00ad ||
        (cp >= 0x80 && cp <= 0x9f))
        return SKIP;
    if (cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 ||
        cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000)
        return WS;
    if (cp >= 0xff01 && cp <= 0xff5e)
        return ascii_norm[cp - 0xfee0];
    size_t lo = 0, hi = sizeof lookalikes / sizeof lookalikes[0];
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (lookalikes[mid].cp == cp)
            return lookalikes[mid].to;
        if (lookalikes[mid].cp < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* Decode the UTF-8 sequence at s[*i] (s[*i] >= 0x80), advance *i past it and
 * return its fold (see fold_cp). Invalid bytes advance by one and return 0. */
static int fold_utf8(const uint8_t *s, size_t n, size_t *i)
{
    size_t p = *i;
    uint8_t b = s[p];
    uint32_t cp;
    size_t len;
    if (b >= 0xc2 && b <= 0xdf) { cp = b & 0x1f; len = 2; }
    else if (b >= 0xe0 && b <= 0xef) { cp = b & 0x0f; len = 3; }
    else if (b >= 0xf0 && b <= 0xf4) { cp = b & 0x07; len = 4; }
    else { *i = p + 1; return 0; }
    if (p + len > n) { *i = p + 1; return 0; }
    for (size_t k = 1; k < len; k++) {
        if ((s[p + k] & 0xc0) != 0x80) { *i = p + 1; return 0; }
        cp = (cp << 6) | (s[p + k] & 0x3f);
    }
    *i = p + len;
    return fold_cp(cp);
}

/*
 * The normalizer as a loop body: calls EMIT(c, cs, ce) for every normalized
 * byte c, produced by the source bytes [cs, ce). Used by the scanner and by
 * normalize_into (phrases, core.normalize).
 */
#define NORMALIZE_LOOP(s, n, EMIT)                                            \
    do {                                                                      \
        size_t i_ = 0;                                                        \
        int in_ws_ = 0;                                                       \
        while (i_ < (n)) {                                                    \
            size_t cs_ = i_;                                                  \
            int o_ = ascii_norm[(s)[i_]];                                     \
            if ((s)[i_] < 0x80) {                                             \
                i_++;                                                         \
            } else {                                                          \
                o_ = fold_utf8((s), (n), &i_);                                \
                if (o_ == 0) {                                                \
                    in_ws_ = 0;                                               \
                    for (size_t k_ = cs_; k_ < i_; k_++)                      \
                        EMIT((s)[k_], cs_, i_);                               \
                    continue;                                                 \
                }                                                             \
            }                                                                 \
            if (o_ == SKIP)                                                   \
                continue;                                                     \
            if (o_ == WS) {                                                   \
                if (in_ws_)                                                   \
                    continue;                                                 \
                in_ws_ = 1;                                                   \
                o_ = ' ';                                                     \
            } else {                                                          \
                in_ws_ = 0;                                                   \
            }                                                                 \
            EMIT((uint8_t)o_, cs_, i_);                                       \
        }                                                                     \
    } while (0)

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} nbuf;

static void nbuf_put(nbuf *b, uint8_t c)
{
    if (b->n + 1 >= b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 64;
        char *np = realloc(b->p, nc);
        if (np == NULL) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    b->p[b->n++] = (char)c;
}

/* Normalize s into a fresh buffer; leading and trailing spaces trimmed. */
static int normalize_into(const uint8_t *s, size_t n, nbuf *b)
{
#define NB_EMIT(c, cs, ce) nbuf_put(b, (c))
    NORMALIZE_LOOP(s, n, NB_EMIT);
#undef NB_EMIT
    if (b->oom)
        return -1;
    size_t a = 0;
    while (a < b->n && b->p[a] == ' ')
        a++;
    while (b->n > a && b->p[b->n - 1] == ' ')
        b->n--;
    if (a)
        memmove(b->p, b->p + a, b->n - a);
    b->n -= a;
    return 0;
}

/* ------------------------------------------------------ the automaton */

static void scanner_free(sb_scanner *sc)
{
    if (sc == NULL)
        return;
    for (size_t i = 0; i < sc->npat; i++) {
        if (sc->pname)
            free(sc->pname[i]);
        if (sc->pcat)
            free(sc->pcat[i]);
    }
    free(sc->pname);
    free(sc->pcat);
    free(sc->delta);
    free(sc->outflag);
    free(sc->first_pat);
    free(sc->dict);
    free(sc->pat_next);
    free(sc->plen);
    free(sc->pflags);
    free(sc);
}

/*
 * Build the DFA from npat normalized phrases norm[i] (length nlen[i] >= 1).
 * Returns 0, or -1 on allocation failure (sc is then freed by the caller).
 */
static int build(sb_scanner *sc, char **norm, size_t *nlen)
{
    size_t total = 1, maxlen = 1;
    memset(sc->cls, 0, sizeof sc->cls);
    size_t ncls = 1;
    for (size_t i = 0; i < sc->npat; i++) {
        total += nlen[i];
        if (nlen[i] > maxlen)
            maxlen = nlen[i];
        for (size_t k = 0; k < nlen[i]; k++) {
            uint8_t c = (uint8_t)norm[i][k];
            if (sc->cls[c] == 0)
                sc->cls[c] = (uint8_t)ncls++;
        }
    }
    sc->ncls = ncls;
    size_t ring = 16;
    while (ring < maxlen + 2)
        ring *= 2;
    sc->ringmask = ring - 1;

    sc->delta = calloc(total * ncls, sizeof *sc->delta);
    sc->outflag = calloc(total, 1);
    sc->first_pat = malloc(total * sizeof *sc->first_pat);
    sc->dict = malloc(total * sizeof *sc->dict);
    sc->pat_next = malloc(sc->npat * sizeof *sc->pat_next);
    int32_t *fail = calloc(total, sizeof *fail);
    int32_t *queue = malloc(total * sizeof *queue);
    if (!sc->delta || !sc->outflag || !sc->first_pat || !sc->dict || !sc->pat_next || !fail || !queue)
        goto err;
    for (size_t i = 0; i < total; i++)
        sc->first_pat[i] = sc->dict[i] = -1;

    /* The trie: 0 in delta means "no child" (root is never a child). */
    size_t nst = 1;
    for (size_t i = 0; i < sc->npat; i++) {
        int32_t st = 0;
        for (size_t k = 0; k < nlen[i]; k++) {
            int32_t *d = &sc->delta[(size_t)st * ncls + sc->cls[(uint8_t)norm[i][k]]];
            if (*d == 0)
                *d = (int32_t)nst++;
            st = *d;
        }
        sc->pat_next[i] = sc->first_pat[st];
        sc->first_pat[st] = (int32_t)i;
    }
    sc->nstates = nst;

    /* BFS: failure links, then complete the DFA. */
    size_t qh = 0, qt = 0;
    for (size_t c = 0; c < ncls; c++) {
        int32_t ch = sc->delta[c];
        if (ch) {
            fail[ch] = 0;
            queue[qt++] = ch;
        }
    }
    while (qh < qt) {
        int32_t s = queue[qh++];
        int32_t f = fail[s];
        sc->dict[s] = sc->first_pat[f] >= 0 ? f : sc->dict[f];
        sc->outflag[s] = (uint8_t)(sc->first_pat[s] >= 0 || sc->dict[s] >= 0);
        for (size_t c = 0; c < ncls; c++) {
            int32_t *d = &sc->delta[(size_t)s * ncls + c];
            int32_t fd = sc->delta[(size_t)f * ncls + c];
            if (*d) {
                fail[*d] = fd;
                queue[qt++] = *d;
            } else {
                *d = fd;
            }
        }
    }
    free(fail);
    free(queue);
    return 0;
err:
    free(fail);
    free(queue);
    return -1;
}

typedef struct {
    int32_t pid;
    size_t start, stop, pos;    /* pos: normalized position of the last byte */
} pending;

/* Every phrase ending at normalized position pos (state st): check the word
 * boundary before it now, and the one after it when the next byte comes. */
static void report(const sb_scanner *sc, int32_t st, size_t pos, size_t ce, const size_t *rstart,
                   const uint8_t *rbyte, int wb, matchlist *m, pending **pend, size_t *npend,
                   size_t *capend)
{
    int32_t o = sc->first_pat[st] >= 0 ? st : sc->dict[st];
    for (; o >= 0; o = sc->dict[o]) {
        for (int32_t pid = sc->first_pat[o]; pid >= 0; pid = sc->pat_next[pid]) {
            size_t sp = pos - sc->plen[pid] + 1;
            if (wb && (sc->pflags[pid] & 1) && sp > 1 && word_byte[rbyte[(sp - 1) & sc->ringmask]])
                continue;
            size_t start = rstart[sp & sc->ringmask];
            if (wb && (sc->pflags[pid] & 2)) {
                if (*npend == *capend) {
                    size_t nc = *capend ? *capend * 2 : 8;
                    pending *np = realloc(*pend, nc * sizeof *np);
                    if (np == NULL) {
                        m->oom = 1;
                        return;
                    }
                    *pend = np;
                    *capend = nc;
                }
                (*pend)[*npend].pid = pid;
                (*pend)[*npend].start = start;
                (*pend)[*npend].stop = ce;
                (*pend)[*npend].pos = pos;
                (*npend)++;
            } else {
                add_match(m, pid, start, ce);
            }
        }
    }
}

/*
 * Scan s[0..n) and append matches to m. Returns 0, or -1 on allocation
 * failure (m->oom). The inner loop is the normalizer feeding the DFA.
 */
static int scan(const sb_scanner *sc, const uint8_t *s, size_t n, matchlist *m)
{
    size_t ring_n = sc->ringmask + 1;
    size_t *rstart = malloc(ring_n * sizeof *rstart);
    uint8_t *rbyte = malloc(ring_n);
    pending *pend = NULL;
    size_t npend = 0, capend = 0;
    if (!rstart || !rbyte) {
        free(rstart);
        free(rbyte);
        m->oom = 1;
        return -1;
    }
    const int32_t *delta = sc->delta;
    const uint8_t *cls = sc->cls;
    const uint8_t *outflag = sc->outflag;
    const size_t ncls = sc->ncls, mask = sc->ringmask;
    const int wb = sc->word_boundary;
    int32_t st = 0;
    size_t pos = 0;         /* normalized bytes emitted so far */

#define SC_EMIT(c, cs, ce)                                                    \
    do {                                                                      \
        uint8_t c__ = (c);                                                    \
        pos++;                                                                \
        rstart[pos & mask] = (cs);                                            \
        rbyte[pos & mask] = c__;                                              \
        if (npend) {                                                          \
            size_t keep = 0;                                                  \
            for (size_t q = 0; q < npend; q++) {                              \
                if (pend[q].pos == pos - 1) {                                 \
                    if (!word_byte[c__])                                      \
                        add_match(m, pend[q].pid, pend[q].start, pend[q].stop); \
                } else {                                                      \
                    pend[keep++] = pend[q];                                   \
                }                                                             \
            }                                                                 \
            npend = keep;                                                     \
        }                                                                     \
        st = delta[(size_t)st * ncls + cls[c__]];                             \
        if (outflag[st])                                                      \
            report(sc, st, pos, (ce), rstart, rbyte, wb, m, &pend, &npend, &capend); \
    } while (0)

    NORMALIZE_LOOP(s, n, SC_EMIT);
#undef SC_EMIT
    for (size_t q = 0; q < npend; q++)
        add_match(m, pend[q].pid, pend[q].start, pend[q].stop);
    free(pend);
    free(rstart);
    free(rbyte);
    return m->oom ? -1 : 0;
}

/* ---------------------------------------------------- secrets and PII */

enum { D_OPENAI, D_ANTHROPIC, D_GITHUB, D_SLACK, D_AWS, D_JWT, D_PRIVKEY, D_EMAIL, D_CARD, D_N };
static const char *const det_name[D_N] = {
    "openai_key", "anthropic_key", "github_token", "slack_token", "aws_access_key",
    "jwt", "private_key", "email", "card",
};
static const char *const det_cat[D_N] = {
    "secrets", "secrets", "secrets", "secrets", "secrets", "secrets", "secrets", "pii", "pii",
};

static int is_alnum(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static int is_tok(uint8_t c)        /* base64url and key bodies */
{
    return is_alnum(c) || c == '_' || c == '-';
}

static int is_upnum(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z');
}

static int has_prefix(const uint8_t *s, size_t n, size_t i, const char *p)
{
    size_t l = strlen(p);
    return i + l <= n && memcmp(s + i, p, l) == 0;
}

static size_t run_of(const uint8_t *s, size_t n, size_t i, int (*pred)(uint8_t))
{
    while (i < n && pred(s[i]))
        i++;
    return i;
}

static size_t find_str(const uint8_t *s, size_t n, size_t from, size_t to, const char *p)
{
    size_t l = strlen(p);
    if (to > n)
        to = n;
    for (size_t i = from; i + l <= to; i++)
        if (s[i] == (uint8_t)p[0] && memcmp(s + i, p, l) == 0)
            return i;
    return (size_t)-1;
}

static int has_digit(const uint8_t *s, size_t a, size_t b)
{
    for (size_t i = a; i < b; i++)
        if (is_digit(s[i]))
            return 1;
    return 0;
}

/* A key-shaped token at i: returns its end and sets *id, or 0. */
static size_t detect_secret(const uint8_t *s, size_t n, size_t i, int *id)
{
    size_t j;
    switch (s[i]) {
    case 's':
        if (has_prefix(s, n, i, "sk-ant-")) {
            j = run_of(s, n, i + 7, is_tok);
            if (j - (i + 7) >= 20) { *id = D_ANTHROPIC; return j; }
        } else if (has_prefix(s, n, i, "sk-")) {
            j = run_of(s, n, i + 3, is_tok);
            if (j - (i + 3) >= 20 && has_digit(s, i + 3, j)) { *id = D_OPENAI; return j; }
        }
        break;
    case 'g':
        if (i + 4 <= n && s[i + 1] == 'h' && strchr("pousr", s[i + 2]) && s[i + 3] == '_') {
            j = run_of(s, n, i + 4, is_alnum);
            if (j - (i + 4) >= 30) { *id = D_GITHUB; return j; }
        } else if (has_prefix(s, n, i, "github_pat_")) {
            j = run_of(s, n, i + 11, is_tok);
            if (j - (i + 11) >= 22) { *id = D_GITHUB; return j; }
        }
        break;
    case 'x':
        if (i + 5 <= n && s[i + 1] == 'o' && s[i + 2] == 'x' && strchr("baprs", s[i + 3]) &&
            s[i + 4] == '-') {
            j = run_of(s, n, i + 5, is_tok);
            if (j - (i + 5) >= 10) { *id = D_SLACK; return j; }
        }
        break;
    case 'A':
        if (has_prefix(s, n, i, "AKIA") || has_prefix(s, n, i, "ASIA")) {
            j = run_of(s, n, i + 4, is_upnum);
            if (j - (i + 4) == 16 && (j == n || !is_alnum(s[j]))) { *id = D_AWS; return j; }
        }
        break;
    case 'e':
        if (has_prefix(s, n, i, "eyJ")) {
            size_t a = run_of(s, n, i, is_tok);
            if (a - i < 10 || a >= n || s[a] != '.')
                break;
            size_t b = run_of(s, n, a + 1, is_tok);
            if (b - (a + 1) < 4 || b >= n || s[b] != '.')
                break;
            size_t c = run_of(s, n, b + 1, is_tok);
            if (c - (b + 1) < 4)
                break;
            *id = D_JWT;
            return c;
        }
        break;
    case '-':
        if (has_prefix(s, n, i, "-----BEGIN ")) {
            size_t eol = find_str(s, n, i, i + 80, "\n");
            if (eol == (size_t)-1)
                eol = i + 80 < n ? i + 80 : n;
            size_t k = find_str(s, n, i, eol, "PRIVATE KEY-----");
            if (k == (size_t)-1)
                break;
            j = k + 16;
            size_t e = find_str(s, n, j, j + 16384, "-----END ");    /* keys are < 16 KiB */
            if (e != (size_t)-1) {
                size_t t = find_str(s, n, e + 9, e + 80, "-----");
                if (t != (size_t)-1)
                    j = t + 5;
            }
            *id = D_PRIVKEY;
            return j;
        }
        break;
    }
    return 0;
}

static int is_email_local(uint8_t c)
{
    return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

static int is_domain(uint8_t c)
{
    return is_alnum(c) || c == '.' || c == '-';
}

/* An e-mail address around the '@' at i: sets [*a, *b), or returns 0. */
static int detect_email(const uint8_t *s, size_t n, size_t i, size_t *a, size_t *b)
{
    size_t k = i;
    while (k > 0 && is_email_local(s[k - 1]))
        k--;
    while (k < i && s[k] == '.')
        k++;
    if (k == i)
        return 0;
    size_t j = run_of(s, n, i + 1, is_domain);
    while (j > i + 1 && (s[j - 1] == '.' || s[j - 1] == '-'))
        j--;
    size_t dot = (size_t)-1;
    for (size_t q = i + 1; q < j; q++)
        if (s[q] == '.')
            dot = q;
    if (dot == (size_t)-1 || dot == i + 1 || j - dot - 1 < 2)
        return 0;
    for (size_t q = dot + 1; q < j; q++)
        if (!((s[q] >= 'a' && s[q] <= 'z') || (s[q] >= 'A' && s[q] <= 'Z')))
            return 0;
    *a = k;
    *b = j;
    return 1;
}

/* A run of digits with single spaces or dashes between them, starting at i.
 * Sets *end to the run's end; returns 1 when it is a 13..19 digit number
 * that passes the Luhn check and is not glued to a word. */
static int detect_card(const uint8_t *s, size_t n, size_t i, size_t *end)
{
    uint8_t d[20];
    size_t nd = 0, j = i;
    while (j < n) {
        if (is_digit(s[j])) {
            if (nd < 20)
                d[nd] = (uint8_t)(s[j] - '0');
            nd++;
            j++;
        } else if ((s[j] == ' ' || s[j] == '-') && j + 1 < n && is_digit(s[j + 1])) {
            j++;
        } else {
            break;
        }
    }
    *end = j;
    if (nd < 13 || nd > 19 || (j < n && is_alnum(s[j])))
        return 0;
    int sum = 0;
    for (size_t q = 0; q < nd; q++) {
        int v = d[nd - 1 - q];
        if (q & 1) {
            v *= 2;
            if (v > 9)
                v -= 9;
        }
        sum += v;
    }
    return sum % 10 == 0;
}

static void detect(const uint8_t *s, size_t n, int secrets, int pii, matchlist *m)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        int boundary = i == 0 || !is_tok(s[i - 1]);
        if (secrets && boundary && (c == 's' || c == 'g' || c == 'x' || c == 'A' || c == 'e' || c == '-')) {
            int id;
            size_t e = detect_secret(s, n, i, &id);
            if (e) {
                add_match(m, id, i, e);
                i = e;
                continue;
            }
        }
        if (pii && c == '@') {
            size_t a, b;
            if (detect_email(s, n, i, &a, &b)) {
                add_match(m, D_EMAIL, a, b);
                i = b;
                continue;
            }
        }
        if (pii && is_digit(c) && (i == 0 || !is_alnum(s[i - 1]))) {
            size_t e;
            if (detect_card(s, n, i, &e))
                add_match(m, D_CARD, i, e);
            i = e;
            continue;
        }
        i++;
    }
}

/* ------------------------------------------------------------ Lua API */

static void push_matches(lua_State *L, const matchlist *m, const sb_scanner *sc)
{
    lua_createtable(L, (int)m->n, 0);
    for (size_t i = 0; i < m->n; i++) {
        const match *x = &m->v[i];
        lua_createtable(L, 0, 4);
        lua_pushstring(L, sc ? sc->pcat[x->pid] : det_cat[x->pid]);
        lua_setfield(L, -2, "category");
        lua_pushstring(L, sc ? sc->pname[x->pid] : det_name[x->pid]);
        lua_setfield(L, -2, "pattern");
        lua_pushnumber(L, (double)x->start + 1);
        lua_setfield(L, -2, "start");
        lua_pushnumber(L, (double)x->stop);
        lua_setfield(L, -2, "stop");
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_pushboolean(L, m->truncated);
}

static char *dupstr(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* core.compile(phrases, categories [, opts]) -> scanner. Raises on misuse
 * (non-string phrase, a phrase that normalizes to nothing or is too long). */
static int l_compile(lua_State *L)
{
    init_tables();
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    int has_opts = lua_istable(L, 3);
    int wb = has_opts ? sb_opt_bool(L, 3, "word_boundary", 1) : 1;
    double maxpat = has_opts ? sb_opt_num(L, 3, "max_pattern", 256) : 256;
    size_t npat = lua_objlen(L, 1);
    if (lua_objlen(L, 2) != npat)
        return luaL_error(L, "sanitize: phrases and categories must have the same length");
    if (maxpat < 1 || maxpat > 65536)
        return luaL_error(L, "sanitize: max_pattern must be between 1 and 65536");
    for (size_t i = 1; i <= npat; i++) {
        lua_rawgeti(L, 1, (int)i);
        lua_rawgeti(L, 2, (int)i);
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "sanitize: phrase #%d and its category must be strings", (int)i);
        lua_pop(L, 2);
    }
    scanner_ud *u = lua_newuserdata(L, sizeof *u);
    u->s = NULL;
    sb_getmeta(L, &scanner_mt_key);
    lua_setmetatable(L, -2);
    sb_scanner *sc = calloc(1, sizeof *sc);
    if (sc == NULL)
        return luaL_error(L, "sanitize: out of memory");
    u->s = sc;                      /* from here on __gc frees what was built */
    sc->word_boundary = wb;
    size_t alloc_n = npat ? npat : 1;
    sc->pname = calloc(alloc_n, sizeof *sc->pname);
    sc->pcat = calloc(alloc_n, sizeof *sc->pcat);
    sc->plen = calloc(alloc_n, sizeof *sc->plen);
    sc->pflags = calloc(alloc_n, 1);
    char **norm = calloc(alloc_n, sizeof *norm);
    size_t *nlen = calloc(alloc_n, sizeof *nlen);
    const char *bad = NULL;
    size_t badi = 0;
    if (!sc->pname || !sc->pcat || !sc->plen || !sc->pflags || !norm || !nlen)
        goto oom;
    sc->npat = npat;
    for (size_t i = 0; i < npat; i++) {
        size_t pl, cl;
        lua_rawgeti(L, 1, (int)i + 1);
        lua_rawgeti(L, 2, (int)i + 1);
        const char *p = lua_tolstring(L, -2, &pl);
        const char *c = lua_tolstring(L, -1, &cl);
        nbuf b = {0};
        sc->pname[i] = dupstr(p, pl);
        sc->pcat[i] = dupstr(c, cl);
        if (!sc->pname[i] || !sc->pcat[i] || normalize_into((const uint8_t *)p, pl, &b) < 0) {
            free(b.p);
            lua_pop(L, 2);
            goto oom;
        }
        lua_pop(L, 2);
        norm[i] = b.p;
        nlen[i] = b.n;
        if (b.n == 0 || (double)b.n > maxpat) {
            bad = b.n == 0 ? "is empty after normalization; remove it"
                           : "is longer than max_pattern; shorten it or raise opts.max_pattern";
            badi = i;
            break;
        }
        sc->plen[i] = (uint32_t)b.n;
        sc->pflags[i] = (uint8_t)(word_byte[(uint8_t)b.p[0]] | (word_byte[(uint8_t)b.p[b.n - 1]] << 1));
    }
    if (bad == NULL && build(sc, norm, nlen) < 0)
        goto oom;
    for (size_t i = 0; i < npat; i++)
        free(norm[i]);
    free(norm);
    free(nlen);
    if (bad)
        return luaL_error(L, "sanitize: phrase #%d (\"%s\") %s", (int)badi + 1, sc->pname[badi], bad);
    return 1;
oom:
    if (norm)
        for (size_t i = 0; i < npat; i++)
            free(norm[i]);
    free(norm);
    free(nlen);
    return luaL_error(L, "sanitize: out of memory compiling %d phrases", (int)npat);
}

static sb_scanner *check_scanner(lua_State *L)
{
    scanner_ud *u = sb_checkudata(L, 1, &scanner_mt_key, "sibyl.sanitize.scanner");
    if (u->s == NULL)
        luaL_error(L, "sanitize: the scanner is closed; compile a new one");
    return u->s;
}

static size_t opt_max(lua_State *L, int idx)
{
    lua_Number v = luaL_optnumber(L, idx, 100000);
    if (v < 1)
        luaL_error(L, "sanitize: max_matches must be >= 1");
    return (size_t)v;
}

/* scanner:scan(text [, max_matches]) -> matches, truncated | nil, err */
static int l_scan(lua_State *L)
{
    sb_scanner *sc = check_scanner(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    matchlist m = {0};
    m.max = opt_max(L, 3);
    if (sc->nstates > 1)
        scan(sc, (const uint8_t *)s, n, &m);
    if (m.oom) {
        free(m.v);
        return sb_fail(L, "nomem", "sanitize: out of memory scanning %zu bytes; scan smaller pieces", n);
    }
    push_matches(L, &m, sc);
    free(m.v);
    return 2;
}

/* core.detect(text, secrets, pii [, max_matches]) -> matches, truncated | nil, err */
static int l_detect(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    int secrets = lua_toboolean(L, 2), pii = lua_toboolean(L, 3);
    matchlist m = {0};
    m.max = opt_max(L, 4);
    detect((const uint8_t *)s, n, secrets, pii, &m);
    if (m.oom) {
        free(m.v);
        return sb_fail(L, "nomem", "sanitize: out of memory scanning %zu bytes; scan smaller pieces", n);
    }
    push_matches(L, &m, NULL);
    free(m.v);
    return 2;
}

/* core.normalize(text) -> the text as the scanner sees it (untrimmed) */
static int l_normalize(lua_State *L)
{
    init_tables();
    size_t n;
    const uint8_t *s = (const uint8_t *)luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
#define LB_EMIT(c, cs, ce) luaL_addchar(&b, (char)(c))
    NORMALIZE_LOOP(s, n, LB_EMIT);
#undef LB_EMIT
    luaL_pushresult(&b);
    return 1;
}

static int l_count(lua_State *L)
{
    sb_scanner *sc = check_scanner(L);
    lua_pushnumber(L, (double)sc->npat);
    lua_pushnumber(L, (double)sc->nstates);
    return 2;
}

static int l_close(lua_State *L)
{
    scanner_ud *u = sb_checkudata(L, 1, &scanner_mt_key, "sibyl.sanitize.scanner");
    scanner_free(u->s);
    u->s = NULL;
    return 0;
}

static int l_tostring(lua_State *L)
{
    scanner_ud *u = sb_checkudata(L, 1, &scanner_mt_key, "sibyl.sanitize.scanner");
    if (u->s == NULL)
        lua_pushliteral(L, "sibyl.sanitize.scanner (closed)");
    else
        lua_pushfstring(L, "sibyl.sanitize.scanner (%d phrases)", (int)u->s->npat);
    return 1;
}

static const luaL_Reg scanner_methods[] = {
    {"scan", l_scan},
    {"count", l_count},
    {"close", l_close},
    {"__gc", l_close},
    {"__tostring", l_tostring},
    {NULL, NULL}
};

int luaopen_sibyl_sanitize_core(lua_State *L)
{
    init_tables();
    sb_newmeta(L, &scanner_mt_key, "sibyl.sanitize.scanner");
    luaL_setfuncs(L, scanner_methods, 0);
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    lua_pushcfunction(L, l_compile);
    lua_setfield(L, -2, "compile");
    lua_pushcfunction(L, l_detect);
    lua_setfield(L, -2, "detect");
    lua_pushcfunction(L, l_normalize);
    lua_setfield(L, -2, "normalize");
    return 1;
}
