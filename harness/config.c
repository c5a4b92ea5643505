/* config.c: the schema tables of the fixed sections, built-in defaults, the
 * canonical JSON of a run_config and its hash (see config.h, spec.h).
 *
 * The tables here cover model_config (without `mixer`, which selects a table
 * rather than being a value in one), train_config and eval_config; the task
 * and mixer tables bring their own (tasks/, models/). Parsing YAML is left to
 * spec.c, and the meaning of each value to the trainer and the model.
 *
 * Canonical JSON: one object, no whitespace, keys in schema order:
 *   {"name":..,"description":..,
 *    "task":{"name":"mqar",<task keys>},
 *    "model":{"mixer":"softmax",<model keys>,<that mixer's keys>},
 *    "train":{..},"eval":{..}}
 * Reals are written with the fewest digits (15 to 17) that read back as the
 * same double, so the text reproduces every value exactly. Only the chosen task's and mixer's keys appear.
 *
 * Identity versus label: `name` and `description` label a spec for humans;
 * they do not change what is computed. config_hash therefore hashes the same
 * canonical JSON with those two keys left out, so two specs that differ only
 * in their label are the same run (same hash, same cached task data). */
#include <float.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "mixer.h"
#include "sha256.h"
#include "spec.h"
#include "task.h"

#define DEFAULT_TASK "mqar"
#define DEFAULT_MIXER "softmax"

/* Open bounds, as inclusive limits: "> 0" and "< 1" (schema.c prints them as
 * open intervals). NO_MAX leaves a field bounded only by its C type. */
#define ABOVE_ZERO DBL_TRUE_MIN
#define BELOW_ONE (1.0 - DBL_EPSILON / 2)
#define NO_MAX DBL_MAX

static const char *const norm_choices[] = {"layer", "rms", NULL};     /* NORM_LAYER, NORM_RMS */
static const char *const position_choices[] = {"none", "learned", NULL}; /* POS_* */
static const char *const matmul_choices[] = {"fp32", "bf16", NULL};      /* MATMUL_* */

#define MF(k, t, m) .key = k, .type = t, .offset = offsetof(model_config, m)
const ml_field model_fields[] = {
    {MF("d_model", FT_INT, d_model), .min = 1, .max = 65536, .def = "64",
     .help = "model width C (residual stream)"},
    {MF("n_layers", FT_INT, n_layers), .min = 1, .max = 64, .def = "2",
     .help = "number of blocks"},
    {MF("mlp", FT_BOOL, mlp), .def = "true", .help = "MLP sub-block after the mixer in each block"},
    {MF("mlp_ratio", FT_INT, mlp_ratio), .min = 1, .max = 64, .def = "4",
     .help = "MLP hidden width = mlp_ratio * d_model"},
    {MF("norm", FT_ENUM, norm), .choices = norm_choices, .def = "layer",
     .help = "pre-norm of each sub-block: layer (LayerNorm) or rms (RMSNorm)"},
    {MF("norm_eps", FT_REAL, norm_eps), .min = ABOVE_ZERO, .max = 1, .def = "1e-5",
     .help = "epsilon inside the norm's square root"},
    {MF("conv", FT_INT, conv), .min = 0, .max = 64, .def = "0",
     .help = "taps of a short causal depthwise conv before the mixer, 0 = off"},
    {MF("tie_embeddings", FT_BOOL, tie_embeddings), .def = "true",
     .help = "LM head shares the embedding matrix"},
    {MF("position", FT_ENUM, position), .choices = position_choices, .def = "none",
     .help = "positional signal: none or learned absolute embeddings"},
    {MF("init_std", FT_REAL, init_std), .min = 0, .max = 10, .def = "0.02",
     .help = "standard deviation of normal-initialised weights"},
    {.key = NULL}};
#undef MF

