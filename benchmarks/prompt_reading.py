"""Does the demo encoder read the visual prompt? Within-scene choice on held-out scenes.

    PYTHONPATH=. .venv/bin/python benchmarks/prompt_reading.py --scenes 400

For fresh demo-world scenes (the encoder's evaluation seed, never VPWiki), each object's name
is a candidate; the prompted scene should pick the boxed object's name. Chance is
1 / (objects in the scene). Reports the share of scenes where the boxed object's name wins,
for the box on the target, for the box moved to another object (does the pick follow?),
and without a box (the object the encoder prefers anyway), next to chance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vpmel.data.schema import read_kb
from vpmel.encoders.model import ImageTextEncoder
from vpmel.encoders.training import EntityImages, TrainConfig, prompted_scene
from vpmel.prompts import draw_prompt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=400)
    ap.add_argument("--encoder", type=Path, default=Path("models/encoder"))
    ap.add_argument("--dataset", type=Path, default=Path("data/dataset"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    kb = read_kb(args.dataset)
    names = list(kb["name"])
    images = EntityImages.from_kb(kb, args.dataset)
    encoder = ImageTextEncoder.load(args.encoder).eval()
    cfg = TrainConfig()
    rng = np.random.default_rng([cfg.eval_seed, 23])
    pool = np.flatnonzero(images.has_image())
    hits = {"boxed": [], "moved": [], "unboxed": []}
    chance = []
    with torch.no_grad():
        for _ in range(args.scenes):
            n = int(rng.integers(2, 6))
            objects = [int(i) for i in rng.choice(pool, size=n, replace=False)]
            image, boxes = prompted_scene(rng, images, objects, cfg.views)
            t, o = (int(x) for x in rng.choice(n, size=2, replace=False))
            views = [draw_prompt(image, boxes[t], cfg.views.prompt),
                     draw_prompt(image, boxes[o], cfg.views.prompt), image]  # fmt: skip
            text = encoder.encode_texts([names[i] for i in objects])
            pick = (encoder.encode_images(views) @ text.T).argmax(1).tolist()
            hits["boxed"].append(pick[0] == t)
            hits["moved"].append(pick[1] == o)
            hits["unboxed"].append(pick[2] == t)
            chance.append(1 / n)
    print(f"{args.scenes} held-out scenes, 2-5 objects; chance {100 * np.mean(chance):.1f}%")
    for key, label in (("boxed", "box on the target -> target's name wins"),
                       ("moved", "box moved to another object -> that object's name wins"),
                       ("unboxed", "no box -> the target's name wins anyway")):  # fmt: skip
        print(f"  {label}: {100 * np.mean(hits[key]):.1f}%")


if __name__ == "__main__":
    main()
