"""Render OpenMoji glyphs once per entity, then reuse them for KB images and scenes.

Glyphs come from OpenMoji's COLR0 colour font (Pillow draws it with
``embedded_color=True``, ZWJ and flag sequences included). Each glyph is kept as an RGBA
image cropped to its alpha, at a size large enough to be scaled down for any scene.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from vpmel.scenes import alpha_bbox, fit
from vpmel.world.emoji import OPENMOJI_FONT, Emoji

GLYPH_FONT_SIZE = 109  # a size the COLR0 font renders crisply; glyphs come out ~100-140 px


@cache
def _font(size: int = GLYPH_FONT_SIZE) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(OPENMOJI_FONT), size)


def render_glyph(chars: str, size: int = GLYPH_FONT_SIZE) -> Image.Image:
    """The emoji ``chars`` as an RGBA image cropped to its visible pixels."""
    font = _font(size)
    left, top, right, bottom = font.getbbox(chars)
    canvas = Image.new("RGBA", (right + 8, bottom + 8), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((4, 4), chars, font=font, embedded_color=True)
    box = alpha_bbox(canvas)
    if box is None:
        raise ValueError(f"OpenMoji font draws nothing for {chars!r}")
    return canvas.crop(box)


def render_glyphs(entities: Iterable[Emoji]) -> dict[str, Image.Image]:
    """QID -> cropped RGBA glyph, for every entity."""
    return {e.qid: render_glyph(e.chars) for e in entities}


def kb_image(glyph: Image.Image, size: int) -> Image.Image:
    """An encyclopedia-style entity image: the glyph centred on white, ``size`` x ``size`` RGB."""
    margin = max(1, size // 12)
    small = fit(glyph, size - 2 * margin)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(small, ((size - small.width) // 2, (size - small.height) // 2), small)
    return canvas
