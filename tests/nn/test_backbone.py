"""Backbone factory: the reported feature width is the width the module really outputs."""

from __future__ import annotations

import pytest
import torch

from hpelib.methods import SixD
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
