/* linear.c: the dense layer out = x w^T + b on OpenBLAS, forward and backward.
 *
 * Dimensions: N rows (usually B*T), IC input channels, OC output channels.
 * Weights use PyTorch's [OC, IC] layout so checkpoints and the twin fixtures
 * read the same. The naive reference lives in tests/test_ops.c; threading is
 * left to OpenBLAS. */
#include <stddef.h>

#include "kernels.h"

/* out[N,OC] = x[N,IC] w[OC,IC]^T + b[OC]; b may be NULL. out is overwritten
 * (old contents, even NaN, never leak in) and must not alias x or w. */
void linear_forward(real *out, const real *x, const real *w, const real *b, int N, int IC,
                    int OC) {
    if (N <= 0 || OC <= 0) return;
    real beta = 0;
    if (b) {
        /* seed out with the bias so the whole layer is one GEMM with beta = 1 */
        for (int i = 0; i < N; i++)
            for (int o = 0; o < OC; o++) out[(size_t)i * OC + o] = b[o];
        beta = 1;
    } else if (IC <= 0) {
        for (size_t k = 0; k < (size_t)N * OC; k++) out[k] = 0;
    }
    /* BLAS rejects leading dimensions of 0, so an empty reduction stops here */
    if (IC <= 0) return;
    cblas_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1, x, IC, w, IC, beta,
               out, OC);
}

/* dx[N,IC] += dout[N,OC] w[OC,IC]; dw[OC,IC] += dout^T x; db[OC] += column sums
 * of dout. Any gradient may be NULL. The GEMMs run with beta = 1, which is
 * what makes the backward accumulate. */
void linear_backward(real *dx, real *dw, real *db, const real *dout, const real *x,
                     const real *w, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    if (dx && IC > 0)
        cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1, dout, OC, w, IC,
                   1, dx, IC);
    if (dw && IC > 0)
        cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1, dout, OC, x, IC, 1,
                   dw, IC);
    if (db) {
        /* row-outer keeps the reads of dout sequential */
        for (int i = 0; i < N; i++) {
            const real *d = dout + (size_t)i * OC;
            for (int o = 0; o < OC; o++) db[o] += d[o];
        }
    }
}
