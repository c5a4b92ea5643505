/* test.h: the unit-test framework of memlab's test binary.
 *
 * A test is a function; a file exposes its tests as a NULL-terminated
 * `test_case` array listed once in test_main.c. CHECK records a failure with
 * its location and keeps going, so one run reports every broken assertion.
 * The runner prints one line per test and closes with "N passed, N failed",
 * exiting non-zero when anything failed. */
#ifndef MEMLAB_TEST_H
#define MEMLAB_TEST_H

#include <stddef.h>

typedef struct test_case {
    const char *name;
    void (*fn)(void);
} test_case;

/* Record a failed assertion of the running test (printf-style detail). */
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Print an informational note under the running test (shown with -v). */
void test_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) test_fail(__FILE__, __LINE__, __VA_ARGS__);           \
    } while (0)

/* Deterministic test data: fill x[n] with uniform values in [lo, hi) from a
 * private generator seeded by seed. */
void test_fill(double *x, size_t n, unsigned long long seed, double lo, double hi);

/* Absolute path helpers: the directory of the source tree's tests/ folder, set
 * from the MEMLAB_TESTS environment variable or "tests". */
const char *test_dir(void);

#endif
