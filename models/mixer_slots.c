/* mixer_slots.c: the slot bottleneck mixer (README "Slot bottleneck"): the context
 * is compressed into k latent slots of width d, rewritten chunk by chunk.
 *
 * Notation per layer: x [B,T,C] the mixer's input (already normed by the
 * block), K slots, chunk length Ch, H heads of width D = C/H, LN_s, LN_m, LN_x
 * the mixer's own LayerNorms (weight and bias, eps 1e-5), Attn(q; kv) softmax
 * attention per head with scale 1/sqrt(D), and "read" and "write" two
 * separate sets of q/k/v/o projections (Wqkv [3C,C] + optional bias, Wo [C,C]
 * + bias). Every attention splits into the same H heads: head h uses columns
 * [hD, (h+1)D) of its q, k and v.
 *
 * variant chunk (any task). M_0 = the learned slots [K,C], the same for every
 * sequence. The sequence is cut into chunks of Ch tokens (the last may be
 * short); chunk c reads state M_c, with Mh_c = LN_s(M_c):
 *   read:  token t of chunk c attends, with the read projections, to
 *          [Mh_c (K rows) ; tokens of chunk c up to t]:  keys and values of
 *          both come from the same read Wk, Wv (the slots are projected as if
 *          they were tokens in front of the chunk); out = o Wo^T + bo.
 *   write, at the end of every chunk but the last:
 *          A   = Attn(Mh_c Wq_w; [Mh_c ; X_c] Wkv_w)   (no mask: the chunk is
 *                complete, every slot sees every slot and every chunk token)
 *          M~  = M_c + A Wo_w^T + bo_w
 *          Hc  = M~ + W2 GELU(W1 LN_m(M~) + b1) + b2   (slot_mlp_ratio > 0;
 *                width slot_mlp_ratio * C; Hc = M~ when 0)
 *          gate none: M_{c+1} = Hc
 *          gate gru:  z = sigmoid([Mh_c, LN_m(M~)] Wg^T + bg)   (Wg [C,2C])
 *                     M_{c+1} = (1 - z) * M_c + z * Hc   (a GRU's update gate;
 *                     the candidate is Hc, there is no reset gate)
 *   The state after the last chunk is never read, so it is not computed.
 *   Causal: chunk c sees only M_c, a function of chunks before it. Backward
 *   runs through the whole chain M_0 -> M_1 -> ...
 *
 * variant context (tasks with a context boundary Lc, e.g. MQAR's 2N; the
 * spec validator refuses it for tasks without one). Tokens [0, Lc) are the
 * context, [Lc, T) the question.
 *   - context tokens: exactly the chunk variant run on the context alone
 *     (chunks of Ch from 0, chain from M_0);
 *   - M_ctx: the slots read the whole context at once with the write block
 *     above, M1 = Write(M_0, X[0,Lc)), then attend among themselves:
 *     M_ctx = M1 + Attn_x(LN_x(M1)) Wo_x^T + bo_x (own projections, no mask);
 *   - question memory M_q: the chunk variant's chain run on the question
 *     alone (chunks of Ch from Lc, chain from M_0 again): causal
 *     cross-attention of the slots over the question so far, at chunk ends;
 *   - decoder: question token t of question chunk c attends (read
 *     projections) to [LN_s(M_ctx) ; LN_s(M_q,c) ; question tokens of chunk c
 *     up to t]. With Ch >= T - Lc this is causal self-attention over the whole
 *     question plus cross-attention to [M_ctx ; M_q,0 = M_0].
 *   Causal: context outputs see no later token and nothing of M_ctx; question
 *   outputs see the whole context, which precedes them. A caller that passes
 *   no boundary (context_len < 0) gets Lc = 0: an empty context.
 *
 * Limit (tested): with Ch >= T the whole sequence is one chunk, no write is
 * ever read, and the chunk variant is causal softmax attention over the
 * sequence [LN_s(M_0) ; x] restricted to the token rows: softmax attention
 * with K learned persistent key/value pairs in front (Sukhbaatar et al. 2019);
 * when the slots' logits go to -inf it is the softmax mixer with the same
 * Wqkv, Wo.
 *
 * Cost per token and layer, forward, in multiply-adds (slot MLP ratio 2, no
 * gate; the gate adds 2KC^2/Ch): tokens 6C^2 (read q, k, v and output, write
 * k, v; the last chunk's tokens have no write k, v), read attention C(2K + Ch)
 * on average, and the slots' work once per chunk, (10KC^2 + 2KC(K + Ch)) / Ch;
 * softmax attention: 4C^2 + CT. The attention reads alone are (K + Ch/2) keys
 * against T/2.
 *
 * State size: chunk K*C per layer, the slots carried across a chunk boundary
 * (k x d per layer); context 2*K*C (M_ctx and the current M_q) once the context is
 * read. Not counted (state_size is the carried memory only): the current chunk's tokens (at
 * most Ch - 1 of them) that the next read and write still need, and, inside
 * the context, the context tokens the encoder will read.
 *
 * Given rows (the last layer under a head that reads a few rows), the read's
 * queries, their attention over [slots ; chunk so far] and the output
 * projection run on those rows only (a chunk without any skips its read);
 * the read keys and values of the tokens, the write and the slot chain need
 * every token and run as before. The write keys and values are computed only
 * for the tokens some write reads (not the last chunk's).
 *
 * What is elsewhere: the attention kernel (cross_attention.c), projections,
 * norms and GELU (linear.c, norm.c, gelu.c); the block around the mixer
 * (model.c); the check that a context variant gets a task with a boundary
 * (spec.c, through needs_context). */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "kernels.h"
#include "mixer.h"
#include "parallel.h"

#define SLOT_NORM_EPS 1e-5

enum { VARIANT_CHUNK = 0, VARIANT_CONTEXT = 1 };
enum { GATE_NONE = 0, GATE_GRU = 1 };

typedef struct slots_cfg {
    int variant;   /* VARIANT_* */
    int slots;     /* K */
    int chunk;     /* Ch */
    int heads;
    int gate;      /* GATE_* */
    int mlp_ratio; /* slot MLP width / d_model, 0 = no slot MLP */
    int qkv_bias;
} slots_cfg;

static const char *const slots_variants[] = {"chunk", "context", NULL};
static const char *const slots_gates[] = {"none", "gru", NULL};

static const ml_field slots_fields[] = {
    {"variant", FT_ENUM, offsetof(slots_cfg, variant), 0, 0, slots_variants, "chunk",
     "chunk: chunk-recurrent slots (any task); context: slots encode the task's context, "
     "the question reads them (needs a task with a context boundary)"},
    {"slots", FT_INT, offsetof(slots_cfg, slots), 1, 65536, NULL, "16",
     "number of slots k; state k*d_model per layer (2k*d_model for context)"},
    {"chunk", FT_INT, offsetof(slots_cfg, chunk), 1, 1e6, NULL, "64",
     "chunk length: tokens read [slots ; their chunk so far]; slots rewritten at chunk ends "
     "(chunk >= seq_len: softmax attention with k learned key/value slots in front)"},
    {"heads", FT_INT, offsetof(slots_cfg, heads), 1, 4096, NULL, "1",
     "heads of every attention in the mixer; d_model must be divisible by heads"},
    {"gate", FT_ENUM, offsetof(slots_cfg, gate), 0, 0, slots_gates, "none",
     "slot update: none (M = candidate) or gru (M = (1-z) M + z candidate, z from "
     "[LN(M), LN(M~)])"},
    {"slot_mlp_ratio", FT_INT, offsetof(slots_cfg, mlp_ratio), 0, 64, NULL, "2",
     "width of the MLP in the slot update, times d_model (0 = no slot MLP)"},
    {"qkv_bias", FT_BOOL, offsetof(slots_cfg, qkv_bias), 0, 1, NULL, "true",
     "bias on the q, k, v projections"},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL},
};

