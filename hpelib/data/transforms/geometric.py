"""Batched geometric augmentation whose labels follow the image.

Every geometric transform here only *samples* an :class:`~hpelib.rotation.ImageWarp` (a
batched 2D similarity in pixel coordinates); :func:`apply_warp` then warps the images once
with :func:`kornia.geometry.transform.warp_affine` and applies the very same warp to every
geometric label of the batch (see :mod:`hpelib.data.sample`):

=====================  =====================================================================
key                    update
=====================  =====================================================================
``rotation``           :meth:`ImageWarp.apply_rotation` (``O3 @ R``, ``O3 @ R @ Fx`` if mirrored)
``landmarks_2d``       :meth:`ImageWarp.apply_points`, then the MultiPIE-68 left/right
                       permutation for samples whose warp is a reflection
``landmarks_visible``  the same permutation
``landmarks_3d``       x, y like 2D points; z times the warp's scale; the same permutation
``box``                :meth:`ImageWarp.apply_boxes`
``head_center``        :meth:`ImageWarp.apply_points`
``head_size``          times the warp's scale
=====================  =====================================================================

Keys that are absent are skipped, ``has_*`` masks are never touched (a label that is masked
out is transformed too, harmlessly). Several geometric transforms are fused into ONE warp,
and so into a single interpolation of the image, by :class:`RandomGeometric`.

Randomness: every transform draws its parameters on the CPU, from ``generator`` when one is
given and otherwise from torch's global RNG (so Lightning's ``seed_everything`` makes them
reproducible), then moves them to the batch's device. The draws do not depend on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from kornia.geometry.transform import warp_affine
from torch import Tensor, nn

from hpelib.rotation import ImageWarp

__all__ = [
    "GEOMETRIC_KEYS",
    "MULTIPIE68_MIRROR_PERMUTATION",
    "PADDING_MODES",
    "GeometricTransform",
    "RandomBoxFraming",
    "RandomGeometric",
    "RandomHorizontalMirror",
    "RandomInPlaneRotation",
    "RandomLineFlip",
    "RandomRightAngleRotation",
    "RandomScaleTranslate",
    "apply_warp",
    "box_view_roi",
    "check_box_framing",
    "image_center",
    "mirror_landmark_order",
    "warp_image",
]

Batch = dict[str, Any]

#: Batch keys that :func:`apply_warp` updates when present.
GEOMETRIC_KEYS: tuple[str, ...] = (
    "image",
    "rotation",
    "landmarks_2d",
    "landmarks_visible",
    "landmarks_3d",
    "box",
    "head_center",
    "head_size",
)

#: Padding modes of :func:`kornia.geometry.transform.warp_affine` for pixels that come from
#: outside the source image: ``zeros`` (black corners, what CLERF's OpenCV warps give),
#: ``border`` (repeat the edge pixel) and ``reflection`` (mirror the image at its edge).
PADDING_MODES: tuple[str, ...] = ("zeros", "border", "reflection")

_INTERPOLATION_MODES: tuple[str, ...] = ("bilinear", "nearest")


def _mirror_pairs() -> list[tuple[int, int]]:
    pairs = [(i, 16 - i) for i in range(8)]  # jaw line 0-16, 8 = chin tip stays
    pairs += [(17 + i, 26 - i) for i in range(5)]  # eyebrows 17-21 <-> 26-22
    pairs += [(31, 35), (32, 34)]  # nostrils; nose bridge 27-30 and 33 stay
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip; 51, 57 stay
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lip; 62, 66 stay
    return pairs


def _build_permutation() -> tuple[int, ...]:
    perm = list(range(68))
    for a, b in _mirror_pairs():
        perm[a], perm[b] = b, a
    return tuple(perm)


#: Index map of the 68-point MultiPIE (iBUG 300-W) markup under a left/right reflection of
#: the image: after mirroring, new landmark ``j`` is the warped old landmark
#: ``MULTIPIE68_MIRROR_PERMUTATION[j]`` (e.g. the outer corner of one eye, 36, becomes the
#: outer corner of the other, 45). An involution.
MULTIPIE68_MIRROR_PERMUTATION: tuple[int, ...] = _build_permutation()


def mirror_landmark_order(values: Tensor, reflected: Tensor) -> Tensor:
    """Re-order per-landmark values of reflected samples to keep the MultiPIE-68 meaning.

    Args:
        values: ``(B, 68, ...)`` landmark values (positions, visibility, ...).
        reflected: ``(B,)`` bool, which samples were reflected.

    Returns:
        ``(B, 68, ...)``: ``values[:, PERM]`` for reflected samples, ``values`` otherwise.
    """
    if values.shape[1] != len(MULTIPIE68_MIRROR_PERMUTATION):
        raise ValueError(
            f"landmark permutation needs 68 landmarks (MultiPIE order), got {values.shape[1]}"
        )
    perm = torch.tensor(MULTIPIE68_MIRROR_PERMUTATION, device=values.device)
    mask = reflected.to(values.device).reshape(-1, *([1] * (values.dim() - 1)))
    return torch.where(mask, values[:, perm], values)


def _check_option(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {tuple(allowed)}")
    return value


def image_center(height: int, width: int, batch: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, 2)`` centre ``((W - 1) / 2, (H - 1) / 2)`` of ``H x W`` images (pixel centres at
    integer coordinates, the :class:`ImageWarp` convention)."""
    return torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=dtype).expand(batch, 2)


