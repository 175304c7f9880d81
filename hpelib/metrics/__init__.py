"""Pose metrics (torchmetrics, DDP-synced) and evaluation-protocol helpers."""

from hpelib.metrics.pose import PoseMetrics, pose_errors
from hpelib.metrics.protocols import (
    AFLW2000_MAX_ABS_DEGREES,
    legacy_6drepnet_error,
    within_angle_limit,
)

__all__ = [
    "AFLW2000_MAX_ABS_DEGREES",
    "PoseMetrics",
    "legacy_6drepnet_error",
    "pose_errors",
    "within_angle_limit",
]
