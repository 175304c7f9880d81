"""Lightning callbacks: stage switching, k-means centroid init, time-budgeted LR decay, the
prediction CSV of ``hpelib predict``."""

from hpelib.callbacks.checkpoint import HPEModelCheckpoint
from hpelib.callbacks.kmeans_init import KMeansCentroidInit, gather_embeddings, kmeans
from hpelib.callbacks.pose_gallery import PoseGallery
from hpelib.callbacks.prediction_writer import PredictionWriter
from hpelib.callbacks.stages import StageSwitch, enable_unused_parameter_detection
from hpelib.callbacks.time_budget import TimeBudgetLR, budget_lr_factor, parse_duration

__all__ = [
    "HPEModelCheckpoint",
    "KMeansCentroidInit",
    "PoseGallery",
    "PredictionWriter",
    "StageSwitch",
    "TimeBudgetLR",
    "budget_lr_factor",
    "enable_unused_parameter_detection",
    "gather_embeddings",
    "kmeans",
    "parse_duration",
]
