/* test_memcache.c: Memory Caching (models/mixer_memcache.c) and its state
 * kernels (models/memcache.c), in double precision.
 *
 * What is pinned against what:
 *   - the chunkwise state kernel against its token-by-token reference (every
 *     rule, zero and given start states, runs not a multiple of the chunk,
 *     strided rows), and its backward against central differences;
 *   - the mixer's fast path (chunkwise, GEMM reads) against its naive path
 *     (every memory its own run, every read a loop): outputs and every
 *     gradient, all four aggregations x constant/log x checkpoint/fresh x
 *     cache_grad, over the rules;
 *   - gradients by central differences: the mixer alone (every aggregation,
 *     both segmentations, both inits) and whole 2-layer models;
 *   - the documented identities: one segment covering the sequence is the
 *     `linear` mixer of the same rule (outputs and gradients); memory soup
 *     equals GRM without the normaliser; SSC with K >= the cached memories
 *     equals GRM; and the non-identities (soup with the normaliser, SSC with
 *     a small K) do differ;
 *   - cache_grad false: the same forward, and with fresh segments no gradient
 *     from a later segment's loss reaches an earlier segment's tokens;
 *   - called with rows (the last layer under the supervised head), the rows
 *     of the full call: outputs, d x and every gradient, fast and naive paths;
 *   - causality by perturbation, at the mixer and through whole models;
 *   - state sizes, the refusal of impossible keys;
 *   - the PyTorch twin (tests/twin/twin_memcache.py, an independent float64
 *     implementation from models.md): loss, logits and every gradient. */
#ifndef MEMLAB_DOUBLE
#error "test_memcache.c checks gradients in double: build it with -DMEMLAB_DOUBLE"
#endif

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"
#include "gradcheck.h"
#include "kernels.h"
#include "memcache.h"
#include "mixer_rows.h"
#include "model.h"
#include "spec.h"
#include "task.h"
#include "test.h"
#include "train.h"

/* ---- configs -------------------------------------------------------------------- */

static int apply_sets(run_config *cfg, const char *const *sets) {
    ml_error e;
    for (int i = 0; sets && sets[i]; i++) {
        if (spec_set(cfg, sets[i], &e)) {
            CHECK(0, "spec_set %s: %s", sets[i], e.msg);
            return -1;
        }
    }
    if (spec_validate(cfg, &e)) {
        CHECK(0, "spec_validate: %s", e.msg);
        return -1;
    }
    return 0;
}

static int make_cfg(run_config *cfg, const char *const *base, const char *const *sets) {
    ml_error e;
    if (config_defaults(cfg, &e)) {
        CHECK(0, "config_defaults: %s", e.msg);
        return -1;
    }
    return apply_sets(cfg, base) || apply_sets(cfg, sets) ? -1 : 0;
}

/* A list of "key=value" settings built at run time. */
typedef struct mc_sets {
    char buf[16][64];
    const char *p[17];
    int n;
} mc_sets;

static void sets_add(mc_sets *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sets_add(mc_sets *s, const char *fmt, ...) {
    if (s->n >= 16) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->buf[s->n], sizeof s->buf[s->n], fmt, ap);
    va_end(ap);
    s->p[s->n] = s->buf[s->n];
    s->n++;
    s->p[s->n] = NULL;
}

static const char *const agg_names[] = {"residual", "grm", "soup", "ssc"};

/* The base rules the cases cycle through (keys of the linear family). */
static const char *const rule_sets[][6] = {
    {"model.rule=additive", "model.feature_map=elu1", "model.normalize=true", NULL},
    {"model.rule=additive", "model.feature_map=identity", "model.normalize=false",
     "model.out_norm=rms", NULL},
    {"model.rule=delta", "model.feature_map=silu", "model.normalize=false",
     "model.qk_l2norm=true", NULL},
    {"model.rule=decay", "model.feature_map=silu", "model.normalize=false",
     "model.out_norm=gated", NULL},
    {"model.rule=gated_delta", "model.feature_map=silu", "model.normalize=false",
     "model.qk_l2norm=true", "model.short_conv=2", NULL},
};
#define N_RULES 5

/* Case i of a sweep over agg x segments x init (x cache_grad): the
 * aggregation, segmentation and init from the bits of i, the rule, heads,
 * pool, segment and chunk lengths cycling so that every combination meets
 * several rules. */
static void case_sets(mc_sets *s, int agg, int log, int fresh, int cgrad, int i) {
    memset(s, 0, sizeof *s);
    const char *const *r = rule_sets[i % N_RULES];
    for (int k = 0; r[k]; k++) sets_add(s, "%s", r[k]);
    sets_add(s, "model.aggregate=%s", agg_names[agg]);
    sets_add(s, "model.segments=%s", log ? "log" : "constant");
    sets_add(s, "model.seg_init=%s", fresh ? "fresh" : "checkpoint");
    sets_add(s, "model.cache_grad=%s", cgrad ? "true" : "false");
    sets_add(s, "model.heads=%d", i % 2 ? 2 : 1);
    sets_add(s, "model.pool=%s", (i / 2) % 2 ? "k" : "x");
    sets_add(s, "model.segment=%d", log ? 1 + i % 2 : 2 + i % 3);
    sets_add(s, "model.chunk=%d", 2 + i % 2);
    sets_add(s, "model.cache_topk=%d", 1 + i % 2);
}

static const char *sets_label(const mc_sets *s, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < s->n && used < cap; i++) {
        const char *k = strncmp(s->p[i], "model.", 6) ? s->p[i] : s->p[i] + 6;
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? " " : "", k);
    }
    return buf;
}

/* Norm weights and biases moved off 1 and 0 so every path carries gradient. */
static void perturb_trivial(ml_model *m, unsigned long long seed) {
    double *noise = malloc(sizeof(double) * m->n_params);
    test_fill(noise, m->n_params, seed, -0.2, 0.2);
    for (int i = 0; i < m->n_tensors; i++) {
        const ml_param *p = &m->params[i];
        if (p->init == INIT_ONES || p->init == INIT_ZEROS)
            for (size_t k = 0; k < p->n; k++) m->w[p->offset + k] += noise[p->offset + k];
    }
    free(noise);
}

/* ---- a single mixer on its own ------------------------------------------------------ */

#define RIG_MAX_PARAMS 40

/* One mixer: a 1-layer model provides the named, initialised parameter
 * table; the mixer is then called directly (with any config whose
 * declaration is the same). */
typedef struct rig {
    ml_model m;
    run_config cfg;
    const ml_mixer *mx;
    real *p[RIG_MAX_PARAMS], *dp[RIG_MAX_PARAMS];
    const char *names[RIG_MAX_PARAMS];
    size_t sizes[RIG_MAX_PARAMS];
    int np;
    int B, T, C;
} rig;

static const char *const rig_base[] = {"task.vocab_size=16", "task.seq_len=12",
                                       "task.num_kv_pairs=2", "model.mixer=memcache",
                                       "model.d_model=8",     "model.n_layers=1",
                                       "model.init_std=0.4",  NULL};

