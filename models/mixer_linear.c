/* mixer_linear.c: the fixed-state linear-attention family as mixers: linear
 * (Katharopoulos et al. 2020), deltanet, gated_deltanet, mamba2 (scalar decay)
 * and based. One implementation; each table entry has its own defaults and
 * every key works in every entry (`rule` switches the update rule).
 *
 *   qkv = x Wqkv^T (+ bqkv)      q, k: H heads of Dk (feature_dim, default C/H);
 *                                v: H heads of Dv = C/H
 *   [short_conv: qkv = causal depthwise conv of qkv (no bias, no activation)]
 *   phi_q, phi_k = feature map (identity, elu1, relu, silu, taylor) per head,
 *                  then L2-normalised per head when qk_l2norm
 *   beta = sigmoid(x Wbeta^T), g = -exp(A_log) softplus(x Wdecay^T + dt_bias + shift)
 *   per head: additive  S_t = S_{t-1} + phi_k v^T     [/ (phi_q . z_t + eps) if normalize]
 *             decay     S_t = e^{g_t} S_{t-1} + phi_k v^T
 *             delta     S_t = S_{t-1} + beta phi_k (v - S_{t-1}^T phi_k)^T
 *             gated_delta  S_t = e^{g_t} (I - beta phi_k phi_k^T) S_{t-1} + beta phi_k v^T
 *             o_t = S_t^T phi_q
 *   y = o, or RMSNorm per head (rms), or RMSNorm(o) * silu(x Wgate^T) (gated)
 *   out = y Wo^T + bo
 *
 * The additive rule runs on linear_attention.c (recurrent, parallel or
 * chunkwise, with the normaliser); the others on gated_delta.c (recurrent or
 * chunkwise; the delta rules through the WY form). Gates and the output norm
 * are in linfam.c. Given rows (the last layer under a head that reads a few
 * rows), q, the gate, the output norm and the output projection run on those
 * rows only. This file owns the parameter list, the wiring and the
 * state size: per head F x Dv (F = feature width: Dk, or 1+Dk+Dk(Dk+1)/2 for
 * taylor) plus F for the normaliser, plus (short_conv - 1) past rows of the
 * qkv projection that the convolution must keep. */
#include <stddef.h>
#include <string.h>

#include "kernels.h"
#include "linfam.h"
#include "mixer.h"
#include "parallel.h"

typedef struct linear_cfg {
    int heads;
    int feature_map; /* lf_fmap_names */
    int normalize;
    double eps;
    int chunk;
    int form;        /* lf_form_names */
    int qkv_bias;
    int rule;        /* lf_rule_names */
    int feature_dim; /* per-head width of q and k, 0 = d_model / heads */
    int qk_l2norm;
    int short_conv;  /* taps, 0 = off */
    int out_norm;    /* lf_onorm_names */
    double dt_min, dt_max;
} linear_cfg;

