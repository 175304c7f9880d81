"""RankPose augmentation: labels stay exact, released-code parameters, independent pair draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hpelib.rotation as hr
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods.rankpose import (
    RandomGaussianNoiseVariance,
    RandomZoomCrop,
    RankPoseAugmentation,
)
from hpelib.methods.rankpose.augmentation import rankpose_crop


def _batch(b: int = 16, size: int = 32, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(b, 3, size, size, generator=g),
        "rotation": hr.sample_rotation_euler_range(b, (40.0, 80.0, 30.0), generator=g),
    }


@pytest.mark.parametrize("zoom", [0.9, 1.0, 1.2])
def test_zoom_crop_moves_the_centre_within_the_crop_slack(zoom):
    size = 32
    t = RandomZoomCrop(scale=(zoom, zoom), generator=torch.Generator().manual_seed(0))
    warp, active = t.sample_warp(_batch(256, size))
    assert bool(active.all())
    m = warp.matrix
    assert torch.allclose(m[:, 0, 0], torch.full((256,), zoom, dtype=m.dtype))
    assert torch.allclose(m[:, 0, 1], torch.zeros(256, dtype=m.dtype))  # no rotation
    centre = torch.tensor([(size - 1) / 2, (size - 1) / 2, 1.0], dtype=m.dtype)
    moved = (m @ centre)[:, :2] - centre[:2]
    slack = max(zoom - 1.0, 0.0) / 2 * size
    assert moved.abs().max() <= slack + 1e-9
    if zoom > 1:  # uniform over the slack: both signs, near the edge
        assert moved.min() < -0.8 * slack and moved.max() > 0.8 * slack


def test_pipeline_keeps_the_rotation_label_exactly():
    aug = RankPoseAugmentation(
        noise_p=1.0, blur_p=1.0, color_p=1.0, generator=torch.Generator().manual_seed(1)
    )
    batch = _batch()
    out = aug(batch)
    assert torch.equal(out["rotation"], batch["rotation"])
    assert out["image"].shape == batch["image"].shape
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert not torch.equal(out["image"], batch["image"])


def test_noise_std_follows_the_variance_in_8bit_units():
    image = torch.full((64, 3, 32, 32), 0.5)
    fixed = RandomGaussianNoiseVariance((25.0, 25.0), p=1.0)({"image": image})["image"]
    assert float((fixed - 0.5).std()) == pytest.approx(5 / 255, rel=0.02)
    torch.manual_seed(0)
    drawn = RandomGaussianNoiseVariance(
        (0.0, 25.0), p=1.0, generator=torch.Generator().manual_seed(0)
    )
    per_image = (drawn({"image": image})["image"] - 0.5).flatten(1).std(1) * 255
    # std = sqrt(U(0, 25)): spread over (0, 5), mean E[sqrt(U)] * 5 = 10/3.
    assert float(per_image.max()) <= 5.1 and float(per_image.min()) < 1.5
    assert float(per_image.mean()) == pytest.approx(10 / 3, abs=0.4)
    with pytest.raises(ValueError, match="var_range"):
        RandomGaussianNoiseVariance((5.0, 1.0))


def test_released_code_defaults_and_errors():
    aug = RankPoseAugmentation()
    color, zoom, noise, blur = aug
    assert (color.p, zoom.scale, noise.p, noise.var_range, blur.p) == (
        0.2,
        (0.99, 1.21),
        0.05,
        (0.0, 25.0),
        0.01,
    )
    with pytest.raises(ValueError, match="blur_kernel"):
        RankPoseAugmentation(blur_kernel=4)
    with pytest.raises(ValueError, match="scale"):
        RandomZoomCrop(scale=(1.2, 1.0))


def test_each_image_of_a_pair_gets_its_own_draw():
    torch.manual_seed(0)
    dm = HPEDataModule(augmentation=RankPoseAugmentation(), normalize="none")
    batch = _batch(8)
    batch["partner"] = {k: v.clone() for k, v in batch.items()}
    out = dm.prepare_images(batch, train=True)
    # Same input images, independent zoom/crop draws: the two halves differ.
    assert not torch.allclose(out["image"], out["partner"]["image"])
    assert torch.equal(out["rotation"], out["partner"]["rotation"])


def test_rankpose_crop_is_the_released_square_box():
    box = np.array([10.0, 20.0, 50.0, 100.0])  # w 40, h 80, centre (30, 60)
    test = rankpose_crop(box, (200, 200), None)
    np.testing.assert_allclose(test, [30 - 56, 60 - 56, 30 + 56, 60 + 56])  # 1.4 * 80 / 2
    rng = np.random.default_rng(0)
    sides = np.array([np.diff(rankpose_crop(box, (200, 200), rng)[::2])[0] for _ in range(200)])
    assert sides.min() >= 1.4 * 80 - 1e-9 and sides.max() <= 1.6 * 80 + 1e-9
    assert math.isclose(float(np.mean(sides)), 1.5 * 80, rel_tol=0.03)
