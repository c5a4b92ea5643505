/* silu.c: SiLU (swish), elementwise, forward and backward.
 *
 * silu(x) = x * sigmoid(x), as torch.nn.functional.silu. The linear-family
 * mixers use it as a feature map on q and k (DeltaNet) and as the output gate;
 * where it sits is the mixer's choice. */
#include <math.h>
#include <stddef.h>

#include "kernels.h"

/* sigmoid without overflow for large |x|. */
static real sigmoid_of(real x) {
    if (x >= 0) return 1 / (1 + REXP(-x));
    real e = REXP(x);
    return e / (1 + e);
}

/* out[i] = x[i] sigmoid(x[i]) for n elements; out may alias x. */
void silu_forward(real *out, const real *x, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = x[i] * sigmoid_of(x[i]);
}

/* dx[i] += dout[i] * s (1 + x (1 - s)), s = sigmoid(x[i]). */
void silu_backward(real *dx, const real *dout, const real *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        real s = sigmoid_of(x[i]);
        dx[i] += dout[i] * s * (1 + x[i] * (1 - s));
    }
}
