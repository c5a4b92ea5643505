/* slurm.h: a sweep as a Slurm job array, written out as one script a person
 * can read and submit.
 *
 * The script holds the sbatch settings as #SBATCH lines and three modes:
 *   bash SCRIPT          (or `sbatch SCRIPT`, or `bash SCRIPT submit`) submits
 *                        the job array and then the merge job, which depends
 *                        on the array with afterany (it runs even when a task
 *                        failed, and merges what there is);
 *   SCRIPT array         one array task: memlab run SPEC --shard ID/N into
 *                        DB's shard file (shard.h names it);
 *   SCRIPT merge         memlab merge --shards N DB, then memlab status.
 * The two sbatch commands are also spelled out in its comments, for people
 * who submit by hand. Nothing is submitted by memlab itself.
 *
 * The script works from the directory memlab slurm ran in (it cd's there),
 * so paths in the spec and relative --db paths mean what they meant when it
 * was written. Loading and checking the spec, choosing the array size and
 * printing are main.c's; the meaning of --shard is shard.c's. */
#ifndef MEMLAB_SLURM_H
#define MEMLAB_SLURM_H

#include <stdio.h>

#include "error.h"

typedef struct slurm_opts {
    const char *spec;            /* the spec, as memlab run takes it */
    const char *db;              /* the merged database; shards sit beside it */
    const char *preset;          /* NULL: none */
    const char *const *sets;     /* --set pass-through */
    int n_sets;
    int jobs;                    /* memlab run --jobs of each task (>= 1) */
    long array_size;             /* tasks of the array = shards (>= 1) */
    int cpus_per_task;           /* 0: jobs */
    const char *time, *partition, *mem, *account; /* NULL: the cluster's defaults */
    const char *job_name;        /* NULL: "memlab-" and the sweep's name */
    const char *memlab;          /* the binary the jobs run; NULL: this one */
    const char *workdir;         /* where the jobs run; NULL: the current directory */
    const char *sweep_name;      /* for the comments and the default job name */
    long runs;                   /* distinct runs of the sweep, for the comments */
    const char *command;         /* the command line that wrote it, for the header */
} slurm_opts;

/* slurm_check_value: whether text may go on an #SBATCH line (letters,
 * digits and . _ : , @ % + = / -; not empty). Returns 0, or -1 naming
 * option and text. */
int slurm_check_value(const char *option, const char *text, ml_error *e);

/* slurm_write_script: the script for o to out. Returns 0, or -1 (a value
 * refused by slurm_check_value, a path that cannot be resolved, a write
 * error). */
int slurm_write_script(const slurm_opts *o, FILE *out, ml_error *e);

#endif
