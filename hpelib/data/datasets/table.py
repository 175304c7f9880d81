"""Generic table format: a CSV (or parquet) file + an image folder, for any other dataset.

Columns (also written by :func:`hpelib.data.synthetic.write_table_dataset`):

======================  =======================================================================
column                  meaning
======================  =======================================================================
``path``                image path, relative to the table's folder (or to ``image_root``)
``x0, y0, x1, y1``      optional face box, image pixels (all four missing/NaN -> the whole
                        image; partly missing or infinite -> invalid row)
``r00 .. r22``          rotation in hpelib's internal convention, row-major, OR
three angle columns     named by the Euler convention (``euler_names(euler_convention)``,
                        e.g. ``pitch, yaw, roll`` for ``"300wlp"``), degrees by default
``identity``            optional int person id (-1 / empty = unknown)
``occluded``            optional 0/1
``lmx_0 .. lmx_67``     optional 2D landmarks in image pixels (NaN = missing), with
``lmy_0 .. lmy_67``
======================  =======================================================================

Parquet needs ``pyarrow`` (``pip install pyarrow``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hpelib.data.datasets.base import (
    BOX_COLUMNS,
    LANDMARK_COLUMNS,
    ROTATION_COLUMNS,
    CropRule,
    DatasetError,
    IndexedPoseDataset,
    OnInvalid,
    angle_unit_mixup,
    apply_invalid_policy,
    invalid_angle_reason,
    rotation_columns_from_matrices,
)
from hpelib.data.datasets.registry import register_dataset
from hpelib.rotation import euler_names, euler_to_rotation

__all__ = ["PoseTable", "read_table"]


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a ``.csv`` / ``.tsv`` / ``.parquet`` table; parquet without pyarrow -> ImportError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"table: file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            try:
                import pyarrow  # noqa: F401
            except ImportError as err:
                raise ImportError(
                    f"reading the parquet table {path} needs pyarrow: pip install pyarrow "
                    "(or save the table as CSV)"
                ) from err
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(f"table: cannot parse {path}: {err}") from err
    raise DatasetError(f"table: {path}: unknown table format {suffix!r} (use .csv or .parquet)")


def _require_numeric(df: pd.DataFrame, columns: list[str], table: Path) -> None:
    """Convert ``columns`` (those present) to numbers in place; a non-numeric cell raises
    :class:`DatasetError` naming the table, column, row and value (numpy's own error names
    none of them). Empty cells become NaN, ``inf`` stays ``inf``."""
    for col in columns:
        if col not in df.columns or pd.api.types.is_numeric_dtype(df[col]):
            continue
        numbers = pd.to_numeric(df[col], errors="coerce")
        bad = numbers.isna() & df[col].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetError(
                f"table: {table} row {i + 2}: column {col!r} is not a number "
                f"({df[col].iloc[i]!r}; {int(bad.sum())} such cell(s) in the column)"
            )
        df[col] = numbers


def _row_errors_for_matrices(m: np.ndarray) -> list[str]:
    finite = np.all(np.isfinite(m), axis=(1, 2))
    safe = np.where(finite[:, None, None], m, np.eye(3))
    orth = np.abs(safe @ np.swapaxes(safe, 1, 2) - np.eye(3)).max(axis=(1, 2)) < 1e-3
    det = np.abs(np.linalg.det(safe) - 1.0) < 1e-3
    return [
        "" if f and o and d else ("rotation has NaN/inf" if not f else "r00..r22 is not a rotation")
        for f, o, d in zip(finite, orth, det, strict=True)
    ]


@register_dataset("table", "csv", "generic", "parquet")
class PoseTable(IndexedPoseDataset):
    """Any dataset described by a table (module docstring) and its images.

    Args:
        table: the ``.csv`` / ``.parquet`` file.
        image_root: folder the ``path`` column is relative to (default: the table's folder).
        euler_convention: convention of the angle columns when there are no ``r00..r22``
            (:data:`hpelib.rotation.EULER_CONVENTIONS`, e.g. ``"300wlp"``, ``"clerf"``).
        degrees: the angle columns are in degrees (else radians).
        image_size: side of the output crop.
        crop_rule: ``"tight"`` (default; the box, or the whole image without one),
            ``"6drepnet"``, ``"full"`` or a callable.
        on_invalid: ``"error"`` or ``"skip"`` for missing images, NaN/out-of-range angles,
            non-rotation matrices, zero-area or partly missing/infinite boxes. A cell that is
            not a number in a numeric column always raises :class:`DatasetError`.
        angle_limit_deg: largest accepted ``|angle|`` of angle columns, ``None`` = no limit.
        check_files: verify at construction that every image file exists.
        train, seed: as in :class:`IndexedPoseDataset`.
        check_units: raise :class:`DatasetError` when the angle columns look like the other
            unit than ``degrees`` says (rule in
            :func:`~hpelib.data.datasets.base.angle_unit_mixup`): with ``degrees=True``, 10 or
            more rows, at least 95 % of them with every ``|angle| <= pi``, not all ~0; with
            ``degrees=False``, most rows (3 or more) with an ``|angle| > pi``. ``False`` skips
            it: a near-frontal table whose degree angles all stay within about 3 degrees, or a
            radian table made mostly of wild labels, is legitimate and would trip it.
    """

    name = "table"

    def __init__(
        self,
        table: str | os.PathLike[str],
        image_root: str | os.PathLike[str] | None = None,
        euler_convention: str = "300wlp",
        degrees: bool = True,
        image_size: int = 224,
        crop_rule: str | CropRule = "tight",
        on_invalid: OnInvalid = "error",
        angle_limit_deg: float | None = None,
        check_files: bool = True,
        train: bool = False,
        seed: int = 0,
        check_units: bool = True,
    ) -> None:
        table = Path(table)
        df = read_table(table)
        root = Path(image_root) if image_root is not None else table.parent
        if "path" not in df.columns:
            raise DatasetError(f"table: {table} has no 'path' column (columns: {list(df.columns)})")
        if len(df) == 0:
            raise DatasetError(f"table: {table} has no rows")
        df = df.reset_index(drop=True).copy()
        df["path"] = df["path"].astype(str)
        numeric = [*ROTATION_COLUMNS, *euler_names(euler_convention), *BOX_COLUMNS]
        numeric += [*LANDMARK_COLUMNS[0], *LANDMARK_COLUMNS[1], "identity", "occluded"]
        _require_numeric(df, numeric, table)
        df["label_file"] = [f"{table.name} row {i + 2}" for i in range(len(df))]  # 1 = header
        if all(c in df.columns for c in ROTATION_COLUMNS):
            m = df.loc[:, list(ROTATION_COLUMNS)].to_numpy(np.float64, na_value=np.nan)
            m = m.reshape(-1, 3, 3)
            errors = _row_errors_for_matrices(m)
            m = np.where(np.array([e == "" for e in errors])[:, None, None], m, np.eye(3))
            rot = torch.from_numpy(m)
        else:
            names = euler_names(euler_convention)
            if not all(n in df.columns for n in names):
                raise DatasetError(
                    f"table: {table} needs a pose: columns r00..r22 or {', '.join(names)} "
                    f"(euler_convention={euler_convention!r}); has {list(df.columns)[:12]}..."
                )
            angles = df.loc[:, list(names)].to_numpy(np.float64, na_value=np.nan)
            unit = "degrees" if degrees else "radians"
            problem = angle_unit_mixup(angles, unit) if check_units else ""
            if problem:
                other = "radians" if degrees else "degrees"
                raise DatasetError(
                    f"table: {table}: angle columns {', '.join(names)} must be {unit} "
                    f"(degrees={degrees}), but {problem}. Likely a unit mix-up: set "
                    f"degrees={not degrees} (degrees: {str(not degrees).lower()} in a config) "
                    f"if they are {other}, or pass check_units=False if they are right."
                )
            deg = angles if degrees else np.degrees(angles)
            errors = invalid_angle_reason(deg, names, angle_limit_deg)
            rot = euler_to_rotation(
                torch.from_numpy(np.nan_to_num(deg)), euler_convention, degrees=True
            )
        for col, values in rotation_columns_from_matrices(rot).items():
            df[col] = values
        if all(c in df.columns for c in BOX_COLUMNS):
            b = df.loc[:, list(BOX_COLUMNS)].to_numpy(np.float64, na_value=np.nan)
            empty = np.all(np.isfinite(b), 1) & ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))
            # All four NaN = no box (the whole image); a partly missing or infinite box is
            # a broken label, not a request for the whole image.
            partial = ~np.all(np.isfinite(b), 1) & ~np.all(np.isnan(b), 1)
            errors = [
                e
                or ("box has zero area" if z else "")
                or (
                    f"box (x0, y0, x1, y1) = {row.tolist()} is partly missing or infinite"
                    if p
                    else ""
                )
                for e, z, p, row in zip(errors, empty, partial, b, strict=True)
            ]
        if check_files:
            missing = [not (root / p).is_file() and not Path(p).is_file() for p in df["path"]]
            errors = [
                e or (f"image {p} not found in {root}" if miss else "")
                for e, p, miss in zip(errors, df["path"], missing, strict=True)
            ]
        df["error"] = errors
        df = apply_invalid_policy(df, on_invalid, "table")
        super().__init__(df, root, image_size, crop_rule, train, seed)