#define TF(k, t, m) .key = k, .type = t, .offset = offsetof(train_config, m)
const ml_field train_fields[] = {
    {TF("steps", FT_LONG, steps), .min = 1, .max = NO_MAX, .def = "1000",
     .help = "optimiser steps"},
    {TF("batch_size", FT_INT, batch_size), .min = 1, .max = 1 << 20, .def = "64",
     .help = "sequences per step"},
    /* No upper bound on learning rates: a run that diverges is a recorded
     * outcome, and forcing one is how divergence handling is tested. */
    {TF("lr", FT_REAL, lr), .min = ABOVE_ZERO, .max = NO_MAX, .def = "1e-3",
     .help = "peak learning rate (AdamW)"},
    {TF("lr_min", FT_REAL, lr_min), .min = 0, .max = NO_MAX, .def = "0",
     .help = "final learning rate of the cosine schedule (at most lr)"},
    {TF("warmup", FT_INT, warmup), .min = 0, .max = NO_MAX, .def = "100",
     .help = "linear warmup steps"},
    {TF("weight_decay", FT_REAL, weight_decay), .min = 0, .max = 100, .def = "0.1",
     .help = "decoupled weight decay (parameters declared with decay only)"},
    {TF("beta1", FT_REAL, beta1), .min = 0, .max = BELOW_ONE, .def = "0.9",
     .help = "Adam first-moment decay"},
    {TF("beta2", FT_REAL, beta2), .min = 0, .max = BELOW_ONE, .def = "0.999",
     .help = "Adam second-moment decay"},
    {TF("adam_eps", FT_REAL, adam_eps), .min = ABOVE_ZERO, .max = 1, .def = "1e-8",
     .help = "Adam epsilon"},
    {TF("grad_clip", FT_REAL, grad_clip), .min = 0, .max = 1e6, .def = "1.0",
     .help = "max global gradient norm, 0 = off"},
    {TF("train_examples", FT_LONG, train_examples), .min = 0, .max = NO_MAX, .def = "100000",
     .help = "size of the training set, 0 = fresh examples forever"},
    {TF("seed", FT_LONG, seed), .min = 0, .max = NO_MAX, .def = "0",
     .help = "seed of data generation and initialisation"},
    {TF("full_head", FT_BOOL, full_head), .def = "false",
     .help = "LM head at every position instead of supervised positions only"},
    {TF("matmul", FT_ENUM, matmul), .choices = matmul_choices, .def = "fp32",
     .help = "matrix products: fp32, or bf16 (inputs rounded to bfloat16, sums in float; "
             "needs AVX-512 BF16)"},
    {.key = NULL}};
#undef TF

#define EF(k, t, m) .key = k, .type = t, .offset = offsetof(eval_config, m)
const ml_field eval_fields[] = {
    {EF("every", FT_INT, every), .min = 0, .max = NO_MAX, .def = "100",
     .help = "evaluate every this many steps, 0 = only at the end"},
    {EF("examples", FT_INT, examples), .min = 1, .max = NO_MAX, .def = "1000",
     .help = "test examples per evaluation"},
    {EF("batch_size", FT_INT, batch_size), .min = 1, .max = 1 << 20, .def = "250",
     .help = "sequences per evaluation batch"},
    {.key = NULL}};
#undef EF

/* The label of a spec: in the JSON, not in the hash (see the file header). */
static const ml_field label_fields[] = {
    {.key = "name", .type = FT_STRING, .offset = offsetof(run_config, name), .def = "",
     .help = "label of the spec"},
    {.key = "description", .type = FT_STRING, .offset = offsetof(run_config, description),
     .def = "", .help = "free text"},
    {.key = NULL}};

int config_defaults(run_config *cfg, ml_error *e) {
    memset(cfg, 0, sizeof *cfg);
    const ml_task *task = task_find(DEFAULT_TASK);
    const ml_mixer *mixer = mixer_find(DEFAULT_MIXER);
    if (!task) return ML_FAIL(e, "the default task '%s' is not in the task table", DEFAULT_TASK);
    if (!mixer)
        return ML_FAIL(e, "the default mixer '%s' is not in the mixer table", DEFAULT_MIXER);
    if (task->cfg_size > sizeof cfg->task_cfg || mixer->cfg_size > sizeof cfg->model.mixer_cfg)
        return ML_FAIL(e, "config struct of task '%s' or mixer '%s' exceeds ml_cfgbuf",
                       task->name, mixer->name);
    snprintf(cfg->task, sizeof cfg->task, "%s", task->name);
    snprintf(cfg->model.mixer, sizeof cfg->model.mixer, "%s", mixer->name);
    if (schema_defaults(label_fields, cfg, e) || schema_defaults(task->fields, &cfg->task_cfg, e) ||
        schema_defaults(model_fields, &cfg->model, e) ||
        schema_defaults(mixer->fields, &cfg->model.mixer_cfg, e) ||
        schema_defaults(train_fields, &cfg->train, e) || schema_defaults(eval_fields, &cfg->eval, e))
        return -1;
    return 0;
}

