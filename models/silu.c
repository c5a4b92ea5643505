/* silu.c: SiLU (swish), elementwise, forward and backward.
 *
 * silu(x) = x * sigmoid(x), as torch.nn.functional.silu. The linear-family
 * mixers use it as a feature map on q and k (DeltaNet) and as the output gate;
 * where it sits is the mixer's choice. silu_mul_* fuse the gated output norm's
 * y = a * silu(g) into one pass each way (linfam.c). */
#include <math.h>
#include <stddef.h>

#include "fastexp.h"
#include "kernels.h"

/* sigmoid without overflow for large |x|: e = exp(-|x|) <= 1, then 1/(1+e)
 * or e/(1+e); branch-free so that the loops below vectorise. */
static inline real sigmoid_of(real x) {
    real e = ML_EXP(-RABS(x));
    real r = 1 / (1 + e);
    return x >= 0 ? r : e * r;
}

/* out[i] = x[i] sigmoid(x[i]) for n elements; out may alias x. */
void silu_forward(real *out, const real *x, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) out[i] = x[i] * sigmoid_of(x[i]);
}

/* dx[i] += dout[i] * s (1 + x (1 - s)), s = sigmoid(x[i]). */
void silu_backward(real *dx, const real *dout, const real *x, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        real s = sigmoid_of(x[i]);
        dx[i] += dout[i] * s * (1 + x[i] * (1 - s));
    }
}

/* y[i] = silu(g[i]) * a[i]; y may alias a. */
void silu_mul_forward(real *y, const real *g, const real *a, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] = g[i] * sigmoid_of(g[i]) * a[i];
}

/* Backward of silu_mul_forward: dg[i] += dy a silu'(g) (accumulates), da[i] =
 * dy silu(g) (overwrites); da may alias dy. The same operations, in the same
 * order, as silu_backward on dy * a and silu_forward times dy. */
void silu_mul_backward(real *dg, real *da, const real *dy, const real *g, const real *a,
                       size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        real s = sigmoid_of(g[i]), t = dy[i] * a[i], d = dy[i];
        dg[i] += t * s * (1 + g[i] * (1 - s));
        da[i] = g[i] * s * d;
    }
}
