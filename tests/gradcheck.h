/* gradcheck.h: central finite differences against analytic gradients.
 *
 * The caller gives a scalar loss function of its own context and a list of
 * tensors (pointer to the values, pointer to the analytic gradient, length).
 * Every element is perturbed by +-h in place and restored; the numeric
 * derivative (L(x+h) - L(x-h)) / 2h is compared with the analytic one.
 * An element passes when |a - n| <= atol + rtol * max(|a|, |n|).
 * Built in double precision only (the kernels compiled with MEMLAB_DOUBLE). */
#ifndef MEMLAB_GRADCHECK_H
#define MEMLAB_GRADCHECK_H

#include <stddef.h>

typedef struct gc_tensor {
    const char *name;
    double *x;        /* values, perturbed in place */
    const double *g;  /* analytic gradient of the loss w.r.t. x */
    size_t n;
} gc_tensor;

typedef struct gc_result {
    double max_abs_err, max_rel_err;
    size_t checked, bad;
    char worst[128]; /* "name[i]: analytic a numeric n" of the worst element */
} gc_result;

/* Default step and tolerances for double precision. */
#define GC_H 1e-5
#define GC_ATOL 1e-7
#define GC_RTOL 1e-5

/* Check every element of every tensor (or at most max_per_tensor evenly spread
 * elements of each when max_per_tensor > 0). Returns the number of failing
 * elements and fills *r. */
size_t gradcheck(double (*loss)(void *ctx), void *ctx, const gc_tensor *ts, int nt,
                 double h, double atol, double rtol, size_t max_per_tensor, gc_result *r);

/* gradcheck with the defaults, CHECKing the result under the given label. */
void gradcheck_expect(const char *label, double (*loss)(void *ctx), void *ctx,
                      const gc_tensor *ts, int nt);

/* Scale-free comparison of two arrays: max |a-b| / max(max|b|, tiny). */
double max_rel_diff(const double *a, const double *b, size_t n);

#endif
