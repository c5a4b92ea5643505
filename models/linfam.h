/* linfam.h: pieces shared by the linear-family mixers (mixer_linear.c for
 * linear, deltanet, gated_deltanet, mamba2 and based; mixer_mom.c for the
 * mixture of memories; mixer_memcache.c for Memory Caching): the names of the
 * choices, the feature map on q and k, the per-head gates computed from the
 * block input, the output norm and the output stage around it.
 *
 * Gates (per head, from the block input x, with z = x W^T):
 *   beta = sigmoid(z_beta)                                  (delta rules)
 *   g = -exp(A_log) * softplus(z_a + dt_bias + shift_h)     (decay rules; g <= 0)
 * shift_h = softplus^{-1}(dt_h) with dt_h log-spaced over [dt_min, dt_max]
 * across heads: with dt_bias and A_log starting at zero this is Mamba-2's
 * initialisation of the time step (A starts at 1 instead of U[1,16]). A
 * constant shift is exactly a different initial value of dt_bias, which has
 * no weight decay, so AdamW follows the same path either way.
 * Output norm (per head, weight [Dv] shared by the heads, eps LF_NORM_EPS):
 *   rms:   y = RMSNorm(o) * w;   gated: y = RMSNorm(o) * w * silu(x W_gate^T)
 * (norm before gate, as FLA's FusedRMSNormGated). */
#ifndef MEMLAB_LINFAM_H
#define MEMLAB_LINFAM_H

#include <stddef.h>

#include "real.h"

enum { LF_IDENTITY = 0, LF_ELU1, LF_RELU, LF_SILU, LF_TAYLOR };   /* lf_fmap_names */
enum { LF_ADDITIVE = 0, LF_DELTA, LF_DECAY, LF_GATED_DELTA };     /* lf_rule_names */
enum { LF_ONORM_NONE = 0, LF_ONORM_RMS, LF_ONORM_GATED };         /* lf_onorm_names */
enum { LF_CHUNKWISE = 0, LF_PARALLEL, LF_RECURRENT };             /* lf_form_names */

extern const char *const lf_fmap_names[];
extern const char *const lf_rule_names[];
extern const char *const lf_onorm_names[];
extern const char *const lf_form_names[];

#define LF_L2_EPS 1e-6   /* inside the square root of the q, k L2 norm */
#define LF_NORM_EPS 1e-5 /* inside the square root of the output RMSNorm */

/* Does the rule use beta (delta) / g (decay)? */
int lf_rule_delta(int rule);
int lf_rule_decay(int rule);
/* Width of the feature map's output for input width D (taylor: 1+D+D(D+1)/2). */
int lf_fmap_width(int fmap, int D);
/* The mixers' caution (mixer.h) for a delta rule on keys of width F that
 * nothing bounds: elu1 without qk_l2norm. Returns 1 with the warning in
 * msg[cap], or 0. */
int lf_delta_caution(int rule, int fmap, int qk_l2norm, int F, char *msg, size_t cap);

/* phi of `rows` rows of width D (row r at x + r*ldx) into out + r*ldo. */
void lf_map_forward(real *out, const real *x, int rows, int D, int ldx, int ldo, int fmap);
/* dx += J^T dout for the same rows. */
void lf_map_backward(real *dx, const real *dout, const real *x, int rows, int D, int ldx,
                     int ldo, int fmap);

/* q and k as the delta rules see them: lf_map_forward, then, with rn not
 * NULL, each row L2-normalised in place while it is in cache (rn[r] its
 * 1/sqrt(|phi_r|^2 + LF_L2_EPS), as l2norm_forward). Rows of the output are
 * contiguous: ldo = lf_fmap_width(fmap, D). */
void lf_phi_forward(real *out, real *rn, const real *x, int rows, int D, int ldx, int ldo,
                    int fmap);
/* dx = J^T dphi of lf_phi_forward, row by row (each row's D columns are
 * overwritten, the rest of ldx untouched): phi and rn what it wrote (rn NULL:
 * no norm); tmp holds ldo reals per thread slot (ml_par_slots() of them,
 * parallel.h). Both split large calls over the threads, a block of rows each. */
void lf_phi_backward(real *dx, const real *dphi, const real *x, const real *phi, const real *rn,
                     int rows, int D, int ldx, int ldo, int fmap, real *tmp);

