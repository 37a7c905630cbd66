"""vpmel.params: reading a params section into its dataclass, and merging profiles."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vpmel.params import (
    ABLATION_TABLES,
    deep_merge,
    from_params,
    load_params,
    read_ablations,
    reject_unknown,
)


@dataclass(frozen=True)
class Inner:
    sizes: tuple[int, ...] = (1, 2)
    name: str = "a"


@dataclass(frozen=True)
class Outer:
    rate: float = 0.5
    layers: tuple[int, ...] | None = None
    names: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_from_params_builds_nested_dataclasses_with_tuples() -> None:
    cfg = from_params(Outer, {"layers": [3, 4], "names": ["x"], "inner": {"sizes": [5]}}, "s")
    assert cfg == Outer(0.5, (3, 4), ["x"], Inner((5,), "a"))  # a list field stays a list
    assert from_params(Outer, None, "s") == Outer()
    assert from_params(Outer, {"inner": Inner(name="b")}, "s").inner.name == "b"


def test_unknown_keys_name_the_section_and_the_known_keys() -> None:
    with pytest.raises(ValueError, match=r"^unknown s params \['rte'\]; known: \['inner', "):
        from_params(Outer, {"rte": 1}, "s")
    with pytest.raises(ValueError, match=r"^unknown s.inner params \['size'\]; known: "):
        from_params(Outer, {"inner": {"size": [1]}}, "s")
    with pytest.raises(ValueError, match=r"^s must be a mapping of params"):
        from_params(Outer, [1], "s")
    with pytest.raises(ValueError, match=r"^unknown baselines params \['x'\]; known: \['a'\]"):
        reject_unknown({"x": 1, "a": 2}, {"a"}, "baselines")


def test_deep_merge_changes_only_the_keys_given() -> None:
    base = {"a": 1, "m": {"x": 1, "y": {"z": 2}}, "n": None}
    over = {"m": {"y": {"z": 3}}, "n": {"k": 1}, "a": [1]}
    assert deep_merge(base, over) == {"a": [1], "m": {"x": 1, "y": {"z": 3}}, "n": {"k": 1}}
    assert base == {"a": 1, "m": {"x": 1, "y": {"z": 2}}, "n": None}  # untouched


def test_the_ablation_registry_is_complete_and_checked() -> None:
    """params.yaml's `ablations`: every entry has every key (dvc.yaml's foreach reads
    ${item.answers}), in a table the report shows."""
    registry = load_params("ablations", Path(__file__).resolve().parents[1] / "params.yaml")
    entries = read_ablations(registry)
    assert len(entries) == 10 and {a.table for a in entries.values()} == set(ABLATION_TABLES)
    assert entries["iier_ddagger"].answers == "data/answers_untuned/answers.parquet"
    assert entries["layers_12"].train == {"model": {"cls_layers": [12]}}
    with pytest.raises(ValueError, match=r"^ablations.x lacks \['answers'\]"):
        read_ablations({"x": {"table": "loss", "label": "x", "train": {}}})
    with pytest.raises(ValueError, match="ablation table 'tabel5' is not one of"):
        read_ablations({"x": {"table": "tabel5", "label": "x", "answers": "a", "train": {}}})
