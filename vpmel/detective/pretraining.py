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
* **view** — one entity's crop or encyclopedia image with its name, type or description.

Scenes come from their own seed stream (``[seed, 23, index]``), never from the world's
records, and the texts are the templates below — never a VPWiki caption, mention or the
instruction template (no ``Background: / Text: / Question: / Answer:``). What the base knows
about the KB's entities is what a pretrained VLM knows about Wikipedia's.

The model sees ``<image>`` and is trained to continue it with the text (language-modelling
loss on the text only, :func:`vpmel.detective.training.answer_loss` through
:func:`vpmel.detective.training.tune`). Examples are rendered on demand from their index, so
the corpus needs no disk and the same seed gives the same corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    prompted_scene,
    render_prompted,
    render_view,
)
from vpmel.params import from_params

IMAGE_PROMPT = "{image}"  # the model input: the image slots alone; the text follows
KINDS = ("region", "scene", "view")
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
    kind_rates: tuple[float, float, float] = (0.6, 0.1, 0.3)  # region / scene / view
    views: ViewConfig = field(default_factory=ViewConfig)

    def __post_init__(self) -> None:
        if len(self.kind_rates) != len(KINDS) or abs(sum(self.kind_rates) - 1) > 1e-6:
            raise ValueError(f"kind_rates must be {len(KINDS)} shares summing to 1")
        if self.examples < 1:
            raise ValueError("examples must be >= 1")


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _fill(template: str, kb: pd.DataFrame, index: int) -> str:
    row = kb.iloc[index]
    desc = row["description"] if isinstance(row["description"], str) else ""
    return " ".join(template.format(name=row["name"], type=row["type"], description=desc).split())


class PretrainingCorpus(Sequence[dict[str, Any]]):
    """``examples`` records ``{image, prompt, answer}``, each rendered on access from its
    index (a PIL image, the image placeholder, the text)."""

    def __init__(
        self, kb: pd.DataFrame, images: EntityImages, cfg: CorpusConfig, image_token: str
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

    def __len__(self) -> int:
        return self.cfg.examples

    def example(self, index: int) -> tuple[str, Image.Image, str, int]:
        """(kind, image, text, subject entity) of example ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = np.random.default_rng([self.cfg.seed, 23, index])
        subject = int(self.subjects[index])
        kind = KINDS[int(self.kinds[index])]
        views = self.cfg.views
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


@dataclass(frozen=True)
class PretrainConfig:
    """``detective.pretrain`` params: the corpus and its training loop."""

    seed: int = 0
    examples: int = 24000
    kind_rates: tuple[float, float, float] = (0.6, 0.1, 0.3)
    epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-3
    warmup_ratio: float = 0.03
    heldout: int = 300  # fresh region examples (another seed) for the naming check
    max_new_tokens: int = 14

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> PretrainConfig:
        return from_params(cls, params, "detective.pretrain")

    def corpus(self, views: ViewConfig) -> CorpusConfig:
        return CorpusConfig(self.seed, self.examples, self.kind_rates, views)

    def heldout_corpus(self, views: ViewConfig) -> CorpusConfig:
        return CorpusConfig(self.seed + 1_000_003, self.heldout, (1.0, 0.0, 0.0), views)


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
