/* test_perf.c: the speed work does not change the numbers.
 *
 * What is pinned against what:
 *   - the vectorisable float exp of the element-wise kernels (fastexp.h,
 *     inlined into each) against libm's exp in double: relative error within
 *     2 float ulps over [-87, 0], exact at 0, 0 below FLT_MIN's logarithm,
 *     NaN kept;
 *   - the vectorisable float erf and normal CDF of GELU (fasterf.h) against
 *     libm's erf and erfc in double: erf within 4 float ulps over [-6, 6], the
 *     CDF within a relative 4 ulps times 1 + x^2/2 over [-13, 8] (its lower
 *     tail computed as erfc, not as 1 + erf), exact at 0 and at the
 *     infinities, NaN kept;
 *   - the vectorised, threaded cross-entropy against its plain-loop reference;
 *   - every threaded kernel (attention, linear-attention forms, the linear
 *     layer, LayerNorm and RMSNorm, AdamW, the gradient norm, the embedding)
 *     with 2 threads against the same kernel with 1 thread, on shapes large
 *     enough to cross the kernels' thresholds for a parallel region: bitwise
 *     where each output is computed by one thread in a fixed order, within
 *     rounding where a reduction is split;
 *   - a whole 2-layer model's loss and gradients with 2 threads against 1;
 *   - ml_par_zero (parallel.c) on 2 threads: the range zero, nothing around it;
 *   - ml_par_slots (parallel.c) read once: a narrower CPU set leaves it as it was;
 *   - the blocked LM head (lm_head.c) with 2 threads against 1, bitwise: the
 *     threads take whole groups of rows and the partials add in group order;
 *   - the training step touches no new memory once warm (no page faults with
 *     one thread; a few of OpenBLAS's with two): no buffer is allocated inside
 *     the step.
 * The thread setting is OpenBLAS's thread count (memlab --threads sets it);
 * each test restores it. Timing is never asserted (memlab bench measures). */
#ifndef MEMLAB_DOUBLE
#error "test_perf.c is built with the double-precision kernels (-DMEMLAB_DOUBLE)"
#endif

#define _GNU_SOURCE
#include <errno.h>
#include <float.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench.h"
#include "fasterf.h"
#include "gemm_bf16.h"
#include "gradcheck.h"
#include "kernels.h"
#include "model.h"
#include "parallel.h"
#include "spec.h"
#include "task.h"
#include "test.h"

/* The cross-entropy reference (exported for this file only). */
double crossentropy_forward_ref(real *probs, const real *logits, const int *targets, int S,
                                int V, int *count);

/* Agreement of two computations of the same sums in another order. */
#define TOL_ORDER 1e-12

/* n zeroed doubles (at least one), aborting when out of memory. */
static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) abort();
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

/* Number of elements where a and b differ in any bit. */
static size_t bits_differ(const double *a, const double *b, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += memcmp(&a[i], &b[i], sizeof(double)) != 0;
    return k;
}

/* ---- the float exp ----------------------------------------------------------- */

typedef float (*expf_fn)(float);

/* A float exp against libm's exp in double (see the top). */
static void check_expf(const char *name, expf_fn f) {
    double worst = 0, at = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = (float)(-87.0 * i / 200000.0);
        double want = exp((double)x), got = f(x);
        double rel = fabs(got - want) / want;
        if (rel > worst) worst = rel, at = x;
    }
    /* the kernels promise below 2 ulps (measured: about 0.7) */
    CHECK(worst <= 2.0 * FLT_EPSILON, "%s: relative error %.3g at x = %.9g (2 ulps = %.3g)",
          name, worst, at, 2.0 * FLT_EPSILON);
    CHECK(f(0.0f) == 1.0f, "%s(0) = %.9g, want 1 exactly", name, (double)f(0.0f));
    CHECK(f(-88.0f) == 0.0f && f(-1000.0f) == 0.0f && f(-INFINITY) == 0.0f,
          "%s: results below FLT_MIN must be 0", name);
    CHECK(isnan(f(NAN)), "%s(NaN) must be NaN", name);
    test_note("%s: worst relative error %.3g at %.6g", name, worst, at);
}

/* The float exp the kernels inline (the double build's kernels use libm's,
 * so it is called here directly). */
static void test_fast_exp(void) { check_expf("expf_fast", expf_fast); }

/* ---- the float erf and normal CDF ------------------------------------------------ */

/* The spacing of floats at |y| (the ulp of y rounded to float). */
static double ulp_of(double y) {
    float a = fabsf((float)y);
    return (double)nextafterf(a, INFINITY) - (double)a;
}

static void test_fast_erf(void) {
    double worst = 0, at = 0;
    for (int i = -600000; i <= 600000; i++) {
        float z = (float)(6.0 * i / 600000.0);
        double want = erf((double)z), err = fabs((double)erff_fast(z) - want);
        double u = want == 0 ? FLT_TRUE_MIN : err / ulp_of(want);
        if (u > worst) worst = u, at = z;
    }
    CHECK(worst <= 4.0, "erff_fast: %.3g ulps at z = %.9g (at most 4)", worst, at);
    test_note("erff_fast: worst %.3g ulps at %.6g", worst, at);
    /* the rounding of x / sqrt 2 and of its square moves exp(-x^2/2) by a
     * relative few ulps of x^2/2: the bound grows with it */
    double wc = 0, atc = 0;
    for (int i = 0; i <= 420000; i++) {
        float x = (float)(-13.0 + 21.0 * i / 420000.0);
        double want = 0.5 * erfc(-(double)x / sqrt(2.0));
        double rel = fabs((double)normcdf_fast(x) - want) / want / (1 + 0.5 * x * x);
        if (rel > wc) wc = rel, atc = x;
    }
    CHECK(wc <= 4 * FLT_EPSILON, "normcdf_fast: relative error %.3g (1 + x^2/2) at x = %.9g "
          "(at most 4 ulps times that)", wc, atc);
    test_note("normcdf_fast: worst relative error %.3g (1 + x^2/2) at %.6g", wc, atc);
    CHECK(erff_fast(0.0f) == 0.0f && normcdf_fast(0.0f) == 0.5f, "erf(0) = 0, Phi(0) = 1/2");
    CHECK(erff_fast(INFINITY) == 1.0f && erff_fast(-INFINITY) == -1.0f &&
              normcdf_fast(INFINITY) == 1.0f && normcdf_fast(-INFINITY) == 0.0f,
          "erf(+-inf) = +-1, Phi(-inf) = 0, Phi(inf) = 1");
    CHECK(isnan(erff_fast(NAN)) && isnan(normcdf_fast(NAN)), "NaN must stay NaN");
}

/* ---- thread settings -------------------------------------------------------------- */

/* Set memlab's thread setting (OpenBLAS's count) to `threads`; returns the
 * old one for the caller to restore. */
static int threads_set(int threads) {
    int old = openblas_get_num_threads();
    openblas_set_num_threads(threads);
    return old;
}

/* ml_par_zero on 2 threads: every byte of the range zero and the bytes
 * around it untouched, for sizes below, at and above the size a second
 * thread takes, not multiples of its 4 KiB units, at an odd address. */
static void test_par_zero(void) {
    const size_t sizes[] = {0, 1, 4095, 4097, 300001, (size_t)1 << 20, ((size_t)3 << 20) + 13};
    int old = threads_set(2);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        const size_t n = sizes[k], pad = 33;
        unsigned char *buf = malloc(n + 2 * pad);
        memset(buf, 0xab, n + 2 * pad);
        ml_par_zero(buf + pad, n);
        size_t bad = 0;
        for (size_t i = 0; i < pad; i++) bad += (buf[i] != 0xab) + (buf[pad + n + i] != 0xab);
        for (size_t i = 0; i < n; i++) bad += buf[pad + i] != 0;
        CHECK(bad == 0, "ml_par_zero of %zu bytes: %zu bytes wrong", n, bad);
        free(buf);
    }
    /* ml_par_zero_rows: a block of columns zero, the other columns untouched,
     * from one row to enough rows for both threads */
    const size_t rows[] = {0, 1, 7, 3000, 20000};
    for (size_t k = 0; k < sizeof rows / sizeof *rows; k++) {
        const size_t n = rows[k], stride = 97, off = 40, w = 33;
        unsigned char *buf = malloc(n * stride + 1);
        memset(buf, 0xab, n * stride + 1);
        ml_par_zero_rows(buf + off, n, stride, w);
        size_t bad = buf[n * stride] != 0xab;
        for (size_t i = 0; i < n * stride; i++) {
            size_t col = i % stride;
            bad += col >= off && col < off + w ? buf[i] != 0 : buf[i] != 0xab;
        }
        CHECK(bad == 0, "ml_par_zero_rows of %zu rows: %zu bytes wrong", n, bad);
        free(buf);
    }
    threads_set(old);
}

