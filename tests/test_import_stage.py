"""The `import` stage never loses the user's data: params checked first, output swapped in
only on success, and an output folder that overlaps the source refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stages.import_data import app
from vpmel.data.schema import read_mentions


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (relative path -> sha256 of its bytes)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def dataset(tmp_path: Path, make_image) -> Path:
    """A two-record VPWiki-format dataset with its images."""
    src = tmp_path / "vp"
    records = [
        {"id": str(i), "sentence": f"Caption {i}.", "mentions": " ", "entities": f"E{i}",
         "answer": f"Q{i}", "imgPath": f"test_img/mention_{i}.jpg"}
        for i in range(2)
    ]  # fmt: skip
    src.mkdir()
    (src / "test.json").write_text(json.dumps(records))
    for rec in records:
        make_image(src / rec["imgPath"], "rgb")
    return src


def run_import(tmp_path: Path, out: Path, **settings):
    section = {"format": "vpwiki", "src": None, "mention_files": None, "kb_dir": None,
               "max_side": 1024, "source": None} | settings  # fmt: skip
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"import": section}))
    args = ["--out", str(out), "--reports", str(tmp_path / "reports"), "--params", str(params)]
    return CliRunner().invoke(app, args)


def test_import_writes_the_tables(tmp_path: Path, dataset: Path) -> None:
    result = run_import(tmp_path, tmp_path / "out", src=str(dataset))
    assert result.exit_code == 0, result.output
    assert read_mentions(tmp_path / "out")["id"].tolist() == ["0", "1"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers
    timing = json.loads((tmp_path / "reports" / "timings" / "import.json").read_text())
    assert timing["stage"] == "import" and timing["wall_s"] >= timing["work_s"] >= 0


@pytest.mark.parametrize("where", ["same", "inside_source", "contains_source"])
def test_output_overlapping_the_source_is_refused_and_nothing_is_touched(
    tmp_path: Path, dataset: Path, where: str
) -> None:
    out = {"same": dataset, "inside_source": dataset / "out", "contains_source": tmp_path}[where]
    before = snapshot(tmp_path)
    result = run_import(tmp_path, out, src=str(dataset))
    assert result.exit_code == 1
    assert "overlaps import.src" in result.output and "Traceback" not in result.output
    after = snapshot(tmp_path)
    after.pop("params.yaml")
    before.pop("params.yaml", None)
    assert after == before


def test_output_overlapping_the_kb_folder_is_refused(tmp_path: Path, dataset: Path) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    result = run_import(tmp_path, kb / "out", src=str(dataset), kb_dir=str(kb))
    assert result.exit_code == 1 and "overlaps import.kb_dir" in result.output
    assert list(kb.iterdir()) == []


def test_a_failed_import_keeps_the_previous_output(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "out"
    assert run_import(tmp_path, out, src=str(dataset)).exit_code == 0
    good = snapshot(out)
    (dataset / "test.json").write_text("[{not json")
    result = run_import(tmp_path, out, src=str(dataset))
    assert result.exit_code == 1 and "not valid JSON" in result.output
    assert snapshot(out) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "params.yaml", "reports", "vp"]


def test_max_side_null_keeps_image_sizes(tmp_path: Path, dataset: Path) -> None:
    result = run_import(tmp_path, tmp_path / "out", src=str(dataset), max_side=None)
    assert result.exit_code == 0, result.output
    mentions = read_mentions(tmp_path / "out")
    assert len(mentions) == 2


def test_every_bad_param_is_named_before_any_work(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous output")
    result = run_import(tmp_path, out, src=str(tmp_path / "nowhere"), format="csv",
                        max_side=0, mention_files="test.json", colour="red")  # fmt: skip
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    for expected in ("import.unknown key 'colour'", "import.format 'csv'",
                     "import.src", "is not a folder", "import.max_side",
                     "import.mention_files"):  # fmt: skip
        assert expected in text, text
    assert snapshot(out) == {"keep.txt": hashlib.sha256(b"previous output").hexdigest()}
