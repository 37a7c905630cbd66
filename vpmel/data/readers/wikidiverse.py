"""Reader for raw WikiDiverse files (and the demo world, which writes the same format).

A file is a JSON list of image-text pairs ``[text, image, topic, mentions]`` with
``mentions`` a list of ``[words, type, start, end, entity_ref]`` plus, our extension, an
optional sixth element: the reference box ``[x1, y1, x2, y2]`` in pixels of the original
image (or null). Elements beyond those are tolerated and reported once per file.

- ids: pair ``i`` of ``<stem>.json`` has pair_id ``<stem>-<i>``; its mention ``j`` has id
  ``<stem>-<i>-<j>``.
- ``start``/``end``: character offsets, end exclusive; -1/-1 or null when the words are not
  in the text (span null). Offsets that do not locate the words are repaired by searching
  the text, else the span is set to null (SPAN_REPAIRED either way).
- ``entity_ref``: a bare QID, a Wikidata URL (QID taken from it) or a Wikipedia URL,
  resolved by its title (URL-unquoted, ``_`` -> space, fragment dropped) against KB names
  when exactly one KB entity has that name (Wikipedia's upper-case first letter is also
  tried); no or several matches drop the mention as ANSWER_NOT_IN_KB, saying which.
  null, "", "nil" (any case) are NIL.
- image: a relative path that exists under the dataset root is used as is. A URL is looked
  for in ``images/`` under its URL basename (raw, then unquoted), then under
  ``md5(url)`` + the URL's suffix, then under any ``md5(url).*`` there (WikiDiverse names
  its downloads by the MD5 of the URL).
- type: normalised with :func:`vpmel.data.schema.normalize_type`; unknown labels are kept as null
  with an UNKNOWN_TYPE line.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from vpmel.data.quality import QualityReport, Reason
from vpmel.data.readers.common import (
    Answer,
    ImageRef,
    Malformed,
    MentionDraft,
    data_file_label,
    expect_list,
    find_span,
    is_nil,
    load_json,
    report_unknown_keys,
)
from vpmel.data.schema import normalize_type

IMAGE_FOLDER = "images"
BARE_QID_RE = re.compile(r"Q\d+")
WIKIDATA_RE = re.compile(r"https?://(?:www\.|m\.)?wikidata\.org/(?:wiki|entity)/(Q\d+)/?")
WIKIPEDIA_RE = re.compile(r"https?://[\w.-]*wikipedia\.org/wiki/([^?#]+)(?:[?#].*)?")
URL_RE = re.compile(r"https?://", re.IGNORECASE)
PAIR_FIELDS = 4
MENTION_FIELDS = 6


class ImageIndex:
    """File names in ``images/`` by stem, listed once (for the ``md5(url).*`` lookup)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._stems: dict[str, list[str]] | None = None

    def names_with_stem(self, stem: str) -> list[str]:
        if self._stems is None:
            self._stems = {}
            if self.folder.is_dir():
                for path in sorted(self.folder.iterdir()):
                    self._stems.setdefault(path.name.split(".")[0], []).append(path.name)
        return self._stems.get(stem, [])


def parse_ref(ref: Any) -> Answer | None:
    """An entity reference -> Answer (None for NIL); anything unrecognised is Malformed."""
    if is_nil(ref):
        return None
    if not isinstance(ref, str):
        raise Malformed(f"entity reference is {type(ref).__name__}, expected a string")
    text = ref.strip()
    if BARE_QID_RE.fullmatch(text):
        return Answer("qid", text, ref)
    if match := WIKIDATA_RE.fullmatch(text):
        return Answer("qid", match.group(1), ref)
    if match := WIKIPEDIA_RE.fullmatch(text):
        title = unquote(match.group(1)).replace("_", " ").strip()
        if title:
            return Answer("title", title, ref)
    raise Malformed(f"entity reference {ref!r} is not a QID, Wikidata or Wikipedia URL")


def image_ref(value: Any, src: Path, index: ImageIndex) -> ImageRef:
    if not isinstance(value, str) or not value.strip():
        return ImageRef(src, "" if value is None else str(value), ())
    value = value.strip()
    if not URL_RE.match(value):
        return ImageRef(src, value, (value,))
    url_path = PurePosixPath(urlparse(value).path)
    digest = hashlib.md5(value.encode("utf-8")).hexdigest()
    names = [url_path.name, unquote(url_path.name), digest + url_path.suffix]
    names += [digest + url_path.suffix.lower(), *index.names_with_stem(digest)]
    unique = dict.fromkeys(f"{IMAGE_FOLDER}/{name}" for name in names if name)
    return ImageRef(src, value, tuple(unique))


