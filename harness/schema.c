/* schema.c: typed configuration fields (see schema.h).
 *
 * Parses value text into a field of a config struct with type, range and
 * choice checks, formats a field back as JSON value text, and finds the
 * nearest key for "did you mean" hints. Defaults go through the same parser
 * as spec values, so a default that violates its own range is caught the
 * first time the table is used. What a key means, and which table a key
 * belongs to, is left to the tables (config.c, tasks, mixers) and to the spec
 * parser (spec.c); nothing here knows about YAML beyond the scalar forms it
 * accepts.
 *
 * Accepted text, per type:
 *   FT_INT, FT_LONG  decimal integers ("64", "-3", "+5"); scientific forms
 *                    only when they denote an exact integer ("1e5",
 *                    "2.5e3"). "64.0" and "64.5" are refused (a float where
 *                    an integer belongs is usually a mistake), and so are
 *                    leading zeros ("010" is octal in YAML 1.1).
 *   FT_REAL          decimal floats as YAML 1.1 writes them ("1e-3",
 *                    "3.0e-4", ".5", "-2", "1E3"); no hex, inf or nan.
 *   FT_BOOL          true/false, True/False, TRUE/FALSE only: YAML 1.1's
 *                    yes/no/on/off are refused on purpose.
 *   FT_ENUM          exactly one of the choices.
 *   FT_STRING        valid UTF-8 shorter than ML_STR bytes. */
#include "schema.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest string schema_edit_distance compares; longer inputs are cut, which
 * only matters for keys far too long to be worth a suggestion. */
#define DIST_MAX 255

/* Number forms recognised by scan_number. */
enum { NUM_NONE = 0, NUM_INT, NUM_REAL };

/* scan_number: classify s as an optionally signed decimal integer (NUM_INT),
 * a decimal float with a fraction and/or exponent (NUM_REAL), or anything else
 * (NUM_NONE). *has_exp is set when an exponent is present, *leading_zero when
 * the integer part has a superfluous leading zero ("010"). */
static int scan_number(const char *s, int *has_exp, int *leading_zero) {
    const char *p = s;
    int int_digits = 0, frac_digits = 0, dot = 0;
    *has_exp = 0;
    *leading_zero = 0;
    if (*p == '+' || *p == '-') p++;
    const char *int_start = p;
    while (*p >= '0' && *p <= '9') p++, int_digits++;
    if (int_digits > 1 && *int_start == '0') *leading_zero = 1;
    if (*p == '.') {
        dot = 1;
        p++;
        while (*p >= '0' && *p <= '9') p++, frac_digits++;
    }
    if (int_digits + frac_digits == 0) return NUM_NONE;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        int exp_digits = 0;
        while (*p >= '0' && *p <= '9') p++, exp_digits++;
        if (exp_digits == 0) return NUM_NONE;
        *has_exp = 1;
    }
    if (*p != '\0') return NUM_NONE;
    return dot || *has_exp ? NUM_REAL : NUM_INT;
}

/* short_repr: whether x survives a round trip through 6 significant digits,
 * i.e. whether it is a "round" number a table author would have written. */
static int short_repr(double x) {
    char b[40];
    snprintf(b, sizeof b, "%g", x);
    return strtod(b, NULL) == x;
}

/* type_limits: the representable range of field type t. */
static void type_limits(ml_field_type t, double *lo, double *hi) {
    switch (t) {
    case FT_INT:
        *lo = INT_MIN;
        *hi = INT_MAX;
        break;
    case FT_LONG:
        *lo = (double)LONG_MIN;
        *hi = (double)LONG_MAX;
        break;
    default:
        *lo = -DBL_MAX;
        *hi = DBL_MAX;
        break;
    }
}

/* describe_range: "must be in [a, b]", "must be >= a", ... for field f.
 * Exclusive bounds are written as such: a table expresses "> 0" as the
 * smallest positive double and "< 1" as the largest double below 1, and a
 * user should read "(0, ...", not "[4.94066e-324, ...". */
