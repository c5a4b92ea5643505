/* train.c: the training loop and evaluation (see train.h).
 *
 * Data: example i of the training set is generated on demand from
 * (seed, SPLIT_TRAIN, i); each epoch visits the train_examples indices in a
 * fresh permutation drawn from (seed, epoch). With train_examples = 0 every
 * step draws new examples. The test stream is (seed, SPLIT_TEST, i), disjoint
 * by construction. Everything the run does is a function of the config, so
 * the same config and seed give the same numbers on the same build. */
#include "train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#ifdef __SSE__
#include <xmmintrin.h>
#endif

#include "blas.h"
#include "gemm_bf16.h"
#include "kernels.h"
#include "model.h"
#include "rng.h"
#include "spec.h"
#include "task.h"
#include "version.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double peak_rss_mib(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return 0.0;
    return (double)ru.ru_maxrss / 1024.0; /* ru_maxrss is in KiB on Linux */
}

void machine_describe(char *buf, size_t cap) {
    char host[128] = "unknown", cpu[160] = "unknown";
    gethostname(host, sizeof host - 1);
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (!strncmp(line, "model name", 10)) {
                char *colon = strchr(line, ':');
                if (colon) {
                    snprintf(cpu, sizeof cpu, "%s", colon + 2);
                    cpu[strcspn(cpu, "\n")] = '\0';
                }
                break;
            }
        }
        fclose(f);
    }
    snprintf(buf, cap, "%s; %s; %ld cpus; OpenBLAS %s; core %s; bf16 products %s", host, cpu,
             sysconf(_SC_NPROCESSORS_ONLN), openblas_get_config(), blas_core_note(),
             gemm_bf16_kernel());
}

/* Fill input/target for `count` examples of split starting at the given
 * example indices. */
static void make_batch(const ml_task *task, const void *tcfg, const void *data, long seed,
                       int split, const long *index, int count, int T, int *input, int *target) {
    for (int i = 0; i < count; i++)
        task->generate(tcfg, data, (uint64_t)seed, split, index[i], input + (size_t)i * T,
                       target + (size_t)i * T);
}

int train_evaluate(ml_model *m, const ml_task *task, const void *task_cfg, const void *data,
                   long seed, int split, int examples, int batch, train_eval *r, ml_error *e) {
    int T = task->seq_len(task_cfg);
    int V = task->per_class ? task->vocab_size(task_cfg) : 0;
    examples = (int)task_eval_examples(task, task_cfg, data, split, examples);
    if (batch > m->maxB) batch = m->maxB;
    int *in = malloc(sizeof(int) * (size_t)batch * T);
    int *tg = malloc(sizeof(int) * (size_t)batch * T);
    int *pred = malloc(sizeof(int) * (size_t)batch * T);
    long *idx = malloc(sizeof(long) * (size_t)batch);
    long *cls = V > 0 ? calloc(2 * (size_t)V, sizeof(long)) : NULL;
    if (!in || !tg || !pred || !idx || (V > 0 && !cls)) {
        free(in), free(tg), free(pred), free(idx), free(cls);
        return ML_FAIL(e, "out of memory in evaluation");
    }
    ml_eval_totals tot;
    memset(&tot, 0, sizeof tot);
    tot.n_classes = V;
    tot.class_right = cls;
    tot.class_count = cls ? cls + V : NULL;
    for (int start = 0; start < examples; start += batch) {
        int n = examples - start < batch ? examples - start : batch;
        for (int i = 0; i < n; i++) idx[i] = start + i;
        make_batch(task, task_cfg, data, seed, split, idx, n, T, in, tg);
        double l = model_forward(m, in, tg, n, T, pred);
        tot.loss_sum += (l - m->aux_loss) * m->count;
        tot.examples += n;
        for (int i = 0; i < n; i++) {
            int sup = 0, right = 0;
            for (int t = 0; t < T; t++) {
                size_t k = (size_t)i * T + t;
                if (tg[k] < 0) continue;
                sup++;
                right += pred[k] == tg[k];
                if (cls && tg[k] < V) {
                    cls[tg[k]] += pred[k] == tg[k];
                    cls[V + tg[k]]++;
                }
            }
            tot.positions += sup;
            tot.right += right;
            if (sup > 0) {
                tot.example_acc_sum += (double)right / sup;
                tot.examples_scored++;
            }
        }
    }
    memset(r, 0, sizeof *r);
    r->n_metrics = task_score(task, task_cfg, &tot, r->metrics, TASK_MAX_METRICS);
    r->accuracy = r->n_metrics > 0 ? r->metrics[0].value : 0.0;
    r->loss = tot.positions ? tot.loss_sum / (double)tot.positions : 0.0;
    r->examples = tot.examples;
    r->positions = tot.positions;
    free(in), free(tg), free(pred), free(idx), free(cls);
    return 0;
}

