/* test_db.c: the results store (harness/db.c).
 *
 * Every test works in its own fresh directory under $TMPDIR, removed at the
 * end, and reads back what db.c wrote through a separate raw sqlite3
 * connection, so the checks do not trust db.c's own statements. What the
 * stored config contains (spec.c) and which metrics a run writes (train.c)
 * are tested elsewhere. */
#define _XOPEN_SOURCE 700 /* nftw, mkdtemp */

#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "test.h"
#include "tmpdir.h"

/* The schema version db.c writes. */
#define CODE_SCHEMA 3

static const char CONFIG[] =
    "{\"name\":\"t\",\"task\":{\"name\":\"mqar\",\"seq_len\":64},\"train\":{\"lr\":0.001}}";

/* A fresh directory "$TMPDIR/memlab-db-" + six random characters in dir[cap]; 0 or -1. */
static int tmp_dir(char *dir, size_t cap) {
    if (temp_dir_make(dir, cap, "memlab-db")) {
        CHECK(0, "mkdtemp failed");
        return -1;
    }
    return 0;
}

/* nftw callback: remove one entry (children come first, FTW_DEPTH). */
static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    return remove(path);
}

/* Remove dir and everything under it. */
static void rm_tree(const char *dir) {
    CHECK(nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS) == 0, "cannot remove %s", dir);
}

/* A raw connection to path (must exist), or NULL after a failed check. */
static sqlite3 *raw_open(const char *path) {
    sqlite3 *h = NULL;
    int rc = sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE, NULL);
    CHECK(rc == SQLITE_OK, "raw open %s: %s", path, h ? sqlite3_errmsg(h) : "?");
    if (rc != SQLITE_OK) {
        sqlite3_close(h);
        return NULL;
    }
    return h;
}

/* The first column of the first row of sql as an integer (-999 when there
 * is no row, after a failed check). */
static long long raw_int(sqlite3 *h, const char *sql) {
    sqlite3_stmt *st = NULL;
    long long v = -999;
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK) {
        CHECK(0, "prepare %s: %s", sql, sqlite3_errmsg(h));
        return v;
    }
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    else CHECK(0, "no row from %s: %s", sql, sqlite3_errmsg(h));
    sqlite3_finalize(st);
    return v;
}

/* The same as text into buf ("NULL" for SQL NULL). */
static void raw_text(sqlite3 *h, const char *sql, char *buf, size_t cap) {
    sqlite3_stmt *st = NULL;
    snprintf(buf, cap, "(no row)");
    if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK) {
        CHECK(0, "prepare %s: %s", sql, sqlite3_errmsg(h));
        return;
    }
    if (sqlite3_step(st) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, cap, "%s", t ? (const char *)t : "NULL");
    } else {
        CHECK(0, "no row from %s: %s", sql, sqlite3_errmsg(h));
    }
    sqlite3_finalize(st);
}

/* Run sql on a raw connection; returns sqlite's code. */
static int raw_exec(sqlite3 *h, const char *sql) { return sqlite3_exec(h, sql, NULL, NULL, NULL); }

/* An ISO 8601 UTC timestamp as db.c writes it: YYYY-MM-DDTHH:MM:SS.sssZ. */
static int is_iso_utc(const char *s) {
    static const char pat[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    if (strlen(s) != sizeof pat - 1) return 0;
    for (size_t i = 0; pat[i]; i++)
        if (pat[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i]) return 0;
    return 1;
}

/* Opening a path whose directory is missing creates the directory, the file
 * and the current schema version with its tables and indexes, in WAL mode. */
static void test_db_open_creates(void) {
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/results/memlab.db", dir);
    ml_db *db = NULL;
    ml_error e;
    CHECK(db_open(&db, path, &e) == 0 && db, "db_open: %s", e.msg);
    db_close(db);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && S_ISREG(sb.st_mode), "%s not created", path);
    sqlite3 *h = raw_open(path);
    if (h) {
        char mode[32];
        raw_text(h, "PRAGMA journal_mode", mode, sizeof mode);
        CHECK(!strcmp(mode, "wal"), "journal_mode is %s", mode);
        CHECK(raw_int(h, "SELECT count(*) FROM schema_version") == 1, "schema_version rows");
        CHECK(raw_int(h, "SELECT version FROM schema_version") == CODE_SCHEMA,
              "schema_version != %d", CODE_SCHEMA);
        CHECK(raw_int(h, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN "
                         "('runs','metrics','sweeps')") == 3,
              "sweeps table missing");
        CHECK(raw_int(h, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN "
                         "('runs','metrics')") == 2,
              "runs/metrics tables missing");
        CHECK(raw_int(h, "SELECT count(*) FROM pragma_index_info('metrics_run_name') "
                         "WHERE name IN ('run_id','name')") == 2,
              "index on metrics(run_id, name) missing");
        CHECK(raw_int(h, "SELECT count(*) FROM runs") == 0, "new file has runs");
        sqlite3_close(h);
    }
    rm_tree(dir);
}

/* A run and its metrics read back exactly; timestamps are UTC ISO 8601 and
 * current; db_begin/db_commit groups are invisible to other connections
 * until committed. */
