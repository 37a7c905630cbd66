"""Detective-VLM answers: the resumable cache, generation, metrics and the stage."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from test_detective import TINY
from typer.testing import CliRunner

from stages.answers import app
from vpmel.detective.answers import (
    AnswerCache,
    answer_forms,
    answers_table,
    exact_match,
    fill_cache,
    fingerprint,
    model_answer_fn,
    train_dev_gap,
)
from vpmel.detective.model import (
    DetectiveMeta,
    build_demo_tokenizer,
    build_demo_vlm,
    demo_corpus,
    save_detective,
)
from vpmel.iier.data import answer_strings


def mentions(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"m{i}" for i in range(n)],
            "split": ["train", "dev", "test", "test", "dev"] * (n // 5) + ["train"] * (n % 5),
            "sentence": [f"a trombone number {i}" for i in range(n)],
            "entity_name": ["trombone"] * n,
            "type": ["Works"] * n,
        }
    )


class Failing:
    """An answer function that records its calls and fails once ``fail_after`` are done."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.seen: list[str] = []

    def __call__(self, rows: pd.DataFrame) -> list[str]:
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise RuntimeError("injected failure")
        self.seen.extend(rows["id"])
        return [f"trombone Works ({i})" if i != "m1" else "Germany Country" for i in rows["id"]]


def test_cache_resumes_after_a_crash_without_loss_or_duplicates(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, "model-a")
    first = Failing(fail_after=6)
    with pytest.raises(RuntimeError, match="injected"):
        fill_cache(cache, mentions(), first, chunk_size=3, progress=False)
    assert first.seen == [f"m{i}" for i in range(6)]
    assert sorted(cache.cached_ids()) == sorted(first.seen)  # nothing generated was lost
    before = cache.load().set_index("id")

    second = Failing()
    table, generated = fill_cache(cache, mentions(), second, chunk_size=3, progress=False)
    assert second.seen == [f"m{i}" for i in range(6, 10)]  # cached ids not regenerated
    assert generated == 4
    assert len(table) == 10 and table["id"].is_unique
    assert table.set_index("id").loc[before.index].equals(before)
    again, generated = fill_cache(cache, mentions(), Failing(0), chunk_size=3, progress=False)
    assert generated == 0 and len(again) == 10


def test_compact_merges_parts_and_reading_drops_duplicates(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path, "k")
    fill_cache(cache, mentions(), Failing(), chunk_size=4, progress=False)
    assert len(cache.parts()) == 3
    cache.compact()
    assert len(cache.parts()) == 1 and len(cache.load()) == 10
    # a crash between writing the merged part and deleting the old ones: duplicates
    cache.append(cache.load().head(3))
    assert len(cache.parts()) == 2 and len(cache.load()) == 10
    assert not list(cache.folder.glob(".*.tmp"))


def test_parsed_columns_and_metrics() -> None:
    ms = mentions()
    cache_rows = pd.DataFrame(
        {
            "id": ms["id"],
            "raw": ["x"] * 10,
            "name": ["Trombone", None, "tuba"] + ["trombone "] * 7,
            "type": ["Works", "Works", None] + ["Misc"] * 7,
        }
    )
    table = answers_table(ms, cache_rows)
    assert list(table.columns) == ["id", "split", "raw", "name", "type"]
    scores = exact_match(table, ms)
    # dev: m1 (name None), m4, m6, m9; test: m2 (tuba), m3, m7, m8
    assert scores["dev"] == {
        "n": 4,
        "name_accuracy": 0.75,
        "type_accuracy": 0.25,
        "unparsed_type": 0,
        # m1 has a type but no name: IIER reads its raw text
        "parsed": 0.75,
        "raw_text": 0.25,
        "empty": 0.0,
    }
    assert scores["test"]["name_accuracy"] == 0.75 and scores["test"]["unparsed_type"] == 1
    # the answers IIER trains on against dev's (train: m0, m5 -> 1.0; dev 0.75)
    gap = train_dev_gap(table, ms)
    assert set(gap) == {"all"} and gap["all"]["delta"] == 25.0
    assert gap["all"]["n_train"] == 2 and gap["all"]["n_dev"] == 4
    low, high = gap["all"]["ci"]
    assert low <= 25.0 <= high
    named = pd.Series([True] * 5 + [False] * 5)
    assert gap == {k: v for k, v in train_dev_gap(table, ms, named).items() if k == "all"}
    assert train_dev_gap(table, ms, named)["named"]["n_dev"] == 2
    with pytest.raises(ValueError, match="no answer"):
        answers_table(ms, cache_rows.head(5))


def test_fingerprint_follows_files_and_settings(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"1")
    a = fingerprint([tmp_path / "m"], max_new_tokens=8)
    assert a == fingerprint([tmp_path / "m"], max_new_tokens=8)
    assert a != fingerprint([tmp_path / "m"], max_new_tokens=9)
    (tmp_path / "m" / "w.bin").write_bytes(b"2")
    assert a != fingerprint([tmp_path / "m"], max_new_tokens=8)


# ---------------------------------------------------------------------------- with a model


