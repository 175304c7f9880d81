"""Fixture writers shared by the dataset tests: real files in the datasets' true formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

__all__ = ["pt2d", "table_dir", "write_3ddfa", "write_image"]


def write_image(path: Path, w: int = 64, h: int = 64, seed: int = 0) -> None:
    """A random RGB image of ``w x h`` pixels, in the format of ``path``'s suffix."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def pt2d(x0: float = 16, y0: float = 20, x1: float = 48, y1: float = 52) -> np.ndarray:
    """``(2, 68)`` landmarks on an ellipse filling the box ``(x0, y0, x1, y1)``."""
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    x = (x0 + x1) / 2 + (x1 - x0) / 2 * np.cos(t)
    y = (y0 + y1) / 2 + (y1 - y0) / 2 * np.sin(t)
    return np.stack([x, y])


def write_3ddfa(folder: Path, stem: str, pose: tuple[float, float, float], **extra: object) -> None:
    """``<stem>.jpg`` (64 x 64) + ``<stem>.mat`` as in 300W-LP/AFLW2000: ``Pose_Para``
    (pitch, yaw, roll radians), ``pt2d``, ``roi``; ``extra`` keys are added (``None`` drops
    a default key)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / f"{stem}.jpg", seed=len(stem))
    mat = {
        "Pose_Para": np.array([[*pose, 0.0, 0.0, 0.0, 1.0]], dtype=np.float32),
        "pt2d": pt2d(),
        "roi": np.array([[10, 10, 50, 50]], dtype=np.int16),
        **extra,
    }
    scipy.io.savemat(folder / f"{stem}.mat", {k: v for k, v in mat.items() if v is not None})


def table_dir(tmp_path: Path) -> Path:
    """``<tmp_path>/table/img/{0,1,2}.png`` (40 x 30); returns the ``table`` folder."""
    root = tmp_path / "table"
    (root / "img").mkdir(parents=True)
    for i in range(3):
        write_image(root / "img" / f"{i}.png", 40, 30, seed=i)
    return root
