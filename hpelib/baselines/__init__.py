"""Baselines that need no training, for comparison rows in evaluation tables.

* :mod:`hpelib.baselines.landmark_fit`: MediaPipe Face Mesh landmarks + a rigid fit to a
  canonical 3D face (``pip install "hpelib[detect]"``; ``hpelib evaluate --baselines
  facemesh``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FaceMeshPosePredictor",
    "LandmarkPosePrediction",
    "canonical_face_shape",
    "facemesh_dataset_rotations",
    "rigid_fit_rotation",
]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package must not load hpelib.predict (kornia) for a listing.
    if name in __all__:
        from hpelib.baselines import landmark_fit

        return getattr(landmark_fit, name)
    raise AttributeError(f"module 'hpelib.baselines' has no attribute {name!r}")
