/* bench.c: the training-step benchmark against PyTorch (see bench.h).
 *
 * Each configuration is built from the built-in defaults with --set style
 * assignments, so a benchmark row means exactly what the same keys mean in a
 * spec, and the PyTorch twin receives that config as JSON, so both sides time
 * the same model on the same shapes. Per thread count, the twin runs as one
 * server process (its thread variables must be set before torch is imported);
 * memlab and the twin are measured alternately, configuration by
 * configuration, so that a change in the machine's load hits both.
 *
 * FLOPs are counted analytically, matmuls only (norms, conv, softmax,
 * cross-entropy's exp and AdamW are left out), for forward plus backward as
 * 3 x forward:
 *   LM head           6 S C V                   (S rows: supervised or all B*T)
 *   projections       24 B T C^2 per layer      (q, k, v and out)
 *   softmax core      12 B P C per layer        (P visible query-key pairs of a
 *                                                sequence: T(T+1)/2 when causal)
 *   last layer on the S head rows (supervised head, model.c): softmax
 *                     12 B T C^2 + 12 S C^2 + 12 P_S C (k, v of every token;
 *                     q, core, out of the rows; P_S their visible pairs),
 *                     linear 12 B T C^2 + 12 S C^2 + core (q and out of the
 *                     rows), MLP 12 S C R; other mixers: counted products only
 *   linear core       B H sum_chunks (7 l (l+1) D + 6 l D^2 (a + b))   chunkwise,
 *                     chunk l; 14 D per visible query-key pair of a chunk
 *                     (l (l+1)/2): 4 forward + 8 backward + 2 for the scores
 *                     the backward recomputes instead of saving; a = 1 but
 *                     for the first chunk, b = 1 but for the last (their
 *                     state products are zero and skipped)
 *                     7 B H T (T+1) D (parallel), 3 B H 4 T D^2 (recurrent:
 *                     loops, not BLAS, so the product counter does not see
 *                     them)
 *   MLP               12 B T C R per layer      (R hidden width)
 * Every product also adds its FLOPs to a counter (models/matmul.c), read
 * around the first warm-up step: the report shows both numbers, GFLOP/s use
 * the formula where the mixer has one (useful work: a blocked causal kernel's
 * masked half-blocks and the linear forms' masked score entries are not
 * counted) and the counted products otherwise, so every mixer gets a GFLOP/s
 * figure. The tests hold the formulas to the count.
 *
 * What is left to others: the kernels (models/), the twin's model
 * (tests/twin/bench_torch.py), parallel sweeps (--jobs, the sweep runner). */
#define _GNU_SOURCE
#include "bench.h"
#include "bench_row.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __SSE__
#include <xmmintrin.h>
#endif

#include "blas.h"
#include "peak.h"
#include "db.h"
#include "gemm_bf16.h"
#include "kernels.h"
#include "mixer.h"
#include "model.h"
#include "spec.h"
#include "task.h"
#include "tmpdir.h"
#include "train.h"
#include "version.h"

extern char **environ;

