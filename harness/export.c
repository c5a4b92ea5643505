/* export.c: sweep status and result tables from the results database (see
 * export.h).
 *
 * A sweep's runs are not read from the runs table but re-expanded from the
 * resolved spec stored with the sweep: that is the only way to know which
 * runs are missing, and it makes a run done by another sweep or by `memlab
 * train` (same config hash) count for this one too. What each state means
 * is db.c's (db_hash_state); expanding is sweep.c's. */
#include "export.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "spec.h"
#include "sweep.h"

const char *const export_default_metrics[] = {"test/accuracy", "test/loss", "model/state_size",
                                              "model/params", "train/tokens_per_s", NULL};

/* load_stored: the sweep of a stored resolved spec (reads no other file). */
static int load_stored(const db_sweep_row *row, ml_sweep **s, ml_error *e) {
    char name[300];
    snprintf(name, sizeof name, "sweep '%.200s' (stored spec)", row->name);
    sweep_opts so = {.no_base = 1};
    return sweep_load_string(row->resolved, strlen(row->resolved), name, &so, s, e);
}

/* ------------------------------------------------------------------------ */
/* Status.                                                                    */

typedef struct status_ctx {
    ml_db *db;
    FILE *out;
    int rows;
    ml_error *e;
} status_ctx;

static int status_row(void *ctx, const db_sweep_row *row) {
    status_ctx *c = ctx;
    ml_sweep *s = NULL;
    ml_error sub;
    if (c->rows++ == 0)
        fprintf(c->out, "%-32s %6s %6s %8s %7s %6s %11s %7s\n", "sweep", "runs", "done",
                "diverged", "running", "failed", "interrupted", "missing");
    if (load_stored(row, &s, &sub)) {
        char msg[1200];
        ml_error_format(&sub, msg, sizeof msg);
        msg[strcspn(msg, "\n")] = '\0';
        fprintf(c->out, "%-32s cannot be expanded by this memlab: %s\n", row->name, msg);
        return 0;
    }
    long n = sweep_size(s), counts[6] = {0};
    for (long i = 0; i < n; i++) {
        db_state st;
        long long id;
        if (db_hash_state(c->db, sweep_hash(s, i), &st, &id, c->e)) {
            sweep_free(s);
            return -1;
        }
        counts[st]++;
    }
    sweep_free(s);
    fprintf(c->out, "%-32s %6ld %6ld %8ld %7ld %6ld %11ld %7ld\n", row->name, n,
            counts[DB_FINISHED], counts[DB_DIVERGED], counts[DB_RUNNING], counts[DB_FAILED],
            counts[DB_INTERRUPTED], counts[DB_MISSING]);
    return 0;
}

