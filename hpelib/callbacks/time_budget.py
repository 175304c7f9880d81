"""Learning-rate decay over a wall-clock budget instead of a step count.

A step-count schedule (``CosineAnnealingLR(T_max=steps)``) sized on one machine does not fit
another: where ``trainer.max_time`` ends a run on a slower CPU, the schedule is cut mid-decay
(measured: the 10-minute full-range config reached 2,889 of its 8,192 steps on an AVX2-only
2-core CPU, so it stopped at 72 % of the peak rate). :class:`TimeBudgetLR` keys the
decay on the time spent instead, so every machine completes the same schedule shape when
the budget ends (the budget-aware schedules of Li et al., *Budgeted Training*, ICLR 2020).
At that short budget the complete decay gave no clear accuracy gain (two seeds,
docs/methods/sixd.md); what it removes is the dependence of a timed config on the machine's
speed."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer

__all__ = ["TimeBudgetLR", "budget_lr_factor", "parse_duration"]

SHAPES: tuple[str, ...] = ("cosine", "linear")


def parse_duration(value: str | float | int | timedelta | dict[str, int]) -> float:
    """Seconds from ``trainer.max_time``'s formats: ``"DD:HH:MM:SS"``, a ``timedelta``, a
    dict of ``timedelta`` keywords (``{"minutes": 10}``) or a number of seconds."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, dict):
        seconds = timedelta(**value).total_seconds()
    elif isinstance(value, str):
        parts = value.strip().split(":")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"duration {value!r} is not in the 'DD:HH:MM:SS' format")
        days, hours, minutes, secs = (int(p) for p in parts)
        seconds = timedelta(days=days, hours=hours, minutes=minutes, seconds=secs).total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"duration must be seconds, 'DD:HH:MM:SS', a timedelta or a dict, got {value!r}"
        )
    if not seconds > 0:
        raise ValueError(f"duration must be positive, got {value!r} ({seconds} s)")
    return seconds


def budget_lr_factor(
    fraction: float, shape: str = "cosine", warmup: float = 0.0, min_ratio: float = 0.0
) -> float:
    """Learning-rate multiplier after ``fraction`` (0..1, clipped) of the budget.

    Linear warm-up from 0 over the first ``warmup`` of the budget, then ``shape`` decays from
    1 to ``min_ratio`` at the end: ``cosine``: ``(1 + cos(pi u)) / 2``, ``linear``: ``1 - u``,
    with ``u`` the fraction of the decay phase spent.
    """
    f = min(max(float(fraction), 0.0), 1.0)
    if warmup > 0.0 and f < warmup:
        return f / warmup
    u = (f - warmup) / (1.0 - warmup) if warmup < 1.0 else 1.0
    decay = 0.5 * (1.0 + math.cos(math.pi * u)) if shape == "cosine" else 1.0 - u
    return min_ratio + (1.0 - min_ratio) * decay


class TimeBudgetLR(Callback):
    """Set every optimiser's learning rate from the fraction of a wall-clock budget spent.

    Before each training step, ``lr = base_lr * budget_lr_factor(elapsed / budget, ...)``
    for every parameter group (``base_lr``: the optimiser's configured rate, kept as the
    group's ``initial_lr`` so a resumed run continues the same schedule). The time counts
    from the start of training (validation inside ``fit`` included, as ``trainer.max_time``
    counts it) and is stored in checkpoints, so a resumed run continues where it stopped.
    Training stops when the budget is spent. Under DDP rank 0's clock is broadcast, so every
    rank steps with the same learning rate.

    Time-keyed schedules are not step-for-step reproducible: two runs of one seed on
    differently loaded machines take their steps at different learning rates.

    Args:
        budget: seconds, ``"DD:HH:MM:SS"``, a ``timedelta`` or a dict such as
            ``{"minutes": 10}``; ``None`` takes ``trainer.max_time``.
        shape: ``"cosine"`` or ``"linear"`` decay.
        warmup: fraction of the budget spent on a linear warm-up from 0 (0: none).
        min_ratio: final learning rate as a fraction of the base rate.
        clock: seconds counter (``time.monotonic``; tests pass a fake one).

    Example (YAML)::

        trainer:
          max_time: "00:00:10:00"
          callbacks:
            - class_path: hpelib.callbacks.TimeBudgetLR
              init_args: {shape: cosine}
    """

    def __init__(
        self,
        budget: str | float | timedelta | dict[str, int] | None = None,
        shape: str = "cosine",
        warmup: float = 0.0,
        min_ratio: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"TimeBudgetLR shape={shape!r} is not one of {SHAPES}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"TimeBudgetLR warmup={warmup} must be a fraction in [0, 1)")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"TimeBudgetLR min_ratio={min_ratio} must be in [0, 1]")
        self.budget_s = None if budget is None else parse_duration(budget)
        self.shape, self.warmup, self.min_ratio = shape, float(warmup), float(min_ratio)
        self.clock = clock
        self._offset = 0.0  # seconds spent before this run (restored from a checkpoint)
        self._start: float | None = None

    # ---------------------------------------------------------------- time
    def elapsed(self) -> float:
        """Seconds of training so far (this run plus any run it resumed)."""
        if self._start is None:
            return self._offset
        return self._offset + self.clock() - self._start

    def fraction(self) -> float:
        """Fraction of the budget spent, clipped to ``[0, 1]``."""
        if self.budget_s is None:
            raise RuntimeError("TimeBudgetLR has no budget yet (set in on_train_start)")
        return min(max(self.elapsed() / self.budget_s, 0.0), 1.0)

    def _resolve_budget(self, trainer: L.Trainer) -> float:
        if self.budget_s is not None:
            return self.budget_s
        for callback in trainer.callbacks:
            if isinstance(callback, Timer):
                remaining = callback.time_remaining()
                if remaining is not None:
                    return callback.time_elapsed() + remaining
        raise ValueError(
            "TimeBudgetLR has no budget: pass budget= (seconds or 'DD:HH:MM:SS') or set "
            "trainer.max_time"
        )

    # ---------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.lr_scheduler_configs:
            names = ", ".join(type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs)
            raise ValueError(
                f"TimeBudgetLR sets the learning rate itself, but the model also configures "
                f"a scheduler ({names}): remove model.scheduler (or this callback)"
            )
        self.budget_s = self._resolve_budget(trainer)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                # Restored with the optimiser state on resume, like torch's schedulers do.
                group.setdefault("initial_lr", group["lr"])
        self._start = self.clock()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # One clock for all ranks: different learning rates would make the replicas diverge.
        fraction = float(trainer.strategy.broadcast(self.fraction(), src=0))
        factor = budget_lr_factor(fraction, self.shape, self.warmup, self.min_ratio)
        lr = None
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr = group["initial_lr"] * factor
        if lr is not None:
            pl_module.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=1)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.strategy.broadcast(self.fraction() >= 1.0, src=0):
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._offset, self._start = self.elapsed(), None

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._offset = float(state_dict.get("elapsed", 0.0))
        self._start = None
