"""Full-KB evaluation throughput: our exact evaluator vs a MIMIC-style reference (issue 4).

Both score the same random mention and entity features (the encoders' outputs: V^G, V^L with
``--patches`` tokens, T^G, T^L with ``--text-len`` tokens) with the same random IIER units,
rank every mention against every entity and must agree on the rankings.

* reference — what the MIMIC-family code does: keep the raw entity features in host
  memory; for every batch of ``--ref-batch`` (20) mentions and every chunk of
  ``--ref-chunk`` (6,000) entities copy the chunk to the device, recompute the entity-side
  projections (TFI queries, FC(T_E^G), CMFI's h_e, mean-pooled V_E^L) and run TFI as a
  [N, B, L, L] attention with a [N, B, L, d] context.
* ours — :mod:`vpmel.iier.retrieval`: the entity side is precomputed once into a store (built
  block by block: the raw KB never exists in memory), then ``--batch`` mentions are scored
  per pass in blocks bounded by ``--block-mb``.

Each method runs in its own process so peak memory is its own: host peak RSS (ru_maxrss)
and, on a GPU, ``torch.cuda.max_memory_allocated``. fp32 throughout (TF32 off), so the two
agree to float rounding: rankings must match exactly except where another entity's score is
within ``--tol`` of the gold score (checked from both sides and reported).

    python benchmarks/eval_throughput.py --entities 20000 --mentions 40          # CPU, small
    python benchmarks/eval_throughput.py --device cuda --entities 100000 --mentions 400
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel

from vpmel.iier.model import IIER, EntitySide, Features, IIERConfig
from vpmel.iier.retrieval import (
    entity_chunk_for,
    ordered_top_k,
    pessimistic_ranks,
    score_block_rows,
)

GEN_BLOCK = 1024  # entity features are generated in seeded blocks of this many rows
TOWER_DIM = 8  # the stand-in towers' own embedding width (Towers' projections)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=100_000)
    p.add_argument("--mentions", type=int, default=40)
    p.add_argument("--patches", type=int, default=50, help="image tokens (CLS + patches)")
    p.add_argument("--text-len", type=int, default=40)
    p.add_argument("--d-v", type=int, default=96)
    p.add_argument("--d-t", type=int, default=512)
    p.add_argument("--d-c", type=int, default=96)
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--ref-batch", type=int, default=20, help="reference: mentions per batch")
    p.add_argument("--ref-chunk", type=int, default=6000, help="reference: entities per chunk")
    p.add_argument("--batch", type=int, default=64, help="ours: mentions per pass")
    p.add_argument("--block-mb", type=float, default=512.0, help="ours: temporaries per block")
    p.add_argument("--store", default="device", help="ours: keep the store on device | cpu")
    p.add_argument("--tol", type=float, default=1e-4, help="score tolerance for near-ties")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="reference,ours")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ inputs


class Towers(nn.Module):
    """Stands in for an ImageTextEncoder: the benchmark feeds encoder outputs directly, so
    the (tiny) towers never run."""

    def __init__(self) -> None:
        super().__init__()
        self.vision_model = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=8,
                intermediate_size=8,
                num_hidden_layers=12,
                num_attention_heads=1,
                image_size=16,
                patch_size=8,
            )
        )
        self.text_model = BertModel(
            BertConfig(
                vocab_size=8,
                hidden_size=8,
                num_hidden_layers=1,
                num_attention_heads=1,
                intermediate_size=8,
            )
        )
        self.visual_projection = nn.Linear(8, 8)
        self.text_projection = nn.Linear(8, 8)
        self.logit_scale = nn.Parameter(torch.zeros(()))


def make_model(args: argparse.Namespace) -> IIER:
    """Random IIER units at the requested sizes (seeded), combined as the paper does (what
    :func:`reference_chunk` computes)."""
    torch.manual_seed(args.seed)
    cfg = IIERConfig(
        d_v=args.d_v,
        d_t=args.d_t,
        d_c=args.d_c,
        max_text_length=args.text_len,
        combination="paper",
    )
    return IIER(Towers(), cfg).eval()


def features(args: argparse.Namespace, n: int, seed: int) -> Features:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.full((n,), args.text_len)
    mask = (torch.arange(args.text_len)[None] < lengths[:, None]).long()
    return Features(
        v_global=torch.randn(n, args.d_v, generator=g),
        v_local=torch.randn(n, args.patches, args.d_v, generator=g),
        t_global=F.normalize(torch.randn(n, args.d_t, generator=g), dim=-1),
        t_local=torch.randn(n, args.text_len, args.d_t, generator=g),
        t_mask=mask,
        v_tower=F.normalize(torch.randn(n, TOWER_DIM, generator=g), dim=-1),
        t_tower=F.normalize(torch.randn(n, TOWER_DIM, generator=g), dim=-1),
    )


def entity_blocks(args: argparse.Namespace):
    """(lo, Features) blocks of the KB, each regenerated from its own seed."""
    for b in range(math.ceil(args.entities / GEN_BLOCK)):
        lo = b * GEN_BLOCK
        n = min(GEN_BLOCK, args.entities - lo)
        yield lo, features(args, n, args.seed * 1_000_003 + 17 + b)


def mention_inputs(args: argparse.Namespace) -> tuple[Features, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed + 5)
    gold = torch.randint(0, args.entities, (args.mentions,), generator=g)
    return features(args, args.mentions, args.seed * 1_000_003 + 1), gold


FIELDS = ("v_global", "v_local", "t_global", "t_local", "t_mask", "v_tower", "t_tower")


def rows(f: Features, lo: int, hi: int, device: torch.device) -> Features:
    return Features(*(getattr(f, k)[lo:hi].to(device) for k in FIELDS))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------ reference


@torch.no_grad()
def reference_chunk(model: IIER, m: Features, e: Features) -> torch.Tensor:
    """MIMIC-style scores [B, N] of raw mention and entity features (every entity-side
    projection recomputed; TFI with a [N, B, L, L] attention and [N, B, L, d] context)."""
    b, n = len(m.v_global), len(e.v_global)

    def vfi(unit, q_g, t_l, t_g):  # [Q, d], [T, P, d], [T, d] -> [Q, T]
        pooled = t_l.mean(1)
        x = pooled.unsqueeze(0).expand(len(q_g), -1, -1) + q_g.unsqueeze(1)
        h_vc = unit.fc(unit.norm_in(x))
        h_v = unit.norm_out(torch.tanh(unit.gate(h_vc)) * h_vc + t_g.unsqueeze(0))
        return (h_v * q_g.unsqueeze(1)).sum(-1)

    s_v = (
        vfi(model.vfi_m2e, m.v_global, e.v_local, e.v_global)
        + vfi(model.vfi_e2m, e.v_global, m.v_local, m.v_global).T
    ) / 2
    tfi, d = model.tfi, m.t_local.shape[-1]
    query = tfi.query(e.t_local)  # [N, L, d], recomputed for every mention batch
    key, value = tfi.key(m.t_local), tfi.value(m.t_local)  # [B, L, d]
    att = torch.matmul(query.unsqueeze(1), key.unsqueeze(0).transpose(-1, -2)) / math.sqrt(d)
    att = att.masked_fill(m.t_mask[None, :, None, :] == 0, torch.finfo(att.dtype).min)
    context = torch.matmul(torch.softmax(att, -1), value.unsqueeze(0))  # [N, B, L, d]
    weight = e.t_mask.float() / e.t_mask.sum(1, keepdim=True)
    h_t = tfi.norm(torch.einsum("nbld,nl->nbd", context, weight))  # masked MeanPooling
    del att, context
    g2l = (tfi.fc(e.t_global).unsqueeze(1) * h_t).sum(-1).T
    g2g = m.t_global @ e.t_global.T
    s_c = model.cmfi(m.t_global, m.v_local) @ model.cmfi(e.t_global, e.v_local).T
    assert g2l.shape == (b, n)
    return (s_v + (g2g + g2l) / 2 + s_c) / 3


def run_reference(args: argparse.Namespace, model: IIER, device: torch.device) -> dict:
    raw = [f for _, f in entity_blocks(args)]  # raw entity features kept in host memory
    raw = Features(*(torch.cat([getattr(f, k) for f in raw]) for k in FIELDS))
    mentions, gold = mention_inputs(args)
    sync(device)
    start = time.perf_counter()
    out = []
    for lo in range(0, args.mentions, args.ref_batch):
        m = rows(mentions, lo, lo + args.ref_batch, device)
        scores = torch.cat(
            [
                reference_chunk(model, m, rows(raw, c, c + args.ref_chunk, device))
                for c in range(0, args.entities, args.ref_chunk)
            ],
            dim=1,
        )
        out.append(rank(scores, gold[lo : lo + args.ref_batch].to(device), args.tol))
    sync(device)
    return {"score_s": time.perf_counter() - start, "build_s": 0.0, **collect(out)}


# ------------------------------------------------------------------------------ ours


def run_ours(args: argparse.Namespace, model: IIER, device: torch.device) -> dict:
    sync(device)
    start = time.perf_counter()
    store_device = device if args.store == "device" else torch.device("cpu")
    store: EntitySide | None = None
    with torch.no_grad():
        for lo, f in entity_blocks(args):
            side = model.entity_side(rows(f, 0, len(f.v_global), device))
            if store is None:
                pin = store_device.type == "cpu" and device.type == "cuda"
                store = EntitySide(
                    **{
                        k: torch.empty(
                            (args.entities, *t.shape[1:]),
                            dtype=t.dtype,
                            device=store_device,
                            pin_memory=pin,
                        )
                        for k, t in vars(side).items()
                    }
                )
            for k, t in vars(side).items():
                getattr(store, k)[lo : lo + len(t)] = t.to(store_device)
    sync(device)
    built = time.perf_counter()
    chunk = entity_chunk_for(args.block_mb, args.batch, args.text_len, args.d_t, args.d_v)
    mentions, gold = mention_inputs(args)
    out = []
    with torch.no_grad():
        for lo in range(0, args.mentions, args.batch):
            side = model.mention_side(rows(mentions, lo, lo + args.batch, device))
            scores = score_block_rows(model, side, store, chunk)  # what Ranker.rank_side runs
            out.append(rank(scores, gold[lo : lo + args.batch].to(device), args.tol))
    sync(device)
    return {
        "score_s": time.perf_counter() - built,
        "build_s": built - start,
        "chunk": chunk,
        **collect(out),
    }


# ------------------------------------------------------------------------------ shared


def rank(scores: torch.Tensor, gold: torch.Tensor, tol: float) -> dict[str, torch.Tensor]:
    g = scores.gather(1, gold.unsqueeze(1)).squeeze(1)
    rows_ = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
    top_s, top_r = ordered_top_k(scores, rows_, 20, rows_sorted=True)
    return {
        "ranks": pessimistic_ranks(scores, g).cpu(),
        "gold_scores": g.cpu(),
        "rank_lo": (1 + (scores > (g + tol).unsqueeze(1)).sum(1)).cpu(),  # rank if ties break well
        "rank_hi": (scores >= (g - tol).unsqueeze(1)).sum(1).cpu(),
        "top_rows": top_r.cpu(),
        "top_scores": top_s.cpu(),
    }


def collect(parts: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    model = make_model(args).to(device)
    base = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated() / 2**20
    run = run_reference if args.child == "reference" else run_ours
    result = run(args, model, device)
    arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
    np.savez(args.child_out.with_suffix(".npz"), **arrays)
    info = {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}
    info |= {"peak_host_mb": peak_rss_mb(), "host_baseline_mb": base}
    if device.type == "cuda":
        info |= {
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
            "gpu_baseline_mb": base_gpu,
            "gpu": torch.cuda.get_device_name(),
        }
    args.child_out.with_suffix(".json").write_text(json.dumps(info))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    pairs = args.entities * args.mentions
    results: dict[str, dict] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            out = Path(tmp) / method
            cmd = [sys.executable, __file__, *(argv or sys.argv[1:])]
            cmd += ["--child", method, "--child-out", str(out)]
            print(f"running {method} ...", flush=True)
            subprocess.run(cmd, check=True)
            results[method] = json.loads(out.with_suffix(".json").read_text())
            arrays[method] = dict(np.load(out.with_suffix(".npz")))
    print(
        f"\nKB {args.entities:,} entities x {args.mentions:,} mentions = {pairs:,} pairs; "
        f"P={args.patches} L={args.text_len} d_v={args.d_v} d_t={args.d_t} d_c={args.d_c}; "
        f"device {args.device}"
        + (f" ({results[next(iter(results))].get('gpu')})" if args.device == "cuda" else "")
    )
    for method, r in results.items():
        r["pairs_per_s"] = pairs / r["score_s"]
        r["pairs_per_s_with_build"] = pairs / (r["score_s"] + r["build_s"])
        grown = r["peak_host_mb"] - r["host_baseline_mb"]
        line = (
            f"{method:>9}: {r['pairs_per_s']:>14,.0f} pairs/s scoring"
            f" ({r['score_s']:.1f} s; store build {r['build_s']:.1f} s ->"
            f" {r['pairs_per_s_with_build']:,.0f} pairs/s incl. build);"
            f" peak host RSS {r['peak_host_mb']:,.0f} MB (+{grown:,.0f} over start)"
        )
        if "peak_gpu_mb" in r:
            line += f"; peak GPU {r['peak_gpu_mb']:,.0f} MB"
        print(line)
    if {"reference", "ours"} <= set(results):
        ref, ours = arrays["reference"], arrays["ours"]
        same_ranks = int((ref["ranks"] == ours["ranks"]).sum())
        same_top = int((ref["top_rows"] == ours["top_rows"]).all(1).sum())
        within = (
            (ours["ranks"] >= ref["rank_lo"])
            & (ours["ranks"] <= ref["rank_hi"])
            & (ref["ranks"] >= ours["rank_lo"])
            & (ref["ranks"] <= ours["rank_hi"])
        )
        max_diff = float(np.abs(ref["top_scores"] - ours["top_scores"]).max())
        gold_diff = float(np.abs(ref["gold_scores"] - ours["gold_scores"]).max())
        r, o = results["reference"], results["ours"]
        print(
            f"rankings: gold rank identical for {same_ranks}/{args.mentions} mentions, "
            f"top-20 identical for {same_top}/{args.mentions}; all gold ranks within "
            f"near-ties (|dS| <= {args.tol}): {bool(within.all())}; max |dS| gold "
            f"{gold_diff:.2e}, top-20 {max_diff:.2e}"
        )
        speed = o["pairs_per_s"] / r["pairs_per_s"]
        host = (o["peak_host_mb"] - o["host_baseline_mb"]) / max(
            1.0, r["peak_host_mb"] - r["host_baseline_mb"]
        )
        summary = f"ours / reference: {speed:.1f}x pairs/s, host memory (over start) x{host:.2f}"
        if "peak_gpu_mb" in o:
            summary += f", GPU memory x{o['peak_gpu_mb'] / r['peak_gpu_mb']:.2f}"
        print(summary)
        results["comparison"] = {
            "speedup": speed,
            "host_memory_ratio": host,
            "same_ranks": same_ranks,
            "same_top20": same_top,
            "within_ties": bool(within.all()),
            "max_gold_score_diff": gold_diff,
        }
        assert within.all(), "rankings differ beyond near-ties"
        assert gold_diff <= args.tol, "gold scores differ"
    if args.json:
        record = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
        args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
