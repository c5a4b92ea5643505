/* matmul.c: the matrix products every kernel runs on (OpenBLAS), and the
 * count of their floating-point operations.
 *
 * Each product adds its operation count to one process-wide counter: 2 M N K
 * for a GEMM, 2 M N for a GEMV, n (n - 1) m for a unit-triangular solve with
 * m right-hand sides. memlab bench reads the counter around a training step,
 * so every mixer gets a GFLOP/s figure from the products it actually ran,
 * and the tests check the analytic formulas of harness/bench.c against it.
 * Element-wise work (norms, exp, feature maps) is not counted anywhere. The
 * counter is atomic: kernels call these from OpenMP regions. */
#include <stdatomic.h>

#include "kernels.h"

#ifdef MEMLAB_DOUBLE
#define cblas_trsm cblas_dtrsm
#else
#define cblas_trsm cblas_strsm
#endif

static _Atomic unsigned long long flop_count;

void ml_flops_add(double n) {
    if (n > 0) atomic_fetch_add_explicit(&flop_count, (unsigned long long)n, memory_order_relaxed);
}

double ml_flops_read(void) {
    return (double)atomic_load_explicit(&flop_count, memory_order_relaxed);
}

void ml_flops_reset(void) { atomic_store_explicit(&flop_count, 0, memory_order_relaxed); }

void ml_gemm(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda,
             const real *B, int ldb, real beta, real *C, int ldc) {
    ml_flops_add(2.0 * M * N * K);
    cblas_gemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M,
               N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ml_gemv(int ta, int M, int N, real alpha, const real *A, int lda, const real *x, int incx,
             real beta, real *y, int incy) {
    ml_flops_add(2.0 * M * N);
    cblas_gemv(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, M, N, alpha, A, lda, x, incx, beta,
               y, incy);
}

void ml_trsm_unit_lower(int ta, int n, int m, const real *A, int lda, real *X, int ldx) {
    ml_flops_add((double)n * (n - 1) * m);
    cblas_trsm(CblasRowMajor, CblasLeft, CblasLower, ta ? CblasTrans : CblasNoTrans, CblasUnit, n,
               m, 1, A, lda, X, ldx);
}
