"""Image-geometry label transforms: algebra, CLERF Theorem 3.1, and agreement with warps."""

from __future__ import annotations

import math

import kornia
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hpelib.rotation as hr

seeds = st.integers(0, 2**31 - 1)
angles = st.floats(-2 * math.pi, 2 * math.pi, allow_nan=False)


def rand_rot(seed: int, n: int = 8) -> torch.Tensor:
    return hr.random_rotation(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@given(seeds, angles)
def test_rotate_geodesic_equals_angle(seed, phi):
    r = rand_rot(seed)
    expected = abs(math.remainder(phi, 2 * math.pi))
    d = hr.geodesic_distance(hr.rotate_inplane(r, phi), r)
    assert torch.allclose(d, torch.full_like(d, expected), atol=1e-7)


@given(seeds, angles, angles)
def test_rotations_compose(seed, a, b):
    r = rand_rot(seed)
    assert torch.allclose(hr.rotate_inplane(hr.rotate_inplane(r, a), b), hr.rotate_inplane(r, a + b), atol=1e-10)


@given(seeds, angles)
def test_flip_is_an_involution_and_a_rotation(seed, theta):
    r = rand_rot(seed)
    f = hr.flip_across_line(r, theta)
    assert hr.is_rotation_matrix(f, 1e-10).all()
    assert torch.allclose(hr.flip_across_line(f, theta), r, atol=1e-10)


@given(seeds, angles, angles)
def test_geodesic_invariance_theorem_3_1(seed, phi, theta):
    a, b = rand_rot(seed), rand_rot(seed + 7)
    d = hr.geodesic_distance(a, b)
    for fn in (lambda r: hr.rotate_inplane(r, phi), lambda r: hr.flip_across_line(r, theta), hr.mirror_horizontal):
        assert torch.allclose(hr.geodesic_distance(fn(a), fn(b)), d, atol=1e-8)


def test_mirror_negates_yaw_and_roll_keeps_pitch():
    r = hr.rotation_from_euler_300wlp(torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64), torch.tensor(-0.3, dtype=torch.float64))
    p, y, ro = (float(a) for a in hr.euler_300wlp_from_rotation(hr.mirror_horizontal(r)))
    assert (p, y, ro) == pytest.approx((0.2, -0.5, 0.3), abs=1e-12)
    assert torch.allclose(hr.mirror_horizontal(r), hr.flip_across_line(r, math.pi / 2), atol=1e-12)


def test_flip_matches_clerf_equation_in_its_y_up_frame():
    """CLERF: R_hc' = Flip_t @ R_hc @ Flip_X with R_hc = T R T (x right, y up, z to viewer)."""
    theta = 0.7
    r = rand_rot(3)
    tm = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    c2, s2 = math.cos(2 * theta), math.sin(2 * theta)
    flip_t = torch.tensor([[c2, s2, 0], [s2, -c2, 0], [0, 0, 1]], dtype=torch.float64)
    flip_x = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    r_hc = tm @ r @ tm
    expected = tm @ (flip_t @ r_hc @ flip_x) @ tm
    assert torch.allclose(hr.flip_across_line(r, theta), expected, atol=1e-12)


