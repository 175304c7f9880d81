"""Throughput of hpelib's batched augmentation vs a per-sample PIL path.

Both paths start from uint8 face crops plus labels (rotation, 68 landmarks) and produce a
float batch in [0, 1] with labels transformed consistently:

- batched: ``hpelib.data.transforms``: in-plane rotation (p=0.5, 0-90 degrees) and CLERF's
  line flip (p=0.3) fused into ONE kornia warp, labels through ``ImageWarp``, then a
  brightness/contrast/saturation jitter on the whole batch (hpelib's blend jitter, and
  kornia's ColorJitter for comparison).
- per-sample PIL: what a DataLoader worker would do per item: ``Image.rotate``, the flip as
  ``Image.transform(AFFINE)``, ``ImageEnhance`` brightness/contrast/colour, numpy label
  maths, then stacking into a tensor.

Usage: ``python benchmarks/data_pipeline.py [--batch 64] [--sizes 64 128] [--device cpu]``.
Prints a Markdown table of items/s (median of ``--repeats`` timed runs).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import kornia.augmentation as KA
import numpy as np
import torch
from PIL import Image, ImageEnhance

from hpelib.data.transforms import (
    KorniaPhotometric,
    RandomColorJitter,
    RandomGeometric,
    RandomInPlaneRotation,
    RandomLineFlip,
)
from hpelib.data.transforms.geometric import MULTIPIE68_MIRROR_PERMUTATION

PERM = np.array(MULTIPIE68_MIRROR_PERMUTATION)


def make_data(batch: int, size: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8),
        "rotation": torch.linalg.qr(torch.randn(batch, 3, 3, generator=g)).Q,
        "landmarks_2d": torch.rand(batch, 68, 2, generator=g) * (size - 1),
    }


def batched_pipeline(colour: str = "blend") -> torch.nn.Sequential:
    """Fused rotation + line flip, then colour jitter: ``blend`` = hpelib's
    :class:`RandomColorJitter` (PIL ``ImageEnhance`` semantics, the same maths as the PIL
    path) or ``kornia`` = ``kornia.augmentation.ColorJitter`` (HSV saturation)."""
    geometric = RandomGeometric(
        [RandomInPlaneRotation(p=0.5, max_degrees=90.0), RandomLineFlip(p=0.3)]
    )
    if colour == "blend":
        jitter: torch.nn.Module = RandomColorJitter(0.2, 0.2, 0.2, p=1.0)
    else:
        jitter = KorniaPhotometric(
            KA.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, p=1.0), p=1.0
        )
    return torch.nn.Sequential(geometric, jitter)


def run_batched(pipeline: torch.nn.Module, data: dict, device: torch.device) -> dict:
    batch = {k: v.to(device, non_blocking=True) for k, v in data.items()}
    batch["image"] = batch["image"].float() / 255.0
    out = pipeline(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out


def _similarity_label(r: np.ndarray, lin: np.ndarray) -> np.ndarray:
    """Label of a warp with orthogonal 2x2 part ``lin`` (same maths as ImageWarp)."""
    o3 = np.eye(3)
    o3[:2, :2] = lin
    out = o3 @ r
    if np.linalg.det(lin) < 0:
        out[:, 0] *= -1.0
    return out


def run_pil(
    images: np.ndarray, rotations: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator
) -> dict:
    """Per-sample path; ``images`` (B, H, W, 3) uint8."""
    outs, rots, lms = [], [], []
    for img_np, r, lm in zip(images, rotations, landmarks, strict=True):
        img = Image.fromarray(img_np)
        h, w = img_np.shape[:2]
        c = np.array([(w - 1) / 2, (h - 1) / 2])
        lin = np.eye(2)
        if rng.random() < 0.5:
            deg = rng.uniform(0, 90) * (1 if rng.random() < 0.5 else -1)
            img = img.rotate(deg, resample=Image.BILINEAR, center=tuple(c))
            p = math.radians(deg)
            lin = np.array([[math.cos(p), math.sin(p)], [-math.sin(p), math.cos(p)]]) @ lin
        flipped = rng.random() < 0.3
        if flipped:
            t = math.radians(rng.uniform(0, 90))
            f = np.array(
                [[math.cos(2 * t), -math.sin(2 * t)], [-math.sin(2 * t), -math.cos(2 * t)]]
            )
            # PIL's AFFINE takes the inverse (output -> input) map; a reflection is its own.
            off = c - f @ c
            img = img.transform(
                (w, h),
                Image.AFFINE,
                (f[0, 0], f[0, 1], off[0], f[1, 0], f[1, 1], off[1]),
                resample=Image.BILINEAR,
            )
            lin = f @ lin
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2))
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.8, 1.2))
        rots.append(_similarity_label(r, lin))
        moved = (lm - c) @ lin.T + c
        lms.append(moved[PERM] if flipped else moved)
        outs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    return {
        "image": torch.stack(outs).float() / 255.0,
        "rotation": torch.from_numpy(np.stack(rots)).float(),
        "landmarks_2d": torch.from_numpy(np.stack(lms)).float(),
    }


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    pipelines = {name: batched_pipeline(name).to(device) for name in ("blend", "kornia")}
    rng = np.random.default_rng(0)
    print(
        f"torch {torch.__version__}, device {device}, torch threads {torch.get_num_threads()}, "
        f"CPU cores {os.cpu_count()}, batch {args.batch}\n"
    )
    print(
        "| image size | batched, blend jitter (items/s) | batched, kornia ColorJitter (items/s) "
        "| per-sample PIL (items/s) | ratio (blend / PIL) | ratio (kornia / PIL) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        data = make_data(args.batch, size)
        images = data["image"].permute(0, 2, 3, 1).contiguous().numpy()
        rots = data["rotation"].double().numpy()
        lms = data["landmarks_2d"].double().numpy()
        rate = {
            name: args.batch / timeit(lambda d=data, p=p: run_batched(p, d, device), args.repeats)
            for name, p in pipelines.items()
        }
        pil = args.batch / timeit(
            lambda i=images, r=rots, lm=lms: run_pil(i, r, lm, rng), args.repeats
        )
        print(
            f"| {size} | {rate['blend']:,.0f} | {rate['kornia']:,.0f} | {pil:,.0f} "
            f"| {rate['blend'] / pil:.1f}x | {rate['kornia'] / pil:.1f}x |"
        )


if __name__ == "__main__":
    main()
