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
  the frozen encoder);
  ``facemesh`` (only when asked for; needs ``pip install "hpelib[detect]"``): MediaPipe Face
  Mesh landmarks + a rigid fit (:mod:`hpelib.baselines`), no training; faces it misses are
  scored as frontal and the number found is printed.
* **variants**: ``name:key=value,...`` (e.g. ``rankpose:ranking_weight=0``) passes model
  keyword arguments (``data.key=value``: datamodule ones), values read as YAML; the row is
  named by the whole spec.
* ``--out-of-plane V``: the training faces expanded by ``V`` out-of-plane views each
  (:class:`~hpelib.data.synthesis.OutOfPlaneViews`, towards profile, new poses every epoch;
  the held fold untouched), same number of steps; rows are suffixed ``(out-of-plane xV)``.
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
folds run pooled; one colour per method, dashed when trained with a synthetic or
out-of-plane share), ``errors.csv`` (every test face's geodesic error per row).

    python benchmarks/real_faces.py                              # the default table
    python benchmarks/real_faces.py --folds 0 1 2 3 4 --steps 1200   # all folds, longer
    python benchmarks/real_faces.py --folds 0 --synthetic-weight 0 --methods lechpe lechpe:beta=0
    python benchmarks/real_faces.py --root /data/AFLW2000 --device cuda --steps 3000

The defaults (folds 0, 1 and 2 of five, 400 steps, synthetic weights 0 and 0.5) are sized
to fit a working session on a 2-core CPU: the whole default table took about 80 minutes
there, with other work sharing the cores.
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
import yaml
from torch import Tensor
from torch.utils.data import Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import fmt  # noqa: E402
from aflw_dev_plain_loop import DEFAULT_ROOT, ROOT  # noqa: E402

from hpelib.callbacks import KMeansCentroidInit  # noqa: E402
from hpelib.data.datamodule import HPEDataModule  # noqa: E402
from hpelib.data.datasets import AFLW2000  # noqa: E402
from hpelib.data.pairs import IdentityPairs  # noqa: E402
from hpelib.data.splits import kfold_indices  # noqa: E402
from hpelib.data.synthesis import OutOfPlaneViews  # noqa: E402
from hpelib.data.synthetic import PRESETS, SyntheticHeads  # noqa: E402
from hpelib.data.transforms import RandomHorizontalMirror, RandomInPlaneRotation  # noqa: E402
from hpelib.methods import SixD  # noqa: E402
from hpelib.methods.clerf import (  # noqa: E402
    CLERF,
    AnchorPositiveDataset,
    RealFacePositiveSource,
    SyntheticPositiveSource,
)
from hpelib.methods.lechpe import LECHPE  # noqa: E402
from hpelib.methods.opnet import OpNet  # noqa: E402
from hpelib.methods.rankpose import RankPose  # noqa: E402
from hpelib.metrics import pose_errors  # noqa: E402
from hpelib.metrics.pose import predicted_euler  # noqa: E402

METHODS = ("mean_pose", "sixd_geodesic", "sixd_raw_mse", "opnet", "lechpe", "rankpose", "clerf")
#: Rows that train nothing (no synthetic mix, no options); ``facemesh`` is not a default row
#: (it needs ``pip install "hpelib[detect]"``).
UNTRAINED = ("mean_pose", "facemesh")
COLUMNS = ("pitch_mae", "yaw_mae", "roll_mae", "mae", "geodesic", "within_10", "images_per_s")
HALF_RESNET10 = {"layers": [1, 1, 1, 1], "channels": [32, 64, 128, 256]}


# ----------------------------------------------------------------------------- folds
def make_folds(n: int, k: int = 5, seed: int = 0) -> list[list[int]]:
    """:func:`hpelib.data.splits.kfold_indices` as lists (the folds of
    :class:`~hpelib.data.splits.FoldDataset` and of ``examples/real_faces/*.yaml``)."""
    return [f.tolist() for f in kfold_indices(n, k, seed)]


def fold_table(files: Sequence[str], folds: Sequence[Sequence[int]]) -> pd.DataFrame:
    """``file, fold`` per face in file order (written to ``folds.csv``)."""
    fold_of = {i: f for f, idx in enumerate(folds) for i in idx}
    return pd.DataFrame({"file": list(files), "fold": [fold_of[i] for i in range(len(files))]})


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
        self.train: Dataset = Subset(
            AFLW2000(args.root, image_size=args.size, train=True, seed=args.seed), train_idx
        )
        if args.out_of_plane > 0:
            # Real training faces turned out of plane (hpelib.data.synthesis), new poses
            # every epoch; the held fold is never expanded.
            self.train = OutOfPlaneViews(
                self.train, views_per_image=args.out_of_plane, include_source=True, seed=args.seed
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


def _single_stage(
    fold: _Fold, module: Any, data_kwargs: dict[str, Any]
) -> tuple[Any, HPEDataModule, float]:
    weighted = fold.synthetic is not None
    data = fold.datamodule(_mix(fold.train, fold.synthetic, fold.weight), weighted, **data_kwargs)
    return module, data, _fit(fold, module, data, fold.args.steps)


def run_sixd(fold: _Fold, loss: str, model: dict, data: dict) -> tuple[Any, HPEDataModule, float]:
    kwargs = {**fold.backbone(), "loss": loss, **model}
    return _single_stage(fold, SixD(**kwargs, optimizer=fold.optimizer()), data)


def run_opnet(fold: _Fold, model: dict, data: dict) -> tuple[Any, HPEDataModule, float]:
    kwargs = {**fold.backbone(), "in_chans": 1, "shape_target": "landmarks", **model}
    grey = {"grayscale": True, "normalize": [[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]}
    return _single_stage(fold, OpNet(**kwargs, optimizer=fold.optimizer()), {**grey, **data})


def _split_steps(args: argparse.Namespace) -> tuple[int, int]:
    first = max(1, min(args.steps - 1, round(args.steps * args.stage1_share)))
    return first, args.steps - first


def run_lechpe(fold: _Fold, model: dict, data: dict) -> tuple[Any, HPEDataModule, float]:
    module = LECHPE(**{**fold.backbone(), **model}, optimizer=fold.optimizer())
    weighted = fold.synthetic is not None
    dm = fold.datamodule(_mix(fold.train, fold.synthetic, fold.weight), weighted, **data)
    s1, s2 = _split_steps(fold.args)
    seconds = _fit(fold, module, dm, s1)
    module.set_stage(2)
    dm = fold.datamodule(_mix(fold.train, fold.synthetic, fold.weight), weighted, **data)
    seconds += _fit(fold, module, dm, s2, [KMeansCentroidInit(n_init=3, seed=fold.args.seed)])
    return module, dm, seconds


def run_rankpose(fold: _Fold, model: dict, data: dict) -> tuple[Any, HPEDataModule, float]:
    real = IdentityPairs(fold.train, identities="per_item", singletons="self", seed=fold.args.seed)
    synthetic = None
    if fold.synthetic is not None:
        synthetic = IdentityPairs(fold.synthetic, singletons="self", seed=fold.args.seed)
    module = RankPose(**{**fold.backbone(), **model}, optimizer=fold.optimizer())
    weighted = synthetic is not None
    data = {"augmentation": _pairs_augmentation(), **data}
    dm = fold.datamodule(_mix(real, synthetic, fold.weight), weighted, **data)
    return module, dm, _fit(fold, module, dm, fold.args.steps)


def run_clerf(fold: _Fold, model: dict, data: dict) -> tuple[Any, HPEDataModule, float]:
    source = RealFacePositiveSource(fold.train_framed)
    real = AnchorPositiveDataset(fold.train, source=source, seed=None)
    synthetic = None
    if fold.synthetic is not None:
        synthetic = AnchorPositiveDataset(
            fold.synthetic, source=SyntheticPositiveSource(fold.args.size)
        )
    module = CLERF(**{**fold.backbone(), "embedding_dim": 256, **model}, optimizer=fold.optimizer())
    weighted = synthetic is not None
    dm = fold.datamodule(_mix(real, synthetic, fold.weight), weighted, **data)
    s1, s2 = _split_steps(fold.args)
    seconds = _fit(fold, module, dm, s1)
    module.set_stage(2)
    dm = fold.datamodule(_mix(real, synthetic, fold.weight), weighted, **data)
    seconds += _fit(fold, module, dm, s2)
    return module, dm, seconds


def run_facemesh(fold: _Fold) -> dict[str, Tensor]:
    """Errors of MediaPipe Face Mesh + a rigid fit (:mod:`hpelib.baselines`) on the held
    fold, faces it misses scored as frontal; prints how many it found."""
    from hpelib.baselines.landmark_fit import facemesh_dataset_rotations

    rotations, found = facemesh_dataset_rotations(fold.test)
    _, test_rot = _stack(fold.test, range(len(fold.test)))
    errors = pose_errors(rotations, test_rot.float(), "300wlp")
    found_only = summarise({k: v[found] for k, v in errors.items()})
    print(
        f"facemesh found {int(found.sum())} of {len(found)} faces; on those: MAE "
        f"{found_only['mae']:.2f}, geodesic {found_only['geodesic']:.2f}",
        flush=True,
    )
    return errors


def run_mean_pose(fold: _Fold) -> dict[str, Tensor]:
    """Errors of predicting the chordal mean rotation of the training faces for every face."""
    _, train_rot = _stack(fold.train_framed, range(len(fold.train_framed)))
    mean = roma.special_procrustes(train_rot.double().mean(dim=0)).float()
    _, test_rot = _stack(fold.test, range(len(fold.test)))
    return pose_errors(mean.expand(len(test_rot), 3, 3), test_rot.float(), "300wlp")


Runner = Callable[[_Fold, dict, dict], tuple[Any, HPEDataModule, float]]
RUNNERS: dict[str, Runner] = {
    "sixd_geodesic": lambda f, m, d: run_sixd(f, "geodesic", m, d),
    "sixd_raw_mse": lambda f, m, d: run_sixd(f, "raw_mse", m, d),
    "opnet": run_opnet,
    "lechpe": run_lechpe,
    "rankpose": run_rankpose,
    "clerf": run_clerf,
}


def _top_level_split(text: str) -> list[str]:
    """Split at commas outside brackets/braces (a YAML flow value may hold commas)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def parse_method(spec: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``"rankpose:ranking_weight=0,data.grayscale=true"`` -> ``("rankpose", {model
    keyword arguments}, {datamodule keyword arguments})``; values are YAML."""
    name, _, options = spec.partition(":")
    if name not in METHODS + UNTRAINED:
        raise ValueError(
            f"unknown method {name!r} in {spec!r}; choose from {list(METHODS + UNTRAINED)}"
        )
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for option in filter(None, _top_level_split(options)):
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ValueError(f"{spec!r}: options are key=value, got {option!r}")
        target, key = (data, key[5:]) if key.startswith("data.") else (model, key)
        target[key] = yaml.safe_load(value)
    if name in UNTRAINED and (model or data):
        raise ValueError(f"{name} takes no options")
    return name, model, data


def run_one(fold: _Fold, method: str) -> tuple[dict[str, float], Tensor]:
    """Train and score one method on one fold -> (table row, per-face geodesic errors).

    ``method`` is a name of :data:`METHODS`, optionally with options (:func:`parse_method`)."""
    method, model, data = parse_method(method)
    if method in UNTRAINED:
        errors = run_mean_pose(fold) if method == "mean_pose" else run_facemesh(fold)
        return {**summarise(errors), "images_per_s": math.nan}, errors["geodesic"]
    L.seed_everything(fold.args.seed, verbose=False)
    module, dm, seconds = RUNNERS[method](fold, model, data)
    errors = _predict_errors(module, dm, fold.test, fold.args.device)
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
    # One colour per method (variants and synthetic mixes of it share it), dashed when
    # trained with a synthetic or out-of-plane share: rows stay told apart past ten curves.
    bases = list(dict.fromkeys(name.split(" (")[0].split(":")[0] for name in curves))
    palette = plt.get_cmap("tab10")
    for name, errors in curves.items():
        values = errors.sort().values.numpy()
        base = name.split(" (")[0].split(":")[0]
        mixed = ("(synthetic" in name and "(synthetic 0)" not in name) or "out-of-plane" in name
        ax.plot(
            values, (torch.arange(1, len(values) + 1) / len(values)).numpy(), label=name,
            color=palette(bases.index(base) % 10), linestyle="--" if mixed else "-",
        )  # fmt: skip
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
        "--folds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="folds to run (default 0 1 2: three of the five, to fit a session on 2 cores)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        help=f"rows: {', '.join(METHODS)} (default) and facemesh (MediaPipe Face Mesh + rigid "
        "fit, needs hpelib[detect]); a variant as name:key=value,... with model keyword "
        "arguments (and data.key=value for the datamodule), e.g. rankpose:ranking_weight=0",
    )
    parser.add_argument("--synthetic-weight", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--synthetic-preset", choices=PRESETS, default="frontal")
    parser.add_argument("--synthetic-samples", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument(
        "--out-of-plane",
        type=int,
        default=0,
        metavar="V",
        help="expand the training faces by V out-of-plane views each (hpelib.data.synthesis)",
    )
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
    for spec in args.methods:
        try:
            parse_method(spec)
        except ValueError as err:
            parser.error(str(err))
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
                if method in UNTRAINED and weight > 0:
                    continue  # no training: synthetic heads change nothing
                row, geodesic = run_one(fold, method)
                if args.out_of_plane > 0:
                    method = f"{method} (out-of-plane x{args.out_of_plane})"
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
    # Per-face errors, so the figure can be re-drawn (or other statistics taken) later.
    pd.DataFrame(
        [(name, float(e)) for name, errors in curves.items() for e in errors.tolist()],
        columns=["row", "geodesic"],
    ).to_csv(args.output / "errors.csv", index=False)
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
