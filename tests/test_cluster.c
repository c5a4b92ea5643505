/* test_cluster.c: sweeps across machines: shards (harness/shard.c), merging
 * results databases (harness/merge.c) and the Slurm script
 * (harness/slurm.c).
 *
 * Shard membership is checked against its definition written out here
 * (run i belongs to shard i mod N) over every N from 1 to 7, and on a real
 * sweep with merged duplicates; the environment rules against a fake
 * environment, variable by variable. Merges are built from databases
 * written through db.c and read back through a separate raw sqlite3
 * connection; "nothing changed" is a byte comparison of a full dump (every
 * column of every table, reals as %a). The end-to-end case trains a tiny
 * sweep in one process and in four shards and compares the merged result
 * with the single one, timings aside. The Slurm script is run by bash with
 * a stand-in memlab that records its arguments. What the command line does
 * with all of this is tests/cli_cluster.sh's; real mpirun and Slurm runs are
 * there and in tests/cluster_slurm.sh. */
#define _XOPEN_SOURCE 700 /* nftw, mkdtemp, open_memstream */

#include <ftw.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "export.h"
#include "merge.h"
#include "runner.h"
#include "shard.h"
#include "slurm.h"
#include "sweep.h"
#include "test.h"
#include "tmpdir.h"

/* ------------------------------------------------------------------------ */
/* Helpers.                                                                   */

/* A fresh directory "$TMPDIR/memlab-cluster-" + six random characters in dir[cap]; 0 or -1. */
static int tmp_dir(char *dir, size_t cap) {
    if (temp_dir_make(dir, cap, "memlab-cluster")) {
        CHECK(0, "mkdtemp failed");
        return -1;
    }
    return 0;
}

/* nftw callback: remove one entry (children first, FTW_DEPTH). */
static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    return remove(path);
}

static void rm_tree(const char *dir) {
    CHECK(nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove %s", dir);
}

/* A raw read-only connection to path (must exist), or NULL after a failed
 * check. */
static sqlite3 *raw_open(const char *path) {
    sqlite3 *h = NULL;
    int rc = sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL);
    CHECK(rc == SQLITE_OK, "raw open %s: %s", path, h ? sqlite3_errmsg(h) : "?");
    if (rc != SQLITE_OK) {
        sqlite3_close(h);
        return NULL;
    }
    return h;
}

/* raw_int: the first column of the first row of sql on the file at path
 * (-999 after a failed check). */
static long long raw_int(const char *path, const char *sql) {
    sqlite3 *h = raw_open(path);
    long long v = -999;
    if (!h) return v;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK)
        CHECK(0, "prepare %s: %s", sql, sqlite3_errmsg(h));
    else if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    else
        CHECK(0, "no row from %s", sql);
    sqlite3_finalize(st);
    sqlite3_close(h);
    return v;
}

/* query_text: every row of sql on the file at path as "col|col|...\n", reals
 * as %a (exact), NULL as "NULL"; malloc'd (free it), or NULL after a failed
 * check. */
static char *query_text(const char *path, const char *sql) {
    sqlite3 *h = raw_open(path);
    if (!h) return NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    sqlite3_stmt *st = NULL;
    if (!f || sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK) {
        CHECK(0, "query %s on %s: %s", sql, path, sqlite3_errmsg(h));
    } else {
        while (sqlite3_step(st) == SQLITE_ROW) {
            for (int c = 0; c < sqlite3_column_count(st); c++) {
                int t = sqlite3_column_type(st, c);
                if (t == SQLITE_NULL) fprintf(f, "NULL|");
                else if (t == SQLITE_FLOAT) fprintf(f, "%a|", sqlite3_column_double(st, c));
                else fprintf(f, "%s|", (const char *)sqlite3_column_text(st, c));
            }
            fputc('\n', f);
        }
    }
    sqlite3_finalize(st);
    sqlite3_close(h);
    if (f) fclose(f);
    return buf;
}

/* dump: every column of every row of the three tables a merge writes, in
 * id order (malloc'd, or NULL after a failed check). */
static char *dump(const char *path) {
    char *s = query_text(path, "SELECT * FROM sweeps ORDER BY id");
    char *r = query_text(path, "SELECT * FROM runs ORDER BY id");
    char *m = query_text(path, "SELECT rowid, * FROM metrics ORDER BY rowid");
    char *all = NULL;
    if (s && r && m && (all = malloc(strlen(s) + strlen(r) + strlen(m) + 8)))
        sprintf(all, "%s--\n%s--\n%s", s, r, m);
    free(s), free(r), free(m);
    return all;
}

/* ------------------------------------------------------------------------ */
/* Shards.                                                                    */

/* Every run belongs to exactly one shard for N = 1 .. 7 and any sweep size,
 * shard I's runs are I, I + N, I + 2N, ... (the definition, written out),
 * and the shard sizes differ by at most one. */
static void test_shard_arithmetic(void) {
    static const long sizes[] = {0, 1, 2, 5, 6, 7, 13, 48, 101};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        long n = sizes[k];
        for (long count = 1; count <= 7; count++) {
            long lo = n, hi = 0, total = 0;
            for (long i = 0; i < n; i++) {
                int owners = 0;
                for (long index = 0; index < count; index++) {
                    ml_shard s = {.index = index, .count = count};
                    owners += shard_owns(&s, i);
                }
                CHECK(owners == 1, "n %ld, N %ld: run %ld has %d shards", n, count, i, owners);
            }
            for (long index = 0; index < count; index++) {
                ml_shard s = {.index = index, .count = count};
                long expect = 0, next = index;
                for (long i = 0; i < n; i++) {
                    if (!shard_owns(&s, i)) continue;
                    CHECK(i == next, "n %ld: shard %ld/%ld has run %ld where %ld was due", n,
                          index, count, i, next);
                    next = i + count;
                    expect++;
                }
                CHECK(next >= n, "n %ld: shard %ld/%ld stops before run %ld", n, index, count,
                      next);
                CHECK(shard_size(&s, n) == expect, "n %ld: shard_size %ld/%ld = %ld, counted %ld",
                      n, index, count, shard_size(&s, n), expect);
                if (expect < lo) lo = expect;
                if (expect > hi) hi = expect;
                total += expect;
            }
            CHECK(total == n && hi - lo <= 1, "n %ld, N %ld: sizes %ld..%ld, total %ld", n, count,
                  lo, hi, total);
        }
    }
}

