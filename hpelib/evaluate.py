"""Evaluation tables: several checkpoints x several test sets (and their SA/FA/occluded
variants) -> one pandas table, written as CSV and Markdown, plus per-angle error CDF plots.

Command line: ``hpelib evaluate --config examples/sixd.yaml --ckpt a.ckpt b.ckpt
--variants original sa fa --output results/``. The test sets are the ``data.test`` section of
the config; everything about the images comes from each checkpoint's own record
(:func:`hpelib.checkpoint_io.checkpoint_preprocessing`), never from the config, so checkpoints
of different methods compare in one call (OpNet: grey, ``x - 0.5``, 129 px; SixD: RGB,
ImageNet normalisation, 64 px):

* the test images are built at the checkpoint's input size (the spec's ``image_size``), and,
  for the dataset the checkpoint was evaluated on in training, with its crop rule and face-box
  source (``crop_rule``, ``box_source``; other datasets keep the config's crop);
* they are normalised (and made grey) as the checkpoint was trained;
* the Euler angles are those of the checkpoint's convention (``--convention`` sets one for
  all), with methods that predict Euler angles (LEC-HPE) scored on them.

Each checkpoint's row is labelled by the shortest end of its path that tells it from the
others (``run1/checkpoints/last.ckpt`` vs ``run2/checkpoints/last.ckpt``), or ``--labels``.

``--baselines facemesh`` adds the no-training landmark baseline
(:mod:`hpelib.baselines.landmark_fit`, ``pip install "hpelib[detect]"``) on the original test
sets, as two rows: ``facemesh (misses frontal)`` scores every face, those Face Mesh does not
find as the frontal pose, and ``facemesh (found only)`` the found faces; the ``detected``
column gives the fraction found (1 for checkpoints). ``--ckpt`` may then be left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from hpelib.checkpoint_io import add_trust_checkpoint_argument
from hpelib.data.datamodule import HPEDataModule
from hpelib.data.sample import collate_samples, mask_key
from hpelib.metrics import pose_errors
from hpelib.metrics.pose import predicted_euler
from hpelib.predict import load_with_preprocessing
from hpelib.rotation import euler_names
from hpelib.specs import (
    SPEC_META_KEYS,
    constructor_parameter,
    dataset_factory,
    instantiate_spec,
    plain_spec,
    qualified_name,
    spec_arguments,
)

__all__ = [
    "BASELINES",
    "VARIANTS",
    "baseline_errors",
    "checkpoint_labels",
    "evaluate",
    "main",
    "per_sample_errors",
    "plot_error_cdf",
    "specs_for_checkpoint",
]

_log = logging.getLogger(__name__)

#: Keys of the config's ``data`` section that the checkpoints' records decide instead.
_FROM_CHECKPOINT = ("normalize", "grayscale")


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
    angles, as in its test step (:func:`hpelib.metrics.pose_errors`).

    Returns:
        one row per labelled sample: a column per angle name, ``mae`` and ``geodesic``.
    """
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


# ----------------------------------------------------------------------------- baselines
#: No-training baselines ``--baselines`` accepts.
BASELINES = ("facemesh",)

#: Row labels of a baseline: every face (misses scored as frontal), found faces only.
_BASELINE_ROWS = ("{name} (misses frontal)", "{name} (found only)")

#: How the baselines' test sets are built: RGB in [0, 1]; the item images are only used by
#: sets without full-resolution access (the Face Mesh baseline reads file-based sets' images
#: at full size and cuts their crop box itself, see facemesh_dataset_rotations).
_BASELINE_PREP: dict[str, Any] = {
    "image_size": 192, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "grayscale": False,
    "dataset": None, "crop_rule": None, "box_source": None,
}  # fmt: skip


