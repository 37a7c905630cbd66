#!/usr/bin/env bash
# Create (or complete) a separate venv in which modelscope's OFA pipelines
# (visual entailment / visual grounding) run on CPU, offline.
#   usage: setup_ofa_env.sh VENV_DIR
# Idempotent: re-running only does what is missing.
# Needs: python3.11 with venv, gcc/g++ + Python headers (fairseq-fixed is an
# sdist with C++/Cython extensions), pip access to PyPI, and the local CPU
# torch 2.13.0 wheel that pip finds via /opt/wheels on this machine kind.
# Env: OFA_WHEEL_CACHE (default ~/.cache/ofa-wheels) keeps the built
#      fairseq-fixed wheel so a second venv skips the ~7.5 min compile.
set -euo pipefail
VENV="${1:?usage: $0 VENV_DIR}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/ofa" && pwd)"
CACHE="${OFA_WHEEL_CACHE:-$HOME/.cache/ofa-wheels}"
PY="${PYTHON:-python3}"
mkdir -p "$CACHE"
t0=$(date +%s)
step() { echo "[setup_ofa_env $(( $(date +%s) - t0 ))s] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating venv $VENV"; "$PY" -m venv "$VENV"
fi
P="$VENV/bin/python"
PIP=("$P" -m pip install --disable-pip-version-check -q)
have() { "$P" -m pip show -q "$1" >/dev/null 2>&1; }
pyver() { "$P" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }

# 1. torch: the CPU build (local wheel). Never let pip pick a CUDA build.
if [ "$(pyver torch)" != "2.13.0+cpu" ]; then
  step "torch==2.13.0 (CPU)"; "${PIP[@]}" torch==2.13.0
fi
[ "$(pyver torch)" = "2.13.0+cpu" ] || { echo "expected torch 2.13.0+cpu, got $(pyver torch)"; exit 1; }

# 2. torchvision/torchaudio from PyPI are CUDA-linked; install WITHOUT deps
#    (deps would drag in another, CUDA, torch) and neutralise their C exts.
if [ "$(pyver torchvision)" != "0.28.0" ]; then
  step "torchvision==0.28.0 --no-deps"; "${PIP[@]}" --no-deps torchvision==0.28.0
fi
if [ "$(pyver torchaudio)" != "2.11.0" ]; then
  step "torchaudio==2.11.0 --no-deps"; "${PIP[@]}" --no-deps torchaudio==2.11.0
fi
"$P" "$HERE/patch_torchvision.py"
"$P" - <<'EOF'
import glob, os, importlib.util
d = os.path.dirname(importlib.util.find_spec('torchaudio').origin)
for so in glob.glob(os.path.join(d, 'lib', '*.so')):
    os.rename(so, so + '.disabled')   # CUDA-linked; pure-python torchaudio remains
    print('disabled', so)
EOF

# 3. everything else, pinned (transitive deps included). torch/torchvision
#    are listed so pip keeps what is installed.
step "pinned python deps"
"${PIP[@]}" -r "$HERE/requirements-ofa.txt"

# 4. fairseq-fixed 0.12.3.1 (py3.11-compatible fork of fairseq 0.12.2):
#    modelscope's ofa/__init__ imports modeling_mmspeech -> fairseq, and
#    preprocessors/ofa/asr.py imports fairseq.data.audio, so it is mandatory.
if [ "$(pyver fairseq-fixed)" != "0.12.3.1" ]; then
  whl=$(ls "$CACHE"/fairseq_fixed-0.12.3.1-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    step "building fairseq-fixed wheel (C++/Cython, ~7-8 min on 2 cores)"
    # no build isolation: build against the installed CPU torch (an isolated
    # build env would fetch a CUDA torch); no CUDA_HOME: skip CUDA kernels.
    env -u CUDA_HOME MAX_JOBS="${MAX_JOBS:-2}" "$P" -m pip wheel -q \
      --no-deps --no-build-isolation -w "$CACHE" fairseq-fixed==0.12.3.1
    whl=$(ls "$CACHE"/fairseq_fixed-0.12.3.1-*.whl | head -1)
  fi
  step "installing $whl"; "${PIP[@]}" --no-deps "$whl"
fi

# 5. smoke test: imports on the OFA pipeline path
step "smoke test"
"$P" - <<'EOF'
import torch, torchvision, torchaudio, transformers, fairseq, modelscope
from torchvision import transforms
from modelscope.models.multi_modal import OfaForAllTasks
from modelscope.preprocessors import OfaPreprocessor
from modelscope.pipelines.multi_modal.visual_entailment_pipeline import VisualEntailmentPipeline
from modelscope.pipelines.multi_modal.visual_grounding_pipeline import VisualGroundingPipeline
print('OK torch', torch.__version__, 'torchvision', torchvision.__version__,
      'transformers', transformers.__version__, 'modelscope', modelscope.__version__,
      'fairseq', fairseq.__version__)
EOF
step "done: $(du -sh "$VENV" | cut -f1) in $VENV"
