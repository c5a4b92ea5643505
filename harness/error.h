/* error.h: errors as values.
 *
 * Library code never prints and never exits: it fills an ml_error and returns
 * -1. The error carries the message, the source location that raised it, and,
 * for configuration errors, the spec file with its line and column (1-based;
 * 0 when unknown). Only main() prints. */
#ifndef MEMLAB_ERROR_H
#define MEMLAB_ERROR_H

typedef struct ml_error {
    char msg[1024];      /* human-readable problem, may hold several lines */
    const char *src;     /* C source file that raised it */
    int src_line;        /* and its line */
    char file[512];      /* spec file (config errors), "" otherwise */
    int line, column;    /* position in that file, 1-based, 0 = none */
} ml_error;

/* ml_fail: fill e (if not NULL) and return -1. */
int ml_fail(ml_error *e, const char *src, int src_line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* ml_fail_at: as ml_fail, with a spec position. */
int ml_fail_at(ml_error *e, const char *src, int src_line, const char *file, int line,
               int column, const char *fmt, ...) __attribute__((format(printf, 7, 8)));
/* ml_error_format: "file:line:column: message" (or just the message) into buf. */
void ml_error_format(const ml_error *e, char *buf, unsigned long cap);

#define ML_FAIL(e, ...) ml_fail((e), __FILE__, __LINE__, __VA_ARGS__)
#define ML_FAIL_AT(e, f, l, c, ...) ml_fail_at((e), __FILE__, __LINE__, (f), (l), (c), __VA_ARGS__)

#endif
