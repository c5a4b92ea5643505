#!/usr/bin/env bash
# tests/cli_sweep.sh MEMLAB: sweeps on the command line (memlab run, status,
# export), on the float build: expansion and dry runs, parallel workers,
# resuming after SIGINT and SIGKILL, two processes on one database, the
# corpus of malformed specs (refused with positions, database untouched).
# Each check prints "ok"/"FAIL" with its name; closing line "N passed, N failed".
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
q() { sqlite3 "$1" "$2"; }

# A sweep of 8 tiny runs: 2 widths x 2 (L, N) pairs x 2 seeds.
cat >"$tmp/s.yaml" <<'YAML'
name: cli-sweep
description: "tiny, for the tests"
task: {name: mqar, vocab_size: 64, seq_len: 16, num_kv_pairs: 2}
model: {mixer: softmax, d_model: 16, n_layers: 1, conv: 3, mlp: false}
train: {steps: 30, batch_size: 16, lr: 3e-3, warmup: 5}
eval: {every: 10, examples: 32}
sweep:
  grid:
    model.d_model: [8, 16]
  zip:
    task.seq_len: [16, 32]
    task.num_kv_pairs: [2, 4]
  seeds: 2
presets:
  one: {sweep: {seeds: 1}}
YAML

# --- help and usage -------------------------------------------------------
"$memlab" --help >"$tmp/help" 2>&1
check "memlab --help lists run, status and export" \
    bash -c "grep -q 'run SPEC.yaml' '$tmp/help' && grep -q '^  status' '$tmp/help' && grep -q '^  export' '$tmp/help'"
"$memlab" run --help >"$tmp/help" 2>&1
check "memlab run --help lists --jobs and --dry-run" \
    bash -c "grep -q -- '--jobs N' '$tmp/help' && grep -q -- '--dry-run' '$tmp/help'"
"$memlab" run >/dev/null 2>&1
check "run without a spec exits 2" test $? -eq 2
"$memlab" run "$tmp/s.yaml" --jobs 0 >/dev/null 2>&1
check "--jobs 0 exits 2" test $? -eq 2
"$memlab" train sweeps/mqar_capacity.yaml --db "$tmp/t.db" --quiet 2>"$tmp/err"
check "memlab train refuses a sweep, naming memlab run" \
    bash -c "grep -q 'memlab run' '$tmp/err' && test ! -e '$tmp/t.db'"

# --- dry run ---------------------------------------------------------------
db=$tmp/r.db
"$memlab" run "$tmp/s.yaml" --db "$db" --dry-run >"$tmp/dry"
check "dry run: 8 runs, none done" grep -q '^sweep cli-sweep .*: 8 runs; 0 already done, 8 to run' "$tmp/dry"
check "dry run: one line per run, last axis fastest" \
    bash -c "test \$(grep -c ' to run ' '$tmp/dry') -eq 8 && sed -n 3p '$tmp/dry' | grep -q 'model.d_model=8 task.seq_len=16 task.num_kv_pairs=2 train.seed=1'"
check "dry run creates no database" test ! -e "$db"
"$memlab" run "$tmp/s.yaml" --db "$db" --dry-run --preset one >"$tmp/dry"
check "--preset: 4 runs" grep -q ': 4 runs;' "$tmp/dry"
"$memlab" run "$tmp/s.yaml" --db "$db" --dry-run --set sweep.grid.model.d_model=[8,16,16] >"$tmp/dry"
check "duplicates merged and counted" grep -q ': 8 runs (12 expanded, 4 duplicates merged)' "$tmp/dry"
"$memlab" run "$tmp/s.yaml" --db "$db" --dry-run --set model.mixer=linear --set model.rule=delta \
    --set model.normalize=false >"$tmp/dry" 2>"$tmp/err"
check "a config known to diverge: warned at its key, before the runs, and still listed" \
    bash -c "grep -q '^--set model.rule=delta:1:[0-9]*: warning: model.rule: delta with feature_map elu1 and qk_l2norm false diverges' '$tmp/err' && grep -q ': 8 runs; 0 already done, 8 to run' '$tmp/dry'"
"$memlab" run "$tmp/s.yaml" --db "$db" --dry-run --set model.mixer=linear --set model.rule=delta \
    --set model.normalize=false --set model.qk_l2norm=true >"$tmp/dry" 2>"$tmp/err"
check "no warning with qk_l2norm true" bash -c "! grep -q warning '$tmp/err'"

