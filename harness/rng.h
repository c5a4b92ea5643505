/* rng.h: memlab's own random generator (never rand()).
 *
 * xoshiro256** seeded through splitmix64: fast, the same stream on every
 * machine, and cheap to derive independent streams from (seed, stream, index)
 * so that any example of any split can be generated on its own. */
#ifndef MEMLAB_RNG_H
#define MEMLAB_RNG_H

#include <stdint.h>

typedef struct ml_rng {
    uint64_t s[4];
} ml_rng;

/* Seed from one 64-bit value. */
void rng_seed(ml_rng *r, uint64_t seed);
/* Seed from a tuple: independent streams for distinct (a, b, c). */
void rng_seed3(ml_rng *r, uint64_t a, uint64_t b, uint64_t c);
uint64_t rng_u64(ml_rng *r);
/* Uniform integer in [0, n), n > 0, without modulo bias. */
uint64_t rng_below(ml_rng *r, uint64_t n);
/* Uniform double in [0, 1) with 53 random bits. */
double rng_uniform(ml_rng *r);
/* Standard normal (Box-Muller, both values used alternately not kept: one
 * value per call, so the stream position is simple to reason about). */
double rng_normal(ml_rng *r);
/* Fisher-Yates shuffle of a[0..n). */
void rng_shuffle_int(ml_rng *r, int *a, int n);

#endif