static void describe_range(const ml_field *f, char *buf, size_t cap) {
    double tlo, thi;
    type_limits(f->type, &tlo, &thi);
    int has_lo = f->min > tlo, has_hi = f->max < thi;
    double lo = f->min, hi = f->max;
    int lo_open = 0, hi_open = 0;
    if (f->type == FT_REAL) {
        double down = nextafter(lo, -INFINITY), up = nextafter(hi, INFINITY);
        if (has_lo && short_repr(down) && (down == 0 || !short_repr(lo))) lo = down, lo_open = 1;
        if (has_hi && short_repr(up) && (up == 0 || !short_repr(hi))) hi = up, hi_open = 1;
    }
    if (has_lo && has_hi)
        snprintf(buf, cap, "must be in %c%.15g, %.15g%c", lo_open ? '(' : '[', lo, hi,
                 hi_open ? ')' : ']');
    else if (has_lo)
        snprintf(buf, cap, "must be %s %.15g", lo_open ? ">" : ">=", lo);
    else if (has_hi)
        snprintf(buf, cap, "must be %s %.15g", hi_open ? "<" : "<=", hi);
    else
        snprintf(buf, cap, "is out of range");
}

/* range_fail: the out-of-range error for text given to field f. */
static int range_fail(const ml_field *f, const char *text, ml_error *e) {
    char r[128];
    describe_range(f, r, sizeof r);
    return ML_FAIL(e, "%s is out of range: %s", text, r);
}

/* utf8_seq_len: length of the valid UTF-8 sequence starting at s (at most n
 * bytes available), or 0 when it is not valid (overlong, surrogate, beyond
 * U+10FFFF, truncated). */
static size_t utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0;
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
    if (cp > 0x10FFFF) return 0;
    return len;
}

/* set_integer: FT_INT / FT_LONG. */
static int set_integer(const ml_field *f, void *slot, const char *text, ml_error *e) {
    int has_exp, leading_zero;
    int kind = scan_number(text, &has_exp, &leading_zero);
    long long v;
    if (kind == NUM_NONE || (kind == NUM_REAL && !has_exp))
        return ML_FAIL(e, "expected an integer, got '%s'", text);
    if (leading_zero)
        return ML_FAIL(e, "'%s': leading zeros are ambiguous (octal in YAML 1.1); drop them",
                       text);
    if (kind == NUM_INT) {
        errno = 0;
        v = strtoll(text, NULL, 10);
        if (errno == ERANGE) return range_fail(f, text, e);
    } else {
        double d = strtod(text, NULL);
        if (!isfinite(d) || fabs(d) >= 9223372036854775808.0) return range_fail(f, text, e);
        if (d != floor(d)) return ML_FAIL(e, "expected an integer, got '%s'", text);
        v = (long long)d;
    }
    double tlo, thi;
    type_limits(f->type, &tlo, &thi);
    double dv = (double)v;
    if (dv < f->min || dv > f->max || dv < tlo || dv > thi) return range_fail(f, text, e);
    /* The double comparison above can round near 2^63; the exact check is
     * what makes the conversion below safe. */
    if (f->type == FT_INT) {
        if (v < INT_MIN || v > INT_MAX) return range_fail(f, text, e);
        *(int *)slot = (int)v;
    } else {
        if (v < LONG_MIN || v > LONG_MAX) return range_fail(f, text, e);
        *(long *)slot = (long)v;
    }
    return 0;
}

/* set_real: FT_REAL. */
static int set_real(const ml_field *f, void *slot, const char *text, ml_error *e) {
    int has_exp, leading_zero;
    if (scan_number(text, &has_exp, &leading_zero) == NUM_NONE)
        return ML_FAIL(e, "expected a number, got '%s'", text);
    double d = strtod(text, NULL);
    if (!isfinite(d)) return range_fail(f, text, e);
    if (d < f->min || d > f->max) return range_fail(f, text, e);
    *(double *)slot = d;
    return 0;
}

/* set_bool: FT_BOOL. */
static int set_bool(void *slot, const char *text, ml_error *e) {
    if (!strcmp(text, "true") || !strcmp(text, "True") || !strcmp(text, "TRUE")) {
        *(int *)slot = 1;
        return 0;
    }
    if (!strcmp(text, "false") || !strcmp(text, "False") || !strcmp(text, "FALSE")) {
        *(int *)slot = 0;
        return 0;
    }
    return ML_FAIL(e, "expected true or false, got '%s'", text);
}

