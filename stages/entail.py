"""DVC stage `entail`: visual entailment of every (image, mention words) pair.

The paper's Visual Entailment Module (Appendix A.6) keeps the image–text pairs that belong
together. Writes `data/entail/entailment.parquet` (id, probability, entailed) and the counts
to `reports/entail.json`. With the clip backend it also writes every image's proposal
embeddings (`data/entail/regions.safetensors`), which `ground` reuses instead of encoding
the same crops again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer
from rich.progress import track

from stages.common import annotation_inputs, region_cache_key
from stages.console import clear_errors, console, stage_app
from vpmel.params import PARAMS_FILE
from vpmel.timings import stage_timer
from vpmel.vpwiki.annotate import requests_for
from vpmel.vpwiki.clip_annotator import REGIONS_FILE, save_region_embeddings


def main(
    dataset: Path = typer.Option(Path("data/dataset"), help="imported dataset folder"),
    encoder_dir: Path = typer.Option(Path("models/encoder"), help="the encoders stage's model"),
    out: Path = typer.Option(Path("data/entail"), help="output folder"),
    reports: Path = typer.Option(Path("reports")),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    with stage_timer("entail", reports / "timings"):
        with clear_errors("entail"):
            params, mentions, backend = annotation_inputs(dataset, encoder_dir, params_file)
            annotate, threshold = params["annotate"], float(params["entail"]["threshold"])
        console.print(f"entail: {len(mentions)} mentions, backend {annotate['backend']}")
        requests = requests_for(mentions, dataset, annotate["hypothesis"])
        probability = backend.entail(requests, track=track)
        table = pd.DataFrame(
            {"id": mentions["id"], "probability": probability, "entailed": probability >= threshold}
        )
        out.mkdir(parents=True, exist_ok=True)
        table.to_parquet(out / "entailment.parquet", index=False)
        (out / REGIONS_FILE).unlink(missing_ok=True)
        key = region_cache_key(backend, encoder_dir)
        if key is not None:
            save_region_embeddings(out / REGIONS_FILE, backend.region_embeddings(dataset), key)
        counts = {
            "in": len(table),
            "entailed": int(table["entailed"].sum()),
            "dropped": int((~table["entailed"]).sum()),
            # requests the backend could not answer (counted as dropped, never guessed)
            "errors": int(table["probability"].isna().sum()),
            "threshold": threshold,
        }
        calibration = getattr(backend, "calibration", None)
        if calibration is not None:
            counts["calibration"] = {"a": round(calibration[0], 4), "b": round(calibration[1], 4)}
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "entail.json").write_text(json.dumps(counts, indent=1) + "\n")
        console.print(f"entail: kept {counts['entailed']}, dropped {counts['dropped']} -> {out}")


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
