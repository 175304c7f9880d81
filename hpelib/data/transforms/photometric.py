"""Batched photometric augmentation (kornia): changes pixels only, never a label.

Every transform here is an ``nn.Module`` taking and returning a batch dict; only
``batch["image"]`` (float ``(B, C, H, W)`` in [0, 1]) changes and results are clamped to
[0, 1]. Whether a sample is augmented is decided per sample with probability ``p`` from
``generator`` (a CPU ``torch.Generator``) or torch's global RNG; the magnitudes of the
wrapped kornia augmentations come from torch's global RNG (kornia takes no generator), so
``torch.manual_seed`` / Lightning's ``seed_everything`` makes the whole pipeline repeatable.

Presets: :func:`clerf_photometric` (CLERF's list) and :func:`opnet_photometric` (OpNet's
operations with hpelib's ranges; the released code's values are
:func:`hpelib.methods.opnet.opnet_intensity`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import kornia.augmentation as KA
import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from torch import Tensor, nn

from hpelib.data.transforms.occlusion import shape_masks

__all__ = [
    "Grayscale",
    "KorniaPhotometric",
    "PhotometricTransform",
    "RandomCoarseDropout",
    "RandomColorJitter",
    "RandomDownsample",
    "RandomGaussianNoise",
    "RandomSomeOf",
    "clerf_photometric",
    "opnet_photometric",
]

Batch = dict[str, Any]


def _check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p} must be a probability in [0, 1]")
    return float(p)


class PhotometricTransform(nn.Module):
    """Base class: apply :meth:`transform` to a random subset of the batch's images.

    Args:
        p: per-sample probability of being transformed.
        generator: optional CPU generator for the per-sample decisions.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = _check_probability("p", p)
        self.generator = generator

    def transform(self, image: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C', H, W)``: the augmentation of the selected images."""
        raise NotImplementedError(f"{type(self).__name__} must implement transform")

    def apply_image(self, image: Tensor, allowed: Tensor | None = None) -> Tensor:
        """Transform the images of ``image (B, C, H, W)`` chosen with probability ``p``
        (and, if given, ``allowed (B,)`` bool); the others are returned unchanged."""
        b = image.shape[0]
        chosen = torch.rand((b,), generator=self.generator, dtype=torch.float64) < self.p
        if allowed is not None:
            chosen &= allowed.cpu()
        if not bool(chosen.any()):
            return image
        if bool(chosen.all()):
            return self.transform(image).clamp(0.0, 1.0)
        idx = chosen.nonzero()[:, 0].to(image.device)
        out = image.clone()
        out[idx] = self.transform(image[idx]).clamp(0.0, 1.0).to(image.dtype)
        return out

    def forward(self, batch: Batch) -> Batch:
        """Augment ``batch["image"]``; returns a new dict with every other key unchanged."""
        out = dict(batch)
        out["image"] = self.apply_image(batch["image"])
        return out


class KorniaPhotometric(PhotometricTransform):
    """Apply a ``kornia.augmentation`` module to each image with probability ``p``.

    The kornia module should have ``p=1`` (it is applied to the chosen subset only; its own
    ``p`` would multiply with this one). Works with any intensity augmentation whose output
    has the input's shape.
    """

    def __init__(
        self, augmentation: nn.Module, p: float = 0.5, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(p, generator)
        self.augmentation = augmentation

    def transform(self, image: Tensor) -> Tensor:
        return self.augmentation(image)


class Grayscale(PhotometricTransform):
    """Convert images to grayscale (ITU-R 601 luma) with probability ``p``.

    Args:
        p: per-sample probability; ``1.0`` makes the whole input grayscale (OpNet's
            grayscale-input option).
        channels: ``3`` keeps the RGB layout (the gray value in every channel: the backbone
            and normalisation stay unchanged); ``1`` returns ``(B, 1, H, W)`` images, which
            needs ``p=1`` (a batch cannot mix channel counts) and a 1-channel backbone and
            normalisation downstream.
        generator: optional CPU generator.
    """

    def __init__(
        self, p: float = 1.0, channels: int = 3, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(p, generator)
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 or 3")
        if channels == 1 and self.p != 1.0:
            raise ValueError(
                f"channels=1 needs p=1.0 (a batch cannot mix 1 and 3 channels), got p={p}"
            )
        self.channels = channels

    def transform(self, image: Tensor) -> Tensor:
        if image.shape[1] == 1:
            gray = image
        else:
            gray = rgb_to_grayscale(image)
        return gray if self.channels == 1 else gray.expand(-1, 3, -1, -1).contiguous()

    def apply_image(self, image: Tensor, allowed: Tensor | None = None) -> Tensor:
        if self.channels == 1:
            # Every sample is converted (p == 1 is enforced), whatever `allowed` says.
            return self.transform(image).clamp(0.0, 1.0)
        return super().apply_image(image, allowed)


class RandomGaussianNoise(PhotometricTransform):
    """Additive Gaussian pixel noise ``N(mean, std^2)`` (image units, [0, 1]) with
    probability ``p`` per sample.

    A grey image (one channel, or all channels equal) gets ONE noise value per pixel, shared
    by its channels: it stays grey and the noise in its grey value has standard deviation
    ``std``. Colour images get independent noise per channel. (Independent RGB noise that a
    grey conversion averages afterwards, as ``kornia.augmentation.RandomGaussianNoise``
    followed by a luma conversion, is ``0.668 std``: OpNet's sigma 4 and 16 of 255 became
    2.7 and 10.7.) The noise values come from torch's global RNG on the image's device, as
    kornia's; ``generator`` decides which samples get noise.
    """

    def __init__(
        self,
        std: float,
        p: float = 0.5,
        mean: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, generator)
        if not std >= 0.0:
            raise ValueError(f"std={std} must be >= 0")
        self.std = float(std)
        self.mean = float(mean)

    def transform(self, image: Tensor) -> Tensor:
        noise = torch.randn_like(image)
        if image.shape[1] > 1:
            grey = (image[:, 1:] == image[:, :1]).flatten(1).all(1)
            if bool(grey.any()):
                shared = noise[:, :1].expand_as(noise)
                noise = torch.where(grey[:, None, None, None], shared, noise)
        return image + self.mean + self.std * noise


class RandomColorJitter(PhotometricTransform):
    """Brightness, contrast and saturation jitter with PIL's ``ImageEnhance`` semantics,
    as cheap batched blends (no HSV round trip, unlike ``kornia.augmentation.ColorJitter``).

    Per chosen sample, factors ``f`` are drawn uniformly from ``[1 - a, 1 + a]`` for each
    amount ``a`` and applied in this order: brightness ``x * f`` (blend with black),
    contrast ``m + f (x - m)`` (``m`` the image's mean luma), saturation ``g + f (x - g)``
    (``g`` the pixel's luma). All factors come from ``generator`` when given.
    """

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, generator)
        for name, amount in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if not 0.0 <= amount <= 1.0:
                raise ValueError(f"{name}={amount} must be in [0, 1]")
        self.amounts = (float(brightness), float(contrast), float(saturation))

    def transform(self, image: Tensor) -> Tensor:
        n = image.shape[0]
        u = torch.rand((n, 3), generator=self.generator, dtype=torch.float64)
        amounts = torch.tensor(self.amounts, dtype=torch.float64)
        f = (1.0 + amounts * (2.0 * u - 1.0)).to(image.device, image.dtype)[..., None, None, None]
        x = image * f[:, 0]
        luma = rgb_to_grayscale(x) if x.shape[1] == 3 else x
        mean = luma.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + f[:, 1] * (x - mean)
        if x.shape[1] == 3:
            gray = rgb_to_grayscale(x)
            x = gray + f[:, 2] * (x - gray)
        return x


class RandomDownsample(PhotometricTransform):
    """Down-sample by a factor uniform in ``scale`` and back up (simulates low resolution).

    One factor is drawn per call for all chosen samples (a single batched resize); which
    samples are degraded is decided per sample.
    """

    def __init__(
        self,
        p: float = 0.2,
        scale: tuple[float, float] = (0.25, 0.75),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, generator)
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale={tuple(scale)} must be (min, max) with 0 < min <= max <= 1")
        self.scale = (float(scale[0]), float(scale[1]))

    def transform(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * u
        small = (max(1, round(h * s)), max(1, round(w * s)))
        down = F.interpolate(image, size=small, mode="area")
        return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)


class RandomCoarseDropout(PhotometricTransform):
    """Coarse dropout: fill ``holes`` random rectangles of side ``size`` (fraction of the
    image side) with ``fill`` (a constant in [0, 1]) on each chosen sample."""

    def __init__(
        self,
        p: float = 0.3,
        holes: tuple[int, int] = (1, 8),
        size: tuple[float, float] = (0.05, 0.15),
        fill: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, generator)
        if not 1 <= holes[0] <= holes[1]:
            raise ValueError(f"holes={tuple(holes)} must be (min, max) with 1 <= min <= max")
        if not 0.0 < size[0] <= size[1] <= 1.0:
            raise ValueError(f"size={tuple(size)} must be (min, max) with 0 < min <= max <= 1")
        self.holes = (int(holes[0]), int(holes[1]))
        self.size = (float(size[0]), float(size[1]))
        self.fill = float(fill)

    def transform(self, image: Tensor) -> Tensor:
        n, _, h, w = image.shape
        k = self.holes[1]
        gen = self.generator
        u = torch.rand((n, k, 4), generator=gen, dtype=torch.float64)
        count = self.holes[0] + (
            torch.rand((n,), generator=gen, dtype=torch.float64) * (k - self.holes[0] + 1)
        ).long().clamp_max(k - self.holes[0])
        center = torch.stack([u[..., 0] * w, u[..., 1] * h], dim=-1) - 0.5
        side = self.size[0] + (self.size[1] - self.size[0]) * u[..., 2:]
        half = 0.5 * side * torch.tensor([w, h], dtype=torch.float64)
        zeros = torch.zeros((n, k), dtype=torch.float64)
        masks = shape_masks(
            torch.zeros((n, k), dtype=torch.long),
            center,
            half,
            zeros,
            zeros[..., None].expand(n, k, 3),
            h,
            w,
            image.device,
        )
        used = (torch.arange(k)[None, :] < count[:, None]).to(image.device)
        hole = (masks & used[:, :, None, None]).any(dim=1, keepdim=True)
        return torch.where(hole, torch.full_like(image, self.fill), image)


class RandomSomeOf(nn.Module):
    """Per sample, choose ``n`` of ``transforms`` at random (without replacement); each
    chosen transform is then applied with its own probability ``p``, in list order.

    Args:
        transforms: :class:`PhotometricTransform` instances.
        n: how many to choose per sample (``<= len(transforms)``).
        generator: optional CPU generator for the choice.
    """

    def __init__(
        self,
        transforms: Sequence[PhotometricTransform],
        n: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for t in transforms:
            if not isinstance(t, PhotometricTransform):
                raise ValueError(
                    f"RandomSomeOf takes PhotometricTransform instances, got {type(t).__name__}"
                )
        if not 0 <= n <= len(transforms):
            raise ValueError(f"n={n} must be between 0 and len(transforms)={len(transforms)}")
        self.transforms = nn.ModuleList(transforms)
        self.n = n
        self.generator = generator

    def forward(self, batch: Batch) -> Batch:
        """Augment ``batch["image"]``; returns a new dict with every other key unchanged."""
        image = batch["image"]
        b, t = image.shape[0], len(self.transforms)
        # Ranks of random keys give a uniform random subset of size n per sample.
        keys = torch.rand((b, t), generator=self.generator, dtype=torch.float64)
        chosen = keys.argsort(dim=1).argsort(dim=1) < self.n
        for i, transform in enumerate(self.transforms):
            image = transform.apply_image(image, chosen[:, i])
        out = dict(batch)
        out["image"] = image
        return out


def clerf_photometric(generator: torch.Generator | None = None) -> nn.Sequential:
    """CLERF's photometric list: brightness, contrast, hue, gamma, CLAHE, grayscale, blur,
    Gaussian noise, channel shuffle, RGB shift, coarse dropout and down-sampling, each
    applied independently per sample.

    The probabilities and ranges are hpelib's choice in the spirit of the usual
    albumentations defaults (CLERF lists the operations, not all their parameters).
    """

    def k(aug: nn.Module, p: float) -> KorniaPhotometric:
        return KorniaPhotometric(aug, p=p, generator=generator)

    return nn.Sequential(
        k(KA.RandomBrightness(brightness=(0.8, 1.2), p=1.0), 0.3),
        k(KA.RandomContrast(contrast=(0.8, 1.2), p=1.0), 0.3),
        k(KA.RandomHue(hue=(-0.05, 0.05), p=1.0), 0.2),
        k(KA.RandomGamma(gamma=(0.8, 1.2), p=1.0), 0.2),
        k(KA.RandomClahe(clip_limit=(1.0, 4.0), grid_size=(4, 4), p=1.0), 0.1),
        Grayscale(p=0.1, channels=3, generator=generator),
        k(KA.RandomGaussianBlur(kernel_size=(5, 5), sigma=(0.1, 1.5), p=1.0), 0.2),
        RandomGaussianNoise(std=8.0 / 255.0, p=0.2, generator=generator),
        k(KA.RandomChannelShuffle(p=1.0), 0.1),
        k(
            KA.RandomRGBShift(r_shift_limit=0.08, g_shift_limit=0.08, b_shift_limit=0.08, p=1.0),
            0.2,
        ),
        RandomCoarseDropout(p=0.2, generator=generator),
        RandomDownsample(p=0.2, generator=generator),
    )


def opnet_photometric(
    grayscale: bool = False,
    grayscale_channels: int = 3,
    op_probability: float = 0.2,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """OpNet's photometric operations with hpelib's ranges (the pipeline of
    ``build_augmentation("opnet")``). The released code's ranges and per-operation
    probabilities are :func:`hpelib.methods.opnet.opnet_intensity`.

    Per sample 4 of {equalize, posterize, gamma, contrast, brightness, blur} are chosen,
    each then applied with probability ``op_probability``; then Gaussian noise of sigma
    4/255 with p=0.5 and of sigma 16/255 with p=0.1 (:class:`RandomGaussianNoise`: on a grey
    image the noise of the grey value has exactly these sigmas).

    Args:
        grayscale: convert every image to grayscale FIRST (OpNet's grayscale input), so
            that the operations and the noise act on the grey image.
        grayscale_channels: ``3`` keeps 3 equal channels (any RGB backbone works); ``1``
            outputs ``(B, 1, H, W)`` (the model and normalisation must expect 1 channel).
        op_probability: probability of each chosen operation.
        generator: optional CPU generator for the per-sample decisions.
    """

    def k(aug: nn.Module, p: float) -> KorniaPhotometric:
        return KorniaPhotometric(aug, p=p, generator=generator)

    q = _check_probability("op_probability", op_probability)
    ops = [
        k(KA.RandomEqualize(p=1.0), q),
        k(KA.RandomPosterize(bits=(4.0, 7.0), p=1.0), q),
        k(KA.RandomGamma(gamma=(0.7, 1.5), p=1.0), q),
        k(KA.RandomContrast(contrast=(0.7, 1.3), p=1.0), q),
        k(KA.RandomBrightness(brightness=(0.7, 1.3), p=1.0), q),
        k(KA.RandomGaussianBlur(kernel_size=(5, 5), sigma=(0.1, 1.5), p=1.0), q),
    ]
    if not grayscale and grayscale_channels != 3:
        raise ValueError(f"grayscale_channels={grayscale_channels} needs grayscale=True")
    # Grey first, noise last: noise drawn per RGB channel and averaged by a later grey
    # conversion would be 0.668 of its sigma.
    modules: list[nn.Module] = (
        [Grayscale(p=1.0, channels=grayscale_channels, generator=generator)] if grayscale else []
    )
    modules += [
        RandomSomeOf(ops, n=4, generator=generator),
        RandomGaussianNoise(std=4.0 / 255.0, p=0.5, generator=generator),
        RandomGaussianNoise(std=16.0 / 255.0, p=0.1, generator=generator),
    ]
    return nn.Sequential(*modules)
