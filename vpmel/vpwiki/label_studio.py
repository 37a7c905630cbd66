"""Human verification of VPWiki with Label Studio (paper §3 "Annotation Design" and A.6).

The paper's entailment and grounding modules only pre-annotate; annotators then (1) draw or
fix the visual prompt, (2) discard unrelated image–text pairs, (3) refine inaccurate boxes
and (4) assign the entity type. Agreement is Fleiss' κ (0.83 in the paper), and a sample
whose automatic box has IoU < 0.5 against the human box is discarded.

This module is the bridge to `Label Studio <https://labelstud.io>`_, in JSON only (vpmel
never imports Label Studio; it runs in its own environment, ``.venv-labelstudio``):

- export: :func:`labeling_config` (RectangleLabels for the prompt box, Choices for
  related/unrelated and for the seven entity types) and :func:`export_tasks`, one task per
  mention whose ``predictions`` carry the pipeline's box, type and entailment score;
- import: :func:`import_export` reads Label Studio's JSON export (one or several annotators
  per task) into one human decision per mention, with agreement statistics (Fleiss' κ on
  relatedness and types, mean pairwise IoU between annotators) and every task or annotation
  that could not be used (:class:`Problem`);
- :func:`write_human` / :func:`read_human`: the decisions file the ``split`` stage reads
  (``split.human``); :func:`human_decisions` lists what the split did with each decision.

Boxes: ours are ``[x1, y1, x2, y2]`` in pixels (vpmel.data.schema); Label Studio's rectangles
are ``x, y, width, height`` in percent of the image's width and height, rotated by
``rotation`` degrees clockwise around their top-left corner (:func:`box_to_ls`,
:func:`ls_to_box`).
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd

from vpmel.data.schema import ENTITY_TYPES
from vpmel.vpwiki.boxes import iou

#: Names of the labeling config's tags (the ``from_name`` / ``to_name`` of every result).
IMAGE, BOX, RELATED, TYPE = "image", "box", "related", "type"
#: The rectangle's one label, and the relatedness choices (paper §3, step 2).
BOX_LABEL = "prompt"
YES, NO = "related", "unrelated"
#: Label Studio serves files under LOCAL_FILES_DOCUMENT_ROOT at this URL.
LOCAL_FILES_PREFIX = "/data/local-files/?d="
MODEL_VERSION = "vpmel-auto"
HUMAN_FORMAT = "vpmel.human_decisions/1"

Box = list[float]


# ---------------------------------------------------------------------------------- export


def labeling_config(types: Sequence[str] = ENTITY_TYPES) -> str:
    """The Label Studio labeling config (XML) of the four annotation steps of paper §3.

    The image with the prompt box on the left; the mention words, sentence and gold entity,
    the related/unrelated choice and the entity type on the right.
    """
    view = ET.Element("View", style="display: flex; align-items: flex-start;")
    left = ET.SubElement(view, "View", style="flex: 60%; margin-right: 1em;")
    ET.SubElement(left, "Header", value="Draw or fix the box around the mention", size="5")
    ET.SubElement(left, "Image", name=IMAGE, value="$image", zoom="true", zoomControl="true")
    rect = ET.SubElement(left, "RectangleLabels", name=BOX, toName=IMAGE, strokeWidth="3")
    ET.SubElement(rect, "Label", value=BOX_LABEL, background="#e00000")
    right = ET.SubElement(view, "View", style="flex: 40%;")
    for title, name in (("Mention words", "mention"), ("Sentence", "sentence"),
                        ("Entity (gold)", "entity")):  # fmt: skip
        ET.SubElement(right, "Header", value=title, size="5")
        ET.SubElement(right, "Text", name=name, value=f"${name}")
    ET.SubElement(right, "Header", value="Image and mention words belong together?", size="5")
    related = ET.SubElement(right, "Choices", name=RELATED, toName=IMAGE, choice="single",
                            showInline="true", required="true")  # fmt: skip
    for value in (YES, NO):
        ET.SubElement(related, "Choice", value=value)
    ET.SubElement(right, "Header", value="Entity type", size="5")
    kind = ET.SubElement(
        right, "Choices", name=TYPE, toName=IMAGE, choice="single", showInline="true"
    )
    for value in types:
        ET.SubElement(kind, "Choice", value=value)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def box_to_ls(box: Sequence[float], width: int, height: int) -> dict[str, float]:
    """``[x1, y1, x2, y2]`` in pixels → Label Studio's ``x, y, width, height`` in percent."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return {
        "x": 100.0 * x1 / width,
        "y": 100.0 * y1 / height,
        "width": 100.0 * (x2 - x1) / width,
        "height": 100.0 * (y2 - y1) / height,
        "rotation": 0.0,
    }


