"""Pose metrics: hand-computed cases, wrap handling, legacy mode, breakdown, the 99 filter."""

from __future__ import annotations

import math

import pytest
import torch

import hpelib.rotation as hr
from hpelib.metrics import PoseMetrics, legacy_6drepnet_error, pose_errors, within_angle_limit


def rot_deg(pitch: float, yaw: float, roll: float) -> torch.Tensor:
    return hr.euler_to_rotation(torch.tensor([[pitch, yaw, roll]], dtype=torch.float64), "300wlp", degrees=True)


def test_mae_and_geodesic_hand_computed():
    metric = PoseMetrics()
    pred = torch.cat([rot_deg(10, 20, 30), rot_deg(0, 0, 0)])
    target = torch.cat([rot_deg(12, 15, 30), rot_deg(0, 0, 4)])
    metric.update(pred, target)
    out = metric.compute()
    assert float(out["pitch_mae"]) == pytest.approx(1.0, abs=1e-4)
    assert float(out["yaw_mae"]) == pytest.approx(2.5, abs=1e-4)
    assert float(out["roll_mae"]) == pytest.approx(2.0, abs=1e-4)
    assert float(out["mae"]) == pytest.approx((1.0 + 2.5 + 2.0) / 3, abs=1e-4)
    g0 = math.degrees(float(hr.geodesic_distance(pred[:1], target[:1])))
    assert float(out["geodesic"]) == pytest.approx((g0 + 4.0) / 2, abs=1e-3)


def test_wrap_by_360_not_180():
    pred, target = rot_deg(0, 0, 179), rot_deg(0, 0, -179)
    errors = pose_errors(pred, target)
    assert float(errors["roll"]) == pytest.approx(2.0, abs=1e-3)
    # A 180-degree roll error is 180 by default, 0 in 6DRepNet's legacy comparison.
    pred, target = rot_deg(0, 0, 90), rot_deg(0, 0, -90)
    assert float(pose_errors(pred, target)["roll"]) == pytest.approx(180.0, abs=1e-3)
    assert float(pose_errors(pred, target, legacy_6drepnet=True)["roll"]) == pytest.approx(0.0, abs=1e-3)


def test_legacy_uses_raw_label_angles():
    raw = torch.tensor([[5.0, 10.0, -972.0 + 720.0]])  # a wrapped raw roll label
    pred = rot_deg(5.0, 10.0, -252.0 + 360.0)
    err = pose_errors(pred, pred, legacy_6drepnet=True, target_angles_deg=raw.double())
    assert float(err["roll"]) == pytest.approx(0.0, abs=1e-3)
    assert torch.allclose(legacy_6drepnet_error(torch.tensor([170.0]), torch.tensor([-10.0])), torch.tensor([0.0]))


def test_range_breakdown_counts_and_values():
    metric = PoseMetrics(range_angle="yaw", range_edges=(0, 30, 90))
    metric.update(torch.cat([rot_deg(0, 10, 0), rot_deg(0, 50, 0)]), torch.cat([rot_deg(0, 12, 0), rot_deg(0, 60, 0)]))
    out = metric.compute()
    assert float(out["count@yaw[0,30)"]) == 1 and float(out["count@yaw[30,90)"]) == 1
    assert float(out["mae@yaw[0,30)"]) == pytest.approx(2.0 / 3, abs=1e-3)
    assert float(out["mae@yaw[30,90)"]) == pytest.approx(10.0 / 3, abs=1e-3)
    empty = PoseMetrics(range_angle="yaw", range_edges=(0, 30, 90, 180))
    empty.update(rot_deg(0, 10, 0), rot_deg(0, 12, 0))
    out = empty.compute()  # no |yaw| >= 90 sample: no error to report, not a perfect 0
    assert float(out["count@yaw[90,180)"]) == 0
    assert torch.isnan(out["mae@yaw[90,180)"]) and torch.isnan(out["geodesic@yaw[90,180)"])
    assert float(out["mae@yaw[0,30)"]) == pytest.approx(2.0 / 3, abs=1e-3)
    with pytest.raises(ValueError, match="range_angle"):
        PoseMetrics(range_angle="tilt")


def test_within_angle_limit_is_the_aflw2000_filter():
    angles = torch.tensor([[10.0, -99.0, 0.0], [0.0, 99.5, 0.0], [-972.0, 0.0, 0.0], [float("nan"), 0.0, 0.0]])
    assert within_angle_limit(angles).tolist() == [True, False, False, False]


def test_metric_reset_and_accumulation_over_batches():
    metric = PoseMetrics()
    for _ in range(3):
        metric.update(rot_deg(0, 3, 0), rot_deg(0, 0, 0))
    assert float(metric.compute()["yaw_mae"]) == pytest.approx(3.0, abs=1e-4)
    metric.reset()
    metric.update(rot_deg(0, 1, 0), rot_deg(0, 0, 0))
    assert float(metric.compute()["yaw_mae"]) == pytest.approx(1.0, abs=1e-4)
