"""Zero-shot baselines and report pieces against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vpmel.prompts import PromptStyle, draw_prompt
from vpmel.report.baselines import (
    box_following,
    clip_zero_shot_scores,
    evaluate_scores,
    load_images,
    mention_texts,
    other_object,
)
from vpmel.report.render import markdown_table, metrics_table, pick_cases, subset_table


class FakeEncoder:
    """Image embedding = its normalised mean colour; text embedding = a named colour."""

    projection_dim = 3
    COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    def encode_images(self, images, batch=256):
        x = torch.tensor([np.asarray(im, dtype=np.float32).mean((0, 1)) for im in images])
        return torch.nn.functional.normalize(x, dim=1)

    def encode_texts(self, texts):
        return torch.tensor([self.COLOURS[t] for t in texts])


def test_clip_zero_shot_averages_image_and_name_and_falls_back_to_the_name() -> None:
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    scores = clip_zero_shot_scores(FakeEncoder(), [red], [red, None, blue], ["red", "red", "red"])
    torch.testing.assert_close(scores, torch.tensor([[1.0, 1.0, 0.5]]))


def test_ranks_are_pessimistic_and_per_split() -> None:
    scores = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.8, 0.3], [0.5, 0.4, 0.6]])
    out = evaluate_scores(scores, np.array([0, 1, 1]), np.array(["dev", "dev", "test"]),
                          ("dev", "test"), np.array([True, False, False]))  # fmt: skip
    assert out["dev"]["n"] == 2 and out["dev"]["H@1"] == 50.0  # the tie counts against
    assert out["dev"]["MR"] == 1.5 and out["test"]["MR"] == 3.0
    # each split also on the mentions whose gold name is / is not in the caption
    assert out["dev_named"]["MR"] == 2.0 and out["dev_unnamed"]["MR"] == 1.0
    assert out["dev_named"]["n"] + out["dev_unnamed"]["n"] == out["dev"]["n"]
    assert out["test_unnamed"] == out["test"] and out["test_named"]["n"] == 0


def test_mention_text_puts_the_answer_first() -> None:
    m = pd.DataFrame({"id": ["a", "b"], "sentence": ["x y", "z"]})
    assert mention_texts(m, {"a": "flag Country"}) == ["flag Country x y", "z"]


def test_report_tables_say_what_was_not_run() -> None:
    table = metrics_table({"A": None, "B": {c: 1.0 for c in ("H@1", "H@3", "H@5", "H@10",
                                                               "H@20", "MRR")}})  # fmt: skip
    assert "| A | not run |" in table and "| B | 1.00 |" in table
    assert markdown_table(["a"], [[1]]).splitlines()[1] == "|---|"
    top = pd.DataFrame({"rank": [1, 1, 5, 7, 2]})
    cases = pick_cases(top, 1, seed=0)
    assert sorted(cases["rank"] == 1) == [False, True]


def test_subset_table_rows_for_every_method() -> None:
    full = {"H@1": 50.0, "H@5": 75.0, "MRR": 60.0, "n": 4}
    empty = {"H@1": None, "H@5": None, "MRR": None, "n": 0}
    table = subset_table({
        "A": None,
        "B (before the subsets)": {"test": full},
        "C": {"test": full, "test_named": full, "test_unnamed": empty},
    })  # fmt: skip
    lines = table.splitlines()
    assert lines[0] == (
        "| method | name in caption: H@1 | name in caption: H@5 | name in caption: MRR "
        "| name in caption: n | name not in caption: H@1 | name not in caption: H@5 "
        "| name not in caption: MRR | name not in caption: n |"
    )
    assert lines[2] == "| A |" + " not run |" * 8
    assert lines[3] == "| B (before the subsets) |" + " n/a |" * 8
    assert lines[4] == "| C | 50.00 | 75.00 | 60.00 | 4 | – | – | – | 0 |"


class BoxReader(FakeEncoder):
    """Like FakeEncoder, but an image with a red prompt is embedded by the mean colour
    inside the prompt: an encoder that reads the box perfectly."""

    def encode_images(self, images, batch=256):
        out = []
        for im in images:
            a = np.asarray(im, dtype=np.float32)
            red = (a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)
            if red.any():
                ys, xs = np.nonzero(red)
                a = a[ys.min() + 2 : ys.max() - 1, xs.min() + 2 : xs.max() - 1]
            out.append(a.reshape(-1, 3).mean(0))
        return torch.nn.functional.normalize(torch.tensor(np.array(out)), dim=1)


def test_box_following_moves_the_prompt_to_the_other_object(tmp_path) -> None:
    scene = Image.new("RGB", (48, 24), (255, 255, 255))
    scene.paste((0, 200, 0), (2, 2, 22, 22))  # the gold object: green, left
    scene.paste((0, 0, 200), (26, 2, 46, 22))  # another object: blue, right
    (tmp_path / "images").mkdir()
    scene.save(tmp_path / "images/s.png")
    mentions = pd.DataFrame({
        "source_image": ["images/s.png", "images/unknown.png"], "qid": ["G", "G"],
        "box": [None, [2, 2, 22, 22]], "auto_box": [[1, 1, 23, 23]] * 2, "split": ["test"] * 2,
    })  # fmt: skip
    objects = {"images/s.png": [{"qid": "G", "box": [2, 2, 22, 22]},
                                {"qid": "B", "box": [26, 2, 46, 22]}]}  # fmt: skip
    entity_images = [Image.new("RGB", (4, 4), (0, 200, 0)), Image.new("RGB", (4, 4), (0, 0, 200))]
    sources = load_images(tmp_path, ["images/s.png", "images/s.png"])

    def following(encoder):  # VPWiki's images carry the prompt at auto_box
        prompted = [draw_prompt(im, box, PromptStyle())
                    for im, box in zip(sources, mentions["auto_box"], strict=True)]  # fmt: skip
        top = clip_zero_shot_scores(encoder, prompted, entity_images, ["green", "blue"])
        return box_following(encoder, mentions, sources, top.argmax(1), objects, entity_images,
                             ["green", "blue"], {"G": 0, "B": 1}, PromptStyle())  # fmt: skip

    out = following(BoxReader())
    assert out == {"test": {"n": 1, "changes": 100.0, "follows": 100.0,
                            "n_two": 1, "changes_two": 100.0, "follows_two": 100.0}}  # fmt: skip
    # an encoder blind to the box answers the same wherever the box is
    blind = following(FakeEncoder())
    assert blind["test"]["changes"] == 0.0


def test_other_object_skips_the_gold_entity_and_its_place() -> None:
    objects = [{"qid": "G", "box": [0, 0, 10, 10]}, {"qid": "X", "box": [1, 1, 10, 10]},
               {"qid": "Y", "box": [20, 20, 30, 30]}]  # fmt: skip
    assert other_object("G", [0, 0, 10, 10], objects)["qid"] == "Y"
    assert other_object("G", [0, 0, 10, 10], objects[:2]) is None
