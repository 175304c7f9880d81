"""Every hpelib method on real faces: k-fold cross-validation on an AFLW2000 folder.

What: each method trained from scratch on the training folds of AFLW2000 (the development
copy ``AFLW2000-dev``: 979 faces after the protocol's 99-degree filter) and scored on the
held-out fold with :func:`hpelib.metrics.pose_errors` (300W-LP convention: pitch, yaw, roll;
LEC-HPE on the Euler angles it predicts, as in its module's test loop). Mean and spread
(sample std) over the folds run.

How (the same for every row):

* **folds**: the faces left by the 99-degree filter, in sorted file order, shuffled by a
  ``torch.Generator`` seeded with ``--split-seed`` (default 0); fold ``f`` = shuffled
  positions ``f, f + k, f + 2k, ...`` (``k = --k``, default 5). ``folds.csv`` in
  ``--output`` lists every file with its fold, so a run can be checked against another.
* **model and budget**: backbone ``--backbone`` from scratch (default: the half-width
  ResNet-10 of ``examples/sixd.yaml``: timm ``resnet18`` with ``layers [1, 1, 1, 1]``,
  ``channels [32, 64, 128, 256]``), ``--size`` px inputs (AFLW2000's test crop, with
  train-time crop jitter, ``AFLW2000(train=True)``), batch ``--batch-size``, AdamW ``--lr``,
  ``--steps`` optimiser steps (two-stage methods split them: ``--stage1-share``), mirror
  augmentation, ``Trainer.fit`` of the method's module on an ``HPEDataModule``.
* **rows**:
  ``mean_pose`` (always predicts the chordal mean rotation of the training folds,
  ``roma.special_procrustes`` of the mean matrix: the floor every method must beat);
  ``sixd_geodesic`` / ``sixd_raw_mse`` (SixD, the two losses);
  ``opnet`` (grayscale input, ``shape_target: landmarks``: the shape head's target is fitted
  to each face's ``pt3d_68`` landmarks, which AFLW2000 items carry as ``landmarks_3d``);
  ``lechpe`` (stage 1 binned classification, then stage 2 with the clustering loss after a
  k-means centroid initialisation);
  ``rankpose`` (Siamese pairs: every face is its own partner, each side of the pair gets its
  own random mirror and in-plane rotation, so the pair's labels differ exactly as the images
  do; :class:`~hpelib.data.pairs.IdentityPairs` with one identity per face);
  ``clerf`` (stage 1 contrastive, positives made by :class:`RealFacePositiveSource` from the
  training images: a face of the training folds with the nearest yaw and pitch, rotated
  in-plane to zero roll, then to the anchor's roll; by the paper's Corollary 3.1.1 an
  in-plane rotation keeps yaw and pitch in CLERF's decomposition, so the positive's label is
  the anchor's up to the yaw/pitch gap to its nearest neighbour; then stage 2, the MLP on
  the frozen encoder).
* ``--synthetic-weight W [W ...]``: each method also trained with procedural heads
  (:class:`~hpelib.data.synthetic.SyntheticHeads`, ``--synthetic-preset``, default
  ``frontal``, AFLW2000's range) drawn at share ``W`` of the training items
  (``HPEDataModule`` weighted sampling), same number of steps; ``mean_pose`` ignores them.
* **columns**: pitch/yaw/roll MAE, their mean, geodesic error (degrees), share of test faces
  within 10 degrees geodesic, training images per second (anchor images; RankPose and CLERF
  process a partner/positive for each).

Outputs (``--output``, default ``runs/real_faces``): ``results.md`` (the table with the exact
command in its header, also printed), ``folds.csv``, ``per_fold.csv`` (one row per method,
synthetic weight and fold), ``errors_cdf.png`` (per-method CDF of the geodesic error, all
folds run pooled).

    python benchmarks/real_faces.py                                   # all rows, 5 folds
    python benchmarks/real_faces.py --folds 0 --steps 150             # one fold, short
    python benchmarks/real_faces.py --methods mean_pose sixd_geodesic --synthetic-weight 0 0.5
    python benchmarks/real_faces.py --root /data/AFLW2000 --device cuda --steps 3000

Default ``--steps`` (1200) is sized for a 2-core CPU: measured at 64 px, batch 32 (150
steps, one fold; training images/s) sixd geodesic 113, sixd raw_mse 194, OpNet 205, LEC-HPE
183, RankPose 104, CLERF 120, i.e. about 1.35 s per step for the six trained rows, so all
rows on five folds take about 2.3 h (a ``--synthetic-weight`` value above 0 adds as much).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import roma
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import fmt  # noqa: E402
from aflw_dev_plain_loop import DEFAULT_ROOT, ROOT  # noqa: E402

from hpelib.callbacks import KMeansCentroidInit  # noqa: E402
from hpelib.data.datamodule import HPEDataModule  # noqa: E402
from hpelib.data.datasets import AFLW2000  # noqa: E402
from hpelib.data.pairs import IdentityPairs  # noqa: E402
from hpelib.data.synthetic import PRESETS, SyntheticHeads  # noqa: E402
from hpelib.data.transforms import (  # noqa: E402
    RandomHorizontalMirror,
    RandomInPlaneRotation,
    apply_warp,
    image_center,
)
from hpelib.methods import SixD  # noqa: E402
from hpelib.methods.clerf import (  # noqa: E402
    CLERF,
    AnchorPositiveDataset,
    PositiveSource,
    SyntheticPositiveSource,
)
from hpelib.methods.clerf.positives import split_roll  # noqa: E402
from hpelib.methods.lechpe import LECHPE  # noqa: E402
from hpelib.methods.opnet import OpNet  # noqa: E402
from hpelib.methods.rankpose import RankPose  # noqa: E402
from hpelib.metrics import pose_errors  # noqa: E402
from hpelib.metrics.pose import predicted_euler  # noqa: E402
from hpelib.rotation import ImageWarp, geodesic_distance  # noqa: E402

METHODS = ("mean_pose", "sixd_geodesic", "sixd_raw_mse", "opnet", "lechpe", "rankpose", "clerf")
COLUMNS = ("pitch_mae", "yaw_mae", "roll_mae", "mae", "geodesic", "within_10", "images_per_s")
HALF_RESNET10 = {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256]}


# ----------------------------------------------------------------------------- folds
def make_folds(n: int, k: int = 5, seed: int = 0) -> list[list[int]]:
    """``k`` disjoint folds covering ``range(n)``: positions of a seeded permutation mod ``k``.

    Returns ``k`` sorted index lists (sizes differ by at most one), a function of
    ``(n, k, seed)`` only.
    """
    if not 2 <= k <= n:
        raise ValueError(f"k must be in [2, {n}] for {n} faces, got {k}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return [sorted(order[f::k]) for f in range(k)]


def fold_table(files: Sequence[str], folds: Sequence[Sequence[int]]) -> pd.DataFrame:
    """``file, fold`` per face in file order (written to ``folds.csv``)."""
    fold_of = {i: f for f, idx in enumerate(folds) for i in idx}
    return pd.DataFrame({"file": list(files), "fold": [fold_of[i] for i in range(len(files))]})


# ------------------------------------------------------------------ CLERF positives
class RealFacePositiveSource(PositiveSource):
    """CLERF positives from real training faces, de-rolled by an in-plane rotation.

    Every training face ``j`` (label ``R_j = Rz(roll_j) R_yp_j``) is rotated in-plane once by
    its roll, which gives an image labelled exactly ``R_yp_j`` (zero roll, same yaw and pitch:
    CLERF's Corollary 3.1.1). ``render`` returns, for each requested zero-roll pose, one of the
    ``candidates`` de-rolled faces nearest to it (geodesic distance) with its own exact label;
    :func:`~hpelib.methods.clerf.make_positives` then rolls it to the anchor's roll.

    Args:
        images: ``(N, 3, S, S)`` uint8 training faces (the test-time crop).
        rotations: ``(N, 3, 3)`` their labels.
        candidates: draw among this many nearest faces (> 1, so a face is not always its
            own positive).
    """

    def __init__(self, images: Tensor, rotations: Tensor, candidates: int = 4) -> None:
        if images.ndim != 4 or images.shape[0] != rotations.shape[0] or images.shape[0] == 0:
            raise ValueError(
                f"RealFacePositiveSource: images (N, 3, S, S) and rotations (N, 3, 3) with the "
                f"same N > 0, got {tuple(images.shape)} and {tuple(rotations.shape)}"
            )
        r_yp, roll = split_roll(rotations.float())
        b, _, h, w = images.shape
        # R = Rz(roll) R_yp and make_positives rolls by ImageWarp.rotation(-roll): undo it.
        warp = ImageWarp.rotation(roll.double(), image_center(h, w, b, torch.float64))
        moved = apply_warp({"image": images.float() / 255.0, "rotation": rotations.float()}, warp)
        self.images = (moved["image"] * 255.0).round().clamp(0, 255).to(torch.uint8)
        self.rotations = moved["rotation"]
        self.candidates = int(min(candidates, b))
        self._r_yp = r_yp

    def render(self, rotations_yp: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """``rotations_yp (B, 3, 3)`` -> ``{"image" (B, 3, S, S) uint8, "rotation" (B, 3, 3)}``."""
        query = rotations_yp.float().cpu()
        dist = geodesic_distance(
            query[:, None].expand(-1, len(self._r_yp), 3, 3),
            self._r_yp[None].expand(len(query), -1, 3, 3),
        )
        near = dist.topk(self.candidates, dim=1, largest=False).indices
        pick = torch.randint(0, self.candidates, (len(query),), generator=generator)
        rows = near[torch.arange(len(near)), pick]
        return {"image": self.images[rows], "rotation": self.rotations[rows].clone()}


# ------------------------------------------------------------------------ helpers
def _stack(dataset: Dataset, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
    items = [dataset[i] for i in indices]
    return torch.stack([it["image"] for it in items]), torch.stack([it["rotation"] for it in items])


def _mix(real: Dataset, synthetic: Dataset | None, weight: float) -> Any:
    """The train spec: the real faces alone, or real and synthetic at shares 1 - w and w."""
    if synthetic is None or weight <= 0:
        return real
    return [
        {
            "class_path": "torch.utils.data.ConcatDataset",
            "init_args": {"datasets": [real]},
            "weight": 1 - weight,
        },
        {
            "class_path": "torch.utils.data.ConcatDataset",
            "init_args": {"datasets": [synthetic]},
            "weight": weight,
        },
    ]


def _pairs_augmentation() -> torch.nn.Module:
    """RankPose: every face is paired with itself; mirror + in-plane rotation drawn per side
    make the two views (and labels) differ."""
    return torch.nn.Sequential(
        RandomHorizontalMirror(p=0.5), RandomInPlaneRotation(p=0.8, max_degrees=45.0)
    )


def _trainer(args: argparse.Namespace, steps: int, callbacks: Sequence[Any] = ()) -> L.Trainer:
    return L.Trainer(
        max_steps=steps, accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=list(callbacks),
    )  # fmt: skip


@torch.no_grad()
def _predict_errors(
    module: Any, data: HPEDataModule, test: Dataset, device: str
) -> dict[str, Tensor]:
    """Per-face errors (degrees) of ``module`` on ``test``, scored as the modules' test loop
    does (pose_errors; a method's own Euler angles where it predicts them)."""
    module.eval().to(device)
    out: dict[str, list[Tensor]] = {}
    for first in range(0, len(test), 128):
        items = [test[i] for i in range(first, min(first + 128, len(test)))]
        batch = {"image": torch.stack([it["image"] for it in items]).to(device)}
        batch = data.prepare_images(batch, train=False)
        outputs = module(batch["image"])
        euler, convention = predicted_euler(module, outputs)
        target = torch.stack([it["rotation"] for it in items]).float()
        errors = pose_errors(
            outputs["rotation"].float().cpu(), target, "300wlp",
            pred_angles_deg=None if euler is None else euler.float().cpu(), pred_convention=convention,
        )  # fmt: skip
        for key, value in errors.items():
            out.setdefault(key, []).append(value)
    return {k: torch.cat(v) for k, v in out.items()}


def summarise(errors: dict[str, Tensor]) -> dict[str, float]:
    """Per-face errors -> the table's error columns."""
    row = {f"{n}_mae": float(errors[n].mean()) for n in ("pitch", "yaw", "roll")}
    row["mae"] = (row["pitch_mae"] + row["yaw_mae"] + row["roll_mae"]) / 3
    row["geodesic"] = float(errors["geodesic"].mean())
    row["within_10"] = float((errors["geodesic"] <= 10).float().mean() * 100)
    return row


# ------------------------------------------------------------------------ methods
class _Fold:
    """Everything one (fold, synthetic weight) needs: datasets and shared settings."""

    def __init__(
        self, args: argparse.Namespace, train_idx: list[int], test_idx: list[int], weight: float
    ) -> None:
        self.args, self.weight = args, weight
        self.train = Subset(
            AFLW2000(args.root, image_size=args.size, train=True, seed=args.seed), train_idx
        )
        framed = AFLW2000(args.root, image_size=args.size, train=False)
        self.test = Subset(framed, test_idx)
        self.train_framed = Subset(framed, train_idx)
        self.synthetic = None
        if weight > 0:
            self.synthetic = SyntheticHeads(
                num_samples=args.synthetic_samples, image_size=args.size, preset=args.synthetic_preset,
                split="train", seed=args.seed,
            )  # fmt: skip

    def datamodule(self, train: Any, weighted: bool, **kwargs: Any) -> HPEDataModule:
        kwargs.setdefault("augmentation", "mirror")
        return HPEDataModule(
            train=train, batch_size=self.args.batch_size, seed=self.args.seed,
            samples_per_epoch=(self.args.batch_size * 64) if weighted else None, **kwargs,
        )  # fmt: skip

    def optimizer(self) -> Callable[[Any], torch.optim.Optimizer]:
        lr = self.args.lr
        return lambda params: torch.optim.AdamW(params, lr=lr)

    def backbone(self) -> dict[str, Any]:
        kwargs = (
            HALF_RESNET10 if self.args.backbone == "resnet18" and not self.args.full_width else {}
        )
        return {
            "backbone": self.args.backbone,
            "pretrained": False,
            "backbone_kwargs": dict(kwargs) or None,
        }


def _fit(
    fold: _Fold, module: Any, data: HPEDataModule, steps: int, callbacks: Sequence[Any] = ()
) -> float:
    start = time.perf_counter()
    _trainer(fold.args, steps, callbacks).fit(module, data)
    return time.perf_counter() - start


def _single_stage(fold: _Fold, module: Any, **data_kwargs: Any) -> tuple[Any, HPEDataModule, float]:
    weighted = fold.synthetic is not None
    data = fold.datamodule(_mix(fold.train, fold.synthetic, fold.weight), weighted, **data_kwargs)
    return module, data, _fit(fold, module, data, fold.args.steps)


def run_sixd(fold: _Fold, loss: str) -> tuple[Any, HPEDataModule, float]:
    return _single_stage(fold, SixD(**fold.backbone(), loss=loss, optimizer=fold.optimizer()))


def run_opnet(fold: _Fold) -> tuple[Any, HPEDataModule, float]:
    module = OpNet(
        **fold.backbone(), in_chans=1, shape_target="landmarks", optimizer=fold.optimizer()
    )
    return _single_stage(fold, module, grayscale=True, normalize=[[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])


def _split_steps(args: argparse.Namespace) -> tuple[int, int]:
    first = max(1, min(args.steps - 1, round(args.steps * args.stage1_share)))
    return first, args.steps - first


def run_lechpe(fold: _Fold) -> tuple[Any, HPEDataModule, float]:
    module = LECHPE(**fold.backbone(), optimizer=fold.optimizer())
    weighted = fold.synthetic is not None
    data = fold.datamodule(_mix(fold.train, fold.synthetic, fold.weight), weighted)
    s1, s2 = _split_steps(fold.args)
    seconds = _fit(fold, module, data, s1)
    module.set_stage(2)
    data = fold.datamodule(_mix(fold.train, fold.synthetic, fold.weight), weighted)
    seconds += _fit(fold, module, data, s2, [KMeansCentroidInit(n_init=3, seed=fold.args.seed)])
    return module, data, seconds


def run_rankpose(fold: _Fold) -> tuple[Any, HPEDataModule, float]:
    real = IdentityPairs(
        fold.train, identities=torch.arange(len(fold.train)), singletons="self", seed=fold.args.seed
    )
    synthetic = None
    if fold.synthetic is not None:
        synthetic = IdentityPairs(fold.synthetic, singletons="self", seed=fold.args.seed)
    module = RankPose(**fold.backbone(), optimizer=fold.optimizer())
    weighted = synthetic is not None
    data = fold.datamodule(
        _mix(real, synthetic, fold.weight), weighted, augmentation=_pairs_augmentation()
    )
    return module, data, _fit(fold, module, data, fold.args.steps)


def run_clerf(fold: _Fold) -> tuple[Any, HPEDataModule, float]:
    images, rotations = _stack(fold.train_framed, range(len(fold.train_framed)))
    source = RealFacePositiveSource(images, rotations)
    real = AnchorPositiveDataset(fold.train, source=source, seed=None)
    synthetic = None
    if fold.synthetic is not None:
        synthetic = AnchorPositiveDataset(
            fold.synthetic, source=SyntheticPositiveSource(fold.args.size)
        )
    module = CLERF(**fold.backbone(), embedding_dim=256, optimizer=fold.optimizer())
    weighted = synthetic is not None
    data = fold.datamodule(_mix(real, synthetic, fold.weight), weighted)
    s1, s2 = _split_steps(fold.args)
    seconds = _fit(fold, module, data, s1)
    module.set_stage(2)
    data = fold.datamodule(_mix(real, synthetic, fold.weight), weighted)
    seconds += _fit(fold, module, data, s2)
    return module, data, seconds


def run_mean_pose(fold: _Fold) -> dict[str, Tensor]:
    """Errors of predicting the chordal mean rotation of the training faces for every face."""
    _, train_rot = _stack(fold.train_framed, range(len(fold.train_framed)))
    mean = roma.special_procrustes(train_rot.double().mean(dim=0)).float()
    _, test_rot = _stack(fold.test, range(len(fold.test)))
    return pose_errors(mean.expand(len(test_rot), 3, 3), test_rot.float(), "300wlp")


RUNNERS: dict[str, Callable[[_Fold], tuple[Any, HPEDataModule, float]]] = {
    "sixd_geodesic": lambda f: run_sixd(f, "geodesic"),
    "sixd_raw_mse": lambda f: run_sixd(f, "raw_mse"),
    "opnet": run_opnet,
    "lechpe": run_lechpe,
    "rankpose": run_rankpose,
    "clerf": run_clerf,
}


def run_one(fold: _Fold, method: str) -> tuple[dict[str, float], Tensor]:
    """Train and score one method on one fold -> (table row, per-face geodesic errors)."""
    if method == "mean_pose":
        errors = run_mean_pose(fold)
        return {**summarise(errors), "images_per_s": math.nan}, errors["geodesic"]
    L.seed_everything(fold.args.seed, verbose=False)
    module, data, seconds = RUNNERS[method](fold)
    errors = _predict_errors(module, data, fold.test, fold.args.device)
    row = {**summarise(errors), "images_per_s": fold.args.steps * fold.args.batch_size / seconds}
    return row, errors["geodesic"]


# -------------------------------------------------------------------------- report
def _row_name(method: str, weight: float, weights: Sequence[float]) -> str:
    return method if len(weights) == 1 and weight == 0 else f"{method} (synthetic {weight:g})"


def markdown_table(per_fold: pd.DataFrame) -> str:
    """Mean ± std over folds per (method, synthetic weight), in run order."""
    weights = sorted(per_fold["synthetic_weight"].unique().tolist())
    lines = [
        "| method | " + " | ".join(COLUMNS) + " | folds |",
        "|---" + "|---:" * (len(COLUMNS) + 1) + "|",
    ]
    for (method, weight), group in per_fold.groupby(["method", "synthetic_weight"], sort=False):
        cells = []
        for column in COLUMNS:
            values = group[column].dropna().tolist()
            cells.append(fmt(values, 1 if column == "images_per_s" else 2) if values else "-")
        lines.append(
            f"| {_row_name(method, weight, weights)} | " + " | ".join(cells) + f" | {len(group)} |"
        )
    return "\n".join(lines)


def plot_cdf(curves: dict[str, Tensor], path: Path) -> None:
    """One PNG: per-row empirical CDF of the geodesic error (degrees) over the folds run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, errors in curves.items():
        values = errors.sort().values.numpy()
        ax.plot(values, (torch.arange(1, len(values) + 1) / len(values)).numpy(), label=name)
    ax.set(
        xlabel="geodesic error (degrees)", ylabel="share of test faces", xlim=(0, 90), ylim=(0, 1)
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="an AFLW2000 folder")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "real_faces")
    parser.add_argument("--k", type=int, default=5, help="number of folds")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument(
        "--folds", type=int, nargs="+", default=None, help="folds to run (default all)"
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--synthetic-weight", type=float, nargs="+", default=[0.0])
    parser.add_argument("--synthetic-preset", choices=PRESETS, default="frontal")
    parser.add_argument("--synthetic-samples", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument(
        "--stage1-share", type=float, default=0.5, help="LEC-HPE/CLERF stage 1 steps"
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument(
        "--full-width", action="store_true", help="resnet18 as is, not the half ResNet-10"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    args.command = "python benchmarks/real_faces.py " + shlex.join(
        list(sys.argv[1:] if argv is None else argv)
    )
    if not args.root.is_dir():
        parser.error(f"AFLW2000 folder {str(args.root)!r} not found; pass --root")
    if any(not 0 <= w < 1 for w in args.synthetic_weight):
        parser.error(f"--synthetic-weight values must be in [0, 1), got {args.synthetic_weight}")
    if args.steps < 2:
        parser.error("--steps must be >= 2 (two-stage methods need a step per stage)")
    return args


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Run the benchmark; returns the per-fold table (also written to ``--output``)."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*max_epochs.*")
    framed = AFLW2000(args.root, image_size=args.size, train=False)
    folds = make_folds(len(framed), args.k, args.split_seed)
    run_folds = list(range(args.k)) if args.folds is None else args.folds
    if any(not 0 <= f < args.k for f in run_folds):
        raise SystemExit(f"--folds must be in [0, {args.k - 1}], got {run_folds}")
    args.output.mkdir(parents=True, exist_ok=True)
    fold_table([Path(p).name for p in framed._paths], folds).to_csv(
        args.output / "folds.csv", index=False
    )
    rows, curves = [], {}
    for weight in args.synthetic_weight:
        for f in run_folds:
            test_idx = folds[f]
            train_idx = sorted(i for g, idx in enumerate(folds) if g != f for i in idx)
            fold = _Fold(args, train_idx, test_idx, weight)
            for method in args.methods:
                if method == "mean_pose" and weight > 0:
                    continue  # no training: synthetic heads change nothing
                row, geodesic = run_one(fold, method)
                rows.append({"method": method, "synthetic_weight": weight, "fold": f, **row})
                name = _row_name(method, weight, args.synthetic_weight)
                curves[name] = torch.cat([curves.get(name, torch.zeros(0)), geodesic])
                print(
                    f"fold {f} {name}: " + ", ".join(f"{c} {row[c]:.2f}" for c in COLUMNS),
                    flush=True,
                )
    per_fold = pd.DataFrame(rows)
    per_fold.to_csv(args.output / "per_fold.csv", index=False)
    plot_cdf(curves, args.output / "errors_cdf.png")
    header = (
        f"`{args.command}`\n\nAFLW2000 at {args.root}: {len(framed)} faces, {args.k} folds (split seed "
        f"{args.split_seed}), folds run {run_folds}; {args.backbone}"
        f"{'' if args.full_width or args.backbone != 'resnet18' else ' (half-width ResNet-10)'} from scratch, "
        f"{args.size} px, batch {args.batch_size}, AdamW {args.lr:g}, {args.steps} steps (two-stage: "
        f"{args.stage1_share:g} in stage 1), seed {args.seed}; mean ± std over folds; errors in degrees, "
        f"within_10 in %.\n"
    )
    report = header + "\n" + markdown_table(per_fold) + "\n"
    (args.output / "results.md").write_text(report)
    print("\n" + report)
    return per_fold


if __name__ == "__main__":
    main()
