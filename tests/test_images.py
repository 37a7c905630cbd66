"""vpmel.data.images: safe loading, conversion to RGB, downscaling, paths and boxes."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vpmel.data.images import (
    ImageProblem,
    clip_box,
    load_image,
    normalize_image,
    resolve_inside,
    scale_box,
)
from vpmel.data.quality import Reason

# ----------------------------------------------------------------------------- paths


def test_resolve_inside_accepts_paths_that_stay_inside(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    assert resolve_inside(tmp_path, "img/a.jpg") == (tmp_path / "img" / "a.jpg").resolve()
    assert resolve_inside(tmp_path, "img/../b.jpg") == (tmp_path / "b.jpg").resolve()
    assert resolve_inside(tmp_path, "img\\c.jpg") == (tmp_path / "img" / "c.jpg").resolve()


@pytest.mark.parametrize(
    "rel", ["../escape.jpg", "img/../../escape.jpg", "/etc/passwd", "..\\escape.jpg", "C:\\x.jpg"]
)
def test_resolve_inside_refuses_escapes(tmp_path: Path, rel: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ImageProblem) as info:
        resolve_inside(root, rel)
    assert info.value.reason == Reason.PATH_ESCAPES_ROOT


def test_resolve_inside_refuses_symlink_out_of_root(tmp_path: Path, make_image) -> None:
    outside = make_image(tmp_path / "secret.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.jpg").symlink_to(outside)
    with pytest.raises(ImageProblem) as info:
        resolve_inside(root, "link.jpg")
    assert info.value.reason == Reason.PATH_ESCAPES_ROOT


# ----------------------------------------------------------------------------- loading


def problem(path: Path, **kwargs) -> ImageProblem:
    with pytest.raises(ImageProblem) as info:
        load_image(path, **kwargs)
    return info.value


def test_missing_truncated_and_fake_images_are_problems(tmp_path: Path, make_image) -> None:
    assert problem(tmp_path / "nope.jpg").reason == Reason.MISSING_IMAGE
    assert problem(make_image(tmp_path / "t.jpg", "truncated")).reason == Reason.UNREADABLE_IMAGE
    assert problem(make_image(tmp_path / "h.jpg", "text")).reason == Reason.UNREADABLE_IMAGE
    (tmp_path / "dir.jpg").mkdir()
    assert problem(tmp_path / "dir.jpg").reason == Reason.MISSING_IMAGE


# a 1200-pixel image is over twice a limit of 500 (Pillow raises) and over a limit of 1000
# (Pillow only warns): both are refused
@pytest.mark.parametrize("limit", [500, 1000])
def test_decompression_bombs_are_refused(tmp_path, make_image, monkeypatch, limit) -> None:
    path = make_image(tmp_path / "bomb.png", "png", size=(40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    assert problem(path).reason == Reason.IMAGE_TOO_LARGE
    monkeypatch.undo()
    assert load_image(path).image.size == (40, 30)  # the limit itself is untouched


@pytest.mark.parametrize(
    ("kind", "mode"),
    [
        ("cmyk", "CMYK"),
        ("gray", "L"),
        ("la", "LA"),
        ("rgba", "RGBA"),
        ("palette", "P"),
        ("one_bit", "1"),
        ("i16", "I;16"),
    ],
)
def test_every_mode_becomes_rgb_with_a_repair(tmp_path, make_image, kind, mode) -> None:
    path = make_image(tmp_path / f"{kind}.img", kind)
    assert Image.open(path).mode == mode
    loaded = load_image(path)
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (40, 30)
    assert loaded.scale == 1.0
    assert [r.reason for r in loaded.repairs] == [Reason.CONVERTED_TO_RGB]
    assert loaded.repairs[0].detail.startswith(mode)


def test_rgb_jpeg_needs_no_repair(tmp_path, make_image) -> None:
    loaded = load_image(make_image(tmp_path / "a.jpg"))
    assert loaded.repairs == [] and loaded.image.mode == "RGB" and loaded.source_format == "JPEG"


def test_transparency_is_composited_on_white(tmp_path, make_image) -> None:
    for kind, opaque in (("rgba", (0, 0, 255)), ("palette", (255, 0, 0))):
        pixels = np.asarray(load_image(make_image(tmp_path / f"{kind}.png", kind)).image)
        assert tuple(pixels[0, 0]) == opaque
        assert tuple(pixels[0, -1]) == (255, 255, 255)
    la = np.asarray(load_image(make_image(tmp_path / "la.png", "la")).image)
    assert (la == 255).all()


def test_cmyk_colours_survive(tmp_path, make_image) -> None:
    pixels = np.asarray(load_image(make_image(tmp_path / "c.jpg", "cmyk")).image).astype(int)
    red, green, blue = pixels.reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 60 and blue < 60  # C=0 M=Y=255 is red


def test_sixteen_bit_is_scaled_not_saturated(tmp_path, make_image) -> None:
    pixels = np.asarray(load_image(make_image(tmp_path / "d.png", "i16")).image)
    gray = pixels[..., 0].astype(int)
    assert (pixels[..., 0] == pixels[..., 2]).all()
    assert gray[0, 0] == 0 and gray[0, -1] == 255
    assert abs(gray.mean() - 127.5) < 2  # a 0..65535 ramp averages mid-gray


def test_sixteen_bit_big_endian_and_wide_modes(tmp_path) -> None:
    values = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    samples = {
        "I;16B": Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes()),
        "I": Image.fromarray(values.astype(np.int32)),
        "F": Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)),
    }
    expected = {"I;16B": [0, 128, 255, 4], "I": [0, 128, 255, 4], "F": [0, 128, 255, 64]}
    for mode, img in samples.items():
        assert img.mode == mode
        path = tmp_path / f"{mode.replace(';', '')}.tif"
        img.save(path, format="TIFF")
        loaded = load_image(path)
        assert np.asarray(loaded.image)[0, :, 0].tolist() == expected[mode], mode
        assert loaded.repairs[0].reason == Reason.CONVERTED_TO_RGB


def test_exif_orientation_is_applied(tmp_path) -> None:
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", format="JPEG", exif=exif)
    loaded = load_image(tmp_path / "r.jpg", max_side=20)
    assert loaded.original_size == (20, 40)
    assert loaded.image.size == (10, 20)
    assert loaded.scale == 0.5


def test_twenty_megapixel_photo_is_downscaled(tmp_path, big_jpeg) -> None:
    src = shutil.copy(big_jpeg, tmp_path / "photo.jpg")
    result = normalize_image(Path(src), tmp_path / "out" / "photo.jpg")
    assert (result.width, result.height) == (1024, 840)
    assert result.scale == pytest.approx(1024 / 5000)
    assert (result.original_width, result.original_height) == (5000, 4100)
    assert [r.reason for r in result.repairs] == [Reason.DOWNSCALED]
    assert "5000x4100 -> 1024x840" in result.repairs[0].detail
    assert result.path == tmp_path / "out" / "photo.jpg"
    with Image.open(result.path) as written:
        assert written.format == "JPEG" and written.size == (1024, 840)
        assert written.getpixel((512, 420))[0] > 200  # the red rectangle is still there


def test_max_side_is_a_parameter(tmp_path, make_image) -> None:
    loaded = load_image(make_image(tmp_path / "a.png", "png", size=(100, 50)), max_side=10)
    assert loaded.image.size == (10, 5) and loaded.scale == 0.1
    assert load_image(tmp_path / "a.png", max_side=None).image.size == (100, 50)


def test_normalize_chooses_the_output_format(tmp_path, make_image) -> None:
    png = normalize_image(make_image(tmp_path / "a.png", "rgba"), tmp_path / "o" / "a.png")
    assert png.path == tmp_path / "o" / "a.png"
    assert Image.open(png.path).format == "PNG"
    # a PNG named .jpg keeps its name and gains the suffix of what is written
    odd = normalize_image(make_image(tmp_path / "b.jpg", "gray"), tmp_path / "o" / "b.jpg")
    assert odd.path == tmp_path / "o" / "b.jpg.png"
    jpg = normalize_image(make_image(tmp_path / "c.jpeg", "cmyk"), tmp_path / "o" / "c.jpeg")
    assert jpg.path == tmp_path / "o" / "c.jpeg"
    assert Image.open(jpg.path).mode == "RGB"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.png", "b.jpg.png", "c.jpeg"]


def test_normalize_writes_nothing_for_a_bad_image(tmp_path, make_image) -> None:
    with pytest.raises(ImageProblem):
        normalize_image(make_image(tmp_path / "t.jpg", "truncated"), tmp_path / "o" / "t.jpg")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- boxes


def test_scale_box() -> None:
    assert scale_box([10, 20, 30, 40], 0.5) == [5.0, 10.0, 15.0, 20.0]


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ([10, 10, 50, 40], ([10.0, 10.0, 50.0, 40.0], None)),
        ((0, 0, 100, 80), ([0.0, 0.0, 100.0, 80.0], None)),
        ([-10, 5, 30, 300], ([0.0, 5.0, 30.0, 80.0], Reason.BOX_CLIPPED)),
        ([90, 70, 120, 90], ([90.0, 70.0, 100.0, 80.0], Reason.BOX_CLIPPED)),
        ([200, 200, 300, 300], (None, Reason.BOX_DISCARDED)),
        ([-50, 10, -5, 20], (None, Reason.BOX_DISCARDED)),
        ([10, 10, 10, 40], (None, Reason.BOX_DISCARDED)),
        ([50, 10, 10, 40], (None, Reason.BOX_DISCARDED)),
        ([10, 10, math.nan, 40], (None, Reason.BOX_DISCARDED)),
        ([10, 10, math.inf, 40], (None, Reason.BOX_DISCARDED)),
        ([10, 10, 40], (None, Reason.BOX_DISCARDED)),
        (["10", 10, 40, 40], (None, Reason.BOX_DISCARDED)),
        ([True, 10, 40, 40], (None, Reason.BOX_DISCARDED)),
        ("0,0,1,1", (None, Reason.BOX_DISCARDED)),
        (None, (None, Reason.BOX_DISCARDED)),
    ],
)
def test_clip_box(box, expected) -> None:
    assert clip_box(box, 100, 80) == expected
