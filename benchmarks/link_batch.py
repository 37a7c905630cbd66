"""`vpmel link` start-up costs: a bad-input error, one region, and a --batch of many (issue 10).

Builds a tiny project in a temporary folder — a KB of ``--entities`` entities with images,
an untrained IIER from configs (a small CLIP vision tower and BERT, random weights, no hub
access) that reads no Detective-VLM answers — and times whole ``vpmel link`` processes, as
a user runs them:

* bad input: a missing image, which must be reported before any model loads;
* one region: ``vpmel link IMAGE --box ...`` (the KB index is cached by a warm-up run first);
* a batch: ``vpmel link --batch FILE --out RESULTS`` with ``--lines`` regions, the model
  loaded once; its results are checked against the single run for the same region.

    python benchmarks/link_batch.py                 # 100 regions, 200 entities
    python benchmarks/link_batch.py --lines 1000 --repeat 1

Each number is the median of ``--repeat`` runs (wall clock of the process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from transformers import BertConfig, BertModel, BertTokenizerFast, CLIPVisionConfig, CLIPVisionModel
from transformers.utils import logging as hf_logging

from vpmel.data.schema import KB_SCHEMA, write_table
from vpmel.encoders.model import ImageTextEncoder, demo_image_processor
from vpmel.iier.data import InputConfig
from vpmel.iier.model import IIER, IIERConfig

LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=200)
    p.add_argument("--lines", type=int, default=100, help="regions in the batch")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--keep", type=Path, default=None, help="build the project here and keep it")
    return p.parse_args(argv)


def build_project(root: Path, n_entities: int, n_lines: int) -> None:
    """KB + images, a random IIER checkpoint, a photo and a batch file of ``n_lines``."""
    g = np.random.default_rng(0)
    rows = []
    for i in range(n_entities):
        rel = f"images/kb/Q{i}.png"
        (root / "data/dataset" / rel).parent.mkdir(parents=True, exist_ok=True)
        colour = tuple(int(c) for c in g.integers(0, 255, 3))
        Image.new("RGB", (32, 32), colour).save(root / "data/dataset" / rel)
        rows.append({"qid": f"Q{i}", "name": f"thing {i}", "type": "Misc",
                     "description": "a thing", "images": [rel]})  # fmt: skip
    write_table(pd.DataFrame(rows), KB_SCHEMA, root / "data/dataset/kb.parquet")

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, *(f"##{c}" for c in LETTERS)]
    (root / "tok").mkdir()
    (root / "tok/vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(root / "tok/vocab.txt"), do_lower_case=True)
    text = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=128,
                                max_position_embeddings=64))  # fmt: skip
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128,
                                              num_hidden_layers=12, num_attention_heads=2,
                                              image_size=32, patch_size=8))  # fmt: skip
    encoder = ImageTextEncoder(vision, text, demo_image_processor(32), tokenizer, projection_dim=16)
    cfg = IIERConfig(d_v=16, d_t=24, d_c=12, text_global="mean", max_text_length=32)
    inputs = InputConfig(use_answers=False, max_text_length=cfg.max_text_length)
    IIER(encoder, cfg).save(root / "models/iier", {"inputs": vars(inputs)})

    Image.new("RGB", (640, 480), (200, 200, 200)).save(root / "photo.png")
    with open(root / "batch.jsonl", "w") as out:
        for i in range(n_lines):
            x, y = int(g.integers(0, 500)), int(g.integers(0, 380))
            box = [x, y, x + int(g.integers(20, 140)), y + int(g.integers(20, 100))]
            out.write(json.dumps({"id": i, "image": "photo.png", "box": box,
                                  "text": f"thing number {i} on a table"}) + "\n")  # fmt: skip


def timed(root: Path, args: list[str], expect: int) -> tuple[float, str]:
    common = ["--model", "models/iier", "--dataset", "data/dataset", "--cache", "cache",
              "--no-vlm", "--params", "none.yaml"]  # fmt: skip
    vpmel = Path(sys.executable).with_name("vpmel")
    started = time.perf_counter()
    env = os.environ | {"TOKENIZERS_PARALLELISM": "false"}
    command = [str(vpmel), "link", *args, *common]
    run = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if run.returncode != expect:
        raise SystemExit(f"vpmel link {args}: exit {run.returncode}\n{run.stdout}{run.stderr}")
    return seconds, run.stdout + run.stderr


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vpmel-link-bench-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        build_project(root, args.entities, args.lines)
        first = json.loads((root / "batch.jsonl").read_text().splitlines()[0])
        box = ",".join(str(v) for v in first["box"])
        one = ["photo.png", "--box", box, "--text", first["text"], "--json"]
        timed(root, one, 0)  # warm-up: builds and caches the KB index

        bad = [timed(root, ["missing.png", "--box", "1,1,5,5"], 1) for _ in range(args.repeat)]
        single = [timed(root, one, 0) for _ in range(args.repeat)]
        batch_args = ["--batch", "batch.jsonl", "--out", "results.jsonl"]
        batch = [timed(root, batch_args, 0) for _ in range(args.repeat)]

        ours = json.loads((root / "results.jsonl").read_text().splitlines()[0])
        alone = json.loads(single[0][1][single[0][1].index("{") :])
        same = [e["qid"] for e in ours["entities"]] == [e["qid"] for e in alone["entities"]]
        t_bad = statistics.median(s for s, _ in bad)
        t_one = statistics.median(s for s, _ in single)
        t_batch = statistics.median(s for s, _ in batch)
        print(f"tiny project: {args.entities} entities, batch of {args.lines} regions, "
              f"median of {args.repeat} runs, torch threads {torch.get_num_threads()}")  # fmt: skip
        print(f"bad input (missing image) error  {t_bad:7.2f} s")
        print(f"vpmel link, one region           {t_one:7.2f} s   "
              f"(x {args.lines} processes = {t_one * args.lines:.1f} s)")  # fmt: skip
        print(f"vpmel link --batch, {args.lines:4d} regions  {t_batch:7.2f} s   "
              f"({(t_batch - t_one) / max(args.lines - 1, 1) * 1000:.1f} ms per extra region; "
              f"{t_one * args.lines / t_batch:.0f}x faster than one process each)")  # fmt: skip
        print(f"batch line 1 ranks like the single link: {same}")
        print(batch[-1][1].strip().splitlines()[-1])


if __name__ == "__main__":
    main()
