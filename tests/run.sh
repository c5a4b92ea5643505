#!/usr/bin/env bash
# tests/run.sh BUILD_DIR: every test of memlab, one closing line.
#   1. the PyTorch twin regenerates its fixtures into BUILD_DIR/../twin when
#      torch is importable (the committed tests/fixtures are checked always);
#   2. the unit tests (double-precision kernels): BUILD_DIR/test_units;
#   3. the command-line tests against the release binary: tests/cli*.sh.
# Prints "N passed, N failed" summed over all parts; exits 1 on any failure.
set -u
build=${1:-build/release}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
passed=0
failed=0

count() { # add the closing line of a part's output to the totals
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
    if [[ -z "$line" ]]; then
        echo "FAIL $2: no closing line (crashed?)"
        failed=$((failed + 1))
        return
    fi
    passed=$((passed + $(echo "$line" | cut -d' ' -f1)))
    failed=$((failed + $(echo "$line" | cut -d' ' -f3)))
}

twin_dir=build/twin
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    echo "== PyTorch twin: regenerating fixtures into $twin_dir"
    rm -rf "$twin_dir"
    if /usr/bin/python3 tests/twin/twin.py "$twin_dir" &&
        /usr/bin/python3 tests/twin/twin_slots.py "$twin_dir" &&
        /usr/bin/python3 tests/twin/twin_memcache.py "$twin_dir"; then
        passed=$((passed + 1))
    else
        echo "FAIL twin.py, twin_slots.py or twin_memcache.py"
        failed=$((failed + 1))
    fi
else
    echo "== PyTorch twin: torch not importable, checking the committed fixtures only"
    rm -rf "$twin_dir"
fi

out=$(mktemp)
echo "== unit tests ($build/test_units)"
MEMLAB_TESTS=tests "$build/test_units" | tee "$out"
count "$out" "unit tests"

for script in tests/cli*.sh; do
    echo "== command-line tests: $script"
    bash "$script" "$build/memlab" | tee "$out"
    count "$out" "$script"
done
rm -f "$out"

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
