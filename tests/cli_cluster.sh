#!/usr/bin/env bash
# tests/cli_cluster.sh MEMLAB: one sweep across many processes, on the
# command line: --shard, the shard environments (the variables Slurm and
# mpirun set, simulated here), memlab merge, and the script memlab slurm
# writes (run by bash in its array and merge modes, and submitted through a
# stand-in sbatch). With mpirun installed (Debian: openmpi-bin) a real
# `mpirun -np 2 memlab run` too; without it that part prints SKIP. A real
# Slurm controller is tests/cluster_slurm.sh's (make test-cluster).
# "Equal to one process" compares every run's config hash, status and step
# and every metric value exactly, leaving out the timings (tokens_per_s,
# wall_time_s, train_time_s, peak_rss_mib), which depend on the moment.
# Closing line "N passed, N failed".
set -u
memlab=$(realpath "${1:-./memlab}")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
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

# results A B: "DIFFERENT_ROWS|SAME_COUNT|ROWS" comparing A with B.
results() {
    local sel="SELECT r.config_hash, r.status, r.step, m.split, m.name, m.step, m.value FROM %s.runs r
      LEFT JOIN %s.metrics m ON m.run_id = r.id
      AND m.name NOT IN ('tokens_per_s', 'wall_time_s', 'train_time_s', 'peak_rss_mib')"
    local a b
    # shellcheck disable=SC2059
    a=$(printf "$sel" main main)
    # shellcheck disable=SC2059
    b=$(printf "$sel" o o)
    sqlite3 "$1" "ATTACH '$2' AS o; SELECT
      (SELECT count(*) FROM ($a EXCEPT $b)) + (SELECT count(*) FROM ($b EXCEPT $a)),
      (SELECT count(*) FROM ($a)) = (SELECT count(*) FROM ($b)), (SELECT count(*) FROM ($a))"
}
same_results() { # same_results A B: equal and not trivially empty
    local r
    r=$(results "$1" "$2")
    [[ "${r%|*}" == "0|1" && "${r##*|}" -gt 50 ]] || { echo "    $1 vs $2: $r"; return 1; }
}

# 6 distinct runs (9 expanded, d_model 8 twice).
cat >s.yaml <<'YAML'
name: cli-cluster
task: {name: mqar, vocab_size: 64, seq_len: 16, num_kv_pairs: 2}
model: {mixer: softmax, d_model: 16, n_layers: 1, conv: 3, mlp: false}
train: {steps: 20, batch_size: 16, lr: 3e-3, warmup: 5}
eval: {every: 10, examples: 32}
sweep:
  grid:
    model.d_model: [8, 16, 8]
  seeds: 3
presets:
  two: {sweep: {seeds: 2}}
YAML

# --- help -----------------------------------------------------------------
"$memlab" --help >help 2>&1
check "memlab --help lists merge and slurm" bash -c "grep -q '^  merge ' help && grep -q '^  slurm ' help"
"$memlab" run --help >help 2>&1
check "memlab run --help lists --shard and --no-shard-env" \
    bash -c "grep -q -- '--shard I/N' help && grep -q -- '--no-shard-env' help"
"$memlab" merge --help >/dev/null && "$memlab" slurm --help >/dev/null
check "merge --help and slurm --help exit 0" test $? -eq 0

# --- the reference: one process -------------------------------------------
"$memlab" run s.yaml --db one.db --quiet
check "one process: 6 runs finished" test "$(q one.db "select count(*) from runs where status='finished'")" = 6

# --- --shard I/N ----------------------------------------------------------
"$memlab" run s.yaml --db x.db --shard 1/3 --dry-run >dry
check "dry run of shard 1/3: its 2 runs, sweep-wide numbers, nothing written" \
    bash -c "grep -q '^sweep cli-cluster (s.yaml): 6 runs (9 expanded, 3 duplicates merged); shard 1 of 3 (--shard): 2 runs; 0 already done, 2 to run' dry &&
             test \"\$(tail -n +2 dry | awk '{print \$1}' | tr '\n' ' ')\" = '2 5 ' && ! ls x*.db 2>/dev/null"
