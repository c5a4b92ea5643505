/* spec.h: YAML experiment specs -> run_config.
 *
 * A spec has the sections name, description, task, model, train, eval, and
 * optionally sweep (several runs: see sweep.h), presets (named overrides) and
 * base (a file this one inherits). Every key is checked against the schema
 * tables (config.h, the task table, the mixer table): unknown keys are
 * refused with the closest valid key, wrong types and out-of-range values are
 * refused, and cross-key constraints (task validate, mixer validate) are
 * checked before anything runs. All problems found are reported, each as
 * "file:line:column: message" on its own line; e->file/line/column hold the
 * first.
 *
 * Layers. A spec document is built from layers, each overriding the one
 * before: the base chain (`base: FILE`, a path relative to the file naming
 * it, inherited recursively, cycles refused), the file itself, the selected
 * preset (`presets: {NAME: {...}}`, chosen by spec_opts.preset) and the
 * command-line overrides (spec_opts.sets, "dotted.key=value"). Mappings merge
 * key by key (a key keeps its place, a new key is appended, the position
 * reported for it is that of the last layer that wrote it); anything else is
 * replaced whole, and so are sweep.zip and each preset. An override of a
 * swept key (sweep.grid or sweep.zip) removes that key from the sweep: the
 * command line pins it. */
#ifndef MEMLAB_SPEC_H
#define MEMLAB_SPEC_H

#include <stddef.h>

#include "config.h"
#include "error.h"

/* Parse the single-run spec file at path into *out (defaults first, then
 * the layers). A `sweep` section is refused: use sweep.h for those. */
int spec_load_file(const char *path, run_config *out, ml_error *e);
/* The same from memory; name is used as the file name in messages and
 * `base` paths are relative to its directory. */
int spec_load_string(const char *text, size_t len, const char *name, run_config *out,
                     ml_error *e);
/* Apply one "section.key=value" override (e.g. "train.lr=3e-4") to *cfg with the
 * same key, type and range checks as a spec value; *cfg is unchanged on error.
 * Cross-key constraints are NOT checked here, so that several overrides can be
 * applied in any order: call spec_validate once after the last one. */
int spec_set(run_config *cfg, const char *assignment, ml_error *e);
/* Cross-key validation of a whole config (task and mixer validate, sizes). */
int spec_validate(const run_config *cfg, ml_error *e);
/* spec_caution: for a valid config that is known to fail (the mixer's
 * caution, mixer.h), the warning "model.key: ..." into msg[cap] and 1; else
 * 0. The document loaders below record it at the key, as a warning. */
int spec_caution(const run_config *cfg, char *msg, size_t cap);

/* Canonical JSON of the config (keys in schema order; a mixer's and a task's
 * own keys only for the chosen ones). Returns the length, or -1 if cap is too
 * small. */
int config_to_json(const run_config *cfg, char *buf, size_t cap);
/* SHA-256 of the canonical JSON, as 64 lowercase hex digits + NUL. */
void config_hash(const run_config *cfg, char hex[65]);

/* Built-in defaults for every section (task mqar, mixer softmax). */
int config_defaults(run_config *cfg, ml_error *e);

/* config_value: the value of dotted key ("model.d_model", "task.name",
 * "train.seed") in cfg as JSON value text (as in config_to_json) into
 * buf[cap]. Returns 0, or -1 when cfg has no such key. */
int config_value(const run_config *cfg, const char *dotted, char *buf, size_t cap);

/* spec_dotted_known: whether dotted names a key some config can have
 * ("section.key", the key in the section's fixed table, the selector, or any
 * task's or mixer's table). Returns 0, or -1 with the reason (and the
 * closest known key when there is one) in msg[cap]. */
int spec_dotted_known(const char *dotted, char *msg, size_t cap);

/* ------------------------------------------------------------------------ */
/* Spec documents: the layered tree behind both loaders, for sweep.c.        */

typedef enum { SPEC_SCALAR, SPEC_MAP, SPEC_LIST } spec_kind;

/* One node of a spec tree. Nodes live as long as their document. */
typedef struct spec_node {
    spec_kind kind;
    const char *file;        /* the file (or "--set ..." argument) it was read from */
    int line, column;        /* 1-based */
    const char *text;        /* SPEC_SCALAR: the value, NUL-terminated */
    size_t len;              /* its length (larger than strlen when it holds a NUL) */
    int quoted;              /* SPEC_SCALAR written quoted: "" is text, not null */
    int bad;                 /* SPEC_MAP: a pair was dropped (duplicate, non-scalar key) */
    int n;                   /* SPEC_MAP: pairs; SPEC_LIST: items */
    struct spec_node **keys; /* SPEC_MAP: the keys (scalars), n of them */
    struct spec_node **vals; /* SPEC_MAP: the values; SPEC_LIST: the items */
} spec_node;

