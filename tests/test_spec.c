/* test_spec.c: tests of the spec parser, the schema tables, the canonical
 * JSON and its hash (harness/spec.c, schema.c, config.c, sha256.c).
 *
 * Expected values come from the spec text written in each test, from the
 * defaults stated in the design brief, from SQLite's own JSON parser, and
 * from the FIPS 180-2 test vectors; never from the code under test. The
 * corpus of malformed specs in tests/bad/ states each file's expected first
 * error in the file itself ("# expect: LINE:COLUMN SUBSTRING" on line 1, or
 * in NAME.expect for files that cannot hold a comment). The tests rely only
 * on the key names shared with the real task and mixer tables (mqar;
 * softmax, linear). */
#include <dirent.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "mixer.h"
#include "schema.h"
#include "sha256.h"
#include "spec.h"
#include "task.h"
#include "test.h"
#ifdef __SSE__
#include <xmmintrin.h>
#endif

/* parse: spec_load_string of a C string under the name "t.yaml". */
static int parse(const char *text, run_config *c, ml_error *e) {
    return spec_load_string(text, strlen(text), "t.yaml", c, e);
}

/* field_int / field_real / field_text: a field of a task or mixer struct by
 * key, through the table (the test does not know the structs' layout). */
static const ml_field *lookup(const ml_field *t, const char *key) {
    const ml_field *f = schema_find(t, key);
    CHECK(f != NULL, "no field '%s'", key);
    return f;
}
static int field_int(const ml_field *t, const void *obj, const char *key) {
    const ml_field *f = lookup(t, key);
    return f ? *(const int *)((const char *)obj + f->offset) : -999;
}
static double field_real(const ml_field *t, const void *obj, const char *key) {
    const ml_field *f = lookup(t, key);
    return f ? *(const double *)((const char *)obj + f->offset) : -999;
}

static const ml_field *mixer_fields(const char *name) {
    const ml_mixer *m = mixer_find(name);
    CHECK(m != NULL, "mixer %s missing", name);
    return m ? m->fields : NULL;
}
static const ml_field *mqar_fields(void) {
    const ml_task *t = task_find("mqar");
    CHECK(t != NULL, "task mqar missing");
    return t ? t->fields : NULL;
}

static const char *valid_spec =
    "name: recall-64\n"
    "description: \"MQAR, softmax, small\"\n"
    "train:\n"
    "  lr: 3.0e-4\n"
    "  steps: 2e3\n"
    "  beta2: .95\n"
    "  full_head: True\n"
    "model:\n"
    "  n_layers: 4\n"
    "  mixer: linear\n" /* after a model key: the selector must still come first */
    "  feature_map: relu\n"
    "  heads: 2\n"
    "  norm: rms\n"
    "  d_model: 128\n"
    "task:\n"
    "  seq_len: 128\n"
    "  num_kv_pairs: 8\n"
    "  alpha: 1\n"
    "eval:\n"
    "  every: 0\n";

static void test_spec_valid(void) {
    run_config c;
    ml_error e = {0};
    int rc = parse(valid_spec, &c, &e);
    CHECK(rc == 0, "valid spec refused: %s", e.msg);
    if (rc) return;
    CHECK(!strcmp(c.name, "recall-64"), "name %s", c.name);
    CHECK(!strcmp(c.description, "MQAR, softmax, small"), "description %s", c.description);
    CHECK(!strcmp(c.task, "mqar"), "task %s", c.task);
    CHECK(!strcmp(c.model.mixer, "linear"), "mixer %s", c.model.mixer);
    /* Written values. */
    CHECK(c.train.lr == 3.0e-4, "lr %g", c.train.lr);
    CHECK(c.train.steps == 2000, "steps %ld", c.train.steps);
    CHECK(c.train.beta2 == 0.95, "beta2 %g", c.train.beta2);
    CHECK(c.train.full_head == 1, "full_head %d", c.train.full_head);
    CHECK(c.model.n_layers == 4 && c.model.d_model == 128, "layers %d d %d", c.model.n_layers,
          c.model.d_model);
    CHECK(c.model.norm == NORM_RMS, "norm %d", c.model.norm);
    CHECK(c.eval.every == 0, "every %d", c.eval.every);
    const ml_field *lin = mixer_fields("linear"), *mq = mqar_fields();
    if (!lin || !mq) return;
    CHECK(field_int(lin, &c.model.mixer_cfg, "heads") == 2, "heads");
    CHECK(field_int(lin, &c.model.mixer_cfg, "feature_map") == 2, "feature_map relu is choice 2");
    CHECK(field_int(mq, &c.task_cfg, "seq_len") == 128, "seq_len");
    CHECK(field_int(mq, &c.task_cfg, "num_kv_pairs") == 8, "num_kv_pairs");
    CHECK(field_real(mq, &c.task_cfg, "alpha") == 1.0, "alpha");
    /* Omitted keys keep the defaults of the brief. */
    CHECK(c.model.mlp == 1 && c.model.mlp_ratio == 4, "mlp %d ratio %d", c.model.mlp,
          c.model.mlp_ratio);
    CHECK(c.model.norm_eps == 1e-5 && c.model.conv == 0, "norm_eps %g conv %d",
          c.model.norm_eps, c.model.conv);
    CHECK(c.model.tie_embeddings == 1 && c.model.position == POS_NONE, "tie/position");
    CHECK(c.model.init_std == 0.02, "init_std %g", c.model.init_std);
    CHECK(c.train.batch_size == 64 && c.train.lr_min == 0 && c.train.warmup == 100,
          "batch %d lr_min %g warmup %d", c.train.batch_size, c.train.lr_min, c.train.warmup);
    CHECK(c.train.weight_decay == 0.1 && c.train.beta1 == 0.9 && c.train.adam_eps == 1e-8,
          "wd/beta1/eps");
    CHECK(c.train.grad_clip == 1.0 && c.train.train_examples == 100000 && c.train.seed == 0,
          "clip/examples/seed");
    CHECK(c.eval.examples == 1000 && c.eval.batch_size == 250, "eval defaults");
    CHECK(field_int(mq, &c.task_cfg, "vocab_size") == 8192, "vocab default");
    CHECK(field_int(lin, &c.model.mixer_cfg, "chunk") == 64, "chunk default");
    CHECK(field_int(lin, &c.model.mixer_cfg, "normalize") == 1, "normalize default");
    CHECK(field_real(lin, &c.model.mixer_cfg, "eps") == 1e-6, "eps default");
}

