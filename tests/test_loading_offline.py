"""Trained checkpoints load offline and without their initial-weights files; ``pretrained:
true`` without network fails at once (hpelib.nn.backbone, HPEModule.INIT_ONLY_HPARAMS).

Every loading path is checked: ``hpelib.load`` / ``load_module``, a plain Lightning
``Method.load_from_checkpoint`` and ``hpelib test --ckpt_path`` (file and ``last``). The
network is blocked by monkeypatching (sockets, huggingface_hub and torch hub downloads), so a
test that reached for it fails instead of downloading."""

from __future__ import annotations

import errno
import socket
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

import hpelib
from hpelib.checkpoint_io import read_checkpoint
from hpelib.cli import build_cli
from hpelib.data.datamodule import HPEDataModule
from hpelib.methods import CLERF, LECHPE, HPEModule, OpNet, SixD
from hpelib.nn import create_backbone
from hpelib.nn.backbone import PretrainedWeightsUnavailableError, cached_pretrained_weights
from tests.toy import AxisGlyphDataset


# ------------------------------------------------------------------ helpers
@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No socket can connect, every download entry point raises, and the weight caches
    (Hugging Face hub, torch hub) are empty folders."""
    import huggingface_hub.constants
    import timm.models._builder as timm_builder
    import timm.models._hub as timm_hub

    def refuse(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "network blocked by the test")

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(timm_hub, "hf_hub_download", no_download)
    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", no_download)
    monkeypatch.setattr(timm_builder, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "hf_cache"


def _fit_and_save(module: HPEModule, path: Path) -> Path:
    """A 2-step fit on 32 px glyphs with an HPEDataModule, saved to ``path``."""
    L.seed_everything(0)
    dm = HPEDataModule(train=AxisGlyphDataset(16, 32), batch_size=8, normalize="symmetric")
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=path.parent,
    )  # fmt: skip
    trainer.fit(module, dm)
    trainer.save_checkpoint(path)
    return path


def _rewrite_hparams(src: Path, dst: Path, **changes) -> Path:
    ckpt = read_checkpoint(src)
    ckpt["hyper_parameters"].update(changes)
    torch.save(ckpt, dst)
    return dst


def _cli_config(tmp_path: Path, init_args: dict, ckpt_dir: Path | None = None) -> Path:
    callbacks = []
    if ckpt_dir is not None:
        callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                      "init_args": {"dirpath": str(ckpt_dir), "save_last": True}}]  # fmt: skip
    config = {
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path / "run"),
                    "callbacks": callbacks},
        "model": {"class_path": "hpelib.methods.SixD", "init_args": init_args},
        "data": {"test": {"glyphs": {"class_path": "tests.toy.AxisGlyphDataset",
                                     "init_args": {"num_samples": 8}}},
                 "batch_size": 8, "normalize": "symmetric"},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ a deleted weights file
@pytest.fixture(scope="module")
def trained_from_file(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A SixD built from a local backbone weights file, trained, saved; the file deleted."""
    root = tmp_path_factory.mktemp("from_file")
    init = root / "init_backbone.pth"
    backbone, _ = create_backbone("test_resnet")
    torch.save(backbone.state_dict(), init)
    module = SixD(backbone="test_resnet", backbone_weights=init)
    path = _fit_and_save(module, root / "last.ckpt")
    state = {k: v.clone() for k, v in module.state_dict().items()}
    init.unlink()
    return path, init, state


def test_every_loading_path_works_after_the_weights_file_is_gone(trained_from_file, tmp_path, no_network):
    path, init, state = trained_from_file
    assert not init.exists()
    assert read_checkpoint(path)["hyper_parameters"]["backbone_weights"] == init
    loaded = hpelib.load(path).module
    assert isinstance(loaded, SixD)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    assert _same_weights(hpelib.predict.load_module(path), loaded)
    plain = SixD.load_from_checkpoint(path)
    assert _same_weights(plain, loaded)
    assert type(HPEModule.load_from_checkpoint(path)) is SixD  # the class the file names
    # The colliding keyword of old (SixD.load_from_checkpoint(p, checkpoint_path=None)) has
    # a name of its own now, and an explicit keyword still wins over the loading values.
    assert _same_weights(SixD.load_from_checkpoint(path, backbone_weights=None), loaded)
    with pytest.raises(FileNotFoundError, match="init_backbone.pth"):
        SixD.load_from_checkpoint(path, backbone_weights=init)
    config = _cli_config(tmp_path, {"backbone": "test_resnet", "backbone_weights": str(init)})
    cli = build_cli(["test", "--config", str(config), "--ckpt_path", str(path)])
    assert _same_weights(cli.model, loaded)


