/* test_sweep.c: sweeps (harness/sweep.c), the layered specs behind them
 * (base files, presets, overrides in harness/spec.c), the runner's
 * resumability (harness/runner.c, db.c's claims) and the export helpers.
 *
 * Expected expansions are derived independently: the order by nested loops
 * written in the test, each run's config by applying its values with
 * spec_set (another code path than the sweep's overrides) to the spec
 * without its sweep. Expected error positions are counted by hand from the
 * spec text in the test. The malformed specs of tests/bad/ (single runs) and
 * tests/bad/sweep/ (sweeps, base files, presets) state their expected first
 * error on line 1 ("# expect: LINE:COLUMN SUBSTRING", or "# expect:
 * FILE:LINE:COLUMN SUBSTRING" when it lies in another file); a line 2
 * "# expect-run: ..." overrides it for the sweep loader (a spec that `memlab
 * train` refuses for another reason than `memlab run`). */
#define _XOPEN_SOURCE 700 /* nftw, mkdtemp */

#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "db.h"
#include "export.h"
#include "runner.h"
#include "spec.h"
#include "sweep.h"
#include "task.h"
#include "test.h"
#include "tmpdir.h"
#ifdef __SSE__
#include <xmmintrin.h>
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ------------------------------------------------------------------------ */
/* Helpers.                                                                   */

/* load: sweep_load_string of a C string named "t.yaml" (NULL on failure,
 * with e filled). */
static ml_sweep *load(const char *text, const sweep_opts *o, ml_error *e) {
    ml_sweep *s = NULL;
    memset(e, 0, sizeof *e);
    if (sweep_load_string(text, strlen(text), "t.yaml", o, &s, e)) return NULL;
    return s;
}

/* expect_fail: text must be refused with its first problem at line:column
 * of file and a message holding sub; returns the whole error text in
 * out[cap] (may be NULL). */
static void expect_fail(const char *what, const char *text, const sweep_opts *o,
                        const char *file, int line, int column, const char *sub, char *out,
                        size_t cap) {
    ml_error e;
    ml_sweep *s = load(text, o, &e);
    CHECK(s == NULL, "%s: accepted", what);
    sweep_free(s);
    if (s) return;
    CHECK(!strcmp(e.file, file) && e.line == line && e.column == column,
          "%s: first problem at %s:%d:%d, want %s:%d:%d (%s)", what, e.file, e.line, e.column,
          file, line, column, e.msg);
    size_t first = strcspn(e.msg, "\n");
    const char *hit = strstr(e.msg, sub);
    CHECK(hit && (size_t)(hit - e.msg) < first, "%s: first message lacks '%s': %s", what, sub,
          e.msg);
    if (out) snprintf(out, cap, "%s", e.msg);
}

/* The field of a task or mixer struct named key (through its table). */
static int task_int(const run_config *c, const char *key) {
    const ml_task *t = task_find(c->task);
    const ml_field *f = t ? schema_find(t->fields, key) : NULL;
    CHECK(f != NULL, "task %s has no key %s", c->task, key);
    return f ? *(const int *)(const void *)(c->task_cfg.bytes + f->offset) : -1;
}

static int tmp_dir(char *dir, size_t cap) {
    if (temp_dir_make(dir, cap, "memlab-sweep")) {
        CHECK(0, "mkdtemp failed");
        return -1;
    }
    return 0;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    return remove(path);
}

static void rm_tree(const char *dir) {
    CHECK(nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove %s", dir);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot write %s", path);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* ieee_mode / restore_mode: the default floating-point mode (no flushing of
 * denormals) for tests of value checks, whatever an earlier test's training
 * left set: with denormals-are-zero the open bound "> 0" of the schema
 * (DBL_TRUE_MIN) equals 0. */
static unsigned ieee_mode(void) {
#ifdef __SSE__
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr & ~0x8040u);
    return csr;
#else
    return 0;
#endif
}
static void restore_mode(unsigned csr) {
#ifdef __SSE__
    _mm_setcsr(csr);
#else
    (void)csr;
#endif
}

/* ------------------------------------------------------------------------ */
/* Expansion.                                                                 */

static const char *grid_spec =
    "name: exp\n"
    "task: {name: mqar, vocab_size: 256, seq_len: 64, num_kv_pairs: 4}\n"
    "model: {mixer: softmax, d_model: 16}\n"
    "train: {steps: 50}\n"
    "sweep:\n"
    "  seeds: 2\n"
    "  grid:\n"
    "    model.d_model: [8, 16, 32]\n"
    "    train.lr: [1e-3, 3e-3]\n"
    "  zip:\n"
    "    task.seq_len: [32, 64]\n"
    "    task.num_kv_pairs: [2, 8]\n";

/* Axes in written order (seeds, d_model, lr, the zip group), the last
 * fastest; every run equal to the spec without its sweep plus spec_set of
 * its values. */