#define SGEMM_N 1024

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU time of the whole process (all its threads). */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* qsort order of doubles, ascending. */
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of x[n] (sorts x). */
static double median_of(double *x, int n) {
    qsort(x, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* Copy src into dst[cap], truncated if need be, always terminated. */
static void copy_text(char *dst, size_t cap, const char *src) {
    size_t len = strlen(src);
    if (len >= cap) len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* ---- the grid's lists ------------------------------------------------------ */

/* Parse "64,128" into out[cap]; each value in [lo, hi]. Returns the count. */
static int parse_ints(const char *what, const char *s, int *out, int cap, int lo, int hi,
                      ml_error *e) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || (*end && *end != ',') || v < lo || v > hi)
            return ML_FAIL(e, "--%s: '%s' is not a list of whole numbers from %d to %d", what, s,
                           lo, hi);
        if (n == cap) return ML_FAIL(e, "--%s: at most %d values", what, cap);
        out[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    if (n == 0) return ML_FAIL(e, "--%s: empty list", what);
    return n;
}

/* Split "a,b" into names[cap][32]. Returns the count. */
static int parse_names(const char *what, const char *s, char (*names)[32], int cap,
                       ml_error *e) {
    int n = 0;
    const char *p = s;
    while (*p) {
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= 32) return ML_FAIL(e, "--%s: bad list '%s'", what, s);
        if (n == cap) return ML_FAIL(e, "--%s: at most %d names", what, cap);
        memcpy(names[n], p, len);
        names[n][len] = '\0';
        n++;
        p += len;
        if (*p == ',') p++;
    }
    if (n == 0) return ML_FAIL(e, "--%s: empty list", what);
    return n;
}

/* ---- analytic FLOPs and activation formulas --------------------------------- */

/* A mixer key of cfg as a number (JSON true/false read as 1/0), or def. */
static double key_num(const run_config *cfg, const char *dotted, double def) {
    char buf[128];
    if (config_value(cfg, dotted, buf, sizeof buf)) return def;
    if (!strcmp(buf, "true")) return 1;
    if (!strcmp(buf, "false")) return 0;
    char *end;
    double v = strtod(buf, &end);
    return end == buf ? def : v;
}

/* A mixer key of cfg as text without JSON quotes ("" when absent). */
static void key_text(const run_config *cfg, const char *dotted, char *buf, size_t cap) {
    char raw[128];
    if (config_value(cfg, dotted, raw, sizeof raw)) raw[0] = '\0';
    size_t len = strlen(raw);
    if (len >= 2 && raw[0] == '"') {
        raw[len - 1] = '\0';
        copy_text(buf, cap, raw + 1);
    } else {
        snprintf(buf, cap, "%s", raw);
    }
}

/* Keys query i sees with window w (0 = all earlier ones and itself). */
static int visible_keys(int i, int w) { return w > 0 && w < i + 1 ? w : i + 1; }

/* Visible query-key pairs of one causal sequence of T with window w. */
static double visible_pairs(int T, int w) {
    double P = 0;
    for (int i = 0; i < T; i++) P += visible_keys(i, w);
    return P;
}

/* Softmax mixer, one layer, one step: projections and the causal core. */
static double softmax_flops(const run_config *cfg, int B, int T) {
    double C = cfg->model.d_model;
    int w = (int)key_num(cfg, "model.window", 0);
    return 24.0 * B * T * C * C + 12.0 * B * visible_pairs(T, w) * C;
}

/* Visible query-key pairs of the queries at rows[S] (positions b*T + t). */
static double visible_pairs_rows(const int *rows, int S, int T, int w) {
    double P = 0;
    for (int s = 0; s < S; s++) P += visible_keys(rows[s] % T, w);
    return P;
}

/* Softmax mixer on the last layer when only rows[S] are wanted: k and v of
 * every token, q, the core and the output projection of the rows. */
static double softmax_rows_flops(const run_config *cfg, int B, int T, const int *rows, int S) {
    double C = cfg->model.d_model;
    int w = (int)key_num(cfg, "model.window", 0);
    return 12.0 * B * T * C * C + 12.0 * S * C * C + 12.0 * visible_pairs_rows(rows, S, T, w) * C;
}

/* Softmax mixer's saved floats: qkv [B,T,3C], o [B,T,C], att [B,H,T,T]. */
static double softmax_act(const run_config *cfg, int B, int T) {
    double C = cfg->model.d_model, H = key_num(cfg, "model.heads", 1);
    return 4.0 * B * T * C + (double)B * H * T * T;
}

/* Chunk length of the chunkwise form as the kernel uses it. */
static int linear_chunk(const run_config *cfg, int T) {
    int c = (int)key_num(cfg, "model.chunk", 64);
    return c < T ? c : T;
}

/* Linear mixer's core (the state and the outputs), one layer, one step, in
 * the form the config chooses. */
static double linear_core_flops(const run_config *cfg, int B, int T) {
    double C = cfg->model.d_model, H = key_num(cfg, "model.heads", 1), D = C / H;
    char form[32];
    key_text(cfg, "model.form", form, sizeof form);
    if (!strcmp(form, "parallel")) return 7.0 * B * H * T * (T + 1.0) * D;
    if (!strcmp(form, "recurrent")) return 3.0 * B * H * 4.0 * T * D * D;
    /* the products with the first chunk's zero prefix state and the last
     * chunk's zero state gradient are skipped (linear_attention.c) */
    int c = linear_chunk(cfg, T);
    double core = 0;
    for (int t0 = 0; t0 < T; t0 += c) {
        double l = T - t0 < c ? T - t0 : c;
        core += 7.0 * l * (l + 1) * D + 6.0 * l * D * D * ((t0 > 0) + (t0 + c < T));
    }
    return B * H * core;
}

/* Linear mixer, one layer, one step: projections and the core. */
static double linear_flops(const run_config *cfg, int B, int T) {
    double C = cfg->model.d_model;
    return 24.0 * B * T * C * C + linear_core_flops(cfg, B, T);
}

/* The last layer on rows[S]: k, v of every token, q (every token with the
 * short conv) and the output projection of the rows, the core as before. */
static double linear_rows_flops(const run_config *cfg, int B, int T, const int *rows, int S) {
    (void)rows;
    double C = cfg->model.d_model, N = (double)B * T;
    double q = key_num(cfg, "model.short_conv", 0) > 0 ? N : S;
    return 6.0 * C * C * (2 * N + q + S) + linear_core_flops(cfg, B, T);
}

/* Linear mixer's saved floats: qkv, phi, o, the normaliser's den and the
 * chunkwise form's prefix states of every chunk but the first, whose state is
 * zero and not stored (mixer_linear.c, linear_attention.c). */
static double linear_act(const run_config *cfg, int B, int T) {
    double C = cfg->model.d_model, H = key_num(cfg, "model.heads", 1), D = C / H;
    int norm = (int)key_num(cfg, "model.normalize", 1);
    char form[32];
    key_text(cfg, "model.form", form, sizeof form);
    double n = 6.0 * B * T * C + (norm ? (double)B * T * H : 0);
    if (!strcmp(form, "chunkwise")) {
        int c = linear_chunk(cfg, T), NC = (T + c - 1) / c;
        n += (double)B * H * (NC - 1) * (D * D + (norm ? D : 0));
    }
    return n;
}


static const mixer_formula formulas[] = {
    {"softmax", softmax_flops, softmax_rows_flops, softmax_act,
     "B T 4C + B H T^2 (qkv, o, probabilities)"},
    {"linear", linear_flops, linear_rows_flops, linear_act,
     "B T 6C + B T H + B H (ceil(T/l) - 1) (D^2 + D) (qkv, phi, o, den, chunk states)"},
};

const mixer_formula *bench_formula_of(const char *mixer) {
    for (size_t i = 0; i < sizeof formulas / sizeof formulas[0]; i++)
        if (!strcmp(formulas[i].name, mixer)) return &formulas[i];
    return NULL;
}

/* Matmul FLOPs of one training step (see the top of the file); 0 when the
 * mixer has no formula. target[B*T]: -1 where unsupervised. With the
 * supervised head and some unsupervised rows, the model runs its last block
 * on the S head rows only (model.c): the MLP there costs 12 S C R, and the
 * mixer what its rows formula says. */
double bench_step_flops(const run_config *cfg, int B, int T, int V, const int *target) {
    const mixer_formula *f = bench_formula_of(cfg->model.mixer);
    if (!f) return 0;
    const model_config *m = &cfg->model;
    int N = B * T, S = 0;
    int *rows = malloc(sizeof(int) * (size_t)N);
    if (!rows) return 0;
    for (int i = 0; i < N; i++)
        if (cfg->train.full_head || target[i] >= 0) rows[S++] = i;
    int on_rows = !cfg->train.full_head && S > 0 && S < N;
    double C = m->d_model, R = (double)m->mlp_ratio * C, mixer = f->flops(cfg, B, T);
    double mlp = m->mlp ? 12.0 * N * C * R : 0;
    double total = m->n_layers * (mixer + mlp) + 6.0 * S * C * V;
    if (on_rows && m->n_layers > 0) {
        if (f->rows_flops) total += f->rows_flops(cfg, B, T, rows, S) - mixer;
        if (m->mlp) total += 12.0 * S * C * R - mlp;
    }
    free(rows);
    return total;
}

/* ---- the machine ------------------------------------------------------------- */

/* Reset the kernel's peak-RSS mark (VmHWM) so that the next reading is the
 * peak of what follows. Returns 0, or -1 where that is not allowed. */
static int rss_reset(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Peak RSS in MiB since the last reset (VmHWM), or of the whole process. */
static double rss_peak_mib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f)) {
            long kib;
            if (sscanf(line, "VmHWM: %ld kB", &kib) == 1) {
                fclose(f);
                return (double)kib / 1024.0;
            }
        }
        fclose(f);
    }
    return peak_rss_mib();
}

/* The operands of the SGEMM reference, filled once per benchmark. */
typedef struct sgemm_bufs {
    float *a, *b, *c;
} sgemm_bufs;

static int sgemm_bufs_make(sgemm_bufs *m, ml_error *e) {
    size_t n = (size_t)SGEMM_N * SGEMM_N;
    m->a = malloc(n * sizeof(float));
    m->b = malloc(n * sizeof(float));
    m->c = malloc(n * sizeof(float));
    if (!m->a || !m->b || !m->c) return ML_FAIL(e, "out of memory for the SGEMM measurement");
    for (size_t i = 0; i < n; i++) {
        m->a[i] = (float)((i * 7 % 13) - 6) / 8.0f;
        m->b[i] = (float)((i * 5 % 11) - 5) / 8.0f;
    }
    return 0;
}

static void sgemm_bufs_free(sgemm_bufs *m) {
    free(m->a), free(m->b), free(m->c);
    memset(m, 0, sizeof *m);
}

/* OpenBLAS SGEMM 1024^3 with the current thread count: median and best
 * GFLOP/s over repeats after 2 warm-ups (at least 5, until `seconds` have
 * passed). */
static void sgemm_peak(const sgemm_bufs *m, double *med, double *best, double seconds) {
    double g[64];
    double flop = 2.0 * SGEMM_N * SGEMM_N * SGEMM_N, t_end = now_s() + seconds;
    int k = 0;
    for (int r = -2; r < 64; r++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, SGEMM_N, SGEMM_N, SGEMM_N, 1.0f,
                    m->a, SGEMM_N, m->b, SGEMM_N, 0.0f, m->c, SGEMM_N);
        double dt = now_s() - t0;
        if (r < 0) continue;
        g[k++] = flop / dt / 1e9;
        if (k >= 5 && now_s() > t_end) break;
    }
    *best = g[0];
    for (int i = 1; i < k; i++)
        if (g[i] > *best) *best = g[i];
    *med = median_of(g, k);
}

/* The machine's CPU time in clock ticks from /proc/stat: *all of it and
 * *steal, the part the hypervisor gave to other guests (0 and -1 where there is
 * no /proc/stat). */
static int cpu_ticks(unsigned long long *all, unsigned long long *steal) {
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[8] = {0};
    int k = f ? fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                       &v[3], &v[4], &v[5], &v[6], &v[7])
              : 0;
    if (f) fclose(f);
    *all = *steal = 0;
    if (k != 8) return -1;
    for (int i = 0; i < 8; i++) *all += v[i];
    *steal = v[7];
    return 0;
}

