/* test_attention.c: tests of causal softmax attention, the feature maps and
 * the linear-attention core (models/softmax_attention.c, linear_attention.c).
 *
 * What is pinned against what:
 *   - fast softmax attention against the naive *_ref loops (forward, att,
 *     backward) on awkward shapes, and both against two closed forms
 *     (window 1 returns v; T = 2 is a logistic mix of v0 and v1);
 *   - every backward against central finite differences (gradcheck.h);
 *   - the three linear-attention forms against each other and against the
 *     O(T^2) sum written out in this file;
 *   - masks by perturbation: outputs that must not see a token are
 *     bit-identical when it changes, and the first token that must see it moves.
 * Buffers are allocated at exactly the sizes the kernels ask for, so a
 * sanitizer build catches a scratch or save size that is too small. */
#ifndef MEMLAB_DOUBLE
#error "test_attention.c checks gradients in double: build it with -DMEMLAB_DOUBLE"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "kernels.h"
#include "test.h"

/* Agreement of two implementations of the same sums in double. */
#define TOL_SAME 1e-12

/* Zeroed n doubles, aborting on failure. n = 0 gives a pointer with no usable
 * bytes (or NULL), so a kernel that reads a buffer it sized as empty trips the
 * sanitizer. */
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

/* Plain dot product, the test's own arithmetic. */
static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* out[i] = a[i] - b[i]: the increment a backward added on top of a prefill. */
static void diff_into(double *out, const double *a, const double *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] - b[i];
}

/* ======================= causal softmax attention ======================= */

typedef void (*att_fwd_fn)(double *out, double *att, const double *qkv, int B, int T, int H,
                           int D, int window, double *scratch);

/* The naive forward behind the fast one's signature. */
static void att_ref_fwd(double *out, double *att, const double *qkv, int B, int T, int H,
                        int D, int window, double *scratch) {
    attention_forward_ref(out, att, qkv, B, T, H, D, window);
}

/* Fast forward and backward against the *_ref loops on one shape and window,
 * plus the structure of att: exact zeros outside the visible keys, positive
 * probabilities summing to 1 inside. Backward runs on top of a random prefill
 * and the increments are compared, so an overwriting backward fails. */
static void att_compare(int B, int T, int H, int D, int window, unsigned long long seed) {
    size_t nqkv = (size_t)B * T * 3 * H * D, nout = (size_t)B * T * H * D;
    size_t natt = (size_t)B * H * T * T;
    double *qkv = dfilled(nqkv, seed, -2, 2), *dout = dfilled(nout, seed + 1, -1, 1);
    double *pre = dfilled(nqkv, seed + 2, -1, 1);
    double *out1 = dalloc(nout), *out2 = dalloc(nout);
    double *att1 = dfilled(natt, seed + 3, 5, 6), *att2 = dalloc(natt);
    double *scr = dalloc(attention_scratch_size(T, D));
    double *d1 = dcopy(pre, nqkv), *d2 = dcopy(pre, nqkv);
    double *i1 = dalloc(nqkv), *i2 = dalloc(nqkv);

    attention_forward(out1, att1, qkv, B, T, H, D, window, scr);
    attention_forward_ref(out2, att2, qkv, B, T, H, D, window);
    double eo = max_rel_diff(out1, out2, nout), ea = max_rel_diff(att1, att2, natt);
    CHECK(eo <= TOL_SAME, "B%d T%d H%d D%d w%d: out differs from ref by %.3g", B, T, H, D,
          window, eo);
    CHECK(ea <= TOL_SAME, "B%d T%d H%d D%d w%d: att differs from ref by %.3g", B, T, H, D,
          window, ea);

    int bad_mask = 0, bad_sum = 0;
    for (int bh = 0; bh < B * H; bh++)
        for (int i = 0; i < T; i++) {
            const double *a = att1 + ((size_t)bh * T + i) * T;
            int lo = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
            double s = 0;
            for (int j = 0; j < T; j++) {
                int vis = j >= lo && j <= i;
                if (vis ? !(a[j] > 0) : a[j] != 0) bad_mask++;
                s += a[j];
            }
            if (!(fabs(s - 1) <= 1e-13)) bad_sum++;
        }
    CHECK(bad_mask == 0, "T%d w%d: %d att entries break the mask", T, window, bad_mask);
    CHECK(bad_sum == 0, "T%d w%d: %d att rows do not sum to 1", T, window, bad_sum);

    attention_backward(d1, dout, qkv, att1, B, T, H, D, window, scr);
    attention_backward_ref(d2, dout, qkv, att2, B, T, H, D, window);
    diff_into(i1, d1, pre, nqkv);
    diff_into(i2, d2, pre, nqkv);
    double eg = max_rel_diff(i1, i2, nqkv);
    CHECK(eg <= TOL_SAME, "B%d T%d H%d D%d w%d: dqkv differs from ref by %.3g", B, T, H, D,
          window, eg);

    free(qkv), free(dout), free(pre), free(out1), free(out2), free(att1), free(att2);
    free(scr), free(d1), free(d2), free(i1), free(i2);
}

/* Fast == ref on one head, odd widths, B = 2, T = 1, 7, 33, 130, and windows
 * 0 (full), 1 (itself only), 4 and T + 3 (wider than the sequence). */
static void test_attention_fast_matches_ref(void) {
    /* T = 130 spans three row blocks of the fast path (64, 64, 2). */
    static const int shapes[][4] = {{1, 1, 1, 8}, {2, 7, 3, 5},  {1, 33, 1, 8},
                                    {2, 33, 3, 5}, {1, 130, 2, 4}};
    int ns = (int)(sizeof shapes / sizeof shapes[0]);
    for (int s = 0; s < ns; s++) {
        int B = shapes[s][0], T = shapes[s][1], H = shapes[s][2], D = shapes[s][3];
        const int windows[] = {0, 1, 4, T + 3};
        for (int w = 0; w < 4; w++) att_compare(B, T, H, D, windows[w], 100 + 10 * s + w);
    }
}

