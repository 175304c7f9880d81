"""CLERF's two claims, in small, on synthetic heads (CPU, a few minutes).

* Table 2: contrastive pre-training (CLERF, stage 1 + stage 2) beats the same encoder and
  pose MLP trained end to end on the geodesic loss (``CLERFSupervised``).
* Table 3: the rotate + flip augmentation beats no augmentation.

All runs share the data, the backbone, the number of epochs and the optimiser; the test set
is a synthetic set of the training preset with CLERF's SA and FA variants
(:mod:`hpelib.data.variants`). ``--preset frontal`` is the paper's setting: 300W-LP-like
training poses, so the rotated and flipped SA/FA heads lie outside the training range unless
the augmentation puts them in; ``full_range`` (default) trains on every orientation.
Prints one Markdown table (geodesic error and mean Euler MAE in degrees, CLERF convention).

    python benchmarks/clerf_claims.py                 # default budget (~10 min on 2 busy cores)
    python benchmarks/clerf_claims.py --train 256 --test 128 --epochs 2 --stage1 1  # smoke run
    python benchmarks/clerf_claims.py --seeds 0 1 2   # mean +/- std over training seeds

The default budget only checks the plumbing: every model stays near chance (126 degrees).
The budget at which the models learn (about 38 min per training seed on 2 CPU cores, see
docs/methods/clerf.md for the table)::

    python benchmarks/clerf_claims.py --train 16384 --test 1024 --epochs 24 --stage1 16 \
        --size 64 --backbone regnetx_002 --precision bf16-mixed --channels-last --schedule cosine

Data: :class:`hpelib.data.synthetic.SyntheticHeads` (train and test identities disjoint),
positives from :func:`hpelib.methods.clerf.make_positives` (the generator CLERF trains
with), rendered once up front so that the CPU budget goes to training.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from ablation import fmt, quiet_trainer
from torch.utils.data import Dataset

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.synthetic import PRESETS, SyntheticHeads
from hpelib.data.variants import FAVariant, SAVariant
from hpelib.methods.clerf import (
    CLERF,
    MINING_DISTANCES,
    ROTATION_SENSES,
    CLERFSupervised,
    SyntheticPositiveSource,
    make_positives,
)

_SETS = ("original", "SA", "FA")
#: run key (``--runs``) -> table row
_RUNS = {
    "clerf/clerf": "CLERF (contrastive), aug=clerf",
    "supervised/clerf": "CLERFSupervised, aug=clerf",
    "clerf/none": "CLERF (contrastive), aug=none",
    "supervised/none": "CLERFSupervised, aug=none",
}


class PrecomputedPositives(Dataset):
    """``k`` generated positives per anchor of ``base``, rendered up front in batches
    (:func:`make_positives`, the same generator as ``AnchorPositiveDataset``); each item
    draws one of them, so the CPU budget goes to training, not to per-item rendering."""

    def __init__(self, base: Dataset, k: int, size: int, seed: int) -> None:
        self.base, g = base, torch.Generator().manual_seed(seed)
        rotations = torch.stack([base[i]["rotation"] for i in range(len(base))])
        source = SyntheticPositiveSource(size)
        self.images = torch.stack(
            [torch.cat([make_positives(rotations[s:s + 256], source, g)["image"]
                        for s in range(0, len(rotations), 256)]) for _ in range(k)], dim=1
        )  # fmt: skip
        self.k = k

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.base[i])
        j = int(torch.randint(0, self.k, ()))
        item["positive"] = {"image": self.images[i, j], "rotation": item["rotation"].clone()}
        return item


def cosine(steps: int) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]:
    """A per-step cosine decay to zero over ``steps`` (one fit's length)."""
    return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))


def fit(module: L.LightningModule, dm: HPEDataModule, epochs: int, n_train: int,
        args: argparse.Namespace) -> None:  # fmt: skip
    """One fit of ``epochs`` with this benchmark's precision and (per-fit) LR schedule."""
    if args.schedule == "cosine":
        steps = epochs * math.ceil(n_train / args.batch)
        module.scheduler_factory, module.scheduler_interval = cosine(steps), "step"
    quiet_trainer(epochs, precision=args.precision).fit(module, dm)


