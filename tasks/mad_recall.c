/* mad_recall.c: in-context recall and noisy recall of the MAD suite (Poli et
 * al. 2024, mad-lab's generate_in_context_recall_instance with
 * multi_query=True). Both are one generator: noisy recall is in-context
 * recall with a noise vocabulary, exactly as MAD builds it, so the two table
 * entries share this file and differ only in their defaults.
 *
 * Vocabulary V (vocab_size, as in MAD it includes the noise tokens), noise
 * vocabulary Nv, S = V - Nv: keys [0, S/2), values [S/2, S), noise [S, V).
 * A sequence of L tokens is P = L/2 slots of two tokens:
 *   slots 0 .. P-2  each is noise with probability frac_noise (two tokens
 *                   drawn from the noise vocabulary with replacement), except
 *                   one slot drawn uniformly from [0, P-1) that is never
 *                   noise; otherwise a pair (k, v): k uniform over the keys; v
 *                   is k's value if k appeared earlier in this sequence, else
 *                   uniform over the values (values may repeat across keys);
 *   slot P-1        the probe: a key drawn uniformly among the distinct keys
 *                   presented, followed by its value.
 * Queries: the value of every pair whose key appeared before, and the probe's.
 * Targets are next-token: target[t] = the value at t + 1 when t is the key
 * of a query, -1 elsewhere. With train_all_tokens (MAD's training) the train
 * split instead supervises every next token (target[t] = input[t + 1],
 * t < L - 1); the test split always scores only the queries.
 *
 * Differences from mad-lab, on purpose: the protected slot is drawn from
 * [0, P-1) rather than [0, P), so a sequence always presents a key before
 * the probe (mad-lab fails when every slot became noise); the sequence is L
 * tokens with no target at the last position (mad-lab returns L - 1).
 *
 * Randomness: rng_seed3(seed, split, index), consumed as the protected slot,
 * then slot by slot (noise draw, tokens), then the probe.
 * Scoring: micro accuracy as the headline, macro (MAD's library default:
 * mean over target tokens of their accuracy) as accuracy_macro.
 *
 * Left to others: batching, the loss mask (train.c); single-key ranges (the
 * field tables). */
#include <stddef.h>

#include "rng.h"
#include "task.h"

typedef struct icr_config {
    int vocab_size;       /* V, noise tokens included */
    int seq_len;          /* L, even */
    int noise_vocab_size; /* Nv */
    double frac_noise;    /* probability that a slot is noise */
    int train_all_tokens; /* bool: train split supervises every next token */
} icr_config;

#define ICR_MAX_LEN 65536

#define ICR_FIELDS(V, NV, FRAC)                                                                  \
    {{"vocab_size", FT_INT, offsetof(icr_config, vocab_size), 2, 1e6, NULL, V,                \
      "vocabulary V including the noise tokens: keys, values, then noise_vocab_size noise"},   \
     {"seq_len", FT_INT, offsetof(icr_config, seq_len), 4, ICR_MAX_LEN, NULL, "128",          \
      "sequence length L (even): L/2 slots of a key-value pair or two noise tokens"},         \
     {"noise_vocab_size", FT_INT, offsetof(icr_config, noise_vocab_size), 0, 1e6, NULL, NV,   \
      "noise tokens at the top of the vocabulary"},                                            \
     {"frac_noise", FT_REAL, offsetof(icr_config, frac_noise), 0, 0.999, NULL, FRAC,          \
      "probability that a slot is noise instead of a pair (MAD: 0.2 to 0.8)"},                \
     {"train_all_tokens", FT_BOOL, offsetof(icr_config, train_all_tokens), 0, 1, NULL, "true", \
      "as MAD: training examples supervise every next token, test ones only the queries"},    \
     {NULL, FT_INT, 0, 0, 0, NULL, NULL, NULL}}

static const ml_field icr_fields[] = ICR_FIELDS("16", "0", "0");
static const ml_field noisy_fields[] = ICR_FIELDS("32", "16", "0.2");

/* Cross-key constraints, "key: ..." messages: an even length, at least one
 * key and one value besides the noise tokens, noise tokens when there is
 * noise. */
