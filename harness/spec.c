/* spec.c: YAML experiment specs -> spec documents -> run_config (see spec.h).
 *
 * Reads YAML with libyaml's document API into a small tree of its own
 * (spec_node: every node keeps the file, line and column it came from, so
 * that a tree merged from several files still points at the right one),
 * merges the layers (base chain, file, preset, command-line overrides), and
 * checks every key and value of a run against the schema tables (config.c,
 * the task table, the mixer table), then the cross-key constraints. It
 * decides nothing about what a value means; canonical JSON and hashing live
 * in config.c, value parsing in schema.c, the sweep section in sweep.c.
 *
 * Shape of a run: a mapping with the keys name, description (text), task,
 * model, train, eval (mappings). `task: {name: ...}` selects the task
 * (default mqar) and `model: {mixer: ...}` the mixer (default softmax); the
 * selector is read first whatever its place in the mapping, its defaults are
 * applied, and only then are the other keys of the section checked against
 * its table. A sweep supplies values for some keys of each run as overrides
 * (spec_override): an override replaces the key's value where the key is
 * written, or is added to its section.
 *
 * Error scheme. Loading and checking do not stop at the first problem: up to
 * MAX_PROBLEMS distinct problems are kept (a problem found again, in another
 * run of a sweep, is recorded once), sorted by file (the spec first, then its
 * bases, then the overrides), then position (problems with no position
 * last), and returned in one ml_error:
 *   e->file, e->line, e->column   the first problem's position (1-based);
 *   e->msg                        the first problem's message, then one line
 *                                 per further problem, each formatted
 *                                 "file:line:column: message" (or
 *                                 "file: message" when it has no position).
 * So ml_error_format(e) prints every problem as "file:line:column: message",
 * one per line, and a caller that only wants the first reads up to the first
 * '\n' of e->msg. Type, range and missing-value problems point at the value
 * (a missing value at its key); unknown and duplicate keys at the key;
 * cross-key problems (task and mixer validate) at the key the validate
 * message names, "key: ..." by convention, or at the section when that key
 * was not written. Messages name keys as "section.key". A file that cannot
 * be read is one problem with no line (e->line = 0). On failure *out is left
 * untouched. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "config.h"
#include "gemm_bf16.h"
#include "mixer.h"
#include "spec.h"
#include "task.h"

#define MAX_PROBLEMS 16
#define MAX_WARNINGS 8
#define PROBLEM_MSG 400
#define PROBLEM_CONTEXT 96
#define MAX_KEYS 256                /* key positions remembered for cross checks */
#define MAX_SPEC_BYTES (1L << 20)   /* a spec is a page of text, not a data set */
#define MAX_DEPTH 48                /* nesting of YAML collections */
#define MAX_NODES 200000L           /* nodes per document, aliases expanded */
#define MAX_BASE_DEPTH 8            /* length of a base chain */
#define MAX_FILES 64                /* files and --set arguments of a document */
#define MAX_PINNED 64               /* keys pinned by --set */
#define DROPPED_SLOTS 1024          /* signatures of problems beyond MAX_PROBLEMS */
#define MAX_OVERRIDES 256           /* overrides of one run (swept keys) */

enum { SEC_TOP, SEC_TASK, SEC_MODEL, SEC_TRAIN, SEC_EVAL, SEC_COUNT };
static const char *const section_names[SEC_COUNT] = {"", "task", "model", "train", "eval"};
/* Where a key was found, for messages. */
static const char *const section_where[SEC_COUNT] = {"at the top level", "in task", "in model",
                                                     "in train", "in eval"};

/* Every key the top level accepts, for suggestions. */
static const ml_field top_keys[] = {
    {.key = "name"},  {.key = "description"}, {.key = "task"},  {.key = "model"},
    {.key = "train"}, {.key = "eval"},        {.key = "sweep"}, {.key = "presets"},
    {.key = "base"},  {.key = NULL}};
/* The keys a preset may hold. */
static const ml_field preset_keys[] = {
    {.key = "name"},  {.key = "description"}, {.key = "task"}, {.key = "model"},
    {.key = "train"}, {.key = "eval"},        {.key = "sweep"}, {.key = NULL}};
/* The sections of a dotted path in spec_set. */
static const ml_field section_keys[] = {
    {.key = "task"}, {.key = "model"}, {.key = "train"}, {.key = "eval"}, {.key = NULL}};
/* The label fields of the top level. */
static const ml_field label_fields[] = {
    {.key = "name", .type = FT_STRING, .offset = offsetof(run_config, name), .def = ""},
    {.key = "description", .type = FT_STRING, .offset = offsetof(run_config, description),
     .def = ""},
    {.key = NULL}};

/* ------------------------------------------------------------------------ */
/* Cross-key checks, shared by the parser and spec_validate.                  */

enum { CROSS_TASK, CROSS_MIXER, CROSS_TRAIN, CROSS_COUNT };
static const int cross_section[CROSS_COUNT] = {SEC_TASK, SEC_MODEL, SEC_TRAIN};

/* cross_check: one family of cross-key constraints on cfg. Returns 0, or -1
 * with the raw message (by convention "key: ...") in e (not NULL). */
static int cross_check(const run_config *cfg, int which, ml_error *e) {
    int rc = 0;
    e->msg[0] = '\0';
    if (which == CROSS_TASK) {
        const ml_task *t = task_find(cfg->task);
        if (!t) return ML_FAIL(e, "name: unknown task '%s'", cfg->task);
        if (t->validate) rc = t->validate(&cfg->task_cfg, e);
    } else if (which == CROSS_MIXER) {
        const ml_mixer *m = mixer_find(cfg->model.mixer);
        if (!m) return ML_FAIL(e, "mixer: unknown mixer '%s'", cfg->model.mixer);
        if (m->validate) rc = m->validate(&cfg->model.mixer_cfg, cfg->model.d_model, e);
        const char *key = !rc && m->needs_context ? m->needs_context(&cfg->model.mixer_cfg)
                                                  : NULL;
        const ml_task *t = key ? task_find(cfg->task) : NULL;
        if (t && (!t->context_len || t->context_len(&cfg->task_cfg) < 0))
            return ML_FAIL(e, "%s: this setting of mixer %s needs a task with a context "
                           "boundary, and task %s declares none", key, m->name, t->name);
    } else if (cfg->train.lr_min > cfg->train.lr) {
        return ML_FAIL(e, "lr_min: %g is larger than lr %g", cfg->train.lr_min, cfg->train.lr);
    } else if (cfg->train.matmul == MATMUL_BF16 && !gemm_bf16_available()) {
        return ML_FAIL(e, "matmul: bf16 needs a CPU with AVX-512 BF16 and memlab built on "
                          "one (-march=native); this build or CPU has none");
    }
    /* A validate that fails without saying why must not print garbage. */
    if (rc && !e->msg[0]) ML_FAIL(e, "failed cross-key validation without a message");
    return rc ? -1 : 0;
}

/* message_key: the key a cross-check message starts with ("heads: ..."),
 * copied into key[cap]; "" when the message does not follow the convention. */
