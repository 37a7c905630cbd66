"""The offline report, assembled: `reports/report.md` and its pictures from the stages' outputs.

Reads what the other stages wrote (reports/*.json, the ablation runs under reports/ablate/,
dvclive curves, data/eval/top20.parquet, the baselines' and ablations' rank tables) and
builds the Markdown section by section with the pieces of :mod:`vpmel.report.render`. Which
baselines and ablations exist (keys and row labels) is the caller's :class:`Variants`; the
`report` stage (`stages/report.py`) passes them with the params.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vpmel.data.schema import read_kb
from vpmel.data.subsets import LABELS, named_mentions
from vpmel.iier.data import entity_image_paths
from vpmel.report.render import (
    case_studies,
    comparison_table,
    markdown_table,
    metrics_table,
    pair_table,
    pick_cases,
    plot_hits,
    plot_training,
    read_live,
    seed_ranks,
    subset_table,
)

DETECTIVE_NOTE = (
    "Exact match (%) of the answer's name and type. Train: the answers IIER trains on "
    "(`out_of_fold`: each from a model tuned on the other folds; `final`: the model itself). "
    "Parsed / raw text / empty: shares of test answers that parse into `{name} {type}`, that "
    "IIER reads as raw text (no type found: the untuned base's free text, which is what "
    'IIER‡ measures), and that are empty (m_w = ""). IIER reads the tuned answers, IIER‡ '
    "the untuned ones, IIER† and IIER* none."
)
DETECTIVE_COLUMNS = [
    "model", "train answers", "train name", "dev name", "dev type", "test name", "test type",
    "test name (in caption)", "test name (not in caption)", "parsed", "raw text", "empty",
]  # fmt: skip
SEED_NOTE = (
    "Trained models: mean ± sd over the `train.seeds`; zero-shot baselines are "
    "deterministic. Whether a difference is real: see the comparison table further down."
)
SELECTION_NOTE = (
    "**dev is the selection metric**: each seed's epoch was picked on it, so these figures "
    "are optimistic by construction; report test."
)
COMPARISON_NOTE = (
    "Each row against IIER on the same test mentions: H@1 and MRR as mean ± sd over seeds; "
    "the difference to IIER (each mention's score averaged over seeds) with its paired "
    "bootstrap 95% CI over mentions (2,000 resamples); McNemar's exact test on H@1 (a "
    "mention counts as a hit by majority over seeds). A CI that contains 0 is **no "
    "difference** at this test size, whatever the sign of Δ."
)
FULL = "IIER"
# (question, method a, method b): a − b answers the question; keys of the baselines and
# the ablation registry (a pair whose methods did not run is left out)
PAIRS = (
    ("the visual prompt", "iier_dagger", "iier_star"),
    ("the tuned VLM's answers", FULL, "iier_dagger"),
    ("the untuned VLM's text", "iier_ddagger", "iier_dagger"),
    ("IIER's units over its text input", "iier_dagger", "text_only_no_vlm"),
    ("IIER (with answers) over its text input", FULL, "text_only_no_vlm"),
)
PAIRS_NOTE = (
    "Each question as a difference a − b on the same test mentions (each mention's score "
    "averaged over seeds): paired bootstrap 95% CIs over mentions and McNemar's exact p on "
    "H@1. *the visual prompt*: IIER† (prompted image) − IIER* (the same image without the "
    "box); *answers*: with − without the Detective-VLM's answers; *over its text input*: "
    "against the zero-shot MiniLM ranking IIER's text tower starts from. A CI that contains "
    "0 is no difference."
)
SUBSET_NOTE = (
    "*name in caption*: the caption names the gold entity (its mention words are located "
    "in it, or the entity's KB name occurs in it: any case, whole words). *name not in "
    "caption*: only the image, the red box and the rest of the caption can identify it; "
    "there methods that rely on mention words collapse (the paper's Table 3)."
)


@dataclass(frozen=True)
class Variants:
    """Every compared method, key -> row label: the zero-shot baselines (the `baselines`
    stage's keys), Table 6's ablations, Table 5's feature layers, Table 9's loss terms and
    the combinations of S (each ablation key is a folder under reports/ablate/)."""

    baselines: Mapping[str, str]
    ablations: Mapping[str, str]
    layers: Mapping[str, str]
    losses: Mapping[str, str]
    combinations: Mapping[str, str]


@dataclass(frozen=True)
class Sources:
    """Where the report reads (and, for `reports`, writes)."""

    reports: Path
    vpwiki: Path
    dataset: Path
    eval_dir: Path
    ablate_dir: Path  # the ablations' top-k tables
    baselines_dir: Path  # the baselines' ranks
    live: Path  # dvclive's folder of the `train` stage


def detective_row(label: str, d: dict[str, Any]) -> list[Any]:
    """One Detective-VLM row (percentages) from an answers report (reports/detective.json)."""

    def pct(part: dict[str, Any] | None, key: str) -> float | str:
        value = (part or {}).get(key)
        return "—" if value is None else 100 * float(value)

    return [
        label,
        d.get("train_answers", ""),
        pct(d.get("train"), "name_accuracy"),
        *(pct(d.get(s), k) for s in ("dev", "test") for k in ("name_accuracy", "type_accuracy")),
        *(pct(d.get(f"test_{sub}"), "name_accuracy") for sub in ("named", "unnamed")),
        *(pct(d.get("test"), k) for k in ("parsed", "raw_text", "empty")),
    ]


def write_report(src: Sources, variants: Variants, params: Mapping[str, Any]) -> Path:
    """Write ``<reports>/report.md`` and its PNGs (``params``: the whole params file, for
    λ and the train profile); returns the Markdown file."""
    reports = src.reports
    metrics = _json(reports / "metrics.json")
    if metrics is None:
        raise FileNotFoundError(f"{reports}/metrics.json: run the evaluate stage first")
    kb = read_kb(src.dataset)
    top = pd.read_parquet(src.eval_dir / "top20.parquet")
    mentions = pd.read_parquet(src.vpwiki / "mentions.parquet").set_index("id")
    md = ["# VP-MEL on the demo world", ""]
    md += [f"Generated by `dvc repro` (stage `report`); λ = {params.get('lambda')}, "
           f"train profile `{params['train'].get('profile', 'demo')}`. All H@k and MRR in %, "
           "ranked over the entire KB; ties count against the model.", ""]  # fmt: skip
    md += _construction(reports)
    md += _detective(reports)
    baselines = _json(reports / "baselines.json") or {}
    # every method's whole metrics file (None: not run), in table order; IIER (full) last
    runs: dict[str, Any] = {label: baselines.get(key) for key, label in variants.baselines.items()}
    runs |= {label: _json(reports / "ablate" / key / "metrics.json")
             for key, label in variants.ablations.items()}  # fmt: skip
    md += _main_results(reports, runs, metrics)
    md += _box_following(baselines.get("box_following") or {})
    md += _variant_tables(reports, variants, runs, metrics)
    runs["IIER (full)"] = metrics
    md += ["## Gold name in the caption or not (Table 3)", "", SUBSET_NOTE, ""]
    for split in ("test", "dev"):
        md += [f"### {split}", "", subset_table(runs, split), ""]

    ranks = _ranks(top, src, variants, "test")
    if ranks:
        md += ["## Every comparison with its uncertainty: test", "", COMPARISON_NOTE, "",
               comparison_table(ranks, FULL), ""]  # fmt: skip
        md += _what_each_part_adds(ranks, variants, mentions, kb)

    curves = read_live(src.live)
    if curves:
        plot_training(curves, reports / "report_training.png")
        md += ["## Training curves", "", "![training](report_training.png)", ""]
    md += _cases(src, kb, top, mentions)
    path = reports / "report.md"
    path.write_text("\n".join(md))
    return path


def _construction(reports: Path) -> list[str]:
    """VPWiki construction: counts (automatic and human), Table 1, grounding quality (the
    `ground` stage's backend, `split`'s IoU figures), entailment."""
    counts, table1 = _json(reports / "vpwiki_counts.json"), _json(reports / "vpwiki_table1.json")
    grounding, entail = _json(reports / "grounding.json"), _json(reports / "entail.json")
    quality = _json(reports / "vpwiki_grounding.json")
    md = ["## VPWiki construction (Table 1, Appendix A.6)", ""]
    if counts:
        auto = {k: v for k, v in counts.items() if not k.startswith("human_")}
        md += [markdown_table(list(auto), [list(auto.values())]), ""]
        human = {k.removeprefix("human_"): v for k, v in counts.items() if k.startswith("human_")}
        if human:  # split.human: the Label Studio pass (paper §3), one row per decision in CSV
            md += ["Human verification (Label Studio; every decision in "
                   "`vpwiki_human_decisions.csv`):", "",
                   markdown_table(list(human), [list(human.values())]), ""]  # fmt: skip
    if table1:
        stats = pd.DataFrame(table1)
        rows = [[idx, *(round(float(v), 2) for v in r)] for idx, r in stats.iterrows()]
        md += [markdown_table(["", *stats.columns], rows), ""]
    if grounding and quality:
        a, r = quality["automatic"], quality["random_proposal"]
        md += [markdown_table(["grounding", "mean IoU", "IoU ≥ 0.5"], [
            [f"{grounding['backend']} grounder", a["mean_iou"], a["share_iou_ge_min"]],
            ["random proposal", r["mean_iou"], r["share_iou_ge_min"]]]), ""]  # fmt: skip
    if entail:
        md += [f"Entailment kept {entail['entailed']} of {entail['in']} pairs "
               f"(threshold {entail['threshold']}).", ""]  # fmt: skip
    md += ["![entity types](vpwiki_types.png)", "", "![prompted images](vpwiki_contact_sheet.png)",
           ""]  # fmt: skip
    return md


def _detective(reports: Path) -> list[str]:
    """Detective-VLM's exact match, tuned and untuned."""
    md = ["## Detective-VLM (§5.2): exact match on dev / test", "", DETECTIVE_NOTE, ""]
    rows = []
    for label, path in (("tuned", reports / "detective.json"),
                        ("untuned (base)", reports / "untuned/detective.json")):  # fmt: skip
        d = _json(path)
        if d:
            rows.append(detective_row(label, d))
    md += [markdown_table(DETECTIVE_COLUMNS, rows), ""]
    return md + gap_lines((_json(reports / "detective.json") or {}).get("train_minus_dev"))


def gap_lines(gap: Mapping[str, Any] | None) -> list[str]:
    """The tuned answers IIER trains on against dev's (``train_minus_dev`` of
    reports/detective.json), each difference with its 95% CI, said plainly."""
    if not gap:
        return []
    parts = []
    for key, what in (("all", "all mentions"), ("named", "mentions whose caption names it")):
        g = gap.get(key)
        if g:
            low, high = g["ci"]
            verdict = "no difference" if low <= 0 <= high else "a difference"
            parts.append(f"{what} {g['delta']:+.1f} [{low:+.1f}, {high:+.1f}] "
                         f"({g['n_train']} vs {g['n_dev']}: {verdict})")  # fmt: skip
    return ["Train answers minus dev's, name exact match in points with the unpaired "
            "bootstrap 95% CI over mentions: " + "; ".join(parts) + ".", ""]  # fmt: skip


def _main_results(reports: Path, runs: Mapping[str, Any], metrics: dict[str, Any]) -> list[str]:
    """Tables 2a and 6 on test and dev (mean ± sd over seeds), and the test H@k plot."""
    md = []
    for split in ("test", "dev"):
        results = {label: (run or {}).get(split) for label, run in runs.items()}
        results["IIER (full)"] = metrics[split]
        sds = {label: (run or {}).get(f"{split}_sd") for label, run in runs.items()}
        sds["IIER (full)"] = metrics.get(f"{split}_sd")
        title = "Main results and ablations (Tables 2a and 6)"
        note = SELECTION_NOTE if split == "dev" else SEED_NOTE
        md += [f"## {title}: {split}", "", note, "", metrics_table(results, split, sds), ""]
        if split == "test":
            plot_hits({k: v for k, v in results.items() if v}, reports / "report_hits.png",
                      "test H@k (whole KB)")  # fmt: skip
    return md + ["![H@k](report_hits.png)", ""]


def _box_following(following: Mapping[str, Any]) -> list[str]:
    """Whether CLIP zero-shot's answer follows the box onto another object (if measured)."""
    if not following:
        return []
    md = ["## Does the answer follow the box? (CLIP zero-shot)", "",
          "The prompt moved onto another object of the same scene: share of mentions whose "
          "top-1 entity changes, and whose top-1 becomes the newly boxed object (all "
          "scenes with another object; two-object scenes).", ""]  # fmt: skip
    rows = [[split, f["n"], f["changes"], f["follows"], f["n_two"], f["changes_two"],
             f["follows_two"]] for split, f in following.items()]  # fmt: skip
    head = ["split", "n", "top-1 changes %", "follows %", "n (2 objects)", "changes %",
            "follows %"]  # fmt: skip
    return md + [markdown_table(head, rows), ""]


def _variant_tables(
    reports: Path, variants: Variants, runs: dict[str, Any], metrics: dict[str, Any]
) -> list[str]:
    """Tables 5 and 9 and the combinations of S on test, each against the full IIER; adds
    each variant's metrics to ``runs`` (for the subset tables)."""
    md = []
    for title, table, full, prefix in (
        ("Feature layers of V^G (Table 5): test", variants.layers,
         "layers 3, 10, 11, 12 (paper; IIER)", "IIER, V^G from "),
        ("Loss terms (Table 9): test", variants.losses, "L_O + L_V + L_T + L_C (IIER)",
         "IIER, loss "),
        ("How S combines the units (our departure, see README): test", variants.combinations,
         "S = τ(G2G + w·(G2L, S_V, S_C)), scaled (ours; IIER)", "IIER, "),
    ):  # fmt: skip
        variant_runs = {label: _json(reports / "ablate" / key / "metrics.json")
                        for key, label in table.items()}  # fmt: skip
        runs |= {prefix + label: run for label, run in variant_runs.items()}
        rows = {label: (run or {}).get("test") for label, run in variant_runs.items()}
        rows[full] = metrics["test"]
        sds = {label: (run or {}).get("test_sd") for label, run in variant_runs.items()}
        sds[full] = metrics.get("test_sd")
        md += [f"## {title}", "", metrics_table(rows, "test", sds), ""]
    return md


def _ranks(
    top: pd.DataFrame, src: Sources, variants: Variants, split: str
) -> dict[str, pd.DataFrame]:
    """Per-mention gold ranks [id × seed] of every method that has them: baselines
    (data/baselines/ranks.parquet), ablations (data/ablate/<key>/top20.parquet), IIER."""
    out: dict[str, pd.DataFrame] = {}
    baseline_file = src.baselines_dir / "ranks.parquet"
    if baseline_file.is_file():
        table = pd.read_parquet(baseline_file)
        for key, label in variants.baselines.items():
            sub = table[table["baseline"] == key]
            if len(sub):
                out[label] = seed_ranks(sub, split)
    for labels in (variants.ablations, variants.layers, variants.losses, variants.combinations):
        for key, label in labels.items():
            path = src.ablate_dir / key / "top20.parquet"
            if path.is_file():
                out[label] = seed_ranks(pd.read_parquet(path), split)
    out[FULL] = seed_ranks(top, split)
    return out


def _what_each_part_adds(
    ranks: Mapping[str, pd.DataFrame], variants: Variants, mentions: pd.DataFrame, kb: pd.DataFrame
) -> list[str]:
    """The paper's questions as pairs of methods (:data:`PAIRS`), on all test mentions and
    on those whose gold name is not in the caption (the VP-MEL case)."""
    labels = {**variants.baselines, **variants.ablations, FULL: FULL}
    pairs = [(q, labels[a], labels[b]) for q, a, b in PAIRS if a in labels and b in labels]
    test = mentions[mentions["split"] == "test"]
    named = named_mentions(test.reset_index(), kb)
    subsets = {"all": test.index, LABELS["unnamed"]: test.index[~named]}
    return ["## What each part adds: test", "", PAIRS_NOTE, "",
            pair_table(ranks, pairs, subsets), ""]  # fmt: skip


def _cases(src: Sources, kb: pd.DataFrame, top: pd.DataFrame, mentions: pd.DataFrame) -> list[str]:
    """Figure 6: seeded successes and failures of the first seed on test, as a picture."""
    images = dict(zip(kb["qid"], entity_image_paths(kb), strict=True))
    names = dict(zip(kb["qid"], kb["name"], strict=True))

    def entity_image(qid: str) -> Path | None:
        rel = images.get(qid)
        return src.dataset / rel if rel else None

    cases = []
    first_seed = top[top["seed"] == top["seed"].min()] if "seed" in top.columns else top
    test_top = first_seed[first_seed["split"] == "test"]
    for row in pick_cases(test_top, 3, seed=0).itertuples(index=False):
        m = mentions.loc[row.id]
        cases.append({
            "mention_image": src.vpwiki / m["prompted_image"], "sentence": m["sentence"],
            "gold_image": entity_image(row.qid), "gold_name": names.get(row.qid, row.qid),
            "rank": int(row.rank),
            "top": [(entity_image(q), names.get(q, q), float(s))
                    for q, s in zip(row.top_qids[:3], row.top_scores[:3], strict=True)],
        })  # fmt: skip
    if not cases:
        return []
    case_studies(cases, src.reports / "report_cases.png")
    return ["## Case studies (Figure 6): test mentions", "",
            "Prompted mention image, gold entity, IIER's top 3 (green frame: the gold one).",
            "", "![cases](report_cases.png)", ""]  # fmt: skip


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None
