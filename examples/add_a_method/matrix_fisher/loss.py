"""Negative log-likelihood of the matrix Fisher distribution on SO(3).

``p(R | F) = exp(tr(F^T R)) / c(F)`` with respect to the uniform (Haar) measure, so
``c(0) = 1``. With the proper SVD ``F = U diag(s) V^T`` (``U, V`` rotations, ``s1 >= s2 >=
|s3|``) the mode is ``U V^T`` and the normaliser depends on ``s`` only (Mohlin et al. 2020):

    c(s) = integral over u in [-1, 1] of
           1/2 I0((s1 - s2)(1 - u) / 2) I0((s1 + s2)(1 + u) / 2) exp(s3 u) du
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hpelib.nn import masked_mean

__all__ = ["log_normalizer", "matrix_fisher_nll", "proper_svd"]

#: Quadrature nodes of the normaliser's integral (enough for concentrations up to ~1e4).
QUADRATURE_POINTS = 513


def proper_svd(fisher: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``F (..., 3, 3) -> (U, s, V)`` with ``F = U diag(s) V^T``, ``U, V`` rotations and
    ``s (..., 3)`` sorted, ``s3`` negative where ``det F < 0``."""
    u, s, vh = torch.linalg.svd(fisher)
    # Move a reflection of U or V into the smallest singular value.
    sign = torch.linalg.det(u) * torch.linalg.det(vh)
    u = torch.cat([u[..., :2], u[..., 2:] * sign[..., None, None]], dim=-1)
    s = torch.cat([s[..., :2], s[..., 2:] * sign[..., None]], dim=-1)
    return u, s, vh.transpose(-1, -2)


def _log_normalizer_and_grad(s: Tensor) -> tuple[Tensor, Tensor]:
    """``log c(s)`` and its gradient ``d log c / ds`` for proper singular values ``s (..., 3)``.

    The gradient is written out, not left to autograd: with the exponential factored out of
    ``I0`` (below), autograd would differentiate ``i0e`` at 0 with ``sign(0) = 0`` and get the
    gradient wrong wherever an argument is 0 (at ``F = 0``, and wherever ``s1 = s2``).
    """
    # u = 1 - 2 t^2 puts the nodes close together near u = 1, where the integrand peaks for
    # concentrated distributions (width ~ 1 / (s2 + s3)).
    t = torch.linspace(0.0, 1.0, QUADRATURE_POINTS, dtype=s.dtype, device=s.device)
    u = 1.0 - 2.0 * t.square()
    s1, s2, s3 = (x[..., None] for x in s.unbind(-1))
    a = (s1 - s2) * (1.0 - u) / 2.0  # >= 0
    b = (s1 + s2) * (1.0 + u) / 2.0  # >= 0
    # I0(x) = i0e(x) exp(x) for x >= 0, and a + b + s3 u = s1 + s2 + s3 + (s2 + s3)(u - 1):
    # the exponential factored out is exact and the rest is <= 1 (no overflow for large s).
    i0e_a, i0e_b = torch.special.i0e(a), torch.special.i0e(b)
    di0e_a = torch.special.i1e(a) - i0e_a  # d i0e(x) / dx for x >= 0
    di0e_b = torch.special.i1e(b) - i0e_b
    scale = 0.5 * torch.exp((s2 + s3) * (u - 1.0)) * 4.0 * t  # du = -4 t dt
    ab = i0e_a * i0e_b

    def integrate(values: Tensor) -> Tensor:
        return torch.trapezoid(values * scale, t, dim=-1)

    integral = integrate(ab)
    d_s1 = integrate(di0e_a * i0e_b * (1.0 - u) / 2.0 + i0e_a * di0e_b * (1.0 + u) / 2.0)
    d_s2 = integrate(-di0e_a * i0e_b * (1.0 - u) / 2.0 + i0e_a * di0e_b * (1.0 + u) / 2.0 + ab * (u - 1.0))
    d_s3 = integrate(ab * (u - 1.0))
    log_c = s.sum(dim=-1) + torch.log(integral)
    grad = 1.0 + torch.stack([d_s1, d_s2, d_s3], dim=-1) / integral[..., None]
    return log_c, grad


class _LogNormalizer(torch.autograd.Function):
    """``log c(F)`` whose gradient ``U diag(d log c / ds) V^T`` avoids backpropagating
    through the SVD (unstable where singular values coincide, e.g. at ``F = 0``)."""

    @staticmethod
    def forward(ctx: Any, fisher: Tensor) -> Tensor:
        u, s, v = proper_svd(fisher)
        log_c, grad_s = _log_normalizer_and_grad(s)
        ctx.save_for_backward(u @ torch.diag_embed(grad_s) @ v.transpose(-1, -2))
        return log_c

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (grad_fisher,) = ctx.saved_tensors
        return grad_output[..., None, None] * grad_fisher


def log_normalizer(fisher: Tensor) -> Tensor:
    """``log c(F)``: ``(..., 3, 3) -> (...)``, with a gradient that is finite everywhere."""
    return _LogNormalizer.apply(fisher)


def matrix_fisher_nll(fisher: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood ``log c(F) - tr(F^T R)`` of the labels.

    Args:
        fisher: ``(B, 3, 3)`` distribution parameters ``F``.
        target: ``(B, 3, 3)`` label rotations (hpelib's internal convention).
        mask: optional ``(B,)``, the samples that have a rotation label.

    Returns:
        Scalar loss (0 for the uniform distribution ``F = 0``; negative when the labels are
        more likely than under the uniform distribution).
    """
    fisher = fisher.float()  # the integral in float32 even under bf16/fp16 autocast
    per_sample = log_normalizer(fisher) - (fisher * target.to(fisher.dtype)).sum(dim=(-2, -1))
    return masked_mean(per_sample, mask)