/* ml_par_slots() is read once: narrowing this thread's CPU set (which
 * omp_get_num_procs() follows) leaves it, and so every scratch size taken from
 * it, as it was. On a single-CPU machine there is nothing to narrow. */
static void test_par_slots_fixed(void) {
    const int slots = ml_par_slots();
    cpu_set_t was, one;
    if (sched_getaffinity(0, sizeof was, &was) || CPU_COUNT(&was) < 2) {
        printf("    (one CPU in this process's set: nothing to narrow)\n");
        return;
    }
    int cpu = 0;
    while (!CPU_ISSET(cpu, &was)) cpu++;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0, "sched_setaffinity: %s", strerror(errno));
#ifdef _OPENMP
    const int procs = omp_get_num_procs();
#else
    const int procs = 1;
#endif
    const int now = ml_par_slots();
    sched_setaffinity(0, sizeof was, &was);
    CHECK(procs == 1, "omp_get_num_procs() on one CPU: %d", procs);
    CHECK(now == slots, "ml_par_slots() moved from %d to %d with the CPU set", slots, now);
}

/* ---- the caller's floating-point mode in every thread -------------------------------- */

/* Elements of x[n] that are subnormal (nonzero, below DBL_MIN). */
static size_t subnormals(const double *x, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += x[i] != 0 && fabs(x[i]) < DBL_MIN;
    return k;
}

/* The kernels with their own thread regions (AdamW, clipping, norms,
 * embedding, cross-entropy's backward) run with the caller's denormal mode in
 * every thread: with flush-to-zero and denormals-are-zero set, subnormal
 * inputs give no subnormal output on 2 threads, the same bits as on 1. */
static void test_fp_mode_threads(void) {
#ifdef __SSE__
    const double tiny = DBL_MIN / 64; /* subnormal */
    const size_t n = (size_t)1 << 18;
    const int N = 1024, C = 256, S = 64, V = 4099;
    unsigned mode = ml_fp_mode();
    int old = threads_set(2);
    {
        /* start the thread pool without flushing (a new thread inherits the
         * mode of the one that creates it; the pool's threads live on) */
        double *p = dfilled(n, 2, -1, 1), *g = dfilled(n, 3, -1, 1), *m = dalloc(n);
        double *v = dalloc(n);
        ml_fp_mode_set(mode & ~0x8040u);
        adamw_step(p, g, m, v, n, 1e-3, 0.9, 0.999, 1e-8, 0.1, 1);
        ml_fp_mode_set(mode);
        free(p), free(g), free(m), free(v);
    }
    double *out[2][6];
    for (int r = 0; r < 2; r++) {
        threads_set(r + 1);
        ml_fp_mode_set(mode | 0x8040);
        /* AdamW moments from subnormal gradients, then clipping */
        double *p = dfilled(n, 3, -1, 1), *g = dalloc(n), *m = dalloc(n), *v = dalloc(n);
        for (size_t i = 0; i < n; i++) g[i] = tiny * (double)(1 + i % 7);
        adamw_step(p, g, m, v, n, 1e-3, 0.9, 0.999, 1e-8, 0.1, 1);
        double *gc = dfilled(n, 4, -1, 1);
        for (size_t i = 0; i < n; i += 2) gc[i] = tiny;
        grad_clip(gc, n, 1e-3);
        /* layernorm's dw from subnormal output gradients */
        double *x = dfilled((size_t)N * C, 5, -1, 1), *w = dfilled(C, 6, 0.5, 1.5);
        double *y = dalloc((size_t)N * C), *mean = dalloc(N), *rstd = dalloc(N), *b = dalloc(C);
        double *dy = dalloc((size_t)N * C), *dx = dalloc((size_t)N * C), *dw = dalloc(C);
        for (size_t i = 0; i < (size_t)N * C; i++) dy[i] = tiny;
        layernorm_forward(y, mean, rstd, x, w, b, N, C, 1e-5);
        layernorm_backward(dx, dw, NULL, dy, x, w, mean, rstd, N, C);
        /* embedding: subnormal table rows added */
        int *tok = malloc(sizeof(int) * N);
        for (int i = 0; i < N; i++) tok[i] = i % 17;
        double *wte = dalloc((size_t)17 * C), *wpe = dalloc((size_t)N * C);
        for (size_t i = 0; i < (size_t)17 * C; i++) wte[i] = tiny;
        for (size_t i = 0; i < (size_t)N * C; i++) wpe[i] = tiny;
        double *emb = dalloc((size_t)N * C);
        embedding_forward(emb, tok, wte, wpe, 1, N, C);
        /* cross-entropy backward: scale times p, p of order one, scale subnormal */
        double *pr = dfilled((size_t)S * V, 7, 0, 1), *dl = dalloc((size_t)S * V);
        int *tg = malloc(sizeof(int) * S);
        for (int i = 0; i < S; i++) tg[i] = (i * 13) % V;
        crossentropy_backward(dl, pr, tg, S, V, tiny);
        ml_fp_mode_set(mode);
        out[r][0] = m, out[r][1] = gc, out[r][2] = dw, out[r][3] = emb, out[r][4] = dl;
        out[r][5] = dx;
        free(p), free(g), free(v), free(x), free(w), free(b), free(y), free(mean), free(rstd), free(dy);
        free(tok), free(wte), free(wpe), free(pr), free(tg);
    }
    threads_set(old);
    const char *what[] = {"adamw m", "grad_clip", "layernorm dw", "embedding", "ce backward",
                          "layernorm dx"};
    const size_t len[] = {n, n, (size_t)C, (size_t)N * C, (size_t)S * V, (size_t)N * C};
    for (int k = 0; k < 6; k++) {
        size_t sub = subnormals(out[1][k], len[k]);
        CHECK(sub == 0, "%s: %zu subnormal outputs on 2 threads", what[k], sub);
        /* (clipping's norm is summed per thread: its scale may differ in the last bit) */
        CHECK(k == 1 || bits_differ(out[0][k], out[1][k], len[k]) == 0,
              "%s: 1 and 2 threads differ", what[k]);
        free(out[0][k]), free(out[1][k]);
    }
#endif
}

/* ---- cross-entropy ------------------------------------------------------------------- */

/* Fast (1 and 2 threads) against the plain loops: S rows, some ignored, V not
 * a multiple of any vector width; large enough for two threads. */
