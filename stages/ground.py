"""DVC stage `ground`: a box per mention from its mention words.

The paper's Visual Grounding Module (Appendix A.6) on every mention the entailment stage
kept (with the clip backend, the proposal embeddings `entail` saved are reused where they
were made with the same encoder and proposal settings). Writes
`data/ground/grounding.parquet` (id, auto_box, ground_score, and random_box: one random
sliding window per image, the baseline grounding is compared with) and
`reports/grounding.json` (backend, how many were grounded). How well the boxes match the
reference boxes depends on `split.iou_min`, so the `split` stage measures it
(`reports/vpwiki_grounding.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from rich.progress import track

from stages.common import annotation_inputs, region_cache_key
from stages.console import clear_errors, console, stage_app
from vpmel.params import PARAMS_FILE
from vpmel.timings import stage_timer
from vpmel.vpwiki.annotate import random_proposal_boxes, requests_for
from vpmel.vpwiki.clip_annotator import REGIONS_FILE, load_region_embeddings


def main(
    dataset: Path = typer.Option(Path("data/dataset"), help="imported dataset folder"),
    entail_dir: Path = typer.Option(Path("data/entail"), help="the entail stage's output"),
    encoder_dir: Path = typer.Option(Path("models/encoder"), help="the encoders stage's model"),
    out: Path = typer.Option(Path("data/ground"), help="output folder"),
    reports: Path = typer.Option(Path("reports")),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    with stage_timer("ground", reports / "timings") as timing:
        with clear_errors("ground"):
            entailed = pd.read_parquet(entail_dir / "entailment.parquet")
            params, mentions, backend = annotation_inputs(dataset, encoder_dir, params_file)
            annotate = params["annotate"]
        key = region_cache_key(backend, encoder_dir)
        known = None if key is None else load_region_embeddings(entail_dir / REGIONS_FILE, key)
        if known is not None:
            backend.use_region_embeddings(known, dataset)
        elif key is not None:
            console.print(
                f"ground: no proposal embeddings for this encoder and these settings in "
                f"{entail_dir / REGIONS_FILE}; encoding every crop"
            )
        keep = set(entailed.loc[entailed["entailed"], "id"])
        todo = mentions[mentions["id"].isin(keep)].reset_index(drop=True)
        console.print(f"ground: {len(todo)} entailed mentions, backend {annotate['backend']}")
        boxes, scores = backend.ground(
            requests_for(todo, dataset, annotate["hypothesis"]), track=track
        )
        failed = (
            ~np.isfinite(boxes).all(axis=1)
            | (boxes[:, 2] <= boxes[:, 0])
            | (boxes[:, 3] <= boxes[:, 1])
        )
        sizes = list(zip(todo["image_width"], todo["image_height"], strict=True))
        window_sizes = tuple((annotate.get("clip") or {}).get("sizes", (0.3, 0.4, 0.5, 0.6, 0.7)))
        baseline = random_proposal_boxes(sizes, window_sizes, seed=annotate["seed"])
        if key is not None:
            timing["images_with_saved_proposal_embeddings"] = backend.reused
        table = pd.DataFrame(
            {
                "id": todo["id"],
                "auto_box": [
                    None if f else [float(v) for v in b] for b, f in zip(boxes, failed, strict=True)
                ],
                "ground_score": scores,
                "random_box": [[float(v) for v in b] for b in baseline],
            }
        )
        out.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out / "grounding.parquet", index=False)
        quality = {
            "backend": annotate["backend"],
            "n_grounded": int((~failed).sum()),
            "n_failed": int(failed.sum()),
        }
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "grounding.json").write_text(json.dumps(quality, indent=1) + "\n")
        console.print(f"ground: {json.dumps(quality)}")


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
