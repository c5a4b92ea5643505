/* main.c: the memlab command line. Parses verbs and flags, prints errors,
 * sets exit codes; all work is done by the library (train.c, spec.c, db.c,
 * bench.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "config.h"
#include "db.h"
#include "export.h"
#include "mixer.h"
#include "probe.h"
#include "runner.h"
#include "spec.h"
#include "sweep.h"
#include "task.h"
#include "train.h"
#include "version.h"

#define DEFAULT_DB "results/memlab.db"

static const char *const usage_main =
    "memlab: a benchmark and ablation harness for the memory of sequence models\n"
    "\n"
    "usage: memlab VERB [options]\n"
    "\n"
    "verbs:\n"
    "  train SPEC.yaml   train and evaluate one run described by a spec, record it\n"
    "  run SPEC.yaml     run every run of a sweep spec that is not done yet (resumable)\n"
    "  status            per sweep: runs done, diverged, running, failed, missing\n"
    "  export            one row per run of a sweep with its swept keys (CSV or JSON)\n"
    "  mixers            list the mixers with their config keys and defaults\n"
    "  tasks             list the tasks with their config keys and defaults\n"
    "  keys              list the model, train and eval keys with their defaults\n"
    "  bench             tokens/s of a training step for each mixer and size\n"
    "  probe             capacity and interference curves of memories (no training)\n"
    "  version           print the code version\n"
    "\n"
    "memlab VERB --help shows the options of a verb.\n";

static const char *const usage_train =
    "usage: memlab train SPEC.yaml [--db FILE] [--set section.key=value]... [--threads N]\n"
    "                    [--quiet] [--no-db]\n"
    "\n"
    "Trains the model of the spec on its task, evaluates on the test stream every\n"
    "eval.every steps and at the end, and records the run and its metrics.\n"
    "\n"
    "  --db FILE       SQLite results database (default " DEFAULT_DB ")\n"
    "  --set K=V       override one key, e.g. --set train.lr=3e-4 (repeatable)\n"
    "  --threads N     BLAS threads (default 1: runs are then bitwise reproducible\n"
    "                  and parallel sweeps do not oversubscribe the cores)\n"
    "  --quiet         no progress line and no summary\n"
    "  --no-db         record nothing (dry training)\n"
    "\n"
    "Exit status: 0 finished, 1 error (nothing or 'failed' recorded), 2 usage,\n"
    "3 diverged, 130 interrupted.\n";

static const char *const usage_run =
    "usage: memlab run SPEC.yaml [--set key=value]... [--preset NAME] [--db FILE]\n"
    "                  [--jobs N] [--dry-run] [--quiet]\n"
    "\n"
    "Expands the spec's sweep section (grid, zip, seeds) into runs, checks every\n"
    "one before anything runs, records the sweep, and trains each run that is not\n"
    "done yet (finished or diverged), in expansion order. Safe to interrupt and to\n"
    "rerun: finished runs are skipped, unfinished ones start again.\n"
    "\n"
    "  --set K=V       override a key of every run, e.g. --set train.steps=100; a\n"
    "                  swept key given this way is pinned (leaves the sweep);\n"
    "                  sweep.seeds=3 and sweep.grid.model.d_model=[32,64] work too\n"
    "  --preset NAME   apply presets.NAME of the spec\n"
    "  --db FILE       SQLite results database (default " DEFAULT_DB ")\n"
    "  --jobs N        worker processes, each with one BLAS thread (default 1)\n"
    "  --dry-run       print the expanded runs and which are done; run nothing\n"
    "  --quiet         print nothing but errors\n"
    "\n"
    "Exit status: 0 every run done (or left running in another process), 1 error\n"
    "or a failed run, 2 usage, 130 interrupted.\n";

static const char *const usage_status =
    "usage: memlab status [--db FILE]\n"
    "\n"
    "For each sweep in the database (its latest spec), the number of runs that are\n"
    "done, diverged, running, failed, interrupted and missing.\n";

static const char *const usage_export =
    "usage: memlab export --sweep NAME [--format csv|json] [--metric SPLIT/NAME]...\n"
    "                     [--db FILE] [--output FILE]\n"
    "\n"
    "One row per done run of the sweep (its latest finished or diverged row), with\n"
    "the run id, config hash, status, the swept keys as columns and the final value\n"
    "of each metric (default test/accuracy, test/loss, model/state_size,\n"
    "model/params, train/tokens_per_s). --metric is repeatable or comma-separated.\n";

static const char *const usage_bench = bench_usage; /* bench.c */