static void test_crossentropy_fast_matches_ref(void) {
    const int S = 41, V = 4099;
    size_t n = (size_t)S * V;
    double *logits = dfilled(n, 7, -6, 6);
    int *tgt = malloc(sizeof(int) * S);
    for (int i = 0; i < S; i++) tgt[i] = i % 5 == 3 ? -1 : (i * 997) % V;
    logits[5] = 40; /* one confident row */
    double *p0 = dalloc(n), *p1 = dalloc(n), *p2 = dalloc(n);
    int c0 = -1, c1 = -1, c2 = -1;
    double l0 = crossentropy_forward_ref(p0, logits, tgt, S, V, &c0);
    int old = threads_set(1);
    double l1 = crossentropy_forward(p1, logits, tgt, S, V, &c1);
    threads_set(2);
    double l2 = crossentropy_forward(p2, logits, tgt, S, V, &c2);
    threads_set(old);
    CHECK(c0 == c1 && c0 == c2 && c0 == S - S / 5 - (S % 5 > 3), "counts %d %d %d", c0, c1, c2);
    CHECK(fabs(l1 - l0) <= TOL_ORDER * fabs(l0), "loss 1 thread %.17g vs ref %.17g", l1, l0);
    CHECK(fabs(l2 - l0) <= TOL_ORDER * fabs(l0), "loss 2 threads %.17g vs ref %.17g", l2, l0);
    double e1 = max_rel_diff(p1, p0, n), e2 = max_rel_diff(p2, p0, n);
    CHECK(e1 <= TOL_ORDER && e2 <= TOL_ORDER, "probs differ from ref: %.3g, %.3g", e1, e2);
    CHECK(bits_differ(p1, p2, n) == 0, "probs differ between 1 and 2 threads");
    /* in place, threaded */
    double *inplace = dcopy(logits, n);
    threads_set(2);
    double li = crossentropy_forward(inplace, inplace, tgt, S, V, NULL);
    threads_set(old);
    CHECK(li == l2 && bits_differ(inplace, p2, n) == 0, "in place differs");
    /* a NaN logit is not hidden */
    logits[2 * V + 17] = NAN; /* row 2 is supervised */
    threads_set(2);
    double ln = crossentropy_forward(p2, logits, tgt, S, V, NULL);
    threads_set(old);
    CHECK(isnan(ln), "a NaN logit gave loss %g", ln);
    /* backward: bitwise the same with 2 threads, and the exact p - 1 target */
    double *d1 = dfilled(n, 8, -1, 1), *d2 = dcopy(d1, n), *d0 = dcopy(d1, n);
    crossentropy_forward_ref(p0, inplace, tgt, S, V, NULL);
    threads_set(1);
    crossentropy_backward(d1, p0, tgt, S, V, 0.25);
    threads_set(2);
    crossentropy_backward(d2, p0, tgt, S, V, 0.25);
    threads_set(old);
    int bad = 0;
    for (int i = 0; i < S; i++)
        for (int v = 0; v < V; v++) {
            size_t k = (size_t)i * V + v;
            double want = tgt[i] < 0 ? d0[k] : d0[k] + 0.25 * (p0[k] - (v == tgt[i]));
            bad += fabs(d1[k] - want) > 1e-15;
        }
    CHECK(bad == 0, "%d backward elements differ from d + scale (p - onehot)", bad);
    CHECK(bits_differ(d1, d2, n) == 0, "backward differs between 1 and 2 threads");
    /* the in-place gradient: scale p - scale onehot on kept rows, 0 elsewhere */
    double *g1 = dcopy(p0, n), *g2 = dcopy(p0, n);
    threads_set(1);
    crossentropy_grad_inplace(g1, tgt, S, V, 0.25);
    threads_set(2);
    crossentropy_grad_inplace(g2, tgt, S, V, 0.25);
    threads_set(old);
    bad = 0;
    for (int i = 0; i < S; i++)
        for (int v = 0; v < V; v++) {
            size_t k = (size_t)i * V + v;
            double want = tgt[i] < 0 ? 0.0 : 0.25 * p0[k] - (v == tgt[i] ? 0.25 : 0.0);
            bad += g1[k] != want;
        }
    CHECK(bad == 0, "%d in-place gradient elements differ from scale p - scale onehot", bad);
    CHECK(bits_differ(g1, g2, n) == 0, "in-place gradient differs between 1 and 2 threads");
    free(logits), free(tgt), free(p0), free(p1), free(p2), free(inplace);
    free(d0), free(d1), free(d2), free(g1), free(g2);
}

/* ---- attention --------------------------------------------------------------------------- */

/* Threaded fast attention: bitwise equal to one thread, and equal to the
 * naive reference, on shapes past the threading threshold. */
