"""Rotation heads: raw outputs, their maps onto SO(3), autocast, names."""

from __future__ import annotations

import pytest
import torch

import hpelib.rotation as hr
from hpelib.nn import ROTATION_REPRESENTATIONS, RotationHead, SixDHead


@pytest.mark.parametrize(("representation", "size"), [("6d", 6), ("9d", 9)])
def test_rotation_head_raw_output_and_rotation(representation, size):
    torch.manual_seed(0)
    head = RotationHead(16, representation)
    features = torch.randn(5, 16)
    raw = head.forward_raw(features)
    assert raw.shape == (5, size)
    rotation = head(features)
    assert rotation.shape == (5, 3, 3)
    assert hr.is_rotation_matrix(rotation, atol=1e-5).all()
    expected = hr.rotation_from_6d(raw) if size == 6 else hr.rotation_from_9d(raw)
    assert torch.allclose(rotation, expected)
    assert ROTATION_REPRESENTATIONS[representation][0] == size


@pytest.mark.parametrize("representation", ["6d", "9d"])
def test_rotation_head_maps_in_float32_under_bf16_autocast(representation):
    head = RotationHead(16, representation)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        raw, rotation = head.forward_raw(torch.randn(3, 16)), head(torch.randn(3, 16))
    assert raw.dtype == rotation.dtype == torch.float32
    assert hr.is_rotation_matrix(rotation, atol=1e-5).all()


def test_sixd_head_keeps_its_parameter_names_and_unknown_name_errors():
    # Checkpoints written before RotationHead existed hold "head.linear.*": still loadable.
    assert set(SixDHead(8).state_dict()) == {"linear.weight", "linear.bias"}
    assert SixDHead(8).representation == "6d"
    with pytest.raises(ValueError, match="unknown rotation representation '6D'.*'6d', '6drepnet', '9d'"):
        RotationHead(8, "6D")
