/* linear.c: the dense layer out = x w^T + b on OpenBLAS, forward and backward,
 * also on strided columns and with a block of output columns computed for a
 * subset of rows only.
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
    linear_forward_ld(out, OC, x, w, b, N, IC, OC);
}

/* The same with out's rows ldo >= OC apart (columns of a wider array). */
void linear_forward_ld(real *out, int ldo, const real *x, const real *w, const real *b, int N,
                       int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    real beta = 0;
    if (b || IC <= 0) {
        /* seed out with the bias so the whole layer is one GEMM with beta = 1
         * (zeros when an empty reduction leaves nothing else to write) */
        for (int i = 0; i < N; i++) {
            real *o = out + (size_t)i * ldo;
            if (b) memcpy(o, b, sizeof(real) * (size_t)OC);
            else memset(o, 0, sizeof(real) * (size_t)OC);
        }
        beta = 1;
    }
    /* BLAS rejects leading dimensions of 0, so an empty reduction stops here */
    if (IC <= 0) return;
    ml_gemm(0, 1, N, OC, IC, 1, x, IC, w, IC, beta, out, ldo);
}

/* dx[N,IC] += dout[N,OC] w[OC,IC]; dw[OC,IC] += dout^T x; db[OC] += column sums
 * of dout. Any gradient may be NULL. The GEMMs run with beta = 1, which is
 * what makes the backward accumulate. */
void linear_backward(real *dx, real *dw, real *db, const real *dout, const real *x,
                     const real *w, int N, int IC, int OC) {
    linear_backward_ld(dx, dw, db, dout, OC, x, w, N, IC, OC);
}

/* The same with dout's rows ldd >= OC apart. */
void linear_backward_ld(real *dx, real *dw, real *db, const real *dout, int ldd, const real *x,
                        const real *w, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    if (dx && IC > 0) ml_gemm(0, 0, N, IC, OC, 1, dout, ldd, w, IC, 1, dx, IC);
    if (dw && IC > 0) ml_gemm(1, 0, OC, IC, N, 1, dout, ldd, x, IC, 1, dw, IC);
    if (db) {
        /* row-outer keeps the reads of dout sequential */
        for (int i = 0; i < N; i++) {
            const real *d = dout + (size_t)i * ldd;
#pragma omp simd
            for (int o = 0; o < OC; o++) db[o] += d[o];
        }
    }
}

/* Columns [OQ, OC) in place for every row, then [0, OQ) for the rows into qr
 * and copied to their places. */
void linear_forward_rows(real *out, real *qr, const real *x, const real *xr, const real *w,
                         const real *b, const int *rows, int S, int N, int IC, int OC, int OQ) {
    linear_forward_ld(out + OQ, OC, x, w + (size_t)OQ * IC, b ? b + OQ : NULL, N, IC, OC - OQ);
    linear_forward(qr, xr, w, b, S, IC, OQ);
    for (int i = 0; i < N; i++) memset(out + (size_t)i * OC, 0, sizeof(real) * (size_t)OQ);
    rows_scatter(out, OC, qr, rows, S, OQ);
}

void linear_backward_rows(real *dx, real *dxr, real *dw, real *db, real *qr, const real *dout,
                          const real *x, const real *xr, const real *w, const int *rows, int S,
                          int N, int IC, int OC, int OQ) {
    linear_backward_ld(dx, dw ? dw + (size_t)OQ * IC : NULL, db ? db + OQ : NULL, dout + OQ, OC,
                       x, w + (size_t)OQ * IC, N, IC, OC - OQ);
    rows_gather(qr, dout, OC, rows, S, OQ);
    linear_backward(dxr, dw, db, qr, xr, w, S, IC, OQ);
}