static int slots_validate(const void *cfg, int C, ml_error *e) {
    const slots_cfg *c = cfg;
    if (C % c->heads != 0)
        return ML_FAIL(e, "heads: d_model %d is not divisible by heads %d", C, c->heads);
    return 0;
}

static const char *slots_needs_context(const void *cfg) {
    return ((const slots_cfg *)cfg)->variant == VARIANT_CONTEXT ? "variant" : NULL;
}

/* LN_m exists when the update has an MLP or a gate (the gate reads LN_m(M~)). */
static int has_norm_m(const slots_cfg *c) { return c->mlp_ratio > 0 || c->gate == GATE_GRU; }

static void slots_declare(const void *cfg, int C, ml_param_sink *s) {
    const slots_cfg *c = cfg;
    int R = c->mlp_ratio * C;
    param_declare(s, "slots", c->slots, C, INIT_NORMAL, 0);
    param_declare(s, "norm_s.w", C, 1, INIT_ONES, 0);
    param_declare(s, "norm_s.b", C, 1, INIT_ZEROS, 0);
    param_declare(s, "wqkv", 3 * C, C, INIT_NORMAL, 1);
    if (c->qkv_bias) param_declare(s, "bqkv", 3 * C, 1, INIT_ZEROS, 0);
    param_declare(s, "wo", C, C, INIT_NORMAL, 1);
    param_declare(s, "bo", C, 1, INIT_ZEROS, 0);
    param_declare(s, "wqkv_w", 3 * C, C, INIT_NORMAL, 1);
    if (c->qkv_bias) param_declare(s, "bqkv_w", 3 * C, 1, INIT_ZEROS, 0);
    param_declare(s, "wo_w", C, C, INIT_NORMAL, 1);
    param_declare(s, "bo_w", C, 1, INIT_ZEROS, 0);
    if (has_norm_m(c)) {
        param_declare(s, "norm_m.w", C, 1, INIT_ONES, 0);
        param_declare(s, "norm_m.b", C, 1, INIT_ZEROS, 0);
    }
    if (c->mlp_ratio > 0) {
        param_declare(s, "mlp.w1", R, C, INIT_NORMAL, 1);
        param_declare(s, "mlp.b1", R, 1, INIT_ZEROS, 0);
        param_declare(s, "mlp.w2", C, R, INIT_NORMAL, 1);
        param_declare(s, "mlp.b2", C, 1, INIT_ZEROS, 0);
    }
    if (c->gate == GATE_GRU) {
        param_declare(s, "gate.w", C, 2 * C, INIT_NORMAL, 1);
        param_declare(s, "gate.b", C, 1, INIT_ZEROS, 0);
    }
    if (c->variant == VARIANT_CONTEXT) {
        param_declare(s, "norm_x.w", C, 1, INIT_ONES, 0);
        param_declare(s, "norm_x.b", C, 1, INIT_ZEROS, 0);
        param_declare(s, "wqkv_x", 3 * C, C, INIT_NORMAL, 1);
        if (c->qkv_bias) param_declare(s, "bqkv_x", 3 * C, 1, INIT_ZEROS, 0);
        param_declare(s, "wo_x", C, C, INIT_NORMAL, 1);
        param_declare(s, "bo_x", C, 1, INIT_ZEROS, 0);
    }
}

/* Parameter (or gradient) pointers in declaration order; absent ones NULL. */
typedef struct slots_ptrs {
    real *slots, *ns_w, *ns_b;
    real *wqkv, *bqkv, *wo, *bo;         /* read */
    real *wqkv_w, *bqkv_w, *wo_w, *bo_w; /* write */
    real *nm_w, *nm_b, *w1, *b1, *w2, *b2, *wg, *bg;
    real *nx_w, *nx_b, *wqkv_x, *bqkv_x, *wo_x, *bo_x; /* context: slot self-attention */
} slots_ptrs;

static slots_ptrs slots_unpack(const slots_cfg *c, real *const *p) {
    slots_ptrs r;
    memset(&r, 0, sizeof r);
    int i = 0;
    r.slots = p[i++];
    r.ns_w = p[i++];
    r.ns_b = p[i++];
    r.wqkv = p[i++];
    if (c->qkv_bias) r.bqkv = p[i++];
    r.wo = p[i++];
    r.bo = p[i++];
    r.wqkv_w = p[i++];
    if (c->qkv_bias) r.bqkv_w = p[i++];
    r.wo_w = p[i++];
    r.bo_w = p[i++];
    if (has_norm_m(c)) {
        r.nm_w = p[i++];
        r.nm_b = p[i++];
    }
    if (c->mlp_ratio > 0) {
        r.w1 = p[i++];
        r.b1 = p[i++];
        r.w2 = p[i++];
        r.b2 = p[i++];
    }
    if (c->gate == GATE_GRU) {
        r.wg = p[i++];
        r.bg = p[i++];
    }
    if (c->variant == VARIANT_CONTEXT) {
        r.nx_w = p[i++];
        r.nx_b = p[i++];
        r.wqkv_x = p[i++];
        if (c->qkv_bias) r.bqkv_x = p[i++];
        r.wo_x = p[i++];
        r.bo_x = p[i++];
    }
    return r;
}

/* p + n, or NULL when p is NULL (optional biases and their k/v parts). */
static real *offset_or_null(real *p, size_t n) { return p ? p + n : NULL; }

/* ---- the chunk schedule ---------------------------------------------------- */

/* One chunk: tokens [t0, t0+n); first of its segment (reads M_0); last of its
 * segment (no write after it); reads M_ctx in front of its own slots. */
typedef struct slot_chunk {
    int t0, n, first, last, ctx;
} slot_chunk;

/* Context tokens of a forward: clamp(context_len, 0, T) for the context
 * variant, 0 for the chunk variant. */
static int context_tokens(const slots_cfg *c, int T, int context_len) {
    if (c->variant != VARIANT_CONTEXT || context_len < 0) return 0;
    return context_len < T ? context_len : T;
}

static int ceil_div(int a, int b) { return (a + b - 1) / b; }

/* Chunks of a forward over T tokens with lc context tokens. */
static int chunk_count(const slots_cfg *c, int T, int lc) {
    return ceil_div(lc, c->chunk) + ceil_div(T - lc, c->chunk);
}

/* Chunk j: the context segment [0, lc) first, then [lc, T), each cut into
 * chunks of Ch from its own start. */
static slot_chunk chunk_at(const slots_cfg *c, int T, int lc, int j) {
    slot_chunk k;
    int nctx = ceil_div(lc, c->chunk);
    int s0 = j < nctx ? 0 : lc, s1 = j < nctx ? lc : T, jj = j < nctx ? j : j - nctx;
    k.t0 = s0 + jj * c->chunk;
    k.n = s1 - k.t0 < c->chunk ? s1 - k.t0 : c->chunk;
    k.first = jj == 0;
    k.last = k.t0 + k.n == s1;
    k.ctx = j >= nctx && c->variant == VARIANT_CONTEXT;
    return k;
}

