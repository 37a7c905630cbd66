"""scripts/readme_timings.py: the README's stage-time table, in dvc.yaml's order."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "readme_timings.py"
spec = importlib.util.spec_from_file_location("readme_timings", SCRIPT)
readme_timings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_timings)

DVC_YAML = """
stages:
  world:
    cmd: python -m stages.world
  train:
    cmd: python -m stages.train
  ablate:
    foreach:
      a:
        x: 1
      b:
        x: 2
    do:
      cmd: echo ${key}
  report:
    cmd: python -m stages.report
"""


def write_timing(folder: Path, stage: str, wall: float) -> None:
    path = folder / (stage.replace("@", "/") + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": stage, "wall_s": wall, "cores": 2}))


def test_table_replaces_the_marked_block_in_dvc_order(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    timings = tmp_path / "timings"
    for stage, wall in (("report", 5), ("ablate@b", 7), ("world", 30), ("extra", 1),
                        ("ablate@a", 6), ("train", 95)):  # fmt: skip
        write_timing(timings, stage, wall)
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n## Results\n\nbefore\n"
        f"{readme_timings.START}\nold table\n{readme_timings.END}\nafter\n"
    )
    args = ["--readme", str(readme), "--timings", str(timings)]
    readme_timings.main([*args, "--dvc-yaml", str(tmp_path / "dvc.yaml")])
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n") and text.endswith("after\n")
    block = text.split(readme_timings.START)[1].split(readme_timings.END)[0]
    rows = [line.split("|")[1].strip() for line in block.strip().splitlines()[2:]]
    assert rows == ["world", "train", "ablate@a", "ablate@b", "report", "extra", "**total**"]
    assert "| train | 1 min 35 s | 1 min 35 s | 2 |" in block and "**2 min 24 s**" in block

    readme_timings.main([*args, "--dvc-yaml", str(tmp_path / "dvc.yaml")])  # idempotent
    assert readme.read_text() == text


def test_missing_markers_are_an_error(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="timings:start"):
        readme_timings.main(["--readme", str(readme), "--timings", str(tmp_path / "none")])
    assert readme.read_text() == "# no markers\n"


def test_the_repository_readme_has_the_markers() -> None:
    text = (SCRIPT.parents[1] / "README.md").read_text()
    assert text.count(readme_timings.START) == 1 and text.count(readme_timings.END) == 1
