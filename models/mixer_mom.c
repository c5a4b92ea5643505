/* mixer_mom.c: Mixture-of-Memories (Du et al. 2025) as a mixer.
 *
 * Dimension letters: B batch, T time, N = B*T tokens, C d_model, H heads,
 * Dk key width, Dv = C/H value width, F feature width, E routed memories,
 * K selected per token, Mt = E (+1 with the shared memory).
 *   q = phi(x Wq^T) (shared by every memory; feature map then L2 per head)
 *   memory m (m < Mt; m = E is the shared one): k_m = phi(x Wk_m^T),
 *     v_m = x Wv_m^T, beta_m = sigmoid(x Wbeta_m^T), g_m = -exp(A_log)
 *     softplus(x Wdecay_m^T + dt_bias + shift) (A_log, dt_bias shared)
 *   router: p_t = softmax(x_t Wrouter^T) over E, R_t = top-K(p_t),
 *     w_t^m = p_t^m / sum_{j in R_t} p_t^j
 *   memory m < E is updated only at tokens routed to it and frozen (no decay
 *     either) elsewhere; the shared memory sees every token
 *   o_t = sum_{m in R_t} w_t^m S_t^m^T q_t + S_t^shared^T q_t
 *   out = OutNorm(o) Wo^T + bo         (as the linear family: none, rms, gated)
 *   aux = aux_coef * E * sum_e frac_e mean_e  (frac: share of tokens selecting e,
 *     no gradient; mean: mean router probability), added to the training loss.
 * Each memory's base rule is chosen by `rule` (additive without normaliser,
 * decay, delta, gated_delta), computed by gated_delta.c.
 *
 * A frozen memory is what running the rule on only the tokens routed to it
 * gives, and a routed memory's k, v, beta and g are read only at its tokens.
 * So the router runs first; the routed rows (N K of them) are listed memory
 * by memory, sequence by sequence, in time order, and x is gathered at them;
 * memory m's projections run on its own rows alone, which leaves every
 * (sequence, memory) pair's keys, values and gates as a compact sequence in
 * place. The rule runs on each (B = 1, its own length; q gathered) and its
 * outputs are scattered back weighted. Projections and rules cost K/E of
 * running every memory on every token. Top-K is not differentiable: the
 * backward holds the selection fixed (router.c); with K = 1 the renormalised
 * weight is 1 and the router learns from the load-balancing loss alone.
 * Given rows (the last layer under a head that reads a few rows), q is
 * projected for the rows only (zero elsewhere) and the output norm, gate and
 * projection run on the rows; the router, the memories' keys, values and
 * gates and the memories themselves still run on every token they see (the
 * rule's kernels write every routed token's read; those of other rows are
 * unused).
 * Statistics (per layer): router_frac_<e>, the share of tokens routed to e.
 * State size: H * Mt * F * Dv (no normaliser). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "kernels.h"
#include "linfam.h"
#include "mixer.h"
#include "parallel.h"

typedef struct mom_cfg {
    int heads;
    int memories;    /* E */
    int topk;        /* K */
    int shared;      /* one memory that sees every token */
    int rule;        /* lf_rule_names */
    int feature_map; /* lf_fmap_names */
    int feature_dim; /* per-head width of q and k, 0 = d_model / heads */
    int qk_l2norm;
    int out_norm;    /* lf_onorm_names */
    double aux_coef;
    double dt_min, dt_max;
    int chunk;
    int form;        /* mom_forms */
} mom_cfg;

static const char *const mom_forms[] = {"chunkwise", "recurrent", NULL};

static const ml_field mom_fields[] = {
    {"heads", FT_INT, offsetof(mom_cfg, heads), 1, 4096, NULL, "1",
     "heads; d_model must be divisible by heads"},
    {"memories", FT_INT, offsetof(mom_cfg, memories), 1, 64, NULL, "4",
     "routed memories E, each with its own k, v, beta and decay projections"},
    {"topk", FT_INT, offsetof(mom_cfg, topk), 1, 64, NULL, "2",
     "memories K selected per token (at most memories); weights renormalised over them"},
    {"shared", FT_BOOL, offsetof(mom_cfg, shared), 0, 1, NULL, "true",
     "add a shared memory that sees every token (weight 1)"},
    {"rule", FT_ENUM, offsetof(mom_cfg, rule), 0, 0, lf_rule_names, "gated_delta",
     "each memory's update: additive (no normaliser), delta, decay, gated_delta"},
    {"feature_map", FT_ENUM, offsetof(mom_cfg, feature_map), 0, 0, lf_fmap_names, "silu",
     "feature map on q and k: identity, elu1, relu, silu, taylor"},
    {"feature_dim", FT_INT, offsetof(mom_cfg, feature_dim), 0, 256, NULL, "0",
     "per-head width of q and k before the feature map (0 = d_model/heads)"},
    {"qk_l2norm", FT_BOOL, offsetof(mom_cfg, qk_l2norm), 0, 1, NULL, "true",
     "L2-normalise q and k per head after the feature map"},
    {"out_norm", FT_ENUM, offsetof(mom_cfg, out_norm), 0, 0, lf_onorm_names, "gated",
     "output norm per head: none, rms, gated (RMSNorm(o) * silu(x Wgate))"},
    {"aux_coef", FT_REAL, offsetof(mom_cfg, aux_coef), 0, 100, NULL, "0.01",
     "weight of the load-balancing loss E * sum_e frac_e * mean_p_e added to the loss"},
    {"dt_min", FT_REAL, offsetof(mom_cfg, dt_min), 1e-6, 10, NULL, "0.001",
     "decay rules: smallest initial time step (heads log-spaced from dt_min to dt_max)"},
    {"dt_max", FT_REAL, offsetof(mom_cfg, dt_max), 1e-6, 10, NULL, "0.1",
     "decay rules: largest initial time step"},
    {"chunk", FT_INT, offsetof(mom_cfg, chunk), 1, 1e6, NULL, "64",
     "chunk length of the chunkwise form (and checkpoint spacing of the recurrent one)"},
    {"form", FT_ENUM, offsetof(mom_cfg, form), 0, 0, mom_forms, "chunkwise",
     "computation of each memory: chunkwise (GEMM) or recurrent (per token)"},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL},
};

