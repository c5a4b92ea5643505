/* runner.c: the run loop of a sweep, its workers and its progress display
 * (see runner.h).
 *
 * Work division: every worker walks the same list of runs still to do, in
 * expansion order, and claims each before training it; a claim that finds
 * the run done or busy moves on. The claims (db.c) are the only
 * coordination, so workers of several `memlab run` processes cooperate the
 * same way as workers of one.
 *
 * Reporting: a worker describes what it does in fixed-size messages
 * (runner_msg, smaller than PIPE_BUF so that a write to the shared pipe is
 * atomic); the parent draws them. With one job there is no pipe: the worker
 * runs in-process and calls the drawing code directly.
 *
 * Left to others: what a run does (train.c), what the runs are (sweep.c),
 * claiming and recording (db.c), the command line and exit codes (main.c). */
#define _GNU_SOURCE /* prctl */
#include "runner.h"

#include <cblas.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "train.h"
#include "version.h"

/* Seconds between heartbeats of a running run. */
#define HEARTBEAT_S 60.0

enum { MSG_START, MSG_STEP, MSG_END, MSG_SKIP, MSG_ERROR };

typedef struct runner_msg {
    int worker, kind;
    long index;          /* the run (sweep index) */
    long step, steps;    /* MSG_STEP: progress; MSG_END: steps reached */
    double loss, acc;    /* MSG_STEP: last train loss, last test accuracy (-1: none) */
    long long run_id;
    char status[16];     /* MSG_END: finished | diverged | interrupted | failed;
                            MSG_SKIP: done | busy */
    double test_acc, test_loss, wall_s;
    char text[600];      /* MSG_END failed, MSG_ERROR: the error */
} runner_msg;
_Static_assert(sizeof(runner_msg) <= PIPE_BUF, "a message must be one atomic pipe write");

/* now_s: monotonic seconds. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Progress: the parent's view of the workers.                                */

enum { SEEN_NONE, SEEN_ELSEWHERE, SEEN_OURS };

typedef struct worker_view {
    int active;
    long index, step, steps;
    double loss;
} worker_view;

typedef struct progress {
    const ml_sweep *s;
    const runner_opts *o;
    runner_result *r;
    worker_view w[RUNNER_MAX_JOBS];
    long *steps_of;      /* train.steps of each run (for the ETA) */
    unsigned char *seen; /* per run: SEEN_* (a skip by one worker of a run another
                            of ours trains is not work done elsewhere) */
    double t0;
    double steps_todo;   /* steps of the runs still to do when the loop started */
    double steps_closed; /* steps of runs that ended or were skipped */
    int line_shown;
    double last_draw;    /* when the live line was last drawn */
} progress;

