"""DVC stage `detective_base`: the demo Detective-VLM's pretrained base (`models/detective_base`).

The paper tunes a VLM that was pretrained elsewhere; the demo has none to download, so this
stage pretrains a tiny LLaVA (vision tower: `models/encoder`; text model: `detective.demo`)
on a synthetic web corpus drawn from the KB with the demo world's scene generator and its
own seed stream — never a VPWiki scene, caption or mention, and never the instruction
template (see `vpmel.detective.pretraining`). `detective` then instruction-tunes it, and
`answers_untuned` asks it as it is (the paper's IIER‡).

Like the encoder, it is trained once and committed with `dvc.lock` (`cache: false`):
`dvc repro -f -s detective_base` retrains it. With `detective.model` set to a hub id or
folder (paper scale) the stage writes only a note and `detective` ignores it.
Reports: `reports/detective_base.json` (held-out naming of the marked entity, losses);
wall time: `reports/timings/detective_base.json`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import typer
from transformers.utils import logging as hf_logging

from stages.console import clear_errors, console, stage_app
from vpmel.atomic import staged_folder
from vpmel.data.schema import read_kb
from vpmel.detective.model import DEMO, build_demo_tokenizer, build_demo_vlm, demo_vlm_config
from vpmel.detective.model import image_token as processor_image_token
from vpmel.detective.pretraining import (
    HELDOUT_SEED_OFFSET,
    KINDS,
    PretrainConfig,
    PretrainingCorpus,
    caption_collisions,
    captioned_naming,
    corpus_vocabulary,
    region_naming,
)
from vpmel.detective.training import TuneConfig, tune
from vpmel.encoders.training import EntityImages, ViewConfig
from vpmel.params import PARAMS_FILE, load_params
from vpmel.prompts import PromptStyle
from vpmel.timings import stage_timer
from vpmel.world.captioned import CaptionedScenes
from vpmel.world.generate import WorldConfig, vocabulary_sentences


def main(
    dataset: Path = typer.Option(Path("data/dataset"), help="imported dataset (its KB)"),
    encoder_dir: Path = typer.Option(Path("models/encoder"), help="the vision tower's source"),
    out: Path = typer.Option(Path("models/detective_base"), help="the base model folder"),
    reports: Path = typer.Option(Path("reports")),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    hf_logging.disable_progress_bar()
    with stage_timer("detective_base", reports / "timings") as timing:
        with clear_errors("detective_base"):
            p = load_params("detective", params_file)
            cfg = PretrainConfig.from_params(p.get("pretrain"))
            prompt = dict(load_params(None, params_file).get("prompt") or {})
            views = ViewConfig(prompt=PromptStyle(**prompt))
            if p.get("threads"):
                torch.set_num_threads(int(p["threads"]))
        if p["model"] != DEMO:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            note = {"model": str(p["model"]), "pretrained": "elsewhere (a hub/local VLM)"}
            reports.mkdir(parents=True, exist_ok=True)
            (out / "NOTE.json").write_text(json.dumps(note, indent=1) + "\n")
            (reports / "detective_base.json").write_text(json.dumps(note, indent=1) + "\n")
            return
        kb = read_kb(dataset)
        images = EntityImages.from_kb(kb, dataset)
        world = WorldConfig(**(load_params(None, params_file).get("world") or {}))
        tokenizer = build_demo_tokenizer(corpus_vocabulary(kb, vocabulary_sentences(world)))
        torch.manual_seed(cfg.seed)
        model, processor = build_demo_vlm(demo_vlm_config(p.get("demo")), tokenizer, encoder_dir)
        token = processor_image_token(processor)
        pool = np.flatnonzero(images.has_image())
        corpus = PretrainingCorpus(
            kb, images, cfg.corpus(views), token, CaptionedScenes(kb, pool, world, cfg.seed)
        )
        heldout = PretrainingCorpus(kb, images, cfg.heldout_corpus(views), token)
        captioned = PretrainingCorpus(
            kb,
            images,
            cfg.heldout_captioned(views),
            token,
            CaptionedScenes(kb, pool, world, cfg.seed + HELDOUT_SEED_OFFSET),
        )
        before = region_naming(model, processor, heldout, cfg.max_new_tokens)
        captioned_before = captioned_naming(model, processor, captioned, cfg.max_new_tokens)
        console.print(
            f"detective_base: pretraining on {len(corpus)} synthetic examples "
            f"({cfg.epochs} epochs, vocabulary {len(tokenizer)}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')})"
        )
        tune_cfg = TuneConfig(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            warmup_ratio=cfg.warmup_ratio,
            freeze=("vision_tower",),
            cache_vision=cfg.epochs > 1,  # later epochs reuse each image's tower output
            cache_examples=cfg.epochs > 1,  # and its encoded example (~110 KB each at 96 px)
            seed=cfg.seed,
        )
        model, result = tune(model, processor, corpus, tune_cfg)
        after = region_naming(model, processor, heldout, cfg.max_new_tokens)
        captioned_after = captioned_naming(model, processor, captioned, cfg.max_new_tokens)
        with staged_folder(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            processor.save_pretrained(tmp)
        timing["pretrain_s"] = result.seconds
        timing["examples_per_s"] = round(result.steps * cfg.batch_size / result.seconds, 1)
        stats = {
            "model": DEMO,
            "examples": len(corpus),
            "epochs": cfg.epochs,
            "vocabulary": len(tokenizer),
            "trainable_params": result.trainable_params,
            "train_loss": result.train_loss,
            "kinds": {k: int((corpus.kinds == i).sum()) for i, k in enumerate(KINDS)},
            "captions_equal_to_the_worlds": caption_collisions(corpus),
            "heldout_region_naming": {"pretrained": after, "random_init": before},
            "heldout_captioned_naming": {
                "pretrained": captioned_after,
                "random_init": captioned_before,
            },
        }
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "detective_base.json").write_text(json.dumps(stats, indent=1) + "\n")
        console.print(
            f"detective_base: {result.seconds:.0f} s, loss {result.train_loss}; names the marked "
            f"entity of fresh scenes {after['names_marked_entity']:.1%} "
            f"(random init {before['names_marked_entity']:.1%}), with a caption "
            f"{captioned_after['names_marked_entity']:.1%} -> {out}"
        )


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