static const char *const usage_probe =
    "usage: memlab probe [--memory sum|delta|mom|caching|slots|all] [--d 64] [--n-min 8]\n"
    "                    [--n-max 512] [--seeds 5] [--seed 0] [--set task.key=value]...\n"
    "                    [--db FILE] [--no-db]\n"
    "\n"
    "Writes N random unit key-value pairs of width d into a memory, reads them back\n"
    "with their keys, and reports the relative squared error of the reads and top-1\n"
    "retrieval accuracy, for N = n-min, 2 n-min, ... <= n-max, averaged over seeds.\n"
    "The sum rule's theory line is (N - 1)/d. No model is trained. Each (memory, d,\n"
    "N, seed) is recorded as one run of the task `probe` (see memlab tasks for its\n"
    "keys: beta, experts, segment, read, slots, temperature, keys, rule).\n"
    "\n"
    "  --memory M      one memory, or all (default all)\n"
    "  --d N           key and value width (default 64)\n"
    "  --n-min N       smallest number of pairs (default 8)\n"
    "  --n-max N       largest number of pairs (default 512)\n"
    "  --seeds N       seeds per point (default 5), from --seed (default 0)\n"
    "  --set K=V       another probe key, e.g. --set task.beta=0.5 (repeatable)\n"
    "  --db FILE       SQLite results database (default " DEFAULT_DB ")\n"
    "  --no-db         record nothing\n";

