"""Losses shared by several methods."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from hpelib.rotation import geodesic_distance

__all__ = ["ROTATION_LOSSES", "chordal_loss", "geodesic_loss", "get_rotation_loss", "masked_mean"]


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


def chordal_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared chordal distance ``||pred - target||_F^2`` between ``(B, 3, 3)`` rotations.

    The L2 loss on the rotation matrix that Zhou et al. trained the 6D representation with.
    It equals ``8 sin^2(theta / 2)`` of the geodesic error ``theta``: its gradient grows with
    the error (strongest far from the label, vanishing smoothly at it), where the geodesic
    loss has the same gradient size at every error. On full-range data trained from scratch
    it leaves the initial plateau (errors near 120 degrees) sooner than the geodesic loss;
    measured in docs/methods/sixd.md.
    """
    per_sample = (pred - target.to(pred.dtype)).square().sum(dim=(-2, -1))
    return masked_mean(per_sample, mask)


RotationLoss = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

#: Rotation regression losses by config name: ``(pred, target, mask) -> scalar``.
ROTATION_LOSSES: dict[str, RotationLoss] = {"geodesic": geodesic_loss, "chordal": chordal_loss}


def get_rotation_loss(name: str) -> RotationLoss:
    """The rotation loss registered as ``name`` in :data:`ROTATION_LOSSES`."""
    if name not in ROTATION_LOSSES:
        raise ValueError(f"unknown rotation loss {name!r}; choose one of {sorted(ROTATION_LOSSES)}")
    return ROTATION_LOSSES[name]
