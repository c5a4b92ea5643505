/* test_model.c: whole-model tests in double precision.
 *
 * - gradient check of every parameter of 2-layer models of each mixer, in
 *   several block variants (conv, MLP, LayerNorm/RMSNorm, tied/untied head,
 *   learned positions), by central finite differences;
 * - the supervised-position head equals the full head (loss and gradients);
 * - the training step's blocked head equals the unfused one;
 * - causality by perturbation through the whole model, for each mixer;
 * - exact state sizes;
 * - training: the loss falls on a tiny MQAR, and the same seed gives the same
 *   numbers twice. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "model.h"
#include "spec.h"
#include "task.h"
#include "test.h"
#include "train.h"

/* Apply assignments to cfg; fails the test on a bad one. */
static int apply_sets(run_config *cfg, const char *const *sets) {
    ml_error e;
    for (int i = 0; sets[i]; i++) {
        if (spec_set(cfg, sets[i], &e)) {
            CHECK(0, "spec_set %s: %s", sets[i], e.msg);
            return -1;
        }
    }
    if (spec_validate(cfg, &e)) {
        CHECK(0, "spec_validate: %s", e.msg);
        return -1;
    }
    return 0;
}

/* A config from the built-in defaults plus assignments. */
static int make_cfg(run_config *cfg, const char *const *sets) {
    ml_error e;
    if (config_defaults(cfg, &e)) {
        CHECK(0, "config_defaults: %s", e.msg);
        return -1;
    }
    return apply_sets(cfg, sets);
}

typedef struct model_ctx {
    ml_model *m;
    const int *in, *tg;
    int B, T;
} model_ctx;

static double model_loss(void *p) {
    model_ctx *c = p;
    return model_forward(c->m, c->in, c->tg, c->B, c->T, NULL);
}

/* Random tokens and targets (about half the positions supervised). */
static void random_batch(int *in, int *tg, int n, int V, unsigned long long seed) {
    double *u = malloc(sizeof(double) * (size_t)n * 3);
    test_fill(u, (size_t)n * 3, seed, 0.0, 1.0);
    for (int i = 0; i < n; i++) {
        in[i] = (int)(u[i] * V);
        tg[i] = u[n + i] < 0.5 ? (int)(u[2 * n + i] * V) : -1;
    }
    tg[0] = 1; /* at least one supervised position */
    free(u);
}

static const char *const variants[][12] = {
    {"model.conv=3", "model.mlp=true", "model.norm=layer", "model.tie_embeddings=true", NULL},
    {"model.conv=0", "model.mlp=false", "model.norm=rms", "model.tie_embeddings=false",
     "model.position=learned", NULL},
    {"model.conv=4", "model.mlp=true", "model.norm=rms", "model.tie_embeddings=false",
     "model.position=learned", NULL},
};

static const char *const mixer_sets[][8] = {
    {"model.mixer=softmax", "model.heads=2", NULL},
    {"model.mixer=softmax", "model.heads=1", "model.window=3", "model.qkv_bias=false", NULL},
    {"model.mixer=linear", "model.heads=2", "model.feature_map=elu1", "model.normalize=true",
     "model.chunk=4", NULL},
    {"model.mixer=linear", "model.heads=1", "model.feature_map=identity",
     "model.normalize=false", "model.form=parallel", NULL},
    {"model.mixer=linear", "model.heads=2", "model.feature_map=relu", "model.form=recurrent",
     "model.qkv_bias=true", NULL},
};

/* Build a tiny model: V 16 (task vocab), d_model 8, 2 layers, big init so
 * every gradient is well away from zero. */
static int tiny_model(ml_model *m, run_config *cfg, const char *const *mix,
                      const char *const *var, int B) {
    const char *const base[] = {"task.vocab_size=16", "task.seq_len=12", "task.num_kv_pairs=2",
                                "model.d_model=8", "model.n_layers=2", "model.init_std=0.4",
                                "model.mlp_ratio=2", NULL};
    if (make_cfg(cfg, base) || apply_sets(cfg, mix) || apply_sets(cfg, var)) return -1;
    ml_error e;
    if (model_build(m, &cfg->model, 16, 12, B, &e)) {
        CHECK(0, "model_build: %s", e.msg);
        return -1;
    }
    model_init_weights(m, 3);
    /* norm weights and biases away from their trivial initial values */
    double *noise = malloc(sizeof(double) * m->n_params);
    test_fill(noise, m->n_params, 11, -0.2, 0.2);
    for (int i = 0; i < m->n_tensors; i++) {
        const ml_param *p = &m->params[i];
        if (p->init == INIT_ONES || p->init == INIT_ZEROS)
            for (size_t k = 0; k < p->n; k++) m->w[p->offset + k] += noise[p->offset + k];
    }
    free(noise);
    return 0;
}

