/* test_mqar.c: the MQAR task (tasks/mqar.c) against its definition in
 * docs/tasks.md.
 *
 * The config struct is private to mqar.c, so the tests fill it through the
 * task's own field table (offset and type), which also checks that table.
 * Structural properties are checked on every generated example by an
 * independent reader of the sequence; the slot distribution is compared with
 * probabilities computed here from the formula. Spec parsing and training are
 * tested elsewhere. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "task.h"
#include "test.h"

extern const ml_task task_mqar;

/* Set the field named key of the config in buf to v (int, bool or real). */
static void mq_set(ml_cfgbuf *buf, const char *key, double v) {
    for (const ml_field *f = task_mqar.fields; f->key; f++) {
        if (strcmp(f->key, key)) continue;
        if (f->type == FT_REAL) {
            double d = v;
            memcpy(buf->bytes + f->offset, &d, sizeof d);
        } else {
            int i = (int)v;
            memcpy(buf->bytes + f->offset, &i, sizeof i);
        }
        return;
    }
    CHECK(0, "mqar has no field %s", key);
}

/* A complete config: every field set explicitly. */
static void mq_config(ml_cfgbuf *buf, int V, int L, int N, double alpha, int random_filler) {
    memset(buf, 0, sizeof *buf);
    mq_set(buf, "vocab_size", V);
    mq_set(buf, "seq_len", L);
    mq_set(buf, "num_kv_pairs", N);
    mq_set(buf, "alpha", alpha);
    mq_set(buf, "random_filler", random_filler);
}

/* The field table matches the documented keys, types, ranges and defaults. */
static void test_mqar_fields(void) {
    static const struct {
        const char *key;
        ml_field_type type;
        double min, max;
        const char *def;
    } want[] = {
        {"vocab_size", FT_INT, 4, 1e8, "8192"},   {"seq_len", FT_INT, 4, 1e6, "64"},
        {"num_kv_pairs", FT_INT, 1, 1e6, "4"},    {"alpha", FT_REAL, 1e-9, 1e6, "0.01"},
        {"random_filler", FT_BOOL, 0, 1, "false"},
        {"eval_num_kv_pairs", FT_STRING, 0, 0, ""},
        {"eval_seq_len", FT_STRING, 0, 0, ""},
    };
    const size_t n = sizeof want / sizeof want[0];
    size_t count = 0;
    for (const ml_field *f = task_mqar.fields; f->key; f++) count++;
    CHECK(count == n, "mqar has %zu fields, want %zu", count, n);
    for (size_t i = 0; i < n && i < count; i++) {
        const ml_field *f = &task_mqar.fields[i];
        CHECK(!strcmp(f->key, want[i].key), "field %zu is %s, want %s", i, f->key, want[i].key);
        CHECK(f->type == want[i].type, "%s: type %d", f->key, (int)f->type);
        if (f->type != FT_BOOL)
            CHECK(f->min == want[i].min && f->max == want[i].max, "%s: range [%g, %g]", f->key,
                  f->min, f->max);
        CHECK(f->def && !strcmp(f->def, want[i].def), "%s: default %s", f->key,
              f->def ? f->def : "(null)");
        CHECK(f->help && strlen(f->help) > 10, "%s: no help", f->key);
        size_t width = f->type == FT_REAL ? sizeof(double)
                       : f->type == FT_STRING ? (size_t)ML_STR
                                              : sizeof(int);
        CHECK(f->offset + width <= task_mqar.cfg_size,
              "%s: offset %zu outside the config", f->key, f->offset);
    }
    CHECK(task_mqar.cfg_size <= sizeof(ml_cfgbuf), "config larger than ml_cfgbuf");
    CHECK(!strcmp(task_mqar.name, "mqar"), "name %s", task_mqar.name);
    CHECK(task_find("mqar") == &task_mqar, "task_find(mqar) is not task_mqar");

    ml_cfgbuf c;
    mq_config(&c, 8192, 64, 4, 0.01, 0);
    CHECK(task_mqar.vocab_size(c.bytes) == 8192, "vocab_size %d", task_mqar.vocab_size(c.bytes));
    CHECK(task_mqar.seq_len(c.bytes) == 64, "seq_len %d", task_mqar.seq_len(c.bytes));
    CHECK(task_mqar.context_len(c.bytes) == 8, "context_len %d", task_mqar.context_len(c.bytes));
}

/* validate refuses each impossible config with a message that starts with
 * the offending key, and accepts the boundary cases. */
