"""CLERF (Wei et al.): contrastive representation learning for full-range head pose
estimation, with generated anchor-positives, and its supervised ablation."""

from hpelib.methods.clerf.loss import (
    CLERFContrastiveLoss,
    geodesic_cosine,
    mine_triplets,
    pair_masks,
)
from hpelib.methods.clerf.model import CLERFEncoder, CLERFNet, PoseMLP
from hpelib.methods.clerf.module import CLERF, CLERFSupervised
from hpelib.methods.clerf.positives import (
    AnchorPositiveDataset,
    CLERFPhotometric,
    FolderPositiveSource,
    PositiveSource,
    SharedGeometricAugmentation,
    SyntheticPositiveSource,
    make_positives,
    split_roll,
)

__all__ = [
    "CLERF",
    "AnchorPositiveDataset",
    "CLERFContrastiveLoss",
    "CLERFEncoder",
    "CLERFNet",
    "CLERFPhotometric",
    "CLERFSupervised",
    "FolderPositiveSource",
    "PoseMLP",
    "PositiveSource",
    "SharedGeometricAugmentation",
    "SyntheticPositiveSource",
    "geodesic_cosine",
    "make_positives",
    "mine_triplets",
    "pair_masks",
    "split_roll",
]
