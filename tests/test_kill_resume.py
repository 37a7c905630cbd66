"""Real SIGKILLs in the middle of writing resumable state, then resume (issue 10).

The stages run as child processes: ``python -c DRIVER <module> <args>`` runs ``python -m
<module> <args>`` after the driver, and only the driver, has read ``KILL_PLAN`` from its
environment and wrapped one low-level write the stage uses (``Path.write_text``,
``safetensors.torch.save_file``, ``os.replace``, ``pyarrow.parquet.write_table``,
``DataFrame.to_parquet``, ``Path.unlink``, ``shutil.copytree``). At the planned moment the
wrapper leaves the files as an interrupted write leaves them (half of the bytes written; or
the rename done and the clean-up not), writes a sentinel and blocks. The test then sends the
real SIGKILL, checks what is on disk, runs the same command again, and finally compares
everything with an uninterrupted run of the same command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import test_train
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from test_answers import tiny_model_folder, tiny_vpwiki

from vpmel.detective.answers import AnswerCache

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 300

tiny_project = test_train.tiny_project  # the fixture: this module builds a project of its own

pytestmark = pytest.mark.usefixtures("one_thread")

DRIVER = r"""
import json, os, pathlib, runpy, shutil, sys, time

import pyarrow as pa
import pyarrow.parquet as pq
import safetensors.torch
import torch

torch.set_num_threads(1)
plan = json.loads(os.environ.get("KILL_PLAN") or "null")
point = plan and plan["point"]
module = sys.argv.pop(1)
_replace, _write_text, _unlink = os.replace, pathlib.Path.write_text, pathlib.Path.unlink
_save_file, _write_table, _copytree = safetensors.torch.save_file, pq.write_table, shutil.copytree


