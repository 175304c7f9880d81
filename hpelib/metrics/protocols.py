"""Evaluation-protocol helpers shared by datasets and metrics."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["AFLW2000_MAX_ABS_DEGREES", "within_angle_limit", "legacy_6drepnet_error"]

#: HopeNet/FSA-Net/6DRepNet keep AFLW2000 samples whose three angles are all within +/-99 deg.
AFLW2000_MAX_ABS_DEGREES = 99.0


def within_angle_limit(angles_deg: Tensor, limit: float = AFLW2000_MAX_ABS_DEGREES) -> Tensor:
    """``(..., 3)`` Euler angles in degrees -> ``(...)`` bool, True where every ``|angle| <= limit``.

    With the default limit this is the standard AFLW2000 filter (1969 of 2000 samples remain).
    NaN angles are never within the limit.
    """
    return (angles_deg.abs() <= limit).all(dim=-1)


def legacy_6drepnet_error(pred_deg: Tensor, target_deg: Tensor) -> Tensor:
    """Per-angle error of 6DRepNet's test script: ``min(|d|, |d +/- 360|, |d +/- 180|)``.

    Counts a 180-degree error as 0 (a known bug); only for reproducing published numbers.
    """
    d = pred_deg - target_deg
    candidates = torch.stack([d, d + 360, d - 360, d + 180, d - 180]).abs()
    return candidates.amin(dim=0)
