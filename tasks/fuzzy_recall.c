/* fuzzy_recall.c: fuzzy in-context recall of the MAD suite (Poli et al.
 * 2024, mad-lab's generate_fuzzy_in_context_recall_instance with
 * multi_query=True): keys and values are motifs of several tokens, so the
 * model must find where a key ends before it can recall.
 *
 * Vocabulary V: pad token V - 1; S = V - 1; key tokens [0, S/2), value tokens
 * [S/2, S). A motif of size m is m distinct tokens in random order (uniform
 * over the m-permutations of its vocabulary, as mad-lab's choice over all
 * permutations).
 *   pairs   appended while they fit in L - (Km + Vm) tokens (room kept for
 *           the probe): key size uniform in [1, Km] on the train split and
 *           always Km on the test split (mad-lab prompts at the largest size
 *           at test time); value size uniform in [1, Vm]. A key motif seen
 *           earlier in the sequence (same size, same tokens) repeats its
 *           value motif and is a query; otherwise a new value motif is drawn.
 *           The first pair that does not fit ends the list.
 *   probe   a key drawn uniformly among the distinct key motifs presented,
 *           followed by its value motif; a query.
 *   padding the sequence is left-padded with the pad token to length L.
 * Targets are next-token: for every value token at position p of a query,
 * target[p - 1] = input[p]; -1 elsewhere. With train_all_tokens (mad-lab's
 * training) the train split supervises every next token instead.
 * Differences from mad-lab, on purpose: the probe is drawn from the keys
 * already presented instead of being planted at a random position, and no
 * noise vocabulary (mad-lab's default for this task is none).
 *
 * Randomness: rng_seed3(seed, split, index), consumed pair by pair (key size,
 * value size, key tokens, value tokens when new), then the probe.
 * Scratch: one record per pair on the stack (L <= 4096, so at most 2048).
 * Scoring: micro accuracy, and macro as accuracy_macro.
 *
 * Left to others: batching, the loss mask (train.c); single-key ranges. */
#include <stddef.h>
#include <string.h>

#include "rng.h"
#include "task.h"

#define FZ_MAX_LEN 4096
#define FZ_MAX_MOTIF 8

typedef struct fz_config {
    int vocab_size;       /* V, pad included */
    int seq_len;          /* L */
    int k_motif_size;     /* Km: largest key motif */
    int v_motif_size;     /* Vm: largest value motif */
    int train_all_tokens; /* bool */
} fz_config;

static const ml_field fz_fields[] = {
    {"vocab_size", FT_INT, offsetof(fz_config, vocab_size), 3, 1e6, NULL, "16",
     "vocabulary V: key tokens, value tokens, and the pad token V-1"},
    {"seq_len", FT_INT, offsetof(fz_config, seq_len), 2, FZ_MAX_LEN, NULL, "128",
     "sequence length L (left-padded); at least 2*(k_motif_size + v_motif_size)"},
    {"k_motif_size", FT_INT, offsetof(fz_config, k_motif_size), 1, FZ_MAX_MOTIF, NULL, "3",
     "largest key motif (tokens); test keys always have this size"},
    {"v_motif_size", FT_INT, offsetof(fz_config, v_motif_size), 1, FZ_MAX_MOTIF, NULL, "3",
     "largest value motif (tokens)"},
    {"train_all_tokens", FT_BOOL, offsetof(fz_config, train_all_tokens), 0, 1, NULL, "true",
     "as MAD: training examples supervise every next token, test ones only the queries"},
    {NULL, FT_INT, 0, 0, 0, NULL, NULL, NULL},
};

/* Cross-key constraints, "key: ..." messages: motif sizes, enough distinct
 * key and value tokens for the largest motifs, and room for two pairs. */
static int fz_validate(const void *cfgp, ml_error *e) {
    const fz_config *c = cfgp;
    if (c->k_motif_size < 1 || c->k_motif_size > FZ_MAX_MOTIF)
        return ML_FAIL(e, "k_motif_size: must be in [1, %d] (got %d)", FZ_MAX_MOTIF,
                       c->k_motif_size);
    if (c->v_motif_size < 1 || c->v_motif_size > FZ_MAX_MOTIF)
        return ML_FAIL(e, "v_motif_size: must be in [1, %d] (got %d)", FZ_MAX_MOTIF,
                       c->v_motif_size);
    int S = c->vocab_size - 1;
    if (c->vocab_size < 3 || S / 2 < c->k_motif_size || S - S / 2 < c->v_motif_size)
        return ML_FAIL(e,
                       "vocab_size: %d gives %d key and %d value tokens; motifs of distinct "
                       "tokens need at least k_motif_size = %d and v_motif_size = %d",
                       c->vocab_size, S / 2, S - S / 2, c->k_motif_size, c->v_motif_size);
    int need = 2 * (c->k_motif_size + c->v_motif_size);
    if (c->seq_len < need || c->seq_len > FZ_MAX_LEN)
        return ML_FAIL(e,
                       "seq_len: must be in [2*(k_motif_size + v_motif_size) = %d, %d] "
                       "(got %d)",
                       need, FZ_MAX_LEN, c->seq_len);
    return 0;
}

