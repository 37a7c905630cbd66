"""Two-stage retrieval for huge KBs: a FAISS candidate stage, then IIER's exact score.

Exact full-KB ranking (:mod:`vpmel.iier.retrieval`) stays the default and the reference. For a KB
too large to score every pair of, or whose entity store (TFI's queries, ~40 KB-90 KB per
entity) does not fit in memory, ``evaluate.candidates`` / ``vpmel link --candidates K``
switch on a first stage:

1. **Candidates.** Every term of IIER's score that is a dot product of a mention-only and an
   entity-only vector — the *linear part* — is folded into one mention vector and one entity
   vector (:func:`query_vectors`, :func:`key_vectors`), so a FAISS inner-product index over
   the entities' vectors returns the K entities with the highest linear part. ``scaled``:
   ``τ_O (G2G + w_C S_C + w_I I2I + w_X I2T)`` — everything but G2L and S_V; ``paper``:
   ``G2G / 6 + S_C / 3``. The entity vectors need only IIER's global features (T^G, h_e and
   the towers' own embeddings), not TFI's queries (:func:`global_features`), so the index
   costs 4 bytes x (d_text + d_c + p) per entity (608 dims for the demo), or half that with
   ``index: SQfp16``.
2. **Exact scoring of the candidates.** The heavy entity side (:class:`EntitySide`, with
   TFI's queries) is computed *on demand* for the candidates of a mention batch only
   (:class:`OnDemand`), or read from a precomputed store when there is one (:class:`Stored`),
   and every mention's K candidates get IIER's full score. The gold entity's rank is counted
   as in exact ranking (pessimistically, among the candidates); a gold entity the first
   stage missed gets rank N (the KB size): a miss at every k <= K.

Memory is the index plus one mention batch's candidates, not N x 87 KB. With ``K >= N`` and a
``Flat`` index the two stages rank exactly as exact ranking does (tested).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vpmel.iier.model import IIER, EntitySide, Features, MentionSide, pool_text
from vpmel.iier.retrieval import Ranking, _pad_entity_side, ordered_top_k
from vpmel.params import from_params

#: what a KB source hands the model for some KB rows (e.g. ``Side.inputs``), or the encoder
#: outputs of those rows (:class:`Features`, e.g. synthetic ones)
InputsFn = Callable[[Sequence[int]], dict[str, Tensor] | Features]


@dataclass(frozen=True)
class CandidateConfig:
    """The candidate stage: ``k`` candidates per mention from a FAISS ``index``
    (an ``index_factory`` string over inner products: ``Flat`` exact, ``SQfp16`` exact on
    half-precision vectors, ``IVF4096,SQ8`` approximate, ...); ``nprobe``: IVF lists visited;
    ``train_size``: vectors a trainable index is trained on; ``batch``: entities per
    encoding batch (index build and on-demand entity side)."""

    k: int = 100
    index: str = "Flat"
    nprobe: int = 32
    train_size: int = 100_000
    batch: int = 256


def candidate_config(section: Any, where: str = "evaluate.candidates") -> CandidateConfig | None:
    """``None`` (exact ranking, the default) or the checked :class:`CandidateConfig` of a
    params mapping such as ``{k: 100, index: Flat}``; anything else: one clear line."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ValueError(
            f"{where} must be null (exact ranking) or a mapping like {{k: 100, index: Flat}}, "
            f"not {section!r}"
        )
    cfg = from_params(CandidateConfig, section, where)
    for name in ("k", "nprobe", "train_size", "batch"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}.{name} must be a whole number >= 1, not {value!r}")
    if not isinstance(cfg.index, str) or not cfg.index.strip():
        raise ValueError(f"{where}.index must be a FAISS index_factory string, e.g. Flat")
    return cfg


# ------------------------------------------------------------------------------ linear part


def _scaled_weights(model: IIER) -> tuple[Tensor, Tensor]:
    tau = model.log_temperature.clamp(max=math.log(100.0)).exp()[0]
    return tau, model.unit_weight


def query_vectors(model: IIER, m: MentionSide) -> Tensor:
    """Mention vectors [B, D] whose dot product with :func:`key_vectors` is the linear part
    of IIER's score S (see the module docstring)."""
    if model.scaled:
        tau, (_, _, w_c, _, _) = _scaled_weights(model)
        return tau * torch.cat([m.t_global, w_c * m.h, m.v_tower], 1)
    return torch.cat([m.t_global / 6, m.h / 3], 1)


def key_vectors(model: IIER, e: Any) -> Tensor:
    """Entity vectors [N, D] from ``e`` holding ``t_global``, ``h``, ``v_tower``, ``t_tower``
    (an :class:`EntitySide` or :func:`global_features`)."""
    if model.scaled:
        _, (_, _, _, w_i, w_x) = _scaled_weights(model)
        return torch.cat([e.t_global, e.h, w_i * e.v_tower + w_x * e.t_tower], 1)
    return torch.cat([e.t_global, e.h], 1)


