"""Ranking every dev and test mention against the entire KB: the `evaluate` stage's work.

Each seed's checkpoint of a `train` output (`seed_<s>/`) is loaded with the input settings it
was trained with (stored in the checkpoint); frozen-tower outputs come from the `features`
stage's store. Scoring is exact and chunked (:mod:`vpmel.iier.retrieval`) or, with
``EvalConfig.candidates``, a FAISS candidate stage followed by exact scoring
(:mod:`vpmel.iier.candidates`). Ties count pessimistically (rank = number of entities scoring at
least as high as the gold one). The stage (`stages/evaluate.py`) reads the params and
writes the results.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pandas as pd
from accelerate import Accelerator
from rich.progress import track

from vpmel.data.schema import read_kb
from vpmel.data.subsets import named_mentions, subset_metrics
from vpmel.iier.candidates import CandidateConfig, two_stage_ranker
from vpmel.iier.data import IIERInputs, InputConfig, load_inputs, read_answers
from vpmel.iier.features import FeatureStore, encoder_id
from vpmel.iier.model import IIER, seed_checkpoints
from vpmel.iier.retrieval import RankConfig, kb_ranker, rank_rows
from vpmel.metrics import ranking_metrics
from vpmel.stats import seed_summary


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The ``evaluate`` params."""

    splits: tuple[str, ...] = ("dev", "test")
    mention_batch: int = 64
    entity_batch: int = 64
    block_mb: float = 256.0
    top_k: int = 20
    device: str = "auto"
    candidates: CandidateConfig | None = None  # None: exact ranking over the whole KB

    def rank(self) -> RankConfig:
        return RankConfig(self.mention_batch, self.entity_batch, self.block_mb, self.top_k)


def evaluate(
    model_dir: Path,
    vpwiki: Path,
    dataset: Path,
    answers: Path,
    cfg: EvalConfig,
    accelerator: Accelerator | None = None,
    features: Path | None = None,
    timing: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, float | None]], pd.DataFrame, dict[str, Any]]:
    """(metrics per split, top-k table, run report) for the checkpoints of a `train` output:
    every seed (``seed_<s>/``) is ranked; metrics are the mean over seeds (``<split>_sd``:
    their sd), the table holds every seed's rows (column ``seed``)."""
    accelerator = accelerator or Accelerator(cpu=cfg.device == "cpu")
    timing = {} if timing is None else timing
    main = accelerator.is_main_process
    collective = accelerator if accelerator.num_processes > 1 else None
    if cfg.candidates is not None and collective is not None:
        raise ValueError("evaluate.candidates runs in one process; launch without accelerate")
    per_seed: dict[int, dict[str, dict[str, float | None]]] = {}
    tables, data, inputs, scored = [], None, None, 0
    for seed, folder in seed_checkpoints(model_dir):
        seed = 0 if seed is None else seed
        model, extra = IIER.load(folder)
        model.to(accelerator.device)
        if data is None:  # the inputs (and frozen-tower outputs) serve every seed
            inputs = InputConfig(**extra.get("inputs", {}))
            data = load_data(vpwiki, dataset, answers, model, inputs)
            if model.text_frozen or model.vision_frozen:
                store = FeatureStore.load(features, encoder_id(model.encoder.folder))
                data.cache_frozen(model, cfg.entity_batch, store)
        started = time.perf_counter()

        def kb_track(it, s=seed):
            return track(it, description=f"KB (seed {s})", disable=not main)

        if cfg.candidates is None:
            ranker = kb_ranker(model, data.entities, cfg.rank(), collective, track=kb_track)
        else:
            ranker = two_stage_ranker(
                model,
                data.entities.inputs,
                len(data.kb_table),
                data.entities.texts.width,
                cfg.candidates,
                cfg.top_k,
                kb_track,
            )
        encoded = time.perf_counter()
        metrics, table = _rank_splits(ranker, data, cfg, main)
        done = time.perf_counter()
        per_mention = len(data.kb_table) if cfg.candidates is None else ranker.k_candidates
        scored += sum(len(data.rows(s)) for s in cfg.splits) * per_mention
        timing[f"seed_{seed}_kb_encode_s"] = round(encoded - started, 2)
        timing[f"seed_{seed}_rank_s"] = round(done - encoded, 2)
        table.insert(1, "seed", seed)
        tables.append(table)
        per_seed[seed] = metrics
    table = pd.concat(tables, ignore_index=True)
    rank_s = sum(v for k, v in timing.items() if k.endswith("_rank_s"))
    timing["pairs_scored"] = scored
    timing["pairs_per_s"] = round(scored / max(rank_s, 1e-9))
    report = {
        "entities": len(data.kb_table),
        "seeds": list(per_seed),
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "inputs": dataclasses.asdict(inputs),
        "mentions_with_answer": data.answered,
        "gold_not_in_kb": data.no_gold,
        "image_problems": data.image_problems(),
        "ties": "pessimistic: rank = #entities with score >= gold score",
    }
    if cfg.candidates is not None:
        report["candidates"] = dataclasses.asdict(cfg.candidates) | {
            "missed_gold_rank": "the KB size",
            "recall": {s: seed_mean_recall(table, s, cfg.candidates.k) for s in cfg.splits},
        }
    return seed_mean(per_seed, cfg.splits), table, report