def warp_image(
    image: Tensor, warp: ImageWarp, padding_mode: str = "zeros", mode: str = "bilinear"
) -> Tensor:
    """Warp ``(B, C, H, W)`` float images with ``warp`` (source -> destination pixels), same size.

    ``padding_mode`` is one of :data:`PADDING_MODES`; ``mode`` is ``bilinear`` or ``nearest``.
    """
    _check_option("padding_mode", padding_mode, PADDING_MODES)
    _check_option("mode", mode, _INTERPOLATION_MODES)
    h, w = image.shape[-2:]
    affine = warp.affine.to(device=image.device, dtype=image.dtype)
    return warp_affine(
        image, affine, dsize=(h, w), mode=mode, padding_mode=padding_mode, align_corners=True
    )


def apply_warp(
    batch: Batch,
    warp: ImageWarp,
    padding_mode: str = "zeros",
    mode: str = "bilinear",
    active: Tensor | None = None,
) -> Batch:
    """Warp the image and every geometric label present in ``batch`` with one ``warp``.

    Args:
        batch: batch dict (:mod:`hpelib.data.sample`); ``image`` is ``(B, C, H, W)`` float.
        warp: ``(B,)`` similarity transforms, source -> destination pixel coordinates.
        padding_mode: one of :data:`PADDING_MODES`.
        mode: image interpolation, ``bilinear`` or ``nearest``.
        active: optional ``(B,)`` bool; samples where it is False keep their image bit-exact
            (their warp must be the identity). When no sample is active nothing is computed.

    Returns:
        A new dict (the input dict is not modified) with the keys of :data:`GEOMETRIC_KEYS`
        that were present transformed; the other keys are passed through.
    """
    _check_option("padding_mode", padding_mode, PADDING_MODES)
    _check_option("mode", mode, _INTERPOLATION_MODES)
    out = dict(batch)
    if active is not None and not bool(active.any()):
        return out
    image = batch["image"]
    device = image.device
    matrix = warp.matrix.to(device=device, dtype=torch.float32)
    warp = ImageWarp(matrix)
    det = torch.linalg.det(matrix[:, :2, :2])
    reflected = det < 0
    scale = det.abs().sqrt()

    warped = warp_image(image, warp, padding_mode, mode)
    if active is not None:
        # Interpolation with an identity warp is exact only up to rounding; keep the
        # untouched samples bit-identical.
        keep = active.to(device).reshape(-1, 1, 1, 1)
        warped = torch.where(keep, warped, image)
    out["image"] = warped

    if "rotation" in batch:
        r = batch["rotation"]
        out["rotation"] = warp.apply_rotation(r.to(torch.float32)).to(r.dtype)
    if "landmarks_2d" in batch:
        pts = warp.apply_points(batch["landmarks_2d"].to(torch.float32))
        out["landmarks_2d"] = mirror_landmark_order(pts, reflected).to(batch["landmarks_2d"].dtype)
    if "landmarks_visible" in batch:
        out["landmarks_visible"] = mirror_landmark_order(batch["landmarks_visible"], reflected)
    if "landmarks_3d" in batch:
        p3 = batch["landmarks_3d"].to(torch.float32)
        xy = warp.apply_points(p3[..., :2])
        # A similarity scales depth like the image plane (weak perspective); a reflection of
        # the image plane leaves depth alone.
        z = p3[..., 2:] * scale[:, None, None]
        moved = mirror_landmark_order(torch.cat([xy, z], dim=-1), reflected)
        out["landmarks_3d"] = moved.to(batch["landmarks_3d"].dtype)
    if "box" in batch:
        out["box"] = warp.apply_boxes(batch["box"].to(torch.float32)).to(batch["box"].dtype)
    if "head_center" in batch:
        hc = batch["head_center"]
        out["head_center"] = warp.apply_points(hc.to(torch.float32)[:, None])[:, 0].to(hc.dtype)
    if "head_size" in batch:
        hs = batch["head_size"]
        out["head_size"] = (hs.to(torch.float32) * scale).to(hs.dtype)
    return out


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) on the CPU from ``generator`` or the global RNG (device-independent)."""
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def _check_probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p} must be a probability in [0, 1]")
    return float(p)


def _check_scale_range(scale: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(s) for s in scale)
    if not 0.0 < lo <= hi:
        raise ValueError(f"scale={tuple(scale)} must be (low, high) with 0 < low <= high")
    return lo, hi


def check_box_framing(
    scale_mean: float, scale_std: float, scale_range: tuple[float, float], shift_std: float,
    max_outside: float,
) -> tuple[float, float, tuple[float, float], float, float]:  # fmt: skip
    """Validate the parameters of OpNet's box framing (:class:`RandomBoxFraming`,
    :class:`hpelib.methods.opnet.OpNetCrop`); returns them as floats."""
    lo, hi = (float(v) for v in scale_range)
    if not 0.0 < lo <= scale_mean <= hi:
        raise ValueError(
            f"need 0 < scale_range[0] <= scale mean <= scale_range[1], got {scale_mean}, {scale_range}"
        )
    if scale_std < 0 or shift_std < 0:
        raise ValueError(f"scale_std={scale_std} and shift_std={shift_std} must be >= 0")
    if not 0.0 <= max_outside <= 1.0:
        raise ValueError(f"max_outside={max_outside} must be in [0, 1]")
    return float(scale_mean), float(scale_std), (lo, hi), float(shift_std), float(max_outside)


class GeometricTransform(nn.Module):
    """Base class: a random similarity warp per sample, applied to image and labels.

    Subclasses implement :meth:`sample_warp`. Used alone, ``forward`` warps the batch with
    its own warp; inside :class:`RandomGeometric` the warps of several transforms are
    composed first and the image is interpolated once.

    Args:
        padding_mode: one of :data:`PADDING_MODES` (used when this transform runs alone).
        mode: image interpolation, ``bilinear`` or ``nearest``.
        generator: optional CPU ``torch.Generator`` for the random parameters; the global RNG
            when None.
    """

    def __init__(
        self,
        padding_mode: str = "zeros",
        mode: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.padding_mode = _check_option("padding_mode", padding_mode, PADDING_MODES)
        self.mode = _check_option("mode", mode, _INTERPOLATION_MODES)
        self.generator = generator

    def sample_warp(self, batch: Batch) -> tuple[ImageWarp, Tensor]:
        """Draw this transform's warps for ``batch``.

        Returns:
            ``(warp, active)``: a float64 CPU :class:`ImageWarp` of ``B`` transforms and a
            ``(B,)`` bool CPU tensor marking the samples it changes (identity elsewhere).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement sample_warp")

    def forward(self, batch: Batch) -> Batch:
        """Warp ``batch`` (image ``(B, C, H, W)`` float) and its labels; returns a new dict."""
        warp, active = self.sample_warp(batch)
        return apply_warp(batch, warp, self.padding_mode, self.mode, active)

    @staticmethod
    def _shape(batch: Batch) -> tuple[int, int, int]:
        image = batch["image"]
        if image.dim() != 4:
            raise ValueError(f"batch['image'] must be (B, C, H, W), got shape {tuple(image.shape)}")
        b, _, h, w = image.shape
        return b, h, w


