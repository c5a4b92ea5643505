/* softmax_attention.c: causal (optionally sliding-window) multi-head softmax
 * attention, forward and backward, on OpenBLAS, plus naive loop references.
 *
 * Dimension letters: B batch, T time, H heads, D head width.
 * qkv [B,T,3,H,D] packed; out [B,T,H,D]; att [B,H,T,T] probabilities.
 *
 * The fast path works one (b, h) at a time on the head's rows gathered into
 * contiguous scratch, and walks the queries in blocks of ATT_ROWS rows so each
 * GEMM covers only the keys some query of the block can see (the causal band,
 * narrowed further by the window). Projections, the residual and the choice
 * of head layout are the mixer's business (mixer_softmax); this file only
 * maps packed q, k, v to the attended output. */
#include <math.h>
#include <string.h>

#include "kernels.h"

/* Query rows per GEMM block. Small enough that the band skips most of the
 * masked upper triangle for long T, large enough to keep GEMMs matmul-shaped. */
#define ATT_ROWS 64

/* First key visible to query i: i - window + 1 (clamped at 0), or 0 for full
 * causal attention. The last visible key is always i itself. */
static int att_lo(int i, int window) {
    int lo = window > 0 ? i - window + 1 : 0;
    return lo > 0 ? lo : 0;
}

/* Row-major C[M,N] = alpha op(A) op(B) + beta C; ta/tb nonzero transpose. */
static void gemm(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda,
                 const real *Bm, int ldb, real beta, real *C, int ldc) {
    cblas_gemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
               M, N, K, alpha, A, lda, Bm, ldb, beta, C, ldc);
}

/* Copy the D-wide rows of one head (row stride ld) into dst[T,D]. */
static void gather_rows(real *dst, const real *src, int T, int D, int ld) {
    for (int t = 0; t < T; t++)
        memcpy(dst + (size_t)t * D, src + (size_t)t * ld, (size_t)D * sizeof(real));
}

/* Scratch for the fast path: Q, K, V and dO of one head [T,D] each, plus one
 * block of dP [ATT_ROWS,T] for backward. Forward uses only the first 3*T*D. */
size_t attention_scratch_size(int T, int D) {
    size_t rows = T < ATT_ROWS ? (size_t)T : ATT_ROWS;
    return 4 * (size_t)T * D + rows * (size_t)T;
}

/* Fast forward: contract in kernels.h. att rows get exact zeros outside the
 * visible keys, so backward can use whole blocks of att as GEMM operands. */
void attention_forward(real *out, real *att, const real *qkv, int B, int T, int H, int D,
                       int window, real *scratch) {
    const int ld = 3 * H * D, ldo = H * D;
    const real scale = RSQRT((real)D);
    real *Q = scratch, *K = Q + (size_t)T * D, *V = K + (size_t)T * D;
    for (int b = 0; b < B; b++) {
        const real *base = qkv + (size_t)b * T * ld;
        for (int h = 0; h < H; h++) {
            gather_rows(Q, base + h * D, T, D, ld);
            gather_rows(K, base + H * D + h * D, T, D, ld);
            gather_rows(V, base + 2 * H * D + h * D, T, D, ld);
            real *A = att + ((size_t)b * H + h) * T * T;
            real *O = out + (size_t)b * T * ldo + h * D;
            for (int r0 = 0; r0 < T; r0 += ATT_ROWS) {
                int r1 = r0 + ATT_ROWS < T ? r0 + ATT_ROWS : T;
                int c0 = att_lo(r0, window), M = r1 - r0, N = r1 - c0;
                real *Ab = A + (size_t)r0 * T + c0;
                gemm(0, 1, M, N, D, scale, Q + (size_t)r0 * D, D, K + (size_t)c0 * D, D, 0, Ab, T);
                for (int i = r0; i < r1; i++) {
                    real *a = A + (size_t)i * T;
                    int lo = att_lo(i, window);
                    real mx = a[lo];
                    for (int j = lo + 1; j <= i; j++) mx = a[j] > mx ? a[j] : mx;
                    real sum = 0;
                    for (int j = lo; j <= i; j++) {
                        a[j] = REXP(a[j] - mx);
                        sum += a[j];
                    }
                    real inv = 1 / sum;
                    for (int j = lo; j <= i; j++) a[j] *= inv;
                    /* the block's GEMM wrote scores left of lo and right of i:
                     * clear the whole row outside the visible keys */
                    memset(a, 0, (size_t)lo * sizeof(real));
                    memset(a + i + 1, 0, (size_t)(T - i - 1) * sizeof(real));
                }
                gemm(0, 0, M, D, N, 1, Ab, T, V + (size_t)c0 * D, D, 0, O + (size_t)r0 * ldo, ldo);
            }
        }
    }
}

/* Fast backward: contract in kernels.h. Per row block, with P the saved
 * probabilities on the block's band:
 *   dV += P^T dO,  dP = dO V^T,  dS = P .* (dP - rowsum(dP .* P)),
 *   dQ += scale dS K,  dK += scale dS^T Q.
 * The GEMMs accumulate straight into the strided dqkv (beta = 1). */
