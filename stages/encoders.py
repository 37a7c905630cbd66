"""DVC stage `encoders`: the image-text encoder every later stage uses, in `models/encoder/`.

Reads only the `encoders` section of params.yaml.

* `backend: demo` trains a small CLIP-style model on the KB (a 12-layer narrow ViT from
  scratch; the pretrained MiniLM text tower, frozen and stored as a package reference) and
  writes loss, held-out retrieval accuracy and prompt following (trained vs random init) to
  `reports/encoders.json`; train time and throughput go to `reports/timings/encoders.json`.
* `backend: hub` resolves `hub_model` (a hub id such as `openai/clip-vit-base-patch32`, or a
  local folder with a CLIPModel checkpoint) and saves it into `models/encoder/`, so later
  stages run offline. A hub id needs network access (or the Hugging Face cache) once. With
  `towers` set (`profile: paper` does: ViT-B/32 beside `bert-base-uncased`), the vision and
  text towers come from two checkpoints instead (`vpmel.encoders.model.TowersConfig`).

The scale `profile` is applied first (`vpmel.params`); a combination that cannot work
(`towers` under the demo backend, `profile: paper` on the demo encoder) is one line.

Threads: `threads: null` uses every core; views are rendered in a second thread meanwhile.
Run with `OMP_WAIT_POLICY=PASSIVE` (dvc.yaml does): OpenMP threads that spin-wait stall
badly whenever another thread or process needs a core, and tiny models hit that at every op.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import typer
from transformers.utils import logging as hf_logging

from stages.console import clear_errors, console, stage_app
from vpmel.atomic import staged_folder
from vpmel.data.schema import read_kb
from vpmel.encoders.model import (
    check_encoder_params,
    demo_config,
    describe,
    load_hub_checkpoint,
    load_hub_towers,
    towers_config,
)
from vpmel.encoders.training import TrainConfig, ViewConfig, train_encoder
from vpmel.params import PARAMS_FILE, from_params, load_params, reject_unknown
from vpmel.prompts import PromptStyle
from vpmel.timings import stage_timer

KNOWN = {"backend", "hub_model", "towers", "threads", "model", "train"}
# wall-clock figures: reports/timings/encoders.json, not the metrics file
TIMING_KEYS = ("train_seconds", "render_wait_seconds", "images_per_second", "resolve_seconds")


def main(
    dataset: Path = typer.Option(Path("data/dataset"), help="dataset folder (kb.parquet)"),
    out: Path = typer.Option(Path("models/encoder"), help="model folder to write"),
    reports: Path = typer.Option(Path("reports"), help="where encoders.json goes"),
    params_file: Path = typer.Option(PARAMS_FILE, "--params", help="params.yaml to read"),
) -> None:
    hf_logging.disable_progress_bar()
    with stage_timer("encoders", reports / "timings") as timing:
        _run(dataset, out, reports, params_file, timing)


def _run(
    dataset: Path, out: Path, reports: Path, params_file: Path, timing: dict[str, Any]
) -> None:
    with clear_errors("encoders"):
        params = load_params(None, params_file)
        if "encoders" not in params:
            raise KeyError(f"{params_file}: no section 'encoders'")
        p = params["encoders"]
        reject_unknown(p, KNOWN, "encoders")
        check_encoder_params(p, params["profile"])
        threads = int(p.get("threads") or len(os.sched_getaffinity(0)))
        torch.set_num_threads(threads)
        backend = p.get("backend", "demo")
        if backend == "demo":
            # the `prompt` section (VPWiki's marker) when there is one, else the default style
            prompt = dict(params.get("prompt") or {})
            metrics = _demo(p, dataset, out, threads, prompt)
        else:
            metrics = _hub(p, out)
    metrics["model_folder_mb"] = round(_size(out) / 2**20, 2)
    timing.update({k: metrics.pop(k) for k in TIMING_KEYS if k in metrics})
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "encoders.json").write_text(json.dumps(metrics, indent=1) + "\n")
    console.print(
        f"encoders: wrote {out} ({metrics['model_folder_mb']} MB), {reports}/encoders.json"
    )


def _demo(
    p: dict[str, Any], dataset: Path, out: Path, threads: int, prompt: dict[str, Any]
) -> dict[str, Any]:
    model_cfg = demo_config(p.get("model"))
    train = dict(p.get("train") or {})
    # prompted training scenes are marked as VPWiki's images are (the `prompt` params)
    views_params = dict(train.pop("views", None) or {}) | {"prompt": PromptStyle(**prompt)}
    views = from_params(ViewConfig, views_params, "encoders.train.views")
    cfg = from_params(TrainConfig, train | {"views": views}, "encoders.train")
    kb = read_kb(dataset)
    console.print(
        f"encoders: training the demo encoder on {len(kb)} KB entities from {dataset} "
        f"({cfg.steps} steps of {cfg.batch_size}, {threads} torch threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})"
    )
    result = train_encoder(kb, dataset, model_cfg, cfg, progress=True, log=console.print)
    with staged_folder(out) as tmp:
        result.model.save(tmp)
    m = result.metrics
    console.print(
        f"encoders: {m['steps']} steps in {m['train_seconds']} s ({m['images_per_second']} "
        f"images/s), loss {m['first_loss']} -> {m['final_loss']}"
    )
    for key in ("views", "entity_images"):
        t, r = m["retrieval"]["trained"][key], m["retrieval"]["random_init"][key]
        console.print(
            f"  {key:13s} top-1 {t['top1']:.3f} top-5 {t['top5']:.3f}"
            f"  (random init {r['top1']:.3f} / {r['top5']:.3f})"
        )
    if m["prompt_following"]["trained"]:
        t, r = m["prompt_following"]["trained"], m["prompt_following"]["random_init"]
        console.print(f"  prompt following (held-out scenes): {t} (random init {r})")
    return {"backend": "demo", **m, "threads": threads, "model": describe(result.model)}


def _hub(p: dict[str, Any], out: Path) -> dict[str, Any]:
    towers = towers_config(p.get("towers"))
    start = time.perf_counter()
    if towers is None:
        source: Any = str(p["hub_model"])
        console.print(f"encoders: resolving CLIP checkpoint {source}")
        model = load_hub_checkpoint(source)
    else:
        source = {"vision": towers.vision, "text": towers.text}
        console.print(f"encoders: vision tower {towers.vision}, text tower {towers.text}")
        torch.manual_seed(0)  # the new projections
        model = load_hub_towers(towers)
    with staged_folder(out) as tmp:
        model.save(tmp)
    return {
        "backend": "hub",
        "source": source,
        "resolve_seconds": round(time.perf_counter() - start, 1),
        "model": describe(model),
    }


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
