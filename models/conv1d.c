/* conv1d.c: short causal depthwise convolution over time, forward and backward.
 *
 * Dimensions: B batch, T time, C channels, K kernel taps.
 * Each channel has its own K taps; tap K-1 weighs the current token and tap j
 * the token K-1-j steps back, with zeros before t = 0 (torch Conv1d with
 * groups=C, padding=K-1, first T outputs). K is a handful (3-4), so plain loops
 * beat any GEMM lowering. Whether the model uses the conv, and its init, is
 * the model's business.
 *
 * The fast path works on blocks of CONV_CB channels, one vector register
 * wide, several blocks side by side as it walks the rows in memory order: a
 * block's taps are copied tap-major into vectors, an output row (forward) or
 * an input-gradient row (backward, gathered from the K output gradients that
 * reach it) is summed in a register and stored once, the weight and bias
 * gradients of a block are summed in vectors and added once, and the blocks
 * are shared among memlab's threads
 * (parallel.h). A channel's outputs and gradients are computed by one thread
 * in a fixed order, so the numbers do not depend on the thread count. The
 * naive loops (*_ref) stay as the oracle. */
#include <stddef.h>
#include <string.h>

#include "kernels.h"
#include "parallel.h"

/* Channels per block: one 512-bit vector of floats. */
#define CONV_CB 16
/* Taps the blocked path holds locally (model.conv allows up to 64). */
#define CONV_KMAX 64
/* Fewest multiply-adds per thread worth a parallel region. */
#define CONV_MIN_WORK (1L << 18)

/* A block of CONV_CB channels as one value (GNU C vectors: one 512-bit
 * register of floats, two of doubles), loaded and stored unaligned. */
typedef real conv_vec __attribute__((vector_size(CONV_CB * sizeof(real))));

/* The first n channels of a block at p, the lanes past n zero (n is
 * CONV_CB but for the last block, where a channel count that is not a multiple
 * of the block ends). Macros, not functions: a build without AVX-512 would
 * pass these vectors through memory under a different ABI (GCC's -Wpsabi). */
#define vload(p, n)                                                                               \
    ({                                                                                            \
        conv_vec v_ = {0};                                                                        \
        memcpy(&v_, (p), (size_t)(n) * sizeof(real));                                            \
        v_;                                                                                       \
    })
#define vstore(p, v, n)                                                                           \
    do {                                                                                          \
        conv_vec s_ = (v);                                                                        \
        memcpy((p), &s_, (size_t)(n) * sizeof(real));                                            \
    } while (0)

typedef struct conv_call {
    real *out, *dx, *dw, *dbias;
    const real *x, *w, *bias, *dout;
    int B, T, C, K;
} conv_call;

/* Tap-major copy of channels [c0, c0 + n) of w[C,K]: wt[j][c], zero for
 * c >= n. */
static void conv_taps(real wt[][CONV_CB], const real *w, int c0, int n, int K) {
    for (int j = 0; j < K; j++)
        for (int c = 0; c < CONV_CB; c++) wt[j][c] = c < n ? w[(size_t)(c0 + c) * K + j] : 0;
}

/* Tap vectors a call holds: g blocks of K taps, g * K <= CONV_HOLD. */
#define CONV_HOLD 256
/* Most blocks walked side by side. */
#define CONV_GROUP 32

/* Forward of g blocks from c0, n channels each (CONV_CB, or fewer in a lone
 * last block), walking the rows in memory order with the blocks of a row side
 * by side (one block at a time down all rows read a 64-byte piece of every
 * row per block, and ran at half the rate where a core's memory bandwidth is
 * low). Each output vector is summed bias first, then the taps ascending, as
 * the reference adds them. Inlined with K and n constants for the usual
 * widths. */
static inline __attribute__((always_inline)) void conv_fwd_rows(const conv_call *k, int c0,
                                                                int g, const int K,
                                                                const int n) {
    const int T = k->T, C = k->C;
    conv_vec w[CONV_HOLD], bias[CONV_GROUP];
    for (int u = 0; u < g; u++) {
        real wt[CONV_KMAX][CONV_CB];
        conv_taps(wt, k->w, c0 + u * CONV_CB, n, K);
        for (int j = 0; j < K; j++) w[u * K + j] = vload(wt[j], CONV_CB);
        bias[u] = k->bias ? vload(k->bias + c0 + u * CONV_CB, n) : (conv_vec){0};
    }
    for (int b = 0; b < k->B; b++) {
        const real *xb = k->x + (size_t)b * T * C + c0;
        real *ob = k->out + (size_t)b * T * C + c0;
        for (int t = 0; t < T; t++) {
            int j0 = K - 1 - t > 0 ? K - 1 - t : 0;
            real *o = ob + (size_t)t * C;
            for (int u = 0; u < g; u++) {
                conv_vec acc = bias[u];
                for (int j = j0; j < K; j++)
                    acc += w[u * K + j] * vload(xb + (size_t)(t - (K - 1) + j) * C + u * CONV_CB, n);
                vstore(o + u * CONV_CB, acc, n);
            }
        }
    }
}

