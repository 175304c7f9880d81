"""RankPose network (Dai et al., 2020): timm backbone -> feature F -> bounded output layer.

Pure ``nn.Module``s, no Lightning. Angles are in **radians**, in the order of the Euler
convention chosen by the caller (``euler_names(convention)``, e.g. pitch, yaw, roll for
300W-LP); the module turns them into rotation matrices.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpelib.nn import create_backbone

__all__ = ["OUTPUT_LAYERS", "AngleOutput", "RankPoseNet"]

#: The paper's three output transformations, selectable by name.
OUTPUT_LAYERS: tuple[str, ...] = ("linear", "cosine", "arccos")


class AngleOutput(nn.Module):
    """Output layer ``F (B, D) -> Y (B, K)`` with one of the paper's three transformations.

    * ``"linear"``: ``Y = W^T F (+ b)``, unbounded (the plain FC layer).
    * ``"cosine"``: ``Y = alpha * W_hat^T F_hat`` with ``F_hat = F / ||F||`` and every column
      of ``W`` L2-normalised, so ``|Y_k| <= alpha``. hpelib's default ``alpha = pi/2``
      bounds the angles to +-90 degrees; the released code uses 180 (degrees), i.e.
      ``alpha = pi``.
    * ``"arccos"``: ``Y = arccos(W_hat^T F_hat) - pi/2``, bounded to ``[-pi/2, pi/2]``.
      The cosine is clamped to ``[-1 + eps, 1 - eps]`` because ``d arccos(c)/dc`` is infinite
      at ``|c| = 1``; the bound is then ``pi/2 - arccos(1 - eps)`` (about 1e-3 rad short of
      ``pi/2`` for ``eps = 1e-6``).

    Args:
        in_features: ``D``; out_features: ``K`` (3 Euler angles).
        kind: one of :data:`OUTPUT_LAYERS`.
        alpha: scale of the cosine output (radians).
        bias: bias of the linear output (ignored by the normalised outputs, which have none).
        eps: clamp of the arccos input.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 3,
        kind: str = "cosine",
        alpha: float = math.pi / 2,
        bias: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if kind not in OUTPUT_LAYERS:
            raise ValueError(f"unknown output layer {kind!r}; use one of {OUTPUT_LAYERS}")
        if kind == "cosine" and not alpha > 0:
            raise ValueError(f"alpha of the cosine output must be > 0, got {alpha}")
        self.kind = kind
        self.alpha = float(alpha)
        self.eps = float(eps)
        if kind == "linear":
            self.linear: nn.Linear | None = nn.Linear(in_features, out_features, bias=bias)
            self.register_parameter("weight", None)
        else:
            self.linear = None
            # (D, K): one column per angle, as in the paper's W^T F (and the released code).
            self.weight = nn.Parameter(torch.empty(in_features, out_features))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def cosine(self, features: Tensor) -> Tensor:
        """``W_hat^T F_hat``: ``(B, D) -> (B, K)`` cosines between F and each column of W."""
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=0)

    def forward(self, features: Tensor) -> Tensor:
        if self.linear is not None:
            return self.linear(features)
        cos = self.cosine(features)
        if self.kind == "cosine":
            return self.alpha * cos
        return torch.arccos(cos.clamp(-1.0 + self.eps, 1.0 - self.eps)) - math.pi / 2

    def representable(self, angles: Tensor) -> Tensor:
        """Whether some feature vector makes this layer output ``angles``: ``(..., K)``
        radians -> ``(...,)`` bool.

        The normalised outputs share one unit feature ``F_hat``, so the K cosines
        ``c = W_hat^T F_hat`` are not independent: for ``D > K`` they fill exactly the
        ellipsoid ``c^T G^-1 c <= 1``, ``G = W_hat^T W_hat`` (unit diagonal). With
        orthogonal columns that is the unit ball, so the Cosine output cannot give
        ``(Y/alpha)`` outside it (yaw 80 and pitch 45 degrees at ``alpha = pi/2``: 0.79 +
        0.25 > 1) and the Arccos output (``c = -sin Y``) cannot give ``sum sin^2 Y > 1``.
        Backbone features after a ReLU are also non-negative, which shrinks the set
        further, so ``True`` is necessary, not sufficient. The linear output (full-rank
        ``W``) represents everything.
        """
        if self.kind == "linear":
            return torch.ones(angles.shape[:-1], dtype=torch.bool, device=angles.device)
        y = angles.double()
        if self.kind == "cosine":
            c = y / self.alpha
            inside = torch.ones(y.shape[:-1], dtype=torch.bool, device=y.device)
        else:
            c = -torch.sin(y)
            inside = (y.abs() <= math.pi / 2).all(-1)
        w = F.normalize(self.weight.detach().double(), dim=0)
        gram = w.T @ w
        quad = (c * torch.linalg.solve(gram, c.unsqueeze(-1)).squeeze(-1)).sum(-1)
        return inside & (quad <= 1.0 + 1e-9)

    @property
    def bound(self) -> float:
        """Largest possible ``|Y|`` (``inf`` for the linear output)."""
        if self.kind == "linear":
            return math.inf
        return self.alpha if self.kind == "cosine" else math.pi / 2

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}" + (
            f", alpha={self.alpha:.4g}" if self.kind == "cosine" else ""
        )


class RankPoseNet(nn.Module):
    """``forward(images (B, 3, H, W)) -> (B, 3)`` Euler angles in radians.

    Args:
        backbone: any timm model name (released code: ``resnet50``).
        pretrained: ImageNet weights through timm (needs network or a cache).
        backbone_weights: local backbone weights instead of a download.
        output_layer: ``"arccos"`` (default, the paper's final model), ``"cosine"`` or
            ``"linear"`` (see :class:`AngleOutput`).
        alpha: cosine-output scale in radians (default ``pi/2``; released code ``pi``).
        linear_bias: bias of the linear output.
        drop_rate: dropout on the pooled feature (timm's ``drop_rate``).
        backbone_kwargs: further timm constructor arguments of the backbone (see
            :func:`hpelib.nn.create_backbone`).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        output_layer: str = "arccos",
        alpha: float = math.pi / 2,
        linear_bias: bool = True,
        drop_rate: float = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone, num_features = create_backbone(
            backbone, pretrained, backbone_weights, drop_rate=drop_rate, **(backbone_kwargs or {})
        )
        self.head = AngleOutput(num_features, 3, output_layer, alpha, bias=linear_bias)

    def features(self, images: Tensor) -> Tensor:
        """Pooled backbone feature ``F``: ``(B, 3, H, W) -> (B, D)``."""
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))