static void test_spec_defaults(void) {
    run_config d, c;
    ml_error e = {0};
    CHECK(config_defaults(&d, &e) == 0, "config_defaults: %s", e.msg);
    CHECK(!strcmp(d.task, "mqar") && !strcmp(d.model.mixer, "softmax"), "default selection");
    CHECK(d.model.d_model == 64 && d.model.n_layers == 2 && d.train.steps == 1000 &&
              d.train.lr == 1e-3,
          "default values");
    /* A spec with only a comment is empty; one with a single label gives the
     * defaults for everything else. */
    CHECK(parse("name: x\n", &c, &e) == 0, "label-only spec: %s", e.msg);
    char h1[65], h2[65];
    config_hash(&d, h1);
    config_hash(&c, h2);
    CHECK(!strcmp(h1, h2), "label-only spec differs from the defaults");
    /* Every table's defaults satisfy the table, every default is in range. */
    const ml_field *const tables[] = {model_fields, train_fields, eval_fields};
    char buf[sizeof(ml_cfgbuf)];
    for (int t = 0; t < 3; t++)
        CHECK(schema_defaults(tables[t], buf, &e) == 0, "table %d: %s", t, e.msg);
    for (int i = 0; ml_mixers[i]; i++) {
        CHECK(ml_mixers[i]->cfg_size <= sizeof(ml_cfgbuf), "mixer %s too big",
              ml_mixers[i]->name);
        CHECK(schema_defaults(ml_mixers[i]->fields, buf, &e) == 0, "mixer %s: %s",
              ml_mixers[i]->name, e.msg);
        /* A mixer key must not shadow a model key or the selector. */
        for (const ml_field *f = ml_mixers[i]->fields; f->key; f++)
            CHECK(!schema_find(model_fields, f->key) && strcmp(f->key, "mixer"),
                  "mixer %s key %s collides with the model section", ml_mixers[i]->name,
                  f->key);
    }
    for (int i = 0; ml_tasks[i]; i++) {
        CHECK(schema_defaults(ml_tasks[i]->fields, buf, &e) == 0, "task %s: %s",
              ml_tasks[i]->name, e.msg);
        CHECK(!schema_find(ml_tasks[i]->fields, "name"), "task %s has a key 'name'",
              ml_tasks[i]->name);
    }
}

/* json_query: the text of SQL expression sql with ?1 bound to json, or ""
 * on error, into out[cap]. */