/* Forward semantics from first principles, not from either implementation:
 * with window 1 every query sees only itself, so out = v; with T = 2 and full
 * causal attention out_0 = v_0 and out_1 = p v_0 + (1-p) v_1 with
 * p = 1 / (1 + exp((q_1.k_1 - q_1.k_0) / sqrt(D))). */
static void test_attention_closed_forms(void) {
    const int B = 2, T = 5, H = 2, D = 4;
    size_t nqkv = (size_t)B * T * 3 * H * D, nout = (size_t)B * T * H * D;
    double *qkv = dfilled(nqkv, 7, -2, 2), *out = dalloc(nout);
    double *att = dalloc((size_t)B * H * T * T), *scr = dalloc(attention_scratch_size(T, D));
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0) attention_forward(out, att, qkv, B, T, H, D, 1, scr);
        else attention_forward_ref(out, att, qkv, B, T, H, D, 1);
        double err = 0;
        for (int bt = 0; bt < B * T; bt++)
            for (int c = 0; c < H * D; c++)
                err = fmax(err, fabs(out[(size_t)bt * H * D + c] -
                                     qkv[(size_t)bt * 3 * H * D + 2 * H * D + c]));
        CHECK(err <= 1e-15, "%s window 1: out != v (max err %.3g)", pass ? "ref" : "fast", err);
    }

    const int T2 = 2, D2 = 4;
    double *q2 = dfilled((size_t)T2 * 3 * D2, 8, -2, 2), o2[8], a2[4];
    double *s2 = dalloc(attention_scratch_size(T2, D2));
    const double *k0 = q2 + D2, *v0 = q2 + 2 * D2, *q1 = q2 + 3 * D2, *k1 = q1 + D2;
    const double *v1 = q1 + 2 * D2;
    double p = 1 / (1 + exp((dot(q1, k1, D2) - dot(q1, k0, D2)) / sqrt((double)D2)));
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0) attention_forward(o2, a2, q2, 1, T2, 1, D2, 0, s2);
        else attention_forward_ref(o2, a2, q2, 1, T2, 1, D2, 0);
        double err = fabs(a2[2] - p) + fabs(a2[3] - (1 - p)) + fabs(a2[0] - 1) + fabs(a2[1]);
        for (int d = 0; d < D2; d++) {
            err += fabs(o2[d] - v0[d]);
            err += fabs(o2[D2 + d] - (p * v0[d] + (1 - p) * v1[d]));
        }
        CHECK(err <= 1e-14, "%s T=2: closed form off by %.3g", pass ? "ref" : "fast", err);
    }
    free(qkv), free(out), free(att), free(scr), free(q2), free(s2);
}

typedef struct att_ctx {
    int B, T, H, D, window;
    double *qkv, *out, *att, *scr, *w;
} att_ctx;

/* L = sum(w .* attention(qkv)); dL/dout = w. */
static double att_loss(void *p) {
    att_ctx *c = p;
    attention_forward(c->out, c->att, c->qkv, c->B, c->T, c->H, c->D, c->window, c->scr);
    return dot(c->w, c->out, (size_t)c->B * c->T * c->H * c->D);
}

/* Fast backward against finite differences of the fast forward, every
 * element of qkv, windows 0 and 3. */
static void test_attention_gradcheck(void) {
    const int B = 2, T = 6, H = 2, D = 3;
    size_t nqkv = (size_t)B * T * 3 * H * D, nout = (size_t)B * T * H * D;
    for (int wi = 0; wi < 2; wi++) {
        att_ctx c = {B, T, H, D, wi ? 3 : 0, dfilled(nqkv, 21 + wi, -1.5, 1.5), dalloc(nout),
                     dalloc((size_t)B * H * T * T), dalloc(attention_scratch_size(T, D)),
                     dfilled(nout, 31 + wi, -1, 1)};
        double *g = dalloc(nqkv);
        att_loss(&c);
        attention_backward(g, c.w, c.qkv, c.att, B, T, H, D, c.window, c.scr);
        gc_tensor t = {"qkv", c.qkv, g, nqkv};
        gradcheck_expect(wi ? "attention window 3" : "attention window 0", att_loss, &c, &t, 1);
        free(c.qkv), free(c.out), free(c.att), free(c.scr), free(c.w), free(g);
    }
}

/* ---- the rows kernel ------------------------------------------------------ */

/* Rows of B sequences of T: sequence 0 a few scattered positions (the first
 * and last among them), sequence 1 none, the others every `step`-th position
 * from `first` (65 rows at T 130: two blocks of the fast path). Returns S. */
static int att_rows_pattern(int *rows, int B, int T, int step, int first) {
    int S = 0;
    const int few[] = {0, 5, 6, 64, 129};
    for (int i = 0; i < 5; i++)
        if (few[i] < T) rows[S++] = few[i];
    for (int b = 2; b < B; b++)
        for (int t = first; t < T; t += step) rows[S++] = b * T + t;
    return S;
}

/* q of the rows and k, v of every token, split out of a packed qkv. */
static void att_rows_split(double *q, double *kv, const double *qkv, const int *rows, int S,
                           int N, int HD) {
    for (int s = 0; s < S; s++) memcpy(q + (size_t)s * HD, qkv + (size_t)rows[s] * 3 * HD,
                                       sizeof(double) * HD);
    for (int i = 0; i < N; i++) memcpy(kv + (size_t)i * 2 * HD, qkv + (size_t)i * 3 * HD + HD,
                                       sizeof(double) * 2 * HD);
}

/* The rows kernel against its naive reference, and both against the full
 * attention at those rows: outputs, probabilities, and the gradients of q, k
 * and v for a dout that is zero outside the rows (backward on a prefill, the
 * increments compared). */
