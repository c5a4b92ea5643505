/* fixture.c: the fixture reader (see fixture.h for the format).
 *
 * Every length read from the file is checked against the bytes that remain
 * before anything is allocated, so a corrupt count or dimension can neither
 * overflow a size computation nor ask for a huge allocation. The reader knows
 * nothing about which entries a fixture should hold. */
#include "fixture.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names longer than this are taken as corruption rather than data. */
#define FX_MAX_NAME 4096

/* A read cursor over the file bytes. */
typedef struct fx_reader {
    const unsigned char *p;
    size_t left;
} fx_reader;

/* Read a little-endian u32; 0 on success, -1 if fewer than 4 bytes remain. */
static int rd_u32(fx_reader *r, uint32_t *out) {
    if (r->left < 4) return -1;
    *out = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 |
           (uint32_t)r->p[3] << 24;
    r->p += 4;
    r->left -= 4;
    return 0;
}

/* Little-endian u64 at p (the caller has checked the 8 bytes exist). */
static uint64_t le_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* Decode one entry at the cursor into *x (x zeroed by the caller; on failure
 * whatever was allocated stays in *x for the caller to free). idx is the
 * entry's position, for messages. */
static int read_entry(fx_reader *r, fx_entry *x, int idx, ml_error *e) {
    uint32_t len, kind, ndim;
    if (rd_u32(r, &len)) return ML_FAIL(e, "entry %d: truncated before its name length", idx);
    if (len == 0 || len > FX_MAX_NAME)
        return ML_FAIL(e, "entry %d: name length %u out of range 1..%d", idx, len, FX_MAX_NAME);
    if (r->left < len) return ML_FAIL(e, "entry %d: truncated inside its name", idx);
    if (memchr(r->p, '\0', len)) return ML_FAIL(e, "entry %d: name holds a NUL byte", idx);
    x->name = malloc((size_t)len + 1);
    if (!x->name) return ML_FAIL(e, "entry %d: out of memory", idx);
    memcpy(x->name, r->p, len);
    x->name[len] = '\0';
    r->p += len;
    r->left -= len;

    if (rd_u32(r, &kind) || rd_u32(r, &ndim))
        return ML_FAIL(e, "entry '%s': truncated in its header", x->name);
    if (kind > FX_TEXT) return ML_FAIL(e, "entry '%s': unknown kind %u", x->name, kind);
    x->kind = (fx_kind)kind;
    if (ndim < 1 || ndim > FX_MAX_NDIM)
        return ML_FAIL(e, "entry '%s': ndim %u out of range 1..%d", x->name, ndim, FX_MAX_NDIM);
    if (kind == FX_TEXT && ndim != 1)
        return ML_FAIL(e, "entry '%s': text must have ndim 1, not %u", x->name, ndim);
    x->ndim = (int)ndim;

    size_t esize = kind == FX_F64 ? 8 : kind == FX_I32 ? 4 : 1;
    size_t n = 1;
    for (uint32_t i = 0; i < ndim; i++) {
        uint32_t d;
        if (rd_u32(r, &d)) return ML_FAIL(e, "entry '%s': truncated in its dims", x->name);
        x->dims[i] = d;
        if (d != 0 && n > SIZE_MAX / esize / d)
            return ML_FAIL(e, "entry '%s': the element count overflows", x->name);
        n *= d;
    }
    x->n = n;
    /* Checked before allocating, so a corrupt dim cannot ask for a huge block. */
    size_t bytes = n * esize;
    if (bytes > r->left)
        return ML_FAIL(e, "entry '%s': truncated: %zu data bytes, %zu left", x->name, bytes,
                       r->left);

    const unsigned char *p = r->p;
    if (kind == FX_F64) {
        x->f64 = malloc(n ? n * sizeof *x->f64 : 1);
        if (!x->f64) return ML_FAIL(e, "entry '%s': out of memory", x->name);
        for (size_t i = 0; i < n; i++) {
            uint64_t u = le_u64(p + 8 * i);
            memcpy(&x->f64[i], &u, sizeof u);
        }
    } else if (kind == FX_I32) {
        x->i32 = malloc(n ? n * sizeof *x->i32 : 1);
        if (!x->i32) return ML_FAIL(e, "entry '%s': out of memory", x->name);
        for (size_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                         (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            memcpy(&x->i32[i], &u, sizeof u);
        }
    } else {
        x->text = malloc(n + 1);
        if (!x->text) return ML_FAIL(e, "entry '%s': out of memory", x->name);
        memcpy(x->text, p, n);
        x->text[n] = '\0';
    }
    r->p += bytes;
    r->left -= bytes;
    return 0;
}

int fixture_parse(const void *buf, size_t len, fixture *f, ml_error *e) {
    fx_reader r = {buf, len};
    uint32_t version, count;
    memset(f, 0, sizeof *f);
    if (len < 4 || memcmp(buf, "MLFX", 4) != 0)
        return ML_FAIL(e, "not a fixture: the file does not start with \"MLFX\"");
    r.p += 4;
    r.left -= 4;
    if (rd_u32(&r, &version) || rd_u32(&r, &count))
        return ML_FAIL(e, "truncated fixture header");
    if (version != FX_VERSION)
        return ML_FAIL(e, "fixture version %u, this reader knows %d", version, FX_VERSION);
    /* The smallest entry (1-byte name, empty dims) takes 17 bytes, which
     * bounds a believable count by the file size. */
    if (count > r.left / 17)
        return ML_FAIL(e, "%u entries cannot fit in the %zu bytes that follow the header", count,
                       r.left);
    f->entries = calloc(count ? count : 1, sizeof *f->entries);
    if (!f->entries) return ML_FAIL(e, "out of memory for %u entries", count);
    f->n = (int)count;
    for (int i = 0; i < f->n; i++) {
        if (read_entry(&r, &f->entries[i], i, e)) goto fail;
        for (int j = 0; j < i; j++)
            if (!strcmp(f->entries[j].name, f->entries[i].name)) {
                ML_FAIL(e, "entry '%s' appears twice", f->entries[i].name);
                goto fail;
            }
    }
    if (r.left != 0) {
        ML_FAIL(e, "%zu bytes follow the last of %d entries", r.left, f->n);
        goto fail;
    }
    return 0;
fail:
    fixture_free(f);
    return -1;
}

int fixture_load(const char *path, fixture *f, ml_error *e) {
    unsigned char *buf = NULL;
    FILE *fp = NULL;
    memset(f, 0, sizeof *f);
    fp = fopen(path, "rb");
    if (!fp) {
        ML_FAIL(e, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    if (fseek(fp, 0, SEEK_END) != 0) {
        ML_FAIL(e, "%s: cannot seek: %s", path, strerror(errno));
        goto fail;
    }
    long size = ftell(fp);
    if (size < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        ML_FAIL(e, "%s: cannot tell its size", path);
        goto fail;
    }
    buf = malloc(size ? (size_t)size : 1);
    if (!buf) {
        ML_FAIL(e, "%s: out of memory for %ld bytes", path, size);
        goto fail;
    }
    if (fread(buf, 1, (size_t)size, fp) != (size_t)size) {
        ML_FAIL(e, "%s: short read", path);
        goto fail;
    }
    fclose(fp);
    fp = NULL;
    if (fixture_parse(buf, (size_t)size, f, e)) {
        if (e) {
            char msg[sizeof e->msg];
            snprintf(msg, sizeof msg, "%s", e->msg);
            snprintf(e->msg, sizeof e->msg, "%.400s: %.600s", path, msg);
        }
        goto fail;
    }
    free(buf);
    return 0;
fail:
    if (fp) fclose(fp);
    free(buf);
    return -1;
}

const fx_entry *fixture_get(const fixture *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->entries[i].name, name)) return &f->entries[i];
    return NULL;
}

void fixture_free(fixture *f) {
    if (f->entries)
        for (int i = 0; i < f->n; i++) {
            free(f->entries[i].name);
            free(f->entries[i].f64);
            free(f->entries[i].i32);
            free(f->entries[i].text);
        }
    free(f->entries);
    f->entries = NULL;
    f->n = 0;
}
