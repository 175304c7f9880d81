"""6DRepNet-style model: timm backbone -> Linear(6) -> Gram-Schmidt (pure nn.Module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hpelib.nn import SixDHead, create_backbone

__all__ = ["SixDNet"]


class SixDNet(nn.Module):
    """``forward(images (B, 3, H, W)) -> (B, 3, 3)`` rotations (internal convention).

    Args:
        backbone: timm model name (6DRepNet uses ``repvgg_b1g2``).
        pretrained: load ImageNet weights through timm (needs network or cache).
        checkpoint_path: local backbone weights instead of a download.
        backbone_kwargs: further timm constructor arguments of the backbone (see
            :func:`hpelib.nn.create_backbone`).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        checkpoint_path: str | Path | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone, num_features = create_backbone(
            backbone, pretrained, checkpoint_path, **(backbone_kwargs or {})
        )
        self.head = SixDHead(num_features)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))