static void att_rows_compare(int B, int T, int H, int D, int window, int step,
                             unsigned long long seed) {
    const int N = B * T, HD = H * D;
    int *rows = malloc(sizeof(int) * (size_t)N);
    int S = att_rows_pattern(rows, B, T, step, 1);
    double *qkv = dfilled((size_t)N * 3 * HD, seed, -2, 2);
    double *q = dalloc((size_t)S * HD), *kv = dalloc((size_t)N * 2 * HD);
    att_rows_split(q, kv, qkv, rows, S, N, HD);
    double *o1 = dalloc((size_t)S * HD), *o2 = dalloc((size_t)S * HD);
    double *a1 = dfilled((size_t)H * S * T, seed + 1, 5, 6), *a2 = dalloc((size_t)H * S * T);
    attention_rows_forward(o1, a1, q, kv, rows, S, B, T, H, D, window);
    attention_rows_forward_ref(o2, a2, q, kv, rows, S, B, T, H, D, window);
    double eo = max_rel_diff(o1, o2, (size_t)S * HD), ea = max_rel_diff(a1, a2, (size_t)H * S * T);
    CHECK(eo <= TOL_SAME && ea <= TOL_SAME, "rows T%d H%d D%d w%d: out %.3g, att %.3g vs ref",
          T, H, D, window, eo, ea);

    /* the full attention at the same rows */
    double *of = dalloc((size_t)N * HD), *af = dalloc((size_t)B * H * T * T);
    attention_forward_ref(of, af, qkv, B, T, H, D, window);
    double eof = 0, eaf = 0;
    for (int s = 0; s < S; s++) {
        int b = rows[s] / T, t = rows[s] % T;
        for (int c = 0; c < HD; c++)
            eof = fmax(eof, fabs(o1[(size_t)s * HD + c] - of[(size_t)rows[s] * HD + c]));
        for (int h = 0; h < H; h++)
            for (int j = 0; j < T; j++)
                eaf = fmax(eaf, fabs(a1[((size_t)h * S + s) * T + j] -
                                     af[(((size_t)b * H + h) * T + t) * T + j]));
    }
    CHECK(eof <= 1e-13 && eaf <= 1e-13, "rows T%d w%d: out %.3g, att %.3g vs full attention",
          T, window, eof, eaf);

    double *dout = dfilled((size_t)S * HD, seed + 2, -1, 1);
    double *dq1 = dfilled((size_t)S * HD, seed + 3, -1, 1), *dq2 = dcopy(dq1, (size_t)S * HD);
    double *dkv1 = dfilled((size_t)N * 2 * HD, seed + 4, -1, 1);
    double *dkv2 = dcopy(dkv1, (size_t)N * 2 * HD);
    double *pq = dcopy(dq1, (size_t)S * HD), *pkv = dcopy(dkv1, (size_t)N * 2 * HD);
    double *scr = dalloc(attention_scratch_size(T, D));
    attention_rows_backward(dq1, dkv1, dout, q, kv, a1, rows, S, B, T, H, D, window, scr);
    attention_rows_backward_ref(dq2, dkv2, dout, q, kv, a2, rows, S, B, T, H, D, window);
    diff_into(dq1, dq1, pq, (size_t)S * HD), diff_into(dq2, dq2, pq, (size_t)S * HD);
    diff_into(dkv1, dkv1, pkv, (size_t)N * 2 * HD), diff_into(dkv2, dkv2, pkv, (size_t)N * 2 * HD);
    double eq = max_rel_diff(dq1, dq2, (size_t)S * HD);
    double ek = max_rel_diff(dkv1, dkv2, (size_t)N * 2 * HD);
    CHECK(eq <= TOL_SAME && ek <= TOL_SAME, "rows T%d w%d: dq %.3g, dkv %.3g vs ref", T, window,
          eq, ek);

    double *doutf = dalloc((size_t)N * HD), *dqkv = dalloc((size_t)N * 3 * HD);
    for (int s = 0; s < S; s++)
        memcpy(doutf + (size_t)rows[s] * HD, dout + (size_t)s * HD, sizeof(double) * HD);
    attention_backward_ref(dqkv, doutf, qkv, af, B, T, H, D, window);
    double *fq = dalloc((size_t)S * HD), *fkv = dalloc((size_t)N * 2 * HD);
    att_rows_split(fq, fkv, dqkv, rows, S, N, HD);
    double efq = max_rel_diff(dq1, fq, (size_t)S * HD);
    double efk = max_rel_diff(dkv1, fkv, (size_t)N * 2 * HD);
    CHECK(efq <= 1e-12 && efk <= 1e-12, "rows T%d w%d: dq %.3g, dkv %.3g vs full attention", T,
          window, efq, efk);

    free(rows), free(qkv), free(q), free(kv), free(o1), free(o2), free(a1), free(a2), free(of);
    free(af), free(dout), free(dq1), free(dq2), free(dkv1), free(dkv2), free(pq), free(pkv);
    free(scr), free(doutf), free(dqkv), free(fq), free(fkv);
}

/* T 130 spans more than one block of 64 rows in sequence 2 (step 2); T 9
 * and T 1 are shorter than a block. Windows 0, 1, 5 and wider than T. */
static void test_attention_rows(void) {
    static const int shapes[][5] = {{3, 130, 2, 4, 2}, {3, 9, 1, 5, 3}, {4, 1, 2, 3, 1},
                                    {3, 70, 1, 8, 1}};
    for (int k = 0; k < 4; k++) {
        int B = shapes[k][0], T = shapes[k][1], H = shapes[k][2], D = shapes[k][3];
        const int windows[] = {0, 1, 5, T + 3};
        for (int w = 0; w < 4; w++)
            att_rows_compare(B, T, H, D, windows[w], shapes[k][4], 500 + 10 * k + w);
    }
}

typedef struct attr_ctx {
    int B, T, H, D, window, S;
    const int *rows;
    double *q, *kv, *out, *att, *w;
} attr_ctx;

/* L = sum(w .* attention_rows(q, kv)). */
static double attr_loss(void *p) {
    attr_ctx *c = p;
    attention_rows_forward(c->out, c->att, c->q, c->kv, c->rows, c->S, c->B, c->T, c->H, c->D,
                           c->window);
    return dot(c->w, c->out, (size_t)c->S * c->H * c->D);
}

