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
#include "mixer.h"
#include "spec.h"
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
    "  mixers            list the mixers with their config keys and defaults\n"
    "  tasks             list the tasks with their config keys and defaults\n"
    "  keys              list the model, train and eval keys with their defaults\n"
    "  bench             tokens/s of a training step for each mixer and size\n"
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

static const char *const usage_bench =
    "usage: memlab bench [--db FILE] [--report FILE] [--steps N] [--threads N] [--quick]\n"
    "\n"
    "Times a full training step (forward, backward, AdamW) of 2-layer MQAR models:\n"
    "softmax and linear attention at d_model 64 and 128, L 64 and 256, batch 64, with\n"
    "the LM head at supervised positions only and at every position. Reports the\n"
    "median and spread of N timed steps after 2 warm-up steps.\n"
    "\n"
    "  --db FILE       record each configuration as a run (default results/bench.db)\n"
    "  --report FILE   markdown report (default results/bench.md)\n"
    "  --steps N       timed steps per configuration (default 10)\n"
    "  --threads N     BLAS threads (default 1)\n"
    "  --quick         only d_model 64, L 64 (a smoke run)\n";

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
    bench_opts bo = {.db_path = "results/bench.db", .report_path = "results/bench.md",
                     .steps = 10, .threads = 1, .quick = 0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_bench, stdout);
            return 0;
        } else if (!strcmp(a, "--db") && i + 1 < argc) {
            bo.db_path = argv[++i];
        } else if (!strcmp(a, "--report") && i + 1 < argc) {
            bo.report_path = argv[++i];
        } else if (!strcmp(a, "--steps") && i + 1 < argc) {
            if (parse_int_arg("--steps", argv[++i], 1, 100000, &bo.steps)) return 2;
        } else if (!strcmp(a, "--threads") && i + 1 < argc) {
            if (parse_int_arg("--threads", argv[++i], 1, 1024, &bo.threads)) return 2;
        } else if (!strcmp(a, "--quick")) {
            bo.quick = 1;
        } else {
            fprintf(stderr, "memlab bench: unknown argument '%s'\n%s", a, usage_bench);
            return 2;
        }
    }
    ml_error e;
    memset(&e, 0, sizeof e);
    if (bench_run(&bo, &e)) {
        print_error(&e);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        if (argc >= 3 && !strcmp(argv[1], "help")) {
            if (!strcmp(argv[2], "train")) return fputs(usage_train, stdout), 0;
            if (!strcmp(argv[2], "bench")) return fputs(usage_bench, stdout), 0;
        }
        fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    if (!strcmp(verb, "train")) return cmd_train(argc - 2, argv + 2);
    if (!strcmp(verb, "bench")) return cmd_bench(argc - 2, argv + 2);
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
