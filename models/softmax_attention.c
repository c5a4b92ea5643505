/* softmax_attention.c: causal (optionally sliding-window) multi-head softmax
 * attention, forward and backward, on OpenBLAS, plus naive loop references.
 *
 * Dimension letters: B batch, T time, H heads, D head width.
 * qkv [B,T,3,H,D] packed; out [B,T,H,D]; att [B,H,T,T] probabilities.
 *
 * The fast path works one (b, h) at a time, reading the head's q, k, v rows
 * in place through their row stride, and walks the queries in blocks of
 * 64 or 128 rows so each GEMM covers only the keys some query of the block can
 * see (the causal band, narrowed further by the window): about half the
 * FLOPs of the full T x T product at long T. The softmax rows are vectorised
 * (OpenMP simd; the float build uses its own exp, the double build libm's).
 * The (b, h) pairs are shared among memlab's threads (OpenBLAS's thread count,
 * set by --threads; BLAS runs single-threaded inside the parallel region),
 * each thread with its own slot of scratch; every output element is computed
 * by one thread in a fixed order, so results do not depend on the thread
 * count. Projections, the residual and the choice of head layout are the
 * mixer's business (mixer_softmax); this file only maps packed q, k, v to the
 * attended output.
 *
 * The rows kernel (attention_rows_*) computes the output of a subset of the
 * queries only, for the last layer of a model whose LM head reads a few rows:
 * keys and values of every token, queries and outputs of those rows. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastexp.h"
#include "kernels.h"
#include "parallel.h"


/* Query rows per GEMM block: small enough that the band skips most of the
 * masked upper triangle for long T, large enough to keep GEMMs matmul-shaped.
 * Wide heads take taller blocks (measured: D 256 forward about 12% faster with
 * 128 rows; D <= 128 slower). */
#define ATT_ROWS 64
#define ATT_ROWS_WIDE 128
/* Fewest multiply-adds per thread worth a parallel region. */
#define ATT_MIN_WORK (1L << 20)

/* Query rows per block for head width D. */
static int att_rows(int D) { return D >= 192 ? ATT_ROWS_WIDE : ATT_ROWS; }

/* First key visible to query i: i - window + 1 (clamped at 0), or 0 for full
 * causal attention. The last visible key is always i itself. */
static int att_lo(int i, int window) {
    int lo = window > 0 ? i - window + 1 : 0;
    return lo > 0 ? lo : 0;
}

/* Query-key pairs one (b, h) computes in its band GEMMs: per block of query
 * rows, the keys from the first one its first row sees to its last row. */
double attention_band_pairs(int T, int D, int window) {
    const int rows = att_rows(D);
    double n = 0;
    for (int r0 = 0; r0 < T; r0 += rows) {
        int r1 = r0 + rows < T ? r0 + rows : T;
        n += (double)(r1 - r0) * (r1 - att_lo(r0, window));
    }
    return n;
}

/* Reals of one slot: a block of dP [rows, T] for backward (rows: the
 * tallest block att_rows picks). */
static size_t att_slot_size(int T) {
    size_t rows = T < ATT_ROWS_WIDE ? (size_t)T : ATT_ROWS_WIDE;
    return (rows * (size_t)T + 15) & ~(size_t)15;
}

/* Scratch for the fast path: one slot per processor. D is unused since q, k,
 * v are read in place; it stays in the signature the mixers call. */
size_t attention_scratch_size(int T, int D) {
    (void)D;
    return (size_t)ml_par_slots() * att_slot_size(T);
}

/* Softmax of one row of scores: contract in kernels.h. */
void softmax_row(real *a, int lo, int i, int T) {
    real mx = a[lo];
#pragma omp simd reduction(max : mx)
    for (int j = lo; j <= i; j++) mx = a[j] > mx ? a[j] : mx;
    real sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = lo; j <= i; j++) {
        real e = ML_EXP(a[j] - mx);
        a[j] = e;
        sum += e;
    }
    real inv = 1 / sum;
#pragma omp simd
    for (int j = lo; j <= i; j++) a[j] *= inv;
    /* the block's GEMM wrote scores left of lo and right of i: clear the
     * whole row outside the visible keys */
    memset(a, 0, (size_t)lo * sizeof(real));
    memset(a + i + 1, 0, (size_t)(T - i - 1) * sizeof(real));
}

