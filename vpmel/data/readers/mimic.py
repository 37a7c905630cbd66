"""Reader for MIMIC-format MEL datasets (WikiMEL, RichpediaMEL, WikiDiverse as released
with the MIMIC code).

Mention files are JSON lists of ``{id, sentence, mentions, entities, answer, imgPath}``;
``mentions`` may be URL-quoted. The image is looked up in ``mention_image/`` the way the
MIMIC code does it (``name.split('.')[0] + '.jpg'`` of the basename of ``imgPath``), then
with only the last suffix replaced by ``.jpg``, then under the exact basename. Only the
basename is used, so a path in ``imgPath`` cannot point outside the dataset (a symlink in
``mention_image/`` still can, and is refused). pair_id: records with the same ``imgPath``
and sentence share one (the id of the first of them).

The KB is ``kb_entity.json``, a list of ``{id, type, entity_name, attr, image_list}``, and
``qid2id.json`` (one line or pretty-printed), mapping QID -> the entity's ``id``. ``type``
is the literal "entity" and is ignored; an optional ``entity_type`` key carries one of the
seven types; an optional ``desc`` key is joined with ``attr`` into the description.
``entity_name`` may be URL-quoted. ``image_list`` entries are file names (or URLs whose
basename is the file) in ``kb_image/``, mapped like mention images. When several QIDs map to
one entity the first is its QID and the others are accepted as answers for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from rich.progress import track

from vpmel.data.quality import QualityReport, Reason
from vpmel.data.readers.common import (
    QID_RE,
    Answer,
    ImageRef,
    ImageStore,
    Kb,
    Malformed,
    MentionDraft,
    answer_field,
    description_text,
    expect_list,
    expect_object,
    find_span,
    id_field,
    kb_images,
    load_json,
    read_record_lists,
    record_label,
    report_unknown_keys,
    text_field,
)
from vpmel.data.schema import normalize_type

KNOWN_KEYS = frozenset({"id", "sentence", "mentions", "entities", "answer", "imgPath"})
KB_KEYS = frozenset({"id", "type", "entity_name", "attr", "image_list", "entity_type", "desc"})
KB_ENTITY_FILE = "kb_entity.json"
QID2ID_FILE = "qid2id.json"


def image_names(ref: str) -> tuple[str, ...]:
    """File names an image reference may be stored under, in the order tried."""
    base = ref.strip().replace("\\", "/").split("/")[-1].split("?")[0]
    names: list[str] = []
    for name in (base, unquote(base)):
        stem = name.split(".")[0]
        for candidate in (
            f"{stem}.jpg" if stem else "",
            f"{PurePosixPath(name).stem}.jpg" if "." in name.lstrip(".") else "",
            name,
        ):
            if candidate and candidate not in names:
                names.append(candidate)
    return tuple(names)


def image_ref(root: Path, folder: str, ref: str) -> ImageRef:
    return ImageRef(root, ref, tuple(f"{folder}/{name}" for name in image_names(ref)))


def read_mentions(
    files: list[Path], src: Path, source: str | None, report: QualityReport
) -> list[MentionDraft]:
    parse = partial(_parse, src=src, source=source or "mimic")
    return read_record_lists(
        files, src, "mention records", parse, known_keys=KNOWN_KEYS, report=report
    )


def _parse(rec: Mapping, fallback: str, *, src: Path, source: str, file: str) -> MentionDraft:
    sentence = text_field(rec, "sentence")
    mention = unquote(text_field(rec, "mentions", default="")).strip()
    answer = answer_field(rec)
    image = text_field(rec, "imgPath")
    return MentionDraft(
        id=id_field(rec),
        sentence=sentence,
        mention=mention,
        span=find_span(sentence, mention),
        answer=Answer("qid", answer, answer) if answer else None,
        image=image_ref(src, "mention_image", image),
        source=source,
        file=file,
        pair_key=(image, sentence),
    )


# ---------------------------------------------------------------------------- KB


def load_kb(kb_dir: Path, store: ImageStore, report: QualityReport, progress: bool) -> Kb:
    """Read ``kb_entity.json`` + ``qid2id.json``; entities are kept even without images."""
    entities_path, map_path = kb_dir / KB_ENTITY_FILE, kb_dir / QID2ID_FILE
    entities = expect_list(load_json(entities_path), entities_path, "KB entities")
    qid2id = expect_object(load_json(map_path), map_path, "QID -> entity id")
    row_qids = _row_qids(qid2id.pairs, report)
    kb = Kb()
    unknown: Counter[str] = Counter()
    rows = track(enumerate(entities), "KB entities", total=len(entities), disable=not progress)
    for i, ent in rows:
        report.read["kb"] += 1
        fallback = f"{KB_ENTITY_FILE}[{i}]"
        if not isinstance(ent, Mapping):
            detail = "entity is not a JSON object"
            report.drop("kb", fallback, KB_ENTITY_FILE, Reason.MALFORMED_RECORD, detail)
            continue
        unknown.update(k for k in ent if k not in KB_KEYS)
        try:
            row, qids, fixes, refs = _parse_entity(ent, row_qids, kb_dir)
        except Malformed as exc:
            qids = row_qids.get(str(ent.get("id")).strip())
            rid = qids[0] if qids else record_label(ent, fallback)
            report.drop("kb", rid, KB_ENTITY_FILE, Reason.MALFORMED_RECORD, str(exc))
            continue
        if kb.has(row["qid"]):
            detail = f"entity id {ent['id']!r}: QID seen before"
            report.drop("kb", row["qid"], KB_ENTITY_FILE, Reason.DUPLICATE_ID, detail)
            continue
        for reason, detail in fixes:
            report.fix("kb", row["qid"], KB_ENTITY_FILE, reason, detail)
        row["images"] = kb_images(row["qid"], refs, store, report)
        kb.add(row, qids)
    report_unknown_keys(report, "kb", KB_ENTITY_FILE, unknown)
    return kb


def _row_qids(pairs: list[tuple[str, Any]], report: QualityReport) -> dict[str, list[str]]:
    """Invert qid2id.json: entity id (as text) -> QIDs pointing at it, in file order."""
    out: dict[str, list[str]] = {}
    for qid, row in pairs:
        if isinstance(row, bool) or not isinstance(row, int | str):
            detail = f"maps to {row!r}, expected an entity id"
            report.drop("kb", qid, QID2ID_FILE, Reason.MALFORMED_RECORD, detail)
            continue
        out.setdefault(str(row).strip(), []).append(qid.strip())
    return out


def _parse_entity(
    ent: Mapping, row_qids: dict[str, list[str]], kb_dir: Path
) -> tuple[dict[str, Any], list[str], list[tuple[Reason, str]], list[ImageRef]]:
    """One kb_entity.json record -> (KB row without images, its QIDs, repairs, image refs)."""
    entity_id = id_field(ent)
    qids = row_qids.get(entity_id) or ([entity_id] if QID_RE.fullmatch(entity_id) else [])
    if not qids:
        raise Malformed(f"entity id {entity_id!r} has no QID in {QID2ID_FILE}")
    name = unquote(text_field(ent, "entity_name")).strip()
    if not name:
        raise Malformed("empty 'entity_name'")
    for key in ("attr", "desc"):
        if ent.get(key) is not None and not isinstance(ent[key], str | Mapping | list):
            raise Malformed(f"{key!r} is {type(ent[key]).__name__}, expected text")
    fixes: list[tuple[Reason, str]] = []
    raw_type = ent.get("entity_type")
    entity_type = normalize_type(raw_type)
    if entity_type is None and raw_type not in (None, ""):
        fixes.append((Reason.UNKNOWN_TYPE, f"entity_type {raw_type!r} is not one of the seven"))
    refs, image_fixes = _image_refs(ent.get("image_list"), kb_dir)
    row = {
        "qid": qids[0],
        "name": name,
        "type": entity_type,
        "description": description_text(ent.get("desc"), ent.get("attr")),
        "images": [],
    }
    return row, qids, fixes + image_fixes, refs


def _image_refs(value: Any, kb_dir: Path) -> tuple[list[ImageRef], list[tuple[Reason, str]]]:
    if value is None:
        return [], []
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list):
        detail = f"image_list is {type(value).__name__}, expected a list"
        return [], [(Reason.ENTITY_IMAGE_DROPPED, detail)]
    refs, fixes = [], []
    for entry in entries:
        if isinstance(entry, str) and entry.strip():
            refs.append(image_ref(kb_dir, "kb_image", entry))
        else:
            fixes.append((Reason.ENTITY_IMAGE_DROPPED, f"image_list entry {entry!r} is no name"))
    return refs, fixes
