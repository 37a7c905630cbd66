"""DVC stage `import`: read a dataset in any supported format into vpmel's record tables.

Reads the format and paths from the `import` section of params.yaml, normalises every
usable image (RGB, bounded size) into the output folder, writes `kb.parquet` and
`mentions.parquet`, and lists every dropped or repaired record in
`reports/data_quality.json` (summary counts also in `reports/import.json`, a DVC metric).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from stages.console import clear_errors, console, stage_app
from vpmel.atomic import overlapping, staged_folder
from vpmel.data.readers import import_settings, read_dataset, write_dataset
from vpmel.params import PARAMS_FILE, load_params
from vpmel.timings import stage_timer


def main(
    out: Path = typer.Option(Path("data/dataset"), help="output dataset folder"),
    reports: Path = typer.Option(Path("reports"), help="where the data-quality report goes"),
    params_file: Path = typer.Option(PARAMS_FILE, "--params", help="params.yaml to read"),
) -> None:
    with stage_timer("import", reports / "timings"):
        with clear_errors("import"):
            cfg = import_settings(load_params("import", params_file), str(params_file))
            for name, folder in (("src", cfg.src), ("kb_dir", cfg.kb_dir)):
                if folder is not None and overlapping(out, folder):
                    raise ValueError(
                        f"--out {out} overlaps import.{name} {folder} (the same folder, or one "
                        "inside the other): importing there would overwrite the source; "
                        "choose another output folder (nothing was changed)"
                    )
            kb_dir = cfg.kb_dir or cfg.src
            console.print(f"import: reading {cfg.format} dataset from {cfg.src} (KB from {kb_dir})")
            # built beside `out` and swapped in at the end: a failed import keeps the old output
            with staged_folder(out) as tmp:
                ds = read_dataset(
                    cfg.format,
                    cfg.src,
                    tmp,
                    mention_files=cfg.mention_files,
                    kb_dir=cfg.kb_dir,
                    max_side=cfg.max_side,
                    source=cfg.source,
                )
                write_dataset(ds, tmp)
        summary = ds.report.write(reports / "data_quality.json")
        (reports / "import.json").write_text(json.dumps(_metrics(summary), indent=1) + "\n")
        _show(summary, out, reports)


def _metrics(summary: dict) -> dict:
    """The numbers worth comparing across commits with `dvc metrics diff`."""
    return {
        "read": summary["read"],
        "kept": summary["kept"],
        "dropped": summary["dropped"],
        "dropped_by_reason": summary["dropped_by_reason"],
    }


def _show(summary: dict, out: Path, reports: Path) -> None:
    table = Table(title=f"import: {summary['source']}")
    for col in ("table", "read", "kept", "dropped"):
        table.add_column(col, justify="right" if col != "table" else "left")
    for name in summary["read"]:
        table.add_row(
            name,
            str(summary["read"][name]),
            str(summary["kept"].get(name, 0)),
            str(summary["dropped"].get(name, 0)),
        )
    console.print(table)
    for action in ("dropped", "fixed"):
        for reason, n in summary[f"{action}_by_reason"].items():
            console.print(f"  {action:7s} {n:6d}  {reason}")
    for note in summary.get("notes", []):
        console.print(f"  note: {note}")
    console.print(f"import: wrote {out}/kb.parquet, {out}/mentions.parquet, images under {out}")
    console.print(f"import: every dropped/fixed record is listed in {reports}/data_quality.json")


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
