"""Backbone -> Linear(9) -> the matrix Fisher parameter ``F`` (a pure ``nn.Module``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hpelib.nn import create_backbone

__all__ = ["MatrixFisherNet"]


class MatrixFisherNet(nn.Module):
    """``forward(images (B, 3, H, W)) -> F (B, 3, 3)``, the parameter of a matrix Fisher
    distribution over the head's rotation (internal convention).

    Args:
        backbone: any timm model name.
        pretrained: ImageNet weights through timm.
        backbone_weights: local backbone weights file instead of a download.
        backbone_kwargs: further timm constructor arguments (see
            ``hpelib.nn.create_backbone``).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone, num_features = create_backbone(
            backbone, pretrained, backbone_weights, **(backbone_kwargs or {})
        )
        self.head = nn.Linear(num_features, 9)

    def forward(self, images: Tensor) -> Tensor:
        # float32 even under autocast: the loss integrates over the singular values of F.
        return self.head(self.backbone(images)).float().unflatten(-1, (3, 3))