/* set_enum: FT_ENUM; the error lists every choice. */
static int set_enum(const ml_field *f, void *slot, const char *text, ml_error *e) {
    for (int i = 0; f->choices && f->choices[i]; i++) {
        if (!strcmp(f->choices[i], text)) {
            *(int *)slot = i;
            return 0;
        }
    }
    char list[512] = "";
    size_t used = 0;
    for (int i = 0; f->choices && f->choices[i] && used < sizeof list; i++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "",
                                 f->choices[i]);
    return ML_FAIL(e, "'%s' is not one of: %s", text, list);
}

/* set_string: FT_STRING into a char[ML_STR]. */
static int set_string(void *slot, const char *text, ml_error *e) {
    size_t n = strlen(text);
    if (n >= ML_STR)
        return ML_FAIL(e, "text of %zu bytes is longer than the limit of %d", n, ML_STR - 1);
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq_len(s + i, n - i);
        if (!k) return ML_FAIL(e, "text is not valid UTF-8 (byte %zu)", i);
        i += k;
    }
    memcpy(slot, text, n + 1);
    return 0;
}

int schema_set(const ml_field *f, void *obj, const char *text, ml_error *e) {
    void *slot = (char *)obj + f->offset;
    switch (f->type) {
    case FT_INT:
    case FT_LONG: return set_integer(f, slot, text, e);
    case FT_REAL: return set_real(f, slot, text, e);
    case FT_BOOL: return set_bool(slot, text, e);
    case FT_ENUM: return set_enum(f, slot, text, e);
    case FT_STRING: return set_string(slot, text, e);
    }
    return ML_FAIL(e, "field '%s' has an unknown type %d", f->key, (int)f->type);
}

int schema_defaults(const ml_field *fields, void *obj, ml_error *e) {
    for (const ml_field *f = fields; f->key; f++) {
        if (!f->def) return ML_FAIL(e, "field '%s' has no default", f->key);
        ml_error sub;
        if (schema_set(f, obj, f->def, &sub))
            return ML_FAIL(e, "default of '%s' (\"%s\") is invalid: %s", f->key, f->def, sub.msg);
    }
    return 0;
}

const ml_field *schema_find(const ml_field *fields, const char *key) {
    for (const ml_field *f = fields; f->key; f++)
        if (!strcmp(f->key, key)) return f;
    return NULL;
}

int schema_edit_distance(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    if (na > DIST_MAX) na = DIST_MAX;
    if (nb > DIST_MAX) nb = DIST_MAX;
    int row[DIST_MAX + 1];
    for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        int diag = row[0]; /* d[i-1][j-1] */
        row[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int up = row[j]; /* d[i-1][j] */
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[nb];
}

/* lower_copy: s folded to lower case (ASCII) into buf[DIST_MAX + 1]. */
static void lower_copy(char *buf, const char *s) {
    size_t i = 0;
    for (; s[i] && i < DIST_MAX; i++) buf[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] + 32) : s[i];
    buf[i] = '\0';
}

/* is_abbreviation: whether short_s is an abbreviation of long_s: same first
 * letter, at least two characters, and its characters appear in order in
 * long_s ("lr" of "learning_rate", "wd" of "weight_decay"). */
static int is_abbreviation(const char *short_s, const char *long_s) {
    if (strlen(short_s) < 2 || short_s[0] != long_s[0]) return 0;
    const char *p = long_s;
    for (const char *q = short_s; *q; q++) {
        p = strchr(p, *q);
        if (!p) return 0;
        p++;
    }
    return 1;
}

/* A suggestion is either a near miss by edit distance (a typo: at most
 * max(2, len/3) edits, and fewer edits than the typed key has characters so
 * that "x" is never "corrected" to "lr"), or, failing that, one key being an
 * abbreviation of the other ("lernrate" -> "lr", "warmup_steps" -> "warmup"),
 * which edit distance alone misses. Comparison ignores ASCII case. */
