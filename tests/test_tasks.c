/* test_tasks.c: the task table and every task beyond MQAR (tasks/), and the
 * capacity probe (harness/probe.c), against their definitions in
 * docs/tasks.md.
 *
 * Config structs are private to their task files, so configs are built
 * through each task's own field table (schema_defaults, schema_set), as the
 * spec parser does. Structural properties are checked on many generated
 * examples by readers written here independently of the generators; each
 * generator also has a small pinned example checked by hand against its
 * definition (the derivation is in the comment above it). The byte-level LM
 * and the probe are also checked through the trainer (train_evaluate,
 * train_run). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "model.h"
#include "probe.h"
#include "spec.h"
#include "task.h"
#include "test.h"
#include "tmpdir.h"
#include "train.h"

extern const ml_task task_joint_recall, task_in_context_recall, task_noisy_recall,
    task_fuzzy_recall, task_selective_copy, task_lm, task_probe, task_mqar;

/* ------------------------------------------------------------------------ */
/* Helpers.                                                                   */

/* A config of task t: its defaults, then "key", "value" pairs (NULL-ended). */
static int task_cfg(const ml_task *t, ml_cfgbuf *c, const char *const *kv) {
    ml_error e;
    memset(c, 0, sizeof *c);
    if (schema_defaults(t->fields, c->bytes, &e)) {
        CHECK(0, "%s: defaults: %s", t->name, e.msg);
        return -1;
    }
    for (int i = 0; kv && kv[i]; i += 2) {
        const ml_field *f = schema_find(t->fields, kv[i]);
        if (!f || schema_set(f, c->bytes, kv[i + 1], &e)) {
            CHECK(0, "%s: cannot set %s=%s", t->name, kv[i], kv[i + 1]);
            return -1;
        }
    }
    return 0;
}

/* validate must refuse with a message starting with prefix and holding
 * detail; prefix NULL: must accept. */
static void expect_validate(const ml_task *t, const char *const *kv, const char *prefix,
                            const char *detail) {
    ml_cfgbuf c;
    if (task_cfg(t, &c, kv)) return;
    ml_error e;
    memset(&e, 0, sizeof e);
    int rc = t->validate(c.bytes, &e);
    const char *what = kv && kv[0] ? kv[0] : "defaults";
    if (!prefix) {
        CHECK(rc == 0, "%s (%s ...): refused: %s", t->name, what, e.msg);
        return;
    }
    CHECK(rc == -1, "%s (%s ...): accepted, want '%s'", t->name, what, prefix);
    CHECK(!strncmp(e.msg, prefix, strlen(prefix)), "%s: message '%s' does not start with '%s'",
          t->name, e.msg, prefix);
    CHECK(!detail || strstr(e.msg, detail), "%s: message '%s' lacks '%s'", t->name, e.msg,
          detail ? detail : "");
}

/* Same (seed, split, index) gives the same example; another seed, split or
 * index gives another one. */
static void expect_deterministic(const ml_task *t, const ml_cfgbuf *c) {
    int L = t->seq_len(c->bytes);
    int *a = malloc(sizeof(int) * 4 * (size_t)L), *b = a + L, *ta = b + L, *tb = ta + L;
    for (int i = 0; i < 2 * L; i++) a[i] = 0, b[i] = 0x5a5a5a;
    t->generate(c->bytes, NULL, 42, SPLIT_TEST, 17, a, ta);
    t->generate(c->bytes, NULL, 42, SPLIT_TEST, 17, b, tb);
    CHECK(!memcmp(a, b, sizeof(int) * L) && !memcmp(ta, tb, sizeof(int) * L),
          "%s: same (seed, split, index) gave different examples", t->name);
    static const struct {
        uint64_t seed;
        int split;
        long index;
    } other[] = {{42, SPLIT_TEST, 18}, {42, SPLIT_TRAIN, 17}, {43, SPLIT_TEST, 17}};
    for (size_t k = 0; k < sizeof other / sizeof other[0]; k++) {
        t->generate(c->bytes, NULL, other[k].seed, other[k].split, other[k].index, b, tb);
        CHECK(memcmp(a, b, sizeof(int) * L) != 0, "%s: seed %llu split %d index %ld repeats",
              t->name, (unsigned long long)other[k].seed, other[k].split, other[k].index);
    }
    free(a);
}

/* Compare a generated example with a pinned one. */
static void expect_example(const ml_task *t, const ml_cfgbuf *c, int split, const int *want_in,
                           const int *want_tg, int L) {
    CHECK(t->seq_len(c->bytes) == L, "%s: seq_len %d, pinned %d", t->name,
          t->seq_len(c->bytes), L);
    int in[64], tg[64];
    t->generate(c->bytes, NULL, 7, split, 0, in, tg);
    for (int i = 0; i < L; i++) {
        CHECK(in[i] == want_in[i], "%s split %d: input[%d] = %d, want %d", t->name, split, i,
              in[i], want_in[i]);
        CHECK(tg[i] == want_tg[i], "%s split %d: target[%d] = %d, want %d", t->name, split, i,
              tg[i], want_tg[i]);
    }
}

#define BAD(...)                              \
    do {                                      \
        if (bad++ < 3) CHECK(0, __VA_ARGS__); \
    } while (0)

/* ------------------------------------------------------------------------ */
/* The table.                                                                 */

/* Every task: unique name found by task_find, a default per key, a config
 * that fits ml_cfgbuf; every generating task yields tokens in [0, V),
 * targets in {-1} + [0, V) and a supervised test position at its default
 * config; its score opens with "accuracy". The LM reads the shipped corpus. */
