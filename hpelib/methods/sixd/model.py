"""6DRepNet-style model: timm backbone -> Linear(6) -> Gram-Schmidt, or Linear(9) -> SVD
(pure nn.Module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hpelib.nn import RotationHead, create_backbone

__all__ = ["SixDNet"]


class SixDNet(nn.Module):
    """``forward(images (B, 3, H, W)) -> (B, 3, 3)`` rotations (internal convention);
    ``forward_raw`` gives the raw output before it is mapped onto SO(3).

    Args:
        backbone: timm model name (6DRepNet uses ``repvgg_b1g2``).
        pretrained: load ImageNet weights through timm (needs network or cache).
        backbone_weights: local backbone weights file instead of a download.
        backbone_kwargs: further timm constructor arguments of the backbone (see
            :func:`hpelib.nn.create_backbone`).
        representation: ``"6d"`` (6DRepNet: two columns, Gram-Schmidt) or ``"9d"`` (a 3x3
            matrix, SVD; Levinson et al. 2020), see :class:`hpelib.nn.RotationHead`.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        representation: str = "6d",
    ) -> None:
        super().__init__()
        self.backbone, num_features = create_backbone(
            backbone, pretrained, backbone_weights, **(backbone_kwargs or {})
        )
        self.head = RotationHead(num_features, representation)

    def forward_raw(self, images: Tensor) -> Tensor:
        """``(B, 6)`` or ``(B, 9)``: the head's output before Gram-Schmidt/SVD."""
        return self.head.forward_raw(self.backbone(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))
