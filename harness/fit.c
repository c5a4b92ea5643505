/* fit.c: scaling-law fits of sweep results (see fit.h).
 *
 * The rows come from export_sweep, printed as CSV into memory and read back:
 * a fit sees exactly the table `memlab export` prints (done runs of the
 * sweep's latest spec, final metric values), so a fitted exponent and the
 * figure drawn from the export cannot disagree about which runs they used.
 * Only finished runs are fitted (a diverged run's last metrics are not a
 * result). The fits table and its writer are db.c's; the CSV export's rules
 * (quoting, empty field for NaN) are export.c's. */
#define _GNU_SOURCE
#include "fit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "export.h"
#include "version.h"

const char *const fit_model_names[] = {"power", "power_offset", NULL};

/* ------------------------------------------------------------------------ */
/* The fits.                                                                  */

/* Check the points of a fit: x finite and > 0, y finite (and > 0 when
 * positive_y); at least min_distinct distinct x. */
static int check_points(const double *x, const double *y, int n, int positive_y,
                        int min_distinct, ml_error *e) {
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]) || x[i] <= 0)
            return ML_FAIL(e, "fit: x[%d] = %g: x must be finite and > 0", i, x[i]);
        if (!isfinite(y[i]) || (positive_y && y[i] <= 0))
            return ML_FAIL(e, "fit: y[%d] = %g: y must be finite%s", i, y[i],
                           positive_y ? " and > 0 (the power law is fitted in log-log)" : "");
    }
    int distinct = 0;
    for (int i = 0; i < n && distinct < min_distinct; i++) {
        int seen = 0;
        for (int j = 0; j < i && !seen; j++) seen = x[j] == x[i];
        distinct += !seen;
    }
    if (distinct < min_distinct)
        return ML_FAIL(e, "fit: %d points with %d distinct x; need at least %d distinct x", n,
                       distinct, min_distinct);
    return 0;
}

int fit_power(const double *x, const double *y, int n, fit_result *r, ml_error *e) {
    memset(r, 0, sizeof *r);
    r->model = FIT_POWER;
    if (n < 2) return ML_FAIL(e, "fit: %d point%s; a power law needs at least 2", n,
                              n == 1 ? "" : "s");
    if (check_points(x, y, n, 1, 2, e)) return -1;
    double mu = 0, mv = 0;
    for (int i = 0; i < n; i++) mu += log(x[i]), mv += log(y[i]);
    mu /= n, mv /= n;
    double suu = 0, suv = 0, svv = 0;
    for (int i = 0; i < n; i++) {
        double du = log(x[i]) - mu, dv = log(y[i]) - mv;
        suu += du * du, suv += du * dv, svv += dv * dv;
    }
    double b = suv / suu, la = mv - b * mu, rss = 0;
    for (int i = 0; i < n; i++) {
        double res = log(y[i]) - (la + b * log(x[i]));
        rss += res * res;
    }
    double s2 = n > 2 ? rss / (n - 2) : NAN;
    r->n = n;
    r->b = b;
    r->a = exp(la);
    r->b_err = sqrt(s2 / suu);
    r->a_err = r->a * sqrt(s2 * (1.0 / n + mu * mu / suu));
    r->c = 0;
    r->c_err = NAN;
    r->rss = rss;
    r->r2 = svv > 0 ? 1.0 - rss / svv : NAN;
    return 0;
}

/* The profile of y = A (x/xr)^b + c at fixed b: the least-squares (A, c) in
 * closed form and their RSS. When (x/xr)^b is constant over the points
 * (b = 0) the model is a constant: A = 0, c = mean y. */
static double profile(const double *x, const double *y, int n, double xr, double b, double *A,
                      double *c) {
    double sf = 0, sff = 0, sy = 0, sfy = 0;
    for (int i = 0; i < n; i++) {
        double f = pow(x[i] / xr, b);
        sf += f, sff += f * f, sy += y[i], sfy += f * y[i];
    }
    double det = sff * n - sf * sf;
    if (!(det > 1e-12 * sff * n)) {
        *A = 0;
        *c = sy / n;
    } else {
        *A = (sfy * n - sf * sy) / det;
        *c = (sff * sy - sf * sfy) / det;
    }
    double rss = 0;
    for (int i = 0; i < n; i++) {
        double res = y[i] - (*A * pow(x[i] / xr, b) + *c);
        rss += res * res;
    }
    return rss;
}