def _rank_splits(
    ranker, data: IIERInputs, cfg: EvalConfig, main: bool
) -> tuple[dict[str, dict[str, float | None]], pd.DataFrame]:
    """Metrics per split and subset, and the top-k table, of one model."""
    metrics: dict[str, dict[str, float | None]] = {}
    tables = []
    qids = data.kb_table["qid"].to_numpy()
    named = named_mentions(data.mentions_table, data.kb_table)
    subsets: dict[str, dict[str, float | None]] = {}
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
        table = data.mentions_table.iloc[rows][["id", "qid"]].reset_index(drop=True)
        table.insert(1, "split", split)
        table["named"] = named[rows]
        table["rank"] = ranking.ranks
        table["gold_score"] = ranking.gold_scores
        found = ranking.top_rows >= 0  # all of them, but for a short candidate list
        table["top_qids"] = [list(qids[r[f]]) for r, f in zip(ranking.top_rows, found, strict=True)]
        table["top_scores"] = [
            list(map(float, s[f])) for s, f in zip(ranking.top_scores, found, strict=True)
        ]
        if cfg.candidates is not None:
            table[f"recall@{cfg.candidates.k}"] = ranking.recalled
        tables.append(table)
    metrics.update(subsets)  # after the splits: `dvc metrics show` lists dev, test first
    return metrics, pd.concat(tables, ignore_index=True)


def seed_mean(
    per_seed: dict[int, dict[str, dict[str, float | None]]], splits: tuple[str, ...]
) -> dict[str, dict[str, float | None]]:
    """Each metric's mean over seeds (``n`` as is, ``seeds``: how many), then
    ``<split>_sd``: the sample sd over seeds of each main split's metrics."""
    runs = list(per_seed.values())
    out: dict[str, dict[str, float | None]] = {}
    for key, first in runs[0].items():
        out[key] = {}
        for name, value in first.items():
            values = [r[key][name] for r in runs]
            if name == "n" or value is None or any(v is None for v in values):
                out[key][name] = value
            else:
                out[key][name] = round(seed_summary(values)[0], 4)
        out[key]["seeds"] = len(runs)
    for split in splits:
        out[f"{split}_sd"] = {
            name: round(seed_summary([r[split][name] for r in runs])[1], 4)
            for name in runs[0][split]
            if name != "n"
        }
    return out


def seed_mean_recall(table: pd.DataFrame, split: str, k: int) -> float:
    """Recall@k of the candidate stage on ``split`` (percent), the mean over seeds."""
    rows = table[table["split"] == split]
    return round(100.0 * float(rows.groupby("seed")[f"recall@{k}"].mean().mean()), 4)


def load_data(
    vpwiki: Path, dataset: Path, answers: Path, model: IIER, inputs: InputConfig
) -> IIERInputs:
    """The split stage's mentions and the KB as ``model``'s encoder reads them, with the
    input settings it was trained with (the answers only when it reads them)."""
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


def summary_lines(metrics: dict[str, dict[str, float | None]]) -> list[str]:
    """One line per split and subset: each metric as ``mean±sd`` (sd where the split has
    one), then n and the number of seeds; the stage prints them."""
    lines = []
    for split, m in metrics.items():
        if split.endswith("_sd"):
            continue
        sd = metrics.get(f"{split}_sd") or {}
        lines.append(
            f"{split} "
            + " ".join(
                f"{k} {v:.2f}" + (f"±{sd[k]:.2f}" if k in sd else "")
                for k, v in m.items()
                if k not in ("n", "seeds") and v is not None
            )
            + f" (n={m['n']}, seeds={m['seeds']})"
        )
    return lines
