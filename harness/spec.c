/* spec.c: YAML experiment specs -> run_config (see spec.h).
 *
 * Reads a spec with libyaml's document API, checks every key and value
 * against the schema tables (config.c, the task table, the mixer table) and
 * runs the cross-key checks. It decides nothing about what a value means;
 * canonical JSON and hashing live in config.c, value parsing in schema.c.
 *
 * Shape of a spec: a mapping with the keys name, description (text), task,
 * model, train, eval (mappings). `task: {name: ...}` selects the task
 * (default mqar) and `model: {mixer: ...}` the mixer (default softmax); the
 * selector is read first whatever its place in the mapping, its defaults are
 * applied, and only then are the other keys of the section checked against
 * its table. `sweep` is reserved and refused.
 *
 * Error scheme. Parsing does not stop at the first problem: up to
 * MAX_PROBLEMS are collected, sorted by position in the file (problems with
 * no position last), and returned in one ml_error:
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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "config.h"
#include "mixer.h"
#include "spec.h"
#include "task.h"

#define MAX_PROBLEMS 16
#define PROBLEM_MSG 400
#define MAX_KEYS 256                /* key positions remembered for cross checks */
#define MAX_SPEC_BYTES (1L << 20)   /* a spec is a page of text, not a data set */

enum { SEC_TOP, SEC_TASK, SEC_MODEL, SEC_TRAIN, SEC_EVAL, SEC_COUNT };
static const char *const section_names[SEC_COUNT] = {"", "task", "model", "train", "eval"};
/* Where a key was found, for messages. */
static const char *const section_where[SEC_COUNT] = {"at the top level", "in task", "in model",
                                                     "in train", "in eval"};

/* Every key the top level accepts, for suggestions. */
static const ml_field top_keys[] = {{.key = "name"},  {.key = "description"}, {.key = "task"},
                                    {.key = "model"}, {.key = "train"},       {.key = "eval"},
                                    {.key = NULL}};
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
    } else if (cfg->train.lr_min > cfg->train.lr) {
        return ML_FAIL(e, "lr_min: %g is larger than lr %g", cfg->train.lr_min, cfg->train.lr);
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

/* ------------------------------------------------------------------------ */
/* The parser.                                                                */

typedef struct spec_problem {
    int line, column; /* 1-based, 0 = no position */
    int order;        /* discovery order, to keep the sort stable */
    char msg[PROBLEM_MSG];
} spec_problem;

typedef struct key_pos {
    int section;
    const char *key; /* points into the YAML document */
    int line, column;
} key_pos;

typedef struct spec_parse {
    const char *file;
    const char *text;
    size_t len;
    yaml_document_t *doc;
    run_config cfg;
    const ml_task *task;   /* the selected task, NULL after an invalid name */
    const ml_mixer *mixer; /* likewise */
    spec_problem problems[MAX_PROBLEMS];
    int n_problems, n_dropped;
    key_pos keys[MAX_KEYS];
    int n_keys;
    int sec_line[SEC_COUNT], sec_column[SEC_COUNT]; /* where each section was written */
    int sec_bad[SEC_COUNT]; /* a problem inside: its cross checks would mislead */
} spec_parse;

/* report: record a problem at (line, column) (1-based, 0 = none). */
static void report(spec_parse *p, int line, int column, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void report(spec_parse *p, int line, int column, const char *fmt, ...) {
    if (p->n_problems == MAX_PROBLEMS) {
        p->n_dropped++;
        return;
    }
    spec_problem *q = &p->problems[p->n_problems];
    q->line = line;
    q->column = column;
    q->order = p->n_problems++;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->msg, sizeof q->msg, fmt, ap);
    va_end(ap);
}

/* The position of a node, 1-based (libyaml marks are 0-based). */
#define NODE_AT(n) (int)(n)->start_mark.line + 1, (int)(n)->start_mark.column + 1

/* node_value: the text of a scalar node. */
static const char *node_value(const yaml_node_t *n) { return (const char *)n->data.scalar.value; }

/* node_kind: what a node is, for messages. */
static const char *node_kind(const yaml_node_t *n) {
    return n->type == YAML_MAPPING_NODE ? "a mapping"
           : n->type == YAML_SEQUENCE_NODE ? "a list"
                                           : "a single value";
}

/* is_null: a plain scalar that YAML reads as null ("key:" with nothing, ~,
 * null); a quoted "" is a value (an empty text). */
static int is_null(const yaml_node_t *n) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    const char *v = node_value(n);
    return !*v || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") ||
           !strcmp(v, "NULL");
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

/* remember: the position of key in section, for mapping cross-check
 * messages back to the file. */
static void remember(spec_parse *p, int section, const char *key, const yaml_node_t *at) {
    if (p->n_keys == MAX_KEYS) return;
    key_pos *k = &p->keys[p->n_keys++];
    k->section = section;
    k->key = key;
    k->line = (int)at->start_mark.line + 1;
    k->column = (int)at->start_mark.column + 1;
}

/* pair_key: the key of a mapping pair as text, or NULL (reported) when the
 * key is not a scalar or repeats an earlier key of the same mapping. */
static const char *pair_key(spec_parse *p, const yaml_node_t *map, const yaml_node_pair_t *pair,
                            int section) {
    const yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);
    if (k->type != YAML_SCALAR_NODE) {
        report(p, NODE_AT(k), "keys must be plain names, found %s %s", node_kind(k),
               section_where[section]);
        p->sec_bad[section] = 1;
        return NULL;
    }
    for (const yaml_node_pair_t *q = map->data.mapping.pairs.start; q < pair; q++) {
        const yaml_node_t *qk = yaml_document_get_node(p->doc, q->key);
        if (qk->type == YAML_SCALAR_NODE && !strcmp(node_value(qk), node_value(k))) {
            report(p, NODE_AT(k), "duplicate key '%s' %s (first given at line %d)",
                   node_value(k), section_where[section], (int)qk->start_mark.line + 1);
            p->sec_bad[section] = 1;
            return NULL;
        }
    }
    return node_value(k);
}

