/* test_linfam.c: tests of the linear-attention family beyond plain linear
 * attention: SiLU, L2 norm and Based's Taylor map (silu.c, l2norm.c,
 * taylor_map.c), the decay and delta rules (gated_delta.c), and the mixers
 * linear, deltanet, gated_deltanet, mamba2 and based (mixer_linear.c).
 *
 * What is pinned against what:
 *   - the Taylor map against its defining identity
 *     phi(q).phi(k) = 1 + q.k/sqrt(d) + (q.k)^2/(2d), and its width (153 at 16);
 *   - both forms of every rule against an oracle written here from the
 *     definition (a dense Dk x Dk transition matrix per token), on awkward
 *     shapes (T not a multiple of the chunk, chunk 1, chunk > T, one head,
 *     strided rows); chunkwise backward against recurrent backward; backward
 *     accumulates; the additive rule against linear_attention.c;
 *   - every backward against central finite differences (gradcheck.h);
 *   - causality by perturbation, kernels and whole models;
 *   - whole 2-layer models of every entry against central differences, the
 *     chunkwise model against the recurrent one, exact state sizes, and a
 *     short MQAR run that must learn.
 * Buffers are allocated at exactly the sizes the kernels ask for, so the
 * sanitizer build catches a save or scratch size that is too small. */
#ifndef MEMLAB_DOUBLE
#error "test_linfam.c checks gradients in double: build it with -DMEMLAB_DOUBLE"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "kernels.h"
#include "mixer.h"
#include "model.h"
#include "spec.h"
#include "test.h"
#include "train.h"

/* Two implementations of the same sums in double (the chunkwise form adds a
 * triangular solve, so a little more than rounding of one sum). */
#define TOL_SAME 1e-11

/* Zeroed n doubles, aborting on failure (n = 0 gives nothing usable). */
static double *dalloc(size_t n) {
    double *p = calloc(n, sizeof(double));
    if (!p && n) abort();
    return p;
}

/* n doubles uniform in [lo, hi) from seed. */
static double *dfilled(size_t n, unsigned long long seed, double lo, double hi) {
    double *p = dalloc(n);
    test_fill(p, n, seed, lo, hi);
    return p;
}

/* A fresh copy of x[n]. */
static double *dcopy(const double *x, size_t n) {
    double *p = dalloc(n);
    memcpy(p, x, n * sizeof(double));
    return p;
}

/* sum a[i] b[i], the test's own arithmetic. */
static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ============================ feature maps ============================ */

/* SiLU against x / (1 + e^-x); the L2 norm gives unit rows; the Taylor map
 * reproduces its kernel 1 + s/sqrt(d) + s^2/(2d) for s = q.k. */
static void test_maps_values(void) {
    double x[5] = {-30, -1.5, 0, 0.7, 25}, y[5];
    silu_forward(y, x, 5);
    for (int i = 0; i < 5; i++)
        CHECK(fabs(y[i] - x[i] / (1 + exp(-x[i]))) <= 1e-15 * (1 + fabs(x[i])),
              "silu(%g) = %.17g", x[i], y[i]);
    double *r = dfilled(12, 3, -2, 2), rn[3];
    l2norm_forward(r, rn, r, 3, 4, 0);
    for (int i = 0; i < 3; i++)
        CHECK(fabs(dot(r + 4 * i, r + 4 * i, 4) - 1) < 1e-14, "l2norm row %d not unit", i);
    free(r);

    CHECK(taylor_width(16) == 153, "taylor width of 16 is %d, want 153", taylor_width(16));
    CHECK(taylor_width(1) == 3, "taylor width of 1 is %d", taylor_width(1));
    static const int dims[] = {1, 3, 16};
    for (int di = 0; di < 3; di++) {
        int D = dims[di], F = taylor_width(D);
        double *q = dfilled((size_t)D, 10 + di, -1.5, 1.5);
        double *k = dfilled((size_t)D, 20 + di, -1.5, 1.5);
        double *pq = dalloc((size_t)F), *pk = dalloc((size_t)F);
        taylor_forward(pq, q, 1, D, D, F);
        taylor_forward(pk, k, 1, D, D, F);
        double s = dot(q, k, (size_t)D);
        double want = 1 + s / sqrt((double)D) + s * s / (2.0 * D);
        double got = dot(pq, pk, (size_t)F);
        CHECK(fabs(got - want) <= 1e-13 * fabs(want), "taylor D%d: phi.phi %.17g, want %.17g", D,
              got, want);
        free(q), free(k), free(pq), free(pk);
    }
}

typedef struct map_ctx {
    int which; /* 0 silu, 1 l2norm, 2 taylor */
    int n, D, F, ldx;
    double *x, *y, *w, *rn;
} map_ctx;

/* L = sum w .* map(x). */
static double map_loss(void *p) {
    map_ctx *c = p;
    if (c->which == 0) silu_forward(c->y, c->x, (size_t)c->n * c->D);
    if (c->which == 1) l2norm_forward(c->y, c->rn, c->x, c->n, c->D, 1e-6);
    if (c->which == 2) taylor_forward(c->y, c->x, c->n, c->D, c->ldx, c->F);
    size_t m = (size_t)c->n * (c->which == 2 ? c->F : c->D);
    return dot(c->w, c->y, m);
}

/* Each map's backward against central differences, from a random prefill
 * (so the increment is what is checked: backward must accumulate). */
static void test_maps_gradcheck(void) {
    static const char *const names[] = {"silu", "l2norm", "taylor (strided rows)"};
    for (int which = 0; which < 3; which++) {
        map_ctx c = {which, 3, 4, 0, 0, NULL, NULL, NULL, NULL};
        c.ldx = which == 2 ? 6 : c.D;
        c.F = which == 2 ? taylor_width(c.D) : c.D;
        size_t nx = (size_t)c.n * c.ldx, ny = (size_t)c.n * c.F;
        c.x = dfilled(nx, 40 + which, -2, 2);
        c.y = dalloc(ny);
        c.w = dfilled(ny, 50 + which, -1, 1);
        c.rn = dalloc((size_t)c.n);
        double *g = dfilled(nx, 60, -1, 1), *pre = dcopy(g, nx);
        map_loss(&c);
        if (which == 0) silu_backward(g, c.w, c.x, nx);
        if (which == 1) l2norm_backward(g, c.w, c.y, c.rn, c.n, c.D);
        if (which == 2) taylor_backward(g, c.w, c.x, c.n, c.D, c.ldx, c.F);
        for (size_t i = 0; i < nx; i++) g[i] -= pre[i];
        gc_tensor t = {"x", c.x, g, nx};
        gradcheck_expect(names[which], map_loss, &c, &t, 1);
        /* the strided gaps between Taylor rows get no gradient */
        if (which == 2)
            for (int r = 0; r < c.n; r++)
                CHECK(g[(size_t)r * c.ldx + 4] == 0 && g[(size_t)r * c.ldx + 5] == 0,
                      "taylor wrote outside its rows");
        free(c.x), free(c.y), free(c.w), free(c.rn), free(g), free(pre);
    }
}

