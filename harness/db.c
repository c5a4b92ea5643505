/* db.c: the results store on SQLite (see db.h).
 *
 * Opening a file creates its directory (one level), switches it to WAL with a
 * 10 s busy timeout so that several memlab processes can write to one file,
 * and brings the schema to this code's version: a new file gets every
 * migration, an older one the missing ones, a newer one is refused. Version
 * checks and migrations run under BEGIN IMMEDIATE, so two processes opening
 * the same new file cannot both create the tables.
 *
 * Invariant kept by every function here: after an error no transaction is
 * left open. A write that fails inside a db_begin group rolls the group back,
 * so a caller's clean-up path (db_run_end(..., "failed", ...)) is written in
 * autocommit mode and survives, instead of vanishing with an uncommitted
 * transaction when the connection closes.
 *
 * NaN metric values are stored as NULL: SQLite's REAL cannot hold NaN (it
 * would turn a bound NaN into NULL anyway; doing it here makes it explicit).
 * +-Inf are stored as REAL infinities.
 *
 * Left to others: what the config JSON contains and how it is hashed
 * (spec.c), which metrics exist and when groups begin and end (train.c),
 * and reading results back (plots/, the sqlite3 shell). */
#include "db.h"

#include <errno.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* How long a statement waits for another process's lock before failing. */
#define DB_BUSY_MS 10000

/* UTC ISO 8601 with milliseconds, evaluated by SQLite at statement time. */
#define SQL_NOW "strftime('%Y-%m-%dT%H:%M:%fZ','now')"

/* One schema step: running sql on a database at version - 1 gives version.
 * Append only; never edit a published step, files in the wild depend on it.
 * The schema_version table itself predates every step (version 0 = the
 * bookkeeping table alone), so a migration never has to create it. */
typedef struct db_migration {
    int version;
    const char *sql;
} db_migration;

static const db_migration migrations[] = {
    {1,
     "CREATE TABLE runs ("
     " id INTEGER PRIMARY KEY,"
     " config TEXT NOT NULL,"
     " config_hash TEXT NOT NULL,"
     " code_version TEXT,"
     " machine TEXT,"
     " started TEXT,"
     " ended TEXT,"
     " status TEXT NOT NULL CHECK(status IN"
     " ('running','finished','diverged','failed','interrupted')),"
     " error TEXT,"
     " step INTEGER);"
     "CREATE TABLE metrics ("
     " run_id INTEGER NOT NULL REFERENCES runs(id),"
     " step INTEGER NOT NULL,"
     " split TEXT NOT NULL,"
     " name TEXT NOT NULL,"
     " value REAL);"
     "CREATE INDEX metrics_run_name ON metrics(run_id, name);"},
};

#define N_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

struct ml_db {
    sqlite3 *h;
    char path[1024];
    sqlite3_stmt *ins_metric; /* INSERT INTO metrics */
    sqlite3_stmt *ins_run;    /* INSERT INTO runs */
    sqlite3_stmt *end_run;    /* UPDATE runs at the end */
};

/* The schema version this code writes: the last migration's. */
static int db_code_version(void) { return migrations[N_MIGRATIONS - 1].version; }

/* Fail with "what: sqlite message (path)" and, if the failure left a
 * transaction open, roll it back so the invariant in the header holds.
 * Returns -1. The message is copied before the rollback can overwrite it. */
static int db_fail(ml_db *db, ml_error *e, const char *src, int line, const char *what) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", sqlite3_errmsg(db->h));
    if (!sqlite3_get_autocommit(db->h)) {
        /* Best effort: if even ROLLBACK fails the connection is unusable and
         * the original error is the one worth reporting. */
        (void)sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
    }
    return ml_fail(e, src, line, "database %s: %s: %s", db->path, what, msg);
}
#define DB_FAIL(db, e, what) db_fail((db), (e), __FILE__, __LINE__, (what))

/* Run sql (one or more statements, no results wanted) naming it `what` in
 * errors. Returns 0 or -1. */
static int db_exec(ml_db *db, const char *sql, const char *what, ml_error *e) {
    char *err = NULL;
    int rc = sqlite3_exec(db->h, sql, NULL, NULL, &err);
    if (rc == SQLITE_OK) return 0;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", err ? err : sqlite3_errstr(rc));
    sqlite3_free(err);
    if (!sqlite3_get_autocommit(db->h)) (void)sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
    return ml_fail(e, __FILE__, __LINE__, "database %s: %s: %s", db->path, what, msg);
}

