/* gemm_bf16.c: the bfloat16 matrix product (see gemm_bf16.h).
 *
 * Blocking as in the usual GEMM design: columns of C in blocks of GB_NC, k in
 * blocks of GB_KC; each (column block, k block) of op(B) is packed once into
 * panels of GB_NR columns, each GB_MR rows of op(A) into one panel, and the
 * micro-kernel multiplies a panel of A by a panel of B into a GB_MR x GB_NR
 * tile of C held in 12 registers. Packing rounds to bfloat16 and stores k in
 * pairs, (k even, k odd) in one 32-bit word, which is what VDPBF16PS takes:
 * each step adds a[i,k] b[k,j] + a[i,k+1] b[k+1,j] to lane j of row i. A k
 * past the end packs as zero. The first k block scales C by beta, the others
 * add to it, so every element of C sums its k in the same order. */
#include "gemm_bf16.h"

#include <stdint.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>

#define GB_MR 6
#define GB_NR 32
#define GB_KC 512 /* even */
#define GB_NC 256 /* a multiple of GB_NR */

/* Per-thread packing buffers: one block of op(B), one panel of op(A). */
static _Thread_local uint32_t pack_b[(GB_KC / 2) * GB_NC] __attribute__((aligned(64)));
static _Thread_local uint32_t pack_a[(GB_KC / 2) * GB_MR] __attribute__((aligned(64)));

int gemm_bf16_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
}

static __mmask16 mask16(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

/* Lanes j < n: the pair (r0[j], r1[j]) in bfloat16 (r1 NULL: zero). */
static __m512i pairs_rows(const float *r0, const float *r1, int n) {
    __mmask16 m = mask16(n);
    __m512 lo = _mm512_maskz_loadu_ps(m, r0);
    __m512 hi = r1 ? _mm512_maskz_loadu_ps(m, r1) : _mm512_setzero_ps();
    __m512i l = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
    __m512i h = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
    return _mm512_or_si512(l, _mm512_slli_epi32(h, 16));
}

/* Lane p: the pair (x[2p], x[2p+1]) of the first n <= 32 floats of x, zero
 * past n. */
static __m512i pairs_contig(const float *x, int n) {
    __m512 x0 = _mm512_maskz_loadu_ps(mask16(n), x);
    __m512 x1 = _mm512_maskz_loadu_ps(mask16(n - 16), x + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
}

/* dst[k2 stride] = the pair (x[2 k2], x[2 k2 + 1]) for k2 < ceil(kc/2): kc
 * contiguous floats of x packed down a panel's column (x NULL: zeros). */
static void pack_run(uint32_t *dst, int stride, const float *x, int kc) {
    uint32_t w[16] __attribute__((aligned(64)));
    for (int kk = 0; kk < kc; kk += 32) {
        int n2 = (kc - kk + 1) / 2 < 16 ? (kc - kk + 1) / 2 : 16;
        if (x) _mm512_store_si512(w, pairs_contig(x + kk, kc - kk));
        for (int q = 0; q < n2; q++) dst[(size_t)(kk / 2 + q) * stride] = x ? w[q] : 0;
    }
}

/* Pack op(B)[k0 : k0+kc, j0 : j0+nc] into panels of GB_NR columns:
 * panel p at dst + p (kc/2) GB_NR, word [k2][j]; columns past nc are zero. */
static void pack_b_block(uint32_t *dst, const float *B, int ldb, int tb, int k0, int kc,
                         int j0, int nc) {
    const int K2 = (kc + 1) / 2;
    for (int p = 0; p * GB_NR < nc; p++) {
        uint32_t *d = dst + (size_t)p * K2 * GB_NR;
        int jp = j0 + p * GB_NR, np = nc - p * GB_NR < GB_NR ? nc - p * GB_NR : GB_NR;
        if (!tb) { /* op(B)[k][j] = B[k ldb + j]: rows of k, pairs across two rows */
            for (int k2 = 0; k2 < K2; k2++) {
                const float *r0 = B + (size_t)(k0 + 2 * k2) * ldb + jp;
                const float *r1 = 2 * k2 + 1 < kc ? r0 + ldb : NULL;
                for (int h = 0; h < GB_NR; h += 16)
                    _mm512_store_si512(d + (size_t)k2 * GB_NR + h,
                                       pairs_rows(r0 + h, r1 ? r1 + h : NULL, np - h));
            }
        } else { /* op(B)[k][j] = B[j ldb + k]: k contiguous for each column */
            for (int j = 0; j < GB_NR; j++)
                pack_run(d + j, GB_NR, j < np ? B + (size_t)(jp + j) * ldb + k0 : NULL, kc);
        }
    }
}

/* Pack op(A)[i0 : i0+mr, k0 : k0+kc] into one panel, word [k2][i]; rows past
 * mr are zero. */
static void pack_a_panel(uint32_t *dst, const float *A, int lda, int ta, int i0, int mr,
                         int k0, int kc) {
    const int K2 = (kc + 1) / 2;
    if (ta) { /* op(A)[i][k] = A[k lda + i]: i contiguous, pairs across two rows of A */
        for (int k2 = 0; k2 < K2; k2++) {
            const float *r0 = A + (size_t)(k0 + 2 * k2) * lda + i0;
            const float *r1 = 2 * k2 + 1 < kc ? r0 + lda : NULL;
            __m512i v = pairs_rows(r0, r1, mr);
            _mm512_mask_storeu_epi32(dst + (size_t)k2 * GB_MR, (__mmask16)0x3F, v);
        }
        return;
    }
    for (int i = 0; i < GB_MR; i++)
        pack_run(dst + i, GB_MR, i < mr ? A + (size_t)(i0 + i) * lda + k0 : NULL, kc);
}

/* C[0:mr, 0:nr] = alpha (a b) + (first ? beta C : C), a and b packed panels
 * of K2 pairs; with first and beta 0, C is not read. */
static void micro(int K2, const uint32_t *a, const uint32_t *b, float *C, int ldc, int mr,
                  int nr, float alpha, float beta, int first) {
    __m512 c[GB_MR][2];
    for (int i = 0; i < GB_MR; i++) c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int k = 0; k < K2; k++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b + (size_t)k * GB_NR);
        __m512bh b1 = (__m512bh)_mm512_load_si512(b + (size_t)k * GB_NR + 16);
        const uint32_t *ak = a + (size_t)k * GB_MR;
        for (int i = 0; i < GB_MR; i++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)ak[i]);
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
    for (int j0 = 0; j0 < N; j0 += GB_NC) {
        int nc = N - j0 < GB_NC ? N - j0 : GB_NC;
        for (int k0 = 0; k0 < K; k0 += GB_KC) {
            int kc = K - k0 < GB_KC ? K - k0 : GB_KC, K2 = (kc + 1) / 2;
            pack_b_block(pack_b, B, ldb, tb, k0, kc, j0, nc);
            for (int i0 = 0; i0 < M; i0 += GB_MR) {
                int mr = M - i0 < GB_MR ? M - i0 : GB_MR;
                pack_a_panel(pack_a, A, lda, ta, i0, mr, k0, kc);
                for (int p = 0; p * GB_NR < nc; p++) {
                    int nr = nc - p * GB_NR < GB_NR ? nc - p * GB_NR : GB_NR;
                    micro(K2, pack_a, pack_b + (size_t)p * K2 * GB_NR,
                          C + (size_t)i0 * ldc + j0 + p * GB_NR, ldc, mr, nr, alpha, beta,
                          k0 == 0);
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