static void json_query(sqlite3 *db, const char *sql, const char *json, char *out, size_t cap) {
    sqlite3_stmt *st = NULL;
    out[0] = '\0';
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        CHECK(0, "prepare %s: %s", sql, sqlite3_errmsg(db));
        return;
    }
    sqlite3_bind_text(st, 1, json, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

/* check_order: the keys of table appear in json in table order, after from. */
static void check_order(const char *json, const char *from, const ml_field *table) {
    const char *p = strstr(json, from);
    CHECK(p != NULL, "%s missing", from);
    if (!p) return;
    for (const ml_field *f = table; f->key; f++) {
        char pat[80];
        snprintf(pat, sizeof pat, "\"%s\":", f->key);
        const char *q = strstr(p, pat);
        CHECK(q != NULL, "key %s missing or out of order after %s", f->key, from);
        if (q) p = q;
    }
}

static void test_spec_json(void) {
    run_config c;
    ml_error e = {0};
    CHECK(parse(valid_spec, &c, &e) == 0, "%s", e.msg);
    char json[8192];
    int n = config_to_json(&c, json, sizeof json);
    CHECK(n > 0 && (size_t)n == strlen(json), "length %d", n);
    CHECK(config_to_json(&c, json, (size_t)n) == -1, "cap one short must fail");
    n = config_to_json(&c, json, sizeof json);
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(":memory:", &db) == SQLITE_OK, "sqlite open");
    char v[256];
    json_query(db, "select json_valid(?1)", json, v, sizeof v);
    CHECK(!strcmp(v, "1"), "json not valid: %s", json);
    json_query(db, "select json_extract(?1, '$.model.d_model')", json, v, sizeof v);
    CHECK(!strcmp(v, "128"), "d_model %s", v);
    json_query(db, "select json_extract(?1, '$.model.mixer')", json, v, sizeof v);
    CHECK(!strcmp(v, "linear"), "mixer %s", v);
    json_query(db, "select json_extract(?1, '$.model.feature_map')", json, v, sizeof v);
    CHECK(!strcmp(v, "relu"), "feature_map %s", v);
    json_query(db, "select json_extract(?1, '$.task.name')", json, v, sizeof v);
    CHECK(!strcmp(v, "mqar"), "task %s", v);
    json_query(db, "select json_extract(?1, '$.description')", json, v, sizeof v);
    CHECK(!strcmp(v, "MQAR, softmax, small"), "description %s", v);
    json_query(db, "select json_type(?1, '$.train.full_head')", json, v, sizeof v);
    CHECK(!strcmp(v, "true"), "full_head type %s", v);
    json_query(db, "select json_type(?1, '$.train.steps')", json, v, sizeof v);
    CHECK(!strcmp(v, "integer"), "steps type %s", v);
    /* %.17g: the double read back is bit-identical. */
    json_query(db, "select json_extract(?1, '$.train.lr') = 3.0e-4", json, v, sizeof v);
    CHECK(!strcmp(v, "1"), "lr does not round-trip: %s", json);
    json_query(db, "select count(*) from json_each(?1)", json, v, sizeof v);
    CHECK(!strcmp(v, "6"), "top-level keys %s", v);
    /* Only the chosen mixer's keys: linear's, not softmax's window. */
    CHECK(!strstr(json, "\"window\""), "softmax key in a linear config: %s", json);
    CHECK(strstr(json, "\"chunk\":64") != NULL, "linear key chunk missing: %s", json);
    CHECK(!strncmp(json, "{\"name\":\"recall-64\",\"description\":", 34), "head: %.60s", json);
    check_order(json, "\"model\":{\"mixer\":", model_fields);
    check_order(json, "\"init_std\":", mixer_fields("linear"));
    check_order(json, "\"task\":{\"name\":", mqar_fields());
    check_order(json, "\"train\":{", train_fields);
    check_order(json, "\"eval\":{", eval_fields);
    /* Awkward text survives escaping. */
    CHECK(spec_set(&c, "description=tab\there \"q\" back\\slash \xc3\xa9", &e) == 0, "%s", e.msg);
    config_to_json(&c, json, sizeof json);
    json_query(db, "select json_extract(?1, '$.description')", json, v, sizeof v);
    CHECK(!strcmp(v, "tab\there \"q\" back\\slash \xc3\xa9"), "escaped description: %s", v);
    /* The softmax default config: softmax keys, no linear keys. */
    CHECK(config_defaults(&c, &e) == 0, "%s", e.msg);
    config_to_json(&c, json, sizeof json);
    json_query(db, "select json_valid(?1)", json, v, sizeof v);
    CHECK(!strcmp(v, "1"), "default json not valid: %s", json);
    CHECK(strstr(json, "\"window\":0") && !strstr(json, "feature_map"), "softmax keys: %s", json);
    sqlite3_close(db);
}

/* change_field: set field f of obj to a different valid value. */
static void change_field(const ml_field *f, void *obj) {
    char *slot = (char *)obj + f->offset;
    switch (f->type) {
    case FT_INT: {
        int *v = (int *)(void *)slot;
        *v = (double)*v + 1 <= f->max ? *v + 1 : *v - 1;
        break;
    }
    case FT_LONG: {
        long *v = (long *)(void *)slot;
        *v = (double)*v + 1 <= f->max ? *v + 1 : *v - 1;
        break;
    }
    case FT_REAL: {
        double *v = (double *)(void *)slot;
        double nv = *v * 0.5 + (*v == 0 ? f->max * 0.5 : 0);
        if (nv < f->min) nv = (*v + f->max) * 0.5;
        *v = nv;
        break;
    }
    case FT_BOOL: *(int *)(void *)slot = !*(int *)(void *)slot; break;
    case FT_ENUM: *(int *)(void *)slot = *(int *)(void *)slot ? 0 : 1; break;
    case FT_STRING: strcat(slot, "x"); break;
    }
}

/* check_each_field: changing any field of table (at offset base within a
 * run_config) changes the hash of base_cfg. */