/* The keys, with the defaults that differ per entry as arguments. */
#define LINFAM_FIELDS(RULE, FMAP, NORMALIZE, EPS, FDIM, L2, ONORM)                             \
    {                                                                                          \
        {"heads", FT_INT, offsetof(linear_cfg, heads), 1, 4096, NULL, "1",                     \
         "heads; d_model must be divisible by heads"},                                         \
        {"rule", FT_ENUM, offsetof(linear_cfg, rule), 0, 0, lf_rule_names, RULE,               \
         "state update: additive (linear attention), delta (DeltaNet), decay (Mamba-2 scalar " \
         "decay), gated_delta (gated DeltaNet)"},                                              \
        {"feature_map", FT_ENUM, offsetof(linear_cfg, feature_map), 0, 0, lf_fmap_names, FMAP, \
         "feature map on q and k: identity, elu1 (elu(x)+1), relu, silu, taylor (Based's "     \
         "2nd-order Taylor map, width 1+d+d(d+1)/2)"},                                        \
        {"feature_dim", FT_INT, offsetof(linear_cfg, feature_dim), 0, 256, NULL, FDIM,         \
         "per-head width d of q and k before the feature map (0 = d_model/heads)"},           \
        {"qk_l2norm", FT_BOOL, offsetof(linear_cfg, qk_l2norm), 0, 1, NULL, L2,                \
         "L2-normalise q and k per head after the feature map"},                               \
        {"normalize", FT_BOOL, offsetof(linear_cfg, normalize), 0, 1, NULL, NORMALIZE,         \
         "divide by phi(q).z + eps (Katharopoulos; additive rule only); false: raw numerator"}, \
        {"eps", FT_REAL, offsetof(linear_cfg, eps), 0, 1, NULL, EPS,                           \
         "added to the normaliser's denominator"},                                             \
        {"out_norm", FT_ENUM, offsetof(linear_cfg, out_norm), 0, 0, lf_onorm_names, ONORM,     \
         "output norm per head: none, rms (RMSNorm), gated (RMSNorm(o) * silu(x Wgate))"},     \
        {"short_conv", FT_INT, offsetof(linear_cfg, short_conv), 0, 16, NULL, "0",             \
         "taps of a causal depthwise conv on q, k, v inside the mixer (0 = off; the block's "  \
         "model.conv is separate)"},                                                           \
        {"dt_min", FT_REAL, offsetof(linear_cfg, dt_min), 1e-6, 10, NULL, "0.001",             \
         "decay rules: smallest initial time step (heads log-spaced from dt_min to dt_max)"},  \
        {"dt_max", FT_REAL, offsetof(linear_cfg, dt_max), 1e-6, 10, NULL, "0.1",               \
         "decay rules: largest initial time step"},                                            \
        {"chunk", FT_INT, offsetof(linear_cfg, chunk), 1, 1e6, NULL, "64",                     \
         "chunk length of the chunkwise form (and checkpoint spacing of the recurrent one)"},  \
        {"form", FT_ENUM, offsetof(linear_cfg, form), 0, 0, lf_form_names, "chunkwise",        \
         "computation: chunkwise (GEMM, fast), parallel (masked T x T, additive only), "       \
         "recurrent (per token)"},                                                             \
        {"qkv_bias", FT_BOOL, offsetof(linear_cfg, qkv_bias), 0, 1, NULL, "false",             \
         "bias on the q, k, v projection"},                                                    \
        {NULL, 0, 0, 0, 0, NULL, NULL, NULL},                                                  \
    }

static const ml_field linear_fields[] =
    LINFAM_FIELDS("additive", "elu1", "true", "1e-6", "0", "false", "none");
static const ml_field deltanet_fields[] =
    LINFAM_FIELDS("delta", "silu", "false", "1e-6", "0", "true", "rms");
static const ml_field gated_deltanet_fields[] =
    LINFAM_FIELDS("gated_delta", "silu", "false", "1e-6", "0", "true", "gated");
static const ml_field mamba2_fields[] =
    LINFAM_FIELDS("decay", "silu", "false", "1e-6", "0", "false", "gated");
static const ml_field based_fields[] =
    LINFAM_FIELDS("additive", "taylor", "true", "1e-12", "16", "false", "none");

/* Sizes of one call, derived from the config. */
typedef struct lf_dims {
    int B, T, C, N, H, Dk, Dv, F;
    int Cq, Cp;         /* H*Dk; width of the qkv projection 2*Cq + C */
    int HF;             /* H*F: one of phi_q, phi_k per token */
    int delta, decay, conv, gated, onorm;
} lf_dims;

static lf_dims lf_dims_of(const linear_cfg *c, int B, int T, int C) {
    lf_dims d;
    memset(&d, 0, sizeof d);
    d.B = B, d.T = T, d.C = C, d.N = B * T, d.H = c->heads;
    d.Dv = C / c->heads;
    d.Dk = c->feature_dim > 0 ? c->feature_dim : d.Dv;
    d.F = lf_fmap_width(c->feature_map, d.Dk);
    d.Cq = d.H * d.Dk;
    d.Cp = 2 * d.Cq + C;
    d.HF = d.H * d.F;
    d.delta = lf_rule_delta(c->rule);
    d.decay = lf_rule_decay(c->rule);
    d.conv = c->short_conv;
    d.onorm = c->out_norm != LF_ONORM_NONE;
    d.gated = c->out_norm == LF_ONORM_GATED;
    return d;
}

