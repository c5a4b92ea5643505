/* mixer_softmax.c: causal multi-head softmax attention, the baseline mixer.
 *
 *   qkv = x Wqkv^T (+ bqkv); o = softmax(q k^T / sqrt(D) + causal mask) v per head;
 *   out = o Wo^T + bo
 *
 * The attention itself (and its sliding window) lives in softmax_attention.c;
 * this file owns the projections, the parameter list and the state size (the
 * KV cache: 2 * C floats per token seen).
 *
 * Given rows (the last layer under a head that reads a few rows), keys and
 * values are projected for every token and queries, attention and the output
 * projection only for those rows. */
#include <stddef.h>
#include <string.h>

#include "kernels.h"
#include "mixer.h"
#include "parallel.h"

typedef struct softmax_cfg {
    int heads;
    int window;   /* 0 = full causal; w > 0: w keys including the query's own */
    int qkv_bias;
} softmax_cfg;

static const ml_field softmax_fields[] = {
    {"heads", FT_INT, offsetof(softmax_cfg, heads), 1, 4096, NULL, "1",
     "attention heads; d_model must be divisible by heads"},
    {"window", FT_INT, offsetof(softmax_cfg, window), 0, 1e9, NULL, "0",
     "sliding window: each query sees this many keys including itself (0 = all previous)"},
    {"qkv_bias", FT_BOOL, offsetof(softmax_cfg, qkv_bias), 0, 1, NULL, "true",
     "bias on the q, k, v projection"},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL},
};

static int softmax_validate(const void *cfg, int C, ml_error *e) {
    const softmax_cfg *c = cfg;
    if (C % c->heads != 0)
        return ML_FAIL(e, "heads: d_model %d is not divisible by heads %d", C, c->heads);
    return 0;
}

static void softmax_declare(const void *cfg, int C, ml_param_sink *s) {
    const softmax_cfg *c = cfg;
    param_declare(s, "wqkv", 3 * C, C, INIT_NORMAL, 1);
    if (c->qkv_bias) param_declare(s, "bqkv", 3 * C, 1, INIT_ZEROS, 0);
    param_declare(s, "wo", C, C, INIT_NORMAL, 1);
    param_declare(s, "bo", C, 1, INIT_ZEROS, 0);
}

/* act layout: qkv [B,T,3C] | att [B,H,T,T] | o [B,T,C]; with S rows the same
 * regions hold kv [B,T,2C] q [S,C] | att [H,S,T] | o [S,C]. */
static size_t softmax_act_size(const void *cfg, int B, int T, int C) {
    const softmax_cfg *c = cfg;
    size_t BT = (size_t)B * T;
    return BT * 3 * C + (size_t)B * c->heads * T * T + BT * C;
}

/* scratch layout: attention scratch | dqkv [B,T,3C] | do [B,T,C]; with S < BT
 * rows: attention scratch | dkv [B,T,2C] | dq, do, x rows, dx rows [S,C] each. */
static size_t softmax_scratch_size(const void *cfg, int B, int T, int C) {
    const softmax_cfg *c = cfg;
    size_t BT = (size_t)B * T;
    return attention_scratch_size(T, C / c->heads) + BT * 6 * C;
}

typedef struct softmax_ptrs {
    real *wqkv, *bqkv, *wo, *bo;
} softmax_ptrs;

static softmax_ptrs softmax_unpack(const softmax_cfg *c, real *const *p) {
    softmax_ptrs r;
    int i = 0;
    r.wqkv = p[i++];
    r.bqkv = c->qkv_bias ? p[i++] : NULL;
    r.wo = p[i++];
    r.bo = p[i++];
    return r;
}

/* The regions of one rows call (layouts above). */
typedef struct softmax_rows_bufs {
    real *kv, *q, *att, *o;            /* act */
    real *dkv, *dq, *dO, *xr, *dxr;    /* scratch after the attention's */
} softmax_rows_bufs;

static softmax_rows_bufs softmax_rows_at(const mixer_call *mc) {
    const softmax_cfg *c = mc->cfg;
    size_t N = (size_t)mc->B * mc->T, C = (size_t)mc->C, S = (size_t)mc->n_rows;
    softmax_rows_bufs r;
    r.kv = mc->act;
    r.q = r.kv + N * 2 * C;
    r.att = mc->act + N * 3 * C;
    r.o = r.att + N * (size_t)c->heads * (size_t)mc->T;
    r.dkv = mc->scratch + attention_scratch_size(mc->T, mc->C / c->heads);
    r.dq = r.dkv + N * 2 * C;
    r.dO = r.dq + S * C;
    r.xr = r.dO + S * C;
    r.dxr = r.xr + S * C;
    return r;
}

