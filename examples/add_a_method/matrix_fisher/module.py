"""The matrix Fisher method as an hpelib method (an ``HPEModule`` subclass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from hpelib.data.sample import mask_key
from hpelib.methods import HPEModule
from matrix_fisher.loss import matrix_fisher_nll, proper_svd
from matrix_fisher.model import MatrixFisherNet

__all__ = ["MatrixFisher"]


class MatrixFisher(HPEModule):
    """Probabilistic head pose (Mohlin et al., NeurIPS 2020): the network predicts a matrix
    Fisher distribution ``p(R) ~ exp(tr(F^T R))``, trained by its negative log-likelihood.
    The predicted rotation is the distribution's mode; its proper singular values say how
    concentrated (certain) the prediction is.

    Args:
        backbone: any timm model name.
        pretrained: ImageNet weights through timm (needs network or a cached download).
        backbone_weights: local backbone weights file instead of a download.
        backbone_kwargs: further timm constructor arguments of the backbone.
        **kwargs: optimiser, scheduler and metric options of ``HPEModule``.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # The constructor arguments go into every checkpoint: hpelib.load rebuilds the model.
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.model = MatrixFisherNet(backbone, pretrained, backbone_weights, backbone_kwargs)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``{"rotation": (B, 3, 3), "fisher": (B, 3, 3), "concentration": (B, 3)}``: the
        mode ``U V^T``, the parameter ``F`` and its proper singular values ``s``."""
        fisher = self.model(images)
        u, s, v = proper_svd(fisher.detach())  # the loss reads F; no gradient through the SVD
        return {"rotation": u @ v.transpose(-1, -2), "fisher": fisher, "concentration": s}

    def compute_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        # Samples without a rotation label (mask False) contribute nothing.
        loss = matrix_fisher_nll(outputs["fisher"], batch["rotation"], batch.get(mask_key("rotation")))
        return loss, {"nll": loss}
