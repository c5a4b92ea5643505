#!/usr/bin/env bash
# tests/cli_tasks.sh MEMLAB: the tasks beyond MQAR and the capacity probe from
# the command line, on the float build: the task list, the byte-level LM's
# file checks and metrics, MQAR evaluation slices, macro accuracy, joint
# recall, and `memlab probe` with what it records.
# Each check prints "ok"/"FAIL" with its name; closing line "N passed, N failed".
set -u
memlab=$(realpath "${1:-./memlab}")
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'chmod -R u+rwx "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
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

# --- the task list ------------------------------------------------------------
"$memlab" tasks >"$tmp/tasks"
for t in mqar joint_recall in_context_recall noisy_recall fuzzy_recall selective_copy lm probe; do
    check "memlab tasks lists $t" grep -q "^  $t:" "$tmp/tasks"
done
check "memlab tasks shows the LM's default corpus" grep -q "data/tinyshakespeare.txt" "$tmp/tasks"

# --- byte-level LM: bad files refused before anything runs ---------------------
lm_spec() { # lm_spec PATH [SEQ_LEN]: a tiny LM spec on PATH into $tmp/lm.yaml
    cat >"$tmp/lm.yaml" <<YAML
task:
  name: lm
  path: "$1"
  seq_len: ${2:-32}
model:
  mixer: softmax
  d_model: 16
  n_layers: 1
  mlp: false
train:
  steps: 20
  batch_size: 8
  lr: 3e-3
  warmup: 2
eval:
  every: 10
  examples: 16
YAML
}
refused() { # refused NAME EXPECTED-REGEX: the spec in $tmp/lm.yaml must be refused
    local name=$1 want=$2
    rm -f "$tmp/bad.db"
    "$memlab" train "$tmp/lm.yaml" --db "$tmp/bad.db" --quiet 2>"$tmp/err"
    local rc=$?
    if [[ $rc -ne 1 ]]; then fail "$name: exit $rc, expected 1" "$(cat "$tmp/err")"; return; fi
    if ! grep -Eq -- "$want" "$tmp/err"; then fail "$name: message" "$(cat "$tmp/err")"; return; fi
    if [[ -e "$tmp/bad.db" ]] && [[ "$(q "$tmp/bad.db" "select count(*) from runs")" != 0 ]]; then
        fail "$name: something was written"; return
    fi
    ok "$name"
}
: >"$tmp/empty.txt"
lm_spec "$tmp/empty.txt"
refused "LM: empty file refused with its path" "lm.yaml:3:3: task.path: '$tmp/empty.txt' is empty"
lm_spec "$tmp/missing.txt"
refused "LM: missing file refused with its path" "task.path: cannot open '$tmp/missing.txt': No such file"
mkdir -p "$tmp/adir"
lm_spec "$tmp/adir"
refused "LM: directory refused" "task.path: '$tmp/adir' is a directory"
head -c 300 data/tinyshakespeare.txt >"$tmp/short.txt"
lm_spec "$tmp/short.txt" 32
refused "LM: file shorter than one sequence refused" "task.path: '$tmp/short.txt' has 300 bytes, too short"
if [[ $(id -u) -ne 0 ]]; then
    head -c 5000 data/tinyshakespeare.txt >"$tmp/locked.txt"
    chmod 000 "$tmp/locked.txt"
    lm_spec "$tmp/locked.txt"
    refused "LM: unreadable file refused" "task.path: cannot read '$tmp/locked.txt'"
else
    ok "LM: unreadable file (skipped: root reads any file)"
fi

# --- byte-level LM: a tiny run, every byte value -------------------------------
lm_spec data/tinyshakespeare.txt 32
db=$tmp/lm.db
"$memlab" train "$tmp/lm.yaml" --db "$db" --quiet
check "LM on the shipped corpus: exit 0" test $? -eq 0
for metric in loss bits_per_byte perplexity accuracy; do
    check "LM: test/$metric at every evaluation" \
        test "$(q "$db" "select group_concat(step) from metrics where split='test' and name='$metric'")" = "10,20"
