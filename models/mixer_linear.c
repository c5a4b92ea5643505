/* mixer_linear.c: linear attention (Katharopoulos et al. 2020) as a mixer.
 *
 *   qkv = x Wqkv^T (+ bqkv); phi = feature map on q and k;
 *   per head: S_t = S_{t-1} + phi(k_t) v_t^T, o_t = S_t^T phi(q_t)
 *             [/ (phi(q_t) . z_t + eps), z_t = z_{t-1} + phi(k_t), when normalize]
 *   out = o Wo^T + bo
 *
 * The recurrence in its three forms (recurrent, parallel, chunkwise) lives in
 * linear_attention.c; this file owns the projections, the feature map wiring,
 * the parameter list and the state size (H * D * (D + normaliser) floats,
 * independent of T). */
#include <stddef.h>
#include <string.h>

#include "kernels.h"
#include "mixer.h"

typedef struct linear_cfg {
    int heads;
    int feature_map; /* fmap_kind */
    int normalize;
    double eps;
    int chunk;
    int form;        /* index into linear_forms */
    int qkv_bias;
} linear_cfg;

static const char *const linear_fmaps[] = {"identity", "elu1", "relu", NULL};
static const char *const linear_forms[] = {"chunkwise", "parallel", "recurrent", NULL};
static const la_form linear_form_kind[] = {LA_CHUNKWISE, LA_PARALLEL, LA_RECURRENT};

static const ml_field linear_fields[] = {
    {"heads", FT_INT, offsetof(linear_cfg, heads), 1, 4096, NULL, "1",
     "heads; d_model must be divisible by heads"},
    {"feature_map", FT_ENUM, offsetof(linear_cfg, feature_map), 0, 0, linear_fmaps, "elu1",
     "feature map on q and k: identity, elu1 (elu(x)+1), relu"},
    {"normalize", FT_BOOL, offsetof(linear_cfg, normalize), 0, 1, NULL, "true",
     "divide by phi(q).z + eps (Katharopoulos); false: raw numerator"},
    {"eps", FT_REAL, offsetof(linear_cfg, eps), 0, 1, NULL, "1e-6",
     "added to the normaliser's denominator"},
    {"chunk", FT_INT, offsetof(linear_cfg, chunk), 1, 1e6, NULL, "64",
     "chunk length of the chunkwise form"},
    {"form", FT_ENUM, offsetof(linear_cfg, form), 0, 0, linear_forms, "chunkwise",
     "computation: chunkwise (GEMM, fast), parallel (masked T x T), recurrent (per token)"},
    {"qkv_bias", FT_BOOL, offsetof(linear_cfg, qkv_bias), 0, 1, NULL, "false",
     "bias on the q, k, v projection"},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL},
};

static int linear_validate(const void *cfg, int C, ml_error *e) {
    const linear_cfg *c = cfg;
    if (C % c->heads != 0)
        return ML_FAIL(e, "heads: d_model %d is not divisible by heads %d", C, c->heads);
    return 0;
}

static void linear_declare(const void *cfg, int C, ml_param_sink *s) {
    const linear_cfg *c = cfg;
    param_declare(s, "wqkv", 3 * C, C, INIT_NORMAL, 1);
    if (c->qkv_bias) param_declare(s, "bqkv", 3 * C, 1, INIT_ZEROS, 0);
    param_declare(s, "wo", C, C, INIT_NORMAL, 1);
    param_declare(s, "bo", C, 1, INIT_ZEROS, 0);
}

static linattn_dims linear_dims(const linear_cfg *c, int B, int T, int C) {
    linattn_dims d;
    memset(&d, 0, sizeof d);
    d.B = B;
    d.T = T;
    d.H = c->heads;
    d.Dk = d.Dv = C / c->heads;
    d.q_stride = 2 * C; /* q and k are read from phi [B,T,2,C] */
    d.k_stride = 2 * C;
    d.v_stride = 3 * C; /* v straight from qkv [B,T,3,C] */
    d.normalize = c->normalize;
    d.eps = (real)c->eps;
    d.chunk = c->chunk;
    d.form = linear_form_kind[c->form];
    return d;
}