/* Forward of one (b, h): the blocks of queries, each a band GEMM for the
 * scores, the softmax rows, and a band GEMM for the output. */
static void att_forward_pair(real *O, real *A, const real *Q, const real *K, const real *V,
                             int T, int D, int ld, int ldo, int window, real scale) {
    const int rows = att_rows(D);
    for (int r0 = 0; r0 < T; r0 += rows) {
        int r1 = r0 + rows < T ? r0 + rows : T;
        int c0 = att_lo(r0, window), M = r1 - r0, N = r1 - c0;
        real *Ab = A + (size_t)r0 * T + c0;
        ml_gemm(0, 1, M, N, D, scale, Q + (size_t)r0 * ld, ld, K + (size_t)c0 * ld, ld, 0, Ab, T);
        for (int i = r0; i < r1; i++) softmax_row(A + (size_t)i * T, att_lo(i, window), i, T);
        ml_gemm(0, 0, M, D, N, 1, Ab, T, V + (size_t)c0 * ld, ld, 0, O + (size_t)r0 * ldo, ldo);
    }
}

/* Backward of one (b, h), per row block with P the saved probabilities on the
 * block's band:
 *   dV += P^T dO,  dP = dO V^T,  dS = P .* (dP - rowsum(dP .* P)),
 *   dQ += scale dS K,  dK += scale dS^T Q.
 * The GEMMs accumulate straight into the strided dqkv (beta = 1). */
static void att_backward_pair(real *dQ, real *dK, real *dV, const real *dO, const real *Q,
                              const real *K, const real *V, const real *A, int T, int D, int ld,
                              int ldo, int window, real scale, real *dP) {
    const int rows = att_rows(D);
    for (int r0 = 0; r0 < T; r0 += rows) {
        int r1 = r0 + rows < T ? r0 + rows : T;
        int c0 = att_lo(r0, window), M = r1 - r0, N = r1 - c0;
        const real *Pb = A + (size_t)r0 * T + c0;
        ml_gemm(1, 0, N, D, M, 1, Pb, T, dO + (size_t)r0 * ldo, ldo, 1, dV + (size_t)c0 * ld, ld);
        ml_gemm(0, 1, M, N, D, 1, dO + (size_t)r0 * ldo, ldo, V + (size_t)c0 * ld, ld, 0, dP, N);
        for (int i = r0; i < r1; i++) {
            const real *p = A + (size_t)i * T + c0;
            real *ds = dP + (size_t)(i - r0) * N;
            int lo = att_lo(i, window) - c0, hi = i - c0;
            real dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int j = lo; j <= hi; j++) dot += ds[j] * p[j];
            /* p is exactly 0 outside [lo, hi], so this zeroes dS there */
#pragma omp simd
            for (int j = 0; j < N; j++) ds[j] = p[j] * (ds[j] - dot);
        }
        ml_gemm(0, 0, M, D, N, scale, dP, N, K + (size_t)c0 * ld, ld, 1, dQ + (size_t)r0 * ld, ld);
        ml_gemm(1, 0, N, D, M, scale, dP, N, Q + (size_t)r0 * ld, ld, 1, dK + (size_t)c0 * ld, ld);
    }
}

/* The sizes and tensors of one call, shared by its threads. */
typedef struct att_call {
    real *out, *att, *dqkv, *scratch;
    const real *qkv, *dout, *att_in;
    int B, T, H, D, window;
    int backward;
} att_call;

/* Pairs bh0..bh1 of the forward (one thread's share). */
static void att_forward_range(const att_call *c, int bh0, int bh1) {
    const int T = c->T, H = c->H, D = c->D, ld = 3 * H * D, ldo = H * D;
    const real scale = RSQRT((real)D);
    for (int bh = bh0; bh < bh1; bh++) {
        int b = bh / H, h = bh % H;
        const real *base = c->qkv + (size_t)b * T * ld;
        att_forward_pair(c->out + (size_t)b * T * ldo + h * D, c->att + (size_t)bh * T * T,
                         base + h * D, base + H * D + h * D, base + 2 * H * D + h * D, T, D, ld,
                         ldo, c->window, scale);
    }
}

