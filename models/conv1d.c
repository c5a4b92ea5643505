/* conv1d.c: short causal depthwise convolution over time, forward and backward.
 *
 * Dimensions: B batch, T time, C channels, K kernel taps.
 * Each channel has its own K taps; tap K-1 weighs the current token and tap j
 * the token K-1-j steps back, with zeros before t = 0 (torch Conv1d with
 * groups=C, padding=K-1, first T outputs). K is a handful (3-4), so plain loops
 * beat any GEMM lowering. Whether the model uses the conv, and its init, is
 * the model's business. */
#include <stddef.h>

#include "kernels.h"

/* out[b,t,c] = bias[c] + sum_{j<K, s=t-(K-1)+j >= 0} w[c,j] x[b,s,c].
 * x,out [B,T,C]; w [C,K]; bias [C] or NULL. out is overwritten and must not
 * alias x. T < K is fine: the missing past is zero. */
void conv1d_causal_forward(real *out, const real *x, const real *w, const real *bias,
                           int B, int T, int C, int K) {
    for (int b = 0; b < B; b++) {
        const real *xb = x + (size_t)b * T * C;
        real *ob = out + (size_t)b * T * C;
        for (int t = 0; t < T; t++) {
            real *o = ob + (size_t)t * C;
            for (int c = 0; c < C; c++) o[c] = bias ? bias[c] : 0;
            /* skip the taps that would read before t = 0 */
            int j0 = K - 1 - t > 0 ? K - 1 - t : 0;
            for (int j = j0; j < K; j++) {
                const real *xs = xb + (size_t)(t - (K - 1) + j) * C;
                for (int c = 0; c < C; c++) o[c] += w[(size_t)c * K + j] * xs[c];
            }
        }
    }
}

/* dx[b,s,c] += sum_j w[c,j] dout[b, s+(K-1)-j, c]; dw[c,j] += sum_{b,t}
 * dout[b,t,c] x[b, t-(K-1)+j, c]; dbias[c] += sum_{b,t} dout[b,t,c], with
 * out-of-range times dropped. Any gradient may be NULL. */
void conv1d_causal_backward(real *dx, real *dw, real *dbias, const real *dout,
                            const real *x, const real *w, int B, int T, int C, int K) {
    for (int b = 0; b < B; b++) {
        const real *xb = x + (size_t)b * T * C;
        const real *db = dout + (size_t)b * T * C;
        real *dxb = dx ? dx + (size_t)b * T * C : NULL;
        for (int t = 0; t < T; t++) {
            const real *d = db + (size_t)t * C;
            if (dbias)
                for (int c = 0; c < C; c++) dbias[c] += d[c];
            int j0 = K - 1 - t > 0 ? K - 1 - t : 0;
            for (int j = j0; j < K; j++) {
                size_t s = (size_t)(t - (K - 1) + j) * C;
                if (dxb)
                    for (int c = 0; c < C; c++) dxb[s + c] += w[(size_t)c * K + j] * d[c];
                if (dw)
                    for (int c = 0; c < C; c++) dw[(size_t)c * K + j] += d[c] * xb[s + c];
            }
        }
    }
}