/* act layout: qkv [B,T,3C] | phi [B,T,2C] | o [B,T,C] | linattn save */
static size_t linear_act_size(const void *cfg, int B, int T, int C) {
    linattn_dims d = linear_dims(cfg, B, T, C);
    return (size_t)B * T * 6 * C + linattn_save_size(&d);
}

/* scratch layout: linattn scratch | do [B,T,C] | dphi [B,T,2C] | dqkv [B,T,3C] */
static size_t linear_scratch_size(const void *cfg, int B, int T, int C) {
    linattn_dims d = linear_dims(cfg, B, T, C);
    return linattn_scratch_size(&d) + (size_t)B * T * 6 * C;
}

typedef struct linear_ptrs {
    real *wqkv, *bqkv, *wo, *bo;
} linear_ptrs;

static linear_ptrs linear_unpack(const linear_cfg *c, real *const *p) {
    linear_ptrs r;
    int i = 0;
    r.wqkv = p[i++];
    r.bqkv = c->qkv_bias ? p[i++] : NULL;
    r.wo = p[i++];
    r.bo = p[i++];
    return r;
}

static void linear_forward_mix(const mixer_call *mc, real *out, const real *x) {
    const linear_cfg *c = mc->cfg;
    int C = mc->C, N = mc->B * mc->T;
    linattn_dims d = linear_dims(c, mc->B, mc->T, C);
    linear_ptrs p = linear_unpack(c, mc->p);
    real *qkv = mc->act;
    real *phi = qkv + (size_t)N * 3 * C;
    real *o = phi + (size_t)N * 2 * C;
    real *save = o + (size_t)N * C;
    linear_forward(qkv, x, p.wqkv, p.bqkv, N, C, 3 * C);
    for (int r = 0; r < N; r++)
        featuremap_forward(phi + (size_t)r * 2 * C, qkv + (size_t)r * 3 * C, (size_t)2 * C,
                           (fmap_kind)c->feature_map);
    linattn_forward(o, save, phi, phi + C, qkv + 2 * C, &d, mc->scratch);
    linear_forward(out, o, p.wo, p.bo, N, C, C);
}

static void linear_backward_mix(const mixer_call *mc, real *dx, const real *dout,
                                const real *x) {
    const linear_cfg *c = mc->cfg;
    int C = mc->C, N = mc->B * mc->T;
    linattn_dims d = linear_dims(c, mc->B, mc->T, C);
    linear_ptrs p = linear_unpack(c, mc->p);
    linear_ptrs g = linear_unpack(c, mc->dp);
    const real *qkv = mc->act;
    const real *phi = qkv + (size_t)N * 3 * C;
    const real *o = phi + (size_t)N * 2 * C;
    const real *save = o + (size_t)N * C;
    real *dO = mc->scratch + linattn_scratch_size(&d);
    real *dphi = dO + (size_t)N * C;
    real *dqkv = dphi + (size_t)N * 2 * C;
    memset(dO, 0, sizeof(real) * (size_t)N * 6 * C);
    linear_backward(dO, g.wo, g.bo, dout, o, p.wo, N, C, C);
    linattn_backward(dphi, dphi + C, dqkv + 2 * C, dO, o, save, phi, phi + C, qkv + 2 * C, &d,
                     mc->scratch);
    for (int r = 0; r < N; r++)
        featuremap_backward(dqkv + (size_t)r * 3 * C, dphi + (size_t)r * 2 * C,
                            qkv + (size_t)r * 3 * C, (size_t)2 * C, (fmap_kind)c->feature_map);
    linear_backward(dx, g.wqkv, g.bqkv, dqkv, x, p.wqkv, N, C, 3 * C);
}

/* Per head a D x D state, plus the D-vector normaliser z when normalising. */
static long linear_state_size(const void *cfg, int C, int T) {
    const linear_cfg *c = cfg;
    long D = C / c->heads;
    return (long)c->heads * (D * D + (c->normalize ? D : 0));
}

const ml_mixer mixer_linear = {
    .name = "linear",
    .help = "linear attention: additive outer-product state, feature map on q and k",
    .fields = linear_fields,
    .cfg_size = sizeof(linear_cfg),
    .validate = linear_validate,
    .declare = linear_declare,
    .act_size = linear_act_size,
    .scratch_size = linear_scratch_size,
    .forward = linear_forward_mix,
    .backward = linear_backward_mix,
    .state_size = linear_state_size,
};