done
check "LM: bits_per_byte = loss / ln 2 and perplexity = exp(loss)" \
    test "$(q "$db" "select count(*) from metrics l join metrics b on b.step=l.step and b.name='bits_per_byte'
                     join metrics p on p.step=l.step and p.name='perplexity'
                     where l.name='loss' and l.split='test'
                     and abs(b.value - l.value/ln(2)) < 1e-9 and abs(p.value - exp(l.value)) < 1e-6*p.value")" = 2
check "LM: the untrained-scale loss is below uniform (8 bits per byte)" \
    test "$(q "$db" "select value < 8 from metrics where name='bits_per_byte' and step=20")" = 1
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 40)' >"$tmp/bytes.bin"
lm_spec "$tmp/bytes.bin" 32
"$memlab" train "$tmp/lm.yaml" --db "$tmp/bytes.db" --quiet
check "LM: a file of every byte value (NUL, invalid UTF-8) trains" \
    test "$(q "$tmp/bytes.db" "select status from runs")" = finished

# --- MQAR evaluation slices ------------------------------------------------------
cat >"$tmp/mqar.yaml" <<'YAML'
task:
  name: mqar
  vocab_size: 256
  seq_len: 32
  num_kv_pairs: 4
  eval_num_kv_pairs: "2,4,8"
  eval_seq_len: 32, 64
model:
  mixer: softmax
  d_model: 16
  conv: 3
  mlp: false
train:
  steps: 20
  batch_size: 8
eval:
  every: 10
  examples: 32
YAML
"$memlab" train "$tmp/mqar.yaml" --db "$tmp/mq.db" --quiet
check "MQAR with slices: exit 0" test $? -eq 0
check "MQAR: six slices recorded at the last step only" \
    test "$(q "$tmp/mq.db" "select count(*)||':'||min(step)||':'||max(step) from metrics where name like 'accuracy@%'")" = "6:20:20"
check "MQAR: slice names are accuracy@N=..,L=.." \
    test "$(q "$tmp/mq.db" "select group_concat(name) from (select name from metrics where name like 'accuracy@%' order by name)")" = \
    "accuracy@N=2,L=32,accuracy@N=2,L=64,accuracy@N=4,L=32,accuracy@N=4,L=64,accuracy@N=8,L=32,accuracy@N=8,L=64"
check "MQAR: the slice at the training shape equals the final test accuracy" \
    test "$(q "$tmp/mq.db" "select a.value = b.value from metrics a join metrics b on a.step=b.step
                            where a.name='accuracy@N=4,L=32' and b.name='accuracy' and b.split='test'")" = 1
check "MQAR: loss recorded per slice" \
    test "$(q "$tmp/mq.db" "select count(*) from metrics where name like 'loss@%'")" = 6
sed 's/eval_num_kv_pairs: "2,4,8"/eval_num_kv_pairs: "2,4,9"/' "$tmp/mqar.yaml" >"$tmp/lm.yaml"
refused "MQAR: an impossible slice refused at its key" "lm.yaml:6:3: task.eval_num_kv_pairs: the slice N=9,L=32"
sed 's/eval_num_kv_pairs: "2,4,8"/eval_num_kv_pairs: "2,x"/' "$tmp/mqar.yaml" >"$tmp/lm.yaml"
refused "MQAR: a malformed slice list refused" "task.eval_num_kv_pairs: '2,x' is not a comma-separated list"

# --- MAD tasks: micro and macro accuracy; joint recall ----------------------------
for t in in_context_recall noisy_recall fuzzy_recall selective_copy; do
    "$memlab" train "$tmp/mqar.yaml" --db "$tmp/mad.db" --quiet --set task.name=$t \
        --set task.seq_len=64 --set train.steps=10
    check "$t: a run finishes" test $? -eq 0
done
check "MAD tasks: accuracy and accuracy_macro recorded for all four" \
    test "$(q "$tmp/mad.db" "select count(distinct run_id) from metrics where name='accuracy_macro'")" = 4
"$memlab" train "$tmp/mqar.yaml" --db "$tmp/jr.db" --quiet --set task.name=joint_recall \
    --set task.n_context=3 --set task.n_key=3 --set train.steps=10
check "joint recall: a run finishes" test "$(q "$tmp/jr.db" "select status from runs")" = finished
check "joint recall: n_context and n_key are in the recorded config" \
    test "$(q "$tmp/jr.db" "select json_extract(config,'$.task.n_context')||json_extract(config,'$.task.n_key') from runs")" = 33

