/* fastexp.h: exp(x) in float, written to vectorise, for the element-wise
 * kernels (softmax rows, cross-entropy, feature maps, SiLU).
 *
 * Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6
 * polynomial for e^r (relative error below 2 ulp on that range), and 2^n built
 * in the exponent bits. Exact where it matters to a softmax: exp(0) = 1,
 * results below FLT_MIN (x < -87.3) are 0, NaN stays NaN. Meant for x <= 0
 * (scores minus their max, -|x|); above 88 it saturates at exp(88) instead of
 * overflowing. The double build keeps libm's exp (gradient checks); the
 * kernels choose through ML_EXP (below). tests/test_perf.c checks it against
 * libm. */
#ifndef MEMLAB_FASTEXP_H
#define MEMLAB_FASTEXP_H

#include <stdint.h>

static inline float expf_fast(float x) {
    const float lo = -87.33654f, hi = 88.0f;
    float xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    /* n = round(x / ln2) by the 1.5 * 2^23 trick (round to nearest even) */
    float t = xc * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    /* 2^n; a NaN x leaves n NaN, which must not reach the integer
     * conversion (y is NaN already and stays so) */
    union {
        float f;
        uint32_t u;
    } s;
    s.u = (uint32_t)((int32_t)(n == n ? n : 0.0f) + 127) << 23;
    y = y * s.f;
    return x < lo ? 0.0f : y;
}

/* The kernels' exp, for arguments <= 0 (shifted scores, -|x|, sums of decay
 * gates): libm's in the double build (gradient checks), expf_fast in the float
 * build, where the element-wise loops vectorise with it. A file using it
 * includes math.h. */
#ifdef MEMLAB_DOUBLE
#define ML_EXP(x) exp(x)
#else
#define ML_EXP(x) expf_fast(x)
#endif

#endif
