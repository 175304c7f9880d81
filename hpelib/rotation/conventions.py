"""Named conversions between hpelib's internal rotation and each dataset's / paper's labels.

**Internal convention** (the only one used inside hpelib): ``R`` maps head coordinates to
camera coordinates, camera axes = image axes (x right, y down, z into the scene); head axes
at ``R = I``: x towards image right, y towards the chin, z from the face into the head.
Euler angles only appear at the edges (reading a dataset, reporting a metric, drawing).

Relations to the reference code (checked in ``tests/rotation/test_conventions.py``):

* 300W-LP / AFLW2000 / HopeNet / 6DRepNet build ``R6 = Rz(roll) @ Ry(yaw) @ Rx(pitch)``
  from ``Pose_Para`` = [pitch, yaw, roll] (radians); ``R6.T`` is head-to-camera with
  y up and z towards the viewer. Internal ``R = T @ R6.T @ T`` with ``T = diag(1, -1, -1)``,
  i.e. ``R = Rx(-pitch) @ Ry(yaw) @ Rz(roll)``.
* OpNet quaternions (x, y, z, w) are of ``Q = T @ R6.T @ T`` — exactly the internal matrix.
* BIWI ``frame_XXXXX_pose.txt`` matrix ``R_file``: HopeNet uses ``R6 = F @ R_file.T @ F``
  with ``F = diag(-1, 1, 1)``, hence internal ``R = R_file`` (``T @ F = -I``).
* CLERF writes its generator order as ``R = R_roll @ (R_pitch @ R_yaw)``; hpelib realises it
  in the internal frame as ``R = Rz(roll) @ Rx(-pitch) @ Ry(yaw)`` so that each angle has the
  300W-LP sign to first order, and ``roll`` is exactly an in-plane image rotation
  (positive roll = head tilted clockwise in the image).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hpelib.rotation.core import (
    quaternion_from_rotation,
    rotation_from_quaternion,
    rotation_x,
    rotation_y,
    rotation_z,
    safe_norm,
)

__all__ = [
    "EULER_CONVENTIONS",
    "EulerConvention",
    "euler_to_rotation",
    "rotation_to_euler",
    "rotation_from_euler_300wlp",
    "euler_300wlp_from_rotation",
    "rotation_from_euler_clerf",
    "euler_clerf_from_rotation",
    "rotation_from_6drepnet_matrix",
    "rotation_to_6drepnet_matrix",
    "rotation_from_biwi_pose_matrix",
    "rotation_to_biwi_pose_matrix",
    "rotation_from_opnet_quaternion",
    "opnet_quaternion_from_rotation",
    "euler_names",
]

# Gimbal-lock threshold of scipy's as_euler (and of 6DRepNet's compute_euler_angles...).
_GIMBAL_EPS = 1e-6


def _frame_flip(r: Tensor) -> Tensor:
    """``T @ r @ T`` with ``T = diag(1, -1, -1)`` (y-up/z-out <-> y-down/z-in), an involution."""
    sign = torch.tensor([1.0, -1.0, -1.0], dtype=r.dtype, device=r.device)
    return r * sign[:, None] * sign[None, :]


def rotation_from_6drepnet_matrix(r6: Tensor) -> Tensor:
    """300W-LP/6DRepNet label matrix ``R6 = Rz(roll) Ry(yaw) Rx(pitch)`` ``(..., 3, 3)`` -> internal."""
    return _frame_flip(r6.transpose(-1, -2))


def rotation_to_6drepnet_matrix(r: Tensor) -> Tensor:
    """Internal ``(..., 3, 3)`` -> 6DRepNet/HopeNet label matrix ``R6`` (inverse of the above)."""
    return _frame_flip(r).transpose(-1, -2)


def rotation_from_biwi_pose_matrix(r_file: Tensor) -> Tensor:
    """BIWI ``frame_XXXXX_pose.txt`` matrix (rows as written) ``(..., 3, 3)`` -> internal.

    The file stores head-to-camera in Kinect camera axes (x right, y down, z forward), which
    is hpelib's internal frame, so this is the identity map (HopeNet's
    ``F @ R_file.T @ F`` followed by the 6DRepNet conversion gives the same matrix).
    """
    return r_file.clone()


def rotation_to_biwi_pose_matrix(r: Tensor) -> Tensor:
    """Internal ``(..., 3, 3)`` -> BIWI pose-file matrix."""
    return r.clone()


def rotation_from_opnet_quaternion(q: Tensor) -> Tensor:
    """OpNet/OpenTrack quaternion ``(..., 4)`` in (x, y, z, w) order -> internal ``(..., 3, 3)``."""
    return rotation_from_quaternion(q)


def opnet_quaternion_from_rotation(r: Tensor) -> Tensor:
    """Internal ``(..., 3, 3)`` -> OpNet quaternion (x, y, z, w) with ``w >= 0``."""
    return quaternion_from_rotation(r)


def rotation_from_euler_300wlp(pitch: Tensor, yaw: Tensor, roll: Tensor) -> Tensor:
    """300W-LP/AFLW2000 ``Pose_Para`` angles (radians, ``(...)`` each) -> internal ``(..., 3, 3)``.

    Label matrix of the references: ``R6 = Rz(roll) @ Ry(yaw) @ Rx(pitch)``.
    """
    r6 = rotation_z(roll) @ rotation_y(yaw) @ rotation_x(pitch)
    return rotation_from_6drepnet_matrix(r6)


def euler_300wlp_from_rotation(r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Internal ``(..., 3, 3)`` -> ``(pitch, yaw, roll)`` radians, the reference decomposition.

    Exactly scipy's ``Rotation.from_matrix(R6).as_euler('xyz')`` (and 6DRepNet's
    ``compute_euler_angles_from_rotation_matrices``): yaw in ``[-pi/2, pi/2]``; gimbal lock
    (``sqrt(R00^2 + R10^2) < 1e-6``) gives ``roll = 0``.
    """
    # Not roma.rotmat_to_euler("xyz", .): its quaternion-based decomposition differs from
    # this (scipy's matrix form, the references') by up to 4.6e-4 rad near gimbal lock.
    r6 = rotation_to_6drepnet_matrix(r)
    sy = safe_norm(torch.stack([r6[..., 0, 0], r6[..., 1, 0]], dim=-1))
    singular = sy < _GIMBAL_EPS
    yaw = torch.atan2(-r6[..., 2, 0], sy)
    pitch = torch.where(
        singular,
        torch.atan2(-r6[..., 1, 2], r6[..., 1, 1]),
        torch.atan2(r6[..., 2, 1], r6[..., 2, 2]),
    )
    roll = torch.where(singular, torch.zeros_like(yaw), torch.atan2(r6[..., 1, 0], r6[..., 0, 0]))
    return pitch, yaw, roll


