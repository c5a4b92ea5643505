/* schema.h: typed configuration fields, one table per config struct.
 *
 * Every configurable key of memlab (task keys, model keys, each mixer's keys,
 * train keys) is one ml_field row: its name, type, where it lives in its
 * struct, its allowed range or choices, its default (as text, parsed by the
 * same code as a spec value, so help output and behaviour cannot disagree) and
 * a one-line help. The spec parser validates against these tables, the JSON
 * writer serialises from them, `memlab mixers` prints them. */
#ifndef MEMLAB_SCHEMA_H
#define MEMLAB_SCHEMA_H

#include <stddef.h>

#include "error.h"

typedef enum {
    FT_INT,    /* int; range [min, max] */
    FT_LONG,   /* long; range [min, max] */
    FT_REAL,   /* double; range [min, max] */
    FT_BOOL,   /* int 0/1; YAML true/false */
    FT_ENUM,   /* int index into choices (NULL-terminated list of names) */
    FT_STRING  /* char[ML_STR] buffer */
} ml_field_type;

#define ML_STR 256

typedef struct ml_field {
    const char *key;
    ml_field_type type;
    size_t offset;               /* offsetof(struct, member) */
    double min, max;             /* numeric range, inclusive */
    const char *const *choices;  /* FT_ENUM names */
    const char *def;             /* default, as spec text */
    const char *help;
} ml_field;

/* A table is a NULL-key-terminated array of ml_field. */

/* schema_defaults: write every field's default into obj. Returns 0, or -1 if a
 * default itself does not parse (a programming error, reported in e). */
int schema_defaults(const ml_field *fields, void *obj, ml_error *e);
/* schema_find: the field named key, or NULL. */
const ml_field *schema_find(const ml_field *fields, const char *key);
/* schema_closest: the key of fields nearest to key by edit distance, or NULL
 * when nothing is reasonably close. */
const char *schema_closest(const ml_field *fields, const char *key);
/* schema_set: parse text as field f's type into obj, checking range/choices.
 * On failure returns -1 with a message (no position) in e. */
int schema_set(const ml_field *f, void *obj, const char *text, ml_error *e);
/* schema_format: field f of obj as JSON value text (numbers in the shortest
 * form of 15 to 17 digits that reads back as the same double,
 * strings quoted and escaped, booleans true/false, enums as their name). */
void schema_format(const ml_field *f, const void *obj, char *buf, size_t cap);
/* schema_edit_distance: Levenshtein distance between two short strings. */
int schema_edit_distance(const char *a, const char *b);

#endif
