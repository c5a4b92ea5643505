/* test_db.c: the results store (harness/db.c).
 *
 * Every test works in its own mkdtemp directory under /tmp, removed at the
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
#include <unistd.h>

#include "db.h"
#include "test.h"

static const char CONFIG[] =
    "{\"name\":\"t\",\"task\":{\"name\":\"mqar\",\"seq_len\":64},\"train\":{\"lr\":0.001}}";

/* A fresh directory "/tmp/memlab_db_XXXXXX" in dir[cap]; 0 or -1. */
static int tmp_dir(char *dir, size_t cap) {
    snprintf(dir, cap, "/tmp/memlab_db_XXXXXX");
    if (!mkdtemp(dir)) {
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
 * and schema version 1 with both tables and the metrics index, in WAL mode. */
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
        CHECK(raw_int(h, "SELECT version FROM schema_version") == 1, "schema_version != 1");
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
                  raw_int(h, "SELECT version FROM schema_version") == 1,
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
 * bookkeeping table alone) is migrated to 1, a database of something else
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
        CHECK(raw_exec(h, "UPDATE schema_version SET version = 2") == SQLITE_OK, "raw update");
        sqlite3_close(h);
    }
    db = (ml_db *)1;
    CHECK(db_open(&db, path, &e) == -1, "newer schema accepted");
    CHECK(db == NULL, "failed db_open left *out set");
    CHECK(strstr(e.msg, "newer") && strstr(e.msg, "version 2"), "newer-version message: %s",
          e.msg);
    if ((h = raw_open(path))) {
        CHECK(raw_int(h, "SELECT version FROM schema_version") == 2, "newer file modified");
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
        CHECK(raw_int(h, "SELECT version FROM schema_version") == 1, "not migrated to 1");
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
    {NULL, NULL},
};
