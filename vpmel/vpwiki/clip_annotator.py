"""Zero-shot visual entailment and grounding with any CLIP-family image–text encoder.

The `clip` backend of VPWiki construction (the paper used OFA; see vpmel.vpwiki.ofa_backend). In
the spirit of ReCLIP, a phrase is grounded by scoring region proposals against it:

1. *Proposals*: multi-scale sliding windows (vpmel.vpwiki.boxes.sliding_windows), ranked by a
   centre–surround edge-density objectness score (:func:`objectness`) so that only the
   ``top_k`` most object-like windows are sent through the encoder.
2. *Scoring*: each proposal is cropped (with a little context) and encoded once per image;
   the phrase's similarity to every crop is a dot product of normalised embeddings.
3. *Grounding* returns the crop with the best similarity plus ``objectness_weight`` times
   its objectness (z-scored within the image) — an object prior that prefers windows
   framing a whole object over ones that cut one — optionally refined by a local search;
   *entailment* turns the best similarity into a
   probability with a logistic calibration ``p = sigmoid(a * s + b)`` fitted without labels
   by :func:`fit_calibration`: each image against its own phrase (positive) and against the
   phrase of another image (negative).

Encoding the crops is nearly all of the work, and entailment and grounding need the same
ones: :func:`save_region_embeddings` writes an image's proposal embeddings once (the `entail`
stage), :func:`load_region_embeddings` reads them back for grounding, keyed by the encoder
and the proposal settings so that embeddings of another model or other windows are never
reused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression

from vpmel.vpwiki.boxes import sliding_windows


class ImageTextEncoder(Protocol):
    """What the annotator needs of an encoder: L2-normalised embeddings."""

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor: ...

    def encode_texts(self, texts: list[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class ProposalConfig:
    sizes: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)  # window side / shorter image side
    aspect_ratios: tuple[float, ...] = (1.0,)
    overlap: float = 0.75
    top_k: int = 40  # proposals scored by the encoder per image
    context: float = 0.2  # crop margin around a proposal, as a share of its side
    objectness_weight: float = 0.04  # grounding score = similarity + this * objectness z
    whole_image: bool = True  # also score the whole image (entailment of large objects)
    refine_steps: int = 2  # local search rounds around the best proposal (0: none)
    refine_shift: float = 0.25  # first round's shift, as a share of the box side


def objectness(image: Image.Image, boxes: np.ndarray, surround: float = 0.25) -> np.ndarray:
    """Centre–surround edge density of each box (an objectness cue after Alexe et al.).

    An object is a patch of denser contours than its surroundings: gradient energy per
    pixel inside the box minus that in a ring ``surround`` times the box's sides around it.
    Computed for all boxes at once from one integral image. On the demo world this keeps a
    box with IoU >= 0.5 to the reference among the top 24 of 105 windows for 86% of
    mentions (random ranking: 45%).
    """
    return box_objectness(edge_integral(image), boxes, surround)


def edge_integral(image: Image.Image) -> np.ndarray:
    """Integral image (H+1, W+1) of the gradient magnitude — computed once per image."""
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    gy, gx = np.gradient(gray)
    return np.pad(np.hypot(gx, gy).cumsum(0).cumsum(1), ((1, 0), (1, 0)))


def box_objectness(integral: np.ndarray, boxes: np.ndarray, surround: float = 0.25) -> np.ndarray:
    """:func:`objectness` of ``boxes`` from an image's :func:`edge_integral`."""
    height, width = integral.shape[0] - 1, integral.shape[1] - 1

    def clipped(x1, y1, x2, y2):
        return (
            np.clip(np.round(x1), 0, width).astype(int),
            np.clip(np.round(y1), 0, height).astype(int),
            np.clip(np.round(x2), 0, width).astype(int),
            np.clip(np.round(y2), 0, height).astype(int),
        )

    def energy_and_area(x1, y1, x2, y2) -> tuple[np.ndarray, np.ndarray]:
        x1, y1, x2, y2 = clipped(x1, y1, x2, y2)
        energy = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
        return energy, (x2 - x1) * (y2 - y1)

    x1, y1, x2, y2 = np.asarray(boxes, dtype=np.float64).T
    mx, my = (x2 - x1) * surround, (y2 - y1) * surround
    inside, inside_area = energy_and_area(x1, y1, x2, y2)
    outer, outer_area = energy_and_area(x1 - mx, y1 - my, x2 + mx, y2 + my)
    ring = (outer - inside) / np.maximum(outer_area - inside_area, 1)
    return inside / np.maximum(inside_area, 1) - ring


@dataclass(frozen=True)
class Objectness:
    """An image's objectness: its edge integral image and the scale
    z = (objectness - mean) / std over all its windows."""

    integral: np.ndarray = field(repr=False)
    mean: float
    std: float

    def z(self, boxes: np.ndarray) -> np.ndarray:
        return (box_objectness(self.integral, boxes) - self.mean) / self.std


