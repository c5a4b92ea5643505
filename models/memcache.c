/* memcache.c: the state kernels of Memory Caching (see memcache.h): the
 * state a linear-family rule reaches from a start state after a run of
 * tokens, chunkwise on GEMMs and token by token, forward and backward.
 *
 * Dimension letters: Dk key width, Dv value width, C chunk length, L length of
 * the current chunk (C, or less for the last), Dx = Dv + Dk. Per chunk, with
 * start state S0 and G_i = sum_{s<=i} g_s (within the chunk), Gam_i = e^{G_i},
 * gam_i = e^{G_{L-1} - G_i}, M_ij = e^{G_i - G_j} (j <= i; formed from the
 * difference and masked before exponentiating), as in gated_delta.c:
 *   A = strict_tril(diag(beta) (K K^T) .* M);  (I + A) [U | Wk] = [diag(beta) V | diag(beta Gam) K]
 *   W = U - Wk S0   (delta rules; otherwise W = V and there is no solve)
 *   S_next = Gam_{L-1} S0 + K^T diag(gam) W
 * Backward, reverse over chunks with dS = dL/dS_next:
 *   dW = diag(gam) K dS;  dK += diag(gam) W dS^T;  dgam_i = w_i . (K dS)_i;
 *   dS0 = Gam_{L-1} dS - Wk^T dW;  dG_{L-1} += Gam_{L-1} <S0, dS>;
 *   delta: (I + A)^T Y = [dW | -dW S0^T], dA = -strict_tril(Y [U | Wk]^T), giving
 *   dV += diag(beta) Y_U, dK += diag(beta Gam) Y_Wk, dbeta, dG, and through
 *   K K^T dK += (dKK + dKK^T) K; without delta dV += dW;
 *   dg = reverse cumulative sum of dG.
 * Unlike gdelta_forward there are no outputs: the reads of a cached state are
 * the mixer's GEMMs. The chunk start states of a run are recomputed by the
 * backward (a run is at most one sequence), not saved. */
#include "memcache.h"

#include <math.h>
#include <string.h>

#include "kernels.h"

/* Chunk length for runs of up to n tokens (at least 1). */
static int mcs_chunk(const mcs_dims *d, int n) {
    int C = d->chunk < n ? d->chunk : n;
    return C > 0 ? C : 1;
}

/* Scratch regions (unused ones NULL). */
typedef struct mcs_work {
    real *states;                   /* [NC,Dk*Dv] chunk start states (backward) */
    real *dS, *dS2;                 /* [Dk*Dv] */
    real *G, *Gam, *gam, *dG, *dgam, *db; /* [C] */
    real *M, *KK, *A, *dA;          /* [C,C] */
    real *X, *Y;                    /* [C,Dx] */
    real *W, *dW, *tV;              /* [C,Dv] */
    real *KG, *tK;                  /* [C,Dk] */
} mcs_work;

static size_t mcs_carve(const mcs_dims *d, int n_max, real *base, mcs_work *w) {
    size_t C = (size_t)mcs_chunk(d, n_max), Dk = (size_t)d->Dk, Dv = (size_t)d->Dv;
    size_t SS = Dk * Dv, Dx = Dk + Dv, NC = n_max > 0 ? ((size_t)n_max + C - 1) / C : 1;
    size_t used = 0;
#define TAKE(p, n) (w->p = base ? base + used : NULL, used += (n))
    memset(w, 0, sizeof *w);
    TAKE(states, NC * SS);
    TAKE(dS, SS);
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
    TAKE(dA, C * C);
    TAKE(X, C * Dx);
    TAKE(Y, C * Dx);
    TAKE(W, C * Dv);
    TAKE(dW, C * Dv);
    TAKE(tV, C * Dv);
    TAKE(KG, C * Dk);
    TAKE(tK, C * Dk);
#undef TAKE
    return used;
}

size_t mcs_scratch_size(const mcs_dims *d, int n_max) {
    mcs_work w;
    return mcs_carve(d, n_max, NULL, &w);
}

/* n states, the running gradient and S', u, r of one step. */
size_t mcs_ref_scratch_size(const mcs_dims *d, int n_max) {
    size_t SS = (size_t)d->Dk * d->Dv;
    return ((size_t)(n_max > 0 ? n_max : 1) + 2) * SS + 2 * (size_t)d->Dv;
}