/* Backward of the same blocks, row by row. dx[s] gathers its K terms in the
 * order the reference adds them (t = s, s+1, ... ascending, tap K-1 first)
 * and is written once; the weight and bias gradients are summed per block
 * over b, then t, and added once. */
static inline __attribute__((always_inline)) void conv_bwd_rows(const conv_call *k, int c0,
                                                                int g, const int K,
                                                                const int n) {
    const int T = k->T, C = k->C;
    conv_vec w[CONV_HOLD], gw[CONV_HOLD], gb[CONV_GROUP];
    for (int u = 0; u < g; u++) {
        real wt[CONV_KMAX][CONV_CB];
        conv_taps(wt, k->w, c0 + u * CONV_CB, n, K);
        for (int j = 0; j < K; j++) w[u * K + j] = vload(wt[j], CONV_CB), gw[u * K + j] = (conv_vec){0};
        gb[u] = (conv_vec){0};
    }
    for (int b = 0; b < k->B; b++) {
        const real *xb = k->x + (size_t)b * T * C + c0;
        const real *db = k->dout + (size_t)b * T * C + c0;
        real *dxb = k->dx ? k->dx + (size_t)b * T * C + c0 : NULL;
        for (int t = 0; t < T; t++) {
            int j0 = K - 1 - t > 0 ? K - 1 - t : 0;
            for (int u = 0; u < g; u++) {
                const real *du = db + u * CONV_CB;
                conv_vec d = vload(du + (size_t)t * C, n);
                gb[u] += d;
                for (int j = j0; j < K; j++)
                    gw[u * K + j] += d * vload(xb + (size_t)(t - (K - 1) + j) * C + u * CONV_CB, n);
                if (dxb) {
                    real *dx = dxb + (size_t)t * C + u * CONV_CB;
                    conv_vec acc = vload(dx, n);
                    for (int i = 0; i < K && t + i < T; i++)
                        acc += w[u * K + K - 1 - i] * vload(du + (size_t)(t + i) * C, n);
                    vstore(dx, acc, n);
                }
            }
        }
    }
    for (int u = 0; u < g; u++) {
        int cu = c0 + u * CONV_CB;
        if (k->dw)
            for (int c = 0; c < n; c++)
                for (int j = 0; j < K; j++) k->dw[(size_t)(cu + c) * K + j] += gw[u * K + j][c];
        if (k->dbias)
            for (int c = 0; c < n; c++) k->dbias[cu + c] += gb[u][c];
    }
}

/* The channel blocks [u0, u1), forward or backward: whole blocks in groups
 * (K and n compiled in for the usual K of 3 and 4), a last partial block on
 * its own. */
static void conv_blocks(const conv_call *k, int u0, int u1, int bwd) {
    const int K = k->K, whole = k->C / CONV_CB;
    const int most = CONV_HOLD / K < CONV_GROUP ? CONV_HOLD / K : CONV_GROUP;
    for (int u = u0; u < u1;) {
        int c0 = u * CONV_CB;
        if (u >= whole) { /* the last block, C % CONV_CB channels */
            int n = k->C - c0;
            bwd ? conv_bwd_rows(k, c0, 1, K, n) : conv_fwd_rows(k, c0, 1, K, n);
            break;
        }
        int g = (u1 < whole ? u1 : whole) - u;
        if (g > most) g = most;
        if (K == 4)
            bwd ? conv_bwd_rows(k, c0, g, 4, CONV_CB) : conv_fwd_rows(k, c0, g, 4, CONV_CB);
        else if (K == 3)
            bwd ? conv_bwd_rows(k, c0, g, 3, CONV_CB) : conv_fwd_rows(k, c0, g, 3, CONV_CB);
        else
            bwd ? conv_bwd_rows(k, c0, g, K, CONV_CB) : conv_fwd_rows(k, c0, g, K, CONV_CB);
        u += g;
    }
}

static void conv_fwd_range(void *ctx, int u0, int u1, int slot) {
    (void)slot;
    conv_blocks(ctx, u0, u1, 0);
}