static void message_key(const char *msg, char *key, size_t cap) {
    size_t n = strspn(msg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
    key[0] = '\0';
    if (n > 0 && n < cap && msg[n] == ':' && msg[n + 1] == ' ') {
        memcpy(key, msg, n);
        key[n] = '\0';
    }
}

/* qualify: "section.key: rest" from a "key: rest" cross-check message, so that
 * every message names its key the same way. */
static void qualify(int section, const char *msg, char *out, size_t cap) {
    char key[64];
    message_key(msg, key, sizeof key);
    if (key[0] && section != SEC_TOP)
        snprintf(out, cap, "%s.%s", section_names[section], msg);
    else if (section != SEC_TOP)
        snprintf(out, cap, "%s: %s", section_names[section], msg);
    else
        snprintf(out, cap, "%s", msg);
}

/* mixer_caution: the mixer's caution for cfg as it says it ("key: ..."),
 * into raw[PROBLEM_MSG]; 1 when there is one. */
static int mixer_caution(const run_config *cfg, char *raw) {
    const ml_mixer *m = mixer_find(cfg->model.mixer);
    return m && m->caution &&
           m->caution(&cfg->model.mixer_cfg, cfg->model.d_model, raw, PROBLEM_MSG);
}

int spec_caution(const run_config *cfg, char *msg, size_t cap) {
    char raw[PROBLEM_MSG];
    if (!mixer_caution(cfg, raw)) return 0;
    qualify(SEC_MODEL, raw, msg, cap);
    return 1;
}

int spec_validate(const run_config *cfg, ml_error *e) {
    for (int c = 0; c < CROSS_COUNT; c++) {
        ml_error sub;
        if (cross_check(cfg, c, &sub)) {
            char msg[sizeof sub.msg];
            qualify(cross_section[c], sub.msg, msg, sizeof msg);
            return ML_FAIL(e, "%s", msg);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Key lookups and messages shared by the parser and spec_set.               */

/* name_list: the names of the task table or the mixer table, comma-separated. */
static void name_list(int mixers, char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; used < cap; i++) {
        const char *n = mixers ? (ml_mixers[i] ? ml_mixers[i]->name : NULL)
                               : (ml_tasks[i] ? ml_tasks[i]->name : NULL);
        if (!n) break;
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", n);
    }
}

/* model_field: the field named key in the model section, from the fixed
 * table first and then the mixer's (NULL mixer: fixed table only), and in
 * *obj the struct it lives in. */
static const ml_field *model_field(model_config *m, const ml_mixer *mixer, const char *key,
                                   void **obj) {
    const ml_field *f = schema_find(model_fields, key);
    if (f) {
        *obj = m;
        return f;
    }
    if (mixer && (f = schema_find(mixer->fields, key))) {
        *obj = &m->mixer_cfg;
        return f;
    }
    return NULL;
}

/* unknown_key: the message for key not found in section, whose keys are the
 * tables a and b (b may be NULL). In the model section a key that
 * belongs to another mixer says so; otherwise the closest key is suggested. */
static void unknown_key(char *buf, size_t cap, const char *key, int section, const ml_field *a,
                        const ml_field *b, const ml_mixer *mixer) {
    const char *where = section_where[section];
    for (int i = 0; mixer && ml_mixers[i]; i++) {
        if (ml_mixers[i] != mixer && schema_find(ml_mixers[i]->fields, key)) {
            snprintf(buf, cap, "unknown key '%s' %s: mixer '%s' has no such key (it belongs "
                     "to mixer '%s')", key, where, mixer->name, ml_mixers[i]->name);
            return;
        }
    }
    const char *ca = schema_closest(a, key), *cb = b ? schema_closest(b, key) : NULL;
    const char *best = ca;
    if (cb && (!ca || schema_edit_distance(key, cb) < schema_edit_distance(key, ca))) best = cb;
    if (best)
        snprintf(buf, cap, "unknown key '%s' %s; did you mean '%s'?", key, where, best);
    else
        snprintf(buf, cap, "unknown key '%s' %s", key, where);
}

/* type_hint: what a field expects, for "missing value" messages. */
static const char *type_hint(const ml_field *f) {
    switch (f->type) {
    case FT_INT:
    case FT_LONG: return "an integer";
    case FT_REAL: return "a number";
    case FT_BOOL: return "true or false";
    case FT_ENUM: return "one of its choices";
    case FT_STRING: return "text";
    }
    return "a value";
}

/* ------------------------------------------------------------------------ */
/* Documents: memory, problems.                                               */

/* Nodes and strings of a document come from one arena, freed at once. */
typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    max_align_t data[];
} arena_block;

typedef struct spec_problem {
    const char *file; /* interned: compared by pointer */
    int line, column; /* 1-based, 0 = no position */
    int order;        /* discovery order, to keep the sort stable */
    char msg[PROBLEM_MSG];
    char context[PROBLEM_CONTEXT];
} spec_problem;

struct spec_doc {
    arena_block *arena;
    int oom;                        /* an allocation failed: the document is unusable */
    const char *files[MAX_FILES];   /* interned names; index = sort order of problems */
    int n_files;
    const char *main_file;
    char *source;                   /* the main file's text (malloc'd) */
    int allow_sweep, no_base;
    spec_node *layers;              /* base chain and file, merged; NULL when unusable */
    spec_node *sets;                /* command-line overrides, merged; NULL when none */
    const char *pinned[MAX_PINNED]; /* "section.key" given by the overrides */
    int n_pinned;
    spec_node *root;                /* the selected variant */
    long n_nodes;
    int too_big;                    /* MAX_NODES or MAX_DEPTH exceeded (reported once) */
    spec_problem problems[MAX_PROBLEMS];
    int n_problems, n_reports;
    uint64_t dropped[DROPPED_SLOTS]; /* signatures of problems beyond the cap, 0 = free */
    int n_dropped;
    char context[PROBLEM_CONTEXT];
    spec_problem warnings[MAX_WARNINGS]; /* mixers' cautions, each message once */
    int n_warnings, n_warn_dropped;
};

/* arena_alloc: n zeroed bytes, aligned for any type; NULL (and d->oom) when
 * memory runs out. */
static void *arena_alloc(spec_doc *d, size_t n) {
    const size_t unit = sizeof(max_align_t);
    n = (n + unit - 1) / unit * unit;
    if (n == 0) n = unit;
    arena_block *b = d->arena;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        b = malloc(sizeof *b + cap);
        if (!b) {
            d->oom = 1;
            return NULL;
        }
        b->cap = cap;
        b->used = 0;
        b->next = d->arena;
        d->arena = b;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    memset(p, 0, n);
    return p;
}

/* arena_strndup: a NUL-terminated copy of s[n] (which may hold NULs). */
static char *arena_strndup(spec_doc *d, const char *s, size_t n) {
    char *p = arena_alloc(d, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* intern_file: the document's copy of a file name, added to its file list
 * (problems sort by that list). NULL when out of memory. */
static const char *intern_file(spec_doc *d, const char *name) {
    for (int i = 0; i < d->n_files; i++)
        if (!strcmp(d->files[i], name)) return d->files[i];
    const char *copy = arena_strndup(d, name, strlen(name));
    if (copy && d->n_files < MAX_FILES) d->files[d->n_files++] = copy;
    return copy;
}

static int file_index(const spec_doc *d, const char *file) {
    for (int i = 0; i < d->n_files; i++)
        if (d->files[i] == file) return i;
    return MAX_FILES;
}

/* signature: a 64-bit FNV-1a hash of a problem, never 0. */
static uint64_t signature(const char *file, int line, int column, const char *msg) {
    uint64_t h = 1469598103934665603ull;
    const char *parts[2] = {file ? file : "", msg};
    for (int k = 0; k < 2; k++)
        for (const unsigned char *s = (const unsigned char *)parts[k]; *s; s++)
            h = (h ^ *s) * 1099511628211ull;
    h = (h ^ (uint64_t)(unsigned)line) * 1099511628211ull;
    h = (h ^ (uint64_t)(unsigned)column) * 1099511628211ull;
    return h ? h : 1;
}

/* report_at: record a problem at (file, line, column) (line 0 = none). */
static void report_at(spec_doc *d, const char *file, int line, int column, const char *fmt,
                      ...) __attribute__((format(printf, 5, 6)));
static void vreport_at(spec_doc *d, const char *file, int line, int column, const char *fmt,
                       va_list ap) {
    char msg[PROBLEM_MSG];
    vsnprintf(msg, sizeof msg, fmt, ap);
    d->n_reports++;
    if (!line) column = 0;
    for (int i = 0; i < d->n_problems; i++) {
        spec_problem *q = &d->problems[i];
        if (q->file == file && q->line == line && q->column == column && !strcmp(q->msg, msg)) {
            if (!d->context[0]) q->context[0] = '\0';
            return;
        }
    }
    if (d->n_problems == MAX_PROBLEMS) {
        uint64_t sig = signature(file, line, column, msg);
        for (size_t k = sig % DROPPED_SLOTS, probes = 0; probes < DROPPED_SLOTS;
             k = (k + 1) % DROPPED_SLOTS, probes++) {
            if (d->dropped[k] == sig) return;
            if (!d->dropped[k]) {
                d->dropped[k] = sig;
                break;
            }
        }
        d->n_dropped++;
        return;
    }
    spec_problem *q = &d->problems[d->n_problems];
    q->file = file;
    q->line = line;
    q->column = column;
    q->order = d->n_problems++;
    memcpy(q->msg, msg, sizeof msg);
    snprintf(q->context, sizeof q->context, "%s", d->context);
}
static void report_at(spec_doc *d, const char *file, int line, int column, const char *fmt,
                      ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport_at(d, file, line, column, fmt, ap);
    va_end(ap);
}

void spec_doc_report(spec_doc *d, const spec_node *at, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (at)
        vreport_at(d, at->file, at->line, at->column, fmt, ap);
    else
        vreport_at(d, d->main_file, 0, 0, fmt, ap);
    va_end(ap);
}

/* warn_at: record a warning at node `at` (NULL: no position). A message
 * already recorded (by any run of a sweep) is not recorded again. */
static void warn_at(spec_doc *d, const spec_node *at, const char *msg) {
    for (int i = 0; i < d->n_warnings; i++)
        if (!strcmp(d->warnings[i].msg, msg)) return;
    if (d->n_warnings == MAX_WARNINGS) {
        d->n_warn_dropped++;
        return;
    }
    spec_problem *q = &d->warnings[d->n_warnings];
    q->file = at ? at->file : d->main_file;
    q->line = at ? at->line : 0;
    q->column = at ? at->column : 0;
    q->order = d->n_warnings++;
    snprintf(q->msg, sizeof q->msg, "%s", msg);
    snprintf(q->context, sizeof q->context, "%s", d->context);
}

void spec_doc_context(spec_doc *d, const char *context) {
    snprintf(d->context, sizeof d->context, "%s", context ? context : "");
}

int spec_doc_failed(const spec_doc *d) { return d->n_reports > 0 || d->oom; }

/* problem_before: ordering of problems: by file, positionless last, then by
 * position, then in discovery order. */
static int problem_before(const spec_doc *d, const spec_problem *a, const spec_problem *b) {
    long la = a->line ? a->line : 0x7fffffff, lb = b->line ? b->line : 0x7fffffff;
    if ((la == 0x7fffffff) != (lb == 0x7fffffff)) return la < lb;
    int fa = file_index(d, a->file), fb = file_index(d, b->file);
    if (fa != fb) return fa < fb;
    if (la != lb) return la < lb;
    if (a->column != b->column) return a->column < b->column;
    return a->order < b->order;
}

/* problem_text: a problem's message with its context. */
static void problem_text(const spec_problem *q, char *buf, size_t cap) {
    if (q->context[0])
        snprintf(buf, cap, "%s (%s)", q->msg, q->context);
    else
        snprintf(buf, cap, "%s", q->msg);
}

int spec_doc_warnings(const spec_doc *d, char *buf, size_t cap) {
    size_t used = 0;
    if (cap) buf[0] = '\0';
    for (int i = 0; i < d->n_warnings && used < cap; i++) {
        const spec_problem *q = &d->warnings[i];
        char text[PROBLEM_MSG + PROBLEM_CONTEXT + 8];
        problem_text(q, text, sizeof text);
        if (q->line)
            used += (size_t)snprintf(buf + used, cap - used, "%.500s:%d:%d: warning: %s\n",
                                     q->file, q->line, q->column, text);
        else
            used += (size_t)snprintf(buf + used, cap - used, "%.500s: warning: %s\n", q->file,
                                     text);
    }
    if (d->n_warn_dropped && used < cap)
        snprintf(buf + used, cap - used, "%.400s: warning: %d more warning%s not shown\n",
                 d->main_file, d->n_warn_dropped, d->n_warn_dropped == 1 ? "" : "s");
    return d->n_warnings;
}

int spec_doc_finish(const spec_doc *d, ml_error *e) {
    if (d->oom) return ML_FAIL(e, "out of memory reading the spec");
    if (!d->n_problems) return 0;
    spec_problem sorted[MAX_PROBLEMS];
    int n = d->n_problems;
    memcpy(sorted, d->problems, sizeof sorted[0] * (size_t)n);
    for (int i = 1; i < n; i++) {
        spec_problem tmp = sorted[i];
        int j = i;
        for (; j > 0 && problem_before(d, &tmp, &sorted[j - 1]); j--) sorted[j] = sorted[j - 1];
        sorted[j] = tmp;
    }
    char text[PROBLEM_MSG + PROBLEM_CONTEXT + 8];
    problem_text(&sorted[0], text, sizeof text);
    ML_FAIL_AT(e, sorted[0].file, sorted[0].line, sorted[0].column, "%s", text);
    if (!e) return -1;
    /* Leave room for the closing "N more problems" line. */
    size_t cap = sizeof e->msg - 80, used = strlen(e->msg);
    int shown = 1;
    for (; shown < n; shown++) {
        const spec_problem *q = &sorted[shown];
        char line[sizeof text + 600];
        problem_text(q, text, sizeof text);
        if (q->line)
            snprintf(line, sizeof line, "\n%.500s:%d:%d: %s", q->file, q->line, q->column, text);
        else
            snprintf(line, sizeof line, "\n%.500s: %s", q->file, text);
        size_t len = strlen(line);
        if (used + len >= cap) break;
        memcpy(e->msg + used, line, len + 1);
        used += len;
    }
    int more = n - shown + d->n_dropped;
    if (more > 0)
        snprintf(e->msg + used, sizeof e->msg - used, "\n%.400s: %d more problem%s not shown",
                 d->main_file, more, more == 1 ? "" : "s");
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Nodes.                                                                     */

int spec_node_is_null(const spec_node *n) {
    if (!n || n->kind != SPEC_SCALAR || n->quoted) return 0;
    const char *v = n->text;
    return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") ||
           !strcmp(v, "NULL");
}

const char *spec_node_kind(const spec_node *n) {
    return n->kind == SPEC_MAP ? "a mapping" : n->kind == SPEC_LIST ? "a list" : "a single value";
}

/* map_index: the index of key in mapping map, or -1 (also when map is not
 * a mapping). */
static int map_index(const spec_node *map, const char *key) {
    if (!map || map->kind != SPEC_MAP) return -1;
    for (int i = 0; i < map->n; i++)
        if (!strcmp(map->keys[i]->text, key)) return i;
    return -1;
}

/* map_val: the value of key in map (mutable, for building new trees), or
 * NULL. */
static spec_node *map_val(spec_node *map, const char *key) {
    int i = map_index(map, key);
    return i < 0 ? NULL : map->vals[i];
}

const spec_node *spec_map_get(const spec_node *map, const char *key, const spec_node **key_out) {
    int i = map_index(map, key);
    if (i < 0) return NULL;
    if (key_out) *key_out = map->keys[i];
    return map->vals[i];
}

/* new_node: a node of kind at (file, line, column), with room for n
 * children (two arrays for a mapping). */
static spec_node *new_node(spec_doc *d, spec_kind kind, const char *file, int line, int column,
                           int n) {
    spec_node *x = arena_alloc(d, sizeof *x);
    if (!x) return NULL;
    x->kind = kind;
    x->file = file;
    x->line = line;
    x->column = column;
    x->text = "";
    if (kind != SPEC_SCALAR && n > 0) {
        x->vals = arena_alloc(d, sizeof *x->vals * (size_t)n);
        if (kind == SPEC_MAP) x->keys = arena_alloc(d, sizeof *x->keys * (size_t)n);
        if (!x->vals || (kind == SPEC_MAP && !x->keys)) return NULL;
    }
    return x;
}

/* new_scalar: a plain scalar node holding text[len]. */
static spec_node *new_scalar(spec_doc *d, const char *file, int line, int column,
                             const char *text, size_t len) {
    spec_node *x = new_node(d, SPEC_SCALAR, file, line, column, 0);
    if (!x) return NULL;
    char *t = arena_strndup(d, text, len);
    if (!t) return NULL;
    x->text = t;
    x->len = len;
    return x;
}

const spec_node *spec_doc_scalar(spec_doc *d, const spec_node *at, const char *text) {
    return new_scalar(d, at ? at->file : d->main_file, at ? at->line : 0, at ? at->column : 0,
                      text, strlen(text));
}

/* ------------------------------------------------------------------------ */
/* YAML text -> nodes.                                                        */

typedef struct yaml_src {
    spec_doc *d;
    const char *file;  /* interned */
    const char *text;
    size_t len;
    int col_offset;    /* columns before the text on its first line (--set values) */
    yaml_document_t *ydoc;
} yaml_src;

/* position_of: 1-based line and column of byte offset off of the text;
 * columns count characters, as libyaml's marks do. */
static void position_of(const yaml_src *s, size_t off, int *line, int *column) {
    int l = 1, c = 1;
    for (size_t i = 0; i < off && i < s->len; i++) {
        unsigned char ch = (unsigned char)s->text[i];
        if (ch == '\n') l++, c = 1;
        else if ((ch & 0xC0) != 0x80) c++;
    }
    *line = l;
    *column = c + (l == 1 ? s->col_offset : 0);
}

/* byte_at: the byte at 0-based (line, column) of the text, or -1. */
static int byte_at(const yaml_src *s, size_t line, size_t column) {
    size_t i = 0;
    for (size_t l = 0; l < line && i < s->len; i++)
        if (s->text[i] == '\n') l++;
    for (size_t c = 0; i < s->len && s->text[i] != '\n'; i++) {
        if (((unsigned char)s->text[i] & 0xC0) == 0x80) continue;
        if (c++ == column) return (unsigned char)s->text[i];
    }
    return -1;
}

/* mark_line / mark_column: a libyaml mark (0-based) as a 1-based position. */
static int mark_line(const yaml_mark_t *m) { return (int)m->line + 1; }
static int mark_column(const yaml_src *s, const yaml_mark_t *m) {
    return (int)m->column + 1 + (m->line == 0 ? s->col_offset : 0);
}

/* report_yaml_error: libyaml's problem, at its position. Reader errors
 * (invalid UTF-8, control characters: a binary file) carry a byte offset
 * rather than a mark. */
static void report_yaml_error(const yaml_src *s, const yaml_parser_t *y) {
    const char *problem = y->problem ? y->problem : "unknown problem";
    if (y->error == YAML_READER_ERROR) {
        int line, column;
        position_of(s, y->problem_offset, &line, &column);
        report_at(s->d, s->file, line, column,
                  "not a YAML text file: %s (byte 0x%02x at offset %zu)", problem,
                  (unsigned)y->problem_value & 0xFFu, y->problem_offset);
    } else if (y->error == YAML_SCANNER_ERROR || y->error == YAML_PARSER_ERROR ||
               y->error == YAML_COMPOSER_ERROR) {
        const yaml_mark_t *m = &y->problem_mark, *cm = &y->context_mark;
        int tab = byte_at(s, m->line, m->column) == '\t';
        char context[160] = "";
        if (y->context && (cm->line != m->line || cm->column != m->column))
            snprintf(context, sizeof context, " (%s started at line %d, column %d)", y->context,
                     mark_line(cm), mark_column(s, cm));
        else if (y->context)
            snprintf(context, sizeof context, " (%s)", y->context);
        report_at(s->d, s->file, mark_line(m), mark_column(s, m), "YAML syntax error: %s%s%s",
                  problem, context, tab ? "; tabs cannot be used for indentation in YAML" : "");
    } else {
        report_at(s->d, s->file, 0, 0, "YAML error: %s", problem);
    }
}

/* convert: the libyaml node n as a spec_node. `path` names where n sits
 * ("" for the root, "train", "sweep.grid"), for messages. Duplicate and
 * non-scalar keys are reported and their pair dropped (the mapping is
 * marked bad). NULL when the document is too big or memory runs out. */
static spec_node *convert(yaml_src *s, yaml_node_t *n, int depth, const char *path) {
    spec_doc *d = s->d;
    if (++d->n_nodes > MAX_NODES || depth > MAX_DEPTH) {
        if (!d->too_big)
            report_at(d, s->file, mark_line(&n->start_mark), mark_column(s, &n->start_mark),
                      "the spec is too large: more than %ld values or %d levels of nesting "
                      "(after expanding aliases)", MAX_NODES, MAX_DEPTH);
        d->too_big = 1;
        return NULL;
    }
    int line = mark_line(&n->start_mark), column = mark_column(s, &n->start_mark);
    if (n->type == YAML_SCALAR_NODE) {
        spec_node *x = new_scalar(d, s->file, line, column, (const char *)n->data.scalar.value,
                                  n->data.scalar.length);
        if (x) x->quoted = n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
        return x;
    }
    char where[300];
    if (path[0]) snprintf(where, sizeof where, "in %s", path);
    else snprintf(where, sizeof where, "at the top level");
    if (n->type == YAML_SEQUENCE_NODE) {
        int count = (int)(n->data.sequence.items.top - n->data.sequence.items.start);
        spec_node *x = new_node(d, SPEC_LIST, s->file, line, column, count);
        if (!x) return NULL;
        for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
             it++) {
            spec_node *c = convert(s, yaml_document_get_node(s->ydoc, *it), depth + 1, path);
            if (!c) return NULL;
            x->vals[x->n++] = c;
        }
        return x;
    }
    int count = (int)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    spec_node *x = new_node(d, SPEC_MAP, s->file, line, column, count);
    if (!x) return NULL;
    for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < n->data.mapping.pairs.top; q++) {
        yaml_node_t *k = yaml_document_get_node(s->ydoc, q->key);
        if (k->type != YAML_SCALAR_NODE) {
            report_at(d, s->file, mark_line(&k->start_mark), mark_column(s, &k->start_mark),
                      "keys must be plain names, found %s %s",
                      k->type == YAML_MAPPING_NODE ? "a mapping" : "a list", where);
            x->bad = 1;
            continue;
        }
        const char *kt = (const char *)k->data.scalar.value;
        int dup = -1;
        for (int i = 0; i < x->n && dup < 0; i++)
            if (!strcmp(x->keys[i]->text, kt)) dup = i;
        if (dup >= 0) {
            report_at(d, s->file, mark_line(&k->start_mark), mark_column(s, &k->start_mark),
                      "duplicate key '%s' %s (first given at line %d)", kt, where,
                      x->keys[dup]->line);
            x->bad = 1;
            continue;
        }
        char child[300];
        if (path[0]) snprintf(child, sizeof child, "%s.%s", path, kt);
        else snprintf(child, sizeof child, "%s", kt);
        spec_node *kn = convert(s, k, depth + 1, child);
        spec_node *vn =
            kn ? convert(s, yaml_document_get_node(s->ydoc, q->value), depth + 1, child) : NULL;
        if (!vn) return NULL;
        x->keys[x->n] = kn;
        x->vals[x->n++] = vn;
    }
    return x;
}

/* load_yaml: parse text[len] (one YAML document) into nodes, reporting
 * syntax problems. *empty is set when the text holds no document (nothing
 * is reported for that: the caller knows what an empty text means).
 * Returns the root, or NULL. */
static spec_node *load_yaml(spec_doc *d, const char *file, const char *text, size_t len,
                            int col_offset, int *empty) {
    yaml_parser_t parser;
    yaml_document_t ydoc, extra;
    yaml_src s = {.d = d, .file = file, .text = text, .len = len, .col_offset = col_offset,
                  .ydoc = &ydoc};
    spec_node *root = NULL;
    *empty = 0;
    if (!yaml_parser_initialize(&parser)) {
        d->oom = 1;
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &ydoc)) {
        report_yaml_error(&s, &parser);
        yaml_parser_delete(&parser);
        return NULL;
    }
    yaml_node_t *yroot = yaml_document_get_root_node(&ydoc);
    if (!yroot) {
        *empty = 1;
    } else {
        if (!yaml_parser_load(&parser, &extra)) {
            report_yaml_error(&s, &parser);
        } else {
            yaml_node_t *r2 = yaml_document_get_root_node(&extra);
            if (r2)
                report_at(d, file, mark_line(&r2->start_mark), mark_column(&s, &r2->start_mark),
                          "a spec holds one YAML document; this is a second one");
            yaml_document_delete(&extra);
        }
        root = convert(&s, yroot, 0, "");
    }
    yaml_document_delete(&ydoc);
    yaml_parser_delete(&parser);
    return root;
}

/* read_text: the whole file at path into a malloc'd, NUL-terminated buffer
 * (*len bytes). Returns 0, or -1 with the reason in why[cap]. Reads by
 * chunks rather than by size: a spec may come from a pipe (process
 * substitution), and a directory fails here with EISDIR. */
static int read_text(const char *path, char **out, size_t *out_len, char *why, size_t cap_why) {
    char *buf = NULL;
    size_t len = 0, cap = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, cap_why, "%s", strerror(errno));
        return -1;
    }
    for (;;) {
        if (len == cap) {
            /* One byte beyond the limit tells a spec of exactly the limit
             * from a larger file. */
            if (cap == (size_t)MAX_SPEC_BYTES + 1) {
                snprintf(why, cap_why, "file is larger than %ld bytes; it cannot be a spec",
                         MAX_SPEC_BYTES);
                goto fail;
            }
            size_t ncap = cap ? 2 * cap : 4096;
            if (ncap > (size_t)MAX_SPEC_BYTES + 1) ncap = (size_t)MAX_SPEC_BYTES + 1;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                snprintf(why, cap_why, "out of memory reading the spec");
                goto fail;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        snprintf(why, cap_why, "%s", strerror(errno ? errno : EIO));
        goto fail;
    }
    fclose(f);
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
fail:
    free(buf);
    fclose(f);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Layers.                                                                    */

enum { MERGE_DEEP, MERGE_SHALLOW };

/* merge: over laid on base. Two mappings merge key by key (base order, new
 * keys appended; a key's node comes from the last layer that wrote it);
 * children of a MERGE_SHALLOW merge are replaced whole. Anything else:
 * over. Inside the top level, `presets` merges shallowly (a preset is
 * replaced whole) and so does sweep.zip (replaced whole). */
static spec_node *merge(spec_doc *d, spec_node *base, spec_node *over, int mode,
                        const char *path) {
    if (!base) return over;
    if (!over) return base;
    if (base->kind != SPEC_MAP || over->kind != SPEC_MAP) return over;
    spec_node *x = new_node(d, SPEC_MAP, over->file, over->line, over->column, base->n + over->n);
    if (!x) return NULL;
    x->bad = base->bad || over->bad;
    for (int i = 0; i < base->n; i++) {
        int oi = map_index(over, base->keys[i]->text);
        spec_node *ov = oi < 0 ? NULL : over->vals[oi];
        spec_node *v = base->vals[i];
        if (ov) {
            const char *k = base->keys[i]->text;
            int child_mode = MERGE_DEEP;
            if (!strcmp(path, "") && !strcmp(k, "presets")) child_mode = MERGE_SHALLOW;
            int replace = mode == MERGE_SHALLOW || (!strcmp(path, "sweep") && !strcmp(k, "zip"));
            char child[64];
            snprintf(child, sizeof child, "%s", path[0] ? "-" : k);
            v = replace ? ov : merge(d, v, ov, child_mode, child);
            if (!v) return NULL;
        }
        x->keys[x->n] = ov ? over->keys[oi] : base->keys[i];
        x->vals[x->n++] = v;
    }
    for (int i = 0; i < over->n; i++) {
        if (spec_map_get(base, over->keys[i]->text, NULL)) continue;
        x->keys[x->n] = over->keys[i];
        x->vals[x->n++] = over->vals[i];
    }
    return x;
}

/* without_key: map without the pair of key (the same node when absent). */
static spec_node *without_key(spec_doc *d, spec_node *map, const char *key) {
    if (!map || map->kind != SPEC_MAP || !spec_map_get(map, key, NULL)) return map;
    spec_node *x = new_node(d, SPEC_MAP, map->file, map->line, map->column, map->n);
    if (!x) return NULL;
    x->bad = map->bad;
    for (int i = 0; i < map->n; i++) {
        if (!strcmp(map->keys[i]->text, key)) continue;
        x->keys[x->n] = map->keys[i];
        x->vals[x->n++] = map->vals[i];
    }
    return x;
}

/* with_value: map with the value of key replaced by v (v NULL: the pair
 * removed). */
static spec_node *with_value(spec_doc *d, spec_node *map, const char *key, spec_node *v) {
    if (!v) return without_key(d, map, key);
    spec_node *x = new_node(d, SPEC_MAP, map->file, map->line, map->column, map->n);
    if (!x) return NULL;
    x->bad = map->bad;
    for (int i = 0; i < map->n; i++) {
        x->keys[x->n] = map->keys[i];
        x->vals[x->n++] = strcmp(map->keys[i]->text, key) ? map->vals[i] : v;
    }
    return x;
}

/* dir_of: the directory part of path ("" when it has none) into buf. */
static void dir_of(const char *path, char *buf, size_t cap) {
    const char *slash = strrchr(path, '/');
    if (!slash) buf[0] = '\0';
    else snprintf(buf, cap, "%.*s", (int)(slash - path + 1), path);
}

/* load_layers: the layer of file (its text given) merged over its base
 * chain. chain[depth] holds the real paths of the files above it, to refuse
 * cycles. Returns the merged root (without `base`), or NULL when nothing
 * usable was read (problems reported). */
static spec_node *load_layers(spec_doc *d, const char *file, const char *text, size_t len,
                              char **chain, int depth) {
    int empty = 0;
    spec_node *root = load_yaml(d, file, text, len, 0, &empty);
    if (empty) {
        report_at(d, file, 1, 1, "the spec is empty: expected a mapping with the sections name, "
                  "description, task, model, train, eval");
        return NULL;
    }
    if (!root) return NULL;
    if (root->kind != SPEC_MAP) {
        if (depth > 0)
            report_at(d, file, root->line, root->column,
                      "a base spec must be a mapping with the sections name, description, "
                      "task, model, train, eval; got %s", spec_node_kind(root));
        return root;
    }
    const spec_node *bkey = NULL;
    const spec_node *bval = spec_map_get(root, "base", &bkey);
    if (!bval) return root;
    spec_node *layer = without_key(d, root, "base");
    spec_node *base = NULL;
    if (d->no_base) {
        spec_doc_report(d, bkey, "base: not allowed here (no other file may be read)");
    } else if (bval->kind != SPEC_SCALAR) {
        spec_doc_report(d, bval, "base: expected a file name, got %s", spec_node_kind(bval));
    } else if (spec_node_is_null(bval) || !bval->text[0]) {
        spec_doc_report(d, bkey, "base: missing value (expected a file name)");
    } else if (strlen(bval->text) != bval->len) {
        spec_doc_report(d, bval, "base: value contains a NUL character");
    } else if (depth + 1 >= MAX_BASE_DEPTH) {
        spec_doc_report(d, bval, "base: more than %d files deep", MAX_BASE_DEPTH);
    } else {
        char dir[PATH_MAX], path[PATH_MAX + 256], why[256];
        dir_of(file, dir, sizeof dir);
        if (bval->text[0] == '/' || !dir[0]) snprintf(path, sizeof path, "%s", bval->text);
        else snprintf(path, sizeof path, "%s%s", dir, bval->text);
        char *resolved = realpath(path, NULL);
        char *btext = NULL;
        size_t blen = 0;
        if (!resolved) {
            spec_doc_report(d, bval, "base: cannot open '%s': %s", path, strerror(errno));
        } else {
            int cycle = -1;
            for (int i = 0; i <= depth && cycle < 0; i++)
                if (chain[i] && !strcmp(chain[i], resolved)) cycle = i;
            if (cycle >= 0) {
                spec_doc_report(d, bval, "base: '%s' includes itself (a cycle of %d file%s)",
                                bval->text, depth - cycle + 1, depth == cycle ? "" : "s");
            } else if (read_text(path, &btext, &blen, why, sizeof why)) {
                spec_doc_report(d, bval, "base: cannot read '%s': %s", path, why);
            } else {
                const char *bfile = intern_file(d, path);
                chain[depth + 1] = resolved;
                resolved = NULL;
                if (bfile) base = load_layers(d, bfile, btext, blen, chain, depth + 1);
                free(chain[depth + 1]);
                chain[depth + 1] = NULL;
                free(btext);
            }
        }
        free(resolved);
    }
    if (base && base->kind != SPEC_MAP) base = NULL;
    return merge(d, base, layer, MERGE_DEEP, "");
}

/* set_layer: one "dotted.key=value" override as a tree {a: {b: value}},
 * merged into d->sets. Keys: `sweep.grid.<dotted key>` keeps the dotted key
 * whole; `task|model|train|eval.<key>` pins that key (removes it from the
 * sweep). A value starting with [ or { is read as YAML flow; anything else
 * is the text itself (empty = null). */
static void set_layer(spec_doc *d, const char *arg) {
    char fname[600];
    snprintf(fname, sizeof fname, "--set %s", arg);
    const char *file = intern_file(d, fname);
    if (!file) return;
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg) {
        report_at(d, file, 1, 1, "expected dotted.key=value (for example train.lr=3e-4)");
        return;
    }
    const char *value = eq + 1;
    int vcol = (int)(value - arg) + 1;
    spec_node *v;
    if (value[0] == '[' || value[0] == '{') {
        int empty = 0;
        v = load_yaml(d, file, value, strlen(value), vcol - 1, &empty);
        if (!v) return;
    } else {
        v = new_scalar(d, file, 1, vcol, value, strlen(value));
        if (!v) return;
    }
    /* The path's segments, innermost last: [start, end) offsets into arg. */
    int seg_start[8], seg_end[8], n = 0;
    size_t plen = (size_t)(eq - arg);
    for (size_t i = 0; i <= plen && n < 8;) {
        size_t j = i;
        while (j < plen && arg[j] != '.') j++;
        /* After sweep.grid the rest is one dotted key. */
        if (n == 2 && !strncmp(arg, "sweep.grid.", 11)) j = plen;
        /* Below a section, the rest is one key (a dotted one is refused by
         * the section as unknown). */
        if (n == 1 && strncmp(arg, "sweep.", 6)) j = plen;
        seg_start[n] = (int)i;
        seg_end[n++] = (int)j;
        if (j == i) {
            report_at(d, file, 1, (int)i + 1, "empty key in '%.*s'", (int)plen, arg);
            return;
        }
        i = j + 1;
    }
    if (n == 8) {
        report_at(d, file, 1, 1, "key path too deep");
        return;
    }
    char top[64];
    snprintf(top, sizeof top, "%.*s", seg_end[0] - seg_start[0], arg);
    if (!strcmp(top, "presets") || !strcmp(top, "base")) {
        report_at(d, file, 1, 1, "'%s' cannot be set from the command line", top);
        return;
    }
    for (int k = n - 1; k >= 0; k--) {
        spec_node *key = new_scalar(d, file, 1, seg_start[k] + 1, arg + seg_start[k],
                                    (size_t)(seg_end[k] - seg_start[k]));
        spec_node *m = new_node(d, SPEC_MAP, file, 1, seg_start[k] + 1, 1);
        if (!key || !m) return;
        m->keys[0] = key;
        m->vals[0] = v;
        m->n = 1;
        v = m;
    }
    if (n == 2 && schema_find(section_keys, top) && d->n_pinned < MAX_PINNED)
        d->pinned[d->n_pinned++] = arena_strndup(d, arg, plen);
    d->sets = merge(d, d->sets, v, MERGE_DEEP, "");
}

/* new_doc: an empty document for main_file. */
static spec_doc *new_doc(const char *name, const spec_opts *o, ml_error *e) {
    spec_doc *d = calloc(1, sizeof *d);
    if (!d) {
        ML_FAIL(e, "out of memory");
        return NULL;
    }
    d->allow_sweep = o && o->allow_sweep;
    d->no_base = o && o->no_base;
    d->main_file = intern_file(d, name ? name : "<spec>");
    if (!d->main_file) {
        free(d);
        ML_FAIL(e, "out of memory");
        return NULL;
    }
    return d;
}

/* finish_load: the layers of the document from the main text, then the
 * overrides. */
static void finish_load(spec_doc *d, const char *text, size_t len, const spec_opts *o) {
    char *chain[MAX_BASE_DEPTH + 1] = {0};
    chain[0] = realpath(d->main_file, NULL);
    d->layers = load_layers(d, d->main_file, text, len, chain, 0);
    free(chain[0]);
    for (int i = 0; o && i < o->n_sets; i++) set_layer(d, o->sets[i]);
}

spec_doc *spec_doc_load_string(const char *text, size_t len, const char *name,
                               const spec_opts *o, ml_error *e) {
    spec_doc *d = new_doc(name, o, e);
    if (!d) return NULL;
    d->source = malloc(len + 1);
    if (!d->source) {
        spec_doc_free(d);
        ML_FAIL(e, "out of memory");
        return NULL;
    }
    memcpy(d->source, text, len);
    d->source[len] = '\0';
    finish_load(d, d->source, len, o);
    return d;
}

spec_doc *spec_doc_load_file(const char *path, const spec_opts *o, ml_error *e) {
    spec_doc *d = new_doc(path, o, e);
    if (!d) return NULL;
    char why[256];
    size_t len = 0;
    if (read_text(path, &d->source, &len, why, sizeof why)) {
        report_at(d, d->main_file, 0, 0, "cannot open spec: %s", why);
        return d;
    }
    finish_load(d, d->source, len, o);
    return d;
}

void spec_doc_free(spec_doc *d) {
    if (!d) return;
    for (arena_block *b = d->arena, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(d->source);
    free(d);
}

const spec_node *spec_doc_root(const spec_doc *d) { return d->root; }
const char *spec_doc_source(const spec_doc *d) { return d->source ? d->source : ""; }
const char *spec_doc_file(const spec_doc *d) { return d->main_file; }

int spec_doc_presets(const spec_doc *d, const char **names, int cap) {
    const spec_node *p = spec_map_get(d->layers, "presets", NULL);
    if (!p || p->kind != SPEC_MAP) return 0;
    for (int i = 0; i < p->n && i < cap; i++) names[i] = p->keys[i]->text;
    return p->n;
}

/* check_presets: the presets section is a mapping of name -> mapping whose
 * keys are those a spec has (without presets and base). */
static void check_presets(spec_doc *d, const spec_node *pk, const spec_node *p) {
    if (p->kind != SPEC_MAP) {
        if (spec_node_is_null(p))
            spec_doc_report(d, pk, "section 'presets' is empty; give it presets or leave it out");
        else
            spec_doc_report(d, p, "section 'presets' must be a mapping of preset names to "
                            "overrides, got %s", spec_node_kind(p));
        return;
    }
    for (int i = 0; i < p->n; i++) {
        const spec_node *v = p->vals[i];
        if (v->kind != SPEC_MAP) {
            spec_doc_report(d, spec_node_is_null(v) ? p->keys[i] : v,
                            "preset '%s' must be a mapping of sections, got %s",
                            p->keys[i]->text, spec_node_is_null(v) ? "nothing" : spec_node_kind(v));
            continue;
        }
        for (int k = 0; k < v->n; k++) {
            const char *key = v->keys[k]->text;
            if (schema_find(preset_keys, key)) continue;
            if (!strcmp(key, "base") || !strcmp(key, "presets")) {
                spec_doc_report(d, v->keys[k], "'%s' cannot be given inside preset '%s'", key,
                                p->keys[i]->text);
                continue;
            }
            const char *near = schema_closest(preset_keys, key);
            spec_doc_report(d, v->keys[k], "unknown key '%s' in preset '%s'%s%s%s", key,
                            p->keys[i]->text, near ? "; did you mean '" : "", near ? near : "",
                            near ? "'?" : "");
        }
    }
}

/* unpin: the sweep section of root without the keys the overrides pinned,
 * in sweep.grid and in sweep.zip (a zip group left empty goes, and so do a
 * grid or zip left empty). */
static spec_node *unpin(spec_doc *d, spec_node *root) {
    spec_node *sweep = map_val(root, "sweep");
    if (!sweep || sweep->kind != SPEC_MAP || !d->n_pinned) return root;
    spec_node *grid = map_val(sweep, "grid");
    spec_node *zip = map_val(sweep, "zip");
    for (int i = 0; i < d->n_pinned; i++) {
        const char *k = d->pinned[i];
        if (grid && grid->kind == SPEC_MAP) grid = without_key(d, grid, k);
        if (zip && zip->kind == SPEC_MAP) zip = without_key(d, zip, k);
        if (zip && zip->kind == SPEC_LIST) {
            spec_node *z = new_node(d, SPEC_LIST, zip->file, zip->line, zip->column, zip->n);
            if (!z) return NULL;
            for (int g = 0; g < zip->n; g++) {
                spec_node *grp = without_key(d, zip->vals[g], k);
                if (!grp) return NULL;
                if (grp->kind != SPEC_MAP || grp->n > 0) z->vals[z->n++] = grp;
            }
            zip = z;
        }
        if (d->oom) return NULL;
    }
    if (grid && grid->kind == SPEC_MAP && grid->n == 0) grid = NULL;
    if (zip && zip->kind != SPEC_SCALAR && zip->n == 0) zip = NULL;
    sweep = with_value(d, sweep, "grid", grid);
    if (sweep) sweep = with_value(d, sweep, "zip", zip);
    return sweep ? with_value(d, root, "sweep", sweep) : NULL;
}

int spec_doc_select(spec_doc *d, const char *preset) {
    d->root = NULL;
    if (!d->layers || d->oom) return -1;
    spec_node *root = d->layers;
    if (root->kind == SPEC_MAP) {
        const spec_node *pk = NULL;
        const spec_node *p = spec_map_get(root, "presets", &pk);
        if (p) check_presets(d, pk, p);
        root = without_key(d, root, "presets");
        if (preset) {
            spec_node *chosen = map_val(d->layers, "presets");
            chosen = map_val(chosen, preset);
            if (!p || p->kind != SPEC_MAP) {
                spec_doc_report(d, NULL, "--preset %s: the spec defines no presets", preset);
                return -1;
            }
            if (!chosen) {
                char list[300] = "";
                size_t used = 0;
                ml_field names[33];
                int n = 0;
                for (int i = 0; i < p->n && used < sizeof list; i++) {
                    used += (size_t)snprintf(list + used, sizeof list - used, "%s%s",
                                             i ? ", " : "", p->keys[i]->text);
                    if (n < 32) names[n++] = (ml_field){.key = p->keys[i]->text};
                }
                names[n] = (ml_field){.key = NULL};
                const char *near = schema_closest(names, preset);
                spec_doc_report(d, pk, "unknown preset '%s'; presets: %s%s%s%s", preset, list,
                                near ? "; did you mean '" : "", near ? near : "",
                                near ? "'?" : "");
                return -1;
            }
            if (chosen->kind == SPEC_MAP) {
                /* Only the keys a preset may hold (the others are reported
                 * by check_presets, once). */
                spec_node *c = chosen;
                for (int i = 0; c && i < chosen->n; i++)
                    if (!schema_find(preset_keys, chosen->keys[i]->text))
                        c = without_key(d, c, chosen->keys[i]->text);
                root = c ? merge(d, root, c, MERGE_DEEP, "") : NULL;
            }
        }
    }
    if (root && d->sets) root = merge(d, root, d->sets, MERGE_DEEP, "");
    if (root && root->kind == SPEC_MAP) root = unpin(d, root);
    if (!root || d->oom) return -1;
    d->root = root;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* One run: the sections of the root (with overrides) -> run_config.          */

typedef struct key_pos {
    int section;
    const char *key;
    const spec_node *at;
} key_pos;

typedef struct spec_parse {
    spec_doc *d;
    run_config cfg;
    const ml_task *task;   /* the selected task, NULL after an invalid name */
    const ml_mixer *mixer; /* likewise */
    key_pos keys[MAX_KEYS];
    int n_keys;
    const spec_node *sec_at[SEC_COUNT]; /* where each section was written */
    int sec_bad[SEC_COUNT]; /* a problem inside: its cross checks would mislead */
    const spec_override *ov;
    int n_ov;
    unsigned char ov_used[MAX_OVERRIDES];
    int failed;
} spec_parse;

/* report: a problem of this run at node `at`. */
static void report(spec_parse *p, const spec_node *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void report(spec_parse *p, const spec_node *at, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (at) vreport_at(p->d, at->file, at->line, at->column, fmt, ap);
    else vreport_at(p->d, p->d->main_file, 0, 0, fmt, ap);
    va_end(ap);
    p->failed = 1;
}

/* remember: the position of key in section, for mapping cross-check
 * messages back to the file. */
static void remember(spec_parse *p, int section, const char *key, const spec_node *at) {
    if (p->n_keys == MAX_KEYS) return;
    key_pos *k = &p->keys[p->n_keys++];
    k->section = section;
    k->key = key;
    k->at = at;
}

/* find_override: the index of the override of section.key, or -1. */
static int find_override(const spec_parse *p, int section, const char *key) {
    size_t sl = strlen(section_names[section]);
    for (int i = 0; i < p->n_ov; i++) {
        const char *k = p->ov[i].key;
        if (!strncmp(k, section_names[section], sl) && k[sl] == '.' && !strcmp(k + sl + 1, key))
            return i;
    }
    return -1;
}

/* set_value: parse the value node of key into field f of obj. key is the
 * node missing values point at. */
static void set_value(spec_parse *p, int section, const ml_field *f, void *obj,
                      const spec_node *key, const spec_node *val) {
    char name[128];
    if (section == SEC_TOP) snprintf(name, sizeof name, "%s", f->key);
    else snprintf(name, sizeof name, "%s.%s", section_names[section], f->key);
    remember(p, section, f->key, key);
    if (val->kind != SPEC_SCALAR) {
        report(p, val, "%s: expected %s, got %s", name, type_hint(f), spec_node_kind(val));
    } else if (spec_node_is_null(val)) {
        report(p, key, "%s: missing value (expected %s)", name, type_hint(f));
    } else if (strlen(val->text) != val->len) {
        report(p, val, "%s: value contains a NUL character", name);
    } else {
        ml_error sub;
        if (!schema_set(f, obj, val->text, &sub)) return;
        report(p, val, "%s: %s", name, sub.msg);
    }
    p->sec_bad[section] = 1;
}

/* section_mapping: val if it is a mapping; otherwise reports and returns
 * NULL. */
static const spec_node *section_mapping(spec_parse *p, int section, const spec_node *key,
                                        const spec_node *val) {
    if (val->kind == SPEC_MAP) {
        if (val->bad) p->sec_bad[section] = 1;
        return val;
    }
    if (spec_node_is_null(val))
        report(p, key, "section '%s' is empty; give it keys or leave it out",
               section_names[section]);
    else
        report(p, val, "section '%s' must be a mapping of keys, got %s", section_names[section],
               spec_node_kind(val));
    p->sec_bad[section] = 1;
    return NULL;
}

/* selector: the value of the selector key sel (task `name`, model `mixer`)
 * of a section mapping (NULL: the section is not written) or of its
 * override, as text; NULL when absent. *key_out gets the node its problems
 * point at. A selector that is not a proper name is reported and "" is
 * returned so that the caller skips the section's other keys. */
static const char *selector(spec_parse *p, int section, const spec_node *map, const char *sel,
                            const spec_node **key_out) {
    const spec_node *k = NULL, *v = NULL;
    int o = find_override(p, section, sel);
    if (o >= 0) {
        p->ov_used[o] = 1;
        v = p->ov[o].value;
        k = v;
    } else {
        v = spec_map_get(map, sel, &k);
    }
    if (!v) return NULL;
    *key_out = k;
    remember(p, section, sel, k);
    if (v->kind != SPEC_SCALAR) {
        report(p, v, "%s.%s: expected a name, got %s", section_names[section], sel,
               spec_node_kind(v));
    } else if (spec_node_is_null(v)) {
        report(p, k, "%s.%s: missing value (expected a name)", section_names[section], sel);
    } else {
        return v->text;
    }
    p->sec_bad[section] = 1;
    return "";
}

/* select_task / select_mixer: apply the selector's choice (defaults of the
 * chosen task or mixer first). */
static void select_task(spec_parse *p, const char *name, const spec_node *at) {
    if (name && !*name) {
        p->task = NULL;
        return;
    }
    if (!name) return;
    const ml_task *t = task_find(name);
    if (!t) {
        char list[256];
        name_list(0, list, sizeof list);
        report(p, at, "task.name: unknown task '%s'; valid tasks: %s", name, list);
        p->sec_bad[SEC_TASK] = 1;
        p->task = NULL;
    } else if (t != p->task) {
        ml_error sub;
        if (t->cfg_size > sizeof p->cfg.task_cfg ||
            schema_defaults(t->fields, &p->cfg.task_cfg, &sub)) {
            report(p, at, "task '%s' has a broken schema table", t->name);
            p->sec_bad[SEC_TASK] = 1;
            p->task = NULL;
        } else {
            p->task = t;
            snprintf(p->cfg.task, sizeof p->cfg.task, "%s", t->name);
        }
    }
}
static void select_mixer(spec_parse *p, const char *name, const spec_node *at) {
    if (name && !*name) {
        p->mixer = NULL;
        return;
    }
    if (!name) return;
    const ml_mixer *m = mixer_find(name);
    if (!m) {
        char list[256];
        name_list(1, list, sizeof list);
        report(p, at, "model.mixer: unknown mixer '%s'; valid mixers: %s", name, list);
        p->sec_bad[SEC_MODEL] = 1;
        p->mixer = NULL;
    } else if (m != p->mixer) {
        ml_error sub;
        if (m->cfg_size > sizeof p->cfg.model.mixer_cfg ||
            schema_defaults(m->fields, &p->cfg.model.mixer_cfg, &sub)) {
            report(p, at, "mixer '%s' has a broken schema table", m->name);
            p->sec_bad[SEC_MODEL] = 1;
            p->mixer = NULL;
        } else {
            p->mixer = m;
            snprintf(p->cfg.model.mixer, sizeof p->cfg.model.mixer, "%s", m->name);
        }
    }
}

/* apply_key: key k of section with its value vn; kn is where a missing
 * value points, unknown_at where an unknown key does. */
static void apply_key(spec_parse *p, int section, const char *k, const spec_node *kn,
                      const spec_node *vn, const spec_node *unknown_at) {
    const ml_field *f = NULL, *table = NULL;
    void *obj = NULL;
    char msg[PROBLEM_MSG];
    switch (section) {
    case SEC_TASK:
        if (!p->task) return;
        table = p->task->fields;
        f = schema_find(table, k);
        obj = &p->cfg.task_cfg;
        break;
    case SEC_MODEL:
        f = model_field(&p->cfg.model, p->mixer, k, &obj);
        /* Without a valid mixer the key may well be one of its keys: only
         * the mixer name is reported then. */
        if (!f && !p->mixer) return;
        if (!f) {
            unknown_key(msg, sizeof msg, k, SEC_MODEL, model_fields, p->mixer->fields,
                        p->mixer);
            report(p, unknown_at, "%s", msg);
            p->sec_bad[SEC_MODEL] = 1;
            return;
        }
        break;
    default:
        table = section == SEC_TRAIN ? train_fields : eval_fields;
        f = schema_find(table, k);
        obj = section == SEC_TRAIN ? (void *)&p->cfg.train : (void *)&p->cfg.eval;
        break;
    }
    if (f) {
        set_value(p, section, f, obj, kn, vn);
        return;
    }
    unknown_key(msg, sizeof msg, k, section, table, NULL, NULL);
    report(p, unknown_at, "%s", msg);
    p->sec_bad[section] = 1;
}

/* parse_section: section (task, model, train, eval) written as key: val
 * (both NULL when only overrides give it keys). The selector first, then
 * the keys in file order (an override replacing a written key's value),
 * then the overrides of keys not written. */
static void parse_section(spec_parse *p, int section, const spec_node *key,
                          const spec_node *val) {
    const spec_node *map = NULL;
    if (val && !(map = section_mapping(p, section, key, val))) return;
    const char *sel = section == SEC_TASK ? "name" : section == SEC_MODEL ? "mixer" : NULL;
    if (sel) {
        const spec_node *sel_at = NULL;
        const char *name = selector(p, section, map, sel, &sel_at);
        if (section == SEC_TASK) select_task(p, name, sel_at);
        else select_mixer(p, name, sel_at);
    }
    for (int i = 0; map && i < map->n; i++) {
        const char *k = map->keys[i]->text;
        if (sel && !strcmp(k, sel)) continue;
        int o = find_override(p, section, k);
        if (o >= 0) {
            p->ov_used[o] = 1;
            apply_key(p, section, k, p->ov[o].value, p->ov[o].value, p->ov[o].key_node);
        } else {
            apply_key(p, section, k, map->keys[i], map->vals[i], map->keys[i]);
        }
    }
    size_t sl = strlen(section_names[section]);
    for (int o = 0; o < p->n_ov; o++) {
        const char *k = p->ov[o].key;
        if (p->ov_used[o] || strncmp(k, section_names[section], sl) || k[sl] != '.') continue;
        p->ov_used[o] = 1;
        apply_key(p, section, k + sl + 1, p->ov[o].value, p->ov[o].value, p->ov[o].key_node);
    }
}

/* parse_root: the top-level mapping. */
static void parse_root(spec_parse *p, const spec_node *root) {
    if (root->kind != SPEC_MAP) {
        report(p, root,
               "a spec must be a mapping with the sections name, description, task, model, "
               "train, eval; got %s", spec_node_kind(root));
        return;
    }
    int seen[SEC_COUNT] = {0};
    for (int i = 0; i < root->n; i++) {
        const char *k = root->keys[i]->text;
        const spec_node *kn = root->keys[i], *vn = root->vals[i];
        const ml_field *label = schema_find(label_fields, k);
        int section = SEC_TOP;
        for (int s = 1; s < SEC_COUNT; s++)
            if (!strcmp(k, section_names[s])) section = s;
        if (label) {
            set_value(p, SEC_TOP, label, &p->cfg, kn, vn);
        } else if (section != SEC_TOP) {
            p->sec_at[section] = kn;
            seen[section] = 1;
            parse_section(p, section, kn, vn);
        } else if (!strcmp(k, "sweep")) {
            if (!p->d->allow_sweep)
                report(p, kn, "'sweep' describes several runs: sweeps are not supported by "
                       "`memlab train`; run the spec with `memlab run`");
        } else {
            char msg[PROBLEM_MSG];
            unknown_key(msg, sizeof msg, k, SEC_TOP, top_keys, NULL, NULL);
            report(p, kn, "%s", msg);
        }
    }
    for (int s = 1; s < SEC_COUNT; s++) {
        if (seen[s]) continue;
        size_t sl = strlen(section_names[s]);
        for (int o = 0; o < p->n_ov; o++) {
            if (!strncmp(p->ov[o].key, section_names[s], sl) && p->ov[o].key[sl] == '.') {
                parse_section(p, s, NULL, NULL);
                break;
            }
        }
    }
}

/* message_at: where a cross-check message of section s points: the key
 * it names when the run set it, else the section. */
static const spec_node *message_at(const spec_parse *p, int s, const char *msg) {
    char key[64];
    message_key(msg, key, sizeof key);
    for (int i = 0; key[0] && i < p->n_keys; i++)
        if (p->keys[i].section == s && !strcmp(p->keys[i].key, key)) return p->keys[i].at;
    return p->sec_at[s];
}

/* run_cross_checks: every cross check whose section parsed cleanly, each
 * reported at the key its message names; then the mixer's caution, as a
 * warning, for a run without problems. */
static void run_cross_checks(spec_parse *p) {
    char msg[PROBLEM_MSG];
    for (int c = 0; c < CROSS_COUNT; c++) {
        int s = cross_section[c];
        if (p->sec_bad[s] || (c == CROSS_TASK && !p->task) || (c == CROSS_MIXER && !p->mixer))
            continue;
        ml_error sub;
        if (!cross_check(&p->cfg, c, &sub)) continue;
        qualify(s, sub.msg, msg, sizeof msg);
        report(p, message_at(p, s, sub.msg), "%s", msg);
    }
    char raw[PROBLEM_MSG];
    if (!p->failed && mixer_caution(&p->cfg, raw)) {
        qualify(SEC_MODEL, raw, msg, sizeof msg);
        warn_at(p->d, message_at(p, SEC_MODEL, raw), msg);
    }
}

int spec_doc_config(spec_doc *d, const spec_override *ov, int n, run_config *out) {
    if (!d->root) {
        if (!spec_doc_failed(d)) spec_doc_report(d, NULL, "the spec has nothing to run");
        return -1;
    }
    if (n > MAX_OVERRIDES) {
        spec_doc_report(d, NULL, "too many swept keys (%d)", n);
        return -1;
    }
    /* About 20 KB: on the heap, since callers may run on small stacks. */
    spec_parse *p = calloc(1, sizeof *p);
    if (!p) {
        d->oom = 1;
        return -1;
    }
    p->d = d;
    p->ov = ov;
    p->n_ov = n;
    ml_error e;
    if (config_defaults(&p->cfg, &e)) {
        spec_doc_report(d, NULL, "%s", e.msg);
        free(p);
        return -1;
    }
    p->task = task_find(p->cfg.task);
    p->mixer = mixer_find(p->cfg.model.mixer);
    parse_root(p, d->root);
    run_cross_checks(p);
    int rc = p->failed ? -1 : 0;
    if (!rc) *out = p->cfg;
    free(p);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The resolved spec as JSON.                                                 */

typedef struct jbuf {
    char *buf;
    size_t len, cap;
    int oom;
} jbuf;

static void jput(jbuf *j, const char *s, size_t n) {
    if (j->oom) return;
    if (j->len + n + 1 > j->cap) {
        size_t cap = j->cap ? j->cap : 1024;
        while (j->len + n + 1 > cap) cap *= 2;
        char *nb = realloc(j->buf, cap);
        if (!nb) {
            j->oom = 1;
            return;
        }
        j->buf = nb;
        j->cap = cap;
    }
    memcpy(j->buf + j->len, s, n);
    j->len += n;
    j->buf[j->len] = '\0';
}

/* jstring: text[len] as a JSON string (control characters and NUL escaped,
 * other bytes copied: the text came through libyaml's UTF-8 reader). */
static void jstring(jbuf *j, const char *text, size_t len) {
    jput(j, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            jput(j, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            jput(j, esc, 6);
        } else {
            jput(j, (const char *)&text[i], 1);
        }
    }
    jput(j, "\"", 1);
}

/* is_json_number: the whole text is a JSON number. */
static int is_json_number(const char *s) {
    if (*s == '-') s++;
    if (*s == '0') s++;
    else if (*s >= '1' && *s <= '9') while (*s >= '0' && *s <= '9') s++;
    else return 0;
    if (*s == '.') {
        s++;
        if (!(*s >= '0' && *s <= '9')) return 0;
        while (*s >= '0' && *s <= '9') s++;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-') s++;
        if (!(*s >= '0' && *s <= '9')) return 0;
        while (*s >= '0' && *s <= '9') s++;
    }
    return *s == '\0';
}

static void jnode(jbuf *j, const spec_node *n) {
    if (n->kind == SPEC_SCALAR) {
        if (spec_node_is_null(n)) jput(j, "null", 4);
        else if (!n->quoted && strlen(n->text) == n->len &&
                 (is_json_number(n->text) || !strcmp(n->text, "true") ||
                  !strcmp(n->text, "false")))
            jput(j, n->text, n->len);
        else jstring(j, n->text, n->len);
        return;
    }
    jput(j, n->kind == SPEC_MAP ? "{" : "[", 1);
    for (int i = 0; i < n->n; i++) {
        if (i) jput(j, ", ", 2);
        if (n->kind == SPEC_MAP) {
            jstring(j, n->keys[i]->text, n->keys[i]->len);
            jput(j, ": ", 2);
        }
        jnode(j, n->vals[i]);
    }
    jput(j, n->kind == SPEC_MAP ? "}" : "]", 1);
}

char *spec_doc_json(const spec_doc *d) {
    jbuf j = {0};
    if (d->root) jnode(&j, d->root);
    else jput(&j, "null", 4);
    if (j.oom) {
        free(j.buf);
        return NULL;
    }
    return j.buf;
}

/* ------------------------------------------------------------------------ */
/* Single runs.                                                               */

/* load_single: the one run of a loaded document into *out, or -1 with
 * every problem in e. Frees d. */
static int load_single(spec_doc *d, run_config *out, ml_error *e) {
    if (!d) return -1;
    run_config c;
    int ok = d->layers && !spec_doc_select(d, NULL) && !spec_doc_config(d, NULL, 0, &c);
    if (!ok && !spec_doc_failed(d)) spec_doc_report(d, NULL, "the spec has nothing to run");
    int rc = spec_doc_finish(d, e);
    if (!rc) *out = c;
    spec_doc_free(d);
    return rc;
}

int spec_load_string(const char *text, size_t len, const char *name, run_config *out,
                     ml_error *e) {
    return load_single(spec_doc_load_string(text, len, name, NULL, e), out, e);
}

int spec_load_file(const char *path, run_config *out, ml_error *e) {
    return load_single(spec_doc_load_file(path, NULL, e), out, e);
}

/* ------------------------------------------------------------------------ */
/* Dotted keys.                                                               */

/* closest_of: the nearer of the current best and table's closest to key. */
static void closest_of(const ml_field *table, const char *key, const char *section,
                       char *best, size_t cap, int *best_d) {
    const char *c = schema_closest(table, key);
    if (!c) return;
    int dist = schema_edit_distance(key, c);
    if (dist < *best_d) {
        *best_d = dist;
        if (section) snprintf(best, cap, "%s.%s", section, c);
        else snprintf(best, cap, "%s", c);
    }
}

/* section_knows: whether key is a key of section s in some config; the
 * closest such key goes to best (with the section when with_section). */
static int section_knows(int s, const char *key, int with_section, char *best, size_t cap,
                         int *best_d) {
    const char *sec = with_section ? section_names[s] : NULL;
    static const ml_field task_sel[] = {{.key = "name"}, {.key = NULL}};
    static const ml_field model_sel[] = {{.key = "mixer"}, {.key = NULL}};
    if (s == SEC_TASK) {
        if (!strcmp(key, "name")) return 1;
        closest_of(task_sel, key, sec, best, cap, best_d);
        for (int i = 0; ml_tasks[i]; i++) {
            if (schema_find(ml_tasks[i]->fields, key)) return 1;
            closest_of(ml_tasks[i]->fields, key, sec, best, cap, best_d);
        }
    } else if (s == SEC_MODEL) {
        if (!strcmp(key, "mixer") || schema_find(model_fields, key)) return 1;
        closest_of(model_sel, key, sec, best, cap, best_d);
        closest_of(model_fields, key, sec, best, cap, best_d);
        for (int i = 0; ml_mixers[i]; i++) {
            if (schema_find(ml_mixers[i]->fields, key)) return 1;
            closest_of(ml_mixers[i]->fields, key, sec, best, cap, best_d);
        }
    } else {
        const ml_field *t = s == SEC_TRAIN ? train_fields : eval_fields;
        if (schema_find(t, key)) return 1;
        closest_of(t, key, sec, best, cap, best_d);
    }
    return 0;
}

int spec_dotted_known(const char *dotted, char *msg, size_t cap) {
    char best[160] = "";
    int best_d = INT_MAX;
    const char *dot = strchr(dotted, '.');
    if (!dot) {
        /* A bare key: which section has it? */
        for (int s = 1; s < SEC_COUNT; s++) {
            char b[160] = "";
            int bd = INT_MAX;
            if (section_knows(s, dotted, 1, b, sizeof b, &bd)) {
                snprintf(best, sizeof best, "%s.%s", section_names[s], dotted);
                best_d = 0;
                break;
            }
            if (bd < best_d) {
                best_d = bd;
                snprintf(best, sizeof best, "%s", b);
            }
        }
        snprintf(msg, cap, "'%s' is not a dotted key (section.key, e.g. model.d_model)%s%s%s",
                 dotted, best[0] ? "; did you mean '" : "", best, best[0] ? "'?" : "");
        return -1;
    }
    char sec[64];
    snprintf(sec, sizeof sec, "%.*s", (int)(dot - dotted), dotted);
    const char *key = dot + 1;
    int s = 0;
    for (int i = 1; i < SEC_COUNT; i++)
        if (!strcmp(sec, section_names[i])) s = i;
    if (!s) {
        const char *near = schema_closest(section_keys, sec);
        snprintf(msg, cap, "unknown section '%s' in '%s'%s%s%s", sec, dotted,
                 near ? "; did you mean '" : "", near ? near : "", near ? "'?" : "");
        return -1;
    }
    if (section_knows(s, key, 1, best, sizeof best, &best_d)) return 0;
    snprintf(msg, cap, "unknown key '%s'%s%s%s", dotted, best[0] ? "; did you mean '" : "",
             best, best[0] ? "'?" : "");
    return -1;
}

int config_value(const run_config *cfg, const char *dotted, char *buf, size_t cap) {
    char tmp[ML_STR];
    const ml_field name_field = {.key = "name", .type = FT_STRING, .offset = 0};
    const char *dot = strchr(dotted, '.');
    if (!dot) {
        const ml_field *f = schema_find(label_fields, dotted);
        if (!f) return -1;
        schema_format(f, cfg, buf, cap);
        return 0;
    }
    const char *key = dot + 1;
    size_t sl = (size_t)(dot - dotted);
    const ml_field *f = NULL;
    const void *obj = NULL;
    if (sl == 4 && !strncmp(dotted, "task", 4)) {
        if (!strcmp(key, "name")) {
            snprintf(tmp, sizeof tmp, "%s", cfg->task);
            f = &name_field;
            obj = tmp;
        } else {
            const ml_task *t = task_find(cfg->task);
            f = t ? schema_find(t->fields, key) : NULL;
            obj = &cfg->task_cfg;
        }
    } else if (sl == 5 && !strncmp(dotted, "model", 5)) {
        if (!strcmp(key, "mixer")) {
            snprintf(tmp, sizeof tmp, "%s", cfg->model.mixer);
            f = &name_field;
            obj = tmp;
        } else if ((f = schema_find(model_fields, key))) {
            obj = &cfg->model;
        } else {
            const ml_mixer *m = mixer_find(cfg->model.mixer);
            f = m ? schema_find(m->fields, key) : NULL;
            obj = &cfg->model.mixer_cfg;
        }
    } else if (sl == 5 && !strncmp(dotted, "train", 5)) {
        f = schema_find(train_fields, key);
        obj = &cfg->train;
    } else if (sl == 4 && !strncmp(dotted, "eval", 4)) {
        f = schema_find(eval_fields, key);
        obj = &cfg->eval;
    }
    if (!f) return -1;
    schema_format(f, obj, buf, cap);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Overrides of a resolved config (memlab train --set).                       */

/* set_in: parse text into field f of obj, qualifying errors with path. */
static int set_in(const ml_field *f, void *obj, const char *path, const char *text, ml_error *e) {
    ml_error sub;
    if (schema_set(f, obj, text, &sub)) return ML_FAIL(e, "%s: %s", path, sub.msg);
    return 0;
}

int spec_set(run_config *cfg, const char *assignment, ml_error *e) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        return ML_FAIL(e, "'%s': expected section.key=value (for example train.lr=3e-4)",
                       assignment);
    char path[128];
    size_t plen = (size_t)(eq - assignment);
    if (plen >= sizeof path) return ML_FAIL(e, "'%.40s...': key path too long", assignment);
    memcpy(path, assignment, plen);
    path[plen] = '\0';
    const char *value = eq + 1;
    run_config c = *cfg;
    char *dot = strchr(path, '.');
    if (!dot) {
        const ml_field *f = schema_find(label_fields, path);
        if (f) {
            if (set_in(f, &c, path, value, e)) return -1;
        } else if (schema_find(section_keys, path)) {
            return ML_FAIL(e, "'%s' is a section: give one of its keys, e.g. %s.<key>=value",
                           path, path);
        } else {
            char msg[PROBLEM_MSG];
            unknown_key(msg, sizeof msg, path, SEC_TOP, top_keys, NULL, NULL);
            return ML_FAIL(e, "%s", msg);
        }
        *cfg = c;
        return 0;
    }
    *dot = '\0';
    const char *sec = path, *key = dot + 1;
    char full[160];
    snprintf(full, sizeof full, "%s.%s", sec, key);
    if (!schema_find(section_keys, sec)) {
        const char *near = schema_closest(section_keys, sec);
        return ML_FAIL(e, "unknown section '%s' in '%s'%s%s%s", sec, full,
                       near ? "; did you mean '" : "", near ? near : "", near ? "'?" : "");
    }
    char msg[PROBLEM_MSG];
    if (!strcmp(sec, "task")) {
        const ml_task *t = task_find(c.task);
        if (!strcmp(key, "name")) {
            const ml_task *nt = task_find(value);
            if (!nt) {
                name_list(0, msg, sizeof msg);
                return ML_FAIL(e, "task.name: unknown task '%s'; valid tasks: %s", value, msg);
            }
            /* Another task's keys mean nothing to this one: start from its
             * defaults. */
            if (nt != t && schema_defaults(nt->fields, &c.task_cfg, e)) return -1;
            snprintf(c.task, sizeof c.task, "%s", nt->name);
        } else {
            const ml_field *f = t ? schema_find(t->fields, key) : NULL;
            if (!t) return ML_FAIL(e, "unknown task '%s' in the config", c.task);
            if (!f) {
                unknown_key(msg, sizeof msg, key, SEC_TASK, t->fields, NULL, NULL);
                return ML_FAIL(e, "%s", msg);
            }
            if (set_in(f, &c.task_cfg, full, value, e)) return -1;
        }
    } else if (!strcmp(sec, "model")) {
        const ml_mixer *m = mixer_find(c.model.mixer);
        if (!strcmp(key, "mixer")) {
            const ml_mixer *nm = mixer_find(value);
            if (!nm) {
                name_list(1, msg, sizeof msg);
                return ML_FAIL(e, "model.mixer: unknown mixer '%s'; valid mixers: %s", value,
                               msg);
            }
            if (nm != m && schema_defaults(nm->fields, &c.model.mixer_cfg, e)) return -1;
            snprintf(c.model.mixer, sizeof c.model.mixer, "%s", nm->name);
        } else {
            void *obj = NULL;
            const ml_field *f = model_field(&c.model, m, key, &obj);
            if (!f) {
                unknown_key(msg, sizeof msg, key, SEC_MODEL, model_fields, m ? m->fields : NULL,
                            m);
                return ML_FAIL(e, "%s", msg);
            }
            if (set_in(f, obj, full, value, e)) return -1;
        }
    } else {
        int train = !strcmp(sec, "train");
        const ml_field *fields = train ? train_fields : eval_fields;
        void *obj = train ? (void *)&c.train : (void *)&c.eval;
        const ml_field *f = schema_find(fields, key);
        if (!f) {
            unknown_key(msg, sizeof msg, key, train ? SEC_TRAIN : SEC_EVAL, fields, NULL, NULL);
            return ML_FAIL(e, "%s", msg);
        }
        if (set_in(f, obj, full, value, e)) return -1;
    }
    *cfg = c;
    return 0;
}
