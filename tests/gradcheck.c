/* gradcheck.c: central finite-difference gradient checking (see gradcheck.h). */
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>

#include "test.h"

size_t gradcheck(double (*loss)(void *ctx), void *ctx, const gc_tensor *ts, int nt,
                 double h, double atol, double rtol, size_t max_per_tensor, gc_result *r) {
    gc_result res = {0};
    double worst_excess = -1.0;
    for (int ti = 0; ti < nt; ti++) {
        const gc_tensor *t = &ts[ti];
        size_t stride = 1;
        if (max_per_tensor > 0 && t->n > max_per_tensor)
            stride = (t->n + max_per_tensor - 1) / max_per_tensor;
        for (size_t i = 0; i < t->n; i += stride) {
            double keep = t->x[i];
            t->x[i] = keep + h;
            double lp = loss(ctx);
            t->x[i] = keep - h;
            double lm = loss(ctx);
            t->x[i] = keep;
            double num = (lp - lm) / (2.0 * h);
            double a = t->g[i];
            double err = fabs(a - num);
            double scale = fmax(fabs(a), fabs(num));
            double rel = scale > 0 ? err / scale : 0.0;
            double excess = err - (atol + rtol * scale);
            res.checked++;
            if (err > res.max_abs_err) res.max_abs_err = err;
            if (scale > atol && rel > res.max_rel_err) res.max_rel_err = rel;
            if (!(excess <= 0)) res.bad++; /* also catches NaN */
            if (!(excess <= worst_excess)) {
                worst_excess = isnan(excess) ? INFINITY : excess;
                snprintf(res.worst, sizeof res.worst, "%s[%zu]: analytic %.10g numeric %.10g",
                         t->name, i, a, num);
            }
        }
    }
    if (r) *r = res;
    return res.bad;
}

void gradcheck_expect(const char *label, double (*loss)(void *ctx), void *ctx,
                      const gc_tensor *ts, int nt) {
    gc_result r;
    size_t bad = gradcheck(loss, ctx, ts, nt, GC_H, GC_ATOL, GC_RTOL, 0, &r);
    CHECK(bad == 0, "%s: %zu of %zu gradient elements off; worst %s", label, bad, r.checked,
          r.worst);
    CHECK(r.checked > 0, "%s: no gradient element checked", label);
}

double max_rel_diff(const double *a, const double *b, size_t n) {
    double m = 0.0, s = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as the max */
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return m / (s > 1e-300 ? s : 1e-300);
}
