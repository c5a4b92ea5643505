/* error.c: filling and formatting ml_error (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int ml_fail(ml_error *e, const char *src, int src_line, const char *fmt, ...) {
    if (!e) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->src = src;
    e->src_line = src_line;
    e->file[0] = '\0';
    e->line = e->column = 0;
    return -1;
}

int ml_fail_at(ml_error *e, const char *src, int src_line, const char *file, int line,
               int column, const char *fmt, ...) {
    if (!e) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->src = src;
    e->src_line = src_line;
    snprintf(e->file, sizeof e->file, "%s", file ? file : "");
    e->line = line;
    e->column = column;
    return -1;
}

void ml_error_format(const ml_error *e, char *buf, unsigned long cap) {
    if (e->file[0] && e->line > 0)
        snprintf(buf, cap, "%s:%d:%d: %s", e->file, e->line, e->column, e->msg);
    else if (e->file[0])
        snprintf(buf, cap, "%s: %s", e->file, e->msg);
    else
        snprintf(buf, cap, "%s", e->msg);
}