def baseline_errors(
    name: str,
    dataset: Dataset,
    convention: str = "300wlp",
    legacy_6drepnet: bool = False,
    batch_size: int = 64,
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Per-sample errors (degrees) of the no-training baseline ``name`` on ``dataset``.

    Returns:
        ``(every face, found faces only, detected fraction)``: the first frame scores the
        faces the baseline misses as the frontal pose; both have :func:`per_sample_errors`'s
        columns.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {list(BASELINES)}")
    from hpelib.baselines.landmark_fit import facemesh_dataset_rotations

    labels, angles, indices = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    start = 0
    for batch in loader:
        keep = batch[mask_key("rotation")]
        indices += (start + torch.nonzero(keep).flatten()).tolist()
        start += len(keep)
        labels.append(batch["rotation"][keep].float())
        if batch.get("target_angles_deg") is not None:
            angles.append(batch["target_angles_deg"][keep])
    if not indices:
        raise ValueError("the test set has no labelled samples")
    target = torch.cat(labels)
    target_angles = torch.cat(angles) if len(angles) == len(labels) else None
    rotations, found = facemesh_dataset_rotations(dataset, indices)

    def frame(keep: torch.Tensor) -> pd.DataFrame:
        errors = pose_errors(
            rotations[keep], target[keep], convention, legacy_6drepnet,
            None if target_angles is None else target_angles[keep],
        )  # fmt: skip
        return pd.DataFrame({k: v.cpu().numpy() for k, v in errors.items()})

    every = torch.ones_like(found)
    return frame(every), frame(found), float(found.float().mean())


def _check_baselines_can_run(baselines: Sequence[str]) -> None:
    """ImportError naming what to install when a requested baseline cannot run here."""
    if "facemesh" in baselines:
        from hpelib.detect import import_mediapipe

        import_mediapipe("baseline 'facemesh'")


def _summary_row(
    label: str, set_label: str, convention: str, errors: pd.DataFrame
) -> dict[str, Any]:
    means = errors.mean()
    return {
        "checkpoint": label,
        "test_set": set_label,
        "convention": convention,
        **{f"{n}_mae": float(means[n]) for n in euler_names(convention)},
        "mae": float(means["mae"]),
        "geodesic": float(means["geodesic"]),
        "median_geodesic": float(errors["geodesic"].median()),
        "n": len(errors),
    }


def _baseline_rows(
    names: Sequence[str],
    test_sets: Any,
    data_kwargs: Mapping[str, Any],
    variants: Sequence[str],
    convention: str | None,
    legacy_6drepnet: bool,
    batch_size: int,
    taken: Sequence[str],
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], pd.DataFrame]]:
    """The rows and per-sample errors of each baseline on each original test set."""
    rows: list[dict[str, Any]] = []
    all_errors: dict[tuple[str, str], pd.DataFrame] = {}
    if not names:
        return rows, all_errors
    clash = sorted({r.format(name=n) for n in names for r in _BASELINE_ROWS} & set(taken))
    if clash:
        raise ValueError(f"checkpoint labels {clash} are baseline row names; pass other --labels")
    if any(v != "original" for v in variants):
        _log.info("evaluate: baselines are scored on the original test sets only")
    datamodule = _datamodule_for(test_sets, _BASELINE_PREP, dict(data_kwargs), "the baselines")
    scored_in = convention or "300wlp"
    for name in dict.fromkeys(names):
        for set_name, dataset in zip(datamodule.test_names, datamodule.test_datasets, strict=True):
            every, found, detected = baseline_errors(
                name, dataset, scored_in, legacy_6drepnet, batch_size
            )
            for row_label, errors in zip(_BASELINE_ROWS, (every, found), strict=True):
                label = row_label.format(name=name)
                all_errors[(label, set_name)] = errors
                row = _summary_row(label, set_name, scored_in, errors)
                rows.append({**row, "detected": detected})
    return rows, all_errors


# ----------------------------------------------------------------------------- labels
def checkpoint_labels(
    checkpoints: Sequence[str | Path], labels: Sequence[str] | None = None
) -> list[str]:
    """One unique label per checkpoint: ``labels`` as given (checked), else the shortest end
    of each path that tells the checkpoints apart (``a/last.ckpt`` and ``b/last.ckpt``)."""
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != len(checkpoints):
            raise ValueError(f"{len(labels)} labels for {len(checkpoints)} checkpoints")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {labels}")
        return labels
    parts = [Path(os.path.abspath(c)).parts for c in checkpoints]
    seen: dict[tuple[str, ...], str] = {}
    for path, given in zip(parts, checkpoints, strict=True):
        if path in seen:
            raise ValueError(f"checkpoint {str(given)!r} is given twice")
        seen[path] = str(given)
    for k in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return ["/".join(p) for p in parts]  # not reached: distinct paths differ somewhere


