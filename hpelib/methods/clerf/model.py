"""CLERF networks (pure ``nn.Module``, no Lightning): the encoder ``E`` and the pose MLP.

Paper (Wei et al., CLERF): ``E`` is a Swin Transformer V2 Base whose pooled 1024-d feature is
the representation learned by the contrastive stage; the pose head is an MLP of four
256-unit layers with a skip connection from its input to its last layer, regressing the 6D
representation that Gram-Schmidt turns into a rotation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from hpelib.nn import MLP, create_backbone
from hpelib.rotation import rotation_from_6d

__all__ = ["CLERFEncoder", "CLERFNet", "PoseMLP"]


class CLERFEncoder(nn.Module):
    """Encoder ``E``: timm backbone (global pooled features) -> optional linear projection.

    ``forward(images (B, 3, H, W)) -> (B, embedding_dim)`` embeddings (not normalised: the
    Circle loss uses cosine similarity, which normalises).

    Args:
        backbone: any timm model name; the paper uses ``swinv2_base_window8_256`` (1024
            features), ``resnet50``, ``efficientnet_b0`` and small models work the same way.
        embedding_dim: size of the representation (1024 in the paper). ``None`` or a value
            equal to the backbone's feature size uses the pooled features directly (the
            paper's setting for Swin V2 Base); otherwise a linear projection is added.
        pretrained: timm ImageNet weights (needs network or a warm cache).
        backbone_weights: local backbone weights instead of a download.
        drop_rate: dropout before the (removed) classifier.
        backbone_kwargs: further timm constructor arguments of the backbone (see
            :func:`hpelib.nn.create_backbone`).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        embedding_dim: int | None = 1024,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        drop_rate: float = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if embedding_dim is not None and embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be a positive int or None, got {embedding_dim}")
        self.backbone, num_features = create_backbone(
            backbone, pretrained, backbone_weights, drop_rate=drop_rate, **(backbone_kwargs or {})
        )
        if embedding_dim is None or embedding_dim == num_features:
            self.projection: nn.Module = nn.Identity()
            self.embedding_dim = num_features
        else:
            self.projection = nn.Linear(num_features, embedding_dim)
            self.embedding_dim = int(embedding_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.projection(self.backbone(images))


class PoseMLP(nn.Module):
    """CLERF's pose head: ``depth`` x ``hidden`` ReLU layers, input skip to the last layer,
    linear 6D output, Gram-Schmidt (6DRepNet's construction, :func:`rotation_from_6d`).

    ``forward(embeddings (B, F)) -> (B, 3, 3)`` rotations in hpelib's internal convention.
    """

    def __init__(
        self, in_features: int, hidden: int = 256, depth: int = 4, input_skip: bool = True
    ) -> None:
        super().__init__()
        if hidden <= 0 or depth <= 0:
            raise ValueError(f"PoseMLP needs hidden > 0 and depth > 0, got hidden={hidden}, depth={depth}")
        self.mlp = MLP(in_features, hidden, depth, 6, input_skip=input_skip)

    def forward(self, embeddings: Tensor) -> Tensor:
        return rotation_from_6d(self.mlp(embeddings).float())  # float32 under autocast


class CLERFNet(nn.Module):
    """Encoder + pose head. ``forward(images) -> (embedding (B, F), rotation (B, 3, 3))``.

    Args:
        backbone, embedding_dim, pretrained, backbone_weights, drop_rate, backbone_kwargs: see
            :class:`CLERFEncoder`.
        head_hidden, head_depth, head_input_skip: see :class:`PoseMLP` (paper: 256, 4, True).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        embedding_dim: int | None = 1024,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        drop_rate: float = 0.0,
        head_hidden: int = 256,
        head_depth: int = 4,
        head_input_skip: bool = True,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = CLERFEncoder(
            backbone, embedding_dim, pretrained, backbone_weights, drop_rate, backbone_kwargs
        )
        self.head = PoseMLP(self.encoder.embedding_dim, head_hidden, head_depth, head_input_skip)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        embedding = self.encoder(images)
        return embedding, self.head(embedding)