static void check_each_field(const run_config *base, const ml_field *table, size_t base_off,
                             const char *what) {
    char h0[65], h1[65];
    config_hash(base, h0);
    for (const ml_field *f = table; f && f->key; f++) {
        run_config c = *base;
        change_field(f, (char *)&c + base_off);
        config_hash(&c, h1);
        CHECK(strcmp(h0, h1), "%s.%s: hash unchanged by a new value", what, f->key);
    }
}

static void test_spec_hash(void) {
    run_config a, b;
    ml_error e = {0};
    char ha[65], hb[65];
    CHECK(parse(valid_spec, &a, &e) == 0, "%s", e.msg);
    CHECK(parse(valid_spec, &b, &e) == 0, "%s", e.msg);
    config_hash(&a, ha);
    config_hash(&b, hb);
    CHECK(!strcmp(ha, hb) && strlen(ha) == 64, "two parses: %s %s", ha, hb);
    for (int i = 0; i < 64; i++)
        CHECK((ha[i] >= '0' && ha[i] <= '9') || (ha[i] >= 'a' && ha[i] <= 'f'), "hex %s", ha);
    /* The label is not part of the identity. */
    CHECK(spec_set(&b, "name=another", &e) == 0 && spec_set(&b, "description=other", &e) == 0,
          "%s", e.msg);
    config_hash(&b, hb);
    CHECK(!strcmp(ha, hb), "hash depends on the label");
    /* The same config written in another key order hashes the same. */
    CHECK(parse("eval: {every: 0}\n"
                "task: {alpha: 1.0, num_kv_pairs: 8, seq_len: 128}\n"
                "model: {d_model: 128, norm: rms, heads: 2, feature_map: relu, mixer: linear,"
                " n_layers: 4}\n"
                "train: {full_head: true, beta2: 0.95, steps: 2000, lr: 0.0003}\n",
                &b, &e) == 0,
          "%s", e.msg);
    config_hash(&b, hb);
    CHECK(!strcmp(ha, hb), "key order changes the hash");
    /* Any value change changes the hash. */
    check_each_field(&a, model_fields, offsetof(run_config, model), "model");
    check_each_field(&a, mixer_fields("linear"), offsetof(run_config, model.mixer_cfg), "linear");
    check_each_field(&a, mqar_fields(), offsetof(run_config, task_cfg), "task");
    check_each_field(&a, train_fields, offsetof(run_config, train), "train");
    check_each_field(&a, eval_fields, offsetof(run_config, eval), "eval");
    CHECK(config_defaults(&b, &e) == 0, "%s", e.msg);
    check_each_field(&b, mixer_fields("softmax"), offsetof(run_config, model.mixer_cfg),
                     "softmax");
    /* And the selection itself. */
    b = a;
    CHECK(spec_set(&b, "model.mixer=softmax", &e) == 0, "%s", e.msg);
    config_hash(&b, hb);
    CHECK(strcmp(ha, hb), "mixer switch kept the hash");
}