static int icr_validate(const void *cfgp, ml_error *e) {
    const icr_config *c = cfgp;
    if (c->seq_len < 4 || c->seq_len > ICR_MAX_LEN || c->seq_len % 2)
        return ML_FAIL(e, "seq_len: must be even and in [4, %d] (got %d)", ICR_MAX_LEN,
                       c->seq_len);
    if (c->noise_vocab_size < 0)
        return ML_FAIL(e, "noise_vocab_size: must be at least 0 (got %d)", c->noise_vocab_size);
    if (c->vocab_size - c->noise_vocab_size < 2)
        return ML_FAIL(e,
                       "vocab_size: %d leaves %d tokens besides the %d noise tokens; keys and "
                       "values need at least 2",
                       c->vocab_size, c->vocab_size - c->noise_vocab_size, c->noise_vocab_size);
    if (!(c->frac_noise >= 0.0 && c->frac_noise < 1.0))
        return ML_FAIL(e, "frac_noise: must be in [0, 1) (got %g)", c->frac_noise);
    if (c->frac_noise > 0.0 && c->noise_vocab_size < 1)
        return ML_FAIL(e, "noise_vocab_size: must be at least 1 when frac_noise > 0 (got %g)",
                       c->frac_noise);
    return 0;
}

/* The sizes a model needs: V tokens (noise included), L positions. */
static int icr_vocab_size(const void *cfg) { return ((const icr_config *)cfg)->vocab_size; }
static int icr_seq_len(const void *cfg) { return ((const icr_config *)cfg)->seq_len; }

/* Example `index` of `split` (layout in the header). While it is built,
 * target[2i] flags slot i as a query (1) or not (0). */
static void icr_generate(const void *cfgp, const void *data, uint64_t seed, int split,
                         long index, int *input, int *target) {
    (void)data;
    const icr_config *c = cfgp;
    const int L = c->seq_len, P = L / 2, S = c->vocab_size - c->noise_vocab_size;
    const int n_keys = S / 2, n_values = S - S / 2;
    ml_rng r;
    rng_seed3(&r, seed, (uint64_t)split, (uint64_t)index);

    int protected_slot = (int)rng_below(&r, (uint64_t)(P - 1));
    int distinct = 0; /* keys presented, counted at their first occurrence */
    for (int i = 0; i < P - 1; i++) {
        int *slot = input + 2 * i;
        int noise = c->frac_noise > 0.0 && i != protected_slot && rng_uniform(&r) < c->frac_noise;
        target[2 * i] = target[2 * i + 1] = 0;
        if (noise) {
            slot[0] = S + (int)rng_below(&r, (uint64_t)c->noise_vocab_size);
            slot[1] = S + (int)rng_below(&r, (uint64_t)c->noise_vocab_size);
            continue;
        }
        int k = (int)rng_below(&r, (uint64_t)n_keys), seen = -1;
        /* Noise tokens are >= S > any key, so a match is always a pair. */
        for (int j = 0; j < i && seen < 0; j++)
            if (input[2 * j] == k) seen = j;
        slot[0] = k;
        if (seen >= 0) {
            slot[1] = input[2 * seen + 1];
            target[2 * i] = 1;
        } else {
            slot[1] = n_keys + (int)rng_below(&r, (uint64_t)n_values);
            distinct++;
        }
    }
    /* The probe: the pick-th distinct key in order of first appearance. */
    int pick = (int)rng_below(&r, (uint64_t)distinct), first = -1;
    for (int i = 0; i < P - 1 && pick >= 0; i++) {
        int k = input[2 * i], earlier = 0;
        if (k >= S) continue;
        for (int j = 0; j < i && !earlier; j++) earlier = input[2 * j] == k;
        if (!earlier && pick-- == 0) first = i;
    }
    input[L - 2] = input[2 * first];
    input[L - 1] = input[2 * first + 1];
    target[L - 2] = 1;

    if (split == SPLIT_TRAIN && c->train_all_tokens) {
        for (int t = 0; t < L - 1; t++) target[t] = input[t + 1];
        target[L - 1] = -1;
        return;
    }
    for (int i = 0; i < P; i++) {
        target[2 * i] = target[2 * i] ? input[2 * i + 1] : -1;
        target[2 * i + 1] = -1;
    }
}

const ml_task task_in_context_recall = {
    .name = "in_context_recall",
    .help = "MAD in-context recall: key-value pairs from a small vocabulary, every repeated "
            "key is a query (micro and macro accuracy)",
    .fields = icr_fields,
    .cfg_size = sizeof(icr_config),
    .validate = icr_validate,
    .vocab_size = icr_vocab_size,
    .seq_len = icr_seq_len,
    .generate = icr_generate,
    .per_class = 1,
    .score = task_score_macro,
};

const ml_task task_noisy_recall = {
    .name = "noisy_recall",
    .help = "MAD noisy recall: in-context recall with slots of noise tokens from a separate "
            "noise vocabulary (micro and macro accuracy)",
    .fields = noisy_fields,
    .cfg_size = sizeof(icr_config),
    .validate = icr_validate,
    .vocab_size = icr_vocab_size,
    .seq_len = icr_seq_len,
    .generate = icr_generate,
    .per_class = 1,
    .score = task_score_macro,
};