/* The fused gate of the gated output norm against its composition from
 * silu_forward and silu_backward: the same bits both ways. */
static void test_silu_mul(void) {
    enum { n = 37 };
    double *g = dfilled(n, 70, -6, 6), *a = dfilled(n, 71, -2, 2), *dy = dfilled(n, 72, -1, 1);
    double *y1 = dalloc(n), *y2 = dalloc(n), *t = dalloc(n), *da1 = dalloc(n), *da2 = dalloc(n);
    double *dg1 = dfilled(n, 73, -1, 1), *dg2 = dcopy(dg1, n);
    silu_mul_forward(y1, g, a, n);
    silu_forward(y2, g, n);
    for (int i = 0; i < n; i++) y2[i] *= a[i];
    silu_mul_backward(dg1, da1, dy, g, a, n);
    for (int i = 0; i < n; i++) t[i] = dy[i] * a[i];
    silu_backward(dg2, t, g, n);
    silu_forward(da2, g, n);
    for (int i = 0; i < n; i++) da2[i] *= dy[i];
    CHECK(!memcmp(y1, y2, sizeof(double) * n), "silu_mul_forward differs from silu times a");
    CHECK(!memcmp(dg1, dg2, sizeof(double) * n) && !memcmp(da1, da2, sizeof(double) * n),
          "silu_mul_backward differs from silu_backward and silu_forward");
    free(g), free(a), free(dy), free(y1), free(y2), free(t), free(da1), free(da2), free(dg1),
        free(dg2);
}

/* ======================= decay and delta rules ========================= */

static const char *const rule_names[4] = {"additive", "decay", "delta", "gated_delta"};

/* Inputs of one gdelta configuration: q, k, v either in three arrays or packed
 * per token [q | k | v]; beta and g contiguous [B,T,H] or packed per token
 * [beta | g] (gate_stride 2H). */
typedef struct gd_io {
    double *qkv[3], *gates[2];
    size_t nqkv[3], ngates[2];
    double *q, *k, *v, *beta, *g;
} gd_io;

/* The rule index (0 additive, 1 decay, 2 delta, 3 gated delta) into d's switches. */
static void set_rule(gdelta_dims *d, int rule) {
    d->decay = rule == 1 || rule == 3;
    d->delta = rule >= 2;
}

static void gd_io_alloc(gd_io *io, gdelta_dims *d, int packed) {
    size_t BT = (size_t)d->B * d->T, HK = (size_t)d->H * d->Dk, HV = (size_t)d->H * d->Dv;
    size_t H = (size_t)d->H;
    memset(io, 0, sizeof *io);
    if (packed) {
        d->q_stride = d->k_stride = d->v_stride = (int)(2 * HK + HV);
        d->gate_stride = (int)(2 * H);
        io->nqkv[0] = BT * (2 * HK + HV);
        io->qkv[0] = dalloc(io->nqkv[0]);
        io->q = io->qkv[0], io->k = io->q + HK, io->v = io->k + HK;
        io->ngates[0] = BT * 2 * H;
        io->gates[0] = dalloc(io->ngates[0]);
        io->beta = io->gates[0], io->g = io->gates[0] + H;
    } else {
        d->q_stride = d->k_stride = (int)HK, d->v_stride = (int)HV, d->gate_stride = (int)H;
        io->nqkv[0] = io->nqkv[1] = BT * HK, io->nqkv[2] = BT * HV;
        for (int i = 0; i < 3; i++) io->qkv[i] = dalloc(io->nqkv[i]);
        io->q = io->qkv[0], io->k = io->qkv[1], io->v = io->qkv[2];
        io->ngates[0] = io->ngates[1] = BT * H;
        for (int i = 0; i < 2; i++) io->gates[i] = dalloc(io->ngates[i]);
        io->beta = io->gates[0], io->g = io->gates[1];
    }
}

/* Same layout, zeroed (for gradients). */
static void gd_io_like(gd_io *dst, const gd_io *io) {
    *dst = *io;
    for (int i = 0; i < 3; i++) dst->qkv[i] = io->qkv[i] ? dalloc(io->nqkv[i]) : NULL;
    for (int i = 0; i < 2; i++) dst->gates[i] = io->gates[i] ? dalloc(io->ngates[i]) : NULL;
    dst->q = dst->qkv[0] + (io->q - io->qkv[0]);
    dst->k = io->qkv[1] ? dst->qkv[1] : dst->qkv[0] + (io->k - io->qkv[0]);
    dst->v = io->qkv[2] ? dst->qkv[2] : dst->qkv[0] + (io->v - io->qkv[0]);
    dst->beta = dst->gates[0] + (io->beta - io->gates[0]);
    dst->g = io->gates[1] ? dst->gates[1] : dst->gates[0] + (io->g - io->gates[0]);
}

static void gd_io_free(gd_io *io) {
    for (int i = 0; i < 3; i++) free(io->qkv[i]);
    for (int i = 0; i < 2; i++) free(io->gates[i]);
}

/* q, k, v in [-1, 1); beta in (0.1, 0.9); g in [-0.8, -0.05). Keys are scaled
 * to norm about 1 so the delta rule stays a contraction on these shapes. */
