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
 * Evaluation slices (Zoology's test sets at several N and L): the text keys
 * eval_num_kv_pairs and eval_seq_len list values ("4,8,16"); each (L', N')
 * of their cross product (a missing list stands for the training value) is
 * one more test set of MQAR with V, alpha and filler unchanged, evaluated with
 * the trained model at the end of the run and recorded as
 * "accuracy@N=8,L=128". Every slice must be a valid MQAR config; the model is
 * built for the longest one (tasks.c: task_max_seq_len).
 *
 * Left to others: batching, the split streams and the loss mask (train.c
 * treats target -1 as unsupervised); the spec parser checks single-key ranges
 * from the field table, validate() the cross-key constraints. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "task.h"

typedef struct mqar_config {
    int vocab_size;    /* V */
    int seq_len;       /* L */
    int num_kv_pairs;  /* N */
    double alpha;      /* slot preference exponent: weight (g + 1)^(alpha - 1) */
    int random_filler; /* bool */
    char eval_num_kv_pairs[ML_STR]; /* "4,8,16": N of the evaluation slices, "" = none */
    char eval_seq_len[ML_STR];      /* "64,128": L of the evaluation slices, "" = none */
} mqar_config;

/* Most values in one slice list. */
#define MQAR_MAX_LIST 16

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
    {"eval_num_kv_pairs", FT_STRING, offsetof(mqar_config, eval_num_kv_pairs), 0, 0, NULL, "",
     "extra test sets at these N, e.g. \"4,8,16\" (recorded as accuracy@N=..,L=..)"},
    {"eval_seq_len", FT_STRING, offsetof(mqar_config, eval_seq_len), 0, 0, NULL, "",
     "extra test sets at these L, e.g. \"64,128,256\" (cross product with eval_num_kv_pairs)"},
    {NULL, FT_INT, 0, 0, 0, NULL, NULL, NULL},
};

/* The constraints of one shape (L, N) with vocabulary V, as "key: ..."
 * messages. The key and value ranges need no check of their own:
 * V > L >= 4N gives V/2 - 1 >= 2N - 1 >= N keys and V - V/2 >= N values. */
static int check_shape(int V, int L, int N, ml_error *e) {
    if (L < 4) return ML_FAIL(e, "seq_len: must be at least 4 (got %d)", L);
    if (L % 2 != 0) return ML_FAIL(e, "seq_len: must be even (got %d)", L);
    if (V <= L)
        return ML_FAIL(e, "vocab_size: must exceed seq_len (got vocab_size %d, seq_len %d)", V,
                       L);
    if (N < 1) return ML_FAIL(e, "num_kv_pairs: must be at least 1 (got %d)", N);
    if ((long)N * 4 > L)
        return ML_FAIL(e,
                       "num_kv_pairs: 2*N context tokens plus 2*N query slots must fit in "
                       "seq_len: 4*N = %ld > L = %d",
                       (long)N * 4, L);
    return 0;
}

/* Parse a slice list "4, 8,16" into out[MQAR_MAX_LIST]: whole numbers in
 * [1, 1e6] separated by commas (spaces allowed around them). Returns the
 * count (0 for ""), or -1 with a "key: ..." message. */
static int parse_list(const char *key, const char *text, int *out, ml_error *e) {
    int n = 0;
    const char *p = text;
    while (*p == ' ') p++;
    if (!*p) return 0;
    for (;;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || *p == '+' || *p == '-' || v < 1 || v > 1000000)
            return ML_FAIL(e,
                           "%s: '%s' is not a comma-separated list of whole numbers in "
                           "[1, 1000000] (e.g. \"4,8,16\")",
                           key, text);
        if (n == MQAR_MAX_LIST)
            return ML_FAIL(e, "%s: at most %d values (got more in '%s')", key, MQAR_MAX_LIST,
                           text);
        out[n++] = (int)v;
        p = end;
        while (*p == ' ') p++;
        if (!*p) return n;
        if (*p != ',')
            return ML_FAIL(e,
                           "%s: '%s' is not a comma-separated list of whole numbers in "
                           "[1, 1000000] (e.g. \"4,8,16\")",
                           key, text);
        p++;
        while (*p == ' ') p++;
    }
}

/* The slice lists of c: Ns and Ls with their counts; a missing list stands
 * for the training value, and *count is 0 when both are missing. Returns -1
 * on a malformed list. */