def global_features(model: IIER, batch: dict[str, Tensor] | Features) -> SimpleNamespace:
    """What :func:`key_vectors` reads of a batch of entity inputs — IIER's
    :meth:`~IIER.encode` and :meth:`~IIER.entity_side` without TFI's queries (the per-token
    text FC and W_tq, most of the entity side's cost)."""
    if isinstance(batch, Features):  # encoder outputs given as they are (benchmarks)
        h = model.cmfi.h(batch.t_global, batch.v_local)
        return SimpleNamespace(
            t_global=batch.t_global, h=h, v_tower=batch.v_tower, t_tower=batch.t_tower
        )
    cls_states, last, hidden, mask = model.tower_states(batch)
    _, v_local = model.visual(cls_states, last)
    if model.textual.global_from_tower:
        t_global = F.normalize(pool_text(hidden, mask, model.textual.text_global), dim=-1)
    else:
        t_global = model.textual(hidden, mask)[0]
    v_tower, t_tower = model.tower_embeddings(last, hidden, mask)
    h = model.cmfi.h(t_global, v_local)
    return SimpleNamespace(t_global=t_global, h=h, v_tower=v_tower, t_tower=t_tower)


# ------------------------------------------------------------------------------ the index


def _to(batch: dict[str, Tensor] | Features, device: torch.device) -> Any:
    """Model inputs (or ready encoder outputs, :class:`Features`) on ``device``."""
    if isinstance(batch, Features):
        return Features(**{k: v.to(device) for k, v in vars(batch).items()})
    return {k: v.to(device) for k, v in batch.items()}


def _faiss():
    try:
        import faiss
    except ImportError as problem:  # a dependency, but a GPU user may have swapped builds
        raise ImportError("the candidate stage needs FAISS: pip install faiss-cpu") from problem
    return faiss


def new_index(dim: int, cfg: CandidateConfig):
    """An empty inner-product index of ``cfg.index`` (one clear line when FAISS cannot
    build it), on the GPU when FAISS has GPU support and a GPU is there."""
    faiss = _faiss()
    try:
        index = faiss.index_factory(dim, cfg.index, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as problem:
        first = str(problem).strip().splitlines()[-1] if str(problem).strip() else ""
        raise ValueError(
            f"candidates.index {cfg.index!r}: FAISS cannot build it for {dim}-dim vectors "
            f"({first}); try Flat, SQfp16 or IVF1024,SQ8"
        ) from None
    if hasattr(index, "nprobe") or "IVF" in cfg.index:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", cfg.nprobe)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


@torch.no_grad()
def build_index(
    model: IIER,
    blocks: Iterable[dict[str, Tensor]],
    cfg: CandidateConfig,
    track: Callable[[Iterable], Iterable] = lambda it: it,
):
    """The index over the key vectors of every KB entity, in KB row order. ``blocks``:
    model inputs of consecutive KB rows (only one block is in memory at a time; a trainable
    index is trained on its first ``cfg.train_size`` vectors)."""
    index, pending, held = None, [], 0
    for batch in track(blocks):
        batch = _to(batch, model.device)
        keys = key_vectors(model, global_features(model, batch)).float().cpu().numpy()
        if index is None:
            index = new_index(keys.shape[1], cfg)
        if index.is_trained:
            index.add(np.ascontiguousarray(keys))
            continue
        pending.append(keys)
        held += len(keys)
        if held >= cfg.train_size:
            _train_and_add(index, pending)
            pending = []
    if index is None:
        raise ValueError("the KB is empty; nothing to index")
    if pending:
        _train_and_add(index, pending)
    return index


def _train_and_add(index, parts: list[np.ndarray]) -> None:
    x = np.ascontiguousarray(np.concatenate(parts))
    if not index.is_trained:
        index.train(x)
    index.add(x)


def input_blocks(inputs: InputsFn, n: int, batch: int) -> Iterator[dict[str, Tensor]]:
    """Model inputs of KB rows 0..n, ``batch`` at a time."""
    for lo in range(0, n, batch):
        yield inputs(list(range(lo, min(n, lo + batch))))


# ------------------------------------------------------------------------------ entity side


class OnDemand:
    """The heavy entity side of any KB rows, computed when asked from their model inputs
    (``inputs(rows)``: e.g. :meth:`vpmel.iier.data.Side.inputs`), padded to ``text_len``
    tokens as :func:`vpmel.iier.retrieval.build_entity_store` pads its store."""

    def __init__(self, inputs: InputsFn, text_len: int, batch: int = 256) -> None:
        self.inputs, self.text_len, self.batch = inputs, text_len, batch

    @torch.no_grad()
    def side(self, model: IIER, rows: Sequence[int]) -> EntitySide:
        rows = [int(r) for r in rows]
        parts = []
        for lo in range(0, len(rows), self.batch):
            batch = _to(self.inputs(rows[lo : lo + self.batch]), model.device)
            side = model.entity_side(batch if isinstance(batch, Features) else model.encode(batch))
            parts.append(_pad_entity_side(side, self.text_len))
        return EntitySide.cat(parts)


class Stored:
    """The entity side of KB rows read from a precomputed store (e.g. ``vpmel link``'s
    cached KB index)."""

    def __init__(self, store: EntitySide) -> None:
        self.store = store

    def side(self, model: IIER, rows: Sequence[int]) -> EntitySide:
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.store.h.device)
        return EntitySide(**{k: v[index] for k, v in vars(self.store).items()})


