/* mixer_rows.h: the check that a mixer with out_rows, called with a subset of
 * rows (mixer_call.rows), computes exactly the rows of its full call: the
 * forward's rows, and given d out only at those rows, d x and every parameter
 * gradient. Shared by the tests of the mixers that implement it. */
#ifndef MEMLAB_MIXER_ROWS_H
#define MEMLAB_MIXER_ROWS_H

#include <stddef.h>

#include "mixer.h"

/* The call mc (rows unset; B >= 3, T >= 7; mc->dp pointing into g[ng], the
 * gradients that are compared) on random x[B,T,C], fully and with each of
 * three row sets: one row; rows over three sequences (runs, gaps, a
 * sequence's first and last token, a sequence with none when B > 3); every
 * row but one. Before each rows call act (forward) and scratch are filled
 * with NaN, so a rows path that reads what it did not write shows. CHECKs
 * that the outputs, d x and g agree within tol (max_rel_diff) under label;
 * g is overwritten. */
void mixer_rows_expect(const char *label, const ml_mixer *mx, const mixer_call *mc, double *g,
                       size_t ng, unsigned long long seed, double tol);

#endif
