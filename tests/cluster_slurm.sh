#!/usr/bin/env bash
# tests/cluster_slurm.sh MEMLAB: the script `memlab slurm` writes, on a real
# Slurm: a controller (slurmctld) and a node daemon (slurmd) from Debian's
# slurm-wlm, started here on this machine with a private configuration
# (localhost, no cgroups: proctrack/linuxproc and task/none, no accounting,
# AuthType=auth/none, fresh ports, state under a temporary directory), run
# the generated job array and its dependent merge job; the merged database
# must equal a one-process run of the same sweep (every status, step and
# metric value but the timings). Then one task is resubmitted alone and the
# merge run again, which must change nothing. The daemons are stopped at the
# end, whatever happens.
#
# Needs root (it installs slurm-wlm with apt-get when it is missing and runs
# the daemons); otherwise it prints SKIP. Not part of `make test`: run it with
# `make test-cluster`. Closing line "N passed, N failed".
set -u
memlab=$(realpath "${1:-build/release/memlab}")
passed=0
failed=0
ok() { echo "ok   $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; [[ -n "${2:-}" ]] && echo "    $2"; failed=$((failed + 1)); }
check() { # check NAME CONDITION-COMMAND...
    local name=$1
    shift
    if "$@"; then ok "$name"; else fail "$name"; fi
}
finish() {
    echo "$passed passed, $failed failed"
    [[ $failed -eq 0 ]]
    exit
}

if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP the local Slurm cluster needs root (to install slurm-wlm and run its daemons)"
    finish
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
    ! command -v sbatch >/dev/null; then
    echo "== installing slurm-wlm"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm >/dev/null; }; then
        fail "apt-get install slurm-wlm"
        finish
    fi
fi
if [[ -z "$(find /usr/lib -name auth_none.so -path '*slurm*' 2>/dev/null | head -1)" ]]; then
    fail "this slurm-wlm has no auth/none plugin" "$(slurmctld -V 2>&1)"
    finish
fi

tmp=$(mktemp -d /tmp/memlab_slurm_XXXXXX)
conf=$tmp/slurm.conf
export SLURM_CONF=$conf
stop_daemons() {
    local ids
    ids=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
    [[ -n "$ids" ]] && scancel $ids 2>/dev/null
    for d in slurmd slurmctld; do
        [[ -s "$tmp/$d.pid" ]] || continue
        local pid
        pid=$(cat "$tmp/$d.pid")
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && break
            sleep 0.1
        done
    done
}
cleanup() {
    stop_daemons
    rm -rf "$tmp"
}
trap cleanup EXIT

host=$(hostname -s)
port=$((20000 + ($$ % 4000) * 2))
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/work"
cat >"$conf" <<EOF
ClusterName=memlabtest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=3600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=memlab Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
echo "== starting slurmctld and slurmd ($(slurmctld -V), ports $port, $((port + 1)))"
slurmctld -c -f "$conf" && slurmd -f "$conf"
check "slurmctld and slurmd start" test $? -eq 0
state=
for _ in $(seq 100); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1)
    [[ "$state" == idle ]] && break
    sleep 0.2
done
check "the node comes up idle" test "$state" = idle
if [[ "$state" != idle ]]; then
    tail -5 "$tmp/slurmctld.log" "$tmp/slurmd.log" 2>/dev/null | sed 's/^/    /'
    finish
fi

# 6 distinct runs (9 expanded).
cd "$tmp/work" || finish
cat >s.yaml <<'YAML'
name: slurm-e2e
task: {name: mqar, vocab_size: 64, seq_len: 16, num_kv_pairs: 2}
model: {mixer: softmax, d_model: 16, n_layers: 1, conv: 3, mlp: false}
train: {steps: 30, batch_size: 16, lr: 3e-3, warmup: 5}
eval: {every: 10, examples: 32}
sweep:
  grid:
    model.d_model: [8, 16, 8]
  seeds: 3
YAML
"$memlab" run s.yaml --db one.db --quiet
"$memlab" slurm s.yaml --array-size 3 --db res/c.db --time 0:10:00 --output job.sh 2>/dev/null
check "memlab slurm writes the script" test -x job.sh
bash job.sh >submit.out 2>&1
array=$(sed -n 's/^submitted: job array \([0-9]*\) .*/\1/p' submit.out)
merge=$(sed -n 's/.*merge job \([0-9]*\) after it$/\1/p' submit.out)
check "bash job.sh submits the array and the merge job" test -n "$array" -a -n "$merge"
[[ -n "$array" && -n "$merge" ]] || { sed 's/^/    /' submit.out; finish; }

