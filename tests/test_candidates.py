"""Two-stage retrieval: the candidate stage's linear part, on-demand entity side, K = N equals
exact ranking, recall@K, bad params."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_iier import tiny_config, tiny_encoder
from test_retrieval import random_side

from vpmel.iier.candidates import (
    CandidateConfig,
    OnDemand,
    Stored,
    TwoStageRanker,
    candidate_config,
    global_features,
    key_vectors,
    new_index,
    query_vectors,
    recall_at,
    store_index,
    two_stage_ranker,
)
from vpmel.iier.data import entity_batches
from vpmel.iier.model import IIER
from vpmel.iier.retrieval import RankConfig, build_entity_store, kb_ranker, rank_rows

pytestmark = pytest.mark.usefixtures("one_thread")

N_ENTITIES, N_MENTIONS = 45, 11


def make_world(root, combination: str = "scaled"):
    torch.manual_seed(0)
    model = IIER(tiny_encoder(root / "tok"), tiny_config(combination=combination)).eval()
    if combination == "scaled":
        with torch.no_grad():  # every unit in play, as after training (see test_retrieval)
            model.unit_weight.copy_(torch.tensor([0.5, 0.8, 1.1, 0.3, 0.7]))
    entities = random_side(model, N_ENTITIES, 1, root)
    mentions = random_side(model, N_MENTIONS, 2, root)
    gold = torch.tensor(np.random.default_rng(3).integers(0, N_ENTITIES, N_MENTIONS))
    return model, entities, mentions, gold


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    return make_world(tmp_path_factory.mktemp("cand"))


@pytest.mark.parametrize("combination", ["scaled", "paper"])
def test_linear_part_is_the_score_without_g2l_and_s_v(tmp_path, combination: str) -> None:
    model, entities, mentions, _ = make_world(tmp_path, combination)
    with torch.no_grad():
        e = model.entity_side(model.encode(entities.inputs(range(N_ENTITIES))))
        m = model.mention_side(model.encode(mentions.inputs(range(N_MENTIONS))))
        scores = model.score(m, e)
        linear = query_vectors(model, m) @ key_vectors(model, e).T
        g2g = m.t_global @ e.t_global.T
        if combination == "scaled":  # S - linear = τ_O (w_T G2L + w_V S_V)
            tau = model.log_temperature.exp()
            w_t, w_v = model.unit_weight[:2]
            g2l = 2 * scores.s_t / tau[2] - g2g
            rest = tau[0] * (w_t * g2l + w_v * scores.s_v / tau[1])
        else:  # S - linear = S_V / 3 + G2L / 6
            rest = scores.s_v / 3 + (scores.s_t - g2g / 2) / 3
    torch.testing.assert_close(scores.s - linear, rest, rtol=1e-4, atol=1e-4)


def test_global_features_give_the_entity_sides_key_vectors(world) -> None:
    model, entities, _, _ = world
    with torch.no_grad():
        batch = entities.inputs(range(N_ENTITIES))
        want = key_vectors(model, model.entity_side(model.encode(batch)))
        got = key_vectors(model, global_features(model, batch))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_on_demand_entity_side_equals_the_precomputed_store(world) -> None:
    model, entities, _, _ = world
    width = entities.texts.width
    store = build_entity_store(model, entity_batches(entities, 0, N_ENTITIES, 8), N_ENTITIES, width)
    rows = [44, 3, 17, 3, 0]
    for source in (OnDemand(entities.inputs, width, batch=2), Stored(store)):
        side = source.side(model, rows)
        real = (store.query_weight[rows] > 0).unsqueeze(-1)  # padded query rows weigh 0
        for name, tensor in vars(side).items():
            want = getattr(store, name)[rows]
            if name == "queries":  # ... and hold whatever the batch's padding gave
                tensor, want = tensor * real, want * real
            torch.testing.assert_close(tensor, want, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("index", ["Flat", "SQfp16"])
def test_two_stage_with_k_the_kb_size_equals_exact_ranking(world, index: str) -> None:
    model, entities, mentions, gold = world
    cfg = RankConfig(mention_batch=4, entity_batch=8, k=20)
    rows = list(range(N_MENTIONS))
    exact = rank_rows(kb_ranker(model, entities, cfg), mentions, rows, gold, cfg)
    cand = CandidateConfig(k=N_ENTITIES, index=index, batch=8)
    ranker = two_stage_ranker(
        model, entities.inputs, N_ENTITIES, entities.texts.width, cand, k=cfg.k
    )
    two = rank_rows(ranker, mentions, rows, gold, cfg)
    np.testing.assert_array_equal(two.ranks, exact.ranks)
    np.testing.assert_array_equal(two.top_rows, exact.top_rows)
    np.testing.assert_allclose(two.top_scores, exact.top_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(two.gold_scores, exact.gold_scores, rtol=1e-5, atol=1e-5)
    assert two.recalled.all()
    assert sorted(two.candidates[0].tolist()) == list(range(N_ENTITIES))
    assert ranker.times.total_s > 0


def test_candidates_are_the_best_linear_parts_and_misses_rank_last(world) -> None:
    model, entities, mentions, gold = world
    width = entities.texts.width
    store = build_entity_store(model, entity_batches(entities, 0, N_ENTITIES, 8), N_ENTITIES, width)
    k = 5
    ranker = TwoStageRanker(
        model, store_index(model, store, CandidateConfig()), Stored(store), N_ENTITIES, k
    )
    cfg = RankConfig(mention_batch=3, k=20)
    got = rank_rows(ranker, mentions, range(N_MENTIONS), gold, cfg)
    with torch.no_grad():
        m = model.mention_side(model.encode(mentions.inputs(range(N_MENTIONS))))
        linear = query_vectors(model, m) @ key_vectors(model, store).T
    want = torch.argsort(linear, 1, descending=True)[:, :k].numpy()
    np.testing.assert_array_equal(got.candidates, want)
    recalled = (want == gold.numpy()[:, None]).any(1)
    np.testing.assert_array_equal(got.recalled, recalled)
    assert 0 < recalled.sum() < N_MENTIONS  # both cases occur
    assert (got.ranks[~recalled] == N_ENTITIES).all()
    assert np.isnan(got.gold_scores[~recalled]).all()
    assert (got.ranks[recalled] <= k).all()
    assert got.top_rows.shape == (N_MENTIONS, k)
    assert recall_at(got.candidates, gold.numpy(), [k])[f"R@{k}"] == pytest.approx(
        100 * recalled.mean(), abs=1e-3
    )
    # entity sides held for a few mentions at a time (bounded memory) change nothing
    held = TwoStageRanker(model, ranker.index, Stored(store), N_ENTITIES, k, max_entities=7)
    again = rank_rows(held, mentions, range(N_MENTIONS), gold, cfg)
    np.testing.assert_array_equal(again.ranks, got.ranks)
    np.testing.assert_array_equal(again.top_rows, got.top_rows)
    # a smaller K read off the larger run equals a run at that K
    small = TwoStageRanker(
        model, store_index(model, store, CandidateConfig()), Stored(store), N_ENTITIES, 2
    )
    want = rank_rows(small, mentions, range(N_MENTIONS), gold, cfg)
    ranks, hit = got.prefix(gold.numpy(), 2, N_ENTITIES)
    np.testing.assert_array_equal(ranks, want.ranks)
    np.testing.assert_array_equal(hit, want.recalled)


def test_recall_at_k_counts_the_gold_among_the_first_k() -> None:
    candidates = np.array([[4, 2, 9], [1, 0, 3], [7, 8, 5], [2, 2, 2]])
    gold = np.array([2, 3, 6, 2])
    assert recall_at(candidates, gold, [1, 2, 3]) == {"R@1": 25.0, "R@2": 50.0, "R@3": 75.0}
    with pytest.raises(ValueError, match="do not match"):
        recall_at(candidates, gold[:2], [1])


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("fast", "must be null \\(exact ranking\\) or a mapping"),
        (100, "must be null \\(exact ranking\\) or a mapping"),
        ({"kk": 3}, "unknown evaluate.candidates params \\['kk'\\]"),
        ({"k": 0}, "evaluate.candidates.k must be a whole number >= 1"),
        ({"k": 2.5}, "evaluate.candidates.k must be a whole number >= 1"),
        ({"nprobe": True}, "evaluate.candidates.nprobe must be a whole number"),
        ({"index": ""}, "index must be a FAISS index_factory string"),
    ],
)
def test_bad_params_give_one_clear_line(section, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        candidate_config(section)
    assert "\n" not in str(info.value)


def test_an_index_faiss_cannot_build_is_one_clear_line() -> None:
    assert candidate_config(None) is None
    with pytest.raises(ValueError, match="candidates.index 'Nonsense12': FAISS cannot") as info:
        new_index(16, CandidateConfig(index="Nonsense12"))
    assert "\n" not in str(info.value)


def test_evaluate_params_default_to_exact_ranking() -> None:
    from stages.evaluate import eval_config
    from vpmel.params import load_params

    assert eval_config(load_params("evaluate", "params.yaml")).candidates is None
    assert eval_config({}).candidates is None
    cfg = eval_config({"candidates": {"k": 7, "index": "SQfp16"}}).candidates
    assert cfg == CandidateConfig(k=7, index="SQfp16")
    with pytest.raises(ValueError, match="evaluate.candidates.k must be"):
        eval_config({"candidates": {"k": -1}})
