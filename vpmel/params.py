"""Reading one section of ``params.yaml`` — the only configuration a stage sees.

The top-level ``profile`` picks a scale: ``demo`` (the sections as written) or a block of
the top-level ``profiles`` (``paper``: everything Appendix A.1 states), whose sections are
applied over the written ones key by key before any stage sees them. A profile may set only
the sections in :data:`PROFILE_SECTIONS`; every stage that reads one declares ``profile``
and ``profiles`` in dvc.yaml.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")
DEMO_PROFILE = "demo"
PAPER_PROFILE = "paper"
#: what a scale profile may set: IIER's loss weight, the towers, IIER's training
PROFILE_SECTIONS = ("lambda", "encoders", "train")


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
    dropped): each section of ``profiles[profile]`` updates that section key by key (a
    scalar such as ``lambda`` is replaced). Unknown profiles or sections are one clear error."""
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
    for key, value in block.items():
        if isinstance(value, dict):
            base = params.get(key)
            params[key] = (dict(base) if isinstance(base, dict) else {}) | value
        else:
            params[key] = value
    return params