/* Sizes of one call. */
typedef struct mom_dims {
    int B, T, C, N, H, Dk, Dv, F, HF, Cq;
    int E, K, Mt;
    int delta, decay, onorm, gated;
} mom_dims;

static mom_dims mom_dims_of(const mom_cfg *c, int B, int T, int C) {
    mom_dims d;
    memset(&d, 0, sizeof d);
    d.B = B, d.T = T, d.C = C, d.N = B * T, d.H = c->heads;
    d.Dv = C / c->heads;
    d.Dk = c->feature_dim > 0 ? c->feature_dim : d.Dv;
    d.F = lf_fmap_width(c->feature_map, d.Dk);
    d.HF = d.H * d.F;
    d.Cq = d.H * d.Dk;
    d.E = c->memories, d.K = c->topk, d.Mt = c->memories + (c->shared ? 1 : 0);
    d.delta = lf_rule_delta(c->rule);
    d.decay = lf_rule_decay(c->rule);
    d.onorm = c->out_norm != LF_ONORM_NONE;
    d.gated = c->out_norm == LF_ONORM_GATED;
    return d;
}

/* The rule's dims for a compact sequence of n tokens of one memory (B = 1,
 * rows contiguous) or, with n < 0, for the shared memory over the batch
 * (its own block of N rows). */
static gdelta_dims mom_gd(const mom_cfg *c, const mom_dims *d, int n) {
    gdelta_dims g;
    memset(&g, 0, sizeof g);
    g.H = d->H, g.Dk = d->F, g.Dv = d->Dv;
    g.delta = d->delta, g.decay = d->decay;
    g.chunk = c->chunk;
    g.form = c->form == 1 ? GD_RECURRENT : GD_CHUNKWISE;
    if (n >= 0) {
        g.B = 1, g.T = n;
        g.q_stride = g.k_stride = d->HF, g.v_stride = d->C, g.gate_stride = d->H;
    } else {
        g.B = d->B, g.T = d->T;
        g.q_stride = g.k_stride = d->HF, g.v_stride = d->C, g.gate_stride = d->H;
    }
    return g;
}

static int mom_validate(const void *cfg, int C, ml_error *e) {
    const mom_cfg *c = cfg;
    if (C % c->heads != 0)
        return ML_FAIL(e, "heads: d_model %d is not divisible by heads %d", C, c->heads);
    if (c->topk > c->memories)
        return ML_FAIL(e, "topk: %d is more than the %d memories", c->topk, c->memories);
    if (c->dt_min > c->dt_max)
        return ML_FAIL(e, "dt_min: %g is larger than dt_max %g", c->dt_min, c->dt_max);
    return 0;
}

static int mom_caution(const void *cfg, int C, char *msg, size_t cap) {
    const mom_cfg *c = cfg;
    mom_dims d = mom_dims_of(c, 1, 1, C);
    return lf_delta_caution(c->rule, c->feature_map, c->qk_l2norm, d.F, msg, cap);
}

static void mom_declare(const void *cfg, int C, ml_param_sink *s) {
    mom_dims d = mom_dims_of(cfg, 1, 1, C);
    param_declare(s, "wq", d.Cq, C, INIT_NORMAL, 1);
    param_declare(s, "wk", d.Mt * d.Cq, C, INIT_NORMAL, 1);
    param_declare(s, "wv", d.Mt * C, C, INIT_NORMAL, 1);
    if (d.delta) param_declare(s, "wbeta", d.Mt * d.H, C, INIT_NORMAL, 1);
    if (d.decay) {
        param_declare(s, "wdecay", d.Mt * d.H, C, INIT_NORMAL, 1);
        param_declare(s, "A_log", d.H, 1, INIT_ZEROS, 0);
        param_declare(s, "dt_bias", d.H, 1, INIT_ZEROS, 0);
    }
    param_declare(s, "wrouter", d.E, C, INIT_NORMAL, 1);
    if (d.onorm) param_declare(s, "onorm.w", d.Dv, 1, INIT_ONES, 0);
    if (d.gated) param_declare(s, "wgate", C, C, INIT_NORMAL, 1);
    param_declare(s, "wo", C, C, INIT_NORMAL, 1);
    param_declare(s, "bo", C, 1, INIT_ZEROS, 0);
}