static void test_db_roundtrip(void) {
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/r.db", dir);
    ml_db *db = NULL;
    ml_error e;
    if (db_open(&db, path, &e)) {
        CHECK(0, "db_open: %s", e.msg);
        rm_tree(dir);
        return;
    }
    long long run = 0, run2 = 0;
    CHECK(db_run_begin(db, CONFIG, "hash1", "v0.1-dirty", "box; cpu", &run, &e) == 0,
          "db_run_begin: %s", e.msg);
    CHECK(db_run_begin(db, CONFIG, "hash1", NULL, NULL, &run2, &e) == 0, "db_run_begin 2: %s",
          e.msg);
    CHECK(run > 0 && run2 > run, "run ids %lld, %lld", run, run2);
    sqlite3 *h = raw_open(path);
    if (!h) {
        db_close(db);
        rm_tree(dir);
        return;
    }
    char buf[256], sql[256];
    snprintf(sql, sizeof sql, "SELECT status FROM runs WHERE id=%lld", run);
    raw_text(h, sql, buf, sizeof buf);
    CHECK(!strcmp(buf, "running"), "status after begin: %s", buf);
    snprintf(sql, sizeof sql,
             "SELECT config||'|'||config_hash||'|'||code_version||'|'||machine||'|'||"
             "ifnull(ended,'NULL')||'|'||ifnull(error,'NULL') FROM runs WHERE id=%lld",
             run);
    raw_text(h, sql, buf, sizeof buf);
    char want[256];
    snprintf(want, sizeof want, "%s|hash1|v0.1-dirty|box; cpu|NULL|NULL", CONFIG);
    CHECK(!strcmp(buf, want), "run row: %s", buf);
    snprintf(sql, sizeof sql,
             "SELECT typeof(code_version)||typeof(machine) FROM runs WHERE id=%lld", run2);
    raw_text(h, sql, buf, sizeof buf);
    CHECK(!strcmp(buf, "nullnull"), "NULL code_version/machine stored as %s", buf);
    snprintf(sql, sizeof sql, "SELECT started FROM runs WHERE id=%lld", run);
    raw_text(h, sql, buf, sizeof buf);
    CHECK(is_iso_utc(buf), "started '%s' is not ISO 8601 UTC", buf);
    snprintf(sql, sizeof sql,
             "SELECT abs(julianday(started) - julianday('now')) * 86400 < 60 FROM runs "
             "WHERE id=%lld",
             run);
    CHECK(raw_int(h, sql) == 1, "started is not within a minute of now (UTC)");

    static const struct {
        long step;
        const char *split, *name;
        double value;
    } m[] = {{10, "train", "loss", 2.302585092994046},
             {10, "test", "accuracy", 0.25},
             {20, "train", "loss", 1e-300},
             {20, "test", "accuracy", -0.0625}};
    CHECK(db_begin(db, &e) == 0, "db_begin: %s", e.msg);
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
        CHECK(db_metric(db, run, m[i].step, m[i].split, m[i].name, m[i].value, &e) == 0,
              "db_metric %zu: %s", i, e.msg);
    CHECK(raw_int(h, "SELECT count(*) FROM metrics") == 0, "uncommitted metrics visible");
    CHECK(db_commit(db, &e) == 0, "db_commit: %s", e.msg);
    CHECK(raw_int(h, "SELECT count(*) FROM metrics") == 4, "committed metrics not visible");
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        sqlite3_stmt *st = NULL;
        CHECK(sqlite3_prepare_v2(h,
                                 "SELECT value FROM metrics WHERE run_id=?1 AND step=?2 AND "
                                 "split=?3 AND name=?4",
                                 -1, &st, NULL) == SQLITE_OK,
              "prepare: %s", sqlite3_errmsg(h));
        if (!st) continue;
        sqlite3_bind_int64(st, 1, run);
        sqlite3_bind_int64(st, 2, m[i].step);
        sqlite3_bind_text(st, 3, m[i].split, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, m[i].name, -1, SQLITE_STATIC);
        CHECK(sqlite3_step(st) == SQLITE_ROW, "metric %zu missing", i);
        double v = sqlite3_column_double(st, 0);
        CHECK(v == m[i].value, "metric %zu reads back %.17g, wrote %.17g", i, v, m[i].value);
        CHECK(sqlite3_step(st) == SQLITE_DONE, "metric %zu stored twice", i);
        sqlite3_finalize(st);
    }

    CHECK(db_run_end(db, run, "finished", 20, NULL, &e) == 0, "db_run_end: %s", e.msg);
    CHECK(db_run_end(db, run2, "diverged", 7, "loss is nan", &e) == 0, "db_run_end 2: %s",
          e.msg);
    snprintf(sql, sizeof sql,
             "SELECT status||'|'||step||'|'||ifnull(error,'NULL') FROM runs WHERE id=%lld", run);
    raw_text(h, sql, buf, sizeof buf);
    CHECK(!strcmp(buf, "finished|20|NULL"), "ended run: %s", buf);
    snprintf(sql, sizeof sql,
             "SELECT status||'|'||step||'|'||ifnull(error,'NULL') FROM runs WHERE id=%lld", run2);
    raw_text(h, sql, buf, sizeof buf);
    CHECK(!strcmp(buf, "diverged|7|loss is nan"), "ended run 2: %s", buf);
    snprintf(sql, sizeof sql, "SELECT ended FROM runs WHERE id=%lld", run);
    raw_text(h, sql, buf, sizeof buf);
    CHECK(is_iso_utc(buf), "ended '%s' is not ISO 8601 UTC", buf);
    snprintf(sql, sizeof sql, "SELECT ended >= started FROM runs WHERE id=%lld", run);
    CHECK(raw_int(h, sql) == 1, "ended before started");

    /* The stored config is queryable JSON. */
    snprintf(sql, sizeof sql, "SELECT json_extract(config, '$.task.seq_len') FROM runs "
                              "WHERE id=%lld", run);
    CHECK(raw_int(h, sql) == 64, "json_extract task.seq_len");
    snprintf(sql, sizeof sql, "SELECT json_extract(config, '$.task.name') FROM runs "
                              "WHERE id=%lld", run);
    raw_text(h, sql, buf, sizeof buf);
    CHECK(!strcmp(buf, "mqar"), "json_extract task.name: %s", buf);
    snprintf(sql, sizeof sql, "SELECT json_extract(config, '$.train.lr') = 0.001 FROM runs "
                              "WHERE id=%lld", run);
    CHECK(raw_int(h, sql) == 1, "json_extract train.lr");
    sqlite3_close(h);
    db_close(db);
    rm_tree(dir);
}

