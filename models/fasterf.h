/* fasterf.h: erf and the standard normal CDF in float, written to vectorise,
 * for GELU (gelu.c). libm's erff is a scalar call per element; these inline
 * into OpenMP simd loops.
 *
 * |z| < 1: erf(z) = z P(z^2), P of degree 6, a least-squares fit of erf(z)/z
 * at Chebyshev nodes of [0, 1]. |z| >= 1: erfc(z) = t exp(-z^2 + R(t)) with
 * t = 1 / (1 + z/2) (the substitution of Numerical Recipes' erfcc), R of
 * degree 7 fitted to log(erfc(z) / t) + z^2 at Chebyshev nodes of [1, 10];
 * the exp is expf_fast. Errors against double erf (tests/test_perf.c): erf
 * within 4 ulps, and the CDF's lower tail erfc(|z|)/2 is computed directly,
 * not as 1 + erf(z), so it keeps its relative accuracy (within 4 ulps times
 * 1 + x^2/2, the rounding of z^2 growing with it: 1.5e-5 at x = -12.9) down to
 * where exp underflows, about x = -13, where 1 + erff(x/sqrt 2) is 0 already
 * from x = -5.5. NaN stays NaN. The
 * double build keeps libm's erf (gradient checks). */
#ifndef MEMLAB_FASTERF_H
#define MEMLAB_FASTERF_H

#include "fastexp.h"

/* z P(z^2) = erf(z), for |z| < 1. */
static inline float erf_small_fast(float z) {
    float s = z * z;
    float p = 7.898209878476337e-05f;
    p = p * s + -8.024353883229196e-04f;
    p = p * s + 5.190053489059210e-03f;
    p = p * s + -2.685480937361717e-02f;
    p = p * s + 1.128361225128174e-01f;
    p = p * s + -3.761262893676758e-01f;
    p = p * s + 1.128379225730896f;
    return z * p;
}

/* erfc(a) for a >= 1 (any a >= 0 gives a finite value, accurate from 1). */
static inline float erfc_tail_fast(float a) {
    float t = 1.0f / (1.0f + 0.5f * a);
    float r = -1.461382210254669e-01f;
    r = r * t + 6.569120287895203e-01f;
    r = r * t + -9.263994693756104e-01f;
    r = r * t + 3.324032425880432e-01f;
    r = r * t + -4.653203487396240e-02f;
    r = r * t + 3.986327052116394e-01f;
    r = r * t + 9.976637959480286e-01f;
    r = r * t + -1.265415430068970f;
    return t * expf_fast(r - a * a);
}

static inline float erff_fast(float z) {
    float a = z < 0 ? -z : z;
    float tail = 1.0f - erfc_tail_fast(a);
    tail = z < 0 ? -tail : tail;
    return a < 1.0f ? erf_small_fast(z) : (a == a ? tail : z);
}

/* Phi(x) = (1 + erf(x / sqrt 2)) / 2, the standard normal CDF. */
static inline float normcdf_fast(float x) {
    float z = x * 0.70710678118654752f, a = z < 0 ? -z : z;
    float half_c = 0.5f * erfc_tail_fast(a);
    float tail = z < 0 ? half_c : 1.0f - half_c;
    return a < 1.0f ? 0.5f + 0.5f * erf_small_fast(z) : (a == a ? tail : x);
}

#endif