/* The rows backward against finite differences, every element of q and kv. */
static void test_attention_rows_gradcheck(void) {
    enum { B = 3, T = 8, H = 2, D = 3, N = B * T, HD = H * D };
    int rows[N];
    int S = att_rows_pattern(rows, B, T, 3, 2);
    for (int wi = 0; wi < 2; wi++) {
        attr_ctx c = {B, T, H, D, wi ? 3 : 0, S, rows, dfilled((size_t)S * HD, 41 + wi, -1.5, 1.5),
                      dfilled((size_t)N * 2 * HD, 43 + wi, -1.5, 1.5), dalloc((size_t)S * HD),
                      dalloc((size_t)H * S * T), dfilled((size_t)S * HD, 45 + wi, -1, 1)};
        double *gq = dalloc((size_t)S * HD), *gkv = dalloc((size_t)N * 2 * HD);
        double *scr = dalloc(attention_scratch_size(T, D));
        attr_loss(&c);
        attention_rows_backward(gq, gkv, c.w, c.q, c.kv, c.att, rows, S, B, T, H, D, c.window,
                                scr);
        gc_tensor ts[2] = {{"q", c.q, gq, (size_t)S * HD}, {"kv", c.kv, gkv, (size_t)N * 2 * HD}};
        gradcheck_expect(wi ? "attention rows window 3" : "attention rows window 0", attr_loss,
                         &c, ts, 2);
        free(c.q), free(c.kv), free(c.out), free(c.att), free(c.w), free(gq), free(gkv), free(scr);
    }
}

/* Perturb every q, k, v entry of token j of batch 0. */
static void att_perturb(double *qkv, int H, int D, int j) {
    for (int c = 0; c < 3 * H * D; c++) qkv[(size_t)j * 3 * H * D + c] += 0.5;
}

/* With window w, out_i must not depend on tokens before i - w + 1 (bitwise)
 * and must depend on token i - w + 1, for both implementations. */
static void test_attention_window_semantics(void) {
    const int B = 1, T = 12, H = 2, D = 4, C = H * D;
    size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    double *qkv = dfilled(nqkv, 41, -1.5, 1.5), *pert = dalloc(nqkv);
    double *o0 = dalloc(nout), *o1 = dalloc(nout), *att = dalloc((size_t)B * H * T * T);
    double *scr = dalloc(attention_scratch_size(T, D));
    const att_fwd_fn fwds[2] = {attention_forward, att_ref_fwd};
    const int windows[] = {1, 3, 5};
    for (int f = 0; f < 2; f++)
        for (int wi = 0; wi < 3; wi++) {
            int w = windows[wi];
            for (int i = w; i < T; i += 4) {
                int first = i - w + 1;
                fwds[f](o0, att, qkv, B, T, H, D, w, scr);
                for (int p = 0; p <= first; p++) {
                    memcpy(pert, qkv, nqkv * sizeof(double));
                    att_perturb(pert, H, D, p);
                    fwds[f](o1, att, pert, B, T, H, D, w, scr);
                    int same = !memcmp(o0 + (size_t)i * C, o1 + (size_t)i * C,
                                       (size_t)C * sizeof(double));
                    if (p < first)
                        CHECK(same, "%s w%d: out[%d] moved when token %d (unseen) changed",
                              f ? "ref" : "fast", w, i, p);
                    else
                        CHECK(!same, "%s w%d: out[%d] ignores token %d (first seen)",
                              f ? "ref" : "fast", w, i, p);
                }
            }
        }
    free(qkv), free(pert), free(o0), free(o1), free(att), free(scr);
}

/* Perturbing token j leaves every earlier output bit-identical (and the other
 * batch element entirely), and moves out_j. T = 70 crosses a row block. */
static void test_attention_causality(void) {
    const int B = 2, T = 70, H = 2, D = 3, C = H * D;
    size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C;
    double *qkv = dfilled(nqkv, 51, -1.5, 1.5), *pert = dalloc(nqkv);
    double *o0 = dalloc(nout), *o1 = dalloc(nout), *att = dalloc((size_t)B * H * T * T);
    double *scr = dalloc(attention_scratch_size(T, D));
    const int js[] = {0, 5, 63, 64, 69}, windows[] = {0, 5};
    for (int wi = 0; wi < 2; wi++) {
        attention_forward(o0, att, qkv, B, T, H, D, windows[wi], scr);
        for (int n = 0; n < 5; n++) {
            int j = js[n];
            memcpy(pert, qkv, nqkv * sizeof(double));
            att_perturb(pert, H, D, j);
            attention_forward(o1, att, pert, B, T, H, D, windows[wi], scr);
            CHECK(!memcmp(o0, o1, (size_t)j * C * sizeof(double)),
                  "w%d: outputs before %d moved", windows[wi], j);
            CHECK(memcmp(o0 + (size_t)j * C, o1 + (size_t)j * C, (size_t)C * sizeof(double)),
                  "w%d: out[%d] ignores its own token", windows[wi], j);
            CHECK(!memcmp(o0 + (size_t)T * C, o1 + (size_t)T * C,
                          (size_t)T * C * sizeof(double)),
                  "w%d: batch 1 moved when batch 0 changed", windows[wi]);
        }
    }
    free(qkv), free(pert), free(o0), free(o1), free(att), free(scr);
}

/* ============================ feature maps ============================== */

