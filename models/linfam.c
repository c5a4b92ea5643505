/* linfam.c: pieces shared by the linear-family mixers (see linfam.h).
 *
 * Nothing here owns memory or parameters: each function works on the
 * caller's buffers, forward and backward, with the same accumulate-into-
 * gradients rule as the kernels. The recurrences themselves live in
 * linear_attention.c and gated_delta.c. */
#include "linfam.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels.h"
#include "parallel.h"

const char *const lf_fmap_names[] = {"identity", "elu1", "relu", "silu", "taylor", NULL};
const char *const lf_rule_names[] = {"additive", "delta", "decay", "gated_delta", NULL};
const char *const lf_onorm_names[] = {"none", "rms", "gated", NULL};
const char *const lf_form_names[] = {"chunkwise", "parallel", "recurrent", NULL};

int lf_rule_delta(int rule) { return rule == LF_DELTA || rule == LF_GATED_DELTA; }
int lf_rule_decay(int rule) { return rule == LF_DECAY || rule == LF_GATED_DELTA; }

int lf_fmap_width(int fmap, int D) { return fmap == LF_TAYLOR ? taylor_width(D) : D; }

/* The delta update S <- (I - beta phi phi^T) S + beta phi v^T scales the
 * state along phi by 1 - beta |phi|^2, so it grows once beta |phi|^2 > 2.
 * elu(x)+1 is near 1 in every coordinate of small pre-activations, which is
 * where training starts: |phi|^2 is about F and beta (a sigmoid of a small
 * projection) about 1/2, and with F > 4 the state grows geometrically along
 * the sequence from the first step (the other maps start near 0). */
int lf_delta_caution(int rule, int fmap, int qk_l2norm, int F, char *msg, size_t cap) {
    if (!lf_rule_delta(rule) || qk_l2norm || fmap != LF_ELU1 || F <= 4) return 0;
    snprintf(msg, cap,
             "rule: %s with feature_map elu1 and qk_l2norm false diverges in the first step: "
             "elu(x)+1 is near 1 in each of the %d key coordinates, so beta |phi(k)|^2 starts "
             "near %d and every token's update multiplies the state along phi(k) by about %d; "
             "set qk_l2norm: true (or feature_map identity, relu or silu)",
             lf_rule_names[rule], F, F / 2, 1 - F / 2);
    return 1;
}

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

/* Fewest elements of phi per thread worth a parallel region. */
#define LF_PHI_MIN_WORK (1 << 15)

/* One call of lf_phi_forward or lf_phi_backward, shared by its threads. */
typedef struct lf_phi_call {
    real *out, *rn, *dx, *tmp;
    const real *x, *dphi, *phi, *crn;
    int D, ldx, ldo, fmap;
} lf_phi_call;

static void lf_phi_forward_range(void *ctx, int r0, int r1, int slot) {
    const lf_phi_call *c = ctx;
    (void)slot;
    const real *x = c->x + (size_t)r0 * c->ldx;
    real *out = c->out + (size_t)r0 * c->ldo;
    if (!c->rn) {
        lf_map_forward(out, x, r1 - r0, c->D, c->ldx, c->ldo, c->fmap);
        return;
    }
    for (int r = 0; r < r1 - r0; r++) {
        real *o = out + (size_t)r * c->ldo;
        lf_map_forward(o, x + (size_t)r * c->ldx, 1, c->D, c->ldx, c->ldo, c->fmap);
        l2norm_forward(o, c->rn + r0 + r, o, 1, c->ldo, (real)LF_L2_EPS);
    }
}

static void lf_phi_backward_range(void *ctx, int r0, int r1, int slot) {
    const lf_phi_call *c = ctx;
    real *tmp = c->tmp ? c->tmp + (size_t)slot * c->ldo : NULL;
    for (int r = r0; r < r1; r++) {
        size_t ro = (size_t)r * c->ldo;
        real *dxr = c->dx + (size_t)r * c->ldx;
        const real *g = c->dphi + ro;
        if (c->crn) {
            memset(tmp, 0, sizeof(real) * (size_t)c->ldo);
            l2norm_backward(tmp, g, c->phi + ro, c->crn + r, 1, c->ldo);
            g = tmp;
        }
        const real *xr = c->x + (size_t)r * c->ldx;
        if (!c->crn && c->fmap != LF_SILU && c->fmap != LF_TAYLOR) {
            /* phi is the map's own output here: written, not added */
            featuremap_backward_set(dxr, g, xr, c->phi + ro, (size_t)c->D, lf_kind(c->fmap));
            continue;
        }
        /* zeroed here, where the row is about to be in cache anyway */
        memset(dxr, 0, sizeof(real) * (size_t)c->D);
        lf_map_backward(dxr, g, xr, 1, c->D, c->ldx, c->ldo, c->fmap);
    }
}

