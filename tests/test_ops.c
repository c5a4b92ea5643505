/* test_ops.c: unit tests of the basic op kernels (embedding, norms, linear,
 * GELU, causal conv, masked cross-entropy, AdamW and its helpers).
 *
 * Every backward is checked against central finite differences of a scalar
 * loss L = sum(out .* R) with a fixed random R (so dout = R), for every input
 * and parameter, with the gradcheck.h defaults: h = 1e-5, an element passes
 * when |analytic - numeric| <= 1e-7 + 1e-5 * max(|analytic|, |numeric|).
 * Forward semantics are pinned by independent references: a naive loop for
 * the GEMM, impulse responses for the conv, closed forms (log V, Phi(1)) and
 * a scalar re-derivation of AdamW. Sizes are small and odd on purpose.
 * Built in double precision only; the attention and linear-attention kernels
 * have their own suites. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "kernels.h"
#include "test.h"

#ifndef MEMLAB_DOUBLE
#error "test_ops.c checks gradients in double precision: build with -DMEMLAB_DOUBLE"
#endif

/* sum(a .* r): the scalar loss whose gradient with respect to a is r. */
static double dot_r(const double *a, const double *r, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a[i] * r[i];
    return s;
}

/* Checks that twice[n] == 2 * once[n] (to rounding): the backward, run twice
 * into the same zeroed buffer, accumulated rather than overwrote. */
static void expect_twice(const char *label, const double *twice, const double *once, size_t n) {
    double m = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(twice[i] - 2.0 * once[i]);
        if (!(d <= m)) m = d;
        if (fabs(once[i]) > s) s = fabs(once[i]);
    }
    CHECK(s > 0, "%s: gradient is identically zero, nothing was tested", label);
    CHECK(m <= 1e-12 * s, "%s: two backward calls give %g off twice one call", label, m);
}

/* ---- embedding ------------------------------------------------------------ */

enum { EB = 2, ET = 5, EC = 7, EV = 6 };
/* token 3 three times and token 1 twice: the scatter-add must sum them; token
 * 5 never appears, so its gradient row must stay zero */
static const int emb_tok[EB * ET] = {3, 1, 3, 0, 2, 4, 1, 3, 2, 0};

typedef struct {
    double wte[EV * EC], wpe[ET * EC], out[EB * ET * EC], r[EB * ET * EC];
} emb_ctx;

static double emb_loss(void *p) {
    emb_ctx *c = p;
    embedding_forward(c->out, emb_tok, c->wte, c->wpe, EB, ET, EC);
    return dot_r(c->out, c->r, EB * ET * EC);
}

static void test_embedding_grad(void) {
    static emb_ctx c;
    static double dwte[EV * EC], dwpe[ET * EC];
    test_fill(c.wte, EV * EC, 11, -1, 1);
    test_fill(c.wpe, ET * EC, 12, -1, 1);
    test_fill(c.r, EB * ET * EC, 13, -1, 1);
    memset(dwte, 0, sizeof dwte);
    memset(dwpe, 0, sizeof dwpe);
    embedding_backward(dwte, dwpe, c.r, emb_tok, EB, ET, EC);
    gc_tensor ts[] = {{"wte", c.wte, dwte, EV * EC}, {"wpe", c.wpe, dwpe, ET * EC}};
    gradcheck_expect("embedding", emb_loss, &c, ts, 2);
    for (int k = 0; k < EC; k++) CHECK(dwte[5 * EC + k] == 0, "unused token got a gradient");

    /* forward semantics, independently: row (b,t) is wte[tok] + wpe[t], and
     * without wpe just wte[tok] */
    embedding_forward(c.out, emb_tok, c.wte, c.wpe, EB, ET, EC);
    int bad = 0;
    for (int i = 0; i < EB * ET; i++)
        for (int k = 0; k < EC; k++)
            bad += c.out[i * EC + k] != c.wte[emb_tok[i] * EC + k] + c.wpe[(i % ET) * EC + k];
    embedding_forward(c.out, emb_tok, c.wte, NULL, EB, ET, EC);
    for (int i = 0; i < EB * ET; i++)
        for (int k = 0; k < EC; k++) bad += c.out[i * EC + k] != c.wte[emb_tok[i] * EC + k];
    CHECK(bad == 0, "embedding forward: %d wrong elements", bad);

    /* a NULL gradient is skipped and does not change the other one */
    static double dwte2[EV * EC];
    memset(dwte2, 0, sizeof dwte2);
    embedding_backward(dwte2, NULL, c.r, emb_tok, EB, ET, EC);
    CHECK(memcmp(dwte, dwte2, sizeof dwte) == 0, "dwte depends on whether dwpe is wanted");
}

/* ---- layernorm / rmsnorm ---------------------------------------------------- */

enum { NN = 5, NC = 7 };
#define NORM_EPS 1e-5

