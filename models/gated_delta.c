/* gated_delta.c: the decay and delta rules of the linear-attention family, in
 * recurrent and chunkwise form, forward and backward.
 *
 * Dimension letters: B batch, T time, H heads, Dk key width, Dv value width,
 * C chunk length, L length of the current chunk (C, or less for the last),
 * NC number of chunks, Dx = Dv + Dk. Per (b, h), S_0 = 0:
 *   S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  o_t = S_t^T q_t,
 * a_t = e^{g_t} with the decay switch (else 1), the delta switch turning on the
 * (I - beta k k^T) and beta factors. One kernel serves four rules: additive
 * (neither switch), scalar decay (Mamba-2), delta (DeltaNet), gated delta.
 *
 * Recurrent form: the definition token by token (u_t = v_t - a_t S_{t-1}^T k_t,
 * S_t = a_t S_{t-1} + beta_t k_t u_t^T). Its backward walks the chunks in
 * reverse, rebuilds the chunk's states from the saved checkpoint (S_{t-1}
 * cannot be recovered by running backwards: I - beta k k^T can be singular)
 * and then steps back token by token.
 *
 * Chunkwise form, per chunk with start state S0, G_i = sum_{s<=i} g_s (within
 * the chunk), Gam_i = e^{G_i}, gam_i = e^{G_{L-1} - G_i}, M_ij = e^{G_i - G_j}
 * for j <= i (formed from the difference and masked before exponentiating,
 * never as e^G times e^-G):
 *   A = strict_tril(diag(beta) (K K^T) .* M);  (I + A) [U | Wk] = [diag(beta) V | diag(beta Gam) K]
 *   W = U - Wk S0            (the WY form: S after token i is Gam_i S0 + sum_{j<=i} M_ij k_j w_j^T)
 *   O = diag(Gam) Q S0 + ((Q K^T) .* M) W
 *   S_next = Gam_{L-1} S0 + K^T diag(gam) W
 * Without the delta switch W = V (no solve); without decay every exponential is 1.
 * The solve is one unit lower-triangular TRSM per chunk; everything else GEMM.
 *
 * Saved by forward: the state at the start of every chunk, [B,H,NC,Dk*Dv]
 * (both forms; the recurrent form uses them as checkpoints), and in the
 * chunkwise form every chunk's products, [B,H,NC,gd_cache_size]: P, M (decay),
 * KK, A, X = [U | Wk] and W (delta), so that the backward does not form them
 * again (forming them, once each way, took 15% of a gated DeltaNet training
 * step at d_model 256, L 256 in a perf profile; PyTorch's autograd keeps them
 * too). The last chunk's, when shorter, are packed with its own length as
 * leading dimension, in a full chunk's slot. Feature maps, normalisation of q
 * and k, the gates' parametrisation and the projections belong to the mixers. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fastexp.h"
#include "kernels.h"
#include "parallel.h"

/* Fewest multiply-adds worth a second thread. */
#define GD_MIN_WORK (1L << 20)

/* Chunk length actually used: at most T. */
static int gd_chunk(const gdelta_dims *d) { return d->chunk < d->T ? d->chunk : d->T; }

/* Number of chunks (the last may be short); 0 when T = 0. */
static int gd_nchunks(const gdelta_dims *d) {
    int C = gd_chunk(d);
    return C > 0 ? (d->T + C - 1) / C : 0;
}

/* Scratch regions of either form (unused ones NULL). */
typedef struct gd_work {
    /* chunkwise: per chunk vectors [C] */
    real *G, *Gam, *gam, *dG, *dgam, *db;
    /* chunkwise: [C,C] */
    real *M, *KK, *A, *P, *dP, *dA;
    /* chunkwise: [C,Dx] the solve's right sides and results */
    real *X, *Y;
    /* chunkwise: [C,Dv], [C,Dk] */
    real *W, *dW, *tV, *tK, *KG;
    /* both: [Dk,Dv] running state and state gradients */
    real *S, *dS, *dS2;
    /* recurrent: pre-states of one chunk [C,Dk,Dv], S' [Dk,Dv], u, r [Dv] */
    real *pre, *Sp, *u, *r;
} gd_work;

/* Carve the scratch of d's form out of base (NULL: only measure). Returns
 * the number of reals. */
