"""Losses shared by several methods."""

from __future__ import annotations

from torch import Tensor

from hpelib.rotation import geodesic_distance

__all__ = ["geodesic_loss", "masked_mean"]


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values (B, ...)`` over the samples where ``mask (B,)`` is True.

    Returns 0 (with a gradient path) when no sample is selected, so a batch without labels
    for a loss term contributes nothing instead of NaN.
    """
    if mask is None:
        return values.mean()
    mask = mask.to(values.device).bool()
    per_sample = values.reshape(values.shape[0], -1).mean(dim=1)
    weights = mask.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1.0)


def geodesic_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean geodesic distance (radians) between ``(B, 3, 3)`` rotations (6DRepNet's loss,
    without its clamp: exact 0 and finite gradients at identical inputs and at 180 degrees)."""
    return masked_mean(geodesic_distance(pred, target.to(pred.dtype)), mask)