static volatile sig_atomic_t stop_flag;
static void on_sigint(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void print_error(const ml_error *e) {
    char buf[2048];
    ml_error_format(e, buf, sizeof buf);
    fprintf(stderr, "memlab: %s\n", buf);
}

/* One line per key: name, default, help, and the choices of an enum. */
static void print_fields(const ml_field *f) {
    for (; f->key; f++) {
        printf("    %-16s %-10s %s", f->key, f->def, f->help);
        if (f->type == FT_ENUM && f->choices) {
            printf(" [");
            for (int i = 0; f->choices[i]; i++) printf("%s%s", i ? "|" : "", f->choices[i]);
            printf("]");
        }
        printf("\n");
    }
}

static int cmd_list_mixers(void) {
    printf("mixers (model.mixer) and their keys (key, default, meaning):\n");
    for (int i = 0; ml_mixers[i]; i++) {
        printf("\n  %s: %s\n", ml_mixers[i]->name, ml_mixers[i]->help);
        print_fields(ml_mixers[i]->fields);
    }
    return 0;
}

static int cmd_list_tasks(void) {
    printf("tasks (task.name) and their keys (key, default, meaning):\n");
    for (int i = 0; ml_tasks[i]; i++) {
        printf("\n  %s: %s\n", ml_tasks[i]->name, ml_tasks[i]->help);
        print_fields(ml_tasks[i]->fields);
    }
    return 0;
}

static int cmd_list_keys(void) {
    printf("model:\n");
    print_fields(model_fields);
    printf("train:\n");
    print_fields(train_fields);
    printf("eval:\n");
    print_fields(eval_fields);
    return 0;
}

static int parse_int_arg(const char *flag, const char *s, int lo, int hi, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) {
        fprintf(stderr, "memlab: %s takes a whole number from %d to %d, got '%s'\n", flag, lo,
                hi, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int cmd_train(int argc, char **argv) {
    const char *spec = NULL, *db_path = DEFAULT_DB;
    const char *sets[64];
    int n_sets = 0, threads = 1, quiet = 0, no_db = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_train, stdout);
            return 0;
        } else if (!strcmp(a, "--db") && i + 1 < argc) {
            db_path = argv[++i];
        } else if (!strcmp(a, "--set") && i + 1 < argc) {
            if (n_sets == 64) {
                fprintf(stderr, "memlab: at most 64 --set options\n");
                return 2;
            }
            sets[n_sets++] = argv[++i];
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            if (parse_int_arg("--threads", argv[++i], 1, 1024, &threads)) return 2;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (!strcmp(a, "--no-db")) {
            no_db = 1;
        } else if (a[0] == '-') {
            fprintf(stderr, "memlab train: unknown option '%s'\n%s", a, usage_train);
            return 2;
        } else if (!spec) {
            spec = a;
        } else {
            fprintf(stderr, "memlab train: one spec at a time (got '%s' and '%s')\n", spec, a);
            return 2;
        }
    }
    if (!spec) {
        fprintf(stderr, "memlab train: no spec given\n%s", usage_train);
        return 2;
    }
    ml_error e;
    memset(&e, 0, sizeof e);
    run_config cfg;
    if (spec_load_file(spec, &cfg, &e)) {
        print_error(&e);
        return 1;
    }
    for (int i = 0; i < n_sets; i++) {
        if (spec_set(&cfg, sets[i], &e)) {
            fprintf(stderr, "memlab: --set %s: ", sets[i]);
            char buf[2048];
            ml_error_format(&e, buf, sizeof buf);
            fprintf(stderr, "%s\n", buf);
            return 1;
        }
    }
    if (n_sets > 0 && spec_validate(&cfg, &e)) {
        print_error(&e);
        return 1;
    }
    openblas_set_num_threads(threads);
    ml_db *db = NULL;
    if (!no_db && db_open(&db, db_path, &e)) {
        print_error(&e);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    train_opts o = {.progress = !quiet && isatty(2), .quiet = quiet, .stop = &stop_flag};
    train_outcome out;
    int rc = train_run(&cfg, db, &o, &out, &e);
    db_close(db);
    if (rc) {
        print_error(&e);
        return 1;
    }
    if (!quiet)
        fprintf(stderr,
                "%s: %s %s/%s step %ld  test accuracy %.4f  test loss %.4f  %.0f tokens/s  "
                "%.1fs  run %lld in %s\n",
                spec, out.status, cfg.model.mixer, cfg.task, out.step, out.test_accuracy,
                out.test_loss, out.tokens_per_s, out.wall_s, out.run_id,
                no_db ? "(no database)" : db_path);
    if (!strcmp(out.status, "diverged")) return 3;
    if (!strcmp(out.status, "interrupted")) return 130;
    return 0;
}

static int cmd_bench(int argc, char **argv) {
    bench_opts bo;
    bench_defaults(&bo);
    bo.progress = stderr;
    ml_error e;
    memset(&e, 0, sizeof e);
    int parsed = bench_parse_args(&bo, argc, argv, &e);
    if (parsed == 1) return fputs(usage_bench, stdout), 0;
    if (parsed < 0) {
        print_error(&e);
        fputs(usage_bench, stderr);
        return 2;
    }
    if (bench_run(&bo, &e)) {
        print_error(&e);
        return 1;
    }
    return 0;
}

/* memlab probe: parse the options, run the grid (probe_sweep), print one
 * line per (memory, N). */
static int cmd_probe(int argc, char **argv) {
    probe_opts po = {.memory = -1, .d = 64, .n_min = 8, .n_max = 512, .seeds = 5, .seed0 = 0};
    const char *db_path = DEFAULT_DB, *sets[64];
    int no_db = 0, seed0 = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_probe, stdout);
            return 0;
        } else if (!strcmp(a, "--memory") && i + 1 < argc) {
            const char *m = argv[++i];
            po.memory = -2;
            if (!strcmp(m, "all")) po.memory = -1;
            for (int k = 0; probe_memory_names[k]; k++)
                if (!strcmp(m, probe_memory_names[k])) po.memory = k;
            if (po.memory == -2) {
                fprintf(stderr, "memlab probe: unknown memory '%s' (sum, delta, mom, caching, "
                                "slots or all)\n", m);
                return 2;
            }
        } else if (!strcmp(a, "--d") && i + 1 < argc) {
            if (parse_int_arg("--d", argv[++i], 1, 4096, &po.d)) return 2;
        } else if (!strcmp(a, "--n-min") && i + 1 < argc) {
            if (parse_int_arg("--n-min", argv[++i], 1, 1 << 20, &po.n_min)) return 2;
        } else if (!strcmp(a, "--n-max") && i + 1 < argc) {
            if (parse_int_arg("--n-max", argv[++i], 1, 1 << 20, &po.n_max)) return 2;
        } else if (!strcmp(a, "--seeds") && i + 1 < argc) {
            if (parse_int_arg("--seeds", argv[++i], 1, 100000, &po.seeds)) return 2;
        } else if (!strcmp(a, "--seed") && i + 1 < argc) {
            if (parse_int_arg("--seed", argv[++i], 0, 1 << 30, &seed0)) return 2;
        } else if (!strcmp(a, "--set") && i + 1 < argc) {
            if (po.n_sets == 64) {
                fprintf(stderr, "memlab: at most 64 --set options\n");
                return 2;
            }
            sets[po.n_sets++] = argv[++i];
        } else if (!strcmp(a, "--db") && i + 1 < argc) {
            db_path = argv[++i];
        } else if (!strcmp(a, "--no-db")) {
            no_db = 1;
        } else {
            fprintf(stderr, "memlab probe: unknown argument '%s'\n%s", a, usage_probe);
            return 2;
        }
    }
    if (po.n_max < po.n_min) {
        fprintf(stderr, "memlab probe: --n-max %d is below --n-min %d\n", po.n_max, po.n_min);
        return 2;
    }
    po.seed0 = seed0;
    po.sets = sets;
    ml_error e;
    memset(&e, 0, sizeof e);
    ml_db *db = NULL;
    if (!no_db && db_open(&db, db_path, &e)) {
        print_error(&e);
        return 1;
    }
    probe_row rows[PROBE_N_MEMORIES * 24];
    int n_rows = 0;
    int rc = probe_sweep(&po, db, rows, (int)(sizeof rows / sizeof rows[0]), &n_rows, &e);
    db_close(db);
    if (rc) {
        print_error(&e);
        return 1;
    }
    printf("%-8s %5s %7s %8s  %-19s %8s  %-17s %10s\n", "memory", "d", "N", "N/d",
           "rel_error (sd)", "theory", "top-1 (sd)", "state");
    for (int i = 0; i < n_rows; i++) {
        const probe_row *r = &rows[i];
        char theory[16] = "-";
        if (r->theory == r->theory) snprintf(theory, sizeof theory, "%.4f", r->theory);
        printf("%-8s %5d %7d %8.4f  %8.4f (%8.4f) %8s  %6.4f (%6.4f) %10ld\n",
               probe_memory_names[r->memory], r->d, r->n, (double)r->n / r->d, r->err_mean,
               r->err_std, theory, r->top1_mean, r->top1_std, r->state_size);
    }
    if (!no_db)
        fprintf(stderr, "recorded %d points x %d seeds in %s\n", n_rows, po.seeds, db_path);
    return 0;
}

