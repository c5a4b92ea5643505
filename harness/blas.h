/* blas.h: choosing OpenBLAS's kernels for the machine. */
#ifndef MEMLAB_BLAS_H
#define MEMLAB_BLAS_H

#include <stddef.h>

/* OpenBLAS picks its kernels from the CPU model; on CPUs it does not know
 * (0.3.21 on recent Xeons, e.g. in a VM) it falls back to Prescott (SSE3)
 * kernels, 5x slower for SGEMM. When OPENBLAS_CORETYPE is unset and the CPU
 * has AVX-512 (or AVX2 and FMA) but the chosen core does not use them, this
 * selects SkylakeX (or Haswell), sets OPENBLAS_CORETYPE for child processes
 * (workers, the PyTorch twin, which loads the same OpenBLAS), and
 * re-initialises OpenBLAS's dispatch. A user's OPENBLAS_CORETYPE is left
 * alone. Call once at start-up, before any BLAS work or thread. Returns 1 when
 * it switched (note, if not NULL, gets "Prescott -> SkylakeX ..."), 0
 * otherwise (note gets the core in use). */
int blas_select_core(char *note, size_t cap);

/* The core OpenBLAS uses now, and how it was chosen ("SkylakeX (selected by
 * memlab; OpenBLAS detected Prescott)", "SkylakeX (OPENBLAS_CORETYPE)",
 * "Haswell"). Valid after blas_select_core. */
const char *blas_core_note(void);

/* A warning when a user's OPENBLAS_CORETYPE selects kernels narrower than the
 * CPU runs (Haswell's AVX2 kernels on an AVX-512 CPU: about half the SGEMM
 * rate on the machines measured), else NULL. memlab keeps the user's choice
 * and says this once on stderr and in the bench report. Valid after
 * blas_select_core. */
const char *blas_core_advice(void);

#endif
