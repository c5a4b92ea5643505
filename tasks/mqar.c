/* mqar.c: multi-query associative recall (Zoology, Arora et al. 2023).
 *
 * One example of length L over vocabulary V with N key-value pairs:
 *   context      k_0 v_0 k_1 v_1 ... k_{N-1} v_{N-1}             (2N tokens)
 *   query region L - 2N tokens = S = (L - 2N)/2 slots of two tokens; key k_i
 *                sits at region offset 2*g_i, every other token is filler
 * Keys are distinct, from [1, V/2); values distinct, from [V/2, V). The slots
 * g_0, g_1, ... are drawn in that order without replacement, each with
 * probability proportional to (g + 1)^(alpha - 1) over the slots still free
 * (sequential renormalised draws, the distribution of numpy's
 * random.choice(replace=False, p=...) that Zoology uses). The target is v_i at
 * the position of query k_i and -1 everywhere else.
 *
 * Filler is token 0, or with random_filler a uniform token of [0, V) that is
 * not one of this example's values: no value ever appears in the query
 * region, so none can appear at or after its query (tasks.md). Zoology's own
 * random filler does not exclude them; the exclusion costs V/(V - N) draws.
 *
 * Randomness: one ml_rng seeded by rng_seed3(seed, split, index), consumed
 * in the order keys, values, slots, filler. The example is therefore a pure
 * function of (config, seed, split, index). Across machines it is the same
 * up to libm's pow: the slot draws compare a uniform against sums of pow, so
 * a last-bit difference in pow can only move a draw that lands within an ulp
 * of an interval boundary.
 *
 * Cost per example: O(N^2) for distinct keys and values, O(N * S) pow calls
 * for the slots, O(L + fillers * N) for the query region. No memory beyond
 * the caller's input and target, which double as scratch while the example
 * is built.
 *
 * Left to others: batching, the split streams and the loss mask (train.c
 * treats target -1 as unsupervised); the spec parser checks single-key ranges
 * from the field table, validate() the cross-key constraints. */
#include <math.h>
#include <stddef.h>

#include "rng.h"
#include "task.h"

typedef struct mqar_config {
    int vocab_size;    /* V */
    int seq_len;       /* L */
    int num_kv_pairs;  /* N */
    double alpha;      /* slot preference exponent: weight (g + 1)^(alpha - 1) */
    int random_filler; /* bool */
} mqar_config;

static const ml_field mqar_fields[] = {
    {"vocab_size", FT_INT, offsetof(mqar_config, vocab_size), 4, 1e8, NULL, "8192",
     "vocabulary size V: keys from [1, V/2), values from [V/2, V); must exceed seq_len"},
    {"seq_len", FT_INT, offsetof(mqar_config, seq_len), 4, 1e6, NULL, "64",
     "sequence length L (even): 2N context tokens, then the query region"},
    {"num_kv_pairs", FT_INT, offsetof(mqar_config, num_kv_pairs), 1, 1e6, NULL, "4",
     "key-value pairs N per example, each queried once; needs 4N <= seq_len"},
    {"alpha", FT_REAL, offsetof(mqar_config, alpha), 1e-9, 1e6, NULL, "0.01",
     "query slot g drawn with weight (g+1)^(alpha-1): 1 uniform, small prefers early slots"},
    {"random_filler", FT_BOOL, offsetof(mqar_config, random_filler), 0, 1, NULL, "false",
     "fill non-query positions with random non-value tokens instead of 0"},
    {NULL, FT_INT, 0, 0, 0, NULL, NULL, NULL},
};

/* Cross-key constraints. Messages start with the offending key and ": " so
 * the spec parser can point at its line. alpha's lower end is open (the
 * table's min is inclusive), so it is checked here as well. The key and value
 * ranges need no check of their own: V > L >= 4N gives V/2 - 1 >= 2N - 1 >= N
 * keys and V - V/2 >= N values. */
static int mqar_validate(const void *cfgp, ml_error *e) {
    const mqar_config *c = cfgp;
    if (!(c->alpha > 1e-9 && c->alpha <= 1e6))
        return ML_FAIL(e, "alpha: must be in (1e-9, 1e6] (got %g)", c->alpha);
    if (c->seq_len < 4) return ML_FAIL(e, "seq_len: must be at least 4 (got %d)", c->seq_len);
    if (c->seq_len % 2 != 0)
        return ML_FAIL(e, "seq_len: must be even (got %d)", c->seq_len);
    if (c->vocab_size <= c->seq_len)
        return ML_FAIL(e, "vocab_size: must exceed seq_len (got vocab_size %d, seq_len %d)",
                       c->vocab_size, c->seq_len);
    if (c->num_kv_pairs < 1)
        return ML_FAIL(e, "num_kv_pairs: must be at least 1 (got %d)", c->num_kv_pairs);
    if ((long)c->num_kv_pairs * 4 > c->seq_len)
        return ML_FAIL(e,
                       "num_kv_pairs: 2*N context tokens plus 2*N query slots must fit in "
                       "seq_len: 4*N = %ld > L = %d",
                       (long)c->num_kv_pairs * 4, c->seq_len);
    return 0;
}

