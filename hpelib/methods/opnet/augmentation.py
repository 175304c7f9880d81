"""OpNet's training augmentation with the distributions of Welter 2024 / the released code.

Two parts, because the paper frames the face from the FULL image:

* :class:`OpNetCrop`, a dataset crop rule (``crop_rule`` of any
  :class:`~hpelib.data.datasets.base.IndexedPoseDataset`): at train time the view ROI around
  the face box with side ``max(w, h) * s``, ``s ~ clip(N(1.1, 0.1^2), 0.6, 1.6)``, shifted so
  that at least 70 % of the box stays in view (:func:`~hpelib.data.transforms.box_view_roi`);
  at test time the square of side ``1.1 max(w, h)`` on the box centre (the released
  ``FocusRoi(extension_factor=1.1)``).
* :class:`OpNetAugmentation`, the batched on-device part (``data.augmentation``): in-plane
  rotation, mirror with p = 1/2 and a 90-degree turn with p = 1/100 fused into one warp
  (labels, landmarks with their left/right order, and boxes follow), then the intensity
  operations and the pixel noise. ``framing=True`` also draws the ROI on device
  (:class:`~hpelib.data.transforms.RandomBoxFraming`) for datasets whose crop is fixed.

Values are those of the released code (``trackertraincode``: ``MakeRoiRandomizationParameters``,
``GeneralFocusRoi``, ``horizontal_flip_and_rot_90``, ``make_pose_estimation_loaders``), which
agree with the values #23 quotes from the paper; see docs/methods/opnet.md for each.
"""

from __future__ import annotations

import kornia.augmentation as KA
import numpy as np
import torch
from torch import nn

from hpelib.data.transforms import (
    KorniaPhotometric,
    RandomBoxFraming,
    RandomGeometric,
    RandomHorizontalMirror,
    RandomInPlaneRotation,
    RandomRightAngleRotation,
    RandomSomeOf,
    box_view_roi,
)
from hpelib.data.transforms.geometric import check_box_framing
from hpelib.data.transforms.photometric import RandomGaussianNoise

__all__ = ["OpNetAugmentation", "OpNetCrop", "opnet_intensity"]


class OpNetCrop:
    """Crop rule (``(box (4,), image_wh, rng | None) -> crop box (4,)``) of OpNet's ROI.

    Test (``rng is None``): the square of side ``extension * max(w, h)`` on the box centre.
    Train: the view of :func:`~hpelib.data.transforms.box_view_roi` with scale
    ``clip(N(extension, scale_std^2), *scale_range)`` and shift ``clip(N(0, shift_std^2),
    -1, 1)`` per axis (at most ``max_outside`` of the box leaves the view per axis). A missing
    box (NaN) gives the whole image.

    Args:
        extension: crop side over the box's longer side at test time and the mean at train
            time (1.1, the released code's ``extension_factor``).
        scale_std: standard deviation of the train-time scale (0.1).
        scale_range: clip range of the train-time scale ((0.6, 1.6): ``1.1 +- 0.5``).
        shift_std: standard deviation of the shift before clipping to [-1, 1] (0.5).
        max_outside: share of the box allowed outside the view per axis (0.3).
    """

    def __init__(
        self,
        extension: float = 1.1,
        scale_std: float = 0.1,
        scale_range: tuple[float, float] = (0.6, 1.6),
        shift_std: float = 0.5,
        max_outside: float = 0.3,
    ) -> None:
        (self.extension, self.scale_std, self.scale_range, self.shift_std, self.max_outside) = (
            check_box_framing(extension, scale_std, scale_range, shift_std, max_outside)
        )

    def __call__(
        self, box: np.ndarray, image_wh: tuple[int, int], rng: np.random.Generator | None
    ) -> np.ndarray:
        if not np.all(np.isfinite(box)):
            return np.array([0.0, 0.0, float(image_wh[0]), float(image_wh[1])])
        if rng is None:
            scale, shift = self.extension, np.zeros(2)
        else:
            scale = float(np.clip(rng.normal(self.extension, self.scale_std), *self.scale_range))
            shift = np.clip(rng.normal(0.0, self.shift_std, size=2), -1.0, 1.0)
        view = box_view_roi(
            torch.from_numpy(np.array(box, dtype=np.float64))[None],
            torch.tensor([scale], dtype=torch.float64),
            torch.as_tensor(shift, dtype=torch.float64)[None],
            self.max_outside,
        )
        return view[0].numpy()

    def __repr__(self) -> str:
        return (
            f"OpNetCrop(extension={self.extension}, scale_std={self.scale_std}, scale_range={self.scale_range}, "
            f"shift_std={self.shift_std}, max_outside={self.max_outside})"
        )


