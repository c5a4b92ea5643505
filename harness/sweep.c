/* sweep.c: the sweep section of a spec -> the runs it describes (see
 * sweep.h).
 *
 * Parses the sweep section of a spec document (spec.c builds the document
 * from its layers and checks each run), lays out its axes, expands them in
 * the documented order, checks every run of the expansion and of every
 * preset, and merges runs with identical config hashes. Each run's config is
 * rebuilt on demand from the document and its axis values rather than kept:
 * a sweep of ten thousand runs costs ten thousand positions and hashes, not
 * ten thousand configs. Running, recording and reporting are left to
 * runner.c, db.c and export.c. */
#include "sweep.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"

#define MAX_AXES 32
#define MAX_SWEPT 64 /* swept keys over all axes */

enum { AXIS_GRID, AXIS_ZIP, AXIS_SEEDS };

typedef struct sweep_axis {
    int kind;
    int first, n_keys;  /* its keys: keys[first .. first + n_keys) */
    long n_values;
} sweep_axis;

typedef struct swept_key {
    char dotted[128];
    const spec_node *key_node;      /* where key problems point */
    const spec_node *const *values; /* n_values of its axis */
} swept_key;

struct ml_sweep {
    spec_doc *doc;
    char name[ML_STR];
    sweep_axis axes[MAX_AXES];
    int n_axes;
    swept_key keys[MAX_SWEPT];
    int n_keys;
    const spec_node **seed_nodes; /* values of `seeds: N` (malloc'd) */
    long n_expanded, n_runs;
    long *pos;                    /* expansion position of each distinct run */
    char (*hash)[65];             /* config hash of each distinct run */
    char *resolved;
    char resolved_hash[65];
};

/* ------------------------------------------------------------------------ */
/* The sweep section -> axes.                                                 */

static const ml_field sweep_keys[] = {
    {.key = "grid"}, {.key = "zip"}, {.key = "seeds"}, {.key = NULL}};

/* The count form of seeds: how many, from seed 0. */
static const ml_field seeds_count = {.key = "seeds", .type = FT_LONG, .offset = 0, .min = 1,
                                     .max = SWEEP_MAX_RUNS, .def = "1"};

/* new_axis: a new axis of kind, or NULL after reporting (at `at`) that
 * there are too many. */
static sweep_axis *new_axis(ml_sweep *s, int kind, const spec_node *at) {
    if (s->n_axes == MAX_AXES) {
        spec_doc_report(s->doc, at, "sweep: more than %d axes", MAX_AXES);
        return NULL;
    }
    sweep_axis *a = &s->axes[s->n_axes++];
    a->kind = kind;
    a->first = s->n_keys;
    a->n_keys = 0;
    a->n_values = 0;
    return a;
}

/* add_key: swept key `key` (node kn) with the values of list node vals (or
 * the n given values when vals is NULL) to axis a. Reports and returns -1
 * for an unknown key, a key swept twice, or a value that is not a non-empty
 * list. where names the place for messages ("sweep.grid"). */
static int add_key(ml_sweep *s, sweep_axis *a, const char *key, const spec_node *kn,
                   const spec_node *vals, const spec_node *const *given, long n,
                   const char *where) {
    char msg[400];
    spec_doc *d = s->doc;
    if (spec_dotted_known(key, msg, sizeof msg)) {
        spec_doc_report(d, kn, "%s: %s", where, msg);
        return -1;
    }
    for (int i = 0; i < s->n_keys; i++) {
        if (!strcmp(s->keys[i].dotted, key)) {
            spec_doc_report(d, kn, "%s: '%s' is already swept (line %d)", where, key,
                            s->keys[i].key_node->line);
            return -1;
        }
    }
    if (strlen(key) >= sizeof s->keys[0].dotted || s->n_keys == MAX_SWEPT) {
        spec_doc_report(d, kn, "%s: too many or too long swept keys", where);
        return -1;
    }
    if (vals) {
        if (vals->kind != SPEC_LIST) {
            if (spec_node_is_null(vals))
                spec_doc_report(d, kn, "%s.%s: missing value (expected a list of values, "
                                "e.g. [64, 128])", where, key);
            else
                spec_doc_report(d, vals, "%s.%s: expected a list of values (e.g. [64, 128]), "
                                "got %s", where, key, spec_node_kind(vals));
            return -1;
        }
        if (vals->n == 0) {
            spec_doc_report(d, vals, "%s.%s: the list is empty; give at least one value",
                            where, key);
            return -1;
        }
        given = (const spec_node *const *)vals->vals;
        n = vals->n;
    }
    swept_key *k = &s->keys[s->n_keys++];
    snprintf(k->dotted, sizeof k->dotted, "%s", key);
    k->key_node = kn;
    k->values = given;
    a->n_keys++;
    if (a->n_values == 0) a->n_values = n;
    return 0;
}