static size_t gd_carve(const gdelta_dims *d, real *base, gd_work *w) {
    size_t C = (size_t)gd_chunk(d), Dk = (size_t)d->Dk, Dv = (size_t)d->Dv, SS = Dk * Dv;
    size_t used = 0;
#define TAKE(p, n) (w->p = base ? base + used : NULL, used += (n))
    memset(w, 0, sizeof *w);
    TAKE(S, SS);
    TAKE(dS, SS);
    if (d->form == GD_CHUNKWISE) {
        size_t Dx = Dk + Dv;
        TAKE(dS2, SS);
        TAKE(G, C);
        TAKE(Gam, C);
        TAKE(gam, C);
        TAKE(dG, C);
        TAKE(dgam, C);
        TAKE(db, C);
        TAKE(M, C * C);
        TAKE(KK, C * C);
        TAKE(A, C * C);
        TAKE(P, C * C);
        TAKE(dP, C * C);
        TAKE(dA, C * C);
        TAKE(X, C * Dx);
        TAKE(Y, C * Dx);
        TAKE(W, C * Dv);
        TAKE(dW, C * Dv);
        TAKE(tV, C * Dv);
        TAKE(tK, C * Dk);
        TAKE(KG, C * Dk);
    } else {
        TAKE(pre, C * SS);
        TAKE(Sp, SS);
        TAKE(u, Dv);
        TAKE(r, Dv);
    }
#undef TAKE
    return used;
}

/* Reals of one chunk's saved products (chunkwise form): P, then M with
 * decay, then KK, A, X and W with the delta rule. */
static size_t gd_cache_size(const gdelta_dims *d) {
    if (d->form != GD_CHUNKWISE) return 0;
    size_t C = (size_t)gd_chunk(d), n = C * C;
    if (d->decay) n += C * C;
    if (d->delta) n += 2 * C * C + C * ((size_t)2 * d->Dv + d->Dk);
    return n;
}

/* Reals forward saves: one Dk x Dv state per chunk per (b, h), then (chunkwise)
 * one chunk's products per chunk per (b, h). */
size_t gdelta_save_size(const gdelta_dims *d) {
    size_t per = (size_t)d->Dk * d->Dv + gd_cache_size(d);
    return (size_t)d->B * d->H * gd_nchunks(d) * per;
}

/* Point w's chunk products at one chunk's slot of the save. */
static void gd_use_cache(gd_work *w, real *slot, const gdelta_dims *d) {
    size_t C = (size_t)gd_chunk(d), used = 0;
#define TAKE(p, n) (w->p = slot + used, used += (n))
    TAKE(P, C * C);
    if (d->decay) TAKE(M, C * C);
    if (d->delta) {
        TAKE(KK, C * C);
        TAKE(A, C * C);
        TAKE(X, C * ((size_t)d->Dk + d->Dv));
        TAKE(W, C * (size_t)d->Dv);
    }
#undef TAKE
}

/* Scratch for forward or backward of d's form: one slot per thread
 * (parallel.h). */
size_t gdelta_scratch_size(const gdelta_dims *d) {
    gd_work w;
    return (size_t)ml_par_slots() * gd_carve(d, NULL, &w);
}

/* Pointers to one (b, h) head's rows starting at token t. */
typedef struct gd_rows {
    const real *q, *k, *v, *beta, *g;
} gd_rows;

static gd_rows gd_at(const real *q, const real *k, const real *v, const real *beta,
                     const real *g, int b, int h, int t, const gdelta_dims *d) {
    size_t bt = (size_t)b * d->T + t;
    gd_rows r;
    r.q = q + bt * d->q_stride + (size_t)h * d->Dk;
    r.k = k + bt * d->k_stride + (size_t)h * d->Dk;
    r.v = v + bt * d->v_stride + (size_t)h * d->Dv;
    r.beta = d->delta ? beta + bt * d->gate_stride + h : NULL;
    r.g = d->decay ? g + bt * d->gate_stride + h : NULL;
    return r;
}

/* ---- recurrent form --------------------------------------------------------- */

/* One token in place: S = a S; then S += beta k (v - S^T k)^T (delta, u
 * receives v - S^T k) or S += k v^T. */
static void gd_step(real *S, const real *kt, const real *vt, real beta, real a,
                    const gdelta_dims *d, real *u) {
    const int Dk = d->Dk, Dv = d->Dv;
    if (d->decay)
        for (size_t i = 0; i < (size_t)Dk * Dv; i++) S[i] *= a;
    if (d->delta) {
        for (int j = 0; j < Dv; j++) u[j] = vt[j];
        for (int i = 0; i < Dk; i++)
            for (int j = 0; j < Dv; j++) u[j] -= S[(size_t)i * Dv + j] * kt[i];
        for (int i = 0; i < Dk; i++) {
            real bk = beta * kt[i];
            for (int j = 0; j < Dv; j++) S[(size_t)i * Dv + j] += bk * u[j];
        }
    } else {
        for (int i = 0; i < Dk; i++)
            for (int j = 0; j < Dv; j++) S[(size_t)i * Dv + j] += kt[i] * vt[j];
    }
}

/* The definition, token by token; the state at the start of each chunk goes
 * to states when given. */
