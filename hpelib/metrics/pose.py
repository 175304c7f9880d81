"""torchmetrics metrics for head pose: Euler MAE and geodesic error (DDP-synced)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from hpelib.metrics.protocols import legacy_6drepnet_error
from hpelib.rotation import angle_difference, euler_names, geodesic_distance, rotation_to_euler

__all__ = ["PoseMetrics", "pose_errors"]


def pose_errors(
    pred: Tensor,
    target: Tensor,
    convention: str = "300wlp",
    legacy_6drepnet: bool = False,
    target_angles_deg: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-sample errors in degrees between ``(B, 3, 3)`` predicted and label rotations.

    Prediction and label are decomposed by the same named Euler convention and each angle
    error is wrapped by 360 degrees. With ``legacy_6drepnet=True`` the prediction is compared
    to ``target_angles_deg`` (the raw label angles, in the convention's order; decomposed from
    the label when not given) with 6DRepNet's +/-180 wrap.

    Returns:
        dict with one ``(B,)`` tensor per angle name (e.g. ``yaw``), ``mae`` (their mean) and
        ``geodesic``.
    """
    names = euler_names(convention)
    pred_angles = rotation_to_euler(pred, convention, degrees=True)
    if legacy_6drepnet:
        tgt = target_angles_deg if target_angles_deg is not None else rotation_to_euler(
            target, convention, degrees=True
        )
        per_angle = legacy_6drepnet_error(pred_angles, tgt.to(pred_angles))
    else:
        tgt = rotation_to_euler(target, convention, degrees=True)
        per_angle = angle_difference(pred_angles, tgt, 360.0).abs()
    out = {name: per_angle[..., i] for i, name in enumerate(names)}
    out["mae"] = per_angle.mean(dim=-1)
    out["geodesic"] = geodesic_distance(pred, target) * (180.0 / math.pi)
    return out


class PoseMetrics(Metric):
    """Mean yaw/pitch/roll absolute errors, their mean (``mae``) and the mean geodesic error,
    all in degrees; optionally broken down by ranges of the label's absolute angle.

    Args:
        convention: Euler convention used to decompose prediction and label (both the same).
        legacy_6drepnet: reproduce 6DRepNet's comparison (raw label angles, +/-180 wrap).
        range_angle: angle name to bin by (e.g. ``"yaw"``), or None for no breakdown.
        range_edges: bin edges in degrees of ``|label angle|``, e.g. ``(0, 30, 60, 90, 180)``.

    ``compute()`` returns a flat dict: ``yaw_mae``, ``pitch_mae``, ``roll_mae``, ``mae`` (their
    mean), ``geodesic``, ``count`` (samples seen, summed over processes) and,
    with a breakdown, ``mae@yaw[0,30)`` style keys plus ``count@...`` (a bin without samples
    reports NaN errors and count 0).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(
        self,
        convention: str = "300wlp",
        legacy_6drepnet: bool = False,
        range_angle: str | None = None,
        range_edges: Sequence[float] = (0.0, 30.0, 60.0, 90.0, 180.0),
    ) -> None:
        super().__init__()
        self.convention = convention
        self.names = euler_names(convention)
        self.legacy_6drepnet = legacy_6drepnet
        if range_angle is not None and range_angle not in self.names:
            raise ValueError(f"range_angle {range_angle!r} is not one of {self.names}")
        self.range_angle = range_angle
        self.range_edges = tuple(float(e) for e in range_edges)
        n_bins = len(self.range_edges) - 1 if range_angle else 0
        self.keys = (*(f"{n}_mae" for n in self.names), "mae", "geodesic")
        self.add_state("sums", torch.zeros(len(self.keys), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bin_sums", torch.zeros(max(n_bins, 1), 2, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("bin_counts", torch.zeros(max(n_bins, 1), dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self, pred: Tensor, target: Tensor, target_angles_deg: Tensor | None = None
    ) -> None:  # type: ignore[override]
        """``pred``, ``target``: ``(B, 3, 3)`` rotations in hpelib's internal convention."""
        errors = pose_errors(
            pred.float(), target.float(), self.convention, self.legacy_6drepnet, target_angles_deg
        )
        columns = [*self.names, "mae", "geodesic"]
        stacked = torch.stack([errors[k] for k in columns], dim=-1).double()
        self.sums += stacked.sum(dim=0)
        self.count += stacked.shape[0]
        if self.range_angle is not None:
            label = rotation_to_euler(target.float(), self.convention, degrees=True)
            value = label[..., self.names.index(self.range_angle)].abs().double()
            edges = torch.tensor(self.range_edges, dtype=torch.float64, device=value.device)
            idx = torch.bucketize(value, edges, right=True) - 1
            valid = (idx >= 0) & (idx < len(edges) - 1)
            idx = idx.clamp(0, len(edges) - 2)
            w = valid.double()
            pair = torch.stack([stacked[:, self.keys.index("mae")], stacked[:, -1]], dim=-1) * w[:, None]
            self.bin_sums.index_add_(0, idx, pair)
            self.bin_counts.index_add_(0, idx, w)

    def compute(self) -> dict[str, Tensor]:
        mean = self.sums / self.count.clamp_min(1)
        out = {k: mean[i].float() for i, k in enumerate(self.keys)}
        out["count"] = self.count.float()
        if self.range_angle is not None:
            for b in range(len(self.range_edges) - 1):
                lo, hi = self.range_edges[b], self.range_edges[b + 1]
                tag = f"{self.range_angle}[{lo:g},{hi:g})"
                n = self.bin_counts[b]
                out[f"count@{tag}"] = n.float()
                # An empty bin has no error: NaN, not a perfect-looking 0.
                out[f"mae@{tag}"] = (self.bin_sums[b, 0] / n).float()
                out[f"geodesic@{tag}"] = (self.bin_sums[b, 1] / n).float()
        return out