static void test_tasks_table(void) {
    char corpus[512];
    snprintf(corpus, sizeof corpus, "%s/../data/tinyshakespeare.txt", test_dir());
    int n = 0;
    for (int i = 0; ml_tasks[i]; i++, n++) {
        const ml_task *t = ml_tasks[i];
        CHECK(task_find(t->name) == t, "task_find(%s)", t->name);
        for (int j = 0; j < i; j++) CHECK(strcmp(ml_tasks[j]->name, t->name), "%s twice", t->name);
        CHECK(t->cfg_size <= sizeof(ml_cfgbuf), "%s: config too large", t->name);
        CHECK(t->help && strlen(t->help) > 20, "%s: no help", t->name);
        CHECK(t->validate && t->vocab_size && t->seq_len, "%s: missing a required entry", t->name);
        CHECK(!t->generate != !t->measure, "%s: must either generate or measure", t->name);
        for (const ml_field *f = t->fields; f->key; f++)
            CHECK(f->help && f->def, "%s.%s: no help or default", t->name, f->key);
        const char *const kv[] = {"path", corpus, NULL};
        ml_cfgbuf c;
        if (task_cfg(t, &c, t == &task_lm ? kv : NULL)) continue;
        ml_error e;
        CHECK(t->validate(c.bytes, &e) == 0, "%s: defaults refused: %s", t->name, e.msg);
        if (!t->generate) continue;
        void *data;
        if (task_open(t, c.bytes, &data, &e)) {
            CHECK(0, "%s: open: %s", t->name, e.msg);
            continue;
        }
        int V = t->vocab_size(c.bytes), L = t->seq_len(c.bytes);
        int *in = malloc(sizeof(int) * 2 * (size_t)L), *tg = in + L;
        int bad = 0;
        for (int k = 0; k < 40; k++) {
            int split = k % 2, sup = 0;
            t->generate(c.bytes, data, 3, split, k, in, tg);
            for (int p = 0; p < L; p++) {
                if (in[p] < 0 || in[p] >= V) BAD("%s: input[%d] = %d", t->name, p, in[p]);
                if (tg[p] < -1 || tg[p] >= V) BAD("%s: target[%d] = %d", t->name, p, tg[p]);
                sup += tg[p] >= 0;
            }
            if (split == SPLIT_TEST && sup == 0) BAD("%s: test example %d unsupervised", t->name, k);
        }
        free(in);
        task_close(t, data);
        ml_eval_totals tot = {.positions = 4, .right = 3, .loss_sum = 4.0};
        long counts[8] = {0};
        tot.n_classes = 4, tot.class_right = counts, tot.class_count = counts + 4;
        ml_metric m[TASK_MAX_METRICS];
        int nm = task_score(t, c.bytes, &tot, m, TASK_MAX_METRICS);
        CHECK(nm >= 1 && !strcmp(m[0].name, "accuracy") && !strcmp(m[0].split, "test") &&
                  m[0].value == 0.75,
              "%s: first metric is %s/%s = %g, want test/accuracy = 0.75", t->name,
              nm ? m[0].split : "-", nm ? m[0].name : "-", nm ? m[0].value : 0.0);
    }
    static const char *const names[] = {"mqar",           "joint_recall", "in_context_recall",
                                        "noisy_recall",   "fuzzy_recall", "selective_copy",
                                        "lm",             "probe"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        CHECK(task_find(names[k]) != NULL, "task %s is not in the table", names[k]);
    CHECK(n >= 8, "%d tasks in the table", n);
    CHECK(task_find("no_such_task") == NULL, "task_find of an unknown name");
}

/* Micro and macro accuracy from hand totals: targets 0 (2x, 1 right), 1 (1x,
 * 0 right), 3 (3x, 3 right), 2 absent: micro 4/6, macro (1/2 + 0 + 1)/3. */
static void test_tasks_micro_macro(void) {
    long right[4] = {1, 0, 0, 3}, count[4] = {2, 1, 0, 3};
    ml_eval_totals t = {.positions = 6, .right = 4, .n_classes = 4, .class_right = right,
                        .class_count = count};
    CHECK(fabs(task_accuracy_micro(&t) - 4.0 / 6.0) < 1e-15, "micro %g", task_accuracy_micro(&t));
    CHECK(fabs(task_accuracy_macro(&t) - 0.5) < 1e-15, "macro %g", task_accuracy_macro(&t));
    ml_metric m[TASK_MAX_METRICS];
    int n = task_score_macro(NULL, &t, m, TASK_MAX_METRICS);
    CHECK(n == 2 && !strcmp(m[0].name, "accuracy") && !strcmp(m[1].name, "accuracy_macro") &&
              fabs(m[1].value - 0.5) < 1e-15,
          "task_score_macro gave %d metrics", n);
    n = task_score(&task_mqar, NULL, &t, m, TASK_MAX_METRICS);
    CHECK(n == 1 && fabs(m[0].value - 4.0 / 6.0) < 1e-15, "default score is not micro");
    ml_eval_totals empty = {0};
    CHECK(task_accuracy_micro(&empty) == 0 && task_accuracy_macro(&empty) == 0, "empty totals");
}

/* ------------------------------------------------------------------------ */
/* Joint recall.                                                              */

static void test_joint_recall_validate(void) {
    const ml_task *t = &task_joint_recall;
    expect_validate(t, NULL, NULL, NULL);
    expect_validate(t, (const char *const[]){"n_context", "16", "n_key", "16", NULL}, NULL, NULL);
    expect_validate(t, (const char *const[]){"n_context", "1", "n_key", "1", "n_value", "2", NULL},
                    NULL, NULL);
    /* Below the field ranges: set through the struct, as a direct caller
     * could; validate must still refuse. */
    static const struct {
        const char *key;
        int v;
        const char *prefix;
    } cases[] = {{"n_context", 0, "n_context: "}, {"n_context", 65, "n_context: "},
                 {"n_key", 0, "n_key: "},         {"n_key", 65, "n_key: "},
                 {"n_value", 1, "n_value: "}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ml_cfgbuf c;
        if (task_cfg(t, &c, NULL)) return;
        memcpy(c.bytes + schema_find(t->fields, cases[k].key)->offset, &cases[k].v, sizeof(int));
        ml_error e;
        CHECK(t->validate(c.bytes, &e) == -1 && !strncmp(e.msg, cases[k].prefix,
                                                         strlen(cases[k].prefix)),
              "joint_recall %s = %d: not refused as '%s'", cases[k].key, cases[k].v,
              cases[k].prefix);
    }
    ml_cfgbuf c;
    if (task_cfg(t, &c, (const char *const[]){"n_context", "5", "n_key", "7", "n_value", "11",
                                              NULL}))
        return;
    CHECK(t->vocab_size(c.bytes) == 3 + 11 + 7 + 5, "vocab %d", t->vocab_size(c.bytes));
    CHECK(t->seq_len(c.bytes) == 2 + 2 * 5 * 15, "seq_len %d", t->seq_len(c.bytes));
    CHECK(t->context_len(c.bytes) == 2 + 5 * 15, "context_len %d", t->context_len(c.bytes));
    expect_deterministic(t, &c);
}

/* Pinned: n_context 2, n_key 2, n_value 3, seed 7, split train, index 0.
 * Tokens: BOS 0, PAD 1, SEP 2, values 3..5, keys 6 (k0) 7 (k1), contexts
 * 8 (c0) 9 (c1); L = 2 + 2*2*5 = 22. Read by hand:
 *   0 | 9 6 4 7 3 | 8 6 5 7 5 | 2 | 9 7 3 6 4 | 8 7 5 6 5
 *   first half: M[c1][k0] = 4, M[c1][k1] = 3, M[c0][k0] = 5, M[c0][k1] = 5
 *   (values repeat); SEP at 11; second half: c1 then c0, keys reshuffled;
 *   targets at the four second-half keys (13, 15, 18, 20) are their table
 *   values 3, 4, 5, 5; nothing else is supervised. */
static void test_joint_recall_pinned(void) {
    static const int in[22] = {0, 9, 6, 4, 7, 3, 8, 6, 5, 7, 5, 2, 9, 7, 3, 6, 4, 8, 7, 5, 6, 5};
    static const int tg[22] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                               -1, -1, 3,  -1, 4,  -1, -1, 5,  -1, 5,  -1};
    ml_cfgbuf c;
    if (task_cfg(&task_joint_recall, &c,
                 (const char *const[]){"n_context", "2", "n_key", "2", "n_value", "3", NULL}))
        return;
    expect_example(&task_joint_recall, &c, SPLIT_TRAIN, in, tg, 22);
}

/* Read an example independently: returns violations. The table seen in the
 * first half must answer every second-half target; every (context, key)
 * pair appears once per half and is queried exactly once. hist[W] counts
 * table values. */
static int jr_check(const int *in, const int *tg, int C, int K, int W, long *hist) {
    int bad = 0, L = 2 + 2 * C * (1 + 2 * K), H = 2 + C * (1 + 2 * K);
    int key0 = 3 + W, ctx0 = key0 + K;
    int table[64 * 64], seen[2][64 * 64];
    memset(seen, 0, sizeof seen);
    if (in[0] != 0) BAD("position 0 is %d, not BOS", in[0]);
    if (in[H - 1] != 2) BAD("position %d is %d, not SEP", H - 1, in[H - 1]);
    int queried = 0;
    for (int half = 0; half < 2; half++) {
        int t = half ? H : 1;
        for (int b = 0; b < C; b++) {
            int ctx = in[t++] - ctx0;
            if (ctx < 0 || ctx >= C) {
                BAD("half %d block %d: %d is not a context token", half, b, in[t - 1]);
                return bad;
            }
            for (int j = 0; j < K; j++, t += 2) {
                int k = in[t] - key0, v = in[t + 1] - 3;
                if (k < 0 || k >= K || v < 0 || v >= W) {
                    BAD("half %d: (%d, %d) is not a (key, value)", half, in[t], in[t + 1]);
                    return bad;
                }
                if (seen[half][ctx * K + k]++) BAD("half %d: pair (%d, %d) twice", half, ctx, k);
                if (half == 0) {
                    table[ctx * K + k] = v;
                    hist[v]++;
                } else if (v != table[ctx * K + k]) {
                    BAD("(%d, %d): value %d in the second half, %d in the first", ctx, k, v,
                        table[ctx * K + k]);
                }
                if (tg[t + 1] != -1) BAD("value position %d supervised", t + 1);
                if (half == 0 && tg[t] != -1) BAD("first-half key at %d supervised", t);
                if (half == 1) {
                    queried += tg[t] >= 0;
                    if (tg[t] != in[t + 1]) BAD("target at key %d is %d, want %d", t, tg[t], in[t + 1]);
                }
            }
        }
    }
    for (int t = 0; t < H; t++)
        if (tg[t] != -1) BAD("first-half position %d supervised", t);
    if (tg[L - 1] != -1) BAD("last position supervised");
    if (queried != C * K) BAD("%d queries, want %d", queried, C * K);
    return bad;
}

