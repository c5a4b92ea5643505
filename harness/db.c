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
 * Sweeps (schema version 2). A sweep row holds a spec as written and as
 * resolved; each run row may point at the sweep that ran it, and names its
 * owner ("host:pid:start", start = the process's start time in clock ticks
 * since boot, so a reused pid is not mistaken for the owner) and the time of
 * its last heartbeat. db_run_claim decides, in one IMMEDIATE transaction,
 * whether a config still needs running: not when a finished or diverged row
 * has its hash (done), not when a running row has a live owner (busy); a
 * running row whose owner is gone (a crash, a kill) is marked interrupted
 * and the config is claimed again with a new row. Rows are never deleted, so
 * the history of every attempt stays; "every run exactly once" means one
 * done row per config hash among sweep runs, which a partial unique index
 * enforces even against a claiming bug. An owner on another host is judged
 * by its heartbeat (alive while younger than DB_STALE_S).
 *
 * Left to others: what the config JSON contains and how it is hashed
 * (spec.c), which metrics exist and when groups begin and end (train.c),
 * which runs a sweep has (sweep.c), and presenting results (export.c, the
 * sqlite3 shell). */
#include "db.h"

#include <errno.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* How long a statement waits for another process's lock before failing. */
#define DB_BUSY_MS 10000

/* An owner on another host whose heartbeat is older than this is dead. */
#define DB_STALE_S 600

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
    {2,
     "CREATE TABLE sweeps ("
     " id INTEGER PRIMARY KEY,"
     " name TEXT NOT NULL,"
     " spec TEXT NOT NULL,"
     " resolved TEXT NOT NULL CHECK(json_valid(resolved)),"
     " resolved_hash TEXT NOT NULL,"
     " created TEXT NOT NULL,"
     " UNIQUE(name, resolved_hash));"
     "ALTER TABLE runs ADD COLUMN sweep_id INTEGER REFERENCES sweeps(id);"
     "ALTER TABLE runs ADD COLUMN owner TEXT;"
     "ALTER TABLE runs ADD COLUMN heartbeat TEXT;"
     "CREATE INDEX runs_config_hash ON runs(config_hash);"
     "CREATE UNIQUE INDEX runs_done_once ON runs(config_hash)"
     " WHERE sweep_id IS NOT NULL AND status IN ('finished','diverged');"},
    /* 3: fitted scaling laws (memlab fit, fit.c), one row per sweep row, x,
     * y, group and model: a new fit of the same replaces the old one. */
    {3,
     "CREATE TABLE fits ("
     " id INTEGER PRIMARY KEY,"
     " sweep_id INTEGER NOT NULL REFERENCES sweeps(id),"
     " sweep TEXT NOT NULL,"
     " x TEXT NOT NULL,"
     " y TEXT NOT NULL,"
     " grp TEXT NOT NULL,"
     " model TEXT NOT NULL CHECK(model IN ('power','power_offset')),"
     " n INTEGER NOT NULL,"
     " a REAL, a_err REAL, b REAL, b_err REAL, c REAL, c_err REAL,"
     " rss REAL, r2 REAL,"
     " code_version TEXT,"
     " created TEXT NOT NULL,"
     " UNIQUE(sweep_id, x, y, grp, model));"},
};

#define N_MIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

struct ml_db {
    sqlite3 *h;
    char path[1024];
    int readonly;
    sqlite3_stmt *ins_metric; /* INSERT INTO metrics */
    sqlite3_stmt *ins_run;    /* INSERT INTO runs */
    sqlite3_stmt *end_run;    /* UPDATE runs at the end */
};

/* The schema version this code writes: the last migration's. */
static int db_code_version(void) { return migrations[N_MIGRATIONS - 1].version; }
int db_schema_version(void) { return db_code_version(); }

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
                   "status, step, sweep_id, owner, heartbeat) SELECT ?1, ?2, ?3, ?4, " SQL_NOW
                   ", 'running', 0, ?5, ?6, " SQL_NOW " WHERE json_valid(?1)",
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

/* insert_run: the INSERT of db_run_begin and db_run_claim; sweep_id 0
 * stores NULL. */
