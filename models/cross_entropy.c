/* cross_entropy.c: softmax plus masked negative log-likelihood, forward and
 * backward.
 *
 * Dimensions: S supervised rows, V vocabulary.
 * Rows with a negative target are unsupervised: they get probabilities but no
 * loss and no gradient. The sum (not the mean) is returned so that the caller
 * picks the normalisation and passes it back as the backward's scale; the
 * model divides by the count of kept rows.
 *
 * Speed: the LM head's softmax runs over S x 8192 logits every step, so the
 * row loops are written to vectorise (OpenMP simd reductions, which permit the
 * reordering of the max and of the double sum that strict IEEE semantics
 * forbid to the compiler) and the float build uses its own vectorisable exp
 * (fastexp.h; the double build keeps libm's exp so that gradient
 * checks stay exact). Rows are shared among the threads of memlab's thread
 * setting (parallel.h), each thread summing its
 * own contiguous block of rows, and the blocks added in order: the loss is the
 * same from run to run at a given thread count. crossentropy_forward_ref keeps
 * the plain loops as the oracle. */
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fastexp.h"
#include "kernels.h"
#include "parallel.h"

/* Exported for tests/test_perf.c (no header declares it: it is not part
 * of the kernel library's interface). */
double crossentropy_forward_ref(real *probs, const real *logits, const int *targets, int S,
                                int V, int *count);

/* Fewest logits per thread worth a parallel region. */
#define CE_MIN_WORK (1 << 16)

/* Threads for S rows of V logits (parallel.h): 1 when the work is too
 * small to pay for a parallel region. */
static int ce_threads(int S, int V) {
    return ml_par_threads(S, (double)S * V, CE_MIN_WORK);
}

/* One row: p = softmax(l); returns -log p[tgt] (0 when tgt < 0). p may alias l. */
static double ce_row(real *p, const real *l, int tgt, int V) {
    real mx = l[0];
#pragma omp simd reduction(max : mx)
    for (int v = 0; v < V; v++) mx = l[v] > mx ? l[v] : mx;
    /* read before p (possibly the same memory) is written */
    double zt = tgt >= 0 ? (double)l[tgt] - (double)mx : 0.0;
#pragma omp simd
    for (int v = 0; v < V; v++) p[v] = ML_EXP(l[v] - mx);
    /* a second pass for the sum (the row is in L1): a float -> double
     * reduction fused into the exp loop would not vectorise */
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int v = 0; v < V; v++) sum += p[v];
    real inv = (real)(1.0 / sum);
#pragma omp simd
    for (int v = 0; v < V; v++) p[v] *= inv;
    return tgt >= 0 ? log(sum) - zt : 0.0;
}

/* Rows [i0, i1): loss sum and kept count. */
static double ce_rows(real *probs, const real *logits, const int *targets, int i0, int i1,
                      int V, int *kept) {
    double loss = 0.0;
    int k = 0;
    for (int i = i0; i < i1; i++) {
        assert(targets[i] < V);
        loss += ce_row(probs + (size_t)i * V, logits + (size_t)i * V, targets[i], V);
        k += targets[i] >= 0;
    }
    *kept = k;
    return loss;
}

/* One call of the forward; thread t's block of rows sums into part[t]. */
typedef struct ce_call {
    real *probs;
    const real *logits;
    const int *targets;
    int V;
    double part[ML_PAR_MAX_SLOTS];
    int kept[ML_PAR_MAX_SLOTS];
} ce_call;

static void ce_range(void *ctx, int i0, int i1, int slot) {
    ce_call *c = ctx;
    c->part[slot] = ce_rows(c->probs, c->logits, c->targets, i0, i1, c->V, &c->kept[slot]);
}

/* probs[S,V] = softmax(logits) row by row, for every row (probs may alias
 * logits). Returns sum over kept rows of -log p[target] = logsumexp(row) -
 * row[target], accumulated in double from the max-shifted logits, so it stays
 * finite when p[target] underflows. *count (if not NULL) gets the number of
 * kept rows. A NaN or Inf logit makes the loss NaN rather than being hidden. */