class RandomInPlaneRotation(GeometricTransform):
    """Rotate each image about its centre with probability ``p`` (per sample).

    The angle is uniform in ``[min_degrees, max_degrees]`` (counter-clockwise as displayed)
    and, with ``symmetric=True``, its sign is then flipped with probability 1/2, i.e. uniform
    over ``[-max, -min] u [min, max]``. ``clockwise=True`` (with ``symmetric=False``) turns
    the image clockwise as displayed instead: uniform in ``[-max, -min]``. CLERF: ``p=0.5``,
    clockwise 0-90 degrees; OpNet: up to 30 either way.
    """

    def __init__(
        self,
        p: float = 0.5,
        max_degrees: float = 90.0,
        min_degrees: float = 0.0,
        symmetric: bool = True,
        padding_mode: str = "zeros",
        mode: str = "bilinear",
        generator: torch.Generator | None = None,
        clockwise: bool = False,
    ) -> None:
        super().__init__(padding_mode, mode, generator)
        self.p = _check_probability("p", p)
        if clockwise and symmetric:
            raise ValueError("clockwise=True needs symmetric=False (symmetric draws both senses)")
        self.clockwise = clockwise
        if not 0.0 <= min_degrees <= max_degrees <= 180.0:
            raise ValueError(
                f"need 0 <= min_degrees <= max_degrees <= 180, got min_degrees={min_degrees}, "
                f"max_degrees={max_degrees}"
            )
        self.min_degrees, self.max_degrees, self.symmetric = min_degrees, max_degrees, symmetric

    def sample_warp(self, batch: Batch) -> tuple[ImageWarp, Tensor]:
        b, h, w = self._shape(batch)
        u = _rand((b, 3), self.generator)
        active = u[:, 0] < self.p
        deg = self.min_degrees + (self.max_degrees - self.min_degrees) * u[:, 1]
        if self.symmetric:
            deg = torch.where(u[:, 2] < 0.5, -deg, deg)
        elif self.clockwise:
            deg = -deg  # clockwise as displayed = negative (counter-clockwise) angle
        phi = torch.where(active, torch.deg2rad(deg), torch.zeros_like(deg))
        return ImageWarp.rotation(phi, image_center(h, w, b, torch.float64)), active