/* ---- activations and scratch ---------------------------------------------- */

/* Saved activations of one write (slot update) with up to `cap` tokens. */
typedef struct slot_write {
    int rows;        /* K + cap: most keys of the write's attention */
    real *qw;        /* [B,K,C] write queries */
    real *Pw;        /* [B,K,2C] write keys|values of Mh (the first K rows only
                      * when shared by the batch); the tokens' are in L.kvw */
    real *att;       /* [B,H,K,rows] (used as [B,H,K,K+n]) */
    real *aw;        /* [B,K,C] attention output */
    real *Mt;        /* [B,K,C] M~ */
    real *Nm, *nm_mean, *nm_rstd; /* [B,K,C], [B,K], [B,K] LN_m(M~) */
    real *f1, *g1;   /* [B,K,R] MLP pre-activation and GELU */
    real *Hc;        /* [B,K,C] candidate */
    real *Gin, *z;   /* [B,K,2C] gate input, [B,K,C] gate */
} slot_write;

/* Saved activations of one chunk. */
typedef struct slot_chunk_acts {
    real *M, *Mh, *mh_mean, *mh_rstd; /* [B,K,C] state read, LN_s of it, stats [B,K] */
    real *P;         /* [B,S,2C] read keys|values of the slot rows in front of the
                      * tokens: [M_ctx rows ;] slots (only the first K rows when
                      * shared by the batch); the tokens' are in L.qkv */
    real *att;       /* [B,H,Cm,Pn] (used as [B,H,n,S+n]) */
    slot_write w;    /* the write after this chunk (unused for a segment's last) */
} slot_chunk_acts;

/* Sizes of one forward and pointers into act. */
typedef struct slot_layout {
    int B, T, C, K, H, D, R;
    int Cm;          /* min(Ch, T): most tokens in one chunk */
    int S;           /* most slot rows in front of a chunk's tokens: K, 2K (context) */
    int Pn;          /* S + Cm: most keys of a chunk's read */
    int nmax;        /* chunks allocated */
    real *qkv;       /* [B,T,3C] read projections of the tokens */
    real *kvw;       /* [B,T,2C] write keys|values of the tokens a write reads */
    real *o;         /* [B,T,C] read attention output */
    real *chunks;    /* nmax chunk regions of chunk_size reals */
    size_t chunk_size;
    /* context variant */
    real *M0, *Mh0, *mh0_mean, *mh0_rstd; /* encoder input: M_0 per batch element */
    slot_write enc;  /* the encoder's write, cap T tokens */
    real *M1;        /* [B,K,C] */
    real *Nx, *nx_mean, *nx_rstd, *qkvx, *attx, *ox; /* self-attention of the slots */
    real *Mctx, *Mhc, *mhc_mean, *mhc_rstd; /* M_ctx, LN_s(M_ctx) */
    real *kvc;       /* [B,K,2C] read keys|values of LN_s(M_ctx) */
    size_t total;
} slot_layout;

/* Consecutive regions of one buffer; with base NULL it only measures. */
typedef struct carver {
    real *base;
    size_t used;
} carver;

static real *carve(carver *cv, size_t n) {
    real *p = cv->base ? cv->base + cv->used : NULL;
    cv->used += (n + 7) & ~(size_t)7;
    return p;
}

static void carve_write(carver *cv, slot_write *w, const slots_cfg *c, const slot_layout *L,
                        int cap) {
    size_t BK = (size_t)L->B * L->K, C = (size_t)L->C;
    w->rows = L->K + cap;
    w->qw = carve(cv, BK * C);
    w->Pw = carve(cv, BK * 2 * C);
    w->att = carve(cv, BK * L->H * w->rows);
    w->aw = carve(cv, BK * C);
    w->Mt = carve(cv, BK * C);
    w->Nm = w->nm_mean = w->nm_rstd = w->f1 = w->g1 = w->Gin = w->z = NULL;
    if (has_norm_m(c)) {
        w->Nm = carve(cv, BK * C);
        w->nm_mean = carve(cv, BK);
        w->nm_rstd = carve(cv, BK);
    }
    if (c->mlp_ratio > 0) {
        w->f1 = carve(cv, BK * L->R);
        w->g1 = carve(cv, BK * L->R);
    }
    w->Hc = carve(cv, BK * C);
    if (c->gate == GATE_GRU) {
        w->Gin = carve(cv, BK * 2 * C);
        w->z = carve(cv, BK * C);
    }
}

static void carve_chunk(carver *cv, slot_chunk_acts *a, const slots_cfg *c,
                        const slot_layout *L) {
    size_t BK = (size_t)L->B * L->K, C = (size_t)L->C;
    a->M = carve(cv, BK * C);
    a->Mh = carve(cv, BK * C);
    a->mh_mean = carve(cv, BK);
    a->mh_rstd = carve(cv, BK);
    a->P = carve(cv, (size_t)L->B * L->S * 2 * C);
    a->att = carve(cv, (size_t)L->B * L->H * L->Cm * L->Pn);
    carve_write(cv, &a->w, c, L, L->Cm);
}

/* The layout of a forward of B x T tokens over act (NULL: sizes only). The
 * same (cfg, B, T) always give the same layout, so backward finds what
 * forward saved; it fits in act_size(cfg, B, maxT) for every T <= maxT. */
static slot_layout layout_of(const slots_cfg *c, int B, int T, int C, real *act) {
    slot_layout L;
    memset(&L, 0, sizeof L);
    L.B = B, L.T = T, L.C = C, L.K = c->slots, L.H = c->heads, L.D = C / c->heads;
    L.R = c->mlp_ratio * C;
    L.Cm = c->chunk < T ? c->chunk : T;
    L.S = c->variant == VARIANT_CONTEXT ? 2 * L.K : L.K;
    L.Pn = L.S + L.Cm;
    L.nmax = ceil_div(T, c->chunk) + (c->variant == VARIANT_CONTEXT);
    size_t BT = (size_t)B * T, BK = (size_t)B * L.K, Cz = (size_t)C;
    carver cv = {act, 0};
    L.qkv = carve(&cv, BT * 3 * Cz);
    L.kvw = carve(&cv, BT * 2 * Cz);
    L.o = carve(&cv, BT * Cz);
    carver one = {NULL, 0};
    slot_chunk_acts tmp;
    carve_chunk(&one, &tmp, c, &L);
    L.chunk_size = one.used;
    L.chunks = carve(&cv, L.chunk_size * (size_t)L.nmax);
    if (c->variant == VARIANT_CONTEXT) {
        L.M0 = carve(&cv, BK * Cz);
        L.Mh0 = carve(&cv, BK * Cz);
        L.mh0_mean = carve(&cv, BK);
        L.mh0_rstd = carve(&cv, BK);
        carve_write(&cv, &L.enc, c, &L, T);
        L.M1 = carve(&cv, BK * Cz);
        L.Nx = carve(&cv, BK * Cz);
        L.nx_mean = carve(&cv, BK);
        L.nx_rstd = carve(&cv, BK);
        L.qkvx = carve(&cv, BK * 3 * Cz);
        L.attx = carve(&cv, BK * L.H * L.K);
        L.ox = carve(&cv, BK * Cz);
        L.Mctx = carve(&cv, BK * Cz);
        L.Mhc = carve(&cv, BK * Cz);
        L.mhc_mean = carve(&cv, BK);
        L.mhc_rstd = carve(&cv, BK);
        L.kvc = carve(&cv, BK * 2 * Cz);
    }
    L.total = cv.used;
    return L;
}