static void test_attention_threads(void) {
    static const int shapes[][5] = {{4, 200, 2, 24, 0}, {3, 160, 3, 24, 37}, {9, 120, 1, 40, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int B = shapes[s][0], T = shapes[s][1], H = shapes[s][2], D = shapes[s][3];
        int w = shapes[s][4];
        size_t nqkv = (size_t)B * T * 3 * H * D, nout = (size_t)B * T * H * D;
        size_t natt = (size_t)B * H * T * T;
        double *qkv = dfilled(nqkv, 20 + s, -2, 2), *dout = dfilled(nout, 30 + s, -1, 1);
        double *pre = dfilled(nqkv, 40 + s, -1, 1);
        double *o[3], *a[3], *g[3];
        double *scr = dalloc(attention_scratch_size(T, D));
        for (int k = 0; k < 3; k++) {
            o[k] = dalloc(nout);
            a[k] = dalloc(natt);
            g[k] = dcopy(pre, nqkv);
        }
        attention_forward_ref(o[0], a[0], qkv, B, T, H, D, w);
        attention_backward_ref(g[0], dout, qkv, a[0], B, T, H, D, w);
        int old = threads_set(1);
        attention_forward(o[1], a[1], qkv, B, T, H, D, w, scr);
        attention_backward(g[1], dout, qkv, a[1], B, T, H, D, w, scr);
        threads_set(2);
        attention_forward(o[2], a[2], qkv, B, T, H, D, w, scr);
        attention_backward(g[2], dout, qkv, a[2], B, T, H, D, w, scr);
        threads_set(old);
        CHECK(bits_differ(o[1], o[2], nout) == 0 && bits_differ(a[1], a[2], natt) == 0 &&
                  bits_differ(g[1], g[2], nqkv) == 0,
              "B%d T%d H%d D%d w%d: 2 threads differ from 1", B, T, H, D, w);
        double eo = max_rel_diff(o[2], o[0], nout), eg = max_rel_diff(g[2], g[0], nqkv);
        CHECK(eo <= TOL_ORDER && eg <= TOL_ORDER, "B%d T%d: vs ref out %.3g dqkv %.3g", B, T, eo,
              eg);
        for (int k = 0; k < 3; k++) free(o[k]), free(a[k]), free(g[k]);
        free(qkv), free(dout), free(pre), free(scr);
    }
}

/* Each linear-attention form with 2 threads: bitwise equal to 1 thread. */
static void test_linattn_threads(void) {
    const int B = 8, T = 200, H = 2, Dk = 16, Dv = 12;
    const la_form forms[3] = {LA_RECURRENT, LA_PARALLEL, LA_CHUNKWISE};
    size_t nq = (size_t)B * T * H * Dk, nv = (size_t)B * T * H * Dv;
    double *q = dfilled(nq, 51, 0.1, 1), *k = dfilled(nq, 52, 0.1, 1);
    double *v = dfilled(nv, 53, -1, 1), *dout = dfilled(nv, 54, -1, 1);
    for (int f = 0; f < 3; f++) {
        for (int norm = 0; norm < 2; norm++) {
            linattn_dims d;
            memset(&d, 0, sizeof d);
            d.B = B, d.T = T, d.H = H, d.Dk = Dk, d.Dv = Dv;
            d.q_stride = d.k_stride = H * Dk;
            d.v_stride = H * Dv;
            d.normalize = norm;
            d.eps = 1e-6;
            d.chunk = 48;
            d.form = forms[f];
            double *out[2], *save[2], *dq[2], *dk[2], *dv[2];
            double *scr = dalloc(linattn_scratch_size(&d));
            int old = openblas_get_num_threads();
            for (int r = 0; r < 2; r++) {
                out[r] = dalloc(nv);
                save[r] = dalloc(linattn_save_size(&d));
                dq[r] = dalloc(nq), dk[r] = dalloc(nq), dv[r] = dalloc(nv);
                threads_set(r + 1);
                linattn_forward(out[r], save[r], q, k, v, &d, scr);
                linattn_backward(dq[r], dk[r], dv[r], dout, out[r], save[r], q, k, v, &d, scr);
            }
            threads_set(old);
            size_t bad = bits_differ(out[0], out[1], nv) +
                         bits_differ(save[0], save[1], linattn_save_size(&d)) +
                         bits_differ(dq[0], dq[1], nq) + bits_differ(dk[0], dk[1], nq) +
                         bits_differ(dv[0], dv[1], nv);
            CHECK(bad == 0, "form %d normalize %d: %zu elements differ between 1 and 2 threads",
                  f, norm, bad);
            for (int r = 0; r < 2; r++)
                free(out[r]), free(save[r]), free(dq[r]), free(dk[r]), free(dv[r]);
            free(scr);
        }
    }
    free(q), free(k), free(v), free(dout);
}

/* Every rule of the decay/delta kernel in both forms with 2 threads: bitwise
 * equal to 1 thread (states, outputs and all five gradients), on a shape the
 * kernel does split. */
static void test_gdelta_threads(void) {
    const int B = 6, T = 150, H = 2, Dk = 12, Dv = 10;
    size_t nq = (size_t)B * T * H * Dk, nv = (size_t)B * T * H * Dv, ng = (size_t)B * T * H;
    double *q = dfilled(nq, 81, -1, 1), *k = dfilled(nq, 82, -0.5, 0.5);
    double *v = dfilled(nv, 83, -1, 1), *dout = dfilled(nv, 84, -1, 1);
    double *beta = dfilled(ng, 85, 0.1, 0.9), *g = dfilled(ng, 86, -0.3, -0.01);
    int old = openblas_get_num_threads();
    threads_set(2);
    int split = ml_par_threads(B, 1e12, 1);
    threads_set(old);
    CHECK(split == (ml_par_slots() >= 2 ? 2 : 1), "2 threads asked for, %d granted", split);
    for (int form = 0; form < 2; form++)
        for (int rule = 0; rule < 4; rule++) {
            gdelta_dims d;
            memset(&d, 0, sizeof d);
            d.B = B, d.T = T, d.H = H, d.Dk = Dk, d.Dv = Dv;
            d.q_stride = d.k_stride = H * Dk;
            d.v_stride = H * Dv;
            d.gate_stride = H;
            d.delta = rule & 1;
            d.decay = rule >> 1;
            d.chunk = 32;
            d.form = form ? GD_CHUNKWISE : GD_RECURRENT;
            size_t ns = gdelta_save_size(&d);
            double *out[2], *save[2], *dq[2], *dk[2], *dv[2], *db[2], *dg[2];
            double *scr = dalloc(gdelta_scratch_size(&d));
            for (int r = 0; r < 2; r++) {
                out[r] = dalloc(nv), save[r] = dalloc(ns);
                dq[r] = dalloc(nq), dk[r] = dalloc(nq), dv[r] = dalloc(nv);
                db[r] = dalloc(ng), dg[r] = dalloc(ng);
                threads_set(r + 1);
                gdelta_forward(out[r], save[r], q, k, v, beta, g, &d, scr);
                gdelta_backward(dq[r], dk[r], dv[r], db[r], dg[r], dout, save[r], q, k, v, beta,
                                g, &d, scr);
            }
            threads_set(old);
            size_t bad = bits_differ(out[0], out[1], nv) + bits_differ(save[0], save[1], ns) +
                         bits_differ(dq[0], dq[1], nq) + bits_differ(dk[0], dk[1], nq) +
                         bits_differ(dv[0], dv[1], nv) + bits_differ(db[0], db[1], ng) +
                         bits_differ(dg[0], dg[1], ng);
            CHECK(bad == 0, "%s delta %d decay %d: %zu elements differ between 1 and 2 threads",
                  form ? "chunkwise" : "recurrent", d.delta, d.decay, bad);
            for (int r = 0; r < 2; r++)
                free(out[r]), free(save[r]), free(dq[r]), free(dk[r]), free(dv[r]), free(db[r]),
                    free(dg[r]);
            free(scr);
        }
    free(q), free(k), free(v), free(dout), free(beta), free(g);
}

/* ---- the linear layer -------------------------------------------------------------------- */

/* linear_forward/backward with 1 and 2 threads against the sums written out
 * here, for a tall (row-split) and a wide (column-split) shape. */
static void test_linear_threads(void) {
    static const int shapes[][3] = {{3001, 70, 50}, {40, 65, 3000}};
    for (int s = 0; s < 2; s++) {
        int N = shapes[s][0], IC = shapes[s][1], OC = shapes[s][2];
        size_t nx = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
        double *x = dfilled(nx, 61, -1, 1), *w = dfilled(nw, 62, -1, 1);
        double *b = dfilled((size_t)OC, 63, -1, 1), *dout = dfilled(no, 64, -1, 1);
        double *want = dalloc(no), *wdx = dalloc(nx), *wdw = dalloc(nw);
        for (int i = 0; i < N; i++)
            for (int o = 0; o < OC; o++) {
                double acc = b[o];
                for (int c = 0; c < IC; c++) acc += x[(size_t)i * IC + c] * w[(size_t)o * IC + c];
                want[(size_t)i * OC + o] = acc;
            }
        for (int i = 0; i < N; i++)
            for (int o = 0; o < OC; o++) {
                double d = dout[(size_t)i * OC + o];
                for (int c = 0; c < IC; c++) {
                    wdx[(size_t)i * IC + c] += d * w[(size_t)o * IC + c];
                    wdw[(size_t)o * IC + c] += d * x[(size_t)i * IC + c];
                }
            }
        int old = openblas_get_num_threads();
        for (int t = 1; t <= 2; t++) {
            double *out = dfilled(no, 65, 1e30, 2e30); /* stale contents must not leak */
            double *dx = dalloc(nx), *dw = dalloc(nw), *db = dalloc((size_t)OC);
            threads_set(t);
            linear_forward(out, x, w, b, N, IC, OC);
            linear_backward(dx, dw, db, dout, x, w, N, IC, OC);
            threads_set(old);
            double e0 = max_rel_diff(out, want, no), e1 = max_rel_diff(dx, wdx, nx);
            double e2 = max_rel_diff(dw, wdw, nw);
            CHECK(e0 <= TOL_ORDER && e1 <= TOL_ORDER && e2 <= TOL_ORDER,
                  "%dx%dx%d, %d thread(s): out %.3g dx %.3g dw %.3g", N, IC, OC, t, e0, e1, e2);
            free(out), free(dx), free(dw), free(db);
        }
        free(x), free(w), free(b), free(dout), free(want), free(wdx), free(wdw);
    }
}

/* matmul.c's product clock: still while off; on, it adds the time inside a
 * product, no more than the wall time around it, also when the product is
 * split over 2 threads (each adds half of its time). */
static void test_product_clock(void) {
    const int M = 1024, N = 256, K = 256;
    double *a = dfilled((size_t)M * K, 81, -1, 1), *b = dfilled((size_t)K * N, 82, -1, 1);
    double *c = dalloc((size_t)M * N);
    int old = openblas_get_num_threads();
    double s0 = ml_products_seconds();
    ml_gemm(0, 0, M, N, K, 1, a, K, b, N, 0, c, N);
    CHECK(ml_products_seconds() == s0, "the clock moved while off");
    ml_products_clock(1);
    for (int t = 1; t <= 2; t++) {
        threads_set(t);
        ml_gemm(0, 0, M, N, K, 1, a, K, b, N, 0, c, N); /* the threads started */
        double w0 = ml_clock_s(), p0 = ml_products_seconds();
        for (int r = 0; r < 4; r++) ml_gemm(0, 0, M, N, K, 1, a, K, b, N, 0, c, N);
        double wall = ml_clock_s() - w0, in = ml_products_seconds() - p0;
        CHECK(in > 0 && in <= wall * 1.0001 + 1e-6,
              "%d thread(s): %.6f s inside products, %.6f s of wall time around them", t, in,
              wall);
    }
    threads_set(old);
    ml_products_clock(0);
    s0 = ml_products_seconds();
    ml_gemv(0, M, K, 1, a, K, b, 1, 0, c, 1);
    CHECK(ml_products_seconds() == s0, "the clock moved after being turned off");
    free(a), free(b), free(c);
}

/* ---- norms, optimiser, embedding ------------------------------------------------------------ */

/* LayerNorm and RMSNorm, forward and backward, 2 threads against 1: rows
 * bitwise, dw/db (split sums) to rounding. */
static void test_norm_threads(void) {
    const int N = 2001, C = 70;
    size_t n = (size_t)N * C;
    double *x = dfilled(n, 71, -3, 5), *w = dfilled((size_t)C, 72, 0.5, 1.5);
    double *b = dfilled((size_t)C, 73, -1, 1), *dout = dfilled(n, 74, -1, 1);
    int old = openblas_get_num_threads();
    double *out[2], *mean[2], *rstd[2], *dx[2], *dw[2], *db[2];
    for (int rms = 0; rms < 2; rms++) {
        for (int r = 0; r < 2; r++) {
            out[r] = dalloc(n), mean[r] = dalloc((size_t)N), rstd[r] = dalloc((size_t)N);
            dx[r] = dfilled(n, 75, -1, 1), dw[r] = dfilled((size_t)C, 76, -1, 1);
            db[r] = dfilled((size_t)C, 77, -1, 1);
            threads_set(r + 1);
            if (rms) {
                rmsnorm_forward(out[r], rstd[r], x, w, N, C, 1e-5);
                rmsnorm_backward(dx[r], dw[r], dout, x, w, rstd[r], N, C);
            } else {
                layernorm_forward(out[r], mean[r], rstd[r], x, w, b, N, C, 1e-5);
                layernorm_backward(dx[r], dw[r], db[r], dout, x, w, mean[r], rstd[r], N, C);
            }
        }
        threads_set(old);
        const char *name = rms ? "rmsnorm" : "layernorm";
        CHECK(bits_differ(out[0], out[1], n) == 0 && bits_differ(rstd[0], rstd[1], (size_t)N) == 0 &&
                  bits_differ(mean[0], mean[1], (size_t)N) == 0 && bits_differ(dx[0], dx[1], n) == 0,
              "%s: rows differ between 1 and 2 threads", name);
        double ew = max_rel_diff(dw[1], dw[0], (size_t)C), eb = max_rel_diff(db[1], db[0], (size_t)C);
        CHECK(ew <= TOL_ORDER && eb <= TOL_ORDER, "%s: dw %.3g db %.3g between 1 and 2 threads",
              name, ew, eb);
        for (int r = 0; r < 2; r++)
            free(out[r]), free(mean[r]), free(rstd[r]), free(dx[r]), free(dw[r]), free(db[r]);
    }
    free(x), free(w), free(b), free(dout);
}

/* The blocked causal conv against its naive reference (channel counts that
 * are not a multiple of the block, K 1 to 5, T shorter than K; backward on a
 * prefill, the increments compared), and bitwise between 1 and 2 threads. */
static void test_conv1d_fast(void) {
    static const int shapes[][4] = {{2, 9, 3, 4},   {3, 40, 37, 4}, {2, 3, 16, 5},
                                    {64, 20, 64, 4}, {5, 17, 70, 1}, {4, 2, 33, 3},
                                    {2, 30, 530, 4}, {3, 70, 600, 64},
                                    {16, 128, 70, 4}, {9, 200, 100, 3}};
    int old = openblas_get_num_threads();
    /* 530 channels: 33 whole blocks, more than one group side by side; 600
     * with 64 taps: groups of 4 blocks. The last two shapes are large enough
     * to be split (5 and 7 channel blocks, the last one partial) */
    threads_set(2);
    int split[2] = {conv1d_causal_threads(16, 128, 70, 4), conv1d_causal_threads(9, 200, 100, 3)};
    threads_set(old);
    int want = ml_par_slots() >= 2 ? 2 : 1;
    CHECK(split[0] == want && split[1] == want, "conv: 2 threads asked for, %d and %d granted",
          split[0], split[1]);
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int B = shapes[k][0], T = shapes[k][1], C = shapes[k][2], K = shapes[k][3];
        size_t n = (size_t)B * T * C, nw = (size_t)C * K;
        double *x = dfilled(n, 201 + k, -1, 1), *w = dfilled(nw, 202 + k, -1, 1);
        double *bias = dfilled((size_t)C, 203 + k, -1, 1), *dout = dfilled(n, 204 + k, -1, 1);
        double *out[3], *dx[3], *dw[3], *db[3];
        for (int r = 0; r < 3; r++) { /* r 0: reference; 1, 2: fast on r threads */
            out[r] = dalloc(n);
            dx[r] = dfilled(n, 205, -1, 1), dw[r] = dfilled(nw, 206, -1, 1);
            db[r] = dfilled((size_t)C, 207, -1, 1);
            if (r == 0) {
                conv1d_causal_forward_ref(out[r], x, w, bias, B, T, C, K);
                conv1d_causal_backward_ref(dx[r], dw[r], db[r], dout, x, w, B, T, C, K);
                continue;
            }
            threads_set(r);
            conv1d_causal_forward(out[r], x, w, bias, B, T, C, K);
            conv1d_causal_backward(dx[r], dw[r], db[r], dout, x, w, B, T, C, K);
        }
        threads_set(old);
        double eo = max_rel_diff(out[1], out[0], n), ex = max_rel_diff(dx[1], dx[0], n);
        double ew = max_rel_diff(dw[1], dw[0], nw), eb = max_rel_diff(db[1], db[0], (size_t)C);
        CHECK(eo <= 1e-14 && ex <= 1e-14 && ew <= 1e-12 && eb <= 1e-12,
              "conv B%d T%d C%d K%d: fast vs ref out %.3g dx %.3g dw %.3g db %.3g", B, T, C, K,
              eo, ex, ew, eb);
        CHECK(bits_differ(out[1], out[2], n) == 0 && bits_differ(dx[1], dx[2], n) == 0 &&
                  bits_differ(dw[1], dw[2], nw) == 0 && bits_differ(db[1], db[2], (size_t)C) == 0,
              "conv B%d T%d C%d K%d: 1 and 2 threads differ", B, T, C, K);
        for (int r = 0; r < 3; r++) free(out[r]), free(dx[r]), free(dw[r]), free(db[r]);
        free(x), free(w), free(bias), free(dout);
    }
}

