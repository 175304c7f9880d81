"""Run a module (a ``tests.distributed`` helper script, the ``hpelib`` CLI) in a fresh
interpreter, as a separate process tree like a real launch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_module(
    module: str, args: list[str], cwd: Path, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args...>`` in ``cwd``; asserts success, prints the time.

    One torch thread per process: two ranks on two cores would otherwise oversubscribe.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    print(f"{module} {' '.join(args)}: {time.perf_counter() - start:.1f} s")
    return result
