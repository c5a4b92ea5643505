/* model.h: the sequence model around a mixer.
 *
 *   x = wte[tok] (+ wpe[t])
 *   per layer:  h = Norm1(x); if conv: h = Conv(h); x = x + Mixer(h)
 *               if mlp: x = x + W2 GELU(W1 Norm2(x) + b1) + b2
 *   y = NormF(x); logits = y lm_head^T (lm_head = wte when tied; no bias)
 *   loss = mean cross-entropy over positions whose target >= 0
 *
 * Parameters, gradients and the two AdamW moments are each one flat allocation
 * described by a table of named tensors (so the optimiser is one loop and a
 * checkpoint one write). Activations for the largest batch are one more
 * allocation made at build time; forward and backward never allocate.
 * By default the LM head runs only at supervised positions (full_head = 0):
 * the loss is the same, the cost is N/L of the full head on recall tasks. The
 * last block then runs on those rows too (residual, MLP, final norm; the
 * mixer on them alone when it has out_rows), since nothing downstream reads
 * the others. */
#ifndef MEMLAB_MODEL_H
#define MEMLAB_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "error.h"
#include "mixer.h"
#include "real.h"

typedef struct ml_param {
    char name[96]; /* e.g. "layers.0.mixer.wqkv" */
    size_t offset; /* into the flat buffers */
    size_t n;      /* rows * cols */
    int rows, cols;
    ml_init init;
    int decay;     /* weight decay applies */
} ml_param;

typedef struct ml_layer ml_layer; /* per-layer pointers, model.c */

typedef struct ml_model {
    model_config cfg;
    const ml_mixer *mixer;
    int V, maxT, maxB; /* vocabulary, longest sequence, largest batch */
    int full_head;     /* LM head at every position */
    int head_block_rows; /* fewer rows per block of model_forward_train's head than
                          * the default (about 8 MiB of logits); 0 = the default */

    ml_param *params;  /* n_tensors named tensors */
    int n_tensors;
    size_t n_params;
    real *w, *g, *m, *v; /* weights, gradients, AdamW moments: n_params each */

    ml_layer *layers;  /* cfg.n_layers */
    real *acts;        /* activations and scratch for maxB x maxT */
    size_t n_acts;
    int *rows;         /* indices of supervised rows of the last forward */

    int context_len;   /* task's context prefix, -1 when none (set by the caller) */
    int n_stats;       /* statistics per layer of the mixer (0 when none) */
    double *stats;     /* [n_layers * n_stats] sums over forward calls since reset */
    long stat_calls;   /* forward calls summed into stats */

    /* state of the last forward, read by backward */
    int B, T, S;       /* S = rows through the LM head */
    const int *input, *target;
    double loss;       /* mean cross-entropy over supervised positions + aux_loss */
    double aux_loss;   /* auxiliary losses of the mixers (weighted), summed over layers */
    int count;         /* supervised positions */
} ml_model;

/* Build the parameter table and allocate every buffer for batches up to maxB
 * sequences of up to maxT tokens. Validates the mixer config against d_model. */
int model_build(ml_model *m, const model_config *cfg, int vocab, int maxT, int maxB,
                ml_error *e);
void model_free(ml_model *m);
/* Initialise weights from seed (normal(0, init_std) matrices, unit norm
 * weights, zero biases, conv taps uniform(+-1/sqrt(K))) and zero the moments. */
void model_init_weights(ml_model *m, uint64_t seed);
/* The tensor named name, or NULL. */
const ml_param *model_param(const ml_model *m, const char *name);

/* Forward on input[B,T] with target[B,T] (-1 = not supervised). Returns the
 * mean cross-entropy over supervised positions (0 when there are none) plus
 * the mixers' auxiliary losses (m->aux_loss). If pred is not
 * NULL, pred[b*T+t] receives the argmax token at supervised positions and -1
 * elsewhere. B <= maxB, T <= maxT. */
double model_forward(ml_model *m, const int *input, const int *target, int B, int T,
                     int *pred);
/* model_forward for a training step, which model_backward follows: when more
 * rows go through the LM head than one block holds, the head's loss and its
 * backward run there in blocks of rows (lm_head.c), without the [S,V]
 * logits, and model_backward only adds the head's weight gradient. The loss
 * is the same; gradients equal model_forward's up to the order of dW's sum. */
double model_forward_train(ml_model *m, const int *input, const int *target, int B, int T);
/* Probabilities of the last forward at the S head rows, [S,V] (row s is
 * position rows[s]); overwritten by model_backward. NULL after a
 * model_forward_train that ran the head in blocks. */
const real *model_logits(const ml_model *m);
/* Zero the mixer statistics. */
void model_reset_stats(ml_model *m);
/* Zero the gradient buffer. */
void model_zero_grad(ml_model *m);
/* Backward of the last forward: accumulates d(mean loss)/d(w) into m->g. */
void model_backward(ml_model *m);
/* Where a step's time goes (memlab bench). While the phase clock is on,
 * model_forward and model_backward add each phase's wall seconds, and the
 * part of them spent inside matrix products (matmul.c's clock, which the
 * caller turns on too), to process-wide sums; model_phase_read copies the
 * sums. What no phase holds (residual adds, zeroing, gathers of head rows,
 * the MLP's activation) is the step's remainder. */
enum {
    MODEL_PH_EMBED, /* embedding forward and backward */
    MODEL_PH_NORM,  /* every LayerNorm / RMSNorm */
    MODEL_PH_CONV,  /* the block's causal conv */
    MODEL_PH_MIXER, /* the mixer, forward and backward */
    MODEL_PH_HEAD,  /* logits, cross-entropy and the head's backward */
    MODEL_PHASES
};
extern const char *const model_phase_names[MODEL_PHASES];
void model_phase_clock(int on);
void model_phase_read(double wall[MODEL_PHASES], double prod[MODEL_PHASES]);

/* Per-sequence state (floats) to generate the next token after T tokens,
 * summed over layers: the mixer's state plus the block conv's K-1 past inputs. */
long model_state_size(const ml_model *m, int T);

#endif