/* A sweep with duplicate configs, loaded twice: the same runs in the same
 * order both times, and for every N the shards' runs, taken together, are
 * the sweep's distinct runs once each, in increasing expansion position
 * within each shard. */
static void test_shard_sweep_order(void) {
    static const char spec[] =
        "name: shards\n"
        "task: {name: mqar, vocab_size: 32, seq_len: 16, num_kv_pairs: 2}\n"
        "model: {mixer: softmax, d_model: 8, n_layers: 1, mlp: false}\n"
        "train: {steps: 10, batch_size: 8}\n"
        "sweep: {grid: {model.d_model: [8, 16, 8], train.lr: [1e-3, 3e-3]}, seeds: 2}\n";
    ml_error e;
    ml_sweep *a = NULL, *b = NULL;
    CHECK(sweep_load_string(spec, sizeof spec - 1, "t.yaml", NULL, &a, &e) == 0, "%s", e.msg);
    CHECK(sweep_load_string(spec, sizeof spec - 1, "t.yaml", NULL, &b, &e) == 0, "%s", e.msg);
    if (!a || !b) {
        sweep_free(a);
        sweep_free(b);
        return;
    }
    long n = sweep_size(a);
    CHECK(n == 8 && sweep_expanded(a) == 12, "8 distinct runs of 12, got %ld of %ld", n,
          sweep_expanded(a));
    CHECK(sweep_size(b) == n, "second load: %ld runs", sweep_size(b));
    for (long i = 0; i < n && i < sweep_size(b); i++)
        CHECK(!strcmp(sweep_hash(a, i), sweep_hash(b, i)) &&
                  sweep_position(a, i) == sweep_position(b, i),
              "run %ld differs between two loads", i);
    for (long count = 1; count <= 7; count++) {
        int *seen = calloc((size_t)n, sizeof *seen);
        if (!seen) break;
        for (long index = 0; index < count; index++) {
            ml_shard s = {.index = index, .count = count};
            long last = -1;
            for (long i = 0; i < n; i++) {
                if (!shard_owns(&s, i)) continue;
                for (long j = 0; j < n; j++)
                    if (!strcmp(sweep_hash(a, j), sweep_hash(a, i))) seen[j]++;
                CHECK(sweep_position(a, i) > last, "N %ld: shard %ld out of order at run %ld",
                      count, index, i);
                last = sweep_position(a, i);
            }
        }
        for (long j = 0; j < n; j++)
            CHECK(seen[j] == 1, "N %ld: config of run %ld in %d shards", count, j, seen[j]);
        free(seen);
    }
    sweep_free(a);
    sweep_free(b);
}

/* --shard I/N: accepted and refused texts. */
static void test_shard_parse(void) {
    static const struct {
        const char *text;
        long index, count;
    } good[] = {{"0/1", 0, 1}, {"3/4", 3, 4}, {"0/7", 0, 7}, {"999999/1000000", 999999, 1000000}};
    for (size_t k = 0; k < sizeof good / sizeof good[0]; k++) {
        ml_shard s;
        ml_error e;
        CHECK(shard_parse(good[k].text, &s, &e) == 0 && s.index == good[k].index &&
                  s.count == good[k].count && !strcmp(s.source, "--shard"),
              "'%s': %ld/%ld", good[k].text, s.index, s.count);
    }
    static const char *const bad[] = {"4/4", "-1/4", "1/0",  "a/2", "1/2x",  " 1/2",
                                      "1/",  "/2",   "",     "1//2", "+1/2", "1/1000001",
                                      "12",  "1 /2", "0x1/2"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        ml_shard s;
        ml_error e;
        memset(&e, 0, sizeof e);
        CHECK(shard_parse(bad[k], &s, &e) == -1 && strstr(e.msg, "--shard") && s.count == 1,
              "'%s' accepted (%ld/%ld)", bad[k], s.index, s.count);
    }
}

/* The fake environment of the environment tests: name=value strings. */
static const char *const *fake_env;
static char fake_value[64];

/* fake_getenv: getenv over fake_env. */
static char *fake_getenv(const char *name) {
    size_t n = strlen(name);
    for (const char *const *v = fake_env; v && *v; v++) {
        if (!strncmp(*v, name, n) && (*v)[n] == '=') {
            snprintf(fake_value, sizeof fake_value, "%s", *v + n + 1);
            return fake_value;
        }
    }
    return NULL;
}