def ls_to_box(value: Mapping[str, Any], width: int, height: int) -> Box:
    """Label Studio's rectangle (percent, rotated about its top-left corner) → pixels.

    A rotated rectangle becomes the axis-aligned box around it; the box is clipped to the
    image. Raises ValueError when a coordinate is missing or not a number.
    """
    try:
        x, w = (float(value[k]) * width / 100.0 for k in ("x", "width"))
        y, h = (float(value[k]) * height / 100.0 for k in ("y", "height"))
        angle = math.radians(float(value.get("rotation") or 0.0))
    except (KeyError, TypeError, ValueError) as problem:
        raise ValueError(f"rectangle value {dict(value)!r} is not x/y/width/height") from problem
    corners = np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])
    if angle:  # clockwise on screen (y points down)
        cos, sin = math.cos(angle), math.sin(angle)
        corners = corners @ np.array([[cos, sin], [-sin, cos]])
    corners += (x, y)
    x1, y1 = corners.min(axis=0).clip(0, (width, height))
    x2, y2 = corners.max(axis=0).clip(0, (width, height))
    return [float(x1), float(y1), float(x2), float(y2)]


def image_url(image: Path, document_root: Path, prefix: str = LOCAL_FILES_PREFIX) -> str:
    """The URL Label Studio serves ``image`` at (local-files serving from ``document_root``)."""
    image, root = Path(image).resolve(), Path(document_root).resolve()
    if not image.is_relative_to(root):
        raise ValueError(f"{image} is not under the document root {root}")
    return prefix + quote(image.relative_to(root).as_posix())


def _rectangle(box: Sequence[float], width: int, height: int, rid: str) -> dict[str, Any]:
    return {
        "id": rid,
        "type": "rectanglelabels",
        "from_name": BOX,
        "to_name": IMAGE,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": box_to_ls(box, width, height) | {"rectanglelabels": [BOX_LABEL]},
    }


def _choice(name: str, value: str, rid: str) -> dict[str, Any]:
    return {
        "id": rid,
        "type": "choices",
        "from_name": name,
        "to_name": IMAGE,
        "value": {"choices": [value]},
    }


def prediction(
    box: Sequence[float] | None,
    width: int,
    height: int,
    related: bool,
    entity_type: str | None,
    score: float,
    rid: str = "auto",
) -> dict[str, Any]:
    """One Label Studio prediction: the pipeline's box, relatedness and type (A.6)."""
    result = []
    if box is not None:
        result.append(_rectangle(box, width, height, f"{rid}-box"))
    result.append(_choice(RELATED, YES if related else NO, f"{rid}-related"))
    if entity_type in ENTITY_TYPES:
        result.append(_choice(TYPE, entity_type, f"{rid}-type"))
    return {"model_version": MODEL_VERSION, "score": float(score), "result": result}


