"""How good is the automatic VPWiki annotation on the demo world, where the truth is known?

Reads the outputs of the `entail` and `ground` stages and the world's hidden truth
(`data/world/truth.parquet`: whether each caption belongs to its image, the true box) and
prints, as JSON:

- entailment: precision / recall / accuracy of "entailed" against the truth's `related`;
- grounding: mean IoU and share with IoU >= 0.5 overall and broken down by the number of
  objects in the scene, by whether a same-subgroup look-alike is present, and by occlusion.

    PYTHONPATH=. .venv/bin/python benchmarks/annotation_quality.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from vpmel.vpwiki.boxes import iou

app = typer.Typer(add_completion=False)


@app.command()
def main(
    world: Path = typer.Option(Path("data/world"), help="the world stage's folder"),
    entail_dir: Path = typer.Option(Path("data/entail")),
    ground_dir: Path = typer.Option(Path("data/ground")),
) -> None:
    truth = pd.read_parquet(world / "truth.parquet")
    entail = pd.read_parquet(entail_dir / "entailment.parquet").merge(truth, on="id")
    related, kept = entail["related"].astype(bool), entail["entailed"].astype(bool)
    out: dict = {
        "entailment": {
            "n": len(entail),
            "unrelated_in_truth": int((~related).sum()),
            "precision": round(float((kept & related).sum() / max(1, kept.sum())), 4),
            "recall": round(float((kept & related).sum() / max(1, related.sum())), 4),
            "unrelated_rejected": round(
                float((~kept & ~related).sum() / max(1, (~related).sum())), 4
            ),
            "accuracy": round(float((kept == related).mean()), 4),
        }
    }
    ground = pd.read_parquet(ground_dir / "grounding.parquet").merge(truth, on="id")
    ground = ground[ground["box"].notna() & ground["auto_box"].notna()].copy()
    ground["iou"] = [iou(a, b) for a, b in zip(ground["auto_box"], ground["box"], strict=True)]

    def summary(df: pd.DataFrame) -> dict:
        return {
            "n": len(df),
            "mean_iou": round(float(df["iou"].mean()), 4) if len(df) else None,
            "share_iou_ge_0.5": round(float((df["iou"] >= 0.5).mean()), 4) if len(df) else None,
        }

    ground["occlusion"] = np.where(ground["occluded"].fillna(0) > 0.1, "occluded", "visible")
    out["grounding"] = {
        "all": summary(ground),
        "by_objects": {str(k): summary(g) for k, g in ground.groupby("n_objects")},
        "by_lookalike": {str(k): summary(g) for k, g in ground.groupby("lookalike")},
        "by_occlusion": {str(k): summary(g) for k, g in ground.groupby("occlusion")},
        "by_named_in_caption": {str(k): summary(g) for k, g in ground.groupby("named_in_caption")},
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    app()
