"""Run a ``tests.distributed`` helper script in a fresh interpreter (its own process group)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(module: str, out: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <out> <args...>`` in ``out``; asserts success, prints the time.

    One torch thread per process: two ranks on two cores would otherwise oversubscribe.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", module, str(out), *args],
        cwd=out, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    print(f"{module} {' '.join(args)}: {time.perf_counter() - start:.1f} s")
    return result