# --- a parallel run recorded in full --------------------------------------
"$memlab" run "$tmp/s.yaml" --db "$db" --jobs 2 2>"$tmp/err"
rc=$?
check "run --jobs 2 exits 0" test $rc -eq 0
check "8 runs finished, 8 distinct configs" \
    test "$(q "$db" "select count(*), count(distinct config_hash) from runs where status='finished'")" = "8|8"
check "one sweep row, every run linked to it" \
    test "$(q "$db" "select count(*) from sweeps")|$(q "$db" "select count(*) from runs where sweep_id=(select id from sweeps where name='cli-sweep')")" = "1|8"
check "the sweep row keeps the spec text and the resolved JSON" \
    test "$(q "$db" "select instr(spec, 'tiny, for the tests') > 0 and json_extract(resolved, '\$.sweep.seeds') = 2 from sweeps")" = 1
check "config JSON answers json_extract" \
    test "$(q "$db" "select group_concat(d) from (select distinct json_extract(config,'\$.model.d_model') d from runs order by d)")" = "8,16"
check "runs name their owner host:pid:start" \
    test "$(q "$db" "select count(*) from runs where owner like '%:%:%'")" = 8
check "stderr not a terminal: one line per finished run" \
    test "$(grep -c '^\[[0-9]/8\] finished ' "$tmp/err")" -eq 8
check "closing summary" grep -q '^sweep cli-sweep: 8 runs, 0 already done; now 8 finished' "$tmp/err"

rows=$(q "$db" "select count(*) from runs")
"$memlab" run "$tmp/s.yaml" --db "$db" 2>"$tmp/err"
rc=$?
check "rerun: exit 0, nothing run again" \
    test "$rc|$(q "$db" "select count(*) from runs")" = "0|$rows"
check "rerun: all 8 already done" grep -q '8 runs, 8 already done; now 0 finished' "$tmp/err"
"$memlab" run "$tmp/s.yaml" --db "$db" --dry-run --set model.d_model=8 >"$tmp/dry"
check "--set pins a swept key: 4 runs, all done (same hashes as the grid's)" \
    grep -q ': 4 runs; 4 already done, 0 to run' "$tmp/dry"
cp "$db" "$tmp/v2.db"
q "$tmp/v2.db" "DROP TABLE fits; UPDATE schema_version SET version = 2"
"$memlab" run "$tmp/s.yaml" --db "$tmp/v2.db" --dry-run >"$tmp/dry" 2>"$tmp/err"
check "dry run on a schema-2 database: its runs counted, the upgrade announced, the file untouched" \
    bash -c "grep -q ': 8 runs; 8 already done, 0 to run (database at schema version 2: the run upgrades it to ' '$tmp/dry' && test \"\$(sqlite3 '$tmp/v2.db' 'select version from schema_version')\" = 2"

# --- status and export ----------------------------------------------------
"$memlab" status --db "$db" >"$tmp/status"
check "status: 8 runs, 8 done, none missing" \
    bash -c "grep -Eq '^cli-sweep +8 +8 +0 +0 +0 +0 +0$' '$tmp/status'"
"$memlab" export --sweep cli-sweep --db "$db" >"$tmp/x.csv"
check "export CSV header: run, hash, status, swept keys, default metrics" \
    test "$(head -1 "$tmp/x.csv")" = "run,config_hash,status,model.d_model,task.seq_len,task.num_kv_pairs,train.seed,test/accuracy,test/loss,model/state_size,model/params,train/tokens_per_s"
check "export CSV: 8 rows" test "$(tail -n +2 "$tmp/x.csv" | wc -l)" -eq 8
# Each row's d_model and seed agree with its run's stored config.
tail -n +2 "$tmp/x.csv" | awk -F, '{print $1 "|" $4 "|" $7}' | sort >"$tmp/exp.txt"
q "$db" "select id||'|'||json_extract(config,'\$.model.d_model')||'|'||json_extract(config,'\$.train.seed') from runs" | sort >"$tmp/db.txt"
check "export CSV rows match the stored configs" cmp -s "$tmp/exp.txt" "$tmp/db.txt"
acc_db=$(q "$db" "select value from metrics where run_id=1 and name='accuracy' and split='test' order by step desc limit 1")
acc_x=$(awk -F, '$1 == 1 {print $8}' "$tmp/x.csv")
check "export: final test accuracy of run 1 ($acc_x)" \
    test "$(q "$db" "select $acc_x = $acc_db")" = 1
"$memlab" export --sweep cli-sweep --db "$db" --format json --metric test/accuracy,train/loss >"$tmp/x.json"
check "export JSON: an array of 8 objects with the asked metrics" \
    test "$(q "$db" "select json_array_length(readfile('$tmp/x.json')), json_type(readfile('$tmp/x.json'), '\$[0].\"train/loss\"'), json_type(readfile('$tmp/x.json'), '\$[0].\"model.d_model\"'), json_extract(readfile('$tmp/x.json'), '\$[7].\"train.seed\"')")" = "8|real|integer|1"
