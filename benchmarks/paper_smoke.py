"""Full-size smoke run of the paper's configuration (issue 15): `profile: paper` at real size.

Builds the paper's exact architecture with random weights and no download — a CLIP ViT-B/32
vision tower (``CLIPVisionConfig()``: 12 layers, width 768, patch 32, 224 px, CLIP's image
processor) beside BERT-base (``BertConfig()``; the uncased WordPiece vocabulary of the
packaged all-MiniLM-L6-v2, which is bert-base-uncased's) — saves the two towers as
checkpoint folders and goes the way ``profile: paper`` goes: ``load_hub_towers`` (the
``encoders`` stage), then the ``train`` stage's own ``train()`` with accelerate under the
paper profile of the repository's params.yaml (only the batch, one epoch and one seed
differ), ending with its exact dev evaluation against the whole synthetic KB.

Prints JSON lines: the model (trainable parameters), each step's time, then the figures —
step time, training samples/s, evaluation inputs/s, peak memory — and the projected time
of the paper's 20 epochs over VPWiki's train split (Table 1: 8,000 pairs x 1.18 mentions)
at batch 128 on this device, scaled linearly from the measured batch.

    python benchmarks/paper_smoke.py                       # CPU: 3 steps of 8
    python benchmarks/paper_smoke.py --device cuda --steps 10 --batch-size 128 --entities 2048
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModel,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vpmel.data.schema import KB_SCHEMA, write_table  # noqa: E402
from vpmel.encoders.model import (  # noqa: E402
    MINILM_REF,
    TowersConfig,
    load_hub_towers,
    resolve_reference,
)
from vpmel.iier import training as train_stage  # noqa: E402
from vpmel.params import PAPER_PROFILE, load_params  # noqa: E402

#: VPWiki's train split (paper Table 1): 8,000 image-text pairs, 1.18 mentions per pair
VPWIKI_TRAIN_MENTIONS = round(8000 * 1.18)
PAPER_EPOCHS = 20
PAPER_BATCH = 128
WORDS = (
    "red blue green cat dog car tree house river moon star apple bread lamp chair boat "
    "city bridge tower king queen team film song war island mountain church station"
).split()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps (one epoch)")
    p.add_argument("--batch-size", type=int, default=8, help="mentions per step (paper: 128)")
    p.add_argument("--entities", type=int, default=64, help="synthetic KB size")
    p.add_argument("--dev-mentions", type=int, default=8, help="evaluated against the KB")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--mixed-precision", default="no", help="no | bf16 | fp16 (paper: silent)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="keep the run here")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def say(record: dict) -> None:
    print(json.dumps(record), flush=True)


# ------------------------------------------------------------------------------ towers


def save_paper_towers(root: Path, seed: int) -> TowersConfig:
    """ViT-B/32 and BERT-base at full size, random weights, written as checkpoint folders
    (config, weights, image processor / tokenizer) that ``from_pretrained`` reads."""
    torch.manual_seed(seed)
    vision, text = root / "clip-vit-base-patch32", root / "bert-base-uncased"
    CLIPVisionModel(CLIPVisionConfig()).save_pretrained(vision)
    CLIPImageProcessorPil().save_pretrained(vision)  # CLIP's: 224 px centre crop, its mean/std
    BertModel(BertConfig()).save_pretrained(text)
    tokenizer = BertTokenizerFast.from_pretrained(resolve_reference(MINILM_REF))
    assert tokenizer.vocab_size == BertConfig().vocab_size  # bert-base-uncased's vocabulary
    tokenizer.save_pretrained(text)
    paper = load_params(None, REPO / "params.yaml", profile=PAPER_PROFILE)["encoders"]["towers"]
    return TowersConfig(**(paper | {"vision": str(vision), "text": str(text)}))


def count(module: torch.nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def clip_text_tower_params() -> int:
    """CLIP ViT-B/32's own text tower (the released code's), counted on the meta device."""
    with torch.device("meta"):
        return count(CLIPTextModel(CLIPTextConfig()))


# ------------------------------------------------------------------------------ data


def write_project(root: Path, args: argparse.Namespace) -> None:
    """A KB of ``--entities`` entities with one image each, ``steps x batch`` train
    mentions and ``--dev-mentions`` dev and test mentions (each naming its gold entity),
    and a Detective-VLM answer for every mention (the paper's IIER reads them)."""
    g = np.random.default_rng(args.seed)
    dataset, vpwiki = root / "data/dataset", root / "data/vpwiki"
    (dataset / "images/kb").mkdir(parents=True)
    kb = []
    for i in range(args.entities):
        rel = f"images/kb/Q{i}.png"
        pixels = g.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(dataset / rel)
        name = " ".join(g.choice(WORDS, 2))
        kb.append(
            {
                "qid": f"Q{i}",
                "name": f"{name} {i}",
                "type": "Misc",
                "description": " ".join(g.choice(WORDS, 12)),
                "images": [rel],
            }
        )
    write_table(pd.DataFrame(kb), KB_SCHEMA, dataset / "kb.parquet")
    n_train = args.steps * args.batch_size
    splits = ["train"] * n_train + ["dev"] * args.dev_mentions + ["test"] * args.dev_mentions
    mentions, answers = [], []
    for j, split in enumerate(splits):
        gold = int(g.integers(args.entities))
        rel = f"{split}_img/mention_{j}.png"
        (vpwiki / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(vpwiki / rel)
        sentence = f"{kb[gold]['name']} " + " ".join(g.choice(WORDS, 16))
        mentions.append(
            {
                "id": f"m{j}",
                "pair_id": f"p{j}",
                "sentence": sentence,
                "mention": "",
                "qid": f"Q{gold}",
                "source_image": rel,
                "prompted_image": rel,
                "type": "Misc",
                "split": split,
            }
        )
        answers.append({"id": f"m{j}", "raw": "", "name": kb[gold]["name"], "type": "Misc"})
    pd.DataFrame(mentions).to_parquet(vpwiki / "mentions.parquet", index=False)
    (root / "data/answers").mkdir(parents=True)
    pd.DataFrame(answers).to_parquet(root / "data/answers/answers.parquet", index=False)


# ------------------------------------------------------------------------------ the run


def peak_memory_mb(device: str) -> dict[str, float]:
    out = {"peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if device == "cuda":
        out["peak_gpu_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        out["gpu"] = torch.cuda.get_device_name()
    return out


def run(args: argparse.Namespace, root: Path) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    towers = save_paper_towers(root / "towers", args.seed)
    write_project(root, args)
    torch.manual_seed(args.seed)
    encoder = load_hub_towers(towers)  # what the `encoders` stage does under profile: paper
    encoder.save(root / "models/encoder")
    params = load_params(None, REPO / "params.yaml", profile=PAPER_PROFILE)
    cfg = train_stage.resolve_config(
        params["train"]
        | {
            "batch_size": args.batch_size,
            "epochs": 1,
            "seeds": [args.seed],
            "device": args.device,
            "mixed_precision": args.mixed_precision,
            "save_every_steps": 0,
            "warmup_steps": 1,
        }
    )
    model_info = {
        "vision": "ViT-B/32 (CLIPVisionConfig defaults, random)",
        "text": "BERT-base (BertConfig defaults, random)",
        "vision_params": count(encoder.vision_model),
        "text_params": count(encoder.text_model),
        "clip_text_tower_params": clip_text_tower_params(),
        "text_pooling": encoder.text_pooling,
        "max_text_length": encoder.max_text_length,
        "setup_s": round(time.perf_counter() - started, 1),
    }
    del encoder
    say({"model": model_info})

    stamps: list[float] = []
    evaluations: list[float] = []
    evaluate_dev = train_stage.evaluate_dev

    def timed_evaluate_dev(*a, **k):  # the stage's own exact evaluation, timed
        tic = time.perf_counter()
        out = evaluate_dev(*a, **k)
        evaluations.append(time.perf_counter() - tic)
        return out

    def on_step(step: int) -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        say(
            {
                "step": step,
                "seconds": round(stamps[-1] - (stamps[-2] if len(stamps) > 1 else t0), 2),
            }
        )

    train_stage.evaluate_dev = timed_evaluate_dev
    paths = train_stage.Paths(
        vpwiki=root / "data/vpwiki",
        dataset=root / "data/dataset",
        answers=root / "data/answers/answers.parquet",
        encoder=root / "models/encoder",
        out=root / "models/iier",
        state=root / "models/iier_state",
        live=root / "dvclive",
        reports=root / "reports",
        features=root / "no-features",
    )
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = train_stage.train(cfg, float(params["lambda"]), params["encoders"], paths, on_step)
    total = time.perf_counter() - t0
    train_stage.evaluate_dev = evaluate_dev

    steps = [b - a for a, b in zip([t0, *stamps], stamps, strict=False)]
    steady = steps[1:] or steps  # the first step also warms up
    step_s = statistics.median(steady)
    samples_per_s = args.batch_size / step_s
    eval_inputs = args.entities + args.dev_mentions
    eval_s = evaluations[-1]
    paper_steps = PAPER_EPOCHS * (VPWIKI_TRAIN_MENTIONS // PAPER_BATCH)
    projected_s = paper_steps * step_s * PAPER_BATCH / args.batch_size
    figures = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "steps": len(steps),
        "first_step_s": round(steps[0], 2),
        "step_s": round(step_s, 2),
        "train_samples_per_s": round(samples_per_s, 2),
        "trainable_params": summary_trainable(root / "models/iier"),
        "dev_eval_s": round(eval_s, 1),
        "dev_eval": {k: summary["best_dev"][k] for k in ("n", "H@1", "MRR")},
        "eval_inputs_per_s": round(eval_inputs / eval_s, 2),  # KB entities + dev mentions
        "train_call_s": round(total, 1),  # steps, evaluation, state and checkpoint saving
        **peak_memory_mb(args.device),
        "projection": {
            "vpwiki_train_mentions": VPWIKI_TRAIN_MENTIONS,
            "epochs": PAPER_EPOCHS,
            "batch_size": PAPER_BATCH,
            "optimizer_steps": paper_steps,
            "hours": round(projected_s / 3600, 1),
            "note": "training steps only, step time scaled linearly from the measured batch",
        },
    }
    say({"figures": figures})
    return figures


def summary_trainable(folder: Path) -> int:
    """Trainable parameters of the saved IIER (both towers and IIER's heads and units)."""
    from vpmel.iier.model import IIER

    model, _ = IIER.load(folder)
    return count(model, trainable=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("paper_smoke: --device cuda but torch sees no GPU; use --device cpu")
    if args.steps < 1 or args.batch_size < 2:
        sys.exit("paper_smoke: --steps >= 1 and --batch-size >= 2")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="paper-smoke-"))
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        sys.exit(f"paper_smoke: {root} is not empty; give an empty or new --workdir")
    try:
        figures = run(args, root)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(
        f"paper_smoke: {args.device}, batch {args.batch_size}: {figures['step_s']} s/step, "
        f"{figures['train_samples_per_s']} samples/s, peak host RSS "
        f"{figures['peak_host_rss_mb']} MB"
        + (
            f", peak GPU {figures['peak_gpu_allocated_mb']} MB"
            if "peak_gpu_allocated_mb" in figures
            else ""
        )
        + f"; 20 epochs of VPWiki train at batch 128: ~{figures['projection']['hours']} h",
        flush=True,
    )


if __name__ == "__main__":
    main()
