"""DVC stage `features`: frozen-tower features of every IIER input, once (`data/features/`).

Runs the encoder's text tower over every KB text and every mention text IIER may read
(with the tuned Detective-VLM answers, with the untuned ones, without answers) and its
vision tower over every KB image and every mention image (prompted and unprompted), and
stores the outputs content-addressed (:mod:`vpmel.iier.features`). `train`, `evaluate` and every
ablation and seed then load them instead of running the towers: with frozen towers each
run only trains and applies IIER's heads. A run's input that the store lacks is computed
in-process, so the store never changes a result, only the time.

Reads params `train` (for `model.max_text_length` under the chosen profile) and
`encoders.backend`; writes `reports/timings/features.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
import typer

from stages.console import clear_errors, console, stage_app
from vpmel.atomic import staged_folder
from vpmel.data.schema import read_kb
from vpmel.encoders.model import resolve_encoder
from vpmel.iier.data import InputConfig, load_inputs, read_answers
from vpmel.iier.features import build_features, encoder_id, save_store
from vpmel.iier.training import resolve_config
from vpmel.params import PARAMS_FILE, load_params
from vpmel.timings import stage_timer

DEFAULT_ANSWERS = [
    Path("data/answers/answers.parquet"),
    Path("data/answers_untuned/answers.parquet"),
]


def main(
    vpwiki: Path = typer.Option(Path("data/vpwiki"), help="the split stage's VPWiki folder"),
    dataset: Path = typer.Option(Path("data/dataset"), help="imported dataset (KB, images)"),
    answers: list[Path] = typer.Option(DEFAULT_ANSWERS, help="answers tables to cover"),
    encoder_dir: Path = typer.Option(Path("models/encoder"), help="the encoders stage's model"),
    out: Path = typer.Option(Path("data/features"), help="the feature store to write"),
    timings: Path = typer.Option(Path("reports/timings"), help="where features.json goes"),
    batch_size: int = typer.Option(64, help="inputs per tower batch"),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    with clear_errors("features"), stage_timer("features", timings) as timing:
        params = load_params(None, params_file)
        cfg = resolve_config(params.get("train") or {}, None, params.get("ablations"))
        encoder = resolve_encoder(params.get("encoders") or {"backend": "demo"}, encoder_dir)
        encoder.eval()
        mentions_file = vpwiki / "mentions.parquet"
        if not mentions_file.is_file():
            raise FileNotFoundError(f"{mentions_file}: run the split stage first")
        mentions, kb = pd.read_parquet(mentions_file), read_kb(dataset)

        def inputs(answer_map, prompted: bool):
            use = answer_map is not None
            config = InputConfig(use, prompted, cfg.model.max_text_length)
            return load_inputs(
                mentions,
                kb,
                vpwiki,
                dataset,
                encoder.tokenizer,
                encoder.pixel_values,
                encoder.image_size,
                config,
                answer_map,
                cache_images=True,
            )

        variants = [inputs(None, True)] + [inputs(read_answers(a), True) for a in answers]
        source = inputs(None, False)
        text_banks = [v.mentions.texts for v in variants] + [variants[0].entities.texts]
        image_banks = [variants[0].mentions.images, source.mentions.images]
        image_banks.append(variants[0].entities.images)
        with torch.no_grad():
            texts, images = build_features(
                encoder, text_banks, image_banks, batch_size, log=console.print
            )
        with staged_folder(out) as tmp:
            counts = save_store(tmp, encoder_id(encoder_dir), texts, images)
        timing.update(counts)
    console.print(f"features: {json.dumps(counts)} -> {out}")


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
