"""OpNet's losses as small pure functions, each returning one value per sample ``(B,)``.

The total is

    L = 1/B * sum_b [ sum_i alpha_i m_ib L_i(b) + beta_total * sum_i beta_i m_ib NLL_i(b) ]

with ``m_ib`` = sample ``b`` has the labels of term ``i`` (:func:`combine_losses`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import reduce

import torch
from torch import Tensor
from torch.distributions import Laplace, MultivariateNormal, Normal

from hpelib.rotation import (
    quaternion_canonical,
    quaternion_conjugate,
    quaternion_multiply,
    safe_norm,
)

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "DEFAULT_NLL_WEIGHTS",
    "DEFAULT_NLL_TOTAL_WEIGHT",
    "box_l2",
    "combine_losses",
    "diagonal_nll",
    "landmark_l1",
    "landmark_laplace_nll",
    "landmark_weights",
    "quaternion_distance",
    "quaternion_norm_penalty",
    "quaternion_rotation_vector",
    "rotation_nll",
    "gaussian_nll",
    "squared_error",
]

#: alpha_i: the released training script's weights (``train_poseestimator.py``).
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {
    "rot": 0.5, "xy": 0.25, "size": 0.25, "box": 0.01, "landmarks": 0.7, "shape": 0.05,
    "quat_norm": 1e-6,
}  # fmt: skip
#: beta_i of the NLL terms (same source).
DEFAULT_NLL_WEIGHTS: dict[str, float] = {
    "rot": 0.3, "coord": 0.3, "box": 0.01, "landmarks": 0.7, "shape": 0.05,
}  # fmt: skip
#: beta_total.
DEFAULT_NLL_TOTAL_WEIGHT: float = 0.01


def _at_least_float32(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors in their common dtype, at least float32.

    Under ``torch.autocast(dtype=torch.bfloat16)`` the heads emit bfloat16 while labels stay
    float32: ``torch.cross`` (quaternion product) then fails on the mixed dtypes and the
    triangular solve of ``MultivariateNormal`` has no bfloat16 CPU kernel; bfloat16's 8-bit
    mantissa would also flatten small rotation errors in the log-likelihood.
    """
    dtype = reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    return tuple(t.to(dtype) for t in tensors)


def quaternion_distance(pred: Tensor, target: Tensor) -> Tensor:
    """``L_rot = 1 - (q_hat . q)^2`` for unit quaternions ``(B, 4)`` -> ``(B,)``.

    Invariant to the sign of either quaternion; ``= sin^2(theta / 2)`` for a relative
    rotation angle ``theta``.
    """
    return 1.0 - (pred * target).sum(-1).square()


def quaternion_norm_penalty(raw: Tensor) -> Tensor:
    """``(1 - |q'|)^2`` of the unnormalised quaternion ``(B, 4)`` -> ``(B,)`` (keeps the raw
    output near the unit sphere so normalisation stays well conditioned)."""
    return (1.0 - raw.norm(dim=-1)).square()


def quaternion_rotation_vector(q: Tensor) -> Tensor:
    """Rotation vector ``(B, 3)`` (axis * angle, angle in [0, pi]) of unit quaternions
    ``(B, 4)`` (x, y, z, w), i.e. ``2 Im log(q)``; finite gradient at the identity."""
    q = quaternion_canonical(q)
    v, w = q[..., :3], q[..., 3:]
    n = safe_norm(v, keepdim=True)
    small = n < 1e-6
    n_safe = torch.where(small, torch.ones_like(n), n)
    # angle / sin(angle / 2) -> 2 / w as the angle goes to 0.
    scale = torch.where(small, 2.0 / w.clamp_min(1e-6), 2.0 * torch.atan2(n_safe, w) / n_safe)
    return scale * v


def rotation_nll(pred_quat: Tensor, target_quat: Tensor, scale_tril: Tensor) -> Tensor:
    """``NLL_rot = -log N(r; 0, Sigma)``, ``r = 2 Im log(q_hat^-1 q)`` -> ``(B,)``.

    ``r`` is the rotation vector of the error in the predicted head frame; ``Sigma =
    scale_tril @ scale_tril^T`` ``(B, 3, 3)``. The paper writes ``Im log`` (half the
    rotation vector); the factor 2 only rescales the learned covariance by 4. Evaluated in
    at least float32 (bfloat16 inputs under autocast are upcast).
    """
    pred_quat, target_quat, scale_tril = _at_least_float32(pred_quat, target_quat, scale_tril)
    delta = quaternion_multiply(quaternion_conjugate(pred_quat), target_quat)
    r = quaternion_rotation_vector(delta)
    dist = MultivariateNormal(torch.zeros_like(r), scale_tril=scale_tril, validate_args=False)
    return -dist.log_prob(r)


