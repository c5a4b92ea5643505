/* cross_attention.c: multi-head softmax attention of one set of queries over a
 * separate set of keys and values, forward and backward, on OpenBLAS, plus
 * naive loop references.
 *
 * Dimension letters: B batch, Tq query rows and Tk key rows per batch element,
 * H heads, D head width. q [B,Tq,H,D], k and v [B,Tk,H,D], out [B,Tq,H,D],
 * each read through its own row stride and batch stride (xattn_dims), so the
 * caller can point into packed buffers without copying; att [B,H,Tq,Tk] holds
 * the probabilities, contiguous.
 *
 * Mask: none (every query sees every key), or causal with an offset: query i
 * sees keys j <= i + offset. The slot mixer uses offset = number of slot rows
 * in front of a chunk's tokens, so a token sees every slot and the tokens of
 * its chunk up to itself. A query that sees no key gets a zero output and a
 * zero row of att. Scale 1/sqrt(D).
 *
 * The fast path works one (b, h) at a time, its GEMMs reading the head's rows
 * of q, k, v and dout in place through their row strides: one GEMM for the
 * scores, one for the output, and three in the backward, the batch split
 * across threads (parallel.h; one scratch slot per thread, for the backward's
 * dP); the shapes it serves are small (a chunk of queries against slots
 * plus a chunk of keys), so it does not band the mask as softmax_attention.c
 * does. Keys with a prefix (xattn_prefix) split each key-side GEMM in two,
 * one per source, so a caller whose keys sit in two buffers (a set of slots
 * and a chunk of tokens) needs no copy into one. Projections and what the
 * rows mean are the caller's business (mixer_slots.c). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "parallel.h"

/* Below this many multiply-adds a call stays on one thread. */
#define XA_MIN_WORK (1L << 20)

/* Index of the last key query i sees, -1 when it sees none. */
static int xattn_hi(const xattn_dims *d, int i) {
    int hi = d->Tk - 1;
    if (d->causal && i + d->offset < hi) hi = i + d->offset;
    return hi < -1 ? -1 : hi;
}

/* One thread's scratch: dP [Tq,Tk]. */
static size_t xa_slot_size(const xattn_dims *d) { return (size_t)d->Tq * d->Tk; }

size_t xattn_scratch_size(const xattn_dims *d) { return (size_t)ml_par_slots() * xa_slot_size(d); }

/* Threads for a call: the score, output and (backward) gradient GEMMs of
 * every (b, h). */
static int xa_threads(const xattn_dims *d) {
    double work = 3.0 * d->B * d->H * (double)d->Tq * d->Tk * d->D;
    return ml_par_threads(d->B, work, XA_MIN_WORK);
}

/* One call's arguments, for the batch ranges. */
typedef struct xa_call {
    real *out, *att, *dq, *dk, *dv;
    const real *q, *k, *v, *dout, *catt;
    const xattn_dims *d;
    real *scratch;
} xa_call;

/* Keys from the prefix (xattn_prefix). */
static int xa_prefix_rows(const xattn_dims *d) { return d->pre ? d->pre->T : 0; }

static void xa_forward_range(void *ctx, int b0, int b1, int slot) {
    const xa_call *c = ctx;
    const xattn_dims *d = c->d;
    const int Tq = d->Tq, Tk = d->Tk, H = d->H, D = d->D, Tp = xa_prefix_rows(d);
    const real scale = RSQRT((real)D);
    (void)slot;
    for (int b = b0; b < b1; b++)
        for (int h = 0; h < H; h++) {
            real *A = c->att + ((size_t)b * H + h) * Tq * Tk;
            real *O = c->out + b * d->bo + (size_t)h * D;
            if (Tk <= 0) {
                for (int i = 0; i < Tq; i++) memset(O + (size_t)i * d->ldo, 0, sizeof(real) * D);
                continue;
            }
            const real *Q = c->q + b * d->bq + (size_t)h * D;
            const real *K = c->k + b * d->bk + (size_t)h * D;
            const real *V = c->v + b * d->bv + (size_t)h * D;
            if (Tp) {
                const xattn_prefix *p = d->pre;
                ml_gemm(0, 1, Tq, Tp, D, scale, Q, d->ldq, p->k + b * p->b + (size_t)h * D, p->ld,
                        0, A, Tk);
            }
            if (Tk > Tp) ml_gemm(0, 1, Tq, Tk - Tp, D, scale, Q, d->ldq, K, d->ldk, 0, A + Tp, Tk);
            for (int i = 0; i < Tq; i++) {
                real *a = A + (size_t)i * Tk;
                int hi = xattn_hi(d, i);
                if (hi >= 0)
                    softmax_row(a, 0, hi, Tk);
                else
                    memset(a, 0, sizeof(real) * (size_t)Tk);
            }
            if (Tp) {
                const xattn_prefix *p = d->pre;
                ml_gemm(0, 0, Tq, D, Tp, 1, A, Tk, p->v + b * p->b + (size_t)h * D, p->ld, 0, O,
                        d->ldo);
            }
            if (Tk > Tp) ml_gemm(0, 0, Tq, D, Tk - Tp, 1, A + Tp, Tk, V, d->ldv, Tp ? 1 : 0, O, d->ldo);
        }
}

