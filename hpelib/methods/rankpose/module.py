"""RankPose (Dai et al., 2020) as an hpelib method: Siamese rank supervision + bounded output."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hpelib.data.pairs import set_pairs_epoch
from hpelib.data.sample import mask_key
from hpelib.methods.base import HPEModule, renamed_backbone_weights
from hpelib.methods.rankpose.loss import MSE_FORMS, rankpose_loss
from hpelib.methods.rankpose.model import RankPoseNet
from hpelib.rotation import euler_names, euler_to_rotation, rotation_to_euler

__all__ = ["RankPose"]

_LOSS_UNITS = {"rad": 1.0, "deg": 180.0 / math.pi}


class RankPose(HPEModule):
    """Backbone -> bounded Euler output, trained on same-identity pairs with
    ``L = mse_weight * L_MSE + ranking_weight * L_ranking`` (1 : 1 by default).

    Training batches carry a nested sub-batch ``batch[partner_key]`` (the second image of each
    pair, same identity; see :class:`hpelib.data.pairs.IdentityPairs`); both images go through
    the one backbone (shared weights) in a single forward pass. Batches without it (validation,
    test, or a plain dataset) are trained with ``mse_weight * L_MSE`` only.

    Args:
        backbone: any timm model name (released code: ``resnet50``).
        pretrained: ImageNet weights through timm (False in quick-start configs: no network).
        backbone_weights: local backbone weights file (instead of timm's download).
        output_layer: ``"arccos"`` (default: the paper's final model, Ranking + MSE +
            Arccos), ``"cosine"`` or ``"linear"``.
        alpha: cosine-output scale in radians: ``pi/2`` (default, the +-90-degree range) or
            ``pi`` (released code, 180 degrees).
        linear_bias: bias of the linear output layer.
        drop_rate: dropout on the pooled backbone feature.
        mse_weight, ranking_weight: weights of ``L_MSE`` and ``L_ranking`` (1 and 1, as the
            released code; ``ranking_weight: 0`` is MSE only, the ablations' baseline).
        mse_form: ``"per_branch"`` (default: ``MSE(p1, y1) + MSE(p2, y2)``, each averaged
            over pairs and angles, as the released code) or ``"summed_angles"`` (summed over
            angles, averaged over both branches' images; with weights ``beta, 1 - beta`` the
            form of the docs' longer-training table), see
            :func:`~hpelib.methods.rankpose.rankpose_loss`.
        margin: ranking hinge margin (in ``loss_unit``); 0 in the released code.
        rank_absolute: rank ``|p|`` like the released code instead of ``p`` (the paper's
            ``L_ranking``).
        tie_tolerance: label differences at most this (in ``loss_unit``) count as ties.
        loss_unit: ``"rad"`` (default) or ``"deg"`` (released code: MSE and ranking on
            degrees, which scales the MSE by ~3283 and the hinge by ~57).
        partner_key: batch key of the pair's second image.
        backbone_kwargs: further timm constructor arguments of the backbone (see
            :func:`hpelib.nn.create_backbone`).
        beta: deprecated, read only so that checkpoints of older versions load: the loss
            ``beta * L_MSE + (1 - beta) * L_ranking`` they were trained with, i.e.
            ``mse_form="summed_angles"``, ``mse_weight=beta``, ``ranking_weight=1 - beta``
            (a ``DeprecationWarning``; those three are what is saved).
        checkpoint_path: deprecated name of ``backbone_weights``.
        **kwargs: optimiser, scheduler and metric options of :class:`HPEModule`
            (``euler_convention`` sets the Euler angles the network outputs, ``"300wlp"``:
            pitch, yaw, roll).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        output_layer: str = "arccos",
        alpha: float = math.pi / 2,
        linear_bias: bool = True,
        drop_rate: float = 0.0,
        mse_weight: float = 1.0,
        ranking_weight: float = 1.0,
        mse_form: str = "per_branch",
        margin: float = 0.0,
        rank_absolute: bool = False,
        tie_tolerance: float = 0.0,
        loss_unit: str = "rad",
        partner_key: str = "partner",
        backbone_kwargs: dict[str, Any] | None = None,
        beta: float | None = None,
        checkpoint_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        backbone_weights = renamed_backbone_weights(backbone_weights, checkpoint_path, "RankPose")
        if beta is not None:
            # Checkpoints saved before mse_weight/ranking_weight stored the loss as
            # beta * L_MSE(summed over angles) + (1 - beta) * L_ranking: rebuild that loss.
            if not 0.0 <= beta <= 1.0:
                raise ValueError(f"beta must be in [0, 1], got {beta}")
            warnings.warn(
                f"RankPose(beta={beta}) is the loss of older hpelib versions; it is read as "
                f"mse_form='summed_angles', mse_weight={beta}, ranking_weight={1.0 - beta}. "
                "Pass those three instead.",
                DeprecationWarning,
                stacklevel=2,
            )
            mse_form, mse_weight, ranking_weight = "summed_angles", beta, 1.0 - beta
        if mse_weight < 0 or ranking_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0, got mse_weight={mse_weight}, ranking_weight={ranking_weight}"
            )
        if mse_form not in MSE_FORMS:
            raise ValueError(f"mse_form must be one of {MSE_FORMS}, got {mse_form!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if loss_unit not in _LOSS_UNITS:
            raise ValueError(f"loss_unit must be one of {sorted(_LOSS_UNITS)}, got {loss_unit!r}")
        euler_names(self.euler_convention)  # a clear error for an unknown convention, now
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "beta", "checkpoint_path"])
        if beta is not None:  # saved as the explicit three, so the checkpoint loads without beta
            self.hparams.update(mse_form=mse_form, mse_weight=mse_weight, ranking_weight=ranking_weight)
        self.model = RankPoseNet(
            backbone,
            pretrained,
            backbone_weights,
            output_layer,
            alpha,
            linear_bias,
            drop_rate,
            backbone_kwargs,
        )
        self.mse_weight = mse_weight
        self.ranking_weight = ranking_weight
        self.mse_form = mse_form
        # The network regresses Euler angles: the per-angle metrics score them as predicted
        # (the paper's MAE), not a re-decomposition of the rotation built from them, which
        # differs when an unbounded (linear) output leaves |middle angle| <= 90 degrees.
        self.euler_output_convention = self.euler_convention
        self.margin = margin
        self.rank_absolute = rank_absolute
        self.tie_tolerance = tie_tolerance
        self.loss_scale = _LOSS_UNITS[loss_unit]
        self.partner_key = partner_key

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``(B, 3, H, W) ->`` ``euler`` (B, 3) radians in ``euler_names(euler_convention)``
        order, the same in degrees as ``euler_deg`` (scored directly by the per-angle
        metrics, see ``euler_output_convention``) and the matching ``rotation`` (B, 3, 3)."""
        euler = self.model(images)
        return {
            "euler": euler,
            "euler_deg": euler * (180.0 / math.pi),  # = rad2deg, which ONNX cannot export
            "rotation": euler_to_rotation(euler, self.euler_convention),
        }

    def training_forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Both images of every pair through the shared backbone in one pass.

        One concatenated pass means BatchNorm statistics are taken over both halves together
        (the released code runs the halves separately; the weights are shared either way).
        """
        partner = batch.get(self.partner_key)
        if not isinstance(partner, dict):
            return self(batch["image"])
        b = batch["image"].shape[0]
        out = self(torch.cat([batch["image"], partner["image"]]))
        return {
            "euler": out["euler"][:b],
            "rotation": out["rotation"][:b],
            "partner_euler": out["euler"][b:],
            "partner_rotation": out["rotation"][b:],
        }

    # ------------------------------------------------------------------ loss
    def _targets(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        angles = rotation_to_euler(batch["rotation"], self.euler_convention)
        return angles, batch.get(mask_key("rotation"))

    def compute_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        s = self.loss_scale
        target1, mask1 = self._targets(batch)
        pred2 = target2 = mask2 = None
        partner = batch.get(self.partner_key)
        if "partner_euler" in outputs and isinstance(partner, dict):
            target2, mask2 = self._targets(partner)
            pred2, target2 = outputs["partner_euler"] * s, target2 * s
        total, mse, rank = rankpose_loss(
            outputs["euler"] * s,
            target1 * s,
            pred2,
            target2,
            mask1,
            mask2,
            mse_weight=self.mse_weight,
            ranking_weight=self.ranking_weight,
            mse_form=self.mse_form,
            margin=self.margin,
            absolute=self.rank_absolute,
            tie_tolerance=self.tie_tolerance,
        )
        parts = {"mse": mse}
        if rank is not None:
            parts["ranking"] = rank
        return total, parts

    # ------------------------------------------------------------------ pairs
    def on_train_epoch_start(self) -> None:
        # Pairs drawn with dataset[i] depend on the dataset's epoch (hpelib.data.pairs).
        set_pairs_epoch(self.trainer.train_dataloader, self.current_epoch)
