#!/usr/bin/env bash
# The whole test suite: lint, type check, then pytest (unit, property, conformance, interop).
# Usage: ./test.sh [pytest arguments...]   (run ./setup.sh once before)
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || { echo "test.sh: no .venv here; run ./setup.sh first" >&2; exit 2; }
echo "== ruff check"
.venv/bin/ruff check .
echo "== mypy tcpstack overlay testbeds"
.venv/bin/mypy tcpstack overlay testbeds
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
