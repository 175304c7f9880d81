"""Crop rules against the reference code (6DRepNet ``datasets.py``) and train/test framing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from hpelib.data.datasets import AFLW2000, BIWIRaw, Pose300WLP
from hpelib.data.datasets.base import (
    CROP_JITTER_SCALE,
    CROP_JITTER_SHIFT,
    crop_rule_6drepnet,
    crop_rule_tight,
    get_crop_rule,
    landmark_box,
)
from tests.data.writers import pt2d, write_3ddfa


# ------------------------------------------------------- the reference, written out in numpy
def reference_aflw2000_crop(pt2d: np.ndarray) -> tuple[int, int, int, int]:
    """6DRepNet ``AFLW2000.__getitem__`` (HopeNet's is the same): box of ALL pt2d points."""
    x_min, y_min = min(pt2d[0, :]), min(pt2d[1, :])
    x_max, y_max = max(pt2d[0, :]), max(pt2d[1, :])
    k = 0.20
    x_min -= 2 * k * abs(x_max - x_min)
    y_min -= 2 * k * abs(y_max - y_min)
    x_max += 2 * k * abs(x_max - x_min)
    y_max += 0.6 * k * abs(y_max - y_min)
    return int(x_min), int(y_min), int(x_max), int(y_max)


def reference_300wlp_crop(pt2d: np.ndarray, k: float) -> tuple[int, int, int, int]:
    """6DRepNet ``Pose_300W_LP.__getitem__`` with its ``k = random_sample() * 0.2 + 0.2``."""
    x_min, y_min = min(pt2d[0, :]), min(pt2d[1, :])
    x_max, y_max = max(pt2d[0, :]), max(pt2d[1, :])
    x_min -= 0.6 * k * abs(x_max - x_min)
    y_min -= 2 * k * abs(y_max - y_min)
    x_max += 0.6 * k * abs(x_max - x_min)
    y_max += 0.6 * k * abs(y_max - y_min)
    return int(x_min), int(y_min), int(x_max), int(y_max)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ---------------------------------------------------------------------- AFLW2000 (real files)
def test_aflw2000_pt2d_crop_equals_reference_on_every_dev_file(shared_dir: Path) -> None:
    root = shared_dir / "data" / "AFLW2000-dev"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ds = AFLW2000(root, filter_99=False, cache=False)  # defaults: crop_rule/box_source reference
    assert len(ds) == len(list(root.glob("*.mat")))
    with_invisible = 0
    for i in range(len(ds)):
        pts = scipy.io.loadmat(str(root / ds.index["label_file"][i]))["pt2d"]
        with_invisible += bool((pts < 0).any())
        assert tuple(ds.crop_box(i, (450, 450)).astype(int)) == reference_aflw2000_crop(pts), i
    assert with_invisible > len(ds) // 2  # the case the old visible-points box got wrong


def test_aflw2000_visible_points_box_is_an_option(shared_dir: Path) -> None:
    root = shared_dir / "data" / "AFLW2000-dev"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ref = AFLW2000(root, cache=False)
    vis = AFLW2000(root, box_source="pt2d_visible", cache=False)
    assert len(ref) == len(vis) == 979
    a = np.stack([ref.crop_box(i, (450, 450)) for i in range(len(ref))])
    b = np.stack([vis.crop_box(i, (450, 450)) for i in range(len(vis))])
    differ = np.any(a != b, axis=1)
    # Measured on AFLW2000-dev: 843 of 979 crops differ, median IoU of those 0.34.
    assert 800 <= differ.sum() <= 900
    assert 0.25 < np.median([_iou(x, y) for x, y in zip(a[differ], b[differ], strict=True)]) < 0.45
    # The visible-points box never reaches the -1 points: no crop starts left of/above them.
    assert np.all(b[:, :2] >= a[:, :2])


def test_landmark_box_all_points_or_visible_points() -> None:
    pts = np.array([[10.0, 20.0], [30.0, 50.0], [-1.0, -1.0]])
    np.testing.assert_array_equal(landmark_box(pts, skip_missing=False), [-1, -1, 30, 50])
    np.testing.assert_array_equal(landmark_box(pts), [10, 20, 30, 50])
    with pytest.raises(ValueError):
        landmark_box(np.array([[np.nan, 1.0]]), skip_missing=False)


# ---------------------------------------------------------------------- named rules
def test_6drepnet_train_rule_is_the_reference_300wlp_crop() -> None:
    rule = get_crop_rule("6drepnet_train")
    assert rule is crop_rule_6drepnet and get_crop_rule("hopenet_train") is rule
    pts = pt2d(37.2, 41.9, 181.4, 203.7)
    box = landmark_box(pts.T, skip_missing=False)
    for seed in range(20):
        k = 0.2 + 0.2 * np.random.default_rng(seed).random()
        got = tuple(np.trunc(rule(box, (256, 256), np.random.default_rng(seed))).astype(int))
        assert got == reference_300wlp_crop(pts, k)
    assert tuple(np.trunc(rule(box, (256, 256), None)).astype(int)) == reference_aflw2000_crop(pts)


def test_6drepnet_rule_jitters_around_its_own_test_crop() -> None:
    rule = get_crop_rule("6drepnet")
    box = np.array([40.0, 50.0, 140.0, 170.0])
    test = rule(box, (256, 256), None)
    np.testing.assert_array_equal(test, crop_rule_6drepnet(box, (256, 256), None))
    w, h = test[2] - test[0], test[3] - test[1]
    draws = np.stack([rule(box, (256, 256), np.random.default_rng(s)) for s in range(400)])
    dw, dh = draws[:, 2] - draws[:, 0], draws[:, 3] - draws[:, 1]
    cx, cy = (draws[:, 0] + draws[:, 2]) / 2, (draws[:, 1] + draws[:, 3]) / 2
    lo, hi = CROP_JITTER_SCALE
    assert np.all((dw / w >= lo - 1e-9) & (dw / w <= hi + 1e-9))
    np.testing.assert_allclose(dw / w, dh / h)  # the aspect ratio of the test crop is kept
    assert np.all(np.abs(cx - (test[0] + test[2]) / 2) <= CROP_JITTER_SHIFT * w + 1e-9)
    assert np.all(np.abs(cy - (test[1] + test[3]) / 2) <= CROP_JITTER_SHIFT * h + 1e-9)
    # On average the train crop frames the face as the test crop does.
    assert abs(dw.mean() / w - 1) < 0.01 and abs(cx.mean() - (test[0] + test[2]) / 2) < 0.01 * w
    assert len({tuple(d) for d in draws}) == len(draws)


def test_tight_jitter_rule() -> None:
    rule = get_crop_rule("tight_jitter")
    box = np.array([10.0, 20.0, 60.0, 80.0])
    np.testing.assert_array_equal(
        rule(box, (100, 100), None), crop_rule_tight(box, (100, 100), None)
    )
    a = rule(box, (100, 100), np.random.default_rng(1))
    assert not np.array_equal(a, box) and 0.9 <= (a[2] - a[0]) / 50 <= 1.1
    nan = np.full(4, np.nan)  # no box: the whole image, never jittered
    np.testing.assert_array_equal(rule(nan, (100, 90), np.random.default_rng(1)), [0, 0, 100, 90])


# ---------------------------------------------------------------------- loaders' framing
def _mean_side_ratio(ds, n_epochs: int = 30) -> float:
    """Mean train-crop width of item 0 over its test-crop width."""
    ds.train = False
    test = ds.crop_box(0, (64, 64))
    ds.train = True
    widths = []
    for e in range(n_epochs):
        ds.set_epoch(e)
        c = ds.crop_box(0, (64, 64))
        widths.append(c[2] - c[0])
    return float(np.mean(widths) / (test[2] - test[0]))


def test_aflw2000_train_crop_varies_around_its_test_crop(tmp_path: Path) -> None:
    for i in range(3):
        write_3ddfa(tmp_path, f"image{i:05d}", (0.1, 0.2, 0.0))
    ds = AFLW2000(tmp_path, image_size=16, train=True, cache=False)
    assert 0.95 < _mean_side_ratio(ds) < 1.05  # was about 0.7 (300W-LP training margins)
    paper = AFLW2000(tmp_path, image_size=16, train=True, crop_rule="6drepnet_train", cache=False)
    assert _mean_side_ratio(paper) < 0.8


def test_300wlp_trains_with_the_reference_rule(shared_dir: Path) -> None:
    root = shared_dir / "data" / "fixtures" / "300W_LP"
    ds = Pose300WLP(root, flipped=False, subsets=["IBUG"], train=True, seed=3, cache=False)
    pts = scipy.io.loadmat(str(root / "IBUG" / "IBUG_image_008_1_0.mat"))["pt2d"]
    for epoch in range(3):
        ds.set_epoch(epoch)
        k = 0.2 + 0.2 * np.random.default_rng([3, epoch, 0]).random()
        assert tuple(ds.crop_box(0, (450, 450)).astype(int)) == reference_300wlp_crop(pts, k)


def test_biwi_train_crop_jitters_around_the_metric_box(shared_dir: Path) -> None:
    root = shared_dir / "data" / "fixtures" / "BIWI"
    test = BIWIRaw(root, image_size=16, cache=False)
    train = BIWIRaw(root, image_size=16, train=True, cache=False)
    box = test.crop_box(0, (640, 480))
    np.testing.assert_array_equal(box, np.trunc(test._box[0]))
    crops = []
    for e in range(3):
        train.set_epoch(e)
        crops.append(tuple(train.crop_box(0, (640, 480))))
    assert len(set(crops)) == 3
    assert all(0.85 < (c[2] - c[0]) / (box[2] - box[0]) < 1.15 for c in crops)
