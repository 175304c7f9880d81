"""LEC-HPE (Celestino et al.): binned Euler-angle regression with latent embedding
clustering for occlusion-robust head pose estimation, as an hpelib method.

Two stages, one run (with :class:`hpelib.callbacks.StageSwitch` and
:class:`hpelib.callbacks.KMeansCentroidInit`) or two runs (``stage: 2`` plus
``init_weights`` pointing at the stage-1 checkpoint):

1. ``L = sum_angles L_angle`` on clean faces only: the datamodule's
   :class:`~hpelib.data.transforms.RandomOcclusion` draws nothing in stage 1
   (``stage1_occlusion="none"``), and samples the dataset itself flags ``occluded`` are left
   out of the loss;
2. centroids initialised by k-means on the embeddings of the training set, then
   ``L = sum_angles L_angle + beta * L_cluster`` on all samples, occluded ones included.

The stage and whether the centroids were initialised are buffers, so they travel with every
checkpoint and a run resumed mid-stage continues in the right stage without re-running
k-means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hpelib.callbacks.stages import enable_unused_parameter_detection
from hpelib.checkpoint_io import read_checkpoint
from hpelib.data.sample import mask_key
from hpelib.data.transforms.occlusion import RandomOcclusion
from hpelib.methods.base import HPEModule, renamed_backbone_weights
from hpelib.methods.lechpe.loss import (
    EXPECTATION_FORMS,
    KL_REDUCTIONS,
    angle_loss,
    angle_to_bin,
    cluster_kl_loss,
    expected_angle,
    soft_assignment,
    target_distribution,
)
from hpelib.methods.lechpe.model import LECHPENet
from hpelib.metrics.pose import same_euler_convention
from hpelib.rotation import euler_to_rotation, rotation_to_euler

__all__ = ["LECHPE", "OUT_OF_RANGE_POLICIES", "STAGE1_OCCLUSION", "STAGES"]

#: How labels outside the bin range are handled: drop them from the angle losses, or raise.
OUT_OF_RANGE_POLICIES: tuple[str, ...] = ("mask", "error")
#: The training stages of LEC-HPE.
STAGES: tuple[int, ...] = (1, 2)
#: Training-time occlusion in stage 1: ``"none"`` (the paper: stage 1 sees clean faces only,
#: the occlusion augmentation draws from stage 2 on) or ``"masked"`` (occluders drawn in both
#: stages, occluded samples left out of the stage-1 loss: fewer clean samples per batch).
STAGE1_OCCLUSION: tuple[str, ...] = ("none", "masked")

# The binned branches follow the 300W-LP Euler angles (pitch, yaw, roll), like HopeNet.
_CONVENTION = "300wlp"


def _batch_mask(
    batch: dict[str, Any], key: str, default: bool, size: int, device: torch.device
) -> Tensor:
    """``batch[key]`` as a bool ``(B,)`` where its ``has_<key>`` mask is set, else ``default``."""
    if key not in batch:
        return torch.full((size,), default, dtype=torch.bool, device=device)
    value = batch[key].to(device).bool()
    has = batch.get(mask_key(key))
    if has is None:
        return value
    return torch.where(has.to(device).bool(), value, torch.full_like(value, default))


class LECHPE(HPEModule):
    """LEC-HPE: backbone -> latent embedding -> 3 x (66-bin classifier + expectation), with a
    DEC clustering loss on the embedding in stage 2.

    Args:
        backbone: any timm model name (the paper: ``resnet50``).
        pretrained: ImageNet weights through timm (False in quick-start configs: no network).
        backbone_weights: local backbone weights file (instead of timm's download).
        embedding_dim: optional linear projection size of the latent embedding (None: the
            pooled backbone features, as in the paper).
        num_bins, bin_width, angle_min: the bins (66 bins of 3 degrees from -99).
        expectation: ``"centered"`` (paper: ``r * sum S_i (i - (1 + C)/2)``) or
            ``"left_edge"`` (HopeNet's released ``3 * sum S_i i - 99``).
        alpha: weight of the MSE term, ``L_angle = L_class + alpha * L_reg`` (1).
        beta: weight of ``L_cluster`` in stage 2 (100, with ``kl_reduction="sum"``).
        kl_reduction: ``"sum"`` (the paper's ``KL(P || Q) = sum_i sum_j``, summed over the
            samples of the per-device batch) or ``"mean"`` (averaged over the samples, so
            ``beta`` does not depend on the batch size; ``beta`` under ``"mean"`` equals
            ``beta / B`` under ``"sum"`` for a batch of ``B``).
        stage1_occlusion: ``"none"`` (the paper: every
            :class:`~hpelib.data.transforms.RandomOcclusion` in the datamodule's training
            augmentation is switched off in stage 1, so stage-1 batches hold clean faces
            only) or ``"masked"`` (occluders drawn in both stages, occluded samples left out
            of the stage-1 loss, as hpelib did before; kept for runs that must match those).
        num_clusters: number of centroids ``K`` (10).
        dof: Student's t degrees of freedom of the soft assignment (1).
        target_update_interval: refresh of DEC's target distribution ``P``: 1 (default)
            computes ``P`` from each batch's own (detached) ``Q``; ``N > 1`` computes it
            against a copy of the centroids refreshed every ``N`` training steps (DEC's
            periodic target, without a full pass over the data).
        out_of_range: labels whose Euler angles fall outside the bins: ``"mask"`` (the
            sample is left out of the angle losses, still used by the clustering loss) or
            ``"error"`` (raise ``ValueError``).
        stage: the stage to start in (1 or 2); :class:`~hpelib.callbacks.StageSwitch`
            overrides it per epoch.
        init_weights: a Lightning checkpoint (or state dict file) whose weights initialise
            the model, for stage 2 as a separate run; the configured ``stage`` is kept.
            Init-only: loading a LEC-HPE checkpoint does not read it again.
        backbone_kwargs: further timm constructor arguments of the backbone (see
            :func:`hpelib.nn.create_backbone`).
        checkpoint_path: deprecated name of ``backbone_weights``.
        **kwargs: optimiser, scheduler and metric options of :class:`HPEModule`.
    """

    #: ``forward``'s ``"euler_deg"`` (the binned branches' angles) are in this convention,
    #: so the per-angle metrics score them directly (HopeNet protocol), see :class:`HPEModule`.
    euler_output_convention: str | None = _CONVENTION

    INIT_ONLY_HPARAMS = {**HPEModule.INIT_ONLY_HPARAMS, "init_weights": None}

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        embedding_dim: int | None = None,
        num_bins: int = 66,
        bin_width: float = 3.0,
        angle_min: float = -99.0,
        expectation: str = "centered",
        alpha: float = 1.0,
        beta: float = 100.0,
        kl_reduction: str = "sum",
        stage1_occlusion: str = "none",
        num_clusters: int = 10,
        dof: float = 1.0,
        target_update_interval: int = 1,
        out_of_range: str = "mask",
        stage: int = 1,
        init_weights: str | Path | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        backbone_weights = renamed_backbone_weights(backbone_weights, checkpoint_path, "LECHPE")
        if expectation not in EXPECTATION_FORMS:
            raise ValueError(f"expectation={expectation!r} is not one of {EXPECTATION_FORMS}")
        if out_of_range not in OUT_OF_RANGE_POLICIES:
            raise ValueError(f"out_of_range={out_of_range!r} is not one of {OUT_OF_RANGE_POLICIES}")
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r} is not one of {STAGES}")
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"kl_reduction={kl_reduction!r} is not one of {KL_REDUCTIONS}")
        if stage1_occlusion not in STAGE1_OCCLUSION:
            raise ValueError(
                f"stage1_occlusion={stage1_occlusion!r} is not one of {STAGE1_OCCLUSION}"
            )
        if target_update_interval < 1:
            raise ValueError(f"target_update_interval={target_update_interval} must be >= 1")
        if bin_width <= 0:
            raise ValueError(f"bin_width={bin_width} must be > 0")
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha={alpha} and beta={beta} must be >= 0")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "checkpoint_path"])
        self.model = LECHPENet(
            backbone,
            pretrained,
            backbone_weights,
            embedding_dim,
            num_bins,
            num_clusters,
            dof,
            backbone_kwargs,
        )
        self.bin_width, self.angle_min = float(bin_width), float(angle_min)
        self.expectation = expectation
        self.alpha, self.beta = float(alpha), float(beta)
        self.kl_reduction, self.stage1_occlusion = kl_reduction, stage1_occlusion
        # Configured probability of each gated RandomOcclusion, by id() (a plain dict keeps
        # the module picklable); emptied when the fit ends.
        self._occlusion_p: dict[int, float] = {}
        self.target_update_interval = int(target_update_interval)
        self.out_of_range = out_of_range
        # Buffers, not attributes: they are saved in (and restored from) every checkpoint.
        self.register_buffer("_stage", torch.tensor(stage, dtype=torch.long))
        self.register_buffer("_centroids_initialized", torch.tensor(False))
        self.register_buffer("target_centroids", torch.zeros_like(self.model.clustering.centroids))
        if init_weights is not None:
            self.load_weights(init_weights)
            self.set_stage(stage)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.stage == 1:
            # Stage 1 leaves the centroids without a gradient, which DDP rejects by default.
            enable_unused_parameter_detection(
                self._trainer, "LECHPE stage 1 does not train the centroids"
            )

    # ----------------------------------------------------------------- stage state
    @property
    def stage(self) -> int:
        """Current training stage (1: angles on clean data; 2: + clustering on all data)."""
        return int(self._stage)

    def set_stage(self, stage: int) -> None:
        """Switch the training stage (called by :class:`~hpelib.callbacks.StageSwitch`)."""
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r} is not one of {STAGES}")
        self._stage.fill_(int(stage))
        # Here, not at epoch start: KMeansCentroidInit embeds the stage-2 data (occluders
        # included) right after StageSwitch calls this, before the module's epoch hook.
        self._gate_training_occlusion()

    # ----------------------------------------------------------------- stage-1 data
    def _training_occlusions(self) -> list[RandomOcclusion]:
        """The :class:`RandomOcclusion` modules of the datamodule's training augmentation."""
        augmentation = getattr(getattr(self._trainer, "datamodule", None), "augmentation", None)
        if not isinstance(augmentation, torch.nn.Module):
            return []
        return [m for m in augmentation.modules() if isinstance(m, RandomOcclusion)]

    def _gate_training_occlusion(self, restore: bool = False) -> None:
        """Occluders are drawn in stage 2 only (``stage1_occlusion="none"``): each
        RandomOcclusion's ``p`` is 0 in stage 1 and its configured value otherwise."""
        for occlusion in self._training_occlusions():
            configured = self._occlusion_p.setdefault(id(occlusion), occlusion.p)
            drawn = restore or self.stage == 2 or self.stage1_occlusion == "masked"
            occlusion.p = configured if drawn else 0.0

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._gate_training_occlusion()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._gate_training_occlusion()

    def on_fit_end(self) -> None:
        super().on_fit_end()
        self._gate_training_occlusion(restore=True)
        self._occlusion_p.clear()

    @property
    def centroids(self) -> Tensor:
        """The ``(K, D)`` learnable cluster centroids."""
        return self.model.clustering.centroids

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def centroids_initialized(self) -> bool:
        """Whether :meth:`init_centroids` has run (saved in checkpoints)."""
        return bool(self._centroids_initialized)

    @torch.no_grad()
    def init_centroids(self, centroids: Tensor) -> None:
        """Set the centroids (and DEC's target copy), e.g. from k-means: ``(K, D)``."""
        if centroids.shape != self.centroids.shape:
            raise ValueError(
                f"init_centroids expects shape {tuple(self.centroids.shape)}, got {tuple(centroids.shape)}"
            )
        self.centroids.copy_(centroids.to(self.centroids))
        self.target_centroids.copy_(self.centroids)
        self._centroids_initialized.fill_(True)

    def cluster_stage(self) -> int:
        """The stage from which the centroids are needed (read by ``KMeansCentroidInit``)."""
        return 2

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Latent embeddings for k-means: ``(B, 3, H, W) -> (B, D)``."""
        return self.model.embedding(images)

    def load_weights(self, path: str | Path, trust_checkpoint: bool | None = None) -> None:
        """Load model weights from a Lightning checkpoint or a plain state-dict file, without
        running code from it (:func:`hpelib.checkpoint_io.read_checkpoint`)."""
        state = read_checkpoint(path, what="init_weights", trust_checkpoint=trust_checkpoint)
        state = state.get("state_dict", state)
        self.load_state_dict(state, strict=True)
        self.weights_loaded = True

    # ----------------------------------------------------------------- forward / loss
    def forward(self, images: Tensor) -> dict[str, Tensor]:
        out = self.model(images)
        angles = expected_angle(out["logits"], self.bin_width, self.angle_min, self.expectation)
        out["euler_deg"] = angles  # (B, 3): pitch, yaw, roll in degrees
        out["rotation"] = euler_to_rotation(angles, _CONVENTION, degrees=True)
        return out

    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        """As :meth:`HPEModule.predict_step`, but ``euler_deg`` is the binned branches' own
        angles when ``euler_convention`` is theirs: decomposing ``rotation`` would fold
        ``|yaw| > 90`` (a predicted yaw of 92 would come back as 88 with pitch and roll
        turned by 180)."""
        outputs = super().predict_step(batch, batch_idx, dataloader_idx)
        if same_euler_convention(self.euler_convention, _CONVENTION):
            outputs["euler_deg"] = expected_angle(
                outputs["logits"], self.bin_width, self.angle_min, self.expectation
            )
        return outputs

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # DEC's periodic target: P is computed against centroids frozen for N steps.
        if (
            self.target_update_interval > 1
            and self.stage == 2
            and self.global_step % self.target_update_interval == 0
        ):
            self.target_centroids.copy_(self.centroids.detach())

    def angle_mask(self, batch: dict[str, Any], angles: Tensor) -> Tensor:
        """``(B,)`` samples entering the angle losses: labelled, in the bin range (or an
        error), and, in stage 1, not occluded."""
        b, device = angles.shape[0], angles.device
        has_rotation = batch.get(mask_key("rotation"))
        labelled = (
            torch.ones(b, dtype=torch.bool, device=device)
            if has_rotation is None
            else has_rotation.to(device).bool()
        )
        _, valid = angle_to_bin(angles, self.model.num_bins, self.bin_width, self.angle_min)
        in_range = valid.all(dim=1)
        if self.out_of_range == "error" and bool((labelled & ~in_range).any()):
            bad = angles[labelled & ~in_range]
            high = self.angle_min + self.model.num_bins * self.bin_width
            raise ValueError(
                f"{int(bad.shape[0])} labels have Euler angles (pitch, yaw, roll) outside "
                f"[{self.angle_min}, {high}) degrees, e.g. {bad[0].tolist()}; filter the "
                "dataset or set out_of_range='mask'"
            )
        mask = labelled & in_range
        if self.stage == 1:
            mask = mask & ~_batch_mask(batch, "occluded", False, b, device)
        return mask

    def _global_frequencies(self, q: Tensor) -> Tensor:
        """Soft cluster frequencies ``f_j = sum_i q_ij`` over the samples of every rank
        (``(B, K) -> (K,)``): under DDP each rank's target P is then the one a single device
        computes on the global batch."""
        frequencies = q.detach().sum(dim=0)
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            frequencies = self.all_gather(frequencies).reshape(-1, frequencies.shape[0]).sum(0)
        return frequencies

    def compute_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Angle losses (+ ``beta * L_cluster`` in stage 2). In eval mode (validation,
        including the sanity check that runs before k-means) the clustering term is left out
        while the centroids are not initialised; in training that is an error."""
        angles = rotation_to_euler(
            batch["rotation"].to(outputs["logits"].dtype), _CONVENTION, degrees=True
        )
        mask = self.angle_mask(batch, angles)
        # Masked-out labels are replaced by 0 degrees so no invalid class reaches the CE.
        safe = torch.where(mask[:, None], angles, torch.zeros_like(angles))
        loss, l_class, l_reg = angle_loss(
            outputs["logits"],
            safe,
            mask,
            self.alpha,
            self.bin_width,
            self.angle_min,
            self.expectation,
        )
        parts = {
            "angle_loss": loss.detach(),
            "cls_loss": l_class.detach(),
            "reg_loss": l_reg.detach(),
            "angle_fraction": mask.float().mean(),
        }
        if self.stage == 2 and (self.centroids_initialized or self.training):
            if not self.centroids_initialized:
                raise RuntimeError(
                    "LECHPE stage 2 needs initialised centroids: add the "
                    "hpelib.callbacks.KMeansCentroidInit callback or call init_centroids()"
                )
            q = outputs["q"]
            reference = self.target_centroids if self.target_update_interval > 1 else self.centroids
            q_target = soft_assignment(
                outputs["embedding"].detach(), reference.detach(), self.model.clustering.dof
            )
            p = target_distribution(q_target, self._global_frequencies(q_target))
            l_cluster = cluster_kl_loss(p, q, reduction=self.kl_reduction)
            loss = loss + self.beta * l_cluster
            parts["cluster_loss"] = l_cluster.detach()
        return loss, parts
