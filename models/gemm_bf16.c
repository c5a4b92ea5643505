/* gemm_bf16.c: the bfloat16 matrix product (see gemm_bf16.h), with two
 * micro-kernels under one blocking: AVX-512 BF16 registers, or AMX tiles (see
 * the AMX section below).
 *
 * Blocking in the usual (Goto) GEMM order, one thread:
 *
 *   for each k block of GB_KC (ascending)
 *     for each column block of nc columns (nc as many as pack_b holds)
 *       pack op(B)[k block, column block] into panels of GB_NR columns
 *       for each row block of GB_MC rows
 *         pack op(A)[row block, k block] into panels of GB_MR rows
 *         for each B panel, for each A panel: the micro-kernel
 *
 * so op(B) is packed once, op(A) once per column block (once when N fits),
 * the B block (up to pack_b, 512 KiB) stays in L2 with the A block (128 KiB),
 * and one B panel (GB_KC/2 x GB_NR words, at most 32 KiB) in L1 while the
 * A panels go by. The micro-kernel holds a GB_MR x GB_NR = 8 x 32 tile of C in
 * 16 registers (enough independent chains to cover VDPBF16PS latency at two
 * per cycle), broadcasting one word of A per row and k pair.
 *
 * Packing rounds to bfloat16 (VCVTNE2PS2BF16 on 32 contiguous floats) and
 * stores k in pairs, (k even, k odd) in one 32-bit word, which is what
 * VDPBF16PS takes: each step adds a[i,k] b[k,j] + a[i,k+1] b[k+1,j] to lane j
 * of row i. A k past the end packs as zero, and so do rows and columns past
 * the edge (their results are not stored). B panels are word [k2][j]: a
 * transposed B (k contiguous per column) goes through a 16 x 16 word
 * transpose in registers. A panels are laid out as the source makes cheap:
 * word [i][k2] (row stride GB_KC/2) from a plain A, where k is contiguous,
 * word [k2][i] from a transposed A, where i is; the micro-kernel takes either.
 *
 * Summation order: every element of C sums its k block's pairs in ascending
 * order in one float chain starting at zero, then C = alpha sum + beta C for
 * the first k block (C not read when beta is 0) and C = alpha sum + C for the
 * others, in k block order. The AMX kernel, when alpha is 1 and beta 0 or 1
 * (the projections, the LM head and their gradients), runs the chain on from C's value
 * instead (from zero for the first k block when beta is 0) and stores the
 * tiles straight to C, with no pass over the sums. Neither order depends on
 * M, N or where the element sits in its tile or block, so a product split into
 * row or column blocks gives the same bits. */
#include "gemm_bf16.h"

#include <stdint.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define GB_MR 8
#define GB_NR 32
#define GB_KC 512  /* even; fixes the summation order of K > GB_KC */
#define GB_KW (GB_KC / 2) /* words of a k block */
#define GB_MC 128  /* a multiple of 2 GB_MR */
#define GB_BW (128 * 1024) /* words of pack_b: GB_KW x 512 columns at least */

/* Per-thread packing buffers: one block of op(B), one block of op(A). */
static _Thread_local uint32_t pack_b[GB_BW] __attribute__((aligned(64)));
static _Thread_local uint32_t pack_a[GB_KW * GB_MC] __attribute__((aligned(64)));

int gemm_bf16_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
}

