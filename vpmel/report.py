"""The pieces of the offline report: Markdown tables, curves and case-study pictures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from vpmel.metrics import KS
from vpmel.subsets import LABELS, SUBSETS, subset_key

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = (*(f"H@{k}" for k in KS), "MRR")
SUBSET_COLUMNS = ("H@1", "H@5", "MRR", "n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(results: Mapping[str, Mapping[str, float] | None], split: str = "test") -> str:
    """One row per method: H@1..H@20 and MRR on ``split`` (missing runs say so)."""
    rows = []
    for name, metrics in results.items():
        if metrics is None:
            rows.append([name, *(["not run"] * len(COLUMNS))])
        else:
            rows.append([name, *(float(metrics[c]) for c in COLUMNS)])
    return markdown_table(["method", *COLUMNS], rows)


def subset_table(results: Mapping[str, Mapping[str, Any] | None], split: str = "test") -> str:
    """One row per method: H@1, H@5, MRR and n on the ``split`` mentions whose gold entity
    the caption names, then on those where it does not (:mod:`vpmel.subsets`).

    ``results`` maps a method to its whole metrics file (``{split: .., <split>_named: ..,
    <split>_unnamed: ..}``); a missing run says "not run", a run without the subsets "n/a",
    an empty subset "–"."""
    header = ["method"]
    for subset in SUBSETS:
        header += [f"{LABELS[subset]}: {c}" for c in SUBSET_COLUMNS]
    rows = []
    for name, metrics in results.items():
        row: list[object] = [name]
        for subset in SUBSETS:
            m = None if metrics is None else metrics.get(subset_key(split, subset))
            if metrics is None or m is None:
                row += ["not run" if metrics is None else "n/a"] * len(SUBSET_COLUMNS)
            else:
                row += [float(m[c]) if m["n"] else "–" for c in SUBSET_COLUMNS[:-1]]
                row.append(int(m["n"]))
        rows.append(row)
    return markdown_table(header, rows)


def read_live(folder: Path) -> dict[str, pd.DataFrame]:
    """dvclive's per-step TSVs (``plots/metrics/<group>/<name>.tsv``) by ``group/name``."""
    out = {}
    for tsv in sorted(Path(folder).glob("plots/metrics/*/*.tsv")):
        out[f"{tsv.parent.name}/{tsv.stem}"] = pd.read_csv(tsv, sep="\t")
    return out


def plot_training(curves: Mapping[str, pd.DataFrame], path: Path) -> None:
    """Training losses and dev H@k/MRR per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, df in curves.items():
        group, name = key.split("/", 1)
        value = df.columns[-1]
        if group == "train":
            left.plot(df["step"] + 1, df[value], label=name)
        elif name in ("H@1", "H@5", "H@20", "MRR"):
            right.plot(df["step"] + 1, df[value], label=name)
    left.set(title="IIER training loss", xlabel="epoch")
    right.set(title="dev (whole KB)", xlabel="epoch", ylabel="%")
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hits(results: Mapping[str, Mapping[str, float]], path: Path, title: str) -> None:
    """H@k against k for several methods."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, m in results.items():
        ax.plot(KS, [m[f"H@{k}"] for k in KS], marker="o", label=name)
    ax.set(xscale="log", xticks=KS, xticklabels=[str(k) for k in KS], xlabel="k",
           ylabel="H@k (%)", title=title)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _thumb(path: Path | None, size: int) -> Image.Image:
    canvas = Image.new("RGB", (size, size), (235, 235, 235))
    if path is not None and Path(path).is_file():
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def case_studies(cases: Sequence[dict], path: Path, size: int = 150) -> None:
    """One row per case: the prompted mention image, the gold entity, the top-3 predictions
    (a green frame marks the gold entity among them)."""
    font = ImageFont.load_default()
    label_h, gap = 44, 8
    width = 5 * (size + gap) + gap
    sheet = Image.new("RGB", (width, len(cases) * (size + label_h + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for r, case in enumerate(cases):
        top = gap + r * (size + label_h + gap)
        panels = [(case["mention_image"], _wrap(case["sentence"], 28), None),
                  (case["gold_image"], f"gold: {case['gold_name']}", None)]  # fmt: skip
        for i, (image, name, score) in enumerate(case["top"][:3], 1):
            panels.append((image, f"#{i} {name}\n{score:.3f}", image == case["gold_image"]))
        for c, (image, text, hit) in enumerate(panels):
            left = gap + c * (size + gap)
            sheet.paste(_thumb(image, size), (left, top))
            if hit:
                draw.rectangle(
                    (left, top, left + size - 1, top + size - 1), outline="green", width=4
                )
            draw.multiline_text((left, top + size + 2), _wrap(text, 28), fill="black", font=font)
        verdict = "success" if case["rank"] == 1 else f"failure (gold rank {case['rank']})"
        draw.text((width - 150, top + 2), verdict, fill="darkred", font=font)
    sheet.save(path)


def _wrap(text: str, width: int) -> str:
    words, lines, line = str(text).split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines[:3])


def pick_cases(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` successes (rank 1) and ``n`` failures from a top-k table, seeded."""
    rng = np.random.default_rng(seed)
    hits, misses = table[table["rank"] == 1], table[table["rank"] > 1]
    take = [df.iloc[sorted(rng.choice(len(df), min(n, len(df)), replace=False))]
            for df in (hits, misses) if len(df)]  # fmt: skip
    return pd.concat(take) if take else table.iloc[:0]