static int rig_build(rig *r, const char *const *sets, int B, int T, unsigned long long seed) {
    memset(r, 0, sizeof *r);
    ml_error e;
    if (make_cfg(&r->cfg, rig_base, sets)) return -1;
    if (model_build(&r->m, &r->cfg.model, 16, T, B, &e)) {
        CHECK(0, "model_build: %s", e.msg);
        return -1;
    }
    model_init_weights(&r->m, seed);
    perturb_trivial(&r->m, seed + 1);
    r->mx = r->m.mixer;
    r->B = B, r->T = T, r->C = r->cfg.model.d_model;
    for (int i = 0; i < r->m.n_tensors && r->np < RIG_MAX_PARAMS; i++) {
        const ml_param *p = &r->m.params[i];
        if (strncmp(p->name, "layers.0.mixer.", 15)) continue;
        r->p[r->np] = r->m.w + p->offset;
        r->dp[r->np] = r->m.g + p->offset;
        r->names[r->np] = p->name;
        r->sizes[r->np] = p->n;
        r->np++;
    }
    return 0;
}

/* A call of the rig's parameters under the mixer config cfg (its own act and
 * scratch, released by call_free). */
static mixer_call call_of(rig *r, const run_config *cfg) {
    mixer_call mc;
    memset(&mc, 0, sizeof mc);
    mc.cfg = cfg->model.mixer_cfg.bytes;
    mc.B = r->B, mc.T = r->T, mc.C = r->C;
    mc.p = r->p, mc.dp = r->dp;
    mc.act = calloc(r->mx->act_size(mc.cfg, r->B, r->T, r->C) + 1, sizeof(real));
    mc.scratch = calloc(r->mx->scratch_size(mc.cfg, r->B, r->T, r->C) + 1, sizeof(real));
    mc.context_len = -1;
    return mc;
}

static void call_free(mixer_call *mc) {
    free(mc->act);
    free(mc->scratch);
}

/* Output, input gradient and every parameter gradient of loss = sum(wgt *
 * out) under cfg; g receives the gradients (n_params). */
static void run_once(rig *r, const run_config *cfg, const double *x, const double *wgt,
                     double *out, double *dx, double *g) {
    mixer_call mc = call_of(r, cfg);
    size_t n = (size_t)r->B * r->T * r->C;
    r->mx->forward(&mc, out, x);
    model_zero_grad(&r->m);
    memset(dx, 0, sizeof(double) * n);
    r->mx->backward(&mc, dx, wgt, x);
    memcpy(g, r->m.g, sizeof(double) * r->m.n_params);
    call_free(&mc);
}

/* max relative difference of two gradient vectors, tensor by tensor. */
static double grads_diff(const rig *r, const double *g1, const double *g2, const char **worst) {
    double w = 0;
    for (int i = 0; i < r->m.n_tensors; i++) {
        const ml_param *p = &r->m.params[i];
        double d = max_rel_diff(g1 + p->offset, g2 + p->offset, p->n);
        double mx = 0;
        for (size_t k = 0; k < p->n; k++) mx = fmax(mx, fabs(g2[p->offset + k]));
        if (mx == 0) {
            d = 0;
            for (size_t k = 0; k < p->n; k++) d = fmax(d, fabs(g1[p->offset + k]));
        }
        if (d > w) {
            w = d;
            if (worst) *worst = p->name;
        }
    }
    return w;
}

/* ================================ the state kernel ================================ */

typedef struct mcs_case {
    int rule, n, chunk, Dk, Dv, with_start;
} mcs_case;

static const mcs_case mcs_cases[] = {
    {0, 7, 3, 3, 2, 1}, {1, 9, 4, 4, 3, 0}, {2, 5, 2, 2, 3, 1}, {3, 11, 4, 3, 3, 1},
    {3, 1, 4, 2, 2, 0}, {1, 6, 1, 3, 2, 1}, {0, 4, 64, 2, 5, 0}, {2, 8, 8, 3, 2, 0},
};
#define N_MCS (int)(sizeof mcs_cases / sizeof mcs_cases[0])

/* Dims of a case: k, v rows padded (strides 2 Dk + 1, Dv + 3), gates every 2. */
static mcs_dims mcs_of(const mcs_case *c) {
    mcs_dims d;
    d.Dk = c->Dk, d.Dv = c->Dv;
    d.k_stride = 2 * c->Dk + 1, d.v_stride = c->Dv + 3, d.gate_stride = 2;
    d.delta = c->rule == 1 || c->rule == 3;
    d.decay = c->rule == 2 || c->rule == 3;
    d.chunk = c->chunk;
    return d;
}

typedef struct mcs_data {
    mcs_dims d;
    int n;
    double *k, *v, *beta, *g, *S0, *S, *wgt, *scr;
    size_t nk, nv, ng, SS;
    int with_start;
} mcs_data;

static void mcs_data_make(mcs_data *t, const mcs_case *c, unsigned long long seed) {
    t->d = mcs_of(c);
    t->n = c->n;
    t->with_start = c->with_start;
    t->SS = (size_t)c->Dk * c->Dv;
    t->nk = (size_t)c->n * t->d.k_stride, t->nv = (size_t)c->n * t->d.v_stride;
    t->ng = (size_t)c->n * t->d.gate_stride;
    t->k = malloc(sizeof(double) * t->nk), t->v = malloc(sizeof(double) * t->nv);
    t->beta = malloc(sizeof(double) * t->ng), t->g = malloc(sizeof(double) * t->ng);
    t->S0 = malloc(sizeof(double) * t->SS), t->S = malloc(sizeof(double) * t->SS);
    t->wgt = malloc(sizeof(double) * t->SS);
    test_fill(t->k, t->nk, seed, -0.6, 0.6);
    test_fill(t->v, t->nv, seed + 1, -1, 1);
    test_fill(t->beta, t->ng, seed + 2, 0.1, 0.9);
    test_fill(t->g, t->ng, seed + 3, -0.7, -0.05);
    test_fill(t->S0, t->SS, seed + 4, -1, 1);
    test_fill(t->wgt, t->SS, seed + 5, -1, 1);
    size_t a = mcs_scratch_size(&t->d, t->n), b = mcs_ref_scratch_size(&t->d, t->n);
    t->scr = malloc(sizeof(double) * (a > b ? a : b));
}

static void mcs_data_free(mcs_data *t) {
    free(t->k), free(t->v), free(t->beta), free(t->g), free(t->S0), free(t->S), free(t->wgt);
    free(t->scr);
}

/* Chunkwise against token by token: the state, and every gradient (which
 * must accumulate: they start non-zero). */