/* Invalid input is refused with a message and leaves nothing behind: a
 * status outside the CHECK list, a config that is not JSON, a metric of an
 * unknown run (foreign key), ending an unknown run. */
static void test_db_constraints(void) {
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/c.db", dir);
    ml_db *db = NULL;
    ml_error e;
    if (db_open(&db, path, &e)) {
        CHECK(0, "db_open: %s", e.msg);
        rm_tree(dir);
        return;
    }
    long long run = 0, bad = 0;
    CHECK(db_run_begin(db, CONFIG, "h", "v", "m", &run, &e) == 0, "db_run_begin: %s", e.msg);
    CHECK(db_run_end(db, run, "done", 5, NULL, &e) == -1, "status 'done' accepted");
    CHECK(strstr(e.msg, "CHECK constraint") && strstr(e.msg, "UPDATE runs"),
          "status error does not name the CHECK and the statement: %s", e.msg);
    CHECK(db_run_begin(db, "{\"a\":", "h", "v", "m", &bad, &e) == -1, "broken JSON accepted");
    CHECK(strstr(e.msg, "JSON") != NULL, "broken JSON message: %s", e.msg);
    CHECK(db_metric(db, run + 100, 1, "train", "loss", 1.0, &e) == -1,
          "metric of an unknown run accepted");
    CHECK(strstr(e.msg, "FOREIGN KEY") && strstr(e.msg, "INSERT INTO metrics"),
          "foreign key message: %s", e.msg);
    CHECK(db_run_end(db, run + 100, "failed", 0, NULL, &e) == -1, "unknown run ended");
    CHECK(strstr(e.msg, "no run") != NULL, "unknown run message: %s", e.msg);
    /* The statements stay usable after errors. */
    CHECK(db_metric(db, run, 1, "train", "loss", 1.0, &e) == 0, "db_metric after errors: %s",
          e.msg);
    db_close(db);

    sqlite3 *h = raw_open(path);
    if (h) {
        CHECK(raw_int(h, "SELECT count(*) FROM runs") == 1, "a refused run was stored");
        char buf[64];
        raw_text(h, "SELECT status FROM runs", buf, sizeof buf);
        CHECK(!strcmp(buf, "running"), "refused status changed the run: %s", buf);
        CHECK(raw_int(h, "SELECT count(*) FROM metrics") == 1, "metrics count");
        /* The CHECK is in the schema, not only in db.c. */
        int rc = raw_exec(h, "INSERT INTO runs(config, config_hash, status) "
                             "VALUES ('{}', 'h', 'complete')");
        CHECK(rc == SQLITE_CONSTRAINT, "raw insert with bad status gave %d", rc);
        sqlite3_close(h);
    }
    rm_tree(dir);
}

/* A write that fails inside a db_begin group rolls the group back, so the
 * caller's clean-up db_run_end is written and survives closing. */
static void test_db_failed_group(void) {
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/g.db", dir);
    ml_db *db = NULL;
    ml_error e;
    if (db_open(&db, path, &e)) {
        CHECK(0, "db_open: %s", e.msg);
        rm_tree(dir);
        return;
    }
    long long run = 0;
    CHECK(db_run_begin(db, CONFIG, "h", "v", "m", &run, &e) == 0, "db_run_begin: %s", e.msg);
    CHECK(db_begin(db, &e) == 0, "db_begin: %s", e.msg);
    CHECK(db_metric(db, run, 1, "train", "loss", 1.0, &e) == 0, "db_metric: %s", e.msg);
    CHECK(db_metric(db, run + 1, 1, "train", "loss", 1.0, &e) == -1, "bad metric accepted");
    CHECK(db_run_end(db, run, "failed", 1, "boom", &e) == 0, "db_run_end after failure: %s",
          e.msg);
    /* A new group works after the failed one. */
    CHECK(db_begin(db, &e) == 0, "db_begin after failure: %s", e.msg);
    CHECK(db_metric(db, run, 2, "train", "loss", 0.5, &e) == 0, "db_metric: %s", e.msg);
    CHECK(db_commit(db, &e) == 0, "db_commit: %s", e.msg);
    db_close(db);
    sqlite3 *h = raw_open(path);
    if (h) {
        char buf[64];
        raw_text(h, "SELECT status||'|'||error FROM runs", buf, sizeof buf);
        CHECK(!strcmp(buf, "failed|boom"), "final status lost: %s", buf);
        CHECK(raw_int(h, "SELECT count(*) FROM metrics WHERE step=1") == 0,
              "metric of the failed group kept");
        CHECK(raw_int(h, "SELECT count(*) FROM metrics WHERE step=2") == 1,
              "metric of the later group lost");
        sqlite3_close(h);
    }
    rm_tree(dir);
}

