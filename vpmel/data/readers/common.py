"""Pieces every reader shares: JSON loading, field checks, the KB, images and the final
mention checks (duplicates, NIL, KB membership, image, box).

A format module only *parses*: it turns each record of a data file into a
:class:`MentionDraft` (or reports it as malformed). :func:`finalize_mentions` then applies
the same checks, in the same order, to every format:

1. duplicate id (the first record with an id wins, even if it is dropped later),
2. NIL answer, 3. answer not in the KB, 4. image (path, existence, decoding), 5. box.

A record gets exactly one drop line (the first check it fails). Repairs on a record that is
kept are reported only once it is known to be kept.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from rich.progress import track

from vpmel.data.images import (
    FolderIndex,
    ImageProblem,
    NormalizedImage,
    clip_box,
    normalize_image,
    scale_box,
)
from vpmel.data.quality import QualityReport, Reason
from vpmel.data.schema import KB_SCHEMA, MENTION_SCHEMA

#: File names that hold a KB, never mentions.
KB_FILES = frozenset({"kb_entity.json", "qid2id.json", "qid2ne.json", "qid2abs.json"})
NIL_VALUES = frozenset({"", "nil"})
QID_RE = re.compile(r"(?:wk)?Q\d+")


class Malformed(Exception):
    """A record that cannot be read; the message names the problem (not the record)."""


class ObjectPairs(dict):
    """A JSON object that remembers every key/value pair in file order, duplicates included.

    ``json`` silently keeps the *last* of duplicated keys; readers want the first and a
    report line for the others.
    """

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__()
        self.pairs = pairs
        for key, value in pairs:
            self.setdefault(key, value)


def load_json(path: Path) -> Any:
    """Parse a JSON data file; any whole-file problem is a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
        return json.loads(text, object_pairs_hook=ObjectPairs)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None


def expect_list(data: Any, path: Path, what: str) -> list:
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {what}, got {_json_type(data)}")
    return data