int train_record(const run_config *cfg, ml_db *db, const ml_metric *metrics, int n,
                 long long *run_id, ml_error *e) {
    char *json = malloc(1 << 16);
    if (!json) return ML_FAIL(e, "out of memory");
    if (config_to_json(cfg, json, 1 << 16) < 0) {
        free(json);
        return ML_FAIL(e, "config too large to serialise");
    }
    char hash[65], machine[512];
    config_hash(cfg, hash);
    machine_describe(machine, sizeof machine);
    int rc = db_run_begin(db, json, hash, memlab_code_version(), machine, run_id, e);
    free(json);
    if (rc) return -1;
    if (db_begin(db, e)) return -1;
    for (int i = 0; i < n; i++)
        if (db_metric(db, *run_id, 0, metrics[i].split, metrics[i].name, metrics[i].value, e))
            return -1;
    return db_commit(db, e) || db_run_end(db, *run_id, "finished", 0, NULL, e) ? -1 : 0;
}

/* Record measured metrics into a run row claimed beforehand, and finish it. */
static int record_claimed(ml_db *db, long long run_id, const ml_metric *metrics, int n,
                          ml_error *e) {
    if (db_begin(db, e)) return -1;
    for (int i = 0; i < n; i++)
        if (db_metric(db, run_id, 0, metrics[i].split, metrics[i].name, metrics[i].value, e))
            return -1;
    return db_commit(db, e) || db_run_end(db, run_id, "finished", 0, NULL, e) ? -1 : 0;
}

/* A training-free run (task->measure): measure at the run's seed and record.
 * The outcome's accuracy and loss are the measurement's first two metrics. */
static int measure_run(const run_config *cfg, const ml_task *task, ml_db *db,
                       train_outcome *out, ml_error *e) {
    ml_metric m[TASK_MAX_METRICS];
    double t0 = now_s();
    int n = task->measure(cfg->task_cfg.bytes, cfg->train.seed, m, TASK_MAX_METRICS, e);
    if (n < 0) return -1;
    if (db && (out->run_id ? record_claimed(db, out->run_id, m, n, e)
                           : train_record(cfg, db, m, n, &out->run_id, e)))
        return -1;
    out->test_accuracy = n > 0 ? m[0].value : 0.0;
    out->test_loss = n > 1 ? m[1].value : 0.0;
    out->wall_s = now_s() - t0;
    snprintf(out->status, sizeof out->status, "finished");
    return 0;
}

/* The task's metrics of an evaluation beyond the headline accuracy (which
 * the caller records), e.g. bits_per_byte, accuracy_macro. */
static int put_task_metrics(ml_db *db, long long run, long step, const train_eval *ev,
                            ml_error *e) {
    for (int k = 1; k < ev->n_metrics; k++)
        if (db_metric(db, run, step, ev->metrics[k].split, ev->metrics[k].name,
                      ev->metrics[k].value, e))
            return -1;
    return 0;
}

/* At the end of a run: evaluate the trained model on each evaluation slice of
 * the task and record its metrics as name@label (and loss@label). */
static int evaluate_slices(ml_model *m, const ml_task *task, const void *tcfg, const void *data,
                           const run_config *cfg, ml_db *db, long long run, long step,
                           ml_error *e) {
    int n = task->n_slices ? task->n_slices(tcfg) : 0;
    int saved_context = m->context_len;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        ml_cfgbuf s;
        char label[64], name[160];
        task->slice(tcfg, i, s.bytes, label, sizeof label);
        m->context_len = task->context_len ? task->context_len(s.bytes) : -1;
        train_eval r;
        rc = train_evaluate(m, task, s.bytes, data, cfg->train.seed, SPLIT_TEST,
                            cfg->eval.examples, cfg->eval.batch_size, &r, e);
        if (rc || !db) continue;
        rc = db_begin(db, e);
        for (int k = 0; k < r.n_metrics && !rc; k++) {
            snprintf(name, sizeof name, "%s@%s", r.metrics[k].name, label);
            rc = db_metric(db, run, step, r.metrics[k].split, name, r.metrics[k].value, e);
        }
        snprintf(name, sizeof name, "loss@%s", label);
        if (!rc) rc = db_metric(db, run, step, "test", name, r.loss, e);
        if (!rc) rc = db_commit(db, e);
    }
    m->context_len = saved_context;
    return rc ? -1 : 0;
}

