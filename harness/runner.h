/* runner.h: running a sweep into the results database, resumably and in
 * parallel.
 *
 * runner_run records the sweep (db_sweep_register), finds the runs not yet
 * done, and works through them in expansion order with `jobs` workers (one
 * in-process worker for jobs = 1, else forked processes, each with a
 * single-threaded BLAS and its own database connection). A worker claims a
 * run atomically before training it (db_run_claim), so two workers, or two
 * `memlab run` processes on one database, never train a config at the same
 * time, and a config finished or diverged once is never trained again. A run
 * left 'running' by a process that died (crash, kill -9) is marked
 * interrupted and trained again from the start when a later claim meets it.
 *
 * Sharding: with o->shard only the runs the shard owns (shard.h) are looked
 * at, counted and trained; the sweep row recorded is the whole sweep's, the
 * same in every shard's database, so that merge.c finds one sweep.
 *
 * Signals: when *stop becomes non-zero (SIGINT, SIGTERM) the workers finish
 * their current step, record their runs as interrupted and stop; forked
 * workers get SIGINT forwarded, and SIGTERM when the parent dies.
 *
 * Output (stderr, none with quiet): one line per run that ends ("[3/12]
 * finished model.d_model=64 ..."), and with progress a live line rewritten
 * in place (runs done / total, the current runs' step and loss, ETA). */
#ifndef MEMLAB_RUNNER_H
#define MEMLAB_RUNNER_H

#include <signal.h>
#include <stdio.h>

#include "error.h"
#include "shard.h"
#include "sweep.h"

#define RUNNER_MAX_JOBS 64

typedef struct runner_opts {
    const char *db_path;
    int jobs;                      /* workers, 1..RUNNER_MAX_JOBS */
    int progress;                  /* live progress line (stderr is a terminal) */
    int quiet;                     /* print nothing */
    volatile sig_atomic_t *stop;   /* set asynchronously: stop as interrupted */
    const ml_shard *shard;         /* NULL: every run; else only the runs it owns */
} runner_opts;

typedef struct runner_result {
    long total;        /* distinct runs of the sweep (of its shard, with o->shard) */
    long done_before;  /* already finished or diverged when it started */
    long finished, diverged, failed, interrupted; /* outcomes of runs trained now */
    long elsewhere;    /* claimed meanwhile by another process (done or running) */
    long long sweep_id;
    int stopped;       /* *stop was raised */
    int worker_errors; /* workers that stopped on an error or died */
} runner_result;

/* Run every run of s not yet done into the database at o->db_path. Returns
 * 0 when the loop completed or was stopped (see *r), -1 on an error that
 * prevented it (the database, fork); a run that fails is counted in
 * r->failed, recorded as failed, and the sweep goes on. */
int runner_run(const ml_sweep *s, const runner_opts *o, runner_result *r, ml_error *e);

/* Print the expanded runs of s (those shard owns, unless it is NULL) and
 * their state in the database at db_path (missing file: nothing done) to
 * out, without writing anything. */
int runner_dry_run(const ml_sweep *s, const char *db_path, const ml_shard *shard, FILE *out,
                   ml_error *e);

#endif
