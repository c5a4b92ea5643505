/* lm.c: byte-level language modelling on a text file.
 *
 * Any file is valid input: every byte value 0..255 is a token (no decoding,
 * so invalid UTF-8 and NUL bytes are ordinary data); the vocabulary is 256.
 * The default corpus is the Tiny Shakespeare file shipped in data/, named
 * relative to the current directory (run memlab from the repository root or
 * give another path).
 *
 * Split, deterministic: of n bytes the last floor(n * valid_fraction) are the
 * validation part, the rest the training part, and no window crosses the
 * boundary (not even by its last target byte).
 *   train example i:  a window starting at s uniform in [0, n_train - L - 1],
 *                     drawn from rng_seed3(seed, SPLIT_TRAIN, i);
 *   test example i:   the (i mod W)-th consecutive window of the validation
 *                     part, W = (n_val - 1) / L windows; split_size = W, so an
 *                     evaluation covers the validation part at most once.
 * input[t] = byte s + t, target[t] = byte s + t + 1: every position is
 * supervised.
 * Metrics: accuracy (next byte), and from the mean validation loss in nats:
 * bits_per_byte = loss / ln 2, perplexity = exp(loss). The trainer records
 * the loss itself.
 *
 * validate checks the file before any run starts (exists, is a regular file,
 * is readable, is not empty, both parts hold a window) with the path in every
 * message; open reads it once per run. Left to others: batching, the
 * training loop. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "rng.h"
#include "task.h"

typedef struct lm_config {
    char path[ML_STR];     /* the text file */
    int seq_len;           /* L */
    double valid_fraction; /* tail of the file held out for validation */
} lm_config;

typedef struct lm_data {
    unsigned char *bytes;
    long n, n_train; /* train part [0, n_train), validation part [n_train, n) */
} lm_data;

#define LM_DEFAULT_PATH "data/tinyshakespeare.txt"

static const ml_field lm_fields[] = {
    {"path", FT_STRING, offsetof(lm_config, path), 0, 0, NULL, LM_DEFAULT_PATH,
     "text file, any bytes, relative to the current directory"},
    {"seq_len", FT_INT, offsetof(lm_config, seq_len), 1, 1e6, NULL, "128",
     "bytes per training window L"},
    {"valid_fraction", FT_REAL, offsetof(lm_config, valid_fraction), 0.001, 0.9, NULL, "0.1",
     "last fraction of the file held out as the validation (test) split"},
    {NULL, FT_INT, 0, 0, 0, NULL, NULL, NULL},
};

/* Sizes of the two parts of an n-byte file. */
static void split_sizes(long n, double fraction, long *n_train, long *n_val) {
    *n_val = (long)floor((double)n * fraction);
    *n_train = n - *n_val;
}

/* Both parts must hold one window of L inputs and their L targets. */
static int check_size(const lm_config *c, long n, ml_error *e) {
    long n_train, n_val;
    if (n == 0) return ML_FAIL(e, "path: '%s' is empty", c->path);
    split_sizes(n, c->valid_fraction, &n_train, &n_val);
    if (n_train < (long)c->seq_len + 1 || n_val < (long)c->seq_len + 1)
        return ML_FAIL(e,
                       "path: '%s' has %ld bytes, too short for one sequence: the training "
                       "part has %ld and the validation part (valid_fraction %g) %ld bytes, "
                       "each needs seq_len + 1 = %ld",
                       c->path, n, n_train, c->valid_fraction, n_val, (long)c->seq_len + 1);
    return 0;
}

/* The file at c->path as an open stream and its size; -1 with the path and
 * the reason when it is missing, a directory, not a regular file or not
 * readable. */
static FILE *open_file(const lm_config *c, long *size, ml_error *e) {
    struct stat st;
    if (!c->path[0]) {
        ML_FAIL(e, "path: no file given");
        return NULL;
    }
    if (stat(c->path, &st)) {
        ML_FAIL(e, "path: cannot open '%s': %s", c->path, strerror(errno));
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        ML_FAIL(e, "path: '%s' is a directory, not a text file", c->path);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        ML_FAIL(e, "path: '%s' is not a regular file", c->path);
        return NULL;
    }
    FILE *f = fopen(c->path, "rb");
    if (!f) {
        ML_FAIL(e, "path: cannot read '%s': %s", c->path, strerror(errno));
        return NULL;
    }
    *size = (long)st.st_size;
    return f;
}