/* Each map at points on both sides of 0 and at 0, against closed forms. */
static void test_featuremap_values(void) {
    const double x[5] = {-2, -0.5, 0, 0.5, 3};
    const double want[3][5] = {{-2, -0.5, 0, 0.5, 3},
                               {exp(-2.0), exp(-0.5), 1, 1.5, 4},
                               {0, 0, 0, 0.5, 3}};
    const fmap_kind kinds[3] = {FMAP_IDENTITY, FMAP_ELU1, FMAP_RELU};
    for (int k = 0; k < 3; k++) {
        double out[5];
        featuremap_forward(out, x, 5, kinds[k]);
        for (int i = 0; i < 5; i++)
            CHECK(fabs(out[i] - want[k][i]) <= 1e-15, "map %d: phi(%g) = %.17g, want %.17g",
                  k, x[i], out[i], want[k][i]);
    }
    /* derivatives at the kink: relu'(0) = 0 by convention, elu+1 is C^1 with
     * slope 1; both on top of a prefill of 2 to see accumulation */
    double x0 = 0, one = 1, dx;
    dx = 2;
    featuremap_backward(&dx, &one, &x0, 1, FMAP_RELU);
    CHECK(dx == 2, "relu'(0) should be 0: dx = %g", dx - 2);
    dx = 2;
    featuremap_backward(&dx, &one, &x0, 1, FMAP_ELU1);
    CHECK(dx == 3, "elu1'(0) should be 1: dx = %g", dx - 2);
}

typedef struct fmap_ctx {
    double *x, *y, *w;
    size_t n;
    fmap_kind f;
} fmap_ctx;

/* L = sum(w .* phi(x)). */
static double fmap_loss(void *p) {
    fmap_ctx *c = p;
    featuremap_forward(c->y, c->x, c->n, c->f);
    return dot(c->w, c->y, c->n);
}

/* Gradient of each map by finite differences, with x kept >= 0.05 away from
 * the relu kink; the analytic pass accumulates onto a prefill. */
static void test_featuremap_gradcheck(void) {
    const size_t n = 40;
    const fmap_kind kinds[3] = {FMAP_IDENTITY, FMAP_ELU1, FMAP_RELU};
    const char *names[3] = {"identity", "elu+1", "relu"};
    for (int k = 0; k < 3; k++) {
        fmap_ctx c = {dfilled(n, 61 + k, -2, 2), dalloc(n), dfilled(n, 71 + k, -1, 1), n,
                      kinds[k]};
        for (size_t i = 0; i < n; i++)
            if (fabs(c.x[i]) < 0.05) c.x[i] += c.x[i] < 0 ? -0.1 : 0.1;
        double *pre = dfilled(n, 81 + k, -1, 1), *g = dcopy(pre, n);
        featuremap_backward(g, c.w, c.x, n, kinds[k]);
        diff_into(g, g, pre, n);
        gc_tensor t = {"x", c.x, g, n};
        gradcheck_expect(names[k], fmap_loss, &c, &t, 1);
        /* the overwriting backward that reads phi: the same numbers as the
         * accumulating one into zeros, the kink included, nothing of dx read */
        double *zero = dalloc(n), *set = dalloc(n);
        c.x[3] = 0;
        featuremap_forward(c.y, c.x, n, kinds[k]);
        featuremap_backward(zero, c.w, c.x, n, kinds[k]);
        for (size_t i = 0; i < n; i++) set[i] = NAN;
        featuremap_backward_set(set, c.w, c.x, c.y, n, kinds[k]);
        CHECK(memcmp(set, zero, n * sizeof(double)) == 0,
              "%s: featuremap_backward_set differs from featuremap_backward into zeros",
              names[k]);
        free(zero), free(set);
        free(c.x), free(c.y), free(c.w), free(pre), free(g);
    }
}

/* ========================= linear attention core ========================= */

/* q, k, v either packed per token [q H*Dk | k H*Dk | v H*Dv] in one buffer
 * (strides 2*H*Dk + H*Dv) or three contiguous arrays; gradients use the same
 * layout. */
typedef struct la_io {
    double *buf[3]; /* buf[1], buf[2] NULL when packed */
    size_t len[3];
    double *q, *k, *v;
} la_io;

/* Allocate zeroed buffers for d (B, T, H, Dk, Dv set) and set d's strides. */
static void la_io_alloc(la_io *io, linattn_dims *d, int packed) {
    size_t BT = (size_t)d->B * d->T, HK = (size_t)d->H * d->Dk, HV = (size_t)d->H * d->Dv;
    memset(io, 0, sizeof *io);
    if (packed) {
        d->q_stride = d->k_stride = d->v_stride = (int)(2 * HK + HV);
        io->len[0] = BT * (2 * HK + HV);
        io->buf[0] = dalloc(io->len[0]);
        io->q = io->buf[0], io->k = io->q + HK, io->v = io->k + HK;
    } else {
        d->q_stride = d->k_stride = (int)HK, d->v_stride = (int)HV;
        io->len[0] = io->len[1] = BT * HK, io->len[2] = BT * HV;
        for (int i = 0; i < 3; i++) io->buf[i] = dalloc(io->len[i]);
        io->q = io->buf[0], io->k = io->buf[1], io->v = io->buf[2];
    }
}

/* A second set of buffers with the same layout as io. */
static void la_io_like(la_io *dst, const la_io *io) {
    *dst = *io;
    for (int i = 0; i < 3; i++) {
        dst->buf[i] = io->buf[i] ? dalloc(io->len[i]) : NULL;
        if (io->buf[i]) memcpy(dst->buf[i], io->buf[i], io->len[i] * sizeof(double));
    }
    dst->q = dst->buf[0] + (io->q - io->buf[0]);
    dst->k = io->buf[1] ? dst->buf[1] : dst->buf[0] + (io->k - io->buf[0]);
    dst->v = io->buf[2] ? dst->buf[2] : dst->buf[0] + (io->v - io->buf[0]);
}

/* Fill every buffer uniform in [lo, hi). */
static void la_io_fill(la_io *io, unsigned long long seed, double lo, double hi) {
    for (int i = 0; i < 3; i++)
        if (io->buf[i]) test_fill(io->buf[i], io->len[i], seed + i, lo, hi);
}

/* Free what la_io_alloc or la_io_like allocated. */
static void la_io_free(la_io *io) {
    for (int i = 0; i < 3; i++) free(io->buf[i]);
}

/* max |a - b| over all buffers relative to max |b| over all buffers. One
 * common scale, because a tensor can be ~0 by cancellation of O(1) terms
 * (T = 1 with normalize: o = v (q.k) / (q.k + eps), so dq, dk ~ eps) and its
 * own scale would then measure only rounding. */
