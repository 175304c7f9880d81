"""Random rotations: uniform on SO(3) or within Euler ranges of a named convention."""

from __future__ import annotations

import math

import roma
import torch
from torch import Tensor

from hpelib.rotation.conventions import euler_to_rotation

__all__ = ["random_rotation", "sample_rotation_euler_range"]


def random_rotation(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(n, 3, 3)`` rotations uniform on SO(3) (Haar measure), reproducible with ``generator``."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64, device=device)
    return roma.unitquat_to_rotmat(q / q.norm(dim=-1, keepdim=True)).to(dtype)


def sample_rotation_euler_range(
    n: int,
    ranges_deg: tuple[float, float, float],
    convention: str = "300wlp",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``(n, 3, 3)`` rotations with each Euler angle uniform in ``[-range, range]`` degrees,
    angles in the order of ``euler_names(convention)`` (e.g. pitch, yaw, roll for 300W-LP)."""
    half = torch.tensor(ranges_deg, dtype=torch.float64, device=device) * (math.pi / 180)
    u = torch.rand(n, 3, generator=generator, dtype=torch.float64, device=device)
    return euler_to_rotation((2 * u - 1) * half, convention).to(dtype)
