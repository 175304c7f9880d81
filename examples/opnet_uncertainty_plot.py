"""Is OpNet's rotation uncertainty useful? Uncertainty norm vs error on held-out synthetic heads.

Renders a held-out synthetic test set (frontal poses, identities never seen in training, half
of the scenes with one of the renderer's occluders) and a heavily occluded copy of the same
faces (:class:`~hpelib.data.variants.OccludedVariant`: 3-5 random shapes, each 15-40 % of the
face box), predicts with an OpNet and

* writes a scatter plot like the paper's (rotation uncertainty ``sqrt(tr Sigma_rot)`` vs
  geodesic error) of both sets;
* prints a Markdown table: Spearman rank correlation of uncertainty and error (over both sets
  and within the original set), mean error and uncertainty per set, and the share of faces
  whose uncertainty rises when the same face is heavily occluded (a paired comparison).

    # evaluate a model trained with `hpelib fit --config examples/opnet.yaml`
    python examples/opnet_uncertainty_plot.py --ckpt runs/opnet/checkpoints/last.ckpt
    # or train a small one here first (synthetic data, CPU, about 10 minutes)
    python examples/opnet_uncertainty_plot.py --train-samples 8192 --epochs 24

Training uses the OpNet augmentation plus random occluders on ``--train-occlusion`` of the
samples (the paper's point: augmentation is what teaches the model which inputs are hard).
The image size of the checkpoint's training data must match ``--image-size``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from scipy.stats import spearmanr
from torch.utils.data import Dataset

from hpelib.data.datamodule import HPEDataModule
from hpelib.data.synthetic import SyntheticHeads
from hpelib.data.transforms import build_augmentation
from hpelib.data.variants import OccludedVariant
from hpelib.methods.opnet import OpNet, WarmupStepLR
from hpelib.rotation import geodesic_distance

SETS = ("original", "heavily occluded")


def _datamodule(
    train: Dataset | None, tests: dict[str, Dataset], batch_size: int, occlusion: float = 0.0
) -> HPEDataModule:
    augmentation = build_augmentation("opnet", occlusion=occlusion) if train is not None else None
    return HPEDataModule(
        train=train, val=tests[SETS[0]], test=tests, batch_size=batch_size,
        augmentation=augmentation, grayscale=True,
        normalize=[[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]],  # OpNet's pixels: x - 0.5 in [-0.5, 0.5]
    )  # fmt: skip


def train_model(args: argparse.Namespace, tests: dict[str, Dataset]) -> OpNet:
    train = SyntheticHeads(
        args.train_samples, args.image_size, preset="frontal", split="train", seed=args.data_seed,
        occlusion_prob=0.3,
    )  # fmt: skip
    model = OpNet(
        backbone=args.backbone,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        scheduler=lambda o: WarmupStepLR(o),
        scheduler_interval="step",
        nll_total_weight=args.nll_total_weight,
    )
    swa = L.pytorch.callbacks.StochasticWeightAveraging(
        swa_lrs=1e-4, swa_epoch_start=2 / 3, annealing_epochs=1
    )
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[swa],
        default_root_dir=args.out.parent,
    )  # fmt: skip
    trainer.fit(model, _datamodule(train, tests, args.batch_size, args.train_occlusion))
    return model


@torch.no_grad()
def predict(model: OpNet, tests: dict[str, Dataset], batch_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per test set: geodesic ``error`` and ``uncertainty`` in degrees, ``(N,)`` each."""
    dm = _datamodule(None, tests, batch_size)
    dm.setup("test")
    model.eval()
    results = {}
    for name, loader in zip(tests, dm.test_dataloader(), strict=True):
        rows: dict[str, list[torch.Tensor]] = {"error": [], "uncertainty": []}
        for batch in loader:
            batch = dm.prepare_images(batch, train=False)
            out = model(batch["image"])
            rows["error"].append(torch.rad2deg(geodesic_distance(out["rotation"], batch["rotation"])))
            rows["uncertainty"].append(torch.rad2deg(out["rotation_uncertainty"]))
        results[name] = {k: torch.cat(v) for k, v in rows.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="OpNet checkpoint (else train here)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--test-samples", type=int, default=512)
    parser.add_argument("--train-samples", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--train-occlusion", type=float, default=0.5,
                        help="share of training samples given random occluders")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("runs/opnet/uncertainty_vs_error.png"))
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the rendered sets")
    parser.add_argument("--nll-total-weight", type=float, default=0.01, help="beta_total (paper: 0.01)")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    L.seed_everything(args.seed)
    # Held-out identities (the test split's identities are disjoint from the training split's).
    original = SyntheticHeads(
        args.test_samples, args.image_size, preset="frontal", split="test", seed=args.data_seed,
        occlusion_prob=0.5,
    )  # fmt: skip
    heavy = OccludedVariant(original, seed=args.data_seed, num_shapes=(3, 5), area=(0.15, 0.4))
    tests = dict(zip(SETS, (original, heavy), strict=True))
    model = OpNet.load_from_checkpoint(args.ckpt, map_location="cpu") if args.ckpt else train_model(args, tests)
    r = predict(model, tests, args.batch_size)
    both = {k: torch.cat([r[s][k] for s in SETS]) for k in ("error", "uncertainty")}
    rho, p = spearmanr(both["uncertainty"].numpy(), both["error"].numpy())
    rho_orig, p_orig = spearmanr(r[SETS[0]]["uncertainty"].numpy(), r[SETS[0]]["error"].numpy())
    rises = (r[SETS[1]]["uncertainty"] > r[SETS[0]]["uncertainty"]).float().mean()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name in SETS:
        ax.scatter(r[name]["uncertainty"], r[name]["error"], s=6, alpha=0.6, label=name)
    ax.set_xlabel("rotation uncertainty sqrt(tr Sigma) [deg]")
    ax.set_ylabel("geodesic error [deg]")
    ax.set_yscale("log")
    ax.set_title(f"OpNet uncertainty vs error (Spearman rho = {rho:.2f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=150)

    print("| quantity | value |\n|---|---|")
    print(f"| test faces per set | {len(r[SETS[0]]['error'])} |")
    print(f"| Spearman rho(uncertainty, error), both sets | {rho:.3f} (p = {p:.1e}) |")
    print(f"| Spearman rho(uncertainty, error), original set | {rho_orig:.3f} (p = {p_orig:.1e}) |")
    print(" | ".join(["| mean error original / heavily occluded [deg]"]
                     + [" / ".join(f"{r[s]['error'].mean():.2f}" for s in SETS)]) + " |")  # fmt: skip
    print(" | ".join(["| mean uncertainty original / heavily occluded [deg]"]
                     + [" / ".join(f"{r[s]['uncertainty'].mean():.2f}" for s in SETS)]) + " |")  # fmt: skip
    print(f"| faces whose uncertainty rises when heavily occluded | {rises:.1%} |")
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
