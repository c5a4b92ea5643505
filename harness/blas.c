/* blas.c: selects OpenBLAS's kernels where its CPU detection fails (see
 * blas.h). Only the dispatch is touched; thread counts are set by the callers
 * (main.c, runner.c, bench.c). */
#define _GNU_SOURCE
#include "blas.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

/* OpenBLAS's dynamic dispatch (exported by its DYNAMIC_ARCH builds, which
 * Debian's are). */
char *openblas_get_corename(void);
void gotoblas_dynamic_init(void);
void gotoblas_dynamic_quit(void);

static char core_note[128];
static char core_advice[320];

/* 1 when the CPU runs the AVX-512 subsets OpenBLAS's SkylakeX kernels use. */
static int cpu_wide(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}

static const char *const wide[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};

static int in_list(const char *core, const char *const *list) {
    for (int i = 0; list[i]; i++)
        if (!strcasecmp(core, list[i])) return 1;
    return 0;
}

int blas_select_core(char *note, size_t cap) {
    const char *core = openblas_get_corename();
    int switched = 0;
    if (!core) {
        snprintf(core_note, sizeof core_note, "unknown");
    } else if (getenv("OPENBLAS_CORETYPE")) {
        snprintf(core_note, sizeof core_note, "%s (OPENBLAS_CORETYPE)", core);
        /* the user's choice stands (it may pin the kernels, and so the bits, across a
         * cluster's nodes), but a choice narrower than the CPU costs speed: say so */
        if (cpu_wide() && !in_list(core, wide))
            snprintf(core_advice, sizeof core_advice,
                     "OPENBLAS_CORETYPE=%s: OpenBLAS runs its %s kernels, narrower than this "
                     "CPU's AVX-512; unless that pin is wanted, unset it or set SkylakeX "
                     "(`memlab bench` reports the SGEMM rate against the FMA peak)",
                     getenv("OPENBLAS_CORETYPE"), core);
    } else {
        snprintf(core_note, sizeof core_note, "%s", core);
        static const char *const avx2[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake",
                                           "SapphireRapids", NULL};
        const char *want = NULL;
        const char *const *good = NULL;
        if (cpu_wide()) { /* also initialises the CPU checks below */
            want = "SkylakeX";
            good = wide;
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            want = "Haswell";
            good = avx2;
        }
        int fine = !want || in_list(core, good);
        if (!fine) {
            char was[64];
            snprintf(was, sizeof was, "%s", core);
            setenv("OPENBLAS_CORETYPE", want, 1);
            gotoblas_dynamic_quit();
            gotoblas_dynamic_init();
            snprintf(core_note, sizeof core_note, "%s (selected by memlab; OpenBLAS detected %s)",
                     openblas_get_corename(), was);
            switched = 1;
        }
    }
    if (note && cap) snprintf(note, cap, "%s", core_note);
    return switched;
}

const char *blas_core_note(void) { return core_note; }

const char *blas_core_advice(void) { return core_advice[0] ? core_advice : NULL; }
