"""Reader for the released VPWiki files.

A file is a JSON list of ``{id, sentence, mentions, entities, answer, imgPath}`` (keys in
any order). ``mentions`` is blank by design (the visual prompt, a red box drawn into the
image, replaces the mention words), so the mention is ``""``. ``entities`` is the gold
entity's *name*: it is accepted as a known key and otherwise ignored, because it is not
what the text says and must not leak into the model's input. ``answer`` is a Wikidata QID;
WikiMEL-derived answers carry a ``wk`` prefix (``wkQ320``), kept as written so they match
a KB built with the same ids, and mark the record's source as "wikimel" (else
"wikidiverse"). ``imgPath`` is relative to the dataset root. There is no reference box.

pair_id: every VPWiki record has its own prompted image, but records made from one source
image-text pair share the caption; records with the same sentence get the same pair_id
(the id of the first such record), so a split never separates the prompts of one pair.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from vpmel.data.quality import QualityReport
from vpmel.data.readers.common import (
    Answer,
    ImageRef,
    MentionDraft,
    answer_field,
    find_span,
    id_field,
    read_record_lists,
    text_field,
)

KNOWN_KEYS = frozenset({"id", "sentence", "mentions", "entities", "answer", "imgPath"})


def source_of(answer: str | None) -> str:
    """ "wikimel" for ``wk``-prefixed answers, "wikidiverse" for the others."""
    return "wikimel" if answer and answer.startswith("wk") else "wikidiverse"


def read_mentions(
    files: list[Path], src: Path, source: str | None, report: QualityReport
) -> list[MentionDraft]:
    parse = partial(_parse, src=src, source=source)
    return read_record_lists(
        files, src, "VPWiki records", parse, known_keys=KNOWN_KEYS, report=report
    )


def _parse(rec, fallback: str, *, src: Path, source: str | None, file: str) -> MentionDraft:
    sentence = text_field(rec, "sentence")
    mention = text_field(rec, "mentions", default="").strip()
    answer = answer_field(rec)
    image = text_field(rec, "imgPath").strip()
    return MentionDraft(
        id=id_field(rec),
        sentence=sentence,
        mention=mention,
        span=find_span(sentence, mention),
        answer=Answer("qid", answer, answer) if answer else None,
        image=ImageRef(src, image, (image,) if image else ()),
        source=source or source_of(answer),
        file=file,
        pair_key=sentence,
    )