/* fmt_duration: seconds as "1h02m", "3m05s" or "42s". */
static void fmt_duration(double s, char *buf, size_t cap) {
    if (!(s >= 0) || s > 1e8) {
        snprintf(buf, cap, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, cap, "%lds", t);
}

/* clear_line: remove the live line before printing a plain one. */
static void clear_line(progress *p) {
    if (p->line_shown) fprintf(stderr, "\r\033[K");
    p->line_shown = 0;
}

/* draw: the live line: runs done / total, each active worker's run, step
 * and loss, and the ETA from the steps done so far; at most ten times a
 * second unless forced, and cut to the terminal's width (a wrapped line
 * could not be redrawn in place). */
static void draw(progress *p, int force) {
    if (!p->o->progress || p->o->quiet) return;
    double t = now_s();
    if (!force && t - p->last_draw < 0.1) return;
    p->last_draw = t;
    runner_result *r = p->r;
    long done = r->done_before + r->finished + r->diverged + r->elsewhere;
    double active = 0;
    char line[512];
    size_t used = (size_t)snprintf(line, sizeof line, "[%ld/%ld done]", done, r->total);
    int shown = 0;
    for (int k = 0; k < RUNNER_MAX_JOBS; k++) {
        const worker_view *w = &p->w[k];
        if (!w->active) continue;
        active += (double)w->step;
        if (shown++ < 3 && used < sizeof line)
            used += (size_t)snprintf(line + used, sizeof line - used,
                                     " | run %ld step %ld/%ld loss %.3f", w->index + 1, w->step,
                                     w->steps, w->loss);
    }
    if (shown > 3 && used < sizeof line)
        used += (size_t)snprintf(line + used, sizeof line - used, " | +%d more", shown - 3);
    double elapsed = now_s() - p->t0, progressed = p->steps_closed + active;
    char eta[32] = "?";
    if (progressed > 0 && elapsed > 1)
        fmt_duration((p->steps_todo - progressed) * elapsed / progressed, eta, sizeof eta);
    if (used < sizeof line) snprintf(line + used, sizeof line - used, " | ETA %s", eta);
    struct winsize ws;
    size_t width = ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 10 ? ws.ws_col - 1 : 119;
    if (width < sizeof line) line[width] = '\0';
    fprintf(stderr, "\r\033[K%s", line);
    fflush(stderr);
    p->line_shown = 1;
}

/* take: one message from a worker into the view, printing the line of a
 * run that ended. */
static void take(progress *p, const runner_msg *m) {
    if (m->worker < 0 || m->worker >= RUNNER_MAX_JOBS) return;
    worker_view *w = &p->w[m->worker];
    runner_result *r = p->r;
    const runner_opts *o = p->o;
    switch (m->kind) {
    case MSG_START:
        /* A worker's skip of this run may have been read before this start. */
        if (p->seen[m->index] == SEEN_ELSEWHERE) {
            r->elsewhere--;
            p->steps_closed -= (double)p->steps_of[m->index];
        }
        p->seen[m->index] = SEEN_OURS;
        w->active = 1;
        w->index = m->index;
        w->step = 0;
        w->steps = m->steps;
        w->loss = 0;
        break;
    case MSG_STEP:
        w->step = m->step;
        w->steps = m->steps;
        w->loss = m->loss;
        break;
    case MSG_SKIP:
        if (p->seen[m->index] != SEEN_NONE) break;
        p->seen[m->index] = SEEN_ELSEWHERE;
        r->elsewhere++;
        p->steps_closed += (double)p->steps_of[m->index];
        break;
    case MSG_END: {
        w->active = 0;
        p->steps_closed += (double)p->steps_of[m->index];
        if (!strcmp(m->status, "finished")) r->finished++;
        else if (!strcmp(m->status, "diverged")) r->diverged++;
        else if (!strcmp(m->status, "interrupted")) r->interrupted++;
        else r->failed++;
        if (o->quiet) break;
        /* [run number/runs of the whole sweep]: a shard's runs keep their
         * sweep-wide numbers. */
        long all = sweep_size(p->s);
        char desc[400], wall[32];
        sweep_describe(p->s, m->index, desc, sizeof desc);
        fmt_duration(m->wall_s, wall, sizeof wall);
        clear_line(p);
        if (!strcmp(m->status, "failed"))
            fprintf(stderr, "[%ld/%ld] failed       %s: %s\n", m->index + 1, all, desc,
                    m->text);
        else if (strcmp(m->status, "finished"))
            fprintf(stderr, "[%ld/%ld] %-12s %s  step %ld  %s  run %lld\n", m->index + 1,
                    all, m->status, desc, m->step, wall, m->run_id);
        else
            fprintf(stderr,
                    "[%ld/%ld] %-12s %s  step %ld  test accuracy %.4f  test loss %.4f  %s  "
                    "run %lld\n",
                    m->index + 1, all, m->status, desc, m->step, m->test_acc,
                    m->test_loss, wall, m->run_id);
        break;
    }
    case MSG_ERROR:
        r->worker_errors++;
        if (!o->quiet) {
            clear_line(p);
            fprintf(stderr, "memlab: worker %d: %s\n", m->worker + 1, m->text);
        }
        break;
    }
    draw(p, m->kind == MSG_END);
}

/* ------------------------------------------------------------------------ */
/* Workers.                                                                   */

typedef struct worker {
    const ml_sweep *s;
    const runner_opts *o;
    int id;
    long long sweep_id;
    const long *todo;
    long n_todo;
    volatile sig_atomic_t *stop;
    int fd;             /* pipe to the parent, -1: in-process */
    progress *view;     /* in-process: the view to update */
    ml_db *db;
    long index;         /* the run being trained */
    long long run_id;
    double last_beat;
    int msg_failed;     /* the pipe broke: the parent is gone */
} worker;

/* post: a message to the parent (or to the in-process view). */
static void post(worker *w, runner_msg *m) {
    m->worker = w->id;
    if (w->fd < 0) {
        take(w->view, m);
        return;
    }
    if (w->msg_failed) return;
    const char *p = (const char *)m;
    size_t left = sizeof *m;
    while (left > 0) {
        ssize_t n = write(w->fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            w->msg_failed = 1;
            return;
        }
        p += n;
        left -= (size_t)n;
    }
}

/* on_step: train_run's progress hook: report, and beat the heart. */
static void on_step(void *ctx, long step, long steps, double loss, double acc) {
    worker *w = ctx;
    runner_msg m;
    memset(&m, 0, sizeof m);
    m.kind = MSG_STEP;
    m.index = w->index;
    m.step = step;
    m.steps = steps;
    m.loss = loss;
    m.acc = acc;
    post(w, &m);
    double t = now_s();
    if (t - w->last_beat > HEARTBEAT_S) {
        ml_error ignore;
        /* Best effort: a missed beat only matters to another host, after
         * many minutes. */
        (void)db_run_heartbeat(w->db, w->run_id, &ignore);
        w->last_beat = t;
    }
}

/* run_one: claim run i and train it if the claim succeeds. Returns 0, or
 * -1 on a database error (the worker stops). */
static int run_one(worker *w, long i, ml_error *e) {
    run_config cfg;
    if (sweep_config(w->s, i, &cfg, e)) return -1;
    char *json = malloc(1 << 16);
    if (!json) return ML_FAIL(e, "out of memory");
    if (config_to_json(&cfg, json, 1 << 16) < 0) {
        free(json);
        return ML_FAIL(e, "config too large to serialise");
    }
    char machine[512];
    machine_describe(machine, sizeof machine);
    long long run_id = 0;
    db_claim claim;
    int rc = db_run_claim(w->db, w->sweep_id, json, sweep_hash(w->s, i), memlab_code_version(),
                          machine, &run_id, &claim, e);
    free(json);
    if (rc) return -1;
    runner_msg m;
    memset(&m, 0, sizeof m);
    m.index = i;
    if (claim != DB_CLAIMED) {
        m.kind = MSG_SKIP;
        snprintf(m.status, sizeof m.status, "%s", claim == DB_CLAIM_DONE ? "done" : "busy");
        post(w, &m);
        return 0;
    }
    m.kind = MSG_START;
    m.steps = cfg.train.steps;
    m.run_id = run_id;
    post(w, &m);
    w->index = i;
    w->run_id = run_id;
    w->last_beat = now_s();
    train_opts t = {.progress = 0, .quiet = 1, .stop = w->stop, .run_id = run_id,
                    .on_step = on_step, .step_ctx = w};
    train_outcome out;
    ml_error err;
    memset(&err, 0, sizeof err);
    double t0 = now_s();
    rc = train_run(&cfg, w->db, &t, &out, &err);
    memset(&m, 0, sizeof m);
    m.kind = MSG_END;
    m.index = i;
    m.run_id = run_id;
    m.wall_s = now_s() - t0;
    if (rc) {
        /* train_run records 'failed' once it has written to the row; an
         * error before that would leave the claimed row running. */
        ml_error_format(&err, m.text, sizeof m.text);
        ml_error ignore;
        (void)db_run_end(w->db, run_id, "failed", out.step, m.text, &ignore);
        snprintf(m.status, sizeof m.status, "failed");
    } else {
        snprintf(m.status, sizeof m.status, "%s", out.status);
        m.step = out.step;
        m.test_acc = out.test_accuracy;
        m.test_loss = out.test_loss;
    }
    post(w, &m);
    return 0;
}

/* work: the worker loop. Returns 0, or -1 with the error in e. */
static int work(worker *w, ml_error *e) {
    if (db_open(&w->db, w->o->db_path, e)) return -1;
    int rc = 0;
    for (long k = 0; k < w->n_todo && !rc; k++) {
        if (*w->stop || w->msg_failed) break;
        rc = run_one(w, w->todo[k], e);
    }
    db_close(w->db);
    w->db = NULL;
    return rc;
}

/* A forked worker's stop flag, set by SIGINT (forwarded by the parent) and
 * SIGTERM (the parent died). */
static volatile sig_atomic_t child_stop;
static void on_child_signal(int sig) {
    (void)sig;
    child_stop = 1;
}

/* child_main: a forked worker; never returns. Exit status 0, or 1 after
 * an error (sent to the parent). */
static void child_main(worker *w, pid_t parent) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_child_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* A writer whose parent is gone gets EPIPE, not a fatal signal. */
    signal(SIGPIPE, SIG_IGN);
    /* Stop (as interrupted) when the parent dies, whatever kills it. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) child_stop = 1;
    openblas_set_num_threads(1);
    w->stop = &child_stop;
    ml_error e;
    memset(&e, 0, sizeof e);
    int rc = work(w, &e);
    if (rc) {
        runner_msg m;
        memset(&m, 0, sizeof m);
        m.kind = MSG_ERROR;
        ml_error_format(&e, m.text, sizeof m.text);
        post(w, &m);
    }
    close(w->fd);
    _exit(rc ? 1 : 0);
}

/* parallel: `jobs` forked workers; the parent draws their messages and
 * forwards a stop. Returns 0, or -1 when no worker could be started. */
static int parallel(worker *proto, int jobs, progress *view, ml_error *e) {
    int fds[2];
    if (pipe(fds)) return ML_FAIL(e, "pipe: %s", strerror(errno));
    pid_t pids[RUNNER_MAX_JOBS];
    int started = 0;
    pid_t parent = getpid();
    fflush(stdout);
    fflush(stderr);
    for (int k = 0; k < jobs; k++) {
        pid_t pid = fork();
        if (pid < 0) {
            if (!proto->o->quiet)
                fprintf(stderr, "memlab: fork worker %d: %s\n", k + 1, strerror(errno));
            break;
        }
        if (pid == 0) {
            close(fds[0]);
            worker w = *proto;
            w.id = k;
            w.fd = fds[1];
            child_main(&w, parent);
        }
        pids[started++] = pid;
    }
    close(fds[1]);
    if (!started) {
        close(fds[0]);
        return ML_FAIL(e, "could not start any worker process");
    }
    int forwarded = 0;
    runner_msg m;
    size_t have = 0;
    for (;;) {
        if (*proto->stop && !forwarded) {
            for (int k = 0; k < started; k++) kill(pids[k], SIGINT);
            forwarded = 1;
        }
        struct pollfd pf = {.fd = fds[0], .events = POLLIN};
        int pr = poll(&pf, 1, 250);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) {
            draw(view, 0);
            continue;
        }
        ssize_t n = read(fds[0], (char *)&m + have, sizeof m - have);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break; /* every worker closed its end */
        have += (size_t)n;
        if (have == sizeof m) {
            take(view, &m);
            have = 0;
        }
    }
    close(fds[0]);
    for (int k = 0; k < started; k++) {
        int status = 0;
        while (waitpid(pids[k], &status, 0) < 0 && errno == EINTR) {
        }
        if (WIFSIGNALED(status)) {
            view->r->worker_errors++;
            if (!proto->o->quiet) {
                clear_line(view);
                fprintf(stderr, "memlab: worker %d died (signal %d)\n", k + 1, WTERMSIG(status));
            }
        }
    }
    for (int k = 0; k < RUNNER_MAX_JOBS; k++) view->w[k].active = 0;
    return 0;
}