static void test_sha256_vectors(void) {
    /* FIPS 180-2, appendix B. */
    char h[65];
    sha256_hex("abc", 3, h);
    CHECK(!strcmp(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "abc %s",
          h);
    sha256_hex("", 0, h);
    CHECK(!strcmp(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), "empty %s",
          h);
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_hex(m448, strlen(m448), h);
    CHECK(!strcmp(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"), "448 %s",
          h);
    /* Lengths at the padding boundaries (one or two final blocks); digests
     * from Python's hashlib, an independent implementation. */
    const struct {
        size_t n;
        const char *hex;
    } edges[] = {{55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
                 {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
                 {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
                 {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
                 {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
                 {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"}};
    char as[128];
    memset(as, 'a', sizeof as);
    for (size_t i = 0; i < sizeof edges / sizeof *edges; i++) {
        sha256_hex(as, edges[i].n, h);
        CHECK(!strcmp(h, edges[i].hex), "%zu x 'a': %s", edges[i].n, h);
    }
    /* Streaming in odd pieces equals one shot; the one million 'a' vector
     * exercises many blocks. */
    sha256_ctx c;
    uint8_t d[32];
    sha256_init(&c);
    static char chunk[1001];
    memset(chunk, 'a', sizeof chunk);
    for (int i = 0; i < 1000; i++) sha256_update(&c, chunk, i % 2 ? 999 : 1001);
    sha256_final(&c, d);
    sha256_to_hex(d, h);
    CHECK(!strcmp(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
          "million a %s", h);
}

static void test_spec_set(void) {
    run_config c, before;
    ml_error e = {0};
    CHECK(config_defaults(&c, &e) == 0, "%s", e.msg);
    CHECK(spec_set(&c, "train.lr=3e-4", &e) == 0 && c.train.lr == 3e-4, "lr: %s", e.msg);
    CHECK(spec_set(&c, "model.d_model=128", &e) == 0 && c.model.d_model == 128, "d: %s", e.msg);
    CHECK(spec_set(&c, "eval.every=7", &e) == 0 && c.eval.every == 7, "every: %s", e.msg);
    CHECK(spec_set(&c, "task.seq_len=128", &e) == 0 &&
              field_int(mqar_fields(), &c.task_cfg, "seq_len") == 128,
          "seq_len: %s", e.msg);
    CHECK(spec_set(&c, "model.heads=4", &e) == 0 &&
              field_int(mixer_fields("softmax"), &c.model.mixer_cfg, "heads") == 4,
          "heads: %s", e.msg);
    /* Switching the mixer starts from that mixer's defaults. */
    CHECK(spec_set(&c, "model.mixer=linear", &e) == 0 && !strcmp(c.model.mixer, "linear"),
          "mixer: %s", e.msg);
    CHECK(field_int(mixer_fields("linear"), &c.model.mixer_cfg, "heads") == 1, "linear heads");
    CHECK(spec_set(&c, "model.form=recurrent", &e) == 0, "form: %s", e.msg);
    /* Refusals leave the config untouched. */
    before = c;
    struct {
        const char *assignment, *expect;
    } bad[] = {
        {"train.lernrate=1e-3", "did you mean 'lr'?"},
        {"trian.lr=1e-3", "did you mean 'train'?"},
        {"lr=1e-3", "unknown key 'lr'"},
        {"train", "expected section.key=value"},
        {"train.steps=0", "train.steps: 0 is out of range: must be >= 1"},
        {"train.steps=ten", "expected an integer"},
        {"train.lr=", "expected a number"},
        {"model.window=4", "belongs to mixer 'softmax'"},
        {"model.mixer=mamba", "valid mixers: "},
        {"task.name=nope", "valid tasks: "},
        {"model.form=chunked", "not one of: chunkwise, parallel, recurrent"},
        {"model=1", "is a section"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e.msg[0] = '\0';
        int rc = spec_set(&c, bad[i].assignment, &e);
        CHECK(rc == -1, "'%s' accepted", bad[i].assignment);
        CHECK(strstr(e.msg, bad[i].expect) != NULL, "'%s': message '%s' lacks '%s'",
              bad[i].assignment, e.msg, bad[i].expect);
        CHECK(!memcmp(&c, &before, sizeof c), "'%s' changed the config", bad[i].assignment);
    }
    /* Cross-key constraints wait for spec_validate, so overrides may come in
     * any order; spec_validate then names the key. */
    struct {
        const char *assignment, *expect;
    } cross[] = {
        {"model.heads=3", "model.heads: "}, /* d_model 128 % 3 */
        {"train.lr_min=0.5", "train.lr_min: "},
        {"task.vocab_size=100", "task.vocab_size: "}, /* V must exceed seq_len 128 */
    };
    for (size_t i = 0; i < sizeof cross / sizeof cross[0]; i++) {
        run_config d = before;
        CHECK(spec_validate(&d, &e) == 0, "baseline invalid: %s", e.msg);
        CHECK(spec_set(&d, cross[i].assignment, &e) == 0, "'%s': %s", cross[i].assignment,
              e.msg);
        e.msg[0] = '\0';
        CHECK(spec_validate(&d, &e) == -1, "'%s' passed validation", cross[i].assignment);
        CHECK(strstr(e.msg, cross[i].expect) != NULL, "'%s': message '%s' lacks '%s'",
              cross[i].assignment, e.msg, cross[i].expect);
    }
    /* Order does not matter: shrink the sequence below the vocabulary the
     * other way round. */
    run_config d;
    CHECK(config_defaults(&d, &e) == 0, "%s", e.msg);
    CHECK(spec_set(&d, "task.vocab_size=16", &e) == 0 && spec_set(&d, "task.seq_len=12", &e) == 0 &&
              spec_set(&d, "task.num_kv_pairs=2", &e) == 0 && spec_validate(&d, &e) == 0,
          "small MQAR via overrides: %s", e.msg);
}

/* A struct of every field type, for schema tests independent of the tables. */
typedef struct probe {
    int i;
    long l;
    double r;
    int b, en;
    char s[ML_STR];
} probe;

static void test_spec_schema_values(void) {
    probe o;
    static const char *const ch[] = {"identity", "elu1", "relu", NULL};
    const ml_field fi = {"i", FT_INT, offsetof(probe, i), 1, 64, NULL, "1", ""};
    const ml_field fl = {"l", FT_LONG, offsetof(probe, l), 0, 1e15, NULL, "0", ""};
    const ml_field fr = {"r", FT_REAL, offsetof(probe, r), -10, 10, NULL, "0", ""};
    const ml_field fb = {"b", FT_BOOL, offsetof(probe, b), 0, 0, NULL, "true", ""};
    const ml_field fe = {"e", FT_ENUM, offsetof(probe, en), 0, 0, ch, "elu1", ""};
    const ml_field fs = {"s", FT_STRING, offsetof(probe, s), 0, 0, NULL, "", ""};
    ml_error e = {0};
    CHECK(schema_set(&fi, &o, "64", &e) == 0 && o.i == 64, "64");
    CHECK(schema_set(&fi, &o, "+5", &e) == 0 && o.i == 5, "+5");
    CHECK(schema_set(&fi, &o, "2.5e1", &e) == 0 && o.i == 25, "2.5e1");
    CHECK(schema_set(&fl, &o, "1e5", &e) == 0 && o.l == 100000, "1e5");
    CHECK(schema_set(&fl, &o, "1e15", &e) == 0 && o.l == 1000000000000000L, "1e15");
    const char *bad_int[] = {"64.0", "1.5e0", "abc", "010", "0x10", "", "1e", "true", "65", "0",
                             "1e400", "99999999999999999999"};
    for (size_t k = 0; k < sizeof bad_int / sizeof *bad_int; k++)
        CHECK(schema_set(&fi, &o, bad_int[k], &e) == -1, "int accepted '%s'", bad_int[k]);
    CHECK(schema_set(&fi, &o, "65", &e) == -1 && strstr(e.msg, "must be in [1, 64]"), "%s",
          e.msg);
    CHECK(schema_set(&fl, &o, "-1", &e) == -1 && strstr(e.msg, "must be in [0, 1e+15]"), "%s",
          e.msg);
    const struct {
        const char *t;
        double v;
    } good_real[] = {{"1e-3", 1e-3}, {"3.0e-4", 3.0e-4}, {".5", 0.5}, {"-2", -2.0},
                     {"1E1", 10.0},  {"5.", 5.0},        {"+0.25", 0.25}};
    for (size_t k = 0; k < sizeof good_real / sizeof *good_real; k++)
        CHECK(schema_set(&fr, &o, good_real[k].t, &e) == 0 && o.r == good_real[k].v,
              "real '%s': %s", good_real[k].t, e.msg);
    const char *bad_real[] = {"inf", ".inf", "nan", "0x1p3", "1e", ".", "-", "1,5", "11", "1e999"};
    for (size_t k = 0; k < sizeof bad_real / sizeof *bad_real; k++)
        CHECK(schema_set(&fr, &o, bad_real[k], &e) == -1, "real accepted '%s'", bad_real[k]);
    CHECK(schema_set(&fb, &o, "False", &e) == 0 && o.b == 0, "False");
    CHECK(schema_set(&fb, &o, "true", &e) == 0 && o.b == 1, "true");
    CHECK(schema_set(&fb, &o, "yes", &e) == -1 && schema_set(&fb, &o, "1", &e) == -1, "yes/1");
    CHECK(schema_set(&fe, &o, "relu", &e) == 0 && o.en == 2, "relu");
    CHECK(schema_set(&fe, &o, "Relu", &e) == -1 &&
              strstr(e.msg, "not one of: identity, elu1, relu"),
          "enum message %s", e.msg);
    char longs[ML_STR + 1];
    memset(longs, 'a', ML_STR);
    longs[ML_STR] = '\0';
    CHECK(schema_set(&fs, &o, longs, &e) == -1, "string of ML_STR bytes accepted");
    longs[ML_STR - 1] = '\0';
    CHECK(schema_set(&fs, &o, longs, &e) == 0 && strlen(o.s) == ML_STR - 1, "ML_STR-1: %s",
          e.msg);
    CHECK(schema_set(&fs, &o, "bad \xff utf8", &e) == -1, "invalid UTF-8 accepted");
    /* Open bounds of the real tables read as open. */
    const ml_field *lr = schema_find(train_fields, "lr"), *b1 = schema_find(train_fields, "beta1");
    run_config c;
    CHECK(lr && schema_set(lr, &c.train, "0", &e) == -1 && strstr(e.msg, "must be > 0"), "lr: %s",
          e.msg);
    CHECK(lr && schema_set(lr, &c.train, "1e-300", &e) == 0, "tiny lr refused: %s", e.msg);
    CHECK(lr && schema_set(lr, &c.train, "1e30", &e) == 0, "huge lr refused: %s", e.msg);
    CHECK(b1 && schema_set(b1, &c.train, "1", &e) == -1 && strstr(e.msg, "[0, 1)"), "beta1: %s",
          e.msg);
    CHECK(b1 && schema_set(b1, &c.train, "0.999999", &e) == 0, "beta1 0.999999: %s", e.msg);
    /* Formatting. */
    char buf[64];
    o.r = 0.1;
    schema_format(&fr, &o, buf, sizeof buf);
    CHECK(strtod(buf, NULL) == 0.1, "real round trip %s", buf);
    o.en = 1;
    schema_format(&fe, &o, buf, sizeof buf);
    CHECK(!strcmp(buf, "\"elu1\""), "enum %s", buf);
    snprintf(o.s, sizeof o.s, "a\"b\\c\n");
    schema_format(&fs, &o, buf, sizeof buf);
    CHECK(!strcmp(buf, "\"a\\\"b\\\\c\\n\""), "string %s", buf);
}

static void test_spec_closest(void) {
    /* Textbook Levenshtein distances. */
    CHECK(schema_edit_distance("kitten", "sitting") == 3, "kitten");
    CHECK(schema_edit_distance("flaw", "lawn") == 2, "flaw");
    CHECK(schema_edit_distance("", "abc") == 3 && schema_edit_distance("abc", "abc") == 0, "empty");
    const struct {
        const ml_field *t;
        const char *key, *want;
    } cases[] = {
        {train_fields, "lernrate", "lr"},
        {train_fields, "learning_rate", "lr"},
        {train_fields, "stpes", "steps"},
        {train_fields, "Batch_Size", "batch_size"},
        {train_fields, "warmup_steps", "warmup"},
        {train_fields, "weight_decya", "weight_decay"},
        {model_fields, "d_modle", "d_model"},
        {model_fields, "nlayers", "n_layers"},
        {eval_fields, "evry", "every"},
        {train_fields, "xyzzy", NULL},
        {train_fields, "q", NULL},
        {model_fields, "dropout", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *got = schema_closest(cases[i].t, cases[i].key);
        CHECK((got == NULL && cases[i].want == NULL) ||
                  (got && cases[i].want && !strcmp(got, cases[i].want)),
              "closest('%s') = %s, want %s", cases[i].key, got ? got : "NULL",
              cases[i].want ? cases[i].want : "NULL");
    }
}

/* read_expect: parse "LINE:COLUMN SUBSTRING" (after an optional "# expect: "). */
static int read_expect(const char *text, int *line, int *column, char *sub, size_t cap) {
    const char *p = text;
    if (!strncmp(p, "# expect: ", 10)) p += 10;
    int used = 0;
    if (sscanf(p, "%d:%d %n", line, column, &used) != 2 || used == 0) return -1;
    p += used;
    size_t n = strcspn(p, "\r\n");
    if (n == 0 || n >= cap) return -1;
    memcpy(sub, p, n);
    sub[n] = '\0';
    return 0;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void test_spec_bad_corpus(void) {
#ifdef __SSE__
    /* The default floating-point mode, whatever an earlier test's training
     * left set: with denormals-are-zero the schema's open bound "> 0"
     * (DBL_TRUE_MIN) equals 0 and lr_zero.yaml would pass. */
    unsigned mode = _mm_getcsr();
    _mm_setcsr(mode & ~0x8040u);
#endif
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/bad", test_dir());
    DIR *d = opendir(dir);
    CHECK(d != NULL, "cannot open %s", dir);
    char *names[256];
    int n = 0;
    struct dirent *ent;
    while (d && (ent = readdir(d)) && n < 256) {
        size_t len = strlen(ent->d_name);
        if (len > 5 && !strcmp(ent->d_name + len - 5, ".yaml")) names[n++] = strdup(ent->d_name);
    }
    if (d) closedir(d);
    qsort(names, (size_t)n, sizeof *names, name_cmp);
    CHECK(n >= 15, "only %d bad specs", n);
    for (int i = 0; i < n; i++) {
        char path[1200], side[1200], head[512] = "";
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        snprintf(side, sizeof side, "%s/%.*s.expect", dir, (int)strlen(names[i]) - 5, names[i]);
        FILE *f = fopen(side, "r");
        if (!f) f = fopen(path, "rb");
        if (f) {
            if (!fgets(head, sizeof head, f)) head[0] = '\0';
            fclose(f);
        }
        int line, column;
        char sub[400];
        if (read_expect(head, &line, &column, sub, sizeof sub)) {
            CHECK(0, "%s: no expectation", names[i]);
            continue;
        }
        run_config c;
        ml_error e = {0};
        int rc = spec_load_file(path, &c, &e);
        size_t first_len = strcspn(e.msg, "\n");
        CHECK(rc == -1, "%s: accepted", names[i]);
        CHECK(!strcmp(e.file, path), "%s: error file '%s'", names[i], e.file);
        CHECK(e.line == line && e.column == column, "%s: at %d:%d, want %d:%d (%s)", names[i],
              e.line, e.column, line, column, e.msg);
        char *hit = strstr(e.msg, sub);
        CHECK(hit && (size_t)(hit - e.msg) < first_len, "%s: first message '%.*s' lacks '%s'",
              names[i], (int)first_len, e.msg, sub);
        test_note("%s:%d:%d: %s", names[i], e.line, e.column, e.msg);
    }
    for (int i = 0; i < n; i++) free(names[i]);
#ifdef __SSE__
    _mm_setcsr(mode);
#endif
}

static void test_spec_many_problems(void) {
    const char *text = "model:\n"
                       "  d_model: 0\n"       /* range */
                       "  heads: 3\n"         /* cross-key, skipped: model had a problem */
                       "train:\n"
                       "  lernrate: 1\n"      /* unknown key */
                       "eval:\n"
                       "  batch_size: big\n"; /* type */
    run_config c;
    ml_error e = {0};
    CHECK(parse(text, &c, &e) == -1, "accepted");
    char out[2048];
    ml_error_format(&e, out, sizeof out);
    int lines = 1;
    for (const char *p = out; *p; p++) lines += *p == '\n';
    CHECK(lines == 3, "want 3 problems, got %d:\n%s", lines, out);
    CHECK(!strncmp(out, "t.yaml:2:12: model.d_model:", 27), "first: %s", out);
    const char *second = strchr(out, '\n'), *third = second ? strchr(second + 1, '\n') : NULL;
    CHECK(second && !strncmp(second + 1, "t.yaml:5:3: unknown key 'lernrate'", 34), "second: %s",
          out);
    CHECK(third && !strncmp(third + 1, "t.yaml:7:15: eval.batch_size:", 29), "third: %s", out);
    CHECK(e.line == 2 && e.column == 12 && !strcmp(e.file, "t.yaml"), "first position");

    /* Problems come out in file order even when found out of order (the
     * cross-key check runs last). */
    CHECK(parse("task:\n  seq_len: 63\ntrain:\n  bogus: 1\n", &c, &e) == -1, "accepted");
    CHECK(e.line == 2 && !strncmp(e.msg, "task.seq_len: ", 14), "order: %d %s", e.line, e.msg);
    /* A flood is capped with a count of the rest. */
    char flood[4096] = "train:\n";
    for (int i = 0; i < 30; i++) {
        char l[64];
        snprintf(l, sizeof l, "  bogus%d: 1\n", i);
        strcat(flood, l);
    }
    CHECK(parse(flood, &c, &e) == -1, "flood accepted");
    CHECK(e.line == 2, "flood first line %d", e.line);
    CHECK(strstr(e.msg, "more problems not shown") != NULL, "no overflow note: %s", e.msg);
    CHECK(strlen(e.msg) < sizeof e.msg - 1, "message filled to the brim");
}

static void test_spec_positions_and_files(void) {
    run_config c;
    ml_error e = {0};
    /* A cross-key problem points at the key its message names, also in
     * flow style and when the key comes first. */
    CHECK(parse("model: {heads: 5, d_model: 64}\n", &c, &e) == -1, "accepted");
    CHECK(e.line == 1 && e.column == 9 && strstr(e.msg, "model.heads: "), "%d:%d %s", e.line,
          e.column, e.msg);
    /* An unwritten offending key points at its section. */
    CHECK(parse("\ntask:\n  seq_len: 14\n", &c, &e) == -1, "accepted"); /* 4 pairs > 14/4 */
    CHECK(e.line == 2 && e.column == 1, "unwritten key at %d:%d %s", e.line, e.column, e.msg);
    /* Second document, comments only, a null section. */
    CHECK(parse("train: {steps: 5}\n---\neval: {every: 1}\n", &c, &e) == -1 && e.line == 3,
          "second document: %d %s", e.line, e.msg);
    CHECK(parse("# nothing\n", &c, &e) == -1 && strstr(e.msg, "empty"), "comment-only: %s", e.msg);
    CHECK(parse("train:\n", &c, &e) == -1 && strstr(e.msg, "'train' is empty"), "%s", e.msg);
    /* Quoted empty text is a value for a string, not a missing value. */
    CHECK(parse("name: \"\"\n", &c, &e) == 0 && c.name[0] == '\0', "%s", e.msg);
    /* A file that does not exist. */
    CHECK(spec_load_file("/nonexistent/memlab.yaml", &c, &e) == -1, "missing file accepted");
    CHECK(e.line == 0 && !strcmp(e.file, "/nonexistent/memlab.yaml") &&
              strstr(e.msg, "No such file"),
          "missing file: %d %s %s", e.line, e.file, e.msg);
    /* A valid file on disk. */
    char path[1200];
    snprintf(path, sizeof path, "%s/bad/../bad/zero_steps.yaml", test_dir());
    CHECK(spec_load_file(path, &c, &e) == -1 && !strcmp(e.file, path), "%s", e.file);
    /* spec_validate on its own. */
    CHECK(config_defaults(&c, &e) == 0 && spec_validate(&c, &e) == 0, "defaults invalid: %s",
          e.msg);
    c.model.d_model = 7;
    const ml_field *h = schema_find(mixer_fields("softmax"), "heads");
    if (h) *(int *)(void *)((char *)&c.model.mixer_cfg + h->offset) = 2;
    CHECK(spec_validate(&c, &e) == -1 && strstr(e.msg, "model.heads: "), "%s", e.msg);
}

const test_case tests_spec[] = {
    {"spec_valid", test_spec_valid},
    {"spec_defaults", test_spec_defaults},
    {"spec_json", test_spec_json},
    {"spec_hash", test_spec_hash},
    {"spec_sha256_vectors", test_sha256_vectors},
    {"spec_set", test_spec_set},
    {"spec_schema_values", test_spec_schema_values},
    {"spec_closest", test_spec_closest},
    {"spec_bad_corpus", test_spec_bad_corpus},
    {"spec_many_problems", test_spec_many_problems},
    {"spec_positions_and_files", test_spec_positions_and_files},
    {NULL, NULL}};
