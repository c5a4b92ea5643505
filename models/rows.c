/* rows.c: gathering and scattering rows by index, for the layers that run on
 * a subset of positions (the last block under a head that reads a few rows:
 * model.c, linear.c, softmax_attention.c and the mixers with out_rows). */
#include <string.h>

#include "kernels.h"

void rows_gather(real *dst, const real *src, int ld, const int *rows, int S, int C) {
    for (int i = 0; i < S; i++)
        memcpy(dst + (size_t)i * C, src + (size_t)rows[i] * ld, sizeof(real) * (size_t)C);
}

void rows_scatter_add(real *dst, const real *src, const int *rows, int S, int C) {
    for (int i = 0; i < S; i++) {
        real *d = dst + (size_t)rows[i] * C;
        const real *r = src + (size_t)i * C;
#pragma omp simd
        for (int j = 0; j < C; j++) d[j] += r[j];
    }
}

void rows_scatter(real *dst, int ld, const real *src, const int *rows, int S, int C) {
    for (int i = 0; i < S; i++)
        memcpy(dst + (size_t)rows[i] * ld, src + (size_t)i * C, sizeof(real) * (size_t)C);
}

int rows_lower_bound(const int *rows, int S, int pos) {
    int lo = 0, hi = S;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (rows[mid] < pos) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

int rows_run_end(const int *rows, int s, int s1) {
    int e = s + 1;
    while (e < s1 && rows[e] == rows[e - 1] + 1) e++;
    return e;
}
