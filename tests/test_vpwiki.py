"""Assembling VPWiki: every mention is kept or counted at the step that dropped it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vpmel.prompts import PromptStyle
from vpmel.vpwiki.assemble import BuildConfig, select, write_prompted_images, write_released


def _inputs(n_pairs: int = 30):
    rows, ent, gro = [], [], []
    for p in range(n_pairs):
        for m in range(2):
            mid = f"d-{p}-{m}"
            ref = None if (p % 10 == 0 and m == 1) else [10.0, 10.0, 50.0, 50.0]
            rows.append(
                dict(
                    id=mid,
                    pair_id=f"d-{p}",
                    sentence=f"scene {p} words here",
                    mention="x",
                    qid=f"Q{p % 4}",
                    image=f"img/{p}.png",
                    box=ref,
                    type=None,
                )
            )
            ent.append(dict(id=mid, entailed=p % 7 != 3, probability=0.9 if p % 7 != 3 else 0.1))
            auto = [12.0, 12.0, 52.0, 52.0]  # IoU with the reference ~0.82
            if p % 5 == 1 and m == 0:
                auto = [60.0, 60.0, 90.0, 90.0]  # disagrees with the reference
            if p % 11 == 2 and m == 1:
                auto = None  # grounding failed
            gro.append(dict(id=mid, auto_box=auto, ground_score=0.5))
    kb = pd.DataFrame(
        {
            "qid": [f"Q{i}" for i in range(4)],
            "name": [f"E{i}" for i in range(4)],
            "type": ["Person", "Country", None, "Works"],
        }
    )
    return pd.DataFrame(rows), pd.DataFrame(ent), pd.DataFrame(gro), kb


def test_counts_add_up_and_filters_apply() -> None:
    mentions, ent, gro, kb = _inputs()
    kept, counts, dropped = select(mentions, ent, gro, kb, BuildConfig())
    assert counts["in"] == len(mentions)
    steps = ["entailment_dropped", "grounding_failed", "iou_dropped"]
    assert counts["in"] == counts["kept"] + sum(counts[s] for s in steps)
    assert len(dropped) == sum(counts[s] for s in steps)
    assert set(dropped["id"]).isdisjoint(kept["id"])
    # pairs 3, 10, 17, 24 were not entailed
    assert counts["entailment_dropped"] == 8
    assert not kept["pair_id"].isin(["d-3", "d-10", "d-17", "d-24"]).any()
    assert (kept.loc[kept["has_reference"], "iou"] >= 0.5).all()
    assert counts["kept_without_reference"] == int((~kept["has_reference"]).sum()) > 0
    # type comes from the KB; name too
    assert kept.loc[kept["qid"] == "Q1", "type"].eq("Country").all()
    assert kept.loc[kept["qid"] == "Q3", "entity_name"].eq("E3").all()
    # grouped split
    assert kept.groupby("pair_id")["split"].nunique().max() == 1
    assert counts["kept_train"] + counts["kept_dev"] + counts["kept_test"] == counts["kept"]


def test_missing_entailment_rows_are_an_error() -> None:
    mentions, ent, gro, kb = _inputs()
    with pytest.raises(ValueError, match="entailment"):
        select(mentions, ent.iloc[1:], gro, kb, BuildConfig())


def test_prompts_and_released_schema(tmp_path) -> None:
    mentions, ent, gro, kb = _inputs(12)
    (tmp_path / "ds/img").mkdir(parents=True)
    for p in range(12):
        Image.new("RGB", (100, 80), "white").save(tmp_path / f"ds/img/{p}.png")
    kept, _, _ = select(mentions, ent, gro, kb, BuildConfig(prompt_box="reference"))
    kept["prompted_image"] = write_prompted_images(
        kept, tmp_path / "ds", tmp_path / "out", PromptStyle(), BuildConfig(prompt_box="reference")
    )
    row = kept.iloc[0]
    img = np.asarray(Image.open(tmp_path / "out" / row.prompted_image))
    x1, y1 = (int(v) for v in (row.box if row.box is not None else row.auto_box)[:2])
    assert img[y1, x1 + 10, 0] > 200 and img[y1, x1 + 10, 1] < 60  # red line (1 px here)
    write_released(kept, tmp_path / "out")
    records = []
    for split in ("train", "dev", "test"):
        records += json.loads((tmp_path / "out" / f"{split}.json").read_text())
    assert len(records) == len(kept)
    assert set(records[0]) == {"id", "sentence", "mentions", "entities", "answer", "imgPath"}
    assert all(r["mentions"] == " " for r in records)
