"""3D landmark depth: one origin everywhere, the head centre (:mod:`hpelib.data.sample`).

The OpNet model predicts ``landmarks_3d = [x, y, 0] + size * R @ keypoints``: depth 0 is the
head centre, a fixed point of the head. A label whose depth is centred on the landmarks'
own mean has a pose-dependent offset (the face is about 0.9 head radii in front of the
centre) that no prediction of that form can fit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from hpelib.data.datasets import AFLW2000, Pose300WLP
from hpelib.data.datasets.base import LANDMARK_COLUMNS, LANDMARK_Z_COLUMNS
from hpelib.data.datasets.w300lp import landmark_depth_from_head_centre
from tests.data.writers import write_3ddfa

HEAD_RADIUS_3DMM = 1e5  # 100 mm in the 3DMM's micrometres: a human head radius


def _index_landmarks(ds: AFLW2000) -> np.ndarray:
    """(N, 68, 3) x, y (image pixels), depth from the loader's label index."""
    cols = [*LANDMARK_COLUMNS, LANDMARK_Z_COLUMNS]
    return np.stack([ds.index[list(c)].to_numpy(np.float64) for c in cols], axis=-1)


def _head_frame(ds: AFLW2000, lm: np.ndarray, pose: np.ndarray, height: int) -> np.ndarray:
    """Landmarks in the head frame, in head radii: ``R^T (p - centre) / (s * 100 mm)`` with the
    3DMM fit's projected origin ``(tx, H + 1 - ty)`` at depth 0 and ``R`` the item's label."""
    rot = ds._rotation.double().numpy()
    centre = np.stack([pose[:, 3], height + 1 - pose[:, 4], np.zeros(len(pose))], axis=-1)
    cam = lm - centre[:, None]
    return np.einsum("nji,nkj->nki", rot, cam) / (pose[:, 6, None, None] * HEAD_RADIUS_3DMM)


def test_aflw2000_dev_depth_origin_is_a_fixed_head_point(shared_dir: Path, tmp_path: Path) -> None:
    """On the real AFLW2000-dev labels, de-rotated landmarks relative to the head centre are
    the same face for every pose: their centroid moves by 0.01-0.02 head radii over the 979
    items (the mean-depth origin moved it by 0.14-0.28 radii, with the pose)."""
    root = shared_dir / "data" / "AFLW2000-dev"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    ds = AFLW2000(root, image_size=64, cache=tmp_path)
    assert len(ds) == 979
    pose = np.stack([
        scipy.io.loadmat(root / f, variable_names=["Pose_Para"])["Pose_Para"].reshape(-1)
        for f in ds.index["label_file"]
    ]).astype(np.float64)  # fmt: skip
    lm = _index_landmarks(ds)
    assert np.isfinite(lm).all()
    local = _head_frame(ds, lm, pose, 450)
    centroid = local.mean(axis=1)  # (N, 3), head radii
    assert (centroid.std(axis=0) < 0.05).all(), centroid.std(axis=0)
    # The face sits about 0.9 radii in front of the centre (internal frame: z into the scene).
    assert -1.0 < centroid[:, 2].mean() < -0.8
    assert (local.std(axis=0).mean(axis=0) < 0.06).all()  # per landmark: shape variation only
    # The depth of the mean landmark is NOT a head point: with it, the same spread is large.
    lm_mean = lm.copy()
    lm_mean[..., 2] -= lm_mean[..., 2].mean(axis=1, keepdims=True)
    old = _head_frame(ds, lm_mean, pose, 450).mean(axis=1)
    assert (old.std(axis=0)[[0, 2]] > 0.2).all(), old.std(axis=0)

    # The samples carry the same depth (crop pixels): z scales with the mean x/y resize.
    for i in (0, 100, 500):
        s = ds[i]
        xy, lm3 = s["landmarks_2d"].double().numpy(), s["landmarks_3d"].double().numpy()
        np.testing.assert_allclose(lm3[:, :2], xy, atol=1e-4)
        scale = np.mean([np.ptp(xy[:, k]) / np.ptp(lm[i, :, k]) for k in (0, 1)])
        np.testing.assert_allclose(lm3[:, 2], lm[i, :, 2] * scale, rtol=1e-3, atol=1e-3)
        assert lm3[30, 2] < 0  # the nose tip is in front of the head centre


def test_3ddfa_depth_is_relative_to_the_fit_origin(tmp_path: Path) -> None:
    """Written files: ``depth = -(z - tz)`` in both loaders; no ``tz``, no depth label."""
    rng = np.random.default_rng(0)
    pt3d = np.concatenate([rng.uniform(16, 48, (2, 68)), rng.uniform(-20, 30, (1, 68))])
    pose = np.array([[0.1, -0.3, 0.05, 31.0, 33.0, -12.5, 1.3e-3]], np.float32)
    root = tmp_path / "300W_LP"
    write_3ddfa(root / "AFW", "AFW_1_0", (0.1, -0.3, 0.05), Pose_Para=pose, pt3d_68=pt3d)
    aflw_root = tmp_path / "AFLW2000"
    write_3ddfa(aflw_root, "image00001", (0.1, -0.3, 0.05), Pose_Para=pose, pt3d_68=pt3d)
    want = -(pt3d[2] - float(pose[0, 5]))
    for ds in (
        Pose300WLP(root, subsets=["AFW"], flipped=False, cache=None),
        AFLW2000(aflw_root, cache=None),
    ):
        got = ds.index[list(LANDMARK_Z_COLUMNS)].to_numpy(np.float64)[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
        assert "landmarks_3d" in ds[0]
    assert landmark_depth_from_head_centre(pt3d, np.array([0.1, 0.2, 0.3])) is None
    short = tmp_path / "short"
    write_3ddfa(short, "image00001", (0.1, -0.3, 0.05), Pose_Para=pose[:, :3], pt3d_68=pt3d)
    s = AFLW2000(short, cache=None)[0]
    assert "landmarks_3d" not in s and s["landmarks_2d"].shape == (68, 2)
    assert torch.isfinite(s["landmarks_2d"]).all()
