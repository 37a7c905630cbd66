"""The VP-MEL subset of a result: mentions whose gold entity is not named in the caption.

The paper's Table 3 shows MEL methods that lean on mention words collapse without them.
Every ranking result is therefore also reported on two subsets of its mentions:

- **named** ("name in caption"): the sentence names the gold entity (see :func:`is_named`);
- **unnamed** ("name not in caption"): it does not; only the image, the visual prompt and
  the rest of the sentence can identify the entity — the setting VP-MEL is about.

In metrics files the subsets sit beside each split under :func:`subset_key` names:
``{"test": {...}, "test_named": {...}, "test_unnamed": {...}}``, every value the same
shape as :func:`vpmel.metrics.ranking_metrics` (so ``n_named + n_unnamed = n``). An empty
subset is expected (every WikiDiverse mention has its words in the caption, so none is
unnamed there): it has n = 0 and null metrics, valid JSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from vpmel.metrics import ranking_metrics

SUBSETS: tuple[str, ...] = ("named", "unnamed")
LABELS: dict[str, str] = {"named": "name in caption", "unnamed": "name not in caption"}


def subset_key(split: str, subset: str) -> str:
    """``"test", "named"`` -> ``"test_named"``: the metrics-file key of a split's subset."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, not {subset!r}")
    return f"{split}_{subset}"


@lru_cache(maxsize=65536)
def _pattern(name: str) -> re.Pattern[str] | None:
    words = name.split()
    if not words:
        return None
    body = r"\s+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def name_in_text(text: str, name: str) -> bool:
    """Whether ``name`` occurs in ``text``: case-insensitive, on word boundaries (no letter,
    digit or underscore either side), any run of whitespace matching a space. Blank names
    never occur."""
    pattern = _pattern(name)
    return bool(pattern and pattern.search(text))


def _blank(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def is_named(
    sentence: str,
    gold_names: Iterable[str],
    mention: str | None = None,
    span_start: int | None = None,
    span_end: int | None = None,
) -> bool:
    """The subset rule: does the sentence name the mention's gold entity?

    A mention is **named** when either

    1. its own mention words are in the sentence: ``mention`` is not blank and
       ``sentence[span_start:span_end]`` is those words (ignoring case). Annotated mention
       words are the way this caption calls the gold entity, so they count as one of its
       aliases (WikiDiverse: "Obama" for Barack Obama; the demo world: a short alias such as
       "cat" for "grinning cat" — an alias no KB column holds); or
    2. one of ``gold_names`` — the gold entity's KB name, and aliases where a KB lists
       them — occurs in the sentence (:func:`name_in_text`: case-insensitive, on word
       boundaries, so "ear" is not found in "near").

    Otherwise it is **unnamed**. Mention words without a span (the import found them nowhere
    in the sentence) and blank mention words (VPWiki's released files, by design) add
    nothing: there only the name test applies.
    """
    if mention is not None and not _blank(mention) and mention.strip():
        if not (_blank(span_start) or _blank(span_end)):
            start, end = int(span_start), int(span_end)  # type: ignore[arg-type]
            if 0 <= start < end <= len(sentence):
                if sentence[start:end].strip().casefold() == mention.strip().casefold():
                    return True
    return any(name_in_text(sentence, name) for name in gold_names if isinstance(name, str))


def named_mentions(mentions: pd.DataFrame, kb: pd.DataFrame) -> np.ndarray:
    """:func:`is_named` for every row of a mentions table (columns sentence, qid and, where
    present, mention, span_start, span_end) against the KB table's names; a bool array.

    A gold QID missing from the KB has no name: only its mention words can name it.
    """
    names: Mapping[str, str] = dict(zip(kb["qid"], kb["name"], strict=True))
    n = len(mentions)

    def column(name: str) -> Sequence[Any]:
        return mentions[name].tolist() if name in mentions.columns else [None] * n

    rows = zip(
        mentions["sentence"].tolist(),
        mentions["qid"].tolist(),
        column("mention"),
        column("span_start"),
        column("span_end"),
        strict=True,
    )
    return np.array(
        [
            is_named(str(sentence), [names[qid]] if qid in names else [], mention, start, end)
            for sentence, qid, mention, start, end in rows
        ],
        dtype=bool,
    )


def _null_if_empty(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def subset_metrics(
    ranks: Sequence[float] | np.ndarray, named: Sequence[bool] | np.ndarray, split: str
) -> dict[str, dict[str, float | None]]:
    """``{"<split>_named": ranking_metrics(named ranks), "<split>_unnamed": ...}``; an empty
    subset has n = 0 and None (JSON null) for every metric."""
    r, mask = np.asarray(ranks, dtype=np.float64), np.asarray(named, dtype=bool)
    if r.shape != mask.shape:
        raise ValueError(f"ranks {r.shape} and named {mask.shape} differ in shape")
    return {
        subset_key(split, "named"): _null_if_empty(ranking_metrics(r[mask])),
        subset_key(split, "unnamed"): _null_if_empty(ranking_metrics(r[~mask])),
    }


def split_metrics(
    ranks: Sequence[float] | np.ndarray,
    splits: Sequence[str] | np.ndarray,
    names: Sequence[str],
    named: Sequence[bool] | np.ndarray,
) -> dict[str, dict[str, float | None]]:
    """Metrics per split and per split subset, splits first: ``{"dev": .., "test": ..,
    "dev_named": .., "dev_unnamed": .., "test_named": .., "test_unnamed": ..}``."""
    r, s, mask = np.asarray(ranks), np.asarray(splits), np.asarray(named, dtype=bool)
    out: dict[str, dict[str, float | None]] = {}
    out |= {name: ranking_metrics(r[s == name]) for name in names}
    for name in names:
        out.update(subset_metrics(r[s == name], mask[s == name], name))
    return out
