"""Run every benchmark script and collect their Markdown tables into one report.

    python benchmarks/run_all.py                    # fast settings, prints the report
    python benchmarks/run_all.py --full --write     # script defaults, writes benchmarks/RESULTS.md
    python benchmarks/run_all.py --only synthetic opnet_latency

Each script prints its own Markdown table; this runner adds a header describing the machine
(CPU count, torch version, device) and a summary table of wall times, so results from two
machines can be compared side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (script, fast arguments). ``--full`` drops the fast arguments (script defaults).
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "synthetic": ("synthetic.py", ["--sizes", "64", "128", "--n", "256"]),
    "index_build": ("index_build.py", ["--n", "500"]),
    "data_pipeline": ("data_pipeline.py", ["--repeats", "3"]),
    "opnet_latency": ("opnet_latency.py", ["--runs", "50", "--warmup", "10"]),
    "rankpose_ablation": (
        "rankpose_ablation.py",
        ["--train", "256", "--test", "128", "--epochs", "2"],
    ),
    "lechpe_beta_ablation": (
        "lechpe_beta_ablation.py",
        ["--train", "256", "--test", "128", "--stage1-epochs", "2", "--stage2-epochs", "1"],
    ),
    "clerf_claims": (
        "clerf_claims.py",
        ["--train", "256", "--test", "128", "--epochs", "2", "--stage1", "1"],
    ),
    # Lightning Trainer.fit vs a plain PyTorch loop, items/s per method.
    "training_throughput": ("training_throughput.py", ["--quick"]),
    # Out-of-plane synthesis of real faces (hpelib.data.synthesis): views/s.
    "face_synthesis": ("face_synthesis.py", ["--n", "100"]),
    # Where a real-image training step's time goes.
    "real_image_pipeline": ("real_image_pipeline.py", ["--items", "50", "--repeats", "1", "--steps", "3"]),
    # Real faces (AFLW2000-dev, k-fold): one fold, a few steps, three rows.
    "real_faces": (
        "real_faces.py",
        ["--folds", "0", "--steps", "20", "--methods", "mean_pose", "sixd_raw_mse", "rankpose"],
    ),
}


def machine_description() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"- date: {dt.datetime.now().isoformat(timespec='minutes')}\n"
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {device}\n"
        f"- python {platform.python_version()}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}\n"
        f"- load average at start: {load:.2f}\n"
    )


def run(name: str, full: bool, timeout: int) -> tuple[str, float, int]:
    script, fast_args = BENCHMARKS[name]
    cmd = [sys.executable, str(HERE / script), *([] if full else fast_args)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
        out, code = proc.stdout.strip(), proc.returncode
        if code != 0:
            out += "\n\n```\n" + proc.stderr[-3000:] + "\n```"
    except subprocess.TimeoutExpired:
        out, code = f"timed out after {timeout} s", -1
    return out, time.perf_counter() - start, code


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument(
        "--full", action="store_true", help="use each script's default (larger) settings"
    )
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per benchmark")
    parser.add_argument("--write", action="store_true", help="write benchmarks/RESULTS.md")
    args = parser.parse_args(argv)

    sections, rows = [], []
    for name in args.only:
        out, seconds, code = run(name, args.full, args.timeout)
        status = "ok" if code == 0 else f"failed ({code})"
        rows.append(f"| {name} | {status} | {seconds:.0f} |")
        sections.append(f"## {name}\n\n`benchmarks/{BENCHMARKS[name][0]}`\n\n{out}\n")
        print(f"{name}: {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    summary = "| benchmark | status | wall s |\n|---|---|---:|\n" + "\n".join(rows)
    report = (
        f"# hpelib benchmark results\n\n{machine_description()}\n"
        f"Settings: {'script defaults' if args.full else 'fast (benchmarks/run_all.py)'}.\n\n"
        f"{summary}\n\n" + "\n".join(sections)
    )
    print(report)
    if args.write:
        (HERE / "RESULTS.md").write_text(report)
    return report


if __name__ == "__main__":
    main()