static void softmax_rows_forward(const mixer_call *mc, real *out, const real *x) {
    const softmax_cfg *c = mc->cfg;
    int B = mc->B, T = mc->T, C = mc->C, H = c->heads, N = B * T, S = mc->n_rows;
    softmax_ptrs p = softmax_unpack(c, mc->p);
    softmax_rows_bufs r = softmax_rows_at(mc);
    /* wqkv is [q; k; v] blocks of C rows: k and v for every token, q for the rows */
    linear_forward(r.kv, x, p.wqkv + (size_t)C * C, p.bqkv ? p.bqkv + C : NULL, N, C, 2 * C);
    rows_gather(r.xr, x, C, mc->rows, S, C);
    linear_forward(r.q, r.xr, p.wqkv, p.bqkv, S, C, C);
    attention_rows_forward(r.o, r.att, r.q, r.kv, mc->rows, S, B, T, H, C / H, c->window);
    linear_forward(out, r.o, p.wo, p.bo, S, C, C);
}

static void softmax_rows_backward(const mixer_call *mc, real *dx, const real *dout,
                                  const real *x) {
    const softmax_cfg *c = mc->cfg;
    int B = mc->B, T = mc->T, C = mc->C, H = c->heads, N = B * T, S = mc->n_rows;
    softmax_ptrs p = softmax_unpack(c, mc->p);
    softmax_ptrs g = softmax_unpack(c, mc->dp);
    softmax_rows_bufs r = softmax_rows_at(mc);
    ml_par_zero(r.dkv, sizeof(real) * (size_t)N * 2 * C);
    memset(r.dq, 0, sizeof(real) * (size_t)S * 2 * C); /* dq and dO */
    linear_backward(r.dO, g.wo, g.bo, dout, r.o, p.wo, S, C, C);
    attention_rows_backward(r.dq, r.dkv, r.dO, r.q, r.kv, r.att, mc->rows, S, B, T, H, C / H,
                            c->window, mc->scratch);
    linear_backward(dx, g.wqkv + (size_t)C * C, g.bqkv ? g.bqkv + C : NULL, r.dkv, x,
                    p.wqkv + (size_t)C * C, N, C, 2 * C);
    rows_gather(r.xr, x, C, mc->rows, S, C);
    memset(r.dxr, 0, sizeof(real) * (size_t)S * C);
    linear_backward(r.dxr, g.wqkv, g.bqkv, r.dq, r.xr, p.wqkv, S, C, C);
    rows_scatter_add(dx, r.dxr, mc->rows, S, C);
}

static void softmax_forward(const mixer_call *mc, real *out, const real *x) {
    const softmax_cfg *c = mc->cfg;
    if (mc->rows) {
        softmax_rows_forward(mc, out, x);
        return;
    }
    int B = mc->B, T = mc->T, C = mc->C, H = c->heads;
    int N = B * T;
    softmax_ptrs p = softmax_unpack(c, mc->p);
    real *qkv = mc->act;
    real *att = qkv + (size_t)N * 3 * C;
    real *o = att + (size_t)B * H * T * T;
    linear_forward(qkv, x, p.wqkv, p.bqkv, N, C, 3 * C);
    attention_forward(o, att, qkv, B, T, H, C / H, c->window, mc->scratch);
    linear_forward(out, o, p.wo, p.bo, N, C, C);
}

static void softmax_backward(const mixer_call *mc, real *dx, const real *dout,
                             const real *x) {
    const softmax_cfg *c = mc->cfg;
    if (mc->rows) {
        softmax_rows_backward(mc, dx, dout, x);
        return;
    }
    int B = mc->B, T = mc->T, C = mc->C, H = c->heads;
    int N = B * T;
    softmax_ptrs p = softmax_unpack(c, mc->p);
    softmax_ptrs g = softmax_unpack(c, mc->dp);
    const real *qkv = mc->act;
    const real *att = qkv + (size_t)N * 3 * C;
    const real *o = att + (size_t)B * H * T * T;
    real *dqkv = mc->scratch + attention_scratch_size(T, C / H);
    real *dO = dqkv + (size_t)N * 3 * C;
    ml_par_zero(dqkv, sizeof(real) * (size_t)N * 4 * C);
    linear_backward(dO, g.wo, g.bo, dout, o, p.wo, N, C, C);
    attention_backward(dqkv, dO, qkv, att, B, T, H, C / H, c->window, mc->scratch);
    linear_backward(dx, g.wqkv, g.bqkv, dqkv, x, p.wqkv, N, C, 3 * C);
}

/* The KV cache: keys and values of every token seen, C each. */
static long softmax_state_size(const void *cfg, int C, int T) {
    const softmax_cfg *c = cfg;
    long seen = (c->window > 0 && c->window < T) ? c->window : T;
    return 2L * C * seen;
}

const ml_mixer mixer_softmax = {
    .name = "softmax",
    .help = "causal multi-head softmax attention (optionally sliding-window)",
    .fields = softmax_fields,
    .cfg_size = sizeof(softmax_cfg),
    .validate = softmax_validate,
    .declare = softmax_declare,
    .act_size = softmax_act_size,
    .scratch_size = softmax_scratch_size,
    .forward = softmax_forward,
    .backward = softmax_backward,
    .state_size = softmax_state_size,
    .out_rows = 1,
};