/* Many examples of several shapes (the smallest, one context, one key,
 * the largest) satisfy the definition; the table is uniform. */
static void test_joint_recall_properties(void) {
    static const int shapes[][3] = {{8, 8, 16}, {1, 1, 2}, {16, 5, 16}, {5, 16, 4}, {64, 2, 3},
                                    {2, 64, 100}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int C = shapes[s][0], K = shapes[s][1], W = shapes[s][2];
        char cs[16], ks[16], ws[16];
        snprintf(cs, sizeof cs, "%d", C), snprintf(ks, sizeof ks, "%d", K);
        snprintf(ws, sizeof ws, "%d", W);
        ml_cfgbuf c;
        if (task_cfg(&task_joint_recall, &c,
                     (const char *const[]){"n_context", cs, "n_key", ks, "n_value", ws, NULL}))
            return;
        int L = task_joint_recall.seq_len(c.bytes);
        int *in = malloc(sizeof(int) * 2 * (size_t)L), *tg = in + L;
        long hist[128] = {0};
        int examples = 200;
        for (int i = 0; i < examples; i++) {
            task_joint_recall.generate(c.bytes, NULL, 11 + s, i % 2, i, in, tg);
            if (jr_check(in, tg, C, K, W, hist)) {
                CHECK(0, "shape (%d, %d, %d): example %d breaks the definition", C, K, W, i);
                break;
            }
        }
        /* The table is uniform over W values: each within 30% of its mean
         * (the mean count is >= 100 in every shape but (1,1,2), ~5 sd). */
        double mean = (double)examples * C * K / W;
        if (mean >= 100)
            for (int v = 0; v < W; v++)
                CHECK(fabs(hist[v] - mean) < 0.3 * mean, "shape (%d,%d,%d): value %d drawn %ld "
                      "times, mean %.0f", C, K, W, v, hist[v], mean);
        free(in);
    }
}

/* ------------------------------------------------------------------------ */
/* In-context recall and noisy recall (MAD).                                  */

static void test_mad_recall_validate(void) {
    const ml_task *t = &task_in_context_recall, *nr = &task_noisy_recall;
    expect_validate(t, NULL, NULL, NULL);
    expect_validate(nr, NULL, NULL, NULL);
    expect_validate(t, (const char *const[]){"vocab_size", "2", "seq_len", "4", NULL}, NULL, NULL);
    expect_validate(t, (const char *const[]){"seq_len", "127", NULL}, "seq_len: ", "127");
    expect_validate(nr, (const char *const[]){"vocab_size", "17", NULL}, "vocab_size: ", "16 noise");
    expect_validate(nr, (const char *const[]){"noise_vocab_size", "0", NULL}, "noise_vocab_size: ",
                    NULL);
    expect_validate(nr, (const char *const[]){"frac_noise", "0.999", NULL}, NULL, NULL);
    ml_cfgbuf c;
    if (task_cfg(nr, &c, NULL)) return;
    double one = 1.0;
    memcpy(c.bytes + schema_find(nr->fields, "frac_noise")->offset, &one, sizeof one);
    ml_error e;
    CHECK(nr->validate(c.bytes, &e) == -1 && !strncmp(e.msg, "frac_noise: ", 12),
          "frac_noise 1 accepted");
    if (task_cfg(nr, &c, NULL)) return;
    CHECK(nr->vocab_size(c.bytes) == 32 && nr->seq_len(c.bytes) == 128, "noisy defaults");
    expect_deterministic(t, &c);
    expect_deterministic(nr, &c);
}

/* Pinned, seed 7, index 0, V 8, L 12 (keys 0..3, values 4..7, P = 6 slots):
 * test split: pairs (0,6) (3,4) (1,7) (3,4) (1,7), probe (3,4). Slots 3 and
 * 4 repeat keys 3 and 1 with their values (queries at positions 6 and 8),
 * the probe key 3 was presented (query at 10); nothing else is supervised.
 * train split (train_all_tokens): (0,6) (2,6) (3,5) (2,6) (2,6), probe (3,5);
 * every position but the last supervises the next token.
 * noisy_recall, V 8 with 2 noise tokens (keys 0..2, values 3..5, noise 6,
 * 7), frac 0.5, test split: (1,3) (2,3) (2,3) (1,3) noise (6,7), probe (2,3);
 * values repeat across keys; queries at 4, 6, 10. */
static void test_mad_recall_pinned(void) {
    static const int in_te[12] = {0, 6, 3, 4, 1, 7, 3, 4, 1, 7, 3, 4};
    static const int tg_te[12] = {-1, -1, -1, -1, -1, -1, 4, -1, 7, -1, 4, -1};
    static const int in_tr[12] = {0, 6, 2, 6, 3, 5, 2, 6, 2, 6, 3, 5};
    static const int tg_tr[12] = {6, 2, 6, 3, 5, 2, 6, 2, 6, 3, 5, -1};
    static const int in_nr[12] = {1, 3, 2, 3, 2, 3, 1, 3, 6, 7, 2, 3};
    static const int tg_nr[12] = {-1, -1, -1, -1, 3, -1, 3, -1, -1, -1, 3, -1};
    ml_cfgbuf c;
    if (task_cfg(&task_in_context_recall, &c,
                 (const char *const[]){"vocab_size", "8", "seq_len", "12", NULL}))
        return;
    expect_example(&task_in_context_recall, &c, SPLIT_TEST, in_te, tg_te, 12);
    expect_example(&task_in_context_recall, &c, SPLIT_TRAIN, in_tr, tg_tr, 12);
    if (task_cfg(&task_noisy_recall, &c,
                 (const char *const[]){"vocab_size", "8", "seq_len", "12", "noise_vocab_size", "2",
                                       "frac_noise", "0.5", NULL}))
        return;
    expect_example(&task_noisy_recall, &c, SPLIT_TEST, in_nr, tg_nr, 12);
}

/* Read an example independently (test split, or train without
 * train_all_tokens): slots of a pair or two noise tokens, one value per key,
 * queries exactly at repeats and at the final probe. Returns violations and
 * adds the noise slots among the first P-1 to *noise. */
static int icr_check(const int *in, const int *tg, int V, int Nv, int L, long *noise) {
    int bad = 0, S = V - Nv, P = L / 2, value_of[1 << 12];
    for (int k = 0; k < S / 2; k++) value_of[k] = -1;
    for (int i = 0; i < P; i++) {
        int k = in[2 * i], v = in[2 * i + 1];
        if (tg[2 * i + 1] != -1) BAD("value position %d supervised", 2 * i + 1);
        if (k >= S && k < V && v >= S && v < V && i < P - 1) {
            ++*noise;
            if (tg[2 * i] != -1) BAD("noise slot %d supervised", i);
            continue;
        }
        if (k < 0 || k >= S / 2 || v < S / 2 || v >= S) {
            BAD("slot %d (%d, %d) is neither a pair nor noise", i, k, v);
            continue;
        }
        int repeat = value_of[k] >= 0;
        if (repeat && value_of[k] != v) BAD("key %d has values %d and %d", k, value_of[k], v);
        if (i == P - 1 && !repeat) BAD("probe key %d was never presented", k);
        value_of[k] = v;
        int want = repeat ? v : -1;
        if (tg[2 * i] != want) BAD("slot %d: target %d, want %d", i, tg[2 * i], want);
    }
    return bad;
}

/* Many examples of MAD's difficulty settings (vocabulary, length, noise)
 * satisfy the definition on both splits, and the noise fraction is as
 * configured. */
