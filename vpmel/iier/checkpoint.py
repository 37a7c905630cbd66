"""An IIER checkpoint folder's files and where its encoder comes from (no torch).

A checkpoint (:meth:`vpmel.iier.model.IIER.save`) is ``iier.json`` (config, ``extra`` and the
encoder reference) and ``iier.safetensors`` (IIER's own weights). Its towers are those of
the encoder folder it was trained with — the ``encoders`` stage's ``models/encoder``, for
the demo and for hub-backed encoders alike — which ``iier.json`` refers to instead of
copying it::

    "encoder": {"path": "models/encoder", "sha1": "<encoder_fingerprint of the folder>"}

``path`` is the folder as it was given, relative to the working directory when it lies
inside it. Loading reads that folder, or the one the caller names instead (``vpmel link
--encoder DIR``), and refuses one whose fingerprint differs. A checkpoint whose towers were
trained (``train.train_vision`` / ``train_text``), or whose encoder came from no folder,
carries its own copy in ``encoder/`` — as every checkpoint did before references (those
still load).

Torch-free, so that ``vpmel link`` checks a checkpoint before any model loads.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "iier.json"
HEAD_FILE = "iier.safetensors"
ENCODER_DIR = "encoder"
#: the key of ``iier.json`` that refers to the encoder folder
ENCODER_KEY = "encoder"


def encoder_fingerprint(folder: Path) -> str:
    """sha1 over every file of an encoder folder (relative name and bytes)."""
    digest = hashlib.sha1()
    folder = Path(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def encoder_reference(folder: Path) -> dict[str, str]:
    """What ``iier.json`` records of the encoder folder a checkpoint's towers come from."""
    absolute, cwd = Path(os.path.abspath(folder)), Path.cwd()
    path = absolute.relative_to(cwd).as_posix() if absolute.is_relative_to(cwd) else str(folder)
    return {"path": path, "sha1": encoder_fingerprint(folder)}


def checkpoint_encoder(
    checkpoint: Path, meta: Mapping[str, Any], override: Path | None = None
) -> Path:
    """The encoder folder to load the towers of ``checkpoint`` (its ``iier.json`` read as
    ``meta``) from: ``override`` when given, else the recorded folder (or the checkpoint's
    own ``encoder/``). A folder whose fingerprint is not the checkpoint's is refused with
    one line saying what to do."""
    checkpoint = Path(checkpoint)
    ref = meta.get(ENCODER_KEY)
    own = checkpoint / ENCODER_DIR
    if ref is None:
        if not own.is_dir():
            raise FileNotFoundError(
                f"{checkpoint}: incomplete IIER checkpoint, it has no {ENCODER_DIR}/ and no "
                f"encoder reference in {CONFIG_FILE}"
            )
        if override is None:
            return own
    elif not (isinstance(ref, Mapping) and isinstance(ref.get("path"), str) and ref.get("sha1")):
        raise ValueError(f"{checkpoint / CONFIG_FILE}: unreadable encoder reference {ref!r}")
    want = encoder_fingerprint(own) if ref is None else str(ref["sha1"])
    folder = Path(override) if override is not None else Path(ref["path"])
    if not folder.is_dir():
        where = "" if folder.is_absolute() else f" (relative to {Path.cwd()})"
        raise FileNotFoundError(
            f"{checkpoint}: its encoder folder {folder}{where} does not exist; run from the "
            "project folder or name the encoder folder it was trained with (vpmel link "
            "--encoder DIR)"
        )
    got = encoder_fingerprint(folder)
    if got != want:
        raise ValueError(
            f"{checkpoint}: encoder {folder} has sha1 {got} but the checkpoint was trained "
            f"with sha1 {want}; name the encoder folder it was trained with (vpmel link "
            "--encoder DIR) or retrain IIER on this one (dvc repro train)"
        )
    return folder


def seed_checkpoints(folder: Path) -> list[tuple[int | None, Path]]:
    """(seed, checkpoint folder) of a `train` output: its ``seed_<s>/`` folders by seed, or
    the folder itself when it is one checkpoint (seed None)."""
    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file():
        return [(None, folder)]
    seeds = []
    for sub in folder.glob("seed_*"):
        tail = sub.name.removeprefix("seed_")
        if (sub / CONFIG_FILE).is_file() and tail.lstrip("-").isdigit():
            seeds.append((int(tail), sub))
    if not seeds:
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE} or seed_*/; not an IIER checkpoint")
    return sorted(seeds)
