"""`vpmel link`: ranks the KB for marked regions; bad input is one clear line, found before
any model loads; --batch loads the model once for many regions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_iier import tiny_encoder
from typer.testing import CliRunner

from vpmel.cli import app
from vpmel.data.schema import KB_SCHEMA, write_table
from vpmel.iier.checkpoint import encoder_fingerprint
from vpmel.iier.data import InputConfig, entity_batches, kb_side
from vpmel.iier.model import IIER, IIERConfig
from vpmel.iier.retrieval import build_entity_store
from vpmel.link import Linker, LinkError, LinkResult, Region, parse_box, read_batch

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
    photo = Image.new("RGB", (80, 60), (20, 90, 160))
    photo.paste((250, 200, 0), (40, 10, 70, 50))
    (root / "more").mkdir()
    photo.save(root / "more/street.jpg")
    (root / "not_an_image.png").write_text("<html>404 not found</html>")
    _write_lines(root / "good.jsonl", [line for line, _ in GOOD_LINES])
    return root


#: (line, the same region as `vpmel link` arguments)
GOOD_LINES = [
    ({"id": "a", "image": "photo.png", "box": [10, 5, 40, 30], "text": "a thing on a table"},
     ["photo.png", "--box", "10,5,40,30", "--text", "a thing on a table"]),
    ({"id": 7, "image": "more/street.jpg", "box": "40,10,70,50", "shape": "ellipse"},
     ["more/street.jpg", "--box", "40,10,70,50", "--shape", "ellipse"]),
    ({"image": "photo.png", "box": [0, 0, 64, 48], "text": "the whole photo"},
     ["photo.png", "--box", "0,0,64,48", "--text", "the whole photo"]),
]  # fmt: skip


def _write_lines(path: Path, lines: list[dict | str]) -> Path:
    rows = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(rows) + "\n")
    return path


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


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every IIER.load (the model load that bad input must never wait for)."""
    calls: list[Path] = []
    real = IIER.load.__func__

    def load(cls, folder: Path, encoder_dir: Path | None = None):
        calls.append(Path(folder))
        return real(cls, folder, encoder_dir)

    monkeypatch.setattr(IIER, "load", classmethod(load))
    return calls


def _invoke(project: Path, *args: str) -> tuple[int, str]:
    """``vpmel link ARGS`` against the project; files named *.png / *.jsonl are in it."""
    args_ = [str(project / a) if a.endswith((".png", ".jpg", ".jsonl")) else a for a in args]
    if "--model" not in args_:
        args_ += ["--model", str(project / "models/iier")]
    if "--dataset" not in args_:
        args_ += ["--dataset", str(project / "data/dataset")]
    if "--detective" not in args_:
        args_ += ["--no-vlm"]
    args_ += ["--cache", str(project / "cache"), "--params", "none.yaml"]
    result = CliRunner().invoke(app, ["link", *args_])
    return result.exit_code, result.output