"$memlab" export --sweep cli-sweep --db "$db" --metric accuracy >/dev/null 2>"$tmp/err"
check "export: a metric without its split is refused" \
    bash -c "test $? -eq 1 && grep -q 'expected split/name' '$tmp/err'"
"$memlab" export --sweep nope --db "$db" >/dev/null 2>"$tmp/err"
check "export: an unknown sweep is refused" \
    bash -c "test $? -eq 1 && grep -q \"no sweep named 'nope'\" '$tmp/err'"
"$memlab" status --db "$tmp/none.db" >/dev/null 2>&1
check "status of a missing database: exit 1, nothing created" \
    bash -c "test $? -eq 1 && test ! -e '$tmp/none.db'"

# --- divergence: recorded with its step, the sweep goes on ----------------
cat >"$tmp/div.yaml" <<'YAML'
name: cli-div
task: {name: mqar, vocab_size: 64, seq_len: 16, num_kv_pairs: 2}
model: {mixer: softmax, d_model: 16, n_layers: 2, conv: 3, mlp: false, init_std: 1}
train: {steps: 40, batch_size: 16, warmup: 0, grad_clip: 0, weight_decay: 0.9}
eval: {every: 20, examples: 64}
sweep:
  grid:
    train.lr: [1e30, 3e-3]
YAML
"$memlab" run "$tmp/div.yaml" --db "$tmp/div.db" --quiet
rc=$?
check "a diverging run does not stop the sweep (exit 0)" test $rc -eq 0
check "diverged with its step, the next run finished" \
    test "$(q "$tmp/div.db" "select group_concat(status||':'||(step<40)||':'||(coalesce(error,'') like 'diverged at step%'), ' ') from (select * from runs order by id)")" = "diverged:1:1 finished:0:0"
"$memlab" status --db "$tmp/div.db" >"$tmp/status"
check "status counts the diverged run" bash -c "grep -Eq '^cli-div +2 +1 +1 +0 +0 +0 +0$' '$tmp/status'"

# --- SIGINT: current runs interrupted, database consistent, resumable -----
sed -e 's/name: cli-sweep/name: cli-int/' -e 's/steps: 30,/steps: 4000,/' "$tmp/s.yaml" >"$tmp/int.yaml"
"$memlab" run "$tmp/int.yaml" --db "$tmp/int.db" --jobs 2 --preset one 2>"$tmp/err" &
pid=$!
for _ in $(seq 100); do
    sleep 0.1
    [[ -e "$tmp/int.db" ]] && [[ "$(q "$tmp/int.db" "select count(*) from metrics where name='accuracy'" 2>/dev/null)" -ge 2 ]] && break
done
kill -INT $pid
wait $pid
rc=$?
check "SIGINT exits 130" test $rc -eq 130
check "SIGINT: the workers' runs are interrupted, none left running" \
    test "$(q "$tmp/int.db" "select count(*) from runs where status='interrupted'")|$(q "$tmp/int.db" "select count(*) from runs where status='running'")" = "2|0"
check "SIGINT: database consistent" test "$(q "$tmp/int.db" "pragma integrity_check")" = ok
"$memlab" status --db "$tmp/int.db" >"$tmp/status"
check "status after SIGINT: 2 interrupted, 2 missing" \
    bash -c "grep -Eq '^cli-int +4 +0 +0 +0 +0 +2 +2$' '$tmp/status'"

# --- SIGKILL of the whole process group, then resume ----------------------
kdb=$tmp/kill.db
setsid "$memlab" run "$tmp/s.yaml" --db "$kdb" --jobs 2 --quiet &
pid=$!
for _ in $(seq 100); do
    sleep 0.05
    [[ -e "$kdb" ]] && [[ "$(q "$kdb" "select count(*) from runs where status='finished'" 2>/dev/null)" -ge 3 ]] && break
done
kill -KILL -- -"$pid" 2>/dev/null
wait $pid 2>/dev/null
left=$(q "$kdb" "select count(*) from runs where status='finished'")
"$memlab" run "$tmp/s.yaml" --db "$kdb" --jobs 2 --quiet
rc=$?
check "after kill -9 ($left of 8 finished): rerun exits 0" test $rc -eq 0
check "after kill -9 and rerun: each config done exactly once, none running" \
    test "$(q "$kdb" "select count(*), count(distinct config_hash) from runs where status='finished'")|$(q "$kdb" "select count(*) from runs where status='running'")" = "8|8|0"
