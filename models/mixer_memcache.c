/* mixer_memcache.c: Memory Caching (Behrouz et al. 2026, "RNNs with growing
 * memory"; models.md section 5) over any rule of the linear family.
 *
 * Dimension letters: B batch, T time, N = B*T, C d_model, H heads, Dk q/k
 * width, Dv = C/H, F feature width, c segment length, P a memory. The
 * projections, feature maps, gates and output norm are the linear family's
 * (mixer_linear.c, linfam.c), with the same keys and defaults as `linear`:
 *   qkv = x Wqkv^T (+ b) [-> short conv]; q, k = phi(.) per head [-> L2];
 *   beta = sigmoid(x Wbeta^T); g = -exp(A_log) softplus(x Wdecay^T + dt_bias + shift)
 *   out = OutNorm(y) Wo^T + bo
 * and y, per head, is built from memories of the rule
 *   S_t = a_t (I - beta_t k_t k_t^T)^[delta] S_{t-1} + beta_t^[delta] k_t v_t^T
 * (z_t = z_{t-1} + k_t alongside for the normalised additive rule).
 *
 * Segments. Token t lies in segment s = floor(t / c) (c = `segment`); the
 * last segment may be short. Its online memory M_t^on is the rule after token
 * t (write, then read), started at the beginning of the sequence (seg_init
 * checkpoint: each segment continues from the previous one's state, so the
 * online memory is the base rule itself) or at the start of segment s from
 * zero (fresh). Finished segments are cached; memory P (1 <= P < nseg)
 * summarises the segments [lo(P), P):
 *   constant: lo(P) = P - 1, and segment s reads P = 1 .. s (s memories);
 *   log:      lo(P) = P - lowbit(P), and segment s reads the blocks of the
 *             binary decomposition of s, largest (oldest) first: for s =
 *             2^a + 2^b + ... (a > b > ...) the memories P = 2^a, 2^a + 2^b, ...
 *             (popcount(s) memories). Old segments are seen in big blocks,
 *             recent ones in small blocks (a Fenwick partition of the finished
 *             prefix [0, s c)), so a token reads at most log2(nseg) + 1
 *             memories and the reads cost O(T log T) instead of O(T^2 / c).
 * State of memory P: checkpoint: the base rule's state after token P c - 1
 * (all history); fresh: the rule run from zero over the tokens of [lo(P) c,
 * P c) (for constant segments: over segment P - 1 alone).
 *
 * Reading memory i (S^i, z^i) with q_t: num_i = S^i^T q_t, den_i = q_t . z^i,
 *   M^i(q_t) = num_i / (den_i + eps) when normalising (additive rule), else num_i.
 * Aggregation for token t in segment s, list L_t = its cached memories + on:
 *   residual: y_t = M^on(q_t) + sum_{i in L_t, cached} M^i(q_t)
 *   grm:      y_t = sum_{i in L_t} gamma_i M^i(q_t),  gamma = softmax_i(<u_t, pool_i>)
 *   soup:     the memories mixed by gamma, then read once:
 *             y_t = (sum gamma_i num_i) / (sum gamma_i den_i + eps)  (else sum gamma_i num_i)
 *             -- equal to grm without the normaliser (linear memories)
 *   ssc:      grm over the top-`cache_topk` cached memories by <u_t, pool_i> (ties to
 *             the older) plus the online one; the others get gamma 0.
 * u_t = x_t Wu^T per head (width Pw); pool_i = mean over the tokens of memory
 * i's segments [lo c, P c) of the pooled rows; the online pool averages the
 * tokens of segment s up to t only (causal). `pool: x` averages the mixer
 * input (Pw = C, shared by the heads); `pool: k` the keys as the memory stores
 * them (phi, after the L2 norm; Pw = F per head). Scores are not scaled.
 * With cache_grad false, the cached memories and their pools are constants
 * for the gradient (q_t and u_t still get theirs); the online memory is not
 * cached: with checkpoint init its gradient still reaches earlier segments
 * through the rule itself. SSC's top-K passes no gradient (selection fixed).
 *
 * Fast path (form chunkwise): the online reads are gdelta_forward over the
 * whole batch (checkpoint) or over each segment as its own sequence (fresh);
 * the cached states are chains of memcache.c's chunkwise state kernel
 * (checkpoint: S_P from S_{P-1}; fresh log: P from the half-block memory with
 * the same start); each memory is read by one GEMM over the contiguous run of
 * tokens that read it. Naive path (form recurrent): everything token by token
 * by the definitions above (every memory its own run from zero, pools and
 * reads as loops), forward and backward; the tests diff the two.
 *
 * Given rows (the last layer under a head that reads a few rows): q (unless
 * the short conv mixes neighbours) and u are projected for the rows only
 * (zero elsewhere); on the fast path the scores, gate weights, the read of
 * every cached memory and the aggregation run on the rows, as runs of
 * consecutive tokens; the output norm, gate and projection on the rows. The
 * memory chains, the pools, the online rule (whose kernel writes every
 * token's read) and its denominator still run on every token, and the naive
 * path reads at every token (the rows' outputs are what it adds).
 *
 * State size (per layer): the memories the most-reading of the T tokens
 * holds, online included, each H F Dv (+ H F normaliser), plus per memory its
 * pool (C or H F floats; the online one as a running sum) for the gated
 * aggregations, plus the short conv's past rows. A streaming generator with
 * fresh log segments and a delta rule would also keep the running states of
 * unfinished blocks; they are not counted. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "kernels.h"
#include "linfam.h"
#include "memcache.h"
#include "mixer.h"
#include "parallel.h"

enum { MC_CHUNKWISE = 0, MC_RECURRENT };
enum { MC_CONSTANT = 0, MC_LOG };
enum { MC_CHECKPOINT = 0, MC_FRESH };
enum { MC_RESIDUAL = 0, MC_GRM, MC_SOUP, MC_SSC };
enum { MC_POOL_X = 0, MC_POOL_K };

static const char *const mc_forms[] = {"chunkwise", "recurrent", NULL};
static const char *const mc_segs[] = {"constant", "log", NULL};
static const char *const mc_inits[] = {"checkpoint", "fresh", NULL};
static const char *const mc_aggs[] = {"residual", "grm", "soup", "ssc", NULL};
static const char *const mc_pools[] = {"x", "k", NULL};

typedef struct memcache_cfg {
    int heads;
    int rule;        /* lf_rule_names */
    int feature_map; /* lf_fmap_names */
    int feature_dim;
    int qk_l2norm;
    int normalize;
    double eps;
    int out_norm;    /* lf_onorm_names */
    int short_conv;
    double dt_min, dt_max;
    int chunk;
    int form;        /* mc_forms */
    int qkv_bias;
    int segment;     /* c */
    int segments;    /* mc_segs */
    int seg_init;    /* mc_inits */
    int aggregate;   /* mc_aggs */
    int cache_topk;
    int cache_grad;
    int pool;        /* mc_pools */
} memcache_cfg;

static const ml_field memcache_fields[] = {
    {"heads", FT_INT, offsetof(memcache_cfg, heads), 1, 4096, NULL, "1",
     "heads; d_model must be divisible by heads"},
    {"rule", FT_ENUM, offsetof(memcache_cfg, rule), 0, 0, lf_rule_names, "additive",
     "the cached memory's update: additive (linear attention), delta (DeltaNet), decay "
     "(Mamba-2 scalar decay), gated_delta (gated DeltaNet)"},
    {"feature_map", FT_ENUM, offsetof(memcache_cfg, feature_map), 0, 0, lf_fmap_names, "elu1",
     "feature map on q and k: identity, elu1 (elu(x)+1), relu, silu, taylor"},
    {"feature_dim", FT_INT, offsetof(memcache_cfg, feature_dim), 0, 256, NULL, "0",
     "per-head width d of q and k before the feature map (0 = d_model/heads)"},
    {"qk_l2norm", FT_BOOL, offsetof(memcache_cfg, qk_l2norm), 0, 1, NULL, "false",
     "L2-normalise q and k per head after the feature map"},
    {"normalize", FT_BOOL, offsetof(memcache_cfg, normalize), 0, 1, NULL, "true",
     "read every memory as num / (phi(q).z + eps) (additive rule only); soup divides once "
     "by the mixed denominator"},
    {"eps", FT_REAL, offsetof(memcache_cfg, eps), 0, 1, NULL, "1e-6",
     "added to the normaliser's denominator"},
    {"out_norm", FT_ENUM, offsetof(memcache_cfg, out_norm), 0, 0, lf_onorm_names, "none",
     "output norm per head: none, rms (RMSNorm), gated (RMSNorm(y) * silu(x Wgate))"},
    {"short_conv", FT_INT, offsetof(memcache_cfg, short_conv), 0, 16, NULL, "0",
     "taps of a causal depthwise conv on q, k, v inside the mixer (0 = off)"},
    {"dt_min", FT_REAL, offsetof(memcache_cfg, dt_min), 1e-6, 10, NULL, "0.001",
     "decay rules: smallest initial time step (heads log-spaced from dt_min to dt_max)"},
    {"dt_max", FT_REAL, offsetof(memcache_cfg, dt_max), 1e-6, 10, NULL, "0.1",
     "decay rules: largest initial time step"},
    {"chunk", FT_INT, offsetof(memcache_cfg, chunk), 1, 1e6, NULL, "64",
     "chunk length of the chunkwise rule kernels inside a segment"},
    {"form", FT_ENUM, offsetof(memcache_cfg, form), 0, 0, mc_forms, "chunkwise",
     "computation: chunkwise (GEMM, fast) or recurrent (token by token, every memory its "
     "own run: the naive reference)"},
    {"qkv_bias", FT_BOOL, offsetof(memcache_cfg, qkv_bias), 0, 1, NULL, "false",
     "bias on the q, k, v projection"},
    {"segment", FT_INT, offsetof(memcache_cfg, segment), 1, 1e6, NULL, "64",
     "segment length c in tokens (>= seq_len: one segment, the base rule itself)"},
    {"segments", FT_ENUM, offsetof(memcache_cfg, segments), 0, 0, mc_segs, "constant",
     "cached memories: constant (one per finished segment: O(L^2/c)) or log (segment s "
     "reads the blocks of the binary decomposition of s, s = 2^a + 2^b + ... with a > b: "
     "segments [0, 2^a), [2^a, 2^a + 2^b), ...; at most log2(L/c) + 1 memories, "
     "O(L log L))"},
    {"seg_init", FT_ENUM, offsetof(memcache_cfg, seg_init), 0, 0, mc_inits, "checkpoint",
     "online memory of a segment: checkpoint (continues from the previous segment's state) "
     "or fresh (starts from zero; a log block's memory is its own run from zero)"},
    {"aggregate", FT_ENUM, offsetof(memcache_cfg, aggregate), 0, 0, mc_aggs, "grm",
     "residual (online + sum of cached reads), grm (softmax_i <u_t, pool_i> weighted reads), "
     "soup (memories mixed by those weights, read once), ssc (grm over the top cache_topk "
     "cached memories + the online one)"},
    {"cache_topk", FT_INT, offsetof(memcache_cfg, cache_topk), 1, 1e6, NULL, "2",
     "ssc: cached memories selected per token (ties to the older); the selection passes no "
     "gradient"},
    {"cache_grad", FT_BOOL, offsetof(memcache_cfg, cache_grad), 0, 1, NULL, "true",
     "gradients flow into the cached memories and their pools (false: they are constants "
     "for the gradient; q, u and the online memory still learn)"},
    {"pool", FT_ENUM, offsetof(memcache_cfg, pool), 0, 0, mc_pools, "x",
     "what MeanPool averages for the gate scores <u_t, pool_i>: x (the mixer input; u = x "
     "Wu^T has d_model columns per head) or k (the memory's keys after the feature map; "
     "feature width per head)"},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL},
};

