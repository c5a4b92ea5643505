/* embedding.c: token plus learned-position embedding, forward and backward.
 *
 * Dimensions: B batch, T time, C channels, V vocabulary.
 * Only the table lookup lives here. Checking that tokens lie in [0, V) is the
 * task generator's job (the kernel does not know V); tying the LM head to wte
 * and zeroing gradients are the model's.
 *
 * Threads (memlab's setting, OpenBLAS's thread count): the forward splits the
 * tokens, the backward the channels, so that no two threads add into the same
 * gradient element and each element sums its tokens in the same order at any
 * thread count. */
#include <assert.h>
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.h"
#include "parallel.h"

/* Fewest elements per thread worth a parallel region. */
#define EMB_MIN_WORK (1L << 16)

/* Threads for `work` elements over `parts` independent parts (parallel.h). */
static int emb_threads(long work, int parts) {
    return ml_par_threads(parts, (double)work, EMB_MIN_WORK);
}

/* Rows [i0, i1) of the B*T token rows. */
static void emb_rows(real *out, const int *tok, const real *wte, const real *wpe, int i0,
                     int i1, int T, int C) {
    for (int bt = i0; bt < i1; bt++) {
        int t = bt % T;
        assert(tok[bt] >= 0);
        const real *e = wte + (size_t)tok[bt] * C;
        real *o = out + (size_t)bt * C;
        if (wpe) {
            const real *p = wpe + (size_t)t * C;
            for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
        } else {
            for (int c = 0; c < C; c++) o[c] = e[c];
        }
    }
}

/* Channels [c0, c1) of the backward over all B*T tokens. */
static void emb_back_channels(real *dwte, real *dwpe, const real *dout, const int *tok, int N,
                              int T, int C, int c0, int c1) {
    for (int bt = 0; bt < N; bt++) {
        const real *d = dout + (size_t)bt * C;
        if (dwte) {
            assert(tok[bt] >= 0);
            real *g = dwte + (size_t)tok[bt] * C;
            for (int c = c0; c < c1; c++) g[c] += d[c];
        }
        if (dwpe) {
            real *g = dwpe + (size_t)(bt % T) * C;
            for (int c = c0; c < c1; c++) g[c] += d[c];
        }
    }
}

/* out[B,T,C] = wte[tok[b,t],:] + (wpe ? wpe[t,:] : 0); wte [V,C], wpe [T,C]
 * (only the first T rows of a longer position table are read). out is
 * overwritten and must not alias the tables. */
void embedding_forward(real *out, const int *tok, const real *wte, const real *wpe,
                       int B, int T, int C) {
    int N = B * T, nt = emb_threads((long)N * C, N);
    if (nt == 1) {
        emb_rows(out, tok, wte, wpe, 0, N, T, C);
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
        emb_rows(out, tok, wte, wpe, (int)((long)N * k / nk), (int)((long)N * (k + 1) / nk), T,
                 C);
    }
}

/* dwte[tok[b,t],:] += dout[b,t,:] and dwpe[t,:] += dout[b,t,:]. Either
 * gradient may be NULL. A token that occurs several times receives the sum of
 * its rows, which is why this is a scatter-add and not a copy. */
void embedding_backward(real *dwte, real *dwpe, const real *dout, const int *tok,
                        int B, int T, int C) {
    /* channel slices of 16: whole cache lines per thread */
    int N = B * T, nt = emb_threads((long)N * C, C / 16);
    if (nt == 1) {
        emb_back_channels(dwte, dwpe, dout, tok, N, T, C, 0, C);
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
        int c0 = C * k / nk / 16 * 16, c1 = k + 1 == nk ? C : C * (k + 1) / nk / 16 * 16;
        emb_back_channels(dwte, dwpe, dout, tok, N, T, C, c0, c1);
    }
}