const char *schema_closest(const ml_field *fields, const char *key) {
    char k[DIST_MAX + 1], c[DIST_MAX + 1];
    lower_copy(k, key);
    int len = (int)strlen(k);
    int limit = len / 3 > 2 ? len / 3 : 2;
    if (limit >= len) limit = len - 1;
    const char *best = NULL, *best_abbrev = NULL;
    int best_d = INT_MAX, best_abbrev_d = INT_MAX;
    for (const ml_field *f = fields; f->key; f++) {
        lower_copy(c, f->key);
        int d = schema_edit_distance(k, c);
        if (d <= limit && d < best_d) best = f->key, best_d = d;
        if ((is_abbreviation(c, k) || is_abbreviation(k, c)) && d < best_abbrev_d)
            best_abbrev = f->key, best_abbrev_d = d;
    }
    return best ? best : best_abbrev;
}

/* format_json_string: s as a quoted JSON string into buf[cap], escaping
 * quotes, backslashes and control characters; bytes that are not valid UTF-8
 * become U+FFFD so the output is always valid JSON. Truncates (never inside
 * an escape) when cap is too small. */
static void format_json_string(const char *s, char *buf, size_t cap) {
    if (cap == 0) return;
    size_t o = 0, n = strlen(s);
    const unsigned char *u = (const unsigned char *)s;
    char esc[8];
    if (o + 1 < cap) buf[o++] = '"';
    for (size_t i = 0; i < n;) {
        const char *piece = esc;
        size_t plen, adv = 1;
        unsigned char ch = u[i];
        if (ch == '"' || ch == '\\') esc[0] = '\\', esc[1] = (char)ch, plen = 2;
        else if (ch == '\n') memcpy(esc, "\\n", 2), plen = 2;
        else if (ch == '\t') memcpy(esc, "\\t", 2), plen = 2;
        else if (ch == '\r') memcpy(esc, "\\r", 2), plen = 2;
        else if (ch < 0x20) plen = (size_t)snprintf(esc, sizeof esc, "\\u%04x", ch);
        else {
            adv = utf8_seq_len(u + i, n - i);
            if (adv) piece = s + i, plen = adv;
            else memcpy(esc, "\\ufffd", 6), plen = 6, adv = 1;
        }
        if (o + plen + 1 >= cap) break;
        memcpy(buf + o, piece, plen);
        o += plen;
        i += adv;
    }
    if (o + 1 < cap) buf[o++] = '"';
    buf[o] = '\0';
}

void schema_format(const ml_field *f, const void *obj, char *buf, size_t cap) {
    const void *slot = (const char *)obj + f->offset;
    switch (f->type) {
    case FT_INT: snprintf(buf, cap, "%d", *(const int *)slot); return;
    case FT_LONG: snprintf(buf, cap, "%ld", *(const long *)slot); return;
    case FT_REAL: {
        double d = *(const double *)slot;
        /* JSON has no inf or nan; schema_set never stores them, but a struct
         * filled by hand might. */
        if (!isfinite(d)) {
            snprintf(buf, cap, "null");
            return;
        }
        /* The shortest of %.15g, %.16g, %.17g that reads back as the same
         * double: as exact as %.17g, but 0.1 stays "0.1" rather than
         * "0.10000000000000001" in the stored config. */
        char tmp[40];
        for (int digits = 15; digits <= 17; digits++) {
            snprintf(tmp, sizeof tmp, "%.*g", digits, d);
            if (strtod(tmp, NULL) == d) break;
        }
        snprintf(buf, cap, "%s", tmp);
        return;
    }
    case FT_BOOL: snprintf(buf, cap, "%s", *(const int *)slot ? "true" : "false"); return;
    case FT_ENUM: {
        int v = *(const int *)slot, n = 0;
        while (f->choices && f->choices[n]) n++;
        if (v >= 0 && v < n) format_json_string(f->choices[v], buf, cap);
        else snprintf(buf, cap, "null");
        return;
    }
    case FT_STRING: format_json_string((const char *)slot, buf, cap); return;
    }
    snprintf(buf, cap, "null");
}
