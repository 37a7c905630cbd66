"""Detective-VLM answers for every mention, cached in Parquet and resumable.

The cache is a folder per model fingerprint (a hash of the model files and the generation
settings), holding Parquet part files with columns ``id, raw, name, type``. Each chunk of
answers is written as a new part file (written to a temporary name, then renamed), so a
crash loses at most the chunk in flight; a rerun reads the parts, skips every cached id and
generates only the rest. Reading drops duplicate ids, so even a crash during
:meth:`AnswerCache.compact` (which merges the parts into one) leaves a valid cache. A
different model or setting gets a different folder: the tuned and the untuned (IIER‡)
answers live side by side and switching between them regenerates nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.progress import Progress

from vpmel.atomic import atomic_file
from vpmel.data.subsets import named_mentions, subset_key
from vpmel.detective.model import format_prompt, normalise, parse_answer, render_instruction
from vpmel.detective.model import image_token as processor_image_token
from vpmel.detective.training import load_image
from vpmel.stats import independent_bootstrap

CACHE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("type", pa.string()),
    ]
)
ANSWER_COLUMNS = ("id", "split", "raw", "name", "type")

AnswerFn = Callable[[pd.DataFrame], Sequence[str]]


# ---------------------------------------------------------------------------- fingerprints


OOF_FILE = "oof_answers.parquet"  # the detective stage's cross-fitted train answers


def with_out_of_fold(table: pd.DataFrame, oof: pd.DataFrame) -> pd.DataFrame:
    """``table`` (id, split, raw, name, type) with each train row's answer replaced by its
    out-of-fold answer; every train mention must have one."""
    oof = oof.astype({"id": str}).set_index("id")
    train = table["split"] == "train"
    missing = sorted(set(table.loc[train, "id"]) - set(oof.index))
    if missing:
        raise ValueError(f"{OOF_FILE}: no out-of-fold answer for train mentions {missing[:5]}")
    out = table.copy()
    for column in ("raw", "name", "type"):
        fold_answer = oof[column].to_dict()
        out[column] = [
            (v if isinstance(v := fold_answer[i], str) else None) if t else old
            for i, t, old in zip(out["id"], train, out[column], strict=True)
        ]
    return out


def fingerprint(paths: Iterable[Path] = (), **settings: Any) -> str:
    """A short hash of the files under ``paths`` (names and contents) and ``settings``."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            digest.update(str(path.relative_to(root) if root.is_dir() else path.name).encode())
            with open(path, "rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------- the cache


class AnswerCache:
    """Answers of one model (one fingerprint) under ``root/<fingerprint>/part-*.parquet``."""

    def __init__(self, root: Path, key: str) -> None:
        self.folder = Path(root) / key
        self.key = key

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def load(self) -> pd.DataFrame:
        """Every cached answer, one row per id."""
        parts = self.parts()
        if not parts:
            return CACHE_SCHEMA.empty_table().to_pandas()
        table = pa.concat_tables([pq.read_table(p, schema=CACHE_SCHEMA) for p in parts])
        return table.to_pandas().drop_duplicates("id", keep="first").reset_index(drop=True)

    def cached_ids(self) -> set[str]:
        return set(self.load()["id"])

    def _next_part(self) -> Path:
        parts = self.parts()
        index = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        return self.folder / f"part-{index:06d}.parquet"

    def append(self, rows: pd.DataFrame) -> Path | None:
        """Write ``rows`` (id, raw, name, type) as a new part file, atomically."""
        if rows.empty:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._next_part()
        _atomic_write(
            pa.Table.from_pandas(
                rows[list(CACHE_SCHEMA.names)], CACHE_SCHEMA, preserve_index=False
            ),
            path,
        )
        return path

    def compact(self) -> None:
        """Merge all parts into one (the new part is complete before old ones go)."""
        parts = self.parts()
        if len(parts) <= 1:
            return
        merged = self.load()
        path = self._next_part()
        _atomic_write(pa.Table.from_pandas(merged, CACHE_SCHEMA, preserve_index=False), path)
        for old in parts:
            old.unlink()


def _atomic_write(table: pa.Table, path: Path) -> None:
    atomic_file(path, lambda tmp: pq.write_table(table, tmp))


def parsed_rows(ids: Sequence[str], raws: Sequence[str]) -> pd.DataFrame:
    """Cache rows: the raw answers and their parsed name and type."""
    if len(ids) != len(raws):
        raise ValueError(f"{len(raws)} answers for {len(ids)} mentions")
    parsed = [parse_answer(r) for r in raws]
    return pd.DataFrame(
        {
            "id": [str(i) for i in ids],
            "raw": [str(r) for r in raws],
            "name": [p.name for p in parsed],
            "type": [p.type for p in parsed],
        }
    )


def fill_cache(
    cache: AnswerCache,
    mentions: pd.DataFrame,
    answer_fn: AnswerFn,
    chunk_size: int = 64,
    progress: bool = True,
) -> tuple[pd.DataFrame, int]:
    """Answer every mention not yet cached, chunk by chunk; return (all answers, generated).

    ``answer_fn`` maps a chunk of mention rows to raw answer strings (one per row). An
    exception from it propagates after the chunks before it are safely on disk.
    """
    cached = cache.cached_ids()
    todo = mentions[~mentions["id"].astype(str).isin(cached)].drop_duplicates("id")
    with Progress(*Progress.get_default_columns(), disable=not progress) as bar:
        task = bar.add_task("answers", total=len(todo))
        for start in range(0, len(todo), chunk_size):
            chunk = todo.iloc[start : start + chunk_size]
            cache.append(parsed_rows(chunk["id"].tolist(), list(answer_fn(chunk))))
            bar.update(task, advance=len(chunk))
    return cache.load(), len(todo)


# ---------------------------------------------------------------------------- generation


def generate_texts(
    model: Any,
    processor: Any,
    prompts: Sequence[str],
    images: Sequence[Any],
    batch_size: int = 16,
    max_new_tokens: int = 16,
) -> list[str]:
    """Greedy batched ``generate()`` continuations of (prompt, image) pairs, new text only."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"  # new tokens follow every prompt directly
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pad_id = tokenizer.pad_token_id
    out: list[str] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            inputs = processor(
                text=list(prompts[start : start + batch_size]),
                images=list(images[start : start + batch_size]),
                padding=True,
                return_tensors="pt",
            )
            inputs = {
                k: v.to(device, dtype=dtype if v.is_floating_point() else None)
                for k, v in inputs.items()
            }
            generated = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id if pad_id is not None else tokenizer.eos_token_id,
            )
            new = generated[:, inputs["input_ids"].shape[1] :]
            out.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def model_answer_fn(
    model: Any,
    processor: Any,
    image_root: Path,
    prompt_format: str = "plain",
    batch_size: int = 16,
    max_new_tokens: int = 16,
) -> AnswerFn:
    """Greedy batched answers (:func:`generate_texts`) for rows with ``sentence`` and
    ``prompted_image``."""
    token = processor_image_token(processor)

    def answer(rows: pd.DataFrame) -> list[str]:
        out: list[str] = []
        for start in range(0, len(rows), batch_size):  # images read one batch at a time
            batch = rows.iloc[start : start + batch_size]
            prompts = [
                format_prompt(processor, render_instruction(s, token), prompt_format)
                for s in batch["sentence"]
            ]
            images = [load_image(Path(image_root) / p) for p in batch["prompted_image"]]
            out += generate_texts(model, processor, prompts, images, batch_size, max_new_tokens)
        return out

    return answer


# ---------------------------------------------------------------------------- metrics


def answers_table(mentions: pd.DataFrame, cached: pd.DataFrame) -> pd.DataFrame:
    """One row per mention, in mention order: id, split, raw, name, type."""
    table = mentions[["id", "split"]].astype({"id": str}).merge(cached, on="id", how="left")
    missing = table["raw"].isna()
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} mentions have no answer, e.g. "
            f"{table.loc[missing, 'id'].head(3).tolist()}"
        )
    return table[list(ANSWER_COLUMNS)]


def exact_match(
    answers: pd.DataFrame, mentions: pd.DataFrame, splits: Sequence[str] = ("dev", "test")
) -> dict[str, dict[str, float | int]]:
    """Exact-match accuracy (case/space-normalised) of name and type per split."""
    both = scored_answers(answers, mentions)
    result: dict[str, dict[str, float | int]] = {}
    for split in splits:
        part = both[both["split"] == split]
        n = len(part)
        result[split] = {
            "n": n,
            "name_accuracy": round(int(part["name_ok"].sum()) / n, 4) if n else 0.0,
            "type_accuracy": round(int(part["type_ok"].sum()) / n, 4) if n else 0.0,
            "unparsed_type": int(part["type"].isna().sum()),
            **answer_forms(part),
        }
    return result


def scored_answers(answers: pd.DataFrame, mentions: pd.DataFrame) -> pd.DataFrame:
    """The answers beside their mentions' split and gold name and type (``type_gold``), with
    whether each name and type matches exactly (``name_ok``, ``type_ok``)."""
    gold = mentions[["id", "split", "entity_name", "type"]].astype({"id": str})
    columns = ["id", "name", "type"] + (["raw"] if "raw" in answers.columns else [])
    both = gold.merge(answers[columns], on="id", suffixes=("_gold", ""))
    both["name_ok"] = _matches(both["name"], both["entity_name"])
    both["type_ok"] = _matches(both["type"], both["type_gold"])
    return both


def answer_forms(part: pd.DataFrame) -> dict[str, float]:
    """Shares of answers that parse into name and type, that IIER reads as raw text (no
    type found), and that are empty."""
    n = len(part)
    raw = part["raw"] if "raw" in part.columns else pd.Series([""] * n, index=part.index)
    empty = ~raw.map(lambda r: isinstance(r, str) and bool(r.strip()))
    parsed = part["name"].notna() & part["type"].notna() & ~empty
    share = (lambda mask: round(float(mask.sum()) / n, 4)) if n else (lambda mask: 0.0)
    return {"parsed": share(parsed), "raw_text": share(~parsed & ~empty), "empty": share(empty)}


def _matches(predicted: pd.Series, gold: pd.Series) -> list[bool]:
    """A missing prediction never matches."""
    return [
        isinstance(p, str) and bool(normalise(p)) and normalise(p) == normalise(g)
        for p, g in zip(predicted, gold, strict=True)
    ]


def metrics_report(
    answers: pd.DataFrame, mentions: pd.DataFrame, info: Mapping[str, Any]
) -> dict[str, Any]:
    """Exact match per split; for dev and test also on the mentions whose gold name is in
    the caption and those where it is not (:mod:`vpmel.data.subsets`; the VLM must then see it)."""
    splits = ("train", "dev", "test")
    report = {**info, **exact_match(answers, mentions, splits)}
    named = None
    if {"sentence", "qid", "entity_name"} <= set(mentions.columns):
        kb = mentions[["qid", "entity_name"]].dropna().drop_duplicates("qid")
        named = named_mentions(mentions, kb.rename(columns={"entity_name": "name"}))
        for subset, mask in (("named", named), ("unnamed", ~named)):
            part = exact_match(answers, mentions[mask], splits)
            report |= {subset_key(split, subset): v for split, v in part.items()}
    gap = train_dev_gap(answers, mentions, named)
    if gap:
        report["train_minus_dev"] = gap
    return report


def train_dev_gap(
    answers: pd.DataFrame, mentions: pd.DataFrame, named: np.ndarray | None = None
) -> dict[str, Any]:
    """Name accuracy of the train answers minus dev's, in points, with an unpaired bootstrap
    95% CI over mentions (:func:`vpmel.stats.independent_bootstrap`): are the answers
    IIER trains on as good as the ones it is tested on? Also on the mentions whose caption
    names the entity (``named``), which takes out the splits' different shares of them.
    Empty when either split has no answers."""
    both = scored_answers(answers, mentions)
    parts = {"all": both}
    if named is not None:
        named_ids = set(mentions.loc[np.asarray(named, dtype=bool), "id"].astype(str))
        parts["named"] = both[both["id"].isin(named_ids)]
    result: dict[str, Any] = {}
    for key, part in parts.items():
        train = 100.0 * part.loc[part["split"] == "train", "name_ok"].to_numpy(dtype=float)
        dev = 100.0 * part.loc[part["split"] == "dev", "name_ok"].to_numpy(dtype=float)
        if not len(train) or not len(dev):
            continue
        d = independent_bootstrap(train, dev)
        result[key] = {
            "delta": round(d.delta, 2),
            "ci": [round(d.low, 2), round(d.high, 2)],
            "n_train": len(train),
            "n_dev": len(dev),
        }
    return result