static int slice_lists(const mqar_config *c, int *Ns, int *nN, int *Ls, int *nL, int *count,
                       ml_error *e) {
    ml_error ignore;
    if (!e) e = &ignore;
    if ((*nN = parse_list("eval_num_kv_pairs", c->eval_num_kv_pairs, Ns, e)) < 0 ||
        (*nL = parse_list("eval_seq_len", c->eval_seq_len, Ls, e)) < 0)
        return -1;
    *count = *nN || *nL ? (*nN ? *nN : 1) * (*nL ? *nL : 1) : 0;
    if (!*nN) Ns[0] = c->num_kv_pairs, *nN = 1;
    if (!*nL) Ls[0] = c->seq_len, *nL = 1;
    return 0;
}

/* Cross-key constraints. Messages start with the offending key and ": " so
 * the spec parser can point at its line. alpha's lower end is open (the
 * table's min is inclusive), so it is checked here as well. Each evaluation
 * slice must be a valid shape too; its problem is blamed on the list that
 * made it (eval_seq_len for a length problem, else eval_num_kv_pairs). */
static int mqar_validate(const void *cfgp, ml_error *e) {
    const mqar_config *c = cfgp;
    if (!(c->alpha > 1e-9 && c->alpha <= 1e6))
        return ML_FAIL(e, "alpha: must be in (1e-9, 1e6] (got %g)", c->alpha);
    if (check_shape(c->vocab_size, c->seq_len, c->num_kv_pairs, e)) return -1;
    int Ns[MQAR_MAX_LIST], Ls[MQAR_MAX_LIST], nN, nL, count;
    if (slice_lists(c, Ns, &nN, Ls, &nL, &count, e)) return -1;
    for (int i = 0; i < count; i++) {
        int L = Ls[i / nN], N = Ns[i % nN];
        ml_error sub;
        if (!check_shape(c->vocab_size, L, N, &sub)) continue;
        int length_problem = strncmp(sub.msg, "num_kv_pairs", 12) != 0;
        const char *key = "eval_num_kv_pairs";
        if (!c->eval_num_kv_pairs[0] || (c->eval_seq_len[0] && length_problem))
            key = "eval_seq_len";
        return ML_FAIL(e, "%s: the slice N=%d,L=%d is not a valid MQAR shape: %s", key, N, L,
                       sub.msg);
    }
    return 0;
}

/* Number of evaluation slices (0 when neither list is given). */
static int mqar_n_slices(const void *cfgp) {
    int Ns[MQAR_MAX_LIST], Ls[MQAR_MAX_LIST], nN, nL, count;
    if (slice_lists(cfgp, Ns, &nN, Ls, &nL, &count, NULL)) return 0;
    return count;
}

/* Slice i: the config with (seq_len, num_kv_pairs) = (L', N') and no slices
 * of its own, labelled "N=..,L=..". i indexes the cross product L-major. */
static void mqar_slice(const void *cfgp, int i, void *out, char *label, size_t cap) {
    const mqar_config *c = cfgp;
    mqar_config *s = out;
    int Ns[MQAR_MAX_LIST], Ls[MQAR_MAX_LIST], nN, nL, count;
    *s = *c;
    s->eval_num_kv_pairs[0] = s->eval_seq_len[0] = '\0';
    if (slice_lists(c, Ns, &nN, Ls, &nL, &count, NULL) || i < 0 || i >= count) {
        snprintf(label, cap, "N=%d,L=%d", c->num_kv_pairs, c->seq_len);
        return;
    }
    s->seq_len = Ls[i / nN];
    s->num_kv_pairs = Ns[i % nN];
    snprintf(label, cap, "N=%d,L=%d", s->num_kv_pairs, s->seq_len);
}

/* The sizes a model needs: V tokens, L positions, and the 2N-token context
 * prefix that context/question models read before the queries. */
static int mqar_vocab_size(const void *cfg) { return ((const mqar_config *)cfg)->vocab_size; }
static int mqar_seq_len(const void *cfg) { return ((const mqar_config *)cfg)->seq_len; }
/* The 2N-token context prefix. */
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
static void mqar_generate(const void *cfgp, const void *data, uint64_t seed, int split,
                          long index, int *input, int *target) {
    (void)data;
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
    .n_slices = mqar_n_slices,
    .slice = mqar_slice,
};
