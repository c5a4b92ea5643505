/* lm_head.c: the LM head's loss and its gradient in one pass over blocks of
 * rows, for a training step, so that the [S,V] logits never exist at once.
 *
 * Dimensions: S rows through the head, C = d_model, V vocabulary, R rows per
 * block, G groups of rows. For rows y[S,C], head W[V,C] and targets t[S]
 * (t < 0: no loss):
 *   logits = y W^T;  loss = sum over kept rows of logsumexp(logits_s) - logits_s[t_s];
 *   d logits = scale (softmax(logits) - onehot(t)), zero on rows without a target;
 *   dy = d logits W;  dW = d logits^T y.
 * Unfused, the head writes S x V logits, reads and rewrites them twice for the
 * softmax and its gradient and reads them twice more for the two products: at
 * S 4096, V 8192 that is 128 MiB per pass, and at L 1024 2 GiB held across the
 * whole step. Here a block of R rows (about 8 MiB of logits, so it stays in
 * the last-level cache) is formed, turned into probabilities and then into
 * d logits in place (cross_entropy.c, the same row functions as unfused), and
 * consumed by the two products before the next block is formed.
 *
 * dW sums over every row. The rows are cut into G contiguous groups (G from S
 * and R alone, at most LMH_MAX_GROUPS); each group sums its blocks into its own
 * partial dW, the threads take whole groups, and the caller adds the partials
 * in group order (lm_head_add_parts): the numbers do not depend on the thread
 * count. */
#include <stddef.h>

#include "kernels.h"
#include "parallel.h"

/* Logits per block: 8 MiB of floats. */
#define LMH_BLOCK_REALS (1 << 21)
/* A group is at least this many blocks before a second group is made. */
#define LMH_BLOCKS_PER_GROUP 4
/* Fewest multiply-adds worth a second thread. */
#define LMH_MIN_WORK (1 << 22)

int lm_head_block_rows(int V, int want, int max_rows) {
    int R = V > 0 ? LMH_BLOCK_REALS / V : max_rows;
    if (R < 16) R = 16;
    if (want > 0 && want < R) R = want;
    if (R > max_rows) R = max_rows;
    return R > 0 ? R : 1;
}

int lm_head_groups(int S, int R) {
    long per = (long)R * LMH_BLOCKS_PER_GROUP;
    long G = (S + per - 1) / per;
    if (G > LMH_MAX_GROUPS) G = LMH_MAX_GROUPS;
    if (G > S) G = S;
    return G > 0 ? (int)G : 1;
}

typedef struct lmh_call {
    real *dy, *parts, *blk;
    const real *y, *W;
    const int *tgt;
    int S, V, C, R, G;
    real scale;
    double loss[LMH_MAX_GROUPS];
} lmh_call;

/* Groups [g0, g1): group g owns rows [S g / G, S (g + 1) / G), block buffer
 * g and partial g. */
static void lmh_groups(void *ctx, int g0, int g1, int slot) {
    lmh_call *c = ctx;
    const int V = c->V, C = c->C, R = c->R;
    (void)slot;
    for (int g = g0; g < g1; g++) {
        int r0 = (int)((long)c->S * g / c->G), r1 = (int)((long)c->S * (g + 1) / c->G);
        real *blk = c->blk + (size_t)g * R * V, *part = c->parts + (size_t)g * V * C;
        double loss = 0;
        for (int i = r0; i < r1; i += R) {
            int n = r1 - i < R ? r1 - i : R;
            const real *yi = c->y + (size_t)i * C;
            ml_gemm(0, 1, n, V, C, 1, yi, C, c->W, C, 0, blk, V);
            loss += crossentropy_forward(blk, blk, c->tgt + i, n, V, NULL);
            crossentropy_grad_inplace(blk, c->tgt + i, n, V, c->scale);
            ml_gemm(0, 0, n, C, V, 1, blk, V, c->W, C, 0, c->dy + (size_t)i * C, C);
            ml_gemm(1, 0, V, C, n, 1, blk, V, yi, C, i == r0 ? 0 : 1, part, C);
        }
        c->loss[g] = loss;
    }
}

double lm_head_loss_grad(real *dy, real *parts, real *blk, const real *y, const real *W,
                         const int *tgt, int S, int V, int C, int R, int *count) {
    int kept = 0;
    for (int i = 0; i < S; i++) kept += tgt[i] >= 0;
    if (count) *count = kept;
    if (S <= 0) return 0;
    lmh_call c = {.dy = dy, .parts = parts, .blk = blk, .y = y, .W = W, .tgt = tgt,
                  .S = S, .V = V, .C = C, .R = R, .G = lm_head_groups(S, R),
                  .scale = kept > 0 ? (real)(1.0 / kept) : 0};
    int nt = ml_par_threads(c.G, 3.0 * S * (double)V * C, LMH_MIN_WORK);
    ml_par_ranges(c.G, nt, lmh_groups, &c);
    double loss = 0;
    for (int g = 0; g < c.G; g++) loss += c.loss[g];
    return loss;
}

void lm_head_add_parts(real *dW, const real *parts, int G, int V, int C) {
    const size_t n = (size_t)V * C;
    for (int g = 0; g < G; g++) {
        const real *p = parts + (size_t)g * n;
#pragma omp simd
        for (size_t i = 0; i < n; i++) dW[i] += p[i];
    }
}