static void conv_bwd_range(void *ctx, int u0, int u1, int slot) {
    (void)slot;
    conv_blocks(ctx, u0, u1, 1);
}

int conv1d_causal_threads(int B, int T, int C, int K) {
    int blocks = (C + CONV_CB - 1) / CONV_CB;
    return ml_par_threads(blocks, (double)B * T * C * K, CONV_MIN_WORK);
}

/* Run fn over the channel blocks, one range of blocks per thread. */
static void conv_run(conv_call *k, void (*fn)(void *, int, int, int)) {
    int blocks = (k->C + CONV_CB - 1) / CONV_CB;
    ml_par_ranges(blocks, conv1d_causal_threads(k->B, k->T, k->C, k->K), fn, k);
}

/* out[b,t,c] = bias[c] + sum_{j<K, s=t-(K-1)+j >= 0} w[c,j] x[b,s,c].
 * x,out [B,T,C]; w [C,K]; bias [C] or NULL. out is overwritten and must not
 * alias x. T < K is fine: the missing past is zero. */
void conv1d_causal_forward(real *out, const real *x, const real *w, const real *bias,
                           int B, int T, int C, int K) {
    if (K > CONV_KMAX) {
        conv1d_causal_forward_ref(out, x, w, bias, B, T, C, K);
        return;
    }
    conv_call k = {.out = out, .x = x, .w = w, .bias = bias, .B = B, .T = T, .C = C, .K = K};
    conv_run(&k, conv_fwd_range);
}

/* dx[b,s,c] += sum_j w[c,j] dout[b, s+(K-1)-j, c]; dw[c,j] += sum_{b,t}
 * dout[b,t,c] x[b, t-(K-1)+j, c]; dbias[c] += sum_{b,t} dout[b,t,c], with
 * out-of-range times dropped. Any gradient may be NULL. */
void conv1d_causal_backward(real *dx, real *dw, real *dbias, const real *dout,
                            const real *x, const real *w, int B, int T, int C, int K) {
    if (K > CONV_KMAX) {
        conv1d_causal_backward_ref(dx, dw, dbias, dout, x, w, B, T, C, K);
        return;
    }
    conv_call k = {.dx = dx, .dw = dw, .dbias = dbias, .dout = dout, .x = x, .w = w,
                   .B = B, .T = T, .C = C, .K = K};
    conv_run(&k, conv_bwd_range);
}

/* Naive forward, oracle of conv1d_causal_forward: the definition, channel by
 * channel in the tap layout of w. */
void conv1d_causal_forward_ref(real *out, const real *x, const real *w, const real *bias,
                               int B, int T, int C, int K) {
    for (int b = 0; b < B; b++) {
        const real *xb = x + (size_t)b * T * C;
        real *ob = out + (size_t)b * T * C;
        for (int t = 0; t < T; t++) {
            real *o = ob + (size_t)t * C;
            for (int c = 0; c < C; c++) o[c] = bias ? bias[c] : 0;
            /* skip the taps that would read before t = 0 */
            int j0 = K - 1 - t > 0 ? K - 1 - t : 0;
            for (int j = j0; j < K; j++) {
                const real *xs = xb + (size_t)(t - (K - 1) + j) * C;
                for (int c = 0; c < C; c++) o[c] += w[(size_t)c * K + j] * xs[c];
            }
        }
    }
}

/* Naive backward, oracle of conv1d_causal_backward. */
void conv1d_causal_backward_ref(real *dx, real *dw, real *dbias, const real *dout,
                                const real *x, const real *w, int B, int T, int C, int K) {
    for (int b = 0; b < B; b++) {
        const real *xb = x + (size_t)b * T * C;
        const real *db = dout + (size_t)b * T * C;
        real *dxb = dx ? dx + (size_t)b * T * C : NULL;
        for (int t = 0; t < T; t++) {
            const real *d = db + (size_t)t * C;
            if (dbias)
                for (int c = 0; c < C; c++) dbias[c] += d[c];
            int j0 = K - 1 - t > 0 ? K - 1 - t : 0;
            for (int j = j0; j < K; j++) {
                size_t s = (size_t)(t - (K - 1) + j) * C;
                if (dxb)
                    for (int c = 0; c < C; c++) dxb[s + c] += w[(size_t)c * K + j] * d[c];
                if (dw)
                    for (int c = 0; c < C; c++) dw[(size_t)c * K + j] += d[c] * xb[s + c];
            }
        }
    }
}
