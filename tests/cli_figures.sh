#!/usr/bin/env bash
# tests/cli_figures.sh MEMLAB: the figure suite end to end. plots/figures.sh
# runs every figure's sweep at the specs' `test` preset (tiny models, a few
# steps: seconds) into a fresh database, exports, aggregates, fits and draws;
# then: every series of every panel has rows, gnuplot wrote non-empty PNG, SVG
# and PDF files whose caption names the sweep, preset and code version, the
# fits table holds the fitted exponents (memlab fit agrees with a least-squares
# slope computed here by awk on known data), a rerun trains nothing new, and a
# figure without data fails instead of drawing an empty plot.
# Each check prints "ok"/"FAIL"; closing line "N passed, N failed".
set -u
memlab=$(realpath "${1:-./memlab}")
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$root"
passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; [[ -n "${2:-}" ]] && echo "    $2"; failed=$((failed + 1)); }
check() { # check NAME CONDITION-COMMAND...
    local name=$1
    shift
    if "$@"; then ok "$name"; else fail "$name"; fi
}
q() { sqlite3 "$db" "$1"; }

if ! command -v gnuplot >/dev/null || ! command -v sqlite3 >/dev/null; then
    fail "gnuplot and sqlite3 are installed (make deps)"
    echo "$passed passed, $failed failed"
    exit 1
fi

# Figures 2, 5, 6 and 8 include the memory-caching mixer: skipped (and said
# so) by a memlab that does not list it.
figs=(1 2 3 4 5 6 7 8)
if ! "$memlab" mixers | grep -q '^  memcache:'; then
    echo "SKIP figures 2, 5, 6 and 8: memlab mixers does not list memcache"
    figs=(1 3 4 7)
fi
has() { [[ " ${figs[*]} " == *" $1 "* ]]; }

db=$tmp/f.db
out=$tmp/out
t0=$(date +%s)
bash plots/figures.sh --preset test --db "$db" --out "$out" --memlab "$memlab" "${figs[@]}" \
    >"$tmp/log" 2>&1
rc=$?
check "figures.sh --preset test exits 0 ($(($(date +%s) - t0)) s)" test $rc -eq 0
[[ $rc -eq 0 ]] || sed 's/^/    /' "$tmp/log" | tail -n 30

# --- every output file, non-empty and of its format --------------------------
version=$("$memlab" version | awk '{print $2}')
names=([1]=fig1_mqar [2]=fig2_state [3]=fig3_slots [4]=fig4_probe [5]=fig5_cost
    [6]=fig6_memcache [7]=fig7_mom [8]=fig8_lm)
sweeps=([1]=fig1-mqar [2]=fig2-state [3]=fig3-slots [4]=fig4-probe [5]=fig5-cost
    [6]=fig6-memcache [7]=fig7-mom [8]=fig8-lm)
for f in "${figs[@]}"; do
    n=${names[$f]}
    check "figure $f: PNG, SVG and PDF written" \
        bash -c "[[ \$(head -c 8 '$out/$n.png' | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] &&
                 grep -q '<svg' '$out/$n.svg' && [[ \$(head -c 4 '$out/$n.pdf') == %PDF ]] &&
                 [[ \$(stat -c %s '$out/$n.png') -gt 5000 ]]"
    check "figure $f: caption with sweep, preset, runs and code version" \
        bash -c "grep -q '${sweeps[$f]}-test' '$out/$n.svg' && grep -q 'preset test' '$out/$n.svg' &&
                 grep -q '$version' '$out/$n.svg' && grep -Eq '[0-9]+ runs' '$out/$n.svg'"
done