job_states() { # the JobState of each task of job $1, sorted, space-separated
    scontrol -o show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 | sort | tr '\n' ' '
}
for _ in $(seq 600); do
    [[ "$(job_states "$merge")" =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)\ $ ]] && break
    sleep 0.5
done
check "the 3 array tasks completed ($(job_states "$array"))" \
    test "$(job_states "$array")" = "COMPLETED COMPLETED COMPLETED "
check "the merge job completed ($(job_states "$merge"))" test "$(job_states "$merge")" = "COMPLETED "
last_end=$(scontrol -o show job "$array" | grep -o 'EndTime=[^ ]*' | cut -d= -f2 | sort | tail -1)
merge_start=$(scontrol -o show job "$merge" | grep -o 'StartTime=[^ ]*' | cut -d= -f2)
check "the merge started after the last task ended ($last_end <= $merge_start)" \
    bash -c "[[ ! '$merge_start' < '$last_end' ]]"
check "each task wrote its shard, 2 runs each" \
    bash -c "for i in 0 1 2; do test \$(sqlite3 res/c.shard-\$i-of-3.db 'select count(*) from runs where status=\"finished\"') = 2 || exit 1; done"
check "the logs: one per task, the merge's with its summary" \
    bash -c "ls res/slurm/memlab-slurm-e2e-${array}_{0,1,2}.out >/dev/null &&
             grep -q '^merged 3 files into res/c.db (new): 6 runs added' res/slurm/memlab-slurm-e2e-merge-$merge.out"
r=$(sqlite3 res/c.db "ATTACH 'one.db' AS o; SELECT
  (SELECT count(*) FROM (SELECT r.config_hash, r.status, r.step, m.split, m.name, m.step, m.value
     FROM main.runs r LEFT JOIN main.metrics m ON m.run_id = r.id AND m.name NOT IN
     ('tokens_per_s', 'wall_time_s', 'train_time_s', 'peak_rss_mib')
   EXCEPT SELECT r.config_hash, r.status, r.step, m.split, m.name, m.step, m.value
     FROM o.runs r LEFT JOIN o.metrics m ON m.run_id = r.id AND m.name NOT IN
     ('tokens_per_s', 'wall_time_s', 'train_time_s', 'peak_rss_mib'))),
  (SELECT count(*) FROM main.metrics), (SELECT count(*) FROM o.metrics),
  (SELECT count(*) FROM main.runs), (SELECT count(*) FROM o.runs)" 2>&1)
check "the merged database equals one process ($r: differing rows, metric rows, runs)" \
    bash -c "[[ '$r' =~ ^0\|([0-9]+)\|([0-9]+)\|6\|6$ && \${BASH_REMATCH[1]} == \${BASH_REMATCH[2]} && \${BASH_REMATCH[1]} -gt 50 ]]"

# The same script submitted with sbatch itself: the driver runs as a short
# job and submits the array and the merge from there.
"$memlab" slurm s.yaml --array-size 2 --db res/d.db --output job2.sh 2>/dev/null
sbatch --wait --output=driver.out job2.sh >/dev/null 2>&1
merge2=$(sed -n 's/.*merge job \([0-9]*\) after it$/\1/p' driver.out 2>/dev/null)
for _ in $(seq 600); do
    [[ -z "$merge2" || "$(job_states "$merge2")" =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)\ $ ]] && break
    sleep 0.5
done
check "sbatch job.sh: the driver job submits both; merged 2 shards, 6 finished runs" \
    bash -c "test -n '$merge2' && test '$(job_states "$merge2")' = 'COMPLETED ' &&
             test \$(sqlite3 res/d.db 'select count(*) from runs where status=\"finished\"') = 6"

# One task again (as after a preemption), then the merge again: nothing changes.
before=$(sqlite3 res/c.db .dump | md5sum)
sbatch --wait --array=1 --output=res/slurm/again-%A_%a.out job.sh array >/dev/null 2>&1
rc=$?
bash job.sh merge >merge2.out 2>&1
rc2=$?
check "a task resubmitted alone finds its runs done; merging again changes nothing" \
    bash -c "test $rc -eq 0 -a $rc2 -eq 0 && grep -q 'now 0 finished' res/slurm/again-*_1.out &&
             test \"\$(sqlite3 res/c.db .dump | md5sum)\" = '$before'"
finish
