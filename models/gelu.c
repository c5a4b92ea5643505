/* gelu.c: the exact (erf) GELU, elementwise, forward and backward.
 *
 * Matches torch.nn.functional.gelu with approximate='none'; the tanh
 * approximation is deliberately not offered, so the C model and the PyTorch
 * twin agree to rounding. Where GELU sits in the MLP is the model's choice.
 *
 * Speed: the float build takes Phi and exp from fasterf.h, inlined into
 * vectorised loops (libm's erff is a scalar call per element); the double
 * build, which the gradient checks run, keeps libm's erf and exp. */
#include <math.h>
#include <stddef.h>

#include "kernels.h"

#ifdef MEMLAB_DOUBLE
#define GELU_CDF(x) (0.5 * (1 + erf((x) * 0.70710678118654752440)))
#define GELU_EXP(x) exp(x)
#else
#include "fasterf.h"
#define GELU_CDF(x) normcdf_fast(x)
#define GELU_EXP(x) expf_fast(x)
#endif

#define GELU_INV_SQRT_2PI 0.39894228040143267794

/* out[i] = x[i] * Phi(x[i]) = 0.5 x (1 + erf(x / sqrt 2)) for n elements.
 * out may alias x. */
void gelu_forward(real *out, const real *x, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        real v = x[i];
        out[i] = v * GELU_CDF(v);
    }
}

/* dx[i] += dout[i] * (Phi(x) + x phi(x)), Phi(x) = 0.5 (1 + erf(x / sqrt 2)),
 * phi(x) = exp(-x^2/2) / sqrt(2 pi). x is the forward's input, not its
 * output, so the forward must not have overwritten it in place. */
void gelu_backward(real *dx, const real *dout, const real *x, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        real v = x[i];
        real pdf = GELU_EXP((real)-0.5 * v * v) * (real)GELU_INV_SQRT_2PI;
        dx[i] += dout[i] * (GELU_CDF(v) + v * pdf);
    }
}
