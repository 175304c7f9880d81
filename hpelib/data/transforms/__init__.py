"""Batched augmentation on the training device: geometric (labels follow the image),
photometric (pixels only) and synthetic occlusion.

Every transform is an ``nn.Module`` mapping a batch dict (:mod:`hpelib.data.sample`, float
``image (B, C, H, W)`` in [0, 1], before normalisation) to a new batch dict, so they chain
with ``nn.Sequential`` and can be named by ``class_path`` in a YAML config. Named pipelines
for configs come from :func:`build_augmentation`.
"""

from __future__ import annotations

import torch
from torch import nn

from hpelib.data.transforms.geometric import (
    GEOMETRIC_KEYS,
    MULTIPIE68_MIRROR_PERMUTATION,
    PADDING_MODES,
    GeometricTransform,
    RandomBoxFraming,
    RandomGeometric,
    RandomHorizontalMirror,
    RandomInPlaneRotation,
    RandomLineFlip,
    RandomRightAngleRotation,
    RandomScaleTranslate,
    apply_warp,
    box_view_roi,
    image_center,
    mirror_landmark_order,
    warp_image,
)
from hpelib.data.transforms.occlusion import (
    OCCLUSION_FILLS,
    OCCLUSION_SHAPES,
    RandomOcclusion,
    face_boxes,
    shape_masks,
)
from hpelib.data.transforms.photometric import (
    Grayscale,
    KorniaPhotometric,
    PhotometricTransform,
    RandomCoarseDropout,
    RandomColorJitter,
    RandomDownsample,
    RandomSomeOf,
    clerf_photometric,
    opnet_photometric,
)

__all__ = [
    "AUGMENTATIONS",
    "GEOMETRIC_KEYS",
    "MULTIPIE68_MIRROR_PERMUTATION",
    "OCCLUSION_FILLS",
    "OCCLUSION_SHAPES",
    "PADDING_MODES",
    "GeometricTransform",
    "Grayscale",
    "KorniaPhotometric",
    "PhotometricTransform",
    "RandomCoarseDropout",
    "RandomBoxFraming",
    "RandomColorJitter",
    "RandomDownsample",
    "RandomGeometric",
    "RandomHorizontalMirror",
    "RandomInPlaneRotation",
    "RandomLineFlip",
    "RandomOcclusion",
    "RandomRightAngleRotation",
    "RandomScaleTranslate",
    "RandomSomeOf",
    "apply_warp",
    "box_view_roi",
    "build_augmentation",
    "clerf_photometric",
    "face_boxes",
    "image_center",
    "mirror_landmark_order",
    "opnet_photometric",
    "shape_masks",
    "warp_image",
]

#: Names accepted by :func:`build_augmentation`.
AUGMENTATIONS: tuple[str, ...] = ("none", "mirror", "full_range", "clerf", "opnet")


def build_augmentation(
    name: str,
    occlusion: float = 0.0,
    padding_mode: str | None = None,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """A named training augmentation pipeline.

    Args:
        name: one of :data:`AUGMENTATIONS`:

            - ``none``: identity.
            - ``mirror``: horizontal mirror with p=0.5 (6DRepNet).
            - ``full_range``: in-plane rotation by any angle (p=1, uniform in +/-180 degrees)
              and horizontal mirror (p=0.5), fused into one warp, reflection padding by
              default. For full-range data, where every roll is in
              the test distribution: each image becomes a new, exactly labelled sample every
              epoch, which is what lets a small model generalise instead of memorising (see
              docs/methods/sixd.md).
            - ``clerf``: in-plane rotation (p=0.5, clockwise 0-90 degrees, as CLERF states)
              and the flip across a line at 0-90 degrees (p=0.3), fused into one warp, then
              :func:`clerf_photometric`.
            - ``opnet``: hpelib's light OpNet-style pipeline for fixed crops: ROI jitter
              (scale 0.9-1.1, shift up to 5 %) and in-plane rotation (p=0.5, up to 30
              degrees), fused into one warp, then :func:`opnet_photometric`. The paper's
              distributions are :class:`hpelib.methods.opnet.OpNetAugmentation` with the
              crop rule :class:`hpelib.methods.opnet.OpNetCrop`.
        occlusion: if > 0, append :class:`RandomOcclusion` with this probability.
        padding_mode: warp padding, one of :data:`PADDING_MODES`; ``None``: the pipeline's
            default (``reflection`` for ``full_range``, whose rotations by any angle would
            otherwise paint black corners whose shape tells the angle; ``zeros`` otherwise,
            as the reference implementations pad).
        generator: optional CPU generator for all random decisions.

    Returns:
        An ``nn.Sequential`` of batch transforms (batch dict -> batch dict).
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation name={name!r} is not one of {AUGMENTATIONS}")
    if not 0.0 <= occlusion <= 1.0:
        raise ValueError(f"occlusion={occlusion} must be a probability in [0, 1]")
    if padding_mode is None:
        padding_mode = "reflection" if name == "full_range" else "zeros"
    g = generator
    modules: list[nn.Module] = []
    if name == "mirror":
        modules.append(RandomHorizontalMirror(p=0.5, padding_mode=padding_mode, generator=g))
    elif name == "full_range":
        geometric = [
            RandomInPlaneRotation(p=1.0, max_degrees=180.0, generator=g),
            RandomHorizontalMirror(p=0.5, generator=g),
        ]
        modules.append(RandomGeometric(geometric, padding_mode=padding_mode))
    elif name == "clerf":
        geometric = [
            RandomInPlaneRotation(
                p=0.5, max_degrees=90.0, symmetric=False, clockwise=True, generator=g
            ),
            RandomLineFlip(p=0.3, max_degrees=90.0, generator=g),
        ]
        modules += [RandomGeometric(geometric, padding_mode=padding_mode), clerf_photometric(g)]
    elif name == "opnet":
        geometric = [
            RandomScaleTranslate(scale=(0.9, 1.1), translate=0.05, generator=g),
            RandomInPlaneRotation(p=0.5, max_degrees=30.0, generator=g),
        ]
        modules += [
            RandomGeometric(geometric, padding_mode=padding_mode),
            opnet_photometric(generator=g),
        ]
    if occlusion > 0.0:
        modules.append(RandomOcclusion(p=occlusion, generator=g))
    return nn.Sequential(*modules)
