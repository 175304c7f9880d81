"""Shared pieces of the ablation benchmarks: repeated seeds and quiet trainers.

A single training seed cannot tell a real difference from noise at these small budgets,
so every ablation script takes ``--seeds`` and reports ``mean +/- std`` over them (sample
standard deviation; one seed prints the plain value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``nan`` for fewer than two values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def fmt(values: Sequence[float], digits: int = 2) -> str:
    """``"12.34 ± 0.56"`` over seeds, or ``"12.34"`` for one seed."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def paired_fmt(values: Sequence[float], reference: Sequence[float], digits: int = 2) -> str:
    """Per-seed difference ``values - reference`` (same seed, same data) as ``"-0.16 ± 0.20
    (2/3 lower)"``: pairing removes the seed-to-seed spread that both runs share, so a small
    but consistent effect shows even when the unpaired ``mean ± std`` ranges overlap."""
    diffs = [v - r for v, r in zip(values, reference, strict=True)]
    lower = sum(d < 0 for d in diffs)
    return f"{fmt(diffs, digits)} ({lower}/{len(diffs)} lower)"


def quiet_trainer(epochs: int, callbacks: Sequence[Any] = (), **kwargs: Any) -> L.Trainer:
    """A CPU trainer without logger, checkpoints, progress bar or validation."""
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, callbacks=list(callbacks), **kwargs,
    )  # fmt: skip