/* Rows are independent: a block of rows per thread (parallel.h), each
 * computed as on one thread. */
static int lf_phi_threads(int rows, int ldo) {
    return ml_par_threads(rows, (double)rows * ldo, LF_PHI_MIN_WORK);
}

void lf_phi_forward(real *out, real *rn, const real *x, int rows, int D, int ldx, int ldo,
                    int fmap) {
    lf_phi_call c = {.out = out, .rn = rn, .x = x, .D = D, .ldx = ldx, .ldo = ldo, .fmap = fmap};
    ml_par_ranges(rows, lf_phi_threads(rows, ldo), lf_phi_forward_range, &c);
}

void lf_phi_backward(real *dx, const real *dphi, const real *x, const real *phi, const real *rn,
                     int rows, int D, int ldx, int ldo, int fmap, real *tmp) {
    lf_phi_call c = {.dx = dx, .tmp = tmp, .x = x, .dphi = dphi, .phi = phi, .crn = rn, .D = D,
                     .ldx = ldx, .ldo = ldo, .fmap = fmap};
    ml_par_ranges(rows, lf_phi_threads(rows, ldo), lf_phi_backward_range, &c);
}

/* The tokens' q and k: token t's `rows` rows of D, D apart, start at
 * x + t ldt; their phi rows at out + t rows ldo. A block of tokens per thread. */
typedef struct lf_tokens_call {
    lf_phi_call row; /* the per-row arguments, pointers at token 0 */
    int rows, ldt;
} lf_tokens_call;

static void lf_tokens_forward_range(void *ctx, int t0, int t1, int slot) {
    const lf_tokens_call *c = ctx;
    lf_phi_call r = c->row;
    for (size_t t = (size_t)t0; t < (size_t)t1; t++) {
        r.out = c->row.out + t * c->rows * r.ldo;
        r.rn = c->row.rn ? c->row.rn + t * c->rows : NULL;
        r.x = c->row.x + t * c->ldt;
        lf_phi_forward_range(&r, 0, c->rows, slot);
    }
}

static void lf_tokens_backward_range(void *ctx, int t0, int t1, int slot) {
    const lf_tokens_call *c = ctx;
    lf_phi_call r = c->row;
    for (size_t t = (size_t)t0; t < (size_t)t1; t++) {
        const size_t o = t * c->rows * r.ldo;
        r.dx = c->row.dx + t * c->ldt;
        r.dphi = c->row.dphi + o;
        r.x = c->row.x + t * c->ldt;
        r.phi = c->row.phi + o;
        r.crn = c->row.crn ? c->row.crn + t * c->rows : NULL;
        lf_phi_backward_range(&r, 0, c->rows, slot);
    }
}

void lf_phi_forward_tokens(real *out, real *rn, const real *x, int N, int ldt, int rows, int D,
                           int ldo, int fmap) {
    lf_tokens_call c = {.row = {.out = out, .rn = rn, .x = x, .D = D, .ldx = D, .ldo = ldo,
                                .fmap = fmap},
                        .rows = rows, .ldt = ldt};
    ml_par_ranges(N, lf_phi_threads(N, rows * ldo), lf_tokens_forward_range, &c);
}

void lf_phi_backward_tokens(real *dx, const real *dphi, const real *x, const real *phi,
                            const real *rn, int N, int ldt, int rows, int D, int ldo, int fmap,
                            real *tmp) {
    lf_tokens_call c = {.row = {.dx = dx, .tmp = tmp, .x = x, .dphi = dphi, .phi = phi,
                                .crn = rn, .D = D, .ldx = D, .ldo = ldo, .fmap = fmap},
                        .rows = rows, .ldt = ldt};
    ml_par_ranges(N, lf_phi_threads(N, rows * ldo), lf_tokens_backward_range, &c);
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
    ml_par_zero(dO, nC * sizeof(real));
    if (st->kind == LF_ONORM_NONE) {
        linear_backward(dO, st->dwo, st->dbo, dout, o, st->wo, n, C, C);
        return;
    }
    ml_par_zero(st->dy, nC * sizeof(real));
    linear_backward(st->dy, st->dwo, st->dbo, dout, gated ? st->y : st->on, st->wo, n, C, C);
    if (gated) ml_par_zero(st->dgz, nC * sizeof(real));
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
    ml_par_zero(dO, (size_t)N * C * sizeof(real));
    rows_scatter_add(dO, dOr, rows, S, C);
}