typedef struct {
    double x[NN * NC], w[NC], b[NC], out[NN * NC], mean[NN], rstd[NN], r[NN * NC];
    int rms;
} norm_ctx;

static double norm_loss(void *p) {
    norm_ctx *c = p;
    if (c->rms) rmsnorm_forward(c->out, c->rstd, c->x, c->w, NN, NC, NORM_EPS);
    else layernorm_forward(c->out, c->mean, c->rstd, c->x, c->w, c->b, NN, NC, NORM_EPS);
    return dot_r(c->out, c->r, NN * NC);
}

static void norm_fill(norm_ctx *c, unsigned long long seed) {
    test_fill(c->x, NN * NC, seed, -2, 2);
    /* a row offset: the backward must handle a mean far from zero */
    for (int k = 0; k < NC; k++) c->x[2 * NC + k] += 3.0;
    test_fill(c->w, NC, seed + 1, 0.5, 1.5);
    test_fill(c->b, NC, seed + 2, -0.5, 0.5);
    test_fill(c->r, NN * NC, seed + 3, -1, 1);
}

static void test_layernorm_grad(void) {
    static norm_ctx c;
    static double dx[NN * NC], dw[NC], db[NC];
    norm_fill(&c, 21);
    c.rms = 0;
    norm_loss(&c);
    memset(dx, 0, sizeof dx);
    memset(dw, 0, sizeof dw);
    memset(db, 0, sizeof db);
    layernorm_backward(dx, dw, db, c.r, c.x, c.w, c.mean, c.rstd, NN, NC);
    gc_tensor ts[] = {{"x", c.x, dx, NN * NC}, {"w", c.w, dw, NC}, {"b", c.b, db, NC}};
    gradcheck_expect("layernorm", norm_loss, &c, ts, 3);
}

static void test_rmsnorm_grad(void) {
    static norm_ctx c;
    static double dx[NN * NC], dw[NC];
    norm_fill(&c, 31);
    c.rms = 1;
    norm_loss(&c);
    memset(dx, 0, sizeof dx);
    memset(dw, 0, sizeof dw);
    rmsnorm_backward(dx, dw, c.r, c.x, c.w, c.rstd, NN, NC);
    gc_tensor ts[] = {{"x", c.x, dx, NN * NC}, {"w", c.w, dw, NC}};
    gradcheck_expect("rmsnorm", norm_loss, &c, ts, 2);
}

/* With w = 1 and b = 0 every LayerNorm row has mean 0 and biased variance
 * var / (var + eps); every RMSNorm row has mean square ms / (ms + eps). The
 * saved statistics are compared with a direct computation. */
static void test_norm_forward(void) {
    static norm_ctx c;
    norm_fill(&c, 41);
    for (int k = 0; k < NC; k++) c.w[k] = 1, c.b[k] = 0;
    layernorm_forward(c.out, c.mean, c.rstd, c.x, c.w, c.b, NN, NC, NORM_EPS);
    for (int i = 0; i < NN; i++) {
        const double *x = c.x + i * NC, *o = c.out + i * NC;
        double m = 0, v = 0, om = 0, ov = 0;
        for (int k = 0; k < NC; k++) m += x[k] / NC;
        for (int k = 0; k < NC; k++) v += (x[k] - m) * (x[k] - m) / NC;
        for (int k = 0; k < NC; k++) om += o[k] / NC;
        for (int k = 0; k < NC; k++) ov += (o[k] - om) * (o[k] - om) / NC;
        CHECK(fabs(c.mean[i] - m) <= 1e-13, "layernorm row %d: mean %g, want %g", i, c.mean[i],
              m);
        CHECK(fabs(c.rstd[i] - 1 / sqrt(v + NORM_EPS)) <= 1e-12 * c.rstd[i],
              "layernorm row %d: rstd %g", i, c.rstd[i]);
        CHECK(fabs(om) <= 1e-13, "layernorm row %d: output mean %g", i, om);
        CHECK(fabs(ov - v / (v + NORM_EPS)) <= 1e-12, "layernorm row %d: output var %g", i,
              ov);
    }
    rmsnorm_forward(c.out, c.rstd, c.x, c.w, NN, NC, NORM_EPS);
    for (int i = 0; i < NN; i++) {
        const double *x = c.x + i * NC, *o = c.out + i * NC;
        double ms = 0, oms = 0;
        for (int k = 0; k < NC; k++) ms += x[k] * x[k] / NC, oms += o[k] * o[k] / NC;
        CHECK(fabs(oms - ms / (ms + NORM_EPS)) <= 1e-12, "rmsnorm row %d: mean square %g", i,
              oms);
        for (int k = 0; k < NC; k++)
            CHECK(o[k] * x[k] >= 0, "rmsnorm row %d flips a sign", i);
    }
}

/* ---- linear ----------------------------------------------------------------- */

