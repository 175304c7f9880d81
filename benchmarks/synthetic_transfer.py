"""Do hpelib's procedural heads teach anything about real faces? A transfer matrix and why.

The same 6D model (SixD, geodesic loss, the half-width ResNet-10 from scratch, 64 px, batch
32, AdamW 1e-3, ``--steps`` steps, mirror augmentation) trained twice:

* **synthetic**: procedural heads alone (:class:`~hpelib.data.synthetic.SyntheticHeads`,
  ``--preset``, default ``frontal``: AFLW2000's pose range);
* **real**: the training folds of an AFLW2000 copy (fold ``--fold`` of
  :func:`hpelib.data.splits.kfold_indices` held out, as in ``benchmarks/real_faces.py``);

and each scored on the held real fold and on a synthetic test set (rows: trained on; columns:
tested on; geodesic error, degrees); the held real faces are scored twice: at AFLW2000's
crop and re-cropped so that the face sits in the crop as the synthetic heads do (same
landmark-box size and centre: the framing question). Then, for the model trained on synthetic heads, what it
predicts on real faces: the Pearson correlation of its predicted yaw, pitch and roll with the
true ones (300W-LP convention; near 1 = it reads the pose but with an offset or scale, near 0 =
it sees nothing it learnt, below 0 = a convention disagreement), and the spread of its
predictions. Finally the framing of both data: where the face's landmark box sits in the
crop (centre offset and size, as fractions of the crop side) and the pose spread of each set.

    python benchmarks/synthetic_transfer.py
    python benchmarks/synthetic_transfer.py --steps 1200 --preset full_range
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aflw_dev_plain_loop import DEFAULT_ROOT  # noqa: E402
from real_faces import HALF_RESNET10  # noqa: E402

from hpelib.data.datamodule import HPEDataModule  # noqa: E402
from hpelib.data.datasets import AFLW2000  # noqa: E402
from hpelib.data.datasets.base import CropRule  # noqa: E402
from hpelib.data.splits import kfold_indices  # noqa: E402
from hpelib.data.synthetic import PRESETS, SyntheticHeads  # noqa: E402
from hpelib.methods import SixD  # noqa: E402
from hpelib.metrics import pose_errors  # noqa: E402
from hpelib.rotation import rotation_to_euler  # noqa: E402


def train(dataset: Dataset, args: argparse.Namespace) -> tuple[SixD, HPEDataModule]:
    L.seed_everything(args.seed, verbose=False)
    model = SixD(
        backbone="resnet18", pretrained=False, backbone_kwargs=dict(HALF_RESNET10),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
    )  # fmt: skip
    data = HPEDataModule(train=dataset, batch_size=32, seed=args.seed, augmentation="mirror")
    L.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    ).fit(model, data)  # fmt: skip
    return model.eval(), data


@torch.no_grad()
def predict(
    model: SixD, data: HPEDataModule, dataset: Dataset
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted (N, 3, 3), true (N, 3, 3))`` rotations on every item of ``dataset``."""
    preds, trues = [], []
    for first in range(0, len(dataset), 128):
        items = [dataset[i] for i in range(first, min(first + 128, len(dataset)))]
        batch = data.prepare_images(
            {"image": torch.stack([it["image"] for it in items])}, train=False
        )
        preds.append(model(batch["image"])["rotation"].float())
        trues.append(torch.stack([it["rotation"] for it in items]).float())
    return torch.cat(preds), torch.cat(trues)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))


def framing(dataset: Dataset, n: int) -> dict[str, float]:
    """Landmark box of the face in the crop (fractions of the crop side) and pose spread."""
    centre, size, angles = [], [], []
    for i in range(min(n, len(dataset))):
        item = dataset[i]
        side = item["image"].shape[-1]
        pts = item["landmarks_2d"][item["landmarks_visible"]]
        lo, hi = pts.min(0).values, pts.max(0).values
        centre.append(((lo + hi) / 2 - side / 2) / side)
        size.append((hi - lo).max() / side)
        angles.append(rotation_to_euler(item["rotation"][None].double(), "300wlp")[0])
    c, s = torch.stack(centre), torch.stack(size)
    a = torch.rad2deg(torch.stack(angles).float())
    return {
        "centre x": float(c[:, 0].mean()), "centre y": float(c[:, 1].mean()),
        "box size": float(s.mean()), "box size std": float(s.std()),
        "pitch std": float(a[:, 0].std()), "yaw std": float(a[:, 1].std()),
        "roll std": float(a[:, 2].std()),
    }  # fmt: skip