typedef struct mom_ptrs {
    real *wq, *wk, *wv, *wbeta, *wdecay, *A_log, *dt_bias, *wrouter, *onw, *wgate, *wo, *bo;
} mom_ptrs;

static mom_ptrs mom_unpack(const mom_cfg *c, real *const *p) {
    mom_dims d = mom_dims_of(c, 1, 1, c->heads); /* only the switches are read */
    mom_ptrs r;
    memset(&r, 0, sizeof r);
    int i = 0;
    r.wq = p[i++];
    r.wk = p[i++];
    r.wv = p[i++];
    if (d.delta) r.wbeta = p[i++];
    if (d.decay) {
        r.wdecay = p[i++];
        r.A_log = p[i++];
        r.dt_bias = p[i++];
    }
    r.wrouter = p[i++];
    if (d.onorm) r.onw = p[i++];
    if (d.gated) r.wgate = p[i++];
    r.wo = p[i++];
    r.bo = p[i++];
    return r;
}

/* Reals that hold n ints (the selection lives in the real-typed act). */
static size_t ints_as_reals(size_t n) {
    return (n * sizeof(int) + sizeof(real) - 1) / sizeof(real);
}

/* Rows of the memories' projections: the N K routed rows (memory by
 * memory, then sequence by sequence, in time order), then the shared
 * memory's N. */
static size_t mom_nrows(const mom_cfg *c, const mom_dims *d) {
    return (size_t)d->N * d->K + (c->shared ? (size_t)d->N : 0);
}

/* Activations, in order; absent pieces take no room. NR = mom_nrows. */
typedef struct mom_acts {
    real *qraw, *phq, *qrn;  /* [N,Cq], [N,HF], [N*H] */
    real *kraw, *phk, *krn;  /* [NR,Cq], [NR,HF], [NR*H] */
    real *v;                 /* [NR,C] */
    real *beta, *za, *g;     /* [NR,H] */
    real *xg;                /* [N K,C] x at the routed rows */
    real *p, *rw;            /* [N,E] router probabilities, [N,K] weights */
    int *sel;                /* [N,K] selected memories */
    int *rslot, *rtok;       /* [N K] each routed row's slot (token * K + j), token */
    int *roff;               /* [E B + 1] first routed row of (memory, sequence) */
    real *omem;              /* [N,K,C] output of each selected memory */
    real *o, *on, *rstd, *gz, *y; /* [N,C], [N,C], [N*H], [N,C], [N,C] */
    real *save;              /* E*B compact saves, then the shared memory's */
    size_t save_one;         /* reals per compact save */
} mom_acts;

static size_t mom_acts_at(const mom_cfg *c, const mom_dims *d, real *base, mom_acts *a) {
    size_t N = (size_t)d->N, used = 0, NR = mom_nrows(c, d), NK = N * d->K;
#define TAKE(p, n) (a->p = base ? base + used : NULL, used += (n))
#define TAKE_INTS(p, n) (a->p = base ? (int *)(void *)(base + used) : NULL, used += ints_as_reals(n))
    memset(a, 0, sizeof *a);
    TAKE(qraw, N * d->Cq);
    TAKE(phq, N * d->HF);
    if (c->qk_l2norm) TAKE(qrn, N * d->H);
    TAKE(kraw, NR * d->Cq);
    TAKE(phk, NR * d->HF);
    if (c->qk_l2norm) TAKE(krn, NR * d->H);
    TAKE(v, NR * d->C);
    if (d->delta) TAKE(beta, NR * d->H);
    if (d->decay) {
        TAKE(za, NR * d->H);
        TAKE(g, NR * d->H);
    }
    TAKE(xg, NK * d->C);
    TAKE(p, N * d->E);
    TAKE(rw, N * d->K);
    TAKE_INTS(sel, NK);
    TAKE_INTS(rslot, NK);
    TAKE_INTS(rtok, NK);
    TAKE_INTS(roff, (size_t)d->E * d->B + 1);
    TAKE(omem, N * d->K * d->C);
    TAKE(o, N * d->C);
    if (d->onorm) {
        TAKE(on, N * d->C);
        TAKE(rstd, N * d->H);
    }
    if (d->gated) {
        TAKE(gz, N * d->C);
        TAKE(y, N * d->C);
    }
    gdelta_dims one = mom_gd(c, d, d->T), sh = mom_gd(c, d, -1);
    a->save_one = gdelta_save_size(&one);
    TAKE(save, (size_t)d->E * d->B * a->save_one + (c->shared ? gdelta_save_size(&sh) : 0));
#undef TAKE
#undef TAKE_INTS
    return used;
}

