/* shard.h: one sweep split among many processes (cluster jobs, MPI ranks).
 *
 * A shard is "I of N": of the sweep's distinct runs, in the stable expanded
 * order of sweep.h, this process runs run i when i mod N == I (round robin).
 * Round robin rather than contiguous blocks because a grid's cost usually
 * grows along an axis (d_model, seq_len, steps): blocks would give the last
 * shard all the large runs, round robin deals every shard its share of each
 * size. N = 1 is the whole sweep.
 *
 * Where the shard comes from (shard_resolve), in this order:
 *   1. --shard I/N on the command line: exactly that, the environment unread;
 *   2. --no-shard-env: the whole sweep, the environment unread;
 *   3. the environment, as two factors multiplied together:
 *        a Slurm job array: SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT
 *          (with SLURM_ARRAY_TASK_MIN and _STEP: --array=1-7:3 gives shards
 *          0, 1, 2 of 3; an irregular array such as 1,2,7 is refused);
 *        the ranks of a parallel launch, the first present of:
 *          OMPI_COMM_WORLD_RANK of OMPI_COMM_WORLD_SIZE (Open MPI's mpirun),
 *          PMI_RANK of PMI_SIZE (MPICH, Intel MPI),
 *          PMIX_RANK of PMI_SIZE or SLURM_STEP_NUM_TASKS / SLURM_NTASKS,
 *          SLURM_PROCID of SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), only
 *            inside an srun step (SLURM_STEP_ID set): a batch script itself
 *            has SLURM_PROCID=0 and the allocation's task count, which would
 *            otherwise run a quarter of the sweep in an `sbatch -n 4` script;
 *      shard = array task * ranks + rank, of array tasks * ranks.
 * A single task (srun -n 1, SLURM_NTASKS=1, an array of one) is N = 1.
 *
 * Every shard writes its own database (shard_db_path), because SQLite's
 * locking is not reliable on the network filesystems clusters share; merge.c
 * puts the shards together. What a run is and how the runner skips the runs
 * of other shards are sweep.c's and runner.c's. */
#ifndef MEMLAB_SHARD_H
#define MEMLAB_SHARD_H

#include <stddef.h>

#include "error.h"

/* Most shards (and most ranks or array tasks of each factor). */
#define SHARD_MAX 1000000L

typedef struct ml_shard {
    long index, count; /* this process owns run i when count <= 1 or i % count == index */
    char source[200];  /* where it came from, for people: "--shard", "OMPI_COMM_WORLD_RANK=1
                          of OMPI_COMM_WORLD_SIZE=2", ...; "" for the whole sweep */
} ml_shard;

/* A lookup of one environment variable (getenv, or a test's table). */
typedef char *(*shard_getenv_fn)(const char *name);

/* shard_parse: "I/N" (0 <= I < N <= SHARD_MAX, decimal, nothing else) into
 * *out with source "--shard". Returns 0, or -1 naming the text. */
int shard_parse(const char *text, ml_shard *out, ml_error *e);

/* shard_from_env: the shard the environment describes (rules above), read
 * through get (NULL: getenv). No variable set: the whole sweep (count 1,
 * source ""). A variable that is set but is not a whole number in range, a
 * rank without a size, a rank not below its size, or an irregular job array
 * is an error naming the variables and suggesting --shard or --no-shard-env. */
int shard_from_env(shard_getenv_fn get, ml_shard *out, ml_error *e);

/* shard_resolve: the rules 1-3 above: flag (may be NULL) wins, then no_env,
 * then the environment. */
int shard_resolve(const char *flag, int no_env, shard_getenv_fn get, ml_shard *out,
                  ml_error *e);

/* shard_owns: whether run i (0-based, expanded order) belongs to s. */
int shard_owns(const ml_shard *s, long i);

/* shard_size: how many of the runs 0 .. n-1 belong to s. */
long shard_size(const ml_shard *s, long n);

/* shard_db_path: the database of shard index of count for the database db:
 * ".shard-I-of-N" goes before the extension of the file name, or at the end
 * when it has none: results/x.db -> results/x.shard-1-of-4.db, results/x ->
 * results/x.shard-1-of-4. count <= 1 gives db itself. Returns 0, or -1 when
 * buf[cap] is too small. */
int shard_db_path(const char *db, long index, long count, char *buf, size_t cap,
                  ml_error *e);

#endif