/* Reopening keeps the data and does not re-create or re-migrate. */
static void test_db_reopen(void) {
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/o.db", dir);
    ml_db *db = NULL;
    ml_error e;
    long long run = 0, run2 = 0;
    CHECK(db_open(&db, path, &e) == 0, "db_open 1: %s", e.msg);
    if (db) {
        CHECK(db_run_begin(db, CONFIG, "h", "v", "m", &run, &e) == 0, "begin: %s", e.msg);
        CHECK(db_metric(db, run, 1, "test", "accuracy", 0.5, &e) == 0, "metric: %s", e.msg);
        db_close(db);
    }
    db = NULL;
    CHECK(db_open(&db, path, &e) == 0, "db_open 2: %s", e.msg);
    if (db) {
        CHECK(db_run_begin(db, CONFIG, "h", "v", "m", &run2, &e) == 0, "begin 2: %s", e.msg);
        CHECK(run2 > run, "run id %lld after %lld", run2, run);
        CHECK(db_metric(db, run, 2, "test", "accuracy", 0.75, &e) == 0, "metric 2: %s", e.msg);
        db_close(db);
    }
    sqlite3 *h = raw_open(path);
    if (h) {
        CHECK(raw_int(h, "SELECT count(*) FROM runs") == 2, "runs lost on reopen");
        CHECK(raw_int(h, "SELECT count(*) FROM metrics WHERE run_id=1") == 2, "metrics lost");
        CHECK(raw_int(h, "SELECT count(*) FROM schema_version") == 1 &&
                  raw_int(h, "SELECT version FROM schema_version") == CODE_SCHEMA,
              "schema_version changed on reopen");
        sqlite3_close(h);
    }
    rm_tree(dir);
}

/* Create path with a raw connection and run sql on it. */
static void raw_make(const char *path, const char *sql) {
    sqlite3 *h = NULL;
    CHECK(sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) ==
              SQLITE_OK,
          "raw create %s", path);
    CHECK(raw_exec(h, sql) == SQLITE_OK, "raw %s: %s", sql, sqlite3_errmsg(h));
    sqlite3_close(h);
}

/* Schema versions: a newer file is refused untouched, a version-0 file (the
 * bookkeeping table alone) is migrated to the current version, a database of something else
 * is refused untouched. */
static void test_db_versions(void) {
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    ml_error e;

    snprintf(path, sizeof path, "%s/new.db", dir);
    ml_db *db = NULL;
    CHECK(db_open(&db, path, &e) == 0, "db_open: %s", e.msg);
    db_close(db);
    sqlite3 *h = raw_open(path);
    if (h) {
        CHECK(raw_exec(h, "UPDATE schema_version SET version = 4") == SQLITE_OK, "raw update");
        sqlite3_close(h);
    }
    db = (ml_db *)1;
    CHECK(db_open(&db, path, &e) == -1, "newer schema accepted");
    CHECK(db == NULL, "failed db_open left *out set");
    CHECK(strstr(e.msg, "newer") && strstr(e.msg, "version 4"), "newer-version message: %s",
          e.msg);
    if ((h = raw_open(path))) {
        CHECK(raw_int(h, "SELECT version FROM schema_version") == 4, "newer file modified");
        sqlite3_close(h);
    }

    snprintf(path, sizeof path, "%s/old.db", dir);
    raw_make(path, "CREATE TABLE schema_version(version INTEGER NOT NULL);"
                   "INSERT INTO schema_version VALUES (0);");
    db = NULL;
    CHECK(db_open(&db, path, &e) == 0, "version-0 file refused: %s", e.msg);
    long long run = 0;
    if (db) {
        CHECK(db_run_begin(db, CONFIG, "h", "v", "m", &run, &e) == 0, "begin: %s", e.msg);
        db_close(db);
    }
    if ((h = raw_open(path))) {
        CHECK(raw_int(h, "SELECT version FROM schema_version") == CODE_SCHEMA,
              "not migrated to %d", CODE_SCHEMA);
        CHECK(raw_int(h, "SELECT count(*) FROM schema_version") == 1, "schema_version rows");
        CHECK(raw_int(h, "SELECT count(*) FROM runs") == 1, "migrated file unusable");
        sqlite3_close(h);
    }

    snprintf(path, sizeof path, "%s/other.db", dir);
    raw_make(path, "CREATE TABLE songs(title TEXT);");
    db = NULL;
    CHECK(db_open(&db, path, &e) == -1, "foreign database accepted");
    CHECK(strstr(e.msg, "not a memlab") != NULL, "foreign database message: %s", e.msg);
    if ((h = raw_open(path))) {
        CHECK(raw_int(h, "SELECT count(*) FROM sqlite_master") == 1, "foreign file modified");
        sqlite3_close(h);
    }
    rm_tree(dir);
}

/* Paths that cannot hold a database give an error, not a crash: inside a
 * regular file, two missing directory levels, a directory itself, and a file
 * that is not SQLite. */
static void test_db_bad_paths(void) {
    char dir[64], path[192], file[128];
    if (tmp_dir(dir, sizeof dir)) return;
    ml_error e;
    ml_db *db;

    snprintf(file, sizeof file, "%s/plain", dir);
    int fd = open(file, O_CREAT | O_WRONLY, 0600);
    CHECK(fd >= 0, "create %s", file);
    static const char junk[] = "this is a text file, not an SQLite database, and it is long "
                               "enough to have a header that SQLite will read and reject.\n";
    if (fd >= 0) {
        CHECK(write(fd, junk, sizeof junk - 1) == (ssize_t)(sizeof junk - 1), "write");
        close(fd);
    }

    snprintf(path, sizeof path, "%s/x.db", file);
    db = (ml_db *)1;
    CHECK(db_open(&db, path, &e) == -1, "path inside a regular file accepted");
    CHECK(db == NULL, "*out not cleared");
    CHECK(strstr(e.msg, "not a directory") != NULL, "message: %s", e.msg);

    snprintf(path, sizeof path, "%s/a/b/x.db", dir);
    db = NULL;
    CHECK(db_open(&db, path, &e) == -1, "two missing levels accepted");
    CHECK(strstr(e.msg, "cannot create directory") != NULL, "message: %s", e.msg);

    db = NULL;
    CHECK(db_open(&db, dir, &e) == -1, "a directory accepted as database");
    CHECK(e.msg[0] != '\0', "no message for a directory");

    db = NULL;
    CHECK(db_open(&db, file, &e) == -1, "a text file accepted as database");
    CHECK(strstr(e.msg, "not a database") != NULL, "message: %s", e.msg);

    db = NULL;
    CHECK(db_open(&db, "", &e) == -1, "empty path accepted");
    rm_tree(dir);
}

