/* export.h: reading sweeps back out of the results database.
 *
 * export_status prints, for each sweep name (its latest spec), how many of
 * its runs are done, diverged, running, failed, interrupted and missing,
 * re-expanding the stored resolved spec to know which runs it has.
 * export_sweep prints one row per done run of a sweep (the latest finished or
 * diverged row of each of its configs) with its swept keys as columns and
 * the final value of chosen metrics: the table plots read. Both only read. */
#ifndef MEMLAB_EXPORT_H
#define MEMLAB_EXPORT_H

#include <stdio.h>

#include "error.h"

#define EXPORT_MAX_METRICS 32

typedef struct export_opts {
    const char *db_path;
    const char *sweep;                 /* the sweep's name */
    int json;                          /* 0: CSV (RFC 4180 quoting), 1: JSON array */
    const char *metrics[EXPORT_MAX_METRICS]; /* "split/name"; none: the defaults */
    int n_metrics;
} export_opts;

/* The metrics exported when none are asked for. */
extern const char *const export_default_metrics[];

/* Print the state of every sweep of the database at db_path to out. */
int export_status(const char *db_path, FILE *out, ml_error *e);

/* Print the table of sweep o->sweep to out; *not_done (may be NULL) gets
 * the number of its runs left out because they are not done. */
int export_sweep(const export_opts *o, FILE *out, long *not_done, ml_error *e);

/* export_csv_field: text as one CSV field (RFC 4180: quoted when it holds a
 * comma, a quote, CR or LF, quotes doubled) into buf[cap]. */
void export_csv_field(const char *text, char *buf, size_t cap);

#endif