static void gd_rec_forward(real *out, real *states, const real *q, const real *k,
                           const real *v, const real *beta, const real *g,
                           const gdelta_dims *d, real *scratch) {
    const int T = d->T, H = d->H, Dk = d->Dk, Dv = d->Dv, C = gd_chunk(d), NC = gd_nchunks(d);
    const size_t SS = (size_t)Dk * Dv;
    gd_work w;
    gd_carve(d, scratch, &w);
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++) {
            real *S = w.S;
            memset(S, 0, SS * sizeof(real));
            for (int t = 0; t < T; t++) {
                if (states && t % C == 0)
                    memcpy(states + (((size_t)b * H + h) * NC + t / C) * SS, S, SS * sizeof(real));
                gd_rows r = gd_at(q, k, v, beta, g, b, h, t, d);
                gd_step(S, r.k, r.v, r.beta ? *r.beta : 0, r.g ? REXP(*r.g) : 1, d, w.u);
                real *ot = out + (((size_t)b * T + t) * H + h) * Dv;
                for (int j = 0; j < Dv; j++) ot[j] = 0;
                for (int i = 0; i < Dk; i++)
                    for (int j = 0; j < Dv; j++) ot[j] += S[(size_t)i * Dv + j] * r.q[i];
            }
        }
}

/* Reverse sweep, dS = dL/dS_t carried back. Per token, with S' = a S_{t-1}:
 *   dS += q do^T; dq += S_t do;
 *   delta: r = dS^T k, du = beta r; dbeta += u.r; dk += beta dS u - S' du;
 *          dv += du; dS' = dS - k du^T;
 *   else:  dk += dS v; dv += dS^T k; dS' = dS;
 *   decay: dg += <S', dS'>; dS_{t-1} = a dS'. */
static void gd_rec_backward(real *dq, real *dk, real *dv, real *dbeta, real *dg,
                            const real *dout, const real *states, const real *q,
                            const real *k, const real *v, const real *beta, const real *g,
                            const gdelta_dims *d, real *scratch) {
    const int T = d->T, H = d->H, Dk = d->Dk, Dv = d->Dv, C = gd_chunk(d), NC = gd_nchunks(d);
    const size_t SS = (size_t)Dk * Dv;
    gd_work w;
    gd_carve(d, scratch, &w);
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++) {
            real *dS = w.dS, *St = w.S, *Sp = w.Sp;
            memset(dS, 0, SS * sizeof(real));
            for (int c = NC - 1; c >= 0; c--) {
                const int t0 = c * C, L = T - t0 < C ? T - t0 : C;
                memcpy(w.pre, states + (((size_t)b * H + h) * NC + c) * SS, SS * sizeof(real));
                for (int i = 0; i + 1 < L; i++) {
                    gd_rows r = gd_at(q, k, v, beta, g, b, h, t0 + i, d);
                    memcpy(w.pre + (i + 1) * SS, w.pre + i * SS, SS * sizeof(real));
                    gd_step(w.pre + (i + 1) * SS, r.k, r.v, r.beta ? *r.beta : 0,
                            r.g ? REXP(*r.g) : 1, d, w.u);
                }
                for (int i = L - 1; i >= 0; i--) {
                    const int t = t0 + i;
                    const size_t bt = (size_t)b * T + t;
                    gd_rows r = gd_at(q, k, v, beta, g, b, h, t, d);
                    const real a = r.g ? REXP(*r.g) : 1, bet = r.beta ? *r.beta : 0;
                    const real *dot = dout + (bt * H + h) * Dv;
                    real *dqt = dq ? dq + bt * d->q_stride + (size_t)h * Dk : NULL;
                    real *dkt = dk ? dk + bt * d->k_stride + (size_t)h * Dk : NULL;
                    real *dvt = dv ? dv + bt * d->v_stride + (size_t)h * Dv : NULL;
                    /* S' and S_t of this token (u from the step) */
                    for (size_t e = 0; e < SS; e++) Sp[e] = a * w.pre[i * SS + e];
                    memcpy(St, w.pre + i * SS, SS * sizeof(real));
                    gd_step(St, r.k, r.v, bet, a, d, w.u);
                    for (int x = 0; x < Dk; x++) {
                        real s = 0;
                        for (int j = 0; j < Dv; j++) {
                            dS[(size_t)x * Dv + j] += r.q[x] * dot[j];
                            s += St[(size_t)x * Dv + j] * dot[j];
                        }
                        if (dqt) dqt[x] += s;
                    }
                    if (d->delta) {
                        real ur = 0;
                        for (int j = 0; j < Dv; j++) w.r[j] = 0;
                        for (int x = 0; x < Dk; x++)
                            for (int j = 0; j < Dv; j++) w.r[j] += dS[(size_t)x * Dv + j] * r.k[x];
                        for (int j = 0; j < Dv; j++) {
                            ur += w.u[j] * w.r[j];
                            w.r[j] *= bet; /* now du */
                        }
                        if (dbeta) dbeta[bt * d->gate_stride + h] += ur;
                        if (dvt)
                            for (int j = 0; j < Dv; j++) dvt[j] += w.r[j];
                        for (int x = 0; x < Dk; x++) {
                            real s = 0;
                            for (int j = 0; j < Dv; j++)
                                s += bet * dS[(size_t)x * Dv + j] * w.u[j] -
                                     Sp[(size_t)x * Dv + j] * w.r[j];
                            if (dkt) dkt[x] += s;
                        }
                        for (int x = 0; x < Dk; x++)
                            for (int j = 0; j < Dv; j++) dS[(size_t)x * Dv + j] -= r.k[x] * w.r[j];
                    } else {
                        for (int x = 0; x < Dk; x++) {
                            real s = 0;
                            for (int j = 0; j < Dv; j++) {
                                s += dS[(size_t)x * Dv + j] * r.v[j];
                                if (dvt) dvt[j] += dS[(size_t)x * Dv + j] * r.k[x];
                            }
                            if (dkt) dkt[x] += s;
                        }
                    }
                    if (d->decay) {
                        real s = 0;
                        for (size_t e = 0; e < SS; e++) {
                            s += Sp[e] * dS[e];
                            dS[e] *= a;
                        }
                        if (dg) dg[bt * d->gate_stride + h] += s;
                    }
                }
            }
        }
}

