"""DVC stage `evaluate`: rank every dev and test mention against the **entire** KB.

Uses the best checkpoint of `train` (`models/iier/`) with the same input settings it was
trained with (answers on/off, prompted or source image, max length; stored in the
checkpoint). The entity side of the KB is encoded once; scoring is exact and chunked
(:mod:`vpmel.retrieval`); ties count pessimistically (rank = number of entities scoring at
least as high as the gold one). Writes:

- `reports/metrics.json` — `{dev: {H@1, H@3, H@5, H@10, H@20, MRR, MR, n}, test: {...},
  dev_named: {...}, dev_unnamed: {...}, test_named: {...}, test_unnamed: {...}}` (H@k and
  MRR in percent), the DVC metrics; `<split>_named` / `<split>_unnamed` are the mentions
  whose gold entity the caption does / does not name (:func:`vpmel.subsets.is_named`,
  the paper's Table 3 point);
- `data/eval/top20.parquet` — per mention: id, split, qid (gold), named (the subset), rank,
  gold_score, top_qids and top_scores (the 20 best entities, best first);
- `reports/evaluate.json` — sizes, timing (mention-entity pairs scored per second) and
  data problems (mentions whose gold QID is not in the KB, images that could not be read).

Runs in one process, or sharded over N with `accelerate launch` (the KB is split between
the processes; every process ranks every mention).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import typer
from accelerate import Accelerator
from rich.progress import track

from stages.console import clear_errors, console
from vpmel.iier import IIER
from vpmel.iier_data import IIERInputs, InputConfig, load_inputs, read_answers
from vpmel.metrics import ranking_metrics
from vpmel.params import PARAMS_FILE, load_params
from vpmel.retrieval import RankConfig, kb_ranker, rank_rows
from vpmel.schema import read_kb
from vpmel.subsets import named_mentions, subset_metrics

app = typer.Typer(add_completion=False, help=__doc__)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The ``evaluate`` params."""

    splits: tuple[str, ...] = ("dev", "test")
    mention_batch: int = 64
    entity_batch: int = 64
    block_mb: float = 256.0
    top_k: int = 20
    device: str = "auto"

    def rank(self) -> RankConfig:
        return RankConfig(self.mention_batch, self.entity_batch, self.block_mb, self.top_k)


def eval_config(section: dict[str, Any]) -> EvalConfig:
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"unknown evaluate params {unknown}; known: {sorted(known)}")
    section = dict(section)
    if "splits" in section:
        section["splits"] = tuple(section["splits"])
    cfg = EvalConfig(**section)
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError("evaluate.device must be auto, cpu or cuda")
    return cfg


def evaluate(
    model_dir: Path,
    vpwiki: Path,
    dataset: Path,
    answers: Path,
    cfg: EvalConfig,
    accelerator: Accelerator | None = None,
) -> tuple[dict[str, dict[str, float | None]], pd.DataFrame, dict[str, Any]]:
    """(metrics per split, top-k table, run report) for a saved IIER checkpoint."""
    accelerator = accelerator or Accelerator(cpu=cfg.device == "cpu")
    model, extra = IIER.load(model_dir)
    model.to(accelerator.device)
    inputs = InputConfig(**extra.get("inputs", {}))
    data = _load(vpwiki, dataset, answers, model, inputs)
    main = accelerator.is_main_process
    collective = accelerator if accelerator.num_processes > 1 else None
    started = time.perf_counter()
    ranker = kb_ranker(
        model,
        data.entities,
        cfg.rank(),
        collective,
        track=lambda it: track(it, description="KB", disable=not main),
    )
    encoded = time.perf_counter()
    metrics: dict[str, dict[str, float | None]] = {}
    tables = []
    qids = data.kb_table["qid"].to_numpy()
    named = named_mentions(data.mentions_table, data.kb_table)
    subsets: dict[str, dict[str, float | None]] = {}
    scored = 0
    for split in cfg.splits:
        rows = data.rows(split)
        ranking = rank_rows(
            ranker,
            data.mentions,
            rows,
            data.gold,
            cfg.rank(),
            track=lambda it, s=split: track(it, description=s, disable=not main),
        )
        metrics[split] = ranking_metrics(ranking.ranks)
        subsets.update(subset_metrics(ranking.ranks, named[rows], split))
        scored += len(rows) * len(qids)
        table = data.mentions_table.iloc[rows][["id", "qid"]].reset_index(drop=True)
        table.insert(1, "split", split)
        table["named"] = named[rows]
        table["rank"] = ranking.ranks
        table["gold_score"] = ranking.gold_scores
        table["top_qids"] = [list(qids[r]) for r in ranking.top_rows]
        table["top_scores"] = [list(map(float, s)) for s in ranking.top_scores]
        tables.append(table)
    metrics.update(subsets)  # after the splits: `dvc metrics show` lists dev, test first
    done = time.perf_counter()
    report = {
        "entities": len(qids),
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "inputs": dataclasses.asdict(inputs),
        "kb_encode_s": round(encoded - started, 2),
        "rank_s": round(done - encoded, 2),
        "pairs_scored": scored,
        "pairs_per_s": round(scored / max(done - encoded, 1e-9)),
        "mentions_with_answer": data.answered,
        "gold_not_in_kb": data.no_gold,
        "image_problems": data.image_problems(),
        "ties": "pessimistic: rank = #entities with score >= gold score",
    }
    return metrics, pd.concat(tables, ignore_index=True), report


def _load(
    vpwiki: Path, dataset: Path, answers: Path, model: IIER, inputs: InputConfig
) -> IIERInputs:
    mentions_file = vpwiki / "mentions.parquet"
    if not mentions_file.is_file():
        raise FileNotFoundError(f"{mentions_file}: run the split stage first")
    answer_map = read_answers(answers) if inputs.use_answers else None
    enc = model.encoder
    return load_inputs(
        pd.read_parquet(mentions_file),
        read_kb(dataset),
        vpwiki,
        dataset,
        enc.tokenizer,
        enc.pixel_values,
        enc.image_size,
        inputs,
        answer_map,
        cache_images=False,
    )


@app.command()
def main(
    model_dir: Path = typer.Option(Path("models/iier"), help="the train stage's checkpoint"),
    vpwiki: Path = typer.Option(Path("data/vpwiki"), help="the split stage's VPWiki folder"),
    dataset: Path = typer.Option(Path("data/dataset"), help="imported dataset (KB, images)"),
    answers: Path = typer.Option(Path("data/answers/answers.parquet")),
    out: Path = typer.Option(Path("data/eval"), help="where top20.parquet goes"),
    reports: Path = typer.Option(Path("reports")),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    with clear_errors("evaluate"):
        cfg = eval_config(load_params("evaluate", params_file))
        accelerator = Accelerator(cpu=cfg.device == "cpu")
        metrics, table, report = evaluate(model_dir, vpwiki, dataset, answers, cfg, accelerator)
    if not accelerator.is_main_process:
        return
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / f"top{cfg.top_k}.parquet", index=False)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (reports / "evaluate.json").write_text(json.dumps(report, indent=1) + "\n")
    for split, m in metrics.items():
        console.print(
            f"evaluate: {split} "
            + " ".join(f"{k} {v:.2f}" for k, v in m.items() if k != "n" and v is not None)
            + f" (n={m['n']})"
        )
    console.print(f"evaluate: {report['pairs_per_s']:,} pairs/s -> {reports / 'metrics.json'}")


if __name__ == "__main__":
    app()
