/* l2norm.c: L2 normalisation of rows, forward and backward.
 *
 * Dimensions: N rows, D width. y = x / sqrt(|x|^2 + eps): the delta rules
 * normalise q and k per head so that I - beta k k^T stays a contraction for
 * beta in (0, 2). The sum of squares is accumulated in double, in vector
 * lanes (OpenMP simd) then added across them. Which rows are
 * normalised (per head, after which feature map) is the mixer's business. */
#include <math.h>
#include <stddef.h>

#include "kernels.h"

/* y[N,D] = x rn, rn[N] = 1/sqrt(sum_j x_j^2 + eps). y may alias x (each row
 * is read before it is written). */
void l2norm_forward(real *y, real *rn, const real *x, int N, int D, real eps) {
    for (int i = 0; i < N; i++) {
        const real *xi = x + (size_t)i * D;
        real *yi = y + (size_t)i * D;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < D; j++) s += (double)xi[j] * xi[j];
        real r = (real)(1.0 / sqrt(s + (double)eps));
        for (int j = 0; j < D; j++) yi[j] = xi[j] * r;
        rn[i] = r;
    }
}

/* With y = x rn: dy/dx = rn (I - y y^T), exactly (eps included), so
 * dx += rn (dy - y (y.dy)). Reads the forward's output, which is what an
 * in-place forward leaves. */
void l2norm_backward(real *dx, const real *dy, const real *y, const real *rn, int N, int D) {
    for (int i = 0; i < N; i++) {
        const real *yi = y + (size_t)i * D, *gi = dy + (size_t)i * D;
        real *dxi = dx + (size_t)i * D;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < D; j++) s += (double)yi[j] * gi[j];
        for (int j = 0; j < D; j++) dxi[j] += rn[i] * (gi[j] - yi[j] * (real)s);
    }
}
