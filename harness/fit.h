/* fit.h: scaling-law fits of sweep results (memlab fit).
 *
 * Two models, fitted to points (x, y) with x > 0:
 *   power          y = a x^b          least squares on (log x, log y), y > 0;
 *                                     standard errors from the residual
 *                                     variance (n - 2 degrees of freedom)
 *   power_offset   y = a x^b + c      least squares on y: for a fixed b the
 *                                     model is linear in (a, c), so b is found
 *                                     by a one-dimensional search over the
 *                                     profile RSS(b) and (a, c) in closed
 *                                     form; standard errors from the Jacobian
 *                                     at the optimum, sigma^2 (J^T J)^-1,
 *                                     n - 3 degrees of freedom
 * Standard errors need more points than parameters; with exactly as many they
 * are NaN. The error of a in the power model is a * se(log a) (delta method).
 *
 * fit_sweep reads a sweep as `memlab export` prints it (the same rows, the
 * same final metric values), groups the rows by swept keys, fits each group,
 * and stores the parameters in the fits table of the results database
 * (db_fit_store), so that a paper's tables and the figures read one set of
 * numbers. What is fitted, and how rows are grouped, is the caller's choice;
 * the CSV export and the database schema are export.c's and db.c's. */
#ifndef MEMLAB_FIT_H
#define MEMLAB_FIT_H

#include <stdio.h>

#include "error.h"

typedef enum { FIT_POWER = 0, FIT_POWER_OFFSET = 1 } fit_model;

/* The names of the models as stored ("power", "power_offset"). */
extern const char *const fit_model_names[];

typedef struct fit_result {
    fit_model model;
    int n;            /* points used */
    double a, b, c;   /* y = a x^b (+ c); c = 0 for FIT_POWER */
    double a_err, b_err, c_err; /* standard errors (NaN when n <= parameters) */
    double rss;       /* residual sum of squares: of log y (power), of y (offset) */
    double r2;        /* coefficient of determination of that same regression */
} fit_result;

/* Fit y = a x^b to n points: least squares in log-log. Every x and y must be
 * finite and > 0, n >= 2, and the x not all equal. Returns 0, or -1 with e. */
int fit_power(const double *x, const double *y, int n, fit_result *r, ml_error *e);

/* Fit y = a x^b + c to n points (least squares in y). Every x must be finite
 * and > 0, every y finite, n >= 3, at least 3 distinct x. b is searched in
 * [-b_max, b_max] with b_max = 8 (exponents of scaling laws are far
 * smaller); an optimum at that bound is reported as an error. Returns 0, or
 * -1 with e. */
int fit_power_offset(const double *x, const double *y, int n, fit_result *r, ml_error *e);

#define FIT_MAX_GROUP_KEYS 16

typedef struct fit_opts {
    const char *db_path;
    const char *sweep;   /* sweep name */
    const char *x;       /* a swept key (task.seq_len) or a metric (model/state_size) */
    const char *y;       /* a metric (test/loss); "1/" in front fits its reciprocal
                            (1/train/tokens_per_s: seconds per token) */
    const char *group[FIT_MAX_GROUP_KEYS]; /* swept keys that split the rows into
                                              groups; none: every swept key but x,
                                              those that are a function of x (zipped
                                              with it) and train.seed */
    int n_group;
    int all_rows;        /* 1: one group of every row (group is ignored) */
    fit_model model;
    int store;           /* 1: write the results into the fits table */
    int csv;             /* 1: print CSV instead of the aligned table */
} fit_opts;

/* The usage text of `memlab fit`. */
extern const char fit_usage[];

/* Parse the arguments after the verb into *o (zeroed by the caller, db_path
 * set to the default). Returns 0, 1 when --help was asked (print fit_usage),
 * or -1 with the problem in e. */
int fit_parse_args(fit_opts *o, int argc, char **argv, ml_error *e);

/* Fit every group of sweep o->sweep, print one line per group to out (group,
 * points, parameters with errors, r2) and, with o->store, store them. A group
 * with too few usable points (missing or non-positive values are left out)
 * is printed as skipped, not an error; no group fitted at all is one.
 * Returns 0, or -1 with e. */
int fit_sweep(const fit_opts *o, FILE *out, ml_error *e);

#endif
