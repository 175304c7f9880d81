"""CLERF (Wei et al., contrastive learning for full-range head pose estimation) as hpelib
methods: :class:`CLERF` (two stages) and :class:`CLERFSupervised` (the paper's Table 2
baseline: same encoder and head trained end-to-end on the geodesic loss).

Stages of :class:`CLERF`:

1. *representation*: the encoder ``E`` is trained with the Circle loss on anchors and their
   generated positives (``batch["positive"]`` from
   :class:`~hpelib.methods.clerf.positives.AnchorPositiveDataset`); positives are every pair
   with ``cos d(R, R') > T_GD`` in the (DDP-gathered) batch, negatives are margin-mined.
2. *pose*: ``E`` is frozen (``requires_grad=False`` and eval mode, so BatchNorm statistics
   and dropout stay fixed across ``train()`` calls); the pose MLP is trained on the mean
   geodesic loss, optionally with early stopping on ``val/geodesic`` that restores the best
   MLP weights (:class:`~hpelib.methods.clerf.early_stopping.PoseEarlyStopping`).

Both stages run in one fit (``stage=1, stage2_start_epoch=k``) or as two fits (``stage=1``,
then ``stage=2, encoder_checkpoint=<stage-1 checkpoint>``).

Geometric augmentation (rotate/flip) is applied here, in :meth:`on_before_batch_transfer`,
with one warp shared by each anchor and its positive, because the datamodule augments nested
sub-batches independently; give the datamodule a pixel-only augmentation (for instance
:class:`~hpelib.methods.clerf.positives.CLERFPhotometric`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from hpelib.callbacks.stages import enable_unused_parameter_detection
from hpelib.checkpoint_io import read_checkpoint
from hpelib.data.sample import mask_key
from hpelib.methods.base import HPEModule, renamed_backbone_weights
from hpelib.methods.clerf.early_stopping import PoseEarlyStopping
from hpelib.methods.clerf.loss import CLERFContrastiveLoss
from hpelib.methods.clerf.model import CLERFNet
from hpelib.methods.clerf.positives import SharedGeometricAugmentation
from hpelib.nn import geodesic_loss

__all__ = ["CLERF", "CLERFSupervised"]


def _to_float_images(batch: dict[str, Any], nested: tuple[str, ...]) -> dict[str, Any]:
    """uint8 images -> float [0, 1] in ``batch`` and its nested sub-batches (the datamodule
    leaves float images as they are)."""
    out = dict(batch)
    if out["image"].dtype == torch.uint8:
        out["image"] = out["image"].float() / 255.0
    for key in nested:
        sub = out.get(key)
        if isinstance(sub, dict) and "image" in sub:
            out[key] = _to_float_images(sub, ())
    return out


class _CLERFBase(HPEModule):
    """Network construction, shared geometric augmentation and freezing helpers."""

    def __init__(
        self,
        backbone: str,
        embedding_dim: int | None,
        pretrained: bool,
        backbone_weights: str | Path | None,
        drop_rate: float,
        head_hidden: int,
        head_depth: int,
        head_input_skip: bool,
        augmentation: str,
        padding_mode: str,
        positive_key: str,
        backbone_kwargs: dict[str, Any] | None = None,
        rotation: str = "clockwise",
        **kwargs: Any,
    ) -> None:
        # Per-angle metrics in the paper's decomposition R = R_roll (R_pitch R_yaw) unless a
        # config asks for another (``300wlp``: the other methods' tables).
        kwargs.setdefault("euler_convention", "clerf")
        super().__init__(**kwargs)
        self.model = CLERFNet(
            backbone, embedding_dim, pretrained, backbone_weights, drop_rate,
            head_hidden, head_depth, head_input_skip, backbone_kwargs,
        )
        self.positive_key = positive_key
        self.shared_augmentation = SharedGeometricAugmentation(
            augmentation, padding_mode=padding_mode, nested=(positive_key,), rotation=rotation
        )

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        embedding, rotation = self.model(images)
        return {"rotation": rotation, "embedding": embedding}

    def _training(self) -> bool:
        trainer = self._trainer
        return bool(trainer is not None and trainer.training)

    def _drop_positives(self) -> bool:
        return True

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches: drop unused positives, then the shared rotate/flip warp."""
        if not (isinstance(batch, dict) and "image" in batch and self._training()):
            return batch
        if self._drop_positives():
            batch = {k: v for k, v in batch.items() if k != self.positive_key}
        if self.shared_augmentation.geometric is None:
            return batch
        batch = _to_float_images(batch, (self.positive_key,))
        return self.shared_augmentation(batch)


