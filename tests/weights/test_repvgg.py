"""hpelib's ``repvgg_b1g2`` timm model against the reference RepVGG-B1g2 (6DRepNet's backbone)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from hpelib.nn import create_backbone
from hpelib.nn.repvgg import repvgg_to_timm_state_dict
from tests.weights.reference_sixdrepnet import create_RepVGG_B1g2, randomise_, repvgg_model_convert


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    return randomise_(create_RepVGG_B1g2(deploy=False), 1)


def _grouped(model: nn.Module) -> list[tuple[int, int]]:
    """(in_channels, groups) of every grouped conv, in order."""
    return [(m.in_channels, m.groups) for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


@pytest.mark.parametrize("deploy", [False, True], ids=["train", "deploy"])
def test_same_structure_and_names_as_the_reference(reference, deploy):
    ref = repvgg_model_convert(reference) if deploy else reference
    ours, features = create_backbone("repvgg_b1g2", reparameterized=deploy)
    assert timm.is_model("repvgg_b1g2") and features == 2048
    # g2_map: 2 groups on global layers 2, 4, ..., 26 (13 blocks; 2 convs each in train form).
    assert _grouped(ours) == _grouped(ref) and len(_grouped(ref)) == 13 * (1 if deploy else 2)
    mapped = {k: v for k, v in repvgg_to_timm_state_dict(ref.state_dict()).items() if not k.startswith("head.fc.")}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_imagenet_weights_in_the_original_names_load_as_backbone_weights(reference, tmp_path):
    """RepVGG-B1g2-train.pth (stage0..stage4, rbr_*, linear): given as backbone_weights, the
    features are the reference's pooled features."""
    path = tmp_path / "RepVGG-B1g2-train.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)
    ours, _ = create_backbone("repvgg_b1g2", backbone_weights=path)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.gap(
            reference.stage4(reference.stage3(reference.stage2(reference.stage1(reference.stage0(x)))))
        ).flatten(1)
        got = ours.eval()(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_pretrained_without_a_file_names_the_weights_to_give():
    with pytest.raises(ValueError, match=r"RepVGG-B1g2-train\.pth.*backbone_weights"):
        create_backbone("repvgg_b1g2", pretrained=True)
    with pytest.raises(ValueError, match="reparameterized"):
        timm.create_model("repvgg_b1g2", pretrained=True, reparameterized=True)


def test_the_paper_config_names_a_known_backbone(project_root):
    import yaml

    config = yaml.safe_load((project_root / "examples" / "sixd_300wlp.yaml").read_text())
    assert timm.is_model(config["model"]["init_args"]["backbone"])
