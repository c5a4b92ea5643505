/* main.c: the memlab command line. Parses verbs and flags, prints errors,
 * sets exit codes; all work is done by the library (train.c, spec.c, db.c,
 * bench.c). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"
#include "blas.h"
#include "config.h"
#include "db.h"
#include "export.h"
#include "fit.h"
#include "merge.h"
#include "mixer.h"
#include "probe.h"
#include "runner.h"
#include "shard.h"
#include "slurm.h"
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
    "  fit               fit y = a x^b (+ c) over a sweep's runs, store it in the database\n"
    "  merge OUT IN...   merge results databases (the shards of a cluster run) into OUT\n"
    "  slurm SPEC.yaml   write an sbatch script: the sweep as a Slurm job array + merge\n"
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
    "                  [--jobs N] [--shard I/N] [--no-shard-env] [--dry-run] [--quiet]\n"
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
    "  --shard I/N     run only the runs i with i mod N = I (0 <= I < N), into\n"
    "                  FILE's shard database: results/x.db -> results/x.shard-I-of-N.db\n"
    "                  (memlab merge puts the shards together)\n"
    "  --no-shard-env  ignore the environment's shard (below): run the whole sweep\n"
    "\n"
    "Without --shard the shard is read from the environment: a Slurm job array\n"
    "(SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT), MPI ranks (mpirun -np N:\n"
    "OMPI_COMM_WORLD_RANK/_SIZE, PMI_RANK/PMI_SIZE, PMIX_RANK) or the tasks of an\n"
    "srun step (SLURM_PROCID of SLURM_NTASKS); one task is the whole sweep.\n"
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

/* print_warnings: the sweep's warnings on stderr, before anything runs. */
static void print_warnings(const ml_sweep *s) {
    char buf[4096];
    if (sweep_warnings(s, buf, sizeof buf)) fputs(buf, stderr);
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

/* Before training or timing starts (after the spec is accepted): one line
 * when OpenBLAS runs narrower kernels than the CPU could (blas.h). Sweep
 * workers are forked, so a sweep says it once. */
static void blas_note(int quiet) {
    if (!quiet && blas_core_advice()) fprintf(stderr, "memlab: note: %s\n", blas_core_advice());
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
    char why[1024];
    if (spec_caution(&cfg, why, sizeof why)) fprintf(stderr, "memlab: warning: %s\n", why);
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
    blas_note(quiet);
    int rc = train_run(&cfg, db, &o, &out, &e);
    db_close(db);
    if (rc) {
        print_error(&e);
        return 1;
    }
    const char *where = no_db ? "(no database)" : db_path;
    if (!quiet && !strcmp(out.status, "finished")) {
        fprintf(stderr,
                "%s: %s %s/%s step %ld  test accuracy %.4f  test loss %.4f  %.0f tokens/s  "
                "%.1fs  run %lld in %s\n",
                spec, out.status, cfg.model.mixer, cfg.task, out.step, out.test_accuracy,
                out.test_loss, out.tokens_per_s, out.wall_s, out.run_id, where);
    } else if (!quiet) {
        /* no test metrics: the run stopped before its final evaluation */
        fprintf(stderr, "%s: %s %s/%s at step %ld%s%s  %.1fs  run %lld in %s\n", spec,
                out.status, cfg.model.mixer, cfg.task, out.step, out.why[0] ? ": " : "",
                out.why, out.wall_s, out.run_id, where);
    }
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
    blas_note(0);
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
    int n_sets = 0, jobs = 1, dry = 0, quiet = 0, no_shard_env = 0;
    const char *shard_flag = NULL;
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
        } else if (!strcmp(a, "--shard") && i + 1 < argc) {
            shard_flag = argv[++i];
        } else if (!strcmp(a, "--no-shard-env")) {
            no_shard_env = 1;
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
    print_warnings(s);
    /* The shard (flag, else environment) and its own database. */
    ml_shard shard;
    char shard_db[1100];
    if (shard_resolve(shard_flag, no_shard_env, NULL, &shard, &e) ||
        shard_db_path(db_path, shard.index, shard.count, shard_db, sizeof shard_db, &e)) {
        print_error(&e);
        sweep_free(s);
        return shard_flag ? 2 : 1;
    }
    db_path = shard_db;
    if (dry) {
        int rc = runner_dry_run(s, db_path, &shard, stdout, &e);
        sweep_free(s);
        if (rc) print_error(&e);
        return rc ? 1 : 0;
    }
    catch_stop();
    runner_opts ro = {.db_path = db_path, .jobs = jobs, .progress = !quiet && isatty(2),
                      .quiet = quiet, .stop = &stop_flag, .shard = &shard};
    char shard_text[64] = "";
    if (shard.count > 1) {
        snprintf(shard_text, sizeof shard_text, " (shard %ld of %ld)", shard.index, shard.count);
        if (!quiet)
            fprintf(stderr, "memlab run: shard %ld of %ld (%s): %ld of the %ld runs, into %s\n",
                    shard.index, shard.count, shard.source, shard_size(&shard, sweep_size(s)),
                    sweep_size(s), db_path);
    }
    runner_result r;
    blas_note(quiet);
    int rc = runner_run(s, &ro, &r, &e);
    if (rc) print_error(&e);
    if (!quiet)
        fprintf(stderr,
                "sweep %s%s: %ld runs, %ld already done; now %ld finished, %ld diverged, %ld "
                "failed, %ld interrupted, %ld done or running elsewhere; in %s\n",
                sweep_name(s), shard_text, r.total, r.done_before, r.finished, r.diverged,
                r.failed, r.interrupted, r.elsewhere, db_path);
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

static const char *const usage_merge =
    "usage: memlab merge OUT.db IN.db...\n"
    "       memlab merge --shards N OUT.db [IN.db...]\n"
    "\n"
    "Merges results databases into OUT.db (created when missing), in one\n"
    "transaction: per config, the best copy over the inputs (finished, else\n"
    "diverged, else the others) with its metrics, unless OUT already has one as\n"
    "good; sweeps by name and resolved spec. Merging twice changes nothing.\n"
    "Refused: a file of another schema version, and runs with the same config hash\n"
    "but different configs.\n"
    "\n"
    "  --shards N      also merge OUT's shard databases OUT.shard-I-of-N.db, I = 0 .. N-1\n"
    "                  (what memlab run --shard, mpirun and memlab slurm write); a\n"
    "                  missing one is named, the others are merged, and the exit status is 1\n"
    "  --quiet         print nothing but errors\n"
    "\n"
    "Exit status: 0 merged, 1 error (nothing changed) or a shard missing, 2 usage.\n";

static const char *const usage_slurm =
    "usage: memlab slurm SPEC.yaml [--array-size N] [--time T] [--partition P]\n"
    "                    [--cpus-per-task N] [--mem M] [--account A] [--job-name NAME]\n"
    "                    [--db FILE] [--preset NAME] [--set key=value]... [--jobs N]\n"
    "                    [--memlab PATH] [--output FILE]\n"
    "\n"
    "Writes a bash script that runs the sweep on Slurm: a job array of N tasks, task\n"
    "I running `memlab run SPEC --shard I/N` into FILE's shard database, and a merge\n"
    "job after the array (--dependency=afterany) running `memlab merge --shards N\n"
    "FILE`. Submit it with `bash SCRIPT` (it calls sbatch twice and prints the job\n"
    "ids); its comments give the two sbatch commands for submitting by hand. The\n"
    "spec is checked first; the jobs run in the current directory.\n"
    "\n"
    "  --array-size N  tasks of the array (default: the number of runs, at most 32;\n"
    "                  lowered to the number of runs)\n"
    "  --time T        #SBATCH --time of every task, e.g. 4:00:00 (default: the\n"
    "                  partition's)\n"
    "  --partition P, --mem M, --account A, --job-name NAME\n"
    "                  #SBATCH options (default: the cluster's; job name memlab-SWEEP)\n"
    "  --cpus-per-task N  (default: --jobs)\n"
    "  --db FILE       the merged database (default " DEFAULT_DB "); the shards sit beside it\n"
    "  --preset NAME, --set K=V, --jobs N\n"
    "                  passed to every task's memlab run\n"
    "  --memlab PATH   the memlab binary the jobs run (default: this one)\n"
    "  --output FILE   write the script there (executable) instead of stdout\n";

/* memlab merge: the inputs (given, and with --shards the shard files of
 * OUT), merged into OUT; a missing shard file is reported, not fatal. */
static int cmd_merge(int argc, char **argv) {
    const char *out = NULL, **in = NULL;
    int n_in = 0, quiet = 0, shards = 0;
    in = malloc(sizeof *in * (size_t)(argc + 1));
    if (!in) return fprintf(stderr, "memlab merge: out of memory\n"), 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            free(in);
            fputs(usage_merge, stdout);
            return 0;
        } else if (!strcmp(a, "--shards") && i + 1 < argc) {
            if (parse_int_arg("--shards", argv[++i], 1, (int)SHARD_MAX, &shards)) {
                free(in);
                return 2;
            }
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (a[0] == '-') {
            fprintf(stderr, "memlab merge: unknown option '%s'\n%s", a, usage_merge);
            free(in);
            return 2;
        } else if (!out) {
            out = a;
        } else {
            in[n_in++] = a;
        }
    }
    if (!out || (n_in == 0 && shards == 0)) {
        fprintf(stderr, "memlab merge: give the output and at least one input (or --shards N)\n%s",
                usage_merge);
        free(in);
        return 2;
    }
    /* The shard files, each a path of its own. */
    char **owned = calloc((size_t)shards + 1, sizeof *owned);
    const char **all = malloc(sizeof *all * ((size_t)n_in + (size_t)shards + 1));
    int n_all = 0, missing = 0, rc = 1;
    ml_error e;
    memset(&e, 0, sizeof e);
    if (!owned || !all) {
        fprintf(stderr, "memlab merge: out of memory\n");
        goto done;
    }
    for (int k = 0; k < n_in; k++) all[n_all++] = in[k];
    /* One shard is the whole sweep: memlab run wrote OUT itself. */
    for (int k = 0; k < shards && shards > 1; k++) {
        char path[1100];
        if (shard_db_path(out, k, shards, path, sizeof path, &e)) {
            print_error(&e);
            goto done;
        }
        if (access(path, F_OK) != 0) {
            fprintf(stderr, "memlab merge: shard %d of %d: %s is missing (the shard did not "
                    "start, or wrote elsewhere)\n", k, shards, path);
            missing++;
            continue;
        }
        owned[k] = strdup(path);
        if (!owned[k]) {
            fprintf(stderr, "memlab merge: out of memory\n");
            goto done;
        }
        all[n_all++] = owned[k];
    }
    if (n_all == 0) {
        if (shards == 1) {
            if (!quiet)
                fprintf(stderr, "memlab merge: one shard is %s itself: nothing to merge\n", out);
            rc = 0;
        } else {
            fprintf(stderr, "memlab merge: nothing to merge into %s\n", out);
        }
        goto done;
    }
    merge_result r;
    if (merge_files(out, all, n_all, &r, &e)) {
        print_error(&e);
        goto done;
    }
    if (!quiet) {
        fprintf(stderr,
                "merged %d file%s into %s%s: %ld runs added (%ld finished, %ld diverged, %ld "
                "failed, %ld interrupted, %ld running), %ld already there; %ld metric values, "
                "%ld new sweep%s\n",
                n_all, n_all == 1 ? "" : "s", out, r.created ? " (new)" : "", r.runs_added,
                r.added_status[0], r.added_status[1], r.added_status[2], r.added_status[3],
                r.added_status[4], r.runs_kept, r.metrics_added, r.sweeps_added,
                r.sweeps_added == 1 ? "" : "s");
        if (r.unlinked)
            fprintf(stderr, "memlab merge: %ld diverged run%s replaced by a finished copy "
                    "(kept, unlinked from the sweep)\n", r.unlinked, r.unlinked == 1 ? "" : "s");
    }
    rc = missing ? 1 : 0;
done:
    for (int k = 0; owned && k < shards; k++) free(owned[k]);
    free(owned);
    free(all);
    free(in);
    return rc;
}

/* shell_join: argv as one line for a comment ("memlab slurm a 'b c'"). */
static void shell_join(const char *verb, int argc, char **argv, char *buf, size_t cap) {
    size_t used = (size_t)snprintf(buf, cap, "memlab %s", verb);
    for (int i = 0; i < argc && used < cap; i++) {
        int plain = argv[i][0] != '\0' && strcspn(argv[i], " \t\n'\"$`\\*?[]{}()<>|&;#~") ==
                                              strlen(argv[i]);
        used += (size_t)snprintf(buf + used, cap - used, plain ? " %s" : " '%s'", argv[i]);
    }
}

/* memlab slurm: check the spec, then write the script (slurm.c). */
static int cmd_slurm(int argc, char **argv) {
    slurm_opts so = {.db = DEFAULT_DB, .jobs = 1};
    const char *sets[64], *output = NULL;
    int array_size = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **str = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_slurm, stdout);
            return 0;
        } else if (!strcmp(a, "--array-size") && i + 1 < argc) {
            if (parse_int_arg("--array-size", argv[++i], 1, (int)SHARD_MAX, &array_size))
                return 2;
        } else if (!strcmp(a, "--jobs") && i + 1 < argc) {
            if (parse_int_arg("--jobs", argv[++i], 1, RUNNER_MAX_JOBS, &so.jobs)) return 2;
        } else if (!strcmp(a, "--cpus-per-task") && i + 1 < argc) {
            if (parse_int_arg("--cpus-per-task", argv[++i], 1, 4096, &so.cpus_per_task)) return 2;
        } else if (!strcmp(a, "--set") && i + 1 < argc) {
            if (so.n_sets == 64) {
                fprintf(stderr, "memlab: at most 64 --set options\n");
                return 2;
            }
            sets[so.n_sets++] = argv[++i];
        } else if (i + 1 < argc && (str = !strcmp(a, "--time")        ? &so.time
                                          : !strcmp(a, "--partition") ? &so.partition
                                          : !strcmp(a, "--mem")       ? &so.mem
                                          : !strcmp(a, "--account")   ? &so.account
                                          : !strcmp(a, "--job-name")  ? &so.job_name
                                          : !strcmp(a, "--db")        ? &so.db
                                          : !strcmp(a, "--preset")    ? &so.preset
                                          : !strcmp(a, "--memlab")    ? &so.memlab
                                          : !strcmp(a, "--output")    ? &output
                                                                      : NULL)) {
            *str = argv[++i];
        } else if (a[0] == '-') {
            fprintf(stderr, "memlab slurm: unknown option '%s'\n%s", a, usage_slurm);
            return 2;
        } else if (!so.spec) {
            so.spec = a;
        } else {
            fprintf(stderr, "memlab slurm: one spec at a time (got '%s' and '%s')\n", so.spec, a);
            return 2;
        }
    }
    if (!so.spec) {
        fprintf(stderr, "memlab slurm: no spec given\n%s", usage_slurm);
        return 2;
    }
    so.sets = sets;
    ml_error e;
    memset(&e, 0, sizeof e);
    const char *const directive[][2] = {{"--time", so.time},     {"--partition", so.partition},
                                        {"--mem", so.mem},       {"--account", so.account},
                                        {"--job-name", so.job_name}};
    for (size_t k = 0; k < sizeof directive / sizeof directive[0]; k++) {
        if (directive[k][1] && slurm_check_value(directive[k][0], directive[k][1], &e)) {
            print_error(&e);
            return 2;
        }
    }
    sweep_opts wo = {.preset = so.preset, .sets = sets, .n_sets = so.n_sets, .check_presets = 1};
    ml_sweep *s = NULL;
    if (sweep_load_file(so.spec, &wo, &s, &e)) {
        print_error(&e);
        return 1;
    }
    print_warnings(s);
    so.runs = sweep_size(s);
    so.sweep_name = sweep_name(s);
    so.array_size = array_size ? array_size : (so.runs < 32 ? so.runs : 32);
    if (so.array_size > so.runs) {
        fprintf(stderr, "memlab slurm: --array-size %ld lowered to the sweep's %ld runs\n",
                so.array_size, so.runs);
        so.array_size = so.runs;
    }
    char command[4096];
    shell_join("slurm", argc, argv, command, sizeof command);
    so.command = command;
    FILE *out = output ? fopen(output, "w") : stdout;
    int rc = 1;
    if (!out) {
        fprintf(stderr, "memlab slurm: cannot write %s\n", output);
    } else if (slurm_write_script(&so, out, &e)) {
        print_error(&e);
        if (output) fclose(out);
    } else if (output && (fclose(out) != 0 || chmod(output, 0755) != 0)) {
        fprintf(stderr, "memlab slurm: cannot write %s\n", output);
    } else {
        if (output)
            fprintf(stderr, "wrote %s: sweep %s, %ld runs in %ld array tasks, then a merge "
                    "into %s\nsubmit with: bash %s\n", output, so.sweep_name, so.runs,
                    so.array_size, so.db, output);
        rc = 0;
    }
    sweep_free(s);
    return rc;
}

