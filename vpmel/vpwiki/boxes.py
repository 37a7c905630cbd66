"""Box geometry: IoU (the VPWiki filter, paper §3) and region proposals for grounding.

Boxes are ``[x1, y1, x2, y2]`` in pixels, x1 < x2 and y1 < y2 (see vpmel.data.schema).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4) → (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0, None).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    return float(pairwise_iou(np.asarray(a)[None], np.asarray(b)[None])[0, 0])


def sliding_windows(
    width: int,
    height: int,
    sizes: Sequence[float] = (0.25, 0.35, 0.5, 0.7),
    aspect_ratios: Sequence[float] = (1.0,),
    overlap: float = 0.5,
) -> np.ndarray:
    """Multi-scale window proposals covering a ``width`` x ``height`` image.

    ``sizes`` are window sides as fractions of the image's shorter side; windows of one size
    step by ``(1 - overlap)`` of their side and the last row/column is aligned to the image
    edge, so every pixel is covered at every scale. Returns (K, 4) float boxes, no duplicates.
    """
    short = min(width, height)
    boxes: list[tuple[float, float, float, float]] = []
    for size in sizes:
        for ratio in aspect_ratios:
            bw = min(width, size * short * np.sqrt(ratio))
            bh = min(height, size * short / np.sqrt(ratio))
            for x in _starts(width, bw, overlap):
                for y in _starts(height, bh, overlap):
                    boxes.append((x, y, x + bw, y + bh))
    return np.unique(np.round(np.asarray(boxes, dtype=np.float64), 3), axis=0)


def _starts(length: float, window: float, overlap: float) -> list[float]:
    if window >= length:
        return [0.0]
    step = max(1.0, window * (1 - overlap))
    starts = list(np.arange(0.0, length - window, step))
    starts.append(length - window)
    return starts


def grounding_quality(boxes: np.ndarray, reference: Sequence, iou_min: float = 0.5) -> dict:
    """Mean IoU and share with IoU >= iou_min over the mentions that have a reference."""
    pairs = [(b, r) for b, r in zip(boxes, reference, strict=True) if r is not None]
    if not pairs:
        return {"n": 0, "mean_iou": None, "share_iou_ge_min": None}
    ious = np.array(
        [pairwise_iou(np.asarray(b)[None], np.asarray(r)[None])[0, 0] for b, r in pairs]
    )
    return {
        "n": len(ious),
        "mean_iou": round(float(ious.mean()), 4),
        "share_iou_ge_min": round(float((ious >= iou_min).mean()), 4),
    }
