"""Exact full-KB ranking: chunking, sharding, brute force, ties, metrics."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_iier import tiny_config, tiny_encoder

from vpmel.iier.data import ImageBank, Side, TextBank, entity_batches, index_batches
from vpmel.iier.model import IIER
from vpmel.iier.retrieval import (
    RankConfig,
    Ranker,
    aligned_shard,
    build_entity_store,
    chunk_grid,
    entity_chunk_for,
    kb_ranker,
    ordered_top_k,
    pessimistic_ranks,
    rank_rows,
    shard_range,
)
from vpmel.metrics import ranking_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


WORDS = "red blue cat dog car tree house river moon star apple bread lamp chair boat".split()


def random_side(model: IIER, n: int, seed: int, root: Path) -> Side:
    """n random images (written to disk) and random word texts."""
    from PIL import Image

    g = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        rel = f"img/{seed}_{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / rel)
        paths.append(rel)
    pairs = [
        (" ".join(g.choice(WORDS, g.integers(0, 3))), " ".join(g.choice(WORDS, g.integers(1, 12))))
        for _ in range(n)
    ]
    enc = model.encoder
    return Side(
        ImageBank(root, paths, enc.pixel_values, enc.image_size),
        TextBank.from_pairs(enc.tokenizer, pairs, 40),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ret")
    torch.manual_seed(0)
    model = IIER(tiny_encoder(root / "tok"), tiny_config()).eval()
    with torch.no_grad():
        # every unit in play, as after training: untrained (w = 0), S is the text cosine of a
        # tiny random tower alone, whose near-ties (1e-7 apart) make rank checks meaningless
        model.unit_weight.copy_(torch.tensor([0.5, 0.8, 1.1, 0.3, 0.7]))
    entities = random_side(model, 45, 1, root)
    mentions = random_side(model, 11, 2, root)
    gold = torch.tensor(np.random.default_rng(3).integers(0, 45, 11))
    return model, entities, mentions, gold


def full_scores(model: IIER, entities: Side, mentions: Side) -> torch.Tensor:
    with torch.no_grad():
        e = model.entity_side(model.encode(entities.inputs(range(len(entities.texts)))))
        m = model.mention_side(model.encode(mentions.inputs(range(len(mentions.texts)))))
        return model.score(m, e).s


def test_chunked_equals_unchunked_equals_brute_force(world) -> None:
    model, entities, mentions, gold = world
    rows = list(range(11))
    results = []
    for chunk, mention_batch in [(1000, 64), (7, 4), (1, 3)]:
        store = build_entity_store(model, entity_batches(entities, 0, 45, 8), 45, 40)
        ranker = Ranker(model, store, entity_chunk=chunk, k=20)
        results.append(ranker.rank(index_batches(mentions, rows, gold, mention_batch)))
    for other in results[1:]:
        np.testing.assert_array_equal(other.ranks, results[0].ranks)
        np.testing.assert_array_equal(other.top_rows, results[0].top_rows)
        np.testing.assert_allclose(other.top_scores, results[0].top_scores, rtol=1e-5, atol=1e-6)

    # brute force: every (mention, entity) pair scored on its own
    with torch.no_grad():
        m_sides = [model.mention_side(model.encode(mentions.inputs([b]))) for b in rows]
        e_sides = [model.entity_side(model.encode(entities.inputs([n]))) for n in range(45)]
        brute = torch.tensor([[model.score(m, e).s.item() for e in e_sides] for m in m_sides])
        for b, n in [(0, 0), (3, 17), (10, 44)]:  # ... which is what the model's forward gives
            forward = model(mentions.inputs([b]), entities.inputs([n])).s.item()
            assert forward == pytest.approx(brute[b, n].item(), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(
        results[0].top_scores,
        torch.sort(brute, 1, descending=True)[0][:, :20],
        rtol=1e-4,
        atol=1e-5,
    )
    brute_ranks = (brute >= brute[torch.arange(11), gold].unsqueeze(1)).sum(1)
    np.testing.assert_array_equal(results[0].ranks, brute_ranks.numpy())
    np.testing.assert_array_equal(
        results[0].top_rows, torch.argsort(brute, 1, descending=True)[:, :20]
    )


def test_store_padding_and_batching_do_not_change_scores(world) -> None:
    model, entities, mentions, _ = world
    want = full_scores(model, entities, mentions)
    with torch.no_grad():
        m = model.mention_side(model.encode(mentions.inputs(range(11))))
        for batch, width in [(5, 40), (45, entities.texts.width), (1, 64)]:
            store = build_entity_store(model, entity_batches(entities, 0, 45, batch), 45, width)
            torch.testing.assert_close(model.score(m, store).s, want, rtol=1e-5, atol=1e-5)


class ThreadGroup:
    """An in-process stand-in for a process group: threads meet at a barrier."""

    def __init__(self, n: int) -> None:
        self.n, self.barrier, self.slots = n, threading.Barrier(n), [None] * n

    def member(self, index: int):
        group = self

        class Member:
            num_processes, process_index = group.n, index

            def _exchange(self, tensor):
                group.barrier.wait()
                group.slots[index] = tensor.clone()
                group.barrier.wait()
                out = list(group.slots)
                group.barrier.wait()
                return out

            def reduce(self, tensor, reduction="sum"):
                return torch.stack(self._exchange(tensor)).sum(0)

            def gather(self, tensor):
                return torch.cat(self._exchange(tensor))

        return Member()


@pytest.mark.parametrize("processes", [2, 3])
def test_sharded_ranking_equals_single_process(world, processes: int) -> None:
    model, entities, mentions, gold = world
    cfg = RankConfig(mention_batch=4, entity_batch=4, block_mb=0.3, k=10)
    single = rank_rows(kb_ranker(model, entities, cfg), mentions, range(11), gold, cfg)
    group = ThreadGroup(processes)
    results: list = [None] * processes
    errors: list = []

    def run(i: int) -> None:
        try:
            torch.set_num_threads(1)
            ranker = kb_ranker(model, entities, cfg, group.member(i))
            assert ranker.offset == aligned_shard(45, processes, i, ranker.entity_chunk)[0]
            assert len(ranker.store) < 45  # really sharded
            results[i] = rank_rows(ranker, mentions, range(11), gold, cfg)
        except Exception as err:  # noqa: BLE001 - re-raised in the main thread
            errors.append(err)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        np.testing.assert_array_equal(r.ranks, single.ranks)
        np.testing.assert_array_equal(r.top_rows, single.top_rows)
        np.testing.assert_array_equal(r.top_scores, single.top_scores)


def test_ties_are_pessimistic_and_top_k_orders_ties_by_row() -> None:
    scores = torch.tensor([[0.5, 2.0, 2.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    gold_scores = scores[[0, 1], [1, 3]]
    # row 0: three entities (gold included) score >= 2.0; row 1: a constant scorer
    assert pessimistic_ranks(scores, gold_scores).tolist() == [3, 5]
    rows = torch.arange(5).expand(2, 5)
    top_s, top_r = ordered_top_k(scores, rows, 4)
    assert top_r.tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    assert top_s[0].tolist() == [2.0, 2.0, 2.0, 1.0]
    shuffled = torch.tensor([[4, 2, 1, 0, 3]] * 2)
    s2, r2 = ordered_top_k(scores.gather(1, shuffled), shuffled, 4)
    assert torch.equal(r2, top_r) and torch.equal(s2, top_s)


def test_nan_scores_are_an_error(world) -> None:
    model, entities, mentions, gold = world
    store = build_entity_store(model, entity_batches(entities, 0, 45, 45), 45, 40)
    store.h[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Ranker(model, store).rank(index_batches(mentions, [0], gold, 1))


def test_metrics() -> None:
    m = ranking_metrics([1, 2, 4, 30])
    assert m["H@1"] == 25.0 and m["H@3"] == 50.0 and m["H@5"] == 75.0 and m["H@20"] == 75.0
    assert m["MRR"] == pytest.approx(100 * (1 + 0.5 + 0.25 + 1 / 30) / 4, abs=1e-4)
    assert m["MR"] == pytest.approx(37 / 4)
    assert m["n"] == 4
    with pytest.raises(ValueError):
        ranking_metrics([0, 1])


def test_shards_and_chunk_sizes() -> None:
    spans = [shard_range(10, 3, i) for i in range(3)]
    assert spans == [(0, 4), (4, 7), (7, 10)]
    assert [aligned_shard(45, 3, i, 8) for i in range(3)] == [(0, 16), (16, 32), (32, 45)]
    assert entity_chunk_for(256, 64, 40, 512, 96) > entity_chunk_for(256, 128, 40, 512, 96) >= 1
    assert entity_chunk_for(0.0001, 64, 40, 512, 96) == 1
    assert chunk_grid(300, 64) == (256, 256) and chunk_grid(20, 64) == (16, 64)