/* set_value: parse the value node of key into field f of obj. */
static void set_value(spec_parse *p, int section, const ml_field *f, void *obj,
                      const yaml_node_t *key, const yaml_node_t *val) {
    char name[128];
    if (section == SEC_TOP) snprintf(name, sizeof name, "%s", f->key);
    else snprintf(name, sizeof name, "%s.%s", section_names[section], f->key);
    remember(p, section, f->key, key);
    if (val->type != YAML_SCALAR_NODE) {
        report(p, NODE_AT(val), "%s: expected %s, got %s", name, type_hint(f), node_kind(val));
    } else if (is_null(val)) {
        report(p, NODE_AT(key), "%s: missing value (expected %s)", name, type_hint(f));
    } else if (strlen(node_value(val)) != val->data.scalar.length) {
        report(p, NODE_AT(val), "%s: value contains a NUL character", name);
    } else {
        ml_error sub;
        if (!schema_set(f, obj, node_value(val), &sub)) return;
        report(p, NODE_AT(val), "%s: %s", name, sub.msg);
    }
    p->sec_bad[section] = 1;
}

/* section_mapping: the node of section `name` if it is a mapping; otherwise
 * reports and returns NULL. */
static const yaml_node_t *section_mapping(spec_parse *p, int section, const yaml_node_t *key,
                                          const yaml_node_t *val) {
    if (val->type == YAML_MAPPING_NODE) return val;
    if (is_null(val))
        report(p, NODE_AT(key), "section '%s' is empty; give it keys or leave it out",
               section_names[section]);
    else
        report(p, NODE_AT(val), "section '%s' must be a mapping of keys, got %s",
               section_names[section], node_kind(val));
    p->sec_bad[section] = 1;
    return NULL;
}

/* selector: the value of the selector key sel (task `name`, model `mixer`)
 * of a section mapping, as text; NULL when absent. *key_out gets its key
 * node. A selector that is not a proper name is reported and "" is
 * returned so that the caller skips the section's other keys. */