def tiny_vpwiki(root: Path, n: int = 10) -> pd.DataFrame:
    ms = mentions(n)
    ms["prompted_image"] = [
        f"{s}_img/mention_{i}.png" for i, s in zip(ms["id"], ms["split"], strict=True)
    ]
    for i, rel in enumerate(ms["prompted_image"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (20 * i, 100, 50)).save(root / rel)
    ms.to_parquet(root / "mentions.parquet", index=False)
    return ms


def tiny_model_folder(folder: Path) -> None:
    tok = build_demo_tokenizer(demo_corpus(["trombone", "Germany"], ["a trombone number"]))
    torch.manual_seed(0)
    model, processor = build_demo_vlm(TINY, tok)
    model.save_pretrained(folder / "base")
    processor.save_pretrained(folder / "base")
    torch.manual_seed(1)
    with torch.no_grad():  # "tuned": other weights than the base
        for p in model.model.language_model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    save_detective(folder, model, processor, DetectiveMeta(base="base"))


def test_generation_answers_every_row(tmp_path: Path) -> None:
    ms = tiny_vpwiki(tmp_path / "vpwiki", n=5)
    tiny_model_folder(tmp_path / "model")
    from vpmel.detective.model import load_detective

    model, processor, _ = load_detective(tmp_path / "model")
    answer = model_answer_fn(model, processor, tmp_path / "vpwiki", batch_size=2, max_new_tokens=4)
    raws = answer(ms)
    assert len(raws) == 5 and all(isinstance(r, str) for r in raws)
    assert answer(ms.iloc[[3]]) == raws[3:4]  # batch composition does not change an answer


def test_stage_writes_answers_and_metrics_and_resumes(tmp_path: Path, monkeypatch) -> None:
    ms = tiny_vpwiki(tmp_path / "vpwiki")
    tiny_model_folder(tmp_path / "model")
    params = tmp_path / "params.yaml"
    section = {"untuned": False, "batch_size": 4, "max_new_tokens": 4, "chunk_size": 4}
    params.write_text(yaml.safe_dump({"answers": section}))
    args = [
        "--vpwiki", str(tmp_path / "vpwiki"),
        "--model-dir", str(tmp_path / "model"),
        "--out", str(tmp_path / "answers"),
        "--reports", str(tmp_path / "reports"),
        "--params", str(params),
    ]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "answers" / "answers.parquet")
    assert table["id"].tolist() == ms["id"].tolist()
    report = json.loads((tmp_path / "reports" / "detective.json").read_text())
    assert report["model"] == "tuned" and set(report) >= {"dev", "test"}
    assert report["dev"]["n"] == 4 and report["test"]["n"] == 4
    # times go to their own file, not into the metrics
    timing = json.loads((tmp_path / "reports" / "timings" / "answers.json").read_text())
    assert timing["stage"] == "answers" and timing["wall_s"] >= 0 and timing["generated"] == len(ms)
    assert not [k for k in report if "second" in k or k.endswith("_s")]

    def no_model(*args, **kwargs):
        raise AssertionError("everything is cached: the model must not even be loaded")

    monkeypatch.setattr("stages.answers.load_detective", no_model)
    assert runner.invoke(app, args).exit_code == 0
    assert pd.read_parquet(tmp_path / "answers" / "answers.parquet").equals(table)
    monkeypatch.undo()

    section["untuned"] = True  # IIER‡: the base model, in a cache of its own
    params.write_text(yaml.safe_dump({"answers": section}))
    assert runner.invoke(app, args).exit_code == 0
    assert len(list((tmp_path / "answers" / "cache").iterdir())) == 2
    report = json.loads((tmp_path / "reports" / "detective.json").read_text())
    assert report["model"] == "untuned"
    timing = json.loads((tmp_path / "reports" / "timings" / "answers_untuned.json").read_text())
    assert timing["stage"] == "answers_untuned" and "generate_s" in timing
    untuned = pd.read_parquet(tmp_path / "answers" / "answers.parquet")
    assert not untuned["raw"].equals(table["raw"])


def test_train_rows_take_their_out_of_fold_answer() -> None:
    from vpmel.detective.answers import with_out_of_fold

    table = pd.DataFrame(
        {"id": ["a", "b", "c"], "split": ["train", "train", "test"], "raw": ["x Misc"] * 3}
    ).assign(name="x", type="Misc")
    oof = pd.DataFrame({"id": ["a", "b"], "raw": ["y Person", ""], "name": ["y", None],
                        "type": ["Person", None]})  # fmt: skip
    out = with_out_of_fold(table, oof)
    assert out["name"].isna().tolist() == [False, True, False]  # b's answer was NIL
    assert out["name"][0] == "y" and out["name"][2] == "x" and out["type"][2] == "Misc"
    with pytest.raises(ValueError, match="no out-of-fold answer"):
        with_out_of_fold(table, oof.iloc[:1])


def test_folds_keep_pairs_together_and_are_seeded() -> None:
    from vpmel.detective.cross_fit import fold_of

    pairs = pd.Series(["p1", "p1", "p2", "p3", "p3", "p4", "p5", "p6"])
    fold = fold_of(pairs, 2, seed=0)
    assert fold[0] == fold[1] and fold[3] == fold[4]
    assert sorted(set(fold)) == [0, 1]
    assert (fold == fold_of(pairs, 2, seed=0)).all()


def test_unparsed_answers_reach_iier_as_raw_text_and_are_counted() -> None:
    """IIER‡ measures an untuned VLM's free text: an answer without one of the seven types is
    fed raw (whitespace-normalised), never dropped; only an empty answer gives m_w = ""."""
    table = pd.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "split": ["dev"] * 4,
            "raw": ["Germany  Country", "the red box shows\n a flag.", "  ", "tuba"],
            "name": ["Germany", "the red box shows", None, "tuba"],
            "type": ["Country", None, None, None],
        }
    )
    assert answer_strings(table) == {
        "a": "Germany Country",
        "b": "the red box shows a flag.",
        "d": "tuba",
    }
    assert answer_forms(table) == {"parsed": 0.25, "raw_text": 0.5, "empty": 0.25}