/* ---- chunkwise form ----------------------------------------------------------- */

/* The decay's per-token factors of a chunk: G, Gam and gam. Every exp here
 * and in gd_prep takes a sum of gates g <= 0 (ML_EXP, fastexp.h). */
static void gd_gates(gd_work *w, const gd_rows *r, int L, const gdelta_dims *d) {
    if (!d->decay) return;
    const int gs = d->gate_stride;
    double acc = 0;
    for (int i = 0; i < L; i++) {
        acc += r->g[(size_t)i * gs];
        w->G[i] = (real)acc;
    }
    const real last = w->G[L - 1];
#pragma omp simd
    for (int i = 0; i < L; i++) {
        w->Gam[i] = ML_EXP(w->G[i]);
        w->gam[i] = ML_EXP(last - w->G[i]);
    }
}

/* Everything a chunk needs from its start state S0 (NULL: the first chunk's,
 * zero): G, Gam, gam and M (decay), P = (Q K^T) .* M, and with the delta rule
 * KK, A, X = [U | Wk] and W = U - Wk S0 (see the file header). */
static void gd_prep(gd_work *w, const gd_rows *r, const real *S0, int L,
                    const gdelta_dims *d) {
    const int Dk = d->Dk, Dv = d->Dv, Dx = Dk + Dv, gs = d->gate_stride;
    gd_gates(w, r, L, d);
    if (d->decay)
        for (int i = 0; i < L; i++) {
            real *Mi = w->M + (size_t)i * L;
            const real Gi = w->G[i];
#pragma omp simd
            for (int j = 0; j <= i; j++) Mi[j] = ML_EXP(Gi - w->G[j]);
        }
    ml_gemm(0, 1, L, L, Dk, 1, r->q, d->q_stride, r->k, d->k_stride, 0, w->P, L);
    for (int i = 0; i < L; i++) {
        real *Pi = w->P + (size_t)i * L;
        if (d->decay)
            for (int j = 0; j <= i; j++) Pi[j] *= w->M[(size_t)i * L + j];
        for (int j = i + 1; j < L; j++) Pi[j] = 0;
    }
    if (!d->delta) return;
    ml_gemm(0, 1, L, L, Dk, 1, r->k, d->k_stride, r->k, d->k_stride, 0, w->KK, L);
    for (int i = 0; i < L; i++) {
        real bi = r->beta[(size_t)i * gs];
        real gi = d->decay ? w->Gam[i] : 1;
        const real *vi = r->v + (size_t)i * d->v_stride, *ki = r->k + (size_t)i * d->k_stride;
        real *Ai = w->A + (size_t)i * L, *Xi = w->X + (size_t)i * Dx;
        for (int j = 0; j < L; j++)
            Ai[j] = j < i ? bi * w->KK[(size_t)i * L + j] * (d->decay ? w->M[(size_t)i * L + j] : 1)
                          : 0;
        for (int j = 0; j < Dv; j++) Xi[j] = bi * vi[j];
        for (int j = 0; j < Dk; j++) Xi[Dv + j] = bi * gi * ki[j];
    }
    ml_trsm_unit_lower(0, L, Dx, w->A, L, w->X, Dx);
    for (int i = 0; i < L; i++)
        memcpy(w->W + (size_t)i * Dv, w->X + (size_t)i * Dx, Dv * sizeof(real));
    if (S0) ml_gemm(0, 0, L, Dv, Dk, -1, w->X + Dv, Dx, S0, Dv, 1, w->W, Dv);
}

/* Chunk by chunk: O = diag(Gam) Q S0 + P W, then the state update. With
 * states, chunk c reads slot c and writes slot c + 1; without, one running
 * state in scratch is updated in place (W was formed before the update).
 * The first chunk's start state is zero: its products are skipped (at
 * T <= chunk they would be most of the work) and it is never stored. */
