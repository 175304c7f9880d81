"""Does hpelib's data path cost accuracy on real faces? hpelib vs a plain PyTorch loop.

The same model (``SixD``: a timm ResNet-18 from scratch, 6D head, geodesic loss), optimiser
(AdamW), batch size, input size and number of optimiser steps, trained twice on the same
real faces and scored on the same held-out real faces with :func:`hpelib.metrics.pose_errors`:

* **plain**: every face cropped once by the AFLW2000 test rule (6DRepNet's ``AFLW2000``
  crop) and resized to ``size + size // 8`` pixels, held in memory; training draws a random
  ``size`` crop of it and mirrors it with p = 0.5 (label ``mirror_horizontal``); testing takes
  the centre crop. A hand-written loop: no Lightning, no hpelib data code after the crop.
* **hpelib**: ``Trainer.fit(SixD, HPEDataModule(train=AFLW2000(train=True)))`` with the
  library's defaults (train-time crop jitter around the test framing, redrawn every epoch;
  ``augmentation: mirror``), tested on ``AFLW2000(train=False)``.

Data: an AFLW2000 folder (``imageNNNNN.jpg`` + ``.mat``; the protocol's 99-degree filter),
split by position in the sorted file list: even positions train, odd positions test
(``--swap`` exchanges them). Default root: the development copy beside the project
(``../shared/data/AFLW2000-dev``).

    python benchmarks/aflw_dev_plain_loop.py                      # 64 px, batch 64, 600 steps
    python benchmarks/aflw_dev_plain_loop.py --steps 1323 --swap
    python benchmarks/aflw_dev_plain_loop.py --root /data/AFLW2000 --device cuda
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Subset

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.datasets import AFLW2000
from hpelib.methods import SixD
from hpelib.metrics import pose_errors
from hpelib.rotation import mirror_horizontal

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = ROOT / ".." / "shared" / "data" / "AFLW2000-dev"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _split(n: int, swap: bool) -> tuple[list[int], list[int]]:
    even, odd = list(range(0, n, 2)), list(range(1, n, 2))
    return (odd, even) if swap else (even, odd)


def _model(args: argparse.Namespace) -> SixD:
    return SixD(
        backbone=args.backbone,
        pretrained=False,
        optimizer=lambda params: torch.optim.AdamW(params, lr=args.lr),
    )


def _stack(dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return torch.stack([it["image"] for it in items]), torch.stack([it["rotation"] for it in items])


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - MEAN.to(images.device)) / STD.to(images.device)


@torch.no_grad()
def _score(model: SixD, images: torch.Tensor, rotations: torch.Tensor, device: str) -> dict[str, float]:
    model.eval().to(device)
    preds = [
        model(_normalise(images[i : i + 128].to(device)))["rotation"].float().cpu()
        for i in range(0, len(images), 128)
    ]
    errors = pose_errors(torch.cat(preds), rotations.float())
    names = ("pitch", "yaw", "roll")
    out = {f"{n}_mae": float(errors[n].mean()) for n in names}
    out["mae"] = sum(out[f"{n}_mae"] for n in names) / 3
    out["geodesic"] = float(errors["geodesic"].mean())
    out["within_10"] = float((errors["geodesic"] <= 10).float().mean() * 100)
    return out


def run_plain(args: argparse.Namespace, train_idx: list[int], test_idx: list[int]) -> dict[str, float]:
    big = args.size + args.size // 8
    framed = AFLW2000(args.root, image_size=big, train=False)
    train_images, train_rot = _stack(framed, train_idx)
    test_images, test_rot = _stack(framed, test_idx)
    margin = (big - args.size) // 2
    test_images = test_images[:, :, margin : margin + args.size, margin : margin + args.size]
    L.seed_everything(args.seed)
    model = _model(args).to(args.device).train()
    optimizer = model.configure_optimizers()
    generator = torch.Generator().manual_seed(args.seed)
    step, start = 0, time.perf_counter()
    while step < args.steps:
        order = torch.randperm(len(train_images), generator=generator)
        for first in range(0, len(order) - args.batch_size + 1, args.batch_size):
            idx = order[first : first + args.batch_size]
            x0, y0 = torch.randint(0, big - args.size + 1, (2,), generator=generator).tolist()
            images = train_images[idx][:, :, y0 : y0 + args.size, x0 : x0 + args.size]
            rotations = train_rot[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            rotations = torch.where(flip.view(-1, 1, 1), mirror_horizontal(rotations), rotations)
            outputs = model(_normalise(images.to(args.device)))
            loss, _ = model.compute_loss(outputs, {"rotation": rotations.to(args.device)})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == args.steps:
                break
    result = _score(model, test_images, test_rot, args.device)
    result["train_s"] = time.perf_counter() - start
    return result


def run_hpelib(args: argparse.Namespace, train_idx: list[int], test_idx: list[int]) -> dict[str, float]:
    train = Subset(AFLW2000(args.root, image_size=args.size, train=True, seed=args.seed), train_idx)
    test = AFLW2000(args.root, image_size=args.size, train=False)
    L.seed_everything(args.seed)
    data = HPEDataModule(
        train=train, batch_size=args.batch_size, augmentation="mirror", seed=args.seed,
        num_workers=args.workers,
    )  # fmt: skip
    model = _model(args)
    trainer = L.Trainer(
        max_steps=args.steps, accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, data)
    train_s = time.perf_counter() - start
    test_images, test_rot = _stack(test, test_idx)
    result = _score(model, test_images, test_rot, args.device)
    result["train_s"] = train_s
    return result


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="an AFLW2000 folder")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--swap", action="store_true", help="train on odd, test on even positions")
    parser.add_argument("--workers", type=int, default=0, help="hpelib DataLoader workers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="+", choices=["plain", "hpelib"], default=["plain", "hpelib"])
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise SystemExit(f"AFLW2000 folder {str(args.root)!r} not found; pass --root")
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    n = len(AFLW2000(args.root, image_size=args.size, train=False))
    train_idx, test_idx = _split(n, args.swap)
    rows = []
    for name in args.only:
        run = run_plain if name == "plain" else run_hpelib
        rows.append({"pipeline": name, **run(args, train_idx, test_idx)})
    print(
        f"\nAFLW2000 at {args.root}: {len(train_idx)} train / {len(test_idx)} test faces "
        f"({'odd/even' if args.swap else 'even/odd'} positions), {args.backbone} from scratch, "
        f"{args.size} px, batch {args.batch_size}, AdamW {args.lr:g}, {args.steps} steps, "
        f"seed {args.seed}\n"
    )
    columns = ["pitch_mae", "yaw_mae", "roll_mae", "mae", "geodesic", "within_10", "train_s"]
    print("| pipeline | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in rows:
        print(f"| {row['pipeline']} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")
    return rows


if __name__ == "__main__":
    main()