/* catch_stop: SIGINT and SIGTERM set stop_flag (the run finishes its step
 * and is recorded as interrupted). */
static void catch_stop(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int cmd_run(int argc, char **argv) {
    const char *spec = NULL, *db_path = DEFAULT_DB, *preset = NULL;
    const char *sets[64];
    int n_sets = 0, jobs = 1, dry = 0, quiet = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_run, stdout);
            return 0;
        } else if (!strcmp(a, "--db") && i + 1 < argc) {
            db_path = argv[++i];
        } else if (!strcmp(a, "--set") && i + 1 < argc) {
            if (n_sets == 64) {
                fprintf(stderr, "memlab: at most 64 --set options\n");
                return 2;
            }
            sets[n_sets++] = argv[++i];
        } else if (!strcmp(a, "--preset") && i + 1 < argc) {
            preset = argv[++i];
        } else if (!strcmp(a, "--jobs") && i + 1 < argc) {
            if (parse_int_arg("--jobs", argv[++i], 1, RUNNER_MAX_JOBS, &jobs)) return 2;
        } else if (!strcmp(a, "--dry-run")) {
            dry = 1;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (a[0] == '-') {
            fprintf(stderr, "memlab run: unknown option '%s'\n%s", a, usage_run);
            return 2;
        } else if (!spec) {
            spec = a;
        } else {
            fprintf(stderr, "memlab run: one spec at a time (got '%s' and '%s')\n", spec, a);
            return 2;
        }
    }
    if (!spec) {
        fprintf(stderr, "memlab run: no spec given\n%s", usage_run);
        return 2;
    }
    ml_error e;
    memset(&e, 0, sizeof e);
    sweep_opts so = {.preset = preset, .sets = sets, .n_sets = n_sets, .check_presets = 1};
    ml_sweep *s = NULL;
    if (sweep_load_file(spec, &so, &s, &e)) {
        print_error(&e);
        return 1;
    }
    if (dry) {
        int rc = runner_dry_run(s, db_path, stdout, &e);
        sweep_free(s);
        if (rc) print_error(&e);
        return rc ? 1 : 0;
    }
    catch_stop();
    runner_opts ro = {.db_path = db_path, .jobs = jobs, .progress = !quiet && isatty(2),
                      .quiet = quiet, .stop = &stop_flag};
    runner_result r;
    int rc = runner_run(s, &ro, &r, &e);
    if (rc) print_error(&e);
    if (!quiet)
        fprintf(stderr,
                "sweep %s: %ld runs, %ld already done; now %ld finished, %ld diverged, %ld "
                "failed, %ld interrupted, %ld done or running elsewhere; in %s\n",
                sweep_name(s), r.total, r.done_before, r.finished, r.diverged, r.failed,
                r.interrupted, r.elsewhere, db_path);
    sweep_free(s);
    if (rc) return 1;
    if (r.stopped) return 130;
    return r.failed || r.worker_errors ? 1 : 0;
}

