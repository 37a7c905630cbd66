"""The "name in caption" / "name not in caption" subsets (the paper's Table 3 point)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from vpmel.data.subsets import is_named, name_in_text, named_mentions, split_metrics, subset_metrics
from vpmel.metrics import ranking_metrics


@pytest.mark.parametrize(
    ("sentence", "name", "expected"),
    [
        ("A photo of the flag of Brazil.", "Brazil", True),
        ("a photo of the flag of brazil", "BRAZIL", True),  # any case
        ("Somebody left a pot on the shelf.", "honey pot", False),  # only part of the name
        ("Something near the door.", "ear", False),  # word boundaries
        ("An ear, drawn.", "ear", True),  # punctuation is a boundary
        ("the earring", "ear", False),
        ("a grinning  cat\twith smiling eyes", "grinning cat with smiling eyes", True),
        ("A (blood type) button.", "(blood type)", True),  # non-word edges
        ("anything at all", "", False),  # a blank name never occurs
        ("anything at all", "   ", False),
        ("the C++ logo", "C++", True),
    ],
)
def test_name_in_text(sentence: str, name: str, expected: bool) -> None:
    assert name_in_text(sentence, name) is expected


def test_rule_mention_words_count_as_an_alias_when_located() -> None:
    # the demo world calls "grinning cat" by its short alias "cat"; no KB column holds it
    sentence = "There is a cat somewhere in this picture."
    assert is_named(sentence, ["grinning cat"], "cat", 11, 14)
    assert is_named(sentence, ["grinning cat"], "Cat", 11, 14)  # any case
    # without a span (the import found the words nowhere) the words add nothing
    assert not is_named(sentence, ["grinning cat"], "cat", None, None)
    assert not is_named(sentence, ["grinning cat"], "cat", pd.NA, pd.NA)
    assert not is_named(sentence, ["grinning cat"], "cat", float("nan"), float("nan"))
    # a span that does not hold the words, or lies outside the sentence, adds nothing
    assert not is_named(sentence, ["grinning cat"], "cat", 0, 3)
    assert not is_named(sentence, ["grinning cat"], "cat", 40, 43)


def test_rule_blank_mention_words_leave_the_name_test() -> None:
    # released VPWiki: mention words blank by design; only the gold name can name it
    assert is_named("A puzzle piece on a table.", ["puzzle piece"], " ", None, None)
    assert is_named("A puzzle piece on a table.", ["puzzle piece"], "", None, None)
    assert is_named("A puzzle piece on a table.", ["puzzle piece"])
    assert not is_named("A piece on a table.", ["puzzle piece"], "", 2, 7)
    assert not is_named("A piece on a table.", ["puzzle piece"], None, None, None)


def test_rule_gold_name_or_any_alias_in_the_sentence() -> None:
    # the gold name counts even where the mention words say something else
    assert is_named("Barack Obama and a dog.", ["Barack Obama"], "dog", 19, 22)
    assert is_named("Obama speaks.", ["Barack Obama", "Obama"])  # a KB alias
    assert not is_named("Obamacare passes.", ["Barack Obama", "Obama"])
    assert not is_named("A crowd.", [])  # a gold QID missing from the KB has no name


def test_named_mentions_reads_a_mentions_table() -> None:
    kb = pd.DataFrame({"qid": ["Q1", "Q2", "Q3"], "name": ["Brazil", "grinning cat", "ear"]})
    mentions = pd.DataFrame(
        {
            "sentence": ["The flag of Brazil.", "A cat, alone.", "A cat, alone.", "Near you.",
                         "An ear."],
            "mention": ["Brazil", "cat", "grinning cat", "ear", ""],
            "span_start": pd.array([12, 2, None, None, None], dtype="Int32"),
            "span_end": pd.array([18, 5, None, None, None], dtype="Int32"),
            "qid": ["Q1", "Q2", "Q2", "Q3", "Q3"],
        }
    )  # fmt: skip
    assert named_mentions(mentions, kb).tolist() == [True, True, False, False, True]
    # a table without mention words or spans (e.g. hand-made): the name test alone
    bare = mentions[["sentence", "qid"]].assign(qid=["Q1", "Q2", "Q2", "Q3", "Q4"])
    assert named_mentions(bare, kb).tolist() == [True, False, False, False, False]


def test_subset_metrics_are_ranking_metrics_of_each_subset() -> None:
    ranks = np.array([1, 3, 2, 50, 1, 7, 21])
    named = np.array([True, False, True, False, False, True, True])
    out = subset_metrics(ranks, named, "test")
    assert list(out) == ["test_named", "test_unnamed"]
    assert out["test_named"] == ranking_metrics(ranks[named])
    assert out["test_unnamed"] == ranking_metrics(ranks[~named])
    assert out["test_named"]["n"] + out["test_unnamed"]["n"] == len(ranks)
    with pytest.raises(ValueError, match="shape"):
        subset_metrics(ranks, named[:3], "test")


def test_an_empty_subset_has_n_zero_and_null_metrics() -> None:
    out = subset_metrics([1, 2, 3], [True, True, True], "dev")
    assert out["dev_unnamed"]["n"] == 0
    assert all(v is None for k, v in out["dev_unnamed"].items() if k != "n")
    json.loads(json.dumps(out), parse_constant=pytest.fail)  # strict JSON: no NaN


def test_split_metrics_keeps_the_split_keys_and_adds_the_subsets() -> None:
    ranks = np.array([1, 4, 2, 9, 1, 30])
    splits = np.array(["dev", "test", "test", "dev", "test", "test"])
    named = np.array([True, True, False, False, True, False])
    out = split_metrics(ranks, splits, ("dev", "test"), named)
    assert list(out) == ["dev", "test", "dev_named", "dev_unnamed", "test_named", "test_unnamed"]
    for split in ("dev", "test"):
        in_split = splits == split
        assert out[split] == ranking_metrics(ranks[in_split])
        assert out[f"{split}_named"] == ranking_metrics(ranks[in_split & named])
        assert out[f"{split}_unnamed"] == ranking_metrics(ranks[in_split & ~named])
        assert out[f"{split}_named"]["n"] + out[f"{split}_unnamed"]["n"] == out[split]["n"]