# ----------------------------------------------------------------------------- test specs
def _allowed_crop_rule(rule: Any, source: str) -> Any:
    """A recorded crop rule as a dataset takes it; a ``class_path`` one is built here, and
    only from hpelib's own classes (a checkpoint must not make hpelib import a module it
    names). ``None``: not usable, the config's crop stays."""
    if not isinstance(rule, Mapping):
        return rule
    class_path = str(rule.get("class_path", ""))
    if not class_path.startswith("hpelib."):
        _log.warning(
            "%s records the crop rule %r, not one of hpelib's: the config's crop is used",
            source, class_path,
        )  # fmt: skip
        return None
    return instantiate_spec(dict(rule))


def _with_args(spec: Mapping[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    if "class_path" in spec:
        return {**spec, "init_args": args}
    return {**{k: spec[k] for k in ("name", *SPEC_META_KEYS) if k in spec}, **args}


def _spec_for(spec: Any, prep: Mapping[str, Any], source: str) -> Any:
    """One test-set spec with the checkpoint's input size and (same dataset) crop."""
    spec = plain_spec(spec)
    factory = dataset_factory(spec)
    if not isinstance(spec, Mapping) or factory is None:
        return spec  # a Dataset instance: its image size is checked once built
    args = spec_arguments(spec)
    if constructor_parameter(factory, "image_size") is None:
        if isinstance(args.get("dataset"), Mapping):  # a wrapper (SplitDataset...)
            args["dataset"] = _spec_for(args["dataset"], prep, source)
        return _with_args(spec, args)
    args["image_size"] = int(prep["image_size"])
    if prep.get("dataset") == qualified_name(factory):
        rule = _allowed_crop_rule(prep.get("crop_rule"), source)
        if rule is not None and constructor_parameter(factory, "crop_rule") is not None:
            args["crop_rule"] = rule
        if prep.get("box_source") is not None and constructor_parameter(factory, "box_source") is not None:
            args["box_source"] = prep["box_source"]
    return _with_args(spec, args)


def specs_for_checkpoint(test_sets: Any, prep: Mapping[str, Any], source: str = "checkpoint") -> Any:
    """The ``data.test`` section (a spec, a list, or ``{set name: spec}``) with each set built
    at the checkpoint's input size and, for the dataset its record describes, with its crop
    rule and box source (``prep``: :func:`hpelib.checkpoint_io.checkpoint_preprocessing`)."""
    test_sets = plain_spec(test_sets)
    if isinstance(test_sets, Mapping) and not ({"name", "class_path"} & set(test_sets)):
        return {name: _spec_for(spec, prep, source) for name, spec in test_sets.items()}
    if isinstance(test_sets, list | tuple):
        return [_spec_for(spec, prep, source) for spec in test_sets]
    return _spec_for(test_sets, prep, source)


def _datamodule_for(
    test_sets: Any, prep: Mapping[str, Any], data_kwargs: Mapping[str, Any], source: str
) -> HPEDataModule:
    """The test sets as the checkpoint sees them: its size, crop, normalisation, grayscale."""
    kwargs = {k: v for k, v in data_kwargs.items() if k not in (*_FROM_CHECKPOINT, "test")}
    datamodule = HPEDataModule(
        test=specs_for_checkpoint(test_sets, prep, source),
        normalize=[list(prep["mean"]), list(prep["std"])],
        grayscale=bool(prep["grayscale"]),
        **kwargs,
    )
    datamodule.setup("test")
    for name, dataset in zip(datamodule.test_names, datamodule.test_datasets, strict=True):
        size = int(dataset[0]["image"].shape[-1]) if len(dataset) else prep["image_size"]
        if size != prep["image_size"]:
            raise ValueError(
                f"test set {name!r} gives {size} px images, but {source} was trained at "
                f"{prep['image_size']} px and the set's spec has no image_size that hpelib "
                "can set: give the set as a spec whose dataset takes image_size"
            )
    return datamodule


# ----------------------------------------------------------------------------- evaluate
def evaluate(
    checkpoints: Sequence[str | Path],
    test_sets: Any,
    data_kwargs: Mapping[str, Any] | None = None,
    variants: Sequence[str] = ("original",),
    convention: str | None = None,
    legacy_6drepnet: bool = False,
    batch_size: int = 64,
    trust_checkpoint: bool | None = None,
    labels: Sequence[str] | None = None,
    baselines: Sequence[str] = (),
) -> tuple[pd.DataFrame, dict[tuple[str, str], pd.DataFrame]]:
    """Evaluate every checkpoint on every (test set x variant), each with its own
    preprocessing (see the module docstring).

    Args:
        checkpoints: checkpoint files (read without running code from them;
            ``trust_checkpoint=True`` is the opt-in for trusted files that need more, see
            :mod:`hpelib.checkpoint_io`).
        test_sets: the ``data.test`` section: a spec, a list or ``{set name: spec}``.
        data_kwargs: further :class:`HPEDataModule` arguments (``num_workers``...);
            ``normalize`` and ``grayscale`` are each checkpoint's own and ignored here.
        variants: names in :data:`VARIANTS`.
        convention: Euler convention of the per-angle errors for every checkpoint; ``None``:
            each checkpoint's own.
        legacy_6drepnet: 6DRepNet's +/-180 wrap of the angle errors.
        batch_size: evaluation batch size.
        labels: one unique label per checkpoint (default: :func:`checkpoint_labels`).
        baselines: names in :data:`BASELINES`, scored on the original sets (module
            docstring); the table then has a ``detected`` column.

    Returns:
        ``(table, errors)``: the summary table (one row per checkpoint, set and variant with
        the convention, mean errors and the sample count) and the per-sample error frames
        keyed by ``(checkpoint label, set/variant)``.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINES)}")
    if not checkpoints and not baselines:
        raise ValueError("nothing to evaluate: give checkpoints or baselines")
    _check_baselines_can_run(baselines)  # before hours of checkpoint evaluation
    names_of = checkpoint_labels(checkpoints, labels)
    ignored = sorted(set(data_kwargs or {}) & set(_FROM_CHECKPOINT))
    if ignored:
        _log.info("evaluate: %s come from each checkpoint, not the config", ", ".join(ignored))
    datamodules: dict[str, HPEDataModule] = {}
    rows, all_errors = [], {}
    for ckpt, ckpt_label in zip(checkpoints, names_of, strict=True):
        source = f"checkpoint {str(ckpt)!r}"
        module, prep = load_with_preprocessing(ckpt, trust_checkpoint)
        key = json.dumps(
            {k: prep[k] for k in ("image_size", "mean", "std", "grayscale", "dataset",
                                  "crop_rule", "box_source")}, sort_keys=True, default=str,
        )  # fmt: skip
        if key not in datamodules:  # checkpoints with the same preprocessing share the sets
            datamodules[key] = _datamodule_for(test_sets, prep, dict(data_kwargs or {}), source)
        datamodule = datamodules[key]
        scored_in = convention or prep["euler_convention"] or "300wlp"
        for set_name, dataset in zip(datamodule.test_names, datamodule.test_datasets, strict=True):
            for variant in variants:
                errors = per_sample_errors(
                    module, VARIANTS[variant](dataset), datamodule, batch_size, scored_in,
                    legacy_6drepnet,
                )  # fmt: skip
                label = set_name if variant == "original" else f"{set_name}/{variant}"
                all_errors[(ckpt_label, label)] = errors
                rows.append(_summary_row(ckpt_label, label, scored_in, errors))
    extra_rows, extra_errors = _baseline_rows(
        baselines, test_sets, data_kwargs or {}, variants, convention, legacy_6drepnet,
        batch_size, names_of,
    )  # fmt: skip
    table = pd.DataFrame(rows + extra_rows)
    if extra_rows:
        table["detected"] = table["detected"].fillna(1.0)  # a checkpoint scores every face
    return table, all_errors | extra_errors


def plot_error_cdf(
    errors: dict[tuple[str, str], pd.DataFrame],
    path: str | Path,
    max_error: float | None = None,
) -> list[str]:
    """Cumulative error distributions, one panel per angle (``pitch``, ``yaw``, ``roll``)
    and one for the geodesic error, one curve per (checkpoint, test set); the legend sits
    outside the panels.

    Args:
        errors: per-sample errors keyed by ``(checkpoint label, set label)`` (:func:`evaluate`).
        path: the PNG to write.
        max_error: x-axis limit in degrees; ``None``: the largest error drawn, so every
            curve reaches 1.

    Returns:
        the curve labels, in the legend's order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = list(errors.values())
    angle_columns = [c for c in ("pitch", "yaw", "roll") if any(c in f.columns for f in frames)]
    columns = angle_columns + ["geodesic"]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.4), squeeze=False)
    curve_labels = [f"{ckpt} | {label}" for ckpt, label in errors]
    for ax, column in zip(axes[0], columns, strict=True):
        largest = 0.0
        for curve, frame in zip(curve_labels, frames, strict=True):
            if column not in frame.columns:
                continue
            values = frame[column].sort_values().to_numpy()
            largest = max(largest, float(values[-1]) if len(values) else 0.0)
            # The empirical CDF: a step up by 1/n at each error, from 0 at 0 degrees.
            xs = np.concatenate([[0.0], values])
            ys = np.arange(len(values) + 1) / max(len(values), 1)
            ax.step(xs, ys, where="post", label=curve)
        limit = max_error if max_error is not None else max(1.0, math.ceil(largest * 1.02))
        ax.set_xlim(0, limit)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel(f"{column} error (deg)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of samples")
    handles, shown = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    # Beside the panels, so no curve is hidden however many checkpoints and sets there are.
    fig.legend(handles, shown, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return curve_labels


_OUTPUT_FILES = ("results.csv", "results.md", "error_cdf.png")


def _check_outputs(out: Path, inputs: Sequence[Path]) -> None:
    """The files written into ``out`` must not be one of the inputs (config, checkpoints)."""
    for name in _OUTPUT_FILES:
        target = out / name
        for given in inputs:
            if target.exists() and given.exists() and os.path.samefile(target, given):
                raise SystemExit(
                    f"hpelib evaluate: writing {str(target)!r} would overwrite the input "
                    f"{str(given)!r}; choose another --output folder"
                )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpelib evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config whose data section defines the test sets")
    parser.add_argument(
        "--ckpt", nargs="+", default=None,
        help="one or more checkpoints (optional with --baselines)",
    )  # fmt: skip
    parser.add_argument(
        "--baselines", nargs="+", default=None, choices=list(BASELINES),
        help="no-training baselines to add as rows: facemesh (MediaPipe Face Mesh landmarks + "
        'rigid fit, pip install "hpelib[detect]"; two rows: misses scored frontal, found only)',
    )  # fmt: skip
    parser.add_argument(
        "--labels", nargs="+", default=None,
        help="one unique row/curve label per checkpoint (default: the shortest distinguishing "
        "end of each path)",
    )  # fmt: skip
    parser.add_argument("--variants", nargs="+", default=["original"], choices=sorted(VARIANTS))
    parser.add_argument("--output", default="evaluation", help="folder for results.csv, results.md, error_cdf.png")
    parser.add_argument(
        "--convention", default=None,
        help="Euler convention of the per-angle errors for every checkpoint (default: each "
        "checkpoint's own)",
    )  # fmt: skip
    parser.add_argument(
        "--legacy-6drepnet", action="store_true",
        help="wrap the angle errors to +-180 degrees as 6DRepNet's test script does",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
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
    for key in ("train", "val", "predict", "samples_per_epoch", "augmentation", *_FROM_CHECKPOINT):
        data.pop(key, None)
    data.pop("batch_size", None)
    checkpoints = list(args.ckpt or [])
    if not checkpoints and not args.baselines:
        raise SystemExit("hpelib evaluate: give --ckpt and/or --baselines")
    out = Path(args.output)
    _check_outputs(out, [config_path, *map(Path, checkpoints)])  # before hours of evaluation
    try:
        _check_baselines_can_run(args.baselines or ())
    except ImportError as err:
        raise SystemExit(f"hpelib evaluate: {err}") from err
    table, errors = evaluate(
        checkpoints, test_sets, data, args.variants, args.convention, args.legacy_6drepnet,
        args.batch_size, args.trust_checkpoint, args.labels, args.baselines or (),
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "results.csv", index=False)
    markdown = table.to_markdown(index=False, floatfmt=".2f")
    (out / "results.md").write_text(markdown + "\n")
    plot_error_cdf(errors, out / "error_cdf.png")
    print(markdown)
    print(f"\nwrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'error_cdf.png'}")
    return table