static void test_mad_recall_properties(void) {
    static const struct {
        int V, Nv, L;
        double frac;
    } shapes[] = {{16, 0, 128, 0}, {32, 16, 128, 0.2}, {48, 16, 256, 0.4}, {80, 16, 128, 0.8},
                  {3, 1, 4, 0.5},  {144, 16, 1024, 0.6}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        char v[16], nv[16], l[16], f[16];
        snprintf(v, sizeof v, "%d", shapes[s].V), snprintf(nv, sizeof nv, "%d", shapes[s].Nv);
        snprintf(l, sizeof l, "%d", shapes[s].L), snprintf(f, sizeof f, "%g", shapes[s].frac);
        ml_cfgbuf c;
        if (task_cfg(&task_noisy_recall, &c,
                     (const char *const[]){"vocab_size", v, "noise_vocab_size", nv, "seq_len", l,
                                           "frac_noise", f, NULL}))
            return;
        int L = shapes[s].L, P = L / 2, M = 400;
        int *in = malloc(sizeof(int) * 2 * (size_t)L), *tg = in + L;
        long noise = 0;
        for (int i = 0; i < M; i++) {
            task_noisy_recall.generate(c.bytes, NULL, 5 + s, SPLIT_TEST, i, in, tg);
            if (icr_check(in, tg, shapes[s].V, shapes[s].Nv, L, &noise)) {
                CHECK(0, "shape %zu: test example %d breaks the definition", s, i);
                break;
            }
            /* train split: all next tokens */
            task_noisy_recall.generate(c.bytes, NULL, 5 + s, SPLIT_TRAIN, i, in, tg);
            int bad = 0;
            for (int t = 0; t < L - 1; t++)
                if (tg[t] != in[t + 1]) BAD("train target %d is %d, want %d", t, tg[t], in[t + 1]);
            if (tg[L - 1] != -1) BAD("train: last position supervised");
            if (bad) break;
        }
        /* Noise fraction: of the P - 1 slots before the probe one is kept a
         * pair, the other P - 2 are noise with probability frac. Tolerance:
         * 5 binomial standard deviations + 1. */
        double n = (double)M * (P - 2), p = shapes[s].frac;
        double expect = n * p, tol = 5.0 * sqrt(n * p * (1 - p)) + 1.0;
        CHECK(fabs((double)noise - expect) <= tol,
              "shape %zu: %ld noise slots, expected %.0f +- %.0f (frac %g)", s, noise, expect, tol,
              p);
        test_note("noisy recall frac %g: noise share of slots %.4f", p, (double)noise / n);
        free(in);
    }
}

/* ------------------------------------------------------------------------ */
/* Fuzzy recall (MAD).                                                        */

static void test_fuzzy_recall_validate(void) {
    const ml_task *t = &task_fuzzy_recall;
    expect_validate(t, NULL, NULL, NULL);
    expect_validate(t, (const char *const[]){"vocab_size", "3", "seq_len", "4", "k_motif_size",
                                             "1", "v_motif_size", "1", NULL},
                    NULL, NULL);
    expect_validate(t, (const char *const[]){"seq_len", "11", NULL}, "seq_len: ", "12");
    expect_validate(t, (const char *const[]){"vocab_size", "7", NULL}, NULL, NULL);
    expect_validate(t, (const char *const[]){"vocab_size", "6", NULL}, "vocab_size: ", "2 key");
    expect_validate(t, (const char *const[]){"k_motif_size", "4", "vocab_size", "8", NULL},
                    "vocab_size: ", NULL);
    ml_cfgbuf c;
    if (task_cfg(t, &c, NULL)) return;
    expect_deterministic(t, &c);
}

/* Pinned, seed 7, index 0, V 9 (keys 0..3, values 4..7, pad 8), L 16,
 * motifs up to 2. Test split (keys always 2 tokens):
 *   8 | 0 2 7 | 1 3 7 | 0 2 7 | 3 1 4 | 3 1 4
 * pairs (02->7) (13->7) (02->7, a repeat: query at 8) (31->4), probe
 * (31->4, presented at 10: query at 14); 12 tokens fill L - (2+2) = 12, so
 * the probe ends the list; one pad on the left.
 * Train split: 8 8 | 2 6 | 1 64 | 3 4 | 1 64 | 2 6 | 3 4: key sizes 1,
 * repeats keep their values; every next token is a target. */
static void test_fuzzy_recall_pinned(void) {
    static const int in_te[16] = {8, 0, 2, 7, 1, 3, 7, 0, 2, 7, 3, 1, 4, 3, 1, 4};
    static const int tg_te[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 7, -1, -1, -1, -1, -1, 4, -1};
    static const int in_tr[16] = {8, 8, 2, 6, 1, 6, 4, 3, 4, 1, 6, 4, 2, 6, 3, 4};
    static const int tg_tr[16] = {8, 2, 6, 1, 6, 4, 3, 4, 1, 6, 4, 2, 6, 3, 4, -1};
    ml_cfgbuf c;
    if (task_cfg(&task_fuzzy_recall, &c,
                 (const char *const[]){"vocab_size", "9", "seq_len", "16", "k_motif_size", "2",
                                       "v_motif_size", "2", NULL}))
        return;
    expect_example(&task_fuzzy_recall, &c, SPLIT_TEST, in_te, tg_te, 16);
    expect_example(&task_fuzzy_recall, &c, SPLIT_TRAIN, in_tr, tg_tr, 16);
}

/* Read an example independently: key and value tokens come from disjoint
 * ranges, so after the left padding the sequence is alternating runs (key
 * motif, value motif). Checks motif sizes and distinct tokens, one value per
 * key motif, queries exactly at repeats and at the final probe (targets one
 * position before each of their value tokens). */
static int fz_check(const int *in, const int *tg, int V, int L, int Km, int Vm, int test) {
    int bad = 0, S = V - 1, half = S / 2, pad = V - 1, t = 0;
    int ks[2048], kl[2048], vs[2048], vl[2048], n = 0;
    while (t < L && in[t] == pad) {
        if (tg[t] != -1) BAD("pad %d supervised", t);
        t++;
    }
    if (t > 2 * (Km + Vm)) BAD("%d pad tokens, more than 2*(Km+Vm)", t);
    while (t < L) {
        ks[n] = t;
        while (t < L && in[t] < half) t++;
        kl[n] = t - ks[n];
        vs[n] = t;
        while (t < L && in[t] >= half && in[t] < S) t++;
        vl[n] = t - vs[n];
        if (kl[n] < 1 || kl[n] > Km || (test && kl[n] != Km) || vl[n] < 1 || vl[n] > Vm) {
            BAD("pair %d: key %d tokens, value %d tokens", n, kl[n], vl[n]);
            return bad;
        }
        n++;
    }
    for (int j = 0; j < n; j++) {
        for (int a = 0; a < kl[j]; a++)
            for (int b = 0; b < a; b++)
                if (in[ks[j] + a] == in[ks[j] + b]) BAD("pair %d: key repeats a token", j);
        for (int a = 0; a < vl[j]; a++)
            for (int b = 0; b < a; b++)
                if (in[vs[j] + a] == in[vs[j] + b]) BAD("pair %d: value repeats a token", j);
        int first = -1;
        for (int i = 0; i < j && first < 0; i++)
            if (kl[i] == kl[j] && !memcmp(in + ks[i], in + ks[j], sizeof(int) * kl[j])) first = i;
        if (first >= 0 && (vl[first] != vl[j] || memcmp(in + vs[first], in + vs[j],
                                                          sizeof(int) * vl[j])))
            BAD("pair %d: key motif of pair %d with another value", j, first);
        if (j == n - 1 && first < 0) BAD("the probe's key was never presented");
        for (int a = 0; a < kl[j]; a++)
            if (tg[ks[j] + a] != (a == kl[j] - 1 && first >= 0 ? in[vs[j]] : -1))
                BAD("pair %d: target %d at key token %d", j, tg[ks[j] + a], a);
        for (int a = 0; a < vl[j]; a++) {
            int want = first >= 0 && a + 1 < vl[j] ? in[vs[j] + a + 1] : -1;
            if (tg[vs[j] + a] != want) BAD("pair %d: target %d at value token %d", j, tg[vs[j] + a], a);
        }
    }
    return bad;
}