static int linear_validate(const void *cfg, int C, ml_error *e) {
    const linear_cfg *c = cfg;
    if (C % c->heads != 0)
        return ML_FAIL(e, "heads: d_model %d is not divisible by heads %d", C, c->heads);
    if (c->rule != LF_ADDITIVE && c->normalize)
        return ML_FAIL(e, "normalize: only the additive rule has the normaliser; set "
                          "normalize: false for rule %s", lf_rule_names[c->rule]);
    if (c->rule != LF_ADDITIVE && c->form == LF_PARALLEL)
        return ML_FAIL(e, "form: parallel exists for the additive rule only; use chunkwise "
                          "or recurrent for rule %s", lf_rule_names[c->rule]);
    if (c->dt_min > c->dt_max)
        return ML_FAIL(e, "dt_min: %g is larger than dt_max %g", c->dt_min, c->dt_max);
    return 0;
}

static int linear_caution(const void *cfg, int C, char *msg, size_t cap) {
    const linear_cfg *c = cfg;
    lf_dims d = lf_dims_of(c, 1, 1, C);
    return lf_delta_caution(c->rule, c->feature_map, c->qk_l2norm, d.F, msg, cap);
}

static void linear_declare(const void *cfg, int C, ml_param_sink *s) {
    const linear_cfg *c = cfg;
    lf_dims d = lf_dims_of(c, 1, 1, C);
    param_declare(s, "wqkv", d.Cp, C, INIT_NORMAL, 1);
    if (c->qkv_bias) param_declare(s, "bqkv", d.Cp, 1, INIT_ZEROS, 0);
    if (d.conv) param_declare(s, "conv.w", d.Cp, d.conv, INIT_CONV, 0);
    if (d.delta) param_declare(s, "wbeta", d.H, C, INIT_NORMAL, 1);
    if (d.decay) {
        param_declare(s, "wdecay", d.H, C, INIT_NORMAL, 1);
        param_declare(s, "A_log", d.H, 1, INIT_ZEROS, 0);
        param_declare(s, "dt_bias", d.H, 1, INIT_ZEROS, 0);
    }
    if (d.onorm) param_declare(s, "onorm.w", d.Dv, 1, INIT_ONES, 0);
    if (d.gated) param_declare(s, "wgate", C, C, INIT_NORMAL, 1);
    param_declare(s, "wo", C, C, INIT_NORMAL, 1);
    param_declare(s, "bo", C, 1, INIT_ZEROS, 0);
}

typedef struct linear_ptrs {
    real *wqkv, *bqkv, *convw, *wbeta, *wdecay, *A_log, *dt_bias, *onw, *wgate, *wo, *bo;
} linear_ptrs;

/* Tensors in declaration order (NULL where not declared). */
static linear_ptrs linear_unpack(const linear_cfg *c, real *const *p) {
    lf_dims d = lf_dims_of(c, 1, 1, c->heads); /* only the switches are read */
    linear_ptrs r;
    memset(&r, 0, sizeof r);
    int i = 0;
    r.wqkv = p[i++];
    if (c->qkv_bias) r.bqkv = p[i++];
    if (d.conv) r.convw = p[i++];
    if (d.delta) r.wbeta = p[i++];
    if (d.decay) {
        r.wdecay = p[i++];
        r.A_log = p[i++];
        r.dt_bias = p[i++];
    }
    if (d.onorm) r.onw = p[i++];
    if (d.gated) r.wgate = p[i++];
    r.wo = p[i++];
    r.bo = p[i++];
    return r;
}

/* The core's dims: q, k from phi [N, 2, H, F], v from qkv [N, Cp]. */
static linattn_dims la_dims_of(const linear_cfg *c, const lf_dims *d) {
    linattn_dims a;
    memset(&a, 0, sizeof a);
    a.B = d->B, a.T = d->T, a.H = d->H, a.Dk = d->F, a.Dv = d->Dv;
    a.q_stride = a.k_stride = 2 * d->HF;
    a.v_stride = d->Cp;
    a.normalize = c->normalize;
    a.eps = (real)c->eps;
    a.chunk = c->chunk;
    a.form = c->form == LF_PARALLEL ? LA_PARALLEL
             : c->form == LF_RECURRENT ? LA_RECURRENT : LA_CHUNKWISE;
    return a;
}

