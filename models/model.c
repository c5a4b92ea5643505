/* model.c: the sequence model around a mixer (see model.h for the maths).
 *
 * What is here: the parameter table (built by asking each part to declare its
 * tensors), the one-time allocation of weights, gradients, moments and
 * activations, and the forward/backward that chain the kernels. What is not:
 * the kernels (kernels.h), the mixers (mixer_*.c), the optimiser loop and
 * everything about data (harness/train.c). */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kernels.h"
#include "parallel.h"
#include "rng.h"

#define MAX_MIXER_PARAMS 32

/* Per-layer pointers into the flat buffers. Weights (w_) point into m->w,
 * gradients (g_) into m->g, activations into m->acts. */
struct ml_layer {
    real *w_n1w, *w_n1b, *g_n1w, *g_n1b;       /* norm1 */
    real *w_convw, *w_convb, *g_convw, *g_convb; /* conv (NULL when off) */
    real *mp[MAX_MIXER_PARAMS], *mdp[MAX_MIXER_PARAMS];
    real *w_n2w, *w_n2b, *g_n2w, *g_n2b;       /* norm2 (mlp only) */
    real *w_fc1, *w_fc1b, *w_fc2, *w_fc2b;     /* mlp */
    real *g_fc1, *g_fc1b, *g_fc2, *g_fc2b;
    /* activations, sized for maxB*maxT rows */
    real *x;        /* [N,C] input of the layer (residual stream) */
    real *n1, *n1_mean, *n1_rstd; /* [N,C], [N], [N] */
    real *conv;     /* [N,C] conv output (when conv) */
    real *mix_act;  /* mixer's saved activations */
    real *xmid;     /* [N,C] x + mixer output */
    real *n2, *n2_mean, *n2_rstd;
    real *fc1;      /* [N,RC] pre-activation */
    real *gelu;     /* [N,RC] */
};

struct ml_param_sink {
    ml_model *m;
    char prefix[64];
    int count;      /* tensors declared through this sink */
    int first;      /* index of the first of them */
    int *failed;    /* set when the table could not grow */
};

void param_declare(ml_param_sink *s, const char *name, int rows, int cols, ml_init init,
                   int decay) {
    ml_model *m = s->m;
    ml_param *np = realloc(m->params, sizeof(ml_param) * (size_t)(m->n_tensors + 1));
    if (!np) {
        *s->failed = 1;
        return;
    }
    m->params = np;
    ml_param *p = &m->params[m->n_tensors++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s%s", s->prefix, name);
    p->rows = rows;
    p->cols = cols;
    p->n = (size_t)rows * (size_t)cols;
    p->offset = m->n_params;
    p->init = init;
    p->decay = decay;
    m->n_params += p->n;
    s->count++;
}

static ml_param_sink sink_at(ml_model *m, const char *prefix, int *failed) {
    ml_param_sink s;
    memset(&s, 0, sizeof s);
    s.m = m;
    s.failed = failed;
    snprintf(s.prefix, sizeof s.prefix, "%s", prefix);
    s.first = m->n_tensors;
    return s;
}

static int has_bias_norm(const ml_model *m) { return m->cfg.norm == NORM_LAYER; }

/* Declare the whole table in a fixed order. The order is part of nothing
 * external: parameters are addressed by name (fixtures, checkpoints). */
static void declare_all(ml_model *m, int *mixer_first, int *mixer_count, int *failed) {
    const model_config *c = &m->cfg;
    int C = c->d_model, R = c->mlp_ratio * c->d_model;
    ml_param_sink s = sink_at(m, "", failed);
    param_declare(&s, "wte", m->V, C, INIT_NORMAL, 1);
    if (c->position == POS_LEARNED) param_declare(&s, "wpe", m->maxT, C, INIT_NORMAL, 1);
    for (int l = 0; l < c->n_layers; l++) {
        char pre[64];
        snprintf(pre, sizeof pre, "layers.%d.", l);
        s = sink_at(m, pre, failed);
        param_declare(&s, "norm1.w", C, 1, INIT_ONES, 0);
        if (has_bias_norm(m)) param_declare(&s, "norm1.b", C, 1, INIT_ZEROS, 0);
        if (c->conv > 0) {
            param_declare(&s, "conv.w", C, c->conv, INIT_CONV, 0);
            param_declare(&s, "conv.b", C, 1, INIT_ZEROS, 0);
        }
        snprintf(pre, sizeof pre, "layers.%d.mixer.", l);
        ml_param_sink ms = sink_at(m, pre, failed);
        m->mixer->declare(c->mixer_cfg.bytes, C, &ms);
        mixer_first[l] = ms.first;
        mixer_count[l] = ms.count;
        if (c->mlp) {
            snprintf(pre, sizeof pre, "layers.%d.", l);
            s = sink_at(m, pre, failed);
            param_declare(&s, "norm2.w", C, 1, INIT_ONES, 0);
            if (has_bias_norm(m)) param_declare(&s, "norm2.b", C, 1, INIT_ZEROS, 0);
            param_declare(&s, "mlp.w1", R, C, INIT_NORMAL, 1);
            param_declare(&s, "mlp.b1", R, 1, INIT_ZEROS, 0);
            param_declare(&s, "mlp.w2", C, R, INIT_NORMAL, 1);
            param_declare(&s, "mlp.b2", C, 1, INIT_ZEROS, 0);
        }
    }
    s = sink_at(m, "", failed);
    param_declare(&s, "norm_f.w", C, 1, INIT_ONES, 0);
    if (has_bias_norm(m)) param_declare(&s, "norm_f.b", C, 1, INIT_ZEROS, 0);
    if (!c->tie_embeddings) param_declare(&s, "lm_head", m->V, C, INIT_NORMAL, 1);
}

const ml_param *model_param(const ml_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->params[i].name, name)) return &m->params[i];
    return NULL;
}

