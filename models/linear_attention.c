/* linear_attention.c: feature maps and the causal linear-attention core in its
 * three equivalent forms, forward and backward.
 *
 * Dimension letters: B batch, T time, H heads, Dk key width, Dv value width,
 * C chunk length, NC number of chunks. Per (b, h):
 *   S_t = S_{t-1} + k_t v_t^T [Dk,Dv],  z_t = z_{t-1} + k_t [Dk],
 *   num_t = S_t^T q_t,  o_t = num_t / (q_t.z_t + eps) or num_t.
 *   LA_RECURRENT  token by token: the reference, and the generation form.
 *   LA_PARALLEL   A = tril(Q K^T) [T,T]; O = A V, den = A 1 + eps.
 *   LA_CHUNKWISE  O_c = Q_c S_{c-1} + tril(Q_c K_c^T) V_c; S_c = S_{c-1} + K_c^T V_c;
 *                 the tril products run on the sub-blocks on or below the
 *                 diagonal only (LA_SUB rows each; whole chunks when the
 *                 products run on AMX tiles, see la_sub).
 * q, k, v are read in place through their row strides (so a packed [B,T,3,H,D]
 * projection needs no copy); only the T x T or C x C score blocks, the
 * per-chunk states and dO / den live in save or scratch.
 *
 * Saved by forward (save), in this order:
 *   den [B,T,H]                   when normalize (all forms);
 *   S_{c-1} (+ z_{c-1}) of chunks c = 1..NC-1 [B,H,NC-1,Dk*Dv (+Dk)]
 *                                 chunkwise only; the first chunk's prefix
 *                                 state is zero and not stored.
 * The feature map, projections, output norm and gating belong to the mixer.
 *
 * Threads: the batch is shared among memlab's threads (OpenBLAS's thread
 * count, set by --threads), a contiguous block of sequences each, with its own
 * slot of scratch and BLAS single-threaded inside; with one thread no OpenMP
 * region is entered. The feature maps vectorise (the float build with its own
 * exp, see expf_fast). */
#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fastexp.h"
#include "gemm_bf16.h"
#include "kernels.h"
#include "parallel.h"

/* Fewest multiply-adds per thread worth a parallel region. */
#define LA_MIN_WORK (1L << 20)

/* ---- feature maps ------------------------------------------------------- */

/* phi(x): identity, elu(x)+1 (= x+1 above 0, e^x below), relu. One loop per
 * map so that each vectorises; exp only ever sees min(x, 0). */
void featuremap_forward(real *out, const real *x, size_t n, fmap_kind f) {
    switch (f) {
    case FMAP_ELU1:
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            real v = x[i], e = ML_EXP(v < 0 ? v : 0);
            out[i] = v > 0 ? v + 1 : e;
        }
        break;
    case FMAP_RELU:
#pragma omp simd
        for (size_t i = 0; i < n; i++) out[i] = x[i] > 0 ? x[i] : 0;
        break;
    case FMAP_IDENTITY:
    default:
        for (size_t i = 0; i < n; i++) out[i] = x[i];
        break;
    }
}

/* dx += dout * phi'(x). At the kink of relu, phi'(0) = 0 (as PyTorch); elu+1
 * is C^1 at 0 so either side gives 1. */
void featuremap_backward(real *dx, const real *dout, const real *x, size_t n, fmap_kind f) {
    if (!dx) return;
    switch (f) {
    case FMAP_ELU1:
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            real v = x[i], e = ML_EXP(v < 0 ? v : 0);
            dx[i] += dout[i] * (v > 0 ? 1 : e);
        }
        break;
    case FMAP_RELU:
#pragma omp simd
        for (size_t i = 0; i < n; i++) dx[i] += x[i] > 0 ? dout[i] : 0;
        break;
    case FMAP_IDENTITY:
    default:
        for (size_t i = 0; i < n; i++) dx[i] += dout[i];
        break;
    }
}

void featuremap_backward_set(real *dx, const real *dout, const real *x, const real *phi, size_t n,
                             fmap_kind f) {
    switch (f) {
    case FMAP_ELU1:
#pragma omp simd
        for (size_t i = 0; i < n; i++) dx[i] = dout[i] * (x[i] > 0 ? 1 : phi[i]);
        break;
    case FMAP_RELU:
#pragma omp simd
        for (size_t i = 0; i < n; i++) dx[i] = x[i] > 0 ? dout[i] : 0;
        break;
    case FMAP_IDENTITY:
    default:
        memcpy(dx, dout, n * sizeof(real));
        break;
    }
}