static void gd_io_fill(gd_io *io, const gdelta_dims *d, unsigned long long seed) {
    for (int i = 0; i < 3; i++)
        if (io->qkv[i]) test_fill(io->qkv[i], io->nqkv[i], seed + i, -1, 1);
    double s = 1 / sqrt((double)d->Dk / 3.0);
    for (int r = 0; r < d->B * d->T; r++)
        for (int j = 0; j < d->H * d->Dk; j++) io->k[(size_t)r * d->k_stride + j] *= s;
    double *u = dfilled((size_t)d->B * d->T * d->H * 2, seed + 7, 0, 1);
    for (int r = 0; r < d->B * d->T; r++)
        for (int h = 0; h < d->H; h++) {
            size_t o = (size_t)r * d->gate_stride + h, ui = ((size_t)r * d->H + h) * 2;
            io->beta[o] = 0.1 + 0.8 * u[ui];
            io->g[o] = -0.05 - 0.75 * u[ui + 1];
        }
    free(u);
}

/* max |a - b| over every buffer, relative to max |b| over every buffer
 * (one common scale: a gradient can be ~0 by cancellation). */
static double gd_io_diff(const gd_io *a, const gd_io *b) {
    double m = 0, sc = 1e-300;
    for (int i = 0; i < 5; i++) {
        const double *x = i < 3 ? a->qkv[i] : a->gates[i - 3];
        const double *y = i < 3 ? b->qkv[i] : b->gates[i - 3];
        size_t n = i < 3 ? a->nqkv[i] : a->ngates[i - 3];
        for (size_t j = 0; x && j < n; j++) {
            double e = fabs(x[j] - y[j]);
            if (!(e <= m)) m = e;
            sc = fmax(sc, fabs(y[j]));
        }
    }
    return m / sc;
}

/* The definition with a dense transition: per token A_t = a_t (I - beta_t k_t
 * k_t^T) (or a_t I), S = A_t S + beta_t k_t v_t^T (or k_t v_t^T), o = S^T q. */
static void gd_oracle(double *out, const gd_io *io, const gdelta_dims *d) {
    const int Dk = d->Dk, Dv = d->Dv;
    double *S = dalloc((size_t)Dk * Dv), *N = dalloc((size_t)Dk * Dv), *A = dalloc((size_t)Dk * Dk);
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->H; h++) {
            memset(S, 0, sizeof(double) * (size_t)Dk * Dv);
            for (int t = 0; t < d->T; t++) {
                size_t bt = (size_t)b * d->T + t;
                const double *q = io->q + bt * d->q_stride + (size_t)h * Dk;
                const double *k = io->k + bt * d->k_stride + (size_t)h * Dk;
                const double *v = io->v + bt * d->v_stride + (size_t)h * Dv;
                double beta = d->delta ? io->beta[bt * d->gate_stride + h] : 1;
                double a = d->decay ? exp(io->g[bt * d->gate_stride + h]) : 1;
                for (int i = 0; i < Dk; i++)
                    for (int j = 0; j < Dk; j++)
                        A[i * Dk + j] = a * ((i == j) - (d->delta ? beta * k[i] * k[j] : 0));
                for (int i = 0; i < Dk; i++)
                    for (int j = 0; j < Dv; j++) {
                        double s = beta * k[i] * v[j];
                        for (int m = 0; m < Dk; m++) s += A[i * Dk + m] * S[m * Dv + j];
                        N[i * Dv + j] = s;
                    }
                memcpy(S, N, sizeof(double) * (size_t)Dk * Dv);
                double *o = out + (bt * d->H + h) * Dv;
                for (int j = 0; j < Dv; j++) {
                    o[j] = 0;
                    for (int i = 0; i < Dk; i++) o[j] += S[i * Dv + j] * q[i];
                }
            }
        }
    free(S), free(N), free(A);
}

/* Forward, backward and its accumulation for one shape and rule, both forms:
 * forward against the oracle, chunkwise gradients against recurrent ones,
 * and a backward on top of a prefill adds exactly the zero-start gradient. */
static void gd_compare(int B, int T, int H, int Dk, int Dv, int chunk, int packed, int rule,
                       unsigned long long seed) {
    gdelta_dims d = {B, T, H, Dk, Dv, 0, 0, 0, 0, 0, 0, chunk, GD_RECURRENT};
    set_rule(&d, rule);
    gd_io x, gr[2], gp;
    gd_io_alloc(&x, &d, packed);
    gd_io_fill(&x, &d, seed);
    size_t nout = (size_t)B * T * H * Dv;
    double *want = dalloc(nout), *out = dalloc(nout), *dout = dfilled(nout, seed + 20, -1, 1);
    gd_oracle(want, &x, &d);
    static const char *const form_names[2] = {"recurrent", "chunkwise"};
    for (int f = 0; f < 2; f++) {
        d.form = (gd_form)f;
        double *save = dalloc(gdelta_save_size(&d)), *scr = dalloc(gdelta_scratch_size(&d));
        gdelta_forward(out, save, x.q, x.k, x.v, x.beta, x.g, &d, scr);
        double eo = max_rel_diff(out, want, nout);
        CHECK(eo <= TOL_SAME, "%s %s B%d T%d H%d Dk%d Dv%d C%d packed%d: out off oracle by %.3g",
              rule_names[rule], form_names[f], B, T, H, Dk, Dv, chunk, packed, eo);
        /* without save (no backward to follow) the output is the same */
        double *out2 = dalloc(nout);
        gdelta_forward(out2, NULL, x.q, x.k, x.v, x.beta, x.g, &d, scr);
        CHECK(max_rel_diff(out2, out, nout) == 0, "%s %s: forward without save differs",
              rule_names[rule], form_names[f]);
        free(out2);

        gd_io_like(&gr[f], &x);
        gdelta_backward(gr[f].q, gr[f].k, gr[f].v, gr[f].beta, gr[f].g, dout, save, x.q, x.k,
                        x.v, x.beta, x.g, &d, scr);
        double eg = gd_io_diff(&gr[f], &gr[0]);
        CHECK(eg <= TOL_SAME, "%s %s B%d T%d H%d Dk%d Dv%d C%d: grads off recurrent by %.3g",
              rule_names[rule], form_names[f], B, T, H, Dk, Dv, chunk, eg);

        gd_io_like(&gp, &x);
        gd_io pre;
        gd_io_like(&pre, &x);
        for (int i = 0; i < 3; i++)
            if (gp.qkv[i]) test_fill(gp.qkv[i], gp.nqkv[i], seed + 30 + i, -1, 1);
        for (int i = 0; i < 2; i++)
            if (gp.gates[i]) test_fill(gp.gates[i], gp.ngates[i], seed + 40 + i, -1, 1);
        for (int i = 0; i < 3; i++)
            if (gp.qkv[i]) memcpy(pre.qkv[i], gp.qkv[i], gp.nqkv[i] * sizeof(double));
        for (int i = 0; i < 2; i++)
            if (gp.gates[i]) memcpy(pre.gates[i], gp.gates[i], gp.ngates[i] * sizeof(double));
        gdelta_backward(gp.q, gp.k, gp.v, gp.beta, gp.g, dout, save, x.q, x.k, x.v, x.beta,
                        x.g, &d, scr);
        for (int i = 0; i < 3; i++)
            for (size_t j = 0; gp.qkv[i] && j < gp.nqkv[i]; j++) gp.qkv[i][j] -= pre.qkv[i][j];
        for (int i = 0; i < 2; i++)
            for (size_t j = 0; gp.gates[i] && j < gp.ngates[i]; j++)
                gp.gates[i][j] -= pre.gates[i][j];
        double ea = gd_io_diff(&gp, &gr[f]);
        CHECK(ea <= TOL_SAME, "%s %s: backward does not accumulate (%.3g)", rule_names[rule],
              form_names[f], ea);
        /* gates a rule does not use receive nothing */
        int unused_nonzero = 0;
        for (int r = 0; r < B * T; r++)
            for (int h = 0; h < H; h++) {
                size_t o = (size_t)r * d.gate_stride + h;
                if (!d.delta) unused_nonzero |= gr[f].beta[o] != 0;
                if (!d.decay) unused_nonzero |= gr[f].g[o] != 0;
            }
        CHECK(!unused_nonzero, "%s %s: gradient written to an unused gate", rule_names[rule],
              form_names[f]);
        test_note("%s %s T%d C%d: out %.2g, grads %.2g, accumulate %.2g", rule_names[rule],
                  form_names[f], T, chunk, eo, eg, ea);
        gd_io_free(&gp), gd_io_free(&pre);
        free(save), free(scr);
    }
    gd_io_free(&gr[0]), gd_io_free(&gr[1]), gd_io_free(&x);
    free(want), free(out), free(dout);
}