static double la_io_diff(const la_io *a, const la_io *b) {
    double m = 0, sc = 1e-300;
    for (int i = 0; i < 3; i++)
        for (size_t j = 0; a->buf[i] && j < a->len[i]; j++) {
            double e = fabs(a->buf[i][j] - b->buf[i][j]);
            if (!(e <= m)) m = e;
            sc = fmax(sc, fabs(b->buf[i][j]));
        }
    return m / sc;
}

/* a -= b over every buffer. */
static void la_io_sub(la_io *a, const la_io *b) {
    for (int i = 0; i < 3; i++)
        if (a->buf[i]) diff_into(a->buf[i], a->buf[i], b->buf[i], a->len[i]);
}

/* The definition written out as attention without softmax, O(T^2) per head:
 * o_t = sum_{j<=t} (q_t.k_j) v_j / (sum_{j<=t} q_t.k_j + eps). */
static void la_oracle(double *out, const double *q, const double *k, const double *v,
                      const linattn_dims *d) {
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < d->H; h++)
            for (int t = 0; t < d->T; t++) {
                double *o = out + (((size_t)b * d->T + t) * d->H + h) * d->Dv, den = d->eps;
                const double *qt = q + ((size_t)b * d->T + t) * d->q_stride + h * d->Dk;
                for (int c = 0; c < d->Dv; c++) o[c] = 0;
                for (int j = 0; j <= t; j++) {
                    size_t bj = (size_t)b * d->T + j;
                    double s = dot(qt, k + bj * d->k_stride + h * d->Dk, (size_t)d->Dk);
                    const double *vj = v + bj * d->v_stride + h * d->Dv;
                    for (int c = 0; c < d->Dv; c++) o[c] += s * vj[c];
                    den += s;
                }
                if (d->normalize)
                    for (int c = 0; c < d->Dv; c++) o[c] /= den;
            }
}

/* Indexed by la_form. */
static const char *const la_form_names[3] = {"recurrent", "parallel", "chunkwise"};

/* All forms on one configuration: forward against the oracle; backward from
 * zero against the recurrent form; from a prefill, the increment equals the
 * zero-start result (backward accumulates); with dq = dv = NULL, dk alone
 * matches (separate layouts only, where NULL can be passed per tensor). */
static void la_compare(int B, int T, int H, int Dk, int Dv, int chunk, int packed,
                       int normalize, unsigned long long seed) {
    linattn_dims d = {B, T, H, Dk, Dv, 0, 0, 0, normalize, 1e-6, chunk, LA_RECURRENT};
    la_io x, pre, g[3], gp;
    la_io_alloc(&x, &d, packed);
    la_io_fill(&x, seed, 0.1, 1.0);
    la_io_like(&pre, &x);
    la_io_fill(&pre, seed + 10, -1, 1);
    size_t nout = (size_t)B * T * H * Dv;
    double *want = dalloc(nout), *out = dalloc(nout), *dout = dfilled(nout, seed + 20, -1, 1);
    la_oracle(want, x.q, x.k, x.v, &d);
    for (int f = 0; f < 3; f++) {
        d.form = (la_form)f;
        const char *fn = la_form_names[f];
        double *save = dalloc(linattn_save_size(&d)), *scr = dalloc(linattn_scratch_size(&d));
        linattn_forward(out, save, x.q, x.k, x.v, &d, scr);
        double eo = max_rel_diff(out, want, nout);
        CHECK(eo <= TOL_SAME, "%s B%d T%d H%d Dk%d Dv%d C%d norm%d: out off oracle by %.3g",
              fn, B, T, H, Dk, Dv, chunk, normalize, eo);

        la_io_like(&g[f], &x);
        for (int i = 0; i < 3; i++)
            if (g[f].buf[i]) memset(g[f].buf[i], 0, g[f].len[i] * sizeof(double));
        linattn_backward(g[f].q, g[f].k, g[f].v, dout, out, save, x.q, x.k, x.v, &d, scr);
        double eg = la_io_diff(&g[f], &g[0]);
        CHECK(eg <= TOL_SAME, "%s B%d T%d H%d Dk%d Dv%d C%d norm%d: grads off recurrent by %.3g",
              fn, B, T, H, Dk, Dv, chunk, normalize, eg);

        la_io_like(&gp, &pre);
        linattn_backward(gp.q, gp.k, gp.v, dout, out, save, x.q, x.k, x.v, &d, scr);
        la_io_sub(&gp, &pre);
        double ea = la_io_diff(&gp, &g[f]);
        CHECK(ea <= TOL_SAME, "%s norm%d: backward does not accumulate (%.3g)", fn, normalize,
              ea);
        la_io_free(&gp);
        test_note("%s T%d C%d norm%d: out %.2g, grads %.2g, accumulate %.2g", fn, T, chunk,
                  normalize, eo, eg, ea);

        if (!packed) {
            double *dk = dalloc(x.len[1]);
            linattn_backward(NULL, dk, NULL, dout, out, save, x.q, x.k, x.v, &d, scr);
            double ek = max_rel_diff(dk, g[f].k, x.len[1]);
            CHECK(ek <= TOL_SAME, "%s norm%d: dk alone differs by %.3g", fn, normalize, ek);
            free(dk);
        }
        free(save), free(scr);
    }
    for (int f = 0; f < 3; f++) la_io_free(&g[f]);
    la_io_free(&x), la_io_free(&pre);
    free(want), free(out), free(dout);
}

/* la_compare over the awkward shapes, normalize off and on. The last rows
 * cut chunks into several of the chunkwise form's sub-blocks (16 rows; with
 * 32 or 8 too): a chunk that is not a multiple of them, one that is, and a
 * short last chunk. */