/* How a document is put together (zero-initialised: no preset, no
 * overrides, base files allowed, sweep refused). */
typedef struct spec_opts {
    const char *preset;         /* presets.NAME to apply, NULL for none */
    const char *const *sets;    /* "dotted.key=value" overrides, applied last */
    int n_sets;
    int no_base;                /* refuse `base:` (reads no other file) */
    int allow_sweep;            /* accept a sweep section (sweep.c parses it) */
} spec_opts;

typedef struct spec_doc spec_doc;

/* A value for one key of a run, taken from a sweep: key "section.key";
 * value is the node to parse (positions of value problems), key_node where
 * key problems point (unknown key for the run's mixer). */
typedef struct spec_override {
    const char *key;
    const spec_node *key_node;
    const spec_node *value;
} spec_override;

/* spec_doc_load_file / _string: read the file and its base chain and parse
 * the overrides of o (may be NULL). Problems are collected in the document
 * (spec_doc_finish reports them); NULL only when out of memory (in e). */
spec_doc *spec_doc_load_file(const char *path, const spec_opts *o, ml_error *e);
spec_doc *spec_doc_load_string(const char *text, size_t len, const char *name,
                               const spec_opts *o, ml_error *e);
void spec_doc_free(spec_doc *d);
/* spec_doc_select: build the document's root for a variant: the merged
 * layers, then presets.NAME (NULL: none), then the overrides; `presets` and
 * `base` are removed from it. Reports an unknown preset. Returns 0, or -1
 * when there is no usable root (spec_doc_root is then NULL). */
int spec_doc_select(spec_doc *d, const char *preset);
/* The current root mapping (NULL before select or after a fatal problem). */
const spec_node *spec_doc_root(const spec_doc *d);
/* The names of the presets the layers define, in file order; returns how
 * many (at most cap stored). */
int spec_doc_presets(const spec_doc *d, const char **names, int cap);
/* spec_map_get: the value of key in mapping map, or NULL (also when map is
 * not a mapping). *key_out (may be NULL) gets the key node. */
const spec_node *spec_map_get(const spec_node *map, const char *key, const spec_node **key_out);
/* spec_node_is_null: a plain scalar YAML reads as null ("", ~, null). */
int spec_node_is_null(const spec_node *n);
/* spec_node_kind: "a mapping", "a list" or "a single value", for messages. */
const char *spec_node_kind(const spec_node *n);
/* spec_doc_scalar: a new scalar node of text at the position of `at`. */
const spec_node *spec_doc_scalar(spec_doc *d, const spec_node *at, const char *text);
/* spec_doc_report: record a problem at node `at` (NULL: no position).
 * Identical problems (position and message) are recorded once. */
void spec_doc_report(spec_doc *d, const spec_node *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* spec_doc_context: text appended to the messages reported from now on
 * (e.g. "with preset 'full'"), NULL for none. A problem reported both with
 * and without a context keeps the message without. */
void spec_doc_context(spec_doc *d, const char *context);
/* Whether any problem has been recorded. */
int spec_doc_failed(const spec_doc *d);
/* spec_doc_warnings: the warnings recorded (each message once), one line
 * each, "file:line:column: warning: model.key: ..." into buf[cap]; returns
 * how many. */
int spec_doc_warnings(const spec_doc *d, char *buf, size_t cap);
/* spec_doc_finish: 0 when no problem was recorded; otherwise -1 with every
 * problem in e, sorted by file and position (the format of spec.h's top). */
int spec_doc_finish(const spec_doc *d, ml_error *e);
/* spec_doc_config: the run of the current root with the overrides ov[n]
 * applied, fully checked (keys, values, cross-key constraints) into *out.
 * Returns 0, or -1 after reporting its problems into the document (*out is
 * then unspecified). */
int spec_doc_config(spec_doc *d, const spec_override *ov, int n, run_config *out);
/* spec_doc_json: the current root as JSON text (malloc'd, caller frees;
 * NULL when out of memory). Scalars that are JSON numbers or true/false are
 * written bare, null scalars as null, others as strings, so loading the text
 * again gives the same runs. */
char *spec_doc_json(const spec_doc *d);
/* The main file's text as read (NUL-terminated), and its name. */
const char *spec_doc_source(const spec_doc *d);
const char *spec_doc_file(const spec_doc *d);

#endif