/* ---- sizes and the segment structure ---------------------------------------------- */

typedef struct mc_dims {
    int B, T, C, N, H, Dk, Dv, F, Cq, Cp, HF;
    int delta, decay, conv, onorm, gated, norm;
    int c, nseg, nmem, log, fresh, agg, gagg, nslot, topk, cgrad, naive;
    int poolk, Pw, PWt; /* pool k; per-head pooled width; pooled row width */
    int adv_max;        /* longest run of one memory's chain step (tokens) */
} mc_dims;

static int mc_popcount(int x) { return __builtin_popcount((unsigned)x); }
static int mc_lowbit(int x) { return x & -x; }

/* First segment that memory P summarises. */
static int mc_lo(const mc_dims *d, int P) { return d->log ? P - mc_lowbit(P) : P - 1; }
/* Segments [P, mc_hi) read memory P. */
static int mc_hi(const mc_dims *d, int P) {
    if (!d->log) return d->nseg;
    int h = P + mc_lowbit(P);
    return h < d->nseg ? h : d->nseg;
}
/* Memories segment s reads (its online one excluded). */
static int mc_nread(const mc_dims *d, int s) { return d->log ? mc_popcount(s) : s; }
/* Memory P's place in the list of a segment that reads it (oldest first). */
static int mc_slot(const mc_dims *d, int P) { return d->log ? mc_popcount(P) - 1 : P - 1; }
/* The j-th memory (oldest first) that segment s reads. */
static int mc_read(const mc_dims *d, int s, int j) {
    if (!d->log) return j + 1;
    int P = 0, n = 0;
    for (int bit = 30; bit >= 0; bit--) {
        if (!(s >> bit & 1)) continue;
        P |= 1 << bit;
        if (n++ == j) return P;
    }
    return P;
}
/* The chain step that makes memory P: from memory *pred (0: from zero) over
 * segments [*a, P). */
static void mc_chain(const mc_dims *d, int P, int *pred, int *a) {
    if (!d->fresh) {
        *pred = *a = P - 1;
    } else if (d->log && mc_lowbit(P) > 1) {
        *pred = *a = P - mc_lowbit(P) / 2;
    } else {
        *pred = 0;
        *a = mc_lo(d, P);
    }
}

static mc_dims mc_dims_of(const memcache_cfg *c, int B, int T, int C) {
    mc_dims d;
    memset(&d, 0, sizeof d);
    d.B = B, d.T = T, d.C = C, d.N = B * T, d.H = c->heads;
    d.Dv = C / c->heads;
    d.Dk = c->feature_dim > 0 ? c->feature_dim : d.Dv;
    d.F = lf_fmap_width(c->feature_map, d.Dk);
    d.Cq = d.H * d.Dk;
    d.Cp = 2 * d.Cq + C;
    d.HF = d.H * d.F;
    d.delta = lf_rule_delta(c->rule);
    d.decay = lf_rule_decay(c->rule);
    d.conv = c->short_conv;
    d.onorm = c->out_norm != LF_ONORM_NONE;
    d.gated = c->out_norm == LF_ONORM_GATED;
    d.norm = c->normalize && c->rule == LF_ADDITIVE;
    d.c = c->segment;
    d.nseg = T > 0 ? (T + d.c - 1) / d.c : 0;
    d.nmem = d.nseg > 1 ? d.nseg - 1 : 0;
    d.log = c->segments == MC_LOG;
    d.fresh = c->seg_init == MC_FRESH;
    d.agg = c->aggregate;
    d.gagg = c->aggregate != MC_RESIDUAL;
    d.topk = c->cache_topk;
    d.cgrad = c->cache_grad;
    d.naive = c->form == MC_RECURRENT;
    d.poolk = c->pool == MC_POOL_K;
    d.Pw = d.poolk ? d.F : C;
    d.PWt = d.poolk ? d.HF : C;
    int most = 0;
    for (int s = 0; s < d.nseg; s++) {
        int n = mc_nread(&d, s);
        if (n > most) most = n;
    }
    d.nslot = most + 1;
    d.adv_max = d.c < T ? d.c : (T > 0 ? T : 1);
    for (int P = 1; P <= d.nmem; P++) {
        int pred, a;
        mc_chain(&d, P, &pred, &a);
        if ((P - a) * d.c > d.adv_max) d.adv_max = (P - a) * d.c;
    }
    return d;
}

static int memcache_validate(const void *cfg, int C, ml_error *e) {
    const memcache_cfg *c = cfg;
    if (C % c->heads != 0)
        return ML_FAIL(e, "heads: d_model %d is not divisible by heads %d", C, c->heads);
    if (c->rule != LF_ADDITIVE && c->normalize)
        return ML_FAIL(e, "normalize: only the additive rule has the normaliser; set "
                          "normalize: false for rule %s", lf_rule_names[c->rule]);
    if (c->dt_min > c->dt_max)
        return ML_FAIL(e, "dt_min: %g is larger than dt_max %g", c->dt_min, c->dt_max);
    if (c->segment < 1)
        return ML_FAIL(e, "segment: %d is not a length; must be >= 1", c->segment);
    if (c->cache_topk < 1)
        return ML_FAIL(e, "cache_topk: %d; ssc selects at least one cached memory",
                       c->cache_topk);
    if (c->chunk < 1) return ML_FAIL(e, "chunk: %d; must be >= 1", c->chunk);
    return 0;
}

static int memcache_caution(const void *cfg, int C, char *msg, size_t cap) {
    const memcache_cfg *c = cfg;
    mc_dims d = mc_dims_of(c, 1, 1, C);
    return lf_delta_caution(c->rule, c->feature_map, c->qk_l2norm, d.F, msg, cap);
}

static void memcache_declare(const void *cfg, int C, ml_param_sink *s) {
    const memcache_cfg *c = cfg;
    mc_dims d = mc_dims_of(c, 1, 1, C);
    param_declare(s, "wqkv", d.Cp, C, INIT_NORMAL, 1);
    if (c->qkv_bias) param_declare(s, "bqkv", d.Cp, 1, INIT_ZEROS, 0);
    if (d.conv) param_declare(s, "conv.w", d.Cp, d.conv, INIT_CONV, 0);
    if (d.delta) param_declare(s, "wbeta", d.H, C, INIT_NORMAL, 1);
    if (d.decay) {
        param_declare(s, "wdecay", d.H, C, INIT_NORMAL, 1);
        param_declare(s, "A_log", d.H, 1, INIT_ZEROS, 0);
        param_declare(s, "dt_bias", d.H, 1, INIT_ZEROS, 0);
    }
    if (d.gagg) param_declare(s, "wu", d.H * d.Pw, C, INIT_NORMAL, 1);
    if (d.onorm) param_declare(s, "onorm.w", d.Dv, 1, INIT_ONES, 0);
    if (d.gated) param_declare(s, "wgate", C, C, INIT_NORMAL, 1);
    param_declare(s, "wo", C, C, INIT_NORMAL, 1);
    param_declare(s, "bo", C, 1, INIT_ZEROS, 0);
}

typedef struct mc_ptrs {
    real *wqkv, *bqkv, *convw, *wbeta, *wdecay, *A_log, *dt_bias, *wu, *onw, *wgate, *wo, *bo;
} mc_ptrs;

static mc_ptrs mc_unpack(const memcache_cfg *c, real *const *p) {
    mc_dims d = mc_dims_of(c, 1, 1, c->heads); /* only the switches are read */
    mc_ptrs r;
    memset(&r, 0, sizeof r);
    int i = 0;
    r.wqkv = p[i++];
    if (c->qkv_bias) r.bqkv = p[i++];
    if (d.conv) r.convw = p[i++];
    if (d.delta) r.wbeta = p[i++];
    if (d.decay) {
        r.wdecay = p[i++];
        r.A_log = p[i++];
        r.dt_bias = p[i++];
    }
    if (d.gagg) r.wu = p[i++];
    if (d.onorm) r.onw = p[i++];
    if (d.gated) r.wgate = p[i++];
    r.wo = p[i++];
    r.bo = p[i++];
    return r;
}

/* ---- the online reads: gdelta_forward calls ----------------------------------------- */

/* Checkpoint (or one segment): one call over the batch. Fresh: every segment
 * its own sequence: one call when c divides T, else per sequence one call
 * over its full segments and one over the short last segment. */
static int mc_n_online(const mc_dims *d) {
    return !d->fresh || d->nseg <= 1 || d->T % d->c == 0 ? 1 : 2 * d->B;
}

/* Call i: its dims and first row (token index into [N]). */
static gdelta_dims mc_online_dims(const memcache_cfg *c, const mc_dims *d, int i, size_t *row0) {
    gdelta_dims g;
    memset(&g, 0, sizeof g);
    g.H = d->H, g.Dk = d->F, g.Dv = d->Dv;
    g.q_stride = g.k_stride = 2 * d->HF;
    g.v_stride = d->Cp;
    g.gate_stride = d->H;
    g.delta = d->delta, g.decay = d->decay;
    g.chunk = c->chunk;
    g.form = GD_CHUNKWISE;
    *row0 = 0;
    if (!d->fresh || d->nseg <= 1) {
        g.B = d->B, g.T = d->T;
    } else if (d->T % d->c == 0) {
        g.B = d->B * d->nseg, g.T = d->c;
    } else {
        int b = i / 2, nfull = d->T / d->c;
        if (i % 2 == 0) {
            g.B = nfull, g.T = d->c;
            *row0 = (size_t)b * d->T;
        } else {
            g.B = 1, g.T = d->T - nfull * d->c;
            *row0 = (size_t)b * d->T + (size_t)nfull * d->c;
        }
    }
    return g;
}

static mcs_dims mc_state_dims(const memcache_cfg *c, const mc_dims *d) {
    mcs_dims m;
    memset(&m, 0, sizeof m);
    m.Dk = d->F, m.Dv = d->Dv;
    m.k_stride = 2 * d->HF, m.v_stride = d->Cp, m.gate_stride = d->H;
    m.delta = d->delta, m.decay = d->decay;
    m.chunk = c->chunk;
    return m;
}