/* One thread's workspace for the routed memories: the rule's scratch and
 * one (sequence, memory) pair's gathered q, output and their gradients (its
 * keys, values and gates are compact in place). */
typedef struct mom_ws {
    real *core;
    real *cq, *co, *cdo, *cdq;             /* [T,HF], [T,C], [T,C], [T,HF] */
} mom_ws;

static size_t mom_ws_at(const mom_cfg *c, const mom_dims *d, real *base, mom_ws *w) {
    size_t T = (size_t)d->T, used = 0, HF = (size_t)d->HF, C = (size_t)d->C;
#define TAKE(p, n) (w->p = base ? base + used : NULL, used += (n))
    memset(w, 0, sizeof *w);
    gdelta_dims one = mom_gd(c, d, d->T), sh = mom_gd(c, d, -1);
    size_t core = gdelta_scratch_size(&one), core_sh = gdelta_scratch_size(&sh);
    TAKE(core, core > core_sh ? core : core_sh);
    TAKE(cq, T * HF);
    TAKE(co, T * C);
    TAKE(cdo, T * C);
    TAKE(cdq, T * HF);
#undef TAKE
    return (used + 15) & ~(size_t)15;
}

/* Scratch: one workspace per thread (parallel.h), the router's, the
 * gradients. */
typedef struct mom_scr {
    real *ws;                              /* ml_par_slots() workspaces of ws_size */
    size_t ws_size;
    real *shift, *logits, *frac, *mean, *dp_all;
    real *dy, *tmp, *dO, *dgz;             /* [N,C] */
    real *dphq, *dqraw;                    /* [N,HF], [N,Cq] */
    real *dphk, *dkraw;                    /* [NR,HF], [NR,Cq] */
    real *dph_tmp;                         /* [F] per thread: a row's gradient inside the L2 norm */
    real *dv;                              /* [NR,C] */
    real *dbeta, *dg, *dz;                 /* [NR,H] */
    real *dxg;                             /* [N K,C] d x at the routed rows */
    real *drw, *dlogits;                   /* [N,K], [N,E] */
    /* with rows (S < N of them; sized N): their x, d x, and the gathered rows
     * of q, its gradient or o */
    real *xr, *dxr, *rtmp;                 /* [N,C], [N,C], [N,max(C, Cq)] */
} mom_scr;

static size_t mom_scr_at(const mom_cfg *c, const mom_dims *d, real *base, mom_scr *s) {
    size_t N = (size_t)d->N, NR = mom_nrows(c, d), used = 0;
    size_t HF = (size_t)d->HF, C = (size_t)d->C, H = (size_t)d->H;
#define TAKE(p, n) (s->p = base ? base + used : NULL, used += (n))
    memset(s, 0, sizeof *s);
    mom_ws w;
    s->ws_size = mom_ws_at(c, d, NULL, &w);
    TAKE(ws, (size_t)ml_par_slots() * s->ws_size);
    if (d->decay) TAKE(shift, H);
    TAKE(logits, N * d->E);
    TAKE(frac, (size_t)d->E);
    TAKE(mean, (size_t)d->E);
    TAKE(dp_all, (size_t)d->E);
    if (d->onorm) {
        TAKE(dy, N * C);
        TAKE(tmp, N * C);
    }
    TAKE(dO, N * C);
    if (d->gated) TAKE(dgz, N * C);
    TAKE(dphq, N * HF);
    TAKE(dqraw, N * d->Cq);
    TAKE(dphk, NR * HF);
    if (c->qk_l2norm) TAKE(dph_tmp, (size_t)ml_par_slots() * d->F);
    TAKE(dkraw, NR * d->Cq);
    TAKE(dv, NR * C);
    if (d->delta) TAKE(dbeta, NR * H);
    if (d->decay) TAKE(dg, NR * H);
    if (d->delta || d->decay) TAKE(dz, NR * H);
    TAKE(dxg, N * d->K * C);
    TAKE(drw, N * d->K);
    TAKE(dlogits, N * d->E);
    TAKE(xr, N * C);
    TAKE(dxr, N * C);
    TAKE(rtmp, N * (C > (size_t)d->Cq ? C : (size_t)d->Cq));
#undef TAKE
    return used;
}

static size_t mom_act_size(const void *cfg, int B, int T, int C) {
    mom_dims d = mom_dims_of(cfg, B, T, C);
    mom_acts a;
    return mom_acts_at(cfg, &d, NULL, &a);
}

static size_t mom_scratch_size(const void *cfg, int B, int T, int C) {
    mom_dims d = mom_dims_of(cfg, B, T, C);
    mom_scr s;
    return mom_scr_at(cfg, &d, NULL, &s);
}

/* List the routed rows: memory by memory, sequence by sequence, in time
 * order; each one's slot (token * K + j, token = b T + t) and token, and
 * where each (memory, sequence) pair's rows start. */
