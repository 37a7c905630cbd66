"""Does the demo encoder read the visual prompt? Held-out scenes, whole KB and in-scene.

    PYTHONPATH=. .venv/bin/python benchmarks/prompt_reading.py --scenes 300

Fresh demo-world scenes (the encoder's evaluation seed on this script's own stream, never
VPWiki, never dev or test), marked with the ``prompt`` style of params.yaml (``--thickness``
overrides it), scored by :func:`vpmel.encoders.training.prompt_following`: the boxed object's
name top-1 over the whole KB with the box, without it and with the box moved; and the same
choice among the scene's own names only (chance = mean 1 / objects), which isolates reading
the box from recognising a small object among 1,200 names.

With ``--train-steps N`` it first trains (the README's pilots): from scratch with the
params' encoder architecture, or with ``--init FOLDER`` as a prompt phase continuing from
that encoder. The pilots continued from the phase-1 encoder, the one committed before the
prompt phase was (commit 3a39ccc); the 1,500-step pilot:

    git worktree add /tmp/phase1 3a39ccc
    PYTHONPATH=. .venv/bin/python benchmarks/prompt_reading.py --thickness 3 \\
        --train-steps 1500 --init /tmp/phase1/models/encoder --lr 5e-4 --prompted-rate 0.6 \\
        --scene-negatives 1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from vpmel.data.schema import read_kb
from vpmel.encoders.model import ImageTextEncoder, demo_config
from vpmel.encoders.training import (
    EntityImages,
    PromptPhase,
    TrainConfig,
    ViewConfig,
    prompt_following,
    prompt_probe,
    train_encoder,
)
from vpmel.params import load_params
from vpmel.prompts import PromptStyle

STREAM = 23  # this script's scenes (the encoders stage probes stream 11)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=300)
    ap.add_argument("--encoder", type=Path, default=Path("models/encoder"))
    ap.add_argument("--dataset", type=Path, default=Path("data/dataset"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--thickness", type=int, default=None, help="override prompt.thickness")
    ap.add_argument("--train-steps", type=int, default=0, help="train first (0: evaluate)")
    ap.add_argument("--init", type=Path, default=None, help="continue from this encoder")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--prompted-rate", type=float, default=0.6)
    ap.add_argument("--scene-negatives", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prompt = dict(load_params("prompt", args.params) or {})
    if args.thickness is not None:
        prompt["thickness"] = args.thickness
    views = ViewConfig(prompt=PromptStyle(**prompt))
    kb = read_kb(args.dataset)
    report: dict = {"prompt": prompt}
    if args.train_steps:
        encoders = load_params("encoders", args.params)
        train = encoders.get("train") or {}
        views = replace(
            views, prompted_rate=args.prompted_rate, scene_negatives=args.scene_negatives
        )
        cfg = TrainConfig(
            steps=args.train_steps,
            lr=args.lr,
            # a prompt phase warms up as the stage's does; from scratch as the params' phase 1
            warmup_steps=PromptPhase().warmup_steps if args.init else int(train["warmup_steps"]),
            probe_scenes=0,
            views=views,
        )
        # with --init, a prompt phase alone: continue from that encoder's weights
        init = ImageTextEncoder.load(args.init) if args.init is not None else None
        model_cfg = demo_config(encoders.get("model"))
        start = time.perf_counter()
        result = train_encoder(kb, args.dataset, model_cfg, cfg, progress=True, init=init)
        encoder = result.model.eval()
        report |= {
            "trained": {
                "steps": args.train_steps,
                "init": str(args.init),
                "lr": args.lr,
                "prompted_rate": args.prompted_rate,
                "scene_negatives": args.scene_negatives,
                "seconds": round(time.perf_counter() - start),
            },  # fmt: skip
            "retrieval": result.metrics["retrieval"]["trained"],
        }
    else:
        encoder = ImageTextEncoder.load(args.encoder).eval()
        report["encoder"] = str(args.encoder)
    images = EntityImages.from_kb(kb, args.dataset)
    probe = prompt_probe(images, TrainConfig(views=views), args.scenes, STREAM)
    report |= prompt_following(encoder, probe, list(kb["name"]))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
