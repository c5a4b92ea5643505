/* db.h: the results store (SQLite).
 *
 * One database file holds every run and every metric. Tables (schema
 * version 3):
 *   schema_version(version)
 *   sweeps(id, name, spec, resolved JSON, resolved_hash, created)
 *   runs(id, config JSON, config_hash, code_version, machine, started,
 *        ended, status, error, step,   status: running | finished | diverged |
 *        sweep_id, owner, heartbeat)          failed | interrupted
 *   metrics(run_id, step, split, name, value)
 *   fits(id, sweep_id, sweep, x, y, grp, model, n, a, a_err, b, b_err, c,
 *        c_err, rss, r2, code_version, created)    (memlab fit, fit.h)
 * WAL mode and a busy timeout so that several processes can share a file;
 * writes are grouped in transactions. Every sqlite3_* return code is checked
 * and turned into an ml_error naming the statement. */
#ifndef MEMLAB_DB_H
#define MEMLAB_DB_H

#include <stddef.h>

#include "error.h"

typedef struct ml_db ml_db;

/* Open (creating the file, its directory and the schema when missing; applying
 * migrations when older). Refuses a file whose schema is newer than this code. */
int db_open(ml_db **out, const char *path, ml_error *e);
void db_close(ml_db *db);
/* Insert a run with status 'running' and started = now (UTC, ISO 8601). */
int db_run_begin(ml_db *db, const char *config_json, const char *config_hash,
                 const char *code_version, const char *machine, long long *run_id,
                 ml_error *e);
/* Record one metric value. */
int db_metric(ml_db *db, long long run_id, long step, const char *split, const char *name,
              double value, ml_error *e);
/* Set the final status, the step reached, an error text (may be NULL) and
 * ended = now. */
int db_run_end(ml_db *db, long long run_id, const char *status, long step,
               const char *error_text, ml_error *e);
/* Group writes: BEGIN IMMEDIATE / COMMIT. */
int db_begin(ml_db *db, ml_error *e);
int db_commit(ml_db *db, ml_error *e);

/* Open an existing file for reading only: nothing is created or migrated,
 * and a file of another schema version is refused with what to do. */
int db_open_readonly(ml_db **out, const char *path, ml_error *e);
/* The same for a reader that needs only the tables of schema min_version
 * (runs' states and owners: 2): an older file down to that version opens
 * too, as it is, and *version (may be NULL) gets the file's version. */
int db_open_readonly_from(ml_db **out, const char *path, int min_version, int *version,
                          ml_error *e);
/* The schema version this code writes (and migrates older files to). */
int db_schema_version(void);

/* This process as a run owner: "host:pid:start" into buf. */
void db_owner_self(char *buf, size_t cap);

/* Record a sweep (name, spec as written, resolved spec as JSON and its
 * hash); the same name and resolved hash give the existing row's id. */
int db_sweep_register(ml_db *db, const char *name, const char *spec, const char *resolved,
                      const char *resolved_hash, long long *sweep_id, ml_error *e);

typedef enum { DB_CLAIMED, DB_CLAIM_DONE, DB_CLAIM_BUSY } db_claim;
/* Claim the run of config_hash for this process, atomically: DB_CLAIM_DONE
 * when a finished or diverged row has the hash, DB_CLAIM_BUSY when a running
 * row has a live owner; otherwise running rows of dead owners are marked
 * interrupted and a new 'running' row owned by this process (linked to
 * sweep_id, 0 = none) is inserted: DB_CLAIMED with its id in *run_id. */
int db_run_claim(ml_db *db, long long sweep_id, const char *config_json, const char *config_hash,
                 const char *code_version, const char *machine, long long *run_id,
                 db_claim *result, ml_error *e);
/* Mark run_id's owner alive now (for owners on other hosts). */
int db_run_heartbeat(ml_db *db, long long run_id, ml_error *e);

typedef enum {
    DB_MISSING,     /* no row */
    DB_FINISHED,    /* a finished row (the latest done row) */
    DB_DIVERGED,    /* a diverged row, and none finished later */
    DB_RUNNING,     /* a running row with a live owner */
    DB_FAILED,      /* the latest row failed */
    DB_INTERRUPTED  /* the latest row was interrupted, or its owner died */
} db_state;
/* The state of a config hash over all its rows, in the order of the enum's
 * comment (a done row wins, then a live running one, then the latest row),
 * and the id of the row that decided it (0 for DB_MISSING). */
int db_hash_state(ml_db *db, const char *config_hash, db_state *state, long long *run_id,
                  ml_error *e);

/* One sweep row (texts valid during the callback only). */
typedef struct db_sweep_row {
    long long id;
    const char *name, *spec, *resolved, *created;
} db_sweep_row;
/* Call fn for the latest row of each sweep name (of `name` only, unless
 * NULL), oldest name first. fn returns 0 to go on; anything else stops the
 * walk and is returned. */
int db_sweeps(ml_db *db, const char *name, int (*fn)(void *ctx, const db_sweep_row *row),
              void *ctx, ml_error *e);
/* The value of metric split/name of run_id at its largest step: *found 0
 * when there is none; a stored NULL (NaN) reads as NaN. */
int db_final_metric(ml_db *db, long long run_id, const char *split, const char *name,
                    double *value, int *found, ml_error *e);

/* One fitted scaling law (fit.h): y = a x^b (+ c) over the rows of group grp
 * ("key=value key=value", "" for all rows) of a sweep. */
typedef struct db_fit_row {
    long long sweep_id;
    const char *sweep, *x, *y, *grp, *model, *code_version;
    int n;
    double a, a_err, b, b_err, c, c_err, rss, r2; /* NaN stored as NULL */
} db_fit_row;
/* Store a fit, replacing the row of the same (sweep_id, x, y, grp, model). */
int db_fit_store(ml_db *db, const db_fit_row *f, ml_error *e);

/* The SQLite connection under db, for code whose statements are its own
 * (merge.c copies rows between files). The caller leaves no statement and no
 * transaction open behind, and db still owns and closes the connection. */
struct sqlite3 *db_handle(ml_db *db);

#endif