for i in 0 1 2; do "$memlab" run s.yaml --db x.db --shard $i/3 2>"err$i"; done
check "three shards: three files, 2 runs each, none in x.db" \
    bash -c "for i in 0 1 2; do test \$(sqlite3 x.shard-\$i-of-3.db 'select count(*) from runs where status=\"finished\"') = 2 || exit 1; done; test ! -e x.db"
check "a shard says what it runs, with sweep-wide run numbers" \
    bash -c "grep -q '^memlab run: shard 1 of 3 (--shard): 2 of the 6 runs, into x.shard-1-of-3.db' err1 &&
             grep -q '^\[2/6\] finished' err1 && grep -q '^\[5/6\] finished' err1 &&
             grep -q '^sweep cli-cluster (shard 1 of 3): 2 runs, 0 already done; now 2 finished' err1"
check "the shards record the same sweep row" \
    test "$(for i in 0 1 2; do q x.shard-$i-of-3.db "select name, resolved_hash from sweeps"; done | sort -u | wc -l)" -eq 1
"$memlab" merge --shards 3 x.db 2>err
rc=$?
check "merge --shards 3: exit 0, 6 runs added" \
    bash -c "test $rc -eq 0 && grep -q '^merged 3 files into x.db (new): 6 runs added (6 finished' err"
check "merged shards equal one process (every metric but the timings)" same_results x.db one.db
check "merged: one sweep, every run linked to it" \
    test "$(q x.db "select count(*) from sweeps")|$(q x.db "select count(*) from runs where sweep_id = (select id from sweeps)")" = "1|6"
q x.db .dump >dump1
"$memlab" merge x.db x.shard-0-of-3.db x.shard-1-of-3.db x.shard-2-of-3.db 2>err
q x.db .dump >dump2
check "merging again changes nothing (identical dump)" \
    bash -c "cmp -s dump1 dump2 && grep -q '0 runs added .*, 6 already there' err"
"$memlab" status --db x.db >status
check "status reads the merged file: 6 of 6 done" grep -Eq '^cli-cluster +6 +6 +0 +0 +0 +0 +0$' status
"$memlab" export --sweep cli-cluster --db x.db >x.csv
check "export of the merged file: 6 rows" test "$(tail -n +2 x.csv | wc -l)" -eq 6
"$memlab" run s.yaml --db x.db 2>err
check "memlab run on the merged file runs nothing" \
    bash -c "test $? -eq 0 && grep -q '6 runs, 6 already done; now 0 finished' err"

"$memlab" run s.yaml --db bad.db --shard 3/3 2>err
rc=$?
check "--shard 3/3: exit 2, nothing written" \
    bash -c "test $rc -eq 2 && grep -q 'below N' err && ! ls bad*.db 2>/dev/null"
"$memlab" run s.yaml --db bad.db --shard one/3 2>/dev/null
check "--shard one/3: exit 2" test $? -eq 2

# --- the shard from the environment ---------------------------------------
for i in 0 1 2; do
    env SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_COUNT=3 SLURM_ARRAY_TASK_MIN=0 \
        SLURM_ARRAY_TASK_MAX=2 SLURM_ARRAY_TASK_STEP=1 SLURM_PROCID=0 SLURM_NTASKS=1 \
        "$memlab" run s.yaml --db arr.db 2>"err$i"
done
check "a Slurm job array shards by itself, and says so" \
    bash -c "grep -q 'shard 2 of 3 (SLURM_ARRAY_TASK_ID=2 of SLURM_ARRAY_TASK_COUNT=3)' err2 && ls arr.shard-{0,1,2}-of-3.db >/dev/null"
