"""Import speed on a synthetic GHMFC-format dataset (KB of N entities, images for some).

    PYTHONPATH=. .venv/bin/python benchmarks/import_speed.py --entities 18000 --mentions 2000

Builds the dataset in a temporary folder (tiny JPEGs: the figure is about file lookup and
bookkeeping, not decoding), imports it twice in a row and prints the wall time of each, the
number of kept records, and a digest of both tables so two versions of the code can be
compared for identical output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from vpmel.data.readers import read_dataset


def build(root: Path, entities: int, mentions: int, with_image: float) -> None:
    (root / "kb_image").mkdir(parents=True)
    (root / "images").mkdir()
    names = {f"Q{i}": f"entity {i}" for i in range(entities)}
    (root / "qid2ne.json").write_text(json.dumps(names))
    (root / "qid2abs.json").write_text(json.dumps({q: f"about {n}" for q, n in names.items()}))
    tiny = Image.new("RGB", (8, 8), (120, 30, 200))
    step = max(1, round(1 / with_image)) if with_image > 0 else 0
    for i in range(0, entities, step or entities + 1):
        tiny.save(root / "kb_image" / f"Q{i}.jpg")
    records = {}
    for i in range(mentions):
        records[str(i)] = {"id": str(i), "sentence": f"a picture of entity {i % entities}",
                           "mentions": f"entity {i % entities}", "entities": "",
                           "answer": f"Q{i % entities}"}  # fmt: skip
        tiny.save(root / "images" / f"{i}.jpg")
    (root / "mentions.json").write_text(json.dumps(records))


def digest(frame) -> str:
    return hashlib.sha256(frame.to_json(orient="records").encode()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entities", type=int, default=18000)
    ap.add_argument("--mentions", type=int, default=2000)
    ap.add_argument("--with-image", type=float, default=0.5, help="share of entities with one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        build(src, args.entities, args.mentions, args.with_image)
        for run in (1, 2):
            started = time.perf_counter()
            ds = read_dataset("ghmfc", src, Path(tmp) / f"out{run}", progress=False)
            seconds = time.perf_counter() - started
            print(
                f"run {run}: {seconds:.2f} s; kb {len(ds.kb)}, mentions {len(ds.mentions)}, "
                f"report lines {len(ds.report.issues)}; kb {digest(ds.kb)}, "
                f"mentions {digest(ds.mentions)}"
            )


if __name__ == "__main__":
    main()