/* Pointer to the weights (or, with grad, the gradients) of tensor name. */
static real *tensor(ml_model *m, const char *name, int grad) {
    const ml_param *p = model_param(m, name);
    if (!p) return NULL;
    return (grad ? m->g : m->w) + p->offset;
}

static real *layer_tensor(ml_model *m, int l, const char *name, int grad) {
    char full[96];
    snprintf(full, sizeof full, "layers.%d.%s", l, name);
    return tensor(m, full, grad);
}

/* Carves consecutive regions out of one allocation (two passes: measure,
 * then assign). */
typedef struct carver {
    real *base;
    size_t used;
} carver;

static real *carve(carver *cv, size_t n) {
    real *p = cv->base ? cv->base + cv->used : NULL;
    cv->used += (n + 15) & ~(size_t)15; /* keep 64-byte alignment of each region */
    return p;
}

/* The activation arena: zero-filled anonymous pages, so that buffers a run
 * never touches (the logits of unsupervised rows with the supervised head, the
 * MLP's when it is off) cost address space but no resident memory. */
static real *acts_alloc(size_t n) {
    size_t bytes = n * sizeof(real) + 64;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : (real *)p;
}

static void acts_free(real *p, size_t n) {
    if (p) munmap(p, n * sizeof(real) + 64);
}

/* Model-level scratch and the head, shared by all layers. */
typedef struct head_bufs {
    real *xf;            /* [N,C] final residual stream */
    real *nf, *nf_mean, *nf_rstd;
    real *rows;          /* [N,C] gathered supervised rows of nf */
    real *logits;        /* [N,V] logits, then probabilities, then d logits */
    real *hblk, *hparts; /* the blocked head (lm_head.c): logits blocks, dW partials */
    int hR, hG;          /* most rows per block; groups of the last forward (0: unfused) */
    real *mix_out;       /* [N,C] mixer output / MLP output */
    real *mix_scratch;   /* mixer scratch */
    real *d_res;         /* [N,C] gradient of the residual stream */
    real *d_a, *d_b;     /* [N,C] gradient temporaries */
    real *d_h;           /* [N,RC] gradient temporaries of the MLP */
    real *d_h2;
    int *targets;        /* [N] targets of the gathered rows */
} head_bufs;

static head_bufs *head_of(ml_model *m) {
    return (head_bufs *)(void *)(m->layers + m->cfg.n_layers);
}

