"""Contact sheets: a grid of images with labelled boxes and wrapped captions, as one PNG.

Generic on purpose: the demo world draws its scenes with reference boxes, and later stages
draw prompted images with automatic boxes. A tile is an image (a path or a PIL image),
a list of ``(box, colour, label)`` and a caption; images that are missing or unreadable
become a grey tile that says so, never an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vpmel.data.images import ImageProblem, open_rgb
from vpmel.data.quality import Reason

Colour = str | tuple[int, int, int]
BoxSpec = tuple[Sequence[float], Colour, str]  # ([x1, y1, x2, y2], colour, label)

BACKGROUND = (255, 255, 255)
PLACEHOLDER = (200, 200, 200)
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)


@dataclass
class Tile:
    image: Path | str | Image.Image | None
    boxes: Sequence[BoxSpec] = ()
    caption: str = ""
    title: str = ""


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _load(image: Path | str | Image.Image | None) -> tuple[Image.Image | None, str]:
    """The image as RGB, or None and why not."""
    if image is None:
        return None, "no image"
    if isinstance(image, Image.Image):
        return image.convert("RGB"), ""
    try:
        return open_rgb(image), ""
    except ImageProblem as problem:
        if problem.reason == Reason.MISSING_IMAGE:
            return None, f"missing image\n{Path(image).name}"
        return None, f"unreadable image\n{Path(image).name}\n{problem.detail.split(':')[0]}"


def wrap(text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; explicit newlines start new lines; at most
    ``max_lines`` lines, the last one ending in an ellipsis when text was cut."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if font.getlength(candidate) <= width or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "…"]
    return lines


def _ink(colour: Colour) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``colour``."""
    rgb = Image.new("RGB", (1, 1), colour).getpixel((0, 0))
    r, g, b = rgb  # type: ignore[misc]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _draw_boxes(
    draw: ImageDraw.ImageDraw,
    boxes: Sequence[BoxSpec],
    scale: float,
    offset: tuple[int, int],
    area: tuple[int, int],
    font: ImageFont.ImageFont,
) -> None:
    ox, oy = offset
    for box, colour, label in boxes:
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        rect = (ox + x1, oy + y1, ox + x2, oy + y2)
        draw.rectangle(rect, outline=colour, width=2)
        if not label:
            continue
        tw = font.getlength(label) + 6
        th = font.size + 4 if hasattr(font, "size") else 14
        lx = min(max(rect[0], ox), ox + area[0] - tw)
        ly = rect[1] - th if rect[1] - th >= oy else rect[1]  # above the box, else inside
        draw.rectangle((lx, ly, lx + tw, ly + th), fill=colour)
        draw.text((lx + 3, ly + 1), label, fill=_ink(colour), font=font)


def draw_contact_sheet(
    tiles: Sequence[Tile | tuple],
    path: Path | str,
    columns: int = 4,
    tile_width: int = 320,
    tile_height: int | None = None,
    caption_lines: int = 4,
    font_size: int = 13,
    title: str = "",
) -> Path:
    """Draw ``tiles`` in a grid and save a PNG at ``path``; returns the path.

    A tile is a ``Tile`` or a tuple ``(image, [(box, colour, label), ...], caption)``,
    boxes in pixels of the image. Each image is scaled to fit ``tile_width`` x
    ``tile_height`` (default: the first readable image's aspect ratio).
    """
    tiles = [t if isinstance(t, Tile) else Tile(*t) for t in tiles]
    font, small = _font(font_size), _font(max(8, font_size - 2))
    loaded = [_load(t.image) for t in tiles]
    if tile_height is None:
        first = next((im for im, _ in loaded if im is not None), None)
        tile_height = (
            round(tile_width * first.height / first.width) if first else tile_width * 3 // 4
        )
    line_h = font_size + 4
    pad = 8
    title_h = line_h if any(t.title for t in tiles) else 0
    cell_w = tile_width + 2 * pad
    cell_h = title_h + tile_height + caption_lines * line_h + 2 * pad
    rows = max(1, -(-len(tiles) // columns))
    head = line_h + pad if title else 0
    sheet = Image.new("RGB", (columns * cell_w, head + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad // 2), title, fill=TEXT, font=font)
    for k, (tile, (image, why)) in enumerate(zip(tiles, loaded, strict=True)):
        x0 = (k % columns) * cell_w + pad
        y0 = head + (k // columns) * cell_h + pad
        if tile.title:
            draw.text((x0, y0), tile.title, fill=MUTED, font=small)
        top = y0 + title_h
        if image is None:
            draw.rectangle((x0, top, x0 + tile_width, top + tile_height), fill=PLACEHOLDER)
            draw.multiline_text((x0 + 8, top + 8), why, fill=TEXT, font=font)
        else:
            scale = min(tile_width / image.width, tile_height / image.height)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            offset = (x0 + (tile_width - size[0]) // 2, top + (tile_height - size[1]) // 2)
            sheet.paste(image.resize(size, Image.Resampling.LANCZOS), offset)
            _draw_boxes(draw, tile.boxes, scale, offset, (tile_width, tile_height), small)
        lines = wrap(tile.caption, font, tile_width, caption_lines)
        for i, line in enumerate(lines):
            draw.text((x0, top + tile_height + 4 + i * line_h), line, fill=TEXT, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path
