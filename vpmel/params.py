"""Reading one section of ``params.yaml`` — the only configuration a stage sees."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")


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


def load_params(section: str | None = None, path: Path = PARAMS_FILE) -> Any:
    """Return ``params.yaml`` (or one top-level section of it).

    A missing file or section is a clear error, not a KeyError traceback deep inside a stage.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found (run from the repository root)")
    params = yaml.load(path.read_text(), Loader=Yaml12Loader) or {}
    if section is None:
        return params
    if section not in params:
        raise KeyError(f"{path}: no section {section!r} (have: {', '.join(params)})")
    return params[section]
