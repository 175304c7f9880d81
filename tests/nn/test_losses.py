"""Shared rotation losses: values against hand computations, masks, the name registry."""

from __future__ import annotations

import math

import pytest
import torch

import hpelib.rotation as hr
from hpelib.nn import ROTATION_LOSSES, chordal_loss, geodesic_loss, get_rotation_loss


def test_chordal_loss_equals_hand_computation():
    pred = hr.rotation_z(torch.tensor([0.0, math.pi / 2, math.pi], dtype=torch.float64))
    target = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    # ||R_z(t) - I||_F^2 = 4 (1 - cos t): 0, 4, 8
    assert chordal_loss(pred, target).item() == pytest.approx((0 + 4 + 8) / 3)
    assert geodesic_loss(pred, target).item() == pytest.approx((0 + math.pi / 2 + math.pi) / 3)


def test_chordal_loss_masks_samples_and_gradient_grows_with_error():
    target = torch.eye(3).expand(2, 3, 3)
    angles = torch.tensor([0.2, 2.0], requires_grad=True)
    loss = chordal_loss(hr.rotation_z(angles), target, torch.tensor([True, False]))
    assert loss.item() == pytest.approx(4 * (1 - math.cos(0.2)), rel=1e-5)
    # d/dt 4 (1 - cos t) = 4 sin t for the one sample in the mask; none for the other
    loss.backward()
    assert angles.grad[1].item() == 0.0
    assert angles.grad[0].item() == pytest.approx(4 * math.sin(0.2), rel=1e-5)


def test_rotation_loss_registry_by_name():
    assert get_rotation_loss("geodesic") is geodesic_loss
    assert get_rotation_loss("chordal") is chordal_loss
    assert set(ROTATION_LOSSES) == {"geodesic", "chordal"}
    with pytest.raises(ValueError, match="unknown rotation loss 'l1'.*chordal.*geodesic"):
        get_rotation_loss("l1")