static __mmask16 mask16(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* Lanes j < n of one 512-bit vector: the pair (r0[j], r1[j]) in bfloat16 (r1
 * NULL: zero), for j < 16; the 16-bit lanes of cvtne2ps (r0 in the low half,
 * r1 in the high) interleaved. */
static __m512i pairs_rows(const float *r0, const float *r1, int n) {
    const __m512i ix = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                        24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                        16, 0);
    __mmask16 m = mask16(n);
    __m512 lo = _mm512_maskz_loadu_ps(m, r0);
    __m512 hi = r1 ? _mm512_maskz_loadu_ps(m, r1) : _mm512_setzero_ps();
    return _mm512_permutexvar_epi16(ix, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

/* Lane p: the pair (x[2p], x[2p+1]) of the first n <= 32 floats of x, zero
 * past n (x NULL: zeros). */
static __m512i pairs_contig(const float *x, int n) {
    if (!x) return _mm512_setzero_si512();
    __m512 x0 = _mm512_maskz_loadu_ps(mask16(n), x);
    __m512 x1 = _mm512_maskz_loadu_ps(mask16(n - 16), x + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
}

/* r[j] lane p -> r[p] lane j, 16 x 16 words. */
static void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    /* r[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c */
    for (int g = 0; g < 16; g += 4) {
        r[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
        r[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
        r[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        r[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    /* 4 x 4 transposes of 128-bit lanes */
    for (int c = 0; c < 4; c++) {
        __m512i v0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44);
        __m512i v1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xEE);
        __m512i v2 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44);
        __m512i v3 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xEE);
        t[c] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        t[4 + c] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
        t[8 + c] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        t[12 + c] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* Pack op(B)[k0 : k0+kc, j0 : j0+nc] into panels of GB_NR columns:
 * panel p at dst + p K2s GB_NR, word [k2][j]; columns past nc and the rows
 * k2 in [K2, K2s) (K2s = K2, or K2 rounded up to a whole tile for AMX) are
 * zero. */
static void pack_b_block(uint32_t *dst, const float *B, int ldb, int tb, int k0, int kc,
                         int j0, int nc, int K2s) {
    const int K2 = (kc + 1) / 2;
    for (int p = 0; p * GB_NR < nc && K2s > K2; p++)
        memset(dst + ((size_t)p * K2s + K2) * GB_NR, 0,
               (size_t)(K2s - K2) * GB_NR * sizeof(uint32_t));
    if (!tb) { /* op(B)[k][j] = B[k ldb + j]: rows of k, pairs across two rows, each
                * pair of rows read along its length */
        for (int k2 = 0; k2 < K2; k2++) {
            const float *r0 = B + (size_t)(k0 + 2 * k2) * ldb + j0;
            const float *r1 = 2 * k2 + 1 < kc ? r0 + ldb : NULL;
            for (int j = 0; j < nc; j += 16) {
                if (2 * k2 + 5 < kc) { /* two pairs of rows ahead */
                    _mm_prefetch((const char *)(r0 + (size_t)4 * ldb + j), _MM_HINT_T0);
                    _mm_prefetch((const char *)(r0 + (size_t)5 * ldb + j), _MM_HINT_T0);
                }
                _mm512_store_si512(dst + ((size_t)(j / GB_NR) * K2s + k2) * GB_NR + j % GB_NR,
                                   pairs_rows(r0 + j, r1 ? r1 + j : NULL, nc - j));
            }
            if (nc % GB_NR && nc % GB_NR <= 16) /* the last panel's zero half */
                _mm512_store_si512(dst + ((size_t)(nc / GB_NR) * K2s + k2) * GB_NR + 16,
                                   _mm512_setzero_si512());
        }
        return;
    }
    for (int p = 0; p * GB_NR < nc; p++) {
        uint32_t *d = dst + (size_t)p * K2s * GB_NR;
        int jp = j0 + p * GB_NR, np = nc - p * GB_NR < GB_NR ? nc - p * GB_NR : GB_NR;
        /* op(B)[k][j] = B[j ldb + k]: 32 k of 16 columns at a time, transposed;
         * the next 16 columns' rows are fetched meanwhile (B comes from memory
         * when it is large, as the LM head's) */
        for (int h = 0; h < GB_NR; h += 16)
            for (int kk = 0; kk < kc; kk += 32) {
                int n2 = K2 - kk / 2 < 16 ? K2 - kk / 2 : 16;
                __m512i r[16];
                for (int j = 0; j < 16; j++) {
                    const float *x = B + (size_t)(jp + h + j) * ldb + k0 + kk;
                    if (p * GB_NR + h + j + 16 < nc) {
                        _mm_prefetch((const char *)(x + (size_t)16 * ldb), _MM_HINT_T0);
                        _mm_prefetch((const char *)(x + (size_t)16 * ldb + 16), _MM_HINT_T0);
                    }
                    r[j] = pairs_contig(h + j < np ? x : NULL, kc - kk);
                }
                transpose16(r);
                for (int q = 0; q < n2; q++)
                    _mm512_store_si512(d + (size_t)(kk / 2 + q) * GB_NR + h, r[q]);
            }
    }
}

/* Pack op(A)[i0 : i0+mc, k0 : k0+kc] into panels of GB_MR rows at
 * dst + p GB_MR GB_KW; rows past mc, up to a multiple of `round` for a plain
 * A, are zero. A plain A packs word [i][k2]
 * (row stride GB_KW), a transposed A word [k2][i]. */
static void pack_a_block(uint32_t *dst, const float *A, int lda, int ta, int i0, int mc,
                         int k0, int kc, int round) {
    const int K2 = (kc + 1) / 2;
    if (!ta) { /* op(A)[i][k] = A[i lda + k]: k contiguous along each row */
        int rows = (mc + round - 1) / round * round;
        for (int i = 0; i < rows; i++) {
            const float *x = i < mc ? A + (size_t)(i0 + i) * lda + k0 : NULL;
            uint32_t *d = dst + (size_t)i * GB_KW;
            for (int kk = 0; kk < kc; kk += 32) {
                if (i + 8 < mc) { /* more loads in flight than the hardware's own */
                    _mm_prefetch((const char *)(x + (size_t)8 * lda + kk), _MM_HINT_T0);
                    _mm_prefetch((const char *)(x + (size_t)8 * lda + kk + 16), _MM_HINT_T0);
                }
                _mm512_store_si512(d + kk / 2, pairs_contig(x ? x + kk : NULL, kc - kk));
            }
        }
        return;
    }
    /* op(A)[i][k] = A[k lda + i]: i contiguous, pairs across two rows of A; 16
     * rows of op(A) (two panels) at a time */
    for (int k2 = 0; k2 < K2; k2++) {
        const float *r0 = A + (size_t)(k0 + 2 * k2) * lda + i0;
        const float *r1 = 2 * k2 + 1 < kc ? r0 + lda : NULL;
        for (int ib = 0; ib < mc; ib += 2 * GB_MR) {
            uint32_t *d = dst + (size_t)ib * GB_KW + (size_t)k2 * GB_MR;
            if (2 * k2 + 5 < kc) { /* two pairs of rows ahead */
                _mm_prefetch((const char *)(r0 + (size_t)4 * lda + ib), _MM_HINT_T0);
                _mm_prefetch((const char *)(r0 + (size_t)5 * lda + ib), _MM_HINT_T0);
            }
            __m512i v = pairs_rows(r0 + ib, r1 ? r1 + ib : NULL, mc - ib);
            _mm256_store_si256((__m256i *)d, _mm512_castsi512_si256(v));
            if (mc - ib > GB_MR) /* the second panel */
                _mm256_store_si256((__m256i *)(d + GB_MR * GB_KW),
                                   _mm512_extracti64x4_epi64(v, 1));
        }
    }
}

/* Writing a block of sums to C: row by row, C = alpha sum + (first ? beta C :
 * C) in the first nr <= 32 columns, C not read when first and beta is 0. */
typedef struct {
    __m512 va, vb;
    __mmask16 m[2];
    int read;
} epilogue;

static epilogue epilogue_of(int nr, float alpha, float beta, int first) {
    epilogue e = {_mm512_set1_ps(alpha), _mm512_set1_ps(first ? beta : 1.0f),
                  {mask16(nr), mask16(nr - 16)}, !first || beta != 0.0f};
    return e;
}

/* One row: sums s0 (columns 0-15) and s1 (16-31) into C row cp. */
static inline void epilogue_row(const epilogue *e, float *cp, __m512 s0, __m512 s1) {
    const __m512 s[2] = {s0, s1};
    for (int h = 0; h < 2; h++) {
        if (!e->m[h]) continue;
        __m512 r = _mm512_mul_ps(e->va, s[h]);
        if (e->read) r = _mm512_fmadd_ps(e->vb, _mm512_maskz_loadu_ps(e->m[h], cp + 16 * h), r);
        _mm512_mask_storeu_ps(cp + 16 * h, e->m[h], r);
    }
}

/* C[0:mr, 0:nr] = alpha (a b) + (first ? beta C : C), b a packed panel of K2
 * pairs, a word (i, k2) at a[i ars + k2 acs]; with first and beta 0, C is not
 * read. */
static inline __attribute__((always_inline)) void
micro(int K2, const uint32_t *a, int ars, int acs, const uint32_t *b, float *C, int ldc,
      int mr, int nr, float alpha, float beta, int first) {
    __m512 c[GB_MR][2];
    for (int i = 0; i < GB_MR; i++) c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int i = 0; i < mr; i++) { /* the tile of C, fetched while the sums run */
        _mm_prefetch((const char *)(C + (size_t)i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + (size_t)i * ldc + 16), _MM_HINT_T0);
    }
    for (int k = 0; k < K2; k++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b + (size_t)k * GB_NR);
        __m512bh b1 = (__m512bh)_mm512_load_si512(b + (size_t)k * GB_NR + 16);
        const uint32_t *ak = a + (size_t)k * acs;
        for (int i = 0; i < GB_MR; i++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)ak[i * ars]);
            c[i][0] = _mm512_dpbf16_ps(c[i][0], av, b0);
            c[i][1] = _mm512_dpbf16_ps(c[i][1], av, b1);
        }
    }
    const epilogue e = epilogue_of(nr, alpha, beta, first);
    for (int i = 0; i < mr; i++) epilogue_row(&e, C + (size_t)i * ldc, c[i][0], c[i][1]);
}

/* The two layouts of the A panels, each with its strides known. */
static void micro_rows(int K2, const uint32_t *a, const uint32_t *b, float *C, int ldc, int mr,
                       int nr, float alpha, float beta, int first) {
    micro(K2, a, GB_KW, 1, b, C, ldc, mr, nr, alpha, beta, first);
}
static void micro_cols(int K2, const uint32_t *a, const uint32_t *b, float *C, int ldc, int mr,
                       int nr, float alpha, float beta, int first) {
    micro(K2, a, 1, GB_MR, b, C, ldc, mr, nr, alpha, beta, first);
}

/* ---- AMX tiles --------------------------------------------------------------------
 *
 * The same blocking and packing with a 32 x 32 block of C in four tiles
 * (tmm0-3, 16 x 16 floats each), two tiles of A (tmm4-5: 16 rows x 16 pairs)
 * and two of B (tmm6-7: 16 pairs x 16 columns); one TDPBF16PS step sums 16
 * pairs of k. A B panel is already a stack of such B tiles (row stride GB_NR
 * words), a plain A block one of A tiles (row stride GB_KW); a transposed A
 * is packed word [i][k2] too, through the 16 x 16 transpose, so both read
 * the same way. k is padded with zero pairs to a whole tile (B rows, A
 * columns) and rows of A to a whole block (GB_TR). Each thread loads the tile
 * configuration when it enters gemm_bf16 and releases the tiles on leaving,
 * so no tile state outlives a call. Where alpha is 1 and beta 0 or 1 the
 * accumulator tiles are loaded from C and stored to it (a block cut by C's
 * edge goes through a whole block on the stack); otherwise they start from
 * zero and the sums go through the epilogue. Linux hands out the tile
 * registers only on request (arch_prctl ARCH_REQ_XCOMP_PERM), asked once per
 * process. */

#define GB_TR 32         /* rows of C per AMX block */
#define GB_TK 16         /* pairs of k per tile */
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16")))

/* -1 not yet decided, 0 AVX-512 BF16, 1 AMX; gemm_bf16_use_amx() sets it. */
static int amx_on = -1;

/* The CPU has AMX-BF16, the kernel enables the tile state (XCR0 bits 17, 18)
 * and grants it to this process. */
static int amx_grant(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 22)))
        return 0; /* AMX-TILE, AMX-BF16 */
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return 0;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
}

