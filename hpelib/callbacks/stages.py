"""Generic stage switching for multi-stage methods (LEC-HPE, CLERF).

The stage is a pure function of the epoch (``stage_for_epoch``), applied at the start of
every training epoch, so a run resumed from any checkpoint (end of epoch or mid-epoch)
lands in the right stage without replaying anything.

Under DDP a staged fit always has parameters without a gradient in some step (a head not
used before its stage, an encoder frozen after the switch), which DDP rejects unless
``find_unused_parameters`` is on: :func:`enable_unused_parameter_detection` turns it on
before the model is wrapped (done by :class:`StageSwitch` and by methods whose first stage
leaves parameters unused).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = ["StageSwitch", "enable_unused_parameter_detection"]


def enable_unused_parameter_detection(trainer: Trainer | None, reason: str) -> bool:
    """Turn on DDP's ``find_unused_parameters`` for this fit, before the model is wrapped.

    Call it from a ``setup`` hook (callback or module): Lightning wraps the model in
    ``DistributedDataParallel`` after those hooks. Without it, a step in which a parameter
    that requires grad gets none (a not-yet-used head, a frozen encoder) stops DDP with
    "parameters that were not used in producing the loss". No-op outside DDP and when the
    flag is already on; an explicit ``find_unused_parameters=False`` (e.g.
    ``strategy: ddp_find_unused_parameters_false``) is kept, with a warning.

    Returns:
        whether detection is on for a DDP strategy afterwards.
    """
    strategy = getattr(trainer, "strategy", None)
    if not isinstance(strategy, DDPStrategy):
        return False
    kwargs = getattr(strategy, "_ddp_kwargs", None)
    if not isinstance(kwargs, dict):  # a Lightning without the attribute: nothing to set
        rank_zero_warn(f"{reason}: set `strategy: ddp_find_unused_parameters_true` for DDP")
        return False
    if kwargs.get("find_unused_parameters", None) is False:
        rank_zero_warn(
            f"{reason}, but the DDP strategy sets find_unused_parameters=False: DDP will stop "
            "at the first step with an unused parameter (use ddp_find_unused_parameters_true)"
        )
        return False
    if not kwargs.get("find_unused_parameters"):
        kwargs["find_unused_parameters"] = True
        rank_zero_info(f"{reason}: DDP find_unused_parameters turned on")
    return True


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
        if any(e < 0 for e in epochs) or any(
            b <= a for a, b in zip(epochs, epochs[1:], strict=False)
        ):
            raise ValueError(
                f"StageSwitch epochs={epochs} must be non-negative and strictly increasing"
            )
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
        if stage == "fit":
            enable_unused_parameter_detection(
                trainer, "StageSwitch: stages train different parameters"
            )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stage = self.stage_for_epoch(trainer.current_epoch)
        if getattr(pl_module, "stage", None) != stage:
            getattr(pl_module, self.setter)(stage)
            rank_zero_info(f"StageSwitch: epoch {trainer.current_epoch} -> stage {stage}")

    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs": list(self.epochs),
            "stages": list(self.stages),
            "initial_stage": self.initial_stage,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The schedule comes from the config; a different saved schedule is only reported,
        # since the stage is recomputed from the epoch either way.
        saved = (
            state_dict.get("epochs"),
            state_dict.get("stages"),
            state_dict.get("initial_stage"),
        )
        if saved != (self.epochs, self.stages, self.initial_stage):
            rank_zero_info(
                f"StageSwitch: checkpoint schedule {saved} replaced by the configured one"
            )
