/* linear.c: the dense layer out = x w^T + b on OpenBLAS, forward and backward.
 *
 * Dimensions: N rows (usually B*T), IC input channels, OC output channels.
 * Weights use PyTorch's [OC, IC] layout so checkpoints and the twin fixtures
 * read the same. The naive reference lives in tests/test_ops.c.
 *
 * Threads: the GEMMs go through ml_gemm (matmul.c), which cuts the large
 * ones among memlab's threads. */
#include <stddef.h>
#include <string.h>

#include "kernels.h"

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
    ml_gemm(0, 1, N, OC, IC, 1, x, IC, w, IC, beta, out, OC);
}

/* dx[N,IC] += dout[N,OC] w[OC,IC]; dw[OC,IC] += dout^T x; db[OC] += column sums
 * of dout. Any gradient may be NULL. The GEMMs run with beta = 1, which is
 * what makes the backward accumulate. */
void linear_backward(real *dx, real *dw, real *db, const real *dout, const real *x,
                     const real *w, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    if (dx && IC > 0) ml_gemm(0, 0, N, IC, OC, 1, dout, OC, w, IC, 1, dx, IC);
    if (dw && IC > 0) ml_gemm(1, 0, OC, IC, N, 1, dout, OC, x, IC, 1, dw, IC);
    if (db) {
        /* row-outer keeps the reads of dout sequential */
        for (int i = 0; i < N; i++) {
            const real *d = dout + (size_t)i * OC;
#pragma omp simd
            for (int o = 0; o < OC; o++) db[o] += d[o];
        }
    }
}
