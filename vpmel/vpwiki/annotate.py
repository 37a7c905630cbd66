"""One interface, two backends, for the automatic annotation of VPWiki (Appendix A.6).

- entailment: (image, text) → probability that the image shows what the text says;
- grounding: (image, phrase) → box in image pixels (and a score).

Backends: :class:`ClipBackend` (zero-shot with any CLIP-family encoder, the demo default)
and :class:`vpmel.vpwiki.ofa_backend.OfaBackend` (modelscope OFA, as in the paper). Both take a
list of :class:`~vpmel.vpwiki.annotation_backend.Request` and answer in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vpmel.data.images import open_rgb
from vpmel.vpwiki.annotation_backend import Backend, Request, Track, no_progress
from vpmel.vpwiki.boxes import sliding_windows
from vpmel.vpwiki.clip_annotator import (
    ClipAnnotator,
    KnownRegions,
    RegionScores,
    fit_calibration,
)


class ClipBackend:
    """Zero-shot entailment and grounding with a CLIP-family encoder (vpmel.vpwiki.clip_annotator).

    Entailment is calibrated on the data itself, without labels: every image is scored
    against its own texts (positives) and against the texts of another image (negatives,
    a seeded derangement of the images), and a logistic fit maps scores to probabilities.
    """

    chunk_images: int = 64  # images whose crops go through the encoder together

    def __init__(self, annotator: ClipAnnotator, seed: int = 0):
        self.annotator = annotator
        self.seed = seed
        self.calibration: tuple[float, float] | None = None
        # proposal embeddings: entailment's (kept for grounding) and those read back
        self.computed: dict[Path, RegionScores] = {}
        self.known: dict[Path, KnownRegions] = {}
        self.reused = 0  # images whose proposal embeddings came from ``known``

    def region_embeddings(self, root: Path) -> dict[str, RegionScores]:
        """The proposal embeddings computed so far, by image path relative to ``root`` (what
        :func:`~vpmel.vpwiki.clip_annotator.save_region_embeddings` writes)."""
        return {path.relative_to(root).as_posix(): r for path, r in self.computed.items()}

    def use_region_embeddings(self, known: Mapping[str, KnownRegions], root: Path) -> None:
        """Reuse embeddings computed earlier (names relative to ``root``) where an image's
        proposals are the same boxes."""
        self.known = {root / name: value for name, value in known.items()}

    def _chunks(self, images: list[Path], track: Track, what: str) -> Iterator[list[Path]]:
        chunks = [
            images[i : i + self.chunk_images] for i in range(0, len(images), self.chunk_images)
        ]
        yield from track(chunks, description=f"{what} ({len(images)} images)", total=len(chunks))

    def _regions(self, images: list[Path], track: Track, what: str) -> dict[Path, RegionScores]:
        out = {}
        for chunk in self._chunks(images, track, what):
            out.update(zip(chunk, self._regions_of(chunk, _open(chunk)), strict=True))
        self.computed.update(out)
        return out

    def _regions_of(self, paths: list[Path], images: list[Image.Image]) -> list[RegionScores]:
        known = [self.known.get(path) for path in paths]
        regions = self.annotator.regions_many(images, known)
        self.reused += sum(
            k is not None and r.embeddings is k[1] for k, r in zip(known, regions, strict=True)
        )
        return regions

    def entail(self, requests: Sequence[Request], track: Track = no_progress) -> np.ndarray:
        images = sorted({r.image for r in requests})
        regions = self._regions(images, track, "entail")
        texts = sorted({r.text for r in requests})
        emb = dict(zip(texts, self.annotator.phrases(texts), strict=True))
        scores = np.array(
            [self.annotator.match_score(regions[r.image], emb[r.text][None])[0] for r in requests]
        )
        negatives = self._negative_scores(requests, regions, emb)
        self.calibration = fit_calibration(scores, negatives)
        self.annotator.calibration = self.calibration
        return self.annotator.entail_probability(scores)

    def _negative_scores(self, requests, regions, emb) -> np.ndarray:  # noqa: ANN001
        """Each image against the texts of another image (never its own)."""
        by_image: dict[Path, list[str]] = {}
        for r in requests:
            by_image.setdefault(r.image, []).append(r.text)
        images = sorted(by_image)
        if len(images) < 2:
            raise ValueError("entailment calibration needs at least two images")
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(images))
        partner = {images[order[i]]: images[order[(i + 1) % len(images)]] for i in order}
        out = []
        for image in images:
            own = set(by_image[image])
            for text in by_image[partner[image]]:
                if text not in own:
                    out.append(self.annotator.match_score(regions[image], emb[text][None])[0])
        return np.asarray(out)

    def ground(
        self, requests: Sequence[Request], track: Track = no_progress
    ) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.zeros((len(requests), 4))
        scores = np.zeros(len(requests))
        by_image: dict[Path, list[int]] = {}
        for i, r in enumerate(requests):
            by_image.setdefault(r.image, []).append(i)
        texts = sorted({r.text for r in requests})
        emb = dict(zip(texts, self.annotator.phrases(texts), strict=True))
        for chunk in self._chunks(sorted(by_image), track, "ground"):
            images = _open(chunk)
            regions = self._regions_of(chunk, images)
            idx = [i for path in chunk for i in by_image[path]]
            owner = [k for k, path in enumerate(chunk) for _ in by_image[path]]
            phrases = torch.stack([emb[requests[i].text] for i in idx])
            boxes[idx], scores[idx] = self.annotator.ground_many(images, regions, phrases, owner)
        return boxes, scores


def _open(paths: Sequence[Path]) -> list[Image.Image]:
    """The images at ``paths``, loaded as RGB (files closed)."""
    return [open_rgb(path) for path in paths]


def random_proposal_boxes(
    sizes: Sequence[tuple[int, int]], window_sizes: Sequence[float], seed: int = 0
) -> np.ndarray:
    """The random-proposal baseline: one uniformly drawn sliding window per image."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(sizes), 4))
    for i, (w, h) in enumerate(sizes):
        windows = sliding_windows(w, h, window_sizes)
        out[i] = windows[rng.integers(len(windows))]
    return out


def requests_for(mentions: pd.DataFrame, root: Path, template: str) -> list[Request]:
    """One request per mention: its image and its mention words put into ``template``."""
    return [
        Request(root / row.image, template.format(mention=row.mention or row.sentence))
        for row in mentions.itertuples(index=False)
    ]


def build_backend(params: dict, encoder_params: dict, encoder_dir: Path) -> Backend:
    """The backend named by ``annotate.backend``: "clip" (the encoders stage's model) or
    "ofa" (modelscope OFA in its own environment, see vpmel.vpwiki.ofa_backend)."""
    backend = params.get("backend", "clip")
    if backend == "clip":
        from vpmel.encoders.model import resolve_encoder
        from vpmel.vpwiki.clip_annotator import ProposalConfig

        clip = dict(params.get("clip") or {})
        for key in ("sizes", "aspect_ratios"):
            if key in clip:
                clip[key] = tuple(clip[key])
        encoder = resolve_encoder(encoder_params, encoder_dir)
        encoder.eval()
        return ClipBackend(ClipAnnotator(encoder, ProposalConfig(**clip)), seed=params["seed"])
    if backend == "ofa":
        from vpmel.vpwiki.ofa_backend import OfaBackend

        return OfaBackend.from_params(params.get("ofa") or {})
    raise ValueError(f"annotate.backend must be 'clip' or 'ofa', got {backend!r}")
