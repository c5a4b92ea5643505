/* probe.c: the capacity and interference probe (see probe.h).
 *
 * Everything is double precision and written for clarity: a memory of width
 * d holds at most a few thousand pairs here, and a probe point costs
 * O(N d^2) for the writes and reads plus O(N^2 d) for top-1 retrieval (one
 * BLAS product per block of reads). The memories are not the mixers' kernels
 * (those are trained, batched and differentiated); they are the write rules
 * alone, so a curve shows the memory, not what training made of it.
 *
 * Randomness: keys then values from rng_seed3(seed, PROBE_STREAM_DATA, 0);
 * the router (mom) and the slot queries (slots) from their own streams, so
 * changing the memory never changes the pairs of a seed.
 *
 * Left to others: the probe task's config table (tasks/probe.c), the
 * command line (main.c), the results store (db.c, via train_record). */
#include "probe.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "rng.h"
#include "spec.h"
#include "train.h"

#define PROBE_STREAM_DATA 0x70726f6265ull   /* "probe" */
#define PROBE_STREAM_ROUTER 0x726f757465ull /* "route" */
#define PROBE_STREAM_SLOTS 0x736c6f7473ull  /* "slots" */
#define PROBE_MAX_STATE (1L << 27)          /* floats: 1 GiB of doubles */

const char *const probe_memory_names[] = {"sum", "delta", "mom", "caching", "slots", NULL};

/* Floats the memory keeps after N pairs (the state a reader needs). */
static long state_floats(const probe_params *p) {
    long d = p->d, N = p->n_pairs;
    switch (p->memory) {
    case PROBE_SUM:
    case PROBE_DELTA: return d * d;
    case PROBE_MOM: return (long)p->experts * d * d;
    case PROBE_CACHING: {
        long segs = (N + p->segment - 1) / p->segment;
        return segs * d * d + (p->read == PROBE_READ_GATED ? segs * d : 0);
    }
    case PROBE_SLOTS: return 2L * p->slots * d;
    }
    return 0;
}

int probe_validate(const probe_params *p, ml_error *e) {
    if (p->memory < 0 || p->memory >= PROBE_N_MEMORIES)
        return ML_FAIL(e, "memory: unknown memory %d", p->memory);
    if (p->d < 1 || p->d > 4096) return ML_FAIL(e, "d: must be in [1, 4096] (got %d)", p->d);
    if (p->n_pairs < 1 || p->n_pairs > (1 << 20))
        return ML_FAIL(e, "n_pairs: must be in [1, 1048576] (got %d)", p->n_pairs);
    if ((long)p->n_pairs * p->d > (1L << 26))
        return ML_FAIL(e, "n_pairs: N*d = %ld floats per table is more than %ld",
                       (long)p->n_pairs * p->d, 1L << 26);
    if (p->keys == PROBE_KEYS_ORTHOGONAL && p->n_pairs > p->d)
        return ML_FAIL(e, "n_pairs: orthogonal keys need N <= d (got N %d, d %d)", p->n_pairs,
                       p->d);
    if (!(p->beta > 0.0 && p->beta <= 2.0))
        return ML_FAIL(e, "beta: must be in (0, 2] (got %g)", p->beta);
    if (p->experts < 1 || p->experts > 1024)
        return ML_FAIL(e, "experts: must be in [1, 1024] (got %d)", p->experts);
    if (p->segment < 1) return ML_FAIL(e, "segment: must be at least 1 (got %d)", p->segment);
    if (p->slots < 1 || p->slots > 65536)
        return ML_FAIL(e, "slots: must be in [1, 65536] (got %d)", p->slots);
    if (!(p->temperature > 0.0 && p->temperature <= 1e6))
        return ML_FAIL(e, "temperature: must be in (0, 1e6] (got %g)", p->temperature);
    if (state_floats(p) > PROBE_MAX_STATE)
        return ML_FAIL(e, "%s: the memory would hold %ld floats, more than %ld",
                       p->memory == PROBE_CACHING ? "segment" : "d", state_floats(p),
                       PROBE_MAX_STATE);
    return 0;
}

/* a . b over d entries. */
static double dot(const double *a, const double *b, int d) {
    double s = 0.0;
    for (int i = 0; i < d; i++) s += a[i] * b[i];
    return s;
}