static slot_chunk_acts chunk_acts(const slots_cfg *c, const slot_layout *L, int j) {
    slot_chunk_acts a;
    carver cv = {L->chunks + L->chunk_size * (size_t)j, 0};
    carve_chunk(&cv, &a, c, L);
    return a;
}

static size_t slots_act_size(const void *cfg, int B, int T, int C) {
    return layout_of(cfg, B, T, C, NULL).total;
}

/* Scratch: forward and backward each carve it from the start. */
typedef struct slot_scratch {
    real *xs;        /* attention kernel scratch */
    real *dkvw;      /* [B,T,2C] backward: gradient of L.kvw */
    real *dqkv;      /* [B,T,3C] backward: gradient of qkv */
    real *dO;        /* [B,T,C] backward: gradient of o */
    real *tkv;       /* [B,K,2C] the slots' read keys|values of a context chunk before they
                      * join M_ctx's in P (and their gradient) */
    real *dM, *dMn, *dMh, *dq, *da, *dt, *dh, *dn, *dz; /* [B,K,C] each */
    real *dg;        /* [B,K,2C] gradient of the gate input */
    real *df1, *dg1; /* [B,K,R] */
    real *dP;        /* [B,S,2C] gradient of a chunk's P or a write's Pw */
    real *dkvc;      /* [B,K,2C] gradient of kvc */
    real *dqkvx;     /* [B,K,3C] */
    size_t total;
} slot_scratch;

static size_t xattn_need(int B, int H, int D, int Tq, int Tk) {
    xattn_dims d;
    memset(&d, 0, sizeof d);
    d.B = B, d.H = H, d.D = D, d.Tq = Tq, d.Tk = Tk;
    return xattn_scratch_size(&d);
}

static slot_scratch scratch_of(const slots_cfg *c, const slot_layout *L, real *base) {
    slot_scratch s;
    size_t BT = (size_t)L->B * L->T, BK = (size_t)L->B * L->K, C = (size_t)L->C;
    int cap = c->variant == VARIANT_CONTEXT ? L->T : L->Cm;
    size_t xs = xattn_need(1, L->H, L->D, L->Cm, L->Pn);
    size_t xw = xattn_need(1, L->H, L->D, L->K, L->K + cap);
    carver cv = {base, 0};
    s.xs = carve(&cv, xs > xw ? xs : xw);
    s.dkvw = carve(&cv, BT * 2 * C);
    s.dqkv = carve(&cv, BT * 3 * C);
    s.dO = carve(&cv, BT * C);
    s.tkv = carve(&cv, BK * 2 * C);
    real **one[] = {&s.dM, &s.dMn, &s.dMh, &s.dq, &s.da, &s.dt, &s.dh, &s.dn, &s.dz};
    for (size_t i = 0; i < sizeof one / sizeof one[0]; i++) *one[i] = carve(&cv, BK * C);
    s.dg = carve(&cv, BK * 2 * C);
    s.df1 = carve(&cv, BK * L->R);
    s.dg1 = carve(&cv, BK * L->R);
    s.dP = carve(&cv, (size_t)L->B * L->S * 2 * C);
    s.dkvc = carve(&cv, BK * 2 * C);
    s.dqkvx = carve(&cv, BK * 3 * C);
    s.total = cv.used;
    return s;
}

static size_t slots_scratch_size(const void *cfg, int B, int T, int C) {
    slot_layout L = layout_of(cfg, B, T, C, NULL);
    return scratch_of(cfg, &L, NULL).total;
}

/* ---- pieces shared by forward and backward --------------------------------- */

/* Everything one forward or backward call works with. */
typedef struct slot_env {
    const slots_cfg *c;
    slot_layout L;
    slot_scratch s;
    slots_ptrs p, g;  /* parameters and their gradients */
    const real *x;    /* [B,T,C] mixer input */
    int T, lc, n;     /* tokens, context tokens, chunks */
    const int *rows;  /* the rows whose output is wanted, NULL: every row */
    int S;            /* their number */
} slot_env;

static slot_env env_of(const mixer_call *mc, const real *x) {
    slot_env E;
    E.c = mc->cfg;
    E.L = layout_of(E.c, mc->B, mc->T, mc->C, mc->act);
    E.s = scratch_of(E.c, &E.L, mc->scratch);
    E.p = slots_unpack(E.c, mc->p);
    E.g = slots_unpack(E.c, mc->dp);
    E.x = x;
    E.T = mc->T;
    E.lc = context_tokens(E.c, mc->T, mc->context_len);
    E.n = chunk_count(E.c, mc->T, E.lc);
    E.rows = mc->rows;
    E.S = mc->rows ? mc->n_rows : 0;
    return E;
}

static size_t zsize(size_t n) { return sizeof(real) * n; }

/* M_0 copied for every batch element: dst [B,K,C]. */
static void broadcast_slots(const slot_env *E, real *dst) {
    size_t KC = (size_t)E->L.K * E->L.C;
    for (int b = 0; b < E->L.B; b++) memcpy(dst + b * KC, E->p.slots, zsize(KC));
}

/* d slots += sum over the batch of dM [B,K,C]. */
static void reduce_slots(const slot_env *E, const real *dM) {
    size_t KC = (size_t)E->L.K * E->L.C;
    for (int b = 0; b < E->L.B; b++)
        for (size_t i = 0; i < KC; i++) E->g.slots[i] += dM[b * KC + i];
}

/* Copy n rows of w reals (source row stride lds, batch stride bs) into dst
 * rows (row stride ldd, batch stride bd), for each batch element. */
static void copy_rows(real *dst, size_t bd, int ldd, const real *src, size_t bs, int lds, int B,
                      int n, int w) {
    for (int b = 0; b < B; b++)
        for (int i = 0; i < n; i++)
            memcpy(dst + b * bd + (size_t)i * ldd, src + b * bs + (size_t)i * lds, zsize(w));
}

/* The same, adding into dst. */
static void add_rows(real *dst, size_t bd, int ldd, const real *src, size_t bs, int lds, int B,
                     int n, int w) {
    for (int b = 0; b < B; b++)
        for (int i = 0; i < n; i++) {
            real *d = dst + b * bd + (size_t)i * ldd;
            const real *s = src + b * bs + (size_t)i * lds;
            for (int k = 0; k < w; k++) d[k] += s[k];
        }
}

/* Sum the B blocks of n rows of w reals (row stride ld, batch stride bs) into
 * the first block, in place: the gradient of a projection that every batch
 * element shares. */
static void fold_rows(real *x, size_t bs, int ld, int B, int n, int w) {
    add_rows(x, 0, ld, x + bs, bs, ld, B - 1, n, w);
}

static void ln_s_forward(const slot_env *E, real *out, real *mean, real *rstd, const real *M) {
    layernorm_forward(out, mean, rstd, M, E->p.ns_w, E->p.ns_b, E->L.B * E->L.K, E->L.C,
                      (real)SLOT_NORM_EPS);
}

