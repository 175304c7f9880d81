"""A ``ModelCheckpoint`` whose ``last.ckpt`` is always the newest training state.

Lightning 2.6's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` writes ``last.ckpt``
at validation end and train-epoch end only when a top-k checkpoint was saved at the same
step (``_last_global_step_saved == trainer.global_step``, or ``save_last="link"`` which then
points at that older top-k file). With a monitored metric that stopped improving, nothing is
saved, so ``last`` stays at the best step; its ``on_train_end`` only writes ``last`` when
nothing at all was saved during the run. A fit that ends between two triggers (``max_steps``
mid-epoch with ``every_n_train_steps``, ``max_time``, ``check_val_every_n_epoch > 1`` with a
last epoch that does not validate, ``EarlyStopping`` on a stale metric) therefore leaves an
older ``last.ckpt``, and ``--ckpt_path last`` or a resume silently use it.

:class:`HPEModelCheckpoint` keeps Lightning's behaviour (top-k selection, file names,
``last-v1.ckpt`` versions, ``save_last="link"``) and additionally writes ``last`` wherever
Lightning checked for a checkpoint but skipped ``last``, and on train end, each time only if
``last`` does not already hold the current ``global_step``.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, StochasticWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["HPEModelCheckpoint"]


class HPEModelCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` (same arguments) whose
    ``save_last`` checkpoint always holds the newest state of a fit.

    ``last`` is (re)written at the epoch-cadence checkpoint points (validation end, or train
    epoch end where Lightning saves there) even when the monitored metric did not improve,
    and once more on train end if the fit stopped after the last write (``max_steps``
    mid-epoch, ``max_time``, early stopping). Never twice for the same ``global_step``.

    ``save_last="link"`` keeps linking ``last`` to the newest top-k file when that file holds
    the current step; where the newest state is in no file, ``last`` becomes a real file
    (the symbolic link is removed first, so the top-k file it pointed to is left intact).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # global_step of the state that the last checkpoint (file or link target) holds.
        self._last_holds_step: int | None = None

    # --- Lightning's hooks, plus the missing writes of `last` ------------------------------

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer) and self._epoch_checkpoint_due(trainer):
            self._save_last_if_stale(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        saves_at_epoch_end = self._should_save_on_train_epoch_end(trainer)
        if not saves_at_epoch_end and self._epoch_checkpoint_due(trainer):
            self._save_last_if_stale(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # StochasticWeightAveraging copies the averaged weights into the model in its own
        # on_train_end (Lightning runs checkpoint callbacks after the others): the newest
        # state then differs from the one saved at this same step.
        swa = any(isinstance(cb, StochasticWeightAveraging) for cb in trainer.callbacks)
        self._save_last_if_stale(trainer, weights_changed=swa)

    # --- helpers ---------------------------------------------------------------------------

    def _epoch_checkpoint_due(self, trainer: L.Trainer) -> bool:
        """Whether this epoch is on the ``every_n_epochs`` cadence (where Lightning checks top-k)."""
        return self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0

    def _save_last_if_stale(self, trainer: L.Trainer, weights_changed: bool = False) -> None:
        """Write ``last`` unless it already holds ``trainer.global_step`` (or saving is off:
        ``fast_dev_run``, sanity check, outside ``fit``); ``weights_changed``: the model was
        changed after the last save at this step, so ``last`` is written (as a file) again."""
        if (
            not self.save_last
            or bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or (self._last_holds_step == trainer.global_step and not weights_changed)
        ):
            return
        monitor_candidates = self._monitor_candidates(trainer)
        newest_in_a_file = (
            bool(self._last_checkpoint_saved)
            and self._last_global_step_saved == trainer.global_step
            and not weights_changed
        )
        if self.save_last != "link" or newest_in_a_file or self.save_top_k == 0:
            self._save_last_checkpoint(trainer, monitor_candidates)
            return
        # save_last="link" would point `last` at an older top-k file: write a real file,
        # after removing the link (saving through it would overwrite that top-k file).
        if trainer.is_global_zero and self.last_model_path and os.path.islink(self.last_model_path):
            os.remove(self.last_model_path)
        self.save_last = True
        try:
            self._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self.save_last = "link"

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        """Lightning's naming, versions and linking; records which step ``last`` now holds."""
        if not self.save_last:
            return
        links = (
            self.save_last == "link" and bool(self._last_checkpoint_saved) and self.save_top_k != 0
        )
        # A link holds the state of the newest saved file, a written file the current one.
        holds = self._last_global_step_saved if links else trainer.global_step
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_holds_step = holds