/* The sizes a model needs: V tokens, L positions, and the 2N-token context
 * prefix that context/question models read before the queries. */
static int mqar_vocab_size(const void *cfg) { return ((const mqar_config *)cfg)->vocab_size; }
static int mqar_seq_len(const void *cfg) { return ((const mqar_config *)cfg)->seq_len; }
static int mqar_context_len(const void *cfg) {
    return 2 * ((const mqar_config *)cfg)->num_kv_pairs;
}

/* Draw n distinct tokens uniformly from [lo, hi) into out[0], out[stride],
 * ... in draw order (rejection against the ones already drawn; needs
 * hi - lo >= n, which validate guarantees). Rejection keeps each draw exactly
 * uniform over the tokens not yet taken. */
static void draw_distinct(ml_rng *r, int lo, int hi, int n, int *out, int stride) {
    for (int i = 0; i < n; i++) {
        int t, taken;
        do {
            t = lo + (int)rng_below(r, (uint64_t)(hi - lo));
            taken = 0;
            for (int j = 0; j < i && !taken; j++) taken = out[j * stride] == t;
        } while (taken);
        out[i * stride] = t;
    }
}

/* Slot of the next query: one draw over the free slots g (free[2g] < 0) with
 * probability proportional to (g + 1)^beta. Weights are taken relative to
 * the heaviest free slot (the lowest free one when beta < 0, the highest when
 * beta > 0), so the largest weight is exactly 1: no overflow for large
 * alpha, and a total that cannot underflow to zero. */
static int draw_slot(ml_rng *r, const int *free_, int S, double beta) {
    int lo = 0, hi = S - 1;
    while (free_[2 * lo] >= 0) lo++;
    while (free_[2 * hi] >= 0) hi--;
    double ref = (double)(beta < 0 ? lo : hi) + 1.0;
    double total = 0.0;
    for (int g = lo; g <= hi; g++)
        if (free_[2 * g] < 0) total += pow(((double)g + 1.0) / ref, beta);
    double u = rng_uniform(r) * total, acc = 0.0;
    for (int g = lo; g <= hi; g++) {
        if (free_[2 * g] >= 0) continue;
        acc += pow(((double)g + 1.0) / ref, beta);
        if (u < acc) return g;
    }
    /* Not reached: acc retraces total's additions in the same order, so it
     * ends equal to total > u. Kept so that a compiler evaluating the two
     * sums differently still yields a free slot. */
    return hi;
}

/* Example `index` of `split` (see the header for the layout). While it is
 * built, target[2N + 2g] holds the index i of the key whose query took slot g
 * (-1 = free); the final pass turns that into tokens and targets. */
static void mqar_generate(const void *cfgp, uint64_t seed, int split, long index, int *input,
                          int *target) {
    const mqar_config *c = cfgp;
    const int V = c->vocab_size, L = c->seq_len, N = c->num_kv_pairs;
    const int C = 2 * N, S = (L - C) / 2;
    ml_rng r;
    rng_seed3(&r, seed, (uint64_t)split, (uint64_t)index);

    draw_distinct(&r, 1, V / 2, N, input, 2);
    draw_distinct(&r, V / 2, V, N, input + 1, 2);

    for (int t = 0; t < L; t++) target[t] = -1;
    int *slot_owner = target + C;
    for (int i = 0; i < N; i++) slot_owner[2 * draw_slot(&r, slot_owner, S, c->alpha - 1.0)] = i;

    for (int t = C; t < L; t++) {
        if (target[t] >= 0) {
            int i = target[t];
            input[t] = input[2 * i];
            target[t] = input[2 * i + 1];
        } else if (c->random_filler) {
            int tok, is_value;
            do {
                tok = (int)rng_below(&r, (uint64_t)V);
                is_value = 0;
                if (tok >= V / 2)
                    for (int i = 0; i < N && !is_value; i++) is_value = input[2 * i + 1] == tok;
            } while (is_value);
            input[t] = tok;
        } else {
            input[t] = 0;
        }
    }
}

const ml_task task_mqar = {
    .name = "mqar",
    .help = "multi-query associative recall (Zoology): N key-value pairs, then each key "
            "queried once",
    .fields = mqar_fields,
    .cfg_size = sizeof(mqar_config),
    .validate = mqar_validate,
    .vocab_size = mqar_vocab_size,
    .seq_len = mqar_seq_len,
    .generate = mqar_generate,
    .context_len = mqar_context_len,
};