/* ---- one token ------------------------------------------------------------------ */

void mcs_step(real *S, const real *k, const real *v, real beta, real a, const mcs_dims *d,
              real *u) {
    const int Dk = d->Dk, Dv = d->Dv;
    if (d->decay)
        for (size_t i = 0; i < (size_t)Dk * Dv; i++) S[i] *= a;
    if (d->delta) {
        for (int j = 0; j < Dv; j++) u[j] = v[j];
        for (int i = 0; i < Dk; i++)
            for (int j = 0; j < Dv; j++) u[j] -= S[(size_t)i * Dv + j] * k[i];
        for (int i = 0; i < Dk; i++)
            for (int j = 0; j < Dv; j++) S[(size_t)i * Dv + j] += beta * k[i] * u[j];
    } else {
        for (int i = 0; i < Dk; i++)
            for (int j = 0; j < Dv; j++) S[(size_t)i * Dv + j] += k[i] * v[j];
    }
}

/* With S' = a Sprev: delta: u = v - S'^T k, r = dS^T k, du = beta r,
 * dbeta += u.r, dv += du, dk += beta dS u - S' du, dS' = dS - k du^T;
 * else dk += dS v, dv += dS^T k, dS' = dS; decay: dg += <S', dS'>,
 * dS = a dS'. */
void mcs_step_backward(real *dS, real *dk, real *dv, real *dbeta, real *dg, const real *Sprev,
                       const real *k, const real *v, real beta, real a, const mcs_dims *d,
                       real *Sp, real *u, real *r) {
    const int Dk = d->Dk, Dv = d->Dv;
    const size_t SS = (size_t)Dk * Dv;
    for (size_t e = 0; e < SS; e++) Sp[e] = d->decay ? a * Sprev[e] : Sprev[e];
    if (d->delta) {
        for (int j = 0; j < Dv; j++) u[j] = v[j], r[j] = 0;
        for (int i = 0; i < Dk; i++)
            for (int j = 0; j < Dv; j++) {
                u[j] -= Sp[(size_t)i * Dv + j] * k[i];
                r[j] += dS[(size_t)i * Dv + j] * k[i];
            }
        real ur = 0;
        for (int j = 0; j < Dv; j++) {
            ur += u[j] * r[j];
            r[j] *= beta; /* now du */
        }
        if (dbeta) *dbeta += ur;
        if (dv)
            for (int j = 0; j < Dv; j++) dv[j] += r[j];
        if (dk)
            for (int i = 0; i < Dk; i++) {
                real s = 0;
                for (int j = 0; j < Dv; j++)
                    s += beta * dS[(size_t)i * Dv + j] * u[j] - Sp[(size_t)i * Dv + j] * r[j];
                dk[i] += s;
            }
        for (int i = 0; i < Dk; i++)
            for (int j = 0; j < Dv; j++) dS[(size_t)i * Dv + j] -= k[i] * r[j];
    } else {
        for (int i = 0; i < Dk; i++) {
            real s = 0;
            for (int j = 0; j < Dv; j++) {
                s += dS[(size_t)i * Dv + j] * v[j];
                if (dv) dv[j] += dS[(size_t)i * Dv + j] * k[i];
            }
            if (dk) dk[i] += s;
        }
    }
    if (d->decay) {
        real s = 0;
        for (size_t e = 0; e < SS; e++) {
            s += Sp[e] * dS[e];
            dS[e] *= a;
        }
        if (dg) *dg += s;
    }
}

/* ---- token by token -------------------------------------------------------------- */

void mcs_forward_ref(real *S_out, const real *S_in, const real *k, const real *v,
                     const real *beta, const real *g, int n, const mcs_dims *d, real *scratch) {
    const size_t SS = (size_t)d->Dk * d->Dv;
    if (S_in) memmove(S_out, S_in, SS * sizeof(real));
    else memset(S_out, 0, SS * sizeof(real));
    for (int i = 0; i < n; i++)
        mcs_step(S_out, k + (size_t)i * d->k_stride, v + (size_t)i * d->v_stride,
                 d->delta ? beta[(size_t)i * d->gate_stride] : 0,
                 d->decay ? REXP(g[(size_t)i * d->gate_stride]) : 1, d, scratch);
}