/* section_map: whether v (of key kn, named what) is a non-empty mapping;
 * reports otherwise. */
static int section_map(spec_doc *d, const spec_node *kn, const spec_node *v, const char *what,
                       const char *expected) {
    if (v->kind == SPEC_MAP && v->n > 0) return 1;
    if (v->kind == SPEC_MAP || spec_node_is_null(v))
        spec_doc_report(d, v->kind == SPEC_MAP ? v : kn,
                        "%s is empty; give it keys or leave it out", what);
    else
        spec_doc_report(d, v, "%s must be %s, got %s", what, expected, spec_node_kind(v));
    return 0;
}

static int parse_grid(ml_sweep *s, const spec_node *kn, const spec_node *v) {
    if (!section_map(s->doc, kn, v, "sweep.grid", "a mapping of dotted keys to lists of values"))
        return -1;
    int rc = v->bad ? -1 : 0;
    for (int i = 0; i < v->n; i++) {
        sweep_axis *a = new_axis(s, AXIS_GRID, v->keys[i]);
        if (!a) return -1;
        if (add_key(s, a, v->keys[i]->text, v->keys[i], v->vals[i], NULL, 0, "sweep.grid")) {
            s->n_axes--;
            rc = -1;
        }
    }
    return rc;
}

/* parse_zip_group: one mapping of keys whose lists move together. */
static int parse_zip_group(ml_sweep *s, const spec_node *kn, const spec_node *g) {
    if (!section_map(s->doc, kn, g, "a sweep.zip group",
                     "a mapping of dotted keys to lists of equal length"))
        return -1;
    sweep_axis *a = new_axis(s, AXIS_ZIP, g);
    if (!a) return -1;
    int rc = g->bad ? -1 : 0;
    const spec_node *first = NULL;
    for (int i = 0; i < g->n; i++) {
        const spec_node *vals = g->vals[i];
        if (first && vals->kind == SPEC_LIST && vals->n > 0 && vals->n != a->n_values) {
            spec_doc_report(s->doc, vals,
                            "sweep.zip: '%s' has %d value%s but '%s' has %ld; zipped keys move "
                            "together and need lists of equal length",
                            g->keys[i]->text, vals->n, vals->n == 1 ? "" : "s", first->text,
                            a->n_values);
            rc = -1;
            continue;
        }
        if (add_key(s, a, g->keys[i]->text, g->keys[i], vals, NULL, 0, "sweep.zip")) {
            rc = -1;
            continue;
        }
        if (!first) first = g->keys[i];
    }
    if (a->n_keys == 0) s->n_axes--;
    return rc;
}

static int parse_zip(ml_sweep *s, const spec_node *kn, const spec_node *v) {
    if (v->kind != SPEC_LIST) return parse_zip_group(s, kn, v);
    if (v->n == 0) {
        spec_doc_report(s->doc, v, "sweep.zip is an empty list; give it groups or leave it out");
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < v->n; i++)
        if (parse_zip_group(s, v->vals[i], v->vals[i])) rc = -1;
    return rc;
}

