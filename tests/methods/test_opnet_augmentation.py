"""OpNet's paper augmentation: ROI distribution, 90-degree turn, mirror, labels following."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpelib.data.transforms import (
    RandomBoxFraming,
    RandomGeometric,
    RandomHorizontalMirror,
    RandomRightAngleRotation,
    box_view_roi,
)
from hpelib.methods.opnet import OpNetAugmentation, OpNetCrop
from tests.data.test_transforms import (  # noqa: F401  (aflw is a fixture)
    SIZE,
    _centroid,
    _dot_image,
    aflw,
    check_consistency,
    run_transform,
    synthetic_batch,
)

NEW_OPS = {
    "box_framing": lambda: RandomBoxFraming(),
    "right_angle": lambda: RandomRightAngleRotation(p=1.0),
    "opnet_paper": lambda: RandomGeometric(
        [RandomBoxFraming(), RandomRightAngleRotation(p=0.5), RandomHorizontalMirror(p=0.5)]
    ),
}


@settings(max_examples=40, deadline=None)
@given(
    wh=st.tuples(st.floats(5.0, 200.0), st.floats(5.0, 200.0)),
    scale=st.floats(0.6, 1.6),
    shift=st.tuples(st.floats(-1.0, 1.0), st.floats(-1.0, 1.0)),
)
def test_view_keeps_70_percent_of_the_box_per_axis(wh, scale, shift):
    box = torch.tensor([[3.0, -7.0, 3.0 + wh[0], -7.0 + wh[1]]], dtype=torch.float64)
    view = box_view_roi(
        box, torch.tensor([scale], dtype=torch.float64), torch.tensor([shift], dtype=torch.float64)
    )
    side = float(view[0, 2] - view[0, 0])
    assert side == pytest.approx(max(wh) * scale)
    assert float(view[0, 3] - view[0, 1]) == pytest.approx(side)
    for axis, extent in enumerate(wh):
        lo = max(float(view[0, axis]), float(box[0, axis]))
        hi = min(float(view[0, axis + 2]), float(box[0, axis + 2]))
        # at most 30 % of the smaller of view and box leaves the other, and the bound is reached
        assert hi - lo >= 0.7 * min(side, extent) - 1e-9
        if abs(shift[axis]) == 1.0:
            assert hi - lo == pytest.approx(0.7 * min(side, extent))


def test_opnet_crop_test_box_and_train_distribution():
    crop = OpNetCrop()
    box = np.array([10.0, 20.0, 50.0, 80.0])  # 40 x 60
    np.testing.assert_allclose(crop(box, (200, 200), None), [-3.0, 17.0, 63.0, 83.0])
    rng = np.random.default_rng(0)
    views = np.stack([crop(box, (200, 200), rng) for _ in range(4000)])
    scale = (views[:, 2] - views[:, 0]) / 60.0
    assert scale.min() >= 0.6 - 1e-12 and scale.max() <= 1.6 + 1e-12
    assert scale.mean() == pytest.approx(1.1, abs=0.01)
    assert scale.std() == pytest.approx(0.1, abs=0.01)
    centre_x = 0.5 * (views[:, 0] + views[:, 2]) - 30.0
    assert centre_x.std() > 1.0  # shifted
    assert np.all(np.isfinite(crop(np.full(4, np.nan), (64, 48), rng)))
    with pytest.raises(ValueError, match="scale_range"):
        OpNetCrop(extension=2.0)


@pytest.mark.parametrize("name", sorted(NEW_OPS))
def test_new_ops_labels_follow_on_real_faces(aflw, name):  # noqa: F811
    batch, x = aflw
    out, warp = run_transform(NEW_OPS[name](), batch, seed=5)
    check_consistency(batch, x, out, warp)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(sorted(NEW_OPS)))
def test_new_ops_labels_follow_on_point_clouds(seed, name):
    batch, x = synthetic_batch(6, seed)
    out, warp = run_transform(NEW_OPS[name](), batch, seed)
    check_consistency(batch, x, out, warp)


def test_right_angle_turn_is_an_exact_pixel_rotation_and_the_label_follows():
    batch, x = synthetic_batch(4, 1)
    out, warp = run_transform(RandomRightAngleRotation(p=1.0), batch, seed=2)
    ccw = warp.matrix[:, 0, 1] > 0  # displayed counter-clockwise
    for i in range(4):
        expected = torch.rot90(batch["image"][i], k=1 if ccw[i] else -1, dims=(-2, -1))
        torch.testing.assert_close(out["image"][i], expected, atol=1e-5, rtol=0)
    check_consistency(batch, x, out, warp)
    # the label turned by 90 degrees about the camera axis
    rel = out["rotation"].double() @ batch["rotation"].double().transpose(-1, -2)
    torch.testing.assert_close(rel[:, 2, 2], torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(rel[:, 0, 0], torch.zeros(4, dtype=torch.float64), atol=1e-5, rtol=0)


def test_framing_moves_the_image_with_the_points():
    b = 6
    g = torch.Generator().manual_seed(3)
    pts = (SIZE - 1) / 2 + (torch.rand(b, 2, generator=g) - 0.5) * 8
    box = torch.cat([pts - 8.0, pts + 8.0], dim=-1)
    batch = {
        "image": _dot_image(pts).expand(b, 3, SIZE, SIZE).contiguous(),
        "head_center": pts,
        "box": box,
    }
    out, warp = run_transform(RandomBoxFraming(), batch, seed=4)
    torch.testing.assert_close(
        _centroid(out["image"]), out["head_center"].double(), atol=0.1, rtol=0
    )
    # the framed box has the drawn scale: its side over the image side is 1 / scale
    side = out["box"][:, 2] - out["box"][:, 0]
    assert ((SIZE / side) > 0.6 - 1e-4).all() and ((SIZE / side) < 1.6 + 1e-4).all()


def test_augmentation_rates_and_noise_free_labels():
    n = 4000
    batch = {"image": torch.rand(n, 3, 8, 8), "rotation": torch.eye(3).expand(n, 3, 3).clone()}
    aug = OpNetAugmentation(intensity=False, generator=torch.Generator().manual_seed(0))
    warp, active = aug.geometric.sample_warp(batch)
    det = torch.linalg.det(warp.matrix[:, :2, :2])
    assert (det < 0).float().mean() == pytest.approx(0.5, abs=0.03)  # mirror p = 1/2
    angle = torch.rad2deg(torch.atan2(warp.matrix[:, 0, 1], warp.matrix[:, 0, 0]).abs())
    turned = (angle > 60) & (angle < 120)
    assert turned.float().mean() == pytest.approx(0.01, abs=0.006)  # 90 degrees, p = 1/100
    small = angle[~turned]
    small = torch.minimum(small, 180 - small)  # mirrored warps measure from 180
    rotated = small > 1e-6
    assert rotated.float().mean() == pytest.approx(1 / 3, abs=0.04)
    assert small.max() <= 30.0 + 1e-6
    fixed = OpNetAugmentation(
        intensity=False, rotation_min_degrees=30.0, right_angle_p=0.0, mirror_p=0.0
    )
    w2, a2 = fixed.geometric.sample_warp(batch)
    ang2 = torch.rad2deg(torch.atan2(w2.matrix[:, 0, 1], w2.matrix[:, 0, 0]).abs())
    assert torch.allclose(
        ang2[a2], torch.full_like(ang2[a2], 30.0), atol=1e-6
    )  # released: exactly 30


def test_augmentation_runs_on_a_batch_and_keeps_range():
    batch, _ = synthetic_batch(8, 3)
    out = OpNetAugmentation(framing=True)(batch)
    assert out["image"].shape == batch["image"].shape
    assert out["image"].min() >= 0.0 and out["image"].max() <= 1.0
    assert set(out) == set(batch)
