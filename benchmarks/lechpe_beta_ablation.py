"""LEC-HPE beta ablation in small: does the clustering loss help on occluded faces?

The paper ablates the weight ``beta`` of ``L_cluster`` and adopts ``beta = 100`` (its
default, the one hpelib uses). Here, on synthetic heads (:mod:`hpelib.data.synthetic`, 300W-LP-like
"frontal" poses) with the renderer's synthetic occluders (glasses, mask, hat, hand, patch):

1. render a training set (half of the scenes drawn with an occluder; a sample counts as
   occluded when the occluder covers enough face pixels), a clean test set and an
   occluded test set (every scene with an occluder);
2. train stage 1 ONCE (angle losses on the non-occluded training samples);
3. for each ``beta`` in ``--betas``: copy the stage-1 model, k-means-initialise the centroids
   on the training embeddings (:class:`hpelib.callbacks.KMeansCentroidInit`), train stage 2
   (angle losses on all samples + ``beta * L_cluster``) with the same seed and data order,
   and test on both sets.

Every beta starts from the same stage-1 weights, so the table isolates the effect of beta.
Prints one Markdown table (MAE = mean of the yaw/pitch/roll MAE, degrees; geodesic error,
degrees). Small budget, CPU: ``python benchmarks/lechpe_beta_ablation.py`` (defaults below);
larger runs: ``--train 8000 --image-size 64 --backbone resnet18 --stage1-epochs 20``.
"""

from __future__ import annotations

import argparse
import copy
import time

import lightning as L
import torch
from torch.utils.data import Dataset

from hpelib.callbacks import KMeansCentroidInit
from hpelib.data.datamodule import HPEDataModule
from hpelib.data.synthetic.head import sample_identity_params
from hpelib.data.synthetic.render import SceneConfig, render_heads, sample_scenes
from hpelib.methods.lechpe import LECHPE

_KEYS = ("image", "rotation", "occluded", "box", "landmarks_2d", "landmarks_visible")


class RenderedHeads(Dataset):
    """Synthetic heads rendered once into memory (uint8 sample dicts)."""

    def __init__(self, n: int, size: int, occlusion_prob: float, seed: int, identities: int = 200) -> None:
        generator = torch.Generator().manual_seed(seed)
        config = SceneConfig(occlusion_prob=occlusion_prob)
        ids = torch.randint(identities, (n,), generator=generator)
        params = sample_identity_params(ids, seed=seed)
        scenes = sample_scenes(n, generator, "frontal", config)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in _KEYS}
        for start in range(0, n, 256):  # chunks keep the renderer's memory small
            chunk = {k: v[start : start + 256] for k, v in scenes.items()}
            out = render_heads(params[start : start + 256], chunk, size, config)
            for k in _KEYS:
                parts[k].append(out[k].cpu())
        self.data = {k: torch.cat(v) for k, v in parts.items()}

    def __len__(self) -> int:
        return int(self.data["image"].shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.data.items()}


def _trainer(epochs: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        num_sanity_val_steps=0, limit_val_batches=0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 10.0, 100.0, 1000.0])
    parser.add_argument("--train", type=int, default=1024)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--stage1-epochs", type=int, default=5)
    parser.add_argument("--stage2-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.time()
    train = RenderedHeads(args.train, args.image_size, 0.5, seed=args.seed)
    clean = RenderedHeads(args.test, args.image_size, 0.0, seed=args.seed + 100)
    occluded = RenderedHeads(args.test, args.image_size, 1.0, seed=args.seed + 200)
    occ_frac = float(train.data["occluded"].float().mean())
    occ_test = float(occluded.data["occluded"].float().mean())
    render_s = time.time() - t0

    def datamodule() -> HPEDataModule:
        return HPEDataModule(
            train=train, test={"clean": clean, "occluded": occluded},
            batch_size=args.batch_size, normalize="imagenet",
        )

    L.seed_everything(args.seed)
    base = LECHPE(
        backbone=args.backbone, num_clusters=args.clusters,
        optimizer=lambda p: torch.optim.Adam(p, lr=args.lr),
    )
    t1 = time.time()
    _trainer(args.stage1_epochs, []).fit(base, datamodule())
    stage1_s = time.time() - t1

    rows = []
    stage1_results = _trainer(1, []).test(base, datamodule(), verbose=False)
    rows.append(("stage 1 only", stage1_results, float("nan"), float("nan")))
    for beta in args.betas:
        L.seed_everything(args.seed)
        model = copy.deepcopy(base)
        model.beta = float(beta)
        model.set_stage(2)
        t2 = time.time()
        trainer = _trainer(args.stage2_epochs, [KMeansCentroidInit(n_init=3, seed=args.seed)])
        trainer.fit(model, datamodule())
        kl = float(trainer.callback_metrics.get("train/cluster_loss", torch.tensor(float("nan"))))
        results = trainer.test(model, datamodule(), verbose=False)
        rows.append((f"beta = {beta:g}", results, time.time() - t2, kl))

    print(
        f"\nLEC-HPE beta ablation: {args.train} training heads ({occ_frac:.0%} occluded), "
        f"{args.test} clean + {args.test} occluded test heads ({occ_test:.0%} flagged), "
        f"{args.image_size} px, backbone {args.backbone}, K = {args.clusters}, stage 1 "
        f"{args.stage1_epochs} epochs ({stage1_s:.0f} s) then stage 2 {args.stage2_epochs} "
        f"epochs per beta; render {render_s:.0f} s; seed {args.seed}\n"
    )
    print(
        "| run | clean MAE | clean geodesic | occluded MAE | occluded geodesic "
        "| last-step L_cluster | stage-2 time (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, results, seconds, kl in rows:
        c, o = results[0], results[1]
        print(
            f"| {name} | {c['test/clean/mae']:.2f} | {c['test/clean/geodesic']:.2f} | "
            f"{o['test/occluded/mae']:.2f} | {o['test/occluded/geodesic']:.2f} | "
            f"{'-' if kl != kl else f'{kl:.4f}'} | {'-' if seconds != seconds else f'{seconds:.0f}'} |"
        )


if __name__ == "__main__":
    main()
