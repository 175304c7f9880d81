"""OpNet (Welter, "On the power of data augmentation for head pose estimation", 2024)."""

from hpelib.methods.opnet.augmentation import OpNetAugmentation, OpNetCrop, opnet_intensity
from hpelib.methods.opnet.loss import (
    DEFAULT_LOSS_WEIGHTS,
    DEFAULT_NLL_TOTAL_WEIGHT,
    DEFAULT_NLL_WEIGHTS,
    landmark_weights,
    quaternion_distance,
    rotation_nll,
)
from hpelib.methods.opnet.model import (
    COVARIANCE_FORMS,
    CovarianceHead,
    DeformableKeypoints,
    OpNetModel,
    denormalize_points,
    fit_keypoint_model,
    normalize_points,
    smoothclip,
    synthetic_keypoint_model,
)
from hpelib.methods.opnet.module import SHAPE_TARGETS, OpNet
from hpelib.methods.opnet.schedule import WarmupStepLR

__all__ = [
    "COVARIANCE_FORMS",
    "DEFAULT_LOSS_WEIGHTS",
    "DEFAULT_NLL_TOTAL_WEIGHT",
    "DEFAULT_NLL_WEIGHTS",
    "SHAPE_TARGETS",
    "CovarianceHead",
    "DeformableKeypoints",
    "OpNet",
    "OpNetAugmentation",
    "OpNetCrop",
    "OpNetModel",
    "WarmupStepLR",
    "denormalize_points",
    "fit_keypoint_model",
    "landmark_weights",
    "normalize_points",
    "opnet_intensity",
    "quaternion_distance",
    "rotation_nll",
    "smoothclip",
    "synthetic_keypoint_model",
]