# ------------------------------------------------------------------------------ ranking


@dataclass
class CandidateRanking(Ranking):
    """A :class:`Ranking` plus, per mention, the first stage's candidates (KB rows, best
    first) and whether the gold entity was among them."""

    candidates: np.ndarray | None = None  # [M, K] int64
    recalled: np.ndarray | None = None  # [M] bool
    candidate_scores: np.ndarray | None = None  # [M, K] float32: S of each candidate

    def prefix(self, gold: np.ndarray, k: int, n_entities: int) -> tuple[np.ndarray, np.ndarray]:
        """(ranks, recalled) had the first stage returned only the first ``k`` candidates:
        their scores are the same, so one run at the largest K gives every smaller K."""
        cand, scores = self.candidates[:, :k], self.candidate_scores[:, :k]
        hit = cand == np.asarray(gold)[:, None]
        recalled = hit.any(1)
        gold_s = np.where(hit, scores, -np.inf).max(1)
        ranks = np.where(recalled, (scores >= gold_s[:, None]).sum(1), n_entities)
        return ranks.astype(np.int64), recalled


@dataclass
class StageTimes:
    """Seconds spent per part of two-stage ranking (summed over mention batches)."""

    mention_s: float = 0.0  # mention side and query vectors
    search_s: float = 0.0  # FAISS search
    entity_s: float = 0.0  # the candidates' heavy entity side
    score_s: float = 0.0  # IIER's exact score of the candidates, ranks and top lists

    @property
    def total_s(self) -> float:
        return self.mention_s + self.search_s + self.entity_s + self.score_s

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()} | {
            "total_s": round(self.total_s, 3)
        }


