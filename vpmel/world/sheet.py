"""A contact sheet of a generated world: scenes, reference boxes labelled with the gold
entity's name, and captions (with which targets the caption names)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vpmel.report.contact_sheet import Tile, draw_contact_sheet

MENTION_COLOURS = ("red", "dodgerblue")


def _qid(url: str | None) -> str | None:
    return url.rsplit("/", 1)[-1] if url else None


def world_tiles(out: Path, n: int = 24, seed: int = 0) -> list[Tile]:
    """``n`` seeded records of ``out/demo.json`` as contact-sheet tiles."""
    out = Path(out)
    records = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    kb_rows = json.loads((out / "kb_entity.json").read_text(encoding="utf-8"))
    names = {row["id"]: row["entity_name"] for row in kb_rows}
    rng = np.random.default_rng(seed)
    picked = sorted(
        int(i) for i in rng.choice(len(records), size=min(n, len(records)), replace=False)
    )
    tiles = []
    for i in picked:
        text, image, _topic, mentions = records[i]
        boxes, notes = [], []
        for j, (words, etype, start, _end, url, box) in enumerate(mentions):
            qid = _qid(url)
            name = names.get(qid, f"{qid} (not in KB)" if qid else "NIL")
            colour = MENTION_COLOURS[j % len(MENTION_COLOURS)]
            if box is not None:
                boxes.append((box, colour, name))
            said = f'"{words}"' if start >= 0 else "not named"
            where = "" if box is not None else ", not in image"
            notes.append(f"- {name} [{etype}] {said}{where}")
        related = any(m[5] is not None for m in mentions)
        title = Path(image).name + ("" if related else "  · unrelated pair")
        tiles.append(Tile(out / image, boxes, text + "\n" + "\n".join(notes), title))
    return tiles


def world_contact_sheet(
    out: Path, png_path: Path, n: int = 24, seed: int = 0, columns: int = 4
) -> Path:
    """Draw ``n`` scenes of the world in ``out`` with boxes and captions into ``png_path``."""
    tiles = world_tiles(out, n, seed)
    title = f"demo world {Path(out).name}: {len(tiles)} scenes (red/blue = reference boxes)"
    return draw_contact_sheet(tiles, png_path, columns=columns, caption_lines=5, title=title)