/* The shard of each environment, or the error it must give. */
static void test_shard_env(void) {
    static const struct {
        const char *what;
        const char *env[10];
        long index, count; /* count 0: an error containing `error` */
        const char *error;
    } cases[] = {
        {"nothing set", {NULL}, 0, 1, NULL},
        {"mpirun rank 1 of 2", {"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=2"}, 1, 2, NULL},
        {"MPICH rank 2 of 3", {"PMI_RANK=2", "PMI_SIZE=3"}, 2, 3, NULL},
        {"PMIx rank, size of the srun step",
         {"PMIX_RANK=1", "SLURM_STEP_NUM_TASKS=4", "SLURM_NTASKS=8"}, 1, 4, NULL},
        {"Open MPI before PMI",
         {"PMI_RANK=0", "PMI_SIZE=4", "OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=2"}, 1, 2,
         NULL},
        {"batch script of sbatch -n 4 (no step)", {"SLURM_PROCID=0", "SLURM_NTASKS=4"}, 0, 1,
         NULL},
        {"srun step task 2 of 4",
         {"SLURM_PROCID=2", "SLURM_NTASKS=4", "SLURM_STEP_ID=0"}, 2, 4, NULL},
        {"srun step: the step's task count wins",
         {"SLURM_PROCID=2", "SLURM_NTASKS=8", "SLURM_STEP_ID=1", "SLURM_STEP_NUM_TASKS=3"}, 2, 3,
         NULL},
        {"srun -n 1", {"SLURM_PROCID=0", "SLURM_NTASKS=1", "SLURM_STEP_ID=0"}, 0, 1, NULL},
        {"array 3 of 0-3",
         {"SLURM_ARRAY_TASK_ID=3", "SLURM_ARRAY_TASK_COUNT=4", "SLURM_ARRAY_TASK_MIN=0",
          "SLURM_ARRAY_TASK_MAX=3", "SLURM_ARRAY_TASK_STEP=1", "SLURM_PROCID=0"},
         3, 4, NULL},
        {"array 4 of 1-7:3",
         {"SLURM_ARRAY_TASK_ID=4", "SLURM_ARRAY_TASK_COUNT=3", "SLURM_ARRAY_TASK_MIN=1",
          "SLURM_ARRAY_TASK_MAX=7", "SLURM_ARRAY_TASK_STEP=3"},
         1, 3, NULL},
        {"array without MIN/MAX/STEP", {"SLURM_ARRAY_TASK_ID=2", "SLURM_ARRAY_TASK_COUNT=5"}, 2,
         5, NULL},
        {"one task of an array resubmitted alone",
         {"SLURM_ARRAY_TASK_ID=3", "SLURM_ARRAY_TASK_COUNT=1", "SLURM_ARRAY_TASK_MIN=3",
          "SLURM_ARRAY_TASK_MAX=3", "SLURM_ARRAY_TASK_STEP=1"},
         0, 1, NULL},
        {"array task 1 of 2 x srun task 1 of 3",
         {"SLURM_ARRAY_TASK_ID=1", "SLURM_ARRAY_TASK_COUNT=2", "SLURM_PROCID=1",
          "SLURM_NTASKS=3", "SLURM_STEP_ID=0"},
         4, 6, NULL},
        {"array task 0 of 2 x mpirun rank 1 of 2",
         {"SLURM_ARRAY_TASK_ID=0", "SLURM_ARRAY_TASK_COUNT=2", "OMPI_COMM_WORLD_RANK=1",
          "OMPI_COMM_WORLD_SIZE=2"},
         1, 4, NULL},
        {"irregular array 1,2,7",
         {"SLURM_ARRAY_TASK_ID=2", "SLURM_ARRAY_TASK_COUNT=3", "SLURM_ARRAY_TASK_MIN=1",
          "SLURM_ARRAY_TASK_MAX=7", "SLURM_ARRAY_TASK_STEP=1"},
         0, 0, "not a regular range"},
        {"array id without count", {"SLURM_ARRAY_TASK_ID=2"}, 0, 0, "SLURM_ARRAY_TASK_COUNT"},
        {"rank not below size", {"OMPI_COMM_WORLD_RANK=2", "OMPI_COMM_WORLD_SIZE=2"}, 0, 0,
         "not below"},
        {"rank not a number", {"OMPI_COMM_WORLD_RANK=one", "OMPI_COMM_WORLD_SIZE=2"}, 0, 0,
         "OMPI_COMM_WORLD_RANK=one"},
        {"size zero", {"PMI_RANK=0", "PMI_SIZE=0"}, 0, 0, "PMI_SIZE=0"},
        {"rank without size", {"PMI_RANK=1"}, 0, 0, "PMI_SIZE is not"},
        {"PMIx rank without any size", {"PMIX_RANK=1"}, 0, 0, "PMIX_RANK is set"},
        {"negative rank", {"OMPI_COMM_WORLD_RANK=-1", "OMPI_COMM_WORLD_SIZE=2"}, 0, 0,
         "--no-shard-env"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        fake_env = cases[k].env;
        ml_shard s;
        ml_error e;
        memset(&e, 0, sizeof e);
        int rc = shard_from_env(fake_getenv, &s, &e);
        if (cases[k].count) {
            CHECK(rc == 0 && s.index == cases[k].index && s.count == cases[k].count,
                  "%s: got %ld/%ld (rc %d: %s), want %ld/%ld", cases[k].what, s.index, s.count,
                  rc, e.msg, cases[k].index, cases[k].count);
            CHECK((s.count > 1) == (s.source[0] != '\0'), "%s: source '%s'", cases[k].what,
                  s.source);
        } else {
            CHECK(rc == -1 && strstr(e.msg, cases[k].error), "%s: rc %d, message '%s'",
                  cases[k].what, rc, e.msg);
        }
    }
    /* The flag wins over the environment, --no-shard-env ignores it, and
     * a bad environment does not matter when either is given. */
    static const char *const env[] = {"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=2", NULL};
    static const char *const broken[] = {"OMPI_COMM_WORLD_RANK=5", "OMPI_COMM_WORLD_SIZE=2",
                                         NULL};
    ml_shard s;
    ml_error e;
    fake_env = env;
    CHECK(shard_resolve("0/3", 0, fake_getenv, &s, &e) == 0 && s.index == 0 && s.count == 3,
          "--shard 0/3 over rank 1 of 2: %ld/%ld", s.index, s.count);
    CHECK(shard_resolve(NULL, 1, fake_getenv, &s, &e) == 0 && s.count == 1,
          "--no-shard-env: %ld/%ld", s.index, s.count);
    CHECK(shard_resolve(NULL, 0, fake_getenv, &s, &e) == 0 && s.index == 1 && s.count == 2 &&
              strstr(s.source, "OMPI_COMM_WORLD_RANK=1"),
          "environment: %ld/%ld from '%s'", s.index, s.count, s.source);
    fake_env = broken;
    CHECK(shard_resolve("1/2", 0, fake_getenv, &s, &e) == 0 && s.index == 1 &&
              shard_resolve(NULL, 1, fake_getenv, &s, &e) == 0 && s.count == 1 &&
              shard_resolve(NULL, 0, fake_getenv, &s, &e) == -1,
          "a broken environment with --shard, --no-shard-env, neither");
    fake_env = NULL;
}

/* Shard database names. */
static void test_shard_db_names(void) {
    static const struct {
        const char *db;
        long index, count;
        const char *want;
    } cases[] = {
        {"results/x.db", 1, 4, "results/x.shard-1-of-4.db"},
        {"x.db", 0, 2, "x.shard-0-of-2.db"},
        {"results/x", 0, 2, "results/x.shard-0-of-2"},
        {"res.v2/x", 1, 2, "res.v2/x.shard-1-of-2"},
        {"a/b.c.sqlite", 6, 7, "a/b.c.shard-6-of-7.sqlite"},
        {"dir/.db", 0, 3, "dir/.db.shard-0-of-3"},
        {"/abs/path/m.db", 9, 10, "/abs/path/m.shard-9-of-10.db"},
        {"results/x.db", 0, 1, "results/x.db"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char buf[128];
        ml_error e;
        CHECK(shard_db_path(cases[k].db, cases[k].index, cases[k].count, buf, sizeof buf, &e) ==
                      0 &&
                  !strcmp(buf, cases[k].want),
              "%s %ld/%ld: '%s', want '%s'", cases[k].db, cases[k].index, cases[k].count, buf,
              cases[k].want);
    }
    char small[12];
    ml_error e;
    CHECK(shard_db_path("results/x.db", 1, 4, small, sizeof small, &e) == -1 &&
              strstr(e.msg, "too long"),
          "a buffer too small is an error");
}

/* ------------------------------------------------------------------------ */
/* Merging.                                                                   */

static const char CFG1[] = "{\"name\":\"a\",\"task\":{\"seq_len\":16},\"train\":{\"lr\":0.001}}";
static const char CFG2[] = "{\"name\":\"a\",\"task\":{\"seq_len\":32},\"train\":{\"lr\":0.001}}";
static const char CFG3[] = "{\"name\":\"a\",\"task\":{\"seq_len\":64},\"train\":{\"lr\":0.001}}";
static const char CFG4[] = "{\"name\":\"a\",\"task\":{\"seq_len\":16},\"train\":{\"lr\":1e30}}";
static const char CFG5[] = "{\"name\":\"a\",\"task\":{\"seq_len\":8},\"train\":{\"lr\":0.001}}";

/* A database being built for a merge test. */
typedef struct build {
    ml_db *db;
    long long sweep;
} build;

/* build_open: a new database at dir/name with the sweep "swp" in it (or no
 * sweep: with_sweep 0). */
static int build_open(build *b, const char *dir, const char *name, int with_sweep) {
    char path[256];
    ml_error e;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    b->db = NULL;
    b->sweep = 0;
    if (db_open(&b->db, path, &e)) {
        CHECK(0, "open %s: %s", path, e.msg);
        return -1;
    }
    if (with_sweep && db_sweep_register(b->db, "swp", "name: swp\n", "{\"name\":\"swp\"}",
                                        "rh-swp", &b->sweep, &e)) {
        CHECK(0, "sweep in %s: %s", path, e.msg);
        db_close(b->db);
        b->db = NULL;
        return -1;
    }
    return 0;
}

/* add_run: a run of config/hash claimed in the sweep (or begun outside one),
 * n metric values test/accuracy at steps 10, 20, ..., and the status
 * (running: left as claimed). Returns its id, 0 after a failed check. */
static long long add_run(build *b, const char *config, const char *hash, const char *status,
                         const double *values, int n) {
    ml_error e;
    long long id = 0;
    db_claim claim = DB_CLAIMED;
    int rc = b->sweep ? db_run_claim(b->db, b->sweep, config, hash, "v1", "m", &id, &claim, &e)
                      : db_run_begin(b->db, config, hash, "v1", "m", &id, &e);
    CHECK(rc == 0 && claim == DB_CLAIMED, "run %s: %s", hash, e.msg);
    if (rc || claim != DB_CLAIMED) return 0;
    for (int k = 0; k < n; k++)
        CHECK(db_metric(b->db, id, 10L * (k + 1), "test", "accuracy", values[k], &e) == 0, "%s",
              e.msg);
    if (strcmp(status, "running"))
        CHECK(db_run_end(b->db, id, status, 10L * n, NULL, &e) == 0, "%s", e.msg);
    return id;
}

/* status_of: "h1:finished h2:..." over every row of path, by hash, then id. */
static char *status_of(const char *path) {
    return query_text(path, "SELECT config_hash, status, sweep_id IS NOT NULL FROM runs "
                            "ORDER BY config_hash, id");
}

/* metrics_of: the metrics of hash's rows in path (step, split, name, value). */
static char *metrics_of(const char *path, const char *hash) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT r.status, m.step, m.split, m.name, m.value FROM runs r JOIN metrics m ON "
             "m.run_id = r.id WHERE r.config_hash = '%s' ORDER BY r.id, m.rowid",
             hash);
    return query_text(path, sql);
}

