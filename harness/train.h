/* train.h: one training run, from a resolved config to rows in the database.
 *
 * train_run builds the model and the task, trains with AdamW (warmup then
 * cosine, gradient-norm clipping), evaluates on the test stream every
 * eval.every steps and at the end, and records everything in the results
 * store: the run row (config JSON, hash, code version, machine, status) and
 * the metrics (train loss, learning rate, gradient norm, test accuracy and
 * loss, tokens/s, wall time, parameters, state size, peak memory).
 * A NaN or Inf loss or gradient stops the run as 'diverged' at that step. */
#ifndef MEMLAB_TRAIN_H
#define MEMLAB_TRAIN_H

#include <signal.h>

#include "config.h"
#include "db.h"
#include "error.h"

typedef struct train_opts {
    int progress;                     /* 1: live progress line on stderr */
    int quiet;                        /* no per-run summary line */
    volatile sig_atomic_t *stop;      /* set asynchronously (SIGINT): finish as interrupted */
} train_opts;

typedef struct train_outcome {
    char status[16];   /* finished | diverged | interrupted | failed */
    long step;         /* steps completed */
    long long run_id;  /* row in runs (0 without a database) */
    double train_loss; /* mean over the last logging window */
    double test_accuracy, test_loss;
    double tokens_per_s, wall_s;
    long n_params, state_size;
} train_outcome;

/* Run one training run. db may be NULL (nothing recorded). Returns 0 when the
 * run reached an outcome (including diverged or interrupted: see
 * out->status), -1 on an error that prevented it (recorded as failed when the
 * run row exists). */
int train_run(const run_config *cfg, ml_db *db, const train_opts *o, train_outcome *out,
              ml_error *e);

/* Evaluate on `examples` examples of a split: accuracy (per example, mean
 * correctness over its supervised positions; then mean over examples) and the
 * mean loss per supervised position. */
struct ml_model;
struct ml_task;
int train_evaluate(struct ml_model *m, const struct ml_task *task, const void *task_cfg,
                   long seed, int split, int examples, int batch, double *accuracy,
                   double *loss, ml_error *e);

/* "hostname, cpu model, n cpus, BLAS config" into buf. */
void machine_describe(char *buf, size_t cap);
/* Peak resident memory of this process in MiB. */
double peak_rss_mib(void);

#endif