# ---------------------------------------------------------------- ImageWarp
def _project(r: torch.Tensor, points: torch.Tensor, center: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """Orthographic projection of head points (N, 3) under r (B, 3, 3) -> (B, N, 2) pixels."""
    return scale * (points @ r.transpose(-1, -2))[..., :2] + center[:, None, :]


@given(seeds, angles, angles)
def test_warp_label_predicts_warped_projection(seed, phi, theta):
    """The label transform and the image-point transform come from one object and agree:
    projecting head points with the new label equals warping the old projections."""
    g = torch.Generator().manual_seed(seed)
    b = 4
    r = rand_rot(seed, b)
    points = torch.randn(20, 3, generator=g, dtype=torch.float64)
    center = torch.full((b, 2), 31.5, dtype=torch.float64)
    fx = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    warps = {
        "rotation": hr.ImageWarp.rotation(torch.full((b,), phi, dtype=torch.float64), center),
        "flip": hr.ImageWarp.flip(torch.full((b,), theta, dtype=torch.float64), center),
        "mirror": hr.ImageWarp.mirror(64, b, dtype=torch.float64),
        "scaled": hr.ImageWarp.scale_translate(torch.full((b,), 1.3, dtype=torch.float64), torch.ones(b, 2, dtype=torch.float64), center),
    }
    warps["composed"] = warps["rotation"].then(warps["flip"]).then(warps["scaled"])
    for name, warp in warps.items():
        new_label = warp.apply_rotation(r)
        assert hr.is_rotation_matrix(new_label, 1e-9).all(), name
        reflect = torch.linalg.det(warp.linear) < 0
        pts = torch.where(reflect[:, None, None], points * fx, points)
        scale = torch.linalg.det(warp.linear).abs().sqrt()
        warped_center = warp.apply_points(center[:, None, :])[:, 0]
        predicted = scale[:, None, None] * 10.0 * (pts @ new_label.transpose(-1, -2))[..., :2] + warped_center[:, None]
        expected = warp.apply_points(_project(r, points, center))
        assert torch.allclose(predicted, expected, atol=1e-8), name


def test_warp_labels_equal_label_functions():
    r = rand_rot(5, 3)
    c = torch.full((3, 2), 15.5, dtype=torch.float64)
    phi = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(hr.ImageWarp.rotation(phi, c).apply_rotation(r), hr.rotate_inplane(r, phi), atol=1e-12)
    assert torch.allclose(hr.ImageWarp.flip(phi, c).apply_rotation(r), hr.flip_across_line(r, phi), atol=1e-12)
    assert torch.allclose(hr.ImageWarp.mirror(32, 3, torch.float64).apply_rotation(r), hr.mirror_horizontal(r), atol=1e-12)


def test_warp_matrix_drives_kornia_like_the_points():
    """A bright pixel moves in the kornia-warped image to where apply_points says."""
    size = 33
    img = torch.zeros(1, 1, size, size)
    img[0, 0, 16, 26] = 1.0  # (x=26, y=16): right of the centre (16, 16)
    center = torch.tensor([[16.0, 16.0]])
    for warp in (
        hr.ImageWarp.rotation(torch.tensor([math.pi / 2]), center),
        hr.ImageWarp.flip(torch.tensor([math.pi / 4]), center),
        hr.ImageWarp.mirror(size, 1),
    ):
        out = kornia.geometry.transform.warp_affine(img, warp.affine, (size, size), align_corners=True)
        y, x = divmod(int(out.flatten().argmax()), size)
        px = warp.apply_points(torch.tensor([[[26.0, 16.0]]]))[0, 0]
        assert (x, y) == (round(float(px[0])), round(float(px[1])))
    # Displayed counter-clockwise: a point right of the centre moves up (smaller y).
    up = hr.ImageWarp.rotation(torch.tensor([math.pi / 2]), center).apply_points(torch.tensor([[[26.0, 16.0]]]))
    assert torch.allclose(up, torch.tensor([[[16.0, 6.0]]]), atol=1e-5)


def test_warp_inverse_boxes_and_shear_error():
    c = torch.full((2, 2), 10.0)
    w = hr.ImageWarp.rotation(torch.tensor([0.4, -0.2]), c).then(hr.ImageWarp.scale_translate(torch.tensor([2.0, 0.5]), torch.tensor([[1.0, 2.0], [0.0, -3.0]]), c))
    pts = torch.randn(2, 5, 2)
    assert torch.allclose(w.inverse().apply_points(w.apply_points(pts)), pts, atol=1e-4)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
    mirrored = hr.ImageWarp.mirror(10, 2).apply_boxes(boxes)
    assert torch.allclose(mirrored, torch.tensor([[5.0, 0.0, 9.0, 2.0], [6.0, 1.0, 8.0, 3.0]]))
    shear = hr.ImageWarp(torch.tensor([[[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]))
    with pytest.raises(ValueError, match="similarity"):
        shear.apply_rotation(torch.eye(3)[None])


def test_crop_resize_maps_box_corners_to_output_corners():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 120.0]])
    w = hr.ImageWarp.crop_resize(boxes, 64)
    corners = w.apply_points(torch.tensor([[[10.0, 20.0], [110.0, 120.0]]]))
    np.testing.assert_allclose(corners.numpy(), [[[0.0, 0.0], [63.0, 63.0]]], atol=1e-5)
