"""Core SO(3) operations on batched rotation matrices.

Every function takes and returns tensors with arbitrary leading batch dimensions, works in
float32 and float64 on any device, is differentiable, and never loops over the batch.

hpelib's one internal convention (see ``hpelib.rotation.conventions``): a rotation matrix
``R`` maps head-frame coordinates to camera coordinates, with the camera frame in image axes
(x right, y down, z into the scene) and the head frame x to the subject's left (image right
for a frontal face), y towards the chin, z from the face into the head. ``R = I`` is an
upright frontal face looking at the camera.
"""

from __future__ import annotations

import math

import roma
import torch
from torch import Tensor

__all__ = [
    "angle_difference",
    "chordal_distance",
    "elementary_rotation",
    "geodesic_distance",
    "quaternion_canonical",
    "quaternion_from_rotation",
    "quaternion_multiply",
    "quaternion_conjugate",
    "rotation_from_6d",
    "rotation_from_9d",
    "rotation_from_quaternion",
    "rotation_to_6d",
    "rotation_to_9d",
    "rotation_x",
    "rotation_y",
    "rotation_z",
    "safe_norm",
    "so3_exp",
    "so3_log",
    "skew",
    "vee",
    "wrap_angle",
    "is_rotation_matrix",
]


def safe_norm(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """Euclidean norm with a finite (zero) gradient at ``x = 0``.

    ``torch.linalg.vector_norm`` has an undefined gradient at the origin; the double-``where``
    keeps both the value exact and the backward pass NaN-free there.
    """
    sq = (x * x).sum(dim=dim, keepdim=keepdim)
    positive = sq > 0
    safe_sq = torch.where(positive, sq, torch.ones_like(sq))
    return torch.where(positive, safe_sq.sqrt(), torch.zeros_like(sq))


def wrap_angle(angle: Tensor, period: float = 2 * math.pi) -> Tensor:
    """Wrap angles into ``[-period/2, period/2)``. Shape preserved."""
    half = period / 2
    return torch.remainder(angle + half, period) - half


def angle_difference(a: Tensor, b: Tensor, period: float = 2 * math.pi) -> Tensor:
    """Signed difference ``a - b`` wrapped into ``[-period/2, period/2)``.

    Use ``period=360`` for degrees. ``|angle_difference(179, -179, 360)| == 2``.
    """
    return wrap_angle(a - b, period)


def elementary_rotation(axis: str, angle: Tensor) -> Tensor:
    """Right-handed rotation by ``angle`` (radians) about a coordinate axis.

    Args:
        axis: ``"x"``, ``"y"`` or ``"z"``.
        angle: ``(...)`` angles in radians.

    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    # Not roma.euler_to_rotmat(axis, angle): it goes through a quaternion and differs by up
    # to 2.4e-7 in float32 (measured over [-pi, pi]), which would change rendered data.
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == "x":
        rows = [one, zero, zero, zero, c, -s, zero, s, c]
    elif axis == "y":
        rows = [c, zero, s, zero, one, zero, -s, zero, c]
    elif axis == "z":
        rows = [c, -s, zero, s, c, zero, zero, zero, one]
    else:
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    return torch.stack(rows, dim=-1).reshape(*angle.shape, 3, 3)


def rotation_x(angle: Tensor) -> Tensor:
    """``(...)`` radians -> ``(..., 3, 3)`` rotation about x."""
    return elementary_rotation("x", angle)


def rotation_y(angle: Tensor) -> Tensor:
    """``(...)`` radians -> ``(..., 3, 3)`` rotation about y."""
    return elementary_rotation("y", angle)


def rotation_z(angle: Tensor) -> Tensor:
    """``(...)`` radians -> ``(..., 3, 3)`` rotation about z."""
    return elementary_rotation("z", angle)


def skew(v: Tensor) -> Tensor:
    """``(..., 3)`` vector -> ``(..., 3, 3)`` skew-symmetric (hat) matrix, ``skew(a) b = a x b``."""
    # roma 1.8 has no hat/vee maps (kornia's may not be imported here).
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*v.shape[:-1], 3, 3)


def vee(m: Tensor) -> Tensor:
    """``(..., 3, 3)`` -> ``(..., 3)``: the vector of the skew-symmetric part ``(M - M^T) / 2``."""
    return 0.5 * torch.stack(
        [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]],
        dim=-1,
    )


def geodesic_distance(r1: Tensor, r2: Tensor) -> Tensor:
    """Angle in radians, in ``[0, pi]``, of the relative rotation ``r1 @ r2^T``.

    Computed as ``atan2(|vee(M)|, (tr M - 1) / 2)``, ``M = r1 @ r2^T``. Unlike the usual
    ``acos((tr M - 1) / 2)`` it is accurate near 0 and near 180 degrees, returns exactly 0 for
    equal inputs, and has finite gradients everywhere (zero at exactly 0 and exactly 180
    degrees, where the distance is not differentiable).

    Args:
        r1, r2: ``(..., 3, 3)`` rotation matrices (broadcastable).

    Returns:
        ``(...)`` angles in radians.
    """
    # Not roma.rotmat_geodesic_distance (2 asin(|R1 - R2| / 2 sqrt 2)): in float32 its
    # gradient at 180 degrees measured 1.4e3 (here: finite), and asin loses precision there.
    m = r1 @ r2.transpose(-1, -2)
    cos = 0.5 * (m.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0)
    sin = safe_norm(vee(m))
    return torch.atan2(sin, cos)


def chordal_distance(r1: Tensor, r2: Tensor) -> Tensor:
    """Frobenius norm ``||r1 - r2||_F`` of ``(..., 3, 3)`` matrices (the chordal metric).

    For rotations it equals ``2 * sqrt(2) * sin(theta / 2)`` of the geodesic angle ``theta``
    (:func:`geodesic_distance`): the same ordering, but its square is smooth everywhere, which
    makes it the L2 regression loss on rotation matrices (see
    :func:`hpelib.nn.chordal_loss`). Finite (zero) gradient at ``r1 = r2``.

    Args:
        r1, r2: ``(..., 3, 3)`` matrices (broadcastable).

    Returns:
        ``(...)`` distances, in ``[0, 2 * sqrt(2)]`` for rotations.
    """
    return safe_norm((r1 - r2).flatten(-2), dim=-1)


def rotation_from_6d(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Gram-Schmidt map of the 6D representation (Zhou et al.; 6DRepNet column convention).

    ``x[..., :3]`` becomes the first column and the second column is ``x[..., 3:]`` made
    orthogonal to it; the third is their cross product. The same rotation as 6DRepNet's
    ``compute_rotation_matrix_from_ortho6d`` (``c0 = a1/|a1|``, ``c2 = c0 x a2`` normalised,
    ``c1 = c2 x c0``), computed in that cross-product form plus one re-orthogonalisation of
    ``c2`` against ``c0``: when the two input vectors are nearly parallel, the rounding of
    ``c0 x a2`` leaves ``c2`` slightly off-perpendicular (about ``eps_float / angle``); the
    correction ``c2 - (c2 . c0) c0`` removes it. In float32 at 1e-3 rad between the vectors
    ``max |R^T R - I|`` is about 5e-7 (6DRepNet's form: about 2e-5; subtracting projections,
    as ``roma.special_gramschmidt`` does: about 3e-4). In exact arithmetic the correction is
    zero and so is its effect on the gradient.

    Args:
        x: ``(..., 6)``.
        eps: floor of the norms divided by, so that a degenerate output (a zero or collinear
            vector, which a network can emit) gives finite values and gradients instead of
            NaN; such an input has no well-defined rotation either way.

    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    if x.shape[-1] != 6:
        raise ValueError(f"rotation_from_6d expects (..., 6), got {tuple(x.shape)}")
    a1, a2 = x[..., :3], x[..., 3:]
    c0 = a1 / safe_norm(a1, keepdim=True).clamp_min(eps)
    c2 = torch.linalg.cross(c0, a2, dim=-1)
    c2 = c2 / safe_norm(c2, keepdim=True).clamp_min(eps)
    # Re-orthogonalise against c0: (c2 . c0) is only rounding error, so this is stable.
    c2 = c2 - (c2 * c0).sum(dim=-1, keepdim=True) * c0
    c2 = c2 / safe_norm(c2, keepdim=True).clamp_min(eps)
    c1 = torch.linalg.cross(c2, c0, dim=-1)
    return torch.stack([c0, c1, c2], dim=-1)


def rotation_to_6d(r: Tensor) -> Tensor:
    """``(..., 3, 3)`` -> ``(..., 6)``: first column then second column (inverse of
    :func:`rotation_from_6d` on rotations)."""
    return torch.cat([r[..., :, 0], r[..., :, 1]], dim=-1)


def rotation_from_9d(x: Tensor) -> Tensor:
    """Symmetric orthogonalisation of the 9D representation: the rotation nearest (in the
    Frobenius norm) to the 3x3 matrix ``x`` read row by row (Levinson et al., NeurIPS 2020).

    roma's ``special_procrustes`` (an SVD with the last singular vector's sign set so that
    ``det = +1``). Unlike Gram-Schmidt it treats the three columns alike; its gradient is
    damped where the nearest rotation is not unique (two singular values summing to 0).

    Args:
        x: ``(..., 9)``.

    Returns:
        ``(..., 3, 3)`` rotation matrices.
    """
    if x.shape[-1] != 9:
        raise ValueError(f"rotation_from_9d expects (..., 9), got {tuple(x.shape)}")
    return roma.special_procrustes(x.unflatten(-1, (3, 3)))


def rotation_to_9d(r: Tensor) -> Tensor:
    """``(..., 3, 3)`` -> ``(..., 9)``: the matrix row by row (inverse of
    :func:`rotation_from_9d` on rotations)."""
    return r.flatten(-2)


def quaternion_canonical(q: Tensor) -> Tensor:
    """Pick the representative with ``w >= 0`` of the unit quaternion ``(..., 4)`` (x, y, z, w)."""
    sign = torch.where(q[..., 3:] < 0, -torch.ones_like(q[..., 3:]), torch.ones_like(q[..., 3:]))
    return q * sign


def rotation_from_quaternion(q: Tensor) -> Tensor:
    """Unit quaternion ``(..., 4)`` in **(x, y, z, w)** order -> ``(..., 3, 3)``.

    The input is normalised first, so a non-unit network output is accepted.
    """
    return roma.unitquat_to_rotmat(q / safe_norm(q, keepdim=True).clamp_min(1e-12))


def quaternion_from_rotation(r: Tensor) -> Tensor:
    """``(..., 3, 3)`` -> unit quaternion ``(..., 4)`` in **(x, y, z, w)** order, ``w >= 0``."""
    return quaternion_canonical(roma.rotmat_to_unitquat(r))


def quaternion_multiply(q1: Tensor, q2: Tensor) -> Tensor:
    """Hamilton product of ``(..., 4)`` quaternions in (x, y, z, w) order; matches
    ``rotation_from_quaternion(q1) @ rotation_from_quaternion(q2)``."""
    return roma.quat_product(q1, q2)


def quaternion_conjugate(q: Tensor) -> Tensor:
    """Conjugate (inverse for unit quaternions), (x, y, z, w) order."""
    return roma.quat_conjugation(q)


def so3_exp(rotvec: Tensor) -> Tensor:
    """Exponential map: rotation vector (axis * angle, radians) ``(..., 3)`` -> ``(..., 3, 3)``."""
    return roma.rotvec_to_rotmat(rotvec)


def so3_log(r: Tensor) -> Tensor:
    """Logarithm map: ``(..., 3, 3)`` -> rotation vector ``(..., 3)`` with angle in ``[0, pi]``."""
    return roma.rotmat_to_rotvec(r)


def is_rotation_matrix(r: Tensor, atol: float = 1e-4) -> Tensor:
    """``(..., 3, 3)`` -> ``(...)`` bool: orthonormal with determinant +1 within ``atol``."""
    # Not roma.is_rotation_matrix: it answers one bool for the whole batch.
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    ortho = (r @ r.transpose(-1, -2) - eye).abs().amax(dim=(-1, -2)) <= atol
    det = (torch.linalg.det(r) - 1).abs() <= atol
    return ortho & det
