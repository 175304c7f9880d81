"""Nothing hpelib reads can run code; checkpoint writes are atomic (hpelib.checkpoint_io,
hpelib.plugins).

The crafted files here hold an object whose unpickling creates a marker file: after every
loading path the marker must not exist and the error must name the file and the type."""

from __future__ import annotations

import errno
import os
import pickle
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

import hpelib
from hpelib.checkpoint_io import (
    PREPROCESSING_FIELDS,
    PREPROCESSING_KEY,
    CheckpointReadError,
    MissingPreprocessingError,
    UnsafeCheckpointError,
    atomic_torch_save,
    checkpoint_preprocessing,
    read_checkpoint,
    trusted_checkpoints,
)
from hpelib.cli import build_cli
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods import CLERF, LECHPE, SixD
from hpelib.methods.base import method_class
from hpelib.nn import create_backbone
from hpelib.plugins import AtomicCheckpointIO
from tests.toy import AxisGlyphDataset


class CreatesFile:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a file can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _trainer(root: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    L.seed_everything(0)
    dm = HPEDataModule(train=AxisGlyphDataset(32, 32), batch_size=16, normalize="symmetric")
    trainer = _trainer(root, max_steps=2)
    trainer.fit(SixD(backbone="test_resnet"), dm)
    path = root / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "code_ran.txt"


@pytest.fixture
def crafted(good_checkpoint, tmp_path, marker) -> Path:
    """A genuine hpelib checkpoint with one extra entry that runs code when unpickled."""
    ckpt = torch.load(good_checkpoint, weights_only=True)
    ckpt["notes"] = CreatesFile(marker)
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    return path


def _assert_refused(err: BaseException, path: Path, marker: Path) -> None:
    message = str(err)
    assert str(path) in message and "open" in message and "trust_checkpoint" in message
    assert not marker.exists()


def test_good_checkpoint_reads_without_pickle(good_checkpoint):
    ckpt = read_checkpoint(good_checkpoint)
    assert ckpt["hpelib_class_path"] == "hpelib.methods.sixd.module.SixD"
    assert isinstance(hpelib.load(good_checkpoint).module, SixD)


@pytest.mark.parametrize("form", ["torch.save", "pickle.dump"])
def test_read_checkpoint_refuses_code_and_names_the_type(tmp_path, marker, form):
    path = tmp_path / "weights.pth"
    payload = {"state_dict": {"w": torch.zeros(2)}, "x": CreatesFile(marker)}
    if form == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError) as info:
        read_checkpoint(path, what="init_weights")
    assert str(path) in str(info.value) and "init_weights" in str(info.value)
    assert not marker.exists()
    if form == "torch.save":
        assert "open" in str(info.value)


def test_trust_checkpoint_is_the_one_opt_in(tmp_path, marker):
    path = tmp_path / "mine.pth"
    torch.save({"x": CreatesFile(marker)}, path)
    read_checkpoint(path, trust_checkpoint=True)
    assert marker.exists()
    marker.unlink()
    with trusted_checkpoints():
        read_checkpoint(path)
    assert marker.exists()
    marker.unlink()
    with trusted_checkpoints(), pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path, trust_checkpoint=False)  # an explicit False wins
    assert not marker.exists()


def test_paths_in_hyperparameters_are_allowed(tmp_path):
    path = tmp_path / "p.ckpt"
    torch.save({"hyper_parameters": {"encoder_checkpoint": Path("/data/enc.ckpt")}}, path)
    assert read_checkpoint(path)["hyper_parameters"]["encoder_checkpoint"] == Path("/data/enc.ckpt")


@pytest.mark.parametrize("damage", ["empty", "truncated", "not_torch"])
def test_damaged_checkpoint_is_an_error_naming_the_file(good_checkpoint, tmp_path, damage):
    data = good_checkpoint.read_bytes()
    path = tmp_path / f"{damage}.ckpt"
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "not_torch": b"x" * 100}[damage])
    with pytest.raises(CheckpointReadError, match=str(path)):
        read_checkpoint(path)
    with pytest.raises(CheckpointReadError, match=str(path)):
        hpelib.load(path)