static int parse_seeds(ml_sweep *s, const spec_node *kn, const spec_node *v) {
    sweep_axis *a = new_axis(s, AXIS_SEEDS, kn);
    if (!a) return -1;
    if (v->kind == SPEC_LIST) {
        if (add_key(s, a, "train.seed", kn, v, NULL, 0, "sweep.seeds")) goto fail;
        return 0;
    }
    if (v->kind != SPEC_SCALAR) {
        spec_doc_report(s->doc, v, "sweep.seeds: expected a count or a list of seeds, got %s",
                        spec_node_kind(v));
        goto fail;
    }
    if (spec_node_is_null(v)) {
        spec_doc_report(s->doc, kn, "sweep.seeds: missing value (expected a count or a list "
                        "of seeds)");
        goto fail;
    }
    long n = 0;
    ml_error sub;
    if (strlen(v->text) != v->len || schema_set(&seeds_count, &n, v->text, &sub)) {
        spec_doc_report(s->doc, v, "sweep.seeds: %s",
                        strlen(v->text) != v->len ? "value contains a NUL character" : sub.msg);
        goto fail;
    }
    free(s->seed_nodes);
    s->seed_nodes = malloc(sizeof *s->seed_nodes * (size_t)n);
    if (!s->seed_nodes) {
        spec_doc_report(s->doc, v, "out of memory");
        goto fail;
    }
    for (long i = 0; i < n; i++) {
        char text[32];
        snprintf(text, sizeof text, "%ld", i);
        if (!(s->seed_nodes[i] = spec_doc_scalar(s->doc, v, text))) goto fail;
    }
    if (add_key(s, a, "train.seed", kn, NULL, s->seed_nodes, n, "sweep.seeds")) goto fail;
    return 0;
fail:
    s->n_axes--;
    return -1;
}

/* parse_sweep: the axes of the document's current root. Returns 0; -1
 * after reporting problems (the axes that parsed cleanly are kept, so that
 * their values can still be checked); -2 when the expansion is too large to
 * check. */
static int parse_sweep(ml_sweep *s, long max_runs) {
    s->n_axes = s->n_keys = 0;
    s->n_expanded = 1;
    const spec_node *root = spec_doc_root(s->doc), *kn = NULL;
    const spec_node *v = spec_map_get(root, "sweep", &kn);
    if (!v) return 0;
    if (v->kind != SPEC_MAP) {
        if (spec_node_is_null(v))
            spec_doc_report(s->doc, kn, "section 'sweep' is empty; give it grid, zip or seeds, "
                            "or leave it out");
        else
            spec_doc_report(s->doc, v, "section 'sweep' must be a mapping with grid, zip or "
                            "seeds, got %s", spec_node_kind(v));
        return -1;
    }
    int rc = v->bad ? -1 : 0;
    for (int i = 0; i < v->n; i++) {
        const char *k = v->keys[i]->text;
        const spec_node *ki = v->keys[i], *vi = v->vals[i];
        if (!strcmp(k, "grid")) {
            if (parse_grid(s, ki, vi)) rc = -1;
        } else if (!strcmp(k, "zip")) {
            if (parse_zip(s, ki, vi)) rc = -1;
        } else if (!strcmp(k, "seeds")) {
            if (parse_seeds(s, ki, vi)) rc = -1;
        } else {
            char msg[200] = "";
            const char *near = schema_closest(sweep_keys, k);
            if (!near && strchr(k, '.')) near = "grid";
            if (near) snprintf(msg, sizeof msg, "; did you mean '%s'?", near);
            spec_doc_report(s->doc, ki, "unknown key '%s' in sweep%s (sweep takes grid, zip and "
                            "seeds)", k, msg);
            rc = -1;
        }
    }
    double product = 1;
    for (int a = 0; a < s->n_axes; a++) product *= (double)s->axes[a].n_values;
    if (product > (double)max_runs) {
        if (!rc)
            spec_doc_report(s->doc, kn, "the sweep expands to %.0f runs, more than the limit of "
                            "%ld; split it into several specs", product, max_runs);
        return -2;
    }
    s->n_expanded = (long)product;
    return rc;
}

/* overrides: the overrides of expansion position x into ov (one per swept
 * key); returns how many. The last axis varies fastest. */
static int overrides(const ml_sweep *s, long x, spec_override *ov) {
    for (int a = s->n_axes - 1; a >= 0; a--) {
        const sweep_axis *ax = &s->axes[a];
        long idx = x % ax->n_values;
        x /= ax->n_values;
        for (int k = ax->first; k < ax->first + ax->n_keys; k++) {
            ov[k].key = s->keys[k].dotted;
            ov[k].key_node = s->keys[k].key_node;
            ov[k].value = s->keys[k].values[idx];
        }
    }
    return s->n_keys;
}

/* check_runs: every run of the current expansion checked; with keep, the
 * hashes of the distinct runs and their positions are stored. Returns 0, or
 * -1 when any run has a problem (reported). */
