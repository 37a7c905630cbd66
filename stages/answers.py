"""DVC stage `answers`: Detective-VLM's "{name} {type}" for every mention of every split.

Greedy batched generation, cached per model in `data/answers/cache/` (resumable: a rerun
generates only what is missing; see `vpmel.detective.answers`). Writes
`data/answers/answers.parquet` (id, split, raw, name, type; one row per mention) and
`reports/detective.json`: exact-match accuracy of name and type on dev and test. With
`answers.untuned: true` the answers come from the base model before tuning (the paper's
IIER‡ ablation).
The wall time goes to `reports/timings/answers.json` (`answers_untuned.json` for the
untuned model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch
import typer
from accelerate import PartialState

from stages.console import clear_errors, console, stage_app
from vpmel.atomic import atomic_file
from vpmel.detective.answers import (
    OOF_FILE,
    AnswerCache,
    answers_table,
    fill_cache,
    fingerprint,
    metrics_report,
    model_answer_fn,
    with_out_of_fold,
)
from vpmel.detective.model import META_FILE, load_detective, read_meta
from vpmel.params import PARAMS_FILE, load_params
from vpmel.timings import stage_timer


def main(
    vpwiki: Path = typer.Option(Path("data/vpwiki"), help="the VPWiki dataset folder"),
    model_dir: Path = typer.Option(Path("models/detective"), help="the detective stage's model"),
    out: Path = typer.Option(Path("data/answers")),
    reports: Path = typer.Option(Path("reports")),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
    oof: Path = typer.Option(
        Path("data/detective") / OOF_FILE, help="the detective stage's out-of-fold answers"
    ),
    untuned_flag: bool = typer.Option(
        None, "--untuned/--tuned", help="override answers.untuned (IIER‡ uses --untuned)"
    ),
    timings: Path | None = typer.Option(
        None,
        help="folder of the wall-time record (default: REPORTS/timings); its name is "
        "answers.json, or answers_untuned.json for the untuned model",
    ),
) -> None:
    with clear_errors("answers"):
        p = load_params("answers", params_file)
        untuned = bool(p.get("untuned", False)) if untuned_flag is None else untuned_flag
    name = "answers_untuned" if untuned else "answers"
    with stage_timer(name, timings or reports / "timings") as timing:
        with clear_errors("answers"):
            if p.get("threads"):
                torch.set_num_threads(int(p["threads"]))
            mentions = pd.read_parquet(vpwiki / "mentions.parquet")
            mentions["id"] = mentions["id"].astype(str)
            meta = read_meta(model_dir)
            settings = {"max_new_tokens": int(p["max_new_tokens"]), "format": meta.prompt_format}
            base = meta.base_source(model_dir)
            if untuned:  # the base model: its files when local, else its hub id
                files = [base] if isinstance(base, Path) else []
                key = fingerprint(
                    files, role="untuned", base=None if files else str(base), **settings
                )
            else:  # detective.json names the base; a LoRA adapter also depends on a local base
                files = [model_dir / META_FILE, model_dir / "tuned"]
                if meta.mode == "lora" and isinstance(base, Path):
                    files.append(base)
                key = fingerprint(files, role="tuned", **settings)
            cache = AnswerCache(out / "cache", key)
            n_cached = len(cache.cached_ids() & set(mentions["id"]))
            console.print(
                f"answers: {len(mentions)} mentions, {n_cached} cached for model {key} "
                f"({'untuned' if untuned else 'tuned'})"
            )
            model = processor = None
            if n_cached < mentions["id"].nunique():
                model, processor, meta = load_detective(model_dir, untuned)
                model.to(PartialState().device)
        start = time.perf_counter()
        answer_fn = (
            model_answer_fn(
                model,
                processor,
                vpwiki,
                meta.prompt_format,
                int(p["batch_size"]),
                int(p["max_new_tokens"]),
            )
            if model is not None
            else lambda rows: []
        )
        with clear_errors("answers"):  # e.g. an unreadable image: the chunks before it are kept
            cached, generated = fill_cache(cache, mentions, answer_fn, int(p["chunk_size"]))
            seconds = time.perf_counter() - start
            timing |= {"generated": generated, "generate_s": round(seconds, 1)}
            cache.compact()
            table = answers_table(mentions, cached)
            train_answers = p.get("train_answers", "final")
            if train_answers not in ("final", "out_of_fold"):
                raise ValueError("answers.train_answers must be final or out_of_fold")
            if train_answers == "out_of_fold" and not untuned:
                if not oof.is_file():
                    raise FileNotFoundError(
                        f"{oof}: no out-of-fold answers; set detective.cross_fit.folds >= 2 "
                        "or answers.train_answers: final"
                    )
                table = with_out_of_fold(table, pd.read_parquet(oof))
        atomic_file(out / "answers.parquet", lambda tmp: table.to_parquet(tmp, index=False))
        info = {
            "model": "untuned" if untuned else "tuned",
            "fingerprint": key,
            "mentions": len(table),
            "train_answers": "final" if untuned else train_answers,
        }
        report = metrics_report(table, mentions, info)
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "detective.json").write_text(json.dumps(report, indent=1) + "\n")
        console.print(f"answers: generated {generated} in {seconds:.0f} s; {json.dumps(report)}")


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