/* Rows of X[N,d]: independent uniform unit vectors (normalised Gaussians). */
static void unit_rows(ml_rng *r, double *X, int N, int d) {
    for (int i = 0; i < N; i++) {
        double *x = X + (size_t)i * d, n2;
        do {
            for (int a = 0; a < d; a++) x[a] = rng_normal(r);
            n2 = dot(x, x, d);
        } while (n2 < 1e-300);
        double s = 1.0 / sqrt(n2);
        for (int a = 0; a < d; a++) x[a] *= s;
    }
}

/* Rows of X[N,d], N <= d: orthonormal (Gaussian rows, Gram-Schmidt applied
 * twice for accuracy; a row left nearly in the span of the earlier ones is
 * redrawn). */
static void orthonormal_rows(ml_rng *r, double *X, int N, int d) {
    for (int i = 0; i < N; i++) {
        double *x = X + (size_t)i * d, n2;
        do {
            for (int a = 0; a < d; a++) x[a] = rng_normal(r);
            for (int pass = 0; pass < 2; pass++)
                for (int j = 0; j < i; j++) {
                    const double *y = X + (size_t)j * d;
                    double c = dot(x, y, d);
                    for (int a = 0; a < d; a++) x[a] -= c * y[a];
                }
            n2 = dot(x, x, d);
        } while (n2 < 1e-6);
        double s = 1.0 / sqrt(n2);
        for (int a = 0; a < d; a++) x[a] *= s;
    }
}

/* Write (k, v) into S[d,d] (read as S k): the sum rule S += v k^T, or the
 * delta rule S += beta (v - S k) k^T. u[d] is scratch. */
static void mem_write(double *S, const double *k, const double *v, int d, int delta, double beta,
                      double *u) {
    for (int a = 0; a < d; a++) {
        const double *row = S + (size_t)a * d;
        u[a] = delta ? beta * (v[a] - dot(row, k, d)) : v[a];
    }
    for (int a = 0; a < d; a++) {
        double *row = S + (size_t)a * d;
        for (int b = 0; b < d; b++) row[b] += u[a] * k[b];
    }
}

/* out[d] += w * S k. */
static void mem_read(const double *S, const double *k, int d, double w, double *out) {
    for (int a = 0; a < d; a++) out[a] += w * dot(S + (size_t)a * d, k, d);
}

/* In place: x[n] = softmax(x). */
static void softmax(double *x, int n) {
    double m = x[0], s = 0.0;
    for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < n; i++) s += x[i] = exp(x[i] - m);
    for (int i = 0; i < n; i++) x[i] /= s;
}