/* A JSON destination: a bounded buffer, a running SHA-256, or both. len
 * counts every byte written, including what did not fit in buf. */
typedef struct json_out {
    char *buf;
    size_t cap, len;
    sha256_ctx *sha;
} json_out;

/* out_text: append s. */
static void out_text(json_out *o, const char *s) {
    size_t n = strlen(s);
    if (o->sha) sha256_update(o->sha, s, n);
    if (o->buf && o->len < o->cap) {
        size_t room = o->cap - o->len;
        memcpy(o->buf + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

/* Large enough for any formatted value: a string of ML_STR - 1 bytes, each
 * escaped to at most six characters, plus quotes. */
#define VALUE_CAP (6 * ML_STR + 8)

/* out_field: `"key":value` of field f of obj, preceded by a comma unless
 * first. */
static void out_field(json_out *o, const ml_field *f, const void *obj, int first) {
    char v[VALUE_CAP];
    if (!first) out_text(o, ",");
    out_text(o, "\"");
    out_text(o, f->key); /* keys are identifiers: no escaping needed */
    out_text(o, "\":");
    schema_format(f, obj, v, sizeof v);
    out_text(o, v);
}

/* out_table: every field of table fields over obj; *first says whether the
 * next field opens its object (no comma) and is cleared once one is written. */
static void out_table(json_out *o, const ml_field *fields, const void *obj, int *first) {
    for (const ml_field *f = fields; f && f->key; f++) {
        out_field(o, f, obj, *first);
        *first = 0;
    }
}

/* out_name: `"key":"name"` for a selector (the task name, the mixer), which
 * lives in a char[64] rather than a schema field. */
static void out_name(json_out *o, const char *key, const char *name) {
    char tmp[ML_STR];
    const ml_field f = {.key = key, .type = FT_STRING, .offset = 0};
    snprintf(tmp, sizeof tmp, "%s", name);
    out_field(o, &f, tmp, 1);
}

/* write_config: the canonical JSON of cfg; with_label selects whether name
 * and description are included (JSON) or left out (hash). */
static void write_config(json_out *o, const run_config *cfg, int with_label) {
    const ml_task *task = task_find(cfg->task);
    const ml_mixer *mixer = mixer_find(cfg->model.mixer);
    out_text(o, "{");
    if (with_label) {
        out_field(o, &label_fields[0], cfg, 1);
        out_field(o, &label_fields[1], cfg, 0);
        out_text(o, ",");
    }
    int first = 0;
    out_text(o, "\"task\":{");
    out_name(o, "name", cfg->task);
    if (task) out_table(o, task->fields, &cfg->task_cfg, &first);
    out_text(o, "},\"model\":{");
    out_name(o, "mixer", cfg->model.mixer);
    out_table(o, model_fields, &cfg->model, &first);
    if (mixer) out_table(o, mixer->fields, &cfg->model.mixer_cfg, &first);
    out_text(o, "},\"train\":{");
    first = 1;
    out_table(o, train_fields, &cfg->train, &first);
    out_text(o, "},\"eval\":{");
    first = 1;
    out_table(o, eval_fields, &cfg->eval, &first);
    out_text(o, "}}");
}

int config_to_json(const run_config *cfg, char *buf, size_t cap) {
    json_out o = {.buf = buf, .cap = cap, .len = 0, .sha = NULL};
    write_config(&o, cfg, 1);
    if (o.len + 1 > cap || o.len > INT_MAX) {
        if (cap > 0) buf[cap - 1] = '\0';
        return -1;
    }
    buf[o.len] = '\0';
    return (int)o.len;
}

void config_hash(const run_config *cfg, char hex[65]) {
    sha256_ctx sha;
    uint8_t digest[32];
    sha256_init(&sha);
    json_out o = {.buf = NULL, .cap = 0, .len = 0, .sha = &sha};
    write_config(&o, cfg, 0);
    sha256_final(&sha, digest);
    sha256_to_hex(digest, hex);
}
