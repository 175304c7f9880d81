"""``IndexedPoseDataset``: a label index (pandas) + per-item image decode, crop and resize.

Every file-based loader of :mod:`hpelib.data.datasets` builds ONE ``pandas.DataFrame`` with a
row per item (cached by :mod:`hpelib.data.datasets.index_cache`), so that per-item work is
only the image decode + crop + resize. Index columns (all optional except ``path`` and the
rotation):

==========================  ===============================================================
column                      meaning
==========================  ===============================================================
``path``                    image path, relative to the dataset's ``root`` (or absolute)
``r00 .. r22``              rotation, internal convention (:mod:`hpelib.rotation`), row-major
``x0, y0, x1, y1``          face box in image pixels, the input of the crop rule (NaN = none)
``lmx_i, lmy_i``            2D landmark ``i`` (0..67) in image pixels, NaN = missing/invisible
``lmz_i``                   depth of landmark ``i`` (image-pixel scale, z into the scene,
                            relative to the head centre)
``hcx, hcy, hsize``         projected head centre and head size in image pixels
``identity``                person id (int, -1 unknown)
``occluded``                0/1
``shape_params``            object column of 1-D float arrays
``error``                   non-empty when the label could not be read (see ``on_invalid``)
==========================  ===============================================================

The sample dict produced is described in :mod:`hpelib.data.sample`. Boxes, landmarks, head
centre and size in the sample are in CROP pixels (after the resize to ``image_size``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = [
    "BOX_COLUMNS",
    "CROP_RULES",
    "LANDMARK_COLUMNS",
    "ROTATION_COLUMNS",
    "CropRule",
    "DatasetError",
    "IndexedPoseDataset",
    "OnInvalid",
    "aflw2000_filter_mask",
    "angle_unit_mixup",
    "apply_filter_99",
    "apply_invalid_policy",
    "crop_rule_6drepnet",
    "crop_rule_6drepnet_jitter",
    "crop_rule_full",
    "crop_rule_tight",
    "crop_rule_tight_jitter",
    "jitter_crop_box",
    "decode_image",
    "get_crop_rule",
    "invalid_angle_reason",
    "landmark_box",
    "require_files",
    "rotation_columns_from_matrices",
]

logger = logging.getLogger("hpelib.data")

ROTATION_COLUMNS: tuple[str, ...] = tuple(f"r{i}{j}" for i in range(3) for j in range(3))
BOX_COLUMNS: tuple[str, ...] = ("x0", "y0", "x1", "y1")
LANDMARK_COLUMNS: tuple[tuple[str, ...], tuple[str, ...]] = (
    tuple(f"lmx_{i}" for i in range(68)),
    tuple(f"lmy_{i}" for i in range(68)),
)
LANDMARK_Z_COLUMNS: tuple[str, ...] = tuple(f"lmz_{i}" for i in range(68))

#: What to do with an item whose label is unreadable, NaN/inf or out of range.
OnInvalid = Literal["error", "skip"]

#: A crop rule maps the face box ``(4,)`` (x0, y0, x1, y1, image pixels; may be NaN), the
#: image size ``(width, height)`` and a generator (``None`` at test time) to the crop box.
CropRule = Callable[[np.ndarray, tuple[int, int], "np.random.Generator | None"], np.ndarray]


class DatasetError(ValueError):
    """A dataset file or label is unusable; the message names the file."""


# ----------------------------------------------------------------------------- crop rules
#: Train-time jitter of the ``*_jitter`` rules around their test box: the box is scaled about
#: its centre by ``s ~ U(*CROP_JITTER_SCALE)`` (width and height alike) and its centre moved
#: by ``U(-CROP_JITTER_SHIFT, CROP_JITTER_SHIFT)`` times the box width (x) and height (y).
CROP_JITTER_SCALE: tuple[float, float] = (0.9, 1.1)
CROP_JITTER_SHIFT: float = 0.05


def jitter_crop_box(
    crop: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_JITTER_SCALE,
    shift: float = CROP_JITTER_SHIFT,
) -> np.ndarray:
    """Random scale and shift of a crop box ``(4,)`` about its centre (see
    :data:`CROP_JITTER_SCALE`); the mean framing is the input box."""
    x0, y0, x1, y1 = (float(v) for v in crop)
    w, h = x1 - x0, y1 - y0
    s = float(rng.uniform(scale[0], scale[1]))
    dx, dy = (float(v) for v in rng.uniform(-shift, shift, size=2))
    cx, cy = 0.5 * (x0 + x1) + dx * w, 0.5 * (y0 + y1) + dy * h
    return np.array([cx - 0.5 * s * w, cy - 0.5 * s * h, cx + 0.5 * s * w, cy + 0.5 * s * h])


def crop_rule_6drepnet(
    box: np.ndarray, image_wh: tuple[int, int], rng: np.random.Generator | None
) -> np.ndarray:
    """6DRepNet/HopeNet crop from the landmark box, exactly as the reference code
    (``datasets.py`` of 6DRepNet; names ``"6drepnet_train"``, ``"hopenet_train"``).

    Train (``rng`` given; the reference's ``Pose_300W_LP``): ``k ~ U(0.2, 0.4)``, margins
    ``(0.6k, 2k, 0.6k, 0.6k)`` on (x_min, y_min, x_max, y_max); test (``rng is None``; the
    reference's ``AFLW2000``): ``k = 0.2``, margins ``(2k, 2k, 2k, 0.6k)``. As in the
    reference, the updates are SEQUENTIAL (``x_max`` grows by the width measured after
    ``x_min`` moved) and PIL crops at ``int()`` of the result. The train variant frames the
    face tighter at the sides than the test variant: it is the 300W-LP -> AFLW2000 protocol's
    training rule, not a jitter around the test crop (that is :func:`crop_rule_6drepnet_jitter`).
    """
    x_min, y_min, x_max, y_max = (float(v) for v in box)
    if rng is None:
        k, mx0, my0, mx1, my1 = 0.2, 2.0, 2.0, 2.0, 0.6
    else:
        k, mx0, my0, mx1, my1 = 0.2 + 0.2 * float(rng.random()), 0.6, 2.0, 0.6, 0.6
    x_min -= mx0 * k * abs(x_max - x_min)
    y_min -= my0 * k * abs(y_max - y_min)
    x_max += mx1 * k * abs(x_max - x_min)
    y_max += my1 * k * abs(y_max - y_min)
    return np.array([x_min, y_min, x_max, y_max], dtype=np.float64)


def crop_rule_6drepnet_jitter(
    box: np.ndarray, image_wh: tuple[int, int], rng: np.random.Generator | None
) -> np.ndarray:
    """6DRepNet/HopeNet TEST crop (names ``"6drepnet"``, ``"hopenet"``), jittered at train time.

    Test (``rng is None``): exactly :func:`crop_rule_6drepnet`'s test crop (the reference's
    AFLW2000 crop). Train: that same box, randomly scaled and shifted by
    :func:`jitter_crop_box`, so training sees the framing of the test crop on average.
    """
    crop = crop_rule_6drepnet(box, image_wh, None)
    return crop if rng is None else jitter_crop_box(crop, rng)


def crop_rule_tight(
    box: np.ndarray, image_wh: tuple[int, int], rng: np.random.Generator | None
) -> np.ndarray:
    """Crop exactly the face box (OpNet ``rois``, a table's box); no box -> the whole image."""
    if not np.all(np.isfinite(box)):
        return crop_rule_full(box, image_wh, rng)
    return np.asarray(box, dtype=np.float64)


def crop_rule_tight_jitter(
    box: np.ndarray, image_wh: tuple[int, int], rng: np.random.Generator | None
) -> np.ndarray:
    """:func:`crop_rule_tight` at test time; at train time jittered by :func:`jitter_crop_box`
    (no box: the whole image, never jittered)."""
    crop = crop_rule_tight(box, image_wh, None)
    if rng is None or not np.all(np.isfinite(box)):
        return crop
    return jitter_crop_box(crop, rng)


def crop_rule_full(
    box: np.ndarray, image_wh: tuple[int, int], rng: np.random.Generator | None
) -> np.ndarray:
    """The whole image (pre-cropped data such as FSA-Net's BIWI npz)."""
    return np.array([0.0, 0.0, float(image_wh[0]), float(image_wh[1])])


#: Named crop rules; datasets accept a name or any callable with the :data:`CropRule` signature.
#: ``"6drepnet"``: the reference test crop, jittered around it at train time;
#: ``"6drepnet_train"``: the reference pair (300W-LP training margins / AFLW2000 test margins).
CROP_RULES: dict[str, CropRule] = {
    "6drepnet": crop_rule_6drepnet_jitter,
    "hopenet": crop_rule_6drepnet_jitter,
    "6drepnet_train": crop_rule_6drepnet,
    "hopenet_train": crop_rule_6drepnet,
    "tight": crop_rule_tight,
    "tight_jitter": crop_rule_tight_jitter,
    "full": crop_rule_full,
}


def get_crop_rule(rule: str | CropRule) -> CropRule:
    """Look up a crop rule by name (see :data:`CROP_RULES`) or pass a callable through."""
    if callable(rule):
        return rule
    try:
        return CROP_RULES[rule.lower()]
    except KeyError:
        raise ValueError(f"unknown crop rule {rule!r}; known: {sorted(CROP_RULES)}") from None


def landmark_box(points: np.ndarray, skip_missing: bool = True) -> np.ndarray:
    """Box ``(4,)`` (x0, y0, x1, y1) of ``(N, 2)`` points.

    ``skip_missing=True``: ignore missing points, those with a negative (``pt2d`` marks
    invisible points with ``-1``) or non-finite coordinate. ``skip_missing=False``: the plain
    min/max over ALL points, ``-1`` included, as 6DRepNet/HopeNet compute their ``pt2d`` box
    (``x_min = min(pt2d[0, :])``, ...); non-finite points are still an error there. Raises
    ``ValueError`` when no usable point is left.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    finite = np.all(np.isfinite(pts), axis=1)
    if not skip_missing:
        if len(pts) == 0 or not finite.all():
            raise ValueError("landmarks are empty or not finite")
        return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
    ok = finite & np.all(pts >= 0, axis=1)
    if not ok.any():
        raise ValueError("no valid landmark (all negative or NaN)")
    pts = pts[ok]
    return np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])


# ------------------------------------------------------------------------ label validity
def aflw2000_filter_mask(angles_deg: np.ndarray) -> np.ndarray:
    """AFLW2000 protocol filter (HopeNet, FSA-Net, 6DRepNet): keep items whose three Euler
    angles ``(N, 3)`` (degrees) all satisfy ``|angle| <= 99``. Returns a ``(N,)`` bool mask of
    items to KEEP (1969 of the 2000 AFLW2000 images)."""
    a = np.asarray(angles_deg, dtype=np.float64)
    return np.all(np.isfinite(a), axis=-1) & np.all(np.abs(a) <= 99.0, axis=-1)


def invalid_angle_reason(
    angles_deg: np.ndarray, names: Sequence[str], limit_deg: float | None
) -> list[str]:
    """Per row of ``(N, 3)`` degrees: ``""`` when valid, else why (NaN/inf or ``|a| > limit``)."""
    a = np.asarray(angles_deg, dtype=np.float64).reshape(-1, 3)
    reasons = []
    for row in a:
        why = ""
        for name, v in zip(names, row, strict=True):
            if not math.isfinite(v):
                why = f"{name} is {v}"
                break
            if limit_deg is not None and abs(v) > limit_deg:
                why = f"{name} = {v:.2f} degrees is outside [-{limit_deg:g}, {limit_deg:g}]"
                break
        reasons.append(why)
    return reasons


#: Units rule (:func:`angle_unit_mixup`): smallest number of items with finite angles it
#: judges when radians are expected, and when degrees are expected.
UNIT_CHECK_MIN_ITEMS: dict[str, int] = {"radians": 3, "degrees": 10}


def angle_unit_mixup(angles: np.ndarray, expected: Literal["radians", "degrees"]) -> str:
    """Whether a whole label set ``(N, 3)`` of angles, in the file's own unit, is clearly in
    the other unit than ``expected``: ``""`` when plausible, else the figures behind the
    verdict. The rule looks at the share of items, never at one label:

    * ``s`` = share of the items with finite angles whose largest ``|angle|`` exceeds pi.
    * radians expected: a mix-up when ``s > 0.5`` over at least 3 items. A radian label beyond
      pi (180 degrees) is a rare wild label (AFLW2000 has a few, e.g. a roll of -17 rad):
      0.6 % of the AFLW2000-dev items; the same labels in degrees give ``s`` = 99 %.
    * degrees expected: a mix-up when ``s <= 0.05`` over at least 10 items and the largest
      ``|angle|`` within pi exceeds 0.1 (the set is not all ~0, where both readings agree).
      Degree labels of head poses are rarely all within 3.14 degrees (AFLW2000-dev: 1 % of
      the items); radian labels nearly always are.

    Legitimate sets can trip it: a hand-picked folder of mostly wild labels (radians
    expected), a near-frontal set whose angles all stay within about 3 degrees (degrees
    expected); the loaders' ``check_units=False`` skips the check.
    """
    a = np.asarray(angles, dtype=np.float64).reshape(-1, 3)
    a = np.abs(a[np.all(np.isfinite(a), axis=1)])
    n = len(a)
    if n < UNIT_CHECK_MIN_ITEMS[expected]:
        return ""
    big = a.max(axis=1) > math.pi
    share = float(big.mean())
    if expected == "radians":
        if share > 0.5:
            return (
                f"{int(big.sum())} of {n} items have an |angle| > pi (median of the items' "
                f"largest |angle| {float(np.median(a.max(axis=1))):.3g}): they look like degrees"
            )
        return ""
    if expected != "degrees":
        raise ValueError(f"expected must be 'radians' or 'degrees', got {expected!r}")
    inside = a[~big]
    if share <= 0.05 and inside.size and float(inside.max()) > 0.1:
        return (
            f"{n - int(big.sum())} of {n} items have every |angle| <= pi (largest "
            f"{float(inside.max()):.3g}): they look like radians"
        )
    return ""


def apply_filter_99(index: pd.DataFrame, filter_99: bool, name: str, where: Path) -> pd.DataFrame:
    """The evaluation protocol's 99-degree filter (:func:`aflw2000_filter_mask`) on an index
    with ``pitch, yaw, roll`` degree columns; records ``skipped``/``filtered`` in its attrs.
    A filter that leaves nothing is a :class:`DatasetError` naming ``where`` (an evaluation on
    nothing would exit with no metrics)."""
    skipped = index.attrs.get("skipped", 0)
    filtered = 0
    if filter_99:
        keep = aflw2000_filter_mask(index.loc[:, ["pitch", "yaw", "roll"]].to_numpy(np.float64))
        filtered = int((~keep).sum())
        index = index[keep].reset_index(drop=True)
        if len(index) == 0:
            raise DatasetError(
                f"{name}: {where}: the 99-degree filter dropped all {filtered} item(s) (each "
                "has an |angle| > 99 degrees), nothing is left to evaluate; filter_99=False "
                "(filter_99: false in a config) keeps them"
            )
        logger.info("%s: 99-degree filter kept %d of %d", name, len(index), len(index) + filtered)
    index.attrs.update(skipped=skipped, filtered=filtered)
    return index


def apply_invalid_policy(
    index: pd.DataFrame, on_invalid: OnInvalid, dataset: str, label_column: str = "label_file"
) -> pd.DataFrame:
    """Drop or reject rows whose ``error`` column is non-empty.

    ``on_invalid="error"`` raises :class:`DatasetError` naming the first bad file (and how many
    there are); ``"skip"`` drops them and logs the count on the ``hpelib.data`` logger. The
    number of skipped rows is stored in ``index.attrs["skipped"]``. When every row is
    invalid, both policies raise: an empty dataset would only fail later, far from the cause.
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    if "error" not in index.columns:
        index.attrs["skipped"] = 0
        return index
    bad = index["error"].fillna("").astype(str) != ""
    n_bad = int(bad.sum())
    if n_bad and (on_invalid == "error" or n_bad == len(index)):
        row = index[bad].iloc[0]
        where = row[label_column] if label_column in index.columns else row["path"]
        hint = (
            f"all {n_bad} item(s) are invalid, nothing left to load"
            if n_bad == len(index)
            else f"{n_bad} invalid item(s) in total; pass on_invalid='skip' to drop them"
        )
        raise DatasetError(f"{dataset}: {where}: {row['error']} ({hint})")
    out = index[~bad].reset_index(drop=True)
    out.attrs["skipped"] = n_bad
    if n_bad:
        logger.warning("%s: skipped %d invalid item(s) of %d", dataset, n_bad, len(index))
    return out


# ------------------------------------------------------------------------- image helpers
@contextlib.contextmanager
def _naming_undecodable(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn PIL's errors for a missing, corrupt or truncated file into a
    :class:`DatasetError` naming it (PIL would otherwise fail lazily, far from the cause)."""
    try:
        yield
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot decode image {path}: {err}") from err


def decode_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file fully decoded as RGB; a missing/corrupt/truncated file raises
    :class:`DatasetError` naming it (PIL would otherwise fail lazily, far from the cause)."""
    with _naming_undecodable(path), Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def jpeg_reduction(crop: np.ndarray, size: int) -> int:
    """Largest libjpeg DCT reduction (1, 2, 4 or 8) that keeps the ``(x0, y0, x1, y1)`` crop
    at least ``size`` pixels on its shorter side, so the resize after it still shrinks."""
    side = min(crop[2] - crop[0], crop[3] - crop[1])
    r = 1
    while r < 8 and side / (2 * r) >= size:
        r *= 2
    return r


def decode_image_for_crop(
    path: str | os.PathLike[str],
    crop_of: Callable[[tuple[int, int]], np.ndarray],
    size: int,
) -> tuple[Image.Image, np.ndarray, float]:
    """Decode an image only as finely as its crop needs: JPEGs at 1/2, 1/4 or 1/8 scale
    through libjpeg's DCT scaling (PIL ``draft``) when the crop is at least twice ``size``.

    Args:
        path: image file.
        crop_of: the crop box ``(4,)`` in full-image pixels, given the full ``(W, H)``.
        size: side of the output crop.

    Returns:
        ``(image, crop, scale)``: the RGB image decoded at ``scale`` (1, 1/2, 1/4 or 1/8;
        always 1 for other formats), and the full-resolution crop box.

    Decoding is about half of a 64 px training item from a 450 px AFLW2000 JPEG and the
    antialiased resize of the large crop most of the rest; both shrink with the reduction
    (``benchmarks/real_image_pipeline.py``). A missing or corrupt file raises
    :class:`DatasetError` naming it.
    """
    with _naming_undecodable(path), Image.open(path) as img:
        full_wh = img.size
        crop = crop_of(full_wh)
        scale = 1.0
        r = jpeg_reduction(crop, size)
        if r > 1 and img.format == "JPEG":
            # W // r (not ceil): draft picks the reduction from W // requested width.
            drafted = img.draft("RGB", (full_wh[0] // r, full_wh[1] // r))
            if drafted is not None:
                scale = drafted[1][2] / full_wh[0]
        img.load()
        return img.convert("RGB"), crop, scale


def resize_crop(img: Image.Image, crop: np.ndarray, size: int, scale: float = 1.0) -> Image.Image:
    """The ``(x0, y0, x1, y1)`` full-resolution ``crop`` of ``img`` (decoded at ``scale``)
    resized to ``size`` x ``size``; out-of-image parts are black, as PIL's crop.

    At scale 1 this is PIL's integer crop then resize (the references' path, unchanged); at
    a reduced scale the box is not on the pixel grid, so the crop is widened to whole pixels
    and the exact fractional box is given to the resize: the same region either way."""
    if scale == 1.0:
        patch = img.crop(tuple(int(v) for v in crop))
        return patch.resize((size, size), Image.Resampling.BILINEAR)
    box = np.asarray(crop, dtype=np.float64) * scale
    outer = (math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))
    inner = (box[0] - outer[0], box[1] - outer[1], box[2] - outer[0], box[3] - outer[1])
    patch = img.crop(outer)
    return patch.resize((size, size), Image.Resampling.BILINEAR, box=inner)


def _to_crop(points: np.ndarray, crop: np.ndarray, size: int) -> np.ndarray:
    """Image-pixel points ``(..., 2)`` -> crop pixels after resizing ``crop`` to ``size``."""
    scale = np.array([size / (crop[2] - crop[0]), size / (crop[3] - crop[1])])
    return (points - crop[:2]) * scale


# ------------------------------------------------------------------------------- dataset
def _columns(index: pd.DataFrame, names: Sequence[str]) -> np.ndarray | None:
    if not all(n in index.columns for n in names):
        return None
    return index.loc[:, list(names)].to_numpy(dtype=np.float64, na_value=np.nan)


class IndexedPoseDataset(Dataset):
    """Base of the file-based datasets: an index DataFrame (see module docstring) + crops.

    Args:
        index: one row per item (columns in the module docstring).
        root: folder that relative ``path`` values are relative to.
        image_size: side ``S`` of the square output crop (the crop box is resized to S x S,
            aspect ratio not kept, as the references' crop-then-resize).
        crop_rule: name in :data:`CROP_RULES` or a callable.
        train: use the crop rule's random (train) variant; the randomness comes from a
            generator seeded by ``(seed, epoch, item index)``, so it is reproducible.
        seed: seed of the train-time crop jitter; :meth:`set_epoch` changes it per epoch.
        reduced_decode: decode JPEGs only as finely as the crop needs (1/2, 1/4 or 1/8 scale
            through libjpeg's DCT scaling when the crop is at least twice ``image_size``;
            :func:`decode_image_for_crop`). The crop's region and labels are the same; its
            pixels differ slightly (a block-average shrink before the bilinear one). Off by
            default, so evaluation matches the references pixel for pixel; a 64 px training
            item from a 450 px AFLW2000 image is about twice as fast with it
            (``benchmarks/real_image_pipeline.py``).

    The epoch lives in a one-element shared-memory tensor, so :meth:`set_epoch` called in the
    main process reaches DataLoader workers that already hold a copy of the dataset
    (persistent workers, fork or spawn). :class:`~hpelib.data.datamodule.HPEDataModule`'s train
    loader sets it to the trainer's epoch before each pass; elsewhere call ``set_epoch``
    before creating the epoch's iterator.
    """

    name: str = "indexed"

    def __init__(
        self,
        index: pd.DataFrame,
        root: str | os.PathLike[str] | None = None,
        image_size: int = 224,
        crop_rule: str | CropRule = "tight",
        train: bool = False,
        seed: int = 0,
        reduced_decode: bool = False,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        missing = [c for c in ("path", *ROTATION_COLUMNS) if c not in index.columns]
        if missing:
            raise ValueError(f"{self.name}: index lacks columns {missing}")
        self.index = index.reset_index(drop=True)
        self.root = Path(root) if root is not None else None
        self.image_size = int(image_size)
        self.crop_rule = get_crop_rule(crop_rule)
        self.train = bool(train)
        self.seed = int(seed)
        self.reduced_decode = bool(reduced_decode)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # Column arrays once: DataFrame row access per item is far slower than numpy indexing.
        self._paths = self.index["path"].astype(str).tolist()
        rot = self.index.loc[:, list(ROTATION_COLUMNS)].to_numpy(dtype=np.float32)
        self._rotation = torch.from_numpy(rot.reshape(-1, 3, 3).copy())
        self._box = _columns(self.index, BOX_COLUMNS)
        lmx, lmy = (_columns(self.index, c) for c in LANDMARK_COLUMNS)
        self._lm = None if lmx is None or lmy is None else np.stack([lmx, lmy], axis=-1)
        self._lmz = _columns(self.index, LANDMARK_Z_COLUMNS)
        self._head = _columns(self.index, ("hcx", "hcy", "hsize"))
        self._identity = (
            self.index["identity"].fillna(-1).to_numpy(dtype=np.int64)
            if "identity" in self.index.columns
            else None
        )
        self._occluded = (
            self.index["occluded"].fillna(0).to_numpy(dtype=bool)
            if "occluded" in self.index.columns
            else None
        )
        self._shape = (
            self.index["shape_params"].tolist() if "shape_params" in self.index.columns else None
        )

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def num_skipped(self) -> int:
        """Items dropped by ``on_invalid="skip"`` or a protocol filter at construction."""
        return int(self.index.attrs.get("skipped", 0)) + int(self.index.attrs.get("filtered", 0))

    @property
    def epoch(self) -> int:
        """Epoch of the train-time crop jitter (shared with DataLoader workers)."""
        return int(self._epoch)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def set_epoch(self, epoch: int) -> None:
        """Change the train-time crop jitter per epoch (still reproducible from ``seed``);
        reaches live DataLoader workers too (shared memory)."""
        self.epoch = epoch

    def image_path(self, i: int) -> Path:
        """Absolute path of item ``i``'s image."""
        p = Path(self._paths[i])
        return p if p.is_absolute() or self.root is None else self.root / p

    def load_image(self, i: int) -> Image.Image:
        """Decoded RGB image of item ``i`` (array-backed datasets override this)."""
        return decode_image(self.image_path(i))

    def crop_box(self, i: int, image_wh: tuple[int, int]) -> np.ndarray:
        """Integer crop box ``(4,)`` of item ``i`` in image pixels (PIL crops at ``int()``)."""
        box = self._box[i] if self._box is not None else np.full(4, np.nan)
        rng = np.random.default_rng([self.seed, int(self._epoch), i]) if self.train else None
        crop = np.asarray(self.crop_rule(box, image_wh, rng), dtype=np.float64)
        if not np.all(np.isfinite(crop)):
            raise DatasetError(f"{self.name}: {self.image_path(i)}: crop box {crop} is not finite")
        crop = np.trunc(crop)
        if crop[2] <= crop[0] or crop[3] <= crop[1]:
            raise DatasetError(
                f"{self.name}: {self.image_path(i)}: crop box {crop.tolist()} has zero area"
            )
        w, h = image_wh
        if crop[2] <= 0 or crop[3] <= 0 or crop[0] >= w or crop[1] >= h:
            # PIL would return an all-black crop with a valid-looking label: labels made for
            # another (larger) image or a swapped image file. Partial overlap is normal.
            raise DatasetError(
                f"{self.name}: {self.image_path(i)}: crop box {crop.tolist()} lies outside the "
                f"{w} x {h} image (labels for a different image or image size?)"
            )
        return crop

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {self.name} of length {len(self)}")
        s = self.image_size
        if self.reduced_decode and type(self).load_image is IndexedPoseDataset.load_image:
            img, crop, decoded_scale = decode_image_for_crop(
                self.image_path(i), lambda wh: self.crop_box(i, wh), s
            )
        else:
            img = self.load_image(i)
            crop, decoded_scale = self.crop_box(i, img.size), 1.0
        # Out-of-image parts of the box are black, as PIL's crop in the references.
        patch = resize_crop(img, crop, s, decoded_scale)
        image = torch.from_numpy(np.asarray(patch, dtype=np.uint8).copy()).permute(2, 0, 1)
        sample: dict[str, Any] = {
            "image": image.contiguous(),
            "rotation": self._rotation[i].clone(),
            "index": torch.tensor(i, dtype=torch.int64),
        }
        scale = 0.5 * (s / (crop[2] - crop[0]) + s / (crop[3] - crop[1]))
        box = self._box[i] if self._box is not None else None
        if box is not None and np.all(np.isfinite(box)):
            corners = _to_crop(box.reshape(2, 2), crop, s).reshape(4)
            sample["box"] = torch.from_numpy(corners.astype(np.float32))
        if self._lm is not None:
            lm = self._lm[i]
            visible = np.all(np.isfinite(lm), axis=1)
            if visible.any():
                xy = np.where(visible[:, None], _to_crop(np.nan_to_num(lm), crop, s), 0.0)
                sample["landmarks_2d"] = torch.from_numpy(xy.astype(np.float32))
                sample["landmarks_visible"] = torch.from_numpy(visible)
                if self._lmz is not None and np.all(np.isfinite(self._lmz[i])):
                    xyz = np.concatenate([xy, self._lmz[i][:, None] * scale], axis=1)
                    sample["landmarks_3d"] = torch.from_numpy(xyz.astype(np.float32))
        if self._head is not None and np.all(np.isfinite(self._head[i])):
            hc = _to_crop(self._head[i][:2], crop, s)
            sample["head_center"] = torch.from_numpy(hc.astype(np.float32))
            sample["head_size"] = torch.tensor(self._head[i][2] * scale, dtype=torch.float32)
        if self._identity is not None:
            sample["identity"] = torch.tensor(self._identity[i], dtype=torch.int64)
        if self._occluded is not None:
            sample["occluded"] = torch.tensor(bool(self._occluded[i]))
        # Rows without shape parameters hold None/NaN scalars in the object column.
        if self._shape is not None and np.ndim(self._shape[i]) > 0:
            sample["shape_params"] = torch.as_tensor(
                np.asarray(self._shape[i], dtype=np.float32).reshape(-1)
            )
        return sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, root={self.root}, image_size={self.image_size}, "
            f"train={self.train})"
        )

    def identity_of(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(N,)`` int64 identity of items ``indices`` from the label index (``-1`` where
        unknown or when the index has no ``identity`` column): no image is decoded, so
        :func:`hpelib.data.pairs.dataset_identities` uses it instead of reading every item."""
        idx = np.asarray(torch.as_tensor(indices, dtype=torch.int64).reshape(-1))
        if self._identity is None:
            return torch.full((len(idx),), -1, dtype=torch.int64)
        return torch.from_numpy(self._identity[idx].astype(np.int64, copy=True))


def rotation_columns_from_matrices(r: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """``(N, 3, 3)`` internal matrices -> ``{"r00": (N,), ..., "r22": (N,)}`` index columns."""
    m = np.asarray(torch.as_tensor(r).detach().cpu().double().numpy()).reshape(-1, 9)
    return {name: m[:, k] for k, name in enumerate(ROTATION_COLUMNS)}


def require_files(folder: Path, files: Sequence[Path], pattern: str, dataset: str) -> None:
    """Raise :class:`DatasetError` naming ``folder`` and the expected pattern when empty."""
    if not folder.is_dir():
        raise DatasetError(f"{dataset}: folder {folder} does not exist (expected {pattern})")
    if not files:
        raise DatasetError(f"{dataset}: no files matching {pattern} in {folder}")