static void gd_chunk_forward(real *out, real *states, real *cache, const real *q,
                             const real *k, const real *v, const real *beta, const real *g,
                             const gdelta_dims *d, real *scratch) {
    const int T = d->T, H = d->H, Dk = d->Dk, Dv = d->Dv, ldo = H * Dv;
    const int C = gd_chunk(d), NC = gd_nchunks(d);
    const size_t SS = (size_t)Dk * Dv, CK = gd_cache_size(d);
    gd_work w;
    gd_carve(d, scratch, &w);
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++) {
            /* slot 0, the zero start state, is never read or written */
            real *S = states ? states + ((size_t)b * H + h) * NC * SS : w.S;
            for (int c = 0; c < NC; c++) {
                const int t0 = c * C, L = T - t0 < C ? T - t0 : C;
                gd_rows r = gd_at(q, k, v, beta, g, b, h, t0, d);
                real *oc = out + (((size_t)b * T + t0) * H + h) * Dv;
                const real *S0 = c > 0 ? S : NULL;
                if (cache) gd_use_cache(&w, cache + (((size_t)b * H + h) * NC + c) * CK, d);
                gd_prep(&w, &r, S0, L, d);
                const real *Wp = d->delta ? w.W : r.v;
                const int ldw = d->delta ? Dv : d->v_stride;
                if (S0) {
                    ml_gemm(0, 0, L, Dv, Dk, 1, r.q, d->q_stride, S0, Dv, 0, oc, ldo);
                    if (d->decay)
                        for (int i = 0; i < L; i++)
                            for (int j = 0; j < Dv; j++) oc[(size_t)i * ldo + j] *= w.Gam[i];
                }
                ml_gemm(0, 0, L, Dv, L, 1, w.P, L, Wp, ldw, S0 ? 1 : 0, oc, ldo);
                if (c + 1 == NC) break;
                real *Sn = S;
                if (states) {
                    Sn = S + SS;
                    if (S0) memcpy(Sn, S, SS * sizeof(real));
                }
                const real *Kg = r.k;
                int ldk = d->k_stride;
                if (d->decay) {
                    if (S0)
                        for (size_t e = 0; e < SS; e++) Sn[e] *= w.Gam[L - 1];
                    for (int i = 0; i < L; i++)
                        for (int j = 0; j < Dk; j++)
                            w.KG[(size_t)i * Dk + j] = w.gam[i] * r.k[(size_t)i * d->k_stride + j];
                    Kg = w.KG;
                    ldk = Dk;
                }
                ml_gemm(1, 0, Dk, Dv, L, 1, Kg, ldk, Wp, ldw, S0 ? 1 : 0, Sn, Dv);
                S = Sn;
            }
        }
}

/* Reverse over chunks with dS = dL/d(state after the chunk); per chunk (file
 * header notation, X = [U | Wk]):
 *   dW = P^T dO + diag(gam) K dS;   dP = tril(dO W^T);   dQ += (dP .* M) K,
 *   dK += (dP .* M)^T Q;  dQ += diag(Gam) dO S0^T;  dK += diag(gam) W dS^T;
 *   dS0 = Gam_{L-1} dS + Q^T diag(Gam) dO - Wk^T dW;
 *   delta: (I + A)^T Y = [dW | -dW S0^T]; dA = -strict_tril(Y X^T), giving
 *   dV += diag(beta) Y_U, dK += diag(beta Gam) Y_Wk, dbeta, and through
 *   KK = K K^T dK += (dKK + dKK^T) K; without delta dV += dW;
 *   decay: every use of Gam, gam, M adds to dG, and dg = reverse cumsum of dG.
 * The first chunk's S0 and the last chunk's dS are zero: the products with
 * them are skipped, as are their (zero) terms. */
