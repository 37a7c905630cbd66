"""Reading one section of ``params.yaml`` — the only configuration a stage sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")


def load_params(section: str | None = None, path: Path = PARAMS_FILE) -> Any:
    """Return ``params.yaml`` (or one top-level section of it).

    A missing file or section is a clear error, not a KeyError traceback deep inside a stage.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found (run from the repository root)")
    params = yaml.safe_load(path.read_text()) or {}
    if section is None:
        return params
    if section not in params:
        raise KeyError(f"{path}: no section {section!r} (have: {', '.join(params)})")
    return params[section]