/* Three databases with overlapping runs merge into one copy per config,
 * the best one with exactly its own metrics; merging again changes
 * nothing; a better copy arriving later is added. */
static void test_merge_best_copy(void) {
    char dir[64], pa[128], pb[128], pc[128], pd[128], pe[128], out[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(pa, sizeof pa, "%s/a.db", dir);
    snprintf(pb, sizeof pb, "%s/b.db", dir);
    snprintf(pc, sizeof pc, "%s/c.db", dir);
    snprintf(pd, sizeof pd, "%s/d.db", dir);
    snprintf(pe, sizeof pe, "%s/e.db", dir);
    snprintf(out, sizeof out, "%s/out.db", dir);
    build a, b, c, d, x;
    if (build_open(&a, dir, "a.db", 1) || build_open(&b, dir, "b.db", 1) ||
        build_open(&c, dir, "c.db", 1) || build_open(&d, dir, "d.db", 1) ||
        build_open(&x, dir, "e.db", 1))
        return;
    /* a: h1 finished (values with a NaN and an infinity), h2 interrupted,
     * h3 failed. b: h1 interrupted, h2 finished, h4 diverged. c: h3
     * interrupted, h5 running outside any sweep. */
    const double v1[] = {0.5, NAN, INFINITY, 0.1 + 0.2}, v2a[] = {0.125}, v2b[] = {0.25, 0.875};
    const double v4[] = {-INFINITY}, v3[] = {0.375};
    add_run(&a, CFG1, "h1", "finished", v1, 4);
    add_run(&a, CFG2, "h2", "interrupted", v2a, 1);
    add_run(&a, CFG3, "h3", "failed", v3, 1);
    add_run(&b, CFG1, "h1", "interrupted", v2a, 1);
    add_run(&b, CFG2, "h2", "finished", v2b, 2);
    add_run(&b, CFG4, "h4", "diverged", v4, 1);
    add_run(&c, CFG3, "h3", "interrupted", NULL, 0);
    build c_free = {.db = c.db, .sweep = 0};
    add_run(&c_free, CFG5, "h5", "running", NULL, 0);
    /* d: h3 finished later; e: h4 finished (its config under another name,
     * which the hash leaves out). */
    add_run(&d, CFG3, "h3", "finished", v3, 1);
    static const char CFG4_RENAMED[] =
        "{\"name\":\"renamed\",\"description\":\"x\",\"task\":{\"seq_len\":16},\"train\":{\"lr\":1e30}}";
    add_run(&x, CFG4_RENAMED, "h4", "finished", v4, 1);
    db_close(a.db), db_close(b.db), db_close(c.db), db_close(d.db), db_close(x.db);

    const char *in[] = {pa, pb, pc};
    merge_result r;
    ml_error e;
    memset(&e, 0, sizeof e);
    CHECK(merge_files(out, in, 3, &r, &e) == 0, "merge: %s", e.msg);
    CHECK(r.created && r.hashes == 5 && r.runs_added == 5 && r.runs_kept == 0 &&
              r.sweeps_added == 1 && r.unlinked == 0,
          "created %d, hashes %ld, added %ld, kept %ld, sweeps %ld", r.created, r.hashes,
          r.runs_added, r.runs_kept, r.sweeps_added);
    CHECK(r.added_status[0] == 2 && r.added_status[1] == 1 && r.added_status[2] == 1 &&
              r.added_status[3] == 0 && r.added_status[4] == 1,
          "added by status %ld %ld %ld %ld %ld", r.added_status[0], r.added_status[1],
          r.added_status[2], r.added_status[3], r.added_status[4]);
    char *st = status_of(out);
    CHECK(st && !strcmp(st, "h1|finished|1|\nh2|finished|1|\nh3|failed|1|\nh4|diverged|1|\n"
                            "h5|running|0|\n"),
          "one row per config, the best: %s", st ? st : "?");
    free(st);
    CHECK(raw_int(out, "SELECT count(*) FROM sweeps") == 1 &&
              raw_int(out, "SELECT count(DISTINCT sweep_id) FROM runs") == 1,
          "one sweep, every linked run linked to it");
    /* Each copied run carries exactly its own metrics, bit for bit, in order
     * (each source holds one row of these hashes). */
    static const char *const hashes[] = {"h1", "h2", "h3", "h4"};
    const char *src_of[] = {pa, pb, pa, pb};
    for (int k = 0; k < 4; k++) {
        char *want = metrics_of(src_of[k], hashes[k]), *got = metrics_of(out, hashes[k]);
        CHECK(got && want && !strcmp(got, want), "%s: metrics\n%s\nwant\n%s", hashes[k],
              got ? got : "?", want ? want : "?");
        free(want), free(got);
    }
    char *h1 = metrics_of(out, "h1");
    CHECK(h1 && strstr(h1, "|test|accuracy|NULL|") && strstr(h1, "|test|accuracy|inf|") &&
              strstr(h1, "0x1.3333333333334p-2"),
          "NaN stays NULL, infinity and 0.1 + 0.2 exact: %s", h1 ? h1 : "?");
    free(h1);

    /* Idempotent: the same merge again changes nothing at all. */
    char *before = dump(out);
    CHECK(merge_files(out, in, 3, &r, &e) == 0, "second merge: %s", e.msg);
    char *after = dump(out);
    CHECK(before && after && !strcmp(before, after), "second merge changed the database");
    CHECK(!r.created && r.runs_added == 0 && r.runs_kept == 5 && r.sweeps_added == 0,
          "second merge: added %ld, kept %ld", r.runs_added, r.runs_kept);
    free(after);
    /* The inputs in another order give the same runs. */
    char out2[160];
    snprintf(out2, sizeof out2, "%s/out2.db", dir);
    const char *rev[] = {pc, pb, pa, pa};
    CHECK(merge_files(out2, rev, 4, &r, &e) == 0 && r.runs_added == 5, "reversed: %s", e.msg);
    char *s1 = status_of(out), *s2 = status_of(out2);
    CHECK(s1 && s2 && !strcmp(s1, s2), "reversed order: %s vs %s", s1 ? s1 : "?",
          s2 ? s2 : "?");
    free(s1), free(s2);

    /* A better copy later: h3's finished copy joins its failed one; h4's
     * finished copy replaces the diverged one as the sweep's (which stays,
     * unlinked). */
    const char *later[] = {pd, pe};
    CHECK(merge_files(out, later, 2, &r, &e) == 0 && r.runs_added == 2 && r.unlinked == 1 &&
              r.runs_kept == 0,
          "later merge: added %ld, unlinked %ld: %s", r.runs_added, r.unlinked, e.msg);
    st = status_of(out);
    CHECK(st && strstr(st, "h3|failed|1|\nh3|finished|1|\n") &&
              strstr(st, "h4|diverged|0|\nh4|finished|1|\n"),
          "later merge: %s", st ? st : "?");
    free(st);
    ml_db *db = NULL;
    if (db_open_readonly(&db, out, &e) == 0) {
        db_state s3, s4;
        long long id;
        CHECK(db_hash_state(db, "h3", &s3, &id, &e) == 0 && s3 == DB_FINISHED &&
                  db_hash_state(db, "h4", &s4, &id, &e) == 0 && s4 == DB_FINISHED,
              "h3 and h4 are finished now");
        db_close(db);
    } else {
        CHECK(0, "open %s: %s", out, e.msg);
    }
    free(before);
    before = dump(out);
    CHECK(merge_files(out, later, 2, &r, &e) == 0 && r.runs_added == 0, "again: %s", e.msg);
    after = dump(out);
    CHECK(before && after && !strcmp(before, after), "merging the later files again changed it");
    free(before), free(after);
    rm_tree(dir);
}

/* raw_make: a file at path holding what sql creates. */
static void raw_make(const char *path, const char *sql) {
    sqlite3 *h = NULL;
    CHECK(sqlite3_open(path, &h) == SQLITE_OK && sqlite3_exec(h, sql, NULL, NULL, NULL) ==
                                                     SQLITE_OK,
          "make %s: %s", path, h ? sqlite3_errmsg(h) : "?");
    sqlite3_close(h);
}

/* Refusals, each leaving the output as it was (and a new output absent). */
static void test_merge_refuses(void) {
    char dir[64], good[128], out[128], fresh[128], v1[128], v999[128], other[128], x[128],
        y[128], z[128], missing[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(good, sizeof good, "%s/good.db", dir);
    snprintf(out, sizeof out, "%s/out.db", dir);
    snprintf(fresh, sizeof fresh, "%s/fresh.db", dir);
    snprintf(v1, sizeof v1, "%s/v1.db", dir);
    snprintf(v999, sizeof v999, "%s/v999.db", dir);
    snprintf(other, sizeof other, "%s/other.db", dir);
    snprintf(x, sizeof x, "%s/x.db", dir);
    snprintf(y, sizeof y, "%s/y.db", dir);
    snprintf(z, sizeof z, "%s/z.db", dir);
    snprintf(missing, sizeof missing, "%s/missing.db", dir);
    build g, bx, by, bz;
    if (build_open(&g, dir, "good.db", 1) || build_open(&bx, dir, "x.db", 1) ||
        build_open(&by, dir, "y.db", 1) || build_open(&bz, dir, "z.db", 0))
        return;
    const double v[] = {0.5};
    add_run(&g, CFG1, "h1", "finished", v, 1);
    /* x and y: the same hash, configs that differ in train.lr; z: x's
     * config under another name and description. */
    add_run(&bx, "{\"name\":\"a\",\"train\":{\"lr\":0.001}}", "h9", "finished", v, 1);
    add_run(&by, "{\"name\":\"a\",\"train\":{\"lr\":0.003}}", "h9", "finished", v, 1);
    add_run(&bz, "{\"name\":\"zz\",\"description\":\"d\",\"train\":{\"lr\":0.001}}", "h9",
            "interrupted", v, 1);
    db_close(g.db), db_close(bx.db), db_close(by.db), db_close(bz.db);
    raw_make(v1, "CREATE TABLE schema_version(version INTEGER NOT NULL);"
                 "INSERT INTO schema_version VALUES (1);"
                 "CREATE TABLE runs (id INTEGER PRIMARY KEY, config TEXT, config_hash TEXT,"
                 " status TEXT, step INTEGER);"
                 "CREATE TABLE metrics (run_id INTEGER, step INTEGER, split TEXT, name TEXT,"
                 " value REAL);");
    raw_make(v999, "CREATE TABLE schema_version(version INTEGER NOT NULL);"
                 "INSERT INTO schema_version VALUES (999);");
    raw_make(other, "CREATE TABLE notes(text TEXT);");
    merge_result r;
    ml_error e;
    const char *one[] = {good};
    CHECK(merge_files(out, one, 1, &r, &e) == 0, "setup merge: %s", e.msg);
    char *before = dump(out);
    static const struct {
        const char *what;
        int input; /* which of the paths below */
        const char *needle;
    } cases[] = {
        {"schema version 1", 0, "schema version 1"},
        {"schema version 999", 1, "newer than this memlab"},
        {"not a memlab file", 2, "not a memlab results file"},
        {"a missing input", 3, "No such file"},
        {"the output as an input", 4, "is the output file itself"},
    };
    const char *paths[] = {v1, v999, other, missing, out};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const char *in[] = {good, paths[cases[k].input]};
        memset(&e, 0, sizeof e);
        CHECK(merge_files(out, in, 2, &r, &e) == -1 && strstr(e.msg, cases[k].needle) &&
                  strstr(e.msg, paths[cases[k].input]),
              "%s: '%s'", cases[k].what, e.msg);
        char *now = dump(out);
        CHECK(before && now && !strcmp(before, now), "%s: the output changed", cases[k].what);
        free(now);
        if (cases[k].input == 4) continue; /* out exists, fresh would not be out */
        CHECK(merge_files(fresh, in, 2, &r, &e) == -1 && access(fresh, F_OK) != 0,
              "%s: a new output is left behind", cases[k].what);
    }
    /* The same hash, different configs: refused, naming both files and
     * showing the difference. */
    const char *conflict[] = {x, good, y};
    memset(&e, 0, sizeof e);
    CHECK(merge_files(out, conflict, 3, &r, &e) == -1 && strstr(e.msg, "same config hash") &&
              strstr(e.msg, x) && strstr(e.msg, y) && strstr(e.msg, "0.001") &&
              strstr(e.msg, "0.003"),
          "conflict: '%s'", e.msg);
    char *now = dump(out);
    CHECK(before && now && !strcmp(before, now), "conflict: the output changed");
    free(now);
    CHECK(merge_files(fresh, conflict, 3, &r, &e) == -1 && access(fresh, F_OK) != 0,
          "conflict: a new output is left behind");
    /* A conflict between the output and an input is found too. */
    const char *just_x[] = {x}, *just_y[] = {y};
    CHECK(merge_files(fresh, just_x, 1, &r, &e) == 0, "x alone: %s", e.msg);
    CHECK(merge_files(fresh, just_y, 1, &r, &e) == -1 && strstr(e.msg, fresh) &&
              strstr(e.msg, y),
          "conflict with the output: '%s'", e.msg);
    /* Names and descriptions are labels: the same config under another
     * name is the same run. */
    const char *labels[] = {x, z};
    CHECK(merge_files(fresh, labels, 2, &r, &e) == 0 && r.runs_added == 0 && r.runs_kept == 1,
          "a renamed config is not a conflict: %s", e.msg);
    CHECK(merge_files(out, NULL, 0, &r, &e) == -1, "no inputs");
    free(before);
    rm_tree(dir);
}

/* ------------------------------------------------------------------------ */
/* End to end: shards of a real sweep, merged, against one process.          */

static const char tiny_sweep[] =
    "name: cluster\n"
    "task: {name: mqar, vocab_size: 32, seq_len: 16, num_kv_pairs: 2}\n"
    "model: {mixer: softmax, d_model: 8, n_layers: 1, mlp: false}\n"
    "train: {steps: 20, batch_size: 8, warmup: 2, train_examples: 0}\n"
    "eval: {every: 10, examples: 16, batch_size: 16}\n"
    "sweep: {grid: {model.d_model: [8, 16, 8]}, seeds: 3}\n";

/* The results of a database for comparison: per run config, its status and
 * step, and every metric but the timings (tokens_per_s, wall and train time
 * and peak memory depend on the machine and the moment). */
#define SQL_RESULTS                                                                           \
    "SELECT r.config_hash, r.status, r.step, m.split, m.name, m.step, m.value FROM runs r "   \
    "LEFT JOIN metrics m ON m.run_id = r.id AND m.name NOT IN ('tokens_per_s', "              \
    "'wall_time_s', 'train_time_s', 'peak_rss_mib') ORDER BY 1, 2, 3, 4, 5, 6, 7"

/* hash_cmp: qsort of 65-character hash strings. */
static int hash_cmp(const void *a, const void *b) { return strcmp(a, b); }

/* A row of `memlab status` for sweep name: its seven counts. */
static int status_counts(const char *text, const char *name, long c[7]) {
    size_t n = strlen(name);
    for (const char *line = text; line && *line; line = strchr(line, '\n')) {
        if (*line == '\n') line++;
        if (!strncmp(line, name, n) && line[n] == ' ')
            return sscanf(line + n, "%ld %ld %ld %ld %ld %ld %ld", &c[0], &c[1], &c[2], &c[3],
                          &c[4], &c[5], &c[6]) == 7
                       ? 0
                       : -1;
    }
    return -1;
}

/* A tiny sweep (6 distinct runs of 9) trained in one process and in four
 * shards (one with two workers): each shard's database holds exactly its
 * runs and the same sweep row; the merge equals the single run in every
 * status, step and metric value except timings; status reads it and a rerun
 * finds nothing to do. */
static void test_cluster_shards_equal_one_process(void) {
    char dir[64], one[128], merged[128], shard_path[4][160];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(one, sizeof one, "%s/one.db", dir);
    snprintf(merged, sizeof merged, "%s/x.db", dir);
    ml_error e;
    ml_sweep *s = NULL;
    CHECK(sweep_load_string(tiny_sweep, sizeof tiny_sweep - 1, "t.yaml", NULL, &s, &e) == 0,
          "%s", e.msg);
    if (!s) return;
    long n = sweep_size(s);
    runner_opts ro = {.db_path = one, .jobs = 1, .quiet = 1};
    runner_result rr;
    CHECK(runner_run(s, &ro, &rr, &e) == 0 && rr.finished == n, "one process: %s", e.msg);
    const char *in[4];
    for (long index = 0; index < 4; index++) {
        ml_shard sh = {.index = index, .count = 4};
        CHECK(shard_db_path(merged, index, 4, shard_path[index], sizeof shard_path[index],
                            &e) == 0,
              "%s", e.msg);
        in[index] = shard_path[index];
        ro.db_path = shard_path[index];
        ro.shard = &sh;
        ro.jobs = index == 1 ? 2 : 1;
        CHECK(runner_run(s, &ro, &rr, &e) == 0 && rr.total == shard_size(&sh, n) &&
                  rr.finished == rr.total,
              "shard %ld: total %ld, finished %ld: %s", index, rr.total, rr.finished, e.msg);
        /* The shard's database holds its runs and only those. */
        char *got = query_text(shard_path[index], "SELECT config_hash FROM runs ORDER BY 1");
        char *want = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&want, &len);
        char (*hs)[65] = calloc((size_t)n, sizeof *hs);
        long k = 0;
        for (long i = 0; hs && i < n; i++)
            if (shard_owns(&sh, i)) snprintf(hs[k++], sizeof hs[0], "%s", sweep_hash(s, i));
        if (hs) qsort(hs, (size_t)k, sizeof *hs, hash_cmp);
        for (long i = 0; f && hs && i < k; i++) fprintf(f, "%s|\n", hs[i]);
        if (f) fclose(f);
        CHECK(got && want && !strcmp(got, want), "shard %ld holds\n%swant\n%s", index,
              got ? got : "?", want ? want : "?");
        free(got), free(want), free(hs);
    }
    ro.shard = NULL;
    char *sw0 = query_text(in[0], "SELECT name, spec, resolved, resolved_hash FROM sweeps");
    for (int k = 1; k < 4; k++) {
        char *swk = query_text(in[k], "SELECT name, spec, resolved, resolved_hash FROM sweeps");
        CHECK(sw0 && swk && !strcmp(sw0, swk), "shard %d records another sweep", k);
        free(swk);
    }
    free(sw0);
    merge_result mr;
    CHECK(merge_files(merged, in, 4, &mr, &e) == 0 && mr.runs_added == n && mr.sweeps_added == 1,
          "merge: added %ld: %s", mr.runs_added, e.msg);
    char *a = query_text(one, SQL_RESULTS), *b = query_text(merged, SQL_RESULTS);
    CHECK(a && b && strlen(a) > 1000 && !strcmp(a, b), "merged shards differ from one process");
    free(a), free(b);
    /* status reads the merged file, and a rerun finds everything done. */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK(f && export_status(merged, f, &e) == 0, "status: %s", e.msg);
    if (f) fclose(f);
    long c[7] = {0};
    CHECK(text && status_counts(text, "cluster", c) == 0 && c[0] == 6 && c[1] == 6 &&
              c[6] == 0,
          "status of the merged file:\n%s", text ? text : "?");
    free(text);
    ro.db_path = merged;
    CHECK(runner_run(s, &ro, &rr, &e) == 0 && rr.done_before == n && rr.finished == 0,
          "rerun on the merged file: %ld done before, %ld trained", rr.done_before, rr.finished);
    sweep_free(s);
    rm_tree(dir);
}