/* AdamW bitwise and the gradient norm to rounding, 2 threads against 1 and
 * against the sum written out here. */
static void test_optimiser_threads(void) {
    const size_t n = 300007;
    double *g = dfilled(n, 81, -1, 1);
    double *p[2], *m[2], *v[2];
    int old = openblas_get_num_threads();
    double norm[2];
    for (int r = 0; r < 2; r++) {
        p[r] = dfilled(n, 82, -1, 1), m[r] = dfilled(n, 83, -1, 1), v[r] = dfilled(n, 84, 0, 1);
        threads_set(r + 1);
        adamw_step(p[r], g, m[r], v[r], n, 1e-3, 0.9, 0.999, 1e-8, 0.1, 3);
        norm[r] = grad_norm(g, n);
    }
    threads_set(old);
    CHECK(bits_differ(p[0], p[1], n) == 0 && bits_differ(m[0], m[1], n) == 0 &&
              bits_differ(v[0], v[1], n) == 0,
          "adamw differs between 1 and 2 threads");
    double s = 0;
    for (size_t i = 0; i < n; i++) s += g[i] * g[i];
    CHECK(fabs(norm[0] - sqrt(s)) <= 1e-13 * sqrt(s) && fabs(norm[1] - sqrt(s)) <= 1e-13 * sqrt(s),
          "grad_norm %.17g / %.17g, want %.17g", norm[0], norm[1], sqrt(s));
    for (int r = 0; r < 2; r++) free(p[r]), free(m[r]), free(v[r]);
    free(g);
}

/* Embedding forward and backward (with repeated tokens) bitwise, 2 threads
 * against 1. */
static void test_embedding_threads(void) {
    const int B = 16, T = 300, C = 96, V = 50;
    size_t n = (size_t)B * T * C;
    int *tok = malloc(sizeof(int) * (size_t)B * T);
    for (int i = 0; i < B * T; i++) tok[i] = (i * 7 + i / 13) % V; /* repeats */
    double *wte = dfilled((size_t)V * C, 91, -1, 1), *wpe = dfilled((size_t)T * C, 92, -1, 1);
    double *dout = dfilled(n, 93, -1, 1);
    double *out[2], *dwte[2], *dwpe[2];
    int old = openblas_get_num_threads();
    for (int r = 0; r < 2; r++) {
        out[r] = dalloc(n), dwte[r] = dfilled((size_t)V * C, 94, -1, 1);
        dwpe[r] = dfilled((size_t)T * C, 95, -1, 1);
        threads_set(r + 1);
        embedding_forward(out[r], tok, wte, wpe, B, T, C);
        embedding_backward(dwte[r], dwpe[r], dout, tok, B, T, C);
    }
    threads_set(old);
    CHECK(bits_differ(out[0], out[1], n) == 0 &&
              bits_differ(dwte[0], dwte[1], (size_t)V * C) == 0 &&
              bits_differ(dwpe[0], dwpe[1], (size_t)T * C) == 0,
          "embedding differs between 1 and 2 threads");
    for (int r = 0; r < 2; r++) free(out[r]), free(dwte[r]), free(dwpe[r]);
    free(tok), free(wte), free(wpe), free(dout);
}

/* ---- whole model ------------------------------------------------------------------------------ */