def propose(image: Image.Image, cfg: ProposalConfig) -> tuple[np.ndarray, np.ndarray, Objectness]:
    """The ``top_k`` most object-like windows (plus the whole image when configured), their
    objectness z-scores and the image's objectness scale."""
    w, h = image.size
    windows = sliding_windows(w, h, cfg.sizes, cfg.aspect_ratios, cfg.overlap)
    integral = edge_integral(image)
    score = box_objectness(integral, windows)
    scale = Objectness(integral, float(score.mean()), float(score.std()) or 1.0)
    order = np.argsort(-score, kind="stable")[: cfg.top_k]
    boxes, z = windows[order], (score[order] - scale.mean) / scale.std
    if cfg.whole_image:
        whole = np.array([[0.0, 0.0, float(w), float(h)]])
        boxes, z = np.concatenate([boxes, whole]), np.concatenate([z, scale.z(whole)])
    return boxes, z, scale


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _local_moves(box: np.ndarray, step: float, width: int, height: int) -> np.ndarray:
    """The box shifted by ``step`` of its side in 8 directions and scaled by 1 ± step,
    kept inside the image."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    moves = [
        (x1 + dx * step * bw, y1 + dy * step * bh, x2 + dx * step * bw, y2 + dy * step * bh)
        for dx in (-1, 0, 1)
        for dy in (-1, 0, 1)
        if dx or dy
    ]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    for f in (1 - step, 1 + step):
        moves.append((cx - f * bw / 2, cy - f * bh / 2, cx + f * bw / 2, cy + f * bh / 2))
    out = np.asarray(moves)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    keep = (out[:, 2] - out[:, 0] >= 2) & (out[:, 3] - out[:, 1] >= 2)
    return out[keep]


def crop(image: Image.Image, box: Sequence[float], context: float) -> Image.Image:
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * context, (y2 - y1) * context
    w, h = image.size
    return image.crop((max(0, x1 - mx), max(0, y1 - my), min(w, x2 + mx), min(h, y2 + my)))


@dataclass
class RegionScores:
    """One image's proposals and their embeddings (computed once, scored per phrase)."""

    boxes: np.ndarray  # (K, 4)
    embeddings: torch.Tensor  # (K, d), L2-normalised
    objectness: np.ndarray  # (K,) z-scores within the image
    scale: Objectness

    def similarities(self, phrase_embeddings: torch.Tensor) -> np.ndarray:
        """(P, K) cosine similarity of each phrase to each proposal."""
        return (phrase_embeddings @ self.embeddings.T).numpy()


KnownRegions = tuple[np.ndarray, torch.Tensor]  # an image's proposal boxes (K, 4), embeddings


