"""The `ofa` backend for real: modelscope's OFA pipelines in their own environment.

The OFA environment (`bash scripts/setup_ofa_env.sh .venv-ofa`, run by `.ci/run`) is
required; without it these tests fail with the command that builds it. Tiny randomly
initialised OFA folders in modelscope's layout are built here, so nothing is downloaded;
the answers are meaningless, but every piece of the real code path runs: our client, the
runner, modelscope's pipeline, preprocessor, model and box decoding.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpmel.vpwiki.annotation_backend import Request
from vpmel.vpwiki.ofa_backend import OfaBackend, resolve_model

REPO = Path(__file__).resolve().parents[1]
ENV = Path(os.environ.get("VPMEL_OFA_ENV", REPO / ".venv-ofa"))
PYTHON = ENV / "bin" / "python"
MAKE_TINY = REPO / "scripts" / "ofa" / "make_tiny_ofa.py"


@pytest.fixture(scope="module")
def tiny_ofa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not PYTHON.is_file():
        pytest.fail(f"no OFA environment at {ENV}: run `bash scripts/setup_ofa_env.sh {ENV}`")
    root = tmp_path_factory.mktemp("ofa")
    folders = []
    for task in ("visual_entailment", "visual_grounding"):
        out = root / task
        proc = subprocess.run(
            [str(PYTHON), str(MAKE_TINY), str(out), task], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (out / "configuration.json").is_file()
        folders.append(out)
    return folders[0], folders[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("img")
    paths = []
    for i, size in enumerate([(320, 240), (90, 160)]):
        rng = np.random.default_rng(i)
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        paths.append(root / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_entailment_returns_probabilities(tiny_ofa, images) -> None:
    backend = OfaBackend(PYTHON, *tiny_ofa)
    p = backend.entail([Request(images[0], "a dog"), Request(images[1], "two red flags")])
    assert p.shape == (2,)
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()


def test_grounding_returns_boxes_in_image_pixels(tiny_ofa, images) -> None:
    backend = OfaBackend(PYTHON, *tiny_ofa)
    boxes, scores = backend.ground([Request(images[0], "the dog"), Request(images[1], "a flag")])
    assert boxes.shape == (2, 4) and np.isfinite(boxes).all() and np.isfinite(scores).all()
    for (x1, y1, x2, y2), path in zip(boxes, images, strict=True):
        w, h = Image.open(path).size
        assert 0 <= x1 <= w and 0 <= x2 <= w and 0 <= y1 <= h and 0 <= y2 <= h


def test_missing_environment_and_model_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="setup_ofa_env"):
        OfaBackend(tmp_path / "nope" / "python", tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match="modelscope download"):
        resolve_model("damo/ofa_visual-grounding_refcoco_large_en", tmp_path)
