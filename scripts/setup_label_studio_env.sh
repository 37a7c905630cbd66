#!/usr/bin/env bash
# Create (or complete) the separate venv in which Label Studio runs (human verification of
# VPWiki, paper §3 and Appendix A.6; README "Human verification with Label Studio").
#   usage: setup_label_studio_env.sh [VENV_DIR]      (default .venv-labelstudio)
# Label Studio pins Django 5.2, pyarrow 24, pytz 2022, ... which would clash with .venv, so it
# gets its own environment; vpmel itself never imports it (it reads and writes Label Studio's
# JSON). label-studio-sdk comes with it and drives the server in the integration test.
# Every package is pinned (scripts/label_studio/requirements.txt, transitive deps included);
# ~1 GB, about 75 s with a warm pip cache. Idempotent: re-running only does what is missing.
# Label Studio itself: scripts/label_studio/studio.py (serve / create / export).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-labelstudio}"
REQ=scripts/label_studio/requirements.txt
PY="${PYTHON:-python3}"
t0=$(date +%s)
step() { echo "[setup_label_studio_env $(( $(date +%s) - t0 ))s] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating venv $VENV with $($PY --version)"; "$PY" -m venv "$VENV"
fi
P="$VENV/bin/python"
stamp="$VENV/.vpmel-requirements"
if [ -f "$stamp" ] && cmp -s "$stamp" "$REQ"; then
  step "requirements already installed"
else
  step "installing label-studio and its pinned dependencies"
  # (this machine's pip config names local index folders that may be absent: not news)
  "$P" -m pip install --disable-pip-version-check -q -r "$REQ" 2>&1 \
    | { grep -v '^WARNING: Location .* is ignored' || true; }
  cp "$REQ" "$stamp"
fi

step "smoke test"
"$P" - <<'PYEOF'
import importlib.metadata as m
import label_studio, label_studio_sdk  # noqa: F401
print("OK label-studio", m.version("label-studio"), "label-studio-sdk", m.version("label-studio-sdk"),
      "django", m.version("django"))
PYEOF
step "done: $(du -sh "$VENV" | cut -f1) in $VENV"
