"""Staged fits under DDP need ``find_unused_parameters`` (stage 1 leaves a head or the
centroids without a gradient, stage 2 freezes an encoder): StageSwitch and LECHPE turn it on
in ``setup``, before Lightning wraps the model. No process is started: the strategy is only
configured (the 2-process fits are in test_ddp_methods.py)."""

from __future__ import annotations

import lightning as L
import pytest

from hpelib.callbacks import StageSwitch, enable_unused_parameter_detection
from hpelib.methods import LECHPE


def _trainer(strategy: str = "ddp", devices: int = 2) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=devices, strategy=strategy, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


def test_stage_switch_turns_detection_on_for_ddp_fits_only():
    module = LECHPE(backbone="test_resnet", num_clusters=2, stage=2)
    trainer = _trainer()
    assert "find_unused_parameters" not in trainer.strategy._ddp_kwargs  # plain "ddp"
    StageSwitch(epochs=[1]).setup(trainer, module, "validate")
    assert "find_unused_parameters" not in trainer.strategy._ddp_kwargs
    StageSwitch(epochs=[1]).setup(trainer, module, "fit")
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True
    single = _trainer("auto", devices=1)
    StageSwitch(epochs=[1]).setup(single, module, "fit")  # no DDP: nothing to do
    assert enable_unused_parameter_detection(single, "test") is False
    assert enable_unused_parameter_detection(None, "test") is False


def test_explicit_false_is_kept_with_a_warning():
    trainer = _trainer("ddp_find_unused_parameters_false")
    with pytest.warns(UserWarning, match="find_unused_parameters=False"):
        assert enable_unused_parameter_detection(trainer, "test") is False
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is False
    on = _trainer("ddp_find_unused_parameters_true")
    assert enable_unused_parameter_detection(on, "test") is True


@pytest.mark.parametrize("stage", [1, 2])
def test_lechpe_stage1_fit_turns_detection_on(stage):
    """A stage-1 LECHPE fit (no StageSwitch: the two-run path) leaves the centroids unused."""
    module = LECHPE(backbone="test_resnet", num_clusters=2, stage=stage)
    trainer = _trainer()
    module.trainer = trainer
    module.setup("fit")
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) is (stage == 1)