def export_tasks(
    mentions: pd.DataFrame,
    entailment: pd.DataFrame,
    grounding: pd.DataFrame,
    kb: pd.DataFrame,
    dataset_root: Path,
    document_root: Path,
    include_rejected: bool = False,
    prefix: str = LOCAL_FILES_PREFIX,
) -> list[dict[str, Any]]:
    """One Label Studio task per mention, with the pipeline's annotation as its prediction.

    By default the mentions the ``split`` stage would check against a reference box: those
    the entailment module kept and the grounding module placed. ``include_rejected`` adds
    the entailment rejects and grounding failures too (predicted "unrelated" / no box), for
    a full human pass. The type predicted is the KB's (as the ``split`` stage assigns it).
    """
    df = mentions.merge(entailment[["id", "entailed", "probability"]], on="id", how="left")
    df = df.merge(grounding[["id", "auto_box", "ground_score"]], on="id", how="left")
    if df["entailed"].isna().any():
        missing = df.loc[df["entailed"].isna(), "id"].head(5).tolist()
        raise ValueError(f"entailment table lacks mentions, e.g. {missing}")
    if not include_rejected:
        df = df[df["entailed"].astype(bool) & df["auto_box"].notna()]
    kb_rows = kb.set_index("qid")
    tasks = []
    for r in df.itertuples(index=False):
        auto_type = _text(kb_rows["type"].get(r.qid)) or _text(r.type)
        box = None if _missing(r.auto_box) else [float(v) for v in r.auto_box]
        data = {
            IMAGE: image_url(Path(dataset_root) / r.image, document_root, prefix),
            "mention_id": str(r.id),
            "pair_id": str(r.pair_id),
            "sentence": r.sentence,
            "mention": r.mention or "(none)",
            "qid": r.qid,
            "entity": f"{kb_rows['name'].get(r.qid, '?')} ({r.qid})",
            "auto_type": auto_type,
            "entail_probability": round(float(r.probability), 4),
            "ground_score": None if _missing(r.ground_score) else round(float(r.ground_score), 4),
        }
        pred = prediction(
            box, r.image_width, r.image_height, bool(r.entailed), auto_type, r.probability
        )
        tasks.append({"data": data, "predictions": [pred]})
    return tasks


def local_storage_path(tasks: Iterable[Mapping[str, Any]], document_root: Path) -> str:
    """The folder a Label Studio local-files storage must point at to serve every image.

    Label Studio serves ``?d=`` paths only below a project's local storage, so the project
    needs one at the deepest folder holding all the tasks' images.
    """
    root = Path(document_root).resolve()
    folders = {(root / _url_path(t["data"][IMAGE])).parent.as_posix() for t in tasks} or {
        root.as_posix()
    }
    return os.path.commonpath(sorted(folders))


def _url_path(url: str) -> str:
    return unquote(url.split("?d=", 1)[1]) if "?d=" in url else url


def write_project(
    out: Path, tasks: list[dict[str, Any]], document_root: Path, config: str | None = None
) -> dict[str, Any]:
    """Write ``labeling_config.xml``, ``tasks.json`` and ``project.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "labeling_config.xml").write_text(config or labeling_config())
    (out / "tasks.json").write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")
    meta = {
        "title": "VPWiki human verification",
        "document_root": str(Path(document_root).resolve()),
        "local_storage_path": local_storage_path(tasks, document_root),
        "tasks": len(tasks),
    }
    (out / "project.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


# ---------------------------------------------------------------------------------- import


@dataclass(frozen=True)
class Problem:
    """A task or annotation of the export that could not be (fully) used."""

    task: Any
    annotation: Any
    mention_id: str | None
    problem: str


@dataclass(frozen=True)
class Vote:
    """One annotator's answer for one mention (None: not given)."""

    annotator: str
    related: bool | None
    box: Box | None
    type: str | None


@dataclass
class ImportResult:
    decisions: pd.DataFrame
    agreement: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)


