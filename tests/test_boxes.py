"""IoU against hand-computed values; proposals cover the image."""

from __future__ import annotations

import numpy as np
import pytest

from vpmel.vpwiki.boxes import iou, pairwise_iou, sliding_windows


def test_iou_known_values() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges share no area
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [2, 2, 4, 4]) == pytest.approx(4 / 100)


def test_pairwise_matches_single() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, size=(7, 2))
    a = np.concatenate([xy, xy + rng.uniform(1, 30, size=(7, 2))], axis=1)
    m = pairwise_iou(a, a[:3])
    assert m.shape == (7, 3)
    for i in range(7):
        for j in range(3):
            assert m[i, j] == pytest.approx(iou(a[i], a[j]))
    assert np.allclose(np.diag(m[:3]), 1.0)


def test_degenerate_boxes_have_zero_iou() -> None:
    assert iou([5, 5, 5, 5], [5, 5, 5, 5]) == 0.0


def test_sliding_windows_cover_every_pixel_inside_the_image() -> None:
    w, h = 160, 120
    boxes = sliding_windows(w, h)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all()
    for side in (0.25, 0.7):
        mask = np.zeros((h, w), bool)
        size = side * min(w, h)
        for x1, y1, x2, y2 in boxes[np.isclose(boxes[:, 2] - boxes[:, 0], size)]:
            mask[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
        assert mask.all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