# --- memlab probe ----------------------------------------------------------------------
"$memlab" help probe >"$tmp/help"
check "memlab help probe lists --memory" grep -q -- "--memory" "$tmp/help"
"$memlab" --help >"$tmp/help"
check "memlab --help lists probe" grep -q "^  probe" "$tmp/help"
"$memlab" probe --memory sum --d 32 --n-min 8 --n-max 64 --seeds 3 --db "$tmp/p.db" >"$tmp/probe.out" 2>"$tmp/probe.err"
check "memlab probe: exit 0" test $? -eq 0
check "memlab probe: one run per (memory, d, N, seed)" \
    test "$(q "$tmp/p.db" "select count(*)||':'||count(distinct json_extract(config,'$.task.n_pairs'))||':'||count(distinct json_extract(config,'$.train.seed')) from runs where status='finished'")" = "12:4:3"
check "memlab probe: rel_error, top1_accuracy, theory and state_size recorded" \
    test "$(q "$tmp/p.db" "select count(distinct name) from metrics where name in ('rel_error','top1_accuracy','theory_rel_error','state_size')")" = 4
check "memlab probe: the sum rule's mean error follows (N - 1)/d within 25%" \
    test "$(q "$tmp/p.db" "select count(*) from (select avg(e.value) m, t.value th from metrics e
            join metrics t on t.run_id=e.run_id and t.name='theory_rel_error'
            where e.name='rel_error' group by t.value) where abs(m - th) <= 0.25 * th")" = 4
check "memlab probe: the table has 4 rows" test "$(grep -c '^sum ' "$tmp/probe.out")" = 4
check "memlab probe: no model is trained (no params metric)" \
    test "$(q "$tmp/p.db" "select count(*) from metrics where name='params'")" = 0
"$memlab" probe --memory all --d 16 --n-min 16 --n-max 16 --seeds 1 --no-db >"$tmp/probe.out"
check "memlab probe --memory all: one row per memory" \
    test "$(grep -cE '^(sum|delta|mom|caching|slots) ' "$tmp/probe.out")" = 5
"$memlab" probe --memory nonsense --no-db >/dev/null 2>&1
check "memlab probe: unknown memory exits 2" test $? -eq 2
"$memlab" probe --memory delta --set task.keys=orthogonal --d 16 --n-min 8 --n-max 32 --no-db \
    >/dev/null 2>"$tmp/err"
rc=$?
check "memlab probe: orthogonal keys beyond d refused (exit 1, N <= d)" \
    bash -c "test $rc -eq 1 && grep -q 'N <= d' '$tmp/err'"
"$memlab" probe --memory delta --set task.keys=orthogonal --d 16 --n-min 16 --n-max 16 --seeds 2 \
    --no-db >"$tmp/probe.out"
check "memlab probe: the delta rule stores d orthogonal keys exactly" \
    bash -c "grep '^delta' '$tmp/probe.out' | awk '{exit !(\$5 < 1e-12 && \$9 == \"1.0000\")}'"

# --- the probe as a task in a spec ------------------------------------------------------
cat >"$tmp/probe.yaml" <<'YAML'
task:
  name: probe
  memory: mom
  d: 32
  n_pairs: 64
  experts: 4
train:
  seed: 3
YAML
"$memlab" train "$tmp/probe.yaml" --db "$tmp/pt.db" --quiet
check "probe task in a spec: exit 0, recorded finished" \
    test "$(q "$tmp/pt.db" "select status||':'||step from runs")" = "finished:0"
check "probe task: top1_accuracy and rel_error recorded, no theory for mom" \
    test "$(q "$tmp/pt.db" "select group_concat(name) from (select name from metrics where split='test' order by name)")" = "rel_error,top1_accuracy"
"$memlab" train "$tmp/probe.yaml" --db "$tmp/pt.db" --quiet
check "probe task: the same seed gives the same numbers" \
    test "$(q "$tmp/pt.db" "select count(distinct value) from metrics where name='rel_error'")" = 1
sed 's/memory: mom/memory: lstm/' "$tmp/probe.yaml" >"$tmp/lm.yaml"
refused "probe task: unknown memory refused with the choices" "task.memory: .*lstm.*"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