static void mom_route(mom_acts *a, const mom_dims *d) {
    int n = 0;
    for (int m = 0; m < d->E; m++)
        for (int b = 0; b < d->B; b++) {
            a->roff[m * d->B + b] = n;
            for (int t = 0; t < d->T; t++) {
                int tok = b * d->T + t;
                for (int j = 0; j < d->K; j++)
                    if (a->sel[(size_t)tok * d->K + j] == m) {
                        a->rslot[n] = tok * d->K + j;
                        a->rtok[n++] = tok;
                    }
            }
        }
    a->roff[d->E * d->B] = n;
}

/* The memories' four projections, each one weight tensor of Mt row blocks. */
enum { MOM_K, MOM_V, MOM_BETA, MOM_DECAY, MOM_NPROJ };

/* Output width of projection j per row. */
static int mom_width(int j, const mom_dims *d) {
    return j == MOM_K ? d->Cq : j == MOM_V ? d->C : d->H;
}

/* Memory m's block of projection j's weights in p (the parameters or their
 * gradients); NULL when the rule has no such projection. */
static real *mom_weight(const mom_ptrs *p, int j, int m, const mom_dims *d) {
    real *w = j == MOM_K ? p->wk : j == MOM_V ? p->wv : j == MOM_BETA ? p->wbeta : p->wdecay;
    return w ? w + (size_t)m * mom_width(j, d) * d->C : NULL;
}

/* Projection j's outputs for every memory, [NR, width]. */
static real *mom_output(const mom_acts *a, int j) {
    return j == MOM_K ? a->kraw : j == MOM_V ? a->v : j == MOM_BETA ? a->beta : a->za;
}

/* Memory m's rows in the memories' blocks: the first, and *n of them (the
 * routed memories' from the routing, the shared one's the last N). */
static size_t mom_rows_of(const mom_acts *a, int m, const mom_dims *d, int *n) {
    if (m == d->E) {
        *n = d->N;
        return (size_t)d->N * d->K;
    }
    *n = a->roff[(m + 1) * d->B] - a->roff[m * d->B];
    return (size_t)a->roff[m * d->B];
}

/* Every memory's projections on its own rows: the routed memories' from x
 * gathered at them (xg), the shared memory's from x. */
static void mom_project(const mom_acts *a, const mom_ptrs *p, const real *x, const mom_dims *d) {
    const int C = d->C;
    for (int m = 0; m < d->Mt; m++) {
        int n;
        size_t r0 = mom_rows_of(a, m, d, &n);
        const real *xm = m < d->E ? a->xg + r0 * C : x;
        for (int j = 0; j < MOM_NPROJ; j++) {
            const real *w = mom_weight(p, j, m, d);
            const int width = mom_width(j, d);
            if (w) linear_forward(mom_output(a, j) + r0 * width, xm, w, NULL, n, C, width);
        }
    }
}

/* Backward of projection j for every memory, from its output's gradient dy
 * [NR, width]: the routed memories' d x into s->dxg, the shared memory's
 * into dx, each memory's weight gradient into its own block. */
static void mom_project_backward(real *dx, const mom_scr *s, const mom_acts *a,
                                 const mom_ptrs *p, const mom_ptrs *gp, const real *x,
                                 const real *dy, int j, const mom_dims *d) {
    const int C = d->C, width = mom_width(j, d);
    for (int m = 0; m < d->Mt; m++) {
        int n;
        size_t r0 = mom_rows_of(a, m, d, &n);
        const real *xm = m < d->E ? a->xg + r0 * C : x;
        real *dxm = m < d->E ? s->dxg + r0 * C : dx;
        linear_backward(dxm, mom_weight(gp, j, m, d), NULL, dy + r0 * width, xm,
                        mom_weight(p, j, m, d), n, C, width);
    }
}

/* The routed memories of sequences [b0, b1), forward or backward, in
 * workspace `slot`. Each sequence writes only its own rows (omem, o, the
 * saves; the gradients of its tokens), memories in order, so the result
 * does not depend on the thread count. */
typedef struct mom_task {
    const mom_cfg *c;
    const mom_dims *d;
    const mom_acts *a;
    const mom_scr *s;
    int backward;
} mom_task;

