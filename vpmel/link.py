"""Link one marked image region (and its caption) to the knowledge base: ``vpmel link``.

:class:`Linker` loads the trained IIER checkpoint, the KB and — when there is one — the
tuned Detective-VLM once; the KB side of IIER is encoded once and cached on disk
(``kb_index/<fingerprint>.safetensors`` inside the cache folder, keyed by the checkpoint
and the KB table, so a retrained model or a changed KB never reads a stale index). Each
:meth:`Linker.link` then draws the visual prompt, asks Detective-VLM for
``"{name} {type}"`` (m_w) when the checkpoint was trained with answers, and scores the
mention against every KB entity with the full IIER score.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from vpmel.answers import fingerprint, model_answer_fn, parsed_rows
from vpmel.iier import IIER, EntitySide
from vpmel.iier_data import (
    InputConfig,
    TextBank,
    answer_strings,
    entity_batches,
    kb_side,
)
from vpmel.images import ImageProblem, load_image
from vpmel.prompts import PromptStyle, draw_prompt
from vpmel.retrieval import build_entity_store, ordered_top_k, score_block_rows
from vpmel.schema import read_kb

PROMPTED = "prompted.png"


class LinkError(Exception):
    """A problem with the user's input or files, said in one line."""


def parse_box(text: str) -> list[float]:
    """``"X1,Y1,X2,Y2"`` → four floats."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        box = [float(p) for p in parts]
    except ValueError:
        box = []
    if len(box) != 4:
        raise LinkError(f"--box must be X1,Y1,X2,Y2 (four numbers), got {text!r}")
    return box


def check_box(box: list[float], width: int, height: int) -> None:
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise LinkError(f"box {box} is empty or inverted (need X1 < X2 and Y1 < Y2)")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise LinkError(f"box {box} is outside the image ({width} x {height} pixels)")


@dataclass
class Entity:
    rank: int
    qid: str
    name: str
    type: str | None
    score: float


@dataclass
class LinkResult:
    entities: list[Entity]
    answer: str | None  # Detective-VLM's raw answer (None: not used)
    m_w: str  # what IIER read as the mention words
    seconds: float
    prompted: Image.Image | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "m_w": self.m_w,
            "seconds": round(self.seconds, 4),
            "entities": [vars(e) for e in self.entities],
        }


class Linker:
    """IIER + KB index (+ Detective-VLM), loaded once; see the module docstring."""

    def __init__(
        self,
        model_dir: Path = Path("models/iier"),
        dataset: Path = Path("data/dataset"),
        detective_dir: Path | None = Path("models/detective"),
        cache_dir: Path = Path("data/link"),
        style: PromptStyle = PromptStyle(),
        max_side: int = 1024,
    ) -> None:
        started = time.perf_counter()
        model_dir, dataset = Path(model_dir), Path(dataset)
        if not (model_dir / "iier.json").is_file():
            raise LinkError(f"{model_dir}: no trained IIER checkpoint (run `dvc repro train`)")
        if not (dataset / "kb.parquet").is_file():
            raise LinkError(f"{dataset}: no kb.parquet (run `dvc repro import`)")
        self.model, extra = IIER.load(model_dir)
        self.inputs = InputConfig(**extra.get("inputs", {}))
        self.kb = read_kb(dataset)
        self.style = style
        self.max_side = max_side
        enc = self.model.encoder
        self.store = self._kb_index(model_dir, dataset, Path(cache_dir))
        self.detective = None
        if self.inputs.use_answers and detective_dir is not None:
            if not (Path(detective_dir) / "detective.json").is_file():
                raise LinkError(
                    f"{detective_dir}: the checkpoint reads Detective-VLM answers but there is "
                    "no tuned Detective-VLM (run `dvc repro answers`, or pass --no-vlm)"
                )
            from vpmel.detective import load_detective

            model, processor, meta = load_detective(Path(detective_dir))
            self.detective = (model, processor, meta)
        self.to_pixels, self.image_size = enc.pixel_values, enc.image_size
        self.tokenizer = enc.tokenizer
        self.startup_seconds = time.perf_counter() - started

    @torch.no_grad()
    def _kb_index(self, model_dir: Path, dataset: Path, cache_dir: Path) -> EntitySide:
        key = fingerprint([model_dir, dataset / "kb.parquet"])
        path = cache_dir / "kb_index" / f"{key}.safetensors"
        if path.is_file():
            return EntitySide(**load_file(path))
        enc = self.model.encoder
        side = kb_side(self.kb, dataset, enc.tokenizer, enc.pixel_values, enc.image_size,
                       self.inputs, cache_images=False)  # fmt: skip
        store = build_entity_store(
            self.model, entity_batches(side, 0, len(self.kb), 64), len(self.kb), side.texts.width
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in vars(store).items()}, tmp)
        tmp.rename(path)
        return store

    def _answer(self, prompted: Image.Image, sentence: str) -> str:
        """Detective-VLM's raw answer (its generation reads the image from a file)."""
        model, processor, meta = self.detective
        with tempfile.TemporaryDirectory(prefix="vpmel-link-") as tmp:
            prompted.save(Path(tmp) / PROMPTED)
            answer = model_answer_fn(model, processor, Path(tmp), meta.prompt_format, 1, 16)
            rows = pd.DataFrame({"sentence": [sentence], "prompted_image": [PROMPTED]})
            return answer(rows)[0]

    @torch.no_grad()
    def link(
        self, image_path: Path, box: list[float], text: str = "", top_k: int = 5
    ) -> LinkResult:
        started = time.perf_counter()
        try:
            loaded = load_image(Path(image_path), self.max_side)
        except ImageProblem as problem:
            raise LinkError(f"{image_path}: {problem}") from problem
        check_box(box, *loaded.original_size)
        scaled = [v * loaded.scale for v in box]
        prompted = draw_prompt(loaded.image, scaled, self.style)
        raw = self._answer(prompted, text) if self.detective is not None else None
        m_w = answer_strings(parsed_rows(["q"], [raw])).get("q", "") if raw is not None else ""
        # IIER* never saw the prompt: it reads the unprompted image
        image = prompted if self.inputs.use_prompted_image else loaded.image
        texts = TextBank.from_pairs(self.tokenizer, [(m_w, text)], self.inputs.max_text_length)
        batch = {"pixel_values": self.to_pixels([image])} | texts.batch(torch.tensor([0]))
        mention = self.model.mention_side(self.model.encode(batch))
        scores = score_block_rows(self.model, mention, self.store, 4096)
        rows = torch.arange(scores.shape[1]).expand_as(scores)
        top_s, top_r = ordered_top_k(scores, rows, min(top_k, scores.shape[1]), rows_sorted=True)
        entities = []
        for rank, (s, r) in enumerate(zip(top_s[0].tolist(), top_r[0].tolist(), strict=True), 1):
            row = self.kb.iloc[int(r)]
            etype = row["type"] if isinstance(row["type"], str) else None
            entities.append(Entity(rank, str(row["qid"]), str(row["name"]), etype, float(s)))
        return LinkResult(entities, raw, m_w, time.perf_counter() - started, prompted)