/* Many examples of several shapes satisfy the definition on both splits. */
static void test_fuzzy_recall_properties(void) {
    static const int shapes[][4] = {{16, 128, 3, 3}, {9, 16, 2, 2}, {32, 256, 3, 1},
                                    {128, 1024, 3, 3}, {3, 4, 1, 1}, {64, 512, 8, 8}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        char v[16], l[16], k[16], m[16];
        snprintf(v, sizeof v, "%d", shapes[s][0]), snprintf(l, sizeof l, "%d", shapes[s][1]);
        snprintf(k, sizeof k, "%d", shapes[s][2]), snprintf(m, sizeof m, "%d", shapes[s][3]);
        const char *const kv[] = {"vocab_size", v, "seq_len", l, "k_motif_size", k,
                                  "v_motif_size", m, "train_all_tokens", "false", NULL};
        ml_cfgbuf c;
        if (task_cfg(&task_fuzzy_recall, &c, kv)) return;
        ml_error e;
        CHECK(task_fuzzy_recall.validate(c.bytes, &e) == 0, "shape %zu refused: %s", s, e.msg);
        int L = shapes[s][1];
        int *in = malloc(sizeof(int) * 2 * (size_t)L), *tg = in + L;
        long queries = 0;
        for (int i = 0; i < 300; i++) {
            int split = i % 2;
            task_fuzzy_recall.generate(c.bytes, NULL, 9 + s, split, i, in, tg);
            if (fz_check(in, tg, shapes[s][0], L, shapes[s][2], shapes[s][3],
                         split == SPLIT_TEST)) {
                CHECK(0, "shape %zu: example %d (split %d) breaks the definition", s, i, split);
                break;
            }
            for (int t = 0; t < L; t++) queries += tg[t] >= 0;
        }
        test_note("fuzzy shape %zu: %.2f supervised tokens per example", s, queries / 300.0);
        free(in);
    }
}

/* ------------------------------------------------------------------------ */
/* Selective copying (MAD).                                                   */

static void test_selective_copy_validate(void) {
    const ml_task *t = &task_selective_copy;
    expect_validate(t, NULL, NULL, NULL);
    expect_validate(t, (const char *const[]){"seq_len", "34", NULL}, NULL, NULL); /* 2n+2 */
    expect_validate(t, (const char *const[]){"seq_len", "33", NULL}, "num_tokens_to_copy: ",
                    "33");
    expect_validate(t, (const char *const[]){"num_tokens_to_copy", "200", NULL},
                    "num_tokens_to_copy: ", NULL);
    ml_cfgbuf c;
    if (task_cfg(t, &c, NULL)) return;
    int two = 2;
    memcpy(c.bytes + schema_find(t->fields, "vocab_size")->offset, &two, sizeof two);
    ml_error e;
    CHECK(t->validate(c.bytes, &e) == -1 && !strncmp(e.msg, "vocab_size: ", 12),
          "vocab_size 2 accepted");
    if (task_cfg(t, &c, NULL)) return;
    expect_deterministic(t, &c);
}

/* Pinned, seed 7, index 0, V 6 (content 0..3, blank 4, copy 5), L 12, n 3:
 * region 0..7 = 0 4 4 4 4 0 2 4 (marked 0, 0, 2 at 0, 5, 6), copy at 8,
 * blanks at 9..11 with targets 0 0 2: the marked tokens in order. */
static void test_selective_copy_pinned(void) {
    static const int in[12] = {0, 4, 4, 4, 4, 0, 2, 4, 5, 4, 4, 4};
    static const int tg[12] = {-1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 2};
    ml_cfgbuf c;
    if (task_cfg(&task_selective_copy, &c,
                 (const char *const[]){"vocab_size", "6", "seq_len", "12", "num_tokens_to_copy",
                                       "3", NULL}))
        return;
    expect_example(&task_selective_copy, &c, SPLIT_TRAIN, in, tg, 12);
}

/* Targets are exactly the marked tokens in order; the layout is as defined;
 * every position of the region is marked with probability n/(L-n-1). */
static void test_selective_copy_properties(void) {
    static const int shapes[][3] = {{16, 256, 16}, {128, 1024, 96}, {3, 4, 1}, {32, 512, 64},
                                    {6, 12, 3}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int V = shapes[s][0], L = shapes[s][1], n = shapes[s][2], region = L - n - 1;
        char v[16], l[16], k[16];
        snprintf(v, sizeof v, "%d", V), snprintf(l, sizeof l, "%d", L);
        snprintf(k, sizeof k, "%d", n);
        ml_cfgbuf c;
        if (task_cfg(&task_selective_copy, &c, (const char *const[]){"vocab_size", v, "seq_len", l,
                                                                      "num_tokens_to_copy", k,
                                                                      NULL}))
            return;
        int *in = malloc(sizeof(int) * 2 * (size_t)L), *tg = in + L;
        long *marked = calloc((size_t)region, sizeof(long));
        int M = 400;
        for (int i = 0; i < M; i++) {
            task_selective_copy.generate(c.bytes, NULL, 21, i % 2, i, in, tg);
            int bad = 0, m = 0;
            for (int t = 0; t < region; t++) {
                if (tg[t] != -1) BAD("region position %d supervised", t);
                if (in[t] == V - 2) continue;
                if (in[t] < 0 || in[t] >= V - 2) BAD("position %d holds %d", t, in[t]);
                marked[t]++;
                if (m < n && tg[L - n + m] != in[t])
                    BAD("target %d is %d, marked token %d is %d", L - n + m, tg[L - n + m], m, in[t]);
                m++;
            }
            if (m != n) BAD("%d marked tokens, want %d", m, n);
            if (in[region] != V - 1 || tg[region] != -1) BAD("no copy token at %d", region);
            for (int t = L - n; t < L; t++)
                if (in[t] != V - 2) BAD("answer position %d holds %d, not blank", t, in[t]);
            if (bad) {
                CHECK(0, "shape %zu: example %d breaks the definition", s, i);
                break;
            }
        }
        double p = (double)n / region;
        for (int t = 0; t < region; t++) {
            double tol = 6.0 * sqrt(M * p * (1 - p)) + 2.0;
            CHECK(fabs(marked[t] - M * p) <= tol, "shape %zu: position %d marked %ld times, "
                  "expected %.1f +- %.1f", s, t, marked[t], M * p, tol);
        }
        free(in), free(marked);
    }
}

/* ------------------------------------------------------------------------ */
/* MQAR evaluation slices.                                                    */