/* NaN is stored as NULL (REAL cannot hold it); infinities stay REAL. */
static void test_db_nan(void) {
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/n.db", dir);
    ml_db *db = NULL;
    ml_error e;
    if (db_open(&db, path, &e)) {
        CHECK(0, "db_open: %s", e.msg);
        rm_tree(dir);
        return;
    }
    long long run = 0;
    CHECK(db_run_begin(db, CONFIG, "h", "v", "m", &run, &e) == 0, "begin: %s", e.msg);
    CHECK(db_metric(db, run, 1, "train", "loss", NAN, &e) == 0, "NaN metric: %s", e.msg);
    CHECK(db_metric(db, run, 2, "train", "loss", INFINITY, &e) == 0, "Inf metric: %s", e.msg);
    db_close(db);
    sqlite3 *h = raw_open(path);
    if (h) {
        char buf[32];
        raw_text(h, "SELECT typeof(value) FROM metrics WHERE step=1", buf, sizeof buf);
        CHECK(!strcmp(buf, "null"), "NaN stored as %s", buf);
        raw_text(h, "SELECT typeof(value) FROM metrics WHERE step=2", buf, sizeof buf);
        CHECK(!strcmp(buf, "real"), "Inf stored as %s", buf);
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(h, "SELECT value FROM metrics WHERE step=2", -1, &st, NULL) ==
                SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW)
            CHECK(isinf(sqlite3_column_double(st, 0)), "Inf reads back as %g",
                  sqlite3_column_double(st, 0));
        else
            CHECK(0, "Inf metric unreadable");
        sqlite3_finalize(st);
        sqlite3_close(h);
    }
    rm_tree(dir);
}

/* Several processes opening one new file at once all succeed (the schema is
 * created once, under BEGIN IMMEDIATE) and all their grouped writes land:
 * what WAL plus the busy timeout are for. */
static void test_db_concurrent(void) {
    enum { PROCS = 4, GROUPS = 5, PER_GROUP = 10 };
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/results/shared.db", dir);
    pid_t pid[PROCS];
    for (int p = 0; p < PROCS; p++) {
        pid[p] = fork();
        CHECK(pid[p] >= 0, "fork");
        if (pid[p] != 0) continue;
        /* Child: report through the exit status only. */
        ml_db *db = NULL;
        ml_error e;
        long long run = 0;
        int bad = db_open(&db, path, &e) != 0;
        if (!bad) bad = db_run_begin(db, CONFIG, "h", "v", "m", &run, &e) != 0;
        for (int g = 0; g < GROUPS && !bad; g++) {
            bad = db_begin(db, &e) != 0;
            for (int i = 0; i < PER_GROUP && !bad; i++)
                bad = db_metric(db, run, g * PER_GROUP + i, "train", "loss", 1.0, &e) != 0;
            if (!bad) bad = db_commit(db, &e) != 0;
        }
        if (!bad) bad = db_run_end(db, run, "finished", GROUPS * PER_GROUP, NULL, &e) != 0;
        if (bad) fprintf(stderr, "child %d: %s\n", p, e.msg);
        db_close(db);
        _exit(bad);
    }
    for (int p = 0; p < PROCS; p++) {
        int status = 0;
        if (pid[p] <= 0) continue;
        CHECK(waitpid(pid[p], &status, 0) == pid[p] && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0,
              "writer process %d failed (status %d)", p, status);
    }
    sqlite3 *h = raw_open(path);
    if (h) {
        CHECK(raw_int(h, "SELECT count(*) FROM runs WHERE status='finished'") == PROCS,
              "finished runs");
        CHECK(raw_int(h, "SELECT count(*) FROM metrics") == PROCS * GROUPS * PER_GROUP,
              "metric rows");
        CHECK(raw_int(h, "SELECT count(*) FROM schema_version") == 1, "schema_version rows");
        sqlite3_close(h);
    }
    rm_tree(dir);
}

/* The version-1 schema as it was published (db.c's first migration), for
 * the upgrade test. */
static const char SCHEMA_V1[] =
    "CREATE TABLE schema_version(version INTEGER NOT NULL);"
    "INSERT INTO schema_version VALUES (1);"
    "CREATE TABLE runs (id INTEGER PRIMARY KEY, config TEXT NOT NULL, config_hash TEXT NOT NULL,"
    " code_version TEXT, machine TEXT, started TEXT, ended TEXT, status TEXT NOT NULL CHECK(status"
    " IN ('running','finished','diverged','failed','interrupted')), error TEXT, step INTEGER);"
    "CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(id), step INTEGER NOT NULL,"
    " split TEXT NOT NULL, name TEXT NOT NULL, value REAL);"
    "CREATE INDEX metrics_run_name ON metrics(run_id, name);"
    "INSERT INTO runs(config, config_hash, status, step) VALUES ('{}', 'old', 'finished', 5);"
    "INSERT INTO runs(config, config_hash, status, step) VALUES ('{}', 'stale', 'running', 2);"
    "INSERT INTO metrics VALUES (1, 5, 'test', 'accuracy', 0.25);";

/* A populated version-1 file is upgraded in place: its rows and metrics
 * stay, they get no sweep and no owner, and the sweep tables work on it (a
 * v1 'running' row, which has no owner, counts as dead). */