/* The n states before each token are stored, then the steps run backwards. */
void mcs_backward_ref(real *dS_in, real *dk, real *dv, real *dbeta, real *dg,
                      const real *dS_out, const real *S_in, const real *k, const real *v,
                      const real *beta, const real *g, int n, const mcs_dims *d,
                      real *scratch) {
    const size_t SS = (size_t)d->Dk * d->Dv;
    real *pre = scratch, *dS = scratch + (size_t)(n > 0 ? n : 1) * SS, *Sp = dS + SS;
    real *u = Sp + SS, *r = u + d->Dv;
    if (n <= 0) {
        if (dS_in)
            for (size_t e = 0; e < SS; e++) dS_in[e] += dS_out[e];
        return;
    }
    if (S_in) memcpy(pre, S_in, SS * sizeof(real));
    else memset(pre, 0, SS * sizeof(real));
    for (int i = 0; i + 1 < n; i++) {
        memcpy(pre + (size_t)(i + 1) * SS, pre + (size_t)i * SS, SS * sizeof(real));
        mcs_step(pre + (size_t)(i + 1) * SS, k + (size_t)i * d->k_stride,
                 v + (size_t)i * d->v_stride, d->delta ? beta[(size_t)i * d->gate_stride] : 0,
                 d->decay ? REXP(g[(size_t)i * d->gate_stride]) : 1, d, u);
    }
    memcpy(dS, dS_out, SS * sizeof(real));
    for (int i = n - 1; i >= 0; i--) {
        size_t gi = (size_t)i * d->gate_stride;
        mcs_step_backward(dS, dk ? dk + (size_t)i * d->k_stride : NULL,
                          dv ? dv + (size_t)i * d->v_stride : NULL,
                          d->delta && dbeta ? dbeta + gi : NULL, d->decay && dg ? dg + gi : NULL,
                          pre + (size_t)i * SS, k + (size_t)i * d->k_stride,
                          v + (size_t)i * d->v_stride, d->delta ? beta[gi] : 0,
                          d->decay ? REXP(g[gi]) : 1, d, Sp, u, r);
    }
    if (dS_in)
        for (size_t e = 0; e < SS; e++) dS_in[e] += dS[e];
}

/* ---- chunkwise ---------------------------------------------------------------------- */

/* Everything a chunk of L tokens needs from its start state S0: G, Gam, gam,
 * M (decay) and, with the delta rule, KK, A, X = [U | Wk] and W. */