/* ------------------------------------------------------------------------ */
/* The Slurm script.                                                          */

/* The script's settings, its sbatch lines, and its array mode run by bash
 * with a stand-in memlab: the arguments arrive intact however they are
 * quoted. */
static void test_slurm_script(void) {
    char dir[64], script[128], fake[128], args[128], cmd[512];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(script, sizeof script, "%s/job.sh", dir);
    snprintf(fake, sizeof fake, "%s/fake memlab", dir);
    snprintf(args, sizeof args, "%s/args", dir);
    FILE *f = fopen(fake, "w");
    if (f) {
        fprintf(f, "#!/bin/sh\nfor a in \"$@\"; do printf '%%s\\n' \"$a\"; done > '%s'\n", args);
        fclose(f);
    }
    CHECK(f && chmod(fake, 0755) == 0, "stand-in memlab");
    const char *sets[] = {"model.d_model=64", "task.path=it's a \"file\" $HOME `x`"};
    slurm_opts o = {.spec = "sweeps/my sweep.yaml", .db = "results/x.db", .preset = "quick",
                    .sets = sets, .n_sets = 2, .jobs = 2, .array_size = 4, .time = "1:00:00",
                    .partition = "gpu,cpu", .mem = "4G", .account = "proj-1",
                    .memlab = fake, .workdir = dir, .sweep_name = "my sweep", .runs = 10,
                    .command = "memlab slurm x\nsecond line"};
    ml_error e;
    char *text = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&text, &len);
    CHECK(m && slurm_write_script(&o, m, &e) == 0, "write: %s", e.msg);
    if (m) fclose(m);
    static const char *const want[] = {
        "#!/bin/bash\n",
        "\n#SBATCH --job-name=memlab-my-sweep\n",
        "\n#SBATCH --ntasks=1\n",
        "\n#SBATCH --cpus-per-task=2\n",
        "\n#SBATCH --time=1:00:00\n",
        "\n#SBATCH --partition=gpu,cpu\n",
        "\n#SBATCH --mem=4G\n",
        "\n#SBATCH --account=proj-1\n",
        "\nSHARDS=4\n",
        "\nDB=results/x.db\n",
        "(2 or 3 runs each)",
        "results/x.shard-0-of-4.db ... results/x.shard-3-of-4.db",
        "sbatch --parsable --array=0-$((SHARDS - 1))",
        "--dependency=afterany:\"$array\"",
        "memlab merge --shards 4 results/x.db",
        "\"$MEMLAB\" merge --shards \"$SHARDS\" \"$DB\"",
        "# Written by: memlab slurm x\n#   second line\n",
    };
    for (size_t k = 0; text && k < sizeof want / sizeof want[0]; k++)
        CHECK(strstr(text, want[k]), "the script lacks '%s'", want[k]);
    f = fopen(script, "w");
    if (f && text) fputs(text, f);
    if (f) fclose(f);
    free(text);
    snprintf(cmd, sizeof cmd, "bash -n '%s'", script);
    CHECK(system(cmd) == 0, "bash -n rejects the script");
    snprintf(cmd, sizeof cmd, "SLURM_ARRAY_TASK_ID=2 bash '%s' array", script);
    CHECK(system(cmd) == 0, "array mode failed");
    char *got = NULL;
    f = fopen(args, "r");
    if (f) {
        got = calloc(1, 4096);
        if (got) got[fread(got, 1, 4095, f)] = '\0';
        fclose(f);
    }
    static const char want_args[] = "run\nsweeps/my sweep.yaml\n--db\nresults/x.db\n--shard\n2/4\n"
                                    "--jobs\n2\n--preset\nquick\n--set\nmodel.d_model=64\n--set\n"
                                    "task.path=it's a \"file\" $HOME `x`\n";
    CHECK(got && !strcmp(got, want_args), "array task's memlab arguments:\n%s", got ? got : "?");
    free(got);
    snprintf(cmd, sizeof cmd, "env -u SLURM_ARRAY_TASK_ID bash '%s' array 2>/dev/null", script);
    CHECK(system(cmd) != 0, "array mode outside an array must fail");
    /* Values sbatch would misread are refused. */
    static const char *const bad[] = {"1:00 00", "a\nb", "x;y", "", "$(id)"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        slurm_opts ob = o;
        ob.partition = bad[k];
        FILE *sink = fopen("/dev/null", "w");
        memset(&e, 0, sizeof e);
        CHECK(sink && slurm_write_script(&ob, sink, &e) == -1 && strstr(e.msg, "--partition"),
              "partition '%s' accepted", bad[k]);
        if (sink) fclose(sink);
    }
    CHECK(slurm_check_value("--time", "2-00:00:00", &e) == 0 &&
              slurm_check_value("--mem", "16G", &e) == 0,
          "ordinary values refused: %s", e.msg);
    rm_tree(dir);
}

const test_case tests_cluster[] = {
    {"cluster: shard arithmetic, N = 1..7", test_shard_arithmetic},
    {"cluster: shards of a sweep, stable order", test_shard_sweep_order},
    {"cluster: --shard I/N", test_shard_parse},
    {"cluster: shard from the environment", test_shard_env},
    {"cluster: shard database names", test_shard_db_names},
    {"cluster: merge keeps the best copy, idempotent", test_merge_best_copy},
    {"cluster: merge refusals leave the output as it was", test_merge_refuses},
    {"cluster: merged shards equal one process", test_cluster_shards_equal_one_process},
    {"cluster: slurm script", test_slurm_script},
    {NULL, NULL},
};
