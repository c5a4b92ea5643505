/* matmul.c: the matrix products every kernel runs on (OpenBLAS), and the
 * count of their floating-point operations.
 *
 * Each product adds its operation count to one process-wide counter: 2 M N K
 * for a GEMM, 2 M N for a GEMV, n (n - 1) m for a unit-triangular solve with
 * m right-hand sides. memlab bench reads the counter around a training step,
 * so every mixer gets a GFLOP/s figure from the products it actually ran,
 * and the tests check the analytic formulas of harness/bench.c against it.
 * Element-wise work (norms, exp, feature maps) is not counted anywhere. The
 * counter is atomic: kernels call these from OpenMP regions. A second counter,
 * on only when asked (memlab bench), sums the wall time spent inside the
 * products, so that a step splits into its products and everything else.
 *
 * Threads: OpenBLAS never runs its own thread pool during training. A GEMM
 * large enough to share is cut into one block of output rows or columns per
 * thread (the larger of M and N, edges on multiples of 16 so BLAS's vector
 * kernels see whole panels) and the blocks run through parallel.h, BLAS
 * single-threaded inside; every other product runs single-threaded in the
 * calling thread. Two pools spinning on the same cores (OpenMP's, which the
 * kernels use, and OpenBLAS's) slow each other down: before this rule the
 * mixers whose kernels call BLAS outside a parallel region ran slower on two
 * threads than on one. */
#include <stdatomic.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gemm_bf16.h"
#include "kernels.h"
#include "parallel.h"

#ifdef MEMLAB_DOUBLE
#define cblas_trsm cblas_dtrsm
#else
#define cblas_trsm cblas_strsm
#endif

static _Atomic unsigned long long flop_count;

void ml_flops_add(double n) {
    if (n > 0) atomic_fetch_add_explicit(&flop_count, (unsigned long long)n, memory_order_relaxed);
}

double ml_flops_read(void) {
    return (double)atomic_load_explicit(&flop_count, memory_order_relaxed);
}

void ml_flops_reset(void) { atomic_store_explicit(&flop_count, 0, memory_order_relaxed); }

/* The product clock: nanoseconds inside products (see clock_stop). */
static _Atomic int clock_on;
static _Atomic unsigned long long product_ns;

void ml_products_clock(int on) { atomic_store_explicit(&clock_on, on, memory_order_relaxed); }

double ml_products_seconds(void) {
    return 1e-9 * (double)atomic_load_explicit(&product_ns, memory_order_relaxed);
}

static unsigned long long clock_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

double ml_clock_s(void) { return 1e-9 * (double)clock_ns(); }

/* Nanoseconds of the monotonic clock when the product clock is on, else 0. */
static unsigned long long clock_start(void) {
    return atomic_load_explicit(&clock_on, memory_order_relaxed) ? clock_ns() : 0;
}

/* Adds the time since t0; inside a parallel region of n threads, 1/n of it,
 * the threads being in products together (a GEMM split over the threads, or
 * a kernel's per-head products), so that the sum estimates wall time. */
static void clock_stop(unsigned long long t0) {
    if (!t0) return;
    unsigned long long t1 = clock_ns();
    if (t1 <= t0) return;
    unsigned long long dt = t1 - t0;
#ifdef _OPENMP
    if (omp_in_parallel()) dt /= (unsigned long long)omp_get_num_threads();
#endif
    atomic_fetch_add_explicit(&product_ns, dt, memory_order_relaxed);
}

/* The precision of the GEMMs (gemm_bf16.h): 0 fp32 (OpenBLAS), 1 bf16. The
 * double build always runs OpenBLAS's dgemm. */
static int matmul_bf16;

void ml_matmul_set_bf16(int on) { matmul_bf16 = on; }
int ml_matmul_bf16(void) { return matmul_bf16; }