enum { LN = 5, LIC = 7, LOC = 3 };

typedef struct {
    double x[LN * LIC], w[LOC * LIC], b[LOC], out[LN * LOC], r[LN * LOC];
    int use_b;
} lin_ctx;

static double lin_loss(void *p) {
    lin_ctx *c = p;
    linear_forward(c->out, c->x, c->w, c->use_b ? c->b : NULL, LN, LIC, LOC);
    return dot_r(c->out, c->r, LN * LOC);
}

/* The textbook definition, one output element at a time. */
static void linear_ref(double *out, const double *x, const double *w, const double *b, int N,
                       int IC, int OC) {
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0.0;
            for (int k = 0; k < IC; k++) s += x[i * IC + k] * w[o * IC + k];
            out[i * OC + o] = s;
        }
}

static void test_linear_grad(void) {
    static lin_ctx c;
    static double dx[LN * LIC], dw[LOC * LIC], db[LOC];
    test_fill(c.x, LN * LIC, 51, -1, 1);
    test_fill(c.w, LOC * LIC, 52, -1, 1);
    test_fill(c.b, LOC, 53, -1, 1);
    test_fill(c.r, LN * LOC, 54, -1, 1);
    for (c.use_b = 1; c.use_b >= 0; c.use_b--) {
        memset(dx, 0, sizeof dx);
        memset(dw, 0, sizeof dw);
        memset(db, 0, sizeof db);
        linear_backward(dx, dw, c.use_b ? db : NULL, c.r, c.x, c.w, LN, LIC, LOC);
        gc_tensor ts[] = {{"x", c.x, dx, LN * LIC}, {"w", c.w, dw, LOC * LIC},
                          {"b", c.b, db, LOC}};
        gradcheck_expect(c.use_b ? "linear" : "linear (b = NULL)", lin_loss, &c, ts,
                         c.use_b ? 3 : 2);
        if (!c.use_b)
            for (int o = 0; o < LOC; o++) CHECK(db[o] == 0, "db written although NULL");
    }
}

/* linear_forward against the triple loop, with and without bias, on sizes
 * that fit no BLAS block, and into an output full of NaN (beta = 0 must not
 * read it). */
static void test_linear_ref(void) {
    enum { N = 13, IC = 9, OC = 11 };
    static double x[N * IC], w[OC * IC], b[OC], out[N * OC], ref[N * OC];
    test_fill(x, N * IC, 61, -1, 1);
    test_fill(w, OC * IC, 62, -1, 1);
    test_fill(b, OC, 63, -1, 1);
    for (int use_b = 0; use_b < 2; use_b++) {
        for (int i = 0; i < N * OC; i++) out[i] = NAN;
        linear_forward(out, x, w, use_b ? b : NULL, N, IC, OC);
        linear_ref(ref, x, w, use_b ? b : NULL, N, IC, OC);
        double d = max_rel_diff(out, ref, N * OC);
        CHECK(d <= 1e-14, "linear_forward (bias %d) off the naive loop by %g", use_b, d);
    }
}

/* ---- GELU --------------------------------------------------------------------- */

enum { GN = 13 };
typedef struct {
    double x[GN], out[GN], r[GN];
} gelu_ctx;

static double gelu_loss(void *p) {
    gelu_ctx *c = p;
    gelu_forward(c->out, c->x, GN);
    return dot_r(c->out, c->r, GN);
}

static void test_gelu(void) {
    static gelu_ctx c;
    static double dx[GN];
    test_fill(c.x, GN, 71, -4, 4);
    c.x[0] = 0.0; /* the inflection region, where the x phi(x) term matters */
    test_fill(c.r, GN, 72, -1, 1);
    memset(dx, 0, sizeof dx);
    gelu_backward(dx, c.r, c.x, GN);
    gc_tensor ts[] = {{"x", c.x, dx, GN}};
    gradcheck_expect("gelu", gelu_loss, &c, ts, 1);

    /* GELU(x) = x Phi(x); Phi(1) = 0.8413447460685429 from the normal table,
     * and Phi(x) + Phi(-x) = 1 gives GELU(x) - GELU(-x) = x */
    double in[3] = {1.0, -1.0, 0.0}, out[3];
    gelu_forward(out, in, 3);
    CHECK(fabs(out[0] - 0.8413447460685429) <= 1e-15, "gelu(1) = %.17g", out[0]);
    CHECK(fabs(out[1] + 0.15865525393145707) <= 1e-15, "gelu(-1) = %.17g", out[1]);
    CHECK(out[2] == 0.0, "gelu(0) = %g", out[2]);
    double neg[GN], on[GN];
    for (int i = 0; i < GN; i++) neg[i] = -c.x[i];
    gelu_forward(c.out, c.x, GN);
    gelu_forward(on, neg, GN);
    for (int i = 0; i < GN; i++)
        CHECK(fabs(c.out[i] - on[i] - c.x[i]) <= 1e-14, "gelu(x) - gelu(-x) != x at %g",
              c.x[i]);
}

