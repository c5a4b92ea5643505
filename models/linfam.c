/* linfam.c: pieces shared by the linear-family mixers (see linfam.h).
 *
 * Nothing here owns memory or parameters: each function works on the
 * caller's buffers, forward and backward, with the same accumulate-into-
 * gradients rule as the kernels. The recurrences themselves live in
 * linear_attention.c and gated_delta.c. */
#include "linfam.h"

#include <math.h>
#include <string.h>

#include "kernels.h"

const char *const lf_fmap_names[] = {"identity", "elu1", "relu", "silu", "taylor", NULL};
const char *const lf_rule_names[] = {"additive", "delta", "decay", "gated_delta", NULL};
const char *const lf_onorm_names[] = {"none", "rms", "gated", NULL};
const char *const lf_form_names[] = {"chunkwise", "parallel", "recurrent", NULL};

int lf_rule_delta(int rule) { return rule == LF_DELTA || rule == LF_GATED_DELTA; }
int lf_rule_decay(int rule) { return rule == LF_DECAY || rule == LF_GATED_DELTA; }

int lf_fmap_width(int fmap, int D) { return fmap == LF_TAYLOR ? taylor_width(D) : D; }

/* The elementwise maps of linear_attention.c by their lf index. */
static fmap_kind lf_kind(int fmap) {
    return fmap == LF_ELU1 ? FMAP_ELU1 : fmap == LF_RELU ? FMAP_RELU : FMAP_IDENTITY;
}

/* Row by row for the elementwise maps (rows need not be contiguous), one
 * call for the Taylor map. */
void lf_map_forward(real *out, const real *x, int rows, int D, int ldx, int ldo, int fmap) {
    if (fmap == LF_TAYLOR) {
        taylor_forward(out, x, rows, D, ldx, ldo);
        return;
    }
    for (int r = 0; r < rows; r++) {
        const real *xr = x + (size_t)r * ldx;
        real *o = out + (size_t)r * ldo;
        if (fmap == LF_SILU)
            silu_forward(o, xr, (size_t)D);
        else
            featuremap_forward(o, xr, (size_t)D, lf_kind(fmap));
    }
}

/* Backward of lf_map_forward, same layout. */
void lf_map_backward(real *dx, const real *dout, const real *x, int rows, int D, int ldx,
                     int ldo, int fmap) {
    if (fmap == LF_TAYLOR) {
        taylor_backward(dx, dout, x, rows, D, ldx, ldo);
        return;
    }
    for (int r = 0; r < rows; r++) {
        const real *xr = x + (size_t)r * ldx, *g = dout + (size_t)r * ldo;
        real *d = dx + (size_t)r * ldx;
        if (fmap == LF_SILU)
            silu_backward(d, g, xr, (size_t)D);
        else
            featuremap_backward(d, g, xr, (size_t)D, lf_kind(fmap));
    }
}

void lf_phi_forward(real *out, real *rn, const real *x, int rows, int D, int ldx, int ldo,
                    int fmap) {
    if (!rn) {
        lf_map_forward(out, x, rows, D, ldx, ldo, fmap);
        return;
    }
    for (int r = 0; r < rows; r++) {
        real *o = out + (size_t)r * ldo;
        lf_map_forward(o, x + (size_t)r * ldx, 1, D, ldx, ldo, fmap);
        l2norm_forward(o, rn + r, o, 1, ldo, (real)LF_L2_EPS);
    }
}

void lf_phi_backward(real *dx, const real *dphi, const real *x, const real *phi, const real *rn,
                     int rows, int D, int ldx, int ldo, int fmap, real *tmp) {
    for (int r = 0; r < rows; r++) {
        size_t ro = (size_t)r * ldo;
        real *dxr = dx + (size_t)r * ldx;
        const real *g = dphi + ro;
        if (rn) {
            memset(tmp, 0, sizeof(real) * (size_t)ldo);
            l2norm_backward(tmp, g, phi + ro, rn + r, 1, ldo);
            g = tmp;
        }
        /* zeroed here, where the row is about to be in cache anyway */
        memset(dxr, 0, sizeof(real) * (size_t)D);
        lf_map_backward(dxr, g, x + (size_t)r * ldx, 1, D, ldx, ldo, fmap);
    }
}

/* dt_h = exp(log dt_min + (h + 1/2)/H (log dt_max - log dt_min)), shift_h =
 * log(expm1(dt_h)), computed in double. */
void lf_dt_shift(real *shift, int H, double dt_min, double dt_max) {
    for (int h = 0; h < H; h++) {
        double dt = exp(log(dt_min) + (h + 0.5) / H * (log(dt_max) - log(dt_min)));
        shift[h] = (real)log(expm1(dt));
    }
}

/* sigmoid without overflow. */
static real lf_sigmoid(real x) {
    if (x >= 0) return 1 / (1 + REXP(-x));
    real e = REXP(x);
    return e / (1 + e);
}

/* torch.nn.functional.softplus with beta 1, threshold 20. */
static real lf_softplus(real x) { return x > 20 ? x : (real)log1p(exp((double)x)); }

