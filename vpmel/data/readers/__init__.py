"""Read MEL datasets in their released formats into the vpmel tables.

:func:`read_dataset` parses the mention files of one format, reads the KB found in
``kb_dir`` (MIMIC ``kb_entity.json`` + ``qid2id.json`` or GHMFC ``qid2ne.json`` +
``qid2abs.json``), normalises every usable image into ``out/images/{mentions,kb}/`` and
returns the KB and mention tables (columns of :data:`vpmel.data.schema.KB_SCHEMA` and
:data:`vpmel.data.schema.MENTION_SCHEMA`, image paths relative to ``out``) with a
:class:`~vpmel.data.quality.QualityReport` holding a line for every record dropped or repaired.
Bad data never raises, except a whole file that cannot be read: a ``ValueError`` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from vpmel.data.quality import QualityReport
from vpmel.data.readers import ghmfc, mimic, vpwiki, wikidiverse
from vpmel.data.readers.common import (
    KB_FILES,
    ImageStore,
    Kb,
    MentionDraft,
    assign_pair_ids,
    finalize_mentions,
    kb_frame,
)
from vpmel.data.schema import KB_FILE, KB_SCHEMA, MENTION_SCHEMA, MENTIONS_FILE, write_table

FORMATS = ("vpwiki", "mimic", "ghmfc", "wikidiverse")

_PARSERS: dict[str, Callable[[list[Path], Path, str | None, QualityReport], list[MentionDraft]]]
_PARSERS = {
    "vpwiki": vpwiki.read_mentions,
    "mimic": mimic.read_mentions,
    "ghmfc": ghmfc.read_mentions,
    "wikidiverse": wikidiverse.read_mentions,
}
_KB_LAYOUTS = {
    "mimic": (mimic.KB_ENTITY_FILE, mimic.QID2ID_FILE),
    "ghmfc": (ghmfc.NAME_FILE, ghmfc.ABSTRACT_FILE),
}


@dataclass(frozen=True)
class ImportSettings:
    """The ``import`` section of params.yaml, checked (see :func:`import_settings`)."""

    format: str
    src: Path
    mention_files: list[str] | None = None
    kb_dir: Path | None = None
    max_side: int | None = 1024  # longer image side after import; None keeps the size
    source: str | None = None


def import_settings(section: Any, where: str = "params.yaml") -> ImportSettings:
    """Check every field of an ``import`` params section before any work is done.

    Raises one ValueError listing each problem on its own line (``where: import.key ...``),
    so a user fixes them all at once instead of meeting them one run at a time.
    """
    if not isinstance(section, Mapping):
        raise ValueError(f"{where}: import must be a mapping of settings")
    problems: list[str] = []
    known = {f.name for f in fields(ImportSettings)}
    for key in sorted(set(section) - known, key=str):
        problems.append(f"unknown key {key!r} (known: {', '.join(sorted(known))})")
    fmt = section.get("format")
    if fmt not in FORMATS:
        problems.append(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    src = section.get("src")
    if not isinstance(src, str) or not src.strip():
        problems.append(f"src must be a folder path, got {src!r}")
    elif not Path(src).is_dir():
        problems.append(f"src {src} is not a folder")
    files = section.get("mention_files")
    if files is not None and (
        not isinstance(files, list) or not all(isinstance(f, str) and f.strip() for f in files)
    ):
        problems.append(f"mention_files must be null or a list of file names, got {files!r}")
    kb_dir = section.get("kb_dir")
    if kb_dir is not None and (not isinstance(kb_dir, str) or not Path(kb_dir).is_dir()):
        problems.append(f"kb_dir must be null or a folder, got {kb_dir!r}")
    max_side = section.get("max_side", 1024)
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1
    ):
        problems.append(f"max_side must be null (keep sizes) or a number >= 1, got {max_side!r}")
    source = section.get("source")
    if source is not None and not isinstance(source, str):
        problems.append(f"source must be null or a label, got {source!r}")
    if problems:
        raise ValueError("\n".join(f"{where}: import.{p}" for p in problems))
    return ImportSettings(
        format=fmt,
        src=Path(src),
        mention_files=list(files) if files else None,
        kb_dir=Path(kb_dir) if kb_dir else None,
        max_side=max_side,
        source=source or None,
    )


@dataclass
class Dataset:
    """The two record tables of a dataset (images relative to the output root) and the
    data-quality report of reading it."""

    kb: pd.DataFrame
    mentions: pd.DataFrame
    report: QualityReport


def read_dataset(
    fmt: str,
    src: Path,
    out: Path,
    *,
    mention_files: list[str] | None = None,
    kb_dir: Path | None = None,
    max_side: int = 1024,
    source: str | None = None,
    progress: bool = True,
) -> Dataset:
    """Read dataset ``src`` in format ``fmt``; images are written under ``out/images``.

    ``mention_files`` are relative to ``src`` (default: every ``*.json`` in ``src`` that is
    not a KB file). ``kb_dir`` holds the KB (default ``src``); only VPWiki may come without
    one, and then answers are not checked against a KB (the report's notes say so).
    ``source`` overrides the per-format source label of every mention.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    src, out = Path(src), Path(out)
    kb_dir = Path(kb_dir) if kb_dir is not None else src
    if not src.is_dir():
        raise ValueError(f"{src}: dataset folder not found")
    report = QualityReport(source or fmt)
    report.read.update({"mentions": 0, "kb": 0})  # both tables appear in the summary
    files = find_mention_files(src, mention_files)
    drafts = _PARSERS[fmt](files, src, source, report)
    assign_pair_ids(drafts)
    store = ImageStore(out, max_side)
    kb = load_kb(kb_dir, store, report, progress=progress)
    if kb is None:
        if fmt != "vpwiki":
            raise ValueError(
                f"{kb_dir}: no KB found (kb_entity.json + qid2id.json, or "
                "qid2ne.json + qid2abs.json); only vpwiki may be read without one"
            )
        report.note(f"no KB in {kb_dir}: answers were not checked against a KB")
    mentions = finalize_mentions(drafts, kb, store, report, progress=progress)
    kb_table = kb.frame() if kb is not None else kb_frame([])
    report.kept["mentions"] = len(mentions)
    report.kept["kb"] = len(kb_table)
    return Dataset(kb=kb_table, mentions=mentions, report=report)


def write_dataset(ds: Dataset, out: Path) -> None:
    """Write ``out/kb.parquet`` and ``out/mentions.parquet`` with the explicit schemas."""
    out = Path(out)
    write_table(ds.kb, KB_SCHEMA, out / KB_FILE)
    write_table(ds.mentions, MENTION_SCHEMA, out / MENTIONS_FILE)


def find_mention_files(src: Path, names: list[str] | None) -> list[Path]:
    """The mention files to read: the given names (relative to ``src``) or, by default,
    every ``*.json`` directly in ``src`` except KB files, in name order."""
    if names is None:
        files = sorted(p for p in src.glob("*.json") if p.name not in KB_FILES and p.is_file())
        if not files:
            raise ValueError(f"{src}: no mention files (*.json) found")
        return files
    files = [src / name for name in names]
    for path in files:
        if not path.is_file():
            raise ValueError(f"{path}: mention file not found")
    return files


def detect_kb(kb_dir: Path) -> list[str]:
    """KB layouts ("mimic", "ghmfc") whose files are in ``kb_dir``, MIMIC first.

    A layout with one of its two files missing is an error, not an absent KB.
    """
    found = []
    for layout, names in _KB_LAYOUTS.items():
        present = [name for name in names if (kb_dir / name).is_file()]
        if present and len(present) < len(names):
            missing = [name for name in names if name not in present]
            raise ValueError(f"{kb_dir}: {present[0]} needs {missing[0]} beside it")
        if present:
            found.append(layout)
    return found


def load_kb(kb_dir: Path, store: ImageStore, report: QualityReport, *, progress: bool) -> Kb | None:
    """The KB in ``kb_dir`` (None when there is none); MIMIC wins when both are there."""
    layouts = detect_kb(kb_dir)
    if not layouts:
        return None
    if len(layouts) > 1:
        report.note(f"{kb_dir} holds MIMIC and GHMFC KB files; the MIMIC KB was read")
    reader = mimic.load_kb if layouts[0] == "mimic" else ghmfc.load_kb
    return reader(kb_dir, store, report, progress)


__all__ = [
    "FORMATS",
    "Dataset",
    "ImportSettings",
    "import_settings",
    "read_dataset",
    "write_dataset",
]