/* Pairs bh0..bh1 of the backward, with the dP block of scratch slot `slot`. */
static void att_backward_range(const att_call *c, int bh0, int bh1, int slot) {
    const int T = c->T, H = c->H, D = c->D, ld = 3 * H * D, ldo = H * D;
    const real scale = RSQRT((real)D);
    real *dP = c->scratch + (size_t)slot * att_slot_size(T);
    for (int bh = bh0; bh < bh1; bh++) {
        int b = bh / H, h = bh % H;
        const real *base = c->qkv + (size_t)b * T * ld;
        real *dbase = c->dqkv + (size_t)b * T * ld;
        att_backward_pair(dbase + h * D, dbase + H * D + h * D, dbase + 2 * H * D + h * D,
                          c->dout + (size_t)b * T * ldo + h * D, base + h * D,
                          base + H * D + h * D, base + 2 * H * D + h * D,
                          c->att_in + (size_t)bh * T * T, T, D, ld, ldo, c->window, scale, dP);
    }
}

/* Forward or backward of pairs [bh0, bh1) in scratch slot `slot`. */
static void att_range(void *ctx, int bh0, int bh1, int slot) {
    const att_call *c = ctx;
    if (c->backward)
        att_backward_range(c, bh0, bh1, slot);
    else
        att_forward_range(c, bh0, bh1);
}

/* Run the forward (backward = 0) or backward over all B*H pairs, one
 * contiguous range of pairs per thread (parallel.h). With one thread no
 * OpenMP region is entered, so a forked sweep worker never touches the
 * OpenMP runtime. */
static void att_run(att_call *c, int backward) {
    const int pairs = c->B * c->H;
    /* about T^2 D / 2 multiply-adds per pair and GEMM */
    double work = (double)pairs * c->T * (c->T + 1) / 2 * c->D;
    c->backward = backward;
    ml_par_ranges(pairs, ml_par_threads(pairs, work, ATT_MIN_WORK), att_range, c);
}

/* Fast forward: contract in kernels.h. att rows get exact zeros outside the
 * visible keys, so backward can use whole blocks of att as GEMM operands. */
void attention_forward(real *out, real *att, const real *qkv, int B, int T, int H, int D,
                       int window, real *scratch) {
    att_call c = {.out = out, .att = att, .qkv = qkv, .scratch = scratch, .B = B, .T = T,
                  .H = H, .D = D, .window = window};
    att_run(&c, 0);
}

/* Fast backward: contract in kernels.h. */
void attention_backward(real *dqkv, const real *dout, const real *qkv, const real *att,
                        int B, int T, int H, int D, int window, real *scratch) {
    if (!dqkv) return;
    att_call c = {.dqkv = dqkv, .dout = dout, .qkv = qkv, .att_in = att, .scratch = scratch,
                  .B = B, .T = T, .H = H, .D = D, .window = window};
    att_run(&c, 1);
}

/* ---- a subset of query rows ---------------------------------------------- */
/* Only the rows the LM head reads need the last layer's attention output: the
 * queries of sequence b are the run of rows[] with rows[s] / T == b, walked
 * in blocks of ATT_ROWS queries, each block one GEMM over the keys its first
 * query can see up to its last query (band as above, rows sparse). */

/* The run [*s0, *s1) of rows that belong to sequence b (rows ascending). */
static void rows_of_seq(const int *rows, int S, int T, int b, int *s0, int *s1) {
    *s0 = rows_lower_bound(rows, S, b * T);
    *s1 = rows_lower_bound(rows, S, (b + 1) * T);
}

/* Key range [c0, c1) of the block of rows [a0, a1) (positions t = row % T). */
static void rows_block_keys(const int *rows, int a0, int a1, int T, int window, int *c0,
                            int *c1) {
    *c0 = att_lo(rows[a0] % T, window);
    *c1 = rows[a1 - 1] % T + 1;
}