static gdelta_dims gd_dims_of(const linear_cfg *c, const lf_dims *d) {
    gdelta_dims g;
    memset(&g, 0, sizeof g);
    g.B = d->B, g.T = d->T, g.H = d->H, g.Dk = d->F, g.Dv = d->Dv;
    g.q_stride = g.k_stride = 2 * d->HF;
    g.v_stride = d->Cp;
    g.gate_stride = d->H;
    g.delta = d->delta;
    g.decay = d->decay;
    g.chunk = c->chunk;
    g.form = c->form == LF_RECURRENT ? GD_RECURRENT : GD_CHUNKWISE;
    return g;
}

static size_t core_save_size(const linear_cfg *c, const lf_dims *d) {
    if (c->rule == LF_ADDITIVE) {
        linattn_dims a = la_dims_of(c, d);
        return linattn_save_size(&a);
    }
    gdelta_dims g = gd_dims_of(c, d);
    return gdelta_save_size(&g);
}

static size_t core_scratch_size(const linear_cfg *c, const lf_dims *d) {
    if (c->rule == LF_ADDITIVE) {
        linattn_dims a = la_dims_of(c, d);
        return linattn_scratch_size(&a);
    }
    gdelta_dims g = gd_dims_of(c, d);
    return gdelta_scratch_size(&g);
}

/* Activations (act), in order; absent pieces take no room. */
typedef struct linear_acts {
    real *proj;   /* [N,Cp] x Wqkv^T + b */
    real *convd;  /* [N,Cp] short conv of proj */
    real *phi;    /* [N,2,H,F] phi_q | phi_k (after the L2 norm when on) */
    real *rn;     /* [N*2H] L2 norm reciprocals */
    real *beta;   /* [N,H] */
    real *za, *g; /* [N,H] shifted decay pre-activation, log decay */
    real *o;      /* [N,C] core output */
    real *on;     /* [N,C] normalised o */
    real *rstd;   /* [N*H] */
    real *gz, *y; /* [N,C] gate pre-activation, gated output */
    real *save;   /* core save */
} linear_acts;

static size_t linear_acts_at(const linear_cfg *c, const lf_dims *d, real *base,
                             linear_acts *a) {
    size_t N = (size_t)d->N, used = 0;
#define TAKE(p, n) (a->p = base ? base + used : NULL, used += (n))
    memset(a, 0, sizeof *a);
    TAKE(proj, N * d->Cp);
    if (d->conv) TAKE(convd, N * d->Cp);
    TAKE(phi, N * 2 * d->HF);
    if (c->qk_l2norm) TAKE(rn, N * 2 * d->H);
    if (d->delta) TAKE(beta, N * d->H);
    if (d->decay) {
        TAKE(za, N * d->H);
        TAKE(g, N * d->H);
    }
    TAKE(o, N * d->C);
    if (d->onorm) {
        TAKE(on, N * d->C);
        TAKE(rstd, N * d->H);
    }
    if (d->gated) {
        TAKE(gz, N * d->C);
        TAKE(y, N * d->C);
    }
    /* one sequence's save after another (see lf_seq_run) */
    lf_dims d1 = lf_dims_of(c, 1, d->T, d->C);
    TAKE(save, (size_t)d->B * core_save_size(c, &d1));
#undef TAKE
    return used;
}

/* Scratch: the core's, then the backward's gradients. */
typedef struct linear_scr {
    real *core;   /* core scratch */
    real *shift;  /* [H] dt shift */
    real *dy, *tmp, *dO, *dgz; /* [N,C] */
    real *dphi, *dphi_raw;     /* [N,2,H,F]; [F] per thread: a row's gradient inside the L2 norm */
    real *dqkv, *dproj;        /* [N,Cp] (dproj only with the conv) */
    real *dbeta, *dg, *dz;     /* [N,H] */
    /* with rows (S < N of them; sized N): x, core output, d core output and
     * d x at the rows [S,C]; q or its gradient at the rows [S,Cq] */
    real *xr, *orow, *dOr, *dxr, *qr;
} linear_scr;