static const char *selector(spec_parse *p, int section, const yaml_node_t *map, const char *sel,
                            const yaml_node_t **key_out) {
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < map->data.mapping.pairs.top;
         q++) {
        const yaml_node_t *k = yaml_document_get_node(p->doc, q->key);
        const yaml_node_t *v = yaml_document_get_node(p->doc, q->value);
        if (k->type != YAML_SCALAR_NODE || strcmp(node_value(k), sel)) continue;
        *key_out = k;
        remember(p, section, sel, k);
        if (v->type != YAML_SCALAR_NODE) {
            report(p, NODE_AT(v), "%s.%s: expected a name, got %s", section_names[section], sel,
                   node_kind(v));
        } else if (is_null(v)) {
            report(p, NODE_AT(k), "%s.%s: missing value (expected a name)",
                   section_names[section], sel);
        } else {
            return node_value(v);
        }
        p->sec_bad[section] = 1;
        return "";
    }
    return NULL;
}

/* parse_task: the task section; the task is selected first. */
static void parse_task(spec_parse *p, const yaml_node_t *key, const yaml_node_t *val) {
    const yaml_node_t *map = section_mapping(p, SEC_TASK, key, val), *sel_key = NULL;
    if (!map) return;
    const char *name = selector(p, SEC_TASK, map, "name", &sel_key);
    if (name && !*name) {
        p->task = NULL;
    } else if (name) {
        const ml_task *t = task_find(name);
        if (!t) {
            char list[256];
            name_list(0, list, sizeof list);
            report(p, NODE_AT(sel_key), "task.name: unknown task '%s'; valid tasks: %s", name,
                   list);
            p->sec_bad[SEC_TASK] = 1;
            p->task = NULL;
        } else if (t != p->task) {
            ml_error sub;
            if (t->cfg_size > sizeof p->cfg.task_cfg ||
                schema_defaults(t->fields, &p->cfg.task_cfg, &sub)) {
                report(p, NODE_AT(sel_key), "task '%s' has a broken schema table", t->name);
                p->sec_bad[SEC_TASK] = 1;
                p->task = NULL;
            } else {
                p->task = t;
                snprintf(p->cfg.task, sizeof p->cfg.task, "%s", t->name);
            }
        }
    }
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < map->data.mapping.pairs.top;
         q++) {
        const char *k = pair_key(p, map, q, SEC_TASK);
        if (!k || !strcmp(k, "name") || !p->task) continue;
        const yaml_node_t *kn = yaml_document_get_node(p->doc, q->key);
        const yaml_node_t *vn = yaml_document_get_node(p->doc, q->value);
        const ml_field *f = schema_find(p->task->fields, k);
        if (f) {
            set_value(p, SEC_TASK, f, &p->cfg.task_cfg, kn, vn);
        } else {
            char msg[PROBLEM_MSG];
            unknown_key(msg, sizeof msg, k, SEC_TASK, p->task->fields, NULL, NULL);
            report(p, NODE_AT(kn), "%s", msg);
            p->sec_bad[SEC_TASK] = 1;
        }
    }
}

/* parse_model: the model section; the mixer is selected first. */
static void parse_model(spec_parse *p, const yaml_node_t *key, const yaml_node_t *val) {
    const yaml_node_t *map = section_mapping(p, SEC_MODEL, key, val), *sel_key = NULL;
    if (!map) return;
    const char *name = selector(p, SEC_MODEL, map, "mixer", &sel_key);
    if (name && !*name) {
        p->mixer = NULL;
    } else if (name) {
        const ml_mixer *m = mixer_find(name);
        if (!m) {
            char list[256];
            name_list(1, list, sizeof list);
            report(p, NODE_AT(sel_key), "model.mixer: unknown mixer '%s'; valid mixers: %s",
                   name, list);
            p->sec_bad[SEC_MODEL] = 1;
            p->mixer = NULL;
        } else if (m != p->mixer) {
            ml_error sub;
            if (m->cfg_size > sizeof p->cfg.model.mixer_cfg ||
                schema_defaults(m->fields, &p->cfg.model.mixer_cfg, &sub)) {
                report(p, NODE_AT(sel_key), "mixer '%s' has a broken schema table", m->name);
                p->sec_bad[SEC_MODEL] = 1;
                p->mixer = NULL;
            } else {
                p->mixer = m;
                snprintf(p->cfg.model.mixer, sizeof p->cfg.model.mixer, "%s", m->name);
            }
        }
    }
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < map->data.mapping.pairs.top;
         q++) {
        const char *k = pair_key(p, map, q, SEC_MODEL);
        if (!k || !strcmp(k, "mixer")) continue;
        const yaml_node_t *kn = yaml_document_get_node(p->doc, q->key);
        const yaml_node_t *vn = yaml_document_get_node(p->doc, q->value);
        void *obj = NULL;
        const ml_field *f = model_field(&p->cfg.model, p->mixer, k, &obj);
        if (f) {
            set_value(p, SEC_MODEL, f, obj, kn, vn);
        } else if (p->mixer) {
            /* Without a valid mixer the key may well be one of its keys:
             * only the mixer name is reported then. */
            char msg[PROBLEM_MSG];
            unknown_key(msg, sizeof msg, k, SEC_MODEL, model_fields, p->mixer->fields,
                        p->mixer);
            report(p, NODE_AT(kn), "%s", msg);
            p->sec_bad[SEC_MODEL] = 1;
        }
    }
}

