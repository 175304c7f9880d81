"""``last.ckpt`` holds the newest training state after any fit (hpelib.callbacks.HPEModelCheckpoint).

Lightning 2.6's ModelCheckpoint rewrites ``last`` at validation / epoch end only when a top-k
checkpoint was saved at that step, and on train end only when nothing was saved at all: with
a monitored metric that stopped improving, or a fit that ends between two checkpoint
triggers, ``last.ckpt`` lags. Each scenario below runs the plain class too and asserts that it
lags, so the test shows the bug it guards against."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, Timer

from hpelib.callbacks import HPEModelCheckpoint
from hpelib.checkpoint_io import read_checkpoint
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods import SixD
from tests.toy import AxisGlyphDataset

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


class FlatMetricSixD(SixD):
    """Logs ``val/flat = 1`` at every validation: it improves at the first one only."""

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log("val/flat", 1.0)


class RunOutOfTimeAt(Callback):
    """Uses up the trainer's ``max_time`` once ``global_step`` reaches ``step``: a
    deterministic max_time stop (the Timer's resumed-time offset is set to the budget)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            for callback in trainer.callbacks:
                if isinstance(callback, Timer):
                    callback._offset = callback._duration


class FinalStepEpoch(Callback):
    """The epoch in which the last optimizer step of the fit happened."""

    epoch: int = -1

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.epoch = trainer.current_epoch


# 64 training samples in batches of 16: 4 steps per epoch; validation of 1 batch.
SCENARIOS = {
    # The examples/sixd.yaml case: monitored metric, no improvement after the first epoch.
    "monitored_no_improvement": ({"monitor": "val/flat"}, {"max_epochs": 3}, list),
    "monitored_max_steps_mid_epoch": ({"monitor": "val/flat"}, {"max_steps": 6}, list),
    "every_n_train_steps_max_steps_mid_epoch": ({"every_n_train_steps": 4}, {"max_steps": 6}, list),
    "check_val_every_n_epoch_2": ({}, {"max_epochs": 3, "check_val_every_n_epoch": 2}, list),
    "early_stopping": (
        {"monitor": "val/flat"}, {"max_epochs": 6}, lambda: [EarlyStopping("val/flat", patience=1)]
    ),
    "max_time": (
        {"monitor": "val/flat"}, {"max_epochs": 6, "max_time": {"hours": 1}}, lambda: [RunOutOfTimeAt(6)]
    ),
}  # fmt: skip


def _fit(root: Path, checkpoint: ModelCheckpoint, extra: list[Callback], **trainer_kwargs):
    """A tiny fit; returns the trainer and every (file name, global_step) that was written."""
    L.seed_everything(0)
    dm = HPEDataModule(
        train=AxisGlyphDataset(64, 32), val=AxisGlyphDataset(16, 32, seed=1), batch_size=16,
        normalize="symmetric",
    )  # fmt: skip
    final = FinalStepEpoch()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1, default_root_dir=root,
        callbacks=[checkpoint, final, *extra], **trainer_kwargs,
    )  # fmt: skip
    writes: list[tuple[str, int]] = []
    save = trainer.save_checkpoint

    def recording_save(filepath, *args, **kwargs):
        writes.append((Path(filepath).name, trainer.global_step))
        return save(filepath, *args, **kwargs)

    trainer.save_checkpoint = recording_save
    trainer.fit(FlatMetricSixD(backbone="test_resnet"), dm)
    return trainer, final.epoch, writes


