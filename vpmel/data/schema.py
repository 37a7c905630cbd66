"""Record tables every stage passes along: KB entities and mentions.

Both are Parquet files with the explicit pyarrow schemas below. Image columns hold paths
relative to the dataset root (the folder the table lives in), never absolute paths, so a
dataset folder can be moved or tracked by DVC as a whole.

Boxes are ``[x1, y1, x2, y2]`` in pixels of the referenced image (after any downscaling
done at import), x to the right and y downwards, x1 < x2 and y1 < y2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: The seven entity types of VPWiki (paper §3, Appendix A.4).
ENTITY_TYPES: tuple[str, ...] = (
    "Person",
    "Organization",
    "Location",
    "Country",
    "Event",
    "Works",
    "Misc",
)

KB_SCHEMA = pa.schema(
    [
        pa.field("qid", pa.string(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        # one of ENTITY_TYPES, or null when the source does not say
        pa.field("type", pa.string()),
        # free text: description and/or "key: value" attributes
        pa.field("description", pa.string(), nullable=False),
        # relative to the dataset root; empty when the entity has no usable image
        pa.field("images", pa.list_(pa.string()), nullable=False),
    ],
    metadata={"vpmel.table": "kb"},
)

MENTION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        # the image-text pair the mention belongs to (mentions of one pair share image and
        # sentence; splits are grouped by it)
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("sentence", pa.string(), nullable=False),
        # mention words; "" where the source has none (VPWiki blanks them by design)
        pa.field("mention", pa.string(), nullable=False),
        # character span of the mention words in the sentence; null when not in the text
        pa.field("span_start", pa.int32()),
        pa.field("span_end", pa.int32()),
        pa.field("qid", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),
        pa.field("image_width", pa.int32(), nullable=False),
        pa.field("image_height", pa.int32(), nullable=False),
        # reference box (human annotation), null when absent
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("type", pa.string()),
        # where the record came from: "wikidiverse", "wikimel", "vpwiki", "demo", ...
        pa.field("source", pa.string(), nullable=False),
    ],
    metadata={"vpmel.table": "mentions"},
)

KB_FILE = "kb.parquet"
MENTIONS_FILE = "mentions.parquet"


def normalize_type(value: Any) -> str | None:
    """Map a type label from any source onto ENTITY_TYPES (None when unknown).

    Accepts the seven names in any case, common abbreviations (PER, ORG, LOC, GPE...)
    and WikiDiverse's labels.
    """
    if value is None:
        return None
    key = str(value).strip().lower().rstrip(".")
    return _TYPE_ALIASES.get(key)


_TYPE_ALIASES: dict[str, str] = {t.lower(): t for t in ENTITY_TYPES}
_TYPE_ALIASES.update(
    {
        "per": "Person",
        "people": "Person",
        "human": "Person",
        "org": "Organization",
        "organisation": "Organization",
        "loc": "Location",
        "place": "Location",
        "gpe": "Country",
        "nation": "Country",
        "evt": "Event",
        "work": "Works",
        "work of art": "Works",
        "creative work": "Works",
        "misc": "Misc",
        "miscellaneous": "Misc",
        "other": "Misc",
    }
)


def _check_columns(rows: pd.DataFrame, schema: pa.Schema, what: str) -> None:
    missing = [f.name for f in schema if f.name not in rows.columns]
    if missing:
        raise ValueError(f"{what} table lacks columns {missing}")


def to_table(rows: pd.DataFrame | Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly ``schema``'s columns, in its order, with its types."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if frame.empty and not len(frame.columns):
        return schema.empty_table()
    _check_columns(frame, schema, schema.metadata.get(b"vpmel.table", b"?").decode())
    frame = frame[[f.name for f in schema]]
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def write_table(
    rows: pd.DataFrame | Iterable[Mapping[str, Any]], schema: pa.Schema, path: Path
) -> pa.Table:
    table = to_table(rows, schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table


def read_table(path: Path, schema: pa.Schema) -> pd.DataFrame:
    """Read a Parquet table and check it carries ``schema``'s columns and types."""
    table = pq.read_table(path)
    for field in schema:
        if field.name not in table.schema.names:
            raise ValueError(f"{path}: column {field.name!r} missing")
        got = table.schema.field(field.name).type
        if got != field.type:
            raise ValueError(f"{path}: column {field.name!r} is {got}, expected {field.type}")
    return table.select([f.name for f in schema]).to_pandas()


def read_kb(root: Path) -> pd.DataFrame:
    return read_table(Path(root) / KB_FILE, KB_SCHEMA)


def read_mentions(root: Path) -> pd.DataFrame:
    return read_table(Path(root) / MENTIONS_FILE, MENTION_SCHEMA)