static int insert_run(ml_db *db, const char *config_json, const char *config_hash,
                      const char *code_version, const char *machine, long long sweep_id,
                      long long *run_id, ml_error *e) {
    if (!config_json || !config_hash)
        return ML_FAIL(e, "database %s: a run needs its config and config hash", db->path);
    char owner[320];
    db_owner_self(owner, sizeof owner);
    sqlite3_stmt *st = db->ins_run;
    if (sqlite3_bind_text(st, 1, config_json, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, config_hash, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 3, code_version, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 4, machine, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        (sweep_id ? sqlite3_bind_int64(st, 5, sweep_id) : sqlite3_bind_null(st, 5)) !=
            SQLITE_OK ||
        sqlite3_bind_text(st, 6, owner, -1, SQLITE_TRANSIENT) != SQLITE_OK) {
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

/* Contract in db.h. code_version and machine may be NULL (stored as NULL);
 * config_json must be valid JSON, or the run is refused. The row names
 * this process as its owner. */
int db_run_begin(ml_db *db, const char *config_json, const char *config_hash,
                 const char *code_version, const char *machine, long long *run_id,
                 ml_error *e) {
    return insert_run(db, config_json, config_hash, code_version, machine, 0, run_id, e);
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

/* ------------------------------------------------------------------------ */
/* Owners.                                                                    */

/* proc_stat: the state letter and start time (clock ticks after boot) of
 * process pid, from /proc. Returns 0, or -1 when there is no such process. */
static int proc_stat(long pid, char *state, unsigned long long *start) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) is in parentheses and may hold spaces: the
     * fields that follow start after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return -1;
    p += 2;
    *state = *p;
    /* starttime is field 22; the state is field 3. */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    *start = strtoull(p, NULL, 10);
    return 0;
}

void db_owner_self(char *buf, size_t cap) {
    char host[256] = "unknown";
    if (gethostname(host, sizeof host - 1) != 0) snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    char state = '?';
    unsigned long long start = 0;
    long pid = (long)getpid();
    if (proc_stat(pid, &state, &start)) start = 0;
    snprintf(buf, cap, "%s:%ld:%llu", host, pid, start);
}

/* owner_alive: whether the process named by owner ("host:pid:start") still
 * runs. On this host: the pid exists, is not a zombie and started when the
 * owner did. On another: its heartbeat is younger than DB_STALE_S (age_s).
 * A NULL owner (a row written before owners were recorded) is dead. */
static int owner_alive(const char *owner, double age_s) {
    if (!owner) return 0;
    const char *c2 = strrchr(owner, ':');
    if (!c2 || c2 == owner) return 0;
    const char *c1 = c2 - 1;
    while (c1 > owner && *c1 != ':') c1--;
    if (*c1 != ':') return 0;
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    host[sizeof host - 1] = '\0';
    size_t hl = (size_t)(c1 - owner);
    if (hl != strlen(host) || strncmp(owner, host, hl)) return age_s < DB_STALE_S;
    long pid = strtol(c1 + 1, NULL, 10);
    unsigned long long start = strtoull(c2 + 1, NULL, 10), now_start = 0;
    char state = '?';
    if (pid <= 0 || proc_stat(pid, &state, &now_start)) return 0;
    if (state == 'Z' || state == 'X' || state == 'x') return 0;
    return now_start == start;
}

/* ------------------------------------------------------------------------ */
/* Read-only access, queries.                                                 */

/* Contract in db.h. */
int db_open_readonly(ml_db **out, const char *path, ml_error *e) {
    return db_open_readonly_from(out, path, db_code_version(), NULL, e);
}

int db_open_readonly_from(ml_db **out, const char *path, int min_version, int *version_out,
                          ml_error *e) {
    *out = NULL;
    struct stat sb;
    if (!path || !*path) return ML_FAIL(e, "database path is empty");
    if (stat(path, &sb) != 0)
        return ML_FAIL(e, "database %s: %s", path, strerror(errno));
    ml_db *db = calloc(1, sizeof *db);
    if (!db) return ML_FAIL(e, "out of memory opening database %s", path);
    snprintf(db->path, sizeof db->path, "%s", path);
    db->readonly = 1;
    int rc = sqlite3_open_v2(path, &db->h, SQLITE_OPEN_READONLY, NULL);
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
    char buf[64];
    if (db_query_text(db,
                      "SELECT count(*) FROM sqlite_master WHERE type='table' AND "
                      "name='schema_version'",
                      buf, sizeof buf, e))
        goto fail;
    if (atoi(buf) == 0) {
        ML_FAIL(e, "database %s: not a memlab results file (no schema_version table)", path);
        goto fail;
    }
    if (db_query_text(db, "SELECT max(version) FROM schema_version", buf, sizeof buf, e))
        goto fail;
    int version = atoi(buf);
    if (version > db_code_version()) {
        ML_FAIL(e, "database %s has schema version %d, newer than this memlab understands (%d)",
                path, version, db_code_version());
        goto fail;
    }
    if (version < min_version) {
        ML_FAIL(e, "database %s has schema version %d; `memlab run` or `memlab train` on it "
                "upgrades it to %d", path, version, db_code_version());
        goto fail;
    }
    if (version_out) *version_out = version;
    *out = db;
    return 0;
fail:
    db_close(db);
    return -1;
}

/* prepare: a one-off statement. */
static int prepare(ml_db *db, const char *sql, sqlite3_stmt **st, ml_error *e) {
    *st = NULL;
    if (sqlite3_prepare_v2(db->h, sql, -1, st, NULL) != SQLITE_OK) return DB_FAIL(db, e, sql);
    return 0;
}

/* The rows of one config hash that decide its state, newest first: id,
 * status, owner, heartbeat age in seconds (started when no heartbeat). */
#define SQL_HASH_ROWS                                                                       \
    "SELECT id, status, owner, (julianday('now') - julianday(coalesce(heartbeat, started)))" \
    " * 86400.0 FROM runs WHERE config_hash = ?1 ORDER BY id DESC"

/* Contract in db.h. */
int db_run_claim(ml_db *db, long long sweep_id, const char *config_json, const char *config_hash,
                 const char *code_version, const char *machine, long long *run_id,
                 db_claim *result, ml_error *e) {
    enum { MAX_DEAD = 256 };
    long long dead[MAX_DEAD];
    int n_dead = 0, done = 0, busy = 0;
    char me[320];
    *run_id = 0;
    *result = DB_CLAIM_BUSY;
    if (db->readonly) return ML_FAIL(e, "database %s: opened read-only", db->path);
    db_owner_self(me, sizeof me);
    if (db_exec(db, "BEGIN IMMEDIATE", "BEGIN IMMEDIATE (claim)", e)) return -1;
    sqlite3_stmt *st = NULL;
    if (prepare(db, SQL_HASH_ROWS, &st, e)) goto fail;
    if (sqlite3_bind_text(st, 1, config_hash, -1, SQLITE_TRANSIENT) != SQLITE_OK) {
        DB_FAIL(db, e, "bind (claim)");
        goto fail;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(st, 1);
        const char *owner = (const char *)sqlite3_column_text(st, 2);
        double age = sqlite3_column_double(st, 3);
        if (!status) continue;
        if (!strcmp(status, "finished") || !strcmp(status, "diverged")) done = 1;
        if (strcmp(status, "running")) continue;
        if (owner_alive(owner, age)) busy = 1;
        else if (n_dead < MAX_DEAD) dead[n_dead++] = sqlite3_column_int64(st, 0);
    }
    if (rc != SQLITE_DONE) {
        DB_FAIL(db, e, "SELECT runs (claim)");
        goto fail;
    }
    (void)sqlite3_finalize(st);
    st = NULL;
    if (n_dead) {
        if (prepare(db,
                    "UPDATE runs SET status = 'interrupted', ended = " SQL_NOW ", error = "
                    "'its process ended without finishing; found by ' || ?2 "
                    "WHERE id = ?1 AND status = 'running'",
                    &st, e))
            goto fail;
        for (int i = 0; i < n_dead; i++) {
            if (sqlite3_bind_int64(st, 1, dead[i]) != SQLITE_OK ||
                sqlite3_bind_text(st, 2, me, -1, SQLITE_TRANSIENT) != SQLITE_OK) {
                DB_FAIL(db, e, "bind UPDATE runs (interrupted)");
                goto fail;
            }
            if (db_step_done(db, st, "UPDATE runs (interrupted)", e)) goto fail;
        }
        (void)sqlite3_finalize(st);
        st = NULL;
    }
    if (done) {
        *result = DB_CLAIM_DONE;
    } else if (!busy) {
        if (insert_run(db, config_json, config_hash, code_version, machine, sweep_id, run_id, e))
            return -1;
        *result = DB_CLAIMED;
    }
    return db_exec(db, "COMMIT", "COMMIT (claim)", e);
fail:
    (void)sqlite3_finalize(st);
    if (!sqlite3_get_autocommit(db->h)) (void)sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

/* Contract in db.h. */
int db_run_heartbeat(ml_db *db, long long run_id, ml_error *e) {
    sqlite3_stmt *st = NULL;
    if (prepare(db, "UPDATE runs SET heartbeat = " SQL_NOW " WHERE id = ?1", &st, e)) return -1;
    if (sqlite3_bind_int64(st, 1, run_id) != SQLITE_OK) {
        int r = DB_FAIL(db, e, "bind UPDATE runs (heartbeat)");
        (void)sqlite3_finalize(st);
        return r;
    }
    int r = db_step_done(db, st, "UPDATE runs (heartbeat)", e);
    (void)sqlite3_finalize(st);
    return r;
}

/* Contract in db.h. */
int db_sweep_register(ml_db *db, const char *name, const char *spec, const char *resolved,
                      const char *resolved_hash, long long *sweep_id, ml_error *e) {
    sqlite3_stmt *st = NULL;
    *sweep_id = 0;
    if (db_exec(db, "BEGIN IMMEDIATE", "BEGIN IMMEDIATE (sweep)", e)) return -1;
    if (prepare(db,
                "INSERT OR IGNORE INTO sweeps(name, spec, resolved, resolved_hash, created) "
                "VALUES (?1, ?2, ?3, ?4, " SQL_NOW ")",
                &st, e))
        goto fail;
    if (sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, spec, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 3, resolved, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 4, resolved_hash, -1, SQLITE_TRANSIENT) != SQLITE_OK) {
        DB_FAIL(db, e, "bind INSERT INTO sweeps");
        goto fail;
    }
    if (sqlite3_step(st) != SQLITE_DONE) {
        DB_FAIL(db, e, "INSERT INTO sweeps");
        goto fail;
    }
    (void)sqlite3_finalize(st);
    if (prepare(db, "SELECT id FROM sweeps WHERE name = ?1 AND resolved_hash = ?2", &st, e))
        goto fail;
    if (sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, resolved_hash, -1, SQLITE_TRANSIENT) != SQLITE_OK) {
        DB_FAIL(db, e, "bind SELECT sweeps");
        goto fail;
    }
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *sweep_id = sqlite3_column_int64(st, 0);
    } else if (rc == SQLITE_DONE) {
        /* INSERT OR IGNORE also ignores the CHECK on the JSON. */
        ML_FAIL(e, "database %s: INSERT INTO sweeps: the resolved spec is not valid JSON",
                db->path);
        goto fail;
    } else {
        DB_FAIL(db, e, "SELECT sweeps");
        goto fail;
    }
    (void)sqlite3_finalize(st);
    return db_exec(db, "COMMIT", "COMMIT (sweep)", e);
fail:
    (void)sqlite3_finalize(st);
    if (!sqlite3_get_autocommit(db->h)) (void)sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

/* Contract in db.h. */
int db_sweeps(ml_db *db, const char *name, int (*fn)(void *ctx, const db_sweep_row *row),
              void *ctx, ml_error *e) {
    sqlite3_stmt *st = NULL;
    if (prepare(db,
                "SELECT id, name, spec, resolved, created FROM sweeps s WHERE id = "
                "(SELECT max(id) FROM sweeps t WHERE t.name = s.name) AND "
                "(?1 IS NULL OR name = ?1) ORDER BY id",
                &st, e))
        return -1;
    if ((name ? sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT)
              : sqlite3_bind_null(st, 1)) != SQLITE_OK) {
        int r = DB_FAIL(db, e, "bind SELECT sweeps");
        (void)sqlite3_finalize(st);
        return r;
    }
    int rc, out = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        db_sweep_row row = {
            .id = sqlite3_column_int64(st, 0),
            .name = (const char *)sqlite3_column_text(st, 1),
            .spec = (const char *)sqlite3_column_text(st, 2),
            .resolved = (const char *)sqlite3_column_text(st, 3),
            .created = (const char *)sqlite3_column_text(st, 4),
        };
        if (!row.name || !row.spec || !row.resolved || !row.created) continue;
        if ((out = fn(ctx, &row)) != 0) break;
    }
    if (out == 0 && rc != SQLITE_DONE) out = DB_FAIL(db, e, "SELECT sweeps");
    (void)sqlite3_finalize(st);
    return out;
}