# ------------------------------------------------------------------ preprocessing record
def test_preprocessing_record_is_read_from_the_new_and_the_old_place(good_checkpoint, tmp_path):
    ckpt = read_checkpoint(good_checkpoint)
    prep = checkpoint_preprocessing(ckpt, good_checkpoint)
    assert tuple(prep) == PREPROCESSING_FIELDS
    assert (prep["image_size"], prep["mean"], prep["std"], prep["grayscale"]) == (32, [0.5] * 3, [0.5] * 3, False)
    assert prep["dataset"] == "tests.toy.AxisGlyphDataset" and prep["euler_convention"] == "300wlp"
    assert hpelib.load(good_checkpoint).preprocessing == prep
    # Checkpoints of older versions: the datamodule's state only; the convention from the
    # hyper-parameters when they name it, else from the module hpelib.load builds.
    old = {k: v for k, v in ckpt.items() if k != PREPROCESSING_KEY}
    assert "HPEDataModule" in old
    old_prep = checkpoint_preprocessing(old, "old.ckpt")
    assert old_prep["image_size"] == 32 and old_prep["crop_rule"] is None
    torch.save(old, tmp_path / "old.ckpt")
    assert hpelib.load(tmp_path / "old.ckpt").preprocessing == {
        **old_prep, "euler_convention": "300wlp", "dataset": None}
    del old["HPEDataModule"]
    torch.save(old, tmp_path / "bare.ckpt")
    for read in (lambda: checkpoint_preprocessing(old, "bare.ckpt"), lambda: hpelib.load(tmp_path / "bare.ckpt")):
        with pytest.raises(MissingPreprocessingError, match=r"bare\.ckpt.*no preprocessing record"):
            read()


# ------------------------------------------------------------------ every loading path
def test_load_and_load_module_refuse(crafted, marker):
    for load in (hpelib.load, hpelib.predict.load_module):
        with pytest.raises(UnsafeCheckpointError) as info:
            load(crafted)
        _assert_refused(info.value, crafted, marker)


def test_export_refuses_then_trusts_on_request(crafted, marker, tmp_path):
    pytest.importorskip("onnxruntime")
    from hpelib.export import main as export_main

    out = tmp_path / "m.onnx"
    # hpelib export reports errors as a SystemExit with the message (a command-line tool).
    with pytest.raises((UnsafeCheckpointError, SystemExit)) as info:
        export_main(["--ckpt", str(crafted), "--output", str(out)])
    _assert_refused(info.value, crafted, marker)
    assert not out.exists()
    export_main(["--ckpt", str(crafted), "--output", str(out), "--trust_checkpoint"])
    assert marker.exists() and out.is_file()  # the flag reached the loader


def test_evaluate_refuses(crafted, marker, tmp_path):
    from hpelib.evaluate import main as evaluate_main

    config = tmp_path / "eval.yaml"
    test_set = {"class_path": "tests.toy.AxisGlyphDataset", "init_args": {"num_samples": 8}}
    config.write_text(yaml.safe_dump({"data": {"test": {"glyphs": test_set}, "normalize": "symmetric"}}))
    with pytest.raises(UnsafeCheckpointError) as info:
        evaluate_main(["--config", str(config), "--ckpt", str(crafted), "--output", str(tmp_path / "e")])
    _assert_refused(info.value, crafted, marker)


