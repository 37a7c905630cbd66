"""Peak memory of normalising one very large image (each case in a fresh process).

    PYTHONPATH=. .venv/bin/python benchmarks/image_memory.py --side 9000

Writes a side x side 16-bit and an 8-bit gray PNG (a smooth gradient with noise), then loads
each with ``vpmel.data.images.load_image(path, max_side=1024)`` in a new Python process and prints
the peak resident memory (VmHWM, Linux) of that process above a process that only imported
the modules.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# VmHWM (Linux): the process's own peak; ru_maxrss would also count the parent at fork
CHILD = """
import re, sys
from vpmel.data.images import load_image
if sys.argv[1] != "-":
    load_image(sys.argv[1], 1024)
status = open("/proc/self/status").read()
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024)
"""


def peak_mb(arg: str) -> float:
    """Peak RSS (MB) of a fresh process that imports vpmel.data.images and loads ``arg``."""
    run = subprocess.run([sys.executable, "-c", CHILD, arg], check=True, capture_output=True,
                         text=True)  # fmt: skip
    return float(run.stdout.split()[-1])


def write(path: Path, side: int, bits: int) -> None:
    g = np.random.default_rng(0)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    rows = []
    top = 65535 if bits == 16 else 255
    for start in range(0, side, 1000):  # in strips, so the writer itself stays small
        block = ramp[None, :] * ramp[start : start + 1000, None] * top
        block += g.normal(0, top / 50, block.shape).astype(np.float32)
        rows.append(np.clip(block, 0, top).astype(np.uint16 if bits == 16 else np.uint8))
    data = np.concatenate(rows)
    if bits == 16:
        img = Image.new("I;16", (side, side))
        img.frombytes(data.astype("<u2").tobytes())
    else:
        img = Image.fromarray(data)
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=9000)
    args = ap.parse_args()
    base = peak_mb("-")
    with tempfile.TemporaryDirectory() as tmp:
        for bits in (16, 8):
            path = Path(tmp) / f"big{bits}.png"
            write(path, args.side, bits)
            print(
                f"{args.side}x{args.side} {bits}-bit PNG: peak +{peak_mb(str(path)) - base:.0f} MB"
            )


if __name__ == "__main__":
    main()