/* Both decided on first use, possibly by several threads at once: each
 * finds the same answer (the request is idempotent), stored atomically. */
int gemm_bf16_amx_available(void) {
    static int granted = -1;
    int g = __atomic_load_n(&granted, __ATOMIC_RELAXED);
    if (g < 0) {
        g = gemm_bf16_available() && amx_grant();
        __atomic_store_n(&granted, g, __ATOMIC_RELAXED);
    }
    return g;
}

int gemm_bf16_use_amx(int on) {
    int v = on && gemm_bf16_amx_available();
    __atomic_store_n(&amx_on, v, __ATOMIC_RELAXED);
    return v;
}

int gemm_bf16_amx(void) {
    int v = __atomic_load_n(&amx_on, __ATOMIC_RELAXED);
    if (v < 0) {
        v = gemm_bf16_amx_available();
        __atomic_store_n(&amx_on, v, __ATOMIC_RELAXED);
    }
    return v;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* Palette 1, tiles 0-7 all 16 rows of 64 bytes (gemm_bf16.h). */
AMX_TARGET void gemm_bf16_tiles_begin(void) {
    amx_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) c.rows[t] = 16, c.colsb[t] = 64;
    /* GCC 12 models LDTILECFG as reading less than its 64 bytes and drops the
     * stores of rows and colsb when this function is not inlined: make them
     * visible to it */
    __asm__ volatile("" : : "m"(c) : "memory");
    _tile_loadconfig(&c);
}