#define N_MIX (int)(sizeof mixer_sets / sizeof mixer_sets[0])
#define N_VAR (int)(sizeof variants / sizeof variants[0])

/* Every parameter of every (mixer, block variant) model against central
 * differences. Tolerances: gradcheck.h defaults (h 1e-5, atol 1e-7, rtol 1e-5). */
static void test_model_gradcheck(void) {
    enum { B = 2, T = 7 };
    int in[B * T], tg[B * T];
    for (int mi = 0; mi < N_MIX; mi++) {
        for (int vi = 0; vi < N_VAR; vi++) {
            ml_model m;
            run_config cfg;
            if (tiny_model(&m, &cfg, mixer_sets[mi], variants[vi], B)) return;
            random_batch(in, tg, B * T, 16, (unsigned long long)(100 + mi * 10 + vi));
            model_ctx c = {&m, in, tg, B, T};
            model_forward(&m, in, tg, B, T, NULL);
            model_zero_grad(&m);
            model_backward(&m);
            gc_tensor *ts = malloc(sizeof(gc_tensor) * (size_t)m.n_tensors);
            for (int i = 0; i < m.n_tensors; i++) {
                const ml_param *p = &m.params[i];
                ts[i] = (gc_tensor){p->name, m.w + p->offset, m.g + p->offset, p->n};
            }
            /* the analytic gradient must not be overwritten by the probes */
            double *g = malloc(sizeof(double) * m.n_params);
            memcpy(g, m.g, sizeof(double) * m.n_params);
            for (int i = 0; i < m.n_tensors; i++) ts[i].g = g + m.params[i].offset;
            char label[160];
            snprintf(label, sizeof label, "%s variant %d (%s %s)", cfg.model.mixer, vi,
                     mixer_sets[mi][1], mixer_sets[mi][2] ? mixer_sets[mi][2] : "");
            gradcheck_expect(label, model_loss, &c, ts, m.n_tensors);
            free(g);
            free(ts);
            model_free(&m);
        }
    }
}

/* The supervised-rows head computes the same loss and gradients as the full
 * head: it only skips rows whose loss is masked out, and runs the last block
 * on the head rows alone (a mixer with out_rows computes only those). Every
 * mixer of the table with its defaults, and the variants of mixer_sets. */
static void test_model_head_equivalence(void) {
    enum { B = 2, T = 9 };
    int in[B * T], tg[B * T];
    int n_table = 0;
    while (ml_mixers[n_table]) n_table++;
    for (int mi = 0; mi < N_MIX + n_table; mi++) {
        ml_model m;
        run_config cfg;
        char mixer_key[64];
        const char *table_set[] = {mixer_key, NULL};
        const char *const *set = mixer_sets[mi < N_MIX ? mi : 0];
        if (mi >= N_MIX) {
            snprintf(mixer_key, sizeof mixer_key, "model.mixer=%s", ml_mixers[mi - N_MIX]->name);
            set = table_set;
        }
        if (tiny_model(&m, &cfg, set, variants[mi % 2 ? 2 : 0], B)) return;
        random_batch(in, tg, B * T, 16, 77);
        double l_sup = model_forward(&m, in, tg, B, T, NULL);
        model_zero_grad(&m);
        model_backward(&m);
        double *g = malloc(sizeof(double) * m.n_params);
        memcpy(g, m.g, sizeof(double) * m.n_params);
        m.full_head = 1;
        double l_full = model_forward(&m, in, tg, B, T, NULL);
        model_zero_grad(&m);
        model_backward(&m);
        CHECK(fabs(l_sup - l_full) <= 1e-12 * fabs(l_full), "%s: loss %.17g vs %.17g",
              cfg.model.mixer, l_sup, l_full);
        double d = max_rel_diff(g, m.g, m.n_params);
        CHECK(d < 1e-12, "%s: gradients differ by %g (relative)", cfg.model.mixer, d);
        test_note("%s: loss %.3g, gradients %.2g apart", cfg.model.mixer,
                  fabs(l_sup - l_full), d);
        free(g);
        model_free(&m);
    }
}

/* model_forward_train runs the head's loss and backward in blocks of rows
 * (lm_head.c) when more rows than a block go through it: the same loss and
 * gradients as model_forward + model_backward, with the full and the
 * supervised head (the last block then on the rows), a tied and an untied head,
 * blocks of 1 to 4 rows (1 to 4 groups of partial dW) and the rows' count not
 * a multiple of the block's; MoM adds its auxiliary loss. */
