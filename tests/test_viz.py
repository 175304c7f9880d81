"""Drawing: pixels change where the projected axes go, and types round-trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import hpelib.rotation as hr
from hpelib.viz import axes_endpoints, draw_axes, draw_cube


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.abs(after.astype(int) - before.astype(int)).sum(-1) > 0


def test_frontal_axes_point_right_and_up():
    tips = axes_endpoints(torch.eye(3), (50, 50), 20)
    np.testing.assert_allclose(tips[0], [70, 50])  # x: image right
    np.testing.assert_allclose(tips[1], [50, 30])  # up: image up
    np.testing.assert_allclose(tips[2], [50, 50])  # face direction: towards the camera


def test_draw_axes_changes_pixels_along_the_projected_axes():
    image = np.zeros((101, 101, 3), np.uint8)
    r = hr.rotation_from_euler_300wlp(torch.tensor(0.0), torch.tensor(0.6), torch.tensor(0.3))
    out = draw_axes(image, r, center=(50, 50), size=40, width=1)
    changed = _changed(image, out)
    tips = axes_endpoints(r, (50, 50), 40)
    for color_idx, tip in enumerate(tips):
        mid = np.round((np.array([50, 50]) + tip) / 2).astype(int)
        assert changed[mid[1] - 1 : mid[1] + 2, mid[0] - 1 : mid[0] + 2].any()
        # The drawn colour dominates near the middle of its line.
        patch = out[mid[1] - 1 : mid[1] + 2, mid[0] - 1 : mid[0] + 2].reshape(-1, 3)
        assert patch[:, color_idx].max() >= 200
    # Far from every axis nothing changed.
    assert not changed[95:, :5].any()


def test_draw_cube_and_input_types():
    r = hr.rotation_from_euler_300wlp(torch.tensor(0.2), torch.tensor(-0.5), torch.tensor(0.1))
    pil = Image.new("RGB", (64, 64))
    out_pil = draw_cube(pil, r)
    assert isinstance(out_pil, Image.Image) and np.asarray(out_pil).any()
    tensor = torch.zeros(3, 64, 64, dtype=torch.uint8)
    out_t = draw_axes(tensor, r.numpy())
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (3, 64, 64) and out_t.any()
    assert not tensor.any()  # the input is not modified
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        draw_axes(pil, np.eye(4))


def test_rotating_the_pose_rotates_the_drawing():
    """A roll of 90 degrees turns the red axis from image right to image down (clockwise)."""
    r = hr.rotation_from_euler_300wlp(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(math.pi / 2))
    tips = axes_endpoints(r, (0, 0), 10)
    np.testing.assert_allclose(tips[0], [0, 10], atol=1e-5)


def _hopenet_draw_axis_tips(yaw: float, pitch: float, roll: float, size: float) -> np.ndarray:
    """The line ends of HopeNet's ``draw_axis`` (copied by 6DRepNet) about the origin, for
    its degrees-in 300W-LP angles: red x, green y, blue z."""
    pitch, yaw, roll = np.deg2rad(pitch), -np.deg2rad(yaw), np.deg2rad(roll)
    cos, sin = np.cos, np.sin
    x1 = size * (cos(yaw) * cos(roll))
    y1 = size * (cos(pitch) * sin(roll) + cos(roll) * sin(pitch) * sin(yaw))
    x2 = size * (-cos(yaw) * sin(roll))
    y2 = size * (cos(pitch) * cos(roll) - sin(pitch) * sin(yaw) * sin(roll))
    x3 = size * sin(yaw)
    y3 = size * (-cos(yaw) * sin(pitch))
    return np.array([[x1, y1], [x2, y2], [x3, y3]])


@pytest.mark.parametrize("pose", [(0, 0, 0), (30, 0, 0), (0, 25, 0), (0, 0, 20), (-50, 15, -10), (70, -30, 25)])
def test_axis_colours_against_hopenets_draw_axis(pose):
    """docs/inference.md: red and blue as in HopeNet's/6DRepNet's draw_axis, green opposite."""
    yaw, pitch, roll = pose
    angles = torch.tensor([pitch, yaw, roll], dtype=torch.float64)
    rotation = hr.euler_to_rotation(angles, "300wlp", degrees=True)
    ours = axes_endpoints(rotation, (0.0, 0.0), 100.0)
    theirs = _hopenet_draw_axis_tips(yaw, pitch, roll, 100.0)
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-6)  # red
    np.testing.assert_allclose(ours[1], -theirs[1], atol=1e-6)  # green: opposite
    np.testing.assert_allclose(ours[2], theirs[2], atol=1e-6)  # blue
