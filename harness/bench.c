/* bench.c: tokens/s of a training step per mixer and size (see bench.h).
 *
 * Each configuration is built from the built-in defaults with --set style
 * assignments, so a benchmark row means exactly what the same keys mean in a
 * spec. The report states the machine and the code version it ran on. */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "kernels.h"
#include "model.h"
#include "spec.h"
#include "task.h"
#include "train.h"
#include "version.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct bench_row {
    char mixer[32];
    int d, L, full;
    double median, lo, hi, tokens_per_s;
} bench_row;

/* Time `steps` training steps of cfg after two warm-up steps; fills r. */
static int bench_one(const run_config *cfg, int steps, bench_row *r, ml_error *e) {
    const ml_task *task = task_find(cfg->task);
    const void *tcfg = cfg->task_cfg.bytes;
    int V = task->vocab_size(tcfg), T = task->seq_len(tcfg), B = cfg->train.batch_size;
    ml_model m;
    if (model_build(&m, &cfg->model, V, T, B, e)) return -1;
    m.full_head = cfg->train.full_head;
    model_init_weights(&m, 1);
    int *in = malloc(sizeof(int) * (size_t)B * T), *tg = malloc(sizeof(int) * (size_t)B * T);
    double *times = malloc(sizeof(double) * (size_t)steps);
    if (!in || !tg || !times) {
        free(in), free(tg), free(times);
        model_free(&m);
        return ML_FAIL(e, "out of memory");
    }
    for (int i = 0; i < B; i++)
        task->generate(tcfg, 1, SPLIT_TRAIN, i, in + (size_t)i * T, tg + (size_t)i * T);
    for (int s = -2; s < steps; s++) {
        double t0 = now_s();
        model_forward(&m, in, tg, B, T, NULL);
        model_zero_grad(&m);
        model_backward(&m);
        grad_clip(m.g, m.n_params, 1.0);
        for (int p = 0; p < m.n_tensors; p++) {
            const ml_param *pp = &m.params[p];
            adamw_step(m.w + pp->offset, m.g + pp->offset, m.m + pp->offset, m.v + pp->offset,
                       pp->n, (real)1e-3, (real)0.9, (real)0.999, (real)1e-8, (real)0.1,
                       s + 3);
        }
        if (s >= 0) times[s] = now_s() - t0;
    }
    qsort(times, (size_t)steps, sizeof(double), cmp_double);
    r->median = steps % 2 ? times[steps / 2] : 0.5 * (times[steps / 2 - 1] + times[steps / 2]);
    r->lo = times[0];
    r->hi = times[steps - 1];
    r->tokens_per_s = (double)B * T / r->median;
    free(in), free(tg), free(times);
    model_free(&m);
    return 0;
}

static int set_all(run_config *cfg, const char *const *sets, ml_error *e) {
    for (int i = 0; sets[i]; i++)
        if (spec_set(cfg, sets[i], e)) return -1;
    return spec_validate(cfg, e);
}

