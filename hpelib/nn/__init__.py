"""Shared neural-network parts: timm backbone factory and output heads."""

from hpelib.nn.backbone import BackboneNotFoundError, count_parameters, create_backbone
from hpelib.nn.heads import MLP, ROTATION_REPRESENTATIONS, RotationHead, SixDHead
from hpelib.nn.losses import (
    ROTATION_LOSSES,
    chordal_loss,
    geodesic_loss,
    get_rotation_loss,
    masked_mean,
    raw_mse_loss,
)

__all__ = [
    "MLP", "BackboneNotFoundError", "ROTATION_REPRESENTATIONS", "RotationHead", "SixDHead",
    "count_parameters", "create_backbone",
    "ROTATION_LOSSES", "chordal_loss", "geodesic_loss", "get_rotation_loss",
    "masked_mean", "raw_mse_loss",
]
