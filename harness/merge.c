/* merge.c: merging results databases (see merge.h).
 *
 * Two passes inside one IMMEDIATE transaction on the output, so nothing
 * another process writes to it can slip between deciding and writing:
 *   1. every run row of the output and of each input is listed as (config
 *      hash, fingerprint of its config without name and description,
 *      status rank, file, id); sorted by hash, each group yields the
 *      conflicts and the one row to copy, if any;
 *   2. each input is opened again (one file at a time, so a merge of a
 *      thousand shards does not hold a thousand descriptors), its sweeps
 *      are added by (name, resolved_hash), and its chosen runs are copied
 *      with their metrics in rowid order (the order db_final_metric breaks
 *      ties by), their sweep ids translated to the output's.
 * Values are copied as SQLite values (sqlite3_bind_value), so a REAL comes
 * across bit for bit and a NULL (NaN) stays NULL.
 *
 * Left to others: opening files, the schema and its version checks (db.c),
 * the shard file names (shard.c), printing the outcome (main.c). */
#include "merge.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "sha256.h"

/* Status ranks: the higher copy of a config wins. */
enum { RANK_NONE, RANK_RUNNING, RANK_INTERRUPTED, RANK_FAILED, RANK_DIVERGED, RANK_FINISHED };

/* rank_of: the rank of a status text (unknown: none). */
static int rank_of(const char *status) {
    static const char *const names[] = {"running", "interrupted", "failed", "diverged",
                                        "finished"};
    for (int k = 0; k < 5; k++)
        if (status && !strcmp(status, names[k])) return RANK_RUNNING + k;
    return RANK_NONE;
}

/* One run row of one file. */
typedef struct cand {
    char hash[65];
    uint8_t digest[32]; /* SHA-256 of the config without name and description */
    int src;            /* 0: the output, k: input k - 1 */
    int rank;
    long long id;
} cand;

typedef struct cand_list {
    cand *v;
    size_t n, cap;
} cand_list;

/* One row chosen to be copied. */
typedef struct pick {
    int src;
    long long id;
} pick;

/* The merge in progress. */
typedef struct merger {
    const char *out_path;
    const char *const *in;
    int n_in;
    sqlite3 *h;        /* the output's connection (db.c's) */
    cand_list c;
    pick *picks;
    size_t n_picks;
    char (*unlink_hash)[65];
    size_t n_unlink;
    merge_result *r;
    ml_error *e;
} merger;

/* src_name: the file of source src. */
static const char *src_name(const merger *m, int src) {
    return src == 0 ? m->out_path : m->in[src - 1];
}

/* sql_fail: "database PATH: WHAT: sqlite message"; returns -1. */
static int sql_fail(ml_error *e, sqlite3 *h, const char *path, const char *what) {
    return ML_FAIL(e, "database %s: %s: %s", path, what, sqlite3_errmsg(h));
}

/* prep: a statement on h, or an error naming path and the SQL. */
static int prep(sqlite3 *h, const char *path, const char *sql, sqlite3_stmt **st, ml_error *e) {
    *st = NULL;
    if (sqlite3_prepare_v2(h, sql, -1, st, NULL) != SQLITE_OK) return sql_fail(e, h, path, sql);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Pass 1: list the runs, decide.                                            */

/* The config without its labels, which config_hash leaves out too. */
#define SQL_NORMALISED "json_remove(config, '$.name', '$.description')"

/* collect: every run row of the file open on h (source src) into m->c. */
static int collect(merger *m, sqlite3 *h, int src) {
    const char *path = src_name(m, src);
    sqlite3_stmt *st = NULL;
    if (prep(h, path, "SELECT id, config_hash, status, " SQL_NORMALISED " FROM runs", &st,
             m->e))
        return -1;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *hash = (const char *)sqlite3_column_text(st, 1);
        const unsigned char *cfg = sqlite3_column_text(st, 3);
        int cfg_n = sqlite3_column_bytes(st, 3);
        long long id = sqlite3_column_int64(st, 0);
        if (!hash || !cfg || strlen(hash) > 64) {
            ML_FAIL(m->e, "database %s: run %lld has no config or a malformed config hash",
                    path, id);
            goto fail;
        }
        if (m->c.n == m->c.cap) {
            size_t cap = m->c.cap ? 2 * m->c.cap : 1024;
            cand *v = realloc(m->c.v, cap * sizeof *v);
            if (!v) {
                ML_FAIL(m->e, "out of memory listing the runs of %s", path);
                goto fail;
            }
            m->c.v = v;
            m->c.cap = cap;
        }
        cand *c = &m->c.v[m->c.n++];
        snprintf(c->hash, sizeof c->hash, "%s", hash);
        sha256_ctx sha;
        sha256_init(&sha);
        sha256_update(&sha, cfg, (size_t)cfg_n);
        sha256_final(&sha, c->digest);
        c->src = src;
        c->id = id;
        c->rank = rank_of((const char *)sqlite3_column_text(st, 2));
    }
    if (rc != SQLITE_DONE) {
        sql_fail(m->e, h, path, "reading runs");
        goto fail;
    }
    sqlite3_finalize(st);
    return 0;
fail:
    sqlite3_finalize(st);
    return -1;
}