/* ---- shared pieces -------------------------------------------------------- */

/* Chunk length actually used: chunks longer than T are one chunk of T. */
static int la_chunk(const linattn_dims *d) {
    assert(d->chunk >= 1);
    return d->chunk < d->T ? d->chunk : d->T;
}

/* Number of chunks, the last one possibly shorter; 0 when T = 0. */
static int la_nchunks(const linattn_dims *d) {
    int C = la_chunk(d);
    return C > 0 ? (d->T + C - 1) / C : 0;
}

/* Prefix states forward saves per (b, h): those of chunks 1..NC-1. */
static int la_nsaved(const linattn_dims *d) {
    int NC = la_nchunks(d);
    return NC > 1 ? NC - 1 : 0;
}

/* Reals of one saved chunk state: S [Dk,Dv], then z [Dk] when normalising. */
static size_t la_state_size(const linattn_dims *d) {
    return (size_t)d->Dk * d->Dv + (d->normalize ? (size_t)d->Dk : 0);
}

/* Length of the den [B,T,H] block that opens save. */
static size_t la_den_size(const linattn_dims *d) {
    return d->normalize ? (size_t)d->B * d->T * d->H : 0;
}

/* For n rows of one head (dout/out rows H*Dv apart, den entries H apart):
 * dn[n,Dv] = d num = dout / den and g[n] = d den = -(dout . o) / den; without
 * normalize dn = dout and g is left alone (callers do not read it). */
static void la_dnum(real *dn, real *g, const real *dout, const real *out, const real *den,
                    int n, const linattn_dims *d) {
    const int ldo = d->H * d->Dv, Dv = d->Dv;
    for (int t = 0; t < n; t++) {
        const real *dot = dout + (size_t)t * ldo;
        real *dnt = dn + (size_t)t * Dv;
        if (!d->normalize) {
            memcpy(dnt, dot, (size_t)Dv * sizeof(real));
            continue;
        }
        const real *ot = out + (size_t)t * ldo;
        real inv = 1 / den[(size_t)t * d->H], s = 0;
        for (int j = 0; j < Dv; j++) {
            dnt[j] = dot[j] * inv;
            s += dot[j] * ot[j];
        }
        g[t] = -s * inv;
    }
}

/* Reals forward saves: den when normalising (every form rebuilds the rest
 * from q, k, v), plus the prefix state of every chunk but the first (zero)
 * for the chunkwise form, whose backward walks the chunks in reverse and
 * cannot rebuild them cheaply. */
size_t linattn_save_size(const linattn_dims *d) {
    size_t n = la_den_size(d);
    if (d->form == LA_CHUNKWISE)
        n += (size_t)d->B * d->H * la_nsaved(d) * la_state_size(d);
    return n;
}

/* Scratch of one thread, shared by forward and backward (the larger of the two):
 *   recurrent  S, dS [Dk,Dv], z, dz [Dk], dn [Dv];
 *   parallel   A, dA [T,T], dn [T,Dv], g [T];
 *   chunkwise  A, dA [C,C], dn [C,Dv], g [C], dS [Dk,Dv], dz [Dk]; a forward
 *              called without save keeps its running state where dS, dz go. */
static size_t la_slot_size(const linattn_dims *d) {
    size_t Dk = (size_t)d->Dk, Dv = (size_t)d->Dv, T = (size_t)d->T, n;
    switch (d->form) {
    case LA_PARALLEL: n = 2 * T * T + T * Dv + T; break;
    case LA_CHUNKWISE: {
        size_t C = (size_t)la_chunk(d);
        n = 2 * C * C + C * Dv + C + Dk * Dv + Dk;
        break;
    }
    case LA_RECURRENT:
    default: n = 2 * (Dk * Dv + Dk) + Dv; break;
    }
    return (n + 15) & ~(size_t)15;
}

/* One slot (above) per thread that may run: batches are shared among
 * memlab's threads (see linattn_forward). */
size_t linattn_scratch_size(const linattn_dims *d) { return (size_t)ml_par_slots() * la_slot_size(d); }

/* ---- recurrent form --------------------------------------------------------- */

