"""Images of any kind the inference API accepts -> tensors (shared by :mod:`hpelib.predict`
and :mod:`hpelib.detect`, so that neither imports the other for it)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

#: What PIL raises on a broken or hostile image file (PIL turns most into ``OSError``).
_DECODE_ERRORS = (
    UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
    EOFError,
)  # fmt: skip

#: Float images may exceed [0, 1] by this much (rounding in the user's conversion).
_RANGE_TOLERANCE = 1e-3


def _read_image(path: str | Path) -> Tensor:
    """``(3, H, W)`` uint8 RGB; a missing file, broken symlink or symlink loop is a
    ``FileNotFoundError`` and an undecodable file (truncated, not an image) a ``ValueError``,
    both naming the file, so that callers can report it and go on."""
    path = Path(path)
    try:
        path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise FileNotFoundError(f"image file {str(path)!r} is a symlink loop") from err
        if path.is_symlink():
            raise FileNotFoundError(
                f"image file {str(path)!r} is a broken symlink (to {os.readlink(path)!r})"
            ) from err
        if err.errno == errno.ENOENT:
            raise FileNotFoundError(f"image file {str(path)!r} does not exist") from err
        raise OSError(f"image file {str(path)!r} cannot be read: {err.strerror}") from err
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} is not a file")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except _DECODE_ERRORS as err:
        raise ValueError(f"cannot decode image {str(path)!r}: {err}") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _to_float_chw(image: Any, what: str = "image") -> Tensor:
    """One image of any accepted kind -> ``(3, H, W)`` float in [0, 1]. Values that are not
    finite or out of range are an error (``what`` names the image): a 0-255 float image
    would otherwise give a confident wrong pose."""
    if isinstance(image, str | Path):
        image = _read_image(image)
    elif isinstance(image, Image.Image):
        image = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy images must be (H, W, 3) or (H, W), got {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if not isinstance(image, Tensor):
        raise TypeError(f"unsupported image type {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"tensor images must be (3, H, W) or (1, H, W), got {tuple(image.shape)}")
    image = image.expand(3, -1, -1)
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{what} is empty: shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    dtype = str(image.dtype).removeprefix("torch.")
    image = image.float()
    if not torch.isfinite(image).all():
        raise ValueError(f"{what} contains NaN or inf values")
    lo, hi = (float(v) for v in torch.aminmax(image))
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{what} must be uint8 0-255 or float in [0, 1], got {dtype} values in [{lo:g}, {hi:g}]"
        )
    return image


def _to_uint8_hwc(image: Any, what: str = "image") -> np.ndarray:
    """Any image :func:`_to_float_chw` accepts -> contiguous ``(H, W, 3)`` uint8 RGB (what
    MediaPipe takes). uint8 inputs (files, PIL, arrays, tensors) skip the float round trip,
    which costs more than Face Mesh itself; the result is the same either way."""
    if isinstance(image, str | Path):
        image = _read_image(image)
    if isinstance(image, Image.Image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3:
        if image.shape[2] == 3:
            return np.ascontiguousarray(image)
    if isinstance(image, Tensor) and image.dtype == torch.uint8 and image.ndim == 3:
        if image.shape[0] in (1, 3) and image.shape[1] > 0 and image.shape[2] > 0:
            return np.ascontiguousarray(image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy())
    chw = _to_float_chw(image, what)
    return np.ascontiguousarray(
        (chw.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    )
