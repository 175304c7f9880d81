"""OpNet's learning-rate schedule: linear warm-up, then one step down.

The paper trains with Adam at a maximum LR of 1e-3, warms up linearly over the first 1/20
of the samples, divides the LR by 10 at half of the training and averages the weights from
2/3 on (SWA: :class:`lightning.pytorch.callbacks.StochasticWeightAveraging` in the example
configs, which takes over the LR from there).

:class:`WarmupStepLR` is torch's ``SequentialLR(LinearLR, MultiStepLR)``; it only works out
the two schedulers' arguments from fractions of the run, and defers that until the run's
length is known (:class:`hpelib.methods.opnet.OpNet` fills it in from the trainer).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, LRScheduler, MultiStepLR, SequentialLR

__all__ = ["WarmupStepLR"]


class WarmupStepLR(SequentialLR):
    """LR factor per optimisation step ``s`` of a run of ``T = total_steps`` steps:
    ``start_factor + (1 - start_factor) * s / (warmup_fraction * T)`` while
    ``s < warmup_fraction * T``, then 1, and ``gamma`` from ``s >= step_fraction * T`` on.

    Built as ``SequentialLR([LinearLR, MultiStepLR])``: the ``LinearLR`` covers the
    warm-up steps ``0 .. ceil(warmup_fraction * T) - 1`` with the slope above (so a
    fractional warm-up length gives the same factors as the formula), the ``MultiStepLR``
    the rest. Use with ``scheduler_interval: step``. ``total_steps`` may be left ``None``
    when the scheduler is created by :class:`hpelib.methods.opnet.OpNet`, which sets it from
    ``trainer.estimated_stepping_batches`` before the first optimisation step; stepping
    before that raises.

    Args:
        optimizer: the wrapped optimiser (its LR is the maximum LR).
        total_steps: number of optimisation steps of the whole run.
        warmup_fraction: fraction of the run spent warming up (1/20 in the paper).
        step_fraction: fraction of the run after which the LR is multiplied by ``gamma``.
        gamma: the step factor (1/10 in the paper).
        start_factor: factor at step 0.
        last_epoch: index of the last step taken, to resume a run (``-1``: a new run).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        warmup_fraction: float = 0.05,
        step_fraction: float = 0.5,
        gamma: float = 0.1,
        start_factor: float = 0.01,
        last_epoch: int = -1,
    ) -> None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not 0.0 < step_fraction <= 1.0:
            raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
        if not 0.0 < start_factor <= 1.0:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
        self.optimizer = optimizer
        self.warmup_fraction = warmup_fraction
        self.step_fraction = step_fraction
        self.gamma = gamma
        self.start_factor = start_factor
        self._resume_from = last_epoch
        self._total_steps: int | None = None
        if total_steps is not None:
            self.total_steps = total_steps

    @property
    def total_steps(self) -> int | None:
        """Number of optimisation steps of the run; setting it builds the schedule."""
        return self._total_steps

    @total_steps.setter
    def total_steps(self, total_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if self._total_steps is not None and getattr(self, "last_epoch", 0) > 0:
            raise ValueError("WarmupStepLR.total_steps cannot change once stepping has begun")
        self._total_steps = total_steps
        schedulers, milestones = self._phases(total_steps)
        super().__init__(self.optimizer, schedulers, milestones)
        # Resuming: replay the steps already taken (cheap; the old LambdaLR did the same).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "step() before optimizer.step()"
            for _ in range(self._resume_from + 1):
                self.step()

    def _phases(self, total_steps: int) -> tuple[list[LRScheduler], list[int]]:
        """The ``SequentialLR`` arguments: ``(schedulers, milestones)``."""
        warmup = self.warmup_fraction * total_steps
        # Integer steps s with s >= x are those with s >= ceil(x).
        warmup_end = math.ceil(warmup)
        step_at = math.ceil(self.step_fraction * total_steps)
        # A step inside the warm-up does not apply: the warm-up factors win there.
        after = MultiStepLR(self.optimizer, [max(step_at - warmup_end, 0)], self.gamma)
        if warmup_end == 0:  # no warm-up: factor 1 from step 0
            return [after], []
        # LinearLR reaches end_factor at its last step, warmup_end - 1; choosing end_factor
        # on the formula's slope makes every warm-up step equal the formula's factor.
        last = warmup_end - 1
        linear = LinearLR(
            self.optimizer,
            start_factor=self.start_factor,
            end_factor=self.start_factor + (1.0 - self.start_factor) * last / warmup,
            total_iters=max(last, 1),  # last == 0: only step 0, the end factor is never used
        )
        return [linear, after], [warmup_end]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by :meth:`state_dict`, or by the ``LambdaLR`` version of this
        class (older hpelib; it saved no sub-schedulers): that one is replayed to its
        ``last_epoch``."""
        if "_schedulers" in state_dict:
            super().load_state_dict(state_dict)
            return
        if self._total_steps is None:
            self.step()  # raises the "total_steps is not set" error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "step() before optimizer.step()"
            for _ in range(int(state_dict["last_epoch"]) - self.last_epoch):
                self.step()

    def step(self) -> None:  # type: ignore[override]
        """Advance one optimisation step (raises while ``total_steps`` is unknown)."""
        if self._total_steps is None:
            raise ValueError(
                "WarmupStepLR.total_steps is not set: give total_steps in the config or use it "
                "through hpelib.methods.opnet.OpNet, which fills it in"
            )
        super().step()