/* Every rule on the awkward shapes. */
static void test_gdelta_forms_agree(void) {
    /* B, T, H, Dk, Dv, chunk, packed */
    static const int cfg[][7] = {
        {2, 13, 2, 3, 4, 4, 1},  /* T not a multiple of the chunk, strided */
        {1, 5, 1, 4, 3, 8, 0},   /* chunk > T, one head */
        {2, 6, 2, 2, 3, 1, 1},   /* chunk 1 */
        {1, 1, 1, 3, 2, 4, 0},   /* T = 1 */
        {2, 13, 1, 5, 5, 13, 1}, /* chunk = T */
        {1, 16, 2, 3, 2, 4, 0},  /* T a multiple of the chunk */
        {1, 37, 1, 8, 6, 16, 0}, /* longer, Dk > Dv */
    };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++)
        for (int rule = 0; rule < 4; rule++)
            gd_compare(cfg[c][0], cfg[c][1], cfg[c][2], cfg[c][3], cfg[c][4], cfg[c][5],
                       cfg[c][6], rule, 300 + 10 * c + rule);
}

/* Without decay and delta the kernel is unnormalised linear attention: it
 * must agree with linear_attention.c, forward and backward. */
static void test_gdelta_additive_is_linattn(void) {
    enum { B = 2, T = 9, H = 2, Dk = 3, Dv = 4, CH = 4 };
    gdelta_dims d = {B, T, H, Dk, Dv, 0, 0, 0, 0, 0, 0, CH, GD_CHUNKWISE};
    gd_io x, g1, g2;
    gd_io_alloc(&x, &d, 0);
    gd_io_fill(&x, &d, 77);
    linattn_dims la = {B, T, H, Dk, Dv, d.q_stride, d.k_stride, d.v_stride, 0, 0, CH,
                       LA_CHUNKWISE};
    size_t nout = (size_t)B * T * H * Dv;
    double *o1 = dalloc(nout), *o2 = dalloc(nout), *dout = dfilled(nout, 78, -1, 1);
    double *s1 = dalloc(gdelta_save_size(&d)), *w1 = dalloc(gdelta_scratch_size(&d));
    double *s2 = dalloc(linattn_save_size(&la)), *w2 = dalloc(linattn_scratch_size(&la));
    gdelta_forward(o1, s1, x.q, x.k, x.v, NULL, NULL, &d, w1);
    linattn_forward(o2, s2, x.q, x.k, x.v, &la, w2);
    CHECK(max_rel_diff(o1, o2, nout) <= TOL_SAME, "additive rule differs from linattn by %.3g",
          max_rel_diff(o1, o2, nout));
    gd_io_like(&g1, &x), gd_io_like(&g2, &x);
    gdelta_backward(g1.q, g1.k, g1.v, NULL, NULL, dout, s1, x.q, x.k, x.v, NULL, NULL, &d, w1);
    linattn_backward(g2.q, g2.k, g2.v, dout, o2, s2, x.q, x.k, x.v, &la, w2);
    CHECK(gd_io_diff(&g1, &g2) <= TOL_SAME, "additive gradients differ from linattn by %.3g",
          gd_io_diff(&g1, &g2));
    gd_io_free(&x), gd_io_free(&g1), gd_io_free(&g2);
    free(o1), free(o2), free(dout), free(s1), free(w1), free(s2), free(w2);
}

typedef struct gd_ctx {
    gdelta_dims d;
    gd_io x;
    double *out, *save, *scr, *w;
} gd_ctx;

/* L = sum w .* out. */
static double gd_loss(void *p) {
    gd_ctx *c = p;
    gdelta_forward(c->out, c->save, c->x.q, c->x.k, c->x.v, c->x.beta, c->x.g, &c->d, c->scr);
    return dot(c->w, c->out, (size_t)c->d.B * c->d.T * c->d.H * c->d.Dv);
}

