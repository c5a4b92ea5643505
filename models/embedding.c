/* embedding.c: token plus learned-position embedding, forward and backward.
 *
 * Dimensions: B batch, T time, C channels, V vocabulary.
 * Only the table lookup lives here. Checking that tokens lie in [0, V) is the
 * task generator's job (the kernel does not know V); tying the LM head to wte
 * and zeroing gradients are the model's. */
#include <assert.h>
#include <stddef.h>

#include "kernels.h"

/* out[B,T,C] = wte[tok[b,t],:] + (wpe ? wpe[t,:] : 0); wte [V,C], wpe [T,C]
 * (only the first T rows of a longer position table are read). out is
 * overwritten and must not alias the tables. */
void embedding_forward(real *out, const int *tok, const real *wte, const real *wpe,
                       int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            size_t bt = (size_t)b * T + t;
            assert(tok[bt] >= 0);
            const real *e = wte + (size_t)tok[bt] * C;
            real *o = out + bt * C;
            if (wpe) {
                const real *p = wpe + (size_t)t * C;
                for (int c = 0; c < C; c++) o[c] = e[c] + p[c];
            } else {
                for (int c = 0; c < C; c++) o[c] = e[c];
            }
        }
    }
}

/* dwte[tok[b,t],:] += dout[b,t,:] and dwpe[t,:] += dout[b,t,:]. Either
 * gradient may be NULL. A token that occurs several times receives the sum of
 * its rows, which is why this is a scatter-add and not a copy. */
void embedding_backward(real *dwte, real *dwpe, const real *dout, const int *tok,
                        int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            size_t bt = (size_t)b * T + t;
            const real *d = dout + bt * C;
            if (dwte) {
                assert(tok[bt] >= 0);
                real *g = dwte + (size_t)tok[bt] * C;
                for (int c = 0; c < C; c++) g[c] += d[c];
            }
            if (dwpe) {
                real *g = dwpe + (size_t)t * C;
                for (int c = 0; c < C; c++) g[c] += d[c];
            }
        }
    }
}
