"""DVC stage `report`: the paper's tables in miniature, curves and case studies, offline.

Reads what the other stages wrote (reports/*.json, the ablation runs under reports/ablate/,
dvclive curves, data/eval/top20.parquet) and writes `reports/report.md` with
`reports/report_training.png`, `reports/report_hits.png` and `reports/report_cases.png`
next to it — plain Markdown and PNG that open without a network
(:mod:`vpmel.report.document` assembles them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from stages.console import clear_errors, console, stage_app
from vpmel.params import ABLATION_TABLES, PARAMS_FILE, load_params, read_ablations
from vpmel.report.document import Sources, Variants, write_report

BASELINES = {
    "clip_zero_shot": "CLIP zero-shot (demo encoder)",
    "clip_zero_shot_unprompted": "CLIP zero-shot, image without the prompt",
    "text_only_no_vlm": "text-only bi-encoder (MiniLM, sentence)",
    "text_only": "text-only bi-encoder (MiniLM, VLM answer + sentence)",
}


def ablation_tables(registry: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """The params' ``ablations`` registry as report table -> {name: label}, in
    :data:`vpmel.params.ABLATION_TABLES` order (the comparison table's order)."""
    entries = read_ablations(registry)
    return {
        table: {name: a.label for name, a in entries.items() if a.table == table}
        for table in ABLATION_TABLES
    }


def main(
    reports: Path = typer.Option(Path("reports")),
    vpwiki: Path = typer.Option(Path("data/vpwiki")),
    dataset: Path = typer.Option(Path("data/dataset")),
    eval_dir: Path = typer.Option(Path("data/eval")),
    ablate_dir: Path = typer.Option(Path("data/ablate"), help="the ablations' top-k tables"),
    baselines_dir: Path = typer.Option(Path("data/baselines"), help="the baselines' ranks"),
    live: Path = typer.Option(Path("dvclive")),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    with clear_errors("report"):
        params = load_params(None, params_file)
        tables = ablation_tables(params.get("ablations"))
        variants = Variants(BASELINES, *(tables[t] for t in ABLATION_TABLES))
        src = Sources(reports, vpwiki, dataset, eval_dir, ablate_dir, baselines_dir, live)
        path = write_report(src, variants, params)
    console.print(f"report: wrote {path}")


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
