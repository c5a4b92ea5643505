/* slurm.c: writing the sbatch script of a sharded sweep (see slurm.h).
 *
 * Everything the user gave that reaches a shell line is quoted (single
 * quotes, a quote inside written '\''), and what reaches an #SBATCH line,
 * which sbatch parses itself without a shell, is limited to a safe set of
 * characters instead. The script uses only bash and the sbatch options every
 * Slurm since 17.x knows (--parsable, --array, --dependency=afterany,
 * --output with %A, %a and %j).
 *
 * Left to others: checking the spec (main.c loads it before writing),
 * sharding (shard.c) and merging (merge.c), which the script calls through
 * the memlab binary. */
#include "slurm.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shard.h"

/* safe_char: a character that needs no quoting, in a shell word or on an
 * #SBATCH line. */
static int safe_char(int c) {
    return isalnum(c) || (c && strchr("._:,@%+=/-", c) != NULL);
}

/* Contract in slurm.h. */
int slurm_check_value(const char *option, const char *text, ml_error *e) {
    if (!text || !*text) return ML_FAIL(e, "%s: empty value", option);
    for (const char *p = text; *p; p++)
        if (!safe_char((unsigned char)*p))
            return ML_FAIL(e,
                           "%s '%s': only letters, digits and . _ : , @ %% + = / - may go on "
                           "an #SBATCH line",
                           option, text);
    return 0;
}

/* put_word: text as one shell word: bare when every character is safe,
 * else in single quotes. */
static void put_word(FILE *out, const char *text) {
    int bare = *text != '\0';
    for (const char *p = text; *p; p++)
        if (!safe_char((unsigned char)*p)) bare = 0;
    if (bare) {
        fputs(text, out);
        return;
    }
    fputc('\'', out);
    for (const char *p = text; *p; p++) {
        if (*p == '\'') fputs("'\\''", out);
        else fputc(*p, out);
    }
    fputc('\'', out);
}

/* put_comment: text on comment lines (a newline in it starts a new "# "). */
static void put_comment(FILE *out, const char *text) {
    for (const char *p = text; *p; p++) {
        fputc(*p, out);
        if (*p == '\n') fputs("#   ", out);
    }
}

/* job_name: "memlab-" and the sweep's name with every character outside the
 * safe set turned into '-'. */
static void job_name(const char *sweep, char *buf, size_t cap) {
    snprintf(buf, cap, "memlab-%s", sweep && *sweep ? sweep : "sweep");
    for (char *p = buf; *p; p++)
        if (!safe_char((unsigned char)*p) || *p == '%' || *p == '/') *p = '-';
}

/* parent_dir: the directory part of path ("." when none) into buf. */
static void parent_dir(const char *path, char *buf, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(buf, cap, ".");
    else if (slash == path) snprintf(buf, cap, "/");
    else snprintf(buf, cap, "%.*s", (int)(slash - path), path);
}