/* Training FLOPs of one step of m on B sequences of T tokens, forward and
 * backward, by the 6N rule of scaling-law papers (Kaplan et al. 2020): 6 per
 * non-embedding parameter and token, plus the LM head at the m->S rows it ran
 * on (6 S C V) and softmax attention's scores and mix (12 C per visible
 * query-key pair and layer, as harness/bench.c counts them). Not counted:
 * element-wise work and the state products of the other mixers (their
 * per-token cost does not grow with L except memory caching's); a mixture of
 * memories counts every memory's weights. The figures compare mixers on this
 * one count (train/flops); bench.c's per-mixer formulas are the finer one. */
static double step_flops(const ml_model *m, const run_config *cfg, int B, int T) {
    double C = m->cfg.d_model, V = m->V;
    double emb = V * C * (m->cfg.tie_embeddings ? 1 : 2);
    if (m->cfg.position == POS_LEARNED) emb += (double)m->maxT * C;
    double f = 6.0 * ((double)m->n_params - emb) * B * T + 6.0 * m->S * C * V;
    if (!strcmp(m->cfg.mixer, "softmax")) {
        char w[32];
        long window = config_value(cfg, "model.window", w, sizeof w) ? 0 : atol(w), pairs = 0;
        for (long t = 1; t <= T; t++) pairs += window > 0 && window < t ? window : t;
        f += 12.0 * C * (double)pairs * B * m->cfg.n_layers;
    }
    return f;
}

/* Record a metric when there is a database. */
static int put(ml_db *db, long long run, long step, const char *split, const char *name,
               double value, ml_error *e) {
    return db ? db_metric(db, run, step, split, name, value, e) : 0;
}

static int finite_all(const real *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* Record the mean of each mixer statistic over the forward calls since the
 * last reset, as train/layer<l>.<name>. */
static int record_stats(ml_db *db, long long run, long step, const ml_model *m, ml_error *e) {
    if (m->n_stats == 0 || m->stat_calls == 0) return 0;
    if (db_begin(db, e)) return -1;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        for (int i = 0; i < m->n_stats; i++) {
            char stat[64], name[96];
            m->mixer->stat_name(m->cfg.mixer_cfg.bytes, i, stat, sizeof stat);
            snprintf(name, sizeof name, "layer%d.%s", l, stat);
            double v = m->stats[(size_t)l * (size_t)m->n_stats + (size_t)i] / (double)m->stat_calls;
            if (db_metric(db, run, step, "train", name, v, e)) return -1;
        }
    }
    return db_commit(db, e);
}

/* Live progress on a terminal: one rewritten line. */
static void progress_line(const run_config *cfg, long step, double loss, double acc,
                          double elapsed) {
    long total = cfg->train.steps;
    double eta = step > 0 ? elapsed / (double)step * (double)(total - step) : 0.0;
    char acc_text[32] = "-";
    if (acc >= 0) snprintf(acc_text, sizeof acc_text, "%.4f", acc);
    fprintf(stderr, "\r  %s/%s step %ld/%ld  loss %.4f  test acc %s  %.0fs elapsed  ETA %.0fs   ",
            cfg->model.mixer, cfg->task, step, total, loss, acc_text, elapsed, eta);
    fflush(stderr);
}

static int train_run_body(const run_config *cfg, ml_db *db, const train_opts *o,
                          train_outcome *out, ml_error *e);

int train_run(const run_config *cfg, ml_db *db, const train_opts *o, train_outcome *out,
              ml_error *e) {
#ifdef __SSE__
    /* Flush denormals to zero while training: tiny values otherwise slow steps
     * several-fold. The caller's mode is restored: outside training, config
     * checks compare against denormal bounds (DBL_TRUE_MIN). */
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
#endif
    /* the precision of the matrix products, for this run only */
    int bf16 = ml_matmul_bf16();
    ml_matmul_set_bf16(cfg->train.matmul == MATMUL_BF16);
    int rc = train_run_body(cfg, db, o, out, e);
    ml_matmul_set_bf16(bf16);
#ifdef __SSE__
    _mm_setcsr(csr);
#endif
    return rc;
}

