"""The `ofa` annotation backend: modelscope's OFA-large, as the paper used (Appendix A.6).

modelscope's OFA needs fairseq and transformers 4.57, which cannot share an environment
with this project's transformers 5. So OFA lives in its own virtual environment, built by
``scripts/setup_ofa_env.sh .venv-ofa``, and this client runs ``vpmel/vpwiki/ofa_runner.py`` there
as a subprocess: requests go in as JSON lines, answers come back as JSON lines.

Model folders: a param that names an existing folder is used as is; a hub id such as
``damo/ofa_visual-entailment_snli-ve_large_en`` is looked up under ``models/ofa/<id>``
(download it there once, e.g. ``modelscope download --model <id> --local_dir
models/ofa/<id>``). The runner never contacts a hub.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vpmel.vpwiki.annotation_backend import Request, Track, no_progress

RUNNER = Path(__file__).resolve().with_name("ofa_runner.py")
MODELS_DIR = Path("models/ofa")


def resolve_model(spec: str | Path, models_dir: Path = MODELS_DIR) -> Path:
    """A local OFA model folder for a folder path or a hub id."""
    for candidate in (Path(spec), Path(models_dir) / str(spec)):
        if (candidate / "configuration.json").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"OFA model {spec!r}: no folder with configuration.json at {spec} or "
        f"{Path(models_dir) / str(spec)}; download it once with "
        f"`modelscope download --model {spec} --local_dir {Path(models_dir) / str(spec)}`"
    )


class OfaBackend:
    def __init__(self, python: Path, entailment_model: Path, grounding_model: Path):
        self.python = Path(python)
        if not self.python.is_file():
            raise FileNotFoundError(
                f"{self.python}: no OFA environment; build it with "
                "`bash scripts/setup_ofa_env.sh .venv-ofa` (about 10 minutes, 2.3 GB)"
            )
        self.entailment_model = Path(entailment_model)
        self.grounding_model = Path(grounding_model)

    @classmethod
    def from_params(cls, params: dict) -> OfaBackend:
        env = Path(params.get("env", ".venv-ofa"))
        return cls(
            env / "bin" / "python",
            resolve_model(params["entailment_model"]),
            resolve_model(params["grounding_model"]),
        )

    def _run(self, model: Path, requests: Sequence[Request], what: str) -> list[dict]:
        """Send the requests through the runner; one answer dict per request, in order."""
        with tempfile.TemporaryDirectory(prefix="vpmel-ofa-") as tmp:
            src, dst = Path(tmp) / "requests.jsonl", Path(tmp) / "answers.jsonl"
            src.write_text(
                "".join(
                    json.dumps({"id": i, "image": str(Path(r.image).resolve()), "text": r.text})
                    + "\n"
                    for i, r in enumerate(requests)
                )
            )
            proc = subprocess.run(
                [str(self.python), str(RUNNER), str(model.resolve()), str(src), "--out", str(dst)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                raise RuntimeError(f"OFA {what} failed (exit {proc.returncode}):\n{tail}")
            answers = {a["id"]: a for a in map(json.loads, dst.read_text().splitlines())}
        missing = [i for i in range(len(requests)) if i not in answers]
        if missing:
            raise RuntimeError(f"OFA {what}: no answer for requests {missing[:5]}")
        return [answers[i] for i in range(len(requests))]

    def entail(self, requests: Sequence[Request], track: Track = no_progress) -> np.ndarray:
        """P("yes") per request; NaN where OFA reported an error for that request."""
        answers = self._run(self.entailment_model, requests, "entailment")
        return np.array(
            [np.nan if "error" in a or a.get("p_yes") is None else a["p_yes"] for a in answers]
        )

    def ground(
        self, requests: Sequence[Request], track: Track = no_progress
    ) -> tuple[np.ndarray, np.ndarray]:
        """Boxes in image pixels (NaN rows where OFA failed) and their scores."""
        answers = self._run(self.grounding_model, requests, "grounding")
        boxes = np.array([[np.nan] * 4 if "error" in a else a["box"] for a in answers], float)
        scores = np.array([np.nan if "error" in a else a["score"] for a in answers], float)
        return boxes, scores
