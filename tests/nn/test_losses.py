"""Shared rotation losses: values against hand computations, masks, the name registry."""

from __future__ import annotations

import math

import pytest
import torch

import hpelib.rotation as hr
from hpelib.nn import ROTATION_LOSSES, chordal_loss, geodesic_loss, get_rotation_loss, raw_mse_loss


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


def test_raw_mse_loss_hand_computation_mask_and_plain_gradient():
    """6D: the first two columns are the target; 9D (below): the whole matrix."""
    target = hr.rotation_z(torch.tensor([0.0, math.pi / 2], dtype=torch.float64))
    # Columns of R_z(t): c1 = (cos t, sin t, 0), c2 = (-sin t, cos t, 0).
    pred = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    loss = raw_mse_loss(pred, target)
    assert loss.item() == pytest.approx((0.0 + 2.0) / 2)  # the zero output misses by |c1|^2 + |c2|^2
    loss.backward()
    # A least-squares regression: d/dx mean ||x - t||^2 = 2 (x - t) / B, with no
    # orthonormalisation in between (its gradient would vanish along the output).
    expected = 2 * (pred.detach() - hr.rotation_to_6d(target)) / 2
    assert torch.allclose(pred.grad, expected)
    masked = raw_mse_loss(pred, target, torch.tensor([True, False]))
    assert masked.item() == 0.0
    with pytest.raises(ValueError, match=r"pred \(B, 6\) or \(B, 9\) and target \(B, 3, 3\).*\(2, 4\)"):
        raw_mse_loss(torch.zeros(2, 4), target)


def test_raw_mse_loss_9d_targets_the_whole_matrix_row_by_row():
    target = hr.rotation_z(torch.tensor([math.pi / 2], dtype=torch.float64))  # rows (0,-1,0), (1,0,0), (0,0,1)
    pred = torch.zeros(1, 9, dtype=torch.float64)
    pred[0, 1] = -1.0  # the (0, 1) entry right, the others 0
    assert raw_mse_loss(pred, target).item() == pytest.approx(2.0)  # misses (1, 0) and (2, 2)
    assert raw_mse_loss(hr.rotation_to_9d(target), target).item() == 0.0
