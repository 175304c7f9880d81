"""LEC-HPE's training augmentation: HopeNet's released flip / blur / down-up-sampling, then
synthetic occluders.

LEC-HPE trains its binned branches as HopeNet does and names the same augmentation (flip,
blur, down- and up-sampling); the probabilities and factors here are those of HopeNet's
released ``Pose_300W_LP`` / ``Pose_300W_LP_random_ds`` datasets:

* down-/up-sampling: factor ``ds`` uniform in ``{1, 6, 11, 16}`` per image, nearest-neighbour
  down to ``size // ds`` and back up (``ds = 1``: unchanged);
* horizontal mirror with p = 1/2 (labels mirrored with the image);
* blur with p = 0.05: PIL's ``ImageFilter.BLUR`` (the 5 x 5 ring kernel, 16 ones / 16);
* :class:`~hpelib.data.transforms.RandomOcclusion` (p = 1/2), which
  :class:`~hpelib.methods.lechpe.LECHPE` switches off during stage 1.

Every transform maps a batch dict (float ``image (B, C, H, W)`` in [0, 1]) to a new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from kornia.filters import filter2d
from torch import Tensor, nn

from hpelib.data.transforms import PhotometricTransform, RandomHorizontalMirror, RandomOcclusion

__all__ = ["HOPENET_DOWNSAMPLE_FACTORS", "LECHPEAugmentation", "NearestResample", "PILBlur"]

#: HopeNet's released ``ds = 1 + randint(0, 4) * 5``.
HOPENET_DOWNSAMPLE_FACTORS: tuple[int, ...] = (1, 6, 11, 16)


def _pil_blur_kernel() -> Tensor:
    """``(1, 5, 5)`` PIL ``ImageFilter.BLUR``: ones on the 5 x 5 border, zeros inside, / 16."""
    kernel = torch.ones(5, 5)
    kernel[1:4, 1:4] = 0.0
    return (kernel / kernel.sum())[None]


class PILBlur(PhotometricTransform):
    """PIL's ``ImageFilter.BLUR`` (HopeNet's blur) on each image with probability ``p``."""

    def __init__(self, p: float = 0.05, generator: torch.Generator | None = None) -> None:
        super().__init__(p, generator)
        self.register_buffer("kernel", _pil_blur_kernel(), persistent=False)

    def transform(self, image: Tensor) -> Tensor:
        return filter2d(image, self.kernel.to(image), border_type="replicate")


class NearestResample(nn.Module):
    """Down-sample each image by a factor drawn uniformly from ``factors`` and back up,
    nearest-neighbour both ways (HopeNet's ``Pose_300W_LP_random_ds``).

    Args:
        factors: integer factors (1 = unchanged), drawn per image with equal probability.
        generator: optional CPU generator for the draws.
    """

    def __init__(
        self,
        factors: Sequence[int] = HOPENET_DOWNSAMPLE_FACTORS,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not factors or any(int(f) < 1 for f in factors):
            raise ValueError(f"factors={list(factors)} must be a non-empty list of integers >= 1")
        self.factors = tuple(int(f) for f in factors)
        self.generator = generator

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        image = batch["image"]
        b, _, h, w = image.shape
        pick = torch.randint(len(self.factors), (b,), generator=self.generator)
        out = image.clone()
        for k, ds in enumerate(self.factors):
            chosen = (pick == k).nonzero()[:, 0].to(image.device)
            if ds == 1 or chosen.numel() == 0:
                continue
            small = F.interpolate(
                image[chosen], size=(max(1, h // ds), max(1, w // ds)), mode="nearest"
            )
            out[chosen] = F.interpolate(small, size=(h, w), mode="nearest")
        return {**batch, "image": out}


class LECHPEAugmentation(nn.Sequential):
    """The paper config's pipeline: down-/up-sampling, mirror, blur, occluders (module
    docstring), HopeNet's order for the first three.

    Args:
        mirror_p: probability of the horizontal mirror (1/2).
        blur_p: probability of PIL's BLUR (0.05).
        downsample_factors: factors of :class:`NearestResample` (``(1,)`` turns it off).
        occlusion_p: probability of :class:`~hpelib.data.transforms.RandomOcclusion` (0:
            no occluder module).
        occlusion: further :class:`~hpelib.data.transforms.RandomOcclusion` arguments.
        generator: optional CPU generator shared by every random decision.
    """

    def __init__(
        self,
        mirror_p: float = 0.5,
        blur_p: float = 0.05,
        downsample_factors: Sequence[int] = HOPENET_DOWNSAMPLE_FACTORS,
        occlusion_p: float = 0.5,
        occlusion: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        modules: list[nn.Module] = [
            NearestResample(downsample_factors, generator=generator),
            RandomHorizontalMirror(p=mirror_p, generator=generator),
            PILBlur(p=blur_p, generator=generator),
        ]
        if occlusion_p > 0:
            modules.append(RandomOcclusion(p=occlusion_p, generator=generator, **(occlusion or {})))
        super().__init__(*modules)