def pause(**where):
    # tell the parent where we stopped, then wait for its SIGKILL
    sentinel = pathlib.Path(plan["sentinel"])
    tmp = sentinel.with_name(sentinel.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(where, f)
    _replace(tmp, sentinel)
    while True:
        time.sleep(1)


def half(path, data):
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()


def position(meta):
    return [meta["global_step"], meta["epoch"], meta["batch_in_epoch"]]


if point == "state_half":  # inside the write of state.json.tmp
    def write_text(self, data, *args, **kwargs):
        if self.name == "state.json.tmp" and position(json.loads(data)) == plan["at"]:
            half(self, data.encode())
            pause(file=str(self))
        return _write_text(self, data, *args, **kwargs)

    pathlib.Path.write_text = write_text

if point == "after_rename":  # state.json renamed, old weights not yet deleted
    def replace(src, dst, *args, **kwargs):
        _replace(src, dst, *args, **kwargs)
        if pathlib.Path(src).name == "state.json.tmp":
            if position(json.loads(pathlib.Path(dst).read_text())) == plan["at"]:
                pause(file=str(dst))

    os.replace = replace

if point == "before_rename":  # e.g. best/ removed, best.tmp/ complete, not yet renamed
    def replace(src, dst, *args, **kwargs):
        if pathlib.Path(src).name == plan["file"]:
            pause(file=str(src))
        _replace(src, dst, *args, **kwargs)

    os.replace = replace

if point == "weights_half":  # inside the write of a safetensors file
    def save_file(tensors, filename, metadata=None):
        if pathlib.Path(filename).name == plan["file"]:
            half(filename, safetensors.torch.save(tensors, metadata))
            pause(file=str(filename))
        return _save_file(tensors, filename, metadata)

    safetensors.torch.save_file = save_file

if point == "parquet_half":  # inside the write of a Parquet file
    def write_table(table, where, *args, **kwargs):
        if isinstance(where, (str, os.PathLike)) and pathlib.Path(where).name == plan["file"]:
            sink = pa.BufferOutputStream()
            _write_table(table, sink, *args, **kwargs)
            half(where, sink.getvalue().to_pybytes())
            pause(file=str(where), rows=table.num_rows)
        return _write_table(table, where, *args, **kwargs)

    pq.write_table = write_table

if point == "to_parquet_half":  # inside DataFrame.to_parquet (it hands pyarrow an open file)
    import io

    import pandas as pd

    _to_parquet = pd.DataFrame.to_parquet

    def to_parquet(self, path=None, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and pathlib.Path(path).name == plan["file"]:
            buffer = io.BytesIO()
            _to_parquet(self, buffer, *args, **kwargs)
            half(path, buffer.getvalue())
            pause(file=str(path), rows=len(self))
        return _to_parquet(self, path, *args, **kwargs)

    pd.DataFrame.to_parquet = to_parquet

if point == "after_unlink":  # the first file of a clean-up deleted, the others not
    def unlink(self, *args, **kwargs):
        _unlink(self, *args, **kwargs)
        if self.name.startswith(plan["prefix"]):
            pause(file=str(self))

    pathlib.Path.unlink = unlink

if point == "copy_half":  # a folder copy with one file copied
    def copytree(src, dst, *args, **kwargs):
        if pathlib.Path(src).name != plan["src"]:
            return _copytree(src, dst, *args, **kwargs)

        def copy_one(s, d, *a, **k):
            shutil.copy2(s, d, *a, **k)
            pause(file=str(d))

        return _copytree(src, dst, *args, **(kwargs | {"copy_function": copy_one}))

    shutil.copytree = copytree

runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def child_env(plan: dict[str, Any] | None) -> dict[str, str]:
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "COLUMNS": "200",  # rich wraps stage messages at 80 without a terminal
    }
    env.pop("KILL_PLAN", None)
    if plan is not None:
        env["KILL_PLAN"] = json.dumps(plan)
    return env


def start(
    module: str, args: list[str], cwd: Path, log: Path, plan: dict | None = None
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-c", DRIVER, module, *args],
            cwd=cwd,
            env=child_env(plan),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def run_to_end(module: str, args: list[str], cwd: Path, log: Path) -> str:
    """Run the stage without a kill plan; returns its output."""
    proc = start(module, args, cwd, log)
    try:
        rc = proc.wait(CHILD_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert rc == 0, out[-3000:]
    return out


def kill_at(
    module: str, args: list[str], cwd: Path, log: Path, plan: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """Run the stage until it pauses at ``plan``'s point, SIGKILL it there; returns (where it
    paused, its output)."""
    sentinel = log.with_suffix(".paused")
    sentinel.unlink(missing_ok=True)
    proc = start(module, args, cwd, log, plan | {"sentinel": str(sentinel)})
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        while not sentinel.is_file():
            if proc.poll() is not None:
                pytest.fail(
                    f"{plan['point']}: the child ended ({proc.returncode}) before the kill "
                    f"point\n{log.read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"{plan['point']}: no kill point in {CHILD_TIMEOUT_S} s")
            time.sleep(0.05)
        assert proc.poll() is None  # paused mid-write, waiting
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return json.loads(sentinel.read_text()), log.read_text()


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name)


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------------------ train


def train_args(root: Path, run: str) -> list[str]:
    base = root / run
    return [
        "--vpwiki", str(root / "data/vpwiki"), "--dataset", str(root / "data/dataset"),
        "--answers", str(root / "data/answers/answers.parquet"),
        "--encoder-dir", str(root / "models/encoder"),
        "--out", str(base / "models/iier"), "--state-dir", str(base / "models/iier_state"),
        "--live-dir", str(base / "dvclive"), "--reports", str(base / "reports"),
        "--features", str(base / "no-features"), "--params", str(root / "params.yaml"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def dropout_project(tiny_project: Path) -> Path:
    """test_train's tiny project with attention dropout in the trained vision tower, so that
    training draws random numbers and a resume must restore the RNG state to match."""
    config = tiny_project / "models/encoder/vision/config.json"
    values = json.loads(config.read_text())
    assert values["attention_dropout"] == 0.0
    config.write_text(json.dumps(values | {"attention_dropout": 0.2}, indent=2))
    return tiny_project


def saved_position(state_dir: Path) -> tuple[int, int, int]:
    meta = json.loads((state_dir / "state.json").read_text())
    return meta["global_step"], meta["epoch"], meta["batch_in_epoch"]


def test_train_killed_mid_checkpoint_resumes_to_the_uninterrupted_result(
    dropout_project: Path,
) -> None:
    """2 epochs x 8 steps, state saved every 2 steps and after each epoch. One run directory
    is killed five times, each time at a later dangerous point, and resumed after each."""
    root = dropout_project
    assert test_train.TRAIN["save_every_steps"] == 2 and test_train.TRAIN["epochs"] == 2
    logs = root / "logs"

    def train(run: str, name: str, plan: dict[str, Any] | None = None) -> tuple[dict, str]:
        args, log = train_args(root, run), logs / f"{run}-{name}.log"
        if plan is None:
            return {}, run_to_end("stages.train", args, root, log)
        return kill_at("stages.train", args, root, log, plan)

    train("full", "uninterrupted")
    run = root / "killed"
    state = run / "models/iier_state/seed_0"  # train.seeds: [0] (one run per seed)

    # 1. inside the write of state.json.tmp at step 6: the state of step 4 stays in force
    where, _ = train("killed", "1", {"point": "state_half", "at": [6, 0, 6]})
    assert Path(where["file"]) == state / "state.json.tmp"
    with pytest.raises(json.JSONDecodeError):
        json.loads((state / "state.json.tmp").read_text())
    assert saved_position(state) == (4, 0, 4)
    assert (state / "step-0000004-000-00004.safetensors").is_file()  # its weights are kept

    # 2. resumes from step 4; killed inside the write of step 8's weights file
    plan = {"point": "weights_half", "file": "step-0000008-000-00008.safetensors"}
    where, out = train("killed", "2", plan)
    assert "resuming at epoch 0, step 4" in out
    with pytest.raises(SafetensorError):
        load_file(where["file"])
    assert saved_position(state) == (6, 0, 6)
    assert not (state / "state.json.tmp").exists()  # step 6 replaced the torn one

    # 3. resumes from step 6; killed after epoch 0's best/ was removed for the new one and
    # before best.tmp/ is renamed to best/
    where, out = train("killed", "3", {"point": "before_rename", "file": "best.tmp"})
    assert "resuming at epoch 0, step 6" in out
    assert not (state / "best").exists() and (state / "best.tmp/iier.json").is_file()
    assert saved_position(state) == (8, 0, 8)  # the end-of-epoch state is not yet written

    # 4. resumes from step 8 (epoch 0's dev evaluation again); killed right after the
    # end-of-epoch state was renamed into place, before its old weights file is deleted
    # and before epoch 1 starts
    where, out = train("killed", "4", {"point": "after_rename", "at": [8, 1, 0]})
    assert "resuming at epoch 0, step 8" in out
    assert saved_position(state) == (8, 1, 0)
    assert not (state / "best.tmp").exists() and (state / "best/iier.json").is_file()
    assert sorted(p.name for p in state.glob("step-*")) == [
        "step-0000008-000-00008.safetensors",
        "step-0000008-001-00000.safetensors",
    ]

    # 5. resumes at epoch 1; trains to the end; killed while the best checkpoint is being
    # copied to models/iier
    where, out = train("killed", "5", {"point": "copy_half", "src": "best"})
    assert "resuming at epoch 1, step 8" in out
    assert saved_position(state) == (16, 2, 0)
    assert not (run / "reports/train.json").exists()
    assert len(tree(run / "models/iier/seed_0")) < len(tree(state / "best"))

    # 6. nothing left to train: finishes
    _, out = train("killed", "final")
    assert "resuming at epoch 2, step 16" in out

    full = root / "full"
    assert leftovers(run) == [] and leftovers(full) == []
    assert [p.name for p in state.glob("step-*")] == ["step-0000016-002-00000.safetensors"]
    report, resumed = (json.loads((r / "reports/train.json").read_text()) for r in (full, run))
    assert resumed == report and resumed["per_seed"]["0"]["steps"] == 16
    assert tree(run / "models/iier") == tree(full / "models/iier")  # byte-equal weights
    full_state = full / "models/iier_state/seed_0"
    assert tree(state / "best") == tree(full_state / "best")
    # the final training state too: weights, AdamW moments, RNG; history and best epoch
    assert tree(state).keys() == tree(full_state).keys()
    meta_full, meta_run = (json.loads((r / "state.json").read_text()) for r in (full_state, state))
    del meta_full["elapsed_s"], meta_run["elapsed_s"]
    assert meta_run == meta_full
    weights = "step-0000016-002-00000.safetensors"
    assert (state / weights).read_bytes() == (full_state / weights).read_bytes()
    live_full, live_run = (tree(r / "dvclive") for r in (full, run))
    assert live_run.keys() == live_full.keys()
    for name in live_full:
        if name.endswith((".tsv", ".json")):
            assert live_run[name] == live_full[name], name


# ------------------------------------------------------------------------------ answers


def test_answers_killed_mid_part_write_resume_without_loss_or_duplicates(tmp_path: Path) -> None:
    """10 mentions answered in chunks of 2 (5 part files, then compacted into one). One output
    folder is killed four times, each time at a later dangerous point, and resumed."""
    ms = tiny_vpwiki(tmp_path / "vpwiki")
    tiny_model_folder(tmp_path / "model")
    params = tmp_path / "params.yaml"
    section = {"untuned": False, "batch_size": 4, "max_new_tokens": 4, "chunk_size": 2}
    params.write_text(yaml.safe_dump({"answers": section}))

    def args(run: str) -> list[str]:
        return [
            "--vpwiki", str(tmp_path / "vpwiki"), "--model-dir", str(tmp_path / "model"),
            "--out", str(tmp_path / run / "answers"), "--reports", str(tmp_path / run / "reports"),
            "--params", str(params), "--oof", str(tmp_path / "no_oof.parquet"),
        ]  # fmt: skip

    def answers(run: str, name: str, plan: dict[str, Any] | None = None) -> tuple[dict, str]:
        log = tmp_path / "logs" / f"{run}-{name}.log"
        if plan is None:
            return {}, run_to_end("stages.answers", args(run), tmp_path, log)
        return kill_at("stages.answers", args(run), tmp_path, log, plan)

    def parts(run: str) -> dict[str, int]:
        """Rows per part file of the run's only cache folder."""
        (folder,) = (tmp_path / run / "answers/cache").iterdir()
        return {p.name: pq.read_metadata(p).num_rows for p in sorted(folder.glob("part-*"))}

    _, out = answers("full", "uninterrupted")
    assert "generated 10 " in out
    (key,) = (p.name for p in (tmp_path / "full/answers/cache").iterdir())
    cache = AnswerCache(tmp_path / "killed/answers/cache", key)

    # 1. inside the write of the third part: two parts (4 answers) are safe
    where, _ = answers("killed", "1", {"point": "parquet_half", "file": ".part-000002.parquet.tmp"})
    assert where["rows"] == 2
    with pytest.raises(Exception, match="(?i)parquet"):
        pq.read_table(where["file"])
    assert parts("killed") == {"part-000000.parquet": 2, "part-000001.parquet": 2}
    assert sorted(cache.cached_ids()) == ["m0", "m1", "m2", "m3"]

    # 2. resumes with the 4 cached; killed inside the write of the merged part (compact)
    plan = {"point": "parquet_half", "file": ".part-000005.parquet.tmp"}
    where, out = answers("killed", "2", plan)
    assert "10 mentions, 4 cached" in out and where["rows"] == 10
    assert parts("killed") == {f"part-{i:06d}.parquet": 2 for i in range(5)}  # no id twice

    # 3. everything cached (the model is not loaded); killed during compact after the merged
    # part is in place and the first old part is deleted: 9 rows on disk twice
    where, out = answers("killed", "3", {"point": "after_unlink", "prefix": "part-"})
    assert "10 mentions, 10 cached" in out and Path(where["file"]).name == "part-000000.parquet"
    assert parts("killed") == {f"part-{i:06d}.parquet": 2 for i in range(1, 5)} | {
        "part-000005.parquet": 10
    }
    assert len(cache.load()) == 10 and cache.load()["id"].is_unique

    # 4. compacts again; killed inside the write of answers.parquet's temporary file
    plan = {"point": "to_parquet_half", "file": ".answers.parquet.tmp"}
    where, out = answers("killed", "4", plan)
    assert "10 mentions, 10 cached" in out and where["rows"] == 10
    assert parts("killed") == {"part-000006.parquet": 10}
    assert not (tmp_path / "killed/answers/answers.parquet").exists()

    # 5. finishes
    _, out = answers("killed", "final")
    assert "10 mentions, 10 cached" in out and "generated 0 " in out

    full, killed = tmp_path / "full", tmp_path / "killed"
    assert leftovers(killed) == [] and leftovers(full) == []
    table = pd.read_parquet(killed / "answers/answers.parquet")
    assert table["id"].tolist() == ms["id"].tolist()  # every mention once, in order
    assert table.equals(pd.read_parquet(full / "answers/answers.parquet"))
    assert table["raw"].map(len).gt(0).any()  # real generated answers, not blanks
    assert (killed / "answers/answers.parquet").read_bytes() == (
        full / "answers/answers.parquet"
    ).read_bytes()
    assert (killed / "reports/detective.json").read_text() == (
        full / "reports/detective.json"
    ).read_text()
    # the cache holds the same rows (their order differs: the kill in step 3 had already
    # deleted part 0, so the second compaction read m0 and m1 last)
    reference = AnswerCache(full / "answers/cache", key).load()
    resumed = cache.load().sort_values("id", ignore_index=True)
    assert resumed.equals(reference.sort_values("id", ignore_index=True))
    assert len(reference) == 10