static void test_mcs_fast_equals_ref(void) {
    for (int ci = 0; ci < N_MCS; ci++) {
        mcs_data t;
        mcs_data_make(&t, &mcs_cases[ci], 100 + ci);
        const double *S0 = t.with_start ? t.S0 : NULL;
        double *S2 = malloc(sizeof(double) * t.SS);
        mcs_forward(t.S, S0, t.k, t.v, t.beta, t.g, t.n, &t.d, t.scr);
        mcs_forward_ref(S2, S0, t.k, t.v, t.beta, t.g, t.n, &t.d, t.scr);
        double ds = max_rel_diff(t.S, S2, t.SS);
        CHECK(ds < 1e-12, "case %d: state differs by %g", ci, ds);
        /* in place: S_out = S_in */
        memcpy(S2, t.S0, sizeof(double) * t.SS);
        mcs_forward(S2, S2, t.k, t.v, t.beta, t.g, t.n, &t.d, t.scr);
        if (t.with_start) CHECK(max_rel_diff(S2, t.S, t.SS) < 1e-12, "case %d: in place", ci);

        double *g1[5], *g2[5];
        size_t sz[5] = {t.SS, t.nk, t.nv, t.ng, t.ng};
        for (int i = 0; i < 5; i++) {
            g1[i] = malloc(sizeof(double) * sz[i]);
            g2[i] = malloc(sizeof(double) * sz[i]);
            test_fill(g1[i], sz[i], 200 + 10 * ci + i, -1, 1);
            memcpy(g2[i], g1[i], sizeof(double) * sz[i]);
        }
        mcs_backward(g1[0], g1[1], g1[2], g1[3], g1[4], t.wgt, S0, t.k, t.v, t.beta, t.g, t.n,
                     &t.d, t.scr);
        mcs_backward_ref(g2[0], g2[1], g2[2], g2[3], g2[4], t.wgt, S0, t.k, t.v, t.beta, t.g, t.n,
                         &t.d, t.scr);
        static const char *const nm[5] = {"dS_in", "dk", "dv", "dbeta", "dg"};
        for (int i = 0; i < 5; i++) {
            double d = max_rel_diff(g1[i], g2[i], sz[i]);
            CHECK(d < 1e-12, "case %d: %s differs by %g", ci, nm[i], d);
            free(g1[i]), free(g2[i]);
        }
        free(S2);
        mcs_data_free(&t);
    }
}

static double mcs_loss(void *p) {
    mcs_data *t = p;
    mcs_forward(t->S, t->with_start ? t->S0 : NULL, t->k, t->v, t->beta, t->g, t->n, &t->d,
                t->scr);
    double s = 0;
    for (size_t i = 0; i < t->SS; i++) s += t->wgt[i] * t->S[i];
    return s;
}

/* The chunkwise backward against central differences (gradcheck.h defaults),
 * loss = <wgt, S_out>. */
static void test_mcs_gradcheck(void) {
    for (int ci = 0; ci < N_MCS; ci++) {
        mcs_data t;
        mcs_data_make(&t, &mcs_cases[ci], 300 + ci);
        double *dS0 = calloc(t.SS, sizeof(double)), *dk = calloc(t.nk, sizeof(double));
        double *dv = calloc(t.nv, sizeof(double)), *db = calloc(t.ng, sizeof(double));
        double *dg = calloc(t.ng, sizeof(double));
        mcs_backward(t.with_start ? dS0 : NULL, dk, dv, db, dg, t.wgt,
                     t.with_start ? t.S0 : NULL, t.k, t.v, t.beta, t.g, t.n, &t.d, t.scr);
        gc_tensor ts[5] = {{"k", t.k, dk, t.nk}, {"v", t.v, dv, t.nv}, {"beta", t.beta, db, t.ng},
                           {"g", t.g, dg, t.ng}, {"S_in", t.S0, dS0, t.SS}};
        int nt = t.with_start ? 5 : 4;
        char label[64];
        snprintf(label, sizeof label, "state kernel case %d", ci);
        gradcheck_expect(label, mcs_loss, &t, ts, nt);
        free(dS0), free(dk), free(dv), free(db), free(dg);
        mcs_data_free(&t);
    }
}

/* ================================ the mixer ================================ */

typedef struct mix_ctx {
    rig *r;
    mixer_call mc;
    double *x, *out, *wgt;
    size_t n;
} mix_ctx;

static double mix_loss(void *p) {
    mix_ctx *c = p;
    c->r->mx->forward(&c->mc, c->out, c->x);
    double s = 0;
    for (size_t i = 0; i < c->n; i++) s += c->wgt[i] * c->out[i];
    return s;
}

/* Every parameter and the input against central differences, loss =
 * sum(wgt * out), for sets; gradcheck.h defaults (h 1e-5, atol 1e-7, rtol
 * 1e-5). */
static void mixer_gradcheck(const mc_sets *s, int B, int T, unsigned long long seed) {
    rig r;
    if (rig_build(&r, s->p, B, T, seed)) return;
    mix_ctx c = {&r, call_of(&r, &r.cfg), NULL, NULL, NULL, (size_t)B * T * r.C};
    c.x = malloc(sizeof(double) * c.n), c.out = malloc(sizeof(double) * c.n);
    c.wgt = malloc(sizeof(double) * c.n);
    double *dx = calloc(c.n, sizeof(double));
    test_fill(c.x, c.n, seed + 2, -1.5, 1.5);
    test_fill(c.wgt, c.n, seed + 3, -1, 1);
    mix_loss(&c);
    model_zero_grad(&r.m);
    r.mx->backward(&c.mc, dx, c.wgt, c.x);
    double *g = malloc(sizeof(double) * r.m.n_params);
    memcpy(g, r.m.g, sizeof(double) * r.m.n_params);
    gc_tensor ts[RIG_MAX_PARAMS + 1];
    for (int i = 0; i < r.np; i++)
        ts[i] = (gc_tensor){r.names[i], r.p[i], g + (r.dp[i] - r.m.g), r.sizes[i]};
    ts[r.np] = (gc_tensor){"x", c.x, dx, c.n};
    char label[600], lb[512];
    snprintf(label, sizeof label, "memcache mixer (%s)", sets_label(s, lb, sizeof lb));
    gradcheck_expect(label, mix_loss, &c, ts, r.np + 1);
    free(g), free(dx), free(c.x), free(c.out), free(c.wgt);
    call_free(&c.mc);
    model_free(&r.m);
}

/* Every aggregation x constant/log x checkpoint/fresh (gradients into the
 * cache on: with cache_grad false the gradient is not the derivative of the
 * forward; it is checked against the naive path and the twin instead). */
static void test_mc_mixer_gradcheck(void) {
    for (int i = 0; i < 16; i++) {
        mc_sets s;
        case_sets(&s, i % 4, (i / 4) % 2, (i / 8) % 2, 1, i);
        mixer_gradcheck(&s, 2, 11, 500 + (unsigned long long)i * 7);
    }
}

/* Called with rows, the mixer gives the rows of its full call (outputs, d x,
 * every gradient, within 1e-12): the 64 configurations of the fast == naive
 * sweep (every aggregation, segmentation, init and cache_grad, the rules with
 * the short conv and both output norms), every eighth also on the naive path. */
