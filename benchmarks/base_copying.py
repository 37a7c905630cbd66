"""Does a demo Detective base copy the boxed object's name from a caption, and pick the right one?

    PYTHONPATH=. .venv/bin/python benchmarks/base_copying.py --base models/detective_base

Fresh captioned scenes from the `detective_base` stage's held-out stream (its seed plus
``HELDOUT_SEED_OFFSET``: never VPWiki, never dev or test), the base given the marked image
and the caption and left to write on, as the stage's ``heldout_captioned_naming`` check.
Where the caption names the marked object, the examples are grouped by how many of the
scene's objects the caption names: with one, copying it is the whole task; with two or more,
the base must also use the box to pick the right one. Per group: how often it writes the
marked object's name, how often another object the caption names, and the pick (right
among the times it writes one of the caption's names; chance is 1 / names). README
"Detective-VLM settings" compares bases with it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vpmel.data.schema import read_kb
from vpmel.data.subsets import name_in_text
from vpmel.detective.model import image_token, load_pretrained
from vpmel.detective.pretraining import (
    HELDOUT_SEED_OFFSET,
    PretrainConfig,
    PretrainingCorpus,
    captioned_texts,
    names_region,
)
from vpmel.encoders.training import EntityImages, ViewConfig
from vpmel.params import PARAMS_FILE, load_params
from vpmel.prompts import PromptStyle
from vpmel.world.captioned import CaptionedScenes
from vpmel.world.generate import WorldConfig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, default=Path("models/detective_base"))
    p.add_argument("--dataset", type=Path, default=Path("data/dataset"))
    p.add_argument("--examples", type=int, default=600)
    p.add_argument("--params", type=Path, default=PARAMS_FILE)
    p.add_argument("--threads", type=int, default=None, help="default: detective.threads")
    args = p.parse_args(argv)

    params = load_params(None, args.params)
    detective = params["detective"]
    torch.set_num_threads(args.threads or int(detective.get("threads") or torch.get_num_threads()))
    cfg = PretrainConfig.from_params(detective.get("pretrain"))
    views = ViewConfig(prompt=PromptStyle(**(params.get("prompt") or {})))
    kb = read_kb(args.dataset)
    images = EntityImages.from_kb(kb, args.dataset)
    source = CaptionedScenes(
        kb,
        np.flatnonzero(images.has_image()),
        WorldConfig(**(params.get("world") or {})),
        cfg.seed + HELDOUT_SEED_OFFSET,
    )
    model, processor = load_pretrained(args.base, False, "float32")
    corpus = PretrainingCorpus(
        kb,
        images,
        replace(cfg.heldout_captioned(views), examples=args.examples),
        image_token(processor),
        source,
    )
    parts, texts = captioned_texts(model.eval(), processor, corpus, cfg.max_new_tokens)
    groups: dict[str, list[tuple[bool, bool]]] = {}
    picks = set()  # the groups where the caption names the marked object among others
    for i, (part, text) in enumerate(zip(parts, texts, strict=True)):
        _, caption, _, subject, named = part
        gold = str(kb.at[subject, "name"])
        if not (named and caption):
            groups.setdefault("caption does not name it", []).append(
                (names_region(text, gold), False)
            )
            continue
        objects = source.record(i, subject).objects
        names = {str(kb.at[source.index_of[o.qid], "name"]) for o in objects}
        in_caption = [n for n in names if name_in_text(caption, n)]
        other = any(names_region(text, n) for n in in_caption if n != gold)
        if gold in in_caption:
            key = f"caption names {len(in_caption)}" if len(in_caption) < 3 else "caption names 3+"
            picks.add(key)
        else:
            key = "caption names it by an alias"
        groups.setdefault(key, []).append((names_region(text, gold), other))
    report = {}
    for key in sorted(groups):
        hits = np.array(groups[key], dtype=bool).reshape(-1, 2)
        right, other = float(hits[:, 0].mean()), float(hits[:, 1].mean())
        pick = round(right / (right + other), 3) if key in picks and right + other else None
        report[key] = {
            "n": len(hits),
            "writes_marked": round(right, 3),
            "writes_another_caption_name": round(other, 3),
            "pick": pick,
        }
    print(json.dumps({"base": str(args.base), "examples": len(corpus), **report}, indent=1))


if __name__ == "__main__":
    main()
