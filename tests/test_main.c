/* test_main.c: the unit-test runner. Lists every test file's cases once.
 *
 * Usage: test_units [-v] [substring]   runs the tests whose name contains the
 * substring (all by default); -v prints notes. Closing line:
 * "N passed, N failed"; exit status 1 when any failed. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "blas.h"
#include "test.h"

/* A private build (-DTEST_PRIVATE) links only some suites: the others are
 * weak and skipped. The full build links every tests/test_*.c. */
#ifdef TEST_PRIVATE
#define SUITE extern const test_case __attribute__((weak))
#else
#define SUITE extern const test_case
#endif
SUITE tests_ops[];
SUITE tests_attention[];
SUITE tests_spec[];
SUITE tests_mqar[];
SUITE tests_db[];
SUITE tests_model[];
SUITE tests_twin[];
SUITE tests_linfam[];
SUITE tests_mom[];
SUITE tests_sweep[];
SUITE tests_tasks[];
SUITE tests_perf[];
SUITE tests_slots[];
SUITE tests_fit[];
SUITE tests_cluster[];
SUITE tests_memcache[];

static const test_case *const suites[] = {
    tests_ops,  tests_attention, tests_spec,  tests_mqar,  tests_db,    tests_model,
    tests_twin, tests_linfam,    tests_mom,   tests_sweep, tests_tasks, tests_perf,
    tests_slots, tests_fit, tests_cluster, tests_memcache};

static int current_failures;
static int verbose;

void test_fail(const char *file, int line, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (current_failures < 20) printf("    %s:%d: %s\n", file, line, msg);
    current_failures++;
}

void test_note(const char *fmt, ...) {
    if (!verbose) return;
    va_list ap;
    va_start(ap, fmt);
    printf("    note: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

void test_fill(double *x, size_t n, unsigned long long seed, double lo, double hi) {
    unsigned long long s = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        unsigned long long r = s * 0x2545F4914F6CDD1Dull;
        x[i] = lo + (hi - lo) * (double)(r >> 11) * (1.0 / 9007199254740992.0);
    }
}

const char *test_dir(void) {
    const char *d = getenv("MEMLAB_TESTS");
    return d && *d ? d : "tests";
}

int main(int argc, char **argv) {
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-v")) verbose = 1;
        else filter = argv[i];
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    blas_select_core(NULL, 0);
    int passed = 0, failed = 0;
    for (size_t s = 0; s < sizeof suites / sizeof suites[0]; s++) {
        if (!suites[s]) continue;
        for (const test_case *t = suites[s]; t->name; t++) {
            if (filter && !strstr(t->name, filter)) continue;
            current_failures = 0;
            clock_t c0 = clock();
            t->fn();
            double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
            if (current_failures == 0) {
                passed++;
                printf("ok   %-52s %6.2fs\n", t->name, secs);
            } else {
                failed++;
                printf("FAIL %-52s (%d failed checks)\n", t->name, current_failures);
            }
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