static int check_runs(ml_sweep *s, int keep) {
    spec_override ov[MAX_SWEPT];
    long n = s->n_expanded;
    char (*hash)[65] = NULL;
    int rc = 0;
    if (n < 1 || n > SWEEP_MAX_RUNS * 100) {
        spec_doc_report(s->doc, NULL, "a sweep of %ld runs cannot be expanded", n);
        return -1;
    }
    if (keep) {
        free(s->pos);
        free(s->hash);
        s->pos = malloc(sizeof *s->pos * (size_t)n);
        s->hash = malloc(sizeof *s->hash * (size_t)n);
        hash = s->hash;
        if (!s->pos || !s->hash) {
            spec_doc_report(s->doc, NULL, "out of memory expanding the sweep");
            return -1;
        }
    }
    run_config c;
    for (long x = 0; x < n; x++) {
        int nk = overrides(s, x, ov);
        if (spec_doc_config(s->doc, ov, nk, &c)) {
            rc = -1;
            continue;
        }
        if (!keep || rc) continue;
        if (x == 0) snprintf(s->name, sizeof s->name, "%s", c.name);
        config_hash(&c, hash[x]);
    }
    if (!keep || rc) return rc;
    /* Keep the first of each hash, in expansion order: duplicates are
     * neighbours once the positions are sorted by (hash, position). */
    long *order = malloc(sizeof *order * (size_t)n);
    if (!order) {
        spec_doc_report(s->doc, NULL, "out of memory expanding the sweep");
        return -1;
    }
    for (long x = 0; x < n; x++) order[x] = x;
    /* A shell sort: qsort has no context argument for the hash table. */
    for (long gap = n / 2; gap > 0; gap /= 2) {
        for (long i = gap; i < n; i++) {
            long t = order[i], j = i;
            while (j >= gap) {
                int c2 = strcmp(hash[order[j - gap]], hash[t]);
                if (c2 < 0 || (c2 == 0 && order[j - gap] < t)) break;
                order[j] = order[j - gap];
                j -= gap;
            }
            order[j] = t;
        }
    }
    unsigned char *dup = calloc((size_t)n, 1);
    if (!dup) {
        free(order);
        spec_doc_report(s->doc, NULL, "out of memory expanding the sweep");
        return -1;
    }
    for (long i = 1; i < n; i++)
        if (!strcmp(hash[order[i]], hash[order[i - 1]])) dup[order[i]] = 1;
    long m = 0;
    for (long x = 0; x < n; x++) {
        if (dup[x]) continue;
        s->pos[m] = x;
        if (m != x) memcpy(hash[m], hash[x], sizeof hash[0]);
        m++;
    }
    s->n_runs = m;
    free(dup);
    free(order);
    return 0;
}

/* base_name: the file name of path without directory and extension. */
static void base_name(const char *path, char *buf, size_t cap) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    const char *dot = strrchr(b, '.');
    int n = dot && dot != b ? (int)(dot - b) : (int)strlen(b);
    snprintf(buf, cap, "%.*s", n, b);
}

/* load: the sweep of a loaded document (takes it over). */
static int load(spec_doc *d, const sweep_opts *o, ml_sweep **out, ml_error *e) {
    *out = NULL;
    if (!d) return -1;
    ml_sweep *s = calloc(1, sizeof *s);
    if (!s) {
        spec_doc_free(d);
        return ML_FAIL(e, "out of memory");
    }
    s->doc = d;
    long max_runs = o && o->max_runs > 0 ? o->max_runs : SWEEP_MAX_RUNS;
    const char *preset = o ? o->preset : NULL;
    if (o && o->check_presets) {
        const char *names[64];
        int n = spec_doc_presets(d, names, 64);
        for (int i = 0; i < n && i < 64; i++) {
            if (preset && !strcmp(names[i], preset)) continue;
            char ctx[96];
            snprintf(ctx, sizeof ctx, "with preset '%.60s'", names[i]);
            spec_doc_context(d, ctx);
            if (spec_doc_select(d, names[i]) == 0 && parse_sweep(s, max_runs) != -2)
                check_runs(s, 0);
        }
        spec_doc_context(d, NULL);
    }
    run_config c;
    if (spec_doc_select(d, preset) == 0) {
        /* With problems in the sweep section, the runs of the axes that
         * parsed are still checked, for their values' problems. */
        int st = parse_sweep(s, max_runs);
        if (st != -2) check_runs(s, st == 0);
        else spec_doc_config(d, NULL, 0, &c); /* the sections' own problems */
    }
    if (!spec_doc_failed(d) && !spec_doc_root(d))
        spec_doc_report(d, NULL, "the spec has nothing to run");
    if (spec_doc_finish(d, e)) {
        sweep_free(s);
        return -1;
    }
    if (!s->name[0]) base_name(spec_doc_file(d), s->name, sizeof s->name);
    s->resolved = spec_doc_json(d);
    if (!s->resolved) {
        sweep_free(s);
        return ML_FAIL(e, "out of memory");
    }
    sha256_hex(s->resolved, strlen(s->resolved), s->resolved_hash);
    *out = s;
    return 0;
}