def opnet_intensity(
    num_chosen: int = 4,
    noise_std: tuple[float, float] = (4.0 / 255.0, 16.0 / 255.0),
    noise_p: tuple[float, float] = (0.5, 0.1),
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """The released code's intensity augmentation (``make_pose_estimation_loaders``).

    ``num_chosen`` of six operations are chosen per sample, each then applied with its own
    probability: equalize (0.2), posterize to 4-6 bits (0.01), gamma 0.5-2.0 (0.2), contrast
    0.7-1.5 (0.2), brightness 0.7-1.5 (0.2), Gaussian blur 5x5 with sigma 1.5 (0.1). Then
    Gaussian pixel noise of each ``noise_std`` with its ``noise_p`` (4/255 with 0.5, 16/255 with
    0.1). The released code chooses the operations once per batch (kornia's
    ``random_apply``); here they are chosen per sample.
    """

    def k(aug: nn.Module, p: float) -> KorniaPhotometric:
        return KorniaPhotometric(aug, p=p, generator=generator)

    ops = [
        k(KA.RandomEqualize(p=1.0), 0.2),
        k(KA.RandomPosterize(bits=(4.0, 6.0), p=1.0), 0.01),
        k(KA.RandomGamma(gamma=(0.5, 2.0), p=1.0), 0.2),
        k(KA.RandomContrast(contrast=(0.7, 1.5), p=1.0), 0.2),
        k(KA.RandomBrightness(brightness=(0.7, 1.5), p=1.0), 0.2),
        k(KA.RandomGaussianBlur(kernel_size=(5, 5), sigma=(1.5, 1.5), p=1.0), 0.1),
    ]
    if len(noise_std) != len(noise_p):
        raise ValueError(f"noise_std {noise_std} and noise_p {noise_p} need the same length")
    noise = [
        RandomGaussianNoise(std=s, p=p, generator=generator)
        for s, p in zip(noise_std, noise_p, strict=True)
    ]
    return nn.Sequential(RandomSomeOf(ops, n=num_chosen, generator=generator), *noise)


class OpNetAugmentation(nn.Module):
    """OpNet's on-device training augmentation (batch dict -> batch dict), usable as
    ``data.augmentation: {class_path: hpelib.methods.opnet.OpNetAugmentation}``.

    One fused warp (one interpolation) of, in this order: the ROI framing (only with
    ``framing=True``), the in-plane rotation about the crop centre, the left-right mirror
    (landmarks re-ordered) and the 90-degree turn; then :func:`opnet_intensity`. Use the
    datamodule's ``grayscale: true``: the image is grey before the noise is drawn, so the
    noise of the grey value has exactly ``noise_std``.

    Args:
        framing: draw the ROI on device (:class:`~hpelib.data.transforms.RandomBoxFraming`
            with ``scale_*``, ``shift_std``, ``max_outside``) around the batch's ``box``. Leave
            it False when the datasets crop with :class:`OpNetCrop` (the paper's framing from
            the full image; on device the view beyond the dataset's crop is padding).
        scale_mean, scale_std, scale_range, shift_std, max_outside: the ROI distribution
            (1.1, 0.1, (0.6, 1.6), 0.5, 0.3), as :class:`OpNetCrop`.
        rotation_p: probability of an in-plane rotation (released code: 1/3).
        rotation_max_degrees: largest rotation angle (30).
        rotation_min_degrees: smallest rotation angle; 0 draws the angle uniformly in
            [-30, 30] ("up to 30 degrees"), 30 reproduces the released code, which turns by
            exactly +-30 degrees.
        mirror_p: left-right mirror probability (1/2).
        right_angle_p: probability of a 90-degree turn, either way with half of it (1/100).
        intensity: apply :func:`opnet_intensity`.
        padding_mode: padding of the warp (zeros: black corners, as the reference's OpenCV
            warp outside the source image).
        generator: optional CPU generator for every random decision but kornia's magnitudes.
    """

    def __init__(
        self,
        framing: bool = False,
        scale_mean: float = 1.1,
        scale_std: float = 0.1,
        scale_range: tuple[float, float] = (0.6, 1.6),
        shift_std: float = 0.5,
        max_outside: float = 0.3,
        rotation_p: float = 1.0 / 3.0,
        rotation_max_degrees: float = 30.0,
        rotation_min_degrees: float = 0.0,
        mirror_p: float = 0.5,
        right_angle_p: float = 0.01,
        intensity: bool = True,
        padding_mode: str = "zeros",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        g = generator
        steps: list = []
        if framing:
            steps.append(
                RandomBoxFraming(
                    scale_mean, scale_std, scale_range, shift_std, max_outside, generator=g
                )
            )
        steps += [
            RandomInPlaneRotation(
                p=rotation_p,
                max_degrees=rotation_max_degrees,
                min_degrees=rotation_min_degrees,
                generator=g,
            ),
            RandomHorizontalMirror(p=mirror_p, generator=g),
            RandomRightAngleRotation(p=right_angle_p, generator=g),
        ]
        self.geometric = RandomGeometric(steps, padding_mode=padding_mode)
        self.intensity = opnet_intensity(generator=g) if intensity else nn.Identity()

    def forward(self, batch: dict) -> dict:
        """Augment a batch (image ``(B, C, H, W)`` float in [0, 1]); returns a new dict."""
        return self.intensity(self.geometric(batch))
