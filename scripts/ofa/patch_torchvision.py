"""Make PyPI's (CUDA-linked) torchvision importable beside the CPU-only torch
wheel: drop the unloadable C extension and guard the two unconditional
register_fake() calls in torchvision/_meta_registrations.py.  Idempotent.
Only torchvision's C++ ops (nms, roi_align, ...) are lost; transforms work."""

import glob
import importlib.util
import os
import sys

spec = importlib.util.find_spec("torchvision")
if spec is None:
    sys.exit("torchvision not installed")
d = os.path.dirname(spec.origin)
for so in glob.glob(os.path.join(d, "_C*.so")):
    os.rename(so, so + ".disabled")  # keep it, but never load it
p = os.path.join(d, "_meta_registrations.py")
src = open(p).read()
MARK = "# [ofa-cpu-patch]"
if MARK not in src:
    helper = (
        f"\n{MARK}\n"
        "def _tv_register_fake(name):\n"
        "    if torchvision.extension._has_ops():\n"
        "        return torch.library.register_fake(name)\n"
        "    return lambda fn: fn\n\n"
    )
    anchor = "import torchvision.extension  # noqa: F401\n"
    assert anchor in src, "unexpected torchvision version layout"
    src = src.replace(anchor, anchor + helper, 1)
    n = src.count("@torch.library.register_fake(")
    src = src.replace("@torch.library.register_fake(", "@_tv_register_fake(")
    open(p, "w").write(src)
    print(f"patched {p} ({n} register_fake calls guarded)")
else:
    print("already patched")