static void mom_routed_range(void *ctx, int b0, int b1, int slot) {
    const mom_task *t = ctx;
    const mom_cfg *c = t->c;
    const mom_dims *d = t->d;
    const mom_acts *a = t->a;
    const mom_scr *s = t->s;
    const int C = d->C, H = d->H, E = d->E;
    const size_t HF = (size_t)d->HF;
    mom_ws w;
    mom_ws_at(c, d, s->ws + (size_t)slot * s->ws_size, &w);
    for (int b = b0; b < b1; b++)
        for (int m = 0; m < E; m++) {
            const size_t j0 = (size_t)a->roff[m * d->B + b];
            const int n = a->roff[m * d->B + b + 1] - (int)j0;
            if (n == 0) continue;
            const int *slots = a->rslot + j0, *toks = a->rtok + j0;
            rows_gather(w.cq, a->phq, (int)HF, toks, n, (int)HF);
            const real *kc = a->phk + j0 * HF, *vc = a->v + j0 * C;
            const real *bc = d->delta ? a->beta + j0 * H : NULL;
            const real *gc = d->decay ? a->g + j0 * H : NULL;
            gdelta_dims gd = mom_gd(c, d, n);
            real *save = a->save + ((size_t)b * E + m) * a->save_one;
            if (!t->backward) {
                gdelta_forward(w.co, save, w.cq, kc, vc, bc, gc, &gd, w.core);
                for (int i = 0; i < n; i++) {
                    real wgt = a->rw[slots[i]];
                    real *om = a->omem + (size_t)slots[i] * C, *o = a->o + (size_t)toks[i] * C;
                    memcpy(om, w.co + (size_t)i * C, sizeof(real) * (size_t)C);
                    for (int j = 0; j < C; j++) o[j] += wgt * om[j];
                }
                continue;
            }
            for (int i = 0; i < n; i++) {
                const real *dO = s->dO + (size_t)toks[i] * C;
                real wgt = a->rw[slots[i]];
                for (int j = 0; j < C; j++) w.cdo[(size_t)i * C + j] = wgt * dO[j];
            }
            memset(w.cdq, 0, (size_t)n * HF * sizeof(real));
            /* the keys', values' and gates' gradients land in place */
            gdelta_backward(w.cdq, s->dphk + j0 * HF, s->dv + j0 * C,
                            d->delta ? s->dbeta + j0 * H : NULL, d->decay ? s->dg + j0 * H : NULL,
                            w.cdo, save, w.cq, kc, vc, bc, gc, &gd, w.core);
            rows_scatter_add(s->dphq, w.cdq, toks, n, (int)HF);
        }
}

/* Every sequence's routed memories, one block of sequences per thread. */
static void mom_routed_all(mom_task *t) {
    const mom_dims *d = t->d;
    /* about K T (Dk Dv + chunk (Dk + Dv)) H multiply-adds per sequence */
    double work = (double)d->N * d->K * d->H * ((double)d->F * d->Dv + 64.0 * (d->F + d->Dv));
    ml_par_ranges(d->B, ml_par_threads(d->B, work, 1 << 20), mom_routed_range, t);
}

/* The output stage (linfam.h) over the call's buffers. */
static lf_outstage mom_outstage(const mom_cfg *c, const mom_dims *d, const mom_ptrs *p,
                                const mom_ptrs *gp, const mom_acts *a, const mom_scr *s) {
    lf_outstage st = {d->H, d->Dv, c->out_norm, p->onw, p->wgate, p->wo, p->bo,
                      gp->onw, gp->wgate, gp->wo, gp->bo, a->on, a->rstd, a->gz, a->y,
                      s->dy, s->dgz, s->tmp};
    return st;
}

/* ---- element-wise passes over tokens, a block of rows per thread ---------- */

/* Fewest reals per thread worth a parallel region for them. */
#define MOM_ROWS_MIN_WORK (1 << 15)

typedef struct mom_rows_job {
    real *out;
    const real *a, *b;
    int C, K;
} mom_rows_job;

/* out[r] += a[r], rows of C. */
static void mom_add_range(void *ctx, int r0, int r1, int slot) {
    const mom_rows_job *j = ctx;
    (void)slot;
    real *o = j->out + (size_t)r0 * j->C;
    const real *x = j->a + (size_t)r0 * j->C;
    const size_t n = (size_t)(r1 - r0) * j->C;
#pragma omp simd
    for (size_t i = 0; i < n; i++) o[i] += x[i];
}

/* out[slot] = a[slot] . b[slot / K] (each routed slot's memory output
 * against the gradient at its token), slots of C. */
static void mom_dot_range(void *ctx, int s0, int s1, int slot) {
    const mom_rows_job *j = ctx;
    (void)slot;
    for (int r = s0; r < s1; r++) {
        const real *x = j->a + (size_t)r * j->C, *y = j->b + (size_t)(r / j->K) * j->C;
        real v = 0;
        for (int c = 0; c < j->C; c++) v += x[c] * y[c];
        j->out[r] = v;
    }
}

static void mom_rows_run(mom_rows_job *j, int rows, void (*fn)(void *, int, int, int)) {
    ml_par_ranges(rows, ml_par_threads(rows, (double)rows * j->C, MOM_ROWS_MIN_WORK), fn, j);
}

