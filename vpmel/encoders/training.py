"""Contrastive training of the demo image-text encoder on the knowledge base.

Each step samples distinct KB entities and renders one *view* of each: the entity's image
cut out of its plain background, scaled, rotated and pasted onto a freshly drawn cluttered
background (the demo world's own background generator), seen through a loose crop with
random padding on each side — like the crops a grounder scores — and sometimes with a
distractor entity partly in view; a share of views is the plain encyclopedia-style entity
image instead. Each view is paired with a text: the entity name, sometimes
``"{name} {type}"`` (the Detective-VLM answer format), sometimes ``"{name}. {description}"``.
The loss is the symmetric InfoNCE of CLIP with in-batch negatives, where entries of the same
entity are never each other's negatives.

A share of the views (``prompted_rate``) teaches what a visual prompt means, the way CLIP
learned it from web images (Shtedritski et al., cited by the paper): a whole scene of 2-5 KB
entities composed by the demo world's scene generator (its own seed stream, so never a scene,
caption or mention of VPWiki), with the red prompt drawn around one of them, paired with
that entity's text. Which object is boxed is uniform, so only the box tells which entity the
text names. Its evaluation (:func:`prompt_following`) asks the same of held-out scenes:
retrieval with the box, without it, and with the box moved onto another object.

The text tower is frozen, so the pooled text features of every (entity, text variant) are
computed once and only the projections and the vision tower are trained. Everything is
deterministic from ``TrainConfig.seed`` on CPU (numpy ``Generator`` streams for views,
``torch.manual_seed`` for the weights).

Evaluation renders fresh views from a different seed and measures image -> text retrieval
(top-1/top-5 against the names of the whole KB), for the trained model and for the same
model at its random initialisation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from scipy import ndimage

from vpmel.data.images import open_rgb
from vpmel.encoders.model import DemoEncoderConfig, ImageTextEncoder, demo_encoder
from vpmel.prompts import PromptStyle, draw_prompt
from vpmel.scenes import alpha_bbox, compose_scene, draw_background, fit, place_squares
from vpmel.schedules import cosine_decay

TEXT_VARIANTS = ("name", "name_type", "name_description")
WHITE_LEVEL = 242  # an entity image's background: border-connected pixels this white or more
CUTOUT_SIZES = (32, 64, 96)  # each cutout is pre-scaled once to these longest sides


@dataclass(frozen=True)
class ViewConfig:
    """How training and evaluation views are drawn (sizes in demo-scene pixels)."""

    scene_size: tuple[int, int] = (160, 120)  # a demo scene; object sizes are shares of
    # its shorter side, and backgrounds are drawn at (at least) this size, then cropped
    object_scale: tuple[float, float] = (0.3, 0.6)  # as the demo world's scenes
    max_rotation: float = 15.0
    padding: tuple[float, float] = (-0.05, 0.5)  # per crop side, as a share of the object side
    distractor_rate: float = 0.5  # P(another entity partly in view)
    distractor_overlap: float = 0.35  # at most this share of the target box covered
    plain_rate: float = 0.1  # P(the entity image on white instead of a scene crop)
    text_rates: tuple[float, float, float] = (0.6, 0.2, 0.2)  # name / name type / name. desc.
    prompted_rate: float = 0.0  # P(a whole prompted scene: the entity boxed among others)
    prompted_objects: tuple[int, int] = (2, 5)  # objects per prompted scene (inclusive)
    prompt_pair_rate: float = 0.0  # P(a prompted scene is also shown boxed on a batch mate)
    scene_negatives: float = 0.0  # weight of the in-scene loss (see scene_loss); 0: none
    occlusion_max: float = 0.35  # of each object's square, as the demo world's scenes
    prompt_jitter: float = 0.1  # box sides moved by up to this share (automatic boxes are loose)
    prompt: PromptStyle = field(default_factory=PromptStyle)


@dataclass(frozen=True)
class PromptPhase:
    """A second training phase that teaches the box to a model that already recognises
    entities (the ``encoders.train.prompt_phase`` params; ``steps: 0`` skips it).

    CLIP knew what objects look like before anyone asked it what a red circle means; a
    from-scratch demo encoder that meets boxed scenes from its first step learns neither
    well in a CPU budget (at 800 steps it recognises 1.5% of crops and picks the boxed
    object of a scene at chance). This phase continues from the first phase's weights with a
    fresh optimizer, mostly prompted scenes and the in-scene loss (:func:`scene_loss`), on
    its own seed stream (still the encoder's: never a VPWiki scene, caption or mention)."""

    steps: int = 0
    lr: float = 5e-4
    warmup_steps: int = 50
    prompted_rate: float = 0.6
    scene_negatives: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (the ``encoders.train`` params)."""

    seed: int = 0
    steps: int = 780
    batch_size: int = 96
    lr: float = 2e-3
    min_lr_ratio: float = 0.05  # cosine decay down to lr * min_lr_ratio
    warmup_steps: int = 65
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    max_minutes: float | None = None  # stop early after this long (breaks determinism)
    background_bank: int = 512  # backgrounds drawn once for training (see Backgrounds)
    prefetch: bool = True  # render the next batch in a thread while this one trains
    device: str = "cpu"
    eval_seed: int = 1_000_003  # fresh views for the held-out evaluation
    eval_views_per_entity: int = 1
    probe_scenes: int = 400  # held-out prompted scenes for prompt_following (0: none)
    views: ViewConfig = field(default_factory=ViewConfig)
    prompt_phase: PromptPhase = field(default_factory=PromptPhase)


# ---------------------------------------------------------------------------- entity images


def cutout(image: Image.Image, white_level: int = WHITE_LEVEL) -> Image.Image:
    """The object of an entity image as RGBA, cropped to it.

    The background is the near-white region connected to the image border (white parts
    inside the object stay opaque). A photo without such a background stays a rectangle.
    """
    rgb = np.asarray(image.convert("RGB"))
    white = (rgb >= white_level).all(axis=2)
    labels, _ = ndimage.label(white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, border[border > 0])
    alpha = np.where(background, 0, 255).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    box = alpha_bbox(rgba)
    return rgba.crop(box) if box else rgba


@dataclass
class EntityImages:
    """Each KB entity's cutout, pre-scaled to a few sizes (None: the entity has no image)."""

    plain: list[Image.Image | None]  # the original entity image (RGB)
    scaled: list[dict[int, Image.Image] | None]

    @classmethod
    def from_kb(cls, kb: pd.DataFrame, root: Path) -> EntityImages:
        plain: list[Image.Image | None] = []
        scaled: list[dict[int, Image.Image] | None] = []
        for images in kb["images"]:
            if len(images) == 0:
                plain.append(None)
                scaled.append(None)
                continue
            rgb = open_rgb(Path(root) / images[0])
            obj = cutout(rgb)
            plain.append(rgb)
            scaled.append({s: fit(obj, s) for s in CUTOUT_SIZES})
        return cls(plain, scaled)

    def size(self, index: int) -> tuple[int, int]:
        """Size of entity ``index``'s largest pre-scaled cutout."""
        copies = self.scaled[index]
        assert copies is not None
        return copies[CUTOUT_SIZES[-1]].size

    def has_image(self) -> np.ndarray:
        return np.array([p is not None for p in self.plain])

    def at(self, index: int, longest: int) -> Image.Image:
        """Entity ``index``'s cutout with longer side ``longest`` (from the nearest larger
        pre-scaled copy, so each call resizes a small image once)."""
        copies = self.scaled[index]
        assert copies is not None
        source = next((copies[s] for s in CUTOUT_SIZES if s >= longest), copies[CUTOUT_SIZES[-1]])
        w, h = source.size
        scale = longest / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return source.resize(size, Image.Resampling.BILINEAR)


# ---------------------------------------------------------------------------- views


def _posed(
    rng: np.random.Generator, images: EntityImages, index: int, cfg: ViewConfig
) -> Image.Image:
    """Entity ``index`` rotated at random and scaled so that its rotated box's longer side
    is a random scene size (as the demo world places objects), cropped to its pixels."""
    side = max(8, round(rng.uniform(*cfg.object_scale) * min(cfg.scene_size)))
    angle = float(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
    w, h = images.size(index)
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    rotated = max(w * c + h * s, w * s + h * c) / max(w, h)  # growth of the longer side
    glyph = images.at(index, max(4, round(side / rotated)))
    if angle:
        glyph = glyph.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
        box = glyph.getchannel("A").getbbox()
        glyph = glyph.crop(box) if box else glyph
    return glyph


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Share of box ``a``'s area that box ``b`` covers."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    area = (a[2] - a[0]) * (a[3] - a[1])
    return max(0, w) * max(0, h) / max(1, area)


def render_view(
    rng: np.random.Generator,
    images: EntityImages,
    backgrounds: Backgrounds,
    index: int,
    distractor: int | None,
    cfg: ViewConfig,
) -> Image.Image:
    """One view of entity ``index`` (see the module docstring); ``distractor`` is another
    entity partly in view, or None."""
    if rng.random() < cfg.plain_rate:
        return _plain_view(rng, images, index)
    glyph = _posed(rng, images, index, cfg)
    gw, gh = glyph.size
    side = max(gw, gh)
    left, top, right, bottom = (round(p * side) for p in rng.uniform(*cfg.padding, size=4))
    width, height = max(8, gw + left + right), max(8, gh + top + bottom)
    canvas = backgrounds.window(rng, width, height)
    target = (left, top, left + gw, top + gh)
    over: tuple[Image.Image, tuple[int, int]] | None = None
    if distractor is not None:
        other = _posed(rng, images, distractor, cfg)
        ow, oh = other.size
        for _ in range(10):  # a place partly inside the crop, not hiding too much of the target
            ox = int(rng.integers(-ow * 2 // 3, max(-ow * 2 // 3 + 1, width - ow // 3)))
            oy = int(rng.integers(-oh * 2 // 3, max(-oh * 2 // 3 + 1, height - oh // 3)))
            if _overlap(target, (ox, oy, ox + ow, oy + oh)) <= cfg.distractor_overlap:
                if rng.random() < 0.5:
                    over = (other, (ox, oy))
                else:
                    canvas.paste(other, (ox, oy), other)
                break
    canvas.paste(glyph, (left, top), glyph)
    if over is not None:
        canvas.paste(over[0], over[1], over[0])
    return canvas


def prompted_scene(
    rng: np.random.Generator,
    images: EntityImages,
    objects: Sequence[int],
    cfg: ViewConfig,
) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """A demo-world scene of ``objects`` (KB entity indices, in draw order), unprompted, and
    each object's box as placed."""
    width, height = cfg.scene_size
    squares = place_squares(
        rng, len(objects), width, height, cfg.object_scale, cfg.occlusion_max, cfg.max_rotation
    )
    glyphs = [images.at(i, max(sq.size, 8)) for i, sq in zip(objects, squares, strict=True)]
    image, boxes = compose_scene(rng, width, height, glyphs, squares)
    return image, list(boxes)


def jittered(
    rng: np.random.Generator, box: Sequence[float], jitter: float, size: tuple[int, int]
) -> list[float]:
    """``box`` with each side moved by up to ``jitter`` of the box's side, kept in the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    d = rng.uniform(-jitter, jitter, size=4) * np.array([w, h, w, h])
    out = [x1 + d[0], y1 + d[1], x2 + d[2], y2 + d[3]]
    out = [min(max(v, 0.0), float(size[i % 2])) for i, v in enumerate(out)]
    if out[2] - out[0] < 2 or out[3] - out[1] < 2:
        return [x1, y1, x2, y2]
    return out


def render_prompted(
    rng: np.random.Generator,
    images: EntityImages,
    pool: np.ndarray,
    index: int,
    cfg: ViewConfig,
    partner: int | None = None,
) -> tuple[list[Image.Image], list[int]]:
    """Entity ``index`` among other entities of ``pool`` in a composed scene, marked by the
    visual prompt (its reference box, jittered); its place in the draw order is random.
    Returns the prompted view(s) and the scene's objects (KB indices).

    With a ``partner`` entity, the partner is placed in the same scene and a second view of
    that one scene is returned with the box on the partner instead: two images that differ
    only by where the box is, paired with two different texts of the same batch, so the
    contrastive loss can only be met by reading the box."""
    targets = [index] if partner is None else [index, partner]
    low, high = cfg.prompted_objects
    objects: list[int] = []
    for _ in range(max(int(rng.integers(low, high + 1)), len(targets)) - len(targets)):
        other = int(pool[rng.integers(len(pool))])
        if other not in targets and other not in objects:
            objects.append(other)
    for t in targets:
        objects.insert(int(rng.integers(len(objects) + 1)), t)
    image, boxes = prompted_scene(rng, images, objects, cfg)
    views = [
        draw_prompt(
            image, jittered(rng, boxes[objects.index(t)], cfg.prompt_jitter, image.size), cfg.prompt
        )
        for t in targets
    ]
    return views, objects


class Backgrounds:
    """Cluttered backgrounds from the demo world's generator.

    With ``bank > 0``, that many scene-sized backgrounds are drawn once and each request is
    a random window of one of them, randomly flipped and with its colour channels permuted
    (drawing a fresh background is most of the cost of a view). With ``bank == 0`` every
    request draws a fresh one (used for held-out views).
    """

    def __init__(self, rng: np.random.Generator, scene: tuple[int, int], bank: int) -> None:
        self.scene = scene
        self.bank = [np.asarray(self._draw(rng, *scene)) for _ in range(bank)]

    @staticmethod
    def _draw(rng: np.random.Generator, width: int, height: int) -> Image.Image:
        return draw_background(rng, width, height).convert("RGB")

    def window(self, rng: np.random.Generator, width: int, height: int) -> Image.Image:
        sw, sh = max(width, self.scene[0]), max(height, self.scene[1])
        fresh = not self.bank or sw > self.scene[0] or sh > self.scene[1]
        full = np.asarray(self._draw(rng, sw, sh)) if fresh else self._pick(rng)
        x, y = int(rng.integers(0, sw - width + 1)), int(rng.integers(0, sh - height + 1))
        part = full[y : y + height, x : x + width]
        if not fresh:  # vary a banked background: colour channels and orientation
            part = part[:, :, rng.permutation(3)]
            part = part[:, ::-1] if rng.random() < 0.5 else part
            part = part[::-1] if rng.random() < 0.5 else part
        return Image.fromarray(np.ascontiguousarray(part))

    def _pick(self, rng: np.random.Generator) -> np.ndarray:
        return self.bank[int(rng.integers(len(self.bank)))]


def _plain_view(rng: np.random.Generator, images: EntityImages, index: int) -> Image.Image:
    """The encyclopedia-style entity image, with a small random margin change."""
    plain = images.plain[index]
    assert plain is not None
    w, h = plain.size
    left, top, right, bottom = (round(p * max(w, h)) for p in rng.uniform(-0.05, 0.1, size=4))
    canvas = Image.new("RGB", (w + left + right, h + top + bottom), (255, 255, 255))
    canvas.paste(plain, (left, top))
    return canvas


def entity_texts(kb: pd.DataFrame) -> list[list[str]]:
    """Per entity, its text in each of TEXT_VARIANTS."""
    out = []
    for name, etype, desc in zip(kb["name"], kb["type"], kb["description"], strict=True):
        typed = f"{name} {etype}" if isinstance(etype, str) and etype else name
        described = f"{name}. {desc}" if isinstance(desc, str) and desc else name
        out.append([name, typed, described])
    return out


class ViewSampler:
    """Batches of (entity indices, views, text variant indices), deterministic from a seed.

    Entities are drawn from seeded permutations of those with an image, so every entity gets
    the same number of views and a batch never holds one entity twice.
    """

    def __init__(
        self, images: EntityImages, cfg: ViewConfig, seed: int, background_bank: int
    ) -> None:
        self.images = images
        self.cfg = cfg
        self.rng = np.random.default_rng([seed, 7])
        self.backgrounds = Backgrounds(self.rng, cfg.scene_size, background_bank)
        self.pool = np.flatnonzero(images.has_image())
        if len(self.pool) < 2:
            raise ValueError("need at least two KB entities with an image to train the encoder")
        self._order: list[int] = []

    def _next_entities(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if not self._order:
                self._order = [int(i) for i in self.pool[self.rng.permutation(len(self.pool))]]
            take = [i for i in self._order[: n - len(out)] if i not in out]
            self._order = self._order[n - len(out) :]
            out.extend(take)
        return out

    def views(self, entities: Sequence[int]) -> list[Image.Image]:
        """One view of each entity (a distractor is any other entity with an image); with
        ``prompt_pair_rate``, a prompted entity may share its scene with the next entity of
        the batch, boxed in turn (see :func:`render_prompted`)."""
        return self.views_and_scenes(entities)[0]

    def views_and_scenes(
        self, entities: Sequence[int]
    ) -> tuple[list[Image.Image], list[list[int]]]:
        """:meth:`views`, and for each view the other objects of its scene when it is a
        prompted scene (``[]`` for a crop or a plain image)."""
        cfg = self.cfg
        out: list[Image.Image | None] = [None] * len(entities)
        mates: list[list[int]] = [[] for _ in entities]
        for k, index in enumerate(entities):
            if out[k] is not None:
                continue
            if cfg.prompted_rate > 0 and self.rng.random() < cfg.prompted_rate:
                paired = (
                    cfg.prompt_pair_rate > 0
                    and k + 1 < len(entities)
                    and self.rng.random() < cfg.prompt_pair_rate
                )
                partner = entities[k + 1] if paired else None
                views, objects = render_prompted(
                    self.rng, self.images, self.pool, index, cfg, partner
                )
                for j, view in enumerate(views):
                    out[k + j] = view
                    mates[k + j] = [o for o in objects if o != entities[k + j]]
                continue
            distractor = None
            if self.rng.random() < cfg.distractor_rate:
                distractor = int(self.pool[self.rng.integers(len(self.pool))])
                distractor = None if distractor == index else distractor
            out[k] = render_view(self.rng, self.images, self.backgrounds, index, distractor, cfg)
        return out, mates  # type: ignore[return-value]

    def batch(self, size: int) -> tuple[list[int], list[Image.Image], np.ndarray, list[list[int]]]:
        """Entities, their views, text variants, and each view's scene mates."""
        entities = self._next_entities(min(size, len(self.pool)))
        views, mates = self.views_and_scenes(entities)
        variants = self.rng.choice(len(TEXT_VARIANTS), size=len(entities), p=self.cfg.text_rates)
        return entities, views, variants, mates


# ---------------------------------------------------------------------------- loss


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching (image, text) rows.

    ``ids`` names the entity of each row: rows of one entity are not negatives of each
    other (their off-diagonal logits are masked out). Embeddings need not be normalised.
    """
    image_emb = F.normalize(image_emb, dim=-1)
    text_emb = F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp() * image_emb @ text_emb.T
    if ids is not None:
        same = ids[:, None] == ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def scene_loss(
    image_emb: torch.Tensor,
    target_text: torch.Tensor,
    mate_text: torch.Tensor,
    mate_mask: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of each prompted scene over the names of *its own* objects.

    In-batch negatives are other scenes' entities, so a scene embedding that holds every
    object it shows scores as well as one that holds the boxed object: nothing in plain
    InfoNCE asks the encoder to read the box. Here the negatives are the other objects of
    the same scene ``mate_text`` [rows, mates, d] (``mate_mask`` marks the real ones), so
    only the box tells the right name from the wrong ones. ``image_emb`` [rows, d] and
    ``target_text`` [rows, d] are the prompted rows' image and boxed-entity text."""
    image_emb = F.normalize(image_emb, dim=-1)
    texts = F.normalize(torch.cat([target_text[:, None], mate_text], 1), dim=-1)
    logits = logit_scale.exp() * torch.einsum("rd,rmd->rm", image_emb, texts)
    keep = torch.cat([torch.ones_like(mate_mask[:, :1]), mate_mask], 1)
    logits = logits.masked_fill(~keep, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


# ---------------------------------------------------------------------------- evaluation


@torch.no_grad()
def retrieval_accuracy(
    model: ImageTextEncoder, views: Sequence[Image.Image], gold: Sequence[int], texts: list[str]
) -> dict[str, float]:
    """Image -> text retrieval: top-1/top-5 accuracy of each view against all ``texts``."""
    image_emb = model.encode_images(views)
    text_emb = model.encode_texts(texts)
    scores = image_emb @ text_emb.T
    gold_t = torch.as_tensor(list(gold), dtype=torch.long)
    gold_score = scores[torch.arange(len(gold_t)), gold_t]
    rank = (scores > gold_score[:, None]).sum(1)  # ties count in the view's favour
    return {
        "top1": round(float((rank < 1).float().mean()), 4),
        "top5": round(float((rank < 5).float().mean()), 4),
    }


def evaluation_views(
    images: EntityImages, cfg: TrainConfig
) -> dict[str, tuple[list[Image.Image], list[int]]]:
    """Held-out views (scene crops from ``eval_seed``) and the plain entity images."""
    sampler = ViewSampler(images, replace_plain(cfg.views, 0.0), cfg.eval_seed, 0)
    entities = [int(i) for i in sampler.pool for _ in range(cfg.eval_views_per_entity)]
    crops = sampler.views(entities)
    plain = [images.plain[i] for i in sampler.pool]
    return {"views": (crops, entities), "entity_images": (plain, [int(i) for i in sampler.pool])}


def replace_plain(cfg: ViewConfig, plain_rate: float) -> ViewConfig:
    return replace(cfg, plain_rate=plain_rate, prompted_rate=0.0)


@dataclass(frozen=True)
class PromptProbe:
    """Held-out prompted scenes: each with two objects boxed in turn, and unprompted."""

    prompted: list[Image.Image]  # the target boxed
    unprompted: list[Image.Image]  # the same scene, no prompt
    moved: list[Image.Image]  # the box on another object of the same scene
    target: list[int]  # entity of the boxed object
    other: list[int]  # entity the moved box marks
    n_objects: list[int]
    objects: list[list[int]]  # every object of the scene (KB indices, draw order)


def prompt_probe(
    images: EntityImages, cfg: TrainConfig, scenes: int, stream: int = 11
) -> PromptProbe:
    """``scenes`` fresh scenes (from ``eval_seed`` and ``stream``, never used in training or
    in VPWiki; `benchmarks/prompt_reading.py` draws its own stream)."""
    rng = np.random.default_rng([cfg.eval_seed, stream])
    pool = np.flatnonzero(images.has_image())
    views = cfg.views
    out: dict[str, list] = {k: [] for k in PromptProbe.__dataclass_fields__}
    low, high = views.prompted_objects
    for _ in range(scenes):
        n = int(rng.integers(max(2, low), high + 1))
        objects = [int(i) for i in rng.choice(pool, size=min(n, len(pool)), replace=False)]
        image, boxes = prompted_scene(rng, images, objects, views)
        t, o = (int(x) for x in rng.choice(len(objects), size=2, replace=False))
        out["prompted"].append(draw_prompt(image, boxes[t], views.prompt))
        out["moved"].append(draw_prompt(image, boxes[o], views.prompt))
        out["unprompted"].append(image)
        out["target"].append(objects[t])
        out["other"].append(objects[o])
        out["n_objects"].append(len(objects))
        out["objects"].append(objects)
    return PromptProbe(**out)


@torch.no_grad()
def prompt_following(
    model: ImageTextEncoder, probe: PromptProbe, names: list[str]
) -> dict[str, float]:
    """Does the encoder read the prompt? Top-1 name (over the whole KB) of each scene with the
    box on the target (``prompted``), without a box (``unprompted``), and with the box moved
    to another object: ``moved_follows`` is the share whose top-1 becomes that object,
    ``moved_changes`` the share whose top-1 differs from the prompted one.

    ``in_scene_*``: the same three images choosing only among the names of the scene's own
    objects (``in_scene_chance`` = mean 1 / objects). Whole-KB naming also needs the object
    recognised at scene scale; the in-scene choice isolates the box: with it the boxed
    object's name should win (``in_scene_prompted``), after moving it the newly boxed one's
    (``in_scene_moved``), and without it the encoder picks as it likes
    (``in_scene_unprompted``, near chance)."""
    text = model.encode_texts(names)
    images = {k: model.encode_images(v) for k, v in
              (("prompted", probe.prompted), ("unprompted", probe.unprompted),
               ("moved", probe.moved))}  # fmt: skip
    target, other = torch.tensor(probe.target), torch.tensor(probe.other)
    prompted, unprompted, moved = ((images[k] @ text.T).argmax(1) for k in images)
    share = lambda x: round(float(x.float().mean()), 4)  # noqa: E731

    def in_scene(key: str, gold: list[int]) -> float:
        picks = [
            objects[int((images[key][i] @ text[objects].T).argmax())] == gold[i]
            for i, objects in enumerate(probe.objects)
        ]
        return share(torch.tensor(picks))

    return {
        "scenes": len(probe.target),
        "prompted_top1": share(prompted == target),
        "unprompted_top1": share(unprompted == target),
        "moved_follows": share(moved == other),
        "moved_changes": share(moved != prompted),
        "in_scene_prompted": in_scene("prompted", probe.target),
        "in_scene_unprompted": in_scene("unprompted", probe.target),
        "in_scene_moved": in_scene("moved", probe.other),
        "in_scene_chance": round(float(np.mean([1 / len(o) for o in probe.objects])), 4),
    }


def evaluate(
    model: ImageTextEncoder,
    sets: dict[str, tuple[list[Image.Image], list[int]]],
    names: list[str],
) -> dict[str, dict[str, float]]:
    return {key: retrieval_accuracy(model, v, g, names) for key, (v, g) in sets.items()}


# ---------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    model: ImageTextEncoder
    metrics: dict[str, Any]
    losses: list[float]


def _optimizer(model: ImageTextEncoder, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


@torch.no_grad()
def pooled_text_bank(model: ImageTextEncoder, texts: list[list[str]]) -> torch.Tensor:
    """Frozen-tower pooled features [n_entities, n_variants, hidden] of every text."""
    flat = [t for row in texts for t in row]
    chunks = []
    for i in range(0, len(flat), 256):
        batch = {k: v.to(model.device) for k, v in model.tokenize(flat[i : i + 256]).items()}
        chunks.append(model.pooled_text(**batch))
    return torch.cat(chunks).view(len(texts), len(TEXT_VARIANTS), -1)


def train_encoder(
    kb: pd.DataFrame,
    root: Path,
    model_cfg: DemoEncoderConfig,
    cfg: TrainConfig,
    progress: bool = True,
    log: Callable[[str], None] = print,
    init: ImageTextEncoder | None = None,
) -> TrainResult:
    """Train a fresh demo encoder on the KB at ``root``; evaluate it and its random init.
    With ``init``, train that encoder further instead (``model_cfg`` is then unused; the
    ``random_init`` figures are ``init``'s): how `benchmarks/prompt_reading.py` runs a prompt
    phase alone on a trained encoder."""
    torch.manual_seed(cfg.seed)
    model = (init if init is not None else demo_encoder(model_cfg)).to(cfg.device)
    texts = entity_texts(kb)
    names = [row[0] for row in texts]
    images = EntityImages.from_kb(kb, root)
    log(f"encoders: {int(images.has_image().sum())} of {len(kb)} entities have an image")
    bank = pooled_text_bank(model, texts)
    held_out = evaluation_views(images, cfg)
    baseline = evaluate(model, held_out, names)
    log(f"encoders: random init retrieval {baseline}")
    probe = prompt_probe(images, cfg, cfg.probe_scenes) if cfg.probe_scenes else None
    probe_init = prompt_following(model, probe, names) if probe else None
    if probe_init:
        log(f"encoders: random init prompt following {probe_init}")

    phase = cfg.prompt_phase
    phases = [(cfg, cfg.seed, "training")]
    if phase.steps > 0:
        views = replace(
            cfg.views, prompted_rate=phase.prompted_rate, scene_negatives=phase.scene_negatives
        )
        second = replace(
            cfg, steps=phase.steps, lr=phase.lr, warmup_steps=phase.warmup_steps, views=views
        )
        phases.append((second, cfg.seed + PROMPT_PHASE_SEED, "prompt phase"))
    model.train()
    losses: list[float] = []
    wait = [0.0]  # seconds the loop waited for rendered batches
    start = time.perf_counter()
    for phase_cfg, seed, label in phases:
        sampler = ViewSampler(images, phase_cfg.views, seed, cfg.background_bank)
        if not _train_phase(model, bank, sampler, phase_cfg, label, progress, losses, wait, log):
            break
    train_s = time.perf_counter() - start
    model.eval()
    trained = evaluate(model, held_out, names)
    log(f"encoders: trained retrieval {trained}")
    probe_trained = prompt_following(model, probe, names) if probe else None
    if probe_trained:
        log(f"encoders: trained prompt following {probe_trained}")
    n_images = len(losses) * min(cfg.batch_size, int(images.has_image().sum()))
    metrics = {
        "steps": len(losses),
        "prompt_phase_steps": max(0, len(losses) - cfg.steps),
        "train_images": n_images,
        "train_seconds": round(train_s, 1),
        "render_wait_seconds": round(wait[0], 1),
        "images_per_second": round(n_images / max(train_s, 1e-9), 1),
        "final_loss": round(float(np.mean(losses[-20:])), 4),
        "first_loss": round(losses[0], 4),
        "logit_scale": round(float(model.logit_scale.detach().exp()), 2),
        "kb_entities": len(kb),
        "retrieval": {"trained": trained, "random_init": baseline},
        "prompt_following": {"trained": probe_trained, "random_init": probe_init},
    }
    return TrainResult(model, metrics, losses)


PROMPT_PHASE_SEED = 1_000  # the prompt phase draws from seed + this (its own stream)


def _train_phase(
    model: ImageTextEncoder,
    bank: torch.Tensor,
    sampler: ViewSampler,
    cfg: TrainConfig,
    label: str,
    progress: bool,
    losses: list[float],
    wait: list[float],
    log: Callable[[str], None],
) -> bool:
    """``cfg.steps`` steps of the loss (InfoNCE, plus the in-scene loss when
    ``cfg.views.scene_negatives``) with a fresh AdamW and a warm-up + cosine schedule;
    appends each step's loss to ``losses``. False when ``max_minutes`` stopped it."""
    optimizer = _optimizer(model, cfg)
    batches = _batches(sampler, model, cfg, wait)
    start = time.perf_counter()
    lr_factor = cosine_decay(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    done = True
    for step in _steps(cfg.steps, progress, losses, label):
        entities, pixels, variants, mates = next(batches)
        idx = torch.as_tensor(entities, device=cfg.device)
        text_emb = model.text_projection(bank[idx, torch.as_tensor(variants, device=cfg.device)])
        image_emb = model.image_features(pixels)
        loss = contrastive_loss(image_emb, text_emb, model.logit_scale, idx)
        rows = [k for k, m in enumerate(mates) if m]
        if cfg.views.scene_negatives > 0 and rows:
            loss = loss + cfg.views.scene_negatives * _scene_term(
                model, bank, image_emb, idx, mates, rows
            )
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if cfg.max_minutes is not None and time.perf_counter() - start > 60 * cfg.max_minutes:
            log(f"encoders: {label} stopped after {step + 1} steps (max_minutes={cfg.max_minutes})")
            done = False
            break
    batches.close()
    return done


def _scene_term(
    model: ImageTextEncoder,
    bank: torch.Tensor,
    image_emb: torch.Tensor,
    idx: torch.Tensor,
    mates: list[list[int]],
    rows: list[int],
) -> torch.Tensor:
    """:func:`scene_loss` of the batch's prompted ``rows`` against their scene mates' names."""
    width = max(len(mates[k]) for k in rows)
    mate_idx = torch.zeros(len(rows), width, dtype=torch.long, device=idx.device)
    mate_mask = torch.zeros(len(rows), width, dtype=torch.bool, device=idx.device)
    for r, k in enumerate(rows):
        mate_idx[r, : len(mates[k])] = torch.as_tensor(mates[k])
        mate_mask[r, : len(mates[k])] = True
    rows_t = torch.as_tensor(rows, device=idx.device)
    mate_text = model.text_projection(bank[mate_idx, 0])  # variant 0: the names
    target_text = model.text_projection(bank[idx[rows_t], 0])
    return scene_loss(image_emb[rows_t], target_text, mate_text, mate_mask, model.logit_scale)


def _batches(
    sampler: ViewSampler, model: ImageTextEncoder, cfg: TrainConfig, wait: list[float]
) -> Iterator[tuple[list[int], torch.Tensor, np.ndarray, list[list[int]]]]:
    """Endless training batches (entities, pixel values, text variants, scene mates), in
    sampler order.

    With ``cfg.prefetch`` the next batch is rendered in a background thread while the
    current one trains (PIL and numpy release the GIL); the order, and so the result, is
    the same either way. ``wait[0]`` accumulates the seconds spent waiting for a batch.
    """

    def make() -> tuple[list[int], torch.Tensor, np.ndarray, list[list[int]]]:
        entities, views, variants, mates = sampler.batch(cfg.batch_size)
        return entities, model.pixel_values(views).to(cfg.device), variants, mates

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(make) if cfg.prefetch else None
        while True:
            t0 = time.perf_counter()
            if pending is None:
                batch = make()
            else:
                batch = pending.result()
                pending = pool.submit(make)
            wait[0] += time.perf_counter() - t0
            yield batch


def _steps(
    total: int, progress: bool, losses: list[float], label: str = "training"
) -> Iterator[int]:
    """``range(total)`` with a rich progress bar that shows the latest loss."""
    if not progress:
        yield from range(total)
        return
    columns = (
        TextColumn(f"encoders: {label}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("train", total=total, loss="-")
        for step in range(total):
            yield step
            bar.update(task, advance=1, loss=f"{losses[-1]:.3f}" if losses else "-")