static void ln_s_backward(const slot_env *E, real *dM, const real *dMh, const real *M,
                          const real *mean, const real *rstd) {
    layernorm_backward(dM, E->g.ns_w, E->g.ns_b, dMh, M, E->p.ns_w, mean, rstd,
                       E->L.B * E->L.K, E->L.C);
}

/* The S slot rows in front of the tokens as the attention's key prefix:
 * keys|values [B,S,2C] at P (one set for the batch when shared), their
 * gradients into s.dP. */
static xattn_prefix slot_prefix(const slot_env *E, const real *P, int S, int shared) {
    const int C = E->L.C;
    xattn_prefix pre;
    pre.T = S, pre.ld = 2 * C;
    pre.db = (size_t)S * 2 * C, pre.b = shared ? 0 : pre.db;
    pre.k = P, pre.v = P + C;
    pre.dk = E->s.dP, pre.dv = E->s.dP + C;
    return pre;
}

/* Attention dims of the write: K slot queries [B,K,C] over [Mh ; n tokens],
 * no mask: the slots' keys|values from the prefix pre (Pw), the tokens'
 * from L.kvw (their gradients: s.dkvw). */
static xattn_dims write_dims(const slot_env *E, const xattn_prefix *pre, int n) {
    const slot_layout *L = &E->L;
    xattn_dims d;
    d.B = L->B, d.H = L->H, d.D = L->D, d.Tq = L->K, d.Tk = L->K + n;
    d.ldq = d.ldo = L->C;
    d.ldk = d.ldv = 2 * L->C;
    d.bq = d.bo = (size_t)L->K * L->C;
    d.bk = d.bv = (size_t)E->T * 2 * L->C;
    d.causal = 0, d.offset = 0, d.pre = pre;
    return d;
}

/* Attention dims of a chunk's read: its n token queries (rows of qkv) over
 * [S slot rows ; n tokens], token i seeing keys j <= S + i: the slot rows
 * from the prefix pre (P), the tokens' keys|values from qkv in place. */
static xattn_dims read_dims(const slot_env *E, const xattn_prefix *pre, int n) {
    const slot_layout *L = &E->L;
    xattn_dims d;
    d.B = L->B, d.H = L->H, d.D = L->D, d.Tq = n, d.Tk = pre->T + n;
    d.ldq = d.ldk = d.ldv = 3 * L->C, d.bq = d.bk = d.bv = (size_t)E->T * 3 * L->C;
    d.ldo = L->C, d.bo = (size_t)E->T * L->C;
    d.causal = 1, d.offset = pre->T, d.pre = pre;
    return d;
}

/* The write: Mout [B,K,C] from state M, Mh = LN_s(M) and tokens [t0, t0+n)
 * (whose write keys|values are in L.kvw). Saves into w. shared: M is M_0 in
 * every batch element, so the slots' q, k, v are projected once, from the
 * first element's rows, and copied to the others. */
static void write_forward(const slot_env *E, slot_write *w, real *Mout, const real *M,
                          const real *Mh, int t0, int n, int shared) {
    const slot_layout *L = &E->L;
    const slots_ptrs *p = &E->p;
    int B = L->B, K = L->K, C = L->C, BK = B * K, rows = shared ? K : BK;
    size_t KC = (size_t)BK * C, K1 = (size_t)K * C;
    linear_forward(w->qw, Mh, p->wqkv_w, p->bqkv_w, rows, C, C);
    if (shared) copy_rows(w->qw + K1, K1, C, w->qw, 0, C, B - 1, K, C);
    linear_forward(w->Pw, Mh, p->wqkv_w + (size_t)C * C, offset_or_null(p->bqkv_w, C), rows, C,
                   2 * C);
    xattn_prefix pre = slot_prefix(E, w->Pw, K, shared);
    xattn_dims d = write_dims(E, &pre, n);
    const real *kv = L->kvw + (size_t)t0 * 2 * C;
    xattn_forward(w->aw, w->att, w->qw, kv, kv + C, &d, E->s.xs);
    linear_forward(w->Mt, w->aw, p->wo_w, p->bo_w, BK, C, C);
    for (size_t i = 0; i < KC; i++) w->Mt[i] += M[i];
    if (w->Nm)
        layernorm_forward(w->Nm, w->nm_mean, w->nm_rstd, w->Mt, p->nm_w, p->nm_b, BK, C,
                          (real)SLOT_NORM_EPS);
    if (w->f1) {
        linear_forward(w->f1, w->Nm, p->w1, p->b1, BK, C, L->R);
        gelu_forward(w->g1, w->f1, (size_t)BK * L->R);
        linear_forward(w->Hc, w->g1, p->w2, p->b2, BK, L->R, C);
        for (size_t i = 0; i < KC; i++) w->Hc[i] += w->Mt[i];
    } else {
        memcpy(w->Hc, w->Mt, zsize(KC));
    }
    if (w->z) {
        for (int r = 0; r < BK; r++) {
            memcpy(w->Gin + (size_t)r * 2 * C, Mh + (size_t)r * C, zsize(C));
            memcpy(w->Gin + (size_t)r * 2 * C + C, w->Nm + (size_t)r * C, zsize(C));
        }
        linear_forward(w->z, w->Gin, p->wg, p->bg, BK, 2 * C, C);
        for (size_t i = 0; i < KC; i++) {
            real z = 1 / (1 + REXP(-w->z[i]));
            w->z[i] = z;
            Mout[i] = M[i] + z * (w->Hc[i] - M[i]);
        }
    } else {
        memcpy(Mout, w->Hc, zsize(KC));
    }
}

/* Backward of write_forward: given dMout, dM and dMh += gradients; token
 * rows' write keys|values gradients added into s.dkvw; parameter gradients.
 * shared: the gradients of the slots' shared projections are summed over the
 * batch and added into the first element's rows of dMh, which only their sum
 * over the batch reads (the gradient of M_0). */