double crossentropy_forward(real *probs, const real *logits, const int *targets, int S,
                            int V, int *count) {
    assert(V > 0);
    ce_call c = {.probs = probs, .logits = logits, .targets = targets, .V = V};
    int nt = ce_threads(S, V);
    ml_par_ranges(S, nt, ce_range, &c);
    double loss = 0.0;
    int total = 0;
    for (int t = 0; t < nt; t++) {
        loss += c.part[t];
        total += c.kept[t];
    }
    if (count) *count = total;
    return loss;
}

/* The plain loops, one element at a time in libm's exp and a serial double
 * sum: the oracle of crossentropy_forward (same contract). */
double crossentropy_forward_ref(real *probs, const real *logits, const int *targets, int S,
                                int V, int *count) {
    double loss = 0.0;
    int kept = 0;
    for (int i = 0; i < S; i++) {
        const real *l = logits + (size_t)i * V;
        real *p = probs + (size_t)i * V;
        int tgt = targets[i];
        real mx = l[0];
        for (int v = 1; v < V; v++)
            if (l[v] > mx) mx = l[v];
        double zt = tgt >= 0 ? (double)l[tgt] - (double)mx : 0.0;
        double sum = 0.0;
        for (int v = 0; v < V; v++) {
            real e = REXP(l[v] - mx);
            p[v] = e;
            sum += e;
        }
        real inv = (real)(1.0 / sum);
        for (int v = 0; v < V; v++) p[v] *= inv;
        if (tgt >= 0) {
            loss += log(sum) - zt;
            kept++;
        }
    }
    if (count) *count = kept;
    return loss;
}

/* The backward's arguments, for its row ranges. */
typedef struct ce_back {
    real *dlogits;
    const real *probs;
    const int *targets;
    int V;
    real scale;
} ce_back;

static void ce_back_range(void *ctx, int i0, int i1, int slot) {
    const ce_back *c = ctx;
    const int V = c->V;
    const real scale = c->scale;
    (void)slot;
    for (int i = i0; i < i1; i++) {
        int tgt = c->targets[i];
        if (tgt < 0) continue;
        assert(tgt < V);
        const real *p = c->probs + (size_t)i * V;
        real *d = c->dlogits + (size_t)i * V;
        real dt = d[tgt];
#pragma omp simd
        for (int v = 0; v < V; v++) d[v] += scale * p[v];
        /* the target apart: p - 1 before scaling, exact near p = 1, where
         * scale*p - scale cancels */
        d[tgt] = dt + scale * (p[tgt] - 1);
    }
}

/* In place: probs[S,V] -> scale * (probs - onehot(target)), 0 on rows
 * without a target. */
typedef struct ce_grad {
    real *probs;
    const int *targets;
    int V;
    real scale;
} ce_grad;

static void ce_grad_range(void *ctx, int i0, int i1, int slot) {
    const ce_grad *c = ctx;
    const int V = c->V;
    const real scale = c->scale;
    (void)slot;
    for (int i = i0; i < i1; i++) {
        real *p = c->probs + (size_t)i * V;
        int tgt = c->targets[i];
        if (tgt < 0) {
            memset(p, 0, sizeof(real) * (size_t)V);
            continue;
        }
        assert(tgt < V);
#pragma omp simd
        for (int v = 0; v < V; v++) p[v] *= scale;
        p[tgt] -= scale;
    }
}

void crossentropy_grad_inplace(real *probs, const int *targets, int S, int V, real scale) {
    ce_grad c = {probs, targets, V, scale};
    ml_par_ranges(S, ce_threads(S, V), ce_grad_range, &c);
}

/* dlogits[S,V] += scale * (probs - onehot(target)) on rows with target >= 0;
 * other rows are left untouched. probs is the forward's output; scale is
 * usually 1/count for a mean loss. */
void crossentropy_backward(real *dlogits, const real *probs, const int *targets, int S,
                           int V, real scale) {
    ce_back c = {dlogits, probs, targets, V, scale};
    ml_par_ranges(S, ce_threads(S, V), ce_back_range, &c);
}
