#!/usr/bin/env bash
# tests/cli_bench.sh MEMLAB: `memlab bench` end to end, small and without the
# PyTorch twin (optional at run time and never part of the tests), the --jobs
# sweep with runs of a few steps. Checks what the benchmark records, not how
# fast anything is.
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

"$memlab" bench --help >"$tmp/help" 2>&1
check "memlab bench --help lists the grid options" \
    bash -c "grep -q -- '--mixers LIST' '$tmp/help' && grep -q -- '--no-torch' '$tmp/help'"
"$memlab" bench --frobnicate >/dev/null 2>&1
check "an unknown option exits 2" test $? -eq 2
"$memlab" bench --mixers nosuch --no-torch --no-jobs --db "$tmp/x.db" --report "$tmp/x.md" \
    2>"$tmp/err"
check "an unknown mixer exits 1 naming the known ones" \
    bash -c "grep -q \"unknown mixer 'nosuch'\" '$tmp/err' && grep -q softmax '$tmp/err'"
"$memlab" bench --jobs-steps 0 --no-torch --db "$tmp/x.db" --report "$tmp/x.md" 2>"$tmp/err"
check "--jobs-steps 0 is refused with its range" \
    bash -c "grep -q -- '--jobs-steps takes a whole number from 1' '$tmp/err'"
"$memlab" bench --dims 64,x --no-torch --no-jobs --db "$tmp/x.db" --report "$tmp/x.md" 2>/dev/null
check "a bad list exits 1" test $? -eq 1

db=$tmp/b.db
md=$tmp/b.md
"$memlab" bench --quick --mixers softmax,linear --lens 32,64 --steps 2 --min-steps 2 \
    --no-torch --db "$db" --report "$md" 2>"$tmp/log"
check "a quick run exits 0" test $? -eq 0
check "one run per configuration (2 mixers x 2 lengths x 2 heads), all finished" \
    test "$(q "$db" "select count(*)||':'||sum(status='finished') from runs")" = "8:8"
check "each run is named bench with its mixer, L and head in the config" \
    test "$(q "$db" "select count(distinct json_extract(config,'$.model.mixer')||json_extract(config,'$.task.seq_len')||json_extract(config,'$.train.full_head')) from runs where json_extract(config,'$.name')='bench'")" = 8
for metric in step_s_median step_s_min step_s_max step_cpu_s_median tokens_per_s gflop_per_step \
    gflops sgemm_peak_gflops frac_sgemm_peak fma_peak_gflops frac_fma_peak peak_rss_mib act_mib_mixer_layer act_mib_formula \
    act_mib_model threads head_rows time_per_token_exponent products_s_median optimizer_s_median; do
    check "metric bench/$metric on every run" \
        test "$(q "$db" "select count(distinct run_id) from metrics where split='bench' and name='$metric'")" = 8
done
check "the products and the optimizer take a positive part of every step, together at most all of it" \
    test "$(q "$db" "select count(*) from metrics s join metrics p on p.run_id=s.run_id
                     join metrics o on o.run_id=s.run_id where s.name='step_s_median'
                     and p.name='products_s_median' and o.name='optimizer_s_median'
                     and p.value > 0 and o.value > 0 and p.value + o.value <= s.value * 1.001")" = 8
check "each phase's own passes take a positive part of every step, together with the products and the optimizer at most all of it" \
    test "$(q "$db" "select count(*) from (select s.run_id, s.value step, p.value + o.value prod_opt,
                     sum(e.value) ew, min(e.value) lo, count(e.value) k from metrics s
                     join metrics p on p.run_id=s.run_id and p.name='products_s_median'
                     join metrics o on o.run_id=s.run_id and o.name='optimizer_s_median'
                     join metrics e on e.run_id=s.run_id and e.name like 'elementwise_%_s_median'
                     where s.split='bench' and s.name='step_s_median' group by s.run_id)
                     where k = 5 and lo > 0 and ew + prod_opt <= step * 1.001")" = 8
if [[ -r /proc/stat ]]; then
    check "the hypervisor's steal share is recorded per run, in [0, 1]" \
        test "$(q "$db" "select count(*) from metrics where name='steal_frac' and value >= 0 and value <= 1")" = 8