static void test_linattn_forms_agree(void) {
    /* B, T, H, Dk, Dv, chunk, packed */
    static const int cfg[][7] = {
        {2, 13, 2, 3, 4, 4, 1},  /* T not a multiple of the chunk, strided */
        {1, 5, 1, 4, 3, 8, 0},   /* chunk > T, one head */
        {2, 6, 2, 2, 3, 1, 1},   /* chunk 1 */
        {1, 1, 1, 3, 2, 4, 0},   /* T = 1 */
        {2, 13, 1, 5, 5, 13, 1}, /* chunk = T */
        {1, 16, 2, 3, 2, 4, 0},  /* T a multiple of the chunk */
        {2, 50, 2, 5, 4, 24, 1}, /* chunks 24, 24, 2: sub-blocks 16 + 8 */
        {1, 150, 1, 3, 6, 72, 0}, /* chunks 72, 72, 6 */
        {2, 96, 1, 4, 3, 48, 1}, /* whole sub-blocks, T a multiple of the chunk */
    };
    /* sub-blocks of 16 rows, then whole chunks (the layout on AMX tiles) */
    for (int whole = 0; whole < 2; whole++) {
        linattn_set_sub(whole ? 1 << 30 : 0);
        for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++)
            for (int norm = 0; norm < 2; norm++)
                la_compare(cfg[c][0], cfg[c][1], cfg[c][2], cfg[c][3], cfg[c][4], cfg[c][5],
                           cfg[c][6], norm, 200 + 10 * c + norm);
    }
    linattn_set_sub(0);
}

/* Every form reads only what it wrote: with save and scratch filled with NaN
 * before forward and scratch again before backward, out and the gradients are
 * bit-identical to a run on zeroed buffers (NaN would reach them through any
 * read of a masked score entry the chunkwise form skips, or of the first
 * chunk's prefix state, which is not stored). Chunk 24 in T 50: two sub-blocks
 * per chunk and a short last chunk laid out with another leading dimension;
 * then the same with whole chunks. */
static void test_linattn_stale_scratch(void) {
    for (int whole = 0; whole < 2; whole++) /* 16-row sub-blocks, whole chunks */
    for (int f = 0; f < 3; f++)
        for (int norm = 0; norm < 2; norm++) {
            linattn_set_sub(whole ? 1 << 30 : 0);
            linattn_dims d = {2, 50, 2, 5, 4, 0, 0, 0, norm, 1e-6, 24, (la_form)f};
            la_io x, g[2];
            la_io_alloc(&x, &d, 1);
            la_io_fill(&x, 600 + f, 0.1, 1.0);
            size_t nout = (size_t)d.B * d.T * d.H * d.Dv;
            size_t nsave = linattn_save_size(&d), nscr = linattn_scratch_size(&d);
            double *out[2] = {dalloc(nout), dalloc(nout)}, *dout = dfilled(nout, 610, -1, 1);
            double *save = dalloc(nsave), *scr = dalloc(nscr);
            for (int r = 0; r < 2; r++) {
                double fill = r ? NAN : 0;
                for (size_t i = 0; i < nsave; i++) save[i] = fill;
                for (size_t i = 0; i < nscr; i++) scr[i] = fill;
                linattn_forward(out[r], save, x.q, x.k, x.v, &d, scr);
                for (size_t i = 0; i < nscr; i++) scr[i] = fill;
                la_io_like(&g[r], &x);
                memset(g[r].buf[0], 0, g[r].len[0] * sizeof(double));
                linattn_backward(g[r].q, g[r].k, g[r].v, dout, out[r], save, x.q, x.k, x.v, &d,
                                 scr);
            }
            CHECK(!memcmp(out[0], out[1], nout * sizeof(double)),
                  "%s norm%d: out depends on stale save or scratch", la_form_names[f], norm);
            CHECK(!memcmp(g[0].buf[0], g[1].buf[0], g[0].len[0] * sizeof(double)),
                  "%s norm%d: gradients depend on stale save or scratch", la_form_names[f], norm);
            la_io_free(&x), la_io_free(&g[0]), la_io_free(&g[1]);
            free(out[0]), free(out[1]), free(dout), free(save), free(scr);
        }
    linattn_set_sub(0);
}

/* Loss through a feature map: q, k = phi(raw), v = raw, in the packed layout;
 * L = sum(w .* linattn(q, k, v)). */
typedef struct la_ctx {
    linattn_dims d;
    fmap_kind f;
    double *raw, *phi, *out, *save, *scr, *w;
} la_ctx;

/* phi = [phi(q) phi(k) | v] token by token from raw. */
static void la_map(la_ctx *c) {
    int HK = c->d.H * c->d.Dk, HV = c->d.H * c->d.Dv, s = c->d.q_stride;
    for (int t = 0; t < c->d.B * c->d.T; t++) {
        featuremap_forward(c->phi + (size_t)t * s, c->raw + (size_t)t * s, (size_t)2 * HK,
                           c->f);
        memcpy(c->phi + (size_t)t * s + 2 * HK, c->raw + (size_t)t * s + 2 * HK,
               (size_t)HV * sizeof(double));
    }
}

/* L = sum(w .* linattn(phi(q), phi(k), v)). */
static double la_loss(void *p) {
    la_ctx *c = p;
    int HK = c->d.H * c->d.Dk;
    la_map(c);
    linattn_forward(c->out, c->save, c->phi, c->phi + HK, c->phi + 2 * HK, &c->d, c->scr);
    return dot(c->w, c->out, (size_t)c->d.B * c->d.T * c->d.H * c->d.Dv);
}

/* One gradient check of L = sum(w .* linattn(phi(q), phi(k), v)) against
 * central differences. Identity with normalize gets q, k in [0.2, 1.4] so
 * that q.z + eps stays away from 0, where the loss has a pole and finite
 * differences mean nothing. */