int bench_run(const bench_opts *o, ml_error *e) {
    static const char *const mixers[] = {"softmax", "linear"};
    static const int dims[] = {64, 128};
    static const int lens[] = {64, 256};
    int nd = o->quick ? 1 : 2, nl = o->quick ? 1 : 2;
    bench_row rows[2 * 2 * 2 * 2];
    int n_rows = 0;
    openblas_set_num_threads(o->threads);
    ml_db *db = NULL;
    if (o->db_path && db_open(&db, o->db_path, e)) return -1;
    char machine[512];
    machine_describe(machine, sizeof machine);
    int rc = -1;
    for (int mi = 0; mi < 2; mi++)
        for (int di = 0; di < nd; di++)
            for (int li = 0; li < nl; li++)
                for (int full = 0; full < 2; full++) {
                    run_config cfg;
                    char a[6][64];
                    snprintf(a[0], 64, "model.mixer=%s", mixers[mi]);
                    snprintf(a[1], 64, "model.d_model=%d", dims[di]);
                    snprintf(a[2], 64, "task.seq_len=%d", lens[li]);
                    snprintf(a[3], 64, "task.num_kv_pairs=%d", lens[li] / 16);
                    snprintf(a[4], 64, "train.full_head=%s", full ? "true" : "false");
                    snprintf(a[5], 64, "train.steps=%d", o->steps);
                    const char *const sets[] = {a[0], a[1], a[2], a[3], a[4], a[5],
                                                "model.conv=4", "model.mlp=false",
                                                "train.batch_size=64", NULL};
                    if (config_defaults(&cfg, e) || set_all(&cfg, sets, e)) goto done;
                    snprintf(cfg.name, sizeof cfg.name, "bench");
                    bench_row *r = &rows[n_rows++];
                    snprintf(r->mixer, sizeof r->mixer, "%s", mixers[mi]);
                    r->d = dims[di];
                    r->L = lens[li];
                    r->full = full;
                    if (bench_one(&cfg, o->steps, r, e)) goto done;
                    fprintf(stderr, "  %-8s d %-4d L %-4d head %-10s %8.2f ms/step  %9.0f tokens/s\n",
                            r->mixer, r->d, r->L, full ? "full" : "supervised", 1e3 * r->median,
                            r->tokens_per_s);
                    if (db) {
                        char json[1 << 14], hash[65];
                        long long run;
                        if (config_to_json(&cfg, json, sizeof json) < 0) {
                            ML_FAIL(e, "config too large");
                            goto done;
                        }
                        config_hash(&cfg, hash);
                        if (db_run_begin(db, json, hash, memlab_code_version(), machine, &run, e) ||
                            db_begin(db, e) ||
                            db_metric(db, run, o->steps, "bench", "step_s_median", r->median, e) ||
                            db_metric(db, run, o->steps, "bench", "step_s_min", r->lo, e) ||
                            db_metric(db, run, o->steps, "bench", "step_s_max", r->hi, e) ||
                            db_metric(db, run, o->steps, "bench", "tokens_per_s", r->tokens_per_s, e) ||
                            db_metric(db, run, o->steps, "bench", "threads", o->threads, e) ||
                            db_commit(db, e) || db_run_end(db, run, "finished", o->steps, NULL, e))
                            goto done;
                    }
                }
    if (o->report_path) {
        FILE *f = fopen(o->report_path, "w");
        if (!f) {
            ML_FAIL(e, "cannot write the report %s", o->report_path);
            goto done;
        }
        fprintf(f, "# memlab bench\n\ncode %s; %s; %d BLAS thread(s); %d timed steps after 2 "
                   "warm-up steps; batch 64, V 8192, 2 layers, conv 4, no MLP, N = L/16.\n\n",
                memlab_code_version(), machine, o->threads, o->steps);
        fprintf(f, "| mixer | d_model | L | head | ms/step (median) | min–max ms | tokens/s | "
                   "supervised/full |\n|---|---|---|---|---|---|---|---|\n");
        for (int i = 0; i < n_rows; i++) {
            const bench_row *r = &rows[i];
            /* rows come in (supervised, full) pairs of the same model */
            char ratio[32] = "";
            if (!r->full && i + 1 < n_rows)
                snprintf(ratio, sizeof ratio, "%.2fx", rows[i + 1].median / r->median);
            fprintf(f, "| %s | %d | %d | %s | %.2f | %.2f–%.2f | %.0f | %s |\n", r->mixer, r->d,
                    r->L, r->full ? "full" : "supervised", 1e3 * r->median, 1e3 * r->lo,
                    1e3 * r->hi, r->tokens_per_s, ratio);
        }
        fclose(f);
        fprintf(stderr, "report: %s\n", o->report_path);
    }
    rc = 0;
done:
    db_close(db);
    return rc;
}