/* Contract in db.h. */
int db_hash_state(ml_db *db, const char *config_hash, db_state *state, long long *run_id,
                  ml_error *e) {
    sqlite3_stmt *st = NULL;
    *state = DB_MISSING;
    *run_id = 0;
    if (prepare(db, SQL_HASH_ROWS, &st, e)) return -1;
    if (sqlite3_bind_text(st, 1, config_hash, -1, SQLITE_TRANSIENT) != SQLITE_OK) {
        int r = DB_FAIL(db, e, "bind SELECT runs");
        (void)sqlite3_finalize(st);
        return r;
    }
    long long done_id = 0, running_id = 0, latest_id = 0;
    db_state done = DB_MISSING, latest = DB_MISSING;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        long long id = sqlite3_column_int64(st, 0);
        const char *status = (const char *)sqlite3_column_text(st, 1);
        const char *owner = (const char *)sqlite3_column_text(st, 2);
        double age = sqlite3_column_double(st, 3);
        if (!status) continue;
        int is_running = !strcmp(status, "running");
        int alive = is_running && owner_alive(owner, age);
        if (!done_id && (!strcmp(status, "finished") || !strcmp(status, "diverged"))) {
            done_id = id;
            done = status[0] == 'f' ? DB_FINISHED : DB_DIVERGED;
        }
        if (!running_id && alive) running_id = id;
        if (!latest_id) {
            latest_id = id;
            latest = !strcmp(status, "failed") ? DB_FAILED
                     : alive                   ? DB_RUNNING
                     : !strcmp(status, "finished") ? DB_FINISHED
                     : !strcmp(status, "diverged") ? DB_DIVERGED
                                                   : DB_INTERRUPTED;
        }
    }
    int r = rc == SQLITE_DONE ? 0 : DB_FAIL(db, e, "SELECT runs (state)");
    (void)sqlite3_finalize(st);
    if (r) return -1;
    if (done_id) *state = done, *run_id = done_id;
    else if (running_id) *state = DB_RUNNING, *run_id = running_id;
    else if (latest_id) *state = latest, *run_id = latest_id;
    return 0;
}

