"""Reader for GHMFC-format MEL datasets (the older WikiMEL / RichpediaMEL releases).

Mention files are JSON *objects* keyed by sample id, each value
``{id, sentence, mentions, entities, answer}`` (other keys tolerated). The key is the
record's id. The image is ``<id>.jpg`` (also ``.png``, ``.jpeg``), looked for in
``images/``, then ``mention_image/``, then the dataset root itself; the first file found
wins. Duplicated keys in a file (which ``json`` would silently collapse) are reported as
DUPLICATE_ID, the first kept. pair_id: records with the same sentence share one.

The KB is ``qid2ne.json`` (QID -> name) with ``qid2abs.json`` (QID -> attribute text).
Entity images are optional: ``kb_image/<qid>.jpg`` (or .png/.jpeg) when present.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

from rich.progress import track

from vpmel.data.images import ImageProblem
from vpmel.data.quality import QualityReport, Reason
from vpmel.data.readers import common
from vpmel.data.readers.common import (
    Answer,
    ImageRef,
    ImageStore,
    Kb,
    Malformed,
    MentionDraft,
    expect_object,
    find_span,
    kb_images,
    load_json,
    parse_records,
    text_field,
)

KNOWN_KEYS = frozenset({"id", "sentence", "mentions", "entities", "answer"})
IMAGE_FOLDERS = ("images", "mention_image", "")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")
NAME_FILE = "qid2ne.json"
ABSTRACT_FILE = "qid2abs.json"


def image_candidates(folders: tuple[str, ...], stem: str) -> tuple[str, ...]:
    return tuple(
        f"{folder}/{stem}{suffix}" if folder else f"{stem}{suffix}"
        for folder in folders
        for suffix in IMAGE_SUFFIXES
    )


def read_mentions(
    files: list[Path], src: Path, source: str | None, report: QualityReport
) -> list[MentionDraft]:
    drafts: list[MentionDraft] = []
    for path in files:
        label = common.data_file_label(path, src)
        data = expect_object(load_json(path), path, "records keyed by sample id")
        parse = partial(_parse, src=src, source=source or "ghmfc", file=label)
        items = ((key, rec) for key, rec in data.pairs)
        drafts += parse_records(items, parse, known_keys=KNOWN_KEYS, file=label, report=report)
    return drafts


def _parse(rec: Mapping, key: str, *, src: Path, source: str, file: str) -> MentionDraft:
    sentence = text_field(rec, "sentence")
    mention = text_field(rec, "mentions", default="").strip()
    answer = common.answer_field(rec)
    record_id = key.strip()
    if not record_id:
        raise Malformed("empty sample id")
    return MentionDraft(
        id=record_id,
        sentence=sentence,
        mention=mention,
        span=find_span(sentence, mention),
        answer=Answer("qid", answer, answer) if answer else None,
        image=ImageRef(src, f"{record_id}.jpg", image_candidates(IMAGE_FOLDERS, record_id)),
        source=source,
        file=file,
        pair_key=sentence,
    )


def load_kb(kb_dir: Path, store: ImageStore, report: QualityReport, progress: bool) -> Kb:
    """Read ``qid2ne.json`` + ``qid2abs.json``; an entity needs a name, its text is optional."""
    names_path, abstracts_path = kb_dir / NAME_FILE, kb_dir / ABSTRACT_FILE
    names = expect_object(load_json(names_path), names_path, "QID -> entity name")
    abstracts = expect_object(load_json(abstracts_path), abstracts_path, "QID -> text")
    kb = Kb()
    pairs = track(names.pairs, "KB entities", disable=not progress)
    for qid, name in pairs:
        report.read["kb"] += 1
        qid = qid.strip()
        if kb.has(qid):
            report.drop("kb", qid, NAME_FILE, Reason.DUPLICATE_ID, "QID seen before")
            continue
        if not isinstance(name, str) or not name.strip():
            detail = f"name is {name!r}, expected a non-empty string"
            report.drop("kb", qid, NAME_FILE, Reason.MALFORMED_RECORD, detail)
            continue
        row = {
            "qid": qid,
            "name": name.strip(),
            "type": None,
            "description": common.description_text(abstracts.get(qid)),
            "images": kb_images(qid, _present_images(kb_dir, qid, store), store, report),
        }
        kb.add(row)
    named = {qid.strip() for qid in names}
    for qid in abstracts:
        if qid.strip() not in named:
            report.read["kb"] += 1
            detail = f"in {ABSTRACT_FILE} but has no name in {NAME_FILE}"
            report.drop("kb", qid, ABSTRACT_FILE, Reason.MALFORMED_RECORD, detail)
    return kb


def _present_images(kb_dir: Path, qid: str, store: ImageStore) -> list[ImageRef]:
    """The entity's image if one exists (absence is normal in this format, not a problem)."""
    ref = ImageRef(kb_dir, f"kb_image/{qid}.jpg", image_candidates(("kb_image",), qid))
    try:
        store.locate(ref)
    except ImageProblem as problem:
        return [ref] if problem.reason != Reason.MISSING_IMAGE else []
    return [ref]