static spec_opts doc_opts(const sweep_opts *o) {
    spec_opts so = {.allow_sweep = 1};
    if (o) {
        so.sets = o->sets;
        so.n_sets = o->n_sets;
        so.no_base = o->no_base;
    }
    return so;
}

int sweep_load_file(const char *path, const sweep_opts *o, ml_sweep **out, ml_error *e) {
    spec_opts so = doc_opts(o);
    *out = NULL;
    return load(spec_doc_load_file(path, &so, e), o, out, e);
}

int sweep_load_string(const char *text, size_t len, const char *name, const sweep_opts *o,
                      ml_sweep **out, ml_error *e) {
    spec_opts so = doc_opts(o);
    *out = NULL;
    return load(spec_doc_load_string(text, len, name, &so, e), o, out, e);
}

void sweep_free(ml_sweep *s) {
    if (!s) return;
    spec_doc_free(s->doc);
    free(s->seed_nodes);
    free(s->pos);
    free(s->hash);
    free(s->resolved);
    free(s);
}

const char *sweep_name(const ml_sweep *s) { return s->name; }
long sweep_size(const ml_sweep *s) { return s->n_runs; }
long sweep_expanded(const ml_sweep *s) { return s->n_expanded; }
int sweep_warnings(const ml_sweep *s, char *buf, size_t cap) {
    return spec_doc_warnings(s->doc, buf, cap);
}
const char *sweep_hash(const ml_sweep *s, long i) { return s->hash[i]; }
long sweep_position(const ml_sweep *s, long i) { return s->pos[i]; }
int sweep_n_keys(const ml_sweep *s) { return s->n_keys; }
const char *sweep_key(const ml_sweep *s, int k) { return s->keys[k].dotted; }
const char *sweep_resolved(const ml_sweep *s) { return s->resolved; }
const char *sweep_resolved_hash(const ml_sweep *s) { return s->resolved_hash; }
const char *sweep_source(const ml_sweep *s) { return spec_doc_source(s->doc); }
const char *sweep_file(const ml_sweep *s) { return spec_doc_file(s->doc); }

int sweep_config(const ml_sweep *s, long i, run_config *out, ml_error *e) {
    if (i < 0 || i >= s->n_runs) return ML_FAIL(e, "sweep %s: no run %ld", s->name, i);
    spec_override ov[MAX_SWEPT];
    int nk = overrides(s, s->pos[i], ov);
    if (spec_doc_config(s->doc, ov, nk, out)) {
        /* Checked when loaded: only memory can fail here. */
        spec_doc_finish(s->doc, e);
        return -1;
    }
    if (!out->name[0]) snprintf(out->name, sizeof out->name, "%s", s->name);
    return 0;
}

void sweep_describe(const ml_sweep *s, long i, char *buf, size_t cap) {
    run_config c;
    ml_error e;
    size_t used = 0;
    buf[0] = '\0';
    if (s->n_keys == 0) {
        snprintf(buf, cap, "(single run)");
        return;
    }
    if (sweep_config(s, i, &c, &e)) {
        snprintf(buf, cap, "?");
        return;
    }
    for (int k = 0; k < s->n_keys && used < cap; k++) {
        char v[600];
        if (config_value(&c, s->keys[k].dotted, v, sizeof v)) snprintf(v, sizeof v, "?");
        /* Strings without their JSON quotes: these are names. */
        size_t n = strlen(v);
        const char *shown = v;
        if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
            v[n - 1] = '\0';
            shown = v + 1;
        }
        used += (size_t)snprintf(buf + used, cap - used, "%s%s=%s", k ? " " : "",
                                 s->keys[k].dotted, shown);
    }
}