static size_t linear_scr_at(const linear_cfg *c, const lf_dims *d, real *base,
                            linear_scr *s) {
    size_t N = (size_t)d->N, used = 0;
#define TAKE(p, n) (s->p = base ? base + used : NULL, used += (n))
    memset(s, 0, sizeof *s);
    TAKE(core, core_scratch_size(c, d));
    if (d->decay) TAKE(shift, (size_t)d->H);
    if (d->onorm) {
        TAKE(dy, N * d->C);
        TAKE(tmp, N * d->C);
    }
    TAKE(dO, N * d->C);
    if (d->gated) TAKE(dgz, N * d->C);
    TAKE(dphi, N * 2 * d->HF);
    if (c->qk_l2norm) TAKE(dphi_raw, (size_t)ml_par_slots() * d->F);
    TAKE(dqkv, N * d->Cp);
    if (d->conv) TAKE(dproj, N * d->Cp);
    if (d->delta) TAKE(dbeta, N * d->H);
    if (d->decay) TAKE(dg, N * d->H);
    if (d->delta || d->decay) TAKE(dz, N * d->H);
    TAKE(xr, N * d->C);
    TAKE(orow, N * d->C);
    TAKE(dOr, N * d->C);
    TAKE(dxr, N * d->C);
    TAKE(qr, N * d->Cq);
#undef TAKE
    return used;
}

static size_t linear_act_size(const void *cfg, int B, int T, int C) {
    lf_dims d = lf_dims_of(cfg, B, T, C);
    linear_acts a;
    return linear_acts_at(cfg, &d, NULL, &a);
}

static size_t linear_scratch_size(const void *cfg, int B, int T, int C) {
    lf_dims d = lf_dims_of(cfg, B, T, C);
    linear_scr s;
    return linear_scr_at(cfg, &d, NULL, &s);
}

/* ---- the last layer on a subset of rows ----------------------------------------
 * With mc->rows, q is projected for the rows only (zero at the others, whose
 * outputs nobody reads; without the short conv, which mixes neighbours), the
 * state and the core run on every token as before, and the gate, the output
 * norm and the output projection run on the rows. */

/* The qkv projection: every column for every token, or with rows (and no
 * short conv) k and v for every token and q for the rows, zero elsewhere. */
static void qkv_forward(const mixer_call *mc, const lf_dims *d, const linear_ptrs *p,
                        const linear_scr *s, real *proj, const real *x) {
    const int N = d->N, C = d->C, S = mc->n_rows, Cq = d->Cq;
    if (!mc->rows || d->conv) {
        linear_forward(proj, x, p->wqkv, p->bqkv, N, C, d->Cp);
        return;
    }
    linear_forward_rows(proj, s->qr, x, s->xr, p->wqkv, p->bqkv, mc->rows, S, N, C, d->Cp, Cq);
}

/* Backward of qkv_forward; with rows, d x at the rows goes to s->dxr. */
static void qkv_backward(const mixer_call *mc, const lf_dims *d, const linear_ptrs *p,
                         const linear_ptrs *gp, const linear_scr *s, real *dx,
                         const real *dproj, const real *x) {
    const int N = d->N, C = d->C, S = mc->n_rows, Cq = d->Cq;
    if (!mc->rows || d->conv) {
        linear_backward(dx, gp->wqkv, gp->bqkv, dproj, x, p->wqkv, N, C, d->Cp);
        return;
    }
    linear_backward_rows(dx, s->dxr, gp->wqkv, gp->bqkv, s->qr, dproj, x, s->xr, p->wqkv,
                         mc->rows, S, N, C, d->Cp, Cq);
}

/* The output stage (linfam.h) over a's and s's buffers. */
static lf_outstage linear_outstage(const linear_cfg *c, const lf_dims *d, const linear_ptrs *p,
                                   const linear_ptrs *gp, const linear_acts *a,
                                   const linear_scr *s) {
    lf_outstage st = {d->H, d->Dv, c->out_norm, p->onw, p->wgate, p->wo, p->bo,
                      gp->onw, gp->wgate, gp->wo, gp->bo, a->on, a->rstd, a->gz, a->y,
                      s->dy, s->dgz, s->tmp};
    return st;
}

/* ---- the core, sequence by sequence -------------------------------------------
 * The feature maps, the core and, in the backward, the zeroing of the core's
 * gradient rows and the maps' backward run one sequence at a time in one
 * parallel region (a contiguous block of sequences per thread, parallel.h):
 * a sequence's phi and its gradient are still in cache when the next pass
 * reads them, and the per-token passes share the threads with the core.
 * The core sees one sequence per call, so the save holds one sequence's save
 * (the core's layout at B = 1) after another, and each thread hands the core
 * its own slot of the core scratch. Each sequence computes what a call on
 * the whole batch did, in the same order, at any thread count. */