/* cand_cmp: by hash, then file, then id. */
static int cand_cmp(const void *a, const void *b) {
    const cand *x = a, *y = b;
    int c = strcmp(x->hash, y->hash);
    if (c) return c;
    if (x->src != y->src) return x->src < y->src ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* pick_cmp: by file, then id (the order rows are copied in). */
static int pick_cmp(const void *a, const void *b) {
    const pick *x = a, *y = b;
    if (x->src != y->src) return x->src < y->src ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* fetch_config: the normalised config of run id of source src into
 * buf[cap] ("?" when it cannot be read: this serves an error message). */
static void fetch_config(merger *m, int src, long long id, char *buf, size_t cap) {
    snprintf(buf, cap, "?");
    ml_db *db = NULL;
    ml_error ignore;
    sqlite3 *h = m->h;
    if (src > 0) {
        if (db_open_readonly(&db, src_name(m, src), &ignore)) return;
        h = db_handle(db);
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(h, "SELECT " SQL_NORMALISED " FROM runs WHERE id = ?1", -1, &st,
                           NULL) == SQLITE_OK &&
        sqlite3_bind_int64(st, 1, id) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
        sqlite3_column_text(st, 0))
        snprintf(buf, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    db_close(db);
}

/* conflict: the error for rows a and b (same hash, different configs),
 * quoting both configs around their first difference. Returns -1. */
static int conflict(merger *m, const cand *a, const cand *b) {
    enum { CAP = 1 << 16 }; /* config_to_json's limit */
    char *ta = malloc(CAP), *tb = malloc(CAP);
    if (!ta || !tb) {
        free(ta);
        free(tb);
        return ML_FAIL(m->e, "cannot merge: run %lld of %s and run %lld of %s have the same "
                       "config hash %.12s but different configs", a->id, src_name(m, a->src),
                       b->id, src_name(m, b->src), a->hash);
    }
    fetch_config(m, a->src, a->id, ta, CAP);
    fetch_config(m, b->src, b->id, tb, CAP);
    size_t p = 0;
    while (ta[p] && ta[p] == tb[p]) p++;
    size_t from = p > 40 ? p - 40 : 0;
    ML_FAIL(m->e,
            "cannot merge: run %lld of %s and run %lld of %s have the same config hash %.12s "
            "but different configs (...%.80s... against ...%.80s...); they were written by "
            "incompatible versions of memlab, or a file is damaged",
            a->id, src_name(m, a->src), b->id, src_name(m, b->src), a->hash, ta + from,
            tb + from);
    free(ta);
    free(tb);
    return -1;
}

/* decide: per config hash, refuse conflicts and choose the row to copy. */
static int decide(merger *m) {
    cand *v = m->c.v;
    size_t n = m->c.n;
    if (n) qsort(v, n, sizeof *v, cand_cmp);
    m->picks = malloc((n ? n : 1) * sizeof *m->picks);
    m->unlink_hash = malloc((n ? n : 1) * sizeof *m->unlink_hash);
    if (!m->picks || !m->unlink_hash) return ML_FAIL(m->e, "out of memory");
    for (size_t g = 0, end; g < n; g = end) {
        int out_rank = RANK_NONE;
        const cand *best = NULL;
        for (end = g; end < n && !strcmp(v[end].hash, v[g].hash); end++) {
            const cand *c = &v[end];
            if (memcmp(c->digest, v[g].digest, sizeof c->digest)) return conflict(m, &v[g], c);
            if (c->src == 0) {
                if (c->rank > out_rank) out_rank = c->rank;
            } else if (!best || c->rank > best->rank ||
                       (c->rank == best->rank && c->src == best->src)) {
                /* Equal ranks: the first file given, and in it the newest row. */
                best = c;
            }
        }
        if (!best) continue;
        m->r->hashes++;
        if (best->rank <= out_rank) {
            m->r->runs_kept++;
            continue;
        }
        if (best->rank == RANK_FINISHED && out_rank == RANK_DIVERGED)
            memcpy(m->unlink_hash[m->n_unlink++], best->hash, sizeof best->hash);
        m->picks[m->n_picks++] = (pick){.src = best->src, .id = best->id};
        if (best->rank > RANK_NONE) m->r->added_status[RANK_FINISHED - best->rank]++;
    }
    if (m->n_picks) qsort(m->picks, m->n_picks, sizeof *m->picks, pick_cmp);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Pass 2: copy.                                                              */

/* A sweep id of an input and the same sweep's id in the output. */
typedef struct sweep_map {
    long long in, out;
} sweep_map;

/* copy_sweeps: the sweeps of input src (open on h) into the output, and the
 * translation of their ids into *map (n_map entries, malloc'd). */
static int copy_sweeps(merger *m, sqlite3 *h, int src, sweep_map **map, size_t *n_map) {
    const char *path = src_name(m, src);
    sqlite3_stmt *sel = NULL, *ins = NULL, *find = NULL;
    *map = NULL;
    *n_map = 0;
    size_t cap = 0;
    if (prep(h, path,
             "SELECT id, name, spec, resolved, resolved_hash, created FROM sweeps ORDER BY id",
             &sel, m->e) ||
        prep(m->h, m->out_path,
             "INSERT OR IGNORE INTO sweeps(name, spec, resolved, resolved_hash, created) "
             "VALUES (?1, ?2, ?3, ?4, ?5)",
             &ins, m->e) ||
        prep(m->h, m->out_path, "SELECT id FROM sweeps WHERE name = ?1 AND resolved_hash = ?2",
             &find, m->e))
        goto fail;
    int rc;
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        for (int k = 1; k <= 5; k++)
            if (sqlite3_bind_value(ins, k, sqlite3_column_value(sel, k)) != SQLITE_OK) {
                sql_fail(m->e, m->h, m->out_path, "bind INSERT INTO sweeps");
                goto fail;
            }
        if (sqlite3_step(ins) != SQLITE_DONE) {
            sql_fail(m->e, m->h, m->out_path, "INSERT INTO sweeps");
            goto fail;
        }
        m->r->sweeps_added += sqlite3_changes(m->h);
        sqlite3_reset(ins);
        if (sqlite3_bind_value(find, 1, sqlite3_column_value(sel, 1)) != SQLITE_OK ||
            sqlite3_bind_value(find, 2, sqlite3_column_value(sel, 4)) != SQLITE_OK) {
            sql_fail(m->e, m->h, m->out_path, "bind SELECT sweeps");
            goto fail;
        }
        int frc = sqlite3_step(find);
        if (frc != SQLITE_ROW) {
            /* INSERT OR IGNORE also ignores the CHECK on the resolved JSON. */
            if (frc == SQLITE_DONE)
                ML_FAIL(m->e, "database %s: sweep %lld has a resolved spec that is not JSON",
                        path, sqlite3_column_int64(sel, 0));
            else
                sql_fail(m->e, m->h, m->out_path, "SELECT sweeps");
            goto fail;
        }
        if (*n_map == cap) {
            cap = cap ? 2 * cap : 16;
            sweep_map *v = realloc(*map, cap * sizeof *v);
            if (!v) {
                ML_FAIL(m->e, "out of memory");
                goto fail;
            }
            *map = v;
        }
        (*map)[(*n_map)++] = (sweep_map){sqlite3_column_int64(sel, 0),
                                         sqlite3_column_int64(find, 0)};
        sqlite3_reset(find);
    }
    if (rc != SQLITE_DONE) {
        sql_fail(m->e, h, path, "reading sweeps");
        goto fail;
    }
    sqlite3_finalize(sel);
    sqlite3_finalize(ins);
    sqlite3_finalize(find);
    return 0;
fail:
    sqlite3_finalize(sel);
    sqlite3_finalize(ins);
    sqlite3_finalize(find);
    free(*map);
    *map = NULL;
    return -1;
}

/* Columns of a run row, in the order both statements below use. */
#define RUN_COLUMNS                                                                        \
    "config, config_hash, code_version, machine, started, ended, status, error, step, " \
    "sweep_id, owner, heartbeat"
#define RUN_SWEEP_COLUMN 9 /* 0-based, in RUN_COLUMNS */
#define RUN_N_COLUMNS 12

/* copy_runs: the picked rows of input src (open on h) with their metrics. */
static int copy_runs(merger *m, sqlite3 *h, int src, const pick *picks, size_t n,
                     const sweep_map *map, size_t n_map) {
    const char *path = src_name(m, src);
    sqlite3_stmt *sel = NULL, *ins = NULL, *msel = NULL, *mins = NULL;
    if (prep(h, path, "SELECT " RUN_COLUMNS " FROM runs WHERE id = ?1", &sel, m->e) ||
        prep(h, path,
             "SELECT step, split, name, value FROM metrics WHERE run_id = ?1 ORDER BY rowid",
             &msel, m->e) ||
        prep(m->h, m->out_path,
             "INSERT INTO runs(" RUN_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
             "?10, ?11, ?12)",
             &ins, m->e) ||
        prep(m->h, m->out_path,
             "INSERT INTO metrics(run_id, step, split, name, value) VALUES (?1, ?2, ?3, ?4, ?5)",
             &mins, m->e))
        goto fail;
    for (size_t k = 0; k < n; k++) {
        if (sqlite3_bind_int64(sel, 1, picks[k].id) != SQLITE_OK ||
            sqlite3_step(sel) != SQLITE_ROW) {
            sql_fail(m->e, h, path, "reading a run");
            goto fail;
        }
        int brc = SQLITE_OK;
        for (int c = 0; c < RUN_N_COLUMNS && brc == SQLITE_OK; c++) {
            if (c != RUN_SWEEP_COLUMN) {
                brc = sqlite3_bind_value(ins, c + 1, sqlite3_column_value(sel, c));
                continue;
            }
            /* The output's id of the same sweep; none (a dangling id) stores NULL. */
            long long in_id = sqlite3_column_int64(sel, c), out_id = 0;
            if (sqlite3_column_type(sel, c) != SQLITE_NULL)
                for (size_t s = 0; s < n_map; s++)
                    if (map[s].in == in_id) out_id = map[s].out;
            brc = out_id ? sqlite3_bind_int64(ins, c + 1, out_id) : sqlite3_bind_null(ins, c + 1);
        }
        if (brc != SQLITE_OK || sqlite3_step(ins) != SQLITE_DONE) {
            sql_fail(m->e, m->h, m->out_path, "INSERT INTO runs");
            goto fail;
        }
        long long new_id = sqlite3_last_insert_rowid(m->h);
        sqlite3_reset(ins);
        sqlite3_clear_bindings(ins);
        sqlite3_reset(sel);
        if (sqlite3_bind_int64(msel, 1, picks[k].id) != SQLITE_OK) {
            sql_fail(m->e, h, path, "bind SELECT metrics");
            goto fail;
        }
        int rc;
        while ((rc = sqlite3_step(msel)) == SQLITE_ROW) {
            brc = sqlite3_bind_int64(mins, 1, new_id);
            for (int c = 0; c < 4 && brc == SQLITE_OK; c++)
                brc = sqlite3_bind_value(mins, c + 2, sqlite3_column_value(msel, c));
            if (brc != SQLITE_OK || sqlite3_step(mins) != SQLITE_DONE) {
                sql_fail(m->e, m->h, m->out_path, "INSERT INTO metrics");
                goto fail;
            }
            sqlite3_reset(mins);
            m->r->metrics_added++;
        }
        if (rc != SQLITE_DONE) {
            sql_fail(m->e, h, path, "reading metrics");
            goto fail;
        }
        sqlite3_reset(msel);
        m->r->runs_added++;
    }
    sqlite3_finalize(sel);
    sqlite3_finalize(ins);
    sqlite3_finalize(msel);
    sqlite3_finalize(mins);
    return 0;
fail:
    sqlite3_finalize(sel);
    sqlite3_finalize(ins);
    sqlite3_finalize(msel);
    sqlite3_finalize(mins);
    return -1;
}

/* unlink_diverged: the output's diverged rows of the hashes about to get a
 * finished copy leave their sweep (see merge.h). */
static int unlink_diverged(merger *m) {
    if (!m->n_unlink) return 0;
    sqlite3_stmt *st = NULL;
    if (prep(m->h, m->out_path,
             "UPDATE runs SET sweep_id = NULL WHERE config_hash = ?1 AND status = 'diverged' "
             "AND sweep_id IS NOT NULL",
             &st, m->e))
        return -1;
    for (size_t k = 0; k < m->n_unlink; k++) {
        if (sqlite3_bind_text(st, 1, m->unlink_hash[k], -1, SQLITE_TRANSIENT) != SQLITE_OK ||
            sqlite3_step(st) != SQLITE_DONE) {
            sql_fail(m->e, m->h, m->out_path, "UPDATE runs (unlink)");
            sqlite3_finalize(st);
            return -1;
        }
        m->r->unlinked += sqlite3_changes(m->h);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return 0;
}

/* copy_input: pass 2 for input src. */
static int copy_input(merger *m, int src) {
    size_t first = 0;
    while (first < m->n_picks && m->picks[first].src < src) first++;
    size_t last = first;
    while (last < m->n_picks && m->picks[last].src == src) last++;
    ml_db *db = NULL;
    if (db_open_readonly(&db, src_name(m, src), m->e)) return -1;
    sqlite3 *h = db_handle(db);
    sweep_map *map = NULL;
    size_t n_map = 0;
    int rc = copy_sweeps(m, h, src, &map, &n_map) ||
             copy_runs(m, h, src, m->picks + first, last - first, map, n_map);
    free(map);
    db_close(db);
    return rc ? -1 : 0;
}

/* ------------------------------------------------------------------------ */

/* check_paths: every input exists and none is the output. */
static int check_paths(const char *out_path, const char *const *in, int n_in, ml_error *e) {
    struct stat so, si;
    int have_out = stat(out_path, &so) == 0;
    for (int k = 0; k < n_in; k++) {
        if (stat(in[k], &si) != 0)
            return ML_FAIL(e, "database %s: %s", in[k], strerror(errno));
        if (have_out && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
            return ML_FAIL(e, "%s is the output file itself; merge other files into it",
                           in[k]);
    }
    return 0;
}

/* remove_db: a database file and its WAL companions. */
static void remove_db(const char *path) {
    char side[1100];
    unlink(path);
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
}

/* Contract in merge.h. */
int merge_files(const char *out_path, const char *const *in_paths, int n_in, merge_result *r,
                ml_error *e) {
    memset(r, 0, sizeof *r);
    if (n_in < 1) return ML_FAIL(e, "nothing to merge: no input database given");
    if (check_paths(out_path, in_paths, n_in, e)) return -1;
    r->created = access(out_path, F_OK) != 0;
    merger m = {.out_path = out_path, .in = in_paths, .n_in = n_in, .r = r, .e = e};
    ml_db *out = NULL;
    int rc = -1;
    if (db_open(&out, out_path, e)) goto done;
    m.h = db_handle(out);
    if (sqlite3_exec(m.h, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        sql_fail(e, m.h, out_path, "BEGIN IMMEDIATE (merge)");
        goto done;
    }
    if (collect(&m, m.h, 0)) goto done;
    for (int k = 1; k <= n_in; k++) {
        ml_db *in = NULL;
        if (db_open_readonly(&in, in_paths[k - 1], e)) goto done;
        int crc = collect(&m, db_handle(in), k);
        db_close(in);
        if (crc) goto done;
    }
    if (decide(&m) || unlink_diverged(&m)) goto done;
    for (int k = 1; k <= n_in; k++)
        if (copy_input(&m, k)) goto done;
    if (sqlite3_exec(m.h, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        sql_fail(e, m.h, out_path, "COMMIT (merge)");
        goto done;
    }
    rc = 0;
done:
    if (rc && m.h && !sqlite3_get_autocommit(m.h))
        (void)sqlite3_exec(m.h, "ROLLBACK", NULL, NULL, NULL);
    db_close(out);
    if (rc && r->created) remove_db(out_path);
    if (rc) {
        int created = r->created;
        memset(r, 0, sizeof *r);
        r->created = created;
    }
    free(m.c.v);
    free(m.picks);
    free(m.unlink_hash);
    return rc;
}
