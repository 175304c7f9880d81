"""torchmetrics metrics for head pose: Euler MAE and geodesic error (DDP-synced)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from hpelib.metrics.protocols import legacy_6drepnet_error
from hpelib.rotation import (
    EULER_CONVENTIONS,
    angle_difference,
    chordal_distance,
    euler_names,
    euler_to_rotation,
    geodesic_distance,
    rotation_to_euler,
    wrap_angle,
)

__all__ = ["PoseMetrics", "pose_errors", "predicted_euler", "same_euler_convention"]


def same_euler_convention(a: str | None, b: str | None) -> bool:
    """Whether two convention names denote the same Euler convention (aliases included:
    ``"aflw2000"`` is ``"300wlp"``); False when either is None or unknown."""
    if a is None or b is None:
        return False
    conv_a, conv_b = EULER_CONVENTIONS.get(a.lower()), EULER_CONVENTIONS.get(b.lower())
    return conv_a is not None and conv_a is conv_b


def predicted_euler(module: object, outputs: dict[str, Tensor]) -> tuple[Tensor | None, str | None]:
    """``(outputs["euler_deg"], its convention)`` of a method that predicts Euler angles
    directly, declared by the module's ``euler_output_convention`` attribute (LEC-HPE:
    ``"300wlp"``); ``(None, None)`` for methods that predict a rotation only (an
    ``euler_deg`` without a declared convention is not trusted)."""
    convention = getattr(module, "euler_output_convention", None)
    angles = outputs.get("euler_deg")
    if convention is None or angles is None:
        return None, None
    return angles, convention


def _nearest_equivalent_angles(label: Tensor, pred: Tensor, target: Tensor, convention: str) -> Tensor:
    """The label's Euler triple nearest ``pred``: a rotation has two triples in a Tait-Bryan
    convention, ``(a, b, c)`` and ``(a + 180, 180 - b, c + 180)``; the decomposition returns
    the one with ``|b| <= 90`` (e.g. a 92 degree yaw label comes back as yaw 88 with pitch
    and roll turned by 180), which must not be compared with a prediction of 92."""
    alt = torch.stack([label[..., 0] + 180.0, 180.0 - label[..., 1], label[..., 2] + 180.0], dim=-1)
    alt = wrap_angle(alt, 360.0)
    # Checked, not assumed, so a convention whose middle angle is not the second also works.
    same = chordal_distance(euler_to_rotation(alt, convention, degrees=True), target) < 1e-3
    cost = angle_difference(pred, label, 360.0).abs().sum(dim=-1)
    alt_cost = angle_difference(pred, alt, 360.0).abs().sum(dim=-1)
    return torch.where((same & (alt_cost < cost))[..., None], alt, label)


def _euler_pair(
    pred: Tensor,
    target: Tensor,
    convention: str,
    legacy_6drepnet: bool,
    target_angles_deg: Tensor | None,
    pred_angles_deg: Tensor | None,
    pred_convention: str | None,
) -> tuple[Tensor, Tensor]:
    """``(pred_angles, label_angles)`` in degrees, in ``convention``'s order, as compared by
    :func:`pose_errors`."""
    if pred_angles_deg is not None and pred_convention is None:
        raise ValueError("pred_angles_deg needs pred_convention (the convention of the angles)")
    direct = pred_angles_deg is not None and same_euler_convention(pred_convention, convention)
    if direct:
        pred_angles = pred_angles_deg.to(pred.dtype)
    else:
        pred_angles = rotation_to_euler(pred, convention, degrees=True)
    if target_angles_deg is not None and (legacy_6drepnet or direct):
        label = target_angles_deg.to(pred_angles)
    else:
        label = rotation_to_euler(target, convention, degrees=True)
        if direct:
            label = _nearest_equivalent_angles(label, pred_angles, target, convention)
    return pred_angles, label


def pose_errors(
    pred: Tensor,
    target: Tensor,
    convention: str = "300wlp",
    legacy_6drepnet: bool = False,
    target_angles_deg: Tensor | None = None,
    pred_angles_deg: Tensor | None = None,
    pred_convention: str | None = None,
) -> dict[str, Tensor]:
    """Per-sample errors in degrees between ``(B, 3, 3)`` predicted and label rotations.

    Prediction and label are decomposed by the same named Euler convention and each angle
    error is wrapped by 360 degrees. With ``legacy_6drepnet=True`` the prediction is compared
    to ``target_angles_deg`` (the raw label angles, in the convention's order; decomposed from
    the label when not given) with 6DRepNet's +/-180 wrap.

    A method that predicts Euler angles (LEC-HPE) is scored on the angles it predicts, as in
    its paper (the HopeNet protocol), not on a decomposition of its rotation, which folds
    ``|yaw| > 90`` (yaw 92 against a label of 88 would score an MAE of 120 degrees for a
    4 degree error): pass ``pred_angles_deg`` ``(B, 3)`` and their ``pred_convention``. They
    are used only when ``pred_convention`` is ``convention`` (or an alias of it); in any other
    convention the rotation is decomposed as usual. The label's angles are then
    ``target_angles_deg`` when given, else the label rotation's Euler triple nearest the
    prediction (a rotation has two: ``(a, b, c)`` and ``(a + 180, 180 - b, c + 180)``).
    ``geodesic`` always compares the rotations.

    Returns:
        dict with one ``(B,)`` tensor per angle name (e.g. ``yaw``), ``mae`` (their mean) and
        ``geodesic``.
    """
    names = euler_names(convention)
    pred_angles, tgt = _euler_pair(
        pred, target, convention, legacy_6drepnet, target_angles_deg, pred_angles_deg, pred_convention
    )
    if legacy_6drepnet:
        per_angle = legacy_6drepnet_error(pred_angles, tgt)
    else:
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
        self,
        pred: Tensor,
        target: Tensor,
        target_angles_deg: Tensor | None = None,
        pred_angles_deg: Tensor | None = None,
        pred_convention: str | None = None,
    ) -> None:  # type: ignore[override]
        """``pred``, ``target``: ``(B, 3, 3)`` rotations in hpelib's internal convention;
        ``target_angles_deg``: the labels' raw angles in this metric's convention, if known;
        ``pred_angles_deg``, ``pred_convention``: a method's own Euler angles, used for the
        per-angle errors when ``pred_convention`` is this metric's convention (see
        :func:`pose_errors`)."""
        pred, target = pred.float(), target.float()
        args = (
            pred, target, self.convention, self.legacy_6drepnet, target_angles_deg,
            None if pred_angles_deg is None else pred_angles_deg.float(), pred_convention,
        )
        errors = pose_errors(*args)
        columns = [*self.names, "mae", "geodesic"]
        stacked = torch.stack([errors[k] for k in columns], dim=-1).double()
        self.sums += stacked.sum(dim=0)
        self.count += stacked.shape[0]
        if self.range_angle is not None:
            # Binned by the label angles the errors were computed against.
            label = wrap_angle(_euler_pair(*args)[1], 360.0)
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