int export_status(const char *db_path, FILE *out, ml_error *e) {
    ml_db *db = NULL;
    if (db_open_readonly(&db, db_path, e)) return -1;
    status_ctx c = {.db = db, .out = out, .e = e};
    int rc = db_sweeps(db, NULL, status_row, &c, e);
    db_close(db);
    if (rc) return -1;
    if (!c.rows) fprintf(out, "no sweeps in %s\n", db_path);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Export.                                                                    */

void export_csv_field(const char *text, char *buf, size_t cap) {
    if (cap == 0) return;
    if (!strpbrk(text, ",\"\r\n")) {
        snprintf(buf, cap, "%s", text);
        return;
    }
    size_t o = 0;
    buf[o++] = '"';
    for (const char *p = text; *p && o + 3 < cap; p++) {
        if (*p == '"') buf[o++] = '"';
        buf[o++] = *p;
    }
    if (o + 1 < cap) buf[o++] = '"';
    buf[o] = '\0';
}

/* fmt_real: the shortest of 15 to 17 significant digits that reads back as
 * x (as in the stored configs); JSON null / empty CSV field for NaN, and for
 * infinities in JSON. */
static void fmt_real(double x, int json, char *buf, size_t cap) {
    if (isnan(x) || (json && isinf(x))) {
        snprintf(buf, cap, "%s", json ? "null" : "");
        return;
    }
    for (int digits = 15; digits <= 17; digits++) {
        snprintf(buf, cap, "%.*g", digits, x);
        if (strtod(buf, NULL) == x) return;
    }
}

/* unquote: a JSON string value without its quotes and escapes (the swept
 * values are names); other values unchanged. */
static void unquote(const char *json, char *buf, size_t cap) {
    size_t n = strlen(json), o = 0;
    if (n < 2 || json[0] != '"') {
        snprintf(buf, cap, "%s", json);
        return;
    }
    for (size_t i = 1; i + 1 < n && o + 1 < cap; i++) {
        if (json[i] == '\\' && i + 2 < n) i++;
        buf[o++] = json[i];
    }
    buf[o] = '\0';
}

typedef struct export_ctx {
    const export_opts *o;
    ml_db *db;
    FILE *out;
    long not_done;
    int found;
    ml_error *e;
} export_ctx;

/* cell: one field of the current row: a JSON member key: json_value, or a
 * CSV field csv_text. Keys are dotted names and metric names: no escaping
 * needed. */
static void cell(export_ctx *c, int first, const char *key, const char *json_value,
                 const char *csv_text) {
    if (c->o->json) {
        fprintf(c->out, "%s\"%s\": %s", first ? "{" : ", ", key ? key : "",
                json_value ? json_value : "null");
    } else {
        char f[1400];
        export_csv_field(csv_text, f, sizeof f);
        fprintf(c->out, "%s%s", first ? "" : ",", f);
    }
}

static int export_row(void *ctx, const db_sweep_row *row) {
    export_ctx *c = ctx;
    const export_opts *o = c->o;
    const char *const *metrics = o->n_metrics ? o->metrics : export_default_metrics;
    int n_metrics = o->n_metrics;
    if (!n_metrics)
        while (metrics[n_metrics]) n_metrics++;
    ml_sweep *s = NULL;
    c->found = 1;
    if (load_stored(row, &s, c->e)) return -1;
    int nk = sweep_n_keys(s);
    /* Header. */
    if (o->json) {
        fprintf(c->out, "[");
    } else {
        cell(c, 1, "run", NULL, "run");
        cell(c, 0, "config_hash", NULL, "config_hash");
        cell(c, 0, "status", NULL, "status");
        for (int k = 0; k < nk; k++) cell(c, 0, sweep_key(s, k), NULL, sweep_key(s, k));
        for (int m = 0; m < n_metrics; m++) cell(c, 0, metrics[m], NULL, metrics[m]);
        fprintf(c->out, "\n");
    }
    int rows = 0, rc = 0;
    for (long i = 0; i < sweep_size(s) && !rc; i++) {
        db_state st;
        long long id;
        run_config cfg;
        if (db_hash_state(c->db, sweep_hash(s, i), &st, &id, c->e) ||
            sweep_config(s, i, &cfg, c->e)) {
            rc = -1;
            break;
        }
        if (st != DB_FINISHED && st != DB_DIVERGED) {
            c->not_done++;
            continue;
        }
        char jv[700], text[700];
        if (o->json) fprintf(c->out, "%s\n", rows ? "," : "");
        rows++;
        snprintf(jv, sizeof jv, "%lld", id);
        cell(c, 1, "run", jv, jv);
        snprintf(jv, sizeof jv, "\"%s\"", sweep_hash(s, i));
        cell(c, 0, "config_hash", jv, sweep_hash(s, i));
        const char *status = st == DB_FINISHED ? "finished" : "diverged";
        snprintf(jv, sizeof jv, "\"%s\"", status);
        cell(c, 0, "status", jv, status);
        for (int k = 0; k < nk; k++) {
            if (config_value(&cfg, sweep_key(s, k), jv, sizeof jv)) snprintf(jv, sizeof jv, "null");
            unquote(jv, text, sizeof text);
            cell(c, 0, sweep_key(s, k), jv, text);
        }
        for (int m = 0; m < n_metrics && !rc; m++) {
            char split[64];
            const char *slash = strchr(metrics[m], '/');
            snprintf(split, sizeof split, "%.*s", (int)(slash - metrics[m]), metrics[m]);
            double v;
            int found;
            if (db_final_metric(c->db, id, split, slash + 1, &v, &found, c->e)) {
                rc = -1;
                break;
            }
            if (!found) v = NAN;
            fmt_real(v, 1, jv, sizeof jv);
            fmt_real(v, 0, text, sizeof text);
            cell(c, 0, metrics[m], jv, text);
        }
        fprintf(c->out, "%s", o->json ? "}" : "\n");
    }
    if (o->json) fprintf(c->out, "%s]\n", rows ? "\n" : "");
    sweep_free(s);
    return rc;
}

int export_sweep(const export_opts *o, FILE *out, long *not_done, ml_error *e) {
    if (not_done) *not_done = 0;
    if (!o->sweep || !*o->sweep) return ML_FAIL(e, "export: which sweep? (--sweep NAME)");
    for (int m = 0; m < o->n_metrics; m++) {
        const char *slash = strchr(o->metrics[m], '/');
        if (!slash || slash == o->metrics[m] || !slash[1] || slash - o->metrics[m] >= 64)
            return ML_FAIL(e, "export: metric '%s': expected split/name, e.g. test/accuracy",
                           o->metrics[m]);
    }
    ml_db *db = NULL;
    if (db_open_readonly(&db, o->db_path, e)) return -1;
    export_ctx c = {.o = o, .db = db, .out = out, .e = e};
    int rc = db_sweeps(db, o->sweep, export_row, &c, e);
    db_close(db);
    if (rc) return -1;
    if (!c.found) return ML_FAIL(e, "no sweep named '%s' in %s (memlab status lists them)",
                                 o->sweep, o->db_path);
    if (not_done) *not_done = c.not_done;
    return 0;
}