int probe_write_read(const probe_params *p, const double *K, const double *V, int N, int d,
                     uint64_t seed, double *R, ml_error *e) {
    const int delta = p->memory == PROBE_DELTA || (p->memory != PROBE_SUM && p->rule == PROBE_RULE_DELTA);
    long n_mem = 1, n_aux = 0; /* memories of d*d; auxiliary floats */
    int segs = (N + p->segment - 1) / p->segment;
    if (p->memory == PROBE_MOM) n_mem = p->experts, n_aux = (long)p->experts * d;
    if (p->memory == PROBE_CACHING) n_mem = segs, n_aux = (long)segs * (d + 1);
    if (p->memory == PROBE_SLOTS) n_mem = 0, n_aux = 3L * p->slots * d + (N > p->slots ? N : p->slots);
    double *S = calloc((size_t)(n_mem * d * d + n_aux + d), sizeof(double));
    if (!S) return ML_FAIL(e, "out of memory for the probe's memory (%ld floats)", n_mem * d * d);
    double *aux = S + n_mem * d * d, *u = aux + n_aux;
    memset(R, 0, sizeof(double) * (size_t)N * d);

    if (p->memory == PROBE_SUM || p->memory == PROBE_DELTA) {
        for (int i = 0; i < N; i++)
            mem_write(S, K + (size_t)i * d, V + (size_t)i * d, d, delta, p->beta, u);
        for (int i = 0; i < N; i++) mem_read(S, K + (size_t)i * d, d, 1.0, R + (size_t)i * d);
    } else if (p->memory == PROBE_MOM) {
        /* aux = router W[E,d]; a key goes to argmax_e <w_e, k>, for writes and
         * reads alike. */
        ml_rng r;
        rng_seed3(&r, seed, PROBE_STREAM_ROUTER, 0);
        for (long i = 0; i < n_aux; i++) aux[i] = rng_normal(&r);
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < N; i++) {
                const double *k = K + (size_t)i * d;
                int best = 0;
                double top = dot(aux, k, d);
                for (int x = 1; x < p->experts; x++) {
                    double s = dot(aux + (size_t)x * d, k, d);
                    if (s > top) top = s, best = x;
                }
                double *Sx = S + (size_t)best * d * d;
                if (pass == 0) mem_write(Sx, k, V + (size_t)i * d, d, delta, p->beta, u);
                else mem_read(Sx, k, d, 1.0, R + (size_t)i * d);
            }
    } else if (p->memory == PROBE_CACHING) {
        /* aux = mean key of each segment [segs,d], then segs gate weights. */
        double *pool = aux, *gate = aux + (size_t)segs * d;
        for (int i = 0; i < N; i++) {
            int s = i / p->segment;
            int count = (s + 1) * p->segment <= N ? p->segment : N - s * p->segment;
            const double *k = K + (size_t)i * d;
            mem_write(S + (size_t)s * d * d, k, V + (size_t)i * d, d, delta, p->beta, u);
            for (int a = 0; a < d; a++) pool[(size_t)s * d + a] += k[a] / count;
        }
        for (int i = 0; i < N; i++) {
            const double *k = K + (size_t)i * d;
            for (int s = 0; s < segs; s++)
                gate[s] = p->temperature * dot(k, pool + (size_t)s * d, d);
            if (p->read == PROBE_READ_GATED) softmax(gate, segs);
            for (int s = 0; s < segs; s++)
                mem_read(S + (size_t)s * d * d, k, d, p->read == PROBE_READ_GATED ? gate[s] : 1.0,
                         R + (size_t)i * d);
        }
    } else {
        /* aux = slot queries Q[K,d], slot keys [K,d], slot values [K,d],
         * then attention weights of max(N, K). */
        const int Ks = p->slots;
        double *Q = aux, *SK = Q + (size_t)Ks * d, *SV = SK + (size_t)Ks * d;
        double *w = SV + (size_t)Ks * d;
        ml_rng r;
        rng_seed3(&r, seed, PROBE_STREAM_SLOTS, 0);
        unit_rows(&r, Q, Ks, d);
        for (int s = 0; s < Ks; s++) {
            for (int j = 0; j < N; j++)
                w[j] = p->temperature * dot(Q + (size_t)s * d, K + (size_t)j * d, d);
            softmax(w, N);
            for (int j = 0; j < N; j++)
                for (int a = 0; a < d; a++) {
                    SK[(size_t)s * d + a] += w[j] * K[(size_t)j * d + a];
                    SV[(size_t)s * d + a] += w[j] * V[(size_t)j * d + a];
                }
        }
        for (int i = 0; i < N; i++) {
            const double *k = K + (size_t)i * d;
            for (int s = 0; s < Ks; s++) w[s] = p->temperature * dot(k, SK + (size_t)s * d, d);
            softmax(w, Ks);
            for (int s = 0; s < Ks; s++)
                for (int a = 0; a < d; a++) R[(size_t)i * d + a] += w[s] * SV[(size_t)s * d + a];
        }
    }
    free(S);
    return 0;
}

/* Top-1 retrieval: the fraction of reads i for which argmax_j <R_i, V_j> is
 * i (the first index wins a tie). Blocks of reads times V^T by BLAS. */
static int top1_accuracy(const double *R, const double *V, int N, int d, double *acc,
                         ml_error *e) {
    const int blk = 256;
    double *sim = malloc(sizeof(double) * (size_t)blk * N);
    if (!sim) return ML_FAIL(e, "out of memory for top-1 retrieval");
    long right = 0;
    for (int i0 = 0; i0 < N; i0 += blk) {
        int b = N - i0 < blk ? N - i0 : blk;
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, N, d, 1.0, R + (size_t)i0 * d, d,
                    V, d, 0.0, sim, N);
        for (int i = 0; i < b; i++) {
            const double *row = sim + (size_t)i * N;
            int best = 0;
            for (int j = 1; j < N; j++)
                if (row[j] > row[best]) best = j;
            right += best == i0 + i;
        }
    }
    free(sim);
    *acc = (double)right / N;
    return 0;
}