/* Fast forward: contract in kernels.h. att rows are exact zeros outside the
 * visible keys, so the backward can use whole rows as GEMM operands. */
void xattn_forward(real *out, real *att, const real *q, const real *k, const real *v,
                   const xattn_dims *d, real *scratch) {
    if (d->Tq <= 0) return;
    xa_call c = {out, att, NULL, NULL, NULL, q, k, v, NULL, NULL, d, scratch};
    ml_par_ranges(d->B, xa_threads(d), xa_forward_range, &c);
}

static void xa_backward_range(void *ctx, int b0, int b1, int slot) {
    const xa_call *c = ctx;
    const xattn_dims *d = c->d;
    const int Tq = d->Tq, Tk = d->Tk, H = d->H, D = d->D, Tp = xa_prefix_rows(d), Tt = Tk - Tp;
    const xattn_prefix *pf = d->pre;
    real *pdk = pf ? pf->dk : NULL, *pdv = pf ? pf->dv : NULL;
    const real scale = RSQRT((real)D);
    real *dP = c->scratch + (size_t)slot * xa_slot_size(d);
    for (int b = b0; b < b1; b++)
        for (int h = 0; h < H; h++) {
            const real *A = c->catt + ((size_t)b * H + h) * Tq * Tk;
            const real *dO = c->dout + b * d->bo + (size_t)h * D;
            const real *Q = c->q + b * d->bq + (size_t)h * D;
            const real *K = c->k + b * d->bk + (size_t)h * D;
            const real *V = c->v + b * d->bv + (size_t)h * D;
            const real *Kp = pf ? pf->k + b * pf->b + (size_t)h * D : NULL;
            const real *Vp = pf ? pf->v + b * pf->b + (size_t)h * D : NULL;
            size_t po = pf ? b * pf->db + (size_t)h * D : 0;
            if (c->dv && Tt)
                ml_gemm(1, 0, Tt, D, Tq, 1, A + Tp, Tk, dO, d->ldo, 1,
                        c->dv + b * d->bv + (size_t)h * D, d->ldv);
            if (pdv && Tp) ml_gemm(1, 0, Tp, D, Tq, 1, A, Tk, dO, d->ldo, 1, pdv + po, pf->ld);
            if (!c->dq && !c->dk && !pdk) continue;
            if (Tp) ml_gemm(0, 1, Tq, Tp, D, 1, dO, d->ldo, Vp, pf->ld, 0, dP, Tk);
            if (Tt) ml_gemm(0, 1, Tq, Tt, D, 1, dO, d->ldo, V, d->ldv, 0, dP + Tp, Tk);
            for (int i = 0; i < Tq; i++) {
                const real *p = A + (size_t)i * Tk;
                real *ds = dP + (size_t)i * Tk;
                real dot = 0;
#pragma omp simd reduction(+ : dot)
                for (int j = 0; j < Tk; j++) dot += ds[j] * p[j];
                /* p is exactly 0 outside the visible keys, so is ds */
                for (int j = 0; j < Tk; j++) ds[j] = p[j] * (ds[j] - dot);
            }
            if (c->dq) {
                real *dQ = c->dq + b * d->bq + (size_t)h * D;
                if (Tp) ml_gemm(0, 0, Tq, D, Tp, scale, dP, Tk, Kp, pf->ld, 1, dQ, d->ldq);
                if (Tt) ml_gemm(0, 0, Tq, D, Tt, scale, dP + Tp, Tk, K, d->ldk, 1, dQ, d->ldq);
            }
            if (c->dk && Tt)
                ml_gemm(1, 0, Tt, D, Tq, scale, dP + Tp, Tk, Q, d->ldq, 1,
                        c->dk + b * d->bk + (size_t)h * D, d->ldk);
            if (pdk && Tp) ml_gemm(1, 0, Tp, D, Tq, scale, dP, Tk, Q, d->ldq, 1, pdk + po, pf->ld);
        }
}

/* Fast backward: contract in kernels.h. With P the saved probabilities:
 *   dV += P^T dO,  dP = dO V^T,  dS = P .* (dP - rowsum(dP .* P)),
 *   dQ += scale dS K,  dK += scale dS^T Q,
 * the accumulating GEMMs writing straight into the strided gradients. */
void xattn_backward(real *dq, real *dk, real *dv, const real *dout, const real *q,
                    const real *k, const real *v, const real *att, const xattn_dims *d,
                    real *scratch) {
    const xattn_prefix *p = d->pre;
    if (d->Tq <= 0 || d->Tk <= 0 || (!dq && !dk && !dv && !(p && (p->dk || p->dv)))) return;
    xa_call c = {NULL, NULL, dq, dk, dv, q, k, v, dout, att, d, scratch};
    ml_par_ranges(d->B, xa_threads(d), xa_backward_range, &c);
}

