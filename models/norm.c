/* norm.c: LayerNorm and RMSNorm over the channel axis, forward and backward.
 *
 * Dimensions: N rows (usually B*T), C channels.
 * Row statistics are accumulated in double so that float training does not
 * lose the variance of rows with a large mean; everything stored stays `real`.
 * Choosing the norm and its eps is the model's business.
 *
 * Speed: the row sums are OpenMP simd reductions (vectorised; the order of the
 * double additions differs from a serial loop in the last bits), and rows are
 * shared among memlab's threads (OpenBLAS's thread count, set by --threads).
 * In the backward, each thread sums its block of rows into its own dw/db
 * partial (on its stack, for C <= NORM_MAX_PART), and the partials are added
 * in thread order: reproducible at a given thread count. With one thread no
 * OpenMP region is entered at all (a forked sweep worker never touches the
 * OpenMP runtime). */
#include <math.h>
#include <stddef.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"
#include "parallel.h"

/* Fewest elements per thread worth a parallel region. */
#define NORM_MIN_WORK (1L << 15)
/* Widest row whose backward is threaded (the per-thread partials of dw and db
 * live on the thread's stack: 2 * NORM_MAX_PART reals). */
#define NORM_MAX_PART 4096

/* Threads for N rows of C (parallel.h). */
static int norm_threads(int N, int C) { return ml_par_threads(N, (double)N * C, NORM_MIN_WORK); }

/* Rows [i0, i1) of the thread's block when n threads share N rows. */
static void norm_block(int N, int t, int n, int *i0, int *i1) {
    *i0 = (int)((long)N * t / n);
    *i1 = (int)((long)N * (t + 1) / n);
}

/* LayerNorm forward of rows [i0, i1) (contract of layernorm_forward). */
static void ln_rows(real *out, real *mean, real *rstd, const real *x, const real *w,
                    const real *b, int i0, int i1, int C, real eps) {
    for (int i = i0; i < i1; i++) {
        const real *xi = x + (size_t)i * C;
        real *oi = out + (size_t)i * C;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++) s += xi[c];
        double m = s / C;
        /* two passes: the one-pass E[x^2] - E[x]^2 cancels badly */
        double v = 0.0;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) {
            double d = xi[c] - m;
            v += d * d;
        }
        v /= C;
        real mr = (real)m;
        real rs = (real)(1.0 / sqrt(v + (double)eps));
#pragma omp simd
        for (int c = 0; c < C; c++) oi[c] = (xi[c] - mr) * rs * w[c] + b[c];
        mean[i] = mr;
        rstd[i] = rs;
    }
}

/* out[N,C] = (x - mean) * rstd * w + b, rstd = 1/sqrt(var + eps) with the
 * biased variance (as torch.nn.LayerNorm). Saves mean[N] and rstd[N] for the
 * backward. out may alias x: each row is read completely before it is written. */
void layernorm_forward(real *out, real *mean, real *rstd, const real *x, const real *w,
                       const real *b, int N, int C, real eps) {
    int nt = norm_threads(N, C);
    if (nt == 1) {
        ln_rows(out, mean, rstd, x, w, b, 0, N, C, eps);
        return;
    }
    unsigned mode = ml_fp_mode();
#pragma omp parallel num_threads(nt)
    {
        ml_fp_mode_set(mode);
#ifdef _OPENMP
        int t = omp_get_thread_num(), n = omp_get_num_threads();
#else
        int t = 0, n = 1;
#endif
        int i0, i1;
        norm_block(N, t, n, &i0, &i1);
        ln_rows(out, mean, rstd, x, w, b, i0, i1, C, eps);
    }
}

/* Rows [i0, i1) of the layernorm backward; dw/db (may be NULL) accumulate. */
static void ln_back_rows(real *dx, real *dw, real *db, const real *dout, const real *x,
                         const real *w, const real *mean, const real *rstd, int i0, int i1,
                         int C) {
    for (int i = i0; i < i1; i++) {
        const real *xi = x + (size_t)i * C;
        const real *di = dout + (size_t)i * C;
        real m = mean[i], rs = rstd[i];
        double sg = 0.0, sgn = 0.0;
#pragma omp simd reduction(+ : sg, sgn)
        for (int c = 0; c < C; c++) {
            real n = (xi[c] - m) * rs;
            real g = di[c] * w[c];
            sg += g;
            sgn += (double)g * n;
        }
        if (dw) {
#pragma omp simd
            for (int c = 0; c < C; c++) dw[c] += di[c] * ((xi[c] - m) * rs);
        }
        if (db) {
#pragma omp simd
            for (int c = 0; c < C; c++) db[c] += di[c];
        }
        if (!dx) continue;
        real mg = (real)(sg / C), mgn = (real)(sgn / C);
        real *dxi = dx + (size_t)i * C;
#pragma omp simd
        for (int c = 0; c < C; c++) {
            real n = (xi[c] - m) * rs;
            dxi[c] += rs * (di[c] * w[c] - mg - n * mgn);
        }
    }
}

/* Inside a parallel region of n threads, after a barrier: thread t adds
 * columns of its slice of the partials part[0..n)[0..C) into g, in thread
 * order (so the sum does not depend on scheduling). */
static void add_parts(real *g, real *const *part, int t, int n, int C) {
    int c0 = (int)((long)C * t / n), c1 = (int)((long)C * (t + 1) / n);
    for (int k = 0; k < n; k++) {
        const real *p = part[k];
#pragma omp simd
        for (int c = c0; c < c1; c++) g[c] += p[c];
    }
}

