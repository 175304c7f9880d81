"""Evaluation tables: several checkpoints x several test sets (and their SA/FA/occluded
variants) -> one pandas table, written as CSV and Markdown, plus per-angle error CDF plots.

Command line: ``hpelib evaluate --config examples/sixd.yaml --ckpt a.ckpt b.ckpt
--variants original sa fa --output results/``. The test sets are the ``data.test`` section of
the config (or ``--test`` overrides); preprocessing is the config's ``data`` section.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from hpelib.checkpoint_io import add_trust_checkpoint_argument
from hpelib.data.datamodule import HPEDataModule
from hpelib.data.sample import collate_samples, mask_key
from hpelib.metrics import pose_errors
from hpelib.metrics.pose import predicted_euler
from hpelib.predict import load_module
from hpelib.rotation import euler_names

__all__ = ["VARIANTS", "evaluate", "per_sample_errors", "plot_error_cdf", "main"]


def _wrap_sa(dataset: Dataset) -> Dataset:
    from hpelib.data.variants import SAVariant

    return SAVariant(dataset)


def _wrap_fa(dataset: Dataset) -> Dataset:
    from hpelib.data.variants import FAVariant

    return FAVariant(dataset, seed=0)


def _wrap_occluded(dataset: Dataset) -> Dataset:
    from hpelib.data.variants import OccludedVariant

    return OccludedVariant(dataset, seed=0)


#: Test-set variants by name (CLERF's SA and FA protocols, synthetic occlusion).
VARIANTS = {
    "original": lambda dataset: dataset,
    "sa": _wrap_sa,
    "fa": _wrap_fa,
    "occluded": _wrap_occluded,
}


@torch.no_grad()
def per_sample_errors(
    module: torch.nn.Module,
    dataset: Dataset,
    datamodule: HPEDataModule,
    batch_size: int = 64,
    convention: str = "300wlp",
    legacy_6drepnet: bool = False,
) -> pd.DataFrame:
    """Per-sample angle and geodesic errors (degrees) of ``module`` on ``dataset``, with the
    datamodule's evaluation preprocessing. A method that predicts Euler angles in
    ``convention`` (``module.euler_output_convention``, e.g. LEC-HPE) is scored on those
    angles, as in its test step (:func:`hpelib.metrics.pose_errors`)."""
    device = next(module.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    frames = []
    for batch in loader:
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        batch = datamodule.prepare_images(batch, train=False)
        keep = batch[mask_key("rotation")]
        if not keep.any():
            continue
        outputs = module(batch["image"])
        angles = batch.get("target_angles_deg")
        # As in HPEModule's test step: predicted Euler angles (LEC-HPE) are scored directly.
        euler, euler_convention = predicted_euler(module, outputs)
        errors = pose_errors(
            outputs["rotation"][keep].float(),
            batch["rotation"][keep].float(),
            convention,
            legacy_6drepnet,
            None if angles is None else angles[keep],
            None if euler is None else euler[keep].float(),
            euler_convention,
        )
        frames.append(pd.DataFrame({k: v.cpu().numpy() for k, v in errors.items()}))
    if not frames:
        raise ValueError("the test set has no labelled samples")
    return pd.concat(frames, ignore_index=True)


def evaluate(
    checkpoints: Sequence[str | Path],
    test_sets: dict[str, Any],
    data_kwargs: dict[str, Any] | None = None,
    variants: Sequence[str] = ("original",),
    convention: str = "300wlp",
    legacy_6drepnet: bool = False,
    batch_size: int = 64,
    trust_checkpoint: bool | None = None,
) -> tuple[pd.DataFrame, dict[tuple[str, str], pd.DataFrame]]:
    """Evaluate every checkpoint on every (test set x variant).

    Checkpoints are read without running code from them; ``trust_checkpoint=True`` is the
    opt-in for trusted files that need more (:mod:`hpelib.checkpoint_io`).

    Returns:
        ``(table, errors)``: the summary table (one row per checkpoint, set and variant with
        mean errors and the sample count) and the per-sample error frames keyed by
        ``(checkpoint name, set/variant)``.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    datamodule = HPEDataModule(test=test_sets, **(data_kwargs or {}))
    datamodule.setup("test")
    names = euler_names(convention)
    rows, all_errors = [], {}
    for ckpt in checkpoints:
        module = load_module(ckpt, trust_checkpoint)
        for set_name, dataset in zip(datamodule.test_names, datamodule.test_datasets, strict=True):
            for variant in variants:
                errors = per_sample_errors(
                    module, VARIANTS[variant](dataset), datamodule, batch_size, convention, legacy_6drepnet
                )
                label = set_name if variant == "original" else f"{set_name}/{variant}"
                all_errors[(Path(ckpt).name, label)] = errors
                means = errors.mean()
                rows.append(
                    {
                        "checkpoint": Path(ckpt).name,
                        "test_set": label,
                        **{f"{n}_mae": float(means[n]) for n in names},
                        "mae": float(means["mae"]),
                        "geodesic": float(means["geodesic"]),
                        "median_geodesic": float(errors["geodesic"].median()),
                        "n": len(errors),
                    }
                )
    return pd.DataFrame(rows), all_errors


def plot_error_cdf(errors: dict[tuple[str, str], pd.DataFrame], path: str | Path, max_error: float = 90.0) -> None:
    """Per-angle cumulative error distributions (one panel per angle + geodesic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in next(iter(errors.values())).columns if c != "mae"]
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.2), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        for (ckpt, label), frame in errors.items():
            values = frame[column].sort_values().to_numpy()
            ax.plot(values, (1 + torch.arange(len(values))).numpy() / len(values), label=f"{ckpt} {label}")
        ax.set_xlim(0, max_error)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"{column} error (deg)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of samples")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpelib evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config whose data section defines the test sets")
    parser.add_argument("--ckpt", nargs="+", required=True, help="one or more checkpoints")
    parser.add_argument("--variants", nargs="+", default=["original"], choices=sorted(VARIANTS))
    parser.add_argument("--output", default="evaluation", help="folder for results.csv, results.md, error_cdf.png")
    parser.add_argument("--convention", default="300wlp")
    parser.add_argument("--legacy-6drepnet", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64)
    add_trust_checkpoint_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """``hpelib evaluate`` entry point; prints the Markdown table and writes the files."""
    args = _parser().parse_args(argv)
    config_path = Path(args.config)
    if not config_path.is_file():
        raise SystemExit(f"hpelib evaluate: config {str(config_path)!r} does not exist")
    config = yaml.safe_load(config_path.read_text()) or {}
    data = dict(config.get("data") or {})
    test_sets = data.pop("test", None)
    if not test_sets:
        raise SystemExit(f"hpelib evaluate: {config_path} has no data.test section")
    for key in ("train", "val", "predict", "samples_per_epoch", "augmentation"):
        data.pop(key, None)
    data.pop("batch_size", None)
    table, errors = evaluate(
        args.ckpt, test_sets, data, args.variants, args.convention, args.legacy_6drepnet,
        args.batch_size, args.trust_checkpoint,
    )
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    markdown = table.to_markdown(index=False, floatfmt=".2f")
    (out / "results.md").write_text(markdown + "\n")
    plot_error_cdf(errors, out / "error_cdf.png")
    print(markdown)
    print(f"\nwrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'error_cdf.png'}")
    return table

