#!/bin/sh
# fake_twin.sh: stands in for the PyTorch twin in tests/cli_bench.sh (memlab bench
# --python tests/twin/fake_twin.sh), speaking bench_torch.py's server protocol
# without torch: every step reports FAKE_TWIN_STEP_S seconds (the full head
# FAKE_TWIN_FULL_S), so the report's ratios and misses are known in advance.
# With FAKE_TWIN_DIE_ONCE=FILE, the first build request of the run (FILE
# absent) creates FILE and kills the twin with signal 9, as the kernel's
# out-of-memory killer would.
step=${FAKE_TWIN_STEP_S:-0.001}
full=${FAKE_TWIN_FULL_S:-$step}
echo "ready torch 0.0-fake"
t=$step
while IFS= read -r line; do
    case $line in
    build*) if [ -n "$FAKE_TWIN_DIE_ONCE" ] && [ ! -e "$FAKE_TWIN_DIE_ONCE" ]; then
            : >"$FAKE_TWIN_DIE_ONCE"
            kill -9 $$
        fi ;;
    esac
    case $line in
    build*'"head":"full"'*) t=$full; echo ok ;;
    build*) t=$step; echo ok ;;
    step) echo "ok $t $t" ;;
    done) echo "ok 1" ;;
    *) echo "skip unknown request" ;;
    esac
done