double attention_rows_band_pairs(const int *rows, int S, int T, int window) {
    double n = 0;
    for (int a0 = 0; a0 < S;) {
        int b = rows[a0] / T, a1 = a0;
        while (a1 < S && a1 - a0 < ATT_ROWS && rows[a1] / T == b) a1++;
        int c0, c1;
        rows_block_keys(rows, a0, a1, T, window, &c0, &c1);
        n += (double)(a1 - a0) * (c1 - c0);
        a0 = a1;
    }
    return n;
}

typedef struct attr_call {
    real *out, *att, *dq, *dkv, *scratch;
    const real *q, *kv, *dout, *att_in;
    const int *rows;
    int S, B, T, H, D, window, backward;
} attr_call;

/* One (b, h) of the rows kernel, forward or backward (dP: a scratch slot). */
static void attr_pair(const attr_call *c, int b, int h, real *dP) {
    const int T = c->T, H = c->H, D = c->D, S = c->S, ldq = H * D, ldk = 2 * H * D;
    const real scale = RSQRT((real)D);
    int s0, s1;
    rows_of_seq(c->rows, S, T, b, &s0, &s1);
    const real *K = c->kv + (size_t)b * T * ldk + h * D, *V = K + H * D;
    for (int a0 = s0; a0 < s1; a0 += ATT_ROWS) {
        int a1 = a0 + ATT_ROWS < s1 ? a0 + ATT_ROWS : s1, M = a1 - a0, c0, c1;
        rows_block_keys(c->rows, a0, a1, T, c->window, &c0, &c1);
        int N = c1 - c0;
        size_t qo = (size_t)a0 * ldq + h * D, ko = (size_t)c0 * ldk;
        if (!c->backward) {
            real *A = c->att + ((size_t)h * S + a0) * T;
            ml_gemm(0, 1, M, N, D, scale, c->q + qo, ldq, K + ko, ldk, 0, A + c0, T);
            for (int s = a0; s < a1; s++) {
                int t = c->rows[s] % T;
                softmax_row(A + (size_t)(s - a0) * T, att_lo(t, c->window), t, T);
            }
            ml_gemm(0, 0, M, D, N, 1, A + c0, T, V + ko, ldk, 0, c->out + qo, ldq);
            continue;
        }
        const real *P = c->att_in + ((size_t)h * S + a0) * T + c0;
        real *dK = c->dkv + (size_t)b * T * ldk + h * D, *dV = dK + H * D;
        ml_gemm(1, 0, N, D, M, 1, P, T, c->dout + qo, ldq, 1, dV + ko, ldk);
        ml_gemm(0, 1, M, N, D, 1, c->dout + qo, ldq, V + ko, ldk, 0, dP, N);
        for (int s = a0; s < a1; s++) {
            int t = c->rows[s] % T;
            const real *p = P + (size_t)(s - a0) * T;
            real *ds = dP + (size_t)(s - a0) * N;
            int lo = att_lo(t, c->window) - c0, hi = t - c0;
            real dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int j = lo; j <= hi; j++) dot += ds[j] * p[j];
#pragma omp simd
            for (int j = 0; j < N; j++) ds[j] = p[j] * (ds[j] - dot);
        }
        ml_gemm(0, 0, M, D, N, scale, dP, N, K + ko, ldk, 1, c->dq + qo, ldq);
        ml_gemm(1, 0, N, D, M, scale, dP, N, c->q + qo, ldq, 1, dK + ko, ldk);
    }
}

/* Pairs [u0, u1) of B*H, in scratch slot `slot`. */
static void attr_range(void *ctx, int u0, int u1, int slot) {
    const attr_call *c = ctx;
    real *dP = c->backward ? c->scratch + (size_t)slot * att_slot_size(c->T) : NULL;
    for (int u = u0; u < u1; u++) attr_pair(c, u / c->H, u % c->H, dP);
}

static void attr_run(attr_call *c) {
    const int pairs = c->B * c->H;
    double work = (double)c->S * c->H * c->T / 2 * c->D;
    ml_par_ranges(pairs, ml_par_threads(pairs, work, ATT_MIN_WORK), attr_range, c);
}

void attention_rows_forward(real *out, real *att, const real *q, const real *kv,
                            const int *rows, int S, int B, int T, int H, int D, int window) {
    attr_call c = {.out = out, .att = att, .q = q, .kv = kv, .rows = rows, .S = S, .B = B,
                   .T = T, .H = H, .D = D, .window = window};
    attr_run(&c);
}

