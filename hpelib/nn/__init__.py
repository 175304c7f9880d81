"""Shared neural-network parts: timm backbone factory and output heads."""

from hpelib.nn.backbone import BackboneNotFoundError, count_parameters, create_backbone
from hpelib.nn.heads import MLP, SixDHead
from hpelib.nn.losses import (
    ROTATION_LOSSES,
    chordal_loss,
    geodesic_loss,
    get_rotation_loss,
    masked_mean,
)

__all__ = [
    "MLP", "BackboneNotFoundError", "SixDHead", "count_parameters", "create_backbone",
    "ROTATION_LOSSES", "chordal_loss", "geodesic_loss", "get_rotation_loss",
    "masked_mean",
]
