"""The ``vpmel`` command: ``vpmel link IMAGE --box X1,Y1,X2,Y2 [--text ...]`` for one
region, ``vpmel link --batch FILE.jsonl [--out RESULTS.jsonl]`` for many; ``vpmel annotate
export|import`` for human verification of VPWiki in Label Studio (vpmel.vpwiki.label_studio).

Every input is checked before the model loads (see :mod:`vpmel.link`), so a mistake costs
well under a second; each one is a single ``vpmel link: error: ...`` line and exit code 1.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import typer
from rich.console import Console
from rich.table import Table

from vpmel.link import (
    BatchLine,
    Linker,
    LinkError,
    LinkResult,
    Region,
    check_model_files,
    check_output_file,
    check_save_path,
    open_region,
    parse_box,
    read_batch,
)
from vpmel.params import PARAMS_FILE, load_params
from vpmel.prompts import PromptStyle

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(add_completion=False, help="Visual-prompt-guided multimodal entity linking.")
err = Console(stderr=True)


@app.callback()
def main() -> None:
    """vpmel: the VP-MEL pipeline's command line (the stages run through `dvc repro`)."""


def _fail(message: object) -> typer.Exit:
    err.print(f"vpmel link: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(1)


@app.command()
def link(
    image: Path = typer.Argument(None, help="the image (any format Pillow reads)"),
    box: str = typer.Option(None, help="the marked region X1,Y1,X2,Y2 in the image's pixels"),
    text: str = typer.Option("", help="the caption / sentence that goes with the image"),
    batch: Path = typer.Option(
        None, help="JSON lines {image, box, text, id, shape}, one region each (no IMAGE, --box)"
    ),
    out: Path = typer.Option(None, help="with --batch: write the JSON lines here, not stdout"),
    shape: str = typer.Option(None, help="prompt shape: box | ellipse | arrow | point"),
    top_k: int = typer.Option(5, min=1, help="how many entities to list"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    no_vlm: bool = typer.Option(False, "--no-vlm", help="do not run Detective-VLM (m_w empty)"),
    model: Path = typer.Option(Path("models/iier"), help="trained IIER checkpoint"),
    encoder: Path = typer.Option(
        None,
        help="the encoder folder the checkpoint was trained with (default: the one it "
        "records, models/encoder)",
    ),
    dataset: Path = typer.Option(Path("data/dataset"), help="dataset folder with kb.parquet"),
    detective: Path = typer.Option(Path("models/detective"), help="tuned Detective-VLM"),
    cache: Path = typer.Option(Path("data/link"), help="where the KB index is cached"),
    candidates: int = typer.Option(
        None,
        min=1,
        help="score only the K best candidates of a FAISS first stage (huge KBs; "
        "default: IIER scores the whole KB)",
    ),
    save_prompted: Path = typer.Option(None, help="also save the prompted image here"),
    params_file: Path = typer.Option(PARAMS_FILE, "--params", help="for the prompt style"),
) -> None:
    """Rank the KB's entities for the region BOX of IMAGE (and its caption), or for every
    line of a --batch file with the model loaded once."""
    detective_dir = None if no_vlm else detective
    try:  # everything the user gave is checked before any model loads
        style_params = dict(load_params("prompt", params_file)) if params_file.is_file() else {}
        if shape:
            style_params["shape"] = shape
        style = PromptStyle(**style_params)
        if batch is not None:
            if image is not None or box is not None or text or save_prompted is not None:
                raise LinkError("--batch reads IMAGE, --box and --text from its lines; give "
                                "either IMAGE --box ... or --batch FILE (--save-prompted "
                                "works with one IMAGE only)")  # fmt: skip
            lines = read_batch(batch, style)
            if out is not None:
                check_output_file(out, "--out")
        else:
            if image is None or box is None:
                raise LinkError("give IMAGE and --box X1,Y1,X2,Y2, or --batch FILE.jsonl")
            if out is not None:
                raise LinkError("--out goes with --batch (one IMAGE prints to stdout)")
            coords = parse_box(box)
            loaded = open_region(image, coords)
            save_format = check_save_path(save_prompted) if save_prompted is not None else None
        check_model_files(model, dataset, detective_dir, encoder)
    except (LinkError, ValueError, KeyError, TypeError, OSError) as problem:
        raise _fail(problem) from None

    if batch is not None:
        _link_batch(lines, batch, out, model, dataset, detective_dir, cache, style, top_k,
                    candidates, encoder)  # fmt: skip
        return

    try:
        linker = _load_linker(model, dataset, detective_dir, cache, style, candidates, encoder)
        result = next(linker.link_many([Region(image, coords, text, loaded=loaded)], top_k))
        if isinstance(result, LinkError):
            raise result
    except (LinkError, ValueError, KeyError, OSError) as problem:
        raise _fail(problem) from None
    _print_result(result, linker, image, coords, text, as_json)
    if save_prompted is not None and result.prompted is not None:
        try:  # the ranking is printed already: a failed save never loses it
            result.prompted.save(save_prompted, format=save_format)
        except (OSError, ValueError, KeyError) as problem:
            raise _fail(f"--save-prompted {save_prompted}: not saved ({problem})") from None


def _load_linker(
    model: Path,
    dataset: Path,
    detective: Path | None,
    cache: Path,
    style: PromptStyle,
    candidates: int | None = None,
    encoder: Path | None = None,
) -> Linker:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    linker = Linker(
        model, dataset, detective, cache, style, candidates=candidates, encoder_dir=encoder
    )
    for warning in linker.warnings:
        err.print(f"vpmel link: warning: {warning}", markup=False, highlight=False)
    return linker


def _print_result(
    result: LinkResult, linker: Linker, image: Path, coords: list[float], text: str, as_json: bool
) -> None:
    if as_json:
        out = result.as_dict() | {"startup_seconds": round(linker.startup_seconds, 3)}
        sys.stdout.write(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
        sys.stdout.flush()
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
    sys.stdout.flush()


def _link_batch(
    lines: list[BatchLine],
    batch: Path,
    out: Path | None,
    model: Path,
    dataset: Path,
    detective: Path | None,
    cache: Path,
    style: PromptStyle,
    top_k: int,
    candidates: int | None = None,
    encoder: Path | None = None,
) -> None:
    """One JSON line per input line, in order, to ``out`` or stdout; a summary on stderr."""
    started = time.perf_counter()
    good = [line for line in lines if line.region is not None]
    for line in lines:  # what the checks found is said before the model loads
        if line.error is not None:
            _say_line_error(batch, line.error)
    failed = 0
    results: Iterator[LinkResult | LinkError] = iter(())
    startup = 0.0
    if good:
        try:
            linker = _load_linker(model, dataset, detective, cache, style, candidates, encoder)
        except (LinkError, ValueError, KeyError, OSError) as problem:
            raise _fail(problem) from None
        startup = linker.startup_seconds
        results = linker.link_many((line.region for line in good), top_k)
    sink: TextIO = sys.stdout
    try:
        if out is not None:  # checked before the model loaded; opened once it has
            sink = open(out, "w", encoding="utf-8")
        for line in lines:
            record: dict[str, object] = {"line": line.number, "id": line.id}
            try:
                result = next(results) if line.region is not None else None
            except (ValueError, KeyError, OSError) as problem:  # linking itself broke
                raise _fail(f"{batch}: line {line.number}: {problem}") from None
            if isinstance(result, LinkResult):
                record |= {k: v for k, v in result.as_dict().items() if k != "seconds"}
            else:
                failed += 1
                error = line.error or f"line {line.number}: {result}"
                if line.error is None:  # the region went bad after it was checked
                    _say_line_error(batch, error)
                record["error"] = error
            try:
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
            except OSError as problem:
                raise _fail(f"{out or 'stdout'}: cannot write the results ({problem})") from None
    except OSError as problem:  # opening --out
        raise _fail(f"--out {out}: {problem}") from None
    finally:
        if sink is not sys.stdout:
            sink.close()
    seconds = time.perf_counter() - started
    err.print(
        f"vpmel link: linked {len(lines) - failed}, failed {failed} in {seconds:.2f} s "
        f"(model start-up {startup:.2f} s)",
        markup=False,
        highlight=False,
    )
    if failed:
        raise typer.Exit(1)


def _say_line_error(batch: Path, error: str) -> None:
    err.print(f"vpmel link: error: {batch}: {error}", markup=False, highlight=False,
              soft_wrap=True)  # fmt: skip


# ------------------------------------------------------------------------- vpmel annotate

annotate_app = typer.Typer(
    add_completion=False,
    help="Human verification of VPWiki in Label Studio (paper §3, Appendix A.6): export a "
    "project with the pipeline's boxes, types and entailment scores as predictions; import "
    "the annotators' export as the decisions the split stage applies (split.human).",
)
app.add_typer(annotate_app, name="annotate")


def _annotate_fail(message: object) -> typer.Exit:
    err.print(f"vpmel annotate: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(1)


@annotate_app.command("export")
def annotate_export(
    dataset: Path = typer.Option(Path("data/dataset"), help="imported dataset folder"),
    entail_dir: Path = typer.Option(Path("data/entail"), help="the entail stage's output"),
    ground_dir: Path = typer.Option(Path("data/ground"), help="the ground stage's output"),
    out: Path = typer.Option(Path("data/label_studio"), help="where the project files go"),
    document_root: Path = typer.Option(
        None, help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (default: the dataset folder)"
    ),
    url_prefix: str = typer.Option("/data/local-files/?d=", help="image URL = prefix + path"),
    include_rejected: bool = typer.Option(
        False, "--all", help="also the entailment rejects and grounding failures"
    ),
) -> None:
    """Write a Label Studio project (labeling config, tasks with the pipeline's predictions).

    Files: labeling_config.xml, tasks.json (one task per mention) and project.json.
    """
    from vpmel.data.schema import read_kb, read_mentions
    from vpmel.vpwiki import label_studio as ls  # here: `vpmel link` starts without pandas

    root = document_root or dataset
    try:
        kb, mentions = read_kb(dataset), read_mentions(dataset)
        entailment = _read_parquet(entail_dir / "entailment.parquet", "entail")
        grounding = _read_parquet(ground_dir / "grounding.parquet", "ground")
        tasks = ls.export_tasks(mentions, entailment, grounding, kb, dataset, root,
                                include_rejected, url_prefix)  # fmt: skip
        meta = ls.write_project(out, tasks, root)
    except (ValueError, KeyError, OSError) as problem:
        raise _annotate_fail(problem) from None
    print(f"vpmel annotate: {len(tasks)} tasks of {len(mentions)} mentions in {out}/tasks.json, "
          f"labeling config in {out}/labeling_config.xml")  # fmt: skip
    print(f"  serve the images: LOCAL_FILES_SERVING_ENABLED=true "
          f"LOCAL_FILES_DOCUMENT_ROOT={meta['document_root']}; local storage path "
          f"{meta['local_storage_path']}")  # fmt: skip


def _read_parquet(path: Path, stage: str) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise ValueError(f"{path}: missing (run `dvc repro {stage}` first)")
    return pd.read_parquet(path)


@annotate_app.command("import")
def annotate_import(
    export: Path = typer.Argument(..., help="Label Studio's JSON export of the project"),
    dataset: Path = typer.Option(Path("data/dataset"), help="checks ids, gives image sizes"),
    out: Path = typer.Option(Path("data/label_studio/human.json"), help="decisions file"),
) -> None:
    """Read Label Studio's JSON export into the human decisions the split stage applies.

    One decision per mention (related, box, type), Fleiss' kappa and the annotators' mean
    pairwise IoU; every unusable task or annotation is listed. Then set split.human: OUT.
    """
    from vpmel.data.schema import read_mentions
    from vpmel.vpwiki import label_studio as ls

    try:
        tasks = ls.read_export(export)
        result = ls.import_export(tasks, read_mentions(dataset))
        ls.write_human(result, out, source=str(export))
    except (ValueError, KeyError, OSError) as problem:
        raise _annotate_fail(problem) from None
    d, a = result.decisions, result.agreement
    print(f"vpmel annotate: {len(d)} mentions decided from {a['tasks']} tasks, "
          f"{a['annotations']} annotations by {a['annotators']} annotators: "
          f"{int(d['related'].eq(True).sum())} related, "
          f"{int(d['related'].eq(False).sum())} unrelated")  # fmt: skip
    print(f"  Fleiss' kappa: related {a['kappa_related']} ({a['kappa_related_mentions']} "
          f"mentions), type {a['kappa_type']} ({a['kappa_type_mentions']} mentions); mean "
          f"pairwise IoU {a['mean_pairwise_iou']} ({a['box_pairs']} pairs)")  # fmt: skip
    for p in result.problems:
        where = f"task {p.task}"
        where += f", annotation {p.annotation}" if p.annotation is not None else ""
        where += f" (mention {p.mention_id})" if p.mention_id is not None else ""
        err.print(f"vpmel annotate: {export}: {where}: {p.problem}", markup=False,
                  highlight=False, soft_wrap=True)  # fmt: skip
    print(f"  {len(result.problems)} problems (listed in {out}); decisions in {out}: "
          f"set split.human: {out} in params.yaml")  # fmt: skip


if __name__ == "__main__":
    app()