/* The default config with mixer, d_model 64, conv 4 and an MLP of ratio 2. */
static int perf_cfg_with(run_config *cfg, const char *mixer, const char *const *extra) {
    ml_error e;
    char a[64];
    snprintf(a, sizeof a, "model.mixer=%s", mixer);
    const char *const sets[] = {a, "model.d_model=64", "model.conv=4", "model.mlp=true",
                                "model.mlp_ratio=2", NULL};
    if (config_defaults(cfg, &e)) return -1;
    for (int i = 0; sets[i]; i++) {
        if (spec_set(cfg, sets[i], &e)) {
            CHECK(0, "%s: %s", sets[i], e.msg);
            return -1;
        }
    }
    for (int i = 0; extra && extra[i]; i++) {
        if (spec_set(cfg, extra[i], &e)) {
            CHECK(0, "%s: %s", extra[i], e.msg);
            return -1;
        }
    }
    if (spec_validate(cfg, &e)) {
        CHECK(0, "%s", e.msg);
        return -1;
    }
    return 0;
}

static int perf_cfg(run_config *cfg, const char *mixer) { return perf_cfg_with(cfg, mixer, NULL); }

/* Variants whose per-sequence loops take other paths than the defaults:
 * Memory Caching's aggregations, pools, segment kinds and inits (a segment
 * that does not divide T included), the slot bottleneck's variants (every
 * model here gets a context boundary at T/4, which only the context variant
 * reads). */
static const char *const thread_variants[][7] = {
    {"memcache", "model.segment=16", "model.segments=log", "model.aggregate=ssc", "model.pool=k",
     NULL},
    {"memcache", "model.segment=24", "model.seg_init=fresh", "model.aggregate=soup", NULL},
    {"memcache", "model.segment=20", "model.aggregate=residual", "model.rule=gated_delta",
     "model.normalize=false", "model.cache_grad=false"},
    {"slots", "model.chunk=24", "model.gate=gru", NULL},
    {"slots", "model.variant=context", "model.chunk=32", "model.slot_mlp_ratio=0", NULL},
    {NULL},
};

/* Every mixer in a 2-layer model at sizes past the thresholds, and the
 * variants above: loss and every gradient with 2 threads against 1 (the
 * split reductions allow rounding). */
static void test_model_threads(void) {
    const int B = 16, T = 128, V = 300;
    int *in = malloc(sizeof(int) * B * T), *tg = malloc(sizeof(int) * B * T);
    double *u = dfilled((size_t)B * T * 2, 101, 0, 1);
    for (int i = 0; i < B * T; i++) {
        in[i] = (int)(u[i] * V);
        tg[i] = u[B * T + i] < 0.3 ? (i * 31) % V : -1;
    }
    int nmix = 0;
    while (ml_mixers[nmix]) nmix++;
    for (int k = 0; k < nmix || thread_variants[k - nmix][0]; k++) {
        const char *name = k < nmix ? ml_mixers[k]->name : thread_variants[k - nmix][0];
        run_config cfg;
        if (perf_cfg_with(&cfg, name, k < nmix ? NULL : &thread_variants[k - nmix][1])) break;
        ml_model m;
        ml_error e;
        if (model_build(&m, &cfg.model, V, T, B, &e)) {
            CHECK(0, "model_build: %s", e.msg);
            break;
        }
        model_init_weights(&m, 5);
        m.context_len = T / 4;
        double loss[2], *g[2];
        int old = openblas_get_num_threads();
        for (int r = 0; r < 2; r++) {
            threads_set(r + 1);
            loss[r] = model_forward(&m, in, tg, B, T, NULL);
            model_zero_grad(&m);
            model_backward(&m);
            g[r] = dcopy(m.g, m.n_params);
        }
        threads_set(old);
        double eg = max_rel_diff(g[1], g[0], m.n_params);
        CHECK(fabs(loss[1] - loss[0]) <= TOL_ORDER * fabs(loss[0]) && eg <= 1e-10,
              "%s: loss %.17g vs %.17g, gradients differ by %.3g", name, loss[1], loss[0], eg);
        free(g[0]), free(g[1]);
        model_free(&m);
    }
    free(in), free(tg), free(u);
}

/* The blocked head with 2 threads against 1: the same bits in the loss, dy
 * and every partial of dW (4 groups, 3 blocks of the last one short). */
static void test_lm_head_threads(void) {
    const int S = 1000, V = 3001, C = 48, R = 80;
    double *y = dfilled((size_t)S * C, 7, -1, 1), *W = dfilled((size_t)V * C, 8, -1, 1);
    int *tg = malloc(sizeof(int) * S);
    for (int i = 0; i < S; i++) tg[i] = i % 5 == 3 ? -1 : (i * 37) % V;
    const int G = lm_head_groups(S, R);
    CHECK(G == 4, "groups: %d (4 expected)", G);
    double *dy[2], *parts[2], loss[2];
    double *blk = malloc(sizeof(double) * (size_t)LMH_MAX_GROUPS * R * V);
    int old = openblas_get_num_threads(), count = 0;
    for (int r = 0; r < 2; r++) {
        threads_set(r + 1);
        dy[r] = malloc(sizeof(double) * (size_t)S * C);
        parts[r] = malloc(sizeof(double) * (size_t)G * V * C);
        /* NaN everywhere: nothing may be read before it is written */
        memset(parts[r], 0xff, sizeof(double) * (size_t)G * V * C);
        memset(dy[r], 0xff, sizeof(double) * (size_t)S * C);
        loss[r] = lm_head_loss_grad(dy[r], parts[r], blk, y, W, tg, S, V, C, R, &count);
    }
    threads_set(old);
    CHECK(count == S - S / 5, "kept rows: %d", count);
    CHECK(loss[0] == loss[1] && !memcmp(dy[0], dy[1], sizeof(double) * (size_t)S * C) &&
              !memcmp(parts[0], parts[1], sizeof(double) * (size_t)G * V * C),
          "2 threads differ from 1: loss %.17g vs %.17g", loss[1], loss[0]);
    /* and both equal the unfused head: logits, cross-entropy, its gradient,
     * the linear layer's backward */
    double *lg = malloc(sizeof(double) * (size_t)S * V);
    double *rdy = calloc((size_t)S * C, sizeof(double));
    double *rdw = calloc((size_t)V * C, sizeof(double)), *sdw = calloc((size_t)V * C, sizeof(double));
    linear_forward(lg, y, W, NULL, S, C, V);
    double rl = crossentropy_forward(lg, lg, tg, S, V, NULL);
    crossentropy_grad_inplace(lg, tg, S, V, 1.0 / count);
    linear_backward(rdy, rdw, NULL, lg, y, W, S, C, V);
    lm_head_add_parts(sdw, parts[0], G, V, C);
    double ey = max_rel_diff(dy[0], rdy, (size_t)S * C), ew = max_rel_diff(sdw, rdw, (size_t)V * C);
    CHECK(fabs(loss[0] - rl) <= 1e-13 * rl && ey < 1e-12 && ew < 1e-12,
          "against the unfused head: loss %.17g vs %.17g, dy %.3g, dW %.3g apart", loss[0], rl,
          ey, ew);
    free(lg), free(rdy), free(rdw), free(sdw);
    for (int r = 0; r < 2; r++) free(dy[r]), free(parts[r]);
    free(y), free(W), free(tg), free(blk);
}

