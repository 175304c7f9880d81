"""RankPose losses (Dai et al., 2020, Sec. 3.3) as small pure functions.

All angles are ``(B, 3)`` tensors (one column per Euler angle) in one unit (radians inside
hpelib; :class:`~hpelib.methods.rankpose.RankPose` can rescale to degrees as the released code
does). Masks are ``(B,)`` booleans selecting the samples (pairs) that have labels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hpelib.nn import masked_mean

__all__ = ["mse_loss", "ranking_loss", "rankpose_loss"]


def mse_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """``L_MSE = 1/N sum_i ||p_i - y_i||^2``: squared error summed over the three angles,
    averaged over the (masked) samples. ``pred, target: (B, 3) -> ()``."""
    return masked_mean((pred - target.to(pred.dtype)).pow(2).sum(dim=-1), mask)


def ranking_loss(
    pred1: Tensor,
    pred2: Tensor,
    target1: Tensor,
    target2: Tensor,
    mask: Tensor | None = None,
    margin: float = 0.0,
    absolute: bool = False,
    tie_tolerance: float = 0.0,
) -> Tensor:
    """Pairwise ranking hinge, summed over angles and averaged over the (masked) pairs.

    Paper: ``L_ranking = sum_{k in yaw, pitch, roll} max(0, -sgn(y2_k - y1_k) (p2_k - p1_k))``.
    With ``margin = m`` each term is ``max(0, m - sgn(y2_k - y1_k) (p2_k - p1_k))``, applied only
    where the labels differ (``|y2_k - y1_k| > tie_tolerance``): a tie has no order to learn,
    so it contributes 0 (without this, ``torch.nn.MarginRankingLoss`` would add a constant
    ``m`` for every tie).

    ``absolute=True`` is the released code (``MarginRankingLoss(|p1|, |p2|, sgn(y1 - y2))``):
    it ranks ``|p|`` with the sign of the *signed* labels, which asks for the wrong order
    whenever the two labels have opposite signs; the paper's form (default) ranks ``p``.

    Args:
        pred1, pred2: ``(B, 3)`` predictions of the two images of each pair.
        target1, target2: ``(B, 3)`` their labels.
        mask: ``(B,)`` pairs to count (both images labelled).

    Returns:
        ``()`` loss; exactly 0 when every pair's predictions are ordered like its labels
        (with ``margin = 0``) or when all labels tie.
    """
    diff_target = (target2 - target1).to(pred1.dtype)
    order = torch.sign(diff_target) * (diff_target.abs() > tie_tolerance)
    if absolute:
        pred1, pred2 = pred1.abs(), pred2.abs()
    hinge = torch.relu(margin - order * (pred2 - pred1)) * (order != 0)
    return masked_mean(hinge.sum(dim=-1), mask)


def rankpose_loss(
    pred1: Tensor,
    target1: Tensor,
    pred2: Tensor | None = None,
    target2: Tensor | None = None,
    mask1: Tensor | None = None,
    mask2: Tensor | None = None,
    beta: float = 0.5,
    margin: float = 0.0,
    absolute: bool = False,
    tie_tolerance: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``L = beta * L_MSE + (1 - beta) * L_ranking`` (paper eq. for the Siamese training).

    ``L_MSE`` is over both images of every pair (each image is a labelled sample);
    ``L_ranking`` over the pairs whose two images are labelled. Without a second image
    (``pred2 is None``: validation/test batches) only ``beta * L_MSE`` is returned.

    Returns:
        ``(total, mse, ranking)``, ``ranking`` is None without pairs.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if pred2 is None or target2 is None:
        mse = mse_loss(pred1, target1, mask1)
        return beta * mse, mse, None
    preds = torch.cat([pred1, pred2])
    targets = torch.cat([target1, target2])
    b = pred1.shape[0]
    ones = torch.ones(b, dtype=torch.bool, device=pred1.device)
    m1 = ones if mask1 is None else mask1.to(pred1.device).bool()
    m2 = ones if mask2 is None else mask2.to(pred1.device).bool()
    mse = mse_loss(preds, targets, torch.cat([m1, m2]))
    rank = ranking_loss(pred1, pred2, target1, target2, m1 & m2, margin, absolute, tie_tolerance)
    return beta * mse + (1.0 - beta) * rank, mse, rank
