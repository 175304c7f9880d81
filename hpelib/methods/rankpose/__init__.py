"""RankPose (Dai et al., 2020): rank supervision on same-identity pairs + bounded output."""

from hpelib.methods.rankpose.augmentation import (
    RandomGaussianNoiseVariance,
    RandomZoomCrop,
    RankPoseAugmentation,
)
from hpelib.methods.rankpose.loss import MSE_FORMS, mse_loss, ranking_loss, rankpose_loss
from hpelib.methods.rankpose.model import OUTPUT_LAYERS, AngleOutput, RankPoseNet
from hpelib.methods.rankpose.module import RankPose

__all__ = [
    "MSE_FORMS",
    "OUTPUT_LAYERS",
    "AngleOutput",
    "RandomGaussianNoiseVariance",
    "RandomZoomCrop",
    "RankPose",
    "RankPoseAugmentation",
    "RankPoseNet",
    "mse_loss",
    "ranking_loss",
    "rankpose_loss",
]
