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


def test_predicted_euler_angles_are_scored_directly_beyond_90_yaw():
    # LEC-HPE predicts yaw 92 for a label of 88: a 4 degree yaw error. Decomposing the
    # predicted rotation folds yaw to 88 with pitch and roll turned by 180: MAE 120.
    angles = torch.tensor([[0.0, 92.0, 0.0]], dtype=torch.float64)
    pred, target = hr.euler_to_rotation(angles, "300wlp", degrees=True), rot_deg(0, 88, 0)
    folded = pose_errors(pred, target)
    assert float(folded["mae"]) == pytest.approx(120.0, abs=1e-3)
    for convention in ("300wlp", "aflw2000"):  # an alias is the same convention
        err = pose_errors(pred, target, convention, pred_angles_deg=angles, pred_convention="300wlp")
        assert float(err["yaw"]) == pytest.approx(4.0, abs=1e-4)
        assert float(err["pitch"]) == pytest.approx(0.0, abs=1e-4)
        assert float(err["mae"]) == pytest.approx(4.0 / 3, abs=1e-4)
        assert float(err["geodesic"]) == pytest.approx(4.0, abs=1e-3)  # still on the rotation
    metric = PoseMetrics()
    metric.update(pred, target, pred_angles_deg=angles, pred_convention="300wlp")
    out = metric.compute()
    assert float(out["mae"]) == pytest.approx(4.0 / 3, abs=1e-4)
    assert float(out["yaw_mae"]) == pytest.approx(4.0, abs=1e-4)
    assert float(out["geodesic"]) == pytest.approx(4.0, abs=1e-3)
    with pytest.raises(ValueError, match="pred_convention"):
        pose_errors(pred, target, pred_angles_deg=angles)


def test_predicted_euler_angles_in_another_convention_are_not_used():
    angles = torch.tensor([[0.0, 92.0, 0.0]], dtype=torch.float64)
    pred, target = hr.euler_to_rotation(angles, "300wlp", degrees=True), rot_deg(5, 80, 10)
    wrong = torch.tensor([[50.0, -50.0, 50.0]], dtype=torch.float64)  # would be scored if used
    for metric_convention, pred_convention in (("clerf", "300wlp"), ("300wlp", "clerf")):
        expected = pose_errors(pred, target, metric_convention)
        got = pose_errors(pred, target, metric_convention, pred_angles_deg=wrong, pred_convention=pred_convention)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key])


def test_label_beyond_90_yaw_is_matched_to_the_prediction():
    angles = torch.tensor([[3.0, 88.0, -2.0], [0.0, -95.0, 20.0], [10.0, 20.0, 30.0]], dtype=torch.float64)
    labels = torch.tensor([[3.0, 92.0, -2.0], [0.0, -97.0, 20.0], [10.0, 25.0, 30.0]], dtype=torch.float64)
    pred = hr.euler_to_rotation(angles, "300wlp", degrees=True)
    target = hr.euler_to_rotation(labels, "300wlp", degrees=True)
    expected = torch.tensor([4.0, 2.0, 5.0], dtype=torch.float64) / 3
    # Label rotations only: each label's Euler triple nearest the prediction.
    err = pose_errors(pred, target, pred_angles_deg=angles, pred_convention="300wlp")
    torch.testing.assert_close(err["mae"], expected, atol=1e-4, rtol=0)
    # The dataset's raw label angles, when given, are used as they are.
    raw = pose_errors(pred, target, target_angles_deg=labels, pred_angles_deg=angles, pred_convention="300wlp")
    torch.testing.assert_close(raw["mae"], expected, atol=1e-4, rtol=0)
    metric = PoseMetrics(range_angle="yaw", range_edges=(0, 30, 90, 180))
    metric.update(pred, target, pred_angles_deg=angles, pred_convention="300wlp")
    out = metric.compute()
    assert float(out["count@yaw[90,180)"]) == 2 and float(out["count@yaw[0,30)"]) == 1
    assert float(out["mae@yaw[90,180)"]) == pytest.approx(1.0, abs=1e-4)
