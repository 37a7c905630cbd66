"""DVC stage `split`: IoU filter, visual prompts, 8:1:1 split — VPWiki.

Drops the pairs the entailment stage rejected, the mentions grounding could not place and
those whose automatic box has IoU < `split.iou_min` with the reference box (mentions
without a reference are kept and flagged), takes the entity type from the KB, draws the
visual prompt (`prompt` params), splits 8:1:1 grouped by image–text pair and writes:

- `data/vpwiki/{train,dev,test}.json` in the released VPWiki schema, prompted images in
  `data/vpwiki/{split}_img/`, and `data/vpwiki/mentions.parquet` (our table plus split,
  automatic box, IoU, prompted image, `source_image` relative to the imported dataset);
- `reports/vpwiki_grounding.json`: mean IoU of the `ground` stage's boxes with the reference
  boxes and the share with IoU >= `split.iou_min`, next to the same figures for its
  random-proposal baseline;
- `reports/vpwiki_counts.json` (counts at every step), `reports/vpwiki_table1.json` (the
  paper's Table 1), `reports/vpwiki_types.json` and `.png` (Figure 3a),
  `reports/vpwiki_dropped.csv` (every dropped mention and the step that dropped it) and
  `reports/vpwiki_contact_sheet.png` (prompted images, automatic vs reference boxes).

With `split.human` (the file `vpmel annotate import` writes from a Label Studio export; paper
§3 and A.6) the annotators' decisions apply: pairs marked unrelated are dropped, the human box
is the reference of the IoU filter, the human type replaces the KB's; every decision is listed
in `reports/vpwiki_human_decisions.csv` and counted (`human_*`) in `vpwiki_counts.json`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import pandas as pd
import typer
from rich.progress import track

from stages.console import clear_errors, console, stage_app
from vpmel.data.schema import read_kb, read_mentions
from vpmel.params import PARAMS_FILE, load_params
from vpmel.prompts import PromptStyle
from vpmel.report.contact_sheet import Tile, draw_contact_sheet
from vpmel.timings import stage_timer
from vpmel.vpwiki.assemble import (
    BuildConfig,
    grounding_report,
    select,
    select_human,
    write_prompted_images,
    write_released,
)
from vpmel.vpwiki.label_studio import human_counts, read_human
from vpmel.vpwiki.split import table1, type_distribution

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(
    dataset: Path = typer.Option(Path("data/dataset"), help="imported dataset folder"),
    entail_dir: Path = typer.Option(Path("data/entail")),
    ground_dir: Path = typer.Option(Path("data/ground")),
    out: Path = typer.Option(Path("data/vpwiki"), help="the VPWiki dataset folder"),
    reports: Path = typer.Option(Path("reports")),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    with stage_timer("split", reports / "timings"):
        with clear_errors("split"):
            p, prompt = load_params("split", params_file), load_params("prompt", params_file)
            cfg = BuildConfig(
                iou_min=float(p["iou_min"]),
                ratios=tuple(p["ratios"]),
                seed=int(p["seed"]),
                prompt_box=p["prompt_box"],
            )
            style = PromptStyle(**prompt)
            kb, mentions = read_kb(dataset), read_mentions(dataset)
            entailment = pd.read_parquet(entail_dir / "entailment.parquet")
            grounding = pd.read_parquet(ground_dir / "grounding.parquet")
            human, decisions = p.get("human"), None
            if human is None:
                kept, counts, dropped = select(mentions, entailment, grounding, kb, cfg)
            else:  # human verification in Label Studio (`vpmel annotate import`)
                table, agreement = read_human(Path(human))
                kept, counts, dropped, decisions = select_human(
                    mentions, entailment, grounding, kb, cfg, table
                )
                counts |= human_counts(decisions, agreement)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        kept["prompted_image"] = write_prompted_images(kept, dataset, out, style, cfg, track)
        write_released(kept, out)
        kept.rename(columns={"image": "source_image"}).to_parquet(
            out / "mentions.parquet", index=False
        )

        reports.mkdir(parents=True, exist_ok=True)
        quality = grounding_report(mentions, grounding, cfg.iou_min)
        (reports / "vpwiki_grounding.json").write_text(json.dumps(quality, indent=1) + "\n")
        (reports / "vpwiki_counts.json").write_text(json.dumps(counts, indent=1) + "\n")
        stats = table1(kept)
        (reports / "vpwiki_table1.json").write_text(stats.to_json(indent=1) + "\n")
        types = type_distribution(kept)
        (reports / "vpwiki_types.json").write_text(json.dumps(types, indent=1) + "\n")
        _type_plot(types, reports / "vpwiki_types.png")
        dropped.to_csv(reports / "vpwiki_dropped.csv", index=False)
        _human_decisions(decisions, reports / "vpwiki_human_decisions.csv")
        _contact_sheet(kept, out, reports / "vpwiki_contact_sheet.png", cfg.seed)
        console.print(f"split: {json.dumps(counts)}")
        console.print(stats.to_string())


def _human_decisions(decisions: pd.DataFrame | None, path: Path) -> None:
    """Every human decision (split.human), or no file at all when there is none."""
    if decisions is not None:
        decisions.to_csv(path, index=False)
        console.print(f"split: human decisions in {path}")
    elif path.exists():  # from an earlier run with split.human set: no longer true
        path.unlink()
        console.print(f"split: removed {path} (split.human is null)")


def _type_plot(types: dict[str, int], path: Path) -> None:
    """Figure 3a: the entity-type distribution of the kept mentions."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(list(types), list(types.values()), color="#c0392b")
    ax.set_ylabel("mentions")
    ax.set_title("VPWiki (demo): entity types")
    for i, v in enumerate(types.values()):
        ax.text(i, v, str(v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _contact_sheet(kept: pd.DataFrame, out: Path, path: Path, seed: int, n: int = 16) -> None:
    """Prompted images with the automatic box (red, drawn in) and the reference (blue)."""
    sample = kept.sample(n=min(n, len(kept)), random_state=seed).sort_values("id")
    tiles = []
    for row in sample.itertuples(index=False):
        boxes = [(row.box, "#1f77b4", "reference")] if row.box is not None else []
        iou = "no reference" if row.box is None else f"IoU {row.iou:.2f}"
        tiles.append(
            Tile(
                out / row.prompted_image,
                boxes,
                f"{row.sentence}\n→ {row.entity_name} [{row.type}] ({row.split}, {iou})",
                row.id,
            )
        )
    draw_contact_sheet(
        tiles, path, title="VPWiki (demo): prompt = automatic box (red); reference (blue)"
    )


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