static void gd_chunk_backward(real *dq, real *dk, real *dv, real *dbeta, real *dg,
                              const real *dout, const real *states, const real *cache,
                              const real *q, const real *k, const real *v, const real *beta,
                              const real *g, const gdelta_dims *d, real *scratch) {
    const int T = d->T, H = d->H, Dk = d->Dk, Dv = d->Dv, Dx = Dk + Dv, ldo = H * Dv;
    const int C = gd_chunk(d), NC = gd_nchunks(d), gs = d->gate_stride;
    const size_t SS = (size_t)Dk * Dv, CK = gd_cache_size(d);
    gd_work w;
    gd_carve(d, scratch, &w);
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++) {
            real *dS = w.dS, *dS2 = w.dS2;
            memset(dS, 0, SS * sizeof(real));
            for (int c = NC - 1; c >= 0; c--) {
                const int t0 = c * C, L = T - t0 < C ? T - t0 : C;
                const size_t bt0 = (size_t)b * T + t0;
                const real *S0 = c > 0 ? states + (((size_t)b * H + h) * NC + c) * SS : NULL;
                const int last = c == NC - 1; /* dS is zero */
                gd_rows r = gd_at(q, k, v, beta, g, b, h, t0, d);
                const real *dOc = dout + (bt0 * H + h) * Dv;
                real *dqc = dq ? dq + bt0 * d->q_stride + (size_t)h * Dk : NULL;
                real *dkc = dk ? dk + bt0 * d->k_stride + (size_t)h * Dk : NULL;
                real *dvc = dv ? dv + bt0 * d->v_stride + (size_t)h * Dv : NULL;
                /* the chunk's products as forward saved them (read only) */
                gd_use_cache(&w, (real *)(uintptr_t)(cache + (((size_t)b * H + h) * NC + c) * CK),
                             d);
                gd_gates(&w, &r, L, d);
                const real *Wp = d->delta ? w.W : r.v;
                const int ldw = d->delta ? Dv : d->v_stride;
                for (int i = 0; i < L; i++) w.dG[i] = w.db[i] = 0;

                /* dW = P^T dO + diag(gam) (K dS); dgam_i = w_i . (K dS)_i */
                ml_gemm(1, 0, L, Dv, L, 1, w.P, L, dOc, ldo, 0, w.dW, Dv);
                if (last)
                    for (int i = 0; i < L; i++) w.dgam[i] = 0;
                else
                    ml_gemm(0, 0, L, Dv, Dk, 1, r.k, d->k_stride, dS, Dv, 0, w.tV, Dv);
                for (int i = 0; i < L && !last; i++) {
                    real s = 0, gi = d->decay ? w.gam[i] : 1;
#pragma omp simd reduction(+ : s)
                    for (int j = 0; j < Dv; j++) {
                        s += w.tV[(size_t)i * Dv + j] * Wp[(size_t)i * ldw + j];
                        w.dW[(size_t)i * Dv + j] += gi * w.tV[(size_t)i * Dv + j];
                    }
                    w.dgam[i] = s;
                }
                /* intra-chunk scores */
                ml_gemm(0, 1, L, L, Dv, 1, dOc, ldo, Wp, ldw, 0, w.dP, L);
                for (int i = 0; i < L; i++) {
                    real *dPi = w.dP + (size_t)i * L, *dG = w.dG;
                    const real *Pi = w.P + (size_t)i * L, *Mi = w.M + (size_t)i * L;
                    for (int j = i + 1; j < L; j++) dPi[j] = 0;
                    if (!d->decay) continue;
                    /* x_ij = dP_ij P_ij goes to dG_i and, negated, to dG_j */
                    real sx = 0;
#pragma omp simd reduction(+ : sx)
                    for (int j = 0; j <= i; j++) {
                        real x = dPi[j] * Pi[j];
                        sx += x;
                        dG[j] -= x;
                        dPi[j] *= Mi[j];
                    }
                    dG[i] += sx;
                }
                if (dqc) ml_gemm(0, 0, L, Dk, L, 1, w.dP, L, r.k, d->k_stride, 1, dqc, d->q_stride);
                if (dkc) ml_gemm(1, 0, L, Dk, L, 1, w.dP, L, r.q, d->q_stride, 1, dkc, d->k_stride);
                /* the start state's read: dq += diag(Gam) dO S0^T */
                if (S0) ml_gemm(0, 1, L, Dk, Dv, 1, dOc, ldo, S0, Dv, 0, w.tK, Dk);
                for (int i = 0; i < L && S0; i++) {
                    real gi = d->decay ? w.Gam[i] : 1, s = 0;
#pragma omp simd reduction(+ : s)
                    for (int j = 0; j < Dk; j++) {
                        real x = w.tK[(size_t)i * Dk + j];
                        s += r.q[(size_t)i * d->q_stride + j] * x;
                        if (dqc) dqc[(size_t)i * d->q_stride + j] += gi * x;
                    }
                    if (d->decay) w.dG[i] += gi * s;
                }
                /* the state update's keys: dk += diag(gam) W dS^T */
                if (dkc && !last) {
                    ml_gemm(0, 1, L, Dk, Dv, 1, Wp, ldw, dS, Dv, 0, w.tK, Dk);
                    for (int i = 0; i < L; i++) {
                        real gi = d->decay ? w.gam[i] : 1;
                        for (int j = 0; j < Dk; j++)
                            dkc[(size_t)i * d->k_stride + j] += gi * w.tK[(size_t)i * Dk + j];
                    }
                }
                /* dS0 = Gam_{L-1} dS + (diag(Gam) Q)^T dO (- Wk^T dW below) */
                if (c > 0) {
                    real gl = d->decay ? w.Gam[L - 1] : 1;
                    if (!last)
                        for (size_t e = 0; e < SS; e++) dS2[e] = gl * dS[e];
                    const real *Qg = r.q;
                    int ldq = d->q_stride;
                    if (d->decay) {
                        for (int i = 0; i < L; i++)
                            for (int j = 0; j < Dk; j++)
                                w.KG[(size_t)i * Dk + j] =
                                    w.Gam[i] * r.q[(size_t)i * d->q_stride + j];
                        Qg = w.KG;
                        ldq = Dk;
                    }
                    ml_gemm(1, 0, Dk, Dv, L, 1, Qg, ldq, dOc, ldo, last ? 0 : 1, dS2, Dv);
                }
                if (d->decay && S0 && !last) {
                    real s = 0;
#pragma omp simd reduction(+ : s)
                    for (size_t e = 0; e < SS; e++) s += S0[e] * dS[e];
                    w.dG[L - 1] += w.Gam[L - 1] * s;
                }
                if (d->delta) {
                    if (c > 0) ml_gemm(1, 0, Dk, Dv, L, -1, w.X + Dv, Dx, w.dW, Dv, 1, dS2, Dv);
                    for (int i = 0; i < L; i++)
                        memcpy(w.Y + (size_t)i * Dx, w.dW + (size_t)i * Dv, Dv * sizeof(real));
                    /* Y = [dW | -dW S0^T] solved; with S0 zero its right half
                     * is zero and adds nothing to dA */
                    if (S0)
                        ml_gemm(0, 1, L, Dk, Dv, -1, w.dW, Dv, S0, Dv, 0, w.Y + Dv, Dx);
                    else
                        for (int i = 0; i < L; i++)
                            memset(w.Y + (size_t)i * Dx + Dv, 0, Dk * sizeof(real));
                    const int Dy = S0 ? Dx : Dv;
                    ml_trsm_unit_lower(1, L, Dy, w.A, L, w.Y, Dx);
                    ml_gemm(0, 1, L, L, Dy, -1, w.Y, Dx, w.X, Dx, 0, w.dA, L);
                    for (int i = 0; i < L; i++) {
                        const real bi = r.beta[(size_t)i * gs], gi = d->decay ? w.Gam[i] : 1;
                        const real *Yi = w.Y + (size_t)i * Dx;
                        const real *vi = r.v + (size_t)i * d->v_stride;
                        const real *ki = r.k + (size_t)i * d->k_stride;
                        real s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1)
                        for (int j = 0; j < Dv; j++) {
                            s1 += Yi[j] * vi[j];
                            if (dvc) dvc[(size_t)i * d->v_stride + j] += bi * Yi[j];
                        }
#pragma omp simd reduction(+ : s2)
                        for (int j = 0; j < Dk; j++) {
                            s2 += Yi[Dv + j] * ki[j];
                            if (dkc) dkc[(size_t)i * d->k_stride + j] += bi * gi * Yi[Dv + j];
                        }
                        w.db[i] += s1 + gi * s2;
                        if (d->decay) w.dG[i] += bi * gi * s2;
                        /* A_ij = beta_i M_ij KK_ij (j < i): dA becomes dKK in place */
                        real *dAi = w.dA + (size_t)i * L, *dG = w.dG;
                        const real *KKi = w.KK + (size_t)i * L, *Ai = w.A + (size_t)i * L;
                        real sb = 0, sx = 0;
                        if (d->decay) {
                            const real *Mi = w.M + (size_t)i * L;
#pragma omp simd reduction(+ : sb, sx)
                            for (int j = 0; j < i; j++) {
                                real da = dAi[j], m = Mi[j], x = da * Ai[j];
                                sb += da * m * KKi[j];
                                sx += x;
                                dG[j] -= x;
                                dAi[j] = da * (bi * m);
                            }
                            dG[i] += sx;
                        } else {
#pragma omp simd reduction(+ : sb)
                            for (int j = 0; j < i; j++) {
                                sb += dAi[j] * KKi[j];
                                dAi[j] *= bi;
                            }
                        }
                        w.db[i] += sb;
                        for (int j = i; j < L; j++) dAi[j] = 0;
                    }
                    if (dkc) {
                        ml_gemm(0, 0, L, Dk, L, 1, w.dA, L, r.k, d->k_stride, 1, dkc, d->k_stride);
                        ml_gemm(1, 0, L, Dk, L, 1, w.dA, L, r.k, d->k_stride, 1, dkc, d->k_stride);
                    }
                    if (dbeta)
                        for (int i = 0; i < L; i++) dbeta[(bt0 + i) * gs + h] += w.db[i];
                } else if (dvc) {
                    for (int i = 0; i < L; i++)
                        for (int j = 0; j < Dv; j++)
                            dvc[(size_t)i * d->v_stride + j] += w.dW[(size_t)i * Dv + j];
                }
                if (d->decay && dg) {
                    for (int j = 0; j < L; j++) {
                        real x = w.dgam[j] * w.gam[j];
                        w.dG[L - 1] += x;
                        w.dG[j] -= x;
                    }
                    real acc = 0;
                    for (int i = L - 1; i >= 0; i--) {
                        acc += w.dG[i];
                        dg[(bt0 + i) * gs + h] += acc;
                    }
                }
                real *t = dS;
                dS = dS2;
                dS2 = t;
            }
        }
}

