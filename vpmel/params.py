"""Reading one section of ``params.yaml`` — the only configuration a stage sees.

The top-level ``profile`` picks a scale: ``demo`` (the sections as written) or a block of
the top-level ``profiles`` (``paper``: everything Appendix A.1 states), whose sections are
merged into the written ones key by key (nested mappings too, :func:`deep_merge`) before any
stage sees them. A profile may set only the sections in :data:`PROFILE_SECTIONS`; every stage
that reads one declares ``profile`` and ``profiles`` in dvc.yaml. :func:`from_params` turns a
section into its dataclass (the dataclass holds the defaults; unknown keys are an error).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

PARAMS_FILE = Path("params.yaml")
DEMO_PROFILE = "demo"
PAPER_PROFILE = "paper"
#: what a scale profile may set: IIER's loss weight, the towers, IIER's training, the prompt
#: (the demo draws a thicker box than the paper's images need)
PROFILE_SECTIONS = ("lambda", "encoders", "train", "prompt")


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans (only true/false), as DVC reads and
    writes params: `dvc exp run -S` rewrites the file with ruamel, which leaves a value like
    ``no`` (``mixed_precision: no``) unquoted, and YAML 1.1 would read that as False."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_params(
    section: str | None = None, path: Path = PARAMS_FILE, profile: str | None = None
) -> Any:
    """Return ``params.yaml`` (or one top-level section of it) with the scale profile
    applied: the file's ``profile``, or ``profile`` when given.

    A missing file or section is a clear error, not a KeyError traceback deep inside a stage.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found (run from the repository root)")
    params = yaml.load(path.read_text(), Loader=Yaml12Loader) or {}
    if profile is not None:
        params["profile"] = profile
    params = apply_profile(params, str(path))
    if section is None:
        return params
    if section not in params:
        raise KeyError(f"{path}: no section {section!r} (have: {', '.join(params)})")
    return params[section]


def apply_profile(params: dict[str, Any], where: str = "params") -> dict[str, Any]:
    """``params`` with the chosen scale profile applied (``profile`` kept, ``profiles``
    dropped): each section of ``profiles[profile]`` is merged into that section key by key,
    nested mappings too (a scalar such as ``lambda`` is replaced). Unknown profiles or
    sections are one clear error."""
    params = dict(params)
    profiles = params.pop("profiles", None) or {}
    chosen = params.setdefault("profile", DEMO_PROFILE)
    if chosen not in profiles and chosen != DEMO_PROFILE:
        raise ValueError(
            f"{where}: profile {chosen!r} is not in profiles {sorted(profiles)}; "
            f"set profile to one of them (or {DEMO_PROFILE})"
        )
    block = profiles.get(chosen) or {}
    if not isinstance(block, dict):
        raise ValueError(f"{where}: profiles.{chosen} must be a mapping of sections")
    unknown = sorted(set(block) - set(PROFILE_SECTIONS))
    if unknown:
        raise ValueError(
            f"{where}: profiles.{chosen} sets unknown sections {unknown}; a profile may set "
            f"{list(PROFILE_SECTIONS)}"
        )
    return deep_merge(params, block)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over`` key by key, mappings recursively (a profile's
    ``train: {model: {cls_layers: [12]}}`` changes only that key); any other value, and a
    mapping over a non-mapping, replaces. Neither argument is modified."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = deep_merge({}, value) if isinstance(value, dict) else value
    return merged


T = TypeVar("T")


def from_params(cls: type[T], section: dict[str, Any] | None, where: str) -> T:
    """The dataclass ``cls`` from one params section (``where`` names it in errors, e.g.
    ``"train"``): an unknown key is one error line naming the section and the known keys;
    a list for a tuple-typed field becomes a tuple; a mapping for a dataclass-typed field
    builds that dataclass the same way (``where.field``); missing keys take the dataclass's
    defaults, which are the only defaults (a field without one is required)."""
    if section is not None and not isinstance(section, dict):
        raise ValueError(f"{where} must be a mapping of params, not {section!r}")
    section = dict(section or {})
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    reject_unknown(section, {f.name for f in fields}, where)
    missing = sorted(
        f.name
        for f in fields
        if f.name not in section
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{where} lacks {missing} (no default)")
    for key, value in section.items():
        kinds = _alternatives(hints[key])
        nested = [k for k in kinds if dataclasses.is_dataclass(k)]
        if nested and isinstance(value, dict):
            section[key] = from_params(nested[0], value, f"{where}.{key}")
        elif isinstance(value, list) and any(typing.get_origin(k) is tuple for k in kinds):
            section[key] = tuple(value)
    return cls(**section)


def reject_unknown(section: dict[str, Any], known: set[str], where: str) -> None:
    """One error line naming the section ``where``, its unknown keys and the known ones (for
    a section that is not read into a dataclass; :func:`from_params` uses it too)."""
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ValueError(f"unknown {where} params {unknown}; known: {sorted(known)}")


def _alternatives(hint: Any) -> tuple[Any, ...]:
    """The types a hint allows: ``X | None`` -> (X, NoneType); anything else -> (hint,)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


#: the report's tables an ablation can belong to (stages/report.py shows them in this order)
ABLATION_TABLES = ("answers", "layers", "loss", "combination")


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One entry of the top-level ``ablations`` registry: the paper's ablations, each trained
    and evaluated like ``train`` by dvc.yaml's ``ablate`` foreach stage, selected in the train
    stage by ``--profile <name>`` (or ``train.profile``). Every entry has all four keys: DVC's
    foreach does not fill in missing ones."""

    table: str  # the report table (ABLATION_TABLES)
    label: str  # its row in the report
    answers: str  # the Detective-VLM answers it reads
    train: dict[str, Any]  # merged into the train section (train.model key by key)

    def __post_init__(self) -> None:
        if self.table not in ABLATION_TABLES:
            raise ValueError(f"ablation table {self.table!r} is not one of {ABLATION_TABLES}")
        if not isinstance(self.train, dict):
            raise ValueError(f"an ablation's train must be a mapping, not {self.train!r}")


def read_ablations(registry: dict[str, Any] | None) -> dict[str, Ablation]:
    """The ``ablations`` params, name → :class:`Ablation`, in the file's order."""
    return {
        name: from_params(Ablation, entry, f"ablations.{name}")
        for name, entry in (registry or {}).items()
    }
