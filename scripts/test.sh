#!/usr/bin/env bash
# One command on a fresh machine: install everything, then run the tests.
#   scripts/test.sh            fast suite (CI; minutes)
#   scripts/test.sh --slow     end-to-end runs on real models (EfficientNet-Lite0, MiniLM-L6, trained CNN)
#   scripts/test.sh --all      both
# Further arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/install.sh
marker="not slow"
case "${1:-}" in
    --slow) marker="slow"; shift ;;
    --all) marker=""; shift ;;
esac
set +e
if [ -n "$marker" ]; then
    .venv/bin/python -m pytest -q -o addopts="" -m "$marker" "$@"
else
    .venv/bin/python -m pytest -q -o addopts="" "$@"
fi
rc=$?
set -e
# pytest exits 5 when no test was collected: a selection that matches nothing is not a failure here.
if [ "$rc" -eq 5 ]; then
    echo "[test] no tests selected"
    exit 0
fi
exit "$rc"