def locate_span(text: str, words: str, start: Any, end: Any) -> tuple[tuple[int, int] | None, str]:
    """The mention's span and, when the given offsets had to be repaired, what was done."""
    if start in (None, -1) and end in (None, -1):
        return None, ""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end))
    if ints and 0 <= start < end <= len(text) and text[start:end] == words:
        return (start, end), ""
    found = find_span(text, words)
    given = f"offsets {start!r}..{end!r} do not locate {words!r}"
    if found:
        return found, f"{given}; found at {found[0]}..{found[1]}"
    return None, f"{given} in the text; span set to null"


def read_mentions(
    files: list[Path], src: Path, source: str | None, report: QualityReport
) -> list[MentionDraft]:
    index = ImageIndex(src / IMAGE_FOLDER)
    drafts: list[MentionDraft] = []
    for path in files:
        label = data_file_label(path, src)
        data = expect_list(load_json(path), path, "WikiDiverse image-text pairs")
        extra: Counter[str] = Counter()
        for i, item in enumerate(data):
            pair_id = f"{path.stem}-{i}"
            drafts += _parse_pair(
                item, pair_id, src, index, source or "wikidiverse", label, report, extra
            )
        report_unknown_keys(report, "mentions", label, extra)
    return drafts


def _parse_pair(
    item: Any,
    pair_id: str,
    src: Path,
    index: ImageIndex,
    source: str,
    file: str,
    report: QualityReport,
    extra: Counter[str],
) -> list[MentionDraft]:
    problem = _pair_problem(item)
    if problem:
        report.read["mentions"] += 1
        report.drop("mentions", pair_id, file, Reason.MALFORMED_RECORD, problem)
        return []
    text, image_value, _topic, mentions = item[:PAIR_FIELDS]
    if len(item) > PAIR_FIELDS:
        extra[f"pair element {PAIR_FIELDS + 1}+"] += 1
    image = image_ref(image_value, src, index)
    drafts = []
    for j, mention in enumerate(mentions):
        report.read["mentions"] += 1
        mention_id = f"{pair_id}-{j}"
        try:
            draft = _parse_mention(mention, mention_id, pair_id, text, image, source, file)
        except Malformed as exc:
            report.drop("mentions", mention_id, file, Reason.MALFORMED_RECORD, str(exc))
            continue
        if len(mention) > MENTION_FIELDS:
            extra[f"mention element {MENTION_FIELDS + 1}+"] += 1
        drafts.append(draft)
    return drafts


def _pair_problem(item: Any) -> str:
    if not isinstance(item, list) or len(item) < PAIR_FIELDS:
        return "pair is not a list [text, image, topic, mentions]"
    if not isinstance(item[0], str):
        return f"text is {type(item[0]).__name__}, expected a string"
    if item[1] is not None and not isinstance(item[1], str):
        return f"image is {type(item[1]).__name__}, expected a string"
    if not isinstance(item[3], list):
        return f"mentions is {type(item[3]).__name__}, expected a list"
    return ""


def _parse_mention(
    mention: Any,
    mention_id: str,
    pair_id: str,
    text: str,
    image: ImageRef,
    source: str,
    file: str,
) -> MentionDraft:
    if not isinstance(mention, list) or len(mention) < 5:
        raise Malformed("mention is not a list [words, type, start, end, entity]")
    words, raw_type, start, end, ref = mention[:5]
    if not isinstance(words, str):
        raise Malformed(f"mention words are {type(words).__name__}, expected a string")
    if raw_type is not None and not isinstance(raw_type, str):
        raise Malformed(f"type is {type(raw_type).__name__}, expected a string")
    words = words.strip()
    answer = parse_ref(ref)
    span, span_fix = locate_span(text, words, start, end)
    entity_type = normalize_type(raw_type)
    fixes = []
    if span_fix:
        fixes.append((Reason.SPAN_REPAIRED, file, span_fix))
    if entity_type is None and raw_type not in (None, ""):
        fixes.append((Reason.UNKNOWN_TYPE, file, f"type {raw_type!r} is not one of the seven"))
    return MentionDraft(
        id=mention_id,
        pair_id=pair_id,
        sentence=text,
        mention=words,
        span=span,
        answer=answer,
        image=image,
        source=source,
        file=file,
        box=mention[5] if len(mention) > 5 else None,
        type=entity_type,
        fixes=fixes,
    )
