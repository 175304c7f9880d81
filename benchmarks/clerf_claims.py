"""CLERF's two claims, in small, on synthetic full-range heads (CPU, a few minutes).

* Table 2: contrastive pre-training (CLERF, stage 1 + stage 2) beats the same encoder and
  pose MLP trained end to end on the geodesic loss (``CLERFSupervised``).
* Table 3: the rotate + flip augmentation beats no augmentation.

All runs share the data, the backbone, the number of epochs and the optimiser; the test set
is a synthetic full-range set with CLERF's SA and FA variants (:mod:`hpelib.data.variants`).
Prints one Markdown table (geodesic error and mean Euler MAE in degrees, CLERF convention).

    python benchmarks/clerf_claims.py                 # default budget (~10 min on 2 busy cores)
    python benchmarks/clerf_claims.py --train 256 --test 128 --epochs 2 --stage1 1  # smoke run
    python benchmarks/clerf_claims.py --seeds 0 1 2   # mean +/- std over training seeds

Data: :class:`hpelib.data.synthetic.SyntheticHeads` (full range; train and test identities
disjoint), positives from :func:`hpelib.methods.clerf.make_positives` (the generator CLERF
trains with), rendered once up front so that the CPU budget goes to training.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import lightning as L
import torch
from ablation import fmt, quiet_trainer
from torch.utils.data import Dataset

from hpelib.callbacks import StageSwitch
from hpelib.data.datamodule import HPEDataModule
from hpelib.data.synthetic import SyntheticHeads
from hpelib.data.variants import FAVariant, SAVariant
from hpelib.methods.clerf import CLERF, CLERFSupervised, SyntheticPositiveSource, make_positives

_SETS = ("original", "SA", "FA")


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


def run(name: str, module: L.LightningModule, train: Dataset, tests: dict[str, Dataset],
        args: argparse.Namespace, callbacks: list) -> dict[str, float]:  # fmt: skip
    dm = HPEDataModule(
        train=train, test=tests, batch_size=args.batch, eval_batch_size=128, normalize="symmetric"
    )
    trainer = quiet_trainer(args.epochs, callbacks)
    t0 = time.time()
    trainer.fit(module, dm)
    merged = {k: v for r in trainer.test(module, dm, verbose=False) for k, v in r.items()}
    print(f"[{name}] {time.time() - t0:.0f} s", flush=True)
    return {f"{s}/{m}": merged[f"test/{s}/{m}"] for s in _SETS for m in ("geodesic", "mae")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6, help="total epochs of every run")
    parser.add_argument("--stage1", type=int, default=4, help="contrastive epochs of CLERF runs")
    parser.add_argument("--batch", type=int, default=32, help="real images per batch (+ as many positives)")
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--embedding", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the rendered sets")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.time()
    base = SyntheticHeads(args.train, args.size, "full_range", "train", seed=args.data_seed)
    train_pairs = PrecomputedPositives(base, 2, args.size, args.data_seed + 1)
    test = SyntheticHeads(args.test, args.size, "full_range", "test", seed=args.data_seed)
    tests = {"original": test, "SA": SAVariant(test), "FA": FAVariant(test, seed=args.data_seed)}
    print(f"data: {time.time() - t0:.0f} s", flush=True)

    common = dict(backbone=args.backbone, embedding_dim=args.embedding,
                  optimizer=lambda p: torch.optim.Adam(p, lr=args.lr))  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        for aug in ("clerf", "none"):
            L.seed_everything(seed, verbose=False)
            clerf = CLERF(augmentation=aug, head_lr=args.lr, euler_convention="clerf", **common)
            runs.setdefault(f"CLERF (contrastive), aug={aug}", []).append(run(
                f"clerf/{aug}/seed {seed}", clerf, train_pairs, tests, args,
                [StageSwitch(epochs=[args.stage1])]))  # fmt: skip
            L.seed_everything(seed, verbose=False)
            sup = CLERFSupervised(augmentation=aug, euler_convention="clerf", **common)
            runs.setdefault(f"CLERFSupervised, aug={aug}", []).append(
                run(f"supervised/{aug}/seed {seed}", sup, base, tests, args, [])
            )

    print(f"\n{args.train} train / {args.test} test heads at {args.size} px, {args.backbone}, "
          f"{args.epochs} epochs (CLERF: {args.stage1} contrastive + {args.epochs - args.stage1} pose), "
          f"batch {args.batch}, Adam {args.lr}, training seeds {args.seeds} (mean ± std over seeds); "
          f"total {time.time() - t0:.0f} s\n")  # fmt: skip
    print("| method | " + " | ".join(f"{s} geodesic | {s} MAE" for s in _SETS) + " |")
    print("|---|" + "---|---|" * len(_SETS))
    for name, rows in runs.items():
        cells = " | ".join(fmt([r[f"{s}/{m}"] for r in rows], 1) for s in _SETS for m in ("geodesic", "mae"))
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