/* ---- causal depthwise conv -------------------------------------------------- */

enum { CB = 2, CMAXT = 6, CC = 3, CMAXK = 4 };
typedef struct {
    double x[CB * CMAXT * CC], w[CC * CMAXK], bias[CC], out[CB * CMAXT * CC],
        r[CB * CMAXT * CC];
    int T, K;
} conv_ctx;

static double conv_loss(void *p) {
    conv_ctx *c = p;
    conv1d_causal_forward(c->out, c->x, c->w, c->bias, CB, c->T, CC, c->K);
    return dot_r(c->out, c->r, (size_t)CB * c->T * CC);
}

static void test_conv1d_grad(void) {
    static conv_ctx c;
    static double dx[CB * CMAXT * CC], dw[CC * CMAXK], dbias[CC];
    /* {T, K}: K = 1, 3, 4 on a longer sequence, then sequences shorter than K */
    static const int cases[][2] = {{5, 1}, {5, 3}, {6, 4}, {2, 4}, {3, 4}, {1, 3}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        c.T = cases[k][0];
        c.K = cases[k][1];
        size_t nx = (size_t)CB * c.T * CC, nw = (size_t)CC * c.K;
        test_fill(c.x, nx, 81 + k, -1, 1);
        test_fill(c.w, nw, 91 + k, -1, 1);
        test_fill(c.bias, CC, 101 + k, -1, 1);
        test_fill(c.r, nx, 111 + k, -1, 1);
        memset(dx, 0, sizeof dx);
        memset(dw, 0, sizeof dw);
        memset(dbias, 0, sizeof dbias);
        conv1d_causal_backward(dx, dw, dbias, c.r, c.x, c.w, CB, c.T, CC, c.K);
        char label[64];
        snprintf(label, sizeof label, "conv1d T=%d K=%d", c.T, c.K);
        gc_tensor ts[] = {{"x", c.x, dx, nx}, {"w", c.w, dw, nw}, {"bias", c.bias, dbias, CC}};
        gradcheck_expect(label, conv_loss, &c, ts, 3);
    }
}

/* The impulse response pins the tap order of the contract: a unit input at
 * (b, t0, c) shows up d steps later as w[c, K-1-d] (so w[c,K-1] weighs the
 * current token), nothing before t0, nothing in other channels or sequences,
 * and on top of the bias everywhere. */
static void test_conv1d_impulse(void) {
    enum { T = 6, K = 4 };
    static double x[CB * T * CC], w[CC * K], bias[CC], out[CB * T * CC];
    test_fill(w, CC * K, 121, -1, 1);
    test_fill(bias, CC, 122, -1, 1);
    int bad = 0;
    /* every start time, t0 = 0 included (all but the last tap read the zero
     * past there), in both sequences */
    for (int b0 = 0; b0 < CB; b0++)
        for (int t0 = 0; t0 < T; t0++) {
            const int c0 = (b0 + t0) % CC;
            memset(x, 0, sizeof x);
            x[(b0 * T + t0) * CC + c0] = 1.0;
            conv1d_causal_forward(out, x, w, bias, CB, T, CC, K);
            for (int b = 0; b < CB; b++)
                for (int t = 0; t < T; t++)
                    for (int c = 0; c < CC; c++) {
                        double want = bias[c];
                        int d = t - t0;
                        if (b == b0 && c == c0 && d >= 0 && d < K)
                            want += w[c * K + (K - 1 - d)];
                        if (out[(b * T + t) * CC + c] != want) bad++;
                    }
        }
    CHECK(bad == 0, "conv1d impulse response: %d wrong outputs", bad);
}

/* ---- cross-entropy ------------------------------------------------------------ */

enum { XS = 6, XV = 5 };
/* rows 1 and 4 are unsupervised */
static const int xe_tgt[XS] = {2, -1, 0, 4, -1, 4};
#define XE_SCALE 0.37

typedef struct {
    double logits[XS * XV], probs[XS * XV];
} xe_ctx;

static double xe_loss(void *p) {
    xe_ctx *c = p;
    return XE_SCALE * crossentropy_forward(c->probs, c->logits, xe_tgt, XS, XV, NULL);
}

/* L = scale * CE, so the backward with that scale is dL/dlogits. */
static void test_crossentropy_grad(void) {
    static xe_ctx c;
    static double dl[XS * XV];
    test_fill(c.logits, XS * XV, 131, -3, 3);
    xe_loss(&c);
    memset(dl, 0, sizeof dl);
    crossentropy_backward(dl, c.probs, xe_tgt, XS, XV, XE_SCALE);
    gc_tensor ts[] = {{"logits", c.logits, dl, XS * XV}};
    gradcheck_expect("crossentropy", xe_loss, &c, ts, 1);
    int bad = 0;
    for (int v = 0; v < XV; v++) bad += dl[1 * XV + v] != 0 || dl[4 * XV + v] != 0;
    CHECK(bad == 0, "ignored rows got %d non-zero gradient elements", bad);
}

