/* parallel.c: the kernels' thread pool (parallel.h). */
#include "parallel.h"

#include <cblas.h>
#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __SSE__
#include <xmmintrin.h>
#endif

/* Read once: omp_get_num_procs() asks the kernel for the affinity mask on
 * every call (a system call; the kernels ask before every product and
 * parallel region, thousands of times a step), and a count that changed with
 * the mask would no longer match the scratch sized by it. */
int ml_par_slots(void) {
#ifdef _OPENMP
    static _Atomic int slots;
    int n = atomic_load_explicit(&slots, memory_order_relaxed);
    if (n) return n;
    int p = omp_get_num_procs();
    n = p < 1 ? 1 : p > ML_PAR_MAX_SLOTS ? ML_PAR_MAX_SLOTS : p;
    int expect = 0;
    if (!atomic_compare_exchange_strong(&slots, &expect, n)) n = expect;
    return n;
#else
    return 1;
#endif
}

int ml_par_threads(long units, double work, double min_work) {
#ifdef _OPENMP
    if (omp_in_parallel()) return 1;
    long n = openblas_get_num_threads(), s = ml_par_slots();
    if (n > s) n = s;
    if (n > units) n = units;
    if (min_work > 0 && n > work / min_work) n = (long)(work / min_work);
    return n > 1 ? (int)n : 1;
#else
    (void)units, (void)work, (void)min_work;
    return 1;
#endif
}

unsigned ml_fp_mode(void) {
#ifdef __SSE__
    return _mm_getcsr();
#else
    return 0;
#endif
}

void ml_fp_mode_set(unsigned mode) {
#ifdef __SSE__
    _mm_setcsr(mode);
#else
    (void)mode;
#endif
}

void ml_par_ranges(int n, int nt, void (*fn)(void *ctx, int u0, int u1, int slot), void *ctx) {
    if (nt <= 1 || n <= 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    int blas = openblas_get_num_threads();
    unsigned mode = ml_fp_mode();
    openblas_set_num_threads(1);
#pragma omp parallel num_threads(nt)
    {
#ifdef _OPENMP
        int t = omp_get_thread_num(), m = omp_get_num_threads();
#else
        int t = 0, m = 1;
#endif
        ml_fp_mode_set(mode);
        int u0 = (int)((long)n * t / m), u1 = (int)((long)n * (t + 1) / m);
        if (u0 < u1) fn(ctx, u0, u1, t);
    }
    openblas_set_num_threads(blas);
}

/* ml_par_zero's units, and the fewest bytes per thread worth a region (a
 * region costs a few microseconds; 256 KiB take about 20 at one thread's
 * rate). */
#define ZERO_UNIT 4096
#define ZERO_MIN_BYTES (256.0 * 1024)

typedef struct zero_call {
    char *p;
    size_t n, stride, bytes; /* ml_par_zero_rows: n rows, stride, bytes per row */
} zero_call;

static void zero_range(void *ctx, int u0, int u1, int slot) {
    const zero_call *z = ctx;
    (void)slot;
    size_t a = (size_t)u0 * ZERO_UNIT, b = (size_t)u1 * ZERO_UNIT;
    if (b > z->n) b = z->n;
    if (a < b) memset(z->p + a, 0, b - a);
}

void ml_par_zero(void *p, size_t bytes) {
    size_t units = (bytes + ZERO_UNIT - 1) / ZERO_UNIT;
    int nt = units <= INT_MAX ? ml_par_threads((long)units, (double)bytes, ZERO_MIN_BYTES) : 1;
    if (nt <= 1) {
        if (bytes) memset(p, 0, bytes);
        return;
    }
    zero_call z = {p, bytes, 0, 0};
    ml_par_ranges((int)units, nt, zero_range, &z);
}

/* Rows [r0, r1) of an ml_par_zero_rows call. */
static void zero_rows(const zero_call *z, size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; r++) memset(z->p + r * z->stride, 0, z->bytes);
}

static void zero_rows_range(void *ctx, int r0, int r1, int slot) {
    (void)slot;
    zero_rows(ctx, (size_t)r0, (size_t)r1);
}

void ml_par_zero_rows(void *p, size_t rows, size_t stride, size_t bytes) {
    if (!rows || !bytes) return;
    zero_call z = {p, rows, stride, bytes};
    double total = (double)rows * (double)bytes;
    int nt = rows <= INT_MAX ? ml_par_threads((long)rows, total, ZERO_MIN_BYTES) : 1;
    if (nt <= 1) zero_rows(&z, 0, rows);
    else ml_par_ranges((int)rows, nt, zero_rows_range, &z);
}
