"""`vpmel link`: ranks the KB for a marked region; bad input is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_iier import tiny_encoder
from typer.testing import CliRunner

from vpmel.cli import app
from vpmel.iier import IIER, IIERConfig
from vpmel.iier_data import InputConfig, entity_batches, kb_side
from vpmel.link import Linker, LinkError, parse_box
from vpmel.retrieval import build_entity_store
from vpmel.schema import KB_SCHEMA, write_table

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = IIERConfig(d_v=8, d_t=12, d_c=6, text_global="mean", max_text_length=24)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-entity KB and an (untrained) IIER checkpoint that reads no VLM answers."""
    root = tmp_path_factory.mktemp("link")
    g = np.random.default_rng(0)
    rows = []
    for i in range(12):
        rel = f"images/kb/Q{i}.png"
        (root / "data/dataset" / rel).parent.mkdir(parents=True, exist_ok=True)
        colour = tuple(int(c) for c in g.integers(0, 255, 3))
        Image.new("RGB", (20, 20), colour).save(root / "data/dataset" / rel)
        etype = "Misc" if i % 2 else None
        rows.append({"qid": f"Q{i}", "name": f"thing {i}", "type": etype,
                     "description": "a thing", "images": [rel]})  # fmt: skip
    write_table(pd.DataFrame(rows), KB_SCHEMA, root / "data/dataset/kb.parquet")
    torch.manual_seed(0)
    model = IIER(tiny_encoder(root / "tok"), CFG)
    inputs = InputConfig(use_answers=False, max_text_length=CFG.max_text_length)
    model.save(root / "models/iier", {"inputs": vars(inputs)})
    Image.new("RGB", (64, 48), (200, 200, 200)).save(root / "photo.png")
    return root


def _linker(root: Path) -> Linker:
    return Linker(root / "models/iier", root / "data/dataset", None, root / "cache")


def test_link_ranks_the_whole_kb_with_the_evaluation_scores(project: Path) -> None:
    linker = _linker(project)
    result = linker.link(project / "photo.png", [10, 5, 40, 30], "a thing on a table", top_k=12)
    scores = [e.score for e in result.entities]
    assert len(scores) == 12 and scores == sorted(scores, reverse=True)
    assert {e.qid for e in result.entities} == {f"Q{i}" for i in range(12)}
    assert result.answer is None and result.m_w == ""
    # the cached KB index equals a freshly built one, and a second start-up reuses it
    model = linker.model
    enc = model.encoder
    side = kb_side(linker.kb, project / "data/dataset", enc.tokenizer, enc.pixel_values,
                   enc.image_size, linker.inputs, False)  # fmt: skip
    fresh = build_entity_store(model, entity_batches(side, 0, 12, 64), 12, side.texts.width)
    for name, value in vars(fresh).items():
        torch.testing.assert_close(getattr(linker.store, name), value)
    assert len(list((project / "cache/kb_index").glob("*.safetensors"))) == 1
    again = _linker(project).link(project / "photo.png", [10, 5, 40, 30], "a thing on a table", 3)
    assert [e.qid for e in again.entities] == [e.qid for e in result.entities[:3]]
    assert abs(again.entities[0].score - scores[0]) < 1e-5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.png", "--box", "1,1,5,5"], "missing"),
        (["photo.png", "--box", "10,5,80,30"], "outside the image"),
        (["photo.png", "--box", "10,5,5,30"], "empty or inverted"),
        (["photo.png", "--box", "1,2,3"], "four numbers"),
        (["photo.png", "--box", "1,1,5,5", "--model", "nowhere"], "no trained IIER checkpoint"),
    ],
)
def test_bad_input_is_one_clear_line(project: Path, args: list[str], message: str) -> None:
    args = [str(project / a) if a.endswith(".png") else a for a in args]
    if "--model" not in args:
        args += ["--model", str(project / "models/iier")]
    args += ["--dataset", str(project / "data/dataset"), "--cache", str(project / "cache")]
    result = CliRunner().invoke(app, ["link", *args, "--no-vlm", "--params", "none.yaml"])
    assert result.exit_code == 1
    out = result.output.strip()
    assert message in out and out.startswith("vpmel link: error:"), out
    assert "Traceback" not in out


def test_cli_prints_json(project: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["link", str(project / "photo.png"), "--box", "10,5,40,30", "--json", "--top-k", "2",
         "--model", str(project / "models/iier"), "--dataset", str(project / "data/dataset"),
         "--cache", str(project / "cache"), "--no-vlm", "--params", "none.yaml"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{") :])
    assert [e["rank"] for e in out["entities"]] == [1, 2]


def test_parse_box() -> None:
    assert parse_box("1, 2,3.5,4") == [1.0, 2.0, 3.5, 4.0]
    with pytest.raises(LinkError):
        parse_box("a,b,c,d")
