"""Visual prompts: drawn where asked, in the asked colour, with a size-aware line."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vpmel.prompts import SHAPES, PromptStyle, auto_thickness, draw_prompt


def _red_mask(img: Image.Image) -> np.ndarray:
    a = np.asarray(img).astype(int)
    return (a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)


def test_thickness_follows_image_size() -> None:
    assert auto_thickness(336, 200) == 3
    assert auto_thickness(4032, 3024) == 36
    assert auto_thickness(20, 20) == 1


def test_box_is_drawn_on_its_edges_only() -> None:
    img = Image.new("RGB", (336, 336), "white")
    out = draw_prompt(img, [100, 120, 200, 220])
    red = _red_mask(out)
    assert red[120, 150] and red[220 - 1, 150] and red[170, 100] and red[170, 200 - 1]
    assert not red[170, 150]  # inside stays clear
    assert not red[50, 50]  # outside stays clear
    # auto thickness 3 px on a 336 px image
    assert red[120:130, 150].sum() == 3
    assert np.asarray(img).min() == 255  # input untouched


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_marks_near_the_region(shape: str) -> None:
    img = Image.new("RGB", (200, 100), "white")
    out = draw_prompt(img, [120, 30, 160, 70], PromptStyle(shape=shape, color="#ff0000"))
    ys, xs = np.nonzero(_red_mask(out))
    assert len(xs) > 0
    if shape != "arrow":
        assert xs.min() >= 119 and xs.max() <= 161 and ys.min() >= 29 and ys.max() <= 71
    else:  # the tip touches the box; the tail lies outside it
        assert ((xs >= 118) & (xs <= 162) & (ys >= 28) & (ys <= 72)).any()
        assert ((xs < 118) | (xs > 162) | (ys < 28) | (ys > 72)).any()


def test_bad_styles_and_boxes_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        PromptStyle(shape="star")
    with pytest.raises(ValueError):
        PromptStyle(color="not-a-colour")
    with pytest.raises(ValueError, match="empty"):
        draw_prompt(Image.new("RGB", (10, 10)), [5, 5, 5, 8])
