#!/usr/bin/env bash
# Set up (or update) the environments and run the whole test suite.
#
#   bash scripts/test.sh [pytest options]
#
# .venv is set up first (scripts/setup.sh). The OFA environment (.venv-ofa: modelscope,
# fairseq, transformers 4.57; ~4 min, or ~12 min when fairseq must be compiled) and Label
# Studio's (.venv-labelstudio: label-studio + label-studio-sdk; ~1 min) are built in the
# background while every other test runs; the OFA backend's tests and the Label Studio
# round trip (a real server on localhost) run once they are ready. Build logs: .venv-ofa.log,
# .venv-labelstudio.log. The exit code is non-zero if any test or build failed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OFA_TESTS=tests/test_ofa_backend.py
LOG=.venv-ofa.log
LS_TESTS=tests/test_label_studio_server.py
LS_ENV=.venv-labelstudio
LS_LOG=.venv-labelstudio.log
echo "test: building .venv-ofa in the background (log: $LOG)"
bash scripts/setup_ofa_env.sh .venv-ofa >"$LOG" 2>&1 &
ofa_build=$!
echo "test: building $LS_ENV in the background (log: $LS_LOG)"
bash scripts/setup_label_studio_env.sh "$LS_ENV" >"$LS_LOG" 2>&1 &
ls_build=$!
status=0
.venv/bin/python -m pytest --ignore="$OFA_TESTS" --ignore="$LS_TESTS" "$@" || status=$?
echo "test: waiting for .venv-ofa"
if ! wait "$ofa_build"; then
  tail -n 40 "$LOG"
  echo "test: building .venv-ofa failed (full log: $LOG)" >&2
  exit 1
fi
tail -n 1 "$LOG"
.venv/bin/python -m pytest "$OFA_TESTS" "$@" || status=$?
echo "test: waiting for $LS_ENV"
if ! wait "$ls_build"; then
  tail -n 40 "$LS_LOG"
  echo "test: building $LS_ENV failed (full log: $LS_LOG)" >&2
  exit 1
fi
tail -n 1 "$LS_LOG"
# the environment the background build made (the test builds one itself where it is missing)
ls_status=0
VPMEL_LABEL_STUDIO_ENV="$PWD/$LS_ENV" .venv/bin/python -m pytest "$LS_TESTS" "$@" || ls_status=$?
if [ "$ls_status" != 0 ] && [ "$ls_status" != 5 ]; then  # 5: pytest options selected none
  status=$ls_status
fi
exit "$status"
