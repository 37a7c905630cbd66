"""Assembling VPWiki (paper §3, Appendix A.6) from annotated mentions.

The automatic pipeline's last steps: drop the pairs the entailment module found unrelated
and the mentions the grounding module could not place, keep a mention only when its
automatic box agrees with the reference box (IoU >= 0.5; mentions without a reference are
kept and flagged), take the entity type from the KB, draw the visual prompt, split 8:1:1
grouped by image–text pair, and write the released VPWiki schema
``{id, sentence, mentions: " ", entities, answer, imgPath}`` next to our own table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vpmel.data.images import open_rgb
from vpmel.prompts import PromptStyle, draw_prompt
from vpmel.vpwiki.boxes import grounding_quality, iou
from vpmel.vpwiki.label_studio import apply_human_boxes, human_decisions
from vpmel.vpwiki.split import SPLITS, split_by_pair

#: Counting steps, in pipeline order (reports/vpwiki_counts.json).
STEPS = ("in", "entailment_dropped", "grounding_failed", "iou_dropped", "kept")


@dataclass(frozen=True)
class BuildConfig:
    iou_min: float = 0.5
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    #: which box the prompt marks: the automatic one ("auto", as the pipeline produces it)
    #: or the reference annotation where there is one ("reference")
    prompt_box: str = "auto"

    def __post_init__(self) -> None:
        if self.prompt_box not in ("auto", "reference"):
            raise ValueError(f"prompt box must be 'auto' or 'reference', not {self.prompt_box!r}")


def select(
    mentions: pd.DataFrame,
    entailment: pd.DataFrame,
    grounding: pd.DataFrame,
    kb: pd.DataFrame,
    cfg: BuildConfig,
) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame]:
    """Apply the filters; return (kept mentions with split, counts per step, dropped list).

    ``entailment`` has columns id, entailed (bool), probability; ``grounding`` has id,
    auto_box (list or None), ground_score. The dropped list names each mention and why.
    """
    kept, counts, dropped, _ = _select(mentions, entailment, grounding, kb, cfg, None)
    return kept, counts, dropped


def select_human(
    mentions: pd.DataFrame,
    entailment: pd.DataFrame,
    grounding: pd.DataFrame,
    kb: pd.DataFrame,
    cfg: BuildConfig,
    human: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame, pd.DataFrame]:
    """:func:`select` with human verification (paper §3; ``vpmel annotate import``).

    Of the mentions that reach the IoU filter, those the annotators marked unrelated are
    dropped (step ``human_dropped_unrelated``), a human box replaces the reference box the
    automatic box must reach IoU >= ``iou_min`` with, and a human type replaces the KB's.
    Mentions without a human decision are filtered as before. The fourth table lists what
    was done with every mention under review (vpmel.vpwiki.label_studio.human_decisions).
    """
    return _select(mentions, entailment, grounding, kb, cfg, human)


def _select(
    mentions: pd.DataFrame,
    entailment: pd.DataFrame,
    grounding: pd.DataFrame,
    kb: pd.DataFrame,
    cfg: BuildConfig,
    human: pd.DataFrame | None,
) -> tuple[pd.DataFrame, dict[str, int], pd.DataFrame, pd.DataFrame | None]:
    df = mentions.merge(entailment[["id", "entailed", "probability"]], on="id", how="left")
    df = df.merge(grounding[["id", "auto_box", "ground_score"]], on="id", how="left")
    if df["entailed"].isna().any():
        missing = df.loc[df["entailed"].isna(), "id"].head(5).tolist()
        raise ValueError(f"entailment table lacks mentions, e.g. {missing}")
    counts = {"in": len(df)}
    dropped: list[pd.DataFrame] = []

    def drop(mask: pd.Series, step: str) -> None:
        dropped.append(df.loc[mask, ["id"]].assign(step=step))
        counts[step] = int(mask.sum())

    drop(~df["entailed"].astype(bool), "entailment_dropped")
    df = df[df["entailed"].astype(bool)]
    no_box = df["auto_box"].isna()
    drop(no_box, "grounding_failed")
    df = df[~no_box].copy()
    if human is not None:  # the annotators' relatedness and boxes (§3, steps 1-3)
        df = apply_human_boxes(df, human)
        unrelated = df["human_related"].eq(False)
        drop(unrelated, "human_dropped_unrelated")
        unrelated_rows = df[unrelated]
        df = df[~unrelated].copy()
    df["has_reference"] = df["box"].notna()
    df["iou"] = [
        iou(a, r) if r is not None else np.nan
        for a, r in zip(df["auto_box"], df["box"], strict=True)
    ]
    low = df["has_reference"] & (df["iou"] < cfg.iou_min)
    drop(low, "iou_dropped")
    reviewed = df
    df = df[~low].copy()
    counts["kept"] = len(df)
    counts["kept_without_reference"] = int((~df["has_reference"]).sum())

    kb_types = kb.set_index("qid")["type"]
    df["type"] = df["qid"].map(kb_types).fillna(df["type"])
    decisions = None
    if human is not None:  # the annotators' type (§3, step 4) over the KB's
        df["auto_type"] = df["type"]
        df["type"] = df["human_type"].where(df["human_type"].map(_is_text), df["type"])
        low_ids = set(reviewed.loc[low, "id"])
        reviewed = pd.concat([unrelated_rows, reviewed])
        reviewed["auto_type"] = reviewed["qid"].map(kb_types).fillna(reviewed["type"])
        reviewed["type"] = reviewed["id"].map(df.set_index("id")["type"])
        earlier = pd.concat(dropped[:2]).set_index("id")["step"].to_dict()
        decisions = human_decisions(
            reviewed, set(df["id"]), set(unrelated_rows["id"]), low_ids, human, earlier
        )
        # the votes are listed in the decisions; the kept table keeps the types and boxes
        df = df.drop(columns=["human_related", "human_box", "annotators", "related_votes",
                              "unrelated_votes"])  # fmt: skip
    df["entity_name"] = df["qid"].map(kb.set_index("qid")["name"])
    df["split"] = split_by_pair(df["pair_id"], cfg.ratios, cfg.seed) if len(df) else []
    for name in SPLITS:
        counts[f"kept_{name}"] = int((df["split"] == name).sum())
    return df.reset_index(drop=True), counts, pd.concat(dropped, ignore_index=True), decisions


def grounding_report(
    mentions: pd.DataFrame, grounding: pd.DataFrame, iou_min: float
) -> dict[str, object]:
    """How well the grounding stage's boxes match the reference boxes, next to its
    random-proposal baseline: for each, n (mentions with a reference), mean IoU and the share
    with IoU >= ``iou_min`` (the filter's threshold, so this lives in `split`, not `ground`).

    ``grounding`` has id, auto_box (None: grounding failed, counted as IoU 0) and
    random_box; the reference is each mention's ``box`` in ``mentions``.
    """
    table = grounding.merge(mentions[["id", "box"]], on="id", how="left", validate="1:1")
    automatic = np.array([[0.0] * 4 if b is None else list(b) for b in table["auto_box"]])
    proposals = np.array([list(b) for b in table["random_box"]])
    reference = [None if b is None else list(b) for b in table["box"]]
    return {
        "automatic": grounding_quality(automatic, reference, iou_min),
        "random_proposal": grounding_quality(proposals, reference, iou_min),
        "iou_min": iou_min,
    }


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def prompted_image_path(split: str, mention_id: str) -> str:
    """Released layout: ``test_img/mention_0.jpg``."""
    return f"{split}_img/mention_{mention_id}.png"


def write_prompted_images(
    df: pd.DataFrame,
    dataset_root: Path,
    out: Path,
    style: PromptStyle,
    cfg: BuildConfig,
    track: Callable = lambda it, **_: it,
) -> pd.Series:
    """Draw each kept mention's prompt into its image; return the new relative paths."""
    paths = []
    for row in track(df.itertuples(index=False), total=len(df), description="prompts"):
        use_ref = cfg.prompt_box == "reference" and row.box is not None
        box = row.box if use_ref else row.auto_box
        rel = prompted_image_path(row.split, row.id)
        prompted = draw_prompt(open_rgb(dataset_root / row.image), box, style)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        prompted.save(out / rel)
        paths.append(rel)
    return pd.Series(paths, index=df.index)


def released_records(df: pd.DataFrame) -> list[dict[str, str]]:
    """The rows of one split in the authors' released VPWiki schema."""
    return [
        {
            "id": str(r.id),
            "sentence": r.sentence,
            "mentions": " ",
            "entities": r.entity_name,
            "answer": r.qid,
            "imgPath": r.prompted_image,
        }
        for r in df.itertuples(index=False)
    ]


def write_released(df: pd.DataFrame, out: Path) -> None:
    for name in SPLITS:
        records = released_records(df[df["split"] == name])
        (out / f"{name}.json").write_text(json.dumps(records, ensure_ascii=False, indent=1))
