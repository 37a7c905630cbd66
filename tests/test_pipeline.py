"""End to end: `dvc repro` on a tiny demo world in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vpmel.data.schema import read_kb, read_mentions

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "dev", "test")
TINY_WORLD = {"seed": 3, "kb_size": 60, "n_scenes": 40}
# every later stage at toy size (the demo's architecture, fewer widths/steps)
TINY = {
    "encoders": {
        "threads": 1,
        "model": {"image_size": 48, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64},
        "train": {
            "steps": 3,
            "batch_size": 16,
            "warmup_steps": 1,
            "background_bank": 4,
            "probe_scenes": 8,
        },  # fmt: skip
    },
    "annotate": {"clip": {"top_k": 6, "refine_steps": 1}},
    "split": {"iou_min": 0.0},
    "detective": {
        "threads": 1,
        "demo": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "train": {"epochs": 1, "batch_size": 8},
        "pretrain": {"examples": 32, "epochs": 1, "batch_size": 8, "heldout": 4},
    },
    "answers": {"threads": 1, "batch_size": 16, "max_new_tokens": 6},
    "train": {
        "seeds": [0, 1],
        "epochs": 1,
        "batch_size": 8,
        "model": {"d_v": 12, "d_t": 20, "d_c": 10},
        "save_every_steps": 2,
        "eval_batch": 8,
        "device": "cpu",
    },  # fmt: skip
    "evaluate": {"mention_batch": 8, "entity_batch": 8, "device": "cpu"},
}


def _merge(base: dict, over: dict) -> dict:
    for key, value in over.items():
        if isinstance(value, dict):
            _merge(base.setdefault(key, {}), value)
        else:
            base[key] = value
    return base


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
    _merge(params, TINY)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("reports", "data", "models", "dvclive"):
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


def test_dvc_repro_runs_the_whole_pipeline(repo_copy: tuple[Path, dict[str, str]]) -> None:
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

    # VPWiki: every imported mention is kept or dropped at one counted step
    counts = json.loads((repo / "reports/vpwiki_counts.json").read_text())
    assert counts["in"] == len(mentions)
    grounded = json.loads((repo / "reports/grounding.json").read_text())
    assert grounded["n_grounded"] > 0 and "automatic" not in grounded  # IoU: split's report
    vp = json.loads((repo / "reports/vpwiki_grounding.json").read_text())
    assert vp["automatic"]["n"] > 0 and "random_proposal" in vp
    split_files = {s: json.loads((repo / f"data/vpwiki/{s}.json").read_text()) for s in SPLITS}
    assert sum(len(v) for v in split_files.values()) == counts["kept"]
    for records in split_files.values():
        for r in records:
            assert set(r) == {"id", "sentence", "mentions", "entities", "answer", "imgPath"}
            assert (repo / "data/vpwiki" / r["imgPath"]).is_file()
    assert (repo / "reports/vpwiki_contact_sheet.png").stat().st_size > 0

    # Detective-VLM answers for every kept mention, IIER metrics for dev and test
    answers = pd.read_parquet(repo / "data/answers/answers.parquet")
    assert set(answers["id"]) == {r["id"] for v in split_files.values() for r in v}
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for split in ("dev", "test"):
        assert set(metrics[split]) >= {"H@1", "H@5", "H@20", "MRR", "MR", "n"}
        assert 0 <= metrics[split]["H@1"] <= metrics[split]["H@20"] <= 100
    _assert_subsets(metrics)

    # the subsets agree with the demo world's truth: every mention the generator named in
    # its caption (by name or short alias) is "named"; "named" ones it did not name are
    # coincidences (the gold name inside another object's name)
    assert metrics["test"]["seeds"] == 2 and set(metrics["test_sd"]) >= {"H@1", "MRR"}
    top = pd.read_parquet(repo / "data/eval/top20.parquet")
    assert sorted(top["seed"].unique()) == [0, 1]
    top = top[top["seed"] == 0]
    truth = pd.read_parquet(repo / "data/world/truth.parquet").set_index("id")
    said = truth.loc[top["id"], "named_in_caption"].to_numpy()
    assert (top["named"].to_numpy() | ~said).all()
    for split in ("dev", "test"):
        in_split = (top["split"] == split).to_numpy()
        assert metrics[f"{split}_named"]["n"] == int(top["named"][in_split].sum())

    # the report: baselines, the three ablations and the full model, offline pictures
    baselines = json.loads((repo / "reports/baselines.json").read_text())
    assert set(baselines) >= {"clip_zero_shot", "clip_zero_shot_unprompted", "text_only",
                              "text_only_no_vlm", "box_following"}  # fmt: skip
    assert baselines["box_following"]["test"]["n"] > 0
    for name in ("clip_zero_shot", "text_only", "text_only_no_vlm"):
        _assert_subsets(baselines[name])
        assert baselines[name]["test_named"]["n"] == metrics["test_named"]["n"]
    for key in ("iier_star", "iier_dagger", "iier_ddagger", "layers_12", "loss_o", "loss_o_c"):
        ablated = json.loads((repo / f"reports/ablate/{key}/metrics.json").read_text())
        assert "test" in ablated
        _assert_subsets(ablated)
    report = (repo / "reports/report.md").read_text()
    assert "IIER (full)" in report and "not run" not in report and "n/a" not in report
    assert "| method | name in caption: H@1 |" in report
    assert "Every comparison with its uncertainty" in report and "McNemar" in report
    assert "What each part adds" in report and "the visual prompt" in report
    assert "dev is the selection metric" in report

    # metrics hold quality only; every stage's wall time is in reports/timings
    shown = json.loads(_run([*dvc, "metrics", "show", "--json"], repo, env).stdout)
    keys = set()

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        else:
            keys.add(path.rsplit("/", 1)[-1])

    walk(shown, "")
    timing_like = {k for k in keys if k.endswith(("_s", "seconds", "per_s", "per_second"))}
    assert not timing_like, timing_like
    timings = {p.stem for p in (repo / "reports/timings").rglob("*.json")}
    assert {"world", "import", "encoders", "detective_base", "features", "train"} <= timings
    assert {"evaluate", "baselines"} <= timings
    for png in ("report_hits.png", "report_training.png", "report_cases.png"):
        assert (repo / "reports" / png).stat().st_size > 0

    # a second repro has nothing to do
    status = _run([*dvc, "status"], repo, env).stdout
    assert "up to date" in status.lower(), status


def _assert_subsets(metrics: dict) -> None:
    """Each split is also reported on its named and unnamed mentions, which add up."""
    for split in ("dev", "test"):
        named, unnamed = metrics[f"{split}_named"], metrics[f"{split}_unnamed"]
        assert set(named) == set(unnamed) == set(metrics[split])
        assert named["n"] + unnamed["n"] == metrics[split]["n"]


def test_lambda_experiment_is_valid(repo_copy: tuple[Path, dict[str, str]]) -> None:
    repo, env = repo_copy
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], repo, env)
    _run([*dvc, "exp", "run", "-S", "lambda=0.5"], repo, env)
    shown = _run([*dvc, "exp", "show", "--json"], repo, env).stdout
    assert "0.5" in shown


def test_params_read_as_dvc_writes_them(tmp_path: Path) -> None:
    """`dvc exp run -S` rewrites params.yaml with YAML 1.2 (ruamel): `no` stays a string."""
    from vpmel.params import load_params

    path = tmp_path / "params.yaml"
    path.write_text("train:\n  mixed_precision: no\n  on: yes\n  use_answers: false\n  x: True\n")
    assert load_params("train", path) == {
        "mixed_precision": "no",
        "on": "yes",
        "use_answers": False,
        "x": True,
    }
