"""Lightning callbacks for multi-stage methods: stage switching and k-means centroid init."""

from hpelib.callbacks.kmeans_init import KMeansCentroidInit, gather_embeddings, kmeans
from hpelib.callbacks.stages import StageSwitch, enable_unused_parameter_detection

__all__ = [
    "KMeansCentroidInit",
    "StageSwitch",
    "enable_unused_parameter_detection",
    "gather_embeddings",
    "kmeans",
]
