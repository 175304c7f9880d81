"""Pure, batched, differentiable rotation utilities (depends only on torch and roma).

Internal convention: ``R`` maps head coordinates to camera coordinates in image axes
(x right, y down, z into the scene); ``R = I`` is an upright frontal face. See
:mod:`hpelib.rotation.conventions` for the conversions to every dataset's labels and
:mod:`hpelib.rotation.transforms` for image-warp label transforms.
"""

from hpelib.rotation.conventions import (
    EULER_CONVENTIONS,
    EulerConvention,
    euler_300wlp_from_rotation,
    euler_clerf_from_rotation,
    euler_names,
    euler_to_rotation,
    opnet_quaternion_from_rotation,
    rotation_from_6drepnet_matrix,
    rotation_from_biwi_pose_matrix,
    rotation_from_euler_300wlp,
    rotation_from_euler_clerf,
    rotation_from_opnet_quaternion,
    rotation_to_6drepnet_matrix,
    rotation_to_biwi_pose_matrix,
    rotation_to_euler,
)
from hpelib.rotation.core import (
    angle_difference,
    elementary_rotation,
    geodesic_distance,
    is_rotation_matrix,
    quaternion_canonical,
    quaternion_conjugate,
    quaternion_from_rotation,
    quaternion_multiply,
    rotation_from_6d,
    rotation_from_quaternion,
    rotation_to_6d,
    rotation_x,
    rotation_y,
    rotation_z,
    safe_norm,
    skew,
    so3_exp,
    so3_log,
    vee,
    wrap_angle,
)
from hpelib.rotation.sampling import random_rotation, sample_rotation_euler_range
from hpelib.rotation.transforms import (
    ImageWarp,
    flip_across_line,
    mirror_horizontal,
    rotate_inplane,
    rotation_from_image_linear,
)

__all__ = [name for name in dir() if not name.startswith("_")]