static void test_mqar_validate(void) {
    static const struct {
        int V, L, N;
        double alpha;
        const char *prefix; /* NULL = must be accepted */
        const char *detail; /* also in the message */
    } cases[] = {
        {8192, 64, 4, 0.01, NULL, NULL},
        {5, 4, 1, 0.01, NULL, NULL},        /* smallest: one key, S = N = 1 */
        {65, 64, 16, 1.0, NULL, NULL},      /* V = L + 1 and 4N = L */
        {8192, 64, 4, 1e6, NULL, NULL},     /* alpha at its closed end */
        {8192, 63, 4, 0.01, "seq_len: ", "got 63"},
        {64, 64, 4, 0.01, "vocab_size: ", "seq_len"},
        {40, 64, 4, 0.01, "vocab_size: ", "seq_len"},
        {8192, 64, 17, 0.01, "num_kv_pairs: ", "4*N = 68 > L = 64"},
        {8192, 12, 4, 0.01, "num_kv_pairs: ", "4*N = 16 > L = 12"},
        {8192, 64, 4, 1e-9, "alpha: ", "1e-09"},   /* the open end */
        {8192, 64, 4, 2e6, "alpha: ", ""},
        {8192, 64, 4, NAN, "alpha: ", ""},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ml_cfgbuf c;
        mq_config(&c, cases[k].V, cases[k].L, cases[k].N, cases[k].alpha, 0);
        ml_error e;
        memset(&e, 0, sizeof e);
        int rc = task_mqar.validate(c.bytes, &e);
        if (!cases[k].prefix) {
            CHECK(rc == 0, "case %zu (V %d L %d N %d) refused: %s", k, cases[k].V, cases[k].L,
                  cases[k].N, e.msg);
            continue;
        }
        CHECK(rc == -1, "case %zu (V %d L %d N %d alpha %g) accepted", k, cases[k].V,
              cases[k].L, cases[k].N, cases[k].alpha);
        CHECK(!strncmp(e.msg, cases[k].prefix, strlen(cases[k].prefix)),
              "case %zu: message '%s' does not start with '%s'", k, e.msg, cases[k].prefix);
        CHECK(strstr(e.msg, cases[k].detail) != NULL, "case %zu: message '%s' lacks '%s'", k,
              e.msg, cases[k].detail);
    }
}

/* Check one example against the definition, reading it independently of
 * the generator: returns the number of violations (each reported). slot_of,
 * if not NULL, receives g_i for each key i. */
static int check_example(const int *in, const int *tg, int V, int L, int N, int random_filler,
                         int *slot_of) {
    int bad = 0;
    const int C = 2 * N;
#define BAD(...)                               \
    do {                                       \
        if (bad++ < 3) CHECK(0, __VA_ARGS__);  \
    } while (0)
    for (int i = 0; i < N; i++) {
        int k = in[2 * i], v = in[2 * i + 1];
        if (k < 1 || k >= V / 2) BAD("key %d = %d outside [1, %d)", i, k, V / 2);
        if (v < V / 2 || v >= V) BAD("value %d = %d outside [%d, %d)", i, v, V / 2, V);
        for (int j = 0; j < i; j++) {
            if (in[2 * j] == k) BAD("key %d repeats key %d (%d)", i, j, k);
            if (in[2 * j + 1] == v) BAD("value %d repeats value %d (%d)", i, j, v);
        }
    }
    for (int t = 0; t < C; t++)
        if (tg[t] != -1) BAD("context position %d supervised (%d)", t, tg[t]);
    int supervised = 0;
    for (int t = C; t < L; t++) {
        if (tg[t] == -1) continue;
        supervised++;
        if ((t - C) % 2) BAD("supervised position %d at an odd query offset", t);
    }
    if (supervised != N) BAD("%d supervised positions, want %d", supervised, N);
    for (int i = 0; i < N; i++) {
        int k = in[2 * i], v = in[2 * i + 1], q = -1, uses = 0;
        for (int t = C; t < L; t++) {
            if (in[t] != k) continue;
            /* With random filler a key may also occur as filler, unsupervised. */
            if (random_filler && tg[t] == -1) continue;
            uses++;
            q = t;
        }
        if (uses != 1) {
            BAD("key %d (%d) queried %d times", i, k, uses);
            continue;
        }
        if ((q - C) % 2) BAD("key %d queried at odd offset %d", i, q - C);
        if (tg[q] != v) BAD("target at query of key %d is %d, want %d", i, tg[q], v);
        for (int t = q; t < L; t++)
            if (in[t] == v) BAD("value %d (%d) appears at %d, after its query at %d", i, v, t, q);
        if (slot_of) slot_of[i] = (q - C) / 2;
    }
    for (int t = C; t < L; t++) {
        if (tg[t] != -1) continue;
        if (!random_filler && in[t] != 0) BAD("filler at %d is %d, want 0", t, in[t]);
        if (in[t] < 0 || in[t] >= V) BAD("filler at %d is %d, outside [0, %d)", t, in[t], V);
    }
#undef BAD
    return bad;
}