/* ---- dispatch -------------------------------------------------------------------- */

/* One call's tensors; a thread's share is the sequences [b0, b1) of it. */
typedef struct gd_call {
    real *out, *save, *dq, *dk, *dv, *dbeta, *dg, *scratch;
    const real *dout, *csave, *q, *k, *v, *beta, *g;
    const gdelta_dims *d;
    int backward;
} gd_call;

/* Forward or backward of sequences [b0, b1) in scratch slot `slot`: the form
 * functions on the sub-batch, every tensor offset to sequence b0. */
static void gd_range(void *ctx, int b0, int b1, int slot) {
    const gd_call *c = ctx;
    const gdelta_dims *d = c->d;
    gdelta_dims s = *d;
    s.B = b1 - b0;
    gd_work w;
    const size_t T = (size_t)d->T, B0 = (size_t)b0;
    const size_t qo = B0 * T * d->q_stride, ko = B0 * T * d->k_stride, vo = B0 * T * d->v_stride;
    const size_t go = B0 * T * d->gate_stride, oo = B0 * T * d->H * d->Dv;
    const size_t NCH = (size_t)d->H * gd_nchunks(d);
    const size_t so = B0 * NCH * d->Dk * d->Dv;
    /* the chunk products follow every sequence's states */
    const size_t co = (size_t)d->B * NCH * d->Dk * d->Dv + B0 * NCH * gd_cache_size(d);
    real *scr = c->scratch + (size_t)slot * gd_carve(d, NULL, &w);
    const real *beta = c->beta ? c->beta + go : NULL, *g = c->g ? c->g + go : NULL;
    if (!c->backward) {
        real *states = c->save ? c->save + so : NULL;
        if (d->form == GD_CHUNKWISE)
            gd_chunk_forward(c->out + oo, states, c->save ? c->save + co : NULL, c->q + qo,
                             c->k + ko, c->v + vo, beta, g, &s, scr);
        else
            gd_rec_forward(c->out + oo, states, c->q + qo, c->k + ko, c->v + vo, beta, g, &s, scr);
        return;
    }
    real *dq = c->dq ? c->dq + qo : NULL, *dk = c->dk ? c->dk + ko : NULL;
    real *dv = c->dv ? c->dv + vo : NULL, *dbeta = c->dbeta ? c->dbeta + go : NULL;
    real *dg = c->dg ? c->dg + go : NULL;
    if (d->form == GD_CHUNKWISE)
        gd_chunk_backward(dq, dk, dv, dbeta, dg, c->dout + oo, c->csave + so, c->csave + co,
                          c->q + qo, c->k + ko, c->v + vo, beta, g, &s, scr);
    else
        gd_rec_backward(dq, dk, dv, dbeta, dg, c->dout + oo, c->csave + so, c->q + qo, c->k + ko,
                        c->v + vo, beta, g, &s, scr);
}