BAD_INPUT = [
    (["missing.png", "--box", "1,1,5,5"], "missing"),
    (["not_an_image.png", "--box", "1,1,5,5"], "unreadable"),
    (["photo.png", "--box", "10,5,80,30"], "outside the image (64 x 48 pixels)"),
    (["photo.png", "--box", "10,5,5,30"], "empty or inverted"),
    (["photo.png", "--box", "1,2,3"], "four numbers"),
    (["photo.png", "--box", "1,2,3,nan"], "four numbers"),
    (["photo.png", "--box", "1,1,5,5", "--shape", "star"], "prompt shape 'star'"),
    (["photo.png", "--box", "1,1,5,5", "--model", "nowhere"], "no trained IIER checkpoint"),
    (["photo.png", "--box", "1,1,5,5", "--dataset", "nowhere"], "no kb.parquet"),
    (["photo.png", "--box", "1,1,5,5", "--save-prompted", "/nowhere/p.png"],
     "the folder /nowhere does not exist"),
    (["photo.png", "--box", "1,1,5,5", "--save-prompted", "p.txt"], "'.txt' is not an image"),
    (["photo.png", "--box", "1,1,5,5", "--save-prompted", "p.xbm"], "cannot write RGB images"),
    (["photo.png", "--box", "1,1,5,5", "--save-prompted", "/tmp"], "is a folder"),
    (["photo.png", "--box", "1,1,5,5", "--out", "o.jsonl"], "--out goes with --batch"),
    (["photo.png"], "give IMAGE and --box"),
    ([], "give IMAGE and --box"),
    (["photo.png", "--box", "1,1,5,5", "--batch", "good.jsonl"], "give either IMAGE"),
    (["--batch", "nothing.jsonl"], "cannot read it"),
    (["--batch", "good.jsonl", "--out", "/nowhere/o.jsonl"], "the folder /nowhere does not"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD_INPUT)
def test_bad_input_is_one_clear_line_before_any_model_loads(
    project: Path, loads: list[Path], args: list[str], message: str
) -> None:
    code, out = _invoke(project, *args)
    assert code == 1
    assert out.startswith("vpmel link: error:") and message in out, out
    assert len(out.strip().splitlines()) == 1, out
    assert loads == []


def test_a_broken_checkpoint_or_a_missing_detective_is_found_before_loading(
    project: Path, loads: list[Path], tmp_path: Path
) -> None:
    reads_answers = tmp_path / "iier"
    shutil.copytree(project / "models/iier", reads_answers)
    meta = json.loads((reads_answers / "iier.json").read_text())
    meta["extra"]["inputs"]["use_answers"] = True
    (reads_answers / "iier.json").write_text(json.dumps(meta))
    no_vlm = ["photo.png", "--box", "1,1,5,5", "--model", str(reads_answers)]
    code, out = _invoke(project, *no_vlm, "--detective", str(tmp_path / "nowhere"))
    assert code == 1 and "no tuned Detective-VLM" in out and len(out.splitlines()) == 1, out
    (reads_answers / "iier.safetensors").unlink()
    code, out = _invoke(project, *no_vlm)
    assert code == 1 and "incomplete IIER checkpoint, it has no iier.safetensors" in out, out
    (reads_answers / "iier.json").write_text("{not json")
    code, out = _invoke(project, *no_vlm)
    assert code == 1 and "not a readable IIER checkpoint" in out, out
    assert loads == []


def test_the_encoder_a_checkpoint_refers_to_is_checked_before_loading(
    project: Path, loads: list[Path], tmp_path: Path
) -> None:
    """A `train` output (read by its first seed) whose checkpoint refers to its encoder
    folder: a missing folder, or one other than the trained encoder, is one line before any
    model loads; --encoder names the folder instead of the recorded one."""
    ckpt = tmp_path / "iier/seed_0"
    shutil.copytree(project / "models/iier", ckpt)
    encoder = tmp_path / "moved"
    shutil.move(ckpt / "encoder", encoder)
    meta = json.loads((ckpt / "iier.json").read_text())
    recorded = str(tmp_path / "models/encoder")  # where it was when trained: gone now
    meta["encoder"] = {"path": recorded, "sha1": encoder_fingerprint(encoder)}
    (ckpt / "iier.json").write_text(json.dumps(meta))
    args = ["photo.png", "--box", "1,1,5,5", "--model", str(tmp_path / "iier"), "--json"]
    code, out = _invoke(project, *args)
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert f"its encoder folder {recorded} does not exist" in out and "--encoder DIR" in out
    (encoder / "note.txt").write_text("not the trained encoder")
    code, out = _invoke(project, *args, "--encoder", str(encoder))
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert "has sha1" in out and meta["encoder"]["sha1"] in out
    assert loads == []
    (encoder / "note.txt").unlink()
    code, out = _invoke(project, *args, "--encoder", str(encoder))
    assert code == 0, out
    assert loads == [tmp_path / "iier"]


def test_bad_input_never_imports_torch(project: Path) -> None:
    """The checks run on Pillow and numpy alone: a mistake costs no torch/transformers start."""
    code = (
        "import sys\nfrom vpmel.cli import app\ntry:\n    app(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    print(e.code, [m for m in ('torch', 'transformers', 'pandas') if m in sys.modules])"
    )
    args = ["link", str(project / "missing.png"), "--box", "1,1,5,5", "--no-vlm", "--model",
            str(project / "models/iier"), "--dataset", str(project / "data/dataset")]  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert run.stdout.strip() == "1 []", run.stdout + run.stderr
    assert run.stderr.startswith("vpmel link: error:") and "missing.png" in run.stderr


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
    assert parse_box([1, 2, 3.5, "4"]) == [1.0, 2.0, 3.5, 4.0]
    for bad in ("a,b,c,d", "1,2,3", [1, 2, 3, True], [1, 2, 3, None], "1,2,3,inf", 5, None):
        with pytest.raises(LinkError, match="four numbers"):
            parse_box(bad)


def test_save_prompted_writes_the_prompted_image(project: Path, tmp_path: Path) -> None:
    target = tmp_path / "prompted.PNG"
    code, out = _invoke(project, "photo.png", "--box", "10,5,40,30", "--save-prompted",
                        str(target))  # fmt: skip
    assert code == 0, out
    with Image.open(target) as saved:
        assert saved.format == "PNG" and saved.size == (64, 48)
        assert saved.getpixel((10, 17)) == (255, 0, 0)  # the red box
        assert saved.getpixel((20, 17)) == (200, 200, 200)


def test_a_failed_save_after_ranking_still_prints_the_ranking(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = Image.Image.save

    def disk_full(self: Image.Image, fp, *args, **kwargs) -> None:
        if isinstance(fp, str | Path):  # the check before loading writes to memory only
            raise OSError(28, "No space left on device")
        real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", disk_full)
    target = tmp_path / "prompted.png"
    code, out = _invoke(project, "photo.png", "--box", "10,5,40,30", "--json", "--top-k", "3",
                        "--save-prompted", str(target))  # fmt: skip
    assert code == 1
    ranking, error = out[: out.rindex("vpmel link:")], out[out.rindex("vpmel link:") :]
    assert [e["rank"] for e in json.loads(ranking)["entities"]] == [1, 2, 3]
    assert error.startswith(f"vpmel link: error: --save-prompted {target}: not saved")
    assert "No space left on device" in error and len(error.strip().splitlines()) == 1
    assert not target.exists()


def _single(project: Path, args: list[str]) -> dict:
    code, out = _invoke(project, *args, "--json", "--top-k", "4")
    assert code == 0, out
    return json.loads(out[out.index("{") :])


def test_batch_links_every_good_line_like_link_and_reports_every_bad_one(
    project: Path, loads: list[Path], tmp_path: Path
) -> None:
    lines = [
        GOOD_LINES[0][0],
        '{"image": "photo.png", "box": [1, 1, 5, 5',  # cut short
        GOOD_LINES[1][0],
        "",  # blank lines are skipped
        {"id": "gone", "image": "missing.png", "box": [1, 1, 5, 5]},
        {"id": "big", "image": "photo.png", "box": [10, 5, 80, 30]},
        GOOD_LINES[2][0],
    ]
    batch = _write_lines(tmp_path / "batch.jsonl", lines)
    (tmp_path / "photo.png").symlink_to(project / "photo.png")
    (tmp_path / "more").symlink_to(project / "more")
    out_file = tmp_path / "results.jsonl"
    code, out = _invoke(project, "--batch", str(batch), "--out", str(out_file), "--top-k", "4")
    assert code == 1
    assert loads == [project / "models/iier"]  # loaded once for all lines
    assert out.strip().splitlines()[-1].startswith("vpmel link: linked 3, failed 3 in ")
    results = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["line"] for r in results] == [1, 2, 3, 5, 6, 7]
    assert [r["id"] for r in results] == ["a", None, 7, "gone", "big", None]
    errors = {r["line"]: r["error"] for r in results if "error" in r}
    assert errors[2].startswith("line 2: bad JSON")
    assert errors[5].startswith("line 5: ") and "missing" in errors[5]
    assert errors[6] == "line 6: box [10.0, 5.0, 80.0, 30.0] is outside the image (64 x 48 pixels)"
    for line in (2, 5, 6):  # each failed line is also said on stderr, one line each
        assert f"{batch}: line {line}: " in out
    good = [r for r in results if "error" not in r]
    for result, (_, args) in zip(good, GOOD_LINES, strict=True):
        single = _single(project, args)
        assert result["answer"] is None and result["m_w"] == single["m_w"] == ""
        assert [e["qid"] for e in result["entities"]] == [e["qid"] for e in single["entities"]]
        for ours, theirs in zip(result["entities"], single["entities"], strict=True):
            assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
    # the ellipse changes the prompted image, so its scores differ from a box's
    box = _single(project, [GOOD_LINES[1][1][0], "--box", "40,10,70,50"])
    assert [e["score"] for e in box["entities"]] != [e["score"] for e in good[1]["entities"]]


def test_batch_of_good_lines_prints_to_stdout_and_a_bad_batch_loads_nothing(
    project: Path, loads: list[Path], tmp_path: Path
) -> None:
    code, out = _invoke(project, "--batch", "good.jsonl")
    assert code == 0, out
    assert len(loads) == 1
    results = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["line"] for r in results] == [1, 2, 3] and all(
        len(r["entities"]) == 5 for r in results
    )
    assert "linked 3, failed 0" in out
    bad_lines = [
        ["not", "an", "object"],
        {"box": [1, 1, 2, 2]},
        {"image": "x.png", "box": [1, 1, 2, 2], "text": 3},
    ]
    bad = _write_lines(tmp_path / "bad.jsonl", bad_lines)
    code, out = _invoke(project, "--batch", str(bad))
    assert code == 1 and len(loads) == 1, out
    errors = [json.loads(line)["error"] for line in out.splitlines() if line.startswith("{")]
    assert errors == ["line 1: expected a JSON object with image, box, text, id, shape",
                      "line 2: no 'image'", "line 3: 'text' must be a string, got 3"]  # fmt: skip
    assert "linked 0, failed 3" in out


