/* bench_row.h: what memlab bench measures, shared by the measuring
 * (bench.c) and the report (bench_report.c). Internal to memlab bench. */
#ifndef MEMLAB_BENCH_ROW_H
#define MEMLAB_BENCH_ROW_H

#include <stdio.h>

#include "bench.h"
#include "error.h"
#include "model.h"
#include "spec.h"

#define MAX_LIST 16
#define JOBS_RUNS 4 /* independent runs in the --jobs sweep */

typedef struct bench_timing {
    int ok;            /* measured */
    char note[200];    /* why not */
    double med, lo, hi;
    int n;             /* timed steps */
    double cpu;        /* median CPU seconds per step of the process, all threads */
    double rss_mib;
    /* memlab only (0 for the twin): medians per step of the wall seconds
     * inside matrix products (matmul.c's clock) and of gradient clipping and
     * AdamW */
    double prod, optim;
    /* memlab only: medians per step of each phase's seconds outside the
     * products (model.h's phase clock: embedding, norms, conv, mixer, head) */
    double phase[MODEL_PHASES];
} bench_timing;

typedef struct bench_row {
    char mixer[32];
    int d, L, threads, full;
    run_config cfg;
    int S;              /* rows through the LM head */
    double flops;       /* per step: the formula's, else the counted (0: neither) */
    double flops_counted; /* per step: the matrix products memlab ran (matmul.c) */
    double sgemm;       /* SGEMM GFLOP/s around the row: the better median of before and after */
    double fma;         /* the measured FMA peak, GFLOP/s, of the row's thread count */
    double bf16;        /* the bfloat16 dot-product peak, bf16 rows only (else 0) */
    double act_mixer;   /* floats one layer's mixer saves (its act_size) */
    double act_formula; /* the same from the formula, 0 = none */
    double act_model;   /* floats of all activations and scratch of the model */
    double steal;       /* share of the machine's CPU time the hypervisor gave to other
                         * guests while the row ran (/proc/stat; NAN: unknown) */
    bench_timing ml, pt; /* memlab, PyTorch */
    double exponent, pt_exponent; /* time per token ~ L^exponent, NAN = not fitted */
    long long run_id;
} bench_row;

/* Pairs of sweeps timed, --jobs 1 then --jobs 2 in each: the second core of a
 * shared machine comes and goes, so one pair can be off by 15% either way. */
#define JOBS_PAIRS 3

typedef struct jobs_result {
    int ok;
    char note[200];
    double wall[2];  /* median seconds for the sweep with --jobs 1, --jobs 2 */
    double ratio[JOBS_PAIRS]; /* per pair, ascending */
    int steps;       /* training steps per run */
} jobs_result;

typedef struct mixer_formula {
    const char *name;
    double (*flops)(const run_config *cfg, int B, int T); /* one layer's mixer, one step */
    /* the last layer's when only rows[S] are wanted (NULL: the mixer computes
     * every row anyway, as flops) */
    double (*rows_flops)(const run_config *cfg, int B, int T, const int *rows, int S);
    double (*act)(const run_config *cfg, int B, int T);   /* one layer's saved floats */
    const char *act_text;
} mixer_formula;

typedef struct bench_ctx {
    const bench_opts *o;
    char machine[512], core[160], torch_version[96];
    int threads[MAX_LIST], n_threads;
    double peak_med[MAX_LIST], peak_best[MAX_LIST]; /* at the start */
    double fma[MAX_LIST];                           /* the FMA peak, per thread count */
    double bf16[MAX_LIST]; /* the bf16 dot-product peak, when the products are bf16 */
    double load_start, load_end;
    double t_start, t_end;
    char started[32];
    jobs_result jobs;
} bench_ctx;

/* The FLOP and activation formulas of a mixer (bench.c), NULL when it has none. */
const mixer_formula *bench_formula_of(const char *mixer);

/* ---- bench_report.c ---- */

/* Least-squares slope of log(time per token) against log L over the rows of
 * key's (mixer, d, threads, head) group, memlab's or (torch) the twin's; NAN
 * with fewer than two lengths. */
double bench_fit_exponent(const bench_row *rows, int n, const bench_row *key, int torch);
/* PyTorch's step time over memlab's: with the same head, and the full-head
 * twin against this row (memlab as run by default against PyTorch as
 * researchers run it); in wall time and in CPU time. NAN when missing. */
double bench_ratio_same(const bench_row *r);
double bench_ratio_same_cpu(const bench_row *r);
double bench_ratio_vs_full(const bench_row *rows, int n, const bench_row *r);
double bench_ratio_vs_full_cpu(const bench_row *rows, int n, const bench_row *r);
/* The markdown report at path. */
int bench_write_report(const char *path, const bench_ctx *c, const bench_row *rows, int n,
                       ml_error *e);

#endif
