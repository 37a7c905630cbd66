#!/usr/bin/env bash
# Set up (or update) the environments and run the whole test suite.
#
#   bash scripts/test.sh [pytest options]
#
# .venv is set up first (scripts/setup.sh). The OFA environment (.venv-ofa: modelscope,
# fairseq, transformers 4.57; ~4 min, or ~12 min when fairseq must be compiled) is built in
# the background while every other test runs; the OFA backend's tests run once it is ready.
# Its build log is .venv-ofa.log. The exit code is non-zero if any test or the build failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OFA_TESTS=tests/test_ofa_backend.py
LOG=.venv-ofa.log
echo "test: building .venv-ofa in the background (log: $LOG)"
bash scripts/setup_ofa_env.sh .venv-ofa >"$LOG" 2>&1 &
ofa_build=$!
status=0
.venv/bin/python -m pytest --ignore="$OFA_TESTS" "$@" || status=$?
echo "test: waiting for .venv-ofa"
if ! wait "$ofa_build"; then
  tail -n 40 "$LOG"
  echo "test: building .venv-ofa failed (full log: $LOG)" >&2
  exit 1
fi
tail -n 1 "$LOG"
.venv/bin/python -m pytest "$OFA_TESTS" "$@" || status=$?
exit "$status"
