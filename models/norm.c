/* norm.c: LayerNorm and RMSNorm over the channel axis, forward and backward.
 *
 * Dimensions: N rows (usually B*T), C channels.
 * Row statistics are accumulated in double so that float training does not
 * lose the variance of rows with a large mean; everything stored stays `real`.
 * Choosing the norm and its eps is the model's business. */
#include <math.h>
#include <stddef.h>

#include "kernels.h"

/* out[N,C] = (x - mean) * rstd * w + b, rstd = 1/sqrt(var + eps) with the
 * biased variance (as torch.nn.LayerNorm). Saves mean[N] and rstd[N] for the
 * backward. out may alias x: each row is read completely before it is written. */
void layernorm_forward(real *out, real *mean, real *rstd, const real *x, const real *w,
                       const real *b, int N, int C, real eps) {
    for (int i = 0; i < N; i++) {
        const real *xi = x + (size_t)i * C;
        real *oi = out + (size_t)i * C;
        double s = 0.0;
        for (int c = 0; c < C; c++) s += xi[c];
        double m = s / C;
        /* two passes: the one-pass E[x^2] - E[x]^2 cancels badly */
        double v = 0.0;
        for (int c = 0; c < C; c++) {
            double d = xi[c] - m;
            v += d * d;
        }
        v /= C;
        real mr = (real)m;
        real rs = (real)(1.0 / sqrt(v + (double)eps));
        for (int c = 0; c < C; c++) oi[c] = (xi[c] - mr) * rs * w[c] + b[c];
        mean[i] = mr;
        rstd[i] = rs;
    }
}

/* With n = (x - mean) * rstd and g = dout * w (per row):
 *   dx += rstd * (g - mean(g) - n * mean(g n)),  dw += dout n,  db += dout.
 * mean and rstd must be the ones layernorm_forward saved for this x. Any
 * gradient may be NULL. */
void layernorm_backward(real *dx, real *dw, real *db, const real *dout, const real *x,
                        const real *w, const real *mean, const real *rstd, int N, int C) {
    for (int i = 0; i < N; i++) {
        const real *xi = x + (size_t)i * C;
        const real *di = dout + (size_t)i * C;
        real m = mean[i], rs = rstd[i];
        double sg = 0.0, sgn = 0.0;
        for (int c = 0; c < C; c++) {
            real n = (xi[c] - m) * rs;
            real g = di[c] * w[c];
            sg += g;
            sgn += (double)g * n;
            if (dw) dw[c] += di[c] * n;
            if (db) db[c] += di[c];
        }
        if (!dx) continue;
        real mg = (real)(sg / C), mgn = (real)(sgn / C);
        real *dxi = dx + (size_t)i * C;
        for (int c = 0; c < C; c++) {
            real n = (xi[c] - m) * rs;
            dxi[c] += rs * (di[c] * w[c] - mg - n * mgn);
        }
    }
}

/* out[N,C] = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps); saves rstd[N].
 * out may alias x. */
void rmsnorm_forward(real *out, real *rstd, const real *x, const real *w, int N, int C,
                     real eps) {
    for (int i = 0; i < N; i++) {
        const real *xi = x + (size_t)i * C;
        real *oi = out + (size_t)i * C;
        double s = 0.0;
        for (int c = 0; c < C; c++) s += (double)xi[c] * xi[c];
        real rs = (real)(1.0 / sqrt(s / C + (double)eps));
        for (int c = 0; c < C; c++) oi[c] = xi[c] * rs * w[c];
        rstd[i] = rs;
    }
}

/* With n = x * rstd and g = dout * w (per row):
 *   dx += rstd * (g - n * mean(g n)),  dw += dout n.
 * rstd must be the one rmsnorm_forward saved for this x. Either gradient may
 * be NULL. */
void rmsnorm_backward(real *dx, real *dw, const real *dout, const real *x, const real *w,
                      const real *rstd, int N, int C) {
    for (int i = 0; i < N; i++) {
        const real *xi = x + (size_t)i * C;
        const real *di = dout + (size_t)i * C;
        real rs = rstd[i];
        double sgn = 0.0;
        for (int c = 0; c < C; c++) {
            real n = xi[c] * rs;
            sgn += (double)(di[c] * w[c]) * n;
            if (dw) dw[c] += di[c] * n;
        }
        if (!dx) continue;
        real mgn = (real)(sgn / C);
        real *dxi = dx + (size_t)i * C;
        for (int c = 0; c < C; c++) dxi[c] += rs * (di[c] * w[c] - xi[c] * rs * mgn);
    }
}