/* q, k, v, beta and g of every rule and form against central differences
 * (gradcheck.h defaults: h 1e-5, atol 1e-7, rtol 1e-5). */
static void test_gdelta_gradcheck(void) {
    for (int rule = 0; rule < 4; rule++)
        for (int f = 0; f < 2; f++) {
            gd_ctx c;
            memset(&c, 0, sizeof c);
            c.d = (gdelta_dims){2, 7, 2, 3, 2, 0, 0, 0, 0, 0, 0, 3, (gd_form)f};
            set_rule(&c.d, rule);
            gd_io_alloc(&c.x, &c.d, f);
            gd_io_fill(&c.x, &c.d, 500 + rule);
            size_t nout = (size_t)2 * 7 * 2 * 2;
            c.out = dalloc(nout);
            c.w = dfilled(nout, 510 + rule, -1, 1);
            c.save = dalloc(gdelta_save_size(&c.d));
            c.scr = dalloc(gdelta_scratch_size(&c.d));
            gd_io g;
            gd_io_like(&g, &c.x);
            gd_loss(&c);
            gdelta_backward(g.q, g.k, g.v, g.beta, g.g, c.w, c.save, c.x.q, c.x.k, c.x.v,
                            c.x.beta, c.x.g, &c.d, c.scr);
            gc_tensor ts[5];
            int nt = 0;
            static const char *const tn[5] = {"q/qkv", "k", "v", "gates", "g"};
            for (int i = 0; i < 3; i++)
                if (c.x.qkv[i]) ts[nt++] = (gc_tensor){tn[i], c.x.qkv[i], g.qkv[i], c.x.nqkv[i]};
            for (int i = 0; i < 2; i++)
                if (c.x.gates[i] && (i == 0 ? c.d.delta || f : c.d.decay))
                    ts[nt++] = (gc_tensor){i == 0 ? (f ? "beta|g" : "beta") : "g", c.x.gates[i],
                                           g.gates[i], c.x.ngates[i]};
            char label[64];
            snprintf(label, sizeof label, "%s %s", rule_names[rule],
                     f ? "chunkwise" : "recurrent");
            gradcheck_expect(label, gd_loss, &c, ts, nt);
            gd_io_free(&g), gd_io_free(&c.x);
            free(c.out), free(c.w), free(c.save), free(c.scr);
        }
}

/* Perturbing token j (q, k, v, beta and g) leaves outputs before j
 * bit-identical and moves the output at j, in both forms (chunk 3, so j
 * falls at the start, inside and at the end of chunks). */
static void test_gdelta_causality(void) {
    for (int rule = 0; rule < 4; rule++)
        for (int f = 0; f < 2; f++) {
            gdelta_dims d = {1, 10, 2, 3, 2, 0, 0, 0, 0, 0, 0, 3, (gd_form)f};
            set_rule(&d, rule);
            gd_io x;
            gd_io_alloc(&x, &d, 1);
            gd_io_fill(&x, &d, 600 + rule);
            size_t nout = (size_t)10 * 2 * 2, per = 4;
            double *base = dalloc(nout), *out = dalloc(nout);
            double *scr = dalloc(gdelta_scratch_size(&d));
            gdelta_forward(base, NULL, x.q, x.k, x.v, x.beta, x.g, &d, scr);
            for (int j = 0; j < 10; j++) {
                double *row = x.qkv[0] + (size_t)j * d.q_stride, *gr = x.gates[0] + (size_t)j * 4;
                double *keep = dcopy(row, (size_t)d.q_stride), gk[4];
                memcpy(gk, gr, sizeof gk);
                for (int i = 0; i < d.q_stride; i++) row[i] += 0.3;
                for (int i = 0; i < 4; i++) gr[i] *= 0.5;
                gdelta_forward(out, NULL, x.q, x.k, x.v, x.beta, x.g, &d, scr);
                int before = 0, at = 0;
                for (size_t i = 0; i < (size_t)j * per; i++) before |= out[i] != base[i];
                for (size_t i = (size_t)j * per; i < (size_t)(j + 1) * per; i++)
                    at |= out[i] != base[i];
                CHECK(!before, "%s %s: output before %d moved", rule_names[rule],
                      f ? "chunkwise" : "recurrent", j);
                CHECK(at, "%s %s: output at %d did not move", rule_names[rule],
                      f ? "chunkwise" : "recurrent", j);
                memcpy(row, keep, sizeof(double) * (size_t)d.q_stride);
                memcpy(gr, gk, sizeof gk);
                free(keep);
            }
            gd_io_free(&x);
            free(base), free(out), free(scr);
        }
}

/* ============================ whole models ============================ */