fi
check "the report splits every step into products, optimizer and the rest" \
    test "$(sed -n '/^## Where memlab.s step goes/,/^## /p' "$md" | grep -cE '^\| (softmax|linear) \| 64 \| (32|64) \| 1 \| (supervised|full) \| [0-9.]+ \| [0-9.]+ \([0-9]+%\) \|')" = 8
check "timings are ordered min <= median <= max" \
    test "$(q "$db" "select count(*) from metrics a join metrics m on m.run_id=a.run_id join metrics b on b.run_id=a.run_id
                     where a.name='step_s_min' and m.name='step_s_median' and b.name='step_s_max'
                     and a.value <= m.value and m.value <= b.value")" = 8
check "the full head computes every row, the supervised one N = L/16 per sequence" \
    test "$(q "$db" "select group_concat(v, ',') from (select m.value as v from metrics m
                     join runs r on r.id=m.run_id where m.name='head_rows'
                     and json_extract(r.config,'$.model.mixer')='softmax' order by r.id)")" = "128.0,2048.0,256.0,4096.0"
check "the mixers' activation memory matches the formula" \
    test "$(q "$db" "select count(*) from metrics a join metrics f on f.run_id=a.run_id
                     where a.name='act_mib_mixer_layer' and f.name='act_mib_formula'
                     and abs(a.value - f.value) < 1e-9")" = 8
# L 200 with chunk 64: four chunks, the last one short; forward saves the
# prefix states of the last three only (the first chunk's is zero).
"$memlab" bench --mixers linear --dims 64 --lens 200 --threads 1 --heads supervised --batch 2 \
    --steps 1 --min-steps 1 --no-torch --no-jobs --db "$tmp/la.db" --report "$tmp/la.md" 2>/dev/null
la_want=$(awk 'BEGIN { B = 2; T = 200; C = 64; H = 1; D = 64; l = 64
    n = 6 * B * T * C + B * T * H + B * H * (int((T + l - 1) / l) - 1) * (D * D + D)
    printf "%.9f", n * 4 / 1048576 }')
check "linear at L 200, chunk 64: activation memory = formula = B T 6C + B T H + B H (ceil(T/l) - 1) (D^2 + D)" \
    test "$(q "$tmp/la.db" "select printf('%.9f', a.value)||' '||printf('%.9f', f.value) from metrics a
                            join metrics f on f.run_id=a.run_id
                            where a.name='act_mib_mixer_layer' and f.name='act_mib_formula'")" = "$la_want $la_want"
check "no PyTorch metrics without the twin" \
    test "$(q "$db" "select count(*) from metrics where split='torch'")" = 0
check "the report has the targets, the tables and the scaling fit" \
    bash -c "grep -q '^## Targets' '$md' && grep -q '^## 1 thread' '$md' && grep -q '^## Memory at L 64' '$md' && grep -q '^## Cost scaling' '$md'"
check "the FMA peak and the step's fraction of it are positive on every run" \
    test "$(q "$db" "select count(*) from metrics f join metrics g on g.run_id=f.run_id
                     where f.name='fma_peak_gflops' and g.name='frac_fma_peak'
                     and f.value > 0 and g.value > 0")" = 8
check "the report states the measured FMA peak per thread count" \
    grep -qE '^The cores. limit, measured: independent (128|256|512)-bit fused multiply-adds on registers [0-9]+ GFLOP/s on 1 thread' "$md"
check "float32 runs record no bfloat16 peak" \
    test "$(q "$db" "select count(*) from metrics where name in ('bf16_peak_gflops','frac_bf16_peak')")" = 0
# bfloat16 products: the dot product's peak beside the FMA peak (where the CPU has it)
# (the release build targets this CPU, so it has the bf16 kernel wherever the CPU does)
if grep -qw avx512_bf16 /proc/cpuinfo; then
    "$memlab" bench --quick --mixers softmax --lens 32 --steps 1 --min-steps 1 --heads supervised \
        --matmul bf16 --no-torch --db "$tmp/bf.db" --report "$tmp/bf.md" >/dev/null 2>&1
    check "a bf16 run records the bfloat16 peak beside the FMA peak, and its fraction" \
        test "$(q "$tmp/bf.db" "select count(*) from metrics b join metrics f on f.run_id=b.run_id
                         join metrics g on g.run_id=b.run_id where b.name='bf16_peak_gflops'
                         and f.name='fma_peak_gflops' and g.name='frac_bf16_peak'
                         and b.value > 0 and f.value > 0 and g.value > 0")" = 1
    check "the bf16 report states the dot product's peak" \
        grep -qE 'The bfloat16 dot product \((VDPBF16PS|TDPBF16PS)\) of the bf16 products: [0-9]+ GFLOP/s on 1 thread' "$tmp/bf.md"
