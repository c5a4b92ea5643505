#!/usr/bin/env bash
# plots/figures.sh: the paper's figures, from the results database.
#
#   plots/figures.sh [--preset quick|full|test] [--db FILE] [--out DIR]
#                    [--memlab BIN] [--jobs N] [--no-run] [--formats LIST] [FIG...]
#
# For each figure FIG (1 to 8; default all, in that order):
#   1. runs what is missing of its sweep(s): memlab run sweeps/figN_*.yaml
#      --preset P (resumable: done runs are skipped; figure 5 times its runs
#      and always uses --jobs 1);
#   2. exports the rows (memlab export, CSV) into OUT/data/figN/;
#   3. aggregates them (plots/aggregate.awk): per point the mean over seeds,
#      their spread, and for figures 1 and 2 the best learning rate;
#   4. fits the scaling laws of figures 3 and 5 with memlab fit (stored in
#      the fits table of the database; the figure prints the stored exponent);
#   5. draws plots/figN_*.gp into OUT/figN_*.{png,svg,pdf}, captioned with its
#      provenance: sweep, preset, runs, seeds, code version.
# The sweeps' names carry the preset (fig1-mqar-quick, fig1-mqar-full), so
# the presets live side by side in one database.
#
#   --preset P     quick (default: minutes on 2 cores), full (the published
#                  sizes), test (seconds; tests/cli_figures.sh)
#   --db FILE      results database (default results/memlab.db)
#   --out DIR      where the figures go (default plots/out, git-ignored)
#   --memlab BIN   the memlab binary (default ./memlab)
#   --jobs N       worker processes for the training sweeps (default 2)
#   --no-run       draw from what the database holds; run nothing
#   --formats L    space-separated, of png svg pdf (default all three)
#
# Prints one line per figure with its wall time; exits 1 if a figure could not
# be drawn (its sweep failed, no rows, gnuplot failed), 2 on a usage error.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
preset=quick
db=results/memlab.db
out=plots/out
memlab=./memlab
jobs=2
run=1
formats="png svg pdf"
figs=()
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case $1 in
    --preset) preset=$2; shift 2 ;;
    --db) db=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --memlab) memlab=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --no-run) run=0; shift ;;
    --formats) formats=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    [1-8]) figs+=("$1"); shift ;;
    *) echo "figures.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
