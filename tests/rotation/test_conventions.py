"""Named conventions against the reference formulas and the worked cases of conventions.md."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation as SciRot

import hpelib.rotation as hr

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
T = np.diag([1.0, -1.0, -1.0])
F = np.diag([-1.0, 1.0, 1.0])

angles_rad = st.floats(min_value=-math.pi, max_value=math.pi, allow_nan=False)


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


@given(angles_rad, st.floats(-1.5, 1.5), angles_rad)
def test_300wlp_matrix_is_reference_label_matrix(pitch, yaw, roll):
    r = hr.rotation_from_euler_300wlp(t64(pitch), t64(yaw), t64(roll))
    r6 = SciRot.from_euler("xyz", [pitch, yaw, roll]).as_matrix()  # Rz(roll) Ry(yaw) Rx(pitch)
    np.testing.assert_allclose(hr.rotation_to_6drepnet_matrix(r).numpy(), r6, atol=1e-12)
    np.testing.assert_allclose(r.numpy(), T @ r6.T @ T, atol=1e-12)
    # The internal matrix equals the closed form Rx(-pitch) Ry(yaw) Rz(roll).
    closed = hr.rotation_x(t64(-pitch)) @ hr.rotation_y(t64(yaw)) @ hr.rotation_z(t64(roll))
    np.testing.assert_allclose(r.numpy(), closed.numpy(), atol=1e-12)


@given(st.integers(0, 2**31 - 1))
def test_300wlp_decomposition_equals_scipy_as_euler_xyz(seed):
    r = hr.random_rotation(32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pitch, yaw, roll = hr.euler_300wlp_from_rotation(r)
    r6 = hr.rotation_to_6drepnet_matrix(r).numpy()
    expected = SciRot.from_matrix(r6).as_euler("xyz")
    np.testing.assert_allclose(torch.stack([pitch, yaw, roll], -1).numpy(), expected, atol=1e-9)
    assert torch.allclose(hr.rotation_from_euler_300wlp(pitch, yaw, roll), r, atol=1e-10)


def test_yaw_beyond_90_comes_back_as_equivalent_triple():
    p, y, r = 0.3, math.radians(120.0), -0.2
    rot = hr.rotation_from_euler_300wlp(t64(p), t64(y), t64(r))
    p2, y2, r2 = (float(a) for a in hr.euler_300wlp_from_rotation(rot))
    assert y2 == pytest.approx(math.pi - y)
    assert hr.wrap_angle(t64(p2 - (p - math.pi))).abs() < 1e-9
    assert hr.wrap_angle(t64(r2 - (r - math.pi))).abs() < 1e-9
    assert hr.geodesic_distance(hr.rotation_from_euler_300wlp(t64(p2), t64(y2), t64(r2)), rot) < 1e-9


def test_gimbal_lock_follows_reference_rule():
    rot = hr.rotation_from_euler_300wlp(t64(0.4), t64(math.pi / 2), t64(0.1))
    pitch, yaw, roll = (float(a) for a in hr.euler_300wlp_from_rotation(rot))
    r6 = hr.rotation_to_6drepnet_matrix(rot).numpy()
    assert roll == 0.0
    assert yaw == pytest.approx(math.pi / 2)
    assert pitch == pytest.approx(math.atan2(-r6[1, 2], r6[1, 1]))
    back = hr.rotation_from_euler_300wlp(t64(pitch), t64(yaw), t64(roll))
    assert hr.geodesic_distance(back, rot) < 1e-6
    # Gradients stay finite through the decomposition at the singularity.
    rr = rot.clone().requires_grad_()
    torch.stack(hr.euler_300wlp_from_rotation(rr)).sum().backward()
    assert torch.isfinite(rr.grad).all()


def test_worked_case_in_plane_rotation():
    """conventions.md: (0.2, 0.4, 0.1) rotated by 0.3 gives ~(0.066, 0.440, -0.226)."""
    rot = hr.rotation_from_euler_300wlp(t64(0.2), t64(0.4), t64(0.1))
    p, y, r = (float(a) for a in hr.euler_300wlp_from_rotation(hr.rotate_inplane(rot, 0.3)))
    assert (p, y, r) == pytest.approx((0.066, 0.440, -0.226), abs=1e-3)
    # The naive "roll += phi" rule is wrong away from the frontal pose.
    naive = hr.rotation_from_euler_300wlp(t64(0.2), t64(0.4), t64(-0.2))
    assert hr.geodesic_distance(naive, hr.rotate_inplane(rot, 0.3)) > 0.1


def test_positive_roll_tilts_head_x_axis_clockwise_in_image():
    rot = hr.rotation_from_euler_300wlp(t64(0.0), t64(0.0), t64(0.3))
    x_axis_image = rot[:2, 0]  # head x axis in (x right, y down) image axes
    # y down: a positive y component on the right side means clockwise as displayed.
    assert x_axis_image[0] > 0 and x_axis_image[1] > 0


def test_opnet_quaternion_is_of_T_R6T_T():
    p, y, r = 0.1, -0.7, 0.25
    r6 = SciRot.from_euler("xyz", [p, y, r]).as_matrix()
    expected = SciRot.from_matrix(T @ r6.T @ T).as_quat()
    expected *= np.sign(expected[3])
    rot = hr.rotation_from_euler_300wlp(t64(p), t64(y), t64(r))
    np.testing.assert_allclose(hr.opnet_quaternion_from_rotation(rot).numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(hr.rotation_from_opnet_quaternion(t64(expected)).numpy(), rot.numpy(), atol=1e-12)


def test_biwi_pose_matrix_equals_hopenet_conversion():
    r_file = SciRot.random(5, random_state=3).as_matrix()
    hopenet_r6 = F @ np.transpose(r_file, (0, 2, 1)) @ F
    via_hopenet = hr.rotation_from_6drepnet_matrix(t64(hopenet_r6))
    np.testing.assert_allclose(hr.rotation_from_biwi_pose_matrix(t64(r_file)).numpy(), via_hopenet.numpy(), atol=1e-12)
    np.testing.assert_allclose(hr.rotation_to_biwi_pose_matrix(via_hopenet).numpy(), r_file, atol=1e-12)


def test_shared_biwi_frame_converts_to_reference_angles():
    pose = SHARED / "data" / "fixtures" / "BIWI" / "01" / "frame_00003_pose.txt"
    if not pose.is_file():
        pytest.skip(f"shared BIWI fixture not found at {pose}")
    r_file = np.loadtxt(pose.open().readlines()[:3])
    pitch, yaw, roll = (math.degrees(float(a)) for a in hr.euler_300wlp_from_rotation(hr.rotation_from_biwi_pose_matrix(t64(r_file))))
    assert (yaw, pitch, roll) == pytest.approx((3.29, 7.61, -1.57), abs=0.01)


@given(angles_rad, st.floats(-1.5, 1.5), angles_rad)
def test_clerf_order_round_trip_full_range(yaw, pitch, roll):
    rot = hr.rotation_from_euler_clerf(t64(yaw), t64(pitch), t64(roll))
    y2, p2, r2 = hr.euler_clerf_from_rotation(rot)
    assert hr.is_rotation_matrix(rot, 1e-10)
    assert torch.allclose(hr.rotation_from_euler_clerf(y2, p2, r2), rot, atol=1e-9)
    assert float(p2) == pytest.approx(pitch, abs=1e-9)
    assert abs(float(hr.wrap_angle(y2 - yaw))) < 1e-9
    assert abs(float(hr.wrap_angle(r2 - roll))) < 1e-9


def test_clerf_roll_is_the_in_plane_angle():
    rot = hr.rotation_from_euler_clerf(t64(2.5), t64(0.4), t64(0.2))  # facing away (yaw > 90 deg)
    y, p, r = hr.euler_clerf_from_rotation(hr.rotate_inplane(rot, 0.5))
    assert (float(y), float(p), float(r)) == pytest.approx((2.5, 0.4, -0.3), abs=1e-9)
    # Same sign as 300W-LP for small angles.
    small = hr.rotation_from_euler_clerf(t64(0.01), t64(0.02), t64(0.03))
    p3, y3, r3 = hr.euler_300wlp_from_rotation(small)
    assert (float(y3), float(p3), float(r3)) == pytest.approx((0.01, 0.02, 0.03), abs=1e-3)


def test_generic_euler_api_and_errors():
    angles = torch.tensor([[10.0, -20.0, 30.0]], dtype=torch.float64)
    for conv in ("300wlp", "aflw2000", "clerf", "opnet"):
        rot = hr.euler_to_rotation(angles, conv, degrees=True)
        assert torch.allclose(hr.rotation_to_euler(rot, conv, degrees=True), angles, atol=1e-9)
    assert hr.euler_names("300wlp") == ("pitch", "yaw", "roll")
    assert hr.euler_names("clerf") == ("yaw", "pitch", "roll")
    with pytest.raises(ValueError, match="unknown Euler convention 'xyz'"):
        hr.euler_to_rotation(angles, "xyz")
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        hr.euler_to_rotation(torch.zeros(2, 4), "300wlp")
