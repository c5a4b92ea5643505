/* fixture.h: reading the PyTorch twin's fixture files (tests/twin/twin.py).
 *
 * Format (little-endian): "MLFX", u32 version (1), u32 entry count; per entry:
 * u32 name length, the name bytes (no NUL), u32 kind (0 float64 tensor, 1
 * int32 tensor, 2 UTF-8 text), u32 ndim, u32 dims[ndim], then the data
 * (text: ndim 1, dims[0] = byte length). Nothing may follow the last entry.
 *
 * The loader decodes bytes explicitly, so it does not depend on the host's
 * byte order or on the alignment of the data in the file, and it refuses a bad
 * file (wrong magic or version, truncation, impossible sizes, unknown kind,
 * duplicate names, trailing bytes) with an ml_error instead of crashing. What
 * the entries mean (spec, input, weights, gradients) is the caller's business:
 * see tests/test_twin.c. */
#ifndef MEMLAB_FIXTURE_H
#define MEMLAB_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define FX_VERSION 1
#define FX_MAX_NDIM 8

typedef enum { FX_F64 = 0, FX_I32 = 1, FX_TEXT = 2 } fx_kind;

typedef struct fx_entry {
    char *name;             /* NUL-terminated */
    fx_kind kind;
    int ndim;
    size_t dims[FX_MAX_NDIM];
    size_t n;               /* elements: product of dims (text: bytes) */
    double *f64;            /* [n] when kind == FX_F64, else NULL */
    int32_t *i32;           /* [n] when kind == FX_I32, else NULL */
    char *text;             /* n bytes + NUL when kind == FX_TEXT, else NULL */
} fx_entry;

typedef struct fixture {
    fx_entry *entries;      /* [n] in file order */
    int n;
} fixture;

/* Parse the fixture bytes buf[len] into *f (owned by the caller, released
 * with fixture_free). On failure returns -1 with the reason in e and leaves
 * *f empty; on success returns 0. */
int fixture_parse(const void *buf, size_t len, fixture *f, ml_error *e);
/* Read and parse the file at path; errors name the file. Same contract as
 * fixture_parse. */
int fixture_load(const char *path, fixture *f, ml_error *e);
/* The entry named name, or NULL. */
const fx_entry *fixture_get(const fixture *f, const char *name);
/* Release everything fixture_parse allocated and leave *f empty; safe on an
 * empty (zeroed) fixture and when called twice. */
void fixture_free(fixture *f);

#endif
