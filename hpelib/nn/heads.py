"""Shared output heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hpelib.rotation import rotation_from_6d

__all__ = ["SixDHead", "MLP"]


class SixDHead(nn.Module):
    """Linear layer to the 6D representation followed by Gram-Schmidt (6DRepNet).

    ``forward(features (B, F)) -> (B, 3, 3)`` rotation matrices.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 6)

    def forward(self, features: Tensor) -> Tensor:
        # Gram-Schmidt in float32 even under bf16/fp16 autocast: 8 mantissa bits would
        # put the orthonormalisation error at ~0.4 %.
        return rotation_from_6d(self.linear(features).float())


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