static void test_mqar_slices(void) {
    const ml_task *t = &task_mqar;
    ml_cfgbuf c;
    if (task_cfg(t, &c, (const char *const[]){"eval_num_kv_pairs", "2, 4,8", "eval_seq_len",
                                              "64,128", NULL}))
        return;
    ml_error e;
    CHECK(t->validate(c.bytes, &e) == 0, "slices refused: %s", e.msg);
    CHECK(t->n_slices(c.bytes) == 6, "%d slices, want 6", t->n_slices(c.bytes));
    CHECK(task_max_seq_len(t, c.bytes) == 128, "max seq_len %d", task_max_seq_len(t, c.bytes));
    static const char *const labels[] = {"N=2,L=64",  "N=4,L=64",  "N=8,L=64",
                                         "N=2,L=128", "N=4,L=128", "N=8,L=128"};
    for (int i = 0; i < 6; i++) {
        ml_cfgbuf s;
        char label[64];
        t->slice(c.bytes, i, s.bytes, label, sizeof label);
        CHECK(!strcmp(label, labels[i]), "slice %d is %s, want %s", i, label, labels[i]);
        CHECK(t->validate(s.bytes, &e) == 0 && t->n_slices(s.bytes) == 0,
              "slice %d is not a plain valid config", i);
        CHECK(t->context_len(s.bytes) == 2 * (i % 3 == 0 ? 2 : i % 3 == 1 ? 4 : 8),
              "slice %d context_len %d", i, t->context_len(s.bytes));
    }
    if (task_cfg(t, &c, (const char *const[]){"eval_num_kv_pairs", "8", NULL})) return;
    CHECK(t->n_slices(c.bytes) == 1 && task_max_seq_len(t, c.bytes) == 64, "one list only");
    if (task_cfg(t, &c, NULL)) return;
    CHECK(t->n_slices(c.bytes) == 0 && task_max_seq_len(t, c.bytes) == 64, "no slices");
    expect_validate(t, (const char *const[]){"eval_num_kv_pairs", "4,,8", NULL},
                    "eval_num_kv_pairs: ", "comma-separated");
    expect_validate(t, (const char *const[]){"eval_num_kv_pairs", "4;8", NULL},
                    "eval_num_kv_pairs: ", NULL);
    expect_validate(t, (const char *const[]){"eval_seq_len", "-64", NULL}, "eval_seq_len: ", NULL);
    expect_validate(t, (const char *const[]){"eval_num_kv_pairs", "32", NULL},
                    "eval_num_kv_pairs: ", "N=32,L=64");
    expect_validate(t, (const char *const[]){"eval_seq_len", "66,65", NULL}, "eval_seq_len: ",
                    "even");
    expect_validate(t, (const char *const[]){"vocab_size", "100", "eval_seq_len", "128", NULL},
                    "eval_seq_len: ", "vocab_size");
    expect_validate(t, (const char *const[]){"eval_seq_len", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,"
                                                             "15,16,17", NULL},
                    "eval_seq_len: ", "at most 16");
}

/* ------------------------------------------------------------------------ */
/* Byte-level LM.                                                             */

/* A scratch directory for LM files (removed by lm_cleanup). */
static char lm_dir[128];

/* Create lm_dir; -1 (a failed check) when it cannot be made. */
static int lm_setup(void) {
    if (temp_dir_make(lm_dir, sizeof lm_dir, "memlab-test-lm")) {
        CHECK(0, "mkdtemp failed");
        return -1;
    }
    return 0;
}

/* Remove lm_dir and everything in it. */
static void lm_cleanup(void) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", lm_dir);
    CHECK(system(cmd) == 0, "cleanup of %s", lm_dir);
}

/* Write n bytes of b into lm_dir/name; its path into path. */
static void lm_file(const char *name, const unsigned char *b, size_t n, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", lm_dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "cannot write %s", path);
    if (!f) return;
    CHECK(fwrite(b, 1, n, f) == n, "short write");
    fclose(f);
}

/* Missing, directory, empty, too short and unreadable files are refused
 * with the path in the message, before any data is read. */
static void test_lm_refusals(void) {
    if (lm_setup()) return;
    unsigned char bytes[200];
    for (int i = 0; i < 200; i++) bytes[i] = (unsigned char)i;
    char empty[256], small[256], fine[256], missing[256];
    lm_file("empty.txt", bytes, 0, empty, sizeof empty);
    lm_file("small.txt", bytes, 100, small, sizeof small);
    lm_file("fine.txt", bytes, 200, fine, sizeof fine);
    snprintf(missing, sizeof missing, "%s/missing.txt", lm_dir);
    const ml_task *t = &task_lm;
    /* 200 bytes, 10%: validation 20 bytes holds one window of 16 + 1. */
    expect_validate(t, (const char *const[]){"path", fine, "seq_len", "16", NULL}, NULL, NULL);
    expect_validate(t, (const char *const[]){"path", fine, "seq_len", "19", NULL}, NULL, NULL);
    expect_validate(t, (const char *const[]){"path", fine, "seq_len", "20", NULL}, "path: ",
                    "too short");
    expect_validate(t, (const char *const[]){"path", small, "seq_len", "16", NULL}, "path: ",
                    small);
    expect_validate(t, (const char *const[]){"path", empty, NULL}, "path: ", "is empty");
    expect_validate(t, (const char *const[]){"path", missing, NULL}, "path: ", missing);
    expect_validate(t, (const char *const[]){"path", lm_dir, NULL}, "path: ", "is a directory");
    expect_validate(t, (const char *const[]){"path", "", NULL}, "path: ", "no file");
    expect_validate(t, (const char *const[]){"path", "/dev/null", NULL}, "path: ",
                    "not a regular file");
    if (geteuid() != 0) { /* root reads anything: permissions cannot refuse it */
        CHECK(chmod(fine, 0) == 0, "chmod");
        expect_validate(t, (const char *const[]){"path", fine, "seq_len", "16", NULL}, "path: ",
                        "cannot read");
    } else {
        test_note("running as root: the unreadable-file case is left to non-root runs");
    }
    lm_cleanup();
}

/* Split sizes, windows and bytes: a 1000-byte file of every byte value
 * (NUL and invalid UTF-8 included) with L 9 and 10% validation: train part
 * [0, 900), validation [900, 1000), (100 - 1)/9 = 11 validation windows at
 * 900 + 9i; training windows with their targets stay below 900. */
static void test_lm_split(void) {
    if (lm_setup()) return;
    unsigned char bytes[1000];
    for (int i = 0; i < 1000; i++) bytes[i] = (unsigned char)(i * 7 + i / 256);
    char path[256];
    lm_file("all.bin", bytes, 1000, path, sizeof path);
    const ml_task *t = &task_lm;
    ml_cfgbuf c;
    if (task_cfg(t, &c, (const char *const[]){"path", path, "seq_len", "9", NULL})) goto done;
    ml_error e;
    void *data;
    CHECK(t->validate(c.bytes, &e) == 0, "refused: %s", e.msg);
    if (task_open(t, c.bytes, &data, &e)) {
        CHECK(0, "open: %s", e.msg);
        goto done;
    }
    CHECK(t->vocab_size(c.bytes) == 256 && t->context_len == NULL, "vocabulary 256, no context");
    CHECK(t->split_size(c.bytes, data, SPLIT_TEST) == 11, "validation windows %ld",
          t->split_size(c.bytes, data, SPLIT_TEST));
    CHECK(t->split_size(c.bytes, data, SPLIT_TRAIN) == 0, "train split is unbounded");
    CHECK(task_eval_examples(t, c.bytes, data, SPLIT_TEST, 1000) == 11 &&
              task_eval_examples(t, c.bytes, data, SPLIT_TEST, 5) == 5,
          "evaluation is capped at the windows");
    int in[9], tg[9], seen[256] = {0}, bad = 0;
    for (long i = 0; i < 13; i++) {
        t->generate(c.bytes, data, 1, SPLIT_TEST, i, in, tg);
        long s = 900 + 9 * (i % 11);
        for (int p = 0; p < 9; p++)
            if (in[p] != bytes[s + p] || tg[p] != bytes[s + p + 1])
                BAD("validation window %ld, position %d", i, p);
    }
    for (long i = 0; i < 2000; i++) {
        t->generate(c.bytes, data, 1, SPLIT_TRAIN, i, in, tg);
        long s = -1;
        for (long x = 0; x + 9 < 900 && s < 0; x++) {
            int same = 1;
            for (int p = 0; p < 9 && same; p++)
                same = bytes[x + p] == in[p] && bytes[x + p + 1] == tg[p];
            if (same) s = x;
        }
        if (s < 0) BAD("training example %ld is not a window of the training part", i);
        for (int p = 0; p < 9; p++) seen[in[p]] = 1;
    }
    int values = 0;
    for (int v = 0; v < 256; v++) values += seen[v];
    CHECK(values == 256, "training windows used %d byte values, want all 256", values);
    task_close(t, data);
done:
    lm_cleanup();
}

/* A model that predicts uniformly (all weights zero: every logit is 0) has
 * loss ln 256, so bits per byte 8 and perplexity 256, through the trainer's
 * evaluation and the task's score. */