void attention_rows_backward(real *dq, real *dkv, const real *dout, const real *q,
                             const real *kv, const real *att, const int *rows, int S, int B,
                             int T, int H, int D, int window, real *scratch) {
    attr_call c = {.dq = dq, .dkv = dkv, .dout = dout, .q = q, .kv = kv, .att_in = att,
                   .rows = rows, .scratch = scratch, .S = S, .B = B, .T = T, .H = H, .D = D,
                   .window = window, .backward = 1};
    attr_run(&c);
}

/* The rows references: the naive full attention on a packed qkv made of the
 * rows' queries (zero elsewhere) and every token's keys and values, read at
 * the rows. They allocate (they are oracles for tests, not kernels) and
 * abort when they cannot. */

/* A zeroed packed qkv [B,T,3,H,D] with q at the rows and k, v everywhere. */
static real *rows_ref_pack(const real *q, const real *kv, const int *rows, int S, int N,
                           int HD) {
    real *qkv = calloc((size_t)N * 3 * HD, sizeof(real));
    if (!qkv) abort();
    for (int i = 0; i < N; i++)
        memcpy(qkv + (size_t)i * 3 * HD + HD, kv + (size_t)i * 2 * HD, sizeof(real) * 2 * HD);
    for (int s = 0; s < S; s++)
        memcpy(qkv + (size_t)rows[s] * 3 * HD, q + (size_t)s * HD, sizeof(real) * HD);
    return qkv;
}

void attention_rows_forward_ref(real *out, real *att, const real *q, const real *kv,
                                const int *rows, int S, int B, int T, int H, int D,
                                int window) {
    const int N = B * T, HD = H * D;
    real *qkv = rows_ref_pack(q, kv, rows, S, N, HD);
    real *o = malloc(sizeof(real) * (size_t)N * HD);
    real *a = malloc(sizeof(real) * (size_t)B * H * T * T);
    if (!o || !a) abort();
    attention_forward_ref(o, a, qkv, B, T, H, D, window);
    rows_gather(out, o, HD, rows, S, HD);
    for (int s = 0; s < S; s++)
        for (int h = 0; h < H; h++) {
            int b = rows[s] / T, t = rows[s] % T;
            memcpy(att + ((size_t)h * S + s) * T, a + (((size_t)b * H + h) * T + t) * T,
                   sizeof(real) * (size_t)T);
        }
    free(qkv), free(o), free(a);
}

void attention_rows_backward_ref(real *dq, real *dkv, const real *dout, const real *q,
                                 const real *kv, const real *att, const int *rows, int S,
                                 int B, int T, int H, int D, int window) {
    const int N = B * T, HD = H * D;
    real *qkv = rows_ref_pack(q, kv, rows, S, N, HD);
    real *a = calloc((size_t)B * H * T * T, sizeof(real));
    real *g = calloc((size_t)N * HD, sizeof(real));
    real *dqkv = calloc((size_t)N * 3 * HD, sizeof(real));
    if (!a || !g || !dqkv) abort();
    for (int s = 0; s < S; s++) {
        int b = rows[s] / T, t = rows[s] % T;
        memcpy(g + (size_t)rows[s] * HD, dout + (size_t)s * HD, sizeof(real) * HD);
        for (int h = 0; h < H; h++)
            memcpy(a + (((size_t)b * H + h) * T + t) * T, att + ((size_t)h * S + s) * T,
                   sizeof(real) * (size_t)T);
    }
    attention_backward_ref(dqkv, g, qkv, a, B, T, H, D, window);
    for (int s = 0; s < S; s++) {
        real *d = dq + (size_t)s * HD;
        const real *r = dqkv + (size_t)rows[s] * 3 * HD;
        for (int c = 0; c < HD; c++) d[c] += r[c];
    }
    for (int i = 0; i < N; i++) {
        real *d = dkv + (size_t)i * 2 * HD;
        const real *r = dqkv + (size_t)i * 3 * HD + HD;
        for (int c = 0; c < 2 * HD; c++) d[c] += r[c];
    }
    free(qkv), free(a), free(g), free(dqkv);
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