[[ ${#figs[@]} -eq 0 ]] && figs=(1 2 3 4 5 6 7 8)
case $preset in quick | full | test) ;; *) echo "figures.sh: --preset quick, full or test" >&2; exit 2 ;; esac
for t in gnuplot sqlite3 awk; do
    command -v "$t" >/dev/null || { echo "figures.sh: $t is not installed (make deps)" >&2; exit 1; }
done
memlab=$(realpath "$memlab")
cd "$root"
mkdir -p "$out/data"

# run_sweep SPEC [JOBS]: run what is missing of a sweep at the preset.
run_sweep() {
    [[ $run -eq 1 ]] || return 0
    "$memlab" run "$1" --preset "$preset" --db "$db" --jobs "${2:-$jobs}" --quiet
}

# export SWEEP CSV [METRICS]: the done runs of a sweep (name without preset).
export_csv() {
    local m=${3:-test/accuracy,test/loss,model/state_size}
    "$memlab" export --sweep "$1-$preset" --db "$db" --metric "$m" --output "$2"
}

# aggregate DIR CSV awk-assignments...: plots/aggregate.awk into a fresh DIR.
aggregate() {
    local dir=$1 csv=$2
    shift 2
    rm -rf "$dir"
    mkdir -p "$dir"
    local args=()
    for a in "$@"; do args+=(-v "$a"); done
    awk -f plots/aggregate.awk -v out="$dir" "${args[@]}" "$csv"
}

# provenance SPEC:SWEEP:CSV...: the caption: sweeps, preset, runs, seeds and
# the code versions that produced them (from the runs table); '|' breaks the
# line.
provenance() {
    local parts=() ids="" total=0
    for item in "$@"; do
        IFS=: read -r spec sweep csv <<<"$item"
        local n
        n=$(awk -F, 'NR > 1 && $3 == "finished"' "$csv" | wc -l)
        total=$((total + n))
        parts+=("$sweep-$preset ($spec, $n runs)")
        ids+=$(awk -F, 'NR > 1 && $3 == "finished" { printf ",%s", $1 }' "$csv")
    done
    ids=${ids#,}
    local seeds code
    seeds=$(sqlite3 "$db" "select count(distinct json_extract(config, '\$.train.seed')) from runs where id in (${ids:-0})")
    code=$(sqlite3 "$db" "select group_concat(v, ', ') from (select distinct code_version v from runs where id in (${ids:-0}) order by 1)")
    local IFS=';'
    local joined="${parts[*]}"
    echo "${joined//;/; } | preset $preset, $total runs, $seeds seed$([[ $seeds == 1 ]] || echo s), code ${code:-unknown}, drawn by plots/figures.sh"
}

# draw SCRIPT NAME DIR CAPTION [gnuplot assignments...]: the figure in every
# format; fails unless each file is written and non-empty.
draw() {
    local script=$1 name=$2 dir=$3 caption=${4//\'/}
    shift 4
    local extra=""
    for a in "$@"; do extra+="; $a"; done
    gnuplot -e "set loadpath 'plots'; dir='$dir'; out='$out/$name'; caption='$caption'; formats='$formats'$extra" \
        "plots/$script"
    for f in $formats; do
        [[ -s "$out/$name.$f" ]] || { echo "figures.sh: $out/$name.$f was not written" >&2; return 1; }
    done
}

# stored_fits SWEEP X Y FILE: the stored fits of a sweep as "group b b_err a n"
# lines (group: the mixer name, "all" for one fit over every row), for the
# figure to print.
stored_fits() {
    sqlite3 -separator ' ' "$db" "select ifnull(nullif(replace(replace(grp, ' ', '_'), \
        'model.mixer=', ''), ''), 'all'), b, ifnull(b_err, 'nan'), a, n from fits where sweep = '$1-$preset' and x = '$2' and y = '$3' \
        and model = 'power' and sweep_id = (select max(id) from sweeps where name = '$1-$preset') \
        order by id" >"$4"
}

fig1() {
    local d=$out/data/fig1
    mkdir -p "$d"
    run_sweep sweeps/fig1_mqar.yaml
    export_csv fig1-mqar "$d/export.csv"
    aggregate "$d/acc" "$d/export.csv" x=model.d_model y=test/accuracy series=model.mixer \
        panel=task.seq_len,task.num_kv_pairs best=train.lr
    draw fig1_mqar.gp fig1_mqar "$d/acc" \
        "$(provenance sweeps/fig1_mqar.yaml:fig1-mqar:"$d/export.csv")"
}

fig2() {
    local d=$out/data/fig2
    mkdir -p "$d"
    run_sweep sweeps/fig2_state.yaml
    run_sweep sweeps/fig3_slots.yaml
    export_csv fig2-state "$d/export.csv"
    export_csv fig3-slots "$d/slots.csv"
    aggregate "$d/acc" "$d/export.csv" x=model/state_size y=test/accuracy series=model.mixer \
        best=train.lr
    aggregate "$d/slots" "$d/slots.csv" x=model/state_size y=test/accuracy series= \
        fixed_series=slots
    draw fig2_state.gp fig2_state "$d/acc" \
        "$(provenance sweeps/fig2_state.yaml:fig2-state:"$d/export.csv" \
            sweeps/fig3_slots.yaml:fig3-slots:"$d/slots.csv")" "dir_extra='$d/slots'"
}

fig3() {
    local d=$out/data/fig3
    mkdir -p "$d"
    run_sweep sweeps/fig3_slots.yaml
    export_csv fig3-slots "$d/export.csv"
    aggregate "$d/loss" "$d/export.csv" x=model.slots y=test/loss series=
    aggregate "$d/accuracy" "$d/export.csv" x=model.slots y=test/accuracy series=
    local y
    for y in test/loss test/accuracy; do
        # a fit that cannot be made (e.g. every accuracy 0) leaves no line
        "$memlab" fit --sweep "fig3-slots-$preset" --db "$db" --x model.slots --y "$y" \
            --all >"$d/fit_${y#test/}.txt" 2>&1 || cat "$d/fit_${y#test/}.txt" >&2
        stored_fits fig3-slots model.slots "$y" "$d/fit_${y#test/}.dat"
    done
    draw fig3_slots.gp fig3_slots "$d" \
        "$(provenance sweeps/fig3_slots.yaml:fig3-slots:"$d/export.csv")"
}

fig4() {
    local d=$out/data/fig4
    mkdir -p "$d"
    run_sweep sweeps/fig4_probe.yaml
    export_csv fig4-probe "$d/export.csv" test/rel_error,test/top1_accuracy,test/theory_rel_error
    aggregate "$d/err" "$d/export.csv" x=task.n_pairs xdiv=task.d y=test/rel_error \
        series=task.memory
    aggregate "$d/top1" "$d/export.csv" x=task.n_pairs xdiv=task.d y=test/top1_accuracy \
        series=task.memory
    local dim
    dim=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "task.d") c = i } NR == 2 { print $c }' \
        "$d/export.csv")
    draw fig4_probe.gp fig4_probe "$d" \
        "$(provenance sweeps/fig4_probe.yaml:fig4-probe:"$d/export.csv")" "dim=$dim"
}

fig5() {
    local d=$out/data/fig5
    mkdir -p "$d"
    run_sweep sweeps/fig5_cost.yaml 1
    export_csv fig5-cost "$d/export.csv" train/tokens_per_s,train/flops_per_token
    aggregate "$d/time" "$d/export.csv" x=task.seq_len y=1/train/tokens_per_s series=model.mixer
    aggregate "$d/flops" "$d/export.csv" x=task.seq_len y=train/flops_per_token series=model.mixer
    "$memlab" fit --sweep "fig5-cost-$preset" --db "$db" --x task.seq_len \
        --y 1/train/tokens_per_s --group model.mixer >"$d/fit_time.txt"
    "$memlab" fit --sweep "fig5-cost-$preset" --db "$db" --x task.seq_len \
        --y train/flops_per_token --group model.mixer >"$d/fit_flops.txt"
    stored_fits fig5-cost task.seq_len 1/train/tokens_per_s "$d/fit_time.dat"
    stored_fits fig5-cost task.seq_len train/flops_per_token "$d/fit_flops.dat"
    draw fig5_cost.gp fig5_cost "$d" \
        "$(provenance sweeps/fig5_cost.yaml:fig5-cost:"$d/export.csv"), load $(cut -d' ' -f1-3 /proc/loadavg)"
}

fig6() {
    local d=$out/data/fig6
    mkdir -p "$d"
    run_sweep sweeps/fig6_memcache.yaml
    run_sweep sweeps/fig6_baselines.yaml
    export_csv fig6-memcache "$d/export.csv"
    export_csv fig6-baselines "$d/baselines.csv"
    aggregate "$d/acc" "$d/export.csv" x=model.segment y=test/accuracy series= fixed_series=memcache
    aggregate "$d/base" "$d/baselines.csv" x= y=test/accuracy series=model.mixer
    local L
    L=$(sqlite3 "$db" "select json_extract(config, '\$.task.seq_len') from runs where id = \
        $(awk -F, 'NR == 2 { print $1 }' "$d/export.csv")")
    draw fig6_memcache.gp fig6_memcache "$d" \
        "$(provenance sweeps/fig6_memcache.yaml:fig6-memcache:"$d/export.csv" \
            sweeps/fig6_baselines.yaml:fig6-baselines:"$d/baselines.csv")" "seq_len=$L"
}

fig7() {
    local d=$out/data/fig7
    mkdir -p "$d"
    run_sweep sweeps/fig7_mom.yaml
    export_csv fig7-mom "$d/export.csv"
    aggregate "$d/acc" "$d/export.csv" x=model.memories y=test/accuracy series=model.topk
    draw fig7_mom.gp fig7_mom "$d/acc" \
        "$(provenance sweeps/fig7_mom.yaml:fig7-mom:"$d/export.csv")"
}

fig8() {
    local d=$out/data/fig8
    mkdir -p "$d"
    run_sweep sweeps/fig8_lm.yaml
    export_csv fig8-lm "$d/export.csv" test/bits_per_byte,train/flops
    aggregate "$d/bpb" "$d/export.csv" x=train/flops y=test/bits_per_byte series=model.mixer
    draw fig8_lm.gp fig8_lm "$d/bpb" \
        "$(provenance sweeps/fig8_lm.yaml:fig8-lm:"$d/export.csv")"
}

status=0
t_all=$(date +%s)
for f in "${figs[@]}"; do
    t0=$(date +%s)
    # a subshell outside any `if`, so that set -e stops the figure at its
    # first failing step
    set +e
    (
        set -e
        "fig$f"
    )
    rc=$?
    set -e
    if [[ $rc -eq 0 ]]; then
        echo "figure $f: drawn in $(($(date +%s) - t0)) s ($out/fig${f}_*)"
    else
        echo "figure $f: FAILED after $(($(date +%s) - t0)) s" >&2
        status=1
    fi
done
echo "figures ${figs[*]} (preset $preset, database $db): $(($(date +%s) - t_all)) s in all, load $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
