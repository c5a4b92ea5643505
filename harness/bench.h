/* bench.h: the training-step benchmark (memlab bench).
 *
 * Times forward + backward + AdamW of 2-layer MQAR models for each mixer and
 * size, records each configuration as a run with its timing metrics, and
 * writes a markdown report. Timings are medians of repeated steps with their
 * spread: the machine is shared and noisy, so only side-by-side ratios from one
 * run of the benchmark are meaningful. No test asserts a timing. */
#ifndef MEMLAB_BENCH_H
#define MEMLAB_BENCH_H

#include "error.h"

typedef struct bench_opts {
    const char *db_path;     /* NULL: no database */
    const char *report_path; /* NULL: no report */
    int steps;               /* timed steps per configuration */
    int threads;             /* BLAS threads */
    int quick;               /* only the smallest configuration */
} bench_opts;

int bench_run(const bench_opts *o, ml_error *e);

#endif
