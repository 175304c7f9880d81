"""LEC-HPE network (pure nn.Module): timm backbone -> latent embedding -> three binned
Euler-angle branches, plus the DEC clustering layer holding the learnable centroids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hpelib.methods.lechpe.loss import soft_assignment
from hpelib.nn import create_backbone

__all__ = ["ClusteringLayer", "LECHPENet"]


class ClusteringLayer(nn.Module):
    """``K`` learnable centroids ``c_j`` in the latent space (DEC).

    ``forward(embeddings (B, D)) -> q (B, K)`` (:func:`~hpelib.methods.lechpe.loss.soft_assignment`).
    The centroids start at 0 and are meant to be set by k-means on real embeddings
    (:class:`hpelib.callbacks.KMeansCentroidInit`) before the clustering loss is used.
    """

    def __init__(self, num_clusters: int, dim: int, dof: float = 1.0) -> None:
        super().__init__()
        if num_clusters < 1:
            raise ValueError(f"num_clusters={num_clusters} must be >= 1")
        if dof <= 0:
            raise ValueError(f"dof={dof} (Student's t degrees of freedom) must be > 0")
        self.dof = float(dof)
        self.centroids = nn.Parameter(torch.zeros(num_clusters, dim))

    def forward(self, embeddings: Tensor) -> Tensor:
        return soft_assignment(embeddings, self.centroids, self.dof)


class LECHPENet(nn.Module):
    """``forward(images (B, 3, H, W)) -> {"embedding": (B, D), "logits": (B, 3, C), "q": (B, K)}``.

    The three branches are, in order, pitch, yaw and roll (the ``"300wlp"`` Euler order of
    :mod:`hpelib.rotation`); each is one linear layer to ``num_bins`` logits, as in HopeNet
    and LEC-HPE.

    Args:
        backbone: timm model name (LEC-HPE uses ``resnet50``).
        pretrained: ImageNet weights through timm (needs network access or a warm cache).
        backbone_weights: local backbone weights instead of a download.
        embedding_dim: size of an extra linear projection of the pooled backbone features;
            ``None`` (default) uses the pooled features themselves as the latent embedding.
        num_bins: logits per angle (66).
        num_clusters: DEC centroids ``K`` (10).
        dof: Student's t degrees of freedom of the soft assignment (1, as in DEC).
        backbone_kwargs: further timm constructor arguments of the backbone (see
            :func:`hpelib.nn.create_backbone`).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        embedding_dim: int | None = None,
        num_bins: int = 66,
        num_clusters: int = 10,
        dof: float = 1.0,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"num_bins={num_bins} must be >= 2")
        self.backbone, num_features = create_backbone(
            backbone, pretrained, backbone_weights, **(backbone_kwargs or {})
        )
        if embedding_dim is None:
            self.embed: nn.Module = nn.Identity()
            self.embedding_dim = num_features
        else:
            if embedding_dim < 1:
                raise ValueError(f"embedding_dim={embedding_dim} must be >= 1 or None")
            self.embed = nn.Linear(num_features, embedding_dim)
            self.embedding_dim = int(embedding_dim)
        self.num_bins = int(num_bins)
        self.angle_heads = nn.ModuleList(nn.Linear(self.embedding_dim, num_bins) for _ in range(3))
        self.clustering = ClusteringLayer(num_clusters, self.embedding_dim, dof)

    def embedding(self, images: Tensor) -> Tensor:
        """Latent embeddings ``l_i``: ``(B, 3, H, W) -> (B, D)``."""
        return self.embed(self.backbone(images))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        z = self.embedding(images)
        logits = torch.stack([head(z) for head in self.angle_heads], dim=1)
        return {"embedding": z, "logits": logits, "q": self.clustering(z)}