/* ---- one configuration -------------------------------------------------------- */
/* The config of one grid point. */
static int row_config(run_config *cfg, const char *mixer, int d, int L, int batch, int full,
                      const char *matmul, ml_error *e) {
    char a[7][96];
    snprintf(a[0], sizeof a[0], "model.mixer=%s", mixer);
    snprintf(a[1], sizeof a[1], "model.d_model=%d", d);
    snprintf(a[2], sizeof a[2], "task.seq_len=%d", L);
    snprintf(a[3], sizeof a[3], "task.num_kv_pairs=%d", L / 16 > 0 ? L / 16 : 1);
    snprintf(a[4], sizeof a[4], "train.full_head=%s", full ? "true" : "false");
    snprintf(a[5], sizeof a[5], "train.batch_size=%d", batch);
    snprintf(a[6], sizeof a[6], "train.matmul=%s", matmul ? matmul : "fp32");
    const char *const sets[] = {"task.name=mqar", "task.vocab_size=8192", a[0], a[1], a[2],
                                a[3], a[4], a[5], a[6], "model.n_layers=2", "model.conv=4",
                                "model.mlp=false", NULL};
    if (config_defaults(cfg, e)) return -1;
    for (int i = 0; sets[i]; i++)
        if (spec_set(cfg, sets[i], e)) return -1;
    snprintf(cfg->name, sizeof cfg->name, "bench");
    return spec_validate(cfg, e);
}

/* ---- the PyTorch twin as a server ------------------------------------------------ */

typedef struct torch_server {
    pid_t pid;    /* 0: not running */
    int fd;       /* our end of the socket pair */
    FILE *rd;     /* replies, line by line */
    char why[200]; /* why it is not running */
    char version[96];
    int lost;     /* it was running and exited under us: start it again */
} torch_server;

/* The environment of the twin: ours with the thread variables set to n and,
 * on several threads, OMP_WAIT_POLICY=passive unless the user set it: torch's
 * OpenMP threads otherwise spin between parallel regions against the OpenBLAS
 * workers its products wake, and its step on 2 threads was slower than on
 * one (softmax d 256 L 64, twin alone: 307 ms against 204; passive: 119). */
static char **twin_env(int n) {
    static char passive[] = "OMP_WAIT_POLICY=passive";
    static const char *const vars[] = {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                       "MKL_NUM_THREADS"};
    size_t have = 0;
    while (environ[have]) have++;
    char **env = calloc(have + 5, sizeof(char *));
    if (!env) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < have; i++) {
        int ours = 0;
        for (int v = 0; v < 3; v++) {
            size_t len = strlen(vars[v]);
            if (!strncmp(environ[i], vars[v], len) && environ[i][len] == '=') ours = 1;
        }
        if (!ours) env[k++] = environ[i];
    }
    if (n > 1 && !getenv("OMP_WAIT_POLICY")) env[k++] = passive;
    for (int v = 0; v < 3; v++) {
        char *s = malloc(64);
        if (!s) break;
        snprintf(s, 64, "%s=%d", vars[v], n);
        env[k++] = s;
    }
    env[k] = NULL;
    return env;
}

/* Free what twin_env allocated (its last three entries and the array). */
static void twin_env_free(char **env) {
    if (!env) return;
    size_t k = 0;
    while (env[k]) k++;
    for (size_t i = k >= 3 ? k - 3 : 0; i < k; i++) free(env[i]);
    free(env);
}

/* The twin's script: o->torch_script as given when readable; a relative one
 * is also looked for from the executable's folder and the two above it (the
 * project root holds ./memlab, the build tree build/<kind>/memlab), so that
 * bench finds it from any working directory. NULL when none is readable. */
static const char *twin_script(const bench_opts *o) {
    static char found[4096];
    if (!access(o->torch_script, R_OK)) return o->torch_script;
    if (o->torch_script[0] == '/') return NULL;
    char exe[3072];
    ssize_t n = readlink(o->self, exe, sizeof exe - 1);
    if (n <= 0) return NULL;
    exe[n] = 0;
    for (int up = 0; up < 3; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash) return NULL;
        *slash = 0;
        snprintf(found, sizeof found, "%s/%s", exe, o->torch_script);
        if (!access(found, R_OK)) return found;
    }
    return NULL;
}

/* Start the twin with n threads. Returns 0 when it answered "ready"; otherwise
 * -1 with the reason in ts->why (torch missing is not an error of memlab). */
static int torch_start(torch_server *ts, const bench_opts *o, int n) {
    memset(ts, 0, sizeof *ts);
    ts->fd = -1;
    if (access(o->python, X_OK)) {
        snprintf(ts->why, sizeof ts->why, "%s not found", o->python);
        return -1;
    }
    const char *script = twin_script(o);
    if (!script) {
        snprintf(ts->why, sizeof ts->why,
                 "%s not found here or beside the memlab executable", o->torch_script);
        return -1;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
        snprintf(ts->why, sizeof ts->why, "socketpair: %s", strerror(errno));
        return -1;
    }
    char **env = twin_env(n);
    int devnull = o->progress ? -1 : open("/dev/null", O_WRONLY | O_CLOEXEC);
    char *const argv[] = {(char *)(uintptr_t)o->python, (char *)(uintptr_t)script,
                          "--serve", NULL};
    pid_t pid = env ? fork() : -1;
    if (pid == 0) {
        /* the child: only async-signal-safe calls until exec */
        dup2(sv[1], 0);
        dup2(sv[1], 1);
        if (devnull >= 0) dup2(devnull, 2);
        execve(o->python, argv, env);
        _exit(127);
    }
    twin_env_free(env);
    if (devnull >= 0) close(devnull);
    close(sv[1]);
    if (pid < 0) {
        close(sv[0]);
        snprintf(ts->why, sizeof ts->why, "cannot start %s", o->python);
        return -1;
    }
    ts->pid = pid;
    ts->fd = sv[0];
    int rfd = fcntl(sv[0], F_DUPFD_CLOEXEC, 0);
    ts->rd = rfd >= 0 ? fdopen(rfd, "r") : NULL;
    if (!ts->rd && rfd >= 0) close(rfd);
    char line[512] = "";
    if (ts->rd && !fgets(line, sizeof line, ts->rd)) line[0] = '\0';
    if (!strncmp(line, "ready torch ", 12)) {
        line[strcspn(line, "\n")] = '\0';
        copy_text(ts->version, sizeof ts->version, line + 6);
        return 0;
    }
    if (!strncmp(line, "unavailable", 11)) {
        line[strcspn(line, "\n")] = '\0';
        char why[sizeof ts->why];
        if (snprintf(why, sizeof why, "torch is not importable by %s (%s)", o->python,
                     line + 12) < 0)
            why[0] = '\0';
        copy_text(ts->why, sizeof ts->why, why);
    } else {
        snprintf(ts->why, sizeof ts->why, "the twin %s did not start", o->torch_script);
    }
    shutdown(ts->fd, SHUT_RDWR);
    if (ts->rd) fclose(ts->rd);
    close(ts->fd);
    waitpid(ts->pid, NULL, 0);
    ts->pid = 0;
    ts->rd = NULL;
    ts->fd = -1;
    return -1;
}

/* End the twin (end of its input) and reap it; a stopped server is a no-op.
 * Returns its wait status (0 when it was not running). */
static int torch_stop(torch_server *ts) {
    if (!ts->pid) return 0;
    shutdown(ts->fd, SHUT_WR); /* end of requests: the server exits */
    if (ts->rd) fclose(ts->rd);
    close(ts->fd);
    int status = 0;
    if (waitpid(ts->pid, &status, 0) < 0) status = 0;
    ts->pid = 0;
    ts->rd = NULL;
    ts->fd = -1;
    return status;
}

/* Send all of buf; 0 or -1. MSG_NOSIGNAL: a dead twin is a reply, not SIGPIPE. */
static int send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t k = send(fd, buf, len, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        buf += k;
        len -= (size_t)k;
    }
    return 0;
}

