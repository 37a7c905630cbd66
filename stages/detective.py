"""DVC stage `detective`: instruction data from the train split; tune Detective-VLM.

Builds one instruction per train mention with the paper's template (§5.2) — every mention, or
with `detective.train.mentions: named` those whose caption names the gold entity — and writes
them to `data/detective/instructions.jsonl`; tunes the model `detective.model` names — `demo` (the
tiny LLaVA pretrained by the `detective_base` stage, read from `models/detective_base`) or
any image-text-to-text checkpoint (full or LoRA) — and writes it to
`models/detective/` (see `vpmel.detective.model`). Tuning statistics go to
`reports/detective_tuning.json`, its wall times to `reports/timings/detective.json`.
Multi-GPU: `accelerate launch -m stages.detective`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import typer
from accelerate import Accelerator

from stages.console import clear_errors, console, stage_app
from vpmel.detective.answers import OOF_FILE, parsed_rows
from vpmel.detective.cross_fit import cross_fit
from vpmel.detective.model import (
    DEMO,
    PROMPT_FORMATS,
    DetectiveMeta,
    instruction_records,
    load_pretrained,
    save_detective,
    usable,
)
from vpmel.detective.training import TuneConfig, tune, tuning_mask
from vpmel.params import PARAMS_FILE, load_params
from vpmel.timings import stage_timer


def main(
    vpwiki: Path = typer.Option(Path("data/vpwiki"), help="the VPWiki dataset folder"),
    base_dir: Path = typer.Option(
        Path("models/detective_base"), help="the demo's pretrained base (stage detective_base)"
    ),
    instructions: Path = typer.Option(Path("data/detective/instructions.jsonl")),
    out: Path = typer.Option(Path("models/detective"), help="the tuned model folder"),
    reports: Path = typer.Option(Path("reports")),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    # every rank runs this under accelerate; stage_timer writes the record on rank 0 only
    with stage_timer("detective", reports / "timings") as timing:
        with clear_errors("detective"):
            p = load_params("detective", params_file)
            if p.get("threads"):
                torch.set_num_threads(int(p["threads"]))
            prompt_format = p.get("prompt_format", "plain")
            if prompt_format not in PROMPT_FORMATS:
                raise ValueError(f"detective.prompt_format must be one of {PROMPT_FORMATS}")
            cfg = TuneConfig.from_params(
                {"mode": p["mode"], "seed": p["seed"], **p["train"], "lora": p.get("lora")}
            )
            accelerator = Accelerator(
                gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision
            )
            main_process = accelerator.is_main_process
            mentions = pd.read_parquet(vpwiki / "mentions.parquet")
            train, bad_train = usable(mentions[mentions["split"] == "train"])
            dev, _ = usable(mentions[mentions["split"] == "dev"])
            if train.empty:
                raise ValueError(f"{vpwiki}: no usable train mentions")
            cross = dict(p.get("cross_fit") or {})
            folds = int(cross.get("folds", 0) or 0)
            if p["model"] == DEMO:
                if not (base_dir / "config.json").is_file():
                    raise FileNotFoundError(
                        f"{base_dir}: no pretrained demo base; run `dvc repro detective_base`"
                    )
                source, base, dtype = base_dir, "base", "float32"
            else:
                source = p["model"]
                base, dtype = str(p["model"]), str(p.get("dtype", "auto"))

            def fresh() -> tuple[Any, Any]:
                """The untuned model (the same for the final and each cross-fitting fold)."""
                torch.manual_seed(int(p["seed"]))
                return load_pretrained(source, bool(p.get("trust_remote_code", False)), dtype)

            model, processor = fresh()
        console.print(
            f"detective: {len(train)} train instructions ({bad_train} without name/type dropped), "
            f"{len(dev)} dev; model {p['model']} ({cfg.mode})"
        )
        every = instruction_records(train, processor, prompt_format, vpwiki)
        tune_on = tuning_mask(train, cfg.mentions)
        records = [r for r, keep in zip(every, tune_on, strict=True) if keep]
        dev_records = instruction_records(dev, processor, prompt_format, vpwiki)
        console.print(
            f"detective: tuning on {len(records)} of {len(every)} train mentions "
            f"(detective.train.mentions: {cfg.mentions})"
        )
        if main_process:
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            if base == "base":
                model.save_pretrained(out / "base")
                processor.save_pretrained(out / "base")
            instructions.parent.mkdir(parents=True, exist_ok=True)
            with instructions.open("w") as handle:
                for rec in records:
                    handle.write(json.dumps(rec, ensure_ascii=False) + "\n")
        tuned, result = tune(model, processor, records, cfg, dev_records, accelerator)
        if main_process:
            meta = DetectiveMeta(
                base=base,
                mode=cfg.mode,
                prompt_format=prompt_format,
                trust_remote_code=bool(p.get("trust_remote_code", False)),
                dtype=dtype,
            )
            save_detective(out, tuned, processor, meta)
            reports.mkdir(parents=True, exist_ok=True)
            stats = {
                "model": str(p["model"]),
                "mode": cfg.mode,
                "train_instructions": len(records),
                "tuning_mentions": cfg.mentions,
                "train_mentions_not_tuned_on": len(every) - len(records),
                "dev_instructions": len(dev_records),
                "dropped": bad_train,
                "steps": result.steps,
                "epochs": result.epochs,
                "trainable_params": result.trainable_params,
                "train_loss": result.train_loss,
                "dev_loss": result.dev_loss,
            }
            (reports / "detective_tuning.json").write_text(json.dumps(stats, indent=1) + "\n")
            timing["tune_s"] = result.seconds
            console.print(f"detective: tuned in {result.seconds:.0f} s, dev loss {result.dev_loss}")
            console.print(f"detective: wrote {instructions} and {out}")
        oof_file = instructions.parent / OOF_FILE
        if main_process:  # empty unless cross-fitting: `answers` then says what is missing
            parsed_rows([], []).to_parquet(oof_file, index=False)
        if folds > 1:
            oof, seconds = cross_fit(train, every, folds, int(p["seed"]), fresh, cfg, vpwiki,
                                     prompt_format, cross, accelerator,
                                     lambda line: console.print(f"detective: {line}"),
                                     tune_on)  # fmt: skip
            if main_process:
                oof.to_parquet(oof_file, index=False)
                timing["cross_fit_s"] = round(seconds, 1)
                console.print(f"detective: out-of-fold answers for {len(oof)} train mentions "
                              f"({folds} folds, {seconds:.0f} s) -> {oof_file}")  # fmt: skip


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