static void test_sweep_grid_zip_seeds(void) {
    ml_error e;
    ml_sweep *s = load(grid_spec, NULL, &e);
    CHECK(s != NULL, "refused: %s", e.msg);
    if (!s) return;
    CHECK(sweep_size(s) == 24 && sweep_expanded(s) == 24, "runs %ld/%ld", sweep_size(s),
          sweep_expanded(s));
    CHECK(!strcmp(sweep_name(s), "exp"), "name %s", sweep_name(s));
    static const char *const keys[] = {"train.seed", "model.d_model", "train.lr", "task.seq_len",
                                       "task.num_kv_pairs"};
    CHECK(sweep_n_keys(s) == 5, "keys %d", sweep_n_keys(s));
    for (int k = 0; k < 5 && k < sweep_n_keys(s); k++)
        CHECK(!strcmp(sweep_key(s, k), keys[k]), "key %d is %s, want %s", k, sweep_key(s, k),
              keys[k]);
    /* The spec without its sweep section: the sweep is its last key. */
    char base_text[1024];
    snprintf(base_text, sizeof base_text, "%.*s", (int)(strstr(grid_spec, "sweep:") - grid_spec),
             grid_spec);
    run_config base;
    CHECK(spec_load_string(base_text, strlen(base_text), "b.yaml", &base, &e) == 0, "%s", e.msg);
    static const char *const d[] = {"8", "16", "32"}, *const lr[] = {"1e-3", "3e-3"},
                             *const L[] = {"32", "64"}, *const N[] = {"2", "8"};
    long i = 0;
    for (int seed = 0; seed < 2; seed++)
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 2; b++)
                for (int z = 0; z < 2; z++, i++) {
                    run_config want = base, got;
                    char set[64], hash[65];
                    snprintf(set, sizeof set, "train.seed=%d", seed);
                    int bad = spec_set(&want, set, &e);
                    snprintf(set, sizeof set, "model.d_model=%s", d[a]);
                    bad |= spec_set(&want, set, &e);
                    snprintf(set, sizeof set, "train.lr=%s", lr[b]);
                    bad |= spec_set(&want, set, &e);
                    snprintf(set, sizeof set, "task.seq_len=%s", L[z]);
                    bad |= spec_set(&want, set, &e);
                    snprintf(set, sizeof set, "task.num_kv_pairs=%s", N[z]);
                    bad |= spec_set(&want, set, &e);
                    CHECK(!bad, "spec_set: %s", e.msg);
                    config_hash(&want, hash);
                    CHECK(!strcmp(hash, sweep_hash(s, i)), "run %ld: hash differs from spec_set's",
                          i);
                    CHECK(sweep_config(s, i, &got, &e) == 0, "config %ld: %s", i, e.msg);
                    CHECK(got.train.seed == seed && got.model.d_model == atoi(d[a]) &&
                              got.train.lr == strtod(lr[b], NULL) &&
                              task_int(&got, "seq_len") == atoi(L[z]) &&
                              task_int(&got, "num_kv_pairs") == atoi(N[z]) &&
                              got.train.steps == 50 && task_int(&got, "vocab_size") == 256,
                          "run %ld: values", i);
                    CHECK(sweep_position(s, i) == i, "position %ld", sweep_position(s, i));
                }
    char desc[256];
    sweep_describe(s, 23, desc, sizeof desc);
    CHECK(!strcmp(desc, "train.seed=1 model.d_model=32 train.lr=0.003 task.seq_len=64 "
                        "task.num_kv_pairs=8"),
          "describe: %s", desc);
    sweep_free(s);
}

/* Several zip groups (a list), a list of seeds, duplicates merged at their
 * first place, and a spec without a sweep is one run equal to `train`'s. */
static void test_sweep_groups_and_duplicates(void) {
    ml_error e;
    ml_sweep *s = load("sweep:\n"
                       "  zip:\n"
                       "    - {model.d_model: [8, 16], model.n_layers: [1, 2]}\n"
                       "    - {train.lr: [1e-3, 2e-3, 3e-3], train.warmup: [0, 5, 10]}\n"
                       "  seeds: [3, 7]\n",
                       NULL, &e);
    CHECK(s && sweep_size(s) == 12, "zip groups: %s", s ? "" : e.msg);
    if (s) {
        run_config c;
        CHECK(sweep_config(s, 11, &c, &e) == 0 && c.model.d_model == 16 && c.model.n_layers == 2 &&
                  c.train.lr == 3e-3 && c.train.warmup == 10 && c.train.seed == 7,
              "last run of the zip groups");
        CHECK(sweep_config(s, 4, &c, &e) == 0 && c.model.d_model == 8 && c.train.lr == 3e-3 &&
                  c.train.seed == 3,
              "run 4 of the zip groups");
        sweep_free(s);
    }
    /* 16 twice, and 1e-3 written as 0.001 (the default): 3 x 2 expanded,
     * 2 x 1 distinct, in first-occurrence order. */
    s = load("sweep:\n  grid:\n    model.d_model: [16, 8, 16]\n    train.lr: [1e-3, 0.001]\n",
             NULL, &e);
    CHECK(s != NULL, "%s", e.msg);
    if (s) {
        CHECK(sweep_expanded(s) == 6 && sweep_size(s) == 2, "dedupe %ld -> %ld",
              sweep_expanded(s), sweep_size(s));
        CHECK(sweep_size(s) == 2 && sweep_position(s, 0) == 0 && sweep_position(s, 1) == 2,
              "positions of the distinct runs");
        sweep_free(s);
    }
    /* No sweep: one run, the same as spec_load_string's. */
    const char *single = "task: {seq_len: 32}\ntrain: {steps: 9}\n";
    run_config c;
    char h[65];
    CHECK(spec_load_string(single, strlen(single), "t.yaml", &c, &e) == 0, "%s", e.msg);
    config_hash(&c, h);
    s = load(single, NULL, &e);
    CHECK(s && sweep_size(s) == 1 && sweep_n_keys(s) == 0 && !strcmp(sweep_hash(s, 0), h),
          "single run sweep");
    CHECK(s && !strcmp(sweep_name(s), "t"), "name from the file: %s", s ? sweep_name(s) : "");
    sweep_free(s);
    /* The expansion limit. */
    sweep_opts lim = {.max_runs = 10};
    expect_fail("limit", "sweep:\n  seeds: 4\n  grid: {train.lr: [1e-3, 2e-3, 3e-3]}\n", &lim,
                "t.yaml", 1, 1, "expands to 12 runs, more than the limit of 10", NULL, 0);
}

