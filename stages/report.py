"""DVC stage `report`: the paper's tables in miniature, curves and case studies, offline.

Reads what the other stages wrote (reports/*.json, the ablation runs under reports/ablate/
that the params' `ablations` registry names, dvclive curves, data/eval/top20.parquet) and
writes `reports/report.md` with
`reports/report_training.png`, `reports/report_hits.png` and `reports/report_cases.png`
next to it — plain Markdown and PNG that open without a network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import typer

from stages.console import clear_errors, console
from vpmel.iier_data import entity_image_paths
from vpmel.params import ABLATION_TABLES, PARAMS_FILE, load_params, read_ablations
from vpmel.report import (
    case_studies,
    comparison_table,
    markdown_table,
    metrics_table,
    pick_cases,
    plot_hits,
    plot_training,
    read_live,
    seed_ranks,
    subset_table,
)
from vpmel.schema import read_kb

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


app = typer.Typer(add_completion=False, help=__doc__)

BASELINES = {
    "clip_zero_shot": "CLIP zero-shot (demo encoder)",
    "clip_zero_shot_unprompted": "CLIP zero-shot, image without the prompt",
    "text_only_no_vlm": "text-only bi-encoder (MiniLM, sentence)",
    "text_only": "text-only bi-encoder (MiniLM, VLM answer + sentence)",
}


def ablation_tables(registry: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """The params' ``ablations`` registry as report table → {name: label}, in
    :data:`vpmel.params.ABLATION_TABLES` order (the comparison table's order)."""
    entries = read_ablations(registry)
    return {
        table: {name: a.label for name, a in entries.items() if a.table == table}
        for table in ABLATION_TABLES
    }


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


def _ranks(
    top: pd.DataFrame,
    baselines_dir: Path,
    ablate_dir: Path,
    split: str,
    tables: dict[str, dict[str, str]],
) -> dict[str, pd.DataFrame]:
    """Per-mention gold ranks [id × seed] of every method that has them: baselines
    (data/baselines/ranks.parquet), ablations (data/ablate/<key>/top20.parquet), IIER."""
    out: dict[str, pd.DataFrame] = {}
    baseline_file = baselines_dir / "ranks.parquet"
    if baseline_file.is_file():
        table = pd.read_parquet(baseline_file)
        for key, label in BASELINES.items():
            sub = table[table["baseline"] == key]
            if len(sub):
                out[label] = seed_ranks(sub, split)
    for variants in tables.values():
        for key, label in variants.items():
            path = ablate_dir / key / "top20.parquet"
            if path.is_file():
                out[label] = seed_ranks(pd.read_parquet(path), split)
    out["IIER"] = seed_ranks(top, split)
    return out


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


@app.command()
def main(
    reports: Path = typer.Option(Path("reports")),
    vpwiki: Path = typer.Option(Path("data/vpwiki")),
    dataset: Path = typer.Option(Path("data/dataset")),
    eval_dir: Path = typer.Option(Path("data/eval")),
    ablate_dir: Path = typer.Option(Path("data/ablate"), help="the ablations' top-k tables"),
    baselines_dir: Path = typer.Option(Path("data/baselines"), help="the baselines' ranks"),
    live: Path = typer.Option(Path("dvclive")),
    params_file: Path = typer.Option(PARAMS_FILE, "--params"),
) -> None:
    with clear_errors("report"):
        params = load_params(None, params_file)
        tables = ablation_tables(params.get("ablations"))
        metrics = _json(reports / "metrics.json")
        if metrics is None:
            raise FileNotFoundError(f"{reports}/metrics.json: run the evaluate stage first")
        kb = read_kb(dataset)
        top = pd.read_parquet(eval_dir / "top20.parquet")
        mentions = pd.read_parquet(vpwiki / "mentions.parquet").set_index("id")
    md = ["# VP-MEL on the demo world", ""]
    md += [f"Generated by `dvc repro` (stage `report`); λ = {params.get('lambda')}, "
           f"train profile `{params['train'].get('profile', 'demo')}`. All H@k and MRR in %, "
           "ranked over the entire KB; ties count against the model.", ""]  # fmt: skip

    counts, table1 = _json(reports / "vpwiki_counts.json"), _json(reports / "vpwiki_table1.json")
    grounding, entail = _json(reports / "grounding.json"), _json(reports / "entail.json")
    md += ["## VPWiki construction (Table 1, Appendix A.6)", ""]
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
    if grounding:
        a, r = grounding["automatic"], grounding["random_proposal"]
        md += [markdown_table(["grounding", "mean IoU", "IoU ≥ 0.5"], [
            [f"{grounding['backend']} grounder", a["mean_iou"], a["share_iou_ge_min"]],
            ["random proposal", r["mean_iou"], r["share_iou_ge_min"]]]), ""]  # fmt: skip
    if entail:
        md += [f"Entailment kept {entail['entailed']} of {entail['in']} pairs "
               f"(threshold {entail['threshold']}).", ""]  # fmt: skip
    md += ["![entity types](vpwiki_types.png)", "", "![prompted images](vpwiki_contact_sheet.png)",
           ""]  # fmt: skip

    md += ["## Detective-VLM (§5.2): exact match on dev / test", "", DETECTIVE_NOTE, ""]
    rows = []
    for label, path in (("tuned", reports / "detective.json"),
                        ("untuned (base)", reports / "untuned/detective.json")):  # fmt: skip
        d = _json(path)
        if d:
            rows.append(detective_row(label, d))
    md += [markdown_table(DETECTIVE_COLUMNS, rows), ""]

    baselines = _json(reports / "baselines.json") or {}
    # every method's whole metrics file (None: not run), in table order; IIER (full) last
    runs: dict[str, Any] = {label: baselines.get(key) for key, label in BASELINES.items()}
    runs |= {label: _json(reports / "ablate" / key / "metrics.json")
             for key, label in tables["answers"].items()}  # fmt: skip
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
    md += ["![H@k](report_hits.png)", ""]
    following = baselines.get("box_following") or {}
    if following:
        md += ["## Does the answer follow the box? (CLIP zero-shot)", "",
               "The prompt moved onto another object of the same scene: share of mentions whose "
               "top-1 entity changes, and whose top-1 becomes the newly boxed object (all "
               "scenes with another object; two-object scenes).", ""]  # fmt: skip
        rows = [[split, f["n"], f["changes"], f["follows"], f["n_two"], f["changes_two"],
                 f["follows_two"]] for split, f in following.items()]  # fmt: skip
        head = ["split", "n", "top-1 changes %", "follows %", "n (2 objects)", "changes %",
                "follows %"]  # fmt: skip
        md += [markdown_table(head, rows), ""]

    for title, variants, full, prefix in (
        ("Feature layers of V^G (Table 5): test", tables["layers"],
         "layers 3, 10, 11, 12 (paper; IIER)", "IIER, V^G from "),
        ("Loss terms (Table 9): test", tables["loss"], "L_O + L_V + L_T + L_C (IIER)",
         "IIER, loss "),
        ("How S combines the units (our departure, see README): test", tables["combination"],
         "S = τ(G2G + w·(G2L, S_V, S_C)), scaled (ours; IIER)", "IIER, "),
    ):  # fmt: skip
        variant_runs = {label: _json(reports / "ablate" / key / "metrics.json")
                        for key, label in variants.items()}  # fmt: skip
        runs |= {prefix + label: run for label, run in variant_runs.items()}
        rows = {label: (run or {}).get("test") for label, run in variant_runs.items()}
        rows[full] = metrics["test"]
        sds = {label: (run or {}).get("test_sd") for label, run in variant_runs.items()}
        sds[full] = metrics.get("test_sd")
        md += [f"## {title}", "", metrics_table(rows, "test", sds), ""]

    runs["IIER (full)"] = metrics
    md += [
        "## Gold name in the caption or not (Table 3)",
        "",
        "*name in caption*: the caption names the gold entity (its mention words are located "
        "in it, or the entity's KB name occurs in it: any case, whole words). *name not in "
        "caption*: only the image, the red box and the rest of the caption can identify it; "
        "there methods that rely on mention words collapse (the paper's Table 3).",
        "",
    ]
    for split in ("test", "dev"):
        md += [f"### {split}", "", subset_table(runs, split), ""]

    ranks = _ranks(top, baselines_dir, ablate_dir, "test", tables)
    if ranks:
        md += ["## Every comparison with its uncertainty: test", "", COMPARISON_NOTE, "",
               comparison_table(ranks, "IIER"), ""]  # fmt: skip

    curves = read_live(live)
    if curves:
        plot_training(curves, reports / "report_training.png")
        md += ["## Training curves", "", "![training](report_training.png)", ""]

    images = dict(zip(kb["qid"], entity_image_paths(kb), strict=True))
    names = dict(zip(kb["qid"], kb["name"], strict=True))

    def entity_image(qid: str) -> Path | None:
        rel = images.get(qid)
        return dataset / rel if rel else None

    cases = []
    first_seed = top[top["seed"] == top["seed"].min()] if "seed" in top.columns else top
    test_top = first_seed[first_seed["split"] == "test"]
    for row in pick_cases(test_top, 3, seed=0).itertuples(index=False):
        m = mentions.loc[row.id]
        cases.append({
            "mention_image": vpwiki / m["prompted_image"], "sentence": m["sentence"],
            "gold_image": entity_image(row.qid), "gold_name": names.get(row.qid, row.qid),
            "rank": int(row.rank),
            "top": [(entity_image(q), names.get(q, q), float(s))
                    for q, s in zip(row.top_qids[:3], row.top_scores[:3], strict=True)],
        })  # fmt: skip
    if cases:
        case_studies(cases, reports / "report_cases.png")
        md += ["## Case studies (Figure 6): test mentions", "",
               "Prompted mention image, gold entity, IIER's top 3 (green frame: the gold one).",
               "", "![cases](report_cases.png)", ""]  # fmt: skip
    (reports / "report.md").write_text("\n".join(md))
    console.print(f"report: wrote {reports / 'report.md'}")


if __name__ == "__main__":
    app()