static void test_db_migrate_v1(void) {
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/v1.db", dir);
    raw_make(path, SCHEMA_V1);
    ml_db *db = NULL;
    ml_error e;
    CHECK(db_open(&db, path, &e) == 0, "v1 file refused: %s", e.msg);
    if (db) {
        db_state st;
        long long id = 0, run = 0, sweep = 0;
        CHECK(db_hash_state(db, "old", &st, &id, &e) == 0 && st == DB_FINISHED && id == 1,
              "old finished row: state %d id %lld", (int)st, id);
        CHECK(db_sweep_register(db, "s", "spec", "{\"a\": 1}", "rh", &sweep, &e) == 0 && sweep > 0,
              "register on a migrated file: %s", e.msg);
        db_claim c;
        CHECK(db_run_claim(db, sweep, CONFIG, "stale", "v", "m", &run, &c, &e) == 0 &&
                  c == DB_CLAIMED,
              "claim over an owner-less running row: %d %s", (int)c, e.msg);
        db_close(db);
    }
    sqlite3 *h = raw_open(path);
    if (h) {
        CHECK(raw_int(h, "SELECT version FROM schema_version") == CODE_SCHEMA, "not upgraded");
        CHECK(raw_int(h, "SELECT count(*) FROM metrics WHERE run_id=1 AND value=0.25") == 1,
              "old metric lost");
        CHECK(raw_int(h, "SELECT count(*) FROM runs WHERE sweep_id IS NULL AND owner IS NULL") ==
                  2,
              "old rows changed");
        CHECK(raw_int(h, "SELECT count(*) FROM runs WHERE id=2 AND status='interrupted'") == 1,
              "owner-less running row not marked interrupted");
        sqlite3_close(h);
    }
    rm_tree(dir);
}

/* The owner of this host's process pid with its real start time. */
static void owner_of(long pid, char *buf, size_t cap) {
    char self[320];
    db_owner_self(self, sizeof self);
    /* "host:pid:start": replace pid and start by those of pid. */
    char path[64], stat[1024] = "";
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(stat, 1, sizeof stat - 1, f);
        stat[n] = '\0';
        fclose(f);
    }
    const char *p = strrchr(stat, ')');
    unsigned long long start = 0;
    for (int field = 2; p && field < 22; field++) {
        p = strchr(p + 1, ' ');
    }
    if (p) start = strtoull(p + 1, NULL, 10);
    char *c1 = strchr(self, ':');
    if (c1) *c1 = '\0';
    snprintf(buf, cap, "%.200s:%ld:%llu", self, pid, start);
}

/* Claiming: a done hash is not claimed again; a running row of a live owner
 * (this process) makes the hash busy; rows of owners that are gone (exited,
 * a zombie not yet reaped, a pid whose start time differs, another host with
 * a stale heartbeat) are marked interrupted and the hash is claimed again;
 * another host with a fresh heartbeat is alive. */
