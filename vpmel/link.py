"""Link marked image regions (and their captions) to the knowledge base: ``vpmel link``.

:class:`Linker` loads the trained IIER checkpoint, the KB and — when there is one — the
tuned Detective-VLM once; the KB side of IIER is encoded once and cached on disk
(``kb_index/<fingerprint>.safetensors`` inside the cache folder, keyed by the checkpoint
and the KB table, so a retrained model or a changed KB never reads a stale index). Each
region then gets its visual prompt drawn, Detective-VLM's ``"{name} {type}"`` answer (m_w)
when the checkpoint was trained with answers, and the full IIER score against every KB
entity; :meth:`Linker.link_many` scores many regions a batch at a time.

Everything a user can get wrong — the image, the box, the checkpoint, dataset and
Detective-VLM files, the file to save the prompted image to, the lines of a batch file —
is checked by the functions at the top of this module *before* any model loads: they
need only Pillow and numpy, and torch, transformers and pandas are imported lazily by
:class:`Linker`, so a mistake is reported in well under a second, not after the model's
12–24 s start-up.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from vpmel.atomic import atomic_file
from vpmel.data.images import ImageProblem, LoadedImage, load_image
from vpmel.iier.checkpoint import CONFIG_FILE, HEAD_FILE, checkpoint_encoder, seed_checkpoints
from vpmel.prompts import PromptStyle, draw_prompt

if TYPE_CHECKING:
    from vpmel.iier.model import EntitySide

PROMPTED = "prompted.png"
MAX_SIDE = 1024
#: decoded images a batch keeps from checking its lines to linking them (bytes of RGB)
KEEP_DECODED_BYTES = 256 << 20


class LinkError(Exception):
    """A problem with the user's input or files, said in one line."""


# ------------------------------------------------------------------- checks (no torch)


def parse_box(value: str | Sequence[Any]) -> list[float]:
    """``"X1,Y1,X2,Y2"`` or a list of four numbers → four finite floats."""
    parts: list[Any] = []
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
    elif isinstance(value, list | tuple):
        parts = list(value)
    try:
        if any(isinstance(p, bool) for p in parts):
            raise TypeError("a boolean is not a coordinate")
        box = [float(p) for p in parts]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise LinkError(f"box must be X1,Y1,X2,Y2 (four numbers), got {value!r}")
    return box


def check_box(box: list[float], width: int, height: int) -> None:
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise LinkError(f"box {box} is empty or inverted (need X1 < X2 and Y1 < Y2)")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise LinkError(f"box {box} is outside the image ({width} x {height} pixels)")


def open_region(image_path: Path, box: list[float], max_side: int = MAX_SIDE) -> LoadedImage:
    """Decode ``image_path`` and check that ``box`` lies inside it."""
    try:
        loaded = load_image(Path(image_path), max_side)
    except ImageProblem as problem:
        raise LinkError(f"{image_path}: {problem}") from None
    check_box(box, *loaded.original_size)
    return loaded


def check_model_files(
    model_dir: Path,
    dataset: Path,
    detective_dir: Path | None = None,
    encoder_dir: Path | None = None,
) -> bool:
    """Check that the files :class:`Linker` reads are there, without loading anything;
    returns whether the checkpoint reads Detective-VLM answers.

    ``model_dir``: a checkpoint or a `train` output (its first seed is read);
    ``detective_dir`` None: Detective-VLM is not used (``--no-vlm``); ``encoder_dir``: the
    encoder folder instead of the one the checkpoint records (checked against its hash)."""
    model_dir, dataset = Path(model_dir), Path(dataset)
    try:
        checkpoint = seed_checkpoints(model_dir)[0][1]
    except FileNotFoundError:
        raise LinkError(
            f"{model_dir}: no trained IIER checkpoint (run `dvc repro train`)"
        ) from None
    meta_path = checkpoint / CONFIG_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        extra = meta.get("extra") or {}
        inputs = extra.get("inputs") or {}
        if not isinstance(meta["config"], dict) or not isinstance(inputs, dict):
            raise ValueError("config or inputs is not an object")
    except (OSError, ValueError, KeyError, AttributeError) as problem:
        raise LinkError(f"{meta_path}: not a readable IIER checkpoint ({problem})") from None
    if not (checkpoint / HEAD_FILE).is_file():
        raise LinkError(f"{checkpoint}: incomplete IIER checkpoint, it has no {HEAD_FILE}")
    try:
        checkpoint_encoder(checkpoint, meta, encoder_dir)
    except (OSError, ValueError) as problem:
        raise LinkError(str(problem)) from None
    if not (dataset / "kb.parquet").is_file():
        raise LinkError(f"{dataset}: no kb.parquet (run `dvc repro import`)")
    use_answers = bool(inputs.get("use_answers", True))  # InputConfig's default
    if use_answers and detective_dir is not None:
        if not (Path(detective_dir) / "detective.json").is_file():
            raise LinkError(
                f"{detective_dir}: the checkpoint reads Detective-VLM answers but there is "
                "no tuned Detective-VLM (run `dvc repro answers`, or pass --no-vlm)"
            )
    return use_answers


