"""The report's pair table: each question as a − b with its CI, per mention subset."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vpmel.report.render import pair_table
from vpmel.stats import mcnemar_exact, paired_bootstrap


def _ranks(values: list[list[int]], ids: list[str]) -> pd.DataFrame:
    """[mention × seed] gold ranks."""
    return pd.DataFrame(np.array(values).T, index=pd.Index(ids, name="id"))


def test_pair_table_gives_each_pair_per_subset_and_skips_missing_methods() -> None:
    ids = [f"m{i}" for i in range(8)]
    a = _ranks([[1, 1, 1, 1, 3, 2, 1, 9], [1, 1, 1, 2, 3, 2, 1, 9]], ids)
    b = _ranks([[1, 5, 7, 2, 3, 25, 4, 9], [1, 5, 7, 2, 3, 25, 4, 9]], ids)
    subsets = {"all": pd.Index(ids), "name not in caption": pd.Index(ids[4:] + ["absent"])}
    table = pair_table(
        {"A": a, "B": b}, [("does A help", "A", "B"), ("not run", "A", "C")], subsets
    )
    lines = table.splitlines()
    assert len(lines) == 2 + 2  # header, rule, one row per subset; the missing pair left out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in rows] == ["does A help", "does A help"]
    assert [r[2] for r in rows] == ["all", "name not in caption"]
    assert [int(r[3]) for r in rows] == [8, 4]  # only mentions both methods ranked
    part = ids[4:]
    expected = paired_bootstrap(a.loc[part].to_numpy().T, b.loc[part].to_numpy().T, "MRR")
    assert rows[1][6] == str(expected) and expected.delta > 0
    p = mcnemar_exact(a.loc[part].to_numpy().T, b.loc[part].to_numpy().T)[2]
    assert rows[1][7] == f"{p:.3g}"
    identical = pair_table({"A": a}, [("self", "A", "A")], {"all": pd.Index(ids)})
    assert "+0.0 [+0.0, +0.0]" in identical and "no difference" in identical


def test_gap_lines_say_whether_the_train_answers_differ_from_devs() -> None:
    from vpmel.report.document import gap_lines

    gap = {
        "all": {"delta": -5.2, "ci": [-12.1, 2.0], "n_train": 1313, "n_dev": 163},
        "named": {"delta": -9.0, "ci": [-17.0, -1.0], "n_train": 850, "n_dev": 110},
    }
    line = gap_lines(gap)[0]
    assert "all mentions -5.2 [-12.1, +2.0] (1313 vs 163: no difference)" in line
    assert "caption names it -9.0 [-17.0, -1.0] (850 vs 110: a difference)" in line
    assert gap_lines(None) == [] and gap_lines({}) == []