/* parse_fixed: a section with one fixed table (train, eval). */
static void parse_fixed(spec_parse *p, int section, const ml_field *fields, void *obj,
                        const yaml_node_t *key, const yaml_node_t *val) {
    const yaml_node_t *map = section_mapping(p, section, key, val);
    if (!map) return;
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < map->data.mapping.pairs.top;
         q++) {
        const char *k = pair_key(p, map, q, section);
        if (!k) continue;
        const yaml_node_t *kn = yaml_document_get_node(p->doc, q->key);
        const yaml_node_t *vn = yaml_document_get_node(p->doc, q->value);
        const ml_field *f = schema_find(fields, k);
        if (f) {
            set_value(p, section, f, obj, kn, vn);
        } else {
            char msg[PROBLEM_MSG];
            unknown_key(msg, sizeof msg, k, section, fields, NULL, NULL);
            report(p, NODE_AT(kn), "%s", msg);
            p->sec_bad[section] = 1;
        }
    }
}

/* parse_root: the top-level mapping. */
static void parse_root(spec_parse *p, const yaml_node_t *root) {
    if (root->type != YAML_MAPPING_NODE) {
        report(p, NODE_AT(root),
               "a spec must be a mapping with the sections name, description, task, model, "
               "train, eval; got %s", node_kind(root));
        return;
    }
    for (yaml_node_pair_t *q = root->data.mapping.pairs.start; q < root->data.mapping.pairs.top;
         q++) {
        const char *k = pair_key(p, root, q, SEC_TOP);
        if (!k) continue;
        const yaml_node_t *kn = yaml_document_get_node(p->doc, q->key);
        const yaml_node_t *vn = yaml_document_get_node(p->doc, q->value);
        const ml_field *label = schema_find(label_fields, k);
        int section = SEC_TOP;
        for (int s = 1; s < SEC_COUNT; s++)
            if (!strcmp(k, section_names[s])) section = s;
        if (section != SEC_TOP) {
            p->sec_line[section] = (int)kn->start_mark.line + 1;
            p->sec_column[section] = (int)kn->start_mark.column + 1;
        }
        if (label) {
            set_value(p, SEC_TOP, label, &p->cfg, kn, vn);
        } else if (section == SEC_TASK) {
            parse_task(p, kn, vn);
        } else if (section == SEC_MODEL) {
            parse_model(p, kn, vn);
        } else if (section == SEC_TRAIN) {
            parse_fixed(p, SEC_TRAIN, train_fields, &p->cfg.train, kn, vn);
        } else if (section == SEC_EVAL) {
            parse_fixed(p, SEC_EVAL, eval_fields, &p->cfg.eval, kn, vn);
        } else if (!strcmp(k, "sweep")) {
            report(p, NODE_AT(kn), "'sweep' is reserved: sweeps are not supported by "
                   "`memlab train`; give one configuration per spec");
        } else {
            char msg[PROBLEM_MSG];
            unknown_key(msg, sizeof msg, k, SEC_TOP, top_keys, NULL, NULL);
            report(p, NODE_AT(kn), "%s", msg);
        }
    }
}

/* run_cross_checks: every cross check whose section parsed cleanly, each
 * reported at the key its message names. */
