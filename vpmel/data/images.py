"""Safe image loading and normalisation (Pillow + numpy, no torch).

Real MEL datasets hold every kind of picture: CMYK and grayscale JPEGs, palette PNGs with
transparency, 16-bit scans, 30-megapixel photos, truncated downloads and HTML pages saved
as ``.jpg``. Everything downstream wants plain 8-bit RGB of a sane size, so each image is
decoded once here, turned into RGB and downscaled so its longer side is at most
``max_side``. Every change is returned as a :class:`Repair` for the data-quality report;
every image that cannot be used raises :class:`ImageProblem` with the :class:`Reason` to
report. Nothing is ever replaced by a blank image.

Boxes follow :mod:`vpmel.data.schema`: ``[x1, y1, x2, y2]`` in pixels of the image as displayed
(after EXIF orientation), so a box is rescaled with :func:`scale_box` using the scale the
loader returns and checked with :func:`clip_box`.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from vpmel.atomic import atomic_file
from vpmel.data.quality import Reason

#: Source formats written back as JPEG (quality 95); everything else becomes PNG.
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
JPEG_QUALITY = 95

#: What a broken or hostile file makes Pillow raise while opening or decoding.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)

_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width/height
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class ImageProblem(Exception):
    """An image that cannot be used; ``reason`` says why, for the quality report."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Repair:
    """One change made to an image that is kept (conversion, downscaling)."""

    reason: Reason
    detail: str


@dataclass
class LoadedImage:
    """A decoded RGB image and how it relates to the file it came from."""

    image: Image.Image
    source_format: str | None
    original_size: tuple[int, int]  # (width, height) as displayed, before downscaling
    scale: float  # new pixels per original pixel (1.0 when not downscaled)
    repairs: list[Repair] = field(default_factory=list)


@dataclass(frozen=True)
class NormalizedImage:
    """Result of :func:`normalize_image`: where the RGB file went and what was done."""

    path: Path
    width: int
    height: int
    scale: float
    repairs: tuple[Repair, ...]
    original_width: int
    original_height: int


def written_path(rel: str) -> str:
    """Check a path as a data file writes it and return it with ``/`` separators.

    Data files are untrusted: an absolute path or one with a drive raises
    :class:`ImageProblem` (``PATH_ESCAPES_ROOT``); backslashes are read as separators
    (datasets made on Windows).
    """
    if "\x00" in rel:
        raise ImageProblem(Reason.MISSING_IMAGE, f"invalid path {rel!r}")
    posix = rel.replace("\\", "/")
    if ":" not in rel and not posix.startswith("/"):
        return posix  # neither absolute nor with a drive: the common case, checked cheaply
    if PurePosixPath(posix).is_absolute() or PureWindowsPath(rel).is_absolute():
        raise ImageProblem(Reason.PATH_ESCAPES_ROOT, f"absolute path {rel!r}")
    if PureWindowsPath(rel).drive:
        raise ImageProblem(Reason.PATH_ESCAPES_ROOT, f"path with a drive {rel!r}")
    return posix


def resolve_inside(root: Path, rel: str) -> Path:
    """Resolve ``rel`` (a path written in a data file) against the dataset ``root``.

    Besides the checks of :func:`written_path`, a path that leaves ``root`` through ``..``
    or a symlink raises :class:`ImageProblem` with ``PATH_ESCAPES_ROOT`` instead of reading
    an arbitrary file. The returned path is fully resolved; it may not exist.
    """
    posix = written_path(rel)
    base = Path(root).resolve()
    path = (base / posix).resolve()
    if not path.is_relative_to(base):
        raise ImageProblem(Reason.PATH_ESCAPES_ROOT, f"{rel!r} leads outside the dataset folder")
    return path


