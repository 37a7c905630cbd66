"""Exact full-KB ranking with IIER's full interaction score (paper §6, Appendix A.3).

Every mention is scored against **every** KB entity with ``S = (S_V + S_T + S_C) / 3``; no
candidate list, no approximation. What makes it fast and small:

* the entity side is encoded **once** and everything that depends on the entity alone is
  kept, not the raw encoder outputs: ``V_E^G``, ``MeanPooling(V_E^L)``, ``T_E^G``,
  ``FC(T_E^G)``, TFI's queries ``T_E^L W_tq`` with their pooling weights, CMFI's ``h_e``
  (:class:`vpmel.iier.model.EntitySide`). The MIMIC-family code instead keeps raw features and
  recomputes these projections for every batch of 20 mentions;
* TFI's attention is one GEMM per block plus a mean attention row (no [N, B, L, d] context
  tensor); CMFI reduces to a dot product of precomputed vectors;
* a block of ``mention_batch`` mentions x ``entity_chunk`` entities bounds the temporaries
  (:func:`entity_chunk_for` sizes it from a memory budget); a mention batch's full score
  row [B, N] is kept so the gold rank is counted from exactly the numbers that were sorted.

Ties are counted **pessimistically**: ``rank = #{entities e : S(m, e) >= S(m, gold)}``, i.e.
1 + the number of *other* entities scoring at least as high as the gold one. A constant
scorer therefore gets rank N, never an inflated rank 1. The top-k lists order equal scores
by KB row.

With several processes (accelerate), each process holds a contiguous shard of the KB's
entity side; gold scores, counts and top-k candidates are combined with collectives, so
the KB never has to fit on one device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from vpmel.iier.data import Side, entity_batches, index_batches
from vpmel.iier.model import IIER, EntitySide, MentionSide

FLOAT_BYTES = 4


class Collective(Protocol):
    """What ranking needs from a process group (accelerate's Accelerator fits)."""

    num_processes: int
    process_index: int

    def reduce(self, tensor: Tensor, reduction: str = "sum") -> Tensor: ...

    def gather(self, tensor: Tensor) -> Tensor: ...


class SingleProcess:
    """The trivial :class:`Collective`."""

    num_processes = 1
    process_index = 0

    def reduce(self, tensor: Tensor, reduction: str = "sum") -> Tensor:
        return tensor

    def gather(self, tensor: Tensor) -> Tensor:
        return tensor


def shard_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """Contiguous rows [lo, hi) of shard ``index`` of ``parts`` (sizes differ by <= 1)."""
    base, extra = divmod(n, parts)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


def chunk_grid(chunk: int, batch: int) -> tuple[int, int]:
    """(scoring chunk, shard unit): the chunk becomes a multiple or a divisor of the encoding
    batch, and the unit (a multiple of both) is what shards are made of."""
    if chunk >= batch:
        chunk = chunk // batch * batch
        return chunk, chunk
    return max(d for d in range(1, chunk + 1) if batch % d == 0), batch


def aligned_shard(n: int, parts: int, index: int, block: int) -> tuple[int, int]:
    """Shard ``index`` of ``parts`` made of whole ``block``-row blocks. With blocks from
    :func:`chunk_grid` each process encodes and scores exactly the entity batches and
    chunks a single process would, so its scores are bit-for-bit the same."""
    lo, hi = shard_range(math.ceil(n / block), parts, index)
    return min(n, lo * block), min(n, hi * block)


def entity_chunk_for(
    budget_mb: float, mention_batch: int, text_len: int, d_t: int, d_v: int
) -> int:
    """Entities per block so that one block's temporaries stay within ``budget_mb``.

    Per pair: TFI logits and softmax (2 L^2), the mean attention row (L), context and its
    LayerNorm (2 d_t), VFI's pairwise tensors in two directions (~10 d_v).
    """
    per_pair = FLOAT_BYTES * (2 * text_len * text_len + text_len + 2 * d_t + 10 * d_v + 8)
    return max(1, int(budget_mb * 2**20 // (per_pair * max(1, mention_batch))))


# ------------------------------------------------------------------------------ entity side


@torch.no_grad()
def build_entity_store(
    model: IIER,
    batches: Iterable[dict[str, Tensor]],
    n_entities: int,
    text_len: int,
    device: torch.device | str | None = None,
    track: Callable[[Iterable], Iterable] = lambda it: it,
) -> EntitySide:
    """Encode entities once and keep their :class:`EntitySide` (preallocated, no concat
    copies) on ``device`` (default: the model's). Text fields are padded to ``text_len``
    with zero-weight query rows. A store on the CPU for a model on a GPU is pinned and
    streamed to the GPU chunk by chunk while scoring."""
    device = torch.device(device) if device is not None else model.device
    pin = device.type == "cpu" and model.device.type == "cuda"
    store: EntitySide | None = None
    filled = 0
    for batch in track(batches):
        batch = {k: v.to(model.device) for k, v in batch.items()}
        side = _pad_entity_side(model.entity_side(model.encode(batch)), text_len)
        if store is None:
            store = EntitySide(
                **{
                    name: torch.empty(
                        (n_entities, *t.shape[1:]), dtype=t.dtype, device=device, pin_memory=pin
                    )
                    for name, t in vars(side).items()
                }
            )
        for name, t in vars(side).items():
            getattr(store, name)[filled : filled + len(side)] = t.to(device)
        filled += len(side)
    if store is None or filled != n_entities:
        raise ValueError(f"entity batches held {filled} entities, expected {n_entities}")
    return store


def _pad_entity_side(side: EntitySide, text_len: int) -> EntitySide:
    extra = text_len - side.queries.shape[1]
    if extra < 0:
        raise ValueError(f"entity text of {side.queries.shape[1]} tokens > store's {text_len}")
    if extra:
        side.queries = torch.nn.functional.pad(side.queries, (0, 0, 0, extra))
        side.query_weight = torch.nn.functional.pad(side.query_weight, (0, extra))
    return side


# ------------------------------------------------------------------------------ scoring


@torch.no_grad()
def score_block_rows(
    model: IIER, mention: MentionSide, store: EntitySide, entity_chunk: int
) -> Tensor:
    """``S`` [B, N] of a mention batch against the whole ``store``, ``entity_chunk`` at a time."""
    n = len(store)
    device = mention.keys.device
    out = torch.empty((len(mention), n), dtype=torch.float32, device=device)
    for lo in range(0, n, entity_chunk):
        chunk = store.rows(lo, min(n, lo + entity_chunk))
        if chunk.queries.device != device:  # a store kept in (pinned) host memory: stream it
            chunk = chunk.to(device, non_blocking=True)
        out[:, lo : lo + len(chunk)] = model.score(mention, chunk).s.float()
    return out


def pessimistic_ranks(scores: Tensor, gold_scores: Tensor) -> Tensor:
    """``#{e : scores[b, e] >= gold_scores[b]}`` per row (the gold entity counts itself)."""
    return (scores >= gold_scores.unsqueeze(1)).sum(1)


def ordered_top_k(
    scores: Tensor, rows: Tensor, k: int, rows_sorted: bool = False
) -> tuple[Tensor, Tensor]:
    """Top ``k`` of each row by score, equal scores in ascending KB row (deterministic)."""
    if not rows_sorted:
        by_row = torch.argsort(rows, dim=1, stable=True)
        scores, rows = scores.gather(1, by_row), rows.gather(1, by_row)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), rows.gather(1, order)


@dataclass
class Ranking:
    """Per mention: the gold rank (pessimistic), its score and the top-k of the KB."""

    ranks: np.ndarray  # [M] int64, 1-based
    gold_scores: np.ndarray  # [M] float32
    top_rows: np.ndarray  # [M, k] int64 KB rows
    top_scores: np.ndarray  # [M, k] float32


class Ranker:
    """Ranks mention batches against a (sharded) entity store.

    ``store`` holds KB rows ``[offset, offset + len(store))``; with one process that is the
    whole KB. Every process must call :meth:`rank` with the same mention batches.
    """

    def __init__(
        self,
        model: IIER,
        store: EntitySide,
        offset: int = 0,
        entity_chunk: int = 1024,
        k: int = 20,
        collective: Collective | None = None,
    ) -> None:
        self.model = model
        self.store = store
        self.offset = offset
        self.entity_chunk = entity_chunk
        self.k = k
        self.collective = collective or SingleProcess()

    @torch.no_grad()
    def rank_side(self, mention: MentionSide, gold: Tensor) -> tuple[Tensor, ...]:
        """(ranks, gold scores, top scores, top rows) for one mention batch; ``gold`` holds
        global KB rows."""
        scores = score_block_rows(self.model, mention, self.store, self.entity_chunk)
        if torch.isnan(scores).any():
            raise ValueError("IIER produced NaN scores; cannot rank")
        gold = gold.to(scores.device)
        local = gold - self.offset
        owned = (local >= 0) & (local < scores.shape[1])
        picked = scores.gather(1, local.clamp(0, max(0, scores.shape[1] - 1)).unsqueeze(1))
        gold_scores = torch.where(owned, picked.squeeze(1), torch.zeros_like(picked.squeeze(1)))
        gold_scores = self.collective.reduce(gold_scores, "sum")  # exactly one owner adds
        ranks = self.collective.reduce(pessimistic_ranks(scores, gold_scores), "sum")
        rows = torch.arange(scores.shape[1], device=scores.device) + self.offset
        k = min(self.k, scores.shape[1])
        top_s, top_r = ordered_top_k(scores, rows.expand_as(scores), k, rows_sorted=True)
        if self.collective.num_processes > 1:
            top_s, top_r = self._merge(top_s, top_r)
        return ranks, gold_scores, top_s, top_r

    def _merge(self, top_s: Tensor, top_r: Tensor) -> tuple[Tensor, Tensor]:
        """Merge per-shard top-k lists (every shard must hold >= k entities)."""
        p, b = self.collective.num_processes, top_s.shape[0]
        all_s = self.collective.gather(top_s.contiguous()).view(p, b, -1)
        all_r = self.collective.gather(top_r.contiguous()).view(p, b, -1)
        all_s, all_r = all_s.permute(1, 0, 2).reshape(b, -1), all_r.permute(1, 0, 2).reshape(b, -1)
        return ordered_top_k(all_s, all_r, self.k)

    def rank(
        self, batches: Iterable[tuple[dict[str, Tensor], Tensor]], track: Callable = lambda x: x
    ) -> Ranking:
        """Rank every mention of ``batches`` = (model inputs, gold KB rows)."""
        parts: list[tuple[Tensor, ...]] = []
        for batch, gold in track(batches):
            batch = {k: v.to(self.model.device) for k, v in batch.items()}
            mention = self.model.mention_side(self.model.encode(batch))
            parts.append(tuple(t.cpu() for t in self.rank_side(mention, gold)))
        if not parts:
            k = min(self.k, len(self.store))
            return Ranking(
                np.zeros(0, np.int64),
                np.zeros(0, np.float32),
                np.zeros((0, k), np.int64),
                np.zeros((0, k), np.float32),
            )
        ranks, gold_scores, top_s, top_r = (torch.cat(x) for x in zip(*parts, strict=True))
        return Ranking(
            ranks.numpy().astype(np.int64),
            gold_scores.numpy(),
            top_r.numpy().astype(np.int64),
            top_s.numpy(),
        )


@dataclass(frozen=True)
class RankConfig:
    """Evaluation sizes: mentions per batch, entities per encoding batch, the memory budget
    of one scoring block (MB) and the length of the top list."""

    mention_batch: int = 64
    entity_batch: int = 64
    block_mb: float = 256.0
    k: int = 20


def kb_ranker(
    model: IIER,
    entities: Side,
    cfg: RankConfig,
    collective: Collective | None = None,
    store_device: torch.device | str | None = None,
    track: Callable[[Iterable], Iterable] = lambda it: it,
) -> Ranker:
    """Encode the KB once (this process's shard of it) and return a :class:`Ranker`.

    With several processes the KB is sharded (in whole encoding batches) when every shard
    holds at least ``k`` entities; otherwise every process scores the whole (small) KB.
    """
    collective = collective or SingleProcess()
    chunk = entity_chunk_for(
        cfg.block_mb, cfg.mention_batch, model.cfg.max_text_length, model.cfg.d_t, model.cfg.d_v
    )
    chunk, unit = chunk_grid(chunk, cfg.entity_batch)
    n, p = len(entities.texts), collective.num_processes
    spans = [aligned_shard(n, p, i, unit) for i in range(p)]
    sharded = p > 1 and min(hi - lo for lo, hi in spans) >= cfg.k
    lo, hi = spans[collective.process_index] if sharded else (0, n)
    was_training = model.training
    model.eval()
    store = build_entity_store(
        model,
        entity_batches(entities, lo, hi, cfg.entity_batch),
        hi - lo,
        entities.texts.width,
        store_device,
        track,
    )
    model.train(was_training)
    return Ranker(model, store, lo, chunk, cfg.k, collective if sharded else None)


def rank_rows(
    ranker: Ranker,
    mentions: Side,
    rows: Sequence[int],
    gold: Tensor,
    cfg: RankConfig,
    track: Callable[[Iterable], Iterable] = lambda it: it,
) -> Ranking:
    """Rank mention ``rows`` (gold KB rows ``gold[rows]``) against the whole KB."""
    was_training = ranker.model.training
    ranker.model.eval()
    try:
        return ranker.rank(index_batches(mentions, rows, gold, cfg.mention_batch), track)
    finally:
        ranker.model.train(was_training)
