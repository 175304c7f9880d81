"""CLERF (Wei et al.): contrastive representation learning for full-range head pose
estimation, with generated anchor-positives, and its supervised ablation."""

from hpelib.methods.clerf.early_stopping import PoseEarlyStopping
from hpelib.methods.clerf.loss import (
    MINING_DISTANCES,
    CLERFContrastiveLoss,
    geodesic_cosine,
    mine_triplets,
    mining_distance,
    pair_masks,
)
from hpelib.methods.clerf.model import CLERFEncoder, CLERFNet, PoseMLP
from hpelib.methods.clerf.module import CLERF, CLERFSupervised
from hpelib.methods.clerf.positives import (
    ROTATION_SENSES,
    SHARED_AUGMENTATIONS,
    AnchorPositiveDataset,
    CLERFPaperAugmentation,
    CLERFPhotometric,
    FolderPositiveSource,
    PositiveSource,
    RealFacePositiveSource,
    SharedGeometricAugmentation,
    SyntheticPositiveSource,
    make_positives,
    split_roll,
)

__all__ = [
    "CLERF",
    "MINING_DISTANCES",
    "ROTATION_SENSES",
    "SHARED_AUGMENTATIONS",
    "AnchorPositiveDataset",
    "CLERFContrastiveLoss",
    "CLERFEncoder",
    "CLERFNet",
    "CLERFPaperAugmentation",
    "CLERFPhotometric",
    "CLERFSupervised",
    "FolderPositiveSource",
    "PoseEarlyStopping",
    "PoseMLP",
    "PositiveSource",
    "RealFacePositiveSource",
    "SharedGeometricAugmentation",
    "SyntheticPositiveSource",
    "geodesic_cosine",
    "make_positives",
    "mine_triplets",
    "mining_distance",
    "pair_masks",
    "split_roll",
]
