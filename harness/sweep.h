/* sweep.h: a family of runs from one spec (the `sweep` section).
 *
 *   sweep:
 *     grid:                      # cartesian product over dotted keys
 *       model.mixer: [softmax, linear]
 *       model.d_model: [32, 64]
 *     zip:                       # keys that move together (equal lengths);
 *       task.seq_len: [64, 128]  # a mapping is one group, a list of
 *       task.num_kv_pairs: [4, 8]#  mappings several groups
 *     seeds: 3                   # train.seed 0, 1, 2 (or a list: [0, 7])
 *
 * Axes. Each grid key is one axis, each zip group one axis, seeds one axis,
 * in the order they are written in the sweep section (after merging the
 * layers: a base's axes first, keys a later layer adds after). Run k of the
 * expansion is the mixed-radix number k over the axes with the LAST axis
 * varying fastest: the order is stable and documented, runs are claimed in
 * it, and it may be used to shard a sweep. Runs whose resolved configs are
 * identical (same config hash) are kept once, at their first place.
 *
 * Every run of the expansion is checked before anything runs (keys, values,
 * cross-key constraints; a bad list element is reported at that element),
 * and so is every preset of the spec; all problems are reported at once
 * (spec.h's format). A spec without a sweep section is a sweep of one run. */
#ifndef MEMLAB_SWEEP_H
#define MEMLAB_SWEEP_H

#include "config.h"
#include "error.h"
#include "spec.h"

/* Most runs one sweep may expand to (before merging duplicates). */
#define SWEEP_MAX_RUNS 10000L

typedef struct ml_sweep ml_sweep;

typedef struct sweep_opts {
    const char *preset;        /* presets.NAME to apply, NULL for none */
    const char *const *sets;   /* "dotted.key=value" overrides, applied last */
    int n_sets;
    int no_base;               /* refuse `base:` (the fuzz target reads no files) */
    long max_runs;             /* 0: SWEEP_MAX_RUNS */
    int check_presets;         /* also check every other preset (memlab run: 1) */
} sweep_opts;

/* sweep_load_file / _string: read, merge, expand and check a spec. Returns 0
 * with *out set (free with sweep_free), or -1 with every problem in e and
 * *out NULL. o may be NULL (defaults). */
int sweep_load_file(const char *path, const sweep_opts *o, ml_sweep **out, ml_error *e);
int sweep_load_string(const char *text, size_t len, const char *name, const sweep_opts *o,
                      ml_sweep **out, ml_error *e);
void sweep_free(ml_sweep *s);

/* The sweep's name: the spec's `name`, else the file name without its
 * directory and extension. */
const char *sweep_name(const ml_sweep *s);
/* Distinct runs, and runs of the expansion before merging duplicates. */
long sweep_size(const ml_sweep *s);
long sweep_expanded(const ml_sweep *s);
/* The warnings of the spec's runs (spec_doc_warnings: valid configs known to
 * fail), one line each into buf[cap]; returns how many. */
int sweep_warnings(const ml_sweep *s, char *buf, size_t cap);
/* The resolved config of run i (0 <= i < sweep_size), name set to the
 * sweep's name when the spec gives none. Returns 0 or -1. */
int sweep_config(const ml_sweep *s, long i, run_config *out, ml_error *e);
/* The config hash of run i (config_hash of sweep_config). */
const char *sweep_hash(const ml_sweep *s, long i);
/* Where run i sits in the expansion (0-based). */
long sweep_position(const ml_sweep *s, long i);
/* The swept keys, dotted ("model.d_model"; seeds give "train.seed"), in
 * axis order; the export's columns. */
int sweep_n_keys(const ml_sweep *s);
const char *sweep_key(const ml_sweep *s, int k);
/* sweep_describe: "key=value key=value" of run i's swept keys into buf. */
void sweep_describe(const ml_sweep *s, long i, char *buf, size_t cap);
/* The resolved spec (layers, preset and overrides applied) as JSON: loading
 * it again with sweep_load_string gives the same runs. */
const char *sweep_resolved(const ml_sweep *s);
/* SHA-256 of sweep_resolved, 64 hex digits: with the name, the identity of
 * the sweep in the results database. */
const char *sweep_resolved_hash(const ml_sweep *s);
/* The text of the spec file as written, and its file name. */
const char *sweep_source(const ml_sweep *s);
const char *sweep_file(const ml_sweep *s);

#endif
