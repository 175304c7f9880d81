"""CLERF's two claims, in small, on synthetic full-range heads (CPU, a few minutes).

* Table 2: contrastive pre-training (CLERF, stage 1 + stage 2) beats the same encoder and
  pose MLP trained end to end on the geodesic loss (``CLERFSupervised``).
* Table 3: the rotate + flip augmentation beats no augmentation.

All runs share the data, the backbone, the number of epochs and the optimiser; the test set
is a synthetic full-range set with CLERF's SA and FA variants (:mod:`hpelib.data.variants`).
Prints one Markdown table (geodesic error and mean Euler MAE in degrees, CLERF convention).

    python benchmarks/clerf_claims.py                 # default budget (~10 min on 2 busy cores)
    python benchmarks/clerf_claims.py --train 256 --test 128 --epochs 2 --stage1 1  # smoke run
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.synthetic.head import sample_identity_params
from hpelib.data.synthetic.render import render_heads, sample_scenes
from hpelib.data.variants import FAVariant, SAVariant
from hpelib.methods.clerf import CLERF, CLERFSupervised, SyntheticPositiveSource, make_positives


class RenderedHeads(Dataset):
    """Synthetic full-range heads rendered once, in batches (identities ``id_range``)."""

    def __init__(self, n: int, size: int, seed: int, id_range: tuple[int, int]) -> None:
        g = torch.Generator().manual_seed(seed)
        images, rotations = [], []
        for start in range(0, n, 256):
            b = min(256, n - start)
            ids = torch.randint(*id_range, (b,), generator=g)
            scene = sample_scenes(b, g, "full_range")
            out = render_heads(sample_identity_params(ids, seed=0), scene, size)
            images.append(out["image"])
            rotations.append(scene["rotation"])
        self.images, self.rotations = torch.cat(images), torch.cat(rotations)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "rotation": self.rotations[i], "index": torch.tensor(i)}


class PrecomputedPositives(Dataset):
    """``k`` generated positives per anchor, rendered up front in batches
    (:func:`make_positives`, the same generator as ``AnchorPositiveDataset``); each item
    draws one of them, so the CPU budget goes to training, not to per-item rendering."""

    def __init__(self, base: RenderedHeads, k: int, size: int, seed: int) -> None:
        self.base, g = base, torch.Generator().manual_seed(seed)
        source = SyntheticPositiveSource(size)
        self.images = torch.stack(
            [torch.cat([make_positives(base.rotations[s:s + 256], source, g)["image"]
                        for s in range(0, len(base), 256)]) for _ in range(k)], dim=1
        )
        self.k = k

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        j = int(torch.randint(0, self.k, ()))
        item["positive"] = {"image": self.images[i, j], "rotation": item["rotation"].clone()}
        return item


def run(name: str, module: L.LightningModule, train: Dataset, tests: dict[str, Dataset],
        epochs: int, batch: int, callbacks: list) -> dict[str, float]:
    dm = HPEDataModule(train=train, test=tests, batch_size=batch, eval_batch_size=128, normalize="symmetric")
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        limit_val_batches=0,
    )
    t0 = time.time()
    trainer.fit(module, dm)
    results = trainer.test(module, dm, verbose=False)
    merged = {k: v for r in results for k, v in r.items()}
    print(f"[{name}] {time.time() - t0:.0f} s", flush=True)
    return merged


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
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    from hpelib.callbacks import StageSwitch

    t0 = time.time()
    base = RenderedHeads(args.train, args.size, args.seed, (0, 2000))
    train_pairs = PrecomputedPositives(base, 2, args.size, args.seed + 1)
    test = RenderedHeads(args.test, args.size, args.seed + 2, (5000, 6000))
    tests = {"original": test, "SA": SAVariant(test), "FA": FAVariant(test, seed=args.seed)}
    print(f"data: {time.time() - t0:.0f} s", flush=True)

    common = dict(backbone=args.backbone, embedding_dim=args.embedding,
                  optimizer=lambda p: torch.optim.Adam(p, lr=args.lr))
    runs = []
    for aug in ("clerf", "none"):
        L.seed_everything(args.seed)
        clerf = CLERF(augmentation=aug, head_lr=args.lr, euler_convention="clerf", **common)
        runs.append((f"CLERF (contrastive), aug={aug}", run(
            f"clerf/{aug}", clerf, train_pairs, tests, args.epochs, args.batch, [StageSwitch(epochs=[args.stage1])])))
        L.seed_everything(args.seed)
        sup = CLERFSupervised(augmentation=aug, euler_convention="clerf", **common)
        runs.append((f"CLERFSupervised, aug={aug}", run(
            f"supervised/{aug}", sup, base, tests, args.epochs, args.batch, [])))

    sets = ("original", "SA", "FA")
    print(f"\n{args.train} train / {args.test} test heads at {args.size} px, {args.backbone}, "
          f"{args.epochs} epochs (CLERF: {args.stage1} contrastive + {args.epochs - args.stage1} pose), "
          f"batch {args.batch}, Adam {args.lr}, seed {args.seed}; total {time.time() - t0:.0f} s\n")
    print("| method | " + " | ".join(f"{s} geodesic | {s} MAE" for s in sets) + " |")
    print("|---|" + "---|---|" * len(sets))
    for name, r in runs:
        cells = " | ".join(f"{r[f'test/{s}/geodesic']:.1f} | {r[f'test/{s}/mae']:.1f}" for s in sets)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