static void test_crossentropy_values(void) {
    static double logits[XS * XV], probs[XS * XV], inplace[XS * XV];
    int count = -1;

    /* uniform logits: every kept row costs log V, whatever the common value */
    for (int i = 0; i < XS * XV; i++) logits[i] = 3.7;
    double loss = crossentropy_forward(probs, logits, xe_tgt, XS, XV, &count);
    CHECK(count == 4, "count %d, want 4 kept rows", count);
    CHECK(fabs(loss - 4 * log(XV)) <= 1e-13, "uniform loss %.17g, want 4 log 5", loss);

    /* ignored rows contribute nothing: wild values there change neither the
     * loss nor the count, and the loss is the sum of the kept rows alone */
    test_fill(logits, XS * XV, 141, -3, 3);
    double base = crossentropy_forward(probs, logits, xe_tgt, XS, XV, &count);
    for (int v = 0; v < XV; v++) logits[1 * XV + v] = 50.0 * v, logits[4 * XV + v] = -40.0;
    double wild = crossentropy_forward(probs, logits, xe_tgt, XS, XV, &count);
    CHECK(wild == base && count == 4, "ignored rows changed the loss: %.17g vs %.17g", wild,
          base);
    double rows = 0.0;
    for (int i = 0; i < XS; i++) {
        int one = -1;
        rows += crossentropy_forward(probs, logits + i * XV, &xe_tgt[i], 1, XV, &one);
        CHECK(one == (xe_tgt[i] >= 0), "row %d counted %d", i, one);
    }
    CHECK(fabs(rows - base) <= 1e-13 * base, "row sum %.17g vs batch %.17g", rows, base);
    int none[XS] = {-1, -1, -1, -1, -1, -1};
    CHECK(crossentropy_forward(probs, logits, none, XS, XV, &count) == 0.0 && count == 0,
          "all rows ignored: loss must be 0 and count 0");

    /* probs are a softmax of every row, and computing in place gives the same */
    crossentropy_forward(probs, logits, xe_tgt, XS, XV, NULL);
    memcpy(inplace, logits, sizeof logits);
    double ip = crossentropy_forward(inplace, inplace, xe_tgt, XS, XV, NULL);
    CHECK(ip == wild, "in-place loss %.17g vs %.17g", ip, wild);
    CHECK(memcmp(inplace, probs, sizeof probs) == 0, "in-place probs differ");
    for (int i = 0; i < XS; i++) {
        double s = 0;
        for (int v = 0; v < XV; v++) s += probs[i * XV + v];
        CHECK(fabs(s - 1) <= 1e-14, "row %d of probs sums to %.17g", i, s);
    }

    /* closed form: logits log(1..3) give p = (1,2,3)/6, so target 2 costs
     * log 2; a 1000-logit gap neither overflows nor loses the large loss */
    double l3[3] = {0.0, log(2.0), log(3.0)}, p3[3];
    int t2 = 2;
    CHECK(fabs(crossentropy_forward(p3, l3, &t2, 1, 3, NULL) - log(2.0)) <= 1e-15,
          "loss of p = 1/2 is not log 2");
    double big[2] = {1000.0, 0.0}, pb[2];
    int t0 = 0, t1 = 1;
    double l0 = crossentropy_forward(pb, big, &t0, 1, 2, NULL);
    double l1 = crossentropy_forward(pb, big, &t1, 1, 2, NULL);
    CHECK(l0 >= 0 && l0 <= 1e-300, "confident right answer costs %g", l0);
    CHECK(fabs(l1 - 1000.0) <= 1e-12, "confident wrong answer costs %.17g, want 1000", l1);
}

/* ---- every backward accumulates -------------------------------------------------- */

/* Runs each backward once into zeroed buffers and twice into another set; the
 * second must hold twice the first (a backward that assigns gives 1x). */