def check_output_file(path: Path, what: str) -> None:
    """``path`` can be created or overwritten: not a folder, its folder exists, writable."""
    path = Path(path)
    if path.is_dir():
        raise LinkError(f"{what} {path} is a folder, not a file name")
    parent = path.parent
    if not parent.is_dir():
        raise LinkError(f"{what} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise LinkError(f"{what} {path}: no permission to write there")


def check_save_path(path: Path) -> str:
    """The Pillow format to save the prompted (RGB) image to ``path`` in, after checking
    that Pillow writes RGB images in the format its suffix names and that the file can be
    written there."""
    path = Path(path)
    if path.is_dir():
        raise LinkError(f"--save-prompted {path} is a folder, not a file name")
    Image.init()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        what = f"{path.suffix!r} is not" if path.suffix else "a name without a suffix names"
        raise LinkError(f"--save-prompted {path}: {what} an image format Pillow can write "
                        "(use .png, .jpg, .webp, ...)")  # fmt: skip
    try:  # some formats are writable but not from RGB (e.g. XBM is 1-bit only)
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except Exception as problem:  # Pillow's writers raise all sorts
        raise LinkError(f"--save-prompted {path}: Pillow cannot write RGB images as {fmt} "
                        f"({problem})") from None  # fmt: skip
    check_output_file(path, "--save-prompted")
    return fmt


# --------------------------------------------------------------------------- batch files


@dataclass
class Region:
    """One marked region to link; ``loaded`` is its decoded image once it was checked."""

    image_path: Path
    box: list[float]
    text: str = ""
    style: PromptStyle | None = None  # None: the Linker's
    loaded: LoadedImage | None = field(default=None, repr=False)


@dataclass
class BatchLine:
    """One line of a batch file: a checked :class:`Region`, or why it cannot be linked."""

    number: int  # 1-based line number in the file
    id: Any  # the line's "id" (None when it has none)
    region: Region | None
    error: str | None = None  # "line N: problem"


BATCH_FIELDS = ("image", "box", "text", "id", "shape")


def read_batch(
    path: Path,
    style: PromptStyle = PromptStyle(),
    max_side: int = MAX_SIDE,
    keep_bytes: int = KEEP_DECODED_BYTES,
) -> list[BatchLine]:
    """Read and check a JSON-lines batch file; every non-blank line becomes a
    :class:`BatchLine`. A line is ``{"image": PATH, "box": [X1, Y1, X2, Y2] or
    "X1,Y1,X2,Y2", "text": ..., "id": ..., "shape": ...}`` (text, id and shape optional;
    other keys are ignored); relative image paths are read from the file's folder. Each
    image is decoded once to check it and its box; decoded images are kept for linking
    while they fit in ``keep_bytes`` (the rest are decoded again then)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        raise LinkError(f"--batch {path}: cannot read it ({problem})") from None
    decoded: dict[Path, LoadedImage | str] = {}  # kept images, and why others are bad
    kept = 0
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        item: Any = None
        try:
            item = json.loads(raw)
            if not isinstance(item, dict):
                raise LinkError(f"expected a JSON object with {', '.join(BATCH_FIELDS)}")
            region = _batch_region(item, path.parent, style)
            loaded = decoded.get(region.image_path)
            if loaded is None:
                try:
                    loaded = load_image(region.image_path, max_side)
                    size = loaded.image.width * loaded.image.height * 3
                    if kept + size <= keep_bytes:
                        decoded[region.image_path], kept = loaded, kept + size
                except ImageProblem as problem:
                    loaded = decoded[region.image_path] = f"{region.image_path}: {problem}"
            if isinstance(loaded, str):
                raise LinkError(loaded)
            check_box(region.box, *loaded.original_size)
            if decoded.get(region.image_path) is loaded:
                region.loaded = loaded
            lines.append(BatchLine(number, item.get("id"), region))
        except json.JSONDecodeError as problem:
            error = f"line {number}: bad JSON ({problem.msg} at column {problem.colno})"
            lines.append(BatchLine(number, None, None, error))
        except LinkError as problem:
            line_id = item.get("id") if isinstance(item, dict) else None
            lines.append(BatchLine(number, line_id, None, f"line {number}: {problem}"))
    return lines


def _batch_region(item: dict[str, Any], root: Path, style: PromptStyle) -> Region:
    for key in ("image", "box"):
        if key not in item:
            raise LinkError(f"no {key!r}")
    image, text, shape = item["image"], item.get("text", ""), item.get("shape")
    if not isinstance(image, str) or not image:
        raise LinkError(f"'image' must be a file path, got {image!r}")
    if not isinstance(text, str):
        raise LinkError(f"'text' must be a string, got {text!r}")
    line_id = item.get("id")
    if line_id is not None and (isinstance(line_id, bool) or
                                not isinstance(line_id, str | int | float)):  # fmt: skip
        raise LinkError(f"'id' must be a string or a number, got {line_id!r}")
    if shape is not None:
        try:
            style = replace(style, shape=shape)
        except ValueError as problem:
            raise LinkError(str(problem)) from None
    return Region(root / image, parse_box(item["box"]), text, style)


# ------------------------------------------------------------------------------- linking


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


@dataclass
class _Prompted:
    """A region ready for IIER: its prompted image, what IIER reads, m_w."""

    prompted: Image.Image
    image: Image.Image
    text: str
    answer: str | None
    m_w: str
    seconds: float


class Linker:
    """IIER + KB index (+ Detective-VLM), loaded once; see the module docstring."""

    def __init__(
        self,
        model_dir: Path = Path("models/iier"),
        dataset: Path = Path("data/dataset"),
        detective_dir: Path | None = Path("models/detective"),
        cache_dir: Path = Path("data/link"),
        style: PromptStyle = PromptStyle(),
        max_side: int = MAX_SIDE,
        candidates: int | None = None,
        encoder_dir: Path | None = None,
    ) -> None:
        from vpmel.data.schema import read_kb
        from vpmel.iier.data import InputConfig
        from vpmel.iier.model import IIER

        started = time.perf_counter()
        model_dir, dataset = Path(model_dir), Path(dataset)
        use_answers = check_model_files(model_dir, dataset, detective_dir, encoder_dir)
        self.warnings: list[str] = []  # problems that did not stop it (e.g. an unwritable cache)
        self.model, extra = IIER.load(model_dir, encoder_dir)
        self.inputs = InputConfig(**extra.get("inputs", {}))
        self.kb = read_kb(dataset)
        self.style = style
        self.max_side = max_side
        enc = self.model.encoder
        self.store = self._kb_index(model_dir, dataset, Path(cache_dir))
        self.candidates = None  # None: IIER scores the whole KB (exact ranking)
        if candidates is not None:  # a FAISS stage picks `candidates` entities per region
            from vpmel.iier.candidates import CandidateConfig, Stored, TwoStageRanker, store_index

            cfg = CandidateConfig(k=candidates)
            index = store_index(self.model, self.store, cfg)
            self.candidates = TwoStageRanker(
                self.model, index, Stored(self.store), len(self.kb), candidates
            )
        self.detective = None
        if use_answers and detective_dir is not None:
            from vpmel.detective.model import load_detective

            model, processor, meta = load_detective(Path(detective_dir))
            self.detective = (model, processor, meta)
        self.to_pixels, self.image_size = enc.pixel_values, enc.image_size
        self.tokenizer = enc.tokenizer
        self.startup_seconds = time.perf_counter() - started

    def _kb_index(self, model_dir: Path, dataset: Path, cache_dir: Path) -> EntitySide:
        import torch
        from safetensors.torch import load_file, save_file

        from vpmel.detective.answers import fingerprint
        from vpmel.iier.data import entity_batches, kb_side
        from vpmel.iier.model import EntitySide
        from vpmel.iier.retrieval import build_entity_store

        key = fingerprint([model_dir, dataset / "kb.parquet"])
        path = cache_dir / "kb_index" / f"{key}.safetensors"
        if path.is_file():
            return EntitySide(**load_file(path))
        enc = self.model.encoder
        side = kb_side(self.kb, dataset, enc.tokenizer, enc.pixel_values, enc.image_size,
                       self.inputs, cache_images=False)  # fmt: skip
        with torch.no_grad():
            store = build_entity_store(
                self.model, entity_batches(side, 0, len(self.kb), 64), len(self.kb),
                side.texts.width,
            )  # fmt: skip
        try:
            atomic_file(path, lambda tmp: save_file(
                {k: v.contiguous() for k, v in vars(store).items()}, tmp))  # fmt: skip
        except OSError as problem:
            self.warnings.append(f"the KB index is not cached ({problem})")
        return store

    def _answer(self, prompted: Image.Image, sentence: str) -> str:
        """Detective-VLM's raw answer (its generation reads the image from a file)."""
        import pandas as pd

        from vpmel.detective.answers import model_answer_fn

        model, processor, meta = self.detective
        with tempfile.TemporaryDirectory(prefix="vpmel-link-") as tmp:
            prompted.save(Path(tmp) / PROMPTED)
            answer = model_answer_fn(model, processor, Path(tmp), meta.prompt_format, 1, 16)
            rows = pd.DataFrame({"sentence": [sentence], "prompted_image": [PROMPTED]})
            return answer(rows)[0]

    def link(
        self, image_path: Path, box: list[float], text: str = "", top_k: int = 5
    ) -> LinkResult:
        """The ``top_k`` KB entities for the region ``box`` of ``image_path``."""
        result = next(self.link_many([Region(Path(image_path), box, text)], top_k))
        if isinstance(result, LinkError):
            raise result
        return result

    def link_many(
        self, regions: Iterable[Region], top_k: int = 5, batch_size: int = 16
    ) -> Iterator[LinkResult | LinkError]:
        """Link ``regions`` in order, one result each as soon as its batch is scored
        (IIER reads ``batch_size`` regions at a time; Detective-VLM answers one region at a
        time, exactly as for a single link). A region whose image or box turns out bad
        yields its :class:`LinkError` and does not stop the others."""
        chunk: list[Region] = []
        for region in regions:
            chunk.append(region)
            if len(chunk) == batch_size:
                yield from self._link_chunk(chunk, top_k)
                chunk = []
        if chunk:
            yield from self._link_chunk(chunk, top_k)

    def _prompt(self, region: Region) -> _Prompted:
        from vpmel.detective.answers import parsed_rows
        from vpmel.iier.data import answer_strings

        started = time.perf_counter()
        loaded = region.loaded
        if loaded is None:
            loaded = open_region(region.image_path, region.box, self.max_side)
        else:
            check_box(region.box, *loaded.original_size)
        scaled = [v * loaded.scale for v in region.box]
        prompted = draw_prompt(loaded.image, scaled, region.style or self.style)
        raw = self._answer(prompted, region.text) if self.detective is not None else None
        m_w = answer_strings(parsed_rows(["q"], [raw])).get("q", "") if raw is not None else ""
        # IIER* never saw the prompt: it reads the unprompted image
        image = prompted if self.inputs.use_prompted_image else loaded.image
        seconds = time.perf_counter() - started
        return _Prompted(prompted, image, region.text, raw, m_w, seconds)

    def _link_chunk(self, regions: list[Region], top_k: int) -> list[LinkResult | LinkError]:
        ready: list[_Prompted | LinkError] = []
        for region in regions:
            try:
                ready.append(self._prompt(region))
            except LinkError as problem:
                ready.append(problem)
        good = [p for p in ready if isinstance(p, _Prompted)]
        ranked = iter(self._rank(good, top_k) if good else [])
        return [p if isinstance(p, LinkError) else next(ranked) for p in ready]

    def _rank(self, items: list[_Prompted], top_k: int) -> list[LinkResult]:
        import torch

        from vpmel.iier.data import TextBank
        from vpmel.iier.retrieval import ordered_top_k, score_block_rows

        started = time.perf_counter()
        pairs = [(p.m_w, p.text) for p in items]
        with torch.no_grad():
            texts = TextBank.from_pairs(self.tokenizer, pairs, self.inputs.max_text_length)
            pixels = self.to_pixels([p.image for p in items])
            batch = {"pixel_values": pixels} | texts.batch(torch.arange(len(items)))
            mention = self.model.mention_side(self.model.encode(batch))
            if self.candidates is None:
                scores = score_block_rows(self.model, mention, self.store, 4096)
                rows = torch.arange(scores.shape[1]).expand_as(scores)
                k = min(top_k, scores.shape[1])
                top_s, top_r = ordered_top_k(scores, rows, k, rows_sorted=True)
            else:
                self.candidates.k = top_k
                no_gold = torch.full((len(items),), -1)
                got = self.candidates.rank_side(mention, no_gold)
                found = got["top_rows"] >= 0  # a short candidate list leaves gaps
                top_s = [s[f] for s, f in zip(got["top_scores"], found, strict=True)]
                top_r = [r[f] for r, f in zip(got["top_rows"], found, strict=True)]
        share = (time.perf_counter() - started) / len(items)
        results = []
        top_s, top_r = ([x.tolist() for x in t] for t in (top_s, top_r))
        for item, s_row, r_row in zip(items, top_s, top_r, strict=True):
            entities = []
            for rank, (s, r) in enumerate(zip(s_row, r_row, strict=True), 1):
                row = self.kb.iloc[int(r)]
                etype = row["type"] if isinstance(row["type"], str) else None
                entities.append(Entity(rank, str(row["qid"]), str(row["name"]), etype, float(s)))
            results.append(
                LinkResult(entities, item.answer, item.m_w, item.seconds + share, item.prompted)
            )
        return results