/* Token-by-token recurrence, straight from the definition. */
static void la_recurrent_forward(real *out, real *den, const real *q, const real *k,
                                 const real *v, const linattn_dims *d, real *scratch) {
    const int T = d->T, H = d->H, Dk = d->Dk, Dv = d->Dv;
    real *S = scratch, *z = S + (size_t)Dk * Dv;
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++) {
            memset(S, 0, (size_t)Dk * Dv * sizeof(real));
            memset(z, 0, (size_t)Dk * sizeof(real));
            for (int t = 0; t < T; t++) {
                size_t bt = (size_t)b * T + t;
                const real *qt = q + bt * d->q_stride + (size_t)h * Dk;
                const real *kt = k + bt * d->k_stride + (size_t)h * Dk;
                const real *vt = v + bt * d->v_stride + (size_t)h * Dv;
                real *ot = out + (bt * H + h) * Dv;
                for (int i = 0; i < Dk; i++) {
                    for (int j = 0; j < Dv; j++) S[(size_t)i * Dv + j] += kt[i] * vt[j];
                    z[i] += kt[i];
                }
                for (int j = 0; j < Dv; j++) ot[j] = 0;
                for (int i = 0; i < Dk; i++)
                    for (int j = 0; j < Dv; j++) ot[j] += S[(size_t)i * Dv + j] * qt[i];
                if (!d->normalize) continue;
                real dn = d->eps;
                for (int i = 0; i < Dk; i++) dn += qt[i] * z[i];
                for (int j = 0; j < Dv; j++) ot[j] /= dn;
                if (den) den[bt * H + h] = dn;
            }
        }
}

/* Two sweeps per head: forward in time for dq_t = S_t dn_t + g_t z_t (which
 * needs the prefix states), then backward in time accumulating
 * dS_t = sum_{s>=t} q_s dn_s^T and dz_t = sum_{s>=t} g_s q_s for
 * dk_t = dS_t v_t + dz_t and dv_t = dS_t^T k_t. Rebuilding S_t in order avoids
 * storing T states or subtracting k v^T back out (which drifts). */
static void la_recurrent_backward(real *dq, real *dk, real *dv, const real *dout,
                                  const real *out, const real *den, const real *q,
                                  const real *k, const real *v, const linattn_dims *d,
                                  real *scratch) {
    const int T = d->T, H = d->H, Dk = d->Dk, Dv = d->Dv;
    real *S = scratch, *dS = S + (size_t)Dk * Dv, *z = dS + (size_t)Dk * Dv;
    real *dz = z + Dk, *dn = dz + Dk;
    real g = 0;
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++) {
            const real *db = den ? den + (size_t)b * T * H + h : NULL;
            const real *dob = dout + ((size_t)b * T * H + h) * Dv;
            const real *ob = out + ((size_t)b * T * H + h) * Dv;
            if (dq) {
                memset(S, 0, (size_t)Dk * Dv * sizeof(real));
                memset(z, 0, (size_t)Dk * sizeof(real));
                for (int t = 0; t < T; t++) {
                    size_t bt = (size_t)b * T + t, to = (size_t)t * H * Dv;
                    const real *kt = k + bt * d->k_stride + (size_t)h * Dk;
                    const real *vt = v + bt * d->v_stride + (size_t)h * Dv;
                    real *dqt = dq + bt * d->q_stride + (size_t)h * Dk;
                    la_dnum(dn, &g, dob + to, ob + to, db ? db + (size_t)t * H : NULL, 1, d);
                    for (int i = 0; i < Dk; i++) {
                        real s = 0;
                        for (int j = 0; j < Dv; j++) {
                            S[(size_t)i * Dv + j] += kt[i] * vt[j];
                            s += S[(size_t)i * Dv + j] * dn[j];
                        }
                        z[i] += kt[i];
                        dqt[i] += d->normalize ? s + g * z[i] : s;
                    }
                }
            }
            if (!dk && !dv) continue;
            memset(dS, 0, (size_t)Dk * Dv * sizeof(real));
            memset(dz, 0, (size_t)Dk * sizeof(real));
            for (int t = T - 1; t >= 0; t--) {
                size_t bt = (size_t)b * T + t, to = (size_t)t * H * Dv;
                const real *qt = q + bt * d->q_stride + (size_t)h * Dk;
                const real *kt = k + bt * d->k_stride + (size_t)h * Dk;
                const real *vt = v + bt * d->v_stride + (size_t)h * Dv;
                la_dnum(dn, &g, dob + to, ob + to, db ? db + (size_t)t * H : NULL, 1, d);
                for (int i = 0; i < Dk; i++) {
                    for (int j = 0; j < Dv; j++) dS[(size_t)i * Dv + j] += qt[i] * dn[j];
                    if (d->normalize) dz[i] += g * qt[i];
                }
                if (dk) {
                    real *dkt = dk + bt * d->k_stride + (size_t)h * Dk;
                    for (int i = 0; i < Dk; i++) {
                        real s = d->normalize ? dz[i] : 0;
                        for (int j = 0; j < Dv; j++) s += dS[(size_t)i * Dv + j] * vt[j];
                        dkt[i] += s;
                    }
                }
                if (dv) {
                    real *dvt = dv + bt * d->v_stride + (size_t)h * Dv;
                    for (int i = 0; i < Dk; i++)
                        for (int j = 0; j < Dv; j++) dvt[j] += dS[(size_t)i * Dv + j] * kt[i];
                }
            }
        }
}