static void write_backward(const slot_env *E, const slot_write *w, real *dM, real *dMh,
                           const real *dMout, const real *M, const real *Mh, int t0, int n,
                           int shared) {
    const slot_layout *L = &E->L;
    const slots_ptrs *p = &E->p, *g = &E->g;
    const slot_scratch *s = &E->s;
    int B = L->B, K = L->K, C = L->C, BK = B * K;
    size_t KC = (size_t)BK * C;
    real *dHc = s->dh, *dNm = s->dn;
    memset(dNm, 0, zsize(KC));
    if (w->z) {
        for (size_t i = 0; i < KC; i++) {
            real z = w->z[i];
            dHc[i] = z * dMout[i];
            dM[i] += (1 - z) * dMout[i];
            s->dz[i] = dMout[i] * (w->Hc[i] - M[i]) * z * (1 - z);
        }
        memset(s->dg, 0, zsize(KC * 2));
        linear_backward(s->dg, g->wg, g->bg, s->dz, w->Gin, p->wg, BK, 2 * C, C);
        for (int r = 0; r < BK; r++)
            for (int k = 0; k < C; k++) {
                dMh[(size_t)r * C + k] += s->dg[(size_t)r * 2 * C + k];
                dNm[(size_t)r * C + k] += s->dg[(size_t)r * 2 * C + C + k];
            }
    } else {
        memcpy(dHc, dMout, zsize(KC));
    }
    real *dMt = s->dt;
    memcpy(dMt, dHc, zsize(KC));
    if (w->f1) {
        size_t BR = (size_t)BK * L->R;
        memset(s->dg1, 0, zsize(BR));
        linear_backward(s->dg1, g->w2, g->b2, dHc, w->g1, p->w2, BK, L->R, C);
        memset(s->df1, 0, zsize(BR));
        gelu_backward(s->df1, s->dg1, w->f1, BR);
        linear_backward(dNm, g->w1, g->b1, s->df1, w->Nm, p->w1, BK, C, L->R);
    }
    if (w->Nm)
        layernorm_backward(dMt, g->nm_w, g->nm_b, dNm, w->Mt, p->nm_w, w->nm_mean, w->nm_rstd,
                           BK, C);
    for (size_t i = 0; i < KC; i++) dM[i] += dMt[i];
    memset(s->da, 0, zsize(KC));
    linear_backward(s->da, g->wo_w, g->bo_w, dMt, w->aw, p->wo_w, BK, C, C);
    xattn_prefix pre = slot_prefix(E, w->Pw, K, shared);
    xattn_dims d = write_dims(E, &pre, n);
    const real *kv = L->kvw + (size_t)t0 * 2 * C;
    real *dkv = s->dkvw + (size_t)t0 * 2 * C;
    memset(s->dq, 0, zsize(KC));
    memset(s->dP, 0, zsize(KC * 2));
    xattn_backward(s->dq, dkv, dkv + C, s->da, w->qw, kv, kv + C, w->att, &d, s->xs);
    size_t K1 = (size_t)K * C;
    int rows = shared ? K : BK;
    if (shared) {
        fold_rows(s->dq, K1, C, B, K, C);
        fold_rows(s->dP, 2 * K1, 2 * C, B, K, 2 * C);
    }
    linear_backward(dMh, g->wqkv_w, g->bqkv_w, s->dq, Mh, p->wqkv_w, rows, C, C);
    linear_backward(dMh, g->wqkv_w + (size_t)C * C, offset_or_null(g->bqkv_w, C), s->dP, Mh,
                    p->wqkv_w + (size_t)C * C, rows, C, 2 * C);
}

/* Context variant: M_ctx = M1 + Attn_x(LN_x(M1)) Wo_x^T + bo_x, then its
 * LN_s and its read keys|values kvc. */
static void self_forward(const slot_env *E) {
    const slot_layout *L = &E->L;
    const slots_ptrs *p = &E->p;
    int BK = L->B * L->K, C = L->C;
    layernorm_forward(L->Nx, L->nx_mean, L->nx_rstd, L->M1, p->nx_w, p->nx_b, BK, C,
                      (real)SLOT_NORM_EPS);
    linear_forward(L->qkvx, L->Nx, p->wqkv_x, p->bqkv_x, BK, C, 3 * C);
    xattn_dims d;
    d.B = L->B, d.H = L->H, d.D = L->D, d.Tq = d.Tk = L->K;
    d.ldq = d.ldk = d.ldv = 3 * C, d.ldo = C;
    d.bq = d.bk = d.bv = (size_t)L->K * 3 * C, d.bo = (size_t)L->K * C;
    d.causal = 0, d.offset = 0, d.pre = NULL;
    xattn_forward(L->ox, L->attx, L->qkvx, L->qkvx + C, L->qkvx + 2 * C, &d, E->s.xs);
    linear_forward(L->Mctx, L->ox, p->wo_x, p->bo_x, BK, C, C);
    for (size_t i = 0; i < (size_t)BK * C; i++) L->Mctx[i] += L->M1[i];
    ln_s_forward(E, L->Mhc, L->mhc_mean, L->mhc_rstd, L->Mctx);
    linear_forward(L->kvc, L->Mhc, p->wqkv + (size_t)C * C, offset_or_null(p->bqkv, C), BK, C,
                   2 * C);
}

/* Backward of self_forward from s.dkvc: dM1 [B,K,C] += gradient. */
static void self_backward(const slot_env *E, real *dM1) {
    const slot_layout *L = &E->L;
    const slots_ptrs *p = &E->p, *g = &E->g;
    const slot_scratch *s = &E->s;
    int BK = L->B * L->K, C = L->C;
    size_t KC = (size_t)BK * C;
    real *dMhc = s->dh, *dMctx = s->dt;
    memset(dMhc, 0, zsize(KC));
    linear_backward(dMhc, g->wqkv + (size_t)C * C, offset_or_null(g->bqkv, C), s->dkvc, L->Mhc,
                    p->wqkv + (size_t)C * C, BK, C, 2 * C);
    memset(dMctx, 0, zsize(KC));
    ln_s_backward(E, dMctx, dMhc, L->Mctx, L->mhc_mean, L->mhc_rstd);
    for (size_t i = 0; i < KC; i++) dM1[i] += dMctx[i];
    memset(s->da, 0, zsize(KC));
    linear_backward(s->da, g->wo_x, g->bo_x, dMctx, L->ox, p->wo_x, BK, C, C);
    xattn_dims d;
    d.B = L->B, d.H = L->H, d.D = L->D, d.Tq = d.Tk = L->K;
    d.ldq = d.ldk = d.ldv = 3 * C, d.ldo = C;
    d.bq = d.bk = d.bv = (size_t)L->K * 3 * C, d.bo = (size_t)L->K * C;
    d.causal = 0, d.offset = 0, d.pre = NULL;
    memset(s->dqkvx, 0, zsize(KC * 3));
    xattn_backward(s->dqkvx, s->dqkvx + C, s->dqkvx + 2 * C, s->da, L->qkvx, L->qkvx + C,
                   L->qkvx + 2 * C, L->attx, &d, s->xs);
    memset(s->dn, 0, zsize(KC));
    linear_backward(s->dn, g->wqkv_x, g->bqkv_x, s->dqkvx, L->Nx, p->wqkv_x, BK, C, 3 * C);
    layernorm_backward(dM1, g->nx_w, g->nx_b, s->dn, L->M1, p->nx_w, L->nx_mean, L->nx_rstd, BK,
                       C);
}

/* ---- the read on a subset of rows ----------------------------------------------
 * With rows (the last layer under a head that reads a few rows) the read's
 * queries, attention and output projection run on the rows only: their q
 * fills the q columns of qkv at their positions (zero at the others), and a
 * chunk's read runs once per run of consecutive rows inside it, whose queries
 * share one causal band. A chunk without rows skips its read (its slots'
 * read keys and values too). The write keys and values, the read keys and
 * values of the tokens and the slot chain still need every token. */

/* Whether chunk ch holds a row of some sequence (always, without rows). */
static int chunk_reads(const slot_env *E, const slot_chunk *ch) {
    if (!E->rows) return 1;
    for (int b = 0; b < E->L.B; b++) {
        int p0 = b * E->T + ch->t0;
        int s0 = rows_lower_bound(E->rows, E->S, p0);
        if (s0 < E->S && E->rows[s0] < p0 + ch->n) return 1;
    }
    return 0;
}

/* The read of chunk ch (S slot rows in a.P in front of its tokens) on the
 * rows only: forward, o at the rows; backward, d q at the rows and d of the
 * tokens' keys|values into s.dqkv, d of the slot rows into s.dP. A run of m consecutive rows at
 * chunk positions [i0, i0 + m) of sequence b attends over keys [0, S + i0 +
 * m) with causal offset S + i0; its probabilities sit at att + (b Cm + i0) H
 * Pn as [H, m, S + i0 + m], inside the rows [i0, i0 + m) of the full layout's
 * [B,H,Cm,Pn]. */
