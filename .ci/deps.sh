#!/usr/bin/env bash
# Install the Debian packages memlab needs, if any is missing.
# As root: apt-get update + install. Otherwise: print the exact command, fail.
# EXTRA_DEPS adds packages (CI adds python3-torch for the PyTorch twin).
set -euo pipefail
need=(build-essential libopenblas-dev libsqlite3-dev libyaml-dev gnuplot-nox sqlite3 ${EXTRA_DEPS:-})
missing=()
for p in "${need[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    echo "memlab needs Debian packages that are not installed. Run as root:" >&2
    echo "  $cmd" >&2
    exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