class RandomLineFlip(GeometricTransform):
    """CLERF's flip: reflect each image, with probability ``p`` (per sample), across the line
    through its centre at a displayed angle uniform in ``[min_degrees, max_degrees]``
    counter-clockwise from +x. CLERF: ``p=0.3``, 0-90 degrees. The label becomes
    ``Flip_theta @ R @ Flip_X`` and the landmarks are re-ordered left/right."""

    def __init__(
        self,
        p: float = 0.3,
        max_degrees: float = 90.0,
        min_degrees: float = 0.0,
        padding_mode: str = "zeros",
        mode: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(padding_mode, mode, generator)
        self.p = _check_probability("p", p)
        if not min_degrees <= max_degrees:
            raise ValueError(
                f"need min_degrees <= max_degrees, got min_degrees={min_degrees}, "
                f"max_degrees={max_degrees}"
            )
        self.min_degrees, self.max_degrees = min_degrees, max_degrees

    def sample_warp(self, batch: Batch) -> tuple[ImageWarp, Tensor]:
        b, h, w = self._shape(batch)
        u = _rand((b, 2), self.generator)
        active = u[:, 0] < self.p
        theta = torch.deg2rad(self.min_degrees + (self.max_degrees - self.min_degrees) * u[:, 1])
        center = image_center(h, w, b, torch.float64)
        flip = ImageWarp.flip(theta, center)
        eye = torch.eye(3, dtype=torch.float64).expand(b, 3, 3)
        return ImageWarp(torch.where(active[:, None, None], flip.matrix, eye)), active


class RandomHorizontalMirror(GeometricTransform):
    """Mirror each image left-right with probability ``p`` (per sample), 6DRepNet style:
    yaw -> -yaw, roll -> -roll, landmarks re-ordered left/right."""

    def __init__(
        self,
        p: float = 0.5,
        padding_mode: str = "zeros",
        mode: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(padding_mode, mode, generator)
        self.p = _check_probability("p", p)

    def sample_warp(self, batch: Batch) -> tuple[ImageWarp, Tensor]:
        b, _, w = self._shape(batch)
        active = _rand((b,), self.generator) < self.p
        mirror = ImageWarp.mirror(float(w), b, dtype=torch.float64)
        eye = torch.eye(3, dtype=torch.float64).expand(b, 3, 3)
        return ImageWarp(torch.where(active[:, None, None], mirror.matrix, eye)), active


class RandomScaleTranslate(GeometricTransform):
    """Crop jitter (hpelib's light ROI jitter; OpNet's own distribution is
    :class:`RandomBoxFraming`): zoom about the image centre by a factor uniform in
    ``scale`` (> 1 enlarges the face) and shift by up to ``translate`` times the image size
    in x and y, independently, with probability ``p`` (per sample)."""

    def __init__(
        self,
        scale: tuple[float, float] = (0.9, 1.1),
        translate: float = 0.05,
        p: float = 1.0,
        padding_mode: str = "zeros",
        mode: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(padding_mode, mode, generator)
        self.p = _check_probability("p", p)
        if translate < 0:
            raise ValueError(f"translate={translate} must be >= 0")
        self.scale, self.translate = _check_scale_range(scale), float(translate)

    def sample_warp(self, batch: Batch) -> tuple[ImageWarp, Tensor]:
        b, h, w = self._shape(batch)
        u = _rand((b, 4), self.generator)
        active = u[:, 0] < self.p
        lo, hi = self.scale
        # Uniform in the given range (log-uniform would be symmetric in zoom in/out).
        s = lo + (hi - lo) * u[:, 1]
        size = torch.tensor([w, h], dtype=torch.float64)
        t = (2.0 * u[:, 2:] - 1.0) * self.translate * size
        s = torch.where(active, s, torch.ones_like(s))
        t = torch.where(active[:, None], t, torch.zeros_like(t))
        return ImageWarp.scale_translate(s, t, image_center(h, w, b, torch.float64)), active


class RandomGeometric(nn.Module):
    """Compose geometric transforms into ONE warp per sample: the image is interpolated once.

    The transforms' warps are chained in list order (``first.then(second)...``), so the
    result equals running them one after another except for the single resampling (and
    that image content leaving the frame in an intermediate step is not lost).

    Args:
        transforms: geometric transforms (their own ``padding_mode``/``mode`` are ignored).
        padding_mode: one of :data:`PADDING_MODES`.
        mode: image interpolation, ``bilinear`` or ``nearest``.
    """

    def __init__(
        self,
        transforms: Sequence[GeometricTransform],
        padding_mode: str = "zeros",
        mode: str = "bilinear",
    ) -> None:
        super().__init__()
        for t in transforms:
            if not isinstance(t, GeometricTransform):
                raise ValueError(
                    f"RandomGeometric takes GeometricTransform instances, got {type(t).__name__}"
                )
        self.transforms = nn.ModuleList(transforms)
        self.padding_mode = _check_option("padding_mode", padding_mode, PADDING_MODES)
        self.mode = _check_option("mode", mode, _INTERPOLATION_MODES)

    def sample_warp(self, batch: Batch) -> tuple[ImageWarp, Tensor]:
        """The composed ``(warp, active)`` of all transforms (float64, CPU)."""
        b = batch["image"].shape[0]
        warp = ImageWarp.identity(b, dtype=torch.float64)
        active = torch.zeros(b, dtype=torch.bool)
        for t in self.transforms:
            w, a = t.sample_warp(batch)
            warp = warp.then(w)
            active |= a
        return warp, active

    def forward(self, batch: Batch) -> Batch:
        """Warp ``batch`` and its labels with the composed warp; returns a new dict."""
        warp, active = self.sample_warp(batch)
        return apply_warp(batch, warp, self.padding_mode, self.mode, active)


def box_view_roi(box: Tensor, scale: Tensor, shift: Tensor, max_outside: float = 0.3) -> Tensor:
    """OpNet's view ROI around face boxes: a square of side ``max(w, h) * scale`` centred on
    the box centre, moved by ``shift`` times the room that keeps the box in view.

    The room along x is ``0.5 |side - w| + max_outside * min(side, w)`` (y alike): with
    ``|shift| <= 1`` at most ``max_outside`` of the box's width (height) leaves the view,
    so at least ``1 - max_outside`` of it stays visible along each axis (the released
    code's ``_compute_view_roi``).

    Args:
        box: ``(B, 4)`` face boxes x0, y0, x1, y1.
        scale: ``(B,)`` view side relative to the box's longer side.
        shift: ``(B, 2)`` in ``[-1, 1]``: fraction of the room, x and y.
        max_outside: fraction of the box allowed outside the view per axis, in ``[0, 1]``.

    Returns:
        ``(B, 4)`` view boxes x0, y0, x1, y1 (square).
    """
    if not 0.0 <= max_outside <= 1.0:
        raise ValueError(f"max_outside={max_outside} must be in [0, 1]")
    wh = box[:, 2:] - box[:, :2]
    side = wh.amax(-1) * scale
    room = 0.5 * (side[:, None] - wh).abs() + max_outside * torch.minimum(side[:, None], wh)
    centre = 0.5 * (box[:, :2] + box[:, 2:]) + shift * room
    half = 0.5 * side[:, None]
    return torch.cat([centre - half, centre + half], dim=-1)


def _clipped_normal(
    shape: tuple[int, ...], mean: float, std: float, low: float, high: float,
    generator: torch.Generator | None,
) -> Tensor:  # fmt: skip
    """``clip(N(mean, std^2), low, high)`` in float64 on the CPU."""
    z = torch.randn(shape, generator=generator, dtype=torch.float64)
    return (mean + std * z).clamp(low, high)


class RandomBoxFraming(GeometricTransform):
    """Re-frame each image around its face box (OpNet's ROI augmentation), per sample with
    probability ``p``: the view is :func:`box_view_roi` with scale ``clip(N(scale_mean,
    scale_std^2), *scale_range)`` and shift ``clip(N(0, shift_std^2), -1, 1)`` per axis, and
    it is warped onto the whole image (labels follow). Samples without a face box (no
    ``box`` key, or ``has_box`` False) are framed around the box ``image / scale_mean`` about
    the image centre, so their mean framing is the input's.

    The view's pixels come from the input image: where it leaves the input crop they are
    padding (``padding_mode``). For the paper's framing from the full image use the crop
    rule :class:`hpelib.methods.opnet.OpNetCrop` in the dataset instead.
    """

    def __init__(
        self,
        scale_mean: float = 1.1,
        scale_std: float = 0.1,
        scale_range: tuple[float, float] = (0.6, 1.6),
        shift_std: float = 0.5,
        max_outside: float = 0.3,
        p: float = 1.0,
        padding_mode: str = "zeros",
        mode: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(padding_mode, mode, generator)
        self.p = _check_probability("p", p)
        (self.scale_mean, self.scale_std, self.scale_range, self.shift_std, self.max_outside) = (
            check_box_framing(scale_mean, scale_std, scale_range, shift_std, max_outside)
        )

    def sample_warp(self, batch: Batch) -> tuple[ImageWarp, Tensor]:
        b, h, w = self._shape(batch)
        active = _rand((b,), self.generator) < self.p
        scale = _clipped_normal(
            (b,), self.scale_mean, self.scale_std, *self.scale_range, self.generator
        )
        shift = _clipped_normal((b, 2), 0.0, self.shift_std, -1.0, 1.0, self.generator)
        centre = image_center(h, w, b, torch.float64)
        half = torch.tensor([w, h], dtype=torch.float64) / (2.0 * self.scale_mean)
        box = torch.cat([centre - half, centre + half], dim=-1)
        if "box" in batch:
            given = batch["box"].detach().to("cpu", torch.float64)
            has = batch.get("has_box")
            ok = torch.ones(b, dtype=torch.bool) if has is None else has.detach().cpu().bool()
            box = torch.where(ok[:, None], given, box)
        view = box_view_roi(box, scale, shift, self.max_outside)
        # The view's centre goes to the image centre and its width to the image width.
        zoom = w / (view[:, 2] - view[:, 0]).clamp_min(1e-6)
        view_centre = 0.5 * (view[:, :2] + view[:, 2:])
        zoom = torch.where(active, zoom, torch.ones_like(zoom))
        move = torch.where(active[:, None], centre - view_centre, torch.zeros_like(centre))
        return ImageWarp.scale_translate(zoom, move, view_centre), active


class RandomRightAngleRotation(GeometricTransform):
    """Turn each image by 90 degrees about its centre with probability ``p`` (per sample),
    clockwise or counter-clockwise with probability ``p / 2`` each (OpNet: ``p = 0.01``).
    Exact on square images (pixels map onto pixels)."""

    def __init__(
        self,
        p: float = 0.01,
        padding_mode: str = "zeros",
        mode: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(padding_mode, mode, generator)
        self.p = _check_probability("p", p)

    def sample_warp(self, batch: Batch) -> tuple[ImageWarp, Tensor]:
        b, h, w = self._shape(batch)
        u = _rand((b, 2), self.generator)
        active = u[:, 0] < self.p
        sign = torch.where(u[:, 1] < 0.5, -1.0, 1.0).to(torch.float64)
        phi = torch.where(active, sign * (torch.pi / 2.0), torch.zeros_like(sign))
        return ImageWarp.rotation(phi, image_center(h, w, b, torch.float64)), active
