"""Choose Detective-VLM's tuning lr and epochs on dev (never test): the sweep behind params.

Tunes the committed demo base (`models/detective_base`, stage `detective_base`) on the train
split's instructions once per setting, answers the dev mentions with the tuned model and prints
one JSON line per setting: dev name and type exact match, parse shares, tuning seconds. The
test split is never read. The committed `detective.train.lr` / `epochs` are the best dev name
accuracy of this sweep (README: "Detective-VLM settings").

    python benchmarks/detective_sweep.py 1e-3:7 3e-3:7 6e-3:12 1e-2:15
    python benchmarks/detective_sweep.py 3e-3:7:0      # lr:epochs[:prompt_loss_weight]
    python benchmarks/detective_sweep.py 3e-3:6:0 --mentions all --params other.yaml

Each setting takes ~3-6 minutes on 2 CPU cores (tuning dominates).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from vpmel.data.subsets import name_in_text
from vpmel.detective.answers import answer_forms, exact_match, model_answer_fn, parsed_rows
from vpmel.detective.model import instruction_records, load_pretrained, usable
from vpmel.detective.training import TUNING_MENTIONS, TuneConfig, tune, tuning_mask
from vpmel.params import PARAMS_FILE, load_params


def setting(text: str) -> tuple[float, int, float | None]:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: expected lr:epochs[:prompt_loss_weight]")
    weight = float(parts[2]) if len(parts) == 3 else None
    return float(parts[0]), int(parts[1]), weight


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="+", type=setting, help="lr:epochs[:prompt_loss_weight]")
    p.add_argument("--vpwiki", type=Path, default=Path("data/vpwiki"))
    p.add_argument("--base", type=Path, default=Path("models/detective_base"))
    p.add_argument("--params", type=Path, default=PARAMS_FILE)
    p.add_argument("--answers", type=Path, default=None, help="each setting's dev answers")
    p.add_argument(
        "--mentions",
        choices=TUNING_MENTIONS,
        default=None,
        help="train mentions to tune on (default: the params' detective.train.mentions)",
    )
    args = p.parse_args(argv)

    params = load_params("detective", args.params)
    torch.set_num_threads(int(params.get("threads") or torch.get_num_threads()))
    base_cfg = TuneConfig.from_params(
        {"mode": params["mode"], "seed": params["seed"], **params["train"], "lora": None}
    )
    mentions = pd.read_parquet(args.vpwiki / "mentions.parquet").astype({"id": str})
    if args.mentions is not None:
        base_cfg = replace(base_cfg, mentions=args.mentions)
    train, _ = usable(mentions[mentions["split"] == "train"])
    train = train[tuning_mask(train, base_cfg.mentions)]
    dev, _ = usable(mentions[mentions["split"] == "dev"])
    fmt = params.get("prompt_format", "plain")
    cross = params["cross_fit"]
    for lr, epochs, weight in args.settings:
        cfg = replace(base_cfg, lr=lr, epochs=epochs)
        if weight is not None:
            cfg = replace(cfg, prompt_loss_weight=weight)
        torch.manual_seed(cfg.seed)
        model, processor = load_pretrained(args.base, False, "float32")
        records = instruction_records(train, processor, fmt, args.vpwiki)
        started = time.perf_counter()
        tuned, _ = tune(model, processor, records, cfg, progress=False)
        tune_s = time.perf_counter() - started
        answer = model_answer_fn(
            tuned.eval(), processor, args.vpwiki, fmt, cross["batch_size"], cross["max_new_tokens"]
        )
        rows = parsed_rows(list(dev["id"]), answer(dev))
        # does it read the caption? answers whose name is a phrase of the caption
        in_caption = [
            isinstance(n, str) and bool(n) and name_in_text(s, n)
            for n, s in zip(rows["name"], dev["sentence"], strict=True)
        ]
        if args.answers is not None:
            args.answers.mkdir(parents=True, exist_ok=True)
            rows.assign(sentence=list(dev["sentence"])).to_parquet(
                args.answers
                / f"dev_{lr:g}_{epochs}_{cfg.prompt_loss_weight:g}_{cfg.mentions}.parquet"
            )
        print(
            json.dumps(
                {
                    "lr": lr,
                    "epochs": epochs,
                    "prompt_loss_weight": cfg.prompt_loss_weight,
                    "freeze": list(cfg.freeze),
                    "mentions": cfg.mentions,
                    "train_mentions": len(train),
                    "dev": exact_match(rows, mentions, ("dev",))["dev"],
                    "forms": answer_forms(rows),
                    "answer_in_caption": round(sum(in_caption) / max(len(rows), 1), 4),
                    "tune_s": round(tune_s, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
