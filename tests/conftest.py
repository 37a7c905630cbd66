"""Shared test helpers: small images of every kind real datasets contain; a six-entity KB of
coloured shapes; one torch thread."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vpmel.data.schema import KB_FILE, KB_SCHEMA, write_table


def write_image(path: Path, kind: str = "rgb", size: tuple[int, int] = (40, 30)) -> Path:
    """Write an image of ``kind`` to ``path`` (format from the kind, not the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if kind == "rgb":  # JPEG
        Image.new("RGB", size, (200, 30, 30)).save(path, format="JPEG")
    elif kind == "png":
        Image.new("RGB", size, (30, 200, 30)).save(path, format="PNG")
    elif kind == "cmyk":
        Image.new("CMYK", size, (0, 255, 255, 0)).save(path, format="JPEG")
    elif kind == "gray":
        Image.new("L", size, 128).save(path, format="PNG")
    elif kind == "la":
        Image.new("LA", size, (0, 0)).save(path, format="PNG")
    elif kind == "rgba":
        rgba = Image.new("RGBA", size, (0, 0, 0, 0))  # transparent black
        ImageDraw.Draw(rgba).rectangle([0, 0, w // 2 - 1, h - 1], fill=(0, 0, 255, 255))
        rgba.save(path, format="PNG")
    elif kind == "palette":
        pal = Image.new("P", size, 0)
        pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        ImageDraw.Draw(pal).rectangle([0, 0, w // 2 - 1, h - 1], fill=1)
        pal.save(path, format="PNG", transparency=0)  # index 0 (black) is transparent
    elif kind == "one_bit":
        Image.new("1", size, 1).save(path, format="PNG")
    elif kind == "i16":  # 16-bit grayscale PNG, a horizontal ramp 0..65535
        ramp = np.linspace(0, 65535, w).round().astype(np.uint16)
        Image.fromarray(np.tile(ramp, (h, 1))).save(path, format="PNG")
    elif kind == "truncated":
        write_image(path, "rgb", size)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "text":
        path.write_text("<html>404 not found</html>")
    elif kind == "big":  # 5000x4100 = 20.5 MP photo
        big = Image.new("RGB", (5000, 4100), (40, 120, 200))
        ImageDraw.Draw(big).rectangle([1000, 820, 4000, 3280], fill=(250, 20, 20))
        big.save(path, format="JPEG", quality=80)
    else:
        raise ValueError(kind)
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    return write_image


@pytest.fixture(scope="session")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 5000x4100 JPEG per session (writing it takes a moment); tests copy it."""
    return write_image(tmp_path_factory.mktemp("big") / "big.jpg", "big")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest, and do not stall when cores are shared, on one thread.
    Modules with tiny torch models use it: ``pytestmark = pytest.mark.usefixtures(...)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# six KB entities, each a coloured shape on white (the demo models' smallest world)
KB_SHAPES = [
    ("red circle", (220, 30, 30), "ellipse"),
    ("blue square", (30, 30, 220), "rectangle"),
    ("green circle", (30, 180, 30), "ellipse"),
    ("yellow square", (230, 210, 20), "rectangle"),
    ("black circle", (10, 10, 10), "ellipse"),
    ("purple square", (140, 30, 160), "rectangle"),
]


@pytest.fixture(scope="module")
def kb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder with a six-entity KB of coloured shapes on white."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "images" / "kb").mkdir(parents=True)
    rows = []
    for k, (name, colour, shape) in enumerate(KB_SHAPES):
        image = Image.new("RGB", (40, 40), (255, 255, 255))
        draw = getattr(ImageDraw.Draw(image), shape)
        draw([6, 6, 33, 33], fill=colour, outline=(0, 0, 0))
        rel = f"images/kb/Q{k}.png"
        image.save(root / rel)
        rows.append(
            {
                "qid": f"Q{k}",
                "name": name,
                "type": "Misc",
                "description": f"a {name} drawn on white",
                "images": [rel],
            }
        )
    write_table(rows, KB_SCHEMA, root / KB_FILE)
    return root