/* The sizes a model needs: V tokens, L positions. */
static int fz_vocab_size(const void *cfg) { return ((const fz_config *)cfg)->vocab_size; }
static int fz_seq_len(const void *cfg) { return ((const fz_config *)cfg)->seq_len; }

/* m distinct tokens uniform from [lo, lo + n) into out, in draw order. */
static void draw_motif(ml_rng *r, int lo, int n, int m, int *out) {
    for (int i = 0; i < m; i++) {
        int t, taken;
        do {
            t = lo + (int)rng_below(r, (uint64_t)n);
            taken = 0;
            for (int j = 0; j < i && !taken; j++) taken = out[j] == t;
        } while (taken);
        out[i] = t;
    }
}

typedef struct fz_pair {
    int start, ks, vs; /* key at [start, start+ks), value after it */
    int query;         /* the key appeared before (or this is the probe) */
} fz_pair;

/* Example `index` of `split` (layout in the header). */
static void fz_generate(const void *cfgp, const void *data, uint64_t seed, int split, long index,
                        int *input, int *target) {
    (void)data;
    const fz_config *c = cfgp;
    const int L = c->seq_len, Km = c->k_motif_size, Vm = c->v_motif_size;
    const int S = c->vocab_size - 1, n_keys = S / 2, n_values = S - S / 2, pad = c->vocab_size - 1;
    const int room = L - (Km + Vm);
    fz_pair pairs[FZ_MAX_LEN / 2];
    int n = 0, len = 0;
    ml_rng r;
    rng_seed3(&r, seed, (uint64_t)split, (uint64_t)index);

    for (;;) {
        int ks = split == SPLIT_TRAIN ? 1 + (int)rng_below(&r, (uint64_t)Km) : Km;
        int vs = 1 + (int)rng_below(&r, (uint64_t)Vm);
        int key[FZ_MAX_MOTIF], value[FZ_MAX_MOTIF], seen = -1;
        draw_motif(&r, 0, n_keys, ks, key);
        for (int j = 0; j < n && seen < 0; j++)
            if (pairs[j].ks == ks && !memcmp(input + pairs[j].start, key, sizeof(int) * ks))
                seen = j;
        if (seen >= 0) {
            vs = pairs[seen].vs;
            memcpy(value, input + pairs[seen].start + ks, sizeof(int) * vs);
        } else {
            draw_motif(&r, n_keys, n_values, vs, value);
        }
        if (len + ks + vs > room) break;
        memcpy(input + len, key, sizeof(int) * ks);
        memcpy(input + len + ks, value, sizeof(int) * vs);
        pairs[n++] = (fz_pair){len, ks, vs, seen >= 0};
        len += ks + vs;
    }
    /* The probe: a copy of the pick-th pair that is not a repeat. The first
     * pair always fits (Km + Vm <= room), so there is one. */
    int distinct = 0;
    for (int j = 0; j < n; j++) distinct += !pairs[j].query;
    int pick = (int)rng_below(&r, (uint64_t)distinct), src = 0;
    for (int j = 0; j < n; j++)
        if (!pairs[j].query && pick-- == 0) {
            src = j;
            break;
        }
    fz_pair probe = {len, pairs[src].ks, pairs[src].vs, 1};
    memcpy(input + len, input + pairs[src].start, sizeof(int) * (probe.ks + probe.vs));
    pairs[n++] = probe;
    len += probe.ks + probe.vs;

    int shift = L - len;
    memmove(input + shift, input, sizeof(int) * len);
    for (int t = 0; t < shift; t++) input[t] = pad;

    if (split == SPLIT_TRAIN && c->train_all_tokens) {
        for (int t = 0; t < L - 1; t++) target[t] = input[t + 1];
        target[L - 1] = -1;
        return;
    }
    for (int t = 0; t < L; t++) target[t] = -1;
    for (int j = 0; j < n; j++) {
        if (!pairs[j].query) continue;
        int v0 = shift + pairs[j].start + pairs[j].ks;
        for (int m = 0; m < pairs[j].vs; m++) target[v0 + m - 1] = input[v0 + m];
    }
}

const ml_task task_fuzzy_recall = {
    .name = "fuzzy_recall",
    .help = "MAD fuzzy recall: keys and values are motifs of 1..k_motif_size / v_motif_size "
            "tokens (micro and macro accuracy)",
    .fields = fz_fields,
    .cfg_size = sizeof(fz_config),
    .validate = fz_validate,
    .vocab_size = fz_vocab_size,
    .seq_len = fz_seq_len,
    .generate = fz_generate,
    .per_class = 1,
    .score = task_score_macro,
};