static void mom_forward(const mixer_call *mc, real *out, const real *x) {
    const mom_cfg *c = mc->cfg;
    mom_dims d = mom_dims_of(c, mc->B, mc->T, mc->C);
    mom_ptrs p = mom_unpack(c, mc->p);
    mom_acts a;
    mom_scr s;
    mom_acts_at(c, &d, mc->act, &a);
    mom_scr_at(c, &d, mc->scratch, &s);
    mom_ptrs gp = mom_unpack(c, mc->dp);
    const lf_outstage st = mom_outstage(c, &d, &p, &gp, &a, &s);
    const int N = d.N, C = d.C, H = d.H, E = d.E, K = d.K, S = mc->n_rows;

    /* q (with rows, for the rows only, zero elsewhere) and its feature map */
    if (mc->rows) {
        rows_gather(s.xr, x, C, mc->rows, S, C);
        linear_forward_rows(a.qraw, s.rtmp, x, s.xr, p.wq, NULL, mc->rows, S, N, C, d.Cq, d.Cq);
    } else {
        linear_forward(a.qraw, x, p.wq, NULL, N, C, d.Cq);
    }
    lf_phi_forward(a.phq, c->qk_l2norm ? a.qrn : NULL, a.qraw, N * H, d.Dk, d.Dk, d.F,
                   c->feature_map);

    /* routing, load balancing, statistics */
    linear_forward(s.logits, x, p.wrouter, NULL, N, C, E);
    router_forward(a.p, a.sel, a.rw, s.logits, N, E, K);
    double bal = router_balance(s.frac, s.mean, a.p, a.sel, N, E, K);
    if (mc->aux_loss) *mc->aux_loss += c->aux_coef * bal;
    if (mc->stats)
        for (int e = 0; e < E; e++) mc->stats[e] += s.frac[e];

    /* each memory's keys, values and gates at its own rows: the routed ones
     * from x gathered there, the shared memory's from every token */
    mom_route(&a, &d);
    rows_gather(a.xg, x, C, a.rtok, N * K, C);
    mom_project(&a, &p, x, &d);
    const int NR = (int)mom_nrows(c, &d);
    lf_phi_forward(a.phk, c->qk_l2norm ? a.krn : NULL, a.kraw, NR * H, d.Dk, d.Dk, d.F,
                   c->feature_map);
    if (d.delta) lf_beta_forward(a.beta, (size_t)NR * H);
    if (d.decay) {
        lf_dt_shift(s.shift, H, c->dt_min, c->dt_max);
        lf_decay_forward(a.g, a.za, p.A_log, p.dt_bias, s.shift, NR, H, H);
    }

    /* the routed memories on their own tokens (sequences split among the
     * threads), then the shared one */
    ml_par_zero(a.o, sizeof(real) * (size_t)N * C);
    mom_task task = {.c = c, .d = &d, .a = &a, .s = &s};
    mom_routed_all(&task);
    mom_ws w0;
    mom_ws_at(c, &d, s.ws, &w0);
    if (c->shared) {
        gdelta_dims gd = mom_gd(c, &d, -1);
        real *osh = s.dO; /* free until the backward */
        const size_t r0 = (size_t)N * K;
        gdelta_forward(osh, a.save + (size_t)E * d.B * a.save_one, a.phq, a.phk + r0 * d.HF,
                       a.v + r0 * C, d.delta ? a.beta + r0 * H : NULL,
                       d.decay ? a.g + r0 * H : NULL, &gd, w0.core);
        mom_rows_job add = {.out = a.o, .a = osh, .C = C};
        mom_rows_run(&add, N, mom_add_range);
    }

    if (mc->rows) {
        rows_gather(s.rtmp, a.o, C, mc->rows, S, C);
        lf_output_forward(&st, out, s.rtmp, s.xr, S);
    } else {
        lf_output_forward(&st, out, a.o, x, N);
    }
}

