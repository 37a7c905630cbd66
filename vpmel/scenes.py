"""Synthetic scenes: where objects go (planning) and how a scene is drawn (rendering).

The demo world's scenes (:mod:`vpmel.world`) and the encoder's training views
(:mod:`vpmel.encoders.training`) are drawn with these primitives; they know nothing about
either. An object is any RGBA image cropped to its alpha (an OpenMoji glyph, a cut-out
entity image).

Planning works on *squares*: each object gets a square ``(x, y, s)`` fully inside the
image, and its glyph is later scaled so that its longer side is ``s`` and centred in the
square. Occlusion is controlled on squares: while placing objects in draw order, a new
square is accepted only if no earlier square ends up covered by more than
``occlusion_max`` of its area by the squares drawn over it (a bound on how much of each
glyph can be hidden; after a number of failed tries, smaller squares are tried, and the
least-occluding try is kept).

Rendering draws a cluttered background (gradient, coarse and fine colour noise, random
semi-transparent shapes and lines), pastes the glyphs in draw order and measures each
object's reference box: the tight box of the glyph's alpha as placed, *before* occlusion
(a box of a partly hidden object still covers the hidden part, as a human annotator draws
it). A few faint lines are drawn over the objects at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 (x2, y2 exclusive)

ALPHA_THRESHOLD = 32  # alpha below this is anti-aliasing halo, not part of the object box
_ALPHA_LUT = [255 if a >= ALPHA_THRESHOLD else 0 for a in range(256)]


def alpha_bbox(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Tight box (x1, y1, x2, y2), x2/y2 exclusive, of pixels with alpha >= ALPHA_THRESHOLD."""
    mask = image.getchannel("A").point(_ALPHA_LUT)
    return mask.getbbox()


