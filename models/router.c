/* router.c: the top-K softmax router of a mixture of memories, forward,
 * backward with the selection held fixed, and the load-balancing loss.
 *
 * Dimension letters: N rows (tokens), E memories, K selected per row.
 *   p = softmax(logits) (in double, whatever real is), sel = the K largest p,
 *   w = p[sel] / sum p[sel].
 * Top-K is not differentiable: the backward treats the selection as a
 * constant, which is exact wherever no two p in the K-th and (K+1)-th place
 * are tied. With K = 1 the renormalised weight is always 1, so only the
 * load-balancing term reaches the logits. What the weights multiply, and the
 * coefficient of the balancing loss, are the mixer's. */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

/* Softmax, top-K and renormalisation per row: contract in kernels.h. The
 * selection is a partial selection sort (E is a handful). */
void router_forward(real *p, int *sel, real *w, const real *logits, int N, int E, int K) {
    for (int n = 0; n < N; n++) {
        const real *z = logits + (size_t)n * E;
        real *pn = p + (size_t)n * E;
        int *sn = sel + (size_t)n * K;
        real *wn = w + (size_t)n * K;
        double mx = z[0], sum = 0;
        for (int e = 1; e < E; e++) mx = fmax(mx, z[e]);
        for (int e = 0; e < E; e++) sum += exp((double)z[e] - mx);
        for (int e = 0; e < E; e++) pn[e] = (real)(exp((double)z[e] - mx) / sum);
        double tot = 0;
        for (int j = 0; j < K; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++) taken |= sn[i] == e;
                if (!taken && (best < 0 || pn[e] > pn[best])) best = e;
            }
            sn[j] = best;
            tot += pn[best];
        }
        for (int j = 0; j < K; j++) wn[j] = (real)(pn[sn[j]] / tot);
    }
}

/* With s = sum_{j in sel} p_j and w_j = p_j / s:
 *   dp_j = (dw_j - sum_i dw_i w_i) / s for selected j, plus dp_all;
 *   dlogits = p .* (dp - p.dp). */
void router_backward(real *dlogits, const real *dw, const real *dp_all, const real *p,
                     const int *sel, const real *w, int N, int E, int K) {
    enum { E_MAX = 256 }; /* the mixers allow far fewer memories */
    double dp[E_MAX];
    assert(E <= E_MAX);
    for (int n = 0; n < N; n++) {
        const real *pn = p + (size_t)n * E, *wn = w + (size_t)n * K;
        const real *dwn = dw ? dw + (size_t)n * K : NULL;
        const int *sn = sel + (size_t)n * K;
        for (int e = 0; e < E; e++) dp[e] = dp_all ? dp_all[e] : 0;
        if (dwn) {
            double s = 0, c = 0;
            for (int j = 0; j < K; j++) {
                s += pn[sn[j]];
                c += (double)dwn[j] * wn[j];
            }
            for (int j = 0; j < K; j++) dp[sn[j]] += ((double)dwn[j] - c) / s;
        }
        double pd = 0;
        for (int e = 0; e < E; e++) pd += pn[e] * dp[e];
        real *dz = dlogits + (size_t)n * E;
        for (int e = 0; e < E; e++) dz[e] += (real)(pn[e] * (dp[e] - pd));
    }
}

/* frac, mean and E * sum frac.mean: contract in kernels.h. */
double router_balance(real *frac, real *mean, const real *p, const int *sel, int N, int E,
                      int K) {
    for (int e = 0; e < E; e++) {
        double f = 0, m = 0;
        for (int n = 0; n < N; n++) {
            m += p[(size_t)n * E + e];
            for (int j = 0; j < K; j++) f += sel[(size_t)n * K + j] == e;
        }
        frac[e] = (real)(N > 0 ? f / N : 0);
        mean[e] = (real)(N > 0 ? m / N : 0);
    }
    double l = 0;
    for (int e = 0; e < E; e++) l += (double)frac[e] * mean[e];
    return E * l;
}