def test_cli_ckpt_path_last_does_not_build_the_initial_weights(trained_from_file, tmp_path, no_network):
    path, init, _ = trained_from_file
    config = _cli_config(
        tmp_path, {"backbone": "test_resnet", "pretrained": True, "backbone_weights": str(init)},
        ckpt_dir=path.parent,
    )  # fmt: skip
    started = time.perf_counter()
    cli = build_cli(["test", "--config", str(config), "--ckpt_path", "last"])
    assert time.perf_counter() - started < 60
    assert cli.model.hparams.pretrained is False and cli.model.hparams.backbone_weights is None


# ------------------------------------------------------------------ pretrained: true
@pytest.fixture(scope="module")
def pretrained_checkpoint(trained_from_file, tmp_path_factory) -> Path:
    """The trained checkpoint as a run fine-tuned from ImageNet weights saves it."""
    path, _, _ = trained_from_file
    out = tmp_path_factory.mktemp("pretrained") / "pretrained.ckpt"
    return _rewrite_hparams(path, out, pretrained=True, backbone_weights=None)


def test_pretrained_checkpoint_loads_with_no_network(pretrained_checkpoint, tmp_path, no_network):
    started = time.perf_counter()
    predictor = hpelib.load(pretrained_checkpoint)
    plain = SixD.load_from_checkpoint(pretrained_checkpoint)
    config = _cli_config(tmp_path, {"backbone": "test_resnet", "pretrained": True})
    cli = build_cli(["test", "--config", str(config), "--ckpt_path", str(pretrained_checkpoint)])
    assert time.perf_counter() - started < 60
    assert _same_weights(predictor.module, plain) and _same_weights(cli.model, plain)
    # What building it fresh does instead: fail at once, naming the backbone.
    with pytest.raises(PretrainedWeightsUnavailableError, match="test_resnet"):
        SixD(backbone="test_resnet", pretrained=True)


def test_old_checkpoint_path_hparam_still_loads(trained_from_file, tmp_path, no_network):
    path, init, state = trained_from_file
    ckpt = read_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    hparams["checkpoint_path"] = hparams.pop("backbone_weights")  # as hpelib <= 0.x saved it
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    for module in (hpelib.load(old).module, SixD.load_from_checkpoint(old)):
        assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())
    config = _cli_config(tmp_path, {"backbone": "test_resnet"})
    build_cli(["test", "--config", str(config), "--ckpt_path", str(old)])


# ------------------------------------------------------------------ method init files
def _clerf_from_file(tmp_path: Path) -> tuple[HPEModule, Path, str]:
    donor = _fit_and_save(CLERF(backbone="test_resnet", embedding_dim=8), tmp_path / "stage1.ckpt")
    return CLERF(backbone="test_resnet", embedding_dim=8, stage=2, encoder_checkpoint=donor), donor, "encoder_checkpoint"


def _lechpe_from_file(tmp_path: Path) -> tuple[HPEModule, Path, str]:
    first = _fit_and_save(LECHPE(backbone="test_resnet"), tmp_path / "lechpe1.ckpt")
    return LECHPE(backbone="test_resnet", init_weights=first), first, "init_weights"


def _opnet_from_file(tmp_path: Path) -> tuple[HPEModule, Path, str]:
    # Its mean and basis end up in the state dict, which is what loading reads.
    keypoints = tmp_path / "keypoints.pt"
    torch.save({"mean": torch.randn(68, 3), "basis": torch.randn(4, 68, 3)}, keypoints)
    return OpNet(backbone="test_resnet", keypoint_model=keypoints), keypoints, "keypoint_model"