/* The same for the q and k of N tokens (q, k of the delta rules): token t's
 * `rows` rows of D, D apart, start at x + t ldt (dx likewise), its phi rows
 * at out + t rows ldo (rn + t rows). */
void lf_phi_forward_tokens(real *out, real *rn, const real *x, int N, int ldt, int rows, int D,
                           int ldo, int fmap);
void lf_phi_backward_tokens(real *dx, const real *dphi, const real *x, const real *phi,
                            const real *rn, int N, int ldt, int rows, int D, int ldo, int fmap,
                            real *tmp);

/* shift[H]: per-head softplus^{-1} of the log-spaced initial time step. */
void lf_dt_shift(real *shift, int H, double dt_min, double dt_max);
/* In place: beta[n] = sigmoid(beta[n]). */
void lf_beta_forward(real *beta, size_t n);
/* dz[n] += dbeta * beta (1 - beta). */
void lf_beta_backward(real *dz, const real *dbeta, const real *beta, size_t n);
/* z[N,ld] in place += dt_bias[h] + shift[h], h = column % H; then
 * g = -exp(A_log[h]) softplus(z) (torch's softplus: z above 20 is kept). */
void lf_decay_forward(real *g, real *z, const real *A_log, const real *dt_bias,
                      const real *shift, int N, int H, int ld);
/* dz[N,ld] = dg * dg/dz (overwritten: it is the gradient of the projection's
 * output), dA_log[H] += sum dg g, ddt_bias[H] += sum dz. z is the shifted z. */
void lf_decay_backward(real *dz, real *dA_log, real *ddt_bias, const real *dg, const real *g,
                       const real *z, const real *A_log, int N, int H, int ld);

/* Output norm of o [N, H*Dv] into y (rms or gated; none is the caller's
 * shortcut y = o): on [N,H*Dv] the normalised o, rstd [N*H]; gz [N,H*Dv] the
 * gate's pre-activation (gated only). */
void lf_outnorm_forward(real *y, real *on, real *rstd, const real *o, const real *w,
                        const real *gz, int N, int H, int Dv, int kind);
/* do += d/do, dw += d/dw, dgz += d/dgz (gated) of dy . y; tmp [N,H*Dv]. */
void lf_outnorm_backward(real *dout_o, real *dw, real *dgz, const real *dy, const real *o,
                         const real *on, const real *rstd, const real *w, const real *gz,
                         int N, int H, int Dv, int kind, real *tmp);

/* The output stage of a linear-family mixer on n rows (C = H*Dv):
 *   y = o (kind none) or OutNorm(o) (rms, gated; gated computes the gate's
 *   pre-activation gz = x Wgate^T itself); out[n,C] = y Wo^T + bo.
 * The parameters, their gradients, what forward saves and backward's scratch,
 * absent pieces NULL. */
typedef struct lf_outstage {
    int H, Dv, kind;                   /* kind: lf_onorm_names */
    const real *onw, *wgate, *wo, *bo; /* onorm.w [Dv], wgate [C,C], wo [C,C], bo [C] */
    real *donw, *dwgate, *dwo, *dbo;   /* their gradients (backward accumulates) */
    real *on, *rstd, *gz, *y;          /* saved [n,C], [n*H], [n,C], [n,C] (y: gated) */
    real *dy, *dgz, *tmp;              /* backward scratch [n,C] each */
} lf_outstage;
/* out[n,C] from o[n,C] and the rows' inputs x[n,C] (read by the gate). */
void lf_output_forward(const lf_outstage *st, real *out, const real *o, const real *x, int n);
/* dO[n,C] = d o (overwritten), dx[n,C] += the gate's part, parameter
 * gradients +=, given dout[n,C] and forward's o, x on the same n rows. */
void lf_output_backward(const lf_outstage *st, real *dO, real *dx, const real *dout,
                        const real *o, const real *x, int n);
/* The same when forward ran on S rows (ascending flat indices) of N: from
 * dout[S,C], dO[N,C] = d o at the rows and zero elsewhere; xr[S,C] receives
 * the rows' x and dxr[S,C] their d x from the gate (overwritten; the caller
 * adds its own rows' parts and scatters it); orow, dOr [S,C] scratch. */
void lf_output_backward_rows(const lf_outstage *st, real *dO, real *dxr, real *xr, real *orow,
                             real *dOr, const real *dout, const real *o, const real *x,
                             const int *rows, int S, int N);

#endif