void lf_beta_forward(real *beta, size_t n) {
    for (size_t i = 0; i < n; i++) beta[i] = lf_sigmoid(beta[i]);
}

void lf_beta_backward(real *dz, const real *dbeta, const real *beta, size_t n) {
    for (size_t i = 0; i < n; i++) dz[i] += dbeta[i] * beta[i] * (1 - beta[i]);
}

void lf_decay_forward(real *g, real *z, const real *A_log, const real *dt_bias,
                      const real *shift, int N, int H, int ld) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < ld; c++) {
            int h = c % H;
            size_t i = (size_t)n * ld + c;
            z[i] += dt_bias[h] + shift[h];
            g[i] = -REXP(A_log[h]) * lf_softplus(z[i]);
        }
}

/* softplus' = sigmoid (1 above the threshold, where softplus is the identity). */
void lf_decay_backward(real *dz, real *dA_log, real *ddt_bias, const real *dg, const real *g,
                       const real *z, const real *A_log, int N, int H, int ld) {
    for (int n = 0; n < N; n++)
        for (int c = 0; c < ld; c++) {
            int h = c % H;
            size_t i = (size_t)n * ld + c;
            real sp1 = z[i] > 20 ? 1 : lf_sigmoid(z[i]);
            dz[i] = -dg[i] * REXP(A_log[h]) * sp1;
            if (dA_log) dA_log[h] += dg[i] * g[i];
            if (ddt_bias) ddt_bias[h] += dz[i];
        }
}

void lf_outnorm_forward(real *y, real *on, real *rstd, const real *o, const real *w,
                        const real *gz, int N, int H, int Dv, int kind) {
    size_t n = (size_t)N * H * Dv;
    rmsnorm_forward(on, rstd, o, w, N * H, Dv, (real)LF_NORM_EPS);
    if (kind != LF_ONORM_GATED) {
        if (y != on) memcpy(y, on, n * sizeof(real));
        return;
    }
    silu_mul_forward(y, gz, on, n);
}

/* gated: y = on * silu(gz): dgz += dy on silu'(gz), d on = dy silu(gz); then
 * the RMSNorm backward from d on. */
void lf_outnorm_backward(real *dout_o, real *dw, real *dgz, const real *dy, const real *o,
                         const real *on, const real *rstd, const real *w, const real *gz,
                         int N, int H, int Dv, int kind, real *tmp) {
    size_t n = (size_t)N * H * Dv;
    const real *don = dy;
    if (kind == LF_ONORM_GATED) {
        silu_mul_backward(dgz, tmp, dy, gz, on, n);
        don = tmp;
    }
    rmsnorm_backward(dout_o, dw, don, o, w, rstd, N * H, Dv);
}

void lf_output_forward(const lf_outstage *st, real *out, const real *o, const real *x, int n) {
    const int C = st->H * st->Dv;
    const real *y = o;
    if (st->kind != LF_ONORM_NONE) {
        int gated = st->kind == LF_ONORM_GATED;
        if (gated) linear_forward(st->gz, x, st->wgate, NULL, n, C, C);
        real *yy = gated ? st->y : st->on;
        lf_outnorm_forward(yy, st->on, st->rstd, o, st->onw, st->gz, n, st->H, st->Dv, st->kind);
        y = yy;
    }
    linear_forward(out, y, st->wo, st->bo, n, C, C);
}

void lf_output_backward(const lf_outstage *st, real *dO, real *dx, const real *dout,
                        const real *o, const real *x, int n) {
    const int C = st->H * st->Dv;
    const size_t nC = (size_t)n * C;
    const int gated = st->kind == LF_ONORM_GATED;
    memset(dO, 0, nC * sizeof(real));
    if (st->kind == LF_ONORM_NONE) {
        linear_backward(dO, st->dwo, st->dbo, dout, o, st->wo, n, C, C);
        return;
    }
    memset(st->dy, 0, nC * sizeof(real));
    linear_backward(st->dy, st->dwo, st->dbo, dout, gated ? st->y : st->on, st->wo, n, C, C);
    if (gated) memset(st->dgz, 0, nC * sizeof(real));
    lf_outnorm_backward(dO, st->donw, st->dgz, st->dy, o, st->on, st->rstd, st->onw, st->gz, n,
                        st->H, st->Dv, st->kind, st->tmp);
    if (gated) linear_backward(dx, st->dwgate, NULL, st->dgz, x, st->wgate, n, C, C);
}

void lf_output_backward_rows(const lf_outstage *st, real *dO, real *dxr, real *xr, real *orow,
                             real *dOr, const real *dout, const real *o, const real *x,
                             const int *rows, int S, int N) {
    const int C = st->H * st->Dv;
    rows_gather(xr, x, C, rows, S, C);
    rows_gather(orow, o, C, rows, S, C);
    memset(dxr, 0, (size_t)S * C * sizeof(real));
    lf_output_backward(st, dOr, dxr, dout, orow, xr, S);
    memset(dO, 0, (size_t)N * C * sizeof(real));
    rows_scatter_add(dO, dOr, rows, S, C);
}
