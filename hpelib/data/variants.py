"""Test-set variants of CLERF's protocol as dataset wrappers (CPU, per item).

Each wrapper takes any map-style dataset whose items are sample dicts
(:mod:`hpelib.data.sample`: uint8 ``image (3, S, S)`` plus labels) and returns the item
with image and geometric labels transformed by ONE :class:`~hpelib.rotation.ImageWarp`
(through :func:`hpelib.data.transforms.apply_warp`), so labels can never go stale:

- :class:`SAVariant` ("simple augmentation"): rotate the image 10 degrees clockwise about
  its centre, then reflect it across the line through the centre at 85 degrees
  counter-clockwise from +x. The same fixed transform for every item.
- :class:`FAVariant` ("full augmentation"): rotation uniform in [-180, 180] degrees, then a
  flip across a line at an angle uniform in [0, 90] degrees; drawn per item, deterministic
  per ``(seed, index)``.
- :class:`OccludedVariant`: synthetic occluders over the face box (always applied),
  deterministic per ``(seed, index)``.

Rotations and flips are about the centre ``((S - 1) / 2, (S - 1) / 2)`` of the crop; the
image is resampled bilinearly and rounded back to uint8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from hpelib.data.sample import mask_key
from hpelib.data.transforms.geometric import GEOMETRIC_KEYS, apply_warp, image_center
from hpelib.data.transforms.occlusion import OCCLUSION_FILLS, OCCLUSION_SHAPES, RandomOcclusion
from hpelib.rotation import ImageWarp

__all__ = ["FAVariant", "OccludedVariant", "SAVariant", "item_generator", "warp_sample"]

Sample = dict[str, Any]


def item_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, index)`` only (independent of worker order)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(
        2, np.uint64
    )
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def _image_to_float(image: Tensor) -> tuple[Tensor, torch.dtype]:
    if image.dtype == torch.uint8:
        return image.float() / 255.0, image.dtype
    return image.float(), image.dtype


def _image_back(image: Tensor, dtype: torch.dtype) -> Tensor:
    if dtype == torch.uint8:
        return (image * 255.0).round().clamp(0, 255).to(torch.uint8)
    return image.to(dtype)


def _batched(sample: Sample, keys: Sequence[str]) -> Sample:
    """Add a batch dimension of 1 to ``keys`` of a sample (the image becomes float)."""
    out: Sample = {}
    for key in keys:
        if key in sample and sample[key] is not None:
            out[key] = torch.as_tensor(sample[key])[None]
    return out


def warp_sample(
    sample: Sample, warp: ImageWarp, padding_mode: str = "zeros", mode: str = "bilinear"
) -> Sample:
    """Apply a 1-element ``warp`` to one sample dict (image ``(C, H, W)`` uint8 or float).

    Returns a new dict: image and the geometric labels (:data:`GEOMETRIC_KEYS`) transformed,
    the image in its original dtype, every other key passed through.
    """
    batch = _batched(sample, GEOMETRIC_KEYS)
    batch["image"], dtype = _image_to_float(batch["image"])
    moved = apply_warp(batch, warp, padding_mode=padding_mode, mode=mode)
    out = dict(sample)
    for key in batch:
        out[key] = moved[key][0]
    out["image"] = _image_back(out["image"], dtype)
    return out


class _Wrapper(Dataset):
    """Shared plumbing: length, item access, the crop size and the centre."""

    def __init__(self, dataset: Dataset, padding_mode: str = "zeros") -> None:
        self.dataset = dataset
        self.padding_mode = padding_mode

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _item(self, index: int) -> Sample:
        sample = self.dataset[index]
        if not isinstance(sample, dict) or "image" not in sample:
            raise ValueError(
                f"{type(self).__name__} needs a dataset of sample dicts with an 'image' key, "
                f"got {type(sample).__name__}"
            )
        return sample

    @staticmethod
    def _size(sample: Sample) -> tuple[int, int]:
        h, w = torch.as_tensor(sample["image"]).shape[-2:]
        return int(h), int(w)

    @staticmethod
    def _rotate_then_flip(
        h: int, w: int, rotation_degrees: float, flip_degrees: float
    ) -> ImageWarp:
        center = image_center(h, w, 1, torch.float64)
        phi = torch.tensor([math.radians(rotation_degrees)], dtype=torch.float64)
        theta = torch.tensor([math.radians(flip_degrees)], dtype=torch.float64)
        return ImageWarp.rotation(phi, center).then(ImageWarp.flip(theta, center))


class SAVariant(_Wrapper):
    """CLERF's SA test variant: rotate ``rotation_degrees`` (counter-clockwise as displayed,
    default -10 = 10 degrees clockwise), then flip across the line at ``flip_degrees``
    (counter-clockwise from +x, default 85) through the image centre.

    Args:
        dataset: map-style dataset of sample dicts.
        rotation_degrees: in-plane rotation, counter-clockwise positive.
        flip_degrees: angle of the flip line from +x, counter-clockwise.
        padding_mode: warp padding (see :data:`hpelib.data.transforms.PADDING_MODES`).
    """

    def __init__(
        self,
        dataset: Dataset,
        rotation_degrees: float = -10.0,
        flip_degrees: float = 85.0,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(dataset, padding_mode)
        self.rotation_degrees, self.flip_degrees = float(rotation_degrees), float(flip_degrees)

    def warp_for(self, index: int, height: int, width: int) -> ImageWarp:
        """The (fixed) warp of item ``index`` for ``height x width`` images."""
        return self._rotate_then_flip(height, width, self.rotation_degrees, self.flip_degrees)

    def __getitem__(self, index: int) -> Sample:
        sample = self._item(index)
        h, w = self._size(sample)
        return warp_sample(sample, self.warp_for(index, h, w), self.padding_mode)


class FAVariant(_Wrapper):
    """CLERF's FA test variant: per item, rotate by an angle uniform in ``rotation_range``
    degrees, then flip across a line at an angle uniform in ``flip_range`` degrees; both
    drawn from :func:`item_generator` ``(seed, index)``, so every epoch and every worker
    sees the same variant.

    Args:
        dataset: map-style dataset of sample dicts.
        seed: variant seed.
        rotation_range: ``(min, max)`` rotation in degrees (counter-clockwise positive).
        flip_range: ``(min, max)`` flip-line angle in degrees.
        padding_mode: warp padding.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int = 0,
        rotation_range: tuple[float, float] = (-180.0, 180.0),
        flip_range: tuple[float, float] = (0.0, 90.0),
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(dataset, padding_mode)
        for name, (lo, hi) in (("rotation_range", rotation_range), ("flip_range", flip_range)):
            if not lo <= hi:
                raise ValueError(f"{name}={(lo, hi)} must be (min, max) with min <= max")
        self.seed = int(seed)
        self.rotation_range = (float(rotation_range[0]), float(rotation_range[1]))
        self.flip_range = (float(flip_range[0]), float(flip_range[1]))

    def angles(self, index: int) -> tuple[float, float]:
        """``(rotation_degrees, flip_degrees)`` of item ``index``."""
        u = torch.rand(2, generator=item_generator(self.seed, index), dtype=torch.float64)
        r0, r1 = self.rotation_range
        f0, f1 = self.flip_range
        return r0 + (r1 - r0) * float(u[0]), f0 + (f1 - f0) * float(u[1])

    def warp_for(self, index: int, height: int, width: int) -> ImageWarp:
        """The warp of item ``index`` for ``height x width`` images."""
        rot, flip = self.angles(index)
        return self._rotate_then_flip(height, width, rot, flip)

    def __getitem__(self, index: int) -> Sample:
        sample = self._item(index)
        h, w = self._size(sample)
        return warp_sample(sample, self.warp_for(index, h, w), self.padding_mode)