typedef struct lf_seq_job {
    const linear_cfg *c;
    lf_dims d, d1;       /* the batch; one sequence */
    const linear_acts *a;
    const linear_scr *s;
    const real *qkv;     /* the core's q, k source: proj, or its short conv */
    size_t save1, core1; /* reals of one sequence's save, one thread's core scratch */
} lf_seq_job;

static lf_seq_job lf_seq_job_of(const linear_cfg *c, const lf_dims *d, const linear_acts *a,
                                const linear_scr *s, const real *qkv) {
    lf_seq_job j = {.c = c, .d = *d, .a = a, .s = s, .qkv = qkv};
    j.d1 = lf_dims_of(c, 1, d->T, d->C);
    j.save1 = core_save_size(c, &j.d1);
    j.core1 = core_scratch_size(c, &j.d1) / (size_t)ml_par_slots();
    return j;
}

/* phi of sequence b's tokens, then the core on it. */
static void lf_seq_forward(void *ctx, int b0, int b1, int slot) {
    const lf_seq_job *j = ctx;
    const linear_cfg *c = j->c;
    const lf_dims *d = &j->d;
    const int T = d->T, H = d->H;
    real *core = j->s->core + (size_t)slot * j->core1;
    for (int b = b0; b < b1; b++) {
        const size_t t0 = (size_t)b * T;
        const real *qkv = j->qkv + t0 * d->Cp;
        real *phi = j->a->phi + t0 * 2 * d->HF;
        real *rn = c->qk_l2norm ? j->a->rn + t0 * 2 * H : NULL;
        /* q and k of one token are 2H contiguous rows of Dk */
        lf_phi_forward_tokens(phi, rn, qkv, T, d->Cp, 2 * H, d->Dk, d->F, c->feature_map);
        real *o = j->a->o + t0 * d->C, *save = j->a->save + (size_t)b * j->save1;
        if (c->rule == LF_ADDITIVE) {
            linattn_dims la = la_dims_of(c, &j->d1);
            linattn_forward(o, save, phi, phi + d->HF, qkv + 2 * d->Cq, &la, core);
        } else {
            gdelta_dims gd = gd_dims_of(c, &j->d1);
            gdelta_forward(o, save, phi, phi + d->HF, qkv + 2 * d->Cq,
                           d->delta ? j->a->beta + t0 * H : NULL,
                           d->decay ? j->a->g + t0 * H : NULL, &gd, core);
        }
    }
}

/* Sequence b's gradient rows zeroed (dphi, the v columns of dqkv, dbeta,
 * dg), the core's backward into them, then phi's backward into the q and k
 * columns of dqkv (which it overwrites). */
static void lf_seq_backward(void *ctx, int b0, int b1, int slot) {
    const lf_seq_job *j = ctx;
    const linear_cfg *c = j->c;
    const lf_dims *d = &j->d;
    const linear_acts *a = j->a;
    const linear_scr *s = j->s;
    const int T = d->T, H = d->H;
    real *core = s->core + (size_t)slot * j->core1;
    real *dphi_raw = c->qk_l2norm ? s->dphi_raw + (size_t)slot * d->F : NULL;
    for (int b = b0; b < b1; b++) {
        const size_t t0 = (size_t)b * T;
        const real *qkv = j->qkv + t0 * d->Cp, *phi = a->phi + t0 * 2 * d->HF;
        real *dphi = s->dphi + t0 * 2 * d->HF, *dqkv = s->dqkv + t0 * d->Cp;
        memset(dphi, 0, (size_t)T * 2 * d->HF * sizeof(real));
        for (int t = 0; t < T; t++)
            memset(dqkv + (size_t)t * d->Cp + 2 * d->Cq, 0, (size_t)d->C * sizeof(real));
        const real *dO = s->dO + t0 * d->C, *o = a->o + t0 * d->C;
        const real *save = a->save + (size_t)b * j->save1;
        if (c->rule == LF_ADDITIVE) {
            linattn_dims la = la_dims_of(c, &j->d1);
            linattn_backward(dphi, dphi + d->HF, dqkv + 2 * d->Cq, dO, o, save, phi,
                             phi + d->HF, qkv + 2 * d->Cq, &la, core);
        } else {
            gdelta_dims gd = gd_dims_of(c, &j->d1);
            real *dbeta = d->delta ? s->dbeta + t0 * H : NULL;
            real *dg = d->decay ? s->dg + t0 * H : NULL;
            if (dbeta) memset(dbeta, 0, (size_t)T * H * sizeof(real));
            if (dg) memset(dg, 0, (size_t)T * H * sizeof(real));
            gdelta_backward(dphi, dphi + d->HF, dqkv + 2 * d->Cq, dbeta, dg, dO, save, phi,
                            phi + d->HF, qkv + 2 * d->Cq, d->delta ? a->beta + t0 * H : NULL,
                            d->decay ? a->g + t0 * H : NULL, &gd, core);
        }
        lf_phi_backward_tokens(dqkv, dphi, qkv, phi, c->qk_l2norm ? a->rn + t0 * 2 * H : NULL, T,
                               d->Cp, 2 * H, d->Dk, d->F, c->feature_map, dphi_raw);
    }
}

