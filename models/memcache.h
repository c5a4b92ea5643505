/* memcache.h: the state kernels of Memory Caching (mixer_memcache.c).
 *
 * Dimension letters: Dk key (feature) width, Dv value width, n tokens of the
 * run, C chunk length. For one (sequence, head), the linear-family rule of
 * gated_delta.c with a start state S_in instead of zero:
 *   S_t = a_t (I - beta_t k_t k_t^T)^[delta] S_{t-1} + beta_t^[delta] k_t v_t^T,
 *   a_t = e^{g_t} with decay (else 1),
 * and only the state after the last token is produced: the cached memory of a
 * segment. The online reads (o_t = S_t^T q_t) stay with gdelta_forward.
 *
 * mcs_forward runs chunks of C tokens on GEMMs (the WY form for the delta
 * rules, gated_delta.c's file header); mcs_forward_ref runs token by token and
 * is the oracle. mcs_step / mcs_step_backward are one token of the rule, the
 * bricks of the references and of the mixer's naive path. Rows are read
 * through strides, so packed projections need no copy. Nothing allocates;
 * backward accumulates (+=) into every gradient, NULL meaning "not wanted". */
#ifndef MEMLAB_MEMCACHE_H
#define MEMLAB_MEMCACHE_H

#include <stddef.h>

#include "real.h"

typedef struct mcs_dims {
    int Dk, Dv;
    int k_stride, v_stride; /* row strides of k and v (and of dk, dv) */
    int gate_stride;        /* row stride of beta and g (and of dbeta, dg) */
    int delta, decay;       /* rule switches: beta used, g used */
    int chunk;              /* chunk length of mcs_forward / mcs_backward */
} mcs_dims;

/* Reals of scratch that mcs_forward and mcs_backward need for runs of up to
 * n_max tokens; mcs_backward_ref needs mcs_ref_scratch_size. */
size_t mcs_scratch_size(const mcs_dims *d, int n_max);
size_t mcs_ref_scratch_size(const mcs_dims *d, int n_max);

/* S_out [Dk,Dv] = the state after tokens 0..n-1 (k row i at k + i*k_stride,
 * likewise v, beta, g) starting from S_in (NULL: zero). S_out may be S_in.
 * beta, g may be NULL when the rule does not use them. */
void mcs_forward(real *S_out, const real *S_in, const real *k, const real *v,
                 const real *beta, const real *g, int n, const mcs_dims *d, real *scratch);
/* Given dS_out = dL/dS_out: dS_in [Dk,Dv] (NULL: not wanted), dk, dv,
 * dbeta, dg (strides as their inputs) += gradient. S_in as given to forward. */
void mcs_backward(real *dS_in, real *dk, real *dv, real *dbeta, real *dg,
                  const real *dS_out, const real *S_in, const real *k, const real *v,
                  const real *beta, const real *g, int n, const mcs_dims *d, real *scratch);

/* The same contracts, token by token (mcs_step in a loop; backward stores the
 * n states of the run in scratch: mcs_ref_scratch_size). */
void mcs_forward_ref(real *S_out, const real *S_in, const real *k, const real *v,
                     const real *beta, const real *g, int n, const mcs_dims *d, real *scratch);
void mcs_backward_ref(real *dS_in, real *dk, real *dv, real *dbeta, real *dg,
                      const real *dS_out, const real *S_in, const real *k, const real *v,
                      const real *beta, const real *g, int n, const mcs_dims *d,
                      real *scratch);

/* One token in place: S = a S; then with delta u = v - S^T k and S += beta k
 * u^T, else S += k v^T. u [Dv] is scratch. */
void mcs_step(real *S, const real *k, const real *v, real beta, real a, const mcs_dims *d,
              real *u);
/* Backward of mcs_step from Sprev (the state before the token): on entry dS
 * is dL/dS after the token, on exit dL/dS before it; dk [Dk], dv [Dv] and
 * the scalars *dbeta, *dg (each may be NULL) +=. Work: Sp [Dk*Dv], u, r [Dv]. */
void mcs_step_backward(real *dS, real *dk, real *dv, real *dbeta, real *dg, const real *Sprev,
                       const real *k, const real *v, real beta, real a, const mcs_dims *d,
                       real *Sp, real *u, real *r);

#endif