/* ------------------------------------------------------------------------ */

int runner_run(const ml_sweep *s, const runner_opts *o, runner_result *r, ml_error *e) {
    memset(r, 0, sizeof *r);
    long n = sweep_size(s);
    r->total = o->shard ? shard_size(o->shard, n) : n;
    if (o->jobs < 1 || o->jobs > RUNNER_MAX_JOBS)
        return ML_FAIL(e, "jobs must be in [1, %d], got %d", RUNNER_MAX_JOBS, o->jobs);
    long *todo = malloc(sizeof *todo * (size_t)(n ? n : 1));
    long *steps_of = malloc(sizeof *steps_of * (size_t)(n ? n : 1));
    unsigned char *seen = calloc((size_t)(n ? n : 1), 1);
    if (!todo || !steps_of || !seen) {
        free(todo);
        free(steps_of);
        free(seen);
        return ML_FAIL(e, "out of memory");
    }
    int rc = -1;
    ml_db *db = NULL;
    progress view;
    memset(&view, 0, sizeof view);
    if (db_open(&db, o->db_path, e) ||
        db_sweep_register(db, sweep_name(s), sweep_source(s), sweep_resolved(s),
                          sweep_resolved_hash(s), &r->sweep_id, e))
        goto done;
    long n_todo = 0;
    double steps_todo = 0;
    for (long i = 0; i < n; i++) {
        db_state st;
        long long id;
        run_config cfg;
        if (o->shard && !shard_owns(o->shard, i)) continue;
        if (db_hash_state(db, sweep_hash(s, i), &st, &id, e) || sweep_config(s, i, &cfg, e))
            goto done;
        steps_of[i] = cfg.train.steps;
        if (st == DB_FINISHED || st == DB_DIVERGED) {
            r->done_before++;
        } else {
            todo[n_todo++] = i;
            steps_todo += (double)cfg.train.steps;
        }
    }
    /* The workers open their own connections (SQLite's must not cross a
     * fork). */
    db_close(db);
    db = NULL;
    rc = 0;
    if (n_todo == 0) goto done;
    view.s = s;
    view.o = o;
    view.r = r;
    view.steps_of = steps_of;
    view.seen = seen;
    view.t0 = now_s();
    view.steps_todo = steps_todo;
    static volatile sig_atomic_t never;
    worker w = {.s = s, .o = o, .id = 0, .sweep_id = r->sweep_id, .todo = todo,
                .n_todo = n_todo, .stop = o->stop ? o->stop : &never, .fd = -1, .view = &view};
    int jobs = o->jobs < n_todo ? o->jobs : (int)n_todo;
    if (jobs == 1) {
        int threads = openblas_get_num_threads();
        openblas_set_num_threads(1);
        rc = work(&w, e);
        openblas_set_num_threads(threads);
    } else {
        rc = parallel(&w, jobs, &view, e);
    }
    clear_line(&view);
done:
    if (o->stop && *o->stop) r->stopped = 1;
    db_close(db);
    free(todo);
    free(steps_of);
    free(seen);
    return rc;
}

