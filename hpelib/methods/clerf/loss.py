"""CLERF's contrastive objective: geodesic positives, margin-mined negatives, Circle loss.

Notation (paper, Sec. 3): two samples with rotations ``R``, ``R'`` are a positive pair when
their geodesic similarity ``cos d(R, R') = (tr(R R'^T) - 1) / 2`` exceeds ``T_GD`` (0.8, i.e.
``d < 36.9`` degrees); every other pair is negative. Triplets ``(a, p, n)`` are kept when the
negative violates the margin ``v`` (0.1) in embedding space (hard and semi-hard negatives),
and the Circle loss (Sun et al., m = 0.4, gamma = 80) of pytorch-metric-learning is applied
to exactly those triplets through its ``indices_tuple`` argument: class labels never enter.

The mining distance is Euclidean, as in the paper (pytorch-metric-learning's ``LpDistance``:
L2 distance of L2-normalised embeddings, the default distance of its ``TripletMarginMiner``);
``cosine`` (``CosineSimilarity``, the Circle loss's own similarity) is a named option.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_metric_learning.distances import BaseDistance, CosineSimilarity, LpDistance
from pytorch_metric_learning.losses import CircleLoss
from torch import Tensor, nn

__all__ = [
    "MINING_DISTANCES",
    "TRIPLET_TYPES",
    "CLERFContrastiveLoss",
    "geodesic_cosine",
    "mine_triplets",
    "mining_distance",
    "pair_masks",
]

#: Negative selection of :func:`mine_triplets` (pytorch-metric-learning's TripletMarginMiner
#: vocabulary): ``all`` = hard + semi-hard (every triplet violating the margin, the paper's
#: setting), ``hard`` = negative closer than the positive, ``semihard`` = negative farther
#: than the positive but within the margin.
TRIPLET_TYPES: tuple[str, ...] = ("all", "hard", "semihard")

#: Embedding distances of the negative mining: ``euclidean`` (the paper's; ``LpDistance()``,
#: L2 on normalised embeddings) or ``cosine`` (``CosineSimilarity()``: the same ordering of
#: pairs, since ``|a - b|^2 = 2 - 2 cos`` for unit vectors, but the margin ``v`` is measured
#: in cosine instead of Euclidean units, so it keeps a different set of triplets).
MINING_DISTANCES: tuple[str, ...] = ("euclidean", "cosine")


def mining_distance(name: str) -> BaseDistance:
    """The pytorch-metric-learning distance named ``name`` (one of :data:`MINING_DISTANCES`)."""
    if name == "euclidean":
        return LpDistance()
    if name == "cosine":
        return CosineSimilarity()
    raise ValueError(f"mining distance={name!r} is not one of {MINING_DISTANCES}")


def geodesic_cosine(rotations: Tensor, others: Tensor | None = None) -> Tensor:
    """Cosine of the geodesic distance between every pair of rotations.

    ``cos d(R_i, R_j) = (tr(R_i R_j^T) - 1) / 2`` (no ``acos``: exact and cheap).

    Args:
        rotations: ``(N, 3, 3)``.
        others: ``(M, 3, 3)``; defaults to ``rotations``.

    Returns:
        ``(N, M)`` in ``[-1, 1]``.
    """
    others = rotations if others is None else others
    trace = torch.einsum("nij,mij->nm", rotations, others.to(rotations.dtype))
    return ((trace - 1.0) / 2.0).clamp(-1.0, 1.0)


def pair_masks(
    rotations: Tensor, threshold: float = 0.8, valid: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Positive and negative pair masks from rotation labels (CLERF's ``T_GD`` rule).

    Args:
        rotations: ``(N, 3, 3)`` labels (anchors and generated positives together).
        threshold: ``T_GD``; ``(i, j)`` is positive iff ``cos d(R_i, R_j) > threshold``.
        valid: optional ``(N,)`` bool; samples without a label take part in no pair.

    Returns:
        ``(positive (N, N), negative (N, N))`` bool masks, both False on the diagonal and
        disjoint.
    """
    if not -1.0 <= threshold < 1.0:
        raise ValueError(f"threshold T_GD must be in [-1, 1), got {threshold}")
    n = rotations.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=rotations.device)
    pair_ok = ~eye
    if valid is not None:
        valid = valid.to(rotations.device).bool()
        pair_ok = pair_ok & valid[:, None] & valid[None, :]
    similar = geodesic_cosine(rotations) > threshold
    return similar & pair_ok, ~similar & pair_ok


