/* fuzz_spec.c: libFuzzer target of the spec parser and sweep expander
 * (harness/spec.c, harness/sweep.c).
 *
 * Build and run: `make fuzz`, then build/fuzz/fuzz_spec CORPUS_DIR [seeds...]
 * (.ci/run does a short smoke run seeded with tests/bad and sweeps/). Each
 * input is parsed as a single-run spec, as a sweep, and as a sweep with
 * overrides and a preset; besides the sanitizers' findings, an accepted
 * sweep must survive its own round trip: loading its resolved JSON gives the
 * same runs with the same hashes, and every run can be rebuilt. A violation
 * aborts (a crash is what the fuzzer reports). No file other than the input
 * is read (base: is refused) and the expansion is capped, so every input
 * runs in milliseconds.
 *
 * The unit tests call LLVMFuzzerTestOneInput on the corpus too (test_sweep.c),
 * so the sanitizer build checks the same properties without clang. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spec.h"
#include "sweep.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* check_error: a refusal must carry a terminated, non-empty message. */
static void check_error(const ml_error *e) {
    if (memchr(e->msg, '\0', sizeof e->msg) == NULL || !e->msg[0]) abort();
}

/* round_trip: the resolved spec of s expands to the same runs. */
static void round_trip(const ml_sweep *s, const sweep_opts *o) {
    ml_sweep *t = NULL;
    ml_error e;
    const char *json = sweep_resolved(s);
    if (sweep_load_string(json, strlen(json), "resolved.json", o, &t, &e) != 0) abort();
    if (sweep_size(t) != sweep_size(s) || sweep_n_keys(t) != sweep_n_keys(s)) abort();
    for (long i = 0; i < sweep_size(s); i++)
        if (strcmp(sweep_hash(s, i), sweep_hash(t, i))) abort();
    for (long i = 0; i < sweep_size(s) && i < 4; i++) {
        run_config c;
        char desc[512], hash[65];
        if (sweep_config(s, i, &c, &e)) abort();
        config_hash(&c, hash);
        if (strcmp(hash, sweep_hash(s, i))) abort();
        sweep_describe(s, i, desc, sizeof desc);
    }
    sweep_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 1 << 16) return 0;
    const char *text = (const char *)data;
    run_config cfg;
    ml_error e;
    if (spec_load_string(text, size, "fuzz.yaml", &cfg, &e)) check_error(&e);

    sweep_opts o = {.no_base = 1, .max_runs = 64, .check_presets = 1};
    ml_sweep *s = NULL;
    if (sweep_load_string(text, size, "fuzz.yaml", &o, &s, &e) == 0) {
        sweep_opts plain = {.no_base = 1, .max_runs = 64};
        round_trip(s, &plain);
        sweep_free(s);
    } else {
        check_error(&e);
    }

    static const char *const sets[] = {"train.steps=3", "model.d_model=32", "sweep.seeds=2",
                                       "sweep.grid.train.lr=[1e-3, 3e-3]"};
    o.sets = sets;
    o.n_sets = 4;
    o.preset = "quick";
    if (sweep_load_string(text, size, "fuzz.yaml", &o, &s, &e) == 0) sweep_free(s);
    else check_error(&e);
    return 0;
}
