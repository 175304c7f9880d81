"""Write a dataset to disk in hpelib's generic table + images format, for inspection or
for loading back with the generic table loader."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["TABLE_COLUMNS", "write_table_dataset"]

_ROT = [f"r{i}{j}" for i in range(3) for j in range(3)]
TABLE_COLUMNS: tuple[str, ...] = (
    "path", "x0", "y0", "x1", "y1", *_ROT, "identity", "occluded",
    *[f"lmx_{i}" for i in range(68)], *[f"lmy_{i}" for i in range(68)],
)  # fmt: skip


def write_table_dataset(
    dataset: Dataset, folder: str | os.PathLike[str], limit: int | None = None
) -> Path:
    """Write ``dataset`` items as ``images/{index:06d}.png`` + ``labels.csv`` in ``folder``.

    Columns: ``path`` (relative to the CSV's folder), ``x0, y0, x1, y1`` (face box, pixels),
    ``r00 .. r22`` (rotation in hpelib's internal convention, row-major), ``identity``,
    ``occluded`` (0/1), ``lmx_0 .. lmx_67``, ``lmy_0 .. lmy_67`` (2D landmarks, NaN when the
    item has none). Items must be sample dicts (:mod:`hpelib.data.sample`).

    Returns:
        Path of the written ``labels.csv``.
    """
    root = Path(folder)
    (root / "images").mkdir(parents=True, exist_ok=True)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    rows: list[dict[str, Any]] = []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, dict):
            raise ValueError(
                f"write_table_dataset needs sample dicts, item {i} is {type(item).__name__}"
            )
        rel = f"images/{i:06d}.png"
        Image.fromarray(item["image"].permute(1, 2, 0).numpy()).save(root / rel)
        row: dict[str, Any] = {"path": rel}
        box = item.get("box")
        for k, name in enumerate(("x0", "y0", "x1", "y1")):
            row[name] = float(box[k]) if box is not None else math.nan
        rot = item["rotation"].reshape(-1).tolist()
        row.update(dict(zip(_ROT, rot, strict=True)))
        row["identity"] = int(item.get("identity", -1))
        row["occluded"] = int(bool(item.get("occluded", False)))
        lm = item.get("landmarks_2d")
        lm = np.full((68, 2), np.nan) if lm is None else lm.double().numpy()
        row.update({f"lmx_{k}": lm[k, 0] for k in range(68)})
        row.update({f"lmy_{k}": lm[k, 1] for k in range(68)})
        rows.append(row)
    path = root / "labels.csv"
    pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).to_csv(path, index=False)
    return path
