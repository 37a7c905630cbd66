"""Two-stage retrieval (FAISS candidates, then IIER's exact score) against exact ranking.

``kb`` — the trained demo IIER (one seed) on a KB of ``--entities`` entities: the demo's
1,200 real entities plus generated distractors that look like real ones. Distractor j is a
mixture ``α x_a + (1 - α) x_b`` of the frozen towers' outputs (CLS states, output layer,
text hidden states; text mask = union) of two distinct real entities a, b, with
``α ~ U(0.2, 0.8)``; (a, b, α) come from a generator seeded by (``--seed``, j // 4096), so
any entity is regenerated on demand and nothing of size N x heavy is ever held or written.
Steps, all in one process (peak RSS is the whole run's):

1. index the KB's global features (FAISS ``--index``, streamed);
2. **dev**: two-stage at the largest K of ``--k-grid``; every smaller K is read off the same
   run (a prefix of the candidate list). K = the smallest K whose dev H@1 and H@20 are
   within ``--k-tolerance`` points of the largest K's: chosen on dev, never on test;
3. **test**: two-stage with that K on every test mention (timed: mention side, search, the
   candidates' on-demand entity side, exact scoring);
4. **test, exact reference**: exact ranking of ``--exact-mentions`` seeded test mentions
   against every one of the N entities (streamed: each block's entity side computed on
   demand, scored with :func:`vpmel.iier.retrieval.score_block_rows`, ranks counted
   pessimistically as exact ranking does). Its scoring time counts only the scoring, not
   the entity side; exact scoring of all test mentions is that rate x all pairs.

``wikidiverse`` — a WikiDiverse-size pass (132k entities x 1,570 mentions) with synthetic
encoder outputs (``eval_throughput``'s random IIER units at the paper's sizes; each entity's
features regenerated from (seed, row); a mention is its gold entity's features plus noise, so
recall means something) through the candidate stage, timed end to end (index build included);
exact ranking's time is measured on ``--exact-mentions`` mentions and scaled.

    python benchmarks/candidates.py kb --entities 1000000 --model-dir models/iier
    python benchmarks/candidates.py wikidiverse
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_throughput import features as synthetic_features  # noqa: E402
from eval_throughput import make_model  # noqa: E402

from vpmel.iier.candidates import (  # noqa: E402
    CandidateConfig,
    OnDemand,
    TwoStageRanker,
    build_index,
    input_blocks,
    recall_at,
)
from vpmel.iier.data import Side, index_batches  # noqa: E402
from vpmel.iier.model import IIER, Features  # noqa: E402
from vpmel.iier.retrieval import entity_chunk_for, ordered_top_k, score_block_rows  # noqa: E402
from vpmel.metrics import ranking_metrics  # noqa: E402

DISTRACTOR_BLOCK = 4096
MIX = (0.2, 0.8)


def cpu_s() -> float:
    """CPU seconds this process used so far (user + system, all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} rss {peak_rss_mb():,.0f} MB] {msg}", flush=True)


# ------------------------------------------------------------------------------ the big KB


