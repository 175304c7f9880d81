"""LEC-HPE (Celestino et al.): latent embedding clustering for occlusion-robust head pose."""

from hpelib.methods.lechpe.augmentation import LECHPEAugmentation, NearestResample, PILBlur
from hpelib.methods.lechpe.loss import (
    angle_loss,
    angle_to_bin,
    bin_edges,
    cluster_kl_loss,
    expected_angle,
    soft_assignment,
    target_distribution,
)
from hpelib.methods.lechpe.model import ClusteringLayer, LECHPENet
from hpelib.methods.lechpe.module import LECHPE

__all__ = [
    "LECHPE",
    "ClusteringLayer",
    "LECHPEAugmentation",
    "LECHPENet",
    "NearestResample",
    "PILBlur",
    "angle_loss",
    "angle_to_bin",
    "bin_edges",
    "cluster_kl_loss",
    "expected_angle",
    "soft_assignment",
    "target_distribution",
]