class ClipAnnotator:
    """Grounding and entailment from one encoder; see the module docstring."""

    def __init__(self, encoder: ImageTextEncoder, proposals: ProposalConfig = ProposalConfig()):
        self.encoder = encoder
        self.proposals = proposals
        self.calibration: tuple[float, float] | None = None

    @torch.no_grad()
    def regions(self, image: Image.Image) -> RegionScores:
        return self.regions_many([image])[0]

    @torch.no_grad()
    def regions_many(
        self,
        images: Sequence[Image.Image],
        known: Sequence[KnownRegions | None] | None = None,
    ) -> list[RegionScores]:
        """Proposals and their embeddings for several images, in one encoder batch.

        ``known[i]``, when given, holds embeddings computed earlier for image ``i``'s
        proposals (:func:`load_region_embeddings`); they are used when their boxes are the
        proposals computed now, and the image's crops are encoded otherwise."""
        images = [_rgb(im) for im in images]
        known = known if known is not None else [None] * len(images)
        proposed = [propose(im, self.proposals) for im in images]
        reuse = [
            k is not None and np.array_equal(k[0], b)
            for k, (b, _, _) in zip(known, proposed, strict=True)
        ]
        crops = [
            crop(im, b, self.proposals.context)
            for im, (bs, _, _), r in zip(images, proposed, reuse, strict=True)
            if not r
            for b in bs
        ]
        fresh = iter(
            torch.split(
                self.encoder.encode_images(crops).float() if crops else torch.zeros(0),
                [len(b) for (b, _, _), r in zip(proposed, reuse, strict=True) if not r],
            )
        )
        return [
            RegionScores(b, k[1] if r else next(fresh), z, sc)
            for (b, z, sc), k, r in zip(proposed, known, reuse, strict=True)
        ]

    @torch.no_grad()
    def phrases(self, texts: list[str]) -> torch.Tensor:
        return self.encoder.encode_texts(texts).float()

    def ground(
        self, image: Image.Image, regions: RegionScores, phrase_embeddings: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best box (P, 4) and its similarity (P,) for each phrase in one image."""
        owner = [0] * len(phrase_embeddings)
        return self.ground_many([image], [regions], phrase_embeddings, owner)

    @torch.no_grad()
    def ground_many(
        self,
        images: Sequence[Image.Image],
        regions: Sequence[RegionScores],
        phrase_embeddings: torch.Tensor,
        owner: Sequence[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best box (P, 4) and its score (similarity + objectness prior, (P,)) for each
        phrase; phrase ``p`` belongs to ``images[owner[p]]``.

        The best proposal (the whole-image one excluded when smaller ones exist) is then
        refined by a local search: shifted and rescaled copies are scored and the best kept,
        ``refine_steps`` times with halving steps — the window grid alone is coarse. Each
        round encodes the moves of every phrase in one batch.
        """
        images = [_rgb(im) for im in images]
        weight = self.proposals.objectness_weight
        n = len(owner)
        boxes, scores = np.zeros((n, 4)), np.zeros(n)
        for p, i in enumerate(owner):
            r = regions[i]
            score = r.similarities(phrase_embeddings[p][None])[0] + weight * r.objectness
            if self.proposals.whole_image and len(score) > 1:
                score = score[:-1]  # the whole image is the last proposal
            best = int(score.argmax())
            boxes[p], scores[p] = r.boxes[best], score[best]
        step = self.proposals.refine_shift
        for _ in range(self.proposals.refine_steps):
            moves = [_local_moves(boxes[p], step, *images[i].size) for p, i in enumerate(owner)]
            crops = [
                crop(images[i], b, self.proposals.context)
                for p, i in enumerate(owner)
                for b in moves[p]
            ]
            if crops:
                emb = torch.split(
                    self.encoder.encode_images(crops).float(), [len(m) for m in moves]
                )
                for p in range(n):
                    if len(moves[p]) == 0:
                        continue
                    prior = regions[owner[p]].scale.z(moves[p])
                    sims = (emb[p] @ phrase_embeddings[p]).numpy() + weight * prior
                    if sims.max() > scores[p]:
                        boxes[p], scores[p] = moves[p][int(sims.argmax())], float(sims.max())
            step /= 2
        return boxes, scores

    def match_score(self, regions: RegionScores, phrase_embeddings: torch.Tensor) -> np.ndarray:
        """(P,) best similarity of each phrase over all proposals (the entailment evidence)."""
        return regions.similarities(phrase_embeddings).max(axis=1)

    def entail_probability(self, scores: np.ndarray) -> np.ndarray:
        if self.calibration is None:
            raise RuntimeError("call fit_calibration before entail_probability")
        a, b = self.calibration
        return 1.0 / (1.0 + np.exp(-(a * np.asarray(scores) + b)))


def fit_calibration(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    """Logistic calibration ``p = sigmoid(a * s + b)`` from matched and mismatched scores."""
    x = np.concatenate([positive, negative]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    model = LogisticRegression(C=100.0).fit(x, y)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


REGIONS_FILE = "regions.safetensors"


def region_key(encoder: str, proposals: ProposalConfig) -> dict[str, Any]:
    """What embeddings are valid for: the encoder (a fingerprint) and the proposal settings
    that decide the windows and their crops."""
    settings = asdict(proposals)
    crops = ("sizes", "aspect_ratios", "overlap", "top_k", "context", "whole_image")
    return {"format": 1, "encoder": encoder} | {k: settings[k] for k in crops}


def save_region_embeddings(
    path: Path, regions: Mapping[str, RegionScores], key: Mapping[str, Any]
) -> None:
    """One file holding every image's proposal boxes and embeddings (``regions``: image
    name -> its :class:`RegionScores`), stamped with ``key`` (:func:`region_key`)."""
    names = list(regions)
    empty = torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, 0)
    boxes = [torch.from_numpy(np.asarray(regions[n].boxes, dtype=np.float64)) for n in names]
    embeddings = [regions[n].embeddings.float() for n in names]
    tensors = {
        "boxes": torch.cat(boxes) if names else empty[0],
        "embeddings": torch.cat(embeddings).contiguous() if names else empty[1],
        "counts": torch.tensor([len(b) for b in boxes], dtype=torch.int64),
    }
    # one metadata entry: safetensors writes its metadata map in no fixed order, and the file
    # must be the same bytes on every run (a DVC output)
    meta = {"regions": json.dumps({"key": dict(key), "images": names}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata=meta)


def load_region_embeddings(path: Path, key: Mapping[str, Any]) -> dict[str, KnownRegions] | None:
    """The embeddings :func:`save_region_embeddings` wrote, by image name; None when the
    file is missing or was made with another encoder or other proposal settings."""
    if not Path(path).is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:  # one read: metadata, then tensors
        meta = json.loads((handle.metadata() or {}).get("regions", "{}"))
        if meta.get("key") != json.loads(json.dumps(dict(key))):  # tuples as JSON lists
            return None
        counts = handle.get_tensor("counts").tolist()
        boxes = torch.split(handle.get_tensor("boxes"), counts)
        embeddings = torch.split(handle.get_tensor("embeddings"), counts)
    names = meta["images"]
    return {n: (b.numpy(), e) for n, b, e in zip(names, boxes, embeddings, strict=True)}
