"""Label transforms for image-geometry augmentation.

An image warp and its effect on the pose label must come from one object, so that a
rotated/flipped image can never get a stale label. :class:`ImageWarp` holds a batched 2D
similarity transform in pixel coordinates (x right, y down, origin at the centre of the
top-left pixel); it gives the ``(B, 2, 3)`` matrix for ``kornia.geometry.warp_affine`` and
applies the same transform to rotation labels, 2D points and boxes.

Angles are **counter-clockwise as displayed** (the usual reading of "rotate the image by
phi"), in radians. In hpelib's internal frame (x right, y down, z into the scene) a
displayed counter-clockwise rotation by ``phi`` is ``Rz(-phi)``, and a mirror image of a
head needs the head-frame reflection ``Fx = diag(-1, 1, 1)`` on the right so that the
result stays a rotation (exact for a mirror-symmetric head; CLERF eq. 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hpelib.rotation.core import rotation_z

__all__ = [
    "ImageWarp",
    "flip_across_line",
    "mirror_horizontal",
    "rotate_inplane",
    "rotation_from_image_linear",
]


def _as_tensor(x: Tensor | float, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.get_default_dtype())


def _reflection_3d(theta: Tensor) -> Tensor:
    """``(...)`` -> ``(..., 3, 3)``: reflection of image axes across the line at displayed
    angle ``theta`` (in y-down coordinates its direction is ``(cos t, -sin t)``)."""
    c2, s2 = torch.cos(2 * theta), torch.sin(2 * theta)
    one, zero = torch.ones_like(theta), torch.zeros_like(theta)
    rows = [c2, -s2, zero, -s2, -c2, zero, zero, zero, one]
    return torch.stack(rows, dim=-1).reshape(*theta.shape, 3, 3)


def _head_mirror(r: Tensor) -> Tensor:
    """``r @ diag(-1, 1, 1)``: negate the first column."""
    sign = torch.tensor([-1.0, 1.0, 1.0], dtype=r.dtype, device=r.device)
    return r * sign


def rotate_inplane(r: Tensor, phi: Tensor | float) -> Tensor:
    """Label of an image rotated counter-clockwise (as displayed) by ``phi`` radians.

    Args:
        r: ``(..., 3, 3)`` internal rotations.
        phi: ``(...)`` or scalar angle in radians.

    Returns:
        ``(..., 3, 3)``; ``geodesic_distance(rotate_inplane(r, phi), r) == |phi|`` (mod 2 pi).
    """
    phi = _as_tensor(phi, r)
    return rotation_z(-phi) @ r


def flip_across_line(r: Tensor, theta: Tensor | float) -> Tensor:
    """Label of an image reflected across the line through its centre at displayed angle
    ``theta`` (radians, counter-clockwise from +x). CLERF's ``Flip_theta @ R @ Flip_X``.

    An involution: applying it twice with the same ``theta`` gives ``r`` back.
    """
    theta = _as_tensor(theta, r)
    return _head_mirror(_reflection_3d(theta) @ r)


def mirror_horizontal(r: Tensor) -> Tensor:
    """Label of a left-right mirrored image (yaw -> -yaw, roll -> -roll): ``Fx @ r @ Fx``."""
    sign = torch.tensor([-1.0, 1.0, 1.0], dtype=r.dtype, device=r.device)
    return r * sign[:, None] * sign[None, :]


def rotation_from_image_linear(linear: Tensor, r: Tensor) -> Tensor:
    """Apply the label transform of any 2D similarity with linear part ``linear``.

    Args:
        linear: ``(..., 2, 2)`` linear part of a pixel-space similarity (rotation and/or
            reflection times a positive scale; y-down image axes).
        r: ``(..., 3, 3)`` internal rotations.

    Returns:
        ``(..., 3, 3)``: ``O3 @ r`` for a proper similarity, ``O3 @ r @ Fx`` for a reflection,
        where ``O3`` is the orthogonal part of ``linear`` extended by ``z -> z``. Scale and
        translation do not change the rotation label (weak-perspective assumption).
    """
    det = torch.linalg.det(linear)
    ortho = linear / det.abs().sqrt()[..., None, None]
    o3 = torch.zeros(*ortho.shape[:-2], 3, 3, dtype=r.dtype, device=r.device)
    o3[..., :2, :2] = ortho.to(r.dtype)
    o3[..., 2, 2] = 1.0
    out = o3 @ r
    return torch.where((det < 0)[..., None, None], _head_mirror(out), out)


@dataclass
class ImageWarp:
    """A batched 2D similarity transform of images with the matching label transforms.

    Attributes:
        matrix: ``(B, 3, 3)`` homogeneous transform from source to destination pixel
            coordinates (x right, y down, pixel centres at integer coordinates).
    """

    matrix: Tensor

    @property
    def affine(self) -> Tensor:
        """``(B, 2, 3)`` matrix for ``kornia.geometry.transform.warp_affine(..., align_corners=True)``."""
        return self.matrix[..., :2, :]

    @property
    def linear(self) -> Tensor:
        """``(B, 2, 2)`` linear part."""
        return self.matrix[..., :2, :2]

    @classmethod
    def identity(cls, batch: int, dtype: torch.dtype = torch.float32, device=None) -> ImageWarp:
        return cls(torch.eye(3, dtype=dtype, device=device).expand(batch, 3, 3).clone())

    @staticmethod
    def _about(linear: Tensor, center: Tensor) -> Tensor:
        """Homogeneous matrix of ``p -> linear (p - c) + c``. ``linear (B,2,2)``, ``center (B,2)``."""
        b = linear.shape[0]
        m = torch.zeros(b, 3, 3, dtype=linear.dtype, device=linear.device)
        m[:, :2, :2] = linear
        m[:, :2, 2] = center - (linear @ center[..., None])[..., 0]
        m[:, 2, 2] = 1.0
        return m

    @classmethod
    def rotation(cls, phi: Tensor, center: Tensor) -> ImageWarp:
        """Counter-clockwise (as displayed) rotation by ``phi (B,)`` radians about ``center (B, 2)``."""
        c, s = torch.cos(phi), torch.sin(phi)
        # Displayed CCW in y-down axes is a clockwise matrix rotation.
        linear = torch.stack([c, s, -s, c], dim=-1).reshape(-1, 2, 2)
        return cls(cls._about(linear, center.to(linear.dtype)))

    @classmethod
    def flip(cls, theta: Tensor, center: Tensor) -> ImageWarp:
        """Reflection across the line through ``center (B, 2)`` at displayed angle ``theta (B,)``."""
        linear = _reflection_3d(theta)[..., :2, :2]
        return cls(cls._about(linear, center.to(linear.dtype)))

    @classmethod
    def mirror(cls, width: Tensor | float, batch: int, dtype=torch.float32, device=None) -> ImageWarp:
        """Left-right mirror of images ``width`` pixels wide: ``x -> width - 1 - x``."""
        m = torch.eye(3, dtype=dtype, device=device).expand(batch, 3, 3).clone()
        m[:, 0, 0] = -1.0
        m[:, 0, 2] = _as_tensor(width, m) - 1.0
        return cls(m)

    @classmethod
    def scale_translate(cls, scale: Tensor, translation: Tensor, center: Tensor) -> ImageWarp:
        """Zoom by ``scale (B,)`` about ``center (B, 2)`` then shift by ``translation (B, 2)`` pixels."""
        eye = torch.eye(2, dtype=scale.dtype, device=scale.device)
        m = cls._about(scale[:, None, None] * eye, center.to(scale.dtype))
        m[:, :2, 2] += translation.to(scale.dtype)
        return cls(m)

    @classmethod
    def crop_resize(cls, boxes: Tensor, size: int | tuple[int, int]) -> ImageWarp:
        """Map the boxes ``(B, 4)`` (x0, y0, x1, y1, pixel-centre coordinates) onto an output
        image of ``size`` (h, w): box corners go to the output's corner pixel centres."""
        h, w = (size, size) if isinstance(size, int) else size
        x0, y0, x1, y1 = boxes.unbind(-1)
        sx = (w - 1) / (x1 - x0).clamp_min(1e-6)
        sy = (h - 1) / (y1 - y0).clamp_min(1e-6)
        m = torch.zeros(boxes.shape[0], 3, 3, dtype=boxes.dtype, device=boxes.device)
        m[:, 0, 0], m[:, 1, 1], m[:, 2, 2] = sx, sy, 1.0
        m[:, 0, 2], m[:, 1, 2] = -x0 * sx, -y0 * sy
        return cls(m)

    def then(self, other: ImageWarp) -> ImageWarp:
        """The warp that applies ``self`` first and ``other`` second."""
        return ImageWarp(other.matrix @ self.matrix)

    def inverse(self) -> ImageWarp:
        return ImageWarp(torch.linalg.inv(self.matrix))

    def apply_points(self, points: Tensor) -> Tensor:
        """``(B, N, 2)`` pixel coordinates -> transformed ``(B, N, 2)``."""
        m = self.matrix.to(points.dtype)
        return points @ m[:, :2, :2].transpose(-1, -2) + m[:, None, :2, 2]

    def apply_boxes(self, boxes: Tensor) -> Tensor:
        """``(B, 4)`` axis-aligned boxes (x0, y0, x1, y1) -> the boxes enclosing their warped corners."""
        x0, y0, x1, y1 = boxes.unbind(-1)
        corners = torch.stack(
            [torch.stack(c, dim=-1) for c in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))], dim=1
        )
        warped = self.apply_points(corners)
        return torch.cat([warped.amin(dim=1), warped.amax(dim=1)], dim=-1)

    def apply_rotation(self, r: Tensor) -> Tensor:
        """``(B, 3, 3)`` internal rotations -> labels of the warped images.

        Requires a similarity (uniform scale); a shear or anisotropic scale has no exact
        rotation label and raises ``ValueError``.
        """
        lin = self.linear.to(r.dtype)
        gram = lin @ lin.transpose(-1, -2)
        scale2 = 0.5 * gram.diagonal(dim1=-2, dim2=-1).sum(-1)
        off = (gram - scale2[..., None, None] * torch.eye(2, dtype=r.dtype, device=r.device)).abs()
        if bool((off > 1e-4 * scale2[..., None, None].clamp_min(1e-12)).any()):
            raise ValueError(
                "ImageWarp.apply_rotation needs a similarity transform (rotation/reflection and "
                "uniform scale); this warp has shear or anisotropic scale"
            )
        return rotation_from_image_linear(lin, r)