"$memlab" merge --shards 3 arr.db --quiet
check "job array shards merged equal one process" same_results arr.db one.db

env OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 "$memlab" run s.yaml --db fl.db --shard 0/4 --quiet
check "--shard wins over the environment" \
    bash -c "test -e fl.shard-0-of-4.db && ! test -e fl.shard-1-of-2.db && test \$(sqlite3 fl.shard-0-of-4.db 'select count(*) from runs') = 2"
env OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 "$memlab" run s.yaml --db nos.db --no-shard-env --quiet
check "--no-shard-env runs the whole sweep into the file given" \
    test "$(q nos.db "select count(*) from runs where status='finished'")" = 6
env SLURM_PROCID=0 SLURM_NTASKS=4 SLURM_JOB_ID=7 "$memlab" run s.yaml --db batch.db --quiet
check "an sbatch -n 4 script itself (no srun step) runs the whole sweep" \
    test "$(q batch.db "select count(*) from runs where status='finished'")" = 6
env SLURM_PROCID=0 SLURM_NTASKS=1 SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=1 "$memlab" run s.yaml --db one.db --quiet 2>err
check "srun -n 1 is the whole sweep: the plain file, nothing to run" \
    bash -c "test $? -eq 0 && ! ls one.shard* 2>/dev/null"
env OMPI_COMM_WORLD_RANK=2 OMPI_COMM_WORLD_SIZE=2 "$memlab" run s.yaml --db envbad.db 2>err
rc=$?
check "an impossible rank: exit 1, naming the variables and the way out, nothing written" \
    bash -c "test $rc -eq 1 && grep -q 'OMPI_COMM_WORLD_RANK=2 is not below OMPI_COMM_WORLD_SIZE=2' err &&
             grep -q -- '--no-shard-env' err && ! ls envbad*.db 2>/dev/null"

# --- merge: partial, refused ----------------------------------------------
cp x.shard-0-of-3.db p.shard-0-of-3.db
cp x.shard-2-of-3.db p.shard-2-of-3.db
"$memlab" merge --shards 3 p.db 2>err
rc=$?
check "a missing shard is named, the others merged, exit 1" \
    bash -c "test $rc -eq 1 && grep -q 'p.shard-1-of-3.db is missing' err && test \$(sqlite3 p.db 'select count(*) from runs') = 4"
cp one.db c1.db
cp one.db c2.db
q c2.db "update runs set config = json_set(config, '$.train.lr', 0.5) where id = 3"
"$memlab" merge c.db c1.db c2.db 2>err
rc=$?
check "same hash, different configs: refused naming both files, nothing written" \
    bash -c "test $rc -eq 1 && grep -q 'same config hash' err && grep -q c1.db err && grep -q c2.db err && test ! -e c.db"
sqlite3 future.db "create table schema_version(version integer); insert into schema_version values (999)"
cp x.db keep.db
before=$(q keep.db .dump | md5sum)
"$memlab" merge keep.db one.db future.db 2>err
rc=$?
check "a file of another schema version: refused naming it, output unchanged" \
    bash -c "test $rc -eq 1 && grep -q 'future.db has schema version 999' err && test \"\$(sqlite3 keep.db .dump | md5sum)\" = '$before'"
"$memlab" merge keep.db keep.db 2>err
check "the output as its own input: refused" bash -c "test $? -eq 1 && grep -q 'output file itself' err"
"$memlab" merge only.db 2>/dev/null
check "merge without inputs: exit 2" test $? -eq 2

# --- memlab slurm -----------------------------------------------------------
"$memlab" slurm s.yaml --array-size 3 --db res/sl.db --time 0:05:00 --preset two \
    --set train.lr=3e-3 --set 'eval.every=10' --output job.sh 2>err
rc=$?
check "slurm --output: exit 0, an executable script bash accepts" \
    bash -c "test $rc -eq 0 && test -x job.sh && bash -n job.sh && grep -q 'submit with: bash job.sh' err"