static void test_model_blocked_head(void) {
    enum { B = 2, T = 9 };
    int in[B * T], tg[B * T];
    const char *const mom[] = {"model.mixer=mom", NULL};
    const char *const *sets[] = {mixer_sets[0], mixer_sets[2], mom};
    for (int si = 0; si < 3; si++)
        for (int full = 0; full < 2; full++)
            for (int R = 1; R <= 4; R++) {
                ml_model m;
                run_config cfg;
                if (tiny_model(&m, &cfg, sets[si], variants[(si + full) % 2 ? 1 : 0], B)) return;
                m.full_head = full;
                random_batch(in, tg, B * T, 16, (unsigned long long)(300 + si * 10 + R));
                double l0 = model_forward(&m, in, tg, B, T, NULL);
                CHECK(model_logits(&m) != NULL, "model_forward keeps the logits");
                model_zero_grad(&m);
                model_backward(&m);
                double *g = malloc(sizeof(double) * m.n_params);
                memcpy(g, m.g, sizeof(double) * m.n_params);
                m.head_block_rows = R;
                double l1 = model_forward_train(&m, in, tg, B, T);
                CHECK((model_logits(&m) == NULL) == (m.S > R),
                      "%s R %d: the head runs blocked exactly when S %d > R", cfg.model.mixer, R,
                      m.S);
                model_zero_grad(&m);
                model_backward(&m);
                double d = max_rel_diff(g, m.g, m.n_params);
                CHECK(fabs(l0 - l1) <= 1e-13 * fabs(l0) && d < 1e-12,
                      "%s, full head %d, R %d: loss %.17g vs %.17g, gradients %.3g apart",
                      cfg.model.mixer, full, R, l0, l1, d);
                /* a second step leaves nothing of the first in the head's buffers */
                memcpy(g, m.g, sizeof(double) * m.n_params);
                double l1b = model_forward_train(&m, in, tg, B, T);
                model_zero_grad(&m);
                model_backward(&m);
                CHECK(l1b == l1 && !memcmp(g, m.g, sizeof(double) * m.n_params),
                      "%s R %d: a second step differs", cfg.model.mixer, R);
                /* a block that holds every row: the unfused path */
                m.head_block_rows = m.S;
                double l2 = model_forward_train(&m, in, tg, B, T);
                CHECK(model_logits(&m) != NULL && l2 == l0, "%s: one block is unfused",
                      cfg.model.mixer);
                free(g);
                model_free(&m);
            }
}

/* Changing the token at position j must leave every output before j
 * bit-identical, and change the output at j. */
static void test_model_causality(void) {
    enum { B = 1, T = 11 };
    int in[T], tg[T];
    for (int mi = 0; mi < N_MIX; mi++) {
        ml_model m;
        run_config cfg;
        if (tiny_model(&m, &cfg, mixer_sets[mi], variants[2], B)) return;
        m.full_head = 1;
        for (int t = 0; t < T; t++) {
            in[t] = (t * 5 + 3) % 16;
            tg[t] = t % 16;
        }
        const int V = 16;
        double *base = malloc(sizeof(double) * T * V);
        model_forward(&m, in, tg, B, T, NULL);
        memcpy(base, model_logits(&m), sizeof(double) * T * V);
        for (int j = 0; j < T; j += 3) {
            int keep = in[j];
            in[j] = (keep + 7) % 16;
            model_forward(&m, in, tg, B, T, NULL);
            const double *p = model_logits(&m);
            int moved_before = 0;
            for (int k = 0; k < j * V; k++) moved_before |= p[k] != base[k];
            int moved_at = 0;
            for (int k = j * V; k < (j + 1) * V; k++) moved_at |= p[k] != base[k];
            CHECK(!moved_before, "%s: output before %d moved when token %d changed",
                  cfg.model.mixer, j, j);
            CHECK(moved_at, "%s: output at %d did not move when its token changed",
                  cfg.model.mixer, j);
            in[j] = keep;
        }
        free(base);
        model_free(&m);
    }
}

