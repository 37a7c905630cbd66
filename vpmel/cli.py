"""The ``vpmel`` command: ``vpmel link IMAGE --box X1,Y1,X2,Y2 [--text ...]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from vpmel.params import PARAMS_FILE, load_params

app = typer.Typer(add_completion=False, help="Visual-prompt-guided multimodal entity linking.")
err = Console(stderr=True)


@app.callback()
def main() -> None:
    """vpmel: the VP-MEL pipeline's command line (the stages run through `dvc repro`)."""


@app.command()
def link(
    image: Path = typer.Argument(..., help="the image (any format Pillow reads)"),
    box: str = typer.Option(..., help="the marked region X1,Y1,X2,Y2 in the image's pixels"),
    text: str = typer.Option("", help="the caption / sentence that goes with the image"),
    shape: str = typer.Option(None, help="prompt shape: box | ellipse | arrow | point"),
    top_k: int = typer.Option(5, min=1, help="how many entities to list"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    no_vlm: bool = typer.Option(False, "--no-vlm", help="do not run Detective-VLM (m_w empty)"),
    model: Path = typer.Option(Path("models/iier"), help="trained IIER checkpoint"),
    dataset: Path = typer.Option(Path("data/dataset"), help="dataset folder with kb.parquet"),
    detective: Path = typer.Option(Path("models/detective"), help="tuned Detective-VLM"),
    cache: Path = typer.Option(Path("data/link"), help="where the KB index is cached"),
    save_prompted: Path = typer.Option(None, help="also save the prompted image here"),
    params_file: Path = typer.Option(PARAMS_FILE, "--params", help="for the prompt style"),
) -> None:
    """Rank the KB's entities for the region BOX of IMAGE (and its caption)."""
    from transformers.utils import logging as hf_logging

    from vpmel.link import Linker, LinkError, parse_box
    from vpmel.prompts import PromptStyle

    hf_logging.disable_progress_bar()

    try:
        coords = parse_box(box)
        style_params = dict(load_params("prompt", params_file)) if params_file.is_file() else {}
        if shape:
            style_params["shape"] = shape
        style = PromptStyle(**style_params)
        linker = Linker(model, dataset, None if no_vlm else detective, cache, style)
        result = linker.link(image, coords, text, top_k)
    except (LinkError, ValueError, KeyError, FileNotFoundError) as problem:
        err.print(f"vpmel link: error: {problem}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    if save_prompted is not None and result.prompted is not None:
        result.prompted.save(save_prompted)
    if as_json:
        out = result.as_dict() | {"startup_seconds": round(linker.startup_seconds, 3)}
        sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
        return
    table = Table(title=f"{image} {coords}" + (f" — {text}" if text else ""))
    for column in ("rank", "QID", "name", "type", "score"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left")
    for e in result.entities:
        table.add_row(str(e.rank), e.qid, e.name, e.type or "", f"{e.score:.4f}")
    console = Console()
    console.print(table)
    if result.answer is not None:
        console.print(f"Detective-VLM: {result.answer!r} → m_w = {result.m_w!r}", markup=False)
    console.print(
        f"start-up {linker.startup_seconds:.2f} s, linking {result.seconds * 1000:.0f} ms",
        markup=False,
    )


if __name__ == "__main__":
    app()
