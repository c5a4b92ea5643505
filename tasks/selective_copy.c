/* selective_copy.c: selective copying of the MAD suite (Poli et al. 2024,
 * mad-lab's generate_selective_copying_instance): copy the marked tokens,
 * scattered among blanks, in order.
 *
 * Vocabulary V: content tokens [0, V-2), blank V-2, copy V-1. With n =
 * num_tokens_to_copy and L = seq_len:
 *   positions [0, L-n-1)   n content tokens, uniform with replacement, at an
 *                          n-subset of these positions drawn uniformly, in
 *                          order; blanks elsewhere;
 *   position L-n-1         the copy token;
 *   positions [L-n, L)     blanks; target[L-n+i] = the i-th content token.
 * Every other target is -1 (mad-lab aligns the targets the same way: the
 * first blank after the copy token answers the first token). Needs
 * L > 2n + 1, as mad-lab asserts (at least one blank among the tokens).
 * Difference from mad-lab, on purpose: mad-lab inserts the blanks with
 * numpy's global generator (not the seeded one) and never after the last
 * content token; here the subset of positions is uniform and seeded.
 *
 * Randomness: rng_seed3(seed, split, index), consumed as the n content tokens,
 * then the position subset (selection sampling, one draw per position).
 * Scoring: micro accuracy, and macro as accuracy_macro.
 *
 * Left to others: batching, the loss mask (train.c); single-key ranges. */
#include <stddef.h>

#include "rng.h"
#include "task.h"

typedef struct sc_config {
    int vocab_size;         /* V */
    int seq_len;            /* L */
    int num_tokens_to_copy; /* n */
} sc_config;

static const ml_field sc_fields[] = {
    {"vocab_size", FT_INT, offsetof(sc_config, vocab_size), 3, 1e6, NULL, "16",
     "vocabulary V: V-2 content tokens, blank V-2, copy V-1 (MAD: 16 to 128)"},
    {"seq_len", FT_INT, offsetof(sc_config, seq_len), 4, 1e6, NULL, "256",
     "sequence length L (MAD: 256 to 1024); must exceed 2*num_tokens_to_copy + 1"},
    {"num_tokens_to_copy", FT_INT, offsetof(sc_config, num_tokens_to_copy), 1, 1e6, NULL, "16",
     "marked tokens n to copy (MAD: 16 to 96)"},
    {NULL, FT_INT, 0, 0, 0, NULL, NULL, NULL},
};

/* Cross-key constraints, "key: ..." messages: the three special roles and
 * room for n tokens, a blank, the copy token and n answers. */
static int sc_validate(const void *cfgp, ml_error *e) {
    const sc_config *c = cfgp;
    if (c->vocab_size < 3)
        return ML_FAIL(e, "vocab_size: must be at least 3 (got %d)", c->vocab_size);
    if (c->num_tokens_to_copy < 1)
        return ML_FAIL(e, "num_tokens_to_copy: must be at least 1 (got %d)",
                       c->num_tokens_to_copy);
    if ((long)c->seq_len <= 2L * c->num_tokens_to_copy + 1)
        return ML_FAIL(e,
                       "num_tokens_to_copy: n tokens, at least one blank, the copy token and n "
                       "answer positions must fit: 2*n + 1 = %ld >= seq_len = %d",
                       2L * c->num_tokens_to_copy + 1, c->seq_len);
    return 0;
}

/* The sizes a model needs: V tokens, L positions. */
static int sc_vocab_size(const void *cfg) { return ((const sc_config *)cfg)->vocab_size; }
static int sc_seq_len(const void *cfg) { return ((const sc_config *)cfg)->seq_len; }

/* Example `index` of `split` (layout in the header). The content tokens wait
 * in target[L-n .. L) until they are placed. */
static void sc_generate(const void *cfgp, const void *data, uint64_t seed, int split, long index,
                        int *input, int *target) {
    (void)data;
    const sc_config *c = cfgp;
    const int V = c->vocab_size, L = c->seq_len, n = c->num_tokens_to_copy;
    const int blank = V - 2, copy = V - 1, region = L - n - 1;
    ml_rng r;
    rng_seed3(&r, seed, (uint64_t)split, (uint64_t)index);

    int *content = target + L - n;
    for (int i = 0; i < n; i++) content[i] = (int)rng_below(&r, (uint64_t)(V - 2));
    /* Selection sampling (Knuth's algorithm S): position p is taken with
     * probability (still needed) / (positions left), a uniform n-subset. */
    int placed = 0;
    for (int p = 0; p < region; p++) {
        int left = region - p, need = n - placed;
        if ((int)rng_below(&r, (uint64_t)left) < need) input[p] = content[placed++];
        else input[p] = blank;
    }
    input[region] = copy;
    for (int t = L - n; t < L; t++) input[t] = blank;
    for (int t = 0; t < L - n; t++) target[t] = -1;
}

const ml_task task_selective_copy = {
    .name = "selective_copy",
    .help = "MAD selective copying: copy the marked tokens scattered among blanks, in order "
            "(micro and macro accuracy)",
    .fields = sc_fields,
    .cfg_size = sizeof(sc_config),
    .validate = sc_validate,
    .vocab_size = sc_vocab_size,
    .seq_len = sc_seq_len,
    .generate = sc_generate,
    .per_class = 1,
    .score = task_score_macro,
};