static void read_rows(const slot_env *E, const slot_chunk_acts *a, const slot_chunk *ch, int S,
                      int backward) {
    const slot_layout *L = &E->L;
    const slot_scratch *s = &E->s;
    const int C = L->C, T = E->T;
    for (int b = 0; b < L->B; b++) {
        int p0 = b * T + ch->t0;
        int r = rows_lower_bound(E->rows, E->S, p0), r1 = rows_lower_bound(E->rows, E->S,
                                                                           p0 + ch->n);
        while (r < r1) {
            int e = rows_run_end(E->rows, r, r1);
            int i0 = E->rows[r] - p0, m = e - r;
            size_t pos = (size_t)E->rows[r];
            xattn_prefix pre = slot_prefix(E, a->P, S, ch->first && !ch->ctx);
            pre.k += b * pre.b, pre.v += b * pre.b, pre.dk += b * pre.db, pre.dv += b * pre.db;
            xattn_dims d = read_dims(E, &pre, i0 + m);
            d.B = 1, d.Tq = m, d.offset = S + i0;
            real *att = a->att + ((size_t)b * L->Cm + i0) * L->H * L->Pn;
            const real *kv = L->qkv + (size_t)p0 * 3 * C + C;
            real *dkv = s->dqkv + (size_t)p0 * 3 * C + C;
            if (backward)
                xattn_backward(s->dqkv + pos * 3 * C, dkv, dkv + C, s->dO + pos * C,
                               L->qkv + pos * 3 * C, kv, kv + C, att, &d, s->xs);
            else
                xattn_forward(L->o + pos * C, att, L->qkv + pos * 3 * C, kv, kv + C, &d, s->xs);
            r = e;
        }
    }
}

/* ---- the write keys and values of the tokens ----------------------------------
 * Only tokens [0, end) of a sequence are read by a write (the encoder's, or
 * that of a chunk that is not the last of its segment): the last chunk's
 * tokens are never written into the slots, so their write keys and values are
 * neither computed nor differentiated. With one chunk there are none at all. */

/* Those token rows as `blocks` runs of `rows` rows, `stride` rows apart: one
 * run of every row when that is all of them, else one per sequence. */
typedef struct kv_span {
    int blocks, rows;
    size_t stride;
} kv_span;

static kv_span kv_rows(const slot_env *E) {
    int end = E->c->variant == VARIANT_CONTEXT && E->lc < E->T ? E->lc : 0;
    for (int j = 0; j < E->n; j++) {
        slot_chunk ch = chunk_at(E->c, E->T, E->lc, j);
        if (!ch.last && ch.t0 + ch.n > end) end = ch.t0 + ch.n;
    }
    if (end == E->T) return (kv_span){1, E->L.B * E->T, 0};
    return (kv_span){end > 0 ? E->L.B : 0, end, (size_t)E->T};
}

/* L.kvw = x Wkv_w^T + b on those rows. */
static void kvw_forward(const slot_env *E) {
    const int C = E->L.C;
    const real *w = E->p.wqkv_w + (size_t)C * C, *bias = offset_or_null(E->p.bqkv_w, C);
    kv_span k = kv_rows(E);
    for (int b = 0; b < k.blocks; b++)
        linear_forward(E->L.kvw + b * k.stride * 2 * C, E->x + b * k.stride * C, w, bias, k.rows,
                       C, 2 * C);
}

/* Zero those rows of s.dkvw, where the writes' backward adds their gradients. */
static void kvw_zero(const slot_env *E) {
    const int C = E->L.C;
    kv_span k = kv_rows(E);
    for (int b = 0; b < k.blocks; b++)
        memset(E->s.dkvw + b * k.stride * 2 * C, 0, zsize((size_t)k.rows * 2 * C));
}

/* Backward of kvw_forward from the gradient in s.dkvw: dx and the write
 * k, v projection's gradients += (those rows only). */
static void kvw_backward(const slot_env *E, real *dx) {
    const int C = E->L.C;
    const real *w = E->p.wqkv_w + (size_t)C * C;
    real *dw = E->g.wqkv_w + (size_t)C * C, *db = offset_or_null(E->g.bqkv_w, C);
    kv_span k = kv_rows(E);
    for (int b = 0; b < k.blocks; b++)
        linear_backward(dx + b * k.stride * C, dw, db, E->s.dkvw + b * k.stride * 2 * C,
                        E->x + b * k.stride * C, w, k.rows, C, 2 * C);
}

/* ---- forward and backward -------------------------------------------------- */

static void slots_forward(const mixer_call *mc, real *out, const real *x) {
    slot_env E = env_of(mc, x);
    const slot_layout *L = &E.L;
    const slots_ptrs *p = &E.p;
    int B = L->B, K = L->K, C = L->C, T = E.T, BK = B * K, N = B * T;
    size_t bS = (size_t)L->S * 2 * C;
    /* with rows, the rows' x and q sit in s.dqkv, free until the backward */
    real *xr = E.s.dqkv, *qr = E.s.dqkv + (size_t)E.S * C;
    if (E.rows) {
        rows_gather(xr, x, C, E.rows, E.S, C);
        linear_forward_rows(L->qkv, qr, x, xr, p->wqkv, p->bqkv, E.rows, E.S, N, C, 3 * C, C);
    } else {
        linear_forward(L->qkv, x, p->wqkv, p->bqkv, N, C, 3 * C);
    }
    kvw_forward(&E);
    int enc = E.c->variant == VARIANT_CONTEXT && E.lc < T;
    if (enc) {
        broadcast_slots(&E, L->M0);
        ln_s_forward(&E, L->Mh0, L->mh0_mean, L->mh0_rstd, L->M0);
        slot_write w = L->enc;
        write_forward(&E, &w, L->M1, L->M0, L->Mh0, 0, E.lc, 1);
        self_forward(&E);
    }
    for (int j = 0; j < E.n; j++) {
        slot_chunk ch = chunk_at(E.c, T, E.lc, j);
        slot_chunk_acts a = chunk_acts(E.c, L, j);
        if (ch.first) broadcast_slots(&E, a.M);
        ln_s_forward(&E, a.Mh, a.mh_mean, a.mh_rstd, a.M);
        int s0 = ch.ctx ? K : 0, S = s0 + K;
        if (chunk_reads(&E, &ch)) {
            /* a segment's first chunk reads M_0, the same in every sequence:
             * its slots' keys and values are projected once (and, without
             * M_ctx in front, read by every sequence from there) */
            const real *wkv = p->wqkv + (size_t)C * C, *bkv = offset_or_null(p->bqkv, C);
            int rows = ch.first ? K : BK;
            if (ch.ctx) {
                linear_forward(E.s.tkv, a.Mh, wkv, bkv, rows, C, 2 * C);
                copy_rows(a.P, bS, 2 * C, L->kvc, (size_t)K * 2 * C, 2 * C, B, K, 2 * C);
                copy_rows(a.P + (size_t)K * 2 * C, bS, 2 * C, E.s.tkv,
                          ch.first ? 0 : (size_t)K * 2 * C, 2 * C, B, K, 2 * C);
            } else {
                linear_forward(a.P, a.Mh, wkv, bkv, rows, C, 2 * C);
            }
            if (E.rows) {
                read_rows(&E, &a, &ch, S, 0);
            } else {
                xattn_prefix pre = slot_prefix(&E, a.P, S, ch.first && !ch.ctx);
                xattn_dims d = read_dims(&E, &pre, ch.n);
                const real *q = L->qkv + (size_t)ch.t0 * 3 * C;
                xattn_forward(L->o + (size_t)ch.t0 * C, a.att, q, q + C, q + 2 * C, &d, E.s.xs);
            }
        }
        if (!ch.last) {
            slot_chunk_acts next = chunk_acts(E.c, L, j + 1);
            write_forward(&E, &a.w, next.M, a.M, a.Mh, ch.t0, ch.n, ch.first);
        }
    }
    if (E.rows) {
        rows_gather(xr, L->o, C, E.rows, E.S, C); /* now the rows' o */
        linear_forward(out, xr, p->wo, p->bo, E.S, C, C);
    } else {
        linear_forward(out, L->o, p->wo, p->bo, N, C, C);
    }
}

