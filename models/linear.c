/* linear.c: the dense layer out = x w^T + b on OpenBLAS, forward and backward.
 *
 * Dimensions: N rows (usually B*T), IC input channels, OC output channels.
 * Weights use PyTorch's [OC, IC] layout so checkpoints and the twin fixtures
 * read the same. The naive reference lives in tests/test_ops.c.
 *
 * Threads: memlab's thread setting is OpenBLAS's thread count (--threads sets
 * it). With more than one, each GEMM here is cut into one block of output
 * rows or columns per thread, and the blocks run in an OpenMP region with
 * OpenBLAS single-threaded inside, so only one thread pool (OpenMP's) is ever
 * busy: two pools spinning on the same cores slow each other down. Blocks
 * are fixed by the thread count, so a run is reproducible at a given count;
 * across counts the last bits may move (BLAS picks its kernels by block size). */
#include <stddef.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"

/* Fewest multiply-adds per thread worth a parallel region. */
#define LIN_MIN_WORK (1L << 20)

/* Threads for a GEMM of M*N*K multiply-adds: memlab's thread setting, fewer
 * when the work is small; 1 without OpenMP or inside a parallel region. */
static int lin_threads(long work) {
#ifdef _OPENMP
    if (omp_in_parallel()) return 1;
    long n = openblas_get_num_threads(), most = work / LIN_MIN_WORK;
    if (n > most) n = most;
    return n > 1 ? (int)n : 1;
#else
    (void)work;
    return 1;
#endif
}

/* Row-major C[M,N] = alpha op(A) op(B) + beta C (ta/tb: transpose), threaded
 * as described at the top: the larger of M and N is cut into nt blocks (edges
 * multiples of 16 so that BLAS's vector kernels see whole panels). */
static void gemm_par(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda,
                     const real *Bm, int ldb, real beta, real *C, int ldc) {
    int nt = lin_threads((long)M * N * K);
    if (nt == 1) {
        ml_gemm(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
        return;
    }
    ml_flops_add(2.0 * M * N * K);
    CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
    int blas = openblas_get_num_threads();
    openblas_set_num_threads(1);
    int split_m = M >= N;
    int len = split_m ? M : N;
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), n = omp_get_num_threads();
#else
        int t = 0, n = 1;
#endif
        int step = ((len + n - 1) / n + 15) & ~15;
        int i0 = t * step, i1 = i0 + step < len ? i0 + step : len;
        if (i0 < i1) {
            if (split_m) {
                /* rows i0..i1 of C: rows of op(A) */
                const real *Ai = ta ? A + i0 : A + (size_t)i0 * lda;
                cblas_gemm(CblasRowMajor, TA, TB, i1 - i0, N, K, alpha, Ai, lda, Bm, ldb, beta,
                           C + (size_t)i0 * ldc, ldc);
            } else {
                /* columns i0..i1 of C: columns of op(B) */
                const real *Bi = tb ? Bm + (size_t)i0 * ldb : Bm + i0;
                cblas_gemm(CblasRowMajor, TA, TB, M, i1 - i0, K, alpha, A, lda, Bi, ldb, beta,
                           C + i0, ldc);
            }
        }
    }
    openblas_set_num_threads(blas);
}

/* out[N,OC] = x[N,IC] w[OC,IC]^T + b[OC]; b may be NULL. out is overwritten
 * (old contents, even NaN, never leak in) and must not alias x or w. */
void linear_forward(real *out, const real *x, const real *w, const real *b, int N, int IC,
                    int OC) {
    if (N <= 0 || OC <= 0) return;
    real beta = 0;
    if (b) {
        /* seed out with the bias so the whole layer is one GEMM with beta = 1 */
        for (int i = 0; i < N; i++) memcpy(out + (size_t)i * OC, b, sizeof(real) * (size_t)OC);
        beta = 1;
    } else if (IC <= 0) {
        memset(out, 0, sizeof(real) * (size_t)N * OC);
    }
    /* BLAS rejects leading dimensions of 0, so an empty reduction stops here */
    if (IC <= 0) return;
    gemm_par(0, 1, N, OC, IC, 1, x, IC, w, IC, beta, out, OC);
}

/* dx[N,IC] += dout[N,OC] w[OC,IC]; dw[OC,IC] += dout^T x; db[OC] += column sums
 * of dout. Any gradient may be NULL. The GEMMs run with beta = 1, which is
 * what makes the backward accumulate. */
void linear_backward(real *dx, real *dw, real *db, const real *dout, const real *x,
                     const real *w, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    if (dx && IC > 0) gemm_par(0, 0, N, IC, OC, 1, dout, OC, w, IC, 1, dx, IC);
    if (dw && IC > 0) gemm_par(1, 0, OC, IC, N, 1, dout, OC, x, IC, 1, dw, IC);
    if (db) {
        /* row-outer keeps the reads of dout sequential */
        for (int i = 0; i < N; i++) {
            const real *d = dout + (size_t)i * OC;
#pragma omp simd
            for (int o = 0; o < OC; o++) db[o] += d[o];
        }
    }
}