/* Presets: selected with opts.preset, merged over the spec (a grid added to
 * the sweep keeps the seeds); an unknown one is refused with the closest
 * name; with check_presets a broken preset is reported even when another
 * (or none) is selected, marked with its name. */
static void test_sweep_presets(void) {
    unsigned mode = ieee_mode();
    static const char *text = "name: p\n"
                              "train: {steps: 100}\n"
                              "sweep: {seeds: 3}\n"
                              "presets:\n"
                              "  quick: {train: {steps: 5}, sweep: {seeds: 1}}\n"
                              "  wide:\n"
                              "    sweep: {grid: {model.d_model: [8, 16]}}\n";
    ml_error e;
    ml_sweep *s = load(text, NULL, &e);
    run_config c;
    CHECK(s && sweep_size(s) == 3 && sweep_config(s, 2, &c, &e) == 0 && c.train.steps == 100 &&
              c.train.seed == 2,
          "no preset: %s", e.msg);
    sweep_free(s);
    sweep_opts o = {.preset = "quick", .check_presets = 1};
    s = load(text, &o, &e);
    CHECK(s && sweep_size(s) == 1 && sweep_config(s, 0, &c, &e) == 0 && c.train.steps == 5,
          "quick: %s", e.msg);
    /* The resolved spec has the preset applied and no presets left. */
    CHECK(s && strstr(sweep_resolved(s), "\"steps\": 5") && !strstr(sweep_resolved(s), "presets"),
          "resolved: %s", s ? sweep_resolved(s) : "");
    sweep_free(s);
    o.preset = "wide";
    s = load(text, &o, &e);
    CHECK(s && sweep_size(s) == 6 && sweep_n_keys(s) == 2 && !strcmp(sweep_key(s, 0), "train.seed"),
          "wide: %s", e.msg);
    sweep_free(s);
    o.preset = "quik";
    expect_fail("unknown preset", text, &o, "t.yaml", 4, 1,
                "unknown preset 'quik'; presets: quick, wide; did you mean 'quick'?", NULL, 0);
    /* A value problem of preset 'bad' is found by expanding it (with
     * check_presets); a key that no preset may hold is found always. */
    static const char *broken = "train: {steps: 10}\n"
                                "presets:\n"
                                "  fine: {train: {steps: 3}}\n"
                                "  bad: {train: {steps: 0}, modle: {}}\n";
    char all[2048];
    sweep_opts chk = {.check_presets = 1};
    expect_fail("broken preset", broken, &chk, "t.yaml", 4, 24,
                "train.steps: 0 is out of range", all, sizeof all);
    CHECK(strstr(all, "(with preset 'bad')") &&
              strstr(all, "\nt.yaml:4:28: unknown key 'modle' in preset 'bad'; did you mean "
                          "'model'?") &&
              !strstr(all, "at the top level"),
          "preset problems: %s", all);
    chk.preset = "fine";
    expect_fail("broken other preset", broken, &chk, "t.yaml", 4, 24, "train.steps: 0", NULL, 0);
    static const char *bad_value = "presets:\n  fine: {train: {steps: 3}}\n"
                                   "  bad: {train: {steps: 0}}\n";
    sweep_opts nochk = {.preset = "fine"};
    s = load(bad_value, &nochk, &e);
    CHECK(s && sweep_size(s) == 1, "a good preset refused without check_presets: %s", e.msg);
    sweep_free(s);
    chk.preset = NULL;
    expect_fail("base in a preset", "presets: {q: {base: x.yaml}}\n", &chk, "t.yaml", 1, 15,
                "'base' cannot be given inside preset 'q'", NULL, 0);
    restore_mode(mode);
}

/* --set: applies to every run, pins a swept key (the axis goes), reaches the
 * sweep section, and its problems name the argument with a column. */
