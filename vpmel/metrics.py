"""Ranking metrics of MEL (paper Appendix A.3): H@k (top-k accuracy), MRR and MR.

Ranks are 1-based positions of the gold entity among all KB entities, computed by
:mod:`vpmel.iier.retrieval` (ties are counted pessimistically there). H@k and MRR are reported
in percent, as in the paper's tables; MR (mean rank) in positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS: tuple[int, ...] = (1, 3, 5, 10, 20)


def ranking_metrics(
    ranks: Sequence[float] | np.ndarray, ks: Sequence[int] = KS
) -> dict[str, float]:
    """``{"H@1": .., ..., "MRR": .., "MR": .., "n": ..}`` from 1-based gold ranks.

    ``H@k = 100 · mean(rank <= k)`` (Appendix A.3's Accuracy_top-k), ``MRR = 100 ·
    mean(1 / rank)``, ``MR = mean(rank)``. An empty list gives NaN metrics and n = 0.
    """
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"ranks must be one-dimensional, got shape {r.shape}")
    if len(r) and (np.isnan(r).any() or (r < 1).any()):
        raise ValueError("ranks must be >= 1 and not NaN")
    out: dict[str, float] = {}
    for k in ks:
        out[f"H@{k}"] = round(100.0 * float((r <= k).mean()), 4) if len(r) else float("nan")
    out["MRR"] = round(100.0 * float((1.0 / r).mean()), 4) if len(r) else float("nan")
    out["MR"] = round(float(r.mean()), 4) if len(r) else float("nan")
    out["n"] = int(len(r))
    return out
