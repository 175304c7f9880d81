"""RankPose losses (Dai et al., 2020, Sec. 3.3) as small pure functions.

All angles are ``(B, 3)`` tensors (one column per Euler angle) in one unit (radians inside
hpelib; :class:`~hpelib.methods.rankpose.RankPose` can rescale to degrees as the released code
does). Masks are ``(B,)`` booleans selecting the samples (pairs) that have labels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hpelib.nn import masked_mean

__all__ = ["MSE_FORMS", "mse_loss", "ranking_loss", "rankpose_loss"]

#: How ``L_MSE`` reduces a pair batch, see :func:`rankpose_loss`.
MSE_FORMS: tuple[str, ...] = ("per_branch", "summed_angles")


def mse_loss(
    pred: Tensor, target: Tensor, mask: Tensor | None = None, reduce_angles: str = "sum"
) -> Tensor:
    """Squared error, reduced over the three angles (``"sum"``: ``||p - y||^2``; ``"mean"``:
    ``||p - y||^2 / 3``, ``torch.nn.MSELoss``) and averaged over the (masked) samples.
    ``pred, target: (B, 3) -> ()``."""
    if reduce_angles not in ("sum", "mean"):
        raise ValueError(f"reduce_angles must be 'sum' or 'mean', got {reduce_angles!r}")
    squared = (pred - target.to(pred.dtype)).pow(2)
    per_sample = squared.sum(dim=-1) if reduce_angles == "sum" else squared.mean(dim=-1)
    return masked_mean(per_sample, mask)


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


def _pair_mse(
    pred1: Tensor,
    target1: Tensor,
    pred2: Tensor,
    target2: Tensor,
    mask1: Tensor,
    mask2: Tensor,
    form: str,
) -> Tensor:
    """``L_MSE`` of a pair batch in one of :data:`MSE_FORMS` -> ``()``."""
    if form == "per_branch":
        return mse_loss(pred1, target1, mask1, "mean") + mse_loss(pred2, target2, mask2, "mean")
    return mse_loss(
        torch.cat([pred1, pred2]), torch.cat([target1, target2]), torch.cat([mask1, mask2])
    )


def rankpose_loss(
    pred1: Tensor,
    target1: Tensor,
    pred2: Tensor | None = None,
    target2: Tensor | None = None,
    mask1: Tensor | None = None,
    mask2: Tensor | None = None,
    *,
    mse_weight: float = 1.0,
    ranking_weight: float = 1.0,
    mse_form: str = "per_branch",
    margin: float = 0.0,
    absolute: bool = False,
    tie_tolerance: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``L = mse_weight * L_MSE + ranking_weight * L_ranking`` for the Siamese training.

    ``mse_form`` (one of :data:`MSE_FORMS`) sets ``L_MSE`` of a pair batch:

    * ``"per_branch"`` (default): ``MSE(p1, y1) + MSE(p2, y2)``, each the mean over the pairs
      and the three angles (``torch.nn.MSELoss``), one term per Siamese branch. This is the
      released code's ``Criterion`` (``angles_loss + 1 * rank_loss``), whose weights 1 : 1
      are the default ones.
    * ``"summed_angles"``: squared error summed over the three angles, averaged over all
      images of both branches, i.e. ``(MSE(p1, y1) + MSE(p2, y2)) * 3 / 2``. With
      ``mse_weight = beta``, ``ranking_weight = 1 - beta`` it is the
      ``beta * L_MSE + (1 - beta) * L_ranking`` form (``beta = 0.5``); the longer-training
      table of docs/methods/rankpose.md is measured with it.

    Without a second image (``pred2 is None``: validation/test batches) only
    ``mse_weight * MSE(p1, y1)`` (the form's one-branch MSE) is returned.

    Returns:
        ``(total, mse, ranking)``, ``ranking`` is None without pairs.
    """
    if mse_form not in MSE_FORMS:
        raise ValueError(f"mse_form must be one of {MSE_FORMS}, got {mse_form!r}")
    if mse_weight < 0 or ranking_weight < 0:
        raise ValueError(
            f"loss weights must be >= 0, got mse_weight={mse_weight}, ranking_weight={ranking_weight}"
        )
    if pred2 is None or target2 is None:
        mse = mse_loss(pred1, target1, mask1, "mean" if mse_form == "per_branch" else "sum")
        return mse_weight * mse, mse, None
    b = pred1.shape[0]
    ones = torch.ones(b, dtype=torch.bool, device=pred1.device)
    m1 = ones if mask1 is None else mask1.to(pred1.device).bool()
    m2 = ones if mask2 is None else mask2.to(pred1.device).bool()
    mse = _pair_mse(pred1, target1, pred2, target2, m1, m2, mse_form)
    rank = ranking_loss(pred1, pred2, target1, target2, m1 & m2, margin, absolute, tie_tolerance)
    return mse_weight * mse + ranking_weight * rank, mse, rank
