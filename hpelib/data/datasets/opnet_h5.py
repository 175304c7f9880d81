"""OpNet/OpenTrack HDF5 datasets (``h5py`` needed: ``pip install h5py`` or ``hpelib[hdf5]``).

One file holds N items as HDF5 datasets:

===============  ===================  ======================================================
name             shape                meaning
===============  ===================  ======================================================
``images``       (N, H, W[, C])       uint8, grey (no C or C = 1) or RGB (C = 3); or (N,)
                                      variable-length uint8 of encoded JPEG/PNG bytes
``quats``        (N, 4)               rotation quaternion (x, y, z, w), already hpelib's
                                      internal convention (:func:`rotation_from_opnet_quaternion`)
``coords``       (N, 3)               head centre x, y and projected head RADIUS, image
                                      pixels (the sample's ``head_size`` is 2 x radius)
``rois``         (N, 4)               face box x0, y0, x1, y1, image pixels
``pt3d_68``      (N, 68, 3)/(N, 3, 68) 3D landmarks: x, y image pixels, z relative to the
                                      head centre of ``coords`` (kept as stored), optional
``shapeparams``  (N, P)               face model shape parameters, optional
===============  ===================  ======================================================

The two ``pt3d_68`` layouts are told apart by which axis has length 68 (a (N, 3, 68) array
with N items is transposed to (N, 68, 3)).

Reference layout (OpenTrack's ``dsprocess_*.py``): ``coords = [x, y, r]`` with ``r`` the
projected head radius (e.g. ``0.5 * scale / 224 * w * 100 mm`` for AFLW2000) and ``(x, y)``
the head centre the model's landmarks hang from; ``pt3d_68`` depth is centred on that
same point (``depth_centered_keypoints``), which is hpelib's convention (depth relative to
the head centre, :mod:`hpelib.data.sample`), so the depth is used as stored.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
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
    apply_invalid_policy,
    landmark_box,
    rotation_columns_from_matrices,
)
from hpelib.data.datasets.registry import register_dataset
from hpelib.rotation import rotation_from_opnet_quaternion

__all__ = ["OpNetHDF5", "pt3d_68_to_n683"]

OpNetBoxSource = Literal["rois", "pt3d_68", "coords"]


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            "reading OpNet HDF5 files needs h5py: pip install h5py (or pip install 'hpelib[hdf5]')"
        ) from err
    return h5py


def pt3d_68_to_n683(pt: np.ndarray, where: str = "pt3d_68") -> np.ndarray:
    """(N, 68, 3) or (N, 3, 68) landmarks -> (N, 68, 3)."""
    if pt.ndim == 3 and pt.shape[1:] == (68, 3):
        return pt
    if pt.ndim == 3 and pt.shape[1:] == (3, 68):
        return np.transpose(pt, (0, 2, 1))
    raise DatasetError(f"{where}: shape {pt.shape}, expected (N, 68, 3) or (N, 3, 68)")


@register_dataset("opnet_h5", "opnet", "opentrack_h5", "hdf5")
class OpNetHDF5(IndexedPoseDataset):
    """An OpNet-format HDF5 file (see module docstring).

    Args:
        path: the ``.h5`` file.
        image_size: side of the output crop.
        crop_rule: ``"tight"`` (the ``box_source`` box as is, default), ``"6drepnet"``,
            ``"full"`` or a callable.
        box_source: ``"rois"`` (default), ``"pt3d_68"`` (box of the landmarks' x/y) or
            ``"coords"`` (square of side ``2 r`` around the head centre: the head).
        on_invalid: ``"error"`` or ``"skip"`` for NaN/zero quaternions or bad boxes.
        train, seed: as in :class:`IndexedPoseDataset`.
    """

    name = "opnet_h5"

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_size: int = 224,
        crop_rule: str | CropRule = "tight",
        box_source: OpNetBoxSource = "rois",
        on_invalid: OnInvalid = "error",
        train: bool = False,
        seed: int = 0,
    ) -> None:
        h5py = _import_h5py()
        self.h5_path = Path(path)
        if not self.h5_path.is_file():
            raise DatasetError(f"opnet_h5: file {self.h5_path} does not exist")
        try:
            with h5py.File(self.h5_path, "r") as f:
                index = self._read_labels(f, box_source)
        except OSError as err:
            raise DatasetError(f"opnet_h5: cannot read {self.h5_path}: {err}") from err
        index = apply_invalid_policy(index, on_invalid, "opnet_h5", label_column="path")
        super().__init__(index, self.h5_path.parent, image_size, crop_rule, train, seed)
        self._array_index = index["array_index"].to_numpy()
        self._file: Any = None

    def _read_labels(self, f: Any, box_source: OpNetBoxSource) -> pd.DataFrame:
        where = str(self.h5_path)
        for key in ("images", "quats"):
            if key not in f:
                raise DatasetError(f"opnet_h5: {where}: missing dataset {key!r} (has {list(f)})")
        n = f["images"].shape[0]
        arrays = {
            k: np.asarray(f[k])
            for k in ("quats", "coords", "rois", "pt3d_68", "shapeparams")
            if k in f
        }
        for key, arr in arrays.items():
            if arr.shape[0] != n:
                raise DatasetError(
                    f"opnet_h5: {where}: {key!r} has {arr.shape[0]} rows but 'images' has {n}"
                )
        if n == 0:
            raise DatasetError(f"opnet_h5: {where} holds no items")
        quats = arrays["quats"].astype(np.float64)
        if quats.shape != (n, 4):
            raise DatasetError(
                f"opnet_h5: {where}: 'quats' has shape {quats.shape}, expected (N, 4) x, y, z, w"
            )
        norm = np.linalg.norm(quats, axis=1)
        errors = np.where(~np.isfinite(norm) | (norm < 1e-6), "quaternion is NaN/inf or zero", "")
        safe = np.where((errors == "")[:, None], quats, [0.0, 0.0, 0.0, 1.0])
        rot = rotation_from_opnet_quaternion(
            torch.from_numpy(safe / np.linalg.norm(safe, axis=1, keepdims=True))
        )
        cols: dict[str, Any] = {
            "path": [f"{self.h5_path.name}#{i}" for i in range(n)],
            "array_index": np.arange(n),
            **rotation_columns_from_matrices(rot),
        }
        pt = None
        if "pt3d_68" in arrays:
            pt = pt3d_68_to_n683(arrays["pt3d_68"].astype(np.float64), f"{where}: 'pt3d_68'")
            # Depth relative to the head centre, as stored: no per-item re-centring (a mean
            # over the face's landmarks sits a pose-dependent distance from the centre).
            z = pt[..., 2]
            for k in range(68):
                cols[LANDMARK_COLUMNS[0][k]] = pt[:, k, 0]
                cols[LANDMARK_COLUMNS[1][k]] = pt[:, k, 1]
                cols[LANDMARK_Z_COLUMNS[k]] = z[:, k]
        if "coords" in arrays:
            c = arrays["coords"].astype(np.float64).reshape(n, 3)
            # coords[2] is the projected head radius; ``hsize`` (the sample's head_size) is
            # the head's full size, 2 x radius (OpNet's module takes head_size / 2).
            cols.update(hcx=c[:, 0], hcy=c[:, 1], hsize=2.0 * c[:, 2])
        if box_source == "rois":
            if "rois" not in arrays:
                raise DatasetError(f"opnet_h5: {where}: box_source='rois' but no 'rois' dataset")
            boxes = arrays["rois"].astype(np.float64).reshape(n, 4)
        elif box_source == "pt3d_68":
            if pt is None:
                raise DatasetError(f"opnet_h5: {where}: box_source='pt3d_68' but no 'pt3d_68'")
            boxes = np.stack([landmark_box(p[:, :2]) for p in pt])
        elif box_source == "coords":
            if "coords" not in arrays:
                raise DatasetError(f"opnet_h5: {where}: box_source='coords' but no 'coords'")
            half = cols["hsize"][:, None] / 2  # = coords[2], the radius
            centre = np.stack([cols["hcx"], cols["hcy"]], 1)
            boxes = np.concatenate([centre - half, centre + half], axis=1)
        else:
            raise ValueError(
                f"box_source must be 'rois', 'pt3d_68' or 'coords', got {box_source!r}"
            )
        bad_box = (
            ~np.all(np.isfinite(boxes), 1)
            | (boxes[:, 2] <= boxes[:, 0])
            | (boxes[:, 3] <= boxes[:, 1])
        )
        errors = np.where((errors == "") & bad_box, f"empty or non-finite {box_source} box", errors)
        for k, name in enumerate(BOX_COLUMNS):
            cols[name] = boxes[:, k]
        if "shapeparams" in arrays:
            sp = arrays["shapeparams"].astype(np.float32).reshape(n, -1)
            cols["shape_params"] = list(sp)
        cols["error"] = errors
        return pd.DataFrame(cols)

    def close(self) -> None:
        """Close this process's HDF5 handle (reopened on the next access)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass

    def __getstate__(self) -> dict[str, Any]:
        # An open HDF5 handle cannot be pickled to DataLoader workers; each reopens its own.
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def load_image(self, i: int) -> Image.Image:
        if self._file is None:
            self._file = _import_h5py().File(self.h5_path, "r")
        raw = self._file["images"][int(self._array_index[i])]
        where = f"{self.h5_path}: images[{int(self._array_index[i])}]"
        arr = np.asarray(raw)
        if arr.ndim == 1:  # encoded bytes
            try:
                with Image.open(io.BytesIO(arr.tobytes())) as img:
                    img.load()
                    return img.convert("RGB")
            except (OSError, SyntaxError, ValueError) as err:  # as decode_image: PIL's kinds
                raise DatasetError(f"cannot decode image {where}: {err}") from err
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise DatasetError(f"{where}: image of shape {arr.shape}, expected (H, W[, 1 or 3])")
        return Image.fromarray(np.ascontiguousarray(arr).astype(np.uint8), "RGB")
