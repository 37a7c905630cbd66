"""Replace an output (folder or file) only when the new one is complete.

A stage that rebuilds a folder (the imported dataset, a checkpoint) or a file (a cached
index) writes the new content into a temporary sibling and swaps it in at the end: an
interrupted or failed run leaves the previous output intact, and a half-written output is
never mistaken for a finished one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def overlapping(a: Path, b: Path) -> bool:
    """True when folders ``a`` and ``b`` are the same, or one lies inside the other
    (symlinks resolved; the folders need not exist)."""
    ra, rb = Path(a).resolve(), Path(b).resolve()
    return ra == rb or ra.is_relative_to(rb) or rb.is_relative_to(ra)


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it replaces ``out``.

    On an exception the temporary folder is removed and ``out`` is left untouched. The
    previous ``out`` is moved aside before the new one is renamed into place and removed
    only afterwards, so at every moment one complete version exists on disk.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    for leftover in (tmp, old):
        _remove(leftover)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def atomic_file(path: Path, write: Callable[[str], object]) -> None:
    """``write(tmp)`` a file beside ``path`` (``.<name>.tmp``), then move it to ``path`` in
    one step. The temporary name is fixed, so a killed write leaves at most that one file,
    which the next write of ``path`` replaces (one writer per output at a time, as in every
    stage). The file gets the mode a newly created file gets under the umask (0666 &
    ~umask): writers such as safetensors' create their files 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(str(tmp))
        umask = os.umask(0o022)  # reading the umask means setting it: put it back at once
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
