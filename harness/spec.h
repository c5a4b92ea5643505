/* spec.h: YAML experiment specs -> run_config.
 *
 * A spec has the sections name, description, task, model, train, eval. Every
 * key is checked against the schema tables (config.h, the task table, the
 * mixer table): unknown keys are refused with the closest valid key, wrong
 * types and out-of-range values are refused, and cross-key constraints
 * (task validate, mixer validate) are checked before anything runs. All
 * problems found are reported, each as "file:line:column: message" on its own
 * line; e->file/line/column hold the first. */
#ifndef MEMLAB_SPEC_H
#define MEMLAB_SPEC_H

#include <stddef.h>

#include "config.h"
#include "error.h"

/* Parse the spec file at path into *out (defaults first, then the file). */
int spec_load_file(const char *path, run_config *out, ml_error *e);
/* The same from memory; name is used as the file name in messages. */
int spec_load_string(const char *text, size_t len, const char *name, run_config *out,
                     ml_error *e);
/* Apply one "section.key=value" override (e.g. "train.lr=3e-4") to *cfg with the
 * same key, type and range checks as a spec value; *cfg is unchanged on error.
 * Cross-key constraints are NOT checked here, so that several overrides can be
 * applied in any order: call spec_validate once after the last one. */
int spec_set(run_config *cfg, const char *assignment, ml_error *e);
/* Cross-key validation of a whole config (task and mixer validate, sizes). */
int spec_validate(const run_config *cfg, ml_error *e);

/* Canonical JSON of the config (keys in schema order; a mixer's and a task's
 * own keys only for the chosen ones). Returns the length, or -1 if cap is too
 * small. */
int config_to_json(const run_config *cfg, char *buf, size_t cap);
/* SHA-256 of the canonical JSON, as 64 lowercase hex digits + NUL. */
void config_hash(const run_config *cfg, char hex[65]);

/* Built-in defaults for every section (task mqar, mixer softmax). */
int config_defaults(run_config *cfg, ml_error *e);

#endif
