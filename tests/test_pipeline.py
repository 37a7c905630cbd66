"""End to end: `dvc repro` on a tiny demo world in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vpmel.schema import read_kb, read_mentions

REPO = Path(__file__).resolve().parents[1]
TINY_WORLD = {"seed": 3, "kb_size": 60, "n_scenes": 24}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The repository's files (tracked or not, ignored ones left out) in a fresh git repo."""
    dst = tmp_path_factory.mktemp("repo")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["world"].update(TINY_WORLD)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("reports", "data"):
        shutil.rmtree(dst / name, ignore_errors=True)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        _run(cmd, dst, env)
    return dst, env


def test_dvc_repro_builds_world_and_dataset(repo_copy: tuple[Path, dict[str, str]]) -> None:
    repo, env = repo_copy
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "repro"], repo, env)

    world = json.loads((repo / "reports/world.json").read_text())
    assert world["n_entities"] == TINY_WORLD["kb_size"]
    assert (repo / "reports/world_contact_sheet.png").stat().st_size > 0

    kb = read_kb(repo / "data/dataset")
    mentions = read_mentions(repo / "data/dataset")
    assert len(kb) == TINY_WORLD["kb_size"]
    assert len(mentions) > 0
    for rel in list(mentions["image"]) + [p for ps in kb["images"] for p in ps]:
        assert (repo / "data/dataset" / rel).is_file(), rel

    quality = json.loads((repo / "reports/data_quality.json").read_text())
    imported = json.loads((repo / "reports/import.json").read_text())
    # every raw mention is either kept or has exactly one "dropped" line
    dropped_lines = [
        x for x in quality["issues"] if x["action"] == "dropped" and x["table"] == "mentions"
    ]
    assert imported["read"]["mentions"] == imported["kept"]["mentions"] + len(dropped_lines)
    assert len(mentions) == imported["kept"]["mentions"]

    # a second repro has nothing to do
    status = _run([*dvc, "status"], repo, env).stdout
    assert "up to date" in status.lower(), status


def test_lambda_experiment_is_valid(repo_copy: tuple[Path, dict[str, str]]) -> None:
    repo, env = repo_copy
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], repo, env)
    _run([*dvc, "exp", "run", "-S", "lambda=0.5"], repo, env)
    shown = _run([*dvc, "exp", "show", "--json"], repo, env).stdout
    assert "0.5" in shown