static void test_backward_accumulates(void) {
    enum { N = 5, C = 7, OC = 3, V = 6, T = 5, K = 3, M = 64 };
    static double x[N * C], w[OC * C], r[N * OC], rr[N * C], mean[N], rstd[N];
    static double g1[4][M], g2[4][M], probs[N * V], logits[N * V];
    static const int tok[N] = {3, 1, 3, 0, 2};
    static const int tgt[N] = {1, -1, 0, 5, 2};
    test_fill(x, N * C, 151, -1, 1);
    test_fill(w, OC * C, 152, -1, 1);
    test_fill(r, N * OC, 153, -1, 1);
    test_fill(rr, N * C, 154, -1, 1);
    test_fill(logits, N * V, 155, -2, 2);

    for (int rep = 0; rep < 2; rep++) {
        double(*g)[M] = rep ? g2 : g1;
        memset(g, 0, sizeof g1);
        for (int k = 0; k <= rep; k++)
            embedding_backward(g[0], g[1], rr, tok, 1, T, C);
    }
    expect_twice("embedding dwte", g2[0], g1[0], V * C);
    expect_twice("embedding dwpe", g2[1], g1[1], T * C);

    double ones[C];
    for (int k = 0; k < C; k++) ones[k] = 1.0 + 0.1 * k;
    double out[N * C];
    layernorm_forward(out, mean, rstd, x, ones, ones, N, C, 1e-5);
    for (int rep = 0; rep < 2; rep++) {
        double(*g)[M] = rep ? g2 : g1;
        memset(g, 0, sizeof g1);
        for (int k = 0; k <= rep; k++)
            layernorm_backward(g[0], g[1], g[2], rr, x, ones, mean, rstd, N, C);
    }
    expect_twice("layernorm dx", g2[0], g1[0], N * C);
    expect_twice("layernorm dw", g2[1], g1[1], C);
    expect_twice("layernorm db", g2[2], g1[2], C);

    rmsnorm_forward(out, rstd, x, ones, N, C, 1e-5);
    for (int rep = 0; rep < 2; rep++) {
        double(*g)[M] = rep ? g2 : g1;
        memset(g, 0, sizeof g1);
        for (int k = 0; k <= rep; k++) rmsnorm_backward(g[0], g[1], rr, x, ones, rstd, N, C);
    }
    expect_twice("rmsnorm dx", g2[0], g1[0], N * C);
    expect_twice("rmsnorm dw", g2[1], g1[1], C);

    for (int rep = 0; rep < 2; rep++) {
        double(*g)[M] = rep ? g2 : g1;
        memset(g, 0, sizeof g1);
        for (int k = 0; k <= rep; k++) linear_backward(g[0], g[1], g[2], r, x, w, N, C, OC);
    }
    expect_twice("linear dx", g2[0], g1[0], N * C);
    expect_twice("linear dw", g2[1], g1[1], OC * C);
    expect_twice("linear db", g2[2], g1[2], OC);

    for (int rep = 0; rep < 2; rep++) {
        double(*g)[M] = rep ? g2 : g1;
        memset(g, 0, sizeof g1);
        for (int k = 0; k <= rep; k++) gelu_backward(g[0], rr, x, N * C);
    }
    expect_twice("gelu dx", g2[0], g1[0], N * C);

    /* x as [1, T=5, C=7], taps w[C, K] */
    for (int rep = 0; rep < 2; rep++) {
        double(*g)[M] = rep ? g2 : g1;
        memset(g, 0, sizeof g1);
        for (int k = 0; k <= rep; k++)
            conv1d_causal_backward(g[0], g[1], g[2], rr, x, w, 1, T, C, K);
    }
    expect_twice("conv1d dx", g2[0], g1[0], T * C);
    expect_twice("conv1d dw", g2[1], g1[1], C * K);
    expect_twice("conv1d dbias", g2[2], g1[2], C);

    crossentropy_forward(probs, logits, tgt, N, V, NULL);
    for (int rep = 0; rep < 2; rep++) {
        double(*g)[M] = rep ? g2 : g1;
        memset(g, 0, sizeof g1);
        for (int k = 0; k <= rep; k++) crossentropy_backward(g[0], probs, tgt, N, V, 0.5);
    }
    expect_twice("crossentropy dlogits", g2[0], g1[0], N * V);
}

/* ---- optimiser --------------------------------------------------------------- */

/* Three AdamW steps with weight decay against the update written out in
 * scalars, step by step, from the AdamW paper / torch.optim.AdamW. */
static void test_adamw(void) {
    enum { N = 5 };
    const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    double p[N], m[N] = {0}, v[N] = {0}, g[3][N];
    double ep[N], em[N] = {0}, ev[N] = {0};
    test_fill(p, N, 161, -1, 1);
    memcpy(ep, p, sizeof p);
    for (int s = 0; s < 3; s++) test_fill(g[s], N, 162 + s, -1, 1);
    g[1][3] = 0.0; /* a zero gradient mid-run: only decay and momentum move it */
    for (int t = 1; t <= 3; t++) {
        adamw_step(p, g[t - 1], m, v, N, lr, b1, b2, eps, wd, t);
        for (int i = 0; i < N; i++) {
            double gi = g[t - 1][i];
            em[i] = b1 * em[i] + (1 - b1) * gi;
            ev[i] = b2 * ev[i] + (1 - b2) * gi * gi;
            double mhat = em[i] / (1 - pow(b1, t)), vhat = ev[i] / (1 - pow(b2, t));
            ep[i] = ep[i] - lr * wd * ep[i] - lr * mhat / (sqrt(vhat) + eps);
        }
        CHECK(max_rel_diff(p, ep, N) <= 1e-13, "step %d: p off by %g", t,
              max_rel_diff(p, ep, N));
        CHECK(max_rel_diff(m, em, N) <= 1e-13, "step %d: m off", t);
        CHECK(max_rel_diff(v, ev, N) <= 1e-13, "step %d: v off", t);
    }

    /* first step without decay: mhat = g and vhat = g^2, so every parameter
     * moves by lr * g / (|g| + eps), i.e. almost exactly lr against the sign */
    double q[N] = {0}, mq[N] = {0}, vq[N] = {0};
    double gq[N] = {0.5, -2.0, 1e-3, -7.0, 3.0};
    adamw_step(q, gq, mq, vq, N, lr, b1, b2, eps, 0.0, 1);
    for (int i = 0; i < N; i++) {
        double want = -lr * gq[i] / (fabs(gq[i]) + eps);
        CHECK(fabs(q[i] - want) <= 1e-15, "first step of g = %g moved %.17g, want %.17g",
              gq[i], q[i], want);
    }
}