fi
# a pinned OPENBLAS_CORETYPE narrower than an AVX-512 CPU: kept, and said once
if grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo && grep -qw avx512dq /proc/cpuinfo; then
    OPENBLAS_CORETYPE=Haswell "$memlab" bench --quick --mixers softmax --lens 32 --steps 1 --min-steps 1 \
        --heads supervised --no-torch --db "$tmp/h.db" --report "$tmp/h.md" 2>"$tmp/herr" >/dev/null
    check "OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU: kept, noted once on stderr and in the report" \
        bash -c "test \$(grep -c 'OPENBLAS_CORETYPE=Haswell: OpenBLAS runs its Haswell kernels' '$tmp/herr') = 1 &&
                 grep -q '^\*\*Note:\*\* OPENBLAS_CORETYPE=Haswell' '$tmp/h.md' &&
                 grep -q 'core Haswell (OPENBLAS_CORETYPE)' '$tmp/h.md'"
    OPENBLAS_CORETYPE=SkylakeX "$memlab" bench --quick --mixers softmax --lens 32 --steps 1 --min-steps 1 \
        --heads supervised --no-torch --db "$tmp/s.db" --report "$tmp/s.md" 2>"$tmp/serr" >/dev/null
    check "OPENBLAS_CORETYPE=SkylakeX on an AVX-512 CPU: no note" \
        bash -c "! grep -q 'note: OPENBLAS_CORETYPE' '$tmp/serr' && ! grep -q '^\*\*Note:' '$tmp/s.md'"
fi
# the twin's script is found beside the executable from any working directory
(cd "$tmp" && "$memlab" bench --quick --mixers softmax --lens 32 --steps 1 --min-steps 1 \
    --heads supervised --python /bin/true --no-jobs --db "$tmp/tw.db" --report "$tmp/tw.md" \
    >"$tmp/twout" 2>&1)
check "run elsewhere, bench still finds tests/twin/bench_torch.py (and says why the twin failed)" \
    bash -c "! grep -q 'bench_torch.py not found' '$tmp/tw.md' '$tmp/twout' && grep -q 'PyTorch rows missing' '$tmp/tw.md'"
check "the report has one row per configuration" \
    test "$(grep -cE '^\| (softmax|linear) \| 64 \| (32|64) \| (supervised|full) \| [0-9]' "$md")" = 8
check "the report says why PyTorch and --jobs are missing" \
    bash -c "grep -q -- '--no-torch' '$md' && grep -q -- '--no-jobs' '$md'"

# a stand-in twin with known step times (tests/twin/fake_twin.sh): every ratio
# target missed, then every one met
fake=$root/tests/twin/fake_twin.sh
FAKE_TWIN_STEP_S=0.0005 FAKE_TWIN_FULL_S=0.001 "$memlab" bench --quick --mixers softmax,linear \
    --lens 32,64 --steps 2 --min-steps 2 --no-jobs --python "$fake" --db "$tmp/f.db" \
    --report "$tmp/f.md" >/dev/null 2>&1
check "with a twin faster than memlab: both ratio targets missed" \
    test "$(grep -cE '^\| memlab.* \| 0 of 4 configurations; worst [0-9.]+x .* \| missed \|$' "$tmp/f.md")" = 2
check "each miss is explained: one line per supervised row and target" \
    test "$(sed -n '/^## Why targets are missed/,/^## /p' "$tmp/f.md" | grep -cE '^- (softmax|linear) d 64 L (32|64), 1 thread: [0-9.]+x (the same head|PyTorch.s full head) \(target (2|10)x, short by [0-9]+%\)\. Step [0-9.]+ ms: products [0-9.]+ ms')" = 8
