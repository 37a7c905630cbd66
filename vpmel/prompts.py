"""Visual prompts: the mark drawn into the image that tells a model which region is meant.

VPWiki draws a red rectangle (paper §3, Figure 2). A fixed 2 px line all but vanishes once a
large photo is resized to a model's 224 px input, so the line width follows the image size:
ViP-LLaVA uses about 3 px per 336 px of the longer side, which :func:`auto_thickness` follows.
Besides the box the paper's Limitations ask for regions of other shapes: an ellipse, an arrow
pointing at the region and a point marker are drawn by the same function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageColor, ImageDraw

Shape = Literal["box", "ellipse", "arrow", "point"]
SHAPES: tuple[str, ...] = ("box", "ellipse", "arrow", "point")

#: ViP-LLaVA's visual prompts: about 3 px of line per 336 px of the longer image side.
PX_PER_336 = 3.0


@dataclass(frozen=True)
class PromptStyle:
    shape: Shape = "box"
    color: str = "red"
    #: line width in px; None scales it with the image (see auto_thickness)
    thickness: int | None = None
    #: with thickness None: px of line per 336 px of the longer side
    px_per_336: float = PX_PER_336

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"prompt shape {self.shape!r} is not one of {SHAPES}")
        ImageColor.getrgb(self.color)  # raises ValueError on an unknown colour
        if self.thickness is not None and self.thickness < 1:
            raise ValueError(f"prompt thickness must be >= 1 px, got {self.thickness}")


def auto_thickness(width: int, height: int, px_per_336: float = PX_PER_336) -> int:
    """Line width that survives resizing the image to a model's input size."""
    return max(1, round(px_per_336 * max(width, height) / 336))


def draw_prompt(
    image: Image.Image, box: Sequence[float], style: PromptStyle = PromptStyle()
) -> Image.Image:
    """Return a copy of ``image`` (RGB) with the region ``box`` = [x1, y1, x2, y2] marked."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"prompt box {list(box)} is empty or inverted")
    out = image.convert("RGB")
    w, h = out.size
    t = style.thickness or auto_thickness(w, h, style.px_per_336)
    draw = ImageDraw.Draw(out)
    color = ImageColor.getrgb(style.color)
    if style.shape == "box":
        draw.rectangle([x1, y1, x2, y2], outline=color, width=t)
    elif style.shape == "ellipse":
        draw.ellipse([x1, y1, x2, y2], outline=color, width=t)
    elif style.shape == "point":
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        r = max(2 * t, 2)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    else:  # arrow
        _draw_arrow(draw, (x1, y1, x2, y2), (w, h), color, t)
    return out


def _draw_arrow(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    size: tuple[int, int],
    color: tuple[int, ...],
    t: int,
) -> None:
    """An arrow from the image's roomiest side towards the box, tip on the box edge."""
    x1, y1, x2, y2 = box
    w, h = size
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    # come from the side with the most room, so the arrow does not cover the region
    room = {"left": x1, "right": w - x2, "top": y1, "bottom": h - y2}
    side = max(room, key=room.__getitem__)
    length = max(room[side] * 0.8, 6 * t)
    tip, tail = {
        "left": ((x1, cy), (x1 - length, cy)),
        "right": ((x2, cy), (x2 + length, cy)),
        "top": ((cx, y1), (cx, y1 - length)),
        "bottom": ((cx, y2), (cx, y2 + length)),
    }[side]
    draw.line([tail, tip], fill=color, width=t)
    angle = math.atan2(tip[1] - tail[1], tip[0] - tail[0])
    head = max(4 * t, 4)
    left = (tip[0] - head * math.cos(angle - 0.5), tip[1] - head * math.sin(angle - 0.5))
    right = (tip[0] - head * math.cos(angle + 0.5), tip[1] - head * math.sin(angle + 0.5))
    draw.polygon([tip, left, right], fill=color)
