"""CLIP-style grounding and entailment on images whose answer is known.

The encoder here is a transparent stand-in whose embedding of an image is its mean colour
and of a text the colour it names; the annotator's job — propose, crop, score, pick,
calibrate — is what is under test.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from vpmel.vpwiki.boxes import iou
from vpmel.vpwiki.clip_annotator import ClipAnnotator, ProposalConfig, fit_calibration, objectness

COLOURS = {"red": (230, 30, 30), "blue": (30, 30, 230), "green": (30, 200, 30)}


OBJECT_AREA = 40 * 40  # every object drawn by _scene is a 40 x 40 square


class ColourEncoder:
    """Embeds an image as how well it frames an object of each colour (the share of the
    crop the colour fills times the share of the object the crop holds), plus a constant
    dimension so that a better framing gives a higher cosine similarity."""

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        rows = []
        for image in images:
            a = np.asarray(image, dtype=np.int32)
            row = []
            for rgb in COLOURS.values():
                n = (np.abs(a - np.array(rgb)).sum(axis=2) < 30).sum()
                row.append((n / (a.shape[0] * a.shape[1])) * min(1.0, n / OBJECT_AREA))
            rows.append([*row, 0.5])
        return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        names = list(COLOURS)
        x = torch.tensor([[float(n == t) for n in names] + [0.5] for t in texts])
        return torch.nn.functional.normalize(x, dim=1)


def _scene(objects: dict[str, tuple[int, int, int, int]]) -> Image.Image:
    rng = np.random.default_rng(0)
    noise = rng.integers(120, 137, size=(120, 160, 1)).repeat(3, axis=2).astype(np.uint8)
    img = Image.fromarray(noise)
    draw = ImageDraw.Draw(img)
    for name, box in objects.items():
        draw.rectangle(box, fill=COLOURS[name], outline=(0, 0, 0), width=2)
    return img


def test_grounding_finds_the_named_object() -> None:
    truth = {"red": (20, 30, 59, 69), "blue": (100, 40, 139, 79)}
    coarse_grid = {"top_k": 40, "overlap": 0.5, "context": 0.1}  # room for refinement
    ann = ClipAnnotator(ColourEncoder(), ProposalConfig(**coarse_grid, refine_steps=2))
    regions = ann.regions(_scene(truth))
    unrefined = ClipAnnotator(ColourEncoder(), ProposalConfig(**coarse_grid, refine_steps=0))
    coarse, _ = unrefined.ground(_scene(truth), regions, ann.phrases(["red", "blue"]))
    boxes, sims = ann.ground(_scene(truth), regions, ann.phrases(["red", "blue"]))
    for box, name in zip(boxes, ["red", "blue"], strict=True):
        assert iou(box, truth[name]) >= 0.5, (name, box)
        # the local search improves on the coarse window grid
        assert iou(box, truth[name]) > iou(coarse[["red", "blue"].index(name)], truth[name])
    assert (sims > 0.5).all()


def test_objectness_prefers_a_window_around_an_object() -> None:
    img = _scene({"green": (60, 40, 99, 79)})
    boxes = np.array([[55, 35, 105, 85], [0, 0, 50, 50], [110, 70, 160, 120]], dtype=float)
    score = objectness(img, boxes)
    assert score.argmax() == 0


def test_entailment_separates_present_from_absent_after_calibration() -> None:
    ann = ClipAnnotator(ColourEncoder(), ProposalConfig(top_k=40))
    pos, neg = [], []
    for shift in range(0, 40, 5):
        regions = ann.regions(_scene({"red": (10 + shift, 20, 49 + shift, 59)}))
        pos.append(ann.match_score(regions, ann.phrases(["red"]))[0])
        neg.append(ann.match_score(regions, ann.phrases(["blue"]))[0])
    ann.calibration = fit_calibration(np.array(pos), np.array(neg))
    assert ann.calibration[0] > 0
    assert (ann.entail_probability(np.array(pos)) > 0.5).all()
    assert (ann.entail_probability(np.array(neg)) < 0.5).all()


def test_batched_grounding_equals_one_image_at_a_time() -> None:
    scenes = [
        _scene({"red": (20, 30, 59, 69), "blue": (100, 40, 139, 79)}),
        _scene({"green": (70, 20, 109, 59)}),
        _scene({"blue": (5, 60, 44, 99), "green": (90, 50, 129, 89)}),
    ]
    phrases = [("red", 0), ("blue", 0), ("green", 1), ("blue", 2), ("green", 2)]
    ann = ClipAnnotator(ColourEncoder(), ProposalConfig(top_k=30))
    regions = ann.regions_many(scenes)
    emb = ann.phrases([t for t, _ in phrases])
    boxes, sims = ann.ground_many(scenes, regions, emb, [i for _, i in phrases])
    for p, (text, i) in enumerate(phrases):
        one = ann.regions(scenes[i])
        np.testing.assert_allclose(one.boxes, regions[i].boxes)
        b, s = ann.ground(scenes[i], one, ann.phrases([text]))
        np.testing.assert_allclose(boxes[p], b[0])
        assert abs(sims[p] - s[0]) < 1e-5


class CountingEncoder(ColourEncoder):
    """ColourEncoder that counts the images it is asked to encode."""

    def __init__(self) -> None:
        self.images = 0

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        self.images += len(images)
        return super().encode_images(images)


def _requests(tmp_path, scenes_and_texts):  # noqa: ANN001, ANN202
    from vpmel.vpwiki.annotation_backend import Request

    out = []
    for i, (objects, texts) in enumerate(scenes_and_texts):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _scene(objects).save(path)
        out += [Request(path, t) for t in texts]
    return out


def test_grounding_reuses_the_proposal_embeddings_entailment_saved(tmp_path) -> None:  # noqa: ANN001
    from vpmel.vpwiki.annotate import ClipBackend
    from vpmel.vpwiki.clip_annotator import (
        load_region_embeddings,
        region_key,
        save_region_embeddings,
    )

    requests = _requests(
        tmp_path,
        [
            ({"red": (20, 30, 59, 69), "blue": (100, 40, 139, 79)}, ["red", "blue"]),
            ({"green": (70, 20, 109, 59)}, ["green"]),
            ({"blue": (5, 60, 44, 99)}, ["blue"]),
        ],
    )
    cfg = ProposalConfig(top_k=20)
    first = ClipBackend(ClipAnnotator(CountingEncoder(), cfg))
    first.entail(requests)
    key = region_key("enc-1", cfg)
    path = tmp_path / "regions.safetensors"
    save_region_embeddings(path, first.region_embeddings(tmp_path), key)

    encoder, baseline = CountingEncoder(), CountingEncoder()
    second = ClipBackend(ClipAnnotator(encoder, cfg))
    second.use_region_embeddings(load_region_embeddings(path, key), tmp_path)
    boxes, scores = second.ground(requests)
    fresh_boxes, fresh_scores = ClipBackend(ClipAnnotator(baseline, cfg)).ground(requests)
    np.testing.assert_array_equal(boxes, fresh_boxes)
    np.testing.assert_array_equal(scores, fresh_scores)
    assert second.reused == 3
    # the three images' proposals (top_k windows + the whole image) were not encoded again;
    # only the refinement's moved boxes were
    assert baseline.images - encoder.images == 3 * (cfg.top_k + 1)
    assert encoder.images > 0


def test_saved_proposal_embeddings_are_refused_for_another_encoder_or_windows(tmp_path) -> None:  # noqa: ANN001
    from vpmel.vpwiki.annotate import ClipBackend
    from vpmel.vpwiki.clip_annotator import (
        load_region_embeddings,
        region_key,
        save_region_embeddings,
    )

    requests = _requests(tmp_path, [({"red": (20, 30, 59, 69)}, ["red"])])
    cfg = ProposalConfig(top_k=10)
    backend = ClipBackend(ClipAnnotator(ColourEncoder(), cfg))
    backend.entail(requests + _requests(tmp_path / "b", [({"blue": (5, 60, 44, 99)}, ["blue"])]))
    path = tmp_path / "regions.safetensors"
    save_region_embeddings(path, backend.region_embeddings(tmp_path), region_key("enc-1", cfg))
    loaded = load_region_embeddings(path, region_key("enc-1", cfg))
    assert sorted(loaded) == ["b/images/0.png", "images/0.png"]
    boxes, embeddings = loaded["images/0.png"]
    assert boxes.shape == (cfg.top_k + 1, 4) and embeddings.shape == (cfg.top_k + 1, 4)
    assert load_region_embeddings(path, region_key("enc-2", cfg)) is None
    assert load_region_embeddings(path, region_key("enc-1", ProposalConfig(top_k=12))) is None
    assert (
        load_region_embeddings(tmp_path / "missing.safetensors", region_key("enc-1", cfg)) is None
    )
    # settings that only change how a box is chosen, not the crops, keep the embeddings
    assert load_region_embeddings(
        path, region_key("enc-1", ProposalConfig(top_k=10, refine_steps=0))
    )


def test_saved_proposal_embeddings_are_the_same_bytes_every_time(tmp_path) -> None:  # noqa: ANN001
    from vpmel.vpwiki.annotate import ClipBackend
    from vpmel.vpwiki.clip_annotator import region_key, save_region_embeddings

    requests = _requests(tmp_path, [({"red": (20, 30, 59, 69)}, ["red"])])
    cfg = ProposalConfig(top_k=10)
    backend = ClipBackend(ClipAnnotator(ColourEncoder(), cfg))
    backend.entail(requests + _requests(tmp_path / "b", [({"blue": (5, 60, 44, 99)}, ["blue"])]))
    files = [tmp_path / f"regions_{i}.safetensors" for i in range(10)]
    for path in files:
        save_region_embeddings(path, backend.region_embeddings(tmp_path), region_key("e", cfg))
    assert len({path.read_bytes() for path in files}) == 1