static void run_cross_checks(spec_parse *p) {
    for (int c = 0; c < CROSS_COUNT; c++) {
        int s = cross_section[c];
        if (p->sec_bad[s] || (c == CROSS_TASK && !p->task) || (c == CROSS_MIXER && !p->mixer))
            continue;
        ml_error sub;
        if (!cross_check(&p->cfg, c, &sub)) continue;
        char key[64], msg[PROBLEM_MSG];
        message_key(sub.msg, key, sizeof key);
        int line = p->sec_line[s], column = p->sec_column[s];
        for (int i = 0; key[0] && i < p->n_keys; i++) {
            if (p->keys[i].section == s && !strcmp(p->keys[i].key, key)) {
                line = p->keys[i].line;
                column = p->keys[i].column;
                break;
            }
        }
        qualify(s, sub.msg, msg, sizeof msg);
        report(p, line, column, "%s", msg);
    }
}

/* position_of: 1-based line and column of byte offset off of the text;
 * columns count characters, as libyaml's marks do. */
static void position_of(const spec_parse *p, size_t off, int *line, int *column) {
    int l = 1, c = 1;
    for (size_t i = 0; i < off && i < p->len; i++) {
        unsigned char ch = (unsigned char)p->text[i];
        if (ch == '\n') l++, c = 1;
        else if ((ch & 0xC0) != 0x80) c++;
    }
    *line = l;
    *column = c;
}

/* byte_at: the byte at 0-based (line, column) of the text, or -1. */
static int byte_at(const spec_parse *p, size_t line, size_t column) {
    size_t i = 0;
    for (size_t l = 0; l < line && i < p->len; i++)
        if (p->text[i] == '\n') l++;
    for (size_t c = 0; i < p->len && p->text[i] != '\n'; i++) {
        if (((unsigned char)p->text[i] & 0xC0) == 0x80) continue;
        if (c++ == column) return (unsigned char)p->text[i];
    }
    return -1;
}

/* report_yaml_error: libyaml's problem, at its position. Reader errors
 * (invalid UTF-8, control characters: a binary file) carry a byte offset
 * rather than a mark. */
static void report_yaml_error(spec_parse *p, const yaml_parser_t *y) {
    const char *problem = y->problem ? y->problem : "unknown problem";
    if (y->error == YAML_READER_ERROR) {
        int line, column;
        position_of(p, y->problem_offset, &line, &column);
        report(p, line, column, "not a YAML text file: %s (byte 0x%02x at offset %zu)", problem,
               (unsigned)y->problem_value & 0xFFu, y->problem_offset);
    } else if (y->error == YAML_SCANNER_ERROR || y->error == YAML_PARSER_ERROR ||
               y->error == YAML_COMPOSER_ERROR) {
        const yaml_mark_t *m = &y->problem_mark, *cm = &y->context_mark;
        int tab = byte_at(p, m->line, m->column) == '\t';
        char context[160] = "";
        if (y->context && (cm->line != m->line || cm->column != m->column))
            snprintf(context, sizeof context, " (%s started at line %d, column %d)", y->context,
                     (int)cm->line + 1, (int)cm->column + 1);
        else if (y->context)
            snprintf(context, sizeof context, " (%s)", y->context);
        report(p, (int)m->line + 1, (int)m->column + 1, "YAML syntax error: %s%s%s", problem,
               context, tab ? "; tabs cannot be used for indentation in YAML" : "");
    } else {
        report(p, 0, 0, "YAML error: %s", problem);
    }
}

/* problem_before: ordering of problems: by position, positionless last, then
 * in discovery order. */
static int problem_before(const spec_problem *a, const spec_problem *b) {
    long la = a->line ? a->line : 0x7fffffff, lb = b->line ? b->line : 0x7fffffff;
    if (la != lb) return la < lb;
    if (a->column != b->column) return a->column < b->column;
    return a->order < b->order;
}