check "after kill -9 and rerun: database consistent" test "$(q "$kdb" "pragma integrity_check")" = ok

# --- two processes on one spec and one database ---------------------------
cdb=$tmp/conc.db
"$memlab" run "$tmp/s.yaml" --db "$cdb" 2>"$tmp/c1" &
p1=$!
"$memlab" run "$tmp/s.yaml" --db "$cdb" --jobs 2 2>"$tmp/c2" &
p2=$!
wait $p1
r1=$?
wait $p2
r2=$?
check "two processes: both exit 0" test "$r1|$r2" = "0|0"
check "two processes: no config run twice (8 rows, 8 configs, all finished)" \
    test "$(q "$cdb" "select count(*), count(distinct config_hash), sum(status='finished') from runs")" = "8|8|8"
n1=$(grep -o 'now [0-9]* finished' "$tmp/c1" | grep -o '[0-9]*')
n2=$(grep -o 'now [0-9]* finished' "$tmp/c2" | grep -o '[0-9]*')
check "two processes: the work was shared ($n1 + $n2 = 8)" test $((n1 + n2)) -eq 8
check "two processes: one sweep row, database consistent" \
    test "$(q "$cdb" "select count(*) from sweeps")|$(q "$cdb" "pragma integrity_check")" = "1|ok"

# --- progress on a terminal -----------------------------------------------
script -qec "'$memlab' run '$tmp/s.yaml' --db '$tmp/tty.db' --preset one" /dev/null >"$tmp/tty" 2>&1
check "a terminal gets a live line with runs done, step, loss and ETA" \
    bash -c "grep -q 'done\] | run [0-9]* step [0-9]*/30 loss [0-9.]* .*| ETA ' '$tmp/tty'"

# --- malformed specs: refused with a position, database untouched ---------
# The expected position is the spec's own "# expect:" line (or its
# "# expect-run:" line 2, or NAME.expect); FILE:L:C names another file.
expect_of() { # expect_of SPEC -> "FILE:LINE:COLUMN"
    local f=$1 dir head
    dir=$(dirname "$f")
    if [[ -e "${f%.yaml}.expect" ]]; then head=$(head -1 "${f%.yaml}.expect")
    elif sed -n 2p "$f" | grep -q '^# expect-run:'; then head=$(sed -n 2p "$f" | sed 's/^# expect-run: *//')
    else head=$(head -1 "$f" | sed 's/^# expect: *//'); fi
    local pos=${head%% *}
    if [[ $pos == *:*:* ]]; then echo "$dir/$pos"; else echo "$f:$pos"; fi
}
cp "$db" "$tmp/keep.db"
before=$(md5sum <"$tmp/keep.db")
n_bad=0
bad_fail=0
for f in tests/bad/*.yaml tests/bad/sweep/*.yaml; do
    n_bad=$((n_bad + 1))
    want=$(expect_of "$f")
    "$memlab" run "$f" --db "$tmp/keep.db" 2>"$tmp/err" >/dev/null
    rc=$?
    "$memlab" run "$f" --db "$tmp/fresh.db" --dry-run 2>/dev/null >/dev/null
    rc2=$?
    first=$(head -1 "$tmp/err")
    if [[ $rc -ne 1 || $rc2 -ne 1 ]]; then
        fail "bad spec $f: exit $rc / $rc2, expected 1" "$first"; bad_fail=1
    elif [[ "$first" != "memlab: $want: "* ]]; then
        fail "bad spec $f: not at $want" "$first"; bad_fail=1
    elif [[ "$(md5sum <"$tmp/keep.db")" != "$before" || -e "$tmp/keep.db-wal" || -e "$tmp/fresh.db" ]]; then
        fail "bad spec $f: the database was touched"; bad_fail=1
    fi
done
[[ $bad_fail -eq 0 ]] && ok "$n_bad malformed specs refused at their position, databases untouched"
check "the corpus has at least 25 malformed specs" test "$n_bad" -ge 25
"$memlab" run "$tmp/s.yaml" --db "$tmp/keep.db" --set train.lr=abc 2>"$tmp/err"
check "--set problems name the argument and the column" \
    bash -c "test $? -eq 1 && grep -q '^memlab: --set train.lr=abc:1:10: train.lr: expected a number' '$tmp/err'"
"$memlab" run "$tmp/s.yaml" --db "$tmp/keep.db" --preset quik 2>"$tmp/err"
check "an unknown preset is refused with the closest one" \
    bash -c "test $? -eq 1 && grep -q \"unknown preset 'quik'; presets: one\" '$tmp/err'"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
