"""Shared output heads."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from hpelib.rotation import rotation_from_6d, rotation_from_6drepnet_matrix, rotation_from_9d

__all__ = ["MLP", "ROTATION_REPRESENTATIONS", "RotationHead", "SixDHead"]


#: Raw output size and its map onto SO(3), by representation name.
ROTATION_REPRESENTATIONS: dict[str, tuple[int, Callable[[Tensor], Tensor]]] = {
    "6d": (6, rotation_from_6d),  # Gram-Schmidt (Zhou et al. 2019; 6DRepNet)
    "9d": (9, rotation_from_9d),  # SVD, symmetric orthogonalisation (Levinson et al. 2020)
    # 6DRepNet's released models: Gram-Schmidt gives the 300W-LP label matrix R6, turned
    # into hpelib's convention (hpelib.weights converts those releases).
    "6drepnet": (6, lambda raw: rotation_from_6drepnet_matrix(rotation_from_6d(raw))),
}


class RotationHead(nn.Module):
    """Linear layer to a raw rotation representation, then its map onto SO(3).

    ``forward(features (B, F)) -> (B, 3, 3)`` rotation matrices; ``forward_raw`` gives the
    raw ``(B, 6)`` or ``(B, 9)`` output before the map (for :func:`hpelib.nn.raw_mse_loss`).

    Args:
        in_features: feature size ``F``.
        representation: a name in :data:`ROTATION_REPRESENTATIONS`: ``"6d"`` (two columns,
            Gram-Schmidt) or ``"9d"`` (a 3x3 matrix row by row, SVD).
    """

    def __init__(self, in_features: int, representation: str = "6d") -> None:
        super().__init__()
        if representation not in ROTATION_REPRESENTATIONS:
            raise ValueError(
                f"unknown rotation representation {representation!r}; choose one of "
                f"{sorted(ROTATION_REPRESENTATIONS)}"
            )
        self.representation = representation
        self.linear = nn.Linear(in_features, ROTATION_REPRESENTATIONS[representation][0])

    def forward_raw(self, features: Tensor) -> Tensor:
        # float32 even under bf16/fp16 autocast: 8 mantissa bits would put the
        # orthonormalisation error at ~0.4 %.
        return self.linear(features).float()

    def to_rotation(self, raw: Tensor) -> Tensor:
        """The raw ``(B, 6)``/``(B, 9)`` output mapped onto SO(3): ``(B, 3, 3)``."""
        return ROTATION_REPRESENTATIONS[self.representation][1](raw)

    def forward(self, features: Tensor) -> Tensor:
        return self.to_rotation(self.forward_raw(features))


class SixDHead(RotationHead):
    """Linear layer to the 6D representation followed by Gram-Schmidt (6DRepNet).

    ``forward(features (B, F)) -> (B, 3, 3)``; ``forward_raw`` -> ``(B, 6)``.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__(in_features, "6d")


class MLP(nn.Module):
    """Plain MLP ``in -> hidden x depth -> out`` with ReLU, optionally with a skip connection
    that concatenates the input to the last hidden activation (CLERF's pose head)."""

    def __init__(
        self, in_features: int, hidden: int, depth: int, out_features: int, input_skip: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.input_skip = input_skip
        self.out = nn.Linear(width + (in_features if input_skip else 0), out_features)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x)
        if self.input_skip:
            h = torch.cat([h, x], dim=-1)
        return self.out(h)
