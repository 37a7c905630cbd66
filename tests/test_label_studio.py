"""Human verification with Label Studio (paper §3, A.6): export, import, κ, the split.

Everything here is JSON in, JSON out; tests/test_label_studio_server.py runs the same round
trip through a real Label Studio server.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from vpmel.cli import app
from vpmel.data.schema import ENTITY_TYPES, KB_SCHEMA, MENTION_SCHEMA, read_mentions, write_table
from vpmel.vpwiki import label_studio as ls
from vpmel.vpwiki.assemble import BuildConfig, select, select_human

W, H = 64, 48
REFERENCE = [8.0, 8.0, 40.0, 36.0]
AUTO = [10.0, 8.0, 40.0, 36.0]  # IoU with REFERENCE 0.9375
FAR = [44.0, 20.0, 62.0, 46.0]  # IoU 0 with both
CFG = BuildConfig(ratios=(0.6, 0.2, 0.2))  # a split of 4-7 pairs
KB_TYPES = {"Q0": "Person", "Q1": "Country", "Q2": "Works", "Q3": "Location"}


# ------------------------------------------------------------------ a tiny annotated dataset


def build_dataset(root: Path, n: int = 10) -> dict[str, Path]:
    """Ten one-mention pairs: m6 not grounded, m7 not entailed, m4's reference disagrees
    with its automatic box (today's filter drops it; a human box that agrees keeps it)."""
    dataset, entail, ground = root / "dataset", root / "entail", root / "ground"
    for folder in (dataset / "images", entail, ground):
        folder.mkdir(parents=True, exist_ok=True)
    rows, ent, gro = [], [], []
    for i in range(n):
        Image.new("RGB", (W, H), (20 * i, 120, 200 - 15 * i)).save(dataset / f"images/{i}.png")
        rows.append({
            "id": f"m{i}", "pair_id": f"p{i}", "sentence": f"scene {i} with a thing",
            "mention": f"thing {i}", "span_start": None, "span_end": None, "qid": f"Q{i % 4}",
            "image": f"images/{i}.png", "image_width": W, "image_height": H,
            "box": FAR if i == 4 else REFERENCE, "type": None, "source": "test",
        })  # fmt: skip
        ent.append({"id": f"m{i}", "entailed": i != 7, "probability": 0.2 if i == 7 else 0.9})
        gro.append({"id": f"m{i}", "auto_box": None if i == 6 else AUTO, "ground_score": 0.5,
                    "random_box": FAR})  # fmt: skip
    write_table(rows, MENTION_SCHEMA, dataset / "mentions.parquet")
    kb = [{"qid": q, "name": f"entity {q}", "type": t, "description": "", "images": []}
          for q, t in KB_TYPES.items()]  # fmt: skip
    write_table(kb, KB_SCHEMA, dataset / "kb.parquet")
    pd.DataFrame(ent).to_parquet(entail / "entailment.parquet", index=False)
    pd.DataFrame(gro).to_parquet(ground / "grounding.parquet", index=False)
    return {"dataset": dataset, "entail": entail, "ground": ground}


def frames(paths: dict[str, Path]) -> tuple[pd.DataFrame, ...]:
    from vpmel.data.schema import read_kb

    return (
        read_mentions(paths["dataset"]),
        pd.read_parquet(paths["entail"] / "entailment.parquet"),
        pd.read_parquet(paths["ground"] / "grounding.parquet"),
        read_kb(paths["dataset"]),
    )


def result(box: list[float] | None, related: bool, kind: str | None) -> list[dict[str, Any]]:
    """One annotator's Label Studio result (as the editor posts it)."""
    out = []
    if box is not None:
        out.append(ls._rectangle(box, W, H, "r1"))
    out.append(ls._choice(ls.RELATED, ls.YES if related else ls.NO, "r2"))
    if kind:
        out.append(ls._choice(ls.TYPE, kind, "r3"))
    return out


def shifted(box: list[float], dx: float) -> list[float]:
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


#: The two annotators' answers per mention (see test_label_studio_server.py too):
#: m0 B moves the box by 2 px; m1 both unrelated; m2 both move the box far away; m3 both
#: change the type; m4 both keep the automatic box; m5 A related, B unrelated (a tie);
#: m8 agree; m9 B picks another type (a tie, the automatic type wins).
PLAN: dict[str, tuple[tuple, tuple]] = {
    "m0": ((AUTO, True, "Person"), (shifted(AUTO, 2), True, "Person")),
    "m1": ((None, False, None), (None, False, None)),
    "m2": ((FAR, True, "Works"), (FAR, True, "Works")),
    "m3": ((AUTO, True, "Event"), (AUTO, True, "Event")),
    "m4": ((AUTO, True, "Person"), (AUTO, True, "Person")),
    "m5": ((AUTO, True, "Country"), (None, False, None)),
    "m8": ((AUTO, True, "Person"), (AUTO, True, "Person")),
    "m9": ((AUTO, True, "Country"), (AUTO, True, "Organization")),
}
#: Fleiss' κ by hand. Relatedness, 8 mentions × 2 ratings: P̄ = 7/8 (m5 disagrees),
#: p = (13/16, 3/16), P̄e = 178/256, κ = (224/256 − 178/256) / (78/256) = 23/39.
KAPPA_RELATED = 23 / 39
#: Types, the 6 mentions with two types (m1, m5 have fewer): P̄ = 5/6 (m9 disagrees);
#: Person 6, Works 2, Event 2, Country 1, Organization 1 of 12: P̄e = 46/144,
#: κ = (120/144 − 46/144) / (98/144) = 37/49.
KAPPA_TYPE = 37 / 49
#: Box pairs: m0 IoU 784/896 = 0.875, m2 m3 m4 m8 m9 identical: (0.875 + 5) / 6.
MEAN_IOU = (0.875 + 5) / 6


def plan_export(tasks: list[dict[str, Any]], plan=PLAN) -> list[dict[str, Any]]:
    """Label Studio's JSON export of ``tasks`` annotated as ``plan`` says (users 1 and 2)."""
    out = []
    for n, task in enumerate(tasks, start=1):
        anns = [
            {"id": 10 * n + k, "completed_by": k + 1, "result": result(*answer),
             "was_cancelled": False}
            for k, answer in enumerate(plan.get(task["data"]["mention_id"], ()))
        ]  # fmt: skip
        out.append({"id": n, "data": task["data"], "annotations": anns, "predictions": [n]})
    return out


# ---------------------------------------------------------------------------------- export


def test_labeling_config_has_the_four_steps() -> None:
    root = ET.fromstring(ls.labeling_config())
    rect = root.find(".//RectangleLabels")
    assert rect is not None and rect.get("name") == ls.BOX and rect.get("toName") == ls.IMAGE
    assert [lab.get("value") for lab in rect] == [ls.BOX_LABEL]
    choices = {c.get("name"): [x.get("value") for x in c] for c in root.iter("Choices")}
    assert choices == {ls.RELATED: [ls.YES, ls.NO], ls.TYPE: list(ENTITY_TYPES)}
    assert root.find(".//Image").get("value") == "$image"
    assert {t.get("value") for t in root.iter("Text")} == {"$mention", "$sentence", "$entity"}


def test_box_conversion_round_trips() -> None:
    assert ls.box_to_ls([16, 24, 80, 96], 160, 120) == pytest.approx(
        {"x": 10, "y": 20, "width": 40, "height": 60, "rotation": 0}
    )
    rng = np.random.default_rng(0)
    for _ in range(50):
        w, h = rng.integers(10, 2000, size=2)
        x1, x2 = np.sort(rng.uniform(0, w, 2))
        y1, y2 = np.sort(rng.uniform(0, h, 2))
        value = ls.box_to_ls([x1, y1, x2, y2], int(w), int(h))
        assert ls.ls_to_box(value, int(w), int(h)) == pytest.approx([x1, y1, x2, y2])


def test_rotated_rectangle_becomes_its_bounding_box_clipped() -> None:
    value = {"x": 50, "y": 10, "width": 20, "height": 10, "rotation": 90}
    # clockwise about the top-left corner (50, 10): spans x 40..50, y 10..30
    assert ls.ls_to_box(value, 100, 100) == pytest.approx([40, 10, 50, 30])
    assert ls.ls_to_box({"x": 90, "y": -5, "width": 20, "height": 20}, 100, 100) == [
        pytest.approx(90), 0, 100, pytest.approx(15)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="x/y/width/height"):
        ls.ls_to_box({"x": 1, "y": 2}, 10, 10)


def test_export_tasks_carry_the_pipelines_predictions(tmp_path: Path) -> None:
    paths = build_dataset(tmp_path)
    mentions, ent, gro, kb = frames(paths)
    tasks = ls.export_tasks(mentions, ent, gro, kb, paths["dataset"], tmp_path)
    ids = [t["data"]["mention_id"] for t in tasks]
    assert ids == ["m0", "m1", "m2", "m3", "m4", "m5", "m8", "m9"]  # m6, m7 never reach review
    t = tasks[3]
    assert t["data"]["image"] == "/data/local-files/?d=dataset/images/3.png"
    assert t["data"]["entail_probability"] == 0.9 and t["data"]["auto_type"] == "Location"
    (pred,) = t["predictions"]
    assert pred["score"] == pytest.approx(0.9) and pred["model_version"] == ls.MODEL_VERSION
    by_name = {r["from_name"]: r for r in pred["result"]}
    assert ls.ls_to_box(by_name[ls.BOX]["value"], W, H) == pytest.approx(AUTO)
    assert by_name[ls.RELATED]["value"]["choices"] == [ls.YES]
    assert by_name[ls.TYPE]["value"]["choices"] == ["Location"]
    assert ls.local_storage_path(tasks, tmp_path) == str((paths["dataset"] / "images").resolve())

    everything = ls.export_tasks(mentions, ent, gro, kb, paths["dataset"], tmp_path, True)
    rejected = {t["data"]["mention_id"]: t["predictions"][0]["result"] for t in everything}
    assert len(everything) == 10
    assert [r["from_name"] for r in rejected["m6"]] == [ls.RELATED, ls.TYPE]  # no box
    assert rejected["m7"][1]["value"]["choices"] == [ls.NO]
    with pytest.raises(ValueError, match="document root"):
        ls.export_tasks(mentions, ent, gro, kb, paths["dataset"], tmp_path / "elsewhere")


# ---------------------------------------------------------------------------------- import


def imported(tmp_path: Path, extra: list[dict[str, Any]] = ()) -> tuple[ls.ImportResult, dict]:
    paths = build_dataset(tmp_path)
    mentions, ent, gro, kb = frames(paths)
    tasks = ls.export_tasks(mentions, ent, gro, kb, paths["dataset"], paths["dataset"])
    return ls.import_export(plan_export(tasks) + list(extra), mentions), paths


def test_import_two_annotators_decisions_and_agreement(tmp_path: Path) -> None:
    res, _ = imported(tmp_path)
    d = res.decisions.set_index("id")
    assert res.problems == []
    assert d["related"].to_dict() == {
        "m0": True, "m1": False, "m2": True, "m3": True, "m4": True, "m5": False, "m8": True,
        "m9": True,
    }  # fmt: skip
    assert d.loc["m0", "box"] == pytest.approx([11, 8, 41, 36])  # median of A's and B's
    assert d.loc["m2", "box"] == pytest.approx(FAR)
    assert d.loc["m5", "box"] == pytest.approx(AUTO)  # only A drew one
    assert d.loc["m1", "box"] is None
    assert d.loc["m3", "type"] == "Event" and d.loc["m3", "auto_type"] == "Location"
    assert d.loc["m9", "type"] == "Country"  # a tie: the automatic type
    assert d.loc["m0", "annotators"] == ["1", "2"]
    assert d.loc["m5", ["related_votes", "unrelated_votes"]].tolist() == [1, 1]
    assert d.loc["m0", "annotator_iou"] == pytest.approx(0.875)
    a = res.agreement
    assert a["kappa_related"] == pytest.approx(KAPPA_RELATED, abs=1e-4)
    assert a["kappa_type"] == pytest.approx(KAPPA_TYPE, abs=1e-4)
    assert a["mean_pairwise_iou"] == pytest.approx(MEAN_IOU, abs=1e-4)
    assert (a["kappa_related_mentions"], a["kappa_type_mentions"], a["box_pairs"]) == (8, 6, 6)
    assert (a["annotators"], a["annotations"], a["tasks"]) == (2, 16, 8)


def test_unusable_tasks_and_annotations_are_listed(tmp_path: Path) -> None:
    data = {"mention_id": "m0"}
    two_boxes = result(AUTO, True, "Person") + result(FAR, True, None)[:1]
    bad = [
        {"id": 101, "data": {"image": "x"}, "annotations": []},
        {"id": 102, "data": {"mention_id": "nope"}, "annotations": []},
        {"id": 103, "data": data, "annotations": [
            {"id": 1, "completed_by": 7, "result": two_boxes},
            {"id": 2, "completed_by": 8, "result": [], "was_cancelled": True},
            {"id": 3, "completed_by": 9, "result": []},
            {"id": 4, "completed_by": 10, "result": result(AUTO, True, None)[:1]
             + [ls._choice(ls.TYPE, "Vegetable", "t")]},
        ]},
        "not a task",
    ]  # fmt: skip
    res, _ = imported(tmp_path, bad)
    problems = {(p.task, p.annotation, p.problem.split(":")[0].split(" (")[0])
                for p in res.problems}  # fmt: skip
    assert problems == {
        (101, None, "task has no data.mention_id"),
        (102, None, "mention id not in the dataset"),
        (103, None, "second task for this mention"),
        (103, 1, "2 boxes drawn, one expected"),
        (103, 2, "skipped"),
        (103, 3, "empty result"),
        (103, 4, "type"),
        (103, 4, "no related/unrelated choice"),
        ("#11", None, "not a task"),
    }
    m0 = res.decisions.set_index("id").loc["m0"]
    assert m0["annotators"] == ["1", "2", "7", "10"]  # merged; 7 without box, 10 no choice
    assert m0["related_votes"] == 3


def test_unknown_export_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text('{"tasks": []}')
    with pytest.raises(ValueError, match=r"export\.json: expected Label Studio's JSON export"):
        ls.read_export(path)
    path.write_text("[{")
    with pytest.raises(ValueError, match="not JSON"):
        ls.read_export(path)


def test_fleiss_kappa_textbook_example() -> None:
    # Fleiss' kappa, Wikipedia's worked example: 10 subjects, 14 raters, 5 categories
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    # P̄ = 0.378, P̄e = 0.213, κ = 0.210
    assert ls.fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-5)
    assert ls.fleiss_kappa([[3, 0], [0, 3]]) == 1.0
    assert np.isnan(ls.fleiss_kappa([[2, 0], [2, 0]]))  # undefined: one category only
    with pytest.raises(ValueError, match="two ratings"):
        ls.fleiss_kappa([[1, 0], [2, 0]])