static void test_lm_uniform_is_8_bits(void) {
    char corpus[512];
    snprintf(corpus, sizeof corpus, "%s/../data/tinyshakespeare.txt", test_dir());
    run_config cfg;
    ml_error e;
    char set_path[600];
    snprintf(set_path, sizeof set_path, "task.path=%s", corpus);
    if (config_defaults(&cfg, &e) || spec_set(&cfg, "task.name=lm", &e) ||
        spec_set(&cfg, set_path, &e) || spec_set(&cfg, "task.seq_len=32", &e) ||
        spec_set(&cfg, "model.d_model=8", &e) || spec_set(&cfg, "model.n_layers=1", &e) ||
        spec_validate(&cfg, &e)) {
        CHECK(0, "config: %s", e.msg);
        return;
    }
    const ml_task *t = &task_lm;
    void *data;
    if (task_open(t, cfg.task_cfg.bytes, &data, &e)) {
        CHECK(0, "open: %s", e.msg);
        return;
    }
    ml_model m;
    if (model_build(&m, &cfg.model, 256, 32, 16, &e)) {
        CHECK(0, "model: %s", e.msg);
        task_close(t, data);
        return;
    }
    memset(m.w, 0, sizeof(real) * m.n_params);
    train_eval r;
    CHECK(train_evaluate(&m, t, cfg.task_cfg.bytes, data, 0, SPLIT_TEST, 40, 16, &r, &e) == 0,
          "evaluate: %s", e.msg);
    double bpb = -1, ppl = -1;
    for (int i = 0; i < r.n_metrics; i++) {
        if (!strcmp(r.metrics[i].name, "bits_per_byte")) bpb = r.metrics[i].value;
        if (!strcmp(r.metrics[i].name, "perplexity")) ppl = r.metrics[i].value;
    }
    CHECK(fabs(r.loss - log(256.0)) < 1e-9, "uniform loss %.12f, want ln 256", r.loss);
    CHECK(fabs(bpb - 8.0) < 1e-9, "bits per byte %.12f, want 8", bpb);
    CHECK(fabs(ppl - 256.0) < 1e-6, "perplexity %.9f, want 256", ppl);
    CHECK(r.examples == 40 && r.positions == 40 * 32, "%ld examples, %ld positions", r.examples,
          r.positions);
    model_free(&m);
    task_close(t, data);
}

/* A file of one repeated byte is learnable to near zero loss by a tiny
 * model: 1 layer, d_model 16, 60 steps. */
static void test_lm_repeated_byte_learnable(void) {
    if (lm_setup()) return;
    unsigned char bytes[4000];
    memset(bytes, 'a', sizeof bytes);
    char path[256], set_path[400];
    lm_file("aaaa.txt", bytes, sizeof bytes, path, sizeof path);
    snprintf(set_path, sizeof set_path, "task.path=%s", path);
    run_config cfg;
    ml_error e;
    const char *const sets[] = {"task.name=lm",     set_path,          "task.seq_len=16",
                                "model.d_model=16", "model.n_layers=1", "model.mlp=false",
                                "train.steps=60",   "train.batch_size=8", "train.lr=1e-2",
                                "train.warmup=5",   "eval.every=0",    "eval.examples=8", NULL};
    int ok = config_defaults(&cfg, &e) == 0;
    for (int i = 0; ok && sets[i]; i++) ok = spec_set(&cfg, sets[i], &e) == 0;
    CHECK(ok, "config: %s", e.msg);
    train_outcome out;
    train_opts o = {0};
    if (ok) {
        CHECK(train_run(&cfg, NULL, &o, &out, &e) == 0, "train: %s", e.msg);
        CHECK(!strcmp(out.status, "finished"), "status %s", out.status);
        CHECK(out.test_loss < 0.05, "test loss %.4f after 60 steps on one repeated byte",
              out.test_loss);
        CHECK(out.test_accuracy == 1.0, "accuracy %g", out.test_accuracy);
        test_note("repeated byte: test loss %.5f", out.test_loss);
    }
    lm_cleanup();
}

/* ------------------------------------------------------------------------ */
/* The capacity probe.                                                        */

static probe_params probe_default(int memory, int d, int N) {
    probe_params p = {.memory = memory, .d = d, .n_pairs = N, .keys = PROBE_KEYS_RANDOM,
                      .beta = 1.0, .rule = PROBE_RULE_SUM, .experts = 4, .segment = 16,
                      .read = PROBE_READ_GATED, .slots = 16, .temperature = 8};
    return p;
}

/* The sum rule reproduces the theory line (N - 1)/d within 5%, averaged
 * over seeds at d = 64, N in {16, 64, 256}. The seed counts give a standard
 * error of the mean of about 1% of the line (per-seed spread measured: 22%,
 * 3.3%, 1.1% of the mean), so the 5% bound is 5 or more standard errors. */
static void test_probe_sum_theory(void) {
    static const int Ns[] = {16, 64, 256}, seeds[] = {600, 60, 20};
    for (int k = 0; k < 3; k++) {
        probe_params p = probe_default(PROBE_SUM, 64, Ns[k]);
        double sum = 0.0;
        ml_error e;
        for (int s = 0; s < seeds[k]; s++) {
            probe_result r;
            if (probe_measure(&p, (uint64_t)s, &r, &e)) {
                CHECK(0, "probe: %s", e.msg);
                return;
            }
            sum += r.rel_error;
            CHECK(r.theory == (Ns[k] - 1) / 64.0 && r.state_size == 64 * 64, "theory/state");
        }
        double mean = sum / seeds[k], theory = (Ns[k] - 1) / 64.0;
        CHECK(fabs(mean - theory) <= 0.05 * theory, "N %d: mean relative error %.4f, theory %.4f",
              Ns[k], mean, theory);
        test_note("sum rule d 64 N %d: %.4f (theory %.4f, %d seeds)", Ns[k], mean, theory,
                  seeds[k]);
    }
}

/* The delta rule with beta 1 stores d orthogonal keys exactly (each write
 * leaves the earlier, orthogonal keys' reads untouched); the sum rule does
 * too, and its theory is then 0. */
static void test_probe_delta_orthogonal_exact(void) {
    ml_error e;
    for (int mem = 0; mem < 2; mem++) {
        probe_params p = probe_default(mem == 0 ? PROBE_DELTA : PROBE_SUM, 64, 64);
        p.keys = PROBE_KEYS_ORTHOGONAL;
        probe_result r;
        CHECK(probe_measure(&p, 3, &r, &e) == 0, "probe: %s", e.msg);
        CHECK(r.rel_error < 1e-20 && r.top1 == 1.0, "%s, 64 orthogonal keys in d 64: error %g, "
              "top-1 %g", mem == 0 ? "delta" : "sum", r.rel_error, r.top1);
    }
    probe_params p = probe_default(PROBE_DELTA, 64, 65);
    p.keys = PROBE_KEYS_ORTHOGONAL;
    CHECK(probe_validate(&p, &e) == -1 && !strncmp(e.msg, "n_pairs: ", 9),
          "65 orthogonal keys in d 64 accepted");
}

/* The write and read rules against an independent computation on a hand
 * example, d 2: k1 = (1, 0), k2 = (0.6, 0.8), v1 = (1, 0), v2 = (0, 1).
 *   sum:   S k1 = v1 + (k2.k1) v2 = (1, 0.6); S k2 = 0.6 v1 + v2 = (0.6, 1).
 *   delta, beta 0.5: S1 = 0.5 v1 k1^T; u2 = v2 - S1 k2 = (-0.3, 1);
 *          S2 = S1 + 0.5 u2 k2^T; S2 k1 = (0.5, 0) + 0.5*0.6*(-0.3, 1)
 *          = (0.41, 0.3); S2 k2 = (0.3, 0) + 0.5*(-0.3, 1) = (0.15, 0.5). */
