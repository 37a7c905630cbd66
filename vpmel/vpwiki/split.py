"""The 8:1:1 split of VPWiki (paper §3) and its statistics (Table 1, Figure 3a).

Splitting is grouped by image–text pair, so mentions of one scene never straddle splits
(a model must not see a test image during training through a sibling mention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

SPLITS: tuple[str, ...] = ("train", "dev", "test")


def split_by_pair(
    pair_ids: pd.Series, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> pd.Series:
    """Assign each row a split name ("train"/"dev"/"test"), grouped by ``pair_ids``.

    ``ratios`` are the shares of *pairs* per split (VPWiki: 8:1:1). Deterministic in seed.
    """
    ratios = np.asarray(ratios, dtype=float)
    if ratios.shape != (3,) or (ratios < 0).any() or not np.isclose(ratios.sum(), 1.0):
        raise ValueError(f"split ratios must be three non-negative shares summing to 1: {ratios}")
    groups = pair_ids.to_numpy()
    labels = np.full(len(groups), "train", dtype=object)
    n_pairs = len(np.unique(groups))
    if n_pairs < 3:
        raise ValueError(f"need at least 3 image-text pairs to split, got {n_pairs}")
    held_out = ratios[1] + ratios[2]
    if held_out > 0:
        outer = GroupShuffleSplit(n_splits=1, test_size=held_out, random_state=seed)
        _, rest = next(outer.split(groups, groups=groups))
        if ratios[1] == 0:
            labels[rest] = "test"
        elif ratios[2] == 0:
            labels[rest] = "dev"
        else:
            inner = GroupShuffleSplit(
                n_splits=1, test_size=ratios[2] / held_out, random_state=seed + 1
            )
            dev, test = next(inner.split(rest, groups=groups[rest]))
            labels[rest[dev]] = "dev"
            labels[rest[test]] = "test"
    return pd.Series(labels, index=pair_ids.index, name="split")


def table1(mentions: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 1: pairs, mentions per pair, words per pair — per split and in total."""
    rows = {}
    for name, part in [
        *((s, mentions[mentions["split"] == s]) for s in SPLITS),
        ("total", mentions),
    ]:
        pairs = part.drop_duplicates("pair_id")
        n_pairs = len(pairs)
        rows[name] = {
            "pairs": n_pairs,
            "mentions": len(part),
            "mentions_per_pair": round(len(part) / n_pairs, 2) if n_pairs else 0.0,
            "words_per_pair": round(pairs["sentence"].str.split().str.len().mean(), 2)
            if n_pairs
            else 0.0,
        }
    return pd.DataFrame(rows)


def type_distribution(mentions: pd.DataFrame) -> dict[str, int]:
    """Paper Figure 3a: mentions per entity type (null types counted as "unknown")."""
    return mentions["type"].fillna("unknown").value_counts().sort_index().to_dict()