static void test_mc_mixer_rows(void) {
    enum { B = 4, T = 13 };
    for (int i = 0; i < 64; i++) {
        mc_sets s;
        case_sets(&s, i % 4, (i / 4) % 2, (i / 8) % 2, (i / 16) % 2, i + i / 32);
        rig r;
        if (rig_build(&r, s.p, B, T, 1300 + i)) return;
        char label[600], lb[512];
        snprintf(label, sizeof label, "memcache (%s)", sets_label(&s, lb, sizeof lb));
        mixer_call mc = call_of(&r, &r.cfg);
        mixer_rows_expect(label, r.mx, &mc, r.m.g, r.m.n_params, 1400 + i, 1e-12);
        call_free(&mc);
        if (i % 8 == 7) {
            run_config naive = r.cfg;
            const char *const rec[] = {"model.form=recurrent", NULL};
            if (apply_sets(&naive, rec)) return;
            mc = call_of(&r, &naive);
            snprintf(label, sizeof label, "memcache naive (%s)", sets_label(&s, lb, sizeof lb));
            mixer_rows_expect(label, r.mx, &mc, r.m.g, r.m.n_params, 1500 + i, 1e-12);
            call_free(&mc);
        }
        model_free(&r.m);
    }
}

/* The fast path against the naive one: outputs and every gradient, for all
 * 32 combinations of aggregation, segmentation, init and cache_grad, each
 * with two of the rules. */
static void test_mc_fast_equals_naive(void) {
    enum { B = 2, T = 13 };
    double worst_o = 0, worst_g = 0;
    for (int i = 0; i < 64; i++) {
        mc_sets s;
        case_sets(&s, i % 4, (i / 4) % 2, (i / 8) % 2, (i / 16) % 2, i + i / 32);
        rig r;
        if (rig_build(&r, s.p, B, T, 900 + i)) return;
        size_t n = (size_t)B * T * r.C, np = r.m.n_params;
        double *x = malloc(sizeof(double) * n), *wgt = malloc(sizeof(double) * n);
        double *o1 = malloc(sizeof(double) * n), *o2 = malloc(sizeof(double) * n);
        double *dx1 = malloc(sizeof(double) * n), *dx2 = malloc(sizeof(double) * n);
        double *g1 = malloc(sizeof(double) * np), *g2 = malloc(sizeof(double) * np);
        test_fill(x, n, 1000 + i, -1.5, 1.5);
        test_fill(wgt, n, 1100 + i, -1, 1);
        run_config naive = r.cfg;
        const char *const rec[] = {"model.form=recurrent", NULL};
        if (apply_sets(&naive, rec)) return;
        run_once(&r, &r.cfg, x, wgt, o1, dx1, g1);
        run_once(&r, &naive, x, wgt, o2, dx2, g2);
        const char *wn = "";
        double dout = max_rel_diff(o1, o2, n), ddx = max_rel_diff(dx1, dx2, n);
        double dg = grads_diff(&r, g1, g2, &wn);
        char lb[512];
        CHECK(dout < 1e-12, "%s: outputs differ by %g", sets_label(&s, lb, sizeof lb), dout);
        CHECK(ddx < 1e-12, "%s: dx differs by %g", sets_label(&s, lb, sizeof lb), ddx);
        CHECK(dg < 1e-12, "%s: %s differs by %g", sets_label(&s, lb, sizeof lb), wn, dg);
        worst_o = fmax(worst_o, dout);
        worst_g = fmax(worst_g, fmax(dg, ddx));
        free(x), free(wgt), free(o1), free(o2), free(dx1), free(dx2), free(g1), free(g2);
        model_free(&r.m);
    }
    test_note("fast vs naive over 64 configs: outputs %.2g, gradients %.2g", worst_o, worst_g);
}

/* Outputs and gradients of the rig under two configs (same parameters). */
static void compare_configs(rig *r, const run_config *a, const run_config *b, double *dout,
                            double *dgrad, unsigned long long seed) {
    size_t n = (size_t)r->B * r->T * r->C, np = r->m.n_params;
    double *x = malloc(sizeof(double) * n), *wgt = malloc(sizeof(double) * n);
    double *o1 = malloc(sizeof(double) * n), *o2 = malloc(sizeof(double) * n);
    double *dx1 = malloc(sizeof(double) * n), *dx2 = malloc(sizeof(double) * n);
    double *g1 = malloc(sizeof(double) * np), *g2 = malloc(sizeof(double) * np);
    test_fill(x, n, seed, -1.5, 1.5);
    test_fill(wgt, n, seed + 1, -1, 1);
    run_once(r, a, x, wgt, o1, dx1, g1);
    run_once(r, b, x, wgt, o2, dx2, g2);
    *dout = max_rel_diff(o1, o2, n);
    *dgrad = fmax(grads_diff(r, g1, g2, NULL), max_rel_diff(dx1, dx2, n));
    free(x), free(wgt), free(o1), free(o2), free(dx1), free(dx2), free(g1), free(g2);
}

/* Memory soup mixes the memories and reads once; for linear memories
 * without the normaliser that is GRM exactly (every rule, both
 * segmentations, both inits). With the normaliser it is not. */
static void test_mc_soup_equals_grm(void) {
    enum { B = 2, T = 13 };
    double worst = 0;
    for (int i = 0; i < 16; i++) {
        mc_sets s;
        case_sets(&s, 1, i % 2, (i / 2) % 2, 1, 1 + i % 4); /* rules 1..4: no normaliser */
        rig r;
        if (rig_build(&r, s.p, B, T, 1200 + i)) return;
        run_config soup = r.cfg;
        const char *const sp[] = {"model.aggregate=soup", NULL};
        if (apply_sets(&soup, sp)) return;
        double dout, dgrad;
        compare_configs(&r, &r.cfg, &soup, &dout, &dgrad, 1300 + i);
        char lb[512];
        CHECK(dout < 1e-12 && dgrad < 1e-12, "%s: soup differs from grm by %g (outputs), %g "
              "(gradients)", sets_label(&s, lb, sizeof lb), dout, dgrad);
        worst = fmax(worst, fmax(dout, dgrad));
        model_free(&r.m);
    }
    /* with the normaliser (additive, elu1) the one division is not the mean of
     * the divisions */
    mc_sets s;
    case_sets(&s, 1, 0, 0, 1, 0);
    rig r;
    if (rig_build(&r, s.p, B, T, 1250)) return;
    run_config soup = r.cfg;
    const char *const sp[] = {"model.aggregate=soup", NULL};
    if (apply_sets(&soup, sp)) return;
    double dout, dgrad;
    compare_configs(&r, &r.cfg, &soup, &dout, &dgrad, 1350);
    CHECK(dout > 1e-4, "soup equals grm even with the normaliser (%g)", dout);
    test_note("soup vs grm without normaliser: %.2g; with it they differ by %.2g", worst, dout);
    model_free(&r.m);
}

/* SSC with K at least the number of cached memories is GRM; with K = 1 (and
 * more than one cached memory) it is not. */
