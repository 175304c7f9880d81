"""The 6D/geodesic baseline (Hempel et al., 6DRepNet) as an hpelib method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from hpelib.data.sample import mask_key
from hpelib.methods.base import HPEModule
from hpelib.methods.sixd.model import SixDNet
from hpelib.nn import get_rotation_loss

__all__ = ["SixD"]


class SixD(HPEModule):
    """Backbone -> Linear(6) -> Gram-Schmidt, trained with the mean geodesic loss.

    Args:
        backbone: any timm model name.
        pretrained: ImageNet weights through timm (False in quick-start configs: no network).
        checkpoint_path: local backbone weights file.
        loss: a name in :data:`hpelib.nn.ROTATION_LOSSES`: ``"geodesic"`` (6DRepNet, the
            default) or ``"chordal"`` (squared Frobenius distance, Zhou et al.'s L2 on the
            matrix; leaves the initial plateau sooner when training from scratch on
            full-range data, see docs/methods/sixd.md).
        backbone_kwargs: further timm constructor arguments of the backbone,
            e.g. ``{layers: [1, 1, 1, 1], channels: [32, 64, 128, 256]}`` for ``resnet18``
            (see :func:`hpelib.nn.create_backbone`).
        **kwargs: optimiser, scheduler and metric options of :class:`HPEModule`.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        checkpoint_path: str | Path | None = None,
        loss: str = "geodesic",
        backbone_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.loss_name = loss
        self.rotation_loss = get_rotation_loss(loss)
        self.model = SixDNet(backbone, pretrained, checkpoint_path, backbone_kwargs)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"rotation": self.model(images)}

    def compute_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self.rotation_loss(outputs["rotation"], batch["rotation"], batch.get(mask_key("rotation")))
        return loss, {f"{self.loss_name}_loss": loss}
