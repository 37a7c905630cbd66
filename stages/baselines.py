"""DVC stage `baselines`: zero-shot baselines ranked over the entire KB (vpmel.report.baselines).

CLIP zero-shot (prompted mention image vs entity image and name, with `models/encoder`) and
a text-only bi-encoder (mention text with the Detective-VLM answer vs entity name and
attributes, pretrained MiniLM). Writes `reports/baselines.json`: H@k, MRR, MR per split and
per split subset (`test_named`: the caption names the gold entity, `test_unnamed`: it does
not; vpmel.data.subsets), `data/baselines/ranks.parquet` (each mention's gold rank under each
baseline: the report's paired comparisons) and `reports/timings/baselines.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import typer

from stages.console import clear_errors, console, stage_app
from vpmel.data.schema import read_kb
from vpmel.data.subsets import SUBSETS, named_mentions, split_metrics, subset_key
from vpmel.encoders.model import ImageTextEncoder
from vpmel.iier.data import entity_image_paths, gold_rows, kb_rows, read_answers
from vpmel.params import PARAMS_FILE, load_params, reject_unknown
from vpmel.prompts import PromptStyle
from vpmel.report.baselines import (
    box_following,
    clip_zero_shot_scores,
    entity_texts,
    gold_ranks,
    load_images,
    mention_texts,
    text_embeddings,
    text_only_scores,
    world_scene_objects,
)
from vpmel.timings import stage_timer


def main(
    vpwiki: Path = typer.Option(Path("data/vpwiki")),
    dataset: Path = typer.Option(Path("data/dataset")),
    answers: Path = typer.Option(Path("data/answers/answers.parquet")),
    encoder_dir: Path = typer.Option(Path("models/encoder")),
    reports: Path = typer.Option(Path("reports")),
    out: Path = typer.Option(Path("data/baselines"), help="where ranks.parquet goes"),
    timings: Path = typer.Option(
        None, help="folder of the wall-time record (default: <reports>/timings)"
    ),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    with stage_timer("baselines", timings or reports / "timings"):
        run(vpwiki, dataset, answers, encoder_dir, reports, out, params_file)


def run(
    vpwiki: Path,
    dataset: Path,
    answers: Path,
    encoder_dir: Path,
    reports: Path,
    out: Path,
    params_file: Path,
) -> None:
    with clear_errors("baselines"):
        splits = tuple(load_params("evaluate", params_file)["splits"])
        settings = dict(load_params("baselines", params_file) or {})
        reject_unknown(settings, {"scene_objects"}, "baselines")
        style = PromptStyle(**dict(load_params("prompt", params_file) or {}))
        objects_file = settings.get("scene_objects")
        if objects_file and not Path(objects_file).is_file():
            raise FileNotFoundError(
                f"{params_file}: baselines.scene_objects {objects_file}: no such file"
            )
        kb = read_kb(dataset)
        mentions = pd.read_parquet(vpwiki / "mentions.parquet")
        mentions = mentions[mentions["split"].isin(splits)].reset_index(drop=True)
        gold, missing = gold_rows(mentions, kb_rows(kb))
        if missing:
            raise ValueError(
                f"{vpwiki}/mentions.parquet: gold QIDs not in the KB, e.g. {missing[:5]}"
            )
        encoder = ImageTextEncoder.load(encoder_dir).eval()
        answer_map = read_answers(answers)
    gold_kb_rows, split_of = gold.numpy(), mentions["split"].to_numpy()
    named = named_mentions(mentions, kb)
    m_images = load_images(vpwiki, list(mentions["prompted_image"]))
    e_images = load_images(dataset, entity_image_paths(kb))
    e_texts = text_embeddings(encoder, entity_texts(kb))
    unprompted = load_images(dataset, list(mentions["source_image"]))
    prompted_scores = clip_zero_shot_scores(encoder, m_images, e_images, list(kb["name"]))
    ranks = {
        "clip_zero_shot": gold_ranks(prompted_scores, gold_kb_rows),
        "clip_zero_shot_unprompted": gold_ranks(
            clip_zero_shot_scores(encoder, unprompted, e_images, list(kb["name"])), gold_kb_rows
        ),
        "text_only": gold_ranks(
            text_only_scores(encoder, mention_texts(mentions, answer_map), e_texts), gold_kb_rows
        ),
        "text_only_no_vlm": gold_ranks(
            text_only_scores(encoder, mention_texts(mentions, None), e_texts), gold_kb_rows
        ),
    }
    results: dict[str, dict] = {
        name: split_metrics(r, split_of, splits, named) for name, r in ranks.items()
    }
    if objects_file:
        following = box_following(
            encoder, mentions, unprompted, prompted_scores.argmax(1),
            world_scene_objects(Path(objects_file)), e_images, list(kb["name"]), kb_rows(kb),
            style,
        )  # fmt: skip
        results["box_following"] = following
        for split, f in following.items():
            console.print(
                f"baselines: box moved to another object ({split}, n={f['n']}): top-1 changes "
                f"{f['changes']}%, becomes the newly boxed object {f['follows']}% (two-object "
                f"scenes, n={f['n_two']}: {f['changes_two']}% / {f['follows_two']}%)"
            )
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "baselines.json").write_text(json.dumps(results, indent=1) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(
        [
            {"id": i, "split": sp, "baseline": name, "rank": int(r)}
            for name, rs in ranks.items()
            for i, sp, r in zip(mentions["id"], split_of, rs, strict=True)
        ]
    )
    table.to_parquet(out / "ranks.parquet", index=False)
    for name in ("clip_zero_shot", "clip_zero_shot_unprompted", "text_only", "text_only_no_vlm"):
        split = "test" if "test" in splits else splits[0]
        keys = (split, *(subset_key(split, subset) for subset in SUBSETS))
        console.print(f"baselines: {name}: " + ", ".join(
            f"{k} H@1 {m['H@1']} MRR {m['MRR']} (n={m['n']})"
            for k in keys for m in [results[name][k]]))  # fmt: skip


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