static void test_lr_schedule(void) {
    const int total = 100, warmup = 10;
    const double hi = 1e-3, lo = 1e-5;
    for (int s = 0; s < warmup; s++) {
        double want = hi * (s + 1) / warmup;
        double got = lr_schedule(s, total, warmup, hi, lo);
        CHECK(fabs(got - want) <= 1e-15 * hi, "warmup step %d: %g, want %g", s, got, want);
    }
    CHECK(lr_schedule(0, total, warmup, hi, lo) == hi / warmup, "first step is not lr/warmup");
    CHECK(lr_schedule(warmup - 1, total, warmup, hi, lo) == hi, "no peak at end of warmup");
    CHECK(fabs(lr_schedule(total - 1, total, warmup, hi, lo) - lo) <= 1e-15 * hi,
          "last step %g, want lr_min", lr_schedule(total - 1, total, warmup, hi, lo));
    double prev = hi;
    int bad = 0;
    for (int s = warmup; s < total; s++) {
        double x = lr_schedule(s, total, warmup, hi, lo);
        bad += !(x < prev) || x < lo;
        prev = x;
    }
    CHECK(bad == 0, "%d decay steps not strictly decreasing within [lr_min, lr_max]", bad);
    /* half way through a cosine decay the rate is the midpoint: peak at step
     * 9, end at 99, so step 54 */
    CHECK(fabs(lr_schedule(54, total, warmup, hi, lo) - 0.5 * (hi + lo)) <= 1e-15,
          "cosine midpoint %g", lr_schedule(54, total, warmup, hi, lo));
    /* no warmup: start at the peak, still end at lr_min */
    CHECK(lr_schedule(0, total, 0, hi, lo) == hi, "warmup 0 does not start at lr_max");
    CHECK(fabs(lr_schedule(total - 1, total, 0, hi, lo) - lo) <= 1e-15 * hi,
          "warmup 0 does not end at lr_min");
}

static void test_grad_clip(void) {
    enum { N = 11 };
    double g[N], g0[N];
    test_fill(g0, N, 171, -2, 2);
    double norm = 0.0;
    for (int i = 0; i < N; i++) norm += g0[i] * g0[i];
    norm = sqrt(norm);
    double pyth[2] = {3.0, 4.0};
    CHECK(grad_norm(pyth, 2) == 5.0, "norm of (3,4) is %g", grad_norm(pyth, 2));
    CHECK(fabs(grad_norm(g0, N) - norm) <= 1e-15 * norm, "grad_norm off");

    /* too large: scaled to exactly max_norm, direction kept, old norm returned */
    memcpy(g, g0, sizeof g);
    double before = grad_clip(g, N, 0.5 * norm);
    CHECK(fabs(before - norm) <= 1e-15 * norm, "clip returned %g, want %g", before, norm);
    CHECK(fabs(grad_norm(g, N) - 0.5 * norm) <= 1e-14 * norm, "clipped norm %g, want %g",
          grad_norm(g, N), 0.5 * norm);
    for (int i = 0; i < N; i++)
        CHECK(fabs(g[i] - 0.5 * g0[i]) <= 1e-15 * fabs(g0[i]), "clip changed the direction");

    /* small enough, or clipping off: untouched, bit for bit */
    memcpy(g, g0, sizeof g);
    grad_clip(g, N, 2.0 * norm);
    CHECK(memcmp(g, g0, sizeof g) == 0, "a gradient under max_norm was changed");
    grad_clip(g, N, 0.0);
    CHECK(memcmp(g, g0, sizeof g) == 0, "max_norm 0 changed the gradient");

    /* a NaN gradient reports NaN and is left for the trainer to record */
    memcpy(g, g0, sizeof g);
    g[3] = NAN;
    CHECK(isnan(grad_clip(g, N, 1.0)) && g[0] == g0[0], "NaN gradient was clipped");
}