int probe_measure(const probe_params *p, uint64_t seed, probe_result *res, ml_error *e) {
    if (probe_validate(p, e)) return -1;
    const int N = p->n_pairs, d = p->d;
    size_t n = (size_t)N * d;
    double *K = malloc(sizeof(double) * n * 3);
    if (!K) return ML_FAIL(e, "out of memory for %d pairs of width %d", N, d);
    double *V = K + n, *R = V + n;
    ml_rng r;
    rng_seed3(&r, seed, PROBE_STREAM_DATA, 0);
    if (p->keys == PROBE_KEYS_ORTHOGONAL) orthonormal_rows(&r, K, N, d);
    else unit_rows(&r, K, N, d);
    unit_rows(&r, V, N, d);
    int rc = probe_write_read(p, K, V, N, d, seed, R, e);
    if (!rc) {
        double err = 0.0, norm = 0.0;
        for (size_t i = 0; i < n; i++) {
            err += (R[i] - V[i]) * (R[i] - V[i]);
            norm += V[i] * V[i];
        }
        res->rel_error = err / norm;
        res->state_size = state_floats(p);
        res->theory = NAN;
        if (p->memory == PROBE_SUM)
            res->theory = p->keys == PROBE_KEYS_ORTHOGONAL ? 0.0 : (double)(N - 1) / d;
        rc = top1_accuracy(R, V, N, d, &res->top1, e);
    }
    free(K);
    return rc;
}

int probe_metrics(const probe_result *r, ml_metric *out, int cap) {
    int n = 0;
    if (n < cap) task_metric(&out[n++], "test", "top1_accuracy", r->top1);
    if (n < cap) task_metric(&out[n++], "test", "rel_error", r->rel_error);
    if (n < cap && !isnan(r->theory)) task_metric(&out[n++], "test", "theory_rel_error", r->theory);
    if (n < cap) task_metric(&out[n++], "model", "state_size", (double)r->state_size);
    return n;
}

/* Apply one formatted "section.key=value" to cfg. */
static int set_fmt(run_config *cfg, ml_error *e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_fmt(run_config *cfg, ml_error *e, const char *fmt, ...) {
    char buf[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return spec_set(cfg, buf, e);
}

int probe_sweep(const probe_opts *o, ml_db *db, probe_row *rows, int cap, int *n_rows,
                ml_error *e) {
    *n_rows = 0;
    if (o->d < 1 || o->n_min < 1 || o->n_max < o->n_min || o->seeds < 1)
        return ML_FAIL(e, "probe: need d >= 1, 1 <= n_min <= n_max and seeds >= 1");
    for (int mem = 0; mem < PROBE_N_MEMORIES; mem++) {
        if (o->memory >= 0 && mem != o->memory) continue;
        for (long N = o->n_min; N <= o->n_max; N *= 2) {
            if (*n_rows == cap) return ML_FAIL(e, "probe: more than %d points", cap);
            probe_row *row = &rows[(*n_rows)++];
            double se = 0, se2 = 0, st = 0, st2 = 0;
            memset(row, 0, sizeof *row);
            for (int s = 0; s < o->seeds; s++) {
                run_config cfg;
                if (config_defaults(&cfg, e) || spec_set(&cfg, "task.name=probe", e)) return -1;
                for (int i = 0; i < o->n_sets; i++)
                    if (spec_set(&cfg, o->sets[i], e)) return -1;
                if (set_fmt(&cfg, e, "task.memory=%s", probe_memory_names[mem]) ||
                    set_fmt(&cfg, e, "task.d=%d", o->d) ||
                    set_fmt(&cfg, e, "task.n_pairs=%ld", N) ||
                    set_fmt(&cfg, e, "train.seed=%ld", o->seed0 + s) || spec_validate(&cfg, e))
                    return -1;
                snprintf(cfg.name, sizeof cfg.name, "probe");
                const probe_params *p = (const probe_params *)cfg.task_cfg.bytes;
                probe_result res;
                if (probe_measure(p, (uint64_t)cfg.train.seed, &res, e)) return -1;
                if (db) {
                    ml_metric m[TASK_MAX_METRICS];
                    int nm = probe_metrics(&res, m, TASK_MAX_METRICS);
                    long long run;
                    if (train_record(&cfg, db, m, nm, &run, e)) return -1;
                }
                se += res.rel_error, se2 += res.rel_error * res.rel_error;
                st += res.top1, st2 += res.top1 * res.top1;
                row->theory = res.theory;
                row->state_size = res.state_size;
            }
            int k = o->seeds;
            row->memory = mem;
            row->d = o->d;
            row->n = (int)N;
            row->err_mean = se / k;
            row->top1_mean = st / k;
            row->err_std = k > 1 ? sqrt(fmax(0.0, (se2 - se * se / k) / (k - 1))) : 0.0;
            row->top1_std = k > 1 ? sqrt(fmax(0.0, (st2 - st * st / k) / (k - 1))) : 0.0;
        }
    }
    return 0;
}