static void mom_backward(const mixer_call *mc, real *dx, const real *dout, const real *x) {
    const mom_cfg *c = mc->cfg;
    mom_dims d = mom_dims_of(c, mc->B, mc->T, mc->C);
    mom_ptrs p = mom_unpack(c, mc->p);
    mom_ptrs gp = mom_unpack(c, mc->dp);
    mom_acts a;
    mom_scr s;
    mom_acts_at(c, &d, mc->act, &a);
    mom_scr_at(c, &d, mc->scratch, &s);
    const lf_outstage st = mom_outstage(c, &d, &p, &gp, &a, &s);
    const int N = d.N, C = d.C, H = d.H, E = d.E, K = d.K, S = mc->n_rows;
    const size_t HF = (size_t)d.HF, NR = mom_nrows(c, &d), NRH = NR * H, NK = (size_t)N * K;

    /* output projection and norm: dO = d o; with rows from the rows' d o (in
     * s.dv until the memories' backward), zero elsewhere, and the rows' d x
     * gathered in s.dxr */
    if (mc->rows) {
        lf_output_backward_rows(&st, s.dO, s.dxr, s.xr, s.rtmp, s.dv, dout, a.o, x, mc->rows, S,
                                N);
    } else {
        lf_output_backward(&st, s.dO, dx, dout, a.o, x, N);
    }

    /* the memories: the gradients the rule adds into start at zero; each
     * routed pair's q gradient comes back through its gathered rows, the
     * rest lands in place */
    ml_par_zero(s.dphq, (size_t)N * HF * sizeof(real));
    ml_par_zero(s.dphk, NR * HF * sizeof(real));
    ml_par_zero(s.dv, NR * C * sizeof(real));
    if (d.delta) memset(s.dbeta, 0, NRH * sizeof(real));
    if (d.decay) memset(s.dg, 0, NRH * sizeof(real));
    mom_rows_job dots = {.out = s.drw, .a = a.omem, .b = s.dO, .C = C, .K = K};
    mom_rows_run(&dots, N * K, mom_dot_range);
    mom_task task = {.c = c, .d = &d, .a = &a, .s = &s, .backward = 1};
    mom_routed_all(&task);
    mom_ws w0;
    mom_ws_at(c, &d, s.ws, &w0);
    if (c->shared) {
        gdelta_dims gd = mom_gd(c, &d, -1);
        gdelta_backward(s.dphq, s.dphk + NK * HF, s.dv + NK * C,
                        d.delta ? s.dbeta + NK * H : NULL, d.decay ? s.dg + NK * H : NULL, s.dO,
                        a.save + (size_t)E * d.B * a.save_one, a.phq, a.phk + NK * HF,
                        a.v + NK * C, d.delta ? a.beta + NK * H : NULL,
                        d.decay ? a.g + NK * H : NULL, &gd, w0.core);
    }

    /* router: the weights' gradient and the load-balancing loss's, d aux /
     * d p[n,e] = aux_coef * E * frac_e / N */
    router_balance(s.frac, s.mean, a.p, a.sel, N, E, K);
    for (int e = 0; e < E; e++) s.dp_all[e] = (real)(c->aux_coef * E * s.frac[e] / N);
    memset(s.dlogits, 0, (size_t)N * E * sizeof(real));
    router_backward(s.dlogits, s.drw, s.dp_all, a.p, a.sel, a.rw, N, E, K);
    linear_backward(dx, gp.wrouter, NULL, s.dlogits, x, p.wrouter, N, C, E);

    /* the memories' gates, values and keys, each memory's through its own
     * rows: the routed ones' d x gathered in dxg, then added at their tokens */
    ml_par_zero(s.dxg, NK * C * sizeof(real));
    if (d.delta) {
        memset(s.dz, 0, NRH * sizeof(real));
        lf_beta_backward(s.dz, s.dbeta, a.beta, NRH);
        mom_project_backward(dx, &s, &a, &p, &gp, x, s.dz, MOM_BETA, &d);
    }
    if (d.decay) {
        lf_decay_backward(s.dz, gp.A_log, gp.dt_bias, s.dg, a.g, a.za, p.A_log, (int)NR, H, H);
        mom_project_backward(dx, &s, &a, &p, &gp, x, s.dz, MOM_DECAY, &d);
    }
    mom_project_backward(dx, &s, &a, &p, &gp, x, s.dv, MOM_V, &d);
    lf_phi_backward(s.dqraw, s.dphq, a.qraw, a.phq, c->qk_l2norm ? a.qrn : NULL, N * H, d.Dk,
                    d.Dk, d.F, c->feature_map, s.dph_tmp);
    lf_phi_backward(s.dkraw, s.dphk, a.kraw, a.phk, c->qk_l2norm ? a.krn : NULL, (int)NR * H,
                    d.Dk, d.Dk, d.F, c->feature_map, s.dph_tmp);
    mom_project_backward(dx, &s, &a, &p, &gp, x, s.dkraw, MOM_K, &d);
    rows_scatter_add(dx, s.dxg, a.rtok, (int)NK, C);
    if (mc->rows) {
        linear_backward_rows(dx, s.dxr, gp.wq, NULL, s.rtmp, s.dqraw, x, s.xr, p.wq, mc->rows, S,
                             N, C, d.Cq, d.Cq);
        rows_scatter_add(dx, s.dxr, mc->rows, S, C);
    } else {
        linear_backward(dx, gp.wq, NULL, s.dqraw, x, p.wq, N, C, d.Cq);
    }
}

/* (E + shared) states of F x Dv per head; nothing grows with T. */
static long mom_state_size(const void *cfg, int C, int T) {
    mom_dims d = mom_dims_of(cfg, 1, 1, C);
    return (long)d.H * d.Mt * d.F * d.Dv;
}

static int mom_n_stats(const void *cfg) { return ((const mom_cfg *)cfg)->memories; }

static void mom_stat_name(const void *cfg, int i, char *buf, size_t cap) {
    snprintf(buf, cap, "router_frac_%d", i);
}

const ml_mixer mixer_mom = {
    .name = "mom",
    .help = "Mixture-of-Memories: E linear-family memories (own k, v, beta, decay "
            "projections; shared q), top-K softmax router with renormalised weights, a shared "
            "memory on every token, unselected memories frozen; load-balancing loss aux_coef * "
            "E * sum frac.mean. Top-K passes no gradient: with topk 1 the router learns from "
            "the aux loss only",
    .fields = mom_fields,
    .cfg_size = sizeof(mom_cfg),
    .validate = mom_validate,
    .caution = mom_caution,
    .declare = mom_declare,
    .act_size = mom_act_size,
    .scratch_size = mom_scratch_size,
    .forward = mom_forward,
    .backward = mom_backward,
    .state_size = mom_state_size,
    .n_stats = mom_n_stats,
    .stat_name = mom_stat_name,
    .out_rows = 1,
};
