#!/usr/bin/env bash
# Fetch timm's own test suite (tests/ of timm's source distribution on PyPI) for the timm version of the lock,
# into CACHE_DIR/timm-tests-<version>/tests, where tests/test_timm_suite.py runs its test_models.py on OverLoCK.
# Idempotent: a present copy (keyed by the version) is kept. Without network it says so and exits 0 (the test
# then skips, naming this script).
#   tools/env/fetch_timm_tests.sh CACHE_DIR [PYTHON]      (PYTHON: the pip to download with, default python3)
set -euo pipefail

if [ $# -lt 1 ]; then echo "usage: $0 CACHE_DIR [PYTHON]" >&2; exit 2; fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=$1
python=${2:-python3}
version=$(grep -hE '^timm==' "$root"/requirements/lock/cpu-nodeps.txt | head -n1 | cut -d= -f3)
if [ -z "$version" ]; then echo "[fetch_timm_tests] no timm pin in requirements/lock/cpu-nodeps.txt" >&2; exit 1; fi
dest="$cache/timm-tests-$version"
if [ -f "$dest/.complete" ]; then exit 0; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! "$python" -m pip --disable-pip-version-check -q download --no-deps --no-binary :all: \
        "timm==$version" -d "$tmp" >/dev/null 2>&1; then
    echo "[fetch_timm_tests] could not download timm==$version's sdist (offline?); timm's model tests will skip"
    exit 0
fi
tar -xzf "$tmp"/timm-"$version".tar.gz -C "$tmp" "timm-$version/tests"
rm -rf "$dest"
mkdir -p "$dest"
mv "$tmp/timm-$version/tests" "$dest/tests"
touch "$dest/.complete"
echo "[fetch_timm_tests] timm==$version tests in $dest/tests"