def test_human_file_round_trip_and_checks(tmp_path: Path) -> None:
    res, _ = imported(tmp_path)
    path = tmp_path / "human.json"
    ls.write_human(res, path, "export.json")
    table, stats = ls.read_human(path)
    assert table["id"].tolist() == res.decisions["id"].tolist()
    assert stats["kappa_related"] == pytest.approx(KAPPA_RELATED, abs=1e-4)
    payload = json.loads(path.read_text())
    payload["decisions"][2]["box"] = [5, 5, 1, 9]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"human\.json: decision 2 \(mention m2\): box"):
        ls.read_human(path)
    with pytest.raises(ValueError, match="no such file"):
        ls.read_human(tmp_path / "missing.json")


# -------------------------------------------------------------------------------- the split


def test_split_applies_every_human_decision(tmp_path: Path) -> None:
    res, paths = imported(tmp_path)
    mentions, ent, gro, kb = frames(paths)
    human = res.decisions[res.decisions["id"] != "m8"]  # m8: not annotated
    extra = pd.DataFrame([
        {"id": "m7", "related": True, "box": AUTO, "type": None, "related_votes": 1,
         "unrelated_votes": 0, "annotators": ["1"]},
        {"id": "ghost", "related": True, "box": AUTO, "type": None, "related_votes": 1,
         "unrelated_votes": 0, "annotators": ["1"]},
    ])  # fmt: skip
    human = pd.concat([human, extra], ignore_index=True)
    kept, counts, dropped, decisions = select_human(mentions, ent, gro, kb, CFG, human)
    d = decisions.set_index("id")
    assert d["decision"].to_dict() == {
        "m0": "kept", "m1": "dropped_unrelated", "m2": "dropped_iou", "m3": "kept",
        "m4": "kept", "m5": "dropped_unrelated", "m8": "not_annotated", "m9": "kept",
        "m7": "dropped_before_review", "ghost": "unknown_mention",
    }  # fmt: skip
    assert d.index[d["type_changed"]].tolist() == ["m3"]
    assert d.loc["m3", ["auto_type", "human_type", "type"]].tolist() == [
        "Location", "Event", "Event"
    ]  # fmt: skip
    assert d.loc["m4", "iou"] == pytest.approx(1.0) and d.loc["m4", "reference_box"] == str(
        FAR
    ).replace(".0", "")  # the human box replaced a disagreeing reference
    assert d.loc["m0", "iou"] == pytest.approx(812 / 868, abs=1e-4)
    assert d.loc["m7", "note"] == "dropped at entailment_dropped"
    assert sorted(kept["id"]) == ["m0", "m3", "m4", "m8", "m9"]
    assert kept.set_index("id").loc["m3", "type"] == "Event"
    assert counts["human_dropped_unrelated"] == 2 and counts["iou_dropped"] == 1
    steps = ["entailment_dropped", "grounding_failed", "human_dropped_unrelated", "iou_dropped"]
    assert counts["in"] == counts["kept"] + sum(counts[s] for s in steps)
    assert set(dropped["step"]) == set(steps)
    summary = ls.human_counts(decisions, res.agreement)
    assert {k: summary[f"human_{k}"] for k in ("kept", "dropped_unrelated", "dropped_iou",
            "not_annotated", "type_changed", "dropped_before_review", "unknown_mention")} == {
        "kept": 4, "dropped_unrelated": 2, "dropped_iou": 1, "not_annotated": 1,
        "type_changed": 1, "dropped_before_review": 1, "unknown_mention": 1,
    }  # fmt: skip


