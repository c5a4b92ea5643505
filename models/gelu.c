/* gelu.c: the exact (erf) GELU, elementwise, forward and backward.
 *
 * Matches torch.nn.functional.gelu with approximate='none'; the tanh
 * approximation is deliberately not offered, so the C model and the PyTorch
 * twin agree to rounding. Where GELU sits in the MLP is the model's choice. */
#include <math.h>
#include <stddef.h>

#include "kernels.h"

#define GELU_INV_SQRT2 0.70710678118654752440
#define GELU_INV_SQRT_2PI 0.39894228040143267794

/* out[i] = x[i] * Phi(x[i]) = 0.5 x (1 + erf(x / sqrt 2)) for n elements.
 * out may alias x. */
void gelu_forward(real *out, const real *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        real v = x[i];
        out[i] = (real)0.5 * v * ((real)1 + RERF(v * (real)GELU_INV_SQRT2));
    }
}

/* dx[i] += dout[i] * (Phi(x) + x phi(x)), Phi(x) = 0.5 (1 + erf(x / sqrt 2)),
 * phi(x) = exp(-x^2/2) / sqrt(2 pi). x is the forward's input, not its
 * output, so the forward must not have overwritten it in place. */
void gelu_backward(real *dx, const real *dout, const real *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        real v = x[i];
        real cdf = (real)0.5 * ((real)1 + RERF(v * (real)GELU_INV_SQRT2));
        real pdf = REXP((real)-0.5 * v * v) * (real)GELU_INV_SQRT_2PI;
        dx[i] += dout[i] * (cdf + v * pdf);
    }
}
