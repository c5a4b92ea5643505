/* task.h: the task table.
 *
 * A task is one file that fills one ml_task: its config keys (a schema
 * table over its own config struct), cross-key validation, its vocabulary and
 * sequence length, and a generator. Generation is per example and a pure
 * function of (config, data, seed, split, index): any example of any split can
 * be produced alone, on any machine, so train and test streams never overlap
 * and batches need no stored dataset. Adding a task is one file plus one line
 * in tasks.c.
 *
 * A task either generates examples (generate) or is training-free
 * (measure). Everything else past seq_len is optional (NULL or 0 = not
 * used):
 *   open/close    data a task reads once per run (the LM's text file); what
 *                 open returns is passed to generate as `data`. validate must
 *                 already refuse a config whose data cannot be opened, so that
 *                 a bad path fails before any run starts;
 *   split_size    how many distinct examples a split has (evaluation covers at
 *                 most that many);
 *   context_len   the context/question boundary;
 *   per_class     score wants per-target-token counts (macro accuracy);
 *   score         the metrics of an evaluation; default: "accuracy", micro
 *                 (correct supervised positions / supervised positions);
 *   n_slices/slice  extra test sets of the same task, evaluated at the end of
 *                 a run with the trained model (MQAR at several N and L);
 *   measure       a training-free task: the trainer calls it instead of
 *                 building and training a model (the capacity probe). */
#ifndef MEMLAB_TASK_H
#define MEMLAB_TASK_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "schema.h"

enum { SPLIT_TRAIN = 0, SPLIT_TEST = 1 };

/* Most metrics a score or a measurement returns. */
#define TASK_MAX_METRICS 8

/* One named value of an evaluation or a measurement. */
typedef struct ml_metric {
    char split[16]; /* "test" or "model" */
    char name[64];  /* e.g. "accuracy", "bits_per_byte" */
    double value;
} ml_metric;

/* Totals of one evaluation (train_evaluate), from which a task scores. */
typedef struct ml_eval_totals {
    long examples;          /* examples evaluated */
    long positions;         /* supervised positions over them */
    long right;             /* of which the argmax token was the target */
    double loss_sum;        /* cross-entropy in nats summed over supervised positions
                               (auxiliary losses of the mixers excluded) */
    double example_acc_sum; /* sum over examples with a supervised position of
                               their own accuracy (Zoology's per-example mean) */
    long examples_scored;   /* examples with at least one supervised position */
    int n_classes;          /* vocabulary size when the task has per_class, else 0 */
    const long *class_right, *class_count; /* [n_classes] per target token, or NULL */
} ml_eval_totals;

typedef struct ml_task {
    const char *name;
    const char *help;
    const ml_field *fields; /* keys of the task section besides `name` */
    size_t cfg_size;        /* size of the task's config struct */
    /* Cross-key constraints; -1 with a clear message ("key: ...") when
     * impossible. */
    int (*validate)(const void *cfg, ml_error *e);
    int (*vocab_size)(const void *cfg);
    /* Length of the training sequences. */
    int (*seq_len)(const void *cfg);
    /* Load the task's data for one run into *data (NULL = the task has none). */
    int (*open)(const void *cfg, void **data, ml_error *e);
    void (*close)(void *data);
    /* Example `index` of `split`: input[T] tokens, target[T] with -1 where
     * the position is not supervised (T = seq_len(cfg)); data is what open
     * returned, NULL without open. */
    void (*generate)(const void *cfg, const void *data, uint64_t seed, int split, long index,
                     int *input, int *target);
    /* Distinct examples in split (indices beyond repeat), 0 = unbounded. */
    long (*split_size)(const void *cfg, const void *data, int split);
    /* Length of the context prefix for context/question models, or -1 when
     * the task has no such boundary. */
    int (*context_len)(const void *cfg);
    int per_class; /* 1: fill class_right/class_count for score */
    /* Metrics of an evaluation into out[cap]; returns how many. out[0] must
     * be "accuracy" (the headline: progress line, summary). */
    int (*score)(const void *cfg, const ml_eval_totals *t, ml_metric *out, int cap);
    /* Extra test sets: how many, and slice i as a full config of this task
     * (cfg_size bytes) with a label for metric names ("N=8,L=128"). */
    int (*n_slices)(const void *cfg);
    void (*slice)(const void *cfg, int i, void *slice_cfg, char *label, size_t cap);
    /* Training-free: measure with seed, metrics into out[cap]; returns how
     * many, or -1 with e set. */
    int (*measure)(const void *cfg, long seed, ml_metric *out, int cap, ml_error *e);
} ml_task;

/* NULL-terminated list of all tasks (tasks.c). */
extern const ml_task *const ml_tasks[];
/* The task named name, or NULL. */
const ml_task *task_find(const char *name);

/* task_open: the task's data for one run (*data = NULL when it has none). */
int task_open(const ml_task *t, const void *cfg, void **data, ml_error *e);
/* task_close: release what task_open returned (NULL is fine). */
void task_close(const ml_task *t, void *data);
/* task_max_seq_len: the longest sequence a model must take for this config:
 * seq_len or the longest evaluation slice. */
int task_max_seq_len(const ml_task *t, const void *cfg);
/* task_eval_examples: how many examples an evaluation asking for `want`
 * examples of split covers (want capped by split_size). */
long task_eval_examples(const ml_task *t, const void *cfg, const void *data, int split,
                        long want);
/* task_score: the task's metrics of an evaluation (its score, or the default
 * micro accuracy); out[0] is "accuracy". Returns the count. */
int task_score(const ml_task *t, const void *cfg, const ml_eval_totals *tot, ml_metric *out,
               int cap);
/* Accuracies from totals: micro = right / positions; macro = mean over target
 * tokens that occur of their own accuracy (needs per-class counts; 0 when
 * there are none). */
double task_accuracy_micro(const ml_eval_totals *t);
double task_accuracy_macro(const ml_eval_totals *t);
/* task_score_macro: a score for tasks that report both, as MAD does:
 * "accuracy" (micro, the headline) and "accuracy_macro". Needs per_class. */
int task_score_macro(const void *cfg, const ml_eval_totals *t, ml_metric *out, int cap);
/* task_metric: fill out with ("test", name, value). */
void task_metric(ml_metric *out, const char *split, const char *name, double value);

#endif