/* memlab fit: parse the options (fit.c), fit, print; the fits are stored
 * unless --no-store. */
static int cmd_fit(int argc, char **argv) {
    fit_opts fo = {.db_path = DEFAULT_DB};
    ml_error e;
    memset(&e, 0, sizeof e);
    int parsed = fit_parse_args(&fo, argc, argv, &e);
    if (parsed == 1) return fputs(fit_usage, stdout), 0;
    if (parsed < 0) {
        print_error(&e);
        fputs(fit_usage, stderr);
        return 2;
    }
    if (fit_sweep(&fo, stdout, &e)) {
        print_error(&e);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    blas_select_core(NULL, 0);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        if (argc >= 3 && !strcmp(argv[1], "help")) {
            if (!strcmp(argv[2], "train")) return fputs(usage_train, stdout), 0;
            if (!strcmp(argv[2], "run")) return fputs(usage_run, stdout), 0;
            if (!strcmp(argv[2], "status")) return fputs(usage_status, stdout), 0;
            if (!strcmp(argv[2], "export")) return fputs(usage_export, stdout), 0;
            if (!strcmp(argv[2], "fit")) return fputs(fit_usage, stdout), 0;
            if (!strcmp(argv[2], "merge")) return fputs(usage_merge, stdout), 0;
            if (!strcmp(argv[2], "slurm")) return fputs(usage_slurm, stdout), 0;
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
    if (!strcmp(verb, "fit")) return cmd_fit(argc - 2, argv + 2);
    if (!strcmp(verb, "merge")) return cmd_merge(argc - 2, argv + 2);
    if (!strcmp(verb, "slurm")) return cmd_slurm(argc - 2, argv + 2);
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