static size_t layout_acts(ml_model *m, real *base) {
    const model_config *c = &m->cfg;
    size_t N = (size_t)m->maxB * m->maxT, C = (size_t)c->d_model;
    size_t RC = (size_t)c->mlp_ratio * C;
    carver cv = {base, 0};
    const void *mcfg = c->mixer_cfg.bytes;
    for (int l = 0; l < c->n_layers; l++) {
        ml_layer *L = &m->layers[l];
        L->x = carve(&cv, N * C);
        L->n1 = carve(&cv, N * C);
        L->n1_mean = carve(&cv, N);
        L->n1_rstd = carve(&cv, N);
        L->conv = c->conv > 0 ? carve(&cv, N * C) : NULL;
        L->mix_act = carve(&cv, m->mixer->act_size(mcfg, m->maxB, m->maxT, c->d_model));
        L->xmid = carve(&cv, N * C);
        if (c->mlp) {
            L->n2 = carve(&cv, N * C);
            L->n2_mean = carve(&cv, N);
            L->n2_rstd = carve(&cv, N);
            L->fc1 = carve(&cv, N * RC);
            L->gelu = carve(&cv, N * RC);
        }
    }
    head_bufs *h = head_of(m);
    h->xf = carve(&cv, N * C);
    h->nf = carve(&cv, N * C);
    h->nf_mean = carve(&cv, N);
    h->nf_rstd = carve(&cv, N);
    h->rows = carve(&cv, N * C);
    h->logits = carve(&cv, N * (size_t)m->V);
    h->hR = lm_head_block_rows(m->V, 0, (int)N);
    h->hblk = carve(&cv, (size_t)LMH_MAX_GROUPS * h->hR * m->V);
    h->hparts = carve(&cv, (size_t)LMH_MAX_GROUPS * m->V * C);
    h->mix_out = carve(&cv, N * C);
    h->mix_scratch = carve(&cv, m->mixer->scratch_size(mcfg, m->maxB, m->maxT, c->d_model));
    h->d_res = carve(&cv, N * C);
    h->d_a = carve(&cv, N * C);
    h->d_b = carve(&cv, N * C);
    h->d_h = carve(&cv, N * RC);
    h->d_h2 = carve(&cv, N * RC);
    return cv.used;
}