/* Minor page faults of this process so far. */
static long minor_faults(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

/* After two warm-up steps, two more training steps (forward, backward,
 * clipping, AdamW) fault in no new page: nothing is allocated per step (see
 * the two-thread allowance below). */
static void test_step_allocates_nothing(void) {
    const int B = 8, T = 128, V = 300;
    int *in = malloc(sizeof(int) * B * T), *tg = malloc(sizeof(int) * B * T);
    for (int i = 0; i < B * T; i++) in[i] = (i * 17) % V, tg[i] = i % 7 == 0 ? (i * 5) % V : -1;
    const char *mixers[] = {"softmax", "linear"};
    int old = openblas_get_num_threads();
    for (int k = 0; k < 2; k++) {
        for (int th = 1; th <= 2; th++) {
            run_config cfg;
            if (perf_cfg(&cfg, mixers[k])) break;
            ml_model m;
            ml_error e;
            if (model_build(&m, &cfg.model, V, T, B, &e)) {
                CHECK(0, "model_build: %s", e.msg);
                break;
            }
            model_init_weights(&m, 5);
            m.head_block_rows = 16; /* the blocked head: 10 blocks of the 147 rows */
            threads_set(th);
            long f0 = 0;
            for (int s = 0; s < 4; s++) {
                if (s == 2) f0 = minor_faults();
                model_forward_train(&m, in, tg, B, T);
                model_zero_grad(&m);
                model_backward(&m);
                grad_clip(m.g, m.n_params, 1.0);
                adamw_step(m.w, m.g, m.m, m.v, m.n_params, 1e-3, 0.9, 0.999, 1e-8, 0.1, s + 1);
            }
            long faults = minor_faults() - f0;
            threads_set(old);
            /* one thread: not a single new page. Two: OpenBLAS hands the
             * concurrent callers its internal buffer slots in whatever order
             * they arrive, so a slot's first pages may be touched late; a
             * buffer of memlab's own at these sizes would be hundreds of pages */
            long allowed = th == 1 ? 0 : 64;
            CHECK(faults <= allowed, "%s, %d thread(s): %ld page faults in 2 warm steps (at most %ld)",
                  mixers[k], th, faults, allowed);
            test_note("%s, %d thread(s): %ld page faults in 2 warm steps", mixers[k], th, faults);
            model_free(&m);
        }
    }
    free(in), free(tg);
}

/* The analytic FLOP formulas of memlab bench (harness/bench.c) against the
 * count of the matrix products a forward and backward actually ran
 * (models/matmul.c), for the mixers that have a formula, in every form and
 * with and without an MLP, the full head and a window: a formula that drifts
 * from the kernels (or a kernel that stops doing what its formula says) fails.
 * Softmax's fast kernel also computes the masked corners of its row blocks
 * (attention_band_pairs counts them; the formula counts visible pairs only),
 * so do the linear forms (the chunkwise one the upper halves of its diagonal
 * sub-blocks, linattn_band_pairs; the parallel one the whole T x T), and the
 * recurrent linear form runs loops the counter does not see. */
static void test_flop_formulas(void) {
    const int B = 3, V = 97;
    static const char *const cases[][6] = {
        {"model.mixer=softmax", "task.seq_len=64", NULL},
        {"model.mixer=softmax", "task.seq_len=128", "model.mlp=false", NULL},
        {"model.mixer=softmax", "task.seq_len=64", "model.window=5", NULL},
        {"model.mixer=softmax", "task.seq_len=256", "model.window=40", "model.mlp=false", NULL},
        {"model.mixer=softmax", "task.seq_len=200", "model.d_model=256", "model.heads=1", NULL},
        {"model.mixer=softmax", "task.seq_len=64", "model.heads=4", "train.full_head=true", NULL},
        {"model.mixer=linear", "task.seq_len=64", NULL},
        {"model.mixer=linear", "task.seq_len=50", "model.chunk=16", NULL},
        {"model.mixer=linear", "task.seq_len=100", "model.chunk=40", "model.heads=2", NULL},
        {"model.mixer=linear", "task.seq_len=64", "model.form=parallel", "model.heads=2", NULL},
        {"model.mixer=linear", "task.seq_len=64", "model.form=recurrent", NULL},
        {"model.mixer=linear", "task.seq_len=64", "model.normalize=false", NULL},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        run_config cfg;
        ml_error e;
        if (config_defaults(&cfg, &e)) {
            CHECK(0, "%s", e.msg);
            return;
        }
        int bad = 0;
        const char *base[] = {"model.d_model=32", "model.conv=4", "model.mlp_ratio=2",
                              "task.num_kv_pairs=4"};
        for (size_t i = 0; i < 4 && !bad; i++) bad = spec_set(&cfg, base[i], &e) != 0;
        for (int i = 0; cases[k][i] && !bad; i++) bad = spec_set(&cfg, cases[k][i], &e) != 0;
        if (bad || spec_validate(&cfg, &e)) {
            CHECK(0, "case %zu: %s", k, e.msg);
            continue;
        }
        const ml_task *task = task_find(cfg.task);
        const void *tcfg = cfg.task_cfg.bytes;
        int T = task->seq_len(tcfg);
        int *in = malloc(sizeof(int) * B * T), *tg = malloc(sizeof(int) * B * T);
        for (int i = 0; i < B * T; i++) {
            in[i] = (i * 37 + 11) % V;
            tg[i] = i % 5 == 0 ? (i * 13) % V : -1;
        }
        ml_model m;
        if (model_build(&m, &cfg.model, V, T, B, &e)) {
            CHECK(0, "case %zu: model_build: %s", k, e.msg);
            free(in), free(tg);
            continue;
        }
        m.full_head = cfg.train.full_head;
        model_init_weights(&m, 3);
        ml_flops_reset();
        model_forward(&m, in, tg, B, T, NULL);
        model_zero_grad(&m);
        model_backward(&m);
        double counted = ml_flops_read();
        int S = 0, *rows = malloc(sizeof(int) * B * T);
        for (int i = 0; i < B * T; i++)
            if (tg[i] >= 0) rows[S++] = i;
        double formula = bench_step_flops(&cfg, B, T, V, tg);
        /* what the formula leaves out on purpose: softmax's and the linear
         * forms' masked score entries (computed, not useful), the recurrent
         * form's loops (useful, not BLAS) */
        double C = cfg.model.d_model, layers = cfg.model.n_layers, expect = formula;
        char form[32] = "", win[32] = "0", heads[32] = "1";
        config_value(&cfg, "model.form", form, sizeof form);
        config_value(&cfg, "model.window", win, sizeof win);
        config_value(&cfg, "model.heads", heads, sizeof heads);
        if (!strcmp(cfg.model.mixer, "softmax")) {
            int w = atoi(win), H = atoi(heads);
            double vis = 0;
            for (int i = 0; i < T; i++) vis += w > 0 && w < i + 1 ? w : i + 1;
            double band = attention_band_pairs(T, (int)C / H, w);
            CHECK(band >= vis, "case %zu: band %.0f < visible %.0f", k, band, vis);
            if (m.full_head) {
                expect += 12.0 * C * B * (band - vis) * layers;
            } else {
                /* the last layer attends from the head rows only */
                double vis_rows = 0;
                for (int s = 0; s < S; s++) {
                    int i = rows[s] % T;
                    vis_rows += w > 0 && w < i + 1 ? w : i + 1;
                }
                double band_rows = attention_rows_band_pairs(rows, S, T, w);
                CHECK(band_rows >= vis_rows, "case %zu: rows band %.0f < visible %.0f", k,
                      band_rows, vis_rows);
                expect += 12.0 * C * (B * (band - vis) * (layers - 1) + (band_rows - vis_rows));
            }
        }
        if (strstr(form, "recurrent")) expect -= 12.0 * B * T * C * C * layers;
        if (!strcmp(cfg.model.mixer, "linear") && !strstr(form, "recurrent")) {
            /* 7 products of 2 D per computed pair, for every head of every layer */
            char chunk[32] = "64";
            config_value(&cfg, "model.chunk", chunk, sizeof chunk);
            int H = atoi(heads), par = strstr(form, "parallel") != NULL;
            int l = !par && atoi(chunk) < T ? atoi(chunk) : T;
            double vis = 0;
            for (int t0 = 0; t0 < T; t0 += l) {
                double n = T - t0 < l ? T - t0 : l;
                vis += n * (n + 1) / 2;
            }
            double band = par ? (double)T * T : linattn_band_pairs(T, l);
            CHECK(band >= vis, "case %zu: band %.0f < visible %.0f", k, band, vis);
            expect += 14.0 * C / H * B * H * (band - vis) * layers;
        }
        CHECK(formula > 0 && fabs(counted - expect) <= 1e-12 * expect,
              "case %zu (%s %s %s): formula %.0f, expected count %.0f, counted %.0f (%+.4f%%)",
              k, cases[k][0], cases[k][1], cases[k][2] ? cases[k][2] : "", formula, expect,
              counted, 100 * (counted - expect) / expect);
        model_free(&m);
        free(in), free(tg), free(rows);
    }
}

/* ---- the bfloat16 product --------------------------------------------------------- */

static float bf_rand(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xFFFF) / 32768.0f - 1.0f;
}

/* gemm_bf16 against the exact sum of the bfloat16-rounded products (double),
 * every transpose, strides past the width, beta 0 (C holding NaN, which must
 * not be read) and not, alpha 1 with beta 0 and 1 (the AMX kernel's sums
 * straight into C) and alpha 0.75 with beta 0 and -0.5 (its epilogue),
 * shapes at and around the tile and block edges; the
 * columns past N untouched; one product cut into row and column blocks
 * (as matmul.c's threads cut it) bitwise equal to the whole; the rounding. */
