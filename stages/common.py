"""Inputs that more than one stage loads the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from vpmel.data.schema import read_mentions
from vpmel.iier.features import encoder_id
from vpmel.params import load_params
from vpmel.vpwiki.annotate import ClipBackend, build_backend
from vpmel.vpwiki.annotation_backend import Backend
from vpmel.vpwiki.clip_annotator import region_key


def annotation_inputs(
    dataset: Path, encoder_dir: Path, params_file: Path
) -> tuple[dict[str, Any], pd.DataFrame, Backend]:
    """What the `entail` and `ground` stages start from: the whole params file, the imported
    mentions and the annotation backend ``annotate.backend`` names (vpmel.vpwiki.annotate)."""
    params = load_params(None, params_file)
    mentions = read_mentions(dataset)
    return params, mentions, build_backend(params["annotate"], params["encoders"], encoder_dir)


def region_cache_key(backend: Backend, encoder_dir: Path) -> dict[str, Any] | None:
    """What the proposal embeddings `entail` saves for `ground` are valid for (the encoder
    folder's fingerprint and the proposal settings); None where there is nothing to share:
    a backend other than clip, or an encoder that is not a saved folder."""
    if not isinstance(backend, ClipBackend):
        return None
    encoder = encoder_id(encoder_dir)
    return None if encoder == "none" else region_key(encoder, backend.annotator.proposals)