int model_build(ml_model *m, const model_config *cfg, int vocab, int maxT, int maxB,
                ml_error *e) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->V = vocab;
    m->maxT = maxT;
    m->maxB = maxB;
    m->context_len = -1;
    m->mixer = mixer_find(cfg->mixer);
    if (!m->mixer) return ML_FAIL(e, "mixer: unknown mixer '%s'", cfg->mixer);
    if (cfg->d_model < 1 || cfg->n_layers < 1 || vocab < 2 || maxT < 1 || maxB < 1)
        return ML_FAIL(e, "model: impossible sizes (d_model %d, n_layers %d, vocab %d, T %d, B %d)",
                       cfg->d_model, cfg->n_layers, vocab, maxT, maxB);
    if (m->mixer->validate(cfg->mixer_cfg.bytes, cfg->d_model, e)) return -1;
    if (cfg->n_layers > 0 && cfg->mlp_ratio < 1 && cfg->mlp)
        return ML_FAIL(e, "mlp_ratio: must be >= 1");

    int *mfirst = calloc((size_t)cfg->n_layers, sizeof(int));
    int *mcount = calloc((size_t)cfg->n_layers, sizeof(int));
    m->layers = calloc(1, sizeof(ml_layer) * (size_t)cfg->n_layers + sizeof(head_bufs));
    if (!mfirst || !mcount || !m->layers) goto oom;
    int failed = 0;
    declare_all(m, mfirst, mcount, &failed);
    if (failed) goto oom;

    size_t P = m->n_params;
    m->w = calloc(P, sizeof(real));
    m->g = calloc(P, sizeof(real));
    m->m = calloc(P, sizeof(real));
    m->v = calloc(P, sizeof(real));
    if (!m->w || !m->g || !m->m || !m->v) goto oom;

    for (int l = 0; l < cfg->n_layers; l++) {
        ml_layer *L = &m->layers[l];
        if (mcount[l] > MAX_MIXER_PARAMS) {
            int n = mcount[l];
            free(mfirst);
            free(mcount);
            model_free(m);
            return ML_FAIL(e, "mixer %s declares %d tensors (max %d)", cfg->mixer, n,
                           MAX_MIXER_PARAMS);
        }
        for (int i = 0; i < mcount[l]; i++) {
            const ml_param *p = &m->params[mfirst[l] + i];
            L->mp[i] = m->w + p->offset;
            L->mdp[i] = m->g + p->offset;
        }
        L->w_n1w = layer_tensor(m, l, "norm1.w", 0);
        L->g_n1w = layer_tensor(m, l, "norm1.w", 1);
        L->w_n1b = layer_tensor(m, l, "norm1.b", 0);
        L->g_n1b = layer_tensor(m, l, "norm1.b", 1);
        L->w_convw = layer_tensor(m, l, "conv.w", 0);
        L->g_convw = layer_tensor(m, l, "conv.w", 1);
        L->w_convb = layer_tensor(m, l, "conv.b", 0);
        L->g_convb = layer_tensor(m, l, "conv.b", 1);
        L->w_n2w = layer_tensor(m, l, "norm2.w", 0);
        L->g_n2w = layer_tensor(m, l, "norm2.w", 1);
        L->w_n2b = layer_tensor(m, l, "norm2.b", 0);
        L->g_n2b = layer_tensor(m, l, "norm2.b", 1);
        L->w_fc1 = layer_tensor(m, l, "mlp.w1", 0);
        L->g_fc1 = layer_tensor(m, l, "mlp.w1", 1);
        L->w_fc1b = layer_tensor(m, l, "mlp.b1", 0);
        L->g_fc1b = layer_tensor(m, l, "mlp.b1", 1);
        L->w_fc2 = layer_tensor(m, l, "mlp.w2", 0);
        L->g_fc2 = layer_tensor(m, l, "mlp.w2", 1);
        L->w_fc2b = layer_tensor(m, l, "mlp.b2", 0);
        L->g_fc2b = layer_tensor(m, l, "mlp.b2", 1);
    }
    free(mfirst);
    free(mcount);
    mfirst = mcount = NULL;

    m->n_acts = layout_acts(m, NULL);
    m->acts = acts_alloc(m->n_acts);
    m->n_stats = m->mixer->n_stats ? m->mixer->n_stats(cfg->mixer_cfg.bytes) : 0;
    if (m->n_stats > 0) {
        m->stats = calloc((size_t)m->n_stats * (size_t)cfg->n_layers, sizeof(double));
        if (!m->stats) goto oom;
    }
    m->rows = malloc(sizeof(int) * (size_t)maxB * (size_t)maxT);
    head_of(m)->targets = malloc(sizeof(int) * (size_t)maxB * (size_t)maxT);
    if (!m->acts || !m->rows || !head_of(m)->targets) goto oom;
    layout_acts(m, m->acts);
    return 0;
oom:
    free(mfirst);
    free(mcount);
    model_free(m);
    return ML_FAIL(e, "out of memory building the model (%zu parameters)", m->n_params);
}

void model_free(ml_model *m) {
    if (m->layers) free(head_of(m)->targets);
    free(m->params);
    free(m->w);
    free(m->g);
    free(m->m);
    free(m->v);
    free(m->layers);
    acts_free(m->acts, m->n_acts);
    free(m->rows);
    free(m->stats);
    memset(m, 0, sizeof *m);
}

void model_init_weights(ml_model *m, uint64_t seed) {
    for (int i = 0; i < m->n_tensors; i++) {
        const ml_param *p = &m->params[i];
        real *w = m->w + p->offset;
        ml_rng r;
        /* One stream per tensor, keyed by its index in the table: a tensor's
         * draws do not depend on the sizes of the tensors before it (but adding
         * a tensor shifts the indices, and so the draws, of those after it). */
        rng_seed3(&r, seed, 0x6d6f64656cull, (uint64_t)i);
        for (size_t k = 0; k < p->n; k++) {
            switch (p->init) {
            case INIT_NORMAL: w[k] = (real)(m->cfg.init_std * rng_normal(&r)); break;
            case INIT_ZEROS: w[k] = 0; break;
            case INIT_ONES: w[k] = 1; break;
            case INIT_CONV: {
                double bound = 1.0 / sqrt((double)p->cols);
                w[k] = (real)(bound * (2.0 * rng_uniform(&r) - 1.0));
                break;
            }
            }
        }
    }
    memset(m->m, 0, sizeof(real) * m->n_params);
    memset(m->v, 0, sizeof(real) * m->n_params);
}

