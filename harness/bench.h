/* bench.h: the training-step benchmark (memlab bench).
 *
 * For each configuration of a grid (mixer x d_model x L x threads x head) it
 * times full training steps (forward, backward, gradient clipping, AdamW) of a
 * 2-layer MQAR model, batch 64, V 8192, conv 4, no MLP, N = L/16 key-value
 * pairs, and next to it the same step of the PyTorch twin
 * (tests/twin/bench_torch.py) when /usr/bin/python3 can import torch. It
 * measures OpenBLAS SGEMM 1024^3 at each thread count in the same run, and
 * reports per configuration: median and spread of the step time, tokens/s,
 * analytic GFLOP per step and achieved GFLOP/s, the fraction of the measured
 * SGEMM peak, peak resident memory, the mixer's activation memory against its
 * formula, the ratios to PyTorch and the exponent of time per token against L.
 * Each measured configuration becomes a run in the database (metrics split
 * "bench", and "torch" for the twin); the report is markdown. Last, it times
 * one small sweep of independent runs with `memlab run --jobs 1` and
 * `--jobs 2` (child processes) for the parallel-sweep throughput, recorded
 * as a run named bench-jobs (metrics split "jobs") and in the report.
 *
 * Timings are medians of repeated steps with their spread: the machine may be
 * shared and noisy, so only side-by-side ratios of one run mean much. No test
 * asserts a timing. */
#ifndef MEMLAB_BENCH_H
#define MEMLAB_BENCH_H

#include <stddef.h>
#include <stdio.h>

#include "error.h"

typedef struct bench_opts {
    const char *db_path;      /* NULL: no database */
    const char *report_path;  /* NULL: no report */
    const char *mixers;       /* comma-separated mixer names; NULL or "all": every mixer */
    const char *dims;         /* comma-separated d_model values; NULL: 64,128,256 */
    const char *lens;         /* comma-separated L; NULL: 64,256,1024 */
    const char *threads;      /* comma-separated thread counts; NULL: 1,2 */
    const char *heads;        /* "supervised", "full" or both; NULL: both */
    int batch;                /* sequences per step */
    int steps;                /* most timed steps per configuration */
    int min_steps;            /* fewest timed steps, whatever the budget */
    double budget_s;          /* stop timing a configuration after this many seconds */
    int quick;                /* smoke run: d 64, L 64, 1 thread, 3 steps (lists still apply) */
    int torch;                /* 1: time the PyTorch twin when torch is importable */
    int jobs;                 /* 1: time a sweep with `memlab run --jobs 1` and `--jobs 2` */
    int jobs_steps;           /* training steps of each run of that sweep */
    const char *matmul;       /* train.matmul of memlab's rows: "fp32" (NULL) or "bf16" */
    const char *self;         /* the memlab binary for that (default /proc/self/exe) */
    const char *python;       /* interpreter of the twin */
    const char *torch_script; /* the twin */
    FILE *progress;           /* one line per measurement; NULL: silent */
} bench_opts;

/* The defaults: the whole grid, 10 steps, at least 3, 10 s per configuration,
 * PyTorch on (/usr/bin/python3 tests/twin/bench_torch.py), the --jobs sweep
 * on, no progress. */
void bench_defaults(bench_opts *o);

/* The usage text of `memlab bench` (its options map onto bench_opts). */
extern const char bench_usage[];

/* Parse the arguments after the verb into *o (which holds the defaults).
 * Returns 0, 1 when --help was asked (print bench_usage), or -1 with the
 * problem in e. The lists are checked by bench_run. */
int bench_parse_args(bench_opts *o, int argc, char **argv, ml_error *e);

/* Matrix-product FLOPs of one training step (forward, backward) of the model
 * of cfg on B sequences of T tokens with targets target[B*T] (-1: not
 * supervised), V the vocabulary, from the analytic formulas at the top of
 * bench.c; 0 for a mixer without one. The tests hold it to the count of the
 * products run. */
struct run_config;
double bench_step_flops(const struct run_config *cfg, int B, int T, int V, const int *target);

/* Run the benchmark. Returns 0, or -1 with e set (a configuration the mixer
 * refuses, or a PyTorch twin that is missing, is a skipped row, not an error). */
int bench_run(const bench_opts *o, ml_error *e);

#endif