class DistractorKB:
    """The real KB's frozen-tower inputs plus generated distractors (module docstring)."""

    def __init__(self, real: Side, n: int, seed: int) -> None:
        images, texts = real.images, real.texts
        if images.vision_cls is None or texts.hidden is None:
            raise ValueError("the distractor KB mixes frozen-tower outputs; this IIER has none")
        self.cls, self.last = images.vision_cls, images.vision_last
        self.hidden, self.mask = texts.hidden, texts.attention_mask
        self.real, self.n, self.seed = len(self.mask), n, seed

    def __len__(self) -> int:
        return self.n

    def parents(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, α) of distractor ``rows`` (global KB rows >= the real KB's size)."""
        j = rows - self.real
        a, b, alpha = (np.empty(len(j), t) for t in (np.int64, np.int64, np.float32))
        for block in np.unique(j // DISTRACTOR_BLOCK):
            g = np.random.default_rng([self.seed, int(block)])
            pa = g.integers(0, self.real, DISTRACTOR_BLOCK)
            pb = (pa + g.integers(1, self.real, DISTRACTOR_BLOCK)) % self.real
            pal = g.uniform(*MIX, DISTRACTOR_BLOCK).astype(np.float32)
            here = j // DISTRACTOR_BLOCK == block
            at = j[here] % DISTRACTOR_BLOCK
            a[here], b[here], alpha[here] = pa[at], pb[at], pal[at]
        return a, b, alpha

    def inputs(self, rows) -> dict[str, torch.Tensor]:
        rows = np.asarray(rows, dtype=np.int64)
        a, b, alpha = rows.copy(), rows.copy(), np.ones(len(rows), np.float32)
        fake = rows >= self.real
        if fake.any():
            a[fake], b[fake], alpha[fake] = self.parents(rows[fake])
        ta, tb = torch.as_tensor(a), torch.as_tensor(b)
        w = torch.as_tensor(alpha)[:, None, None]
        mask = torch.maximum(self.mask[ta], self.mask[tb])
        width = max(1, int(mask.sum(1).max()))
        return {
            "vision_cls": w * self.cls[ta] + (1 - w) * self.cls[tb],
            "vision_last": w * self.last[ta] + (1 - w) * self.last[tb],
            "text_hidden": w * self.hidden[ta, :width] + (1 - w) * self.hidden[tb, :width],
            "attention_mask": mask[:, :width],
        }


def load_demo(args: argparse.Namespace) -> tuple[IIER, object]:
    """The trained IIER of the first seed and its inputs, loaded as `evaluate` loads them."""
    from vpmel.iier.data import InputConfig
    from vpmel.iier.evaluation import load_data
    from vpmel.iier.features import FeatureStore, encoder_id
    from vpmel.iier.model import seed_checkpoints

    seed, folder = seed_checkpoints(args.model_dir)[0]
    model, extra = IIER.load(folder)
    data = load_data(args.vpwiki, args.dataset, args.answers, model, InputConfig(**extra["inputs"]))
    store = FeatureStore.load(args.features, encoder_id(model.encoder.folder))
    data.cache_frozen(model, 64, store)
    say(f"loaded IIER {folder} and {len(data.kb_table):,} real entities")
    return model, data


@torch.no_grad()
def exact_stream(
    model: IIER,
    entities: OnDemand,
    n: int,
    mention_batch: dict[str, torch.Tensor],
    gold: torch.Tensor,
    block: int,
    k: int = 20,
) -> dict:
    """Exact ranking of one mention batch against all ``n`` entities, streamed block by
    block; rank = 1 + #{other entities e : S(m, e) >= S(m, gold)} (pessimistic)."""
    mention = model.mention_side(model.encode(mention_batch))
    b = len(gold)
    gold_side = entities.side(model, gold.tolist())
    gold_s = model.score(mention, gold_side).s.float().diagonal()
    chunk = entity_chunk_for(
        256, b, entities.text_len, model.cfg.d_t, model.cfg.d_v
    )  # evaluate's block_mb
    others = torch.zeros(b, dtype=torch.long)
    top_s = torch.empty(b, 0)
    top_r = torch.empty(b, 0, dtype=torch.long)
    entity_s = score_s = 0.0
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        started = time.perf_counter()
        side = entities.side(model, range(lo, hi))
        built = time.perf_counter()
        s = score_block_rows(model, mention, side, chunk)
        rows = torch.arange(lo, hi).expand(b, -1)
        own = rows == gold[:, None]
        others += ((s >= gold_s[:, None]) & ~own).sum(1)
        top_s, top_r = ordered_top_k(torch.cat([top_s, s], 1), torch.cat([top_r, rows], 1), k)
        score_s += time.perf_counter() - built
        entity_s += built - started
        if (lo // block) % 25 == 0:
            say(f"  exact: {hi:,}/{n:,} entities")
    return {
        "ranks": (1 + others).numpy(),
        "top_rows": top_r.numpy(),
        "score_s": score_s,
        "entity_s": entity_s,
    }


def metrics_line(name: str, ranks: np.ndarray, extra: str = "") -> str:
    m = ranking_metrics(ranks)
    return (
        f"{name:<34} H@1 {m['H@1']:6.2f}  H@20 {m['H@20']:6.2f}  MRR {m['MRR']:6.2f}"
        f"  (n={m['n']}){extra}"
    )


def run_kb(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model, data = load_demo(args)
    kb = DistractorKB(data.entities, args.entities, args.seed)
    n, width = len(kb), data.entities.texts.width
    grid = sorted(int(x) for x in args.k_grid.split(","))
    cfg = CandidateConfig(k=grid[-1], index=args.index, batch=args.batch)
    entities = OnDemand(kb.inputs, width, args.batch)
    result: dict = {"entities": n, "real_entities": kb.real, "index": args.index}

    started = time.perf_counter()
    index = build_index(model, input_blocks(kb.inputs, n, args.batch), cfg)
    result["index_build_s"] = time.perf_counter() - started
    say(f"indexed {n:,} entities ({args.index}) in {result['index_build_s']:.0f} s")

    gold_all = data.gold.numpy()

    def two_stage(rows: list[int], k: int):
        ranker = TwoStageRanker(model, index, entities, n, k)
        out = ranker.rank(index_batches(data.mentions, rows, data.gold, args.mention_batch))
        return ranker, out

    # ---- dev: choose K
    dev = data.rows("dev")
    _, dev_run = two_stage(dev, grid[-1])
    by_k = {}
    for k in grid:
        ranks, _ = dev_run.prefix(gold_all[dev], k, n)
        m = ranking_metrics(ranks)
        by_k[k] = {
            "H@1": m["H@1"],
            "H@20": m["H@20"],
            **recall_at(dev_run.candidates, gold_all[dev], [k]),
        }
    top = by_k[grid[-1]]
    chosen = next(
        k
        for k in grid
        if abs(by_k[k]["H@1"] - top["H@1"]) <= args.k_tolerance
        and abs(by_k[k]["H@20"] - top["H@20"]) <= args.k_tolerance
    )
    result["dev_by_k"], result["k"] = by_k, chosen
    print(
        "\ndev (choosing K): "
        + "; ".join(
            f"K={k}: R@K {v[f'R@{k}']:.1f} H@1 {v['H@1']:.1f} H@20 {v['H@20']:.1f}"
            for k, v in by_k.items()
        )
        + f" -> K = {chosen}",
        flush=True,
    )

    # ---- test: two-stage on every mention
    test = data.rows("test")
    ranker, run = two_stage(test, chosen)
    times = ranker.times.as_dict()
    result["two_stage_test"] = {
        **ranking_metrics(run.ranks),
        **recall_at(run.candidates, gold_all[test], [chosen]),
        "times": times,
    }
    say(f"two-stage on {len(test)} test mentions: {times}")

    if args.exact_mentions == 0:  # two-stage only (e.g. its own peak memory)
        result["peak_rss_mb"] = peak_rss_mb()
        t = result["two_stage_test"]
        print(
            metrics_line(
                f"two-stage, all {len(test)} test",
                run.ranks,
                f"  R@{chosen} {t[f'R@{chosen}']:.2f}",
            )
        )
        print(f"peak RSS of the whole run (no exact part): {result['peak_rss_mb']:,.0f} MB")
        return result

    # ---- test: the exact reference on a seeded sample
    g = np.random.default_rng(args.seed + 1)
    sample = sorted(g.choice(len(test), min(args.exact_mentions, len(test)), replace=False))
    rows = [test[i] for i in sample]
    batch = data.mentions.inputs(rows)
    exact = exact_stream(model, entities, n, batch, data.gold[rows], args.block)
    pairs = len(rows) * n
    exact_rate = pairs / exact["score_s"]
    per_mention_two = times["total_s"] / len(test)
    result["exact_sample"] = {
        "mentions": len(rows),
        "pairs": pairs,
        "score_s": exact["score_s"],
        "entity_side_s": exact["entity_s"],
        "pairs_per_s": exact_rate,
        **ranking_metrics(exact["ranks"]),
    }
    two_sample = run.ranks[sample]
    same = int((two_sample == exact["ranks"]).sum())
    same_top = int((run.top_rows[sample] == exact["top_rows"]).all(1).sum())
    exact_all_s = len(test) * n / exact_rate
    result["comparison"] = {
        "same_gold_rank": same,
        "same_top20": same_top,
        "exact_all_test_scoring_s_estimated": exact_all_s,
        "two_stage_all_test_s": times["total_s"],
        "speedup_scoring": exact_all_s / times["total_s"],
        "speedup_per_mention_measured": (exact["score_s"] / len(rows)) / per_mention_two,
    }
    result["peak_rss_mb"] = peak_rss_mb()

    t = result["two_stage_test"]
    print(
        f"\nKB {n:,} entities ({kb.real:,} real + {n - kb.real:,} distractors), index "
        f"{args.index} built in {result['index_build_s']:.0f} s; K = {chosen} (chosen on dev)"
    )
    print(
        metrics_line(
            f"two-stage, all {len(test)} test", run.ranks, f"  R@{chosen} {t[f'R@{chosen}']:.2f}"
        )
    )
    print(metrics_line(f"two-stage, the {len(rows)}-mention sample", two_sample))
    print(metrics_line(f"exact, the {len(rows)}-mention sample", exact["ranks"]))
    print(
        f"sample: gold rank identical for {same}/{len(rows)}, top-20 identical for "
        f"{same_top}/{len(rows)}"
    )
    print(
        f"scoring time: exact {exact['score_s']:.1f} s for {len(rows)} mentions x {n:,} "
        f"({exact_rate:,.0f} pairs/s; + {exact['entity_s']:.0f} s computing the entity side) "
        f"-> {exact_all_s / 60:.1f} min for all {len(test)} test mentions; two-stage "
        f"{times['total_s']:.1f} s for all {len(test)} (mention {times['mention_s']:.1f}, "
        f"search {times['search_s']:.1f}, entity side {times['entity_s']:.1f}, exact score "
        f"{times['score_s']:.1f}) -> {result['comparison']['speedup_scoring']:.0f}x less"
    )
    print(f"peak RSS of the whole run: {result['peak_rss_mb']:,.0f} MB")
    return result


# ------------------------------------------------------------------------------ wikidiverse


class Synthetic:
    """Encoder outputs of entity ``row`` regenerated from (seed, row): eval_throughput's
    random features, one row at a time."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def row_seed(self, row: int) -> int:
        return self.args.seed * 1_000_003 + 17 + int(row)

    def inputs(self, rows) -> Features:
        parts = [synthetic_features(self.args, 1, self.row_seed(r)) for r in rows]
        return Features(**{k: torch.cat([getattr(p, k) for p in parts]) for k in vars(parts[0])})

    def mentions(self, gold: np.ndarray, noise: float) -> Features:
        f = self.inputs(gold)
        g = torch.Generator().manual_seed(self.args.seed + 7)
        out = {"t_mask": f.t_mask}
        for k, v in vars(f).items():
            if k != "t_mask":
                out[k] = v + noise * float(v.std()) * torch.randn(v.shape, generator=g)
        for k in ("t_global", "v_tower", "t_tower"):  # unit vectors, as the encoders give
            out[k] = torch.nn.functional.normalize(out[k], dim=-1)
        return Features(**out)


def run_wikidiverse(args: argparse.Namespace) -> dict:
    model = make_model(args)
    syn = Synthetic(args)
    n = args.entities
    g = np.random.default_rng(args.seed + 5)
    gold = g.integers(0, n, args.mentions)
    mentions = syn.mentions(gold, args.noise)
    cfg = CandidateConfig(k=args.k, index=args.index, batch=args.batch)
    started = time.perf_counter()
    index = build_index(model, input_blocks(syn.inputs, n, args.batch), cfg)
    built = time.perf_counter()
    say(f"indexed {n:,} synthetic entities in {built - started:.0f} s")
    ranker = TwoStageRanker(
        model, index, OnDemand(syn.inputs, args.text_len, args.batch), n, args.k
    )
    gold_t = torch.as_tensor(gold)

    def batches():
        for lo in range(0, args.mentions, args.mention_batch):
            hi = min(args.mentions, lo + args.mention_batch)
            yield Features(**{k: v[lo:hi] for k, v in vars(mentions).items()}), gold_t[lo:hi]

    # TwoStageRanker.rank encodes model inputs; synthetic mentions are encoder outputs
    parts = []
    for f, gl in batches():
        t0 = time.perf_counter()
        with torch.no_grad():
            side = model.mention_side(f)
        ranker.times.mention_s += time.perf_counter() - t0
        parts.append(ranker.rank_side(side, gl))
        if len(parts) % 5 == 0:
            say(f"  two-stage: {len(parts) * args.mention_batch:,}/{args.mentions:,} mentions")
    done = time.perf_counter()
    cpu_until_ranked = cpu_s()
    ranks = np.concatenate([p["ranks"] for p in parts])
    cand = np.concatenate([p["candidates"] for p in parts])

    # exact on a few mentions, for its rate
    few = Features(**{k: v[: args.exact_mentions] for k, v in vars(mentions).items()})
    with torch.no_grad():
        side = model.mention_side(few)
        ond = OnDemand(syn.inputs, args.text_len, args.batch)
        chunk = entity_chunk_for(256, args.exact_mentions, args.text_len, args.d_t, args.d_v)
        score_s = 0.0
        for lo in range(0, args.exact_sample_entities, args.batch):
            e = ond.side(model, range(lo, min(args.exact_sample_entities, lo + args.batch)))
            t0 = time.perf_counter()
            score_block_rows(model, side, e, chunk)
            score_s += time.perf_counter() - t0
    exact_rate = args.exact_mentions * args.exact_sample_entities / score_s
    exact_all_h = args.mentions * n / exact_rate / 3600
    result = {
        "entities": n,
        "mentions": args.mentions,
        "k": args.k,
        "index_build_s": built - started,
        "rank_s": done - built,
        "total_s": done - started,
        "times": ranker.times.as_dict(),
        **recall_at(cand, gold, [args.k]),
        "H@1": ranking_metrics(ranks)["H@1"],
        "exact_pairs_per_s": exact_rate,
        "exact_all_hours_estimated": exact_all_h,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "cpu_s_until_ranked": cpu_until_ranked,
    }
    print(
        f"\nWikiDiverse-size pass: {n:,} entities x {args.mentions:,} mentions, K = {args.k}, "
        f"{args.index}, {torch.get_num_threads()} threads: {result['total_s'] / 60:.1f} min "
        f"(index {result['index_build_s']:.0f} s + ranking {result['rank_s']:.0f} s: "
        f"{result['times']}); R@{args.k} {result[f'R@{args.k}']:.1f}; peak RSS "
        f"{result['peak_rss_mb']:,.0f} MB; CPU time {cpu_until_ranked / 60:.1f} core-min"
        f"\nexact: {exact_rate:,.0f} pairs/s scoring (measured on "
        f"{args.exact_mentions} x {args.exact_sample_entities:,}) -> {exact_all_h:.1f} h for the "
        f"same pass"
    )
    return result


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    kb = sub.add_parser("kb", help="the demo KB + distractors: two-stage vs exact")
    kb.add_argument("--entities", type=int, default=1_000_000)
    kb.add_argument("--model-dir", type=Path, default=Path("models/iier"))
    kb.add_argument("--vpwiki", type=Path, default=Path("data/vpwiki"))
    kb.add_argument("--dataset", type=Path, default=Path("data/dataset"))
    kb.add_argument("--answers", type=Path, default=Path("data/answers/answers.parquet"))
    kb.add_argument("--features", type=Path, default=Path("data/features"))
    kb.add_argument("--index", default="SQfp16", help="FAISS index_factory string")
    kb.add_argument("--k-grid", default="10,20,50,100,200,500")
    kb.add_argument("--k-tolerance", type=float, default=0.5, help="points (dev)")
    kb.add_argument("--exact-mentions", type=int, default=16)
    kb.add_argument("--batch", type=int, default=1024, help="entities per encoding batch")
    kb.add_argument("--block", type=int, default=2048, help="exact: entities per block")
    kb.add_argument("--mention-batch", type=int, default=64)
    wd = sub.add_parser("wikidiverse", help="132k entities x 1,570 mentions, synthetic")
    wd.add_argument("--entities", type=int, default=132_000)
    wd.add_argument("--mentions", type=int, default=1570)
    wd.add_argument("--k", type=int, default=100)
    wd.add_argument("--index", default="Flat")
    wd.add_argument("--noise", type=float, default=1.0, help="mention = gold + noise x sd")
    wd.add_argument("--patches", type=int, default=50)
    wd.add_argument("--text-len", type=int, default=40)
    wd.add_argument("--d-v", type=int, default=96)
    wd.add_argument("--d-t", type=int, default=512)
    wd.add_argument("--d-c", type=int, default=96)
    wd.add_argument("--batch", type=int, default=1024)
    wd.add_argument("--mention-batch", type=int, default=64)
    wd.add_argument("--exact-mentions", type=int, default=8)
    wd.add_argument("--exact-sample-entities", type=int, default=8192)
    for s in (kb, wd):
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_float32_matmul_precision("highest")
    result = run_kb(args) if args.what == "kb" else run_wikidiverse(args)
    if args.json:
        record = {"args": {k: str(v) for k, v in vars(args).items()}, "results": result}
        args.json.write_text(json.dumps(record, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