/* Step a bound statement that returns no rows, then reset it and drop its
 * bindings so caller strings are not referenced after return. Returns 0 or
 * -1 naming `what`. */
static int db_step_done(ml_db *db, sqlite3_stmt *st, const char *what, ml_error *e) {
    int rc = sqlite3_step(st);
    int fail = rc != SQLITE_DONE ? DB_FAIL(db, e, what) : 0;
    /* After a failed step, reset returns that same error, already reported;
     * clear_bindings always returns SQLITE_OK. */
    (void)sqlite3_reset(st);
    (void)sqlite3_clear_bindings(st);
    return fail;
}

/* Run a one-row, one-column query and return the column as text in buf
 * ("" for NULL). Returns 0 or -1. */
static int db_query_text(ml_db *db, const char *sql, char *buf, size_t cap, ml_error *e) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->h, sql, -1, &st, NULL) != SQLITE_OK) return DB_FAIL(db, e, sql);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        int r = rc == SQLITE_DONE ? ml_fail(e, __FILE__, __LINE__, "database %s: %s: no row",
                                            db->path, sql)
                                  : DB_FAIL(db, e, sql);
        sqlite3_finalize(st);
        return r;
    }
    const unsigned char *t = sqlite3_column_text(st, 0);
    snprintf(buf, cap, "%s", t ? (const char *)t : "");
    /* The step succeeded, so finalize reports nothing new. */
    (void)sqlite3_finalize(st);
    return 0;
}

/* Create the directory holding path if it is missing (one level: the parent
 * of the parent must exist). A parent that exists but is not a directory is
 * an error here rather than an obscure "unable to open database file" later. */
static int db_make_parent(const char *path, ml_error *e) {
    char dir[1024];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
        return ML_FAIL(e, "database path too long: %s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0; /* current directory or "/" */
    *slash = '\0';
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode))
            return ML_FAIL(e, "database %s: %s exists and is not a directory", path, dir);
        return 0;
    }
    if (errno != ENOENT)
        return ML_FAIL(e, "database %s: cannot stat %s: %s", path, dir, strerror(errno));
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return ML_FAIL(e, "database %s: cannot create directory %s: %s", path, dir,
                       strerror(errno));
    return 0;
}

/* Bring the schema to db_code_version(), inside one IMMEDIATE transaction
 * (so the check and the change are atomic across processes). A file without
 * a schema_version table must be empty (a new file): any other table means it
 * belongs to something else and is refused rather than altered. */
static int db_migrate(ml_db *db, ml_error *e) {
    if (db_exec(db, "BEGIN IMMEDIATE", "BEGIN IMMEDIATE (schema check)", e)) return -1;
    char buf[64];
    if (db_query_text(db,
                      "SELECT count(*) FROM sqlite_master WHERE type='table' AND "
                      "name='schema_version'",
                      buf, sizeof buf, e))
        goto fail;
    int version;
    if (atoi(buf) == 0) {
        if (db_query_text(db, "SELECT count(*) FROM sqlite_master", buf, sizeof buf, e))
            goto fail;
        if (atoi(buf) != 0) {
            ML_FAIL(e,
                    "database %s: not a memlab results file (it has tables but no "
                    "schema_version table)",
                    db->path);
            goto fail;
        }
        if (db_exec(db,
                    "CREATE TABLE schema_version(version INTEGER NOT NULL);"
                    "INSERT INTO schema_version VALUES (0);",
                    "CREATE TABLE schema_version", e))
            return -1;
        version = 0;
    } else {
        if (db_query_text(db, "SELECT max(version) FROM schema_version", buf, sizeof buf, e))
            goto fail;
        if (!buf[0]) {
            ML_FAIL(e, "database %s: schema_version table is empty", db->path);
            goto fail;
        }
        version = atoi(buf);
    }
    if (version > db_code_version()) {
        ML_FAIL(e,
                "database %s has schema version %d, newer than this memlab understands (%d): "
                "use a newer memlab or another database file",
                db->path, version, db_code_version());
        goto fail;
    }
    for (int i = 0; i < N_MIGRATIONS; i++) {
        if (migrations[i].version <= version) continue;
        char what[64];
        snprintf(what, sizeof what, "migration to schema version %d", migrations[i].version);
        if (db_exec(db, migrations[i].sql, what, e)) return -1;
        char sql[96];
        snprintf(sql, sizeof sql, "UPDATE schema_version SET version = %d",
                 migrations[i].version);
        if (db_exec(db, sql, "UPDATE schema_version", e)) return -1;
    }
    return db_exec(db, "COMMIT", "COMMIT (schema)", e);
fail:
    /* e already holds the reason; ROLLBACK only ends the transaction. */
    (void)sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

/* Switch the file to WAL. Two processes opening a new file at once race for
 * the exclusive lock this needs, and SQLite answers SQLITE_BUSY at once,
 * without its busy handler (waiting while holding a shared lock could
 * deadlock), so the retry is done here, for as long as the busy timeout.
 * journal_mode answers with the mode in force: a filesystem without shared
 * memory support silently keeps the old mode, and then writers would block
 * each other, so anything but "wal" is an error. */
static int db_set_wal(ml_db *db, ml_error *e) {
    static const char sql[] = "PRAGMA journal_mode=WAL";
    for (int waited = 0;; waited += 10) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db->h, sql, -1, &st, NULL) != SQLITE_OK)
            return DB_FAIL(db, e, sql);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            char mode[32];
            const unsigned char *t = sqlite3_column_text(st, 0);
            snprintf(mode, sizeof mode, "%s", t ? (const char *)t : "");
            /* The step succeeded, so finalize reports nothing new. */
            (void)sqlite3_finalize(st);
            if (strcmp(mode, "wal") != 0)
                return ml_fail(e, __FILE__, __LINE__,
                               "database %s: cannot switch to WAL journal mode (got '%s')",
                               db->path, mode);
            return 0;
        }
        if ((rc & 0xff) == SQLITE_BUSY && waited < DB_BUSY_MS) {
            /* The error is the BUSY just handled by retrying. */
            (void)sqlite3_finalize(st);
            sqlite3_sleep(10);
            continue;
        }
        int r = DB_FAIL(db, e, sql);
        (void)sqlite3_finalize(st);
        return r;
    }
}