@pytest.mark.parametrize("build", [_clerf_from_file, _lechpe_from_file, _opnet_from_file])
def test_method_initial_files_are_not_needed_to_load(build, tmp_path, no_network):
    """CLERF's encoder_checkpoint, LEC-HPE's init_weights, OpNet's keypoint_model file."""
    module, used, key = build(tmp_path)
    path = _fit_and_save(module, tmp_path / "trained.ckpt")
    assert read_checkpoint(path)["hyper_parameters"][key] is not None  # saved, then not needed
    used.unlink()
    loaded = hpelib.load(path).module
    assert type(loaded) is type(module) and _same_weights(loaded, module)
    assert _same_weights(type(module).load_from_checkpoint(path), module)


# ------------------------------------------------------------------ create_backbone offline
def test_pretrained_without_network_fails_at_once_with_a_way_out(no_network, monkeypatch):
    started = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailableError) as info:
        create_backbone("test_resnet", pretrained=True)
    assert time.perf_counter() - started < 10
    message = str(info.value)
    for part in ("'test_resnet'", "timm/test_resnet", "backbone_weights: /path/to/file",
                 str(no_network), "cannot connect", "pretrained: false"):  # fmt: skip
        assert part in message, part
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedWeightsUnavailableError, match="HF_HUB_OFFLINE"):
        create_backbone("test_resnet", pretrained=True)


def test_cached_pretrained_weights_load_without_network(no_network):
    from safetensors.torch import save_file
    from timm import create_model

    reference = create_model("test_resnet")  # with its 1000-class head, as published
    snapshot = no_network / "models--timm--test_resnet.r160_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file(reference.state_dict(), snapshot / "model.safetensors")
    (no_network / "models--timm--test_resnet.r160_in1k" / "refs").mkdir()
    (no_network / "models--timm--test_resnet.r160_in1k" / "refs" / "main").write_text("abc123")
    assert cached_pretrained_weights("test_resnet") == snapshot / "model.safetensors"
    module, _ = create_backbone("test_resnet", pretrained=True)
    weights = module.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in reference.state_dict().items() if k in weights)
    grey, _ = create_backbone("test_resnet", pretrained=True, in_chans=1)  # timm adapts conv1
    assert grey.conv1[0].weight.shape[1] == 1


def test_torch_hub_cache_is_used_too(no_network, tmp_path):
    from timm import create_model

    reference = create_model("resnet18", layers=[1, 1, 1, 1], channels=[8, 16, 24, 32])
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / "resnet18-f37072fd.pth")
    module, _ = create_backbone(
        "resnet18.tv_in1k", pretrained=True, layers=[1, 1, 1, 1], channels=[8, 16, 24, 32]
    )
    assert torch.equal(module.state_dict()["conv1.weight"], reference.state_dict()["conv1.weight"])


# ------------------------------------------------------------------ the renamed argument
def test_checkpoint_path_is_a_deprecated_name_of_backbone_weights(tmp_path):
    init = tmp_path / "w.pth"
    backbone, _ = create_backbone("test_resnet")
    torch.save(backbone.state_dict(), init)
    with pytest.warns(FutureWarning, match="now `backbone_weights`"):
        model = SixD(backbone="test_resnet", checkpoint_path=init)
    assert model.hparams.backbone_weights == init and "checkpoint_path" not in model.hparams
    with pytest.raises(ValueError, match="backbone_weights only"):
        SixD(backbone="test_resnet", checkpoint_path=init, backbone_weights=init)
    with pytest.warns(FutureWarning, match="backbone_weights"):
        create_backbone("test_resnet", checkpoint_path=init)  # never forwarded to timm
    config = _cli_config(tmp_path, {"backbone": "test_resnet", "checkpoint_path": str(init)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = build_cli(["--config", str(config)], run=False)
    assert any("backbone_weights" in str(w.message) for w in caught)
    # Built from the file given under the old name (the initialisation is random otherwise).
    assert torch.equal(cli.model.model.backbone.conv1[0].weight, backbone.conv1[0].weight)
