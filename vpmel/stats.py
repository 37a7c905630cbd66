"""Uncertainty of the reported comparisons: seeds, mentions, and paired tests.

A result of the demo depends on two kinds of chance, reported separately:

* **seeds** — the same model trained with other seeds: ``mean ± sd`` over the seeds
  (:func:`seed_summary`, sample sd, ``ddof=1``);
* **mentions** — the test split is a sample of mentions: the paired bootstrap
  (:func:`paired_bootstrap`) resamples mentions with replacement and recomputes the
  difference between two models on the *same* resampled mentions; its 2.5th and 97.5th
  percentiles are the 95% CI of the difference. With several seeds per model, each
  mention's score is first averaged over the model's seeds (a hit rate in [0, 1] for H@k,
  the mean reciprocal rank for MRR), so the CI is about the seed-averaged models.
* McNemar's exact test (:func:`mcnemar_exact`) on H@1: among the mentions where exactly one
  of the two models is right (by majority over seeds), is either model right more often
  than a fair coin would be? Two-sided binomial p-value.

Two samples of *different* mentions (the out-of-fold train answers against dev's) use the
unpaired :func:`independent_bootstrap` instead. A difference whose CI contains 0 is
reported as no difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


def seed_summary(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample sd) of one metric over seeds; sd is 0 for a single seed."""
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def per_mention(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Per-mention score [n] of a metric from ranks [seeds, n] (or [n]), averaged over
    seeds, in percent: ``H@k`` → 100 · share of seeds with rank ≤ k, ``MRR`` → 100 · mean
    of 1 / rank."""
    r = np.atleast_2d(np.asarray(ranks, dtype=np.float64))
    if metric == "MRR":
        return 100.0 * (1.0 / r).mean(0)
    if metric.startswith("H@"):
        return 100.0 * (r <= int(metric[2:])).mean(0)
    raise ValueError(f"unknown metric {metric!r}: H@k or MRR")


@dataclass(frozen=True)
class Difference:
    """``a - b`` on one metric, with its paired-bootstrap 95% CI over mentions."""

    delta: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        return not (self.low <= 0.0 <= self.high)

    def __str__(self) -> str:
        return f"{self.delta:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


def paired_bootstrap(
    ranks_a: np.ndarray,
    ranks_b: np.ndarray,
    metric: str,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Difference:
    """Paired bootstrap over mentions of ``metric(a) - metric(b)``; ranks are [seeds, n]
    or [n] with the same mentions in the same order on both sides."""
    a, b = per_mention(ranks_a, metric), per_mention(ranks_b, metric)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same mentions: {a.shape} vs {b.shape}")
    n = len(a)
    if n == 0:
        return Difference(float("nan"), float("nan"), float("nan"), 0)
    diff = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    boot = diff[idx].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return Difference(float(diff.mean()), float(low), float(high), n)


def independent_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Difference:
    """Bootstrap of ``mean(a) - mean(b)`` where ``a`` and ``b`` score *different* mentions
    (e.g. the out-of-fold train answers against the dev answers): each side is resampled
    on its own, the 2.5th and 97.5th percentiles of the difference are its 95% CI. ``n`` is
    the smaller side."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not len(a) or not len(b):
        return Difference(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    boot_a = a[rng.integers(0, len(a), size=(samples, len(a)))].mean(1)
    boot_b = b[rng.integers(0, len(b), size=(samples, len(b)))].mean(1)
    low, high = np.percentile(boot_a - boot_b, [2.5, 97.5])
    return Difference(float(a.mean() - b.mean()), float(low), float(high), min(len(a), len(b)))


def majority_hits(ranks: np.ndarray, k: int = 1) -> np.ndarray:
    """Per-mention H@k by majority over seeds (ties count as a miss)."""
    r = np.atleast_2d(np.asarray(ranks, dtype=np.float64))
    return (r <= k).mean(0) > 0.5


def mcnemar_exact(ranks_a: np.ndarray, ranks_b: np.ndarray, k: int = 1) -> tuple[int, int, float]:
    """(mentions only a gets right, only b gets right, two-sided exact McNemar p) on H@k,
    each model's hit taken by majority over its seeds."""
    a, b = majority_hits(ranks_a, k), majority_hits(ranks_b, k)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    p = binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
    return only_a, only_b, float(p)