static void test_sweep_overrides(void) {
    unsigned mode = ieee_mode();
    ml_error e;
    const char *const sets1[] = {"train.steps=7", "model.d_model=24"};
    sweep_opts o = {.sets = sets1, .n_sets = 2};
    ml_sweep *s = load(grid_spec, &o, &e);
    CHECK(s && sweep_size(s) == 8 && sweep_n_keys(s) == 4, "pinned d_model: %ld runs, %d keys",
          s ? sweep_size(s) : -1, s ? sweep_n_keys(s) : -1);
    for (long i = 0; s && i < sweep_size(s); i++) {
        run_config c;
        CHECK(sweep_config(s, i, &c, &e) == 0 && c.train.steps == 7 && c.model.d_model == 24,
              "run %ld: override not applied", i);
    }
    /* The pinned spec's resolved text no longer sweeps d_model. */
    if (s) {
        ml_sweep *t = NULL;
        const char *r = sweep_resolved(s);
        CHECK(sweep_load_string(r, strlen(r), "r.json", NULL, &t, &e) == 0 && sweep_size(t) == 8,
              "resolved of a pinned sweep: %s", e.msg);
        sweep_free(t);
    }
    sweep_free(s);
    const char *const sets2[] = {"sweep.seeds=4", "sweep.grid.train.warmup=[0, 10]",
                                 "sweep.zip={task.seq_len: [16], task.num_kv_pairs: [1]}"};
    o.sets = sets2;
    o.n_sets = 3;
    s = load(grid_spec, &o, &e);
    CHECK(s && sweep_size(s) == 4 * 3 * 2 * 2 * 1, "sweep overrides: %ld (%s)",
          s ? sweep_size(s) : -1, e.msg);
    sweep_free(s);
    static const struct {
        const char *set, *file;
        int column;
        const char *sub;
    } bad[] = {
        {"train.lr=abc", "--set train.lr=abc", 10, "train.lr: expected a number, got 'abc'"},
        {"trian.lr=1", "--set trian.lr=1", 1, "unknown key 'trian' at the top level; did you "
                                              "mean 'train'?"},
        {"sweep.grid.model.d_model=[8, x]", "--set sweep.grid.model.d_model=[8, x]", 30,
         "model.d_model: expected an integer, got 'x'"},
        {"model.dmodel=3", "--set model.dmodel=3", 7, "unknown key 'dmodel' in model; did you "
                                                      "mean 'd_model'?"},
        {"steps", "--set steps", 1, "expected dotted.key=value"},
        {"base=x.yaml", "--set base=x.yaml", 1, "'base' cannot be set from the command line"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *one[1] = {bad[i].set};
        sweep_opts ob = {.sets = one, .n_sets = 1};
        expect_fail(bad[i].set, grid_spec, &ob, bad[i].file, 1, bad[i].column, bad[i].sub, NULL,
                    0);
    }
    restore_mode(mode);
}

/* Every problem of a sweep at once, each at its place: a bad list element,
 * an unknown dotted key, a value that is not a list, zipped lists of
 * different lengths, a seed count out of range, an unknown sweep key. */
static void test_sweep_all_problems(void) {
    unsigned mode = ieee_mode();
    static const char *text = "sweep:\n"
                              "  grid:\n"
                              "    model.d_model: [8, wide, 16]\n"
                              "    model.dmodel: [1]\n"
                              "    train.steps: 5\n"
                              "  zip:\n"
                              "    task.seq_len: [16, 32]\n"
                              "    task.num_kv_pairs: [2]\n"
                              "  seeds: 0\n"
                              "  sweeps: 1\n";
    char all[2048];
    expect_fail("all problems", text, NULL, "t.yaml", 3, 24,
                "model.d_model: expected an integer, got 'wide'", all, sizeof all);
    static const char *const want[] = {
        "t.yaml:4:5: sweep.grid: unknown key 'model.dmodel'; did you mean 'model.d_model'?",
        "t.yaml:5:18: sweep.grid.train.steps: expected a list of values",
        "t.yaml:8:24: sweep.zip: 'task.num_kv_pairs' has 1 value but 'task.seq_len' has 2",
        "t.yaml:9:10: sweep.seeds: 0 is out of range",
        "t.yaml:10:3: unknown key 'sweeps' in sweep; did you mean 'seeds'?"};
    int lines = 1;
    for (const char *p = all; *p; p++) lines += *p == '\n';
    CHECK(lines == 6, "want 6 problems, got %d:\n%s", lines, all);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK(strstr(all, want[i]) != NULL, "missing '%s' in:\n%s", want[i], all);
    /* Cross-key problems of one run point at the element that causes them
     * and are reported once however many runs share them; another mixer's
     * key swept points at its grid key. */
    expect_fail("impossible zip", "sweep:\n  seeds: 3\n  zip:\n    task.seq_len: [64, 16]\n"
                "    task.num_kv_pairs: [4, 8]\n", NULL, "t.yaml", 5, 28,
                "task.num_kv_pairs: ", all, sizeof all);
    CHECK(!strchr(all, '\n'), "one problem expected: %s", all);
    expect_fail("mixer key", "sweep:\n  grid:\n    model.mixer: [linear, softmax]\n"
                "    model.chunk: [16]\n", NULL, "t.yaml", 4, 5,
                "mixer 'softmax' has no such key (it belongs to mixer 'linear')", NULL, 0);
    expect_fail("bare key", "sweep: {grid: {d_model: [8]}}\n", NULL, "t.yaml", 1, 16,
                "'d_model' is not a dotted key (section.key, e.g. model.d_model); did you mean "
                "'model.d_model'?", NULL, 0);
    expect_fail("swept twice", "sweep:\n  grid: {train.seed: [1]}\n  seeds: 2\n", NULL, "t.yaml",
                3, 3, "'train.seed' is already swept (line 2)", NULL, 0);
    expect_fail("empty list", "sweep: {grid: {train.lr: []}}\n", NULL, "t.yaml", 1, 26,
                "the list is empty", NULL, 0);
    restore_mode(mode);
}

/* base: a file inherits a whole spec (path relative to itself), keys it
 * writes override, its axes come after the base's, presets of the base are
 * usable; problems in the base name the base file; cycles and missing files
 * are refused; the single-run loader honours base too. */
static void test_sweep_base(void) {
    char dir[64], path[256], sub[256], want_file[300];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(sub, sizeof sub, "%s/common", dir);
    CHECK(mkdir(sub, 0700) == 0, "mkdir");
    snprintf(path, sizeof path, "%s/common/base.yaml", dir);
    write_file(path, "name: from-base\n"
                     "task: {name: mqar, vocab_size: 128, seq_len: 32, num_kv_pairs: 2}\n"
                     "model: {d_model: 16}\n"
                     "sweep: {seeds: 2}\n"
                     "presets: {quick: {train: {steps: 3}}}\n");
    snprintf(path, sizeof path, "%s/child.yaml", dir);
    write_file(path, "base: common/base.yaml\n"
                     "name: child\n"
                     "model: {n_layers: 1}\n"
                     "sweep: {grid: {model.d_model: [8, 16]}}\n");
    ml_error e;
    ml_sweep *s = NULL;
    sweep_opts o = {.preset = "quick", .check_presets = 1};
    CHECK(sweep_load_file(path, &o, &s, &e) == 0, "child refused: %s", e.msg);
    if (s) {
        run_config c;
        CHECK(sweep_size(s) == 4 && !strcmp(sweep_key(s, 0), "train.seed") &&
                  !strcmp(sweep_key(s, 1), "model.d_model"),
              "axes of base then child");
        CHECK(sweep_config(s, 1, &c, &e) == 0 && !strcmp(c.name, "child") &&
                  task_int(&c, "vocab_size") == 128 && c.model.n_layers == 1 &&
                  c.model.d_model == 16 && c.train.seed == 0 && c.train.steps == 3,
              "inherited values");
        sweep_free(s);
    }
    snprintf(path, sizeof path, "%s/bad_base.yaml", dir);
    write_file(path, "model: {d_modle: 3}\n");
    snprintf(path, sizeof path, "%s/child2.yaml", dir);
    write_file(path, "# a child\nbase: bad_base.yaml\ntrain: {steps: 4}\n");
    CHECK(sweep_load_file(path, NULL, &s, &e) == -1, "bad base accepted");
    snprintf(want_file, sizeof want_file, "%s/bad_base.yaml", dir);
    CHECK(!strcmp(e.file, want_file) && e.line == 1 && e.column == 9 &&
              strstr(e.msg, "unknown key 'd_modle' in model"),
          "problem in the base: %s:%d:%d %s", e.file, e.line, e.column, e.msg);
    run_config c;
    CHECK(spec_load_file(path, &c, &e) == -1 && !strcmp(e.file, want_file),
          "single-run loader and base: %s", e.file);
    /* A cycle of two files. */
    snprintf(path, sizeof path, "%s/a.yaml", dir);
    write_file(path, "base: b.yaml\n");
    snprintf(path, sizeof path, "%s/b.yaml", dir);
    write_file(path, "train: {steps: 2}\nbase: a.yaml\n");
    snprintf(path, sizeof path, "%s/a.yaml", dir);
    CHECK(sweep_load_file(path, NULL, &s, &e) == -1 && strstr(e.msg, "includes itself"),
          "cycle: %s", e.msg);
    snprintf(want_file, sizeof want_file, "%s/b.yaml", dir);
    CHECK(!strcmp(e.file, want_file) && e.line == 2 && e.column == 7, "cycle at %s:%d:%d",
          e.file, e.line, e.column);
    /* Missing, and refused when files may not be read. */
    snprintf(path, sizeof path, "%s/m.yaml", dir);
    write_file(path, "base: nowhere.yaml\n");
    CHECK(sweep_load_file(path, NULL, &s, &e) == -1 && strstr(e.msg, "cannot open") &&
              e.line == 1 && e.column == 7,
          "missing base: %d:%d %s", e.line, e.column, e.msg);
    sweep_opts nb = {.no_base = 1};
    expect_fail("no base", "base: x.yaml\n", &nb, "t.yaml", 1, 1, "base: not allowed here", NULL,
                0);
    /* A single run with a base. */
    snprintf(path, sizeof path, "%s/single.yaml", dir);
    write_file(path, "base: common/base.yaml\ntrain: {steps: 8}\n");
    CHECK(spec_load_file(path, &c, &e) == -1 && strstr(e.msg, "sweeps are not supported"),
          "a single-run load of a base with a sweep: %s", e.msg);
    snprintf(path, sizeof path, "%s/common/plain.yaml", dir);
    write_file(path, "task: {seq_len: 32}\nmodel: {d_model: 48}\n");
    snprintf(path, sizeof path, "%s/single2.yaml", dir);
    write_file(path, "base: common/plain.yaml\ntrain: {steps: 8}\n");
    CHECK(spec_load_file(path, &c, &e) == 0 && c.model.d_model == 48 && c.train.steps == 8 &&
              task_int(&c, "seq_len") == 32,
          "single run with a base: %s", e.msg);
    rm_tree(dir);
}

/* ------------------------------------------------------------------------ */
/* Corpus, round trip, fuzz entry.                                            */

/* read_expect: "# expect: [FILE:]LINE:COLUMN SUBSTRING" (or the same
 * without the "# expect:" prefix, as in .expect files). */
static int read_expect(const char *head, const char *tag, int bare_ok, char *file, size_t fcap,
                       int *line, int *column, char *sub, size_t cap) {
    const char *p = head;
    size_t tl = strlen(tag);
    if (!strncmp(p, tag, tl)) p += tl;
    else if (!bare_ok || head[0] == '#') return -1;
    while (*p == ' ') p++;
    const char *sp = strchr(p, ' ');
    if (!sp) return -1;
    char pos[300];
    snprintf(pos, sizeof pos, "%.*s", (int)(sp - p), p);
    char *c2 = strrchr(pos, ':');
    if (!c2) return -1;
    *c2 = '\0';
    char *c1 = strrchr(pos, ':');
    file[0] = '\0';
    if (c1) {
        *c1 = '\0';
        snprintf(file, fcap, "%s", pos);
        *line = atoi(c1 + 1);
    } else {
        *line = atoi(pos);
    }
    *column = atoi(c2 + 1);
    snprintf(sub, cap, "%s", sp + 1);
    sub[strcspn(sub, "\r\n")] = '\0';
    return 0;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* list_yaml: the *.yaml files of dir, sorted (names malloc'd). */
static int list_yaml(const char *dir, char **names, int cap) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *ent;
    while ((ent = readdir(d)) && n < cap) {
        size_t len = strlen(ent->d_name);
        if (len > 5 && !strcmp(ent->d_name + len - 5, ".yaml")) names[n++] = strdup(ent->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, name_cmp);
    return n;
}

/* Every malformed spec of tests/bad and tests/bad/sweep is refused by the
 * sweep loader with its stated first problem. */
static void test_sweep_bad_corpus(void) {
    unsigned mode = ieee_mode();
    const char *dirs[2] = {"bad", "bad/sweep"};
    int total = 0, sweep_only = 0;
    for (int k = 0; k < 2; k++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s", test_dir(), dirs[k]);
        char *names[256];
        int n = list_yaml(dir, names, 256);
        total += n;
        if (k == 1) sweep_only = n;
        for (int i = 0; i < n; i++) {
            char path[1300], side[1300], head[2][512] = {"", ""};
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            snprintf(side, sizeof side, "%s/%.*s.expect", dir, (int)strlen(names[i]) - 5,
                     names[i]);
            FILE *f = fopen(side, "r");
            int bare_ok = f != NULL;
            if (!f) f = fopen(path, "rb");
            if (f) {
                for (int l = 0; l < 2; l++)
                    if (!fgets(head[l], sizeof head[l], f)) head[l][0] = '\0';
                fclose(f);
            }
            char file[300], sub[400];
            int line = 0, column = 0;
            if (read_expect(head[1], "# expect-run:", 0, file, sizeof file, &line, &column, sub,
                            sizeof sub) &&
                read_expect(head[0], "# expect:", bare_ok, file, sizeof file, &line, &column,
                            sub, sizeof sub)) {
                CHECK(0, "%s: no expectation", names[i]);
                continue;
            }
            char want_file[1600];
            if (file[0]) snprintf(want_file, sizeof want_file, "%s/%s", dir, file);
            else snprintf(want_file, sizeof want_file, "%s", path);
            ml_sweep *s = NULL;
            ml_error e;
            memset(&e, 0, sizeof e);
            sweep_opts o = {.check_presets = 1};
            int rc = sweep_load_file(path, &o, &s, &e);
            sweep_free(s);
            size_t first = strcspn(e.msg, "\n");
            const char *hit = strstr(e.msg, sub);
            CHECK(rc == -1, "%s: accepted", names[i]);
            CHECK(!strcmp(e.file, want_file) && e.line == line && e.column == column,
                  "%s: at %s:%d:%d, want %s:%d:%d (%s)", names[i], e.file, e.line, e.column,
                  want_file, line, column, e.msg);
            CHECK(hit && (size_t)(hit - e.msg) < first, "%s: first message '%.*s' lacks '%s'",
                  names[i], (int)first, e.msg, sub);
            test_note("%s: %s:%d:%d: %s", names[i], e.file, e.line, e.column, e.msg);
        }
        for (int i = 0; i < n; i++) free(names[i]);
    }
    CHECK(total >= 25 && sweep_only >= 15, "corpus: %d specs, %d of them sweeps", total,
          sweep_only);
    restore_mode(mode);
}

/* Round trip: the resolved JSON of each example sweep expands to the same
 * runs; the fuzz entry point holds its properties on every corpus file and
 * on hostile inputs (alias bombs, deep nesting, NUL bytes). */
static void test_sweep_round_trip_and_fuzz_entry(void) {
    char dir[1024];
    const char *dirs[4] = {"../sweeps", "bad", "bad/sweep", "bad/sweep/inc"};
    int checked = 0;
    for (int k = 0; k < 4; k++) {
        snprintf(dir, sizeof dir, "%s/%s", test_dir(), dirs[k]);
        char *names[256];
        int n = list_yaml(dir, names, 256);
        for (int i = 0; i < n; i++) {
            char path[1300];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            FILE *f = fopen(path, "rb");
            char buf[65536];
            size_t len = f ? fread(buf, 1, sizeof buf, f) : 0;
            if (f) fclose(f);
            LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
            if (k == 0) {
                ml_sweep *s = NULL, *t = NULL;
                ml_error e;
                sweep_opts o = {.check_presets = 1};
                CHECK(sweep_load_file(path, &o, &s, &e) == 0, "%s refused: %s", names[i], e.msg);
                if (!s) continue;
                const char *r = sweep_resolved(s);
                CHECK(sweep_load_string(r, strlen(r), "r.json", NULL, &t, &e) == 0,
                      "%s: resolved refused: %s", names[i], e.msg);
                CHECK(t && sweep_size(t) == sweep_size(s), "%s: round trip size", names[i]);
                for (long j = 0; t && j < sweep_size(s) && j < sweep_size(t); j++)
                    CHECK(!strcmp(sweep_hash(s, j), sweep_hash(t, j)), "%s: run %ld differs",
                          names[i], j);
                sweep_free(s);
                sweep_free(t);
                checked++;
            }
            free(names[i]);
        }
    }
    CHECK(checked >= 2, "only %d example sweeps in sweeps/", checked);
    /* Hostile inputs. */
    char bomb[4096] = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
    for (char c = 'b'; c <= 'h'; c++) {
        char l[96];
        snprintf(l, sizeof l, "%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n", c,
                 c, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1);
        strcat(bomb, l);
    }
    ml_error e;
    run_config c;
    CHECK(spec_load_string(bomb, strlen(bomb), "bomb.yaml", &c, &e) == -1 &&
              strstr(e.msg, "too large"),
          "alias bomb: %s", e.msg);
    LLVMFuzzerTestOneInput((const uint8_t *)bomb, strlen(bomb));
    char deep[512];
    memset(deep, '[', 200);
    memset(deep + 200, ']', 200);
    deep[400] = '\0';
    CHECK(spec_load_string(deep, strlen(deep), "deep.yaml", &c, &e) == -1, "deep nesting");
    LLVMFuzzerTestOneInput((const uint8_t *)deep, strlen(deep));
    static const char nul[] = "name: a\0b\nsweep: {grid: {train.lr: [1e-3]}}\n";
    LLVMFuzzerTestOneInput((const uint8_t *)nul, sizeof nul - 1);
    static const char rec[] = "sweep: &s {grid: {model.d_model: *s}}\n";
    LLVMFuzzerTestOneInput((const uint8_t *)rec, sizeof rec - 1);
}

/* ------------------------------------------------------------------------ */
/* Runs.                                                                      */

static const char *tiny_sweep =
    "name: resume\n"
    "task: {name: mqar, vocab_size: 32, seq_len: 16, num_kv_pairs: 2}\n"
    "model: {mixer: softmax, d_model: 8, n_layers: 1, mlp: false}\n"
    "train: {steps: 30, batch_size: 8, warmup: 2, train_examples: 0}\n"
    "eval: {every: 10, examples: 16, batch_size: 16}\n"
    "sweep: {grid: {model.d_model: [8, 16]}, seeds: 3}\n";

static long long q_int(sqlite3 *h, const char *sql, const char *bind) {
    sqlite3_stmt *st = NULL;
    long long v = -999;
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK) {
        CHECK(0, "prepare %s: %s", sql, sqlite3_errmsg(h));
        return v;
    }
    if (bind) sqlite3_bind_text(st, 1, bind, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static double q_real(sqlite3 *h, const char *sql, const char *bind) {
    sqlite3_stmt *st = NULL;
    double v = NAN;
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK) return v;
    if (bind) sqlite3_bind_text(st, 1, bind, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void sleep_ms(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* A sweep killed with SIGKILL at several moments (one worker, or two
 * forked ones, the whole process group at once) and then run to the end
 * has every run exactly once: one done row per config hash, no row left
 * running, every finished row complete, and the same metrics as an
 * uninterrupted run of the same sweep. */
static void test_sweep_resume_after_kill(void) {
    char dir[64], db_path[128], ref_path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(db_path, sizeof db_path, "%s/r.db", dir);
    snprintf(ref_path, sizeof ref_path, "%s/ref.db", dir);
    ml_error e;
    ml_sweep *s = load(tiny_sweep, NULL, &e);
    CHECK(s != NULL, "%s", e.msg);
    if (!s) return;
    static const long delays[] = {2, 9, 20, 35, 55, 80, 30, 60};
    int killed = 0;
    for (size_t k = 0; k < sizeof delays / sizeof delays[0]; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            setpgid(0, 0);
            runner_opts ro = {.db_path = db_path, .jobs = k % 3 == 2 ? 2 : 1, .quiet = 1};
            runner_result r;
            ml_error ce;
            _exit(runner_run(s, &ro, &r, &ce) ? 1 : 0);
        }
        CHECK(pid > 0, "fork");
        if (pid <= 0) break;
        setpgid(pid, pid); /* whichever of parent and child gets there first */
        sleep_ms(delays[k]);
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        int status = 0;
        waitpid(pid, &status, 0);
        killed += WIFSIGNALED(status);
    }
    test_note("%d of the runner processes were killed before finishing", killed);
    CHECK(killed >= 3, "only %d kills landed before the sweep finished: runs too fast?", killed);
    runner_opts ro = {.db_path = db_path, .jobs = 1, .quiet = 1};
    runner_result r;
    CHECK(runner_run(s, &ro, &r, &e) == 0, "final run: %s", e.msg);
    CHECK(r.failed == 0 && r.done_before + r.finished + r.diverged == sweep_size(s),
          "final run: %ld before, %ld finished, %ld diverged, %ld failed", r.done_before,
          r.finished, r.diverged, r.failed);
    ro.db_path = ref_path;
    runner_result rr;
    CHECK(runner_run(s, &ro, &rr, &e) == 0 && rr.finished == sweep_size(s), "reference: %s",
          e.msg);
    sqlite3 *h = NULL, *ref = NULL;
    CHECK(sqlite3_open_v2(db_path, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
              sqlite3_open_v2(ref_path, &ref, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK,
          "open results");
    if (h && ref) {
        char ok[16] = "";
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            snprintf(ok, sizeof ok, "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        CHECK(!strcmp(ok, "ok"), "integrity_check: %s", ok);
        CHECK(q_int(h, "SELECT count(*) FROM runs WHERE status='running'", NULL) == 0,
              "rows left running");
        CHECK(q_int(h, "SELECT count(*) FROM runs WHERE status IN ('finished','diverged')", NULL) ==
                  sweep_size(s),
              "done rows: %lld, want %ld",
              q_int(h, "SELECT count(*) FROM runs WHERE status IN ('finished','diverged')", NULL),
              sweep_size(s));
        CHECK(q_int(h, "SELECT count(*) FROM runs r WHERE status='finished' AND NOT EXISTS "
                       "(SELECT 1 FROM metrics m WHERE m.run_id=r.id AND m.name='tokens_per_s')",
                    NULL) == 0,
              "a finished run without its closing metrics");
        test_note("%lld rows for %ld runs (interrupted attempts kept)",
                  q_int(h, "SELECT count(*) FROM runs", NULL), sweep_size(s));
        for (long i = 0; i < sweep_size(s); i++) {
            const char *hash = sweep_hash(s, i);
            CHECK(q_int(h, "SELECT count(*) FROM runs WHERE config_hash=?1 AND status IN "
                           "('finished','diverged')", hash) == 1,
                  "run %ld: not exactly one done row", i);
            static const char *acc = "SELECT m.value FROM runs r JOIN metrics m ON m.run_id=r.id "
                                     "WHERE r.config_hash=?1 AND r.status='finished' AND "
                                     "m.split='test' AND m.name='loss' ORDER BY m.step DESC LIMIT 1";
            double a = q_real(h, acc, hash), b = q_real(ref, acc, hash);
            CHECK(a == b, "run %ld: test loss %.17g after kills, %.17g uninterrupted", i, a, b);
        }
    }
    sqlite3_close(h);
    sqlite3_close(ref);
    sweep_free(s);
    rm_tree(dir);
}

/* RFC 4180 quoting of export fields. */
static void test_sweep_csv_quoting(void) {
    static const struct {
        const char *in, *out;
    } cases[] = {{"plain", "plain"},
                 {"a,b", "\"a,b\""},
                 {"say \"hi\"", "\"say \"\"hi\"\"\""},
                 {"two\nlines", "\"two\nlines\""},
                 {"cr\r", "\"cr\r\""},
                 {"", ""},
                 {"0.5", "0.5"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[64];
        export_csv_field(cases[i].in, buf, sizeof buf);
        CHECK(!strcmp(buf, cases[i].out), "csv of '%s' is '%s', want '%s'", cases[i].in, buf,
              cases[i].out);
    }
}

/* A valid config that is known to fail (the mixer's caution) loads, with a
 * warning at the key that chose it: once however many runs share it, again
 * for a run whose message differs, none when no run is affected. */
static void test_sweep_warnings(void) {
    static const char spec[] = "name: w\n"
                               "model:\n"
                               "  mixer: linear\n"
                               "  normalize: false\n"
                               "  rule: delta\n"
                               "sweep:\n"
                               "  grid:\n"
                               "    train.lr: [0.001, 0.01]\n"
                               "    model.d_model: [32, 64]\n"
                               "    model.qk_l2norm: [false, true]\n";
    ml_error e;
    char buf[4096];
    ml_sweep *s = load(spec, NULL, &e);
    CHECK(s && sweep_size(s) == 8, "sweep with a caution refused or wrong: %s", e.msg);
    int n = s ? sweep_warnings(s, buf, sizeof buf) : -1;
    /* d_model 32 and 64 give different widths: two messages, each once */
    const char *w32 = strstr(buf, "t.yaml:5:3: warning: model.rule: delta with feature_map "
                                  "elu1 and qk_l2norm false diverges");
    CHECK(n == 2 && w32 && strstr(buf, " 32 key ") && strstr(buf, " 64 key "),
          "warnings %d:\n%s", n, buf);
    int lines = 0;
    for (const char *c = buf; *c; c++) lines += *c == '\n';
    CHECK(lines == 2, "%d warning lines, want 2:\n%s", lines, buf);
    sweep_free(s);
    /* pinned to qk_l2norm true: nothing to warn about */
    const char *const sets[] = {"model.qk_l2norm=true"};
    sweep_opts o = {.sets = sets, .n_sets = 1};
    s = load(spec, &o, &e);
    n = s ? sweep_warnings(s, buf, sizeof buf) : -1;
    CHECK(n == 0 && !buf[0], "qk_l2norm pinned true: %d warnings: %s", n, buf);
    sweep_free(s);
    /* set from the command line: the warning points there */
    const char *const sets2[] = {"model.rule=gated_delta", "model.qk_l2norm=false"};
    o.sets = sets2;
    o.n_sets = 2;
    s = load(spec, &o, &e);
    n = s ? sweep_warnings(s, buf, sizeof buf) : -1;
    CHECK(n == 2 && strstr(buf, "--set model.rule=gated_delta:1:") &&
              strstr(buf, "warning: model.rule: gated_delta with"),
          "warnings of --set: %d:\n%s", n, buf);
    sweep_free(s);
}

const test_case tests_sweep[] = {
    {"sweep_grid_zip_seeds", test_sweep_grid_zip_seeds},
    {"sweep_groups_and_duplicates", test_sweep_groups_and_duplicates},
    {"sweep_presets", test_sweep_presets},
    {"sweep_overrides", test_sweep_overrides},
    {"sweep_warnings", test_sweep_warnings},
    {"sweep_all_problems", test_sweep_all_problems},
    {"sweep_base", test_sweep_base},
    {"sweep_bad_corpus", test_sweep_bad_corpus},
    {"sweep_round_trip_and_fuzz_entry", test_sweep_round_trip_and_fuzz_entry},
    {"sweep_resume_after_kill", test_sweep_resume_after_kill},
    {"sweep_csv_quoting", test_sweep_csv_quoting},
    {NULL, NULL}};
