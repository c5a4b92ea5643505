/* adamw.c: the optimiser step, the learning-rate schedule and gradient
 * clipping.
 *
 * All three work on flat arrays, because the model keeps parameters,
 * gradients and both moments each in one allocation: one call covers the whole
 * model. Which tensors get weight decay (the model passes wd = 0 for the
 * others) and when to skip a step after a NaN are the trainer's decisions.
 *
 * Speed: the loops vectorise (OpenMP simd) and, for long arrays, are shared
 * among memlab's threads (OpenBLAS's thread count, set by --threads), each
 * thread on one contiguous block; the norm's per-block sums are added in block
 * order, so it is reproducible at a given thread count. */
#include <math.h>
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"
#include "parallel.h"

/* Fewest elements per thread worth a parallel region. */
#define OPT_MIN_WORK (1L << 16)

/* Threads for n elements (parallel.h); 1 (and no OpenMP region) when
 * single-threaded. */
static int opt_threads(size_t n) { return ml_par_threads((long)n, (double)n, OPT_MIN_WORK); }

/* Block [i0, i1) of n elements for thread t of nt. */
static void opt_block(size_t n, int t, int nt, size_t *i0, size_t *i1) {
    *i0 = n * (size_t)t / (size_t)nt;
    *i1 = n * (size_t)(t + 1) / (size_t)nt;
}

/* The AdamW update of elements [i0, i1) with the bias corrections c1, c2, the
 * gradient taken as g gs (gs 1: as it is; g * 1 has g's bits). */
static void adamw_range(real *p, const real *g, real *m, real *v, size_t i0, size_t i1,
                        real lr, real beta1, real beta2, real eps, real wd, real c1, real c2,
                        real gs) {
#pragma omp simd
    for (size_t i = i0; i < i1; i++) {
        real gi = g[i] * gs;
        real mi = beta1 * m[i] + (1 - beta1) * gi;
        real vi = beta2 * v[i] + (1 - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        real mhat = mi * c1, vhat = vi * c2;
        p[i] -= lr * (mhat / (RSQRTF(vhat) + eps) + wd * p[i]);
    }
}

/* One AdamW step at step t >= 1 over n parameters, as torch.optim.AdamW:
 * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; mhat = m/(1-b1^t);
 * vhat = v/(1-b2^t); p -= lr (mhat / (sqrt(vhat) + eps) + wd p).
 * The decay uses p before this step's update. */
void adamw_step(real *p, const real *g, real *m, real *v, size_t n, real lr, real beta1,
                real beta2, real eps, real wd, int t) {
    adamw_step_scaled(p, g, m, v, n, lr, beta1, beta2, eps, wd, t, 1);
}

/* The same on the gradient g * gs, g left as it is: grad_clip_scale's scale
 * applied here costs no pass of its own over the gradients. */
void adamw_step_scaled(real *p, const real *g, real *m, real *v, size_t n, real lr, real beta1,
                       real beta2, real eps, real wd, int t, real gs) {
    /* bias corrections in double: 1 - b2^t is tiny for small t and float pow
     * would lose most of its digits */
    real c1 = (real)(1.0 / (1.0 - pow((double)beta1, t)));
    real c2 = (real)(1.0 / (1.0 - pow((double)beta2, t)));
    int nt = opt_threads(n);
    if (nt == 1) {
        adamw_range(p, g, m, v, 0, n, lr, beta1, beta2, eps, wd, c1, c2, gs);
        return;
    }
    unsigned mode = ml_fp_mode();
#pragma omp parallel num_threads(nt)
    {
        ml_fp_mode_set(mode);
#ifdef _OPENMP
        int k = omp_get_thread_num(), nk = omp_get_num_threads();
#else
        int k = 0, nk = 1;
#endif
        size_t i0, i1;
        opt_block(n, k, nk, &i0, &i1);
        adamw_range(p, g, m, v, i0, i1, lr, beta1, beta2, eps, wd, c1, c2, gs);
    }
}

/* Learning rate at 0-based step of total steps. Warmup: step s < warmup gets
 * lr_max (s+1)/warmup, so the first step is lr_max/warmup and step warmup-1
 * is the peak lr_max. Afterwards a half cosine from lr_max at the peak step
 * (step 0 when warmup = 0) down to lr_min at step total-1; steps past the end
 * stay at lr_min. If the warmup does not end before the last step, there is no
 * decay phase. */
double lr_schedule(int step, int total, int warmup, double lr_max, double lr_min) {
    if (step < 0) step = 0;
    if (warmup > 0 && step < warmup) return lr_max * (double)(step + 1) / warmup;
    int peak = warmup > 0 ? warmup - 1 : 0;
    int span = total - 1 - peak;
    if (span <= 0) return lr_max;
    double frac = (double)(step - peak) / span;
    if (frac > 1.0) frac = 1.0;
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + cos(M_PI * frac));
}

/* Sum of g[i]^2 over [i0, i1), in double. */
static double sumsq_range(const real *g, size_t i0, size_t i1) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (size_t i = i0; i < i1; i++) s += (double)g[i] * g[i];
    return s;
}

/* sqrt(sum g^2) over n elements, accumulated in double (a float sum over
 * millions of parameters would drift). NaN if any element is NaN. */
double grad_norm(const real *g, size_t n) {
    int nt = opt_threads(n);
    if (nt == 1) return sqrt(sumsq_range(g, 0, n));
    double part[ML_PAR_MAX_SLOTS];
    int used = nt;
    unsigned mode = ml_fp_mode();
#pragma omp parallel num_threads(nt)
    {
        ml_fp_mode_set(mode);
#ifdef _OPENMP
        int k = omp_get_thread_num(), nk = omp_get_num_threads();
#else
        int k = 0, nk = 1;
#endif
        if (k == 0) used = nk;
        size_t i0, i1;
        opt_block(n, k, nk, &i0, &i1);
        part[k] = sumsq_range(g, i0, i1);
    }
    double s = 0.0;
    for (int k = 0; k < used; k++) s += part[k];
    return sqrt(s);
}

/* Rescale g[n] to norm max_norm when its norm exceeds max_norm > 0; returns
 * the norm before clipping. A non-finite norm is returned but not applied:
 * scaling by 0 or NaN would erase the evidence of the divergence the caller
 * is about to record. */
double grad_clip_scale(const real *g, size_t n, double max_norm, real *scale) {
    double norm = grad_norm(g, n);
    *scale = max_norm > 0 && isfinite(norm) && norm > max_norm ? (real)(max_norm / norm) : 1;
    return norm;
}

double grad_clip(real *g, size_t n, double max_norm) {
    real s;
    double norm = grad_clip_scale(g, n, max_norm, &s);
    if (s != 1) {
        int nt = opt_threads(n);
        if (nt == 1) {
#pragma omp simd
            for (size_t i = 0; i < n; i++) g[i] *= s;
        } else {
            unsigned mode = ml_fp_mode();
#pragma omp parallel num_threads(nt)
            {
                ml_fp_mode_set(mode);
#pragma omp for simd schedule(static)
                for (size_t i = 0; i < n; i++) g[i] *= s;
            }
        }
    }
    return norm;
}
