/* joint_recall.c: joint recall (Zhan et al. 2025, "Overcoming Long-Context
 * Limitations of State-Space Models via Context-Dependent Sparse
 * Attention"): a key's value depends on the context it appears in.
 *
 * With C = n_context, K = n_key, W = n_value:
 *   tokens    BOS 0, PAD 1, SEP 2, values [3, 3+W), keys [3+W, 3+W+K),
 *             contexts [3+W+K, 3+W+K+C); V = 3 + W + K + C. PAD is reserved
 *             and never emitted: every sequence has exactly length L.
 *   table     M[c][k] uniform in [0, W), drawn per example (values repeat).
 *   sequence  BOS; for each context c in a random order: c, then its K pairs
 *             (key k, value M[c][k]) in a random order; SEP; then the same C
 *             blocks again with a fresh context order and fresh key orders.
 *             A block is 1 + 2K tokens, so L = 2 + 2C(1 + 2K).
 *   targets   next-token targets at the keys of the second half: target[t]
 *             is the value at t + 1 when t is a second-half key position,
 *             -1 elsewhere. Every (context, key) pair is queried exactly once,
 *             and loss and accuracy see only second-half values.
 *   context   the first half through SEP: context_len = 2 + C(1 + 2K).
 *
 * Randomness: one ml_rng seeded by rng_seed3(seed, split, index), consumed
 * as the table (context-major), the first half's context order, its key
 * orders block by block, then the second half's the same way.
 *
 * Scratch: the table lives at the tail of target (C*K <= L/4 entries) until
 * the sequence is written; the targets are then derived from the input.
 *
 * Left to others: batching and the loss mask (train.c); single-key ranges
 * (the field table). */
#include <stddef.h>

#include "rng.h"
#include "task.h"

enum { JR_BOS = 0, JR_PAD = 1, JR_SEP = 2, JR_FIRST_VALUE = 3, JR_MAX = 64 };

typedef struct jr_config {
    int n_context; /* C */
    int n_key;     /* K */
    int n_value;   /* W */
} jr_config;

static const ml_field jr_fields[] = {
    {"n_context", FT_INT, offsetof(jr_config, n_context), 1, JR_MAX, NULL, "8",
     "contexts C: each holds all K keys with its own values (paper: 5 to 16)"},
    {"n_key", FT_INT, offsetof(jr_config, n_key), 1, JR_MAX, NULL, "8",
     "keys K per context (paper: 5 to 16); L = 2 + 2C(1 + 2K)"},
    {"n_value", FT_INT, offsetof(jr_config, n_value), 2, 65536, NULL, "16",
     "value tokens W; the table M[c,k] draws from them with repeats"},
    {NULL, FT_INT, 0, 0, 0, NULL, NULL, NULL},
};

/* Ranges again (direct callers skip the spec parser); the rest always fits. */
static int jr_validate(const void *cfgp, ml_error *e) {
    const jr_config *c = cfgp;
    if (c->n_context < 1 || c->n_context > JR_MAX)
        return ML_FAIL(e, "n_context: must be in [1, %d] (got %d)", JR_MAX, c->n_context);
    if (c->n_key < 1 || c->n_key > JR_MAX)
        return ML_FAIL(e, "n_key: must be in [1, %d] (got %d)", JR_MAX, c->n_key);
    if (c->n_value < 2 || c->n_value > 65536)
        return ML_FAIL(e, "n_value: must be in [2, 65536] (got %d)", c->n_value);
    return 0;
}

/* V = 3 special tokens + W values + K keys + C contexts. */
static int jr_vocab_size(const void *cfgp) {
    const jr_config *c = cfgp;
    return 3 + c->n_value + c->n_key + c->n_context;
}

/* L = BOS + two passes of C blocks of 1 + 2K tokens + SEP. */
static int jr_seq_len(const void *cfgp) {
    const jr_config *c = cfgp;
    return 2 + 2 * c->n_context * (1 + 2 * c->n_key);
}

/* The first pass through SEP: the context a question model reads. */
static int jr_context_len(const void *cfgp) {
    const jr_config *c = cfgp;
    return 2 + c->n_context * (1 + 2 * c->n_key);
}

/* Example `index` of `split` (layout in the header). */
static void jr_generate(const void *cfgp, const void *data, uint64_t seed, int split, long index,
                        int *input, int *target) {
    (void)data;
    const jr_config *c = cfgp;
    const int C = c->n_context, K = c->n_key, W = c->n_value;
    const int L = jr_seq_len(c), block = 1 + 2 * K, H = jr_context_len(c);
    const int key0 = JR_FIRST_VALUE + W, ctx0 = key0 + K;
    ml_rng r;
    rng_seed3(&r, seed, (uint64_t)split, (uint64_t)index);

    int *table = target + L - C * K;
    for (int i = 0; i < C * K; i++) table[i] = (int)rng_below(&r, (uint64_t)W);

    int order_c[JR_MAX], order_k[JR_MAX], t = 0;
    input[t++] = JR_BOS;
    for (int half = 0; half < 2; half++) {
        for (int i = 0; i < C; i++) order_c[i] = i;
        rng_shuffle_int(&r, order_c, C);
        for (int b = 0; b < C; b++) {
            int ctx = order_c[b];
            input[t++] = ctx0 + ctx;
            for (int j = 0; j < K; j++) order_k[j] = j;
            rng_shuffle_int(&r, order_k, K);
            for (int j = 0; j < K; j++) {
                input[t++] = key0 + order_k[j];
                input[t++] = JR_FIRST_VALUE + table[ctx * K + order_k[j]];
            }
        }
        if (half == 0) input[t++] = JR_SEP;
    }
    /* The table is no longer needed: targets overwrite it. In the second
     * half a block is [context, k, v, k, v, ...]: keys at odd offsets. */
    for (int i = 0; i < L; i++) target[i] = -1;
    for (int i = H; i < L; i++)
        if ((i - H) % block % 2 == 1) target[i] = input[i + 1];
}

const ml_task task_joint_recall = {
    .name = "joint_recall",
    .help = "joint recall (Zhan et al. 2025): values depend on (context, key); the second "
            "pass queries every pair",
    .fields = jr_fields,
    .cfg_size = sizeof(jr_config),
    .validate = jr_validate,
    .vocab_size = jr_vocab_size,
    .seq_len = jr_seq_len,
    .generate = jr_generate,
    .context_len = jr_context_len,
};
