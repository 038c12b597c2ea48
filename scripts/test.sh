#!/usr/bin/env bash
# Set up (idempotent), lint, then run the test suite. Exit 5 (no tests collected) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
.venv/bin/ruff check enlightengan pipelines tests benchmarks docs/hooks || exit 1
.venv/bin/python -m pytest -q -m "not slow and not gpu and not heavy" --timeout=900 --durations=15 "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "no tests were collected: failing" >&2
  exit 1
fi
exit "$status"
