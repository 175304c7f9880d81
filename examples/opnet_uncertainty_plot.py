"""Is OpNet's rotation uncertainty useful? Uncertainty norm vs error on held-out synthetic heads.

Renders a held-out synthetic set (half of the faces with an occluder), predicts with an OpNet
and writes a scatter plot like the paper's (rotation uncertainty ``sqrt(tr Sigma_rot)`` vs the
geodesic error), printing the Spearman rank correlation and the mean uncertainty of occluded
vs clean faces as a Markdown table.

    # evaluate a model trained with `hpelib fit --config examples/opnet.yaml`
    python examples/opnet_uncertainty_plot.py --ckpt runs/opnet/checkpoints/last.ckpt
    # or train a small one here first (synthetic data, CPU, a few minutes)
    python examples/opnet_uncertainty_plot.py --train-samples 3072 --epochs 8

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
from hpelib.data.synthetic.head import sample_identity_params
from hpelib.data.synthetic.render import SceneConfig, render_heads, sample_scenes
from hpelib.methods.opnet import OpNet, WarmupStepLR
from hpelib.rotation import geodesic_distance

_LABEL_KEYS = ("image", "rotation", "box", "landmarks_2d", "landmarks_3d", "landmarks_visible",
               "head_center", "head_size", "occluded")  # fmt: skip


class RenderedHeads(Dataset):
    """Synthetic heads rendered once into memory (identities ``id_offset + i % identities``)."""

    def __init__(
        self, n: int, image_size: int, seed: int, occlusion_prob: float, preset: str = "frontal",
        identities: int = 200, id_offset: int = 0, chunk: int = 256,
    ) -> None:  # fmt: skip
        g = torch.Generator().manual_seed(seed)
        cfg = SceneConfig(occlusion_prob=occlusion_prob)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in _LABEL_KEYS}
        parts["occlusion_fraction"] = []
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            ids = id_offset + torch.arange(start, start + m) % identities
            out = render_heads(sample_identity_params(ids), sample_scenes(m, g, preset, cfg), image_size, cfg)
            for k in parts:
                parts[k].append(out[k])
        self.data = {k: torch.cat(v) for k, v in parts.items()}

    def __len__(self) -> int:
        return len(self.data["image"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {k: self.data[k][i] for k in _LABEL_KEYS}
        item["index"] = torch.tensor(i)
        return item


def _datamodule(train: Dataset | None, test: Dataset, batch_size: int) -> HPEDataModule:
    return HPEDataModule(
        train=train, val=test, test={"synthetic_occluded": test}, batch_size=batch_size,
        augmentation="opnet" if train is not None else None, grayscale=True,
        normalize=[[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]],  # OpNet's pixels: x - 0.5 in [-0.5, 0.5]
    )  # fmt: skip


def train_model(args: argparse.Namespace, test: Dataset) -> OpNet:
    train = RenderedHeads(args.train_samples, args.image_size, seed=1, occlusion_prob=0.3, id_offset=1000)
    model = OpNet(
        backbone=args.backbone,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        scheduler=lambda o: WarmupStepLR(o),
        scheduler_interval="step",
        nll_total_weight=args.nll_total_weight,
    )
    swa = L.pytorch.callbacks.StochasticWeightAveraging(swa_lrs=1e-4, swa_epoch_start=2 / 3, annealing_epochs=1)
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[swa],
        default_root_dir=args.out.parent,
    )  # fmt: skip
    trainer.fit(model, _datamodule(train, test, args.batch_size))
    return model


@torch.no_grad()
def predict(model: OpNet, test: Dataset, batch_size: int) -> dict[str, torch.Tensor]:
    dm = _datamodule(None, test, batch_size)
    dm.setup("test")
    model.eval()
    rows: dict[str, list[torch.Tensor]] = {"error": [], "uncertainty": [], "occluded": [], "fraction": []}
    for batch in dm.test_dataloader()[0]:
        batch = dm.prepare_images(batch, train=False)
        out = model(batch["image"])
        rows["error"].append(torch.rad2deg(geodesic_distance(out["rotation"], batch["rotation"])))
        rows["uncertainty"].append(torch.rad2deg(out["rotation_uncertainty"]))
        rows["occluded"].append(batch["occluded"])
    rows["fraction"] = [test.data["occlusion_fraction"]]
    return {k: torch.cat(v) for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None, help="OpNet checkpoint (else train here)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--test-samples", type=int, default=512)
    parser.add_argument("--train-samples", type=int, default=3072)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--out", type=Path, default=Path("runs/opnet/uncertainty_vs_error.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--nll-total-weight", type=float, default=0.01, help="beta_total (paper: 0.01)"
    )
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    L.seed_everything(args.seed)
    # Held-out identities (ids 0-199; training uses 1000+), half of the faces occluded.
    test = RenderedHeads(args.test_samples, args.image_size, seed=12345, occlusion_prob=0.5)
    model = OpNet.load_from_checkpoint(args.ckpt, map_location="cpu") if args.ckpt else train_model(args, test)
    r = predict(model, test, args.batch_size)
    rho, p = spearmanr(r["uncertainty"].numpy(), r["error"].numpy())
    occ = r["occluded"].bool()
    rho_occ, _ = spearmanr(r["uncertainty"].numpy(), r["fraction"].numpy())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(r["uncertainty"][~occ], r["error"][~occ], s=6, alpha=0.6, label="clean")
    ax.scatter(r["uncertainty"][occ], r["error"][occ], s=6, alpha=0.6, label="occluded")
    ax.set_xlabel("rotation uncertainty sqrt(tr Sigma) [deg]")
    ax.set_ylabel("geodesic error [deg]")
    ax.set_yscale("log")
    ax.set_title(f"OpNet uncertainty vs error (Spearman rho = {rho:.2f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=150)

    print("| quantity | value |\n|---|---|")
    print(f"| test samples (occluded) | {len(occ)} ({int(occ.sum())}) |")
    print(f"| geodesic error, mean [deg] | {r['error'].mean():.2f} |")
    print(f"| Spearman rho(uncertainty, error) | {rho:.3f} (p = {p:.1e}) |")
    print(f"| Spearman rho(uncertainty, occluded fraction) | {rho_occ:.3f} |")
    print(f"| mean uncertainty clean / occluded [deg] | {r['uncertainty'][~occ].mean():.2f} / "
          f"{r['uncertainty'][occ].mean():.2f} |")  # fmt: skip
    print(f"| mean error clean / occluded [deg] | {r['error'][~occ].mean():.2f} / {r['error'][occ].mean():.2f} |")
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
