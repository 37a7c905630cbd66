"""IIER's inputs: mention and entity texts and images, batches for training and ranking.

* Mention text (§5.3): the pair ``(m_w, m_s)`` → ``[CLS] m_w [SEP] m_s [SEP]`` through the
  tokenizer's pair encoding, where ``m_w`` is the cached Detective-VLM answer
  ``"{name} {type}"`` when there is one and ``""`` otherwise (VP-MEL has no mention words;
  the ``mention`` column is never used). Entity text: ``(name, description)``.
* Mention image: the prompted image (red box drawn in, relative to the VPWiki folder) or,
  for the paper's IIER* ablation, the unprompted ``source_image`` (relative to the dataset).
  Entity image: the first of the KB row's images.
* A mention whose image is missing or cannot be decoded is dropped before anything is
  built and listed by id with the reason (:attr:`IIERInputs.dropped_images`); nothing is fed
  in its place. A KB entity without any image stays a candidate (the ranking is over the
  whole KB) and is encoded from a blank picture; those entities are counted and listed
  (:attr:`ImageBank.problems`). An entity image that is listed but unreadable is an error.

Texts are tokenised once up front (padded to the longest text, at most ``max_text_length``
tokens) and each batch is trimmed to its own longest text; padding is masked by the model.
When the text tower is frozen its hidden states are computed once (:meth:`TextBank.cache`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch import Tensor

from vpmel.data.images import ImageProblem, open_rgb, resolve_inside

BLANK_GREY = (127, 127, 127)  # the picture of a KB entity that has no image


@dataclass(frozen=True)
class InputConfig:
    """How inputs are built; stored with the checkpoint so evaluation builds the same."""

    use_answers: bool = True  # m_w = Detective-VLM answer (False: always "")
    use_prompted_image: bool = True  # False: the unprompted source image (IIER*)
    max_text_length: int = 40


# ------------------------------------------------------------------------------ texts


def answer_strings(answers: pd.DataFrame) -> dict[str, str]:
    """Mention id → ``m_w`` from the answers table (id, raw, name, type).

    An answer that parses (a name and one of the seven types) gives ``"{name} {type}"``; one
    that does not (an untuned VLM's free text, the paper's IIER‡) gives its raw text,
    whitespace-normalised — never dropped, since that noise is what IIER‡ measures; an empty
    answer gives no entry, i.e. ``m_w = ""``.
    """
    for column in ("id", "raw", "name", "type"):
        if column not in answers.columns:
            raise ValueError(f"answers table lacks column {column!r}")
    out: dict[str, str] = {}
    for row in answers.itertuples(index=False):
        name, kind = (x.strip() if isinstance(x, str) else "" for x in (row.name, row.type))
        if name and kind:
            out[str(row.id)] = f"{name} {kind}"
        elif isinstance(row.raw, str) and row.raw.strip():
            out[str(row.id)] = " ".join(row.raw.split())
        elif name or kind:
            out[str(row.id)] = name or kind
    return out


def mention_text_pairs(
    mentions: pd.DataFrame, answers: Mapping[str, str] | None, use_answers: bool = True
) -> list[tuple[str, str]]:
    """``(m_w, m_s)`` per mention: the answer (or "") and the sentence."""
    answers = answers if (answers is not None and use_answers) else {}
    return [
        (answers.get(str(i), ""), str(s))
        for i, s in zip(mentions["id"], mentions["sentence"], strict=True)
    ]


def entity_text_pairs(kb: pd.DataFrame) -> list[tuple[str, str]]:
    """``(name, attributes)`` per KB row (attributes = the description column)."""
    return [(str(n), str(d)) for n, d in zip(kb["name"], kb["description"].fillna(""), strict=True)]


@dataclass
class TextBank:
    """Tokenised text pairs, padded to a common width; optionally the frozen tower's output."""

    input_ids: Tensor  # [N, W]
    attention_mask: Tensor  # [N, W]
    token_type_ids: Tensor | None = None
    hidden: Tensor | None = None  # [N, W, width] when cached

    @classmethod
    def from_pairs(cls, tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> TextBank:
        first = [a for a, _ in pairs]
        second = [b for _, b in pairs]
        enc = tokenizer(
            first,
            second,
            padding="max_length",
            truncation="longest_first",
            max_length=max_length,
            return_tensors="pt",
        )
        width = int(enc["attention_mask"].sum(1).max()) if len(pairs) else 1
        tti = enc.get("token_type_ids")
        return cls(
            enc["input_ids"][:, :width],
            enc["attention_mask"][:, :width],
            tti[:, :width] if tti is not None else None,
        )

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def batch(self, rows: Tensor, trim: bool = True) -> dict[str, Tensor]:
        """The model's text inputs for ``rows``; trimmed to the batch's longest text."""
        mask = self.attention_mask[rows]
        width = max(1, int(mask.sum(1).max())) if trim else self.width
        out = {"attention_mask": mask[:, :width]}
        if self.hidden is not None:
            out["text_hidden"] = self.hidden[rows, :width]
        else:
            out["input_ids"] = self.input_ids[rows, :width]
            if self.token_type_ids is not None:
                out["token_type_ids"] = self.token_type_ids[rows, :width]
        return out


# ------------------------------------------------------------------------------ images


@dataclass
class ImageBank:
    """Images by row, preprocessed by the encoder's image processor on demand."""

    root: Path
    paths: list[str | None]  # relative to root; None = the row has no image
    to_pixels: Callable[[list[Image.Image]], Tensor]
    image_size: int
    keep_pixels: bool = True  # keep preprocessed pixels in memory (small demo images)
    max_side: int | None = 1024
    problems: dict[int, str] = field(default_factory=dict)  # row -> reason
    vision_cls: Tensor | None = None  # a frozen tower's cached outputs, [N, k, width]
    vision_last: Tensor | None = None  # [N, P, width]
    _cached: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, row: int) -> Image.Image:
        rel = self.paths[row]
        if rel is None:
            self.problems[row] = "no_image"
            return Image.new("RGB", (self.image_size, self.image_size), BLANK_GREY)
        try:
            return open_rgb(resolve_inside(self.root, rel), self.max_side)
        except ImageProblem as problem:
            raise ValueError(f"{self.root / rel} (row {row}): {problem}") from problem

    def inputs(self, rows: Sequence[int]) -> dict[str, Tensor]:
        """``pixel_values`` for ``rows``, or the cached tower outputs when there are any."""
        if self.vision_cls is not None and self.vision_last is not None:
            index = torch.as_tensor(list(rows), dtype=torch.long)
            return {"vision_cls": self.vision_cls[index], "vision_last": self.vision_last[index]}
        return {"pixel_values": self.pixels(rows)}

    def pixels(self, rows: Sequence[int]) -> Tensor:
        rows = [int(r) for r in rows]
        todo = [r for r in rows if r not in self._cached]
        fresh = self.to_pixels([self._load(r) for r in todo]) if todo else None
        got = {r: fresh[i] for i, r in enumerate(todo)} if fresh is not None else {}
        if self.keep_pixels:
            self._cached.update(got)
        return torch.stack([self._cached[r] if r in self._cached else got[r] for r in rows])