/* ---- masked score blocks ------------------------------------------------------ */

/* Rows per sub-block of the intra-chunk products. Timed at chunk 64 on one
 * core against 8, 32 and 64 (no blocking): 16 was fastest at D 64 and tied
 * with 8 at D 256, where 32 and 64 skip less of the masked work. */
#define LA_SUB 16

/* Rows per sub-block for the products at hand: LA_SUB, or none (one block
 * per chunk) when they run on AMX tiles, where a call's fixed cost dwarfs a
 * small product's work (one core: a 64 x 64 x 256 product 5 us, its four
 * 16-row band products 9.5 us together). */
static int la_sub_rows; /* linattn_set_sub; 0: the choice below */

void linattn_set_sub(int rows) { la_sub_rows = rows > 0 ? rows : 0; }

static int la_sub(void) {
    if (la_sub_rows) return la_sub_rows;
#ifdef MEMLAB_DOUBLE
    return LA_SUB; /* double products never leave OpenBLAS */
#else
    return ml_matmul_bf16() && gemm_bf16_amx() ? 1 << 30 : LA_SUB;
#endif
}

/* The masked products of L rows (a chunk, or all T for the parallel form)
 * run on the sub-blocks of `sub` rows and columns on or below the diagonal of
 * the L x L score block: row block [r0, r1) with the columns [0, r1). Only the
 * diagonal sub-blocks are masked; the entries right of them are never written
 * or read, so L > sub rows skip close to half of the full block's work. The
 * parallel form passes sub = T: one block, masked. */

/* Query-key pairs the chunkwise form's intra-chunk products compute per
 * (b, h): over the chunks of T, the row blocks' rows times their columns. */
double linattn_band_pairs(int T, int chunk) {
    double n = 0;
    const int sub = la_sub();
    if (chunk < 1) return 0;
    for (int t0 = 0; t0 < T; t0 += chunk) {
        int L = T - t0 < chunk ? T - t0 : chunk;
        for (int r0 = 0; r0 < L; r0 += sub) {
            int r1 = L - r0 > sub ? r0 + sub : L;
            n += (double)(r1 - r0) * r1;
        }
    }
    return n;
}

/* A[i,j] = X_i . Y_j (+ g_i with g) for j <= i and 0 for i < j < r1, on the
 * sub-blocks above: rows of X and Y are K wide, ldx and ldy apart; A is
 * [L,L] with leading dimension L. */
static void la_band_scores(real *A, const real *X, int ldx, const real *Y, int ldy, int K,
                           int L, const real *g, int sub) {
    for (int r0 = 0; r0 < L; r0 += sub) {
        const int r1 = L - r0 > sub ? r0 + sub : L;
        ml_gemm(0, 1, r1 - r0, r1, K, 1, X + (size_t)r0 * ldx, ldx, Y, ldy, 0,
                A + (size_t)r0 * L, L);
        for (int i = r0; i < r1; i++) {
            real *Ai = A + (size_t)i * L;
            if (g)
                for (int j = 0; j <= i; j++) Ai[j] += g[i];
            memset(Ai + i + 1, 0, (size_t)(r1 - i - 1) * sizeof(real));
        }
    }
}

/* out = beta out + A X for A from la_band_scores (zero above the diagonal):
 * row block [r0, r1) of out reads columns [0, r1) of A, rows [0, r1) of X;
 * X and out are N wide, rows ldx and ldo apart. */