AMX_TARGET void gemm_bf16_tiles_end(void) { _tile_release(); }

const char *gemm_bf16_kernel(void) {
    return gemm_bf16_amx() ? "AMX" : gemm_bf16_available() ? "AVX-512 BF16" : "none";
}

/* c[32][32] (row stride ldc floats) += A rows [0, 32) (word [i][k2], row
 * stride GB_KW) times the B panel b (word [k2][j], row stride GB_NR), over K2p
 * pairs (a whole number of tiles): the tiles start from c (load) or from zero
 * (not load: c is not read) and are stored back to c. */
AMX_TARGET static void amx_block(int K2p, const uint32_t *a, const uint32_t *b, float *c, int ldc,
                                 int load) {
    const size_t s = (size_t)ldc * sizeof(float);
    if (load) {
        _tile_loadd(0, c, s);
        _tile_loadd(1, c + 16, s);
        _tile_loadd(2, c + (size_t)16 * ldc, s);
        _tile_loadd(3, c + (size_t)16 * ldc + 16, s);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int k = 0; k < K2p; k += GB_TK) {
        _tile_loadd(4, a + k, GB_KW * 4);
        _tile_loadd(5, a + (size_t)16 * GB_KW + k, GB_KW * 4);
        _tile_loadd(6, b + (size_t)k * GB_NR, GB_NR * 4);
        _tile_loadd(7, b + (size_t)k * GB_NR + 16, GB_NR * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, s);
    _tile_stored(1, c + 16, s);
    _tile_stored(2, c + (size_t)16 * ldc, s);
    _tile_stored(3, c + (size_t)16 * ldc + 16, s);
}

/* amx_block on a block of C cut by its edge (mr rows, nr columns), through a
 * whole block in acc: the same sums as a whole block's, so an element's bits
 * do not depend on where the edges fall. */
static void amx_edge(int K2p, const uint32_t *a, const uint32_t *b, float *C, int ldc, int mr,
                     int nr, int load, float *acc) {
    if (load) {
        memset(acc, 0, sizeof(float) * GB_TR * GB_TR);
        for (int i = 0; i < mr; i++)
            memcpy(acc + (size_t)i * GB_TR, C + (size_t)i * ldc, sizeof(float) * (size_t)nr);
    }
    amx_block(K2p, a, b, acc, GB_TR, load);
    for (int i = 0; i < mr; i++)
        memcpy(C + (size_t)i * ldc, acc + (size_t)i * GB_TR, sizeof(float) * (size_t)nr);
}

/* C[0:mr, 0:nr] = alpha acc + (first ? beta C : C), as micro's epilogue. */
static void amx_store(const float *acc, float *C, int ldc, int mr, int nr, float alpha,
                      float beta, int first) {
    const epilogue e = epilogue_of(nr, alpha, beta, first);
    for (int i = 0; i < mr; i++)
        epilogue_row(&e, C + (size_t)i * ldc, _mm512_load_ps(acc + (size_t)i * GB_TR),
                     _mm512_load_ps(acc + (size_t)i * GB_TR + 16));
}

/* A transposed A block (op(A)[i][k] = A[k lda + i]) packed word [i][k2] with
 * row stride GB_KW: pairs of rows of A give 16 i at a time, 16 such vectors
 * (16 pairs of k) are transposed; rows up to a multiple of GB_TR and pairs
 * up to a whole tile are zero past the edge. */
static void pack_a_trows(uint32_t *dst, const float *A, int lda, int i0, int mc, int k0,
                         int kc) {
    const int K2 = (kc + 1) / 2, rows = (mc + GB_TR - 1) / GB_TR * GB_TR;
    for (int kb = 0; kb < K2; kb += GB_TK) /* the rows of A read along their length */
        for (int ib = 0; ib < rows; ib += 16) {
            __m512i r[16];
            for (int q = 0; q < 16; q++) {
                const int k = 2 * (kb + q);
                const float *r0 = k < kc && ib < mc ? A + (size_t)(k0 + k) * lda + i0 + ib : NULL;
                const float *r1 = r0 && k + 1 < kc ? r0 + lda : NULL;
                r[q] = r0 ? pairs_rows(r0, r1, mc - ib) : _mm512_setzero_si512();
            }
            transpose16(r);
            for (int i = 0; i < 16; i++)
                _mm512_store_si512(dst + (size_t)(ib + i) * GB_KW + kb, r[i]);
        }
}

/* The micro-kernels over one packed A block and one B panel: rows [0, mc)
 * of C at cp, nr columns, K2 pairs (K2s for the tiles: whole tiles). */
static void block_panel(int amx, int ta, int mc, int nr, int K2, const uint32_t *bp, float *cp,
                        int ldc, float alpha, float beta, int first) {
    float acc[GB_TR * GB_TR] __attribute__((aligned(64)));
    const int step = amx ? GB_TR : GB_MR;
    /* C = sum + C or C = sum: the tiles sum straight into C */
    const int direct = alpha == 1.0f && (!first || beta == 0.0f || beta == 1.0f);
    const int load = !first || beta != 0.0f;
    for (int ir = 0; ir < mc; ir += step) {
        const int mr = mc - ir < step ? mc - ir : step;
        const uint32_t *ap = pack_a + (size_t)ir * GB_KW;
        float *c = cp + (size_t)ir * ldc;
        if (amx && direct) {
            if (mr == GB_TR && nr == GB_TR) amx_block(K2, ap, bp, c, ldc, load);
            else amx_edge(K2, ap, bp, c, ldc, mr, nr, load, acc);
        } else if (amx) {
            amx_block(K2, ap, bp, acc, GB_TR, 0);
            amx_store(acc, c, ldc, mr, nr, alpha, beta, first);
        } else if (ta) {
            micro_cols(K2, ap, bp, c, ldc, mr, nr, alpha, beta, first);
        } else {
            micro_rows(K2, ap, bp, c, ldc, mr, nr, alpha, beta, first);
        }
    }
}

/* ---- the product ------------------------------------------------------------------ */

void gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* no products: C = beta C */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float *c = C + (size_t)i * ldc + j;
                *c = beta == 0.0f ? 0.0f : beta * *c;
            }
        return;
    }
    const int amx = gemm_bf16_amx();
    if (amx) gemm_bf16_tiles_begin();
    for (int k0 = 0; k0 < K; k0 += GB_KC) {
        const int kc = K - k0 < GB_KC ? K - k0 : GB_KC, first = k0 == 0;
        /* pairs of k per B panel row block: whole tiles for AMX */
        const int K2 = (kc + 1) / 2, K2s = amx ? (K2 + GB_TK - 1) / GB_TK * GB_TK : K2;
        const int ncmax = GB_BW / (K2s * GB_NR) * GB_NR; /* columns pack_b holds */
        for (int j0 = 0; j0 < N; j0 += ncmax) {
            int nc = N - j0 < ncmax ? N - j0 : ncmax;
            pack_b_block(pack_b, B, ldb, tb, k0, kc, j0, nc, K2s);
            for (int i0 = 0; i0 < M; i0 += GB_MC) {
                int mc = M - i0 < GB_MC ? M - i0 : GB_MC;
                if (amx && ta) pack_a_trows(pack_a, A, lda, i0, mc, k0, kc);
                else pack_a_block(pack_a, A, lda, ta, i0, mc, k0, kc, amx ? GB_TR : GB_MR);
                for (int p = 0; p * GB_NR < nc; p++)
                    block_panel(amx, ta, mc, nc - p * GB_NR < GB_NR ? nc - p * GB_NR : GB_NR,
                                K2s, pack_b + (size_t)p * K2s * GB_NR,
                                C + (size_t)i0 * ldc + j0 + p * GB_NR, ldc, alpha, beta, first);
            }
        }
    }
    if (amx) gemm_bf16_tiles_end();
}

float bf16_round(float x) {
    __m128bh b = _mm_cvtneps_pbh(_mm_set_ss(x));
    uint16_t h;
    memcpy(&h, &b, sizeof h);
    uint32_t u = (uint32_t)h << 16;
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

#else /* built without AVX-512 BF16: the precision is refused before any run */

int gemm_bf16_available(void) { return 0; }
int gemm_bf16_amx_available(void) { return 0; }
int gemm_bf16_use_amx(int on) { return (void)on, 0; }
int gemm_bf16_amx(void) { return 0; }
const char *gemm_bf16_kernel(void) { return "none"; }
void gemm_bf16_tiles_begin(void) {}
void gemm_bf16_tiles_end(void) {}

void gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    (void)ta, (void)tb, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda;
    (void)B, (void)ldb, (void)beta, (void)C, (void)ldc;
    __builtin_trap(); /* unreachable: callers check gemm_bf16_available() */
}

/* Round to nearest even on the bits (NaN kept quiet, subnormals to zero). */
float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7F800000u) == 0) {
        u &= 0x80000000u;
    } else if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        u = (u | 0x00400000u) & 0xFFFF0000u;
    } else {
        u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    }
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

#endif
