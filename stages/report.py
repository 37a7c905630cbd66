"""DVC stage `report`: the paper's tables in miniature, curves and case studies, offline.

Reads what the other stages wrote (reports/*.json, the ablation runs under reports/ablate/,
dvclive curves, data/eval/top20.parquet) and writes `reports/report.md` with
`reports/report_training.png`, `reports/report_hits.png` and `reports/report_cases.png`
next to it — plain Markdown and PNG that open without a network
(:mod:`vpmel.report_document` assembles them).
"""

from __future__ import annotations

from pathlib import Path

import typer

from stages.console import clear_errors, console, stage_app
from vpmel.params import PARAMS_FILE, load_params
from vpmel.report_document import Sources, Variants, write_report

BASELINES = {
    "clip_zero_shot": "CLIP zero-shot (demo encoder)",
    "clip_zero_shot_unprompted": "CLIP zero-shot, image without the prompt",
    "text_only_no_vlm": "text-only bi-encoder (MiniLM, sentence)",
    "text_only": "text-only bi-encoder (MiniLM, VLM answer + sentence)",
}
ABLATIONS = {
    "iier_star": "IIER* (no VLM answers, unprompted image)",
    "iier_dagger": "IIER† (no VLM answers)",
    "iier_ddagger": "IIER‡ (untuned VLM answers)",
}

LAYERS = {
    "layers_12": "CLS of layer 12",
    "layers_4_10_11_12": "layers 4, 10, 11, 12 (released code)",
}
COMBINATIONS = {
    "paper_combination": "S = (S_V + S_T + S_C) / 3 (paper)",
}
LOSSES = {
    "loss_o": "L_O",
    "loss_o_v": "L_O + L_V",
    "loss_o_t": "L_O + L_T",
    "loss_o_c": "L_O + L_C",
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
        variants = Variants(BASELINES, ABLATIONS, LAYERS, LOSSES, COMBINATIONS)
        src = Sources(reports, vpwiki, dataset, eval_dir, ablate_dir, baselines_dir, live)
        path = write_report(src, variants, params)
    console.print(f"report: wrote {path}")


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