static void la_band_mul(real *out, int ldo, const real *A, int L, const real *X, int ldx, int N,
                        real beta, int sub) {
    for (int r0 = 0; r0 < L; r0 += sub) {
        const int r1 = L - r0 > sub ? r0 + sub : L;
        ml_gemm(0, 0, r1 - r0, N, r1, 1, A + (size_t)r0 * L, L, X, ldx, beta,
                out + (size_t)r0 * ldo, ldo);
    }
}

/* out += A^T X for A from la_band_scores: column block [c0, c1) of A (rows
 * [c0, c1) of out) reads rows [c0, L) of A and of X. */
static void la_band_mul_t(real *out, int ldo, const real *A, int L, const real *X, int ldx,
                          int N, int sub) {
    for (int c0 = 0; c0 < L; c0 += sub) {
        const int c1 = L - c0 > sub ? c0 + sub : L;
        ml_gemm(1, 0, c1 - c0, N, L - c0, 1, A + (size_t)c0 * L + c0, L, X + (size_t)c0 * ldx,
                ldx, 1, out + (size_t)c0 * ldo, ldo);
    }
}

/* ---- parallel form ------------------------------------------------------------ */

/* O = A V with A = tril(Q K^T); den_t = sum_j A_tj + eps = q_t.z_t + eps. */
static void la_parallel_forward(real *out, real *den, const real *q, const real *k,
                                const real *v, const linattn_dims *d, real *scratch) {
    const int T = d->T, H = d->H, Dk = d->Dk, Dv = d->Dv, ldo = H * Dv;
    real *A = scratch;
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++) {
            const real *qb = q + (size_t)b * T * d->q_stride + (size_t)h * Dk;
            const real *kb = k + (size_t)b * T * d->k_stride + (size_t)h * Dk;
            const real *vb = v + (size_t)b * T * d->v_stride + (size_t)h * Dv;
            real *ob = out + ((size_t)b * T * H + h) * Dv;
            la_band_scores(A, qb, d->q_stride, kb, d->k_stride, Dk, T, NULL, T);
            la_band_mul(ob, ldo, A, T, vb, d->v_stride, Dv, 0, T);
            if (!d->normalize) continue;
            for (int t = 0; t < T; t++) {
                real s = d->eps;
                for (int j = 0; j <= t; j++) s += A[(size_t)t * T + j];
                real inv = 1 / s;
                for (int j = 0; j < Dv; j++) ob[(size_t)t * ldo + j] *= inv;
                if (den) den[((size_t)b * T + t) * H + h] = s;
            }
        }
}

/* dA = tril(dn V^T + g 1^T); dQ += dA K, dK += dA^T Q, dV += A^T dn. */
static void la_parallel_backward(real *dq, real *dk, real *dv, const real *dout,
                                 const real *out, const real *den, const real *q,
                                 const real *k, const real *v, const linattn_dims *d,
                                 real *scratch) {
    const int T = d->T, H = d->H, Dk = d->Dk, Dv = d->Dv;
    real *A = scratch, *dA = A + (size_t)T * T, *dn = dA + (size_t)T * T;
    real *g = dn + (size_t)T * Dv;
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++) {
            const real *qb = q + (size_t)b * T * d->q_stride + (size_t)h * Dk;
            const real *kb = k + (size_t)b * T * d->k_stride + (size_t)h * Dk;
            const real *vb = v + (size_t)b * T * d->v_stride + (size_t)h * Dv;
            size_t ob = ((size_t)b * T * H + h) * Dv;
            la_dnum(dn, g, dout + ob, out + ob, den ? den + (size_t)b * T * H + h : NULL, T, d);
            la_band_scores(A, qb, d->q_stride, kb, d->k_stride, Dk, T, NULL, T);
            la_band_scores(dA, dn, Dv, vb, d->v_stride, Dv, T, d->normalize ? g : NULL, T);
            if (dq)
                la_band_mul(dq + (size_t)b * T * d->q_stride + (size_t)h * Dk, d->q_stride, dA, T,
                            kb, d->k_stride, Dk, 1, T);
            if (dk)
                la_band_mul_t(dk + (size_t)b * T * d->k_stride + (size_t)h * Dk, d->k_stride, dA,
                              T, qb, d->q_stride, Dk, T);
            if (dv)
                la_band_mul_t(dv + (size_t)b * T * d->v_stride + (size_t)h * Dv, d->v_stride, A, T,
                              dn, Dv, Dv, T);
        }
}

/* ---- chunkwise form ------------------------------------------------------------- */