static void test_db_claim(void) {
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/c.db", dir);
    ml_db *db = NULL;
    ml_error e;
    if (db_open(&db, path, &e)) {
        CHECK(0, "db_open: %s", e.msg);
        rm_tree(dir);
        return;
    }
    long long sweep = 0, run = 0, run2 = 0;
    db_claim c;
    CHECK(db_sweep_register(db, "s", "spec", "{}", "rh", &sweep, &e) == 0, "%s", e.msg);
    /* Fresh hash: claimed, owned by this process. */
    CHECK(db_run_claim(db, sweep, CONFIG, "h1", "v", "m", &run, &c, &e) == 0 && c == DB_CLAIMED &&
              run > 0,
          "first claim: %d %s", (int)c, e.msg);
    /* Again while we run it: busy, nothing inserted. */
    CHECK(db_run_claim(db, sweep, CONFIG, "h1", "v", "m", &run2, &c, &e) == 0 &&
              c == DB_CLAIM_BUSY && run2 == 0,
          "claim of a live run: %d", (int)c);
    /* Finished: done from then on. */
    CHECK(db_run_end(db, run, "finished", 10, NULL, &e) == 0, "%s", e.msg);
    CHECK(db_run_claim(db, sweep, CONFIG, "h1", "v", "m", &run2, &c, &e) == 0 &&
              c == DB_CLAIM_DONE && run2 == 0,
          "claim of a finished run: %d", (int)c);
    /* A diverged run is done too. */
    CHECK(db_run_claim(db, sweep, CONFIG, "h2", "v", "m", &run, &c, &e) == 0 && c == DB_CLAIMED,
          "claim h2");
    CHECK(db_run_end(db, run, "diverged", 3, "nan", &e) == 0, "%s", e.msg);
    CHECK(db_run_claim(db, sweep, CONFIG, "h2", "v", "m", &run2, &c, &e) == 0 &&
              c == DB_CLAIM_DONE,
          "claim of a diverged run: %d", (int)c);
    /* failed and interrupted are claimed again. */
    CHECK(db_run_claim(db, sweep, CONFIG, "h3", "v", "m", &run, &c, &e) == 0 && c == DB_CLAIMED,
          "claim h3");
    CHECK(db_run_end(db, run, "failed", 0, "x", &e) == 0, "%s", e.msg);
    CHECK(db_run_claim(db, sweep, CONFIG, "h3", "v", "m", &run2, &c, &e) == 0 &&
              c == DB_CLAIMED && run2 > run,
          "claim after failed: %d", (int)c);
    db_close(db);
    db = NULL;

    /* A child claims and exits without finishing: checked once as a zombie
     * (not yet reaped), once reaped. */
    const char *hashes[2] = {"zombie", "exited"};
    for (int k = 0; k < 2; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            ml_db *cdb = NULL;
            ml_error ce;
            long long r = 0;
            db_claim cc;
            int bad = db_open(&cdb, path, &ce) ||
                      db_run_claim(cdb, sweep, CONFIG, hashes[k], "v", "m", &r, &cc, &ce) ||
                      cc != DB_CLAIMED;
            db_close(cdb);
            _exit(bad);
        }
        CHECK(pid > 0, "fork");
        if (pid <= 0) continue;
        int status = 0;
        if (k == 1) {
            CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && !WEXITSTATUS(status),
                  "claiming child failed");
        } else {
            /* Let it exit but stay unreaped. */
            for (int i = 0; i < 500; i++) {
                char st[64], p2[64];
                snprintf(p2, sizeof p2, "/proc/%ld/stat", (long)pid);
                FILE *f = fopen(p2, "r");
                if (!f) break;
                size_t n = fread(st, 1, sizeof st - 1, f);
                st[n] = '\0';
                fclose(f);
                const char *q = strrchr(st, ')');
                if (q && q[1] == ' ' && q[2] == 'Z') break;
                nanosleep(&(struct timespec){.tv_sec = 0, .tv_nsec = 2000000}, NULL);
            }
        }
        CHECK(db_open(&db, path, &e) == 0, "%s", e.msg);
        if (db) {
            db_state st;
            long long id;
            CHECK(db_hash_state(db, hashes[k], &st, &id, &e) == 0 && st == DB_INTERRUPTED,
                  "%s: state of a dead owner's row %d", hashes[k], (int)st);
            CHECK(db_run_claim(db, sweep, CONFIG, hashes[k], "v", "m", &run, &c, &e) == 0 &&
                      c == DB_CLAIMED,
                  "%s: claim over a dead owner: %d", hashes[k], (int)c);
            db_close(db);
            db = NULL;
        }
        if (k == 0) waitpid(pid, &status, 0);
    }
    /* Owners written by hand: this process with another start time (a
     * reused pid), another host fresh and stale. */
    char me[320], reused[400], sql[1200];
    owner_of((long)getpid(), me, sizeof me);
    snprintf(reused, sizeof reused, "%s9", me);
    sqlite3 *h = raw_open(path);
    if (h) {
        snprintf(sql, sizeof sql,
                 "INSERT INTO runs(config, config_hash, status, owner, heartbeat, started) VALUES"
                 " ('{}', 'reused', 'running', '%s', strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ','now'),"
                 " strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ','now')),"
                 " ('{}', 'mine', 'running', '%s', NULL, strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ','now')),"
                 " ('{}', 'fresh', 'running', 'elsewhere.example:1:1',"
                 " strftime('%%Y-%%m-%%dT%%H:%%M:%%fZ','now'), NULL),"
                 " ('{}', 'stale', 'running', 'elsewhere.example:1:1', '2000-01-01T00:00:00Z',"
                 " NULL)",
                 reused, me);
        CHECK(raw_exec(h, sql) == SQLITE_OK, "insert owners: %s", sqlite3_errmsg(h));
        sqlite3_close(h);
    }
    CHECK(db_open(&db, path, &e) == 0, "%s", e.msg);
    if (db) {
        static const struct {
            const char *hash;
            db_claim want;
        } cases[] = {{"reused", DB_CLAIMED},
                     {"mine", DB_CLAIM_BUSY},
                     {"fresh", DB_CLAIM_BUSY},
                     {"stale", DB_CLAIMED}};
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            CHECK(db_run_claim(db, sweep, CONFIG, cases[i].hash, "v", "m", &run, &c, &e) == 0 &&
                      c == cases[i].want,
                  "owner case %s: claim %d, want %d (%s)", cases[i].hash, (int)c,
                  (int)cases[i].want, e.msg);
        db_close(db);
    }
    if ((h = raw_open(path))) {
        CHECK(raw_int(h, "SELECT count(*) FROM runs WHERE config_hash IN ('reused','stale') AND "
                         "status='interrupted' AND error LIKE 'its process ended%'") == 2,
              "dead owners' rows not marked interrupted");
        CHECK(raw_int(h, "SELECT count(*) FROM runs WHERE config_hash IN ('mine','fresh') AND "
                         "status='running'") == 2,
              "live owners' rows touched");
        sqlite3_close(h);
    }
    rm_tree(dir);
}

/* At most one done row per config hash among sweep runs, whatever the
 * claims do: the database refuses a second one. Runs outside sweeps
 * (memlab train) may repeat. */
