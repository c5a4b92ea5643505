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
#include "task.h"

typedef struct train_opts {
    int progress;                     /* 1: live progress line on stderr */
    int quiet;                        /* no per-run summary line */
    volatile sig_atomic_t *stop;      /* set asynchronously (SIGINT): finish as interrupted */
    long long run_id;                 /* a row already claimed (db_run_claim) to record
                                         into; 0: train_run inserts one */
    /* Called every 10 steps, at evaluations and at the last step (NULL: none):
     * steps done, total steps, last training loss, last test accuracy (-1
     * before the first evaluation). */
    void (*on_step)(void *ctx, long step, long steps, double loss, double accuracy);
    void *step_ctx;
} train_opts;

typedef struct train_outcome {
    char status[16];   /* finished | diverged | interrupted | failed */
    long step;         /* steps completed */
    long long run_id;  /* row in runs (0 without a database) */
    double train_loss; /* mean over the last logging window */
    double test_accuracy, test_loss;
    double tokens_per_s, wall_s;
    long n_params, state_size;
    char why[96];      /* diverged: what was not finite ("loss is nan"); else "" */
} train_outcome;

/* Run one training run. db may be NULL (nothing recorded). Returns 0 when the
 * run reached an outcome (including diverged or interrupted: see
 * out->status), -1 on an error that prevented it (recorded as failed when the
 * run row exists). */
int train_run(const run_config *cfg, ml_db *db, const train_opts *o, train_outcome *out,
              ml_error *e);

/* The result of one evaluation: the task's metrics (task_score: metrics[0]
 * is "accuracy", micro by default) and the mean cross-entropy per supervised
 * position in nats, auxiliary losses excluded. */
typedef struct train_eval {
    double accuracy, loss;
    long examples, positions;
    int n_metrics;
    ml_metric metrics[TASK_MAX_METRICS];
} train_eval;

/* Evaluate on `examples` examples of a split (fewer when the split has fewer:
 * task_eval_examples), data being what task_open returned. */
struct ml_model;
int train_evaluate(struct ml_model *m, const ml_task *task, const void *task_cfg,
                   const void *data, long seed, int split, int examples, int batch,
                   train_eval *r, ml_error *e);

/* Record a run that was measured rather than trained (a task with measure):
 * the run row (config JSON, hash, code version, machine), the metrics at step
 * 0, status finished. */
int train_record(const run_config *cfg, ml_db *db, const ml_metric *metrics, int n,
                 long long *run_id, ml_error *e);

/* "hostname, cpu model, n cpus, BLAS config" into buf. */
void machine_describe(char *buf, size_t cap);
/* Peak resident memory of this process in MiB. */
double peak_rss_mib(void);

#endif