/* Per head, chunk by chunk: the output of chunk c reads the prefix state
 * (S, z) of the chunks before it plus the masked intra-chunk scores. With save,
 * the prefix state of each chunk after the first is kept in its own slot (the
 * first is written from chunk 0's update alone, each next one starts as a copy
 * of the one before and takes its chunk's update), which is what backward
 * reads; without save one running state in scratch is updated in place. The
 * first chunk's zero prefix state is never written or read. */
static void la_chunk_forward(real *out, real *den, real *states, const real *q,
                             const real *k, const real *v, const linattn_dims *d,
                             real *scratch) {
    const int T = d->T, H = d->H, Dk = d->Dk, Dv = d->Dv, ldo = H * Dv;
    const int C = la_chunk(d), NC = la_nchunks(d), sub = la_sub();
    const size_t ss = la_state_size(d), SS = (size_t)Dk * Dv;
    real *A = scratch, *run = A + 2 * (size_t)C * C + (size_t)C * Dv + C;
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++) {
            const real *qb = q + (size_t)b * T * d->q_stride + (size_t)h * Dk;
            const real *kb = k + (size_t)b * T * d->k_stride + (size_t)h * Dk;
            const real *vb = v + (size_t)b * T * d->v_stride + (size_t)h * Dv;
            real *ob = out + ((size_t)b * T * H + h) * Dv;
            real *sb = states ? states + ((size_t)b * H + h) * la_nsaved(d) * ss : NULL;
            const real *pre = NULL; /* prefix state of chunk c; NULL (zero) for c = 0 */
            for (int c = 0; c < NC; c++) {
                const int t0 = c * C, L = T - t0 < C ? T - t0 : C;
                const real *qc = qb + (size_t)t0 * d->q_stride;
                const real *kc = kb + (size_t)t0 * d->k_stride;
                const real *vc = vb + (size_t)t0 * d->v_stride;
                real *oc = ob + (size_t)t0 * ldo;
                la_band_scores(A, qc, d->q_stride, kc, d->k_stride, Dk, L, NULL, sub);
                /* the first chunk's prefix state is zero: skip its product */
                if (pre) ml_gemm(0, 0, L, Dv, Dk, 1, qc, d->q_stride, pre, Dv, 0, oc, ldo);
                la_band_mul(oc, ldo, A, L, vc, d->v_stride, Dv, pre ? 1 : 0, sub);
                if (d->normalize) {
                    for (int i = 0; i < L; i++) {
                        const real *qi = qc + (size_t)i * d->q_stride;
                        real s = d->eps;
                        if (pre)
                            for (int j = 0; j < Dk; j++) s += qi[j] * pre[SS + j];
                        for (int j = 0; j <= i; j++) s += A[(size_t)i * L + j];
                        real inv = 1 / s;
                        for (int j = 0; j < Dv; j++) oc[(size_t)i * ldo + j] *= inv;
                        if (den) den[((size_t)b * T + t0 + i) * H + h] = s;
                    }
                }
                if (c + 1 == NC) break;
                /* the prefix state of chunk c + 1: in place without save */
                real *nxt = sb ? sb + (size_t)c * ss : run;
                if (pre && pre != nxt) memcpy(nxt, pre, ss * sizeof(real));
                ml_gemm(1, 0, Dk, Dv, L, 1, kc, d->k_stride, vc, d->v_stride, pre ? 1 : 0, nxt, Dv);
                if (d->normalize) {
                    if (!pre) memset(nxt + SS, 0, (size_t)Dk * sizeof(real));
                    for (int i = 0; i < L; i++)
                        for (int j = 0; j < Dk; j++) nxt[SS + j] += kc[(size_t)i * d->k_stride + j];
                }
                pre = nxt;
            }
        }
}

/* Reverse pass over chunks with dS = sum over later chunks of Q_c^T dn_c and
 * dz = sum of Q_c^T g_c (what the prefix state feeds forward):
 *   intra:  dA = tril(dn V^T + g 1^T); dQ += dA K, dK += dA^T Q, dV += A^T dn
 *           (A and dA on the sub-blocks on or below the diagonal);
 *   inter:  dQ += dn S_{c-1}^T + g z_{c-1}^T; dK += V dS^T + 1 dz^T; dV += K dS. */