/* ---- activations and scratch ----------------------------------------------------------- */

typedef struct mc_acts {
    real *proj, *convd;      /* [N,Cp] */
    real *phi, *rn;          /* [N,2,H,F], [N*2H] */
    real *beta, *za, *g;     /* [N,H] */
    real *u;                 /* [N,H*Pw] */
    real *poolm;             /* [B,nmem,PWt] */
    real *poolon;            /* [N,PWt] */
    real *gam;               /* [N,H,nslot] */
    real *onum, *oden;       /* [N,C] online numerator, [N,H] its denominator */
    real *Sm, *zm;           /* [B,H,nmem,F*Dv], [B,H,nmem,F] */
    real *dsum;              /* [N,H] soup's mixed denominator */
    real *o, *on, *rstd;     /* [N,C], [N,C], [N*H] */
    real *gz, *y;            /* [N,C] */
    real *save;              /* the online calls' saves */
} mc_acts;

static size_t mc_acts_at(const memcache_cfg *c, const mc_dims *d, real *base, mc_acts *a) {
    size_t N = (size_t)d->N, used = 0, SS = (size_t)d->F * d->Dv;
    size_t BHM = (size_t)d->B * d->H * d->nmem;
#define TAKE(p, n) (a->p = base ? base + used : NULL, used += (n))
    memset(a, 0, sizeof *a);
    TAKE(proj, N * d->Cp);
    if (d->conv) TAKE(convd, N * d->Cp);
    TAKE(phi, N * 2 * d->HF);
    if (c->qk_l2norm) TAKE(rn, N * 2 * d->H);
    if (d->delta) TAKE(beta, N * d->H);
    if (d->decay) {
        TAKE(za, N * d->H);
        TAKE(g, N * d->H);
    }
    if (d->gagg) {
        TAKE(u, N * d->H * d->Pw);
        TAKE(poolm, (size_t)d->B * d->nmem * d->PWt);
        TAKE(poolon, N * d->PWt);
        TAKE(gam, N * d->H * d->nslot);
    }
    TAKE(onum, N * d->C);
    if (d->norm) TAKE(oden, N * d->H);
    TAKE(Sm, BHM * SS);
    if (d->norm) TAKE(zm, BHM * d->F);
    if (d->agg == MC_SOUP && d->norm) TAKE(dsum, N * d->H);
    TAKE(o, N * d->C);
    if (d->onorm) {
        TAKE(on, N * d->C);
        TAKE(rstd, N * d->H);
    }
    if (d->gated) {
        TAKE(gz, N * d->C);
        TAKE(y, N * d->C);
    }
    size_t save = 0;
    for (int i = 0; i < mc_n_online(d); i++) {
        size_t r0;
        gdelta_dims g = mc_online_dims(c, d, i, &r0);
        save += gdelta_save_size(&g);
    }
    TAKE(save, save);
#undef TAKE
    return used;
}

/* One thread's work space for the per-(sequence, head) loops of the fast
 * path (and of the naive path, which runs on lane 0). */
typedef struct mc_lane {
    real *core;                   /* memcache.c's state kernels' scratch */
    real *sc;                     /* [nslot] scores of one token */
    unsigned char *keep;          /* [nslot] ssc's selection of one token */
    real *rd, *drd, *dA;          /* [T,Dv] reads of one memory, their gradient, soup's dA */
    real *rden, *rdd, *dD;        /* [T] */
    real *zrun;                   /* [F] */
    real *dSm, *dzm;              /* [nmem,F*Dv], [nmem,F] of one (b, h) */
} mc_lane;

typedef struct mc_scr {
    real *core;                   /* the online calls' (gdelta) scratch */
    real *lanes;                  /* ml_par_slots() lanes of mc_lane_size */
    real *shift;                  /* [H] */
    int *list;                    /* [nslot] memories of one token (naive path) */
    real *dgam;                   /* [N,H,nslot] */
    real *donum, *doden;          /* [N,C], [N,H] */
    real *dpoolm, *dpoolon, *du;  /* [B,nmem,PWt], [N,PWt], [N,H*Pw] */
    real *dy, *tmp, *dO, *dgz;    /* [N,C] */
    real *dphi, *dphi_raw;        /* [N,2,H,F]; [F] per thread: a row's gradient inside the L2 norm */
    real *dqkv, *dproj;           /* [N,Cp] */
    real *dbeta, *dg, *dz;        /* [N,H] */
    /* naive path */
    real *Mn, *zn;                /* [nmem,F*Dv], [nmem,F] */
    real *Sall, *zall;            /* [T,F*Dv], [T,F]: online state after each token */
    real *dSrun, *dzrun, *zero;   /* [F*Dv], [F], [F*Dv] */
    real *num, *den, *gw, *dgw;   /* [nslot,Dv], [nslot], [nslot], [nslot] */
    real *pools;                  /* [nslot,PWt] */
    real *vtmp, *dnum, *u2, *r2;  /* [Dv] */
    real *Sp;                     /* [F*Dv] */
    /* with rows (S < N of them; sized N): their x, d x, and the gathered rows
     * of one projection at a time (q or u, their gradients; o) */
    real *xr, *dxr, *rtmp;        /* [N,C], [N,C], [N,max(C, Cq, H*Pw)] */
} mc_scr;

static size_t mc_lane_at(const memcache_cfg *c, const mc_dims *d, real *base, mc_lane *w) {
    size_t T = (size_t)d->T, used = 0, NS = (size_t)d->nslot, M = (size_t)d->nmem;
    mcs_dims md = mc_state_dims(c, d);
    size_t core = mcs_scratch_size(&md, d->adv_max);
    if (d->naive) {
        size_t r = mcs_ref_scratch_size(&md, d->T > 0 ? d->T : 1);
        core = core > r ? core : r;
    }
#define TAKE(p, n) (w->p = base ? base + used : NULL, used += (n))
    memset(w, 0, sizeof *w);
    TAKE(core, core);
    TAKE(sc, NS);
    w->keep = base ? (unsigned char *)(void *)(base + used) : NULL;
    used += (NS + sizeof(real) - 1) / sizeof(real);
    TAKE(rd, T * d->Dv);
    TAKE(drd, T * d->Dv);
    TAKE(dA, T * d->Dv);
    TAKE(rden, T);
    TAKE(rdd, T);
    TAKE(dD, T);
    TAKE(zrun, (size_t)d->F);
    TAKE(dSm, M * d->F * d->Dv);
    TAKE(dzm, M * d->F);
#undef TAKE
    return used;
}

static size_t mc_scr_at(const memcache_cfg *c, const mc_dims *d, real *base, mc_scr *s) {
    size_t N = (size_t)d->N, T = (size_t)d->T, used = 0, SS = (size_t)d->F * d->Dv;
    size_t C = (size_t)d->C, H = (size_t)d->H, NS = (size_t)d->nslot, M = (size_t)d->nmem;
    mc_lane w;
    size_t core = 0, lane = mc_lane_at(c, d, NULL, &w);
    if (!d->naive) {
        for (int i = 0; i < mc_n_online(d); i++) {
            size_t r0;
            gdelta_dims g = mc_online_dims(c, d, i, &r0);
            size_t n = gdelta_scratch_size(&g);
            core = core > n ? core : n;
        }
    }
#define TAKE(p, n) (s->p = base ? base + used : NULL, used += (n))
    memset(s, 0, sizeof *s);
    TAKE(core, core);
    TAKE(lanes, (size_t)ml_par_slots() * lane);
    if (d->decay) TAKE(shift, H);
    s->list = base ? (int *)(void *)(base + used) : NULL;
    used += (NS * sizeof(int) + sizeof(real) - 1) / sizeof(real);
    if (d->gagg) TAKE(dgam, N * H * NS);
    TAKE(donum, N * C);
    TAKE(doden, N * H);
    if (d->gagg) {
        TAKE(dpoolm, (size_t)d->B * M * d->PWt);
        TAKE(dpoolon, N * d->PWt);
        TAKE(du, N * H * d->Pw);
    }
    if (d->onorm) {
        TAKE(dy, N * C);
        TAKE(tmp, N * C);
    }
    TAKE(dO, N * C);
    if (d->gated) TAKE(dgz, N * C);
    TAKE(dphi, N * 2 * d->HF);
    if (c->qk_l2norm) TAKE(dphi_raw, (size_t)ml_par_slots() * d->F);
    TAKE(dqkv, N * d->Cp);
    if (d->conv) TAKE(dproj, N * d->Cp);
    if (d->delta) TAKE(dbeta, N * H);
    if (d->decay) TAKE(dg, N * H);
    if (d->delta || d->decay) TAKE(dz, N * H);
    if (d->naive) {
        TAKE(Mn, M * SS);
        TAKE(zn, M * d->F);
        TAKE(Sall, T * SS);
        TAKE(zall, T * d->F);
        TAKE(dSrun, SS);
        TAKE(dzrun, (size_t)d->F);
        TAKE(zero, SS);
        TAKE(num, NS * d->Dv);
        TAKE(den, NS);
        TAKE(gw, NS);
        TAKE(dgw, NS);
        TAKE(pools, NS * d->PWt);
        TAKE(vtmp, (size_t)d->Dv);
        TAKE(dnum, (size_t)d->Dv);
        TAKE(u2, (size_t)d->Dv);
        TAKE(r2, (size_t)d->Dv);
        TAKE(Sp, SS);
    }
    size_t wide = C > (size_t)d->Cq ? C : (size_t)d->Cq;
    if (d->gagg && H * d->Pw > wide) wide = H * d->Pw;
    TAKE(xr, N * C);
    TAKE(dxr, N * C);
    TAKE(rtmp, N * wide);
#undef TAKE
    return used;
}

static size_t memcache_act_size(const void *cfg, int B, int T, int C) {
    mc_dims d = mc_dims_of(cfg, B, T, C);
    mc_acts a;
    return mc_acts_at(cfg, &d, NULL, &a);
}

static size_t memcache_scratch_size(const void *cfg, int B, int T, int C) {
    mc_dims d = mc_dims_of(cfg, B, T, C);
    mc_scr s;
    return mc_scr_at(cfg, &d, NULL, &s);
}

/* ---- pointers into the per-token rows ----------------------------------------------------- */

/* Everything one call works on, resolved once. */
typedef struct mc_ctx {
    const memcache_cfg *cfg;
    mc_dims d;
    mcs_dims md;
    mc_acts a;
    mc_scr s;
    mc_lane w;               /* this thread's lane */
    size_t lane_size;
    const real *x, *qkv;
    real eps;
    const int *rows;         /* the rows whose output is wanted, NULL: every row */
    int S;                   /* their number */
} mc_ctx;

