"""RankPose (Dai et al., 2020): rank supervision on same-identity pairs + bounded output."""

from hpelib.methods.rankpose.loss import mse_loss, ranking_loss, rankpose_loss
from hpelib.methods.rankpose.model import OUTPUT_LAYERS, AngleOutput, RankPoseNet
from hpelib.methods.rankpose.module import RankPose

__all__ = [
    "OUTPUT_LAYERS", "AngleOutput", "RankPose", "RankPoseNet", "mse_loss", "ranking_loss",
    "rankpose_loss",
]