/* Clipping folded into AdamW (the trainer's path) against clipping the
 * gradient and then stepping: the same bits in p, m and v, with the clip on
 * and off, and the gradient left as it was. */
static void test_clip_folded(void) {
    enum { N = 300 };
    for (int on = 0; on < 2; on++) {
        double g[N], g0[N], p1[N], m1[N], v1[N], p2[N], m2[N], v2[N];
        test_fill(g, N, 170 + on, -1, 1);
        test_fill(p1, N, 172, -1, 1);
        test_fill(m1, N, 173, -0.1, 0.1);
        test_fill(v1, N, 174, 0, 0.01);
        memcpy(p2, p1, sizeof p1), memcpy(m2, m1, sizeof m1), memcpy(v2, v1, sizeof v1);
        memcpy(g0, g, sizeof g);
        double max_norm = on ? 0.5 : 1e9, s;
        double n1 = grad_clip_scale(g, N, max_norm, &s);
        adamw_step_scaled(p1, g, m1, v1, N, 0.01, 0.9, 0.999, 1e-8, 0.1, 3, s);
        CHECK(!memcmp(g, g0, sizeof g), "grad_clip_scale or adamw_step_scaled changed g");
        CHECK((s == 1) == !on, "clip %s: scale %.17g", on ? "on" : "off", s);
        double n2 = grad_clip(g, N, max_norm);
        adamw_step(p2, g, m2, v2, N, 0.01, 0.9, 0.999, 1e-8, 0.1, 3);
        CHECK(n1 == n2, "the norms differ: %.17g, %.17g", n1, n2);
        CHECK(!memcmp(p1, p2, sizeof p1) && !memcmp(m1, m2, sizeof m1) &&
                  !memcmp(v1, v2, sizeof v1),
              "clip %s: the folded step differs from clip then step", on ? "on" : "off");
    }
}

/* The unit-lower solve (both the substitution for small systems and
 * OpenBLAS's above it) against cblas_dtrsm, with padded strides, both
 * orientations. */
static void test_trsm(void) {
    static const int shape[][2] = {{1, 3}, {2, 1}, {5, 7}, {13, 100}, {64, 300}, {65, 9}, {90, 40}};
    for (size_t si = 0; si < sizeof shape / sizeof shape[0]; si++)
        for (int ta = 0; ta < 2; ta++) {
            int n = shape[si][0], m = shape[si][1], lda = n + 2, ldx = m + 3;
            double *A = malloc(sizeof(double) * n * lda), *X = malloc(sizeof(double) * n * ldx);
            test_fill(A, (size_t)n * lda, 90 + si, -0.3, 0.3);
            test_fill(X, (size_t)n * ldx, 91 + si, -1, 1);
            double *Y = malloc(sizeof(double) * n * ldx);
            memcpy(Y, X, sizeof(double) * n * ldx);
            ml_trsm_unit_lower(ta, n, m, A, lda, X, ldx);
            cblas_dtrsm(CblasRowMajor, CblasLeft, CblasLower, ta ? CblasTrans : CblasNoTrans,
                        CblasUnit, n, m, 1, A, lda, Y, ldx);
            double worst = 0;
            for (int i = 0; i < n; i++)
                for (int c = 0; c < ldx; c++) {
                    double d = fabs(X[(size_t)i * ldx + c] - Y[(size_t)i * ldx + c]);
                    if (c >= m) d = X[(size_t)i * ldx + c] != Y[(size_t)i * ldx + c];
                    worst = d > worst ? d : worst;
                }
            CHECK(worst <= 1e-12, "trsm n %d m %d ta %d: differs from cblas_dtrsm by %.3g", n,
                  m, ta, worst);
            free(A), free(X), free(Y);
        }
}

const test_case tests_ops[] = {
    {"ops/embedding_grad", test_embedding_grad},
    {"ops/layernorm_grad", test_layernorm_grad},
    {"ops/rmsnorm_grad", test_rmsnorm_grad},
    {"ops/norm_forward", test_norm_forward},
    {"ops/linear_grad", test_linear_grad},
    {"ops/linear_vs_ref", test_linear_ref},
    {"ops/trsm_vs_blas", test_trsm},
    {"ops/clip_folded_into_adamw", test_clip_folded},
    {"ops/gelu", test_gelu},
    {"ops/conv1d_grad", test_conv1d_grad},
    {"ops/conv1d_impulse", test_conv1d_impulse},
    {"ops/crossentropy_grad", test_crossentropy_grad},
    {"ops/crossentropy_values", test_crossentropy_values},
    {"ops/backward_accumulates", test_backward_accumulates},
    {"ops/adamw", test_adamw},
    {"ops/lr_schedule", test_lr_schedule},
    {"ops/grad_clip", test_grad_clip},
    {NULL, NULL},
};