def recall_at(candidates: np.ndarray, gold: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``{"R@k": percent of mentions whose gold KB row is among their first k candidates}``."""
    candidates, gold = np.asarray(candidates), np.asarray(gold)
    if candidates.ndim != 2 or len(candidates) != len(gold):
        raise ValueError(f"candidates {candidates.shape} and gold {gold.shape} do not match")
    hit = candidates == gold[:, None]
    return {
        f"R@{k}": round(100.0 * float(hit[:, :k].any(1).mean()), 4) if len(gold) else math.nan
        for k in ks
    }


class TwoStageRanker:
    """Ranks mention batches as :class:`vpmel.iier.retrieval.Ranker` does (same :meth:`rank`),
    but scores only each mention's ``k_candidates`` from ``index``."""

    def __init__(
        self,
        model: IIER,
        index,
        entities: OnDemand | Stored,
        n_entities: int,
        k_candidates: int,
        k: int = 20,
        max_entities: int = 4096,
    ) -> None:
        self.model, self.index, self.entities = model, index, entities
        self.n, self.k_candidates, self.k = n_entities, min(k_candidates, n_entities), k
        self.max_entities = max_entities  # candidates' entity sides held at once
        self.times = StageTimes()

    @torch.no_grad()
    def rank_side(self, mention: MentionSide, gold: Tensor) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        queries = query_vectors(self.model, mention).float().cpu().numpy()
        searched = time.perf_counter()
        _, cand = self.index.search(np.ascontiguousarray(queries), self.k_candidates)
        found = time.perf_counter()
        self.times.mention_s += searched - started
        self.times.search_s += found - searched
        k = min(self.k, self.k_candidates)
        out = {
            "ranks": np.full(len(cand), self.n, np.int64),
            "gold_scores": np.full(len(cand), np.nan, np.float32),
            "top_rows": np.full((len(cand), k), -1, np.int64),
            "top_scores": np.full((len(cand), k), np.nan, np.float32),
            "recalled": np.zeros(len(cand), bool),
            "candidate_scores": np.full(cand.shape, np.nan, np.float32),
        }
        gold = gold.cpu().numpy()
        group = max(1, self.max_entities // self.k_candidates)  # mentions per entity side
        for lo in range(0, len(cand), group):
            self._score_group(mention, cand, gold, lo, min(len(cand), lo + group), k, out)
        out["candidates"] = cand.astype(np.int64)
        return out

    def _score_group(
        self,
        mention: MentionSide,
        cand: np.ndarray,
        gold: np.ndarray,
        lo: int,
        hi: int,
        k: int,
        out: dict[str, np.ndarray],
    ) -> None:
        """Score mentions [lo, hi) against their candidates; one entity side for the group's
        distinct candidates (at most ``max_entities``, or K for a single mention)."""
        started = time.perf_counter()
        part = cand[lo:hi]
        unique, where = np.unique(part[part >= 0], return_inverse=True)
        side = self.entities.side(self.model, unique)
        got = time.perf_counter()
        self.times.entity_s += got - started
        slot = np.full(part.shape, -1, dtype=np.int64)
        slot[part >= 0] = where
        device = mention.keys.device
        for j, i in enumerate(range(lo, hi)):
            ok = slot[j] >= 0
            rows, idx = cand[i][ok], torch.as_tensor(slot[j][ok], device=device)
            chunk = EntitySide(**{n: t[idx] for n, t in vars(side).items()})
            s = self.model.score(mention.rows(i, i + 1), chunk).s.float()[0]
            if torch.isnan(s).any():
                raise ValueError("IIER produced NaN scores; cannot rank")
            out["candidate_scores"][i, ok] = s.cpu().numpy()
            rows_t = torch.as_tensor(rows, device=device)
            top_s, top_r = ordered_top_k(s[None], rows_t[None], k)
            out["top_rows"][i, : top_r.shape[1]] = top_r[0].cpu().numpy()
            out["top_scores"][i, : top_s.shape[1]] = top_s[0].cpu().numpy()
            at = np.flatnonzero(rows == gold[i])
            if len(at):
                g = s[int(at[0])]
                out["ranks"][i] = int((s >= g).sum())
                out["gold_scores"][i] = float(g)
                out["recalled"][i] = True
        self.times.score_s += time.perf_counter() - got

    def rank(
        self, batches: Iterable[tuple[dict[str, Tensor], Tensor]], track: Callable = lambda x: x
    ) -> CandidateRanking:
        """Rank every mention of ``batches`` = (model inputs, gold KB rows)."""
        parts = []
        for batch, gold in track(batches):
            started = time.perf_counter()
            with torch.no_grad():
                batch = {k: v.to(self.model.device) for k, v in batch.items()}
                mention = self.model.mention_side(self.model.encode(batch))
            self.times.mention_s += time.perf_counter() - started
            parts.append(self.rank_side(mention, gold))
        k, kc = min(self.k, self.k_candidates), self.k_candidates
        if not parts:
            return CandidateRanking(
                np.zeros(0, np.int64),
                np.zeros(0, np.float32),
                np.zeros((0, k), np.int64),
                np.zeros((0, k), np.float32),
                np.zeros((0, kc), np.int64),
                np.zeros(0, bool),
                np.zeros((0, kc), np.float32),
            )
        cat = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        return CandidateRanking(
            cat["ranks"],
            cat["gold_scores"],
            cat["top_rows"],
            cat["top_scores"],
            cat["candidates"],
            cat["recalled"],
            cat["candidate_scores"],
        )


def two_stage_ranker(
    model: IIER,
    inputs: InputsFn,
    n_entities: int,
    text_len: int,
    cfg: CandidateConfig,
    k: int = 20,
    track: Callable[[Iterable], Iterable] = lambda it: it,
) -> TwoStageRanker:
    """Index the KB's global features (streamed, ``cfg.batch`` entities at a time) and
    return a ranker that computes the candidates' heavy side on demand."""
    was_training = model.training
    model.eval()
    try:
        index = build_index(model, input_blocks(inputs, n_entities, cfg.batch), cfg, track)
    finally:
        model.train(was_training)
    return TwoStageRanker(model, index, OnDemand(inputs, text_len, cfg.batch), n_entities, cfg.k, k)


def store_index(model: IIER, store: EntitySide, cfg: CandidateConfig, batch: int = 65536):
    """The index over a precomputed :class:`EntitySide` store's key vectors."""
    index = None
    with torch.no_grad():
        for lo in range(0, len(store), batch):
            keys = key_vectors(model, store.rows(lo, min(len(store), lo + batch)))
            keys = np.ascontiguousarray(keys.float().cpu().numpy())
            if index is None:
                index = new_index(keys.shape[1], cfg)
                if not index.is_trained:
                    index.train(keys[: cfg.train_size])
            index.add(keys)
    if index is None:
        raise ValueError("the KB is empty; nothing to index")
    return index