/* Inverse of a symmetric 3x3 matrix m (row-major) into inv; 0, or -1 when
 * it is singular to working precision. */
static int inverse3(const double m[9], double inv[9]) {
    double c00 = m[4] * m[8] - m[5] * m[7], c01 = m[5] * m[6] - m[3] * m[8],
           c02 = m[3] * m[7] - m[4] * m[6];
    double det = m[0] * c00 + m[1] * c01 + m[2] * c02;
    double scale = fabs(m[0] * m[4] * m[8]) + fabs(m[1] * m[5] * m[6]) + fabs(m[2] * m[3] * m[7]);
    if (!(fabs(det) > 1e-14 * scale)) return -1;
    inv[0] = c00 / det;
    inv[1] = (m[2] * m[7] - m[1] * m[8]) / det;
    inv[2] = (m[1] * m[5] - m[2] * m[4]) / det;
    inv[3] = c01 / det;
    inv[4] = (m[0] * m[8] - m[2] * m[6]) / det;
    inv[5] = (m[2] * m[3] - m[0] * m[5]) / det;
    inv[6] = c02 / det;
    inv[7] = (m[1] * m[6] - m[0] * m[7]) / det;
    inv[8] = (m[0] * m[4] - m[1] * m[3]) / det;
    return 0;
}

#define B_MAX 8.0
#define B_STEP 0.01