static void mcs_prep(mcs_work *w, const real *k, const real *v, const real *beta,
                     const real *g, const real *S0, int L, const mcs_dims *d) {
    const int Dk = d->Dk, Dv = d->Dv, Dx = Dk + Dv, gs = d->gate_stride;
    if (d->decay) {
        double acc = 0;
        for (int i = 0; i < L; i++) {
            acc += g[(size_t)i * gs];
            w->G[i] = (real)acc;
        }
        for (int i = 0; i < L; i++) {
            w->Gam[i] = REXP(w->G[i]);
            w->gam[i] = REXP(w->G[L - 1] - w->G[i]);
            for (int j = 0; j <= i; j++) w->M[(size_t)i * L + j] = REXP(w->G[i] - w->G[j]);
        }
    }
    if (!d->delta) return;
    ml_gemm(0, 1, L, L, Dk, 1, k, d->k_stride, k, d->k_stride, 0, w->KK, L);
    for (int i = 0; i < L; i++) {
        real bi = beta[(size_t)i * gs], gi = d->decay ? w->Gam[i] : 1;
        const real *vi = v + (size_t)i * d->v_stride, *ki = k + (size_t)i * d->k_stride;
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
    ml_gemm(0, 0, L, Dv, Dk, -1, w->X + Dv, Dx, S0, Dv, 1, w->W, Dv);
}

/* S = Gam_{L-1} S + K^T diag(gam) W for one chunk, in place (W was formed
 * from S by mcs_prep before). */
static void mcs_advance(real *S, mcs_work *w, const real *k, const real *v, int L,
                        const mcs_dims *d) {
    const int Dk = d->Dk, Dv = d->Dv;
    const real *Wp = d->delta ? w->W : v, *Kg = k;
    int ldw = d->delta ? Dv : d->v_stride, ldk = d->k_stride;
    if (d->decay) {
        for (size_t e = 0; e < (size_t)Dk * Dv; e++) S[e] *= w->Gam[L - 1];
        for (int i = 0; i < L; i++)
            for (int j = 0; j < Dk; j++)
                w->KG[(size_t)i * Dk + j] = w->gam[i] * k[(size_t)i * d->k_stride + j];
        Kg = w->KG;
        ldk = Dk;
    }
    ml_gemm(1, 0, Dk, Dv, L, 1, Kg, ldk, Wp, ldw, 1, S, Dv);
}

void mcs_forward(real *S_out, const real *S_in, const real *k, const real *v,
                 const real *beta, const real *g, int n, const mcs_dims *d, real *scratch) {
    const size_t SS = (size_t)d->Dk * d->Dv;
    const int C = mcs_chunk(d, n), gs = d->gate_stride;
    mcs_work w;
    mcs_carve(d, n, scratch, &w);
    if (S_in) memmove(S_out, S_in, SS * sizeof(real));
    else memset(S_out, 0, SS * sizeof(real));
    for (int t0 = 0; t0 < n; t0 += C) {
        const int L = n - t0 < C ? n - t0 : C;
        const real *kc = k + (size_t)t0 * d->k_stride, *vc = v + (size_t)t0 * d->v_stride;
        const real *bc = d->delta ? beta + (size_t)t0 * gs : NULL;
        const real *gc = d->decay ? g + (size_t)t0 * gs : NULL;
        mcs_prep(&w, kc, vc, bc, gc, S_out, L, d);
        mcs_advance(S_out, &w, kc, vc, L, d);
    }
}

void mcs_backward(real *dS_in, real *dk, real *dv, real *dbeta, real *dg,
                  const real *dS_out, const real *S_in, const real *k, const real *v,
                  const real *beta, const real *g, int n, const mcs_dims *d, real *scratch) {
    const int Dk = d->Dk, Dv = d->Dv, Dx = Dk + Dv, gs = d->gate_stride;
    const size_t SS = (size_t)Dk * Dv;
    const int C = mcs_chunk(d, n), NC = n > 0 ? (n + C - 1) / C : 0;
    mcs_work w;
    mcs_carve(d, n, scratch, &w);
    /* the chunk start states */
    if (S_in) memcpy(w.states, S_in, SS * sizeof(real));
    else memset(w.states, 0, SS * sizeof(real));
    for (int c = 0; c + 1 < NC; c++) {
        const int t0 = c * C;
        real *Sn = w.states + (size_t)(c + 1) * SS;
        const real *kc = k + (size_t)t0 * d->k_stride, *vc = v + (size_t)t0 * d->v_stride;
        memcpy(Sn, w.states + (size_t)c * SS, SS * sizeof(real));
        mcs_prep(&w, kc, vc, d->delta ? beta + (size_t)t0 * gs : NULL,
                 d->decay ? g + (size_t)t0 * gs : NULL, Sn, C, d);
        mcs_advance(Sn, &w, kc, vc, C, d);
    }
    real *dS = w.dS, *dS2 = w.dS2;
    memcpy(dS, dS_out, SS * sizeof(real));
    for (int c = NC - 1; c >= 0; c--) {
        const int t0 = c * C, L = n - t0 < C ? n - t0 : C;
        const real *S0 = w.states + (size_t)c * SS;
        const real *kc = k + (size_t)t0 * d->k_stride, *vc = v + (size_t)t0 * d->v_stride;
        const real *bc = d->delta ? beta + (size_t)t0 * gs : NULL;
        const real *gc = d->decay ? g + (size_t)t0 * gs : NULL;
        real *dkc = dk ? dk + (size_t)t0 * d->k_stride : NULL;
        real *dvc = dv ? dv + (size_t)t0 * d->v_stride : NULL;
        mcs_prep(&w, kc, vc, bc, gc, S0, L, d);
        const real *Wp = d->delta ? w.W : vc;
        const int ldw = d->delta ? Dv : d->v_stride;
        for (int i = 0; i < L; i++) w.dG[i] = w.db[i] = 0;

        /* dW = diag(gam) K dS; dgam_i = w_i . (K dS)_i */
        ml_gemm(0, 0, L, Dv, Dk, 1, kc, d->k_stride, dS, Dv, 0, w.tV, Dv);
        for (int i = 0; i < L; i++) {
            real s = 0, gi = d->decay ? w.gam[i] : 1;
#pragma omp simd reduction(+ : s)
            for (int j = 0; j < Dv; j++) {
                s += w.tV[(size_t)i * Dv + j] * Wp[(size_t)i * ldw + j];
                w.dW[(size_t)i * Dv + j] = gi * w.tV[(size_t)i * Dv + j];
            }
            w.dgam[i] = s;
        }
        /* dK += diag(gam) W dS^T */
        if (dkc) {
            ml_gemm(0, 1, L, Dk, Dv, 1, Wp, ldw, dS, Dv, 0, w.tK, Dk);
            for (int i = 0; i < L; i++) {
                real gi = d->decay ? w.gam[i] : 1;
                for (int j = 0; j < Dk; j++)
                    dkc[(size_t)i * d->k_stride + j] += gi * w.tK[(size_t)i * Dk + j];
            }
        }
        /* dS0 = Gam_{L-1} dS (- Wk^T dW below) */
        real gl = d->decay ? w.Gam[L - 1] : 1;
        for (size_t e = 0; e < SS; e++) dS2[e] = gl * dS[e];
        if (d->decay) {
            real s = 0;
#pragma omp simd reduction(+ : s)
            for (size_t e = 0; e < SS; e++) s += S0[e] * dS[e];
            w.dG[L - 1] += gl * s;
        }
        if (d->delta) {
            ml_gemm(1, 0, Dk, Dv, L, -1, w.X + Dv, Dx, w.dW, Dv, 1, dS2, Dv);
            for (int i = 0; i < L; i++)
                memcpy(w.Y + (size_t)i * Dx, w.dW + (size_t)i * Dv, Dv * sizeof(real));
            ml_gemm(0, 1, L, Dk, Dv, -1, w.dW, Dv, S0, Dv, 0, w.Y + Dv, Dx);
            ml_trsm_unit_lower(1, L, Dx, w.A, L, w.Y, Dx);
            ml_gemm(0, 1, L, L, Dx, -1, w.Y, Dx, w.X, Dx, 0, w.dA, L);
            for (int i = 0; i < L; i++) {
                const real bi = bc[(size_t)i * gs], gi = d->decay ? w.Gam[i] : 1;
                const real *Yi = w.Y + (size_t)i * Dx;
                const real *vi = vc + (size_t)i * d->v_stride, *ki = kc + (size_t)i * d->k_stride;
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
                real *dAi = w.dA + (size_t)i * L;
                for (int j = 0; j < L; j++) {
                    if (j >= i) {
                        dAi[j] = 0;
                        continue;
                    }
                    real m = d->decay ? w.M[(size_t)i * L + j] : 1;
                    w.db[i] += dAi[j] * m * w.KK[(size_t)i * L + j];
                    if (d->decay) {
                        real x = dAi[j] * w.A[(size_t)i * L + j];
                        w.dG[i] += x;
                        w.dG[j] -= x;
                    }
                    dAi[j] *= bi * m;
                }
            }
            if (dkc) {
                ml_gemm(0, 0, L, Dk, L, 1, w.dA, L, kc, d->k_stride, 1, dkc, d->k_stride);
                ml_gemm(1, 0, L, Dk, L, 1, w.dA, L, kc, d->k_stride, 1, dkc, d->k_stride);
            }
            if (dbeta)
                for (int i = 0; i < L; i++) dbeta[(size_t)(t0 + i) * gs] += w.db[i];
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
                dg[(size_t)(t0 + i) * gs] += acc;
            }
        }
        real *t = dS;
        dS = dS2;
        dS2 = t;
    }
    if (dS_in)
        for (size_t e = 0; e < SS; e++) dS_in[e] += dS[e];
}