check "the script: array of 3, its time, the pass-through options, the merge" \
    bash -c "grep -q '^#SBATCH --time=0:05:00$' job.sh && grep -q '^SHARDS=3$' job.sh &&
             grep -q '^RUN_ARGS=(--jobs 1 --preset two --set train.lr=3e-3 --set eval.every=10)$' job.sh &&
             grep -q 'memlab merge --shards 3 res/sl.db' job.sh && grep -q -- '--dependency=afterany' job.sh"
mkdir -p bin
cat >bin/sbatch <<'SH'
#!/bin/bash
# a stand-in sbatch: log the call, answer with a job id
echo "$*" >>"$SBATCH_LOG"
n=$(wc -l <"$SBATCH_LOG")
echo "$((1000 + n));cluster"
SH
chmod +x bin/sbatch
(cd / && PATH="$tmp/bin:$PATH" SBATCH_LOG="$tmp/sbatch.log" bash "$tmp/job.sh") >submit.out 2>&1
rc=$?
check "submit (from another directory): the array, then the merge after it" \
    bash -c "test $rc -eq 0 && test \$(wc -l <sbatch.log) -eq 2 &&
             sed -n 1p sbatch.log | grep -Eq -- '^--parsable --array=0-2 --output=res/slurm/memlab-cli-cluster-%A_%a.out /.*/job.sh array$' &&
             sed -n 2p sbatch.log | grep -Eq -- '^--parsable --dependency=afterany:1001 --cpus-per-task=1 --output=res/slurm/memlab-cli-cluster-merge-%j.out /.*/job.sh merge$' &&
             grep -q 'submitted: job array 1001 (3 tasks), merge job 1002 after it' submit.out && test -d res/slurm"
for i in 0 1 2; do SLURM_ARRAY_TASK_ID=$i bash job.sh array 2>/dev/null; done
bash job.sh merge >merge.out 2>&1
rc=$?
"$memlab" run s.yaml --preset two --set train.lr=3e-3 --set eval.every=10 --db slref.db --quiet
check "the script's array tasks and merge, run by hand, equal one process" \
    bash -c "test $rc -eq 0 && grep -Eq '^cli-cluster +4 +4 ' merge.out" && same_results res/sl.db slref.db
"$memlab" slurm s.yaml --array-size 50 >big.sh 2>err
check "an array larger than the sweep is lowered to its runs" \
    bash -c "grep -q 'lowered to the sweep.s 6 runs' err && grep -q '^SHARDS=6$' big.sh"
"$memlab" slurm s.yaml --time '1:00 00' >/dev/null 2>err
check "an #SBATCH value with a space: exit 2" bash -c "test $? -eq 2 && grep -q -- '--time' err"
"$memlab" slurm s.yaml --set train.lr=abc >/dev/null 2>&1
check "a bad spec is refused before writing a script (exit 1)" test $? -eq 1

# --- a real mpirun ----------------------------------------------------------
if command -v mpirun >/dev/null 2>&1; then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 \
        mpirun --oversubscribe --bind-to none -np 2 "$memlab" run s.yaml --db mpi.db --quiet >mpi.out 2>&1
    rc=$?
    check "mpirun -np 2 memlab run: exit 0, one file per rank, 3 runs each" \
        bash -c "test $rc -eq 0 && test \$(sqlite3 mpi.shard-0-of-2.db 'select count(*) from runs where status=\"finished\"') = 3 &&
                 test \$(sqlite3 mpi.shard-1-of-2.db 'select count(*) from runs where status=\"finished\"') = 3" ||
        sed 's/^/    /' mpi.out | head -20
    "$memlab" merge --shards 2 mpi.db --quiet
    check "mpirun ranks merged (one command) equal one process" same_results mpi.db one.db
else
    echo "SKIP mpirun not installed (Debian: openmpi-bin): the real mpirun run"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