/* lf_seq_forward or lf_seq_backward over every sequence. */
static void lf_seq_run(lf_seq_job *j, void (*fn)(void *, int, int, int)) {
    const lf_dims *d = &j->d;
    /* about T (F Dv + C F) multiply-adds per sequence and head */
    double work = (double)d->N * d->H * ((double)d->F * d->Dv + (double)j->c->chunk * d->F);
    ml_par_ranges(d->B, ml_par_threads(d->B, work, 1 << 20), fn, j);
}

static void linear_forward_mix(const mixer_call *mc, real *out, const real *x) {
    const linear_cfg *c = mc->cfg;
    lf_dims d = lf_dims_of(c, mc->B, mc->T, mc->C);
    linear_ptrs p = linear_unpack(c, mc->p);
    linear_ptrs gp = linear_unpack(c, mc->dp);
    linear_acts a;
    linear_scr s;
    linear_acts_at(c, &d, mc->act, &a);
    linear_scr_at(c, &d, mc->scratch, &s);
    const lf_outstage st = linear_outstage(c, &d, &p, &gp, &a, &s);
    const int N = d.N, C = d.C, H = d.H, S = mc->n_rows;

    if (mc->rows) rows_gather(s.xr, x, C, mc->rows, S, C);
    qkv_forward(mc, &d, &p, &s, a.proj, x);
    const real *qkv = a.proj;
    if (d.conv) {
        conv1d_causal_forward(a.convd, a.proj, p.convw, NULL, d.B, d.T, d.Cp, d.conv);
        qkv = a.convd;
    }
    if (d.delta) {
        linear_forward(a.beta, x, p.wbeta, NULL, N, C, H);
        lf_beta_forward(a.beta, (size_t)N * H);
    }
    if (d.decay) {
        lf_dt_shift(s.shift, H, c->dt_min, c->dt_max);
        linear_forward(a.za, x, p.wdecay, NULL, N, C, H);
        lf_decay_forward(a.g, a.za, p.A_log, p.dt_bias, s.shift, N, H, H);
    }
    lf_seq_job job = lf_seq_job_of(c, &d, &a, &s, qkv);
    lf_seq_run(&job, lf_seq_forward);
    if (mc->rows) {
        rows_gather(s.orow, a.o, C, mc->rows, S, C);
        lf_output_forward(&st, out, s.orow, s.xr, S);
    } else {
        lf_output_forward(&st, out, a.o, x, N);
    }
}