/* finish: turn the collected problems into e (see the file header). */
static int finish(spec_parse *p, ml_error *e) {
    for (int i = 1; i < p->n_problems; i++) {
        spec_problem tmp = p->problems[i];
        int j = i;
        for (; j > 0 && problem_before(&tmp, &p->problems[j - 1]); j--)
            p->problems[j] = p->problems[j - 1];
        p->problems[j] = tmp;
    }
    const spec_problem *first = &p->problems[0];
    ML_FAIL_AT(e, p->file, first->line, first->column, "%s", first->msg);
    if (!e) return -1;
    /* Leave room for the closing "N more problems" line. */
    size_t cap = sizeof e->msg - 80, used = strlen(e->msg);
    int shown = 1;
    for (; shown < p->n_problems; shown++) {
        const spec_problem *q = &p->problems[shown];
        char line[PROBLEM_MSG + 600];
        if (q->line)
            snprintf(line, sizeof line, "\n%s:%d:%d: %s", p->file, q->line, q->column, q->msg);
        else
            snprintf(line, sizeof line, "\n%s: %s", p->file, q->msg);
        size_t n = strlen(line);
        if (used + n >= cap) break;
        memcpy(e->msg + used, line, n + 1);
        used += n;
    }
    int more = p->n_problems - shown + p->n_dropped;
    if (more > 0)
        snprintf(e->msg + used, sizeof e->msg - used, "\n%.400s: %d more problem%s not shown",
                 p->file, more, more == 1 ? "" : "s");
    return -1;
}

int spec_load_string(const char *text, size_t len, const char *name, run_config *out,
                     ml_error *e) {
    /* About 20 KB: on the heap, since callers may run on small stacks. */
    spec_parse *p = calloc(1, sizeof *p);
    if (!p) return ML_FAIL(e, "out of memory");
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    const yaml_node_t *root = NULL;
    int have_doc = 0, rc = -1;
    p->file = name ? name : "<spec>";
    p->text = text;
    p->len = len;
    p->doc = &doc;
    if (config_defaults(&p->cfg, e)) {
        free(p);
        return -1;
    }
    p->task = task_find(p->cfg.task);
    p->mixer = mixer_find(p->cfg.model.mixer);
    if (!yaml_parser_initialize(&parser)) {
        free(p);
        return ML_FAIL(e, "out of memory (YAML parser)");
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        report_yaml_error(p, &parser);
        goto done;
    }
    have_doc = 1;
    root = yaml_document_get_root_node(&doc);
    if (!root) {
        report(p, 1, 1, "the spec is empty: expected a mapping with the sections name, "
               "description, task, model, train, eval");
        goto done;
    }
    if (!yaml_parser_load(&parser, &extra)) {
        report_yaml_error(p, &parser);
    } else {
        const yaml_node_t *r2 = yaml_document_get_root_node(&extra);
        if (r2) report(p, NODE_AT(r2), "a spec holds one YAML document; this is a second one");
        yaml_document_delete(&extra);
    }
    parse_root(p, root);
    run_cross_checks(p);
done:
    if (p->n_problems || p->n_dropped) {
        finish(p, e);
    } else {
        *out = p->cfg;
        rc = 0;
    }
    if (have_doc) yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    free(p);
    return rc;
}

int spec_load_file(const char *path, run_config *out, ml_error *e) {
    /* Read by chunks rather than by size: a spec may come from a pipe
     * (process substitution), and a directory fails here with EISDIR. */
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = -1;
    FILE *f = fopen(path, "rb");
    if (!f) return ML_FAIL_AT(e, path, 0, 0, "cannot open spec: %s", strerror(errno));
    for (;;) {
        if (len == cap) {
            /* One byte beyond the limit tells a spec of exactly the limit
             * from a larger file. */
            if (cap == (size_t)MAX_SPEC_BYTES + 1) {
                ML_FAIL_AT(e, path, 0, 0, "file is larger than %ld bytes; it cannot be a spec",
                           MAX_SPEC_BYTES);
                goto fail;
            }
            size_t ncap = cap ? 2 * cap : 4096;
            if (ncap > (size_t)MAX_SPEC_BYTES + 1) ncap = (size_t)MAX_SPEC_BYTES + 1;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                ML_FAIL_AT(e, path, 0, 0, "out of memory reading the spec");
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
        ML_FAIL_AT(e, path, 0, 0, "cannot read spec: %s", strerror(errno));
        goto fail;
    }
    buf[len] = '\0';
    rc = spec_load_string(buf, len, path, out, e);
fail:
    free(buf);
    fclose(f);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Overrides.                                                                 */

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