/* The pinned example: V 16, L 12, N 2, alpha 0.01, seed 7, split 0,
 * index 0. Checked by hand against the definition:
 *   keys 6, 7 are distinct and in [1, 8); values 10, 11 distinct, in [8, 16);
 *   context (positions 0..3) = k0 v0 k1 v1 = 6 10 7 11;
 *   query region = positions 4..11, S = (12 - 4)/2 = 4 slots;
 *   g0 = 0: key 6 at region offset 0 = position 4, target[4] = 10 = v0;
 *   g1 = 2: key 7 at region offset 4 = position 8, target[8] = 11 = v1;
 *   every other target is -1 (N = 2 supervised positions), filler is 0,
 *   and neither 10 nor 11 occurs at or after position 4.
 * With random_filler the keys, values and slots are unchanged (filler is
 * drawn last from the same stream) and the six filler tokens are drawn from
 * [0, 16) minus {10, 11}. */
static void test_mqar_pinned(void) {
    static const int want_in[12] = {6, 10, 7, 11, 6, 0, 0, 0, 7, 0, 0, 0};
    static const int want_tg[12] = {-1, -1, -1, -1, 10, -1, -1, -1, 11, -1, -1, -1};
    static const int want_in_rf[12] = {6, 10, 7, 11, 6, 6, 8, 2, 7, 3, 12, 6};
    ml_cfgbuf c;
    mq_config(&c, 16, 12, 2, 0.01, 0);
    int in[12], tg[12];
    task_mqar.generate(c.bytes, NULL, 7, SPLIT_TRAIN, 0, in, tg);
    for (int t = 0; t < 12; t++) {
        CHECK(in[t] == want_in[t], "input[%d] = %d, want %d", t, in[t], want_in[t]);
        CHECK(tg[t] == want_tg[t], "target[%d] = %d, want %d", t, tg[t], want_tg[t]);
    }
    CHECK(check_example(in, tg, 16, 12, 2, 0, NULL) == 0, "pinned example breaks the definition");

    mq_config(&c, 16, 12, 2, 0.01, 1);
    task_mqar.generate(c.bytes, NULL, 7, SPLIT_TRAIN, 0, in, tg);
    for (int t = 0; t < 12; t++) {
        CHECK(in[t] == want_in_rf[t], "random filler: input[%d] = %d, want %d", t, in[t],
              want_in_rf[t]);
        CHECK(tg[t] == want_tg[t], "random filler: target[%d] = %d, want %d", t, tg[t],
              want_tg[t]);
    }
    CHECK(check_example(in, tg, 16, 12, 2, 1, NULL) == 0, "pinned random-filler example bad");
}

/* Same (seed, split, index) gives the same example whatever the buffers held
 * before; changing any one of them changes it. */
static void test_mqar_deterministic(void) {
    enum { L = 64 };
    ml_cfgbuf c;
    mq_config(&c, 8192, L, 4, 0.01, 0);
    int a_in[L], a_tg[L], b_in[L], b_tg[L];
    for (int t = 0; t < L; t++) a_in[t] = a_tg[t] = 0, b_in[t] = b_tg[t] = 0x5a5a5a;
    task_mqar.generate(c.bytes, NULL, 42, SPLIT_TEST, 17, a_in, a_tg);
    task_mqar.generate(c.bytes, NULL, 42, SPLIT_TEST, 17, b_in, b_tg);
    CHECK(!memcmp(a_in, b_in, sizeof a_in) && !memcmp(a_tg, b_tg, sizeof a_tg),
          "same (seed, split, index) gave different examples");

    static const struct {
        uint64_t seed;
        int split;
        long index;
    } other[] = {{42, SPLIT_TEST, 18}, {42, SPLIT_TRAIN, 17}, {43, SPLIT_TEST, 17}};
    for (size_t k = 0; k < sizeof other / sizeof other[0]; k++) {
        task_mqar.generate(c.bytes, NULL, other[k].seed, other[k].split, other[k].index, b_in,
                           b_tg);
        /* The 8 context tokens alone come from ~4096^8 possibilities. */
        CHECK(memcmp(a_in, b_in, sizeof a_in) != 0, "seed %llu split %d index %ld repeats",
              (unsigned long long)other[k].seed, other[k].split, other[k].index);
    }
}

