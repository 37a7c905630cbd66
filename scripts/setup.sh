#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv.
#
# The CPU build of PyTorch is installed first (torch==2.13.0); the project itself asks only
# for torch>=2.4, so pip keeps whatever torch is already there. A GPU user installs the CUDA
# build of torch they want into .venv first and runs this script with VPMEL_TORCH=keep.
#
# --ofa also builds .venv-ofa, the separate environment of modelscope's OFA (the paper's
# annotation models need fairseq and transformers 4.57): about 10 minutes the first time.
set -euo pipefail
WITH_OFA=0
for arg in "$@"; do
  case "$arg" in
    --ofa) WITH_OFA=1 ;;
    *) echo "usage: $0 [--ofa]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VPMEL_VENV:-.venv}
TORCH=${VPMEL_TORCH:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$TORCH" != "keep" ]; then
  echo "setup: installing $TORCH"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$TORCH"
fi
echo "setup: installing vpmel with its dev extra"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
"$VENV/bin/python" -c "import torch, vpmel; print(f'setup: ok (torch {torch.__version__}, vpmel {vpmel.__version__})')"
if [ "$WITH_OFA" = 1 ]; then
  bash scripts/setup_ofa_env.sh .venv-ofa
fi