def test_without_human_decisions_the_split_is_unchanged(tmp_path: Path) -> None:
    mentions, ent, gro, kb = frames(build_dataset(tmp_path))
    kept, counts, dropped = select(mentions, ent, gro, kb, CFG)
    assert counts == {
        "in": 10, "entailment_dropped": 1, "grounding_failed": 1, "iou_dropped": 1, "kept": 7,
        "kept_without_reference": 0, "kept_train": counts["kept_train"],
        "kept_dev": counts["kept_dev"], "kept_test": counts["kept_test"],
    }  # fmt: skip
    assert "m4" not in set(kept["id"])  # its reference disagrees with the automatic box
    assert not any(c.startswith(("human_", "auto_type", "reviewed")) for c in kept.columns)
    assert list(dropped.columns) == ["id", "step"]


# --------------------------------------------------------------------------- CLI and stage


def _params(path: Path, human: str | None) -> Path:
    path.write_text(yaml.safe_dump({
        "split": {"iou_min": 0.5, "ratios": [0.6, 0.2, 0.2], "seed": 0, "prompt_box": "auto",
                  "human": human},
        "prompt": {"shape": "box", "color": "red", "thickness": None},
    }))  # fmt: skip
    return path


def _run_split(paths: dict[str, Path], tmp_path: Path, human: str | None) -> Path:
    from stages.split import app as split_app

    reports = tmp_path / "reports"
    got = CliRunner().invoke(split_app, [
        "--dataset", str(paths["dataset"]), "--entail-dir", str(paths["entail"]),
        "--ground-dir", str(paths["ground"]), "--out", str(tmp_path / "vpwiki"),
        "--reports", str(reports), "--params", str(_params(tmp_path / "params.yaml", human)),
    ])  # fmt: skip
    assert got.exit_code == 0, got.output
    return reports


