/* gemm_bf16.c: the bfloat16 matrix product (see gemm_bf16.h).
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
 * others, in k block order. Neither depends on M, N or where the element sits
 * in its tile or block, so a product split into row or column blocks gives the
 * same bits. */
#include "gemm_bf16.h"

#include <stdint.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

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
 * panel p at dst + p K2 GB_NR, word [k2][j]; columns past nc are zero. */
static void pack_b_block(uint32_t *dst, const float *B, int ldb, int tb, int k0, int kc,
                         int j0, int nc) {
    const int K2 = (kc + 1) / 2;
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
                _mm512_store_si512(dst + ((size_t)(j / GB_NR) * K2 + k2) * GB_NR + j % GB_NR,
                                   pairs_rows(r0 + j, r1 ? r1 + j : NULL, nc - j));
            }
            if (nc % GB_NR && nc % GB_NR <= 16) /* the last panel's zero half */
                _mm512_store_si512(dst + ((size_t)(nc / GB_NR) * K2 + k2) * GB_NR + 16,
                                   _mm512_setzero_si512());
        }
        return;
    }
    for (int p = 0; p * GB_NR < nc; p++) {
        uint32_t *d = dst + (size_t)p * K2 * GB_NR;
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
 * dst + p GB_MR GB_KW; rows past mc are zero. A plain A packs word [i][k2]
 * (row stride GB_KW), a transposed A word [k2][i]. */
static void pack_a_block(uint32_t *dst, const float *A, int lda, int ta, int i0, int mc,
                         int k0, int kc) {
    const int K2 = (kc + 1) / 2;
    if (!ta) { /* op(A)[i][k] = A[i lda + k]: k contiguous along each row */
        int rows = (mc + GB_MR - 1) / GB_MR * GB_MR;
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
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(first ? beta : 1.0f);
    const int read = !first || beta != 0.0f;
    const __mmask16 m[2] = {mask16(nr), mask16(nr - 16)};
    for (int i = 0; i < mr; i++)
        for (int h = 0; h < 2; h++) {
            if (!m[h]) continue;
            float *cp = C + (size_t)i * ldc + 16 * h;
            __m512 r = _mm512_mul_ps(va, c[i][h]);
            if (read) r = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[h], cp), r);
            _mm512_mask_storeu_ps(cp, m[h], r);
        }
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
    for (int k0 = 0; k0 < K; k0 += GB_KC) {
        const int kc = K - k0 < GB_KC ? K - k0 : GB_KC, K2 = (kc + 1) / 2, first = k0 == 0;
        const int ncmax = GB_BW / (K2 * GB_NR) * GB_NR; /* columns pack_b holds */
        for (int j0 = 0; j0 < N; j0 += ncmax) {
            int nc = N - j0 < ncmax ? N - j0 : ncmax;
            pack_b_block(pack_b, B, ldb, tb, k0, kc, j0, nc);
            for (int i0 = 0; i0 < M; i0 += GB_MC) {
                int mc = M - i0 < GB_MC ? M - i0 : GB_MC;
                pack_a_block(pack_a, A, lda, ta, i0, mc, k0, kc);
                for (int p = 0; p * GB_NR < nc; p++) {
                    int nr = nc - p * GB_NR < GB_NR ? nc - p * GB_NR : GB_NR;
                    const uint32_t *bp = pack_b + (size_t)p * K2 * GB_NR;
                    float *cp = C + (size_t)i0 * ldc + j0 + p * GB_NR;
                    for (int ir = 0; ir < mc; ir += GB_MR) {
                        int mr = mc - ir < GB_MR ? mc - ir : GB_MR;
                        const uint32_t *ap = pack_a + (size_t)ir * GB_KW;
                        if (ta)
                            micro_cols(K2, ap, bp, cp + (size_t)ir * ldc, ldc, mr, nr, alpha,
                                       beta, first);
                        else
                            micro_rows(K2, ap, bp, cp + (size_t)ir * ldc, ldc, mr, nr, alpha,
                                       beta, first);
                    }
                }
            }
        }
    }
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