check "no bound lies below the ratio it bounds, and the SGEMM bound calls the target out of reach" \
    bash -c "sed -n '/^## Why targets are missed/,/^## /p' '$tmp/f.md' | grep '^- ' |
             sed -E 's/.*: ([0-9.]+)x (the same|PyTorch).*Bounds: ([0-9.]+)x with the rest free; ([0-9.]+)x with products at the SGEMM rate \(out of reach in float32\)\.\$/\1 \3 \4/' |
             awk 'NF != 3 || \$2 < \$1 || \$3 < \$1 { bad = 1 } END { exit bad || NR != 8 }'"
FAKE_TWIN_STEP_S=1000 "$memlab" bench --quick --mixers softmax --lens 32 --steps 1 --min-steps 1 \
    --no-jobs --python "$fake" --db "$tmp/g.db" --report "$tmp/g.md" >/dev/null 2>&1
check "with a twin far slower than memlab: both ratio targets met, no misses to explain" \
    bash -c "test \$(grep -cE '^\| memlab.* \| 1 of 1 configurations; .* \| met \|$' '$tmp/g.md') = 2 &&
             ! grep -q '^## Why targets are missed' '$tmp/g.md'"

# a twin killed in the middle of a run (as by the out-of-memory killer) is
# started again for the next configuration: only the first row lacks it
FAKE_TWIN_DIE_ONCE=$tmp/died FAKE_TWIN_STEP_S=0.0005 "$memlab" bench --quick --mixers softmax \
    --lens 32,64 --steps 1 --min-steps 1 --no-jobs --python "$fake" --db "$tmp/k.db" \
    --report "$tmp/k.md" 2>"$tmp/k.log" >/dev/null
check "a killed twin is reported with its signal, once, for the first row" \
    bash -c "grep -q '^- the twin was killed by signal 9 (out of memory?) (first: softmax d 64 L 32)' '$tmp/k.md' &&
             test \$(grep -c 'torch: the twin was killed' '$tmp/k.log') = 1"
check "the twin is started again: the other three rows have its step" \
    test "$(grep -cE '^\| softmax \| 64 \| (32|64) \| (supervised|full) \| [0-9.]+ .* \| [0-9.]+ \([0-9.]+–[0-9.]+, n 1\) \|' "$tmp/k.md")" = 3

# the --jobs sweep: 3 pairs of sweeps of 4 runs of 3 steps; one run records it
db=$tmp/j.db
md=$tmp/j.md
"$memlab" bench --mixers softmax --dims 64 --lens 32 --threads 1 --heads supervised --steps 1 \
    --min-steps 1 --budget 0 --no-torch --jobs-steps 3 --db "$db" --report "$md" 2>"$tmp/log"
check "a run with the --jobs sweep exits 0" test $? -eq 0
check "the sweep is one finished run named bench-jobs, its runs' config with 3 steps" \
    test "$(q "$db" "select count(*)||':'||json_extract(config,'$.train.steps')||':'||status from runs
                     where json_extract(config,'$.name')='bench-jobs'")" = "1:3:finished"
for metric in runs pairs steps_per_run wall_s_jobs1_median wall_s_jobs2_median speedup_jobs2 \
    speedup_jobs2_min speedup_jobs2_max; do
    check "metric jobs/$metric recorded once" \
        test "$(q "$db" "select count(*) from metrics where split='jobs' and name='$metric'")" = 1
done
check "the ratio is the ratio of the medians, within the pairs' range" \
    test "$(q "$db" "select abs(s.value - a.value / b.value) < 1e-9 and lo.value <= hi.value
                     and a.value > 0 and b.value > 0 from metrics s, metrics a, metrics b,
                     metrics lo, metrics hi where s.name='speedup_jobs2'
                     and a.name='wall_s_jobs1_median' and b.name='wall_s_jobs2_median'
                     and lo.name='speedup_jobs2_min' and hi.name='speedup_jobs2_max'")" = 1
check "the report states the --jobs target with the measured ratio" \
    grep -qE '^\| sweep of 4 independent runs of 3 steps, .* \| [0-9.]+x \(medians of 3 pairs' "$md"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