class FolderIndex:
    """Finds files under one dataset root, reading each folder's listing once.

    Readers try several candidate paths per record (folders x suffixes); resolving each with
    :func:`resolve_inside` costs a system call per path component, hundreds of thousands for
    a large KB. :meth:`find` answers from cached listings instead, and falls back to
    :func:`resolve_inside` only where a listing cannot decide alone: a ``..`` component or a
    symlink on the way (which must be followed and checked against the root).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._listings: dict[tuple[str, ...], dict[str, str]] = {}

    def _listing(self, parts: tuple[str, ...]) -> dict[str, str]:
        """Entry name -> "file" | "dir" | "link" | "other" for the folder ``root/parts``."""
        if parts not in self._listings:
            entries: dict[str, str] = {}
            try:
                with os.scandir(self.root.joinpath(*parts)) as it:
                    for entry in it:
                        if entry.is_symlink():
                            kind = "link"
                        elif entry.is_dir(follow_symlinks=False):
                            kind = "dir"
                        elif entry.is_file(follow_symlinks=False):
                            kind = "file"
                        else:
                            kind = "other"
                        entries[entry.name] = kind
            except OSError:  # missing or unreadable folder: nothing found in it
                pass
            self._listings[parts] = entries
        return self._listings[parts]

    def find(self, rel: str) -> Path | None:
        """The resolved path of file ``rel`` inside the root, or None when there is none.

        Raises :class:`ImageProblem` exactly as :func:`resolve_inside` does for a path that
        is invalid or leaves the root.
        """
        parts = tuple(p for p in written_path(rel).split("/") if p not in ("", "."))
        if ".." in parts:
            return self._slow(rel)
        if not parts:
            return None
        for depth, name in enumerate(parts):
            kind = self._listing(parts[:depth]).get(name)
            if kind == "link":
                return self._slow(rel)
            last = depth == len(parts) - 1
            if kind != ("file" if last else "dir"):
                return None
        return self.root.joinpath(*parts)

    def _slow(self, rel: str) -> Path | None:
        path = resolve_inside(self.root, rel)
        return path if path.is_file() else None


def downscale_factor(width: int, height: int, max_side: int | None) -> float:
    """Scale that brings the longer side down to ``max_side`` (1.0 when it already fits)."""
    longer = max(width, height)
    if not max_side or longer <= max_side:
        return 1.0
    return max_side / longer


def load_image(path: Path, max_side: int | None = 1024) -> LoadedImage:
    """Decode ``path`` into an 8-bit RGB image whose longer side is at most ``max_side``.

    Raises :class:`ImageProblem` (MISSING_IMAGE, UNREADABLE_IMAGE, IMAGE_TOO_LARGE) for an
    image that cannot be used. Pillow's decompression-bomb limit stays in force: images
    over ``Image.MAX_IMAGE_PIXELS`` are refused, not decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageProblem(Reason.MISSING_IMAGE, f"{path.name} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _decode(img, max_side)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem(Reason.IMAGE_TOO_LARGE, str(exc)) from None
    except _DECODE_ERRORS as exc:
        message = str(exc).replace(str(path), path.name)  # reports stay machine-independent
        raise ImageProblem(Reason.UNREADABLE_IMAGE, f"{type(exc).__name__}: {message}") from None


def open_rgb(path: Path | str, max_side: int | None = None) -> Image.Image:
    """The image file ``path`` as 8-bit RGB: the one way every stage opens an image.

    :func:`load_image`'s checks and conversions (ImageProblem for a missing, unreadable or
    oversized file; EXIF orientation applied; transparency on white; 16 bit scaled), not
    downscaled unless ``max_side`` says so. For an 8-bit RGB or gray file without EXIF
    rotation (every image the import stage writes) these are the pixels of
    ``Image.open(path).convert("RGB")``.
    """
    return load_image(Path(path), max_side).image


def _decode(img: Image.Image, max_side: int | None) -> LoadedImage:
    source_format = img.format
    width, height = img.size
    orientation = _orientation(img)
    if orientation in _ROTATING_ORIENTATIONS:
        width, height = height, width
    scale = downscale_factor(width, height, max_side)
    if scale < 1.0 and source_format in JPEG_FORMATS:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 size: a 20+ MP photo never sits in
        # memory at full resolution. The result stays at least as large as the target.
        stored_w, stored_h = img.size
        img.draft(img.mode, (math.ceil(stored_w * scale), math.ceil(stored_h * scale)))
    img.load()
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    gray = _plain_gray(img)
    if gray is not None:
        # one band: reduce it first, then copy it into three (a large scan never exists as
        # full-size RGB or as a full-size float array); same pixels as converting first
        rgb = _resized(gray, size).convert("RGB")
        conversion = f"{img.mode}{_DEPTH[img.mode]} -> RGB"
    else:
        rgb, conversion = to_rgb(img)
        rgb = _resized(rgb, size)
    repairs = [Repair(Reason.CONVERTED_TO_RGB, conversion)] if conversion else []
    if scale < 1.0:
        detail = f"{width}x{height} -> {size[0]}x{size[1]} (scale {scale:.6g})"
        repairs.append(Repair(Reason.DOWNSCALED, detail))
    return LoadedImage(rgb, source_format, (width, height), scale, repairs)


_DEPTH = {"L": ""} | {mode: " (16-bit)" for mode in _SIXTEEN_BIT}


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if img.size == size:
        return img
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _plain_gray(img: Image.Image) -> Image.Image | None:
    """An 8-bit gray version of a one-band 8- or 16-bit image without transparency, or None
    for every other mode (those go through :func:`to_rgb`)."""
    if "transparency" in img.info:
        return None
    if img.mode == "L":
        return img
    if img.mode in _SIXTEEN_BIT:
        return _sixteen_bit_gray(img)
    return None


def _sixteen_bit_gray(img: Image.Image) -> Image.Image:
    """16-bit gray -> 8-bit gray, a strip of rows at a time (no full-size float copy)."""
    width, height = img.size
    gray = np.empty((height, width), np.uint8)
    rows = max(1, (1 << 22) // max(1, width))  # about 4 million pixels per strip
    for top in range(0, height, rows):
        strip = img.crop((0, top, width, min(height, top + rows)))
        gray[top : top + strip.height] = _to_uint8(np.asarray(strip), bits=16)
    return Image.fromarray(gray)


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1 = as stored); a broken EXIF block counts as 1, not as a bad image."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def to_rgb(img: Image.Image) -> tuple[Image.Image, str]:
    """Convert any Pillow mode to 8-bit RGB; returns the image and what was done ("" if RGB).

    Transparent pixels are composited on white (a black background would invent dark
    shapes). High-bit-depth modes are scaled with numpy because ``convert`` clips them.
    """
    mode = img.mode
    if mode == "RGB":
        return img, ""
    has_alpha = (
        mode in _ALPHA_MODES
        or (mode in ("P", "L") and "transparency" in img.info)
        or (mode == "P" and img.palette is not None and img.palette.mode == "RGBA")
    )
    if has_alpha:
        return _on_white(img.convert("RGBA")), f"{mode} with transparency -> RGB on white"
    if mode in _SIXTEEN_BIT:
        return _sixteen_bit_gray(img).convert("RGB"), f"{mode} (16-bit) -> RGB"
    if mode in ("I", "F"):
        gray, how = _wide_to_uint8(np.asarray(img))
        return Image.fromarray(gray).convert("RGB"), f"{mode} ({how}) -> RGB"
    if mode == "1":
        return img.convert("L").convert("RGB"), "1 (1-bit) -> RGB"
    return img.convert("RGB"), f"{mode} -> RGB"


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_uint8(values: np.ndarray, *, bits: int) -> np.ndarray:
    """Map integers of ``bits`` bits onto 0..255 (65535 -> 255, not clipped)."""
    top = float(2**bits - 1)
    scaled = np.rint(values.astype(np.float64) * (255.0 / top))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _wide_to_uint8(values: np.ndarray) -> tuple[np.ndarray, str]:
    """Map 32-bit int or float pixels onto 0..255 using the range the data actually uses.

    Pillow reports such images as ``I``/``F`` whatever the real depth, so the depth is read
    from the values: 0..1 (float), 0..255, 0..65535 keep their meaning; anything else is
    stretched from its minimum to its maximum.
    """
    data = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if low >= 0 and high <= 1 and values.dtype.kind == "f":
        return np.clip(np.rint(data * 255.0), 0, 255).astype(np.uint8), "0..1 float"
    if low >= 0 and high <= 255:
        return np.rint(data).astype(np.uint8), "8-bit values"
    if low >= 0 and high <= 65535:
        return _to_uint8(data, bits=16), "16-bit values"
    span = high - low
    stretched = (data - low) * (255.0 / span) if span > 0 else np.zeros_like(data)
    return np.clip(np.rint(stretched), 0, 255).astype(np.uint8), f"range {low:g}..{high:g}"


def output_path(dst: Path, as_jpeg: bool) -> Path:
    """``dst`` with the suffix of the format written; the original suffix is kept in the name
    when it differs (``a.gif`` -> ``a.gif.png``) so two sources never share an output."""
    dst = Path(dst)
    wanted = (".jpg", ".jpeg") if as_jpeg else (".png",)
    if dst.suffix.lower() in wanted:
        return dst
    return dst.with_name(dst.name + wanted[0])


def normalize_image(src: Path, dst: Path, max_side: int | None = 1024) -> NormalizedImage:
    """Load ``src`` safely and write it as RGB next to ``dst`` (suffix chosen here).

    JPEG sources are written as JPEG (quality 95), all others as PNG, so no lossless image
    is degraded. The file is written under a temporary name and renamed, so an interrupted
    run never leaves half an image behind. Raises :class:`ImageProblem` for unusable input.
    """
    loaded = load_image(src, max_side)
    as_jpeg = loaded.source_format in JPEG_FORMATS
    final = output_path(dst, as_jpeg)
    if as_jpeg:
        atomic_file(final, lambda tmp: loaded.image.save(tmp, format="JPEG", quality=JPEG_QUALITY))
    else:
        atomic_file(final, lambda tmp: loaded.image.save(tmp, format="PNG"))
    width, height = loaded.image.size
    return NormalizedImage(
        path=final,
        width=width,
        height=height,
        scale=loaded.scale,
        repairs=tuple(loaded.repairs),
        original_width=loaded.original_size[0],
        original_height=loaded.original_size[1],
    )


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def valid_box(box: object) -> bool:
    """True for four finite numbers with x1 < x2 and y1 < y2."""
    if isinstance(box, str | bytes) or not isinstance(box, Sequence) or len(box) != 4:
        return False
    if not all(_is_number(v) and math.isfinite(float(v)) for v in box):
        return False
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1 < x2 and y1 < y2


def scale_box(box: Sequence[float], scale: float) -> list[float]:
    """Rescale a box by the factor an image was resized with."""
    return [float(v) * scale for v in box]


def clip_box(box: object, width: int, height: int) -> tuple[list[float] | None, Reason | None]:
    """Check a box against a ``width`` x ``height`` image.

    Returns ``(box, None)`` when it lies inside, ``(clipped, BOX_CLIPPED)`` when it sticks
    out, and ``(None, BOX_DISCARDED)`` when it is unusable: not four finite numbers, empty
    or inverted, or entirely outside the image.
    """
    if not valid_box(box):
        return None, Reason.BOX_DISCARDED
    x1, y1, x2, y2 = (float(v) for v in box)  # type: ignore[union-attr]
    right, bottom = float(width), float(height)
    clipped = [
        min(max(x1, 0.0), right),
        min(max(y1, 0.0), bottom),
        min(max(x2, 0.0), right),
        min(max(y2, 0.0), bottom),
    ]
    if clipped[0] >= clipped[2] or clipped[1] >= clipped[3]:
        return None, Reason.BOX_DISCARDED
    if clipped != [x1, y1, x2, y2]:
        return clipped, Reason.BOX_CLIPPED
    return clipped, None