static void la_gradcheck_one(int B, int T, int H, int chunk, la_form form, int norm,
                             fmap_kind map, unsigned long long seed, unsigned long long wseed) {
    const int Dk = 3, Dv = 2, HK = H * Dk, HV = H * Dv, s = 2 * HK + HV;
    const size_t n = (size_t)B * T * s, nout = (size_t)B * T * HV;
    la_ctx c = {.d = {B, T, H, Dk, Dv, s, s, s, norm, 1e-6, chunk, form}, .f = map};
    c.raw = dfilled(n, seed, -1.5, 1.5);
    if (map == FMAP_IDENTITY)
        for (int t = 0; t < B * T; t++)
            for (int i = 0; i < 2 * HK; i++) {
                double *r = c.raw + (size_t)t * s + i;
                *r = 0.2 + 0.8 * fabs(*r);
            }
    c.phi = dalloc(n), c.out = dalloc(nout), c.w = dfilled(nout, wseed, -1, 1);
    c.save = dalloc(linattn_save_size(&c.d));
    c.scr = dalloc(linattn_scratch_size(&c.d));
    double *dphi = dalloc(n), *g = dalloc(n);
    la_loss(&c);
    linattn_backward(dphi, dphi + HK, dphi + 2 * HK, c.w, c.out, c.save, c.phi, c.phi + HK,
                     c.phi + 2 * HK, &c.d, c.scr);
    for (int t = 0; t < B * T; t++) {
        size_t o = (size_t)t * s;
        featuremap_backward(g + o, dphi + o, c.raw + o, (size_t)2 * HK, c.f);
        for (int i = 2 * HK; i < s; i++) g[o + i] += dphi[o + i];
    }
    char label[96];
    snprintf(label, sizeof label, "linattn %s T=%d chunk=%d normalize=%d %s",
             la_form_names[form], T, chunk, norm, map == FMAP_IDENTITY ? "identity" : "elu+1");
    gc_tensor t = {"qkv", c.raw, g, n};
    gradcheck_expect(label, la_loss, &c, &t, 1);
    free(c.raw), free(c.phi), free(c.out), free(c.w), free(c.save), free(c.scr);
    free(dphi), free(g);
}

/* Every form, normalize on and off, behind elu+1 and identity; then the
 * chunkwise form with chunks of several sub-blocks (24 = 16 + 8 rows) and a
 * short last chunk (T 50). */
static void test_linattn_gradcheck(void) {
    const fmap_kind maps[2] = {FMAP_ELU1, FMAP_IDENTITY};
    for (int f = 0; f < 3; f++)
        for (int norm = 0; norm < 2; norm++)
            for (int m = 0; m < 2; m++)
                la_gradcheck_one(2, 7, 2, 3, (la_form)f, norm, maps[m],
                                 300 + 4 * f + 2 * norm + m, 400 + f);
    for (int whole = 0; whole < 2; whole++) { /* 16-row sub-blocks, whole chunks */
        linattn_set_sub(whole ? 1 << 30 : 0);
        for (int norm = 0; norm < 2; norm++)
            for (int m = 0; m < 2; m++)
                la_gradcheck_one(1, 50, 1, 24, LA_CHUNKWISE, norm, maps[m], 320 + 2 * norm + m,
                                 410);
    }
    linattn_set_sub(0);
}

/* Perturbing token j of batch 0 leaves earlier outputs (and batch 1)
 * bit-identical and moves out_j, in every form. T = 13 with chunk 4 puts j
 * at chunk starts, middles and the short last chunk. */
static void test_linattn_causality(void) {
    const int B = 2, T = 13, H = 2, Dk = 3, Dv = 2, HV = H * Dv;
    const int js[] = {0, 3, 4, 7, 12};
    for (int f = 0; f < 3; f++)
        for (int norm = 0; norm < 2; norm++) {
            linattn_dims d = {B, T, H, Dk, Dv, 0, 0, 0, norm, 1e-6, 4, (la_form)f};
            la_io x, p;
            la_io_alloc(&x, &d, 1);
            la_io_fill(&x, 500 + f, 0.1, 1.0);
            size_t nout = (size_t)B * T * HV;
            double *o0 = dalloc(nout), *o1 = dalloc(nout);
            double *save = dalloc(linattn_save_size(&d)), *scr = dalloc(linattn_scratch_size(&d));
            linattn_forward(o0, save, x.q, x.k, x.v, &d, scr);
            for (int n = 0; n < 5; n++) {
                int j = js[n];
                la_io_like(&p, &x);
                for (int c = 0; c < d.q_stride; c++) p.buf[0][(size_t)j * d.q_stride + c] += 0.5;
                linattn_forward(o1, save, p.q, p.k, p.v, &d, scr);
                CHECK(!memcmp(o0, o1, (size_t)j * HV * sizeof(double)),
                      "%s norm%d: outputs before %d moved", la_form_names[f], norm, j);
                CHECK(memcmp(o0 + (size_t)j * HV, o1 + (size_t)j * HV, (size_t)HV * sizeof(double)),
                      "%s norm%d: out[%d] ignores its own token", la_form_names[f], norm, j);
                CHECK(!memcmp(o0 + (size_t)T * HV, o1 + (size_t)T * HV,
                              (size_t)T * HV * sizeof(double)),
                      "%s norm%d: batch 1 moved", la_form_names[f], norm);
                la_io_free(&p);
            }
            la_io_free(&x);
            free(o0), free(o1), free(save), free(scr);
        }
}

const test_case tests_attention[] = {
    {"attention_fast_matches_ref", test_attention_fast_matches_ref},
    {"attention_closed_forms", test_attention_closed_forms},
    {"attention_gradcheck", test_attention_gradcheck},
    {"attention_rows_matches_ref_and_full", test_attention_rows},
    {"attention_rows_gradcheck", test_attention_rows_gradcheck},
    {"attention_window_semantics", test_attention_window_semantics},
    {"attention_causality", test_attention_causality},
    {"featuremap_values", test_featuremap_values},
    {"featuremap_gradcheck", test_featuremap_gradcheck},
    {"linattn_forms_agree", test_linattn_forms_agree},
    {"linattn_stale_scratch", test_linattn_stale_scratch},
    {"linattn_gradcheck", test_linattn_gradcheck},
    {"linattn_causality", test_linattn_causality},
    {NULL, NULL},
};
