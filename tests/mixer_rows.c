/* mixer_rows.c: a mixer called with rows against its full call (see
 * mixer_rows.h). */
#include "mixer_rows.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "kernels.h"
#include "test.h"

/* Row set k (0, 1, 2; see mixer_rows.h) of a B x T call into rows; returns
 * its size. */
static int row_set(int *rows, int k, int B, int T) {
    int S = 0;
    if (k == 0) {
        rows[S++] = T + T / 2;
    } else if (k == 1) {
        const int seq0[] = {0, 1, 2, T - 1}, seq1[] = {3, 5, 6}, seq2[] = {T - 2, T - 1};
        for (int i = 0; i < 4; i++) rows[S++] = seq0[i];
        for (int i = 0; i < 3; i++) rows[S++] = T + seq1[i];
        for (int i = 0; i < 2; i++) rows[S++] = 2 * T + seq2[i];
    } else {
        for (int i = 0; i < B * T; i++)
            if (i != T + 1) rows[S++] = i;
    }
    return S;
}

static void fill_nan(double *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = NAN;
}

void mixer_rows_expect(const char *label, const ml_mixer *mx, const mixer_call *mc, double *g,
                       size_t ng, unsigned long long seed, double tol) {
    const int B = mc->B, T = mc->T, C = mc->C, N = B * T;
    const size_t n = (size_t)N * C;
    const size_t na = mx->act_size(mc->cfg, B, T, C), ns = mx->scratch_size(mc->cfg, B, T, C);
    double *x = malloc(sizeof(double) * n), *dx = malloc(sizeof(double) * n);
    double *dxr = malloc(sizeof(double) * n), *out = malloc(sizeof(double) * n);
    double *outr = malloc(sizeof(double) * n), *dout = malloc(sizeof(double) * n);
    double *doutr = malloc(sizeof(double) * n), *sel = malloc(sizeof(double) * n);
    double *gfull = malloc(sizeof(double) * ng);
    int *rows = malloc(sizeof(int) * (size_t)N);
    test_fill(x, n, seed, -1.5, 1.5);
    for (int k = 0; k < 3; k++) {
        int S = row_set(rows, k, B, T);
        test_fill(doutr, (size_t)S * C, seed + 1 + (unsigned long long)k, -1, 1);
        memset(dout, 0, sizeof(double) * n);
        for (int s = 0; s < S; s++)
            memcpy(dout + (size_t)rows[s] * C, doutr + (size_t)s * C, sizeof(double) * C);
        mixer_call full = *mc;
        full.rows = NULL, full.n_rows = 0;
        memset(g, 0, sizeof(double) * ng);
        memset(dx, 0, sizeof(double) * n);
        mx->forward(&full, out, x);
        mx->backward(&full, dx, dout, x);
        memcpy(gfull, g, sizeof(double) * ng);

        mixer_call part = *mc;
        part.rows = rows, part.n_rows = S;
        memset(g, 0, sizeof(double) * ng);
        memset(dxr, 0, sizeof(double) * n);
        fill_nan(mc->act, na);
        fill_nan(mc->scratch, ns);
        mx->forward(&part, outr, x);
        fill_nan(mc->scratch, ns);
        mx->backward(&part, dxr, doutr, x);

        rows_gather(sel, out, C, rows, S, C);
        double d_out = max_rel_diff(outr, sel, (size_t)S * C);
        double d_dx = max_rel_diff(dxr, dx, n), d_g = max_rel_diff(g, gfull, ng);
        CHECK(d_out <= tol && d_dx <= tol && d_g <= tol,
              "%s, %d rows (set %d): out %g, dx %g, parameter gradients %g apart", label, S, k,
              d_out, d_dx, d_g);
        test_note("%s, %d rows: out %.2g, dx %.2g, gradients %.2g", label, S, d_out, d_dx, d_g);
    }
    free(x), free(dx), free(dxr), free(out), free(outr), free(dout), free(doutr), free(sel);
    free(gfull), free(rows);
}