static void test_model_state_size(void) {
    ml_model m;
    run_config cfg;
    ml_error e;
    const char *const s1[] = {"model.mixer=softmax", "model.d_model=64", "model.heads=4",
                              "model.n_layers=2", NULL};
    if (make_cfg(&cfg, s1)) return;
    CHECK(model_build(&m, &cfg.model, 100, 64, 1, &e) == 0, "%s", e.msg);
    CHECK(model_state_size(&m, 64) == 2L * 2 * 64 * 64, "softmax state %ld",
          model_state_size(&m, 64));
    CHECK(model_state_size(&m, 32) == 2L * 2 * 64 * 32, "softmax state grows with T");
    model_free(&m);
    const char *const s2[] = {"model.mixer=linear", "model.d_model=64", "model.heads=4",
                              "model.n_layers=2", NULL};
    if (make_cfg(&cfg, s2)) return;
    CHECK(model_build(&m, &cfg.model, 100, 64, 1, &e) == 0, "%s", e.msg);
    /* 4 heads of 16x16 state plus a 16-vector normaliser, 2 layers */
    CHECK(model_state_size(&m, 64) == 2L * 4 * (16 * 16 + 16), "linear state %ld",
          model_state_size(&m, 64));
    CHECK(model_state_size(&m, 1000) == model_state_size(&m, 64), "linear state is fixed");
    model_free(&m);
    /* a 4-tap block conv adds its 3 past inputs of width 64 per layer */
    const char *const s3[] = {"model.mixer=linear", "model.d_model=64", "model.heads=4",
                              "model.n_layers=2", "model.conv=4", NULL};
    if (make_cfg(&cfg, s3)) return;
    CHECK(model_build(&m, &cfg.model, 100, 64, 1, &e) == 0, "%s", e.msg);
    CHECK(model_state_size(&m, 64) == 2L * (4 * (16 * 16 + 16) + 3 * 64),
          "linear with block conv: state %ld", model_state_size(&m, 64));
    model_free(&m);
}

static const char *const train_sets[] = {
    "task.vocab_size=64", "task.seq_len=16", "task.num_kv_pairs=2", "model.d_model=16",
    "model.n_layers=2",   "model.conv=3",    "model.mlp=false",     "train.steps=150",
    "train.batch_size=16", "train.lr=1e-2",  "train.warmup=5",      "train.train_examples=0",
    "eval.every=50",      "eval.examples=64", "eval.batch_size=32", NULL};

static void test_model_training_learns_and_repeats(void) {
    for (int mi = 0; mi < 2; mi++) {
        run_config cfg;
        if (make_cfg(&cfg, train_sets)) return;
        const char *mix = mi == 0 ? "model.mixer=softmax" : "model.mixer=linear";
        const char *const extra[] = {mix, NULL};
        if (apply_sets(&cfg, extra)) return;
        ml_error e;
        train_outcome a, b;
        train_opts o = {0};
        /* the loss before any step: evaluate the untrained model */
        CHECK(train_run(&cfg, NULL, &o, &a, &e) == 0, "train: %s", e.msg);
        CHECK(train_run(&cfg, NULL, &o, &b, &e) == 0, "train: %s", e.msg);
        CHECK(!strcmp(a.status, "finished"), "status %s", a.status);
        /* The untrained model guesses uniformly over 64 tokens: log 64 = 4.16
         * nats. Knowing only that values come from the upper 32 tokens gives
         * log 32 = 3.47; below 3.0 the model must be reading the context. */
        CHECK(a.test_loss < 3.0, "%s: test loss %.4f did not fall below 3.0", mix, a.test_loss);
        CHECK(a.train_loss == b.train_loss && a.test_loss == b.test_loss &&
                  a.test_accuracy == b.test_accuracy,
              "%s: same seed, different numbers (%.17g vs %.17g)", mix, a.test_loss,
              b.test_loss);
        const char *const seed2[] = {"train.seed=5", NULL};
        if (apply_sets(&cfg, seed2)) return;
        CHECK(train_run(&cfg, NULL, &o, &b, &e) == 0, "train: %s", e.msg);
        CHECK(a.test_loss != b.test_loss, "%s: another seed gave identical numbers", mix);
    }
}

/* A learning rate far too large must end as 'diverged', not crash. */
static void test_model_divergence_recorded(void) {
    run_config cfg;
    const char *const sets[] = {"train.lr=1e200", "train.grad_clip=0", "train.warmup=0",
                                "train.weight_decay=0", "model.init_std=1", NULL};
    if (make_cfg(&cfg, train_sets) || apply_sets(&cfg, sets)) return;
    ml_error e;
    train_outcome a;
    train_opts o = {0};
    CHECK(train_run(&cfg, NULL, &o, &a, &e) == 0, "train: %s", e.msg);
    CHECK(!strcmp(a.status, "diverged"), "status %s after lr 1e200", a.status);
    CHECK(a.step < 150, "diverged run reports step %ld", a.step);
}

const test_case tests_model[] = {
    {"model: gradient check, every mixer and block variant", test_model_gradcheck},
    {"model: supervised head == full head", test_model_head_equivalence},
    {"model: blocked head == unfused head", test_model_blocked_head},
    {"model: causality by perturbation", test_model_causality},
    {"model: state size formulas", test_model_state_size},
    {"model: training learns, same seed same numbers", test_model_training_learns_and_repeats},
    {"model: divergence is an outcome", test_model_divergence_recorded},
    {NULL, NULL},
};
