/* mixer.h: the mixer table.
 *
 * A sequence mixer is one file that fills one ml_mixer: its config keys (a
 * schema table over its own struct), validation against d_model, the
 * parameters it owns (declared in order, allocated by the model), the sizes of
 * what its forward saves and of its scratch, forward and backward, and its
 * exact state size. The model calls it once per layer; the mixer never
 * allocates. Adding a mixer is one file plus one line in mixers.c. */
#ifndef MEMLAB_MIXER_H
#define MEMLAB_MIXER_H

#include <stddef.h>

#include "error.h"
#include "real.h"
#include "schema.h"

typedef enum { INIT_NORMAL = 0, INIT_ZEROS, INIT_ONES, INIT_CONV } ml_init;

/* Collects parameter declarations (model.c implements it). */
typedef struct ml_param_sink ml_param_sink;
/* Declare the next parameter: name (relative, e.g. "wqkv"), shape rows x cols
 * (cols = 1 for vectors), initialisation, and whether weight decay applies. */
void param_declare(ml_param_sink *s, const char *name, int rows, int cols, ml_init init,
                   int decay);

/* One call of a mixer on one layer. */
typedef struct mixer_call {
    const void *cfg;  /* the mixer's config struct */
    int B, T, C;
    real *const *p;   /* this layer's parameters, in declaration order */
    real *const *dp;  /* their gradients (backward accumulates into them) */
    real *act;        /* act_size reals: written by forward, read by backward */
    real *scratch;    /* scratch_size reals, free for either pass */
    int context_len;  /* length of the task's context prefix, -1 when it has none */
    double *aux_loss; /* forward ADDS its auxiliary loss, already weighted by its
                         coefficient (e.g. MoM load balancing); the model adds it to the
                         training loss, so backward must include its gradient */
    double *stats;    /* forward ADDS its n_stats statistics here (NULL: not wanted) */
    /* Rows whose output is wanted (a mixer with out_rows set only; NULL: every
     * row). rows[n_rows]: ascending flat positions b*T + t, n_rows < B*T. With
     * rows, forward writes out[n_rows,C] (row s = position rows[s]) and
     * backward reads dout[n_rows,C]; dx stays [B,T,C]. */
    const int *rows;
    int n_rows;
} mixer_call;

typedef struct ml_mixer {
    const char *name;
    const char *help;
    const ml_field *fields; /* keys of the model section this mixer adds */
    size_t cfg_size;
    int (*validate)(const void *cfg, int C, ml_error *e);
    void (*declare)(const void *cfg, int C, ml_param_sink *s);
    size_t (*act_size)(const void *cfg, int B, int T, int C);
    size_t (*scratch_size)(const void *cfg, int B, int T, int C);
    /* out[B,T,C] = mixer(x[B,T,C]); out is overwritten. */
    void (*forward)(const mixer_call *c, real *out, const real *x);
    /* dx[B,T,C] += d out/d x ^T dout; parameter gradients into c->dp. */
    void (*backward)(const mixer_call *c, real *dx, const real *dout, const real *x);
    /* Floats per sequence kept to generate the next token after T tokens
     * (per layer). */
    long (*state_size)(const void *cfg, int C, int T);
    /* Optional (NULL = none): how many statistics forward accumulates per
     * layer (e.g. the fraction of tokens routed to each memory) and the name of
     * statistic i (e.g. "router_frac_2"). The model sums them over forward
     * calls; the trainer records their means. */
    int (*n_stats)(const void *cfg);
    void (*stat_name)(const void *cfg, int i, char *buf, size_t cap);
    /* Optional (NULL = never): when this config needs the task's context
     * boundary (mixer_call.context_len >= 0), the key that asks for it (e.g.
     * "variant"); NULL when it does not. The spec validator refuses such a
     * config with a task that declares no boundary, naming that key. */
    const char *(*needs_context)(const void *cfg);
    /* Optional (NULL = none): for a legal config known to fail (a run that
     * diverges in its first step, say), a warning "key: why; what to set"
     * into msg[cap] and 1; else 0. The spec loaders print it at the key
     * (file:line:column) before any run starts, and the runs still go ahead:
     * an ablation may want exactly that config. */
    int (*caution)(const void *cfg, int C, char *msg, size_t cap);
    /* Set when forward and backward take mixer_call.rows: the model's last
     * layer then asks only for the rows its LM head reads (the others cost
     * nothing downstream), and the mixer may skip work that only they need
     * (softmax: their queries and attention). Without it the model runs the
     * mixer on every row and keeps the rows it needs. */
    int out_rows;
} ml_mixer;

extern const ml_mixer *const ml_mixers[]; /* NULL-terminated (mixers.c) */
const ml_mixer *mixer_find(const char *name);

#endif
