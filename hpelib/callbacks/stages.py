"""Generic stage switching for multi-stage methods (LEC-HPE, CLERF).

The stage is a pure function of the epoch (``stage_for_epoch``), applied at the start of
every training epoch, so a run resumed from any checkpoint (end of epoch or mid-epoch)
lands in the right stage without replaying anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["StageSwitch"]


class StageSwitch(Callback):
    """Call ``module.<setter>(stage)`` when the epoch reaches a milestone.

    Args:
        epochs: epoch (0-based) or increasing epochs at which the stage changes.
        stages: the stage entered at each of ``epochs`` (default ``initial_stage + 1, +2, ...``).
        initial_stage: the stage before the first milestone.
        setter: name of the module's method taking the new stage (``set_stage``); the module
            should expose the current stage as ``module.stage`` and keep it in its state
            dict, so checkpoints record it.

    Example (LEC-HPE, stage 2 from epoch 3)::

        callbacks:
          - class_path: hpelib.callbacks.StageSwitch
            init_args: {epochs: [3]}
          - class_path: hpelib.callbacks.KMeansCentroidInit
    """

    def __init__(
        self,
        epochs: int | Sequence[int],
        stages: Sequence[int] | None = None,
        initial_stage: int = 1,
        setter: str = "set_stage",
    ) -> None:
        epochs = [int(epochs)] if isinstance(epochs, int) else [int(e) for e in epochs]
        if not epochs:
            raise ValueError("StageSwitch needs at least one epoch in epochs")
        if any(e < 0 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:], strict=False)):
            raise ValueError(f"StageSwitch epochs={epochs} must be non-negative and strictly increasing")
        if stages is None:
            stages = [initial_stage + i + 1 for i in range(len(epochs))]
        stages = [int(s) for s in stages]
        if len(stages) != len(epochs):
            raise ValueError(f"StageSwitch got {len(epochs)} epochs but {len(stages)} stages")
        self.epochs, self.stages = epochs, stages
        self.initial_stage = int(initial_stage)
        self.setter = setter

    def stage_for_epoch(self, epoch: int) -> int:
        """The stage of (0-based) ``epoch``."""
        stage = self.initial_stage
        for start, s in zip(self.epochs, self.stages, strict=True):
            if epoch >= start:
                stage = s
        return stage

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, self.setter, None)):
            raise ValueError(
                f"StageSwitch: {type(pl_module).__name__} has no method {self.setter!r} "
                "(set the callback's setter to the module's stage-switching method)"
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stage = self.stage_for_epoch(trainer.current_epoch)
        if getattr(pl_module, "stage", None) != stage:
            getattr(pl_module, self.setter)(stage)
            rank_zero_info(f"StageSwitch: epoch {trainer.current_epoch} -> stage {stage}")

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "stages": list(self.stages), "initial_stage": self.initial_stage}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The schedule comes from the config; a different saved schedule is only reported,
        # since the stage is recomputed from the epoch either way.
        saved = (state_dict.get("epochs"), state_dict.get("stages"), state_dict.get("initial_stage"))
        if saved != (self.epochs, self.stages, self.initial_stage):
            rank_zero_info(f"StageSwitch: checkpoint schedule {saved} replaced by the configured one")
