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

int blas_select_core(char *note, size_t cap) {
    const char *core = openblas_get_corename();
    int switched = 0;
    if (!core) {
        snprintf(core_note, sizeof core_note, "unknown");
    } else if (getenv("OPENBLAS_CORETYPE")) {
        snprintf(core_note, sizeof core_note, "%s (OPENBLAS_CORETYPE)", core);
    } else {
        snprintf(core_note, sizeof core_note, "%s", core);
        static const char *const wide[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};
        static const char *const avx2[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake",
                                           "SapphireRapids", NULL};
        const char *want = NULL;
        const char *const *good = NULL;
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
            want = "SkylakeX";
            good = wide;
        } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            want = "Haswell";
            good = avx2;
        }
        int fine = !want;
        for (int i = 0; good && good[i]; i++)
            if (!strcasecmp(core, good[i])) fine = 1;
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
