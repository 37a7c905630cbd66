"""DVC stage `evaluate`: rank every dev and test mention against the **entire** KB.

Uses the best checkpoint of each seed of `train` (`models/iier/seed_<s>/`) with the same
input settings it was trained with (answers on/off, prompted or source image, max length;
stored in the checkpoint); frozen-tower outputs come from the `features` stage's store.
The entity side of the KB is encoded once per seed; scoring is exact and chunked
(:mod:`vpmel.iier.retrieval`); ties count pessimistically (rank = number of entities scoring at
least as high as the gold one). Writes:

- `reports/metrics.json` — `{dev: {H@1, H@3, H@5, H@10, H@20, MRR, MR, n, seeds}, test:
  {...}, dev_named: {...}, dev_unnamed: {...}, test_named: {...}, test_unnamed: {...},
  dev_sd: {...}, test_sd: {...}}` (H@k and MRR in percent; the mean over the seeds, and
  `<split>_sd` their sample sd), the DVC metrics; dev picked each seed's epoch, so it is
  the selection metric and optimistic; `<split>_named` / `<split>_unnamed` are the mentions
  whose gold entity the caption does / does not name (:func:`vpmel.data.subsets.is_named`,
  the paper's Table 3 point);
- `data/eval/top20.parquet` — per seed and mention: id, seed, split, qid (gold), named (the
  subset), rank, gold_score, top_qids and top_scores (the 20 best entities, best first);
- `reports/evaluate.json` — sizes and data problems (mentions whose gold QID is not in
  the KB, images that could not be read); wall times and pairs scored per second go to
  `reports/timings/evaluate.json`.

Runs in one process, or sharded over N with `accelerate launch` (the KB is split between
the processes; every process ranks every mention).

With ``evaluate.candidates`` set (e.g. ``{k: 100, index: Flat}``; default null = exact) a
FAISS candidate stage picks K entities per mention and only those are scored exactly, their
entity side computed on demand (:mod:`vpmel.iier.candidates`); ranks of mentions whose gold entity
was not among the candidates are the KB size, and `reports/evaluate.json` gains the recall@K
of each split. One process only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from accelerate import Accelerator

from stages.console import clear_errors, console, stage_app
from vpmel.iier.candidates import candidate_config
from vpmel.iier.evaluation import EvalConfig, evaluate, summary_lines
from vpmel.params import PARAMS_FILE, from_params, load_params
from vpmel.timings import stage_timer


def eval_config(section: dict[str, Any]) -> EvalConfig:
    section = dict(section)
    section["candidates"] = candidate_config(section.get("candidates"))
    cfg = from_params(EvalConfig, section, "evaluate")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError("evaluate.device must be auto, cpu or cuda")
    return cfg


def main(
    model_dir: Path = typer.Option(Path("models/iier"), help="the train stage's checkpoint"),
    vpwiki: Path = typer.Option(Path("data/vpwiki"), help="the split stage's VPWiki folder"),
    dataset: Path = typer.Option(Path("data/dataset"), help="imported dataset (KB, images)"),
    answers: Path = typer.Option(Path("data/answers/answers.parquet")),
    out: Path = typer.Option(Path("data/eval"), help="where top20.parquet goes"),
    reports: Path = typer.Option(Path("reports")),
    features: Path = typer.Option(
        Path("data/features"), help="the features stage's store (frozen-tower outputs)"
    ),
    timings: Path = typer.Option(
        None, help="folder of the wall-time record (default: <reports>/timings)"
    ),
    timing_name: str = typer.Option("evaluate", help="name of the wall-time record"),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    with (
        clear_errors("evaluate"),
        stage_timer(timing_name, timings or reports / "timings") as timing,
    ):
        cfg = eval_config(load_params("evaluate", params_file))
        accelerator = Accelerator(cpu=cfg.device == "cpu")
        metrics, table, report = evaluate(
            model_dir, vpwiki, dataset, answers, cfg, accelerator, features, timing
        )
    if not accelerator.is_main_process:
        return
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / f"top{cfg.top_k}.parquet", index=False)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (reports / "evaluate.json").write_text(json.dumps(report, indent=1) + "\n")
    for line in summary_lines(metrics):
        console.print(f"evaluate: {line}")
    console.print(f"evaluate: {timing['pairs_per_s']:,} pairs/s -> {reports / 'metrics.json'}")


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