static void test_mc_ssc_all_equals_grm(void) {
    enum { B = 2, T = 13 };
    double worst = 0;
    for (int i = 0; i < 20; i++) {
        mc_sets s;
        case_sets(&s, 1, i % 2, (i / 2) % 2, (i / 4) % 2, i);
        rig r;
        if (rig_build(&r, s.p, B, T, 1400 + i)) return;
        run_config ssc = r.cfg;
        const char *const sp[] = {"model.aggregate=ssc", "model.cache_topk=13", NULL};
        if (apply_sets(&ssc, sp)) return;
        double dout, dgrad;
        compare_configs(&r, &r.cfg, &ssc, &dout, &dgrad, 1500 + i);
        char lb[512];
        CHECK(dout < 1e-12 && dgrad < 1e-12, "%s: ssc (K = all) differs from grm by %g, %g",
              sets_label(&s, lb, sizeof lb), dout, dgrad);
        worst = fmax(worst, fmax(dout, dgrad));
        model_free(&r.m);
    }
    mc_sets s;
    case_sets(&s, 1, 0, 0, 1, 0); /* constant segments of 2: up to 6 cached */
    rig r;
    if (rig_build(&r, s.p, B, T, 1450)) return;
    run_config ssc = r.cfg;
    const char *const sp[] = {"model.aggregate=ssc", "model.cache_topk=1", NULL};
    if (apply_sets(&ssc, sp)) return;
    double dout, dgrad;
    compare_configs(&r, &r.cfg, &ssc, &dout, &dgrad, 1550);
    CHECK(dout > 1e-4, "ssc with K = 1 equals grm (%g)", dout);
    test_note("ssc (K = all) vs grm: %.2g; K = 1 differs by %.2g", worst, dout);
    model_free(&r.m);
}

/* One segment covering the sequence: memcache is the `linear` mixer of the
 * same rule with the same weights, for every aggregation (the gate of a
 * single memory is 1, so wu gets exactly zero gradient). */
static void test_mc_one_segment_is_base_rule(void) {
    enum { B = 2, T = 11 };
    double worst = 0;
    for (int i = 0; i < 2 * N_RULES * 4; i++) {
        int rule = i % N_RULES, agg = (i / N_RULES) % 4, log = i / (4 * N_RULES);
        mc_sets s;
        memset(&s, 0, sizeof s);
        for (int k = 0; rule_sets[rule][k]; k++) sets_add(&s, "%s", rule_sets[rule][k]);
        sets_add(&s, "model.heads=%d", 1 + i % 2);
        sets_add(&s, "model.chunk=%d", 3 + i % 3);
        mc_sets ms = s;
        sets_add(&ms, "model.aggregate=%s", agg_names[agg]);
        sets_add(&ms, "model.segment=%d", T + i % 3);
        sets_add(&ms, "model.segments=%s", log ? "log" : "constant");
        sets_add(&ms, "model.seg_init=%s", i % 3 ? "fresh" : "checkpoint");
        rig r, lr;
        if (rig_build(&r, ms.p, B, T, 1600 + i)) return;
        mc_sets ls;
        memset(&ls, 0, sizeof ls);
        sets_add(&ls, "model.mixer=linear"); /* first: choosing a mixer resets its keys */
        for (int k = 0; k < s.n; k++) sets_add(&ls, "%s", s.p[k]);
        if (rig_build(&lr, ls.p, B, T, 1600 + i)) return;
        /* the linear mixer's parameters are the memcache ones of the same name */
        real *lp[RIG_MAX_PARAMS], *ldp[RIG_MAX_PARAMS];
        for (int k = 0; k < lr.np; k++) {
            lp[k] = ldp[k] = NULL;
            for (int j = 0; j < r.np; j++)
                if (!strcmp(r.names[j], lr.names[k])) lp[k] = r.p[j], ldp[k] = lr.dp[k];
            CHECK(lp[k] != NULL, "memcache has no parameter %s", lr.names[k]);
            if (!lp[k]) return;
        }
        size_t n = (size_t)B * T * r.C;
        double *x = malloc(sizeof(double) * n), *wgt = malloc(sizeof(double) * n);
        double *o1 = malloc(sizeof(double) * n), *o2 = malloc(sizeof(double) * n);
        double *dx1 = calloc(n, sizeof(double)), *dx2 = calloc(n, sizeof(double));
        test_fill(x, n, 1700 + i, -1.5, 1.5);
        test_fill(wgt, n, 1800 + i, -1, 1);
        mixer_call mc = call_of(&r, &r.cfg), lc = call_of(&lr, &lr.cfg);
        lc.p = lp, lc.dp = ldp;
        r.mx->forward(&mc, o1, x);
        lr.mx->forward(&lc, o2, x);
        model_zero_grad(&r.m);
        model_zero_grad(&lr.m);
        r.mx->backward(&mc, dx1, wgt, x);
        lr.mx->backward(&lc, dx2, wgt, x);
        double d = fmax(max_rel_diff(o1, o2, n), max_rel_diff(dx1, dx2, n));
        for (int k = 0; k < lr.np; k++)
            for (int j = 0; j < r.np; j++)
                if (!strcmp(r.names[j], lr.names[k]))
                    d = fmax(d, max_rel_diff(r.dp[j], lr.dp[k], lr.sizes[k]));
        char lb[512];
        CHECK(d < 1e-12, "%s: one segment differs from the linear mixer by %g",
              sets_label(&ms, lb, sizeof lb), d);
        for (int j = 0; j < r.np; j++)
            if (strstr(r.names[j], ".wu")) {
                double mx = 0;
                for (size_t k = 0; k < r.sizes[j]; k++) mx = fmax(mx, fabs(r.dp[j][k]));
                CHECK(mx == 0, "%s: wu has gradient %g with one segment",
                      sets_label(&ms, lb, sizeof lb), mx);
            }
        worst = fmax(worst, d);
        call_free(&mc), call_free(&lc);
        free(x), free(wgt), free(o1), free(o2), free(dx1), free(dx2);
        model_free(&r.m), model_free(&lr.m);
    }
    test_note("one segment vs the linear mixer, 40 configs: %.2g", worst);
}

/* cache_grad false: the forward is bit-identical to true; the gradient
 * differs; and with fresh segments (the online memory restarts) a loss on
 * segment j's outputs gives no gradient to the inputs of earlier segments.
 * With checkpoint init it still does (through the online memory). */
