"""Losses shared by several methods."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from hpelib.rotation import geodesic_distance, rotation_to_6d, rotation_to_9d

__all__ = [
    "ROTATION_LOSSES", "chordal_loss", "geodesic_loss", "get_rotation_loss", "masked_mean",
    "raw_mse_loss",
]


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


def raw_mse_loss(pred_raw: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error between a raw rotation output and the label, before it is mapped
    onto SO(3): ``(B, 6)`` against the label's first two columns (:func:`rotation_to_6d`),
    ``(B, 9)`` against the whole matrix row by row (:func:`rotation_to_9d`).

    Training without the orthonormalisation and applying it only to read out a rotation
    (Levinson et al., NeurIPS 2020, "SVD-Inference"; Gu et al., 2024) makes the head a plain
    least-squares regression: no gradient passes through Gram-Schmidt or the SVD, which
    normalise the output and cancel the part of the gradient along it. From scratch on
    full-range data this removes the initial plateau near 120 degrees that the geodesic and
    chordal losses on the orthonormalised matrix sit on for 500-1,000 steps
    (docs/methods/sixd.md).

    Args:
        pred_raw: ``(B, 6)`` or ``(B, 9)``.
        target: ``(B, 3, 3)`` label rotations.
        mask: optional ``(B,)``, samples to average over.
    """
    to_raw = {6: rotation_to_6d, 9: rotation_to_9d}.get(pred_raw.shape[-1])
    if to_raw is None or target.shape[-2:] != (3, 3):
        raise ValueError(
            "raw_mse_loss expects pred (B, 6) or (B, 9) and target (B, 3, 3), got "
            f"{tuple(pred_raw.shape)} and {tuple(target.shape)}"
        )
    per_sample = (pred_raw - to_raw(target.to(pred_raw.dtype))).square().sum(dim=-1)
    return masked_mean(per_sample, mask)


RotationLoss = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

#: Rotation regression losses by config name: ``(pred, target, mask) -> scalar``.
ROTATION_LOSSES: dict[str, RotationLoss] = {"geodesic": geodesic_loss, "chordal": chordal_loss}


def get_rotation_loss(name: str) -> RotationLoss:
    """The rotation loss registered as ``name`` in :data:`ROTATION_LOSSES`."""
    if name not in ROTATION_LOSSES:
        raise ValueError(f"unknown rotation loss {name!r}; choose one of {sorted(ROTATION_LOSSES)}")
    return ROTATION_LOSSES[name]