/* Key (value: v = 1) row j of batch element b, head h, from the prefix when
 * j < its T, else from k (v); grad: the row of its gradient. */
typedef struct xa_refs {
    const real *k, *v;
    real *dk, *dv;
} xa_refs;

static real *xa_row(const xattn_dims *d, const xa_refs *r, int b, int j, int h, int v, int grad) {
    const xattn_prefix *p = d->pre;
    size_t hd = (size_t)h * d->D;
    if (p && j < p->T) {
        real *base = grad ? (v ? p->dv : p->dk) : (real *)(uintptr_t)(v ? p->v : p->k);
        return base ? base + (grad ? b * p->db : b * p->b) + (size_t)j * p->ld + hd : NULL;
    }
    j -= xa_prefix_rows(d);
    real *base = grad ? (v ? r->dv : r->dk) : (real *)(uintptr_t)(v ? r->v : r->k);
    return base ? base + (v ? b * d->bv + (size_t)j * d->ldv : b * d->bk + (size_t)j * d->ldk) + hd
                : NULL;
}

/* Naive forward, one query and one key at a time from the definition; the
 * oracle of xattn_forward (same contract, no scratch). */
void xattn_forward_ref(real *out, real *att, const real *q, const real *k, const real *v,
                       const xattn_dims *d) {
    const int Tq = d->Tq, Tk = d->Tk, H = d->H, D = d->D;
    const real scale = RSQRT((real)D);
    const xa_refs r = {k, v, NULL, NULL};
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Tq; i++) {
                const real *qi = q + b * d->bq + (size_t)i * d->ldq + (size_t)h * D;
                real *a = att + (((size_t)b * H + h) * Tq + i) * Tk;
                real *o = out + b * d->bo + (size_t)i * d->ldo + (size_t)h * D;
                int hi = xattn_hi(d, i);
                real mx = 0;
                for (int j = 0; j < Tk; j++) {
                    a[j] = 0;
                    if (j > hi) continue;
                    const real *kj = xa_row(d, &r, b, j, h, 0, 0);
                    real s = 0;
                    for (int c = 0; c < D; c++) s += qi[c] * kj[c];
                    a[j] = s * scale;
                    if (j == 0 || a[j] > mx) mx = a[j];
                }
                real sum = 0;
                for (int j = 0; j <= hi; j++) {
                    a[j] = REXP(a[j] - mx);
                    sum += a[j];
                }
                for (int j = 0; j <= hi; j++) a[j] /= sum;
                for (int c = 0; c < D; c++) o[c] = 0;
                for (int j = 0; j <= hi; j++) {
                    const real *vj = xa_row(d, &r, b, j, h, 1, 0);
                    for (int c = 0; c < D; c++) o[c] += a[j] * vj[c];
                }
            }
}

/* Naive backward, oracle of xattn_backward. dP_ij = dO_i . v_j is recomputed
 * in a second pass instead of stored, so no scratch is needed. */
void xattn_backward_ref(real *dq, real *dk, real *dv, const real *dout, const real *q,
                        const real *k, const real *v, const real *att, const xattn_dims *d) {
    const int Tq = d->Tq, Tk = d->Tk, H = d->H, D = d->D;
    const real scale = RSQRT((real)D);
    const xa_refs r = {k, v, dk, dv};
    for (int b = 0; b < d->B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Tq; i++) {
                size_t qo = b * d->bq + (size_t)i * d->ldq + (size_t)h * D;
                const real *a = att + (((size_t)b * H + h) * Tq + i) * Tk;
                const real *g = dout + b * d->bo + (size_t)i * d->ldo + (size_t)h * D;
                int hi = xattn_hi(d, i);
                real dot = 0;
                for (int j = 0; j <= hi; j++) {
                    const real *vj = xa_row(d, &r, b, j, h, 1, 0);
                    real dp = 0;
                    for (int c = 0; c < D; c++) dp += g[c] * vj[c];
                    dot += dp * a[j];
                }
                for (int j = 0; j <= hi; j++) {
                    const real *kj = xa_row(d, &r, b, j, h, 0, 0);
                    const real *vj = xa_row(d, &r, b, j, h, 1, 0);
                    real *dkj = xa_row(d, &r, b, j, h, 0, 1), *dvj = xa_row(d, &r, b, j, h, 1, 1);
                    real dp = 0;
                    for (int c = 0; c < D; c++) dp += g[c] * vj[c];
                    real ds = a[j] * (dp - dot) * scale;
                    for (int c = 0; c < D; c++) {
                        if (dvj) dvj[c] += a[j] * g[c];
                        if (dq) dq[qo + c] += ds * kj[c];
                        if (dkj) dkj[c] += ds * q[qo + c];
                    }
                }
            }
}