def read_export(path: Path) -> list[dict[str, Any]]:
    """Label Studio's JSON export (a list of tasks); a clear error naming the file if not."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise ValueError(f"{path}: not JSON ({problem})") from None
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: expected Label Studio's JSON export (a list of tasks), "
                         f"got {type(tasks).__name__}")  # fmt: skip
    return tasks


def _annotator(annotation: Mapping[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("email") or who.get("id")
    return str(who) if who is not None else f"annotation {annotation.get('id')}"


def _sizes(mentions: pd.DataFrame | None) -> dict[str, tuple[int, int]]:
    if mentions is None:
        return {}
    return {
        str(i): (int(w), int(h))
        for i, w, h in zip(
            mentions["id"], mentions["image_width"], mentions["image_height"], strict=True
        )
    }


def parse_annotation(
    annotation: Mapping[str, Any],
    size: tuple[int, int] | None,
    note: Any,
) -> Vote | None:
    """One annotation → a :class:`Vote`; ``note(problem)`` records what cannot be used.

    Returns None when the annotation is unusable as a whole (skipped, empty, malformed).
    ``size`` is the dataset's (width, height) of the image; the rectangle's percentages are
    applied to it (Label Studio's ``original_width/height`` when it is None).
    """
    if annotation.get("was_cancelled"):
        note("skipped (cancelled) by the annotator")
        return None
    results = annotation.get("result")
    if not isinstance(results, list) or not results:
        note("empty result")
        return None
    related, kind, boxes = None, None, []
    for res in results:
        if not isinstance(res, Mapping) or not isinstance(res.get("value"), Mapping):
            note(f"malformed result {res!r}")
            continue
        name, value = res.get("from_name"), res["value"]
        if name == BOX and res.get("type") == "rectanglelabels":
            box = _result_box(res, size, note)
            if box is not None:
                boxes.append(box)
        elif name in (RELATED, TYPE) and res.get("type") == "choices":
            choices = value.get("choices") or []
            if len(choices) != 1:
                note(f"{name}: expected one choice, got {choices!r}")
            elif name == RELATED and choices[0] in (YES, NO):
                related = choices[0] == YES
            elif name == TYPE and choices[0] in ENTITY_TYPES:
                kind = choices[0]
            else:
                note(f"{name}: unknown choice {choices[0]!r}")
        else:
            note(f"result {name!r} of type {res.get('type')!r} is not in the labeling config")
    if len(boxes) > 1:
        note(f"{len(boxes)} boxes drawn, one expected: the box of this annotation is ignored")
        boxes = []
    if related is None:
        note("no related/unrelated choice")
    return Vote(_annotator(annotation), related, boxes[0] if boxes else None, kind)


def _result_box(res: Mapping[str, Any], size: tuple[int, int] | None, note: Any) -> Box | None:
    own = res.get("original_width"), res.get("original_height")
    if size is None:
        size = own
    elif all(own) and tuple(own) != tuple(size):
        note(f"image is {own[0]}x{own[1]} in Label Studio but {size[0]}x{size[1]} in the "
             "dataset: the box's percentages are applied to the dataset's size")  # fmt: skip
    if not size or not all(size):
        note("rectangle without original_width/original_height")
        return None
    try:
        box = ls_to_box(res["value"], int(size[0]), int(size[1]))
    except ValueError as problem:
        note(str(problem))
        return None
    if box[2] - box[0] < 1 or box[3] - box[1] < 1:
        note(f"degenerate box {box}")
        return None
    return box


def _auto_type(task: Mapping[str, Any]) -> str | None:
    """The pipeline's type: the task's data (our export), else a prediction's type choice."""
    if task["data"].get("auto_type") in ENTITY_TYPES:
        return task["data"]["auto_type"]
    for pred in task.get("predictions") or []:  # Label Studio exports only their ids
        for res in (pred.get("result") if isinstance(pred, Mapping) else None) or []:
            if isinstance(res, Mapping) and res.get("from_name") == TYPE:
                choices = (res.get("value") or {}).get("choices") or [None]
                return choices[0]
    return None


def collect_votes(
    tasks: Sequence[Any], mentions: pd.DataFrame | None = None
) -> tuple[dict[str, list[Vote]], dict[str, dict[str, Any]], list[Problem]]:
    """Every usable vote per mention id, task facts per mention, and every problem."""
    sizes, known = _sizes(mentions), None if mentions is None else set(mentions["id"].astype(str))
    votes: dict[str, list[Vote]] = {}
    facts: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for n, task in enumerate(tasks):
        if not isinstance(task, Mapping) or not isinstance(task.get("data"), Mapping):
            problems.append(Problem(f"#{n}", None, None, "not a task (no data object)"))
            continue
        tid, mid = task.get("id", f"#{n}"), task["data"].get("mention_id")
        if mid is None:
            problems.append(Problem(tid, None, None, "task has no data.mention_id"))
            continue
        mid = str(mid)
        if known is not None and mid not in known:
            problems.append(Problem(tid, None, mid, "mention id not in the dataset"))
            continue
        if mid in facts:
            problems.append(Problem(tid, None, mid, f"second task for this mention (task "
                                    f"{facts[mid]['task']}): annotations merged"))  # fmt: skip
        facts.setdefault(mid, {"task": tid, "auto_type": _auto_type(task)})
        by_annotator: dict[str, Vote] = {}
        for ann in task.get("annotations") or []:
            aid = ann.get("id") if isinstance(ann, Mapping) else None

            def note(text: str, tid: Any = tid, aid: Any = aid, mid: str = mid) -> None:
                problems.append(Problem(tid, aid, mid, text))

            if not isinstance(ann, Mapping):
                note("annotation is not an object")
                continue
            vote = parse_annotation(ann, sizes.get(mid), note)
            if vote is None:
                continue
            if vote.annotator in by_annotator:
                note(f"annotator {vote.annotator} annotated this task again: the later kept")
            by_annotator[vote.annotator] = vote
        if not by_annotator:
            problems.append(Problem(tid, None, mid, "no usable annotation"))
            continue
        votes.setdefault(mid, []).extend(by_annotator.values())
    return votes, facts, problems


def _majority_type(types: list[str], auto_type: str | None) -> str | None:
    """Most frequent type; a tie goes to the automatic type, else to ENTITY_TYPES order."""
    if not types:
        return None
    counts = Counter(types)
    top = max(counts.values())
    tied = [t for t in ENTITY_TYPES if counts.get(t) == top]
    return auto_type if auto_type in tied else tied[0]


def aggregate(mid: str, votes: list[Vote], auto_type: str | None, task: Any) -> dict[str, Any]:
    """One human decision from one mention's votes.

    Relatedness by majority, a tie counting as unrelated (only a majority keeps a pair);
    the human box is the coordinate-wise median of the boxes of the annotators who did not
    call the pair unrelated; the type by majority (:func:`_majority_type`).
    """
    yes = sum(v.related is True for v in votes)
    no = sum(v.related is False for v in votes)
    related = None if yes + no == 0 else yes > no
    boxes = [v.box for v in votes if v.box is not None and v.related is not False]
    box = np.median(np.asarray(boxes), axis=0).round(2).tolist() if boxes else None
    pair_ious = [iou(a, b) for a, b in combinations(boxes, 2)]
    return {
        "id": mid,
        "task": task,
        "related": related,
        "box": box,
        "type": _majority_type([v.type for v in votes if v.type], auto_type),
        "auto_type": auto_type,
        "related_votes": yes,
        "unrelated_votes": no,
        "types": [v.type for v in votes],
        "annotators": [v.annotator for v in votes],
        "annotator_iou": round(float(np.mean(pair_ious)), 4) if pair_ious else None,
    }


def fleiss_kappa(table: np.ndarray | Sequence[Sequence[int]]) -> float:
    """Fleiss' κ (Fleiss 1971) of a subjects × categories table of rating counts.

    ``table[i, j]`` is how many raters put subject i in category j. Subjects may have
    different numbers of raters (each needs at least two): P_i = (Σ_j n_ij² − n_i) /
    (n_i (n_i − 1)), p_j = Σ_i n_ij / Σ_i n_i, κ = (P̄ − P̄_e) / (1 − P̄_e) with P̄_e = Σ_j p_j²;
    with equal n_i this is the textbook formula. NaN when undefined (no subjects, or every
    rating in one category).
    """
    counts = np.asarray(table, dtype=float)
    if counts.ndim != 2 or not len(counts):
        return float("nan")
    n = counts.sum(axis=1)
    if (n < 2).any():
        raise ValueError("every subject needs at least two ratings for Fleiss' kappa")
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_j = counts.sum(axis=0) / n.sum()
    p_e = float((p_j**2).sum())
    if math.isclose(p_e, 1.0):
        return float("nan")
    return (float(p_i.mean()) - p_e) / (1.0 - p_e)


def _count_table(ratings: Iterable[Sequence[Any]], categories: Sequence[Any]) -> np.ndarray:
    rows = [[list(r).count(c) for c in categories] for r in ratings if len(r) >= 2]
    return np.asarray(rows, dtype=float).reshape(-1, len(categories))


def agreement(votes: Mapping[str, list[Vote]]) -> dict[str, Any]:
    """Fleiss' κ on relatedness and on types, and the mean pairwise IoU of annotators' boxes.

    Each κ is over the mentions with at least two answers to that question.
    """
    related = [[v.related for v in vs if v.related is not None] for vs in votes.values()]
    types = [[v.type for v in vs if v.type] for vs in votes.values()]
    rel_table, type_table = _count_table(related, [True, False]), _count_table(types, ENTITY_TYPES)
    ious = [
        iou(a.box, b.box)
        for vs in votes.values()
        for a, b in combinations([v for v in vs if v.box is not None], 2)
    ]
    return {
        "mentions": len(votes),
        "annotations": sum(len(vs) for vs in votes.values()),
        "annotators": len({v.annotator for vs in votes.values() for v in vs}),
        "kappa_related": _finite(fleiss_kappa(rel_table)),
        "kappa_related_mentions": len(rel_table),
        "kappa_type": _finite(fleiss_kappa(type_table)),
        "kappa_type_mentions": len(type_table),
        "mean_pairwise_iou": round(float(np.mean(ious)), 4) if ious else None,
        "box_pairs": len(ious),
    }


def import_export(tasks: Sequence[Any], mentions: pd.DataFrame | None = None) -> ImportResult:
    """Label Studio's JSON export → human decisions per mention, agreement, problems.

    ``mentions`` (the dataset's table) checks every mention id and gives the image sizes
    the boxes are converted with.
    """
    votes, facts, problems = collect_votes(tasks, mentions)
    rows = [aggregate(mid, vs, facts[mid]["auto_type"], facts[mid]["task"])
            for mid, vs in votes.items()]  # fmt: skip
    for row in rows:
        if row["related"] is None:
            problems.append(Problem(row["task"], None, row["id"], "no annotator said whether "
                                    "the pair is related: treated as not annotated"))  # fmt: skip
    decisions = pd.DataFrame(rows, columns=DECISION_COLUMNS)
    stats = agreement(votes) | {"tasks": len(tasks), "problems": len(problems)}
    return ImportResult(decisions, stats, problems)


DECISION_COLUMNS = [
    "id", "task", "related", "box", "type", "auto_type", "related_votes", "unrelated_votes",
    "types", "annotators", "annotator_iou",
]  # fmt: skip


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def write_human(result: ImportResult, path: Path, source: str = "") -> None:
    """The decisions file ``vpmel annotate import`` writes and ``split.human`` names."""
    payload = {
        "format": HUMAN_FORMAT,
        "source": source,
        "agreement": result.agreement,
        "problems": [asdict(p) for p in result.problems],
        "decisions": [
            {k: _plain(v) for k, v in row.items()}
            for row in result.decisions.to_dict(orient="records")
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_human(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The decisions file → (one row per mention: id, related, box, type, votes; agreement).

    Every record is checked; a bad one is an error naming the file and the record.
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (split.human; write it with "
                         "`vpmel annotate import`)") from None  # fmt: skip
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise ValueError(f"{path}: not JSON ({problem})") from None
    if not isinstance(payload, dict) or payload.get("format") != HUMAN_FORMAT:
        raise ValueError(f"{path}: not a human decisions file ({HUMAN_FORMAT}); write it with "
                         "`vpmel annotate import`")  # fmt: skip
    rows = payload.get("decisions") or []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        _check_decision(path, n, row, seen)
    frame = pd.DataFrame(rows, columns=DECISION_COLUMNS)
    return frame, dict(payload.get("agreement") or {})


def _check_decision(path: Path, n: int, row: Any, seen: set[str]) -> None:
    where = f"{path}: decision {n}"
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
        raise ValueError(f"{where}: expected an object with a string id, got {row!r}")
    where += f" (mention {row['id']})"
    if row["id"] in seen:
        raise ValueError(f"{where}: mention listed twice")
    seen.add(row["id"])
    if row.get("related") not in (True, False, None):
        raise ValueError(f"{where}: related must be true, false or null")
    box = row.get("box")
    if box is not None:
        ok = isinstance(box, list) and len(box) == 4
        ok = ok and all(isinstance(v, int | float) for v in box)
        if not ok or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"{where}: box must be [x1, y1, x2, y2] with x1 < x2, y1 < y2")
    if row.get("type") not in (*ENTITY_TYPES, None):
        raise ValueError(f"{where}: type {row['type']!r} is not one of {list(ENTITY_TYPES)}")


# --------------------------------------------------------------------- the split with humans

#: What the ``split`` stage did with each mention under review (vpwiki_human_decisions.csv).
DECISIONS = ("kept", "dropped_unrelated", "dropped_iou", "not_annotated",
             "dropped_before_review", "unknown_mention")  # fmt: skip


def apply_human_boxes(df: pd.DataFrame, human: pd.DataFrame) -> pd.DataFrame:
    """Join the human decisions onto the mentions that reached the IoU filter.

    Adds ``human_related``, ``human_box``, ``human_type``, ``reviewed``; a human box becomes
    the reference box ``box`` the IoU filter compares the automatic box with (§3).
    """
    cols = human.rename(columns={"related": "human_related", "box": "human_box",
                                 "type": "human_type"})  # fmt: skip
    cols = cols[["id", "human_related", "human_box", "human_type", "related_votes",
                 "unrelated_votes", "annotators"]]  # fmt: skip
    out = df.merge(cols, on="id", how="left")
    out["reviewed"] = out["id"].isin(set(human["id"]))
    for col in ("related_votes", "unrelated_votes"):
        out[col] = out[col].astype("Int64")
    has_box = out["human_box"].map(lambda b: isinstance(b, list | np.ndarray))
    out["reference_box"] = out["box"]
    out["box"] = [
        np.asarray(h, dtype=np.float32) if use else b
        for h, b, use in zip(out["human_box"], out["box"], has_box, strict=True)
    ]
    out.index = df.index
    return out


def human_decisions(
    reviewed: pd.DataFrame,
    kept_ids: set[str],
    unrelated_ids: set[str],
    iou_dropped_ids: set[str],
    human: pd.DataFrame,
    earlier: Mapping[str, str],
) -> pd.DataFrame:
    """One row per mention under review or decided by a human: what the split did, and why.

    ``reviewed`` holds every mention that reached the human/IoU step (with ``iou``,
    ``auto_box``, ``auto_type``, ``type``); ``earlier`` maps the mentions dropped before it
    to their step.
    """
    rows = []
    for r in reviewed.itertuples(index=False):
        if r.id in unrelated_ids:
            decision = "dropped_unrelated"
        elif not r.reviewed:
            decision = "not_annotated"
        elif r.id in iou_dropped_ids:
            decision = "dropped_iou"
        else:
            decision = "kept"
        changed = bool(r.reviewed and isinstance(r.human_type, str) and r.human_type != r.auto_type)
        rows.append({
            "id": r.id, "decision": decision, "kept": r.id in kept_ids,
            "type_changed": changed and decision == "kept", "human_related": r.human_related,
            "related_votes": r.related_votes, "unrelated_votes": r.unrelated_votes,
            "iou": None if _missing(r.iou) else round(float(r.iou), 4),
            "auto_box": _box_text(r.auto_box), "human_box": _box_text(r.human_box),
            "reference_box": _box_text(r.reference_box), "auto_type": r.auto_type,
            "human_type": r.human_type, "type": r.type,
            "annotators": " ".join(r.annotators) if isinstance(r.annotators, list) else None,
            "note": "",
        })  # fmt: skip
    seen = set(reviewed["id"])
    for h in human.itertuples(index=False):
        if h.id in seen:
            continue
        decision = "dropped_before_review" if h.id in earlier else "unknown_mention"
        note = f"dropped at {earlier[h.id]}" if h.id in earlier else "not in the dataset"
        rows.append({"id": h.id, "decision": decision, "kept": False, "type_changed": False,
                     "human_related": h.related, "related_votes": h.related_votes,
                     "unrelated_votes": h.unrelated_votes, "human_box": _box_text(h.box),
                     "human_type": h.type, "note": note})  # fmt: skip
    return pd.DataFrame(rows, columns=HUMAN_CSV_COLUMNS)


HUMAN_CSV_COLUMNS = [
    "id", "decision", "kept", "type_changed", "human_related", "related_votes",
    "unrelated_votes", "iou", "auto_box", "human_box", "reference_box", "auto_type",
    "human_type", "type", "annotators", "note",
]  # fmt: skip


def human_counts(decisions: pd.DataFrame, stats: Mapping[str, Any]) -> dict[str, Any]:
    """Counts of every decision (and the agreement) for vpwiki_counts.json and Table 1."""
    counts: dict[str, Any] = {
        f"human_{d}": int((decisions["decision"] == d).sum()) for d in DECISIONS
    }
    counts["human_type_changed"] = int(decisions["type_changed"].sum())
    for key in ("kappa_related", "kappa_type", "mean_pairwise_iou"):
        counts[f"human_{key}"] = stats.get(key)
    return counts


def _box_text(box: Any) -> str | None:
    if not isinstance(box, list | tuple | np.ndarray):
        return None
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"