static const real *mc_q(const mc_ctx *m, size_t row, int h) {
    return m->a.phi + row * 2 * m->d.HF + (size_t)h * m->d.F;
}
static const real *mc_k(const mc_ctx *m, size_t row, int h) {
    return m->a.phi + row * 2 * m->d.HF + m->d.HF + (size_t)h * m->d.F;
}
static const real *mc_v(const mc_ctx *m, size_t row, int h) {
    return m->qkv + row * m->d.Cp + 2 * m->d.Cq + (size_t)h * m->d.Dv;
}
static const real *mc_beta(const mc_ctx *m, size_t row, int h) {
    return m->d.delta ? m->a.beta + row * m->d.H + h : NULL;
}
static const real *mc_g(const mc_ctx *m, size_t row, int h) {
    return m->d.decay ? m->a.g + row * m->d.H + h : NULL;
}
/* The pooled row of a token (width PWt) and a head's part of a pooled row. */
static const real *mc_src(const mc_ctx *m, size_t row) {
    return m->d.poolk ? m->a.phi + row * 2 * m->d.HF + m->d.HF : m->x + row * m->d.C;
}
static size_t mc_hoff(const mc_dims *d, int h) { return d->poolk ? (size_t)h * d->F : 0; }
static real *mc_Sm(const mc_ctx *m, int b, int h, int P) {
    return m->a.Sm + (((size_t)b * m->d.H + h) * m->d.nmem + P - 1) * m->d.F * m->d.Dv;
}
static real *mc_zm(const mc_ctx *m, int b, int h, int P) {
    return m->a.zm + (((size_t)b * m->d.H + h) * m->d.nmem + P - 1) * m->d.F;
}

/* a . b with eight independent partial sums: vectorises without
 * reassociating (no fast-math), where one running sum is latency bound. */
