/* db.h: the results store (SQLite).
 *
 * One database file holds every run and every metric. Tables:
 *   schema_version(version)
 *   runs(id, config JSON, config_hash, code_version, machine, started,
 *        ended, status, error, step)   status: running | finished | diverged |
 *                                     failed | interrupted
 *   metrics(run_id, step, split, name, value)
 * WAL mode and a busy timeout so that several processes can share a file;
 * writes are grouped in transactions. Every sqlite3_* return code is checked
 * and turned into an ml_error naming the statement. */
#ifndef MEMLAB_DB_H
#define MEMLAB_DB_H

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

#endif
