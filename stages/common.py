"""Inputs that more than one stage loads the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from vpmel.data.schema import read_mentions
from vpmel.params import load_params
from vpmel.vpwiki.annotate import build_backend
from vpmel.vpwiki.annotation_backend import Backend


def annotation_inputs(
    dataset: Path, encoder_dir: Path, params_file: Path
) -> tuple[dict[str, Any], pd.DataFrame, Backend]:
    """What the `entail` and `ground` stages start from: the whole params file, the imported
    mentions and the annotation backend ``annotate.backend`` names (vpmel.vpwiki.annotate)."""
    params = load_params(None, params_file)
    mentions = read_mentions(dataset)
    return params, mentions, build_backend(params["annotate"], params["encoders"], encoder_dir)
