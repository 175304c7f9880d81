"""BIWI Kinect head pose: the raw ``hpdb`` release and FSA-Net's preprocessed ``.npz`` files.

Raw layout::

    hpdb/NN/frame_XXXXX_rgb.png     640 x 480 colour frame
    hpdb/NN/frame_XXXXX_pose.txt    3 x 3 rotation (rows), blank line, head centre (mm)
    hpdb/NN/rgb.cal                 intrinsics K (3 x 3), distortion (4), extrinsic R (3 x 3)
                                    and t (3) between the depth and colour cameras, resolution

The pose file's matrix is already hpelib's internal rotation
(:func:`hpelib.rotation.rotation_from_biwi_pose_matrix`, identity map). The head centre is
given in the depth camera's frame; it is moved to the colour camera with ``R^T (c - t)``
of ``rgb.cal`` and projected with ``K``. The crop is a square of fixed metric side
(``box_size_mm``, default 220 mm: whole head with a little margin) centred on that
projection, so its pixel size follows the distance to the camera.

FSA-Net ``.npz`` (``BIWI_noTrack.npz``, ``BIWI_train.npz``, ``BIWI_test.npz``): ``image``
(N, H, W, 3) in BGR order (already cropped faces), ``pose`` (N, 3) = [yaw, pitch, roll]
degrees in the 300W-LP convention.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image

from hpelib.data.datasets.base import (
    BOX_COLUMNS,
    CropRule,
    DatasetError,
    IndexedPoseDataset,
    OnInvalid,
    angle_unit_mixup,
    apply_filter_99,
    apply_invalid_policy,
    invalid_angle_reason,
    rotation_columns_from_matrices,
)
from hpelib.data.datasets.index_cache import CacheSpec, cached_index
from hpelib.data.datasets.registry import register_dataset
from hpelib.rotation import (
    euler_300wlp_from_rotation,
    rotation_from_biwi_pose_matrix,
    rotation_from_euler_300wlp,
)

__all__ = [
    "BIWINpz",
    "BIWIRaw",
    "BiwiCalibration",
    "biwi_subject_split",
    "read_biwi_calibration",
    "read_biwi_pose",
]

logger = logging.getLogger("hpelib.data")

Split = Literal["all", "train", "test"]
_FRAME = re.compile(r"^frame_(\d+)_pose\.txt$")


def _numbers(path: Path) -> list[float]:
    try:
        text = path.read_text()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    try:
        return [float(t) for t in text.split()]
    except ValueError as err:
        raise DatasetError(f"{path}: not a list of numbers ({err})") from err


def read_biwi_pose(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """``frame_XXXXX_pose.txt`` -> (rotation matrix (3, 3) as written, head centre (3,) mm)."""
    values = _numbers(Path(path))
    if len(values) != 12:
        raise DatasetError(
            f"{path}: expected 12 numbers (3 x 3 matrix + centre), got {len(values)}"
        )
    arr = np.asarray(values, dtype=np.float64)
    return arr[:9].reshape(3, 3), arr[9:]


class BiwiCalibration:
    """Colour-camera calibration of one BIWI subject (``rgb.cal``)."""

    def __init__(self, k: np.ndarray, r: np.ndarray, t: np.ndarray) -> None:
        self.k, self.r, self.t = k, r, t

    def project(self, centre_mm: np.ndarray) -> tuple[np.ndarray, float]:
        """Depth-camera point (3,) mm -> (colour image pixel (2,), depth in mm)."""
        p = self.r.T @ (np.asarray(centre_mm, dtype=np.float64) - self.t)
        uvw = self.k @ p
        return uvw[:2] / uvw[2], float(p[2])


def read_biwi_calibration(path: str | os.PathLike[str]) -> BiwiCalibration:
    """Parse ``rgb.cal``: K (9), distortion (4), R (9), t (3), resolution (2)."""
    v = _numbers(Path(path))
    if len(v) < 25:
        raise DatasetError(f"{path}: expected K, distortion, R, t (25+ numbers), got {len(v)}")
    a = np.asarray(v, dtype=np.float64)
    return BiwiCalibration(a[:9].reshape(3, 3), a[13:22].reshape(3, 3), a[22:25])


def biwi_subject_split(
    subjects: Sequence[str],
    split: Split,
    test_subjects: Sequence[int | str] | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> list[str]:
    """Subject folders of ``split``: ``test_subjects`` if given, else a seeded random
    ``test_fraction`` of the subjects (at least one when there are two or more)."""
    subjects = sorted(subjects)
    if split == "all":
        return subjects
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if test_subjects is not None:
        wanted = {f"{int(s):02d}" if str(s).isdigit() else str(s) for s in test_subjects}
        unknown = wanted - set(subjects)
        if unknown:
            raise ValueError(f"test_subjects {sorted(unknown)} not among subjects {subjects}")
        test = wanted
    else:
        n_test = min(len(subjects) - 1, max(1, round(test_fraction * len(subjects))))
        order = np.random.default_rng(seed).permutation(len(subjects))
        test = {subjects[j] for j in order[:n_test]}
    return [s for s in subjects if (s in test) == (split == "test")]


def _build_biwi_index(root: Path, poses: list[Path], box_size_mm: float) -> pd.DataFrame:
    calibs: dict[Path, BiwiCalibration | DatasetError] = {}
    records: list[dict[str, Any]] = []
    for pose in poses:
        folder = pose.parent
        frame = _FRAME.match(pose.name).group(1)  # type: ignore[union-attr]
        image = folder / f"frame_{frame}_rgb.png"
        rec: dict[str, Any] = {
            "path": os.path.relpath(image, root), "label_file": os.path.relpath(pose, root),
            "subject": folder.name, "error": "",
        }  # fmt: skip
        try:
            if folder not in calibs:
                try:
                    calibs[folder] = read_biwi_calibration(folder / "rgb.cal")
                except DatasetError as err:
                    calibs[folder] = err
            calib = calibs[folder]
            if isinstance(calib, DatasetError):
                raise calib
            r_file, centre = read_biwi_pose(pose)
            if not image.is_file():
                raise DatasetError(f"image {image.name} not found next to the label")
            if not (np.all(np.isfinite(r_file)) and np.all(np.isfinite(centre))):
                raise DatasetError("pose has NaN/inf values")
            if abs(np.linalg.det(r_file) - 1.0) > 1e-2 or not np.allclose(
                r_file @ r_file.T, np.eye(3), atol=1e-2
            ):
                raise DatasetError("pose matrix is not a rotation")
            uv, depth = calib.project(centre)
            if depth <= 0:
                raise DatasetError(f"head centre is behind the camera (z = {depth:.1f} mm)")
            side = calib.k[0, 0] * box_size_mm / depth
            rec.update(
                zip(
                    BOX_COLUMNS,
                    [uv[0] - side / 2, uv[1] - side / 2, uv[0] + side / 2, uv[1] + side / 2],
                    strict=True,
                )
            )
            rec.update(hcx=uv[0], hcy=uv[1], hsize=side)
            rec.update({f"m{i}{j}": r_file[i, j] for i in range(3) for j in range(3)})
        except DatasetError as err:
            rec["error"] = str(err).removeprefix(f"{pose}: ")
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _finish_rotation_index(
    index: pd.DataFrame, rot: torch.Tensor, limit_deg: float | None
) -> pd.DataFrame:
    """Add rotation and (pitch, yaw, roll) degree columns; mark out-of-range rows."""
    index = index.copy()
    for col, values in rotation_columns_from_matrices(rot).items():
        index[col] = values
    angles = torch.stack(euler_300wlp_from_rotation(rot.double()), -1).rad2deg().numpy()
    index["pitch"], index["yaw"], index["roll"] = angles[:, 0], angles[:, 1], angles[:, 2]
    if "error" not in index.columns:
        index["error"] = ""
    index["error"] = index["error"].fillna("").astype(str)
    reasons = invalid_angle_reason(angles, ("pitch", "yaw", "roll"), limit_deg)
    index["error"] = [e or r for e, r in zip(index["error"], reasons, strict=True)]
    return index


@register_dataset("biwi", "biwi_raw", "hpdb")
class BIWIRaw(IndexedPoseDataset):
    """BIWI from the raw ``hpdb`` release, with subject-wise splits.

    Args:
        root: the ``hpdb`` folder (subject folders ``01`` .. ``24``).
        split: ``"all"``, ``"train"`` or ``"test"`` (subject-wise, never frame-wise).
        test_subjects: subject numbers of the test split; default a seeded random
            ``test_fraction`` of the subjects (``split_seed``).
        test_fraction: share of subjects in the test split when ``test_subjects`` is None.
        split_seed: seed of that random subject split.
        image_size: side of the output crop.
        box_size_mm: side of the square metric crop around the projected head centre.
        crop_rule: ``"tight_jitter"`` (default: the metric box at test time, randomly
            scaled and shifted around it at train time), ``"tight"`` (the metric box, also
            at train time) or another rule applied to it.
        train: random crop variant of ``crop_rule``.
        filter_99: drop frames with any ``|angle| > 99`` degrees (300W-LP Euler); dropping
            every frame is a :class:`~hpelib.data.datasets.base.DatasetError`.
        on_invalid: ``"error"`` or ``"skip"`` (bad pose/calibration file, missing image).
        angle_limit_deg: largest accepted ``|angle|``, ``None`` = no limit.
        seed: seed of the train-time crop jitter.
        cache: label index cache location (:mod:`.index_cache`).
    """

    name = "biwi"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Split = "all",
        test_subjects: Sequence[int | str] | None = None,
        test_fraction: float = 0.3,
        split_seed: int = 0,
        image_size: int = 224,
        box_size_mm: float = 220.0,
        crop_rule: str | CropRule = "tight_jitter",
        train: bool = False,
        filter_99: bool = False,
        on_invalid: OnInvalid = "error",
        angle_limit_deg: float | None = 180.0,
        seed: int = 0,
        cache: CacheSpec = "auto",
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"biwi: folder {root} does not exist (expected hpdb/NN/...)")
        subjects = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        if not subjects:
            raise DatasetError(
                f"biwi: no subject folders NN/ in {root} "
                "(expected NN/frame_XXXXX_{rgb.png,pose.txt} + NN/rgb.cal)"
            )
        chosen = biwi_subject_split(subjects, split, test_subjects, test_fraction, split_seed)
        poses = sorted(p for s in chosen for p in (root / s).iterdir() if _FRAME.match(p.name))
        if not poses:
            raise DatasetError(
                f"biwi: no frame_XXXXX_pose.txt files in subjects {chosen} of {root}"
            )
        cals = [root / s / "rgb.cal" for s in chosen if (root / s / "rgb.cal").is_file()]
        index = cached_index(
            "biwi", root, poses + cals, lambda: _build_biwi_index(root, poses, box_size_mm),
            {"box_size_mm": box_size_mm}, cache,
        )  # fmt: skip
        m = np.nan_to_num(
            index.reindex(columns=[f"m{i}{j}" for i in range(3) for j in range(3)]).to_numpy(
                np.float64, na_value=0.0
            )
        ).reshape(-1, 3, 3)
        m[index["error"].fillna("").astype(str).to_numpy() != ""] = np.eye(3)
        rot = rotation_from_biwi_pose_matrix(torch.from_numpy(m))
        index = _finish_rotation_index(index, rot, angle_limit_deg)
        index["identity"] = index["subject"].astype(int)
        index = apply_invalid_policy(index, on_invalid, "biwi")
        index = apply_filter_99(index, filter_99, "biwi", root)
        super().__init__(index, root, image_size, crop_rule, train, seed)
        self.subjects = chosen


@register_dataset("biwi_npz", "fsanet_biwi")
class BIWINpz(IndexedPoseDataset):
    """BIWI as preprocessed by FSA-Net (``.npz`` with BGR ``image`` and degree ``pose``).

    Args:
        path: the ``.npz`` file.
        image_size: side of the output (the stored faces are resized).
        crop_rule: ``"full"`` (the stored images are already face crops) or a callable.
        filter_99: drop items with any ``|angle| > 99`` degrees; dropping every item is a
            :class:`~hpelib.data.datasets.base.DatasetError`.
        on_invalid: ``"error"`` or ``"skip"`` for NaN/inf or out-of-range angles.
        angle_limit_deg: largest accepted ``|angle|``, ``None`` = no limit.
        train, seed: as in :class:`IndexedPoseDataset`.
        check_units: raise :class:`~hpelib.data.datasets.base.DatasetError` when ``pose``
            looks like radians (10 or more items, at least 95 % of them with every
            ``|angle| <= pi``, not all ~0; rule in
            :func:`~hpelib.data.datasets.base.angle_unit_mixup`). ``False`` skips it, for a
            near-frontal set whose angles really all stay within about 3 degrees.
    """

    name = "biwi_npz"

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_size: int = 224,
        crop_rule: str | CropRule = "full",
        filter_99: bool = False,
        on_invalid: OnInvalid = "error",
        angle_limit_deg: float | None = 180.0,
        train: bool = False,
        seed: int = 0,
        check_units: bool = True,
    ) -> None:
        self.npz_path = Path(path)
        try:
            with np.load(self.npz_path) as data:
                missing = {"image", "pose"} - set(data.files)
                if missing:
                    raise DatasetError(
                        f"biwi_npz: {self.npz_path}: missing key(s) {sorted(missing)} "
                        f"(has {data.files})"
                    )
                pose = np.asarray(data["pose"], dtype=np.float64)
                n_images = data["image"].shape[0]
                image_shape = data["image"].shape
        except (OSError, ValueError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"biwi_npz: cannot read {self.npz_path}: {err}") from err
        if pose.ndim != 2 or pose.shape[1] != 3:
            raise DatasetError(
                f"biwi_npz: {self.npz_path}: 'pose' has shape {pose.shape}, "
                "expected (N, 3) = [yaw, pitch, roll]"
            )
        if len(image_shape) != 4 or image_shape[3] != 3:
            raise DatasetError(
                f"biwi_npz: {self.npz_path}: 'image' has shape {image_shape}, "
                "expected (N, H, W, 3) BGR"
            )
        if n_images != len(pose):
            raise DatasetError(
                f"biwi_npz: {self.npz_path}: {n_images} images but {len(pose)} poses"
            )
        if len(pose) == 0:
            raise DatasetError(f"biwi_npz: {self.npz_path} holds no items")
        problem = angle_unit_mixup(pose, "degrees") if check_units else ""
        if problem:
            raise DatasetError(
                f"biwi_npz: {self.npz_path}: 'pose' (yaw, pitch, roll) must be degrees, but "
                f"{problem}. Likely a unit mix-up: convert them to degrees, or pass "
                "check_units=False if these angles are right."
            )
        yaw, pitch, roll = np.radians(np.nan_to_num(pose)).T
        rot = rotation_from_euler_300wlp(*(torch.from_numpy(a) for a in (pitch, yaw, roll)))
        index = pd.DataFrame({
            "path": [f"{self.npz_path.name}#{i}" for i in range(len(pose))],
            "array_index": np.arange(len(pose)),
            "error": invalid_angle_reason(pose, ("yaw", "pitch", "roll"), angle_limit_deg),
        })  # fmt: skip
        for col, values in rotation_columns_from_matrices(rot).items():
            index[col] = values
        index["yaw"], index["pitch"], index["roll"] = pose[:, 0], pose[:, 1], pose[:, 2]
        index = apply_invalid_policy(index, on_invalid, "biwi_npz", label_column="path")
        index = apply_filter_99(index, filter_99, "biwi_npz", self.npz_path)
        super().__init__(index, self.npz_path.parent, image_size, crop_rule, train, seed)
        self._array_index = index["array_index"].to_numpy()
        self._images: np.ndarray | None = None

    def load_image(self, i: int) -> Image.Image:
        # Loaded on first use, once per process (npz members cannot be memory-mapped).
        if self._images is None:
            with np.load(self.npz_path) as data:
                self._images = np.asarray(data["image"])
        bgr = self._images[self._array_index[i]]
        return Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]).astype(np.uint8), "RGB")