class OccludedVariant(_Wrapper):
    """Occluded test variant: every item gets synthetic occluders over its face box
    (:class:`~hpelib.data.transforms.RandomOcclusion` with ``p=1``), deterministic per
    ``(seed, index)``; ``occluded`` is set True. Wrap an :class:`SAVariant`/:class:`FAVariant`
    (or be wrapped by one) for combined variants.

    Args:
        dataset: map-style dataset of sample dicts.
        seed: variant seed.
        num_shapes, area, aspect, shapes, fills, update_visibility: as in
            :class:`~hpelib.data.transforms.RandomOcclusion`.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int = 0,
        num_shapes: tuple[int, int] = (1, 3),
        area: tuple[float, float] = (0.05, 0.25),
        aspect: tuple[float, float] = (0.5, 2.0),
        shapes: Sequence[str] = OCCLUSION_SHAPES,
        fills: Sequence[str] = OCCLUSION_FILLS,
        update_visibility: bool = True,
    ) -> None:
        super().__init__(dataset)
        self.seed = int(seed)
        self._options: dict[str, Any] = dict(
            p=1.0,
            num_shapes=num_shapes,
            area=area,
            aspect=aspect,
            shapes=shapes,
            fills=fills,
            update_visibility=update_visibility,
        )
        RandomOcclusion(**self._options)  # validate the options now, not at the first item

    def __getitem__(self, index: int) -> Sample:
        sample = self._item(index)
        keys = ("image", "box", "landmarks_2d", "landmarks_visible", "occluded")
        batch = _batched(sample, keys)
        batch["image"], dtype = _image_to_float(batch["image"])
        for key in ("box", "landmarks_2d"):
            has = sample.get(mask_key(key))
            if key in batch and has is not None:
                batch[mask_key(key)] = torch.as_tensor(has).reshape(1)
        occlusion = RandomOcclusion(**self._options, generator=item_generator(self.seed, index))
        moved = occlusion(batch)
        out = dict(sample)
        out["image"] = _image_back(moved["image"][0], dtype)
        out["occluded"] = moved["occluded"][0]
        if "landmarks_visible" in batch:
            out["landmarks_visible"] = moved["landmarks_visible"][0]
        return out