static void test_probe_rules_by_hand(void) {
    const double K[4] = {1, 0, 0.6, 0.8}, V[4] = {1, 0, 0, 1};
    const double want_sum[4] = {1, 0.6, 0.6, 1}, want_delta[4] = {0.41, 0.3, 0.15, 0.5};
    double R[4];
    ml_error e;
    probe_params p = probe_default(PROBE_SUM, 2, 2);
    CHECK(probe_write_read(&p, K, V, 2, 2, 0, R, &e) == 0, "%s", e.msg);
    for (int i = 0; i < 4; i++) CHECK(fabs(R[i] - want_sum[i]) < 1e-15, "sum R[%d] = %g", i, R[i]);
    p = probe_default(PROBE_DELTA, 2, 2);
    p.beta = 0.5;
    CHECK(probe_write_read(&p, K, V, 2, 2, 0, R, &e) == 0, "%s", e.msg);
    for (int i = 0; i < 4; i++)
        CHECK(fabs(R[i] - want_delta[i]) < 1e-15, "delta R[%d] = %g", i, R[i]);
}

/* Identities between memories: MoM with one memory, caching with a summed
 * read, and caching with one segment are all the sum rule; MoM with 4
 * memories cuts the interference (expected ~4x, required > 2.5x); the delta
 * rule (beta 1) always reads its last pair exactly. */
static void test_probe_identities(void) {
    ml_error e;
    probe_result base, r;
    probe_params p = probe_default(PROBE_SUM, 32, 96);
    if (probe_measure(&p, 5, &base, &e)) {
        CHECK(0, "%s", e.msg);
        return;
    }
    p = probe_default(PROBE_MOM, 32, 96);
    p.experts = 1;
    CHECK(probe_measure(&p, 5, &r, &e) == 0 && fabs(r.rel_error - base.rel_error) < 1e-12,
          "mom E=1 %g vs sum %g", r.rel_error, base.rel_error);
    p = probe_default(PROBE_CACHING, 32, 96);
    p.read = PROBE_READ_SUM;
    CHECK(probe_measure(&p, 5, &r, &e) == 0 && fabs(r.rel_error - base.rel_error) < 1e-12,
          "caching with summed read %g vs sum %g", r.rel_error, base.rel_error);
    CHECK(r.state_size == 6L * 32 * 32, "caching state %ld, want 6 segments of d^2",
          r.state_size);
    p.read = PROBE_READ_GATED;
    p.segment = 96;
    CHECK(probe_measure(&p, 5, &r, &e) == 0 && fabs(r.rel_error - base.rel_error) < 1e-12,
          "caching with one segment %g vs sum %g", r.rel_error, base.rel_error);
    p = probe_default(PROBE_MOM, 32, 96);
    CHECK(probe_measure(&p, 5, &r, &e) == 0 && r.rel_error < base.rel_error / 2.5,
          "mom E=4 error %g, sum %g", r.rel_error, base.rel_error);
    CHECK(r.state_size == 4L * 32 * 32 && isnan(r.theory), "mom state %ld", r.state_size);

    int N = 50, d = 16;
    double *K = malloc(sizeof(double) * 3 * (size_t)N * d), *V = K + N * d, *R = V + N * d;
    test_fill(K, (size_t)N * d * 2, 77, -1.0, 1.0);
    for (int i = 0; i < N; i++) { /* unit keys, so beta 1 is an exact overwrite */
        double n2 = 0;
        for (int a = 0; a < d; a++) n2 += K[i * d + a] * K[i * d + a];
        for (int a = 0; a < d; a++) K[i * d + a] /= sqrt(n2);
    }
    p = probe_default(PROBE_DELTA, d, N);
    CHECK(probe_write_read(&p, K, V, N, d, 0, R, &e) == 0, "%s", e.msg);
    for (int a = 0; a < d; a++)
        CHECK(fabs(R[(N - 1) * d + a] - V[(N - 1) * d + a]) < 1e-12, "delta: last read [%d]", a);
    free(K);
}

/* Constraints, the slots memory's shape, and a probe run through the trainer
 * (no model: the outcome is the measurement). */
static void test_probe_task(void) {
    ml_error e;
    probe_params p = probe_default(PROBE_SUM, 64, 64);
    p.beta = 0;
    CHECK(probe_validate(&p, &e) == -1 && !strncmp(e.msg, "beta: ", 6), "beta 0 accepted");
    p = probe_default(PROBE_CACHING, 64, 1 << 20);
    p.segment = 1;
    CHECK(probe_validate(&p, &e) == -1, "a memory of 2^20 segments of 64x64 accepted");
    p = probe_default(PROBE_SLOTS, 16, 4);
    p.slots = 64;
    p.temperature = 1e3;
    probe_result r;
    CHECK(probe_measure(&p, 1, &r, &e) == 0 && r.state_size == 2 * 64 * 16, "slots state");
    test_note("slots: 64 sharp slots, 4 pairs: error %.3f, top-1 %.2f", r.rel_error, r.top1);

    run_config cfg;
    const char *const sets[] = {"task.name=probe", "task.memory=sum", "task.d=32",
                                "task.n_pairs=33", "train.seed=4", NULL};
    int ok = config_defaults(&cfg, &e) == 0;
    for (int i = 0; ok && sets[i]; i++) ok = spec_set(&cfg, sets[i], &e) == 0;
    CHECK(ok, "config: %s", e.msg);
    if (!ok) return;
    train_outcome out;
    train_opts o = {0};
    CHECK(train_run(&cfg, NULL, &o, &out, &e) == 0, "train_run: %s", e.msg);
    p = probe_default(PROBE_SUM, 32, 33);
    CHECK(probe_measure(&p, 4, &r, &e) == 0, "%s", e.msg);
    CHECK(!strcmp(out.status, "finished") && out.test_accuracy == r.top1 &&
              out.test_loss == r.rel_error && out.step == 0 && out.n_params == 0,
          "probe run: %s acc %g loss %g, measured %g %g", out.status, out.test_accuracy,
          out.test_loss, r.top1, r.rel_error);
    ml_metric m[TASK_MAX_METRICS];
    int n = task_probe.measure(cfg.task_cfg.bytes, 4, m, TASK_MAX_METRICS, &e);
    CHECK(n == 4 && !strcmp(m[0].name, "top1_accuracy") && !strcmp(m[1].name, "rel_error") &&
              !strcmp(m[2].name, "theory_rel_error") && m[2].value == 1.0 &&
              !strcmp(m[3].split, "model"),
          "probe metrics");
}

const test_case tests_tasks[] = {
    {"tasks: the table, every task's defaults and ranges", test_tasks_table},
    {"tasks: micro and macro accuracy", test_tasks_micro_macro},
    {"tasks: joint recall constraints, sizes, determinism", test_joint_recall_validate},
    {"tasks: joint recall pinned example", test_joint_recall_pinned},
    {"tasks: joint recall properties", test_joint_recall_properties},
    {"tasks: in-context/noisy recall constraints", test_mad_recall_validate},
    {"tasks: in-context/noisy recall pinned examples", test_mad_recall_pinned},
    {"tasks: in-context/noisy recall properties, noise", test_mad_recall_properties},
    {"tasks: fuzzy recall constraints", test_fuzzy_recall_validate},
    {"tasks: fuzzy recall pinned examples", test_fuzzy_recall_pinned},
    {"tasks: fuzzy recall properties", test_fuzzy_recall_properties},
    {"tasks: selective copy constraints", test_selective_copy_validate},
    {"tasks: selective copy pinned example", test_selective_copy_pinned},
    {"tasks: selective copy properties", test_selective_copy_properties},
    {"tasks: mqar evaluation slices", test_mqar_slices},
    {"tasks: lm refuses bad files", test_lm_refusals},
    {"tasks: lm split, windows, every byte", test_lm_split},
    {"tasks: lm uniform model is 8 bits per byte", test_lm_uniform_is_8_bits},
    {"tasks: lm repeated byte is learnable", test_lm_repeated_byte_learnable},
    {"tasks: probe sum rule on the theory line", test_probe_sum_theory},
    {"tasks: probe delta rule stores orthogonal keys", test_probe_delta_orthogonal_exact},
    {"tasks: probe rules by hand", test_probe_rules_by_hand},
    {"tasks: probe identities between memories", test_probe_identities},
    {"tasks: probe task and constraints", test_probe_task},
    {NULL, NULL},
};
