"""The library's folders follow the DVC chain: no folder imports a later phase's folder, and
no model code imports the demo world (README "Where the code is")."""

from __future__ import annotations

import re
from pathlib import Path

PHASES = ("data", "encoders", "vpwiki", "detective", "iier", "report")
VPMEL = Path(__file__).resolve().parents[1] / "vpmel"
IMPORT = re.compile(r"^\s*(?:from|import) vpmel\.(\w+)", re.M)


def test_no_folder_imports_a_later_phase_or_the_demo_world() -> None:
    bad = []
    for phase in PHASES:
        for path in sorted((VPMEL / phase).rglob("*.py")):
            for other in IMPORT.findall(path.read_text()):
                later = other in PHASES and PHASES.index(other) > PHASES.index(phase)
                if later or other == "world":
                    bad.append(f"{path.relative_to(VPMEL)} imports vpmel.{other}")
    assert bad == []


def test_every_phase_folder_is_a_package() -> None:
    assert all((VPMEL / phase / "__init__.py").is_file() for phase in PHASES)