/* Many examples over several shapes, including the tight corners (one key
 * available, every slot used, V = L + 1), all satisfy the definition. */
static void test_mqar_properties(void) {
    static const struct {
        int V, L, N;
        double alpha;
        int examples;
    } shapes[] = {
        {8192, 64, 4, 0.01, 300}, {16, 12, 2, 0.01, 300},  {5, 4, 1, 0.01, 50},
        {65, 64, 16, 1.0, 200},   {129, 128, 8, 0.5, 200}, {1000, 256, 32, 3.0, 50},
        {8192, 64, 4, 2e-9, 50},  {200, 64, 10, 0.01, 200},
    };
    int in[256], tg[256];
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        for (int rf = 0; rf < 2; rf++) {
            ml_cfgbuf c;
            mq_config(&c, shapes[s].V, shapes[s].L, shapes[s].N, shapes[s].alpha, rf);
            ml_error e;
            CHECK(task_mqar.validate(c.bytes, &e) == 0, "shape %zu refused: %s", s, e.msg);
            int broken = 0;
            for (int i = 0; i < shapes[s].examples && !broken; i++) {
                task_mqar.generate(c.bytes, NULL, 1000 + s, i % 2, i, in, tg);
                broken = check_example(in, tg, shapes[s].V, shapes[s].L, shapes[s].N, rf, NULL);
                CHECK(!broken, "shape %zu (V %d L %d N %d) random_filler %d: example %d bad", s,
                      shapes[s].V, shapes[s].L, shapes[s].N, rf, i);
            }
        }
    }
}

/* random_filler puts real tokens in the non-query positions of the query
 * region and changes nothing else. */
static void test_mqar_random_filler(void) {
    enum { L = 64 };
    ml_cfgbuf c0, c1;
    mq_config(&c0, 8192, L, 4, 0.01, 0);
    mq_config(&c1, 8192, L, 4, 0.01, 1);
    int in0[L], tg0[L], in1[L], tg1[L];
    int nonzero = 0, fillers = 0;
    for (long i = 0; i < 20; i++) {
        task_mqar.generate(c0.bytes, NULL, 5, SPLIT_TRAIN, i, in0, tg0);
        task_mqar.generate(c1.bytes, NULL, 5, SPLIT_TRAIN, i, in1, tg1);
        CHECK(!memcmp(tg0, tg1, sizeof tg0), "example %ld: targets differ with random filler", i);
        for (int t = 0; t < L; t++) {
            if (t < 8 || tg0[t] != -1)
                CHECK(in0[t] == in1[t], "example %ld: non-filler position %d changed", i, t);
            else {
                fillers++;
                nonzero += in1[t] != 0;
            }
        }
    }
    /* 20 * 52 fillers from ~8190 tokens: a zero has probability ~1/8190. */
    CHECK(nonzero > fillers * 9 / 10, "only %d of %d random fillers are non-zero", nonzero,
          fillers);
}

/* Slot statistics over M examples of (V 8192, L 64, N 4): S = 28 slots.
 *
 * Exact check: the first slot g_0 has P(g_0 = g) = p_g = w_g / sum(w) with
 * w_g = (g+1)^(alpha-1); the second is drawn from the rest renormalised, so
 *   P(g_1 = h) = sum_{g != h} p_g * p_h / (1 - p_g).
 * Each count must lie within 6 standard deviations (binomial) + 3 of its
 * expectation: with 2 * 28 counts per alpha the chance that a correct
 * generator fails is below 1e-7 for any seed, and the seeds are fixed.
 *
 * Shape check (all four queries): alpha = 1 uses each slot within 20% of
 * M*N/S (8 standard deviations); alpha = 0.01 puts > 45% of queries in the
 * first quarter of the slots (expected 60%, uniform 25%), < 15% in the last
 * quarter (expected 8.6%), and uses slot 0 over 5x as often as slot 27
 * (expected ~16x). Expectations from a separate Python simulation. */