def test_cli_round_trip_and_the_split_stage(tmp_path: Path) -> None:
    paths = build_dataset(tmp_path)
    runner, out = CliRunner(), tmp_path / "ls"
    got = runner.invoke(app, ["annotate", "export", "--dataset", str(paths["dataset"]),
                              "--entail-dir", str(paths["entail"]), "--ground-dir",
                              str(paths["ground"]), "--out", str(out)])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert "8 tasks of 10 mentions" in got.output
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks[0]["data"]["image"].startswith(ls.LOCAL_FILES_PREFIX)  # the CLI's default
    ET.fromstring((out / "labeling_config.xml").read_text())
    export = tmp_path / "export.json"
    export.write_text(json.dumps(plan_export(tasks)))
    human = tmp_path / "human.json"
    got = runner.invoke(app, ["annotate", "import", str(export), "--dataset",
                              str(paths["dataset"]), "--out", str(human)])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert "8 mentions decided" in got.output and "0 problems" in got.output

    reports = _run_split(paths, tmp_path, str(human))
    table = pd.read_csv(reports / "vpwiki_human_decisions.csv")
    assert table.set_index("id")["decision"].to_dict() == {
        "m0": "kept", "m1": "dropped_unrelated", "m2": "dropped_iou", "m3": "kept",
        "m4": "kept", "m5": "dropped_unrelated", "m8": "kept", "m9": "kept",
    }  # fmt: skip
    counts = json.loads((reports / "vpwiki_counts.json").read_text())
    assert counts["human_kept"] == 5 and counts["human_type_changed"] == 1
    assert counts["human_kappa_related"] == pytest.approx(KAPPA_RELATED, abs=1e-4)
    kept = pd.read_parquet(tmp_path / "vpwiki/mentions.parquet")
    assert kept.set_index("id").loc["m3", "type"] == "Event"

    reports = _run_split(paths, tmp_path, None)  # split.human: null again
    assert not (reports / "vpwiki_human_decisions.csv").exists()
    counts = json.loads((reports / "vpwiki_counts.json").read_text())
    assert not [k for k in counts if k.startswith("human_")] and counts["kept"] == 7
    # the grounding stage's boxes against the references: m4's reference is FAR, m6 failed
    quality = json.loads((reports / "vpwiki_grounding.json").read_text())
    assert quality == {
        "automatic": {"n": 10, "mean_iou": 0.75, "share_iou_ge_min": 0.8},
        "random_proposal": {"n": 10, "mean_iou": 0.1, "share_iou_ge_min": 0.1},
        "iou_min": 0.5,
    }


def test_cli_bad_input_names_the_file(tmp_path: Path) -> None:
    paths = build_dataset(tmp_path)
    export = tmp_path / "export.json"
    export.write_text('{"not": "a list"}')
    args = ["--dataset", str(paths["dataset"]), "--out", str(tmp_path / "h.json")]
    got = CliRunner().invoke(app, ["annotate", "import", str(export), *args])
    assert got.exit_code == 1
    assert "vpmel annotate: error:" in got.output and "export.json" in got.output
    got = CliRunner().invoke(app, ["annotate", "export", "--dataset", str(paths["dataset"]),
                                   "--entail-dir", str(tmp_path / "none")])  # fmt: skip
    assert got.exit_code == 1 and "run `dvc repro entail` first" in got.output
