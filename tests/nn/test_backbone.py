"""Backbone factory: the reported feature width is the width the module really outputs, and
``backbone_kwargs`` reach timm from every method and from a config file."""

from __future__ import annotations

import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet

from hpelib.methods import CLERF, LECHPE, CLERFSupervised, OpNet, RankPose, SixD
from hpelib.nn import create_backbone


# test_resnet/regnetx_002: pooled features straight from the trunk; lcnet_050 and
# mobilenetv3_small_050 end in a pre-logits conv head, whose width differs from timm's
# `num_features` (256 -> 1280, 576 -> 1024).
@pytest.mark.parametrize("name", ["test_resnet", "regnetx_002", "lcnet_050", "mobilenetv3_small_050"])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_reported_width_matches_output(name: str, in_chans: int) -> None:
    module, width = create_backbone(name, in_chans=in_chans)
    with torch.no_grad():
        features = module.eval()(torch.rand(2, in_chans, 32, 32))
    assert features.shape == (2, width)


def test_method_with_pre_logits_head_backbone_trains_a_step() -> None:
    model = SixD(backbone="lcnet_050")
    out = model(torch.rand(2, 3, 32, 32))
    out["rotation"].sum().backward()
    assert out["rotation"].shape == (2, 3, 3)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# A ResNet far smaller than resnet18, built by the resnet18 entry point from kwargs.
SMALL_RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 16, 24, 32]}


def _resnets(module: torch.nn.Module) -> list[ResNet]:
    return [m for m in module.modules() if isinstance(m, ResNet)]


def test_backbone_kwargs_build_the_asked_architecture() -> None:
    module, width = create_backbone("resnet18", **SMALL_RESNET)
    stock, stock_width = create_backbone("resnet18")
    assert (width, stock_width) == (32, 512)
    assert len([m for m in module.modules() if isinstance(m, BasicBlock)]) == 4
    assert [layer[0].conv1.out_channels for layer in (module.layer1, module.layer4)] == [8, 32]
    with torch.no_grad():
        assert module.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 32)


def test_unknown_backbone_kwarg_is_an_error_naming_backbone_and_argument() -> None:
    with pytest.raises(ValueError, match=r"backbone 'resnet18' does not accept backbone_kwargs.*no_such_arg"):
        create_backbone("resnet18", no_such_arg=1)
    with pytest.raises(ValueError, match=r"must not set \['num_classes'\]"):
        create_backbone("resnet18", num_classes=10)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path) -> None:
    module, _ = create_backbone("resnet18", **SMALL_RESNET)
    path = tmp_path / "small_resnet.pth"
    torch.save(module.state_dict(), path)
    # Same kwargs: the local weights load exactly.
    again, _ = create_backbone("resnet18", backbone_weights=path, **SMALL_RESNET)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(module.eval()(x), again.eval()(x))
    wider = {**SMALL_RESNET, "channels": [8, 16, 24, 48]}
    with pytest.raises(ValueError, match=r"pretrained weights of backbone 'resnet18' do not fit"):
        create_backbone("resnet18", backbone_weights=path, **wider)


@pytest.mark.parametrize("method", [SixD, RankPose, LECHPE, OpNet, CLERF, CLERFSupervised])
def test_every_method_passes_backbone_kwargs_and_saves_them(method) -> None:
    model = method(backbone="resnet18", backbone_kwargs=SMALL_RESNET)
    (resnet,) = _resnets(model)
    assert resnet.num_features == 32 and resnet.layer1[0].conv1.out_channels == 8
    assert model.hparams.backbone_kwargs == SMALL_RESNET  # load_from_checkpoint rebuilds it


def test_backbone_kwargs_from_a_config_file(tmp_path) -> None:
    import yaml

    from hpelib.cli import build_cli

    config = {
        "trainer": {"accelerator": "cpu", "logger": False},
        "model": {"class_path": "hpelib.methods.SixD", "init_args": {
            "backbone": "resnet18", "backbone_kwargs": SMALL_RESNET}},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = build_cli(["--config", str(path)], run=False)
    (resnet,) = _resnets(cli.model)
    assert resnet.num_features == 32