def gaussian_nll(pred: Tensor, target: Tensor, scale_tril: Tensor) -> Tensor:
    """``-log N(target; pred, L L^T)`` for ``(B, D)`` vectors and ``(B, D, D)`` factors,
    evaluated in at least float32 (see :func:`rotation_nll`)."""
    pred, target, scale_tril = _at_least_float32(pred, target, scale_tril)
    return -MultivariateNormal(pred, scale_tril=scale_tril, validate_args=False).log_prob(target)


def squared_error(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over the last dimension ``(B, D) -> (B,)``."""
    return (pred - target).square().mean(-1)


box_l2 = squared_error


def diagonal_nll(pred: Tensor, target: Tensor, scale: Tensor) -> Tensor:
    """Mean over ``D`` of ``-log Normal(target; pred, scale)`` for ``(B, D)`` -> ``(B,)``
    (box and shape parameters, with an input-independent learned ``scale``)."""
    return -Normal(pred, scale, validate_args=False).log_prob(target).mean(-1)


def landmark_weights(jaw: float = 0.8, eye_centre: float = 0.0, num_points: int = 68) -> Tensor:
    """Per-landmark weights ``(68,)`` (MultiPIE-68 order): the jaw outline except the chin
    tip gets ``jaw`` (reference 0.8); the eye points that are not corners (37, 38, 40, 41,
    43, 44, 46, 47) get ``eye_centre`` (0: their 3D position is ill-defined across
    datasets); everything else 1."""
    if num_points != 68:
        raise ValueError(f"landmark weights are defined for 68 points, got {num_points}")
    w = torch.ones(68)
    jaw_idx = [i for i in range(17) if i != 8]
    w[jaw_idx] = jaw
    w[[37, 38, 40, 41, 43, 44, 46, 47]] = eye_centre
    return w


def _weighted_point_mean(values: Tensor, weights: Tensor, dim_mask: Tensor) -> Tensor:
    m = dim_mask.to(values.dtype) * weights[None, :, None].to(values.dtype)
    return (values * m).sum((-2, -1)) / m.sum((-2, -1)).clamp_min(1e-12)


def landmark_l1(pred: Tensor, target: Tensor, weights: Tensor, dim_mask: Tensor) -> Tensor:
    """Weighted L1 ``(B, 68, 3)`` -> ``(B,)``, averaged over the labelled coordinates
    (``dim_mask (B, 68, 3)``: False for the depth of 2D-only labels and for invisible 2D
    points) with per-landmark ``weights (68,)``."""
    return _weighted_point_mean((pred - target).abs(), weights, dim_mask)


def landmark_laplace_nll(
    pred: Tensor, target: Tensor, scale: Tensor, weights: Tensor, dim_mask: Tensor
) -> Tensor:
    """Weighted Laplace NLL ``-log Laplace(target; pred, scale)`` ``(B, 68, 3)`` -> ``(B,)``."""
    nll = -Laplace(pred, scale, validate_args=False).log_prob(target)
    return _weighted_point_mean(nll, weights, dim_mask)


def combine_losses(
    terms: Mapping[str, tuple[Tensor, Tensor]],
    nll_terms: Mapping[str, tuple[Tensor, Tensor]],
    weights: Mapping[str, float],
    nll_weights: Mapping[str, float],
    nll_total_weight: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The total loss over per-sample terms ``{name: (values (B,), mask (B,))}``.

    Returns the total (sum over samples divided by the full batch size ``B``, so a masked
    sample contributes 0) and, for logging, each term's mean over its labelled samples.
    """
    total: Tensor | None = None
    parts: dict[str, Tensor] = {}
    for prefix, group, w, scale in (
        ("", terms, weights, 1.0),
        ("nll_", nll_terms, nll_weights, nll_total_weight),
    ):
        for name, (values, mask) in group.items():
            m = mask.to(values.dtype)
            # where() rather than a product: an unlabelled sample's value may be inf/NaN
            # (e.g. a NLL at a placeholder label) and must not poison the sum or gradient.
            masked = torch.where(mask, values, torch.zeros_like(values))
            contribution = scale * w[name] * masked.sum() / values.shape[0]
            total = contribution if total is None else total + contribution
            parts[f"{prefix}{name}"] = (masked.sum() / m.sum().clamp_min(1.0)).detach()
    if total is None:
        raise ValueError("combine_losses got no loss terms")
    return total, parts