/* Prepare sql into *st, naming it `what` in errors. */
static int db_prepare(ml_db *db, sqlite3_stmt **st, const char *sql, const char *what,
                      ml_error *e) {
    if (sqlite3_prepare_v3(db->h, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK)
        return DB_FAIL(db, e, what);
    return 0;
}

/* Contract in db.h. On failure *out is NULL and nothing is left open; the
 * file may have been created (empty) by then. */
int db_open(ml_db **out, const char *path, ml_error *e) {
    *out = NULL;
    if (!path || !*path) return ML_FAIL(e, "database path is empty");
    if (db_make_parent(path, e)) return -1;
    ml_db *db = calloc(1, sizeof *db);
    if (!db) return ML_FAIL(e, "out of memory opening database %s", path);
    snprintf(db->path, sizeof db->path, "%s", path);
    /* sqlite3_open_v2 may hand back a handle even when it fails; db_close
     * releases it either way. */
    int rc = sqlite3_open_v2(path, &db->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        ML_FAIL(e, "database %s: cannot open: %s", path,
                db->h ? sqlite3_errmsg(db->h) : sqlite3_errstr(rc));
        goto fail;
    }
    if (sqlite3_extended_result_codes(db->h, 1) != SQLITE_OK ||
        sqlite3_busy_timeout(db->h, DB_BUSY_MS) != SQLITE_OK) {
        DB_FAIL(db, e, "busy timeout");
        goto fail;
    }
    if (db_set_wal(db, e)) goto fail;
    if (db_exec(db, "PRAGMA foreign_keys=ON", "PRAGMA foreign_keys=ON", e)) goto fail;
    if (db_migrate(db, e)) goto fail;
    if (db_prepare(db, &db->ins_metric,
                   "INSERT INTO metrics(run_id, step, split, name, value) VALUES (?1,?2,?3,?4,?5)",
                   "prepare INSERT INTO metrics", e) ||
        db_prepare(db, &db->ins_run,
                   "INSERT INTO runs(config, config_hash, code_version, machine, started, "
                   "status, step) SELECT ?1, ?2, ?3, ?4, " SQL_NOW ", 'running', 0 "
                   "WHERE json_valid(?1)",
                   "prepare INSERT INTO runs", e) ||
        db_prepare(db, &db->end_run,
                   "UPDATE runs SET status = ?1, step = ?2, error = ?3, ended = " SQL_NOW
                   " WHERE id = ?4",
                   "prepare UPDATE runs", e))
        goto fail;
    *out = db;
    return 0;
fail:
    db_close(db);
    return -1;
}

/* Release db (NULL is fine). An uncommitted group is rolled back. */
void db_close(ml_db *db) {
    if (!db) return;
    /* Finalize returns the statement's last error, which was reported when
     * it happened; close can only fail with unfinalized statements, and all
     * of ours are finalized just above. An open transaction is rolled back
     * by SQLite on close. */
    (void)sqlite3_finalize(db->ins_metric);
    (void)sqlite3_finalize(db->ins_run);
    (void)sqlite3_finalize(db->end_run);
    (void)sqlite3_close(db->h);
    free(db);
}

/* Contract in db.h. code_version and machine may be NULL (stored as NULL);
 * config_json must be valid JSON, or the run is refused. */
int db_run_begin(ml_db *db, const char *config_json, const char *config_hash,
                 const char *code_version, const char *machine, long long *run_id,
                 ml_error *e) {
    if (!config_json || !config_hash)
        return ML_FAIL(e, "database %s: a run needs its config and config hash", db->path);
    sqlite3_stmt *st = db->ins_run;
    if (sqlite3_bind_text(st, 1, config_json, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, config_hash, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 3, code_version, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 4, machine, -1, SQLITE_TRANSIENT) != SQLITE_OK) {
        int r = DB_FAIL(db, e, "bind INSERT INTO runs");
        (void)sqlite3_clear_bindings(st);
        return r;
    }
    if (db_step_done(db, st, "INSERT INTO runs", e)) return -1;
    /* The insert is conditional on json_valid so that json_extract works on
     * every stored config; no row means the text was not JSON. */
    if (sqlite3_changes(db->h) != 1) {
        if (!sqlite3_get_autocommit(db->h))
            (void)sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
        return ML_FAIL(e, "database %s: INSERT INTO runs: config is not valid JSON", db->path);
    }
    *run_id = sqlite3_last_insert_rowid(db->h);
    return 0;
}

/* Contract in db.h. NaN is stored as NULL; the run must exist (foreign
 * key). */
int db_metric(ml_db *db, long long run_id, long step, const char *split, const char *name,
              double value, ml_error *e) {
    sqlite3_stmt *st = db->ins_metric;
    int rc = sqlite3_bind_int64(st, 1, run_id);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 2, step);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(st, 3, split, -1, SQLITE_TRANSIENT);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(st, 4, name, -1, SQLITE_TRANSIENT);
    if (rc == SQLITE_OK)
        rc = isnan(value) ? sqlite3_bind_null(st, 5) : sqlite3_bind_double(st, 5, value);
    if (rc != SQLITE_OK) {
        int r = DB_FAIL(db, e, "bind INSERT INTO metrics");
        (void)sqlite3_clear_bindings(st);
        return r;
    }
    return db_step_done(db, st, "INSERT INTO metrics", e);
}