/* state_name: a db_state for people. */
static const char *state_name(db_state st) {
    switch (st) {
    case DB_MISSING: return "to run";
    case DB_FINISHED: return "done";
    case DB_DIVERGED: return "diverged";
    case DB_RUNNING: return "running";
    case DB_FAILED: return "failed";
    case DB_INTERRUPTED: return "interrupted";
    }
    return "?";
}

int runner_dry_run(const ml_sweep *s, const char *db_path, const ml_shard *shard, FILE *out,
                   ml_error *e) {
    ml_db *db = NULL;
    int version = 0;
    /* runs' states and owners are in every file from schema 2 on; an older
     * file is read as it is (the run itself upgrades it) */
    if (access(db_path, F_OK) == 0 && db_open_readonly_from(&db, db_path, 2, &version, e))
        return -1;
    long n = sweep_size(s), counts[6] = {0}, owned = shard ? shard_size(shard, n) : n;
    db_state *states = malloc(sizeof *states * (size_t)(n ? n : 1));
    if (!states) {
        db_close(db);
        return ML_FAIL(e, "out of memory");
    }
    for (long i = 0; i < n; i++) {
        long long id;
        states[i] = DB_MISSING;
        if (shard && !shard_owns(shard, i)) continue;
        if (db && db_hash_state(db, sweep_hash(s, i), &states[i], &id, e)) {
            free(states);
            db_close(db);
            return -1;
        }
        counts[states[i]]++;
    }
    db_close(db);
    long dups = sweep_expanded(s) - n;
    fprintf(out, "sweep %s (%s): %ld run%s", sweep_name(s), sweep_file(s), n, n == 1 ? "" : "s");
    if (dups > 0)
        fprintf(out, " (%ld expanded, %ld duplicate%s merged)", sweep_expanded(s), dups,
                dups == 1 ? "" : "s");
    if (shard && shard->count > 1)
        fprintf(out, "; shard %ld of %ld (%s): %ld run%s", shard->index, shard->count,
                shard->source, owned, owned == 1 ? "" : "s");
    long done = counts[DB_FINISHED] + counts[DB_DIVERGED];
    fprintf(out, "; %ld already done, %ld to run", done, owned - done);
    if (counts[DB_RUNNING]) fprintf(out, " (%ld running elsewhere)", counts[DB_RUNNING]);
    if (version && version < db_schema_version())
        fprintf(out, " (database at schema version %d: the run upgrades it to %d)", version,
                db_schema_version());
    fprintf(out, "\n");
    for (long i = 0; i < n; i++) {
        char desc[600];
        if (shard && !shard_owns(shard, i)) continue;
        sweep_describe(s, i, desc, sizeof desc);
        fprintf(out, "%5ld  %-11s  %.12s  %s\n", i + 1, state_name(states[i]), sweep_hash(s, i),
                desc);
    }
    free(states);
    return 0;
}
