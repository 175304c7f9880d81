"""TimeBudgetLR: the schedule function, duration parsing, the learning rate a Trainer steps
with under a fake clock, stopping at the budget, resuming mid-budget, and its errors."""

from __future__ import annotations

import math
from datetime import timedelta

import lightning as L
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.demos.boring_classes import BoringModel

from hpelib.callbacks import TimeBudgetLR, budget_lr_factor, parse_duration

BASE_LR = 0.1


class PlainSGD(BoringModel):
    """BoringModel with one SGD optimiser and no scheduler."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.layer.parameters(), lr=BASE_LR)


class FakeClock:
    """One second per training step: advanced by :class:`Tick` after every batch."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tick(Callback):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.clock.now += 1.0


class RecordLR(Callback):
    """The learning rate each optimiser step actually uses."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _trainer(callbacks, tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=100, limit_val_batches=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        default_root_dir=tmp_path, callbacks=callbacks, **kwargs,
    )  # fmt: skip


def test_factor_worked_values():
    assert budget_lr_factor(0.0) == pytest.approx(1.0)
    assert budget_lr_factor(0.5) == pytest.approx(0.5)
    assert budget_lr_factor(1.0) == pytest.approx(0.0, abs=1e-12)
    assert budget_lr_factor(0.25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert budget_lr_factor(0.25, "linear") == pytest.approx(0.75)
    assert budget_lr_factor(1.0, min_ratio=0.1) == pytest.approx(0.1)
    assert budget_lr_factor(2.0) == budget_lr_factor(1.0)  # clipped past the budget
    # warm-up: linear from 0 to 1 over the first 10 %, then the full decay over the rest
    assert budget_lr_factor(0.05, warmup=0.1) == pytest.approx(0.5)
    assert budget_lr_factor(0.1, warmup=0.1) == pytest.approx(1.0)
    assert budget_lr_factor(0.55, warmup=0.1) == pytest.approx(0.5)


@given(
    a=st.floats(0, 1), b=st.floats(0, 1), shape=st.sampled_from(["cosine", "linear"]),
    warmup=st.floats(0, 0.5), min_ratio=st.floats(0, 1),
)  # fmt: skip
def test_factor_bounded_and_non_increasing_after_warmup(a, b, shape, warmup, min_ratio):
    lo, hi = sorted((a, b))
    f_lo = budget_lr_factor(lo, shape, warmup, min_ratio)
    f_hi = budget_lr_factor(hi, shape, warmup, min_ratio)
    assert 0.0 <= f_lo <= 1.0 + 1e-12 and 0.0 <= f_hi <= 1.0 + 1e-12
    if lo >= warmup:
        assert f_hi <= f_lo + 1e-12
        assert f_hi >= min_ratio - 1e-12


def test_parse_duration_formats_and_errors():
    assert parse_duration("00:00:10:00") == 600
    assert parse_duration("01:02:03:04") == 86400 + 7200 + 180 + 4
    assert parse_duration({"minutes": 10}) == 600
    assert parse_duration(timedelta(seconds=90)) == 90
    assert parse_duration(12.5) == 12.5
    with pytest.raises(ValueError, match="'10:00'.*DD:HH:MM:SS"):
        parse_duration("10:00")
    with pytest.raises(ValueError, match="positive"):
        parse_duration(0)
    with pytest.raises(TypeError):
        parse_duration([600])  # type: ignore[arg-type]


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="shape='step'"):
        TimeBudgetLR(10, shape="step")
    with pytest.raises(ValueError, match="warmup"):
        TimeBudgetLR(10, warmup=1.0)
    with pytest.raises(ValueError, match="min_ratio"):
        TimeBudgetLR(10, min_ratio=2.0)


def test_trainer_steps_with_the_budget_schedule_and_stops_at_the_budget(tmp_path):
    clock = FakeClock()
    record = RecordLR()
    schedule = TimeBudgetLR(budget=10, shape="cosine", clock=clock)
    trainer = _trainer([Tick(clock), schedule, record], tmp_path)
    trainer.fit(PlainSGD())
    # Step k starts after k seconds: lr = base * (1 + cos(pi k / 10)) / 2; the tenth step
    # ends the budget, so training stops there although max_epochs allows far more.
    assert trainer.global_step == 10
    expected = [BASE_LR * (1 + math.cos(math.pi * k / 10)) / 2 for k in range(10)]
    assert record.lrs == pytest.approx(expected)
    assert schedule.elapsed() == pytest.approx(10.0)


def test_budget_defaults_to_trainer_max_time(tmp_path):
    schedule = TimeBudgetLR(shape="linear")
    trainer = _trainer([schedule], tmp_path, max_time={"minutes": 5}, max_steps=2)
    trainer.fit(PlainSGD())
    assert schedule.budget_s == pytest.approx(300.0)


def test_resume_continues_the_schedule(tmp_path):
    clock = FakeClock()
    first = _trainer([Tick(clock), TimeBudgetLR(10, clock=clock)], tmp_path, max_steps=4)
    model = PlainSGD()
    first.fit(model)
    path = tmp_path / "mid.ckpt"
    first.save_checkpoint(path)

    clock.now += 1000.0  # wall time between the runs does not count
    record = RecordLR()
    schedule = TimeBudgetLR(10, clock=clock)
    second = _trainer([Tick(clock), schedule, record], tmp_path)
    second.fit(PlainSGD(), ckpt_path=path)
    expected = [BASE_LR * (1 + math.cos(math.pi * k / 10)) / 2 for k in range(4, 10)]
    assert record.lrs == pytest.approx(expected)
    assert second.global_step == 10


def test_scheduler_in_the_model_is_an_error(tmp_path):
    trainer = _trainer([TimeBudgetLR(10)], tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="remove model.scheduler"):
        trainer.fit(BoringModel())  # configures SGD + StepLR


def test_no_budget_and_no_max_time_is_an_error(tmp_path):
    trainer = _trainer([TimeBudgetLR()], tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="trainer.max_time"):
        trainer.fit(PlainSGD())