/* Send one command line and read the reply line into reply[cap]. Returns 0,
 * or -1 when the twin is gone (it is then stopped, ts->why says how it ended,
 * and the next configuration starts it again). A twin killed by signal 9 was
 * most likely the kernel's out-of-memory kill: its model and memlab's live
 * side by side while they alternate. */
static int twin_ask(torch_server *ts, const char *cmd, char *reply, size_t cap) {
    if (!ts->pid) return -1;
    if (send_all(ts->fd, cmd, strlen(cmd)) || !fgets(reply, (int)cap, ts->rd)) {
        int st = torch_stop(ts);
        if (WIFSIGNALED(st))
            snprintf(ts->why, sizeof ts->why, "the twin was killed by signal %d%s",
                     WTERMSIG(st), WTERMSIG(st) == SIGKILL ? " (out of memory?)" : "");
        else
            snprintf(ts->why, sizeof ts->why, "the twin exited (status %d)",
                     WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        ts->lost = 1;
        return -1;
    }
    reply[strcspn(reply, "\n")] = '\0';
    return 0;
}

/* Build r's configuration in the twin. Returns 0, or -1 with the reason in
 * note (a config the twin does not know, or a twin that is not running). */
static int twin_build(torch_server *ts, const bench_row *r, char *note, size_t cap) {
    if (!ts->pid) {
        copy_text(note, cap, ts->why);
        return -1;
    }
    size_t len = 1 << 16;
    char *req = malloc(len), reply[1024];
    if (!req) {
        copy_text(note, cap, "out of memory");
        return -1;
    }
    int k = snprintf(req, len, "build {\"head\":\"%s\",\"config\":",
                     r->full ? "full" : "supervised");
    int j = config_to_json(&r->cfg, req + k, len - (size_t)k - 4);
    int rc = -1;
    if (j < 0) {
        copy_text(note, cap, "config too large");
    } else {
        memcpy(req + k + j, "}\n", 3);
        if (twin_ask(ts, req, reply, sizeof reply))
            copy_text(note, cap, ts->why);
        else if (strcmp(reply, "ok"))
            copy_text(note, cap, !strncmp(reply, "skip ", 5) ? reply + 5 : reply);
        else
            rc = 0;
    }
    free(req);
    return rc;
}

/* One training step of the twin's current model: its seconds (timed inside
 * the twin) and *cpu its process's CPU seconds, or -1 with the reason in note. */
static double twin_step(torch_server *ts, double *cpu, char *note, size_t cap) {
    char reply[1024];
    double dt;
    if (twin_ask(ts, "step\n", reply, sizeof reply)) {
        copy_text(note, cap, ts->why);
        return -1;
    }
    if (sscanf(reply, "ok %lf %lf", &dt, cpu) == 2 && dt >= 0) return dt;
    copy_text(note, cap, !strncmp(reply, "skip ", 5) ? reply + 5 : reply);
    return -1;
}

/* Free the twin's model; its peak RSS in MiB since the build (NAN if unknown). */
static double twin_done(torch_server *ts) {
    char reply[256];
    double rss;
    if (twin_ask(ts, "done\n", reply, sizeof reply)) return NAN;
    return sscanf(reply, "ok %lf", &rss) == 1 ? rss : NAN;
}

/* One training step as train.c takes it (forward, backward, clip, AdamW);
 * returns the wall seconds of clipping and AdamW. */
static double train_step(ml_model *m, const run_config *cfg, const int *in, const int *tg,
                         int B, int T, int t) {
    const train_config *tc = &cfg->train;
    int bf16 = ml_matmul_bf16();
    ml_matmul_set_bf16(tc->matmul == MATMUL_BF16);
    model_forward_train(m, in, tg, B, T);
    model_zero_grad(m);
    model_backward(m);
    double t0 = now_s();
    real gscale;
    grad_clip_scale(m->g, m->n_params, tc->grad_clip, &gscale);
    for (int p = 0; p < m->n_tensors; p++) {
        const ml_param *pp = &m->params[p];
        adamw_step_scaled(m->w + pp->offset, m->g + pp->offset, m->m + pp->offset,
                          m->v + pp->offset, pp->n, (real)tc->lr, (real)tc->beta1,
                          (real)tc->beta2, (real)tc->adam_eps,
                          pp->decay ? (real)tc->weight_decay : 0, t, gscale);
    }
    ml_matmul_set_bf16(bf16);
    return now_s() - t0;
}

/* Seconds each side rests before its timed step when memlab and the twin
 * alternate on more than one thread. A process's idle threads keep a core
 * busy for a while after its step: OpenBLAS's workers, which the twin's
 * multi-threaded products wake, spin (sched_yield) for 2^28 cycles, about
 * 0.1 s, before they sleep. Without the rest each side's step ran into the
 * other's spinning threads: on 2 threads memlab's softmax d 64 L 64 step took
 * 27 ms alternating with the twin against 14 ms alone, and the twin's took
 * longer on 2 threads than on 1. */
#define BENCH_SETTLE_S 0.15

static void settle(int on) {
    if (!on) return;
    struct timespec ts = {0, (long)(BENCH_SETTLE_S * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

/* Whether a side wants another timed step: fewer than `steps`, and fewer than
 * min_steps or budget not yet spent. */
static int wants_step(const bench_opts *o, int n, double spent) {
    return n < o->steps && (n < o->min_steps || spent < o->budget_s);
}

/* Time memlab's step for r->cfg and, when the twin builds it, the twin's, the
 * two alternating step by step so that both see the same load. Each side: up
 * to two warm-up steps (one when a step takes more than a third of the
 * budget), then timed steps while wants_step. Fills r->ml and r->pt (ok = 0
 * with a note when the twin has no row), sizes and FLOPs. */
static int measure_config(bench_row *r, torch_server *ts, const bench_opts *o, ml_error *e) {
    const run_config *cfg = &r->cfg;
    const ml_task *task = task_find(cfg->task);
    const void *tcfg = cfg->task_cfg.bytes;
    void *data = NULL;
    if (!task) return ML_FAIL(e, "task %s is missing", cfg->task);
    if (task_open(task, tcfg, &data, e)) return -1;
    int V = task->vocab_size(tcfg), T = task->seq_len(tcfg), B = cfg->train.batch_size;
    rss_reset();
    unsigned long long all0, steal0, all1, steal1;
    int ticks = cpu_ticks(&all0, &steal0) == 0;
    ml_model m;
    if (model_build(&m, &cfg->model, V, T, B, e)) {
        task_close(task, data);
        return -1;
    }
    m.full_head = cfg->train.full_head;
    m.context_len = task->context_len ? task->context_len(tcfg) : -1;
    model_init_weights(&m, 1);
    int *in = malloc(sizeof(int) * (size_t)B * T), *tg = malloc(sizeof(int) * (size_t)B * T);
    /* per timed step: memlab's wall and CPU seconds, the twin's, memlab's
     * seconds in products and in the optimizer, and each phase's own passes */
    enum {
        S_TIME, S_CPU, S_PTIME, S_PCPU, S_PROD, S_OPTIM, S_PHASE,
        S_SERIES = S_PHASE + MODEL_PHASES
    };
    double *samples = malloc(sizeof(double) * S_SERIES * (size_t)o->steps);
    if (!in || !tg || !samples) {
        free(in), free(tg), free(samples);
        model_free(&m);
        task_close(task, data);
        return ML_FAIL(e, "out of memory");
    }
    double *series[S_SERIES];
    for (int k = 0; k < S_SERIES; k++) series[k] = samples + (size_t)k * o->steps;
    double *times = series[S_TIME], *cpus = series[S_CPU], *ptimes = series[S_PTIME];
    double *pcpus = series[S_PCPU], *prods = series[S_PROD], *optims = series[S_OPTIM];
    for (int i = 0; i < B; i++)
        task->generate(tcfg, data, 1, SPLIT_TRAIN, i, in + (size_t)i * T, tg + (size_t)i * T);
    int S = 0;
    for (size_t i = 0; i < (size_t)B * T; i++) S += tg[i] >= 0;
    r->S = m.full_head ? B * T : S;

    bench_timing *pt = &r->pt;
    memset(pt, 0, sizeof *pt);
    int twin = twin_build(ts, r, pt->note, sizeof pt->note) == 0;
    int rest = twin && r->threads > 1; /* the two sides alternate on several threads */
    int t = 1;
    for (int w = 0; w < 2; w++) {
        settle(rest);
        double t0 = now_s();
        if (w == 0) ml_flops_reset();
        train_step(&m, cfg, in, tg, B, T, t++);
        if (w == 0) r->flops_counted = ml_flops_read();
        if (now_s() - t0 > o->budget_s / 3) break;
    }
    for (int w = 0; twin && w < 2; w++) {
        double c;
        settle(rest);
        double dt = twin_step(ts, &c, pt->note, sizeof pt->note);
        if (dt < 0) twin = 0;
        if (dt > o->budget_s / 3) break;
    }
    int n = 0, np = 0;
    double spent = 0, pspent = 0;
    for (;;) {
        int ml_more = wants_step(o, n, spent), pt_more = twin && wants_step(o, np, pspent);
        if (!ml_more && !pt_more) break;
        if (ml_more) {
            settle(rest);
            ml_products_clock(1);
            model_phase_clock(1);
            double w0[MODEL_PHASES], q0[MODEL_PHASES], w1[MODEL_PHASES], q1[MODEL_PHASES];
            model_phase_read(w0, q0);
            double t0 = now_s(), c0 = cpu_s(), p0 = ml_products_seconds();
            optims[n] = train_step(&m, cfg, in, tg, B, T, t++);
            times[n] = now_s() - t0;
            cpus[n] = cpu_s() - c0;
            prods[n] = ml_products_seconds() - p0;
            model_phase_read(w1, q1);
            for (int k = 0; k < MODEL_PHASES; k++)
                series[S_PHASE + k][n] = (w1[k] - w0[k]) - (q1[k] - q0[k]);
            model_phase_clock(0);
            ml_products_clock(0);
            spent += times[n++];
        }
        if (pt_more) {
            settle(rest);
            double dt = twin_step(ts, &pcpus[np], pt->note, sizeof pt->note);
            if (dt < 0) {
                twin = 0;
                continue;
            }
            ptimes[np++] = dt;
            pspent += dt;
        }
    }
    bench_timing *bt = &r->ml;
    bt->ok = 1;
    bt->n = n;
    bt->med = median_of(times, n);
    bt->cpu = median_of(cpus, n);
    bt->prod = median_of(prods, n);
    r->steal = ticks && !cpu_ticks(&all1, &steal1) && all1 > all0
                   ? (double)(steal1 - steal0) / (double)(all1 - all0)
                   : NAN;
    bt->optim = median_of(optims, n);
    for (int k = 0; k < MODEL_PHASES; k++) bt->phase[k] = median_of(series[S_PHASE + k], n);
    bt->lo = times[0];
    bt->hi = times[n - 1];
    bt->rss_mib = rss_peak_mib();
    if (twin) {
        pt->ok = 1;
        pt->n = np;
        pt->med = median_of(ptimes, np);
        pt->lo = ptimes[0];
        pt->hi = ptimes[np - 1];
        pt->cpu = median_of(pcpus, np);
    }
    if (ts->pid) {
        double rss = twin_done(ts); /* frees the twin's model in any case */
        if (twin) pt->rss_mib = rss;
    }
    r->flops = bench_step_flops(cfg, B, T, V, tg);
    if (r->flops <= 0) r->flops = r->flops_counted;
    const mixer_formula *f = bench_formula_of(cfg->model.mixer);
    r->act_mixer = (double)m.mixer->act_size(cfg->model.mixer_cfg.bytes, B, T, cfg->model.d_model);
    r->act_formula = f ? f->act(cfg, B, T) : 0;
    r->act_model = (double)m.n_acts;
    free(in), free(tg), free(samples);
    model_free(&m);
    task_close(task, data);
    return 0;
}

/* ---- parallel sweeps ------------------------------------------------------------ */

/* The sweep timed with --jobs 1 and 2: independent MQAR runs (four seeds of
 * softmax attention, d 64, L 64, batch 64), no evaluation until the end. The
 * spec is this base, whose config is what the database records for the
 * measurement, plus the seeds; %d is the number of training steps per run. */
static const char jobs_base[] =
    "name: bench-jobs\n"
    "description: memlab bench, throughput of memlab run --jobs\n"
    "task: {name: mqar, vocab_size: 8192, seq_len: 64, num_kv_pairs: 4}\n"
    "model: {mixer: softmax, d_model: 64, n_layers: 2, conv: 4, mlp: false}\n"
    "train: {steps: %d, batch_size: 64, warmup: 10}\n"
    "eval: {every: 0, examples: 64, batch_size: 64}\n";
#define JOBS_STEPS 150

/* The spec text: the base with `steps` training steps, with the sweep over
 * JOBS_RUNS seeds or without it. */
static void jobs_spec_text(char *buf, size_t cap, int steps, int with_sweep) {
    int n = snprintf(buf, cap, jobs_base, steps);
    if (with_sweep && n > 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, "sweep: {seeds: %d}\n", JOBS_RUNS);
}


/* Run `self run spec --db db --jobs j --quiet` and wait; wall seconds or -1. */
static double run_sweep(const char *self, const char *spec, const char *db, int jobs) {
    char j[16];
    snprintf(j, sizeof j, "%d", jobs);
    char *const argv[] = {(char *)(uintptr_t)self, "run", (char *)(uintptr_t)spec, "--db",
                          (char *)(uintptr_t)db, "--jobs", j, "--quiet", NULL};
    double t0 = now_s();
    pid_t pid = fork();
    if (pid == 0) {
        execv(self, argv);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        return -1;
    return now_s() - t0;
}

/* Remove database db and its WAL, shared-memory and journal files. */
static void unlink_db(const char *db) {
    static const char *const tails[] = {"", "-wal", "-shm", "-journal"};
    for (int t = 0; t < 4; t++) {
        char path[640];
        snprintf(path, sizeof path, "%s%s", db, tails[t]);
        unlink(path);
    }
}

/* Time JOBS_PAIRS pairs of the sweep, --jobs 1 then --jobs 2, each sweep into
 * a fresh database in a temporary directory (removed afterwards); the
 * medians of each and the ratio of every pair. */
static void measure_jobs(const bench_opts *o, jobs_result *jr) {
    memset(jr, 0, sizeof *jr);
    char dir[512];
    if (temp_dir_make(dir, sizeof dir, "memlab-bench")) {
        snprintf(jr->note, sizeof jr->note, "temporary directory: %s", strerror(errno));
        return;
    }
    char spec[600], db[600];
    snprintf(spec, sizeof spec, "%s/jobs.yaml", dir);
    snprintf(db, sizeof db, "%s/jobs.db", dir);
    char text[1024];
    jr->steps = o->jobs_steps > 0 ? o->jobs_steps : JOBS_STEPS;
    jobs_spec_text(text, sizeof text, jr->steps, 1);
    FILE *f = fopen(spec, "w");
    int ok = f && fputs(text, f) >= 0;
    if (f && fclose(f)) ok = 0;
    if (!ok) snprintf(jr->note, sizeof jr->note, "cannot write %.150s", spec);
    double wall[2][JOBS_PAIRS];
    for (int p = 0; ok && p < JOBS_PAIRS; p++)
        for (int k = 0; ok && k < 2; k++) {
            wall[k][p] = run_sweep(o->self, spec, db, k + 1);
            unlink_db(db);
            if (wall[k][p] < 0) {
                snprintf(jr->note, sizeof jr->note, "%s run --jobs %d failed", o->self, k + 1);
                ok = 0;
            }
        }
    if (ok) {
        for (int p = 0; p < JOBS_PAIRS; p++) jr->ratio[p] = wall[0][p] / wall[1][p];
        qsort(jr->ratio, JOBS_PAIRS, sizeof(double), cmp_double);
        for (int k = 0; k < 2; k++) jr->wall[k] = median_of(wall[k], JOBS_PAIRS);
    }
    jr->ok = ok;
    unlink(spec);
    rmdir(dir);
}

/* ---- the database ------------------------------------------------------------------ */

static int record_row(ml_db *db, bench_row *r, const char *machine,
                      ml_error *e) {
    char *json = malloc(1 << 16), hash[65];
    if (!json) return ML_FAIL(e, "out of memory");
    if (config_to_json(&r->cfg, json, 1 << 16) < 0) {
        free(json);
        return ML_FAIL(e, "config too large");
    }
    config_hash(&r->cfg, hash);
    int rc = db_run_begin(db, json, hash, memlab_code_version(), machine, &r->run_id, e);
    free(json);
    if (rc) return -1;
    const bench_timing *m = &r->ml, *p = &r->pt;
    long st = m->n;
    double gflops = r->flops > 0 ? r->flops / m->med / 1e9 : NAN;
    struct {
        const char *split, *name;
        double v;
    } v[] = {
        {"bench", "threads", r->threads},
        {"bench", "step_s_median", m->med},
        {"bench", "step_s_min", m->lo},
        {"bench", "step_s_max", m->hi},
        {"bench", "step_cpu_s_median", m->cpu},
        {"bench", "products_s_median", m->prod},
        {"bench", "optimizer_s_median", m->optim},
        {"bench", "steal_frac", r->steal},
        {"bench", "steps_timed", m->n},
        {"bench", "tokens_per_s", (double)r->cfg.train.batch_size * r->L / m->med},
        {"bench", "head_rows", r->S},
        {"bench", "gflop_per_step", r->flops / 1e9},
        {"bench", "gflop_per_step_counted", r->flops_counted / 1e9},
        {"bench", "gflops", gflops},
        {"bench", "sgemm_peak_gflops", r->sgemm},
        {"bench", "frac_sgemm_peak", gflops / r->sgemm},
        {"bench", "fma_peak_gflops", r->fma > 0 ? r->fma : NAN},
        {"bench", "frac_fma_peak", r->fma > 0 ? gflops / r->fma : NAN},
        {"bench", "bf16_peak_gflops", r->bf16 > 0 ? r->bf16 : NAN},
        {"bench", "frac_bf16_peak", r->bf16 > 0 ? gflops / r->bf16 : NAN},
        {"bench", "peak_rss_mib", m->rss_mib},
        {"bench", "act_mib_mixer_layer", r->act_mixer * sizeof(real) / 1048576.0},
        {"bench", "act_mib_formula", r->act_formula > 0 ? r->act_formula * sizeof(real) / 1048576.0 : NAN},
        {"bench", "act_mib_model", r->act_model * sizeof(real) / 1048576.0},
        {"torch", "step_s_median", p->ok ? p->med : NAN},
        {"torch", "step_s_min", p->ok ? p->lo : NAN},
        {"torch", "step_s_max", p->ok ? p->hi : NAN},
        {"torch", "steps_timed", p->ok ? p->n : NAN},
        {"torch", "tokens_per_s", p->ok ? (double)r->cfg.train.batch_size * r->L / p->med : NAN},
        {"torch", "peak_rss_mib", p->ok ? p->rss_mib : NAN},
        {"torch", "step_cpu_s_median", p->ok ? p->cpu : NAN},
        {"bench", "speedup_vs_torch_same_head", bench_ratio_same(r)},
        {"bench", "speedup_vs_torch_same_head_cpu", bench_ratio_same_cpu(r)},
    };
    if (db_begin(db, e)) return -1;
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        if (!isfinite(v[i].v)) continue; /* not measured or no formula: no row */
        if (db_metric(db, r->run_id, st, v[i].split, v[i].name, v[i].v, e)) return -1;
    }
    for (int k = 0; k < MODEL_PHASES; k++) {
        char name[64];
        snprintf(name, sizeof name, "elementwise_%s_s_median", model_phase_names[k]);
        if (db_metric(db, r->run_id, st, "bench", name, m->phase[k], e)) return -1;
    }
    return db_commit(db, e) || db_run_end(db, r->run_id, "finished", st, NULL, e) ? -1 : 0;
}

/* Metrics that need the whole grid: exponents and the full-head ratio. */
static int record_summary(ml_db *db, const bench_row *rows, int n, ml_error *e) {
    if (db_begin(db, e)) return -1;
    for (int i = 0; i < n; i++) {
        const bench_row *r = &rows[i];
        if (!r->run_id) continue;
        double v[4] = {r->exponent, r->pt_exponent, bench_ratio_vs_full(rows, n, r),
                       bench_ratio_vs_full_cpu(rows, n, r)};
        const char *name[4] = {"time_per_token_exponent", "torch_time_per_token_exponent",
                               "speedup_vs_torch_full_head", "speedup_vs_torch_full_head_cpu"};
        for (int k = 0; k < 4; k++)
            if (isfinite(v[k]) && db_metric(db, r->run_id, r->ml.n, "bench", name[k], v[k], e))
                return -1;
    }
    return db_commit(db, e);
}

/* The --jobs measurement as one run named bench-jobs (the config of one run
 * of its sweep), metrics split "jobs": the medians of the sweep's wall time
 * with --jobs 1 and 2, their ratio and the range of the pairs' ratios. */
static int record_jobs(ml_db *db, const jobs_result *jr, const char *machine, ml_error *e) {
    char text[1024], json[1 << 14], hash[65];
    run_config cfg;
    jobs_spec_text(text, sizeof text, jr->steps, 0);
    if (spec_load_string(text, strlen(text), "bench-jobs.yaml", &cfg, e)) return -1;
    if (config_to_json(&cfg, json, sizeof json) < 0) return ML_FAIL(e, "config too large");
    config_hash(&cfg, hash);
    long long id;
    if (db_run_begin(db, json, hash, memlab_code_version(), machine, &id, e)) return -1;
    struct {
        const char *name;
        double v;
    } v[] = {
        {"runs", JOBS_RUNS},
        {"pairs", JOBS_PAIRS},
        {"steps_per_run", jr->steps},
        {"wall_s_jobs1_median", jr->wall[0]},
        {"wall_s_jobs2_median", jr->wall[1]},
        {"speedup_jobs2", jr->wall[0] / jr->wall[1]},
        {"speedup_jobs2_min", jr->ratio[0]},
        {"speedup_jobs2_max", jr->ratio[JOBS_PAIRS - 1]},
    };
    if (db_begin(db, e)) return -1;
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (db_metric(db, id, jr->steps, "jobs", v[i].name, v[i].v, e)) return -1;
    return db_commit(db, e) || db_run_end(db, id, "finished", jr->steps, NULL, e) ? -1 : 0;
}

/* The 1-minute load average, NAN when unknown. */
static double load_avg(void) {
    double l[1];
    return getloadavg(l, 1) == 1 ? l[0] : NAN;
}

/* ---- the run ------------------------------------------------------------------------- */

static void progress(const bench_opts *o, const bench_row *r) {
    if (!o->progress) return;
    const char *head = r->full ? "full" : "supervised";
    if (!r->ml.ok) {
        fprintf(o->progress, "  %-10s d %-4d L %-5d %dt %-10s skipped: %s\n", r->mixer, r->d,
                r->L, r->threads, head, r->ml.note);
        return;
    }
    double tok = (double)r->cfg.train.batch_size * r->L;
    fprintf(o->progress, "  %-10s d %-4d L %-5d %dt %-10s memlab %9.2f ms (cpu %9.2f) %9.0f tok/s",
            r->mixer, r->d, r->L, r->threads, head, 1e3 * r->ml.med, 1e3 * r->ml.cpu,
            tok / r->ml.med);
    if (r->pt.ok)
        fprintf(o->progress, " | torch %9.2f ms %8.0f tok/s | x%.2f\n", 1e3 * r->pt.med,
                tok / r->pt.med, r->pt.med / r->ml.med);
    else
        fprintf(o->progress, " | torch: %s\n", r->pt.note);
    fflush(o->progress);
}

/* The benchmark (bench.h): check the lists, then per thread count the SGEMM
 * peak, the twin server and every configuration, then the --jobs sweep, the
 * fits, the database summary and the report. */
int bench_run(const bench_opts *o, ml_error *e) {
    bench_opts q = *o;
    char mixers[32][32], heads_s[2][32];
    int dims[MAX_LIST], lens[MAX_LIST], heads[2];
    int n_mix = 0, n_dims, n_lens, n_heads;
    if (q.quick) {
        if (!q.dims) q.dims = "64";
        if (!q.lens) q.lens = "64";
        if (!q.threads) q.threads = "1";
        q.steps = q.steps < 3 ? q.steps : 3;
        q.min_steps = q.min_steps < q.steps ? q.min_steps : q.steps;
        q.budget_s = q.budget_s < 2 ? q.budget_s : 2;
        q.jobs = 0;
    }
    if (q.min_steps > q.steps) q.min_steps = q.steps;
    if (q.steps < 1 || q.min_steps < 1 || !(q.budget_s >= 0) || q.batch < 1)
        return ML_FAIL(e, "bench: need steps >= 1, min_steps >= 1, budget >= 0, batch >= 1");
    bench_ctx c;
    memset(&c, 0, sizeof c);
    c.o = &q;
    if (q.mixers && strcmp(q.mixers, "all")) {
        if ((n_mix = parse_names("mixers", q.mixers, mixers, 32, e)) < 0) return -1;
        for (int i = 0; i < n_mix; i++)
            if (!mixer_find(mixers[i])) {
                char known[512] = "";
                for (int k = 0; ml_mixers[k]; k++) {
                    size_t len = strlen(known);
                    snprintf(known + len, sizeof known - len, "%s%s", k ? ", " : "",
                             ml_mixers[k]->name);
                }
                return ML_FAIL(e, "--mixers: unknown mixer '%s' (known: %s)", mixers[i], known);
            }
    } else {
        for (int k = 0; ml_mixers[k] && n_mix < 32; k++)
            snprintf(mixers[n_mix++], 32, "%s", ml_mixers[k]->name);
    }
    if ((n_dims = parse_ints("dims", q.dims ? q.dims : "64,128,256", dims, MAX_LIST, 1, 65536,
                             e)) < 0 ||
        (n_lens = parse_ints("lens", q.lens ? q.lens : "64,256,1024", lens, MAX_LIST, 16,
                             1 << 20, e)) < 0 ||
        (c.n_threads = parse_ints("threads", q.threads ? q.threads : "1,2", c.threads,
                                  MAX_LIST, 1, 1024, e)) < 0 ||
        (n_heads = parse_names("heads",
                               q.heads && strcmp(q.heads, "both") ? q.heads : "supervised,full",
                               heads_s, 2, e)) < 0)
        return -1;
    for (int i = 0; i < n_heads; i++) {
        if (strcmp(heads_s[i], "supervised") && strcmp(heads_s[i], "full"))
            return ML_FAIL(e, "--heads: '%s' is neither supervised nor full", heads_s[i]);
        heads[i] = !strcmp(heads_s[i], "full");
    }

    int cap = n_mix * n_dims * n_lens * c.n_threads * n_heads;
    bench_row *rows = calloc((size_t)cap, sizeof(bench_row));
    if (!rows) return ML_FAIL(e, "out of memory");
    int n = 0, rc = -1;
    ml_db *db = NULL;
    torch_server ts;
    memset(&ts, 0, sizeof ts);
    sgemm_bufs sg;
    memset(&sg, 0, sizeof sg);
    if (sgemm_bufs_make(&sg, e)) goto done;
    if (q.db_path && db_open(&db, q.db_path, e)) goto done;
#ifdef __SSE__
    /* as train.c: flush denormals to zero (the twin does the same) */
    _mm_setcsr(_mm_getcsr() | 0x8040);
#endif
    snprintf(c.core, sizeof c.core, "%s", blas_core_note());
    machine_describe(c.machine, sizeof c.machine);
    time_t now = time(NULL);
    strftime(c.started, sizeof c.started, "%Y-%m-%d %H:%M:%S UTC", gmtime(&now));
    c.load_start = load_avg();
    c.t_start = now_s();
    int saved_threads = openblas_get_num_threads();
    for (int ti = 0; ti < c.n_threads; ti++) {
        int th = c.threads[ti];
        openblas_set_num_threads(th);
        sgemm_peak(&sg, &c.peak_med[ti], &c.peak_best[ti], 0.5);
        c.fma[ti] = fma_peak_gflops(th, 0.3);
        if (q.matmul && !strcmp(q.matmul, "bf16")) c.bf16[ti] = bf16_peak_gflops(th, 0.3);
        if (q.progress)
            fprintf(q.progress,
                    "%d thread%s: SGEMM %dx%dx%d median %.0f GFLOP/s (best %.0f), FMA peak %.0f\n",
                    th, th > 1 ? "s" : "", SGEMM_N, SGEMM_N, SGEMM_N, c.peak_med[ti],
                    c.peak_best[ti], c.fma[ti]);
        if (q.torch) {
            if (torch_start(&ts, &q, th) == 0) {
                snprintf(c.torch_version, sizeof c.torch_version, "%s", ts.version);
            } else if (q.progress) {
                fprintf(q.progress, "PyTorch twin skipped: %s\n", ts.why);
            }
        } else {
            snprintf(ts.why, sizeof ts.why, "PyTorch not asked for (--no-torch)");
        }
        for (int mi = 0; mi < n_mix; mi++)
            for (int di = 0; di < n_dims; di++)
                for (int li = 0; li < n_lens; li++)
                    for (int hi = 0; hi < n_heads; hi++) {
                        bench_row *r = &rows[n++];
                        copy_text(r->mixer, sizeof r->mixer, mixers[mi]);
                        r->d = dims[di];
                        r->L = lens[li];
                        r->threads = th;
                        r->fma = c.fma[ti];
                        r->bf16 = c.bf16[ti];
                        r->full = heads[hi];
                        r->exponent = r->pt_exponent = NAN;
                        ml_error ce;
                        memset(&ce, 0, sizeof ce);
                        if (row_config(&r->cfg, r->mixer, r->d, r->L, q.batch, r->full, q.matmul, &ce)) {
                            ml_error_format(&ce, r->ml.note, sizeof r->ml.note);
                            progress(&q, r);
                            continue;
                        }
                        /* the reference: SGEMM just before and just after the
                         * configuration, the better median of the two (one
                         * alone can fall into a moment of other work) */
                        double before, after, best;
                        if (ts.lost && torch_start(&ts, &q, th) && q.progress)
                            fprintf(q.progress, "PyTorch twin not restarted: %s\n", ts.why);
                        sgemm_peak(&sg, &before, &best, 0);
                        if (measure_config(r, &ts, &q, e)) goto done;
                        sgemm_peak(&sg, &after, &best, 0);
                        r->sgemm = before > after ? before : after;
                        progress(&q, r);
                        if (db && record_row(db, r, c.machine, e)) goto done;
                    }
        torch_stop(&ts);
    }
    openblas_set_num_threads(saved_threads);
    if (q.jobs) {
        if (q.progress)
            fprintf(q.progress,
                    "sweep of %d runs with memlab run --jobs 1, then --jobs 2, %d times\n",
                    JOBS_RUNS, JOBS_PAIRS);
        measure_jobs(&q, &c.jobs);
        if (q.progress) {
            if (c.jobs.ok)
                fprintf(q.progress, "  medians: --jobs 1 %.1f s, --jobs 2 %.1f s: %.2fx (pairs "
                        "%.2f–%.2fx)\n", c.jobs.wall[0], c.jobs.wall[1],
                        c.jobs.wall[0] / c.jobs.wall[1], c.jobs.ratio[0],
                        c.jobs.ratio[JOBS_PAIRS - 1]);
            else
                fprintf(q.progress, "  not measured: %s\n", c.jobs.note);
        }
        if (db && c.jobs.ok && record_jobs(db, &c.jobs, c.machine, e)) goto done;
    } else {
        snprintf(c.jobs.note, sizeof c.jobs.note, "--no-jobs");
    }
    c.load_end = load_avg();
    c.t_end = now_s();
    for (int i = 0; i < n; i++) {
        rows[i].exponent = bench_fit_exponent(rows, n, &rows[i], 0);
        rows[i].pt_exponent = bench_fit_exponent(rows, n, &rows[i], 1);
    }
    if (db && record_summary(db, rows, n, e)) goto done;
    if (q.report_path) {
        if (bench_write_report(q.report_path, &c, rows, n, e)) goto done;
        if (q.progress) fprintf(q.progress, "report: %s\n", q.report_path);
    }
    rc = 0;
done:
    torch_stop(&ts);
    sgemm_bufs_free(&sg);
    db_close(db);
    free(rows);
    return rc;
}

/* ---- the command line ------------------------------------------------------------------ */

const char bench_usage[] =
    "usage: memlab bench [--mixers LIST] [--dims LIST] [--lens LIST] [--threads LIST]\n"
    "                    [--heads LIST] [--steps N] [--min-steps N] [--budget SEC]\n"
    "                    [--batch N] [--quick] [--no-torch] [--no-jobs] [--jobs-steps N]\n"
    "                    [--matmul fp32|bf16] [--python PATH] [--db FILE] [--report FILE]\n"
    "\n"
    "Times a full training step (forward, backward, clipping, AdamW) of 2-layer MQAR\n"
    "models (V 8192, conv 4, no MLP, N = L/16) for every mixer x d_model x L x threads\n"
    "x head, and the same step of the PyTorch twin (tests/twin/bench_torch.py) when\n"
    "python can import torch. Reports medians and spread, tokens/s, GFLOP/s against\n"
    "a measured SGEMM peak, peak memory, activation memory against its formula, the\n"
    "ratios to PyTorch and the exponent of time per token against L, where each\n"
    "step's time goes (matrix products, clipping and AdamW, and the model's phases:\n"
    "mixer, conv, norms, head, embedding) and, for every ratio target missed, by how\n"
    "much and the most the ratio could be with the rest free or the products at\n"
    "the SGEMM rate; then times a sweep of 4 independent runs with memlab run\n"
    "--jobs 1 and --jobs 2, three times each, recorded as the run bench-jobs.\n"
    "\n"
    "  --mixers LIST    comma-separated mixers, or all (the default)\n"
    "  --dims LIST      d_model values (default 64,128,256)\n"
    "  --lens LIST      sequence lengths L (default 64,256,1024)\n"
    "  --threads LIST   thread counts (default 1,2)\n"
    "  --heads LIST     supervised, full, or both (= supervised,full; the default)\n"
    "  --steps N        most timed steps per configuration (default 10)\n"
    "  --min-steps N    fewest timed steps (default 3)\n"
    "  --budget SEC     stop timing a configuration after SEC seconds once min-steps\n"
    "                   are done (default 10)\n"
    "  --batch N        sequences per step (default 64)\n"
    "  --quick          smoke run: d 64, L 64, 1 thread, 3 steps, no --jobs sweep,\n"
    "                   unless lists say otherwise\n"
    "  --no-torch       do not run the PyTorch twin\n"
    "  --no-jobs        do not time the --jobs sweep\n"
    "  --jobs-steps N   training steps of each run of that sweep (default 150)\n"
    "  --matmul P       memlab's matrix products: fp32 (default) or bf16 (train.matmul;\n"
    "                   the PyTorch twin then runs its forward under bf16 autocast)\n"
    "  --python PATH    interpreter of the twin (default /usr/bin/python3)\n"
    "  --db FILE        record each configuration as a run (default results/bench.db)\n"
    "  --report FILE    markdown report (default results/bench.md)\n";

/* Defaults: see bench.h. */
void bench_defaults(bench_opts *o) {
    memset(o, 0, sizeof *o);
    o->db_path = "results/bench.db";
    o->report_path = "results/bench.md";
    o->batch = 64;
    o->steps = 10;
    o->min_steps = 3;
    o->budget_s = 10;
    o->torch = 1;
    o->jobs = 1;
    o->jobs_steps = JOBS_STEPS;
    o->self = "/proc/self/exe";
    o->python = "/usr/bin/python3";
    o->torch_script = "tests/twin/bench_torch.py";
}

/* A whole number in [lo, hi] from s into *out, or -1 with e set. */
static int arg_int(const char *flag, const char *s, int lo, int hi, int *out, ml_error *e) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return ML_FAIL(e, "%s takes a whole number from %d to %d, got '%s'", flag, lo, hi, s);
    *out = (int)v;
    return 0;
}

/* Arguments after the verb (bench.h); the usage text lists them. */
int bench_parse_args(bench_opts *o, int argc, char **argv, ml_error *e) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 1;
        if (!strcmp(a, "--quick")) {
            o->quick = 1;
            continue;
        }
        if (!strcmp(a, "--no-torch")) {
            o->torch = 0;
            continue;
        }
        if (!strcmp(a, "--no-jobs")) {
            o->jobs = 0;
            continue;
        }
        if (!v) return ML_FAIL(e, "bench: unknown argument or missing value: '%s'", a);
        i++;
        if (!strcmp(a, "--db")) o->db_path = v;
        else if (!strcmp(a, "--report")) o->report_path = v;
        else if (!strcmp(a, "--mixers")) o->mixers = v;
        else if (!strcmp(a, "--dims")) o->dims = v;
        else if (!strcmp(a, "--lens")) o->lens = v;
        else if (!strcmp(a, "--threads")) o->threads = v;
        else if (!strcmp(a, "--heads")) o->heads = v;
        else if (!strcmp(a, "--python")) o->python = v;
        else if (!strcmp(a, "--matmul")) {
            if (strcmp(v, "fp32") && strcmp(v, "bf16"))
                return ML_FAIL(e, "--matmul takes fp32 or bf16, got '%s'", v);
            o->matmul = v;
        }
        else if (!strcmp(a, "--steps")) {
            if (arg_int("--steps", v, 1, 100000, &o->steps, e)) return -1;
        } else if (!strcmp(a, "--min-steps")) {
            if (arg_int("--min-steps", v, 1, 100000, &o->min_steps, e)) return -1;
        } else if (!strcmp(a, "--jobs-steps")) {
            if (arg_int("--jobs-steps", v, 1, 1000000, &o->jobs_steps, e)) return -1;
        } else if (!strcmp(a, "--batch")) {
            if (arg_int("--batch", v, 1, 1 << 20, &o->batch, e)) return -1;
        } else if (!strcmp(a, "--budget")) {
            char *end;
            double b = strtod(v, &end);
            if (!*v || *end || !(b >= 0 && b <= 1e6))
                return ML_FAIL(e, "--budget takes seconds from 0 to 1e6, got '%s'", v);
            o->budget_s = b;
        } else {
            return ML_FAIL(e, "bench: unknown argument '%s'", a);
        }
    }
    return 0;
}
