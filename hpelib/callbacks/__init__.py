"""Lightning callbacks for multi-stage methods: stage switching and k-means centroid init."""

from hpelib.callbacks.kmeans_init import KMeansCentroidInit, gather_embeddings, kmeans
from hpelib.callbacks.stages import StageSwitch

__all__ = ["KMeansCentroidInit", "StageSwitch", "gather_embeddings", "kmeans"]