static real mc_dot(const real *a, const real *b, int n) {
    real s[8] = {0, 0, 0, 0, 0, 0, 0, 0}, t = 0;
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += a[i + k] * b[i + k];
    for (; i < n; i++) t += a[i] * b[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + t;
}

/* Softmax in place over the w[i] with keep[i] (keep NULL: all); the others 0. */
static void mc_softmax(real *w, const unsigned char *keep, int n) {
    real mx = 0;
    int any = 0;
    for (int i = 0; i < n; i++)
        if ((!keep || keep[i]) && (!any || w[i] > mx)) mx = w[i], any = 1;
    real sum = 0;
    for (int i = 0; i < n; i++) {
        w[i] = !keep || keep[i] ? REXP(w[i] - mx) : 0;
        sum += w[i];
    }
    for (int i = 0; i < n; i++) w[i] /= sum;
}

/* The gate weights of one token and head from its scores sc[0..n] (n cached
 * memories then the online one): residual: all 1; grm, soup: softmax; ssc:
 * softmax over the top-K cached (ties to the lower index) and the online one.
 * keep [n+1] is work space. */
static void mc_weights(real *gw, const real *sc, int n, const mc_dims *d, unsigned char *keep) {
    if (d->agg == MC_RESIDUAL) {
        for (int j = 0; j <= n; j++) gw[j] = 1;
        return;
    }
    for (int j = 0; j <= n; j++) gw[j] = sc[j];
    if (d->agg != MC_SSC || n <= d->topk) {
        mc_softmax(gw, NULL, n + 1);
        return;
    }
    memset(keep, 0, (size_t)n + 1);
    keep[n] = 1;
    for (int r = 0; r < d->topk; r++) {
        int best = -1;
        for (int j = 0; j < n; j++)
            if (!keep[j] && (best < 0 || sc[j] > sc[best])) best = j;
        keep[best] = 1;
    }
    mc_softmax(gw, keep, n + 1);
}

/* ---- the rows a call reads ----------------------------------------------------------------
 * With rows (the last layer under a head that reads a few rows), the fast
 * path's per-token reads (scores, gate weights, every memory's read,
 * aggregation) run on those rows only, as runs of consecutive tokens; the
 * memories, the pools and the online rule still run on every token. */

/* A walk over the runs of wanted tokens of one sequence inside [t0, t1). */
typedef struct mc_runs {
    const int *rows; /* NULL: every token, one run */
    int s, s1;       /* the rows left: rows[s..s1) */
    int base, t0, t1;
} mc_runs;

static mc_runs mc_runs_in(const mc_ctx *m, int b, int t0, int t1) {
    mc_runs it = {m->rows, 0, 0, b * m->d.T, t0, t1};
    if (m->rows) {
        it.s = rows_lower_bound(m->rows, m->S, it.base + t0);
        it.s1 = rows_lower_bound(m->rows, m->S, it.base + t1);
    }
    return it;
}

/* The next run [*a, *a + *n) of tokens of the sequence; 0 when none is left. */
static int mc_run_next(mc_runs *it, int *a, int *n) {
    if (!it->rows) {
        if (it->t0 >= it->t1) return 0;
        *a = it->t0, *n = it->t1 - it->t0;
        it->t0 = it->t1;
        return 1;
    }
    if (it->s >= it->s1) return 0;
    int e = rows_run_end(it->rows, it->s, it->s1);
    *a = it->rows[it->s] - it->base, *n = e - it->s;
    it->s = e;
    return 1;
}

/* ---- the fast path ------------------------------------------------------------------------ */

/* Cached states of (b, h): the chains of mcs_forward, memories in increasing P. */
static void mc_memories_forward(mc_ctx *m, int b, int h) {
    const mc_dims *d = &m->d;
    for (int P = 1; P <= d->nmem; P++) {
        int pred, a0;
        mc_chain(d, P, &pred, &a0);
        size_t r0 = (size_t)b * d->T + (size_t)a0 * d->c;
        int n = (P - a0) * d->c;
        mcs_forward(mc_Sm(m, b, h, P), pred ? mc_Sm(m, b, h, pred) : NULL, mc_k(m, r0, h),
                    mc_v(m, r0, h), mc_beta(m, r0, h), mc_g(m, r0, h), n, &m->md, m->w.core);
        if (d->norm) {
            real *z = mc_zm(m, b, h, P);
            if (pred) memcpy(z, mc_zm(m, b, h, pred), sizeof(real) * d->F);
            else memset(z, 0, sizeof(real) * d->F);
            for (int i = 0; i < n; i++) {
                const real *k = mc_k(m, r0 + i, h);
                for (int f = 0; f < d->F; f++) z[f] += k[f];
            }
        }
    }
}

/* The online memory's denominator q_t . z_t of (b, h) (z restarted at every
 * segment when fresh). */
static void mc_online_den(mc_ctx *m, int b, int h) {
    const mc_dims *d = &m->d;
    real *z = m->w.zrun;
    for (int t = 0; t < d->T; t++) {
        size_t row = (size_t)b * d->T + t;
        if (t == 0 || (d->fresh && t % d->c == 0)) memset(z, 0, sizeof(real) * d->F);
        const real *k = mc_k(m, row, h);
        for (int f = 0; f < d->F; f++) z[f] += k[f];
        m->a.oden[row * d->H + h] = mc_dot(mc_q(m, row, h), z, d->F);
    }
}

/* Pools (every memory's mean, the causal online mean) and the gate weights
 * of every token and head of sequence b. */
static void mc_gates_forward(mc_ctx *m, int b) {
    const mc_dims *d = &m->d;
    const int W = d->PWt;
    for (int P = 1; P <= d->nmem; P++) {
        real *pm = m->a.poolm + ((size_t)b * d->nmem + P - 1) * W;
        int t0 = mc_lo(d, P) * d->c, t1 = P * d->c;
        memset(pm, 0, sizeof(real) * W);
        for (int t = t0; t < t1; t++) {
            const real *src = mc_src(m, (size_t)b * d->T + t);
            for (int i = 0; i < W; i++) pm[i] += src[i];
        }
        for (int i = 0; i < W; i++) pm[i] /= (real)(t1 - t0);
    }
    for (int t = 0; t < d->T; t++) {
        size_t row = (size_t)b * d->T + t;
        real *po = m->a.poolon + row * W;
        const real *src = mc_src(m, row);
        int first = t % d->c == 0;
        for (int i = 0; i < W; i++) po[i] = (first ? 0 : po[i - W]) + src[i];
    }
    /* running sums into means, from the last row back */
    for (int t = d->T - 1; t >= 0; t--) {
        real *po = m->a.poolon + ((size_t)b * d->T + t) * W;
        real n = (real)(t % d->c + 1);
        for (int i = 0; i < W; i++) po[i] /= n;
    }
    /* scores: one GEMV per memory and run of the rows that read it, into gam */
    const int ldu = d->H * d->Pw, ldg = d->H * d->nslot;
    int a0, nr;
    for (int P = 1; P <= d->nmem; P++) {
        int t0 = P * d->c, t1 = mc_hi(d, P) * d->c;
        if (t1 > d->T) t1 = d->T;
        mc_runs it = mc_runs_in(m, b, t0, t1);
        while (mc_run_next(&it, &a0, &nr)) {
            size_t r0 = (size_t)b * d->T + a0;
            for (int h = 0; h < d->H; h++)
                ml_gemv(0, nr, d->Pw, 1, m->a.u + r0 * ldu + (size_t)h * d->Pw, ldu,
                        m->a.poolm + ((size_t)b * d->nmem + P - 1) * W + mc_hoff(d, h), 1, 0,
                        m->a.gam + r0 * ldg + (size_t)h * d->nslot + mc_slot(d, P), ldg);
        }
    }
    mc_runs it = mc_runs_in(m, b, 0, d->T);
    while (mc_run_next(&it, &a0, &nr))
        for (int t = a0; t < a0 + nr; t++) {
            size_t row = (size_t)b * d->T + t;
            int n = mc_nread(d, t / d->c);
            for (int h = 0; h < d->H; h++) {
                real *gw = m->a.gam + (row * d->H + h) * d->nslot;
                memcpy(m->w.sc, gw, sizeof(real) * n);
                m->w.sc[n] = mc_dot(m->a.u + (row * d->H + h) * d->Pw,
                                    m->a.poolon + row * W + mc_hoff(d, h), d->Pw);
                memset(gw, 0, sizeof(real) * d->nslot);
                mc_weights(gw, m->w.sc, n, d, m->w.keep);
            }
        }
}

/* Weight of slot j for token row and head h (1 for residual). */
static real mc_gw(const mc_ctx *m, size_t row, int h, int j) {
    return m->d.gagg ? m->a.gam[(row * m->d.H + h) * m->d.nslot + j] : 1;
}

/* y of (b, h) from the online reads and one GEMM per cached memory. */
static void mc_aggregate_forward(mc_ctx *m, int b, int h) {
    const mc_dims *d = &m->d;
    const int Dv = d->Dv, ld = 2 * d->HF, soup = d->agg == MC_SOUP;
    const real eps = m->eps;
    int a0, nr;
    mc_runs it = mc_runs_in(m, b, 0, d->T);
    while (mc_run_next(&it, &a0, &nr))
        for (int t = a0; t < a0 + nr; t++) {
            size_t row = (size_t)b * d->T + t;
            int n = mc_nread(d, t / d->c);
            real gw = mc_gw(m, row, h, n);
            const real *num = m->a.onum + row * d->C + (size_t)h * Dv;
            real *y = m->a.o + row * d->C + (size_t)h * Dv;
            real f = gw;
            if (d->norm) {
                real den = m->a.oden[row * d->H + h];
                if (soup) m->a.dsum[row * d->H + h] = gw * den;
                else f = gw / (den + eps);
            }
            for (int j = 0; j < Dv; j++) y[j] = f * num[j];
        }
    for (int P = 1; P <= d->nmem; P++) {
        int t0 = P * d->c, t1 = mc_hi(d, P) * d->c;
        if (t1 > d->T) t1 = d->T;
        int slot = mc_slot(d, P);
        const real *S = mc_Sm(m, b, h, P);
        it = mc_runs_in(m, b, t0, t1);
        while (mc_run_next(&it, &a0, &nr)) {
            size_t r0 = (size_t)b * d->T + a0;
            ml_gemm(0, 0, nr, Dv, d->F, 1, mc_q(m, r0, h), ld, S, Dv, 0, m->w.rd, Dv);
            if (d->norm)
                ml_gemv(0, nr, d->F, 1, mc_q(m, r0, h), ld, mc_zm(m, b, h, P), 1, 0, m->w.rden,
                        1);
            for (int i = 0; i < nr; i++) {
                size_t row = r0 + i;
                real gw = mc_gw(m, row, h, slot);
                if (gw == 0) continue;
                real f = gw;
                if (d->norm) {
                    if (soup) m->a.dsum[row * d->H + h] += gw * m->w.rden[i];
                    else f = gw / (m->w.rden[i] + eps);
                }
                real *y = m->a.o + row * d->C + (size_t)h * Dv;
                const real *r = m->w.rd + (size_t)i * Dv;
                for (int j = 0; j < Dv; j++) y[j] += f * r[j];
            }
        }
    }
    if (soup && d->norm) {
        it = mc_runs_in(m, b, 0, d->T);
        while (mc_run_next(&it, &a0, &nr))
            for (int t = a0; t < a0 + nr; t++) {
                size_t row = (size_t)b * d->T + t;
                real f = 1 / (m->a.dsum[row * d->H + h] + eps);
                real *y = m->a.o + row * d->C + (size_t)h * Dv;
                for (int j = 0; j < Dv; j++) y[j] *= f;
            }
    }
}

/* The gradient of one read (num [Dv], den) with weight gw, given dy: fills
 * dnum [Dv], returns dgw and *dden. For soup dy is dA and dD the mixed
 * denominator's gradient. */
static real mc_read_backward(real *dnum, real *dden, const real *dy, real dD, const real *num,
                             real den, real gw, const mc_ctx *m) {
    const int Dv = m->d.Dv;
    if (m->d.agg == MC_SOUP) {
        for (int j = 0; j < Dv; j++) dnum[j] = gw * dy[j];
        *dden = m->d.norm ? gw * dD : 0;
        return mc_dot(dy, num, Dv) + (m->d.norm ? dD * den : 0);
    }
    if (!m->d.norm) {
        for (int j = 0; j < Dv; j++) dnum[j] = gw * dy[j];
        *dden = 0;
        return mc_dot(dy, num, Dv);
    }
    real inv = 1 / (den + m->eps), dr = mc_dot(dy, num, Dv) * inv;
    for (int j = 0; j < Dv; j++) dnum[j] = gw * inv * dy[j];
    *dden = -gw * dr * inv;
    return dr;
}

/* Backward of mc_aggregate_forward for (b, h): donum, doden (online), dq
 * into dphi, dgam, and with cache_grad dSm, dzm of (b, h). */
static void mc_aggregate_backward(mc_ctx *m, int b, int h) {
    const mc_dims *d = &m->d;
    const int Dv = d->Dv, ld = 2 * d->HF, soup = d->agg == MC_SOUP;
    const real eps = m->eps;
    real *dphi = m->s.dphi;
    int a0, nr;
    /* dy per row (soup: dA = dy / (D + eps), dD = -dy . y / (D + eps)) */
    mc_runs it = mc_runs_in(m, b, 0, d->T);
    while (mc_run_next(&it, &a0, &nr))
        for (int t = a0; t < a0 + nr; t++) {
            size_t row = (size_t)b * d->T + t;
            const real *dy = m->s.dO + row * d->C + (size_t)h * Dv;
            real *dA = m->w.dA + (size_t)t * Dv;
            if (soup && d->norm) {
                real inv = 1 / (m->a.dsum[row * d->H + h] + eps);
                const real *y = m->a.o + row * d->C + (size_t)h * Dv;
                m->w.dD[t] = -mc_dot(dy, y, Dv) * inv;
                for (int j = 0; j < Dv; j++) dA[j] = dy[j] * inv;
            } else {
                m->w.dD[t] = 0;
                memcpy(dA, dy, sizeof(real) * Dv);
            }
            int n = mc_nread(d, t / d->c);
            real dden, gw = mc_gw(m, row, h, n);
            real dgw = mc_read_backward(m->s.donum + row * d->C + (size_t)h * Dv, &dden, dA,
                                        m->w.dD[t], m->a.onum + row * d->C + (size_t)h * Dv,
                                        d->norm ? m->a.oden[row * d->H + h] : 0, gw, m);
            if (d->norm) m->s.doden[row * d->H + h] = dden;
            if (d->gagg) m->s.dgam[(row * d->H + h) * d->nslot + n] = dgw;
        }
    for (int P = 1; P <= d->nmem; P++) {
        int t0 = P * d->c, t1 = mc_hi(d, P) * d->c;
        if (t1 > d->T) t1 = d->T;
        int slot = mc_slot(d, P);
        const real *S = mc_Sm(m, b, h, P), *z = d->norm ? mc_zm(m, b, h, P) : NULL;
        /* each memory is read by this one range of rows: its gradient starts
         * here (the chain backward then adds its successors') */
        real *dS = m->w.dSm + (size_t)(P - 1) * d->F * Dv;
        real *dz = d->norm ? m->w.dzm + (size_t)(P - 1) * d->F : NULL;
        if (d->cgrad) {
            memset(dS, 0, sizeof(real) * d->F * Dv);
            if (dz) memset(dz, 0, sizeof(real) * d->F);
        }
        it = mc_runs_in(m, b, t0, t1);
        while (mc_run_next(&it, &a0, &nr)) {
            size_t r0 = (size_t)b * d->T + a0;
            const real *Q = mc_q(m, r0, h);
            ml_gemm(0, 0, nr, Dv, d->F, 1, Q, ld, S, Dv, 0, m->w.rd, Dv);
            if (d->norm) ml_gemv(0, nr, d->F, 1, Q, ld, z, 1, 0, m->w.rden, 1);
            for (int i = 0; i < nr; i++) {
                size_t row = r0 + i;
                int t = a0 + i;
                real gw = mc_gw(m, row, h, slot), dden = 0;
                real dgw = mc_read_backward(m->w.drd + (size_t)i * Dv, &dden,
                                            m->w.dA + (size_t)t * Dv, m->w.dD[t],
                                            m->w.rd + (size_t)i * Dv, d->norm ? m->w.rden[i] : 0,
                                            gw, m);
                m->w.rdd[i] = dden;
                if (d->gagg) m->s.dgam[(row * d->H + h) * d->nslot + slot] = dgw;
            }
            real *dQ = dphi + r0 * ld + (size_t)h * d->F;
            ml_gemm(0, 1, nr, d->F, Dv, 1, m->w.drd, Dv, S, Dv, 1, dQ, ld);
            if (d->norm)
                for (int i = 0; i < nr; i++)
                    for (int f = 0; f < d->F; f++) dQ[(size_t)i * ld + f] += m->w.rdd[i] * z[f];
            if (!d->cgrad) continue;
            ml_gemm(1, 0, d->F, Dv, nr, 1, Q, ld, m->w.drd, Dv, 1, dS, Dv);
            if (dz)
                for (int i = 0; i < nr; i++)
                    for (int f = 0; f < d->F; f++) dz[f] += m->w.rdd[i] * Q[(size_t)i * ld + f];
        }
    }
}

/* Backward of the chains of (b, h) from dSm, dzm: decreasing P, each step's
 * gradient flows into its predecessor and the rows of its run. */
static void mc_memories_backward(mc_ctx *m, int b, int h) {
    const mc_dims *d = &m->d;
    const size_t SS = (size_t)d->F * d->Dv;
    for (int P = d->nmem; P >= 1; P--) {
        int pred, a0;
        mc_chain(d, P, &pred, &a0);
        size_t r0 = (size_t)b * d->T + (size_t)a0 * d->c;
        int n = (P - a0) * d->c;
        real *dS = m->w.dSm + (size_t)(P - 1) * SS;
        mcs_backward(pred ? m->w.dSm + (size_t)(pred - 1) * SS : NULL,
                     m->s.dphi + r0 * 2 * d->HF + d->HF + (size_t)h * d->F,
                     m->s.dqkv + r0 * d->Cp + 2 * d->Cq + (size_t)h * d->Dv,
                     d->delta ? m->s.dbeta + r0 * d->H + h : NULL,
                     d->decay ? m->s.dg + r0 * d->H + h : NULL, dS,
                     pred ? mc_Sm(m, b, h, pred) : NULL, mc_k(m, r0, h), mc_v(m, r0, h),
                     mc_beta(m, r0, h), mc_g(m, r0, h), n, &m->md, m->w.core);
        if (d->norm) {
            const real *dz = m->w.dzm + (size_t)(P - 1) * d->F;
            for (int i = 0; i < n; i++) {
                real *dk = m->s.dphi + (r0 + i) * 2 * d->HF + d->HF + (size_t)h * d->F;
                for (int f = 0; f < d->F; f++) dk[f] += dz[f];
            }
            if (pred) {
                real *dzp = m->w.dzm + (size_t)(pred - 1) * d->F;
                for (int f = 0; f < d->F; f++) dzp[f] += dz[f];
            }
        }
    }
}

/* Backward of mc_online_den for (b, h): dq_t += dden_t z_t, and dk_j +=
 * sum over later t of the same run of dden_t q_t. */
static void mc_online_den_backward(mc_ctx *m, int b, int h) {
    const mc_dims *d = &m->d;
    real *z = m->w.zrun;
    for (int t = 0; t < d->T; t++) {
        size_t row = (size_t)b * d->T + t;
        if (t == 0 || (d->fresh && t % d->c == 0)) memset(z, 0, sizeof(real) * d->F);
        const real *k = mc_k(m, row, h);
        for (int f = 0; f < d->F; f++) z[f] += k[f];
        real dd = m->s.doden[row * d->H + h];
        real *dq = m->s.dphi + row * 2 * d->HF + (size_t)h * d->F;
        for (int f = 0; f < d->F; f++) dq[f] += dd * z[f];
    }
    memset(z, 0, sizeof(real) * d->F);
    for (int t = d->T - 1; t >= 0; t--) {
        size_t row = (size_t)b * d->T + t;
        real dd = m->s.doden[row * d->H + h];
        const real *q = mc_q(m, row, h);
        for (int f = 0; f < d->F; f++) z[f] += dd * q[f];
        real *dk = m->s.dphi + row * 2 * d->HF + d->HF + (size_t)h * d->F;
        for (int f = 0; f < d->F; f++) dk[f] += z[f];
        if (d->fresh && t % d->c == 0) memset(z, 0, sizeof(real) * d->F);
    }
}

/* dsrc of the pooled rows (dx for pool x, dk in dphi for pool k), given
 * row r's gradient. */
static real *mc_dsrc(mc_ctx *m, real *dx, size_t row) {
    return m->d.poolk ? m->s.dphi + row * 2 * m->d.HF + m->d.HF : dx + row * m->d.C;
}

/* Backward of mc_gates_forward of sequence b from dgam: du, and the pooled
 * rows' gradient (the cached pools' only with cache_grad). */
static void mc_gates_backward(mc_ctx *m, real *dx, int b) {
    const mc_dims *d = &m->d;
    const int W = d->PWt, Pw = d->Pw;
    memset(m->s.dpoolm + (size_t)b * d->nmem * W, 0, sizeof(real) * d->nmem * W);
    memset(m->s.dpoolon + (size_t)b * d->T * W, 0, sizeof(real) * d->T * W);
    int a0, nr;
    mc_runs it = mc_runs_in(m, b, 0, d->T);
    while (mc_run_next(&it, &a0, &nr))
        for (size_t row = (size_t)b * d->T + a0; row < (size_t)b * d->T + a0 + nr; row++) {
            int s = (int)(row % d->T) / d->c, n = mc_nread(d, s);
            for (int h = 0; h < d->H; h++) {
                const real *gw = m->a.gam + (row * d->H + h) * d->nslot;
                real *dg = m->s.dgam + (row * d->H + h) * d->nslot;
                real dot = 0;
                for (int j = 0; j <= n; j++) dot += gw[j] * dg[j];
                for (int j = 0; j <= n; j++) dg[j] = gw[j] * (dg[j] - dot); /* now dscore */
                const real *u = m->a.u + (row * d->H + h) * Pw;
                real *du = m->s.du + (row * d->H + h) * Pw;
                size_t off = mc_hoff(d, h);
                for (int j = 0; j <= n; j++) {
                    if (dg[j] == 0) continue;
                    const real *pool;
                    real *dpool = NULL;
                    if (j < n) {
                        size_t pm = ((size_t)b * d->nmem + mc_read(d, s, j) - 1) * W + off;
                        pool = m->a.poolm + pm;
                        if (d->cgrad) dpool = m->s.dpoolm + pm;
                    } else {
                        pool = m->a.poolon + row * W + off;
                        dpool = m->s.dpoolon + row * W + off;
                    }
                    for (int i = 0; i < Pw; i++) du[i] += dg[j] * pool[i];
                    if (dpool)
                        for (int i = 0; i < Pw; i++) dpool[i] += dg[j] * u[i];
                }
            }
        }
    if (d->cgrad)
        for (int P = 1; P <= d->nmem; P++) {
            const real *dp = m->s.dpoolm + ((size_t)b * d->nmem + P - 1) * W;
            int t0 = mc_lo(d, P) * d->c, t1 = P * d->c;
            real inv = 1 / (real)(t1 - t0);
            for (int t = t0; t < t1; t++) {
                real *ds = mc_dsrc(m, dx, (size_t)b * d->T + t);
                for (int i = 0; i < W; i++) ds[i] += inv * dp[i];
            }
        }
    /* online: token j of a segment gets sum_{t >= j} dpool_t / (t - start + 1),
     * accumulated in place from the segment's last token back */
    for (int t = d->T - 1; t >= 0; t--) {
        size_t row = (size_t)b * d->T + t;
        real *dp = m->s.dpoolon + row * W;
        real inv = 1 / (real)(t % d->c + 1);
        for (int i = 0; i < W; i++) dp[i] *= inv;
        if ((t + 1) % d->c != 0 && t + 1 < d->T)
            for (int i = 0; i < W; i++) dp[i] += dp[i + W];
        real *ds = mc_dsrc(m, dx, row);
        for (int i = 0; i < W; i++) ds[i] += dp[i];
    }
}

/* ---- the fast path over the sequences, split across threads ------------------------------ */

#define MC_MIN_WORK (1L << 20)

/* A thread's view of the call: the shared context with lane `slot`. */
typedef struct mc_job {
    const mc_ctx *m;
    real *dx;
} mc_job;

static mc_ctx mc_in_lane(const mc_ctx *m, int slot) {
    mc_ctx t = *m;
    mc_lane_at(t.cfg, &t.d, t.s.lanes + (size_t)slot * t.lane_size, &t.w);
    return t;
}

static void mc_fwd_range(void *ctx, int b0, int b1, int slot) {
    mc_ctx m = mc_in_lane(((const mc_job *)ctx)->m, slot);
    const mc_dims *d = &m.d;
    for (int b = b0; b < b1; b++) {
        if (d->gagg) mc_gates_forward(&m, b);
        for (int h = 0; h < d->H; h++) {
            mc_memories_forward(&m, b, h);
            if (d->norm) mc_online_den(&m, b, h);
            mc_aggregate_forward(&m, b, h);
        }
    }
}

static void mc_bwd_range(void *ctx, int b0, int b1, int slot) {
    mc_ctx m = mc_in_lane(((const mc_job *)ctx)->m, slot);
    const mc_dims *d = &m.d;
    for (int b = b0; b < b1; b++)
        for (int h = 0; h < d->H; h++) {
            mc_aggregate_backward(&m, b, h);
            if (d->cgrad) mc_memories_backward(&m, b, h);
            if (d->norm) mc_online_den_backward(&m, b, h);
        }
}

static void mc_gates_bwd_range(void *ctx, int b0, int b1, int slot) {
    const mc_job *j = ctx;
    mc_ctx m = mc_in_lane(j->m, slot);
    for (int b = b0; b < b1; b++) mc_gates_backward(&m, j->dx, b);
}

/* Threads for the per-sequence loops: every memory's chain and reads. */
static int mc_threads(const mc_dims *d) {
    double work = (double)d->N * d->HF * d->Dv * (2.0 + d->nslot);
    return ml_par_threads(d->B, work, MC_MIN_WORK);
}

/* ---- the naive path ------------------------------------------------------------------------ */

/* Memory P of (b, h) by its definition: its own run from zero over the
 * tokens before P c (from token 0 with checkpoint init, from its first
 * segment when fresh). */
static void mc_naive_memory(mc_ctx *m, int b, int h, int P, real *S, real *z) {
    const mc_dims *d = &m->d;
    int st = d->fresh ? mc_lo(d, P) * d->c : 0, n = P * d->c - st;
    size_t r0 = (size_t)b * d->T + st;
    mcs_forward_ref(S, NULL, mc_k(m, r0, h), mc_v(m, r0, h), mc_beta(m, r0, h), mc_g(m, r0, h),
                    n, &m->md, m->w.core);
    if (z) {
        memset(z, 0, sizeof(real) * d->F);
        for (int i = 0; i < n; i++)
            for (int f = 0; f < d->F; f++) z[f] += mc_k(m, r0 + i, h)[f];
    }
}

/* The cached memories segment s reads, oldest first, written out from the
 * definition (constant: 1..s; log: the running sums of the binary digits of
 * s from the highest). Returns their number. */
static int mc_naive_list(const mc_dims *d, int s, int *list) {
    int n = 0;
    if (!d->log) {
        for (int P = 1; P <= s; P++) list[n++] = P;
        return n;
    }
    int acc = 0;
    for (int bit = 30; bit >= 0; bit--)
        if (s & (1 << bit)) {
            acc += 1 << bit;
            list[n++] = acc;
        }
    return n;
}

/* Token t of (b, h): the list, pools (written out), scores, weights, reads
 * of every memory of the list (num, den) and the online one (from Son, zon).
 * Returns the list length n; slot n is the online memory. */
static int mc_naive_token(mc_ctx *m, int b, int h, int t, const real *Son, const real *zon,
                          int *list) {
    const mc_dims *d = &m->d;
    const int Dv = d->Dv, F = d->F, W = d->PWt;
    const size_t SS = (size_t)F * Dv, row = (size_t)b * d->T + t;
    const real *q = mc_q(m, row, h);
    int s = t / d->c, n = mc_naive_list(d, s, list);
    for (int j = 0; j <= n; j++) {
        const real *S = j < n ? m->s.Mn + (size_t)(list[j] - 1) * SS : Son;
        const real *z = j < n ? m->s.zn + (size_t)(list[j] - 1) * F : zon;
        real *num = m->s.num + (size_t)j * Dv;
        for (int v = 0; v < Dv; v++) {
            num[v] = 0;
            for (int f = 0; f < F; f++) num[v] += S[(size_t)f * Dv + v] * q[f];
        }
        m->s.den[j] = d->norm ? mc_dot(q, z, F) : 0;
        if (!d->gagg) continue;
        int t0 = j < n ? mc_lo(d, list[j]) * d->c : s * d->c, t1 = j < n ? list[j] * d->c : t + 1;
        real *pool = m->s.pools + (size_t)j * W;
        memset(pool, 0, sizeof(real) * W);
        for (int i = t0; i < t1; i++)
            for (int w = 0; w < W; w++) pool[w] += mc_src(m, (size_t)b * d->T + i)[w] / (t1 - t0);
        m->w.sc[j] = mc_dot(m->a.u + (row * d->H + h) * d->Pw, pool + mc_hoff(d, h), d->Pw);
    }
    mc_weights(m->s.gw, m->w.sc, n, d, m->w.keep);
    return n;
}

/* Forward of (b, h) by the definitions, into a.o. */
static void mc_naive_forward(mc_ctx *m, int b, int h) {
    const mc_dims *d = &m->d;
    const int Dv = d->Dv, F = d->F;
    const size_t SS = (size_t)F * Dv;
    int *list = m->s.list;
    for (int P = 1; P <= d->nmem; P++)
        mc_naive_memory(m, b, h, P, m->s.Mn + (size_t)(P - 1) * SS,
                        d->norm ? m->s.zn + (size_t)(P - 1) * F : NULL);
    real *S = m->s.Sall, *z = m->s.zall; /* the running online memory */
    for (int t = 0; t < d->T; t++) {
        size_t row = (size_t)b * d->T + t;
        if (t == 0 || (d->fresh && t % d->c == 0)) {
            memset(S, 0, sizeof(real) * SS);
            memset(z, 0, sizeof(real) * F);
        }
        mcs_step(S, mc_k(m, row, h), mc_v(m, row, h), d->delta ? *mc_beta(m, row, h) : 0,
                 d->decay ? REXP(*mc_g(m, row, h)) : 1, &m->md, m->s.vtmp);
        for (int f = 0; f < F; f++) z[f] += mc_k(m, row, h)[f];
        int n = mc_naive_token(m, b, h, t, S, z, list);
        real *y = m->a.o + row * d->C + (size_t)h * Dv;
        if (d->agg == MC_SOUP) {
            real D = 0;
            for (int v = 0; v < Dv; v++) y[v] = 0;
            for (int j = 0; j <= n; j++) {
                for (int v = 0; v < Dv; v++) y[v] += m->s.gw[j] * m->s.num[(size_t)j * Dv + v];
                D += m->s.gw[j] * m->s.den[j];
            }
            if (d->norm)
                for (int v = 0; v < Dv; v++) y[v] /= D + m->eps;
        } else {
            for (int v = 0; v < Dv; v++) y[v] = 0;
            for (int j = 0; j <= n; j++) {
                real f = d->norm ? m->s.gw[j] / (m->s.den[j] + m->eps) : m->s.gw[j];
                for (int v = 0; v < Dv; v++) y[v] += f * m->s.num[(size_t)j * Dv + v];
            }
        }
    }
}

/* Backward of (b, h) by the definitions: the online run in reverse, token
 * by token, then every memory's own run. */
static void mc_naive_backward(mc_ctx *m, int b, int h, real *dx) {
    const mc_dims *d = &m->d;
    const int Dv = d->Dv, F = d->F, W = d->PWt, ld = 2 * d->HF;
    const size_t SS = (size_t)F * Dv;
    int *list = m->s.list;
    for (int P = 1; P <= d->nmem; P++)
        mc_naive_memory(m, b, h, P, m->s.Mn + (size_t)(P - 1) * SS,
                        d->norm ? m->s.zn + (size_t)(P - 1) * F : NULL);
    /* the online memory after every token */
    for (int t = 0; t < d->T; t++) {
        size_t row = (size_t)b * d->T + t;
        real *S = m->s.Sall + (size_t)t * SS, *z = m->s.zall + (size_t)t * F;
        if (t == 0 || (d->fresh && t % d->c == 0)) {
            memset(S, 0, sizeof(real) * SS);
            memset(z, 0, sizeof(real) * F);
        } else {
            memcpy(S, S - SS, sizeof(real) * SS);
            memcpy(z, z - F, sizeof(real) * F);
        }
        mcs_step(S, mc_k(m, row, h), mc_v(m, row, h), d->delta ? *mc_beta(m, row, h) : 0,
                 d->decay ? REXP(*mc_g(m, row, h)) : 1, &m->md, m->s.vtmp);
        for (int f = 0; f < F; f++) z[f] += mc_k(m, row, h)[f];
    }
    memset(m->w.dSm, 0, sizeof(real) * d->nmem * SS);
    memset(m->w.dzm, 0, sizeof(real) * d->nmem * F);
    memset(m->s.dSrun, 0, sizeof(real) * SS);
    memset(m->s.dzrun, 0, sizeof(real) * F);
    memset(m->s.zero, 0, sizeof(real) * SS);
    real *dnum = m->s.dnum;
    for (int t = d->T - 1; t >= 0; t--) {
        size_t row = (size_t)b * d->T + t;
        const real *S = m->s.Sall + (size_t)t * SS, *z = m->s.zall + (size_t)t * F;
        const real *q = mc_q(m, row, h);
        int s = t / d->c, n = mc_naive_token(m, b, h, t, S, z, list);
        const real *dy = m->s.dO + row * d->C + (size_t)h * Dv;
        real *dq = m->s.dphi + row * ld + (size_t)h * F;
        /* soup: y = A / (D + eps) */
        real Dsum = 0, dD = 0;
        const real *dA = dy;
        if (d->agg == MC_SOUP && d->norm) {
            for (int j = 0; j <= n; j++) Dsum += m->s.gw[j] * m->s.den[j];
            real inv = 1 / (Dsum + m->eps), yd = 0;
            for (int v = 0; v < Dv; v++) {
                real A = 0;
                for (int j = 0; j <= n; j++) A += m->s.gw[j] * m->s.num[(size_t)j * Dv + v];
                yd += dy[v] * A * inv;
                m->s.vtmp[v] = dy[v] * inv;
            }
            dD = -yd * inv;
            dA = m->s.vtmp;
        }
        for (int j = 0; j <= n; j++) {
            const real *num = m->s.num + (size_t)j * Dv;
            real gw = m->s.gw[j], den = m->s.den[j], dden = 0, dgw;
            if (d->agg == MC_SOUP) {
                for (int v = 0; v < Dv; v++) dnum[v] = gw * dA[v];
                dden = d->norm ? gw * dD : 0;
                dgw = mc_dot(dA, num, Dv) + (d->norm ? dD * den : 0);
            } else if (d->norm) {
                real inv = 1 / (den + m->eps);
                dgw = mc_dot(dy, num, Dv) * inv;
                for (int v = 0; v < Dv; v++) dnum[v] = gw * inv * dy[v];
                dden = -gw * dgw * inv;
            } else {
                dgw = mc_dot(dy, num, Dv);
                for (int v = 0; v < Dv; v++) dnum[v] = gw * dy[v];
            }
            m->s.dgw[j] = dgw;
            int cached = j < n;
            const real *M = cached ? m->s.Mn + (size_t)(list[j] - 1) * SS : S;
            const real *zz = cached ? m->s.zn + (size_t)(list[j] - 1) * F : z;
            for (int f = 0; f < F; f++) {
                dq[f] += mc_dot(M + (size_t)f * Dv, dnum, Dv);
                if (d->norm) dq[f] += dden * zz[f];
            }
            if (cached && !d->cgrad) continue;
            real *dM = cached ? m->w.dSm + (size_t)(list[j] - 1) * SS : m->s.dSrun;
            real *dz = cached ? m->w.dzm + (size_t)(list[j] - 1) * F : m->s.dzrun;
            for (int f = 0; f < F; f++) {
                for (int v = 0; v < Dv; v++) dM[(size_t)f * Dv + v] += q[f] * dnum[v];
                dz[f] += dden * q[f];
            }
        }
        if (d->gagg) {
            real dot = 0;
            for (int j = 0; j <= n; j++) dot += m->s.gw[j] * m->s.dgw[j];
            const real *u = m->a.u + (row * d->H + h) * d->Pw;
            real *du = m->s.du + (row * d->H + h) * d->Pw;
            size_t off = mc_hoff(d, h);
            for (int j = 0; j <= n; j++) {
                real ds = m->s.gw[j] * (m->s.dgw[j] - dot);
                const real *pool = m->s.pools + (size_t)j * W + off;
                for (int i = 0; i < d->Pw; i++) du[i] += ds * pool[i];
                if (j < n && !d->cgrad) continue;
                int a0 = j < n ? mc_lo(d, list[j]) * d->c : s * d->c;
                int a1 = j < n ? list[j] * d->c : t + 1;
                for (int r = a0; r < a1; r++) {
                    real *dsrc = mc_dsrc(m, dx, (size_t)b * d->T + r) + off;
                    for (int i = 0; i < d->Pw; i++) dsrc[i] += ds * u[i] / (a1 - a0);
                }
            }
        }
        /* the online memory's step at t */
        int first = t == 0 || (d->fresh && t % d->c == 0);
        const real *Sprev = first ? m->s.zero : S - SS;
        real *dk = m->s.dphi + row * ld + d->HF + (size_t)h * F;
        mcs_step_backward(m->s.dSrun, dk, m->s.dqkv + row * d->Cp + 2 * d->Cq + (size_t)h * Dv,
                          d->delta ? m->s.dbeta + row * d->H + h : NULL,
                          d->decay ? m->s.dg + row * d->H + h : NULL, Sprev, mc_k(m, row, h),
                          mc_v(m, row, h), d->delta ? *mc_beta(m, row, h) : 0,
                          d->decay ? REXP(*mc_g(m, row, h)) : 1, &m->md, m->s.Sp, m->s.u2, m->s.r2);
        for (int f = 0; f < F; f++) dk[f] += m->s.dzrun[f];
        if (first) {
            memset(m->s.dSrun, 0, sizeof(real) * SS);
            memset(m->s.dzrun, 0, sizeof(real) * F);
        }
    }
    if (!d->cgrad) return;
    for (int P = 1; P <= d->nmem; P++) {
        int st = d->fresh ? mc_lo(d, P) * d->c : 0, n = P * d->c - st;
        size_t r0 = (size_t)b * d->T + st;
        mcs_backward_ref(NULL, m->s.dphi + r0 * ld + d->HF + (size_t)h * F,
                         m->s.dqkv + r0 * d->Cp + 2 * d->Cq + (size_t)h * Dv,
                         d->delta ? m->s.dbeta + r0 * d->H + h : NULL,
                         d->decay ? m->s.dg + r0 * d->H + h : NULL,
                         m->w.dSm + (size_t)(P - 1) * SS, NULL, mc_k(m, r0, h), mc_v(m, r0, h),
                         mc_beta(m, r0, h), mc_g(m, r0, h), n, &m->md, m->w.core);
        if (d->norm)
            for (int i = 0; i < n; i++)
                for (int f = 0; f < F; f++)
                    m->s.dphi[(r0 + i) * ld + d->HF + (size_t)h * F + f] +=
                        m->w.dzm[(size_t)(P - 1) * F + f];
    }
}

/* ---- forward and backward ----------------------------------------------------------------- */

static void mc_ctx_of(mc_ctx *m, const mixer_call *mc, const real *x) {
    m->cfg = mc->cfg;
    m->d = mc_dims_of(m->cfg, mc->B, mc->T, mc->C);
    m->md = mc_state_dims(m->cfg, &m->d);
    mc_acts_at(m->cfg, &m->d, mc->act, &m->a);
    mc_scr_at(m->cfg, &m->d, mc->scratch, &m->s);
    m->lane_size = mc_lane_at(m->cfg, &m->d, NULL, &m->w);
    mc_lane_at(m->cfg, &m->d, m->s.lanes, &m->w);
    m->x = x;
    m->qkv = m->d.conv ? m->a.convd : m->a.proj;
    m->eps = (real)m->cfg->eps;
    m->rows = mc->rows;
    m->S = mc->rows ? mc->n_rows : 0;
}

/* The output stage (linfam.h) over the call's buffers. */
static lf_outstage mc_outstage(const mc_ctx *m, const mc_ptrs *p, const mc_ptrs *gp) {
    lf_outstage st = {m->d.H, m->d.Dv, m->cfg->out_norm, p->onw, p->wgate, p->wo, p->bo,
                      gp->onw, gp->wgate, gp->wo, gp->bo, m->a.on, m->a.rstd, m->a.gz, m->a.y,
                      m->s.dy, m->s.dgz, m->s.tmp};
    return st;
}

static void memcache_forward(const mixer_call *mc, real *out, const real *x) {
    mc_ctx m;
    mc_ctx_of(&m, mc, x);
    const memcache_cfg *c = m.cfg;
    const mc_dims *d = &m.d;
    mc_ptrs p = mc_unpack(c, mc->p);
    mc_ptrs gp = mc_unpack(c, mc->dp);
    const lf_outstage st = mc_outstage(&m, &p, &gp);
    const int N = d->N, C = d->C, H = d->H, S = m.S;

    /* with rows: q (unless the short conv mixes it with its neighbours) and u
     * projected for the rows only, zero elsewhere */
    if (m.rows) rows_gather(m.s.xr, x, C, m.rows, S, C);
    if (m.rows && !d->conv)
        linear_forward_rows(m.a.proj, m.s.rtmp, x, m.s.xr, p.wqkv, p.bqkv, m.rows, S, N, C,
                            d->Cp, d->Cq);
    else
        linear_forward(m.a.proj, x, p.wqkv, p.bqkv, N, C, d->Cp);
    if (d->conv) conv1d_causal_forward(m.a.convd, m.a.proj, p.convw, NULL, d->B, d->T, d->Cp,
                                       d->conv);
    lf_phi_forward_tokens(m.a.phi, c->qk_l2norm ? m.a.rn : NULL, m.qkv, N, d->Cp, 2 * H, d->Dk,
                          d->F, c->feature_map);
    if (d->delta) {
        linear_forward(m.a.beta, x, p.wbeta, NULL, N, C, H);
        lf_beta_forward(m.a.beta, (size_t)N * H);
    }
    if (d->decay) {
        lf_dt_shift(m.s.shift, H, c->dt_min, c->dt_max);
        linear_forward(m.a.za, x, p.wdecay, NULL, N, C, H);
        lf_decay_forward(m.a.g, m.a.za, p.A_log, p.dt_bias, m.s.shift, N, H, H);
    }
    if (d->gagg && m.rows)
        linear_forward_rows(m.a.u, m.s.rtmp, x, m.s.xr, p.wu, NULL, m.rows, S, N, C, H * d->Pw,
                            H * d->Pw);
    else if (d->gagg)
        linear_forward(m.a.u, x, p.wu, NULL, N, C, H * d->Pw);

    if (d->naive) {
        for (int b = 0; b < d->B; b++)
            for (int h = 0; h < H; h++) mc_naive_forward(&m, b, h);
    } else {
        size_t so = 0;
        for (int i = 0; i < mc_n_online(d); i++) {
            size_t r0;
            gdelta_dims g = mc_online_dims(c, d, i, &r0);
            gdelta_forward(m.a.onum + r0 * C, m.a.save + so, m.a.phi + r0 * 2 * d->HF,
                           m.a.phi + r0 * 2 * d->HF + d->HF, m.qkv + r0 * d->Cp + 2 * d->Cq,
                           d->delta ? m.a.beta + r0 * H : NULL, d->decay ? m.a.g + r0 * H : NULL,
                           &g, m.s.core);
            so += gdelta_save_size(&g);
        }
        mc_job job = {&m, NULL};
        ml_par_ranges(d->B, mc_threads(d), mc_fwd_range, &job);
    }

    if (m.rows) {
        rows_gather(m.s.rtmp, m.a.o, C, m.rows, S, C);
        lf_output_forward(&st, out, m.s.rtmp, m.s.xr, S);
    } else {
        lf_output_forward(&st, out, m.a.o, x, N);
    }
}

static void memcache_backward(const mixer_call *mc, real *dx, const real *dout, const real *x) {
    mc_ctx m;
    mc_ctx_of(&m, mc, x);
    const memcache_cfg *c = m.cfg;
    const mc_dims *d = &m.d;
    mc_ptrs p = mc_unpack(c, mc->p);
    mc_ptrs gp = mc_unpack(c, mc->dp);
    const lf_outstage st = mc_outstage(&m, &p, &gp);
    const int N = d->N, C = d->C, H = d->H, S = m.S;
    const size_t NC = (size_t)N * C, NP = (size_t)N * 2 * d->HF, NH = (size_t)N * H;

    /* output projection and norm: dO = dy; with rows from the rows' d o
     * (in s.donum until the core's backward), zero elsewhere, and the rows' d
     * x gathered in s.dxr */
    if (m.rows) {
        lf_output_backward_rows(&st, m.s.dO, m.s.dxr, m.s.xr, m.s.rtmp, m.s.donum, dout, m.a.o,
                                x, m.rows, S, N);
    } else {
        lf_output_backward(&st, m.s.dO, dx, dout, m.a.o, x, N);
    }

    ml_par_zero(m.s.dphi, NP * sizeof(real));
    /* only v's columns: the feature maps' backward below writes q's and k's */
    ml_par_zero_rows(m.s.dqkv + 2 * d->Cq, (size_t)N, (size_t)d->Cp * sizeof(real),
                     (size_t)C * sizeof(real));
    if (d->delta) memset(m.s.dbeta, 0, NH * sizeof(real));
    if (d->decay) memset(m.s.dg, 0, NH * sizeof(real));
    if (d->gagg) memset(m.s.du, 0, sizeof(real) * NH * d->Pw);

    if (d->naive) {
        for (int b = 0; b < d->B; b++)
            for (int h = 0; h < H; h++) mc_naive_backward(&m, b, h, dx);
    } else {
        memset(m.s.donum, 0, NC * sizeof(real));
        if (d->norm) memset(m.s.doden, 0, NH * sizeof(real)); /* rows: only theirs are set */
        mc_job job = {&m, dx};
        ml_par_ranges(d->B, mc_threads(d), mc_bwd_range, &job);
        size_t so = 0;
        for (int i = 0; i < mc_n_online(d); i++) {
            size_t r0;
            gdelta_dims g = mc_online_dims(c, d, i, &r0);
            gdelta_backward(m.s.dphi + r0 * 2 * d->HF, m.s.dphi + r0 * 2 * d->HF + d->HF,
                            m.s.dqkv + r0 * d->Cp + 2 * d->Cq,
                            d->delta ? m.s.dbeta + r0 * H : NULL,
                            d->decay ? m.s.dg + r0 * H : NULL, m.s.donum + r0 * C, m.a.save + so,
                            m.a.phi + r0 * 2 * d->HF, m.a.phi + r0 * 2 * d->HF + d->HF,
                            m.qkv + r0 * d->Cp + 2 * d->Cq, d->delta ? m.a.beta + r0 * H : NULL,
                            d->decay ? m.a.g + r0 * H : NULL, &g, m.s.core);
            so += gdelta_save_size(&g);
        }
        if (d->gagg) ml_par_ranges(d->B, mc_threads(d), mc_gates_bwd_range, &job);
    }
    if (d->gagg && m.rows)
        linear_backward_rows(dx, m.s.dxr, gp.wu, NULL, m.s.rtmp, m.s.du, x, m.s.xr, p.wu, m.rows,
                             S, N, C, H * d->Pw, H * d->Pw);
    else if (d->gagg)
        linear_backward(dx, gp.wu, NULL, m.s.du, x, p.wu, N, C, H * d->Pw);

    /* gates */
    if (d->delta) {
        memset(m.s.dz, 0, NH * sizeof(real));
        lf_beta_backward(m.s.dz, m.s.dbeta, m.a.beta, NH);
        linear_backward(dx, gp.wbeta, NULL, m.s.dz, x, p.wbeta, N, C, H);
    }
    if (d->decay) {
        lf_decay_backward(m.s.dz, gp.A_log, gp.dt_bias, m.s.dg, m.a.g, m.a.za, p.A_log, N, H, H);
        linear_backward(dx, gp.wdecay, NULL, m.s.dz, x, p.wdecay, N, C, H);
    }

    /* feature maps back to the projection */
    lf_phi_backward_tokens(m.s.dqkv, m.s.dphi, m.qkv, m.a.phi, c->qk_l2norm ? m.a.rn : NULL, N,
                           d->Cp, 2 * H, d->Dk, d->F, c->feature_map, m.s.dphi_raw);
    const real *dproj = m.s.dqkv;
    if (d->conv) {
        ml_par_zero(m.s.dproj, (size_t)N * d->Cp * sizeof(real));
        conv1d_causal_backward(m.s.dproj, gp.convw, NULL, m.s.dqkv, m.a.proj, p.convw, d->B, d->T,
                               d->Cp, d->conv);
        dproj = m.s.dproj;
    }
    if (m.rows && !d->conv)
        linear_backward_rows(dx, m.s.dxr, gp.wqkv, gp.bqkv, m.s.rtmp, dproj, x, m.s.xr, p.wqkv,
                             m.rows, S, N, C, d->Cp, d->Cq);
    else
        linear_backward(dx, gp.wqkv, gp.bqkv, dproj, x, p.wqkv, N, C, d->Cp);
    if (m.rows) rows_scatter_add(dx, m.s.dxr, m.rows, S, C);
}

/* The memories the most-reading of the T tokens holds (its cached ones and
 * the online one), each H F Dv (+ H F), plus a pool per memory for the gated
 * aggregations, plus the short conv's past rows. */
static long memcache_state_size(const void *cfg, int C, int T) {
    const memcache_cfg *c = cfg;
    mc_dims d = mc_dims_of(c, 1, T, C);
    long unit = (long)d.H * d.F * d.Dv + (d.norm ? (long)d.H * d.F : 0) + (d.gagg ? d.PWt : 0);
    long n = (long)d.nslot * unit;
    if (d.conv > 0) n += (long)(d.conv - 1) * d.Cp;
    return n;
}

const ml_mixer mixer_memcache = {
    .name = "memcache",
    .help = "Memory Caching (Behrouz et al. 2026): a linear-family memory (any rule) run per "
            "segment of `segment` tokens; finished segments are cached (constant: one per "
            "segment; log: blocks of the binary decomposition of the segment index) and a "
            "token reads its online memory plus the cached ones, aggregated by residual sum, "
            "grm (softmax gates <x Wu, MeanPool>), soup (memories mixed, read once) or ssc "
            "(top cache_topk cached + online); one segment covering the sequence is the base "
            "rule",
    .fields = memcache_fields,
    .cfg_size = sizeof(memcache_cfg),
    .validate = memcache_validate,
    .caution = memcache_caution,
    .declare = memcache_declare,
    .act_size = memcache_act_size,
    .scratch_size = memcache_scratch_size,
    .forward = memcache_forward,
    .backward = memcache_backward,
    .state_size = memcache_state_size,
    .out_rows = 1,
};