@dataclass
class Side:
    """One side (mentions or entities): images and texts by row."""

    images: ImageBank
    texts: TextBank

    def inputs(self, rows: Sequence[int] | Tensor, trim: bool = True) -> dict[str, Tensor]:
        rows = torch.as_tensor(rows, dtype=torch.long)
        return self.images.inputs(rows.tolist()) | self.texts.batch(rows, trim)


# ------------------------------------------------------------------------------ tables


def kb_rows(kb: pd.DataFrame) -> dict[str, int]:
    """QID → KB row; duplicate QIDs are an error (the KB size is read, never configured)."""
    dup = kb["qid"][kb["qid"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"KB has duplicate QIDs, e.g. {dup[:5]}")
    return {q: i for i, q in enumerate(kb["qid"])}


def gold_rows(mentions: pd.DataFrame, rows: Mapping[str, int]) -> tuple[Tensor, list[str]]:
    """KB row of each mention's gold QID (-1 when absent) and the ids of absent ones."""
    gold = [rows.get(str(q), -1) for q in mentions["qid"]]
    missing = [str(i) for i, g in zip(mentions["id"], gold, strict=True) if g < 0]
    return torch.tensor(gold, dtype=torch.long), missing


def entity_image_paths(kb: pd.DataFrame) -> list[str | None]:
    return [str(imgs[0]) if imgs is not None and len(imgs) else None for imgs in kb["images"]]


def mention_image_paths(
    mentions: pd.DataFrame, vpwiki: Path, dataset: Path, use_prompted: bool
) -> tuple[Path, list[str]]:
    """(root, relative paths) of the mention images the model sees."""
    if use_prompted:
        return Path(vpwiki), [str(p) for p in mentions["prompted_image"]]
    return Path(dataset), [str(p) for p in mentions["source_image"]]


# ------------------------------------------------------------------------------ training


class ContrastiveCollator:
    """A training batch: B mentions and their *distinct* gold entities (§5.5).

    ``targets[j]`` is the column of mention j's gold entity among the batch's U distinct
    entities, so mentions that share a gold entity are never each other's negatives.
    """

    def __init__(self, mentions: Side, entities: Side, gold: Tensor) -> None:
        self.mentions, self.entities, self.gold = mentions, entities, gold

    def __call__(self, rows: Sequence[int]) -> dict[str, object]:
        rows = torch.as_tensor(rows, dtype=torch.long)
        unique, targets = torch.unique(self.gold[rows], sorted=True, return_inverse=True)
        return {
            "mention": self.mentions.inputs(rows),
            "entity": self.entities.inputs(unique),
            "targets": targets,
        }


def epoch_batches(
    n: int,
    batch_size: int,
    seed: int,
    epoch: int,
    num_processes: int = 1,
    process_index: int = 0,
    multiple_of: int = 1,
) -> list[list[int]]:
    """This process's mention batches for ``epoch``: a seeded permutation cut into full
    batches (the last partial batch is dropped), dealt round-robin to the processes; every
    process gets the same number of batches, a multiple of ``multiple_of`` (gradient
    accumulation)."""
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    order = torch.randperm(n, generator=g).tolist()
    full = [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    per_process = len(full) // num_processes
    per_process -= per_process % multiple_of
    return full[process_index::num_processes][:per_process]


def steps_per_epoch(n: int, batch_size: int, num_processes: int, accumulation: int) -> int:
    """Optimizer steps per epoch under :func:`epoch_batches`."""
    per_process = (n // batch_size) // num_processes
    return math.floor(per_process / accumulation)


def index_batches(
    side: Side, rows: Sequence[int], gold: Tensor, size: int
) -> Iterable[tuple[dict[str, Tensor], Tensor]]:
    """(inputs, gold KB rows) for ranking ``rows`` of a mention side, ``size`` at a time."""
    rows = list(rows)
    for lo in range(0, len(rows), size):
        chunk = rows[lo : lo + size]
        yield side.inputs(chunk), gold[torch.as_tensor(chunk, dtype=torch.long)]


def entity_batches(side: Side, lo: int, hi: int, size: int) -> Iterable[dict[str, Tensor]]:
    """Model inputs of KB rows [lo, hi), ``size`` at a time."""
    for start in range(lo, hi, size):
        yield side.inputs(list(range(start, min(hi, start + size))))


# ------------------------------------------------------------------------------ everything


@dataclass
class IIERInputs:
    """Mentions (kept rows of the VPWiki table) and KB, ready for IIER."""

    mentions_table: pd.DataFrame
    kb_table: pd.DataFrame
    mentions: Side
    entities: Side
    gold: Tensor  # KB row per kept mention
    no_gold: list[str]  # ids of mentions dropped because their gold QID is not in the KB
    answered: int  # mentions whose m_w is a Detective-VLM answer
    dropped_images: dict[str, str] = field(default_factory=dict)  # mention id -> reason

    def rows(self, split: str) -> list[int]:
        return [i for i, s in enumerate(self.mentions_table["split"]) if s == split]

    def cache_frozen(self, model, batch_size: int = 64, store=None) -> dict[str, list[int]]:
        """Give every input the output of each frozen tower of ``model`` (an IIER): from
        ``store`` (a :class:`vpmel.iier.features.FeatureStore`) where it has them, else by
        running the tower once. Returns {"text"/"vision": [rows from the store, rows
        computed]} for the towers that are frozen."""
        from vpmel.iier.features import fill_images, fill_texts

        done: dict[str, list[int]] = {}
        if model.text_frozen:
            counts = [fill_texts(s.texts, model, store, batch_size) for s in self._sides()]
            done["text"] = [sum(c[0] for c in counts), sum(c[1] for c in counts)]
        if model.vision_frozen:
            counts = [fill_images(s.images, model, store, batch_size) for s in self._sides()]
            done["vision"] = [sum(c[0] for c in counts), sum(c[1] for c in counts)]
        return done

    def _sides(self) -> tuple[Side, Side]:
        return self.mentions, self.entities

    def image_problems(self) -> dict[str, dict[str, str]]:
        """{"mentions": {id: reason}, "entities": {qid: reason}} for the quality report."""
        e_ids = self.kb_table["qid"].tolist()
        return {
            "mentions": dict(self.dropped_images),
            "entities": {
                str(e_ids[r]): why for r, why in sorted(self.entities.images.problems.items())
            },
        }


def load_inputs(
    mentions: pd.DataFrame,
    kb: pd.DataFrame,
    vpwiki: Path,
    dataset: Path,
    tokenizer,
    to_pixels: Callable[[list[Image.Image]], Tensor],
    image_size: int,
    cfg: InputConfig,
    answers: Mapping[str, str] | None = None,
    cache_images: bool = True,
) -> IIERInputs:
    """Build both sides from the VPWiki mentions table and the KB table."""
    rows = kb_rows(kb)
    gold, missing = gold_rows(mentions, rows)
    keep = (gold >= 0).numpy()
    mentions = mentions[keep].reset_index(drop=True)
    gold = gold[torch.as_tensor(keep)]
    root, paths = mention_image_paths(mentions, vpwiki, dataset, cfg.use_prompted_image)
    bad = unusable_images(root, paths)
    dropped = {str(mentions["id"].iloc[i]): why for i, why in bad.items()}
    if bad:
        ok = [i for i in range(len(mentions)) if i not in bad]
        mentions = mentions.iloc[ok].reset_index(drop=True)
        gold = gold[torch.as_tensor(ok, dtype=torch.long)]
        paths = [paths[i] for i in ok]
    pairs = mention_text_pairs(mentions, answers, cfg.use_answers)
    m_side = Side(
        ImageBank(root, list(paths), to_pixels, image_size, cache_images),
        TextBank.from_pairs(tokenizer, pairs, cfg.max_text_length),
    )
    e_side = kb_side(kb, dataset, tokenizer, to_pixels, image_size, cfg, cache_images)
    return IIERInputs(
        mentions,
        kb.reset_index(drop=True),
        m_side,
        e_side,
        gold,
        missing,
        sum(1 for a, _ in pairs if a),
        dropped,
    )


def kb_side(
    kb: pd.DataFrame,
    dataset: Path,
    tokenizer,
    to_pixels: Callable[[list[Image.Image]], Tensor],
    image_size: int,
    cfg: InputConfig,
    cache_images: bool = True,
) -> Side:
    """The entity side: each KB row's first image and ``(name, attributes)`` text."""
    return Side(
        ImageBank(Path(dataset), entity_image_paths(kb), to_pixels, image_size, cache_images),
        TextBank.from_pairs(tokenizer, entity_text_pairs(kb), cfg.max_text_length),
    )


def unusable_images(root: Path, paths: Sequence[str]) -> dict[int, str]:
    """Row -> reason for each image that is missing or whose header cannot be read."""
    out = {}
    for i, rel in enumerate(paths):
        try:
            with Image.open(resolve_inside(root, rel)) as img:
                img.verify()
        except ImageProblem as problem:
            out[i] = str(problem.reason)
        except FileNotFoundError:
            out[i] = "missing_image"
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            out[i] = "unreadable_image"
    return out


def read_answers(path: Path) -> dict[str, str]:
    """The answers table (Parquet: id, raw, name, type) as id → answer.

    A missing table is an error, never an empty m_w for every mention: run the `answers`
    stage, or switch answers off (``train.use_answers: false``, the paper's IIER†)."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path}: no Detective-VLM answers; run `dvc repro answers` "
            "or set train.use_answers: false (IIER†)"
        )
    return answer_strings(pd.read_parquet(path))
