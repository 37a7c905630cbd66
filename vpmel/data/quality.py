"""Data-quality accounting: every record that is dropped or repaired gets a line.

Readers never drop a record silently and never replace a bad image by zeros. They call
:meth:`QualityReport.drop` (the record is not in the output) or :meth:`QualityReport.fix`
(the record is kept, something about it was repaired: an image converted to RGB, a photo
downscaled, a box clipped to the image) with the record id, the file concerned and a
reason from :class:`Reason`. The report is written as JSON to ``reports/``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path


class Reason(StrEnum):
    # records dropped
    MISSING_IMAGE = "missing_image"
    UNREADABLE_IMAGE = "unreadable_image"
    IMAGE_TOO_LARGE = "image_too_large"  # over Pillow's decompression-bomb limit
    PATH_ESCAPES_ROOT = "path_escapes_root"
    NIL_ANSWER = "nil_answer"
    ANSWER_NOT_IN_KB = "answer_not_in_kb"
    DUPLICATE_ID = "duplicate_id"
    MALFORMED_RECORD = "malformed_record"
    # records kept, something repaired
    CONVERTED_TO_RGB = "converted_to_rgb"
    DOWNSCALED = "downscaled"
    BOX_CLIPPED = "box_clipped"
    BOX_DISCARDED = "box_discarded"  # box outside the image or empty: mention kept, box null
    ENTITY_IMAGE_DROPPED = "entity_image_dropped"  # entity kept without that image
    UNKNOWN_KEYS = "unknown_keys"
    UNKNOWN_TYPE = "unknown_type"
    SPAN_REPAIRED = "span_repaired"  # mention offsets wrong: span re-found or set to null


@dataclass(frozen=True)
class Issue:
    table: str  # "mentions" or "kb"
    record_id: str
    file: str  # the source file the problem is about (data file or image)
    reason: str
    action: str  # "dropped" or "fixed"
    detail: str = ""


@dataclass
class QualityReport:
    source: str
    issues: list[Issue] = field(default_factory=list)
    read: Counter = field(default_factory=Counter)  # table -> records read
    kept: Counter = field(default_factory=Counter)  # table -> records written
    notes: list[str] = field(default_factory=list)  # dataset-wide remarks (e.g. "no KB")

    def note(self, text: str) -> None:
        """Record a remark about the whole dataset; it appears in :meth:`summary`."""
        self.notes.append(text)

    def drop(self, table: str, record_id: object, file: object, reason: Reason, detail: str = ""):
        self.issues.append(Issue(table, str(record_id), str(file), str(reason), "dropped", detail))

    def fix(self, table: str, record_id: object, file: object, reason: Reason, detail: str = ""):
        self.issues.append(Issue(table, str(record_id), str(file), str(reason), "fixed", detail))

    def dropped_ids(self, table: str) -> set[str]:
        return {i.record_id for i in self.issues if i.table == table and i.action == "dropped"}

    def by_reason(self, action: str) -> dict[str, int]:
        """Lines per "table.reason" for one action ("dropped" or "fixed")."""
        counts = Counter(f"{i.table}.{i.reason}" for i in self.issues if i.action == action)
        return dict(sorted(counts.items()))

    def summary(self) -> dict:
        """Records read, kept and dropped per table, and lines per reason.

        Readers write exactly one "dropped" line per dropped record, so for every table
        read == kept + dropped.
        """
        tables = sorted(set(self.read) | set(self.kept))
        dropped = Counter(i.table for i in self.issues if i.action == "dropped")
        return {
            "source": self.source,
            "read": {t: self.read[t] for t in tables},
            "kept": {t: self.kept[t] for t in tables},
            "dropped": {t: dropped[t] for t in tables},
            "dropped_by_reason": self.by_reason("dropped"),
            "fixed_by_reason": self.by_reason("fixed"),
            **({"notes": list(self.notes)} if self.notes else {}),
        }

    def write(self, path: Path) -> dict:
        """Write summary and every issue as JSON; returns the summary."""
        summary = self.summary()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"summary": summary, "issues": [asdict(i) for i in self.issues]}
        path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
        return summary