def rotation_from_euler_clerf(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """CLERF generator order ``R = R_roll @ (R_pitch @ R_yaw)`` (radians) -> internal.

    Realised as ``Rz(roll) @ Rx(-pitch) @ Ry(yaw)``. ``roll`` is a pure in-plane image
    rotation: ``rotate_inplane(R, phi)`` changes it to ``roll - phi`` and keeps yaw/pitch.
    """
    return rotation_z(roll) @ rotation_x(-pitch) @ rotation_y(yaw)


def euler_clerf_from_rotation(r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Internal ``(..., 3, 3)`` -> CLERF ``(yaw, pitch, roll)`` radians.

    pitch in ``[-pi/2, pi/2]``, yaw and roll in ``(-pi, pi]``; yaw covers the full circle
    (a head facing away has ``|yaw| > pi/2``). At gimbal lock (pitch = +/-90 degrees) yaw is 0.
    """
    # R = Rz(a) Rx(b) Ry(c): row 2 is [-cos b sin c, sin b, cos b cos c].
    cb = safe_norm(torch.stack([r[..., 2, 0], r[..., 2, 2]], dim=-1))
    singular = cb < _GIMBAL_EPS
    b = torch.atan2(r[..., 2, 1], cb)
    c = torch.where(singular, torch.zeros_like(b), torch.atan2(-r[..., 2, 0], r[..., 2, 2]))
    a = torch.where(
        singular,
        torch.atan2(r[..., 1, 0], r[..., 0, 0]),
        torch.atan2(-r[..., 0, 1], r[..., 1, 1]),
    )
    return c, -b, a


@dataclass(frozen=True)
class EulerConvention:
    """A named Euler convention: angle names (in order) and the two conversions."""

    name: str
    names: tuple[str, str, str]
    to_rotation: Callable[[Tensor, Tensor, Tensor], Tensor]
    from_rotation: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
    description: str


_300WLP = EulerConvention(
    "300wlp",
    ("pitch", "yaw", "roll"),
    rotation_from_euler_300wlp,
    euler_300wlp_from_rotation,
    "300W-LP/AFLW2000 Pose_Para order; R6 = Rz(roll) Ry(yaw) Rx(pitch) (HopeNet, 6DRepNet, "
    "FSA-Net, OpNet, BIWI as converted by HopeNet)",
)
_CLERF = EulerConvention(
    "clerf",
    ("yaw", "pitch", "roll"),
    rotation_from_euler_clerf,
    euler_clerf_from_rotation,
    "CLERF generator order R = R_roll (R_pitch R_yaw); full-range yaw, roll = in-plane angle",
)

#: Registry of Euler conventions by name (aliases point to the same object).
EULER_CONVENTIONS: dict[str, EulerConvention] = {
    "300wlp": _300WLP,
    "aflw2000": _300WLP,
    "hopenet": _300WLP,
    "6drepnet": _300WLP,
    "opnet": _300WLP,
    "biwi": _300WLP,
    "clerf": _CLERF,
}


def _get_convention(convention: str) -> EulerConvention:
    try:
        return EULER_CONVENTIONS[convention.lower()]
    except KeyError:
        known = ", ".join(sorted(EULER_CONVENTIONS))
        raise ValueError(f"unknown Euler convention {convention!r}; known: {known}") from None


def euler_names(convention: str) -> tuple[str, str, str]:
    """Angle names, in the order used by :func:`euler_to_rotation` for ``convention``."""
    return _get_convention(convention).names


def euler_to_rotation(angles: Tensor, convention: str = "300wlp", degrees: bool = False) -> Tensor:
    """``(..., 3)`` angles in the order of ``euler_names(convention)`` -> internal ``(..., 3, 3)``."""
    conv = _get_convention(convention)
    if angles.shape[-1] != 3:
        raise ValueError(f"euler_to_rotation expects (..., 3) angles, got {tuple(angles.shape)}")
    if degrees:
        angles = angles * (math.pi / 180.0)
    return conv.to_rotation(*angles.unbind(-1))


def rotation_to_euler(r: Tensor, convention: str = "300wlp", degrees: bool = False) -> Tensor:
    """Internal ``(..., 3, 3)`` -> ``(..., 3)`` angles in the order of ``euler_names(convention)``."""
    angles = torch.stack(_get_convention(convention).from_rotation(r), dim=-1)
    return angles * (180.0 / math.pi) if degrees else angles