static void la_chunk_backward(real *dq, real *dk, real *dv, const real *dout,
                              const real *out, const real *den, const real *states,
                              const real *q, const real *k, const real *v,
                              const linattn_dims *d, real *scratch) {
    const int T = d->T, H = d->H, Dk = d->Dk, Dv = d->Dv, ldo = H * Dv;
    const int C = la_chunk(d), NC = la_nchunks(d), sub = la_sub();
    const size_t ss = la_state_size(d), SS = (size_t)Dk * Dv;
    real *A = scratch, *dA = A + (size_t)C * C, *dn = dA + (size_t)C * C;
    real *g = dn + (size_t)C * Dv, *dS = g + C, *dz = dS + SS;
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++) {
            const size_t qo = (size_t)b * T * d->q_stride + (size_t)h * Dk;
            const size_t ko = (size_t)b * T * d->k_stride + (size_t)h * Dk;
            const size_t vo = (size_t)b * T * d->v_stride + (size_t)h * Dv;
            const size_t oo = ((size_t)b * T * H + h) * Dv;
            const real *sb = states + ((size_t)b * H + h) * la_nsaved(d) * ss;
            memset(dS, 0, SS * sizeof(real));
            memset(dz, 0, (size_t)Dk * sizeof(real));
            for (int c = NC - 1; c >= 0; c--) {
                const int t0 = c * C, L = T - t0 < C ? T - t0 : C;
                const real *qc = q + qo + (size_t)t0 * d->q_stride;
                const real *kc = k + ko + (size_t)t0 * d->k_stride;
                const real *vc = v + vo + (size_t)t0 * d->v_stride;
                /* prefix state of chunk c (saved from chunk 1 on) */
                const real *Sp = c > 0 ? sb + (size_t)(c - 1) * ss : NULL;
                const real *zp = Sp ? Sp + SS : NULL;
                la_dnum(dn, g, dout + oo + (size_t)t0 * ldo, out + oo + (size_t)t0 * ldo,
                        den ? den + ((size_t)b * T + t0) * H + h : NULL, L, d);
                la_band_scores(A, qc, d->q_stride, kc, d->k_stride, Dk, L, NULL, sub);
                la_band_scores(dA, dn, Dv, vc, d->v_stride, Dv, L, d->normalize ? g : NULL, sub);
                /* the first chunk's prefix state (S, z) and the last chunk's
                 * dS, dz are zero: their products are skipped */
                const int first = c == 0, last = c == NC - 1;
                if (dq) {
                    real *dqc = dq + qo + (size_t)t0 * d->q_stride;
                    la_band_mul(dqc, d->q_stride, dA, L, kc, d->k_stride, Dk, 1, sub);
                    if (!first) ml_gemm(0, 1, L, Dk, Dv, 1, dn, Dv, Sp, Dv, 1, dqc, d->q_stride);
                    if (d->normalize && !first)
                        for (int i = 0; i < L; i++)
                            for (int j = 0; j < Dk; j++)
                                dqc[(size_t)i * d->q_stride + j] += g[i] * zp[j];
                }
                if (dk) {
                    real *dkc = dk + ko + (size_t)t0 * d->k_stride;
                    la_band_mul_t(dkc, d->k_stride, dA, L, qc, d->q_stride, Dk, sub);
                    if (!last) ml_gemm(0, 1, L, Dk, Dv, 1, vc, d->v_stride, dS, Dv, 1, dkc, d->k_stride);
                    if (d->normalize && !last)
                        for (int i = 0; i < L; i++)
                            for (int j = 0; j < Dk; j++) dkc[(size_t)i * d->k_stride + j] += dz[j];
                }
                if (dv) {
                    real *dvc = dv + vo + (size_t)t0 * d->v_stride;
                    la_band_mul_t(dvc, d->v_stride, A, L, dn, Dv, Dv, sub);
                    if (!last) ml_gemm(0, 0, L, Dv, Dk, 1, kc, d->k_stride, dS, Dv, 1, dvc, d->v_stride);
                }
                if (c == 0) break;
                ml_gemm(1, 0, Dk, Dv, L, 1, qc, d->q_stride, dn, Dv, 1, dS, Dv);
                if (d->normalize)
                    for (int i = 0; i < L; i++)
                        for (int j = 0; j < Dk; j++)
                            dz[j] += g[i] * qc[(size_t)i * d->q_stride + j];
            }
        }
}

/* ---- dispatch -------------------------------------------------------------------- */

/* One call's tensors; a thread's share is the batches [b0, b1) of it. */
typedef struct la_call {
    real *out, *save, *dq, *dk, *dv, *scratch;
    const real *dout, *cout, *csave, *q, *k, *v;
    const linattn_dims *d;
    int backward;
} la_call;