void model_reset_stats(ml_model *m) {
    if (m->n_stats > 0)
        memset(m->stats, 0, sizeof(double) * (size_t)m->n_stats * (size_t)m->cfg.n_layers);
    m->stat_calls = 0;
}

void model_zero_grad(ml_model *m) { ml_par_zero(m->g, sizeof(real) * m->n_params); }

/* ---- the phase clock (model.h) ---- */

const char *const model_phase_names[MODEL_PHASES] = {"embedding", "norms", "conv", "mixer",
                                                     "head"};
static int phase_on;
static double phase_wall[MODEL_PHASES], phase_prod[MODEL_PHASES];

void model_phase_clock(int on) { phase_on = on; }

void model_phase_read(double wall[MODEL_PHASES], double prod[MODEL_PHASES]) {
    for (int i = 0; i < MODEL_PHASES; i++) wall[i] = phase_wall[i], prod[i] = phase_prod[i];
}

typedef struct phase_mark {
    double wall, prod;
} phase_mark;

static phase_mark phase_begin(void) {
    phase_mark k = {0, 0};
    if (phase_on) k.wall = ml_clock_s(), k.prod = ml_products_seconds();
    return k;
}

static void phase_end(int ph, phase_mark k) {
    if (!phase_on) return;
    phase_wall[ph] += ml_clock_s() - k.wall;
    phase_prod[ph] += ml_products_seconds() - k.prod;
}

static void norm_fwd(const ml_model *m, real *out, real *mean, real *rstd, const real *x,
                     const real *w, const real *b, int N) {
    int C = m->cfg.d_model;
    phase_mark k = phase_begin();
    if (m->cfg.norm == NORM_LAYER)
        layernorm_forward(out, mean, rstd, x, w, b, N, C, (real)m->cfg.norm_eps);
    else
        rmsnorm_forward(out, rstd, x, w, N, C, (real)m->cfg.norm_eps);
    phase_end(MODEL_PH_NORM, k);
}

static void norm_bwd(const ml_model *m, real *dx, real *dw, real *db, const real *dout,
                     const real *x, const real *w, const real *mean, const real *rstd, int N) {
    int C = m->cfg.d_model;
    phase_mark k = phase_begin();
    if (m->cfg.norm == NORM_LAYER)
        layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C);
    else
        rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
    phase_end(MODEL_PH_NORM, k);
}

static mixer_call mixer_call_of(ml_model *m, int l, int B, int T) {
    mixer_call mc;
    memset(&mc, 0, sizeof mc);
    mc.cfg = m->cfg.mixer_cfg.bytes;
    mc.B = B;
    mc.T = T;
    mc.C = m->cfg.d_model;
    mc.p = m->layers[l].mp;
    mc.dp = m->layers[l].mdp;
    mc.act = m->layers[l].mix_act;
    mc.scratch = head_of(m)->mix_scratch;
    mc.context_len = m->context_len;
    mc.aux_loss = &m->aux_loss;
    mc.stats = m->n_stats > 0 ? m->stats + (size_t)l * (size_t)m->n_stats : NULL;
    return mc;
}

/* The rows through the LM head: every row (full head) or those with a
 * target, into m->rows and h->targets. Returns their count. */
static int head_rows(ml_model *m, const int *target, int N) {
    head_bufs *h = head_of(m);
    int S = 0;
    for (int i = 0; i < N; i++) {
        if (!m->full_head && target[i] < 0) continue;
        m->rows[S] = i;
        h->targets[S] = target[i];
        S++;
    }
    return S;
}

