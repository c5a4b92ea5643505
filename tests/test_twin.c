/* test_twin.c: the C model against its PyTorch twin (tests/twin/twin.py).
 *
 * Each fixture holds a spec, a batch, every weight, and the twin's loss,
 * logits and gradients in float64. The C model is built from the same spec,
 * given the same weights by name, and must reproduce the loss, the logits (up
 * to the per-row constant a softmax ignores) and every gradient to a relative
 * 1e-9 (both sides are double; only summation order differs). Fixtures come
 * from tests/fixtures (committed) and, when it exists, build/twin (fresh ones
 * CI writes where torch is installed). No fixture at all is a failure.
 *
 * The fixture reader's refusal of bad files is tested here too. What each
 * kernel computes is tested elsewhere; this file only judges the whole model. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fixture.h"
#include "model.h"
#include "spec.h"
#include "task.h"
#include "test.h"
#include "tmpdir.h"

/* Both sides compute in float64; the agreement is limited by summation
 * order, a few ulps amplified by at most a few layers. */
#define TWIN_RTOL 1e-9

/* ---- a fixture writer for the format tests ------------------------------- */

typedef struct bytebuf {
    unsigned char b[4096];
    size_t n;
} bytebuf;

/* Append v little-endian (the buffer is sized for every fixture built here). */
static void put_u32(bytebuf *w, uint32_t v) {
    for (int i = 0; i < 4; i++) w->b[w->n++] = (unsigned char)(v >> (8 * i));
}