def reframing_rule(box_size: float, centre_x: float, centre_y: float) -> CropRule:
    """A crop rule that frames a face like the synthetic heads: the 68-landmark box (the
    dataset's ``box`` with ``box_source="pt3d_68"``) ``box_size`` of the crop side, its
    centre at ``(centre_x, centre_y)`` crop sides from the crop centre."""

    def rule(box: np.ndarray, image_wh: tuple[int, int], rng: object) -> np.ndarray:
        side = max(box[2] - box[0], box[3] - box[1]) / box_size
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = cx - side * (0.5 + centre_x), cy - side * (0.5 + centre_y)
        return np.array([x0, y0, x0 + side, y0 + side])

    return rule


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="an AFLW2000 folder")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--preset", choices=PRESETS, default="frontal")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    framed = AFLW2000(args.root, image_size=64, train=False)
    folds = kfold_indices(len(framed), 5, 0)
    test_idx = folds[args.fold].tolist()
    train_idx = sorted(i for f, idx in enumerate(folds) if f != args.fold for i in idx.tolist())
    real_train = Subset(AFLW2000(args.root, image_size=64, train=True, seed=args.seed), train_idx)
    real_test = Subset(framed, test_idx)
    synth_train = SyntheticHeads(
        num_samples=4096, image_size=64, preset=args.preset, split="train", seed=args.seed
    )
    synth_test = SyntheticHeads(
        num_samples=512, image_size=64, preset=args.preset, split="test", seed=args.seed
    )
    synth_frame = framing(synth_test, 512)
    rule = reframing_rule(synth_frame["box size"], synth_frame["centre x"], synth_frame["centre y"])
    reframed = AFLW2000(args.root, image_size=64, train=False, box_source="pt3d_68", crop_rule=rule)
    tests = {
        "real (held fold)": real_test,
        "real, framed like the heads": Subset(reframed, test_idx),
        f"synthetic ({args.preset})": synth_test,
    }
    print(
        f"`python benchmarks/synthetic_transfer.py {' '.join(argv or sys.argv[1:])}`: SixD geodesic, "
        f"half-width ResNet-10, 64 px, batch 32, {args.steps} steps; AFLW2000 at {args.root}, "
        f"fold {args.fold} held ({len(test_idx)} faces), {len(train_idx)} training faces; "
        f"geodesic error (degrees)\n"
    )
    print("| trained on | " + " | ".join(tests) + " |")
    print("|---|" + "---:|" * len(tests))
    synthetic_on_real: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, dataset in (("real faces", real_train), (f"synthetic ({args.preset})", synth_train)):
        model, data = train(dataset, args)
        cells = []
        for test_name, test in tests.items():
            pred, true = predict(model, data, test)
            cells.append(f"{float(pose_errors(pred, true, '300wlp')['geodesic'].mean()):.2f}")
            if name.startswith("synthetic") and test_name.startswith("real"):
                synthetic_on_real[test_name] = (pred, true)
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nThe synthetic-trained model on the held real faces (300W-LP angles, degrees):\n")
    print(
        "| real faces | angle | correlation with truth | predicted mean | predicted std | true mean | true std |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for test_name, (pred_r, true_r) in synthetic_on_real.items():
        pred, true = (
            torch.rad2deg(rotation_to_euler(r.double(), "300wlp")).float() for r in (pred_r, true_r)
        )
        for k, angle in enumerate(("pitch", "yaw", "roll")):
            print(
                f"| {test_name} | {angle} | {correlation(pred[:, k], true[:, k]):.2f} | "
                f"{float(pred[:, k].mean()):.1f} | {float(pred[:, k].std()):.1f} | "
                f"{float(true[:, k].mean()):.1f} | {float(true[:, k].std()):.1f} |"
            )
    print("\nFraming (landmark box in the crop, fractions of the crop side; 512 items each):\n")
    stats = {
        "real (AFLW2000 crop)": framing(framed, 512),
        "real, framed like the heads": framing(reframed, 512),
        f"synthetic ({args.preset})": synth_frame,
    }
    keys = list(next(iter(stats.values())))
    print("| data | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name, row in stats.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
