"""Out-of-fold Detective-VLM answers for the train mentions (K-fold cross-fitting).

The final Detective-VLM has been tuned on every train mention, so its answers there are far
better than on dev/test (demo: name 50% vs 10%) and IIER, trained on them, learns to trust
m_w more than it should. Each fold's answers come from a model tuned, with the same
settings, on the other folds, the folds grouping whole image–text pairs. The `detective`
stage writes them to `data/detective/oof_answers.parquet`; `answers` reads them for train.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from accelerate import Accelerator

from vpmel.detective.answers import model_answer_fn, parsed_rows
from vpmel.detective.training import TuneConfig, tune


def fold_of(pair_ids: pd.Series, folds: int, seed: int) -> np.ndarray:
    """Fold per mention, whole image–text pairs together, from a seeded permutation."""
    pairs = pd.unique(pair_ids.astype(str))
    order = np.random.default_rng(seed).permutation(len(pairs))
    fold = {pairs[i]: rank % folds for rank, i in enumerate(order)}
    return pair_ids.astype(str).map(fold).to_numpy()


def cross_fit(
    train: pd.DataFrame,
    records: list[dict[str, str]],
    folds: int,
    seed: int,
    fresh: Callable[[], tuple[Any, Any]],
    cfg: TuneConfig,
    vpwiki: Path,
    prompt_format: str,
    cross: dict[str, Any],
    accelerator: Accelerator,
    log: Callable[[str], object] = lambda line: None,
    tune_on: np.ndarray | None = None,
) -> tuple[pd.DataFrame, float]:
    """Answers (:func:`vpmel.detective.answers.parsed_rows`) for the ``train`` mentions from models
    that never saw them, and the seconds it took. ``records``: the train mentions'
    instructions (same order); ``fresh``: the untuned model and processor, anew each call;
    ``cross``: the ``detective.cross_fit`` params (batch_size, max_new_tokens); ``log``
    gets one line per fold; ``tune_on`` (bool per train mention, default all): the mentions
    a fold's model may be tuned on (``detective.train.mentions``) — every mention is still
    answered by the model of its fold."""
    start = time.perf_counter()
    fold = fold_of(train["pair_id"], folds, seed)
    use = np.ones(len(records), dtype=bool) if tune_on is None else np.asarray(tune_on, dtype=bool)
    parts = []
    for k in range(folds):
        model, processor = fresh()
        rest = [r for r, f, u in zip(records, fold, use, strict=True) if f != k and u]
        tuned, _ = tune(model, processor, rest, cfg, (), accelerator, progress=False)
        held = train[fold == k]
        answer = model_answer_fn(tuned.eval(), processor, vpwiki, prompt_format,
                                 int(cross.get("batch_size", 32)),
                                 int(cross.get("max_new_tokens", 12)))  # fmt: skip
        parts.append(parsed_rows(list(held["id"]), answer(held)))
        log(f"fold {k + 1}/{folds}: tuned on {len(rest)}, answered {len(held)}")
    return pd.concat(parts, ignore_index=True), time.perf_counter() - start
