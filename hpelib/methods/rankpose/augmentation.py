"""RankPose training augmentation: random scale and crop, Gaussian noise, blur.

The paper names the kinds of augmentation; the parameters below are the released code's
(``seathiefwang/RankPose``: ``src/dataset/rank_300w_lp.py`` and ``src/train.py``, albumentations
on 224-px crops), ported to hpelib's batched on-device transforms. Every transform draws its
parameters per image, and :class:`~hpelib.data.datamodule.HPEDataModule` runs the pipeline once
on the batch and once on the pair's partner sub-batch, so the two images of a pair get
independent draws, as in the released code (which augments ``img1`` and ``img2`` separately).
"""

from __future__ import annotations

import math

import kornia.augmentation as K
import numpy as np
import torch
from torch import Tensor, nn

from hpelib.data.transforms import KorniaPhotometric
from hpelib.data.transforms.geometric import (
    GeometricTransform,
    _check_probability,
    _check_scale_range,
    _rand,
)
from hpelib.data.transforms.photometric import PhotometricTransform
from hpelib.rotation import ImageWarp

__all__ = ["RandomGaussianNoiseVariance", "RandomZoomCrop", "RankPoseAugmentation", "rankpose_crop"]


class RandomZoomCrop(GeometricTransform):
    """Zoom about the image centre by ``z ~ U(scale)`` and crop the input size at a uniformly
    random position of the zoomed image: the shift is uniform in ``+-(z - 1) / 2`` of the image
    size per axis (independently), and 0 when ``z <= 1``, where the zoomed image sits centred
    on zero padding. This is albumentations' ``RandomScale -> PadIfNeeded -> RandomCrop`` of
    the released code as one warp. Zoom and shift do not rotate the head, so the rotation
    label is unchanged; boxes and landmarks follow the warp (:func:`apply_warp`).

    Args:
        scale: ``(low, high)`` zoom range, ``> 1`` enlarges the face. Released code: the crop
            is resized to ``1.1 x`` the input size and scaled by ``U(0.9, 1.1)``, so
            ``(0.99, 1.21)``.
        p: per-sample probability.
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.99, 1.21),
        p: float = 1.0,
        padding_mode: str = "zeros",
        mode: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(padding_mode, mode, generator)
        self.scale, self.p = _check_scale_range(scale), _check_probability("p", p)

    def sample_warp(self, batch: dict) -> tuple[ImageWarp, Tensor]:
        b, h, w = self._shape(batch)
        u = _rand((b, 4), self.generator)
        active = u[:, 0] < self.p
        lo, hi = self.scale
        zoom = torch.where(active, lo + (hi - lo) * u[:, 1], torch.ones(b, dtype=torch.float64))
        slack = (zoom - 1.0).clamp_min(0.0) / 2.0  # fraction of the size the crop can move
        size = torch.tensor([w, h], dtype=torch.float64)
        shift = (2.0 * u[:, 2:] - 1.0) * slack[:, None] * size
        center = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64).expand(b, 2)
        return ImageWarp.scale_translate(zoom, shift, center), active


class RandomGaussianNoiseVariance(PhotometricTransform):
    """Additive Gaussian noise whose variance is drawn per image, uniform in ``var_range``
    (in 8-bit units squared; the image is in [0, 1], so ``std = sqrt(var) / 255``),
    independent per pixel and channel: albumentations' ``GaussNoise(var_limit)`` of the
    released code (``var_limit = (0, 25)``, std up to 5 grey levels)."""

    def __init__(
        self,
        var_range: tuple[float, float] = (0.0, 25.0),
        p: float = 0.05,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, generator)
        lo, hi = (float(v) for v in var_range)
        if not 0.0 <= lo <= hi:
            raise ValueError(
                f"var_range={tuple(var_range)} must be (low, high) with 0 <= low <= high"
            )
        self.var_range = (lo, hi)

    def transform(self, image: Tensor) -> Tensor:
        lo, hi = self.var_range
        var = lo + (hi - lo) * _rand((image.shape[0],), self.generator)
        std = (var.sqrt() / 255.0).to(image.device, image.dtype)
        return image + std[:, None, None, None] * torch.randn_like(image)


class RankPoseAugmentation(nn.Sequential):
    """The RankPose training augmentation as one pipeline (a batch dict -> batch dict module,
    usable as ``data.augmentation: {class_path: hpelib.methods.rankpose.RankPoseAugmentation}``).

    In the released code's order: brightness/contrast, random scale and crop, Gaussian noise,
    Gaussian blur. Defaults are the released code's (``src/train.py``,
    ``src/dataset/rank_300w_lp.py``); the paper names the kinds, not the parameters.

    Args:
        scale: zoom range of :class:`RandomZoomCrop` (released: ``(0.99, 1.21)``).
        color_p: probability of the brightness/contrast change (released: 0.2,
            ``RandomBrightnessContrast(0.25, 0.25)``: ``x * U(1 +- contrast) + U(+- brightness)``).
        brightness, contrast: their ranges.
        noise_p, noise_var: :class:`RandomGaussianNoiseVariance` (released: 0.05, ``(0, 25)``).
        blur_p, blur_kernel, blur_sigma: Gaussian blur (released: ``GaussianBlur(3)`` with
            p = 0.01; OpenCV's sigma for a 3-px kernel is 0.8).
        padding_mode: of the zoom-out border (released: zeros).
        generator: CPU generator for the per-sample decisions and parameters.

    Not reproduced (each with p <= 0.05 in the released code): hue/saturation/value shift
    (p = 0.05), RGB shift, grey conversion, JPEG compression and a 0.5-1x downscale (p = 0.01
    each).
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.99, 1.21),
        color_p: float = 0.2,
        brightness: float = 0.25,
        contrast: float = 0.25,
        noise_p: float = 0.05,
        noise_var: tuple[float, float] = (0.0, 25.0),
        blur_p: float = 0.01,
        blur_kernel: int = 3,
        blur_sigma: float = 0.8,
        padding_mode: str = "zeros",
        generator: torch.Generator | None = None,
    ) -> None:
        if brightness < 0 or not 0 <= contrast < 1:
            raise ValueError(
                f"need brightness >= 0 and 0 <= contrast < 1, got {brightness}, {contrast}"
            )
        if (
            blur_kernel < 1
            or blur_kernel % 2 == 0
            or not blur_sigma > 0
            or not math.isfinite(blur_sigma)
        ):
            raise ValueError(
                f"blur_kernel must be odd >= 1 and blur_sigma > 0, got {blur_kernel}, {blur_sigma}"
            )
        color = nn.Sequential(  # contrast first: x * a + b, as albumentations
            K.RandomContrast((1.0 - contrast, 1.0 + contrast), p=1.0),
            K.RandomBrightness((1.0 - brightness, 1.0 + brightness), p=1.0),
        )
        blur = K.RandomGaussianBlur(blur_kernel, (blur_sigma, blur_sigma), p=1.0)
        super().__init__(
            KorniaPhotometric(color, p=color_p, generator=generator),
            RandomZoomCrop(scale, padding_mode=padding_mode, generator=generator),
            RandomGaussianNoiseVariance(noise_var, p=noise_p, generator=generator),
            KorniaPhotometric(blur, p=blur_p, generator=generator),
        )


def rankpose_crop(
    box: np.ndarray, image_wh: tuple[int, int], rng: np.random.Generator | None
) -> np.ndarray:
    """The released code's face crop (``change_bbox(bbox, scale, use_forehead=False)``), a
    :data:`~hpelib.data.datasets.CropRule`: a square about the landmark box's centre whose
    side is ``s * max(w, h)``, ``s ~ U(1.4, 1.6)`` at train time (``rng`` given) and
    ``s = 1.4`` at test time. ``box (4,)`` -> crop ``(4,)`` (x0, y0, x1, y1).

    The released code draws one ``s`` per pair (both images); here each image draws its own.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    s = 1.4 if rng is None else float(rng.uniform(1.4, 1.6))
    half = 0.5 * s * max(x1 - x0, y1 - y0)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return np.array([cx - half, cy - half, cx + half, cy + half], dtype=np.float64)
