/* shard.c: which runs of a sweep this process runs, and where it records
 * them (see shard.h for the rules).
 *
 * Everything here is arithmetic on a few numbers read from the command line
 * or the environment: no file is touched. Skipping the runs of other shards
 * is runner.c's, merging the shard databases merge.c's. */
#include "shard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* parse_whole: a decimal whole number in [lo, hi] with nothing around it
 * (no sign, no spaces). Returns 0, or -1. */
static int parse_whole(const char *s, long lo, long hi, long *out) {
    if (!s || *s < '0' || *s > '9') return -1;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* Contract in shard.h. */
int shard_parse(const char *text, ml_shard *out, ml_error *e) {
    memset(out, 0, sizeof *out);
    out->count = 1;
    const char *slash = text ? strchr(text, '/') : NULL;
    char left[32];
    long i, n;
    if (!slash || (size_t)(slash - text) >= sizeof left)
        return ML_FAIL(e, "--shard takes I/N (shard I of N, 0 <= I < N), got '%s'",
                       text ? text : "");
    memcpy(left, text, (size_t)(slash - text));
    left[slash - text] = '\0';
    if (parse_whole(slash + 1, 1, SHARD_MAX, &n) || parse_whole(left, 0, SHARD_MAX, &i))
        return ML_FAIL(e, "--shard takes I/N with whole numbers 0 <= I < N <= %ld, got '%s'",
                       SHARD_MAX, text);
    if (i >= n)
        return ML_FAIL(e, "--shard %s: shards are numbered from 0, so I must be below N (%ld)",
                       text, n);
    out->index = i;
    out->count = n;
    snprintf(out->source, sizeof out->source, "--shard");
    return 0;
}

/* get_var: the value of name, NULL when unset or empty. */
static const char *get_var(shard_getenv_fn get, const char *name) {
    const char *v = get(name);
    return v && *v ? v : NULL;
}

/* env_whole: variable name as a whole number in [lo, hi]; an error naming
 * it otherwise. */
static int env_whole(shard_getenv_fn get, const char *name, long lo, long hi, long *out,
                     ml_error *e) {
    const char *v = get_var(get, name);
    if (parse_whole(v, lo, hi, out))
        return ML_FAIL(e,
                       "%s=%s is not a whole number in [%ld, %ld]; to choose the shard give "
                       "--shard I/N, to run the whole sweep --no-shard-env",
                       name, v ? v : "", lo, hi);
    return 0;
}

/* array_factor: the Slurm job array's task (a of n_a), or 0 of 1 when
 * SLURM_ARRAY_TASK_ID is unset. */
static int array_factor(shard_getenv_fn get, long *a, long *n_a, char *src, size_t cap,
                        ml_error *e) {
    *a = 0;
    *n_a = 1;
    if (!get_var(get, "SLURM_ARRAY_TASK_ID")) return 0;
    long id, count, min = 0, step = 1, max;
    if (env_whole(get, "SLURM_ARRAY_TASK_ID", 0, 1L << 40, &id, e)) return -1;
    if (!get_var(get, "SLURM_ARRAY_TASK_COUNT"))
        return ML_FAIL(e, "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; give "
                       "--shard I/N, or --no-shard-env for the whole sweep");
    if (env_whole(get, "SLURM_ARRAY_TASK_COUNT", 1, SHARD_MAX, &count, e)) return -1;
    if (get_var(get, "SLURM_ARRAY_TASK_MIN") &&
        env_whole(get, "SLURM_ARRAY_TASK_MIN", 0, id, &min, e))
        return -1;
    if (get_var(get, "SLURM_ARRAY_TASK_STEP") &&
        env_whole(get, "SLURM_ARRAY_TASK_STEP", 1, 1L << 40, &step, e))
        return -1;
    max = min + (count - 1) * step;
    if (get_var(get, "SLURM_ARRAY_TASK_MAX") &&
        env_whole(get, "SLURM_ARRAY_TASK_MAX", min, 1L << 40, &max, e))
        return -1;
    /* A regular range MIN-MAX:STEP holds exactly COUNT tasks; anything else
     * (--array=1,2,7) cannot be numbered 0 .. COUNT-1 from the task's id. */
    if ((id - min) % step != 0 || (id - min) / step >= count ||
        (max - min) % step != 0 || (max - min) / step + 1 != count)
        return ML_FAIL(e,
                       "the job array (SLURM_ARRAY_TASK_ID=%ld, _MIN=%ld, _MAX=%ld, _STEP=%ld, "
                       "_COUNT=%ld) is not a regular range MIN-MAX:STEP, so its task cannot "
                       "name a shard; give --shard I/N, or --no-shard-env",
                       id, min, max, step, count);
    *a = (id - min) / step;
    *n_a = count;
    snprintf(src, cap, "SLURM_ARRAY_TASK_ID=%ld of SLURM_ARRAY_TASK_COUNT=%ld", id, count);
    return 0;
}

/* rank_factor: the rank of a parallel launch (t of n_t), or 0 of 1 when
 * none of the rank variables applies (shard.h lists them in order). */
static int rank_factor(shard_getenv_fn get, long *t, long *n_t, char *src, size_t cap,
                       ml_error *e) {
    *t = 0;
    *n_t = 1;
    const char *rank = NULL, *size = NULL;
    if (get_var(get, "OMPI_COMM_WORLD_RANK")) {
        rank = "OMPI_COMM_WORLD_RANK";
        size = "OMPI_COMM_WORLD_SIZE";
    } else if (get_var(get, "PMI_RANK")) {
        rank = "PMI_RANK";
        size = "PMI_SIZE";
    } else if (get_var(get, "PMIX_RANK")) {
        rank = "PMIX_RANK";
        size = get_var(get, "PMI_SIZE")               ? "PMI_SIZE"
               : get_var(get, "SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS"
                                                      : "SLURM_NTASKS";
    } else if (get_var(get, "SLURM_PROCID") && get_var(get, "SLURM_STEP_ID")) {
        rank = "SLURM_PROCID";
        size = get_var(get, "SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : "SLURM_NTASKS";
    } else {
        return 0;
    }
    if (!get_var(get, size))
        return ML_FAIL(e, "%s is set but %s is not, so the number of ranks is unknown; give "
                       "--shard I/N, or --no-shard-env for the whole sweep", rank, size);
    if (env_whole(get, size, 1, SHARD_MAX, n_t, e) ||
        env_whole(get, rank, 0, SHARD_MAX, t, e))
        return -1;
    if (*t >= *n_t)
        return ML_FAIL(e, "%s=%ld is not below %s=%ld; give --shard I/N, or --no-shard-env",
                       rank, *t, size, *n_t);
    snprintf(src, cap, "%s=%ld of %s=%ld", rank, *t, size, *n_t);
    return 0;
}

/* Contract in shard.h. */
int shard_from_env(shard_getenv_fn get, ml_shard *out, ml_error *e) {
    memset(out, 0, sizeof *out);
    out->count = 1;
    if (!get) get = getenv;
    long a, n_a, t, n_t;
    char src_a[96] = "", src_t[96] = "";
    if (array_factor(get, &a, &n_a, src_a, sizeof src_a, e) ||
        rank_factor(get, &t, &n_t, src_t, sizeof src_t, e))
        return -1;
    if (n_a > SHARD_MAX / n_t)
        return ML_FAIL(e, "%s times %s is more than %ld shards", src_a, src_t, SHARD_MAX);
    out->index = a * n_t + t;
    out->count = n_a * n_t;
    if (out->count > 1)
        snprintf(out->source, sizeof out->source, "%s%s%s", n_a > 1 ? src_a : "",
                 n_a > 1 && n_t > 1 ? " and " : "", n_t > 1 ? src_t : "");
    return 0;
}

/* Contract in shard.h. */
int shard_resolve(const char *flag, int no_env, shard_getenv_fn get, ml_shard *out,
                  ml_error *e) {
    if (flag) return shard_parse(flag, out, e);
    if (no_env) {
        memset(out, 0, sizeof *out);
        out->count = 1;
        return 0;
    }
    return shard_from_env(get, out, e);
}

/* Contract in shard.h. */
int shard_owns(const ml_shard *s, long i) { return s->count <= 1 || i % s->count == s->index; }

/* Contract in shard.h. */
long shard_size(const ml_shard *s, long n) {
    if (s->count <= 1) return n;
    return n / s->count + (s->index < n % s->count ? 1 : 0);
}

/* Contract in shard.h. */
int shard_db_path(const char *db, long index, long count, char *buf, size_t cap,
                  ml_error *e) {
    int n;
    if (count <= 1) {
        n = snprintf(buf, cap, "%s", db);
    } else {
        const char *base = strrchr(db, '/');
        base = base ? base + 1 : db;
        const char *dot = strrchr(base, '.');
        /* No extension: ".db" alone is a name, not an extension. */
        if (!dot || dot == base) dot = base + strlen(base);
        n = snprintf(buf, cap, "%.*s.shard-%ld-of-%ld%s", (int)(dot - db), db, index, count,
                     dot);
    }
    if (n < 0 || (size_t)n >= cap) return ML_FAIL(e, "database path too long: %s", db);
    return 0;
}