/* All sequences, one contiguous block per thread (parallel.h). Each (b, h)
 * writes only its own rows of out, the states and the gradients, in the same
 * order at any thread count. */
static void gd_run(gd_call *c) {
    const gdelta_dims *d = c->d;
    /* about T Dk Dv (state) + T C (Dk + Dv) (chunk) multiply-adds per head */
    double work = (double)d->B * d->H * d->T *
                  ((double)d->Dk * d->Dv + (double)gd_chunk(d) * (d->Dk + d->Dv));
    ml_par_ranges(d->B, ml_par_threads(d->B, work, GD_MIN_WORK), gd_range, c);
}

/* Forward: contract in kernels.h. */
void gdelta_forward(real *out, real *save, const real *q, const real *k, const real *v,
                    const real *beta, const real *g, const gdelta_dims *d, real *scratch) {
    if (d->T <= 0 || d->B <= 0) return;
    gd_call c = {.out = out, .save = save, .q = q, .k = k, .v = v, .beta = beta, .g = g,
                 .d = d, .scratch = scratch};
    gd_run(&c);
}

/* Backward: contract in kernels.h; save is what forward wrote for the same
 * inputs and dims. */
void gdelta_backward(real *dq, real *dk, real *dv, real *dbeta, real *dg, const real *dout,
                     const real *save, const real *q, const real *k, const real *v,
                     const real *beta, const real *g, const gdelta_dims *d, real *scratch) {
    if (d->T <= 0 || d->B <= 0) return;
    gd_call c = {.dq = dq, .dk = dk, .dv = dv, .dbeta = dbeta, .dg = dg, .dout = dout,
                 .csave = save, .q = q, .k = k, .v = v, .beta = beta, .g = g, .d = d,
                 .scratch = scratch, .backward = 1};
    gd_run(&c);
}
