"""WarmupStepLR (torch SequentialLR(LinearLR, MultiStepLR)) against the LambdaLR formula it replaced."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import SequentialLR

from hpelib.methods.opnet import WarmupStepLR


def _old_factor(
    step: int, total: int, warmup_f: float, step_f: float, gamma: float, start: float
) -> float:
    """The previous implementation's ``LambdaLR`` factor, verbatim."""
    if step == 0:
        return start if warmup_f > 0 else 1.0
    warmup = warmup_f * total
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    return gamma if step >= step_f * total else 1.0


def _lrs(sched: WarmupStepLR, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _opt(lr: float = 2.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize(
    "total,warmup_f,step_f,gamma,start",
    [
        (100, 0.05, 0.5, 0.1, 0.01),  # the paper's settings
        (30, 0.05, 0.5, 0.1, 0.01),  # fractional warm-up length (1.5 steps)
        (37, 0.1, 0.33, 0.5, 0.2),  # fractional warm-up and step
        (10, 0.0, 0.5, 0.1, 0.01),  # no warm-up
        (10, 0.3, 0.2, 0.1, 0.01),  # step inside the warm-up
        (7, 0.5, 1.0, 0.1, 0.3),  # step at the very end
    ],
)
def test_lr_sequence_equals_old_formula(total, warmup_f, step_f, gamma, start):
    opt = _opt()
    sched = WarmupStepLR(opt, total, warmup_f, step_f, gamma, start)
    assert isinstance(sched, SequentialLR)
    expected = [
        2.0 * _old_factor(s, total, warmup_f, step_f, gamma, start) for s in range(total + 3)
    ]
    assert _lrs(sched, opt, total + 3) == pytest.approx(expected, rel=1e-12)


def test_lazy_total_steps_then_set():
    opt = _opt()
    sched = WarmupStepLR(opt)
    with pytest.raises(ValueError, match="total_steps is not set"):
        sched.step()
    sched.total_steps = 40  # what OpNet.configure_optimizers does
    expected = [2.0 * _old_factor(s, 40, 0.05, 0.5, 0.1, 0.01) for s in range(40)]
    assert _lrs(sched, opt, 40) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="cannot change"):
        sched.total_steps = 80


def test_resume_by_last_epoch_and_state_dict():
    opt = _opt()
    sched = WarmupStepLR(opt, 50, 0.1, 0.5, 0.1, 0.01)
    first = _lrs(sched, opt, 20)
    rest = _lrs(sched, opt, 30)
    # last_epoch: the old LambdaLR resume path (needs initial_lr in the optimiser).
    opt2 = _opt()
    opt2.param_groups[0]["initial_lr"] = 2.0
    resumed = WarmupStepLR(opt2, 50, 0.1, 0.5, 0.1, 0.01, last_epoch=19)
    assert _lrs(resumed, opt2, 30) == pytest.approx(rest, rel=1e-12)
    # state_dict: Lightning's resume path.
    opt3 = _opt()
    sched3 = WarmupStepLR(opt3, 50, 0.1, 0.5, 0.1, 0.01)
    _lrs(sched3, opt3, 20)
    state = sched3.state_dict()
    opt4 = _opt()
    sched4 = WarmupStepLR(opt4, 50, 0.1, 0.5, 0.1, 0.01)
    sched4.load_state_dict(state)
    opt4.param_groups[0]["lr"] = opt3.param_groups[0]["lr"]  # the optimiser's own state_dict
    assert _lrs(sched4, opt4, 30) == pytest.approx(rest, rel=1e-12)
    assert len(first) == 20


def test_bad_arguments():
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        WarmupStepLR(_opt(), total_steps=0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        WarmupStepLR(_opt(), warmup_fraction=1.0)
    with pytest.raises(ValueError, match="step_fraction"):
        WarmupStepLR(_opt(), step_fraction=0.0)


def test_loads_state_of_old_lambdalr_version():
    """Checkpoints of the LambdaLR version hold no sub-scheduler states: replayed to last_epoch."""
    opt = _opt()
    old = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _old_factor(s, 50, 0.1, 0.5, 0.1, 0.01))
    for _ in range(20):
        opt.step()
        old.step()
    rest = [2.0 * _old_factor(s, 50, 0.1, 0.5, 0.1, 0.01) for s in range(20, 50)]
    opt2 = _opt()
    sched = WarmupStepLR(opt2, 50, 0.1, 0.5, 0.1, 0.01)
    sched.load_state_dict(old.state_dict())
    assert sched.last_epoch == 20
    assert _lrs(sched, opt2, 30) == pytest.approx(rest, rel=1e-12)