static void gemm_bf16_kernel_matches_ref(const char *kernel) {
    static const int shapes[][3] = {{1, 1, 1},    {7, 33, 5},     {6, 32, 2},    {13, 70, 1029},
                                    {40, 300, 600}, {3, 5, 64},   {100, 257, 513}, {12, 64, 31},
                                    /* row blocks, column blocks, three k blocks */
                                    {137, 545, 1030}, {9, 47, 2},
                                    /* whole AMX blocks and tiles, and one past */
                                    {64, 64, 64}, {33, 65, 33}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int ab = 0; ab < 4; ab++) {
                    static const float alphas[4] = {0.75f, 0.75f, 1.0f, 1.0f};
                    static const float betas[4] = {-0.5f, 0.0f, 0.0f, 1.0f};
                    const int bz = betas[ab] == 0.0f;
                    int M = shapes[sh][0], N = shapes[sh][1], K = shapes[sh][2];
                    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb;
                    size_t nc = (size_t)M * ldc;
                    unsigned seed = (unsigned)(sh * 7 + ta * 3 + tb + 1);
                    float *A = malloc(na * sizeof(float)), *B = malloc(nb * sizeof(float));
                    float *C = malloc(nc * sizeof(float)), *C0 = malloc(nc * sizeof(float));
                    for (size_t i = 0; i < na; i++) A[i] = bf_rand(&seed);
                    for (size_t i = 0; i < nb; i++) B[i] = bf_rand(&seed);
                    for (size_t i = 0; i < nc; i++) C0[i] = C[i] = bz ? NAN : bf_rand(&seed);
                    for (int i = 0; i < M; i++) /* the padding columns hold numbers */
                        for (int j = N; j < ldc; j++) C0[(size_t)i * ldc + j] = C[(size_t)i * ldc + j] = 7.0f;
                    float alpha = alphas[ab], beta = betas[ab];
                    gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                    double worst = 0;
                    int pad = 0;
                    for (int i = 0; i < M; i++) {
                        for (int j = 0; j < N; j++) {
                            double acc = 0, mag = 0;
                            for (int k = 0; k < K; k++) {
                                double a = bf16_round(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
                                double b = bf16_round(tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                                acc += a * b, mag += fabs(a * b);
                            }
                            double c0 = bz ? 0.0 : beta * (double)C0[(size_t)i * ldc + j];
                            double err = fabs(C[(size_t)i * ldc + j] - (alpha * acc + c0)) /
                                         (alpha * mag + fabs(c0) + DBL_MIN);
                            if (!(err <= worst) && !isnan(worst)) worst = err; /* NaN sticks */
                        }
                        for (int j = N; j < ldc; j++) pad += C[(size_t)i * ldc + j] != 7.0f;
                    }
                    /* float sums of K terms: a few units of 2^-24 per term */
                    CHECK(worst <= (K + 2) * 6e-8,
                          "%s M%d N%d K%d ta%d tb%d alpha %g beta %g: error %.3g", kernel, M, N,
                          K, ta, tb, alpha, beta, worst);
                    CHECK(pad == 0, "%s M%d N%d K%d: %d padding elements written", kernel, M, N, K,
                          pad);
                    /* rows [0,16) and [16,M), then columns [0,32) and [32,N) */
                    if (M > 16 && N > 32) {
                        float *R = malloc(nc * sizeof(float)), *Q = malloc(nc * sizeof(float));
                        memcpy(R, C0, nc * sizeof(float));
                        memcpy(Q, C0, nc * sizeof(float));
                        gemm_bf16(ta, tb, 16, N, K, alpha, A, lda, B, ldb, beta, R, ldc);
                        gemm_bf16(ta, tb, M - 16, N, K, alpha, ta ? A + 16 : A + (size_t)16 * lda,
                                  lda, B, ldb, beta, R + (size_t)16 * ldc, ldc);
                        gemm_bf16(ta, tb, M, 32, K, alpha, A, lda, B, ldb, beta, Q, ldc);
                        gemm_bf16(ta, tb, M, N - 32, K, alpha, A, lda,
                                  tb ? B + (size_t)32 * ldb : B + 32, ldb, beta, Q + 32, ldc);
                        CHECK(memcmp(R, C, nc * sizeof(float)) == 0 &&
                                  memcmp(Q, C, nc * sizeof(float)) == 0,
                              "%s M%d N%d K%d ta%d tb%d alpha %g beta %g: blocks differ from "
                              "the whole product",
                              kernel, M, N, K, ta, tb, alpha, beta);
                        free(R), free(Q);
                    }
                    free(A), free(B), free(C), free(C0);
                }
}

/* 1 when /proc/cpuinfo lists the flag (as a whole word). */
static int cpuinfo_flag(const char *flag) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[8192];
    int found = 0;
    size_t n = strlen(flag);
    while (f && !found && fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5)) continue;
        for (char *p = strstr(line, flag); p && !found; p = strstr(p + 1, flag))
            found = (p == line || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\n');
        break;
    }
    if (f) fclose(f);
    return found;
}

/* Both kernels (AVX-512 BF16, and AMX tiles where the CPU and the OS have
 * them) through the checks above; the rounding. */
static void test_gemm_bf16(void) {
    if (!gemm_bf16_available()) {
        /* a build for this CPU's AVX-512 (-march=native) must have the kernel;
         * builds for a generic target (the sanitizer build) do not */
#ifdef __AVX512F__
        __builtin_cpu_init();
        CHECK(!__builtin_cpu_supports("avx512bf16"),
              "the CPU has AVX-512 BF16 but this build has no bf16 kernel");
#endif
        return;
    }
    /* where Linux lists the tiles, memlab must get them */
    CHECK(gemm_bf16_amx_available() == (cpuinfo_flag("amx_bf16") && cpuinfo_flag("amx_tile")),
          "AMX: cpuinfo lists amx_bf16 %d amx_tile %d, gemm_bf16_amx_available %d",
          cpuinfo_flag("amx_bf16"), cpuinfo_flag("amx_tile"), gemm_bf16_amx_available());
    const int was = gemm_bf16_amx();
    CHECK(gemm_bf16_use_amx(0) == 0 && !gemm_bf16_amx(), "AVX-512 BF16 kernel not chosen");
    gemm_bf16_kernel_matches_ref("avx512-bf16");
    if (gemm_bf16_amx_available()) {
        CHECK(gemm_bf16_use_amx(1) == 1 && gemm_bf16_amx(), "AMX kernel not chosen");
        gemm_bf16_kernel_matches_ref("amx");
    }
    gemm_bf16_use_amx(was);
    CHECK(bf16_round(1.0f) == 1.0f && bf16_round(1.0f + 0x1p-8f) == 1.0f &&
              bf16_round(1.0f + 0x1p-7f + 0x1p-8f) == 1.0f + 0x1p-6f &&
              bf16_round(-3.0f - 0x1p-9f) == -3.0f && bf16_round(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f,
          "bf16_round: not round to nearest, ties to even");
}

const test_case tests_perf[] = {
    {"perf/fast_exp", test_fast_exp},
    {"perf/fast_erf", test_fast_erf},
    {"perf/crossentropy_fast_matches_ref", test_crossentropy_fast_matches_ref},
    {"perf/attention_threads", test_attention_threads},
    {"perf/linattn_threads", test_linattn_threads},
    {"perf/gdelta_threads", test_gdelta_threads},
    {"perf/linear_threads", test_linear_threads},
    {"perf/product_clock", test_product_clock},
    {"perf/norm_threads", test_norm_threads},
    {"perf/conv1d_fast_matches_ref", test_conv1d_fast},
    {"perf/gemm_bf16_matches_ref", test_gemm_bf16},
    {"perf/optimiser_threads", test_optimiser_threads},
    {"perf/embedding_threads", test_embedding_threads},
    {"perf/model_threads", test_model_threads},
    {"perf/lm_head_threads", test_lm_head_threads},
    {"perf/fp_mode_threads", test_fp_mode_threads},
    {"perf/par_zero_threads", test_par_zero},
    {"perf/par_slots_fixed", test_par_slots_fixed},
    {"perf/step_allocates_nothing", test_step_allocates_nothing},
    {"perf/flop_formulas", test_flop_formulas},
    {NULL, NULL},
};