static void test_mc_cache_grad(void) {
    enum { B = 1, T = 12 };
    for (int i = 0; i < 8; i++) {
        int agg = i % 4, fresh = 1 - (i / 4) % 2;
        mc_sets s;
        case_sets(&s, agg, i % 2, fresh, 0, i);
        rig r;
        if (rig_build(&r, s.p, B, T, 1900 + i)) return;
        run_config on = r.cfg;
        const char *const cg[] = {"model.cache_grad=true", NULL};
        if (apply_sets(&on, cg)) return;
        size_t n = (size_t)T * r.C, np = r.m.n_params;
        double *x = malloc(sizeof(double) * n), *wgt = calloc(n, sizeof(double));
        double *o1 = malloc(sizeof(double) * n), *o2 = malloc(sizeof(double) * n);
        double *dx1 = malloc(sizeof(double) * n), *dx2 = malloc(sizeof(double) * n);
        double *g1 = malloc(sizeof(double) * np), *g2 = malloc(sizeof(double) * np);
        test_fill(x, n, 2000 + i, -1.5, 1.5);
        /* the loss reads only the last segment's outputs */
        int c = 0;
        for (int k = 0; s.p[k]; k++)
            if (!strncmp(s.p[k], "model.segment=", 14)) c = atoi(s.p[k] + 14);
        int last = ((T - 1) / c) * c;
        test_fill(wgt + (size_t)last * r.C, (size_t)(T - last) * r.C, 2100 + i, -1, 1);
        run_once(&r, &r.cfg, x, wgt, o1, dx1, g1);
        run_once(&r, &on, x, wgt, o2, dx2, g2);
        char lb[512];
        sets_label(&s, lb, sizeof lb);
        CHECK(memcmp(o1, o2, sizeof(double) * n) == 0, "%s: forward depends on cache_grad", lb);
        CHECK(max_rel_diff(dx1, dx2, n) > 1e-6, "%s: cache_grad changes no gradient", lb);
        /* tokens of the segments before the last: the part of dx that does
         * not come through the pools of the last segment's own tokens */
        double before_off = 0, before_on = 0;
        for (size_t k = 0; k < (size_t)last * r.C; k++) {
            before_off = fmax(before_off, fabs(dx1[k]));
            before_on = fmax(before_on, fabs(dx2[k]));
        }
        if (fresh)
            CHECK(before_off == 0, "%s: earlier segments get gradient %g", lb, before_off);
        else
            CHECK(before_off > 0, "%s: checkpoint init cut the online memory's gradient", lb);
        CHECK(before_on > 0, "%s: with cache_grad the earlier segments get no gradient", lb);
        free(x), free(wgt), free(o1), free(o2), free(dx1), free(dx2), free(g1), free(g2);
        model_free(&r.m);
    }
}

/* Changing x at position j leaves every output before j bit-identical and
 * moves the output at j (every aggregation, both segmentations and inits;
 * the online pool must not see the future of its own segment). */
static void test_mc_causality(void) {
    enum { B = 1, T = 11 };
    for (int i = 0; i < 16; i++) {
        mc_sets s;
        case_sets(&s, i % 4, (i / 4) % 2, (i / 8) % 2, 1, i);
        for (int form = 0; form < 2; form++) {
            rig r;
            if (rig_build(&r, s.p, B, T, 2200 + i)) return;
            run_config cfg = r.cfg;
            const char *const f[] = {form ? "model.form=recurrent" : "model.form=chunkwise",
                                     NULL};
            if (apply_sets(&cfg, f)) return;
            mixer_call mc = call_of(&r, &cfg);
            int C = r.C;
            size_t n = (size_t)T * C;
            double *x = malloc(sizeof(double) * n), *base = malloc(sizeof(double) * n);
            double *out = malloc(sizeof(double) * n);
            test_fill(x, n, 2300 + i, -1.5, 1.5);
            r.mx->forward(&mc, base, x);
            char lb[512];
            sets_label(&s, lb, sizeof lb);
            for (int j = 0; j < T; j++) {
                double keep[8];
                memcpy(keep, x + (size_t)j * C, sizeof(double) * C);
                for (int k = 0; k < C; k++) x[(size_t)j * C + k] += 0.5;
                r.mx->forward(&mc, out, x);
                int before = 0, at = 0;
                for (size_t k = 0; k < (size_t)j * C; k++) before |= out[k] != base[k];
                for (int k = 0; k < C; k++)
                    at |= out[(size_t)j * C + k] != base[(size_t)j * C + k];
                CHECK(!before, "%s (form %d): output before %d moved", lb, form, j);
                CHECK(at, "%s (form %d): output at %d did not move", lb, form, j);
                memcpy(x + (size_t)j * C, keep, sizeof(double) * C);
            }
            free(x), free(base), free(out);
            call_free(&mc);
            model_free(&r.m);
        }
    }
}

/* ---- whole models ----------------------------------------------------------------- */

static const char *const block_variants[][8] = {
    {"model.conv=3", "model.mlp=true", "model.norm=layer", "model.tie_embeddings=true", NULL},
    {"model.conv=0", "model.mlp=false", "model.norm=rms", "model.tie_embeddings=false",
     "model.position=learned", NULL},
};

typedef struct model_ctx {
    ml_model *m;
    const int *in, *tg;
    int B, T;
} model_ctx;

static double model_loss(void *p) {
    model_ctx *c = p;
    return model_forward(c->m, c->in, c->tg, c->B, c->T, NULL);
}

static int tiny_model(ml_model *m, run_config *cfg, const char *const *mix,
                      const char *const *var, int B, int T) {
    const char *const base[] = {"task.vocab_size=16", "task.seq_len=12", "task.num_kv_pairs=2",
                                "model.mixer=memcache", "model.d_model=8", "model.n_layers=2",
                                "model.init_std=0.4", "model.mlp_ratio=2", NULL};
    if (make_cfg(cfg, base, mix) || apply_sets(cfg, var)) return -1;
    ml_error e;
    if (model_build(m, &cfg->model, 16, T, B, &e)) {
        CHECK(0, "model_build: %s", e.msg);
        return -1;
    }
    model_init_weights(m, 3);
    perturb_trivial(m, 11);
    return 0;
}

/* Every parameter of 2-layer models (each aggregation, both segmentations,
 * both inits, several rules), two block variants, against central
 * differences (gradcheck.h defaults). */
static void test_mc_model_gradcheck(void) {
    enum { B = 2, T = 11 };
    int in[B * T], tg[B * T];
    double u[3 * B * T];
    for (int i = 0; i < 8; i++) {
        mc_sets s;
        case_sets(&s, i % 4, (i / 2) % 2, (i / 4) % 2, 1, i + 1);
        int vi = i % 2;
        ml_model m;
        run_config cfg;
        if (tiny_model(&m, &cfg, s.p, block_variants[vi], B, T)) return;
        test_fill(u, 3 * B * T, 2400 + i, 0, 1);
        for (int k = 0; k < B * T; k++) {
            in[k] = (int)(u[k] * 16);
            tg[k] = u[B * T + k] < 0.5 ? (int)(u[2 * B * T + k] * 16) : -1;
        }
        tg[B * T - 1] = 3;
        model_ctx c = {&m, in, tg, B, T};
        model_forward(&m, in, tg, B, T, NULL);
        model_zero_grad(&m);
        model_backward(&m);
        double *g = malloc(sizeof(double) * m.n_params);
        memcpy(g, m.g, sizeof(double) * m.n_params);
        gc_tensor *ts = malloc(sizeof(gc_tensor) * (size_t)m.n_tensors);
        for (int k = 0; k < m.n_tensors; k++) {
            const ml_param *p = &m.params[k];
            ts[k] = (gc_tensor){p->name, m.w + p->offset, g + p->offset, p->n};
        }
        char label[600], lb[512];
        snprintf(label, sizeof label, "2-layer memcache model (%s), block variant %d",
                 sets_label(&s, lb, sizeof lb), vi);
        gradcheck_expect(label, model_loss, &c, ts, m.n_tensors);
        free(ts), free(g);
        model_free(&m);
    }
}

/* Through the whole model (conv, MLP, 2 layers): changing token j leaves
 * every logit before j bit-identical and moves the logits at j. */