/* One GEMM in the calling thread at the set precision. */
static void gemm_one(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda,
                     const real *B, int ldb, real beta, real *C, int ldc) {
    unsigned long long t0 = clock_start();
#ifndef MEMLAB_DOUBLE
    if (matmul_bf16)
        gemm_bf16(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
#endif
        cblas_gemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                   M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    clock_stop(t0);
}

/* Fewest multiply-adds per thread worth cutting a GEMM. */
#define GEMM_MIN_WORK (1L << 20)
/* Block edges: multiples of this many rows or columns. */
#define GEMM_PANEL 16

/* OpenBLAS single-threaded for one call outside a parallel region (inside
 * one it already is); returns what to restore. */
static int blas_solo(void) {
    int n = openblas_get_num_threads();
    if (n > 1) openblas_set_num_threads(1);
    return n;
}

static void blas_restore(int n) {
    if (n > 1) openblas_set_num_threads(n);
}

typedef struct gemm_call {
    int ta, tb, M, N, K, lda, ldb, ldc, split_m;
    real alpha, beta;
    const real *A, *B;
    real *C;
} gemm_call;

/* Panels [u0, u1) of the split dimension: rows of C (rows of op(A)) or
 * columns of C (columns of op(B)). */
static void gemm_block(void *ctx, int u0, int u1, int slot) {
    const gemm_call *g = ctx;
    (void)slot;
    int len = g->split_m ? g->M : g->N;
    int i0 = u0 * GEMM_PANEL, i1 = u1 * GEMM_PANEL < len ? u1 * GEMM_PANEL : len;
    if (i0 >= i1) return;
    if (g->split_m) {
        const real *Ai = g->ta ? g->A + i0 : g->A + (size_t)i0 * g->lda;
        gemm_one(g->ta, g->tb, i1 - i0, g->N, g->K, g->alpha, Ai, g->lda, g->B, g->ldb, g->beta,
                 g->C + (size_t)i0 * g->ldc, g->ldc);
    } else {
        const real *Bi = g->tb ? g->B + (size_t)i0 * g->ldb : g->B + i0;
        gemm_one(g->ta, g->tb, g->M, i1 - i0, g->K, g->alpha, g->A, g->lda, Bi, g->ldb, g->beta,
                 g->C + i0, g->ldc);
    }
}

void ml_gemm(int ta, int tb, int M, int N, int K, real alpha, const real *A, int lda,
             const real *B, int ldb, real beta, real *C, int ldc) {
    ml_flops_add(2.0 * M * N * K);
    int split_m = M >= N, len = split_m ? M : N, panels = (len + GEMM_PANEL - 1) / GEMM_PANEL;
    int nt = ml_par_threads(panels, (double)M * N * K, GEMM_MIN_WORK);
    if (nt > 1) {
        gemm_call g = {.ta = ta, .tb = tb, .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb,
                       .ldc = ldc, .split_m = split_m, .alpha = alpha, .beta = beta, .A = A,
                       .B = B, .C = C};
        ml_par_ranges(panels, nt, gemm_block, &g);
        return;
    }
    int blas = blas_solo();
    gemm_one(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    blas_restore(blas);
}

void ml_gemv(int ta, int M, int N, real alpha, const real *A, int lda, const real *x, int incx,
             real beta, real *y, int incy) {
    ml_flops_add(2.0 * M * N);
    int blas = blas_solo();
    unsigned long long t0 = clock_start();
    cblas_gemv(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, M, N, alpha, A, lda, x, incx, beta,
               y, incy);
    clock_stop(t0);
    blas_restore(blas);
}

/* Largest n solved by trsm_small; above it OpenBLAS's blocked solve wins. */
#define TRSM_SMALL_N 64
/* trsm_small's column block: TRSM_NV vectors of 64 bytes, one row of them
 * held in registers. GCC's generic vectors (the unit of the target's widest
 * registers, split in halves where they are narrower); under-aligned, so
 * loads and stores go straight to X's rows. */
typedef real trsm_vec __attribute__((vector_size(64), aligned(sizeof(real))));
enum { TRSM_VL = 64 / sizeof(real), TRSM_NV = 4, TRSM_BW = TRSM_NV * TRSM_VL };

/* The chunkwise delta rules solve systems of at most a chunk's rows (often
 * far fewer in MoM's routed sequences) against a few hundred columns, where
 * OpenBLAS's TRSM runs at a fraction of its GEMM rate (4-26 GFLOP/s on one
 * core here for n 8-64, m 100-512). Substitution row by row instead: for each
 * block of columns, row i accumulates -A_ij x_j over the rows j already
 * solved (in order: ascending for A, descending for A^T) in registers, then
 * is stored; the last columns that fill no block, one at a time. 23-99
 * GFLOP/s on the same shapes. tests/test_ops.c checks it against cblas_dtrsm. */

/* The s-th row to solve, and the coefficient of solved row j in row i. */
static int trsm_row(int ta, int n, int s) { return ta ? n - 1 - s : s; }
static real trsm_coef(int ta, const real *A, int lda, int i, int j) {
    return ta ? A[(size_t)j * lda + i] : A[(size_t)i * lda + j];
}

static void trsm_small(int ta, int n, int m, const real *A, int lda, real *X, int ldx) {
    int c0 = 0;
    for (; c0 + TRSM_BW <= m; c0 += TRSM_BW)
        for (int s = 0; s < n; s++) {
            const int i = trsm_row(ta, n, s);
            real *xi = X + (size_t)i * ldx + c0;
            trsm_vec acc[TRSM_NV];
            for (int v = 0; v < TRSM_NV; v++) acc[v] = *(const trsm_vec *)(xi + v * TRSM_VL);
            for (int t = 0; t < s; t++) {
                const int j = trsm_row(ta, n, t);
                const real a = trsm_coef(ta, A, lda, i, j);
                const real *xj = X + (size_t)j * ldx + c0;
                for (int v = 0; v < TRSM_NV; v++)
                    acc[v] -= a * *(const trsm_vec *)(xj + v * TRSM_VL);
            }
            for (int v = 0; v < TRSM_NV; v++) *(trsm_vec *)(xi + v * TRSM_VL) = acc[v];
        }
    for (int s = 0; c0 < m && s < n; s++) {
        const int i = trsm_row(ta, n, s);
        real *xi = X + (size_t)i * ldx;
        for (int t = 0; t < s; t++) {
            const int j = trsm_row(ta, n, t);
            const real a = trsm_coef(ta, A, lda, i, j);
            const real *xj = X + (size_t)j * ldx;
            for (int c = c0; c < m; c++) xi[c] -= a * xj[c];
        }
    }
}

void ml_trsm_unit_lower(int ta, int n, int m, const real *A, int lda, real *X, int ldx) {
    ml_flops_add((double)n * (n - 1) * m);
    unsigned long long t0 = clock_start();
    if (n <= TRSM_SMALL_N) {
        trsm_small(ta, n, m, A, lda, X, ldx);
    } else {
        int blas = blas_solo();
        cblas_trsm(CblasRowMajor, CblasLeft, CblasLower, ta ? CblasTrans : CblasNoTrans,
                   CblasUnit, n, m, 1, A, lda, X, ldx);
        blas_restore(blas);
    }
    clock_stop(t0);
}
