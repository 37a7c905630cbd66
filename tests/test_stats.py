"""vpmel.stats: seeds, paired bootstrap over mentions, McNemar's exact test."""

from __future__ import annotations

import numpy as np
import pytest

from vpmel.stats import (
    independent_bootstrap,
    mcnemar_exact,
    paired_bootstrap,
    per_mention,
    seed_summary,
)


def test_seed_summary_is_mean_and_sample_sd() -> None:
    assert seed_summary([40.0, 42.0, 44.0]) == (42.0, 2.0)
    assert seed_summary([40.0]) == (40.0, 0.0)


def test_per_mention_averages_over_seeds() -> None:
    ranks = np.array([[1, 2, 30], [1, 1, 5], [3, 1, 1]])
    assert np.allclose(per_mention(ranks, "H@1"), [200 / 3, 200 / 3, 100 / 3])
    assert np.allclose(per_mention(ranks, "H@5"), [100, 100, 200 / 3])
    assert np.allclose(per_mention(ranks[0], "MRR"), [100, 50, 100 / 30])
    with pytest.raises(ValueError, match="unknown metric"):
        per_mention(ranks, "MR")


def test_paired_bootstrap_of_identical_models_is_zero() -> None:
    ranks = np.random.default_rng(0).integers(1, 50, size=(3, 200))
    d = paired_bootstrap(ranks, ranks, "H@1")
    assert (d.delta, d.low, d.high) == (0.0, 0.0, 0.0)
    assert not d.significant


def test_paired_bootstrap_ci_covers_the_difference_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)

    def pair(n: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.where(rng.random(n) < 0.6, 1, 10)  # 60% H@1
        b = np.where(rng.random(n) < 0.4, 1, 10)  # 40% H@1
        return a, b

    small, large = paired_bootstrap(*pair(100), "H@1"), paired_bootstrap(*pair(2000), "H@1")
    assert small.low < small.delta < small.high
    assert large.significant and large.low < 20 < large.high
    assert (large.high - large.low) < (small.high - small.low) / 2
    with pytest.raises(ValueError, match="same mentions"):
        paired_bootstrap(np.ones(3), np.ones(4), "H@1")


def test_mcnemar_counts_discordant_mentions_by_seed_majority() -> None:
    # mention 0: a right (2 of 3 seeds), b wrong; mention 1: both right; mention 2: only b
    a = np.array([[1, 1, 9], [1, 1, 9], [2, 1, 9]])
    b = np.array([[5, 1, 1], [5, 1, 1], [5, 1, 1]])
    only_a, only_b, p = mcnemar_exact(a, b)
    assert (only_a, only_b) == (1, 1) and p == 1.0
    # 10 discordant mentions all won by a: p = 2 * 0.5**10
    a = np.ones((1, 10))
    b = np.full((1, 10), 3)
    assert mcnemar_exact(a, b)[2] == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(b, b) == (0, 0, 1.0)


def test_independent_bootstrap_resamples_each_side_on_its_own() -> None:
    rng = np.random.default_rng(2)
    a = 100.0 * (rng.random(1300) < 0.27)  # e.g. out-of-fold train answers
    b = 100.0 * (rng.random(160) < 0.33)  # dev answers: other mentions, another size
    d = independent_bootstrap(a, b)
    assert d.delta == pytest.approx(a.mean() - b.mean()) and d.n == 160
    assert d.low < d.delta < d.high
    # the CI is about as wide as the normal approximation of two independent shares
    se = np.sqrt(a.var() / len(a) + b.var() / len(b))
    assert (d.high - d.low) == pytest.approx(2 * 1.96 * se, rel=0.15)
    same = independent_bootstrap(np.full(50, 30.0), np.full(80, 30.0))
    assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)
    assert np.isnan(independent_bootstrap(np.ones(3), np.ones(0)).delta)
