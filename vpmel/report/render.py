"""The pieces of the offline report: Markdown tables, curves and case-study pictures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from vpmel.data.images import open_rgb
from vpmel.data.subsets import LABELS, SUBSETS, subset_key
from vpmel.metrics import KS
from vpmel.stats import Difference, mcnemar_exact, paired_bootstrap, seed_summary

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


def metrics_table(
    results: Mapping[str, Mapping[str, float] | None],
    split: str = "test",
    sds: Mapping[str, Mapping[str, float] | None] | None = None,
) -> str:
    """One row per method: H@1..H@20 and MRR on ``split`` (missing runs say so); with the
    method's sd over seeds in ``sds``, each cell reads ``mean ± sd``."""
    rows = []
    for name, metrics in results.items():
        sd = (sds or {}).get(name)
        if metrics is None:
            rows.append([name, *(["not run"] * len(COLUMNS))])
        elif sd:
            rows.append([name, *(f"{float(metrics[c]):.2f} ± {float(sd[c]):.2f}" for c in COLUMNS)])
        else:
            rows.append([name, *(float(metrics[c]) for c in COLUMNS)])
    return markdown_table(["method", *COLUMNS], rows)


def seed_ranks(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """Gold ranks [mention id × seed] of ``split`` from a ranks table (columns id, split,
    rank, and seed when there are several)."""
    t = table[table["split"] == split]
    if "seed" not in t.columns:
        t = t.assign(seed=0)
    return t.pivot(index="id", columns="seed", values="rank").sort_index()


def comparison_table(ranks: Mapping[str, pd.DataFrame], reference: str) -> str:
    """Each method against ``reference`` on the mentions both ranked: H@1 and MRR as mean ±
    sd over its seeds, the paired-bootstrap 95% CI of the difference (seed-averaged, over
    mentions; :mod:`vpmel.stats`) and McNemar's exact p on H@1 (majority over seeds). A
    difference whose CI contains 0 reads "no difference"."""
    ref = ranks[reference]
    header = ["method", "seeds", "n", "H@1", "MRR", f"ΔH@1 vs {reference} [95% CI]",
              "ΔMRR [95% CI]", "McNemar p (H@1)", "H@1 verdict"]  # fmt: skip
    rows = []
    for name, table in ranks.items():
        ids = ref.index.intersection(table.index)
        a, b = _aligned(table, ref, ids)
        h1 = seed_summary([100.0 * float((r <= 1).mean()) for r in a])
        mrr = seed_summary([100.0 * float((1.0 / r).mean()) for r in a])
        row: list[object] = [name, len(a), len(ids), _pm(h1, len(a)), _pm(mrr, len(a))]
        if name == reference:
            row += ["—", "—", "—", "reference"]
        else:
            d1, dm = paired_bootstrap(a, b, "H@1"), paired_bootstrap(a, b, "MRR")
            _, _, p = mcnemar_exact(a, b)
            row += [str(d1), str(dm), f"{p:.3g}", _verdict(d1, "higher", "lower")]
        rows.append(row)
    return markdown_table(header, rows)


def pair_table(
    ranks: Mapping[str, pd.DataFrame],
    pairs: Sequence[tuple[str, str, str]],
    subsets: Mapping[str, pd.Index],
) -> str:
    """One row per (question, method a, method b) and mention subset: a − b as the paired
    bootstrap 95% CI of ΔH@1, ΔH@20 and ΔMRR over the subset's mentions both ranked, and
    McNemar's exact p on H@1. Pairs whose methods did not run are left out."""
    header = ["question", "a − b", "mentions", "n", "ΔH@1 [95% CI]", "ΔH@20 [95% CI]",
              "ΔMRR [95% CI]", "McNemar p (H@1)", "verdict (MRR)"]  # fmt: skip
    rows = []
    for question, a_name, b_name in pairs:
        if a_name not in ranks or b_name not in ranks:
            continue
        both = ranks[a_name].index.intersection(ranks[b_name].index)
        for subset, ids in subsets.items():
            ids = both.intersection(ids)
            if not len(ids):
                continue
            a, b = _aligned(ranks[a_name], ranks[b_name], ids)
            d1, d20, dm = (paired_bootstrap(a, b, m) for m in ("H@1", "H@20", "MRR"))
            rows.append([question, f"{a_name} − {b_name}", subset, len(ids), str(d1), str(d20),
                         str(dm), f"{mcnemar_exact(a, b)[2]:.3g}",
                         _verdict(dm, "a higher", "a lower")])  # fmt: skip
    return markdown_table(header, rows)


def _aligned(a: pd.DataFrame, b: pd.DataFrame, ids: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Two methods' gold ranks [seeds, n] on the mentions ``ids``, in that order."""
    return a.loc[ids].to_numpy(dtype=float).T, b.loc[ids].to_numpy(dtype=float).T


def _verdict(diff: Difference, higher: str, lower: str) -> str:
    """The verdict: "no difference" when the CI contains 0, else the side the Δ is on."""
    return "no difference" if not diff.significant else (higher if diff.delta > 0 else lower)


def _pm(summary: tuple[float, float], seeds: int) -> str:
    mean, sd = summary
    return f"{mean:.1f} ± {sd:.1f}" if seeds > 1 else f"{mean:.1f}"


def subset_table(results: Mapping[str, Mapping[str, Any] | None], split: str = "test") -> str:
    """One row per method: H@1, H@5, MRR and n on the ``split`` mentions whose gold entity
    the caption names, then on those where it does not (:mod:`vpmel.data.subsets`).

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
    """dvclive's per-step TSVs under ``plots/metrics/`` by their path without ``.tsv``
    (``seed_0/dev/MRR``; ``dev/MRR`` for a run without seeds)."""
    root = Path(folder) / "plots" / "metrics"
    return {
        str(tsv.relative_to(root).with_suffix("")): pd.read_csv(tsv, sep="\t")
        for tsv in sorted(root.rglob("*.tsv"))
    }


def plot_training(curves: Mapping[str, pd.DataFrame], path: Path) -> None:
    """Training loss L and dev MRR / H@1 per epoch, one line per seed."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, df in curves.items():
        *seed, group, name = key.split("/")
        tag = f" ({seed[0].replace('_', ' ')})" if seed else ""
        value = df.columns[-1]
        if group == "train" and name == "L":
            left.plot(df["step"] + 1, df[value], label=f"L{tag}")
        elif group == "dev" and name in ("H@1", "MRR"):
            right.plot(df["step"] + 1, df[value], marker=".", label=f"{name}{tag}")
    left.set(title="IIER training loss", xlabel="epoch")
    right.set(title="dev (whole KB; the selection metric)", xlabel="epoch", ylabel="%")
    for ax in (left, right):
        ax.legend(fontsize=7)
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
        img = open_rgb(path)
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
