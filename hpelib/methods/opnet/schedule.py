"""OpNet's learning-rate schedule: linear warm-up, then one step down (a ``LambdaLR``).

The paper trains with Adam at a maximum LR of 1e-3, warms up linearly over the first 1/20
of the samples, divides the LR by 10 at half of the training and averages the weights from
2/3 on (SWA: :class:`lightning.pytorch.callbacks.StochasticWeightAveraging` in the example
configs, which takes over the LR from there).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupStepLR"]


class WarmupStepLR(LambdaLR):
    """``factor(step)``: linear from ``start_factor`` to 1 over ``warmup_fraction *
    total_steps``, 1 until ``step_fraction * total_steps``, then ``gamma``.

    Use with ``scheduler_interval: step``. ``total_steps`` may be left ``None`` when the
    scheduler is created by :class:`hpelib.methods.opnet.OpNet`, which sets it from
    ``trainer.estimated_stepping_batches`` before the first optimisation step.

    Args:
        optimizer: the wrapped optimiser (its LR is the maximum LR).
        total_steps: number of optimisation steps of the whole run.
        warmup_fraction: fraction of the run spent warming up (1/20 in the paper).
        step_fraction: fraction of the run after which the LR is multiplied by ``gamma``.
        gamma: the step factor (1/10 in the paper).
        start_factor: factor at step 0.
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
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not 0.0 < step_fraction <= 1.0:
            raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
        if not 0.0 < start_factor <= 1.0:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor}")
        self.total_steps = total_steps
        self.warmup_fraction = warmup_fraction
        self.step_fraction = step_fraction
        self.gamma = gamma
        self.start_factor = start_factor
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        if step == 0:
            return self.start_factor if self.warmup_fraction > 0 else 1.0
        if self.total_steps is None:
            raise ValueError(
                "WarmupStepLR.total_steps is not set: give total_steps in the config or use it "
                "through hpelib.methods.opnet.OpNet, which fills it in"
            )
        warmup = self.warmup_fraction * self.total_steps
        if step < warmup:
            return self.start_factor + (1.0 - self.start_factor) * step / warmup
        return self.gamma if step >= self.step_fraction * self.total_steps else 1.0