/* Forward or backward of batches [b0, b1) with scratch slot `slot`: the same
 * form functions on the sub-batch, every tensor offset to batch b0. */
static void la_range(void *ctx, int b0, int b1, int slot) {
    const la_call *c = ctx;
    const int backward = c->backward;
    if (b0 >= b1) return;
    const linattn_dims *d = c->d;
    linattn_dims s = *d;
    s.B = b1 - b0;
    const size_t T = (size_t)d->T, H = (size_t)d->H, B0 = (size_t)b0;
    const size_t qo = B0 * T * d->q_stride, ko = B0 * T * d->k_stride, vo = B0 * T * d->v_stride;
    const size_t oo = B0 * T * H * d->Dv, deno = B0 * T * H;
    const size_t sto = B0 * H * (size_t)la_nsaved(d) * la_state_size(d);
    real *scr = c->scratch + (size_t)slot * la_slot_size(d);
    if (!backward) {
        real *den = c->save && d->normalize ? c->save + deno : NULL;
        real *states = c->save ? c->save + la_den_size(d) + sto : NULL;
        switch (d->form) {
        case LA_PARALLEL:
            la_parallel_forward(c->out + oo, den, c->q + qo, c->k + ko, c->v + vo, &s, scr);
            break;
        case LA_CHUNKWISE:
            la_chunk_forward(c->out + oo, den, states, c->q + qo, c->k + ko, c->v + vo, &s, scr);
            break;
        case LA_RECURRENT:
        default:
            la_recurrent_forward(c->out + oo, den, c->q + qo, c->k + ko, c->v + vo, &s, scr);
            break;
        }
        return;
    }
    const real *den = d->normalize ? c->csave + deno : NULL;
    real *dq = c->dq ? c->dq + qo : NULL, *dk = c->dk ? c->dk + ko : NULL;
    real *dv = c->dv ? c->dv + vo : NULL;
    switch (d->form) {
    case LA_PARALLEL:
        la_parallel_backward(dq, dk, dv, c->dout + oo, c->cout + oo, den, c->q + qo, c->k + ko,
                             c->v + vo, &s, scr);
        break;
    case LA_CHUNKWISE:
        la_chunk_backward(dq, dk, dv, c->dout + oo, c->cout + oo, den,
                          c->csave + la_den_size(d) + sto, c->q + qo, c->k + ko, c->v + vo, &s,
                          scr);
        break;
    case LA_RECURRENT:
    default:
        la_recurrent_backward(dq, dk, dv, c->dout + oo, c->cout + oo, den, c->q + qo, c->k + ko,
                              c->v + vo, &s, scr);
        break;
    }
}

/* All batches, one contiguous block per thread (parallel.h). Each (b, h)
 * writes only its own rows of out, den, states and the gradients, in the same
 * order at any thread count. */
static void la_run(la_call *c, int backward) {
    const linattn_dims *d = c->d;
    /* about T (Dk Dv + C Dk) multiply-adds per sequence and head */
    double work = (double)d->B * d->H * d->T * ((double)d->Dk * d->Dv + (double)la_chunk(d) * d->Dk);
    c->backward = backward;
    ml_par_ranges(d->B, ml_par_threads(d->B, work, LA_MIN_WORK), la_range, c);
}

/* Forward: contract in kernels.h. save may be NULL when no backward follows;
 * otherwise it receives linattn_save_size(d) reals laid out as described at
 * the top of this file. */
void linattn_forward(real *out, real *save, const real *q, const real *k, const real *v,
                     const linattn_dims *d, real *scratch) {
    la_call c = {.out = out, .save = save, .q = q, .k = k, .v = v, .d = d, .scratch = scratch};
    la_run(&c, 0);
}

/* Backward: contract in kernels.h; out and save are what forward produced
 * for the same inputs and dims. */
void linattn_backward(real *dq, real *dk, real *dv, const real *dout, const real *out,
                      const real *save, const real *q, const real *k, const real *v,
                      const linattn_dims *d, real *scratch) {
    if (!dq && !dk && !dv) return;
    la_call c = {.dq = dq, .dk = dk, .dv = dv, .dout = dout, .cout = out, .csave = save,
                 .q = q, .k = k, .v = v, .d = d, .scratch = scratch};
    la_run(&c, 1);
}
