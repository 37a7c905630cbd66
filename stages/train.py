"""DVC stage `train`: IIER with in-batch contrastive learning (paper §5.5), via accelerate.

One script for every scale::

    python -m stages.train                                          # one process
    accelerate launch --multi_gpu --num_processes 8 -m stages.train  # 8 GPUs (NCCL)
    accelerate launch --multi_gpu --num_processes 2 -m stages.train  # 2 CPU processes (gloo)

(accelerate 1.x starts a single process for ``--cpu --num_processes N``; ``--multi_gpu``
starts N, and on a machine without GPUs, or with ``train.device: cpu``, they run on the
CPU and talk through gloo.)

Reads params ``train`` (``train.profile`` or ``--profile`` may name an entry of the
top-level ``ablations`` registry, e.g. ``iier_star``, whose train overrides apply),
``ablations``, ``lambda`` and ``encoders``, all after the scale ``profile`` is applied
(``profile: paper``: everything Appendix A.1 states, see ``vpmel.params``), and trains one
IIER per ``train.seeds`` entry with :func:`vpmel.iier.training.train_seeds` (what a run
does, and how it resumes, is there).

Writes ``models/iier/seed_<s>/`` (the checkpoint with the best dev MRR), ``dvclive/``
(per-epoch loss and dev H@k/MRR; ``dvc plots show``) and ``reports/train.json``; the
resumable training state lives in ``models/iier_state/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from accelerate import PartialState

from stages.console import clear_errors
from vpmel.encoders.model import check_encoder_params
from vpmel.iier.training import Paths, resolve_config, train_seeds
from vpmel.params import PARAMS_FILE, load_params
from vpmel.timings import stage_timer

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    vpwiki: Path = typer.Option(Path("data/vpwiki"), help="the split stage's VPWiki folder"),
    dataset: Path = typer.Option(Path("data/dataset"), help="imported dataset (KB, images)"),
    answers: Path = typer.Option(
        Path("data/answers/answers.parquet"), help="Detective-VLM answers (id, raw, name, type)"
    ),
    encoder_dir: Path = typer.Option(Path("models/encoder"), help="the encoders stage's model"),
    out: Path = typer.Option(Path("models/iier"), help="best checkpoint (by dev MRR)"),
    state_dir: Path = typer.Option(Path("models/iier_state"), help="resumable training state"),
    live_dir: Path = typer.Option(Path("dvclive")),
    reports: Path = typer.Option(Path("reports")),
    profile: str = typer.Option(None, help="override train.profile (an `ablations` entry)"),
    features: Path = typer.Option(
        Path("data/features"), help="the features stage's store (frozen-tower outputs)"
    ),
    timings: Path = typer.Option(
        None, help="folder of the wall-time record (default: <reports>/timings)"
    ),
    timing_name: str = typer.Option("train", help="name of the wall-time record"),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    with clear_errors("train"):
        params = load_params(None, params_file)
        if "train" not in params:
            raise KeyError(f"{params_file}: no section 'train'")
        cfg = resolve_config(params["train"], profile, params.get("ablations"))
        lam = float(params.get("lambda", 1.0))
        paths = Paths(
            vpwiki, dataset, answers, encoder_dir, out, state_dir, live_dir, reports, features
        )
        encoder = params.get("encoders") or {"backend": "demo"}
        check_encoder_params(encoder, params["profile"])
        with stage_timer(timing_name, timings or reports / "timings") as timing:
            summary = train_seeds(cfg, lam, encoder, paths, timing)
    if summary and PartialState().is_main_process:
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "train.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    app()
