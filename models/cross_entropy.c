/* cross_entropy.c: softmax plus masked negative log-likelihood, forward and
 * backward.
 *
 * Dimensions: S supervised rows, V vocabulary.
 * Rows with a negative target are unsupervised: they get probabilities but no
 * loss and no gradient. The sum (not the mean) is returned so that the caller
 * picks the normalisation and passes it back as the backward's scale; the
 * model divides by the count of kept rows. */
#include <assert.h>
#include <math.h>
#include <stddef.h>

#include "kernels.h"

/* probs[S,V] = softmax(logits) row by row, for every row (probs may alias
 * logits). Returns sum over kept rows of -log p[target] = logsumexp(row) -
 * row[target], accumulated in double from the max-shifted logits, so it stays
 * finite when p[target] underflows. *count (if not NULL) gets the number of
 * kept rows. A NaN or Inf logit makes the loss NaN rather than being hidden. */
double crossentropy_forward(real *probs, const real *logits, const int *targets, int S,
                            int V, int *count) {
    assert(V > 0);
    double loss = 0.0;
    int kept = 0;
    for (int i = 0; i < S; i++) {
        const real *l = logits + (size_t)i * V;
        real *p = probs + (size_t)i * V;
        int tgt = targets[i];
        assert(tgt < V);
        real mx = l[0];
        for (int v = 1; v < V; v++)
            if (l[v] > mx) mx = l[v];
        /* read before probs (possibly the same memory) is written */
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

/* dlogits[S,V] += scale * (probs - onehot(target)) on rows with target >= 0;
 * other rows are left untouched. probs is the forward's output; scale is
 * usually 1/count for a mean loss. */
void crossentropy_backward(real *dlogits, const real *probs, const int *targets, int S,
                           int V, real scale) {
    for (int i = 0; i < S; i++) {
        int tgt = targets[i];
        if (tgt < 0) continue;
        assert(tgt < V);
        const real *p = probs + (size_t)i * V;
        real *d = dlogits + (size_t)i * V;
        /* p - 1 before scaling: exact near p = 1, where scale*p - scale cancels */
        for (int v = 0; v < V; v++) d[v] += scale * (p[v] - (v == tgt ? (real)1 : (real)0));
    }
}