# --- rows for every series of every panel -------------------------------------
# series DIR: the series labels, one line each; rows DIR I J: data rows of
# panel I, series J
series() { tr '\n' '|' <"$1/series.txt"; }
rows() { grep -c . "$1/p$2_s$3.dat" 2>/dev/null || echo 0; }
# every_cell DIR ROWS: each panel x series file has ROWS rows
every_cell() {
    local np ns i j
    np=$(grep -c . "$1/panels.txt")
    ns=$(grep -c . "$1/series.txt")
    for ((i = 1; i <= np; i++)); do
        for ((j = 1; j <= ns; j++)); do
            [[ $(rows "$1" $i $j) -eq $2 ]] || { echo "    $1/p${i}_s$j.dat: $(rows "$1" $i $j) rows, want $2"; return 1; }
        done
    done
}
d=$out/data
if has 1; then
    check "figure 1: export has the 24 runs" test "$(($(wc -l <"$d/fig1/export.csv") - 1))" -eq 24
    check "figure 1: series softmax, linear, based; panels (64, 4) and (128, 8)" \
        test "$(series "$d/fig1/acc")/$(tr '\n' '|' <"$d/fig1/acc/panels.txt")" = "softmax|linear|based|/L=64 N=4|L=128 N=8|"
    check "figure 1: 2 widths in every panel and series (best of 2 learning rates)" every_cell "$d/fig1/acc" 2
    check "figure 1: the best learning rate is one of the two swept" \
        bash -c "awk '\$7 != 0.003 && \$7 != 0.01 { bad = 1 } END { exit bad }' '$d'/fig1/acc/p*_s*.dat"
fi
if has 2; then
    check "figure 2: the 8 mixers of the grid, 2 state sizes each" \
        bash -c "test '$(series "$d/fig2/acc")' = 'softmax|linear|deltanet|gated_deltanet|mamba2|based|mom|memcache|' && true"
    every_cell "$d/fig2/acc" 2 >/dev/null && ok "figure 2: every mixer has its 2 points" || fail "figure 2: every mixer has its 2 points"
    check "figure 2: slots from figure 3's sweep, 3 slot counts" \
        test "$(series "$d/fig2/slots")/$(rows "$d/fig2/slots" 1 1)" = "slots|/3"
fi
if has 3; then
    check "figure 3: loss and accuracy at k = 1, 2, 4" \
        bash -c "test \"\$(cut -d' ' -f1 '$d/fig3/loss/p1_s1.dat' | tr '\n' ' ')\" = '1 2 4 ' &&
                 test \$(grep -c . '$d/fig3/accuracy/p1_s1.dat') -eq 3"
    check "figure 3: the loss fit stored (3 runs, finite exponent and error)" \
        test "$(q "select n, b = b, b_err > 0 from fits where sweep = 'fig3-slots-test' and y = 'test/loss' and grp = ''")" = "3|1|1"
fi
if has 4; then
    check "figure 4: 5 memories x 3 values of N/d, error and top-1" \
        bash -c "test '$(series "$d/fig4/err")' = 'sum|delta|mom|caching|slots|' && true"
    every_cell "$d/fig4/err" 3 >/dev/null && every_cell "$d/fig4/top1" 3 >/dev/null &&
        ok "figure 4: every memory has its 3 points" || fail "figure 4: every memory has its 3 points"
    check "figure 4: x is N/d (d 16: 0.25, 1, 4)" \
        test "$(cut -d' ' -f1 "$d/fig4/err/p1_s1.dat" | tr '\n' ' ')" = "0.25 1 4 "
    check "figure 4: 2 seeds per point" bash -c "awk '\$6 != 2 { bad = 1 } END { exit bad }' '$d'/fig4/err/p*.dat"