int fit_power_offset(const double *x, const double *y, int n, fit_result *r, ml_error *e) {
    memset(r, 0, sizeof *r);
    r->model = FIT_POWER_OFFSET;
    if (n < 3) return ML_FAIL(e, "fit: %d point%s; y = a x^b + c needs at least 3", n,
                              n == 1 ? "" : "s");
    if (check_points(x, y, n, 0, 3, e)) return -1;
    double my = 0, syy = 0;
    for (int i = 0; i < n; i++) my += y[i];
    my /= n;
    for (int i = 0; i < n; i++) syy += (y[i] - my) * (y[i] - my);
    if (!(syy > 0)) return ML_FAIL(e, "fit: y is constant; it has no exponent");
    /* x relative to its geometric mean keeps (x/xr)^b near 1 for any b */
    double xr = 0;
    for (int i = 0; i < n; i++) xr += log(x[i]);
    xr = exp(xr / n);
    /* scan the profile for the best grid point, then golden-section search
     * within one grid step of it */
    int steps = (int)lround(2 * B_MAX / B_STEP), best = 0;
    double best_rss = INFINITY, A, c;
    for (int k = 0; k <= steps; k++) {
        double rss = profile(x, y, n, xr, -B_MAX + k * B_STEP, &A, &c);
        if (rss < best_rss) best_rss = rss, best = k;
    }
    if (best == 0 || best == steps)
        return ML_FAIL(e, "fit: the exponent of y = a x^b + c runs to the search bound "
                       "%+g; the data do not look like a power law with an offset",
                       best == 0 ? -B_MAX : B_MAX);
    const double g = 0.5 * (sqrt(5.0) - 1.0);
    double lo = -B_MAX + (best - 1) * B_STEP, hi = -B_MAX + (best + 1) * B_STEP;
    double m1 = hi - g * (hi - lo), m2 = lo + g * (hi - lo);
    double f1 = profile(x, y, n, xr, m1, &A, &c), f2 = profile(x, y, n, xr, m2, &A, &c);
    while (hi - lo > 1e-12) {
        if (f1 <= f2) {
            hi = m2, m2 = m1, f2 = f1;
            m1 = hi - g * (hi - lo);
            f1 = profile(x, y, n, xr, m1, &A, &c);
        } else {
            lo = m1, m1 = m2, f1 = f2;
            m2 = lo + g * (hi - lo);
            f2 = profile(x, y, n, xr, m2, &A, &c);
        }
    }
    double b = 0.5 * (lo + hi);
    double rss = profile(x, y, n, xr, b, &A, &c);
    r->n = n;
    r->b = b;
    r->a = A * pow(xr, -b);
    r->c = c;
    r->rss = rss;
    r->r2 = 1.0 - rss / syy;
    r->a_err = r->b_err = r->c_err = NAN;
    if (n > 3) {
        /* covariance of (A, b, c): sigma^2 (J^T J)^-1, J's rows
         * ((x/xr)^b, A (x/xr)^b ln(x/xr), 1) */
        double jtj[9] = {0}, cov[9];
        for (int i = 0; i < n; i++) {
            double f = pow(x[i] / xr, b), j[3] = {f, A * f * log(x[i] / xr), 1.0};
            for (int p = 0; p < 3; p++)
                for (int q = 0; q < 3; q++) jtj[3 * p + q] += j[p] * j[q];
        }
        if (inverse3(jtj, cov) == 0) {
            double s2 = rss / (n - 3);
            for (int k = 0; k < 9; k++) cov[k] *= s2;
            /* a = A xr^-b: gradient (xr^-b, -a ln xr, 0) over (A, b, c) */
            double ga = pow(xr, -b), gb = -r->a * log(xr);
            r->a_err = sqrt(ga * ga * cov[0] + 2 * ga * gb * cov[1] + gb * gb * cov[4]);
            r->b_err = sqrt(cov[4]);
            r->c_err = sqrt(cov[8]);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The command line.                                                          */

const char fit_usage[] =
    "usage: memlab fit --sweep NAME --x KEY --y METRIC [--group KEY,...] [--all]\n"
    "                  [--offset] [--db FILE] [--no-store] [--csv]\n"
    "\n"
    "Fits y = a x^b (least squares in log-log; --offset: y = a x^b + c, least\n"
    "squares in y) to the done runs of a sweep, as `memlab export` lists them, one\n"
    "fit per group of rows, prints the parameters with their standard errors and\n"
    "stores them in the fits table of the database (one row per sweep, x, y, group\n"
    "and model; a new fit replaces the old one).\n"
    "\n"
    "  --sweep NAME    the sweep (its latest spec in the database)\n"
    "  --x KEY         a swept key (task.seq_len) or a metric (model/state_size)\n"
    "  --y METRIC      a metric (test/loss); 1/METRIC fits its reciprocal, e.g.\n"
    "                  1/train/tokens_per_s = seconds per token\n"
    "  --group KEYS    swept keys that split the rows into groups, comma-separated\n"
    "                  or repeated (default: every swept key but x, the keys that\n"
    "                  move with x (zipped with it) and train.seed; the seeds of a\n"
    "                  group are fitted together)\n"
    "  --all           one fit over every row\n"
    "  --offset        fit y = a x^b + c\n"
    "  --db FILE       results database (default results/memlab.db)\n"
    "  --no-store      print only\n"
    "  --csv           print CSV: sweep,x,y,model,group,n,a,a_err,b,b_err,c,c_err,r2\n"
    "\n"
    "Rows with a missing value are left out, and so are rows with y <= 0 for the\n"
    "log-log fit. Read the stored fits with e.g.\n"
    "  sqlite3 results/memlab.db \"select grp, b, b_err from fits where sweep = 'NAME'\"\n";

int fit_parse_args(fit_opts *o, int argc, char **argv, ml_error *e) {
    o->store = 1;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 1;
        if (!strcmp(a, "--sweep") && has) {
            o->sweep = argv[++i];
        } else if (!strcmp(a, "--x") && has) {
            o->x = argv[++i];
        } else if (!strcmp(a, "--y") && has) {
            o->y = argv[++i];
        } else if (!strcmp(a, "--group") && has) {
            /* comma-separated, split in place */
            for (char *k = argv[++i], *next; k && *k; k = next) {
                next = strchr(k, ',');
                if (next) *next++ = '\0';
                if (!*k) continue;
                if (o->n_group == FIT_MAX_GROUP_KEYS)
                    return ML_FAIL(e, "fit: at most %d --group keys", FIT_MAX_GROUP_KEYS);
                o->group[o->n_group++] = k;
            }
        } else if (!strcmp(a, "--all")) {
            o->all_rows = 1;
        } else if (!strcmp(a, "--offset")) {
            o->model = FIT_POWER_OFFSET;
        } else if (!strcmp(a, "--db") && has) {
            o->db_path = argv[++i];
        } else if (!strcmp(a, "--no-store")) {
            o->store = 0;
        } else if (!strcmp(a, "--csv")) {
            o->csv = 1;
        } else {
            return ML_FAIL(e, "fit: unknown argument '%s'", a);
        }
    }
    if (!o->sweep || !o->x || !o->y)
        return ML_FAIL(e, "fit: --sweep, --x and --y are required");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Reading the export.                                                        */

/* One parsed CSV table: n_cols header names, n_rows rows of n_cols fields
 * (all strings in one arena). */
typedef struct csv_table {
    char **cells; /* (n_rows + 1) * n_cols: the header first */
    int n_cols;
    long n_rows;
    char *arena;
} csv_table;

static void csv_free(csv_table *t) {
    free(t->cells);
    free(t->arena);
    memset(t, 0, sizeof *t);
}

/* Parse RFC 4180 text (fields quoted when they hold a comma, quote or line
 * break; quotes doubled) into t. Every row must have the header's number of
 * fields. */
static int csv_parse(const char *text, size_t len, csv_table *t, ml_error *e) {
    memset(t, 0, sizeof *t);
    t->arena = malloc(len + 1);
    long cap = 64, n = 0;
    t->cells = malloc(sizeof *t->cells * (size_t)cap);
    if (!t->arena || !t->cells) {
        csv_free(t);
        return ML_FAIL(e, "fit: out of memory reading the export");
    }
    size_t i = 0, o = 0;
    int col = 0;
    while (i < len) {
        if (n == cap) {
            cap *= 2;
            char **grown = realloc(t->cells, sizeof *t->cells * (size_t)cap);
            if (!grown) {
                csv_free(t);
                return ML_FAIL(e, "fit: out of memory reading the export");
            }
            t->cells = grown;
        }
        t->cells[n++] = t->arena + o;
        if (text[i] == '"') {
            for (i++; i < len; i++) {
                if (text[i] == '"' && i + 1 < len && text[i + 1] == '"') t->arena[o++] = text[i++];
                else if (text[i] == '"') break;
                else t->arena[o++] = text[i];
            }
            i++; /* closing quote */
        } else {
            while (i < len && text[i] != ',' && text[i] != '\n' && text[i] != '\r')
                t->arena[o++] = text[i++];
        }
        t->arena[o++] = '\0';
        col++;
        if (i < len && text[i] == ',') {
            i++;
            continue;
        }
        if (i < len && text[i] == '\r') i++;
        if (i < len && text[i] == '\n') i++;
        /* end of a line */
        if (t->n_cols == 0) t->n_cols = col;
        else if (col != t->n_cols) {
            int cols = t->n_cols;
            csv_free(t);
            return ML_FAIL(e, "fit: export row with %d fields, header has %d", col, cols);
        }
        col = 0;
    }
    if (col != 0) {
        csv_free(t);
        return ML_FAIL(e, "fit: the export ends in the middle of a row");
    }
    t->n_rows = t->n_cols ? n / t->n_cols - 1 : 0;
    return 0;
}

static const char *cell_at(const csv_table *t, long row, int col) {
    return t->cells[(size_t)(row + 1) * (size_t)t->n_cols + (size_t)col];
}

static int column_of(const csv_table *t, const char *name) {
    for (int c = 0; c < t->n_cols; c++)
        if (!strcmp(t->cells[c], name)) return c;
    return -1;
}

/* A value "name" or "1/name": the name, and whether the reciprocal is meant. */
static const char *strip_reciprocal(const char *v, int *reciprocal) {
    *reciprocal = !strncmp(v, "1/", 2);
    return *reciprocal ? v + 2 : v;
}

/* A number from a field, NaN when empty or not a number. */
static double number(const char *s, int reciprocal) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end) return NAN;
    return reciprocal ? 1.0 / v : v;
}

/* The export of sweep o->sweep with the metrics the fit needs, as a table. */
static int read_export(const fit_opts *o, const char *x, int x_metric, const char *y,
                       csv_table *t, ml_error *e) {
    export_opts xo;
    memset(&xo, 0, sizeof xo);
    xo.db_path = o->db_path;
    xo.sweep = o->sweep;
    xo.metrics[xo.n_metrics++] = y;
    if (x_metric) xo.metrics[xo.n_metrics++] = x;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return ML_FAIL(e, "fit: out of memory");
    long not_done = 0;
    int rc = export_sweep(&xo, f, &not_done, e);
    if (fclose(f) != 0 && !rc) rc = ML_FAIL(e, "fit: out of memory");
    if (!rc) rc = csv_parse(buf, len, t, e);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Fitting a sweep.                                                           */

typedef struct sweep_id_ctx {
    long long id;
} sweep_id_ctx;

static int take_sweep_id(void *ctx, const db_sweep_row *row) {
    ((sweep_id_ctx *)ctx)->id = row->id;
    return 0;
}

/* x as a CSV field: %.10g, empty for NaN (as the export writes it). */
static void csv_num(FILE *out, double x) {
    if (isnan(x)) fprintf(out, ",");
    else fprintf(out, ",%.10g", x);
}

/* Print one fitted (or skipped) group. */
static void print_fit(const fit_opts *o, FILE *out, const char *label, const fit_result *r,
                      const char *skipped) {
    const char *model = fit_model_names[o->model];
    if (o->csv) {
        char g[600];
        export_csv_field(label, g, sizeof g);
        if (skipped) {
            fprintf(out, "%s,%s,%s,%s,%s,%d,,,,,,,\n", o->sweep, o->x, o->y, model, g, r->n);
            return;
        }
        fprintf(out, "%s,%s,%s,%s,%s,%d", o->sweep, o->x, o->y, model, g, r->n);
        const double v[7] = {r->a, r->a_err, r->b, r->b_err, r->c, r->c_err, r->r2};
        for (int i = 0; i < 7; i++) csv_num(out, v[i]);
        fprintf(out, "\n");
        return;
    }
    if (skipped) {
        fprintf(out, "%-40s %4d  skipped: %s\n", label, r->n, skipped);
        return;
    }
    fprintf(out, "%-40s %4d %11.5g %9.3g %9.4f %8.4f", label, r->n, r->a, r->a_err, r->b,
            r->b_err);
    if (o->model == FIT_POWER_OFFSET) fprintf(out, " %11.5g %9.3g", r->c, r->c_err);
    fprintf(out, " %7.4f\n", r->r2);
}

/* Whether column c is a function of column cx over the rows (a key zipped
 * with x, e.g. num_kv_pairs with seq_len): grouping by it would leave one x
 * per group. */
static int moves_with(const csv_table *t, int c, int cx) {
    for (long r = 0; r < t->n_rows; r++)
        for (long q = r + 1; q < t->n_rows; q++)
            if (!strcmp(cell_at(t, r, cx), cell_at(t, q, cx)) &&
                strcmp(cell_at(t, r, c), cell_at(t, q, c)))
                return 0;
    return 1;
}

/* Whether rows r and q agree on every group column. */
static int same_group(const csv_table *t, long r, long q, const int *groups, int ng) {
    for (int k = 0; k < ng; k++)
        if (strcmp(cell_at(t, r, groups[k]), cell_at(t, q, groups[k]))) return 0;
    return 1;
}

int fit_sweep(const fit_opts *o, FILE *out, ml_error *e) {
    int x_rec, y_rec;
    const char *x = strip_reciprocal(o->x, &x_rec), *y = strip_reciprocal(o->y, &y_rec);
    int x_metric = strchr(x, '/') != NULL;
    if (!strchr(y, '/'))
        return ML_FAIL(e, "fit: --y %s: expected a metric split/name, e.g. test/loss", o->y);
    if (x_rec && !x_metric) return ML_FAIL(e, "fit: --x %s: 1/ applies to metrics only", o->x);
    /* Open for writing first: that also brings an older file to the schema
     * with the fits table before the export reads it. */
    ml_db *db = NULL;
    long long sweep_id = 0;
    if (access(o->db_path, F_OK) != 0)
        return ML_FAIL(e, "fit: no database %s (memlab run fills one)", o->db_path);
    if (o->store) {
        sweep_id_ctx sc = {0};
        if (db_open(&db, o->db_path, e) || db_sweeps(db, o->sweep, take_sweep_id, &sc, e)) {
            db_close(db);
            return -1;
        }
        sweep_id = sc.id; /* 0: export_sweep below reports the missing sweep */
    }
    csv_table t;
    if (read_export(o, x, x_metric, y, &t, e)) {
        db_close(db);
        return -1;
    }
    int rc = -1, ng = 0, fitted = 0;
    int *groups = malloc(sizeof *groups * (size_t)(t.n_cols + 1));
    double *px = malloc(sizeof *px * (size_t)(t.n_rows + 1));
    double *py = malloc(sizeof *py * (size_t)(t.n_rows + 1));
    char *used = calloc((size_t)t.n_rows + 1, 1);
    int cx = column_of(&t, x), cy = column_of(&t, y), cs = column_of(&t, "status");
    /* columns: run, config_hash, status, the swept keys, then the metrics */
    int first_metric = t.n_cols - 1 - x_metric;
    if (!groups || !px || !py || !used) {
        ML_FAIL(e, "fit: out of memory");
        goto done;
    }
    if (cx < 0) {
        ML_FAIL(e, "fit: --x %s is neither a swept key of sweep %s nor a metric (split/name)",
                x, o->sweep);
        goto done;
    }
    if (cy < 0 || cs < 0) {
        ML_FAIL(e, "fit: the export of sweep %s has no column %s", o->sweep,
                cy < 0 ? y : "status");
        goto done;
    }
    if (!o->all_rows && o->n_group > 0) {
        for (int k = 0; k < o->n_group; k++) {
            int c = column_of(&t, o->group[k]);
            if (c <= cs || c >= first_metric) {
                ML_FAIL(e, "fit: --group %s is not a swept key of sweep %s", o->group[k],
                        o->sweep);
                goto done;
            }
            groups[ng++] = c;
        }
    } else if (!o->all_rows) {
        for (int c = cs + 1; c < first_metric; c++)
            if (c != cx && strcmp(t.cells[c], "train.seed") && !moves_with(&t, c, cx))
                groups[ng++] = c;
    }
    if (o->csv)
        fprintf(out, "sweep,x,y,model,group,n,a,a_err,b,b_err,c,c_err,r2\n");
    else
        fprintf(out, "sweep %s: %s = a (%s)^b%s, %ld runs\n%-40s %4s %11s %9s %9s %8s%s %7s\n",
                o->sweep, o->y, o->x, o->model == FIT_POWER_OFFSET ? " + c" : "", t.n_rows,
                "group", "n", "a", "se(a)", "b", "se(b)",
                o->model == FIT_POWER_OFFSET ? "           c     se(c)" : "", "r2");
    if (db && db_begin(db, e)) goto done;
    for (long r0 = 0; r0 < t.n_rows; r0++) {
        if (used[r0]) continue;
        int n = 0;
        char label[512] = "";
        size_t len = 0;
        for (int k = 0; k < ng && len < sizeof label; k++)
            len += (size_t)snprintf(label + len, sizeof label - len, "%s%s=%s", k ? " " : "",
                                    t.cells[groups[k]], cell_at(&t, r0, groups[k]));
        for (long r = r0; r < t.n_rows; r++) {
            if (used[r] || !same_group(&t, r, r0, groups, ng)) continue;
            used[r] = 1;
            if (strcmp(cell_at(&t, r, cs), "finished")) continue;
            double vx = number(cell_at(&t, r, cx), x_rec), vy = number(cell_at(&t, r, cy), y_rec);
            if (!isfinite(vx) || vx <= 0 || !isfinite(vy)) continue;
            if (o->model == FIT_POWER && vy <= 0) continue;
            px[n] = vx, py[n] = vy, n++;
        }
        fit_result fr;
        ml_error sub;
        int bad = o->model == FIT_POWER ? fit_power(px, py, n, &fr, &sub)
                                        : fit_power_offset(px, py, n, &fr, &sub);
        fr.n = n;
        if (bad) {
            print_fit(o, out, ng ? label : "(all rows)", &fr,
                      sub.msg + (strncmp(sub.msg, "fit: ", 5) ? 0 : 5));
            continue;
        }
        print_fit(o, out, ng ? label : "(all rows)", &fr, NULL);
        fitted++;
        if (!db) continue;
        db_fit_row row = {.sweep_id = sweep_id, .sweep = o->sweep, .x = o->x, .y = o->y,
                          .grp = label, .model = fit_model_names[o->model],
                          .code_version = memlab_code_version(), .n = n, .a = fr.a,
                          .a_err = fr.a_err, .b = fr.b, .b_err = fr.b_err, .c = fr.c,
                          .c_err = fr.c_err, .rss = fr.rss, .r2 = fr.r2};
        if (db_fit_store(db, &row, e)) goto done;
    }
    if (db && db_commit(db, e)) goto done;
    if (!fitted) {
        ML_FAIL(e, "fit: sweep %s: no group has enough usable points (%ld runs exported)",
                o->sweep, t.n_rows);
        goto done;
    }
    if (db && !o->csv)
        fprintf(out, "stored %d fit%s in %s (table fits)\n", fitted, fitted == 1 ? "" : "s",
                o->db_path);
    rc = 0;
done:
    free(groups), free(px), free(py), free(used);
    db_close(db);
    csv_free(&t);
    return rc;
}