static void test_mc_model_causality(void) {
    enum { B = 1, T = 12, V = 16 };
    int in[T], tg[T];
    for (int i = 0; i < 4; i++) {
        mc_sets s;
        case_sets(&s, i, i % 2, (i / 2) % 2, 1, i);
        ml_model m;
        run_config cfg;
        if (tiny_model(&m, &cfg, s.p, block_variants[0], B, T)) return;
        m.full_head = 1;
        for (int t = 0; t < T; t++) in[t] = (t * 5 + 3) % V, tg[t] = t % V;
        double *base = malloc(sizeof(double) * T * V);
        model_forward(&m, in, tg, B, T, NULL);
        memcpy(base, model_logits(&m), sizeof(double) * T * V);
        char lb[512];
        sets_label(&s, lb, sizeof lb);
        for (int j = 0; j < T; j++) {
            int keep = in[j];
            in[j] = (keep + 7) % V;
            model_forward(&m, in, tg, B, T, NULL);
            const double *p = model_logits(&m);
            int before = 0, at = 0;
            for (int k = 0; k < j * V; k++) before |= p[k] != base[k];
            for (int k = j * V; k < (j + 1) * V; k++) at |= p[k] != base[k];
            CHECK(!before, "%s: logits before %d moved", lb, j);
            CHECK(at, "%s: logits at %d did not move", lb, j);
            in[j] = keep;
        }
        free(base);
        model_free(&m);
    }
}

/* State size per layer: the memories the most-reading token holds (online
 * included), each H F Dv (+ H F with the normaliser), plus a pool of C (x)
 * or H F (k) floats each for the gated aggregations. Counted by hand here. */
static void test_mc_state_size(void) {
    typedef struct {
        const char *sets[8];
        int T;
        long want;
    } sz_case;
    /* d 64, 1 head, F = Dv = 64: a memory is 4096 (+64 normaliser) floats */
    static const sz_case cases[] = {
        /* constant 64 at T 256: the last token reads 3 cached + online = 4 */
        {{"model.aggregate=residual", NULL}, 256, 4L * (4096 + 64)},
        {{"model.aggregate=grm", NULL}, 256, 4L * (4096 + 64 + 64)},
        {{"model.aggregate=grm", "model.pool=k", NULL}, 256, 4L * (4096 + 64 + 64)},
        {{"model.aggregate=grm", "model.segment=16", NULL}, 256, 16L * (4096 + 64 + 64)},
        /* one segment: the base rule */
        {{"model.aggregate=residual", "model.segment=256", NULL}, 256, 4096 + 64},
        /* log, segment 16: segments 0..15, segment 15 = 1111b reads 4 */
        {{"model.aggregate=residual", "model.segments=log", "model.segment=16", NULL}, 256,
         5L * (4096 + 64)},
        /* log, segment 16, T 200: segments 0..12; 7 and 11 read 3 */
        {{"model.aggregate=residual", "model.segments=log", "model.segment=16", NULL}, 200,
         4L * (4096 + 64)},
        /* delta rule: no normaliser; 2 heads of 32: H F Dv = 2048 */
        {{"model.rule=delta", "model.normalize=false", "model.heads=2",
          "model.aggregate=ssc", "model.pool=k", NULL}, 128, 2L * (2048 + 64)},
        /* short conv of 4: 3 past rows of the 192-wide projection */
        {{"model.aggregate=residual", "model.short_conv=4", NULL}, 64, 4096 + 64 + 3 * 192},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *const base[] = {"model.mixer=memcache", "model.d_model=64",
                                    "model.n_layers=2", NULL};
        run_config cfg;
        ml_model m;
        ml_error e;
        if (make_cfg(&cfg, base, cases[i].sets)) return;
        if (model_build(&m, &cfg.model, 100, cases[i].T, 1, &e)) {
            CHECK(0, "model_build: %s", e.msg);
            return;
        }
        long got = model_state_size(&m, cases[i].T);
        CHECK(got == 2 * cases[i].want, "case %zu: state %ld, want %ld", i, got,
              2 * cases[i].want);
        model_free(&m);
    }
}

