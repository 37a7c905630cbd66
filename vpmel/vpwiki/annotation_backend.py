"""What an annotation backend answers to: a list of requests (image, text), in order.

The interface the CLIP backend (:mod:`vpmel.vpwiki.annotate`) and the OFA backend
(:mod:`vpmel.vpwiki.ofa_backend`) share, in a module of its own so that neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

Track = Callable[..., object]


def no_progress(it, **_):  # noqa: ANN001, ANN202 - same signature as rich.progress.track
    return it


@dataclass(frozen=True)
class Request:
    image: Path
    text: str


class Backend(Protocol):
    def entail(self, requests: Sequence[Request], track: Track = no_progress) -> np.ndarray:
        """Probability in [0, 1] per request."""
        ...

    def ground(
        self, requests: Sequence[Request], track: Track = no_progress
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) boxes in image pixels and (N,) scores."""
        ...