fi
if has 5; then
    check "figure 5: 5 mixers x 3 lengths, time and FLOPs" \
        bash -c "test '$(series "$d/fig5/time")' = 'softmax|linear|deltanet|slots|memcache|' && true"
    every_cell "$d/fig5/time" 3 >/dev/null && every_cell "$d/fig5/flops" 3 >/dev/null &&
        ok "figure 5: every mixer has its 3 lengths" || fail "figure 5: every mixer has its 3 lengths"
    check "figure 5: 10 fits stored (time and FLOPs per mixer)" \
        test "$(q "select count(*) from fits where sweep = 'fig5-cost-test'")" = 10
    # FLOPs per token of fixed-state mixers do not grow with L; softmax's do
    check "figure 5: FLOPs exponent 0 for linear, > 0.05 for softmax" \
        test "$(q "select sum(grp = 'model.mixer=linear' and abs(b) < 1e-9) + sum(grp = 'model.mixer=softmax' and b > 0.05) from fits where sweep = 'fig5-cost-test' and y = 'train/flops_per_token'")" = 2
    check "figure 5: the exponents are printed in the legend" \
        bash -c "grep -c 'b = ' '$out/fig5_cost.svg' | awk '{ exit !(\$1 >= 10) }'"
fi
if has 6; then
    check "figure 6: memcache at 2 segments, baselines softmax and linear" \
        test "$(rows "$d/fig6/acc" 1 1)/$(series "$d/fig6/base")" = "2/softmax|linear|"
fi
if has 7; then
    check "figure 7: top-1 at E 1, 2 and top-2 at E 2" \
        test "$(series "$d/fig7/acc")/$(rows "$d/fig7/acc" 1 1)/$(rows "$d/fig7/acc" 1 2)" = "K=1|K=2|/2/1"
fi
if has 8; then
    check "figure 8: 9 mixers x 2 budgets, x = training FLOPs growing with steps" \
        bash -c "test \$(grep -c . '$d/fig8/bpb/series.txt') -eq 9 &&
                 awk 'FNR == 1 { x = \$1 } FNR == 2 && !(\$1 > 1.9 * x && \$1 < 2.1 * x) { bad = 1 } END { exit bad }' '$d'/fig8/bpb/p1_s*.dat"
    every_cell "$d/fig8/bpb" 2 >/dev/null && ok "figure 8: every mixer has its 2 budgets" || fail "figure 8: every mixer has its 2 budgets"
fi

# --- resuming: a second pass trains nothing --------------------------------------
# (the figures with fits and the largest sweep; the others work the same way)
again=()
for f in 1 3 5; do has $f && again+=($f); done
before=$(q "select count(*) from runs")
bash plots/figures.sh --preset test --db "$db" --out "$out" --memlab "$memlab" "${again[@]}" >"$tmp/log2" 2>&1
check "a second pass exits 0 and adds no run" test "$?/$(q "select count(*) from runs")" = "0/$before"
check "refitting replaces the stored fits instead of adding rows" \
    test "$(q "select count(*) from fits")" = "$(q "select count(distinct sweep_id || x || y || grp || model) from fits")"

# --- no data, no figure -----------------------------------------------------------
bash plots/figures.sh --preset test --db "$tmp/empty.db" --out "$tmp/empty" --memlab "$memlab" --no-run 7 \
    >"$tmp/log3" 2>&1
check "a figure without data fails and writes no file" \
    bash -c "test $? -ne 0 && test ! -e '$tmp/empty/fig7_mom.png' && grep -q 'figure 7: FAILED' '$tmp/log3'"

# --- train/flops against the formula, worked out here ------------------------------
# 6 per non-embedding parameter and token, the head at the N supervised rows of
# each sequence (6 S C V), softmax's 12 C per visible pair and layer
cat >"$tmp/flops.yaml" <<'YAML'
name: flops
task: {name: mqar, vocab_size: 64, seq_len: 16, num_kv_pairs: 2}
model: {mixer: softmax, d_model: 8, n_layers: 2, conv: 2, mlp: true, mlp_ratio: 2}
train: {steps: 3, batch_size: 4, warmup: 1}
eval: {every: 2, examples: 8}
YAML
"$memlab" train "$tmp/flops.yaml" --db "$tmp/flops.db" --quiet
fl() { sqlite3 "$tmp/flops.db" "select value from metrics where name = '$1' order by step desc limit 1"; }
want=$(awk -v P="$(fl params)" 'BEGIN { V = 64; C = 8; B = 4; T = 16; S = 2 * B; L = 2
    per_step = 6 * (P - V * C) * B * T + 6 * S * C * V + 12 * C * (T * (T + 1) / 2) * B * L
    printf "%.6f %.6f %.6f", 2 * per_step, 3 * per_step, per_step / (B * T) }')