/* Append n raw bytes. */
static void put_bytes(bytebuf *w, const void *p, size_t n) {
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

/* Entry header: name, kind, dims. */
static void put_head(bytebuf *w, const char *name, uint32_t kind, int ndim,
                     const uint32_t *dims) {
    put_u32(w, (uint32_t)strlen(name));
    put_bytes(w, name, strlen(name));
    put_u32(w, kind);
    put_u32(w, (uint32_t)ndim);
    for (int i = 0; i < ndim; i++) put_u32(w, dims[i]);
}

/* Append x as little-endian IEEE 754 binary64. */
static void put_f64(bytebuf *w, double x) {
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    for (int i = 0; i < 8; i++) w->b[w->n++] = (unsigned char)(u >> (8 * i));
}

/* A valid three-entry fixture: text, int32 [2,3], float64 [2]. */
static void small_fixture(bytebuf *w) {
    static const int32_t ints[6] = {0, 1, -1, 2147483647, -2147483647 - 1, 7};
    w->n = 0;
    put_bytes(w, "MLFX", 4);
    put_u32(w, 1);
    put_u32(w, 3);
    uint32_t d_text[1] = {5};
    put_head(w, "spec", 2, 1, d_text);
    put_bytes(w, "a: 1\n", 5);
    uint32_t d_int[2] = {2, 3};
    put_head(w, "input", 1, 2, d_int);
    for (int i = 0; i < 6; i++) put_u32(w, (uint32_t)ints[i]);
    uint32_t d_vec[1] = {2};
    put_head(w, "w", 0, 1, d_vec);
    put_f64(w, 1.5);
    put_f64(w, -0.1);
}

/* Write n bytes to a fresh file in a fresh scratch directory; the file's
 * path goes to path[cap] (rm_temp removes both). */
static int write_temp(const void *p, size_t n, char *path, size_t cap) {
    char dir[256];
    if (temp_dir_make(dir, sizeof dir, "memlab-fx")) return -1;
    int len = snprintf(path, cap, "%s/fixture.fx", dir);
    if (len < 0 || (size_t)len >= cap) {
        rmdir(dir);
        return -1;
    }
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t got = fwrite(p, 1, n, f);
    return fclose(f) == 0 && got == n ? 0 : -1;
}

/* Remove the file write_temp made and its directory. */
static void rm_temp(const char *path) {
    char dir[300];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    unlink(path);
    if (slash) {
        *slash = '\0';
        rmdir(dir);
    }
}

/* Parsing buf[len] must fail with a message that contains want (if not NULL). */
static void expect_refused(const void *buf, size_t len, const char *want, const char *what) {
    fixture f;
    ml_error e;
    memset(&e, 0, sizeof e);
    int rc = fixture_parse(buf, len, &f, &e);
    CHECK(rc == -1, "%s: accepted", what);
    CHECK(e.msg[0] != '\0', "%s: refused without a message", what);
    CHECK(!want || strstr(e.msg, want), "%s: message '%s' lacks '%s'", what, e.msg, want);
    CHECK(f.n == 0 && f.entries == NULL, "%s: left a half-filled fixture", what);
    fixture_free(&f);
}

/* The reader decodes a known file exactly and refuses every kind of damage. */
static void test_fixture_format(void) {
    bytebuf w;
    fixture f;
    ml_error e;
    small_fixture(&w);

    CHECK(fixture_parse(w.b, w.n, &f, &e) == 0, "valid fixture refused: %s", e.msg);
    CHECK(f.n == 3, "entries %d, want 3", f.n);
    const fx_entry *s = fixture_get(&f, "spec");
    const fx_entry *in = fixture_get(&f, "input");
    const fx_entry *v = fixture_get(&f, "w");
    CHECK(s && s->kind == FX_TEXT && s->n == 5 && !strcmp(s->text, "a: 1\n"), "spec entry");
    CHECK(in && in->kind == FX_I32 && in->ndim == 2 && in->dims[0] == 2 && in->dims[1] == 3 &&
              in->n == 6, "input shape");
    if (in && in->i32)
        CHECK(in->i32[2] == -1 && in->i32[3] == 2147483647 && in->i32[4] == -2147483647 - 1,
              "int32 values %d %d %d", in->i32[2], in->i32[3], in->i32[4]);
    CHECK(v && v->kind == FX_F64 && v->n == 2, "float64 entry");
    if (v && v->f64) CHECK(v->f64[0] == 1.5 && v->f64[1] == -0.1, "float64 values");
    CHECK(fixture_get(&f, "missing") == NULL, "fixture_get found a missing name");
    CHECK(fixture_get(&f, "spe") == NULL, "fixture_get matched a prefix");
    fixture_free(&f);
    fixture_free(&f); /* twice is safe */
    CHECK(f.n == 0 && f.entries == NULL, "fixture_free left entries");

    /* Every truncation, including inside the header and the data. */
    for (size_t len = 0; len < w.n; len++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu of %zu bytes", len, w.n);
        expect_refused(w.b, len, NULL, what);
    }

    bytebuf bad = w;
    memcpy(bad.b, "MLFY", 4);
    expect_refused(bad.b, bad.n, "MLFX", "wrong magic");

    bad = w;
    bad.b[4] = 2;
    expect_refused(bad.b, bad.n, "version", "version 2");

    bad = w;
    bad.b[8] = 0xff, bad.b[9] = 0xff, bad.b[10] = 0xff, bad.b[11] = 0x7f;
    expect_refused(bad.b, bad.n, "entries", "absurd entry count");

    bad = w;
    bad.b[8] = 4; /* one more entry than the file holds */
    expect_refused(bad.b, bad.n, NULL, "entry count one too many");

    bad = w;
    bad.b[8] = 2; /* one fewer: the last entry becomes trailing bytes */
    expect_refused(bad.b, bad.n, "follow", "entry count one too few");

    bad = w;
    bad.b[bad.n++] = 0;
    expect_refused(bad.b, bad.n, "follow", "trailing byte");

    /* Entry 0 ("spec") starts at 12: name length, name, kind at 20, ndim at 24. */
    bad = w;
    bad.b[20] = 3;
    expect_refused(bad.b, bad.n, "kind", "unknown kind");

    bad = w;
    bad.b[24] = 2;
    expect_refused(bad.b, bad.n, "ndim", "text with two dims");

    bad = w;
    bad.b[24] = 0;
    expect_refused(bad.b, bad.n, "ndim", "zero dims");

    bad = w;
    bad.b[12] = 0;
    expect_refused(bad.b, bad.n, "name length", "empty name");

    bad = w;
    bad.b[14] = 0x10; /* name length 1 MiB + 4 */
    expect_refused(bad.b, bad.n, "name length", "name too long");

    /* Duplicate name: "w" twice, each entry complete. */
    bad.n = 0;
    put_bytes(&bad, "MLFX", 4);
    put_u32(&bad, 1);
    put_u32(&bad, 2);
    uint32_t one[1] = {1};
    for (int i = 0; i < 2; i++) {
        put_head(&bad, "w", 0, 1, one);
        put_f64(&bad, 2.0);
    }
    expect_refused(bad.b, bad.n, "twice", "duplicate name");

    /* Dims whose product overflows size_t must be refused, not allocated. */
    bad.n = 0;
    put_bytes(&bad, "MLFX", 4);
    put_u32(&bad, 1);
    put_u32(&bad, 1);
    uint32_t huge[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    put_head(&bad, "w", 0, 4, huge);
    for (int i = 0; i < 4; i++) put_f64(&bad, 0.0);
    expect_refused(bad.b, bad.n, "overflow", "overflowing dims");

    /* Dims that fit in size_t but not in the file: refused before allocating. */
    bad.n = 0;
    put_bytes(&bad, "MLFX", 4);
    put_u32(&bad, 1);
    put_u32(&bad, 1);
    uint32_t big[2] = {0x10000000u, 0x10000000u};
    put_head(&bad, "w", 0, 2, big);
    put_f64(&bad, 0.0);
    expect_refused(bad.b, bad.n, "truncated", "dims larger than the file");

    /* The same refusals through files on disk, with the path in the message. */
    char path[300];
    CHECK(write_temp(w.b, w.n, path, sizeof path) == 0, "cannot write a temp file");
    CHECK(fixture_load(path, &f, &e) == 0, "valid file refused: %s", e.msg);
    CHECK(f.n == 3, "file entries %d", f.n);
    fixture_free(&f);
    rm_temp(path);

    CHECK(write_temp(w.b, w.n - 3, path, sizeof path) == 0, "cannot write a temp file");
    memset(&e, 0, sizeof e);
    CHECK(fixture_load(path, &f, &e) == -1, "truncated file accepted");
    CHECK(strstr(e.msg, path) && strstr(e.msg, "truncated"), "truncated file: '%s'", e.msg);
    fixture_free(&f);
    rm_temp(path);

    bad = w;
    memcpy(bad.b, "PK\3\4", 4);
    CHECK(write_temp(bad.b, bad.n, path, sizeof path) == 0, "cannot write a temp file");
    memset(&e, 0, sizeof e);
    CHECK(fixture_load(path, &f, &e) == -1, "wrong magic file accepted");
    CHECK(strstr(e.msg, path) && strstr(e.msg, "MLFX"), "wrong magic file: '%s'", e.msg);
    fixture_free(&f);
    rm_temp(path);

    memset(&e, 0, sizeof e);
    CHECK(fixture_load("/nonexistent/memlab.fx", &f, &e) == -1, "missing file accepted");
    CHECK(e.msg[0] != '\0', "missing file: no message");
}

/* ---- finding fixtures ------------------------------------------------------ */

typedef struct fx_list {
    char **paths;
    int n;
} fx_list;

/* qsort order of char * elements. */
static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Append the *.fx files of dir (sorted by name) to l; a missing dir adds none. */
static void list_fixtures(const char *dir, fx_list *l) {
    DIR *d = opendir(dir);
    if (!d) return;
    int first = l->n;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 3, ".fx")) continue;
        char **np = realloc(l->paths, sizeof *np * (size_t)(l->n + 1));
        if (!np) break;
        l->paths = np;
        size_t cap = strlen(dir) + len + 2;
        l->paths[l->n] = malloc(cap);
        if (!l->paths[l->n]) break;
        snprintf(l->paths[l->n], cap, "%s/%s", dir, de->d_name);
        l->n++;
    }
    closedir(d);
    qsort(l->paths + first, (size_t)(l->n - first), sizeof *l->paths, cmp_str);
}

