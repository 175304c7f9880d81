"""Reduced-scale JPEG decoding (``reduced_decode``): the same crop region and labels as the
full decode, pixels within resampling differences, and the reduction really taken."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpelib.data.datasets import AFLW2000
from hpelib.data.datasets.base import (
    DatasetError,
    decode_image_for_crop,
    jpeg_reduction,
    resize_crop,
)
from tests.data.writers import pt2d, write_3ddfa


def _smooth_image(w: int, h: int) -> Image.Image:
    """Smooth gradients with a bright square: content both decodes render alike, and where
    a misplaced crop would show."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.stack([x / w * 255, y / h * 255, 128 + 60 * np.sin(x / 23 + y / 31)], axis=-1)
    rgb[h // 3 : h // 2, w // 3 : w // 2] = 250
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.fixture
def big_aflw(tmp_path: Path) -> Path:
    """Two AFLW2000 items with 400 x 400 JPEGs and a ~200 px face box."""
    for k, (stem, pose) in enumerate(
        [("image00001", (0.1, -0.3, 0.05)), ("image00002", (0, 0.5, 0))]
    ):
        write_3ddfa(tmp_path, stem, pose, pt2d=pt2d(100 + 20 * k, 110, 300, 310))
        _smooth_image(400, 400).save(tmp_path / f"{stem}.jpg", quality=95)
    return tmp_path


@pytest.mark.parametrize(
    ("side", "size", "expected"),
    [(290, 64, 4), (290, 128, 2), (100, 64, 1), (1000, 64, 8), (64, 64, 1)],
)
def test_jpeg_reduction_keeps_the_crop_at_least_size(side: float, size: int, expected: int) -> None:
    r = jpeg_reduction(np.array([0.0, 0.0, side, side]), size)
    assert r == expected
    assert side / r >= size or r == 1


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("size", [32, 64])
def test_reduced_decode_gives_the_same_item_up_to_resampling(
    big_aflw: Path, train: bool, size: int
) -> None:
    full = AFLW2000(big_aflw, image_size=size, train=train, cache=None)
    fast = AFLW2000(big_aflw, image_size=size, train=train, cache=None, reduced_decode=True)
    for i in range(len(full)):
        a, b = full[i], fast[i]
        assert a.keys() == b.keys()
        for key in a:
            if key != "image":
                assert torch.equal(a[key], b[key]), key  # labels untouched
        diff = (a["image"].float() - b["image"].float()).abs()
        assert diff.mean() < 3.0, diff.mean()  # of 255: resampling, not a shifted crop


def test_decode_reduces_large_jpegs_only(big_aflw: Path, tmp_path: Path) -> None:
    crop = np.array([50.0, 50.0, 350.0, 350.0])
    img, got, scale = decode_image_for_crop(big_aflw / "image00001.jpg", lambda wh: crop, 64)
    assert scale == 0.25 and img.size == (100, 100) and got is crop
    # PNG: no DCT scaling, full size.
    png = tmp_path / "x.png"
    _smooth_image(400, 400).save(png)
    img, _, scale = decode_image_for_crop(png, lambda wh: crop, 64)
    assert scale == 1.0 and img.size == (400, 400)


def test_resize_crop_out_of_image_is_black_at_any_scale() -> None:
    img = Image.new("RGB", (400, 400), (200, 200, 200))
    small = img.resize((100, 100))
    crop = np.array([-200.0, 0.0, 200.0, 400.0])  # left half outside the image
    for image, scale in ((img, 1.0), (small, 0.25)):
        out = np.asarray(resize_crop(image, crop, 32, scale))
        assert out[:, :15].max() == 0 and out[:, 17:].min() == 200


def test_corrupt_jpeg_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        decode_image_for_crop(bad, lambda wh: np.array([0.0, 0.0, 10.0, 10.0]), 8)