got="$(sqlite3 "$tmp/flops.db" "select value from metrics where name = 'flops' and step = 2") $(fl flops) $(fl flops_per_token)"
check "train/flops at steps 2 and 3 and flops_per_token = the formula ($want)" \
    awk -v w="$want" -v g="$got" 'BEGIN { n = split(w, a, " "); split(g, b, " ");
        for (i = 1; i <= n; i++) if (b[i] == "" || (b[i] - a[i]) / a[i] > 1e-9 || (a[i] - b[i]) / a[i] > 1e-9) exit 1 }'

# --- memlab fit on known data -------------------------------------------------------
# test/theory_rel_error of the probe is exactly (N - 1)/d: the least-squares
# slope of its logarithm against log N, computed here independently
if has 4; then
    "$memlab" fit --sweep fig4-probe-test --db "$db" --x task.n_pairs --y test/theory_rel_error \
        --group task.memory --csv >"$tmp/fit.csv" 2>&1
    want=$(awk 'BEGIN { d = 16; n = split("4 16 64", N, " ");
        for (i = 1; i <= n; i++) { u = log(N[i]); v = log((N[i] - 1) / d); su += u; sv += v; suu += u * u; suv += u * v }
        printf "%.9f", (n * suv - su * sv) / (n * suu - su * su) }')
    check "memlab fit: exponent of (N - 1)/d against N = awk's least squares ($want)" \
        awk -F, -v want="$want" 'NR > 1 && $5 == "task.memory=sum" { found = 1; if ($9 - want > 1e-7 || want - $9 > 1e-7) bad = 1 } END { exit !found || bad }' "$tmp/fit.csv"
    check "memlab fit --csv: one row per memory; only sum has the theory line (6 runs)" \
        test "$(awk -F, 'NR > 1 { printf "%s:%s ", $5, $6 }' "$tmp/fit.csv")" = \
        "task.memory=sum:6 task.memory=delta:0 task.memory=mom:0 task.memory=caching:0 task.memory=slots:0 "
fi
if has 5; then
    # keys zipped with x (num_kv_pairs, batch_size with seq_len) do not split groups
    "$memlab" fit --sweep fig5-cost-test --db "$db" --x task.seq_len --y train/flops_per_token \
        --no-store --csv >"$tmp/fit5.csv" 2>&1
    check "memlab fit: default groups leave out the keys zipped with x (5 mixers, 3 points each)" \
        test "$(awk -F, 'NR > 1 { printf "%s:%s ", $5, $6 }' "$tmp/fit5.csv")" = \
        "model.mixer=softmax:3 model.mixer=linear:3 model.mixer=deltanet:3 model.mixer=slots:3 model.mixer=memcache:3 "
fi
"$memlab" fit --sweep fig4-probe-test --db "$db" --x task.n_pairs >/dev/null 2>&1
check "memlab fit without --y exits 2" test $? -eq 2
"$memlab" fit --sweep no-such-sweep --db "$db" --x a.b --y test/loss 2>"$tmp/err" >/dev/null
check "memlab fit on an unknown sweep exits 1 naming it" \
    bash -c "test $? -eq 1 && grep -q 'no-such-sweep' '$tmp/err'"
if has 3; then
    "$memlab" fit --sweep fig3-slots-test --db "$db" --x model.nothing --y test/loss 2>"$tmp/err" >/dev/null
    check "memlab fit: an --x that is not a column is named" \
        bash -c "test $? -eq 1 && grep -q 'model.nothing' '$tmp/err'"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
