"""Pretraining the demo Detective-VLM's base: the demo's stand-in for a downloaded VLM.

The paper instruction-tunes mPLUG-Owl2, a VLM *pretrained* on web image-text data and never
shown the Detective template; its untuned answers (IIER‡) are fluent but unstructured text.
A tiny LLaVA built from config knows nothing (greedy decoding repeats one token), so the
demo pretrains one here, once, on a synthetic "web corpus":

* **region** — a scene of 2-5 KB entities composed by the demo world's scene generator, one
  of them marked by the visual prompt (the ``prompt`` params: VPWiki's marker), with an
  alt-text-like sentence about the marked entity (``"the red box shows {name}, a {type}."``);
  as region-level data (RefCOCO-style, visual-prompt data) teaches real VLMs;
* **scene** — such a scene without a marker and the list of what it shows;
* **view** — one entity's crop or encyclopedia image with its name, type or description;
* **captioned** — a captioned photo with one object marked: a scene and caption planned by
  the demo world's own generator (:class:`vpmel.world.captioned.CaptionedScenes`, passed in by
  the stage) from a seed no
  VPWiki world uses, the caption followed by a region sentence about the marked object
  (``"{caption} the red box shows {name}, a {type}."``). Web alt-text next to a marked
  photo, as visual-prompt data (ViP-LLaVA, Shikra) teaches real VLMs: the name is often
  already in the caption, so the model learns to read a text and copy the phrase the marker
  picks — what a VLM pretrained on language can do and a from-scratch LM cannot. A caption
  that happens to equal one of the world's own captions is never used (the region sentence
  alone is written instead; :func:`caption_collisions` counts them).

Scenes come from their own seed stream (``[seed, 23, index]``; captioned ones from the
world seed plus :data:`vpmel.world.captioned.CAPTIONED_SEED_OFFSET`), never from the
world's records, and the texts are the templates below — never a VPWiki caption, mention or
the instruction template (no ``Background: / Text: / Question: / Answer:``). What the base knows
about the KB's entities is what a pretrained VLM knows about Wikipedia's.

The model sees ``<image>`` and is trained to continue it with the text (language-modelling
loss on the text only, :func:`vpmel.detective.training.answer_loss` through
:func:`vpmel.detective.training.tune`). Examples are rendered on demand from their index, so
the corpus needs no disk and the same seed gives the same corpus.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from PIL import Image

from vpmel.detective.answers import generate_texts
from vpmel.detective.model import demo_corpus, normalise
from vpmel.encoders.training import (
    Backgrounds,
    EntityImages,
    ViewConfig,
    _plain_view,
    jittered,
    prompted_scene,
    render_prompted,
    render_view,
)
from vpmel.params import from_params
from vpmel.prompts import draw_prompt
from vpmel.scenes import compose_scene

IMAGE_PROMPT = "{image}"  # the model input: the image slots alone; the text follows
KINDS = ("region", "scene", "view", "captioned")
REGION_TEXTS = (
    "the red box shows {name}, a {type}.",
    "{name} in the red box.",
    "a red box around {name}.",
    "marked in red: {name}.",
)
SCENE_TEXTS = ("a picture of {names}.", "{names} on a busy background.")
VIEW_TEXTS = ("a photo of {name}, a {type}.", "{name}. {description}", "{name}.")


@dataclass(frozen=True)
class CorpusConfig:
    """The synthetic pretraining corpus (``detective.pretrain.corpus`` params)."""

    seed: int = 0
    examples: int = 24000
    kind_rates: tuple[float, ...] = (0.6, 0.1, 0.3, 0.0)  # region / scene / view / captioned
    views: ViewConfig = field(default_factory=ViewConfig)

    def __post_init__(self) -> None:
        rates = tuple(float(r) for r in self.kind_rates)
        if len(rates) == len(KINDS) - 1:  # params written before the captioned kind
            rates = (*rates, 0.0)
        object.__setattr__(self, "kind_rates", rates)
        if len(rates) != len(KINDS) or abs(sum(rates) - 1) > 1e-6:
            raise ValueError(f"kind_rates must be {len(KINDS)} shares summing to 1 ({KINDS})")
        if self.examples < 1:
            raise ValueError("examples must be >= 1")


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _fill(template: str, kb: pd.DataFrame, index: int) -> str:
    row = kb.iloc[index]
    desc = row["description"] if isinstance(row["description"], str) else ""
    return " ".join(template.format(name=row["name"], type=row["type"], description=desc).split())


class CaptionSource(Protocol):
    """Where the captioned kind's scenes and captions come from (the demo:
    :class:`vpmel.world.captioned.CaptionedScenes`, which the stage passes in; the library
    never imports the demo world). ``record`` plans the pair whose first mention is KB entity
    ``subject``: its ``caption``, ``objects`` (each with ``qid`` and ``square``) and
    ``mentions[0]`` (``object``: the marked one's place in ``objects``; ``named``)."""

    forbidden: frozenset[str]  # captions never written (the world's own)
    index_of: Mapping[str, int]  # QID -> KB row
    scene_size: tuple[int, int]

    def record(self, index: int, subject: int) -> Any: ...


class PretrainingCorpus(Sequence[dict[str, Any]]):
    """``examples`` records ``{image, prompt, answer}``, each rendered on access from its
    index (a PIL image, the image placeholder, the text)."""

    def __init__(
        self,
        kb: pd.DataFrame,
        images: EntityImages,
        cfg: CorpusConfig,
        image_token: str,
        captions: CaptionSource | None = None,
    ) -> None:
        self.kb = kb.reset_index(drop=True)
        self.images = images
        self.cfg = cfg
        self.prompt = IMAGE_PROMPT.format(image=image_token)
        self.pool = np.flatnonzero(images.has_image())
        if len(self.pool) < 2:
            raise ValueError("need at least two KB entities with an image to pretrain on")
        rng = np.random.default_rng([cfg.seed, 23])
        self.backgrounds = Backgrounds(rng, cfg.views.scene_size, 256)
        # entity order: seeded permutations, so every entity is the subject equally often
        reps = -(-cfg.examples // len(self.pool))
        self.subjects = np.concatenate([rng.permutation(self.pool) for _ in range(reps)])
        self.kinds = rng.choice(len(KINDS), size=cfg.examples, p=list(cfg.kind_rates))
        if cfg.kind_rates[KINDS.index("captioned")] > 0 and captions is None:
            raise ValueError("the captioned kind needs a caption source (captions=...)")
        self.captioned = captions

    def __len__(self) -> int:
        return self.cfg.examples

    def captioned_parts(self, index: int) -> tuple[Image.Image, str, str, int, bool]:
        """Example ``index`` drawn as the captioned kind: (marked scene, caption — "" where
        it equals one of the world's own captions —, region sentence, subject, whether the
        caption names the subject)."""
        if self.captioned is None:
            raise ValueError("this corpus has no caption source (captions=...)")
        rng = np.random.default_rng([self.cfg.seed, 23, index])
        subject = int(self.subjects[index])
        record = self.captioned.record(index, subject)
        mention = record.mentions[0]
        assert mention.object is not None  # related pairs only (unrelated_rate 0)
        squares = [o.square for o in record.objects]
        glyphs = [
            self.images.at(self.captioned.index_of[o.qid], max(o.square.size, 8))
            for o in record.objects
        ]
        width, height = self.captioned.scene_size
        scene, boxes = compose_scene(rng, width, height, glyphs, squares)
        box = jittered(rng, boxes[mention.object], self.cfg.views.prompt_jitter, scene.size)
        image = draw_prompt(scene, box, self.cfg.views.prompt)
        region = _fill(REGION_TEXTS[int(rng.integers(len(REGION_TEXTS)))], self.kb, subject)
        caption = "" if record.caption in self.captioned.forbidden else record.caption
        return image, caption, region, subject, mention.named

    def example(self, index: int) -> tuple[str, Image.Image, str, int]:
        """(kind, image, text, subject entity) of example ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = np.random.default_rng([self.cfg.seed, 23, index])
        subject = int(self.subjects[index])
        kind = KINDS[int(self.kinds[index])]
        views = self.cfg.views
        if kind == "captioned":
            image, caption, region, _, _ = self.captioned_parts(index)
            return kind, image, " ".join(f"{caption} {region}".split()), subject
        if kind == "region":
            image = render_prompted(rng, self.images, self.pool, subject, views)[0][0]
            text = _fill(REGION_TEXTS[int(rng.integers(len(REGION_TEXTS)))], self.kb, subject)
        elif kind == "scene":
            n = int(rng.integers(views.prompted_objects[0], views.prompted_objects[1] + 1))
            others = [int(i) for i in rng.choice(self.pool, size=n, replace=False)]
            objects = [subject, *[i for i in others if i != subject]][:n]
            image, _ = prompted_scene(rng, self.images, objects, views)
            names = [str(self.kb.at[i, "name"]) for i in objects]
            text = SCENE_TEXTS[int(rng.integers(len(SCENE_TEXTS)))].format(names=_names(names))
        else:
            if rng.random() < views.plain_rate:
                image = _plain_view(rng, self.images, subject)
            else:
                distractor = int(self.pool[rng.integers(len(self.pool))])
                distractor = None if distractor == subject else distractor
                image = render_view(rng, self.images, self.backgrounds, subject, distractor, views)
            text = _fill(VIEW_TEXTS[int(rng.integers(len(VIEW_TEXTS)))], self.kb, subject)
        return kind, image, text, subject

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        _, image, text, _ = self.example(int(index))
        return {"image": image, "prompt": self.prompt, "answer": text}


def corpus_vocabulary(kb: pd.DataFrame, sentences: Sequence[str] = ()) -> list[str]:
    """Every text the base may read or write, for the word-level tokenizer: each template
    filled for every entity, and (:func:`vpmel.detective.model.demo_corpus`) the instruction
    template around each entity name and each of ``sentences`` — their words, including
    each first word as it follows the opening quote — and the seven types; never an answer.

    ``sentences`` give the tokenizer the words captions use (see
    :func:`vpmel.world.generate.vocabulary_sentences`): a real VLM's tokenizer covers a
    language; a word-level one covers only what it was built from, and a caption read as
    ``<unk>`` in every fifth word cannot be copied from."""
    texts: list[str] = []
    for i in range(len(kb)):
        texts.extend(_fill(t, kb, i) for t in (*REGION_TEXTS, *VIEW_TEXTS))
    texts.extend(t.format(names="a, b and c") for t in SCENE_TEXTS)
    return demo_corpus(texts, [*(str(n) for n in kb["name"]), *sentences])


def names_region(generated: str, name: str) -> bool:
    """Whether a generated text names ``name`` (normalised, as a whole phrase)."""
    text, target = f" {normalise(generated)} ", normalise(name)
    return bool(target) and any(f" {target}{end}" in text for end in (" ", ",", "."))


# ---------------------------------------------------------------------------- the run


HELDOUT_SEED_OFFSET = 1_000_003  # the held-out checks' corpus seed: seed + this


@dataclass(frozen=True)
class PretrainConfig:
    """``detective.pretrain`` params: the corpus and its training loop."""

    seed: int = 0
    examples: int = 24000
    kind_rates: tuple[float, ...] = (0.6, 0.1, 0.3, 0.0)  # region / scene / view / captioned
    epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-3
    warmup_ratio: float = 0.03
    heldout: int = 300  # fresh region (and captioned) examples, another seed: naming checks
    max_new_tokens: int = 14

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> PretrainConfig:
        return from_params(cls, params, "detective.pretrain")

    def corpus(self, views: ViewConfig) -> CorpusConfig:
        return CorpusConfig(self.seed, self.examples, self.kind_rates, views)

    def heldout_corpus(self, views: ViewConfig) -> CorpusConfig:
        return CorpusConfig(
            self.seed + HELDOUT_SEED_OFFSET, self.heldout, (1.0, 0.0, 0.0, 0.0), views
        )

    def heldout_captioned(self, views: ViewConfig) -> CorpusConfig:
        return CorpusConfig(
            self.seed + HELDOUT_SEED_OFFSET, self.heldout, (0.0, 0.0, 0.0, 1.0), views
        )


def region_naming(
    model: Any, processor: Any, corpus: PretrainingCorpus, max_new_tokens: int
) -> dict[str, Any]:
    """How often the base names the marked entity of fresh region scenes, given the image
    alone (``<image>`` prompt), and a few of its texts."""
    examples = [corpus.example(i) for i in range(len(corpus))]
    images = [e[1] for e in examples]
    texts = generate_texts(model, processor, [corpus.prompt] * len(examples), images, 50,
                           max_new_tokens)  # fmt: skip
    names = [str(corpus.kb.at[e[3], "name"]) for e in examples]
    hits = [names_region(t, n) for t, n in zip(texts, names, strict=True)]
    return {
        "n": len(examples),
        "names_marked_entity": round(sum(hits) / max(len(hits), 1), 4),
        "samples": [{"entity": n, "text": t} for n, t in zip(names[:5], texts[:5], strict=True)],
    }


def captioned_texts(
    model: Any, processor: Any, corpus: PretrainingCorpus, max_new_tokens: int
) -> tuple[list[tuple[Image.Image, str, str, int, bool]], list[str]]:
    """Every captioned example of ``corpus`` (:meth:`PretrainingCorpus.captioned_parts`) and
    the text the base writes on after its image and caption."""
    parts = [corpus.captioned_parts(i) for i in range(len(corpus))]
    prompts = [" ".join(f"{corpus.prompt} {p[1]}".split()) for p in parts]
    texts = generate_texts(model, processor, prompts, [p[0] for p in parts], 50, max_new_tokens)
    return parts, texts


def captioned_naming(
    model: Any, processor: Any, corpus: PretrainingCorpus, max_new_tokens: int
) -> dict[str, Any]:
    """How often the base names the marked object of fresh captioned scenes when it is given
    the image and the caption and writes on: overall, where the caption names the object
    (read and copy the phrase the marker picks) and where it does not (the image alone)."""
    parts, texts = captioned_texts(model, processor, corpus, max_new_tokens)
    names = [str(corpus.kb.at[p[3], "name"]) for p in parts]
    hits = np.array([names_region(t, n) for t, n in zip(texts, names, strict=True)])
    named = np.array([p[4] and bool(p[1]) for p in parts], dtype=bool)

    def share(mask: np.ndarray) -> float | None:
        return round(float(hits[mask].mean()), 4) if mask.any() else None

    return {
        "n": len(parts),
        "names_marked_entity": share(np.ones(len(parts), dtype=bool)),
        "caption_names_it": {"n": int(named.sum()), "names_marked_entity": share(named)},
        "caption_does_not": {"n": int((~named).sum()), "names_marked_entity": share(~named)},
        "samples": [
            {"caption": p[1], "entity": n, "text": t}
            for p, n, t in zip(parts[:5], names[:5], texts[:5], strict=True)
        ],
    }


def caption_collisions(corpus: PretrainingCorpus) -> int:
    """Captioned examples of ``corpus`` whose caption equals one of the world's own (written
    without it)."""
    if corpus.captioned is None:
        return 0
    at = np.flatnonzero(corpus.kinds == KINDS.index("captioned"))
    return sum(
        corpus.captioned.record(int(i), int(corpus.subjects[i])).caption
        in corpus.captioned.forbidden
        for i in at
    )
