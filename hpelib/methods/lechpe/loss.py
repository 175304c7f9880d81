"""LEC-HPE losses as small pure functions (Celestino et al., latent embedding clustering).

Notation: ``B`` samples, ``C`` bins per Euler angle (66), ``K`` clusters (10), ``D`` the
latent embedding size. Angles are degrees in the ``"300wlp"`` order (pitch, yaw, roll).

* Binned angles (HopeNet/LEC-HPE): ``C`` bins of ``width`` degrees starting at ``low``
  (edges ``range(-99, 102, 3)``); class = ``digitize(angle, edges) - 1``; angles outside
  ``[low, low + C * width)`` have no class.
* Expected angle, paper (centred) form: ``r * sum_i S_i (i - (1 + C) / 2)``, ``i = 1..C``,
  i.e. the softmax-weighted bin centres; HopeNet's released form uses the LEFT edge,
  ``r * sum_i S_i i' + low`` with ``i' = 0..C-1`` (a uniform softmax gives -1.5 degrees).
* ``L_angle = L_class + alpha * L_reg`` (cross-entropy + MSE of the expected angle).
* DEC clustering: ``q_ij = (1 + |l_i - c_j|^2 / a)^(-(a + 1) / 2)`` normalised over ``j``
  (Student's t kernel, ``a = 1`` in DEC and LEC-HPE); ``p_ij = (q_ij^2 / f_j)`` normalised
  over ``j`` with ``f_j = sum_i q_ij``; ``L_cluster = KL(P || Q) = sum_ij p_ij log(p_ij / q_ij)``
  (summed over the samples ``i`` as in the paper, or averaged: ``reduction``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hpelib.nn import masked_mean

__all__ = [
    "EXPECTATION_FORMS",
    "KL_REDUCTIONS",
    "angle_loss",
    "angle_to_bin",
    "bin_edges",
    "cluster_kl_loss",
    "expected_angle",
    "soft_assignment",
    "target_distribution",
]

#: ``"centered"``: the paper's ``r * sum S_i (i - (1 + C)/2)`` (bin centres, the default);
#: ``"left_edge"``: HopeNet's released ``3 * sum S_i i - 99`` (bin left edges).
EXPECTATION_FORMS: tuple[str, ...] = ("centered", "left_edge")
#: Reduction of ``KL(P || Q)`` over the samples: ``"sum"`` (the paper's ``sum_i sum_j``) or
#: ``"mean"`` (per sample: ``beta`` then does not depend on the batch size).
KL_REDUCTIONS: tuple[str, ...] = ("sum", "mean")


def bin_edges(num_bins: int = 66, width: float = 3.0, low: float = -99.0) -> Tensor:
    """``(num_bins + 1,)`` float64 bin edges; the default is ``range(-99, 102, 3)``."""
    return low + width * torch.arange(num_bins + 1, dtype=torch.float64)


def angle_to_bin(
    angles: Tensor, num_bins: int = 66, width: float = 3.0, low: float = -99.0
) -> tuple[Tensor, Tensor]:
    """Bin class of each angle (degrees) as the references compute it.

    ``class = numpy.digitize(angle, edges) - 1`` (``edges[c] <= angle < edges[c + 1]``).

    Args:
        angles: ``(...)`` degrees.

    Returns:
        ``(classes, valid)``, both ``(...)``: ``classes`` long in ``[0, num_bins)`` (0 where
        invalid), ``valid`` True where the angle lies in ``[low, low + num_bins * width)``.
    """
    edges = bin_edges(num_bins, width, low).to(angles.device)
    a = angles.detach().to(torch.float64)
    # torch.bucketize(right=True) is numpy.digitize(right=False): edges[i-1] <= a < edges[i] -> i.
    classes = torch.bucketize(a, edges, right=True) - 1
    valid = (classes >= 0) & (classes < num_bins) & torch.isfinite(a)
    return torch.where(valid, classes, torch.zeros_like(classes)), valid


def expected_angle(
    logits: Tensor, width: float = 3.0, low: float = -99.0, form: str = "centered"
) -> Tensor:
    """Softmax expectation of the binned angle, ``(..., C)`` logits -> ``(...)`` degrees.

    ``"centered"`` (paper): ``low + width * sum_i S_i (i' + 1/2)``, which for the symmetric
    range ``low = -width * C / 2`` is exactly ``r * sum_i S_i (i - (1 + C) / 2)``, ``i = 1..C``.
    ``"left_edge"`` (HopeNet code): ``low + width * sum_i S_i i'`` with ``i' = 0..C-1``.
    """
    if form not in EXPECTATION_FORMS:
        raise ValueError(f"expectation form={form!r} is not one of {EXPECTATION_FORMS}")
    num_bins = logits.shape[-1]
    index = torch.arange(num_bins, dtype=logits.dtype, device=logits.device)
    if form == "centered":
        index = index + 0.5
    probs = logits.softmax(dim=-1)
    return low + width * (probs * index).sum(dim=-1)


def angle_loss(
    logits: Tensor,
    angles: Tensor,
    mask: Tensor | None = None,
    alpha: float = 1.0,
    width: float = 3.0,
    low: float = -99.0,
    form: str = "centered",
) -> tuple[Tensor, Tensor, Tensor]:
    """``L_angle = L_class + alpha * L_reg`` summed over the Euler angles.

    Args:
        logits: ``(B, A, C)`` bin logits for ``A`` angles.
        angles: ``(B, A)`` label degrees; every angle of a selected sample must be in range
            (the caller masks or rejects the others: see :func:`angle_to_bin`).
        mask: ``(B,)`` samples that enter the loss (None: all).

    Returns:
        ``(loss, l_class, l_reg)``: scalars, each summed over the ``A`` angles and averaged
        over the selected samples (0 with a gradient path when none is selected).
    """
    b, a, c = logits.shape
    classes, valid = angle_to_bin(angles, c, width, low)
    selected = (
        torch.ones(b, dtype=torch.bool, device=logits.device) if mask is None else mask.bool()
    )
    if bool((selected[:, None] & ~valid).any()):
        bad = angles[selected[:, None].expand_as(valid) & ~valid]
        raise ValueError(
            f"angle_loss got labels outside [{low}, {low + c * width}) degrees for selected "
            f"samples (e.g. {bad[:4].tolist()}); mask them out before the cross-entropy"
        )
    ce = F.cross_entropy(logits.reshape(b * a, c), classes.reshape(b * a), reduction="none")
    l_class = masked_mean(ce.reshape(b, a).sum(dim=1), selected)
    pred = expected_angle(logits, width, low, form)
    l_reg = masked_mean(((pred - angles.to(pred.dtype)) ** 2).sum(dim=1), selected)
    return l_class + alpha * l_reg, l_class, l_reg


def soft_assignment(embeddings: Tensor, centroids: Tensor, dof: float = 1.0) -> Tensor:
    """DEC soft assignment ``(B, D), (K, D) -> q (B, K)``, rows summing to 1.

    ``q_ij = (1 + |l_i - c_j|^2 / dof)^(-(dof + 1) / 2) / sum_j' (...)``; with ``dof = 1``
    (DEC, LEC-HPE) this is ``(1 + |l_i - c_j|^2)^-1`` normalised over clusters. Computed
    from log-kernels with a softmax, so large distances never underflow to 0/0.
    """
    d2 = torch.cdist(embeddings, centroids.to(embeddings.dtype)).pow(2)
    log_kernel = -(dof + 1.0) / 2.0 * torch.log1p(d2 / dof)
    return log_kernel.softmax(dim=-1)


@torch.no_grad()
def target_distribution(q: Tensor, frequencies: Tensor | None = None, eps: float = 1e-12) -> Tensor:
    """DEC auxiliary target ``q (B, K) -> p (B, K)``, rows summing to 1, no gradient.

    ``p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j')`` with the soft cluster frequencies
    ``f_j = sum_i q_ij``: squaring sharpens each row, dividing by ``f_j`` stops large
    clusters from absorbing everything.

    Args:
        q: ``(B, K)`` soft assignments.
        frequencies: ``(K,)`` soft cluster frequencies ``f_j`` summed over more samples than
            ``q`` holds (under DDP: the global batch of all ranks); None: ``q.sum(0)``.
    """
    f = q.sum(dim=0) if frequencies is None else frequencies.to(q)
    weight = q.pow(2) / f[None, :].clamp_min(eps)
    return weight / weight.sum(dim=1, keepdim=True).clamp_min(eps)


def cluster_kl_loss(
    p: Tensor,
    q: Tensor,
    mask: Tensor | None = None,
    reduction: str = "sum",
    eps: float = 1e-12,
) -> Tensor:
    """``L_cluster = KL(P || Q) = sum_i sum_j p_ij log(p_ij / q_ij)``.

    Args:
        p: ``(B, K)`` target (no gradient), rows summing to 1.
        q: ``(B, K)`` soft assignments, rows summing to 1.
        mask: ``(B,)`` samples that count (None: all).
        reduction: over the samples ``i``: ``"sum"`` (the paper's and DEC's
            ``sum_i sum_j``) or ``"mean"`` (per-sample mean, which divides the term by the
            number of samples ``B``: ``beta`` under ``"mean"`` equals ``beta / B`` under
            ``"sum"``), see :data:`KL_REDUCTIONS`.

    Returns:
        Scalar ``>= 0``, exactly 0 when ``p == q``.
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"kl reduction={reduction!r} is not one of {KL_REDUCTIONS}")
    # One log-ratio per entry, so identical P and Q cancel exactly (xlogy(p, p) - p log q can
    # differ by rounding between the two kernels); empty target entries count 0 (0 log 0 = 0).
    log_ratio = torch.log(p.clamp_min(eps)) - torch.log(q.clamp_min(eps))
    per_sample = torch.where(p > 0, p * log_ratio, torch.zeros_like(p)).sum(dim=-1)
    if reduction == "mean":
        return masked_mean(per_sample, mask)
    if mask is None:
        return per_sample.sum()
    return torch.where(mask.bool(), per_sample, torch.zeros_like(per_sample)).sum()