/* With n = (x - mean) * rstd and g = dout * w (per row):
 *   dx += rstd * (g - mean(g) - n * mean(g n)),  dw += dout n,  db += dout.
 * mean and rstd must be the ones layernorm_forward saved for this x. Any
 * gradient may be NULL. */
void layernorm_backward(real *dx, real *dw, real *db, const real *dout, const real *x,
                        const real *w, const real *mean, const real *rstd, int N, int C) {
    int nt = C <= NORM_MAX_PART ? norm_threads(N, C) : 1;
    if (nt == 1) {
        ln_back_rows(dx, dw, db, dout, x, w, mean, rstd, 0, N, C);
        return;
    }
    real *pw[ML_PAR_MAX_SLOTS], *pb[ML_PAR_MAX_SLOTS];
    unsigned mode = ml_fp_mode();
#pragma omp parallel num_threads(nt)
    {
        ml_fp_mode_set(mode);
#ifdef _OPENMP
        int t = omp_get_thread_num(), n = omp_get_num_threads();
#else
        int t = 0, n = 1;
#endif
        /* this thread's partials of dw and db, on its own stack */
        real part[2 * NORM_MAX_PART];
        pw[t] = part;
        pb[t] = part + NORM_MAX_PART;
        memset(part, 0, sizeof part);
        int i0, i1;
        norm_block(N, t, n, &i0, &i1);
        ln_back_rows(dx, dw ? pw[t] : NULL, db ? pb[t] : NULL, dout, x, w, mean, rstd, i0, i1,
                     C);
#pragma omp barrier
        if (dw) add_parts(dw, pw, t, n, C);
        if (db) add_parts(db, pb, t, n, C);
        /* the partials live on the threads' stacks: nobody leaves before all
         * have read them */
#pragma omp barrier
    }
}

/* RMSNorm forward of rows [i0, i1) (contract of rmsnorm_forward). */
static void rms_rows(real *out, real *rstd, const real *x, const real *w, int i0, int i1,
                     int C, real eps) {
    for (int i = i0; i < i1; i++) {
        const real *xi = x + (size_t)i * C;
        real *oi = out + (size_t)i * C;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++) s += (double)xi[c] * xi[c];
        real rs = (real)(1.0 / sqrt(s / C + (double)eps));
#pragma omp simd
        for (int c = 0; c < C; c++) oi[c] = xi[c] * rs * w[c];
        rstd[i] = rs;
    }
}

/* out[N,C] = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps); saves rstd[N].
 * out may alias x. */
void rmsnorm_forward(real *out, real *rstd, const real *x, const real *w, int N, int C,
                     real eps) {
    int nt = norm_threads(N, C);
    if (nt == 1) {
        rms_rows(out, rstd, x, w, 0, N, C, eps);
        return;
    }
    unsigned mode = ml_fp_mode();
#pragma omp parallel num_threads(nt)
    {
        ml_fp_mode_set(mode);
#ifdef _OPENMP
        int t = omp_get_thread_num(), n = omp_get_num_threads();
#else
        int t = 0, n = 1;
#endif
        int i0, i1;
        norm_block(N, t, n, &i0, &i1);
        rms_rows(out, rstd, x, w, i0, i1, C, eps);
    }
}

/* RMSNorm backward of rows [i0, i1); dw (may be NULL) accumulates. */
static void rms_back_rows(real *dx, real *dw, const real *dout, const real *x, const real *w,
                          const real *rstd, int i0, int i1, int C) {
    for (int i = i0; i < i1; i++) {
        const real *xi = x + (size_t)i * C;
        const real *di = dout + (size_t)i * C;
        real rs = rstd[i];
        double sgn = 0.0;
#pragma omp simd reduction(+ : sgn)
        for (int c = 0; c < C; c++) sgn += (double)(di[c] * w[c]) * (xi[c] * rs);
        if (dw) {
#pragma omp simd
            for (int c = 0; c < C; c++) dw[c] += di[c] * (xi[c] * rs);
        }
        if (!dx) continue;
        real mgn = (real)(sgn / C);
        real *dxi = dx + (size_t)i * C;
#pragma omp simd
        for (int c = 0; c < C; c++) dxi[c] += rs * (di[c] * w[c] - xi[c] * rs * mgn);
    }
}

/* With n = x * rstd and g = dout * w (per row):
 *   dx += rstd * (g - n * mean(g n)),  dw += dout n.
 * rstd must be the one rmsnorm_forward saved for this x. Either gradient may
 * be NULL. */
void rmsnorm_backward(real *dx, real *dw, const real *dout, const real *x, const real *w,
                      const real *rstd, int N, int C) {
    int nt = C <= NORM_MAX_PART ? norm_threads(N, C) : 1;
    if (nt == 1) {
        rms_back_rows(dx, dw, dout, x, w, rstd, 0, N, C);
        return;
    }
    real *pw[ML_PAR_MAX_SLOTS];
    unsigned mode = ml_fp_mode();
#pragma omp parallel num_threads(nt)
    {
        ml_fp_mode_set(mode);
#ifdef _OPENMP
        int t = omp_get_thread_num(), n = omp_get_num_threads();
#else
        int t = 0, n = 1;
#endif
        real part[NORM_MAX_PART];
        pw[t] = part;
        memset(part, 0, sizeof part);
        int i0, i1;
        norm_block(N, t, n, &i0, &i1);
        rms_back_rows(dx, dw ? pw[t] : NULL, dout, x, w, rstd, i0, i1, C);
#pragma omp barrier
        if (dw) add_parts(dw, pw, t, n, C);
#pragma omp barrier
    }
}