def run(name: str, module: L.LightningModule, train: Dataset, tests: dict[str, Dataset],
        args: argparse.Namespace) -> dict[str, float]:  # fmt: skip
    """Train ``module`` (CLERF: stage 1 for ``args.stage1`` epochs, then stage 2 as a second
    fit on the frozen encoder, so each stage has its own LR schedule) and test it."""
    dm = HPEDataModule(
        train=train, test=tests, batch_size=args.batch, eval_batch_size=128, normalize="symmetric"
    )
    t0 = time.time()
    if isinstance(module, CLERF):
        fit(module, dm, args.stage1, len(train), args)
        module.set_stage(2)
        fit(module, dm, args.epochs - args.stage1, len(train), args)
    else:
        fit(module, dm, args.epochs, len(train), args)
    tester = quiet_trainer(0, precision=args.precision)
    merged = {k: v for r in tester.test(module, dm, verbose=False) for k, v in r.items()}
    print(f"[{name}] {time.time() - t0:.0f} s, original geodesic "
          f"{merged['test/original/geodesic']:.1f}", flush=True)  # fmt: skip
    return {f"{s}/{m}": merged[f"test/{s}/{m}"] for s in _SETS for m in ("geodesic", "mae")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--preset", choices=PRESETS, default="full_range",
                        help="pose distribution of the training and original test heads; "
                             "'frontal' is the paper's setting (300W-LP-like training data, "
                             "full range reached only through SA/FA)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=6, help="total epochs of every run")
    parser.add_argument("--stage1", type=int, default=4, help="contrastive epochs of CLERF runs")
    parser.add_argument("--batch", type=int, default=32, help="real images per batch (+ as many positives)")
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--embedding", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                        help="LR schedule of every fit; cosine decays per step over each fit "
                             "(CLERF: over each stage)")  # fmt: skip
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    parser.add_argument("--channels-last", action="store_true", help="NHWC convolutions (HPEModule)")
    parser.add_argument("--runs", nargs="+", choices=_RUNS, default=list(_RUNS),
                        help="which of the four runs to train")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the rendered sets")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--distance", choices=MINING_DISTANCES, default="euclidean",
                        help="negative-mining distance of CLERF runs (euclidean: the paper's)")  # fmt: skip
    parser.add_argument("--rotation", choices=ROTATION_SENSES, default="clockwise",
                        help="sense of the rotate augmentation (clockwise 0-90: the paper's; "
                             "symmetric: -90..90)")  # fmt: skip
    args = parser.parse_args()
    if not 0 < args.stage1 < args.epochs:
        parser.error(f"--stage1 must be in [1, --epochs - 1], got {args.stage1} of {args.epochs}")
    torch.set_num_threads(args.threads)

    t0 = time.time()
    base = SyntheticHeads(args.train, args.size, args.preset, "train", seed=args.data_seed)
    needs_positives = any(r.startswith("clerf") for r in args.runs)
    train_pairs = PrecomputedPositives(base, 2, args.size, args.data_seed + 1) if needs_positives else base
    test = SyntheticHeads(args.test, args.size, args.preset, "test", seed=args.data_seed)
    tests = {"original": test, "SA": SAVariant(test), "FA": FAVariant(test, seed=args.data_seed)}
    print(f"data: {time.time() - t0:.0f} s", flush=True)

    common = dict(backbone=args.backbone, embedding_dim=args.embedding, channels_last=args.channels_last,
                  optimizer=lambda p: torch.optim.Adam(p, lr=args.lr))  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        for key in args.runs:
            kind, aug = key.split("/")
            L.seed_everything(seed, verbose=False)
            if kind == "clerf":
                module: L.LightningModule = CLERF(
                    augmentation=aug, rotation=args.rotation, mining_distance=args.distance,
                    head_lr=args.lr, euler_convention="clerf", **common,
                )  # fmt: skip
            else:
                module = CLERFSupervised(augmentation=aug, rotation=args.rotation, euler_convention="clerf", **common)
            runs.setdefault(_RUNS[key], []).append(
                run(f"{key}/seed {seed}", module, train_pairs if kind == "clerf" else base, tests, args)
            )

    print(f"\n{args.train} train / {args.test} test {args.preset} heads at {args.size} px, {args.backbone}, "
          f"{args.epochs} epochs (CLERF: {args.stage1} contrastive + {args.epochs - args.stage1} pose), "
          f"batch {args.batch}, Adam {args.lr} ({args.schedule}), {args.precision}, "
          f"mining {args.distance}, rotation {args.rotation}, "
          f"training seeds {args.seeds} (mean ± std over seeds); "
          f"total {time.time() - t0:.0f} s\n")  # fmt: skip
    print("| method | " + " | ".join(f"{s} geodesic | {s} MAE" for s in _SETS) + " |")
    print("|---|" + "---|---|" * len(_SETS))
    for name, rows in runs.items():
        cells = " | ".join(fmt([r[f"{s}/{m}"] for r in rows], 1) for s in _SETS for m in ("geodesic", "mae"))
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