/* The MLP half of a block on n rows: xnext = xmid + W2 GELU(W1 Norm2(xmid)). */
static void mlp_forward(ml_model *m, ml_layer *L, real *xnext, int n) {
    const model_config *c = &m->cfg;
    int C = c->d_model, RC = c->mlp_ratio * C;
    head_bufs *h = head_of(m);
    norm_fwd(m, L->n2, L->n2_mean, L->n2_rstd, L->xmid, L->w_n2w, L->w_n2b, n);
    linear_forward(L->fc1, L->n2, L->w_fc1, L->w_fc1b, n, C, RC);
    gelu_forward(L->gelu, L->fc1, (size_t)n * RC);
    linear_forward(h->mix_out, L->gelu, L->w_fc2, L->w_fc2b, n, RC, C);
    for (size_t i = 0; i < (size_t)n * C; i++) xnext[i] = L->xmid[i] + h->mix_out[i];
}

/* Backward of mlp_forward on n rows: dres (d xnext) becomes d xmid. */
static void mlp_backward(ml_model *m, ml_layer *L, real *dres, int n) {
    const model_config *c = &m->cfg;
    int C = c->d_model, RC = c->mlp_ratio * C;
    head_bufs *h = head_of(m);
    ml_par_zero(h->d_h, sizeof(real) * (size_t)n * RC);
    linear_backward(h->d_h, L->g_fc2, L->g_fc2b, dres, L->gelu, L->w_fc2, n, RC, C);
    ml_par_zero(h->d_h2, sizeof(real) * (size_t)n * RC);
    gelu_backward(h->d_h2, h->d_h, L->fc1, (size_t)n * RC);
    ml_par_zero(h->d_a, sizeof(real) * (size_t)n * C);
    linear_backward(h->d_a, L->g_fc1, L->g_fc1b, h->d_h2, L->n2, L->w_fc1, n, C, RC);
    norm_bwd(m, dres, L->g_n2w, L->g_n2b, h->d_a, L->xmid, L->w_n2w, L->n2_mean, L->n2_rstd,
             n);
}

/* Whether the last block runs on the head's rows only: with the supervised
 * head, when some rows have no target. Nothing downstream of the last mixer
 * reads the other rows, so its residual, MLP and final norm are computed for
 * the S head rows alone, and a mixer with out_rows computes only those. */
static int last_on_rows(const ml_model *m, int S, int N) {
    return !m->full_head && S > 0 && S < N && m->cfg.n_layers > 0;
}

