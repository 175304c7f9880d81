"""AFLW2000-3D, the standard evaluation set (HopeNet/FSA-Net/6DRepNet protocol).

Layout: ``<root>/imageNNNNN.jpg`` + ``imageNNNNN.mat`` (450 x 450 images). ``.mat`` keys:
``Pose_Para`` (pitch, yaw, roll radians, ...), ``pt2d`` (2 x 21, ``-1`` = invisible),
``pt3d_68`` (3 x 68, image x/y and depth), ``roi``, 3DMM parameters.

The protocol drops every image with any ``|angle| > 99`` degrees
(:func:`~hpelib.data.datasets.base.aflw2000_filter_mask`; 1969 of 2000 remain), on by default.
A folder that the filter leaves empty is an error, as is a folder whose ``Pose_Para`` angles
look like degrees (``check_units``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from hpelib.data.datasets.base import (
    CropRule,
    IndexedPoseDataset,
    OnInvalid,
    apply_filter_99,
    apply_invalid_policy,
    require_files,
)
from hpelib.data.datasets.index_cache import CacheSpec, cached_index
from hpelib.data.datasets.registry import register_dataset
from hpelib.data.datasets.w300lp import (
    BOX_VERSION,
    LANDMARK_DEPTH_ORIGIN,
    BoxSource,
    check_3ddfa_units,
    euler_index_to_rotation,
    read_3ddfa_mat,
)

__all__ = ["AFLW2000"]

logger = logging.getLogger("hpelib.data")


def _build_aflw_index(
    root: Path, mats: list[Path], images: list[Path], box_source: BoxSource, shape_params: bool
) -> pd.DataFrame:
    records = []
    for mat in mats:
        rec = read_3ddfa_mat(mat, box_source, shape_params)
        image = mat.with_suffix(".jpg")
        if not image.is_file() and not rec["error"]:
            rec["error"] = f"image {image.name} not found next to the label"
        rec.update(path=os.path.relpath(image, root), label_file=os.path.relpath(mat, root))
        records.append(rec)
    # An image without its label is reported (as 300W-LP does), not silently left out.
    mat_set = set(mats)
    for image in images:
        if image.with_suffix(".mat") not in mat_set:
            rel = os.path.relpath(image, root)
            records.append(
                {"path": rel, "label_file": rel, "error": "image has no .mat label file"}
            )
    return pd.DataFrame.from_records(records)


@register_dataset("aflw2000", "aflw2000_3d", "aflw")
class AFLW2000(IndexedPoseDataset):
    """AFLW2000-3D read as 6DRepNet/HopeNet do (test-time crop by default).

    Args:
        root: folder with ``image*.jpg`` + ``image*.mat``.
        image_size: side of the output crop.
        train: random (seeded) train-time crop of ``crop_rule`` (AFLW2000 is an evaluation
            set: default False).
        crop_rule: ``"6drepnet"`` (default: the reference AFLW2000 test crop, ``k = 0.2`` with
            margins ``2k, 2k, 2k, 0.6k``; at train time randomly scaled and shifted around
            it), ``"6drepnet_train"`` (train time: the reference 300W-LP training margins),
            ``"tight"`` or a callable.
        box_source: ``"pt2d"`` (6DRepNet/HopeNet: min/max of all 21 points, invisible ``-1``
            ones included, exactly as the reference), ``"pt2d_visible"`` (visible points
            only: a box around the face, not stretched towards the image corner) or
            ``"pt3d_68"`` (OpNet/RankPose).
        filter_99: drop items with any ``|angle| > 99`` degrees (evaluation protocol); the
            count is logged and kept in ``num_skipped``. When it drops every item,
            :class:`~hpelib.data.datasets.base.DatasetError` (an evaluation on nothing).
        on_invalid: ``"error"`` or ``"skip"`` for unreadable labels, images without a label
            and labels without an image, NaN angles.
        shape_params: also load ``Shape_Para``.
        seed: seed of the train-time crop jitter.
        cache: label index cache location (:mod:`.index_cache`).
        check_units: raise :class:`~hpelib.data.datasets.base.DatasetError` when most items
            have an ``|angle| > pi`` (degrees where ``Pose_Para`` holds radians; rule in
            :func:`~hpelib.data.datasets.base.angle_unit_mixup`). ``False`` skips it, for a
            hand-picked set made mostly of AFLW2000's wild labels (beyond 180 degrees).
        reduced_decode: decode JPEGs at 1/2, 1/4 or 1/8 scale when the crop allows (faster
            training items, slightly different pixels; see
            :class:`~hpelib.data.datasets.base.IndexedPoseDataset`).
    """

    name = "aflw2000"

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 224,
        train: bool = False,
        crop_rule: str | CropRule = "6drepnet",
        box_source: BoxSource = "pt2d",
        filter_99: bool = True,
        on_invalid: OnInvalid = "error",
        shape_params: bool = False,
        seed: int = 0,
        cache: CacheSpec = "auto",
        check_units: bool = True,
        reduced_decode: bool = False,
    ) -> None:
        root = Path(root)
        mats = sorted(root.glob("*.mat")) if root.is_dir() else []
        require_files(root, mats, "image*.mat + image*.jpg", "aflw2000")
        images = sorted(root.glob("*.jpg"))
        index = cached_index(
            "aflw2000", root, mats + images,
            lambda: _build_aflw_index(root, mats, images, box_source, shape_params),
            {"box_source": box_source, "box_version": BOX_VERSION, "shape_params": shape_params,
             "depth": LANDMARK_DEPTH_ORIGIN},
            cache,
        )  # fmt: skip
        if check_units:
            check_3ddfa_units(index, "aflw2000", root)
        # No range limit here: out-of-range labels are the 99-filter's business (protocol).
        index = euler_index_to_rotation(index, None)
        index = apply_invalid_policy(index, on_invalid, "aflw2000")
        index = apply_filter_99(index, filter_99, "aflw2000", root)
        super().__init__(index, root, image_size, crop_rule, train, seed, reduced_decode)
        self.num_filtered = int(index.attrs["filtered"])
