"""300W-LP (and the shared reader of 3DDFA-style ``.mat`` labels, also used by AFLW2000).

Layout (as distributed)::

    300W_LP/
      AFW/ HELEN/ IBUG/ LFPW/            <id>_<k>.jpg + <id>_<k>.mat   (k = synthesised view)
      AFW_Flip/ HELEN_Flip/ ...          mirrored images, labels already mirrored
      landmarks/AFW/<id>_<k>_pts.mat     optional: pts_2d, pts_3d (68 x 2); no _Flip entries

``.mat`` keys used: ``Pose_Para`` (1 x 7: pitch, yaw, roll in radians, then translation and
scale), ``pt2d`` (2 x 68 image pixels; negative = missing), optionally ``pt3d_68`` (3 x 68)
and ``Shape_Para``. The label is converted once with
:func:`hpelib.rotation.rotation_from_euler_300wlp` (reference ``R6 = Rz(roll) Ry(yaw) Rx(pitch)``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.io
import torch
from PIL import Image

from hpelib.data.datasets.base import (
    BOX_COLUMNS,
    LANDMARK_COLUMNS,
    LANDMARK_Z_COLUMNS,
    CropRule,
    DatasetError,
    IndexedPoseDataset,
    OnInvalid,
    angle_unit_mixup,
    apply_invalid_policy,
    invalid_angle_reason,
    landmark_box,
    require_files,
    rotation_columns_from_matrices,
)
from hpelib.data.datasets.index_cache import CacheSpec, cached_index
from hpelib.data.datasets.registry import register_dataset
from hpelib.rotation import rotation_from_euler_300wlp

__all__ = [
    "W300LP_SUBSETS",
    "Pose300WLP",
    "LANDMARK_DEPTH_ORIGIN",
    "check_3ddfa_units",
    "euler_index_to_rotation",
    "landmark_depth_from_head_centre",
    "read_3ddfa_mat",
]

logger = logging.getLogger("hpelib.data")

W300LP_SUBSETS: tuple[str, ...] = ("AFW", "HELEN", "IBUG", "LFPW")
#: Face box source: ``"pt2d"`` min/max of ALL ``pt2d`` points, ``-1`` (invisible) included,
#: exactly as 6DRepNet/HopeNet; ``"pt2d_visible"`` only the visible (non-negative) ``pt2d``
#: points; ``"pt3d_68"`` x/y of ``pt3d_68`` (OpNet/RankPose).
BoxSource = Literal["pt2d", "pt2d_visible", "pt3d_68"]
#: Part of the label index cache key: bump when the box computation changes (2: ``"pt2d"``
#: takes every point as the reference does, ``"pt2d_visible"`` the visible ones).
BOX_VERSION = 2
_ANGLES = ("pitch", "yaw", "roll")
#: Origin of the ``lmz_i`` depth columns; part of the label index cache key (a change
#: rebuilds cached indexes whose depth was the per-item mean landmark depth).
LANDMARK_DEPTH_ORIGIN = "head_centre_3dmm_tz"


def landmark_depth_from_head_centre(pt3d: np.ndarray, pose: np.ndarray) -> np.ndarray | None:
    """hpelib depth ``(68,)`` of a 3DDFA ``pt3d_68`` ``(3, 68)``: z into the scene, image-pixel
    scale, 0 at the HEAD CENTRE (:mod:`hpelib.data.sample`).

    The 3DMM fit projects ``pt3d_68 = s R X + t`` (``Pose_Para = [pitch, yaw, roll, tx, ty,
    tz, s]``, z towards the viewer): the model origin, the head's centre about 9 cm behind
    the face (AFLW2000-dev: the landmarks' mean lies 0.89 head radii of 100 mm in front of
    it), is at depth ``tz``, so ``depth = -(z - tz)``. ``None`` (no depth label) when
    ``Pose_Para`` has no finite ``tz``. The mean landmark depth is not a head point: in the
    head frame it moves with the pose (AFLW2000-dev: std 0.14-0.28 radii per axis).
    """
    if pose.size < 6 or not math.isfinite(float(pose[5])):
        return None
    return -(pt3d[2] - float(pose[5]))


def _landmark_columns(points: np.ndarray | None, depth: np.ndarray | None) -> dict[str, float]:
    """(68, 2) points (negative = missing) and optional (68,) depth -> index columns."""
    out: dict[str, float] = {}
    if points is None or points.shape != (68, 2):
        return out
    missing = np.any(points < 0, axis=1) | ~np.all(np.isfinite(points), axis=1)
    pts = np.where(missing[:, None], np.nan, points)
    out.update(zip(LANDMARK_COLUMNS[0], pts[:, 0].tolist(), strict=True))
    out.update(zip(LANDMARK_COLUMNS[1], pts[:, 1].tolist(), strict=True))
    if depth is not None:
        out.update(zip(LANDMARK_Z_COLUMNS, depth.tolist(), strict=True))
    return out


def read_3ddfa_mat(
    mat_path: Path,
    box_source: BoxSource = "pt2d",
    shape_params: bool = False,
    pt3d_fallback: np.ndarray | None = None,
) -> dict[str, Any]:
    """Labels of one 300W-LP/AFLW2000 ``.mat`` file as an index record.

    Returns a dict with ``pitch, yaw, roll`` (degrees, from ``Pose_Para``), the face box
    ``x0..y1`` of ``box_source`` (:data:`BoxSource`: ``pt2d`` all points as the reference,
    ``pt2d_visible`` ignoring negative points, or ``pt3d_68`` x/y),
    landmarks (``pt3d_68`` x/y when present, with depth relative to the head centre,
    :func:`landmark_depth_from_head_centre`; else ``pt2d`` when it has 68 points), optionally
    ``shape_params``, and ``error`` (non-empty when unusable, e.g. a missing key).
    ``pt3d_fallback`` (2, 68) replaces a missing ``pt3d_68`` for the box (300W-LP keeps it in
    the ``landmarks/`` folder).
    """
    rec: dict[str, Any] = {"error": ""}
    keys = ["Pose_Para", "pt2d", "pt3d_68"] + (["Shape_Para"] if shape_params else [])
    try:
        mat = scipy.io.loadmat(str(mat_path), variable_names=keys)
    except Exception as err:  # scipy raises ValueError/OSError/TypeError on bad files
        rec["error"] = f"cannot read .mat file: {err}"
        return rec
    if "Pose_Para" not in mat:
        rec["error"] = "missing key 'Pose_Para'"
        return rec
    arrays: dict[str, np.ndarray] = {}
    for key in ("Pose_Para", "pt2d", "pt3d_68"):
        if key not in mat:
            continue
        try:
            arrays[key] = np.asarray(mat[key], dtype=np.float64)
        except (TypeError, ValueError) as err:
            # A string, struct or cell array: numpy's own error names neither file nor key.
            rec["error"] = f"{key!r} is not numeric ({err})"
            return rec
    pose = arrays["Pose_Para"].reshape(-1)
    pt2d, pt3d = arrays.get("pt2d"), arrays.get("pt3d_68")
    if pose.size < 3:
        rec["error"] = f"'Pose_Para' has {pose.size} values, expected 7"
        return rec
    rec.update({n: math.degrees(v) for n, v in zip(_ANGLES, pose[:3], strict=True)})
    if pt2d is not None and (pt2d.ndim != 2 or pt2d.shape[0] < 2):
        rec["error"] = f"'pt2d' has shape {pt2d.shape}, expected (2, N) image x/y rows"
        return rec
    if pt3d is not None and pt3d.shape != (3, 68):
        rec["error"] = f"'pt3d_68' has shape {pt3d.shape}, expected (3, 68)"
        return rec
    try:
        if box_source in ("pt2d", "pt2d_visible"):
            if pt2d is None:
                raise ValueError("missing key 'pt2d'")
            box = landmark_box(pt2d[:2].T, skip_missing=box_source == "pt2d_visible")
        elif box_source == "pt3d_68":
            src = pt3d[:2] if pt3d is not None else pt3d_fallback
            if src is None:
                raise ValueError("missing key 'pt3d_68' (and no landmarks/ file)")
            box = landmark_box(np.asarray(src).T)
        else:
            raise ValueError(f"unknown box_source {box_source!r}")
    except ValueError as err:
        rec["error"] = f"no face box from {box_source}: {err}"
        return rec
    rec.update(zip(BOX_COLUMNS, box.tolist(), strict=True))
    if pt3d is not None:
        rec.update(_landmark_columns(pt3d[:2].T, landmark_depth_from_head_centre(pt3d, pose)))
    elif pt2d is not None and pt2d.shape == (2, 68):
        rec.update(_landmark_columns(pt2d.T, None))
    if shape_params and "Shape_Para" in mat:
        rec["shape_params"] = np.asarray(mat["Shape_Para"], dtype=np.float32).reshape(-1)
    return rec


def check_3ddfa_units(index: pd.DataFrame, dataset: str, root: Path) -> None:
    """Raise :class:`DatasetError` when the ``Pose_Para`` angles of the whole folder look like
    degrees (:func:`~hpelib.data.datasets.base.angle_unit_mixup`; the index holds them
    converted to degrees, as read from radians)."""
    if not all(n in index.columns for n in _ANGLES):
        return
    rad = np.radians(index.loc[:, list(_ANGLES)].to_numpy(dtype=np.float64, na_value=np.nan))
    problem = angle_unit_mixup(rad, "radians")
    if not problem:
        return
    big = np.nan_to_num(np.abs(rad), nan=0.0).max(axis=1) > math.pi
    examples = [
        f"{f} (pitch, yaw, roll = {', '.join(f'{v:.4g}' for v in row)})"
        for f, row in zip(index["label_file"][big][:3], rad[big][:3], strict=False)
    ]
    raise DatasetError(
        f"{dataset}: {root}: 'Pose_Para' angles must be radians, but {problem}, e.g. "
        f"{'; '.join(examples)}. Likely a unit mix-up: convert the labels to radians, or pass "
        "check_units=False if these angles are right."
    )


def euler_index_to_rotation(
    index: pd.DataFrame, limit_deg: float | None, names: Sequence[str] = _ANGLES
) -> pd.DataFrame:
    """Mark NaN/out-of-range angles (degrees, columns ``pitch, yaw, roll``) in ``error`` and add
    the internal rotation columns via :func:`rotation_from_euler_300wlp`."""
    index = index.copy()
    if "error" not in index.columns:
        index["error"] = ""
    index["error"] = index["error"].fillna("").astype(str)
    for n in names:
        if n not in index.columns:
            index[n] = np.nan
    angles = index.loc[:, list(names)].to_numpy(dtype=np.float64, na_value=np.nan)
    unread = index["error"] != ""
    reasons = invalid_angle_reason(
        np.where(unread.to_numpy()[:, None], 0.0, angles), names, limit_deg
    )
    index["error"] = [e or r for e, r in zip(index["error"], reasons, strict=True)]
    rad = torch.from_numpy(np.nan_to_num(np.radians(angles)))
    rot = rotation_from_euler_300wlp(rad[:, 0], rad[:, 1], rad[:, 2])
    for col, values in rotation_columns_from_matrices(rot).items():
        index[col] = values
    return index


def _pts3d_from_landmarks_folder(
    root: Path, subset: str, stem: str, image: Path
) -> np.ndarray | None:
    """``pts_3d`` (2, 68) of 300W-LP's ``landmarks/`` folder; mirrored for ``_Flip`` items.

    Raises :class:`DatasetError` naming the landmarks file (or the image, whose width the
    mirror needs) when it is unreadable, lacks ``pts_3d`` or has the wrong size.
    """
    base = subset.removesuffix("_Flip")
    path = root / "landmarks" / base / f"{stem}_pts.mat"
    if not path.is_file():
        return None
    rel = os.path.relpath(path, root)
    try:
        mat = scipy.io.loadmat(str(path), variable_names=["pts_3d"])
    except Exception as err:  # scipy raises ValueError/OSError/TypeError/MatReadError
        raise DatasetError(f"cannot read landmarks file {rel}: {err}") from err
    if "pts_3d" not in mat:
        raise DatasetError(f"landmarks file {rel}: missing key 'pts_3d'")
    try:
        pts = np.asarray(mat["pts_3d"], dtype=np.float64).reshape(68, 2).T.copy()
    except (TypeError, ValueError) as err:
        shape = np.shape(mat["pts_3d"])
        raise DatasetError(
            f"landmarks file {rel}: 'pts_3d' has shape {shape}, expected (68, 2)"
        ) from err
    if subset.endswith("_Flip"):
        try:
            with Image.open(image) as img:  # header only: the width for the mirror
                width = img.size[0]
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"cannot read image {image.name}: {err}") from err
        pts[0] = width - pts[0]
    return pts


def _build_300wlp_index(
    root: Path,
    images: Sequence[Path],
    mats: Sequence[Path],
    box_source: BoxSource,
    shape_params: bool,
) -> pd.DataFrame:
    records = []
    mat_set = set(mats)
    for mat in mats:
        subset = mat.parent.name
        image = mat.with_suffix(".jpg")
        fallback = None
        landmarks_error = ""
        if box_source == "pt3d_68" and image.is_file():
            try:
                fallback = _pts3d_from_landmarks_folder(root, subset, mat.stem, image)
            except DatasetError as err:  # a per-item problem: on_invalid decides
                landmarks_error = str(err)
        rec = read_3ddfa_mat(mat, box_source, shape_params, fallback)
        if landmarks_error and rec["error"].startswith("no face box from pt3d_68"):
            # The box needed the landmarks file: say what is wrong with it.
            rec["error"] = landmarks_error
        if not image.is_file() and not rec["error"]:
            rec["error"] = f"image {image.name} not found next to the label"
        rec.update(
            path=os.path.relpath(image, root),
            label_file=os.path.relpath(mat, root),
            subset=subset,
            person=mat.stem.rsplit("_", 1)[0],
        )
        records.append(rec)
    for image in images:
        if image.with_suffix(".mat") not in mat_set:
            records.append({
                "path": os.path.relpath(image, root),
                "label_file": os.path.relpath(image, root),
                "subset": image.parent.name, "person": image.stem.rsplit("_", 1)[0],
                "error": "image has no .mat label file",
            })  # fmt: skip
    index = pd.DataFrame.from_records(records)
    # Same <id> (the original photo) = same person, across k and across the _Flip folder.
    index["identity"] = pd.factorize(index["person"], sort=True)[0].astype(np.int64)
    return index


@register_dataset("300wlp", "300w_lp", "w300lp")
class Pose300WLP(IndexedPoseDataset):
    """300W-LP as read by 6DRepNet/HopeNet (training set of the standard protocol).

    Args:
        root: the ``300W_LP`` folder.
        subsets: which of ``AFW, HELEN, IBUG, LFPW`` to read (missing folders are skipped
            with a log line; at least one must exist).
        flipped: also read the ``<subset>_Flip`` folders (mirrored images and labels).
        image_size: side of the output crop.
        train: random (seeded) train-time crop of ``crop_rule`` instead of its test crop.
        crop_rule: ``"6drepnet_train"`` (default: the reference ``Pose_300W_LP`` crop,
            ``k ~ U(0.2, 0.4)`` with margins ``0.6k, 2k, 0.6k, 0.6k``, as the 300W-LP ->
            AFLW2000 protocol trains), ``"6drepnet"`` (the reference AFLW2000 test crop,
            jittered around it at train time), ``"tight"``, or a callable (:mod:`.base`).
        box_source: ``"pt2d"`` (6DRepNet/HopeNet: all points, ``-1`` included),
            ``"pt2d_visible"`` (visible points only) or ``"pt3d_68"`` (OpNet/RankPose; taken
            from the ``landmarks/`` folder's ``pts_3d`` when the ``.mat`` has none).
        seed: seed of the train-time crop jitter.
        on_invalid: ``"error"`` (default) or ``"skip"`` for unreadable labels, missing
            images, NaN angles or angles beyond ``angle_limit_deg``.
        angle_limit_deg: largest accepted ``|angle|`` (degrees), ``None`` = no limit.
        shape_params: also load ``Shape_Para`` (199 values) as ``shape_params``.
        cache: label index cache location (:mod:`.index_cache`).
        check_units: raise :class:`~hpelib.data.datasets.base.DatasetError` when most items
            have an ``|angle| > pi`` (degrees where ``Pose_Para`` holds radians; rule in
            :func:`~hpelib.data.datasets.base.angle_unit_mixup`). ``False`` skips it, for a
            hand-picked set made mostly of wild labels (beyond 180 degrees), which it would
            take for degrees.
        reduced_decode: decode JPEGs at 1/2, 1/4 or 1/8 scale when the crop allows (faster
            training items, slightly different pixels; see
            :class:`~hpelib.data.datasets.base.IndexedPoseDataset`).

    Items carry ``identity`` (same original photo = same person) for pair samplers.
    """

    name = "300wlp"

    def __init__(
        self,
        root: str | os.PathLike[str],
        subsets: Sequence[str] = W300LP_SUBSETS,
        flipped: bool = True,
        image_size: int = 224,
        train: bool = True,
        crop_rule: str | CropRule = "6drepnet_train",
        box_source: BoxSource = "pt2d",
        seed: int = 0,
        on_invalid: OnInvalid = "error",
        angle_limit_deg: float | None = 180.0,
        shape_params: bool = False,
        cache: CacheSpec = "auto",
        check_units: bool = True,
        reduced_decode: bool = False,
    ) -> None:
        root = Path(root)
        if isinstance(subsets, str):
            subsets = [subsets]
        folders = [s for name in subsets for s in ([name, f"{name}_Flip"] if flipped else [name])]
        present = [f for f in folders if (root / f).is_dir()]
        if not present:
            raise DatasetError(
                f"300wlp: none of the folders {folders} exists in {root} "
                "(expected <root>/{AFW,HELEN,IBUG,LFPW}[_Flip]/<id>_<k>.{jpg,mat})"
            )
        for f in sorted(set(folders) - set(present)):
            logger.info("300wlp: folder %s not found in %s, skipped", f, root)
        mats = sorted(m for f in present for m in (root / f).glob("*.mat"))
        require_files(root, mats, f"{{{','.join(present)}}}/<id>_<k>.mat", "300wlp")
        images = sorted(m for f in present for m in (root / f).glob("*.jpg"))
        options = {
            "box_source": box_source, "box_version": BOX_VERSION,
            "shape_params": shape_params, "folders": present, "depth": LANDMARK_DEPTH_ORIGIN,
        }  # fmt: skip
        # Images are part of the key too: an added/removed image changes the index's errors;
        # so are the landmarks/ files the pt3d_68 boxes come from (an edit must rebuild).
        landmark_files = (
            sorted(p for s in subsets for p in (root / "landmarks" / s).glob("*_pts.mat"))
            if box_source == "pt3d_68"
            else []
        )
        index = cached_index(
            "300wlp", root, mats + images + landmark_files,
            lambda: _build_300wlp_index(root, images, mats, box_source, shape_params),
            options, cache,
        )  # fmt: skip
        if check_units:  # before the range check: "yaw = 1718 degrees" would hide the cause
            check_3ddfa_units(index, "300wlp", root)
        index = euler_index_to_rotation(index, angle_limit_deg)
        index = apply_invalid_policy(index, on_invalid, "300wlp")
        super().__init__(index, root, image_size, crop_rule, train, seed, reduced_decode)