static double forward(ml_model *m, const int *input, const int *target, int B, int T, int *pred,
                      int train) {
    const model_config *c = &m->cfg;
    int C = c->d_model, N = B * T, V = m->V;
    head_bufs *h = head_of(m);
    m->B = B;
    m->T = T;
    m->input = input;
    m->target = target;
    m->aux_loss = 0.0;
    h->hG = 0;
    if (m->n_stats > 0) m->stat_calls++;
    int S = head_rows(m, target, N);
    m->S = S;
    int on_rows = last_on_rows(m, S, N);

    real *x0 = c->n_layers > 0 ? m->layers[0].x : h->xf;
    phase_mark k = phase_begin();
    embedding_forward(x0, input, tensor(m, "wte", 0), tensor(m, "wpe", 0), B, T, C);
    phase_end(MODEL_PH_EMBED, k);
    for (int l = 0; l < c->n_layers; l++) {
        ml_layer *L = &m->layers[l];
        int rows_here = on_rows && l == c->n_layers - 1;
        real *xnext = l + 1 < c->n_layers ? m->layers[l + 1].x : h->xf;
        norm_fwd(m, L->n1, L->n1_mean, L->n1_rstd, L->x, L->w_n1w, L->w_n1b, N);
        const real *hin = L->n1;
        if (c->conv > 0) {
            k = phase_begin();
            conv1d_causal_forward(L->conv, L->n1, L->w_convw, L->w_convb, B, T, C, c->conv);
            phase_end(MODEL_PH_CONV, k);
            hin = L->conv;
        }
        mixer_call mc = mixer_call_of(m, l, B, T);
        if (rows_here && m->mixer->out_rows) {
            mc.rows = m->rows;
            mc.n_rows = S;
        }
        k = phase_begin();
        m->mixer->forward(&mc, h->mix_out, hin);
        phase_end(MODEL_PH_MIXER, k);
        real *xm = c->mlp ? L->xmid : xnext;
        int n = N;
        if (rows_here) {
            /* xm[s] = x[rows[s]] + mixer output at rows[s] */
            const real *mo = h->mix_out;
            if (!m->mixer->out_rows) {
                rows_gather(h->rows, h->mix_out, C, m->rows, S, C);
                mo = h->rows;
            }
            rows_gather(xm, L->x, C, m->rows, S, C);
            for (size_t i = 0; i < (size_t)S * C; i++) xm[i] += mo[i];
            n = S;
        } else {
            for (size_t i = 0; i < (size_t)N * C; i++) xm[i] = L->x[i] + h->mix_out[i];
        }
        if (c->mlp) mlp_forward(m, L, xnext, n);
    }
    int nf_rows = on_rows ? S : N;
    norm_fwd(m, h->nf, h->nf_mean, h->nf_rstd, h->xf, tensor(m, "norm_f.w", 0),
             tensor(m, "norm_f.b", 0), nf_rows);

    /* The head: every row (full_head), or the rows with a target, which the
     * last block already left in order in nf when it ran on them. */
    const real *rows = h->nf;
    if (!m->full_head && !on_rows) {
        rows_gather(h->rows, h->nf, C, m->rows, S, C);
        rows = h->rows;
    }
    const real *head = c->tie_embeddings ? tensor(m, "wte", 0) : tensor(m, "lm_head", 0);
    int count = 0;
    double sum = 0.0;
    k = phase_begin();
    int R = lm_head_block_rows(V, m->head_block_rows, h->hR);
    if (S > R && train) {
        /* d nf as model_backward would make it: every row (full head) or the
         * S head rows in order */
        real *d_nf = m->full_head ? h->d_a : h->d_b;
        sum = lm_head_loss_grad(d_nf, h->hparts, h->hblk, rows, head, h->targets, S, V, C, R,
                                &count);
        h->hG = lm_head_groups(S, R);
    } else if (S > 0) {
        linear_forward(h->logits, rows, head, NULL, S, C, V);
        if (pred) {
            for (int i = 0; i < N; i++) pred[i] = -1;
            for (int s = 0; s < S; s++) {
                if (h->targets[s] < 0) continue;
                const real *lg = h->logits + (size_t)s * V;
                int best = 0;
                for (int v = 1; v < V; v++)
                    if (lg[v] > lg[best]) best = v;
                pred[m->rows[s]] = best;
            }
        }
        sum = crossentropy_forward(h->logits, h->logits, h->targets, S, V, &count);
    } else if (pred) {
        for (int i = 0; i < N; i++) pred[i] = -1;
    }
    phase_end(MODEL_PH_HEAD, k);
    m->count = count;
    m->loss = (count > 0 ? sum / count : 0.0) + m->aux_loss;
    return m->loss;
}

double model_forward(ml_model *m, const int *input, const int *target, int B, int T,
                     int *pred) {
    return forward(m, input, target, B, T, pred, 0);
}

double model_forward_train(ml_model *m, const int *input, const int *target, int B, int T) {
    return forward(m, input, target, B, T, NULL, 1);
}

const real *model_logits(const ml_model *m) {
    head_bufs *h = head_of((ml_model *)(uintptr_t)m);
    return h->hG > 0 ? NULL : h->logits;
}

