"""Grouped 8:1:1 split and Table 1 statistics."""

from __future__ import annotations

import pandas as pd
import pytest

from vpmel.vpwiki.split import split_by_pair, table1, type_distribution


def _mentions(n_pairs: int = 200) -> pd.DataFrame:
    rows = []
    for p in range(n_pairs):
        for m in range(1 + p % 3):  # 1-3 mentions per pair
            rows.append(
                {
                    "pair_id": f"p{p}",
                    "sentence": "one two three" + " x" * (p % 4),
                    "type": ["Person", None][m % 2],
                }
            )
    return pd.DataFrame(rows)


def test_pairs_never_straddle_and_ratios_hold() -> None:
    df = _mentions()
    split = split_by_pair(df["pair_id"], seed=1)
    assert split.groupby(df["pair_id"]).nunique().max() == 1
    per_split = df.assign(split=split).drop_duplicates("pair_id")["split"].value_counts()
    assert per_split["train"] == 160 and per_split["dev"] == 20 and per_split["test"] == 20


def test_split_is_deterministic_in_seed() -> None:
    df = _mentions()
    assert split_by_pair(df["pair_id"], seed=3).equals(split_by_pair(df["pair_id"], seed=3))
    assert not split_by_pair(df["pair_id"], seed=3).equals(split_by_pair(df["pair_id"], seed=4))


def test_bad_ratios_are_refused() -> None:
    with pytest.raises(ValueError, match="ratios"):
        split_by_pair(_mentions()["pair_id"], ratios=(0.8, 0.1, 0.2))


def test_table1_counts() -> None:
    df = pd.DataFrame(
        {
            "pair_id": ["a", "a", "b", "c"],
            "sentence": ["w1 w2", "w1 w2", "w1 w2 w3 w4", "w"],
            "split": ["train", "train", "train", "test"],
            "type": ["Person", "Country", None, "Person"],
        }
    )
    t = table1(df)
    assert t.loc["pairs", "train"] == 2 and t.loc["mentions_per_pair", "train"] == 1.5
    assert t.loc["words_per_pair", "train"] == 3.0
    assert t.loc["pairs", "dev"] == 0 and t.loc["pairs", "total"] == 3
    assert type_distribution(df) == {"Country": 1, "Person": 2, "unknown": 1}
