"""RankPose ablation in small: output layer (linear / cosine / arccos) x ranking loss.

The paper (Dai et al., 2020, ablation table) compares, on the same data and schedule, MSE
with a plain linear output, MSE with the Cosine and the Arccos output layers, and the
ranking loss added to MSE (with and without the bounded output). This script reruns those
directions on synthetic heads (:mod:`hpelib.data.synthetic`, 300W-LP-like "frontal" poses):

1. render a training set whose identities repeat (``--identities`` people, ``--train``
   images; :class:`hpelib.data.synthetic.SyntheticHeads`, split ``train``) and a test set of
   other identities (split ``test``), once, into memory;
2. for every variant: the same seed, the same same-identity pairs
   (:class:`hpelib.data.pairs.IdentityPairs`, same seed, so every variant sees the same
   image pairs in the same order), the same backbone, optimiser (Adam), cosine decay and
   number of epochs, and the module's default loss (``L_MSE + L_ranking``, 1 : 1,
   ``mse_form: per_branch``); MSE-only variants use ``ranking_weight = 0`` (both images of
   each pair still count in the MSE, so the only difference is the ranking term);
   ``--mse-form summed_angles --mse-weight 0.5 --ranking-weight 0.5`` gives the
   ``beta = 0.5`` form of the longer-training table on the docs page;
3. test MAE (mean of yaw/pitch/roll, degrees) and geodesic error (degrees), and the share
   of test labels the trained output layer can produce at all (``representable %``: one
   unit feature's cosines fill an ellipsoid, so the bounded layers cannot give some angle
   combinations; :meth:`hpelib.methods.rankpose.AngleOutput.representable`).

Prints one Markdown table. Small budget on CPU: ``python benchmarks/rankpose_ablation.py``
(defaults below, 1-1.5 min per variant on one CPU thread; Adam 3e-3 rather than the paper's
1e-3 so that 6 short epochs learn something); larger:
``--train 8000 --epochs 30 --backbone resnet18 --lr 1e-3 --batch 64``. ``--seeds 0 1 2``
repeats every variant with other training seeds (initialisation, pair draws, order; the
data stay fixed) and reports mean +/- std, which tells a direction from noise.
"""

from __future__ import annotations

import argparse
import math
import time

import lightning as L
import torch
from ablation import fmt, quiet_trainer
from torch.utils.data import Dataset

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.pairs import IdentityPairs
from hpelib.data.synthetic import SyntheticHeads
from hpelib.methods.rankpose import MSE_FORMS, RankPose
from hpelib.rotation import rotation_to_euler

#: name -> (output layer, with the ranking term, cosine scale alpha). alpha = pi/2 is the
#: paper's cosine scale, pi (+-180 degrees) the released code's, which leaves the bounded
#: output headroom beyond the +-90-degree yaws.
VARIANTS: dict[str, tuple[str, bool, float]] = {
    "MSE": ("linear", False, math.pi / 2),
    "MSE+Cosine": ("cosine", False, math.pi / 2),
    "MSE+Arccos": ("arccos", False, math.pi / 2),
    "Ranking+MSE": ("linear", True, math.pi / 2),
    "Ranking+MSE+Cosine": ("cosine", True, math.pi / 2),
    "Ranking+MSE+Arccos": ("arccos", True, math.pi / 2),
    "MSE+Cosine180": ("cosine", False, math.pi),
    "Ranking+MSE+Cosine180": ("cosine", True, math.pi),
}
_METRICS = ("yaw", "pitch", "roll", "mae", "geodesic")