static void slots_backward(const mixer_call *mc, real *dx, const real *dout, const real *x) {
    slot_env E = env_of(mc, x);
    const slot_layout *L = &E.L;
    const slots_ptrs *p = &E.p, *g = &E.g;
    const slot_scratch *s = &E.s;
    int B = L->B, K = L->K, C = L->C, T = E.T, BK = B * K, N = B * T;
    size_t KC = (size_t)BK * C, bS = (size_t)L->S * 2 * C;
    ml_par_zero(s->dqkv, zsize((size_t)N * 3 * C));
    ml_par_zero(s->dO, zsize((size_t)N * C));
    memset(s->dkvc, 0, zsize(KC * 2));
    if (E.rows) {
        /* s.dkvw is free until the chunks: the rows' o and its gradient */
        real *orow = s->dkvw, *dor = s->dkvw + (size_t)E.S * C;
        rows_gather(orow, L->o, C, E.rows, E.S, C);
        memset(dor, 0, zsize((size_t)E.S * C));
        linear_backward(dor, g->wo, g->bo, dout, orow, p->wo, E.S, C, C);
        rows_scatter_add(s->dO, dor, E.rows, E.S, C);
    } else {
        linear_backward(s->dO, g->wo, g->bo, dout, L->o, p->wo, N, C, C);
    }
    kvw_zero(&E);
    real *dM = s->dM, *dMn = s->dMn;
    for (int j = E.n - 1; j >= 0; j--) {
        slot_chunk ch = chunk_at(E.c, T, E.lc, j);
        slot_chunk_acts a = chunk_acts(E.c, L, j);
        memset(dM, 0, zsize(KC));
        memset(s->dMh, 0, zsize(KC));
        if (!ch.last)
            write_backward(&E, &a.w, dM, s->dMh, dMn, a.M, a.Mh, ch.t0, ch.n, ch.first);
        int s0 = ch.ctx ? K : 0, S = s0 + K;
        if (chunk_reads(&E, &ch)) {
            memset(s->dP, 0, zsize((size_t)B * bS));
            if (E.rows) {
                read_rows(&E, &a, &ch, S, 1);
            } else {
                xattn_prefix pre = slot_prefix(&E, a.P, S, ch.first && !ch.ctx);
                xattn_dims d = read_dims(&E, &pre, ch.n);
                const real *q = L->qkv + (size_t)ch.t0 * 3 * C;
                real *dq = s->dqkv + (size_t)ch.t0 * 3 * C;
                xattn_backward(dq, dq + C, dq + 2 * C, s->dO + (size_t)ch.t0 * C, q, q + C,
                               q + 2 * C, a.att, &d, s->xs);
            }
            /* the slots' rows of dP as [B,K,2C] (the rows M_ctx's follow) */
            real *dslot = s->dP;
            if (ch.ctx) {
                add_rows(s->dkvc, (size_t)K * 2 * C, 2 * C, s->dP, bS, 2 * C, B, K, 2 * C);
                copy_rows(s->tkv, (size_t)K * 2 * C, 2 * C, s->dP + (size_t)K * 2 * C, bS, 2 * C,
                          B, K, 2 * C);
                dslot = s->tkv;
            }
            if (ch.first) fold_rows(dslot, (size_t)K * 2 * C, 2 * C, B, K, 2 * C);
            linear_backward(s->dMh, g->wqkv + (size_t)C * C, offset_or_null(g->bqkv, C), dslot,
                            a.Mh, p->wqkv + (size_t)C * C, ch.first ? K : BK, C, 2 * C);
        }
        ln_s_backward(&E, dM, s->dMh, a.M, a.mh_mean, a.mh_rstd);
        if (ch.first) reduce_slots(&E, dM);
        real *t = dM;
        dM = dMn;
        dMn = t;
    }
    if (E.c->variant == VARIANT_CONTEXT && E.lc < T) {
        /* s.dM and s.dMn are free again: dM1 and then dM_0 of the encoder */
        real *dM1 = s->dM, *dM0 = s->dMn;
        memset(dM1, 0, zsize(KC));
        self_backward(&E, dM1);
        memset(dM0, 0, zsize(KC));
        memset(s->dMh, 0, zsize(KC));
        write_backward(&E, &L->enc, dM0, s->dMh, dM1, L->M0, L->Mh0, 0, E.lc, 1);
        ln_s_backward(&E, dM0, s->dMh, L->M0, L->mh0_mean, L->mh0_rstd);
        reduce_slots(&E, dM0);
    }
    kvw_backward(&E, dx);
    if (E.rows) {
        /* s.dkvw is free again: the rows' d q and x; s.dO: their d x */
        real *qr = s->dkvw, *xr = s->dkvw + (size_t)E.S * C, *dxr = s->dO;
        rows_gather(xr, x, C, E.rows, E.S, C);
        memset(dxr, 0, zsize((size_t)E.S * C));
        linear_backward_rows(dx, dxr, g->wqkv, g->bqkv, qr, s->dqkv, x, xr, p->wqkv, E.rows,
                             E.S, N, C, 3 * C, C);
        rows_scatter_add(dx, dxr, E.rows, E.S, C);
    } else {
        linear_backward(dx, g->wqkv, g->bqkv, s->dqkv, x, p->wqkv, N, C, 3 * C);
    }
}

/* The slots carried across a chunk boundary; the context variant keeps M_ctx
 * and the current question memory. */
static long slots_state_size(const void *cfg, int C, int T) {
    const slots_cfg *c = cfg;
    return (c->variant == VARIANT_CONTEXT ? 2L : 1L) * c->slots * C;
}

const ml_mixer mixer_slots = {
    .name = "slots",
    .help = "slot bottleneck: k learned slots; chunk: tokens read [slots ; "
            "their chunk so far], slots rewritten at chunk ends by attention over [slots ; "
            "chunk] + MLP (+ GRU gate); context: slots encode the context, the question reads "
            "[M_ctx ; question slots ; its chunk so far]",
    .fields = slots_fields,
    .cfg_size = sizeof(slots_cfg),
    .validate = slots_validate,
    .declare = slots_declare,
    .act_size = slots_act_size,
    .scratch_size = slots_scratch_size,
    .forward = slots_forward,
    .backward = slots_backward,
    .state_size = slots_state_size,
    .needs_context = slots_needs_context,
    .out_rows = 1,
};
