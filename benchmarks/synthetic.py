"""Throughput of hpelib.data.synthetic: raw renders/s, cached items/s, memory per 1000 images.

Usage: ``python benchmarks/synthetic.py [--threads 2] [--sizes 64 128] [--n 512]``.
Prints a Markdown table. Raw = ``render_heads`` on batches (full-range poses, perspective,
no occluders, no supersampling); cached = ``SyntheticHeads.__getitem__`` on an in-memory
dataset (what a DataLoader worker pays per item once the set is rendered).
"""

from __future__ import annotations

import argparse
import time

import torch

from hpelib.data.synthetic import (
    SyntheticHeads,
    render_heads,
    sample_identity_params,
    sample_scenes,
)
from hpelib.data.synthetic.datasets import _chunk_for


def raw_rate(size: int, n: int, device: str, repeats: int = 3) -> float:
    batch = min(n, _chunk_for(size, 1))
    params = sample_identity_params(range(batch), seed=0)
    scene = sample_scenes(batch, torch.Generator().manual_seed(0))
    render_heads(params, scene, size, device=device)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        render_heads(params, scene, size, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return repeats * batch / (time.perf_counter() - start)


def cached_rate(size: int, n: int) -> tuple[float, float, float]:
    start = time.perf_counter()
    ds = SyntheticHeads(num_samples=n, image_size=size)
    build = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    rate = len(ds) / (time.perf_counter() - start)
    nbytes = sum(v.numel() * v.element_size() for v in ds._data.values())
    return rate, nbytes / len(ds) * 1000 / 2**20, n / build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--n", type=int, default=512, help="images per measurement")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device={args.device} torch threads={args.threads}\n")
    print(
        "| image size | renders/s (raw) | dataset build img/s | cached items/s | MB per 1000 images |"
    )
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        raw = raw_rate(size, args.n, args.device)
        cached, mb, build = cached_rate(size, args.n)
        print(f"| {size} | {raw:,.0f} | {build:,.0f} | {cached:,.0f} | {mb:.1f} |")


if __name__ == "__main__":
    main()
