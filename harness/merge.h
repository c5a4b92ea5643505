/* merge.h: putting results databases together (the shards of a sweep run on
 * a cluster, or any memlab databases).
 *
 * merge_files copies into OUT, per config hash, the best copy found in the
 * inputs: a finished run, else a diverged one, else a failed, interrupted or
 * running one, with all its metrics, when OUT does not already hold a copy
 * at least as good. A run present in several inputs is therefore kept once,
 * the finished copy wins, and merging the same files again changes nothing.
 * Sweeps are merged by (name, resolved_hash): the shards of one sweep record
 * the same row, OUT keeps one. Everything is written in one transaction:
 * after an error OUT is as it was (and a new OUT is removed).
 *
 * Refused, naming the file: an input that is not a memlab database or has
 * another schema version, an input that is OUT itself; and two runs with the
 * same config hash whose configs differ (apart from name and description,
 * which the hash leaves out): the files come from incompatible versions of
 * memlab or one is damaged, and merging would mix results of different
 * configs under one hash.
 *
 * Rows are never deleted. In the one case where the schema's rule "one done
 * row per config among sweep runs" would be broken (OUT holds a diverged copy
 * linked to a sweep and an input a finished one), the diverged row stays as
 * history and loses its sweep link. Which runs a sweep has and what the
 * states mean are db.c's and sweep.c's; naming the shard files is shard.c's.
 * Only sweeps, runs and metrics are merged: tables derived from them (fits)
 * are to be derived again from the merged file. */
#ifndef MEMLAB_MERGE_H
#define MEMLAB_MERGE_H

#include "error.h"

typedef struct merge_result {
    int created;         /* OUT did not exist before */
    long hashes;         /* distinct config hashes over the inputs */
    long runs_added;     /* run rows copied into OUT */
    long runs_kept;      /* hashes for which OUT already held a copy at least as good */
    long metrics_added;  /* metric rows copied */
    long sweeps_added;   /* sweep rows new to OUT */
    long unlinked;       /* diverged rows of OUT unlinked from their sweep (see above) */
    long added_status[5]; /* runs added by status: finished, diverged, failed, interrupted,
                             running */
} merge_result;

/* merge_files: merge the n_in databases in_paths (read only) into the
 * database out_path (created when missing). Returns 0 with *r filled, or -1
 * with nothing changed. */
int merge_files(const char *out_path, const char *const *in_paths, int n_in, merge_result *r,
                ml_error *e);

#endif