void model_backward(ml_model *m) {
    const model_config *c = &m->cfg;
    int B = m->B, T = m->T, C = c->d_model, N = B * T, V = m->V;
    int S = m->S;
    head_bufs *h = head_of(m);
    if (m->count == 0 && m->aux_loss == 0.0) return;
    int on_rows = last_on_rows(m, S, N);

    phase_mark k = phase_begin();
    int tied = c->tie_embeddings;
    const real *head = tied ? tensor(m, "wte", 0) : tensor(m, "lm_head", 0);
    real *dhead = tied ? tensor(m, "wte", 1) : tensor(m, "lm_head", 1);
    real *dres = h->d_res;
    /* d nf: every row (full head) or the S head rows in order (supervised) */
    real *d_nf = m->full_head ? h->d_a : h->d_b;
    int nf_rows = m->full_head ? N : S;
    if (h->hG > 0) {
        /* model_forward_train left d nf in place and dW in partials */
        lm_head_add_parts(dhead, h->hparts, h->hG, V, C);
    } else {
        /* probabilities -> d logits, in place: (p - onehot) / count on kept
         * rows. With no supervised row only the mixers' auxiliary losses have
         * gradients. */
        real scale = m->count > 0 ? (real)(1.0 / m->count) : 0;
        crossentropy_grad_inplace(h->logits, h->targets, S, V, scale);
        ml_par_zero(d_nf, sizeof(real) * (size_t)nf_rows * C);
        linear_backward(d_nf, dhead, NULL, h->logits, m->full_head || on_rows ? h->nf : h->rows,
                        head, S, C, V);
    }
    phase_end(MODEL_PH_HEAD, k);
    if (!m->full_head && !on_rows) {
        /* the final norm ran on every row: scatter the head rows back */
        ml_par_zero(h->d_a, sizeof(real) * (size_t)N * C);
        rows_scatter_add(h->d_a, h->d_b, m->rows, S, C);
        d_nf = h->d_a;
        nf_rows = N;
    }
    /* With the last block on rows, its gradients up to the mixer are [S,C]
     * in mix_out (free in backward), then scattered into the full dres. */
    real *dtop = on_rows ? h->mix_out : dres;
    ml_par_zero(dtop, sizeof(real) * (size_t)nf_rows * C);
    norm_bwd(m, dtop, tensor(m, "norm_f.w", 1), tensor(m, "norm_f.b", 1), d_nf, h->xf,
             tensor(m, "norm_f.w", 0), h->nf_mean, h->nf_rstd, nf_rows);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        ml_layer *L = &m->layers[l];
        int rows_here = on_rows && l == c->n_layers - 1;
        mixer_call mc = mixer_call_of(m, l, B, T);
        const real *dmix = dres; /* d mixer output */
        if (rows_here) {
            /* dtop is d x_{l+1} at the head rows; the MLP makes it d xmid */
            if (c->mlp) mlp_backward(m, L, dtop, S);
            ml_par_zero(dres, sizeof(real) * (size_t)N * C);
            rows_scatter_add(dres, dtop, m->rows, S, C);
            if (m->mixer->out_rows) {
                mc.rows = m->rows;
                mc.n_rows = S;
                dmix = dtop;
            }
        } else if (c->mlp) {
            /* dres is d x_{l+1} = d xmid (identity) + the MLP path below. */
            mlp_backward(m, L, dres, N);
        }
        /* dres is now d xmid = d x_l (identity) + the mixer path. */
        const real *hin = c->conv > 0 ? L->conv : L->n1;
        ml_par_zero(h->d_a, sizeof(real) * (size_t)N * C);
        k = phase_begin();
        m->mixer->backward(&mc, h->d_a, dmix, hin);
        phase_end(MODEL_PH_MIXER, k);
        real *d_n1 = h->d_a;
        if (c->conv > 0) {
            ml_par_zero(h->d_b, sizeof(real) * (size_t)N * C);
            k = phase_begin();
            conv1d_causal_backward(h->d_b, L->g_convw, L->g_convb, h->d_a, L->n1, L->w_convw,
                                   B, T, C, c->conv);
            phase_end(MODEL_PH_CONV, k);
            d_n1 = h->d_b;
        }
        norm_bwd(m, dres, L->g_n1w, L->g_n1b, d_n1, L->x, L->w_n1w, L->n1_mean, L->n1_rstd,
                 N);
    }
    k = phase_begin();
    embedding_backward(tensor(m, "wte", 1), tensor(m, "wpe", 1), dres, m->input, B, T, C);
    phase_end(MODEL_PH_EMBED, k);
}

long model_state_size(const ml_model *m, int T) {
    const model_config *c = &m->cfg;
    /* the block's causal conv keeps its last K-1 inputs (K taps, width C) */
    long conv = c->conv > 1 ? (long)(c->conv - 1) * c->d_model : 0;
    return (long)c->n_layers * (m->mixer->state_size(c->mixer_cfg.bytes, c->d_model, T) + conv);
}