void attention_backward(real *dqkv, const real *dout, const real *qkv, const real *att,
                        int B, int T, int H, int D, int window, real *scratch) {
    if (!dqkv) return;
    const int ld = 3 * H * D, ldo = H * D;
    const real scale = RSQRT((real)D);
    real *Q = scratch, *K = Q + (size_t)T * D, *V = K + (size_t)T * D;
    real *dO = V + (size_t)T * D, *dP = dO + (size_t)T * D;
    for (int b = 0; b < B; b++) {
        const real *base = qkv + (size_t)b * T * ld;
        real *dbase = dqkv + (size_t)b * T * ld;
        for (int h = 0; h < H; h++) {
            gather_rows(Q, base + h * D, T, D, ld);
            gather_rows(K, base + H * D + h * D, T, D, ld);
            gather_rows(V, base + 2 * H * D + h * D, T, D, ld);
            gather_rows(dO, dout + (size_t)b * T * ldo + h * D, T, D, ldo);
            const real *A = att + ((size_t)b * H + h) * T * T;
            real *dQ = dbase + h * D, *dK = dbase + H * D + h * D;
            real *dV = dbase + 2 * H * D + h * D;
            for (int r0 = 0; r0 < T; r0 += ATT_ROWS) {
                int r1 = r0 + ATT_ROWS < T ? r0 + ATT_ROWS : T;
                int c0 = att_lo(r0, window), M = r1 - r0, N = r1 - c0;
                const real *Pb = A + (size_t)r0 * T + c0;
                gemm(1, 0, N, D, M, 1, Pb, T, dO + (size_t)r0 * D, D, 1, dV + (size_t)c0 * ld, ld);
                gemm(0, 1, M, N, D, 1, dO + (size_t)r0 * D, D, V + (size_t)c0 * D, D, 0, dP, N);
                for (int i = r0; i < r1; i++) {
                    const real *p = A + (size_t)i * T + c0;
                    real *ds = dP + (size_t)(i - r0) * N;
                    int lo = att_lo(i, window) - c0, hi = i - c0;
                    real dot = 0;
                    for (int j = lo; j <= hi; j++) dot += ds[j] * p[j];
                    for (int j = 0; j < N; j++)
                        ds[j] = j >= lo && j <= hi ? p[j] * (ds[j] - dot) : 0;
                }
                gemm(0, 0, M, D, N, scale, dP, N, K + (size_t)c0 * D, D, 1,
                     dQ + (size_t)r0 * ld, ld);
                gemm(1, 0, N, D, M, scale, dP, N, Q + (size_t)r0 * D, D, 1,
                     dK + (size_t)c0 * ld, ld);
            }
        }
    }
}

/* Naive forward: one query, one key at a time, straight from the definition.
 * Kept as the oracle of attention_forward; same contract, no scratch. */
void attention_forward_ref(real *out, real *att, const real *qkv, int B, int T, int H,
                           int D, int window) {
    const int ld = 3 * H * D;
    const real scale = RSQRT((real)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const real *q = qkv + ((size_t)b * T + i) * ld + h * D;
                real *a = att + (((size_t)b * H + h) * T + i) * T;
                real *o = out + ((size_t)b * T + i) * H * D + h * D;
                int lo = att_lo(i, window);
                real mx = 0;
                for (int j = 0; j < T; j++) {
                    a[j] = 0;
                    if (j < lo || j > i) continue;
                    const real *k = qkv + ((size_t)b * T + j) * ld + H * D + h * D;
                    real s = 0;
                    for (int d = 0; d < D; d++) s += q[d] * k[d];
                    a[j] = s * scale;
                    if (j == lo || a[j] > mx) mx = a[j];
                }
                real sum = 0;
                for (int j = lo; j <= i; j++) {
                    a[j] = REXP(a[j] - mx);
                    sum += a[j];
                }
                for (int j = lo; j <= i; j++) a[j] /= sum;
                for (int d = 0; d < D; d++) o[d] = 0;
                for (int j = lo; j <= i; j++) {
                    const real *v = qkv + ((size_t)b * T + j) * ld + 2 * H * D + h * D;
                    for (int d = 0; d < D; d++) o[d] += a[j] * v[d];
                }
            }
}

/* Naive backward, oracle of attention_backward. dP_ij = dO_i . v_j is
 * recomputed in a second pass instead of stored, so no scratch is needed. */
void attention_backward_ref(real *dqkv, const real *dout, const real *qkv,
                            const real *att, int B, int T, int H, int D, int window) {
    if (!dqkv) return;
    const int ld = 3 * H * D;
    const real scale = RSQRT((real)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const real *q = qkv + ((size_t)b * T + i) * ld + h * D;
                real *dq = dqkv + ((size_t)b * T + i) * ld + h * D;
                const real *a = att + (((size_t)b * H + h) * T + i) * T;
                const real *dout_i = dout + ((size_t)b * T + i) * H * D + h * D;
                int lo = att_lo(i, window);
                real dot = 0;
                for (int j = lo; j <= i; j++) {
                    const real *v = qkv + ((size_t)b * T + j) * ld + 2 * H * D + h * D;
                    real dp = 0;
                    for (int d = 0; d < D; d++) dp += dout_i[d] * v[d];
                    dot += dp * a[j];
                }
                for (int j = lo; j <= i; j++) {
                    size_t row = ((size_t)b * T + j) * ld;
                    const real *k = qkv + row + H * D + h * D;
                    const real *v = qkv + row + 2 * H * D + h * D;
                    real *dk = dqkv + row + H * D + h * D;
                    real *dv = dqkv + row + 2 * H * D + h * D;
                    real dp = 0;
                    for (int d = 0; d < D; d++) dp += dout_i[d] * v[d];
                    real ds = a[j] * (dp - dot) * scale;
                    for (int d = 0; d < D; d++) {
                        dv[d] += a[j] * dout_i[d];
                        dq[d] += ds * k[d];
                        dk[d] += ds * q[d];
                    }
                }
            }
}