/* Release the paths and leave the list empty. */
static void free_list(fx_list *l) {
    for (int i = 0; i < l->n; i++) free(l->paths[i]);
    free(l->paths);
    l->paths = NULL;
    l->n = 0;
}

/* ---- comparing one fixture with the model -------------------------------- */

/* max |a - b| / max |b| (b the twin); 0 when both are zero. */
static double rel_diff(const real *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= num)) num = d; /* NaN wins */
        if (fabs(b[i]) > den) den = fabs(b[i]);
    }
    if (den == 0) return num;
    return num / den;
}

/* Does entry x have the shape of parameter p ((rows,) for vectors)? */
static int same_shape(const fx_entry *x, const ml_param *p) {
    if (x->kind != FX_F64) return 0;
    if (x->ndim == 2) return x->dims[0] == (size_t)p->rows && x->dims[1] == (size_t)p->cols;
    return x->ndim == 1 && p->cols == 1 && x->dims[0] == (size_t)p->rows;
}

/* Is name one of the entries every fixture holds besides parameters? */
static int is_fixed_entry(const char *name) {
    static const char *const fixed[] = {"spec", "input", "target", "loss", "logits", "aux"};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (!strcmp(name, fixed[i])) return 1;
    return 0;
}

/* The mixers' auxiliary loss inside the fixture's loss ("aux", MoM's
 * load-balancing loss; 0 when the fixture has none). */
