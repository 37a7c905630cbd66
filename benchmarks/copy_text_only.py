"""Can the demo Detective's LM learn to copy a name from a caption? Text only, no image.

Trains a fresh Llama of the demo's text sizes (``detective.demo``; the committed base's
word-level tokenizer) on the `captioned` pretraining texts (a caption from the world generator
at another seed, then ``"the red box shows {name}, a {type}."``) and, every fifth of the run,
prints how often it writes the right name after ``"{caption} the red box shows"`` on 300 fresh
captions, split by whether the caption names the object. Without the image the box cannot
pick among several named objects, so this measures copying, not grounding.

    PYTHONPATH=. python benchmarks/copy_text_only.py --steps 1500

~7 minutes on one core for 1,500 steps of 64.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from vpmel.detective.model import build_demo_vlm, demo_vlm_config
from vpmel.detective.pretraining import _fill, names_region
from vpmel.params import PARAMS_FILE, load_params
from vpmel.world.captioned import CaptionedScenes
from vpmel.world.generate import WorldConfig

REGION = "the red box shows {name}, a {type}."


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--base", type=Path, default=Path("models/detective_base"))
    p.add_argument("--dataset", type=Path, default=Path("data/dataset"))
    p.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    kb = pd.read_parquet(args.dataset / "kb.parquet")
    tok = PreTrainedTokenizerFast.from_pretrained(args.base)
    world = WorldConfig(**(load_params(None, args.params).get("world") or {}))
    demo = demo_vlm_config(load_params("detective", args.params).get("demo"))
    scenes = CaptionedScenes(kb, np.arange(len(kb)), world, 0)
    rng = np.random.default_rng(0)

    def example(index: int) -> tuple[str, str, bool, str]:
        subject = int(rng.integers(len(kb)))
        record = scenes.record(index, subject)
        caption = "" if record.caption in scenes.forbidden else record.caption
        named = record.mentions[0].named and bool(caption)
        return caption, _fill(REGION, kb, subject), named, str(kb.at[subject, "name"])

    train = [example(i) for i in range(20000)]
    test = [example(100_000 + i) for i in range(300)]
    texts = [f"{c} {r}".strip() for c, r, _, _ in train]
    # the demo VLM's own text model (build_demo_vlm's config), without the image
    text_config = build_demo_vlm(demo, tok)[0].config.text_config
    torch.manual_seed(0)
    model = LlamaForCausalLM(text_config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, args.lr, total_steps=args.steps, pct_start=0.03
    )
    named = np.array([t[2] for t in test])

    def copies() -> tuple[float, float]:
        model.eval()
        tok.padding_side = "left"
        hits: list[bool] = []
        for k in range(0, len(test), 100):
            chunk = test[k : k + 100]
            enc = tok([f"{c} the red box shows".strip() for c, *_ in chunk], return_tensors="pt",
                      padding=True)  # fmt: skip
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=8, do_sample=False)
            texts_out = tok.batch_decode(
                out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
            hits += [names_region(g, t[3]) for g, t in zip(texts_out, chunk, strict=True)]
        model.train()
        h = np.array(hits)
        return float(h[named].mean()), float(h[~named].mean())

    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = rng.integers(len(texts), size=args.batch)
        tok.padding_side = "right"
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()
        if step % max(1, args.steps // 5) == 0:
            with_name, without = copies()
            print(f"step {step}: loss {loss.item():.3f}, names it where the caption does "
                  f"{with_name:.1%}, where it does not {without:.1%} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
