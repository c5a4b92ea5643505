/* probe.c: the capacity and interference probe as a task (training-free).
 *
 * A run of this task builds no model: the trainer sees `measure` and calls
 * it instead of training. One run is one probe point (memory, d, N) at the
 * run's train.seed, recorded as test/top1_accuracy, test/rel_error,
 * test/theory_rel_error (sum rule) and model/state_size; a sweep over
 * task.n_pairs and train.seed gives the curves, as `memlab probe` does. The
 * model, train (except seed) and eval sections are ignored.
 *
 * The config struct is probe_params (harness/probe.h), where the memories
 * and the measurement live; this file only declares its keys. */
#include <stddef.h>

#include "probe.h"
#include "task.h"

static const char *const keys_choices[] = {"random", "orthogonal", NULL}; /* PROBE_KEYS_* */
static const char *const rule_choices[] = {"sum", "delta", NULL};         /* PROBE_RULE_* */
static const char *const read_choices[] = {"sum", "gated", NULL};         /* PROBE_READ_* */

#define PF(k, t, m) .key = k, .type = t, .offset = offsetof(probe_params, m)
static const ml_field probe_fields[] = {
    {PF("memory", FT_ENUM, memory), .choices = probe_memory_names, .def = "sum",
     .help = "memory written and read back"},
    {PF("d", FT_INT, d), .min = 1, .max = 4096, .def = "64", .help = "key and value width d"},
    {PF("n_pairs", FT_INT, n_pairs), .min = 1, .max = 1 << 20, .def = "64",
     .help = "key-value pairs N written (the x-axis is N/d)"},
    {PF("keys", FT_ENUM, keys), .choices = keys_choices, .def = "random",
     .help = "random unit keys, or orthonormal keys (N <= d)"},
    {PF("beta", FT_REAL, beta), .min = 1e-9, .max = 2, .def = "1",
     .help = "delta-rule step (memory delta, and rule delta)"},
    {PF("rule", FT_ENUM, rule), .choices = rule_choices, .def = "sum",
     .help = "write rule of each memory of mom and caching"},
    {PF("experts", FT_INT, experts), .min = 1, .max = 1024, .def = "4",
     .help = "memories E of mom (random linear router, top-1)"},
    {PF("segment", FT_INT, segment), .min = 1, .max = 1 << 20, .def = "16",
     .help = "pairs per cached segment (caching)"},
    {PF("read", FT_ENUM, read), .choices = read_choices, .def = "gated",
     .help = "caching read: sum over segments, or softmax-gated by the segments' mean keys"},
    {PF("slots", FT_INT, slots), .min = 1, .max = 65536, .def = "16",
     .help = "slots K written by softmax attention over the pairs (slots)"},
    {PF("temperature", FT_REAL, temperature), .min = 1e-9, .max = 1e6, .def = "8",
     .help = "softmax sharpness of the caching gate and of slot writes and reads"},
    {.key = NULL}};
#undef PF

/* The probe's ranges and cross-key constraints (probe_validate). */
static int probe_task_validate(const void *cfg, ml_error *e) { return probe_validate(cfg, e); }

/* Not a sequence task: no model is built, these only keep callers that ask
 * for sizes safe. */
static int probe_vocab_size(const void *cfg) {
    (void)cfg;
    return 2;
}
/* See probe_vocab_size. */
static int probe_seq_len(const void *cfg) {
    (void)cfg;
    return 1;
}

/* One probe point at seed: its metrics (probe_metrics), or -1. */
static int probe_task_measure(const void *cfg, long seed, ml_metric *out, int cap,
                              ml_error *e) {
    probe_result r;
    if (probe_measure(cfg, (uint64_t)seed, &r, e)) return -1;
    return probe_metrics(&r, out, cap);
}

const ml_task task_probe = {
    .name = "probe",
    .help = "capacity and interference probe (training-free): write N random pairs into a "
            "memory, read them back",
    .fields = probe_fields,
    .cfg_size = sizeof(probe_params),
    .validate = probe_task_validate,
    .vocab_size = probe_vocab_size,
    .seq_len = probe_seq_len,
    .measure = probe_task_measure,
};