/* Contract in db.h. status must be one of the five of the CHECK; error_text
 * NULL stores NULL. Fails when no run has that id. */
int db_run_end(ml_db *db, long long run_id, const char *status, long step,
               const char *error_text, ml_error *e) {
    sqlite3_stmt *st = db->end_run;
    int rc = sqlite3_bind_text(st, 1, status, -1, SQLITE_TRANSIENT);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 2, step);
    if (rc == SQLITE_OK) rc = sqlite3_bind_text(st, 3, error_text, -1, SQLITE_TRANSIENT);
    if (rc == SQLITE_OK) rc = sqlite3_bind_int64(st, 4, run_id);
    if (rc != SQLITE_OK) {
        int r = DB_FAIL(db, e, "bind UPDATE runs");
        (void)sqlite3_clear_bindings(st);
        return r;
    }
    if (db_step_done(db, st, "UPDATE runs (end of run)", e)) return -1;
    if (sqlite3_changes(db->h) != 1) {
        if (!sqlite3_get_autocommit(db->h))
            (void)sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
        return ML_FAIL(e, "database %s: UPDATE runs: no run with id %lld", db->path, run_id);
    }
    return 0;
}

/* Open a write group; it takes the write lock at once (waiting up to the
 * busy timeout), so the group cannot fail half-way for lack of the lock. */
int db_begin(ml_db *db, ml_error *e) {
    return db_exec(db, "BEGIN IMMEDIATE", "BEGIN IMMEDIATE", e);
}

/* Close the group opened by db_begin; on failure it is rolled back. */
int db_commit(ml_db *db, ml_error *e) { return db_exec(db, "COMMIT", "COMMIT", e); }