/* Contract in db.h. */
int db_final_metric(ml_db *db, long long run_id, const char *split, const char *name,
                    double *value, int *found, ml_error *e) {
    sqlite3_stmt *st = NULL;
    *found = 0;
    *value = NAN;
    if (prepare(db,
                "SELECT value FROM metrics WHERE run_id = ?1 AND split = ?2 AND name = ?3 "
                "ORDER BY step DESC, rowid DESC LIMIT 1",
                &st, e))
        return -1;
    if (sqlite3_bind_int64(st, 1, run_id) != SQLITE_OK ||
        sqlite3_bind_text(st, 2, split, -1, SQLITE_TRANSIENT) != SQLITE_OK ||
        sqlite3_bind_text(st, 3, name, -1, SQLITE_TRANSIENT) != SQLITE_OK) {
        int r = DB_FAIL(db, e, "bind SELECT metrics");
        (void)sqlite3_finalize(st);
        return r;
    }
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *found = 1;
        if (sqlite3_column_type(st, 0) != SQLITE_NULL) *value = sqlite3_column_double(st, 0);
    }
    int r = rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : DB_FAIL(db, e, "SELECT metrics");
    (void)sqlite3_finalize(st);
    return r;
}

/* Contract in db.h. */
int db_fit_store(ml_db *db, const db_fit_row *f, ml_error *e) {
    sqlite3_stmt *st = NULL;
    if (prepare(db,
                "INSERT OR REPLACE INTO fits(sweep_id, sweep, x, y, grp, model, n, a, a_err, b, "
                "b_err, c, c_err, rss, r2, code_version, created) VALUES (?1, ?2, ?3, ?4, ?5, "
                "?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, " SQL_NOW ")",
                &st, e))
        return -1;
    const char *text[6] = {f->sweep, f->x, f->y, f->grp, f->model, f->code_version};
    const double num[8] = {f->a, f->a_err, f->b, f->b_err, f->c, f->c_err, f->rss, f->r2};
    int ok = sqlite3_bind_int64(st, 1, f->sweep_id) == SQLITE_OK &&
             sqlite3_bind_int(st, 7, f->n) == SQLITE_OK;
    for (int i = 0; i < 5 && ok; i++)
        ok = sqlite3_bind_text(st, 2 + i, text[i], -1, SQLITE_TRANSIENT) == SQLITE_OK;
    if (ok)
        ok = (text[5] ? sqlite3_bind_text(st, 16, text[5], -1, SQLITE_TRANSIENT)
                      : sqlite3_bind_null(st, 16)) == SQLITE_OK;
    for (int i = 0; i < 8 && ok; i++)
        ok = (isnan(num[i]) ? sqlite3_bind_null(st, 8 + i)
                            : sqlite3_bind_double(st, 8 + i, num[i])) == SQLITE_OK;
    int r = !ok ? DB_FAIL(db, e, "bind INSERT INTO fits")
                : sqlite3_step(st) != SQLITE_DONE ? DB_FAIL(db, e, "INSERT INTO fits") : 0;
    (void)sqlite3_finalize(st);
    return r;
}

/* Contract in db.h. */
struct sqlite3 *db_handle(ml_db *db) { return db->h; }
