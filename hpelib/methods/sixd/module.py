"""The 6D/geodesic baseline (Hempel et al., 6DRepNet) as an hpelib method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from hpelib.data.sample import mask_key
from hpelib.methods.base import HPEModule, renamed_backbone_weights
from hpelib.methods.sixd.model import SixDNet
from hpelib.nn import ROTATION_LOSSES, raw_mse_loss

__all__ = ["SIXD_LOSSES", "SixD"]

# Loss name -> (the output it reads, the loss): the rotation losses read the orthonormalised
# matrix, raw_mse the head's output before it.
_LOSSES = {
    **{name: ("rotation", fn) for name, fn in ROTATION_LOSSES.items()},
    "raw_mse": ("rotation_raw", raw_mse_loss),
}

#: Loss names of :class:`SixD`.
SIXD_LOSSES: tuple[str, ...] = tuple(sorted(_LOSSES))


class SixD(HPEModule):
    """Backbone -> Linear(6) -> Gram-Schmidt, trained with the mean geodesic loss.

    Args:
        backbone: any timm model name.
        pretrained: ImageNet weights through timm (False in quick-start configs: no network).
        backbone_weights: local backbone weights file (instead of timm's download).
        loss: one of :data:`SIXD_LOSSES`: ``"geodesic"`` (6DRepNet, the default),
            ``"chordal"`` (squared Frobenius distance, Zhou et al.'s L2 on the matrix), both
            on the orthonormalised rotation, or ``"raw_mse"``
            (:func:`hpelib.nn.raw_mse_loss`: squared error of the raw output against the
            label, Gram-Schmidt/SVD only to read out the rotation; from scratch on
            full-range data it learns without the initial ~120-degree plateau of the other
            two, see docs/methods/sixd.md).
        backbone_kwargs: further timm constructor arguments of the backbone,
            e.g. ``{layers: [1, 1, 1, 1], channels: [32, 64, 128, 256]}`` for ``resnet18``
            (see :func:`hpelib.nn.create_backbone`).
        representation: ``"6d"`` (6DRepNet's, the default: two columns, Gram-Schmidt) or
            ``"9d"`` (a 3x3 matrix, symmetric orthogonalisation by SVD; Levinson et al. 2020),
            see :class:`hpelib.nn.RotationHead`. The method keeps 6DRepNet's name either way.
        checkpoint_path: deprecated name of ``backbone_weights``.
        **kwargs: optimiser, scheduler and metric options of :class:`HPEModule`.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        loss: str = "geodesic",
        backbone_kwargs: dict[str, Any] | None = None,
        representation: str = "6d",
        checkpoint_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        backbone_weights = renamed_backbone_weights(backbone_weights, checkpoint_path, "SixD")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "checkpoint_path"])
        if loss not in _LOSSES:
            raise ValueError(f"unknown SixD loss {loss!r}; choose one of {list(SIXD_LOSSES)}")
        if loss == "raw_mse" and representation not in ("6d", "9d"):
            # raw_mse compares the raw output with the label's 6D/9D form in hpelib's frame.
            raise ValueError(
                f"SixD loss 'raw_mse' needs representation '6d' or '9d', not {representation!r}"
            )
        self.loss_name = loss
        self.loss_input, self.rotation_loss = _LOSSES[loss]
        self.model = SixDNet(backbone, pretrained, backbone_weights, backbone_kwargs, representation)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``{"rotation": (B, 3, 3), "rotation_raw": (B, 6 or 9)}``: the rotation, and the
        head's output before Gram-Schmidt/SVD."""
        raw = self.model.forward_raw(images)
        return {"rotation": self.model.head.to_rotation(raw), "rotation_raw": raw}

    def training_forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if self.loss_input == "rotation_raw":
            # raw_mse needs no rotation: the training step skips Gram-Schmidt/SVD.
            return {"rotation_raw": self.model.forward_raw(batch["image"])}
        return self(batch["image"])

    def compute_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        loss = self.rotation_loss(
            outputs[self.loss_input], batch["rotation"], batch.get(mask_key("rotation"))
        )
        return loss, {f"{self.loss_name}_loss": loss}
