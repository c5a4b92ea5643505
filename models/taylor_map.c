/* taylor_map.c: Based's 2nd-order Taylor feature map, forward and backward.
 *
 * Dimensions: n rows, D input width, F = 1 + D + D(D+1)/2 output width.
 *   phi(x) = [1, x / D^(1/4), x_i x_j c_ij (i <= j)],
 *   c_ii = 1 / sqrt(2D), c_ij = 1 / sqrt(D) (i < j),
 * so phi(q).phi(k) = 1 + q.k/sqrt(D) + (q.k)^2/(2D), the Taylor expansion of
 * exp(q.k/sqrt(D)) to second order. Based stores all D^2 products with
 * 1/sqrt(2D) each; keeping only the upper triangle (off-diagonal terms doubled
 * in weight, hence sqrt(2) larger) gives the same dot products with
 * 1 + D + D(D+1)/2 features (153 for D = 16). Row strides let the mixer read
 * q and k heads in place. Normalisation and where the map is used belong to
 * the mixer. */
#include <math.h>
#include <stddef.h>

#include "kernels.h"

/* Features per row: 1 + D + D(D+1)/2. */
int taylor_width(int D) { return 1 + D + D * (D + 1) / 2; }

/* phi of n rows: contract in kernels.h. */
void taylor_forward(real *out, const real *x, int n, int D, int ldx, int ldo) {
    const real c1 = (real)(1.0 / sqrt(sqrt((double)D)));
    const real cd = (real)(1.0 / sqrt(2.0 * D)), co = (real)(1.0 / sqrt((double)D));
    for (int r = 0; r < n; r++) {
        const real *xr = x + (size_t)r * ldx;
        real *o = out + (size_t)r * ldo;
        *o++ = 1;
        for (int i = 0; i < D; i++) *o++ = xr[i] * c1;
        for (int i = 0; i < D; i++) {
            *o++ = xr[i] * xr[i] * cd;
            for (int j = i + 1; j < D; j++) *o++ = xr[i] * xr[j] * co;
        }
    }
}

/* dx_i += c1 dphi_lin_i + 2 c_ii x_i dphi_ii + sum_{j != i} c_ij x_j dphi_ij. */
void taylor_backward(real *dx, const real *dout, const real *x, int n, int D, int ldx,
                     int ldo) {
    const real c1 = (real)(1.0 / sqrt(sqrt((double)D)));
    const real cd = (real)(1.0 / sqrt(2.0 * D)), co = (real)(1.0 / sqrt((double)D));
    for (int r = 0; r < n; r++) {
        const real *xr = x + (size_t)r * ldx, *g = dout + (size_t)r * ldo + 1;
        real *dxr = dx + (size_t)r * ldx;
        for (int i = 0; i < D; i++) dxr[i] += *g++ * c1;
        for (int i = 0; i < D; i++) {
            dxr[i] += 2 * cd * xr[i] * *g++;
            for (int j = i + 1; j < D; j++) {
                real gij = *g++ * co;
                dxr[i] += gij * xr[j];
                dxr[j] += gij * xr[i];
            }
        }
    }
}