/* Ranges, then the file: readable, regular, and long enough for a window in
 * each part. Runs before any run starts; reads nothing but the metadata. */
static int lm_validate(const void *cfgp, ml_error *e) {
    const lm_config *c = cfgp;
    if (c->seq_len < 1) return ML_FAIL(e, "seq_len: must be at least 1 (got %d)", c->seq_len);
    if (!(c->valid_fraction >= 0.001 && c->valid_fraction <= 0.9))
        return ML_FAIL(e, "valid_fraction: must be in [0.001, 0.9] (got %g)", c->valid_fraction);
    long size;
    FILE *f = open_file(c, &size, e);
    if (!f) return -1;
    fclose(f);
    return check_size(c, size, e);
}

/* Read the whole file once; its size is checked again on what was read (the
 * file may have changed since validate). */
static int lm_open(const void *cfgp, void **out, ml_error *e) {
    const lm_config *c = cfgp;
    long size;
    FILE *f = open_file(c, &size, e);
    if (!f) return -1;
    lm_data *d = calloc(1, sizeof *d);
    unsigned char *buf = malloc((size_t)size + 1);
    if (!d || !buf) {
        fclose(f);
        free(d), free(buf);
        return ML_FAIL(e, "path: out of memory for the %ld bytes of '%s'", size, c->path);
    }
    size_t got = fread(buf, 1, (size_t)size, f);
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(d), free(buf);
        return ML_FAIL(e, "path: cannot read '%s': read error", c->path);
    }
    if (check_size(c, (long)got, e)) {
        free(d), free(buf);
        return -1;
    }
    long n_val;
    d->bytes = buf;
    d->n = (long)got;
    split_sizes(d->n, c->valid_fraction, &d->n_train, &n_val);
    *out = d;
    return 0;
}

/* Release what lm_open returned. */
static void lm_close(void *data) {
    lm_data *d = data;
    free(d->bytes);
    free(d);
}

/* Every byte value is a token: V = 256; L = seq_len. */
static int lm_vocab_size(const void *cfg) {
    (void)cfg;
    return 256;
}
static int lm_seq_len(const void *cfg) { return ((const lm_config *)cfg)->seq_len; }

/* Validation windows W = (n_val - 1) / L; the train split is unbounded. */
static long lm_split_size(const void *cfgp, const void *data, int split) {
    const lm_config *c = cfgp;
    const lm_data *d = data;
    if (split != SPLIT_TEST || !d) return 0;
    return (d->n - d->n_train - 1) / c->seq_len;
}

/* Example `index` of `split` (windows in the header). */
static void lm_generate(const void *cfgp, const void *data, uint64_t seed, int split, long index,
                        int *input, int *target) {
    const lm_config *c = cfgp;
    const lm_data *d = data;
    const int L = c->seq_len;
    long s;
    if (split == SPLIT_TEST) {
        long windows = lm_split_size(c, d, SPLIT_TEST);
        s = d->n_train + (index % windows) * L;
    } else {
        ml_rng r;
        rng_seed3(&r, seed, (uint64_t)split, (uint64_t)index);
        s = (long)rng_below(&r, (uint64_t)(d->n_train - L));
    }
    for (int t = 0; t < L; t++) {
        input[t] = d->bytes[s + t];
        target[t] = d->bytes[s + t + 1];
    }
}

/* accuracy (next byte), bits_per_byte and perplexity of the mean loss. */
static int lm_score(const void *cfgp, const ml_eval_totals *t, ml_metric *out, int cap) {
    (void)cfgp;
    double loss = t->positions > 0 ? t->loss_sum / (double)t->positions : 0.0;
    int n = 0;
    if (n < cap) task_metric(&out[n++], "test", "accuracy", task_accuracy_micro(t));
    if (n < cap) task_metric(&out[n++], "test", "bits_per_byte", loss / log(2.0));
    if (n < cap) task_metric(&out[n++], "test", "perplexity", exp(loss));
    return n;
}

const ml_task task_lm = {
    .name = "lm",
    .help = "byte-level language modelling on a text file (validation loss, bits per byte, "
            "perplexity)",
    .fields = lm_fields,
    .cfg_size = sizeof(lm_config),
    .validate = lm_validate,
    .vocab_size = lm_vocab_size,
    .seq_len = lm_seq_len,
    .open = lm_open,
    .close = lm_close,
    .generate = lm_generate,
    .split_size = lm_split_size,
    .score = lm_score,
};
