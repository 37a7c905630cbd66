"""DVC stage `world`: generate the embedded demo world (the default data source).

A knowledge base of OpenMoji entities and captioned scenes shaped like WikiDiverse raw data,
with a reference box per mention playing the human annotation. Deterministic from
`world.seed`; every size is a param in the `world` section of params.yaml.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import typer

from stages.console import clear_errors, console, stage_app
from vpmel.params import PARAMS_FILE, from_params, load_params
from vpmel.timings import stage_timer
from vpmel.world.generate import WorldConfig, generate_world, world_contact_sheet


def main(
    out: Path = typer.Option(Path("data/world"), help="output folder of the raw demo world"),
    reports: Path = typer.Option(Path("reports"), help="where the contact sheet and sizes go"),
    params_file: Path = typer.Option(PARAMS_FILE, "--params", help="params.yaml to read"),
) -> None:
    with stage_timer("world", reports / "timings"):
        with clear_errors("world"):
            cfg = from_params(WorldConfig, load_params("world", params_file), "world")
        if out.exists():
            shutil.rmtree(out)
        summary = generate_world(out, cfg, progress=True)
        sizes = dataclasses.asdict(summary)
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "world.json").write_text(json.dumps(sizes, indent=1) + "\n")
        sheet = reports / "world_contact_sheet.png"
        world_contact_sheet(out, sheet, seed=cfg.seed)
        console.print(f"world: wrote {out} ({json.dumps(sizes)})")
        console.print(f"world: contact sheet {sheet}")


app = stage_app(main, __doc__)

if __name__ == "__main__":
    app()
