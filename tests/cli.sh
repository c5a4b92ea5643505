#!/usr/bin/env bash
# tests/cli.sh MEMLAB: the command line end to end, on the float build.
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

# --- help and usage -------------------------------------------------------
"$memlab" --help >"$tmp/help" 2>&1
check "memlab --help lists the verbs" grep -q "train SPEC.yaml" "$tmp/help"
"$memlab" train --help >"$tmp/help" 2>&1
check "memlab train --help lists --db" grep -q -- "--db FILE" "$tmp/help"
"$memlab" frobnicate >/dev/null 2>&1
check "unknown verb exits 2" test $? -eq 2
"$memlab" mixers >"$tmp/mixers"
check "memlab mixers lists softmax and linear with keys" \
    bash -c "grep -q '^  softmax' '$tmp/mixers' && grep -q '^  linear' '$tmp/mixers' && grep -q feature_map '$tmp/mixers'"

# --- a tiny run recorded in full ------------------------------------------
cat >"$tmp/tiny.yaml" <<'YAML'
name: cli-tiny
task:
  name: mqar
  vocab_size: 64
  seq_len: 16
  num_kv_pairs: 2
model:
  mixer: softmax
  d_model: 16
  n_layers: 2
  conv: 3
  mlp: false
train:
  steps: 40
  batch_size: 16
  lr: 3e-3
  warmup: 5
eval:
  every: 20
  examples: 64
YAML
db=$tmp/r.db
"$memlab" train "$tmp/tiny.yaml" --db "$db" --quiet
check "a tiny run exits 0" test $? -eq 0
check "the run is recorded as finished" test "$(q "$db" "select status from runs")" = finished
check "config is JSON with the model's keys" \
    test "$(q "$db" "select json_extract(config,'$.model.d_model') from runs")" = 16
check "config hash, code version and machine are recorded" \
    test "$(q "$db" "select length(config_hash)=64 and length(code_version)>0 and length(machine)>0 from runs")" = 1
for metric in accuracy loss tokens_per_s wall_time_s params state_size peak_rss_mib grad_norm lr; do
    check "metric $metric recorded" test "$(q "$db" "select count(*) from metrics where name='$metric'")" -ge 1
done
check "test accuracy recorded at every evaluation" \
    test "$(q "$db" "select group_concat(step) from metrics where split='test' and name='accuracy'")" = "20,40"