static int train_run_body(const run_config *cfg, ml_db *db, const train_opts *o,
                          train_outcome *out, ml_error *e) {
    memset(out, 0, sizeof *out);
    snprintf(out->status, sizeof out->status, "failed");
    const ml_task *task = task_find(cfg->task);
    if (!task) return ML_FAIL(e, "task: unknown task '%s'", cfg->task);
    if (spec_validate(cfg, e)) return -1;
    out->run_id = o ? o->run_id : 0; /* a claimed row (memlab run) */
    if (task->measure) return measure_run(cfg, task, db, out, e);
    const void *tcfg = cfg->task_cfg.bytes;
    int V = task->vocab_size(tcfg), T = task->seq_len(tcfg);
    int B = cfg->train.batch_size;
    int maxB = B > cfg->eval.batch_size ? B : cfg->eval.batch_size;
    const train_config *tc = &cfg->train;

    char *json = malloc(1 << 16);
    if (!json) return ML_FAIL(e, "out of memory");
    if (config_to_json(cfg, json, 1 << 16) < 0) {
        free(json);
        return ML_FAIL(e, "config too large to serialise");
    }
    char hash[65], machine[512];
    config_hash(cfg, hash);
    machine_describe(machine, sizeof machine);

    ml_model m;
    if (model_build(&m, &cfg->model, V, task_max_seq_len(task, tcfg), maxB, e)) {
        free(json);
        return -1;
    }
    m.full_head = tc->full_head;
    m.context_len = task->context_len ? task->context_len(tcfg) : -1;
    model_init_weights(&m, (uint64_t)tc->seed);
    out->n_params = (long)m.n_params;
    out->state_size = model_state_size(&m, T);

    long long run = o ? o->run_id : 0; /* a claimed row, or one inserted here */
    if (db && !run && db_run_begin(db, json, hash, memlab_code_version(), machine, &run, e)) {
        model_free(&m);
        free(json);
        return -1;
    }
    free(json);
    out->run_id = run;

    int *in = malloc(sizeof(int) * (size_t)B * T);
    int *tg = malloc(sizeof(int) * (size_t)B * T);
    long *idx = malloc(sizeof(long) * (size_t)B);
    long n_train = tc->train_examples;
    long *perm = n_train > 0 ? malloc(sizeof(long) * (size_t)n_train) : NULL;
    int rc = -1;
    long step = 0;
    char err_text[1200] = "";
    void *data = NULL; /* the task's data (task_open), NULL when it has none */
    if (!in || !tg || !idx || (n_train > 0 && !perm)) {
        ML_FAIL(e, "out of memory for batches");
        goto done;
    }
    if (task_open(task, tcfg, &data, e)) goto done;
    if (db && (db_begin(db, e) || put(db, run, 0, "model", "params", (double)m.n_params, e) ||
               put(db, run, 0, "model", "state_size", (double)out->state_size, e) ||
               db_commit(db, e)))
        goto done;

    long epoch = -1, pos = n_train; /* position in the current permutation */
    double t_start = now_s(), t_train = 0.0, win_loss = 0.0, win_aux = 0.0, flops = 0.0;
    long win_n = 0;
    double last_acc = -1.0;
    const char *status = "finished";
    char diverged_what[64] = "";
    for (step = 0; step < tc->steps; step++) {
        if (o && o->stop && *o->stop) {
            status = "interrupted";
            break;
        }
        for (int i = 0; i < B; i++) {
            if (n_train > 0) {
                if (pos >= n_train) {
                    epoch++;
                    pos = 0;
                    ml_rng r;
                    rng_seed3(&r, (uint64_t)tc->seed, 0x65706f6368ull, (uint64_t)epoch);
                    for (long k = 0; k < n_train; k++) perm[k] = k;
                    for (long k = n_train - 1; k > 0; k--) {
                        long j = (long)rng_below(&r, (uint64_t)k + 1);
                        long t = perm[k];
                        perm[k] = perm[j];
                        perm[j] = t;
                    }
                }
                idx[i] = perm[pos++];
            } else {
                idx[i] = step * (long)B + i;
            }
        }
        make_batch(task, tcfg, data, tc->seed, SPLIT_TRAIN, idx, B, T, in, tg);
        double t0 = now_s();
        double loss = model_forward_train(&m, in, tg, B, T);
        if (!isfinite(loss)) {
            status = "diverged";
            snprintf(diverged_what, sizeof diverged_what, "loss is %g", loss);
            break;
        }
        flops += step_flops(&m, cfg, B, T);
        model_zero_grad(&m);
        model_backward(&m);
        real gscale;
        double gnorm = grad_clip_scale(m.g, m.n_params, tc->grad_clip, &gscale);
        if (!isfinite(gnorm)) {
            status = "diverged";
            snprintf(diverged_what, sizeof diverged_what, "gradient norm is %g", gnorm);
            break;
        }
        double lr = lr_schedule((int)step, (int)tc->steps, tc->warmup, tc->lr, tc->lr_min);
        for (int p = 0; p < m.n_tensors; p++) {
            const ml_param *pp = &m.params[p];
            adamw_step_scaled(m.w + pp->offset, m.g + pp->offset, m.m + pp->offset,
                              m.v + pp->offset, pp->n, (real)lr, (real)tc->beta1,
                              (real)tc->beta2, (real)tc->adam_eps,
                              pp->decay ? (real)tc->weight_decay : 0, (int)step + 1, gscale);
        }
        t_train += now_s() - t0;
        win_loss += loss;
        win_aux += m.aux_loss;
        win_n++;
        long done_steps = step + 1;
        int last = done_steps == tc->steps;
        int log_now = cfg->eval.every > 0 ? done_steps % cfg->eval.every == 0 : 0;
        if (log_now || last) {
            if (!finite_all(m.w, m.n_params)) {
                status = "diverged";
                snprintf(diverged_what, sizeof diverged_what, "weights not finite");
                step = done_steps;
                break;
            }
            /* mixer statistics of the training window, before evaluation adds to them */
            if (db && record_stats(db, run, done_steps, &m, e)) goto done;
            train_eval ev;
            if (train_evaluate(&m, task, tcfg, data, tc->seed, SPLIT_TEST, cfg->eval.examples,
                               cfg->eval.batch_size, &ev, e))
                goto done;
            double acc = ev.accuracy, tloss = ev.loss;
            out->train_loss = win_loss / (double)win_n;
            out->test_accuracy = acc;
            out->test_loss = tloss;
            last_acc = acc;
            if (db && (db_begin(db, e) ||
                       put(db, run, done_steps, "train", "loss", out->train_loss, e) ||
                       put(db, run, done_steps, "train", "lr", lr, e) ||
                       put(db, run, done_steps, "train", "grad_norm", gnorm, e) ||
                       (m.n_stats > 0 &&
                        put(db, run, done_steps, "train", "aux_loss", win_aux / (double)win_n, e)) ||
                       put(db, run, done_steps, "test", "accuracy", acc, e) ||
                       put(db, run, done_steps, "test", "loss", tloss, e) ||
                       put(db, run, done_steps, "train", "flops", flops, e) ||
                       put_task_metrics(db, run, done_steps, &ev, e) || db_commit(db, e)))
                goto done;
            win_loss = 0.0;
            win_aux = 0.0;
            win_n = 0;
            model_reset_stats(&m);
        }
        if (o && o->progress && (done_steps % 10 == 0 || last || log_now))
            progress_line(cfg, done_steps, loss, last_acc, now_s() - t_start);
        if (o && o->on_step && (done_steps % 10 == 0 || last || log_now))
            o->on_step(o->step_ctx, done_steps, tc->steps, loss, last_acc);
    }
    if (o && o->progress) fprintf(stderr, "\n");
    /* The evaluation slices of the trained model (a finished run only). */
    if (!strcmp(status, "finished") &&
        evaluate_slices(&m, task, tcfg, data, cfg, db, run, step, e))
        goto done;
    out->step = step;
    out->wall_s = now_s() - t_start;
    out->tokens_per_s = t_train > 0 ? (double)step * B * T / t_train : 0.0;
    if (!strcmp(status, "diverged"))
        snprintf(err_text, sizeof err_text, "diverged at step %ld: %s", step, diverged_what);
    if (db && (db_begin(db, e) ||
               put(db, run, step, "train", "tokens_per_s", out->tokens_per_s, e) ||
               put(db, run, step, "train", "wall_time_s", out->wall_s, e) ||
               put(db, run, step, "train", "train_time_s", t_train, e) ||
               (step > 0 && put(db, run, step, "train", "flops_per_token",
                                flops / ((double)step * B * T), e)) ||
               put(db, run, step, "model", "peak_rss_mib", peak_rss_mib(), e) ||
               db_commit(db, e) ||
               db_run_end(db, run, status, step, err_text[0] ? err_text : NULL, e)))
        goto done;
    snprintf(out->status, sizeof out->status, "%s", status);
    snprintf(out->why, sizeof out->why, "%s", diverged_what);
    rc = 0;
done:
    if (rc && db && run) {
        char msg[1200];
        ml_error_format(e, msg, sizeof msg);
        ml_error ignore;
        db_run_end(db, run, "failed", step, msg, &ignore);
    }
    free(in), free(tg), free(idx), free(perm);
    task_close(task, data);
    model_free(&m);
    return rc;
}
