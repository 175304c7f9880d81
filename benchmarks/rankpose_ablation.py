"""RankPose ablation in small: output layer (linear / cosine / arccos) x ranking loss.

The paper (Dai et al., 2020, ablation table) compares, on the same data and schedule, MSE
with a plain linear output, MSE with the Cosine and the Arccos output layers, and the
ranking loss added to MSE (with and without the bounded output). This script reruns those
directions on synthetic heads (:mod:`hpelib.data.synthetic`, 300W-LP-like "frontal" poses):

1. render a training set whose identities repeat (``--identities`` people, ``--train``
   images) and a test set of other identities, once, into memory;
2. for every variant: the same seed, the same same-identity pairs
   (:class:`hpelib.data.pairs.IdentityPairs`, same seed, so every variant sees the same
   image pairs in the same order), the same backbone, optimiser (Adam), cosine decay and
   number of epochs; MSE-only variants use ``beta = 1`` (both images of each pair still
   count in the MSE, so the only difference is the ranking term);
3. test MAE (mean of yaw/pitch/roll, degrees) and geodesic error (degrees).

Prints one Markdown table. Small budget on CPU: ``python benchmarks/rankpose_ablation.py``
(defaults below, 1-1.5 min per variant on one CPU thread; Adam 3e-3 rather than the paper's
1e-3 so that 6 short epochs learn something); larger:
``--train 8000 --epochs 30 --backbone resnet18 --lr 1e-3 --batch 64``. One seed per run: rerun
with ``--seed`` to see how much of a difference is noise.
"""

from __future__ import annotations

import argparse
import math
import time

import lightning as L
import torch
from torch.utils.data import Dataset

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.pairs import IdentityPairs
from hpelib.data.synthetic.head import sample_identity_params
from hpelib.data.synthetic.render import SceneConfig, render_heads, sample_scenes
from hpelib.methods.rankpose import RankPose

_KEYS = ("image", "rotation")

#: name -> (output layer, beta). beta = 1: MSE only; beta = 0.5: the paper's MSE + ranking.
VARIANTS: dict[str, tuple[str, float]] = {
    "MSE": ("linear", 1.0),
    "MSE+Cosine": ("cosine", 1.0),
    "MSE+Arccos": ("arccos", 1.0),
    "Ranking+MSE": ("linear", 0.5),
    "Ranking+MSE+Cosine": ("cosine", 0.5),
    "Ranking+MSE+Arccos": ("arccos", 0.5),
}


class RenderedHeads(Dataset):
    """Synthetic heads of ``identities`` people (ids offset by ``first_identity``) rendered
    once into memory; ``identities`` attribute for :class:`IdentityPairs`."""

    def __init__(self, n: int, size: int, identities: int, first_identity: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        config = SceneConfig()
        ids = first_identity + torch.randint(identities, (n,), generator=generator)
        params = sample_identity_params(ids, seed=0)
        scenes = sample_scenes(n, generator, "frontal", config)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in _KEYS}
        for start in range(0, n, 256):  # chunks keep the renderer's memory small
            chunk = {k: v[start : start + 256] for k, v in scenes.items()}
            out = render_heads(params[start : start + 256], chunk, size, config)
            for k in _KEYS:
                parts[k].append(out[k].cpu())
        self.data = {k: torch.cat(v) for k, v in parts.items()}
        self.identities = ids

    def __len__(self) -> int:
        return int(self.data["image"].shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**{k: v[i] for k, v in self.data.items()}, "identity": self.identities[i]}


def run_variant(
    name: str, train: Dataset, test: Dataset, args: argparse.Namespace
) -> dict[str, float]:
    output_layer, beta = VARIANTS[name]
    L.seed_everything(args.seed, verbose=False)
    dm = HPEDataModule(
        train=IdentityPairs(train, seed=args.seed),
        test={"synthetic": test},
        batch_size=args.batch,
        eval_batch_size=128,
        normalize="imagenet",
    )
    model = RankPose(
        backbone=args.backbone,
        pretrained=False,
        output_layer=output_layer,
        beta=beta,
        optimizer=lambda p: torch.optim.Adam(p, lr=args.lr),
        scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=args.epochs),
    )
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    result = trainer.test(model, dm, verbose=False)[0]
    return {
        "yaw": result["test/synthetic/yaw_mae"],
        "pitch": result["test/synthetic/pitch_mae"],
        "roll": result["test/synthetic/roll_mae"],
        "mae": result["test/synthetic/mae"],
        "geodesic": result["test/synthetic/geodesic"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--train", type=int, default=1024)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--identities", type=int, default=64, help="people in the training set")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16, help="pairs per batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: shared CPUs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    train = RenderedHeads(args.train, args.image_size, args.identities, 0, seed=args.seed)
    test = RenderedHeads(args.test, args.image_size, max(args.identities // 4, 1), 10_000, seed=args.seed + 1)
    print(f"rendered {len(train)} train / {len(test)} test images in {time.perf_counter() - start:.1f} s", flush=True)

    rows = []
    for name in args.variants:
        metrics = run_variant(name, train, test, args)
        print(f"{name}: {metrics}", flush=True)
        rows.append((name, metrics))

    print()
    print(
        f"RankPose ablation: {args.train} synthetic 'frontal' training images of {args.identities} "
        f"identities ({args.train} pairs/epoch), {args.test} test images of unseen identities, "
        f"{args.image_size} px, {args.backbone}, Adam {args.lr:g} + cosine decay, "
        f"{args.epochs} epochs, batch {args.batch} pairs, seed {args.seed}. Errors in degrees."
    )
    print()
    print("| variant | output | loss | yaw MAE | pitch MAE | roll MAE | MAE | geodesic | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, m in rows:
        layer, beta = VARIANTS[name]
        loss = "MSE" if beta == 1.0 else f"{beta:g} MSE + {1 - beta:g} ranking"
        print(
            f"| {name} | {layer} | {loss} | {m['yaw']:.2f} | {m['pitch']:.2f} | {m['roll']:.2f} | "
            f"{m['mae']:.2f} | {m['geodesic']:.2f} | {m['seconds']:.0f} |"
        )
    assert all(math.isfinite(m["mae"]) for _, m in rows)


if __name__ == "__main__":
    main()