static int cmd_status(int argc, char **argv) {
    const char *db_path = DEFAULT_DB;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(usage_status, stdout);
            return 0;
        } else if (!strcmp(argv[i], "--db") && i + 1 < argc) {
            db_path = argv[++i];
        } else {
            fprintf(stderr, "memlab status: unknown argument '%s'\n%s", argv[i], usage_status);
            return 2;
        }
    }
    ml_error e;
    memset(&e, 0, sizeof e);
    if (export_status(db_path, stdout, &e)) {
        print_error(&e);
        return 1;
    }
    return 0;
}

static int cmd_export(int argc, char **argv) {
    export_opts xo = {.db_path = DEFAULT_DB};
    const char *output = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_export, stdout);
            return 0;
        } else if (!strcmp(a, "--db") && i + 1 < argc) {
            xo.db_path = argv[++i];
        } else if (!strcmp(a, "--sweep") && i + 1 < argc) {
            xo.sweep = argv[++i];
        } else if (!strcmp(a, "--output") && i + 1 < argc) {
            output = argv[++i];
        } else if (!strcmp(a, "--format") && i + 1 < argc) {
            const char *f = argv[++i];
            if (strcmp(f, "csv") && strcmp(f, "json")) {
                fprintf(stderr, "memlab export: --format takes csv or json, got '%s'\n", f);
                return 2;
            }
            xo.json = !strcmp(f, "json");
        } else if (!strcmp(a, "--metric") && i + 1 < argc) {
            /* Comma-separated names, split in place. */
            for (char *m = argv[++i], *next; m && *m; m = next) {
                next = strchr(m, ',');
                if (next) *next++ = '\0';
                if (xo.n_metrics == EXPORT_MAX_METRICS) {
                    fprintf(stderr, "memlab export: at most %d metrics\n", EXPORT_MAX_METRICS);
                    return 2;
                }
                if (*m) xo.metrics[xo.n_metrics++] = m;
            }
        } else {
            fprintf(stderr, "memlab export: unknown argument '%s'\n%s", a, usage_export);
            return 2;
        }
    }
    if (!xo.sweep) {
        fprintf(stderr, "memlab export: --sweep NAME is required\n%s", usage_export);
        return 2;
    }
    FILE *out = output ? fopen(output, "w") : stdout;
    if (!out) {
        fprintf(stderr, "memlab export: cannot write %s\n", output);
        return 1;
    }
    ml_error e;
    memset(&e, 0, sizeof e);
    long not_done = 0;
    int rc = export_sweep(&xo, out, &not_done, &e);
    if (output && fclose(out) != 0 && !rc) {
        fprintf(stderr, "memlab export: cannot write %s\n", output);
        return 1;
    }
    if (rc) {
        print_error(&e);
        return 1;
    }
    if (not_done > 0)
        fprintf(stderr, "memlab export: %ld run%s of sweep %s not done yet (left out)\n",
                not_done, not_done == 1 ? "" : "s", xo.sweep);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        if (argc >= 3 && !strcmp(argv[1], "help")) {
            if (!strcmp(argv[2], "train")) return fputs(usage_train, stdout), 0;
            if (!strcmp(argv[2], "run")) return fputs(usage_run, stdout), 0;
            if (!strcmp(argv[2], "status")) return fputs(usage_status, stdout), 0;
            if (!strcmp(argv[2], "export")) return fputs(usage_export, stdout), 0;
            if (!strcmp(argv[2], "bench")) return fputs(usage_bench, stdout), 0;
            if (!strcmp(argv[2], "probe")) return fputs(usage_probe, stdout), 0;
        }
        fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    if (!strcmp(verb, "train")) return cmd_train(argc - 2, argv + 2);
    if (!strcmp(verb, "run")) return cmd_run(argc - 2, argv + 2);
    if (!strcmp(verb, "status")) return cmd_status(argc - 2, argv + 2);
    if (!strcmp(verb, "export")) return cmd_export(argc - 2, argv + 2);
    if (!strcmp(verb, "bench")) return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(verb, "probe")) return cmd_probe(argc - 2, argv + 2);
    if (!strcmp(verb, "mixers")) return cmd_list_mixers();
    if (!strcmp(verb, "tasks")) return cmd_list_tasks();
    if (!strcmp(verb, "keys")) return cmd_list_keys();
    if (!strcmp(verb, "version") || !strcmp(verb, "--version")) {
        printf("memlab %s (%s kernels)\n", memlab_code_version(), REAL_NAME);
        return 0;
    }
    fprintf(stderr, "memlab: unknown verb '%s'\n\n%s", verb, usage_main);
    return 2;
}