static void test_db_done_once(void) {
    char dir[64], path[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/d.db", dir);
    ml_db *db = NULL;
    ml_error e;
    if (db_open(&db, path, &e)) {
        CHECK(0, "db_open: %s", e.msg);
        rm_tree(dir);
        return;
    }
    sqlite3 *h = NULL;
    long long sweep = 0, t1 = 0, t2 = 0;
    CHECK(db_sweep_register(db, "s", "spec", "{}", "rh", &sweep, &e) == 0, "%s", e.msg);
    CHECK(db_run_begin(db, CONFIG, "x", "v", "m", &t1, &e) == 0 &&
              db_run_end(db, t1, "finished", 1, NULL, &e) == 0 &&
              db_run_begin(db, CONFIG, "x", "v", "m", &t2, &e) == 0 &&
              db_run_end(db, t2, "finished", 1, NULL, &e) == 0,
          "repeated train runs refused: %s", e.msg);
    db_close(db);
    if ((h = raw_open(path))) {
        CHECK(raw_exec(h, "INSERT INTO runs(config, config_hash, status, sweep_id) VALUES "
                          "('{}', 'y', 'finished', 1)") == SQLITE_OK,
              "first done sweep row");
        CHECK(raw_exec(h, "INSERT INTO runs(config, config_hash, status, sweep_id) VALUES "
                          "('{}', 'y', 'running', 1)") == SQLITE_OK,
              "a running row beside it");
        CHECK(raw_exec(h, "UPDATE runs SET status='finished' WHERE config_hash='y' AND "
                          "status='running'") != SQLITE_OK,
              "a second done sweep row accepted");
        CHECK(raw_exec(h, "INSERT INTO runs(config, config_hash, status, sweep_id) VALUES "
                          "('{}', 'y', 'diverged', 1)") != SQLITE_OK,
              "a diverged row beside a finished one accepted");
        sqlite3_close(h);
    }
    rm_tree(dir);
}

/* Sweeps: registering is idempotent per (name, resolved hash); a changed
 * spec under the same name is a new row and the latest one is listed; the
 * resolved spec must be JSON; read-only opening refuses a missing file and
 * an older schema, and reads the sweeps and final metrics. */
static int collect_sweep(void *ctx, const db_sweep_row *row) {
    char *out = ctx;
    size_t n = strlen(out);
    snprintf(out + n, 256 - n, "%s%s=%lld:%s", n ? "," : "", row->name, row->id, row->resolved);
    return 0;
}
static void test_db_sweeps(void) {
    char dir[64], path[128], v1[128];
    if (tmp_dir(dir, sizeof dir)) return;
    snprintf(path, sizeof path, "%s/s.db", dir);
    ml_db *db = NULL;
    ml_error e;
    CHECK(db_open_readonly(&db, path, &e) == -1 && db == NULL, "read-only open of a missing file");
    CHECK(access(path, F_OK) != 0, "read-only open created the file");
    if (db_open(&db, path, &e)) {
        CHECK(0, "db_open: %s", e.msg);
        rm_tree(dir);
        return;
    }
    long long a = 0, a2 = 0, b = 0, c = 0, run = 0;
    CHECK(db_sweep_register(db, "alpha", "s1", "{\"v\": 1}", "h1", &a, &e) == 0, "%s", e.msg);
    CHECK(db_sweep_register(db, "alpha", "s1", "{\"v\": 1}", "h1", &a2, &e) == 0 && a2 == a,
          "re-registering made a new row: %lld vs %lld", a2, a);
    CHECK(db_sweep_register(db, "beta", "s", "{\"v\": 3}", "h3", &c, &e) == 0, "%s", e.msg);
    CHECK(db_sweep_register(db, "alpha", "s2", "{\"v\": 2}", "h2", &b, &e) == 0 && b > a,
          "changed spec: %lld", b);
    long long bad = 0;
    CHECK(db_sweep_register(db, "gamma", "s", "not json", "h4", &bad, &e) == -1,
          "a resolved spec that is not JSON was stored");
    /* A run with metrics for db_final_metric. */
    CHECK(db_run_begin(db, CONFIG, "m", "v", "x", &run, &e) == 0 &&
              db_metric(db, run, 10, "test", "accuracy", 0.5, &e) == 0 &&
              db_metric(db, run, 20, "test", "accuracy", 0.75, &e) == 0 &&
              db_metric(db, run, 20, "test", "loss", NAN, &e) == 0,
          "%s", e.msg);
    db_close(db);
    db = NULL;
    CHECK(db_open_readonly(&db, path, &e) == 0, "read-only: %s", e.msg);
    if (db) {
        char got[256] = "";
        CHECK(db_sweeps(db, NULL, collect_sweep, got, &e) == 0, "%s", e.msg);
        char want[256];
        snprintf(want, sizeof want, "beta=%lld:{\"v\": 3},alpha=%lld:{\"v\": 2}", c, b);
        CHECK(!strcmp(got, want), "latest sweeps: %s, want %s", got, want);
        got[0] = '\0';
        CHECK(db_sweeps(db, "alpha", collect_sweep, got, &e) == 0, "%s", e.msg);
        snprintf(want, sizeof want, "alpha=%lld:{\"v\": 2}", b);
        CHECK(!strcmp(got, want), "by name: %s", got);
        double v;
        int found;
        CHECK(db_final_metric(db, run, "test", "accuracy", &v, &found, &e) == 0 && found &&
                  v == 0.75,
              "final accuracy %g", v);
        CHECK(db_final_metric(db, run, "test", "loss", &v, &found, &e) == 0 && found && isnan(v),
              "NULL reads as NaN: %g", v);
        CHECK(db_final_metric(db, run, "test", "nothing", &v, &found, &e) == 0 && !found,
              "missing metric found");
        long long id;
        db_claim cl;
        CHECK(db_run_claim(db, b, CONFIG, "z", "v", "m", &id, &cl, &e) == -1,
              "claim through a read-only handle");
        db_close(db);
    }
    snprintf(v1, sizeof v1, "%s/v1.db", dir);
    raw_make(v1, SCHEMA_V1);
    db = NULL;
    CHECK(db_open_readonly(&db, v1, &e) == -1 && strstr(e.msg, "upgrades it"),
          "read-only open of a v1 file: %s", e.msg);
    sqlite3 *h = raw_open(v1);
    if (h) {
        CHECK(raw_int(h, "SELECT version FROM schema_version") == 1, "v1 file modified");
        sqlite3_close(h);
    }
    rm_tree(dir);
}

const test_case tests_db[] = {
    {"db_open_creates", test_db_open_creates},
    {"db_roundtrip", test_db_roundtrip},
    {"db_constraints", test_db_constraints},
    {"db_failed_group", test_db_failed_group},
    {"db_reopen", test_db_reopen},
    {"db_versions", test_db_versions},
    {"db_bad_paths", test_db_bad_paths},
    {"db_nan", test_db_nan},
    {"db_concurrent", test_db_concurrent},
    {"db_migrate_v1", test_db_migrate_v1},
    {"db_claim", test_db_claim},
    {"db_done_once", test_db_done_once},
    {"db_sweeps", test_db_sweeps},
    {NULL, NULL},
};
