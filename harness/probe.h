/* probe.h: the capacity and interference probe (training-free).
 *
 * Measures a memory itself, with no training: N random key-value pairs of
 * width d are written into a memory, read back with their keys, and scored by
 * the relative squared error of the reads and by top-1 retrieval (is the
 * stored value nearest to the read the right one?). The memories are the
 * write rules of the mixers, written here in double precision on their own
 * (no parameters, no gradients):
 *   sum      S = sum_i v_i k_i^T (linear attention); read S k
 *   delta    S += beta (v - S k) k^T, one pass in order (DeltaNet)
 *   mom      E memories, each pair routed to argmax_e <w_e, k> by a random
 *            router W[E,d]; each memory uses `rule`; read the routed memory
 *   caching  consecutive segments of `segment` pairs, each a fresh memory
 *            with `rule` (Memory Caching without checkpointing); read = the
 *            sum over segments, or gated: softmax over segments of
 *            temperature * <k, mean key of the segment> weighting each read
 *   slots    K slots written by softmax attention: slot s attends over the
 *            pairs with a random unit query q_s (scores temperature *
 *            <q_s, k_j>) and stores the weighted key and value; read =
 *            softmax over slots of temperature * <k, slot key>, weighting
 *            the slot values
 * With random unit keys and values the sum rule's relative error has
 * expectation exactly (N - 1)/d (cross-talk), the theory line.
 *
 * probe_measure is one (memory, d, N, seed) point; the `probe` task
 * (tasks/probe.c) wraps it for specs and sweeps, and probe_sweep runs the
 * `memlab probe` grid, recording one run per (memory, d, N, seed). */
#ifndef MEMLAB_PROBE_H
#define MEMLAB_PROBE_H

#include <stdint.h>

#include "db.h"
#include "error.h"
#include "task.h"

enum { PROBE_SUM = 0, PROBE_DELTA, PROBE_MOM, PROBE_CACHING, PROBE_SLOTS, PROBE_N_MEMORIES };
enum { PROBE_KEYS_RANDOM = 0, PROBE_KEYS_ORTHOGONAL };
enum { PROBE_RULE_SUM = 0, PROBE_RULE_DELTA };
enum { PROBE_READ_SUM = 0, PROBE_READ_GATED };

/* One probe point; the probe task's config struct. */
typedef struct probe_params {
    int memory;         /* PROBE_SUM .. PROBE_SLOTS */
    int d;              /* key and value width */
    int n_pairs;        /* N */
    int keys;           /* PROBE_KEYS_*: random unit, or orthonormal (N <= d) */
    double beta;        /* delta rule step, in (0, 2] */
    int rule;           /* PROBE_RULE_*: write rule of each mom / caching memory */
    int experts;        /* E (mom) */
    int segment;        /* pairs per segment (caching) */
    int read;           /* PROBE_READ_* (caching) */
    int slots;          /* K (slots) */
    double temperature; /* softmax sharpness of the caching gate and the slots */
} probe_params;

typedef struct probe_result {
    double rel_error;  /* sum_i |r_i - v_i|^2 / sum_i |v_i|^2 */
    double top1;       /* fraction of reads whose nearest stored value is their own */
    double theory;     /* (N-1)/d for the sum rule with random keys, 0 with
                          orthogonal keys, NAN for the other memories */
    long state_size;   /* floats the memory keeps */
} probe_result;

/* Memory names in PROBE_* order, NULL-terminated. */
extern const char *const probe_memory_names[];

/* Ranges and cross-key constraints of p, "key: ..." messages. */
int probe_validate(const probe_params *p, ml_error *e);

/* Write the N pairs K[N,d], V[N,d] (row i = pair i, in write order) into the
 * memory of p and read with every key into R[N,d]. seed draws the router
 * (mom) and the slot queries (slots). Allocates its own scratch. */
int probe_write_read(const probe_params *p, const double *K, const double *V, int N, int d,
                     uint64_t seed, double *R, ml_error *e);

/* One probe point: keys and values drawn from seed (random unit vectors, or
 * orthonormal keys), written, read back and scored. */
int probe_measure(const probe_params *p, uint64_t seed, probe_result *r, ml_error *e);

/* The metrics of one probe point, in this order: test/top1_accuracy,
 * test/rel_error, test/theory_rel_error (only where the theory applies),
 * model/state_size. Returns the count (at most 4). */
int probe_metrics(const probe_result *r, ml_metric *out, int cap);

/* memlab probe: for each memory, N = n_min, 2 n_min, ... <= n_max, and
 * `seeds` seeds from seed0, one probe point recorded as one run (task probe)
 * when db is not NULL. */
typedef struct probe_opts {
    int memory;              /* PROBE_*, or -1 for every memory */
    int d, n_min, n_max, seeds;
    long seed0;
    const char *const *sets; /* extra "task.key=value" (the other probe keys) */
    int n_sets;
} probe_opts;

/* One line of the summary: mean and standard deviation over seeds. */
typedef struct probe_row {
    int memory, d, n;
    double err_mean, err_std, top1_mean, top1_std, theory;
    long state_size;
} probe_row;

/* Run the grid; rows[cap] receives one summary per (memory, N), *n_rows how
 * many. */
int probe_sweep(const probe_opts *o, ml_db *db, probe_row *rows, int cap, int *n_rows,
                ml_error *e);

#endif