static void test_mqar_slot_distribution(void) {
    enum { V = 8192, L = 64, N = 4, S = (L - 2 * N) / 2, M = 10000 };
    static const double alphas[] = {1.0, 0.01};
    for (int a = 0; a < 2; a++) {
        double alpha = alphas[a];
        ml_cfgbuf c;
        mq_config(&c, V, L, N, alpha, 0);
        long first[S] = {0}, second[S] = {0}, all[S] = {0};
        int in[L], tg[L], slot[N];
        for (long i = 0; i < M; i++) {
            task_mqar.generate(c.bytes, NULL, 99, SPLIT_TRAIN, i, in, tg);
            if (check_example(in, tg, V, L, N, 0, slot)) {
                CHECK(0, "alpha %g: example %ld bad", alpha, i);
                return;
            }
            first[slot[0]]++;
            second[slot[1]]++;
            for (int k = 0; k < N; k++) all[slot[k]]++;
        }
        double p[S], sum = 0.0;
        for (int g = 0; g < S; g++) sum += p[g] = pow(g + 1.0, alpha - 1.0);
        for (int g = 0; g < S; g++) p[g] /= sum;
        for (int h = 0; h < S; h++) {
            double q = 0.0;
            for (int g = 0; g < S; g++)
                if (g != h) q += p[g] / (1.0 - p[g]);
            q *= p[h];
            double e1 = M * p[h], e2 = M * q;
            double tol1 = 6.0 * sqrt(M * p[h] * (1.0 - p[h])) + 3.0;
            double tol2 = 6.0 * sqrt(M * q * (1.0 - q)) + 3.0;
            CHECK(fabs((double)first[h] - e1) <= tol1,
                  "alpha %g: first draw slot %d: %ld, expected %.1f +- %.1f", alpha, h, first[h],
                  e1, tol1);
            CHECK(fabs((double)second[h] - e2) <= tol2,
                  "alpha %g: second draw slot %d: %ld, expected %.1f +- %.1f", alpha, h,
                  second[h], e2, tol2);
        }
        long q1 = 0, q4 = 0;
        for (int g = 0; g < S / 4; g++) q1 += all[g], q4 += all[S - 1 - g];
        double share1 = (double)q1 / (M * N), share4 = (double)q4 / (M * N);
        test_note("alpha %g: first-quarter share %.3f, last-quarter %.3f, slot0/slot27 %.2f",
                  alpha, share1, share4, (double)all[0] / (double)(all[S - 1] ? all[S - 1] : 1));
        if (alpha == 1.0) {
            double expect = (double)M * N / S;
            for (int g = 0; g < S; g++)
                CHECK(fabs((double)all[g] - expect) <= 0.2 * expect,
                      "alpha 1: slot %d used %ld times, expected ~%.0f", g, all[g], expect);
        } else {
            CHECK(share1 > 0.45, "alpha 0.01: first quarter holds only %.3f of queries", share1);
            CHECK(share4 < 0.15, "alpha 0.01: last quarter holds %.3f of queries", share4);
            CHECK(all[0] > 5 * all[S - 1], "alpha 0.01: slot 0 used %ld times, slot %d %ld",
                  all[0], S - 1, all[S - 1]);
        }
    }
}

/* A very large alpha makes the draws deterministic (the highest free slot
 * always wins) without overflow: weights are relative to the heaviest. */
static void test_mqar_extreme_alpha(void) {
    enum { L = 64, N = 4, S = (L - 2 * N) / 2 };
    ml_cfgbuf c;
    mq_config(&c, 8192, L, N, 1e6, 0);
    int in[L], tg[L], slot[N];
    for (long i = 0; i < 20; i++) {
        task_mqar.generate(c.bytes, NULL, 3, SPLIT_TRAIN, i, in, tg);
        CHECK(check_example(in, tg, 8192, L, N, 0, slot) == 0, "example %ld bad", i);
        for (int k = 0; k < N; k++)
            CHECK(slot[k] == S - 1 - k, "example %ld: key %d in slot %d, want %d", i, k, slot[k],
                  S - 1 - k);
    }
}

const test_case tests_mqar[] = {
    {"mqar_fields", test_mqar_fields},
    {"mqar_validate", test_mqar_validate},
    {"mqar_pinned", test_mqar_pinned},
    {"mqar_deterministic", test_mqar_deterministic},
    {"mqar_properties", test_mqar_properties},
    {"mqar_random_filler", test_mqar_random_filler},
    {"mqar_slot_distribution", test_mqar_slot_distribution},
    {"mqar_extreme_alpha", test_mqar_extreme_alpha},
    {NULL, NULL},
};