static double fixture_aux(const fixture *f) {
    const fx_entry *a = fixture_get(f, "aux");
    return a && a->kind == FX_F64 && a->n == 1 ? a->f64[0] : 0.0;
}

/* Loss, its auxiliary part and every gradient of the model on the fixture's
 * batch, against the twin. Returns the worst relative difference seen. */
static double compare_loss_grads(ml_model *m, const fixture *f, const int *input,
                                 const int *target, int B, int T, const char *tag) {
    const fx_entry *fl = fixture_get(f, "loss");
    double want = fl->f64[0], aux = fixture_aux(f);
    double loss = model_forward(m, input, target, B, T, NULL);
    double worst = fabs(loss - want) / fabs(want);
    CHECK(fabs(loss - want) <= TWIN_RTOL * fabs(want), "%s: loss %.17g, twin %.17g", tag, loss,
          want);
    double da = fabs(m->aux_loss - aux) / (aux != 0 ? fabs(aux) : 1.0);
    if (!(da <= worst)) worst = da;
    CHECK(da <= TWIN_RTOL, "%s: auxiliary loss %.17g, twin %.17g", tag, m->aux_loss, aux);
    model_zero_grad(m);
    model_backward(m);
    for (int i = 0; i < m->n_tensors; i++) {
        const ml_param *p = &m->params[i];
        char gname[128];
        snprintf(gname, sizeof gname, "grad.%s", p->name);
        const fx_entry *g = fixture_get(f, gname);
        if (!g || !same_shape(g, p)) continue; /* reported by the caller */
        double d = rel_diff(m->g + p->offset, g->f64, p->n);
        if (!(d <= worst)) worst = d;
        CHECK(d <= TWIN_RTOL, "%s: %s differs from the twin by %.3g (relative)", tag, gname, d);
    }
    return worst;
}

/* Logits through the public API: with a single supervised position (b,t) and
 * target v the loss is -log softmax(logits[b,t])[v], so B*T*V forwards give
 * the model's log-probabilities, compared with the twin's logits after the
 * same log-softmax (done here, in double). Returns the relative difference. */
static double compare_logits(ml_model *m, const fx_entry *lg, const int *input, int B, int T,
                             int V, int *probe) {
    double num = 0, den = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const double *z = lg->f64 + ((size_t)b * T + t) * V;
            double mx = z[0], se = 0;
            for (int v = 1; v < V; v++) mx = fmax(mx, z[v]);
            for (int v = 0; v < V; v++) se += exp(z[v] - mx);
            double lse = mx + log(se);
            for (int i = 0; i < B * T; i++) probe[i] = -1;
            for (int v = 0; v < V; v++) {
                probe[b * T + t] = v;
                double got = -(model_forward(m, input, probe, B, T, NULL) - m->aux_loss);
                double want = z[v] - lse;
                double d = fabs(got - want);
                if (!(d <= num)) num = d;
                if (fabs(want) > den) den = fabs(want);
            }
        }
    return den > 0 ? num / den : num;
}

