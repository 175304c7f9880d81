"""Stage-2 early stopping of CLERF's pose MLP, with the best MLP weights restored.

The paper trains the MLP on the frozen encoder with early stopping on a validation split.
Lightning's :class:`~lightning.pytorch.callbacks.EarlyStopping` decides when to stop, but it
neither restores the best weights (it has no ``restore_best_weights``) nor knows about
stages: in stage 1 the pose head is untrained, its ``val/geodesic`` is noise, and a stop
there would end the contrastive stage. :class:`PoseEarlyStopping` adds both: it only
counts stage-2 validations, keeps a copy of the head's weights at each improvement, and
copies them back when the fit stops (patience exhausted or the last epoch), *before* the
checkpoint callbacks run at that validation, so ``last.ckpt`` holds the best head.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor, nn

__all__ = ["PoseEarlyStopping"]


class PoseEarlyStopping(EarlyStopping):
    """:class:`~lightning.pytorch.callbacks.EarlyStopping` on ``monitor`` in stage 2 only,
    restoring the best weights of ``module_name`` when the fit stops.

    Args:
        patience: stage-2 validations without improvement before stopping.
        monitor, mode, min_delta: as in Lightning's ``EarlyStopping`` (``val/geodesic``,
            ``min``, 0).
        module_name: submodule of the LightningModule whose best weights are kept and
            restored (CLERF's pose MLP: ``model.head``).
        stage: the module's ``stage`` in which the callback acts (a module without a
            ``stage`` attribute is always in it).
        **kwargs: further ``EarlyStopping`` arguments (``strict``, ``verbose``, ...).
    """

    def __init__(
        self,
        patience: int = 3,
        monitor: str = "val/geodesic",
        mode: str = "min",
        min_delta: float = 0.0,
        module_name: str = "model.head",
        stage: int = 2,
        **kwargs: Any,
    ) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        kwargs.setdefault("check_on_train_epoch_end", False)
        super().__init__(
            monitor=monitor, mode=mode, min_delta=min_delta, patience=patience, **kwargs
        )
        self.module_name, self.stage = module_name, int(stage)
        self.best_state: dict[str, Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, stage=self.stage)

    def _module(self, pl_module: L.LightningModule) -> nn.Module:
        try:
            return pl_module.get_submodule(self.module_name)
        except AttributeError as err:
            raise ValueError(
                f"PoseEarlyStopping: {type(pl_module).__name__} has no submodule {self.module_name!r}"
            ) from err

    def _active(self, pl_module: L.LightningModule) -> bool:
        return int(getattr(pl_module, "stage", self.stage)) == self.stage

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        module = trainer.lightning_module
        if not self._active(module):
            return  # stage 1 never stops early and its val/geodesic is not a best score
        best_before = self.best_score.clone()
        super()._run_early_stopping_check(trainer)
        if not torch.equal(self.best_score.cpu(), best_before.cpu()):
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in self._module(module).state_dict().items()
            }
        last_epoch = (
            trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs - 1
        )
        if trainer.should_stop or last_epoch:
            self.restore_best(module)

    def restore_best(self, pl_module: L.LightningModule) -> bool:
        """Copy the best weights seen so far back into the module; False if there are none."""
        if self.best_state is None:
            return False
        self._module(pl_module).load_state_dict(self.best_state)
        return True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A fit ended by max_steps or max_time: the in-memory model still gets the best head.
        if self._active(pl_module):
            self.restore_best(pl_module)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["best_state"] = copy.deepcopy(self.best_state)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self.best_state = state.pop("best_state", None)
        super().load_state_dict(state)