def expect_object(data: Any, path: Path, what: str) -> ObjectPairs:
    if not isinstance(data, ObjectPairs):
        raise ValueError(f"{path}: expected a JSON object of {what}, got {_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else type(value).__name__


def text_field(rec: Mapping, key: str, *, default: str | None = None, number_ok=False) -> str:
    """A string field of a record; raises :class:`Malformed` when absent or null (and no
    default) or of another type (integers are accepted where ``number_ok``, for ids)."""
    value = rec.get(key)
    if value is None:
        if default is None:
            raise Malformed(f"missing key {key!r}" if key not in rec else f"{key!r} is null")
        return default
    if isinstance(value, str):
        return value
    if number_ok and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Malformed(f"{key!r} is {_json_type(value)}, expected a string")


def id_field(rec: Mapping, key: str = "id") -> str:
    value = text_field(rec, key, number_ok=True).strip()
    if not value:
        raise Malformed(f"empty {key!r}")
    return value


def answer_field(rec: Mapping, key: str = "answer") -> str | None:
    """The gold QID as written, or None for a NIL answer (null, "", "nil" in any case)."""
    if key not in rec:
        raise Malformed(f"missing key {key!r}")
    value = rec[key]
    if is_nil(value):
        return None
    if not isinstance(value, str):
        raise Malformed(f"{key!r} is {_json_type(value)}, expected a string")
    return value.strip()


def is_nil(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in NIL_VALUES)


def record_label(rec: Any, fallback: str, key: str = "id") -> str:
    """The id to report a record under: its own id when readable, else ``fallback``."""
    if isinstance(rec, Mapping):
        value = rec.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return fallback


def find_span(sentence: str, words: str) -> tuple[int, int] | None:
    """First occurrence of the mention words in the sentence (None when blank or absent)."""
    if not words:
        return None
    start = sentence.find(words)
    return (start, start + len(words)) if start >= 0 else None


def report_unknown_keys(
    report: QualityReport, table: str, file_label: str, unknown: Mapping[str, int]
) -> None:
    """One UNKNOWN_KEYS line per file (not per record), listing keys and how often."""
    if unknown:
        listed = ", ".join(f"{k!r} ({n}x)" for k, n in sorted(unknown.items()))
        report.fix(table, file_label, file_label, Reason.UNKNOWN_KEYS, f"ignored keys: {listed}")


def data_file_label(path: Path, root: Path) -> str:
    """A data file's name relative to the dataset root when inside it (for reports)."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageRef:
    """Where a record's image may be: paths relative to ``root``, tried in order."""

    root: Path
    label: str  # the path as the data file writes it (for reports)
    candidates: tuple[str, ...]


class ImageStore:
    """Normalises each distinct source image once into ``out/images/<kind>/``.

    ``kind`` is "mentions" or "kb". The output keeps the image's path relative to its
    dataset root, so names stay readable and distinct. Failures are remembered too, so a
    bad picture shared by many records is decoded once and reported for each record.
    """

    def __init__(self, out: Path, max_side: int | None) -> None:
        self.out = Path(out)
        self.max_side = max_side
        self._done: dict[tuple[str, Path], NormalizedImage | ImageProblem] = {}
        self._indexes: dict[Path, FolderIndex] = {}

    def index(self, root: Path) -> FolderIndex:
        """The (cached) listing index of a dataset root."""
        if root not in self._indexes:
            self._indexes[root] = FolderIndex(root)
        return self._indexes[root]

    def locate(self, ref: ImageRef) -> tuple[Path, Path]:
        """:func:`locate` with this store's cached folder listings."""
        return locate(ref, self.index(Path(ref.root)))

    def fetch(self, kind: str, ref: ImageRef) -> tuple[NormalizedImage, str]:
        """The normalised image and the source file used (relative to the dataset root)."""
        root, path = self.locate(ref)
        key = (kind, path)
        if key not in self._done:
            dst = self.out / "images" / kind / path.relative_to(root)
            try:
                self._done[key] = normalize_image(path, dst, self.max_side)
            except ImageProblem as problem:
                self._done[key] = problem
        result = self._done[key]
        if isinstance(result, ImageProblem):
            raise ImageProblem(result.reason, result.detail)
        return result, path.relative_to(root).as_posix()

    def relative(self, image: NormalizedImage) -> str:
        """The stored path of a normalised image, relative to the output root."""
        return image.path.relative_to(self.out).as_posix()


def found_as(detail: str, ref: ImageRef, used: str) -> str:
    """A report detail that also names the file used when it is not the path as written.

    Report lines name an image by the path the data file writes (``ref.label``), for dropped
    and repaired records alike; a repair made to a file found under another name (another
    folder or suffix tried) says which one.
    """
    return detail if used == ref.label else f"{detail} (file found as {used})"


def locate(ref: ImageRef, index: FolderIndex | None = None) -> tuple[Path, Path]:
    """First candidate of ``ref`` that is a file inside its root: (resolved root, path).

    Raises PATH_ESCAPES_ROOT when a candidate leaves the root (and none is found),
    MISSING_IMAGE otherwise. ``index`` (of ``ref.root``) answers from folder listings read
    once; without one, a fresh index is used.
    """
    index = index or FolderIndex(ref.root)
    escape: ImageProblem | None = None
    for rel in ref.candidates:
        try:
            path = index.find(rel)
        except ImageProblem as problem:
            escape = escape or problem
            continue
        if path is not None:
            return index.root, path
    if escape is not None and escape.reason == Reason.PATH_ESCAPES_ROOT:
        raise escape
    if not ref.candidates:
        raise ImageProblem(Reason.MISSING_IMAGE, "no image path given")
    raise ImageProblem(Reason.MISSING_IMAGE, "not found: " + ", ".join(ref.candidates))


# ---------------------------------------------------------------------------- the KB


@dataclass
class Kb:
    """KB entities as table rows plus how answers map onto their QIDs.

    ``aliases`` maps every answer string a mention may use to the QID of a kept row (MIMIC's
    ``qid2id.json`` can point several QIDs at one row).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    _names: dict[str, list[str]] | None = None

    def add(self, row: dict[str, Any], answers: Iterable[str] = ()) -> None:
        self.rows.append(row)
        self.aliases.setdefault(row["qid"], row["qid"])
        for answer in answers:
            self.aliases.setdefault(answer, row["qid"])

    def has(self, qid: str) -> bool:
        return qid in self.aliases

    def by_name(self, name: str) -> list[str]:
        """QIDs of the entities called exactly ``name``."""
        if self._names is None:
            self._names = {}
            for row in self.rows:
                self._names.setdefault(row["name"], []).append(row["qid"])
        return self._names.get(name, [])

    def frame(self) -> pd.DataFrame:
        return kb_frame(self.rows)


def kb_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = [f.name for f in KB_SCHEMA]
    return pd.DataFrame(rows, columns=columns)


def description_text(*parts: Any) -> str:
    """Join description / attribute fields (strings, ``{key: value}`` or lists) into text."""
    out = []
    for part in parts:
        if isinstance(part, Mapping):
            part = "; ".join(f"{k}: {v}" for k, v in part.items())
        elif isinstance(part, list):
            part = "; ".join(str(v) for v in part)
        if isinstance(part, str) and part.strip():
            out.append(part.strip())
    return "\n".join(out)


def kb_images(
    qid: str, refs: list[ImageRef], store: ImageStore, report: QualityReport
) -> list[str]:
    """Normalise an entity's images; each unusable one gets an ENTITY_IMAGE_DROPPED line."""
    kept: list[str] = []
    for ref in refs:
        try:
            image, used = store.fetch("kb", ref)
        except ImageProblem as problem:
            detail = f"{problem.reason}: {problem.detail}"
            report.fix("kb", qid, ref.label, Reason.ENTITY_IMAGE_DROPPED, detail)
            continue
        for repair in image.repairs:
            report.fix("kb", qid, ref.label, repair.reason, found_as(repair.detail, ref, used))
        path = store.relative(image)
        if path not in kept:
            kept.append(path)
    return kept


# ---------------------------------------------------------------------------- mentions


@dataclass(frozen=True)
class Answer:
    """A gold answer as written: a QID, or (WikiDiverse) a Wikipedia title to look up."""

    kind: str  # "qid" or "title"
    value: str
    raw: str


@dataclass
class MentionDraft:
    """One parsed mention record, before the shared checks of :func:`finalize_mentions`."""

    id: str
    sentence: str
    mention: str
    span: tuple[int, int] | None
    answer: Answer | None  # None: NIL
    image: ImageRef
    source: str
    file: str  # data file label
    pair_id: str | None = None  # None: assigned from pair_key by assign_pair_ids
    pair_key: Any = None
    box: Any = None  # raw reference box in pixels of the original image, or None
    type: str | None = None
    fixes: list[tuple[Reason, str, str]] = field(default_factory=list)  # (reason, file, detail)


def assign_pair_ids(drafts: list[MentionDraft]) -> None:
    """pair_id = id of the first record with the same pair key (in reading order)."""
    first: dict[Any, str] = {}
    for draft in drafts:
        if draft.pair_id is None:
            draft.pair_id = first.setdefault(draft.pair_key, draft.id)


def resolve_answer(answer: Answer, kb: Kb | None) -> tuple[str | None, str]:
    """The KB QID an answer points to, or (None, why not)."""
    if kb is None:
        return (answer.value, "") if answer.kind == "qid" else (None, "no KB to look up titles")
    if answer.kind == "qid":
        qid = kb.aliases.get(answer.value)
        return (qid, "") if qid else (None, f"{answer.value} is not in the KB")
    matches = kb.by_name(answer.value)
    if not matches and answer.value[:1].islower():  # Wikipedia titles start upper case
        matches = kb.by_name(answer.value[:1].upper() + answer.value[1:])
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        return None, f"no KB entity is named {answer.value!r} ({answer.raw})"
    listed = ", ".join(matches[:10]) + (", ..." if len(matches) > 10 else "")
    return None, f"ambiguous: {len(matches)} KB entities are named {answer.value!r}: {listed}"


def finalize_mentions(
    drafts: list[MentionDraft],
    kb: Kb | None,
    store: ImageStore,
    report: QualityReport,
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """Apply the shared checks to every draft; returns the mention table of kept records."""
    seen: set[str] = set()
    rows = []
    for draft in track(drafts, description="mentions", disable=not progress):
        if draft.id in seen:
            detail = "an earlier record has this id (the first one is the one read)"
            report.drop("mentions", draft.id, draft.file, Reason.DUPLICATE_ID, detail)
            continue
        seen.add(draft.id)
        row = _check_mention(draft, kb, store, report)
        if row is not None:
            rows.append(row)
    return mention_frame(rows)


def _check_mention(
    draft: MentionDraft, kb: Kb | None, store: ImageStore, report: QualityReport
) -> dict[str, Any] | None:
    if draft.answer is None:
        report.drop("mentions", draft.id, draft.file, Reason.NIL_ANSWER, "answer is NIL")
        return None
    qid, why = resolve_answer(draft.answer, kb)
    if qid is None:
        report.drop("mentions", draft.id, draft.file, Reason.ANSWER_NOT_IN_KB, why)
        return None
    try:
        image, used = store.fetch("mentions", draft.image)
    except ImageProblem as problem:
        report.drop("mentions", draft.id, draft.image.label, problem.reason, problem.detail)
        return None
    label = draft.image.label
    fixes = list(draft.fixes)
    fixes += [(r.reason, label, found_as(r.detail, draft.image, used)) for r in image.repairs]
    box = None
    if draft.box is not None:
        box, fix = _fit_box(draft.box, image)
        if fix is not None:
            fixes.append((fix[0], label, found_as(fix[1], draft.image, used)))
    for reason, file, detail in fixes:
        report.fix("mentions", draft.id, file, reason, detail)
    return {
        "id": draft.id,
        "pair_id": draft.pair_id or draft.id,
        "sentence": draft.sentence,
        "mention": draft.mention,
        "span_start": draft.span[0] if draft.span else None,
        "span_end": draft.span[1] if draft.span else None,
        "qid": qid,
        "image": store.relative(image),
        "image_width": image.width,
        "image_height": image.height,
        "box": box,
        "type": draft.type,
        "source": draft.source,
    }


def _fit_box(raw: Any, image: NormalizedImage) -> tuple[list[float] | None, tuple | None]:
    """Check a reference box against the original image, then rescale it with the image.

    Returns the box for the table and an optional (reason, detail) repair.
    """
    box, status = clip_box(raw, image.original_width, image.original_height)
    size = f"{image.original_width}x{image.original_height}"
    if box is None:
        return None, (Reason.BOX_DISCARDED, f"box {raw!r} unusable for a {size} image")
    scaled = scale_box(box, image.scale)
    # rounding the image size may cut a fraction of a pixel off the scaled box
    scaled = [
        min(scaled[0], image.width),
        min(scaled[1], image.height),
        min(scaled[2], image.width),
        min(scaled[3], image.height),
    ]
    if status is not None:
        return scaled, (status, f"box {raw!r} clipped to {box} for a {size} image")
    return scaled, None


def mention_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = [f.name for f in MENTION_SCHEMA]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype(
        {
            "span_start": "Int32",
            "span_end": "Int32",
            "image_width": "int32",
            "image_height": "int32",
            "box": object,
        }
    )


def parse_records(
    items: Iterable[tuple[str, Any]],
    parse: Callable[[Mapping, str], MentionDraft],
    *,
    known_keys: frozenset[str],
    file: str,
    report: QualityReport,
) -> list[MentionDraft]:
    """Parse JSON-object records; a record ``parse`` rejects is dropped as MALFORMED_RECORD.

    ``items`` pairs each record with the id to report it under when it has no readable id
    of its own. Keys outside ``known_keys`` are tolerated and reported once for the file.
    """
    drafts: list[MentionDraft] = []
    unknown: Counter[str] = Counter()
    for fallback, rec in items:
        report.read["mentions"] += 1
        if not isinstance(rec, Mapping):
            detail = f"record is {_json_type(rec)}, expected an object"
            report.drop("mentions", fallback, file, Reason.MALFORMED_RECORD, detail)
            continue
        unknown.update(k for k in rec if k not in known_keys)
        try:
            drafts.append(parse(rec, fallback))
        except Malformed as exc:
            rid = record_label(rec, fallback)
            report.drop("mentions", rid, file, Reason.MALFORMED_RECORD, str(exc))
    report_unknown_keys(report, "mentions", file, unknown)
    return drafts


def read_record_lists(
    files: Iterable[Path],
    src: Path,
    what: str,
    parse: Callable[..., MentionDraft],
    *,
    known_keys: frozenset[str],
    report: QualityReport,
) -> list[MentionDraft]:
    """Mention records from JSON files that each hold a list of ``what``: every record goes
    through :func:`parse_records` under the id ``<file>[<index>]``; ``parse`` also receives
    ``file=`` (the file's label)."""
    drafts: list[MentionDraft] = []
    for path in files:
        label = data_file_label(path, src)
        data = expect_list(load_json(path), path, what)
        items = ((f"{label}[{i}]", rec) for i, rec in enumerate(data))
        parse_file = partial(parse, file=label)
        drafts += parse_records(items, parse_file, known_keys=known_keys, file=label, report=report)
    return drafts
