# aggregate.awk: a `memlab export` CSV -> one data file per (panel, series),
# what the figure scripts plot.
#
#   awk -F, -f plots/aggregate.awk -v x=model.d_model -v y=test/accuracy \
#       -v series=model.mixer -v panel=task.seq_len,task.num_kv_pairs \
#       -v best=train.lr -v out=DIR export.csv
#
# Variables: x, y (column names; y may be "1/NAME" for its reciprocal; an
# empty x puts every row at x = 0, for a baseline drawn as a level); xdiv
# (a column x is divided by, e.g. task.d for N/d; empty for none); series and
# panel (comma-separated column names, either may be empty); fixed_series (a
# label for every row instead of the series columns); best (a
# column the result is optimised over, e.g. train.lr: the paper's "max over
# learning rates"; empty, or a column the export lacks because it was not
# swept, for none); minimize=1 picks the smallest mean instead
# of the largest (for a loss); out (a directory that exists).
#
# Rows whose status is not "finished", or whose x or y field is empty, are
# left out. Per (panel, series, x, best value) the rows left (the seeds) are
# averaged; per (panel, series, x) the best value's mean is kept with the
# sample standard deviation, min and max over its seeds, their number and
# the best value. Fields are split on commas: the export quotes a field only
# when it holds a comma or a quote, which swept names and numbers do not.
#
# Writes out/panels.txt and out/series.txt (one label per line, in order of
# first appearance), out/p<i>_s<j>.dat for every panel i and series j (columns
# x mean sd min max n best, sorted by x; empty when that combination has no
# rows), and out/all.tsv (panel, series, then the same columns). Exits 1 when
# a column is missing or no row is usable.

function label_of(cols, n, row,    i, s, k, short) {
    s = ""
    for (i = 1; i <= n; i++) {
        k = cols[i]
        short = k
        sub(/^.*\./, "", short)
        if (short in display) short = display[short]
        if (k == "model.mixer" || k == "task.memory") s = s (i > 1 ? " " : "") row[col[k]]
        else s = s (i > 1 ? " " : "") short "=" row[col[k]]
    }
    return s == "" ? "all" : s
}

BEGIN {
    FS = ","
    display["seq_len"] = "L"; display["num_kv_pairs"] = "N"; display["d_model"] = "d"
    display["memories"] = "E"; display["topk"] = "K"; display["slots"] = "k"
    display["n_pairs"] = "N"; display["steps"] = "steps"; display["lr"] = "lr"
    ns = split(series, scols, ",")
    np = split(panel, pcols, ",")
    recip = 0
    yname = y
    if (substr(y, 1, 2) == "1/") { recip = 1; yname = substr(y, 3) }
    n_panels = 0; n_series = 0; used = 0
}

NR == 1 {
    for (i = 1; i <= NF; i++) col[$i] = i
    if (best != "" && !(best in col)) best = ""
    need = yname SUBSEP "status"
    if (x != "") need = need SUBSEP x
    if (xdiv != "") need = need SUBSEP xdiv
    for (i = 1; i <= ns; i++) need = need SUBSEP scols[i]
    for (i = 1; i <= np; i++) need = need SUBSEP pcols[i]
    if (best != "") need = need SUBSEP best
    nn = split(need, names, SUBSEP)
    for (i = 1; i <= nn; i++)
        if (!(names[i] in col)) {
            printf "aggregate.awk: no column %s in the export\n", names[i] > "/dev/stderr"
            bad = 1
            exit 1
        }
    next
}

{
    if ($(col["status"]) != "finished") next
    xv = x == "" ? 0 : $(col[x]); yv = $(col[yname])
    if (xv == "" || yv == "") next
    if (recip) { if (yv + 0 == 0) next; yv = 1 / yv }
    if (xdiv != "") { if ($(col[xdiv]) + 0 == 0) next; xv = xv / $(col[xdiv]) }
    for (i = 1; i <= NF; i++) row[i] = $i
    p = label_of(pcols, np, row)
    s = fixed_series != "" ? fixed_series : label_of(scols, ns, row)
    if (!(p in pidx)) { pidx[p] = ++n_panels; plabel[n_panels] = p }
    if (!(s in sidx)) { sidx[s] = ++n_series; slabel[n_series] = s }
    b = best == "" ? "-" : $(col[best])
    k = pidx[p] SUBSEP sidx[s] SUBSEP xv
    if (!(k in seen_x)) { seen_x[k] = 1; xs[pidx[p], sidx[s], ++nx[pidx[p], sidx[s]]] = xv }
    kb = k SUBSEP b
    if (!(kb in cnt)) { bests[k, ++nb[k]] = b }
    cnt[kb]++; sum[kb] += yv; sum2[kb] += yv * yv
    vals[kb, cnt[kb]] = yv
    used++
}

END {
    if (bad) exit 1
    if (used == 0) {
        printf "aggregate.awk: no finished row with %s and %s\n", x, y > "/dev/stderr"
        exit 1
    }
    for (i = 1; i <= n_panels; i++) print plabel[i] > (out "/panels.txt")
    for (j = 1; j <= n_series; j++) print slabel[j] > (out "/series.txt")
    for (i = 1; i <= n_panels; i++) {
        for (j = 1; j <= n_series; j++) {
            f = out "/p" i "_s" j ".dat"
            printf "" > f
            m = nx[i, j]
            # insertion sort of the x values, numerically
            for (a = 1; a <= m; a++) ord[a] = xs[i, j, a]
            for (a = 2; a <= m; a++) {
                v = ord[a]
                for (c = a - 1; c >= 1 && ord[c] + 0 > v + 0; c--) ord[c + 1] = ord[c]
                ord[c + 1] = v
            }
            for (a = 1; a <= m; a++) {
                k = i SUBSEP j SUBSEP ord[a]
                pick = ""
                for (c = 1; c <= nb[k]; c++) {
                    kb = k SUBSEP bests[k, c]
                    mean = sum[kb] / cnt[kb]
                    if (pick == "" || (minimize ? mean < pmean : mean > pmean)) {
                        pick = kb; pmean = mean; pbest = bests[k, c]
                    }
                }
                n = cnt[pick]
                var = n > 1 ? (sum2[pick] - n * pmean * pmean) / (n - 1) : 0
                if (var < 0) var = 0
                lo = vals[pick, 1]; hi = lo
                for (c = 2; c <= n; c++) {
                    if (vals[pick, c] < lo) lo = vals[pick, c]
                    if (vals[pick, c] > hi) hi = vals[pick, c]
                }
                line = sprintf("%s %.8g %.8g %.8g %.8g %d %s", ord[a], pmean, sqrt(var), lo, hi, n, pbest)
                print line > f
                print plabel[i] "\t" slabel[j] "\t" line > (out "/all.tsv")
            }
            close(f)
        }
    }
}