static void linear_backward_mix(const mixer_call *mc, real *dx, const real *dout,
                                const real *x) {
    const linear_cfg *c = mc->cfg;
    lf_dims d = lf_dims_of(c, mc->B, mc->T, mc->C);
    linear_ptrs p = linear_unpack(c, mc->p);
    linear_ptrs gp = linear_unpack(c, mc->dp);
    linear_acts a;
    linear_scr s;
    linear_acts_at(c, &d, mc->act, &a);
    linear_scr_at(c, &d, mc->scratch, &s);
    const lf_outstage st = linear_outstage(c, &d, &p, &gp, &a, &s);
    const int N = d.N, C = d.C, H = d.H;
    const size_t NH = (size_t)N * H;
    const real *qkv = d.conv ? a.convd : a.proj;

    /* output projection and norm: dO = d(core output); with rows, from the
     * rows' dOr, zero elsewhere, and d x of the rows gathered in dxr */
    if (mc->rows) {
        lf_output_backward_rows(&st, s.dO, s.dxr, s.xr, s.orow, s.dOr, dout, a.o, x, mc->rows,
                                mc->n_rows, N);
    } else {
        lf_output_backward(&st, s.dO, dx, dout, a.o, x, N);
    }

    /* the core and the feature maps, into dqkv */
    lf_seq_job job = lf_seq_job_of(c, &d, &a, &s, qkv);
    lf_seq_run(&job, lf_seq_backward);

    /* gates */
    if (d.delta) {
        memset(s.dz, 0, NH * sizeof(real));
        lf_beta_backward(s.dz, s.dbeta, a.beta, NH);
        linear_backward(dx, gp.wbeta, NULL, s.dz, x, p.wbeta, N, C, H);
    }
    if (d.decay) {
        lf_decay_backward(s.dz, gp.A_log, gp.dt_bias, s.dg, a.g, a.za, p.A_log, N, H, H);
        linear_backward(dx, gp.wdecay, NULL, s.dz, x, p.wdecay, N, C, H);
    }

    const real *dproj = s.dqkv;
    if (d.conv) {
        ml_par_zero(s.dproj, (size_t)N * d.Cp * sizeof(real));
        conv1d_causal_backward(s.dproj, gp.convw, NULL, s.dqkv, a.proj, p.convw, d.B, d.T,
                               d.Cp, d.conv);
        dproj = s.dproj;
    }
    qkv_backward(mc, &d, &p, &gp, &s, dx, dproj, x);
    if (mc->rows) rows_scatter_add(dx, s.dxr, mc->rows, mc->n_rows, C);
}

/* Per head F x Dv (+ F normaliser), plus the short conv's K-1 past rows of
 * the qkv projection. Independent of T. */
static long linear_state_size(const void *cfg, int C, int T) {
    const linear_cfg *c = cfg;
    lf_dims d = lf_dims_of(c, 1, 1, C);
    long n = (long)d.H * ((long)d.F * d.Dv + (c->normalize && c->rule == LF_ADDITIVE ? d.F : 0));
    if (d.conv > 0) n += (long)(d.conv - 1) * d.Cp;
    return n;
}

#define LINFAM_MIXER(NAME, FIELDS, HELP)                                                        \
    {                                                                                          \
        .name = NAME, .help = HELP, .fields = FIELDS, .cfg_size = sizeof(linear_cfg),          \
        .validate = linear_validate, .caution = linear_caution, .declare = linear_declare,     \
        .act_size = linear_act_size, .scratch_size = linear_scratch_size,                      \
        .forward = linear_forward_mix, .backward = linear_backward_mix,                        \
        .state_size = linear_state_size, .out_rows = 1,                                        \
    }

const ml_mixer mixer_linear = LINFAM_MIXER(
    "linear", linear_fields,
    "linear attention (Katharopoulos 2020): additive outer-product state, feature map on q "
    "and k, normalised; one implementation with deltanet, gated_deltanet, mamba2 and based "
    "(every key works in each; they differ in defaults)");
const ml_mixer mixer_deltanet = LINFAM_MIXER(
    "deltanet", deltanet_fields,
    "DeltaNet: delta rule S += beta k (v - S^T k)^T, beta = sigmoid(x Wbeta) per head, q and "
    "k SiLU then L2-normalised, RMSNorm on the output");
const ml_mixer mixer_gated_deltanet = LINFAM_MIXER(
    "gated_deltanet", gated_deltanet_fields,
    "gated DeltaNet: S = e^g (I - beta k k^T) S + beta k v^T (decay first), g from a "
    "Mamba-2 style gate per head; SiLU + L2 q, k; gated RMSNorm output");
const ml_mixer mixer_mamba2 = LINFAM_MIXER(
    "mamba2", mamba2_fields,
    "scalar decay (Mamba-2 / simple GLA): S = e^g S + k v^T, g = -exp(A_log) "
    "softplus(x Wdecay + dt_bias) per head; SiLU q, k; gated RMSNorm output");
const ml_mixer mixer_based = LINFAM_MIXER(
    "based", based_fields,
    "Based's linear attention: 2nd-order Taylor feature map on feature_dim-wide q and k "
    "(16 -> 153 features), normalised (Based always normalises); state 153 x d_v per head");