def test_read_batch_keeps_decoded_images_within_its_budget(project: Path) -> None:
    lines = read_batch(project / "good.jsonl")
    assert [line.region.loaded is not None for line in lines] == [True, True, True]
    assert lines[0].region.loaded is lines[2].region.loaded  # one decode per image
    assert lines[1].region.style.shape == "ellipse" and lines[0].region.style.shape == "box"
    lean = read_batch(project / "good.jsonl", keep_bytes=64 * 48 * 3)
    assert [line.region.loaded is not None for line in lean] == [True, False, True]


def test_link_many_reports_a_region_that_went_bad_and_links_the_rest(
    project: Path, tmp_path: Path
) -> None:
    linker = _linker(project)
    regions = [
        Region(project / "photo.png", [10, 5, 40, 30], "a thing on a table"),
        Region(tmp_path / "deleted.png", [1, 1, 5, 5]),
        Region(project / "photo.png", [0, 0, 64, 48], "the whole photo"),
    ]
    results = list(linker.link_many(regions, top_k=3, batch_size=2))
    assert [type(r) for r in results] == [LinkResult, LinkError, LinkResult]
    assert "deleted.png" in str(results[1])
    alone = linker.link(project / "photo.png", [0, 0, 64, 48], "the whole photo", top_k=3)
    assert [e.qid for e in results[2].entities] == [e.qid for e in alone.entities]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_kb_index_file_mode_follows_the_umask(
    project: Path, tmp_path: Path, umask: int
) -> None:
    before = os.umask(umask)
    try:
        Linker(project / "models/iier", project / "data/dataset", None, tmp_path / "cache")
    finally:
        os.umask(before)
    (index,) = (tmp_path / "cache/kb_index").iterdir()  # no temporary file left behind
    assert index.suffix == ".safetensors"
    assert index.stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_unwritable_cache_is_a_warning_not_a_failure(project: Path) -> None:
    linker = Linker(project / "models/iier", project / "data/dataset", None,
                    project / "photo.png/cache")  # fmt: skip
    assert len(linker.warnings) == 1 and "KB index is not cached" in linker.warnings[0]
    assert len(linker.link(project / "photo.png", [10, 5, 40, 30]).entities) == 5


def test_link_with_candidates_k_the_kb_size_equals_whole_kb_ranking(project: Path) -> None:
    region = (project / "photo.png", [10, 5, 40, 30], "a thing on a table")
    want = _linker(project).link(*region, top_k=12)
    paths = (project / "models/iier", project / "data/dataset", None, project / "cache")
    got = Linker(*paths, candidates=12).link(*region, top_k=12)
    assert [e.qid for e in got.entities] == [e.qid for e in want.entities]
    for a, b in zip(got.entities, want.entities, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-5)
    few = Linker(*paths, candidates=3).link(*region, top_k=5)  # at most K entities listed
    assert len(few.entities) == 3 and [e.rank for e in few.entities] == [1, 2, 3]
    result = CliRunner().invoke(
        app,
        ["link", str(region[0]), "--box", "10,5,40,30", "--json", "--top-k", "4",
         "--candidates", "2", "--model", str(paths[0]), "--dataset", str(paths[1]),
         "--cache", str(paths[3]), "--no-vlm", "--params", "none.yaml"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{") :])
    assert [e["rank"] for e in out["entities"]] == [1, 2]