/* Cross-entropy of the twin's own logits and targets, recomputed here: the
 * fixture must agree with itself before it can judge the model. */
static double fixture_loss(const fx_entry *lg, const int *target, int BT, int V) {
    double sum = 0;
    int count = 0;
    for (int i = 0; i < BT; i++) {
        if (target[i] < 0) continue;
        const double *z = lg->f64 + (size_t)i * V;
        double mx = z[0], se = 0;
        for (int v = 1; v < V; v++) mx = fmax(mx, z[v]);
        for (int v = 0; v < V; v++) se += exp(z[v] - mx);
        sum += mx + log(se) - z[target[i]];
        count++;
    }
    return count ? sum / count : 0;
}

/* The whole check of one fixture file. Returns 1 if it could be run (even if
 * values differ), 0 if the fixture or the model could not be set up. */
static int check_fixture(const char *path) {
    fixture f;
    ml_error e;
    run_config cfg;
    ml_model m;
    int *input = NULL, *target = NULL, *probe = NULL;
    int ran = 0, built = 0;
    memset(&m, 0, sizeof m);
    memset(&e, 0, sizeof e);
    if (fixture_load(path, &f, &e)) {
        CHECK(0, "%s", e.msg);
        return 0;
    }
    const fx_entry *spec = fixture_get(&f, "spec"), *in = fixture_get(&f, "input"),
                   *tg = fixture_get(&f, "target"), *fl = fixture_get(&f, "loss"),
                   *lg = fixture_get(&f, "logits");
    if (!spec || spec->kind != FX_TEXT || !in || in->kind != FX_I32 || in->ndim != 2 || !tg ||
        tg->kind != FX_I32 || tg->ndim != 2 || tg->dims[0] != in->dims[0] ||
        tg->dims[1] != in->dims[1] || !fl || fl->kind != FX_F64 || fl->n != 1 || !lg ||
        lg->kind != FX_F64 || lg->ndim != 3) {
        CHECK(0, "%s: spec, input, target, loss or logits missing or malformed", path);
        goto done;
    }
    if (spec_load_string(spec->text, spec->n, path, &cfg, &e)) {
        char msg[1200];
        ml_error_format(&e, msg, sizeof msg);
        CHECK(0, "%s: spec refused: %s", path, msg);
        goto done;
    }
    const ml_task *task = task_find(cfg.task);
    if (!task) {
        CHECK(0, "%s: unknown task '%s'", path, cfg.task);
        goto done;
    }
    int V = task->vocab_size(&cfg.task_cfg), L = task->seq_len(&cfg.task_cfg);
    int B = (int)in->dims[0], T = (int)in->dims[1];
    if (B < 1 || T < 1 || T > L || lg->dims[0] != (size_t)B || lg->dims[1] != (size_t)T ||
        lg->dims[2] != (size_t)V) {
        CHECK(0, "%s: B %d T %d (seq_len %d), logits %zux%zux%zu, V %d", path, B, T, L,
              lg->dims[0], lg->dims[1], lg->dims[2], V);
        goto done;
    }
    input = malloc(sizeof *input * (size_t)(B * T));
    target = malloc(sizeof *target * (size_t)(B * T));
    probe = malloc(sizeof *probe * (size_t)(B * T));
    if (!input || !target || !probe) {
        CHECK(0, "out of memory");
        goto done;
    }
    int supervised = 0, in_range = 1;
    for (int i = 0; i < B * T; i++) {
        input[i] = in->i32[i];
        target[i] = tg->i32[i];
        if (input[i] < 0 || input[i] >= V || target[i] < -1 || target[i] >= V) in_range = 0;
        supervised += target[i] >= 0;
    }
    if (!in_range || supervised == 0) {
        CHECK(0, "%s: tokens out of range or nothing supervised", path);
        goto done;
    }
    double self = fixture_loss(lg, target, B * T, V) + fixture_aux(&f);
    CHECK(fabs(self - fl->f64[0]) <= 1e-12 * fabs(fl->f64[0]),
          "%s: the fixture's loss %.17g disagrees with its logits and aux (%.17g)", path,
          fl->f64[0], self);

    if (model_build(&m, &cfg.model, V, L, B, &e)) {
        CHECK(0, "%s: model_build: %s", path, e.msg);
        goto done;
    }
    built = 1;
    /* Weights the fixture fails to set would keep these values and show up. */
    model_init_weights(&m, 20240601);

    int complete = 1;
    for (int i = 0; i < m.n_tensors; i++) {
        const ml_param *p = &m.params[i];
        char gname[128];
        snprintf(gname, sizeof gname, "grad.%s", p->name);
        const fx_entry *x = fixture_get(&f, p->name), *g = fixture_get(&f, gname);
        if (!x || !same_shape(x, p) || !g || !same_shape(g, p)) {
            CHECK(0, "%s: model parameter %s [%d,%d] missing or mis-shaped in the fixture",
                  path, p->name, p->rows, p->cols);
            complete = 0;
            continue;
        }
        for (size_t j = 0; j < p->n; j++) m.w[p->offset + j] = (real)x->f64[j];
    }
    for (int i = 0; i < f.n; i++) {
        const char *name = f.entries[i].name;
        if (is_fixed_entry(name)) continue;
        const char *pname = strncmp(name, "grad.", 5) ? name : name + 5;
        if (!model_param(&m, pname)) {
            CHECK(0, "%s: fixture entry %s is not a parameter of the C model", path, name);
            complete = 0;
        }
    }
    if (!complete) goto done;
    ran = 1;

    char tag[600];
    snprintf(tag, sizeof tag, "%s (LM head on supervised rows)", path);
    m.full_head = 0;
    double d_sup = compare_loss_grads(&m, &f, input, target, B, T, tag);
    snprintf(tag, sizeof tag, "%s (LM head on every row)", path);
    m.full_head = 1;
    double d_full = compare_loss_grads(&m, &f, input, target, B, T, tag);
    m.full_head = 0;
    double d_logits = compare_logits(&m, lg, input, B, T, V, probe);
    CHECK(d_logits <= TWIN_RTOL, "%s: log-softmax of the logits differs by %.3g (relative)",
          path, d_logits);
    test_note("%s: %d tensors, loss %.6f; worst relative difference %.2g (supervised head), "
              "%.2g (full head), %.2g (log-probabilities)",
              path, m.n_tensors, fl->f64[0], d_sup, d_full, d_logits);
done:
    if (built) model_free(&m);
    free(input);
    free(target);
    free(probe);
    fixture_free(&f);
    return ran;
}

/* Every fixture in tests/fixtures and build/twin matches the C model. */
static void test_model_matches_twin(void) {
    char dir[1024];
    fx_list l = {NULL, 0};
    snprintf(dir, sizeof dir, "%s/fixtures", test_dir());
    list_fixtures(dir, &l);
    int committed = l.n;
    snprintf(dir, sizeof dir, "%s/../build/twin", test_dir());
    list_fixtures(dir, &l);
    CHECK(l.n > 0, "no fixtures in %s/fixtures or %s: run `make twin`", test_dir(), dir);
    int ran = 0;
    for (int i = 0; i < l.n; i++) ran += check_fixture(l.paths[i]);
    CHECK(ran == l.n, "only %d of %d fixtures could be compared", ran, l.n);
    test_note("%d fixtures (%d committed), %d compared", l.n, committed, ran);
    free_list(&l);
}

const test_case tests_twin[] = {
    {"twin_fixture_format", test_fixture_format},
    {"twin_model_matches_fixtures", test_model_matches_twin},
    {NULL, NULL},
};