def test_method_weight_arguments_refuse(good_checkpoint, tmp_path, marker):
    state = torch.load(good_checkpoint, weights_only=True)["state_dict"]
    evil = tmp_path / "weights.pth"
    torch.save({"state_dict": state, "x": CreatesFile(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match="encoder_checkpoint") as info:
        CLERF(backbone="test_resnet", embedding_dim=8, encoder_checkpoint=evil)
    _assert_refused(info.value, evil, marker)
    with pytest.raises(UnsafeCheckpointError, match="init_weights") as info:
        LECHPE(backbone="test_resnet", init_weights=evil)
    _assert_refused(info.value, evil, marker)
    with pytest.raises(UnsafeCheckpointError, match="backbone_weights") as info:
        create_backbone("test_resnet", backbone_weights=evil)
    _assert_refused(info.value, evil, marker)


def test_trainer_resume_refuses(crafted, marker, tmp_path):
    dm = HPEDataModule(train=AxisGlyphDataset(32, 32), batch_size=16, normalize="symmetric")
    trainer = _trainer(tmp_path, max_steps=4)
    with pytest.raises(UnsafeCheckpointError) as info:
        trainer.fit(SixD(backbone="test_resnet"), dm, ckpt_path=crafted)
    _assert_refused(info.value, crafted, marker)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def _cli_config(tmp_path: Path) -> Path:
    config = {
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path / "run")},
        "model": {"class_path": "hpelib.methods.SixD", "init_args": {"backbone": "test_resnet"}},
        "data": {"test": {"glyphs": {"class_path": "tests.toy.AxisGlyphDataset",
                                     "init_args": {"num_samples": 8}}},
                 "batch_size": 8, "normalize": "symmetric"},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_cli_test_refuses_then_trusts_on_request(crafted, marker, tmp_path):
    config = _cli_config(tmp_path)
    with pytest.raises(UnsafeCheckpointError) as info:
        build_cli(["test", "--config", str(config), "--ckpt_path", str(crafted)])
    _assert_refused(info.value, crafted, marker)
    build_cli(["test", "--config", str(config), "--ckpt_path", str(crafted), "--trust_checkpoint", "true"])
    assert marker.exists()
    marker.unlink()
    # The opt-in ends with the run.
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(crafted)
    assert not marker.exists()


def test_cli_test_without_ckpt_path_is_an_error(tmp_path):
    config = _cli_config(tmp_path)
    with pytest.raises(ValueError, match="no --ckpt_path"):
        build_cli(["test", "--config", str(config)])
    build_cli(["test", "--config", str(config), "--allow_untrained", "true"])


# ------------------------------------------------------------------ class paths
def test_class_path_must_name_a_registered_method(good_checkpoint, tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "hostile_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Model:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = torch.load(good_checkpoint, weights_only=True)
    for class_path in ("hostile_module.Model", "subprocess.Popen", "hpelib.methods.base.HPEModule.x"):
        ckpt["hpelib_class_path"] = class_path
        path = tmp_path / "named.ckpt"
        torch.save(ckpt, path)
        with pytest.raises(ValueError, match="not an hpelib method") as info:
            hpelib.load(path)
        assert str(path) in str(info.value) and class_path in str(info.value)
    assert not marker.exists() and "hostile_module" not in sys.modules


def test_lightning_instantiator_in_hyperparameters_is_not_used(good_checkpoint, tmp_path):
    ckpt = torch.load(good_checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["_instantiator"] = "os.system"
    path = tmp_path / "inst.ckpt"
    torch.save(ckpt, path)
    assert isinstance(hpelib.load(path).module, SixD)


class MySixD(SixD):
    """A user's own method: defining it registers it."""


def test_user_defined_method_loads(tmp_path):
    assert method_class(f"{__name__}.MySixD") is MySixD
    dm = HPEDataModule(train=AxisGlyphDataset(16, 32), batch_size=16, normalize="symmetric")
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(MySixD(backbone="test_resnet"), dm)
    trainer.save_checkpoint(tmp_path / "mine.ckpt")
    assert type(hpelib.load(tmp_path / "mine.ckpt").module) is MySixD


def test_clerf_checkpoint_names_its_class(tmp_path):
    dm = HPEDataModule(train=AxisGlyphDataset(16, 32), batch_size=8, normalize="symmetric")
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(CLERF(backbone="test_resnet", embedding_dim=8, stage=2), dm)
    trainer.save_checkpoint(tmp_path / "clerf.ckpt")
    assert type(hpelib.load(tmp_path / "clerf.ckpt").module) is CLERF


# ------------------------------------------------------------------ atomic writes
class _DiskFull:
    """A file whose writes stop with ENOSPC after ``limit`` bytes, as on a full disk."""

    def __init__(self, raw, limit: int) -> None:
        self.raw, self.left = raw, limit

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.left:
            self.raw.write(data[: self.left])
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= len(data)
        return self.raw.write(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.raw.close()


def test_atomic_save_keeps_the_old_file_on_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _DiskFull(real_fdopen(fd, mode), 1000))
    with pytest.raises(OSError, match="No space"):
        atomic_torch_save({"step": 2, "w": torch.ones(100_000)}, path)
    assert path.read_bytes() == before and read_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left


def test_fit_on_a_full_disk_leaves_last_ckpt_loadable(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_dir = tmp_path / "ckpt"
    dm = HPEDataModule(train=AxisGlyphDataset(32, 32), batch_size=16, normalize="symmetric")
    callback = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1)
    trainer = _trainer(tmp_path, max_steps=4, callbacks=[callback])
    real_fdopen, saves = os.fdopen, []

    def fdopen(fd, mode):
        saves.append(fd)
        raw = real_fdopen(fd, mode)
        return _DiskFull(raw, 2000) if len(saves) > 2 else raw  # the disk fills at step 2

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OSError, match="No space"):
        trainer.fit(SixD(backbone="test_resnet"), dm)
    monkeypatch.undo()
    last = read_checkpoint(ckpt_dir / "last.ckpt")
    assert last["global_step"] == 1
    resumed = _trainer(tmp_path, max_steps=2)
    resumed.fit(SixD(backbone="test_resnet"), dm, ckpt_path=ckpt_dir / "last.ckpt")
    assert resumed.global_step == 2