/* Impossible values are refused at their key, with a reason. */
static void test_mc_validation(void) {
    static const struct {
        const char *set, *want;
    } bad[] = {
        {"model.segment=0", "model.segment"},
        {"model.cache_topk=0", "model.cache_topk"},
        {"model.segments=quadratic", "model.segments"},
        {"model.aggregate=mean", "model.aggregate"},
        {"model.pool=v", "model.pool"},
        {"model.seg_init=warm", "model.seg_init"},
        {"model.form=parallel", "model.form"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        run_config cfg;
        ml_error e;
        const char *const base[] = {"model.mixer=memcache", NULL};
        if (make_cfg(&cfg, base, NULL)) return;
        memset(&e, 0, sizeof e);
        int rc = spec_set(&cfg, bad[i].set, &e);
        if (rc == 0) rc = spec_validate(&cfg, &e);
        CHECK(rc != 0, "%s accepted", bad[i].set);
        CHECK(strstr(e.msg, bad[i].want + 6) != NULL, "%s: message '%s'", bad[i].set, e.msg);
    }
    const char *yaml = "model:\n  mixer: memcache\n  rule: delta\n  normalize: true\n";
    run_config cfg;
    ml_error e;
    memset(&e, 0, sizeof e);
    CHECK(spec_load_string(yaml, strlen(yaml), "mc.yaml", &cfg, &e) == -1,
          "normalize with the delta rule accepted");
    CHECK(strstr(e.msg, "normalize") != NULL, "message '%s'", e.msg);
    const char *heads = "model:\n  mixer: memcache\n  d_model: 64\n  heads: 3\n";
    CHECK(spec_load_string(heads, strlen(heads), "mc.yaml", &cfg, &e) == -1,
          "heads 3 with d_model 64 accepted");
    CHECK(strstr(e.msg, "heads") != NULL, "message '%s'", e.msg);
    const char *ok = "model:\n  mixer: memcache\n  rule: gated_delta\n  normalize: false\n"
                     "  segments: log\n  seg_init: fresh\n  aggregate: ssc\n  cache_topk: 3\n"
                     "  pool: k\n  cache_grad: false\n  segment: 32\n";
    CHECK(spec_load_string(ok, strlen(ok), "mc.yaml", &cfg, &e) == 0, "valid spec refused: %s",
          e.msg);
}

/* Training end to end on a tiny MQAR (float build's numbers are not used
 * here: this is the double build): the loss falls, and the same seed repeats
 * bitwise. */
static void test_mc_training_runs(void) {
    static const char *const sets[] = {
        "task.vocab_size=64", "task.seq_len=16",  "task.num_kv_pairs=2", "model.mixer=memcache",
        "model.d_model=16",   "model.n_layers=2", "model.conv=3",        "model.mlp=false",
        "model.segment=4",    "train.steps=120",  "train.batch_size=16", "train.lr=1e-2",
        "train.warmup=5",     "train.train_examples=0", "eval.every=120", "eval.examples=64",
        "eval.batch_size=32", NULL};
    run_config cfg;
    const char *const var[] = {"model.segments=log", "model.aggregate=ssc", NULL};
    if (make_cfg(&cfg, sets, var)) return;
    ml_error e;
    train_outcome a, b;
    train_opts o = {0};
    CHECK(train_run(&cfg, NULL, &o, &a, &e) == 0, "train: %s", e.msg);
    CHECK(train_run(&cfg, NULL, &o, &b, &e) == 0, "train: %s", e.msg);
    CHECK(!strcmp(a.status, "finished"), "status %s", a.status);
    CHECK(a.test_loss < 3.6, "test loss %.4f did not fall below 3.6", a.test_loss);
    CHECK(a.train_loss == b.train_loss && a.test_loss == b.test_loss,
          "same seed, different numbers (%.17g vs %.17g)", a.test_loss, b.test_loss);
    test_note("test loss %.3f, accuracy %.3f", a.test_loss, a.test_accuracy);
}

/* ---- the twin's fixtures ------------------------------------------------------------ */

/* Loss, logits and every gradient of the fixture's model against the twin
 * to a relative 1e-9 (test_twin.c's tolerance). Returns 1 when compared. */
static int check_fixture(const char *path) {
    fixture f;
    ml_error e;
    run_config cfg;
    ml_model m;
    if (fixture_load(path, &f, &e)) {
        CHECK(0, "%s", e.msg);
        return 0;
    }
    const fx_entry *spec = fixture_get(&f, "spec"), *in = fixture_get(&f, "input"),
                   *tg = fixture_get(&f, "target"), *fl = fixture_get(&f, "loss"),
                   *lg = fixture_get(&f, "logits");
    if (!spec || !in || !tg || !fl || !lg || in->kind != FX_I32 || tg->kind != FX_I32 ||
        in->ndim != 2 || fl->kind != FX_F64 || lg->kind != FX_F64) {
        CHECK(0, "%s: malformed fixture", path);
        fixture_free(&f);
        return 0;
    }
    if (spec_load_string(spec->text, spec->n, path, &cfg, &e)) {
        CHECK(0, "%s: spec refused: %s", path, e.msg);
        fixture_free(&f);
        return 0;
    }
    const ml_task *t = task_find(cfg.task);
    int V = t->vocab_size(&cfg.task_cfg), L = t->seq_len(&cfg.task_cfg);
    int B = (int)in->dims[0], T = (int)in->dims[1];
    if (model_build(&m, &cfg.model, V, L, B, &e)) {
        CHECK(0, "%s: model_build: %s", path, e.msg);
        fixture_free(&f);
        return 0;
    }
    int ok = 1;
    for (int i = 0; i < m.n_tensors; i++) {
        const ml_param *p = &m.params[i];
        const fx_entry *x = fixture_get(&f, p->name);
        if (!x || x->kind != FX_F64 || x->n != p->n) {
            CHECK(0, "%s: parameter %s missing or mis-sized", path, p->name);
            ok = 0;
            continue;
        }
        memcpy(m.w + p->offset, x->f64, sizeof(double) * p->n);
    }
    if (ok) {
        m.full_head = 1;
        double loss = model_forward(&m, in->i32, tg->i32, B, T, NULL);
        CHECK(fabs(loss - fl->f64[0]) <= 1e-9 * fabs(fl->f64[0]), "%s: loss %.17g, twin %.17g",
              path, loss, fl->f64[0]);
        /* log-probabilities at every position against the twin's logits */
        const double *pr = model_logits(&m);
        double worst_lp = 0;
        if (lg->n == (size_t)B * T * V)
            for (int r = 0; r < B * T; r++) {
                const double *z = lg->f64 + (size_t)r * V;
                double mx = z[0], se = 0;
                for (int v = 1; v < V; v++) mx = fmax(mx, z[v]);
                for (int v = 0; v < V; v++) se += exp(z[v] - mx);
                for (int v = 0; v < V; v++) {
                    double lp = z[v] - mx - log(se), mine = log(pr[(size_t)r * V + v]);
                    worst_lp = fmax(worst_lp, fabs(mine - lp) / fmax(1.0, fabs(lp)));
                }
            }
        else
            CHECK(0, "%s: logits of %zu values, want %d", path, lg->n, B * T * V);
        CHECK(worst_lp <= 1e-9, "%s: log-probabilities differ by %.3g", path, worst_lp);
        model_zero_grad(&m);
        model_backward(&m);
        double worst = 0;
        for (int i = 0; i < m.n_tensors; i++) {
            const ml_param *p = &m.params[i];
            char gname[128];
            snprintf(gname, sizeof gname, "grad.%s", p->name);
            const fx_entry *g = fixture_get(&f, gname);
            if (!g || g->n != p->n) {
                CHECK(0, "%s: %s missing", path, gname);
                continue;
            }
            double num = 0, den = 0;
            for (size_t k = 0; k < p->n; k++) {
                num = fmax(num, fabs(m.g[p->offset + k] - g->f64[k]));
                den = fmax(den, fabs(g->f64[k]));
            }
            double d = den > 0 ? num / den : num;
            worst = fmax(worst, d);
            CHECK(d <= 1e-9, "%s: %s differs from the twin by %.3g", path, gname, d);
        }
        test_note("%s: loss %.6f, worst gradient difference %.2g, log-probabilities %.2g", path,
                  loss, worst, worst_lp);
    }
    model_free(&m);
    fixture_free(&f);
    return ok;
}

/* Check every memcache_*.fx of dir; returns how many there were. */
static int check_fixture_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 3, ".fx") || strncmp(de->d_name, "memcache_", 9))
            continue;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        check_fixture(path);
        n++;
    }
    closedir(d);
    return n;
}

static void test_mc_twin(void) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/fixtures/memcache", test_dir());
    int committed = check_fixture_dir(dir);
    snprintf(dir, sizeof dir, "%s/../build/twin/memcache", test_dir());
    int fresh = check_fixture_dir(dir);
    CHECK(committed >= 8, "only %d fixtures in %s/fixtures/memcache (make twin)", committed,
          test_dir());
    test_note("%d committed and %d fresh memcache fixtures", committed, fresh);
}

const test_case tests_memcache[] = {
    {"memcache: state kernel chunkwise == token by token", test_mcs_fast_equals_ref},
    {"memcache: state kernel gradient check", test_mcs_gradcheck},
    {"memcache: mixer gradient check (16 configs)", test_mc_mixer_gradcheck},
    {"memcache: fast path == naive path (64 configs)", test_mc_fast_equals_naive},
    {"memcache: one segment = the linear mixer", test_mc_one_segment_is_base_rule},
    {"memcache: soup == grm for linear memory", test_mc_soup_equals_grm},
    {"memcache: ssc with K = all == grm", test_mc_ssc_all_equals_grm},
    {"memcache: cache_grad false", test_mc_cache_grad},
    {"memcache: mixer on rows == rows of the full call", test_mc_mixer_rows},
    {"memcache: mixer causality by perturbation", test_mc_causality},
    {"memcache: 2-layer model gradient check", test_mc_model_gradcheck},
    {"memcache: model causality by perturbation", test_mc_model_causality},
    {"memcache: state size", test_mc_state_size},
    {"memcache: impossible keys refused", test_mc_validation},
    {"memcache: training runs, loss falls, repeats", test_mc_training_runs},
    {"memcache: PyTorch twin", test_mc_twin},
    {NULL, NULL},
};