# --- determinism: the same spec twice gives the same numbers --------------
"$memlab" train "$tmp/tiny.yaml" --db "$db" --quiet
diffs=$(q "$db" "select count(*) from metrics a join metrics b on a.step=b.step and a.split=b.split and a.name=b.name
                 where a.run_id=1 and b.run_id=2 and a.name not in ('tokens_per_s','wall_time_s','train_time_s','peak_rss_mib')
                 and a.value is not b.value")
same=$(q "$db" "select count(*) from metrics a join metrics b on a.step=b.step and a.split=b.split and a.name=b.name
                 where a.run_id=1 and b.run_id=2")
check "same spec and seed: identical metrics ($same compared)" test "$diffs" = 0 -a "$same" -ge 10
check "same spec: same config hash" test "$(q "$db" "select count(distinct config_hash) from runs")" = 1
"$memlab" train "$tmp/tiny.yaml" --db "$db" --quiet --set train.seed=9
check "--set changes the config hash" test "$(q "$db" "select count(distinct config_hash) from runs")" = 2

# --- a linear-attention run ------------------------------------------------
"$memlab" train "$tmp/tiny.yaml" --db "$db" --quiet --set model.mixer=linear --set model.chunk=8
check "linear attention run finishes" test "$(q "$db" "select status from runs where json_extract(config,'$.model.mixer')='linear'")" = finished

# --- bad input: refused with a position, nothing written ------------------
bad() { # bad NAME EXPECTED-REGEX YAML
    local name=$1 want=$2
    printf '%s\n' "$3" >"$tmp/bad.yaml"
    rm -f "$tmp/bad.db"
    "$memlab" train "$tmp/bad.yaml" --db "$tmp/bad.db" --quiet 2>"$tmp/err"
    local rc=$?
    if [[ $rc -ne 1 ]]; then fail "$name: exit $rc, expected 1" "$(cat "$tmp/err")"; return; fi
    if ! grep -Eq "$want" "$tmp/err"; then fail "$name: message" "$(cat "$tmp/err")"; return; fi
    if [[ -e "$tmp/bad.db" ]] && [[ "$(q "$tmp/bad.db" "select count(*) from runs")" != 0 ]]; then
        fail "$name: something was written"; return
    fi
    ok "$name"
}
bad "malformed YAML" "bad.yaml:[0-9]+:[0-9]+:" $'model:\n  d_model: [64\ntrain:\n  steps: 3'
bad "unknown key" "bad.yaml:3:3: .*lernrate.*lr" $'train:\n  steps: 3\n  lernrate: 0.1'
bad "negative width" "bad.yaml:2:12: .*d_model" $'model:\n  d_model: -8'
bad "d_model not divisible by heads" "bad.yaml:[0-9]+:[0-9]+: .*divisible" $'model:\n  d_model: 64\n  heads: 3'
"$memlab" train "$tmp/missing.yaml" --db "$tmp/bad.db" --quiet 2>"$tmp/err"
check "missing spec file: exit 1 with the path" bash -c "grep -q missing.yaml '$tmp/err'"

# --- divergence and interruption are outcomes ------------------------------
"$memlab" train "$tmp/tiny.yaml" --db "$tmp/div.db" --set train.lr=1e30 \
    --set train.grad_clip=0 --set train.warmup=0 --set train.weight_decay=0.9 \
    --set model.init_std=1 2>"$tmp/err"
rc=$?
check "a diverging run exits 3" test $rc -eq 3
check "a diverging run's closing line says what was not finite, and no test metrics" \
    bash -c "grep -Eq '^$tmp/tiny.yaml: diverged softmax/mqar at step [0-9]+: (loss is|gradient norm is|weights not finite)' '$tmp/err' && ! grep -q 'test accuracy' '$tmp/err'"
check "a diverging run is recorded as diverged with its step" \
    test "$(q "$tmp/div.db" "select status||':'||(step<40)||':'||(error like 'diverged at step%') from runs")" = "diverged:1:1"

"$memlab" train "$tmp/tiny.yaml" --db "$tmp/int.db" --quiet --set train.steps=1000000 &
pid=$!
for _ in $(seq 50); do
    sleep 0.2
    [[ -e "$tmp/int.db" ]] && [[ "$(q "$tmp/int.db" "select count(*) from metrics" 2>/dev/null)" -ge 1 ]] && break
done
kill -INT $pid
wait $pid
rc=$?
check "SIGINT exits 130" test $rc -eq 130
check "SIGINT marks the run interrupted" test "$(q "$tmp/int.db" "select status from runs")" = interrupted

# --- matrix products in bfloat16 (train.matmul) ---------------------------
if grep -qw avx512_bf16 /proc/cpuinfo; then
    for run in fp32 bf16 bf16; do
        "$memlab" train "$tmp/tiny.yaml" --db "$tmp/mm.db" --quiet --set train.matmul=$run
    done
    loss() { # the final training loss of run $1 of mm.db
        q "$tmp/mm.db" "select printf('%.17g', value) from metrics where run_id=$1 and split='train'
                        and name='loss' order by step desc limit 1"
    }
    check "train.matmul is in the config and the hash" \
        test "$(q "$tmp/mm.db" "select group_concat(json_extract(config,'$.train.matmul'))||':'||count(distinct config_hash) from runs")" = "fp32,bf16,bf16:2"
    check "bf16 products give the same numbers twice" test "$(loss 2)" = "$(loss 3)"
    check "bf16 products change the numbers, by less than 5% of the loss" \
        awk -v a="$(loss 1)" -v b="$(loss 2)" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d > 0 && d < 0.05 * a) }'
    # linear attention over a 48-token chunk: its intra-chunk products in
    # sub-blocks in float32, whole (on AMX tiles, where the CPU has them) in bf16
    for run in fp32 bf16 bf16; do
        "$memlab" train "$tmp/tiny.yaml" --db "$tmp/mm.db" --quiet --set train.matmul=$run \
            --set model.mixer=linear --set task.seq_len=48
    done
    check "linear attention: bf16 products give the same numbers twice" test "$(loss 5)" = "$(loss 6)"
    check "linear attention: bf16 products change the loss by less than 5%" \
        awk -v a="$(loss 4)" -v b="$(loss 5)" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d > 0 && d < 0.05 * a) }'
else
    "$memlab" train "$tmp/tiny.yaml" --no-db --quiet --set train.matmul=bf16 2>"$tmp/err"
    check "without AVX-512 BF16, train.matmul bf16 is refused with the reason" \
        bash -c "grep -q 'needs a CPU with AVX-512 BF16' '$tmp/err'"
fi
"$memlab" train "$tmp/tiny.yaml" --no-db --quiet --set train.matmul=bf17 2>"$tmp/err"
check "an unknown matmul precision is refused, naming the choices" \
    bash -c "grep -q 'bf16' '$tmp/err' && grep -q 'fp32' '$tmp/err'"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