/* Apply assignments to cfg; fails the test on a bad one. */
static int apply_sets(run_config *cfg, const char *const *sets) {
    ml_error e;
    for (int i = 0; sets[i]; i++) {
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

/* The built-in defaults plus assignments. */
static int make_cfg(run_config *cfg, const char *const *sets) {
    ml_error e;
    if (config_defaults(cfg, &e)) {
        CHECK(0, "config_defaults: %s", e.msg);
        return -1;
    }
    return apply_sets(cfg, sets);
}

/* Random tokens, about half the positions supervised (position 0 always). */
static void random_batch(int *in, int *tg, int n, int V, unsigned long long seed) {
    double *u = dalloc((size_t)n * 3);
    test_fill(u, (size_t)n * 3, seed, 0.0, 1.0);
    for (int i = 0; i < n; i++) {
        in[i] = (int)(u[i] * V);
        tg[i] = u[n + i] < 0.5 ? (int)(u[2 * n + i] * V) : -1;
    }
    tg[0] = 1;
    free(u);
}

/* A tiny model (V 16, d_model 8, 2 layers, init std 0.4 so gradients are well
 * away from zero) of the mixer settings mix and block settings var; norm and
 * bias parameters are moved off their trivial initial values. */
static int tiny_model(ml_model *m, run_config *cfg, const char *const *mix,
                      const char *const *var, int B) {
    const char *const base[] = {"task.vocab_size=16", "task.seq_len=12", "task.num_kv_pairs=2",
                                "model.d_model=8", "model.n_layers=2", "model.init_std=0.4",
                                "model.mlp_ratio=2", NULL};
    if (make_cfg(cfg, base) || apply_sets(cfg, mix) || (var && apply_sets(cfg, var))) return -1;
    ml_error e;
    if (model_build(m, &cfg->model, 16, 12, B, &e)) {
        CHECK(0, "model_build: %s", e.msg);
        return -1;
    }
    model_init_weights(m, 3);
    double *noise = dfilled(m->n_params, 11, -0.2, 0.2);
    for (int i = 0; i < m->n_tensors; i++) {
        const ml_param *p = &m->params[i];
        if (p->init == INIT_ONES || p->init == INIT_ZEROS)
            for (size_t k = 0; k < p->n; k++) m->w[p->offset + k] += noise[p->offset + k];
    }
    free(noise);
    return 0;
}

/* Every entry of the family, defaults and switched variants (relu's kink
 * is left to test_model.c's linear cases). */
static const char *const entry_sets[][9] = {
    {"model.mixer=deltanet", "model.heads=2", "model.chunk=3", NULL},
    {"model.mixer=gated_deltanet", "model.heads=2", "model.chunk=3", NULL},
    {"model.mixer=gated_deltanet", "model.heads=1", "model.form=recurrent",
     "model.short_conv=3", "model.qkv_bias=true", NULL},
    {"model.mixer=mamba2", "model.heads=2", "model.chunk=4", NULL},
    {"model.mixer=mamba2", "model.heads=1", "model.feature_map=taylor", "model.feature_dim=2",
     "model.out_norm=rms", "model.dt_min=0.01", "model.dt_max=0.5", NULL},
    {"model.mixer=based", "model.heads=2", "model.feature_dim=3", "model.chunk=4", NULL},
    {"model.mixer=based", "model.heads=1", "model.feature_dim=2", "model.form=recurrent",
     "model.eps=1e-3", NULL},
    {"model.mixer=linear", "model.heads=2", "model.feature_map=silu", "model.qk_l2norm=true",
     "model.out_norm=gated", "model.short_conv=2", "model.feature_dim=3", NULL},
    {"model.mixer=deltanet", "model.heads=1", "model.feature_map=elu1", "model.out_norm=none",
     "model.feature_dim=5", "model.form=recurrent", "model.chunk=2", NULL},
};
#define N_ENTRY (int)(sizeof entry_sets / sizeof entry_sets[0])

static const char *const block_sets[][6] = {
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

/* Gradient check of every parameter of m on (in, tg): gradcheck.h defaults. */
static void model_gradcheck(ml_model *m, const int *in, const int *tg, int B, int T,
                            const char *label) {
    model_ctx c = {m, in, tg, B, T};
    model_forward(m, in, tg, B, T, NULL);
    model_zero_grad(m);
    model_backward(m);
    double *g = dcopy(m->g, m->n_params);
    gc_tensor *ts = malloc(sizeof(gc_tensor) * (size_t)m->n_tensors);
    if (!ts) abort();
    for (int i = 0; i < m->n_tensors; i++) {
        const ml_param *p = &m->params[i];
        ts[i] = (gc_tensor){p->name, m->w + p->offset, g + p->offset, p->n};
    }
    gradcheck_expect(label, model_loss, &c, ts, m->n_tensors);
    free(ts), free(g);
}

/* Every parameter of 2-layer models of every entry, two block variants. */
static void test_models_gradcheck(void) {
    enum { B = 2, T = 7 };
    int in[B * T], tg[B * T];
    for (int mi = 0; mi < N_ENTRY; mi++)
        for (int vi = 0; vi < 2; vi++) {
            ml_model m;
            run_config cfg;
            if (tiny_model(&m, &cfg, entry_sets[mi], block_sets[vi], B)) return;
            random_batch(in, tg, B * T, 16, (unsigned long long)(700 + 10 * mi + vi));
            char label[200];
            snprintf(label, sizeof label, "%s (set %d) block %d", cfg.model.mixer, mi, vi);
            model_gradcheck(&m, in, tg, B, T, label);
            model_free(&m);
        }
}

/* The chunkwise model equals the recurrent one (same weights: same seed):
 * loss, every gradient and the probabilities, with T not a multiple of the
 * chunk. */
static void test_models_forms_agree(void) {
    enum { B = 2, T = 11 };
    int in[B * T], tg[B * T];
    for (int mi = 0; mi < N_ENTRY; mi++) {
        ml_model a, b;
        run_config ca, cb;
        const char *const rec[] = {"model.form=recurrent", NULL};
        const char *const chk[] = {"model.form=chunkwise", "model.chunk=3", NULL};
        if (tiny_model(&a, &ca, entry_sets[mi], chk, B)) return;
        if (tiny_model(&b, &cb, entry_sets[mi], rec, B)) {
            model_free(&a);
            return;
        }
        random_batch(in, tg, B * T, 16, (unsigned long long)(800 + mi));
        a.full_head = b.full_head = 1;
        double la = model_forward(&a, in, tg, B, T, NULL);
        double lb = model_forward(&b, in, tg, B, T, NULL);
        double dp = max_rel_diff(model_logits(&a), model_logits(&b), (size_t)B * T * 16);
        model_zero_grad(&a), model_zero_grad(&b);
        model_backward(&a), model_backward(&b);
        double dg = max_rel_diff(a.g, b.g, a.n_params);
        CHECK(fabs(la - lb) <= 1e-12 * fabs(lb) && dp <= 1e-11 && dg <= 1e-10,
              "%s (set %d): chunkwise vs recurrent: loss %.17g vs %.17g, probs %.3g, grads %.3g",
              ca.model.mixer, mi, la, lb, dp, dg);
        model_free(&a), model_free(&b);
    }
}

/* Changing the token at j leaves every output before j bit-identical and
 * moves the output at j, for every entry (block conv on). */
static void test_models_causality(void) {
    enum { T = 11, V = 16 };
    int in[T], tg[T];
    const char *const var[] = {"model.conv=4", "model.mlp=true", "model.chunk=4", NULL};
    for (int mi = 0; mi < N_ENTRY; mi++) {
        ml_model m;
        run_config cfg;
        if (tiny_model(&m, &cfg, entry_sets[mi], var, 1)) return;
        m.full_head = 1;
        for (int t = 0; t < T; t++) in[t] = (t * 5 + 3) % V, tg[t] = t % V;
        double *base = dalloc((size_t)T * V);
        model_forward(&m, in, tg, 1, T, NULL);
        memcpy(base, model_logits(&m), sizeof(double) * T * V);
        for (int j = 0; j < T; j += 2) {
            int keep = in[j];
            in[j] = (keep + 7) % V;
            model_forward(&m, in, tg, 1, T, NULL);
            const double *p = model_logits(&m);
            int before = 0, at = 0;
            for (int k = 0; k < j * V; k++) before |= p[k] != base[k];
            for (int k = j * V; k < (j + 1) * V; k++) at |= p[k] != base[k];
            CHECK(!before, "%s (set %d): output before %d moved", cfg.model.mixer, mi, j);
            CHECK(at, "%s (set %d): output at %d did not move", cfg.model.mixer, mi, j);
            in[j] = keep;
        }
        free(base);
        model_free(&m);
    }
}

/* State size of a 2-layer, d_model 64 model of the given settings. */
static long state_of(const char *const *sets) {
    run_config cfg;
    ml_model m;
    ml_error e;
    const char *const base[] = {"model.d_model=64", "model.n_layers=2", NULL};
    if (make_cfg(&cfg, base) || apply_sets(&cfg, sets)) return -1;
    if (model_build(&m, &cfg.model, 100, 64, 1, &e)) {
        CHECK(0, "model_build: %s", e.msg);
        return -1;
    }
    long s = model_state_size(&m, 64);
    CHECK(model_state_size(&m, 4096) == s, "%s: state grows with T", cfg.model.mixer);
    model_free(&m);
    return s;
}

/* Exact state sizes (2 layers, d_model 64), written out from models.md. */
static void test_models_state_size(void) {
    const char *const dn[] = {"model.mixer=deltanet", "model.heads=2", NULL};
    CHECK(state_of(dn) == 2L * 2 * 32 * 32, "deltanet: %ld", state_of(dn));
    const char *const gd[] = {"model.mixer=gated_deltanet", "model.heads=1", NULL};
    CHECK(state_of(gd) == 2L * 64 * 64, "gated_deltanet: %ld", state_of(gd));
    const char *const mb[] = {"model.mixer=mamba2", "model.heads=4", NULL};
    CHECK(state_of(mb) == 2L * 4 * 16 * 16, "mamba2: %ld", state_of(mb));
    /* Based, feature_dim 16: 153 features x d_v 64 plus the 153 normaliser */
    const char *const bs[] = {"model.mixer=based", "model.heads=1", NULL};
    CHECK(state_of(bs) == 2L * (153 * 64 + 153), "based: %ld", state_of(bs));
    const char *const bs4[] = {"model.mixer=based", "model.heads=4", "model.feature_dim=8", NULL};
    CHECK(state_of(bs4) == 2L * 4 * (45 * 16 + 45), "based 4 heads: %ld", state_of(bs4));
    /* linear unnormalised with a 4-tap conv: 3 past rows of the 3*64 projection */
    const char *const lc[] = {"model.mixer=linear", "model.heads=2", "model.normalize=false",
                              "model.short_conv=4", NULL};
    CHECK(state_of(lc) == 2L * (2 * 32 * 32 + 3 * 192), "linear with conv: %ld", state_of(lc));
}

/* Every family is in the table, with parseable defaults that differ where
 * they should; bad combinations are refused by validate. */
static void test_models_table_and_validate(void) {
    static const char *const names[] = {"linear", "deltanet", "gated_deltanet", "mamba2",
                                        "based", "mom"};
    static const char *const rules[] = {"additive", "delta", "gated_delta", "decay",
                                        "additive", "gated_delta"};
    for (int i = 0; i < 6; i++) {
        const ml_mixer *mx = mixer_find(names[i]);
        CHECK(mx != NULL, "mixer %s not in the table", names[i]);
        if (!mx) continue;
        const ml_field *f = schema_find(mx->fields, "rule");
        CHECK(f && !strcmp(f->def, rules[i]), "%s: rule default %s, want %s", names[i],
              f ? f->def : "(none)", rules[i]);
        CHECK(mx->help && strlen(mx->help) > 20, "%s: no help text", names[i]);
        ml_cfgbuf buf;
        ml_error e;
        CHECK(schema_defaults(mx->fields, buf.bytes, &e) == 0, "%s defaults: %s", names[i],
              e.msg);
        CHECK(mx->cfg_size <= sizeof buf, "%s: config too large", names[i]);
    }
    /* the linear entry keeps its published keys and defaults */
    const ml_mixer *lin = mixer_find("linear");
    static const char *const keys[][2] = {{"heads", "1"},   {"feature_map", "elu1"},
                                          {"normalize", "true"}, {"eps", "1e-6"},
                                          {"chunk", "64"},  {"form", "chunkwise"},
                                          {"qkv_bias", "false"}};
    for (int i = 0; lin && i < 7; i++) {
        const ml_field *f = schema_find(lin->fields, keys[i][0]);
        CHECK(f && !strcmp(f->def, keys[i][1]), "linear.%s default changed", keys[i][0]);
    }
    static const char *const bad[][4] = {
        {"model.mixer=deltanet", "model.normalize=true", NULL},
        {"model.mixer=gated_deltanet", "model.form=parallel", NULL},
        {"model.mixer=mamba2", "model.dt_min=0.5", "model.dt_max=0.1", NULL},
        {"model.mixer=deltanet", "model.heads=3", NULL},
    };
    for (int i = 0; i < 4; i++) {
        run_config cfg;
        ml_error e;
        if (config_defaults(&cfg, &e)) return;
        int rc = 0;
        for (int j = 0; bad[i][j] && !rc; j++) rc = spec_set(&cfg, bad[i][j], &e);
        if (!rc) rc = spec_validate(&cfg, &e);
        CHECK(rc != 0, "accepted: %s %s", bad[i][0], bad[i][1]);
    }
}

/* A short MQAR run of each delta-family entry must learn (loss well below
 * what ignoring the context gives) and repeat itself bitwise. */
static void test_models_training_learns(void) {
    static const char *const train_sets[] = {
        "task.vocab_size=64", "task.seq_len=16", "task.num_kv_pairs=2", "model.d_model=16",
        "model.n_layers=2",   "model.conv=3",    "model.mlp=false",     "train.steps=300",
        "train.batch_size=16", "train.lr=1e-2",  "train.warmup=5",      "train.train_examples=0",
        "eval.every=100",     "eval.examples=64", "eval.batch_size=32", NULL};
    static const char *const mixers[] = {"model.mixer=deltanet", "model.mixer=gated_deltanet",
                                         "model.mixer=based"};
    for (int mi = 0; mi < 3; mi++) {
        run_config cfg;
        const char *const extra[] = {mixers[mi], "model.chunk=8", NULL};
        if (make_cfg(&cfg, train_sets) || apply_sets(&cfg, extra)) return;
        ml_error e;
        train_outcome a, b;
        train_opts o = {0};
        CHECK(train_run(&cfg, NULL, &o, &a, &e) == 0, "train: %s", e.msg);
        CHECK(train_run(&cfg, NULL, &o, &b, &e) == 0, "train: %s", e.msg);
        /* log 32 = 3.47 nats is what knowing only the value range gives */
        CHECK(!strcmp(a.status, "finished") && a.test_loss < 3.0,
              "%s: status %s, test loss %.4f not below 3.0", mixers[mi], a.status, a.test_loss);
        CHECK(a.test_loss == b.test_loss && a.train_loss == b.train_loss,
              "%s: same seed, different numbers", mixers[mi]);
        test_note("%s: test loss %.3f accuracy %.3f", mixers[mi], a.test_loss, a.test_accuracy);
    }
}

/* The delta-rule caution (mixer.h's caution, linfam.c's lf_delta_caution)
 * is issued exactly for the configs it describes, and what it says holds:
 * those runs diverge in their first steps, and the settings it suggests
 * train. Each mixer that takes a rule: linear, MoM and Memory Caching. */
static void test_delta_caution(void) {
    static const char *const base[] = {
        "task.vocab_size=512", "task.seq_len=256", "task.num_kv_pairs=8", "model.d_model=64",
        "model.n_layers=2",   "model.mlp=false",  "train.steps=2",       "train.batch_size=2",
        "train.warmup=1",     "train.train_examples=0", "eval.every=2",  "eval.examples=4",
        "eval.batch_size=4",  NULL};
    /* {mixer settings..., NULL}: elu1 keys of width 64, not normalised */
    static const char *const warned[][5] = {
        {"model.mixer=linear", "model.rule=delta", "model.normalize=false", NULL},
        {"model.mixer=linear", "model.rule=gated_delta", "model.normalize=false", NULL},
        {"model.mixer=mom", "model.feature_map=elu1", "model.qk_l2norm=false", NULL},
        {"model.mixer=memcache", "model.rule=delta", "model.normalize=false", NULL},
    };
    /* what the caution suggests, and configs it must leave alone */
    static const char *const fixes[] = {"model.qk_l2norm=true", "model.feature_map=silu"};
    static const char *const quiet[][5] = {
        {"model.mixer=linear", NULL},                              /* additive */
        {"model.mixer=linear", "model.rule=decay", "model.normalize=false", NULL},
        {"model.mixer=linear", "model.rule=delta", "model.normalize=false", "model.heads=16",
         NULL},                                                   /* width 4 */
        {"model.mixer=deltanet", "model.feature_map=elu1", NULL}, /* qk_l2norm */
        {"model.mixer=mom", NULL},
    };
    ml_error e;
    char msg[1024];
    for (int i = 0; i < 4; i++) {
        for (int f = -1; f < 2; f++) {
            run_config cfg;
            const char *const fix[] = {f >= 0 ? fixes[f] : NULL, NULL};
            if (make_cfg(&cfg, base) || apply_sets(&cfg, warned[i]) || apply_sets(&cfg, fix))
                return;
            int warns = spec_caution(&cfg, msg, sizeof msg);
            train_outcome o;
            train_opts opts = {0};
            CHECK(train_run(&cfg, NULL, &opts, &o, &e) == 0, "train: %s", e.msg);
            if (f < 0) {
                CHECK(warns && !strncmp(msg, "model.rule: ", 12) &&
                          strstr(msg, "qk_l2norm: true") && strstr(msg, " 64 key "),
                      "%s %s: caution %d '%s'", warned[i][0], warned[i][1], warns,
                      warns ? msg : "");
                CHECK(!strcmp(o.status, "diverged"), "%s %s: cautioned run %s, not diverged",
                      warned[i][0], warned[i][1], o.status);
            } else {
                CHECK(!warns, "%s %s with %s: caution '%s'", warned[i][0], warned[i][1],
                      fixes[f], msg);
                CHECK(!strcmp(o.status, "finished"), "%s %s with %s: run %s", warned[i][0],
                      warned[i][1], fixes[f], o.status);
            }
        }
    }
    for (int i = 0; i < 5; i++) {
        run_config cfg;
        if (make_cfg(&cfg, base) || apply_sets(&cfg, quiet[i])) return;
        CHECK(!spec_caution(&cfg, msg, sizeof msg), "%s %s: caution '%s'", quiet[i][0],
              quiet[i][1] ? quiet[i][1] : "", msg);
    }
}

const test_case tests_linfam[] = {
    {"linfam: silu, l2norm, taylor values", test_maps_values},
    {"linfam: silu, l2norm, taylor gradient check", test_maps_gradcheck},
    {"linfam: fused silu gate == silu and product", test_silu_mul},
    {"linfam: rules, chunkwise == recurrent == oracle", test_gdelta_forms_agree},
    {"linfam: additive rule == linattn", test_gdelta_additive_is_linattn},
    {"linfam: rules gradient check", test_gdelta_gradcheck},
    {"linfam: rules causality", test_gdelta_causality},
    {"linfam: models gradient check, every entry", test_models_gradcheck},
    {"linfam: models chunkwise == recurrent", test_models_forms_agree},
    {"linfam: models causality", test_models_causality},
    {"linfam: state sizes", test_models_state_size},
    {"linfam: mixer table and validation", test_models_table_and_validate},
    {"linfam: short MQAR runs learn", test_models_training_learns},
    {"linfam: delta-rule caution, issued where runs diverge", test_delta_caution},
    {NULL, NULL},
};
