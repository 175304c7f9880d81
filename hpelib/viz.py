"""Drawing head poses on images: coordinate axes and a pose cube.

Both functions take a rotation in hpelib's internal convention (head -> camera, image axes
x right, y down, z into the scene) and draw an orthographic projection, which is what the
reference tools (HopeNet's ``draw_axis``, 6DRepNet's ``plot_pose_cube``) draw as well.

Colours follow the common HPE picture: **red** = the head's x axis (towards the subject's
left, image right for a frontal face), **green** = the head's *up* axis, **blue** = the
direction the face points (out of the nose). Images may be a PIL image, a ``(H, W, 3)``
uint8 numpy array, or a ``(3, H, W)`` uint8 torch tensor; the result has the same type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

__all__ = ["draw_axes", "draw_cube", "axes_endpoints"]

ImageLike = TypeVar("ImageLike", Image.Image, np.ndarray, Tensor)

AXIS_COLORS = ((230, 40, 40), (40, 200, 40), (40, 90, 240))


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB").copy()
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"a tensor image must be (C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
        array = image.detach().cpu()
        if array.dtype != torch.uint8:
            array = (array.clamp(0, 1) * 255).round().to(torch.uint8)
        array = array.expand(3, -1, -1).permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(array))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"a numpy image must be (H, W, 3) or (H, W), got {array.shape}")
    return Image.fromarray(array.astype(np.uint8))


def _like(pil: Image.Image, original: ImageLike) -> ImageLike:
    if isinstance(original, Image.Image):
        return pil
    array = np.asarray(pil)
    if isinstance(original, Tensor):
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    return array.copy()


def _rotation_array(rotation: Tensor | np.ndarray) -> np.ndarray:
    r = np.asarray(rotation.detach().cpu() if isinstance(rotation, Tensor) else rotation, dtype=np.float64)
    if r.shape != (3, 3):
        raise ValueError(f"rotation must be a (3, 3) matrix, got {r.shape}")
    return r


def _axis_directions(rotation: Tensor | np.ndarray) -> np.ndarray:
    """``(3, 3)``: rows = the drawn axes (x, up, face direction) in camera coordinates."""
    r = _rotation_array(rotation)
    # Head up = -y (y points to the chin), face direction = -z (z points into the head).
    return np.stack([r[:, 0], -r[:, 1], -r[:, 2]], axis=0)


def _frame(pil: Image.Image, center: Sequence[float] | None, size: float | None) -> tuple[np.ndarray, float]:
    """Default drawing centre (the image centre) and size (a third of the smaller side)."""
    w, h = pil.size
    center = ((w - 1) / 2, (h - 1) / 2) if center is None else center
    return np.asarray(center, dtype=np.float64), min(w, h) / 3 if size is None else size


def axes_endpoints(
    rotation: Tensor | np.ndarray, center: Sequence[float], size: float
) -> np.ndarray:
    """``(3, 2)`` image points of the red/green/blue axis tips (x, up, forward) drawn from
    ``center`` with length ``size`` pixels."""
    return np.asarray(center, dtype=np.float64)[None, :] + size * _axis_directions(rotation)[:, :2]


def draw_axes(
    image: ImageLike,
    rotation: Tensor | np.ndarray,
    center: Sequence[float] | None = None,
    size: float | None = None,
    width: int = 2,
) -> ImageLike:
    """Draw the head's axes (red x, green up, blue face direction) at ``center`` (default: the
    image centre) with length ``size`` (default: a third of the smaller image side). The
    axis pointing away from the camera is drawn first so nearer axes stay on top."""
    pil = _to_pil(image)
    center, size = _frame(pil, center, size)
    tips = axes_endpoints(rotation, center, size)
    depth = _axis_directions(rotation)[:, 2]
    draw = ImageDraw.Draw(pil)
    for i in np.argsort(-depth):  # farthest first
        draw.line([tuple(center), tuple(tips[i])], fill=AXIS_COLORS[i], width=width)
    return _like(pil, image)


def draw_cube(
    image: ImageLike,
    rotation: Tensor | np.ndarray,
    center: Sequence[float] | None = None,
    size: float | None = None,
    width: int = 2,
) -> ImageLike:
    """Draw a pose cube around the head: the face side in blue, the back in red, the
    connecting edges in green."""
    pil = _to_pil(image)
    center, size = _frame(pil, center, size)
    r = _rotation_array(rotation)
    half = 0.5 * size
    signs = np.array([[x, y, z] for z in (-1, 1) for y in (-1, 1) for x in (-1, 1)], dtype=np.float64)
    corners = center[None, :] + half * (signs @ r.T)[:, :2]
    # z = -1 corners are on the face side (head z points into the head).
    front = [0, 1, 3, 2]
    back = [4, 5, 7, 6]
    draw = ImageDraw.Draw(pil)
    for a, b in zip(back, back[1:] + back[:1], strict=True):
        draw.line([tuple(corners[a]), tuple(corners[b])], fill=AXIS_COLORS[0], width=width)
    for a, b in zip(front, back, strict=True):
        draw.line([tuple(corners[a]), tuple(corners[b])], fill=AXIS_COLORS[1], width=width)
    for a, b in zip(front, front[1:] + front[:1], strict=True):
        draw.line([tuple(corners[a]), tuple(corners[b])], fill=AXIS_COLORS[2], width=width)
    return _like(pil, image)
