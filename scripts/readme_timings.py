"""Refresh the stage wall times in README.md from `reports/timings/` (see `vpmel.timings`).

    .venv/bin/python scripts/readme_timings.py

Every stage writes its own `reports/timings/<stage>.json` when it succeeds; this script puts
them in one table, in the order of the stages in `dvc.yaml` (a `foreach` stage's entries,
`ablate@x`, at their parent's place; stages dvc.yaml does not name at the end), between the
README's markers `<!-- timings:start -->` and `<!-- timings:end -->`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from vpmel.timings import TIMINGS_DIR, read_timings, timing_table

START, END = "<!-- timings:start -->", "<!-- timings:end -->"


def stage_order(dvc_yaml: Path) -> list[str]:
    """Stage names in dvc.yaml's order; a foreach stage is followed by its `name@key`s."""
    if not Path(dvc_yaml).is_file():
        return []
    stages = (yaml.safe_load(Path(dvc_yaml).read_text()) or {}).get("stages") or {}
    order = []
    for name, body in stages.items():
        order.append(name)
        keys = body.get("foreach") if isinstance(body, dict) else None
        if isinstance(keys, dict):
            order += [f"{name}@{key}" for key in keys]
        elif isinstance(keys, list):  # a list of plain values: dvc names them by value
            order += [f"{name}@{key}" for key in keys if not isinstance(key, dict | list)]
    return order


def ordered(timings: dict[str, dict[str, Any]], order: list[str]) -> dict[str, dict[str, Any]]:
    """``timings`` sorted as ``order``: unlisted `parent@key` at its parent, others last."""
    place = {name: i for i, name in enumerate(order)}

    def key(stage: str) -> tuple[int, str]:
        if stage in place:
            return place[stage], ""
        return place.get(stage.split("@", 1)[0], len(order)), stage

    return {stage: timings[stage] for stage in sorted(timings, key=key)}


def replace_table(text: str, lines: list[str]) -> str:
    """``text`` with everything between the two markers replaced by ``lines``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {START} ... {END} block")
    head, tail = text[: start + len(START)], text[end:]
    return head + "\n" + "\n".join(lines) + "\n" + tail


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--timings", type=Path, default=TIMINGS_DIR)
    parser.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"))
    args = parser.parse_args(argv)
    timings = ordered(read_timings(args.timings), stage_order(args.dvc_yaml))
    text = args.readme.read_text()
    new = replace_table(text, timing_table(timings))
    if new != text:
        args.readme.write_text(new)
    print(f"{args.readme}: {len(timings)} stage timings from {args.timings}")


if __name__ == "__main__":
    main()
