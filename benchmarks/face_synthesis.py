"""Throughput of out-of-plane face synthesis (:mod:`hpelib.data.synthesis`) on real faces.

Usage: ``python benchmarks/face_synthesis.py --root /data/AFLW2000 [--sizes 64 128]
[--n 200] [--workers 2]``. Prints a Markdown table per image size:

* ``synthesize_view``: mesh + z-buffer render + labels of one new view, on already decoded
  AFLW2000 crops, one torch thread (what one DataLoader worker pays per synthesised image),
  wall-clock and per core (CPU time: meaningful on a machine shared with other work);
* ``OutOfPlaneViews`` item: the same plus the source's JPEG decode, crop and resize;
* DataLoader: ``OutOfPlaneViews`` items/s through a DataLoader with ``--workers`` workers and
  batch 32 (the rate a training loop can draw on this machine).

Poses: the ``towards_profile`` increment (300W-LP style, up to 90 degrees of yaw).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from hpelib.data.datasets import AFLW2000
from hpelib.data.sample import collate_samples
from hpelib.data.synthesis import OutOfPlaneViews, PoseIncrement, synthesize_view


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def view_rate(ds: AFLW2000, n: int) -> tuple[float, float]:
    """``(wall-clock, CPU-time)`` views/s of ``synthesize_view``; the CPU-time rate is the
    rate per core, unaffected by other processes sharing the machine."""
    samples = [ds[i % len(ds)] for i in range(n)]
    rng = np.random.default_rng(0)
    inc = PoseIncrement()
    targets = [inc.sample_target(s["rotation"], rng) for s in samples]
    synthesize_view(samples[0], target=targets[0])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for s, t in zip(samples, targets, strict=True):
        synthesize_view(s, target=t)
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def item_rate(views: OutOfPlaneViews, n: int) -> float:
    views[1]
    start = time.perf_counter()
    for i in range(n):
        views[i % len(views)]
    return n / (time.perf_counter() - start)


def loader_rate(views: OutOfPlaneViews, n: int, workers: int) -> float:
    loader = DataLoader(views, batch_size=32, shuffle=True, num_workers=workers,
                        collate_fn=collate_samples, worker_init_fn=_worker_init,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    it = iter(loader)
    next(it)  # workers started, first batch out
    count, start = 0, time.perf_counter()
    for batch in it:
        count += len(batch["image"])
        if count >= n:
            break
    return count / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="an AFLW2000 folder")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--n", type=int, default=200, help="images per measurement")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"AFLW2000 at {args.root}; 1 torch thread per process; DataLoader workers={args.workers}\n")
    print("| image size | synthesize_view img/s | per core (CPU time) "
          f"| OutOfPlaneViews items/s (with decode) | DataLoader items/s ({args.workers} workers) |")
    print("|---:|---:|---:|---:|---:|")  # fmt: skip
    for size in args.sizes:
        ds = AFLW2000(args.root, image_size=size, box_source="pt3d_68")
        views = OutOfPlaneViews(ds, views_per_image=4, include_source=False)
        wall, cpu = view_rate(ds, args.n)
        it = item_rate(views, args.n)
        dl = loader_rate(views, max(args.n, 256), args.workers) if args.workers > 0 else float("nan")
        print(f"| {size} | {wall:,.0f} | {cpu:,.0f} | {it:,.0f} | {dl:,.0f} |")


if __name__ == "__main__":
    main()