/* Contract in slurm.h. */
int slurm_write_script(const slurm_opts *o, FILE *out, ml_error *e) {
    char memlab[PATH_MAX], workdir[PATH_MAX], name[200], logs[PATH_MAX + 16];
    char first[PATH_MAX + 64], last[PATH_MAX + 64];
    if (o->array_size < 1 || o->array_size > SHARD_MAX)
        return ML_FAIL(e, "--array-size must be in [1, %ld], got %ld", SHARD_MAX, o->array_size);
    if (o->jobs < 1) return ML_FAIL(e, "--jobs must be at least 1, got %d", o->jobs);
    if (o->memlab) {
        snprintf(memlab, sizeof memlab, "%s", o->memlab);
    } else {
        ssize_t n = readlink("/proc/self/exe", memlab, sizeof memlab - 1);
        if (n <= 0) return ML_FAIL(e, "cannot find this memlab binary: %s", strerror(errno));
        memlab[n] = '\0';
    }
    if (o->workdir) snprintf(workdir, sizeof workdir, "%s", o->workdir);
    else if (!getcwd(workdir, sizeof workdir))
        return ML_FAIL(e, "cannot read the current directory: %s", strerror(errno));
    if (o->job_name) {
        if (slurm_check_value("--job-name", o->job_name, e)) return -1;
        /* The name goes into the log file patterns, where % is Slurm's. */
        if (strchr(o->job_name, '%'))
            return ML_FAIL(e, "--job-name '%s': no %% in a job name", o->job_name);
        snprintf(name, sizeof name, "%s", o->job_name);
    } else {
        job_name(o->sweep_name, name, sizeof name);
    }
    const struct {
        const char *option, *value;
    } directives[] = {{"--time", o->time},
                      {"--partition", o->partition},
                      {"--mem", o->mem},
                      {"--account", o->account}};
    for (size_t k = 0; k < sizeof directives / sizeof directives[0]; k++)
        if (directives[k].value && slurm_check_value(directives[k].option, directives[k].value, e))
            return -1;
    long n = o->array_size;
    char dbdir[PATH_MAX];
    parent_dir(o->db, dbdir, sizeof dbdir);
    snprintf(logs, sizeof logs, "%s/slurm", dbdir);
    if (shard_db_path(o->db, 0, n, first, sizeof first, e) ||
        shard_db_path(o->db, n - 1, n, last, sizeof last, e))
        return -1;
    long per = o->runs / n, extra = o->runs % n;
    int cpus = o->cpus_per_task > 0 ? o->cpus_per_task : o->jobs;

    fprintf(out, "#!/bin/bash\n");
    fprintf(out, "# Sweep %s on Slurm: the %ld runs of %s in a job array of %ld task%s\n",
            o->sweep_name ? o->sweep_name : "?", o->runs, o->spec, n, n == 1 ? "" : "s");
    if (extra)
        fprintf(out, "# (%ld or %ld runs each), ", per, per + 1);
    else
        fprintf(out, "# (%ld run%s each), ", per, per == 1 ? "" : "s");
    fprintf(out, "then one job that merges their databases into %s.\n", o->db);
    if (o->command) {
        fprintf(out, "# Written by: ");
        put_comment(out, o->command);
        fprintf(out, "\n");
    }
    fprintf(out,
            "#\n"
            "# Submit:  bash THIS_FILE\n"
            "#   submits the array, then the merge job (after the array, whatever its tasks'\n"
            "#   outcome), and prints both job ids. `sbatch THIS_FILE` does the same from a\n"
            "#   short job. The same two steps by hand:\n"
            "#     sbatch --array=0-%ld --output=%s/%s-%%A_%%a.out THIS_FILE array\n"
            "#     sbatch --dependency=afterany:ARRAY_JOB_ID --cpus-per-task=1 \\\n"
            "#            --output=%s/%s-merge-%%j.out THIS_FILE merge\n"
            "#\n"
            "# Task I runs the runs whose index i (the sweep's stable order, `memlab run SPEC\n"
            "# --dry-run` lists it) has i mod %ld = I, into its own database:\n"
            "#   %s",
            n - 1, logs, name, logs, name, n, first);
    if (n > 1) fprintf(out, " ... %s", last);
    fprintf(out,
            "\n"
            "# The merge job runs: memlab merge --shards %ld %s\n"
            "# Merging is idempotent: run it again at any time. A task that stopped early\n"
            "# (time limit, preemption) resumes where it stopped when submitted again:\n"
            "#   sbatch --array=I --output=%s/%s-%%A_%%a.out THIS_FILE array\n"
            "# and then: bash THIS_FILE merge\n"
            "# Logs: %s/. Progress: squeue --me; memlab status --db SHARD_DATABASE\n"
            "#\n",
            n, o->db, logs, name, logs);
    fprintf(out, "#SBATCH --job-name=%s\n", name);
    fprintf(out, "#SBATCH --ntasks=1\n");
    fprintf(out, "#SBATCH --cpus-per-task=%d\n", cpus);
    for (size_t k = 0; k < sizeof directives / sizeof directives[0]; k++)
        if (directives[k].value)
            fprintf(out, "#SBATCH %s=%s\n", directives[k].option, directives[k].value);

    fprintf(out, "\nset -euo pipefail\n");
    fprintf(out, "MEMLAB=");
    put_word(out, memlab);
    fprintf(out, "\nWORKDIR=");
    put_word(out, workdir);
    fprintf(out, "\nSPEC=");
    put_word(out, o->spec);
    fprintf(out, "\nDB=");
    put_word(out, o->db);
    fprintf(out, "\nSHARDS=%ld\nLOGS=", n);
    put_word(out, logs);
    fprintf(out, "\nNAME=%s\n", name);
    fprintf(out, "# the options of every task's memlab run\nRUN_ARGS=(--jobs %d", o->jobs);
    if (o->preset) {
        fprintf(out, " --preset ");
        put_word(out, o->preset);
    }
    for (int k = 0; k < o->n_sets; k++) {
        fprintf(out, " --set ");
        put_word(out, o->sets[k]);
    }
    fprintf(out, ")\n");
    fprintf(out,
            "SELF=$(cd \"$(dirname \"$0\")\" && pwd)/$(basename \"$0\")\n"
            "cd \"$WORKDIR\"\n"
            "\n"
            "case \"${1:-submit}\" in\n"
            "array)\n"
            "    # One task of the array: shard $SLURM_ARRAY_TASK_ID of $SHARDS.\n"
            "    : \"${SLURM_ARRAY_TASK_ID:?runs as a task of the job array: sbatch "
            "--array=... $0 array}\"\n"
            "    exec \"$MEMLAB\" run \"$SPEC\" --db \"$DB\" --shard "
            "\"$SLURM_ARRAY_TASK_ID/$SHARDS\" \"${RUN_ARGS[@]}\"\n"
            "    ;;\n"
            "merge)\n"
            "    # Every shard's database into $DB (a missing shard is named and the\n"
            "    # others are merged; exit 1), then where the sweep stands.\n"
            "    rc=0\n"
            "    \"$MEMLAB\" merge --shards \"$SHARDS\" \"$DB\" || rc=$?\n"
            "    \"$MEMLAB\" status --db \"$DB\" || true\n"
            "    exit $rc\n"
            "    ;;\n"
            "submit)\n"
            "    if ! command -v sbatch >/dev/null; then\n"
            "        echo \"$0: sbatch not found: submit from a Slurm login node\" >&2\n"
            "        exit 1\n"
            "    fi\n"
            "    mkdir -p \"$LOGS\"\n"
            "    array=$(sbatch --parsable --array=0-$((SHARDS - 1)) "
            "--output=\"$LOGS/$NAME-%%A_%%a.out\" \"$SELF\" array)\n"
            "    array=${array%%%%;*} # --parsable prints JOBID or JOBID;CLUSTER\n"
            "    merge=$(sbatch --parsable --dependency=afterany:\"$array\" --cpus-per-task=1 \\\n"
            "        --output=\"$LOGS/$NAME-merge-%%j.out\" \"$SELF\" merge)\n"
            "    merge=${merge%%%%;*}\n"
            "    echo \"submitted: job array $array ($SHARDS tasks), merge job $merge after it\"\n"
            "    echo \"watch: squeue -j $array,$merge   logs: $WORKDIR/$LOGS   results: $DB\"\n"
            "    ;;\n"
            "*)\n"
            "    echo \"usage: bash $0 [submit | array | merge]\" >&2\n"
            "    exit 2\n"
            "    ;;\n"
            "esac\n");
    if (ferror(out)) return ML_FAIL(e, "cannot write the script: %s", strerror(errno));
    return 0;
}