@pytest.mark.parametrize("cls", [HPEModelCheckpoint, ModelCheckpoint], ids=["hpelib", "lightning"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_last_checkpoint_holds_the_final_step(tmp_path, scenario, cls):
    ckpt_kwargs, trainer_kwargs, extra = SCENARIOS[scenario]
    checkpoint = cls(dirpath=tmp_path / "ckpt", save_last=True, **ckpt_kwargs)
    trainer, final_epoch, writes = _fit(tmp_path, checkpoint, extra(), **trainer_kwargs)
    if scenario in ("early_stopping", "max_time"):  # stopped before max_epochs (4 steps each)
        assert 0 < trainer.global_step < 4 * trainer_kwargs["max_epochs"]
    last = read_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    if cls is ModelCheckpoint:
        # Lightning's own class: last.ckpt is an older state (the bug this class fixes).
        assert last["global_step"] < trainer.global_step
        return
    assert last["global_step"] == trainer.global_step
    # Written during the final epoch, or on train end once the epoch counter moved on.
    assert last["epoch"] in (final_epoch, trainer.current_epoch)
    last_writes = [step for name, step in writes if name == "last.ckpt"]
    assert len(last_writes) == len(set(last_writes)), f"last written twice for a step: {writes}"
    # What `hpelib test --ckpt_path last` (hpelib.cli._require_last_checkpoint) looks up.
    assert checkpoint._find_last_checkpoints(trainer) == {
        os.path.normpath(tmp_path / "ckpt" / "last.ckpt")
    }


def test_save_last_link_points_to_the_newest_file_or_is_one(tmp_path):
    # Monitored metric that stops improving: the newest state is in no top-k file, so last is
    # a real file, and the top-k file the link pointed to keeps its own (older) state.
    checkpoint = HPEModelCheckpoint(dirpath=tmp_path / "a", save_last="link", monitor="val/flat")
    trainer, _, _ = _fit(tmp_path, checkpoint, [], max_epochs=3)
    last = tmp_path / "a" / "last.ckpt"
    assert not last.is_symlink()
    assert read_checkpoint(last)["global_step"] == trainer.global_step == 12
    best = Path(checkpoint.best_model_path)
    assert best.name == "epoch=0-step=4.ckpt"
    assert read_checkpoint(best)["global_step"] == 4

    # Unmonitored: the newest top-k file holds the final step, so last stays a link to it.
    checkpoint = HPEModelCheckpoint(dirpath=tmp_path / "b", save_last="link")
    trainer, _, _ = _fit(tmp_path, checkpoint, [], max_epochs=2)
    last = tmp_path / "b" / "last.ckpt"
    assert last.is_symlink() and os.readlink(last) == "epoch=1-step=8.ckpt"
    assert read_checkpoint(last)["global_step"] == trainer.global_step == 8


def test_last_holds_the_averaged_weights_after_swa(tmp_path):
    # StochasticWeightAveraging (examples/opnet.yaml) may swap the averaged weights in on
    # train end, after the last save at the same step (models without BatchNorm).
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    checkpoint = HPEModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)
    trainer, _, _ = _fit(tmp_path, checkpoint, [swa], max_epochs=3)
    last = read_checkpoint(tmp_path / "ckpt" / "last.ckpt")["state_dict"]
    final = trainer.lightning_module.state_dict()
    assert all(torch.equal(last[k], final[k].cpu()) for k in final)


# --- the example configs ---------------------------------------------------------------


def _checkpoint_callbacks(config: dict) -> list[dict]:
    callbacks = config.get("trainer", {}).get("callbacks") or []
    return [
        cb for cb in callbacks if cb["class_path"].rsplit(".", 1)[-1].endswith("ModelCheckpoint")
    ]


def _with_save_last(path: Path) -> bool:
    config = yaml.safe_load(path.read_text())
    return any((cb.get("init_args") or {}).get("save_last") for cb in _checkpoint_callbacks(config))


def test_example_configs_use_hpelib_model_checkpoint():
    with_checkpoint = [p for p in EXAMPLES if _checkpoint_callbacks(yaml.safe_load(p.read_text()))]
    assert with_checkpoint, "no example config with a ModelCheckpoint"
    for path in with_checkpoint:
        for callback in _checkpoint_callbacks(yaml.safe_load(path.read_text())):
            assert callback["class_path"] == "hpelib.callbacks.HPEModelCheckpoint", path.name
            HPEModelCheckpoint(**(callback.get("init_args") or {}))  # same init_args accepted


def _missing_requirements(config: dict) -> str | None:
    """Why this config cannot be fitted here (real datasets or downloaded weights), or None."""
    roots = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("root"), str):
                roots.append(node["root"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config.get("data", {}))
    missing = [r for r in roots if not Path(r).exists()]
    if missing:
        return f"needs the real dataset(s) at {', '.join(sorted(set(missing)))}"
    if (config["model"].get("init_args") or {}).get("pretrained"):
        return "needs pretrained backbone weights (a download)"
    return None


def _tiny(config: dict, tmp: Path) -> dict:
    """The config on 64-sample data, 2 training batches per epoch, 3 steps (the last one
    mid-epoch), 1 validation batch, everything written under ``tmp``."""

    def shrink(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "num_samples":
                    node[key] = min(value, 64)
                else:
                    shrink(value)
        elif isinstance(node, list):
            for value in node:
                shrink(value)

    data = config["data"]
    shrink(data)
    data.update(batch_size=8, num_workers=0)
    if data.get("samples_per_epoch"):
        data["samples_per_epoch"] = 64
    trainer = config["trainer"]
    callbacks = [cb for cb in trainer["callbacks"] if "ProgressBar" not in cb["class_path"]]
    for callback in _checkpoint_callbacks({"trainer": {"callbacks": callbacks}}):
        callback["init_args"]["dirpath"] = str(tmp / "checkpoints")
    trainer.update(
        callbacks=callbacks, accelerator="cpu", devices=1, max_steps=3, limit_train_batches=2,
        limit_val_batches=1, num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=str(tmp),
        enable_progress_bar=False, enable_model_summary=False,
        logger={"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp)}},
    )  # fmt: skip
    return config


# examples/sixd.yaml (the monitored checkpoint of the bug report) runs by default; the other
# configs take 8-25 s each on 2 CPU cores (-m slow). Configs that cannot run here skip.
FAST_EXAMPLES = {"sixd.yaml"}


def _example_param(path: Path):
    slow = path.name not in FAST_EXAMPLES and not _missing_requirements(
        yaml.safe_load(path.read_text())
    )
    return pytest.param(path, id=path.stem, marks=pytest.mark.slow if slow else ())


@pytest.mark.parametrize("path", [_example_param(p) for p in EXAMPLES if _with_save_last(p)])
def test_example_config_fit_leaves_last_at_the_final_step(tmp_path, monkeypatch, path):
    from hpelib.cli import build_cli

    config = yaml.safe_load(path.read_text())
    reason = _missing_requirements(config)
    if reason:
        pytest.skip(f"{path.name}: {reason}")
    monkeypatch.setattr(sys, "argv", ["hpelib"])  # build_cli's args, not pytest's
    tiny = tmp_path / "config.yaml"
    tiny.write_text(yaml.safe_dump(_tiny(config, tmp_path)))
    cli = build_cli(["fit", "--config", str(tiny)])
    trainer = cli.trainer
    assert trainer.global_step == 3
    (checkpoint,) = trainer.checkpoint_callbacks
    assert isinstance(checkpoint, HPEModelCheckpoint)
    (last,) = checkpoint._find_last_checkpoints(trainer)
    assert (
        read_checkpoint(last)["global_step"]
        == trainer.global_step
    )
