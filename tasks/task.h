/* task.h: the task table.
 *
 * A task is one file that fills one ml_task: its config keys (a schema
 * table over its own config struct), cross-key validation, its vocabulary and
 * sequence length, and a generator. Generation is per example and a pure
 * function of (config, seed, split, index): any example of any split can be
 * produced alone, on any machine, so train and test streams never overlap and
 * batches need no stored dataset. Adding a task is one file plus one line in
 * tasks.c. */
#ifndef MEMLAB_TASK_H
#define MEMLAB_TASK_H

#include <stdint.h>

#include "error.h"
#include "schema.h"

enum { SPLIT_TRAIN = 0, SPLIT_TEST = 1 };

typedef struct ml_task {
    const char *name;
    const char *help;
    const ml_field *fields; /* keys of the task section besides `name` */
    size_t cfg_size;        /* size of the task's config struct */
    /* Cross-key constraints; -1 with a clear message when impossible. */
    int (*validate)(const void *cfg, ml_error *e);
    int (*vocab_size)(const void *cfg);
    int (*seq_len)(const void *cfg);
    /* Example `index` of `split`: input[T] tokens, target[T] with -1 where
     * the position is not supervised. */
    void (*generate)(const void *cfg, uint64_t seed, int split, long index, int *input,
                     int *target);
    /* Length of the context prefix for context/question models, or -1 when
     * the task has no such boundary. */
    int (*context_len)(const void *cfg);
} ml_task;

/* NULL-terminated list of all tasks (tasks.c). */
extern const ml_task *const ml_tasks[];
/* The task named name, or NULL. */
const ml_task *task_find(const char *name);

#endif
