"""Zero-shot baselines and report pieces against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vpmel.baselines import clip_zero_shot_scores, evaluate_scores, mention_texts
from vpmel.report import markdown_table, metrics_table, pick_cases


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
                          ("dev", "test"))  # fmt: skip
    assert out["dev"]["n"] == 2 and out["dev"]["H@1"] == 50.0  # the tie counts against
    assert out["dev"]["MR"] == 1.5 and out["test"]["MR"] == 3.0


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