def fit(glyph: Image.Image, longest: int) -> Image.Image:
    """Scale ``glyph`` so that its longer side is ``longest`` pixels (at least 1)."""
    w, h = glyph.size
    scale = longest / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return glyph.resize(size, Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class Square:
    """Where one object goes: top-left corner, side, rotation; ``occluded`` is the fraction
    of the square covered by squares drawn later."""

    x: int
    y: int
    size: int
    angle: float
    occluded: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.size / 2, self.y + self.size / 2


def _coverage(covered: np.ndarray, sq: tuple[int, int, int], new: tuple[int, int, int]) -> float:
    """Fraction of square ``sq`` covered by ``covered`` (a mask) plus square ``new``."""
    x, y, s = sq
    region = covered[y : y + s, x : x + s].copy()
    nx, ny, ns = new
    x1, y1 = max(x, nx), max(y, ny)
    x2, y2 = min(x + s, nx + ns), min(y + s, ny + ns)
    if x1 < x2 and y1 < y2:
        region[y1 - y : y2 - y, x1 - x : x2 - x] = True
    return np.count_nonzero(region) / (s * s)


def place_squares(
    rng: np.random.Generator,
    n: int,
    width: int,
    height: int,
    scale: tuple[float, float],
    occlusion_max: float,
    max_rotation: float = 0.0,
    tries: int = 30,
) -> list[Square]:
    """Squares for ``n`` objects in draw order (later ones are drawn on top)."""
    short = min(width, height)
    placed: list[tuple[int, int, int]] = []
    covered: list[np.ndarray] = []  # per placed square: pixels covered by later squares
    for _ in range(n):
        best: tuple[float, tuple[int, int, int]] | None = None
        for attempt in range(tries):
            shrink = 0.96 ** max(0, attempt - tries // 3)
            s = int(round(rng.uniform(*scale) * short * shrink))
            s = min(max(s, 8), short)
            cand = (int(rng.integers(0, width - s + 1)), int(rng.integers(0, height - s + 1)), s)
            worst = max(
                (_coverage(c, p, cand) for c, p in zip(covered, placed, strict=True)), default=0.0
            )
            if best is None or worst < best[0]:
                best = (worst, cand)
            if worst <= occlusion_max:
                break
        assert best is not None
        x, y, s = best[1]
        for mask in covered:
            mask[y : y + s, x : x + s] = True
        placed.append(best[1])
        covered.append(np.zeros((height, width), dtype=bool))
    angles = rng.uniform(-max_rotation, max_rotation, size=n) if max_rotation > 0 else [0.0] * n
    out = []
    for (x, y, s), mask, angle in zip(placed, covered, angles, strict=True):
        occ = np.count_nonzero(mask[y : y + s, x : x + s]) / (s * s)
        out.append(Square(x, y, s, round(float(angle), 1), round(occ, 3)))
    return out


def relation(a: Square, b: Square) -> str:
    """Where ``a`` is relative to ``b``, in words ("to the left of", "above", ...)."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _random_colour(rng: np.random.Generator, alpha: tuple[int, int]) -> tuple[int, ...]:
    r, g, b = (int(v) for v in rng.integers(0, 256, size=3))
    return r, g, b, int(rng.integers(alpha[0], alpha[1] + 1))


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    c1, c2 = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _coarse_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    cells = int(rng.integers(3, 9))
    grid = rng.integers(0, 256, size=(max(2, cells * height // width), cells, 3), dtype=np.uint8)
    up = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC)
    return (np.asarray(up, dtype=np.float32) - 128.0) * rng.uniform(0.1, 0.45)


SHAPES = ("ellipse", "rectangle", "polygon", "line", "arc")


def _shapes(
    rng: np.random.Generator,
    image: Image.Image,
    n: int,
    alpha: tuple[int, int],
    kinds: tuple[str, ...] = SHAPES,
) -> None:
    """Draw ``n`` random semi-transparent shapes onto RGBA ``image`` in place."""
    width, height = image.size
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(n):
        kind = kinds[int(rng.integers(len(kinds)))]
        colour = _random_colour(rng, alpha)
        xs = np.sort(rng.integers(-width // 4, width + width // 4, size=2))
        ys = np.sort(rng.integers(-height // 4, height + height // 4, size=2))
        box = [int(xs[0]), int(ys[0]), int(xs[1]) + 2, int(ys[1]) + 2]
        if kind == "ellipse":
            draw.ellipse(box, fill=colour)
        elif kind == "rectangle":
            draw.rectangle(box, fill=colour)  # filled only: no box outlines that mimic prompts
        elif kind == "polygon":
            k = int(rng.integers(3, 7))
            points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(k)]
            draw.polygon(points, fill=colour)
        elif kind == "line":
            draw.line(box, fill=colour, width=int(rng.integers(1, 5)))
        else:
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(60, 300)), fill=colour, width=2)
    image.alpha_composite(layer)


def draw_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A cluttered RGBA background; every call with a fresh ``rng`` state looks different."""
    pixels = _gradient(rng, width, height) + _coarse_noise(rng, width, height)
    pixels += rng.normal(0, rng.uniform(1, 8), size=(height, width, 1))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    _shapes(rng, image, int(rng.integers(6, 16)), alpha=(40, 150))
    return image


def compose_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    glyphs: list[Image.Image],
    squares: list[Square],
) -> tuple[Image.Image, list[Box]]:
    """Draw a scene: background, glyphs in draw order, faint top clutter.

    Returns the RGB image and each object's reference box (tight alpha box as placed).
    """
    image = draw_background(rng, width, height)
    boxes: list[Box] = []
    for glyph, sq in zip(glyphs, squares, strict=True):
        g = fit(glyph, sq.size)
        if sq.angle:  # rotate the small glyph (fast), then shrink it back into the square
            g = g.rotate(sq.angle, resample=Image.Resampling.BICUBIC, expand=True)
            g = fit(g.crop(alpha_bbox(g)), sq.size)
        ox, oy = sq.x + (sq.size - g.width) // 2, sq.y + (sq.size - g.height) // 2
        bx1, by1, bx2, by2 = alpha_bbox(g) or (0, 0, g.width, g.height)
        boxes.append((ox + bx1, oy + by1, ox + bx2, oy + by2))
        image.alpha_composite(g, (ox, oy))
    _shapes(rng, image, int(rng.integers(0, 3)), alpha=(40, 90), kinds=("line", "arc"))
    return image.convert("RGB"), boxes
