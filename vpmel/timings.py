"""Wall times measured by the pipeline itself, kept apart from the quality metrics.

Every stage wraps its work in :func:`stage_timer`, which writes
``reports/timings/<stage>.json`` when the stage succeeds: the wall time of the whole
process (from its start, so Python and library imports count, as a user waits for them),
the cores it could use, and whatever figures the stage adds to the record (throughput,
seconds of a sub-step). These files are plain DVC outputs (``cache: false``), *not*
metrics, so ``dvc metrics diff`` shows only what changed in quality.
:func:`timing_table` reads them back for the report and README.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vpmel.atomic import atomic_file

TIMINGS_DIR = Path("reports/timings")


def process_seconds() -> float:
    """Seconds since this process started (Linux ``/proc``), or 0 where unknown."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def stage_timer(stage: str, folder: Path = TIMINGS_DIR) -> Iterator[dict[str, Any]]:
    """Time a stage; yields a dict the stage may add figures to (``record["rank_s"] = ..``).

    On success writes ``folder/<stage>.json`` with ``wall_s`` (process start to end),
    ``work_s`` (inside the ``with``), ``cores`` and the added figures; on an exception
    nothing is written, so a failed run never leaves a time that looks like a result.
    Under a multi-process launch (``accelerate launch`` sets ``RANK``) only rank 0 writes:
    every rank times the same run, and two writers of one file would race on its swap."""
    started = getattr(sys.modules.get("stages"), "STARTED", None)
    # `python -m stages.x` imports the `stages` package first: its import time is this
    # program's start. /proc's process start is the fallback: it is too early when a shell
    # exec'd this program into the process of an earlier command (dvc.yaml's `a && b`).
    before = time.monotonic() - started if isinstance(started, float) else process_seconds()
    tic = time.perf_counter()
    record: dict[str, Any] = {}
    yield record
    work = time.perf_counter() - tic
    if int(os.environ.get("RANK", "0")) != 0:
        return
    out = {
        "stage": stage,
        "wall_s": round(before + work, 1),
        "work_s": round(work, 1),
        "cores": cores(),
        **record,
    }
    text = json.dumps(out, indent=1) + "\n"
    atomic_file(Path(folder) / f"{stage}.json", lambda tmp: Path(tmp).write_text(text))


def read_timings(folder: Path = TIMINGS_DIR) -> dict[str, dict[str, Any]]:
    """Every ``<stage>.json`` under ``folder`` (recursively), keyed by its ``stage``."""
    out = {}
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        out[str(record.get("stage", path.stem))] = record
    return out


def timing_table(timings: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per stage with its time in the stage's work (``work_s``) and
    from its process start (``wall_s``, imports included), and the total of the former."""
    if not timings:
        return ["(no stage timings yet: run `dvc repro`)"]
    lines = ["| stage | in stage | from process start | cores |", "|---|---:|---:|---:|"]
    total = 0.0
    for stage, record in timings.items():
        wall = float(record.get("wall_s", 0.0))
        work = float(record.get("work_s", wall))
        total += work
        lines.append(f"| {stage} | {_clock(work)} | {_clock(wall)} | {record.get('cores', '')} |")
    lines.append(f"| **total** | **{_clock(total)}** | | |")
    return lines


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"