class CLERF(_CLERFBase):
    """CLERF: contrastive representation (stage 1), then a pose MLP on the frozen encoder.

    Args:
        backbone: timm name of ``E`` (paper: ``swinv2_base_window8_256``).
        embedding_dim: representation size (paper: 1024); see
            :class:`~hpelib.methods.clerf.model.CLERFEncoder`.
        pretrained, backbone_weights, drop_rate: backbone weights (``backbone_weights``: a
            local file instead of timm's download) and dropout.
        head_hidden, head_depth, head_input_skip: pose MLP (paper: 256, 4, True).
        stage: stage the fit starts in, 1 (contrastive) or 2 (pose).
        stage2_start_epoch: with ``stage=1``, switch to stage 2 at this epoch (one fit for
            both stages); ``None`` stays in the starting stage.
        stage2_patience: stop the fit after this many stage-2 validation epochs without a
            lower ``val/geodesic`` and restore the pose MLP's best weights (the paper's early
            stopping; the patience itself is not stated in the paper). Adds a
            :class:`~hpelib.methods.clerf.early_stopping.PoseEarlyStopping` (Lightning's
            ``EarlyStopping``, stage 2 only) to the trainer; ``None`` disables it. Give the
            trainer that callback instead for its other options.
        encoder_checkpoint: initialise ``E`` from a checkpoint (a Lightning checkpoint of
            this module, e.g. the stage-1 run's, or a plain encoder state dict). Init-only:
            loading a CLERF checkpoint does not read it again.
        threshold: ``T_GD`` of the positive rule (0.8).
        margin: mining margin ``v`` (0.1).
        type_of_triplets: ``all`` (hard + semi-hard, paper), ``hard`` or ``semihard``.
        circle_m, circle_gamma: Circle loss parameters (0.4, 80).
        mining_distance: embedding distance of the negative mining
            (:data:`~hpelib.methods.clerf.loss.MINING_DISTANCES`): ``euclidean`` (the
            paper's) or ``cosine``.
        augmentation: shared geometric augmentation
            (:data:`~hpelib.methods.clerf.positives.SHARED_AUGMENTATIONS`; ``clerf`` =
            the paper's rotate + flip, ``none`` for the Table 3 ablation).
        rotation: sense of its in-plane rotation
            (:data:`~hpelib.methods.clerf.positives.ROTATION_SENSES`): ``clockwise`` 0-90
            degrees (the paper's) or ``symmetric`` (-90..90).
        padding_mode: warp padding of the augmentation.
        head_lr: learning rate of the pose head (its own parameter group); ``None`` uses
            the optimizer's.
        positive_key: batch key of the positives' sub-batch.
        backbone_kwargs: further timm constructor arguments of the backbone (see
            :func:`hpelib.nn.create_backbone`).
        checkpoint_path: deprecated name of ``backbone_weights``.
        **kwargs: optimiser, scheduler and metric options of :class:`HPEModule`;
            ``euler_convention`` defaults to ``clerf`` (yaw, pitch, roll of the paper's
            ``R = R_roll (R_pitch R_yaw)``, the decomposition of its reported MAE); ``300wlp``
            gives the decomposition of the other methods' tables.
    """

    INIT_ONLY_HPARAMS = {**HPEModule.INIT_ONLY_HPARAMS, "encoder_checkpoint": None}

    def __init__(
        self,
        backbone: str = "resnet18",
        embedding_dim: int | None = 1024,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        drop_rate: float = 0.0,
        head_hidden: int = 256,
        head_depth: int = 4,
        head_input_skip: bool = True,
        stage: int = 1,
        stage2_start_epoch: int | None = None,
        stage2_patience: int | None = None,
        encoder_checkpoint: str | Path | None = None,
        threshold: float = 0.8,
        margin: float = 0.1,
        type_of_triplets: str = "all",
        circle_m: float = 0.4,
        circle_gamma: float = 80.0,
        mining_distance: str = "euclidean",
        augmentation: str = "clerf",
        rotation: str = "clockwise",
        padding_mode: str = "zeros",
        head_lr: float | None = None,
        positive_key: str = "positive",
        backbone_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        backbone_weights = renamed_backbone_weights(backbone_weights, checkpoint_path, "CLERF")
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 (contrastive) or 2 (pose), got {stage!r}")
        if stage2_start_epoch is not None and stage2_start_epoch < 0:
            raise ValueError(f"stage2_start_epoch must be >= 0 or None, got {stage2_start_epoch}")
        if stage2_patience is not None and stage2_patience < 1:
            raise ValueError(f"stage2_patience must be >= 1 or None, got {stage2_patience}")
        super().__init__(
            backbone, embedding_dim, pretrained, backbone_weights, drop_rate, head_hidden,
            head_depth, head_input_skip, augmentation, padding_mode, positive_key,
            backbone_kwargs=backbone_kwargs, rotation=rotation, **kwargs,
        )
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "checkpoint_path"])
        self.start_stage, self.stage2_start_epoch = stage, stage2_start_epoch
        self.stage2_patience, self.head_lr = stage2_patience, head_lr
        self.contrastive_loss = CLERFContrastiveLoss(
            threshold, margin, type_of_triplets, circle_m, circle_gamma, mining_distance
        )
        self.encoder_frozen = False
        self._stage_set: int | None = None
        if encoder_checkpoint is not None:
            self.load_encoder(encoder_checkpoint)
        if stage == 2:
            self.freeze_encoder()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.start_stage == 1:
            # Stage 1 leaves the pose head without a gradient (and stage 2 the frozen encoder),
            # which DDP rejects by default; StageSwitch does the same for its fits.
            enable_unused_parameter_detection(
                self._trainer, "CLERF stage 1 does not train the pose head"
            )

    # ----------------------------------------------------------------- stages
    @property
    def stage(self) -> int:
        """The current stage: the one set by :meth:`set_stage` (e.g. by
        :class:`hpelib.callbacks.StageSwitch`), else a function of the start stage and the
        epoch, so a resumed fit lands in the right stage."""
        if self._stage_set is not None:
            return self._stage_set
        if self.start_stage == 2:
            return 2
        if self.stage2_start_epoch is not None and self._trainer is not None:
            if self.current_epoch >= self.stage2_start_epoch:
                return 2
        return 1

    def set_stage(self, stage: int) -> None:
        """Enter ``stage`` (1 or 2) now: stage 2 freezes ``E``, stage 1 unfreezes it."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 (contrastive) or 2 (pose), got {stage!r}")
        self._stage_set = int(stage)
        self._apply_stage()

    def load_encoder(self, path: str | Path, trust_checkpoint: bool | None = None) -> None:
        """Load ``E``'s weights from a Lightning checkpoint of a CLERF/CLERFSupervised
        module (keys ``model.encoder.*``) or from a plain encoder state dict. Read without
        running code from the file (:func:`hpelib.checkpoint_io.read_checkpoint`)."""
        state = read_checkpoint(path, what="encoder_checkpoint", trust_checkpoint=trust_checkpoint)
        state = state.get("state_dict", state)
        prefix = "model.encoder."
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        self.model.encoder.load_state_dict(state)

    def freeze_encoder(self) -> None:
        """Stage 2: no gradient into ``E`` and eval mode (BatchNorm/dropout) from now on."""
        self.encoder_frozen = True
        self.model.encoder.requires_grad_(False)
        self.model.encoder.eval()

    def train(self, mode: bool = True) -> CLERF:
        super().train(mode)
        if self.encoder_frozen:
            # Lightning calls train() at every epoch start; a frozen encoder must stay in
            # eval mode or BatchNorm would keep updating its running statistics.
            self.model.encoder.eval()
        return self

    def unfreeze_encoder(self) -> None:
        """Back to stage 1: ``E`` trainable and following ``train()``/``eval()`` again."""
        self.encoder_frozen = False
        self.model.encoder.requires_grad_(True)
        self.model.encoder.train(self.training)

    def _apply_stage(self) -> None:
        if self.stage == 2 and not self.encoder_frozen:
            self.freeze_encoder()
        elif self.stage == 1 and self.encoder_frozen:
            self.unfreeze_encoder()

    def on_fit_start(self) -> None:
        self._apply_stage()

    def on_train_epoch_start(self) -> None:
        self._apply_stage()

    def _drop_positives(self) -> bool:
        return self.stage == 2

    def trainable_parameters(self) -> list[Any]:
        """Encoder and head parameters (frozen ones excluded); with ``head_lr`` the head is
        its own parameter group. In stage 1 the head gets no gradient and the optimiser
        skips it; after the switch the frozen encoder gets none."""
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        encoder = [p for p in self.model.encoder.parameters() if p.requires_grad]
        if self.head_lr is None:
            return encoder + head
        groups: list[dict[str, Any]] = [{"params": head, "lr": self.head_lr}]
        if encoder:
            groups.insert(0, {"params": encoder})
        return groups

    # ----------------------------------------------------------------- training
    def _gather(self, x: Tensor) -> Tensor:
        """Concatenate ``x`` over DDP processes, with gradients (Lightning's all_gather)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size <= 1:
            return x
        return self.all_gather(x, sync_grads=True).flatten(0, 1)

    def training_forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if self.stage == 2:
            with torch.no_grad():
                embedding = self.model.encoder(batch["image"])
            return {"embedding": embedding, "rotation": self.model.head(embedding)}
        images, rotations = batch["image"], batch["rotation"]
        valid = batch.get(mask_key("rotation"), torch.ones(len(images), dtype=torch.bool, device=images.device))
        positive = batch.get(self.positive_key)
        if positive is not None:
            pos_valid = positive.get(mask_key("rotation"))
            if pos_valid is None:
                pos_valid = torch.ones(len(positive["image"]), dtype=torch.bool, device=images.device)
            images = torch.cat([images, positive["image"]])
            rotations = torch.cat([rotations, positive["rotation"].to(rotations.dtype)])
            valid = torch.cat([valid, pos_valid.to(valid.device)])
        return {
            "embedding": self.model.encoder(images),
            "contrastive_rotation": rotations,
            "contrastive_valid": valid,
        }

    def compute_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.stage == 2:
            loss = geodesic_loss(outputs["rotation"], batch["rotation"], batch.get(mask_key("rotation")))
            return loss, {"geodesic_loss": loss}
        embeddings = outputs["embedding"]
        rotations = outputs.get("contrastive_rotation", batch["rotation"])
        valid = outputs.get("contrastive_valid", batch.get(mask_key("rotation")))
        if valid is None:
            valid = torch.ones(len(embeddings), dtype=torch.bool, device=embeddings.device)
        embeddings = self._gather(embeddings)
        rotations = self._gather(rotations.to(embeddings.dtype))
        valid = self._gather(valid.to(embeddings.device))
        loss, stats = self.contrastive_loss(embeddings, rotations, valid.bool())
        return loss, {"circle_loss": loss, **{k: torch.tensor(v) for k, v in stats.items()}}

    # ----------------------------------------------------------------- early stopping
    def configure_callbacks(self) -> list[Callback]:
        """``stage2_patience`` as Lightning early stopping (stage 2 only, best MLP restored);
        a :class:`PoseEarlyStopping` given to the trainer is replaced by this one."""
        if self.stage2_patience is None:
            return []
        return [PoseEarlyStopping(patience=self.stage2_patience)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # the class path hpelib.load reads
        checkpoint["clerf_stage"] = self._stage_set

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._stage_set = checkpoint.get("clerf_stage")


class CLERFSupervised(_CLERFBase):
    """The paper's supervised baseline (Table 2): CLERF's encoder and pose MLP trained
    end-to-end on the mean geodesic loss, no contrastive stage.

    Args:
        backbone, embedding_dim, pretrained, backbone_weights, drop_rate, head_hidden,
        head_depth, head_input_skip: as in :class:`CLERF`.
        augmentation: geometric augmentation applied by this module
            (:data:`~hpelib.methods.clerf.positives.SHARED_AUGMENTATIONS`); default ``none``
            because without positives the datamodule's own ``augmentation: clerf`` does the
            same. Use one or the other, not both.
        rotation: sense of its in-plane rotation, as in :class:`CLERF`.
        padding_mode: warp padding of that augmentation.
        backbone_kwargs: as in :class:`CLERF`.
        checkpoint_path: deprecated name of ``backbone_weights``.
        **kwargs: optimiser, scheduler and metric options of :class:`HPEModule`.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        embedding_dim: int | None = 1024,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        drop_rate: float = 0.0,
        head_hidden: int = 256,
        head_depth: int = 4,
        head_input_skip: bool = True,
        augmentation: str = "none",
        rotation: str = "clockwise",
        padding_mode: str = "zeros",
        backbone_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        backbone_weights = renamed_backbone_weights(
            backbone_weights, checkpoint_path, "CLERFSupervised"
        )
        super().__init__(
            backbone, embedding_dim, pretrained, backbone_weights, drop_rate, head_hidden,
            head_depth, head_input_skip, augmentation, padding_mode, "positive",
            backbone_kwargs=backbone_kwargs, rotation=rotation, **kwargs,
        )
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "checkpoint_path"])

    def compute_loss(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        loss = geodesic_loss(outputs["rotation"], batch["rotation"], batch.get(mask_key("rotation")))
        return loss, {"geodesic_loss": loss}