def mine_triplets(
    embeddings: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 0.1,
    type_of_triplets: str = "all",
    distance: BaseDistance | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Margin-violating triplets ``(a, p, n)`` under given pair masks.

    The rule of pytorch-metric-learning's ``TripletMarginMiner`` (which only knows class
    labels) applied to arbitrary positive/negative masks: with the embedding distance ``D``
    (for a similarity ``S`` such as cosine, ``D`` is replaced by ``-S``), the triplet margin
    is ``D(a, n) - D(a, p)``; a triplet is kept when it is ``<= margin`` (``all``), and
    additionally ``<= 0`` (``hard``) or ``> 0`` (``semihard``).

    Args:
        embeddings: ``(N, F)``.
        positive, negative: ``(N, N)`` bool pair masks (e.g. from :func:`pair_masks`).
        margin: ``v`` (0.1 in the paper).
        type_of_triplets: one of :data:`TRIPLET_TYPES`.
        distance: a pytorch-metric-learning distance (default ``LpDistance()``, the
            paper's Euclidean distance and ``TripletMarginMiner``'s default).

    Returns:
        three ``(T,)`` int64 tensors of anchor, positive and negative indices.
    """
    if type_of_triplets not in TRIPLET_TYPES:
        raise ValueError(f"type_of_triplets={type_of_triplets!r} is not one of {TRIPLET_TYPES}")
    distance = LpDistance() if distance is None else distance
    with torch.no_grad():
        mat = distance(embeddings.detach())
        a, p, n = torch.nonzero(positive[:, :, None] & negative[:, None, :], as_tuple=True)
        ap, an = mat[a, p], mat[a, n]
        triplet_margin = ap - an if distance.is_inverted else an - ap
        keep = triplet_margin <= margin
        if type_of_triplets == "hard":
            keep &= triplet_margin <= 0
        elif type_of_triplets == "semihard":
            keep &= triplet_margin > 0
    return a[keep], p[keep], n[keep]


class CLERFContrastiveLoss(nn.Module):
    """``T_GD`` positives + margin mining + Circle loss (pytorch-metric-learning).

    ``forward(embeddings (N, F), rotations (N, 3, 3), valid (N,) | None) -> (loss, stats)``
    where ``stats`` holds the number of positive pairs and mined triplets (floats, for logging).

    Args:
        threshold: ``T_GD`` (0.8).
        margin: mining margin ``v`` (0.1).
        type_of_triplets: see :data:`TRIPLET_TYPES` (``all`` = hard + semi-hard).
        m, gamma: Circle loss relaxation and scale (0.4, 80).
        distance: embedding distance of the mining, one of :data:`MINING_DISTANCES`
            (``euclidean``, the paper's); the Circle loss itself always uses cosine similarity.
    """

    def __init__(
        self,
        threshold: float = 0.8,
        margin: float = 0.1,
        type_of_triplets: str = "all",
        m: float = 0.4,
        gamma: float = 80.0,
        distance: str = "euclidean",
    ) -> None:
        super().__init__()
        if type_of_triplets not in TRIPLET_TYPES:
            raise ValueError(f"type_of_triplets={type_of_triplets!r} is not one of {TRIPLET_TYPES}")
        if not -1.0 <= threshold < 1.0:
            raise ValueError(f"threshold T_GD must be in [-1, 1), got {threshold}")
        self.threshold, self.margin, self.type_of_triplets = threshold, margin, type_of_triplets
        self.distance = mining_distance(distance)
        self.circle = CircleLoss(m=m, gamma=gamma, distance=CosineSimilarity())

    def indices_tuple(
        self, embeddings: Tensor, rotations: Tensor, valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The triplets handed to the Circle loss (see :func:`pair_masks`, :func:`mine_triplets`)."""
        positive, negative = pair_masks(rotations, self.threshold, valid)
        return mine_triplets(
            embeddings, positive, negative, self.margin, self.type_of_triplets, self.distance
        )

    def forward(
        self, embeddings: Tensor, rotations: Tensor, valid: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        triplets = self.indices_tuple(embeddings, rotations, valid)
        loss = self.circle(embeddings, indices_tuple=triplets)
        if not isinstance(loss, Tensor) or not loss.requires_grad:
            # No triplet violates the margin: a zero that still has a graph (DDP needs one).
            loss = embeddings.sum() * 0.0 + (loss if isinstance(loss, Tensor) else 0.0)
        return loss, {"num_triplets": float(triplets[0].numel())}
