"""vpmel.timings: stage wall times written apart from the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vpmel.timings import process_seconds, read_timings, stage_timer, timing_table


def test_stage_timer_writes_a_record_only_on_success(tmp_path: Path) -> None:
    with stage_timer("train", tmp_path) as record:
        record["steps"] = 3
    out = json.loads((tmp_path / "train.json").read_text())
    assert out["stage"] == "train" and out["steps"] == 3 and out["cores"] >= 1
    assert out["wall_s"] >= out["work_s"] >= 0
    with pytest.raises(RuntimeError), stage_timer("evaluate", tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / "evaluate.json").exists()


def test_stage_timer_writes_only_on_rank_zero(tmp_path: Path, monkeypatch) -> None:
    # every rank of `accelerate launch` times the run; two writers of one file once raced
    # on its temporary name (CI: FileNotFoundError '.train.json.tmp')
    monkeypatch.setenv("RANK", "1")
    with stage_timer("train", tmp_path):
        pass
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "0")
    with stage_timer("train", tmp_path):
        pass
    assert (tmp_path / "train.json").exists()


def test_timing_table_sums_stages(tmp_path: Path) -> None:
    for stage, wall in (("world", 30.0), ("train", 95.0)):
        (tmp_path / f"{stage}.json").write_text(json.dumps({"stage": stage, "wall_s": wall}))
    (tmp_path / "ablate").mkdir()
    (tmp_path / "ablate" / "x.json").write_text(json.dumps({"stage": "ablate@x", "wall_s": 5}))
    timings = read_timings(tmp_path)
    assert set(timings) == {"world", "train", "ablate@x"}
    table = "\n".join(timing_table(timings))
    assert "| train | 1 min 35 s | 1 min 35 s |" in table and "**2 min 10 s**" in table
    assert timing_table({}) == ["(no stage timings yet: run `dvc repro`)"]


def test_process_seconds_counts_from_process_start() -> None:
    assert process_seconds() > 0
