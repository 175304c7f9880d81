"""hpelib.rotation must stay reusable on its own: it imports only torch and roma."""

from __future__ import annotations

import subprocess
import sys


def test_rotation_imports_only_torch_and_roma():
    code = (
        "import sys, hpelib.rotation\n"
        "heavy = [m for m in ('lightning', 'timm', 'kornia', 'pandas', 'torchmetrics', 'scipy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"hpelib.rotation pulled in: {out.stdout.strip()}"
