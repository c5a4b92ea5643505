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
 * attended output. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __SSE__
#include <xmmintrin.h>
#endif

#include "kernels.h"

/* Exported for tests/test_perf.c only (no header declares it). */
float attention_expf(float x);

/* Query rows per GEMM block: small enough that the band skips most of the
 * masked upper triangle for long T, large enough to keep GEMMs matmul-shaped.
 * Wide heads take taller blocks (measured: D 256 forward about 12% faster with
 * 128 rows; D <= 128 slower). */
#define ATT_ROWS 64
#define ATT_ROWS_WIDE 128
/* Most scratch slots (threads) the fast path provides for. */
#define ATT_MAX_SLOTS 64
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

/* exp(x) in float for x <= 0, vectorisable: the same routine as
 * cross_entropy.c's (Cody-Waite reduction, Cephes' degree-6 polynomial, 2^n
 * in the exponent bits; below 2 ulp; 0 below -87.3; NaN stays NaN). */
static inline float expf_fast(float x) {
    const float lo = -87.33654f, hi = 88.0f;
    float xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    float t = xc * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    /* 2^n; a NaN x leaves n NaN, which must not reach the integer
     * conversion (y is NaN already and stays so) */
    union {
        float f;
        uint32_t u;
    } s;
    s.u = (uint32_t)((int32_t)(n == n ? n : 0.0f) + 127) << 23;
    y = y * s.f;
    return x < lo ? 0.0f : y;
}

float attention_expf(float x) { return expf_fast(x); }

#ifdef MEMLAB_DOUBLE
#define ATT_EXP(x) exp(x)
#else
#define ATT_EXP(x) expf_fast(x)
#endif

/* Scratch slots: one per processor (fixed for the process), so that the size
 * asked for at build time still holds whatever the thread setting is later. */
static int att_slots(void) {
#ifdef _OPENMP
    int p = omp_get_num_procs();
    return p < 1 ? 1 : p > ATT_MAX_SLOTS ? ATT_MAX_SLOTS : p;
#else
    return 1;
#endif
}

/* Threads for B*H pairs of T x T x D: memlab's thread setting (OpenBLAS's
 * thread count), at most one per slot, per pair and per ATT_MIN_WORK. */
static int att_threads(int pairs, int T, int D) {
#ifdef _OPENMP
    if (omp_in_parallel()) return 1;
    long n = openblas_get_num_threads(), s = att_slots();
    /* about T^2 D / 2 multiply-adds per pair and GEMM: small calls (gradient
     * checks) stay serial rather than wake a thread team */
    long work = (long)pairs * T * (T + 1) / 2 * D;
    if (n > s) n = s;
    if (n > pairs) n = pairs;
    if (n > work / ATT_MIN_WORK) n = work / ATT_MIN_WORK;
    return n > 1 ? (int)n : 1;
#else
    (void)pairs, (void)T, (void)D;
    return 1;
#endif
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
    return (size_t)att_slots() * att_slot_size(T);
}

/* Softmax of row a[lo..i] in place (scores already scaled); the rest of the
 * row a[0..T) becomes exact zeros. */
static void att_softmax_row(real *a, int lo, int i, int T) {
    real mx = a[lo];
#pragma omp simd reduction(max : mx)
    for (int j = lo; j <= i; j++) mx = a[j] > mx ? a[j] : mx;
    real sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = lo; j <= i; j++) {
        real e = ATT_EXP(a[j] - mx);
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
        for (int i = r0; i < r1; i++) att_softmax_row(A + (size_t)i * T, att_lo(i, window), i, T);
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

/* Run the forward (backward = 0) or backward over all B*H pairs: in this
 * thread when memlab runs one thread (no OpenMP region is entered, so a
 * forked sweep worker never touches the OpenMP runtime), else split into
 * contiguous ranges of pairs, one per thread, BLAS single-threaded inside. */
static void att_run(const att_call *c, int backward) {
    const int pairs = c->B * c->H;
    int nt = att_threads(pairs, c->T, c->D);
    if (nt == 1) {
        if (backward)
            att_backward_range(c, 0, pairs, 0);
        else
            att_forward_range(c, 0, pairs);
        return;
    }
    int blas = openblas_get_num_threads();
#ifdef __SSE__
    unsigned csr = _mm_getcsr(); /* denormal flushing is per thread */
#endif
    openblas_set_num_threads(1);
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), n = omp_get_num_threads();
#else
        int t = 0, n = 1;
#endif
#ifdef __SSE__
        _mm_setcsr(csr);
#endif
        int bh0 = (int)((long)pairs * t / n), bh1 = (int)((long)pairs * (t + 1) / n);
        if (backward)
            att_backward_range(c, bh0, bh1, t);
        else
            att_forward_range(c, bh0, bh1);
    }
    openblas_set_num_threads(blas);
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