def run_variant(
    name: str, train: Dataset, test: Dataset, args: argparse.Namespace, seed: int
) -> dict[str, float]:
    output_layer, ranking, alpha = VARIANTS[name]
    L.seed_everything(seed, verbose=False)
    dm = HPEDataModule(
        train=IdentityPairs(train, seed=seed),
        test={"synthetic": test},
        batch_size=args.batch,
        eval_batch_size=128,
        normalize="imagenet",
    )
    model = RankPose(
        backbone=args.backbone,
        pretrained=False,
        output_layer=output_layer,
        alpha=alpha,
        mse_weight=args.mse_weight,
        ranking_weight=args.ranking_weight if ranking else 0.0,
        mse_form=args.mse_form,
        optimizer=lambda p: torch.optim.Adam(p, lr=args.lr),
        scheduler=lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=args.epochs),
    )
    trainer = quiet_trainer(args.epochs)
    start = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - start
    result = trainer.test(model, dm, verbose=False)[0]
    out = {
        k: result[f"test/synthetic/{k if k in ('mae', 'geodesic') else k + '_mae'}"]
        for k in _METRICS
    }
    # Share of test labels the trained output layer can produce at all (an upper bound: the
    # cosines of one unit feature fill an ellipsoid, see AngleOutput.representable).
    labels = torch.stack([test[i]["rotation"] for i in range(len(test))])
    angles = rotation_to_euler(labels, model.euler_convention)
    out["representable"] = 100.0 * float(model.model.head.representable(angles).double().mean())
    return {**out, "seconds": seconds}


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
    parser.add_argument("--mse-form", default="per_branch", choices=list(MSE_FORMS))
    parser.add_argument("--mse-weight", type=float, default=1.0)
    parser.add_argument(
        "--ranking-weight", type=float, default=1.0, help="of the Ranking+ variants"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the rendered sets")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: shared CPUs)")
    parser.add_argument(
        "--ranges", type=float, nargs=3, metavar=("PITCH", "YAW", "ROLL"), default=None,
        help="uniform pose ranges in degrees instead of the 'frontal' preset (40 90 35)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    preset = "frontal" if args.ranges is None else tuple(args.ranges)
    common = dict(image_size=args.image_size, preset=preset, seed=args.data_seed)
    train = SyntheticHeads(args.train, split="train", num_identities=args.identities, **common)
    test = SyntheticHeads(
        args.test, split="test", num_identities=max(args.identities // 4, 1), **common
    )
    print(
        f"rendered {len(train)} train / {len(test)} test images in {time.perf_counter() - start:.1f} s",
        flush=True,
    )

    rows = []
    for name in args.variants:
        runs = []
        for seed in args.seeds:
            runs.append(run_variant(name, train, test, args, seed))
            print(f"{name} seed {seed}: {runs[-1]}", flush=True)
        rows.append((name, runs))

    print()
    print(
        f"RankPose ablation: {args.train} synthetic {preset!r} training images of {args.identities} "
        f"identities ({args.train} pairs/epoch), {args.test} test images of unseen identities, "
        f"{args.image_size} px, {args.backbone}, Adam {args.lr:g} + cosine decay, "
        f"{args.epochs} epochs, batch {args.batch} pairs, mse_form {args.mse_form}, "
        f"training seeds {args.seeds} "
        f"(mean ± std over seeds). Errors in degrees."
    )
    print()
    print(
        "| variant | output (alpha) | loss | yaw MAE | pitch MAE | roll MAE | MAE | geodesic | representable % | train s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in rows:
        layer, ranking, alpha = VARIANTS[name]
        if layer == "cosine":
            layer = f"cosine ({math.degrees(alpha):.0f})"
        mse = "MSE" if args.mse_weight == 1.0 else f"{args.mse_weight:g} MSE"
        loss = f"{mse} + {args.ranking_weight:g} ranking" if ranking else mse
        cells = " | ".join(fmt([r[k] for r in runs]) for k in (*_METRICS, "representable"))
        seconds = sum(r["seconds"] for r in runs) / len(runs)
        print(f"| {name} | {layer} | {loss} | {cells} | {seconds:.0f} |")
    assert all(math.isfinite(r["mae"]) for _, runs in rows for r in runs)


if __name__ == "__main__":
    main()
